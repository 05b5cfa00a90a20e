//! Raw amqprs baseline: the round trip aether makes, written directly on amqprs, with the
//! same guarantees and nothing else.
//!
//! The client publishes each task persistent to a durable queue on a confirm-mode channel
//! and waits for the broker's confirm; a worker on its own connection consumes with manual
//! acks and prefetch = the number in flight, publishes the reply (confirmed) to the
//! client's exclusive reply queue, then acks the task; the client's reply consumer wakes
//! the waiting request by correlation id. No envelope, no progress message, no heartbeat,
//! no topology per (job, task, context): the floor aether's cost is measured against.
//!
//! With `AETHER_BENCH_RAW_AMQP=pattern` the loop instead sends what aether asks of the
//! broker per task: the reply and an acceptance (status) message, both confirmed, go
//! through a topic exchange to two exclusive queues the client consumes. That separates
//! the cost of the message pattern (RabbitMQ's work) from the cost of aether's code.
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aether::aether_amqp::{AmqpConfig, amqprs};
use amqprs::callbacks::{ChannelCallback, DefaultConnectionCallback};
use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicPublishArguments, BasicQosArguments, Channel,
    ConfirmSelectArguments, ExchangeDeclareArguments, ExchangeDeleteArguments, QueueBindArguments,
    QueueDeclareArguments, QueueDeleteArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, Nack, Return};
use anyhow::{Context, bail};
use tokio::sync::{Mutex as AsyncMutex, oneshot};

use crate::runner::{Report, closed_loop};

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>;

