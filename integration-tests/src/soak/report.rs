//! What a soak measured: the client's view of every task (outcomes, latency) and the
//! workers' run logs, summed up in a [`Report`].

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Latencies in fixed buckets (10 µs below 1 ms, 1 ms below 1 s, 100 ms up to 1000 s):
/// bounded memory however long the soak runs.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

const FINE: u64 = 100; // 10 µs buckets up to 1 ms
const MEDIUM: u64 = 1000; // 1 ms buckets up to 1 s
const COARSE: u64 = 10_000; // 100 ms buckets up to 1000 s

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; (FINE + MEDIUM + COARSE) as usize],
            total: 0,
        }
    }
}

impl Histogram {
    /// Adds one latency.
    pub fn record(&mut self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        let i = if us < 1_000 {
            us / 10
        } else if us < 1_000_000 {
            FINE + us / 1_000
        } else {
            (FINE + MEDIUM + us / 100_000 - 10).min(FINE + MEDIUM + COARSE - 1)
        };
        self.counts[i as usize] += 1;
        self.total += 1;
    }

    /// The upper bound of bucket `i`.
    fn bound(i: u64) -> Duration {
        if i < FINE {
            Duration::from_micros((i + 1) * 10)
        } else if i < FINE + MEDIUM {
            Duration::from_millis(i - FINE + 1)
        } else {
            Duration::from_millis((i - FINE - MEDIUM + 11) * 100)
        }
    }

    /// The `q` quantile (0..=1), as the upper bound of its bucket; zero when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Histogram::bound(i as u64);
            }
        }
        Histogram::bound(self.counts.len() as u64 - 1)
    }
}

/// One line of a run log: a handler run of `tid` started (`s`) or returned (`d`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Line {
    /// Which log (worker) it is from.
    log: usize,
    /// Whether that worker was killed.
    killed: bool,
    /// A start (`true`) or a return.
    start: bool,
    /// When, in Unix milliseconds.
    at: u64,
}

/// Handler runs per tid, read from the workers' run logs: `s {tid} {ms}` when a run
/// starts, `d {tid} {ms}` when it returns its result (and its completion is published).
/// A task with two runs is put down to the first of these that explains it:
/// - *held by a killed worker*: a killed worker started it and never returned; one more
///   run elsewhere is expected;
/// - *finished by a killed worker*: a killed worker returned it, but the kill came before
///   its acknowledgement reached the broker, which gave it out again;
/// - *around a broker restart*: a repeat started during a restart or within the grace
///   after it (a broker restarted without persistence forgets what it gave out);
/// - *other*: nothing explains it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Runs {
    /// Handler runs in all.
    pub total: u64,
    /// Tasks a killed worker was running when it was killed.
    pub held: u64,
    /// Runs of those tasks beyond their first (one per kill is expected).
    pub held_reruns: u64,
    /// Those of them run more often than once plus once per killed worker that ran them.
    pub held_over: u64,
    /// Tasks a killed worker had finished and that ran again.
    pub finished_rerun: u64,
    /// Tasks run twice or more around a broker restart (and not explained above).
    pub restart_rerun: u64,
    /// Those of them whose handler returned in two runs.
    pub restart_completed_twice: u64,
    /// Runs of other tasks beyond their first: repeats nothing explains.
    pub other_duplicate_runs: u64,
    /// Other tasks whose handler returned in two or more runs: two outcomes published for
    /// one task that nothing explains.
    pub other_completed_twice: u64,
    /// A few tids of tasks counted in `other_duplicate_runs` or `held_over`.
    pub examples: Vec<String>,
}

impl Runs {
    /// Reads the run logs (`(path, written by a killed worker)`); `restarts` are the
    /// broker's restarts as Unix-millisecond spans, `grace` how long after one a repeat
    /// is put down to it.
    pub fn read(
        logs: &[(PathBuf, bool)],
        restarts: &[(u64, u64)],
        grace: Duration,
    ) -> std::io::Result<Runs> {
        let mut per_tid: HashMap<String, Vec<Line>> = HashMap::new();
        for (log, (path, killed)) in logs.iter().enumerate() {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                // A worker that never ran a task may not have created its log.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for line in text.lines() {
                let mut parts = line.split(' ');
                let (Some(kind), Some(tid), Some(at)) = (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                per_tid.entry(tid.to_owned()).or_default().push(Line {
                    log,
                    killed: *killed,
                    start: kind == "s",
                    at: at.parse().unwrap_or(0),
                });
            }
        }
        let grace = grace.as_millis() as u64;
        let windows: Vec<(u64, u64)> = restarts.iter().map(|&(a, b)| (a, b + grace)).collect();
        Ok(Runs::count(per_tid, &windows))
    }

