//! `aether worker`: serves one task address by running a command per task.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aether::envelope::{Codec, Header, encode};
use aether::{Action, Aether, Status, TaskContext, Topic, WorkQueue};
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};

use crate::child::{self, Spec};
use crate::cli::WorkerArgs;
use crate::exit::{Failure, Outcome};
use crate::target::{self, Address, NodeOptions};

/// How often `aether worker` repeats its presence, so `aether workers` finds it.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(5);

pub(crate) async fn run(args: WorkerArgs) -> Result<Outcome, Failure> {
    let (url, rest) = target::split_url(args.positionals)?;
    target::refuse_memory(&url, "worker")?;
    let [address] = &rest[..] else {
        return Err(Failure::usage(
            "expected URL JOB/TASK[/CONTEXT] -- CMD ARGS...",
        ));
    };
    let address = Address::parse(address)?;
    let (program, cmd_args) = args
        .command
        .split_first()
        .ok_or_else(|| Failure::usage("no command after --"))?;
    let spec = Arc::new(Spec {
        program: program.clone(),
        args: cmd_args.to_vec(),
        stderr_tail: args.stderr_tail,
    });
    let options = NodeOptions {
        union: args.common.union,
        codec: Codec::Json,
        lease: args.lease,
        accept_at_once: false,
    };
    // The recorder goes in before the node: handles are registered as the worker starts.
    if let Some(addr) = args.metrics {
        let bound = crate::metrics::serve(addr).await?;
        eprintln!("aether: metrics on http://{bound}/metrics");
    }
    let node = target::node(target::connect(&url).await?, &options)?;
    let handler_spec = spec.clone();
    let worker = node
        .worker()
        .workgroup(&args.workgroup)
        .concurrency(args.concurrency as usize)
        .handle(
            &address.job,
            &address.task,
            &address.context,
            move |ctx: TaskContext, payload: Value| handle(handler_spec.clone(), ctx, payload),
        )
        .start()
        .await?;
    let presence = Presence {
        node: node.clone(),
        address: address.clone(),
        workgroup: args.workgroup.clone(),
        concurrency: args.concurrency,
        program: spec.program.clone(),
        since: aether_now_ms(),
    };
    let announcer = tokio::spawn(presence.clone().repeat());
    eprintln!(
        "aether: worker ready: {address} on {} (union {}, workgroup {}, concurrency {}), running {}",
        aether::url::redact(&url),
        node.config().union,
        args.workgroup,
        args.concurrency,
        spec.program
    );

    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!(
        "aether: stopping: no new tasks; {} running may take up to {:?} to finish (signal again to kill them)",
        worker.running(),
        args.grace
    );
    announcer.abort();
    tokio::select! {
        report = worker.shutdown(args.grace) => {
            let report = report?;
            if report.handed_back > 0 {
                eprintln!("aether: {} task(s) did not finish in time and went back to the workgroup", report.handed_back);
            }
        }
        _ = term.recv() => eprintln!("aether: killed the running tasks"),
        _ = tokio::signal::ctrl_c() => eprintln!("aether: killed the running tasks"),
    }
    // Neither the goodbye nor the close may keep a stopped worker alive.
    let limit = Duration::from_secs(5);
    if tokio::time::timeout(limit, presence.leave()).await.is_err() {
        eprintln!("aether: the goodbye was not sent within {limit:?}");
    }
    if tokio::time::timeout(limit, node.close()).await.is_err() {
        eprintln!("aether: the connection did not close within {limit:?}; leaving anyway");
    }
    Ok(Outcome::Succeeded)
}

/// One task: runs the command and logs how it went on stderr.
async fn handle(spec: Arc<Spec>, ctx: TaskContext, payload: Value) -> anyhow::Result<Value> {
    let tid = ctx.tid().to_owned();
    let started = Instant::now();
    eprintln!("[{tid}] running (attempt {})", ctx.attempt());
    let result = child::run(spec, ctx, payload).await;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    match &result {
        Ok(_) => eprintln!("[{tid}] succeeded ({ms:.1} ms)"),
        Err(e) => eprintln!("[{tid}] failed ({ms:.1} ms): {e}"),
    }
    result
}

fn aether_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// This worker's presence: `online` under `{union}/system/online/{host}/{client}` and
/// `idle` on its work queue, with what it serves and since when in the data.
#[derive(Clone, Debug)]
struct Presence {
    node: Aether,
    address: Address,
    workgroup: String,
    concurrency: u64,
    program: String,
    since: u64,
}

impl Presence {
    async fn repeat(self) {
        let mut tick = tokio::time::interval(ANNOUNCE_EVERY);
        tick.tick().await; // the worker announced itself at start
        loop {
            tick.tick().await;
            if let Err(e) = self.announce().await {
                eprintln!("aether: presence not sent: {e}");
            }
        }
    }

    fn data(&self) -> Value {
        json!({
            "since": self.since,
            "serves": self.address.to_string(),
            "workgroup": self.workgroup,
            "concurrency": self.concurrency,
            "command": self.program,
        })
    }

    fn online_topic(&self) -> aether::Result<Topic> {
        let c = self.node.config();
        Ok(Topic::new(
            &c.union,
            "system",
            "online",
            &c.host,
            &c.client_id,
            Action::Online,
        )?)
    }

    async fn announce(&self) -> aether::Result<()> {
        let c = self.node.config();
        let transport = self.node.transport("")?;
        let a = &self.address;
        let queue = WorkQueue::new(&c.union, &a.job, &a.task, &a.context, &self.workgroup)?;
        let tid = format!("{:08x}", aether_now_ms() as u32);
        let idle = Header::new(Action::Idle, &c.host, &c.client_id);
        transport
            .publish(
                &queue.topic(&tid, Action::Idle)?,
                encode(Codec::Json, &idle, &self.data())?,
            )
            .await?;
        let online = Header::new(Action::Online, &c.host, &c.client_id);
        transport
            .publish(
                &self.online_topic()?,
                encode(Codec::Json, &online, &self.data())?,
            )
            .await
    }

    /// Says this worker is gone: `online` with status `dismissed`, as MQTT's last will does.
    async fn leave(&self) {
        let c = self.node.config();
        let header = Header::new(Action::Online, &c.host, &c.client_id)
            .status(Status::Dismissed)
            .progress(0);
        let sent = async {
            let bytes = encode(Codec::Json, &header, &self.data())?;
            self.node
                .transport("")?
                .publish(&self.online_topic()?, bytes)
                .await
        };
        if let Err(e) = sent.await {
            eprintln!("aether: the goodbye was not sent: {e}");
        }
    }
}
