//! [`Retry`]: the pause between attempts to reconnect, resubscribe or read again.

use std::time::Duration;

/// The reconnect backoff: the first retry waits `first`, each further one twice as long,
/// up to `max`; a success [`reset`](Retry::reset)s it. One instance per loop that retries.
///
/// ```
/// use std::time::Duration;
/// use aether_core::kit::Retry;
///
/// let mut retry = Retry::new(Duration::from_millis(10), Duration::from_millis(35));
/// let delays: Vec<_> = (0..4).map(|_| retry.next_delay().as_millis()).collect();
/// assert_eq!(delays, [10, 20, 35, 35]);
/// retry.reset();
/// assert_eq!(retry.next_delay(), Duration::from_millis(10));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Retry {
    /// A backoff from `first`, doubling up to `max` (at least `first`).
    pub fn new(first: Duration, max: Duration) -> Retry {
        Retry {
            first,
            max: max.max(first),
            next: first,
        }
    }

    /// The delay before the next attempt; the one after is twice as long.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    /// The delay [`next_delay`](Retry::next_delay) will give, without moving on (for logs).
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// An attempt succeeded: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// Sleeps [`next_delay`](Retry::next_delay). Select it against whatever ends the loop.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn waits_double_up_to_the_max_and_reset() {
        let mut retry = Retry::new(Duration::from_millis(100), Duration::from_millis(500));
        let start = Instant::now();
        // (attempt outcome, elapsed ms after the wait)
        let table = [
            (false, 100),
            (false, 300),
            (false, 700),
            (false, 1200),
            (false, 1700),
            (true, 1800),
        ];
        for (i, (reset_first, want)) in table.into_iter().enumerate() {
            if reset_first {
                retry.reset();
            }
            retry.wait().await;
            assert_eq!(start.elapsed().as_millis(), want, "step {i}");
        }
        assert_eq!(
            Retry::new(Duration::from_secs(2), Duration::ZERO).next_delay(),
            Duration::from_secs(2),
            "max is at least first"
        );
    }
}
