//! The broker a soak runs on: a private one on a spare port (so it may be restarted
//! without disturbing anything else on the machine), or one given by URL (never restarted).

use aether::SharedTransport;

use super::options::{Options, Transport};
use crate::brokers::{amqp::PrivateRabbit, mqtt::Mosquitto, redis::PrivateRedis};
use crate::harness::PrivateBroker;

/// A broker and the URL worker processes connect with.
pub struct SoakBroker {
    url: String,
    private: Option<Box<dyn PrivateBroker>>,
}

impl std::fmt::Debug for SoakBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoakBroker")
            .field("url", &aether::url::redact(&self.url))
            .field("private", &self.private.is_some())
            .finish()
    }
}

impl SoakBroker {
    /// The broker for `o`: `o.url` if given, else a private one started now (the memory
    /// transport's broker is a name in this process).
    pub async fn start(o: &Options) -> SoakBroker {
        if let Some(url) = &o.url {
            return SoakBroker {
                url: url.clone(),
                private: None,
            };
        }
        let (url, private): (String, Option<Box<dyn PrivateBroker>>) = match o.transport {
            Transport::Memory => (
                format!("memory://soak{}", uuid::Uuid::new_v4().simple()),
                None,
            ),
            Transport::RedisStreams | Transport::RedisLists => {
                let mode = if o.transport == Transport::RedisLists {
                    "list"
                } else {
                    "streams"
                };
                let r = PrivateRedis::start(mode).await;
                (r.url(), Some(Box::new(r)))
            }
            Transport::Mqtt => {
                let m = Mosquitto::start("").await;
                (m.url(), Some(Box::new(m)))
            }
            Transport::Amqp => {
                let r = PrivateRabbit::start(Default::default()).await;
                (r.url(), Some(Box::new(r)))
            }
        };
        SoakBroker { url, private }
    }

    /// The URL other processes connect with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether it can be restarted (a private broker with a server).
    pub fn restartable(&self) -> bool {
        self.private.is_some()
    }

    /// A new connection (through the private broker where there is one, so a restart
    /// waits for it where the broker does that).
    pub async fn connect(&self) -> anyhow::Result<SharedTransport> {
        match &self.private {
            Some(p) => Ok(p.connect().await),
            None => Ok(aether::connect(&self.url).await?),
        }
    }

    /// Stops the broker and starts it again on the same address.
    pub async fn restart(&self) {
        if let Some(p) = &self.private {
            p.restart().await;
        }
    }
}
