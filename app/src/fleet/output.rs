//! What `logs` commands sent while running, line by line, as the live channel brought
//! it. A command's view keeps only its latest progress message; a log viewer needs
//! every one, in order, so the tab appends each as its event arrives (before anything
//! reactive could merge two updates into one).
//!
//! Bounded: the last [`KEEP_OUTPUTS`] commands' outputs, each its last
//! [`MAX_LINES`] lines (the older counted as dropped). When the live channel breaks
//! while a command is still running, its output is marked as having a gap: lines sent
//! meanwhile were not seen.

use std::collections::VecDeque;

use protocol::{CommandId, CommandStatus, api::CommandView, capability::builtin};

/// How many commands' outputs a tab keeps.
pub const KEEP_OUTPUTS: usize = 20;
/// The most lines kept of one command's output.
pub const MAX_LINES: usize = 20_000;

/// One command's output so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    pub lines: VecDeque<String>,
    /// Lines dropped from the start to stay within [`MAX_LINES`].
    pub dropped: usize,
    /// How many times the live channel broke while the command ran.
    pub gaps: usize,
}

impl Output {
    /// The lines, one per line of text, for a download.
    pub fn text(&self) -> String {
        let mut text = String::new();
        for line in &self.lines {
            text.push_str(line);
            text.push('\n');
        }
        text
    }
}

/// The outputs of the most recent `logs` commands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outputs {
    recent: VecDeque<(CommandId, Output)>,
}

impl Outputs {
    /// Takes in one live update of a command: a `logs` command's progress message is
    /// appended to its output; anything else is ignored.
    pub fn record(&mut self, command: &CommandView) {
        if command.name != builtin::LOGS || command.status != CommandStatus::Progress {
            return;
        }
        let Some(message) = &command.message else {
            return;
        };
        let output = self.entry(&command.id);
        output.lines.extend(message.split('\n').map(str::to_owned));
        let over = output.lines.len().saturating_sub(MAX_LINES);
        output.lines.drain(..over);
        output.dropped += over;
    }

    /// The live channel broke: every output of a command `running` says is still
    /// running has a gap from here.
    pub fn interrupted(&mut self, running: impl Fn(&CommandId) -> bool) {
        for (id, output) in &mut self.recent {
            if running(id) {
                output.gaps += 1;
            }
        }
    }

    pub fn get(&self, id: &CommandId) -> Option<&Output> {
        self.recent
            .iter()
            .find(|(known, _)| known == id)
            .map(|(_, output)| output)
    }

    fn entry(&mut self, id: &CommandId) -> &mut Output {
        let at = match self.recent.iter().position(|(known, _)| known == id) {
            Some(at) => at,
            None => {
                if self.recent.len() == KEEP_OUTPUTS {
                    self.recent.pop_front();
                }
                self.recent.push_back((id.clone(), Output::default()));
                self.recent.len() - 1
            }
        };
        &mut self.recent[at].1
    }
}

#[cfg(test)]
mod tests {
    use protocol::DeviceId;

    use super::*;

    fn update(id: &str, name: &str, status: CommandStatus, message: Option<&str>) -> CommandView {
        CommandView {
            id: id.into(),
            device_id: DeviceId::new("d").unwrap(),
            name: name.into(),
            args: Default::default(),
            status,
            created_ms: 0,
            updated_ms: 0,
            deadline_ms: 0,
            percent: None,
            message: message.map(Into::into),
            result: None,
            error: None,
            issued_by: None,
            job_id: None,
        }
    }

    #[test]
    fn every_progress_message_of_a_logs_command_is_kept_in_order() {
        let mut outputs = Outputs::default();
        let logs = |message| update("c1", "logs", CommandStatus::Progress, Some(message));
        outputs.record(&logs("one\ntwo"));
        // The same text again is more lines, not a repeat of the same update.
        outputs.record(&logs("one\ntwo"));
        outputs.record(&logs("three"));
        // Not progress, not `logs`, no message: nothing.
        outputs.record(&update(
            "c1",
            "logs",
            CommandStatus::Succeeded,
            Some("three"),
        ));
        outputs.record(&update(
            "c2",
            "reboot",
            CommandStatus::Progress,
            Some("50%"),
        ));
        outputs.record(&update("c1", "logs", CommandStatus::Progress, None));
        let output = outputs.get(&"c1".into()).unwrap();
        assert_eq!(output.text(), "one\ntwo\none\ntwo\nthree\n");
        assert_eq!(outputs.get(&"c2".into()), None);
    }

    #[test]
    fn outputs_are_bounded_in_lines_and_in_number() {
        let mut outputs = Outputs::default();
        let chunk = vec!["x"; 1_000].join("\n");
        for _ in 0..25 {
            outputs.record(&update(
                "big",
                "logs",
                CommandStatus::Progress,
                Some(&chunk),
            ));
        }
        let big = outputs.get(&"big".into()).unwrap();
        assert_eq!(big.lines.len(), MAX_LINES);
        assert_eq!(big.dropped, 5_000);

        for i in 0..KEEP_OUTPUTS {
            outputs.record(&update(
                &format!("c{i}"),
                "logs",
                CommandStatus::Progress,
                Some("line"),
            ));
        }
        assert_eq!(outputs.get(&"big".into()), None, "the oldest went");
        assert!(
            outputs
                .get(&CommandId(format!("c{}", KEEP_OUTPUTS - 1)))
                .is_some()
        );
    }

    #[test]
    fn a_break_marks_a_gap_in_running_commands_only() {
        let mut outputs = Outputs::default();
        for id in ["running", "done"] {
            outputs.record(&update(id, "logs", CommandStatus::Progress, Some("line")));
        }
        outputs.interrupted(|id| id.0 == "running");
        assert_eq!(outputs.get(&"running".into()).unwrap().gaps, 1);
        assert_eq!(outputs.get(&"done".into()).unwrap().gaps, 0);
    }
}
