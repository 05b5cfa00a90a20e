//! The hub from the outside: REST routes, the token, origins, limits, bad frames and the
//! seed protocol, with raw HTTP and raw WebSocket peers.

use std::time::Duration;

use aether_core::{Bytes, Topic, Transport, WorkQueue};
use aether_ws::tokio_tungstenite::tungstenite::Message as WsMessage;
use aether_ws::tokio_tungstenite::tungstenite::client::IntoClientRequest;
use aether_ws::{Hub, HubConfig, WsTransport};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "t0ken";

async fn hub(extra: &str) -> Hub {
    let url = format!("ws://127.0.0.1:0?token={TOKEN}&heartbeat=200ms{extra}");
    Hub::start(HubConfig::from_url(&url).unwrap())
        .await
        .unwrap()
}

/// One raw HTTP/1.1 request; the status and the body.
async fn http(port: u16, request: &str) -> (u16, serde_json::Value) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

fn post(topic: &str, body: &str, auth: bool) -> String {
    let auth = if auth {
        format!("Authorization: Bearer {TOKEN}\r\n")
    } else {
        String::new()
    };
    format!(
        "POST /publish/{topic} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn rest_routes_with_the_token_and_without() {
    let hub = hub("").await;
    let port = hub.port();
    let get = |path: &str, auth: bool| {
        let auth = if auth {
            format!("Authorization: Bearer {TOKEN}\r\n")
        } else {
            String::new()
        };
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n")
    };
    let (status, body) = http(port, &get("/health", true)).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    assert_eq!(http(port, &get("/health", false)).await.0, 401);
    let wrong = "GET /health HTTP/1.1\r\nAuthorization: Bearer nope\r\n\r\n";
    assert_eq!(http(port, wrong).await.0, 401);

    let msg = r#"{"message": "{\"progress\": 10}", "retain": true}"#;
    let (status, body) = http(port, &post("u/j/t/x/1/status", msg, true)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"success": true, "topic": "u/j/t/x/1/status"})
    );
    assert_eq!(
        http(port, &post("u/j/t/x/1/status", msg, false)).await.0,
        401
    );
    let (_, body) = http(port, &get("/messages/u/j/t/x/1/status", true)).await;
    assert_eq!(body["messages"][0]["message"], "{\"progress\": 10}");
    let (_, body) = http(port, &get("/messages/u/none/t/x/1/status", true)).await;
    assert_eq!(body["messages"], serde_json::json!([]));

    let (status, _) = http(port, &post("not a topic", msg, true)).await;
    assert_eq!(status, 400);
    let (status, _) = http(port, &post("u/j/t/x/1/status", "{\"nope\": 1}", true)).await;
    assert_eq!(status, 400);
    assert_eq!(http(port, &get("/nowhere", true)).await.0, 404);
    assert!(hub.stats().unauthorized >= 3);
    assert!(hub.stats().bad_frames >= 2);
}

