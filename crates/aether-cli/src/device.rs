//! `aether device`: the ZeroMQ device (crates/aether-zmq) that brokers work and broadcasts
//! between processes connecting with `zmq://host:port`.

use aether::aether_zmq::{Device, ZmqConfig};
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::DeviceArgs;
use crate::exit::{Failure, Outcome};

pub(crate) async fn run(args: DeviceArgs) -> Result<Outcome, Failure> {
    let url = args.url;
    let config = ZmqConfig::from_url(&url).map_err(|e| Failure::usage(e.to_string()))?;
    let device = Device::start(config).map_err(|e| {
        Failure::new(
            Outcome::Unreachable,
            format!(
                "cannot start the device on {}: {e}",
                aether::url::redact(&url)
            ),
        )
    })?;
    // Scripts and tests wait for this line.
    println!("listening on {}", device.endpoint());
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("aether: device stopping: {:?}", device.stats());
    device.close();
    Ok(Outcome::Succeeded)
}
