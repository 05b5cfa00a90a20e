//! WebSocket over TLS: the conformance suite on `wss://` against a TLS hub this test
//! process starts (certificates made by the test), and TLS itself: a round trip trusting
//! the test CA, typed errors for a certificate that does not verify, REST over `https://`,
//! and a plain HTTP request to the TLS port answered 400.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aether::aether_ws::rustls::{self, CertificateError, pki_types::ServerName};
use aether::aether_ws::{Hub, HubConfig, WsError};
use aether::{Aether, Error, TaskContext};
use integration_tests::brokers::ws::{HubHarness, TOKEN};
use integration_tests::tls::TestCerts;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

integration_tests::conformance! {
    harness: HubHarness::tls();
}

/// A TLS hub with `certs`, on a spare port of 127.0.0.1.
async fn tls_hub(certs: &TestCerts) -> Hub {
    let url = format!(
        "wss://127.0.0.1:0?token={TOKEN}&tls_cert={}&tls_key={}",
        certs.cert.display(),
        certs.key.display()
    );
    Hub::start(HubConfig::from_url(&url).unwrap())
        .await
        .unwrap()
}

fn ws_error(e: &Error) -> &WsError {
    match e {
        Error::Transport { source, .. } => source
            .downcast_ref::<WsError>()
            .unwrap_or_else(|| panic!("not a WsError: {e:?}")),
        other => panic!("not a transport error: {other:?}"),
    }
}

/// Connects with `url`, which must fail at once; its error.
async fn refused(url: &str) -> Error {
    let start = Instant::now();
    let err = match aether::connect(url).await {
        Ok(_) => panic!("{url}: connected"),
        Err(e) => e,
    };
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{url}: failed only after {:?}: {err}",
        start.elapsed()
    );
    err
}

#[tokio::test]
async fn a_task_round_trip_over_wss() {
    let certs = TestCerts::temporary();
    let hub = tls_hub(&certs).await;
    // By name: the certificate's `localhost` is checked against the URL's host.
    let url = format!(
        "wss://localhost:{}/ws?token={TOKEN}&tls_ca={}",
        hub.port(),
        certs.ca.display()
    );
    let aether = Aether::new(aether::connect(&url).await.unwrap()).unwrap();
    let _worker = aether
        .worker()
        .handle(
            "math",
            "add",
            "x",
            |_ctx: TaskContext, (a, b): (i64, i64)| async move { Ok::<_, Error>(a + b) },
        )
        .start()
        .await
        .unwrap();
    let sum: i64 = aether
        .client()
        .perform("math", "add", "x", &(2, 3))
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    assert_eq!(sum, 5);
    assert_eq!(hub.stats().tls_failed, 0);
}

#[tokio::test]
async fn a_certificate_that_does_not_verify_is_a_typed_error_at_once() {
    let certs = TestCerts::temporary();
    let hub = tls_hub(&certs).await;
    let port = hub.port();
    let other = TestCerts::temporary();
    let is_invalid = |err: &Error, expected: CertificateError| match ws_error(err) {
        WsError::Tls {
            endpoint,
            source: rustls::Error::InvalidCertificate(got),
        } => {
            assert_eq!(endpoint, &format!("wss://127.0.0.1:{port}/ws"));
            assert_eq!(got, &expected, "{err}");
        }
        other => panic!("not a certificate error: {other:?}"),
    };
    // Only the webpki roots, which do not hold the test CA; and another CA.
    for ca in [String::new(), format!("&tls_ca={}", other.ca.display())] {
        let url = format!("wss://127.0.0.1:{port}/ws?token={TOKEN}{ca}");
        let err = refused(&url).await;
        is_invalid(&err, CertificateError::UnknownIssuer);
        assert!(err.to_string().contains("tls_ca"), "{err}");
        assert!(!format!("{err} {err:?}").contains(TOKEN), "{err:?}");
    }
    // The right CA, but a certificate for other names.
    let elsewhere = TestCerts::new(
        &std::env::temp_dir().join(format!("aether-certs-{}", uuid::Uuid::new_v4())),
        &["hub.example"],
    );
    let hub = tls_hub(&elsewhere).await;
    let port = hub.port();
    let url = format!(
        "wss://127.0.0.1:{port}/ws?token={TOKEN}&tls_ca={}",
        elsewhere.ca.display()
    );
    let err = refused(&url).await;
    match ws_error(&err) {
        WsError::Tls {
            source:
                rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }),
            ..
        } => {}
        other => panic!("not a name mismatch: {other:?}"),
    }
    assert!(err.to_string().contains("does not name"), "{err}");
    // A wss:// peer at a plain hub: a TLS error, not a hang.
    let plain =
        Hub::start(HubConfig::from_url(&format!("ws://127.0.0.1:0?token={TOKEN}")).unwrap())
            .await
            .unwrap();
    let url = format!("wss://127.0.0.1:{}/ws?token={TOKEN}", plain.port());
    let err = refused(&url).await;
    assert!(matches!(ws_error(&err), WsError::Tls { .. }), "{err:?}");
    assert!(err.to_string().contains("serve TLS"), "{err}");
    assert!(hub.stats().tls_failed >= 1);
}

