//! The task state machine, as a client sees a task. No I/O: events in, states out.
//!
//! ```text
//! submitted ──accepted──▶ accepted ──progress(p>0)──▶ running(p) ──▶ succeeded | failed
//!     │                       │                          │           cancelled | timed out
//!     └───────────────────────┴──────────────────────────┴──────────▶ (any terminal)
//! ```
//!
//! Redeliveries make duplicates normal: the same status or completion can arrive twice.
//! [`TaskState::apply`] recognises those ([`Applied::Duplicate`]) and stale progress that
//! arrives after later progress ([`Applied::Stale`]), so nothing is counted twice.

use std::fmt;

/// Where a task stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TaskState {
    /// Sent; no worker has acknowledged it yet.
    Submitted,
    /// A worker acknowledged it (progress 0).
    Accepted,
    /// A worker reported progress.
    Running {
        /// The highest progress reported, 1-100.
        progress: u8,
    },
    /// Completed successfully.
    Succeeded,
    /// Completed with a failure.
    Failed,
    /// Cancelled by the client.
    Cancelled,
    /// Passed its deadline, or no worker kept it alive.
    TimedOut,
}

impl TaskState {
    /// Whether no further change is possible.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled | TaskState::TimedOut
        )
    }

    /// The progress this state implies, 0-100.
    pub fn progress(self) -> u8 {
        match self {
            TaskState::Submitted | TaskState::Accepted => 0,
            TaskState::Running { progress } => progress,
            _ => 100,
        }
    }

    /// Applies `event`, returning the new state and whether the event changed anything.
    pub fn apply(self, event: TaskEvent) -> Result<Applied, InvalidTransition> {
        use TaskEvent as E;
        use TaskState as S;
        let invalid = Err(InvalidTransition { from: self, event });
        let terminal = |ev: TaskEvent| match ev {
            E::Succeeded => S::Succeeded,
            E::Failed => S::Failed,
            E::Cancelled => S::Cancelled,
            E::TimedOut => S::TimedOut,
            _ => unreachable!("only called for terminal events"),
        };
        Ok(match (self, event) {
            (s, ev) if s.is_terminal() && ev.is_terminal() && terminal(ev) == s => {
                Applied::Duplicate
            }
            (s, _) if s.is_terminal() => return invalid,
            (_, ev) if ev.is_terminal() => Applied::Changed(terminal(ev)),
            (S::Submitted, E::Accepted | E::Progress(0)) => Applied::Changed(S::Accepted),
            (S::Submitted | S::Accepted, E::Progress(p)) if p > 100 => return invalid,
            (S::Submitted | S::Accepted, E::Progress(p)) if p > 0 => {
                Applied::Changed(S::Running { progress: p })
            }
            (S::Accepted, E::Accepted | E::Progress(0)) => Applied::Duplicate,
            (S::Running { .. }, E::Accepted) => Applied::Stale,
            (S::Running { .. }, E::Progress(p)) if p > 100 => return invalid,
            (S::Running { progress }, E::Progress(p)) if p > progress => {
                Applied::Changed(S::Running { progress: p })
            }
            (S::Running { progress }, E::Progress(p)) if p == progress => Applied::Duplicate,
            (S::Running { .. }, E::Progress(_)) => Applied::Stale,
            _ => return invalid,
        })
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskState::Submitted => f.write_str("submitted"),
            TaskState::Accepted => f.write_str("accepted"),
            TaskState::Running { progress } => write!(f, "running({progress}%)"),
            TaskState::Succeeded => f.write_str("succeeded"),
            TaskState::Failed => f.write_str("failed"),
            TaskState::Cancelled => f.write_str("cancelled"),
            TaskState::TimedOut => f.write_str("timed out"),
        }
    }
}

