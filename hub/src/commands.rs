//! Commands this replica knows: the ones it sent (with their deadlines and the session
//! they went to) and, from other replicas' events, views of theirs. Pure state, like the
//! registry; a pending command is an entry here, not a task.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    time::Instant,
};

use protocol::{
    CommandId, CommandStatus, DeviceId, DeviceMessage, ErrorCode, Outcome, TransitionError,
    api::CommandView,
};

/// Ended commands kept for history; the oldest are forgotten beyond this.
pub const KEEP_ENDED: usize = 10_000;

/// Lines of progress output kept per command.
const KEEP_OUTPUT_CHARS: usize = 16 * 1024;

/// Why a message about a command changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Not a command this replica sent (or one long forgotten).
    UnknownCommand,
    /// From another session of the device than the one the command went to.
    StaleSession,
    /// The command had already ended (a reply after its deadline, say).
    Late(TransitionError),
    /// A device message that says nothing about a command.
    NotAboutACommand,
}

#[derive(Debug)]
struct Record {
    view: CommandView,
    /// `None` for a view of another replica's command: we only mirror it.
    own: Option<Own>,
    /// The replica that sent a mirrored command (its owner, which a cancel is
    /// forwarded to); `None` for our own.
    origin: Option<String>,
}

#[derive(Debug)]
struct Own {
    session_id: String,
    /// The session's inbox, for a cancel.
    inbox: String,
    deadline: Instant,
    /// Set when the device went away: at `deadline` the command ends (offline or
    /// outcome unknown, see [`Departure`]), for this reason, instead of timing out.
    gone: Option<Gone>,
}

/// Why a device went away, and how.
type Gone = (String, Departure);

/// How a device's session ended, which decides what its pending commands become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// It said goodbye. A device says `delivered` before it carries a command out, so a
    /// command it never acknowledged never reached it (offline), and one it did may
    /// have been carried out, or half (outcome unknown).
    Bye,
    /// It vanished: its heartbeats stopped, it came back with a new session, its inbox
    /// went, or its credential was revoked. Any command in its inbox may have reached
    /// it with its acknowledgement lost on the way back: outcome unknown.
    Lost,
}

#[derive(Debug, Default)]
pub struct Commands {
    records: HashMap<CommandId, Record>,
    /// Deadlines of this replica's pending commands, earliest first.
    deadlines: BTreeSet<(Instant, CommandId)>,
    /// Every command in the order it was first seen, for history and forgetting.
    order: VecDeque<CommandId>,
}

impl Commands {
    /// Records a command this replica accepted, sent to `session_id` through `inbox`.
    pub fn accept(
        &mut self,
        view: CommandView,
        session_id: String,
        inbox: String,
        deadline: Instant,
    ) {
        self.deadlines.insert((deadline, view.id.clone()));
        self.order.push_back(view.id.clone());
        self.records.insert(
            view.id.clone(),
            Record {
                view,
                own: Some(Own {
                    session_id,
                    inbox,
                    deadline,
                    gone: None,
                }),
                origin: None,
            },
        );
        self.forget_old();
    }

    /// Moves a command on to `status`, with `update` filling in details.
    pub fn advance(
        &mut self,
        id: &CommandId,
        status: CommandStatus,
        now_ms: u64,
        update: impl FnOnce(&mut CommandView),
    ) -> Result<CommandView, Ignored> {
        let record = self.records.get_mut(id).ok_or(Ignored::UnknownCommand)?;
        record.view.status = record.view.status.advance(status).map_err(Ignored::Late)?;
        record.view.updated_ms = now_ms;
        update(&mut record.view);
        if status.is_terminal()
            && let Some(own) = &record.own
        {
            self.deadlines.remove(&(own.deadline, id.clone()));
        }
        Ok(record.view.clone())
    }

