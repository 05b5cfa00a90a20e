//! RabbitMQ clusters on loopback: one shared by the tests of a test binary (3 nodes,
//! started on first use), with quorum queues.
//!
//! Each node is the machine's `rabbitmq-server` (see [`crate::brokers::amqp`]) run as the
//! current user with a node name, AMQP and distribution ports, data and log directories
//! of its own under `{temp}/aether-rmqcluster-{pid}-{random}`, no plugins, and the
//! cluster's Erlang cookie (`.erlang.cookie`, mode 0400, in the `HOME` they share). The
//! three start in parallel; the second and third then `rabbitmqctl join_cluster` the
//! first. Like the Redis Cluster's nodes they are children of a thread that lives as long
//! as the test process, under `setpriv --pdeathsig KILL`, so they die with it even when a
//! run is aborted; directories of earlier runs whose process is gone are removed at the
//! next start. The first node's Erlang port mapper (`epmd`) is the machine's, shared.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use aether::SharedTransport;
use async_trait::async_trait;

use crate::brokers::amqp::{AmqpHarness, with_test_query};
use crate::brokers::{lock, spare_port, spawn_kept_to, sweep_stale_dirs};
use crate::harness::{Harness, PrivateBroker};

/// How long a node may take to start, or to join the cluster.
const START_LIMIT: Duration = Duration::from_secs(90);

/// Where cluster directories go: `{temp}/aether-rmqcluster-{pid}-{random}`.
const DIR_PREFIX: &str = "aether-rmqcluster-";

/// The settings every connection to a cluster uses: quorum queues (replicated on every
/// node), with a dead-letter queue of their type.
pub const CLUSTER_QUERY: &str = "queue_type=quorum&dead_letter=aether.quorum-dead-letters";

/// The cluster the tests of this binary share: 3 nodes.
pub fn shared() -> &'static RabbitCluster {
    static SHARED: LazyLock<RabbitCluster> = LazyLock::new(|| RabbitCluster::start(3));
    &SHARED
}

/// The shared cluster (started on first use, blocking the thread that first asks for it)
/// for the conformance suite: every connection names all three nodes and uses
/// [`CLUSTER_QUERY`]. The restart cases, which restart their broker whole, run on a
/// private single node with the same settings (see [`AmqpHarness`]). Connections go to
/// the first node while it answers, so a proxy of its address cuts them all off; they
/// then come back through another node.
#[derive(Debug)]
pub struct AmqpClusterHarness {
    inner: AmqpHarness,
}

impl AmqpClusterHarness {
    /// The shared cluster, started if it is not yet.
    pub fn shared() -> AmqpClusterHarness {
        let url = tokio::task::block_in_place(|| shared().url(""));
        AmqpClusterHarness {
            inner: AmqpHarness::at(url, CLUSTER_QUERY),
        }
    }
}

#[async_trait]
impl Harness for AmqpClusterHarness {
    fn name(&self) -> String {
        "amqp-cluster".into()
    }

    fn url(&self) -> Option<String> {
        self.inner.url()
    }

    async fn connect(&self) -> SharedTransport {
        self.inner.connect().await
    }

    async fn private_broker(&self) -> Option<Box<dyn PrivateBroker>> {
        self.inner.private_broker().await
    }

    async fn cleanup(&self, union: &str) {
        self.inner.cleanup(union).await
    }
}

/// One node of a [`RabbitCluster`].
#[derive(Debug)]
struct NodeSpec {
    name: String,
    port: u16,
    dir: PathBuf,
    env: Vec<(String, String)>,
}

/// A RabbitMQ cluster of `rabbitmq-server` children of this process. Killed when dropped.
#[derive(Debug)]
pub struct RabbitCluster {
    dir: PathBuf,
    nodes: Vec<NodeSpec>,
    children: Mutex<Vec<Option<Child>>>,
}

