//! Raw redis baseline (to be written with the redis adapter).

use crate::runner::Report;

pub(crate) async fn run(
    url: &str,
    tasks: usize,
    inflight: usize,
    payload: usize,
) -> anyhow::Result<Report> {
    let _ = (url, tasks, inflight, payload);
    anyhow::bail!("the raw redis baseline is not written yet")
}
