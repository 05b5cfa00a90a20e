//! The exchanges, queues and bindings aether uses on RabbitMQ, and their names.
//!
//! With the default settings, for union `u`:
//!
//! | what | name | kind |
//! |------|------|------|
//! | broadcasts (status, complete, cancel, online, idle) | `aether.u` | topic exchange, routing key `u.job.task.context.tid.action` |
//! | each subscription | server-named | exclusive queue (at most 100,000 messages) bound with the filter (`+` → `*`), consumed without acks |
//! | performs | `aether.u.work` | direct exchange, routing key `u.job.task.context`, the tid as message id; alternate exchange `aether.u.unrouted` |
//! | a workgroup's tasks | `aether.u.job.task.context.workgroup` | durable queue bound with `u.job.task.context`, dead-lettering to `aether.dead-letters` |
//! | performs sent before any workgroup queue existed | `aether.u.job.task.context:unrouted` | durable queue bound to `aether.u.unrouted`, moved to the workgroup queues by the first worker |
//! | dead letters | `aether.dead-letters` | fanout exchange and durable queue (bounded) |

use amqprs::channel::{ExchangeDeclareArguments, QueueBindArguments, QueueDeclareArguments};
use amqprs::{FieldTable, FieldValue};

use aether_core::{Error, Result, Topic, TopicError, TopicFilter, WorkQueue};

use crate::channel::Chan;
use crate::config::{AmqpConfig, QueueType};
use crate::error::AmqpError;

/// The routing key of a broadcast on the topic exchange: the topic's levels joined by `.`.
pub(crate) fn routing_key(topic: &Topic) -> String {
    topic.joined('.')
}

/// Parses a broadcast's routing key back into a topic.
pub(crate) fn parse_routing_key(key: &str) -> Result<Topic, TopicError> {
    Topic::parse_with(key, '.')
}

/// The binding key of a subscription on the topic exchange: `+` becomes `*`, `#` stays.
pub(crate) fn binding(filter: &TopicFilter) -> String {
    filter.render('.', "*", "#")
}

/// The longest AMQP exchange or queue name.
const MAX_NAME: usize = 255;

/// Names and arguments derived from the configuration.
#[derive(Clone, Debug)]
pub(crate) struct Topology {
    exchange: String,
    queue_prefix: String,
    dead_letter: String,
    dead_letter_max: u32,
    queue_type: QueueType,
    queue_expires: Option<u64>,
}

impl Topology {
    pub(crate) fn new(c: &AmqpConfig) -> Topology {
        Topology {
            exchange: c.exchange.clone(),
            queue_prefix: c.queue_prefix.clone(),
            dead_letter: c.dead_letter.clone(),
            dead_letter_max: c.dead_letter_capacity,
            queue_type: c.queue_type,
            queue_expires: c.queue_expires.map(|d| d.as_millis().max(1) as u64),
        }
    }

    /// Whether each union has its own exchanges (the name has `{union}`).
    pub(crate) fn per_union(&self) -> bool {
        self.exchange.contains("{union}")
    }

    /// The broadcast exchange of `union`.
    pub(crate) fn broadcast(&self, union: &str) -> String {
        self.exchange.replace("{union}", union)
    }

    /// The exchange performs of `union` are published to.
    pub(crate) fn work(&self, union: &str) -> String {
        format!("{}.work", self.broadcast(union))
    }

    fn unrouted(&self, union: &str) -> String {
        format!("{}.unrouted", self.broadcast(union))
    }

    /// The dead-letter exchange (and queue).
    pub(crate) fn dead_letter(&self) -> &str {
        &self.dead_letter
    }

    /// The durable queue of `q`'s workgroup.
    pub(crate) fn work_queue(&self, q: &WorkQueue) -> Result<String> {
        checked(format!(
            "{}.{}.{}",
            self.queue_prefix,
            q.key('.'),
            q.workgroup()
        ))
    }

    /// The queue holding `q`'s performs while no workgroup queue exists.
    pub(crate) fn holding_queue(&self, q: &WorkQueue) -> Result<String> {
        checked(format!("{}.{}:unrouted", self.queue_prefix, q.key('.')))
    }

    /// The routing (and binding) key of `q`'s performs: `union.job.task.context`. The work
    /// exchange is a direct exchange, far cheaper for RabbitMQ to route than a topic one;
    /// the tid travels as the message id.
    pub(crate) fn work_key(q: &WorkQueue) -> String {
        q.key('.')
    }

