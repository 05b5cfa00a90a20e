//! ZeroMQ harnesses: a device this test process starts itself (shared by the cases, on its
//! own thread), the brokerless form (the test process hosts the device through a
//! `bind=true` transport), and a private device a case may restart.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aether::SharedTransport;
use aether::aether_zmq::{Device, ZmqConfig};
use async_trait::async_trait;
use tokio::sync::Mutex;

use crate::harness::{Harness, PrivateBroker};

/// Heartbeats in the tests: a killed worker is dead after 3 of them.
pub const HEARTBEAT: &str = "500ms";

fn config(port: u16) -> ZmqConfig {
    ZmqConfig::from_url(&format!("zmq://127.0.0.1:{port}?heartbeat={HEARTBEAT}"))
        .expect("a valid URL")
}

/// Connects with `url`, failing the case with a clear message.
async fn connect(url: &str) -> SharedTransport {
    match tokio::time::timeout(Duration::from_secs(20), aether::connect(url)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => panic!("zmq: cannot connect to {url}: {e}"),
        Err(_) => panic!("zmq: connecting to {url} timed out"),
    }
}

/// The device every case of the test binary shares, started on first use.
fn shared_device() -> &'static Device {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    DEVICE.get_or_init(|| {
        Device::start(config(0)).unwrap_or_else(|e| panic!("cannot start the zmq device: {e}"))
    })
}

/// Connections to a device the test started.
#[derive(Debug, Default)]
pub struct DeviceHarness;

impl DeviceHarness {
    /// The shared device.
    pub fn new() -> DeviceHarness {
        DeviceHarness
    }
}

#[async_trait]
impl Harness for DeviceHarness {
    fn name(&self) -> String {
        "zmq".into()
    }

    fn url(&self) -> Option<String> {
        Some(format!("zmq://127.0.0.1:{}", shared_device().port()))
    }

    async fn connect(&self) -> SharedTransport {
        connect(&self.url().expect("a URL")).await
    }

    async fn private_broker(&self) -> Option<Box<dyn PrivateBroker>> {
        Some(Box::new(PrivateDevice::start()))
    }
}

/// The brokerless form: a `bind=true` transport of this process hosts the device, the
/// case's connections join it (in-process), and other processes connect over TCP.
#[derive(Debug)]
pub struct BrokerlessHarness {
    port: u16,
    /// Keeps the hosted device up for the whole case.
    _host: Arc<Device>,
}

impl BrokerlessHarness {
    /// This process hosts a device on a spare port.
    pub fn new() -> BrokerlessHarness {
        let port = super::spare_port();
        let mut config = config(port);
        config.bind = true;
        let host = Device::host(&config).expect("host a zmq device");
        BrokerlessHarness { port, _host: host }
    }

    fn bind_url(&self) -> String {
        format!(
            "zmq://127.0.0.1:{}?bind=true&heartbeat={HEARTBEAT}",
            self.port
        )
    }
}

impl Default for BrokerlessHarness {
    fn default() -> Self {
        BrokerlessHarness::new()
    }
}

#[async_trait]
impl Harness for BrokerlessHarness {
    fn name(&self) -> String {
        "zmq-brokerless".into()
    }

    fn url(&self) -> Option<String> {
        Some(format!("zmq://127.0.0.1:{}", self.port))
    }

    async fn connect(&self) -> SharedTransport {
        connect(&self.bind_url()).await
    }
}

/// A device only one case uses, restarted on the same port.
#[derive(Debug)]
pub struct PrivateDevice {
    port: u16,
    device: Mutex<Option<Device>>,
}

impl PrivateDevice {
    /// `zmq://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("zmq://127.0.0.1:{}", self.port)
    }

    /// What the device counted (since its last restart).
    pub fn stats(&self) -> aether::aether_zmq::DeviceStats {
        self.device
            .try_lock()
            .ok()
            .and_then(|d| d.as_ref().map(Device::stats))
            .unwrap_or_default()
    }

    /// Starts a device on a spare port.
    pub fn start() -> PrivateDevice {
        let device = Device::start(config(0)).expect("a private zmq device");
        PrivateDevice {
            port: device.port(),
            device: Mutex::new(Some(device)),
        }
    }
}

#[async_trait]
impl PrivateBroker for PrivateDevice {
    async fn connect(&self) -> SharedTransport {
        connect(&self.url()).await
    }

    async fn restart(&self) {
        let mut device = self.device.lock().await;
        if let Some(d) = device.take() {
            d.close();
        }
        *device = Some(Device::start(config(self.port)).expect("the zmq device again"));
    }
}
