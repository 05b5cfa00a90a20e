//! `aether perform`: one task followed to its outcome, or `--count` of them for quick load.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aether::{Client, TaskHandle};
use serde_json::{Value, json};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{Semaphore, watch};

use crate::cli::{Output, PerformArgs};
use crate::display::Display;
use crate::exit::{Failure, Outcome};
use crate::target::{self, Address, NodeOptions};

/// What to perform, resolved from the command line.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) address: Address,
    pub(crate) payload: Value,
    pub(crate) deadline: Option<Duration>,
}

pub(crate) async fn run(args: PerformArgs) -> Result<Outcome, Failure> {
    let (url, rest) = target::split_url(args.positionals)?;
    target::refuse_memory(&url, "perform")?;
    let (address, payload) = match &rest[..] {
        [address] => (address, None),
        [address, payload] => (address, Some(payload.as_str())),
        _ => {
            return Err(Failure::usage(
                "expected JOB/TASK[/CONTEXT] [PAYLOAD|@FILE|-]",
            ));
        }
    };
    let plan = Arc::new(Plan {
        address: Address::parse(address)?,
        payload: read_payload(payload)?,
        deadline: args.deadline,
    });
    let options = NodeOptions {
        union: args.common.union,
        codec: args.codec,
        lease: args.lease,
        accept_at_once: true,
    };
    let node = target::node(target::connect(&url).await?, &options)?;
    let client = node.client();
    let outcome = if args.count == 1 {
        one(&client, &plan, args.common.output).await
    } else {
        many(&client, plan, args.count, args.inflight, args.common.output).await
    };
    let _ = node.close().await;
    outcome
}

/// The payload argument: none is `{}`; `-` is stdin; `@FILE` a file; else JSON, or a
/// string where it is not JSON.
fn read_payload(arg: Option<&str>) -> Result<Value, Failure> {
    let text = match arg {
        None => return Ok(json!({})),
        Some("-") => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| Failure::usage(format!("reading the payload from stdin: {e}")))?;
            s
        }
        Some(arg) => match arg.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| Failure::usage(format!("reading the payload from {path}: {e}")))?,
            None => return Ok(serde_json::from_str(arg).unwrap_or_else(|_| json!(arg))),
        },
    };
    serde_json::from_str(&text).map_err(|e| Failure::usage(format!("the payload is not JSON: {e}")))
}

/// SIGINT (Ctrl-C), from now on.
fn interrupts() -> Result<Signal, Failure> {
    Ok(signal(SignalKind::interrupt())?)
}

async fn send(client: &Client, plan: &Plan) -> aether::Result<TaskHandle> {
    let mut builder = client
        .task(&plan.address.job, &plan.address.task)
        .context(&plan.address.context);
    if let Some(d) = plan.deadline {
        builder = builder.deadline(d);
    }
    builder.perform(&plan.payload).await
}

/// One task: progress shown, result on stdout, Ctrl-C cancels it on the worker.
async fn one(client: &Client, plan: &Plan, output: Output) -> Result<Outcome, Failure> {
    // Registered before the perform goes out, so no Ctrl-C is missed.
    let mut ctrl_c = interrupts()?;
    let started = Instant::now();
    let mut task = send(client, plan).await?;
    let display = Display::new(&plan.address.to_string(), 100, "%", output == Output::Json);
    let mut interrupted = false;
    loop {
        tokio::select! {
            p = task.next_progress() => match p {
                Some(p) => display.progress(p.percent, &p.data::<Value>().unwrap_or(Value::Null)),
                None => break,
            },
            _ = ctrl_c.recv(), if !interrupted => {
                interrupted = true;
                if let Err(e) = task.cancel().await {
                    eprintln!("aether: the cancel did not reach the broker: {e}");
                }
            }
        }
    }
    let result = task.outcome().await;
    let elapsed = started.elapsed();
    let outcome = match &result {
        Ok(_) => Outcome::Succeeded,
        Err(e) => Outcome::of(e),
    };
    display.finish(outcome.as_str(), outcome == Outcome::Succeeded);
    let tid = task.tid();
    match (output, result) {
        (Output::Json, result) => {
            let mut obj = json!({
                "tid": tid,
                "outcome": outcome.as_str(),
                "duration_ms": elapsed.as_secs_f64() * 1e3,
            });
            match result {
                Ok(env) => obj["result"] = env.data_value(),
                Err(e) => {
                    obj["error"] = json!(e.to_string());
                    if let aether::Error::TaskFailed { data, .. } = e {
                        obj["data"] = data;
                    }
                }
            }
            println!("{obj}");
        }
        (Output::Text, Ok(env)) => println!("{}", env.data_value()),
        (Output::Text, Err(e)) => eprintln!("aether: {e}"),
    }
    Ok(outcome)
}

