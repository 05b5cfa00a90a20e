//! Aether's metrics as Prometheus text (feature `prometheus`): one recorder per process,
//! shared by every place that serves them (`aether worker --metrics`, a hub's
//! `GET /metrics`).
//!
//! ```no_run
//! # fn demo() -> aether_core::Result<()> {
//! // Before building any node, so every handle records.
//! let metrics = aether_core::observe::prometheus::install()?;
//! // ... later, for each scrape:
//! let text: String = metrics.render();
//! # Ok(()) }
//! ```

use std::sync::Mutex;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

pub use metrics_exporter_prometheus::PrometheusHandle;

use super::metrics::{DURATION_BUCKETS, describe};
use crate::{Error, Result};

/// The `Content-Type` of the text [`PrometheusHandle::render`] writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// How often histograms are drained and idle series looked at.
const UPKEEP: Duration = Duration::from_secs(5);

static INSTALLED: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Installs a Prometheus recorder as the process's global `metrics` recorder, with
/// [`DURATION_BUCKETS`] for aether's histograms and every metric
/// [described](super::metrics::describe), and keeps it up (a thread drains it every 5 s).
/// Calling it again returns the same recorder's handle.
///
/// Install it before building the [`Aether`](crate::Aether) nodes whose metrics it should
/// see. Fails with [`Error::Config`] when another recorder is already installed: then
/// serve that one instead.
pub fn install() -> Result<PrometheusHandle> {
    let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Prefix("aether_".into()), DURATION_BUCKETS)
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| Error::Config(format!("cannot install the Prometheus recorder: {e}")))?;
    describe();
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("aether-metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP);
                upkeep.run_upkeep();
            }
        })
        .map_err(|e| Error::Config(format!("cannot start the metrics upkeep thread: {e}")))?;
    *installed = Some(handle.clone());
    Ok(handle)
}

/// The handle [`install`] returned, if it ran in this process.
pub fn installed() -> Option<PrometheusHandle> {
    INSTALLED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}