    /// Applies what a device said about a command: delivered, progress or reply.
    pub fn apply_device_message(
        &mut self,
        message: &DeviceMessage,
        now_ms: u64,
    ) -> Result<CommandView, Ignored> {
        let (id, session_id) = message.answer_to().ok_or(Ignored::NotAboutACommand)?;
        let record = self.records.get(id).ok_or(Ignored::UnknownCommand)?;
        if record
            .own
            .as_ref()
            .is_none_or(|own| own.session_id != session_id)
        {
            return Err(Ignored::StaleSession);
        }
        let id = id.clone();
        match message {
            DeviceMessage::Delivered(_) => {
                self.advance(&id, CommandStatus::Delivered, now_ms, |_| {})
            }
            DeviceMessage::Progress(progress) => {
                self.advance(&id, CommandStatus::Progress, now_ms, |view| {
                    if progress.percent.is_some() {
                        // 0–100 (PROTOCOL.md); a device's 101–255 is taken as done.
                        view.percent = progress.percent.map(|percent| percent.min(100));
                    }
                    if let Some(message) = &progress.message {
                        view.message = Some(truncate(message));
                    }
                })
            }
            DeviceMessage::Reply(reply) => match &reply.outcome {
                Outcome::Ok { result } => {
                    self.advance(&id, CommandStatus::Succeeded, now_ms, |view| {
                        view.result = Some(result.clone());
                        view.percent = Some(100);
                    })
                }
                Outcome::Error { code, message } => {
                    let status = match code {
                        ErrorCode::UnknownCommand | ErrorCode::InvalidArguments => {
                            CommandStatus::Rejected
                        }
                        ErrorCode::Cancelled => CommandStatus::Cancelled,
                        ErrorCode::Failed | ErrorCode::Busy | ErrorCode::Other => {
                            CommandStatus::Failed
                        }
                    };
                    self.advance(&id, status, now_ms, |view| {
                        view.error = Some(truncate(message))
                    })
                }
            },
            _ => Err(Ignored::NotAboutACommand),
        }
    }

    /// Ends every command whose deadline has passed: if its device went away (see
    /// [`Self::device_gone`]) as offline when it certainly never reached the device, as
    /// outcome unknown when it may have; else as timed out.
    pub fn expire(&mut self, now: Instant, now_ms: u64) -> Vec<CommandView> {
        let due: Vec<(CommandId, Option<Gone>, CommandStatus)> = self
            .deadlines
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .map(|(_, id)| {
                let record = self.records.get(id);
                let gone = record
                    .and_then(|r| r.own.as_ref())
                    .and_then(|own| own.gone.clone());
                let status = record.map_or(CommandStatus::Accepted, |r| r.view.status);
                (id.clone(), gone, status)
            })
            .collect();
        due.into_iter()
            .filter_map(|(id, gone, now_status)| {
                let acknowledged = matches!(
                    now_status,
                    CommandStatus::Delivered | CommandStatus::Progress
                );
                let (status, why) = match gone {
                    Some((why, Departure::Bye)) if !acknowledged => (CommandStatus::Offline, why),
                    Some((why, departure)) => (
                        CommandStatus::OutcomeUnknown,
                        match departure {
                            Departure::Bye => format!(
                                "{why} while carrying the command out: it may or may not have been done"
                            ),
                            Departure::Lost => format!(
                                "{why} after the command reached its inbox: it may or may not have been carried out"
                            ),
                        },
                    ),
                    None => (
                        CommandStatus::TimedOut,
                        "the device did not answer before the deadline".to_owned(),
                    ),
                };
                self.advance(&id, status, now_ms, |view| view.error = Some(why))
                    .ok()
            })
            .collect()
    }

    /// The device's session ended (bye, a new session, or its inbox vanished): every
    /// command still pending on that session ends at `at` (as offline or outcome
    /// unknown, by `departure` and how far it got: see [`Departure`]) — a moment later,
    /// not now, because answers the device sent just before leaving travel on another
    /// queue than its goodbye and may arrive after it. Returns how many were pending.
    pub fn device_gone(
        &mut self,
        device: &DeviceId,
        session_id: &str,
        why: &str,
        departure: Departure,
        at: Instant,
    ) -> usize {
        let mut moved = Vec::new();
        for record in self.records.values_mut() {
            if &record.view.device_id != device || record.view.status.is_terminal() {
                continue;
            }
            let Some(own) = record
                .own
                .as_mut()
                .filter(|own| own.session_id == session_id)
            else {
                continue;
            };
            own.gone = Some((why.to_owned(), departure));
            if at < own.deadline {
                moved.push((own.deadline, at, record.view.id.clone()));
                own.deadline = at;
            }
        }
        for (old, new, id) in &moved {
            self.deadlines.remove(&(*old, id.clone()));
            self.deadlines.insert((*new, id.clone()));
        }
        moved.len()
    }

    /// Ends every pending command of this replica with `status` and `why`.
    pub fn end_all(&mut self, status: CommandStatus, why: &str, now_ms: u64) -> Vec<CommandView> {
        let ids: Vec<CommandId> = self.deadlines.iter().map(|(_, id)| id.clone()).collect();
        ids.iter()
            .filter_map(|id| {
                self.advance(id, status, now_ms, |view| view.error = Some(why.to_owned()))
                    .ok()
            })
            .collect()
    }

