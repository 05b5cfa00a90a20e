//! [`Gate`]: the checks every transport call starts with (closed? payload too large? a
//! perform on the work queue?) and the close signal its background tasks listen to.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

use crate::action::Action;
use crate::error::{Error, Result};
use crate::topic::Topic;

/// A transport's open/closed state and payload limit.
///
/// Calls check it first ([`check_publish`](Gate::check_publish),
/// [`check_enqueue`](Gate::check_enqueue), [`check_open`](Gate::check_open)), so every
/// transport refuses the same things with the same errors: [`Error::Closed`] after
/// [`close`](Gate::close), [`Error::PayloadTooLarge`] past the limit,
/// [`Error::NotAPerform`] for an enqueue whose topic is not a perform. Reading it costs one atomic load.
///
/// ```
/// use aether_core::kit::Gate;
/// use aether_core::{Action, Error, Topic};
///
/// let gate = Gate::new(4);
/// let topic = Topic::new("u", "j", "t", "x", "1", Action::Perform)?;
/// assert!(gate.check_enqueue(&topic, b"1234").is_ok());
/// assert!(matches!(gate.check_publish(b"12345"), Err(Error::PayloadTooLarge { size: 5, limit: 4 })));
/// assert!(gate.close());
/// assert!(!gate.close(), "only the first close counts");
/// assert!(matches!(gate.check_open(), Err(Error::Closed)));
/// # Ok::<(), aether_core::TopicError>(())
/// ```
pub struct Gate {
    closed: AtomicBool,
    signal: watch::Sender<bool>,
    max_payload: usize,
}

impl Gate {
    /// An open gate for payloads of at most `max_payload` bytes.
    pub fn new(max_payload: usize) -> Gate {
        Gate {
            closed: AtomicBool::new(false),
            signal: watch::Sender::new(false),
            max_payload,
        }
    }

    /// The payload limit, in bytes.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Whether [`close`](Gate::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// [`Error::Closed`] once closed.
    pub fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// What [`Transport::publish`](crate::Transport::publish) checks: open, and the payload
    /// within the limit.
    pub fn check_publish(&self, payload: &[u8]) -> Result<()> {
        self.check_open()?;
        if payload.len() > self.max_payload {
            return Err(Error::PayloadTooLarge {
                size: payload.len(),
                limit: self.max_payload,
            });
        }
        Ok(())
    }

    /// What [`Transport::enqueue`](crate::Transport::enqueue) checks: as a publish, and the
    /// topic's action is `perform`.
    pub fn check_enqueue(&self, topic: &Topic, payload: &[u8]) -> Result<()> {
        self.check_publish(payload)?;
        if topic.action() != Action::Perform {
            return Err(Error::NotAPerform {
                topic: topic.to_string(),
            });
        }
        Ok(())
    }

    /// Closes the gate; true the first time only, so the caller tears down once.
    pub fn close(&self) -> bool {
        if self.closed.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.signal.send_replace(true);
        true
    }

    /// A receiver that sees `true` once the gate closes, for background tasks that end
    /// with the transport (`closed.wait_for(|c| *c)`).
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.signal.subscribe()
    }
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate")
            .field("closed", &self.is_closed())
            .field("max_payload", &self.max_payload)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(action: Action) -> Topic {
        Topic::new("u", "j", "t", "x", "1", action).unwrap()
    }

    #[test]
    fn refusals_in_order_closed_then_size_then_action() {
        let open = Gate::new(2);
        let closed = Gate::new(2);
        closed.close();
        let status = topic(Action::Status);
        let perform = topic(Action::Perform);
        type Case<'a> = (&'a Gate, &'a Topic, &'a [u8], Option<&'a str>);
        let table: &[Case<'_>] = &[
            (&open, &perform, b"ok", None),
            (&open, &perform, b"big", Some("PayloadTooLarge")),
            (&open, &status, b"ok", Some("NotAPerform")),
            (&open, &status, b"big", Some("PayloadTooLarge")),
            (&closed, &perform, b"ok", Some("Closed")),
            (&closed, &status, b"big", Some("Closed")),
        ];
        for (i, (gate, topic, payload, want)) in table.iter().enumerate() {
            let got = gate.check_enqueue(topic, payload).err().map(|e| match e {
                Error::Closed => "Closed",
                Error::PayloadTooLarge { .. } => "PayloadTooLarge",
                Error::NotAPerform { .. } => "NotAPerform",
                _ => "other",
            });
            assert_eq!(got, *want, "case {i}");
        }
    }

    #[tokio::test]
    async fn close_wakes_listeners_once() {
        let gate = Gate::new(1);
        let mut rx = gate.closed();
        let waiter = tokio::spawn(async move { rx.wait_for(|c| *c).await.is_ok() });
        assert!(gate.close());
        assert!(waiter.await.unwrap());
        assert!(!gate.close());
        // A listener that arrives late sees it closed at once.
        assert!(*gate.closed().borrow());
    }
}
