//! WebSocket harnesses: a hub this test process starts itself (shared by the cases, on a
//! runtime of its own), and a private hub a case may restart; on `ws://`, or on `wss://`
//! with certificates the test makes ([`crate::tls::TestCerts`]).

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

/// The settings of a test hub on `port` (0: any), with TLS if `tls`.
pub fn config(port: u16, tls: bool) -> HubConfig {
    let mut c = HubConfig::from_url(&format!(
        "ws://127.0.0.1:{port}?heartbeat={HEARTBEAT}&token={TOKEN}"
    ))
    .expect("a valid URL");
    c.queue_capacity = 65_536;
    if tls {
        let certs = certs();
        c.tls_cert = Some(certs.cert.clone());
        c.tls_key = Some(certs.key.clone());
    }
    c
}

/// The URL peers connect with: `wss://` trusting the test CA if `tls`.
pub fn url(port: u16, tls: bool) -> String {
    if tls {
        let ca = certs().ca.display();
        format!("wss://127.0.0.1:{port}/ws?token={TOKEN}&heartbeat={HEARTBEAT}&tls_ca={ca}")
    } else {
        format!("ws://127.0.0.1:{port}/ws?token={TOKEN}&heartbeat={HEARTBEAT}")
    }
}

/// The certificates of this test process's TLS hubs (for `localhost` and `127.0.0.1`),
/// made on first use in a directory named after the test binary, so that runs replace
/// them instead of piling up.
pub fn certs() -> &'static crate::tls::TestCerts {
    static CERTS: OnceLock<crate::tls::TestCerts> = OnceLock::new();
    CERTS.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test binary");
        let name = exe.file_stem().map(|s| s.to_string_lossy().into_owned());
        let dir = std::env::temp_dir().join(format!(
            "aether-ws-certs-{}",
            name.unwrap_or_else(|| "test".into())
        ));
        crate::tls::TestCerts::new(&dir, &["localhost", "127.0.0.1"])
    })
}

/// Connects with `url`, failing the case with a clear message.
async fn connect(url: &str) -> SharedTransport {
    match tokio::time::timeout(Duration::from_secs(20), aether::connect(url)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => panic!("ws: cannot connect to {}: {e}", aether::url::redact(url)),
        Err(_) => panic!("ws: connecting to {} timed out", aether::url::redact(url)),
    }
}

/// The port of the hub every case of the test binary shares (one with TLS, one without),
/// started on first use on a thread and runtime of its own (each case has its own runtime).
fn shared_hub(tls: bool) -> u16 {
    static PLAIN: OnceLock<u16> = OnceLock::new();
    static TLS: OnceLock<u16> = OnceLock::new();
    let port = if tls { &TLS } else { &PLAIN };
    *port.get_or_init(|| {
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
                    let hub = Hub::start(config(0, tls))
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
pub struct HubHarness {
    tls: bool,
}

impl HubHarness {
    /// The shared hub, on `ws://`.
    pub fn new() -> HubHarness {
        HubHarness { tls: false }
    }

    /// The shared TLS hub, on `wss://`.
    pub fn tls() -> HubHarness {
        HubHarness { tls: true }
    }
}

#[async_trait]
impl Harness for HubHarness {
    fn name(&self) -> String {
        if self.tls { "wss" } else { "ws" }.into()
    }

    fn url(&self) -> Option<String> {
        Some(url(shared_hub(self.tls), self.tls))
    }

    async fn connect(&self) -> SharedTransport {
        connect(&url(shared_hub(self.tls), self.tls)).await
    }

    async fn private_broker(&self) -> Option<Box<dyn PrivateBroker>> {
        Some(Box::new(PrivateHub::start_with(self.tls).await))
    }
}

/// A hub only one case uses, restarted on the same port (losing what its in-memory
/// backend held, as a broker restart without persistence does).
#[derive(Debug)]
pub struct PrivateHub {
    port: u16,
    tls: bool,
    hub: Mutex<Option<Hub>>,
}

impl PrivateHub {
    /// Starts a hub on a spare port.
    pub async fn start() -> PrivateHub {
        PrivateHub::start_with(false).await
    }

    /// Starts a hub on a spare port, with TLS if `tls`.
    pub async fn start_with(tls: bool) -> PrivateHub {
        let hub = Hub::start(config(0, tls)).await.expect("a private ws hub");
        PrivateHub {
            port: hub.port(),
            tls,
            hub: Mutex::new(Some(hub)),
        }
    }

    /// The URL peers connect with.
    pub fn url(&self) -> String {
        url(self.port, self.tls)
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
            match Hub::start(config(self.port, self.tls)).await {
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
