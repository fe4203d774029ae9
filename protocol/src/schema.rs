//! JSON Schemas (2020-12) of the device messages, derived from the types with
//! `schemars` and completed with what servers check beyond the types: a device id's
//! alphabet and length, metric names that are one routing-key word, a heartbeat of at
//! least 100 ms, a reading's plausible time, the command timeouts servers send.
//!
//! Behind the feature `schema`, so the browser bundle does not carry it. `contracts/`
//! writes these schemas to `contracts/schemas/` (with the AsyncAPI document that
//! references them) and its tests check the files, and PROTOCOL.md's examples, against
//! them.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, generate::SchemaSettings, json_schema};
use serde_json::{Map, Value, json};

use crate::{
    AnnounceRequest, Bye, CancelRequest, Capabilities, CommandRequest, Delivered, DeviceId,
    DeviceMessage, ErrorCode, Heartbeat, Hello, PROTOCOL_VERSION, Progress, Reply, ServerMessage,
    TelemetrySample, UnwatchRequest, WatchRequest,
};

/// Who sends a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// A device, to the presence or telemetry exchange or to a `reply_to` queue.
    Device,
    /// A server, to a device's inbox (or to every inbox through `tether.discover`).
    Server,
}

/// One message of the device protocol and its schema.
#[derive(Debug, Clone)]
pub struct MessageSchema {
    /// Its `type` tag, e.g. `hello`; also the schema file's name.
    pub name: &'static str,
    pub sender: Sender,
    /// The whole body: the envelope's `v` and `type` beside the message's own fields.
    pub schema: Schema,
}

/// A generator for the draft Tether's schemas use (2020-12).
pub fn generator() -> SchemaGenerator {
    SchemaSettings::draft2020_12().into_generator()
}

/// Every message of the device protocol, in the order PROTOCOL.md tells them: what a
/// device sends, then what a server sends it.
pub fn messages() -> Vec<MessageSchema> {
    fn one<T: JsonSchema>(name: &'static str, sender: Sender) -> MessageSchema {
        MessageSchema {
            name,
            sender,
            schema: enveloped(generator().into_root_schema_for::<T>(), Some(name)),
        }
    }
    vec![
        one::<Hello>("hello", Sender::Device),
        one::<Heartbeat>("heartbeat", Sender::Device),
        one::<Bye>("bye", Sender::Device),
        one::<Delivered>("delivered", Sender::Device),
        one::<Progress>("progress", Sender::Device),
        one::<Reply>("reply", Sender::Device),
        one::<TelemetrySample>("telemetry", Sender::Device),
        one::<CommandRequest>("command", Sender::Server),
        one::<CancelRequest>("cancel", Sender::Server),
        one::<AnnounceRequest>("announce", Sender::Server),
        one::<WatchRequest>("watch", Sender::Server),
        one::<UnwatchRequest>("unwatch", Sender::Server),
    ]
}

/// Any message a device sends (one of [`messages`]' device messages), in its envelope.
pub fn device_message() -> Schema {
    enveloped(generator().into_root_schema_for::<DeviceMessage>(), None)
}

/// Any message a server sends to a device, in its envelope.
pub fn server_message() -> Schema {
    enveloped(generator().into_root_schema_for::<ServerMessage>(), None)
}

/// What a device announces in its hello (`capabilities`), on its own.
pub fn capabilities() -> Schema {
    generator().into_root_schema_for::<Capabilities>()
}

/// `schema` with the envelope's `v` (and, for one message, its `type` tag) required
/// beside its own fields.
fn enveloped(mut schema: Schema, tag: Option<&str>) -> Schema {
    let object = schema
        .as_object_mut()
        .expect("a message's root schema is an object");
    let mut properties = Map::new();
    properties.insert(
        "v".into(),
        json!({
            "description": "The protocol version: a server drops any message with another.",
            "const": PROTOCOL_VERSION,
        }),
    );
    if let Some(tag) = tag {
        properties.insert("type".into(), json!({ "const": tag }));
        object.insert("title".into(), Value::from(tag));
    }
    if let Some(Value::Object(own)) = object.remove("properties") {
        properties.extend(own);
    }
    let mut required: Vec<Value> = ["v"]
        .into_iter()
        .chain(tag.map(|_| "type"))
        .map(Value::from)
        .collect();
    if let Some(Value::Array(own)) = object.remove("required") {
        required.extend(own);
    }
    object.insert("type".into(), Value::from("object"));
    object.insert("properties".into(), Value::Object(properties));
    object.insert("required".into(), Value::Array(required));
    schema
}

/// One word of a routing key (a metric's name in `telemetry.<device>.<metric>`): 1–64
/// ASCII letters, digits, `_` or `-`, as servers check it in a hello (so no `.`, and
/// not `*` or `#`, which the broker's topic permissions refuse).
pub fn routing_word(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": crate::capability::limits::NAME,
        "pattern": "^[A-Za-z0-9_-]+$",
    })
}

/// A command's or argument's name: 1–64 ASCII letters, digits, `_`, `-` or `.`.
pub fn command_name(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": crate::capability::limits::NAME,
        "pattern": "^[A-Za-z0-9_.-]+$",
    })
}

impl JsonSchema for DeviceId {
    fn schema_name() -> Cow<'static, str> {
        "DeviceId".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A device's name, unique in a fleet: 1 to 64 ASCII letters, digits, '-' and '_', so it is one word in a routing key and safe in a URL path. It is also the device's broker user name.",
            "type": "string",
            "minLength": 1,
            "maxLength": DeviceId::MAX_LEN,
            "pattern": "^[A-Za-z0-9_-]+$",
        })
    }
}

impl JsonSchema for ErrorCode {
    fn schema_name() -> Cow<'static, str> {
        "ErrorCode".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let known: Vec<Value> = [
            ErrorCode::Failed,
            ErrorCode::UnknownCommand,
            ErrorCode::InvalidArguments,
            ErrorCode::Cancelled,
            ErrorCode::Busy,
        ]
        .iter()
        .map(|code| serde_json::to_value(code).expect("an error code serializes"))
        .collect();
        json_schema!({
            "description": "Why a device did not carry out a command: failed (it tried, it did not work), unknown_command and invalid_arguments (shown as rejected), cancelled, busy. Any other string is a code from a newer device, treated as failed.",
            "anyOf": [
                { "enum": known },
                { "type": "string" },
            ],
        })
    }
}
