//! One client connection: the AMQP handshake, channels, and the methods Tether and
//! ordinary clients use. One reader (this task) and one writer task; the vhost lock is
//! taken for each operation and released before anything awaits.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use amq_protocol::{
    frame::{AMQPContentHeader, AMQPFrame, gen_frame, parse_frame},
    protocol::{AMQPClass, BasicProperties, basic, channel, confirm, connection, exchange, queue},
    types::{AMQPValue, FieldTable},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
};

use crate::{
    Config,
    vhost::{ConnectionId, Delivery, Message, Outbound, Refusal, Vhost},
};

const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
const NOT_IMPLEMENTED: u16 = 540;
const FRAME_ERROR: u16 = 501;
const COMMAND_INVALID: u16 = 503;
const CHANNEL_ERROR: u16 = 504;
const ACCESS_REFUSED: u16 = 403;
const NO_ROUTE: u16 = 312;

pub async fn serve(
    id: ConnectionId,
    socket: TcpStream,
    peer: SocketAddr,
    config: Arc<Config>,
    vhost: Arc<Mutex<Vhost>>,
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

    let mut header = [0u8; 8];
    let handshake =
        tokio::time::timeout(Duration::from_secs(10), reader.read_exact(&mut header)).await;
    if !matches!(handshake, Ok(Ok(_))) || &header != PROTOCOL_HEADER {
        // As the spec says: answer with the header we speak, then close.
        let _ = out.send(PROTOCOL_HEADER.to_vec());
        drop(out);
        let _ = writer_task.await;
        return;
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
                Outbound::Cancelled { channel, tag } => conn.method(channel, AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
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
        }
    }
    conn.close_all();
    drop(conn);
    let _ = writer_task.await;
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

    fn send_start(&self) {
        let mut capabilities = FieldTable::default();
        for capability in [
            "publisher_confirms",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "per_consumer_qos",
            "authentication_failure_close",
            "exchange_exchange_bindings",
        ] {
            capabilities.insert(capability.into(), AMQPValue::Boolean(true));
        }
        let mut properties = FieldTable::default();
        properties.insert(
            "product".into(),
            AMQPValue::LongString("Tether embedded broker".into()),
        );
        properties.insert(
            "version".into(),
            AMQPValue::LongString(env!("CARGO_PKG_VERSION").into()),
        );
        properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: properties,
                mechanisms: "PLAIN".into(),
                locales: "en_US".into(),
            })),
        );
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

    fn connection_method(&mut self, method: connection::AMQPMethod) -> Result<(), Fatal> {
        match method {
            connection::AMQPMethod::StartOk(start_ok) => {
                if !self.authenticates(&start_ok) {
                    self.close(
                        ACCESS_REFUSED,
                        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN",
                        10,
                        11,
                    );
                    return Err(Fatal);
                }
                self.method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                        channel_max: self.config.channel_max,
                        frame_max: self.config.frame_max,
                        heartbeat: self.config.heartbeat,
                    })),
                );
                Ok(())
            }
            connection::AMQPMethod::TuneOk(tune) => {
                if tune.frame_max >= 4096 {
                    self.frame_max = tune.frame_max.min(self.config.frame_max);
                }
                self.heartbeat = tune.heartbeat;
                Ok(())
            }
            connection::AMQPMethod::Open(_) => {
                self.open = true;
                self.method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
                );
                Ok(())
            }
            connection::AMQPMethod::Close(_) => {
                self.method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                self.closing = true;
                Ok(())
            }
            connection::AMQPMethod::CloseOk(_) => {
                self.closing = true;
                Ok(())
            }
            connection::AMQPMethod::Blocked(_) | connection::AMQPMethod::Unblocked(_) => Ok(()),
            other => {
                let class = AMQPClass::Connection(other);
                self.close(
                    NOT_IMPLEMENTED,
                    "NOT_IMPLEMENTED",
                    class.get_amqp_class_id(),
                    class.get_amqp_method_id(),
                );
                Err(Fatal)
            }
        }
    }

    fn authenticates(&self, start_ok: &connection::StartOk) -> bool {
        if start_ok.mechanism.as_str() != "PLAIN" {
            return false;
        }
        // PLAIN: authzid NUL user NUL password.
        let response = start_ok.response.as_bytes();
        let mut parts = response.split(|b| *b == 0);
        let (_, user, password) = (parts.next(), parts.next(), parts.next());
        // As in RabbitMQ, the well-known guest account works from this machine only.
        if self.config.user == "guest" && !self.peer.ip().is_loopback() {
            return false;
        }
        user == Some(self.config.user.as_bytes())
            && password == Some(self.config.password.as_bytes())
    }

    fn channel_method(&mut self, id: u16, method: AMQPClass) -> Result<(), Fatal> {
        let class_id = method.get_amqp_class_id();
        let method_id = method.get_amqp_method_id();
        if let AMQPClass::Channel(channel::AMQPMethod::Open(_)) = method {
            if self.channels.contains_key(&id) || id > self.config.channel_max {
                self.close(
                    CHANNEL_ERROR,
                    "CHANNEL_ERROR - channel already open or out of range",
                    class_id,
                    method_id,
                );
                return Err(Fatal);
            }
            self.channels.insert(id, Channel::default());
            self.method(
                id,
                AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
            );
            return Ok(());
        }
        if !self.channels.contains_key(&id) {
            // Frames for a channel being closed are dropped, as the spec asks.
            return Ok(());
        }
        let result = match method {
            AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                self.close_channel(id);
                self.method(
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                );
                Ok(())
            }
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => {
                self.close_channel(id);
                Ok(())
            }
            AMQPClass::Channel(channel::AMQPMethod::Flow(flow)) => {
                self.method(
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                        active: flow.active,
                    })),
                );
                Ok(())
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(declare)) => {
                let durable = declare.durable;
                let result = self.vhost().declare_exchange(
                    declare.exchange.as_str(),
                    declare.kind.as_str(),
                    durable,
                    declare.passive,
                );
                result.map(|()| {
                    self.answer(
                        id,
                        declare.nowait,
                        AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(
                            exchange::DeclareOk {},
                        )),
                    );
                })
            }
            AMQPClass::Queue(queue::AMQPMethod::Declare(declare)) => {
                let result = self.vhost().declare_queue(
                    self.id,
                    declare.queue.as_str(),
                    declare.exclusive,
                    declare.auto_delete,
                    declare.passive,
                    &declare.arguments,
                );
                result.map(|(name, messages, consumers)| {
                    self.answer(
                        id,
                        declare.nowait,
                        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                            queue: name.into(),
                            message_count: messages,
                            consumer_count: consumers,
                        })),
                    );
                })
            }
            AMQPClass::Queue(queue::AMQPMethod::Bind(bind)) => {
                let result = self.vhost().bind(
                    self.id,
                    bind.queue.as_str(),
                    bind.exchange.as_str(),
                    bind.routing_key.as_str(),
                );
                result.map(|()| {
                    self.answer(
                        id,
                        bind.nowait,
                        AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
                    );
                })
            }
            AMQPClass::Queue(queue::AMQPMethod::Unbind(unbind)) => {
                let result = self.vhost().unbind(
                    self.id,
                    unbind.queue.as_str(),
                    unbind.exchange.as_str(),
                    unbind.routing_key.as_str(),
                );
                result.map(|()| {
                    self.method(
                        id,
                        AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
                    )
                })
            }
            AMQPClass::Queue(queue::AMQPMethod::Purge(purge)) => {
                let result = self.vhost().purge(self.id, purge.queue.as_str());
                result.map(|count| {
                    self.answer(
                        id,
                        purge.nowait,
                        AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                            message_count: count,
                        })),
                    );
                })
            }
            AMQPClass::Queue(queue::AMQPMethod::Delete(delete)) => {
                let result = self.vhost().delete(
                    self.id,
                    delete.queue.as_str(),
                    delete.if_unused,
                    delete.if_empty,
                );
                result.map(|count| {
                    self.answer(
                        id,
                        delete.nowait,
                        AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                            message_count: count,
                        })),
                    );
                })
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Delete(delete)) => {
                let result = self
                    .vhost()
                    .delete_exchange(delete.exchange.as_str(), delete.if_unused);
                result.map(|()| {
                    self.answer(
                        id,
                        delete.nowait,
                        AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
                    );
                })
            }
            AMQPClass::Basic(basic::AMQPMethod::Get(get)) => self.get(id, get),
            AMQPClass::Basic(basic::AMQPMethod::Qos(qos)) => {
                if let Some(channel) = self.channels.get_mut(&id) {
                    channel.prefetch = qos.prefetch_count;
                }
                self.method(
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
                );
                Ok(())
            }
            AMQPClass::Basic(basic::AMQPMethod::Consume(consume)) => {
                let tag = if consume.consumer_tag.as_str().is_empty() {
                    format!("amq.ctag-{:016x}", fastrand::u64(..))
                } else {
                    consume.consumer_tag.to_string()
                };
                let prefetch = self.channels.get(&id).map_or(0, |c| c.prefetch);
                let deliver = self.deliver.clone();
                let added = self.vhost().consume(
                    self.id,
                    id,
                    consume.queue.as_str(),
                    tag.clone(),
                    consume.no_ack,
                    prefetch,
                    deliver,
                );
                // Deliveries reach this task through its channel, after this method is
                // handled, so consume-ok still goes out before the first of them.
                added.map(|()| {
                    self.answer(
                        id,
                        consume.nowait,
                        AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                            consumer_tag: tag.as_str().into(),
                        })),
                    );
                })
            }
            AMQPClass::Basic(basic::AMQPMethod::Cancel(cancel)) => {
                self.vhost()
                    .cancel(self.id, id, cancel.consumer_tag.as_str());
                self.answer(
                    id,
                    cancel.nowait,
                    AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                        consumer_tag: cancel.consumer_tag,
                    })),
                );
                Ok(())
            }
            AMQPClass::Basic(basic::AMQPMethod::Publish(publish)) => {
                if let Some(channel) = self.channels.get_mut(&id) {
                    channel.publishing = Some(Publishing {
                        method: publish,
                        properties: BasicProperties::default(),
                        size: 0,
                        body: Vec::new(),
                        header_seen: false,
                    });
                }
                Ok(())
            }
            AMQPClass::Basic(basic::AMQPMethod::Ack(ack)) => {
                self.settle(id, ack.delivery_tag, ack.multiple, false);
                Ok(())
            }
            AMQPClass::Basic(basic::AMQPMethod::Nack(nack)) => {
                self.settle(id, nack.delivery_tag, nack.multiple, nack.requeue);
                Ok(())
            }
            AMQPClass::Basic(basic::AMQPMethod::Reject(reject)) => {
                self.settle(id, reject.delivery_tag, false, reject.requeue);
                Ok(())
            }
            AMQPClass::Confirm(confirm::AMQPMethod::Select(select)) => {
                if let Some(channel) = self.channels.get_mut(&id) {
                    channel.confirm = true;
                }
                self.answer(
                    id,
                    select.nowait,
                    AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                );
                Ok(())
            }
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

    fn content_header(&mut self, id: u16, header: AMQPContentHeader) -> Result<(), Fatal> {
        let Some(publishing) = self
            .channels
            .get_mut(&id)
            .and_then(|c| c.publishing.as_mut())
        else {
            self.close(
                COMMAND_INVALID,
                "COMMAND_INVALID - content header without basic.publish",
                60,
                40,
            );
            return Err(Fatal);
        };
        publishing.properties = header.properties;
        publishing.size = header.body_size;
        publishing.header_seen = true;
        if header.body_size == 0 {
            self.finish_publish(id);
        }
        Ok(())
    }

    fn content_body(&mut self, id: u16, body: Vec<u8>) -> Result<(), Fatal> {
        let Some(publishing) = self
            .channels
            .get_mut(&id)
            .and_then(|c| c.publishing.as_mut())
            .filter(|p| p.header_seen)
        else {
            self.close(
                COMMAND_INVALID,
                "COMMAND_INVALID - content body without a header",
                60,
                40,
            );
            return Err(Fatal);
        };
        publishing.body.extend_from_slice(&body);
        if publishing.body.len() as u64 > publishing.size {
            self.close(
                FRAME_ERROR,
                "FRAME_ERROR - body larger than announced",
                60,
                40,
            );
            return Err(Fatal);
        }
        if publishing.body.len() as u64 == publishing.size {
            self.finish_publish(id);
        }
        Ok(())
    }

    /// A whole message arrived: route it, return it if unroutable and mandatory, and
    /// confirm it (the return goes first, as in RabbitMQ).
    fn finish_publish(&mut self, id: u16) {
        let Some(channel) = self.channels.get_mut(&id) else {
            return;
        };
        let Some(publishing) = channel.publishing.take() else {
            return;
        };
        let message = Message {
            exchange: publishing.method.exchange.to_string(),
            routing_key: publishing.method.routing_key.to_string(),
            properties: publishing.properties,
            body: Arc::new(publishing.body),
            redelivered: false,
            expires_at: None,
        };
        let confirm = channel.confirm.then(|| {
            channel.published += 1;
            channel.published
        });
        let exchange = publishing.method.exchange.to_string();
        let routed = self.vhost().publish(&exchange, message.clone());
        let mut rejected = false;
        match routed {
            Ok(routed) if routed.queues == 0 && publishing.method.mandatory => {
                self.method(
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                        reply_code: NO_ROUTE,
                        reply_text: "NO_ROUTE".into(),
                        exchange: message.exchange.as_str().into(),
                        routing_key: message.routing_key.as_str().into(),
                    })),
                );
                self.content(id, &message);
            }
            Ok(routed) => rejected = routed.rejected,
            Err(refusal) => {
                self.close_channel_with(id, &refusal, 60, 40);
                return;
            }
        }
        if let Some(tag) = confirm {
            let answer = if rejected {
                // A full queue with reject-publish refused it: the publisher must know.
                basic::AMQPMethod::Nack(basic::Nack {
                    delivery_tag: tag,
                    multiple: false,
                    requeue: false,
                })
            } else {
                basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: tag,
                    multiple: false,
                })
            };
            self.method(id, AMQPClass::Basic(answer));
        }
    }

    /// basic.get: one message, or get-empty.
    fn get(&mut self, id: u16, get: basic::Get) -> Result<(), Refusal> {
        let taken = self.vhost().get(self.id, get.queue.as_str())?;
        let Some((message, remaining)) = taken else {
            self.method(
                id,
                AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
            );
            return Ok(());
        };
        let Some(channel) = self.channels.get_mut(&id) else {
            return Ok(());
        };
        channel.delivered += 1;
        let tag = channel.delivered;
        if !get.no_ack {
            channel.unacked.insert(
                tag,
                Unacked {
                    queue: get.queue.to_string(),
                    message: message.clone(),
                    counter: Arc::new(AtomicUsize::new(1)),
                },
            );
        }
        self.method(
            id,
            AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                delivery_tag: tag,
                redelivered: message.redelivered,
                exchange: message.exchange.as_str().into(),
                routing_key: message.routing_key.as_str().into(),
                message_count: remaining,
            })),
        );
        self.content(id, &message);
        Ok(())
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

    fn deliver(&mut self, delivery: Delivery) {
        let Some(channel) = self.channels.get_mut(&delivery.channel) else {
            // The channel closed meanwhile: give the message back.
            if !delivery.no_ack {
                delivery.unacked.fetch_sub(1, Ordering::Relaxed);
                self.vhost().requeue(&delivery.queue, delivery.message);
            }
            return;
        };
        channel.delivered += 1;
        let tag = channel.delivered;
        if !delivery.no_ack {
            channel.unacked.insert(
                tag,
                Unacked {
                    queue: delivery.queue.clone(),
                    message: delivery.message.clone(),
                    counter: delivery.unacked.clone(),
                },
            );
        }
        self.method(
            delivery.channel,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: delivery.consumer_tag.as_str().into(),
                delivery_tag: tag,
                redelivered: delivery.message.redelivered,
                exchange: delivery.message.exchange.as_str().into(),
                routing_key: delivery.message.routing_key.as_str().into(),
            })),
        );
        self.content(delivery.channel, &delivery.message);
    }

    /// Acknowledges (or rejects) one delivery, or all up to it with `multiple`.
    fn settle(&mut self, id: u16, tag: u64, multiple: bool, requeue: bool) {
        let Some(channel) = self.channels.get_mut(&id) else {
            return;
        };
        let tags: Vec<u64> = if multiple {
            channel.unacked.range(..=tag).map(|(t, _)| *t).collect()
        } else {
            vec![tag]
        };
        let settled: Vec<Unacked> = tags
            .iter()
            .filter_map(|t| channel.unacked.remove(t))
            .collect();
        let mut vhost = self
            .vhost
            .lock()
            .expect("no code panics while holding the vhost lock");
        for entry in settled {
            entry.counter.fetch_sub(1, Ordering::Relaxed);
            if requeue {
                vhost.requeue(&entry.queue, entry.message);
            } else {
                vhost.settled(&entry.queue);
            }
        }
    }

    fn close_channel(&mut self, id: u16) {
        if let Some(channel) = self.channels.remove(&id) {
            let mut vhost = self
                .vhost
                .lock()
                .expect("no code panics while holding the vhost lock");
            vhost.close_channel(self.id, id);
            for (_, entry) in channel.unacked {
                entry.counter.fetch_sub(1, Ordering::Relaxed);
                vhost.requeue(&entry.queue, entry.message);
            }
        }
    }

    /// Closes a channel for a soft error (404, 405, 406…), as RabbitMQ does.
    fn close_channel_with(&mut self, id: u16, refusal: &Refusal, class_id: u16, method_id: u16) {
        self.close_channel(id);
        // Keep the id reserved until close-ok, so late frames are dropped quietly.
        self.channels.insert(id, Channel::default());
        self.method(
            id,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: refusal.code,
                reply_text: refusal.text.as_str().into(),
                class_id,
                method_id,
            })),
        );
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
