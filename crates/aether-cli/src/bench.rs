//! `aether bench`: the round trip of `crates/aether-bench` (an echo worker and a client on
//! separate connections), through the same loop as `aether perform --count`.

use std::sync::Arc;

use aether::TaskContext;
use serde_json::{Value, json};

use crate::cli::BenchArgs;
use crate::exit::{Failure, Outcome};
use crate::perform::{self, Plan};
use crate::target::{self, Address, NodeOptions};

pub(crate) async fn run(args: BenchArgs) -> Result<Outcome, Failure> {
    let (url, rest) = target::split_url(args.positionals)?;
    if !rest.is_empty() {
        return Err(Failure::usage("expected URL"));
    }
    // A union of its own, so the bench's tasks never reach anyone else's workers.
    let id = uuid::Uuid::new_v4().simple().to_string();
    let union = format!("{}-bench{}", args.common.union, &id[..8]);
    let options = NodeOptions {
        union,
        codec: aether::Codec::Json,
        lease: std::time::Duration::from_secs(30),
        accept_at_once: false,
    };
    let worker_node = target::node(target::connect(&url).await?, &options)?;
    let client_node = target::node(target::connect(&url).await?, &options)?;
    let address = Address::parse("bench/echo")?;
    let worker = worker_node
        .worker()
        .concurrency(args.inflight as usize)
        .handle(
            &address.job,
            &address.task,
            &address.context,
            |_ctx: TaskContext, v: Value| async move { Ok::<_, aether::Error>(v) },
        )
        .start()
        .await?;
    let plan = Arc::new(Plan {
        address,
        payload: json!("x".repeat(args.size)),
        deadline: None,
    });
    let outcome = perform::many(
        &client_node.client(),
        plan,
        args.tasks,
        args.inflight,
        args.common.output,
    )
    .await;
    let _ = worker.shutdown(std::time::Duration::from_secs(5)).await;
    let _ = client_node.close().await;
    let _ = worker_node.close().await;
    outcome
}
