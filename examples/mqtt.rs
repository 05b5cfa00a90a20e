//! A worker and a client over MQTT, in one process or two, and beside Python AetherMagic.
//!
//! ```text
//! # both in one process (Mosquitto on 127.0.0.1:1883):
//! cargo run -p aether-examples --example mqtt --features mqtt
//! # or a worker in one terminal, a client in another (any mqtt:// or mqtts:// URL):
//! cargo run -p aether-examples --example mqtt --features mqtt -- worker mqtt://127.0.0.1:1883
//! cargo run -p aether-examples --example mqtt --features mqtt -- client mqtt://127.0.0.1:1883
//! ```
//!
//! Workers share tasks through the shared subscription
//! `$share/example_images_workgroup/example/images/thumbnail/x/+/perform`, the one Python
//! AetherMagic's `AetherTask("images", "thumbnail")` workers use with
//! `AetherMagic(server="127.0.0.1", union="example")`: start a Python worker too and the
//! tasks are spread over both; a Python client's `AetherTask.perform` reaches these workers.
//!
//! Kill a worker with `kill -9` while it works: the broker announces it offline (its last
//! will, on `example/system/online/{host}/{client}/online`), and after the lease (5 s
//! here) the client sends the task again with the same tid; another worker completes it.

use std::time::Duration;

use aether::aether_mqtt::{MqttConfig, MqttTransport, Presence};
use aether::{Aether, TaskContext};
use serde::{Deserialize, Serialize};

const UNION: &str = "example";

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

/// A node whose presence (its `online` announcement, and the will the broker publishes
/// if it dies) is under one client id.
async fn node(url: &str, role: &str) -> anyhow::Result<Aether> {
    let client_id = format!("{role}-{}", std::process::id());
    let presence = Presence::new(UNION).client(&client_id);
    let host = presence.host.clone();
    let config = MqttConfig::from_url(url)?.presence(presence);
    let transport = MqttTransport::connect_with(config).await?;
    Ok(Aether::builder()
        .union(UNION)
        .host(host)
        .client_id(client_id)
        .lease(Duration::from_secs(5))
        .transport(transport)
        .build()?)
}

async fn worker(url: &str) -> anyhow::Result<(Aether, aether::Worker)> {
    let node = node(url, "worker").await?;
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
                    for step in [25, 50, 75] {
                        tokio::time::sleep(Duration::from_millis(200)).await;
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
    Ok((node, worker))
}

async fn client(url: &str) -> anyhow::Result<()> {
    let node = node(url, "client").await?;
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
        let tid = task.tid().to_owned();
        while let Some(p) = task.next_progress().await {
            println!("task {tid}: {}%", p.percent);
        }
        let done: Done = task.result().await?;
        println!("task {tid}: {} by {}", done.image, done.by);
    }
    node.close().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = args.get(1).map_or("mqtt://127.0.0.1:1883", String::as_str);
    match args.first().map(String::as_str) {
        Some("worker") => {
            let (node, worker) = worker(url).await?;
            println!("worker ready; Ctrl-C to stop");
            tokio::signal::ctrl_c().await?;
            worker.shutdown(Duration::from_secs(10)).await?;
            node.close().await?;
        }
        Some("client") => client(url).await?,
        None => {
            let (node, worker) = worker(url).await?;
            client(url).await?;
            worker.shutdown(Duration::from_secs(10)).await?;
            node.close().await?;
        }
        Some(other) => anyhow::bail!("usage: mqtt [worker|client] [URL], not {other}"),
    }
    Ok(())
}
