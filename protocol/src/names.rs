//! Exchange names, routing keys and device identifiers.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Topic exchange for device presence: `presence.<device>.hello|heartbeat|bye`.
pub const PRESENCE_EXCHANGE: &str = "tether.presence";
/// Topic exchange for readings: `telemetry.<device>.<metric>`.
pub const TELEMETRY_EXCHANGE: &str = "tether.telemetry";
/// Fanout exchange from servers to every device inbox: asks every device to announce
/// itself again (a server that starts while devices are connected learns of them).
pub const DISCOVER_EXCHANGE: &str = "tether.discover";
/// Fanout exchange between server replicas: command status changes and other UI events.
pub const EVENTS_EXCHANGE: &str = "tether.events";
/// The durable queue, shared by every server replica, whose competing consumers store
/// readings (queue-based load levelling). Bound to [`TELEMETRY_ALL`].
pub const STORE_QUEUE: &str = "tether.telemetry.store";
/// Binding that receives every presence message.
pub const PRESENCE_ALL: &str = "presence.#";
/// Binding that receives every telemetry sample.
pub const TELEMETRY_ALL: &str = "telemetry.#";
/// MIME type of every Tether message body.
pub const CONTENT_TYPE: &str = "application/json";

/// How an exchange routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeType {
    Topic,
    Fanout,
}

/// Every exchange Tether declares, with its type. All are durable; declaring one again
/// with the same type is harmless, so every party declares what it uses.
pub const EXCHANGES: [(&str, ExchangeType); 4] = [
    (PRESENCE_EXCHANGE, ExchangeType::Topic),
    (TELEMETRY_EXCHANGE, ExchangeType::Topic),
    (EVENTS_EXCHANGE, ExchangeType::Fanout),
    (DISCOVER_EXCHANGE, ExchangeType::Fanout),
];

/// The presence routing keys a device publishes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceKind {
    Hello,
    Heartbeat,
    Bye,
}

/// `presence.<device>.<hello|heartbeat|bye>`.
pub fn presence_key(device: &DeviceId, kind: PresenceKind) -> String {
    let kind = match kind {
        PresenceKind::Hello => "hello",
        PresenceKind::Heartbeat => "heartbeat",
        PresenceKind::Bye => "bye",
    };
    format!("presence.{device}.{kind}")
}

/// `telemetry.<device>.<metric>`.
pub fn telemetry_key(device: &DeviceId, metric: &str) -> String {
    format!("telemetry.{device}.{metric}")
}

/// A device's name, unique in a fleet. 1–64 characters of ASCII letters, digits, `-` and
/// `_`, so it is one word in a routing key (no `.`, `*` or `#`) and safe in a URL path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(String);

/// Why a string is not a [`DeviceId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid device id {0:?}: use 1 to 64 ASCII letters, digits, '-' or '_' (no dots or spaces)"
)]
pub struct InvalidDeviceId(pub String);

impl DeviceId {
    pub const MAX_LEN: usize = 64;

    pub fn new(id: impl Into<String>) -> Result<Self, InvalidDeviceId> {
        let id = id.into();
        let valid = !id.is_empty()
            && id.len() <= Self::MAX_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if valid {
            Ok(Self(id))
        } else {
            Err(InvalidDeviceId(id))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for DeviceId {
    type Error = InvalidDeviceId;
    fn try_from(id: String) -> Result<Self, Self::Error> {
        Self::new(id)
    }
}

impl From<DeviceId> for String {
    fn from(id: DeviceId) -> Self {
        id.0
    }
}

impl std::str::FromStr for DeviceId {
    type Err = InvalidDeviceId;
    fn from_str(id: &str) -> Result<Self, Self::Err> {
        Self::new(id)
    }
}

/// The device and the kind of presence message a routing key names, if it is one.
pub fn parse_presence_key(key: &str) -> Option<(DeviceId, PresenceKind)> {
    let mut parts = key.split('.');
    let (Some("presence"), Some(device), Some(kind), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let kind = match kind {
        "hello" => PresenceKind::Hello,
        "heartbeat" => PresenceKind::Heartbeat,
        "bye" => PresenceKind::Bye,
        _ => return None,
    };
    Some((DeviceId::new(device).ok()?, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_single_routing_key_words() {
        for good in ["a", "gw-01", "THERMO_7", &"x".repeat(64)] {
            assert!(DeviceId::new(good).is_ok(), "{good}");
        }
        for bad in ["", "a.b", "a*", "#", "a b", "é", &"x".repeat(65)] {
            assert!(DeviceId::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn presence_keys_round_trip() {
        let id = DeviceId::new("gw-1").unwrap();
        for kind in [
            PresenceKind::Hello,
            PresenceKind::Heartbeat,
            PresenceKind::Bye,
        ] {
            let key = presence_key(&id, kind);
            assert_eq!(parse_presence_key(&key), Some((id.clone(), kind)));
        }
        assert_eq!(parse_presence_key("presence.gw-1.hello.extra"), None);
        assert_eq!(parse_presence_key("presence.gw-1.dance"), None);
        assert_eq!(parse_presence_key("telemetry.gw-1.cpu"), None);
    }

    #[test]
    fn device_id_deserialization_validates() {
        assert!(serde_json::from_str::<DeviceId>("\"ok-1\"").is_ok());
        let error = serde_json::from_str::<DeviceId>("\"not.ok\"").unwrap_err();
        assert!(error.to_string().contains("invalid device id"), "{error}");
    }
}
