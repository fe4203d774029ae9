//! Who gets a place. Connections still in the handshake and open connections are
//! counted apart, each within its own limit, so peers that never log in cannot take the
//! places of devices that did; and a handshake holds its place for `handshake_timeout`
//! at most (see `connection`), so stalled ones cannot keep new devices out for long.

use std::sync::Arc;

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