    /// The dead-letter exchange and its queue, of the configured queue type (a quorum
    /// queue on a cluster is what survives the loss of a node).
    pub(crate) fn dead_letters(&self) -> Vec<Decl> {
        let mut args = FieldTable::new();
        if self.queue_type == QueueType::Quorum {
            insert(
                &mut args,
                "x-queue-type",
                self.queue_type.as_str().into_field(),
            );
        }
        insert(
            &mut args,
            "x-max-length",
            i64::from(self.dead_letter_max).into_field(),
        );
        vec![
            Decl::Exchange {
                name: self.dead_letter.clone(),
                kind: "fanout",
                args: FieldTable::new(),
            },
            Decl::Queue {
                name: self.dead_letter.clone(),
                args,
            },
            Decl::Bind {
                queue: self.dead_letter.clone(),
                exchange: self.dead_letter.clone(),
                key: String::new(),
            },
        ]
    }

    /// The broadcast exchange of `union`.
    pub(crate) fn broadcast_decls(&self, union: &str) -> Vec<Decl> {
        vec![Decl::Exchange {
            name: self.broadcast(union),
            kind: "topic",
            args: FieldTable::new(),
        }]
    }

    /// What an enqueue on `q`'s (union, job, task, context) needs: the work exchange, its
    /// alternate exchange and the holding queue behind it, and the dead letters.
    pub(crate) fn enqueue_decls(&self, q: &WorkQueue) -> Result<Vec<Decl>> {
        let union = q.union();
        let mut work_args = FieldTable::new();
        insert(
            &mut work_args,
            "alternate-exchange",
            self.unrouted(union).into_field(),
        );
        let mut decls = self.dead_letters();
        decls.extend([
            Decl::Exchange {
                name: self.unrouted(union),
                kind: "direct",
                args: FieldTable::new(),
            },
            Decl::Exchange {
                name: self.work(union),
                kind: "direct",
                args: work_args,
            },
            Decl::Queue {
                name: self.holding_queue(q)?,
                args: self.queue_args(false),
            },
            Decl::Bind {
                queue: self.holding_queue(q)?,
                exchange: self.unrouted(union),
                key: Topology::work_key(q),
            },
        ]);
        Ok(decls)
    }

    /// What a consumer of `q` needs: everything an enqueue needs, and the workgroup's queue.
    pub(crate) fn consume_decls(&self, q: &WorkQueue) -> Result<Vec<Decl>> {
        let mut decls = self.enqueue_decls(q)?;
        decls.extend([
            Decl::Queue {
                name: self.work_queue(q)?,
                args: self.queue_args(true),
            },
            Decl::Bind {
                queue: self.work_queue(q)?,
                exchange: self.work(q.union()),
                key: Topology::work_key(q),
            },
        ]);
        Ok(decls)
    }

    fn queue_args(&self, work: bool) -> FieldTable {
        let mut args = FieldTable::new();
        if self.queue_type == QueueType::Quorum {
            insert(
                &mut args,
                "x-queue-type",
                self.queue_type.as_str().into_field(),
            );
        }
        if work {
            insert(
                &mut args,
                "x-dead-letter-exchange",
                self.dead_letter.clone().into_field(),
            );
        }
        if let Some(ms) = self.queue_expires {
            insert(&mut args, "x-expires", (ms as i64).into_field());
        }
        args
    }
}

fn checked(name: String) -> Result<String> {
    if name.len() > MAX_NAME {
        return Err(Error::Config(format!(
            "the AMQP queue name {name:?} is {} bytes long; RabbitMQ allows {MAX_NAME}: \
             shorten the queue prefix, union, job, task, context or workgroup",
            name.len()
        )));
    }
    Ok(name)
}

/// One idempotent declaration.
#[derive(Clone, Debug)]
pub(crate) enum Decl {
    Exchange {
        name: String,
        kind: &'static str,
        args: FieldTable,
    },
    Queue {
        name: String,
        args: FieldTable,
    },
    Bind {
        queue: String,
        exchange: String,
        key: String,
    },
}

impl Decl {
    /// A key naming what this declares, for the per-connection cache.
    pub(crate) fn cache_key(&self) -> String {
        match self {
            Decl::Exchange { name, .. } => format!("x {name}"),
            Decl::Queue { name, .. } => format!("q {name}"),
            Decl::Bind {
                queue,
                exchange,
                key,
            } => format!("b {queue} {exchange} {key}"),
        }
    }

