//! The soak: tasks run continuously on one transport for a while, worker processes are
//! killed with SIGKILL and replaced, a private broker is restarted, and at the end every
//! task is accounted for (`soak --help`; the binary is `src/bin/soak.rs`).
//!
//! - `in_flight` submitters each perform a task and await its outcome, again and again,
//!   until the duration is over; then outstanding tasks get the drain period. A task with
//!   no outcome by then is *lost*.
//! - Each handler run is counted where it happens: workers append to run logs that a
//!   SIGKILL cannot lose ([`workers`]). Runs of tasks a killed worker had started are
//!   expected to repeat once; any other repeat is reported apart.
//! - The soak passes ([`Report::ok`]) when nothing is lost, failed, wrong, or has two
//!   outcomes.

pub mod broker;
pub mod options;
pub mod report;
pub mod workers;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether::{Aether, Client};
use tokio::time::Instant;

use self::broker::SoakBroker;
pub use self::options::{Options, Transport};
pub use self::report::Report;
use self::workers::{CONTEXT, JOB, Pool, TASK, WorkerSpec};

/// Runs one soak as `o` says and returns its figures.
pub async fn run(o: &Options) -> anyhow::Result<Report> {
    let broker = SoakBroker::start(o).await;
    let union = crate::harness::union();
    let dir = std::env::temp_dir().join(format!("aether-soak-{union}"));
    std::fs::create_dir_all(&dir)?;
    let spec = WorkerSpec {
        url: broker.url().to_owned(),
        union: union.clone(),
        concurrency: o.concurrency,
        work: o.work,
        lease: o.lease,
    };
    let mut pool = Pool::new(spec, o.transport == Transport::Memory, dir.clone());
    for _ in 0..o.workers {
        pool.add().await;
    }
    let mut builder = Aether::builder()
        .union(&union)
        .lease(o.lease)
        .transport(broker.connect().await?);
    if let Some(n) = o.max_attempts {
        builder = builder.max_attempts(n);
    }
    let client_node = builder.build()?;

    let start = Instant::now();
    let end = start + o.duration;
    let give_up = end + o.drain;
    let ledger: Arc<Mutex<Report>> = Arc::default();
    let numbers = Arc::new(AtomicU64::new(0));
    let mut submitters = tokio::task::JoinSet::new();
    for _ in 0..o.in_flight {
        let (client, ledger, numbers) = (client_node.client(), ledger.clone(), numbers.clone());
        submitters.spawn(submit_loop(client, ledger, numbers, end, give_up));
    }
    let restarts = chaos(o, &broker, &mut pool, &ledger, start, end).await;
    while let Some(r) = submitters.join_next().await {
        r?;
    }
    // A second run of a task would start within a lease or two of its outcome; nothing
    // to await for one that must not happen.
    tokio::time::sleep(2 * o.lease).await;
    let kills = pool.kills();
    let logs = pool.stop().await;
    let mut report = std::mem::take(&mut *ledger.lock().unwrap());
    report.transport = o.transport.name().to_owned();
    report.duration = o.duration;
    report.runs = report::Runs::read(&logs, &restarts, 2 * o.lease)?;
    report.kills = kills;
    report.restarts = restarts.len();
    report.client_stats = Some(client_node.stats());
    let _ = client_node.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(report)
}

/// Kills and replaces workers, restarts the broker, and prints progress until `end`.
/// Returns the restarts, as Unix-millisecond spans.
async fn chaos(
    o: &Options,
    broker: &SoakBroker,
    pool: &mut Pool,
    ledger: &Mutex<Report>,
    start: Instant,
    end: Instant,
) -> Vec<(u64, u64)> {
    let every = |d: Duration| (!d.is_zero()).then(|| start + d);
    let mut next_kill = every(o.kill_every);
    let restart_every = if broker.restartable() {
        o.restart_every
    } else {
        Duration::ZERO
    };
    let mut next_restart = every(restart_every);
    let mut next_progress = start + Duration::from_secs(10);
    let mut restarts = Vec::new();
    let mut victim = 0usize;
    loop {
        let next = [next_kill, next_restart, Some(next_progress), Some(end)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(end);
        tokio::time::sleep_until(next).await;
        let now = Instant::now();
        if now >= end {
            return restarts;
        }
        if next_kill.is_some_and(|t| now >= t) {
            // A different victim each time, not a predictable one.
            victim = victim.wrapping_add(1 + (uuid::Uuid::new_v4().as_u128() % 7) as usize);
            pool.kill_and_replace(victim).await;
            next_kill = Some(Instant::now() + o.kill_every);
        }
        if next_restart.is_some_and(|t| now >= t) {
            let began = workers::unix_ms();
            broker.restart().await;
            restarts.push((began, workers::unix_ms()));
            next_restart = Some(Instant::now() + restart_every);
        }
        if now >= next_progress {
            if !o.quiet {
                let l = ledger.lock().unwrap();
                eprintln!(
                    "soak {}: {:>4}s submitted {} completed {} failed {} kills {} restarts {}",
                    o.transport.name(),
                    (now - start).as_secs(),
                    l.submitted,
                    l.completed_once,
                    l.failed_total(),
                    pool.kills(),
                    restarts.len()
                );
            }
            next_progress = now + Duration::from_secs(10);
        }
    }
}

/// Performs tasks one after another until `end`, each awaited until `give_up`, and
/// records each outcome in `ledger`.
async fn submit_loop(
    client: Client,
    ledger: Arc<Mutex<Report>>,
    numbers: Arc<AtomicU64>,
    end: Instant,
    give_up: Instant,
) {
    let mut outcomes: HashMap<String, u32> = HashMap::new();
    while Instant::now() < end {
        let n = numbers.fetch_add(1, Ordering::Relaxed);
        let t0 = Instant::now();
        let task = match client.perform(JOB, TASK, CONTEXT, &n).await {
            Ok(task) => task,
            Err(_) => {
                // The broker is down or restarting: the caller learns it and tries again.
                ledger.lock().unwrap().refused += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let tid = task.tid().to_owned();
        ledger.lock().unwrap().submitted += 1;
        let outcome = tokio::time::timeout_at(give_up, task.result::<u64>()).await;
        let seen = outcomes.entry(tid.clone()).or_default();
        *seen += 1;
        let mut l = ledger.lock().unwrap();
        if *seen > 1 {
            l.duplicate_outcomes += 1;
        }
        match outcome {
            Err(_) => {
                l.lost += 1;
                note(&mut l.lost_examples, format!("{tid} (no outcome)"));
            }
            Ok(Ok(v)) if v == n => {
                l.completed_once += 1;
                l.latency.record(t0.elapsed());
            }
            Ok(Ok(v)) => {
                l.wrong_results += 1;
                note(&mut l.lost_examples, format!("{tid} (result {v}, not {n})"));
            }
            Ok(Err(e)) => {
                *l.failed.entry(error_kind(&e)).or_default() += 1;
                note(&mut l.lost_examples, format!("{tid} ({e})"));
            }
        }
    }
}

fn note(examples: &mut Vec<String>, what: String) {
    if examples.len() < 10 {
        examples.push(what);
    }
}

/// The error's variant name, e.g. `WorkerLost`.
fn error_kind(e: &aether::Error) -> String {
    let debug = format!("{e:?}");
    debug
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .next()
        .unwrap_or("Error")
        .to_owned()
}