pub(crate) async fn run(
    url: &str,
    tasks: usize,
    inflight: usize,
    payload: usize,
) -> anyhow::Result<Report> {
    let config = AmqpConfig::from_url(url).context("raw amqp: URL")?;
    let pattern = match std::env::var("AETHER_BENCH_RAW_AMQP").as_deref() {
        Err(_) | Ok("") | Ok("floor") => false,
        Ok("pattern") => true,
        Ok(other) => bail!("AETHER_BENCH_RAW_AMQP={other}: expected floor or pattern"),
    };
    let client = open(&config, "raw-bench-client").await?;
    let worker = open(&config, "raw-bench-worker").await?;
    let queue = format!("rawbench.{}.{inflight}", std::process::id());

    // Client side: a confirm-mode publisher, and a reply queue whose consumer wakes waiters.
    let publisher = Publisher::open(&client).await?;
    let replies_ch = client.open_channel(None).await?;
    replies_ch.register_callback(Confirms::default()).await?;
    let (replies, ..) = replies_ch
        .queue_declare(QueueDeclareArguments::exclusive_server_named())
        .await?
        .context("reply queue")?;
    let exchange = format!("rawbench.{}.x", std::process::id());
    if pattern {
        // Replies and status messages through a topic exchange, each kind to its own
        // queue: what aether's subscriptions do.
        replies_ch
            .exchange_declare(ExchangeDeclareArguments::new(&exchange, "topic"))
            .await?;
        replies_ch
            .queue_bind(QueueBindArguments::new(
                &replies,
                &exchange,
                "u.j.t.x.*.complete",
            ))
            .await?;
        let (status, ..) = replies_ch
            .queue_declare(QueueDeclareArguments::exclusive_server_named())
            .await?
            .context("status queue")?;
        replies_ch
            .queue_bind(QueueBindArguments::new(
                &status,
                &exchange,
                "u.j.t.x.*.status",
            ))
            .await?;
        let (_, mut status_rx) = replies_ch
            .basic_consume_rx(
                BasicConsumeArguments::new(&status, "raw-status")
                    .auto_ack(true)
                    .finish(),
            )
            .await?;
        tokio::spawn(async move { while status_rx.recv().await.is_some() {} });
    }
    let (_, mut reply_rx) = replies_ch
        .basic_consume_rx(
            BasicConsumeArguments::new(&replies, "raw-replies")
                .auto_ack(true)
                .finish(),
        )
        .await?;
    let waiters: Waiters = Arc::default();
    let w = waiters.clone();
    let router = tokio::spawn(async move {
        while let Some(msg) = reply_rx.recv().await {
            let id = msg
                .basic_properties
                .as_ref()
                .and_then(|p| p.correlation_id())
                .and_then(|c| c.parse::<u64>().ok());
            if let Some(id) = id
                && let Some(tx) = w.lock().unwrap().remove(&id)
            {
                let _ = tx.send(());
            }
        }
    });

    // Worker side: manual acks, prefetch = in flight, a confirmed reply before each ack.
    let work_ch = worker.open_channel(None).await?;
    work_ch.register_callback(Confirms::default()).await?;
    work_ch
        .queue_declare(QueueDeclareArguments::durable_client_named(&queue))
        .await?;
    work_ch
        .basic_qos(BasicQosArguments::new(0, inflight.min(65535) as u16, false))
        .await?;
    let (_, mut task_rx) = work_ch
        .basic_consume_rx(
            BasicConsumeArguments::new(&queue, "raw-worker")
                .manual_ack(true)
                .finish(),
        )
        .await?;
    let reply_publisher = Arc::new(Publisher::open(&worker).await?);
    let worker_exchange = exchange.clone();
    let consumer = tokio::spawn(async move {
        while let Some(msg) = task_rx.recv().await {
            let (Some(deliver), Some(props), Some(body)) =
                (msg.deliver, msg.basic_properties, msg.content)
            else {
                continue;
            };
            let (ch, publisher, exchange) = (
                work_ch.clone(),
                reply_publisher.clone(),
                worker_exchange.clone(),
            );
            tokio::spawn(async move {
                let reply_to = props.reply_to().cloned().unwrap_or_default();
                let reply = BasicProperties::default()
                    .with_correlation_id(props.correlation_id().map_or("", |c| c.as_str()))
                    .finish();
                let sent = if pattern {
                    let status = (reply.clone(), body.clone());
                    let accepted = publisher
                        .publish(&exchange, "u.j.t.x.tid.status", status.0, status.1)
                        .await;
                    match accepted {
                        Ok(()) => {
                            publisher
                                .publish(&exchange, "u.j.t.x.tid.complete", reply, body)
                                .await
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    publisher.publish("", &reply_to, reply, body).await
                };
                if sent.is_ok() {
                    let _ = ch
                        .basic_ack(BasicAckArguments::new(deliver.delivery_tag(), false))
                        .await;
                }
            });
        }
    });

    let publisher = Arc::new(publisher);
    let body = vec![b'x'; payload];
    let next = Arc::new(AtomicU64::new(0));
    let one = || {
        let (publisher, waiters, body, next, queue, replies) = (
            publisher.clone(),
            waiters.clone(),
            body.clone(),
            next.clone(),
            queue.clone(),
            replies.clone(),
        );
        async move {
            let id = next.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            waiters.lock().unwrap().insert(id, tx);
            let props = BasicProperties::default()
                .with_persistence(true)
                .with_correlation_id(&id.to_string())
                .with_reply_to(&replies)
                .finish();
            publisher.publish("", &queue, props, body).await?;
            rx.await.context("reply")?;
            Ok::<_, anyhow::Error>(())
        }
    };
    closed_loop(1000.min(tasks), inflight, one).await?;
    let sample = closed_loop(tasks, inflight, one).await?;

    consumer.abort();
    router.abort();
    let cleanup = client.open_channel(None).await?;
    cleanup
        .queue_delete(QueueDeleteArguments::new(&queue))
        .await?;
    if pattern {
        cleanup
            .exchange_delete(ExchangeDeleteArguments::new(&exchange))
            .await?;
    }
    let _ = client.close().await;
    let _ = worker.close().await;
    let name = if pattern {
        "raw amqprs, aether's message pattern"
    } else {
        "raw amqprs"
    };
    Ok(Report::new(name.into(), inflight, sample))
}

async fn open(config: &AmqpConfig, name: &str) -> anyhow::Result<Connection> {
    if config.tls {
        bail!("the raw amqp baseline speaks plain amqp:// only");
    }
    let mut args = OpenConnectionArguments::new(
        &config.host,
        config.port,
        &config.username,
        config.password.expose(),
    );
    args.virtual_host(&config.vhost).connection_name(name);
    let conn = Connection::open(&args).await.context("raw amqp: connect")?;
    conn.register_callback(DefaultConnectionCallback).await?;
    Ok(conn)
}

/// A confirm-mode channel: publish, then wait for the broker's ack of that message.
struct Publisher {
    channel: Channel,
    confirms: Arc<Mutex<Pending>>,
    order: AsyncMutex<()>,
}

#[derive(Default)]
struct Pending {
    last: u64,
    waiting: BTreeMap<u64, oneshot::Sender<bool>>,
}

impl Publisher {
    async fn open(conn: &Connection) -> anyhow::Result<Publisher> {
        let channel = conn.open_channel(None).await?;
        let confirms = Arc::new(Mutex::new(Pending::default()));
        channel
            .register_callback(Confirms(Some(confirms.clone())))
            .await?;
        channel
            .confirm_select(ConfirmSelectArguments::default())
            .await?;
        Ok(Publisher {
            channel,
            confirms,
            order: AsyncMutex::new(()),
        })
    }

    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        props: BasicProperties,
        body: Vec<u8>,
    ) -> anyhow::Result<()> {
        let rx = {
            // Delivery tags follow the order on the wire.
            let _order = self.order.lock().await;
            let rx = {
                let mut p = self.confirms.lock().unwrap();
                p.last += 1;
                let (tx, rx) = oneshot::channel();
                let tag = p.last;
                p.waiting.insert(tag, tx);
                rx
            };
            self.channel
                .basic_publish(
                    props,
                    body,
                    BasicPublishArguments::new(exchange, routing_key),
                )
                .await?;
            rx
        };
        if !rx.await.context("channel closed before the confirm")? {
            bail!("the broker nacked a message");
        }
        Ok(())
    }
}

/// Settles confirms by delivery tag (`multiple` included).
#[derive(Default)]
struct Confirms(Option<Arc<Mutex<Pending>>>);

impl Confirms {
    fn settle(&self, tag: u64, multiple: bool, ok: bool) {
        let Some(p) = &self.0 else { return };
        let done: Vec<_> = {
            let mut p = p.lock().unwrap();
            if multiple {
                let rest = p.waiting.split_off(&(tag + 1));
                std::mem::replace(&mut p.waiting, rest)
                    .into_values()
                    .collect()
            } else {
                p.waiting.remove(&tag).into_iter().collect()
            }
        };
        for tx in done {
            let _ = tx.send(ok);
        }
    }
}

/// A boxed future, as the `async_trait` methods of amqprs's callback trait return (written
/// out here: this crate does not depend on `async-trait`).
type Fut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
type CbResult = Result<(), amqprs::error::Error>;

impl ChannelCallback for Confirms {
    fn close<'s, 'c, 'f>(&'s mut self, _: &'c Channel, close: CloseChannel) -> Fut<'f, CbResult>
    where
        's: 'f,
        'c: 'f,
        Self: 'f,
    {
        Box::pin(async move {
            eprintln!("raw amqp: channel closed: {close}");
            Ok(())
        })
    }
    fn cancel<'s, 'c, 'f>(&'s mut self, _: &'c Channel, _: Cancel) -> Fut<'f, CbResult>
    where
        's: 'f,
        'c: 'f,
        Self: 'f,
    {
        Box::pin(async { Ok(()) })
    }
    fn flow<'s, 'c, 'f>(
        &'s mut self,
        _: &'c Channel,
        active: bool,
    ) -> Fut<'f, Result<bool, amqprs::error::Error>>
    where
        's: 'f,
        'c: 'f,
        Self: 'f,
    {
        Box::pin(async move { Ok(active) })
    }
    fn publish_ack<'s, 'c, 'f>(&'s mut self, _: &'c Channel, ack: Ack) -> Fut<'f, ()>
    where
        's: 'f,
        'c: 'f,
        Self: 'f,
    {
        self.settle(ack.delivery_tag(), ack.mutiple(), true);
        Box::pin(async {})
    }
    fn publish_nack<'s, 'c, 'f>(&'s mut self, _: &'c Channel, nack: Nack) -> Fut<'f, ()>
    where
        's: 'f,
        'c: 'f,
        Self: 'f,
    {
        self.settle(nack.delivery_tag(), nack.multiple(), false);
        Box::pin(async {})
    }
    fn publish_return<'s, 'c, 'f>(
        &'s mut self,
        _: &'c Channel,
        _: Return,
        _: BasicProperties,
        _: Vec<u8>,
    ) -> Fut<'f, ()>
    where
        's: 'f,
        'c: 'f,
        Self: 'f,
    {
        Box::pin(async {})
    }
}
