//! The transport contract: cases that hold one [`Transport`](aether::Transport) to what its
//! trait documents, below the task-level [`suite`](crate::suite). They use the trait
//! directly (publish, subscribe, enqueue, consume, acknowledge, close), no client or
//! worker, so a new adapter can be made green one promise at a time.
//!
//! [`conformance!`](crate::conformance) expands them next to the task-level cases, in a
//! `contract` module of each transport's test file; [`CASES`] says what each needs, and
//! the listing check holds a transport's ignores to its capabilities here too. A case
//! whose outcome depends on a capability checks both sides: what the transport must do
//! where the capability is set, and what it must not (or must refuse) where it is not.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aether::{
    Action, Bytes, Capabilities, ConsumeOptions, Consumer, Delivery, SharedTransport, Subscription,
    Topic, TopicFilter, WorkQueue,
};

use crate::harness::Harness;
use crate::suite::{Case, Setup, WAIT};

mod limits;
mod queue;
mod subscribe;

pub use limits::*;
pub use queue::*;
pub use subscribe::*;

/// How long a case waits to be satisfied that something does *not* arrive. Only where
/// absence is the promise (nothing beyond the prefetch, nothing for a transport that keeps
/// nothing); everywhere else cases await the event itself.
pub(crate) const QUIET: Duration = Duration::from_millis(1500);

/// A lease short enough that a transport reclaiming the idle deliveries of a crashed
/// consumer does so within a case.
pub(crate) const LEASE: Duration = Duration::from_secs(1);

fn always(_: &Capabilities, _: &Setup) -> Result<(), &'static str> {
    Ok(())
}

/// Every contract case, with what it needs of a transport.
pub const CASES: &[Case] = &[
    Case {
        name: "subscription_is_active_when_subscribe_returns",
        requires: always,
    },
    Case {
        name: "close_ends_subscriptions_and_consumers",
        requires: always,
    },
    Case {
        name: "single_level_wildcard_required_multi_level_or_unsupported",
        requires: always,
    },
    Case {
        name: "broadcasts_from_one_publisher_arrive_in_order",
        requires: always,
    },
    Case {
        name: "gap_counter_exactly_where_gap_signals",
        requires: always,
    },
    Case {
        name: "gap_counter_moves_after_a_broker_restart",
        requires: |c, setup| {
            if !c.gap_signals {
                Err("no gap signals")
            } else if !setup.private_broker {
                Err("no broker to restart")
            } else {
                Ok(())
            }
        },
    },
    Case {
        name: "every_workgroup_receives_each_perform",
        requires: always,
    },
    Case {
        name: "nack_with_requeue_comes_back",
        requires: always,
    },
    Case {
        name: "prefetch_bounds_outstanding_deliveries",
        requires: always,
    },
    Case {
        name: "dropped_delivery_comes_back",
        requires: |c, _| {
            c.redelivers_on_crash
                .then_some(())
                .ok_or("does not redeliver unacknowledged work")
        },
    },
    Case {
        name: "closed_connection_gives_work_back_exactly_where_it_redelivers",
        requires: always,
    },
    Case {
        name: "dropped_consumer_gives_back_its_buffer",
        requires: always,
    },
    Case {
        name: "enqueued_work_waits_for_a_consumer_exactly_where_durable",
        requires: always,
    },
    Case {
        name: "dead_letters_stored_exactly_where_capable",
        requires: always,
    },
    Case {
        name: "payload_limit_enforced_on_send",
        requires: always,
    },
];

pub(crate) fn t(union: &str, rest: &str) -> Topic {
    format!("{union}/{rest}").parse().expect("topic")
}

pub(crate) fn f(union: &str, rest: &str) -> TopicFilter {
    format!("{union}/{rest}").parse().expect("filter")
}

/// The work queue `{union}/c/work/x` of `workgroup`.
pub(crate) fn queue(union: &str, workgroup: &str) -> WorkQueue {
    WorkQueue::new(union, "c", "work", "x", workgroup).expect("queue")
}

/// The perform of task `tid` on `q`.
pub(crate) fn perform(q: &WorkQueue, tid: &str) -> Topic {
    q.topic(tid, Action::Perform).expect("perform topic")
}

/// Consumes `q` on `t` with `prefetch` and the default lease (longer than any case, so
/// a delivery held without keep-alives is not reclaimed).
pub(crate) async fn consume(t: &SharedTransport, q: &WorkQueue, prefetch: usize) -> Consumer {
    consume_with(t, q, ConsumeOptions::new().prefetch(prefetch)).await
}

/// Consumes `q` on `t` with `options`.
pub(crate) async fn consume_with(
    t: &SharedTransport,
    q: &WorkQueue,
    options: ConsumeOptions,
) -> Consumer {
    t.consume(q, options)
        .await
        .unwrap_or_else(|e| panic!("consume {q}: {e}"))
}

/// The next delivery, failing the case after [`WAIT`].
pub(crate) async fn next_delivery(c: &mut Consumer, what: &str) -> Delivery {
    match tokio::time::timeout(WAIT, c.next()).await {
        Err(_) => panic!("timed out waiting for {what}"),
        Ok(None) => panic!("the consumer ended while waiting for {what}"),
        Ok(Some(Err(invalid))) => panic!("refused message while waiting for {what}: {invalid:?}"),
        Ok(Some(Ok(d))) => d,
    }
}

/// Asserts that `c` hands out nothing for [`QUIET`].
pub(crate) async fn nothing_more(c: &mut Consumer, why: &str) {
    if let Ok(Some(got)) = tokio::time::timeout(QUIET, c.next()).await {
        let what = match &got {
            Ok(d) => d.topic.to_string(),
            Err(invalid) => invalid.raw_topic.clone(),
        };
        panic!("{why}, yet {what} was handed out");
    }
}

/// The next message, failing the case after [`WAIT`].
pub(crate) async fn next_message(sub: &mut Subscription, what: &str) -> (Topic, Bytes) {
    match tokio::time::timeout(WAIT, sub.next()).await {
        Err(_) => panic!("timed out waiting for {what}"),
        Ok(None) => panic!("the subscription ended while waiting for {what}"),
        Ok(Some(Err(invalid))) => panic!("invalid message while waiting for {what}: {invalid:?}"),
        Ok(Some(Ok(m))) => (m.topic, m.payload),
    }
}

/// Enqueues `tids` on `q`, each with its tid as payload.
pub(crate) async fn enqueue_all(t: &SharedTransport, q: &WorkQueue, tids: &[String]) {
    for tid in tids {
        t.enqueue(&perform(q, tid), Bytes::from(tid.clone()))
            .await
            .unwrap_or_else(|e| panic!("enqueue {tid}: {e}"));
    }
}

/// `n` tids `{prefix}0`, `{prefix}1`, ...
pub(crate) fn tids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Counts of the tids in `got`.
pub(crate) fn counts<'a>(got: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for tid in got {
        *m.entry(tid.to_owned()).or_insert(0) += 1;
    }
    m
}

/// The set of `tids`.
pub(crate) fn set(tids: &[String]) -> BTreeSet<String> {
    tids.iter().cloned().collect()
}