    /// Declares it on `ch`. Everything aether declares is durable.
    pub(crate) async fn run(&self, ch: &Chan) -> Result<(), AmqpError> {
        let result = match self {
            Decl::Exchange { name, kind, args } => {
                ch.channel
                    .exchange_declare(
                        ExchangeDeclareArguments::new(name, kind)
                            .durable(true)
                            .arguments(args.clone())
                            .finish(),
                    )
                    .await
            }
            Decl::Queue { name, args } => {
                let declared = ch
                    .channel
                    .queue_declare(
                        QueueDeclareArguments::durable_client_named(name)
                            .arguments(args.clone())
                            .finish(),
                    )
                    .await
                    .map(drop);
                return declared.map_err(|e| match ch.failure(e) {
                    AmqpError::ChannelClosed { code: 406, text } => AmqpError::QueueMismatch {
                        queue: name.clone(),
                        text,
                    },
                    other => other,
                });
            }
            Decl::Bind {
                queue,
                exchange,
                key,
            } => {
                ch.channel
                    .queue_bind(QueueBindArguments::new(queue, exchange, key))
                    .await
            }
        };
        result.map_err(|e| ch.failure(e))
    }
}

/// Inserts `value` under `key`.
pub(crate) fn insert(table: &mut FieldTable, key: &str, value: FieldValue) {
    table.insert(key.try_into().expect("field names here are short"), value);
}

/// Conversion into an AMQP field value.
pub(crate) trait IntoField {
    fn into_field(self) -> FieldValue;
}

impl IntoField for String {
    fn into_field(self) -> FieldValue {
        FieldValue::S(self.try_into().expect("a long string holds 4 GiB"))
    }
}

impl IntoField for &str {
    fn into_field(self) -> FieldValue {
        self.to_owned().into_field()
    }
}

impl IntoField for i64 {
    fn into_field(self) -> FieldValue {
        FieldValue::l(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_and_binding_keys() {
        let t: Topic = "u3/interop/echo/x/72605384/perform".parse().unwrap();
        assert_eq!(routing_key(&t), "u3.interop.echo.x.72605384.perform");
        assert_eq!(parse_routing_key(&routing_key(&t)).unwrap(), t);
        let f: TopicFilter = "u3/interop/+/x/#".parse().unwrap();
        assert_eq!(binding(&f), "u3.interop.*.x.#");
    }

    #[test]
    fn names_follow_the_configuration() {
        let t = Topology::new(&AmqpConfig::default());
        let q = WorkQueue::new("u3", "img", "resize", "x", "workgroup").unwrap();
        assert!(t.per_union());
        assert_eq!(t.broadcast("u3"), "aether.u3");
        assert_eq!(t.work("u3"), "aether.u3.work");
        assert_eq!(
            t.work_queue(&q).unwrap(),
            "aether.u3.img.resize.x.workgroup"
        );
        assert_eq!(
            t.holding_queue(&q).unwrap(),
            "aether.u3.img.resize.x:unrouted"
        );
        assert_eq!(Topology::work_key(&q), "u3.img.resize.x");
        let one = Topology::new(&AmqpConfig::default().exchange("bus"));
        assert!(!one.per_union());
        assert_eq!(one.broadcast("u3"), "bus");
        let long = "a".repeat(64);
        let q = WorkQueue::new(&long, &long, &long, &long, "w").unwrap();
        let err = t.work_queue(&q).unwrap_err().to_string();
        assert!(err.contains("RabbitMQ allows 255"), "{err}");
    }

    #[test]
    fn dead_letters_take_the_queue_type() {
        let queue_type = |c: AmqpConfig| {
            let decls = Topology::new(&c).dead_letters();
            let Decl::Queue { args, .. } = &decls[1] else {
                panic!("the dead-letter queue is second: {decls:?}")
            };
            args.as_ref()
                .get(&"x-queue-type".try_into().unwrap())
                .map(|v| v.to_string())
        };
        assert_eq!(queue_type(AmqpConfig::default()), None);
        let quorum = queue_type(AmqpConfig::default().queue_type(QueueType::Quorum));
        assert!(quorum.is_some_and(|t| t.contains("quorum")));
    }

    #[test]
    fn consumers_declare_what_enqueues_do_and_their_queue() {
        let t = Topology::new(&AmqpConfig::default());
        let q = WorkQueue::new("u", "j", "t", "x", "g").unwrap();
        let keys = |d: Vec<Decl>| d.iter().map(Decl::cache_key).collect::<Vec<_>>();
        let enqueue = keys(t.enqueue_decls(&q).unwrap());
        let consume = keys(t.consume_decls(&q).unwrap());
        assert!(consume.starts_with(&enqueue));
        assert_eq!(
            &consume[enqueue.len()..],
            [
                "q aether.u.j.t.x.g",
                "b aether.u.j.t.x.g aether.u.work u.j.t.x"
            ]
        );
    }
}
