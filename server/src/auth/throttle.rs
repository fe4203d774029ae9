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
    /// Whether an attempt during the current lock-out was already reported.
    reported: bool,
}

/// A login refused because its account or address is locked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locked {
    /// How long until it may try again.
    pub wait: Duration,
    /// The first attempt refused in this lock-out: worth an audit entry; the rest of a
    /// flood is not (each would be a row written for an attacker).
    pub first: bool,
}

impl Throttle {
    /// `Err` if this account or this address is locked out now.
    pub fn check(&self, account: &str, address: &str, now: Instant) -> Result<(), Locked> {
        let mut entries = self.lock();
        let mut locked: Option<Locked> = None;
        for key in [account_key(account), address_key(address)] {
            let Some(failures) = entries.get_mut(&key) else {
                continue;
            };
            let Some(until) = failures.locked_until.filter(|until| *until > now) else {
                continue;
            };
            let first = !failures.reported;
            failures.reported = true;
            let wait = until - now;
            locked = Some(match locked {
                Some(other) => Locked {
                    wait: wait.max(other.wait),
                    first: first || other.first,
                },
                None => Locked { wait, first },
            });
        }
        locked.map_or(Ok(()), Err)
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
                reported: false,
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
                failures.reported = false;
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

/// Names are at most 64 characters: a longer one (no account has it) is cut, so that
/// a flood of huge names costs little memory.
fn account_key(account: &str) -> String {
    let account: String = account.chars().take(64).collect();
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
            throttle.check("alice", "10.0.0.2", t0).map_err(|l| l.wait),
            Err(Duration::from_secs(1))
        );
        // From any address, and whatever the case of the name.
        assert!(throttle.check("ALICE", "10.9.9.9", t0).is_err());
        assert_eq!(throttle.check("bob", "10.0.0.2", t0), Ok(()));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(throttle.check("alice", "10.0.0.1", t1), Ok(()));
        throttle.failed("alice", "10.0.0.1", t1);
        assert_eq!(
            throttle.check("alice", "10.0.0.1", t1).map_err(|l| l.wait),
            Err(Duration::from_secs(2))
        );
        // A quiet quarter of an hour forgets.
        let later = t1 + MAX_LOCK;
        throttle.failed("alice", "10.0.0.1", later);
        assert_eq!(throttle.check("alice", "10.0.0.1", later), Ok(()));
    }

    #[test]
    fn only_the_first_refusal_of_a_lock_out_is_worth_reporting() {
        let throttle = Throttle::default();
        let now = Instant::now();
        for _ in 0..=FREE_PER_ACCOUNT {
            throttle.failed("dave", "a", now);
        }
        assert_eq!(
            throttle.check("dave", "a", now).map_err(|l| l.first),
            Err(true)
        );
        assert_eq!(
            throttle.check("dave", "a", now).map_err(|l| l.first),
            Err(false)
        );
        // A new lock-out is reported again.
        let later = now + Duration::from_secs(2);
        throttle.failed("dave", "a", later);
        assert_eq!(
            throttle.check("dave", "a", later).map_err(|l| l.first),
            Err(true)
        );
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
        assert_eq!(
            throttle.check("carol", "b", now).map_err(|l| l.wait),
            Err(MAX_LOCK)
        );
        throttle.succeeded("carol");
        assert_eq!(throttle.check("carol", "b", now), Ok(()));
    }
}
