//! RabbitMQ for the AMQP conformance run: the shared broker from `AETHER_TEST_AMQP_URL`, and
//! private nodes a test starts on spare ports (so it can restart them, or give them a short
//! consumer timeout, without disturbing tests on the shared broker).
//!
//! A private node is the machine's `rabbitmq-server` (Debian's
//! `/usr/lib/rabbitmq/bin/rabbitmq-server`, or `AETHER_TEST_RABBITMQ_SERVER`) run as the
//! current user with its own node name, ports, data directory, Erlang cookie and config
//! under the system temp directory, and no plugins. It starts in about 7 s.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use aether::SharedTransport;
use async_trait::async_trait;
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, OnceCell};

use crate::brokers::spare_port;
use crate::harness::{Harness, PrivateBroker, UrlHarness};

/// The shared broker's URL when `AETHER_TEST_AMQP_URL` is not set.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// How long a private node may take to start.
const START_LIMIT: Duration = Duration::from_secs(90);

/// Settings every test connection uses: test queues delete themselves ten minutes after
/// their last use, so runs do not pile queues up on the shared broker.
const TEST_QUERY: &str = "queue_expires=600s";

/// `url` with the test settings added to its query.
pub fn with_test_query(url: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{TEST_QUERY}")
}

/// The AMQP transport under test: the shared broker, and lazily started private nodes for
/// the restart case.
#[derive(Clone, Debug)]
pub struct AmqpHarness {
    url: String,
    /// Extra URL settings, for the private nodes too.
    query: Option<String>,
}

impl AmqpHarness {
    /// The shared broker from `AETHER_TEST_AMQP_URL`, else [`DEFAULT_URL`].
    pub fn from_env() -> AmqpHarness {
        let base = UrlHarness::from_env("amqp", "AETHER_TEST_AMQP_URL", DEFAULT_URL);
        AmqpHarness {
            url: with_test_query(base.url()),
            query: None,
        }
    }

    /// The same with `query` (e.g. `queue_type=quorum`) added to every URL.
    pub fn with_query(query: &str) -> AmqpHarness {
        let h = AmqpHarness::from_env();
        AmqpHarness::at(h.url, query)
    }

    /// The broker at `url` (with the test settings already in its query) with `query`
    /// added to it and to the URLs of private nodes.
    pub fn at(url: String, query: &str) -> AmqpHarness {
        AmqpHarness {
            url: format!("{url}&{query}"),
            query: Some(query.to_owned()),
        }
    }
}

#[async_trait]
impl Harness for AmqpHarness {
    fn name(&self) -> String {
        "amqp".into()
    }

    fn url(&self) -> Option<String> {
        Some(self.url.clone())
    }

    async fn connect(&self) -> SharedTransport {
        match tokio::time::timeout(Duration::from_secs(20), aether::connect(&self.url)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => panic!(
                "amqp: cannot connect to {}: {e}. Is RabbitMQ running? (scripts/test.sh starts it)",
                aether::url::redact(&self.url)
            ),
            Err(_) => panic!(
                "amqp: connecting to {} timed out. Is RabbitMQ running?",
                aether::url::redact(&self.url)
            ),
        }
    }

    async fn private_broker(&self) -> Option<Box<dyn PrivateBroker>> {
        Some(Box::new(LazyRabbit {
            node: OnceCell::new(),
            query: self.query.clone(),
        }))
    }

    /// Deletes the case's exchanges (`aether.{union}`, `.work`, `.unrouted`); its
    /// queues expire by themselves (`queue_expires` in the test URL).
    async fn cleanup(&self, union: &str) {
        if let Err(e) = delete_exchanges(&self.url, union).await {
            eprintln!("amqp: cleanup of {union} failed: {e}");
        }
    }
}

