//! A TCP proxy a test can cut: every connection through it breaks, and new ones are refused
//! until it is restored. Puts one node's connection to a shared broker through a network
//! failure without disturbing other tests on that broker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The `host:port` of a broker URL (`scheme://[user[:pass]@]host:port[/path][?query]`).
pub fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let auth = &rest[..end];
    auth.rsplit_once('@').map_or(auth, |(_, a)| a)
}

/// Forwards `127.0.0.1:{port}` to a target address.
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct State {
    cut: AtomicBool,
    pipes: Mutex<Vec<JoinHandle<()>>>,
}

impl Proxy {
    /// Starts forwarding to `target` (`host:port`).
    pub async fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a spare port");
        let port = listener.local_addr().expect("bound").port();
        let state = Arc::new(State::default());
        let target = target.to_owned();
        let s = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                // Checked and recorded under the lock `cut` drains, so no connection
                // accepted meanwhile survives a cut.
                let mut pipes = s.pipes.lock().unwrap();
                if s.cut.load(Ordering::Acquire) {
                    drop(inbound);
                    continue;
                }
                pipes.retain(|p| !p.is_finished());
                let target = target.clone();
                pipes.push(tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }));
            }
        });
        Proxy {
            port,
            state,
            accept,
        }
    }

    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Breaks every connection and refuses new ones.
    pub fn cut(&self) {
        let mut pipes = self.state.pipes.lock().unwrap();
        self.state.cut.store(true, Ordering::Release);
        for pipe in pipes.drain(..) {
            pipe.abort();
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.state.cut.store(false, Ordering::Release);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn authority_of_broker_urls() {
        for (url, want) in [
            ("redis://127.0.0.1:6379?mode=list", "127.0.0.1:6379"),
            (
                "amqp://guest:guest@127.0.0.1:5672/%2f?x=1",
                "127.0.0.1:5672",
            ),
            ("mqtt://h:1883", "h:1883"),
        ] {
            assert_eq!(super::authority(url), want);
        }
    }
}
