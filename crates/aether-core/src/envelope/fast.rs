//! A direct reader of the JSON headers aether and Python AetherMagic write, beside serde.
//!
//! Decoding the two envelopes of a round trip through serde_json's derived visitor was a
//! fifth of the core's instructions per task. Nearly every message is a flat object of
//! known keys with plain strings (no escapes) and integers, which this reads in one pass;
//! the data is checked and located in one walk ([`check::json_data_prefix`]) instead of a
//! parse to find it and another to check it. Anything else (an escape, an unknown or repeated key,
//! a `null` where a value is optional, a float, a number too large) makes it answer `None`
//! and the caller decodes the message with serde_json, whose answer, error included, is
//! then the message's. So where this answers, serde_json would have answered the same;
//! the tests below hold it to that.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;

use super::check;
use super::{ProgressValue, RawHeader};

/// The header of a JSON message `text` (already checked to be UTF-8) as serde_json would
/// read it into [`RawHeader`], and where its data lies (`None`: absent or `null`), checked
/// as [`check::json_data`] checks it; or `None` where the message is not of the plain
/// shape.
pub(super) fn header(text: &str) -> Option<(RawHeader<'_, ()>, Option<Range<usize>>)> {
    let mut r = Reader { text, at: 0 };
    let mut h = RawHeader {
        action: Cow::Borrowed(""),
        status: None,
        progress: None,
        data: (),
        host: String::new(),
        client: String::new(),
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
    };
    let mut data = None;
    let mut seen = 0u32;
    r.eat(b'{')?;
    r.ws();
    if r.peek()? == b'}' {
        // `{}`: no action, which serde_json refuses.
        return None;
    }
    loop {
        let key = r.plain_str()?;
        r.eat(b':')?;
        // The keys of `RawHeader`; `action` (bit 0) is the one without a default.
        let bit = match key {
            "action" => 0,
            "status" => 1,
            "progress" => 2,
            "data" => 3,
            "host" => 4,
            "client" => 5,
            "job" => 6,
            "workgroup" => 7,
            "task" => 8,
            "context" => 9,
            "tid" => 10,
            "attempt" => 11,
            "deadline" => 12,
            "lease" => 13,
            "headers" => 14,
            "error" => 15,
            "seq" => 16,
            "defer" => 17,
            "sent" => 18,
            _ => return None,
        };
        if seen & (1 << bit) != 0 {
            return None;
        }
        seen |= 1 << bit;
        let u32_max = u64::from(u32::MAX);
        match bit {
            0 => h.action = Cow::Borrowed(r.plain_str()?),
            1 => h.status = Some(Cow::Borrowed(r.plain_str()?)),
            2 => h.progress = Some(ProgressValue(r.uint(u64::MAX)? as f64)),
            3 => data = r.data()?,
            4 => h.host = r.plain_str()?.to_owned(),
            5 => h.client = r.plain_str()?.to_owned(),
            6 => h.job = r.plain_str()?.to_owned(),
            7 => h.workgroup = r.plain_str()?.to_owned(),
            8 => h.task = r.plain_str()?.to_owned(),
            9 => h.context = r.plain_str()?.to_owned(),
            10 => h.tid = r.plain_str()?.to_owned(),
            11 => h.attempt = Some(r.uint(u32_max)? as u32),
            12 => h.deadline = Some(r.uint(u64::MAX)?),
            13 => h.lease = Some(r.uint(u64::MAX)?),
            14 => h.headers = Some(r.headers()?),
            15 => h.error = Some(r.plain_str()?.to_owned()),
            16 => h.seq = Some(r.uint(u32_max)? as u32),
            17 => h.defer = Some(r.uint(u64::MAX)?),
            _ => h.sent = Some(r.uint(u64::MAX)?),
        }
        r.ws();
        match r.peek()? {
            b',' => r.at += 1,
            b'}' => {
                r.at += 1;
                break;
            }
            _ => return None,
        }
    }
    r.ws();
    (r.at == text.len() && seen & 1 != 0).then_some((h, data))
}

