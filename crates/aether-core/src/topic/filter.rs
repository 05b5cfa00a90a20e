//! [`TopicFilter`]: subscription filters over topics, with `+` and `#`.

use std::fmt;
use std::str::FromStr;

use super::{Topic, validate_segment};
use crate::action::Action;
use crate::error::{Level, TopicError};

/// One level of a [`TopicFilter`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum FilterLevel {
    Exact(Box<str>),
    /// `+`: any one level.
    One,
    /// `#`: this level and all below; only last.
    Rest,
}

/// A validated subscription filter over topics: each level is a literal, `+` (any one
/// level) or, as the last level only, `#` (any remaining levels).
///
/// ```
/// use aether_core::{Topic, TopicFilter};
///
/// let filter: TopicFilter = "u3/interop/+/x/+/status".parse()?;
/// let topic: Topic = "u3/interop/echo/x/72605384/status".parse()?;
/// assert!(filter.matches(&topic));
/// assert_eq!(filter.to_redis_glob(), "u3:interop:*:x:*:status");
/// assert_eq!(filter.to_amqp_binding(), "u3.interop.*.x.*.status");
/// assert!("u3/#/x".parse::<TopicFilter>().is_err());
/// # Ok::<(), aether_core::TopicError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TopicFilter {
    levels: Vec<FilterLevel>,
    text: Box<str>,
}

impl TopicFilter {
    /// Builds a filter from its levels (`"+"` and `"#"` are wildcards).
    pub fn from_levels<S: AsRef<str>>(levels: &[S]) -> Result<TopicFilter, TopicError> {
        let n = levels.len();
        let mut out = Vec::with_capacity(n);
        for (i, raw) in levels.iter().enumerate() {
            let raw = raw.as_ref();
            let level = match raw {
                "+" => FilterLevel::One,
                "#" if i + 1 == n => FilterLevel::Rest,
                "#" => return Err(TopicError::HashNotLast),
                _ => {
                    if raw.len() > 1 && (raw.contains('+') || raw.contains('#')) {
                        return Err(TopicError::PartialWildcard {
                            segment: raw.to_owned(),
                        });
                    }
                    let Some(&lvl) = Level::TOPIC.get(i) else {
                        return Err(TopicError::WrongLevels { found: n });
                    };
                    validate_segment(lvl, raw)?;
                    if lvl == Level::Action {
                        raw.parse::<Action>()?;
                    }
                    FilterLevel::Exact(raw.into())
                }
            };
            out.push(level);
        }
        let ends_in_rest = matches!(out.last(), Some(FilterLevel::Rest));
        if (!ends_in_rest && n != 6) || n > 6 || n == 0 {
            return Err(TopicError::WrongLevels { found: n });
        }
        let text = levels
            .iter()
            .map(|s| s.as_ref())
            .collect::<Vec<_>>()
            .join("/")
            .into_boxed_str();
        Ok(TopicFilter { levels: out, text })
    }

    /// The filter that matches exactly `topic`.
    pub fn exact(topic: &Topic) -> TopicFilter {
        TopicFilter {
            levels: (0..6)
                .map(|i| FilterLevel::Exact(topic.level(i).into()))
                .collect(),
            text: topic.as_str().into(),
        }
    }

    /// Whether `topic` matches.
    pub fn matches(&self, topic: &Topic) -> bool {
        for (i, level) in self.levels.iter().enumerate() {
            match level {
                FilterLevel::Rest => return true,
                FilterLevel::One => {}
                FilterLevel::Exact(s) => {
                    if **s != *topic.level(i) {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Whether any level is a wildcard.
    pub fn has_wildcards(&self) -> bool {
        self.levels
            .iter()
            .any(|l| !matches!(l, FilterLevel::Exact(_)))
    }

    /// The literal first level (the union), if it is not a wildcard.
    pub fn union(&self) -> Option<&str> {
        match self.levels.first() {
            Some(FilterLevel::Exact(s)) => Some(s),
            _ => None,
        }
    }

    /// The `/`-joined MQTT form.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// A Redis glob pattern over `:`-joined channel names. `+` becomes `*`; since every
    /// topic has exactly six levels and segments cannot contain `:`, a `*` between literal
    /// separators never spans a level. `#` becomes a trailing `*`.
    pub fn to_redis_glob(&self) -> String {
        self.render(':', "*", "*")
    }

    /// An AMQP topic-exchange binding key: `+` becomes `*`, `#` stays `#`.
    pub fn to_amqp_binding(&self) -> String {
        self.render('.', "*", "#")
    }

    fn render(&self, sep: char, one: &str, rest: &str) -> String {
        let mut out = String::with_capacity(self.text.len());
        for (i, level) in self.levels.iter().enumerate() {
            if i > 0 {
                out.push(sep);
            }
            out.push_str(match level {
                FilterLevel::Exact(s) => s,
                FilterLevel::One => one,
                FilterLevel::Rest => rest,
            });
        }
        out
    }
}

impl FromStr for TopicFilter {
    type Err = TopicError;

    /// Parses the `/`-joined MQTT form.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TopicFilter::from_levels(&s.split('/').collect::<Vec<_>>())
    }
}

impl TryFrom<&str> for TopicFilter {
    type Error = TopicError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicFilter({})", self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Topic {
        s.parse().unwrap()
    }

    #[test]
    fn filters_match_like_mqtt() {
        let topic = t("u/j/t/x/1/status");
        let table: &[(&str, bool)] = &[
            ("u/j/t/x/1/status", true),
            ("u/j/t/x/+/status", true),
            ("u/+/+/+/+/+", true),
            ("u/#", true),
            ("#", true),
            ("u/j/t/x/1/#", true),
            ("u/j/t/x/+/complete", false),
            ("v/#", false),
            ("u/j/t/y/+/status", false),
        ];
        for (filter, want) in table {
            let f: TopicFilter = filter.parse().unwrap();
            assert_eq!(f.matches(&topic), *want, "{filter}");
        }
    }

    #[test]
    fn bad_filters_are_refused() {
        let table: &[(&str, TopicError)] = &[
            ("u/#/x", TopicError::HashNotLast),
            ("u/j/t", TopicError::WrongLevels { found: 3 }),
            (
                "u/j/t/x/1/status/more",
                TopicError::WrongLevels { found: 7 },
            ),
            (
                "u/j+/t/x/1/status",
                TopicError::PartialWildcard {
                    segment: "j+".into(),
                },
            ),
            ("u/j/t/x/1/nope", TopicError::UnknownAction("nope".into())),
            ("u//t/x/1/status", TopicError::Empty { level: Level::Job }),
        ];
        for (input, want) in table {
            assert_eq!(&input.parse::<TopicFilter>().unwrap_err(), want, "{input}");
        }
    }

    #[test]
    fn filter_renderings() {
        let f: TopicFilter = "u/j/+/x/#".parse().unwrap();
        assert_eq!(f.as_str(), "u/j/+/x/#");
        assert_eq!(f.to_redis_glob(), "u:j:*:x:*");
        assert_eq!(f.to_amqp_binding(), "u.j.*.x.#");
        assert!(f.has_wildcards());
        assert_eq!(f.union(), Some("u"));
        let exact = TopicFilter::exact(&t("u/j/t/x/1/status"));
        assert!(!exact.has_wildcards());
        assert!(exact.matches(&t("u/j/t/x/1/status")));
        assert!(!exact.matches(&t("u/j/t/x/2/status")));
    }
}
