//! Reconnect pacing shared by every party that reconnects (server, recorders, agents,
//! browsers): exponential backoff with jitter, so that a fleet that lost its broker, or
//! every tab that lost its server, does not come back all at once.
//!
//! The maths only; the caller supplies the randomness (`fastrand` natively,
//! `Math.random` in the browser), which keeps this crate free of any runtime.

use std::time::Duration;

/// Exponential backoff: after `failures` failures in a row the pause is a random time
/// between half and all of `min · 2^(failures-1)`, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(min: Duration, max: Duration) -> Self {
        Self { min, max }
    }

    /// The pause after `failures` failures in a row (0 counts as 1), with `jitter` a
    /// random number in `[0, 1)` choosing where between half and all of the ceiling.
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let exponent = failures.saturating_sub(1).min(20);
        let ceiling = self.min.saturating_mul(1 << exponent).min(self.max);
        let half = ceiling / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_from_min_and_stays_under_the_cap() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(backoff.delay(1, 0.0), Duration::from_millis(50));
        assert_eq!(backoff.delay(1, 1.0), Duration::from_millis(100));
        assert_eq!(backoff.delay(0, 1.0), Duration::from_millis(100));
        assert_eq!(backoff.delay(3, 0.0), Duration::from_millis(200));
        assert_eq!(backoff.delay(3, 1.0), Duration::from_millis(400));
        assert_eq!(backoff.delay(40, 1.0), Duration::from_secs(2));
        assert_eq!(backoff.delay(u32::MAX, 0.5), Duration::from_millis(1500));
        // Out-of-range jitter is clamped, never past the ceiling.
        assert_eq!(backoff.delay(2, 7.0), Duration::from_millis(200));
    }
}
