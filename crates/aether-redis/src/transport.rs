//! [`RedisTransport`]: the [`Transport`] over Redis.

use std::fmt;
use std::sync::Arc;

use aether_core::kit::Gate;
use aether_core::{
    Bytes, Capabilities, ConsumeOptions, Consumer, DeadLetter, Error, Result, Subscription, Topic,
    TopicFilter, Transport, WorkQueue,
};
use async_trait::async_trait;
use fred::clients::Client;
use fred::interfaces::{ClientLike, PubsubInterface, StreamsInterface};
use fred::types::config::Options;
use fred::types::{ClusterHash, Value};

use crate::config::{Mode, RedisConfig};
use crate::connect::{Connector, redis_err};
use crate::error::rerouted;
use crate::keys::{self, QueueKeys, global_dead};
use crate::pubsub::Broadcast;
use crate::{list, streams};

/// A transport on a Redis server or cluster: broadcast over pub/sub, the work queue over
/// streams or lists ([`Mode`]).
///
/// It holds one connection for commands, one per subscriber lane (usually one), and one
/// per consumer (blocking reads stall their connection). Connections that break are made
/// again, subscriptions and consumers resume, without user code. Dropping the transport
/// closes it.
pub struct RedisTransport {
    inner: Arc<Inner>,
}

struct Inner {
    config: RedisConfig,
    connector: Connector,
    client: Client,
    broadcast: Arc<Broadcast>,
    gate: Gate,
    /// In a cluster, every publish goes to the node serving this slot (one per transport,
    /// picked at random): PUBLISH is routed by its channel otherwise, and two broadcasts on
    /// different channels, sent through different nodes, could arrive out of order.
    publish_slot: Option<u16>,
}

impl RedisTransport {
    /// Connects as a `redis://` or `rediss://` URL says (see [`RedisConfig`]).
    pub async fn connect(url: &str) -> Result<RedisTransport> {
        RedisTransport::connect_with(RedisConfig::from_url(url)?).await
    }

    /// Connects with `config`. Fails if the server cannot be reached now; later
    /// connection losses are repaired in the background.
    pub async fn connect_with(config: RedisConfig) -> Result<RedisTransport> {
        config.validate()?;
        let connector = Connector::new(&config)?;
        let client = connector.client().await.map_err(|e| {
            Error::transport(
                crate::connect::BACKEND,
                format!("cannot connect to {}: {e}", config.redacted_url()),
            )
        })?;
        let broadcast = Arc::new(Broadcast::new(
            connector.clone(),
            config.subscription_capacity,
        ));
        let publish_slot = config
            .cluster
            .then(|| fred::util::redis_keyslot(client.id().as_bytes()));
        Ok(RedisTransport {
            inner: Arc::new(Inner {
                gate: Gate::new(config.max_payload),
                publish_slot,
                config,
                connector,
                client,
                broadcast,
            }),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }
}

impl fmt::Debug for RedisTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTransport")
            .field("url", &self.inner.config.redacted_url())
            .field("closed", &self.inner.gate.is_closed())
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.gate.close();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (client, broadcast) = (self.client.clone(), self.broadcast.clone());
            rt.spawn(async move {
                broadcast.close().await;
                let _ = client.quit().await;
            });
        }
    }
}

#[async_trait]
impl Transport for RedisTransport {
    fn name(&self) -> &'static str {
        self.inner.config.mode.transport_name()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .durable(true)
            .redelivers_on_crash(true)
            .multi_level_wildcards(true)
            // A pattern overlapping another goes on another connection (lane), so two
            // subscriptions may be delivered out of order with each other.
            .ordered(false)
            .max_payload(self.inner.config.max_payload)
            .dead_letters(true)
            .shared_between_processes(true)
            .gap_signals(true)
    }

    async fn publish(&self, topic: &Topic, payload: Bytes) -> Result<()> {
        self.inner.gate.check_publish(&payload)?;
        let (channel, payload) = (keys::channel(topic), Value::Bytes(payload));
        let sent = match self.inner.publish_slot {
            Some(slot) => {
                let pinned = Options {
                    cluster_hash: Some(ClusterHash::Custom(slot)),
                    ..Options::default()
                };
                let client = self.inner.client.with_options(&pinned);
                client.publish::<i64, _, _>(channel, payload).await
            }
            None => {
                self.inner
                    .client
                    .publish::<i64, _, _>(channel, payload)
                    .await
            }
        };
        sent.map_err(redis_err)?;
        Ok(())
    }

    async fn subscribe(&self, filter: &TopicFilter) -> Result<Subscription> {
        self.inner.gate.check_open()?;
        self.inner.broadcast.subscribe(filter).await
    }

    async fn enqueue(&self, topic: &Topic, payload: Bytes) -> Result<()> {
        self.inner.gate.check_enqueue(topic, &payload)?;
        let inner = &self.inner;
        // Replies to this perform come by pub/sub: after a reconnection, wait until the
        // subscriptions are back before sending it.
        inner
            .broadcast
            .ready(inner.config.operation_timeout)
            .await?;
        match inner.config.mode {
            Mode::Streams => streams::enqueue(&inner.client, &inner.config, topic, payload).await,
            Mode::List => list::enqueue(&inner.client, &inner.config, topic, payload).await,
        }
    }

    async fn consume(&self, queue: &WorkQueue, options: ConsumeOptions) -> Result<Consumer> {
        self.inner.gate.check_open()?;
        let Inner {
            connector,
            client,
            config,
            ..
        } = &*self.inner;
        let closed = self.inner.gate.closed();
        match config.mode {
            Mode::Streams => {
                streams::consume(connector, client, config, queue, options, closed).await
            }
            Mode::List => list::consume(connector, client, config, queue, options, closed).await,
        }
    }

    /// Adds the letter to its queue's dead-letter stream `{prefix}:{u:j:t:x}:dead` (fields
    /// `topic`, `payload`, `reason`), or to `{prefix}:dead` when its topic is not valid.
    async fn dead_letter(&self, letter: DeadLetter) -> Result<()> {
        self.inner.gate.check_open()?;
        let config = &self.inner.config;
        let key = match letter.topic.parse::<Topic>() {
            Ok(topic) => QueueKeys::of_topic(&config.prefix, &topic).dead(),
            Err(_) => global_dead(&config.prefix),
        };
        let fields = vec![
            ("topic", Value::from(letter.topic)),
            ("payload", Value::Bytes(letter.payload)),
            ("reason", Value::from(letter.reason.to_string())),
        ];
        rerouted(|| {
            self.inner.client.xadd::<Value, _, _, _, _>(
                key.as_str(),
                false,
                ("MAXLEN", "~", config.dead_letter_capacity as i64),
                "*",
                fields.clone(),
            )
        })
        .await
        .map_err(redis_err)?;
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        if !self.inner.gate.close() {
            return Ok(());
        }
        self.inner.broadcast.close().await;
        let _ = self.inner.client.quit().await;
        Ok(())
    }
}
