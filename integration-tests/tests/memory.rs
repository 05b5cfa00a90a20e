//! The conformance suite on the in-memory transport, twice: as it is (it redelivers
//! unacknowledged work), and with redelivery off, so the client's lease-based redispatch
//! is what recovers tasks of dead workers, as on MQTT.

use integration_tests::harness::MemoryHarness;

mod redelivering {
    use super::*;

    integration_tests::conformance! {
        harness: MemoryHarness::new(true);
        ignore: {
            worker_process_killed_mid_task: "the in-memory broker lives inside one process",
            killed_worker_tasks_run_once_more: "the in-memory broker lives inside one process",
            completion_lost_while_disconnected_is_recovered: "the in-memory transport has no network connection to break",
            broker_restart_workers_resume: "the in-memory broker has no server to restart",
            gap_counter_moves_after_a_broker_restart: "the in-memory broker has no server to restart",
        }
    }
}

mod without_redelivery {
    use super::*;

    integration_tests::conformance! {
        harness: MemoryHarness::new(false);
        ignore: {
            dropped_delivery_comes_back: "redelivery is off: a dropped delivery is gone, and the client's lease redispatch recovers the task",
            worker_process_killed_mid_task: "the in-memory broker lives inside one process",
            killed_worker_tasks_run_once_more: "the in-memory broker lives inside one process",
            completion_lost_while_disconnected_is_recovered: "the in-memory transport has no network connection to break",
            broker_restart_workers_resume: "the in-memory broker has no server to restart",
            gap_counter_moves_after_a_broker_restart: "the in-memory broker has no server to restart",
        }
    }
}