/// Bytes that end a plain string: the quote, and what would need an escape or is one.
const STOP: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

struct Reader<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    /// Skips JSON whitespace.
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// `c` after optional whitespace.
    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.peek()? == c).then(|| self.at += 1)
    }

    /// A string without escapes or control characters, after optional whitespace.
    fn plain_str(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let bytes = &self.text.as_bytes()[self.at..];
        let len = bytes.iter().position(|&b| STOP[usize::from(b)])?;
        if bytes[len] != b'"' {
            return None;
        }
        // Both ends are ASCII quotes: character boundaries of the UTF-8 text.
        let s = &self.text[self.at..self.at + len];
        self.at += len + 1;
        Some(s)
    }

    /// A non-negative integer up to `max`, without sign, fraction or exponent.
    fn uint(&mut self, max: u64) -> Option<u64> {
        self.ws();
        let bytes = &self.text.as_bytes()[self.at..];
        let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
        // A leading zero is not JSON.
        if digits == 0 || (digits > 1 && bytes[0] == b'0') {
            return None;
        }
        if matches!(bytes.get(digits), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        let mut v = 0u64;
        for d in &bytes[..digits] {
            v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        }
        self.at += digits;
        (v <= max).then_some(v)
    }

    /// Any JSON value, checked as [`check::json_data`] checks data: where it lies, or
    /// `None` inside for `null`, as serde reads an `Option<&RawValue>`.
    fn data(&mut self) -> Option<Option<Range<usize>>> {
        self.ws();
        let start = self.at;
        let len = check::json_data_prefix(&self.text[start..])?;
        self.at += len;
        Some((&self.text[start..self.at] != "null").then_some(start..self.at))
    }

    /// An object of plain strings, each key once.
    fn headers(&mut self) -> Option<BTreeMap<String, String>> {
        let mut map = BTreeMap::new();
        self.eat(b'{')?;
        self.ws();
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(map);
        }
        loop {
            let key = self.plain_str()?;
            self.eat(b':')?;
            let value = self.plain_str()?;
            if map.insert(key.to_owned(), value.to_owned()).is_some() {
                return None;
            }
            self.ws();
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(map);
                }
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Codec, Header, encode_raw};
    use crate::{Action, Status};
    use proptest::prelude::*;
    use serde_json::value::RawValue;

    /// What serde_json makes of `text`, as `Envelope::decode` read it before: the checked
    /// header and the data's text, or the error.
    fn slow(text: &str) -> Result<(Header, Option<String>), String> {
        let h: RawHeader<'_, Option<&RawValue>> =
            serde_json::from_str(text).map_err(|e| e.to_string())?;
        let data = h.data.map(|d| d.get().to_owned());
        if let Some(d) = &data {
            check::json_data(d).map_err(|e| e.to_string())?;
        }
        h.check().map(|h| (h, data)).map_err(|e| e.to_string())
    }

    fn fast(text: &str) -> Option<Result<(Header, Option<String>), String>> {
        let (h, span) = header(text)?;
        let data = span.map(|at| text[at].to_owned());
        Some(h.check().map(|h| (h, data)).map_err(|e| e.to_string()))
    }

    /// Where the fast reader answers, serde_json answers the same.
    fn agree(text: &str) -> bool {
        match fast(text) {
            Some(f) => {
                assert_eq!(f, slow(text), "{text}");
                true
            }
            None => false,
        }
    }

    fn full_header() -> Header {
        let mut h = Header::new(Action::Complete, "vm", "717b417c-e9ff-11f1");
        h.status = Status::Failed;
        h.tid = "0123456789abcdef".into();
        h.attempt = Some(3);
        h.deadline = Some(1_800_000_000_000);
        h.lease = Some(30_000);
        h.headers = Some(BTreeMap::from([
            ("traceparent".into(), "00-ab-cd-01".into()),
            ("k".into(), "é".into()),
        ]));
        h.error = Some("boom".into());
        h.seq = Some(u32::MAX);
        h.defer = Some(20);
        h.sent = Some(u64::MAX);
        h
    }

    #[test]
    fn reads_what_aether_and_python_write() {
        let h = full_header();
        for data in [
            &b"{\"a\":[1,2,{\"b\":null}]}"[..],
            b"\"x\"",
            b"null",
            b"7",
            b"[]",
        ] {
            let bytes = encode_raw(Codec::Json, &h, data);
            assert!(agree(std::str::from_utf8(&bytes).unwrap()));
        }
        for line in [
            r#"{"action": "idle", "status": "online", "progress": 100, "data": {}, "host": "vm", "client": "704976d4-e9ff-11f1-a3ec-02fc00000001", "job": "", "workgroup": "", "task": "", "context": "", "tid": ""}"#,
            r#"{"action": "status", "status": "progress", "progress": 50, "data": {"i": 0}, "host": "vm", "client": "c", "job": "", "workgroup": "", "task": "", "context": "", "tid": ""}"#,
            " {\n\t\"action\" :\r\"cancel\" } \n",
            r#"{"action":"status","progress":101}"#,
            r#"{"action":"explode"}"#,
            r#"{"action":"status","status":"meh"}"#,
            r#"{"action":"perform","headers":{}}"#,
        ] {
            assert!(agree(line), "{line}");
        }
    }

    #[test]
    fn leaves_the_rest_to_serde() {
        for text in [
            r#"{}"#,
            r#"{"status":"progress"}"#,
            r#"{"action":"status","action":"status"}"#,
            r#"{"action":"st\u0061tus"}"#,
            r#"{"action":"status","future":1}"#,
            r#"{"action":"status","status":null}"#,
            r#"{"action":"status","progress":49.6}"#,
            r#"{"action":"status","progress":-1}"#,
            r#"{"action":"status","progress":1e2}"#,
            r#"{"action":"status","progress":01}"#,
            r#"{"action":"status","attempt":4294967296}"#,
            r#"{"action":"status","sent":18446744073709551616}"#,
            r#"{"action":"status","host":null}"#,
            r#"{"action":"status","headers":{"a":"1","a":"2"}}"#,
            r#"{"action":"status","headers":{"a":1}}"#,
            r#"{"action":"status","data":nul}"#,
            r#"{"action":"status",}"#,
            r#"{"action":"status"} x"#,
            r#"{"action":"status""#,
            "{\"action\":\"a\tb\"}",
        ] {
            assert!(fast(text).is_none(), "{text}");
        }
    }

    proptest! {
        /// Messages cut, spliced and sprinkled with JSON's own characters: wherever the fast
        /// reader answers, serde_json answers the same.
        #[test]
        fn agrees_with_serde_on_mangled_messages(
            edits in proptest::collection::vec(
                (any::<prop::sample::Index>(), 0usize..12, any::<bool>()), 1..6),
        ) {
            let h = full_header();
            let bytes = encode_raw(Codec::Json, &h, b"{\"k\":[1,\"v\"]}");
            let mut text = String::from_utf8(bytes.to_vec()).unwrap();
            let pieces = [
                " ", "\"", ":", ",", "{", "}", "null", "1", "\\", "\"action\":\"status\"", "é", "0",
            ];
            for (at, piece, delete) in edits {
                let i = at.index(text.len() + 1);
                if !text.is_char_boundary(i) {
                    continue;
                }
                if delete {
                    let end = (i + piece + 1).min(text.len());
                    if text.is_char_boundary(end) {
                        text.replace_range(i..end, "");
                    }
                } else {
                    text.insert_str(i, pieces[piece]);
                }
            }
            agree(&text);
        }
    }
}
