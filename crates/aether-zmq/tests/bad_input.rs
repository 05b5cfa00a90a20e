//! Malformed and oversized frames from a raw ZeroMQ peer are counted and dropped; the
//! device keeps serving the aether connections beside it.

use std::time::Duration;

use aether_core::{Bytes, Topic, Transport};
use aether_zmq::tmq::{self, Multipart};
use aether_zmq::{Device, ZmqConfig, ZmqTransport};
use futures::SinkExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_are_counted_and_the_device_keeps_serving() {
    let device = Device::start(ZmqConfig::default().port(0).max_payload(1024)).unwrap();
    let url = format!("zmq://127.0.0.1:{}", device.port());
    let t = ZmqTransport::connect(&url).await.unwrap();
    let topic: Topic = "u/j/t/x/1/status".parse().unwrap();
    let mut sub = t.subscribe(&topic.as_str().parse().unwrap()).await.unwrap();

    let context = tmq::Context::new();
    let mut raw = tmq::dealer(&context)
        .set_linger(0)
        .connect(device.endpoint())
        .unwrap();
    let frames: Vec<Vec<Vec<u8>>> = vec![
        vec![b"\xff\xfe".to_vec()],                           // unknown kind
        vec![b"S\x01".to_vec()],                              // header too short
        vec![b"P".to_vec(), b"not/a topic".to_vec(), vec![]], // invalid topic
        vec![
            b"P".to_vec(),
            topic.as_str().as_bytes().to_vec(),
            vec![0; 2048],
        ], // over max_payload
        vec![vec![]],                                         // empty header
        vec![b"P".to_vec(), vec![0; 200_000]],                // over the socket's limit: cut off
    ];
    for f in frames {
        let msg: Multipart = f.into_iter().map(tmq::Message::from).collect();
        raw.send(msg).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = device.stats();
        if s.malformed >= 4 && s.oversized >= 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not counted: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing of it reached the subscriber; the device still serves.
    t.publish(&topic, Bytes::from_static(b"ok")).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m.payload, "ok".as_bytes());
    assert_eq!(t.malformed(), 0);
    t.close().await.unwrap();
}