/// A plain amqprs connection to `url` and a channel on it, for what a test checks or
/// tidies on the broker directly.
pub async fn raw_channel(
    url: &str,
) -> anyhow::Result<(
    aether::aether_amqp::amqprs::connection::Connection,
    aether::aether_amqp::amqprs::channel::Channel,
)> {
    use aether::aether_amqp::amqprs::connection::{Connection, OpenConnectionArguments};
    let u = aether::BrokerUrl::parse(url)?;
    let mut args = OpenConnectionArguments::new(
        u.host.trim_matches(['[', ']']),
        u.port.unwrap_or(5672),
        u.username.as_deref().unwrap_or("guest"),
        u.password.as_ref().map_or("guest", |p| p.expose()),
    );
    let vhost = if u.path.is_empty() {
        "/"
    } else {
        u.path.as_str()
    };
    args.virtual_host(vhost);
    let conn = Connection::open(&args).await?;
    let channel = conn.open_channel(None).await?;
    Ok((conn, channel))
}

async fn delete_exchanges(url: &str, union: &str) -> anyhow::Result<()> {
    use aether::aether_amqp::amqprs::channel::ExchangeDeleteArguments;
    let (conn, channel) = raw_channel(url).await?;
    for name in [
        format!("aether.{union}"),
        format!("aether.{union}.work"),
        format!("aether.{union}.unrouted"),
    ] {
        channel
            .exchange_delete(ExchangeDeleteArguments::new(&name))
            .await?;
    }
    let _ = channel.close().await;
    let _ = conn.close().await;
    Ok(())
}

/// A private node started on first use, so listing the cases costs nothing.
struct LazyRabbit {
    node: OnceCell<PrivateRabbit>,
    query: Option<String>,
}

impl LazyRabbit {
    async fn node(&self) -> &PrivateRabbit {
        self.node
            .get_or_init(|| PrivateRabbit::start(NodeConfig::default()))
            .await
    }
}

#[async_trait]
impl PrivateBroker for LazyRabbit {
    async fn connect(&self) -> SharedTransport {
        let node = self.node().await;
        match &self.query {
            None => node.connect().await,
            Some(q) => aether::connect(&format!("{}&{q}", node.url()))
                .await
                .unwrap_or_else(|e| panic!("connect to the private RabbitMQ node: {e}")),
        }
    }

    async fn restart(&self) {
        self.node().await.restart().await;
    }
}

/// Extra settings of a private node.
#[derive(Clone, Debug, Default)]
pub struct NodeConfig {
    /// Lines added to its `rabbitmq.conf`, e.g. `consumer_timeout = 2000`.
    pub conf: String,
    /// Its `advanced.config` terms for the `rabbit` application, e.g.
    /// `{channel_tick_interval, 500}`.
    pub rabbit_env: Vec<String>,
}

/// A RabbitMQ node of one test. Killed when dropped.
#[derive(Debug)]
pub struct PrivateRabbit {
    port: u16,
    node: String,
    dir: PathBuf,
    env: Vec<(String, String)>,
    child: Mutex<Option<Child>>,
}

