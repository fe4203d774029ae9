//! Who may log in, and as whom: the [`Authenticator`] a deployment plugs in, and the
//! register of logged-in connections by user name that [`BrokerHandle::disconnect_user`]
//! closes.
//!
//! The configured user (`Config::user`, `Config::password`) is the server account and
//! is checked first, without the authenticator: servers log in even when the device
//! store is slow or down. Every other login is the authenticator's to answer.

use std::{
    collections::HashMap,
    future::Future,
    net::IpAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use protocol::policy::Account;
use tokio::sync::Notify;

use crate::{admission::Tally, vhost::ConnectionId};

/// Decides who a login other than the server's is. Plugged into [`crate::Config`] by
/// the deployment (Tether's server answers from its device store).
pub trait Authenticator: Send + Sync + 'static {
    /// Checks a login; `None` refuses it (403 ACCESS_REFUSED, as RabbitMQ refuses a bad
    /// password). Asynchronous because a check may be slow (a database, argon2): the
    /// connection waits for it within its `handshake_timeout`, the others go on.
    fn authenticate<'a>(
        &'a self,
        user: &'a str,
        password: &'a str,
        peer: IpAddr,
    ) -> Pin<Box<dyn Future<Output = Option<Account>> + Send + 'a>>;
}

/// Connections that logged in, by id, with their user name and the signal that closes
/// them.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    open: Mutex<HashMap<ConnectionId, (String, Arc<Notify>)>>,
    /// The open connections of each limited account (`AccountLimits::connections`).
    pub(crate) connections: Arc<Tally>,
}

impl Sessions {
    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<ConnectionId, (String, Arc<Notify>)>> {
        self.open
            .lock()
            .expect("no code panics while holding the sessions lock")
    }

    /// Registers a connection that logged in as `user`; it is forgotten when the
    /// returned [`Session`] drops. The `Notify` fires when it is to be closed.
    pub(crate) fn enter(self: &Arc<Self>, id: ConnectionId, user: &str) -> Session {
        let kick = Arc::new(Notify::new());
        self.open().insert(id, (user.to_owned(), kick.clone()));
        Session {
            sessions: self.clone(),
            id,
            kick,
        }
    }

    /// Tells every connection of `user` to close; how many there were.
    fn kick(&self, user: &str) -> usize {
        let open = self.open();
        let mut kicked = 0;
        for (name, kick) in open.values() {
            if name == user {
                // A stored permit: the connection sees it even if it is busy right now.
                kick.notify_one();
                kicked += 1;
            }
        }
        kicked
    }
}

/// One logged-in connection's entry in [`Sessions`], removed when dropped.
#[derive(Debug)]
pub(crate) struct Session {
    sessions: Arc<Sessions>,
    id: ConnectionId,
    /// Fires when the connection is to be closed.
    pub(crate) kick: Arc<Notify>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.sessions.open().remove(&self.id);
    }
}

/// What can be done to a serving broker from outside: [`crate::Broker::serve`] takes
/// the broker, so this is taken from it first ([`crate::Broker::handle`]). Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct BrokerHandle {
    pub(crate) sessions: Arc<Sessions>,
    /// The vhost's count of bytes held (`Config::max_bytes`).
    pub(crate) held: Arc<AtomicUsize>,
    /// Bytes in all connections' outboxes.
    pub(crate) outgoing: Arc<AtomicUsize>,
}

/// What the broker holds now ([`BrokerHandle::usage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of message bodies counted against `Config::max_bytes`: ready in queues,
    /// delivered and not yet settled, or waiting to be written.
    pub held_bytes: usize,
    /// Bytes waiting to be written to peers (or reserved for deliveries on their way),
    /// over all connections; each connection's at most `Config::outgoing_buffer` and
    /// one message, and a few frames.
    pub outgoing_bytes: usize,
    /// Connections logged in.
    pub connections: usize,
}

impl BrokerHandle {
    /// Closes every connection logged in as `user` with 320 CONNECTION_FORCED, RabbitMQ's
    /// answer to connections whose user is deleted (`user '<user>' is deleted`); each
    /// gets 500 ms for its close-ok, as at shutdown. Connections still logging in as
    /// `user` are not affected: the authenticator decides those. Returns how many
    /// connections were told.
    pub fn disconnect_user(&self, user: &str) -> usize {
        self.sessions.kick(user)
    }

    /// What the broker holds now: for monitoring, and for tests to see that its memory
    /// stays within its limits.
    pub fn usage(&self) -> Usage {
        Usage {
            held_bytes: self.held.load(Ordering::Relaxed),
            outgoing_bytes: self.outgoing.load(Ordering::Relaxed),
            connections: self.sessions.open().len(),
        }
    }
}
