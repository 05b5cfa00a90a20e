//! `aether hub`: the WebSocket hub (crates/aether-ws) serving WebSocket and REST peers, over
//! its own in-memory broker or, as a gateway, over any transport this build has.

use aether::aether_ws::{Hub, HubConfig};
use aether::{Secret, SharedTransport};
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::HubArgs;
use crate::exit::{Failure, Outcome};

pub(crate) async fn run(args: HubArgs) -> Result<Outcome, Failure> {
    let mut config = HubConfig::from_url(&args.url).map_err(|e| Failure::usage(e.to_string()))?;
    // From the environment, so the token stays out of the process list.
    if let Ok(token) = std::env::var("AETHER_WS_TOKEN") {
        config.token = Some(Secret::new(token));
    }
    config
        .validate()
        .map_err(|e| Failure::usage(e.to_string()))?;
    let unreachable = |what: String| Failure::new(Outcome::Unreachable, what);
    let hub = match &args.backend {
        Some(url) => {
            let backend: SharedTransport = aether::connect(url)
                .await
                .map_err(|e| unreachable(format!("backend {}: {e}", aether::url::redact(url))))?;
            Hub::start_with(config, backend).await
        }
        None => Hub::start(config).await,
    }
    .map_err(|e| {
        unreachable(format!(
            "cannot start the hub on {}: {e}",
            aether::url::redact(&args.url)
        ))
    })?;
    // Scripts and tests wait for this line.
    println!(
        "listening on {}://{}/ws (backend {})",
        if hub.tls() { "wss" } else { "ws" },
        hub.local_addr(),
        hub.backend().name()
    );
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("aether: hub stopping: {:?}", hub.stats());
    hub.close();
    let _ = hub.backend().close().await;
    Ok(Outcome::Succeeded)
}