impl PrivateRabbit {
    /// Starts a node and waits until it accepts AMQP connections. Panics with the node's
    /// log if it does not start.
    pub async fn start(config: NodeConfig) -> PrivateRabbit {
        let port = spare_port();
        let dist_port = spare_port();
        let node = format!("aether-test-{port}@localhost");
        let dir = std::env::temp_dir().join(format!(
            "aether-rabbit-{port}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir).expect("node directory");
        let conf = format!(
            "listeners.tcp.default = 127.0.0.1:{port}\n{}\n",
            config.conf
        );
        write(&dir, "rabbitmq.conf", &conf);
        write(&dir, "enabled_plugins", "[].\n");
        write(
            &dir,
            "advanced.config",
            &format!("[{{rabbit, [{}]}}].\n", config.rabbit_env.join(", ")),
        );
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let env = vec![
            ("HOME".into(), path("")),
            ("RABBITMQ_NODENAME".into(), node.clone()),
            ("RABBITMQ_NODE_PORT".into(), port.to_string()),
            ("RABBITMQ_DIST_PORT".into(), dist_port.to_string()),
            ("RABBITMQ_MNESIA_BASE".into(), path("mnesia")),
            ("RABBITMQ_LOG_BASE".into(), path("log")),
            ("RABBITMQ_CONFIG_FILE".into(), path("rabbitmq.conf")),
            (
                "RABBITMQ_ADVANCED_CONFIG_FILE".into(),
                path("advanced.config"),
            ),
            (
                "RABBITMQ_ENABLED_PLUGINS_FILE".into(),
                path("enabled_plugins"),
            ),
            ("RABBITMQ_PID_FILE".into(), path("rabbitmq.pid")),
            // Run the VM in place of the start script, so the child is the broker itself.
            ("RUNNING_UNDER_SYSTEMD".into(), "true".into()),
        ];
        let rabbit = PrivateRabbit {
            port,
            node,
            dir,
            env,
            child: Mutex::new(None),
        };
        rabbit.launch().await;
        rabbit
    }

    /// Its URL (guest/guest, default vhost), with the test settings.
    pub fn url(&self) -> String {
        with_test_query(&format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port))
    }

    /// Its Erlang node name.
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// A new connection to it.
    pub async fn connect(&self) -> SharedTransport {
        aether::connect(&self.url())
            .await
            .unwrap_or_else(|e| panic!("connect to the private RabbitMQ node: {e}"))
    }

    /// Runs `rabbitmqctl` against this node; panics with its output if it fails.
    pub async fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new(server_binary().with_file_name("rabbitmqctl"))
            .args(["-n", &self.node])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .await
            .expect("run rabbitmqctl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "rabbitmqctl {args:?} failed: {text}");
        text
    }

    /// Stops the node (SIGTERM: a clean shutdown that keeps durable queues and persistent
    /// messages) and starts it again on the same port and data.
    pub async fn restart(&self) {
        self.stop().await;
        self.launch().await;
    }

    async fn stop(&self) {
        let Some(mut child) = self.child.lock().await.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }

    async fn launch(&self) {
        let log = std::fs::File::create(self.dir.join("out.log")).expect("node log");
        let child = Command::new(server_binary())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("node log"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e}. Private RabbitMQ nodes need Debian's rabbitmq-server \
                     package (or AETHER_TEST_RABBITMQ_SERVER pointing at a rabbitmq-server script)",
                    server_binary().display()
                )
            });
        *self.child.lock().await = Some(child);
        self.await_ready().await;
    }

    /// Waits until the node takes AMQP connections.
    async fn await_ready(&self) {
        let start = tokio::time::Instant::now();
        loop {
            if let Ok(Ok(t)) =
                tokio::time::timeout(Duration::from_secs(5), aether::connect(&self.url())).await
            {
                let _ = t.close().await;
                return;
            }
            if let Some(child) = self.child.lock().await.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "the private RabbitMQ node exited ({status}):\n{}",
                    self.log()
                );
            }
            assert!(
                start.elapsed() < START_LIMIT,
                "the private RabbitMQ node did not start within {START_LIMIT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The broker's version, e.g. `3.10.8`.
    pub async fn version(&self) -> String {
        let status = self.ctl(&["status"]).await;
        status
            .lines()
            .find_map(|l| l.trim().strip_prefix("RabbitMQ version: "))
            .unwrap_or_else(|| panic!("no version in rabbitmqctl status:\n{status}"))
            .trim()
            .to_owned()
    }

    /// Everything the node logged so far.
    pub fn log_text(&self) -> String {
        let mut text = std::fs::read_to_string(self.dir.join("out.log")).unwrap_or_default();
        if let Ok(entries) = std::fs::read_dir(self.dir.join("log")) {
            for e in entries.flatten() {
                text.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        text
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("out.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

#[async_trait]
impl PrivateBroker for PrivateRabbit {
    async fn connect(&self) -> SharedTransport {
        PrivateRabbit::connect(self).await
    }

    async fn restart(&self) {
        PrivateRabbit::restart(self).await
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        if let Some(child) = self.child.get_mut().as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("write {name}: {e}"));
}

/// The `rabbitmq-server` script to run as the current user.
pub(crate) fn server_binary() -> PathBuf {
    if let Ok(p) = std::env::var("AETHER_TEST_RABBITMQ_SERVER") {
        return p.into();
    }
    // Debian's /usr/sbin/rabbitmq-server switches to the rabbitmq user; the script behind
    // it runs as whoever calls it.
    let debian = PathBuf::from("/usr/lib/rabbitmq/bin/rabbitmq-server");
    if debian.exists() {
        return debian;
    }
    PathBuf::from("rabbitmq-server")
}
