//! Checks of what arrives on a subscription, shared by clients (replies) and workers
//! (cancels): topic, size and envelope. Bad messages are counted and dropped.

use std::sync::atomic::Ordering;

use crate::envelope::Envelope;
use crate::error::DecodeError;
use crate::stats::Counters;
use crate::topic::Topic;
use crate::transport::Received;

/// Checks a broadcast message: topic, size, envelope. Bad ones are counted and dropped.
pub(crate) fn accept_broadcast(
    received: Received,
    limit: usize,
    counters: &Counters,
) -> Option<(Topic, Envelope)> {
    let msg = match received {
        Ok(msg) => msg,
        Err(invalid) => {
            counters.invalid_topic.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(topic = %invalid.raw_topic, error = %invalid.error, "message on an invalid topic dropped");
            return None;
        }
    };
    if msg.payload.len() > limit {
        counters.oversized.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(topic = %msg.topic, size = msg.payload.len(), limit, "oversized message dropped");
        return None;
    }
    match Envelope::decode(msg.payload) {
        Ok(env) if env.header().action == msg.topic.action() => Some((msg.topic, env)),
        Ok(env) => {
            counters.unexpected_action.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(topic = %msg.topic, action = %env.header().action, "action does not match the topic; dropped");
            None
        }
        Err(e) => {
            let counter = match e {
                DecodeError::UnknownAction(_) => &counters.unknown_action,
                _ => &counters.malformed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(topic = %msg.topic, error = %e, "malformed message dropped");
            None
        }
    }
}
