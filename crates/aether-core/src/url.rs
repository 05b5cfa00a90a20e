//! A small parser for broker URLs (`scheme://[user[:password]@]host[:port][/path][?k=v&...]`),
//! shared by every adapter so they refuse the same mistakes the same way, and [`Secret`],
//! whose `Debug` never prints the value.

use std::fmt;

use crate::error::{Error, Result};

/// A value that must not be printed: its `Debug` and `Display` write `***`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The value, for handing to a broker client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret::new(value)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A parsed broker URL. Percent-escapes in the user, password, path and query are decoded.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BrokerUrl {
    /// The scheme, lower-cased (`redis`, `mqtts`, `memory`, ...).
    pub scheme: String,
    /// The user name, if any.
    pub username: Option<String>,
    /// The password, if any.
    pub password: Option<Secret>,
    /// The host; empty when the URL has none (`memory://`). IPv6 hosts keep their brackets.
    pub host: String,
    /// The port, if given.
    pub port: Option<u16>,
    /// The path without its leading `/`; empty when none.
    pub path: String,
    /// The query pairs, in order.
    pub query: Vec<(String, String)>,
}

impl BrokerUrl {
    /// Parses `url`. The error never contains the password.
    pub fn parse(url: &str) -> Result<BrokerUrl> {
        let bad = |why: &str| Error::Config(format!("invalid URL {}: {why}", redact(url)));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("missing `://`"))?;
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            return Err(bad("invalid scheme"));
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        if path.contains('@') || query.is_some_and(|q| q.contains('@')) {
            return Err(bad(
                "raw `@` after the host; percent-encode a `/`, `?` or `#` in the user info \
                 (`%2F`, `%3F`, `%23`) and an `@` elsewhere (`%40`)",
            ));
        }
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(ui) => match ui.split_once(':') {
                Some((u, p)) => (
                    Some(decode(u).map_err(|_| bad("bad escape in user"))?),
                    Some(Secret(
                        decode(p).map_err(|_| bad("bad escape in password"))?,
                    )),
                ),
                None => (
                    Some(decode(ui).map_err(|_| bad("bad escape in user"))?),
                    None,
                ),
            },
        };
        let username = username.filter(|u| !u.is_empty());
        let (host, port) = if let Some(end) = hostport.strip_prefix('[').and_then(|h| h.find(']')) {
            let host = &hostport[..end + 2];
            let after = &hostport[end + 2..];
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(bad("garbage after IPv6 host")),
            };
            (host, port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        let port = match port {
            Some(p) => Some(p.parse::<u16>().map_err(|_| bad("invalid port"))?),
            None => None,
        };
        let mut pairs = Vec::new();
        if let Some(q) = query {
            for pair in q.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                pairs.push((
                    decode(k).map_err(|_| bad("bad escape in query"))?,
                    decode(v).map_err(|_| bad("bad escape in query"))?,
                ));
            }
        }
        Ok(BrokerUrl {
            scheme: scheme.to_ascii_lowercase(),
            username,
            password,
            host: host.to_owned(),
            port,
            path: decode(path).map_err(|_| bad("bad escape in path"))?,
            query: pairs,
        })
    }

    /// Applies the query parameters to `settings` through its table of `keys` (see
    /// [`settings!`](crate::settings!)), in order. The first unknown key is an error naming
    /// the keys that are known.
    pub fn apply_query<C>(&self, keys: &[crate::settings::Key<C>], settings: &mut C) -> Result<()> {
        for (i, (k, v)) in self.query.iter().enumerate() {
            let Some(key) = keys.iter().find(|key| key.name == k) else {
                let known: Vec<_> = keys.iter().map(|key| key.name).collect();
                // A raw `&` in a secret value (`token=ab&cd`) splits it, and the rest
                // would be printed here as a key's name.
                let which = match i.checked_sub(1).map(|p| &self.query[p].0) {
                    Some(secret) if is_secret_key(secret) => {
                        format!("after {secret} (a raw `&` in its value? percent-encode it as %26)")
                    }
                    _ => format!("{k:?}"),
                };
                return Err(Error::Config(format!(
                    "unknown query parameter {which} in a {} URL; known: {}",
                    self.scheme,
                    known.join(", ")
                )));
            };
            (key.apply)(settings, v)?;
        }
        Ok(())
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerUrl")
            .field("scheme", &self.scheme)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("path", &self.path)
            .field(
                "query",
                &self
                    .query
                    .iter()
                    .map(|(k, v)| (k, if is_secret_key(k) { "***" } else { v }))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The URL again, percent-encoded, with the password and every secret query value
/// ([`is_secret_key`]) written `***`: parsing it gives back the same URL but for those.
impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme)?;
        match (&self.username, &self.password) {
            (Some(u), Some(_)) => write!(f, "{}:***@", encode(u))?,
            (None, Some(_)) => f.write_str(":***@")?,
            (Some(u), None) => write!(f, "{}@", encode(u))?,
            (None, None) => {}
        }
        f.write_str(&self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        if !self.path.is_empty() {
            write!(f, "/{}", encode(&self.path))?;
        }
        for (i, (k, v)) in self.query.iter().enumerate() {
            let v = if is_secret_key(k) {
                "***".into()
            } else {
                encode(v)
            };
            write!(f, "{}{}={v}", if i == 0 { '?' } else { '&' }, encode(k))?;
        }
        Ok(())
    }
}

