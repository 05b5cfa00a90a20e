//! The topic grammar `union/job/task/context/tid/action`, filters over it ([`TopicFilter`]),
//! and work queues ([`WorkQueue`]).
//!
//! One validator ([`validate_segment`]) guards every segment, so a topic that is valid here
//! renders safely on every transport: MQTT (`/`), Redis (`:`) and AMQP routing keys (`.`).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::action::Action;
use crate::error::{Level, TopicError};

mod filter;
mod queue;

pub use filter::{FilterLevel, TopicFilter};
pub use queue::WorkQueue;

/// The longest segment, in bytes.
pub const MAX_SEGMENT_LEN: usize = 64;

/// The longest topic, in bytes: the AMQP limit for a routing key.
pub const MAX_TOPIC_LEN: usize = 255;

/// The workgroup Python AetherMagic's `AetherTask` always uses; aether's default, so aether
/// workers share load with Python ones instead of receiving every task a second time.
pub const DEFAULT_WORKGROUP: &str = "workgroup";

/// Checks one segment: not empty, at most [`MAX_SEGMENT_LEN`] bytes, and free of the
/// separators and wildcards of every supported transport (`/ + # * : .`, the Redis glob
/// characters `? [ ] \`, `$`), whitespace and control characters.
pub fn validate_segment(level: Level, segment: &str) -> Result<(), TopicError> {
    if segment.is_empty() {
        return Err(TopicError::Empty { level });
    }
    if segment.len() > MAX_SEGMENT_LEN {
        return Err(TopicError::TooLong {
            level,
            len: segment.len(),
            max: MAX_SEGMENT_LEN,
        });
    }
    // Nearly every segment is plain ASCII: one table lookup per byte decides it. Anything
    // else (a refused byte, or any non-ASCII text) takes the character loop, which finds
    // the first offending character and says why.
    if segment.is_ascii() && segment.bytes().all(|b| ASCII_ALLOWED[usize::from(b)]) {
        return Ok(());
    }
    for (at, ch) in segment.char_indices() {
        if let Some(reason) = forbidden(ch) {
            return Err(TopicError::ForbiddenChar {
                level,
                segment: segment.to_owned(),
                ch,
                at,
                reason,
            });
        }
    }
    Ok(())
}

/// Which ASCII bytes [`forbidden`] allows, computed from it at compile time.
const ASCII_ALLOWED: [bool; 128] = {
    let mut table = [false; 128];
    let mut b = 0;
    while b < 128 {
        table[b] = forbidden_ascii(b as u8).is_none();
        b += 1;
    }
    table
};

/// [`forbidden`] for an ASCII byte (a `const fn`, for [`ASCII_ALLOWED`]).
const fn forbidden_ascii(b: u8) -> Option<&'static str> {
    Some(match b {
        b'/' => "it is the MQTT level separator",
        b':' => "it is the Redis key separator",
        b'.' => "it is the AMQP routing-key separator",
        b'+' | b'#' => "it is an MQTT wildcard",
        b'*' => "it is a Redis glob and AMQP wildcard",
        b'?' | b'[' | b']' | b'\\' => "it is a Redis glob character",
        b'$' => "MQTT reserves it ($share, $SYS)",
        0..=0x1f | 0x7f => "control characters are not allowed",
        b' ' => "whitespace is not allowed",
        _ => return None,
    })
}

fn forbidden(ch: char) -> Option<&'static str> {
    if ch.is_ascii() {
        return forbidden_ascii(ch as u8);
    }
    Some(match ch {
        c if c.is_control() => "control characters are not allowed",
        c if c.is_whitespace() => "whitespace is not allowed",
        _ => return None,
    })
}

/// A full, validated task address: `union/job/task/context/tid/action`.
///
/// Cheap to clone. Displays in its MQTT form.
///
/// ```
/// use aether_core::{Action, Topic};
///
/// let topic: Topic = "u3/interop/echo/x/72605384/perform".parse()?;
/// assert_eq!(topic.tid(), "72605384");
/// assert_eq!(topic.action(), Action::Perform);
/// assert_eq!(Topic::parse_with("u3:interop:echo:x:72605384:perform", ':')?, topic);
/// assert!("u3/interop/echo/x/a.b/perform".parse::<Topic>().is_err());
/// # Ok::<(), aether_core::TopicError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Topic {
    /// The `/`-joined form.
    text: Arc<str>,
    /// Byte offset of each of the five separators.
    seps: [u16; 5],
    action: Action,
}

