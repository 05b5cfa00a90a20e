//! One socket: read the request head, check the token, the origin and the connection
//! limit, then either upgrade to a WebSocket (`GET /ws`) or answer one REST call and close.
//!
//! | route | answer |
//! |-------|--------|
//! | `GET /ws` (upgrade) | the WebSocket; 401 without the token, 403 for an origin not allowed |
//! | `POST /publish/{topic}` body `{"message": "<string>", "retain": false}` | `{"success": true, "topic": ...}`; a perform is enqueued (one-of-N), anything else broadcast |
//! | `GET /health` | `{"status": "ok", "timestamp", "connections", "workers", "in_flight"}` |
//! | `GET /messages/{topic}` | `{"topic", "messages": [{"message", "timestamp"}]}`, the retained ones |
//! | `GET /metrics` | with `metrics=true`: Prometheus text, aether's metrics in this process and the hub's counts (`aether_hub_*`) |
//! | `OPTIONS *` | CORS preflight for allowed origins |

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use aether_core::{Action, Bytes, Topic};
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::{Counters, Shared, bump};
use crate::config::HubConfig;
use crate::tls::{HANDSHAKE_RECORD, Stream};

/// The largest request head read.
const MAX_HEAD: usize = 16 << 10;
/// How long a peer may take to send its request head (and body).
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A request's head, as far as the hub looks at it.
#[derive(Debug, Default)]
pub(crate) struct Head {
    method: String,
    path: String,
    query: String,
    authorization: Option<String>,
    origin: Option<String>,
    upgrade: bool,
    content_length: usize,
}

/// Serves one accepted socket.
pub(crate) async fn serve(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    let open = shared.open.fetch_add(1, Ordering::AcqRel) + 1;
    let _slot = Slot(shared.clone());
    let Some(mut stream) = secure(&shared, tcp, peer).await else {
        return;
    };
    let read = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await;
    let (head, whole, head_len) = match read {
        Ok(Ok(Some(parsed))) => parsed,
        Ok(Ok(None)) => return,
        Ok(Err(why)) => {
            bump(&shared.counters.bad_frames);
            let _ = respond(&mut stream, 400, None, &json!({ "error": why })).await;
            return;
        }
        Err(_) => return,
    };
    if open > shared.config.max_connections {
        bump(&shared.counters.over_limit);
        let body = json!({ "error": "too many connections" });
        let _ = respond(&mut stream, 503, None, &body).await;
        return;
    }
    let cors = match check_origin(&shared, &head) {
        Ok(cors) => cors,
        Err(()) => {
            bump(&shared.counters.forbidden_origin);
            let body = json!({ "error": "origin not allowed" });
            let _ = respond(&mut stream, 403, None, &body).await;
            return;
        }
    };
    if head.method == "OPTIONS" {
        let _ = respond_raw(&mut stream, 204, cors.as_deref(), "", b"").await;
        return;
    }
    if !authorized(&shared, &head) {
        bump(&shared.counters.unauthorized);
        let body = json!({ "error": "a bearer token is required (Authorization: Bearer ...)" });
        let _ = respond(&mut stream, 401, cors.as_deref(), &body).await;
        return;
    }
    if shared.config.metrics && head.method == "GET" && head.path == "/metrics" {
        let body = metrics_text(&shared.counters);
        let _ = respond_raw(
            &mut stream,
            200,
            cors.as_deref(),
            CONTENT_TYPE,
            body.as_bytes(),
        )
        .await;
        return;
    }
    if head.upgrade && head.path == "/ws" {
        let stream = Prefixed {
            buf: whole,
            inner: stream,
        };
        super::conn::upgrade(shared, stream, peer).await;
        return;
    }
    let rest = whole.slice(head_len..);
    let (status, body) = route(&shared, &head, rest, &mut stream).await;
    let _ = respond(&mut stream, status, cors.as_deref(), &body).await;
}

