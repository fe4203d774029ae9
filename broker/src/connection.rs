//! One client connection: the AMQP handshake, channels, and the methods Tether and
//! ordinary clients use. One reader (this task) and one writer task; the vhost lock is
//! taken for each operation and released before anything awaits.
//!
//! - here: the reader loop (frames in, paused while the outbox is full; deliveries and
//!   heartbeats out; the handshake's deadline; consumers passed over dispatched again
//!   once the outbox has room), the writer task (which gives up on a peer that takes
//!   nothing for `stalled_writer_timeout`), the connection's state, and closing the
//!   connection, also when the broker shuts down.
//! - `dispatch`: frames screened, parsed, and sent on, one short match from each AMQP
//!   method to its handler.
//! - `handshake`: the connection class: protocol header, start, PLAIN, tune, open, close,
//!   each only in its turn, and waiting for the close-ok to the broker's own close.
//! - `login`: the credentials: the server account, or the authenticator's answer.
//! - `access`: the permission checks of `protocol::policy`, with RabbitMQ's refusals.
//! - `channel`: the channel class (open, close, flow) and closing a channel on an error.
//! - `exchange` and `queue`: exchange.* and queue.* methods, answered from the vhost.
//! - `publish`: basic.publish, content reassembly, mandatory returns, confirms.
//! - `delivery`: basic.qos, consume, cancel, get, deliveries, ack, nack, reject, recover.
//! - `transaction`: tx.select, commit, rollback.

mod access;
mod channel;
mod delivery;
mod dispatch;
mod exchange;
mod handshake;
mod login;
mod publish;
mod queue;
mod transaction;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, atomic::AtomicUsize},
    time::Duration,
};

use amq_protocol::{
    frame::{AMQPContentHeader, AMQPFrame, gen_frame},
    protocol::{AMQPClass, BasicProperties, basic, basic::AMQPMethod as BasicMethod, connection},
};
use protocol::policy::Account;
use tokio::{
    io::AsyncWriteExt,
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::watch,
    task::JoinHandle,
    time::{Instant, Interval},
};

use crate::{
    AccountLimits, Config, Shared,
    accounts::{Session, Sessions},
    admission::{Counted, Place, Quota},
    outbox::Outbox,
    pipe,
    vhost::{Charge, ConnectionId, Message, Outbound, Vhost},
};
use handshake::{SILENT_CLOSE_DELAY, Stage};
use login::PendingLogin;

const NOT_IMPLEMENTED: u16 = 540;
const FRAME_ERROR: u16 = 501;
const COMMAND_INVALID: u16 = 503;
const CHANNEL_ERROR: u16 = 504;
const UNEXPECTED_FRAME: u16 = 505;
const NOT_ALLOWED: u16 = 530;
const ACCESS_REFUSED: u16 = 403;
const NO_ROUTE: u16 = 312;
const CONNECTION_FORCED: u16 = 320;

/// The largest frame before tune-ok, as the spec and RabbitMQ have it: a peer that has
/// not logged in cannot make the broker buffer more than this.
const FRAME_MIN_SIZE: u32 = 4_096;
/// How long a connection waits for the client's close-ok to the broker's shutdown
/// close before dropping it.
const CLOSE_OK_WITHIN: Duration = Duration::from_millis(500);
/// How long, once the broker is stopping, the writer may take to send what is left.
const FLUSH_WITHIN: Duration = Duration::from_millis(200);

/// Why a connection's reader loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The connection closed, failed, or was dropped.
    Closed,
    /// The broker is stopping.
    Shutdown,
    /// Its user was disconnected (`BrokerHandle::disconnect_user`).
    Kicked,
}

