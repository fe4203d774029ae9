//! A raw AMQP 0-9-1 client for the cases that misbehave on purpose, as a hostile peer
//! would: frames built with amq-protocol's encoder, sent in whatever order a case wants,
//! and the broker's answers read back frame by frame, so a case sees exactly what a
//! broker says, or that it says nothing and hangs up. lapin cannot do this: it always
//! follows the protocol.

use std::{net::SocketAddr, time::Duration};

use amq_protocol::{
    frame::{AMQPContentHeader, AMQPFrame, gen_frame, parse_frame},
    protocol::{AMQPClass, BasicProperties, basic, channel, confirm, connection, exchange, queue},
    types::{AMQPValue, FieldTable},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

pub const PROTOCOL_HEADER: &[u8] = b"AMQP\x00\x00\x09\x01";
/// The frame size both brokers propose, and the one these clients settle on.
pub const FRAME_MAX: u32 = 131_072;

#[derive(Debug)]
pub struct RawClient {
    socket: TcpStream,
    buffer: Vec<u8>,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        let socket = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("cannot reach the broker at {addr}: {e}"));
        Self {
            socket,
            buffer: Vec::new(),
        }
    }

    /// Logs in as guest (header, start-ok, tune-ok with `heartbeat`, open) and reads the
    /// broker's start, tune and open-ok.
    pub async fn logged_in(addr: SocketAddr, heartbeat: u16) -> Self {
        Self::logged_in_as(addr, "guest", "guest", heartbeat).await
    }

    /// Logs in as `user` with `password`, as [`Self::logged_in`] does as guest.
    pub async fn logged_in_as(
        addr: SocketAddr,
        user: &str,
        password: &str,
        heartbeat: u16,
    ) -> Self {
        let mut client = Self::connect(addr).await;
        client.send_bytes(PROTOCOL_HEADER).await;
        let login = start_ok_as(user, password);
        for frame in [login, tune_ok(heartbeat), connection_open("/")] {
            client.send(&frame).await;
        }
        for expected in ["connection.start", "connection.tune", "connection.open-ok"] {
            let frame = client.next_within(Duration::from_secs(5)).await;
            assert_eq!(frame.as_ref().map(describe).as_deref(), Some(expected));
        }
        client
    }

    /// Writes bytes; a broker that has hung up already is not an error here.
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        let _ = self.socket.write_all(bytes).await;
    }

    pub async fn send(&mut self, frame: &AMQPFrame) {
        self.send_bytes(&encode(frame)).await;
    }

    /// The broker's next frame, or `None` once it has closed the connection.
    pub async fn next_frame(&mut self) -> Option<AMQPFrame> {
        loop {
            match parse_frame(self.buffer.as_slice()) {
                Ok((rest, frame)) => {
                    let consumed = self.buffer.len() - rest.len();
                    self.buffer.drain(..consumed);
                    return Some(frame);
                }
                Err(nom::Err::Incomplete(_)) => {}
                Err(error) => panic!("the broker sent a malformed frame: {error:?}"),
            }
            match self.socket.read_buf(&mut self.buffer).await {
                Ok(0) | Err(_) => return None, // closed, or reset (RabbitMQ lingers 0)
                Ok(_) => {}
            }
        }
    }

    /// The next frame that is not a heartbeat, within `within` (a hang guard).
    pub async fn next_within(&mut self, within: Duration) -> Option<AMQPFrame> {
        tokio::time::timeout(within, async {
            loop {
                match self.next_frame().await {
                    Some(AMQPFrame::Heartbeat) => {}
                    other => return other,
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the broker neither answered nor hung up within {within:?}"))
    }

    /// Everything the broker says until it closes the connection, heartbeats left out,
    /// within `within` (a hang guard). A `connection.close` is answered with close-ok,
    /// as a well-behaved client would, so the broker may end the connection.
    pub async fn answers_until_closed(&mut self, within: Duration) -> Vec<String> {
        let mut answers = Vec::new();
        let ended = tokio::time::timeout(within, async {
            while let Some(frame) = self.next_frame().await {
                if let AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Close(_)),
                ) = frame
                {
                    self.send(&connection_close_ok()).await;
                }
                if frame != AMQPFrame::Heartbeat {
                    answers.push(describe(&frame));
                }
            }
        })
        .await;
        assert!(
            ended.is_ok(),
            "the connection was still open after {within:?}; the broker said {answers:?}"
        );
        answers
    }
}

pub fn encode(frame: &AMQPFrame) -> Vec<u8> {
    cookie_factory::gen_simple(gen_frame(frame), Vec::new()).expect("the frame encodes")
}

fn on_channel_0(method: connection::AMQPMethod) -> AMQPFrame {
    AMQPFrame::Method(0, AMQPClass::Connection(method))
}

/// PLAIN as guest with `password`, declaring `authentication_failure_close` as lapin and
/// pika do (without it RabbitMQ does not say why it hangs up).
pub fn start_ok(password: &str) -> AMQPFrame {
    start_ok_as("guest", password)
}

/// PLAIN as `user` with `password`, as [`start_ok`].
pub fn start_ok_as(user: &str, password: &str) -> AMQPFrame {
    let mut capabilities = FieldTable::default();
    capabilities.insert(
        "authentication_failure_close".into(),
        AMQPValue::Boolean(true),
    );
    let mut properties = FieldTable::default();
    properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    on_channel_0(connection::AMQPMethod::StartOk(connection::StartOk {
        client_properties: properties,
        mechanism: "PLAIN".into(),
        response: format!("\0{user}\0{password}").into(),
        locale: "en_US".into(),
    }))
}

pub fn tune_ok(heartbeat: u16) -> AMQPFrame {
    tune_ok_with(2_047, heartbeat)
}

/// tune-ok settling on `channel_max` channels.
pub fn tune_ok_with(channel_max: u16, heartbeat: u16) -> AMQPFrame {
    on_channel_0(connection::AMQPMethod::TuneOk(connection::TuneOk {
        channel_max,
        frame_max: FRAME_MAX,
        heartbeat,
    }))
}

pub fn connection_open(vhost: &str) -> AMQPFrame {
    on_channel_0(connection::AMQPMethod::Open(connection::Open {
        virtual_host: vhost.into(),
    }))
}

pub fn connection_close_ok() -> AMQPFrame {
    on_channel_0(connection::AMQPMethod::CloseOk(connection::CloseOk {}))
}

pub fn channel_open(id: u16) -> AMQPFrame {
    AMQPFrame::Method(
        id,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    )
}

#[allow(dead_code, reason = "only some of the brokers' cases use it")]
pub fn channel_close(id: u16) -> AMQPFrame {
    AMQPFrame::Method(
        id,
        AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    )
}

pub fn channel_close_ok(id: u16) -> AMQPFrame {
    AMQPFrame::Method(
        id,
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
    )
}

/// basic.publish to `queue` through the default exchange.
pub fn publish(id: u16, queue: &str) -> AMQPFrame {
    AMQPFrame::Method(
        id,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: queue.into(),
            mandatory: false,
            immediate: false,
        })),
    )
}

