//! Round-trip benchmark harness: perform → worker → complete → client, measured in tasks/s
//! and p50/p99 latency at several numbers of tasks in flight, for any transport URL, beside
//! a raw broker-client baseline of the same loop in the same run.
//!
//! ```text
//! cargo run --release -p aether-bench -- [--tasks N] [--inflight 1,64] [--raw NAME] URL...
//! ```
//!
//! `--rounds N` repeats the whole sequence (every URL, aether then raw) N times,
//! interleaved, and ends with the median of each loop. A `zmq://host:port` URL (without
//! `bind`) gets an `aether_zmq::Device` started in this process on its own thread, unless
//! something already listens there; the raw tmq baseline starts its own the same way.
//!
//! `--defer-accept MS` sets the client's `Config::defer_accept` (0: workers accept every
//! task at once, as before that setting existed).
//!
//! Each URL gets its own worker node and client node (separate connections), a warm-up, then
//! one closed-loop run per in-flight level. `--raw NAME` adds the raw baseline of that
//! adapter (see `raw.rs`) on the same URL.

mod raw;
mod runner;

use std::time::Duration;

use aether::{Aether, Error, TaskContext};
use anyhow::{Context, bail};

use crate::runner::{Report, closed_loop};

struct Args {
    tasks: usize,
    inflight: Vec<usize>,
    raw: Vec<String>,
    urls: Vec<String>,
    payload: usize,
    /// `Config::defer_accept` for the client, if not the default.
    defer_accept: Option<u64>,
    /// Interleaved repetitions of the whole sequence.
    rounds: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        tasks: 20_000,
        inflight: vec![1, 64],
        raw: Vec::new(),
        urls: Vec::new(),
        payload: 16,
        defer_accept: None,
        rounds: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--tasks" => args.tasks = it.next().context("--tasks N")?.parse()?,
            "--payload" => args.payload = it.next().context("--payload BYTES")?.parse()?,
            "--inflight" => {
                args.inflight = it
                    .next()
                    .context("--inflight 1,64")?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--raw" => args.raw.push(it.next().context("--raw NAME")?),
            "--rounds" => args.rounds = it.next().context("--rounds N")?.parse()?,
            "--defer-accept" => {
                args.defer_accept = Some(it.next().context("--defer-accept MS")?.parse()?)
            }
            "-h" | "--help" => {
                println!(
                    "usage: aether-bench [--tasks N] [--inflight 1,64] [--payload BYTES] [--defer-accept MS] [--rounds N] [--raw {}] URL...",
                    raw::NAMES.join("|")
                );
                std::process::exit(0);
            }
            url if !url.starts_with('-') => args.urls.push(url.to_owned()),
            other => bail!("unknown option {other}"),
        }
    }
    if args.urls.is_empty() {
        args.urls.push("memory://bench".into());
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    println!(
        "{} tasks per run, payload {} bytes, {} cores",
        args.tasks,
        args.payload,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let _devices = zmq_devices(&args.urls);
    println!("{}", Report::header());
    let mut all = Vec::new();
    for _ in 0..args.rounds.max(1) {
        for url in &args.urls {
            for report in bench_aether(url, &args).await? {
                println!("{}", report.row());
                all.push(report);
            }
            for name in &args.raw {
                for &inflight in &args.inflight {
                    let r = raw::run(name, url, args.tasks, inflight, args.payload).await?;
                    println!("{}", r.row());
                    all.push(r);
                }
            }
        }
    }
    if args.rounds > 1 {
        println!("\n{}", Report::header());
        for r in runner::medians(&all) {
            println!("{}", r.row());
        }
    }
    Ok(())
}

/// A device in this process for each `zmq://` URL that does not host its own (`bind`),
/// unless one already listens on its port.
fn zmq_devices(urls: &[String]) -> Vec<aether::aether_zmq::Device> {
    let mut devices = Vec::new();
    for url in urls.iter().filter(|u| u.starts_with("zmq://")) {
        let Ok(config) = aether::aether_zmq::ZmqConfig::from_url(url) else {
            continue;
        };
        if config.bind {
            continue;
        }
        match aether::aether_zmq::Device::start(config) {
            Ok(d) => devices.push(d),
            Err(e) => eprintln!("note: no device started for {url} ({e}); using the one there"),
        }
    }
    devices
}

async fn bench_aether(url: &str, args: &Args) -> anyhow::Result<Vec<Report>> {
    // One union for every run, so runs reuse the same queues and streams on the broker
    // instead of leaving a new set behind each time.
    let union = "bench";
    let max_inflight = args.inflight.iter().copied().max().unwrap_or(1);
    let worker_node = Aether::builder()
        .union(union)
        .transport(aether::connect(url).await?)
        .build()?;
    let worker = worker_node
        .worker()
        .announce(false)
        .concurrency(max_inflight)
        .handle(
            "bench",
            "echo",
            "x",
            |_ctx: TaskContext, v: String| async move { Ok::<_, Error>(v) },
        )
        .start()
        .await?;
    let mut client_node = Aether::builder()
        .union(union)
        .transport(aether::connect(url).await?);
    if let Some(ms) = args.defer_accept {
        client_node = client_node.defer_accept(Duration::from_millis(ms));
    }
    let client_node = client_node.build()?;
    let client = client_node.client();
    let payload = "x".repeat(args.payload);
    let name = client_node.transport("")?.name();
    let one = |client: aether::Client, payload: String| async move {
        let task = client.perform("bench", "echo", "x", &payload).await?;
        let _: String = task.result().await?;
        Ok::<_, anyhow::Error>(())
    };
    // Warm-up: connections, subscriptions, allocator.
    closed_loop(1000.min(args.tasks), max_inflight, || {
        one(client.clone(), payload.clone())
    })
    .await?;
    let mut reports = Vec::new();
    for &inflight in &args.inflight {
        let (wall, lat) = closed_loop(args.tasks, inflight, || {
            one(client.clone(), payload.clone())
        })
        .await?;
        let label = match args.defer_accept {
            Some(ms) => format!("aether {name} (defer_accept {ms} ms)"),
            None => format!("aether {name}"),
        };
        reports.push(Report::new(label, inflight, wall, lat));
    }
    worker.shutdown(Duration::from_secs(5)).await?;
    let stats = client_node.stats();
    if stats.redispatched + stats.lost > 0 {
        eprintln!(
            "note: {} redispatched, {} lost",
            stats.redispatched, stats.lost
        );
    }
    client_node.close().await?;
    worker_node.close().await?;
    Ok(reports)
}
