//! aether over RabbitMQ: a task sent while no worker runs waits in RabbitMQ; two workgroups
//! each get every task; progress and results come back to the client.
//!
//! ```text
//! cargo run -p aether-examples --example amqp --features amqp
//! AETHER_URL='amqp://user:pass@rabbit:5672/%2f?queue_type=quorum' cargo run ...
//! ```
//!
//! Needs a RabbitMQ at `amqp://guest:guest@127.0.0.1:5672/%2f` (or `AETHER_URL`).

use std::sync::Arc;
use std::time::Duration;

use aether::aether_amqp::{AmqpConfig, AmqpTransport};
use aether::{Aether, SharedTransport, TaskContext};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Invoice {
    id: u32,
    cents: u64,
}

async fn connect(config: &AmqpConfig) -> anyhow::Result<SharedTransport> {
    Ok(Arc::new(AmqpTransport::connect_with(config.clone()).await?))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let url = std::env::var("AETHER_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    // Every setting is also a URL query key; the password never shows in Debug output.
    let config = AmqpConfig::from_url(&url)?
        .connection_name("aether-example")
        .heartbeat(Duration::from_secs(10));
    println!("broker: {config:?}");
    let union = format!("example{}", std::process::id());

    // The client first: its task waits in RabbitMQ until a worker comes.
    let client_node = Aether::builder()
        .union(&union)
        .transport(connect(&config).await?)
        .build()?;
    let client = client_node.client();
    let early = client
        .perform("billing", "invoice", "x", &Invoice { id: 1, cents: 1250 })
        .await?;
    println!("client: sent invoice 1 before any worker runs");

    // Two workgroups: `ledger` and `mailer` each handle every invoice; the two `ledger`
    // workers share theirs (prefetch = concurrency, manual acks after completion).
    let mut workers = Vec::new();
    for (group, n) in [("ledger", 1), ("ledger", 2), ("mailer", 1)] {
        let node = Aether::builder()
            .union(&union)
            .transport(connect(&config).await?)
            .build()?;
        let name = format!("{group}-{n}");
        let label = name.clone();
        let worker = node
            .worker()
            .workgroup(group)
            .concurrency(4)
            .handle(
                "billing",
                "invoice",
                "x",
                move |ctx: TaskContext, inv: Invoice| {
                    let name = name.clone();
                    async move {
                        ctx.progress(50).await?;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok::<_, aether::Error>(format!("{name} booked invoice {}", inv.id))
                    }
                },
            )
            .start()
            .await?;
        workers.push((label, node, worker));
    }

    let reply: String = early.result().await?;
    println!("client: {reply}");
    for id in 2..=4 {
        let mut task = client
            .perform("billing", "invoice", "x", &Invoice { id, cents: 99 })
            .await?;
        while let Some(p) = task.next_progress().await {
            println!("client: invoice {id} at {}%", p.percent);
        }
        let reply: String = task.result().await?;
        println!("client: {reply}");
    }

    // The client keeps the first completion of each task; the other workgroup handled the
    // tasks too. Invoice 1 went only to the workgroup(s) whose queue existed when the first
    // worker moved it out of the holding queue.
    for (name, node, worker) in workers {
        worker.shutdown(Duration::from_secs(5)).await?;
        println!("{name} handled {}", node.stats().handled);
        node.close().await?;
    }
    client_node.close().await?;
    Ok(())
}
