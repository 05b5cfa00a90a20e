//! The worker's acceptance (progress 0) when the client lets it be held back: a quick task
//! is answered by its completion alone; a handler's own progress-0 report, with data, is
//! the acceptance; later progress is preceded by one.

use std::time::Duration;

use aether_core::{Aether, Error, MemoryConfig, MemoryTransport, TaskContext};
use serde_json::{Value, json};

async fn nodes() -> (Aether, Aether) {
    let broker = MemoryTransport::new(MemoryConfig::default());
    let w = Aether::builder()
        .transport(broker.reconnect())
        .build()
        .unwrap();
    let c = Aether::builder()
        .defer_accept(Duration::from_secs(1))
        .transport(broker.reconnect())
        .build()
        .unwrap();
    (w, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_task_has_no_acceptance() {
    let (w, c) = nodes().await;
    let _worker = w
        .worker()
        .announce(false)
        .handle("a", "quick", "x", |_ctx: TaskContext, v: u32| async move {
            Ok::<_, Error>(v + 1)
        })
        .start()
        .await
        .unwrap();
    let mut task = c.client().perform("a", "quick", "x", &1u32).await.unwrap();
    assert!(task.next_progress().await.is_none());
    assert_eq!(task.result::<u32>().await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_progress_zero_report_is_the_acceptance() {
    let (w, c) = nodes().await;
    let _worker = w
        .worker()
        .announce(false)
        .handle("a", "staged", "x", |ctx: TaskContext, _: u32| async move {
            ctx.progress_with(0, &json!({"stage": "start"})).await?;
            ctx.progress(50).await?;
            Ok::<_, Error>("done")
        })
        .start()
        .await
        .unwrap();
    let mut task = c.client().perform("a", "staged", "x", &1u32).await.unwrap();
    let mut seen = Vec::new();
    while let Some(p) = task.next_progress().await {
        seen.push((p.percent, p.data::<Value>().unwrap()));
    }
    assert_eq!(seen, [(0, json!({"stage": "start"})), (50, json!({}))]);
    assert_eq!(task.result::<String>().await.unwrap(), "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_preceded_by_an_acceptance() {
    let (w, c) = nodes().await;
    let _worker = w
        .worker()
        .announce(false)
        .handle("a", "steps", "x", |ctx: TaskContext, _: u32| async move {
            ctx.progress(30).await?;
            Ok::<_, Error>("done")
        })
        .start()
        .await
        .unwrap();
    let mut task = c.client().perform("a", "steps", "x", &1u32).await.unwrap();
    let mut seen = Vec::new();
    while let Some(p) = task.next_progress().await {
        seen.push(p.percent);
    }
    assert_eq!(seen, [0, 30]);
}
