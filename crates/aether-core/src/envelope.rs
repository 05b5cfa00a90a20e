//! The message envelope, wire-compatible with Python AetherMagic, in JSON or MessagePack.
//!
//! A message is an object with `action`, `status`, `progress` (0-100), `data` (any value),
//! `host` and `client`, plus the keys `job`, `workgroup`, `task`, `context` and `tid` that
//! Python services always send as empty strings. aether adds optional keys (`attempt`,
//! `deadline`, `lease`, `headers`, `error`) that Python services ignore.
//!
//! Outgoing messages are a [`Header`] plus data, encoded by [`encode`]; incoming ones are
//! an [`Envelope`], whose data is decoded lazily into the type the receiver wants.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::action::{Action, Status};
use crate::error::{DecodeError, Error, Result};

mod check;
mod fast;

pub use check::MAX_DEPTH;

/// Now, in the unit of [`Header::deadline`]: milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The wire format of a message. A decoder recognises either by its first byte, and a
/// worker answers in the codec the request came in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// JSON: what Python AetherMagic speaks. The default.
    #[default]
    Json,
    /// MessagePack with named fields (maps, never positional arrays).
    MsgPack,
}

impl Codec {
    /// Recognises the codec of `payload` from its first byte: `{` (after optional JSON
    /// whitespace) is JSON; a MessagePack map marker (`0x80..=0x8f`, `0xde`, `0xdf`) is
    /// MessagePack. Neither can be mistaken for the other.
    pub fn detect(payload: &[u8]) -> Result<Codec, DecodeError> {
        let first = payload
            .iter()
            .copied()
            .find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'));
        match first {
            None if payload.is_empty() => Err(DecodeError::Empty),
            None => Err(DecodeError::UnknownFormat(payload[0])),
            Some(b'{') => Ok(Codec::Json),
            Some(0x80..=0x8f | 0xde | 0xdf) => Ok(Codec::MsgPack),
            Some(b) => Err(DecodeError::UnknownFormat(b)),
        }
    }

    /// Encodes any value in this codec.
    pub fn to_vec<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>> {
        match self {
            Codec::Json => serde_json::to_vec(value).map_err(|e| Error::Encode(e.to_string())),
            Codec::MsgPack => {
                rmp_serde::to_vec_named(value).map_err(|e| Error::Encode(e.to_string()))
            }
        }
    }

    /// Decodes any value in this codec, refusing nesting deeper than [`MAX_DEPTH`] levels
    /// in both (rmp-serde alone allows 1,024, enough to overflow a debug build's stack).
    pub fn from_slice<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, DecodeError> {
        match self {
            Codec::Json => serde_json::from_slice(bytes).map_err(DecodeError::Json),
            Codec::MsgPack => {
                let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
                // Like serde_json's, rmp-serde's limit is the first level it refuses.
                de.set_max_depth(MAX_DEPTH + 1);
                T::deserialize(&mut de).map_err(DecodeError::MsgPack)
            }
        }
    }

    /// `"json"` or `"msgpack"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::Json => "json",
            Codec::MsgPack => "msgpack",
        }
    }
}

impl std::str::FromStr for Codec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "json" => Ok(Codec::Json),
            "msgpack" | "messagepack" => Ok(Codec::MsgPack),
            other => Err(Error::Config(format!(
                "unknown codec {other:?}; expected json or msgpack"
            ))),
        }
    }
}

