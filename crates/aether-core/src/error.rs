//! The one error type of aether, and the typed errors it wraps.

use std::fmt;

/// A `Result` whose error defaults to [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed error, as handlers and adapters hand them over.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in aether.
///
/// Task outcomes other than success ([`Error::TaskFailed`], [`Error::Cancelled`],
/// [`Error::DeadlineExceeded`], [`Error::WorkerLost`]) are variants here too, so
/// `handle.result().await?` composes with the rest of an application's errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A topic, filter or one of its segments was refused.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// A payload could not be decoded as an envelope.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A value could not be encoded.
    #[error("encoding failed: {0}")]
    Encode(String),
    /// An encoded message is larger than the configured or transport limit.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Size of the encoded message.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The transport cannot do what was asked.
    #[error("the {transport} transport does not support {what}")]
    Unsupported {
        /// Transport name, e.g. `"mqtt"`.
        transport: &'static str,
        /// What was asked for.
        what: String,
    },
    /// The broker client of a transport failed; `backend` names it.
    #[error("{backend}: {source}")]
    Transport {
        /// Backend name, e.g. `"redis"`.
        backend: &'static str,
        /// The client's own error.
        #[source]
        source: BoxError,
    },
    /// A configuration value or URL was refused.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A task with this tid is already in flight from this node; tids must be unique.
    #[error("task {tid} is already in flight from this node; tids must be unique")]
    DuplicateTid {
        /// The tid asked for again.
        tid: String,
    },
    /// A topic whose action is not `perform` was handed to
    /// [`Transport::enqueue`](crate::Transport::enqueue).
    #[error("enqueue takes a perform topic, not {topic}")]
    NotAPerform {
        /// The topic given.
        topic: String,
    },
    /// [`AetherTask::status`](crate::AetherTask::status) or
    /// [`complete`](crate::AetherTask::complete) on a task that was not received through
    /// `on_perform`, so there is no running task to report on.
    #[error("status() and complete() are for a task received through on_perform")]
    NotReceived,
    /// A URL's scheme belongs to an adapter that is not compiled in.
    #[error("the URL scheme `{scheme}` needs the `{feature}` cargo feature of the `aether` crate")]
    FeatureDisabled {
        /// The scheme of the URL.
        scheme: String,
        /// The cargo feature that enables it.
        feature: &'static str,
    },
    /// No channel of that name is registered.
    #[error("no channel named {0:?}")]
    UnknownChannel(String),
    /// The transport, client or worker has been closed.
    #[error("closed")]
    Closed,
    /// The work queue already holds as many performs as its transport keeps (`limit`);
    /// this one was not enqueued. Backpressure: retry later, or raise the limit. A
    /// transport refuses rather than drop a perform no workgroup has consumed yet.
    #[error("the work queue is full ({limit} performs); nothing was enqueued")]
    QueueFull {
        /// The transport's limit, e.g. Redis `max_len`.
        limit: u64,
    },
    /// A broker operation did not finish in time.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// The worker completed the task as failed.
    #[error("task {tid} failed: {message}")]
    TaskFailed {
        /// Task id.
        tid: String,
        /// The worker's error message.
        message: String,
        /// The `data` of the failed completion, `null` if none could be decoded.
        data: serde_json::Value,
    },
    /// The task was cancelled before it completed.
    #[error("task {tid} was cancelled")]
    Cancelled {
        /// Task id.
        tid: String,
    },
    /// The task's deadline passed before it completed.
    #[error("task {tid} passed its deadline")]
    DeadlineExceeded {
        /// Task id.
        tid: String,
    },
    /// No worker accepted the task, or the worker that had it went silent, on every attempt.
    #[error("task {tid}: no worker accepted it or kept it alive in {attempts} attempts")]
    WorkerLost {
        /// Task id.
        tid: String,
        /// How many times it was dispatched.
        attempts: u32,
    },
}

impl Error {
    /// Wraps a broker client's error, naming the backend.
    pub fn transport(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Transport {
            backend,
            source: source.into(),
        }
    }

    /// An [`Error::Unsupported`] for `transport`.
    pub fn unsupported(transport: &'static str, what: impl Into<String>) -> Self {
        Error::Unsupported {
            transport,
            what: what.into(),
        }
    }

    /// Whether this is a task outcome (failed, cancelled, deadline, lost) rather than an
    /// error of aether or the broker.
    pub fn is_task_outcome(&self) -> bool {
        matches!(
            self,
            Error::TaskFailed { .. }
                | Error::Cancelled { .. }
                | Error::DeadlineExceeded { .. }
                | Error::WorkerLost { .. }
        )
    }
}

