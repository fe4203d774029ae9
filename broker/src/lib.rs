//! Tether's embedded AMQP 0-9-1 broker: what Tether and ordinary clients (lapin, pika)
//! need, behaving as RabbitMQ does, for a single machine with nothing installed.
//! Nothing is persisted.
//!
//! - [`Config`] and [`Broker`]: bind, then [`Broker::serve`] until shutdown. Nobody
//!   gets further than the handshake without logging in: as the configured user (the
//!   server account) or, if [`Config::authenticator`] is set, as whoever it accepts
//!   (devices); each account may then do what `protocol::policy` allows it, checked
//!   where RabbitMQ checks. A handshake is dropped after `handshake_timeout`, and
//!   handshakes and open connections have places of their own (`admission`), so peers
//!   that never log in cannot lock devices out. Each device account may hold only so
//!   much at once ([`Config::limits`], [`AccountLimits`]): connections (refused at
//!   connection.open with RabbitMQ's 530 for a user's `max-connections`), channels per
//!   connection (the `channel_max` offered at tune; one more is RabbitMQ's 530 beyond a
//!   negotiated `channel_max`), queues (refused with 406, as RabbitMQ refuses beyond a
//!   vhost's `max-queues`) and consumers (406 as well); the server account is
//!   unlimited. [`Broker::handle`] gives a
//!   [`BrokerHandle`] to disconnect a user's connections while the broker serves, and
//!   to read what it holds ([`Usage`]).
//! - Memory is bounded. [`Config::max_bytes`] counts every message body the broker
//!   holds: ready in a queue, delivered and not yet acknowledged (until acked, rejected,
//!   or requeued, or until its channel or connection goes and it is requeued or
//!   dropped), and encoded, waiting to be written; publishes beyond it are nacked. Each
//!   connection's outbox is bounded by [`Config::outgoing_buffer`] (`outbox`): a
//!   consumer whose peer does not read is passed over, its messages staying in the
//!   queue, nothing more is read from that peer, and once its writer has been stuck for
//!   [`Config::stalled_writer_timeout`] the connection is dropped, as RabbitMQ drops a
//!   socket past its `send_timeout`. No vhost lock is held while any of that waits.
//!   Shutdown is graceful, as in RabbitMQ: the port is freed at once, every open
//!   connection is sent `connection.close` 320 (CONNECTION_FORCED) and given 500 ms for
//!   its close-ok, connections still in the handshake are dropped, and `serve` returns
//!   once all of them have ended (within a second).
//! - `vhost`: exchanges, queues, bindings, consumers and routing; shared state behind
//!   one lock that is never held across an `.await`.
//! - `admission`: the places of handshakes and of open connections, counted apart, and
//!   the tallies of what each limited account holds.
//! - `outbox`: each connection's bytes waiting to be written, bounded, and the consumers
//!   passed over while it is full.
//! - `pipe`: the queues to a connection's writer and from the vhost to a connection,
//!   which hold no memory to speak of while empty (an idle device's connection).
//! - `accounts`: the [`Authenticator`] and the register of logged-in connections that
//!   [`BrokerHandle::disconnect_user`] closes.
//! - `connection`: one client connection — handshake, channels, methods — with one
//!   reader and one writer task; the writer gives up on a peer that takes nothing for
//!   `stalled_writer_timeout`.

mod accounts;
mod admission;
mod connection;
pub mod open_files;
mod outbox;
mod pipe;
mod vhost;

/// The vhost without a network in the way, for `benches/topic.rs` to time routing as a
/// publish does it under the vhost's lock. Not part of the broker's API.
#[doc(hidden)]
pub mod bench {
    pub use crate::{
        admission::Quota,
        vhost::{QueueDeclare, Vhost},
    };
}

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::AtomicUsize},
    time::Duration,
};

use tokio::{net::TcpListener, sync::watch, task::JoinSet};

