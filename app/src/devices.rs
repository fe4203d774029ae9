//! Devices: the fleet list and one device's page, with what they share.

pub mod chart;
pub mod command_form;
pub mod command_log;
pub mod detail;
pub mod diagnostics;
pub mod list;
pub mod logs;
pub mod telemetry;

use leptos::prelude::*;
use protocol::{
    CommandId, CommandStatus, DeviceId,
    api::{CommandView, DeviceView, SendCommand},
};

use crate::fleet::{live::Live, send_command};

/// A card that sends one command at a time and shows how it goes (the log viewer, the
/// diagnostics): the command it sent last, as the live view has it, the error of the
/// last attempt, and whether a send is under way.
#[derive(Debug, Clone, Copy)]
pub struct Tracked {
    current: RwSignal<Option<CommandId>>,
    pub error: RwSignal<Option<String>>,
    pub sending: RwSignal<bool>,
    /// The command sent last, at its latest state.
    pub command: Memo<Option<CommandView>>,
    live: Live,
}

impl Tracked {
    pub fn new(live: Live) -> Self {
        let current = RwSignal::new(None::<CommandId>);
        Self {
            current,
            error: RwSignal::new(None),
            sending: RwSignal::new(false),
            command: Memo::new(move |_| {
                current
                    .get()
                    .and_then(|id| live.commands.with(|all| all.get(&id).cloned()))
            }),
            live,
        }
    }

    /// The id of the command sent last.
    pub fn current(&self) -> Option<CommandId> {
        self.current.get()
    }

    /// Whether the command sent last is still going.
    pub fn running(&self) -> bool {
        self.command.get().is_some_and(|c| !c.status.is_terminal())
    }

    /// Sends `request` to `device`; the command is put into the live view at once.
    pub fn send(self, device: &DeviceId, request: SendCommand) {
        let live = self.live;
        self.error.set(None);
        self.sending.set(true);
        let device = device.to_string();
        leptos::task::spawn_local(async move {
            match send_command(device, request).await {
                Ok(sent) => {
                    self.current.set(Some(sent.id.clone()));
                    live.upsert_command(sent);
                }
                Err(e) => self.error.set(Some(e.message)),
            }
            self.sending.set(false);
        });
    }
}

/// "just now", "42 s", "5 min", "3 h", "2 d".
pub fn ago(now_ms: u64, then_ms: u64) -> String {
    let seconds = now_ms.saturating_sub(then_ms) / 1000;
    match seconds {
        0..=4 => "just now".to_owned(),
        5..=59 => format!("{seconds} s ago"),
        60..=3_599 => format!("{} min ago", seconds / 60),
        3_600..=86_399 => format!("{} h ago", seconds / 3_600),
        _ => format!("{} d ago", seconds / 86_400),
    }
}

/// When a device was last heard from. Heartbeats are not pushed to the page one by one,
/// so for an online device the answer is "at most one heartbeat ago" (else it would
/// have gone offline), never the stale time of the last event.
pub fn last_heard(now_ms: u64, device: &DeviceView) -> String {
    let heard = if device.online {
        device
            .last_seen_ms
            .max(now_ms.saturating_sub(device.heartbeat_ms))
    } else {
        device.last_seen_ms
    };
    ago(now_ms, heard)
}

/// Online or offline, with since when.
#[component]
pub fn PresenceBadge(device: DeviceView, now_ms: Signal<u64>) -> impl IntoView {
    let (label, class) = if device.online {
        ("online", "badge online")
    } else {
        ("offline", "badge offline")
    };
    let since = device.since_ms;
    view! {
        <span class=class data-testid="presence">{label}</span>
        <span class="muted since">" since " {move || ago(now_ms.get(), since)}</span>
    }
}

/// A command's status as a coloured label.
#[component]
pub fn StatusBadge(status: CommandStatus) -> impl IntoView {
    let tone = match status {
        CommandStatus::Succeeded => "ok",
        CommandStatus::Failed
        | CommandStatus::Rejected
        | CommandStatus::Offline
        | CommandStatus::TimedOut => "bad",
        CommandStatus::Cancelled => "muted",
        // Perhaps carried out, perhaps not: never shown as a failure or as under way.
        CommandStatus::OutcomeUnknown => "unknown",
        CommandStatus::Accepted
        | CommandStatus::Sent
        | CommandStatus::Delivered
        | CommandStatus::Progress => "busy",
    };
    let title = (status == CommandStatus::OutcomeUnknown).then_some(
        "The connection was lost after the device may have received this command: it may or may not have been carried out.",
    );
    view! { <span class=format!("badge status {tone}") data-testid="status" title=title>{status.as_str().replace('_', " ")}</span> }
}

#[cfg(test)]
mod tests {
    use super::ago;

    #[test]
    fn ages_read_naturally() {
        assert_eq!(ago(10_000, 9_000), "just now");
        assert_eq!(ago(60_000, 18_000), "42 s ago");
        assert_eq!(ago(400_000, 100_000), "5 min ago");
        assert_eq!(ago(4 * 3_600_000, 0), "4 h ago");
        assert_eq!(ago(3 * 86_400_000, 0), "3 d ago");
        assert_eq!(ago(0, 5_000), "just now", "clock skew is not negative time");
    }

    #[test]
    fn an_online_device_was_heard_at_most_a_heartbeat_ago() {
        let device = |online| protocol::api::DeviceView {
            id: protocol::DeviceId::new("d").unwrap(),
            kind: "k".into(),
            firmware: "f".into(),
            online,
            since_ms: 0,
            last_seen_ms: 0,
            heartbeat_ms: 30_000,
            capabilities: Default::default(),
            latest: Default::default(),
            hello_refused: None,
        };
        let ten_minutes = 600_000;
        assert_eq!(super::last_heard(ten_minutes, &device(true)), "30 s ago");
        assert_eq!(super::last_heard(ten_minutes, &device(false)), "10 min ago");
    }
}
