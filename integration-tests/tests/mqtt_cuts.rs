//! Publishing over MQTT while the connection keeps breaking must never take the process
//! down. paho.mqtt.c 1.3.16 (bundled by paho-mqtt-sys 0.11) freed a QoS 1 publish's topic and
//! payload twice when the write of that publish failed (`free(): double free detected`, an
//! abort): once with the failed command, once when the session was cleaned on the disconnect
//! that followed. The soak showed it during broker restarts; here a proxy cuts the connection
//! every few milliseconds under continuous publishing, which hits that write failure within
//! seconds. An abort ends this test binary, so the case has a binary of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aether::{Bytes, Topic};
use integration_tests::proxy::{Proxy, authority};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_through_cut_connections_never_aborts() {
    let url = std::env::var("AETHER_TEST_MQTT_URL")
        .unwrap_or_else(|_| "mqtt://127.0.0.1:1883".to_owned());
    let target = authority(&url).to_owned();
    let proxy = Proxy::start(&target).await;
    let proxied = url.replacen(&target, &format!("127.0.0.1:{}", proxy.port()), 1);
    let sep = if proxied.contains('?') { '&' } else { '?' };
    // Reconnect at once, so the cuts meet a live connection as often as possible.
    let proxied = format!("{proxied}{sep}reconnect_min=10ms&reconnect_max=50ms");
    let transport = Arc::new(
        tokio::time::timeout(Duration::from_secs(10), aether::connect(&proxied))
            .await
            .expect("connect within 10 s")
            .expect("connect through the proxy"),
    );
    let union = format!("cuts{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let mut publishers = Vec::new();
    for p in 0..8 {
        let (t, stop, published) = (transport.clone(), stop.clone(), published.clone());
        let topic: Topic = format!("{union}/cut/pub/ctx/t{p}/status").parse().unwrap();
        publishers.push(tokio::spawn(async move {
            let payload = Bytes::from(vec![b'x'; 2048]);
            while !stop.load(Ordering::Relaxed) {
                // Failures while cut are expected; only the process's survival counts.
                let publish = t.publish(&topic, payload.clone());
                if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(1), publish).await {
                    published.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let until = Instant::now() + Duration::from_secs(12);
    let mut cuts = 0u32;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(25)).await;
        proxy.cut();
        cuts += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
        proxy.restore();
    }
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.await.unwrap();
    }
    // Still alive, and the connection still works after the last cut.
    let topic: Topic = format!("{union}/cut/pub/ctx/last/status").parse().unwrap();
    tokio::time::timeout(
        Duration::from_secs(15),
        transport.publish(&topic, Bytes::from_static(b"last")),
    )
    .await
    .expect("a publish after the cuts within 15 s")
    .expect("a publish after the cuts");
    eprintln!(
        "{cuts} cuts, {} publishes confirmed",
        published.load(Ordering::Relaxed)
    );
}
