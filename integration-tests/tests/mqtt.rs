//! The conformance suite on MQTT, against the broker at `AETHER_TEST_MQTT_URL` (default
//! `mqtt://127.0.0.1:1883`, the Mosquitto of the test command), twice: over MQTT 5 (the
//! default) and over MQTT 3.1.1. The broker-restart case runs on a private `mosquitto`
//! started on a spare port (`integration-tests/src/brokers/mqtt.rs`).

use aether::SharedTransport;
use async_trait::async_trait;
use integration_tests::brokers::mqtt::Mosquitto;
use integration_tests::harness::{Harness, PrivateBroker, UrlHarness};

/// The shared broker for every case, a private one for the restart case.
struct MqttHarness {
    url: UrlHarness,
    /// Query for the private broker's URLs.
    private: Option<&'static str>,
}

impl MqttHarness {
    /// Over MQTT 5, with the restart case on a private broker.
    fn v5() -> MqttHarness {
        MqttHarness {
            url: UrlHarness::from_env("mqtt", "AETHER_TEST_MQTT_URL", DEFAULT_URL),
            private: Some(""),
        }
    }

    /// Over MQTT 3.1.1: `AETHER_TEST_MQTT_V311_URL`, else the MQTT URL with
    /// `version=3.1.1`.
    fn v3_1_1() -> MqttHarness {
        let base = std::env::var("AETHER_TEST_MQTT_URL").unwrap_or_else(|_| DEFAULT_URL.into());
        let sep = if base.contains('?') { '&' } else { '?' };
        let default = format!("{base}{sep}version=3.1.1");
        MqttHarness {
            url: UrlHarness::from_env("mqtt-3.1.1", "AETHER_TEST_MQTT_V311_URL", &default),
            private: Some("version=3.1.1"),
        }
    }
}

const DEFAULT_URL: &str = "mqtt://127.0.0.1:1883";

#[async_trait]
impl Harness for MqttHarness {
    fn name(&self) -> String {
        Harness::name(&self.url)
    }

    fn url(&self) -> Option<String> {
        Harness::url(&self.url)
    }

    async fn connect(&self) -> SharedTransport {
        self.url.connect().await
    }

    /// `subscription_capacity=limit`: a consumer buffers that many performs, and drops
    /// (and counts) what comes past it; the client's lease redispatch sends those again.
    async fn connect_limited(&self, limit: u64) -> Option<SharedTransport> {
        let url = Harness::url(&self.url).expect("a URL");
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{sep}subscription_capacity={limit}");
        Some(
            aether::connect(&url)
                .await
                .unwrap_or_else(|e| panic!("mqtt: cannot connect: {e}")),
        )
    }

    async fn private_broker(&self) -> Option<Box<dyn PrivateBroker>> {
        let query = self.private?;
        Some(Box::new(Mosquitto::start(query).await))
    }

    /// Clears the dead letters the case left retained under
    /// `aether-dead-letter/{union}/...`.
    async fn cleanup(&self, union: &str) {
        let url = Harness::url(&self.url).expect("a URL");
        if let Err(e) = clear_retained(&url, &format!("aether-dead-letter/{union}/#")).await {
            eprintln!("mqtt: cleanup of {union} failed: {e}");
        }
    }
}

/// Publishes an empty retained message on every topic under `filter` that holds one.
async fn clear_retained(url: &str, filter: &str) -> anyhow::Result<()> {
    use aether::aether_mqtt::paho_mqtt as paho;
    let u = aether::BrokerUrl::parse(url)?;
    let uri = format!("tcp://{}:{}", u.host, u.port.unwrap_or(1883));
    let mut client = paho::AsyncClient::new(uri)?;
    let rx = client.get_stream(64);
    client.connect(None).await?;
    client.subscribe(filter, 1).await?;
    // Retained messages arrive right after the subscription; a short quiet spell ends them.
    let mut topics = Vec::new();
    while let Ok(Ok(Some(msg))) =
        tokio::time::timeout(std::time::Duration::from_millis(300), rx.recv()).await
    {
        if msg.retained() && !msg.payload().is_empty() {
            topics.push(msg.topic().to_owned());
        }
    }
    for topic in topics {
        client
            .publish(paho::Message::new_retained(topic, Vec::<u8>::new(), 1))
            .await?;
    }
    client.disconnect(None).await?;
    Ok(())
}

mod v5 {
    use super::*;

    integration_tests::conformance! {
        harness: MqttHarness::v5();
        ignore: {
            task_enqueued_before_any_worker_is_handled: "MQTT keeps no message for a subscriber that does not exist yet: a perform sent before any worker subscribes is lost (the client's lease redispatch re-sends it)",
            dropped_delivery_comes_back: "MQTT does not redeliver the deliveries of a crashed process (the broker had its PUBACK on arrival); a delivery dropped in a live process is published again, which this case does not require",
        }
    }
}

mod v3_1_1 {
    use super::*;

    integration_tests::conformance! {
        harness: MqttHarness::v3_1_1();
        ignore: {
            task_enqueued_before_any_worker_is_handled: "MQTT keeps no message for a subscriber that does not exist yet: a perform sent before any worker subscribes is lost (the client's lease redispatch re-sends it)",
            dropped_delivery_comes_back: "MQTT does not redeliver the deliveries of a crashed process (the broker had its PUBACK on arrival); a delivery dropped in a live process is published again, which this case does not require",
        }
    }
}