/// The socket as the hub serves it: plain, or with TLS on, once the handshake is done.
/// With TLS on, a request in plain HTTP is answered 400 in plain HTTP (saying to use
/// `https://` or `wss://`) instead of being left to time out, and counted with the failed
/// handshakes. `None` when there is nothing more to serve.
async fn secure(shared: &Shared, tcp: TcpStream, peer: SocketAddr) -> Option<Stream> {
    let Some(acceptor) = &shared.tls else {
        return Some(Stream::Plain(tcp));
    };
    let mut first = [0u8; 1];
    match tokio::time::timeout(READ_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return None,
    }
    if first[0] != HANDSHAKE_RECORD {
        bump(&shared.counters.tls_failed);
        let mut plain = Stream::Plain(tcp);
        // Read the request first, so that closing does not reset the connection under
        // the answer.
        let _ = tokio::time::timeout(Duration::from_secs(1), read_head(&mut plain)).await;
        let body = json!({ "error": "this hub serves TLS only: use https:// or wss://" });
        let _ = respond(&mut plain, 400, None, &body).await;
        return None;
    }
    match tokio::time::timeout(READ_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Some(Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(tls)))),
        Ok(Err(e)) => {
            bump(&shared.counters.tls_failed);
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            bump(&shared.counters.tls_failed);
            None
        }
    }
}

/// Installs the process's Prometheus recorder for a hub that serves `/metrics`.
pub(crate) fn start_metrics(config: &HubConfig) -> aether_core::Result<()> {
    #[cfg(feature = "prometheus")]
    if config.metrics {
        aether_core::observe::prometheus::install()?;
    }
    // Without the feature, `validate` refused `metrics=true`.
    let _ = config;
    Ok(())
}

/// The `Content-Type` of Prometheus text.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// `GET /metrics`: the process's recorder rendered, then the hub's own counts.
fn metrics_text(c: &Counters) -> String {
    #[cfg(feature = "prometheus")]
    let mut text = aether_core::observe::prometheus::installed()
        .map(|h| h.render())
        .unwrap_or_default();
    #[cfg(not(feature = "prometheus"))]
    let mut text = String::new();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let hub = [
        (
            "connections",
            "gauge",
            "WebSocket connections open now",
            g(&c.connections),
        ),
        (
            "consumers",
            "gauge",
            "Consumers (workers' queues) open now",
            g(&c.consumers),
        ),
        (
            "in_flight",
            "gauge",
            "Deliveries handed to peers and not settled yet",
            g(&c.in_flight),
        ),
        (
            "accepted_total",
            "counter",
            "WebSocket connections accepted",
            g(&c.accepted),
        ),
        (
            "unauthorized_total",
            "counter",
            "Requests refused for a missing or wrong token",
            g(&c.unauthorized),
        ),
        (
            "forbidden_origin_total",
            "counter",
            "Requests refused for their Origin",
            g(&c.forbidden_origin),
        ),
        (
            "over_limit_total",
            "counter",
            "Connections refused because max_connections were open",
            g(&c.over_limit),
        ),
        (
            "bad_frames_total",
            "counter",
            "Frames or requests that could not be taken",
            g(&c.bad_frames),
        ),
        (
            "stalled_total",
            "counter",
            "Connections cut off because their send queue was full",
            g(&c.stalled),
        ),
        (
            "expired_total",
            "counter",
            "Connections dropped for missing heartbeats",
            g(&c.expired),
        ),
        (
            "given_back_total",
            "counter",
            "Deliveries given back because their connection went away",
            g(&c.given_back),
        ),
        (
            "duplicates_total",
            "counter",
            "Seed-protocol messages dropped as a second copy",
            g(&c.duplicates),
        ),
        (
            "tls_failed_total",
            "counter",
            "TLS handshakes that failed, plain HTTP to a TLS hub included",
            g(&c.tls_failed),
        ),
    ];
    for (name, kind, help, value) in hub {
        text.push_str(&format!(
            "# HELP aether_hub_{name} {help}\n# TYPE aether_hub_{name} {kind}\naether_hub_{name} {value}\n"
        ));
    }
    text
}

/// Frees a place against `max_connections` when the socket is done.
struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Reads up to the end of the head; returns it, everything read, and the head's length.
async fn read_head(stream: &mut Stream) -> Result<Option<(Head, Bytes, usize)>, String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let head = head_of(&req)?;
                return Ok(Some((head, Bytes::from(buf), len)));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => return Err("request head too large".into()),
            Err(e) => return Err(format!("bad request: {e}")),
        }
    }
}

