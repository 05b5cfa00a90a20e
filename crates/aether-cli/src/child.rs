//! One task run as a child process: payload on stdin, result on stdout, progress and
//! errors on stderr, killed (with its whole process group) on cancel and deadline.

use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aether::TaskContext;
use anyhow::{Context as _, anyhow};
use rustix::process::{Pid, Signal, kill_process_group};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};

/// The prefix of a stderr line that reports progress.
pub(crate) const PROGRESS_PREFIX: &str = "aether: ";

/// How long past a task's deadline the command is killed if no cancel came. The client
/// gives up at the deadline and cancels the task, which kills the command at once; this
/// is for a client that died, and leaves the client's deadline the outcome it reports
/// (a failure sent at the same instant could overtake it).
const DEADLINE_BACKSTOP: Duration = Duration::from_secs(2);

/// What runs per task.
#[derive(Debug)]
pub(crate) struct Spec {
    pub(crate) program: String,
    pub(crate) args: Vec<String>,
    /// Bytes of stderr kept as the failure message.
    pub(crate) stderr_tail: usize,
}

/// Kills the child's process group when dropped: however the task ends (exit, cancel,
/// deadline, the worker aborting the handler), nothing it started outlives it.
struct GroupGuard(Option<Pid>);

impl GroupGuard {
    fn signal(&self, sig: Signal) {
        if let Some(pid) = self.0 {
            // ESRCH (already gone) is the usual answer and fine.
            let _ = kill_process_group(pid, sig);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(Signal::KILL);
    }
}

/// Runs the task: the handler of `aether worker`.
pub(crate) async fn run(
    spec: Arc<Spec>,
    ctx: TaskContext,
    payload: Value,
) -> anyhow::Result<Value> {
    let mut child = spawn(&spec, &ctx)?;
    let guard = GroupGuard(child.id().and_then(|id| Pid::from_raw(id as i32)));
    let mut stdin = child.stdin.take().context("child stdin")?;
    let input = serde_json::to_vec(&payload)?;
    tokio::spawn(async move {
        // A child that does not read its stdin closes it early: not an error.
        let _ = stdin.write_all(&input).await;
        let _ = stdin.shutdown().await;
    });
    let mut stdout = child.stdout.take().context("child stdout")?;
    let out = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf).await;
        buf
    });
    let stderr = child.stderr.take().context("child stderr")?;
    let err = tokio::spawn(read_stderr(stderr, ctx.clone(), spec.stderr_tail));

    let status = tokio::select! {
        status = child.wait() => status.context("waiting for the command")?,
        _ = ctx.cancelled() => {
            stop(&guard, &mut child).await;
            return Err(anyhow!("cancelled; the command was killed"));
        }
        _ = until(ctx.deadline().map(|d| d + DEADLINE_BACKSTOP)) => {
            stop(&guard, &mut child).await;
            return Err(anyhow!("deadline passed; the command was killed"));
        }
    };
    // What the command left running in its group goes with it, so the pipes close.
    drop(guard);
    let grace = Duration::from_secs(2);
    let stdout = tokio::time::timeout(grace, out)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let tail = tokio::time::timeout(grace, err)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    if status.success() {
        Ok(result_of(&stdout))
    } else {
        Err(anyhow!(failure_message(&tail, status)))
    }
}

/// The first argument that makes `aether` a launcher: `aether --aether-launch PARENT_PID
/// PROGRAM ARGS...` asks the kernel to SIGKILL it when its parent dies, then becomes
/// PROGRAM (exec). A worker killed with SIGKILL runs no clean-up of its own, and without
/// this its command would run on as an orphan. Done in a launcher because setting the
/// signal between fork and exec (`pre_exec`) needs `unsafe`, which the workspace forbids.
#[cfg(target_os = "linux")]
const LAUNCH: &str = "--aether-launch";

/// When this process was started as a launcher ([`LAUNCH`]), becomes the program and does not
/// return, or returns the exit code of a launch that failed; else `None`.
#[cfg(target_os = "linux")]
pub(crate) fn launch_if_asked() -> Option<std::process::ExitCode> {
    use std::os::unix::process::CommandExt as _;
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(std::ffi::OsStr::new(LAUNCH)) {
        return None;
    }
    let parent = args
        .next()
        .and_then(|p| p.to_str()?.parse::<i32>().ok())
        .and_then(Pid::from_raw);
    let program = args.next()?;
    let code = |c: u8| Some(std::process::ExitCode::from(c));
    if let Err(e) = rustix::process::set_parent_process_death_signal(Some(Signal::KILL)) {
        eprintln!("aether: cannot tie {program:?} to its worker: {e}");
        return code(126);
    }
    // The worker may have died before the signal was set: then nobody will send it.
    if parent.is_none() || rustix::process::getppid() != parent {
        return code(125);
    }
    let e = std::process::Command::new(&program).args(args).exec();
    eprintln!("aether: cannot run {program:?}: {e}");
    code(127)
}

/// The command for `spec`: through the launcher where there is one.
fn command(spec: &Spec) -> Command {
    #[cfg(target_os = "linux")]
    if let Ok(me) = std::env::current_exe() {
        let mut cmd = Command::new(me);
        cmd.arg(LAUNCH)
            .arg(std::process::id().to_string())
            .arg(&spec.program);
        return cmd;
    }
    Command::new(&spec.program)
}