/// Everything in a message but its data.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Header {
    /// What the message asks for or reports.
    pub action: Action,
    /// The status that goes with the action.
    pub status: Status,
    /// Progress, 0-100.
    pub progress: u8,
    /// Host name of the sender.
    pub host: String,
    /// Per-process id of the sender.
    pub client: String,
    /// Python compatibility: always sent, empty unless set.
    pub job: String,
    /// Python compatibility: always sent, empty unless set.
    pub workgroup: String,
    /// Python compatibility: always sent, empty unless set.
    pub task: String,
    /// Python compatibility: always sent, empty unless set.
    pub context: String,
    /// Python compatibility: always sent, empty unless set.
    pub tid: String,
    /// aether: which dispatch of the task this is, from 1.
    pub attempt: Option<u32>,
    /// aether: the task's deadline, in milliseconds since the Unix epoch.
    pub deadline: Option<u64>,
    /// aether: the lease in milliseconds. On a perform, how often the client wants a sign
    /// of life; on a status, the worker's promise to send one at least that often.
    pub lease: Option<u64>,
    /// aether: string headers, e.g. W3C trace context (`traceparent`).
    pub headers: Option<BTreeMap<String, String>>,
    /// aether: the error message of a failed completion.
    pub error: Option<String>,
    /// aether: on a status, its number among the statuses the worker sent for the task
    /// (from 1); on a complete, how many statuses preceded it. Lets a client hold a
    /// completion until the progress reports sent before it have arrived.
    pub seq: Option<u32>,
    /// aether: on a perform, how many milliseconds the worker may hold back its acceptance.
    /// A task that completes within that time is answered by its completion alone, which
    /// saves a message per task; one that takes longer is accepted when the time is up or
    /// when it first reports progress, whichever comes first. Absent: accept at once, as
    /// Python clients expect.
    pub defer: Option<u64>,
    /// aether: on a perform, when this dispatch of it was sent, in milliseconds since the
    /// Unix epoch: the worker's measure of how long it waited in the queue.
    pub sent: Option<u64>,
}

impl Header {
    /// A header for `action` with the status and progress Python services use for it.
    pub fn new(action: Action, host: &str, client: &str) -> Header {
        let (status, progress) = Status::default_for(action);
        Header {
            action,
            status,
            progress,
            host: host.to_owned(),
            client: client.to_owned(),
            job: String::new(),
            workgroup: String::new(),
            task: String::new(),
            context: String::new(),
            tid: String::new(),
            attempt: None,
            deadline: None,
            lease: None,
            headers: None,
            error: None,
            seq: None,
            defer: None,
            sent: None,
        }
    }

    /// Sets the status.
    pub fn status(mut self, status: Status) -> Header {
        self.status = status;
        self
    }

    /// Sets the progress, clamped to 100.
    pub fn progress(mut self, progress: u8) -> Header {
        self.progress = progress.min(100);
        self
    }
}

/// Encodes `header` and `data` as one message in `codec`, keys in the order Python writes
/// them; aether's optional keys only when set.
pub fn encode<D: Serialize + ?Sized>(codec: Codec, header: &Header, data: &D) -> Result<Bytes> {
    let data = codec.to_vec(data)?;
    Ok(encode_raw(codec, header, &data))
}

/// Like [`encode`], with `data` already encoded in `codec` (one complete value). Lets a
/// message be re-sent with a new header without encoding its data again.
pub fn encode_raw(codec: Codec, header: &Header, data: &[u8]) -> Bytes {
    encode_as(codec, header, (&header.host, &header.client), data)
}

/// [`encode_raw`] with `sender` (host, client) written in place of the header's own: a
/// sender keeps one copy of its names instead of each header allocating them.
pub(crate) fn encode_as(codec: Codec, header: &Header, sender: (&str, &str), data: &[u8]) -> Bytes {
    // Keys, punctuation and numbers of every field take ~280 bytes at most: one
    // allocation, never grown, for all but messages with headers.
    let strings = [
        &header.job,
        &header.workgroup,
        &header.task,
        &header.context,
        &header.tid,
    ];
    let len = strings.iter().map(|s| s.len()).sum::<usize>()
        + header.error.as_ref().map_or(0, String::len)
        + sender.0.len()
        + sender.1.len();
    let mut out = Vec::with_capacity(data.len() + 288 + len);
    match codec {
        Codec::Json => write_json(&mut out, header, sender, data),
        Codec::MsgPack => write_msgpack(&mut out, header, sender, data),
    }
    Bytes::from(out)
}

/// `{}` in `codec`: the data of messages that carry none.
pub fn empty_object(codec: Codec) -> &'static [u8] {
    match codec {
        Codec::Json => b"{}",
        Codec::MsgPack => &[0x80],
    }
}

fn string_fields<'a>(
    h: &'a Header,
    (host, client): (&'a str, &'a str),
) -> [(&'static str, &'a str); 7] {
    [
        ("host", host),
        ("client", client),
        ("job", &h.job),
        ("workgroup", &h.workgroup),
        ("task", &h.task),
        ("context", &h.context),
        ("tid", &h.tid),
    ]
}