/// Serves one connection until it closes, or until `stopping` turns true or its user is
/// disconnected: then an open connection is closed with 320 (CONNECTION_FORCED) and one
/// still in the handshake is dropped, all within `CLOSE_OK_WITHIN` + `FLUSH_WITHIN`. A
/// handshake not over within `handshake_timeout` of connecting is dropped without a
/// word, as RabbitMQ drops it; one that failed, after `SILENT_CLOSE_DELAY`. `place` is
/// given back as it ends.
pub(crate) async fn serve(
    id: ConnectionId,
    socket: TcpStream,
    peer: SocketAddr,
    place: Place,
    shared: Shared,
    mut stopping: watch::Receiver<bool>,
) {
    let Shared {
        config,
        vhost,
        sessions,
        outgoing: all_outgoing,
    } = shared;
    let _ = socket.set_nodelay(true);
    let deadline = Instant::now() + config.handshake_timeout;
    let (mut reader, writer) = socket.into_split();
    let outbox = Arc::new(Outbox::new(config.outgoing_buffer, all_outgoing));
    let (out, outgoing) = pipe::pipe::<Outgoing>();
    let writer_task = tokio::spawn(write(
        writer,
        outgoing,
        outbox.clone(),
        config.stalled_writer_timeout,
    ));

    let header = tokio::select! {
        header = handshake::protocol_header(&mut reader, deadline) => header,
        () = stopped(&mut stopping) => None,
    };
    if header != Some(true) {
        if header == Some(false) {
            // As the spec says: answer with the header we speak, then close.
            let bytes = handshake::PROTOCOL_HEADER.to_vec();
            outbox.add(bytes.len());
            let _ = out.send(Outgoing::new(bytes));
        }
        drop(out);
        finish_writing(writer_task, &mut stopping).await;
        return;
    }
    let (deliver, mut deliveries) = pipe::pipe();
    let held = vhost
        .lock()
        .expect("no code panics while holding the vhost lock")
        .held();
    let mut conn = Connection {
        id,
        peer,
        config,
        vhost,
        sessions,
        out,
        outbox,
        held,
        deliver,
        place,
        frame_max: FRAME_MIN_SIZE,
        channel_max: 0,
        heartbeat: 0,
        stage: Stage::Starting,
        handshake_failed: false,
        pending_login: None,
        user: String::new(),
        account: None,
        session: None,
        counted: None,
        channels: HashMap::new(),
        closing: false,
    };
    conn.send_start();

    // Holds memory only while it holds bytes (see `read_some`).
    let mut buffer: Vec<u8> = Vec::new();
    let end = conn
        .run(
            &mut reader,
            &mut buffer,
            &mut deliveries,
            &mut stopping,
            deadline,
        )
        .await;
    // The broker is stopping, or the user was disconnected: an open connection is told
    // so, with RabbitMQ's texts; one still in the handshake is simply dropped.
    let forced = match end {
        End::Closed => None,
        End::Shutdown => Some(
            "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
                .to_owned(),
        ),
        End::Kicked => Some(format!(
            "CONNECTION_FORCED - user '{}' is deleted",
            conn.user
        )),
    };
    if let Some(text) = forced.filter(|_| conn.is_open()) {
        conn.close(CONNECTION_FORCED, &text, 0, 0);
        if !conn
            .await_close_ok(&mut reader, &mut buffer, CLOSE_OK_WITHIN)
            .await
        {
            tracing::debug!(%peer, "no close-ok to the forced close; dropping the connection");
        }
    }
    if conn.handshake_failed && end == End::Closed {
        // Nothing more is read; the client waits before it can try again.
        tokio::select! {
            () = tokio::time::sleep(SILENT_CLOSE_DELAY) => {}
            () = stopped(&mut stopping) => {}
        }
    }
    conn.close_all();
    // Deliveries the vhost handed over but this loop had not yet written: its consumers
    // are gone now, so nothing more comes; what came goes back to its queue, not lost.
    deliveries.close();
    while let Some(outbound) = deliveries.try_recv() {
        if let Outbound::Deliver(delivery) = outbound {
            conn.give_back(*delivery);
        }
    }
    drop(conn);
    finish_writing(writer_task, &mut stopping).await;
}

/// How much a connection reads at once at most.
const READ_CHUNK: usize = 8 * 1024;

