//! What can go wrong talking to Redis. Surfaces as [`aether_core::Error::Transport`] with
//! backend `"redis"` and a [`RedisError`] as its source.

use aether_core::Error;

/// The backend name in [`Error::Transport`].
pub(crate) const BACKEND: &str = "redis";

/// A Redis failure, kept as the source of [`Error::Transport`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisError {
    /// The fred client failed (network, protocol, a command the server refused).
    #[error(transparent)]
    Client(#[from] fred::error::Error),
}

impl From<RedisError> for Error {
    fn from(e: RedisError) -> Error {
        Error::transport(BACKEND, e)
    }
}

/// Wraps a fred error as an aether transport error.
pub(crate) fn redis_err(e: fred::error::Error) -> Error {
    RedisError::Client(e).into()
}

/// Whether `e` is the server's `NOGROUP` (the stream or its group is gone, e.g. after a
/// restart without persistence).
pub(crate) fn is_nogroup(e: &fred::error::Error) -> bool {
    e.details().starts_with("NOGROUP")
}

/// Whether `e` is a blocking command that timed out without an answer.
pub(crate) fn is_timeout(e: &fred::error::Error) -> bool {
    matches!(e.kind(), fred::error::ErrorKind::Timeout)
}

/// Whether `e` is a Redis Cluster's `TRYAGAIN`: a multi-key command (here, a queue's script)
/// met its slot half-migrated to another node, some keys moved and some not. It passes once
/// the migration of those keys is over.
pub(crate) fn is_tryagain(e: &fred::error::Error) -> bool {
    e.details().starts_with("TRYAGAIN")
}
