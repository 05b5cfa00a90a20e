//! Running the real `aether` binary against the brokers on loopback: each test has a union
//! of its own, so tests run in parallel; broker URLs come from `AETHER_TEST_<BACKEND>_URL`.

#![allow(dead_code, unreachable_pub)] // each test binary uses part of this

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

pub const BIN: &str = env!("CARGO_BIN_EXE_aether");

/// The broker URL of a backend: `AETHER_TEST_<BACKEND>_URL`, else the loopback default.
pub fn url(backend: &str) -> String {
    let (var, default) = match backend {
        "redis" => ("AETHER_TEST_REDIS_URL", "redis://127.0.0.1:6379"),
        "mqtt" => ("AETHER_TEST_MQTT_URL", "mqtt://127.0.0.1:1883"),
        "amqp" => (
            "AETHER_TEST_AMQP_URL",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
        ),
        other => panic!("no broker {other}"),
    };
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// A union no other test uses.
pub fn union() -> String {
    format!("cli{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// `aether ARGS` with no AETHER_* settings from the environment running the tests.
pub fn aether(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).kill_on_drop(true).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("AETHER_") && !k.starts_with("AETHER_TEST_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// What a finished command printed, and how it ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }
}

/// Runs `cmd` to its end, within `limit`.
pub async fn finish(mut cmd: Command, limit: Duration) -> Finished {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn aether");
    wait(child, limit).await
}

/// Waits for a spawned command (stdout and stderr piped) within `limit`.
pub async fn wait(child: Child, limit: Duration) -> Finished {
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("aether did not finish within {limit:?}"))
        .expect("wait for aether");
    Finished {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Sends `sig` to a child.
pub fn signal(child: &Child, sig: Signal) {
    let pid = Pid::from_raw(child.id().expect("running") as i32).expect("pid");
    kill_process(pid, sig).expect("signal");
}

/// A long-running `aether` (worker, watch) whose stderr or stdout lines are collected.
pub struct Running {
    pub child: Child,
    lines: Arc<(Mutex<Vec<String>>, Notify)>,
}

impl Running {
    /// Starts `cmd`, collecting the lines of stderr (`stdout == false`) or stdout.
    pub fn start(mut cmd: Command, stdout: bool) -> Running {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn aether");
        let lines = Arc::new((Mutex::new(Vec::new()), Notify::new()));
        let sink = lines.clone();
        let err = child.stderr.take().expect("stderr");
        let out = child.stdout.take().expect("stdout");
        tokio::spawn(async move {
            let mut reader: Box<dyn tokio::io::AsyncBufRead + Unpin + Send> = if stdout {
                Box::new(BufReader::new(out))
            } else {
                Box::new(BufReader::new(err))
            };
            let mut line = String::new();
            while reader.read_line(&mut line).await.unwrap_or(0) > 0 {
                sink.0.lock().unwrap().push(line.trim_end().to_owned());
                sink.1.notify_waiters();
                line.clear();
            }
        });
        Running { child, lines }
    }

    /// A worker: `aether worker URL ADDRESS --union U EXTRA -- CMD...`, ready to serve.
    pub async fn worker(
        url: &str,
        union: &str,
        address: &str,
        extra: &[&str],
        cmd: &[&str],
    ) -> Running {
        let mut args = vec!["worker", url, address, "--union", union];
        args.extend_from_slice(extra);
        args.push("--");
        args.extend_from_slice(cmd);
        let w = Running::start(aether(&args), false);
        w.wait_for("worker ready", Duration::from_secs(20)).await;
        w
    }

    /// The lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.0.lock().unwrap().clone()
    }

    /// Waits until a line contains `needle`; returns it.
    pub async fn wait_for(&self, needle: &str, limit: Duration) -> String {
        let found = tokio::time::timeout(limit, async {
            loop {
                let notified = self.lines.1.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if let Some(l) = self.lines().into_iter().find(|l| l.contains(needle)) {
                    return l;
                }
                notified.await;
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "no line with {needle:?} within {limit:?}; got:\n{}",
                self.lines().join("\n")
            )
        })
    }
}
