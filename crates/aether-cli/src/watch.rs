//! `aether watch`: a live view of a union's tasks and workers, from its broadcasts.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::time::Instant;

use serde_json::{Map, Value, json};

use crate::cli::{Output, WatchArgs};
use crate::event::{self, Event, Kind};
use crate::exit::{Failure, Outcome};
use crate::target;

/// Tasks whose start is remembered for their duration; the oldest are forgotten past it.
const TRACKED: usize = 10_000;

pub(crate) async fn run(args: WatchArgs) -> Result<Outcome, Failure> {
    let (url, rest) = target::split_url(args.positionals)?;
    target::refuse_memory(&url, "watch")?;
    let below = match &rest[..] {
        [] => None,
        [f] => Some(f.as_str()),
        _ => return Err(Failure::usage("expected URL [FILTER]")),
    };
    let filter = event::filter(&args.common.union, below)?;
    let transport = target::connect(&url).await?;
    let mut sub = transport.subscribe(&filter).await?;
    if args.common.output == Output::Text {
        eprintln!("aether: watching {filter} on {}", aether::url::redact(&url));
    }
    let mut view = View {
        output: args.common.output,
        heartbeats: args.heartbeats,
        tasks: Tasks::default(),
    };
    let stop = async {
        match args.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            received = sub.next() => match received {
                Some(Ok(message)) => {
                    if let Some(event) = Event::of(message) {
                        view.show(&event);
                    }
                }
                Some(Err(_invalid)) => {}
                None => return Err(Failure::new(Outcome::Unreachable, "the broker closed the subscription")),
            },
            _ = &mut stop => break,
        }
    }
    let _ = transport.close().await;
    Ok(Outcome::Succeeded)
}

/// When each task was first seen and the progress last shown (`None` before any status),
/// bounded.
#[derive(Debug, Default)]
struct Tasks {
    seen: HashMap<String, (Instant, Option<u8>)>,
    order: VecDeque<String>,
}

impl Tasks {
    /// Records a sign of life of `key` at `progress`; returns the progress shown before.
    fn touch(&mut self, key: &str, progress: Option<u8>) -> Option<u8> {
        if let Some(entry) = self.seen.get_mut(key) {
            let before = entry.1;
            entry.1 = progress.or(before);
            return before;
        }
        if self.order.len() >= TRACKED
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.seen.insert(key.to_owned(), (Instant::now(), progress));
        self.order.push_back(key.to_owned());
        None
    }

    /// The task ended: how long since it was first seen, if it was.
    fn end(&mut self, key: &str) -> Option<f64> {
        let (start, _) = self.seen.remove(key)?;
        self.order.retain(|k| k != key);
        Some(start.elapsed().as_secs_f64() * 1e3)
    }
}

struct View {
    output: Output,
    heartbeats: bool,
    tasks: Tasks,
}

impl View {
    fn show(&mut self, e: &Event) {
        let key = format!("{}/{}", e.address(), e.tid());
        let mut extra = Map::new();
        let name = match e.kind {
            Kind::Perform => {
                self.tasks.touch(&key, None);
                "perform"
            }
            Kind::Status => match self.tasks.touch(&key, Some(e.progress())) {
                None if e.progress() == 0 => "accepted",
                Some(before) if before == e.progress() && !self.heartbeats => return,
                Some(before) if before == e.progress() => "heartbeat",
                _ => "progress",
            },
            Kind::Succeeded | Kind::Failed | Kind::Cancel => {
                if let Some(ms) = self.tasks.end(&key) {
                    extra.insert("duration_ms".into(), json!(ms));
                }
                match e.kind {
                    Kind::Succeeded => "succeeded",
                    Kind::Failed => "failed",
                    _ => "cancel",
                }
            }
            Kind::Idle => "idle",
            Kind::Online => "online",
            Kind::Offline => "offline",
            Kind::Dismiss => "dismiss",
        };
        let ts = event::now_ms();
        let mut out = std::io::stdout().lock();
        let _ = match self.output {
            Output::Json => writeln!(out, "{}", e.json(name, ts, extra)),
            Output::Text => writeln!(out, "{}", text(e, name, ts, &extra)),
        };
        let _ = out.flush();
    }
}

fn text(e: &Event, name: &str, ts: u64, extra: &Map<String, Value>) -> String {
    let h = e.envelope.header();
    let who = format!("{}/{}", h.host, short(&h.client));
    let what = match e.kind {
        Kind::Online | Kind::Offline => format!("{who:<40}"),
        Kind::Idle => format!("{:<40} serves {}", who, e.address()),
        _ => format!("{:<24} {:<16}", e.address(), e.tid()),
    };
    let mut detail = String::new();
    if matches!(e.kind, Kind::Status) {
        detail = format!("{:>3}%", e.progress());
    }
    if let Some(ms) = extra.get("duration_ms").and_then(Value::as_f64) {
        detail = format!("in {ms:.1} ms");
    }
    if let Some(err) = &h.error {
        detail.push_str(&format!(" error: {err}"));
    }
    if matches!(
        e.kind,
        Kind::Status | Kind::Perform | Kind::Cancel | Kind::Succeeded
    ) {
        detail.push_str(&format!(" by {who}"));
    }
    format!(
        "{} {:<10} {} {}",
        event::clock(ts),
        name,
        what,
        detail.trim_start()
    )
    .trim_end()
    .to_owned()
}

/// The first 8 characters of a client id.
fn short(client: &str) -> &str {
    client.get(..8).unwrap_or(client)
}
