//! A reading as it arrives on `tether.telemetry`, decoded once for both paths that read
//! it (the live view in [`intake`](crate::intake) and the recorders): a telemetry
//! message of this protocol version, under its own routing key.

use protocol::{DeviceMessage, TelemetrySample, names};

/// How far ahead of this server's clock a reading's time may be.
const MAX_CLOCK_AHEAD_MS: u64 = 5 * 60_000;
/// 2001-09-09: a reading from before this was measured by a device without a clock.
const MIN_PLAUSIBLE_MS: u64 = protocol::device::MIN_READING_TS_MS;

/// Whether a reading measured at `ts_ms` (the device's clock) can be true at `now_ms`
/// (this server's): not more than 5 minutes ahead, and not from before clocks were set.
/// Both paths apply it (PROTOCOL.md): a reading the store refuses must not become a
/// device's latest reading in the live view either.
pub(crate) fn plausible_time(ts_ms: u64, now_ms: u64) -> bool {
    (MIN_PLAUSIBLE_MS..=now_ms.saturating_add(MAX_CLOCK_AHEAD_MS)).contains(&ts_ms)
}

/// Why a message on the telemetry exchange is not a reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unreadable {
    /// Not a message of this protocol version; the decoder's words.
    Malformed(String),
    /// A reading whose value is not a number.
    WrongType(String),
    /// Another kind of message, or a reading under another routing key than its own.
    Foreign(String),
}

/// Decodes a message delivered under `routing_key` as a reading.
pub(crate) fn decode(data: &[u8], routing_key: &str) -> Result<TelemetrySample, Unreadable> {
    let sample = match protocol::decode::<DeviceMessage>(data) {
        Ok(DeviceMessage::Telemetry(sample)) => sample,
        Ok(other) => {
            return Err(Unreadable::Foreign(format!(
                "{other:?} on the telemetry exchange"
            )));
        }
        Err(error) if is_wrong_type(data) => {
            return Err(Unreadable::WrongType(format!("reading: {error}")));
        }
        Err(error) => return Err(Unreadable::Malformed(format!("reading: {error}"))),
    };
    if routing_key != names::telemetry_key(&sample.device_id, &sample.metric) {
        return Err(Unreadable::Foreign(format!(
            "a reading under routing key {routing_key}"
        )));
    }
    Ok(sample)
}

/// Whether a body that did not decode is a reading whose value is not a number.
fn is_wrong_type(data: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(data).is_ok_and(|body| {
        body.get("type").and_then(|t| t.as_str()) == Some("telemetry")
            && body.get("value").is_some_and(|v| !v.is_number())
    })
}
