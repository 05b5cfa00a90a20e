//! The messages between a peer (DEALER) and the device (ROUTER), encoded and decoded without
//! I/O.
//!
//! **Batches.** Each ZeroMQ message carries a batch: one frame holding any number of
//! messages back to back, then one frame for each section too large to copy into it. A
//! message in the batch is its length (`u32`), a kind byte, little-endian integers, then
//! its sections (topic, payload, text), each a `u32` length and its bytes; a section over
//! [`INLINE_MAX`] bytes has the length `u32::MAX` instead and is the next frame after the
//! batch frame. A sender fills a batch with what it has queued, up to [`BATCH_BYTES`]
//! bytes and [`BATCH_MESSAGES`] messages, so libzmq moves one message where it moved one
//! per request. Decoding is total: a batch or message that does not decode is counted and
//! dropped by whoever received it (a message with a good length is skipped; a length that
//! runs past the end ends the batch).
//!
//! | kind | direction | integers | sections |
//! |------|-----------|----------|----------|
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
//! | `O` ok | device → peer | count, then that many reqs | |
//! | `F` refused | device → peer | req, code, limit | reason text |
//!
//! The device answers the requests of one batch it read with one `O` listing their ids
//! (up to [`OK_IDS`] each), after the refusals (`F`) among them.
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
    /// The requests these ids name were carried out.
    Ok {
        reqs: Vec<u64>,
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

/// Sections longer than this travel as frames of their own after the batch frame.
pub(crate) const INLINE_MAX: usize = 8 << 10;
/// A batch takes no more messages once it holds this many bytes (frames after it
/// included).
pub(crate) const BATCH_BYTES: usize = 16 << 10;
// A batch frame stays under the sockets' limit: a full batch, plus one message of three
// inline sections and its integers.
const _: () = assert!(BATCH_BYTES + 3 * INLINE_MAX + 1024 <= crate::config::FRAME_OVERHEAD);
/// A batch takes no more messages than this.
pub(crate) const BATCH_MESSAGES: usize = 256;
/// Most request ids one `O` carries.
pub(crate) const OK_IDS: usize = 1024;
/// The section length that says "the next frame after the batch frame".
const EXTERNAL: u32 = u32::MAX;

/// One ZeroMQ message being filled: the batch frame and the large sections after it.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    body: Vec<u8>,
    ext: Vec<Bytes>,
    ext_bytes: usize,
    count: usize,
}

impl Batch {
    /// Whether it holds no message.
    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether it should take no more messages.
    pub(crate) fn is_full(&self) -> bool {
        self.count >= BATCH_MESSAGES || self.body.len() + self.ext_bytes >= BATCH_BYTES
    }

    /// The batch frame and the frames after it.
    pub(crate) fn into_frames(self) -> (Vec<u8>, Vec<Bytes>) {
        (self.body, self.ext)
    }

    /// Starts a message of `kind`; [`Batch::end`] writes its length.
    fn begin(&mut self, kind: u8) -> usize {
        if self.body.is_empty() {
            self.body.reserve(256);
        }
        let at = self.body.len();
        self.body.extend_from_slice(&[0; 4]);
        self.body.push(kind);
        at
    }

    fn end(&mut self, at: usize) {
        let len = (self.body.len() - at - 4) as u32;
        self.body[at..at + 4].copy_from_slice(&len.to_le_bytes());
        self.count += 1;
    }

    fn u64(&mut self, n: u64) -> &mut Batch {
        self.body.extend_from_slice(&n.to_le_bytes());
        self
    }

    fn u32(&mut self, n: u32) -> &mut Batch {
        self.body.extend_from_slice(&n.to_le_bytes());
        self
    }

    fn u8(&mut self, n: u8) -> &mut Batch {
        self.body.push(n);
        self
    }

    fn text(&mut self, s: &str) -> &mut Batch {
        if s.len() > INLINE_MAX {
            return self.payload(&Bytes::copy_from_slice(s.as_bytes()));
        }
        self.u32(s.len() as u32);
        self.body.extend_from_slice(s.as_bytes());
        self
    }

    fn payload(&mut self, p: &Bytes) -> &mut Batch {
        if p.len() > INLINE_MAX {
            self.ext_bytes += p.len();
            self.ext.push(p.clone());
            return self.u32(EXTERNAL);
        }
        self.u32(p.len() as u32);
        self.body.extend_from_slice(p);
        self
    }
}