fn spawn(spec: &Spec, ctx: &TaskContext) -> anyhow::Result<Child> {
    let topic = ctx.topic();
    let mut cmd = command(spec);
    cmd.args(&spec.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .env("AETHER_TID", topic.tid())
        .env("AETHER_JOB", topic.job())
        .env("AETHER_TASK", topic.task())
        .env("AETHER_CONTEXT", topic.context())
        .env("AETHER_ATTEMPT", ctx.attempt().to_string());
    if let Some(ms) = ctx
        .deadline()
        .and_then(|d| d.duration_since(SystemTime::UNIX_EPOCH).ok())
    {
        cmd.env("AETHER_DEADLINE_MS", ms.as_millis().to_string());
    }
    cmd.spawn()
        .with_context(|| format!("cannot run {:?}", spec.program))
}

/// SIGTERM to the group, up to 2 s to exit, then SIGKILL (by the guard).
async fn stop(guard: &GroupGuard, child: &mut Child) {
    guard.signal(Signal::TERM);
    let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
}

/// Completes at `deadline`; never if there is none.
async fn until(deadline: Option<SystemTime>) {
    match deadline {
        Some(d) => {
            let left = d
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::time::sleep(left).await;
        }
        None => std::future::pending().await,
    }
}

/// Reads stderr: progress lines are reported, others passed through to this process's
/// stderr (prefixed with the tid) and kept, their last `keep` bytes, for a failure message.
async fn read_stderr(stderr: ChildStderr, ctx: TaskContext, keep: usize) -> String {
    let mut lines = BufReader::new(stderr).lines();
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut kept = 0;
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some((percent, data)) = parse_progress(&line) {
            let sent = match data {
                Some(data) => ctx.progress_with(percent, &data).await,
                None => ctx.progress(percent).await,
            };
            if let Err(e) = sent {
                eprintln!("[{}] progress not sent: {e}", ctx.tid());
            }
            continue;
        }
        eprintln!("[{}] {line}", ctx.tid());
        kept += line.len() + 1;
        tail.push_back(line);
        while kept > keep && tail.len() > 1 {
            kept -= tail.pop_front().map_or(0, |l| l.len() + 1);
        }
    }
    let mut text = Vec::from(tail).join("\n");
    if text.len() > keep {
        let mut cut = text.len() - keep;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text.drain(..cut);
    }
    text
}

/// `aether: progress 40`, `aether: progress 40 some words`, or
/// `aether: {"progress": 40, "data": ...}`.
pub(crate) fn parse_progress(line: &str) -> Option<(u8, Option<Value>)> {
    let rest = line.strip_prefix(PROGRESS_PREFIX)?.trim();
    if rest.starts_with('{') {
        let v: Value = serde_json::from_str(rest).ok()?;
        let percent = v.get("progress")?.as_u64()?.min(100) as u8;
        return Some((percent, v.get("data").cloned()));
    }
    let rest = rest.strip_prefix("progress")?.trim_start();
    let (num, words) = rest.split_once(' ').unwrap_or((rest, ""));
    let percent = num.parse::<f64>().ok()?.clamp(0.0, 100.0) as u8;
    let words = words.trim();
    Some((
        percent,
        (!words.is_empty()).then(|| Value::String(words.to_owned())),
    ))
}

/// The result: stdout as JSON if it parses, else as a string (one final newline dropped);
/// nothing is `null`.
pub(crate) fn result_of(stdout: &[u8]) -> Value {
    let text = String::from_utf8_lossy(stdout);
    if text.trim().is_empty() {
        return Value::Null;
    }
    serde_json::from_str(&text).unwrap_or_else(|_| {
        let s = text.strip_suffix('\n').unwrap_or(&text);
        Value::String(s.strip_suffix('\r').unwrap_or(s).to_owned())
    })
}

fn failure_message(tail: &str, status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    let how = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    };
    let tail = tail.trim();
    if tail.is_empty() {
        format!("the command failed ({how})")
    } else {
        format!("{tail} ({how})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn progress_lines() {
        assert_eq!(parse_progress("aether: progress 40"), Some((40, None)));
        assert_eq!(parse_progress("aether: progress 250"), Some((100, None)));
        assert_eq!(
            parse_progress("aether: progress 5 copying files"),
            Some((5, Some(json!("copying files"))))
        );
        assert_eq!(
            parse_progress(r#"aether: {"progress": 60, "data": {"stage": "b"}}"#),
            Some((60, Some(json!({"stage": "b"}))))
        );
        assert_eq!(parse_progress("progress 40"), None);
        assert_eq!(parse_progress("aether: hello"), None);
        assert_eq!(parse_progress("aether: progress x"), None);
    }

    #[test]
    fn results() {
        assert_eq!(result_of(b"{\"a\": 1}\n"), json!({"a": 1}));
        assert_eq!(result_of(b"hello\n"), json!("hello"));
        assert_eq!(result_of(b"42"), json!(42));
        assert_eq!(result_of(b"  \n"), Value::Null);
    }
}
