//! The frames between a peer and the hub, encoded and decoded without I/O.
//!
//! Two protocols share the `/ws` endpoint, told apart by the WebSocket frame type:
//!
//! - **aether** (binary frames): one MessagePack value per frame, [`ToHub`] from the peer,
//!   [`ToPeer`] from the hub: `{variant: [fields in declared order]}`. A frame whose fields
//!   are a map by name (how the hub and peers wrote them at first) decodes the same. Requests carry a `req` the hub answers with `Ok` or
//!   `Refused`; broadcasts are numbered per connection (`seq`) so a peer sees a gap;
//!   deliveries carry a `tag` the peer settles with `Ack`, `Nack`, `Reject`.
//! - **seed** (text frames): the Python AetherMagic hub's JSON, [`SeedFrame`]:
//!   `{"type": "subscribe"|"unsubscribe"|"publish", ...}` from the peer and
//!   `{"type": "message", "topic", "message"}` from the hub.
//!
//! | aether frame | direction | answer |
//! |--------------|-----------|--------|
//! | `Hello` | peer → hub, first | `Welcome` |
//! | `Subscribe { req, sub, filter }` | peer → hub | `Ok`/`Refused` once active |
//! | `Unsubscribe { sub }` | peer → hub | |
//! | `Publish { req, topic, payload }` | peer → hub | `Ok` once the backend has it |
//! | `Enqueue { req, topic, payload }` | peer → hub | `Ok`, or `Refused` (`QueueFull`...) |
//! | `Consume { req, consumer, queue, prefetch, lease_ms, max_deliveries }` | peer → hub | `Ok` |
//! | `Cancel { consumer }` | peer → hub | |
//! | `Ack`/`Nack`/`Reject`/`KeepAlive { tag, .. }` | peer → hub | |
//! | `DeadLetter { req, topic, payload, reason }` | peer → hub | `Ok`/`Refused` |
//! | `Sync { req }` | peer → hub | `Ok` once everything before it is done |
//! | `Welcome { session, heartbeat_ms, caps }` | hub → peer | |
//! | `Message { sub, seq, topic, payload }` | hub → peer | |
//! | `Delivery { consumer, tag, topic, payload, redeliveries }` | hub → peer | |
//! | `Error { text }` | hub → peer | a frame it could not take, counted |

use aether_core::{Bytes, Capabilities, DeadLetterReason, Error};
use serde::{Deserialize, Serialize};

/// A frame from an aether peer to the hub.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum ToHub {
    Hello,
    Subscribe {
        req: u64,
        sub: u64,
        filter: String,
    },
    Unsubscribe {
        sub: u64,
    },
    Publish {
        req: u64,
        topic: String,
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    Enqueue {
        req: u64,
        topic: String,
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    Consume {
        req: u64,
        consumer: u64,
        queue: QueueSpec,
        prefetch: u32,
        lease_ms: u64,
        max_deliveries: u32,
    },
    Cancel {
        consumer: u64,
    },
    Ack {
        tag: u64,
    },
    Nack {
        tag: u64,
        requeue: bool,
    },
    Reject {
        tag: u64,
        reason: WireReason,
    },
    KeepAlive {
        tag: u64,
    },
    DeadLetter {
        req: u64,
        topic: String,
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
        reason: WireReason,
    },
    Sync {
        req: u64,
    },
}

/// A work queue named on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct QueueSpec {
    pub(crate) union: String,
    pub(crate) job: String,
    pub(crate) task: String,
    pub(crate) context: String,
    pub(crate) workgroup: String,
}

/// A frame from the hub to an aether peer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum ToPeer {
    Welcome {
        session: u64,
        heartbeat_ms: u64,
        caps: WireCaps,
    },
    Ok {
        req: u64,
    },
    Refused {
        req: u64,
        why: Refusal,
        limit: u64,
        text: String,
    },
    Message {
        sub: u64,
        seq: u64,
        topic: String,
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    Delivery {
        consumer: u64,
        tag: u64,
        redeliveries: u32,
        topic: String,
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    Error {
        text: String,
    },
}

/// Why the hub refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Refusal {
    QueueFull,
    TooLarge,
    Invalid,
    Unsupported,
    Closed,
    Backend,
}

impl Refusal {
    /// The refusal answering `e`, with its limit where it has one.
    pub(crate) fn of(e: &Error) -> (Refusal, u64) {
        match e {
            Error::QueueFull { limit } => (Refusal::QueueFull, *limit),
            Error::PayloadTooLarge { limit, .. } => (Refusal::TooLarge, *limit as u64),
            Error::Topic(_) | Error::NotAPerform { .. } | Error::Config(_) => (Refusal::Invalid, 0),
            Error::Unsupported { .. } => (Refusal::Unsupported, 0),
            Error::Closed => (Refusal::Closed, 0),
            _ => (Refusal::Backend, 0),
        }
    }
}

/// The hub's backend capabilities, as the peer reports them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireCaps {
    pub(crate) durable: bool,
    pub(crate) redelivers_on_crash: bool,
    pub(crate) multi_level_wildcards: bool,
    pub(crate) max_payload: u64,
    pub(crate) dead_letters: bool,
}

impl From<&Capabilities> for WireCaps {
    fn from(c: &Capabilities) -> WireCaps {
        WireCaps {
            durable: c.durable,
            redelivers_on_crash: c.redelivers_on_crash,
            multi_level_wildcards: c.multi_level_wildcards,
            max_payload: c.max_payload as u64,
            dead_letters: c.dead_letters,
        }
    }
}

