//! `aether hub` carries tasks between WebSocket peers, on its own in-memory broker and as a
//! gateway over Redis, where a worker on Redis itself serves a perform made through the hub.

mod support;

use std::time::Duration;

use support::{Running, aether, finish, union, url};

fn spare_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_shell_worker_serves_perform_through_the_hub() {
    let port = spare_port();
    let hub = Running::start(
        aether(&["hub", &format!("ws://127.0.0.1:{port}?no_auth=true")]),
        true,
    );
    hub.wait_for("listening on", Duration::from_secs(20)).await;
    let ws = format!("ws://127.0.0.1:{port}/ws");
    let union = union();
    let _worker = Running::worker(&ws, &union, "demo/echo", &[], &["cat"]).await;
    let out = finish(
        aether(&["perform", &ws, "demo/echo", "[1, 2]", "--union", &union]),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "[1,2]");
}

/// The README's recipe: a self-signed certificate made with the `openssl` command it shows,
/// a hub on `wss://` with it, and peers trusting it with `tls_ca`.
#[tokio::test]
async fn a_tls_hub_with_an_openssl_certificate_serves_wss_peers() {
    let dir = std::env::temp_dir().join(format!("aether-cli-tls-{}", union()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "365", "-subj", "/CN=localhost"])
        .args([
            "-keyout".as_ref(),
            key.as_os_str(),
            "-out".as_ref(),
            cert.as_os_str(),
        ])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = spare_port();
    let listen = format!(
        "wss://127.0.0.1:{port}?no_auth=true&tls_cert={}&tls_key={}",
        cert.display(),
        key.display()
    );
    let hub = Running::start(aether(&["hub", &listen]), true);
    let line = hub.wait_for("listening on", Duration::from_secs(20)).await;
    assert!(line.contains("wss://"), "{line}");
    let wss = format!("wss://localhost:{port}/ws?tls_ca={}", cert.display());
    let union = union();
    let _worker = Running::worker(&wss, &union, "demo/echo", &[], &["cat"]).await;
    let out = finish(
        aether(&["perform", &wss, "demo/echo", "[1, 2]", "--union", &union]),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "[1,2]");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_hub_is_a_gateway_to_a_worker_on_redis() {
    let port = spare_port();
    let redis = url("redis");
    let hub = Running::start(
        aether(&[
            "hub",
            &format!("ws://127.0.0.1:{port}?no_auth=true"),
            "--backend",
            &redis,
        ]),
        true,
    );
    hub.wait_for("listening on", Duration::from_secs(20)).await;
    let union = union();
    // The worker talks to Redis directly; only the caller goes through the hub.
    let _worker = Running::worker(&redis, &union, "demo/echo", &[], &["cat"]).await;
    let out = finish(
        aether(&[
            "perform",
            &format!("ws://127.0.0.1:{port}/ws"),
            "demo/echo",
            "{\"via\": \"hub\"}",
            "--union",
            &union,
        ]),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "{\"via\":\"hub\"}");
}

#[tokio::test]
async fn a_hub_without_a_token_or_no_auth_refuses_to_start() {
    let out = finish(
        aether(&["hub", &format!("ws://127.0.0.1:{}", spare_port())]),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(out.stderr.contains("no_auth"), "{out:?}");
}
