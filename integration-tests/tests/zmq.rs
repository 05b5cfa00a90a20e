//! The conformance suite on ZeroMQ, twice: against a device this test process starts
//! (`aether_zmq::Device` on its own thread; the restart cases on a private one), and in
//! the brokerless form, where a `bind=true` transport of the process hosts the device.

use integration_tests::brokers::zmq::{BrokerlessHarness, DeviceHarness};

mod device {
    use super::*;

    integration_tests::conformance! {
        harness: DeviceHarness::new();
    }
}

mod brokerless {
    use super::*;

    integration_tests::conformance! {
        harness: BrokerlessHarness::new();
        ignore: {
            broker_restart_workers_resume: "the brokerless device lives in the host process; the device harness restarts one",
            gap_counter_moves_after_a_broker_restart: "the brokerless device lives in the host process; the device harness restarts one",
        }
    }
}

mod recovery {
    use integration_tests::zmq_recovery as cases;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn killed_worker_task_completes_within_the_heartbeat_timeout() {
        cases::killed_worker_task_completes_within_the_heartbeat_timeout(env!(
            "CARGO_BIN_EXE_aether-test-worker"
        ))
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn device_restart_mid_task_recovers_by_the_gap_report() {
        cases::device_restart_mid_task_recovers_by_the_gap_report().await;
    }
}