pub use crate::accounts::{Authenticator, BrokerHandle, Usage};
use crate::{accounts::Sessions, admission::Doorkeeper, vhost::Vhost};

/// How long [`Broker::serve`] waits for its connections at shutdown before ending the
/// ones left. Each bounds its own goodbye well within it (see `connection`).
const SHUTDOWN_WITHIN: Duration = Duration::from_secs(1);

/// How the broker listens and whom it lets in.
#[derive(Clone)]
pub struct Config {
    /// Where to listen; 127.0.0.1 unless told otherwise. Port 0 picks a free port.
    pub addr: SocketAddr,
    /// The server account's user name and password (PLAIN), checked before anything
    /// else. As in RabbitMQ, `guest` may log in from this machine only.
    pub user: String,
    pub password: String,
    /// Who else may log in (devices), and as which account. `None`: nobody but `user`.
    pub authenticator: Option<Arc<dyn Authenticator>>,
    /// The largest frame accepted, in bytes (checked before buffering).
    pub frame_max: u32,
    /// Channels per connection.
    pub channel_max: u16,
    /// Heartbeat interval proposed to clients, in seconds (0: none). A peer silent for
    /// two intervals of the heartbeat it settled on is dropped.
    pub heartbeat: u16,
    /// How long a client has from connecting to connection.open; a handshake not over
    /// by then is dropped without a word, as with RabbitMQ's `handshake_timeout` (10 s),
    /// so a peer that never logs in holds its place that long at most.
    pub handshake_timeout: Duration,
    /// Connections in the handshake at once; more are turned away. Counted apart from
    /// `max_connections`, so they cannot take the places of devices that logged in.
    pub max_handshakes: usize,
    /// Connections past connection.open at once. More are turned away as they connect,
    /// or, if the last place went while they logged in, refused at connection.open with
    /// 530 (NOT_ALLOWED) as RabbitMQ refuses beyond its `connection_max`.
    pub max_connections: usize,
    /// The largest message body accepted, in bytes. A content header announcing more is
    /// refused with channel.close 406 (PRECONDITION_FAILED), RabbitMQ's answer beyond its
    /// `max_message_size` (128 MiB by default), but at once: RabbitMQ 3.10 takes in the
    /// whole body first, this broker none of it.
    pub max_message_size: u64,
    /// Bytes of message bodies the broker may hold together: ready in queues, delivered
    /// and not yet acknowledged, or on their way to a consumer's socket. Beyond it
    /// publishes are refused (nacked under confirms).
    pub max_bytes: usize,
    /// What each device account may hold at once; the server account is unlimited.
    pub limits: AccountLimits,
    /// Bytes each connection may have waiting to be written to its peer. A consumer whose
    /// connection has this much waiting gets no more deliveries (they stay in the queue,
    /// as with RabbitMQ's credit flow), and nothing more is read from that peer until
    /// some of it is written.
    pub outgoing_buffer: usize,
    /// A connection whose peer has not taken a single frame from it for this long is
    /// dropped, as RabbitMQ drops one whose socket send blocks beyond its `send_timeout`;
    /// what it had been delivered goes back to its queues.
    pub stalled_writer_timeout: Duration,
}

/// What a device account may hold at once, across all its connections (each limit a
/// device's normal use, one connection with a channel or two, its inbox and one consumer,
/// with room to spare). Refused beyond it as RabbitMQ refuses beyond its own limits (see
/// `connection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountLimits {
    /// Open connections (RabbitMQ's user limit `max-connections`).
    pub connections: usize,
    /// Channels on each connection: the `channel_max` the broker proposes to a device.
    pub channels_per_connection: u16,
    /// Queues it declared that exist now (RabbitMQ's `max-queues`, per account here).
    pub queues: usize,
    /// Consumers on all its connections.
    pub consumers: usize,
}

