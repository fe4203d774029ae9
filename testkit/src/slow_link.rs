//! A slow, lossy network link for tests: a TCP proxy on `127.0.0.1:0` in front of an
//! upstream address (a broker), which shapes each direction of every connection
//! through it independently, like a GPRS modem's link would.
//!
//! # The model
//!
//! Each direction carries what it reads as segments of at most [`SEGMENT`] bytes
//! (one TCP segment's worth), stamped when they arrive at the proxy. A segment:
//!
//! - **waits for the wire** (bandwidth): it is sent once the segments before it
//!   have been, and takes `len / bytes_per_sec` to send. This is a token bucket
//!   that holds no more than the segment being sent (no bursts above the rate);
//! - **travels** (latency): it is delivered no earlier than when it was sent plus
//!   the one-way `latency` (half the round trip);
//! - **may be lost** (loss): TCP never loses bytes, it resends them, so a loss is
//!   modelled as TCP experiences it. With probability `loss` (a seeded
//!   [`fastrand::Rng`], so a run can be repeated) a segment is lost once: it is
//!   resent after the retransmission timeout `rto`, using the wire again for its
//!   length, and arrives that much later. Everything behind it waits for it
//!   (head-of-line blocking: TCP hands bytes over in order), so delivery times
//!   never go backwards and the order is kept.
//!
//! What is not modelled: TCP's congestion window (after a loss a real sender also
//! slows down for a while), losses of the resent segment, and the acknowledgements'
//! own use of the reverse direction. The proxy reads from its sockets as fast as
//! the queue of a direction ([`QUEUE`] segments, a deep modem buffer) lets it, so a
//! sender sees back-pressure only once that queue is full.
//!
//! The link counts the bytes it reads in each direction ([`SlowLink::traffic`]):
//! what the device and the broker put on the wire, whenever it is delivered.
//!
//! Every connection runs in tasks of its own; they all end when the link is
//! dropped (and [`SlowLink::sever`] ends those open at the time).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{mpsc, watch},
    time::Instant,
};

/// The most a direction carries as one segment (a TCP segment on a 1500-byte MTU).
pub const SEGMENT: usize = 1460;

/// How many segments a direction holds before the proxy stops reading its sender.
pub const QUEUE: usize = 256;

/// How one direction of the link behaves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape {
    /// Bandwidth in bytes per second (40 kbit/s is 5,000).
    pub bytes_per_sec: u64,
    /// One-way delay: half the round trip.
    pub latency: Duration,
    /// The probability that a segment is lost (and resent after `rto`), 0 to 1.
    pub loss: f64,
    /// The retransmission timeout: how much later a lost segment arrives.
    pub rto: Duration,
}

impl Shape {
    /// A GPRS-like direction: 40 kbit/s (5,000 B/s), 250 ms one way (500 ms round
    /// trip), 2 % of segments lost and resent after 1 s.
    pub fn gprs() -> Self {
        Self {
            bytes_per_sec: 5_000,
            latency: Duration::from_millis(250),
            loss: 0.02,
            rto: Duration::from_secs(1),
        }
    }

    /// This shape with another loss probability.
    #[must_use]
    pub fn with_loss(self, loss: f64) -> Self {
        Self { loss, ..self }
    }

    /// How long `len` bytes take on the wire.
    fn wire_time(&self, len: usize) -> Duration {
        let rate = self.bytes_per_sec.max(1) as f64;
        Duration::from_secs_f64(len as f64 / rate)
    }
}

/// The bytes a link has carried (read) in each direction, over all its connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// From the client (the device) towards the upstream (the broker).
    pub up: u64,
    /// From the upstream towards the client.
    pub down: u64,
    /// Connections accepted so far.
    pub connections: u64,
}

impl std::ops::Sub for Traffic {
    type Output = Self;

