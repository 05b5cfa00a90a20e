//! The conformance suite on the in-memory transport, twice: as it is (it redelivers
//! unacknowledged work), and with redelivery off, so the client's lease-based redispatch
//! is what recovers tasks of dead workers, as on MQTT.

use aether_integration_tests::harness::MemoryHarness;

mod redelivering {
    use super::*;

    aether_integration_tests::conformance! {
        harness: MemoryHarness::new(true);
        broadcast_reaches_matching_subscribers_only,
        wildcard_filters,
        one_of_n_exactly_once,
        every_workgroup_gets_every_task,
        progress_arrives_in_order,
        typed_result_round_trip_in_both_codecs,
        handler_error_fails_the_task,
        handler_panic_fails_the_task_and_worker_survives,
        cancel_reaches_the_running_handler,
        deadline_expiry,
        dropped_worker_task_completed_by_another,
        repeated_perform_is_handled_once,
        malformed_input_is_dead_lettered_and_worker_keeps_serving,
        oversized_payload_is_a_typed_error,
        graceful_shutdown_finishes_in_flight_tasks,
        invalid_segments_are_refused,
        workers_announce_online_and_idle,
        callback_style_round_trip,
        task_enqueued_before_any_worker_is_handled,
        #[ignore = "the in-memory broker lives inside one process"]
        worker_process_killed_mid_task,
        #[ignore = "the in-memory broker has no server to restart"]
        broker_restart_workers_resume,
    }
}

mod without_redelivery {
    use super::*;

    aether_integration_tests::conformance! {
        harness: MemoryHarness::new(false);
        broadcast_reaches_matching_subscribers_only,
        wildcard_filters,
        one_of_n_exactly_once,
        every_workgroup_gets_every_task,
        progress_arrives_in_order,
        typed_result_round_trip_in_both_codecs,
        handler_error_fails_the_task,
        handler_panic_fails_the_task_and_worker_survives,
        cancel_reaches_the_running_handler,
        deadline_expiry,
        dropped_worker_task_completed_by_another,
        repeated_perform_is_handled_once,
        malformed_input_is_dead_lettered_and_worker_keeps_serving,
        oversized_payload_is_a_typed_error,
        graceful_shutdown_finishes_in_flight_tasks,
        invalid_segments_are_refused,
        workers_announce_online_and_idle,
        callback_style_round_trip,
        task_enqueued_before_any_worker_is_handled,
        #[ignore = "the in-memory broker lives inside one process"]
        worker_process_killed_mid_task,
        #[ignore = "the in-memory broker has no server to restart"]
        broker_restart_workers_resume,
    }
}