impl Default for AccountLimits {
    fn default() -> Self {
        Self {
            connections: 4,
            channels_per_connection: 8,
            queues: 4,
            consumers: 4,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 5673)),
            user: "guest".into(),
            password: "guest".into(),
            authenticator: None,
            frame_max: 131_072,
            channel_max: 2_047,
            heartbeat: 60,
            handshake_timeout: Duration::from_secs(10),
            // A handshake takes milliseconds, a device's first login an argon2 check
            // (tens of ms, a few at once): this is what a few cores check within
            // `handshake_timeout`, and room for a whole fleet reconnecting.
            max_handshakes: 1_024,
            // 10,000 devices and room to spare. Each needs a file descriptor: `bind`
            // raises the process's soft limit to its hard one, and warns if that is
            // still short.
            max_connections: 16_384,
            max_message_size: 128 * 1024 * 1024,
            max_bytes: 256 * 1024 * 1024,
            limits: AccountLimits::default(),
            outgoing_buffer: 1024 * 1024,
            stalled_writer_timeout: Duration::from_secs(30),
        }
    }
}

/// Everything but the password, which does not belong in logs.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("addr", &self.addr)
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .field("authenticator", &self.authenticator.as_ref().map(|_| ".."))
            .field("frame_max", &self.frame_max)
            .field("channel_max", &self.channel_max)
            .field("heartbeat", &self.heartbeat)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_handshakes", &self.max_handshakes)
            .field("max_connections", &self.max_connections)
            .field("max_message_size", &self.max_message_size)
            .field("max_bytes", &self.max_bytes)
            .field("limits", &self.limits)
            .field("outgoing_buffer", &self.outgoing_buffer)
            .field("stalled_writer_timeout", &self.stalled_writer_timeout)
            .finish()
    }
}

impl Config {
    /// The defaults, on a free port of 127.0.0.1: for tests and benchmarks.
    pub fn on_free_port() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Self::default()
        }
    }
}

/// A bound broker, ready to serve.
#[derive(Debug)]
pub struct Broker {
    listener: TcpListener,
    shared: Shared,
}

/// What every connection of a broker shares.
#[derive(Debug, Clone)]
struct Shared {
    config: Arc<Config>,
    vhost: Arc<Mutex<Vhost>>,
    sessions: Arc<Sessions>,
    /// Bytes in all connections' outboxes.
    outgoing: Arc<AtomicUsize>,
}

impl Broker {
    /// Binds the listener. Every connection holds a file descriptor, so this also
    /// raises the process's soft limit on open files to its hard limit, and warns when
    /// even that is short of what `max_connections` and `max_handshakes` need
    /// ([`open_files::raise`]).
    pub async fn bind(config: Config) -> std::io::Result<Self> {
        open_files::raise(config.max_connections.saturating_add(config.max_handshakes));
        let listener = TcpListener::bind(config.addr).await?;
        let vhost = Arc::new(Mutex::new(Vhost::new(config.max_bytes)));
        let shared = Shared {
            config: Arc::new(config),
            vhost,
            sessions: Arc::default(),
            outgoing: Arc::default(),
        };
        Ok(Self { listener, shared })
    }

