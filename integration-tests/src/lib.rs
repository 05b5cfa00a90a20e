//! The conformance suite: every case written once, expanded per transport by
//! [`conformance!`] into one `#[tokio::test]` per case. Two levels: [`contract`] holds a
//! transport to the `Transport` trait itself (one connection's publish, subscribe,
//! enqueue, consume, acknowledgements, close); [`suite`] holds clients and workers on it to
//! the task semantics (exactly-once outcomes, progress, cancel, recovery).
//!
//! A transport's test file names its harness and the cases it cannot support, each with
//! the reason, which becomes a visible `#[ignore = "why"]`. Every other case runs; a new
//! case in the suite runs on every transport without touching their files. The generated
//! `listing_matches_capabilities` test fails if an ignore disagrees with what the transport
//! reports through its capabilities at run time.
//!
//! ```ignore
//! integration_tests::conformance! {
//!     harness: MqttHarness::v5();
//!     ignore: {
//!         task_enqueued_before_any_worker_is_handled: "MQTT keeps nothing for absent subscribers",
//!     }
//! }
//! ```

pub mod brokers;
pub mod cluster_faults;
pub mod contract;
pub mod harness;
pub mod proxy;
pub mod raw_amqp;
pub mod redis_input;
pub mod soak;
pub mod suite;
pub mod tls;
pub mod zmq_recovery;

/// Expands every conformance case for one harness expression (evaluated once per test),
/// ignoring the listed cases with their reasons: the task-level cases of [`suite`] at the
/// call site, the transport contract cases of [`contract`] in a `contract` module there.
#[macro_export]
macro_rules! conformance {
    (harness: $harness:expr $(;)?) => {
        $crate::conformance! { harness: $harness; ignore: {} }
    };
    (harness: $harness:expr; ignore: { $($ignored:ident : $why:literal),* $(,)? } $(;)?) => {
        // `$` for the helper macros defined below.
        $crate::conformance! { @expand ($) $harness; $($ignored : $why),* }
    };
    (@expand ($d:tt) $harness:expr; $($ignored:ident : $why:literal),*) => {
        // One arm per ignored case, then the rest: macro_rules matches idents literally.
        // `$m` is the module holding the case (`suite` or `contract`).
        macro_rules! __aether_case {
            $(
                ($d m:ident, $ignored) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    #[ignore = $why]
                    async fn $ignored() {
                        $crate::conformance!(@run $harness, $d m, $ignored);
                    }
                };
            )*
            ($d m:ident, $d case:ident) => {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $d case() {
                    $crate::conformance!(@run $harness, $d m, $d case);
                }
            };
        }
        macro_rules! __aether_ignored {
            $( ($d m:ident, $ignored) => { true }; )*
            ($d m:ident, $d case:ident) => { false };
        }
        $crate::conformance!(@cases __aether_case);

        /// The transport contract cases.
        mod contract {
            #[allow(unused_imports)]
            use super::*;
            $crate::conformance!(@contract __aether_case);
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn listing_matches_capabilities() {
            let h = $harness;
            let mut listed: Vec<(&str, bool)> = Vec::new();
            macro_rules! __aether_list {
                ($d m:ident, $d case:ident) => {
                    listed.push((stringify!($d case), __aether_ignored!($d m, $d case)));
                };
            }
            $crate::conformance!(@cases __aether_list);
            $crate::conformance!(@contract __aether_list);
            let ignored: &[&str] = &[$(stringify!($ignored)),*];
            $crate::suite::check_listing(&h, &listed, ignored).await;
        }
    };
    (@run $harness:expr, $m:ident, $case:ident) => {
        let _ = $crate::suite::WORKER_BIN.set(env!("CARGO_BIN_EXE_aether-test-worker"));
        let h = $harness;
        let union = $crate::harness::union();
        $crate::$m::$case(&h, &union).await;
        $crate::harness::Harness::cleanup(&h, &union).await;
    };
    // The case lists, written once. `suite::CASES` and `contract::CASES` hold the same
    // names with what each needs; `check_listing` holds the lists to each other.
    (@cases $m:ident) => {
        $m!(suite, broadcast_reaches_matching_subscribers_only);
        $m!(suite, wildcard_filters);
        $m!(suite, one_of_n_exactly_once);
        $m!(suite, every_workgroup_gets_every_task);
        $m!(suite, progress_arrives_in_order);
        $m!(suite, heartbeats_are_not_duplicates);
        $m!(suite, typed_result_round_trip_in_both_codecs);
        $m!(suite, handler_error_fails_the_task);
        $m!(suite, handler_panic_fails_the_task_and_worker_survives);
        $m!(suite, cancel_reaches_the_running_handler);
        $m!(suite, deadline_expiry);
        $m!(suite, dropped_worker_task_completed_by_another);
        $m!(suite, repeated_perform_is_handled_once);
        $m!(suite, malformed_input_is_dead_lettered_and_worker_keeps_serving);
        $m!(suite, invalid_reply_is_not_an_outcome);
        $m!(suite, oversized_payload_is_a_typed_error);
        $m!(suite, graceful_shutdown_finishes_in_flight_tasks);
        $m!(suite, invalid_segments_are_refused);
        $m!(suite, workers_announce_online_and_idle);
        $m!(suite, callback_style_round_trip);
        $m!(suite, backlog_past_the_limit_completes_or_is_refused);
        $m!(suite, task_enqueued_before_any_worker_is_handled);
        $m!(suite, worker_process_killed_mid_task);
        $m!(suite, killed_worker_tasks_run_once_more);
        $m!(suite, completion_lost_while_disconnected_is_recovered);
        $m!(suite, broker_restart_workers_resume);
    };
    (@contract $m:ident) => {
        $m!(contract, subscription_is_active_when_subscribe_returns);
        $m!(contract, close_ends_subscriptions_and_consumers);
        $m!(contract, single_level_wildcard_required_multi_level_or_unsupported);
        $m!(contract, broadcasts_from_one_publisher_arrive_in_order);
        $m!(contract, gap_counter_exactly_where_gap_signals);
        $m!(contract, gap_counter_moves_after_a_broker_restart);
        $m!(contract, every_workgroup_receives_each_perform);
        $m!(contract, nack_with_requeue_comes_back);
        $m!(contract, prefetch_bounds_outstanding_deliveries);
        $m!(contract, dropped_delivery_comes_back);
        $m!(contract, closed_connection_gives_work_back_exactly_where_it_redelivers);
        $m!(contract, dropped_consumer_gives_back_its_buffer);
        $m!(contract, enqueued_work_waits_for_a_consumer_exactly_where_durable);
        $m!(contract, dead_letters_stored_exactly_where_capable);
        $m!(contract, payload_limit_enforced_on_send);
    };
}