impl Topic {
    /// Builds a topic from its six levels.
    pub fn new(
        union: &str,
        job: &str,
        task: &str,
        context: &str,
        tid: &str,
        action: Action,
    ) -> Result<Topic, TopicError> {
        let levels = [union, job, task, context, tid];
        for (level, s) in Level::TOPIC.iter().zip(levels) {
            validate_segment(*level, s)?;
        }
        let len = levels.iter().map(|s| s.len() + 1).sum::<usize>() + action.as_str().len();
        if len > MAX_TOPIC_LEN {
            return Err(TopicError::TopicTooLong {
                len,
                max: MAX_TOPIC_LEN,
            });
        }
        let mut text = TopicText::default();
        let mut seps = [0u16; 5];
        for (i, s) in levels.iter().enumerate() {
            text.push(s);
            seps[i] = text.len as u16;
            text.push("/");
        }
        text.push(action.as_str());
        Ok(Topic {
            text: text.share(),
            seps,
            action,
        })
    }

    /// Parses a topic whose levels are joined by `separator` (`/` MQTT, `:` Redis, `.` AMQP).
    pub fn parse_with(s: &str, separator: char) -> Result<Topic, TopicError> {
        let mut levels = s.split(separator);
        let mut parts = [""; 6];
        let mut found = 0;
        for part in levels.by_ref() {
            if found < 6 {
                parts[found] = part;
            }
            found += 1;
        }
        if found != 6 {
            return Err(TopicError::WrongLevels { found });
        }
        validate_segment(Level::Action, parts[5])?;
        let action = parts[5].parse::<Action>()?;
        Topic::new(parts[0], parts[1], parts[2], parts[3], parts[4], action)
    }

    fn level(&self, i: usize) -> &str {
        let start = if i == 0 {
            0
        } else {
            self.seps[i - 1] as usize + 1
        };
        let end = if i < 5 {
            self.seps[i] as usize
        } else {
            self.text.len()
        };
        &self.text[start..end]
    }

    /// The union: the namespace shared by cooperating services.
    pub fn union(&self) -> &str {
        self.level(0)
    }
    /// The job.
    pub fn job(&self) -> &str {
        self.level(1)
    }
    /// The task.
    pub fn task(&self) -> &str {
        self.level(2)
    }
    /// The context.
    pub fn context(&self) -> &str {
        self.level(3)
    }
    /// The task id.
    pub fn tid(&self) -> &str {
        self.level(4)
    }
    /// The action.
    pub fn action(&self) -> Action {
        self.action
    }

    /// `union/job/task/context`: the part every task of one work queue shares.
    pub fn queue_prefix(&self) -> &str {
        &self.text[..self.seps[3] as usize]
    }

    /// The same address with another action.
    pub fn with_action(&self, action: Action) -> Topic {
        if action == self.action {
            return self.clone();
        }
        let mut text = TopicText::default();
        text.push(&self.text[..=self.seps[4] as usize]);
        text.push(action.as_str());
        Topic {
            text: text.share(),
            seps: self.seps,
            action,
        }
    }

    /// The `/`-joined MQTT form (also what `Display` prints).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The levels joined by `separator` instead of `/` (a Redis channel name with `:`, an
    /// AMQP routing key with `.`). Segments never contain a separator of any supported
    /// broker, so this parses back with [`Topic::parse_with`].
    pub fn joined(&self, separator: char) -> String {
        if separator == '/' {
            return self.text.to_string();
        }
        let mut s = String::with_capacity(self.text.len());
        for ch in self.text.chars() {
            s.push(if ch == '/' { separator } else { ch });
        }
        s
    }
}

/// A topic's text put together on the stack, so the topic allocates once (its `Arc`).
struct TopicText {
    buf: [u8; MAX_TOPIC_LEN],
    len: usize,
}

impl Default for TopicText {
    fn default() -> Self {
        TopicText {
            buf: [0; MAX_TOPIC_LEN],
            len: 0,
        }
    }
}

impl TopicText {
    /// Appends `s`; the caller has checked the total fits [`MAX_TOPIC_LEN`].
    fn push(&mut self, s: &str) {
        self.buf[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
        self.len += s.len();
    }

    fn share(&self) -> Arc<str> {
        // Whole `str`s were appended, so this is UTF-8.
        Arc::from(std::str::from_utf8(&self.buf[..self.len]).expect("appended whole strs"))
    }
}

impl FromStr for Topic {
    type Err = TopicError;

    /// Parses the `/`-joined MQTT form.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Topic::parse_with(s, '/')
    }
}

