//! [`SettleOnce`]: the [`Acker`] every transport builds from its own [`Settle`].

use std::fmt;

use async_trait::async_trait;

use super::CreditUnit;
use crate::error::{Error, Result};
use crate::transport::{Acker, DeadLetter};

/// What settling one delivery means on a broker. Wrapped in [`SettleOnce`], which makes it
/// an [`Acker`] with the rules every transport shares.
///
/// An operation that fails leaves the delivery unsettled (the core retries it, or drops
/// the delivery, and then [`give_back`](Settle::give_back) runs).
#[async_trait]
pub trait Settle: Send + Sync + fmt::Debug + 'static {
    /// The delivery was handled: tell the broker to forget it.
    async fn ack(&mut self) -> Result<()>;
    /// The delivery was not handled: give it back to its workgroup (`requeue`) or drop it.
    async fn nack(&mut self, requeue: bool) -> Result<()>;
    /// Store the delivery in the dead-letter place with `letter`'s reason and remove it.
    async fn reject(&mut self, letter: DeadLetter) -> Result<()>;
    /// The handler is still working on it; the default does nothing.
    async fn keep_alive(&mut self) -> Result<()> {
        Ok(())
    }
    /// The delivery was dropped unsettled (its handler crashed, or its consumer went
    /// away): give it back to the workgroup where the transport redelivers. Runs inside
    /// `Drop`, so it must not block: spawn what needs I/O.
    fn give_back(&mut self);
    /// Runs once the delivery is settled or given back, after its unit of credit was
    /// returned: where a reader hands the next delivery out. The default does nothing.
    fn settled(&mut self) {}
}

/// The [`Acker`] of one delivery: settles it at most once, returns its unit of
/// [`Credit`](super::Credit) when it is settled, and gives it back when it is dropped
/// unsettled.
///
/// - After a successful ack, nack or reject, further calls fail with [`Error::Closed`]
///   (a [`Delivery`](crate::Delivery) is consumed by its acknowledgement, so only an
///   adapter calling the acker twice can see that).
/// - A failed one leaves the delivery unsettled, with its credit held.
/// - Dropped unsettled, it calls [`Settle::give_back`].
///
/// In all cases [`Settle::settled`] runs once, after the credit is returned.
pub struct SettleOnce<S: Settle> {
    inner: S,
    credit: Option<CreditUnit>,
    settled: bool,
}

impl<S: Settle> SettleOnce<S> {
    /// Wraps `inner`; `credit` is the unit the delivery holds (`None` where the broker
    /// bounds the prefetch itself).
    pub fn new(inner: S, credit: Option<CreditUnit>) -> SettleOnce<S> {
        SettleOnce {
            inner,
            credit,
            settled: false,
        }
    }

    /// The broker's side.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn unsettled(&self) -> Result<()> {
        if self.settled {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    fn done(&mut self) {
        self.settled = true;
        self.credit = None;
        self.inner.settled();
    }
}

impl<S: Settle> fmt::Debug for SettleOnce<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SettleOnce")
            .field("inner", &self.inner)
            .field("settled", &self.settled)
            .finish()
    }
}

#[async_trait]
impl<S: Settle> Acker for SettleOnce<S> {
    async fn ack(&mut self) -> Result<()> {
        self.unsettled()?;
        self.inner.ack().await?;
        self.done();
        Ok(())
    }

    async fn nack(&mut self, requeue: bool) -> Result<()> {
        self.unsettled()?;
        self.inner.nack(requeue).await?;
        self.done();
        Ok(())
    }

    async fn reject(&mut self, letter: DeadLetter) -> Result<()> {
        self.unsettled()?;
        self.inner.reject(letter).await?;
        self.done();
        Ok(())
    }

    async fn keep_alive(&mut self) -> Result<()> {
        self.unsettled()?;
        self.inner.keep_alive().await
    }
}