/// Reads what the peer sent into `buffer`, making room for it only once there is
/// something to read, so that a connection that waits (most of a fleet, most of the
/// time) holds no read buffer. Cancel-safe, as `select!` needs: nothing is read until
/// the socket is readable, and then without waiting.
///
/// A socket stays marked readable after a read until a read finds nothing, so the wait
/// after every read ends at once with nothing to read: the room made for it is given
/// back then, or every idle connection would keep `READ_CHUNK` bytes.
async fn read_some(reader: &mut OwnedReadHalf, buffer: &mut Vec<u8>) -> std::io::Result<usize> {
    loop {
        reader.readable().await?;
        buffer.reserve(READ_CHUNK);
        match reader.try_read_buf(buffer) {
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                if buffer.is_empty() {
                    *buffer = Vec::new();
                }
            }
            read => return read,
        }
    }
}

/// Bytes for the writer: a frame (or the protocol header), how much of the outbox it
/// takes, and for a message's body the charge that counts it against the memory limit
/// until it is written.
#[derive(Debug)]
struct Outgoing {
    bytes: Vec<u8>,
    counted: usize,
    charge: Option<Charge>,
}

impl Outgoing {
    fn new(bytes: Vec<u8>) -> Self {
        let counted = bytes.len();
        Self {
            bytes,
            counted,
            charge: None,
        }
    }
}

/// The writer task: sends what the connection queues, then closes the socket. A peer
/// that takes nothing of a frame for `stalled_within` is given up on: the connection is
/// told (and ends; RabbitMQ's `send_timeout` does the same), and the socket is dropped.
async fn write(
    mut writer: OwnedWriteHalf,
    mut outgoing: pipe::Receiver<Outgoing>,
    outbox: Arc<Outbox>,
    stalled_within: Duration,
) {
    while let Some(item) = outgoing.recv().await {
        match tokio::time::timeout(stalled_within, writer.write_all(&item.bytes)).await {
            Ok(Ok(())) => {
                drop(item.charge);
                outbox.written(item.counted);
            }
            Ok(Err(_)) => return,
            Err(_) => {
                outbox.stall();
                return;
            }
        }
    }
    let _ = writer.shutdown().await;
}

impl Connection {
    /// Reads and answers frames, writes deliveries and keeps the heartbeat until the
    /// connection ends: it closed, its peer went silent, its handshake was not over by
    /// `deadline`, the broker is stopping, or its user was disconnected.
    async fn run(
        &mut self,
        reader: &mut OwnedReadHalf,
        buffer: &mut Vec<u8>,
        deliveries: &mut pipe::Receiver<Outbound>,
        stopping: &mut watch::Receiver<bool>,
        deadline: Instant,
    ) -> End {
        let handshake_over = tokio::time::sleep_until(deadline);
        tokio::pin!(handshake_over);
        let mut heartbeat = tokio::time::interval(Duration::from_secs(3600));
        let mut silent_ticks = 0u32;
        let outbox = self.outbox.clone();
        loop {
            let kick = self.session.as_ref().map(|session| session.kick.clone());
            // Nothing more is read from a peer whose outbox is full (it is not reading
            // what it asked for) until the writer has made room.
            let reading = outbox.has_room() || outbox.wait_for_room();
            tokio::select! {
                read = read_some(reader, buffer), if reading => match read {
                    Ok(0) | Err(_) => return End::Closed,
                    Ok(_) => {
                        silent_ticks = 0;
                        if self.drain(buffer).is_err() || self.closing {
                            return End::Closed;
                        }
                        if buffer.is_empty() {
                            // Every frame read was whole: an idle connection keeps no
                            // read buffer (10,000 devices, 80 MB less).
                            *buffer = Vec::new();
                        }
                        if let Some(end) = self.await_login(buffer, deadline, stopping).await {
                            return end;
                        }
                        self.pace(&mut heartbeat);
                    }
                },
                Some(outbound) = deliveries.recv() => self.outbound(outbound),
                () = outbox.wake.notified() => {
                    if outbox.stalled() {
                        tracing::info!(peer = %self.peer, "closing a connection whose peer took nothing for {:?}", self.config.stalled_writer_timeout);
                        return End::Closed;
                    }
                    self.dispatch_held_back();
                }
                () = &mut handshake_over, if !self.is_open() => {
                    tracing::info!(peer = %self.peer, "dropping a connection whose handshake took longer than {:?}", self.config.handshake_timeout);
                    return End::Closed;
                }
                () = kicked(kick.as_deref()) => {
                    tracing::info!(peer = %self.peer, user = %self.user, "disconnecting the user's connection");
                    return End::Kicked;
                }
                _ = heartbeat.tick() => {
                    if self.heartbeat > 0 {
                        silent_ticks += 1;
                        // Two heartbeat intervals without a byte: the peer is dead.
                        if silent_ticks > 4 {
                            tracing::info!(peer = %self.peer, "closing a connection that missed its heartbeats");
                            return End::Closed;
                        }
                        self.send(AMQPFrame::Heartbeat);
                    }
                }
                () = stopped(stopping) => return End::Shutdown,
            }
        }
    }

