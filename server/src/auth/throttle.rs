//! Failed logins slowed down, per account and per address: a few mistakes cost
//! nothing, then each further failure locks that account (or address) out for twice as
//! long as the last, up to 15 minutes. Guessing a password becomes hopeless without
//! locking a real user out for long. A success clears the account's count; a quiet
//! quarter of an hour clears both.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Failures allowed before the lock-outs start: per account, per address (an office
/// behind one address has many people typing passwords).
const FREE_PER_ACCOUNT: u32 = 5;
const FREE_PER_ADDRESS: u32 = 20;
/// The longest lock-out, and how long without a failure forgets them.
const MAX_LOCK: Duration = Duration::from_secs(15 * 60);
/// Entries kept at most; beyond, the oldest are forgotten (a flood of made-up account
/// names must not grow the server's memory).
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Default)]
pub struct Throttle {
    entries: Mutex<HashMap<String, Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

impl Throttle {
    /// `Err(wait)` if this account or this address is locked out now.
    pub fn check(&self, account: &str, address: &str, now: Instant) -> Result<(), Duration> {
        let entries = self.lock();
        let wait = [account_key(account), address_key(address)]
            .iter()
            .filter_map(|key| entries.get(key))
            .filter_map(|failures| failures.locked_until)
            .filter(|until| *until > now)
            .map(|until| until - now)
            .max();
        wait.map_or(Ok(()), Err)
    }

    /// Counts a failed login against the account and the address.
    pub fn failed(&self, account: &str, address: &str, now: Instant) {
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, failures| now.duration_since(failures.last) < MAX_LOCK);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        for (key, free) in [
            (account_key(account), FREE_PER_ACCOUNT),
            (address_key(address), FREE_PER_ADDRESS),
        ] {
            let failures = entries.entry(key).or_insert(Failures {
                count: 0,
                last: now,
                locked_until: None,
            });
            if now.duration_since(failures.last) >= MAX_LOCK {
                failures.count = 0;
            }
            failures.count += 1;
            failures.last = now;
            if failures.count > free {
                let doubling = (failures.count - free - 1).min(10);
                let lock = (Duration::from_secs(1) * 2u32.pow(doubling)).min(MAX_LOCK);
                failures.locked_until = Some(now + lock);
            }
        }
    }

    /// A successful login clears the account's failures (not the address's).
    pub fn succeeded(&self, account: &str) {
        self.lock().remove(&account_key(account));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Failures>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn account_key(account: &str) -> String {
    format!("user:{}", account.to_lowercase())
}

fn address_key(address: &str) -> String {
    format!("addr:{address}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_mistakes_are_free_then_the_account_locks_for_longer_each_time() {
        let throttle = Throttle::default();
        let t0 = Instant::now();
        for _ in 0..FREE_PER_ACCOUNT {
            assert_eq!(throttle.check("alice", "10.0.0.1", t0), Ok(()));
            throttle.failed("alice", "10.0.0.1", t0);
        }
        assert_eq!(throttle.check("alice", "10.0.0.1", t0), Ok(()));
        throttle.failed("alice", "10.0.0.1", t0);
        assert_eq!(
            throttle.check("alice", "10.0.0.2", t0),
            Err(Duration::from_secs(1))
        );
        // From any address, and whatever the case of the name.
        assert!(throttle.check("ALICE", "10.9.9.9", t0).is_err());
        assert_eq!(throttle.check("bob", "10.0.0.2", t0), Ok(()));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(throttle.check("alice", "10.0.0.1", t1), Ok(()));
        throttle.failed("alice", "10.0.0.1", t1);
        assert_eq!(
            throttle.check("alice", "10.0.0.1", t1),
            Err(Duration::from_secs(2))
        );
        // A quiet quarter of an hour forgets.
        let later = t1 + MAX_LOCK;
        throttle.failed("alice", "10.0.0.1", later);
        assert_eq!(throttle.check("alice", "10.0.0.1", later), Ok(()));
    }

    #[test]
    fn one_address_guessing_many_accounts_is_locked_out() {
        let throttle = Throttle::default();
        let now = Instant::now();
        for n in 0..=FREE_PER_ADDRESS {
            throttle.failed(&format!("user{n}"), "192.0.2.7", now);
        }
        assert!(throttle.check("someone-else", "192.0.2.7", now).is_err());
        assert_eq!(throttle.check("someone-else", "192.0.2.8", now), Ok(()));
    }

    #[test]
    fn success_clears_the_account_and_lockouts_are_capped() {
        let throttle = Throttle::default();
        let now = Instant::now();
        for _ in 0..100 {
            throttle.failed("carol", "a", now);
        }
        assert_eq!(throttle.check("carol", "b", now), Err(MAX_LOCK));
        throttle.succeeded("carol");
        assert_eq!(throttle.check("carol", "b", now), Ok(()));
    }
}
