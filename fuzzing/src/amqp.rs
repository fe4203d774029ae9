//! AMQP 0-9-1 frames built from the fuzzer's bytes: every method a client may send,
//! with names, arguments and properties drawn from the ones that matter to the broker
//! (Tether's own exchanges, device inboxes, server-named queues, topic patterns) and
//! values at the edges of their types, plus content that lies about its size and raw
//! bytes.

use amq_protocol::{
    frame::{AMQPContentHeader, AMQPFrame, gen_frame},
    protocol::{
        AMQPClass, BasicProperties, basic, channel, confirm, connection, exchange, queue, tx,
    },
    types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString},
};
use arbitrary::Arbitrary;

pub const PROTOCOL_HEADER: &[u8] = b"AMQP\x00\x00\x09\x01";
pub const FRAME_MAX: u32 = 131_072;

const QUEUES: &[&str] = &[
    "",
    "q0",
    "q1",
    "amq.gen-fuzz",
    "amq.q",
    "tether.telemetry.store",
    "fz-a",
    "fz-a.inbox",
    "missing",
];
const EXCHANGES: &[&str] = &[
    "",
    "amq.direct",
    "amq.topic",
    "amq.fanout",
    "amq.headers",
    "amq.match",
    "x0",
    "x1",
    "tether.presence",
    "tether.telemetry",
    "tether.discover",
    "tether.events",
    "missing",
];
const KINDS: &[&str] = &[
    "direct",
    "topic",
    "fanout",
    "headers",
    "x-consistent-hash",
    "",
];
const KEYS: &[&str] = &[
    "",
    "q0",
    "q1",
    "#",
    "*",
    "a.b",
    "a..b",
    "#.#",
    "*.*.*",
    "presence.fz-a.hello",
    "presence.fz-b.bye",
    "presence.#",
    "telemetry.fz-a.temp",
    "telemetry.#",
    "fz-a",
];
const TAGS: &[&str] = &["", "t0", "t1", "amq.ctag-1"];
const USERS: &[&str] = &["guest", "fz-a", "fz-b", ""];
const EXPIRATIONS: &[&str] = &[
    "0",
    "1",
    "60000",
    "",
    "abc",
    "-1",
    "1.5",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "99999999999999999999",
];
const ARGUMENT_KEYS: &[&str] = &[
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-queue-type",
    "x-single-active-consumer",
    "x-max-priority",
    "x-match",
    "alternate-exchange",
    "x-priority",
];
const TEXTS: &[&str] = &[
    "drop-head",
    "reject-publish",
    "reject-publish-dlx",
    "quorum",
    "classic",
    "stream",
    "all",
    "any",
    "x0",
    "",
];

fn pick<'a>(table: &[&'a str], at: u8) -> &'a str {
    table[usize::from(at) % table.len()]
}

