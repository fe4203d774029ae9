//! Messages between a device and the servers.
//!
//! A device publishes [`DeviceMessage`]s: hello, heartbeat and bye to the presence
//! exchange; delivered, progress and reply to the `reply_to` queue it was given, with the
//! command's `correlation_id`; telemetry to the telemetry exchange. A server publishes
//! [`ServerMessage`]s to a device's inbox.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Capabilities, CommandId, DeviceId};

/// The shortest heartbeat interval servers accept: they drop a hello announcing less.
pub const MIN_HEARTBEAT_MS: u64 = 100;
/// The longest heartbeat interval servers accept (10 minutes): they drop a hello
/// announcing more.
pub const MAX_HEARTBEAT_MS: u64 = 600_000;

/// 2001-09-09 in milliseconds since the Unix epoch: a reading measured before it comes
/// from a device without a set clock, and servers refuse it.
pub const MIN_READING_TS_MS: u64 = 1_000_000_000_000;

/// Everything a device sends.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DeviceMessage {
    Hello(Hello),
    Heartbeat(Heartbeat),
    Bye(Bye),
    Delivered(Delivered),
    Progress(Progress),
    Reply(Reply),
    Telemetry(TelemetrySample),
}

impl DeviceMessage {
    /// The command an answer (delivered, progress, reply) is about, and the session it
    /// comes from; `None` for anything else.
    pub fn answer_to(&self) -> Option<(&CommandId, &str)> {
        match self {
            Self::Delivered(m) => Some((&m.command_id, &m.session_id)),
            Self::Progress(m) => Some((&m.command_id, &m.session_id)),
            Self::Reply(m) => Some((&m.command_id, &m.session_id)),
            _ => None,
        }
    }
}

/// Everything a server sends to a device's inbox.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Command(CommandRequest),
    Cancel(CancelRequest),
    Announce(AnnounceRequest),
    Watch(WatchRequest),
    Unwatch(UnwatchRequest),
}

/// "Someone is watching you through me": report every `interval_ms` (the device clamps
/// it to what it announced) for the next `lease_ms`. A server renews the lease while its
/// viewers stay, so a server that vanishes cannot keep a device fast; the device goes
/// back to its usual pace once every replica's lease has lapsed or been released.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchRequest {
    /// Which server replica holds this lease.
    pub replica: String,
    pub interval_ms: u64,
    pub lease_ms: u64,
}

/// "My last viewer left": releases the replica's lease at once.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnwatchRequest {
    pub replica: String,
}

/// "Say hello again": sent to every device through `tether.discover` by a server that has
/// just connected, so it learns of devices that were already online.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceRequest {}

/// A device announces itself: sent on every (re)connect, with a new session and inbox.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub device_id: DeviceId,
    /// New on every connection; messages from older sessions are ignored.
    #[cfg_attr(
        feature = "schema",
        schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9_-]+$"))
    )]
    pub session_id: String,
    /// The broker-named queue that receives this session's commands.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = MAX_INBOX)))]
    pub inbox: String,
    /// What sort of device it is, e.g. `thermostat`. Servers cut a longer one to 64
    /// characters.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = MAX_KIND)))]
    pub kind: String,
    /// The software version it runs; `""` if it cannot tell. Servers cut a longer one
    /// to 64 characters.
    #[cfg_attr(feature = "schema", schemars(length(max = MAX_FIRMWARE)))]
    pub firmware: String,
    /// How often heartbeats come. The server declares the device offline after
    /// several are missed. From 100 ms to 10 minutes: servers drop a hello outside.
    #[cfg_attr(
        feature = "schema",
        schemars(range(min = MIN_HEARTBEAT_MS, max = MAX_HEARTBEAT_MS))
    )]
    pub heartbeat_ms: u64,
    #[serde(default)]
    pub capabilities: Capabilities,
}

/// Longest `kind` and `firmware` servers keep, in characters: longer ones are cut.
pub const MAX_KIND: usize = 64;
pub const MAX_FIRMWARE: usize = 64;
/// Longest `bye.reason` servers keep, in characters: a longer one is cut.
pub const MAX_BYE_REASON: usize = 200;
/// Longest inbox name: an AMQP short string.
pub const MAX_INBOX: usize = 255;

/// A session id: 1–64 ASCII letters, digits, `-` or `_`.
pub fn valid_session_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-'))
}

