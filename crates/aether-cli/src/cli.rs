//! The command line's grammar (clap derive): subcommands, their flags and environment.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The aether command line: perform tasks, serve them with any program, watch a system.
///
/// Exit codes: 0 succeeded, 1 failed, 2 bad usage, 3 deadline passed, 4 cancelled,
/// 5 broker unreachable or broker error, 6 no worker took the task (lost).
#[derive(Debug, Parser)]
#[command(name = "aether", version, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Performs a task and prints its result (JSON) on stdout.
    ///
    /// Not for `memory://`: the in-memory transport lives inside one process.
    ///
    /// PAYLOAD is JSON (a bare word that is not JSON is sent as a string), `@FILE` reads it
    /// from a file, `-` from stdin; none sends `{}`. Progress shows as a bar on a terminal,
    /// as `progress N` lines on stderr otherwise. Ctrl-C cancels the task on the worker.
    Perform(PerformArgs),
    /// Serves a task by running CMD once per task.
    ///
    /// The payload (JSON) is CMD's stdin; its stdout is the result (JSON if it parses,
    /// else a string); exit status 0 succeeds the task, any other fails it with the tail
    /// of CMD's stderr. A stderr line `aether: progress 40` (or
    /// `aether: {"progress": 40, "data": ...}`) reports progress; other stderr lines are
    /// passed through. CMD sees AETHER_TID, AETHER_JOB, AETHER_TASK, AETHER_CONTEXT,
    /// AETHER_ATTEMPT and, with a deadline, AETHER_DEADLINE_MS. CMD runs in its own
    /// process group, which is killed when the task is cancelled or passes its deadline.
    /// SIGTERM or Ctrl-C stops taking tasks and lets running ones finish (`--grace`).
    Worker(WorkerArgs),
    /// Shows tasks (performs, progress, outcomes, durations) and workers coming and going.
    ///
    /// Watches the union's broadcasts: acceptances, progress, completions, cancels and
    /// presence. Performs themselves travel on work queues, which only MQTT also shows to
    /// a watcher; elsewhere a task appears when a worker accepts it, and its duration is
    /// counted from there. `aether perform` asks for the acceptance at once, so its tasks
    /// always show; other clients let quick tasks skip it (then only the outcome shows).
    /// FILTER is a topic filter below the union, `JOB/TASK/CONTEXT/TID/ACTION` with `+`
    /// and a final `#` (default `#`). The in-memory transport (`memory://`) lives inside
    /// one process, so there is nothing to watch from another: it is refused.
    Watch(WatchArgs),
    /// Lists workers: online, idle, what they serve, since when.
    ///
    /// Listens for `--listen` to the union's presence and traffic. Workers announce
    /// themselves when they start; `aether worker` repeats its announcement every 5 s,
    /// other workers show once they announce or report on a task. Not for `memory://`.
    Workers(WorkersArgs),
    /// Round trip benchmark: an echo worker and a client on separate connections.
    ///
    /// Prints tasks/s, p50 and p99. `memory://` works here (both in this process).
    Bench(BenchArgs),
    /// Runs the WebSocket hub that processes connect to with `ws://host:port/ws`.
    ///
    /// Serves `GET /ws`, `POST /publish/{topic}`, `GET /health` and `GET /messages/{topic}`
    /// on one port. Prints `listening on ws://...` once bound; stops on SIGTERM or Ctrl-C.
    /// The token comes from `AETHER_WS_TOKEN` (never a flag: it would show in the process
    /// list); without one the listen URL must say `no_auth=true`. URL keys: no_auth,
    /// origins, max_connections, max_payload, heartbeat, send_queue, queue_capacity,
    /// metrics (`metrics=true`: Prometheus text on `GET /metrics`, behind the token), ...
    /// TLS: listen on `wss://host:port?tls_cert=cert.pem&tls_key=key.pem` (PEM files);
    /// peers then connect with `wss://host:port/ws?tls_ca=ca.pem`.
    /// With `--backend URL` the hub is a gateway: its WebSocket peers' work queues,
    /// redelivery and broadcasts live on that broker, so several hubs can share them.
    Hub(HubArgs),
    /// Runs the ZeroMQ device that processes connect to with `zmq://host:port`.
    ///
    /// Prints `listening on tcp://...` once bound; stops on SIGTERM or Ctrl-C. URL keys as
    /// for the transport (heartbeat, max_payload, hwm, queue_capacity, curve_secret_key,
    /// curve_clients, ...). The device keeps nothing across its own restart: clients and
    /// workers resubscribe and redispatch by themselves.
    Device(DeviceArgs),
}

