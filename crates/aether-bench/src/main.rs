//! Round-trip benchmark harness: perform → worker → complete → client, measured in tasks/s
//! and p50/p99 latency at several numbers of tasks in flight, for any transport URL, beside
//! a raw broker-client baseline of the same loop in the same run.
//!
//! ```text
//! cargo run --release -p aether-bench -- [--rounds N] [--tasks N] [--inflight 1,64] [--raw NAME] URL...
//! ```
//!
//! The machine's CPU is shared and one run of a loop tells little: `--rounds N` runs every
//! loop (each URL's aether loop, then its raw baselines) N times, interleaved, prints each
//! run as it ends, then one summary line per loop with the median tasks/s, its min-max, the
//! median p50, p99 and CPU per task, and each aether loop's median as a share of each raw
//! loop's median on the same URL and in-flight level. CPU per task is this process's user +
//! system time over the run divided by its tasks (client, worker and client library all live
//! in the process, and on `memory://` the broker too). A `zmq://host:port` URL (without
//! `bind`) gets an `aether_zmq::Device` started in this process on its own thread, unless
//! something already listens there; the raw tmq baseline starts its own the same way.
//!
//! A `zmq://host:port?bind=true` URL is the brokerless topology: the client's transport
//! hosts the device (its connection joins it over `inproc://`) and the worker connects
//! to `zmq://host:port` over TCP, as a worker in another process would; its rows are
//! tagged `brokerless`, and the raw ZeroMQ baselines run the same topology on it.
//! `--raw libzmq` is the ZeroMQ floor: the raw tmq loop on blocking `zmq` sockets and
//! plain threads, without an async runtime (`raw/libzmq.rs`); `--raw zmq-fd` is the raw
//! tmq loop on Tokio without tmq, each socket's `ZMQ_FD` in the reactor (`raw/zmqfd.rs`).
//!
//! `--runtime current` runs the bench (client, worker, raw loops) on a current-thread
//! Tokio runtime instead of the default multi-thread one (one worker per core); devices
//! and hubs keep their own threads either way.
//!
//! `--inflight-for URL 64` adds a URL run at its own in-flight levels instead of
//! `--inflight`'s (e.g. MQTT at 64 only, beside ZeroMQ at 1 and 64, in one run).
//!
//! A `ws://host:port/ws` URL gets an `aether_ws::Hub` started in this process on its own
//! thread (admitting the URL's `token`, or anyone without one), unless something already
//! listens there; the raw tokio-tungstenite baseline (`--raw ws`) starts its own hub the
//! same way.
//!
//! `aether-bench --hold N [--tasks N]` measures something else: N WebSocket connections
//! held by one hub process, its memory, and a round trip while they are held (`hold.rs`).
//!
//! `--defer-accept MS` sets the client's `Config::defer_accept` (0: workers accept every
//! task at once, as before that setting existed).
//!
//! A run that starts no round trip for 30 s says so on stderr, with the client's and the
//! worker's stats, each 30 s until it moves again. Without `--observe`, `RUST_LOG` (e.g.
//! `RUST_LOG=aether_amqp=debug`) prints the library's events on stderr.
//!
//! `--observe` installs what a user who watches aether installs, before any node is built:
//! the Prometheus recorder (`aether::observe::prometheus::install`) and a `tracing`
//! subscriber at `INFO` (so every perform and process span is created and its fields
//! recorded; events are formatted and written to nowhere). Without it nothing is installed
//! and the metrics and spans cost what they cost when off.
//!
//! `--peer URL COMMAND` runs another system's benchmark beside that URL's loops in each
//! round (`COMMAND TASKS INFLIGHT`, see `peer.rs`), e.g. Celery on Redis:
//! `--peer redis://127.0.0.1:6379 "python3 ../shared/peers/celery_bench.py"`.
//!
//! Each URL gets its own worker node and client node (separate connections), a warm-up, then
//! one closed-loop run per in-flight level. `--raw NAME` adds the raw baseline of that
//! adapter (see `raw.rs`) on the same URL.
//!
//! Besides CPU per task, each row gives the process's context switches per task, those
//! where a thread waited (voluntary: each is a wake-up) plus those where it was preempted
//! (involuntary), from `/proc/self/task/*/status`.

mod hold;
mod peer;
mod raw;
mod runner;
mod ws_hub;

use std::time::Duration;

use aether::{Aether, Error, TaskContext};
use anyhow::{Context, bail};

use crate::runner::{Report, Rounds, closed_loop_watched};

