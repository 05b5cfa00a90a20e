//! Faults of a Redis Cluster in the middle of a stream of tasks (500 at 16 in flight), each
//! test on a cluster of its own (3 masters, 3 replicas): no task lost, one outcome each, no
//! error to callers, and clients carry on without being rebuilt.

use std::sync::Arc;

use aether::WorkQueue;
use integration_tests::brokers::redis_cluster::RedisCluster;
use integration_tests::cluster_faults::{self, Outcome, kill_master, migrate_slot};

async fn run(mode: &str, fault: fn(&RedisCluster, &WorkQueue)) -> Outcome {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(|| RedisCluster::start(3, 1))
            .await
            .expect("a cluster"),
    );
    let url = cluster.url(mode, "");
    let outcome =
        cluster_faults::stream_through_fault(cluster, &url, Default::default(), fault).await;
    let again: u32 = outcome.runs.values().map(|n| n - 1).sum();
    println!(
        "{mode}: {} tasks in {:?}, {again} handler runs again, client {:?}",
        cluster_faults::TASKS,
        outcome.elapsed,
        outcome.client
    );
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_killed_mid_stream_streams() {
    run("streams", kill_master).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_killed_mid_stream_list() {
    run("list", kill_master).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_migrated_mid_stream_streams() {
    run("streams", migrate_slot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_migrated_mid_stream_list() {
    run("list", migrate_slot).await;
}
