//! A command's life: `accepted → sent → delivered → progress* → terminal`, where the
//! terminal status is exactly one of `succeeded`, `failed`, `rejected`, `offline`,
//! `timed_out` or `cancelled`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A command's identity, chosen by the server that accepted it; also the AMQP
/// `correlation_id` of the request and of everything the device sends back about it.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CommandId(pub String);

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for CommandId {
    fn from(id: &str) -> Self {
        Self(id.to_owned())
    }
}

/// Where a command is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    /// Validated against the device's capabilities; not yet confirmed by the broker.
    Accepted,
    /// The broker confirmed it and routed it to the device's inbox.
    Sent,
    /// The device acknowledged receipt.
    Delivered,
    /// The device reported progress.
    Progress,
    /// The device carried it out; the result is attached.
    Succeeded,
    /// The device tried and reported an error.
    Failed,
    /// Refused: unknown command or bad arguments, by the server or the device.
    Rejected,
    /// The device was or went offline before answering.
    Offline,
    /// No answer before the deadline.
    TimedOut,
    /// Cancelled by a user.
    Cancelled,
    /// The link to the device, or the server's own to the broker, was lost after the
    /// command may have reached the device, and its answer cannot arrive: it may or may
    /// not have been carried out. Never reported as `failed`, which says it was not.
    OutcomeUnknown,
}

/// A status change that the lifecycle does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("the command has already ended as {0}")]
    AlreadyEnded(CommandStatus),
    #[error("a command that is {from} cannot go back to {to}")]
    Backwards {
        from: CommandStatus,
        to: CommandStatus,
    },
}

impl CommandStatus {
    pub const TERMINAL: [Self; 7] = [
        Self::Succeeded,
        Self::Failed,
        Self::Rejected,
        Self::Offline,
        Self::TimedOut,
        Self::Cancelled,
        Self::OutcomeUnknown,
    ];

    pub fn is_terminal(self) -> bool {
        self.stage() == 4
    }

    /// The status after `next` happened, if the lifecycle allows it. Steps may be
    /// skipped (a reply can overtake the broker's confirm), but never taken backwards,
    /// and nothing follows a terminal status.
    pub fn advance(self, next: Self) -> Result<Self, TransitionError> {
        if self.is_terminal() {
            return Err(TransitionError::AlreadyEnded(self));
        }
        let repeats_progress = self == Self::Progress && next == Self::Progress;
        if next.stage() > self.stage() || repeats_progress {
            Ok(next)
        } else {
            Err(TransitionError::Backwards {
                from: self,
                to: next,
            })
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Progress => "progress",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Rejected => "rejected",
            Self::Offline => "offline",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
            Self::OutcomeUnknown => "outcome_unknown",
        }
    }

    fn stage(self) -> u8 {
        match self {
            Self::Accepted => 0,
            Self::Sent => 1,
            Self::Delivered => 2,
            Self::Progress => 3,
            _ => 4,
        }
    }
}

impl fmt::Display for CommandStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::{CommandStatus::*, *};

    #[test]
    fn the_happy_path_is_allowed() {
        let mut status = Accepted;
        for next in [Sent, Delivered, Progress, Progress, Succeeded] {
            status = status.advance(next).unwrap();
        }
        assert_eq!(status, Succeeded);
    }

    #[test]
    fn every_non_terminal_status_can_end_in_every_way() {
        for from in [Accepted, Sent, Delivered, Progress] {
            for to in CommandStatus::TERMINAL {
                assert_eq!(from.advance(to), Ok(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn a_reply_may_overtake_the_confirm() {
        assert_eq!(Accepted.advance(Delivered), Ok(Delivered));
        assert_eq!(Accepted.advance(Succeeded), Ok(Succeeded));
        assert_eq!(
            Delivered.advance(Sent),
            Err(TransitionError::Backwards {
                from: Delivered,
                to: Sent
            })
        );
    }

    #[test]
    fn nothing_follows_a_terminal_status() {
        for from in CommandStatus::TERMINAL {
            for to in [Accepted, Sent, Delivered, Progress, Succeeded, TimedOut] {
                assert_eq!(from.advance(to), Err(TransitionError::AlreadyEnded(from)));
            }
        }
    }

    #[test]
    fn statuses_serialize_as_snake_case() {
        assert_eq!(serde_json::to_string(&TimedOut).unwrap(), "\"timed_out\"");
        for status in [
            Accepted, Sent, Delivered, Progress, Succeeded, Failed, Rejected, Offline, TimedOut,
            Cancelled,
        ] {
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                format!("\"{status}\"")
            );
        }
    }
}
