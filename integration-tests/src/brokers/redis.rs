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

/// Redis in one mode (`streams` or `list`).
#[derive(Clone, Debug)]
pub struct RedisHarness {
    mode: &'static str,
    url: String,
}

impl RedisHarness {
    /// The shared server from the environment, in `mode`.
    pub fn from_env(mode: &'static str) -> RedisHarness {
        let base = std::env::var(URL_VAR).unwrap_or_else(|_| DEFAULT_URL.to_owned());
        RedisHarness {
            mode,
            url: with_mode(&base, mode),
        }
    }
}

fn with_mode(base: &str, mode: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}mode={mode}")
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
    fn mode_is_appended() {
        assert_eq!(
            super::with_mode("redis://h:1", "list"),
            "redis://h:1?mode=list"
        );
        assert_eq!(
            super::with_mode("redis://h:1/?timeout=1s", "streams"),
            "redis://h:1/?timeout=1s&mode=streams"
        );
    }
}
