//! Hubs for `ws://` URLs: one started in this process (its own thread and current-thread
//! runtime, as the raw baseline's hub has) for each URL nobody listens on, and the
//! `--serve-hub URL` mode in which this binary is only a hub (a process of its own, whose
//! memory `--hold` reads from /proc).

use std::time::Duration;

use aether::aether_ws::{Hub, HubConfig, WsConfig};
use anyhow::Context;

/// The settings of a hub serving peers of `url`: its host and port, its token, or none.
fn config_for(url: &str) -> anyhow::Result<HubConfig> {
    let peer = WsConfig::from_url(url)?;
    let mut config = HubConfig::from_url(&format!("ws://{}:{}", peer.host, peer.port))?;
    match peer.token {
        Some(token) => config.token = Some(token),
        None => config.no_auth = true,
    }
    Ok(config)
}

/// Starts a hub in this process for each `ws://` URL whose port nobody listens on.
pub(crate) fn start_in_process(urls: &[String]) -> anyhow::Result<()> {
    for url in urls.iter().filter(|u| u.starts_with("ws://")) {
        let config = config_for(url)?;
        let addr = format!("{}:{}", config.host, config.port);
        if std::net::TcpStream::connect_timeout(
            &addr.parse().context("a hub address")?,
            Duration::from_millis(200),
        )
        .is_ok()
        {
            eprintln!("note: something listens on {addr}; using it as the hub");
            continue;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("ws-hub".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the hub");
                rt.block_on(async move {
                    match Hub::start(config).await {
                        Ok(hub) => {
                            let _ = tx.send(Ok(()));
                            std::future::pending::<()>().await;
                            drop(hub);
                        }
                        Err(e) => drop(tx.send(Err(e))),
                    }
                });
            })?;
        rx.recv().context("the in-process hub")??;
    }
    Ok(())
}

/// `--serve-hub URL`: runs a hub (multi-thread runtime, as `aether-ws-hub` does) and prints
/// `listening on PORT`; runs until killed.
pub(crate) async fn serve(listen: &str) -> anyhow::Result<()> {
    let hub = Hub::start(HubConfig::from_url(listen)?).await?;
    println!("listening on {}", hub.port());
    std::future::pending::<()>().await;
    drop(hub);
    Ok(())
}
