//! The Redis harness: the shared server from `AETHER_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`) in one mode, and private `redis-server`s on spare ports for
//! the restart case.

use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use aether::SharedTransport;
use async_trait::async_trait;

use crate::harness::{Harness, PrivateBroker};

/// The variable naming the shared Redis.
pub const URL_VAR: &str = "AETHER_TEST_REDIS_URL";
/// Where the shared Redis is by default.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// Redis in one mode (`streams` or `list`). Each harness (one per test) uses a key prefix
/// of its own and deletes its keys when dropped, so tests leave nothing on the shared
/// server.
#[derive(Debug)]
pub struct RedisHarness {
    mode: &'static str,
    base: String,
    prefix: String,
    url: String,
}

impl RedisHarness {
    /// The shared server from the environment, in `mode`.
    pub fn from_env(mode: &'static str) -> RedisHarness {
        let base = std::env::var(URL_VAR).unwrap_or_else(|_| DEFAULT_URL.to_owned());
        let prefix = format!(
            "aethertest{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        );
        RedisHarness {
            mode,
            url: with_query(&base, &format!("mode={mode}&prefix={prefix}")),
            base,
            prefix,
        }
    }
}

impl Drop for RedisHarness {
    fn drop(&mut self) {
        // Best effort, with the server's own client: SCAN the prefix, DEL what it finds.
        let url = self.base.split('?').next().unwrap_or(&self.base);
        let Ok(out) = Command::new("redis-cli")
            .args([
                "-u",
                url,
                "--scan",
                "--pattern",
                &format!("{}:*", self.prefix),
            ])
            .stderr(Stdio::null())
            .output()
        else {
            return;
        };
        let keys: Vec<&str> = std::str::from_utf8(&out.stdout)
            .unwrap_or("")
            .lines()
            .filter(|k| !k.is_empty())
            .collect();
        for chunk in keys.chunks(100) {
            let _ = Command::new("redis-cli")
                .args(["-u", url, "DEL"])
                .args(chunk)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn with_query(base: &str, query: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{query}")
}

async fn connect(name: &str, url: &str) -> SharedTransport {
    match tokio::time::timeout(Duration::from_secs(20), aether::connect(url)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => panic!(
            "{name}: cannot connect to {}: {e}. Is Redis running? Start it with \
             `redis-server --daemonize yes --port 6379 --save '' --appendonly no`, or set {URL_VAR}.",
            aether::url::redact(url)
        ),
        Err(_) => panic!(
            "{name}: connecting to {} timed out. Is Redis running?",
            aether::url::redact(url)
        ),
    }
}

#[async_trait]
impl Harness for RedisHarness {
    fn name(&self) -> String {
        format!("redis-{}", self.mode)
    }

    fn url(&self) -> Option<String> {
        Some(self.url.clone())
    }

    async fn connect(&self) -> SharedTransport {
        connect(&self.name(), &self.url).await
    }

    /// `max_len=limit`: `enqueue` refuses past it with `Error::QueueFull`.
    async fn connect_limited(&self, limit: u64) -> Option<SharedTransport> {
        let url = with_query(&self.url, &format!("max_len={limit}"));
        Some(connect(&self.name(), &url).await)
    }

    async fn private_broker(&self) -> Option<Box<dyn PrivateBroker>> {
        Some(Box::new(PrivateRedis::start(self.mode).await))
    }
}

/// A `redis-server` of this test only, without persistence, on a spare port.
#[derive(Debug)]
pub struct PrivateRedis {
    port: u16,
    mode: &'static str,
    child: Mutex<Option<Child>>,
}

impl PrivateRedis {
    /// Starts one; panics (failing the test) if `redis-server` cannot run.
    pub async fn start(mode: &'static str) -> PrivateRedis {
        let port = super::spare_port();
        let r = PrivateRedis {
            port,
            mode,
            child: Mutex::new(None),
        };
        r.launch().await;
        r
    }

    async fn launch(&self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server on PATH (apt-get install redis-server)");
        *self.child.lock().unwrap() = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "private redis-server on port {} did not start",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}?mode={}", self.port, self.mode)
    }
}

#[async_trait]
impl PrivateBroker for PrivateRedis {
    async fn connect(&self) -> SharedTransport {
        connect("private redis", &self.url()).await
    }

    async fn restart(&self) {
        self.kill();
        self.launch().await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_is_appended() {
        assert_eq!(
            super::with_query("redis://h:1", "mode=list"),
            "redis://h:1?mode=list"
        );
        assert_eq!(
            super::with_query("redis://h:1/?operation_timeout=1s", "mode=streams"),
            "redis://h:1/?operation_timeout=1s&mode=streams"
        );
    }
}
