//! The leader of a workgroup's quorum queue killed (SIGKILL) in the middle of a stream of
//! tasks (10,000 at 200 in flight) on a 3-node RabbitMQ cluster of this test's own: no
//! confirmed task lost, one outcome each, no error to callers, and clients and workers
//! carry on through the other nodes without being rebuilt.

use std::sync::Arc;

use integration_tests::brokers::amqp_cluster::{CLUSTER_QUERY, RabbitCluster};
use integration_tests::cluster_faults::{self, Flow, kill_queue_leader};

/// 10,000 tasks, 200 in flight: long enough that the stream outlasts finding the leader
/// (a `rabbitmqctl` call of about a second) and killing it.
const FLOW: Flow = Flow {
    tasks: 10_000,
    in_flight: 200,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_leader_killed_mid_stream() {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(|| RabbitCluster::start(3))
            .await
            .expect("a cluster"),
    );
    let url = cluster.url(CLUSTER_QUERY);
    let outcome =
        cluster_faults::stream_through_fault(cluster, &url, FLOW, kill_queue_leader).await;
    let again: u32 = outcome.runs.values().map(|n| n - 1).sum();
    println!(
        "{} tasks in {:?}, {} outcomes in when the leader was dead, {again} handler runs again, client {:?}",
        FLOW.tasks, outcome.elapsed, outcome.at_fault, outcome.client
    );
}
