//! Runs a command beside a 3-node RabbitMQ cluster on spare loopback ports (quorum queues),
//! for the bench: every `{cluster}` in the command's arguments becomes the cluster's aether
//! URL. Prints the cluster's start-up time and each node's memory before and after the
//! command; the nodes die with this process.
//!
//! ```text
//! cargo run -p integration-tests --bin rabbit-cluster -- \
//!     target/release/aether-bench --rounds 3 'amqp://guest:guest@127.0.0.1:5672/%2f' '{cluster}'
//! ```

use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use integration_tests::brokers::amqp_cluster::{CLUSTER_QUERY, RabbitCluster};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (program, rest) = args
        .split_first()
        .context("usage: rabbit-cluster PROGRAM [ARG|{cluster}]...")?;
    let started = Instant::now();
    let cluster = RabbitCluster::start(3);
    let url = cluster.url(CLUSTER_QUERY);
    println!(
        "3-node RabbitMQ cluster whole in {:.1?}, resident memory per node {:?} MiB, URL {url}",
        started.elapsed(),
        cluster.memory_mib()
    );
    let status = Command::new(program)
        .args(rest.iter().map(|a| a.replace("{cluster}", &url)))
        .status()
        .with_context(|| format!("running {program}"))?;
    println!(
        "after the run: resident memory per node {:?} MiB",
        cluster.memory_mib()
    );
    drop(cluster);
    std::process::exit(status.code().unwrap_or(1));
}
