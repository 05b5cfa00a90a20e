//! The aether-zmq device as a process: binds a ZeroMQ ROUTER and brokers work and
//! broadcasts between aether processes that connect with `zmq://host:port`.
//!
//! Usage: `aether-zmq-device [URL]` (default zmq://0.0.0.0:5555; keys as for the
//! transport: heartbeat, max_payload, hwm, queue_capacity, dead_letter_capacity).
//! Prints `listening on tcp://...` once bound; stops on SIGINT or SIGTERM.

use aether_zmq::{Device, ZmqConfig};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "zmq://0.0.0.0:5555".to_owned());
    let config = ZmqConfig::from_url(&url)?;
    let device = Device::start(config)?;
    println!("listening on {}", device.endpoint());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    })?;
    tracing::info!(stats = ?device.stats(), "stopping");
    device.close();
    Ok(())
}
