//! CURVE with real key pairs: a device that admits one client key, the client holding it,
//! and three that must not get in (no CURVE, an unknown key, the wrong device key).

use std::time::Duration;

use aether_core::{Bytes, ConsumeOptions, Topic, Transport, WorkQueue};
use aether_zmq::{CurveKeys, Device, ZmqConfig, ZmqTransport};

fn device_config(server: &CurveKeys, client: &CurveKeys) -> ZmqConfig {
    ZmqConfig::default()
        .port(0)
        .heartbeat(Duration::from_millis(200))
        .curve_secret_key(server.secret.expose())
        .curve_clients(vec![client.public.clone()])
}

fn client_config(port: u16) -> ZmqConfig {
    ZmqConfig::default()
        .port(port)
        .operation_timeout(Duration::from_secs(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admitted_client_round_trips_and_others_are_kept_out() {
    assert!(aether_zmq::has_curve(), "libzmq without CURVE");
    let server = CurveKeys::generate().unwrap();
    let client = CurveKeys::generate().unwrap();
    let device = Device::start(device_config(&server, &client)).unwrap();
    let port = device.port();

    let admitted = client_config(port)
        .curve_server_key(server.public.as_str())
        .curve_public_key(client.public.as_str())
        .curve_secret_key(client.secret.expose());
    let t = ZmqTransport::connect_with(admitted)
        .await
        .expect("admitted");
    let topic: Topic = "u/j/t/x/1/status".parse().unwrap();
    let mut sub = t.subscribe(&topic.as_str().parse().unwrap()).await.unwrap();
    t.publish(&topic, Bytes::from_static(b"secret"))
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m.payload, "secret".as_bytes());
    let q = WorkQueue::new("u", "j", "t", "x", "g").unwrap();
    let mut c = t.consume(&q, ConsumeOptions::new()).await.unwrap();
    let perform: Topic = "u/j/t/x/2/perform".parse().unwrap();
    t.enqueue(&perform, Bytes::from_static(b"work"))
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(5), c.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(d.payload, "work".as_bytes());
    d.ack().await.unwrap();

    let stranger = CurveKeys::generate().unwrap();
    let refused = [
        ("no CURVE", client_config(port)),
        (
            "an unknown client key",
            client_config(port)
                .curve_server_key(server.public.as_str())
                .curve_public_key(stranger.public.as_str())
                .curve_secret_key(stranger.secret.expose()),
        ),
        (
            "the wrong device key",
            client_config(port)
                .curve_server_key(stranger.public.as_str())
                .curve_public_key(client.public.as_str())
                .curve_secret_key(client.secret.expose()),
        ),
    ];
    for (what, config) in refused {
        let err = ZmqTransport::connect_with(config)
            .await
            .expect_err(what)
            .to_string();
        assert!(
            err.contains("no aether-zmq device answered"),
            "{what}: {err}"
        );
        assert!(
            !err.contains(client.secret.expose()),
            "{what}: a secret in {err}"
        );
    }
    t.close().await.unwrap();
}

#[test]
fn keys_are_checked_and_never_printed() {
    let keys = CurveKeys::generate().unwrap();
    let c = ZmqConfig::default().curve_secret_key(keys.secret.expose());
    assert!(!format!("{c:?}").contains(keys.secret.expose()));
    for bad in [
        ZmqConfig::default().curve_server_key("not a key"),
        ZmqConfig::default().curve_public_key(keys.public.as_str()),
        ZmqConfig::default().curve_clients(vec![keys.public.clone()]),
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
    // In a URL a key is percent-encoded; a bad one names the setting, not the value.
    let err = ZmqConfig::from_url("zmq://h?curve_secret_key=abc")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("curve_secret_key") && !err.contains("abc"),
        "{err}"
    );
}
