//! The connection's behaviour on the broker at `AETHER_TEST_MQTT_URL` (default
//! `mqtt://127.0.0.1:1883`), through a proxy whose connections a test cuts like a network
//! failure: reconnection with subscriptions restored, the last will, persistent sessions,
//! bursts and slow subscribers.

mod common;

use std::time::Duration;

use aether_core::{
    Action, Bytes, ConsumeOptions, Envelope, Status, Topic, TopicFilter, Transport, WorkQueue,
};
use aether_mqtt::MqttTransport;
use common::{Proxy, broker_addr, union, url, with_query};

const WAIT: Duration = Duration::from_secs(20);

async fn connect(url: &str) -> MqttTransport {
    MqttTransport::connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}. Is Mosquitto running?"))
}

fn proxied(proxy: &Proxy, query: &str) -> String {
    with_query(&format!("mqtt://127.0.0.1:{}", proxy.port), query)
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// After the connection drops, the transport reconnects and restores its subscriptions and
/// consumers by itself (the broker forgot them: clean session); a publish made during the
/// outage completes once it is back.
#[tokio::test]
async fn reconnects_and_restores_subscriptions() {
    for version in ["5", "3.1.1"] {
        let u = union();
        let proxy = Proxy::start(broker_addr()).await;
        let t = connect(&proxied(&proxy, &format!("version={version}"))).await;
        let other = connect(&url()).await;
        let status = Topic::new(&u, "j", "t", "x", "1", Action::Status).unwrap();
        let mut sub = t.subscribe(&TopicFilter::exact(&status)).await.unwrap();
        let queue = WorkQueue::new(&u, "j", "t", "x", "workgroup").unwrap();
        let mut consumer = t.consume(&queue, ConsumeOptions::new()).await.unwrap();
        let mut watch = other
            .subscribe(&TopicFilter::exact(&status.with_action(Action::Complete)))
            .await
            .unwrap();
        assert_eq!(t.connections(), 1);

        proxy.cut(false);
        // Sent while the connection is down or coming back: waits, then goes through.
        let complete = status.with_action(Action::Complete);
        let during = t.publish(&complete, Bytes::from_static(b"during"));
        within("the publish made during the outage", during)
            .await
            .unwrap();
        let m = within("the message sent during the outage", watch.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&m.payload[..], b"during");
        within("reconnection", t.wait_restored(1)).await.unwrap();
        assert!(t.connections() >= 2 && t.is_connected(), "v{version}");

        other
            .publish(&status, Bytes::from_static(b"after"))
            .await
            .unwrap();
        let m = within("a broadcast after reconnecting", sub.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&m.payload[..], b"after", "v{version}");
        let perform = queue.topic("p1", Action::Perform).unwrap();
        other
            .enqueue(&perform, Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let d = within("a perform after reconnecting", consumer.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.topic, perform);
        d.ack().await.unwrap();
        t.close().await.unwrap();
        other.close().await.unwrap();
    }
}

/// A connection that dies without closing is announced offline by the broker (the last
/// will: `online` with status `dismissed`, progress 0, on the presence topic); a clean
/// close announces the same itself.
#[tokio::test]
async fn the_last_will_announces_a_dead_connection() {
    let u = union();
    let watcher = connect(&url()).await;
    let presence =
        TopicFilter::from_levels(&[&*u, "system", "online", "+", "+", "online"]).unwrap();
    let mut sub = watcher.subscribe(&presence).await.unwrap();
    let proxy = Proxy::start(broker_addr()).await;
    let t = connect(&proxied(&proxy, &format!("presence={u}/vm/c1"))).await;

    proxy.cut(true);
    let m = within("the will", sub.next()).await.unwrap().unwrap();
    assert_eq!(m.topic.as_str(), format!("{u}/system/online/vm/c1/online"));
    let env = Envelope::decode(m.payload).unwrap();
    assert_eq!(env.header().action, Action::Online);
    assert_eq!(
        (env.header().status, env.header().progress),
        (Status::Dismissed, 0)
    );
    assert_eq!(env.header().client, "c1");

    proxy.resume();
    within("reconnection", t.wait_restored(1)).await.unwrap();
    t.close().await.unwrap();
    let m = within("the offline message of a clean close", sub.next())
        .await
        .unwrap()
        .unwrap();
    let env = Envelope::decode(m.payload).unwrap();
    assert_eq!(env.header().status, Status::Dismissed);
    watcher.close().await.unwrap();
}

/// With a persistent session the broker keeps what was published for this client while it
/// was away and delivers it when it is back.
#[tokio::test]
async fn a_persistent_session_keeps_messages_while_away() {
    for version in ["5", "3.1.1"] {
        let u = union();
        let proxy = Proxy::start(broker_addr()).await;
        let query =
            format!("version={version}&clean_session=false&client_id=p-{u}&session_expiry=60s");
        let t = connect(&proxied(&proxy, &query)).await;
        let other = connect(&url()).await;
        let topic = Topic::new(&u, "j", "t", "x", "1", Action::Status).unwrap();
        let mut sub = t.subscribe(&TopicFilter::exact(&topic)).await.unwrap();

        proxy.cut(true);
        // The broker may take a moment to see the connection gone; QoS 1 covers both cases.
        other
            .publish(&topic, Bytes::from_static(b"while away"))
            .await
            .unwrap();
        proxy.resume();
        let m = within("the message kept by the session", sub.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&m.payload[..], b"while away", "v{version}");
        t.close().await.unwrap();
        other.close().await.unwrap();
        // Leave nothing behind on the shared broker: end the session.
        let t = connect(&with_query(
            &url(),
            &format!("version={version}&client_id=p-{u}"),
        ))
        .await;
        t.close().await.unwrap();
    }
}

/// Thousands of publishes at once wait for room in the in-flight window instead of failing
/// with paho's "max buffered messages".
#[tokio::test]
async fn a_burst_of_publishes_waits_for_room() {
    let u = union();
    let t = std::sync::Arc::new(connect(&with_query(&url(), "max_inflight=16")).await);
    let mut sends = Vec::new();
    for i in 0..5000 {
        let t = t.clone();
        let topic = Topic::new(&u, "j", "t", "x", &i.to_string(), Action::Status).unwrap();
        sends.push(tokio::spawn(async move {
            t.publish(&topic, Bytes::from_static(b"{}")).await
        }));
    }
    for s in sends {
        within("a publish of the burst", s).await.unwrap().unwrap();
    }
    t.close().await.unwrap();
}

/// A subscriber that does not keep up loses what exceeds its buffer, counted, and the
/// connection carries on.
#[tokio::test]
async fn a_slow_subscriber_loses_what_exceeds_its_buffer() {
    let u = union();
    let t = connect(&with_query(&url(), "subscription_capacity=4")).await;
    let topic = Topic::new(&u, "j", "t", "x", "1", Action::Status).unwrap();
    let mut slow = t.subscribe(&TopicFilter::exact(&topic)).await.unwrap();
    let mut last = t
        .subscribe(&TopicFilter::exact(&topic.with_action(Action::Complete)))
        .await
        .unwrap();
    for i in 0..10u8 {
        t.publish(&topic, Bytes::from(vec![i])).await.unwrap();
    }
    // Ordered per connection: once this arrives, the ten have been dispatched.
    t.publish(&topic.with_action(Action::Complete), Bytes::new())
        .await
        .unwrap();
    within("the last message", last.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t.overflowed(), 6);
    for i in 0..4u8 {
        let m = slow.next().await.unwrap().unwrap();
        assert_eq!(&m.payload[..], [i]);
    }
    t.close().await.unwrap();
}

/// Closing ends subscriptions and consumers and refuses further calls.
#[tokio::test]
async fn close_ends_everything() {
    let u = union();
    let t = connect(&url()).await;
    let topic = Topic::new(&u, "j", "t", "x", "1", Action::Status).unwrap();
    let mut sub = t.subscribe(&TopicFilter::exact(&topic)).await.unwrap();
    let queue = WorkQueue::new(&u, "j", "t", "x", "workgroup").unwrap();
    let mut consumer = t.consume(&queue, ConsumeOptions::new()).await.unwrap();
    t.close().await.unwrap();
    t.close().await.unwrap();
    assert!(
        within("the subscription to end", sub.next())
            .await
            .is_none()
    );
    assert!(
        within("the consumer to end", consumer.next())
            .await
            .is_none()
    );
    assert!(matches!(
        t.publish(&topic, Bytes::new()).await,
        Err(aether_core::Error::Closed)
    ));
    assert!(t.subscribe(&TopicFilter::exact(&topic)).await.is_err());
}

/// An unreachable broker is an error that names it, and leaves the process able to connect
/// elsewhere (a failed paho client is dropped off paho's threads).
#[tokio::test]
async fn an_unreachable_broker_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for _ in 0..3 {
        let err = MqttTransport::connect(&format!("mqtt://127.0.0.1:{port}?connect_timeout=2s"))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("cannot connect to tcp://127.0.0.1:{port}")),
            "{err}"
        );
    }
    let t = connect(&url()).await;
    assert!(t.is_connected());
    t.close().await.unwrap();
}
