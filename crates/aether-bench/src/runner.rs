//! The closed-loop runner, one run's report, and the summary of several interleaved rounds.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What one closed-loop run measured.
pub(crate) struct Sample {
    /// Wall time of the whole run.
    pub(crate) wall: Duration,
    /// CPU time (user + system, every thread of this process) spent during the run: the
    /// client, the worker and the broker client library together, as both live here.
    pub(crate) cpu: Option<Duration>,
    /// Context switches of this process's threads during the run, voluntary (a thread
    /// waited: each is a wake-up later) and involuntary (preempted).
    pub(crate) switches: Option<Switches>,
    /// Each round trip's latency.
    pub(crate) lat: Vec<Duration>,
}

/// How long a run may go without starting a round trip before it says so on stderr.
const QUIET: Duration = Duration::from_secs(30);

/// Runs `n` round trips with `inflight` of them outstanding at a time.
pub(crate) async fn closed_loop<F, Fut>(n: usize, inflight: usize, one: F) -> anyhow::Result<Sample>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    closed_loop_watched(n, inflight, one, String::new).await
}

/// [`closed_loop`], printing to stderr how far the run got and `state()` (e.g. the nodes'
/// stats) each time it has started no round trip for [`QUIET`]: a stalled run explains
/// itself instead of waiting in silence.
pub(crate) async fn closed_loop_watched<F, Fut, S>(
    n: usize,
    inflight: usize,
    one: F,
    state: S,
) -> anyhow::Result<Sample>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    S: Fn() -> String + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let _watch = {
        let next = next.clone();
        AbortOnDrop(tokio::spawn(async move {
            let since = Instant::now();
            let mut seen = 0;
            loop {
                tokio::time::sleep(QUIET).await;
                let now = next.load(Ordering::Relaxed).min(n);
                if now == seen {
                    eprintln!(
                        "no progress for {QUIET:?}: {now} of {n} round trips started, {inflight} at a time, {:.0?} into the run; {}",
                        since.elapsed(),
                        state()
                    );
                }
                seen = now;
            }
        }))
    };
    let mut lanes = Vec::with_capacity(inflight);
    let mut queued = Vec::with_capacity(inflight);
    for _ in 0..inflight.max(1) {
        // Each lane owns a queue of futures made up front, so `one` need not be Send.
        let share = n / inflight.max(1) + 1;
        queued.push((0..share).map(|_| one()).collect::<Vec<_>>());
    }
    let meter = Meter::start();
    for jobs in queued {
        let next = next.clone();
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
    let mut lat = Vec::with_capacity(n);
    for lane in lanes {
        lat.extend(lane.await??);
    }
    Ok(meter.sample(lat))
}

/// Wall time, CPU time and context switches from its start, for a run that measures its
/// latencies itself (a loop on plain threads).
pub(crate) struct Meter {
    start: Instant,
    cpu: Option<Duration>,
    switches: Option<Switches>,
}

impl Meter {
    pub(crate) fn start() -> Meter {
        Meter {
            cpu: process_cpu(),
            switches: Switches::now(),
            start: Instant::now(),
        }
    }

    /// What the run cost since the start, with its latencies.
    pub(crate) fn sample(self, lat: Vec<Duration>) -> Sample {
        let wall = self.start.elapsed();
        let cpu = self
            .cpu
            .zip(process_cpu())
            .map(|(a, b)| b.saturating_sub(a));
        let switches = self.switches.zip(Switches::now()).map(|(a, b)| b.since(a));
        Sample {
            wall,
            cpu,
            switches,
            lat,
        }
    }
}

/// Context switches of this process's live threads (`/proc/self/task/*/status`; Linux).
/// A thread that ends during a run takes its count with it: runs measure while their
/// threads live.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Switches {
    pub(crate) voluntary: u64,
    pub(crate) involuntary: u64,
}

impl Switches {
    fn now() -> Option<Switches> {
        let mut total = Switches::default();
        for task in std::fs::read_dir("/proc/self/task").ok()? {
            let Ok(status) = std::fs::read_to_string(task.ok()?.path().join("status")) else {
                continue; // the thread ended meanwhile
            };
            total = total.plus(Switches::parse(&status));
        }
        Some(total)
    }

