//! The soak command: tasks run continuously on one transport while worker processes are
//! killed with SIGKILL and a private broker is restarted; prints what became of every task
//! and exits non-zero if one was lost, failed, or had two outcomes.
//!
//! ```text
//! cargo run -p integration-tests --release --bin soak -- --transport redis-streams --duration 600s --in-flight 16
//! ```
//!
//! `soak worker ...` is the worker process the soak starts (itself, re-executed).

use integration_tests::soak::{self, Options};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("worker") {
        return soak::workers::worker_main(&args[1..]).await;
    }
    let Some(options) = Options::parse(args)? else {
        println!("{}", soak::options::USAGE);
        return Ok(());
    };
    let report = soak::run(&options).await?;
    println!("{report}");
    if !report.ok() {
        std::process::exit(1);
    }
    Ok(())
}
