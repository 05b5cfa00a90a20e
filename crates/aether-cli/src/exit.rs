//! How a command ends: the outcome of a task or of the command itself, and its exit code.

use std::fmt;
use std::process::ExitCode;

/// What happened, each with its own exit code (the README's table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Outcome {
    /// 0: the task succeeded (or the command did what it was asked).
    Succeeded,
    /// 1: the worker completed the task as failed.
    Failed,
    /// 2: the command line or a setting was refused.
    Usage,
    /// 3: the task's deadline passed.
    DeadlineExceeded,
    /// 4: the task was cancelled (Ctrl-C).
    Cancelled,
    /// 5: the broker could not be reached, or failed an operation.
    Unreachable,
    /// 6: no worker took the task, or the one that had it went silent, on every attempt.
    Lost,
}

impl Outcome {
    pub(crate) fn code(self) -> u8 {
        match self {
            Outcome::Succeeded => 0,
            Outcome::Failed => 1,
            Outcome::Usage => 2,
            Outcome::DeadlineExceeded => 3,
            Outcome::Cancelled => 4,
            Outcome::Unreachable => 5,
            Outcome::Lost => 6,
        }
    }

    /// The word in `-o json` output and `aether watch`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Usage => "usage",
            Outcome::DeadlineExceeded => "deadline_exceeded",
            Outcome::Cancelled => "cancelled",
            Outcome::Unreachable => "unreachable",
            Outcome::Lost => "lost",
        }
    }

    /// The outcome an error of aether stands for.
    pub(crate) fn of(error: &aether::Error) -> Outcome {
        use aether::Error as E;
        match error {
            E::TaskFailed { .. } => Outcome::Failed,
            E::DeadlineExceeded { .. } => Outcome::DeadlineExceeded,
            E::Cancelled { .. } => Outcome::Cancelled,
            E::WorkerLost { .. } => Outcome::Lost,
            E::Transport { .. } | E::Timeout(_) | E::Closed | E::QueueFull { .. } => {
                Outcome::Unreachable
            }
            _ => Outcome::Usage,
        }
    }
}

impl From<Outcome> for ExitCode {
    fn from(o: Outcome) -> ExitCode {
        ExitCode::from(o.code())
    }
}

/// A command that did not succeed: its outcome and what to tell the user.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) outcome: Outcome,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(outcome: Outcome, message: impl Into<String>) -> Failure {
        Failure {
            outcome,
            message: message.into(),
        }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Failure {
        Failure::new(Outcome::Usage, message)
    }
}

impl From<aether::Error> for Failure {
    fn from(e: aether::Error) -> Failure {
        Failure::new(Outcome::of(&e), e.to_string())
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure::usage(e.to_string())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_its_own_code() {
        let all = [
            Outcome::Succeeded,
            Outcome::Failed,
            Outcome::Usage,
            Outcome::DeadlineExceeded,
            Outcome::Cancelled,
            Outcome::Unreachable,
            Outcome::Lost,
        ];
        let codes: std::collections::BTreeSet<u8> = all.iter().map(|o| o.code()).collect();
        assert_eq!(codes.len(), all.len());
        let tid = "t".to_owned();
        assert_eq!(
            Outcome::of(&aether::Error::DeadlineExceeded { tid: tid.clone() }),
            Outcome::DeadlineExceeded
        );
        assert_eq!(
            Outcome::of(&aether::Error::Cancelled { tid }),
            Outcome::Cancelled
        );
        assert_eq!(Outcome::of(&aether::Error::Closed), Outcome::Unreachable);
    }
}
