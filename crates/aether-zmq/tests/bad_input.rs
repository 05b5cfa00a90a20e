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
    // The wire (see wire.rs): a batch frame of messages, each its length, a kind byte,
    // integers, then sections (a u32 length and the bytes).
    let msg = |body: &[u8]| [&(body.len() as u32).to_le_bytes()[..], body].concat();
    let section = |b: &[u8]| [&(b.len() as u32).to_le_bytes()[..], b].concat();
    let publish = |topic: &[u8], payload: &[u8]| {
        msg(&[&b"P"[..], &section(topic), &section(payload)].concat())
    };
    let frames: Vec<Vec<Vec<u8>>> = vec![
        vec![msg(b"\xff\xfe")],                               // unknown kind
        vec![msg(b"S\x01")],                                  // integers cut short
        vec![publish(b"not/a topic", b"")],                   // invalid topic
        vec![publish(topic.as_str().as_bytes(), &[0; 2048])], // over max_payload
        vec![vec![]],                                         // empty batch
        vec![b"\xff\xff\xff\x7fP".to_vec()],                  // a length past the end
        vec![msg(b"O\xff\xff\xff\xff")],                      // huge count, and no device message
        vec![publish(b"x", &[0; 200_000])],                   // over the socket's limit: cut off
    ];
    for f in frames {
        let msg: Multipart = f.into_iter().map(tmq::Message::from).collect();
        raw.send(msg).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = device.stats();
        if s.malformed >= 6 && s.oversized >= 1 {
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
