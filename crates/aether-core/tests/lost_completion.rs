//! A completion lost on the way to the client (its subscriber was reconnecting, say) is
//! recovered: the client hears nothing more from the worker that accepted the task,
//! redispatches after the lease, and the worker answers the repeat from its memory of
//! completed tasks without running the handler again.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aether_core::{
    Action, Aether, Bytes, Capabilities, ConsumeOptions, Consumer, DeadLetter, MemoryConfig,
    MemoryTransport, Result, Subscription, TaskContext, Topic, TopicFilter, Transport, WorkQueue,
};
use async_trait::async_trait;

/// The in-memory transport, dropping the first `drop` completions it is asked to publish,
/// and saying whether it redelivers as told.
#[derive(Debug)]
struct Lossy {
    inner: MemoryTransport,
    drop: AtomicUsize,
    redelivers: bool,
    statuses: Arc<AtomicUsize>,
}

#[async_trait]
impl Transport for Lossy {
    fn name(&self) -> &'static str {
        "lossy"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner
            .capabilities()
            .redelivers_on_crash(self.redelivers)
    }
    async fn publish(&self, topic: &Topic, payload: Bytes) -> Result<()> {
        if topic.action() == Action::Status {
            self.statuses.fetch_add(1, Ordering::SeqCst);
        }
        if topic.action() == Action::Complete
            && self
                .drop
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Ok(());
        }
        self.inner.publish(topic, payload).await
    }
    async fn subscribe(&self, filter: &TopicFilter) -> Result<Subscription> {
        self.inner.subscribe(filter).await
    }
    async fn enqueue(&self, topic: &Topic, payload: Bytes) -> Result<()> {
        self.inner.enqueue(topic, payload).await
    }
    async fn consume(&self, queue: &WorkQueue, options: ConsumeOptions) -> Result<Consumer> {
        self.inner.consume(queue, options).await
    }
    async fn dead_letter(&self, letter: DeadLetter) -> Result<()> {
        self.inner.dead_letter(letter).await
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

/// Where the broker redelivers, the client waits for it before acceptance: the worker
/// accepts at once, and silence after the acceptance triggers the redispatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_completion_after_acceptance_is_recovered() {
    lost_completion_is_recovered_without_running_the_handler_again(true).await;
}

/// Where it does not, the client chases any task it has not seen accepted, so a quick task
/// is answered by its completion alone; losing that is recovered the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_completion_of_a_task_never_accepted_is_recovered() {
    lost_completion_is_recovered_without_running_the_handler_again(false).await;
}

async fn lost_completion_is_recovered_without_running_the_handler_again(redelivers: bool) {
    let broker = MemoryTransport::new(MemoryConfig::default());
    let lease = Duration::from_millis(300);
    let statuses = Arc::new(AtomicUsize::new(0));
    let worker_node = Aether::builder()
        .lease(lease)
        .transport(Lossy {
            inner: broker.reconnect(),
            drop: AtomicUsize::new(1),
            redelivers,
            statuses: statuses.clone(),
        })
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
        .transport(Lossy {
            inner: broker.reconnect(),
            drop: AtomicUsize::new(0),
            redelivers,
            statuses: Arc::default(),
        })
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
    // Acceptance is held back only where the client chases unaccepted tasks.
    let statuses = statuses.load(Ordering::SeqCst);
    assert_eq!(statuses > 0, redelivers, "statuses sent: {statuses}");
}