    /// The counts in one `status` file.
    fn parse(status: &str) -> Switches {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        Switches {
            voluntary: field("voluntary_ctxt_switches:"),
            involuntary: field("nonvoluntary_ctxt_switches:"),
        }
    }

    fn plus(self, other: Switches) -> Switches {
        Switches {
            voluntary: self.voluntary + other.voluntary,
            involuntary: self.involuntary + other.involuntary,
        }
    }

    fn since(self, before: Switches) -> Switches {
        Switches {
            voluntary: self.voluntary.saturating_sub(before.voluntary),
            involuntary: self.involuntary.saturating_sub(before.involuntary),
        }
    }
}

/// Aborts its task when dropped (the run ended, or failed).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// User + system CPU time of this process so far, from `/proc/self/stat` (Linux; `None`
/// elsewhere). Clock ticks of 10 ms: runs of a second or more are what it is good for.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing ')'.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11); // field 14 is utime
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // USER_HZ is 100 on every Linux ABI Rust targets.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// One line of results.
#[derive(Clone)]
pub(crate) struct Report {
    pub(crate) name: String,
    pub(crate) inflight: usize,
    tasks: usize,
    per_sec: f64,
    p50: Duration,
    p99: Duration,
    /// CPU per round trip, if the platform tells.
    cpu_per_task: Option<Duration>,
    /// Voluntary and involuntary context switches per round trip, if the platform tells.
    switches_per_task: Option<(f64, f64)>,
}

impl Report {
    pub(crate) fn new(name: String, inflight: usize, sample: Sample) -> Report {
        let Sample {
            wall,
            cpu,
            switches,
            mut lat,
        } = sample;
        lat.sort_unstable();
        let q = |q: f64| {
            lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        let tasks = lat.len();
        Report {
            name,
            inflight,
            tasks,
            per_sec: tasks as f64 / wall.as_secs_f64(),
            p50: q(0.50),
            p99: q(0.99),
            cpu_per_task: cpu.map(|c| c / tasks.max(1) as u32),
            switches_per_task: switches.map(|s| {
                let n = tasks.max(1) as f64;
                (s.voluntary as f64 / n, s.involuntary as f64 / n)
            }),
        }
    }

    /// A report of figures measured elsewhere (a peer's own benchmark), without CPU time.
    pub(crate) fn from_figures(
        name: String,
        inflight: usize,
        tasks: usize,
        per_sec: f64,
        p50: Duration,
        p99: Duration,
    ) -> Report {
        Report {
            name,
            inflight,
            tasks,
            per_sec,
            p50,
            p99,
            cpu_per_task: None,
            switches_per_task: None,
        }
    }

    pub(crate) fn header() -> &'static str {
        "| loop | in flight | tasks | tasks/s | p50 | p99 | CPU/task | switches/task |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    }

    pub(crate) fn row(&self) -> String {
        format!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} |",
            self.name,
            self.inflight,
            self.tasks,
            self.per_sec,
            ms(self.p50),
            ms(self.p99),
            self.cpu_per_task.map_or("-".into(), us),
            self.switches_per_task.map_or("-".into(), switches),
        )
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// Voluntary switches, then the involuntary ones: `7.9 + 0.4`.
fn switches((voluntary, involuntary): (f64, f64)) -> String {
    format!("{voluntary:.1} + {involuntary:.1}")
}

/// The reports of several rounds, kept per (URL, loop, in flight) in the order first seen.
#[derive(Default)]
pub(crate) struct Rounds {
    order: Vec<(usize, String, usize)>,
    runs: BTreeMap<(usize, String, usize), Vec<Report>>,
}

impl Rounds {
    /// Records one report of the URL numbered `url`; `aether` marks the aether loop, the
    /// others being raw baselines of the same URL.
    pub(crate) fn add(&mut self, url: usize, report: Report) {
        let key = (url, report.name.clone(), report.inflight);
        if !self.runs.contains_key(&key) {
            self.order.push(key.clone());
        }
        self.runs.entry(key).or_default().push(report);
    }

    pub(crate) fn header() -> &'static str {
        "| loop | in flight | tasks/s (median) | min-max | p50 | p99 | CPU/task | switches/task | vs raw |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    }

