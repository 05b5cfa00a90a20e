//! The conformance suite: every case written once in [`suite`], expanded per transport by
//! [`conformance!`] into one `#[tokio::test]` per case.
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

pub mod backlog;
pub mod brokers;
pub mod harness;
pub mod proxy;
pub mod raw_amqp;
pub mod suite;

/// Expands every conformance case for one harness expression (evaluated once per test),
/// ignoring the listed cases with their reasons.
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
        macro_rules! __aether_case {
            $(
                ($ignored) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    #[ignore = $why]
                    async fn $ignored() {
                        $crate::conformance!(@run $harness, $ignored);
                    }
                };
            )*
            ($d case:ident) => {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $d case() {
                    $crate::conformance!(@run $harness, $d case);
                }
            };
        }
        macro_rules! __aether_ignored {
            $( ($ignored) => { true }; )*
            ($d case:ident) => { false };
        }
        $crate::conformance!(@cases __aether_case);

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn listing_matches_capabilities() {
            let h = $harness;
            let mut listed: Vec<(&str, bool)> = Vec::new();
            macro_rules! __aether_list {
                ($d case:ident) => {
                    listed.push((stringify!($d case), __aether_ignored!($d case)));
                };
            }
            $crate::conformance!(@cases __aether_list);
            let ignored: &[&str] = &[$(stringify!($ignored)),*];
            $crate::suite::check_listing(&h, &listed, ignored).await;
        }
    };
    (@run $harness:expr, $case:ident) => {
        let _ = $crate::suite::WORKER_BIN.set(env!("CARGO_BIN_EXE_aether-test-worker"));
        let h = $harness;
        let union = $crate::harness::union();
        $crate::suite::$case(&h, &union).await;
        $crate::harness::Harness::cleanup(&h, &union).await;
    };
    // The case list, written once. `suite::CASES` holds the same names with what each
    // needs; `check_listing` holds the two to each other.
    (@cases $m:ident) => {
        $m!(broadcast_reaches_matching_subscribers_only);
        $m!(wildcard_filters);
        $m!(one_of_n_exactly_once);
        $m!(every_workgroup_gets_every_task);
        $m!(progress_arrives_in_order);
        $m!(typed_result_round_trip_in_both_codecs);
        $m!(handler_error_fails_the_task);
        $m!(handler_panic_fails_the_task_and_worker_survives);
        $m!(cancel_reaches_the_running_handler);
        $m!(deadline_expiry);
        $m!(dropped_worker_task_completed_by_another);
        $m!(repeated_perform_is_handled_once);
        $m!(malformed_input_is_dead_lettered_and_worker_keeps_serving);
        $m!(invalid_reply_is_not_an_outcome);
        $m!(oversized_payload_is_a_typed_error);
        $m!(graceful_shutdown_finishes_in_flight_tasks);
        $m!(invalid_segments_are_refused);
        $m!(workers_announce_online_and_idle);
        $m!(callback_style_round_trip);
        $m!(task_enqueued_before_any_worker_is_handled);
        $m!(worker_process_killed_mid_task);
        $m!(killed_worker_tasks_run_once_more);
        $m!(completion_lost_while_disconnected_is_recovered);
        $m!(broker_restart_workers_resume);
    };
}
