//! What a dead letter becomes on the broker: its topic, its content cut to a bound with the
//! reason and original size attached, its expiry, and whether it is retained.
//!
//! Everything the broker keeps of dead letters is bounded, whatever arrives: each retained
//! one holds at most `dead_letter_max_payload` bytes, expires after `dead_letter_expiry`
//! (MQTT 5), and at most `dead_letter_capacity` are retained per expiry window; the rest
//! are published without retain, so live subscribers still see every one.

use std::sync::Mutex;
use std::time::Duration;

use aether_core::{Bytes, DeadLetter, Error, Result};
use tokio::time::Instant;

use crate::config::{MqttConfig, MqttVersion};

/// A dead letter ready to publish.
#[derive(Debug)]
pub(crate) struct Letter {
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
    pub(crate) retain: bool,
    /// Message expiry in seconds (MQTT 5).
    pub(crate) expiry: Option<u32>,
    /// MQTT 5 user properties: reason, original topic, size, truncation.
    pub(crate) user: Vec<(&'static str, String)>,
}

impl Letter {
    /// The user properties as `Publish` takes them.
    pub(crate) fn user_pairs(&self) -> Vec<(&str, &str)> {
        self.user.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }
}

/// How many dead letters may still be retained in the current window.
#[derive(Debug)]
pub(crate) struct RetainBudget {
    max: usize,
    /// `None`: the window never ends (MQTT 3.1.1, where retained messages do not expire).
    window: Option<Duration>,
    state: Mutex<(Instant, usize)>,
}

impl RetainBudget {
    pub(crate) fn new(config: &MqttConfig) -> RetainBudget {
        let window = (config.version == MqttVersion::V5).then_some(config.dead_letter_expiry);
        RetainBudget {
            max: config.dead_letter_capacity,
            window,
            state: Mutex::new((Instant::now(), 0)),
        }
    }

    /// Takes one retained slot; false once the window's are used up.
    pub(crate) fn take(&self) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some(window) = self.window
            && now.duration_since(st.0) >= window
        {
            *st = (now, 0);
        }
        if st.1 >= self.max {
            return false;
        }
        st.1 += 1;
        true
    }
}

/// The topic of a dead letter: `{dead_letter_topic}/{topic}`, wildcards replaced.
pub(crate) fn topic(config: &MqttConfig, letter: &DeadLetter) -> Result<String> {
    let Some(prefix) = &config.dead_letter_topic else {
        return Err(Error::unsupported(
            "mqtt",
            "a dead-letter place (dead_letter_topic is off)",
        ));
    };
    let tail: String = letter
        .topic
        .chars()
        .map(|c| {
            if matches!(c, '+' | '#' | '\0') {
                '_'
            } else {
                c
            }
        })
        .collect();
    Ok(format!("{prefix}/{tail}"))
}

/// What publishing `letter` means under `config`, taking a retained slot from `budget` if
/// it is to be retained.
pub(crate) fn prepare(
    config: &MqttConfig,
    budget: &RetainBudget,
    letter: &DeadLetter,
) -> Result<Letter> {
    let topic = topic(config, letter)?;
    let size = letter.payload.len();
    let bound = config.dead_letter_max_payload.min(config.max_payload);
    let payload = letter.payload.slice(..size.min(bound));
    let mut user = vec![
        ("aether-reason", letter.reason.to_string()),
        ("aether-topic", letter.topic.clone()),
        ("aether-size", size.to_string()),
    ];
    if payload.len() < size {
        user.push(("aether-truncated", "true".to_owned()));
    }
    let v5 = config.version == MqttVersion::V5;
    let retain = config.dead_letter_retain && budget.take();
    if config.dead_letter_retain && !retain {
        tracing::debug!(%topic, "dead letter not retained: dead_letter_capacity reached");
    }
    Ok(Letter {
        topic,
        payload,
        retain,
        // Checked by `validate` to fit.
        expiry: v5.then(|| config.dead_letter_expiry.as_secs().max(1) as u32),
        user,
    })
}

#[cfg(test)]
mod tests {
    use aether_core::DeadLetterReason;

    use super::*;

    fn letter(payload: &'static [u8]) -> DeadLetter {
        DeadLetter {
            topic: "u/j/t/x/+#/perform".into(),
            payload: Bytes::from_static(payload),
            reason: DeadLetterReason::Malformed("bad".into()),
        }
    }

    #[test]
    fn content_is_cut_to_the_bound_and_says_so() {
        let c = MqttConfig::default().dead_letter_max_payload(4);
        let b = RetainBudget::new(&c);
        let l = prepare(&c, &b, &letter(b"0123456789")).unwrap();
        assert_eq!(l.topic, "aether-dead-letter/u/j/t/x/__/perform");
        assert_eq!(&l.payload[..], b"0123");
        assert!(l.retain);
        assert_eq!(l.expiry, Some(7 * 24 * 3600));
        let user = l.user_pairs();
        assert!(user.contains(&("aether-size", "10")));
        assert!(user.contains(&("aether-truncated", "true")));
        assert!(user.contains(&("aether-reason", "malformed payload: bad")));
        // Never above max_payload either.
        let c = c.dead_letter_max_payload(100).max_payload(6);
        let l = prepare(&c, &b, &letter(b"0123456789")).unwrap();
        assert_eq!(&l.payload[..], b"012345");
        // Short content is kept whole.
        let l = prepare(&c, &b, &letter(b"01")).unwrap();
        assert!(!l.user_pairs().iter().any(|(k, _)| *k == "aether-truncated"));
    }

    #[test]
    fn no_expiry_on_mqtt_3_1_1_and_none_without_a_topic() {
        let c = MqttConfig::default().version(MqttVersion::V3_1_1);
        let l = prepare(&c, &RetainBudget::new(&c), &letter(b"x")).unwrap();
        assert_eq!(l.expiry, None);
        let c = MqttConfig::default().dead_letter_topic(None::<String>);
        let err = prepare(&c, &RetainBudget::new(&c), &letter(b"x")).unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn retained_slots_per_expiry_window() {
        let c = MqttConfig::default()
            .dead_letter_capacity(2)
            .dead_letter_expiry(Duration::from_secs(10));
        let b = RetainBudget::new(&c);
        assert!(b.take() && b.take());
        assert!(!b.take(), "the third in a window is not retained");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(b.take(), "a new window");
        // MQTT 3.1.1: retained dead letters never expire, so the slots never come back.
        let b = RetainBudget::new(&c.clone().version(MqttVersion::V3_1_1));
        assert!(b.take() && b.take() && !b.take());
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(!b.take());
        // Not retaining at all takes no slot.
        let c = c.dead_letter_retain(false).dead_letter_capacity(0);
        let l = prepare(&c, &RetainBudget::new(&c), &letter(b"x")).unwrap();
        assert!(!l.retain);
    }
}