/// Reads one message of a batch: its integers and sections in order.
pub(crate) struct Reader<'a> {
    body: &'a Bytes,
    pos: usize,
    end: usize,
    ext: &'a mut std::vec::IntoIter<Bytes>,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        if self.end - self.pos < N {
            return Err(Malformed("message too short"));
        }
        let at = self.pos;
        self.pos += N;
        Ok(self.body[at..at + N].try_into().expect("length checked"))
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

    /// A section: a slice of the batch frame, or the next frame after it.
    fn payload(&mut self) -> Result<Bytes, Malformed> {
        let len = self.u32()?;
        if len == EXTERNAL {
            return self.ext.next().ok_or(Malformed("a frame is missing"));
        }
        let len = len as usize;
        if self.end - self.pos < len {
            return Err(Malformed("a section runs past its message"));
        }
        let at = self.pos;
        self.pos += len;
        Ok(self.body.slice(at..at + len))
    }

    fn text(&mut self) -> Result<String, Malformed> {
        let bytes = self.payload()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| Malformed("text is not UTF-8"))
    }
}

/// The messages of one ZeroMQ message (its frames), decoded one by one: a message that
/// does not decode is an error and the next one follows; a length that runs past the end
/// is the last error.
pub(crate) struct Unbatch<T> {
    body: Bytes,
    pos: usize,
    ext: std::vec::IntoIter<Bytes>,
    read: fn(u8, &mut Reader<'_>) -> Result<T, Malformed>,
    done: bool,
}

impl<T> Unbatch<T> {
    fn new(frames: Vec<Bytes>, read: fn(u8, &mut Reader<'_>) -> Result<T, Malformed>) -> Self {
        let mut frames = frames.into_iter();
        let body = frames.next().unwrap_or_default();
        Unbatch {
            body,
            pos: 0,
            ext: frames,
            read,
            done: false,
        }
    }
}

impl<T> Iterator for Unbatch<T> {
    type Item = Result<T, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.pos == 0 && self.body.is_empty() {
            self.done = true;
            return Some(Err(Malformed("empty batch")));
        }
        let left = self.body.len() - self.pos;
        if left == 0 {
            self.done = true;
            return None;
        }
        let len = match self.body.get(self.pos..self.pos + 4) {
            Some(b) => u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize,
            None => usize::MAX,
        };
        if left < 4 || len > left - 4 {
            self.done = true;
            return Some(Err(Malformed("a message runs past the batch")));
        }
        let start = self.pos + 4;
        self.pos = start + len;
        let Some((&kind, _)) = self.body[start..self.pos].split_first() else {
            return Some(Err(Malformed("empty message")));
        };
        let mut r = Reader {
            body: &self.body,
            pos: start + 1,
            end: start + len,
            ext: &mut self.ext,
        };
        Some((self.read)(kind, &mut r))
    }
}

impl ToDevice {
    /// Adds this message to `batch`.
    pub(crate) fn encode(&self, b: &mut Batch) {
        let at;
        match self {
            ToDevice::Hello => at = b.begin(b'H'),
            ToDevice::Ping => at = b.begin(b'h'),
            ToDevice::Subscribe { req, sub, filter } => {
                at = b.begin(b'S');
                b.u64(*req).u64(*sub).text(filter);
            }
            ToDevice::Unsubscribe { sub } => {
                at = b.begin(b'U');
                b.u64(*sub);
            }
            ToDevice::Publish { topic, payload } => {
                at = b.begin(b'P');
                b.text(topic).payload(payload);
            }
            ToDevice::Enqueue {
                req,
                topic,
                payload,
            } => {
                at = b.begin(b'E');
                b.u64(*req).text(topic).payload(payload);
            }
            ToDevice::Ready {
                req,
                consumer,
                prefetch,
                queue,
            } => {
                at = b.begin(b'R');
                b.u64(*req).u64(*consumer).u32(*prefetch).text(queue);
            }
            ToDevice::Cancel { consumer } => {
                at = b.begin(b'C');
                b.u64(*consumer);
            }
            ToDevice::Ack { session, delivery } => {
                at = b.begin(b'K');
                b.u64(*session).u64(*delivery);
            }
            ToDevice::Nack {
                session,
                delivery,
                requeue,
            } => {
                at = b.begin(b'N');
                b.u64(*session).u64(*delivery).u8(u8::from(*requeue));
            }
            ToDevice::Reject {
                session,
                delivery,
                reason,
            } => {
                let (tag, x, y, text) = reason_parts(reason);
                at = b.begin(b'X');
                b.u64(*session).u64(*delivery).u8(tag).u64(x).u64(y);
                b.text(&text);
            }
            ToDevice::DeadLetter {
                req,
                topic,
                payload,
                reason,
            } => {
                let (tag, x, y, text) = reason_parts(reason);
                at = b.begin(b'L');
                b.u64(*req).u8(tag).u64(x).u64(y);
                b.text(topic).payload(payload).text(&text);
            }
            ToDevice::Bye => at = b.begin(b'Q'),
        }
        b.end(at);
    }