/// An argument or header value, of every AMQP field type.
#[derive(Debug, Clone, Arbitrary)]
pub enum Field {
    Bool(bool),
    I8(i8),
    U8(u8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
    F64(f64),
    Text(u8),
    Bytes(Vec<u8>),
    Void,
    Timestamp(u64),
    Array(Vec<i64>),
    Table(Vec<(u8, i32)>),
}

impl Field {
    fn value(&self) -> AMQPValue {
        match self {
            Self::Bool(b) => AMQPValue::Boolean(*b),
            Self::I8(n) => AMQPValue::ShortShortInt(*n),
            Self::U8(n) => AMQPValue::ShortShortUInt(*n),
            Self::I16(n) => AMQPValue::ShortInt(*n),
            Self::U16(n) => AMQPValue::ShortUInt(*n),
            Self::I32(n) => AMQPValue::LongInt(*n),
            Self::U32(n) => AMQPValue::LongUInt(*n),
            Self::I64(n) => AMQPValue::LongLongInt(*n),
            Self::F32(x) => AMQPValue::Float(*x),
            Self::F64(x) => AMQPValue::Double(*x),
            Self::Text(at) => AMQPValue::LongString(pick(TEXTS, *at).into()),
            Self::Bytes(bytes) => AMQPValue::ByteArray(bytes.clone().into()),
            Self::Void => AMQPValue::Void,
            Self::Timestamp(t) => AMQPValue::Timestamp(*t),
            Self::Array(items) => AMQPValue::FieldArray(FieldArray::from(
                items
                    .iter()
                    .map(|n| AMQPValue::LongLongInt(*n))
                    .collect::<Vec<_>>(),
            )),
            Self::Table(entries) => AMQPValue::FieldTable(table(
                entries
                    .iter()
                    .map(|(key, n)| (*key, Field::I32(*n)))
                    .collect::<Vec<_>>()
                    .as_slice(),
            )),
        }
    }
}

fn table(entries: &[(u8, Field)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in entries {
        table.insert(pick(ARGUMENT_KEYS, *key).into(), value.value());
    }
    table
}

/// A message's properties.
#[derive(Debug, Clone, Arbitrary)]
pub struct Properties {
    expiration: Option<u8>,
    delivery_mode: Option<u8>,
    priority: Option<u8>,
    user_id: Option<u8>,
    reply_to: Option<u8>,
    correlation_id: Option<u8>,
    kind: Option<u8>,
    headers: Option<Vec<(u8, Field)>>,
}

impl Properties {
    fn build(&self) -> BasicProperties {
        let mut properties = BasicProperties::default();
        if let Some(at) = self.expiration {
            properties = properties.with_expiration(pick(EXPIRATIONS, at).into());
        }
        if let Some(mode) = self.delivery_mode {
            properties = properties.with_delivery_mode(mode);
        }
        if let Some(priority) = self.priority {
            properties = properties.with_priority(priority);
        }
        if let Some(at) = self.user_id {
            properties = properties.with_user_id(pick(USERS, at).into());
        }
        if let Some(at) = self.reply_to {
            properties = properties.with_reply_to(pick(QUEUES, at).into());
        }
        if let Some(at) = self.correlation_id {
            properties = properties.with_correlation_id(pick(TAGS, at).into());
        }
        if let Some(at) = self.kind {
            properties = properties.with_type(pick(TEXTS, at).into());
        }
        if let Some(headers) = &self.headers {
            properties = properties.with_headers(table(headers));
        }
        properties
    }
}

/// One thing a client does on a connection.
#[derive(Debug, Clone, Arbitrary)]
pub enum Step {
    ChannelOpen(u8),
    ChannelClose(u8),
    ChannelCloseOk(u8),
    Flow(u8, bool),
    ExchangeDeclare {
        ch: u8,
        name: u8,
        kind: u8,
        passive: bool,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        nowait: bool,
        arguments: Vec<(u8, Field)>,
    },
    ExchangeDelete {
        ch: u8,
        name: u8,
        if_unused: bool,
        nowait: bool,
    },
    ExchangeBind {
        ch: u8,
        destination: u8,
        source: u8,
        key: u8,
        nowait: bool,
        unbind: bool,
    },
    QueueDeclare {
        ch: u8,
        name: u8,
        passive: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        nowait: bool,
        arguments: Vec<(u8, Field)>,
    },
    QueueBind {
        ch: u8,
        queue: u8,
        exchange: u8,
        key: u8,
        nowait: bool,
        arguments: Vec<(u8, Field)>,
    },
    QueueUnbind {
        ch: u8,
        queue: u8,
        exchange: u8,
        key: u8,
    },
    QueuePurge {
        ch: u8,
        queue: u8,
        nowait: bool,
    },
    QueueDelete {
        ch: u8,
        queue: u8,
        if_unused: bool,
        if_empty: bool,
        nowait: bool,
    },
    Qos {
        ch: u8,
        prefetch: u16,
        global: bool,
    },
    Consume {
        ch: u8,
        queue: u8,
        tag: u8,
        no_local: bool,
        no_ack: bool,
        exclusive: bool,
        nowait: bool,
        arguments: Vec<(u8, Field)>,
    },
    Cancel {
        ch: u8,
        tag: u8,
        nowait: bool,
    },
    Publish {
        ch: u8,
        exchange: u8,
        key: u8,
        mandatory: bool,
        immediate: bool,
        properties: Properties,
        body: Vec<u8>,
        /// A size the content header announces instead of the body's.
        announced: Option<u32>,
        /// Bytes per body frame (0: one frame).
        split: u8,
    },
    Get {
        ch: u8,
        queue: u8,
        no_ack: bool,
    },
    Ack {
        ch: u8,
        tag: u8,
        multiple: bool,
    },
    Nack {
        ch: u8,
        tag: u8,
        multiple: bool,
        requeue: bool,
    },
    Reject {
        ch: u8,
        tag: u8,
        requeue: bool,
    },
    Recover {
        ch: u8,
        requeue: bool,
    },
    ConfirmSelect {
        ch: u8,
        nowait: bool,
    },
    TxSelect(u8),
    TxCommit(u8),
    TxRollback(u8),
    /// A content header with no publish before it.
    Header {
        ch: u8,
        size: u64,
    },
    /// A body frame with no header before it.
    Body {
        ch: u8,
        bytes: Vec<u8>,
    },
    Heartbeat,
    UpdateSecret,
    ConnectionClose,
    Raw(Vec<u8>),
}

fn channel_id(ch: u8) -> u16 {
    // Mostly the first few channels; now and then 0 (the connection's) or one past
    // any limit.
    match ch {
        250..=252 => 0,
        253..=255 => 2_048,
        _ => u16::from(ch % 4) + 1,
    }
}

fn delivery_tag(tag: u8) -> u64 {
    match tag {
        255 => u64::MAX,
        _ => u64::from(tag % 12),
    }
}

fn method(ch: u8, class: AMQPClass) -> AMQPFrame {
    AMQPFrame::Method(channel_id(ch), class)
}

/// The frames of `step`, encoded.
pub fn encode_step(step: &Step) -> Vec<u8> {
    let frames: Vec<AMQPFrame> = match step {
        Step::ChannelOpen(ch) => vec![method(
            *ch,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )],
        Step::ChannelClose(ch) => vec![method(
            *ch,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            })),
        )],
        Step::ChannelCloseOk(ch) => vec![method(
            *ch,
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
        )],
        Step::Flow(ch, active) => vec![method(
            *ch,
            AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow { active: *active })),
        )],
        Step::ExchangeDeclare {
            ch,
            name,
            kind,
            passive,
            durable,
            auto_delete,
            internal,
            nowait,
            arguments,
        } => vec![method(
            *ch,
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: pick(EXCHANGES, *name).into(),
                kind: pick(KINDS, *kind).into(),
                passive: *passive,
                durable: *durable,
                auto_delete: *auto_delete,
                internal: *internal,
                nowait: *nowait,
                arguments: table(arguments),
            })),
        )],
        Step::ExchangeDelete {
            ch,
            name,
            if_unused,
            nowait,
        } => vec![method(
            *ch,
            AMQPClass::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
                exchange: pick(EXCHANGES, *name).into(),
                if_unused: *if_unused,
                nowait: *nowait,
            })),
        )],
        Step::ExchangeBind {
            ch,
            destination,
            source,
            key,
            nowait,
            unbind,
        } => {
            let (destination, source, routing_key): (ShortString, ShortString, ShortString) = (
                pick(EXCHANGES, *destination).into(),
                pick(EXCHANGES, *source).into(),
                pick(KEYS, *key).into(),
            );
            let class = if *unbind {
                exchange::AMQPMethod::Unbind(exchange::Unbind {
                    destination,
                    source,
                    routing_key,
                    nowait: *nowait,
                    arguments: FieldTable::default(),
                })
            } else {
                exchange::AMQPMethod::Bind(exchange::Bind {
                    destination,
                    source,
                    routing_key,
                    nowait: *nowait,
                    arguments: FieldTable::default(),
                })
            };
            vec![method(*ch, AMQPClass::Exchange(class))]
        }
        Step::QueueDeclare {
            ch,
            name,
            passive,
            durable,
            exclusive,
            auto_delete,
            nowait,
            arguments,
        } => vec![method(
            *ch,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: pick(QUEUES, *name).into(),
                passive: *passive,
                durable: *durable,
                exclusive: *exclusive,
                auto_delete: *auto_delete,
                nowait: *nowait,
                arguments: table(arguments),
            })),
        )],
        Step::QueueBind {
            ch,
            queue: name,
            exchange,
            key,
            nowait,
            arguments,
        } => vec![method(
            *ch,
            AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: pick(QUEUES, *name).into(),
                exchange: pick(EXCHANGES, *exchange).into(),
                routing_key: pick(KEYS, *key).into(),
                nowait: *nowait,
                arguments: table(arguments),
            })),
        )],
        Step::QueueUnbind {
            ch,
            queue: name,
            exchange,
            key,
        } => vec![method(
            *ch,
            AMQPClass::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
                queue: pick(QUEUES, *name).into(),
                exchange: pick(EXCHANGES, *exchange).into(),
                routing_key: pick(KEYS, *key).into(),
                arguments: FieldTable::default(),
            })),
        )],
        Step::QueuePurge {
            ch,
            queue: name,
            nowait,
        } => vec![method(
            *ch,
            AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
                queue: pick(QUEUES, *name).into(),
                nowait: *nowait,
            })),
        )],
        Step::QueueDelete {
            ch,
            queue: name,
            if_unused,
            if_empty,
            nowait,
        } => vec![method(
            *ch,
            AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                queue: pick(QUEUES, *name).into(),
                if_unused: *if_unused,
                if_empty: *if_empty,
                nowait: *nowait,
            })),
        )],
        Step::Qos {
            ch,
            prefetch,
            global,
        } => vec![method(
            *ch,
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: *prefetch,
                global: *global,
            })),
        )],
        Step::Consume {
            ch,
            queue: name,
            tag,
            no_local,
            no_ack,
            exclusive,
            nowait,
            arguments,
        } => vec![method(
            *ch,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: pick(QUEUES, *name).into(),
                consumer_tag: pick(TAGS, *tag).into(),
                no_local: *no_local,
                no_ack: *no_ack,
                exclusive: *exclusive,
                nowait: *nowait,
                arguments: table(arguments),
            })),
        )],
        Step::Cancel { ch, tag, nowait } => vec![method(
            *ch,
            AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                consumer_tag: pick(TAGS, *tag).into(),
                nowait: *nowait,
            })),
        )],
        Step::Publish {
            ch,
            exchange,
            key,
            mandatory,
            immediate,
            properties,
            body,
            announced,
            split,
        } => {
            let mut frames = vec![method(
                *ch,
                AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                    exchange: pick(EXCHANGES, *exchange).into(),
                    routing_key: pick(KEYS, *key).into(),
                    mandatory: *mandatory,
                    immediate: *immediate,
                })),
            )];
            frames.push(AMQPFrame::Header(
                channel_id(*ch),
                AMQPContentHeader {
                    class_id: 60,
                    body_size: announced.map_or(body.len() as u64, u64::from),
                    properties: properties.build(),
                },
            ));
            let piece = if *split == 0 {
                body.len().max(1)
            } else {
                usize::from(*split)
            };
            for chunk in body.chunks(piece) {
                frames.push(AMQPFrame::Body(channel_id(*ch), chunk.to_vec()));
            }
            frames
        }
        Step::Get {
            ch,
            queue: name,
            no_ack,
        } => vec![method(
            *ch,
            AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: pick(QUEUES, *name).into(),
                no_ack: *no_ack,
            })),
        )],
        Step::Ack { ch, tag, multiple } => vec![method(
            *ch,
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: delivery_tag(*tag),
                multiple: *multiple,
            })),
        )],
        Step::Nack {
            ch,
            tag,
            multiple,
            requeue,
        } => vec![method(
            *ch,
            AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: delivery_tag(*tag),
                multiple: *multiple,
                requeue: *requeue,
            })),
        )],
        Step::Reject { ch, tag, requeue } => vec![method(
            *ch,
            AMQPClass::Basic(basic::AMQPMethod::Reject(basic::Reject {
                delivery_tag: delivery_tag(*tag),
                requeue: *requeue,
            })),
        )],
        Step::Recover { ch, requeue } => vec![method(
            *ch,
            AMQPClass::Basic(basic::AMQPMethod::Recover(basic::Recover {
                requeue: *requeue,
            })),
        )],
        Step::ConfirmSelect { ch, nowait } => vec![method(
            *ch,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: *nowait,
            })),
        )],
        Step::TxSelect(ch) => vec![method(
            *ch,
            AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {})),
        )],
        Step::TxCommit(ch) => vec![method(
            *ch,
            AMQPClass::Tx(tx::AMQPMethod::Commit(tx::Commit {})),
        )],
        Step::TxRollback(ch) => vec![method(
            *ch,
            AMQPClass::Tx(tx::AMQPMethod::Rollback(tx::Rollback {})),
        )],
        Step::Header { ch, size } => vec![AMQPFrame::Header(
            channel_id(*ch),
            AMQPContentHeader {
                class_id: 60,
                body_size: *size,
                properties: BasicProperties::default(),
            },
        )],
        Step::Body { ch, bytes } => vec![AMQPFrame::Body(channel_id(*ch), bytes.clone())],
        Step::Heartbeat => vec![AMQPFrame::Heartbeat],
        Step::UpdateSecret => vec![AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(
                connection::UpdateSecret {
                    new_secret: LongString::from("new"),
                    reason: "rotate".into(),
                },
            )),
        )],
        Step::ConnectionClose => vec![AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            })),
        )],
        Step::Raw(bytes) => return bytes.clone(),
    };
    frames.iter().flat_map(encode).collect()
}

pub fn encode(frame: &AMQPFrame) -> Vec<u8> {
    // A frame past the size the encoder can express is not sent (nothing a client
    // could send either).
    cookie_factory::gen_simple(gen_frame(frame), Vec::new()).unwrap_or_default()
}

/// The header and the login as `user`, pipelined: start-ok, tune-ok (no heartbeats,
/// `channel_max` channels), open.
pub fn login(user: &str, password: &str, channel_max: u16) -> Vec<u8> {
    let mut capabilities = FieldTable::default();
    capabilities.insert(
        "authentication_failure_close".into(),
        AMQPValue::Boolean(true),
    );
    let mut properties = FieldTable::default();
    properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    let frames = [
        connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: properties,
            mechanism: "PLAIN".into(),
            response: format!("\0{user}\0{password}").into(),
            locale: "en_US".into(),
        }),
        connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max,
            frame_max: FRAME_MAX,
            heartbeat: 0,
        }),
        connection::AMQPMethod::Open(connection::Open {
            virtual_host: "/".into(),
        }),
    ];
    let mut bytes = PROTOCOL_HEADER.to_vec();
    for method in frames {
        bytes.extend(encode(&AMQPFrame::Method(0, AMQPClass::Connection(method))));
    }
    bytes
}
