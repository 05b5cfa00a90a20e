//! Quickstart: three workers and a client on the embedded in-memory transport.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Change the URL (or set `AETHER_URL`) to `redis://127.0.0.1:6379`,
//! `mqtt://127.0.0.1:1883` or `amqp://guest:guest@127.0.0.1:5672/%2f` to run the same
//! program over a broker (build with the adapter's feature, e.g.
//! `cargo run -p aether-examples --example quickstart --features redis`).

use std::time::Duration;

use aether::{Aether, TaskContext};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Resize {
    image: String,
    width: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Resized {
    image: String,
    bytes: u64,
    by: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("AETHER_URL").unwrap_or_else(|_| "memory://quickstart".into());

    // Three workers in the default workgroup: each task goes to exactly one of them.
    let mut workers = Vec::new();
    for n in 1..=3 {
        let node = Aether::builder()
            .union("quickstart")
            .transport(aether::connect(&url).await?)
            .build()?;
        let name = format!("worker-{n}");
        let worker = node
            .worker()
            .concurrency(2)
            .handle(
                "images",
                "resize",
                "x",
                move |ctx: TaskContext, job: Resize| {
                    let name = name.clone();
                    async move {
                        println!(
                            "{name}: resizing {} to {}px (task {})",
                            job.image,
                            job.width,
                            ctx.tid()
                        );
                        for step in [25, 50, 75] {
                            tokio::time::sleep(Duration::from_millis(40)).await;
                            ctx.progress(step).await?;
                        }
                        if job.width == 0 {
                            anyhow::bail!("{}: width must be positive", job.image);
                        }
                        Ok(Resized {
                            bytes: u64::from(job.width) * 700,
                            image: job.image,
                            by: name,
                        })
                    }
                },
            )
            .start()
            .await?;
        workers.push((node, worker));
    }

    // A client on its own connection.
    let client_node = Aether::builder()
        .union("quickstart")
        .transport(aether::connect(&url).await?)
        .build()?;
    let client = client_node.client();

    let mut tasks = Vec::new();
    for (i, width) in [640, 1024, 320, 0, 800, 1920].into_iter().enumerate() {
        let job = Resize {
            image: format!("photo-{i}.jpg"),
            width,
        };
        let task = client
            .task("images", "resize")
            .deadline(Duration::from_secs(10))
            .perform(&job)
            .await?;
        tasks.push((job.image, task));
    }

    for (image, mut task) in tasks {
        while let Some(p) = task.next_progress().await {
            println!("client: {image} at {}%", p.percent);
        }
        match task.result::<Resized>().await {
            Ok(r) => println!("client: {image} done by {}: {} bytes", r.by, r.bytes),
            Err(e) => println!("client: {image} failed: {e}"),
        }
    }

    for (node, worker) in workers {
        worker.shutdown(Duration::from_secs(5)).await?;
        let s = node.stats();
        println!(
            "stats: handled {} ok, {} errors",
            s.handled, s.handler_errors
        );
    }
    Ok(())
}
