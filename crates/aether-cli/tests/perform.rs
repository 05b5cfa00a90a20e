//! `aether perform` served by `aether worker` wrapping shell commands, on real brokers:
//! results, failures, deadlines, Ctrl-C and a killed worker give their exit codes.

mod support;

use std::time::Duration;

use rustix::process::Signal;
use serde_json::{Value, json};
use support::{Running, aether, finish, union, url};

const LIMIT: Duration = Duration::from_secs(30);

async fn a_shell_worker_serves_perform(backend: &str) {
    let (url, union) = (url(backend), union());
    let _worker = Running::worker(&url, &union, "demo/echo", &[], &["sh", "-c", "cat"]).await;
    let out = finish(
        aether(&[
            "perform",
            &url,
            "demo/echo",
            r#"{"n": 1}"#,
            "--union",
            &union,
        ]),
        LIMIT,
    )
    .await;
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&out.stdout).unwrap(),
        json!({"n": 1})
    );
}

#[tokio::test]
async fn a_shell_worker_serves_perform_on_redis() {
    a_shell_worker_serves_perform("redis").await;
}

#[tokio::test]
async fn a_shell_worker_serves_perform_on_mqtt() {
    a_shell_worker_serves_perform("mqtt").await;
}

#[tokio::test]
async fn a_shell_worker_serves_perform_on_amqp() {
    a_shell_worker_serves_perform("amqp").await;
}

#[tokio::test]
async fn progress_lines_reach_the_client_and_a_string_result_is_a_json_string() {
    let (url, union) = (url("redis"), union());
    let script = r#"echo 'aether: progress 40 half way' >&2; echo 'aether: {"progress": 70, "data": {"stage": "b"}}' >&2; echo done"#;
    let _worker = Running::worker(&url, &union, "demo/steps", &[], &["sh", "-c", script]).await;
    let out = finish(
        aether(&["perform", &url, "demo/steps", "--union", &union]),
        LIMIT,
    )
    .await;
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout.trim(), r#""done""#);
    assert!(out.stderr.contains("progress 40 half way"), "{out:?}");
    assert!(
        out.stderr.contains(r#"progress 70 {"stage":"b"}"#),
        "{out:?}"
    );
}

#[tokio::test]
async fn a_failing_command_fails_the_task_with_its_stderr() {
    let (url, union) = (url("redis"), union());
    let script = "echo starting >&2; echo 'no such order' >&2; exit 3";
    let _worker = Running::worker(&url, &union, "demo/fail", &[], &["sh", "-c", script]).await;
    let out = finish(
        aether(&[
            "perform",
            &url,
            "demo/fail",
            "--union",
            &union,
            "-o",
            "json",
        ]),
        LIMIT,
    )
    .await;
    assert_eq!(out.code(), 1, "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["outcome"], "failed");
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains("starting\nno such order (exit status 3)"),
        "{error}"
    );
}

#[tokio::test]
async fn a_deadline_kills_the_command_and_exits_3() {
    let (url, union) = (url("redis"), union());
    let worker = Running::worker(&url, &union, "demo/slow", &[], &["sh", "-c", "sleep 30"]).await;
    let out = finish(
        aether(&[
            "perform",
            &url,
            "demo/slow",
            "--union",
            &union,
            "--deadline",
            "700ms",
        ]),
        LIMIT,
    )
    .await;
    assert_eq!(out.code(), 3, "{out:?}");
    assert!(out.stderr.contains("passed its deadline"), "{out:?}");
    // The worker killed `sleep 30` rather than letting it run.
    worker.wait_for("failed", Duration::from_secs(10)).await;
}

#[tokio::test]
async fn ctrl_c_cancels_the_task_on_the_worker_and_exits_4() {
    let (url, union) = (url("redis"), union());
    let worker = Running::worker(&url, &union, "demo/slow", &[], &["sh", "-c", "sleep 30"]).await;
    let mut cmd = aether(&["perform", &url, "demo/slow", "--union", &union]);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let perform = cmd.spawn().unwrap();
    worker.wait_for("] running (", LIMIT).await;
    support::signal(&perform, Signal::INT);
    let out = support::wait(perform, LIMIT).await;
    assert_eq!(out.code(), 4, "{out:?}");
    let line = worker.wait_for("failed", Duration::from_secs(10)).await;
    assert!(line.contains("cancelled"), "{line}");
}

#[tokio::test]
async fn a_killed_workers_task_completes_on_another_worker() {
    let (url, union) = (url("redis"), union());
    let lease = ["--lease", "1s"];
    let mut first = Running::worker(
        &url,
        &union,
        "demo/once",
        &lease,
        &["sh", "-c", "sleep 3; cat"],
    )
    .await;
    let mut cmd = aether(&["perform", &url, "demo/once", "7", "--union", &union]);
    cmd.args(["--lease", "1s", "--deadline", "25s"]);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let perform = cmd.spawn().unwrap();
    first.wait_for("] running (", LIMIT).await;
    first.child.start_kill().unwrap(); // SIGKILL: nothing is acknowledged
    let _ = first.child.wait().await;
    let _second = Running::worker(&url, &union, "demo/once", &lease, &["cat"]).await;
    let out = support::wait(perform, LIMIT).await;
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "7");
}

