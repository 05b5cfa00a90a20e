//! Redis Clusters on spare loopback ports: one shared by the tests of a test binary (3
//! masters, 3 replicas, started on first use) and private ones a test may restart.
//!
//! Each node is a `redis-server --cluster-enabled yes` child of this process, without
//! persistence, its `nodes.conf` in a directory of its own under the system temp
//! directory; `redis-cli --cluster create` joins them. The nodes are started by a thread
//! that lives as long as the test process, through `setpriv --pdeathsig KILL` where it
//! exists, so the kernel kills them when the process ends, even when a run is aborted;
//! directories of earlier runs whose process is gone are removed at the next start.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use aether::SharedTransport;
use async_trait::async_trait;

use crate::brokers::{lock, spare_port, spawn_kept, sweep_stale_dirs};
use crate::harness::{Harness, PrivateBroker};

/// How long a cluster may take to form (or to be whole again after a restart).
const FORM_LIMIT: Duration = Duration::from_secs(30);

/// Where cluster directories go: `{temp}/aether-rcluster-{pid}-{random}`.
const DIR_PREFIX: &str = "aether-rcluster-";

/// The cluster the tests of this binary share: 3 masters with a replica each.
pub fn shared() -> &'static RedisCluster {
    static SHARED: LazyLock<RedisCluster> = LazyLock::new(|| RedisCluster::start(3, 1));
    &SHARED
}

/// The shared cluster in one mode (`streams` or `list`), each harness (one per test) with a
/// key prefix of its own, deleted when dropped. Its private broker is a cluster of 3
/// masters without replicas that the restart cases stop and start whole.
#[derive(Debug)]
pub struct RedisClusterHarness {
    mode: &'static str,
    prefix: String,
}

impl RedisClusterHarness {
    /// The shared cluster (started on first use) in `mode`.
    pub fn shared(mode: &'static str) -> RedisClusterHarness {
        RedisClusterHarness {
            mode,
            prefix: format!(
                "aethertest{}",
                &uuid::Uuid::new_v4().simple().to_string()[..10]
            ),
        }
    }

    /// The URL of the shared cluster with this harness's mode and prefix, and `query`.
    pub fn url_with(&self, query: &str) -> String {
        let mut own = format!("prefix={}", self.prefix);
        if !query.is_empty() {
            own = format!("{own}&{query}");
        }
        shared().url(self.mode, &own)
    }
}

impl Drop for RedisClusterHarness {
    fn drop(&mut self) {
        shared().delete_matching(&format!("{}:*", self.prefix));
    }
}

async fn connect(name: &str, url: &str) -> SharedTransport {
    match tokio::time::timeout(Duration::from_secs(20), aether::connect(url)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => panic!("{name}: cannot connect to {url}: {e}"),
        Err(_) => panic!("{name}: connecting to {url} timed out"),
    }
}

#[async_trait]
impl Harness for RedisClusterHarness {
    fn name(&self) -> String {
        format!("redis-cluster-{}", self.mode)
    }

    fn url(&self) -> Option<String> {
        Some(self.url_with(""))
    }

    async fn connect(&self) -> SharedTransport {
        let url = tokio::task::block_in_place(|| self.url_with(""));
        connect(&self.name(), &url).await
    }

    /// `max_len=limit`: `enqueue` refuses past it with `Error::QueueFull`.
    async fn connect_limited(&self, limit: u64) -> Option<SharedTransport> {
        let url = tokio::task::block_in_place(|| self.url_with(&format!("max_len={limit}")));
        Some(connect(&self.name(), &url).await)
    }

    fn one_address(&self) -> bool {
        false
    }

    async fn private_broker(&self) -> Option<Box<dyn PrivateBroker>> {
        let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 0))
            .await
            .expect("starting a private cluster");
        Some(Box::new(PrivateCluster {
            cluster,
            mode: self.mode,
        }))
    }
}

/// A cluster of one test, which it may restart whole.
#[derive(Debug)]
struct PrivateCluster {
    cluster: RedisCluster,
    mode: &'static str,
}

#[async_trait]
impl PrivateBroker for PrivateCluster {
    async fn connect(&self) -> SharedTransport {
        connect("private redis cluster", &self.cluster.url(self.mode, "")).await
    }

    async fn restart(&self) {
        tokio::task::block_in_place(|| self.cluster.restart_all());
    }
}

/// A Redis Cluster of `redis-server` children of this process.
#[derive(Debug)]
pub struct RedisCluster {
    dir: PathBuf,
    ports: Vec<u16>,
    nodes: Mutex<Vec<Option<Child>>>,
}