    /// One line per loop and in-flight level: medians over the rounds, the range of tasks/s,
    /// and for an aether loop its median tasks/s over the median of each raw loop of the
    /// same URL and in-flight level.
    pub(crate) fn summary(&self) -> Vec<String> {
        let median_rate =
            |key: &(usize, String, usize)| median(self.runs[key].iter().map(|r| r.per_sec));
        self.order
            .iter()
            .map(|key| {
                let runs = &self.runs[key];
                let rates: Vec<f64> = runs.iter().map(|r| r.per_sec).collect();
                let (lo, hi) = rates
                    .iter()
                    .fold((f64::MAX, 0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
                let p50 = median(runs.iter().map(|r| r.p50.as_secs_f64()));
                let p99 = median(runs.iter().map(|r| r.p99.as_secs_f64()));
                let cpu: Vec<f64> = runs
                    .iter()
                    .filter_map(|r| r.cpu_per_task)
                    .map(|c| c.as_secs_f64())
                    .collect();
                let cpu = if cpu.is_empty() {
                    "-".into()
                } else {
                    us(Duration::from_secs_f64(median(cpu.into_iter())))
                };
                let counted: Vec<(f64, f64)> =
                    runs.iter().filter_map(|r| r.switches_per_task).collect();
                let switched = if counted.is_empty() {
                    "-".into()
                } else {
                    switches((
                        median(counted.iter().map(|s| s.0)),
                        median(counted.iter().map(|s| s.1)),
                    ))
                };
                let ratio = if key.1.starts_with("aether") {
                    self.order
                        .iter()
                        .filter(|k| k.0 == key.0 && k.2 == key.2 && !k.1.starts_with("aether"))
                        .map(|raw| {
                            format!(
                                "{:.0} % of {}",
                                100.0 * median_rate(key) / median_rate(raw),
                                raw.1
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                } else {
                    String::new()
                };
                format!(
                    "| {} | {} | {:.0} | {:.0}-{:.0} | {} | {} | {} | {} | {} |",
                    key.1,
                    key.2,
                    median_rate(key),
                    lo,
                    hi,
                    ms(Duration::from_secs_f64(p50)),
                    ms(Duration::from_secs_f64(p99)),
                    cpu,
                    switched,
                    ratio,
                )
            })
            .collect()
    }
}

/// The median (mean of the middle two for an even count); 0 for none.
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 0 {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, inflight: usize, per_sec: f64) -> Report {
        Report {
            name: name.into(),
            inflight,
            tasks: 100,
            per_sec,
            p50: Duration::from_millis(1),
            p99: Duration::from_millis(2),
            cpu_per_task: Some(Duration::from_micros(50)),
            switches_per_task: Some((4.0, 0.5)),
        }
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0].into_iter()), 2.5);
        assert_eq!(median(std::iter::empty()), 0.0);
    }

    #[test]
    fn summary_gives_medians_ranges_and_the_ratio_to_raw_of_the_same_url_and_level() {
        let mut rounds = Rounds::default();
        for (a, r) in [(80.0, 100.0), (40.0, 100.0), (90.0, 100.0)] {
            rounds.add(0, report("aether redis", 1, a));
            rounds.add(0, report("raw fred", 1, r));
            rounds.add(1, report("aether mqtt", 1, a));
        }
        let lines = rounds.summary();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("| aether redis | 1 | 80 | 40-90 |"),
            "{}",
            lines[0]
        );
        assert!(lines[0].ends_with("| 80 % of raw fred |"), "{}", lines[0]);
        assert!(
            lines[1].starts_with("| raw fred | 1 | 100 | 100-100 |"),
            "{}",
            lines[1]
        );
        // No raw loop ran on the second URL: no ratio.
        assert!(lines[2].ends_with("50 µs | 4.0 + 0.5 |  |"), "{}", lines[2]);
    }

    #[test]
    fn process_cpu_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(process_cpu().is_some());
        }
    }

    #[test]
    fn switches_are_read_from_status_and_counted_on_linux() {
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3\n";
        let s = Switches::parse(status);
        assert_eq!((s.voluntary, s.involuntary), (12, 3));
        if cfg!(target_os = "linux") {
            let before = Switches::now().expect("/proc/self/task");
            // A thread that sleeps switches at least once.
            std::thread::sleep(Duration::from_millis(5));
            let after = Switches::now().expect("/proc/self/task");
            assert!(after.since(before).voluntary >= 1, "{before:?} {after:?}");
        }
    }
}