/// Something that happened to a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TaskEvent {
    /// A worker acknowledged it.
    Accepted,
    /// A worker reported progress (0-100); progress 0 counts as acceptance.
    Progress(u8),
    /// Completed successfully.
    Succeeded,
    /// Completed with a failure.
    Failed,
    /// The client cancelled it.
    Cancelled,
    /// Its deadline passed, or no worker kept it alive.
    TimedOut,
}

impl TaskEvent {
    /// Whether the event ends the task.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskEvent::Succeeded | TaskEvent::Failed | TaskEvent::Cancelled | TaskEvent::TimedOut
        )
    }
}

/// What applying an event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The task moved to this state.
    Changed(TaskState),
    /// The event repeats one already applied (a redelivered status or completion).
    Duplicate,
    /// The event is older than the current state (progress below the highest seen).
    Stale,
}

/// An event that cannot happen in the current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{event:?} is not possible when the task is {from}")]
pub struct InvalidTransition {
    /// The state the event met.
    pub from: TaskState,
    /// The refused event.
    pub event: TaskEvent,
}

#[cfg(test)]
mod tests {
    use super::*;
    use Applied::*;
    use TaskEvent as E;
    use TaskState as S;

    fn running(p: u8) -> S {
        S::Running { progress: p }
    }

    #[test]
    fn transition_table() {
        let ok = |s: S, e: E, want: Applied| (s, e, Ok(want));
        let bad = |s: S, e: E| (s, e, Err(InvalidTransition { from: s, event: e }));
        let table = [
            ok(S::Submitted, E::Accepted, Changed(S::Accepted)),
            ok(S::Submitted, E::Progress(0), Changed(S::Accepted)),
            ok(S::Submitted, E::Progress(30), Changed(running(30))),
            ok(S::Submitted, E::Succeeded, Changed(S::Succeeded)),
            ok(S::Submitted, E::TimedOut, Changed(S::TimedOut)),
            ok(S::Submitted, E::Cancelled, Changed(S::Cancelled)),
            ok(S::Accepted, E::Accepted, Duplicate),
            ok(S::Accepted, E::Progress(0), Duplicate),
            ok(S::Accepted, E::Progress(10), Changed(running(10))),
            ok(S::Accepted, E::Failed, Changed(S::Failed)),
            ok(running(10), E::Progress(20), Changed(running(20))),
            ok(running(20), E::Progress(20), Duplicate),
            ok(running(20), E::Progress(10), Stale),
            ok(running(20), E::Progress(0), Stale),
            ok(running(20), E::Accepted, Stale),
            ok(running(20), E::Succeeded, Changed(S::Succeeded)),
            ok(running(100), E::Failed, Changed(S::Failed)),
            ok(S::Succeeded, E::Succeeded, Duplicate),
            ok(S::Failed, E::Failed, Duplicate),
            ok(S::Cancelled, E::Cancelled, Duplicate),
            ok(S::TimedOut, E::TimedOut, Duplicate),
            bad(S::Succeeded, E::Failed),
            bad(S::Failed, E::Succeeded),
            bad(S::Succeeded, E::Progress(50)),
            bad(S::Cancelled, E::Succeeded),
            bad(S::TimedOut, E::Accepted),
            bad(S::Submitted, E::Progress(101)),
            bad(running(5), E::Progress(101)),
        ];
        for (state, event, want) in table {
            assert_eq!(state.apply(event), want, "{state} + {event:?}");
        }
    }

    #[test]
    fn redelivered_sequence_counts_once() {
        let events = [
            E::Progress(0),
            E::Progress(0),
            E::Progress(40),
            E::Progress(40),
            E::Progress(0), // a second worker restarting after a redelivery
            E::Progress(80),
            E::Succeeded,
            E::Succeeded,
        ];
        let mut state = S::Submitted;
        let mut changes = 0;
        for ev in events {
            if let Changed(s) = state.apply(ev).unwrap() {
                state = s;
                changes += 1;
            }
        }
        assert_eq!(state, S::Succeeded);
        assert_eq!(changes, 4);
        assert_eq!(state.progress(), 100);
        assert!(state.is_terminal());
    }
}