    /// Once a heartbeat is settled, ticks at half its interval: a heartbeat goes out at
    /// each tick, and four silent ticks in a row are two missed heartbeats.
    fn pace(&self, heartbeat: &mut Interval) {
        let half = Duration::from_secs(u64::from(self.heartbeat)) / 2;
        if self.heartbeat > 0 && heartbeat.period() != half {
            *heartbeat = tokio::time::interval(half);
        }
    }

    /// Its outbox has room again: the queues whose consumers here were passed over for
    /// want of it are dispatched again.
    fn dispatch_held_back(&mut self) {
        let queues = self.outbox.take_held_back();
        if queues.is_empty() {
            return;
        }
        let mut vhost = self.vhost();
        for queue in &queues {
            vhost.dispatch(queue);
        }
    }

    /// A delivery to write, or a consumer the broker cancelled to tell the client of.
    fn outbound(&mut self, outbound: Outbound) {
        match outbound {
            Outbound::Deliver(delivery) => self.deliver(*delivery),
            Outbound::Cancelled { channel, tag } => self.method(
                channel,
                AMQPClass::Basic(BasicMethod::Cancel(basic::Cancel {
                    consumer_tag: tag.as_str().into(),
                    nowait: true,
                })),
            ),
        }
    }
}

/// Resolves once the broker is stopping (or gone).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stopping| *stopping).await;
}

/// Resolves once `kick` fires; never without one (not logged in yet).
async fn kicked(kick: Option<&tokio::sync::Notify>) {
    match kick {
        Some(kick) => kick.notified().await,
        None => std::future::pending().await,
    }
}

/// Lets the writer send what is left and close the socket; once the broker is stopping,
/// for `FLUSH_WITHIN` at most, so a client that does not read cannot hold shutdown up.
async fn finish_writing(mut writer_task: JoinHandle<()>, stopping: &mut watch::Receiver<bool>) {
    let deadline = async {
        stopped(stopping).await;
        tokio::time::sleep(FLUSH_WITHIN).await;
    };
    tokio::select! {
        _ = &mut writer_task => {}
        () = deadline => writer_task.abort(),
    }
}

struct Connection {
    id: ConnectionId,
    peer: SocketAddr,
    config: Arc<Config>,
    vhost: Arc<Mutex<Vhost>>,
    sessions: Arc<Sessions>,
    out: pipe::Sender<Outgoing>,
    /// What waits to be written, bounded (see `outbox`).
    outbox: Arc<Outbox>,
    /// The broker's count of bytes held, which message bodies in the outbox add to.
    held: Arc<AtomicUsize>,
    deliver: pipe::Sender<Outbound>,
    /// Its place among the handshakes, then among the open connections.
    place: Place,
    frame_max: u32,
    /// The channels it may have open at once, as settled at tune.
    channel_max: u16,
    heartbeat: u16,
    stage: Stage,
    /// Out of turn before login and tune, or a failed login: the connection is dropped
    /// after `SILENT_CLOSE_DELAY`.
    handshake_failed: bool,
    /// Credentials the authenticator is asked about; nothing more is read meanwhile.
    pending_login: Option<PendingLogin>,
    /// Who logged in (empty before): the name in refusals and in `disconnect_user`.
    user: String,
    /// What they may do; `None` before login, when nothing is allowed.
    account: Option<Account>,
    /// Its entry among the logged-in connections, gone with the connection.
    session: Option<Session>,
    /// Its place among its account's open connections, if the account is limited.
    counted: Option<Counted>,
    channels: HashMap<u16, Channel>,
    /// A connection.close was sent or received: stop reading.
    closing: bool,
}

