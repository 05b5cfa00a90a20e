//! Eager checks of a received message, before serde sees it.
//!
//! The header is decoded with serde, but the data only when the receiver asks for it, so
//! without these checks a message whose data nests thousands of levels deep or holds text
//! that is not UTF-8 would pass as valid: it would become a task's outcome on a client and
//! run a handler on a worker. Worse, MessagePack nested 1,000 levels deep overflows the
//! stack of a debug build inside rmp-serde, whose own limit is 1,024 levels. So every
//! message is checked whole, without building any value:
//!
//! - MessagePack by [`msgpack`], an iterative scan of the encoding: at most [`MAX_DEPTH`]
//!   levels, every string UTF-8, every length within the payload (a length bomb claiming
//!   four billion elements in ten bytes fails at once), exactly one value.
//! - JSON by [`json_text`] (the payload is UTF-8) and [`json_data`], which walks the data
//!   through serde_json, refusing more than [`MAX_DEPTH`] levels and escapes such as lone
//!   surrogates; serde_json checks the rest of the syntax.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::error::DecodeError;

/// The deepest a message may nest, its own object counting as the first level: serde_json's
/// limit (it refuses a 128th level), applied to MessagePack as well.
pub const MAX_DEPTH: usize = 127;

/// A JSON payload as text: it must be UTF-8.
pub(super) fn json_text(raw: &[u8]) -> Result<&str, DecodeError> {
    std::str::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8)
}

/// Checks that `raw` is exactly one MessagePack value nesting at most [`MAX_DEPTH`] levels,
/// with UTF-8 strings and lengths that fit the payload. Iterative: the stack does not grow
/// with the input.
pub(super) fn msgpack(raw: &[u8]) -> Result<(), DecodeError> {
    // Values still to read at each open level; the bottom entry is the one top-level value.
    let mut pending = [0u64; MAX_DEPTH + 1];
    pending[0] = 1;
    let mut open = 1;
    let mut at = 0usize;
    let truncated = || DecodeError::MsgPackStructure("truncated");
    while open > 0 {
        if pending[open - 1] == 0 {
            open -= 1;
            continue;
        }
        pending[open - 1] -= 1;
        let marker = *raw.get(at).ok_or_else(truncated)?;
        at += 1;
        // How many bytes follow the marker, and what kind of value it opens.
        let (skip, kind): (u64, Kind) = match marker {
            0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => (0, Kind::Scalar),
            0x80..=0x8f => (0, Kind::Map(u64::from(marker & 0x0f))),
            0x90..=0x9f => (0, Kind::Array(u64::from(marker & 0x0f))),
            0xa0..=0xbf => (u64::from(marker & 0x1f), Kind::Str),
            0xc1 => return Err(DecodeError::MsgPackStructure("reserved marker 0xc1")),
            0xc4 => (be(raw, &mut at, 1)?, Kind::Scalar),
            0xc5 => (be(raw, &mut at, 2)?, Kind::Scalar),
            0xc6 => (be(raw, &mut at, 4)?, Kind::Scalar),
            // Extension: length, then a type byte and the data.
            0xc7 => (be(raw, &mut at, 1)? + 1, Kind::Scalar),
            0xc8 => (be(raw, &mut at, 2)? + 1, Kind::Scalar),
            0xc9 => (be(raw, &mut at, 4)? + 1, Kind::Scalar),
            0xca => (4, Kind::Scalar),
            0xcb => (8, Kind::Scalar),
            0xcc | 0xd0 => (1, Kind::Scalar),
            0xcd | 0xd1 => (2, Kind::Scalar),
            0xce | 0xd2 => (4, Kind::Scalar),
            0xcf | 0xd3 => (8, Kind::Scalar),
            0xd4 => (2, Kind::Scalar),
            0xd5 => (3, Kind::Scalar),
            0xd6 => (5, Kind::Scalar),
            0xd7 => (9, Kind::Scalar),
            0xd8 => (17, Kind::Scalar),
            0xd9 => (be(raw, &mut at, 1)?, Kind::Str),
            0xda => (be(raw, &mut at, 2)?, Kind::Str),
            0xdb => (be(raw, &mut at, 4)?, Kind::Str),
            0xdc => (0, Kind::Array(be(raw, &mut at, 2)?)),
            0xdd => (0, Kind::Array(be(raw, &mut at, 4)?)),
            0xde => (0, Kind::Map(be(raw, &mut at, 2)?)),
            0xdf => (0, Kind::Map(be(raw, &mut at, 4)?)),
        };
        let rest = (raw.len() - at) as u64;
        if skip > rest {
            return Err(truncated());
        }
        let end = at + skip as usize;
        match kind {
            Kind::Scalar => {}
            Kind::Str => {
                std::str::from_utf8(&raw[at..end]).map_err(|_| DecodeError::InvalidUtf8)?;
            }
            Kind::Array(n) | Kind::Map(n) => {
                let values = if matches!(kind, Kind::Map(_)) {
                    2 * n
                } else {
                    n
                };
                // `open` counts the bottom slot, so this is the level the container adds.
                if open > MAX_DEPTH {
                    return Err(DecodeError::TooDeep { limit: MAX_DEPTH });
                }
                // Every value takes at least one byte: a length bomb stops here.
                if values > rest {
                    return Err(truncated());
                }
                pending[open] = values;
                open += 1;
            }
        }
        at = end;
    }
    if at != raw.len() {
        return Err(DecodeError::MsgPackStructure("bytes after the message"));
    }
    Ok(())
}