/// Parses a query value, naming the key in the error.
pub fn parse_value<T: std::str::FromStr>(key: &str, value: &str) -> Result<T> {
    value
        .parse()
        .map_err(|_| Error::Config(format!("invalid value {value:?} for {key}")))
}

/// Parses a boolean query value (`true`/`false`/`1`/`0`/`yes`/`no`).
pub fn parse_bool(key: &str, value: &str) -> Result<bool> {
    match value {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(Error::Config(format!(
            "invalid value {value:?} for {key}: expected true or false"
        ))),
    }
}

/// Parses a duration query value: a number with unit `ms` or `s` (`250ms`, `30s`).
pub fn parse_duration(key: &str, value: &str) -> Result<std::time::Duration> {
    let err = || {
        Error::Config(format!(
            "invalid duration {value:?} for {key}: expected e.g. 250ms or 30s"
        ))
    };
    if let Some(ms) = value.strip_suffix("ms") {
        ms.parse()
            .map(std::time::Duration::from_millis)
            .map_err(|_| err())
    } else if let Some(s) = value.strip_suffix('s') {
        s.parse::<f64>()
            .ok()
            // Too big for a Duration (`1e300s`) is an error, not a panic.
            .and_then(|s| std::time::Duration::try_from_secs_f64(s).ok())
            .ok_or_else(err)
    } else {
        Err(err())
    }
}

/// `url` with any password replaced by `***`, for messages and logs: the one in the user
/// info, and the value of every query key that names a password (`tls_key_password=`).
///
/// Conservative where the URL is ambiguous: a password holding a raw `/`, `?` or `#` moves
/// the end of the authority before the `@` that ends the user info, and nothing tells how
/// much of what follows is password. So when an `@` follows the authority, everything after
/// the scheme is masked.
pub fn redact(url: &str) -> String {
    let (head, rest) = match url.split_once("://") {
        Some((scheme, rest)) if !scheme.contains('@') => (&url[..scheme.len() + 3], rest),
        _ => ("", url),
    };
    let Some(at) = rest.rfind('@') else {
        return redact_query(url);
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if at > authority_end {
        return format!("{head}***");
    }
    let host_and_after = redact_query(&rest[at + 1..]);
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{head}{user}:***@{host_and_after}"),
        None => format!("{head}{}@{host_and_after}", &rest[..at]),
    }
}

/// Whether a query key holds a secret, so its value is never printed.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password") || key.contains("secret") || key.contains("token")
}

/// `s` with the value of each secret query key ([`is_secret_key`]) replaced by `***`.
fn redact_query(s: &str) -> String {
    let Some((before, query)) = s.split_once('?') else {
        return s.to_owned();
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if is_secret_key(&decode(k).unwrap_or_else(|()| k.to_owned())) => {
                format!("{k}=***")
            }
            _ => pair.to_owned(),
        })
        .collect();
    format!("{before}?{}", pairs.join("&"))
}

