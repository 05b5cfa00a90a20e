//! `aether workers`: who is online, idle or busy, what they serve, since when, from what a
//! union's broadcasts say during a listening window.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::cli::{Output, WorkersArgs};
use crate::event::{self, Event, Kind};
use crate::exit::{Failure, Outcome};
use crate::target;

/// Tasks remembered as running per worker; a worker killed mid-task never completes them.
const RUNNING_CAP: usize = 1024;

pub(crate) async fn run(args: WorkersArgs) -> Result<Outcome, Failure> {
    let (url, rest) = target::split_url(args.positionals)?;
    target::refuse_memory(&url, "workers")?;
    if !rest.is_empty() {
        return Err(Failure::usage("expected URL"));
    }
    let filter = event::filter(&args.common.union, None)?;
    let transport = target::connect(&url).await?;
    let mut sub = transport.subscribe(&filter).await?;
    if args.common.output == Output::Text {
        eprintln!(
            "aether: listening {:?} for workers of union {} on {}",
            args.listen,
            args.common.union,
            aether::url::redact(&url)
        );
    }
    let mut seen: BTreeMap<String, Worker> = BTreeMap::new();
    let until = tokio::time::sleep(args.listen);
    tokio::pin!(until);
    loop {
        tokio::select! {
            received = sub.next() => match received {
                Some(Ok(message)) => {
                    if let Some(e) = Event::of(message) {
                        note(&mut seen, &e);
                    }
                }
                Some(Err(_)) => {}
                None => return Err(Failure::new(Outcome::Unreachable, "the broker closed the subscription")),
            },
            _ = &mut until => break,
        }
    }
    let _ = transport.close().await;
    print(&seen, args.common.output);
    Ok(Outcome::Succeeded)
}

/// A worker as heard of.
#[derive(Debug, Default)]
struct Worker {
    host: String,
    /// Unix ms: from its announcement's `since`, else when first heard.
    since: u64,
    last_heard: u64,
    serves: BTreeSet<String>,
    running: BTreeSet<String>,
    offline: bool,
}

impl Worker {
    fn state(&self) -> &'static str {
        match (self.offline, self.running.is_empty()) {
            (true, _) => "offline",
            (false, false) => "busy",
            (false, true) => "idle",
        }
    }
}

fn note(seen: &mut BTreeMap<String, Worker>, e: &Event) {
    let h = e.envelope.header();
    if matches!(e.kind, Kind::Perform | Kind::Cancel | Kind::Dismiss) {
        return; // sent by clients
    }
    let now = event::now_ms();
    let w = seen.entry(h.client.clone()).or_insert_with(|| Worker {
        since: now,
        ..Worker::default()
    });
    w.host.clone_from(&h.host);
    w.last_heard = now;
    if let Some(since) = e.envelope.data_value().get("since").and_then(Value::as_u64) {
        w.since = since;
    }
    match e.kind {
        Kind::Online => w.offline = false,
        Kind::Offline => w.offline = true,
        Kind::Idle => {
            w.serves.insert(e.address());
        }
        Kind::Status => {
            w.serves.insert(e.address());
            if w.running.len() < RUNNING_CAP {
                w.running.insert(e.tid().to_owned());
            }
        }
        Kind::Succeeded | Kind::Failed => {
            w.serves.insert(e.address());
            w.running.remove(e.tid());
        }
        Kind::Perform | Kind::Cancel | Kind::Dismiss => {}
    }
}

fn print(seen: &BTreeMap<String, Worker>, output: Output) {
    match output {
        Output::Json => {
            for (client, w) in seen {
                let obj = json!({
                    "client": client,
                    "host": w.host,
                    "state": w.state(),
                    "serves": w.serves,
                    "running": w.running.len(),
                    "since_ms": w.since,
                    "last_heard_ms": w.last_heard,
                });
                println!("{obj}");
            }
        }
        Output::Text => {
            if seen.is_empty() {
                eprintln!("aether: no worker was heard of");
                return;
            }
            println!(
                "{:<16} {:<38} {:<8} {:<7} {:<13} SERVES",
                "HOST", "CLIENT", "STATE", "RUNNING", "SINCE (UTC)"
            );
            for (client, w) in seen {
                println!(
                    "{:<16} {:<38} {:<8} {:<7} {:<13} {}",
                    w.host,
                    client,
                    w.state(),
                    w.running.len(),
                    event::clock(w.since),
                    w.serves.iter().cloned().collect::<Vec<_>>().join(", ")
                );
            }
        }
    }
}