    /// A handle to act on the broker while it serves (see [`BrokerHandle`]).
    pub fn handle(&self) -> BrokerHandle {
        let held = self
            .shared
            .vhost
            .lock()
            .expect("no code panics while holding the vhost lock")
            .held();
        BrokerHandle {
            sessions: self.shared.sessions.clone(),
            held,
            outgoing: self.shared.outgoing.clone(),
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The URL a client on this machine connects with.
    pub fn url(&self) -> std::io::Result<String> {
        let addr = self.local_addr()?;
        Ok(format!(
            "amqp://{}:{}@{addr}/%2f",
            self.shared.config.user, self.shared.config.password
        ))
    }

    /// Binds and serves in the background, for as long as the current tokio runtime
    /// runs; returns the URL a client on this machine connects with.
    pub async fn start(config: Config) -> std::io::Result<String> {
        let broker = Self::bind(config).await?;
        let url = broker.url()?;
        tokio::spawn(broker.serve(std::future::pending()));
        Ok(url)
    }

    /// Accepts connections until `shutdown` resolves, then shuts down as RabbitMQ does:
    /// stops listening (the port is free again), sends every open connection
    /// `connection.close` 320 (CONNECTION_FORCED), waits for each client's close-ok
    /// (500 ms at most; handshakes under way are dropped), and returns once every
    /// connection has ended, within a second in any case. Dropping the returned future
    /// instead drops the connections without a goodbye.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let Self { listener, shared } = self;
        tokio::pin!(shutdown);
        let doorkeeper = Doorkeeper::new(&shared.config);
        // `true` once shutting down; every connection watches it.
        let (stop, stopping) = watch::channel(false);
        let mut connections = JoinSet::new();
        let mut next_id: u64 = 0;
        // A fleet beyond the limits knocks thousands of times a second: one line now
        // and then says how many were turned away, not one line each.
        let mut turned_away = Summary::default();
        let mut failed_accepts = Summary::default();
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((socket, peer)) => {
                        // Connections that ended since the last accept are forgotten.
                        while let Some(ended) = connections.try_join_next() {
                            report(ended);
                        }
                        let place = match doorkeeper.admit() {
                            Ok(place) => place,
                            Err(why) => {
                                if let Some(count) = turned_away.add() {
                                    tracing::warn!(%peer, "turning connections away: {why} (max_connections {}, max_handshakes {}); {count} turned away since the last report", shared.config.max_connections, shared.config.max_handshakes);
                                }
                                continue;
                            }
                        };
                        next_id += 1;
                        let (shared, stopping) = (shared.clone(), stopping.clone());
                        connections.spawn(connection::serve(next_id, socket, peer, place, shared, stopping));
                    }
                    Err(error) => {
                        if let Some(count) = failed_accepts.add() {
                            tracing::warn!("accept failed: {error}; {count} failed since the last report{}", if error.raw_os_error() == Some(24) { " (out of file descriptors: raise the open files limit, or lower max_connections)" } else { "" });
                        }
                        // Out of descriptors (EMFILE), accept fails at once as long as the
                        // peer waits in the backlog: pause rather than spin.
                        tokio::select! {
                            () = &mut shutdown => break,
                            () = tokio::time::sleep(ACCEPT_PAUSE) => {}
                        }
                    }
                }
            }
        }
        drop(listener);
        let _ = stop.send(true);
        while let Some(ended) = connections.try_join_next() {
            report(ended);
        }
        let open = connections.len();
        let all_ended = async {
            while let Some(ended) = connections.join_next().await {
                report(ended);
            }
        };
        if tokio::time::timeout(SHUTDOWN_WITHIN, all_ended)
            .await
            .is_err()
        {
            tracing::warn!(
                "{} connections did not close within {SHUTDOWN_WITHIN:?}; dropping them",
                connections.len()
            );
            connections.shutdown().await;
        }
        tracing::info!("broker stopped; {open} connections closed");
    }
}

/// How long the accept loop pauses after accept failed (out of file descriptors, say).
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// Counts events that would each deserve a log line, and says when to write one: for
/// the first, then at most once every [`Summary::EVERY`], with how many happened.
#[derive(Debug, Default)]
struct Summary {
    count: u64,
    last: Option<tokio::time::Instant>,
}

impl Summary {
    const EVERY: Duration = Duration::from_secs(10);

    /// Counts one; `Some(count since the last report)` when it is time to write one.
    fn add(&mut self) -> Option<u64> {
        self.count += 1;
        let now = tokio::time::Instant::now();
        if self.last.is_some_and(|last| now < last + Self::EVERY) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

/// Logs a connection task that panicked.
fn report(ended: Result<(), tokio::task::JoinError>) {
    if let Err(error) = ended {
        tracing::error!("a connection task failed: {error}");
    }
}
