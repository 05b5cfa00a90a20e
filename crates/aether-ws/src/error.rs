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

impl From<WsError> for Error {
    fn from(e: WsError) -> Error {
        Error::transport(BACKEND, e)
    }
}
