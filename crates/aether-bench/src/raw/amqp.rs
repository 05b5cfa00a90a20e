//! Raw amqp baseline (to be written with the amqp adapter).

use crate::runner::Report;

pub(crate) async fn run(
    url: &str,
    tasks: usize,
    inflight: usize,
    payload: usize,
) -> anyhow::Result<Report> {
    let _ = (url, tasks, inflight, payload);
    anyhow::bail!("the raw amqp baseline is not written yet")
}