#[tokio::test]
async fn rest_perform_goes_to_one_worker() {
    let hub = hub("").await;
    let url = format!("ws://127.0.0.1:{}/ws?token={TOKEN}", hub.port());
    let a = WsTransport::connect(&url).await.unwrap();
    let b = WsTransport::connect(&url).await.unwrap();
    let q = WorkQueue::new("u", "j", "t", "x", "g").unwrap();
    let mut ca = a.consume(&q, Default::default()).await.unwrap();
    let mut cb = b.consume(&q, Default::default()).await.unwrap();
    let (status, _) = http(
        hub.port(),
        &post("u/j/t/x/77/perform", r#"{"message": "{}"}"#, true),
    )
    .await;
    assert_eq!(status, 200);
    let got = tokio::select! {
        d = ca.next() => d,
        d = cb.next() => d,
    };
    let d = got.unwrap().unwrap();
    assert_eq!(d.topic.tid(), "77");
    d.ack().await.unwrap();
    for c in [&mut ca, &mut cb] {
        let more = tokio::time::timeout(Duration::from_millis(300), c.next()).await;
        assert!(more.is_err(), "one worker only");
    }
}

/// Sockets read through a small buffer (8 KiB); a message many times its size still
/// arrives whole, both ways through the hub, among small ones.
#[tokio::test]
async fn messages_larger_than_the_read_buffer_arrive_whole() {
    let hub = hub("").await;
    let url = format!("ws://127.0.0.1:{}/ws?token={TOKEN}", hub.port());
    let client = WsTransport::connect(&url).await.unwrap();
    let worker = WsTransport::connect(&url).await.unwrap();
    let q = WorkQueue::new("u", "j", "t", "x", "g").unwrap();
    let mut c = worker.consume(&q, Default::default()).await.unwrap();
    let sizes = [3, 1 << 20, 10, 100_000, 8 << 10, 1];
    for (i, size) in sizes.iter().enumerate() {
        let topic: Topic = format!("u/j/t/x/{i}/perform").parse().unwrap();
        let body: Vec<u8> = (0..*size).map(|n| (n % 251) as u8).collect();
        client.enqueue(&topic, Bytes::from(body)).await.unwrap();
    }
    for (i, size) in sizes.iter().enumerate() {
        let d = tokio::time::timeout(Duration::from_secs(5), c.next())
            .await
            .expect("a delivery in time")
            .unwrap()
            .unwrap();
        assert_eq!(d.topic.tid(), i.to_string());
        assert_eq!(d.payload.len(), *size);
        assert!(
            d.payload
                .iter()
                .enumerate()
                .all(|(n, b)| *b == (n % 251) as u8)
        );
        d.ack().await.unwrap();
    }
}

#[tokio::test]
async fn upgrades_need_the_token_and_an_allowed_origin() {
    let hub = hub("&origins=https://app.example").await;
    let port = hub.port();
    let open = |token: Option<&str>, origin: Option<&str>| {
        let mut req = format!("ws://127.0.0.1:{port}/ws")
            .into_client_request()
            .unwrap();
        if let Some(t) = token {
            req.headers_mut()
                .insert("Authorization", format!("Bearer {t}").parse().unwrap());
        }
        if let Some(o) = origin {
            req.headers_mut().insert("Origin", o.parse().unwrap());
        }
        aether_ws::tokio_tungstenite::connect_async(req)
    };
    assert!(open(None, None).await.is_err());
    assert!(open(Some("wrong"), None).await.is_err());
    assert!(
        open(Some(TOKEN), Some("https://evil.example"))
            .await
            .is_err()
    );
    assert!(open(Some(TOKEN), Some("https://app.example")).await.is_ok());
    assert!(open(Some(TOKEN), None).await.is_ok());
    let stats = hub.stats();
    assert_eq!((stats.unauthorized, stats.forbidden_origin), (2, 1));
    // Browsers cannot set headers: the token as a query parameter on the upgrade.
    let url = format!("ws://127.0.0.1:{port}/ws?token={TOKEN}");
    assert!(
        aether_ws::tokio_tungstenite::connect_async(url)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn connection_limit_refuses_with_503() {
    let hub = hub("&max_connections=1").await;
    let url = format!("ws://127.0.0.1:{}/ws?token={TOKEN}", hub.port());
    let _first = WsTransport::connect(&url).await.unwrap();
    let second = aether_ws::tokio_tungstenite::connect_async(url.as_str()).await;
    assert!(second.is_err());
    assert_eq!(hub.stats().over_limit, 1);
}

#[tokio::test]
async fn bad_frames_get_an_error_frame_and_oversized_ones_a_close() {
    let hub = hub("&max_payload=1024").await;
    let url = format!("ws://127.0.0.1:{}/ws?token={TOKEN}", hub.port());
    let (mut ws, _) = aether_ws::tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    ws.send(WsMessage::Binary(Bytes::from_static(b"\xc1\xc1")))
        .await
        .unwrap();
    let reply = next_data(&mut ws).await;
    assert!(matches!(reply, WsMessage::Binary(_)), "{reply:?}");
    ws.send(WsMessage::Text("{\"type\": \"bogus\"}".into()))
        .await
        .unwrap();
    let WsMessage::Text(t) = next_data(&mut ws).await else {
        panic!("a JSON error for a text frame")
    };
    assert!(t.contains("error"), "{t}");
    assert_eq!(hub.stats().bad_frames, 2);
    // Past max_payload plus the framing allowance: closed with 1009 and a reason.
    let big = vec![b'x'; 1024 + (64 << 10) + 1];
    let _ = ws.send(WsMessage::Binary(Bytes::from(big))).await;
    let close = next_data(&mut ws).await;
    let WsMessage::Close(Some(frame)) = close else {
        panic!("a close frame, got {close:?}")
    };
    assert_eq!(u16::from(frame.code), 1009);
    assert!(frame.reason.contains("max_payload"));
    assert_eq!(hub.stats().bad_frames, 3);
}

async fn next_data<S>(ws: &mut S) -> WsMessage
where
    S: futures::Stream<Item = Result<WsMessage, aether_ws::tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("a frame");
        if !matches!(m, WsMessage::Ping(_) | WsMessage::Pong(_)) {
            return m;
        }
    }
}

#[tokio::test]
async fn seed_peers_share_performs_and_get_each_message_once() {
    let hub = hub("").await;
    let url = format!("ws://127.0.0.1:{}/ws?token={TOKEN}", hub.port());
    let (mut w, _) = aether_ws::tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let sub = r#"{"type": "subscribe", "topic": "$share/u3_interop_workgroup/u3/interop/echo/x/+/perform"}"#;
    w.send(WsMessage::Text(sub.into())).await.unwrap();
    let (mut c, _) = aether_ws::tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let sub = r#"{"type": "subscribe", "topic": "u3/interop/echo/x/abc/complete"}"#;
    c.send(WsMessage::Text(sub.into())).await.unwrap();
    // Let both subscriptions land: a status through the aether side proves the order.
    let aether = WsTransport::connect(&url).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The Python peer sends each message twice: by REST and by frame.
    let perform = r#"{"action": \"perform\"}"#.replace('\\', "");
    let body = serde_json::json!({ "message": perform }).to_string();
    let (status, _) = http(
        hub.port(),
        &post("u3/interop/echo/x/abc/perform", &body, true),
    )
    .await;
    assert_eq!(status, 200);
    let frame = serde_json::json!({"type": "publish", "topic": "u3/interop/echo/x/abc/perform", "message": perform, "retain": false});
    c.send(WsMessage::Text(frame.to_string().into()))
        .await
        .unwrap();
    let WsMessage::Text(got) = next_data(&mut w).await else {
        panic!("a text frame")
    };
    let got: serde_json::Value = serde_json::from_str(got.as_str()).unwrap();
    assert_eq!(got["type"], "message");
    assert_eq!(got["topic"], "u3/interop/echo/x/abc/perform");
    assert_eq!(got["message"], perform);
    let again = tokio::time::timeout(Duration::from_millis(300), w.next()).await;
    assert!(
        again.is_err() || matches!(again, Ok(Some(Ok(WsMessage::Ping(_))))),
        "the second copy is dropped: {again:?}"
    );
    assert_eq!(hub.stats().duplicates, 1);
    // The reply reaches the client's exact subscription, and an aether publish does too.
    let done: Topic = "u3/interop/echo/x/abc/complete".parse().unwrap();
    aether
        .publish(&done, Bytes::from_static(b"{\"status\": \"succeed\"}"))
        .await
        .unwrap();
    let WsMessage::Text(got) = next_data(&mut c).await else {
        panic!("a text frame")
    };
    assert!(got.contains("succeed"), "{got}");
}

/// Least in-flight dispatch, through the hub: a worker that holds a task gets no new one
/// while another is idle (round-robin would hand it every other perform).
#[tokio::test]
async fn a_worker_holding_a_task_gets_new_ones_last() {
    const TASKS: usize = 10;
    let hub = hub("").await;
    let url = format!("ws://127.0.0.1:{}/ws?token={TOKEN}", hub.port());
    let slow = WsTransport::connect(&url).await.unwrap();
    let fast = WsTransport::connect(&url).await.unwrap();
    let client = WsTransport::connect(&url).await.unwrap();
    let q = WorkQueue::new("u", "j", "t", "x", "g").unwrap();
    let options = aether_core::ConsumeOptions::new().prefetch(8);
    let mut cs = slow.consume(&q, options.clone()).await.unwrap();
    let mut cf = fast.consume(&q, options).await.unwrap();
    let fence: Topic = "u/j/t/x/fence/status".parse().unwrap();
    let (mut held, mut to_fast) = (Vec::new(), 0);
    for i in 0..TASKS {
        let topic: Topic = format!("u/j/t/x/{i}/perform").parse().unwrap();
        client.enqueue(&topic, Bytes::new()).await.unwrap();
        let wait = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::select! {
                d = cs.next() => (true, d),
                d = cf.next() => (false, d),
            }
        });
        let (to_slow, d) = wait.await.expect("a delivery");
        let d = d.unwrap().unwrap();
        if to_slow {
            held.push(d);
        } else {
            to_fast += 1;
            d.ack().await.unwrap();
            // The hub answers fast's frames in order: once this publish is answered, the
            // ack before it has reached the queue, so fast is idle again.
            fast.publish(&fence, Bytes::new()).await.unwrap();
        }
    }
    assert_eq!(held.len(), 1, "the slow worker got only its first task");
    assert_eq!(to_fast, TASKS - 1);
    assert_eq!(hub.stats().in_flight, 1);
}
