//! `aether perform` as a person sees it: run under tmux, the screen is captured and
//! checked for the progress bar and the result. Needs tmux (scripts/test.sh installs it).

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{BIN, Running, union, url};

/// A tmux server of its own (`-L`), killed when the test ends.
struct Tmux(String);

impl Tmux {
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.0)
            .args(args)
            .output()
            .expect("tmux is needed for this test: apt-get install tmux (scripts/test.sh does)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "t"])
    }

    /// Waits until the screen shows `needle` (the screen has no event to await).
    async fn wait_for(&self, needle: &str, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if screen.contains(needle) {
                return screen;
            }
            assert!(
                start.elapsed() < limit,
                "{needle:?} not on screen within {limit:?}:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}

#[tokio::test]
async fn perform_shows_a_progress_bar_and_the_result_on_a_terminal() {
    let (url, union) = (url("redis"), union());
    let script = "echo 'aether: progress 40 halfway' >&2; sleep 1.5; cat";
    let _worker = Running::worker(&url, &union, "demo/bar", &[], &["sh", "-c", script]).await;
    let tmux = Tmux(format!("aether-test-{union}"));
    let shell = format!(
        "{BIN} perform {url} demo/bar '{{\"n\": 5}}' --union {union}; echo EXIT=$?; sleep 60"
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "t",
        "-x",
        "120",
        "-y",
        "10",
        &shell,
    ]);
    let screen = tmux.wait_for("40%", Duration::from_secs(20)).await;
    assert!(screen.contains("demo/bar/x [===="), "{screen}");
    assert!(screen.contains("halfway"), "{screen}");
    let screen = tmux.wait_for("EXIT=", Duration::from_secs(20)).await;
    assert!(screen.contains("EXIT=0"), "{screen}");
    assert!(screen.contains("100% succeeded"), "{screen}");
    assert!(screen.contains(r#"{"n":5}"#), "{screen}");
}