/// A worker killed with SIGKILL cannot kill its command itself: the command is told by the
/// kernel (parent-death signal) instead of running on as an orphan.
#[tokio::test]
async fn a_killed_workers_command_does_not_outlive_it() {
    let (url, union) = (url("redis"), union());
    let pidfile = std::env::temp_dir().join(format!("{union}.pid"));
    let script = format!("echo $$ > {}; exec sleep 60", pidfile.display());
    let mut worker =
        Running::worker(&url, &union, "demo/orphan", &[], &["sh", "-c", &script]).await;
    let mut cmd = aether(&["perform", &url, "demo/orphan", "1", "--union", &union]);
    cmd.args(["--deadline", "20s"]);
    let _perform = cmd.spawn().unwrap();
    worker.wait_for("] running (", LIMIT).await;
    let pid = wait_for_pid(&pidfile).await;
    worker.child.start_kill().unwrap(); // SIGKILL: the worker runs no clean-up
    let _ = worker.child.wait().await;
    let gone = async {
        // kill(pid, 0) fails with ESRCH once the command is gone (it is reaped by init).
        while rustix::process::test_kill_process(pid).is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let outlived = tokio::time::timeout(Duration::from_secs(5), gone)
        .await
        .is_err();
    let _ = std::fs::remove_file(&pidfile);
    if outlived {
        let _ = rustix::process::kill_process(pid, Signal::KILL);
        panic!("the command outlived its killed worker");
    }
}

async fn wait_for_pid(path: &std::path::Path) -> rustix::process::Pid {
    for _ in 0..500 {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            return rustix::process::Pid::from_raw(pid).expect("pid");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the command never wrote its pid");
}

#[tokio::test]
async fn no_worker_and_a_deadline_exits_3_and_no_broker_exits_5() {
    let union = union();
    let out = finish(
        aether(&[
            "perform",
            &url("redis"),
            "demo/none",
            "--union",
            &union,
            "--deadline",
            "300ms",
        ]),
        LIMIT,
    )
    .await;
    assert_eq!(out.code(), 3, "{out:?}");
    let out = finish(
        aether(&[
            "perform",
            "redis://user:hunter2@127.0.0.1:1/?connect_timeout=1s",
            "demo/none",
        ]),
        LIMIT,
    )
    .await;
    assert_eq!(out.code(), 5, "{out:?}");
    assert!(!out.stderr.contains("hunter2"), "{out:?}");
    assert!(out.stderr.contains("cannot connect"), "{out:?}");
}

#[tokio::test]
async fn bad_usage_exits_2() {
    for args in [
        &["perform"][..],
        &["perform", "redis://127.0.0.1:6379", "no-task"],
        &[
            "perform",
            "redis://127.0.0.1:6379",
            "a/b",
            "--deadline",
            "soon",
        ],
        &["worker", "redis://127.0.0.1:6379", "a/b"],
        &["watch", "memory://"],
        &["perform", "memory://", "a/b"],
        &["workers", "memory://"],
    ] {
        let out = finish(aether(args), LIMIT).await;
        assert_eq!(out.code(), 2, "{args:?}: {out:?}");
    }
}

#[tokio::test]
async fn the_url_comes_from_aether_url_and_count_reports_a_summary() {
    let (url, union) = (url("redis"), union());
    let _worker =
        Running::worker(&url, &union, "demo/echo", &["--concurrency", "4"], &["cat"]).await;
    let mut cmd = aether(&[
        "perform",
        "demo/echo",
        "{}",
        "--count",
        "20",
        "--inflight",
        "4",
    ]);
    cmd.env("AETHER_URL", &url).env("AETHER_UNION", &union);
    cmd.args(["-o", "json"]);
    let out = finish(cmd, LIMIT).await;
    assert_eq!(out.code(), 0, "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["tasks"], 20);
    assert_eq!(v["outcomes"]["succeeded"], 20);
    assert!(v["p99_ms"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn sigterm_lets_the_running_task_finish_then_the_worker_exits_0() {
    let (url, union) = (url("redis"), union());
    let script = "sleep 1; cat";
    let mut worker = Running::worker(&url, &union, "demo/drain", &[], &["sh", "-c", script]).await;
    let mut cmd = aether(&["perform", &url, "demo/drain", "9", "--union", &union]);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let perform = cmd.spawn().unwrap();
    worker.wait_for("] running (", LIMIT).await;
    support::signal(&worker.child, Signal::TERM);
    let out = support::wait(perform, LIMIT).await;
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "9");
    let status = tokio::time::timeout(LIMIT, worker.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{:?}", worker.lines());
}
