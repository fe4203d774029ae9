//! The recorders' checks on one message, before it is stored: well formed, under its
//! own routing key, sent by the device it speaks for, a plausible time, what its device announced (when the device is
//! known), and within the per-device rate. Pure, with unit tests.

use protocol::TelemetrySample;

use crate::{
    announced::{Announced, Known},
    flood::{Admission, FloodGate},
    reading::{self, Unreadable},
};

/// Why a message was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Not a telemetry message of this protocol version.
    Malformed,
    /// A reading whose value is not a number.
    WrongType,
    /// A reading under another routing key than its own.
    Foreign,
    /// A metric its device did not announce.
    UnknownMetric,
    /// Outside the announced range, or not finite.
    OutOfRange,
    /// More than `MAX_READINGS_PER_SECOND` (50) measured in one second of the device's clock
    /// (not one second of arrival: a backlog arrives all at once and is not a flood).
    Flood,
    /// Measured in the future, or before clocks were set.
    BadTimestamp,
    /// Published by another account than the device it speaks for (its `user_id`).
    Impostor,
}

impl Rejected {
    pub const ALL: [Self; 8] = [
        Self::Malformed,
        Self::WrongType,
        Self::Foreign,
        Self::UnknownMetric,
        Self::OutOfRange,
        Self::Flood,
        Self::BadTimestamp,
        Self::Impostor,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::WrongType => "wrong_type",
            Self::Foreign => "foreign",
            Self::UnknownMetric => "unknown_metric",
            Self::OutOfRange => "out_of_range",
            Self::Flood => "flood",
            Self::BadTimestamp => "bad_timestamp",
            Self::Impostor => "impostor",
        }
    }
}

/// Checks one message: well formed, under its own routing key, sent by its device
/// (`sender`, the message's `user_id`: the storage queue can be written to through the
/// default exchange by anyone who knows its name), a plausible time, what its device
/// announced (when the device is known), and within the per-device rate.
pub(crate) fn check(
    data: &[u8],
    routing_key: &str,
    sender: Option<&str>,
    announced: Option<&dyn Announced>,
    flood: &mut FloodGate,
    now_ms: i64,
) -> Result<store::Sample, Rejected> {
    let TelemetrySample {
        device_id,
        metric,
        value,
        ts_ms,
        ..
    } = reading::decode(data, routing_key).map_err(|why| match why {
        Unreadable::Malformed(_) => Rejected::Malformed,
        Unreadable::WrongType(_) => Rejected::WrongType,
        Unreadable::Foreign(_) => Rejected::Foreign,
    })?;
    // Before the rate: an impostor must not use up its victim's allowance.
    if sender != Some(device_id.as_str()) {
        return Err(Rejected::Impostor);
    }
    if !reading::plausible_time(ts_ms, u64::try_from(now_ms).unwrap_or(0)) {
        return Err(Rejected::BadTimestamp);
    }
    let ts_ms = i64::try_from(ts_ms).map_err(|_| Rejected::BadTimestamp)?;
    // A device this replica has not heard from yet (a backlog read after a restart) is
    // stored after the checks that need no announcement: dropping it would lose real
    // measurements.
    match announced.map_or(Known::UnknownDevice, |a| a.metric(&device_id, &metric)) {
        Known::UnknownDevice if value.is_finite() => {}
        Known::Metric(spec) if spec.admits(value) => {}
        Known::UnknownMetric => return Err(Rejected::UnknownMetric),
        Known::UnknownDevice | Known::Metric(_) => return Err(Rejected::OutOfRange),
    }
    if flood.admit(&device_id, ts_ms) != Admission::Admitted {
        return Err(Rejected::Flood);
    }
    Ok(store::Sample {
        device: device_id.as_str().to_owned(),
        metric,
        ts_ms,
        value,
    })
}

#[cfg(test)]
mod tests {
    use protocol::{DeviceId, DeviceMessage, encode};

    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    /// The check of a message sent by the device its routing key names.
    fn check(
        data: &[u8],
        routing_key: &str,
        announced: Option<&dyn Announced>,
        flood: &mut FloodGate,
        now_ms: i64,
    ) -> Result<store::Sample, Rejected> {
        let sender = routing_key.split('.').nth(1);
        super::check(data, routing_key, sender, announced, flood, now_ms)
    }

    #[test]
    fn readings_sent_by_another_account_are_impostors() {
        let mut flood = FloodGate::default();
        let message = reading("d1", "cpu", 12.5, NOW - 10);
        for sender in [Some("d2"), Some("tether-server"), None] {
            assert_eq!(
                super::check(&message, "telemetry.d1.cpu", sender, None, &mut flood, NOW),
                Err(Rejected::Impostor),
                "sent by {sender:?}"
            );
        }
        assert!(
            super::check(
                &message,
                "telemetry.d1.cpu",
                Some("d1"),
                None,
                &mut flood,
                NOW
            )
            .is_ok()
        );
    }

    fn reading(device: &str, metric: &str, value: f64, ts_ms: i64) -> Vec<u8> {
        encode(&DeviceMessage::Telemetry(TelemetrySample {
            device_id: DeviceId::new(device).unwrap(),
            session_id: "s".into(),
            metric: metric.into(),
            value,
            ts_ms: ts_ms as u64,
        }))
    }

    #[test]
    fn good_readings_of_unknown_devices_are_kept() {
        let mut flood = FloodGate::default();
        let sample = check(
            &reading("d1", "cpu", 12.5, NOW - 10),
            "telemetry.d1.cpu",
            None,
            &mut flood,
            NOW,
        )
        .unwrap();
        assert_eq!(
            sample,
            store::Sample {
                device: "d1".into(),
                metric: "cpu".into(),
                ts_ms: NOW - 10,
                value: 12.5
            }
        );
    }

    #[test]
    fn bad_messages_are_rejected_with_their_reason() {
        let mut flood = FloodGate::default();
        let mut check = |data: &[u8], key: &str| check(data, key, None, &mut flood, NOW);
        assert_eq!(check(b"{nope", "telemetry.d.x"), Err(Rejected::Malformed));
        let text = br#"{"v":1,"type":"telemetry","device_id":"d","session_id":"s","metric":"x","value":"hot","ts_ms":1800000000000}"#;
        assert_eq!(check(text, "telemetry.d.x"), Err(Rejected::WrongType));
        assert_eq!(
            check(&reading("d", "x", 1.0, NOW), "telemetry.e.x"),
            Err(Rejected::Foreign)
        );
        assert_eq!(
            check(&reading("d", "x", 1.0, NOW + 3_600_000), "telemetry.d.x"),
            Err(Rejected::BadTimestamp)
        );
        assert_eq!(
            check(&reading("d", "x", 1.0, 5), "telemetry.d.x"),
            Err(Rejected::BadTimestamp)
        );
    }
}
