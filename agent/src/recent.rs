//! The commands this device was handed lately, so that none is carried out twice: a
//! command can arrive again (a server that sent it again after losing track of it, a
//! redelivery after the link dropped), and a device that reboots a machine, opens a
//! valve or installs an update must not do it a second time.
//!
//! Kept for the life of the agent process, across sessions, and bounded: the last
//! [`MAX_COMMANDS`] commands, whose kept results take at most [`MAX_RESULT_BYTES`]
//! together (a result over that is forgotten, its command still remembered as done).
//! A command seen again is answered from here:
//! - still running: it is not started again, and its one reply comes when it ends;
//! - ended: its recorded outcome is sent again;
//! - cut short (its session ended while it ran, which stops it): it is not run again,
//!   and the reply says so.

use std::collections::{HashMap, VecDeque};

use protocol::{CommandId, ErrorCode, Outcome};

/// How many commands are remembered.
pub const MAX_COMMANDS: usize = 256;
/// How many bytes of results (as JSON) are kept for them together.
pub const MAX_RESULT_BYTES: usize = 1 << 20;

/// What became of a command seen before.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// Started, and not ended yet (in this session, or cut short by the end of another).
    Started,
    /// Ended with this outcome.
    Ended(Outcome),
    /// Ended, but its result was too large to keep.
    EndedUnkept,
}

#[derive(Debug, Default)]
pub struct Recent {
    seen: HashMap<CommandId, (Seen, usize)>,
    /// Oldest first.
    order: VecDeque<CommandId>,
    /// Bytes of the results kept.
    bytes: usize,
}

impl Recent {
    /// What became of `id`, if it was seen; otherwise remembers it as started and gives
    /// `None` (the caller runs it).
    pub fn start(&mut self, id: &CommandId) -> Option<Seen> {
        if let Some((seen, _)) = self.seen.get(id) {
            return Some(seen.clone());
        }
        self.seen.insert(id.clone(), (Seen::Started, 0));
        self.order.push_back(id.clone());
        self.trim();
        None
    }

    /// Records how `id` ended.
    pub fn ended(&mut self, id: &CommandId, outcome: &Outcome) {
        let Some(entry) = self.seen.get_mut(id) else {
            // Forgotten meanwhile (more than MAX_COMMANDS started since): nothing to keep.
            return;
        };
        self.bytes -= entry.1;
        let size = serde_json::to_vec(outcome).map_or(usize::MAX, |json| json.len());
        *entry = if size <= MAX_RESULT_BYTES {
            (Seen::Ended(outcome.clone()), size)
        } else {
            (Seen::EndedUnkept, 0)
        };
        self.bytes += entry.1;
        self.trim();
    }

    /// Forgets the oldest until within both bounds: past the count, the oldest of all;
    /// past the bytes, the oldest whose result is kept (forgetting a command that
    /// holds no result frees nothing, and one still running must stay remembered).
    fn trim(&mut self) {
        while self.order.len() > MAX_COMMANDS {
            let Some(oldest) = self.order.pop_front() else {
                return;
            };
            if let Some((_, size)) = self.seen.remove(&oldest) {
                self.bytes -= size;
            }
        }
        while self.bytes > MAX_RESULT_BYTES {
            let Some(at) = self
                .order
                .iter()
                .position(|id| self.seen.get(id).is_some_and(|(_, size)| *size > 0))
            else {
                return;
            };
            if let Some(id) = self.order.remove(at)
                && let Some((_, size)) = self.seen.remove(&id)
            {
                self.bytes -= size;
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.len()
    }
}

/// The reply to a command seen again whose outcome is not kept: it was carried out, or
/// begun, once, and is not run again.
pub fn not_again(seen: &Seen) -> Outcome {
    let message = match seen {
        Seen::EndedUnkept => {
            "already carried out; its result was too large to keep for a second answer"
        }
        _ => "already begun once and cut short when the connection was lost; not run again",
    };
    Outcome::Error {
        code: ErrorCode::Failed,
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: usize) -> CommandId {
        CommandId::from(format!("c{n}").as_str())
    }

    fn ok(text: &str) -> Outcome {
        Outcome::Ok {
            result: serde_json::json!(text),
        }
    }

    #[test]
    fn a_command_starts_once_and_is_answered_from_memory_after() {
        let mut recent = Recent::default();
        assert_eq!(recent.start(&id(1)), None);
        assert_eq!(recent.start(&id(1)), Some(Seen::Started));
        recent.ended(&id(1), &ok("done"));
        assert_eq!(recent.start(&id(1)), Some(Seen::Ended(ok("done"))));
        assert_eq!(recent.start(&id(2)), None);
    }

    #[test]
    fn the_oldest_are_forgotten_past_the_bounds() {
        let mut recent = Recent::default();
        for n in 0..MAX_COMMANDS + 10 {
            assert_eq!(recent.start(&id(n)), None);
            recent.ended(&id(n), &ok("x"));
        }
        assert_eq!(recent.len(), MAX_COMMANDS);
        assert_eq!(recent.start(&id(0)), None, "forgotten");
        assert!(recent.start(&id(MAX_COMMANDS + 9)).is_some());

        // Results: a few large ones push the older out; one over the bound is not kept.
        let mut recent = Recent::default();
        let large = "y".repeat(MAX_RESULT_BYTES / 3);
        for n in 0..4 {
            recent.start(&id(n));
            recent.ended(&id(n), &ok(&large));
        }
        assert!(recent.bytes <= MAX_RESULT_BYTES);
        assert_eq!(recent.start(&id(0)), None, "the oldest went to make room");

        // Making room for results never forgets a command still running.
        let mut recent = Recent::default();
        recent.start(&id(100));
        for n in 0..4 {
            recent.start(&id(n));
            recent.ended(&id(n), &ok(&large));
        }
        assert_eq!(recent.start(&id(100)), Some(Seen::Started));
        assert!(matches!(recent.start(&id(3)), Some(Seen::Ended(_))));
        recent.start(&id(9));
        recent.ended(&id(9), &ok(&"z".repeat(MAX_RESULT_BYTES + 1)));
        assert_eq!(recent.start(&id(9)), Some(Seen::EndedUnkept));
        assert!(matches!(
            not_again(&Seen::EndedUnkept),
            Outcome::Error {
                code: ErrorCode::Failed,
                ..
            }
        ));
    }
}
