//! `aether worker --metrics ADDR` serves aether's metrics as Prometheus text, and they
//! move as the worker runs tasks.

mod support;

use std::time::Duration;

use support::{Running, aether, finish, union, url};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(30);

async fn get(addr: &str, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn worker_serves_its_metrics_on_get_metrics() {
    let (url, union) = (url("redis"), union());
    let worker = Running::worker(
        &url,
        &union,
        "demo/metered",
        &["--metrics", "127.0.0.1:0", "--workgroup", "meters"],
        &["cat"],
    )
    .await;
    let line = worker
        .wait_for("metrics on http://", Duration::from_secs(1))
        .await;
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.strip_suffix("/metrics"))
        .expect("the address")
        .to_owned();
    let before = get(&addr, "/metrics").await;
    assert!(before.starts_with("HTTP/1.1 200 OK"), "{before}");
    assert!(
        before.contains(r#"aether_workers_online{workgroup="meters",transport="redis-streams"} 1"#),
        "{before}"
    );
    for _ in 0..2 {
        let out = finish(
            aether(&["perform", &url, "demo/metered", "\"hi\"", "--union", &union]),
            LIMIT,
        )
        .await;
        assert_eq!(out.code(), 0, "{out:?}");
    }
    let after = get(&addr, "/metrics").await;
    let succeeded = r#"aether_worker_succeeded_total{job="demo",task="metered",workgroup="meters",transport="redis-streams"} 2"#;
    assert!(after.contains(succeeded), "{after}");
    assert!(after.contains("# TYPE aether_worker_handler_duration_seconds histogram"));
    assert!(get(&addr, "/other").await.starts_with("HTTP/1.1 404"));
}
