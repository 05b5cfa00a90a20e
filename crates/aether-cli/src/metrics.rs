//! `aether worker --metrics ADDR`: aether's metrics as Prometheus text on `GET /metrics`.

use std::net::SocketAddr;
use std::time::Duration;

use aether::observe::prometheus::{self, CONTENT_TYPE, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::exit::Failure;

/// The largest request head read.
const MAX_HEAD: usize = 8 << 10;

/// Installs the Prometheus recorder (before any node is built, so every handle records)
/// and serves it on `addr` until the process ends. Returns the address bound.
pub(crate) async fn serve(addr: SocketAddr) -> Result<SocketAddr, Failure> {
    let handle = prometheus::install().map_err(|e| Failure::usage(format!("--metrics: {e}")))?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::usage(format!("--metrics {addr}: {e}")))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(answer(stream, handle.clone()));
                }
                Err(e) => eprintln!("aether: --metrics: accept failed: {e}"),
            }
        }
    });
    Ok(bound)
}

/// Answers one request: the metrics for `GET /metrics`, 404 for anything else.
async fn answer(mut stream: TcpStream, handle: PrometheusHandle) {
    let mut head = Vec::new();
    let read = async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        true
    };
    if !matches!(
        tokio::time::timeout(Duration::from_secs(10), read).await,
        Ok(true)
    ) {
        return;
    }
    let (status, body) = if head.starts_with(b"GET /metrics ") {
        ("200 OK", handle.render())
    } else {
        ("404 Not Found", "GET /metrics\n".to_owned())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
