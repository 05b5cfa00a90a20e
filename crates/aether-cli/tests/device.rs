//! `aether device` brokers between `aether worker` and `aether perform` over ZeroMQ.

mod support;

use std::time::Duration;

use support::{Running, aether, finish, union};

#[tokio::test]
async fn a_shell_worker_serves_perform_through_the_device() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("zmq://127.0.0.1:{port}");
    let device = Running::start(aether(&["device", &url]), true);
    device
        .wait_for("listening on", Duration::from_secs(20))
        .await;
    let union = union();
    let _worker = Running::worker(&url, &union, "demo/echo", &[], &["cat"]).await;
    let out = finish(
        aether(&["perform", &url, "demo/echo", "[1, 2]", "--union", &union]),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "[1,2]");
}
