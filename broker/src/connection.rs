//! One client connection: the AMQP handshake, channels, and the methods Tether and
//! ordinary clients use. One reader (this task) and one writer task; the vhost lock is
//! taken for each operation and released before anything awaits.
//!
//! - here: the reader loop (frames in; deliveries and heartbeats out), the connection's
//!   state, frame dispatch with one short match from each AMQP method to its handler, and
//!   closing the connection, also when the broker shuts down.
//! - `handshake`: the connection class: protocol header, start, PLAIN, tune, open, close,
//!   and waiting for the close-ok to the broker's own close.
//! - `channel`: the channel class (open, close, flow) and closing a channel on an error.
//! - `exchange` and `queue`: exchange.* and queue.* methods, answered from the vhost.
//! - `publish`: basic.publish, content reassembly, mandatory returns, confirms.
//! - `delivery`: basic.qos, consume, cancel, get, deliveries, ack, nack, reject.

mod channel;
mod delivery;
mod exchange;
mod handshake;
mod publish;
mod queue;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, atomic::AtomicUsize},
    time::Duration,
};

use amq_protocol::{
    frame::{AMQPContentHeader, AMQPFrame, gen_frame, parse_frame},
    protocol::{
        AMQPClass, BasicProperties, basic, basic::AMQPMethod as BasicMethod,
        channel::AMQPMethod as ChannelMethod, confirm::AMQPMethod as ConfirmMethod, connection,
        exchange::AMQPMethod as ExchangeMethod, queue::AMQPMethod as QueueMethod,
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::{mpsc, watch},
    task::JoinHandle,
};

use crate::{
    Config,
    vhost::{ConnectionId, Message, Outbound, Vhost},
};

const NOT_IMPLEMENTED: u16 = 540;
const FRAME_ERROR: u16 = 501;
const COMMAND_INVALID: u16 = 503;
const CHANNEL_ERROR: u16 = 504;
const ACCESS_REFUSED: u16 = 403;
const NO_ROUTE: u16 = 312;
const CONNECTION_FORCED: u16 = 320;

/// How long a connection waits for the client's close-ok to the broker's shutdown
/// close before dropping it.
const CLOSE_OK_WITHIN: Duration = Duration::from_millis(500);
/// How long, once the broker is stopping, the writer may take to send what is left.
const FLUSH_WITHIN: Duration = Duration::from_millis(200);

/// Serves one connection until it closes, or until `stopping` turns true: then an open
/// connection is closed with 320 (CONNECTION_FORCED) and one still in the handshake is
/// dropped, all within `CLOSE_OK_WITHIN` + `FLUSH_WITHIN`.
pub async fn serve(
    id: ConnectionId,
    socket: TcpStream,
    peer: SocketAddr,
    config: Arc<Config>,
    vhost: Arc<Mutex<Vhost>>,
    mut stopping: watch::Receiver<bool>,
) {
    let _ = socket.set_nodelay(true);
    let (mut reader, mut writer) = socket.into_split();
    let (out, mut outgoing) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer_task = tokio::spawn(async move {
        while let Some(bytes) = outgoing.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    });

    let header = tokio::select! {
        header = handshake::protocol_header(&mut reader) => Some(header),
        () = stopped(&mut stopping) => None,
    };
    match header {
        Some(true) => {}
        Some(false) => {
            // As the spec says: answer with the header we speak, then close.
            let _ = out.send(handshake::PROTOCOL_HEADER.to_vec());
            drop(out);
            finish_writing(writer_task, &mut stopping).await;
            return;
        }
        None => {
            drop(out);
            finish_writing(writer_task, &mut stopping).await;
            return;
        }
    }
    let (deliver, mut deliveries) = mpsc::unbounded_channel();
    let mut conn = Connection {
        id,
        peer,
        config: config.clone(),
        vhost: vhost.clone(),
        out,
        deliver,
        frame_max: config.frame_max,
        heartbeat: 0,
        open: false,
        channels: HashMap::new(),
        closing: false,
    };
    conn.send_start();

    let mut buffer: Vec<u8> = Vec::with_capacity(8192);
    let mut heartbeat = tokio::time::interval(Duration::from_secs(3600));
    let mut silent_ticks = 0u32;
    let mut stopped_by_broker = false;
    loop {
        tokio::select! {
            read = reader.read_buf(&mut buffer) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    silent_ticks = 0;
                    if conn.drain(&mut buffer).is_err() || conn.closing {
                        break;
                    }
                    if conn.heartbeat > 0 && heartbeat.period() != Duration::from_secs(u64::from(conn.heartbeat)) / 2 {
                        heartbeat = tokio::time::interval(Duration::from_secs(u64::from(conn.heartbeat)) / 2);
                    }
                }
            },
            Some(outbound) = deliveries.recv() => match outbound {
                Outbound::Deliver(delivery) => conn.deliver(*delivery),
                Outbound::Cancelled { channel, tag } => conn.method(channel, AMQPClass::Basic(BasicMethod::Cancel(basic::Cancel {
                    consumer_tag: tag.as_str().into(),
                    nowait: true,
                }))),
            },
            _ = heartbeat.tick() => {
                if conn.heartbeat > 0 {
                    silent_ticks += 1;
                    // Two heartbeat intervals without a byte: the peer is dead.
                    if silent_ticks > 4 {
                        tracing::info!(%peer, "closing a connection that missed its heartbeats");
                        break;
                    }
                    conn.send(AMQPFrame::Heartbeat);
                }
            }
            () = stopped(&mut stopping) => {
                stopped_by_broker = true;
                break;
            }
        }
    }
    // The broker is stopping: an open connection is told so, as RabbitMQ does; one still
    // in the handshake is simply dropped.
    if stopped_by_broker && conn.open {
        conn.close(
            CONNECTION_FORCED,
            "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'",
            0,
            0,
        );
        if !conn
            .await_close_ok(&mut reader, &mut buffer, CLOSE_OK_WITHIN)
            .await
        {
            tracing::debug!(%peer, "no close-ok to the shutdown close; dropping the connection");
        }
    }
    conn.close_all();
    // Deliveries the vhost handed over but this loop had not yet written: its consumers
    // are gone now, so nothing more comes; what came goes back to its queue, not lost.
    deliveries.close();
    while let Ok(outbound) = deliveries.try_recv() {
        if let Outbound::Deliver(delivery) = outbound {
            conn.give_back(*delivery);
        }
    }
    drop(conn);
    finish_writing(writer_task, &mut stopping).await;
}