struct Args {
    rounds: usize,
    tasks: usize,
    inflight: Vec<usize>,
    raw: Vec<String>,
    urls: Vec<String>,
    /// In-flight levels of the URLs given with `--inflight-for`, by URL.
    levels: std::collections::HashMap<String, Vec<usize>>,
    payload: usize,
    /// `Config::defer_accept` for the client, if not the default.
    defer_accept: Option<u64>,
    /// `--hold N`: connections to hold on one hub process instead of the loops.
    hold: Option<usize>,
    /// `--serve-hub URL`: be only a hub (the process `--hold` measures).
    serve_hub: Option<String>,
    /// `--peer URL COMMAND`: another system's benchmark run beside URL's loops.
    peers: Vec<(String, String)>,
    /// `--observe`: a Prometheus recorder and a tracing subscriber installed.
    observe: bool,
    /// `--runtime current`: a current-thread runtime instead of the multi-thread one.
    current_thread: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        rounds: 1,
        tasks: 20_000,
        inflight: vec![1, 64],
        raw: Vec::new(),
        urls: Vec::new(),
        levels: Default::default(),
        payload: 16,
        defer_accept: None,
        hold: None,
        serve_hub: None,
        peers: Vec::new(),
        observe: false,
        current_thread: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => args.rounds = it.next().context("--rounds N")?.parse()?,
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
            "--inflight-for" => {
                let url = it.next().context("--inflight-for URL 64")?;
                let levels = it
                    .next()
                    .context("--inflight-for URL 64")?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
                args.urls.push(url.clone());
                args.levels.insert(url, levels);
            }
            "--peer" => {
                let url = it.next().context("--peer URL COMMAND")?;
                let command = it.next().context("--peer URL COMMAND")?;
                args.peers.push((url, command));
            }
            "--raw" => args.raw.push(it.next().context("--raw NAME")?),
            "--observe" => args.observe = true,
            "--runtime" => {
                args.current_thread = match it.next().as_deref() {
                    Some("current") => true,
                    Some("multi") => false,
                    _ => bail!("--runtime current|multi"),
                }
            }
            "--hold" => args.hold = Some(it.next().context("--hold N")?.parse()?),
            "--serve-hub" => args.serve_hub = Some(it.next().context("--serve-hub URL")?),
            "--defer-accept" => {
                args.defer_accept = Some(it.next().context("--defer-accept MS")?.parse()?)
            }
            "-h" | "--help" => {
                println!(
                    "usage: aether-bench [--rounds N] [--tasks N] [--inflight 1,64] [--inflight-for URL 64] [--payload BYTES] [--defer-accept MS] [--runtime current|multi] [--raw {}] [--peer URL COMMAND] [--observe] URL...\n       aether-bench --hold N [--tasks N]",
                    raw::NAMES.join("|")
                );
                std::process::exit(0);
            }
            url if !url.starts_with('-') => args.urls.push(url.to_owned()),
            other => bail!("unknown option {other}"),
        }
    }
    if let Some(unknown) = args.raw.iter().find(|n| !raw::NAMES.contains(&n.as_str())) {
        bail!(
            "no raw baseline named {unknown:?}; known: {}",
            raw::NAMES.join(", ")
        );
    }
    if args.urls.is_empty() {
        args.urls.push("memory://bench".into());
    }
    if let Some((url, _)) = args.peers.iter().find(|(u, _)| !args.urls.contains(u)) {
        bail!("--peer {url}: that URL is not benchmarked in this run");
    }
    Ok(args)
}

/// `--observe`: the Prometheus recorder and a tracing subscriber at `INFO` whose output
/// goes nowhere, so the cost measured is aether's and the subscriber's, not a terminal's.
fn observe() -> anyhow::Result<()> {
    aether::observe::prometheus::install()?;
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::set_global_default(subscriber)?;
    Ok(())
}

