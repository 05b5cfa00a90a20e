//! A worker process for the conformance suite's kill case: connects to URL, serves
//! `JOB/TASK` in CONTEXT of UNION, prints `ready`, then `started {tid}` for each task it
//! takes, and never finishes one, so the test can kill it mid-task.
//!
//! Usage: aether-test-worker URL UNION JOB TASK CONTEXT

use std::io::Write;

use aether::{Aether, Error, TaskContext};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, union, job, task, context] = args.as_slice() else {
        anyhow::bail!("usage: aether-test-worker URL UNION JOB TASK CONTEXT");
    };
    let node = Aether::builder()
        .union(union)
        .lease(std::time::Duration::from_millis(1000))
        .transport(aether::connect(url).await?)
        .build()?;
    let _worker = node
        .worker()
        .announce(false)
        .handle(
            job,
            task,
            context,
            |ctx: TaskContext, _: serde_json::Value| async move {
                println!("started {}", ctx.tid());
                std::io::stdout().flush().ok();
                std::future::pending::<()>().await;
                Ok::<_, Error>(())
            },
        )
        .start()
        .await?;
    println!("ready");
    std::io::stdout().flush()?;
    std::future::pending::<()>().await;
    Ok(())
}