fn write_json(out: &mut Vec<u8>, h: &Header, sender: (&str, &str), data: &[u8]) {
    out.extend_from_slice(b"{\"action\":\"");
    out.extend_from_slice(h.action.as_str().as_bytes());
    out.extend_from_slice(b"\",\"status\":\"");
    out.extend_from_slice(h.status.as_str().as_bytes());
    out.extend_from_slice(b"\",\"progress\":");
    push_uint(out, h.progress.into());
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(data);
    for (k, v) in string_fields(h, sender) {
        push_key(out, k);
        push_json_str(out, v);
    }
    for (k, v) in [
        ("attempt", h.attempt.map(u64::from)),
        ("deadline", h.deadline),
        ("lease", h.lease),
    ] {
        if let Some(v) = v {
            push_key(out, k);
            push_uint(out, v);
        }
    }
    if let Some(v) = &h.headers {
        push_key(out, "headers");
        serde_json::to_writer(&mut *out, v).expect("write to Vec");
    }
    if let Some(v) = &h.error {
        push_key(out, "error");
        push_json_str(out, v);
    }
    for (k, v) in [
        ("seq", h.seq.map(u64::from)),
        ("defer", h.defer),
        ("sent", h.sent),
    ] {
        if let Some(v) = v {
            push_key(out, k);
            push_uint(out, v);
        }
    }
    out.push(b'}');
}

/// `,"key":` (keys are ours and need no escaping).
fn push_key(out: &mut Vec<u8>, key: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

/// A JSON string: copied as it is unless it holds something to escape (a quote, a
/// backslash, a control character), which serde_json escapes.
fn push_json_str(out: &mut Vec<u8>, v: &str) {
    if v.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        serde_json::to_writer(&mut *out, v).expect("write to Vec");
        return;
    }
    out.push(b'"');
    out.extend_from_slice(v.as_bytes());
    out.push(b'"');
}

/// A number in decimal, without the formatting machinery.
fn push_uint(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[at..]);
}

fn write_msgpack(out: &mut Vec<u8>, h: &Header, sender: (&str, &str), data: &[u8]) {
    use rmp::encode as w;
    // Writing to a Vec cannot fail.
    let extras = [
        h.attempt.is_some(),
        h.deadline.is_some(),
        h.lease.is_some(),
        h.headers.is_some(),
        h.error.is_some(),
        h.seq.is_some(),
        h.defer.is_some(),
        h.sent.is_some(),
    ];
    let len = 11 + extras.iter().filter(|b| **b).count() as u32;
    w::write_map_len(out, len).expect("write to Vec");
    let kv = |k: &str, v: &str, out: &mut Vec<u8>| {
        w::write_str(out, k).expect("write to Vec");
        w::write_str(out, v).expect("write to Vec");
    };
    kv("action", h.action.as_str(), out);
    kv("status", h.status.as_str(), out);
    w::write_str(out, "progress").expect("write to Vec");
    w::write_uint(out, h.progress.into()).expect("write to Vec");
    w::write_str(out, "data").expect("write to Vec");
    out.extend_from_slice(data);
    for (k, v) in string_fields(h, sender) {
        kv(k, v, out);
    }
    for (k, v) in [
        ("attempt", h.attempt.map(u64::from)),
        ("deadline", h.deadline),
        ("lease", h.lease),
    ] {
        if let Some(v) = v {
            w::write_str(out, k).expect("write to Vec");
            w::write_uint(out, v).expect("write to Vec");
        }
    }
    if let Some(map) = &h.headers {
        w::write_str(out, "headers").expect("write to Vec");
        w::write_map_len(out, map.len() as u32).expect("write to Vec");
        for (k, v) in map {
            kv(k, v, out);
        }
    }
    if let Some(v) = &h.error {
        kv("error", v, out);
    }
    if let Some(v) = h.seq {
        w::write_str(out, "seq").expect("write to Vec");
        w::write_uint(out, v.into()).expect("write to Vec");
    }
    for (k, v) in [("defer", h.defer), ("sent", h.sent)] {
        if let Some(v) = v {
            w::write_str(out, k).expect("write to Vec");
            w::write_uint(out, v).expect("write to Vec");
        }
    }
}

