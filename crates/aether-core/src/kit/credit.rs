//! [`Credit`]: a consumer's prefetch, one [`CreditUnit`] per delivery outstanding.

use std::fmt;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A consumer's prefetch credit: at most `prefetch` deliveries are outstanding (handed out
/// and not yet settled) at once, the bound [`ConsumeOptions::prefetch`] promises.
///
/// A reader takes a [`CreditUnit`] before it hands a delivery out and puts it in the
/// delivery's acker ([`SettleOnce`](super::SettleOnce)), which returns it when the delivery
/// is settled or dropped. Taking and returning a unit is an atomic operation, no lock and
/// no allocation.
///
/// ```
/// use aether_core::kit::Credit;
///
/// let credit = Credit::new(2);
/// let a = credit.try_take().unwrap();
/// let _b = credit.try_take().unwrap();
/// assert!(credit.try_take().is_none(), "both units are out");
/// drop(a); // settled
/// assert_eq!(credit.available(), 1);
/// ```
///
/// [`ConsumeOptions::prefetch`]: crate::ConsumeOptions::prefetch
#[derive(Clone)]
pub struct Credit {
    permits: Arc<Semaphore>,
    prefetch: usize,
}

/// One unit of [`Credit`]: a delivery outstanding. Dropping it returns the unit.
pub struct CreditUnit {
    _permit: OwnedSemaphorePermit,
}

impl Credit {
    /// `prefetch` units (at least one).
    pub fn new(prefetch: usize) -> Credit {
        let prefetch = prefetch.max(1);
        Credit {
            permits: Arc::new(Semaphore::new(prefetch)),
            prefetch,
        }
    }

    /// How many units there are in all.
    pub fn prefetch(&self) -> usize {
        self.prefetch
    }

    /// How many units are free now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// A unit if one is free now.
    pub fn try_take(&self) -> Option<CreditUnit> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        Some(CreditUnit { _permit: permit })
    }

    /// Waits for a free unit.
    pub async fn take(&self) -> CreditUnit {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        CreditUnit { _permit: permit }
    }

    /// Waits for a free unit, then takes every other unit free now: what a reader that
    /// fetches in batches asks the broker for (`COUNT n`).
    pub async fn take_all(&self) -> Vec<CreditUnit> {
        let mut units = vec![self.take().await];
        while units.len() < self.prefetch {
            match self.try_take() {
                Some(unit) => units.push(unit),
                None => break,
            }
        }
        units
    }
}

impl fmt::Debug for Credit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credit")
            .field("prefetch", &self.prefetch)
            .field("available", &self.available())
            .finish()
    }
}

impl fmt::Debug for CreditUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CreditUnit")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn take_waits_for_a_returned_unit() {
        let credit = Credit::new(1);
        let held = credit.take().await;
        let c = credit.clone();
        let waiting = tokio::spawn(async move { c.take().await });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiting.is_finished(), "no unit free: still waiting");
        drop(held);
        let _unit = waiting.await.unwrap();
        assert_eq!(credit.available(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn take_all_takes_what_is_free_now() {
        let credit = Credit::new(4);
        let first = credit.try_take().unwrap();
        // (held, want from take_all)
        let batch = credit.take_all().await;
        assert_eq!(batch.len(), 3);
        drop(first);
        let batch2 = credit.take_all().await;
        assert_eq!(batch2.len(), 1);
        drop((batch, batch2));
        assert_eq!(credit.available(), 4);
        assert_eq!(Credit::new(0).prefetch(), 1, "at least one unit");
    }
}