/// Percent-encodes every byte but the unreserved ones (`A-Z a-z 0-9 - . _ ~`).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(s: &str) -> std::result::Result<String, ()> {
    if !s.contains('%') {
        return Ok(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(())?;
            let hex = std::str::from_utf8(hex).map_err(|_| ())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_shapes() {
        let u = BrokerUrl::parse("redis://user:p%40ss@127.0.0.1:6380/2?mode=list&x=1").unwrap();
        assert_eq!(u.scheme, "redis");
        assert_eq!(u.username.as_deref(), Some("user"));
        assert_eq!(u.password.as_ref().unwrap().expose(), "p@ss");
        assert_eq!(u.host, "127.0.0.1");
        assert_eq!(u.port, Some(6380));
        assert_eq!(u.path, "2");
        assert_eq!(
            u.query,
            vec![("mode".into(), "list".into()), ("x".into(), "1".into())]
        );
        let u = BrokerUrl::parse("amqp://guest:guest@[::1]:5672/%2f").unwrap();
        assert_eq!(u.host, "[::1]");
        assert_eq!(u.path, "/");
        let u = BrokerUrl::parse("memory://").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("", None, ""));
        let u = BrokerUrl::parse("redis://:secret@h").unwrap();
        assert_eq!(u.username, None);
        assert_eq!(u.password.unwrap().expose(), "secret");
    }

    #[test]
    fn never_prints_the_password() {
        let u = BrokerUrl::parse("mqtt://bob:hunter2@h:1883").unwrap();
        assert!(!format!("{u:?}").contains("hunter2"));
        let err = BrokerUrl::parse("mqtt://bob:hunter2@h:notaport").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert_eq!(redact("amqp://u:pw@h/v?x=1"), "amqp://u:***@h/v?x=1");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
    }

    #[test]
    fn refuses_unknown_query_keys() {
        #[derive(Default)]
        struct Seen(Vec<String>);
        let keys = [crate::settings::Key {
            name: "mode",
            apply: |s: &mut Seen, v: &str| {
                s.0.push(v.to_owned());
                Ok(())
            },
        }];
        let u = BrokerUrl::parse("redis://h?mode=list&bogus=1").unwrap();
        let mut seen = Seen::default();
        let err = u.apply_query(&keys, &mut seen).unwrap_err();
        assert!(
            err.to_string().contains("bogus") && err.to_string().contains("mode"),
            "{err}"
        );
        assert_eq!(seen.0, ["list"]);

        // What follows a raw `&` in a secret is part of it: not printed.
        let push = |s: &mut Seen, v: &str| {
            s.0.push(v.to_owned());
            Ok(())
        };
        let keys =
            ["mode", "token", "password"].map(|name| crate::settings::Key { name, apply: push });
        for url in [
            "redis://h?token=s3cr&zq9",
            "redis://h?mode=x&password=s3cr&zq9=1",
        ] {
            let err = BrokerUrl::parse(url)
                .unwrap()
                .apply_query(&keys, &mut seen)
                .unwrap_err()
                .to_string();
            assert!(err.contains("%26") && !err.contains("zq9"), "{url}: {err}");
        }
    }

    #[test]
    fn values() {
        assert_eq!(parse_duration("k", "250ms").unwrap().as_millis(), 250);
        assert_eq!(parse_duration("k", "1.5s").unwrap().as_millis(), 1500);
        assert!(parse_duration("k", "5").is_err());
        // Past what a Duration holds: refused (it panicked), as are negatives and NaN.
        for bad in ["1e300s", "-1s", "NaNs", "infs"] {
            assert!(parse_duration("k", bad).is_err(), "{bad}");
        }
        assert!(parse_bool("k", "maybe").is_err());
        assert_eq!(parse_value::<u32>("k", "7").unwrap(), 7);
    }

    #[test]
    fn redacts_ambiguous_user_info_whole() {
        for (url, shown) in [
            (
                "redis://u:pw@h:1/0?mode=list",
                "redis://u:***@h:1/0?mode=list",
            ),
            ("redis://u@h", "redis://u@h"),
            ("redis://:pw@h", "redis://:***@h"),
            ("redis://u:p@ss@h", "redis://u:***@h"),
            ("redis://u:pa/ss@h/0", "redis://***"),
            ("redis://u:pa?ss@h", "redis://***"),
            ("redis://u:pa#ss@h", "redis://***"),
            ("redis://h/0?k=a@b", "redis://***"),
            ("redis:/u:pw@h", "***"),
            ("u:pw@h", "u:***@h"),
            (
                "mqtts://h?tls_key_password=pw&x=1",
                "mqtts://h?tls_key_password=***&x=1",
            ),
            (
                "mqtts://u:pw@h?key%5Fpassword=pw",
                "mqtts://u:***@h?key%5Fpassword=***",
            ),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
        let err = BrokerUrl::parse("redis://u:pa/ss@h")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("percent-encode") && !err.contains("ss"),
            "{err}"
        );
    }

    #[test]
    fn displays_what_it_parsed_without_secrets() {
        let u = BrokerUrl::parse("amqps://u%20v:p%2Fw@[::1]:5671/%2f?tls_key_password=k&a=b%26")
            .unwrap();
        assert_eq!(
            u.to_string(),
            "amqps://u%20v:***@[::1]:5671/%2F?tls_key_password=***&a=b%26"
        );
        assert!(!format!("{u:?}").contains("p/w") && !format!("{u:?}").contains("\"k\""));
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// Greek letters around the characters a URL gives meaning to: nothing else in
        /// these URLs or in aether's messages holds a Greek letter.
        fn password() -> impl Strategy<Value = String> {
            "[α-ω]{1,4}([/?#@:%& =\\[\\]][α-ω]{1,4}){0,4}"
        }

        fn leaks(printed: &str) -> bool {
            let upper = printed.to_ascii_uppercase();
            printed.chars().any(|c| ('α'..='ω').contains(&c))
                || upper.contains("%CE")
                || upper.contains("%CF")
        }

        prop_compose! {
            fn broker_url()(
                scheme in "[a-z][a-z0-9+.-]{0,8}",
                username in proptest::option::of(".{1,12}"),
                password in proptest::option::of(".{0,12}"),
                host in "([a-z0-9.-]{0,20}|\\[[0-9a-f:]{2,12}\\])",
                port in proptest::option::of(any::<u16>()),
                path in ".{0,16}",
                query in proptest::collection::vec(("[a-z_]{1,8}", ".{0,8}"), 0..4),
            ) -> BrokerUrl {
                BrokerUrl {
                    scheme,
                    username,
                    password: password.map(Secret::new),
                    host,
                    port,
                    path,
                    query,
                }
            }
        }

        proptest! {
            #[test]
            fn arbitrary_strings_never_panic(s in ".{0,64}") {
                let _ = BrokerUrl::parse(&s).map(|u| u.to_string());
                let _ = redact(&s);
            }

            #[test]
            fn url_shaped_strings_never_panic(s in "[a-z]{1,5}://[a-z:@/?#%&=\\[\\]0-9.]{0,40}") {
                let _ = BrokerUrl::parse(&s).map(|u| u.to_string());
                let _ = redact(&s);
            }

            #[test]
            fn valid_urls_round_trip_with_secrets_masked(u in broker_url()) {
                let printed = u.to_string();
                let back = BrokerUrl::parse(&printed).unwrap();
                let mut expected = u.clone();
                expected.password = u.password.as_ref().map(|_| Secret::new("***"));
                for (k, v) in &mut expected.query {
                    if is_secret_key(k) {
                        *v = "***".into();
                    }
                }
                prop_assert_eq!(back, expected, "{}", printed);
            }

            #[test]
            fn passwords_never_printed(
                pw in password(),
                template in prop::sample::select(vec![
                    "s://u:{pw}@h", "s://u:{pw}@h:1/p?k=v", "s://u:{pw}@h:port", "s://:{pw}@h",
                    "s://u:{pw}@[::1", "s:/u:{pw}@h", "u:{pw}@h", "s://u:{pw}@h?k=%zz",
                    "s://h?tls_key_password={pw}", "s://h?x=1&key_password={pw}&y=%zz",
                ]),
                encoded in any::<bool>(),
            ) {
                let in_query = template.contains("password={pw}");
                prop_assume!(!(in_query && pw.contains(['&', '#'])));
                let pw = if encoded { encode(&pw) } else { pw };
                let url = template.replace("{pw}", &pw);
                let printed = match BrokerUrl::parse(&url) {
                    Ok(u) => format!("{u} {u:?}"),
                    Err(e) => format!("{e} {e:?}"),
                };
                prop_assert!(!leaks(&printed), "{} => {}", url, printed);
                let redacted = redact(&url);
                prop_assert!(!leaks(&redacted), "{} => {}", url, redacted);
            }
        }
    }
}