    /// The messages of one ZeroMQ message from a peer (without the routing id).
    pub(crate) fn decode(frames: Vec<Bytes>) -> Unbatch<ToDevice> {
        Unbatch::new(frames, ToDevice::read)
    }

    fn read(kind: u8, r: &mut Reader<'_>) -> Result<ToDevice, Malformed> {
        Ok(match kind {
            b'H' => ToDevice::Hello,
            b'h' => ToDevice::Ping,
            b'S' => ToDevice::Subscribe {
                req: r.u64()?,
                sub: r.u64()?,
                filter: r.text()?,
            },
            b'U' => ToDevice::Unsubscribe { sub: r.u64()? },
            b'P' => ToDevice::Publish {
                topic: r.text()?,
                payload: r.payload()?,
            },
            b'E' => ToDevice::Enqueue {
                req: r.u64()?,
                topic: r.text()?,
                payload: r.payload()?,
            },
            b'R' => ToDevice::Ready {
                req: r.u64()?,
                consumer: r.u64()?,
                prefetch: r.u32()?,
                queue: r.text()?,
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
                    reason: reason_from(tag, a, b, r.text()?)?,
                }
            }
            b'L' => {
                let req = r.u64()?;
                let (tag, a, b) = (r.u8()?, r.u64()?, r.u64()?);
                let (topic, payload) = (r.text()?, r.payload()?);
                ToDevice::DeadLetter {
                    req,
                    topic,
                    payload,
                    reason: reason_from(tag, a, b, r.text()?)?,
                }
            }
            b'Q' => ToDevice::Bye,
            _ => return Err(Malformed("unknown kind")),
        })
    }
}

impl ToPeer {
    /// Adds this message to `batch`.
    pub(crate) fn encode(&self, b: &mut Batch) {
        let at;
        match self {
            ToPeer::Welcome {
                session,
                heartbeat_ms,
                max_payload,
            } => {
                at = b.begin(b'W');
                b.u64(*session).u32(*heartbeat_ms).u64(*max_payload);
            }
            ToPeer::Heartbeat { session, seq } => {
                at = b.begin(b'B');
                b.u64(*session).u64(*seq);
            }
            ToPeer::Broadcast {
                seq,
                topic,
                payload,
            } => {
                at = b.begin(b'M');
                b.u64(*seq).text(topic).payload(payload);
            }
            ToPeer::Delivery {
                session,
                consumer,
                delivery,
                redeliveries,
                topic,
                payload,
            } => {
                at = b.begin(b'D');
                b.u64(*session).u64(*consumer).u64(*delivery);
                b.u32(*redeliveries).text(topic).payload(payload);
            }
            ToPeer::Ok { reqs } => {
                at = b.begin(b'O');
                b.u32(reqs.len() as u32);
                for req in reqs {
                    b.u64(*req);
                }
            }
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
                at = b.begin(b'F');
                b.u64(*req).u8(code).u64(*limit).text(text);
            }
        }
        b.end(at);
    }

    /// The messages of one ZeroMQ message from the device.
    pub(crate) fn decode(frames: Vec<Bytes>) -> Unbatch<ToPeer> {
        Unbatch::new(frames, ToPeer::read)
    }

    fn read(kind: u8, r: &mut Reader<'_>) -> Result<ToPeer, Malformed> {
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
                topic: r.text()?,
                payload: r.payload()?,
            },
            b'D' => ToPeer::Delivery {
                session: r.u64()?,
                consumer: r.u64()?,
                delivery: r.u64()?,
                redeliveries: r.u32()?,
                topic: r.text()?,
                payload: r.payload()?,
            },
            b'O' => {
                let count = r.u32()? as usize;
                // Checked against what is there before anything is allocated.
                if count > (r.end - r.pos) / 8 {
                    return Err(Malformed("more ids than the message holds"));
                }
                let mut reqs = Vec::with_capacity(count);
                for _ in 0..count {
                    reqs.push(r.u64()?);
                }
                ToPeer::Ok { reqs }
            }
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
                    text: r.text()?,
                }
            }
            _ => return Err(Malformed("unknown kind")),
        })
    }
}

/// A received frame as [`Bytes`], without copying it: the message is the owner.
pub(crate) fn frame(m: zmq::Message) -> Bytes {
    struct Owner(zmq::Message);
    impl AsRef<[u8]> for Owner {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }
    Bytes::from_owner(Owner(m))
}

