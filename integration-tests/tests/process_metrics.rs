//! Metrics of the whole process under its global Prometheus recorder
//! (`aether::observe::prometheus::install`): a hub's `GET /metrics` after real round trips
//! through the hub, and `aether_transport_reconnects_total` after a real cut of a
//! connection (a TCP proxy) on each transport. Adapters count reconnections on their
//! broker client's threads (paho's, for MQTT), which a thread-local recorder would not
//! see; a global recorder is one per process, so these cases have a binary of their own.

use std::time::Duration;

use aether::aether_ws::Hub;
use aether::observe::metrics as m;
use aether::observe::prometheus;
use aether::{Aether, TaskContext};
use integration_tests::brokers::amqp::DEFAULT_URL as AMQP_URL;
use integration_tests::brokers::redis::RedisHarness;
use integration_tests::brokers::ws;
use integration_tests::harness::{Harness, UrlHarness, eventually, union};
use integration_tests::proxy::{Proxy, authority};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(20);

/// The value of the sample of `name` whose labels include every one of `labels` (a sample
/// without labels when `labels` is empty).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().expect("a number"))
}

/// `GET {path}` on `port` with an optional bearer token: the status line and the body.
async fn get(port: u16, path: &str, token: Option<&str>) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the hub");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("a response");
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// A node in `union` on `url` running a worker of `job` that adds one (each case has a
/// job of its own: the recorder, and its labels, are the process's).
async fn worker_node(url: &str, union: &str, job: &str) -> (Aether, aether::Worker) {
    let node = Aether::builder()
        .union(union)
        .transport(aether::connect(url).await.expect("the worker's connection"))
        .build()
        .expect("worker node");
    let worker = node
        .worker()
        .workgroup("meters")
        .announce(false)
        .handle(job, "add", "x", |_ctx: TaskContext, v: u32| async move {
            Ok::<_, aether::Error>(v + 1)
        })
        .start()
        .await
        .expect("worker");
    (node, worker)
}

/// A client node in `union` on `url`.
async fn client_node(url: &str, union: &str) -> Aether {
    Aether::builder()
        .union(union)
        .transport(aether::connect(url).await.expect("the client's connection"))
        .build()
        .expect("client node")
}

async fn round_trip(node: &Aether, job: &str, v: u32) {
    let task = node
        .client()
        .perform(job, "add", "x", &v)
        .await
        .expect("perform");
    let got = tokio::time::timeout(LIMIT, task.result::<u32>())
        .await
        .expect("a result in time")
        .expect("a result");
    assert_eq!(got, v + 1);
}

/// A hub with `metrics=true` serves Prometheus text behind its token: aether's counters of
/// the clients and workers that went through it, and its own counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_serves_metrics_that_move_with_round_trips() {
    let mut config = ws::config(0, false);
    config.metrics = true;
    let hub = Hub::start(config).await.expect("a hub with metrics");
    let port = hub.port();
    let url = ws::url(port, false);
    let union = union();
    let (wnode, worker) = worker_node(&url, &union, "hubmeter").await;
    let cnode = client_node(&url, &union).await;

    let (status, before) = get(port, "/metrics", Some(ws::TOKEN)).await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{before}");
    let labels = [("job", "hubmeter"), ("task", "add"), ("transport", "ws")];
    let performed = sample(&before, m::CLIENT_PERFORMED, &labels).unwrap_or(0.0);
    assert_eq!(sample(&before, "aether_hub_connections", &[]), Some(2.0));
    for v in 0..5 {
        round_trip(&cnode, "hubmeter", v).await;
    }
    let (_, after) = get(port, "/metrics", Some(ws::TOKEN)).await;
    assert_eq!(
        sample(&after, m::CLIENT_PERFORMED, &labels),
        Some(performed + 5.0),
        "{after}"
    );
    assert_eq!(
        sample(&after, m::CLIENT_SUCCEEDED, &labels),
        Some(performed + 5.0)
    );
    let worker_labels = [
        ("job", "hubmeter"),
        ("workgroup", "meters"),
        ("transport", "ws"),
    ];
    assert_eq!(
        sample(&after, m::WORKER_SUCCEEDED, &worker_labels),
        Some(performed + 5.0)
    );
    assert!(after.contains("# TYPE aether_worker_handler_duration_seconds histogram"));
    assert!(after.contains("# TYPE aether_hub_accepted_total counter"));
    assert!(sample(&after, "aether_hub_accepted_total", &[]).unwrap() >= 2.0);
    assert_eq!(sample(&after, "aether_hub_consumers", &[]), Some(1.0));
    // The worker acknowledges after sending its completion: the last delivery may still be
    // held for a moment after the client has its result.
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let (_, text) = get(port, "/metrics", Some(ws::TOKEN)).await;
        if sample(&text, "aether_hub_in_flight", &[]) == Some(0.0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Behind the token like every route; the count of refusals moves.
    let (status, _) = get(port, "/metrics", None).await;
    assert!(status.starts_with("HTTP/1.1 401"), "{status}");
    let (_, last) = get(port, "/metrics", Some(ws::TOKEN)).await;
    assert_eq!(
        sample(&last, "aether_hub_unauthorized_total", &[]),
        Some(1.0)
    );

    // A hub not asked to serve them has no such route.
    let plain = Hub::start(ws::config(0, false)).await.expect("a plain hub");
    let (status, _) = get(plain.port(), "/metrics", Some(ws::TOKEN)).await;
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");

    worker.shutdown(LIMIT).await.expect("worker shutdown");
    drop((wnode, cnode));
    assert_eq!(hub.stats().unauthorized, 1);
}

