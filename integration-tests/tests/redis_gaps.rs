//! A client whose subscriber connection breaks while a quick task completes: the completion
//! is published while nobody listens and is lost. The adapter reports the gap once it is
//! subscribed again, and the client dispatches the task again at once; the worker answers
//! from its memory of completed tasks. Workers hold back acceptance for such clients
//! (`Config::defer_accept`), so the completion was the only reply and this is the only
//! recovery: without it the task would wait for its deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aether::{Aether, Error, TaskContext};
use aether_integration_tests::brokers::redis::RedisHarness;
use aether_integration_tests::harness::{Harness, eventually, union};
use aether_integration_tests::proxy::Proxy;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_completion_lost_in_a_gap_is_recovered() {
    completion_lost_in_a_gap_is_recovered("streams").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_completion_lost_in_a_gap_is_recovered() {
    completion_lost_in_a_gap_is_recovered("list").await;
}

/// `redis://[user@]host:port[/db][?query]` → `host:port`.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let auth = &rest[..end];
    auth.rsplit_once('@').map_or(auth, |(_, a)| a)
}

async fn completion_lost_in_a_gap_is_recovered(mode: &'static str) {
    let h = RedisHarness::from_env(mode);
    let url = h.url().unwrap();
    let target = authority(&url).to_owned();
    let proxy = Proxy::start(&target).await;
    let proxied = url.replacen(&target, &format!("127.0.0.1:{}", proxy.port()), 1);
    let u = union();

    let worker_node = Aether::builder()
        .union(&u)
        .transport(h.connect().await)
        .build()
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let (release, released) = watch::channel(false);
    let r = runs.clone();
    let _worker = worker_node
        .worker()
        .announce(false)
        .handle("gap", "echo", "x", move |_ctx: TaskContext, v: u32| {
            r.fetch_add(1, Ordering::SeqCst);
            let mut released = released.clone();
            async move {
                let _ = released.wait_for(|r| *r).await;
                Ok::<_, Error>(v * 10)
            }
        })
        .start()
        .await
        .unwrap();

    let client_node = Aether::builder()
        .union(&u)
        // Long enough that the worker has not accepted when the task completes.
        .defer_accept(Duration::from_secs(5))
        .transport(aether::connect(&proxied).await.unwrap())
        .build()
        .unwrap();
    let task = client_node
        .client()
        .perform("gap", "echo", "x", &4u32)
        .await
        .unwrap();
    eventually(WAIT, "the handler to start", || {
        runs.load(Ordering::SeqCst) == 1
    })
    .await;

    // The client's connections break; the task completes while nobody listens.
    proxy.cut();
    release.send(true).unwrap();
    eventually(WAIT, "the worker to complete the task", || {
        worker_node.stats().handled == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.restore();

    let r: u32 = tokio::time::timeout(WAIT, task.result())
        .await
        .expect("the task recovered after the gap, well before any lease or deadline")
        .unwrap();
    assert_eq!(r, 40);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran once");
    assert_eq!(client_node.stats().redispatched, 1);
    assert_eq!(worker_node.stats().duplicate_performs, 1);
    h.cleanup(&u).await;
}
