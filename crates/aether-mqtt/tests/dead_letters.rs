//! Dead letters on the shared Mosquitto: what the broker keeps of them is bounded in size,
//! in number and in time. (Each bad tid used to leave one retained message for good, a
//! 5 MiB perform was republished whole above the 1 MiB `max_payload`, and refusing it
//! failed, so the perform went round again.)

mod common;

use std::time::Duration;

use aether_core::{Action, Bytes, ConsumeOptions, DeadLetterReason, Transport, WorkQueue};
use aether_mqtt::MqttTransport;
use aether_mqtt::paho_mqtt as paho;
use common::{union, url, with_query};

const WAIT: Duration = Duration::from_secs(20);

/// A raw MQTT 5 client, to see dead letters as an operator's tool does.
struct Raw {
    client: paho::AsyncClient,
    rx: paho::AsyncReceiver<Option<paho::Message>>,
}

impl Raw {
    async fn connect() -> Raw {
        let c = aether_mqtt::MqttConfig::from_url(&url()).unwrap();
        let create = paho::CreateOptionsBuilder::new()
            .server_uri(format!("tcp://{}:{}", c.host, c.port))
            .mqtt_version(paho::MQTT_VERSION_5)
            .finalize();
        let mut client = paho::AsyncClient::new(create).unwrap();
        let rx = client.get_stream(1024);
        let options = paho::ConnectOptionsBuilder::new_v5()
            .clean_start(true)
            .finalize();
        client
            .connect(options)
            .await
            .expect("raw MQTT 5 connection");
        Raw { client, rx }
    }

    async fn subscribe(&self, filter: &str) {
        self.client.subscribe(filter, 1).await.unwrap();
    }

    /// Messages until a quiet spell of `quiet`.
    async fn drain(&self, quiet: Duration) -> Vec<paho::Message> {
        let mut got = Vec::new();
        while let Ok(Ok(Some(m))) = tokio::time::timeout(quiet, self.rx.recv()).await {
            got.push(m);
        }
        got
    }

    async fn next(&self) -> paho::Message {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("a message in time")
            .expect("stream open")
            .expect("connected")
    }

    /// Retained messages now stored under `filter`, on a fresh connection.
    async fn retained(filter: &str) -> Vec<paho::Message> {
        let raw = Raw::connect().await;
        raw.subscribe(filter).await;
        let got = raw.drain(Duration::from_millis(400)).await;
        raw.close().await;
        got.into_iter()
            .filter(|m| m.retained() && !m.payload().is_empty())
            .collect()
    }

    /// Clears every retained message under `filter`.
    async fn clear(filter: &str) {
        let raw = Raw::connect().await;
        for m in Raw::retained(filter).await {
            raw.client
                .publish(paho::Message::new_retained(m.topic(), Vec::<u8>::new(), 1))
                .await
                .unwrap();
        }
        raw.close().await;
    }

    async fn close(self) {
        let _ = self.client.disconnect(None).await;
    }
}

fn user(m: &paho::Message, key: &str) -> Option<String> {
    m.properties().find_user_property(key)
}

/// A perform of 5 MiB reaches a consumer whose transport allows 1 MiB: refusing it stores
/// a dead letter of at most the dead-letter bound, with the reason and the original size
/// attached, and a message expiry; after that expiry the broker has dropped it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_perform_leaves_a_bounded_dead_letter_that_expires() {
    let u = union();
    let limited = with_query(&url(), "max_payload=1048576&dead_letter_expiry=2s");
    let t = MqttTransport::connect(&limited).await.unwrap();
    let q = WorkQueue::new(&u, "j", "t", "x", "g").unwrap();
    let mut consumer = t.consume(&q, ConsumeOptions::new()).await.unwrap();

    let watcher = Raw::connect().await;
    watcher
        .subscribe(&format!("aether-dead-letter/{u}/#"))
        .await;
    let big = MqttTransport::connect(&url()).await.unwrap();
    let topic = q.topic("big1", Action::Perform).unwrap();
    let size = 5 * 1024 * 1024;
    big.enqueue(&topic, Bytes::from(vec![b'x'; size]))
        .await
        .unwrap();

    let d = tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("the big perform")
        .expect("consumer open")
        .expect("a valid delivery");
    assert_eq!(d.payload.len(), size);
    d.reject(DeadLetterReason::Oversized {
        size,
        limit: 1024 * 1024,
    })
    .await
    .map_err(|e| e.error)
    .expect("the oversized perform is dead-lettered");

    let m = watcher.next().await;
    assert_eq!(m.topic(), format!("aether-dead-letter/{topic}"));
    assert!(
        m.payload().len() <= 64 * 1024,
        "a dead letter of {} bytes",
        m.payload().len()
    );
    let reason = user(&m, "aether-reason").expect("the reason");
    assert!(reason.contains("5242880 bytes"), "{reason}");
    assert_eq!(user(&m, "aether-size").as_deref(), Some("5242880"));
    assert_eq!(user(&m, "aether-truncated").as_deref(), Some("true"));
    assert_eq!(
        user(&m, "aether-topic").as_deref(),
        Some(topic.to_string().as_str())
    );
    let expiry = m
        .properties()
        .get_int(paho::PropertyCode::MessageExpiryInterval)
        .expect("a message expiry");
    assert!((1..=2).contains(&expiry), "expiry {expiry}");
    // Refused once: the perform does not come round again.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), consumer.next())
            .await
            .is_err(),
        "the refused perform was delivered again"
    );
    let dead = format!("aether-dead-letter/{u}/#");
    assert_eq!(Raw::retained(&dead).await.len(), 1, "retained until expiry");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        Raw::retained(&dead).await.is_empty(),
        "the broker still holds the dead letter after its expiry"
    );
    watcher.close().await;
    big.close().await.unwrap();
    t.close().await.unwrap();
}

/// Many bad tids: each dead letter is published (a live subscriber sees every one), but only
/// `dead_letter_capacity` of them are retained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_dead_letters_are_capped() {
    let u = union();
    let t = MqttTransport::connect(&with_query(&url(), "dead_letter_capacity=3"))
        .await
        .unwrap();
    let q = WorkQueue::new(&u, "j", "t", "x", "g").unwrap();
    let mut consumer = t.consume(&q, ConsumeOptions::new()).await.unwrap();
    let watcher = Raw::connect().await;
    let dead = format!("aether-dead-letter/{u}/#");
    watcher.subscribe(&dead).await;
    for i in 0..5 {
        let topic = q.topic(&format!("bad{i}"), Action::Perform).unwrap();
        t.enqueue(&topic, Bytes::from_static(b"not an envelope"))
            .await
            .unwrap();
    }
    for _ in 0..5 {
        let d = tokio::time::timeout(WAIT, consumer.next())
            .await
            .expect("a bad perform")
            .expect("consumer open")
            .expect("a valid delivery");
        d.reject(DeadLetterReason::Malformed("not an envelope".into()))
            .await
            .map_err(|e| e.error)
            .unwrap();
    }
    let mut live = Vec::new();
    for _ in 0..5 {
        live.push(watcher.next().await.topic().to_owned());
    }
    live.sort();
    assert_eq!(live.len(), 5, "{live:?}");
    let retained = Raw::retained(&dead).await;
    assert_eq!(
        retained.len(),
        3,
        "retained: {:?}",
        retained.iter().map(|m| m.topic()).collect::<Vec<_>>()
    );
    Raw::clear(&dead).await;
    watcher.close().await;
    t.close().await.unwrap();
}