impl<S: Settle> Drop for SettleOnce<S> {
    fn drop(&mut self) {
        if !self.settled {
            self.inner.give_back();
            self.done();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kit::Credit;
    use crate::transport::DeadLetterReason;
    use crate::{Bytes, Delivery, Topic};
    use std::sync::{Arc, Mutex};

    /// Records what happened to one delivery; fails the first `failures` operations.
    #[derive(Debug)]
    struct Log {
        events: Arc<Mutex<Vec<String>>>,
        credit: Credit,
        failures: u32,
    }

    impl Log {
        fn push(&mut self, e: &str) -> Result<()> {
            if self.failures > 0 {
                self.failures -= 1;
                self.events.lock().unwrap().push(format!("{e} failed"));
                return Err(Error::Timeout("test"));
            }
            self.events.lock().unwrap().push(e.to_owned());
            Ok(())
        }
    }

    #[async_trait]
    impl Settle for Log {
        async fn ack(&mut self) -> Result<()> {
            self.push("ack")
        }
        async fn nack(&mut self, requeue: bool) -> Result<()> {
            self.push(if requeue { "requeue" } else { "drop" })
        }
        async fn reject(&mut self, _letter: DeadLetter) -> Result<()> {
            self.push("reject")
        }
        fn give_back(&mut self) {
            let _ = self.push("give back");
        }
        fn settled(&mut self) {
            let free = self.credit.available();
            let _ = self.push(&format!("settled, {free} free"));
        }
    }

    enum Step {
        Ack,
        Requeue,
        Reject,
        Drop,
    }

    async fn run(steps: &[Step], failures: u32) -> Vec<String> {
        let events = Arc::new(Mutex::new(Vec::new()));
        let credit = Credit::new(1);
        let log = Log {
            events: events.clone(),
            credit: credit.clone(),
            failures,
        };
        let acker = SettleOnce::new(log, credit.try_take());
        let topic: Topic = "u/j/t/x/1/perform".parse().unwrap();
        let mut delivery = Some(Delivery::new(topic, Bytes::new(), 0, Box::new(acker)));
        for step in steps {
            let d = delivery.take().expect("a delivery to act on");
            let result = match step {
                Step::Ack => d.ack().await,
                Step::Requeue => d.nack(true).await,
                Step::Reject => d.reject(DeadLetterReason::Malformed("x".into())).await,
                Step::Drop => {
                    drop(d);
                    Ok(())
                }
            };
            // A failed acknowledgement hands the delivery back.
            delivery = result.err().map(|e| *e.delivery);
        }
        drop(delivery);
        assert_eq!(credit.available(), 1, "the unit is back in every case");
        events.lock().unwrap().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn settles_once_and_gives_back_what_is_dropped() {
        let table: &[(&[Step], u32, &[&str])] = &[
            (&[Step::Ack], 0, &["ack", "settled, 1 free"]),
            (&[Step::Requeue], 0, &["requeue", "settled, 1 free"]),
            (&[Step::Reject], 0, &["reject", "settled, 1 free"]),
            (&[Step::Drop], 0, &["give back", "settled, 1 free"]),
            // A failed ack keeps the delivery (and its credit) until it is retried...
            (
                &[Step::Ack, Step::Ack],
                1,
                &["ack failed", "ack", "settled, 1 free"],
            ),
            // ...or dropped, which gives it back.
            (
                &[Step::Requeue, Step::Drop],
                1,
                &["requeue failed", "give back", "settled, 1 free"],
            ),
        ];
        for (i, (steps, failures, want)) in table.iter().enumerate() {
            assert_eq!(run(steps, *failures).await, *want, "case {i}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_settled_acker_refuses_a_second_settlement() {
        let events = Arc::new(Mutex::new(Vec::new()));
        let credit = Credit::new(1);
        let log = Log {
            events: events.clone(),
            credit: credit.clone(),
            failures: 0,
        };
        let mut acker = SettleOnce::new(log, credit.try_take());
        acker.ack().await.unwrap();
        assert!(matches!(acker.nack(true).await, Err(Error::Closed)));
        assert!(matches!(acker.keep_alive().await, Err(Error::Closed)));
        drop(acker);
        assert_eq!(events.lock().unwrap().len(), 2, "no give-back after an ack");
    }
}
