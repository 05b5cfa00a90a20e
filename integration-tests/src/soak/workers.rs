//! The soak's workers: processes running this same binary in its `worker` mode (the
//! in-memory transport's workers are tasks of the soak process instead, since its broker
//! lives there), killed with SIGKILL and replaced while tasks run.
//!
//! Every worker appends the tid of each handler run to a file of its own before the
//! handler starts, with one `write` per line: what a worker wrote is in the kernel before
//! the task runs, so a SIGKILL loses no count.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether::{Aether, Error, TaskContext, Worker};
use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// The job, task and context soak tasks are performed under.
pub const JOB: &str = "soak";
/// See [`JOB`].
pub const TASK: &str = "echo";
/// See [`JOB`].
pub const CONTEXT: &str = "x";

/// How long a new worker may take to say it is ready (a broker restarting holds it up).
const READY_LIMIT: Duration = Duration::from_secs(90);

/// What each worker is given.
#[derive(Clone, Debug)]
pub struct WorkerSpec {
    /// The broker's URL.
    pub url: String,
    /// The union.
    pub union: String,
    /// Tasks a worker runs at once.
    pub concurrency: usize,
    /// How long each handler run takes.
    pub work: Duration,
    /// The node's lease.
    pub lease: Duration,
}

/// Starts serving soak tasks on `node`: each run appends `s {tid} {ms}` to `log`, sleeps
/// `work`, appends `d {tid} {ms}` and returns the number it was given.
pub async fn serve(
    node: &Aether,
    log: &Path,
    concurrency: usize,
    work: Duration,
) -> anyhow::Result<Worker> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open the run log {}", log.display()))?;
    let file = Arc::new(Mutex::new(file));
    let worker = node
        .worker()
        .announce(false)
        .concurrency(concurrency)
        .handle(JOB, TASK, CONTEXT, move |ctx: TaskContext, n: u64| {
            let tid = ctx.tid().to_owned();
            append(&file, 's', &tid);
            let file = file.clone();
            async move {
                tokio::time::sleep(work).await;
                append(&file, 'd', &tid);
                Ok::<_, Error>(n)
            }
        })
        .start()
        .await?;
    Ok(worker)
}

/// Appends `{kind} {tid} {unix ms}` to the run log in one write.
fn append(file: &Mutex<std::fs::File>, kind: char, tid: &str) {
    let line = format!("{kind} {tid} {}\n", unix_ms());
    file.lock()
        .unwrap_or_else(|e| e.into_inner())
        .write_all(line.as_bytes())
        .expect("append to the run log");
}

/// Milliseconds since the Unix epoch: the clock every process of the soak shares.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The `worker` mode of the soak binary: `soak worker URL UNION LOG CONCURRENCY WORK_MS
/// LEASE_MS`. Prints `ready` once it serves, then runs until killed.
pub async fn worker_main(args: &[String]) -> anyhow::Result<()> {
    let [url, union, log, concurrency, work_ms, lease_ms] = args else {
        bail!("usage: soak worker URL UNION LOG CONCURRENCY WORK_MS LEASE_MS");
    };
    let node = Aether::builder()
        .union(union)
        .lease(Duration::from_millis(lease_ms.parse()?))
        .transport(aether::connect(url).await?)
        .build()?;
    let work = Duration::from_millis(work_ms.parse()?);
    let _worker = serve(&node, Path::new(log), concurrency.parse()?, work).await?;
    println!("ready");
    std::io::stdout().flush()?;
    std::future::pending::<()>().await;
    Ok(())
}

/// One live worker.
#[derive(Debug)]
enum Member {
    /// A worker process; its stdout is kept open so it never writes to a closed pipe.
    Process { child: Child, _out: ChildStdout },
    /// A worker of this process (in-memory transport).
    Local { node: Aether, worker: Worker },
}

/// The live workers, and the run logs of every worker there was.
#[derive(Debug)]
pub struct Pool {
    spec: WorkerSpec,
    /// Workers are tasks of this process rather than processes.
    local: bool,
    dir: PathBuf,
    members: Vec<(Member, PathBuf)>,
    /// Run logs of the workers killed.
    killed: Vec<PathBuf>,
    next: usize,
}

impl Pool {
    /// A pool whose run logs go under `dir`, with no worker yet.
    pub fn new(spec: WorkerSpec, local: bool, dir: PathBuf) -> Pool {
        Pool {
            spec,
            local,
            dir,
            members: Vec::new(),
            killed: Vec::new(),
            next: 0,
        }
    }

    /// Workers killed so far.
    pub fn kills(&self) -> usize {
        self.killed.len()
    }

    /// Starts one more worker, trying again until one is ready (a broker that is
    /// restarting refuses connections for a while).
    pub async fn add(&mut self) {
        loop {
            let log = self.dir.join(format!("runs-{}.log", self.next));
            self.next += 1;
            match self.start(&log).await {
                Ok(m) => {
                    self.members.push((m, log));
                    return;
                }
                Err(e) => {
                    eprintln!("soak: a new worker did not start ({e:#}); trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    async fn start(&self, log: &Path) -> anyhow::Result<Member> {
        let s = &self.spec;
        if self.local {
            let node = Aether::builder()
                .union(&s.union)
                .lease(s.lease)
                .transport(aether::connect(&s.url).await?)
                .build()?;
            let worker = serve(&node, log, s.concurrency, s.work).await?;
            return Ok(Member::Local { node, worker });
        }
        let exe = std::env::current_exe().context("the soak binary's path")?;
        let mut child = Command::new(exe)
            .arg("worker")
            .args([&s.url, &s.union])
            .arg(log)
            .args([
                s.concurrency.to_string(),
                s.work.as_millis().to_string(),
                s.lease.as_millis().to_string(),
            ])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawn a worker process")?;
        let out = child.stdout.take().context("the worker's stdout")?;
        let mut lines = BufReader::new(out).lines();
        let ready = tokio::time::timeout(READY_LIMIT, lines.next_line()).await;
        match ready {
            Ok(Ok(Some(line))) if line == "ready" => Ok(Member::Process {
                child,
                _out: lines.into_inner().into_inner(),
            }),
            other => {
                let _ = child.kill().await;
                bail!("the worker process said {other:?} instead of ready")
            }
        }
    }

    /// Kills the worker at `index % live` at once (SIGKILL for a process; for a local
    /// worker, an abort that completes and acknowledges nothing, and its connection
    /// closed), and starts another in its place.
    pub async fn kill_and_replace(&mut self, index: usize) {
        if self.members.is_empty() {
            return;
        }
        let (member, log) = self.members.remove(index % self.members.len());
        match member {
            Member::Process { mut child, .. } => {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
            Member::Local { node, worker } => {
                worker.abort();
                let _ = node.close().await;
            }
        }
        self.killed.push(log);
        self.add().await;
    }

    /// Stops every live worker (the same way as a kill, but not counted as one), and
    /// returns the run logs: `(path, killed)`.
    pub async fn stop(mut self) -> Vec<(PathBuf, bool)> {
        let mut logs: Vec<(PathBuf, bool)> = self.killed.drain(..).map(|p| (p, true)).collect();
        for (member, log) in self.members.drain(..) {
            match member {
                Member::Process { mut child, .. } => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
                Member::Local { node, worker } => {
                    let _ = worker.shutdown(Duration::from_secs(5)).await;
                    let _ = node.close().await;
                }
            }
            logs.push((log, false));
        }
        logs
    }
}