enum Kind {
    Scalar,
    Str,
    Array(u64),
    Map(u64),
}

/// Reads a big-endian length of `n` bytes at `*at` and moves past it.
fn be(raw: &[u8], at: &mut usize, n: usize) -> Result<u64, DecodeError> {
    let bytes = raw
        .get(*at..*at + n)
        .ok_or(DecodeError::MsgPackStructure("truncated"))?;
    *at += n;
    Ok(bytes.iter().fold(0, |acc, b| acc << 8 | u64::from(*b)))
}

/// Checks the data of a JSON message, taken out of it: exactly one value, nesting at most
/// `MAX_DEPTH - 1` levels (the message is the first), every string and escape valid.
pub(super) fn json_data(text: &str) -> Result<(), DecodeError> {
    let mut de = serde_json::Deserializer::from_str(text);
    Checked {
        left: MAX_DEPTH - 1,
    }
    .deserialize(&mut de)
    .map_err(DecodeError::Json)?;
    de.end().map_err(DecodeError::Json)
}

/// Checks the JSON value at the start of `text` as [`json_data`] does (the text after it
/// is not looked at) and returns its length; `None` where [`json_data`] would refuse it or
/// `text` does not start with a value. Checking and finding the end in one walk saves the
/// message's reader a second parse of the data.
pub(super) fn json_data_prefix(text: &str) -> Option<usize> {
    /// Data checked by [`Checked`], for serde_json's stream reader, which tells where a
    /// value ends.
    struct Data;
    impl<'de> Deserialize<'de> for Data {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Data, D::Error> {
            Checked {
                left: MAX_DEPTH - 1,
            }
            .deserialize(d)
            .map(|()| Data)
        }
    }
    if text.starts_with([' ', '\t', '\n', '\r']) {
        return None;
    }
    let mut values = serde_json::Deserializer::from_str(text).into_iter::<Data>();
    values.next()?.ok()?;
    Some(values.byte_offset())
}

/// A value that is walked and thrown away: unlike [`serde::de::IgnoredAny`], which
/// serde_json skips without checking text or escapes, it makes the decoder parse every
/// level and every string, and refuses containers more than `left` levels deep.
#[derive(Clone, Copy)]
struct Checked {
    left: usize,
}