fn head_of(req: &httparse::Request<'_, '_>) -> Result<Head, String> {
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut head = Head {
        method: req.method.unwrap_or("").to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        ..Head::default()
    };
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).map_err(|_| "a header is not UTF-8")?;
        if h.name.eq_ignore_ascii_case("authorization") {
            head.authorization = Some(value.to_owned());
        } else if h.name.eq_ignore_ascii_case("origin") {
            head.origin = Some(value.to_owned());
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            head.upgrade = value.eq_ignore_ascii_case("websocket");
        } else if h.name.eq_ignore_ascii_case("content-length") {
            head.content_length = value.trim().parse().map_err(|_| "bad Content-Length")?;
        }
    }
    Ok(head)
}

/// `Ok(Some(origin))` to echo in CORS headers, `Ok(None)` without an `Origin`, `Err` for
/// an origin not on the list.
fn check_origin(shared: &Shared, head: &Head) -> Result<Option<String>, ()> {
    match &head.origin {
        None => Ok(None),
        Some(o) if shared.config.origins.iter().any(|a| a == o || a == "*") => Ok(Some(o.clone())),
        Some(_) => Err(()),
    }
}

fn authorized(shared: &Shared, head: &Head) -> bool {
    let Some(token) = &shared.config.token else {
        return shared.config.no_auth;
    };
    let given = head
        .authorization
        .as_deref()
        .and_then(|a| {
            a.strip_prefix("Bearer ")
                .or_else(|| a.strip_prefix("bearer "))
        })
        .map(str::to_owned)
        .or_else(|| {
            // Browsers cannot set headers on a WebSocket: `?token=` on the upgrade only.
            head.upgrade
                .then(|| query_value(&head.query, "token"))
                .flatten()
        });
    given.is_some_and(|g| same(g.as_bytes(), token.expose().as_bytes()))
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn query_value(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key)
            .then(|| aether_core::url::BrokerUrl::parse(&format!("x://h?t={v}")).ok())?
            .and_then(|u| u.query.into_iter().next().map(|(_, v)| v))
    })
}

#[derive(Deserialize)]
struct PublishBody {
    message: String,
    #[serde(default)]
    retain: bool,
}

/// Answers one REST call.
async fn route(
    shared: &Arc<Shared>,
    head: &Head,
    rest: Bytes,
    stream: &mut Stream,
) -> (u16, serde_json::Value) {
    let c = &shared.counters;
    match (head.method.as_str(), head.path.as_str()) {
        ("GET", "/health") => (
            200,
            json!({
                "status": "ok",
                "timestamp": super::now(),
                "connections": c.connections.load(Ordering::Relaxed),
                "workers": c.consumers.load(Ordering::Relaxed),
                "in_flight": c.in_flight.load(Ordering::Relaxed),
                "backend": shared.backend.name(),
            }),
        ),
        ("GET", p) if p.starts_with("/messages/") => {
            let topic = decode_path(&p["/messages/".len()..]);
            let retained = shared.retained.lock().unwrap_or_else(|e| e.into_inner());
            let messages: Vec<_> = retained
                .get(&topic)
                .into_iter()
                .map(|(m, ts)| json!({ "message": String::from_utf8_lossy(&m), "timestamp": ts }))
                .collect();
            (200, json!({ "topic": topic, "messages": messages }))
        }
        ("POST", p) if p.starts_with("/publish/") => {
            let topic = decode_path(&p["/publish/".len()..]);
            let limit = shared.config.max_frame();
            if head.content_length > limit {
                bump(&c.bad_frames);
                return (
                    413,
                    json!({ "success": false, "topic": topic, "error": "body too large" }),
                );
            }
            let body = match read_body(stream, rest, head.content_length).await {
                Ok(b) => b,
                Err(e) => return (400, json!({ "success": false, "topic": topic, "error": e })),
            };
            let parsed: PublishBody = match serde_json::from_slice(&body) {
                Ok(p) => p,
                Err(e) => {
                    bump(&c.bad_frames);
                    let error =
                        format!("body is not {{\"message\": string, \"retain\": bool}}: {e}");
                    return (
                        400,
                        json!({ "success": false, "topic": topic, "error": error }),
                    );
                }
            };
            match publish(shared, &topic, parsed.message, parsed.retain).await {
                Ok(()) => (200, json!({ "success": true, "topic": topic })),
                Err((status, e)) => (
                    status,
                    json!({ "success": false, "topic": topic, "error": e }),
                ),
            }
        }
        _ => (404, json!({ "error": "no such route" })),
    }
}