impl TryFrom<&str> for Topic {
    type Error = TopicError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({})", self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of allowed ASCII bytes and the character loop refuse exactly what the
    /// grammar's original character rules refused, for every character there is.
    #[test]
    fn every_character_is_judged_as_the_rules_say() {
        fn rule_allows(ch: char) -> bool {
            !matches!(
                ch,
                '/' | ':' | '.' | '+' | '#' | '*' | '?' | '[' | ']' | '\\' | '$'
            ) && !ch.is_control()
                && !ch.is_whitespace()
        }
        for ch in (0..=0x10ffff).filter_map(char::from_u32) {
            let segment = format!("a{ch}b");
            assert_eq!(
                validate_segment(Level::Job, &segment).is_ok(),
                rule_allows(ch),
                "{ch:?}"
            );
        }
    }

    fn t(s: &str) -> Topic {
        s.parse().unwrap()
    }

    #[test]
    fn topic_parses_and_renders() {
        let topic = t("u3/interop/echo/x/72605384/perform");
        assert_eq!(
            [
                topic.union(),
                topic.job(),
                topic.task(),
                topic.context(),
                topic.tid()
            ],
            ["u3", "interop", "echo", "x", "72605384"]
        );
        assert_eq!(topic.action(), Action::Perform);
        assert_eq!(topic.to_string(), "u3/interop/echo/x/72605384/perform");
        assert_eq!(topic.joined(':'), "u3:interop:echo:x:72605384:perform");
        assert_eq!(topic.joined('.'), "u3.interop.echo.x.72605384.perform");
        for sep in [':', '.', '/'] {
            assert_eq!(Topic::parse_with(&topic.joined(sep), sep).unwrap(), topic);
        }
        assert_eq!(topic.queue_prefix(), "u3/interop/echo/x");
        let status = topic.with_action(Action::Status);
        assert_eq!(status.as_str(), "u3/interop/echo/x/72605384/status");
        assert_eq!(status.tid(), "72605384");
        // The online topic of Python services: client ids contain '-'.
        let online = t("u3/system/online/vm/704976d4-e9ff-11f1-a3ec-02fc00000001/online");
        assert_eq!(online.tid(), "704976d4-e9ff-11f1-a3ec-02fc00000001");
    }

    #[test]
    fn bad_topics_say_which_segment_and_why() {
        let cases: &[(&str, TopicError)] = &[
            ("u/j/t/x/tid", TopicError::WrongLevels { found: 5 }),
            (
                "u/j/t/x/tid/perform/extra",
                TopicError::WrongLevels { found: 7 },
            ),
            (
                "u//t/x/tid/perform",
                TopicError::Empty { level: Level::Job },
            ),
            (
                "u/j/t/x/tid/explode",
                TopicError::UnknownAction("explode".into()),
            ),
            (
                "u/j/t/x/tid/",
                TopicError::Empty {
                    level: Level::Action,
                },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(&input.parse::<Topic>().unwrap_err(), want, "{input}");
        }
        for (bad, ch) in [
            ("a.b", '.'),
            ("a:b", ':'),
            ("a*b", '*'),
            ("a b", ' '),
            ("a\tb", '\t'),
            ("a\u{0}b", '\u{0}'),
            ("a?b", '?'),
            ("a[b", '['),
            ("a$b", '$'),
            ("a+b", '+'),
            ("a#b", '#'),
        ] {
            match Topic::new("u", "j", "t", "x", bad, Action::Status) {
                Err(TopicError::ForbiddenChar {
                    level: Level::Tid,
                    ch: c,
                    at: 1,
                    ..
                }) => assert_eq!(c, ch),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let long = "a".repeat(MAX_SEGMENT_LEN + 1);
        assert_eq!(
            Topic::new("u", &long, "t", "x", "1", Action::Status).unwrap_err(),
            TopicError::TooLong {
                level: Level::Job,
                len: MAX_SEGMENT_LEN + 1,
                max: MAX_SEGMENT_LEN
            }
        );
        let max = "a".repeat(MAX_SEGMENT_LEN);
        assert!(matches!(
            Topic::new(&max, &max, &max, &max, &max, Action::Status),
            Err(TopicError::TopicTooLong { .. })
        ));
        // The error message names the segment and the reason.
        let msg = "u/j/t/x/a.b/status"
            .parse::<Topic>()
            .unwrap_err()
            .to_string();
        assert!(msg.contains("tid") && msg.contains("AMQP"), "{msg}");
    }
}
