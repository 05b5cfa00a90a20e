//! `--hold N`: N WebSocket connections held by one hub, the hub's memory, and a round trip
//! while they are held.
//!
//! The hub runs as a child process (this binary with `--serve-hub`), so its resident
//! memory (`VmRSS` in `/proc/PID/status`) is its own: read once the hub has started, and
//! again once N aether peers are connected (`aether_ws::WsTransport`, each with one
//! subscription, as an idle client has). Then a worker and a client on two more
//! connections run `--tasks` round trips at 16 in flight while the N stay connected, and
//! the hub's `/health` says how many it holds. The soft limit on open files is raised to
//! the hard one where N needs it (each connection is a descriptor here and one in the hub).

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aether::aether_ws::WsTransport;
use aether::{Aether, Error, TaskContext, TopicFilter, Transport};
use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::runner::{Report, closed_loop};

/// Raises the soft limit on open files to `want` (at most the hard limit); the limit now.
fn raise_nofile(want: u64) -> anyhow::Result<u64> {
    rlimit::increase_nofile_limit(want).context("raise the open-file limit")
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

/// The hub's `/health` answer.
async fn health(port: u16) -> anyhow::Result<serde_json::Value> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: hub\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8(buf)?;
    let body = text.split_once("\r\n\r\n").context("an HTTP answer")?.1;
    Ok(serde_json::from_str(body)?)
}

pub(crate) async fn run(n: usize, tasks: usize) -> anyhow::Result<()> {
    let limit = raise_nofile(n as u64 * 2 + 512)?;
    if limit < n as u64 * 2 + 64 {
        bail!(
            "the open-file limit is {limit}; {n} connections need about {}",
            n * 2 + 64
        );
    }
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["--serve-hub", "ws://127.0.0.1:0?no_auth=true"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("start the hub process")?;
    let pid = child.id().context("the hub's pid")?;
    let mut lines = BufReader::new(child.stdout.take().context("hub stdout")?).lines();
    let port: u16 = loop {
        let line = lines.next_line().await?.context("the hub exited")?;
        if let Some(p) = line.strip_prefix("listening on ") {
            break p.trim().parse()?;
        }
    };
    let url = format!("ws://127.0.0.1:{port}/ws");
    let rss0 = rss_kib(pid)?;
    println!("hub pid {pid} on port {port}, open-file limit {limit}; RSS at start {rss0} KiB");

    let start = Instant::now();
    let mut held = Vec::with_capacity(n);
    let mut subs = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let connecting = chunk.iter().map(|&i| {
            let url = url.clone();
            async move {
                let t = WsTransport::connect(&url).await?;
                let f: TopicFilter = format!("hold/c{i}/t/x/+/complete").parse()?;
                let s = t.subscribe(&f).await?;
                Ok::<_, anyhow::Error>((t, s))
            }
        });
        for r in futures::future::join_all(connecting).await {
            let (t, s) = r?;
            held.push(Arc::new(t));
            subs.push(s);
        }
    }
    let took = start.elapsed();
    let rss1 = rss_kib(pid)?;
    let h = health(port).await?;
    println!(
        "{n} connections held (hub /health: {} connections) after {:.1} s; hub RSS {rss1} KiB: \
         {:.1} KiB per connection over the start",
        h["connections"],
        took.as_secs_f64(),
        (rss1.saturating_sub(rss0)) as f64 / n as f64
    );

    // A round trip while they are held.
    let worker_node = Aether::builder()
        .union("hold")
        .transport(aether::connect(&url).await?)
        .build()?;
    let worker = worker_node
        .worker()
        .announce(false)
        .concurrency(16)
        .handle(
            "bench",
            "echo",
            "x",
            |_ctx: TaskContext, v: String| async move { Ok::<_, Error>(v) },
        )
        .start()
        .await?;
    let client_node = Aether::builder()
        .union("hold")
        .transport(aether::connect(&url).await?)
        .build()?;
    let client = client_node.client();
    let one = || {
        let client = client.clone();
        async move {
            let task = client
                .perform("bench", "echo", "x", &"x".repeat(16))
                .await?;
            let _: String = task.result().await?;
            Ok::<_, anyhow::Error>(())
        }
    };
    let sample = closed_loop(tasks, 16, one).await?;
    let report = Report::new(format!("aether ws, {n} connections held"), 16, sample);
    println!("{}", Report::header());
    println!("{}", report.row());
    let h = health(port).await?;
    println!(
        "hub /health after the round trips: {} connections; hub RSS {} KiB",
        h["connections"],
        rss_kib(pid)?
    );
    worker.shutdown(Duration::from_secs(5)).await?;
    client_node.close().await?;
    worker_node.close().await?;
    for t in &held {
        t.close().await?;
    }
    child.kill().await?;
    Ok(())
}