/// One HTTP/1.1 request over TLS to 127.0.0.1:`port`, trusting `certs`' CA; the status and
/// the body.
async fn https(certs: &TestCerts, port: u16, request: &str) -> (u16, serde_json::Value) {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&certs.ca).unwrap();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await.unwrap();
    parse(&buf)
}

fn parse(response: &[u8]) -> (u16, serde_json::Value) {
    let text = String::from_utf8_lossy(response);
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    (status, serde_json::from_str(body).unwrap_or_default())
}

#[tokio::test]
async fn rest_over_https_and_plain_http_refused_with_400() {
    let certs = TestCerts::temporary();
    let hub = tls_hub(&certs).await;
    let port = hub.port();
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let get = format!("GET /health HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n");
    let (status, body) = https(&certs, port, &get).await;
    assert_eq!(
        (status, &body["status"]),
        (200, &serde_json::json!("ok")),
        "{body}"
    );
    let msg = r#"{"message": "{\"progress\": 10}", "retain": true}"#;
    let post = format!(
        "POST /publish/u/j/t/x/1/status HTTP/1.1\r\nHost: localhost\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{msg}",
        msg.len()
    );
    let (status, body) = https(&certs, port, &post).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true);
    let get = format!("GET /messages/u/j/t/x/1/status HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n");
    let (_, body) = https(&certs, port, &get).await;
    assert_eq!(body["messages"][0]["message"], r#"{"progress": 10}"#);

    // Plain HTTP on the TLS port: answered at once, in plain HTTP, and counted.
    let start = Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let plain = format!("GET /health HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n");
    tcp.write_all(plain.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf))
        .await
        .expect("an answer, not a hang")
        .unwrap();
    let (status, body) = parse(&buf);
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("https://"),
        "{body}"
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(hub.stats().tls_failed, 1);

    // A ws:// peer at the TLS port: its upgrade is answered 400, at once.
    let err = refused(&format!("ws://127.0.0.1:{port}/ws?token={TOKEN}")).await;
    assert!(
        matches!(ws_error(&err), WsError::WebSocket { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("400"), "{err}");
    assert_eq!(hub.stats().tls_failed, 2);
}

#[tokio::test]
async fn a_hub_with_unusable_pem_files_refuses_to_start_naming_the_file_only() {
    let certs = TestCerts::temporary();
    let bad = certs.key.with_file_name("bad.pem");
    std::fs::write(
        &bad,
        "-----BEGIN PRIVATE KEY-----\nSECRETKEYDATA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let missing = certs.key.with_file_name("missing.pem");
    for (cert, key, says) in [
        (&certs.cert, &bad, "tls_key"),
        (&certs.cert, &missing, "tls_key"),
        (&certs.cert, &certs.cert, "tls_key"),
        (&certs.key, &certs.key, "tls_cert"),
        (&missing, &certs.key, "tls_cert"),
    ] {
        let url = format!(
            "wss://127.0.0.1:0?token={TOKEN}&tls_cert={}&tls_key={}",
            cert.display(),
            key.display()
        );
        let err = Hub::start(HubConfig::from_url(&url).unwrap())
            .await
            .unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(matches!(err, Error::Config(_)), "{text}");
        assert!(text.contains(says), "{text}");
        assert!(
            !text.contains("SECRETKEYDATA") && !text.contains(TOKEN),
            "{text}"
        );
    }
}
