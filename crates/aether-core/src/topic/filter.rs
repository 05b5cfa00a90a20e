//! [`TopicFilter`]: subscription filters over topics, with `+` and `#`.

use std::fmt;
use std::str::FromStr;

use super::{Topic, validate_segment};
use crate::action::Action;
use crate::error::{Level, TopicError};

/// One level of a [`TopicFilter`]. Adapters render filters in their broker's syntax from
/// these (see [`TopicFilter::render`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FilterLevel {
    /// A literal segment, matched exactly.
    Exact(Box<str>),
    /// `+`: any one level.
    One,
    /// `#`: this level and all below; only last.
    Rest,
}

impl FilterLevel {
    /// The literal segment, or `None` for a wildcard.
    pub fn literal(&self) -> Option<&str> {
        match self {
            FilterLevel::Exact(s) => Some(s),
            FilterLevel::One | FilterLevel::Rest => None,
        }
    }
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
/// assert_eq!(filter.literal_prefix(), "u3/interop");
/// assert_eq!(filter.render(':', "*", "*"), "u3:interop:*:x:*:status");
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

    /// The levels, first to last.
    pub fn levels(&self) -> &[FilterLevel] {
        &self.levels
    }

    /// The `/`-joined literal levels before the first wildcard: everything a matching
    /// topic starts with (`u/j/+/x/#` gives `u/j`, an exact filter its whole text, `#` the
    /// empty string). A topic that matches starts with it followed by `/`, unless the
    /// filter has no wildcard.
    pub fn literal_prefix(&self) -> &str {
        let literal = self
            .levels
            .iter()
            .take_while(|l| matches!(l, FilterLevel::Exact(_)))
            .count();
        if literal == 0 {
            return "";
        }
        // Levels are `/`-separated in `text`: the prefix ends before the literal-th `/`.
        match self.text.match_indices('/').nth(literal - 1) {
            Some((at, _)) => &self.text[..at],
            None => &self.text,
        }
    }

    /// The `/`-joined MQTT form.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The filter in another broker's syntax: levels joined by `separator`, `+` written
    /// as `one` and `#` as `rest` (Redis globs: `(':', "*", "*")`; AMQP binding keys:
    /// `('.', "*", "#")`). Segments never contain a separator or wildcard of any
    /// supported broker, so literals are written as they are.
    pub fn render(&self, separator: char, one: &str, rest: &str) -> String {
        let mut out = String::with_capacity(self.text.len());
        for (i, level) in self.levels.iter().enumerate() {
            if i > 0 {
                out.push(separator);
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
    fn literal_prefixes() {
        let table = [
            ("u/j/+/x/#", "u/j"),
            ("u/j/t/x/1/status", "u/j/t/x/1/status"),
            ("u/j/t/x/+/status", "u/j/t/x"),
            ("u/#", "u"),
            ("#", ""),
            ("+/j/t/x/1/status", ""),
        ];
        for (filter, want) in table {
            let f: TopicFilter = filter.parse().unwrap();
            assert_eq!(f.literal_prefix(), want, "{filter}");
        }
    }

    #[test]
    fn filter_renderings() {
        let f: TopicFilter = "u/j/+/x/#".parse().unwrap();
        assert_eq!(f.as_str(), "u/j/+/x/#");
        assert_eq!(f.render(':', "*", "*"), "u:j:*:x:*");
        assert_eq!(f.render('.', "*", "#"), "u.j.*.x.#");
        assert!(f.has_wildcards());
        assert_eq!(f.union(), Some("u"));
        assert_eq!(
            f.levels(),
            &[
                FilterLevel::Exact("u".into()),
                FilterLevel::Exact("j".into()),
                FilterLevel::One,
                FilterLevel::Exact("x".into()),
                FilterLevel::Rest,
            ]
        );
        assert_eq!(f.levels()[1].literal(), Some("j"));
        assert_eq!(f.levels()[2].literal(), None);
        let exact = TopicFilter::exact(&t("u/j/t/x/1/status"));
        assert!(!exact.has_wildcards());
        assert!(exact.matches(&t("u/j/t/x/1/status")));
        assert!(!exact.matches(&t("u/j/t/x/2/status")));
    }
}
