//! A peer system's benchmark run as a command beside aether's loops (`--peer URL COMMAND`),
//! e.g. Celery on Redis (`celery_bench.py`): the harness appends the number of tasks and
//! the in-flight level to the command, runs it with `sh -c`, and reads the last line that
//! reports `NAME: ... X tasks/s, p50=Y ms p99=Z ms`, so its runs join the same rounds,
//! medians and ratios as the raw loops of that URL.

use std::time::Duration;

use anyhow::{Context, bail};

use crate::runner::Report;

/// Runs `command tasks inflight` and reads its report.
pub(crate) async fn run(command: &str, tasks: usize, inflight: usize) -> anyhow::Result<Report> {
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{command} {tasks} {inflight}"))
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("run peer {command:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "peer {command:?} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    stdout
        .lines()
        .rev()
        .find_map(|line| parse(line, inflight))
        .with_context(|| format!("peer {command:?} printed no `NAME: ... tasks/s, p50=.. ms p99=.. ms` line: {stdout}"))
}

/// `celery redis: 500/500 completed, conc=1, 330.3 tasks/s, p50=1.7 ms p99=20.0 ms`.
fn parse(line: &str, inflight: usize) -> Option<Report> {
    let (name, rest) = line.split_once(':')?;
    let words: Vec<&str> = rest
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    let at = words.iter().position(|w| *w == "tasks/s")?;
    let per_sec: f64 = words.get(at.checked_sub(1)?)?.parse().ok()?;
    let ms = |key: &str| -> Option<Duration> {
        let v: f64 = words
            .iter()
            .find_map(|w| w.strip_prefix(key))?
            .parse()
            .ok()?;
        Some(Duration::from_secs_f64(v / 1e3))
    };
    let tasks = words
        .iter()
        .find_map(|w| w.split_once('/').and_then(|(done, _)| done.parse().ok()))
        .unwrap_or(0);
    Some(Report::from_figures(
        name.trim().to_owned(),
        inflight,
        tasks,
        per_sec,
        ms("p50=")?,
        ms("p99=")?,
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_celery_bench_line() {
        let r = super::parse(
            "celery redis: 500/500 completed, conc=64, 330.3 tasks/s, p50=1.7 ms p99=20.0 ms",
            64,
        )
        .expect("parsed");
        assert_eq!(
            r.row(),
            "| celery redis | 64 | 500 | 330 | 1.700 ms | 20.000 ms | - | - |"
        );
        assert!(super::parse("celery worker ready", 1).is_none());
    }
}
