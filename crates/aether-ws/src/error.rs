//! What can go wrong talking WebSocket. Surfaces as [`aether_core::Error::Transport`]
//! with backend `"ws"` and a [`WsError`] as its source.

use aether_core::Error;

/// The backend name in [`Error::Transport`].
pub(crate) const BACKEND: &str = "ws";

/// A WebSocket failure, kept as the source of [`Error::Transport`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WsError {
    /// A socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The hub's address could not be reached: nothing listens there (connection
    /// refused), the host is unknown or unreachable. A first connection fails with it at
    /// once; later ones are retried with backoff.
    #[error("cannot connect to {endpoint}: {source}; is the hub running (aether-ws-hub)?")]
    Connect {
        /// The URL without its token (`ws://host:port/path`).
        endpoint: String,
        /// The socket's error (`ErrorKind::ConnectionRefused`, ...).
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake with the hub failed: most often its certificate did not verify
    /// (`rustls::Error::InvalidCertificate`: an issuer not trusted, add it with `tls_ca`;
    /// a name that is not the URL's host; expired), or the port does not speak TLS.
    #[error("TLS with {endpoint}: {source}{}", tls_hint(source))]
    Tls {
        /// The URL without its token (`wss://host:port/path`).
        endpoint: String,
        /// rustls's error.
        #[source]
        source: rustls::Error,
    },
    /// The WebSocket handshake or a frame failed.
    #[error("{what}: {source}")]
    WebSocket {
        /// What was being done.
        what: String,
        /// tungstenite's error.
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    /// The hub answered a request with a refusal.
    #[error("the hub refused: {0}")]
    Refused(String),
    /// The hub could not be reached or did not welcome this peer in time.
    #[error("{0}")]
    Unreachable(String),
}

/// What to do about a TLS failure, where rustls' words alone leave it open.
fn tls_hint(e: &rustls::Error) -> &'static str {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            "; its issuer is not trusted: add the CA's PEM file as tls_ca=..."
        }
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => "; the certificate does not name the URL's host: connect by a name it holds",
        rustls::Error::InvalidMessage(_) => "; does that port serve TLS (a hub with tls_cert)?",
        _ => "",
    }
}

impl From<WsError> for Error {
    fn from(e: WsError) -> Error {
        Error::transport(BACKEND, e)
    }
}
