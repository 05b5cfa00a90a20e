//! The conformance cases, written once and run against every transport by
//! [`conformance!`](crate::conformance): the list with what each needs, and the shared
//! helpers; the cases themselves live in one file per theme.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether::{
    Action, AetherTask, Bytes, Capabilities, Codec, Error, Header, Subscription, TaskContext,
    Topic, TopicFilter,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::harness::{Harness, capabilities, eventually, node};

mod backlog;
mod broadcast;
mod failures;
mod recovery;
mod work;

pub use backlog::*;
pub use broadcast::*;
pub use failures::*;
pub use recovery::*;
pub use work::*;

/// The path of the `aether-test-worker` binary, known only to integration test targets;
/// [`conformance!`](crate::conformance) sets it.
pub static WORKER_BIN: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// How long any one wait in a case may take before the case fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// A short lease for cases about dead workers.
pub(crate) const SHORT_LEASE: Duration = Duration::from_millis(1000);

pub(crate) async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

pub(crate) async fn next_msg(sub: &mut Subscription, what: &str) -> (Topic, Bytes) {
    let m = within(what, sub.next())
        .await
        .unwrap_or_else(|| panic!("subscription ended: {what}"))
        .unwrap_or_else(|e| panic!("invalid message: {e:?}"));
    (m.topic, m.payload)
}

pub(crate) fn t(union: &str, rest: &str) -> Topic {
    format!("{union}/{rest}").parse().expect("topic")
}

pub(crate) fn f(union: &str, rest: &str) -> TopicFilter {
    format!("{union}/{rest}").parse().expect("filter")
}

pub(crate) fn announce(b: aether::WorkerBuilder) -> aether::WorkerBuilder {
    b.announce(false)
}

/// A name and what the case needs of a transport. Every case is listed here.
#[derive(Debug)]
pub struct Case {
    /// The case's function name.
    pub name: &'static str,
    /// `Err(why)` when a transport with these capabilities, under a harness set up so,
    /// cannot pass it.
    pub requires: fn(&Capabilities, &Setup) -> Result<(), &'static str>,
}

/// What a harness offers besides the transport's capabilities.
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    /// A private broker the case may restart ([`Harness::private_broker`]).
    pub private_broker: bool,
    /// The broker is reached through the one address of its URL, so a proxy of that
    /// address can cut a connection off ([`Harness::one_address`]).
    pub one_address: bool,
}

fn always(_: &Capabilities, _: &Setup) -> Result<(), &'static str> {
    Ok(())
}

fn multi_level_wildcards(c: &Capabilities, _: &Setup) -> Result<(), &'static str> {
    c.multi_level_wildcards
        .then_some(())
        .ok_or("no multi-level (`#`) wildcards")
}

/// A broker other processes reach over the network.
fn networked(c: &Capabilities, _: &Setup) -> Result<(), &'static str> {
    c.shared_between_processes
        .then_some(())
        .ok_or("no broker shared between processes")
}

/// Every case, with its requirement. `check_listing` holds each transport's list to it.
pub const CASES: &[Case] = &[
    Case {
        name: "broadcast_reaches_matching_subscribers_only",
        requires: always,
    },
    Case {
        name: "wildcard_filters",
        requires: multi_level_wildcards,
    },
    Case {
        name: "one_of_n_exactly_once",
        requires: always,
    },
    Case {
        name: "every_workgroup_gets_every_task",
        requires: always,
    },
    Case {
        name: "progress_arrives_in_order",
        requires: always,
    },
    Case {
        name: "heartbeats_are_not_duplicates",
        requires: always,
    },
    Case {
        name: "typed_result_round_trip_in_both_codecs",
        requires: always,
    },
    Case {
        name: "handler_error_fails_the_task",
        requires: always,
    },
    Case {
        name: "handler_panic_fails_the_task_and_worker_survives",
        requires: always,
    },
    Case {
        name: "cancel_reaches_the_running_handler",
        requires: always,
    },
    Case {
        name: "deadline_expiry",
        requires: always,
    },
    Case {
        name: "dropped_worker_task_completed_by_another",
        requires: always,
    },
    Case {
        name: "repeated_perform_is_handled_once",
        requires: always,
    },
    Case {
        name: "malformed_input_is_dead_lettered_and_worker_keeps_serving",
        requires: always,
    },
    Case {
        name: "invalid_reply_is_not_an_outcome",
        requires: always,
    },
    Case {
        name: "oversized_payload_is_a_typed_error",
        requires: always,
    },
    Case {
        name: "graceful_shutdown_finishes_in_flight_tasks",
        requires: always,
    },
    Case {
        name: "invalid_segments_are_refused",
        requires: always,
    },
    Case {
        name: "workers_announce_online_and_idle",
        requires: always,
    },
    Case {
        name: "callback_style_round_trip",
        requires: always,
    },
    Case {
        name: "backlog_past_the_limit_completes_or_is_refused",
        requires: always,
    },
    Case {
        name: "task_enqueued_before_any_worker_is_handled",
        requires: |c, _| {
            if c.durable {
                Ok(())
            } else {
                Err("not durable")
            }
        },
    },
    Case {
        name: "worker_process_killed_mid_task",
        requires: networked,
    },
    Case {
        name: "killed_worker_tasks_run_once_more",
        requires: networked,
    },
    Case {
        name: "completion_lost_while_disconnected_is_recovered",
        requires: |c, setup| {
            networked(c, setup)?;
            setup
                .one_address
                .then_some(())
                .ok_or("a proxy of the URL's address cannot cut the connections off")
        },
    },
    Case {
        name: "broker_restart_workers_resume",
        requires: |_, setup| {
            if setup.private_broker {
                Ok(())
            } else {
                Err("no broker to restart")
            }
        },
    },
];

/// Checks a transport's expansion of the suite: the same cases as [`CASES`] then
/// [`contract::CASES`](crate::contract::CASES), every ignored name a real case, and each
/// ignore matching what the transport reports through its capabilities at run time (a
/// case it could pass must not be ignored; one it cannot must be).
pub async fn check_listing(h: &dyn Harness, listed: &[(&str, bool)], ignored: &[&str]) {
    let all: Vec<&Case> = CASES.iter().chain(crate::contract::CASES).collect();
    for name in ignored {
        assert!(
            all.iter().any(|c| c.name == *name),
            "{}: ignores {name}, which is not a case",
            h.name()
        );
    }
    let names: Vec<&str> = listed.iter().map(|(n, _)| *n).collect();
    let cases: Vec<&str> = all.iter().map(|c| c.name).collect();
    assert_eq!(
        names, cases,
        "conformance! and suite::CASES + contract::CASES list different cases"
    );
    let unique: std::collections::BTreeSet<&str> = cases.iter().copied().collect();
    assert_eq!(unique.len(), cases.len(), "a case name is used twice");
    let caps = capabilities(h).await;
    let setup = Setup {
        private_broker: h.private_broker().await.is_some(),
        one_address: h.one_address(),
    };
    for (case, (_, ignored)) in all.iter().zip(listed) {
        match ((case.requires)(&caps, &setup), ignored) {
            (Ok(()), true) => panic!(
                "{}: {} is ignored, but the transport's capabilities say it can pass",
                h.name(),
                case.name
            ),
            (Err(why), false) => panic!(
                "{}: {} is not ignored, but the transport cannot pass it: {why}",
                h.name(),
                case.name
            ),
            _ => {}
        }
    }
}
