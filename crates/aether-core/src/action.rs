//! The actions and statuses of the AetherMagic protocol.

use std::fmt;
use std::str::FromStr;

use crate::error::{DecodeError, TopicError};

/// What a message asks for or reports; the last level of every topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// A client asks a worker to perform a task (status `initialized`, progress 0).
    Perform,
    /// A worker reports progress (status `progress`); progress 0 is the acceptance.
    Status,
    /// A worker reports the outcome (status `succeed` or `failed`, progress 100).
    Complete,
    /// A client asks for a task to be stopped.
    Cancel,
    /// A worker announces it is ready for a job/task/context (status `online`).
    Idle,
    /// A process announces it connected (status `connected`), under `{union}/system/online`.
    Online,
    /// A party says it is leaving or no longer interested (status `dismissed`).
    Dismiss,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 7] = [
        Action::Perform,
        Action::Status,
        Action::Complete,
        Action::Cancel,
        Action::Idle,
        Action::Online,
        Action::Dismiss,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Perform => "perform",
            Action::Status => "status",
            Action::Complete => "complete",
            Action::Cancel => "cancel",
            Action::Idle => "idle",
            Action::Online => "online",
            Action::Dismiss => "dismiss",
        }
    }

    /// Parses a wire name; `None` for an unknown one.
    pub fn from_name(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = TopicError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::from_name(s).ok_or_else(|| TopicError::UnknownAction(s.to_owned()))
    }
}

/// The `status` field of an envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// A new perform.
    Initialized,
    /// A progress report.
    Progress,
    /// Completed successfully.
    Succeed,
    /// Completed with a failure.
    Failed,
    /// An idle worker.
    Online,
    /// A connected process.
    Connected,
    /// A dismissal.
    Dismissed,
    /// A cancellation request.
    Cancelled,
}

impl Status {
    const ALL: [Status; 8] = [
        Status::Initialized,
        Status::Progress,
        Status::Succeed,
        Status::Failed,
        Status::Online,
        Status::Connected,
        Status::Dismissed,
        Status::Cancelled,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Initialized => "initialized",
            Status::Progress => "progress",
            Status::Succeed => "succeed",
            Status::Failed => "failed",
            Status::Online => "online",
            Status::Connected => "connected",
            Status::Dismissed => "dismissed",
            Status::Cancelled => "cancelled",
        }
    }

    /// The status the Python services send with `action`, and its progress.
    pub fn default_for(action: Action) -> (Status, u8) {
        match action {
            Action::Perform => (Status::Initialized, 0),
            Action::Status => (Status::Progress, 0),
            Action::Complete => (Status::Succeed, 100),
            Action::Cancel => (Status::Cancelled, 0),
            Action::Idle => (Status::Online, 100),
            Action::Online => (Status::Connected, 100),
            Action::Dismiss => (Status::Dismissed, 100),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = DecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| DecodeError::UnknownStatus(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in Action::ALL {
            assert_eq!(a.as_str().parse::<Action>().unwrap(), a);
        }
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>().unwrap(), s);
        }
        assert_eq!(
            "explode".parse::<Action>(),
            Err(TopicError::UnknownAction("explode".into()))
        );
        assert!(matches!(
            "weird".parse::<Status>(),
            Err(DecodeError::UnknownStatus(s)) if s == "weird"
        ));
    }
}