/// Resolves once the broker is stopping (or gone).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stopping| *stopping).await;
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
    out: mpsc::UnboundedSender<Vec<u8>>,
    deliver: mpsc::UnboundedSender<Outbound>,
    frame_max: u32,
    heartbeat: u16,
    /// Past connection.open.
    open: bool,
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
    publishing: Option<Publishing>,
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
            Ok(bytes) => {
                let _ = self.out.send(bytes);
            }
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

    /// Sends a message's header and body frames.
    fn content(&self, id: u16, message: &Message) {
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
            self.send(AMQPFrame::Body(id, piece.to_vec()));
        }
    }

    /// Parses and handles every whole frame in `buffer`, leaving a partial one.
    fn drain(&mut self, buffer: &mut Vec<u8>) -> Result<(), Fatal> {
        loop {
            if buffer.len() >= 7 {
                let size = u32::from_be_bytes([buffer[3], buffer[4], buffer[5], buffer[6]]);
                if size > self.frame_max {
                    self.close(
                        FRAME_ERROR,
                        &format!(
                            "FRAME_ERROR - frame size {size} exceeds frame_max {}",
                            self.frame_max
                        ),
                        0,
                        0,
                    );
                    return Err(Fatal);
                }
            }
            let (consumed, frame) = match parse_frame(buffer.as_slice()) {
                Ok((rest, frame)) => (buffer.len() - rest.len(), frame),
                Err(nom::Err::Incomplete(_)) => return Ok(()),
                Err(_) => {
                    self.close(FRAME_ERROR, "FRAME_ERROR - malformed frame", 0, 0);
                    return Err(Fatal);
                }
            };
            buffer.drain(..consumed);
            self.handle(frame)?;
            if self.closing {
                return Ok(());
            }
        }
    }

    fn handle(&mut self, frame: AMQPFrame) -> Result<(), Fatal> {
        match frame {
            AMQPFrame::Heartbeat | AMQPFrame::InvalidHeartbeat(_) => Ok(()),
            AMQPFrame::ProtocolHeader(_) => {
                self.close(
                    COMMAND_INVALID,
                    "COMMAND_INVALID - unexpected protocol header",
                    0,
                    0,
                );
                Err(Fatal)
            }
            AMQPFrame::Method(0, AMQPClass::Connection(method)) => self.connection_method(method),
            AMQPFrame::Method(channel, method) if self.open && channel > 0 => {
                self.channel_method(channel, method)
            }
            AMQPFrame::Header(channel, header) => self.content_header(channel, header),
            AMQPFrame::Body(channel, body) => self.content_body(channel, body),
            AMQPFrame::Method(_, method) => {
                self.close(
                    COMMAND_INVALID,
                    "COMMAND_INVALID - unexpected method",
                    method.get_amqp_class_id(),
                    method.get_amqp_method_id(),
                );
                Err(Fatal)
            }
        }
    }

    /// A method on channel `id`: each goes to its handler. A refusal (404, 405, 406…)
    /// closes the channel; what the broker does not implement closes the connection.
    fn channel_method(&mut self, id: u16, method: AMQPClass) -> Result<(), Fatal> {
        let class_id = method.get_amqp_class_id();
        let method_id = method.get_amqp_method_id();
        if let AMQPClass::Channel(ChannelMethod::Open(_)) = method {
            return self.channel_open(id, class_id, method_id);
        }
        if !self.channels.contains_key(&id) {
            // Frames for a channel being closed are dropped, as the spec asks.
            return Ok(());
        }
        let result = match method {
            AMQPClass::Channel(ChannelMethod::Close(_)) => self.channel_close(id),
            AMQPClass::Channel(ChannelMethod::CloseOk(_)) => self.channel_close_ok(id),
            AMQPClass::Channel(ChannelMethod::Flow(flow)) => self.channel_flow(id, flow),
            AMQPClass::Exchange(ExchangeMethod::Declare(declare)) => {
                self.exchange_declare(id, declare)
            }
            AMQPClass::Exchange(ExchangeMethod::Delete(delete)) => self.exchange_delete(id, delete),
            AMQPClass::Queue(QueueMethod::Declare(declare)) => self.queue_declare(id, declare),
            AMQPClass::Queue(QueueMethod::Bind(bind)) => self.queue_bind(id, bind),
            AMQPClass::Queue(QueueMethod::Unbind(unbind)) => self.queue_unbind(id, unbind),
            AMQPClass::Queue(QueueMethod::Purge(purge)) => self.queue_purge(id, purge),
            AMQPClass::Queue(QueueMethod::Delete(delete)) => self.queue_delete(id, delete),
            AMQPClass::Basic(BasicMethod::Qos(qos)) => self.basic_qos(id, qos),
            AMQPClass::Basic(BasicMethod::Consume(consume)) => self.basic_consume(id, consume),
            AMQPClass::Basic(BasicMethod::Cancel(cancel)) => self.basic_cancel(id, cancel),
            AMQPClass::Basic(BasicMethod::Publish(publish)) => self.basic_publish(id, publish),
            AMQPClass::Basic(BasicMethod::Get(get)) => self.basic_get(id, get),
            AMQPClass::Basic(BasicMethod::Ack(ack)) => self.basic_ack(id, ack),
            AMQPClass::Basic(BasicMethod::Nack(nack)) => self.basic_nack(id, nack),
            AMQPClass::Basic(BasicMethod::Reject(reject)) => self.basic_reject(id, reject),
            AMQPClass::Confirm(ConfirmMethod::Select(select)) => self.confirm_select(id, select),
            _ => {
                self.close(
                    NOT_IMPLEMENTED,
                    "NOT_IMPLEMENTED - this method is not supported by the embedded broker",
                    class_id,
                    method_id,
                );
                return Err(Fatal);
            }
        };
        if let Err(refusal) = result {
            self.close_channel_with(id, &refusal, class_id, method_id);
        }
        Ok(())
    }

    /// Closes the connection for a hard error.
    fn close(&mut self, code: u16, text: &str, class_id: u16, method_id: u16) {
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: code,
                reply_text: text.into(),
                class_id,
                method_id,
            })),
        );
        self.closing = true;
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
