//! Who gets a place. Connections still in the handshake and open connections are
//! counted apart, each within its own limit, so peers that never log in cannot take the
//! places of devices that did; and a handshake holds its place for `handshake_timeout`
//! at most (see `connection`), so stalled ones cannot keep new devices out for long.
//!
//! Within that, each device account may hold only so many connections, queues and
//! consumers at once (`Config::limits`): a [`Tally`] per kind counts them by user.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::Config;

/// The places of the broker: `max_handshakes` for connections logging in,
/// `max_connections` for connections past connection.open.
#[derive(Debug)]
pub(crate) struct Doorkeeper {
    handshakes: Arc<Semaphore>,
    connections: Arc<Semaphore>,
}

impl Doorkeeper {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            handshakes: Arc::new(Semaphore::new(config.max_handshakes)),
            connections: Arc::new(Semaphore::new(config.max_connections)),
        }
    }

    /// A place in the handshake for a new connection; or why it is turned away at once:
    /// every handshake place is taken, or every open connection's (it could not open).
    pub(crate) fn admit(&self) -> Result<Place, &'static str> {
        if self.connections.available_permits() == 0 {
            return Err("the open connections are at their limit");
        }
        let permit = self
            .handshakes
            .clone()
            .try_acquire_owned()
            .map_err(|_| "the handshakes under way are at their limit")?;
        Ok(Place {
            permit,
            connections: self.connections.clone(),
        })
    }
}

/// The place one connection holds, given back when it is dropped: a handshake's while
/// it logs in, an open connection's once it has opened.
#[derive(Debug)]
pub(crate) struct Place {
    permit: OwnedSemaphorePermit,
    connections: Arc<Semaphore>,
}

impl Place {
    /// At connection.open: trades the handshake's place for an open connection's.
    /// `false` if those were all taken in the meantime.
    pub(crate) fn open(&mut self) -> bool {
        match self.connections.clone().try_acquire_owned() {
            Ok(permit) => {
                // The handshake's place is given back as the old permit drops.
                self.permit = permit;
                true
            }
            Err(_) => false,
        }
    }
}

/// How many of one kind of thing (open connections, queues, consumers) each limited
/// account holds, each one counted by a [`Counted`] that gives its place back when it
/// is dropped, wherever that happens. Its lock is taken alone, or under the vhost's,
/// never the other way round.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    counts: Mutex<HashMap<String, usize>>,
}

impl Tally {
    fn counts(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        self.counts
            .lock()
            .expect("no code panics while holding a tally's lock")
    }

    /// One more for `user`, unless it holds `max` already.
    pub(crate) fn take(self: &Arc<Self>, user: &str, max: usize) -> Option<Counted> {
        let mut counts = self.counts();
        let count = counts.get(user).copied().unwrap_or(0);
        if count >= max {
            return None;
        }
        counts.insert(user.to_owned(), count + 1);
        Some(Counted {
            tally: self.clone(),
            user: user.to_owned(),
        })
    }

    /// How many `user` holds now.
    #[cfg(test)]
    pub(crate) fn count(&self, user: &str) -> usize {
        self.counts().get(user).copied().unwrap_or(0)
    }
}

/// One thing counted in a [`Tally`], uncounted when dropped.
#[derive(Debug)]
pub(crate) struct Counted {
    tally: Arc<Tally>,
    user: String,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut counts = self.tally.counts();
        if let Some(count) = counts.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

/// A limited account asking for one more of something: who, and how many it may hold.
#[derive(Debug, Clone, Copy)]
pub struct Quota<'a> {
    pub user: &'a str,
    pub max: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_counts_what_is_held_and_forgets_what_is_dropped() {
        let tally = Arc::new(Tally::default());
        let first = tally.take("dev-1", 2).expect("one");
        let second = tally.take("dev-1", 2).expect("two");
        assert!(tally.take("dev-1", 2).is_none(), "three is over the limit");
        let other = tally.take("dev-2", 2).expect("each user has its own count");
        drop(first);
        let again = tally.take("dev-1", 2).expect("a place was given back");
        drop((second, again, other));
        assert_eq!(tally.count("dev-1"), 0);
        assert!(
            tally.counts().is_empty(),
            "users with nothing are forgotten"
        );
    }
}
