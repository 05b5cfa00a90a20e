//! The conformance suite on RabbitMQ (`AETHER_TEST_AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`), then the cases only AMQP has: long tasks past
//! the consumer timeout, dead letters with their reasons, and recovery from deleted queues
//! and closed connections. The restart and long-task cases start private RabbitMQ nodes
//! (see `brokers::amqp`).

use aether_integration_tests::brokers::amqp::AmqpHarness;

aether_integration_tests::conformance! {
    harness: AmqpHarness::from_env();
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
    worker_process_killed_mid_task,
    broker_restart_workers_resume,
}