    fn sub(self, earlier: Self) -> Self {
        Self {
            up: self.up - earlier.up,
            down: self.down - earlier.down,
            connections: self.connections - earlier.connections,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    up: AtomicU64,
    down: AtomicU64,
    connections: AtomicU64,
}

/// A shaping TCP proxy; see the [module](self) for its model.
#[derive(Debug)]
pub struct SlowLink {
    address: SocketAddr,
    counters: Arc<Counters>,
    /// Bumped by [`SlowLink::sever`]; closed (dropped) with the link, which ends
    /// every task.
    generation: watch::Sender<u64>,
    accept: tokio::task::JoinHandle<()>,
}

impl SlowLink {
    /// A link to `upstream`, shaped `up` (client → upstream) and `down` (upstream →
    /// client), losing segments as `seed` says. Must be called within a tokio
    /// runtime, whose tasks carry the connections.
    ///
    /// # Panics
    /// If no port is free on 127.0.0.1.
    pub async fn start(upstream: SocketAddr, up: Shape, down: Shape, seed: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port on 127.0.0.1");
        let address = listener.local_addr().expect("a bound listener's address");
        let counters = Arc::new(Counters::default());
        let (generation, _) = watch::channel(0);
        let accept = tokio::spawn(accept_loop(
            listener,
            upstream,
            (up, down),
            fastrand::Rng::with_seed(seed),
            counters.clone(),
            generation.subscribe(),
        ));
        Self {
            address,
            counters,
            generation,
            accept,
        }
    }

    /// A link to the broker of `broker_url` (host and port; `localhost` is 127.0.0.1),
    /// shaped alike both ways.
    ///
    /// # Panics
    /// If the URL names no host and port this machine resolves.
    pub async fn to_broker(broker_url: &str, shape: Shape, seed: u64) -> Self {
        let (_, host_port, _) = split_url(broker_url);
        let upstream = tokio::net::lookup_host(host_port)
            .await
            .ok()
            .and_then(|mut found| found.next())
            .unwrap_or_else(|| panic!("no address for {host_port}"));
        Self::start(upstream, shape, shape, seed).await
    }

    /// Where clients connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `broker_url` (an `amqp://user:password@host:port/vhost` URL) with its host and
    /// port replaced by this link's, credentials and the rest kept.
    pub fn url(&self, broker_url: &str) -> String {
        let (before, _, after) = split_url(broker_url);
        format!("{before}{}{after}", self.address)
    }

    /// The bytes carried so far.
    pub fn traffic(&self) -> Traffic {
        Traffic {
            up: self.counters.up.load(Ordering::Relaxed),
            down: self.counters.down.load(Ordering::Relaxed),
            connections: self.counters.connections.load(Ordering::Relaxed),
        }
    }

    /// Cuts every connection open now, as when the radio drops out; new
    /// connections are accepted as before.
    pub fn sever(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        // Dropping `generation` (just after this) closes every connection's
        // receiver, which ends its tasks; the accept loop ends here.
        self.accept.abort();
    }
}

/// `(scheme://userinfo@, host:port, /vhost?query)` of a URL.
fn split_url(url: &str) -> (&str, &str, &str) {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[authority_start..];
    let host_start = authority_start + rest.rfind('@').map_or(0, |i| i + 1);
    let host_rest = &url[host_start..];
    let host_end = host_start + host_rest.find(['/', '?']).unwrap_or(host_rest.len());
    (
        &url[..host_start],
        &url[host_start..host_end],
        &url[host_end..],
    )
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    (up, down): (Shape, Shape),
    mut rng: fastrand::Rng,
    counters: Arc<Counters>,
    generation: watch::Receiver<u64>,
) {
    while let Ok((client, _)) = listener.accept().await {
        counters.connections.fetch_add(1, Ordering::Relaxed);
        let seeds = (rng.u64(..), rng.u64(..));
        let counters = counters.clone();
        let mut generation = generation.clone();
        // Only severs from now on end this connection.
        generation.borrow_and_update();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return; // Dropping the client closes it, as a refused connection would.
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            connection(client, server, (up, down), seeds, counters, generation).await;
        });
    }
}

/// Carries one connection until both directions have ended, the link is severed
/// or the link is dropped.
async fn connection(
    client: TcpStream,
    server: TcpStream,
    (up, down): (Shape, Shape),
    (up_seed, down_seed): (u64, u64),
    counters: Arc<Counters>,
    mut generation: watch::Receiver<u64>,
) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let upward = direction(
        client_read,
        server_write,
        up,
        fastrand::Rng::with_seed(up_seed),
        Counter(counters.clone(), true),
    );
    let downward = direction(
        server_read,
        client_write,
        down,
        fastrand::Rng::with_seed(down_seed),
        Counter(counters, false),
    );
    tokio::select! {
        _ = async { tokio::join!(upward, downward) } => {}
        // A sever (the generation changes) or the link dropped (the sender closes).
        _ = generation.changed() => {}
    }
}

struct Counter(Arc<Counters>, bool);