/// A content header announcing a body of `body_size` bytes.
pub fn content_header(id: u16, body_size: u64) -> AMQPFrame {
    content_header_with(id, body_size, BasicProperties::default())
}

/// A content header announcing a body of `body_size` bytes, with `properties`.
pub fn content_header_with(id: u16, body_size: u64, properties: BasicProperties) -> AMQPFrame {
    AMQPFrame::Header(
        id,
        AMQPContentHeader {
            class_id: 60,
            body_size,
            properties,
        },
    )
}

/// A whole message to `exchange` with `key`: publish, header with `properties`, body.
pub fn message(
    id: u16,
    exchange: &str,
    key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Vec<AMQPFrame> {
    vec![
        method(
            id,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: exchange.into(),
                routing_key: key.into(),
                mandatory: false,
                immediate: false,
            })),
        ),
        content_header_with(id, body.len() as u64, properties),
        AMQPFrame::Body(id, body.to_vec()),
    ]
}

fn method(id: u16, method: AMQPClass) -> AMQPFrame {
    AMQPFrame::Method(id, method)
}

/// exchange.declare of a durable exchange of `kind`, or a passive one.
pub fn exchange_declare(id: u16, name: &str, kind: &str, passive: bool) -> AMQPFrame {
    method(
        id,
        AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
            exchange: name.into(),
            kind: kind.into(),
            passive,
            durable: true,
            auto_delete: false,
            internal: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    )
}

pub fn exchange_delete(id: u16, name: &str) -> AMQPFrame {
    method(
        id,
        AMQPClass::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
            exchange: name.into(),
            if_unused: false,
            nowait: false,
        })),
    )
}

/// queue.declare: `""` for a server-named one; exclusive ones are auto-deleted too.
pub fn queue_declare(id: u16, name: &str, exclusive: bool) -> AMQPFrame {
    method(
        id,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: name.into(),
            passive: false,
            durable: !exclusive,
            exclusive,
            auto_delete: exclusive,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    )
}

