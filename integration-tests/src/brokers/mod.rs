//! Private brokers a test starts on a spare port, so it may stop and restart them without
//! disturbing other tests on the shared brokers.

pub mod amqp;
pub mod amqp_cluster;
pub mod mqtt;
pub mod redis;
pub mod redis_cluster;
pub mod ws;
pub mod zmq;

use std::process::{Child, Command, Stdio};
use std::sync::{LazyLock, Mutex, mpsc};

/// A free TCP port on 127.0.0.1 (bound, then released for the broker to take).
pub fn spare_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a spare port")
}

/// Spawns `cmd` (program, arguments, environment and directory; its standard output goes
/// nowhere) from a thread that lives as long as the process, under `setpriv
/// --pdeathsig KILL` where available: the parent-death signal follows the thread that
/// spawned the child, and a test's own thread ends with the test.
pub(crate) fn spawn_kept(cmd: Command) -> std::io::Result<Child> {
    spawn_kept_to(cmd, Stdio::null(), Stdio::inherit())
}

/// [`spawn_kept`] with the child's standard output and error going to `out` and `err`.
pub(crate) fn spawn_kept_to(cmd: Command, out: Stdio, err: Stdio) -> std::io::Result<Child> {
    type Job = (Command, Stdio, Stdio, mpsc::Sender<std::io::Result<Child>>);
    static KEEPER: LazyLock<Mutex<mpsc::Sender<Job>>> = LazyLock::new(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("broker-keeper".into())
            .spawn(move || {
                let setpriv = Command::new("setpriv")
                    .arg("--help")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                for (cmd, out, err, reply) in rx {
                    let _ = reply.send(if setpriv {
                        let mut wrapped = Command::new("setpriv");
                        wrapped.args(["--pdeathsig", "KILL", "--"]);
                        wrapped.arg(cmd.get_program()).args(cmd.get_args());
                        wrapped.envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))));
                        if let Some(dir) = cmd.get_current_dir() {
                            wrapped.current_dir(dir);
                        }
                        wrapped.stdin(Stdio::null()).stdout(out).stderr(err);
                        wrapped.spawn()
                    } else {
                        let mut cmd = cmd;
                        cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn()
                    });
                }
                // The channel never closes (the sender is static): this thread stays.
            })
            .expect("a keeper thread");
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    lock(&KEEPER)
        .send((cmd, out, err, tx))
        .expect("the keeper thread runs");
    rx.recv().expect("the keeper answers")
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes the directories named `{prefix}{pid}-...` in the temporary directory whose
/// test process `pid` is gone (clusters a killed test run left behind).
pub(crate) fn sweep_stale_dirs(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !std::path::Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