/// The level of a topic, to say which segment an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Level {
    /// First level: the union (namespace shared by cooperating services).
    Union,
    /// Second level: the job.
    Job,
    /// Third level: the task.
    Task,
    /// Fourth level: the context.
    Context,
    /// Fifth level: the task id.
    Tid,
    /// Sixth level: the action.
    Action,
    /// A workgroup name (not a topic level, but validated like one).
    Workgroup,
}

impl Level {
    /// The six topic levels in order.
    pub const TOPIC: [Level; 6] = [
        Level::Union,
        Level::Job,
        Level::Task,
        Level::Context,
        Level::Tid,
        Level::Action,
    ];

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Union => "union",
            Level::Job => "job",
            Level::Task => "task",
            Level::Context => "context",
            Level::Tid => "tid",
            Level::Action => "action",
            Level::Workgroup => "workgroup",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a topic, filter or segment was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// A segment is empty.
    #[error("the {level} segment is empty")]
    Empty {
        /// Which segment.
        level: Level,
    },
    /// A segment contains a character that some transport uses as a separator or wildcard.
    #[error("the {level} segment {segment:?} contains {ch:?} at byte {at}: {reason}")]
    ForbiddenChar {
        /// Which segment.
        level: Level,
        /// The refused segment.
        segment: String,
        /// The refused character.
        ch: char,
        /// Its byte offset in the segment.
        at: usize,
        /// Why the character is refused.
        reason: &'static str,
    },
    /// A segment arrived as bytes that are not UTF-8 (from a broker that carries bytes).
    #[error("the {level} segment is not UTF-8")]
    NotUtf8 {
        /// Which segment.
        level: Level,
    },
    /// A segment is longer than [`crate::topic::MAX_SEGMENT_LEN`].
    #[error("the {level} segment is {len} bytes long; the limit is {max}")]
    TooLong {
        /// Which segment.
        level: Level,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The whole topic is longer than [`crate::topic::MAX_TOPIC_LEN`].
    #[error("the topic is {len} bytes long; the limit is {max} (AMQP routing keys)")]
    TopicTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The topic does not have the six levels `union/job/task/context/tid/action`.
    #[error("the topic has {found} levels; expected 6: union/job/task/context/tid/action")]
    WrongLevels {
        /// How many levels were found.
        found: usize,
    },
    /// The action level names no known action.
    #[error("unknown action {0:?}")]
    UnknownAction(String),
    /// A filter has `#` before its last level.
    #[error("'#' may only be the last level of a filter")]
    HashNotLast,
    /// A wildcard shares its level with other characters (`a+`, `#b`).
    #[error("a wildcard must be a whole level, not part of {segment:?}")]
    PartialWildcard {
        /// The refused level text.
        segment: String,
    },
}

/// Why a payload could not be decoded as an envelope.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The payload is empty.
    #[error("empty payload")]
    Empty,
    /// The first byte is neither a JSON object nor a MessagePack map.
    #[error("payload is neither a JSON object nor a MessagePack map (first byte 0x{0:02x})")]
    UnknownFormat(u8),
    /// The payload is JSON but not a valid envelope.
    #[error("invalid JSON envelope: {0}")]
    Json(#[source] serde_json::Error),
    /// The payload is MessagePack but not a valid envelope.
    #[error("invalid MessagePack envelope: {0}")]
    MsgPack(#[source] rmp_serde::decode::Error),
    /// The `action` field names no known action.
    #[error("unknown action {0:?}")]
    UnknownAction(String),
    /// The `status` field names no known status.
    #[error("unknown status {0:?}")]
    UnknownStatus(String),
    /// The `progress` field is outside 0-100 or not a number.
    #[error("progress {0} is outside 0-100")]
    ProgressOutOfRange(f64),
    /// The message nests deeper than `limit` levels (its own object is the first).
    #[error("the message nests deeper than {limit} levels")]
    TooDeep {
        /// The deepest nesting accepted: [`crate::envelope::MAX_DEPTH`].
        limit: usize,
    },
    /// A string in the message (or, for JSON, the payload) is not valid UTF-8.
    #[error("the message holds text that is not valid UTF-8")]
    InvalidUtf8,
    /// The payload is not one well-formed MessagePack value: what is wrong.
    #[error("invalid MessagePack: {0}")]
    MsgPackStructure(&'static str),
}