pub fn queue_bind(id: u16, queue: &str, exchange: &str, key: &str) -> AMQPFrame {
    method(
        id,
        AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
            queue: queue.into(),
            exchange: exchange.into(),
            routing_key: key.into(),
            nowait: false,
            arguments: FieldTable::default(),
        })),
    )
}

pub fn queue_purge(id: u16, queue: &str) -> AMQPFrame {
    method(
        id,
        AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
            queue: queue.into(),
            nowait: false,
        })),
    )
}

pub fn queue_delete(id: u16, queue: &str) -> AMQPFrame {
    method(
        id,
        AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
            queue: queue.into(),
            if_unused: false,
            if_empty: false,
            nowait: false,
        })),
    )
}

/// basic.consume without acknowledgements.
pub fn basic_consume(id: u16, queue: &str) -> AMQPFrame {
    method(
        id,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: queue.into(),
            consumer_tag: "".into(),
            no_local: false,
            no_ack: true,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    )
}

/// basic.consume with acknowledgements, under `tag`.
#[allow(dead_code, reason = "only some of the brokers' cases use it")]
pub fn basic_consume_acked(id: u16, queue: &str, tag: &str) -> AMQPFrame {
    method(
        id,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: queue.into(),
            consumer_tag: tag.into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    )
}

#[allow(dead_code, reason = "only some of the brokers' cases use it")]
pub fn basic_cancel(id: u16, tag: &str) -> AMQPFrame {
    method(
        id,
        AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
            consumer_tag: tag.into(),
            nowait: false,
        })),
    )
}

#[allow(dead_code, reason = "only some of the brokers' cases use it")]
pub fn basic_ack(id: u16, delivery_tag: u64, multiple: bool) -> AMQPFrame {
    method(
        id,
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag,
            multiple,
        })),
    )
}

/// basic.get without acknowledgement.
pub fn basic_get(id: u16, queue: &str) -> AMQPFrame {
    method(
        id,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: queue.into(),
            no_ack: true,
        })),
    )
}

pub fn confirm_select(id: u16) -> AMQPFrame {
    method(
        id,
        AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false,
        })),
    )
}

/// A frame as the cases compare it: the method's name, and for a close its code, text
/// and the method it blames.
pub fn describe(frame: &AMQPFrame) -> String {
    let AMQPFrame::Method(id, method) = frame else {
        return format!("{frame}");
    };
    let on = if *id == 0 {
        String::new()
    } else {
        format!(" on {id}")
    };
    match method {
        AMQPClass::Connection(connection::AMQPMethod::Close(close)) => format!(
            "connection.close {} {} ({}, {})",
            close.reply_code, close.reply_text, close.class_id, close.method_id
        ),
        AMQPClass::Channel(channel::AMQPMethod::Close(close)) => format!(
            "channel.close{on} {} {} ({}, {})",
            close.reply_code, close.reply_text, close.class_id, close.method_id
        ),
        AMQPClass::Connection(connection::AMQPMethod::Start(_)) => "connection.start".into(),
        AMQPClass::Connection(connection::AMQPMethod::Tune(_)) => "connection.tune".into(),
        AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => "connection.open-ok".into(),
        AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)) => format!("channel.open-ok{on}"),
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => format!("channel.close-ok{on}"),
        AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(_)) => {
            format!("exchange.declare-ok{on}")
        }
        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_)) => format!("queue.declare-ok{on}"),
        AMQPClass::Queue(queue::AMQPMethod::BindOk(_)) => format!("queue.bind-ok{on}"),
        AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)) => format!("basic.consume-ok{on}"),
        AMQPClass::Basic(basic::AMQPMethod::CancelOk(_)) => format!("basic.cancel-ok{on}"),
        AMQPClass::Basic(basic::AMQPMethod::Nack(_)) => format!("basic.nack{on}"),
        AMQPClass::Queue(queue::AMQPMethod::DeleteOk(_)) => format!("queue.delete-ok{on}"),
        AMQPClass::Basic(basic::AMQPMethod::Ack(_)) => format!("basic.ack{on}"),
        AMQPClass::Basic(basic::AMQPMethod::Deliver(deliver)) => {
            format!(
                "basic.deliver{on} {} {}",
                deliver.exchange, deliver.routing_key
            )
        }
        AMQPClass::Basic(basic::AMQPMethod::GetOk(get)) => {
            format!("basic.get-ok{on} {} {}", get.exchange, get.routing_key)
        }
        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_)) => format!("confirm.select-ok{on}"),
        other => format!(
            "method {}.{}{on}",
            other.get_amqp_class_id(),
            other.get_amqp_method_id()
        ),
    }
}