/// `--count` tasks, `inflight` at a time; prints a summary. Ctrl-C cancels those in flight
/// and sends no more. The exit code is that of the first task that did not succeed.
pub(crate) async fn many(
    client: &Client,
    plan: Arc<Plan>,
    count: u64,
    inflight: u64,
    output: Output,
) -> Result<Outcome, Failure> {
    let display = Display::new(&plan.address.to_string(), count, "", true);
    let sem = Arc::new(Semaphore::new(inflight as usize));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut set = tokio::task::JoinSet::new();
    let mut ctrl_c = interrupts()?;
    let started = Instant::now();
    let mut results: Vec<(u64, Outcome, Duration)> = Vec::with_capacity(count as usize);
    let mut sent = 0;
    while sent < count || !set.is_empty() {
        tokio::select! {
            permit = sem.clone().acquire_owned(), if sent < count && !*stop_rx.borrow() => {
                let permit = permit.expect("never closed");
                let (client, plan, stop) = (client.clone(), plan.clone(), stop_rx.clone());
                let n = sent;
                set.spawn(async move {
                    let _permit = permit;
                    let (outcome, took) = follow(&client, &plan, stop).await;
                    (n, outcome, took)
                });
                sent += 1;
            }
            Some(done) = set.join_next(), if !set.is_empty() => {
                if let Ok(r) = done {
                    display.inc();
                    results.push(r);
                }
            }
            _ = ctrl_c.recv(), if !*stop_rx.borrow() => {
                let _ = stop_tx.send(true);
            }
        }
        if *stop_rx.borrow() && set.is_empty() {
            break;
        }
    }
    let elapsed = started.elapsed();
    display.finish("done", false);
    results.sort_by_key(|r| r.0);
    let summary = Summary::of(&results, elapsed);
    match output {
        Output::Json => println!("{}", summary.json()),
        Output::Text => eprintln!("{}", summary.text()),
    }
    Ok(results
        .iter()
        .map(|r| r.1)
        .find(|o| *o != Outcome::Succeeded)
        .unwrap_or(Outcome::Succeeded))
}

/// Sends one task and waits for its outcome, cancelling it if `stop` turns true.
async fn follow(
    client: &Client,
    plan: &Plan,
    mut stop: watch::Receiver<bool>,
) -> (Outcome, Duration) {
    let started = Instant::now();
    let task = match send(client, plan).await {
        Ok(t) => t,
        Err(e) => return (Outcome::of(&e), started.elapsed()),
    };
    let result = tokio::select! {
        r = task.outcome() => r,
        _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => {
            let _ = task.cancel().await;
            task.outcome().await
        }
    };
    let outcome = result
        .as_ref()
        .map_or_else(Outcome::of, |_| Outcome::Succeeded);
    (outcome, started.elapsed())
}

/// What `--count` prints.
#[derive(Debug)]
struct Summary {
    tasks: usize,
    by_outcome: std::collections::BTreeMap<&'static str, usize>,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Summary {
    fn of(results: &[(u64, Outcome, Duration)], elapsed: Duration) -> Summary {
        let mut by_outcome = std::collections::BTreeMap::new();
        for r in results {
            *by_outcome.entry(r.1.as_str()).or_insert(0) += 1;
        }
        let mut ms: Vec<f64> = results.iter().map(|r| r.2.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        Summary {
            tasks: results.len(),
            by_outcome,
            seconds: elapsed.as_secs_f64(),
            p50_ms: percentile(&ms, 0.50),
            p99_ms: percentile(&ms, 0.99),
        }
    }

    fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.tasks as f64 / self.seconds
        } else {
            0.0
        }
    }

    fn json(&self) -> Value {
        json!({
            "tasks": self.tasks,
            "outcomes": self.by_outcome,
            "seconds": self.seconds,
            "tasks_per_s": self.rate(),
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
        })
    }

    fn text(&self) -> String {
        let outcomes: Vec<String> = self
            .by_outcome
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        format!(
            "{} tasks in {:.3} s: {:.0} tasks/s, p50 {:.3} ms, p99 {:.3} ms ({})",
            self.tasks,
            self.seconds,
            self.rate(),
            self.p50_ms,
            self.p99_ms,
            outcomes.join(", ")
        )
    }
}

/// The `q` quantile of sorted values (nearest rank); 0 for none.
pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads() {
        assert_eq!(read_payload(None).unwrap(), json!({}));
        assert_eq!(read_payload(Some(r#"{"a":1}"#)).unwrap(), json!({"a": 1}));
        assert_eq!(read_payload(Some("hello")).unwrap(), json!("hello"));
        assert_eq!(read_payload(Some("42")).unwrap(), json!(42));
        assert!(read_payload(Some("@/nonexistent/file")).is_err());
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
