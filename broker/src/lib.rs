//! Tether's embedded AMQP 0-9-1 broker: what Tether and ordinary clients (lapin, pika)
//! need, behaving as RabbitMQ does, for a single machine with nothing installed.
//! Nothing is persisted.
//!
//! - [`Config`] and [`Broker`]: bind, then [`Broker::serve`] until shutdown.
//! - `vhost`: exchanges, queues, bindings, consumers and routing; shared state behind
//!   one lock that is never held across an `.await`.
//! - `connection`: one client connection — handshake, channels, methods — with one
//!   reader and one writer task.

mod connection;
mod vhost;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::net::TcpListener;

use crate::vhost::Vhost;

/// How the broker listens and whom it lets in.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen; 127.0.0.1 unless told otherwise. Port 0 picks a free port.
    pub addr: SocketAddr,
    /// The one user allowed in, with PLAIN authentication.
    pub user: String,
    pub password: String,
    /// The largest frame accepted, in bytes (checked before buffering).
    pub frame_max: u32,
    /// Channels per connection.
    pub channel_max: u16,
    /// Heartbeat interval proposed to clients, in seconds (0: none).
    pub heartbeat: u16,
    /// Connections open at once; more are turned away.
    pub max_connections: usize,
    /// Bytes of message bodies all queues may hold together; beyond it publishes are
    /// refused (nacked under confirms).
    pub max_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 5673)),
            user: "guest".into(),
            password: "guest".into(),
            frame_max: 131_072,
            channel_max: 2_047,
            heartbeat: 60,
            max_connections: 4_096,
            max_bytes: 256 * 1024 * 1024,
        }
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
    config: Arc<Config>,
    vhost: Arc<Mutex<Vhost>>,
}

impl Broker {
    pub async fn bind(config: Config) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.addr).await?;
        let vhost = Arc::new(Mutex::new(Vhost::new(config.max_bytes)));
        Ok(Self {
            listener,
            config: Arc::new(config),
            vhost,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The URL a client on this machine connects with.
    pub fn url(&self) -> std::io::Result<String> {
        let addr = self.local_addr()?;
        Ok(format!(
            "amqp://{}:{}@{addr}/%2f",
            self.config.user, self.config.password
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

    /// Accepts connections until `shutdown` resolves.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut next_id: u64 = 0;
        let open = Arc::new(AtomicUsize::new(0));
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                accepted = self.listener.accept() => match accepted {
                    Ok((socket, peer)) => {
                        if open.load(Ordering::Relaxed) >= self.config.max_connections {
                            tracing::warn!(%peer, "turning a connection away: {} are open, the limit", self.config.max_connections);
                            drop(socket);
                            continue;
                        }
                        next_id += 1;
                        open.fetch_add(1, Ordering::Relaxed);
                        let (config, vhost, open) = (self.config.clone(), self.vhost.clone(), open.clone());
                        tokio::spawn(async move {
                            connection::serve(next_id, socket, peer, config, vhost).await;
                            open.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                    Err(error) => tracing::warn!("accept failed: {error}"),
                }
            }
        }
    }
}