impl Hello {
    /// Everything that makes servers drop this hello (the device does not come online),
    /// each a sentence; empty if it is accepted.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !valid_session_id(&self.session_id) {
            problems.push(format!(
                "session_id {:?} must be 1–64 ASCII letters, digits, `-` or `_`",
                crate::capability::shown(&self.session_id)
            ));
        }
        if self.inbox.is_empty() || self.inbox.len() > MAX_INBOX {
            problems.push(format!("the inbox must be 1–{MAX_INBOX} bytes"));
        }
        if !(MIN_HEARTBEAT_MS..=MAX_HEARTBEAT_MS).contains(&self.heartbeat_ms) {
            problems.push(format!(
                "heartbeat_ms {} is outside {MIN_HEARTBEAT_MS}–{MAX_HEARTBEAT_MS}",
                self.heartbeat_ms
            ));
        }
        problems.extend(self.capabilities.problems());
        problems
    }

    /// Cuts what is shown to people (kind, firmware, descriptions, units) to its limits.
    pub fn cut_text(&mut self) {
        crate::capability::cut(&mut self.kind, MAX_KIND);
        crate::capability::cut(&mut self.firmware, MAX_FIRMWARE);
        self.capabilities.cut_text();
    }
}

/// "Still here", every `heartbeat_ms`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub device_id: DeviceId,
    pub session_id: String,
}

/// "Going away now" (shutdown, reboot).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bye {
    pub device_id: DeviceId,
    pub session_id: String,
    /// Free text for people, e.g. `shutdown`. Servers cut a longer one to 200
    /// characters.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(max = MAX_BYE_REASON)))]
    pub reason: String,
}

/// A command for a device.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRequest {
    pub command_id: CommandId,
    pub name: String,
    #[serde(default)]
    pub args: BTreeMap<String, Value>,
    /// Time the device has, from receipt, to reply. Past it the server has already
    /// reported the command as timed out, and a late reply is ignored. Servers send
    /// 100 to 300,000 ms.
    #[cfg_attr(
        feature = "schema",
        schemars(range(min = crate::api::timeouts::MIN_MS, max = crate::api::timeouts::MAX_MS))
    )]
    pub timeout_ms: u64,
    /// When the server's deadline passes, in milliseconds since the Unix epoch by the
    /// server's clock (the API's `deadline_ms`): `timeout_ms` after the command was
    /// created, so the part of the budget spent in the broker is already gone. Absent
    /// from servers before it was added. See [`CommandRequest::time_left`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

impl CommandRequest {
    /// The time a device has for this command, received at `now_ms` by its own clock:
    /// until `deadline_ms` when that falls within `timeout_ms` from now, otherwise (no
    /// deadline given, or a clock that disagrees with the server's: the deadline lies
    /// in the past or further ahead than the whole budget) `timeout_ms` from receipt.
    pub fn time_left(&self, now_ms: u64) -> std::time::Duration {
        let budget = self.timeout_ms;
        let left = match self.deadline_ms {
            Some(deadline) if deadline > now_ms && deadline - now_ms <= budget => deadline - now_ms,
            _ => budget,
        };
        std::time::Duration::from_millis(left)
    }
}

/// Stop working on a command, if it is still running.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRequest {
    pub command_id: CommandId,
}

/// The device has received the command (sent at once, before running it).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    pub command_id: CommandId,
    pub session_id: String,
}

/// The command is under way.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub command_id: CommandId,
    pub session_id: String,
    /// 0–100, when the device can tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(max = 100)))]
    pub percent: Option<u8>,
    /// What it is doing now, or a piece of partial output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The command's one and only answer.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub command_id: CommandId,
    pub session_id: String,
    pub outcome: Outcome,
}

/// How a command ended on the device.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    Ok {
        #[serde(default)]
        result: Value,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// Why a device did not carry out a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// It tried, and it did not work.
    Failed,
    /// The device does not know this command.
    UnknownCommand,
    /// The arguments are wrong (the device checked them too).
    InvalidArguments,
    /// It stopped because it was asked to.
    Cancelled,
    /// It cannot take the command now.
    Busy,
    /// A code from a newer device that this build does not know.
    #[serde(other)]
    Other,
}