/// The frames of a batch of `msgs` (tests, and peers that speak the wire by hand).
#[cfg(test)]
pub(crate) fn frames_of<M>(msgs: &[M], encode: fn(&M, &mut Batch)) -> Vec<Bytes> {
    let mut b = Batch::default();
    for m in msgs {
        encode(m, &mut b);
    }
    let (body, ext) = b.into_frames();
    std::iter::once(Bytes::from(body)).chain(ext).collect()
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
        for m in &to_device {
            let got: Vec<_> =
                ToDevice::decode(frames_of(std::slice::from_ref(m), ToDevice::encode)).collect();
            assert_eq!(got, vec![Ok(m.clone())], "{m:?}");
        }
        // All in one batch, with a payload large enough to travel as a frame of its own.
        let mut all = to_device.to_vec();
        all.insert(
            3,
            ToDevice::Publish {
                topic: "u/j/t/x/1/status".into(),
                payload: Bytes::from(vec![7; INLINE_MAX + 1]),
            },
        );
        let frames = frames_of(&all, ToDevice::encode);
        assert_eq!(frames.len(), 2);
        let got: Vec<_> = ToDevice::decode(frames).collect();
        assert_eq!(got, all.into_iter().map(Ok).collect::<Vec<_>>());
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
            ToPeer::Ok {
                reqs: vec![4, 2, 9],
            },
            ToPeer::Ok { reqs: vec![] },
            ToPeer::Refused {
                req: 5,
                why: Refusal::QueueFull,
                limit: 8,
                text: "full".into(),
            },
        ];
        let got: Vec<_> = ToPeer::decode(frames_of(&to_peer, ToPeer::encode)).collect();
        assert_eq!(got, to_peer.into_iter().map(Ok).collect::<Vec<_>>());
    }

    /// A message of a batch: its length, then `body`.
    fn msg(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_le_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    fn decode_all(frames: &[&[u8]]) -> (Vec<ToDevice>, usize, Vec<ToPeer>, usize) {
        let frames: Vec<Bytes> = frames.iter().map(|f| Bytes::copy_from_slice(f)).collect();
        let (mut d, mut de, mut p, mut pe) = (vec![], 0, vec![], 0);
        for m in ToDevice::decode(frames.clone()) {
            match m {
                Ok(m) => d.push(m),
                Err(_) => de += 1,
            }
        }
        for m in ToPeer::decode(frames) {
            match m {
                Ok(m) => p.push(m),
                Err(_) => pe += 1,
            }
        }
        (d, de, p, pe)
    }

    #[test]
    fn malformed_batches_are_errors_not_panics() {
        let ping = msg(b"h");
        let cat = |parts: &[&[u8]]| parts.concat();
        // (frames, errors) for a peer's and the device's decoder alike.
        let cases: Vec<(Vec<Vec<u8>>, usize)> = vec![
            (vec![], 1),                                              // no frame
            (vec![vec![]], 1),                                        // empty batch
            (vec![b"\x01\0\0".to_vec()], 1),                          // a length cut short
            (vec![msg(b"")], 1),                                      // an empty message
            (vec![msg(b"Z")], 1),                                     // unknown kind
            (vec![msg(b"S\x01")], 1),                                 // integers cut short
            (vec![msg(b"S\x01\0\0\0\0\0\0\0\x02\0\0\0\0\0\0\0")], 1), // section missing
            (
                vec![msg(
                    b"S\x01\0\0\0\0\0\0\0\x02\0\0\0\0\0\0\0\xff\xff\xff\x7f",
                )],
                1,
            ), // section past the end
            (vec![msg(b"P\xff\xff\xff\xff")], 1), // an external section with no frame
            (vec![msg(b"P\x02\0\0\0\xff\xfe\0\0\0\0")], 1), // text not UTF-8
            (vec![msg(b"O\xff\xff\xff\xff")], 1), // a huge count
            (vec![cat(&[&msg(b"Z"), &[0xff, 0xff, 0xff, 0xff, b'h']])], 2), // one bad, then a length past the end
            (vec![msg(b"X\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x09")], 1),
        ];
        for (i, (frames, errors)) in cases.iter().enumerate() {
            let frames: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
            let (_, de, _, pe) = decode_all(&frames);
            assert_eq!((de, pe), (*errors, *errors), "case {i}");
        }
        // A bad message between good ones is skipped; the good ones decode.
        let batch = cat(&[&ping, &msg(b"Z"), &ping]);
        let (d, de, ..) = decode_all(&[&batch]);
        assert_eq!((d, de), (vec![ToDevice::Ping, ToDevice::Ping], 1));
        // A length past the end ends the batch after what came before it.
        let batch = cat(&[&ping, &[9, 0, 0, 0, b'h']]);
        let (d, de, ..) = decode_all(&[&batch]);
        assert_eq!((d, de), (vec![ToDevice::Ping], 1));
    }
}