/// The header as it arrives, before the action and status are checked. `D` is what
/// becomes of the data: for JSON, where it lies ([`RawValue`], checked apart by
/// [`check::json_data`]); for MessagePack, which [`check::msgpack`] has checked whole
/// already, [`IgnoredAny`]. The action and status are borrowed: they are only looked up.
#[derive(Deserialize)]
struct RawHeader<'a, D: Default> {
    #[serde(borrow)]
    action: Cow<'a, str>,
    #[serde(default, borrow)]
    status: Option<Cow<'a, str>>,
    #[serde(default)]
    progress: Option<ProgressValue>,
    #[serde(default)]
    data: D,
    #[serde(default)]
    host: String,
    #[serde(default)]
    client: String,
    #[serde(default)]
    job: String,
    #[serde(default)]
    workgroup: String,
    #[serde(default)]
    task: String,
    #[serde(default)]
    context: String,
    #[serde(default)]
    tid: String,
    #[serde(default)]
    attempt: Option<u32>,
    #[serde(default)]
    deadline: Option<u64>,
    #[serde(default)]
    lease: Option<u64>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    seq: Option<u32>,
    #[serde(default)]
    defer: Option<u64>,
    #[serde(default)]
    sent: Option<u64>,
}

impl<D: Default> RawHeader<'_, D> {
    /// Checks the action, status and progress.
    fn check(self) -> Result<Header, DecodeError> {
        let h = self;
        let action = Action::from_name(&h.action)
            .ok_or_else(|| DecodeError::UnknownAction(h.action.into_owned()))?;
        let (default_status, default_progress) = Status::default_for(action);
        let status = match h.status {
            Some(s) => s.parse()?,
            None => default_status,
        };
        let progress = match h.progress {
            None => default_progress,
            Some(ProgressValue(p)) if (0.0..=100.0).contains(&p) => p.round() as u8,
            Some(ProgressValue(p)) => return Err(DecodeError::ProgressOutOfRange(p)),
        };
        Ok(Header {
            action,
            status,
            progress,
            host: h.host,
            client: h.client,
            job: h.job,
            workgroup: h.workgroup,
            task: h.task,
            context: h.context,
            tid: h.tid,
            attempt: h.attempt,
            deadline: h.deadline,
            lease: h.lease,
            headers: h.headers,
            error: h.error,
            seq: h.seq,
            defer: h.defer,
            sent: h.sent,
        })
    }
}

/// A progress number as Python may send it: integer or float.
struct ProgressValue(f64);

