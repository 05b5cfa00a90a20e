//! A worker and a client over Redis, in one process or two.
//!
//! ```text
//! # both in one process (Redis on 127.0.0.1:6379):
//! cargo run -p aether-examples --example redis --features redis
//! # or a worker in one terminal, a client in another; list mode this time:
//! cargo run -p aether-examples --example redis --features redis -- worker 'redis://127.0.0.1:6379/?mode=list'
//! cargo run -p aether-examples --example redis --features redis -- client 'redis://127.0.0.1:6379/?mode=list'
//! ```
//!
//! Start several workers: each task goes to exactly one of them. Kill one (Ctrl-C, or
//! `kill -9`) while it works: after the lease (5 s here) another worker takes its task
//! over, because the task stays in Redis until a worker acknowledges it.

use std::time::Duration;

use aether::{Aether, TaskContext};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Thumbnail {
    image: String,
    width: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Done {
    image: String,
    by: String,
}

async fn node(url: &str) -> anyhow::Result<Aether> {
    Ok(Aether::builder()
        .union("example")
        .lease(Duration::from_secs(5))
        .transport(aether::connect(url).await?)
        .build()?)
}

async fn worker(url: &str) -> anyhow::Result<aether::Worker> {
    let node = node(url).await?;
    let me = node.config().client_id.clone();
    let worker = node
        .worker()
        .concurrency(4)
        .handle(
            "images",
            "thumbnail",
            "x",
            move |ctx: TaskContext, job: Thumbnail| {
                let me = me.clone();
                async move {
                    println!(
                        "{me}: {} at {}px (task {})",
                        job.image,
                        job.width,
                        ctx.tid()
                    );
                    for step in [20, 40, 60, 80] {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        ctx.progress(step).await?;
                    }
                    Ok::<_, aether::Error>(Done {
                        image: format!("thumb-{}", job.image),
                        by: me,
                    })
                }
            },
        )
        .start()
        .await?;
    Ok(worker)
}

async fn client(url: &str) -> anyhow::Result<()> {
    let node = node(url).await?;
    let client = node.client();
    let mut tasks = Vec::new();
    for (i, image) in ["cat.png", "dog.png", "owl.png", "fox.png"]
        .iter()
        .enumerate()
    {
        let job = Thumbnail {
            image: (*image).to_owned(),
            width: 64 * (i as u32 + 1),
        };
        tasks.push(client.perform("images", "thumbnail", "x", &job).await?);
    }
    for mut task in tasks {
        while let Some(p) = task.next_progress().await {
            println!("task {}: {}%", task.tid(), p.percent);
        }
        let done: Done = task.result().await?;
        println!("task done: {} by {}", done.image, done.by);
    }
    node.close().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let role = args.next().unwrap_or_else(|| "both".into());
    let url = args
        .next()
        .or_else(|| std::env::var("AETHER_URL").ok())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    match role.as_str() {
        "worker" => {
            let w = worker(&url).await?;
            println!(
                "worker ready on {}; Ctrl-C stops it",
                aether::url::redact(&url)
            );
            tokio::signal::ctrl_c().await?;
            let report = w.shutdown(Duration::from_secs(10)).await?;
            println!("stopped; {} task(s) handed back", report.handed_back);
        }
        "client" => client(&url).await?,
        "both" => {
            let w = worker(&url).await?;
            client(&url).await?;
            w.shutdown(Duration::from_secs(10)).await?;
        }
        other => anyhow::bail!("unknown role {other}: use worker, client or both"),
    }
    Ok(())
}
