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

    /// Takes the query parameters out, one by one: `f` is called with each key and value and
    /// answers whether it knows the key. The first unknown key is an error naming the keys
    /// that are known.
    pub fn take_query(
        &self,
        known: &[&str],
        mut f: impl FnMut(&str, &str) -> Result<()>,
    ) -> Result<()> {
        for (k, v) in &self.query {
            if !known.contains(&k.as_str()) {
                return Err(Error::Config(format!(
                    "unknown query parameter {k:?} in a {} URL; known: {}",
                    self.scheme,
                    known.join(", ")
                )));
            }
            f(k, v)?;
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
            .field("query", &self.query)
            .finish()
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
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(std::time::Duration::from_secs_f64)
            .ok_or_else(err)
    } else {
        Err(err())
    }
}

/// `url` with any password replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_owned()
            };
            format!("{scheme}://{masked}@{}", &rest[at + 1..])
        }
        None => url.to_owned(),
    }
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
        let u = BrokerUrl::parse("redis://h?mode=list&bogus=1").unwrap();
        let mut seen = vec![];
        let err = u
            .take_query(&["mode"], |k, v| {
                seen.push((k.to_owned(), v.to_owned()));
                Ok(())
            })
            .unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        assert_eq!(seen.len(), 1);
    }

    #[test]
    fn values() {
        assert_eq!(parse_duration("k", "250ms").unwrap().as_millis(), 250);
        assert_eq!(parse_duration("k", "1.5s").unwrap().as_millis(), 1500);
        assert!(parse_duration("k", "5").is_err());
        assert!(parse_bool("k", "maybe").is_err());
        assert_eq!(parse_value::<u32>("k", "7").unwrap(), 7);
    }
}
