//! WebSocket harnesses: a hub this test process starts itself (shared by the cases, on a
//! runtime of its own), and a private hub a case may restart.

use std::sync::OnceLock;
use std::time::Duration;

use aether::SharedTransport;
use aether::aether_ws::{Hub, HubConfig};
use async_trait::async_trait;
use tokio::sync::Mutex;

use crate::harness::{Harness, PrivateBroker};

/// Heartbeats in the tests: a silent peer is dropped after 3 of them.
pub const HEARTBEAT: &str = "250ms";
/// The token the test hubs require.
pub const TOKEN: &str = "test-token";

/// The settings of a test hub on `port` (0: any).
pub fn config(port: u16) -> HubConfig {
    let mut c = HubConfig::from_url(&format!(
        "ws://127.0.0.1:{port}?heartbeat={HEARTBEAT}&token={TOKEN}"
    ))
    .expect("a valid URL");
    c.queue_capacity = 65_536;
    c
}

/// The URL peers connect with.
pub fn url(port: u16) -> String {
    format!("ws://127.0.0.1:{port}/ws?token={TOKEN}&heartbeat={HEARTBEAT}")
}

/// Connects with `url`, failing the case with a clear message.
async fn connect(url: &str) -> SharedTransport {
    match tokio::time::timeout(Duration::from_secs(20), aether::connect(url)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => panic!("ws: cannot connect to {}: {e}", aether::url::redact(url)),
        Err(_) => panic!("ws: connecting to {} timed out", aether::url::redact(url)),
    }
}

/// The port of the hub every case of the test binary shares, started on first use on a
/// thread and runtime of its own (each case has its own runtime).
fn shared_hub() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("ws-hub".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("a runtime for the hub");
                rt.block_on(async move {
                    let hub = Hub::start(config(0))
                        .await
                        .unwrap_or_else(|e| panic!("cannot start the ws hub: {e}"));
                    tx.send(hub.port()).expect("report the port");
                    std::future::pending::<()>().await;
                });
            })
            .expect("the hub's thread");
        rx.recv().expect("the hub started")
    })
}

/// Connections to the hub the test started.
#[derive(Debug, Default)]
pub struct HubHarness;

impl HubHarness {
    /// The shared hub.
    pub fn new() -> HubHarness {
        HubHarness
    }
}

#[async_trait]
impl Harness for HubHarness {
    fn name(&self) -> String {
        "ws".into()
    }

    fn url(&self) -> Option<String> {
        Some(url(shared_hub()))
    }

    async fn connect(&self) -> SharedTransport {
        connect(&url(shared_hub())).await
    }

    async fn private_broker(&self) -> Option<Box<dyn PrivateBroker>> {
        Some(Box::new(PrivateHub::start().await))
    }
}

/// A hub only one case uses, restarted on the same port (losing what its in-memory
/// backend held, as a broker restart without persistence does).
#[derive(Debug)]
pub struct PrivateHub {
    port: u16,
    hub: Mutex<Option<Hub>>,
}

impl PrivateHub {
    /// Starts a hub on a spare port.
    pub async fn start() -> PrivateHub {
        let hub = Hub::start(config(0)).await.expect("a private ws hub");
        PrivateHub {
            port: hub.port(),
            hub: Mutex::new(Some(hub)),
        }
    }

    /// The URL peers connect with.
    pub fn url(&self) -> String {
        url(self.port)
    }

    /// What the hub counted (since its last restart).
    pub async fn stats(&self) -> aether::aether_ws::HubStats {
        self.hub
            .lock()
            .await
            .as_ref()
            .map(Hub::stats)
            .unwrap_or_default()
    }
}

#[async_trait]
impl PrivateBroker for PrivateHub {
    async fn connect(&self) -> SharedTransport {
        connect(&self.url()).await
    }

    async fn restart(&self) {
        let mut hub = self.hub.lock().await;
        if let Some(h) = hub.take() {
            h.stop().await;
        }
        let start = tokio::time::Instant::now();
        loop {
            match Hub::start(config(self.port)).await {
                Ok(h) => break *hub = Some(h),
                // The old listener may take a moment to free the port.
                Err(_) if start.elapsed() < Duration::from_secs(5) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("the ws hub did not start again: {e}"),
            }
        }
    }
}
