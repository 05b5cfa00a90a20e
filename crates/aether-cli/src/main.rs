//! `aether`: the command line of aether. Performs tasks, wraps any program as a worker,
//! watches a running system and benchmarks a broker. See `aether --help` and the README's
//! tour; exit codes are in [`exit::Outcome`].

use std::process::ExitCode;

use clap::Parser;

mod bench;
mod child;
mod cli;
mod device;
mod display;
mod event;
mod exit;
mod hub;
mod metrics;
mod perform;
mod target;
mod watch;
mod worker;
mod workers;

use cli::{Cli, Command};
use exit::{Failure, Outcome};

fn main() -> ExitCode {
    #[cfg(target_os = "linux")]
    if let Some(code) = child::launch_if_asked() {
        return code;
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aether: cannot start the runtime: {e}");
            return Outcome::Usage.into();
        }
    };
    let result = runtime.block_on(run(cli.command));
    // Handlers still running (an aborted worker) are dropped here, killing their commands.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(outcome) => outcome.into(),
        Err(failure) => {
            eprintln!("aether: {failure}");
            failure.outcome.into()
        }
    }
}

async fn run(command: Command) -> Result<Outcome, Failure> {
    match command {
        Command::Perform(args) => perform::run(args).await,
        Command::Worker(args) => worker::run(args).await,
        Command::Watch(args) => watch::run(args).await,
        Command::Workers(args) => workers::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Hub(args) => hub::run(args).await,
        Command::Device(args) => device::run(args).await,
    }
}
