//! A private Mosquitto for restart cases: started on a spare port with its own config
//! file, killed and started again on the same port by [`PrivateBroker::restart`].
//!
//! MQTT keeps no message for a subscriber that is not connected. After a restart every
//! connection reconnects and restores its subscriptions by itself, each on its own
//! schedule, so a perform a client sends the moment it is back can reach the broker before
//! the worker's subscription does and be lost, leaving the task to the client's lease
//! (30 s by default). `restart` therefore returns only once every connection opened
//! through this broker has reconnected and restored its subscriptions: the case then
//! checks that they do so without help, not that race.

use std::path::PathBuf;
use std::time::Duration;

use aether::SharedTransport;
use aether::aether_mqtt::MqttTransport;
use async_trait::async_trait;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use crate::harness::PrivateBroker;

/// A `mosquitto` process only one test uses.
#[derive(Debug)]
pub struct Mosquitto {
    port: u16,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
    /// Every connection opened through [`PrivateBroker::connect`].
    connections: std::sync::Mutex<Vec<MqttTransport>>,
    /// Query appended to the URL of each connection (`version=3.1.1`, ...).
    query: String,
}

impl Mosquitto {
    /// Starts `mosquitto` on a spare port of 127.0.0.1, anonymous, without persistence.
    /// Connections get `query` appended to their URL. Panics with a clear message when
    /// `mosquitto` is not installed.
    pub async fn start(query: &str) -> Mosquitto {
        let port = super::spare_port();
        let dir = std::env::temp_dir().join(format!(
            "aether-mosquitto-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir for mosquitto");
        std::fs::write(
            dir.join("mosquitto.conf"),
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest none\n"
            ),
        )
        .expect("mosquitto config");
        let m = Mosquitto {
            port,
            dir,
            child: Mutex::new(None),
            connections: Default::default(),
            query: query.to_owned(),
        };
        m.spawn().await;
        m
    }

    /// `mqtt://127.0.0.1:{port}` with the query.
    pub fn url(&self) -> String {
        let mut url = format!("mqtt://127.0.0.1:{}", self.port);
        if !self.query.is_empty() {
            url.push('?');
            url.push_str(&self.query);
        }
        url
    }

    async fn spawn(&self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start mosquitto ({e}); install it (apt-get install mosquitto)")
            });
        *self.child.lock().await = Some(child);
        // Ready when it accepts connections (refused at once until it listens).
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "mosquitto did not listen on port {} within 10 s",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[async_trait]
impl PrivateBroker for Mosquitto {
    async fn connect(&self) -> SharedTransport {
        let t = MqttTransport::connect(&self.url())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the private mosquitto: {e}"));
        self.connections.lock().unwrap().push(t.clone());
        std::sync::Arc::new(t)
    }

    async fn restart(&self) {
        let before: Vec<(MqttTransport, u64)> = self
            .connections
            .lock()
            .unwrap()
            .iter()
            .map(|t| (t.clone(), t.connections()))
            .collect();
        if let Some(mut child) = self.child.lock().await.take() {
            child.kill().await.expect("kill mosquitto");
        }
        self.spawn().await;
        for (t, n) in before {
            tokio::time::timeout(Duration::from_secs(30), t.wait_restored(n))
                .await
                .expect("a connection to reconnect and restore its subscriptions within 30 s")
                .expect("the connection is open");
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        // The child is killed on drop; its config goes too.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