    /// Mirrors a command of replica `origin` as it (or someone speaking for it) reported
    /// it; the change, if it was taken.
    pub fn mirror(&mut self, view: CommandView, origin: &str) -> Option<CommandView> {
        match self.records.get_mut(&view.id) {
            Some(record) if record.own.is_some() => None,
            // Never back: a late or repeated change of a command known further on.
            Some(record) if !view.supersedes(&record.view) => None,
            Some(record) => {
                record.view = view.clone();
                record.origin = Some(origin.to_owned());
                Some(view)
            }
            None => {
                self.order.push_back(view.id.clone());
                self.records.insert(
                    view.id.clone(),
                    Record {
                        view: view.clone(),
                        own: None,
                        origin: Some(origin.to_owned()),
                    },
                );
                self.forget_old();
                Some(view)
            }
        }
    }

    /// Other replicas' commands this replica mirrors that have not ended, with their
    /// senders.
    pub fn unfinished_mirrors(&self) -> Vec<(CommandId, String)> {
        self.records
            .iter()
            .filter(|(_, record)| record.own.is_none() && !record.view.status.is_terminal())
            .filter_map(|(id, record)| Some((id.clone(), record.origin.clone()?)))
            .collect()
    }

    /// The session and inbox one of this replica's commands went to; `None` for other
    /// replicas' commands.
    pub fn route(&self, id: &CommandId) -> Option<(&str, &str)> {
        let own = self.records.get(id)?.own.as_ref()?;
        Some((own.session_id.as_str(), own.inbox.as_str()))
    }

    /// The replica that sent a command this replica only mirrors (`None` for its own,
    /// and for commands it does not know).
    pub fn origin(&self, id: &CommandId) -> Option<&str> {
        self.records.get(id)?.origin.as_deref()
    }

    /// The inbox one of this replica's commands went to.
    pub fn inbox(&self, id: &CommandId) -> Option<String> {
        self.records
            .get(id)?
            .own
            .as_ref()
            .map(|own| own.inbox.clone())
    }

    /// The device a command was sent to, if this replica knows the command.
    pub fn device_of(&self, id: &CommandId) -> Option<&DeviceId> {
        self.records.get(id).map(|r| &r.view.device_id)
    }

    pub fn get(&self, id: &CommandId) -> Option<CommandView> {
        self.records.get(id).map(|r| r.view.clone())
    }

    /// The `limit` most recent commands, newest first, of one device or of all.
    pub fn recent(&self, device: Option<&DeviceId>, limit: usize) -> Vec<CommandView> {
        self.order
            .iter()
            .rev()
            .filter_map(|id| self.records.get(id))
            .filter(|r| device.is_none_or(|d| &r.view.device_id == d))
            .take(limit)
            .map(|r| r.view.clone())
            .collect()
    }

    /// The `limit` latest commands that `which` lets through, newest first.
    pub fn recent_of(
        &self,
        limit: usize,
        which: impl Fn(&CommandView) -> bool,
    ) -> Vec<CommandView> {
        self.order
            .iter()
            .rev()
            .filter_map(|id| self.records.get(id))
            .filter(|r| which(&r.view))
            .take(limit)
            .map(|r| r.view.clone())
            .collect()
    }

