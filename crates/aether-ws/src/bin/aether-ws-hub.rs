//! The aether-ws hub as a process.
//!
//! Usage: `aether-ws-hub [LISTEN-URL] [BACKEND-URL]`, e.g.
//! `AETHER_WS_TOKEN=s3cret aether-ws-hub ws://0.0.0.0:8080 redis://127.0.0.1:6379`.
//! The listen URL takes the keys of `HubConfig` (`no_auth=true`, `origins=...`,
//! `heartbeat=...`; `wss://0.0.0.0:8443?tls_cert=cert.pem&tls_key=key.pem` for TLS); the
//! token comes from `AETHER_WS_TOKEN` so it stays out of the process list. Without a
//! backend URL the hub runs its own in-memory broker.

use std::sync::Arc;

use aether_core::Transport;
use aether_ws::{Hub, HubConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen = args.first().map_or("ws://127.0.0.1:8080", String::as_str);
    // Validated when the hub starts, once the token from the environment is in.
    let mut config = HubConfig::from_url(listen)?;
    if let Ok(token) = std::env::var("AETHER_WS_TOKEN") {
        config.token = Some(aether_core::Secret::new(token));
    }
    let hub = match args.get(1) {
        Some(backend) => {
            let transport = connect_backend(backend).await?;
            Hub::start_with(config, transport).await?
        }
        None => Hub::start(config).await?,
    };
    println!(
        "aether-ws hub on {}://{}/ws (backend {})",
        if hub.tls() { "wss" } else { "ws" },
        hub.local_addr(),
        hub.backend().name()
    );
    tokio::signal::ctrl_c().await?;
    hub.close();
    let _ = hub.backend().close().await;
    Ok(())
}

async fn connect_backend(url: &str) -> anyhow::Result<Arc<dyn Transport>> {
    match url.split_once("://").map(|(s, _)| s) {
        Some("memory") => Ok(Arc::new(aether_core::MemoryTransport::connect(url)?)),
        _ => anyhow::bail!(
            "backend {}: this build of aether-ws-hub serves memory:// only; embed aether_ws::Hub::start_with for others",
            aether_core::url::redact(url)
        ),
    }
}