#[derive(Default)]
struct Channel {
    confirm: bool,
    /// Publishes numbered for confirms.
    published: u64,
    /// Delivery tags handed out.
    delivered: u64,
    prefetch: u16,
    unacked: BTreeMap<u64, Unacked>,
    /// Boxed: a message's method and properties take hundreds of bytes, and most
    /// channels (a device's) are idle nearly all the time.
    publishing: Option<Box<Publishing>>,
    /// The broker closed it and waits for close-ok: all else on it is dropped.
    closing: bool,
    /// In transaction mode (tx.select): what waits for tx.commit.
    transaction: Option<Box<Transaction>>,
}

/// A channel's transaction: its publishes and settlings, held until tx.commit carries
/// them out in order, or tx.rollback (or the channel's end) forgets them.
/// What it holds is bounded ([`Transaction::MAX_MESSAGES`], [`Transaction::MAX_BYTES`],
/// [`Transaction::MAX_SETTLINGS`]) and its messages count against the vhost's memory
/// limit while held (their [`Charge`]): a client that never commits must not hold the
/// broker's memory; past a bound the channel is closed with 406.
#[derive(Default)]
struct Transaction {
    /// Each message, whether it is mandatory, and its bytes' charge until routed.
    publishes: Vec<(Message, bool, Charge)>,
    /// The bodies' bytes in `publishes`.
    bytes: usize,
    settlings: Vec<Settling>,
}

impl Transaction {
    const MAX_MESSAGES: usize = 10_000;
    const MAX_BYTES: usize = 64 << 20;
    const MAX_SETTLINGS: usize = 100_000;
}

/// An ack, nack or reject: `tag`, or all up to it with `multiple`; put back in the
/// queue with `requeue`, else done with.
#[derive(Debug, Clone, Copy)]
struct Settling {
    tag: u64,
    multiple: bool,
    requeue: bool,
}

impl Channel {
    /// The next delivery tag, remembering the message until it is settled if it needs
    /// an acknowledgement.
    fn hand_out(&mut self, unacked: Option<Unacked>) -> u64 {
        self.delivered += 1;
        if let Some(unacked) = unacked {
            self.unacked.insert(self.delivered, unacked);
        }
        self.delivered
    }
}

struct Unacked {
    queue: String,
    message: Message,
    counter: Arc<AtomicUsize>,
    /// Its bytes, counted against the memory limit until it is settled.
    charge: Charge,
}

struct Publishing {
    method: basic::Publish,
    properties: BasicProperties,
    size: u64,
    body: Vec<u8>,
    header_seen: bool,
}

/// A protocol error that ends the connection.
struct Fatal;

