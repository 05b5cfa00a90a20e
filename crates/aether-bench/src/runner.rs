//! The closed-loop runner and the report format.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Runs `n` round trips with `inflight` of them outstanding at a time; returns the wall
/// time and each round trip's latency.
pub(crate) async fn closed_loop<F, Fut>(
    n: usize,
    inflight: usize,
    one: F,
) -> anyhow::Result<(Duration, Vec<Duration>)>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut lanes = Vec::with_capacity(inflight);
    for _ in 0..inflight.max(1) {
        let next = next.clone();
        // Each lane owns a queue of futures made up front, so `one` need not be Send.
        let mut jobs = Vec::new();
        let share = n / inflight.max(1) + 1;
        for _ in 0..share {
            jobs.push(one());
        }
        lanes.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(jobs.len());
            for job in jobs {
                if next.fetch_add(1, Ordering::Relaxed) >= n {
                    break;
                }
                let t0 = Instant::now();
                job.await?;
                lat.push(t0.elapsed());
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for lane in lanes {
        all.extend(lane.await??);
    }
    Ok((start.elapsed(), all))
}

/// One line of results.
pub(crate) struct Report {
    name: String,
    inflight: usize,
    tasks: usize,
    per_sec: f64,
    p50: Duration,
    p99: Duration,
}

impl Report {
    pub(crate) fn new(
        name: String,
        inflight: usize,
        wall: Duration,
        mut lat: Vec<Duration>,
    ) -> Report {
        lat.sort_unstable();
        let q = |q: f64| {
            lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        Report {
            name,
            inflight,
            tasks: lat.len(),
            per_sec: lat.len() as f64 / wall.as_secs_f64(),
            p50: q(0.50),
            p99: q(0.99),
        }
    }

    pub(crate) fn header() -> &'static str {
        "| loop | in flight | tasks | tasks/s | p50 | p99 |\n|---|---:|---:|---:|---:|---:|"
    }

    pub(crate) fn row(&self) -> String {
        format!(
            "| {} | {} | {} | {:.0} | {:.3} ms | {:.3} ms |",
            self.name,
            self.inflight,
            self.tasks,
            self.per_sec,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3
        )
    }
}

/// The median of each (loop, in flight) over rounds: tasks/s, p50 and p99 each taken as
/// its own median, in the order the loops first appear.
pub(crate) fn medians(reports: &[Report]) -> Vec<Report> {
    let mut keys: Vec<(String, usize)> = Vec::new();
    for r in reports {
        let key = (r.name.clone(), r.inflight);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys.into_iter()
        .map(|(name, inflight)| {
            let runs: Vec<&Report> = reports
                .iter()
                .filter(|r| r.name == name && r.inflight == inflight)
                .collect();
            fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
                v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
                v[v.len() / 2]
            }
            Report {
                name: format!("{name} (median of {})", runs.len()),
                inflight,
                tasks: runs[0].tasks,
                per_sec: median(runs.iter().map(|r| r.per_sec).collect()),
                p50: median(runs.iter().map(|r| r.p50).collect()),
                p99: median(runs.iter().map(|r| r.p99).collect()),
            }
        })
        .collect()
}