    /// The earliest deadline among pending commands.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(deadline, _)| *deadline)
    }

    /// How many of this replica's commands have not ended.
    pub fn pending(&self) -> usize {
        self.deadlines.len()
    }

    /// Forgets the oldest ended commands beyond [`KEEP_ENDED`]; pending ones stay.
    fn forget_old(&mut self) {
        let mut ended = self.records.len().saturating_sub(self.deadlines.len());
        let mut kept = VecDeque::new();
        while ended > KEEP_ENDED
            && let Some(id) = self.order.pop_front()
        {
            match self.records.get(&id) {
                Some(r) if r.view.status.is_terminal() => {
                    self.records.remove(&id);
                    ended -= 1;
                }
                Some(_) => kept.push_back(id),
                None => {}
            }
        }
        while let Some(id) = kept.pop_back() {
            self.order.push_front(id);
        }
    }
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(KEEP_OUTPUT_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use protocol::{Delivered, Progress, Reply};
    use serde_json::json;

    use super::*;

    fn view(id: &str, device: &str) -> CommandView {
        CommandView {
            id: id.into(),
            device_id: DeviceId::new(device).unwrap(),
            name: "echo".into(),
            args: Default::default(),
            status: CommandStatus::Accepted,
            created_ms: 0,
            updated_ms: 0,
            deadline_ms: 10_000,
            percent: None,
            message: None,
            result: None,
            error: None,
            issued_by: None,
            job_id: None,
        }
    }

    fn reply(id: &str, session: &str, outcome: Outcome) -> DeviceMessage {
        DeviceMessage::Reply(Reply {
            command_id: id.into(),
            session_id: session.into(),
            outcome,
        })
    }

    #[test]
    fn a_command_walks_through_its_life() {
        let t0 = Instant::now();
        let mut commands = Commands::default();
        commands.accept(
            view("c", "d"),
            "s".into(),
            "inbox".into(),
            t0 + Duration::from_secs(10),
        );
        commands
            .advance(&"c".into(), CommandStatus::Sent, 1, |_| {})
            .unwrap();
        let delivered = DeviceMessage::Delivered(Delivered {
            command_id: "c".into(),
            session_id: "s".into(),
        });
        assert_eq!(
            commands.apply_device_message(&delivered, 2).unwrap().status,
            CommandStatus::Delivered
        );
        let progress = DeviceMessage::Progress(Progress {
            command_id: "c".into(),
            session_id: "s".into(),
            percent: Some(50),
            message: Some("half".into()),
        });
        let halfway = commands.apply_device_message(&progress, 3).unwrap();
        assert_eq!(
            (halfway.status, halfway.percent, halfway.message.as_deref()),
            (CommandStatus::Progress, Some(50), Some("half"))
        );
        let beyond = DeviceMessage::Progress(Progress {
            command_id: "c".into(),
            session_id: "s".into(),
            percent: Some(250),
            message: None,
        });
        let beyond = commands.apply_device_message(&beyond, 3).unwrap();
        assert_eq!(
            (beyond.percent, beyond.message.as_deref()),
            (Some(100), Some("half")),
            "a percent over 100 is taken as 100; a progress without a message keeps the last"
        );
        let done = commands
            .apply_device_message(&reply("c", "s", Outcome::Ok { result: json!(42) }), 4)
            .unwrap();
        assert_eq!(
            (done.status, done.result, done.updated_ms),
            (CommandStatus::Succeeded, Some(json!(42)), 4)
        );
        assert_eq!(commands.pending(), 0);
        assert_eq!(commands.next_deadline(), None);
    }

    #[test]
    fn device_errors_map_to_statuses() {
        let t0 = Instant::now();
        let cases = [
            (ErrorCode::Failed, CommandStatus::Failed),
            (ErrorCode::Busy, CommandStatus::Failed),
            (ErrorCode::Other, CommandStatus::Failed),
            (ErrorCode::UnknownCommand, CommandStatus::Rejected),
            (ErrorCode::InvalidArguments, CommandStatus::Rejected),
            (ErrorCode::Cancelled, CommandStatus::Cancelled),
        ];
        for (code, status) in cases {
            let mut commands = Commands::default();
            commands.accept(view("c", "d"), "s".into(), "inbox".into(), t0);
            let ended = commands
                .apply_device_message(
                    &reply(
                        "c",
                        "s",
                        Outcome::Error {
                            code,
                            message: "no".into(),
                        },
                    ),
                    1,
                )
                .unwrap();
            assert_eq!(
                (ended.status, ended.error.as_deref()),
                (status, Some("no")),
                "{code:?}"
            );
        }
    }

    #[test]
    fn deadlines_time_commands_out_and_late_replies_are_ignored() {
        let t0 = Instant::now();
        let mut commands = Commands::default();
        commands.accept(
            view("slow", "d"),
            "s".into(),
            "inbox".into(),
            t0 + Duration::from_secs(1),
        );
        commands.accept(
            view("slower", "d"),
            "s".into(),
            "inbox".into(),
            t0 + Duration::from_secs(5),
        );
        assert_eq!(commands.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert!(commands.expire(t0, 0).is_empty());

        let expired = commands.expire(t0 + Duration::from_secs(2), 2_000);
        assert_eq!(expired.len(), 1);
        assert_eq!(
            (expired[0].id.0.as_str(), expired[0].status),
            ("slow", CommandStatus::TimedOut)
        );
        assert_eq!(commands.pending(), 1);

        let late = commands
            .apply_device_message(&reply("slow", "s", Outcome::Ok { result: json!(1) }), 3_000);
        assert_eq!(
            late,
            Err(Ignored::Late(TransitionError::AlreadyEnded(
                CommandStatus::TimedOut
            )))
        );
        assert_eq!(
            commands.get(&"slow".into()).unwrap().status,
            CommandStatus::TimedOut
        );
    }

    #[test]
    fn replies_from_other_sessions_or_unknown_commands_are_ignored() {
        let mut commands = Commands::default();
        commands.accept(view("c", "d"), "s1".into(), "inbox".into(), Instant::now());
        let foreign = reply("c", "s0", Outcome::Ok { result: json!(1) });
        assert_eq!(
            commands.apply_device_message(&foreign, 1),
            Err(Ignored::StaleSession)
        );
        let unknown = reply("nope", "s1", Outcome::Ok { result: json!(1) });
        assert_eq!(
            commands.apply_device_message(&unknown, 1),
            Err(Ignored::UnknownCommand)
        );
    }

    #[test]
    fn a_device_going_away_ends_its_sessions_commands_as_offline_after_a_grace() {
        let t0 = Instant::now();
        let grace = t0 + Duration::from_millis(300);
        let mut commands = Commands::default();
        commands.accept(
            view("a1", "a"),
            "sa".into(),
            "inbox".into(),
            t0 + Duration::from_secs(10),
        );
        commands.accept(
            view("a2", "a"),
            "sa".into(),
            "inbox".into(),
            t0 + Duration::from_secs(10),
        );
        commands.accept(
            view("a3", "a"),
            "old".into(),
            "inbox".into(),
            t0 + Duration::from_secs(10),
        );
        commands.accept(
            view("b1", "b"),
            "sb".into(),
            "inbox".into(),
            t0 + Duration::from_secs(10),
        );
        let a = DeviceId::new("a").unwrap();
        assert_eq!(
            commands.device_gone(&a, "sa", "gone", Departure::Bye, grace),
            2
        );
        assert_eq!(commands.next_deadline(), Some(grace));
        assert!(
            commands.expire(t0, 0).is_empty(),
            "not before the grace ends"
        );

        // An answer already on its way still counts.
        let answer = reply("a1", "sa", Outcome::Ok { result: json!(1) });
        assert_eq!(
            commands.apply_device_message(&answer, 1).unwrap().status,
            CommandStatus::Succeeded
        );

        let ended = commands.expire(grace, 300);
        assert_eq!(
            ended.iter().map(|v| v.id.0.as_str()).collect::<Vec<_>>(),
            ["a2"]
        );
        assert_eq!(
            (ended[0].status, ended[0].error.as_deref()),
            (CommandStatus::Offline, Some("gone"))
        );
        assert_eq!(
            commands.pending(),
            2,
            "other sessions and devices are untouched"
        );
    }

    #[test]
    fn history_is_newest_first_and_bounded() {
        let t0 = Instant::now();
        let mut commands = Commands::default();
        commands.accept(view("pending", "d"), "s".into(), "inbox".into(), t0);
        for n in 0..KEEP_ENDED + 5 {
            let id = format!("c{n}");
            commands.accept(
                view(&id, if n % 2 == 0 { "even" } else { "odd" }),
                "s".into(),
                "inbox".into(),
                t0,
            );
            commands
                .advance(&id.as_str().into(), CommandStatus::Succeeded, 0, |_| {})
                .unwrap();
        }
        assert!(
            commands.records.len() <= KEEP_ENDED + 2,
            "ended ones beyond the cap are forgotten"
        );
        assert!(
            commands.get(&"pending".into()).is_some(),
            "pending ones are never forgotten"
        );
        let recent = commands.recent(Some(&DeviceId::new("odd").unwrap()), 2);
        let ids: Vec<_> = recent.iter().map(|v| v.id.0.as_str()).collect();
        let last_odd = (0..KEEP_ENDED + 5).rev().find(|n| n % 2 == 1).unwrap();
        assert_eq!(ids, [format!("c{last_odd}"), format!("c{}", last_odd - 2)]);
    }

    #[test]
    fn other_replicas_commands_are_mirrored_but_never_overwrite_our_own() {
        let mut commands = Commands::default();
        let mut theirs = view("theirs", "d");
        commands.mirror(theirs.clone(), "r2");
        theirs.status = CommandStatus::Succeeded;
        commands.mirror(theirs, "r2");
        assert_eq!(
            commands.get(&"theirs".into()).unwrap().status,
            CommandStatus::Succeeded
        );
        assert_eq!(commands.pending(), 0, "mirrors have no deadline here");
        assert_eq!(commands.origin(&"theirs".into()), Some("r2"));

        commands.accept(
            view("ours", "d"),
            "s".into(),
            "inbox".into(),
            Instant::now(),
        );
        let mut impostor = view("ours", "d");
        impostor.status = CommandStatus::Failed;
        commands.mirror(impostor, "r2");
        assert_eq!(
            commands.get(&"ours".into()).unwrap().status,
            CommandStatus::Accepted
        );
        assert_eq!(commands.origin(&"ours".into()), None);
    }
}