    fn count(per_tid: HashMap<String, Vec<Line>>, windows: &[(u64, u64)]) -> Runs {
        let mut r = Runs::default();
        let mut tids: Vec<_> = per_tid.into_iter().collect();
        tids.sort_by(|a, b| a.0.cmp(&b.0));
        for (tid, mut lines) in tids {
            lines.sort_by_key(|l| l.at);
            let starts: Vec<&Line> = lines.iter().filter(|l| l.start).collect();
            let runs = starts.len() as u64;
            let done = lines.len() as u64 - runs;
            r.total += runs;
            if runs < 2 {
                // One run; or one held by a killed worker and never run again, which the
                // outcomes show if it matters.
                r.held += u64::from(held(&lines));
                continue;
            }
            let extra = runs - 1;
            let near_restart = starts[1..]
                .iter()
                .any(|l| windows.iter().any(|&(a, b)| l.at >= a && l.at <= b));
            let wrong = if held(&lines) {
                // Each killed worker that ran it explains one more run.
                let mut killed: Vec<usize> =
                    starts.iter().filter(|l| l.killed).map(|l| l.log).collect();
                killed.sort_unstable();
                killed.dedup();
                let over = runs > 1 + killed.len() as u64;
                r.held += 1;
                r.held_reruns += extra;
                r.held_over += u64::from(over);
                over
            } else if lines.iter().any(|l| l.killed) {
                r.finished_rerun += 1;
                false
            } else if near_restart {
                r.restart_rerun += 1;
                r.restart_completed_twice += u64::from(done > 1);
                false
            } else {
                r.other_duplicate_runs += extra;
                r.other_completed_twice += u64::from(done > 1);
                true
            };
            if wrong && r.examples.len() < 10 {
                r.examples
                    .push(format!("{tid} ({runs} runs, {done} returned)"));
            }
        }
        r
    }
}

/// Whether a killed worker started a run of this task that it never returned.
fn held(lines: &[Line]) -> bool {
    lines.iter().any(|l| {
        l.killed
            && l.start
            && !lines
                .iter()
                .any(|d| d.log == l.log && !d.start && d.at >= l.at)
    })
}

/// The figures of one soak.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The transport's name.
    pub transport: String,
    /// How long tasks were submitted.
    pub duration: Duration,
    /// Performs the client took (each with a tid).
    pub submitted: u64,
    /// Performs the client refused (e.g. while the broker was down); the soak tried again.
    pub refused: u64,
    /// Tasks whose one outcome was the right result.
    pub completed_once: u64,
    /// Tasks whose outcome was an error, by error.
    pub failed: HashMap<String, u64>,
    /// Tasks whose result was not the number they were given.
    pub wrong_results: u64,
    /// Tasks with no outcome by the end of the drain.
    pub lost: u64,
    /// A few tids of lost or failed tasks.
    pub lost_examples: Vec<String>,
    /// Outcomes beyond the first that reached the caller for one tid.
    pub duplicate_outcomes: u64,
    /// Handler runs.
    pub runs: Runs,
    /// Latency of completed tasks, perform to result.
    pub latency: Histogram,
    /// Worker kills.
    pub kills: usize,
    /// Broker restarts.
    pub restarts: usize,
    /// What the client node counted.
    pub client_stats: Option<aether::Stats>,
}

impl Report {
    /// Tasks with an error outcome.
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    /// Whether the soak held: no task lost, failed, wrong or answered twice.
    pub fn ok(&self) -> bool {
        self.lost == 0
            && self.duplicate_outcomes() == 0
            && self.failed_total() == 0
            && self.wrong_results == 0
    }

    /// Duplicate outcomes: a tid answered twice to the caller, or a task whose handler
    /// returned in two runs (each publishing its completion) that neither a kill nor a
    /// broker restart explains.
    pub fn duplicate_outcomes(&self) -> u64 {
        self.duplicate_outcomes + self.runs.other_completed_twice
    }

