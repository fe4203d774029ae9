//! The per-device rate limit on readings, shared by the live path (counting by the
//! second a reading arrived) and the recorders (counting by the second it was measured
//! in, so that a backlog arriving all at once is not a flood). One noisy device cannot
//! drown the others.

use std::collections::HashMap;

use protocol::DeviceId;

/// Readings a device may send per second; more are dropped and counted.
pub const MAX_READINGS_PER_SECOND: u32 = 50;
/// Devices remembered before the gate forgets them all (a bound, not a policy).
const MAX_DEVICES: usize = 100_000;

/// What became of one reading at the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// Over the limit; `first` for the first refused in its second, so that a flood is
    /// logged once a second rather than once a reading.
    Refused {
        first: bool,
    },
}

#[derive(Debug, Default)]
pub struct FloodGate {
    /// By device: the second being counted and how many readings it has had.
    seconds: HashMap<DeviceId, (i64, u32)>,
}

impl FloodGate {
    /// Counts a reading of `device` in the second that holds `at_ms`.
    pub fn admit(&mut self, device: &DeviceId, at_ms: i64) -> Admission {
        if self.seconds.len() > MAX_DEVICES {
            self.seconds.clear();
        }
        let second = at_ms.div_euclid(1000);
        let window = self.seconds.entry(device.clone()).or_insert((second, 0));
        if window.0 != second {
            *window = (second, 0);
        }
        window.1 += 1;
        if window.1 <= MAX_READINGS_PER_SECOND {
            Admission::Admitted
        } else {
            Admission::Refused {
                first: window.1 == MAX_READINGS_PER_SECOND + 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn each_device_gets_its_budget_per_second() {
        let mut gate = FloodGate::default();
        let device = DeviceId::new("d").unwrap();
        let verdicts: Vec<_> = (0..80).map(|i| gate.admit(&device, NOW + i)).collect();
        let admitted = verdicts
            .iter()
            .filter(|v| **v == Admission::Admitted)
            .count();
        assert_eq!(admitted, MAX_READINGS_PER_SECOND as usize);
        assert_eq!(verdicts[50], Admission::Refused { first: true });
        assert_eq!(verdicts[51], Admission::Refused { first: false });
        assert_eq!(
            gate.admit(&device, NOW + 1_000),
            Admission::Admitted,
            "a new second starts afresh"
        );
        let other = DeviceId::new("e").unwrap();
        assert_eq!(
            gate.admit(&other, NOW + 1),
            Admission::Admitted,
            "each device has its own budget"
        );
    }
}
