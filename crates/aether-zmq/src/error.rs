//! What can go wrong talking ZeroMQ. Surfaces as [`aether_core::Error::Transport`] with
//! backend `"zmq"` and a [`ZmqError`] as its source.

use aether_core::Error;

/// The backend name in [`Error::Transport`].
pub(crate) const BACKEND: &str = "zmq";

/// A ZeroMQ failure, kept as the source of [`Error::Transport`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ZmqError {
    /// libzmq refused an operation (bind, connect, an option).
    #[error("{what}: {source}")]
    Socket {
        /// What was being done.
        what: String,
        /// libzmq's error.
        #[source]
        source: tmq::TmqError,
    },
    /// The device answered a request with a refusal this crate does not know.
    #[error("the device refused: {0}")]
    Refused(String),
    /// The device's thread could not be started or ended unexpectedly.
    #[error("the device thread: {0}")]
    Device(String),
}

impl From<ZmqError> for Error {
    fn from(e: ZmqError) -> Error {
        Error::transport(BACKEND, e)
    }
}

/// Wraps a libzmq error met while doing `what`.
pub(crate) fn socket_err(what: impl Into<String>, e: impl Into<tmq::TmqError>) -> Error {
    ZmqError::Socket {
        what: what.into(),
        source: e.into(),
    }
    .into()
}