/// One reading.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetrySample {
    pub device_id: DeviceId,
    pub session_id: String,
    /// An announced metric's name: the last word of the routing key
    /// `telemetry.<device>.<metric>`.
    #[cfg_attr(
        feature = "schema",
        schemars(schema_with = "crate::schema::routing_word")
    )]
    pub metric: String,
    pub value: f64,
    /// When it was measured, in milliseconds since the Unix epoch. Servers refuse
    /// readings from before 2001-09-09 (10^12 ms: a device without a clock) or more
    /// than 5 minutes ahead of their own clock.
    #[cfg_attr(feature = "schema", schemars(range(min = MIN_READING_TS_MS)))]
    pub ts_ms: u64,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{DecodeError, PROTOCOL_VERSION, decode, encode};

    fn id(s: &str) -> DeviceId {
        DeviceId::new(s).unwrap()
    }

    fn hello() -> Hello {
        Hello {
            device_id: id("sw-1"),
            session_id: "9f2c41d07be5a318".into(),
            inbox: "amq.gen-abc".into(),
            kind: "switch".into(),
            firmware: "1.2.3".into(),
            heartbeat_ms: 2000,
            capabilities: Capabilities::default(),
        }
    }

    #[test]
    fn a_command_lasts_until_the_deadline_when_the_clocks_agree() {
        let at = |deadline_ms| CommandRequest {
            command_id: CommandId::from("c"),
            name: "n".into(),
            args: BTreeMap::new(),
            timeout_ms: 10_000,
            deadline_ms,
        };
        let now = 1_800_000_000_000;
        let ms = std::time::Duration::from_millis;
        assert_eq!(at(None).time_left(now), ms(10_000));
        // 2.5 s of the budget went by in the broker.
        assert_eq!(at(Some(now + 7_500)).time_left(now), ms(7_500));
        assert_eq!(at(Some(now + 10_000)).time_left(now), ms(10_000));
        assert_eq!(at(Some(now + 1)).time_left(now), ms(1));
        // Clocks that disagree: the device's is behind, or ahead (or the deadline
        // passed): the budget counts from receipt.
        assert_eq!(at(Some(now + 10_001)).time_left(now), ms(10_000));
        assert_eq!(at(Some(now)).time_left(now), ms(10_000));
        assert_eq!(at(Some(now - 60_000)).time_left(now), ms(10_000));
        assert_eq!(at(Some(0)).time_left(u64::MAX), ms(10_000));
    }

    #[test]
    fn a_hello_is_checked_whole() {
        assert_eq!(hello().problems(), Vec::<String>::new());
        type Spoil = fn(&mut Hello);
        let cases: [(Spoil, &str); 7] = [
            (
                |h| h.session_id = String::new(),
                "session_id \"\" must be 1–64",
            ),
            (
                |h| h.session_id = "a.b".into(),
                "session_id \"a.b\" must be",
            ),
            (|h| h.session_id = "s".repeat(65), "must be 1–64 ASCII"),
            (|h| h.inbox = String::new(), "the inbox must be 1–255 bytes"),
            (
                |h| h.inbox = "q".repeat(256),
                "the inbox must be 1–255 bytes",
            ),
            (
                |h| h.heartbeat_ms = 99,
                "heartbeat_ms 99 is outside 100–600000",
            ),
            (
                |h| {
                    h.capabilities.metrics =
                        vec![serde_json::from_value(json!({"name": "a.b"})).unwrap()]
                },
                "metric name \"a.b\"",
            ),
        ];
        for (spoil, expected) in cases {
            let mut bad = hello();
            spoil(&mut bad);
            let problems = bad.problems();
            assert!(
                problems.len() == 1 && problems[0].contains(expected),
                "{problems:?}, expected {expected:?}"
            );
        }
    }

    #[test]
    fn a_hello_keeps_its_text_for_people_within_limits() {
        let mut long = Hello {
            kind: "k".repeat(65),
            firmware: "1.0-ü".repeat(20),
            ..hello()
        };
        assert_eq!(
            long.problems(),
            Vec::<String>::new(),
            "long text is cut, not refused"
        );
        long.cut_text();
        assert_eq!(long.kind, "k".repeat(64));
        assert_eq!(long.firmware.chars().count(), 64);
    }

    fn every_device_message() -> Vec<DeviceMessage> {
        let capabilities: Capabilities = serde_json::from_value(json!({
            "commands": [{"name": "toggle"}, {"name": "set", "args": [
                {"name": "on", "type": "boolean", "required": true}]}],
            "metrics": [{"name": "power", "unit": "W", "min": 0.0, "max": 3000.0}]
        }))
        .unwrap();
        let command_id = CommandId::from("c-1");
        vec![
            DeviceMessage::Hello(Hello {
                device_id: id("sw-1"),
                session_id: "s1".into(),
                inbox: "amq.gen-abc".into(),
                kind: "switch".into(),
                firmware: "1.2.3".into(),
                heartbeat_ms: 2000,
                capabilities,
            }),
            DeviceMessage::Heartbeat(Heartbeat {
                device_id: id("sw-1"),
                session_id: "s1".into(),
            }),
            DeviceMessage::Bye(Bye {
                device_id: id("sw-1"),
                session_id: "s1".into(),
                reason: "shutdown".into(),
            }),
            DeviceMessage::Delivered(Delivered {
                command_id: command_id.clone(),
                session_id: "s1".into(),
            }),
            DeviceMessage::Progress(Progress {
                command_id: command_id.clone(),
                session_id: "s1".into(),
                percent: Some(40),
                message: Some("flashing".into()),
            }),
            DeviceMessage::Reply(Reply {
                command_id: command_id.clone(),
                session_id: "s1".into(),
                outcome: Outcome::Ok {
                    result: json!({"on": true}),
                },
            }),
            DeviceMessage::Reply(Reply {
                command_id,
                session_id: "s1".into(),
                outcome: Outcome::Error {
                    code: ErrorCode::Busy,
                    message: "rebooting".into(),
                },
            }),
            DeviceMessage::Telemetry(TelemetrySample {
                device_id: id("sw-1"),
                session_id: "s1".into(),
                metric: "power".into(),
                value: 12.5,
                ts_ms: 1_700_000_000_000,
            }),
        ]
    }

    #[test]
    fn every_message_round_trips_through_the_envelope() {
        for message in every_device_message() {
            let bytes = encode(&message);
            assert_eq!(decode::<DeviceMessage>(&bytes), Ok(message));
        }
        for message in [
            ServerMessage::Command(CommandRequest {
                command_id: "c-9".into(),
                name: "set".into(),
                args: [("on".to_owned(), json!(true))].into(),
                timeout_ms: 10_000,
                deadline_ms: None,
            }),
            ServerMessage::Cancel(CancelRequest {
                command_id: "c-9".into(),
            }),
            ServerMessage::Announce(AnnounceRequest {}),
            ServerMessage::Watch(WatchRequest {
                replica: "r1".into(),
                interval_ms: 1_000,
                lease_ms: 30_000,
            }),
            ServerMessage::Unwatch(UnwatchRequest {
                replica: "r1".into(),
            }),
        ] {
            assert_eq!(decode::<ServerMessage>(&encode(&message)), Ok(message));
        }
    }

    #[test]
    fn the_envelope_is_flat_json_with_version_and_type() {
        let bytes = encode(&DeviceMessage::Heartbeat(Heartbeat {
            device_id: id("d"),
            session_id: "s".into(),
        }));
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            value,
            json!({"v": PROTOCOL_VERSION, "type": "heartbeat", "device_id": "d", "session_id": "s"})
        );
    }

    #[test]
    fn bad_input_decodes_to_clear_errors() {
        let cases: [(&[u8], &str); 6] = [
            (b"\xff\x00", "not_an_envelope"),
            (b"[1,2]", "not_an_envelope"),
            (br#"{"type":"heartbeat"}"#, "not_an_envelope"),
            (
                br#"{"v":2,"type":"heartbeat","device_id":"d","session_id":"s"}"#,
                "unsupported_version",
            ),
            (br#"{"v":1,"type":"dance"}"#, "malformed"),
            (
                br#"{"v":1,"type":"heartbeat","device_id":"a.b","session_id":"s"}"#,
                "malformed",
            ),
        ];
        for (bytes, reason) in cases {
            let error = decode::<DeviceMessage>(bytes).unwrap_err();
            assert_eq!(error.reason(), reason, "{error}");
        }
        assert_eq!(
            decode::<DeviceMessage>(br#"{"v":7}"#)
                .unwrap_err()
                .to_string(),
            "unsupported protocol version 7 (this build speaks 1)"
        );
        assert!(
            matches!(decode::<DeviceMessage>(b"{\"v\":1,\"type\":\"hello\"}"), Err(DecodeError::Malformed(m)) if m.contains("device_id"))
        );
    }

    #[test]
    fn unknown_error_codes_from_newer_devices_still_decode() {
        let bytes = br#"{"v":1,"type":"reply","command_id":"c","session_id":"s","outcome":{"status":"error","code":"overheated","message":"hot"}}"#;
        let DeviceMessage::Reply(reply) = decode::<DeviceMessage>(bytes).unwrap() else {
            panic!("not a reply")
        };
        assert_eq!(
            reply.outcome,
            Outcome::Error {
                code: ErrorCode::Other,
                message: "hot".into()
            }
        );
    }
}
