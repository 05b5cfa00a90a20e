//! Raw mqtt baseline (to be written with the mqtt adapter).

use crate::runner::Report;

pub(crate) async fn run(
    url: &str,
    tasks: usize,
    inflight: usize,
    payload: usize,
) -> anyhow::Result<Report> {
    let _ = (url, tasks, inflight, payload);
    anyhow::bail!("the raw mqtt baseline is not written yet")
}
