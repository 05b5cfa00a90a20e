//! Properties of everything that parses outside input: the envelope in both codecs, topics
//! and filters, and the settings of a broker URL. Whatever the bytes, no panic (and no stack
//! overflow, which would abort the run); whatever valid value, it comes back unchanged.
//! Case counts are set so the whole file runs in a few seconds.

use aether_core::envelope::{Codec, Envelope, Header, encode, encode_raw};
use aether_core::{Action, DecodeError, MemoryConfig, Status, Topic, TopicFilter};
use bytes::Bytes;
use proptest::prelude::*;
use serde_json::Value;

/// The deepest a message may nest (`aether_core::envelope` refuses a 128th level).
const MAX_DEPTH: usize = 127;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Decodes `raw` and everything a receiver may ask of it.
fn decode_all(raw: Vec<u8>) -> Result<Envelope, DecodeError> {
    let env = Envelope::decode(Bytes::from(raw))?;
    let _ = env.data_value();
    let _ = env.data::<Vec<String>>();
    let _ = format!("{env:?}");
    Ok(env)
}

/// JSON values of bounded size, nesting a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        // Quarters: exact in binary and short in decimal, so text carries them unchanged.
        (-4_000_000i64..4_000_000).prop_map(|q| Value::from(q as f64 / 4.0)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

prop_compose! {
    fn header()(
        action in proptest::sample::select(Action::ALL.to_vec()),
        status in proptest::sample::select(vec![
            Status::Initialized, Status::Progress, Status::Succeed, Status::Failed,
            Status::Online, Status::Connected, Status::Dismissed, Status::Cancelled,
        ]),
        progress in 0u8..=100,
        host in ".{0,16}",
        client in ".{0,16}",
        tid in "[a-z0-9]{0,12}",
        attempt in proptest::option::of(any::<u32>()),
        deadline in proptest::option::of(any::<u64>()),
        lease in proptest::option::of(any::<u64>()),
        headers in proptest::option::of(proptest::collection::btree_map(".{0,8}", ".{0,8}", 0..3)),
        error in proptest::option::of(".{0,16}"),
        seq in proptest::option::of(any::<u32>()),
        defer in proptest::option::of(any::<u64>()),
        sent in proptest::option::of(any::<u64>()),
    ) -> Header {
        let mut h = Header::new(action, &host, &client).status(status).progress(progress);
        h.tid = tid;
        h.attempt = attempt;
        h.deadline = deadline;
        h.lease = lease;
        h.headers = headers;
        h.error = error;
        h.seq = seq;
        h.defer = defer;
        h.sent = sent;
        h
    }
}

/// A valid envelope whose data nests `depth` arrays around null (the envelope itself is
/// the first level).
fn nested(codec: Codec, depth: usize) -> Vec<u8> {
    let data = match codec {
        Codec::Json => format!("{}null{}", "[".repeat(depth), "]".repeat(depth)).into_bytes(),
        Codec::MsgPack => [vec![0x91; depth], vec![0xc0]].concat(),
        other => panic!("no nesting written for {other:?}"),
    };
    encode_raw(codec, &Header::new(Action::Complete, "h", "c"), &data).to_vec()
}

/// `s` percent-encoded whole, for a URL query value.
fn percent(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

proptest! {
    #![proptest_config(config(1000))]

    /// Arbitrary bytes: an error or an envelope, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_all(raw);
    }

    /// Bytes past a MessagePack map marker, so the scan gets beyond the codec check: bad
    /// markers, cut values, length bombs.
    #[test]
    fn msgpack_shaped_bytes_never_panic(
        marker in 0x80u8..=0x8f,
        rest in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let mut raw = vec![marker];
        raw.extend(rest);
        let _ = decode_all(raw);
    }

    /// Text made of JSON's punctuation around an object start.
    #[test]
    fn json_shaped_text_never_panics(s in "\\{[\\[\\]{}\",:0-9a-z\\\\ .eE+-]{0,96}") {
        let _ = decode_all(s.into_bytes());
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// A header and data encoded in either codec decode to the same header and data.
    #[test]
    fn valid_envelopes_round_trip(h in header(), data in json_value()) {
        for codec in [Codec::Json, Codec::MsgPack] {
            let bytes = encode(codec, &h, &data).unwrap();
            let env = Envelope::decode(bytes).unwrap();
            prop_assert_eq!(env.codec(), codec);
            prop_assert_eq!(env.header(), &h);
            let back: Value = env.data().unwrap();
            // MessagePack carries floats as floats and integers as integers, like JSON.
            prop_assert_eq!(&back, &data);
        }
    }

    /// Data nested any depth up to ten times the limit: accepted up to the limit (and then
    /// decodable), refused past it, never a stack overflow.
    #[test]
    fn deep_nesting_is_refused_past_the_limit(depth in 0usize..1300) {
        for codec in [Codec::Json, Codec::MsgPack] {
            let raw = nested(codec, depth);
            let result = decode_all(raw);
            if depth < MAX_DEPTH {
                prop_assert!(result.is_ok(), "{:?} depth {}: {:?}", codec, depth, result.err());
            } else {
                prop_assert!(
                    matches!(result, Err(DecodeError::TooDeep { .. } | DecodeError::Json(_))),
                    "{:?} depth {}: {:?}", codec, depth, result.map(|_| ())
                );
            }
        }
    }

    /// A MessagePack length that claims far more than the payload holds, at any place.
    #[test]
    fn msgpack_length_bombs_are_refused(
        marker in proptest::sample::select(vec![0xc6u8, 0xc9, 0xdb, 0xdd, 0xdf, 0xc5, 0xda, 0xdc, 0xde]),
        claimed in 1000u32..,
        filler in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut raw = vec![0x81, 0xa4];
        raw.extend(b"data");
        raw.push(marker);
        match marker {
            0xc5 | 0xda | 0xdc | 0xde => raw.extend((claimed as u16).max(1000).to_be_bytes()),
            _ => raw.extend(claimed.to_be_bytes()),
        }
        raw.extend(filler);
        let result = decode_all(raw);
        prop_assert!(
            matches!(result, Err(DecodeError::MsgPackStructure(_))),
            "{:?}", result.map(|_| ())
        );
    }
}

/// A valid segment: none of `/ + # * : . ? [ ] \ $`, no whitespace or control characters.
fn segment() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_~!@%&=,;'<>|{}()^\\-αβγ]{1,16}"
}

proptest! {
    #![proptest_config(config(1000))]

    /// Arbitrary text as a topic or filter, in any separator: an error or a value, never a
    /// panic.
    #[test]
    fn arbitrary_topics_and_filters_never_panic(s in ".{0,80}", sep in proptest::sample::select(vec!['/', ':', '.'])) {
        if let Ok(t) = Topic::parse_with(&s, sep) {
            let _ = (t.joined(':'), t.to_string());
        }
        if let Ok(f) = s.parse::<TopicFilter>() {
            let _ = f.render('.', "*", "#");
        }
        let _ = s.parse::<Topic>();
    }

    /// Text shaped like a topic, wildcards and separators included.
    #[test]
    fn topic_shaped_text_never_panics(s in "([a-z+#*$:.]{0,4}/){0,8}[a-z+#]{0,4}") {
        let _ = s.parse::<Topic>();
        if let Ok(f) = s.parse::<TopicFilter>() {
            let _ = (f.render(':', "*", "*"), f.to_string());
        }
    }

}

proptest! {
    #![proptest_config(config(300))]

    /// A topic of valid segments prints and parses back to itself in every transport's
    /// form, and the filters made from it by wildcards match it.
    #[test]
    fn valid_topics_round_trip_and_match_their_filters(
        levels in proptest::collection::vec(segment(), 5),
        action in proptest::sample::select(Action::ALL.to_vec()),
        wild in proptest::collection::vec(any::<bool>(), 5),
        hash_at in 0usize..7,
    ) {
        let s = format!("{}/{}", levels.join("/"), action.as_str());
        let t: Topic = s.parse().unwrap();
        prop_assert_eq!(t.to_string(), s.clone());
        for sep in [':', '.', '/'] {
            prop_assert_eq!(Topic::parse_with(&t.joined(sep), sep).unwrap(), t.clone());
        }
        let mut parts: Vec<String> = levels
            .iter()
            .zip(&wild)
            .map(|(l, w)| if *w { "+".to_owned() } else { l.clone() })
            .collect();
        parts.push(action.as_str().to_owned());
        if hash_at < parts.len() {
            parts.truncate(hash_at);
            parts.push("#".to_owned());
        }
        let filter: TopicFilter = parts.join("/").parse().unwrap();
        prop_assert!(filter.matches(&t), "{} does not match {}", filter, t);
        prop_assert_eq!(filter.to_string().parse::<TopicFilter>().unwrap(), filter);
    }
}

proptest! {
    #![proptest_config(config(1000))]

    /// Any value for any setting of a broker URL: an error or a setting, never a panic.
    #[test]
    fn arbitrary_setting_values_never_panic(
        key in proptest::sample::select(vec![
            "queue_capacity", "subscription_capacity", "max_payload", "redeliver",
            "dead_letter_capacity", "nonsense",
        ]),
        value in prop_oneof![
            ".{0,24}",
            "[0-9.e+-]{1,12}(ms|s)",
            (any::<f64>()).prop_map(|f| format!("{f}s")),
            (any::<u64>()).prop_map(|n| format!("{n}ms")),
        ],
    ) {
        let url = format!("memory://x?{key}={}", percent(&value));
        let _ = MemoryConfig::from_url(&url);
    }

    /// Any text as a duration: an error or a duration, never a panic (`1e300s` once
    /// overflowed `Duration`).
    #[test]
    fn arbitrary_durations_never_panic(
        value in prop_oneof![
            ".{0,24}",
            "[0-9.e+-]{1,16}(ms|s)",
            (any::<f64>()).prop_map(|f| format!("{f}s")),
            (any::<u64>()).prop_map(|n| format!("{n}ms")),
        ],
    ) {
        let _ = aether_core::url::parse_duration("timeout", &value);
    }
}
