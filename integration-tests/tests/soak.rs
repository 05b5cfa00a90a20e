//! The soak command (`src/bin/soak.rs`) for 20 s on each transport: worker processes
//! killed with SIGKILL every 2 s and the private broker restarted, and not one task lost,
//! failed, or given two outcomes (the command's exit status). The long runs are in the
//! README's "Soak" section.

use std::time::Duration;

/// Runs the soak on `transport` with the short settings plus `extra`, failing with its
/// report if it does not pass.
async fn soak(transport: &str, extra: &[&str]) {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_soak"))
        .args([
            "--transport",
            transport,
            "--duration",
            "20s",
            "--in-flight",
            "8",
        ])
        .args(["--kill-every", "2s", "--drain", "30s", "--quiet"])
        .args(extra)
        .kill_on_drop(true)
        .output();
    // 20 s of tasks, 30 s of drain at most, and a private broker's start and restarts.
    let out = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .unwrap_or_else(|_| panic!("the soak on {transport} did not end within 240 s"))
        .expect("run the soak binary");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(
        out.status.success(),
        "the soak on {transport} failed ({}):\n{report}",
        out.status
    );
    assert!(report.contains("result                    OK"), "{report}");
}

#[tokio::test]
async fn soak_memory() {
    soak("memory", &[]).await;
}

#[tokio::test]
async fn soak_redis_streams() {
    soak("redis-streams", &["--restart-every", "8s"]).await;
}

#[tokio::test]
async fn soak_redis_lists() {
    soak("redis-lists", &["--restart-every", "8s"]).await;
}

#[tokio::test]
async fn soak_mqtt() {
    soak("mqtt", &["--restart-every", "8s"]).await;
}

/// RabbitMQ takes seconds to stop and start: one restart in the 20 s.
#[tokio::test]
async fn soak_amqp() {
    soak("amqp", &["--restart-every", "10s"]).await;
}