impl<'de> Deserialize<'de> for ProgressValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ProgressValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number from 0 to 100")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ProgressValue, E> {
                Ok(ProgressValue(v as f64))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ProgressValue, E> {
                Ok(ProgressValue(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ProgressValue, E> {
                Ok(ProgressValue(v))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct DataOnly<T> {
    data: T,
}

/// A received message: its checked [`Header`], its codec, and the raw bytes from which
/// [`Envelope::data`] decodes the data into whatever type the receiver wants.
#[derive(Clone)]
pub struct Envelope {
    header: Header,
    codec: Codec,
    raw: Bytes,
    data: DataAt,
}

/// Where a message's data lies in its bytes.
#[derive(Clone, Debug)]
enum DataAt {
    /// Not recorded (MessagePack): found by decoding the message again.
    Unknown,
    /// Absent or `null`.
    Null,
    /// These bytes (JSON).
    Span(std::ops::Range<usize>),
}

impl Envelope {
    /// Decodes a message in either codec. Fails with a typed error on an unknown format,
    /// a malformed object, an unknown action or status, or a progress outside 0-100; and,
    /// although the data is decoded only by [`Envelope::data`], on data that could not be:
    /// nesting deeper than [`MAX_DEPTH`] levels, text that is not UTF-8, malformed values.
    pub fn decode(raw: Bytes) -> Result<Envelope, DecodeError> {
        let codec = Codec::detect(&raw)?;
        let (header, data) = match codec {
            Codec::Json => {
                // Text already checked: serde_json need not check each string again.
                let text = check::json_text(&raw)?;
                // Nearly every message has the plain shape the fast reader takes, which
                // checks the data too; serde_json reads (or refuses) the rest.
                if let Some((h, span)) = fast::header(text) {
                    let data = span.map_or(DataAt::Null, DataAt::Span);
                    return Ok(Envelope {
                        header: h.check()?,
                        codec,
                        raw,
                        data,
                    });
                }
                let h: RawHeader<'_, Option<&RawValue>> =
                    serde_json::from_str(text).map_err(DecodeError::Json)?;
                let data = match h.data {
                    None => DataAt::Null,
                    Some(value) => {
                        check::json_data(value.get())?;
                        // Where the value lies in the text: both point into `raw`.
                        let start = value.get().as_ptr() as usize - text.as_ptr() as usize;
                        DataAt::Span(start..start + value.get().len())
                    }
                };
                (h.check()?, data)
            }
            Codec::MsgPack => {
                check::msgpack(&raw)?;
                let mut de = rmp_serde::Deserializer::from_read_ref(&raw[..]);
                de.set_max_depth(MAX_DEPTH + 1);
                let h = RawHeader::<'_, IgnoredAny>::deserialize(&mut de)
                    .map_err(DecodeError::MsgPack)?;
                (h.check()?, DataAt::Unknown)
            }
        };
        Ok(Envelope {
            header,
            codec,
            raw,
            data,
        })
    }

    /// The checked header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The codec it arrived in.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The bytes as received.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Decodes the `data` field as `T`. A missing `data` decodes as `null`.
    pub fn data<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        let null: &[u8] = match self.codec {
            Codec::Json => b"null",
            Codec::MsgPack => &[0xc0],
        };
        match &self.data {
            DataAt::Span(span) => self.codec.from_slice(&self.raw[span.clone()]),
            DataAt::Null => self.codec.from_slice(null),
            DataAt::Unknown => match self
                .codec
                .from_slice::<DataOnly<Option<T>>>(&self.raw)?
                .data
            {
                Some(v) => Ok(v),
                None => self.codec.from_slice::<T>(null),
            },
        }
    }

    /// The data as a JSON value (`null` if it cannot be represented, e.g. MessagePack binary).
    pub fn data_value(&self) -> serde_json::Value {
        self.data().unwrap_or(serde_json::Value::Null)
    }
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("header", &self.header)
            .field("codec", &self.codec)
            .field("len", &self.raw.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Blob {
        name: String,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    }

    #[test]
    fn json_strings_and_numbers_are_written_as_serde_json_writes_them() {
        for v in [
            "",
            "vm",
            "a\"b",
            "back\\slash",
            "tab\t",
            "\u{1}",
            "é ü 中",
            "\u{7f}",
        ] {
            let mut out = Vec::new();
            push_json_str(&mut out, v);
            assert_eq!(out, serde_json::to_vec(v).unwrap(), "{v:?}");
        }
        for n in [0, 7, 10, 99, 100, 1_800_000_000_000, u64::MAX] {
            let mut out = Vec::new();
            push_uint(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }

    #[test]
    fn data_is_read_from_where_it_lies() {
        let h = Header::new(Action::Complete, "h", "c");
        for (data, want) in [
            (&b"{\"k\":[1,\"\\u00e9\"]}"[..], json!({"k": [1, "é"]})),
            (b"null", serde_json::Value::Null),
            (b" 7 ", json!(7)),
        ] {
            let env = Envelope::decode(encode_raw(Codec::Json, &h, data)).unwrap();
            assert_eq!(env.data::<serde_json::Value>().unwrap(), want);
        }
        // No data key: null, as before.
        let env = Envelope::decode(Bytes::from_static(b"{\"action\":\"complete\"}")).unwrap();
        assert_eq!(env.data::<Option<u32>>().unwrap(), None);
    }

    #[test]
    fn json_matches_python_bytes() {
        let h = Header::new(
            Action::Perform,
            "vm",
            "717b417c-e9ff-11f1-8322-02fc00000001",
        );
        let bytes = encode(Codec::Json, &h, &json!({"i": 0})).unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"action":"perform","status":"initialized","progress":0,"data":{"i":0},"host":"vm","client":"717b417c-e9ff-11f1-8322-02fc00000001","job":"","workgroup":"","task":"","context":"","tid":""}"#
        );
    }

    #[test]
    fn round_trip_both_codecs_with_extras() {
        let mut h = Header::new(Action::Complete, "h", "c").status(Status::Failed);
        h.attempt = Some(2);
        h.deadline = Some(1_800_000_000_000);
        h.lease = Some(3000);
        h.error = Some("boom".into());
        h.seq = Some(7);
        h.defer = Some(20);
        h.headers = Some(BTreeMap::from([(
            "traceparent".into(),
            "00-ab-cd-01".into(),
        )]));
        let blob = Blob {
            name: "n".into(),
            bytes: vec![0, 1, 255],
        };
        for codec in [Codec::Json, Codec::MsgPack] {
            let bytes = encode(codec, &h, &blob).unwrap();
            let env = Envelope::decode(bytes).unwrap();
            assert_eq!(env.codec(), codec);
            assert_eq!(env.header(), &h);
            assert_eq!(env.data::<Blob>().unwrap(), blob);
        }
    }

    #[test]
    fn msgpack_is_named_not_positional() {
        let h = Header::new(Action::Status, "h", "c");
        let bytes = encode(Codec::MsgPack, &h, &json!({"k": 1})).unwrap();
        assert!((0x80..=0x8f).contains(&bytes[0]) || bytes[0] == 0xde);
        // Another reader that only knows maps can pick fields by name.
        let v: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(v["action"], "status");
        assert_eq!(v["data"]["k"], 1);
    }

    #[test]
    fn typed_errors_for_bad_input() {
        type Check = fn(&DecodeError) -> bool;
        let cases: Vec<(&[u8], Check)> = vec![
            (b"", |e| matches!(e, DecodeError::Empty)),
            (b"   ", |e| matches!(e, DecodeError::UnknownFormat(b' '))),
            (b"[1,2]", |e| matches!(e, DecodeError::UnknownFormat(b'['))),
            (b"\x93\x01\x02\x03", |e| {
                matches!(e, DecodeError::UnknownFormat(0x93))
            }),
            (b"{not json", |e| matches!(e, DecodeError::Json(_))),
            (b"{\"status\":\"progress\"}", |e| {
                matches!(e, DecodeError::Json(_))
            }),
            (
                b"{\"action\":\"explode\"}",
                |e| matches!(e, DecodeError::UnknownAction(a) if a == "explode"),
            ),
            (
                b"{\"action\":\"status\",\"status\":\"meh\"}",
                |e| matches!(e, DecodeError::UnknownStatus(s) if s == "meh"),
            ),
            (
                b"{\"action\":\"status\",\"progress\":101}",
                |e| matches!(e, DecodeError::ProgressOutOfRange(p) if *p == 101.0),
            ),
            (b"{\"action\":\"status\",\"progress\":-1}", |e| {
                matches!(e, DecodeError::ProgressOutOfRange(_))
            }),
            (b"{\"action\":\"status\",\"progress\":\"x\"}", |e| {
                matches!(e, DecodeError::Json(_))
            }),
            (b"\x81\xa1a\xc1", |e| {
                matches!(e, DecodeError::MsgPackStructure(_))
            }),
            (b"\x81\xa1a\xa1\xff", |e| {
                matches!(e, DecodeError::InvalidUtf8)
            }),
        ];
        for (input, check) in cases {
            let err = Envelope::decode(Bytes::from_static(input)).unwrap_err();
            assert!(
                check(&err),
                "{:?} gave {err:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    /// Runs `f` on a thread with the stack a tokio worker thread gets (2 MiB): a stack
    /// overflow there aborts the whole test binary, as it aborts a user's worker.
    fn on_worker_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    /// A complete message of `codec` whose data is `data`, already encoded.
    fn with_data(codec: Codec, data: &[u8]) -> Bytes {
        let mut h = Header::new(Action::Complete, "h", "c");
        h.tid = "t".into();
        encode_raw(codec, &h, data)
    }

    fn nested(codec: Codec, depth: usize) -> Vec<u8> {
        match codec {
            Codec::Json => [vec![b'['; depth], vec![b']'; depth]].concat(),
            Codec::MsgPack => [vec![0x91; depth - 1], vec![0x90]].concat(),
        }
    }

    #[test]
    fn deep_data_is_refused_without_overflowing_the_stack() {
        // 1,000 nested arrays (1 KB of MessagePack) used to overflow a debug build's stack
        // inside rmp-serde; 100,000 nested JSON arrays passed as a valid outcome.
        for (codec, depth) in [
            (Codec::MsgPack, 1_000),
            (Codec::MsgPack, 100_000),
            (Codec::Json, 1_000),
            (Codec::Json, 100_000),
        ] {
            let raw = with_data(codec, &nested(codec, depth));
            let err = on_worker_stack(move || Envelope::decode(raw).unwrap_err());
            assert!(
                matches!(err, DecodeError::TooDeep { .. } | DecodeError::Json(_)),
                "{codec:?} at depth {depth}: {err:?}"
            );
        }
    }

    #[test]
    fn the_deepest_accepted_data_decodes_on_a_worker_stack() {
        // The envelope is the first level, so data may nest MAX_DEPTH - 1 levels.
        for codec in [Codec::Json, Codec::MsgPack] {
            let raw = with_data(codec, &nested(codec, MAX_DEPTH - 1));
            let value = on_worker_stack(move || {
                let env = Envelope::decode(raw).unwrap();
                env.data::<serde_json::Value>().unwrap()
            });
            assert!(value.is_array(), "{codec:?}");
            let raw = with_data(codec, &nested(codec, MAX_DEPTH));
            let err = on_worker_stack(move || Envelope::decode(raw).unwrap_err());
            assert!(
                matches!(err, DecodeError::TooDeep { .. } | DecodeError::Json(_)),
                "{codec:?} one level deeper: {err:?}"
            );
        }
    }

    #[test]
    fn data_that_is_not_valid_is_refused_at_decode() {
        // Each used to decode as a valid envelope whose data failed only when read, so a
        // client took it as the task's outcome and a worker ran the handler on it.
        let cases: Vec<(&str, Codec, Vec<u8>)> = vec![
            (
                "JSON string not UTF-8",
                Codec::Json,
                b"\"\xff\xfe\"".to_vec(),
            ),
            ("JSON key not UTF-8", Codec::Json, b"{\"\xc3\":1}".to_vec()),
            ("JSON lone surrogate", Codec::Json, br#""\ud800""#.to_vec()),
            (
                "MessagePack string not UTF-8",
                Codec::MsgPack,
                vec![0xa2, 0xff, 0xfe],
            ),
            (
                "MessagePack key not UTF-8",
                Codec::MsgPack,
                vec![0x81, 0xa1, 0xc3, 0x01],
            ),
            (
                "MessagePack length bomb",
                Codec::MsgPack,
                vec![0xdd, 0xff, 0xff, 0xff, 0xff],
            ),
        ];
        for (name, codec, data) in cases {
            let raw = with_data(codec, &data);
            match Envelope::decode(raw) {
                Ok(env) => panic!(
                    "{name}: decoded, data {:?}",
                    env.data::<serde_json::Value>()
                ),
                Err(DecodeError::Json(_) | DecodeError::MsgPack(_)) => {}
                Err(DecodeError::InvalidUtf8 | DecodeError::MsgPackStructure(_)) => {}
                Err(e) => panic!("{name}: {e:?}"),
            }
        }
        // Text elsewhere in the message is checked too (here an unknown key's value).
        let raw = Bytes::from_static(b"{\"action\":\"complete\",\"future\":\"\xff\"}");
        assert!(matches!(
            Envelope::decode(raw),
            Err(DecodeError::InvalidUtf8)
        ));
        // MessagePack binary data is valid data, not text.
        let raw = with_data(Codec::MsgPack, &[0xc4, 2, 0xff, 0xfe]);
        let env = Envelope::decode(raw).unwrap();
        assert_eq!(
            env.data::<serde_bytes::ByteBuf>().unwrap().as_ref(),
            &[0xff, 0xfe]
        );
    }

    #[test]
    fn lenient_where_python_is() {
        // Float progress, missing optional keys, unknown keys.
        let env = Envelope::decode(Bytes::from_static(
            b"{\"action\":\"status\",\"status\":\"progress\",\"progress\":49.6,\"data\":{},\"future\":[1]}",
        ))
        .unwrap();
        assert_eq!(env.header().progress, 50);
        assert_eq!(env.header().host, "");
        let env = Envelope::decode(Bytes::from_static(b" {\"action\":\"cancel\"}")).unwrap();
        assert_eq!(env.header().status, Status::Cancelled);
        assert_eq!(env.data::<Option<u32>>().unwrap(), None);
        assert_eq!(env.data_value(), serde_json::Value::Null);
    }
}
