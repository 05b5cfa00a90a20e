//! The frames between a peer (DEALER) and the device (ROUTER), encoded and decoded without
//! I/O. Every message is one multipart message: a header frame (a kind byte, then
//! little-endian integers), then the text and payload frames the kind has.
//!
//! | kind | direction | header | frames after |
//! |------|-----------|--------|--------------|
//! | `H` hello | peer → device | | |
//! | `h` ping | peer → device | | |
//! | `S` subscribe | peer → device | req, sub | filter |
//! | `U` unsubscribe | peer → device | sub | |
//! | `P` publish | peer → device | | topic, payload |
//! | `E` enqueue | peer → device | req | topic, payload |
//! | `R` ready (consume) | peer → device | req, consumer, prefetch | `union/job/task/context/workgroup` |
//! | `C` cancel consumer | peer → device | consumer | |
//! | `K` ack | peer → device | session, delivery | |
//! | `N` nack | peer → device | session, delivery, requeue | |
//! | `X` reject | peer → device | session, delivery, reason | reason text |
//! | `L` dead letter | peer → device | req, reason | topic, payload, reason text |
//! | `Q` bye | peer → device | | |
//! | `W` welcome | device → peer | session, heartbeat ms, max payload | |
//! | `B` heartbeat | device → peer | session, last broadcast seq | |
//! | `M` broadcast | device → peer | seq | topic, payload |
//! | `D` delivery | device → peer | session, consumer, delivery, redeliveries | topic, payload |
//! | `O` ok | device → peer | req | |
//! | `F` refused | device → peer | req, code, limit | reason text |
//!
//! A session is the device's state for one peer: it changes when the device restarts or
//! forgets a peer that went silent, and the peer then subscribes and consumes again.
//! Broadcasts to a peer are numbered; a missing number (or a heartbeat naming a later one)
//! is a gap the peer reports to its subscriptions.

use bytes::Bytes;

use aether_core::DeadLetterReason;

/// A message from a peer to the device.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ToDevice {
    Hello,
    Ping,
    Subscribe {
        req: u64,
        sub: u64,
        filter: String,
    },
    Unsubscribe {
        sub: u64,
    },
    Publish {
        topic: String,
        payload: Bytes,
    },
    Enqueue {
        req: u64,
        topic: String,
        payload: Bytes,
    },
    Ready {
        req: u64,
        consumer: u64,
        prefetch: u32,
        queue: String,
    },
    Cancel {
        consumer: u64,
    },
    Ack {
        session: u64,
        delivery: u64,
    },
    Nack {
        session: u64,
        delivery: u64,
        requeue: bool,
    },
    Reject {
        session: u64,
        delivery: u64,
        reason: DeadLetterReason,
    },
    DeadLetter {
        req: u64,
        topic: String,
        payload: Bytes,
        reason: DeadLetterReason,
    },
    Bye,
}

/// Why the device refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The work queue is full; `limit` is its capacity.
    QueueFull,
    /// The payload is over the device's limit.
    TooLarge,
    /// A topic, filter or queue did not parse.
    Invalid,
}

/// A message from the device to a peer.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ToPeer {
    Welcome {
        session: u64,
        heartbeat_ms: u32,
        max_payload: u64,
    },
    Heartbeat {
        session: u64,
        seq: u64,
    },
    Broadcast {
        seq: u64,
        topic: String,
        payload: Bytes,
    },
    Delivery {
        session: u64,
        consumer: u64,
        delivery: u64,
        redeliveries: u32,
        topic: String,
        payload: Bytes,
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
}