/// What every subcommand that talks to a broker takes.
#[derive(Debug, Args)]
pub(crate) struct Common {
    /// The union (first topic level).
    #[arg(long, env = "AETHER_UNION", default_value = "default")]
    pub(crate) union: String,
    /// Output: `text` for people, `json` for scripts.
    #[arg(short, long, env = "AETHER_OUTPUT", value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct PerformArgs {
    /// Broker URL, e.g. redis://127.0.0.1:6379 (else AETHER_URL), then JOB/TASK[/CONTEXT],
    /// then PAYLOAD, @FILE or -. With AETHER_URL set the URL may be left out.
    #[arg(value_name = "URL JOB/TASK[/CONTEXT] [PAYLOAD]", num_args = 0..=3)]
    pub(crate) positionals: Vec<String>,
    #[command(flatten)]
    pub(crate) common: Common,
    /// Give up (and cancel the task) after this long, e.g. 500ms or 30s.
    #[arg(long, env = "AETHER_DEADLINE", value_parser = duration)]
    pub(crate) deadline: Option<Duration>,
    /// Wire format of the perform: json or msgpack.
    #[arg(long, env = "AETHER_CODEC", default_value = "json")]
    pub(crate) codec: aether::Codec,
    /// How long a task may go without a sign of life before it is sent again.
    #[arg(long, env = "AETHER_LEASE", value_parser = duration, default_value = "30s")]
    pub(crate) lease: Duration,
    /// Perform the task this many times (quick load); prints a summary.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: u64,
    /// With --count: tasks in flight at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub(crate) inflight: u64,
}

#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// Broker URL (else AETHER_URL), then JOB/TASK[/CONTEXT].
    #[arg(value_name = "URL JOB/TASK[/CONTEXT]", num_args = 1..=2)]
    pub(crate) positionals: Vec<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub(crate) command: Vec<String>,
    #[command(flatten)]
    pub(crate) common: Common,
    /// Tasks run at once.
    #[arg(long, env = "AETHER_CONCURRENCY", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub(crate) concurrency: u64,
    /// The workgroup: each task goes to one worker of each workgroup.
    #[arg(long, env = "AETHER_WORKGROUP", default_value = aether::DEFAULT_WORKGROUP)]
    pub(crate) workgroup: String,
    /// On SIGTERM or Ctrl-C, how long running tasks may take to finish before they are
    /// killed and handed back to the workgroup.
    #[arg(long, value_parser = duration, default_value = "30s")]
    pub(crate) grace: Duration,
    /// The lease this worker's transport uses to hand a silent worker's tasks to another.
    #[arg(long, env = "AETHER_LEASE", value_parser = duration, default_value = "30s")]
    pub(crate) lease: Duration,
    /// Bytes of CMD's stderr kept as a failed task's error message.
    #[arg(long, default_value_t = 2048)]
    pub(crate) stderr_tail: usize,
    /// Serve aether's metrics as Prometheus text on `GET /metrics` at this address, e.g.
    /// `127.0.0.1:9464` (port 0: any free port, printed at start).
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// Broker URL (else AETHER_URL), then FILTER.
    #[arg(value_name = "URL [FILTER]", num_args = 0..=2)]
    pub(crate) positionals: Vec<String>,
    #[command(flatten)]
    pub(crate) common: Common,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = duration)]
    pub(crate) duration: Option<Duration>,
    /// Show heartbeats (a status repeating the progress already shown) too.
    #[arg(long)]
    pub(crate) heartbeats: bool,
}

#[derive(Debug, Args)]
pub(crate) struct WorkersArgs {
    /// Broker URL (else AETHER_URL).
    #[arg(value_name = "URL", num_args = 0..=1)]
    pub(crate) positionals: Vec<String>,
    #[command(flatten)]
    pub(crate) common: Common,
    /// How long to listen for announcements and traffic.
    #[arg(long, value_parser = duration, default_value = "6s")]
    pub(crate) listen: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct HubArgs {
    /// Where to listen.
    #[arg(
        value_name = "URL",
        env = "AETHER_HUB_URL",
        default_value = "ws://127.0.0.1:8080"
    )]
    pub(crate) url: String,
    /// The broker the hub's peers share (`redis://`, `amqp://`, `mqtt://`, `zmq://`);
    /// default its own in-memory one.
    #[arg(long, value_name = "URL", env = "AETHER_HUB_BACKEND")]
    pub(crate) backend: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct DeviceArgs {
    /// Where to bind.
    #[arg(
        value_name = "URL",
        env = "AETHER_DEVICE_URL",
        default_value = "zmq://0.0.0.0:5555"
    )]
    pub(crate) url: String,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Broker URL (else AETHER_URL).
    #[arg(value_name = "URL", num_args = 0..=1)]
    pub(crate) positionals: Vec<String>,
    #[command(flatten)]
    pub(crate) common: Common,
    /// Tasks to run.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) tasks: u64,
    /// Tasks in flight at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub(crate) inflight: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 16)]
    pub(crate) size: usize,
}

/// Durations as everywhere in aether: `250ms`, `30s`, `1.5s`.
fn duration(s: &str) -> Result<Duration, String> {
    aether::url::parse_duration("duration", s).map_err(|e| e.to_string())
}
