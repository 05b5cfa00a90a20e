//! What a node's or a worker's settings need of their transport, checked once, when the
//! node is built ([`AetherBuilder::build`](crate::AetherBuilder::build)) and when a worker
//! starts ([`WorkerBuilder::start`](crate::WorkerBuilder::start)): a setting asked for
//! explicitly whose promise the transport cannot keep is an [`Error::Config`] that says
//! what to change, instead of a promise silently not kept.
//!
//! | setting | needs | otherwise |
//! |---|---|---|
//! | node `max_payload(n)` | every channel carries `n` bytes ([`Capabilities::max_payload`]) | refused (a default limit above the transport's is lowered to it) |
//! | node `defer_accept(d)`, `d > 0` | a lost completion of a task never accepted is recovered: the client chases unaccepted tasks (redispatch on, and the transport does not redeliver or is not durable) or the transport reports gaps ([`Capabilities::gap_signals`]) | refused (the default is simply not used) |
//! | worker `retry(..)` | a dead-letter place for the perform that failed every attempt ([`Capabilities::dead_letters`]) | refused |
//!
//! The remaining capabilities need no refusal: the core adapts to them (`redelivers_on_crash`,
//! `durable` and `gap_signals` decide when a client dispatches a task again) or no setting
//! depends on them (`ordered`, `multi_level_wildcards`, `shared_between_processes`).

use crate::error::{Error, Result};
use crate::node::Config;
use crate::transport::{Capabilities, SharedTransport};

/// The node settings that were set explicitly rather than left at their defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Explicit {
    /// `max_payload` was set.
    pub(crate) max_payload: bool,
    /// `defer_accept` was set.
    pub(crate) defer_accept: bool,
}

/// Checks a node's settings against the transport of each of its channels.
pub(crate) fn check_node<'a>(
    config: &Config,
    explicit: Explicit,
    channels: impl IntoIterator<Item = (&'a String, &'a SharedTransport)>,
) -> Result<()> {
    for (channel, transport) in channels {
        node_needs(config, explicit, &transport.capabilities())
            .map_err(|need| refusal(channel, transport.name(), &need))?;
    }
    Ok(())
}

/// Checks a worker's settings against the transport of its channel.
pub(crate) fn check_worker(channel: &str, transport: &SharedTransport, retry: bool) -> Result<()> {
    worker_needs(retry, &transport.capabilities())
        .map_err(|need| refusal(channel, transport.name(), &need))
}

fn refusal(channel: &str, transport: &str, need: &str) -> Error {
    let on = if channel.is_empty() {
        format!("the default channel ({transport})")
    } else {
        format!("channel {channel:?} ({transport})")
    };
    Error::Config(format!("{need}, which {on} cannot keep"))
}

/// What in a node's settings `caps` cannot keep: `Err` says what to change.
fn node_needs(config: &Config, explicit: Explicit, caps: &Capabilities) -> Result<(), String> {
    if explicit.max_payload && config.max_payload > caps.max_payload {
        return Err(format!(
            "max_payload is {} bytes: lower it to at most {} (or raise the transport's \
             max_payload) for a limit",
            config.max_payload, caps.max_payload
        ));
    }
    if explicit.defer_accept && !config.defer_accept.is_zero() && !defer_is_safe(config, caps) {
        let fix = if config.redispatch == Some(false) {
            "drop defer_accept, or redispatch(false) which turns held-back acceptance off"
        } else {
            "drop defer_accept, or use redispatch(true) or a transport with gap_signals"
        };
        return Err(format!(
            "defer_accept holds acceptances back, which is safe only where a lost completion \
             of an unaccepted task is recovered: {fix}, for that recovery"
        ));
    }
    Ok(())
}

/// Whether a client may let workers hold back acceptance: where it chases tasks it has not
/// seen accepted, or where the transport reports gaps and redispatch is not off. The same
/// rule as the client's when it sends a perform.
fn defer_is_safe(config: &Config, caps: &Capabilities) -> bool {
    match config.redispatch {
        Some(on) => on,
        None => !caps.redelivers_on_crash || !caps.durable || caps.gap_signals,
    }
}

/// What in a worker's settings `caps` cannot keep.
fn worker_needs(retry: bool, caps: &Capabilities) -> Result<(), String> {
    if retry && !caps.dead_letters {
        return Err(
            "retry(..) sends a perform that failed every attempt to the dead-letter place: \
             configure the transport's dead-letter place (e.g. MQTT dead_letter_topic) or drop \
             retry(..), for that place"
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn caps() -> Capabilities {
        Capabilities::new().max_payload(1000)
    }

    #[test]
    fn node_settings_against_capabilities() {
        let none = Explicit::default();
        let payload = Explicit {
            max_payload: true,
            ..none
        };
        let defer = Explicit {
            defer_accept: true,
            ..none
        };
        let redelivering = caps().durable(true).redelivers_on_crash(true);
        let config = |max_payload: usize, defer_ms: u64, redispatch: Option<bool>| Config {
            max_payload,
            defer_accept: Duration::from_millis(defer_ms),
            redispatch,
            ..Config::default()
        };
        #[rustfmt::skip]
        let table: &[(&str, Config, Explicit, Capabilities, Option<&str>)] = &[
            ("default payload above the transport's: lowered, not refused",
                config(1 << 20, 20, None), none, caps(), None),
            ("payload asked within the limit",
                config(1000, 20, None), payload, caps(), None),
            ("payload asked above the limit",
                config(1001, 20, None), payload, caps(), Some("lower it to at most 1000")),
            ("default defer on a transport where it is not used",
                config(1000, 20, None), none, redelivering.clone(), None),
            ("defer asked where the client chases unaccepted tasks",
                config(1000, 50, None), defer, caps(), None),
            ("defer asked on a redelivering transport with gaps",
                config(1000, 50, None), defer, redelivering.clone().gap_signals(true), None),
            ("defer asked on a redelivering transport without gaps",
                config(1000, 50, None), defer, redelivering.clone(), Some("a transport with gap_signals")),
            ("defer asked there, with redispatch on",
                config(1000, 50, Some(true)), defer, redelivering.clone(), None),
            ("defer asked with redispatch off",
                config(1000, 50, Some(false)), defer, caps().gap_signals(true), Some("redispatch(false)")),
            ("defer of zero asked with redispatch off",
                config(1000, 0, Some(false)), defer, caps(), None),
            ("a durable transport that does not redeliver: the client chases",
                config(1000, 50, None), defer, caps().durable(true), None),
        ];
        for (what, config, explicit, caps, want) in table {
            let got = node_needs(config, *explicit, caps);
            match (want, &got) {
                (None, Ok(())) => {}
                (Some(needle), Err(msg)) if msg.contains(needle) => {}
                _ => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn worker_settings_against_capabilities() {
        let table = [
            (false, caps(), true),
            (true, caps(), false),
            (true, caps().dead_letters(true), true),
        ];
        for (retry, caps, ok) in table {
            assert_eq!(
                worker_needs(retry, &caps).is_ok(),
                ok,
                "retry {retry}, {caps:?}"
            );
        }
    }

    #[test]
    fn refusal_names_the_channel_and_transport() {
        let e = refusal("", "mqtt", "retry(..) needs x");
        assert_eq!(
            e.to_string(),
            "invalid configuration: retry(..) needs x, which the default channel (mqtt) cannot keep"
        );
        let e = refusal("bulk", "redis-list", "n");
        assert!(
            e.to_string().contains("channel \"bulk\" (redis-list)"),
            "{e}"
        );
    }
}
