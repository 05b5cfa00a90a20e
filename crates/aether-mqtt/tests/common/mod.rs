//! Helpers of the adapter's own tests: the broker URL, private `mosquitto` processes with
//! their own config (TLS, passwords), and a TCP proxy whose connections a test can cut.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether_mqtt::MqttConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The shared broker: `AETHER_TEST_MQTT_URL`, default `mqtt://127.0.0.1:1883`.
pub fn url() -> String {
    std::env::var("AETHER_TEST_MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".into())
}

/// `url` with `query` appended.
pub fn with_query(url: &str, query: &str) -> String {
    if query.is_empty() {
        return url.to_owned();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{query}")
}

/// The shared broker's address.
pub fn broker_addr() -> SocketAddr {
    let c = MqttConfig::from_url(&url()).expect("AETHER_TEST_MQTT_URL");
    let host = if c.host == "localhost" {
        "127.0.0.1"
    } else {
        &c.host
    };
    format!("{host}:{}", c.port)
        .parse()
        .expect("an IP broker address")
}

/// A union no other test uses.
pub fn union() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("aether-mqtt-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A private `mosquitto` on a spare port with `listener_conf` after its `listener` line.
pub struct Mosquitto {
    pub port: u16,
    child: std::process::Child,
    _dir: TempDir,
}

impl Mosquitto {
    pub fn start(listener_conf: &str) -> Mosquitto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a spare port")
            .port();
        let dir = TempDir::new();
        let conf = dir.path("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("per_listener_settings true\nlistener {port} 127.0.0.1\n{listener_conf}\npersistence false\nlog_dest stderr\n"),
        )
        .expect("mosquitto config");
        let log = std::fs::File::create(dir.path("mosquitto.log")).expect("log file");
        let mut child = std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start mosquitto ({e}); install it"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || start.elapsed() > Duration::from_secs(10) {
                let log = std::fs::read_to_string(dir.path("mosquitto.log")).unwrap_or_default();
                panic!("mosquitto did not start ({exited:?}):\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto {
            port,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `openssl` with `args` in `dir`, failing the test on error.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TCP proxy in front of `upstream` whose connections can be cut, as a network failure
/// or a crashed peer would, and which can refuse new ones for a while.
pub struct Proxy {
    pub port: u16,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    open: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Default::default();
        let (open, open_rx) = watch::channel(true);
        let c = conns.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut down, _)) = listener.accept().await else {
                    return;
                };
                if !*open_rx.borrow() {
                    drop(down); // refused while held
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                c.lock().unwrap().push(task);
            }
        });
        Proxy {
            port,
            conns,
            open,
            accept,
        }
    }

    /// Closes every connection through the proxy, and refuses new ones until `resume`
    /// when `hold`.
    pub fn cut(&self, hold: bool) {
        if hold {
            self.open.send_replace(false);
        }
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Accepts connections again.
    pub fn resume(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut(true);
    }
}