/// Publishes (or, for a perform, enqueues) a message that came by REST or a seed frame;
/// keeps it if `retain`. The error is an HTTP status and why.
pub(crate) async fn publish(
    shared: &Arc<Shared>,
    topic: &str,
    message: String,
    retain: bool,
) -> Result<(), (u16, String)> {
    let payload = Bytes::from(message);
    if retain {
        let c = &shared.config;
        shared
            .retained
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keep(
                topic,
                payload.clone(),
                c.retained_per_topic,
                c.retained_topics,
            );
    }
    let parsed: Topic = topic.parse().map_err(|e| {
        bump(&shared.counters.bad_frames);
        (400, format!("invalid topic: {e}"))
    })?;
    if shared.seed.seen(&parsed, &payload) {
        bump(&shared.counters.duplicates);
        return Ok(());
    }
    let sent = if parsed.action() == Action::Perform {
        // Watch for the replies before a worker can send them: the seed client
        // subscribes to them only later (see `replies`).
        super::replies::Replies::expect(shared, &parsed).await;
        shared.backend.enqueue(&parsed, payload).await
    } else {
        let sent = shared.backend.publish(&parsed, payload).await;
        if sent.is_ok() {
            shared.seed_work.replied(shared, &parsed).await;
        }
        sent
    };
    sent.map_err(|e| match e {
        aether_core::Error::QueueFull { .. } => (503, e.to_string()),
        aether_core::Error::PayloadTooLarge { .. } => (413, e.to_string()),
        _ => (502, e.to_string()),
    })
}

async fn read_body(stream: &mut Stream, rest: Bytes, len: usize) -> Result<Vec<u8>, String> {
    let mut body = rest.to_vec();
    body.truncate(len);
    let mut chunk = vec![0u8; 16 << 10];
    while body.len() < len {
        let read = tokio::time::timeout(READ_TIMEOUT, stream.read(&mut chunk)).await;
        match read {
            Ok(Ok(0)) => return Err("the body ended early".into()),
            Ok(Ok(n)) => body.extend_from_slice(&chunk[..n.min(len - body.len())]),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("timed out reading the body".into()),
        }
    }
    Ok(body)
}

/// The topic in a path, percent-escapes decoded (`%2B` for `+`...).
fn decode_path(raw: &str) -> String {
    aether_core::url::BrokerUrl::parse(&format!("x://h/{raw}"))
        .map(|u| u.path)
        .unwrap_or_else(|_| raw.to_owned())
}

async fn respond(
    stream: &mut Stream,
    status: u16,
    cors: Option<&str>,
    body: &serde_json::Value,
) -> std::io::Result<()> {
    let body = serde_json::to_vec(body).unwrap_or_default();
    respond_raw(stream, status, cors, "application/json", &body).await
}

async fn respond_raw(
    stream: &mut Stream,
    status: u16,
    cors: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        413 => "Payload Too Large",
        502 => "Bad Gateway",
        _ => "Service Unavailable",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !content_type.is_empty() {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    if status == 401 {
        head.push_str("WWW-Authenticate: Bearer\r\n");
    }
    if let Some(origin) = cors {
        head.push_str(&format!(
            "Access-Control-Allow-Origin: {origin}\r\nVary: Origin\r\n\
             Access-Control-Allow-Methods: GET, POST, OPTIONS\r\n\
             Access-Control-Allow-Headers: Content-Type, Authorization\r\n"
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}

/// A socket whose first bytes were already read: they are read again first, so the
/// WebSocket handshake sees the whole request.
#[derive(Debug)]
pub(crate) struct Prefixed {
    buf: Bytes,
    inner: Stream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.buf.is_empty() {
            let n = self.buf.len().min(out.remaining());
            let head = self.buf.split_to(n);
            out.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