/// `url` with `key=value` added to its query.
fn with_key(url: &str, kv: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{kv}")
}

/// A client's connection goes through a proxy that cuts it for a moment: the transport's
/// reconnection is counted, its client's subscriptions report the gap, and a task after it
/// completes.
async fn reconnection_is_counted(url: &str, transport: &'static str) {
    let scrape = prometheus::install().expect("the process's recorder");
    let target = authority(url).to_owned();
    let proxy = Proxy::start(&target).await;
    let proxied = url.replacen(&target, &format!("127.0.0.1:{}", proxy.port()), 1);
    let proxied = with_key(&proxied, "reconnect_max=200ms");
    let union = union();
    let (wnode, worker) = worker_node(&with_key(url, "reconnect_max=200ms"), &union, "cut").await;
    let cnode = client_node(&proxied, &union).await;
    round_trip(&cnode, "cut", 1).await;

    let labels = [("transport", transport)];
    let now = |name| sample(&scrape.render(), name, &labels).unwrap_or(0.0);
    let (reconnects, gaps) = (now(m::TRANSPORT_RECONNECTS), now(m::TRANSPORT_GAPS));
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.restore();
    eventually(LIMIT, "a reconnection counted", || {
        now(m::TRANSPORT_RECONNECTS) > reconnects
    })
    .await;
    eventually(LIMIT, "the gap counted", || now(m::TRANSPORT_GAPS) > gaps).await;
    // stats() is fed where the metric is.
    assert!(cnode.stats().gaps >= 1, "{:?}", cnode.stats());
    round_trip(&cnode, "cut", 2).await;
    assert!(
        scrape
            .render()
            .contains(&format!("# HELP {} ", m::TRANSPORT_RECONNECTS))
    );

    worker.shutdown(LIMIT).await.expect("worker shutdown");
    drop((wnode, cnode));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnection_is_counted_on_redis() {
    let h = RedisHarness::from_env("streams");
    let url = Harness::url(&h).expect("a Redis URL");
    reconnection_is_counted(&url, "redis-streams").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnection_is_counted_on_mqtt() {
    let h = UrlHarness::from_env("mqtt", "AETHER_TEST_MQTT_URL", "mqtt://127.0.0.1:1883");
    reconnection_is_counted(h.url(), "mqtt").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnection_is_counted_on_amqp() {
    let h = UrlHarness::from_env("amqp", "AETHER_TEST_AMQP_URL", AMQP_URL);
    reconnection_is_counted(h.url(), "amqp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnection_is_counted_on_ws() {
    let hub = Hub::start(ws::config(0, false)).await.expect("a hub");
    reconnection_is_counted(&ws::url(hub.port(), false), "ws").await;
}

/// ZeroMQ: libzmq reconnects TCP by itself; what the link sees, and counts, is the device
/// giving it a new session. A restarted device gives every link one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnection_is_counted_on_zmq() {
    use integration_tests::brokers::zmq::PrivateDevice;
    use integration_tests::harness::PrivateBroker;

    let scrape = prometheus::install().expect("the process's recorder");
    let device = PrivateDevice::start();
    let union = union();
    let (wnode, worker) = worker_node(&device.url(), &union, "zcut").await;
    let cnode = client_node(&device.url(), &union).await;
    round_trip(&cnode, "zcut", 1).await;

    let labels = [("transport", "zmq")];
    let now = |name| sample(&scrape.render(), name, &labels).unwrap_or(0.0);
    let (reconnects, gaps) = (now(m::TRANSPORT_RECONNECTS), now(m::TRANSPORT_GAPS));
    device.restart().await;
    eventually(LIMIT, "both links' reconnections counted", || {
        now(m::TRANSPORT_RECONNECTS) >= reconnects + 2.0
    })
    .await;
    eventually(LIMIT, "the gap counted", || now(m::TRANSPORT_GAPS) > gaps).await;
    round_trip(&cnode, "zcut", 2).await;
    assert!(cnode.stats().gaps >= 1, "{:?}", cnode.stats());

    worker.shutdown(LIMIT).await.expect("worker shutdown");
    drop((wnode, cnode));
}