impl RedisCluster {
    /// Starts `masters` masters with `replicas` replicas each and forms the cluster;
    /// panics (failing the test) if it cannot. Blocks: call it outside async code or
    /// accept a short stall of one runtime thread.
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        sweep_stale_dirs(DIR_PREFIX);
        let dir = std::env::temp_dir().join(format!(
            "{DIR_PREFIX}{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir).expect("a directory for the cluster");
        let ports: Vec<u16> = (0..masters * (1 + replicas))
            .map(|_| spare_port())
            .collect();
        let c = RedisCluster {
            dir,
            nodes: Mutex::new(ports.iter().map(|_| None).collect()),
            ports,
        };
        for i in 0..c.ports.len() {
            c.start_node(i);
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        create.args(c.ports.iter().map(|p| format!("127.0.0.1:{p}")));
        create.args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"]);
        let out = create.output().expect("redis-cli on PATH (redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        c.wait_whole();
        c
    }

    /// The ports of every node, masters first as created (roles change on failover).
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// An aether URL for the cluster in `mode`, every node a seed, with `query` appended.
    pub fn url(&self, mode: &str, query: &str) -> String {
        let mut url = format!("redis://127.0.0.1:{}?cluster=true", self.ports[0]);
        for p in &self.ports[1..] {
            url.push_str(&format!("&cluster_nodes=127.0.0.1:{p}"));
        }
        url.push_str(&format!("&mode={mode}"));
        if !query.is_empty() {
            url.push('&');
            url.push_str(query);
        }
        url
    }

    /// Starts node `i` (again), on its port with its `nodes.conf`, and waits until it
    /// answers.
    pub fn start_node(&self, i: usize) {
        let port = self.ports[i].to_string();
        let conf = self.dir.join(format!("nodes-{port}.conf"));
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes", "--cluster-config-file"])
            .arg(&conf)
            .args(["--cluster-node-timeout", "1000"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = spawn_kept(cmd).expect("redis-server on PATH (apt-get install redis-server)");
        lock(&self.nodes)[i] = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.ports[i])).is_err() {
            assert!(
                Instant::now() < deadline,
                "cluster node on port {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The indices of the nodes running now.
    pub fn running(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.ports.len()).filter(|i| lock(&self.nodes)[*i].is_some())
    }

    /// Kills node `i` with SIGKILL (a crash: no failover handshake).
    pub fn kill_node(&self, i: usize) {
        if let Some(mut child) = lock(&self.nodes)[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs `redis-cli -p {port of node i}` with `args`; its standard output.
    pub fn cli(&self, i: usize, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.ports[i].to_string()])
            .args(args)
            .output()
            .expect("redis-cli on PATH (redis-tools)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The index of the node that serves `key` as master now.
    pub fn master_of(&self, key: &str) -> usize {
        let seen = self.running().next().expect("a running node");
        let slot = self.cli(seen, &["CLUSTER", "KEYSLOT", key]);
        let slot: u16 = slot.trim().parse().expect("a slot number");
        for line in self.cli(seen, &["CLUSTER", "NODES"]).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let serves = f[8..].iter().any(|range| {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                a.parse::<u16>().is_ok_and(|a| a <= slot)
                    && b.parse::<u16>().is_ok_and(|b| slot <= b)
            });
            let port = f[1]
                .split([':', '@'])
                .nth(1)
                .and_then(|p| p.parse::<u16>().ok());
            if let (true, Some(port)) = (serves, port) {
                return self
                    .ports
                    .iter()
                    .position(|p| *p == port)
                    .expect("a node of ours");
            }
        }
        panic!("no master serves the slot of {key}");
    }

    /// Deletes every key matching `pattern` on every node (a test's own prefix).
    pub fn delete_matching(&self, pattern: &str) {
        let mut script = String::new();
        for i in 0..self.ports.len() {
            for key in self.cli(i, &["--scan", "--pattern", pattern]).lines() {
                if !key.is_empty() {
                    script.push_str(&format!("DEL {key}\n"));
                }
            }
        }
        if script.is_empty() {
            return;
        }
        let Ok(mut child) = Command::new("redis-cli")
            .args(["-c", "-p"])
            .arg(
                self.running()
                    .next()
                    .map_or(0, |i| self.ports[i])
                    .to_string(),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        else {
            return;
        };
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            let _ = stdin.write_all(script.as_bytes());
        }
        let _ = child.wait();
    }

    /// Waits until every running node sees the cluster whole (`cluster_state:ok`) and
    /// every master's replicas are in sync.
    pub fn wait_whole(&self) {
        let deadline = Instant::now() + FORM_LIMIT;
        loop {
            let ok = self.running().all(|i| {
                let replication = self.cli(i, &["INFO", "replication"]);
                self.cli(i, &["CLUSTER", "INFO"])
                    .contains("cluster_state:ok")
                    && !replication.contains("master_link_status:down")
                    && !replication.contains("master_sync_in_progress:1")
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster on ports {:?} is not whole after {FORM_LIMIT:?}",
                self.ports
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills every node, then starts them again on the same ports with their
    /// `nodes.conf` (their data is gone: nothing is persisted), and waits until the
    /// cluster is whole.
    pub fn restart_all(&self) {
        for i in 0..self.ports.len() {
            self.kill_node(i);
        }
        for i in 0..self.ports.len() {
            self.start_node(i);
        }
        self.wait_whole();
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for i in 0..self.ports.len() {
            self.kill_node(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
