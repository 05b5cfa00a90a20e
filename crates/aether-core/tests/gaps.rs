//! How a client answers the gaps a transport reports in its subscriptions: a task not heard
//! of since a dispatch made before the gap is dispatched again, once; a dispatch under way
//! when the gap is reported is not repeated; and redispatches after gaps do not count as
//! lost workers toward `max_attempts`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aether_core::{Aether, Backoff, Error, MemoryConfig, MemoryTransport, TaskContext};
use common::Faulty;
use tokio::sync::watch;

fn broker(redeliver: bool) -> MemoryTransport {
    let mut c = MemoryConfig::default();
    c.redeliver = redeliver;
    MemoryTransport::new(c)
}

/// No worker: three gaps redispatch the task three times, and it is still given up only
/// after `max_attempts` leases expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_do_not_use_up_attempts() {
    let b = broker(false);
    let gaps = Arc::new(watch::Sender::new(0u64));
    let lease = Duration::from_millis(500);
    let cn = Aether::builder()
        .lease(lease)
        .max_attempts(3)
        .backoff(Backoff::new(
            Duration::from_millis(10),
            Duration::from_millis(10),
        ))
        .transport(Faulty::new(b.reconnect(), false, Some(&gaps)))
        .build()
        .unwrap();
    let started = Instant::now();
    let task = cn.client().perform("j", "t", "x", &1u32).await.unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        gaps.send_modify(|n| *n += 1);
    }
    let r = tokio::time::timeout(Duration::from_secs(10), task.result::<u32>())
        .await
        .expect("given up within the timeout");
    assert!(matches!(r, Err(Error::WorkerLost { .. })), "{r:?}");
    // Three dispatches that count: the first and two after expired leases.
    assert!(
        started.elapsed() >= 2 * lease,
        "given up after {:?}",
        started.elapsed()
    );
    assert_eq!(cn.stats().redispatched, 3 + 2);
}

/// A gap reported while the perform is still being sent lost nothing of it: no second
/// dispatch, and with two workers the handler runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gap_during_a_dispatch_does_not_repeat_it() {
    let b = broker(true);
    let gaps = Arc::new(watch::Sender::new(0u64));
    let runs = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..2 {
        let wn = Aether::builder().transport(b.reconnect()).build().unwrap();
        let r = runs.clone();
        let w = wn
            .worker()
            .announce(false)
            .concurrency(1)
            .handle("j", "t", "x", move |_ctx: TaskContext, v: u32| {
                r.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok::<_, Error>(v)
                }
            })
            .start()
            .await
            .unwrap();
        workers.push((wn, w));
    }
    let faulty = Faulty::new(b.reconnect(), true, Some(&gaps));
    faulty.gap_in_enqueue.store(true, Ordering::SeqCst);
    let cn = Aether::builder().transport(faulty).build().unwrap();
    let task = cn.client().perform("j", "t", "x", &1u32).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), task.result::<u32>())
        .await
        .expect("completed within the timeout");
    assert_eq!(r.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cn.stats().redispatched, 0);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A gap while the supervisor waits out the backoff before a lease redispatch: that
/// redispatch answers the gap too; there is no second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gap_during_backoff_is_answered_by_the_redispatch() {
    let b = broker(false);
    let gaps = Arc::new(watch::Sender::new(0u64));
    let lease = Duration::from_millis(600);
    let cn = Aether::builder()
        .lease(lease)
        .max_attempts(10)
        .backoff(Backoff::new(Duration::from_secs(1), Duration::from_secs(1)))
        .transport(Faulty::new(b.reconnect(), false, Some(&gaps)))
        .build()
        .unwrap();
    let _task = cn.client().perform("j", "t", "x", &1u32).await.unwrap();
    // The lease expires at 600 ms; the redispatch follows the backoff, at 1.6 s.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(cn.stats().redispatched, 0);
    gaps.send_modify(|n| *n += 1);
    // Past the redispatch, before the next lease expiry (2.2 s).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(cn.stats().redispatched, 1);
}

/// Two workers that heartbeat every 100 ms, a client whose own lease is long, and a
/// transport that redelivers and reports gaps.
async fn accepted_setup(
    runs: &Arc<AtomicUsize>,
    handler_ms: u64,
    gaps: &Arc<watch::Sender<u64>>,
    drop_completions: usize,
) -> (Aether, Vec<(Aether, aether_core::Worker)>) {
    let b = broker(true);
    let dropped = Arc::new(AtomicUsize::new(drop_completions));
    let mut workers = Vec::new();
    for _ in 0..2 {
        let mut faulty = Faulty::new(b.reconnect(), true, Some(gaps));
        faulty.drop_completions = dropped.clone();
        let wn = Aether::builder()
            .lease(Duration::from_millis(300))
            .transport(faulty)
            .build()
            .unwrap();
        let r = runs.clone();
        let w = wn
            .worker()
            .announce(false)
            .concurrency(1)
            .handle("j", "t", "x", move |_ctx: TaskContext, v: u32| {
                r.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::time::sleep(Duration::from_millis(handler_ms)).await;
                    Ok::<_, Error>(v)
                }
            })
            .start()
            .await
            .unwrap();
        workers.push((wn, w));
    }
    let cn = Aether::builder()
        .lease(Duration::from_secs(20))
        .defer_accept(Duration::ZERO)
        .transport(Faulty::new(b.reconnect(), true, Some(gaps)))
        .build()
        .unwrap();
    (cn, workers)
}

/// The completion of an accepted task falls into a gap (a broker restart, say): once its
/// worker has been silent for half its lease, the client dispatches it again and the
/// worker answers from memory, instead of the client waiting out its whole lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_task_whose_completion_fell_into_a_gap_is_recovered_quickly() {
    let gaps = Arc::new(watch::Sender::new(0u64));
    let runs = Arc::new(AtomicUsize::new(0));
    let (cn, _workers) = accepted_setup(&runs, 200, &gaps, 1).await;
    let task = cn.client().perform("j", "t", "x", &7u32).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(3), task.result::<u32>())
        .await
        .expect("recovered well within the client's 20 s lease");
    assert_eq!(r.unwrap(), 7);
    assert_eq!(cn.stats().redispatched, 1, "{:?}", cn.stats());
    // The repeat went to either worker: the one that completed it answers from memory;
    // the other runs it again (at least once, as README says of gaps).
    assert!(runs.load(Ordering::SeqCst) <= 2);
}

/// A gap while an accepted task runs and heartbeats: nothing was lost, so nothing is sent
/// again and the handler runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gap_while_an_accepted_task_heartbeats_sends_nothing_again() {
    let gaps = Arc::new(watch::Sender::new(0u64));
    let runs = Arc::new(AtomicUsize::new(0));
    let (cn, _workers) = accepted_setup(&runs, 1200, &gaps, 0).await;
    let task = cn.client().perform("j", "t", "x", &3u32).await.unwrap();
    while runs.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    gaps.send_modify(|n| *n += 1);
    let r = tokio::time::timeout(Duration::from_secs(5), task.result::<u32>())
        .await
        .expect("completed");
    assert_eq!(r.unwrap(), 3);
    assert_eq!(cn.stats().redispatched, 0, "{:?}", cn.stats());
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