/// [`DeadLetterReason`] on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum WireReason {
    Malformed(String),
    InvalidTopic(String),
    Oversized { size: u64, limit: u64 },
    UnexpectedAction(String),
    AttemptsExhausted { attempts: u32 },
    RetriesExhausted { attempts: u32, error: String },
    Other(String),
}

impl From<&DeadLetterReason> for WireReason {
    fn from(r: &DeadLetterReason) -> WireReason {
        match r {
            DeadLetterReason::Malformed(s) => WireReason::Malformed(s.clone()),
            DeadLetterReason::InvalidTopic(s) => WireReason::InvalidTopic(s.clone()),
            DeadLetterReason::Oversized { size, limit } => WireReason::Oversized {
                size: *size as u64,
                limit: *limit as u64,
            },
            DeadLetterReason::UnexpectedAction(s) => WireReason::UnexpectedAction(s.clone()),
            DeadLetterReason::AttemptsExhausted { attempts } => WireReason::AttemptsExhausted {
                attempts: *attempts,
            },
            DeadLetterReason::RetriesExhausted { attempts, error } => {
                WireReason::RetriesExhausted {
                    attempts: *attempts,
                    error: error.clone(),
                }
            }
            other => WireReason::Other(other.to_string()),
        }
    }
}

impl From<WireReason> for DeadLetterReason {
    fn from(r: WireReason) -> DeadLetterReason {
        match r {
            WireReason::Malformed(s) | WireReason::Other(s) => DeadLetterReason::Malformed(s),
            WireReason::InvalidTopic(s) => DeadLetterReason::InvalidTopic(s),
            WireReason::Oversized { size, limit } => DeadLetterReason::Oversized {
                size: size as usize,
                limit: limit as usize,
            },
            WireReason::UnexpectedAction(s) => DeadLetterReason::UnexpectedAction(s),
            WireReason::AttemptsExhausted { attempts } => {
                DeadLetterReason::AttemptsExhausted { attempts }
            }
            WireReason::RetriesExhausted { attempts, error } => {
                DeadLetterReason::RetriesExhausted { attempts, error }
            }
        }
    }
}

/// A frame of the seed (Python AetherMagic) protocol, either way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(crate) enum SeedFrame {
    Subscribe {
        topic: String,
    },
    Unsubscribe {
        topic: String,
    },
    Publish {
        topic: String,
        message: String,
        #[serde(default)]
        retain: bool,
    },
    Message {
        topic: String,
        message: String,
    },
}

/// Encodes an aether frame (MessagePack, fields as arrays in declared order: no field names
/// to write, skip or compare; new fields go last).
pub(crate) fn encode<T: Serialize>(frame: &T) -> Bytes {
    // Plain data of strings, numbers and byte strings: encoding cannot fail.
    Bytes::from(rmp_serde::to_vec(frame).expect("encodable frame"))
}

/// Decodes an aether frame.
pub(crate) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    rmp_serde::from_slice(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frames = vec![
            ToHub::Publish {
                req: 7,
                topic: "u/j/t/x/1/status".into(),
                payload: b"\x00\xffbin".to_vec(),
            },
            ToHub::Reject {
                tag: 3,
                reason: WireReason::from(&DeadLetterReason::Oversized { size: 9, limit: 4 }),
            },
            ToHub::Consume {
                req: 1,
                consumer: 2,
                queue: QueueSpec {
                    union: "u".into(),
                    job: "j".into(),
                    task: "t".into(),
                    context: "x".into(),
                    workgroup: "g".into(),
                },
                prefetch: 16,
                lease_ms: 30_000,
                max_deliveries: 5,
            },
        ];
        for f in frames {
            assert_eq!(decode::<ToHub>(&encode(&f)).unwrap(), f);
        }
        let peer = ToPeer::Delivery {
            consumer: 2,
            tag: 9,
            redeliveries: 1,
            topic: "u/j/t/x/1/perform".into(),
            payload: b"{}".to_vec(),
        };
        assert_eq!(decode::<ToPeer>(&encode(&peer)).unwrap(), peer);
        assert!(decode::<ToHub>(b"\xc1garbage").is_err());
    }

    #[test]
    fn frames_with_named_fields_decode_too() {
        let ack = ToHub::Ack { tag: 5 };
        let named = rmp_serde::to_vec_named(&ack).unwrap();
        assert_eq!(decode::<ToHub>(&named).unwrap(), ack);
        assert!(encode(&ack).len() < named.len());
        let peer = ToPeer::Message {
            sub: 1,
            seq: 2,
            topic: "u/j/t/x/1/complete".into(),
            payload: b"{}".to_vec(),
        };
        let named = rmp_serde::to_vec_named(&peer).unwrap();
        assert_eq!(decode::<ToPeer>(&named).unwrap(), peer);
    }

    #[test]
    fn seed_frames_parse_as_the_python_hub_sends_them() {
        let f: SeedFrame = serde_json::from_str(
            r#"{"type": "publish", "topic": "u3/a/b/c/1/idle", "message": "{}", "retain": false}"#,
        )
        .unwrap();
        assert!(matches!(f, SeedFrame::Publish { retain: false, .. }));
        let f: SeedFrame =
            serde_json::from_str(r#"{"type": "subscribe", "topic": "$share/g/u3/+/x"}"#).unwrap();
        assert_eq!(
            f,
            SeedFrame::Subscribe {
                topic: "$share/g/u3/+/x".into()
            }
        );
        let out = serde_json::to_string(&SeedFrame::Message {
            topic: "t".into(),
            message: "m".into(),
        })
        .unwrap();
        assert_eq!(out, r#"{"type":"message","topic":"t","message":"m"}"#);
        assert!(serde_json::from_str::<SeedFrame>(r#"{"type": "nope"}"#).is_err());
    }
}