/// A message that does not decode: counted and dropped by whoever received it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed frame: {0}")]
pub(crate) struct Malformed(pub(crate) &'static str);

/// The frames of one message.
pub(crate) type Frames = Vec<Bytes>;

struct Header(Vec<u8>);

impl Header {
    fn new(kind: u8) -> Header {
        let mut v = Vec::with_capacity(40);
        v.push(kind);
        Header(v)
    }
    fn u64(mut self, n: u64) -> Header {
        self.0.extend_from_slice(&n.to_le_bytes());
        self
    }
    fn u32(mut self, n: u32) -> Header {
        self.0.extend_from_slice(&n.to_le_bytes());
        self
    }
    fn u8(mut self, n: u8) -> Header {
        self.0.push(n);
        self
    }
    fn done(self) -> Bytes {
        Bytes::from(self.0)
    }
}

/// Reads a header frame's fields in order.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        if self.0.len() < N {
            return Err(Malformed("header too short"));
        }
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        Ok(head.try_into().expect("length checked"))
    }
    fn u64(&mut self) -> Result<u64, Malformed> {
        self.take::<8>().map(u64::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, Malformed> {
        self.take::<4>().map(u32::from_le_bytes)
    }
    fn u8(&mut self) -> Result<u8, Malformed> {
        self.take::<1>().map(|b| b[0])
    }
}

fn text(frame: Option<&Bytes>) -> Result<String, Malformed> {
    let frame = frame.ok_or(Malformed("a frame is missing"))?;
    String::from_utf8(frame.to_vec()).map_err(|_| Malformed("text frame is not UTF-8"))
}

fn payload(frame: Option<&Bytes>) -> Result<Bytes, Malformed> {
    frame
        .cloned()
        .ok_or(Malformed("the payload frame is missing"))
}

/// The reason's tag and numbers for the header, and its text for a frame.
fn reason_parts(reason: &DeadLetterReason) -> (u8, u64, u64, String) {
    match reason {
        DeadLetterReason::Malformed(s) => (0, 0, 0, s.clone()),
        DeadLetterReason::InvalidTopic(s) => (1, 0, 0, s.clone()),
        DeadLetterReason::Oversized { size, limit } => {
            (2, *size as u64, *limit as u64, String::new())
        }
        DeadLetterReason::UnexpectedAction(s) => (3, 0, 0, s.clone()),
        DeadLetterReason::AttemptsExhausted { attempts } => {
            (4, u64::from(*attempts), 0, String::new())
        }
        DeadLetterReason::RetriesExhausted { attempts, error } => {
            (5, u64::from(*attempts), 0, error.clone())
        }
        other => (0, 0, 0, other.to_string()),
    }
}

fn reason_from(tag: u8, a: u64, b: u64, text: String) -> Result<DeadLetterReason, Malformed> {
    let n32 = |n: u64| u32::try_from(n).map_err(|_| Malformed("a count out of range"));
    Ok(match tag {
        0 => DeadLetterReason::Malformed(text),
        1 => DeadLetterReason::InvalidTopic(text),
        2 => DeadLetterReason::Oversized {
            size: a as usize,
            limit: b as usize,
        },
        3 => DeadLetterReason::UnexpectedAction(text),
        4 => DeadLetterReason::AttemptsExhausted { attempts: n32(a)? },
        5 => DeadLetterReason::RetriesExhausted {
            attempts: n32(a)?,
            error: text,
        },
        _ => return Err(Malformed("unknown dead-letter reason")),
    })
}

impl ToDevice {
    /// The frames of this message.
    pub(crate) fn encode(&self) -> Frames {
        match self {
            ToDevice::Hello => vec![Header::new(b'H').done()],
            ToDevice::Ping => vec![Header::new(b'h').done()],
            ToDevice::Subscribe { req, sub, filter } => vec![
                Header::new(b'S').u64(*req).u64(*sub).done(),
                Bytes::from(filter.clone()),
            ],
            ToDevice::Unsubscribe { sub } => vec![Header::new(b'U').u64(*sub).done()],
            ToDevice::Publish { topic, payload } => vec![
                Header::new(b'P').done(),
                Bytes::from(topic.clone()),
                payload.clone(),
            ],
            ToDevice::Enqueue {
                req,
                topic,
                payload,
            } => vec![
                Header::new(b'E').u64(*req).done(),
                Bytes::from(topic.clone()),
                payload.clone(),
            ],
            ToDevice::Ready {
                req,
                consumer,
                prefetch,
                queue,
            } => vec![
                Header::new(b'R')
                    .u64(*req)
                    .u64(*consumer)
                    .u32(*prefetch)
                    .done(),
                Bytes::from(queue.clone()),
            ],
            ToDevice::Cancel { consumer } => vec![Header::new(b'C').u64(*consumer).done()],
            ToDevice::Ack { session, delivery } => {
                vec![Header::new(b'K').u64(*session).u64(*delivery).done()]
            }
            ToDevice::Nack {
                session,
                delivery,
                requeue,
            } => vec![
                Header::new(b'N')
                    .u64(*session)
                    .u64(*delivery)
                    .u8(u8::from(*requeue))
                    .done(),
            ],
            ToDevice::Reject {
                session,
                delivery,
                reason,
            } => {
                let (tag, a, b, text) = reason_parts(reason);
                let h = Header::new(b'X').u64(*session).u64(*delivery);
                vec![h.u8(tag).u64(a).u64(b).done(), Bytes::from(text)]
            }
            ToDevice::DeadLetter {
                req,
                topic,
                payload,
                reason,
            } => {
                let (tag, a, b, text) = reason_parts(reason);
                vec![
                    Header::new(b'L').u64(*req).u8(tag).u64(a).u64(b).done(),
                    Bytes::from(topic.clone()),
                    payload.clone(),
                    Bytes::from(text),
                ]
            }
            ToDevice::Bye => vec![Header::new(b'Q').done()],
        }
    }

    /// Decodes the frames of a peer's message (without the routing id).
    pub(crate) fn decode(frames: &[Bytes]) -> Result<ToDevice, Malformed> {
        let head = frames.first().ok_or(Malformed("no frame"))?;
        let (&kind, rest) = head.split_first().ok_or(Malformed("empty header"))?;
        let mut r = Reader(rest);
        let f = |i: usize| frames.get(i);
        Ok(match kind {
            b'H' => ToDevice::Hello,
            b'h' => ToDevice::Ping,
            b'S' => ToDevice::Subscribe {
                req: r.u64()?,
                sub: r.u64()?,
                filter: text(f(1))?,
            },
            b'U' => ToDevice::Unsubscribe { sub: r.u64()? },
            b'P' => ToDevice::Publish {
                topic: text(f(1))?,
                payload: payload(f(2))?,
            },
            b'E' => ToDevice::Enqueue {
                req: r.u64()?,
                topic: text(f(1))?,
                payload: payload(f(2))?,
            },
            b'R' => ToDevice::Ready {
                req: r.u64()?,
                consumer: r.u64()?,
                prefetch: r.u32()?,
                queue: text(f(1))?,
            },
            b'C' => ToDevice::Cancel { consumer: r.u64()? },
            b'K' => ToDevice::Ack {
                session: r.u64()?,
                delivery: r.u64()?,
            },
            b'N' => ToDevice::Nack {
                session: r.u64()?,
                delivery: r.u64()?,
                requeue: r.u8()? != 0,
            },
            b'X' => {
                let (session, delivery) = (r.u64()?, r.u64()?);
                let (tag, a, b) = (r.u8()?, r.u64()?, r.u64()?);
                ToDevice::Reject {
                    session,
                    delivery,
                    reason: reason_from(tag, a, b, text(f(1))?)?,
                }
            }
            b'L' => {
                let req = r.u64()?;
                let (tag, a, b) = (r.u8()?, r.u64()?, r.u64()?);
                ToDevice::DeadLetter {
                    req,
                    topic: text(f(1))?,
                    payload: payload(f(2))?,
                    reason: reason_from(tag, a, b, text(f(3))?)?,
                }
            }
            b'Q' => ToDevice::Bye,
            _ => return Err(Malformed("unknown kind")),
        })
    }
}

impl ToPeer {
    /// The frames of this message.
    pub(crate) fn encode(&self) -> Frames {
        match self {
            ToPeer::Welcome {
                session,
                heartbeat_ms,
                max_payload,
            } => vec![
                Header::new(b'W')
                    .u64(*session)
                    .u32(*heartbeat_ms)
                    .u64(*max_payload)
                    .done(),
            ],
            ToPeer::Heartbeat { session, seq } => {
                vec![Header::new(b'B').u64(*session).u64(*seq).done()]
            }
            ToPeer::Broadcast {
                seq,
                topic,
                payload,
            } => vec![
                Header::new(b'M').u64(*seq).done(),
                Bytes::from(topic.clone()),
                payload.clone(),
            ],
            ToPeer::Delivery {
                session,
                consumer,
                delivery,
                redeliveries,
                topic,
                payload,
            } => vec![
                Header::new(b'D')
                    .u64(*session)
                    .u64(*consumer)
                    .u64(*delivery)
                    .u32(*redeliveries)
                    .done(),
                Bytes::from(topic.clone()),
                payload.clone(),
            ],
            ToPeer::Ok { req } => vec![Header::new(b'O').u64(*req).done()],
            ToPeer::Refused {
                req,
                why,
                limit,
                text,
            } => {
                let code = match why {
                    Refusal::QueueFull => 1,
                    Refusal::TooLarge => 2,
                    Refusal::Invalid => 3,
                };
                vec![
                    Header::new(b'F').u64(*req).u8(code).u64(*limit).done(),
                    Bytes::from(text.clone()),
                ]
            }
        }
    }

    /// Decodes the frames of the device's message.
    pub(crate) fn decode(frames: &[Bytes]) -> Result<ToPeer, Malformed> {
        let head = frames.first().ok_or(Malformed("no frame"))?;
        let (&kind, rest) = head.split_first().ok_or(Malformed("empty header"))?;
        let mut r = Reader(rest);
        let f = |i: usize| frames.get(i);
        Ok(match kind {
            b'W' => ToPeer::Welcome {
                session: r.u64()?,
                heartbeat_ms: r.u32()?,
                max_payload: r.u64()?,
            },
            b'B' => ToPeer::Heartbeat {
                session: r.u64()?,
                seq: r.u64()?,
            },
            b'M' => ToPeer::Broadcast {
                seq: r.u64()?,
                topic: text(f(1))?,
                payload: payload(f(2))?,
            },
            b'D' => ToPeer::Delivery {
                session: r.u64()?,
                consumer: r.u64()?,
                delivery: r.u64()?,
                redeliveries: r.u32()?,
                topic: text(f(1))?,
                payload: payload(f(2))?,
            },
            b'O' => ToPeer::Ok { req: r.u64()? },
            b'F' => {
                let req = r.u64()?;
                let why = match r.u8()? {
                    1 => Refusal::QueueFull,
                    2 => Refusal::TooLarge,
                    3 => Refusal::Invalid,
                    _ => return Err(Malformed("unknown refusal")),
                };
                ToPeer::Refused {
                    req,
                    why,
                    limit: r.u64()?,
                    text: text(f(1))?,
                }
            }
            _ => return Err(Malformed("unknown kind")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips() {
        let p = Bytes::from_static(b"{\"x\":1}");
        let to_device = [
            ToDevice::Hello,
            ToDevice::Ping,
            ToDevice::Subscribe {
                req: 1,
                sub: 2,
                filter: "u/+/#".into(),
            },
            ToDevice::Unsubscribe { sub: 3 },
            ToDevice::Publish {
                topic: "u/j/t/x/1/status".into(),
                payload: p.clone(),
            },
            ToDevice::Enqueue {
                req: 4,
                topic: "u/j/t/x/1/perform".into(),
                payload: p.clone(),
            },
            ToDevice::Ready {
                req: 5,
                consumer: 6,
                prefetch: 16,
                queue: "u/j/t/x/g".into(),
            },
            ToDevice::Cancel { consumer: 6 },
            ToDevice::Ack {
                session: 7,
                delivery: 8,
            },
            ToDevice::Nack {
                session: 7,
                delivery: 9,
                requeue: true,
            },
            ToDevice::Reject {
                session: 7,
                delivery: 10,
                reason: DeadLetterReason::RetriesExhausted {
                    attempts: 3,
                    error: "boom".into(),
                },
            },
            ToDevice::DeadLetter {
                req: 11,
                topic: "u/j/t/x/1/perform".into(),
                payload: p.clone(),
                reason: DeadLetterReason::Oversized { size: 9, limit: 4 },
            },
            ToDevice::Bye,
        ];
        for m in to_device {
            assert_eq!(ToDevice::decode(&m.encode()), Ok(m.clone()), "{m:?}");
        }
        let to_peer = [
            ToPeer::Welcome {
                session: 1,
                heartbeat_ms: 1000,
                max_payload: 1 << 20,
            },
            ToPeer::Heartbeat { session: 1, seq: 9 },
            ToPeer::Broadcast {
                seq: 10,
                topic: "u/j/t/x/1/status".into(),
                payload: p.clone(),
            },
            ToPeer::Delivery {
                session: 1,
                consumer: 2,
                delivery: 3,
                redeliveries: 1,
                topic: "u/j/t/x/1/perform".into(),
                payload: p.clone(),
            },
            ToPeer::Ok { req: 4 },
            ToPeer::Refused {
                req: 5,
                why: Refusal::QueueFull,
                limit: 8,
                text: "full".into(),
            },
        ];
        for m in to_peer {
            assert_eq!(ToPeer::decode(&m.encode()), Ok(m.clone()), "{m:?}");
        }
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        let cases: &[&[&[u8]]] = &[
            &[],
            &[b""],
            &[b"Z"],
            &[b"S\x01"],
            &[b"S\x01\0\0\0\0\0\0\0\x02\0\0\0\0\0\0\0"],
            &[b"S\x01\0\0\0\0\0\0\0\x02\0\0\0\0\0\0\0", b"\xff\xfe"],
            &[b"P", b"u/j/t/x/1/status"],
            &[b"X\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x09", b""],
        ];
        for (i, frames) in cases.iter().enumerate() {
            let frames: Vec<Bytes> = frames.iter().map(|f| Bytes::copy_from_slice(f)).collect();
            assert!(ToDevice::decode(&frames).is_err(), "case {i}");
            assert!(ToPeer::decode(&frames).is_err(), "case {i}");
        }
    }
}
