//! What can go wrong talking to Redis. Surfaces as [`aether_core::Error::Transport`] with
//! backend `"redis"` and a [`RedisError`] as its source.

use std::future::Future;
use std::time::Duration;

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

/// How long a command keeps being tried again while a Redis Cluster moves its slot
/// ([`is_rerouted`]), and the first and longest pause between tries.
const REROUTE_LIMIT: Duration = Duration::from_secs(10);
const REROUTE_FIRST: Duration = Duration::from_millis(5);
const REROUTE_MAX: Duration = Duration::from_millis(200);

/// Whether `e` says a Redis Cluster did not run the command because its slot is moving or
/// the cluster's view of it is settling: `TRYAGAIN` (a multi-key command, here a queue's
/// script, met its slot half-migrated), `CLUSTERDOWN`, a MOVED or ASK the client could not
/// follow to the end (its redirections or attempts ran out while the nodes disagreed on
/// the slot's owner; fred makes every redirection a `Routing` or `Cluster` error). Each passes once the migration, or the gossip about it, is over.
pub(crate) fn is_rerouted(e: &fred::error::Error) -> bool {
    let details = e.details();
    matches!(
        e.kind(),
        fred::error::ErrorKind::Routing | fred::error::ErrorKind::Cluster
    ) || ["TRYAGAIN", "CLUSTERDOWN", "MOVED ", "ASK "]
        .iter()
        .any(|p| details.starts_with(p))
}

/// Runs `op` until it succeeds or fails with something other than [`is_rerouted`], pausing
/// between tries (5 ms, doubling up to 200 ms) for up to 10 s: a slot migration or
/// failover is no error to callers. Only refused commands are sent again, and a refused
/// command did not run.
pub(crate) async fn rerouted<T, F, Fut>(mut op: F) -> Result<T, fred::error::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, fred::error::Error>>,
{
    let give_up = tokio::time::Instant::now() + REROUTE_LIMIT;
    let mut pause = REROUTE_FIRST;
    loop {
        match op().await {
            Err(e) if is_rerouted(&e) && tokio::time::Instant::now() + pause < give_up => {
                tracing::debug!(error = %e, "redis: slot moving in the cluster; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(REROUTE_MAX);
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::error::{Error as FredError, ErrorKind};

    #[test]
    fn cluster_refusals_are_tried_again_and_nothing_else() {
        for (kind, details, again) in [
            (
                ErrorKind::Unknown,
                "TRYAGAIN Multiple keys request during rehashing of slot",
                true,
            ),
            (ErrorKind::Cluster, "CLUSTERDOWN The cluster is down", true),
            (ErrorKind::Cluster, "MOVED 3999 127.0.0.1:6381", true),
            (ErrorKind::Routing, "Too many redirections.", true),
            (ErrorKind::Routing, "Max attempts reached.", true),
            (ErrorKind::Unknown, "Too many failed write attempts.", false),
            (ErrorKind::Unknown, "NOGROUP No such key", false),
            (ErrorKind::Timeout, "Request timed out.", false),
            (ErrorKind::Canceled, "Canceled.", false),
            (ErrorKind::Parse, "Could not convert to number.", false),
        ] {
            let e = FredError::new(kind.clone(), details);
            assert_eq!(is_rerouted(&e), again, "{kind:?} {details}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_tried_again_until_it_passes_or_ten_seconds_pass() {
        let mut tries = 0;
        let got = rerouted(|| {
            tries += 1;
            let n = tries;
            async move {
                if n < 4 {
                    Err(FredError::new(ErrorKind::Routing, "Too many redirections."))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(got.unwrap(), 4);
        let start = tokio::time::Instant::now();
        let got: Result<(), _> =
            rerouted(|| async { Err(FredError::new(ErrorKind::Cluster, "CLUSTERDOWN down")) })
                .await;
        assert!(got.is_err());
        let waited = start.elapsed();
        assert!(
            waited <= REROUTE_LIMIT && waited > REROUTE_LIMIT - REROUTE_MAX * 2,
            "{waited:?}"
        );
        let got: Result<(), _> =
            rerouted(|| async { Err(FredError::new(ErrorKind::Timeout, "timed out")) }).await;
        assert!(got.is_err());
    }
}
