//! What a broadcast seen by `aether watch` and `aether workers` means: one [`Event`] per
//! message, classified by its action and status.

use aether::{Action, Envelope, Message, Status, TopicFilter};
use serde_json::{Map, Value, json};

use crate::exit::{Failure, Outcome};

/// The kinds of event, as `-o json` spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A perform (seen on MQTT only: elsewhere performs travel on work queues).
    Perform,
    /// A worker's status; progress 0 is its acceptance.
    Status,
    /// The worker completed the task successfully.
    Succeeded,
    /// The worker completed the task as failed.
    Failed,
    /// A client asked for the task to stop.
    Cancel,
    /// A worker is ready for a job/task/context.
    Idle,
    /// A process connected.
    Online,
    /// A process left (a clean goodbye or MQTT's last will).
    Offline,
    /// A party said it is no longer interested.
    Dismiss,
}

/// One message, decoded.
#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) kind: Kind,
    pub(crate) message: Message,
    pub(crate) envelope: Envelope,
}

impl Event {
    /// Classifies a received broadcast; `None` for one that does not decode.
    pub(crate) fn of(message: Message) -> Option<Event> {
        let envelope = Envelope::decode(message.payload.clone()).ok()?;
        let h = envelope.header();
        let kind = match (message.topic.action(), h.status) {
            (Action::Perform, _) => Kind::Perform,
            (Action::Status, _) => Kind::Status,
            (Action::Complete, Status::Succeed) => Kind::Succeeded,
            (Action::Complete, _) => Kind::Failed,
            (Action::Cancel, _) => Kind::Cancel,
            (Action::Idle, _) => Kind::Idle,
            (Action::Online, Status::Dismissed) => Kind::Offline,
            (Action::Online, _) => Kind::Online,
            (Action::Dismiss, _) => Kind::Dismiss,
            _ => return None,
        };
        Some(Event {
            kind,
            message,
            envelope,
        })
    }

    /// `job/task/context` of the topic.
    pub(crate) fn address(&self) -> String {
        let t = &self.message.topic;
        format!("{}/{}/{}", t.job(), t.task(), t.context())
    }

    pub(crate) fn tid(&self) -> &str {
        self.message.topic.tid()
    }

    pub(crate) fn progress(&self) -> u8 {
        self.envelope.header().progress
    }

    /// The event as one JSON object; `extra` fields are added (e.g. `duration_ms`).
    pub(crate) fn json(&self, name: &str, ts_ms: u64, extra: Map<String, Value>) -> Value {
        let t = &self.message.topic;
        let h = self.envelope.header();
        let mut obj = json!({
            "ts_ms": ts_ms,
            "event": name,
            "union": t.union(),
            "job": t.job(),
            "task": t.task(),
            "context": t.context(),
            "tid": t.tid(),
            "host": h.host,
            "client": h.client,
            "progress": h.progress,
        });
        let map = obj.as_object_mut().expect("an object");
        let data = self.envelope.data_value();
        if !matches!(&data, Value::Null) && data != json!({}) {
            map.insert("data".into(), data);
        }
        if let Some(e) = &h.error {
            map.insert("error".into(), json!(e));
        }
        if let Some(a) = h.attempt {
            map.insert("attempt".into(), json!(a));
        }
        map.extend(extra);
        obj
    }
}

/// `{union}/{filter}`: a filter below the union, `#` by default.
pub(crate) fn filter(union: &str, below: Option<&str>) -> Result<TopicFilter, Failure> {
    let below = below.unwrap_or("#").trim_matches('/');
    format!("{union}/{below}").parse::<TopicFilter>().map_err(|e| {
        Failure::new(
            Outcome::Usage,
            format!("{below:?} is not a filter below the union (JOB/TASK/CONTEXT/TID/ACTION with + and a final #): {e}"),
        )
    })
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `HH:MM:SS.mmm` (UTC) of a Unix time in milliseconds.
pub(crate) fn clock(ms: u64) -> String {
    let s = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_below_the_union() {
        assert_eq!(filter("u", None).unwrap().as_str(), "u/#");
        assert_eq!(
            filter("u", Some("orders/#")).unwrap().as_str(),
            "u/orders/#"
        );
        assert!(filter("u", Some("orders/#/x")).is_err());
    }

    #[test]
    fn clock_is_utc() {
        assert_eq!(clock(3_600_000 + 61_005), "01:01:01.005");
    }
}