impl Connection {
    fn vhost(&self) -> MutexGuard<'_, Vhost> {
        self.vhost
            .lock()
            .expect("no code panics while holding the vhost lock")
    }

    fn send(&self, frame: AMQPFrame) {
        match cookie_factory::gen_simple(gen_frame(&frame), Vec::new()) {
            Ok(bytes) => self.queue_out(Outgoing::new(bytes)),
            Err(error) => tracing::error!("cannot encode {frame}: {error:?}"),
        }
    }

    fn method(&self, channel: u16, method: AMQPClass) {
        self.send(AMQPFrame::Method(channel, method));
    }

    /// Sends a method's `-ok` answer, unless the client asked for none (`nowait`).
    fn answer(&self, channel: u16, nowait: bool, ok: AMQPClass) {
        if !nowait {
            self.method(channel, ok);
        }
    }

    /// Hands bytes to the writer, counted in the outbox.
    fn queue_out(&self, outgoing: Outgoing) {
        self.outbox.add(outgoing.counted);
        if let Err(lost) = self.out.send(outgoing) {
            // The writer is gone; so is the connection, soon.
            self.outbox.written(lost.counted);
        }
    }

    /// Sends a message's header and body frames; the body's bytes count against the
    /// memory limit until written. `reserved`: a delivery's, whose bytes the vhost
    /// reserved in the outbox as it handed it over.
    fn content(&self, id: u16, message: &Message, reserved: bool) {
        self.send(AMQPFrame::Header(
            id,
            AMQPContentHeader {
                class_id: 60,
                body_size: message.body.len() as u64,
                properties: message.properties.clone(),
            },
        ));
        let chunk = (self.frame_max as usize).saturating_sub(8).max(1);
        for piece in message.body.chunks(chunk) {
            let frame = AMQPFrame::Body(id, piece.to_vec());
            let bytes = match cookie_factory::gen_simple(gen_frame(&frame), Vec::new()) {
                Ok(bytes) => bytes,
                Err(error) => {
                    tracing::error!("cannot encode a body frame: {error:?}");
                    continue;
                }
            };
            let charge = Some(Charge::new(&self.held, piece.len()));
            if reserved {
                // Counted in the outbox already: the frame takes the reservation's
                // place; the few octets of framing are not reserved.
                let outgoing = Outgoing {
                    bytes,
                    counted: piece.len(),
                    charge,
                };
                if let Err(lost) = self.out.send(outgoing) {
                    self.outbox.written(lost.counted);
                }
            } else {
                let counted = bytes.len();
                self.queue_out(Outgoing {
                    bytes,
                    counted,
                    charge,
                });
            }
        }
    }

    fn is_open(&self) -> bool {
        self.stage == Stage::Running
    }

    /// What the account may hold, if it is limited: devices are, the server is not.
    fn limits(&self) -> Option<AccountLimits> {
        matches!(self.account, Some(Account::Device(_))).then_some(self.config.limits)
    }

    /// The account asking for one more of something it may hold `max` of, if limited.
    fn quota(&self, max: impl Fn(&AccountLimits) -> usize) -> Option<Quota<'_>> {
        self.limits().map(|limits| Quota {
            user: &self.user,
            max: max(&limits),
        })
    }

    /// Closes the connection for a hard error. Before the client has logged in and
    /// tuned, RabbitMQ answers no error: it says nothing, and drops the connection after
    /// `SILENT_CLOSE_DELAY`; so does this.
    fn close(&mut self, code: u16, text: &str, class_id: u16, method_id: u16) {
        self.closing = true;
        if !self.stage.answers_errors() {
            tracing::debug!(peer = %self.peer, "a handshake failed: {text}");
            self.handshake_failed = true;
            return;
        }
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: code,
                reply_text: text.into(),
                class_id,
                method_id,
            })),
        );
    }

    /// The connection ends: consumers go, unacked messages return to their queues,
    /// exclusive queues are deleted.
    fn close_all(&mut self) {
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        for id in ids {
            self.close_channel(id);
        }
        self.vhost().close_connection(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// An idle connection must not keep a read buffer: the wait after a read (which
    /// finds the socket still marked readable, and nothing in it) gives the room back.
    #[tokio::test]
    async fn a_connection_that_waits_holds_no_read_buffer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (mut reader, _writer) = server.into_split();
        client.write_all(b"0123456789").await.unwrap();

        let mut buffer = Vec::new();
        let read = read_some(&mut reader, &mut buffer).await.unwrap();
        assert_eq!(&buffer[..read], b"0123456789");
        // As `run` does once every frame read was whole.
        buffer = Vec::new();
        let waited = tokio::time::timeout(
            Duration::from_millis(50),
            read_some(&mut reader, &mut buffer),
        )
        .await;
        assert!(waited.is_err(), "nothing more was sent");
        assert_eq!(buffer.capacity(), 0, "the idle wait holds no buffer");

        client.write_all(b"more").await.unwrap();
        let read = read_some(&mut reader, &mut buffer).await.unwrap();
        assert_eq!(&buffer[..read], b"more", "and reading again works");
    }
}
