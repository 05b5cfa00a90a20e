//! A peer's first connection: where nothing listens, or the hub refuses the upgrade, it
//! fails at once with a typed error, as the other adapters' first connections do, instead
//! of retrying until `operation_timeout`.

use std::time::{Duration, Instant};

use aether_core::Error;
use aether_ws::{Hub, HubConfig, WsError, WsTransport};

/// A port nothing listens on: bound, then closed.
async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

fn ws_error(e: &Error) -> &WsError {
    match e {
        Error::Transport { source, .. } => source
            .downcast_ref::<WsError>()
            .unwrap_or_else(|| panic!("not a WsError: {e:?}")),
        other => panic!("not a transport error: {other:?}"),
    }
}

#[tokio::test]
async fn nothing_listening_fails_at_once_with_connection_refused() {
    let port = closed_port().await;
    let url = format!("ws://127.0.0.1:{port}/ws?token=t0k&operation_timeout=10s");
    let start = Instant::now();
    let err = WsTransport::connect(&url).await.unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    match ws_error(&err) {
        WsError::Connect { endpoint, source } => {
            assert_eq!(endpoint, &format!("ws://127.0.0.1:{port}/ws"));
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("not a Connect error: {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("is the hub running"), "{text}");
    assert!(!text.contains("t0k"), "{text}");
}

#[tokio::test]
async fn a_wrong_token_fails_at_once_and_is_not_printed() {
    let hub = Hub::start(HubConfig::from_url("ws://127.0.0.1:0?token=right").unwrap())
        .await
        .unwrap();
    // A token with characters a URL must escape: sent, refused (401), never printed.
    let odd = "s3cr%26%3D%2B%25t~!";
    let url = format!("ws://127.0.0.1:{}/ws?token={odd}", hub.port());
    let start = Instant::now();
    let err = WsTransport::connect(&url).await.unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    let text = format!("{err} {err:?}");
    assert!(text.contains("401"), "{text}");
    assert!(!text.contains("s3cr"), "{text}");
    // Tokens an HTTP header cannot carry as they are (not ASCII, spaces, control
    // characters) are a configuration error that does not print them.
    for bad in ["s3cr%C3%A9t", "s3cr%20t", "s3cr%0At"] {
        let url = format!("ws://127.0.0.1:{}/ws?token={bad}", hub.port());
        let err = WsTransport::connect(&url).await.unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(matches!(err, Error::Config(_)), "{text}");
        assert!(text.contains("token"), "{text}");
        assert!(!text.contains("s3cr"), "{text}");
    }
}
