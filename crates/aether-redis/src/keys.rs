//! Key names. Every key of one queue (union, job, task, context) carries the same hash tag,
//! `{union:job:task:context}`, so the multi-key scripts of a queue run on one node of a
//! Redis Cluster.

use aether_core::{Topic, TopicError, TopicFilter, WorkQueue};

/// The pub/sub channel of a topic: its levels joined by `:`.
pub(crate) fn channel(topic: &Topic) -> String {
    topic.joined(':')
}

/// Parses a pub/sub channel name back into a topic.
pub(crate) fn parse_channel(channel: &str) -> Result<Topic, TopicError> {
    Topic::parse_with(channel, ':')
}

/// A `PSUBSCRIBE` glob over channel names. `+` becomes `*`; since every topic has exactly
/// six levels and segments cannot contain `:`, a `*` between literal separators never spans
/// a level. `#` becomes a trailing `*`.
pub(crate) fn glob(filter: &TopicFilter) -> String {
    filter.render(':', "*", "*")
}

/// The keys of one queue, for a given prefix.
#[derive(Clone, Debug)]
pub(crate) struct QueueKeys {
    /// `{prefix}:{u:j:t:x}`; every key of the queue starts with it.
    base: String,
    /// `u/j/t/x/`, to rebuild a topic's MQTT form inside scripts.
    pub(crate) topic_prefix: String,
}

impl QueueKeys {
    pub(crate) fn new(prefix: &str, queue: &WorkQueue) -> QueueKeys {
        QueueKeys {
            base: format!("{prefix}:{{{}}}", queue.key(':')),
            topic_prefix: format!("{}/", queue.key('/')),
        }
    }

    /// The keys of the queue `topic` belongs to.
    pub(crate) fn of_topic(prefix: &str, topic: &Topic) -> QueueKeys {
        let q = WorkQueue::of_topic(topic, "_").expect("a valid topic makes a valid queue");
        QueueKeys::new(prefix, &q)
    }

    /// Streams mode: the stream of performs.
    pub(crate) fn stream(&self) -> String {
        format!("{}:stream", self.base)
    }

    /// The dead-letter stream of the queue (both modes).
    pub(crate) fn dead(&self) -> String {
        format!("{}:dead", self.base)
    }

    /// List mode: the set of workgroups consuming the queue.
    pub(crate) fn groups(&self) -> String {
        format!("{}:groups", self.base)
    }

    /// List mode: performs sent while no workgroup was registered.
    pub(crate) fn backlog(&self) -> String {
        format!("{}:backlog", self.base)
    }

    /// List mode: `{base}:wg:`, the start of a workgroup's pending list (the name follows).
    pub(crate) fn group_list_prefix(&self) -> String {
        format!("{}:wg:", self.base)
    }

    /// List mode: a workgroup's pending list.
    pub(crate) fn group_list(&self, group: &str) -> String {
        format!("{}:wg:{group}", self.base)
    }

    /// List mode: a workgroup's consumers, scored by when their presence expires (ms).
    pub(crate) fn consumers(&self, group: &str) -> String {
        format!("{}:wg:{group}:consumers", self.base)
    }

    /// List mode: `{base}:wg:{group}:p:`, the start of a consumer's processing list.
    pub(crate) fn processing_prefix(&self, group: &str) -> String {
        format!("{}:wg:{group}:p:", self.base)
    }
}

/// The dead-letter stream for letters whose topic is not valid.
pub(crate) fn global_dead(prefix: &str) -> String {
    format!("{prefix}:dead")
}

/// A consumer name unique to this process and call: `{pid}-{random}`.
pub(crate) fn consumer_name() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("c{}-{}", std::process::id(), &id[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_queue_shares_its_hash_tag() {
        let q = WorkQueue::new("u", "j", "t", "x", "wg").unwrap();
        let k = QueueKeys::new("aether", &q);
        for key in [
            k.stream(),
            k.dead(),
            k.groups(),
            k.backlog(),
            k.group_list("wg"),
            k.consumers("wg"),
            format!("{}c1", k.processing_prefix("wg")),
        ] {
            assert!(key.starts_with("aether:{u:j:t:x}:"), "{key}");
        }
        assert_eq!(k.topic_prefix, "u/j/t/x/");
        assert_eq!(k.group_list("wg"), format!("{}wg", k.group_list_prefix()));
    }
}

#[cfg(test)]
mod topic_tests {
    use super::*;

    #[test]
    fn channels_and_globs() {
        let t: Topic = "u3/interop/echo/x/72605384/perform".parse().unwrap();
        assert_eq!(channel(&t), "u3:interop:echo:x:72605384:perform");
        assert_eq!(parse_channel(&channel(&t)).unwrap(), t);
        let f: TopicFilter = "u3/interop/+/x/+/status".parse().unwrap();
        assert_eq!(glob(&f), "u3:interop:*:x:*:status");
        let f: TopicFilter = "u/j/+/x/#".parse().unwrap();
        assert_eq!(glob(&f), "u:j:*:x:*");
    }
}
