//! Counters of what an [`Aether`](crate::Aether) node did, bad input included.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $(pub(crate) $name: AtomicU64,)*
        }

        impl Counters {
            pub(crate) fn snapshot(&self) -> Stats {
                Stats {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }

        /// A snapshot of a node's counters. Every message that was refused is counted
        /// under the reason it was refused for.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct Stats {
            $($(#[$doc])* pub $name: u64,)*
        }
    };
}

counters! {
    /// Client: performs sent (first dispatches).
    performed,
    /// Client: performs sent again after a lease expired.
    redispatched,
    /// Client: tasks that completed successfully.
    succeeded,
    /// Client: tasks that completed as failed.
    failed,
    /// Client: tasks cancelled.
    cancelled,
    /// Client: tasks past their deadline.
    deadline_exceeded,
    /// Client: tasks given up after every attempt.
    lost,
    /// Client: status or complete messages that repeated one already seen: delivered
    /// twice, or (from a worker that does not number its statuses, like a Python one)
    /// repeating or behind the progress already seen, or arriving after the outcome.
    /// Heartbeats are not counted here.
    duplicate_updates,
    /// Client: statuses from an aether worker that brought no news: heard for the first
    /// time (by their number, `seq`) but repeating, or behind, the progress already seen.
    /// Mostly heartbeats, which a worker sends every third of its lease while a handler
    /// runs.
    heartbeats,
    /// Client: progress updates dropped because the handle's buffer was full.
    progress_dropped,
    /// Client: interruptions its reply subscriptions reported (a reconnection, a lost
    /// broadcast), after which tasks not heard of are dispatched again; the node's share
    /// of `aether_transport_gaps_total`.
    gaps,
    /// Worker: performs received.
    received,
    /// Worker: handler runs that returned `Ok`.
    handled,
    /// Worker: handler runs that returned `Err`.
    handler_errors,
    /// Worker: handler runs that panicked.
    handler_panics,
    /// Worker: handler runs retried after an error.
    retries,
    /// Worker: performs dropped because the tid was already completed or is running.
    duplicate_performs,
    /// Worker: performs received after their deadline.
    expired,
    /// Worker: performs whose handler was cancelled.
    cancelled_in_worker,
    /// Payloads that are not a valid envelope.
    malformed,
    /// Envelopes whose action is unknown.
    unknown_action,
    /// Messages on a topic the grammar refuses.
    invalid_topic,
    /// Messages larger than the payload limit.
    oversized,
    /// Valid envelopes that arrived where their action does not belong.
    unexpected_action,
    /// Messages moved to a dead-letter place (transport or local).
    dead_lettered,
}