impl Args {
    /// The in-flight levels `url` runs at.
    fn inflight(&self, url: &str) -> &[usize] {
        self.levels.get(url).unwrap_or(&self.inflight)
    }
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let runtime = if args.current_thread {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(listen) = &args.serve_hub {
        return ws_hub::serve(listen).await;
    }
    if let Some(n) = args.hold {
        return hold::run(n, args.tasks).await;
    }
    if args.observe {
        observe()?;
    } else if let Ok(filter) = std::env::var("RUST_LOG") {
        // Diagnosis: the library's events, as RUST_LOG selects, on stderr.
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    println!(
        "{} tasks per run, payload {} bytes, {} cores, {} runtime{}",
        args.tasks,
        args.payload,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if args.current_thread {
            "current-thread"
        } else {
            "multi-thread"
        },
        if args.observe {
            ", observed (Prometheus recorder, tracing subscriber at INFO)"
        } else {
            ""
        }
    );
    let _devices = zmq_devices(&args.urls);
    ws_hub::start_in_process(&args.urls)?;
    println!("{}", Report::header());
    let mut rounds = Rounds::default();
    for round in 1..=args.rounds.max(1) {
        if args.rounds > 1 {
            println!("| round {round} of {} | | | | | | |", args.rounds);
        }
        for (i, url) in args.urls.iter().enumerate() {
            for report in bench_aether(url, &args).await? {
                println!("{}", report.row());
                rounds.add(i, report);
            }
            for name in args.raw.iter().filter(|n| raw::applies(n, url)) {
                for &inflight in args.inflight(url) {
                    let r = raw::run(name, url, args.tasks, inflight, args.payload).await?;
                    println!("{}", r.row());
                    rounds.add(i, r);
                }
            }
            for (_, command) in args.peers.iter().filter(|(u, _)| u == url) {
                for &inflight in args.inflight(url) {
                    let r = peer::run(command, args.tasks, inflight).await?;
                    println!("{}", r.row());
                    rounds.add(i, r);
                }
            }
        }
    }
    if args.rounds > 1 {
        println!("\nmedians of {} interleaved rounds:\n", args.rounds);
        println!("{}", Rounds::header());
        for line in rounds.summary() {
            println!("{line}");
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

/// What tells runs of one transport apart in the table: ` quorum` for quorum queues,
/// ` cluster` for a URL naming cluster nodes, ` brokerless` for a process hosting the
/// ZeroMQ device (`bind=true`).
fn url_tags(url: &str) -> String {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let has = |kv: &str| query.split('&').any(|p| p == kv || p.starts_with(kv));
    let mut tags = String::new();
    if has("queue_type=quorum") {
        tags.push_str(" quorum");
    }
    if has("cluster_nodes=") || has("cluster=true") {
        tags.push_str(" cluster");
    }
    if url.starts_with("zmq://") && has("bind=true") {
        tags.push_str(" brokerless");
    }
    tags
}

/// The URL the worker connects with: `url`, except in the brokerless topology, where the
/// client hosts the device (`bind=true`) and the worker connects to it over TCP.
fn worker_url(url: &str) -> String {
    if !url_tags(url).contains("brokerless") {
        return url.to_owned();
    }
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let rest: Vec<&str> = query.split('&').filter(|p| *p != "bind=true").collect();
    if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    }
}

async fn bench_aether(url: &str, args: &Args) -> anyhow::Result<Vec<Report>> {
    // One union for every run, so runs reuse the same queues and streams on the broker
    // instead of leaving a new set behind each time.
    let union = "bench";
    let levels = args.inflight(url);
    let max_inflight = levels.iter().copied().max().unwrap_or(1);
    // The client's connection first: in the brokerless topology it hosts the device the
    // worker connects to.
    let client_transport = aether::connect(url).await?;
    let worker_node = Aether::builder()
        .union(union)
        .transport(aether::connect(&worker_url(url)).await?)
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
    let mut client_node = Aether::builder().union(union).transport(client_transport);
    if let Some(ms) = args.defer_accept {
        client_node = client_node.defer_accept(Duration::from_millis(ms));
    }
    let client_node = client_node.build()?;
    let client = client_node.client();
    let payload = "x".repeat(args.payload);
    let name = format!("{}{}", client_node.transport("")?.name(), url_tags(url));
    let one = |client: aether::Client, payload: String| async move {
        let task = client.perform("bench", "echo", "x", &payload).await?;
        let _: String = task.result().await?;
        Ok::<_, anyhow::Error>(())
    };
    // What a run that stalls prints beside how far it got.
    let state = || {
        let (c, w) = (client_node.clone(), worker_node.clone());
        move || format!("client {:?}; worker {:?}", c.stats(), w.stats())
    };
    // Warm-up: connections, subscriptions, allocator.
    closed_loop_watched(
        1000.min(args.tasks),
        max_inflight,
        || one(client.clone(), payload.clone()),
        state(),
    )
    .await?;
    let mut reports = Vec::new();
    for &inflight in levels {
        let sample = closed_loop_watched(
            args.tasks,
            inflight,
            || one(client.clone(), payload.clone()),
            state(),
        )
        .await?;
        let label = match args.defer_accept {
            Some(ms) => format!("aether {name} (defer_accept {ms} ms)"),
            None => format!("aether {name}"),
        };
        reports.push(Report::new(label, inflight, sample));
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

#[cfg(test)]
mod tests {
    use super::{url_tags, worker_url};

    #[test]
    fn runs_of_one_transport_are_told_apart_by_their_url() {
        assert_eq!(url_tags("amqp://h/%2f"), "");
        assert_eq!(url_tags("amqp://h/%2f?queue_type=quorum"), " quorum");
        assert_eq!(
            url_tags("amqp://h/%2f?cluster_nodes=h2:5672&queue_type=quorum"),
            " quorum cluster"
        );
        assert_eq!(url_tags("redis://h?cluster=true"), " cluster");
        assert_eq!(url_tags("amqp://h/?queue_type=classic"), "");
        assert_eq!(url_tags("zmq://h:5592?bind=true"), " brokerless");
        assert_eq!(url_tags("zmq://h:5591"), "");
    }

    #[test]
    fn the_worker_of_a_brokerless_url_connects_over_tcp() {
        assert_eq!(worker_url("zmq://h:5592?bind=true"), "zmq://h:5592");
        assert_eq!(
            worker_url("zmq://h:5592?hwm=5&bind=true&heartbeat=2s"),
            "zmq://h:5592?hwm=5&heartbeat=2s"
        );
        assert_eq!(worker_url("zmq://h:5591?hwm=5"), "zmq://h:5591?hwm=5");
        assert_eq!(worker_url("redis://h?mode=list"), "redis://h?mode=list");
    }
}
