//! The aether-zmq device as a process: binds a ZeroMQ ROUTER and brokers work and
//! broadcasts between aether processes that connect with `zmq://host:port`.
//!
//! Usage: `aether-zmq-device [URL]` (default zmq://0.0.0.0:5555; keys as for the
//! transport: heartbeat, max_payload, hwm, queue_capacity, dead_letter_capacity).
//! Prints `listening on tcp://...` once bound; stops on SIGINT or SIGTERM.
//! CURVE: `aether-zmq-device --keygen` prints a new key pair; start the device with
//! `curve_secret_key=` (percent-encoded) and give clients the public key as
//! `curve_server_key=`; `curve_clients=` (repeated) admits only those client keys.

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
    if url == "--keygen" {
        let keys = aether_zmq::CurveKeys::generate()?;
        println!("public {}", keys.public);
        println!("secret {}", keys.secret.expose());
        return Ok(());
    }
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
