//! A worker process for the kill cases: connects to URL, serves `JOB/TASK` in CONTEXT of
//! UNION, prints `ready`, then `started {tid}` for each task it takes. Without WORK_MS it
//! never finishes one, so the test can kill it mid-task; with WORK_MS each run sleeps that
//! long, prints `done {tid}` and returns the payload it was given.
//!
//! Usage: `aether-test-worker URL UNION JOB TASK CONTEXT [WORK_MS]`

use std::io::Write;

use aether::{Aether, Error, TaskContext};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (url, union, job, task, context, work) = match args.as_slice() {
        [url, union, job, task, context] => (url, union, job, task, context, None),
        [url, union, job, task, context, ms] => {
            let ms: u64 = ms.parse()?;
            let work = Some(std::time::Duration::from_millis(ms));
            (url, union, job, task, context, work)
        }
        _ => anyhow::bail!("usage: aether-test-worker URL UNION JOB TASK CONTEXT [WORK_MS]"),
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
            move |ctx: TaskContext, value: serde_json::Value| async move {
                println!("started {}", ctx.tid());
                std::io::stdout().flush().ok();
                let Some(work) = work else {
                    std::future::pending::<()>().await;
                    unreachable!("pending never ends")
                };
                tokio::time::sleep(work).await;
                println!("done {}", ctx.tid());
                std::io::stdout().flush().ok();
                Ok::<_, Error>(value)
            },
        )
        .start()
        .await?;
    println!("ready");
    std::io::stdout().flush()?;
    std::future::pending::<()>().await;
    Ok(())
}