impl<'de> DeserializeSeed<'de> for Checked {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Checked {
    /// The check of the values inside a container, one level deeper.
    fn inner<E: de::Error>(self) -> Result<Checked, E> {
        match self.left.checked_sub(1) {
            Some(left) => Ok(Checked { left }),
            None => Err(E::custom(format_args!(
                "data nests more than {} levels",
                MAX_DEPTH - 1
            ))),
        }
    }
}

impl<'de> Visitor<'de> for Checked {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.inner()?;
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.inner()?;
        while map.next_entry_seed(inner, inner)?.is_some() {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested_arrays(depth: usize) -> Vec<u8> {
        let mut v = vec![0x91; depth - 1];
        v.push(0x90);
        v
    }

    #[test]
    fn msgpack_table() {
        type Check = fn(&Result<(), DecodeError>) -> bool;
        let ok: Check = |r| r.is_ok();
        let mut deepest_allowed = vec![0x81, 0xa1, b'd'];
        deepest_allowed.extend(nested_arrays(MAX_DEPTH - 1));
        let mut too_deep = vec![0x81, 0xa1, b'd'];
        too_deep.extend(nested_arrays(MAX_DEPTH));
        let cases: Vec<(&str, Vec<u8>, Check)> = vec![
            ("empty map", vec![0x80], ok),
            (
                "every scalar",
                {
                    let mut v = vec![0xdc, 0, 19];
                    v.extend([0x00, 0x7f, 0xe0, 0xff, 0xc0, 0xc2, 0xc3]);
                    v.extend([0xc4, 1, 9, 0xc7, 1, 5, 9, 0xca, 0, 0, 0, 0]);
                    v.extend([0xcb, 0, 0, 0, 0, 0, 0, 0, 0, 0xcc, 1, 0xd1, 0, 1]);
                    v.extend([0xd4, 1, 2, 0xd8]);
                    v.extend([0; 17]);
                    v.extend([
                        0xa2, 0xc3, 0xa9, 0xd9, 1, b'x', 0xda, 0, 0, 0xdb, 0, 0, 0, 0,
                    ]);
                    v
                },
                ok,
            ),
            ("deepest allowed", deepest_allowed, ok),
            ("one level too deep", too_deep, |r| {
                matches!(r, Err(DecodeError::TooDeep { limit: MAX_DEPTH }))
            }),
            ("1000 levels", nested_arrays(1000), |r| {
                matches!(r, Err(DecodeError::TooDeep { .. }))
            }),
            (
                "bad UTF-8 in a fixstr",
                vec![0x81, 0xa1, b'd', 0xa1, 0xff],
                |r| matches!(r, Err(DecodeError::InvalidUtf8)),
            ),
            ("bad UTF-8 in a key", vec![0x81, 0xa1, 0xc3, 0xc0], |r| {
                matches!(r, Err(DecodeError::InvalidUtf8))
            }),
            ("map32 bomb", vec![0xdf, 0xff, 0xff, 0xff, 0xff], |r| {
                matches!(r, Err(DecodeError::MsgPackStructure(_)))
            }),
            (
                "str32 bomb",
                vec![0xdb, 0xff, 0xff, 0xff, 0xff, b'a'],
                |r| matches!(r, Err(DecodeError::MsgPackStructure(_))),
            ),
            ("ext32 bomb", vec![0xc9, 0xff, 0xff, 0xff, 0xff], |r| {
                matches!(r, Err(DecodeError::MsgPackStructure(_)))
            }),
            ("cut length", vec![0xde, 0x00], |r| {
                matches!(r, Err(DecodeError::MsgPackStructure(_)))
            }),
            ("missing value", vec![0x81, 0xa1, b'd'], |r| {
                matches!(r, Err(DecodeError::MsgPackStructure(_)))
            }),
            ("reserved marker", vec![0x81, 0xa1, b'd', 0xc1], |r| {
                matches!(r, Err(DecodeError::MsgPackStructure(_)))
            }),
            ("trailing byte", vec![0x80, 0x00], |r| {
                matches!(r, Err(DecodeError::MsgPackStructure(_)))
            }),
        ];
        for (name, input, check) in cases {
            let result = msgpack(&input);
            assert!(check(&result), "{name}: {result:?}");
        }
    }
}