impl RabbitCluster {
    /// Starts `n` nodes in parallel and joins the others to the first; panics (failing
    /// the test) with the node's log if one does not start or join. Blocks.
    pub fn start(n: usize) -> RabbitCluster {
        sweep_stale_dirs(DIR_PREFIX);
        let dir = std::env::temp_dir().join(format!(
            "{DIR_PREFIX}{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir).expect("a directory for the cluster");
        write_cookie(&dir);
        write(&dir, "enabled_plugins", "[].\n");
        write(&dir, "advanced.config", "[].\n");
        let nodes: Vec<NodeSpec> = (0..n).map(|i| node_spec(&dir, i)).collect();
        let c = RabbitCluster {
            dir,
            children: Mutex::new(nodes.iter().map(|_| None).collect()),
            nodes,
        };
        let started = Instant::now();
        for i in 0..n {
            c.launch(i);
        }
        std::thread::scope(|s| {
            for i in 0..n {
                let c = &c;
                s.spawn(move || c.await_booted(i));
            }
        });
        let booted = started.elapsed();
        let first = c.nodes[0].name.clone();
        // One at a time: RabbitMQ 3.10 may refuse concurrent joins to the same node.
        for i in 1..n {
            c.ctl(i, &["stop_app"]);
            c.ctl(i, &["join_cluster", &first]);
            c.ctl(i, &["start_app"]);
        }
        for i in 0..n {
            c.ctl(i, &["await_startup"]);
        }
        eprintln!(
            "rabbitmq cluster of {n} on ports {:?}: booted in {booted:?}, whole in {:?}",
            c.ports(),
            started.elapsed()
        );
        c
    }

    /// The AMQP port of every node.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Node `i`'s Erlang name, e.g. `aether-c1-40123@localhost`.
    pub fn node_name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// An aether URL naming every node (the first as host, the rest as `cluster_nodes`),
    /// with the test settings and `query` appended (none of [`CLUSTER_QUERY`]).
    pub fn url(&self, query: &str) -> String {
        let mut url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.nodes[0].port);
        let mut sep = '?';
        for n in &self.nodes[1..] {
            url.push_str(&format!("{sep}cluster_nodes=127.0.0.1:{}", n.port));
            sep = '&';
        }
        if !query.is_empty() {
            url.push_str(&format!("{sep}{query}"));
        }
        with_test_query(&url)
    }

    /// The indices of the nodes running now.
    pub fn running(&self) -> Vec<usize> {
        let children = lock(&self.children);
        (0..self.nodes.len())
            .filter(|i| children[*i].is_some())
            .collect()
    }

    /// Kills node `i` with SIGKILL (a crash: no handover).
    pub fn kill_node(&self, i: usize) {
        if let Some(mut child) = lock(&self.children)[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs `rabbitmqctl -n {node i}` with `args`; panics with its output if it fails.
    pub fn ctl(&self, i: usize, args: &[&str]) -> String {
        let n = &self.nodes[i];
        let out = Command::new(ctl_binary())
            .args(["-n", &n.name])
            .args(args)
            .envs(n.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .output()
            .expect("run rabbitmqctl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "rabbitmqctl -n {} {args:?} failed: {text}\n{}",
            n.name,
            self.log(i)
        );
        text
    }

    /// The index of the node leading quorum queue `queue`, asked of a running node.
    pub fn leader_of(&self, queue: &str) -> usize {
        let asked = self.running()[0];
        let listing = self.ctl(asked, &["list_queues", "-q", "name", "leader"]);
        let leader = listing
            .lines()
            .find_map(|l| {
                let (name, leader) = l.split_once('\t')?;
                (name == queue).then(|| leader.trim().to_owned())
            })
            .unwrap_or_else(|| panic!("no queue {queue} in:\n{listing}"));
        self.nodes
            .iter()
            .position(|n| n.name == leader)
            .unwrap_or_else(|| panic!("{queue} is led by {leader}, not a node of ours"))
    }

    /// The resident memory of each running node, in MiB (from `/proc`).
    pub fn memory_mib(&self) -> Vec<u64> {
        let children = lock(&self.children);
        children
            .iter()
            .flatten()
            .filter_map(|c| {
                let status = std::fs::read_to_string(format!("/proc/{}/status", c.id())).ok()?;
                let kb: u64 = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()?;
                Some(kb / 1024)
            })
            .collect()
    }

    fn launch(&self, i: usize) {
        let n = &self.nodes[i];
        let log = std::fs::File::create(n.dir.join("out.log")).expect("node log");
        let mut cmd = Command::new(crate::brokers::amqp::server_binary());
        cmd.envs(n.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let child = spawn_kept_to(
            cmd,
            Stdio::from(log.try_clone().expect("node log")),
            Stdio::from(log),
        )
        .unwrap_or_else(|e| panic!("cannot start rabbitmq-server: {e}"));
        lock(&self.children)[i] = Some(child);
    }

    /// Waits until node `i` takes AMQP connections (a TCP connection to its port: the
    /// listener opens last in the boot).
    fn await_booted(&self, i: usize) {
        let deadline = Instant::now() + START_LIMIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.nodes[i].port)).is_err() {
            if let Some(child) = lock(&self.children)[i].as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("RabbitMQ node {i} exited ({status}):\n{}", self.log(i));
            }
            assert!(
                Instant::now() < deadline,
                "RabbitMQ node {i} did not start within {START_LIMIT:?}:\n{}",
                self.log(i)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self, i: usize) -> String {
        let text = std::fs::read_to_string(self.nodes[i].dir.join("out.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
        if std::thread::panicking() {
            eprintln!("the nodes' logs are in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Names, ports, directories and environment of node `i` of the cluster in `dir`.
fn node_spec(dir: &Path, i: usize) -> NodeSpec {
    let port = spare_port();
    let dist_port = spare_port();
    let name = format!("aether-c{i}-{port}@localhost");
    let own = dir.join(format!("n{i}"));
    std::fs::create_dir_all(&own).expect("a node directory");
    write(
        &own,
        "rabbitmq.conf",
        &format!("listeners.tcp.default = 127.0.0.1:{port}\n"),
    );
    let path = |p: PathBuf| p.to_string_lossy().into_owned();
    let env = vec![
        ("HOME".into(), path(dir.to_path_buf())),
        ("RABBITMQ_NODENAME".into(), name.clone()),
        ("RABBITMQ_NODE_PORT".into(), port.to_string()),
        ("RABBITMQ_DIST_PORT".into(), dist_port.to_string()),
        ("RABBITMQ_MNESIA_BASE".into(), path(own.join("mnesia"))),
        ("RABBITMQ_LOG_BASE".into(), path(own.join("log"))),
        (
            "RABBITMQ_CONFIG_FILE".into(),
            path(own.join("rabbitmq.conf")),
        ),
        (
            "RABBITMQ_ADVANCED_CONFIG_FILE".into(),
            path(dir.join("advanced.config")),
        ),
        (
            "RABBITMQ_ENABLED_PLUGINS_FILE".into(),
            path(dir.join("enabled_plugins")),
        ),
        ("RABBITMQ_PID_FILE".into(), path(own.join("rabbitmq.pid"))),
        // Run the VM in place of the start script, so the child is the broker itself.
        ("RUNNING_UNDER_SYSTEMD".into(), "true".into()),
    ];
    NodeSpec {
        name,
        port,
        dir: own,
        env,
    }
}

/// The cluster's Erlang cookie, readable by the owner only (Erlang refuses it otherwise).
fn write_cookie(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let cookie = dir.join(".erlang.cookie");
    write(
        dir,
        ".erlang.cookie",
        &uuid::Uuid::new_v4().simple().to_string(),
    );
    std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400))
        .expect("cookie permissions");
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("write {name}: {e}"));
}

fn ctl_binary() -> PathBuf {
    crate::brokers::amqp::server_binary().with_file_name("rabbitmqctl")
}