    /// Completed tasks per second of the soak.
    pub fn rate(&self) -> f64 {
        self.completed_once as f64 / self.duration.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.runs;
        writeln!(f, "soak on {} for {:?}", self.transport, self.duration)?;
        writeln!(f, "  submitted                 {}", self.submitted)?;
        writeln!(f, "  refused at submit         {}", self.refused)?;
        writeln!(f, "  completed once            {}", self.completed_once)?;
        writeln!(f, "  lost                      {}", self.lost)?;
        writeln!(
            f,
            "  failed                    {} {:?}",
            self.failed_total(),
            self.failed
        )?;
        writeln!(f, "  wrong results             {}", self.wrong_results)?;
        writeln!(
            f,
            "  duplicate outcomes        {} (to the caller: {}, completed by two runs: {})",
            self.duplicate_outcomes(),
            self.duplicate_outcomes,
            r.other_completed_twice
        )?;
        writeln!(f, "  handler runs              {}", r.total)?;
        writeln!(
            f,
            "  held by killed workers    {} (runs again: {}, more than once per kill: {})",
            r.held, r.held_reruns, r.held_over
        )?;
        writeln!(f, "  finished by killed, rerun {}", r.finished_rerun)?;
        writeln!(
            f,
            "  rerun around a restart    {} (completed twice: {})",
            r.restart_rerun, r.restart_completed_twice
        )?;
        writeln!(f, "  duplicate runs of others  {}", r.other_duplicate_runs)?;
        if !r.examples.is_empty() {
            writeln!(f, "    e.g. {}", r.examples.join(", "))?;
        }
        if !self.lost_examples.is_empty() {
            writeln!(
                f,
                "  lost/failed e.g.          {}",
                self.lost_examples.join(", ")
            )?;
        }
        writeln!(
            f,
            "  latency p50 / p99         {:?} / {:?}",
            self.latency.quantile(0.50),
            self.latency.quantile(0.99)
        )?;
        writeln!(f, "  tasks/s                   {:.1}", self.rate())?;
        writeln!(f, "  worker kills              {}", self.kills)?;
        writeln!(f, "  broker restarts           {}", self.restarts)?;
        if let Some(s) = &self.client_stats {
            writeln!(
                f,
                "  client: {} redispatched, {} duplicate updates absorbed, {} lost",
                s.redispatched, s.duplicate_updates, s.lost
            )?;
        }
        write!(
            f,
            "  result                    {}",
            if self.ok() { "OK" } else { "FAILED" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), Duration::ZERO);
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        assert_eq!(h.quantile(0.5), Duration::from_millis(51));
        assert_eq!(h.quantile(0.99), Duration::from_millis(100));
        h.record(Duration::from_micros(15));
        h.record(Duration::from_secs(5));
        h.record(Duration::from_secs(100_000));
        assert_eq!(h.quantile(0.0), Duration::from_micros(20));
        assert!(h.quantile(1.0) >= Duration::from_secs(1000));
    }

    #[test]
    fn runs_are_put_down_to_what_explains_them() {
        // (log, killed, start, at)
        let l = |log, killed, start, at| Line {
            log,
            killed,
            start,
            at,
        };
        let per_tid = HashMap::from([
            // once, on a live worker
            (
                "a".to_owned(),
                vec![l(0, false, true, 1), l(0, false, false, 2)],
            ),
            // held by killed worker 1, run again on 0
            (
                "b".to_owned(),
                vec![
                    l(1, true, true, 1),
                    l(0, false, true, 5),
                    l(0, false, false, 6),
                ],
            ),
            // finished by killed worker 1, run again on 0
            (
                "c".to_owned(),
                vec![
                    l(1, true, true, 1),
                    l(1, true, false, 2),
                    l(0, false, true, 5),
                    l(0, false, false, 6),
                ],
            ),
            // run twice, the second during the restart 100..=110 (+ grace)
            (
                "d".to_owned(),
                vec![
                    l(0, false, true, 90),
                    l(0, false, false, 91),
                    l(2, false, true, 115),
                    l(2, false, false, 116),
                ],
            ),
            // run twice, nothing explains it
            (
                "e".to_owned(),
                vec![
                    l(0, false, true, 300),
                    l(0, false, false, 301),
                    l(2, false, true, 400),
                    l(2, false, false, 401),
                ],
            ),
            // held by a killed worker, run twice more
            (
                "f".to_owned(),
                vec![
                    l(1, true, true, 1),
                    l(0, false, true, 5),
                    l(2, false, true, 6),
                ],
            ),
            // held by killed worker 1, then by killed worker 3, then run on 0: two kills
            (
                "g".to_owned(),
                vec![
                    l(1, true, true, 1),
                    l(3, true, true, 5),
                    l(0, false, true, 9),
                ],
            ),
        ]);
        let r = Runs::count(per_tid, &[(100, 120)]);
        assert_eq!(r.total, 15);
        assert_eq!((r.held, r.held_reruns, r.held_over), (3, 5, 1));
        assert_eq!(r.finished_rerun, 1);
        assert_eq!((r.restart_rerun, r.restart_completed_twice), (1, 1));
        assert_eq!((r.other_duplicate_runs, r.other_completed_twice), (1, 1));
        assert_eq!(
            r.examples,
            vec!["e (2 runs, 2 returned)", "f (3 runs, 0 returned)"]
        );
    }
}
