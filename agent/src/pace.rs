//! How often readings go out: the configured interval, or faster while servers say that
//! someone watches. Each server replica holds a lease that it renews while its viewers
//! stay and releases when the last one leaves; a lease that is not renewed lapses by
//! itself, so a server that vanishes cannot keep a device (and its GPRS bill) fast.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use protocol::Reporting;

/// The longest lease a server may take at once.
pub const MAX_LEASE: Duration = Duration::from_secs(600);
/// The most replicas holding a lease at once; a newcomer evicts the lease nearest its end.
pub const MAX_LEASES: usize = 64;

#[derive(Debug, Clone)]
pub(crate) struct Pace {
    normal: Duration,
    fastest: Duration,
    /// By replica: the interval it asked for and when its lease ends.
    leases: HashMap<String, (Duration, Instant)>,
}

impl Pace {
    pub fn new(normal: Duration, fastest: Duration) -> Self {
        Self {
            normal,
            fastest: fastest.min(normal),
            leases: HashMap::new(),
        }
    }

    /// What the device announces.
    pub fn reporting(&self) -> Reporting {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Reporting {
            interval_ms: ms(self.normal),
            fastest_ms: ms(self.fastest),
        }
    }

    /// The interval now: the fastest any live lease asks for, within the bounds.
    pub fn interval(&self, now: Instant) -> Duration {
        self.leases
            .values()
            .filter(|(_, until)| *until > now)
            .map(|(interval, _)| *interval)
            .min()
            .unwrap_or(self.normal)
    }

    pub fn watch(&mut self, replica: &str, interval: Duration, lease: Duration, now: Instant) {
        let interval = interval.clamp(self.fastest, self.normal);
        let until = now + lease.min(MAX_LEASE);
        if !self.leases.contains_key(replica) && self.leases.len() >= MAX_LEASES {
            let nearest = self
                .leases
                .iter()
                .min_by_key(|(_, (_, until))| *until)
                .map(|(replica, _)| replica.clone());
            if let Some(nearest) = nearest {
                self.leases.remove(&nearest);
            }
        }
        self.leases.insert(replica.to_owned(), (interval, until));
    }

    pub fn unwatch(&mut self, replica: &str) {
        self.leases.remove(replica);
    }

    /// Forgets lapsed leases.
    pub fn expire(&mut self, now: Instant) {
        self.leases.retain(|_, (_, until)| *until > now);
    }

    /// When the next lease lapses, if any is held.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.leases.values().map(|(_, until)| *until).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn watching_speeds_up_within_bounds_until_released() {
        let now = Instant::now();
        let mut pace = Pace::new(5 * SECOND, SECOND);
        assert_eq!(pace.interval(now), 5 * SECOND);
        pace.watch("a", Duration::from_millis(10), 30 * SECOND, now);
        assert_eq!(pace.interval(now), SECOND, "never faster than announced");
        pace.watch("b", 2 * SECOND, 30 * SECOND, now);
        assert_eq!(pace.interval(now), SECOND, "the fastest lease wins");
        pace.unwatch("a");
        assert_eq!(
            pace.interval(now),
            2 * SECOND,
            "another replica still watches"
        );
        pace.unwatch("b");
        assert_eq!(pace.interval(now), 5 * SECOND);
        pace.watch("c", 60 * SECOND, 30 * SECOND, now);
        assert_eq!(pace.interval(now), 5 * SECOND, "never slower than usual");
    }

    #[test]
    fn leases_lapse_by_themselves_and_are_bounded() {
        let now = Instant::now();
        let mut pace = Pace::new(5 * SECOND, SECOND);
        pace.watch("a", SECOND, 3 * SECOND, now);
        assert_eq!(pace.next_expiry(), Some(now + 3 * SECOND));
        assert_eq!(pace.interval(now + 3 * SECOND), 5 * SECOND);
        pace.expire(now + 3 * SECOND);
        assert_eq!(pace.next_expiry(), None);
        pace.watch("b", SECOND, Duration::from_secs(86_400), now);
        assert_eq!(pace.next_expiry(), Some(now + MAX_LEASE));
        for n in 0..200 {
            pace.watch(&format!("r{n}"), SECOND, SECOND * (n + 1), now);
        }
        assert_eq!(pace.leases.len(), MAX_LEASES);
    }
}
