//! Bad input never panics: random and mutated topics and payloads only ever give typed
//! errors. (A small deterministic generator; no fuzzing dependency.)

use aether_core::{Bytes, Codec, Envelope, Header, Topic, TopicFilter, envelope::encode};

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const ALPHABET: &[char] = &[
    'a', 'b', 'Z', '0', '9', '-', '_', '/', '+', '#', '*', ':', '.', ' ', '\t', '\n', '\0', '$',
    '?', '[', ']', '\\', 'é', '✓', '\u{7f}', '\u{200b}',
];

fn random_text(rng: &mut Rng, max: usize) -> String {
    let len = rng.below(max + 1);
    (0..len)
        .map(|_| ALPHABET[rng.below(ALPHABET.len())])
        .collect()
}

#[test]
fn random_topics_and_filters_give_typed_errors_or_round_trip() {
    let mut rng = Rng(0x5eed_0001);
    let mut valid = 0;
    for _ in 0..50_000 {
        let s = random_text(&mut rng, 40);
        for sep in ['/', ':', '.'] {
            if let Ok(t) = Topic::parse_with(&s, sep) {
                valid += 1;
                // A valid topic renders and parses back identically in every form.
                assert_eq!(t.as_str().parse::<Topic>().unwrap(), t);
                for other in [':', '.'] {
                    assert_eq!(Topic::parse_with(&t.joined(other), other).unwrap(), t);
                }
                assert!(TopicFilter::exact(&t).matches(&t));
            }
        }
        if let Ok(f) = s.parse::<TopicFilter>() {
            assert_eq!(f.as_str(), s);
        }
    }
    // Valid six-level topics built from safe characters.
    for _ in 0..5_000 {
        let seg = |rng: &mut Rng| -> String {
            let n = 1 + rng.below(10);
            (0..n)
                .map(|_| ['a', 'Z', '0', '-', '_', 'é'][rng.below(6)])
                .collect()
        };
        let parts: Vec<String> = (0..5).map(|_| seg(&mut rng)).collect();
        let s = format!(
            "{}/{}/{}/{}/{}/status",
            parts[0], parts[1], parts[2], parts[3], parts[4]
        );
        let t: Topic = s.parse().unwrap();
        assert_eq!(t.as_str(), s);
        valid += 1;
    }
    assert!(valid >= 5_000);
}

#[test]
fn random_and_mutated_payloads_give_typed_errors() {
    let mut rng = Rng(0x5eed_0002);
    let mut header = Header::new(aether_core::Action::Status, "host", "client");
    header.attempt = Some(2);
    header.error = Some("e".into());
    let seeds: Vec<Vec<u8>> = [Codec::Json, Codec::MsgPack]
        .into_iter()
        .map(|c| {
            encode(c, &header, &serde_json::json!({"k": [1, "two", null]}))
                .unwrap()
                .to_vec()
        })
        .collect();
    for i in 0..100_000 {
        let bytes: Vec<u8> = if i % 2 == 0 {
            // Pure noise, sometimes starting like a JSON object or a MessagePack map.
            let len = rng.below(64);
            let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if let Some(first) = b.first_mut() {
                *first = [b'{', 0x85, 0xde, *first][rng.below(4)];
            }
            b
        } else {
            // A valid envelope with a few bytes flipped, cut or inserted.
            let mut b = seeds[rng.below(2)].clone();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(b.len());
                match rng.below(3) {
                    0 => b[at] = rng.next() as u8,
                    1 => b.truncate(at),
                    _ => b.insert(at, rng.next() as u8),
                }
                if b.is_empty() {
                    break;
                }
            }
            b
        };
        if let Ok(env) = Envelope::decode(Bytes::from(bytes)) {
            let _ = env.data_value();
            let _ = env.data::<Vec<u8>>();
            assert!(env.header().progress <= 100);
        }
    }
}
