//! A completion lost on the way to the client (its subscriber was reconnecting, say) is
//! recovered, and the worker answers the repeated perform from its memory of completed
//! tasks without running the handler again. Three paths: the client heard the acceptance
//! and redispatches when the worker falls silent for a lease; the client chases a task it
//! never saw accepted (transports that do not redeliver); the transport reports the gap in
//! which the completion was lost and the client redispatches at once.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aether_core::{Aether, MemoryConfig, MemoryTransport, TaskContext};
use common::Faulty;

/// Where the broker redelivers and broadcasts may be lost silently, the client waits for
/// the broker before acceptance: the worker accepts at once, and silence after the
/// acceptance triggers the redispatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_completion_after_acceptance_is_recovered() {
    lost_completion_is_recovered_without_running_the_handler_again(true, false).await;
}

/// Where the broker does not redeliver, the client chases any task it has not seen
/// accepted, so a quick task is answered by its completion alone; losing that is recovered
/// the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_completion_of_a_task_never_accepted_is_recovered() {
    lost_completion_is_recovered_without_running_the_handler_again(false, false).await;
}

/// Where the transport reports gaps in its subscriptions, a quick task is answered by its
/// completion alone too, and a gap makes the client dispatch again at once what it has not
/// heard of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_completion_reported_as_a_gap_is_recovered() {
    lost_completion_is_recovered_without_running_the_handler_again(true, true).await;
}

async fn lost_completion_is_recovered_without_running_the_handler_again(
    redelivers: bool,
    gaps: bool,
) {
    let broker = MemoryTransport::new(MemoryConfig::default());
    let lease = Duration::from_millis(300);
    let gaps = gaps.then(|| Arc::new(tokio::sync::watch::Sender::new(0u64)));
    let faulty = Faulty::new(broker.reconnect(), redelivers, gaps.as_ref());
    faulty.drop_completions.store(1, Ordering::SeqCst);
    let statuses = faulty.statuses.clone();
    let worker_node = Aether::builder()
        .lease(lease)
        .transport(faulty)
        .build()
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let _worker = worker_node
        .worker()
        .announce(false)
        .handle("j", "t", "x", move |_ctx: TaskContext, v: u32| {
            r.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, aether_core::Error>(v * 10) }
        })
        .start()
        .await
        .unwrap();
    let client_node = Aether::builder()
        .lease(lease)
        .transport(Faulty::new(broker.reconnect(), redelivers, gaps.as_ref()))
        .build()
        .unwrap();
    let task = client_node
        .client()
        .perform("j", "t", "x", &4u32)
        .await
        .unwrap();
    let r: u32 = tokio::time::timeout(Duration::from_secs(10), task.result())
        .await
        .expect("recovered within the timeout")
        .unwrap();
    assert_eq!(r, 40);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran once");
    assert_eq!(client_node.stats().redispatched, 1);
    assert_eq!(worker_node.stats().duplicate_performs, 1);
    // Acceptance is held back only where a lost completion of an unaccepted task is
    // recovered: the client chases unaccepted tasks, or hears of gaps.
    let statuses = statuses.load(Ordering::SeqCst);
    let deferred = !redelivers || gaps.is_some();
    assert_eq!(statuses == 0, deferred, "statuses sent: {statuses}");
}