impl Counter {
    fn add(&self, bytes: usize) {
        let counter = if self.1 { &self.0.up } else { &self.0.down };
        counter.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// One direction: a reader that stamps each segment with when it is due, and a
/// writer that delivers each at that time. Ends when the sender closes (passing the
/// close on once everything before it is delivered) or either socket fails.
async fn direction(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shape: Shape,
    mut rng: fastrand::Rng,
    counter: Counter,
) {
    // `None` is the sender's end of stream.
    let (queue, mut due) = mpsc::channel::<(Instant, Option<Vec<u8>>)>(QUEUE);
    let reader = async move {
        let mut wire_free = Instant::now();
        let mut last_due = Instant::now();
        let mut buffer = vec![0; SEGMENT];
        loop {
            let read = from.read(&mut buffer).await.unwrap_or(0);
            let now = Instant::now();
            if read == 0 {
                let _ = queue.send((last_due.max(now), None)).await;
                return;
            }
            counter.add(read);
            let sent = wire_free.max(now) + shape.wire_time(read);
            wire_free = sent;
            let mut arrives = sent + shape.latency;
            if shape.loss > 0.0 && rng.f64() < shape.loss {
                // Lost once: resent after the timeout, using the wire again.
                let resent = (sent + shape.rto).max(wire_free) + shape.wire_time(read);
                wire_free = resent;
                arrives = resent + shape.latency;
            }
            // In order: nothing overtakes a segment that is still on its way.
            last_due = arrives.max(last_due);
            if queue
                .send((last_due, Some(buffer[..read].to_vec())))
                .await
                .is_err()
            {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((at, segment)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            let Some(segment) = segment else {
                let _ = to.shutdown().await;
                return;
            };
            if to.write_all(&segment).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_gets_the_links_host_and_port() {
        assert_eq!(
            split_url("amqp://dev-1:abc@127.0.0.1:5672/%2f?heartbeat=10"),
            ("amqp://dev-1:abc@", "127.0.0.1:5672", "/%2f?heartbeat=10")
        );
        assert_eq!(
            split_url("amqp://localhost:5672"),
            ("amqp://", "localhost:5672", "")
        );
    }

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = socket.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        address
    }

    #[tokio::test]
    async fn bytes_come_back_in_order_no_sooner_than_the_link_allows() {
        let shape = Shape {
            bytes_per_sec: 20_000,
            latency: Duration::from_millis(100),
            loss: 0.3,
            rto: Duration::from_millis(200),
        };
        let link = SlowLink::start(echo_server().await, shape, shape, 7).await;
        let mut socket = TcpStream::connect(link.address()).await.unwrap();
        let sent: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let started = Instant::now();
        let (mut read, mut write) = socket.split();
        let writing = async {
            write.write_all(&sent).await.unwrap();
        };
        let mut received = vec![0; sent.len()];
        let reading = async {
            read.read_exact(&mut received).await.unwrap();
        };
        tokio::join!(writing, reading);
        assert_eq!(received, sent);
        // 20,000 bytes at 20,000 B/s each way (pipelined), plus a round trip.
        assert!(started.elapsed() >= Duration::from_millis(1_200));
        let traffic = link.traffic();
        assert_eq!(
            (traffic.up, traffic.down, traffic.connections),
            (20_000, 20_000, 1)
        );
    }

    #[tokio::test]
    async fn severing_or_dropping_the_link_closes_its_connections() {
        let shape = Shape {
            bytes_per_sec: 1_000_000,
            latency: Duration::from_millis(1),
            loss: 0.0,
            rto: Duration::from_secs(1),
        };
        let link = SlowLink::start(echo_server().await, shape, shape, 1).await;
        let mut socket = TcpStream::connect(link.address()).await.unwrap();
        socket.write_all(b"ping").await.unwrap();
        let mut reply = [0; 4];
        socket.read_exact(&mut reply).await.unwrap();
        link.sever();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut rest))
            .await
            .expect("the severed connection closes");
        assert!(closed.is_err() || rest.is_empty());

        let mut again = TcpStream::connect(link.address()).await.unwrap();
        again.write_all(b"pong").await.unwrap();
        again.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"pong");

        // Dropping the link ends its connections' tasks, which closes their sockets.
        drop(link);
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), again.read_to_end(&mut rest))
            .await
            .expect("the dropped link's connection closes");
        assert!(closed.is_err() || rest.is_empty());
    }
}
