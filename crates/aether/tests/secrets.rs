//! No password, whatever its shape, reaches an error, a `Debug` or a redacted URL through
//! any adapter's URL parsing.
//!
//! Passwords are made of Greek letters around the characters a URL gives meaning to, and
//! nothing else aether prints holds a Greek letter (or `%CE`/`%CF`, their UTF-8 lead
//! bytes percent-encoded), so any printed piece of a password is found.

use aether::url::{BrokerUrl, redact};

/// Password shapes: raw separators, spaces, unicode, percent signs.
const SHAPES: &[&str] = &[
    "λόγος",
    "λ/ω",
    "λ?ω",
    "λ#ω",
    "λ@ω",
    "λ:ω",
    "λ%ω",
    "λ%2Fω",
    "λ ω",
    "λ&ω=ψ",
    "/λ",
    "λ/",
    "?λ",
    "λ?",
    "@λ",
    "λ@",
    ":λ",
    "λ/ω?ψ#φ@χ:%20",
    "λ@ω/ψ",
    "λ?ω@ψ",
    "λ/ω:1",
    "λ]ω[",
];

/// URL templates; `{pw}` is the password. Some parse, most fail somewhere.
const TEMPLATES: &[&str] = &[
    "{s}://u:{pw}@h",
    "{s}://u:{pw}@h:1",
    "{s}://u:{pw}@h:notaport",
    "{s}://u:{pw}@h/x",
    "{s}://u:{pw}@h/0?bogus=1",
    "{s}://u:{pw}@h?bogus=1",
    "{s}://u:{pw}@h?max_payload=x",
    "{s}://:{pw}@h",
    "{s}://u:{pw}@[::1",
    "{s}://u:{pw}@",
    "{s}:/u:{pw}@h",
    "{s}//u:{pw}@h",
    "u:{pw}@h",
];

/// Templates with the password in a query value. A raw `&` there ends the value, so no
/// parser can tell the rest from other keys: those shapes are left out.
const QUERY_TEMPLATES: &[&str] = &[
    "{s}://h?key_password={pw}",
    "{s}://h?tls_key_password={pw}&bogus=1",
    "{s}://u:p@h?tls_key_password={pw}&max_payload=%zz",
];

fn schemes() -> Vec<&'static str> {
    let mut s = vec!["memory", "bogus"];
    if cfg!(feature = "redis") {
        s.extend(["redis", "rediss"]);
    }
    if cfg!(feature = "mqtt") {
        s.extend(["mqtt", "mqtts"]);
    }
    if cfg!(feature = "amqp") {
        s.extend(["amqp", "amqps"]);
    }
    s
}

fn percent_encode(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

fn leaks(printed: &str) -> bool {
    let upper = printed.to_ascii_uppercase();
    printed
        .chars()
        .any(|c| ('\u{370}'..='\u{3ff}').contains(&c))
        || upper.contains("%CE")
        || upper.contains("%CF")
}

/// Everything aether prints about `url`: the parse error or the parsed value's `Debug`,
/// through the shared parser and the adapter of its scheme.
fn printed(url: &str) -> Vec<String> {
    fn show<T: std::fmt::Debug>(r: aether::Result<T>, extra: impl Fn(&T) -> String) -> String {
        match r {
            Ok(v) => format!("{v:?} {}", extra(&v)),
            Err(e) => format!("{e} | {e:?}"),
        }
    }
    let mut out = vec![
        redact(url),
        show(BrokerUrl::parse(url), |_| String::new()),
        show(aether::MemoryConfig::from_url(url), |_| String::new()),
    ];
    #[cfg(feature = "redis")]
    out.push(show(aether_redis::RedisConfig::from_url(url), |c| {
        c.redacted_url()
    }));
    #[cfg(feature = "mqtt")]
    out.push(show(aether_mqtt::MqttConfig::from_url(url), |_| {
        String::new()
    }));
    #[cfg(feature = "amqp")]
    out.push(show(aether_amqp::AmqpConfig::from_url(url), |c| {
        c.redacted_url()
    }));
    out
}

#[test]
fn no_password_shape_is_printed() {
    let mut leaking = Vec::new();
    let mut checked = 0;
    for scheme in schemes() {
        let query = QUERY_TEMPLATES.iter().map(|t| (t, false));
        for (template, amp_allowed) in TEMPLATES.iter().map(|t| (t, true)).chain(query) {
            for shape in SHAPES.iter().filter(|s| amp_allowed || !s.contains('&')) {
                for pw in [shape.to_string(), percent_encode(shape)] {
                    let url = template.replace("{s}", scheme).replace("{pw}", &pw);
                    for line in printed(&url) {
                        checked += 1;
                        if leaks(&line) {
                            leaking.push(format!("{url}  =>  {line}"));
                        }
                    }
                }
            }
        }
    }
    assert!(
        leaking.is_empty(),
        "{} of {checked} printed lines hold a password:\n{}",
        leaking.len(),
        leaking.join("\n")
    );
}
