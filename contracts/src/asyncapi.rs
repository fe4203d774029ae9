//! The AsyncAPI 3.0 document of the device protocol, from the device's point of view:
//! its `send` operations are what a device publishes, its `receive` operations what
//! arrives in its inbox. Names come from `protocol::names`; each message's payload is
//! its schema file under `schemas/`.

use protocol::{
    PROTOCOL_VERSION,
    names::{
        CONTENT_TYPE, DISCOVER_EXCHANGE, EXCHANGES, ExchangeType, PRESENCE_EXCHANGE,
        TELEMETRY_EXCHANGE,
    },
    schema::{Sender, messages},
};
use serde_json::{Map, Value, json};

use crate::schema_path;

/// The AMQP bindings' version these bindings follow.
const BINDING_VERSION: &str = "0.3.0";
/// How a payload names its schema's format.
const SCHEMA_FORMAT: &str = "application/schema+json;version=draft-2020-12";

/// One line for each message in the document.
fn summary(name: &str) -> &'static str {
    match name {
        "hello" => {
            "A device announces itself: on every (re)connect, with a new session id and its new inbox, and again when asked by an announce."
        }
        "heartbeat" => "Still here, every heartbeat_ms; 3 missed make the device offline.",
        "bye" => "Going away now (shutdown, update, reboot).",
        "delivered" => "The command arrived; sent at once, before it is carried out.",
        "progress" => "The command is under way; any number of times.",
        "reply" => "The command's one and only outcome.",
        "telemetry" => "One reading of an announced metric.",
        "command" => {
            "Carry out a command: arguments validated against the announced capabilities, defaults filled in."
        }
        "cancel" => "Stop working on a command, if it is still running.",
        "announce" => {
            "Say hello again (same session): a server that just connected learns of the devices already online."
        }
        "watch" => {
            "Someone is watching: report every interval_ms (clamped to what was announced) for the next lease_ms."
        }
        "unwatch" => "The replica's last viewer left: its lease ends now.",
        _ => "",
    }
}

fn exchange(name: &str) -> Value {
    let (_, kind) = EXCHANGES
        .iter()
        .find(|(known, _)| *known == name)
        .expect("one of Tether's exchanges");
    let kind = match kind {
        ExchangeType::Topic => "topic",
        ExchangeType::Fanout => "fanout",
    };
    json!({
        "name": name,
        "type": kind,
        "durable": true,
        "autoDelete": false,
        "vhost": "/",
    })
}

fn message_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/messages/{name}") })
}

fn messages_of(names: &[&str]) -> Value {
    Value::Object(
        names
            .iter()
            .map(|name| ((*name).to_owned(), message_ref(name)))
            .collect(),
    )
}

fn channel_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/channels/{name}") })
}

fn channel_messages(channel: &str, names: &[&str]) -> Value {
    Value::Array(
        names
            .iter()
            .map(|name| json!({ "$ref": format!("#/channels/{channel}/messages/{name}") }))
            .collect(),
    )
}

/// A presence channel: `presence.{deviceId}.<kind>` on `tether.presence`.
fn presence_channel(kind: &str, description: &str) -> Value {
    json!({
        "address": format!("presence.{{deviceId}}.{kind}"),
        "title": format!("Presence: {kind}"),
        "description": description,
        "parameters": { "deviceId": { "$ref": "#/components/parameters/deviceId" } },
        "messages": messages_of(&[kind]),
        "bindings": { "amqp": {
            "is": "routingKey",
            "exchange": exchange(PRESENCE_EXCHANGE),
            "bindingVersion": BINDING_VERSION,
        } },
    })
}

/// What a device publishes: transient, signed with its own account.
fn device_publish() -> Value {
    json!({ "amqp": {
        "deliveryMode": 1,
        "mandatory": false,
        "x-user-id": "required: the device id (its broker user name). The broker refuses another; servers drop (as impostors) a message without it or speaking for another device.",
        "bindingVersion": BINDING_VERSION,
    } })
}

/// What a device takes from its inbox: acked by hand, obeyed only from a server account.
fn inbox_consume() -> Value {
    json!({ "amqp": {
        "ack": true,
        "x-user-id": "a server account (by default tether-server; the agent's TETHER_SERVER_ACCOUNTS). A message without user_id, or with another, is acked, logged and ignored: never run, never answered.",
        "bindingVersion": BINDING_VERSION,
    } })
}

fn operation(
    action: &str,
    channel: &str,
    names: &[&str],
    title: &str,
    description: &str,
    bindings: Value,
) -> Value {
    json!({
        "action": action,
        "channel": channel_ref(channel),
        "title": title,
        "description": description,
        "messages": channel_messages(channel, names),
        "bindings": bindings,
    })
}

fn components_messages() -> Value {
    let mut out = Map::new();
    for message in messages() {
        let name = message.name;
        let answer_or_command = matches!(
            name,
            "delivered" | "progress" | "reply" | "command" | "cancel"
        );
        let mut object = json!({
            "name": name,
            "title": name,
            "summary": summary(name),
            "contentType": CONTENT_TYPE,
            "payload": {
                "schemaFormat": SCHEMA_FORMAT,
                "schema": { "$ref": format!("./{}", schema_path(name)) },
            },
            "x-sender": match message.sender {
                Sender::Device => "device",
                Sender::Server => "server",
            },
        });
        if answer_or_command {
            object["correlationId"] = json!({ "$ref": "#/components/correlationIds/commandId" });
        }
        out.insert(name.to_owned(), object);
    }
    Value::Object(out)
}

/// The whole document.
pub fn asyncapi() -> Value {
    let device_sends: Vec<&str> = messages()
        .iter()
        .filter(|m| m.sender == Sender::Device)
        .map(|m| m.name)
        .collect();
    let server_sends: Vec<&str> = messages()
        .iter()
        .filter(|m| m.sender == Sender::Server)
        .map(|m| m.name)
        .collect();
    // Every message belongs to some channel below; `contracts` tests check it.
    debug_assert_eq!(device_sends.len() + server_sends.len(), messages().len());
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Tether device protocol",
            "version": PROTOCOL_VERSION.to_string(),
            "description": "How a device joins Tether over AMQP 0-9-1, as seen from the device: the send operations are what a device publishes, the receive operations what arrives in its inbox. Every body is a JSON object with the protocol version v and a type beside the message's own fields (content type application/json); each message's payload is a JSON Schema (2020-12) generated from the protocol crate's types, with the checks servers apply beyond them. PROTOCOL.md tells the same in prose: the connection steps, the identity rules, what servers check, a command's life.",
            "license": { "name": "Apache-2.0" },
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {
            "broker": {
                "host": "{host}:{port}",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "The broker the device is configured with (Tether's embedded broker, or RabbitMQ; several URLs for a cluster). A device connects out; it never listens.",
                "variables": {
                    "host": { "default": "localhost" },
                    "port": { "default": "5672" },
                },
                "security": [{ "$ref": "#/components/securitySchemes/deviceAccount" }],
            },
            "brokerTls": {
                "host": "{host}:{port}",
                "protocol": "amqps",
                "protocolVersion": "0.9.1",
                "description": "The same broker over TLS.",
                "variables": {
                    "host": { "default": "localhost" },
                    "port": { "default": "5671" },
                },
                "security": [{ "$ref": "#/components/securitySchemes/deviceAccount" }],
            },
        },
        "channels": {
            "hello": presence_channel("hello", "Published on every connection once the inbox is declared and consumed, with a new random session id; again (same session) when an announce arrives. The routing key's device must equal the body's device_id."),
            "heartbeat": presence_channel("heartbeat", "Every heartbeat_ms (at least 100). A server declares the device offline after 3 missed heartbeats."),
            "bye": presence_channel("bye", "Before the device goes away; a device SHOULD first answer every command it acknowledged."),
            "telemetry": {
                "address": "telemetry.{deviceId}.{metric}",
                "title": "Readings",
                "description": "One reading per message, of a metric announced in the hello. The routing key must be the reading's own (its device_id and metric). Servers drop readings of unannounced metrics, outside the announced range, beyond 50 a second per device, or more than 5 minutes ahead of their clock.",
                "parameters": {
                    "deviceId": { "$ref": "#/components/parameters/deviceId" },
                    "metric": { "$ref": "#/components/parameters/metric" },
                },
                "messages": messages_of(&["telemetry"]),
                "bindings": { "amqp": {
                    "is": "routingKey",
                    "exchange": exchange(TELEMETRY_EXCHANGE),
                    "bindingVersion": BINDING_VERSION,
                } },
            },
            "replies": {
                "address": "{replyTo}",
                "title": "Answers",
                "description": "A command's answers, published to the default exchange with routing key = the command's reply_to and its correlation_id, each with the device's current session_id: delivered at once, progress any number of times, exactly one reply.",
                "parameters": { "replyTo": { "$ref": "#/components/parameters/replyTo" } },
                "messages": messages_of(&["delivered", "progress", "reply"]),
                "bindings": { "amqp": {
                    "is": "routingKey",
                    "exchange": {
                        "name": "",
                        "type": "direct",
                        "durable": true,
                        "autoDelete": false,
                        "vhost": "/",
                    },
                    "bindingVersion": BINDING_VERSION,
                } },
            },
            "inbox": {
                "address": "{inbox}",
                "title": "The device's inbox",
                "description": "Declared by the device on every connection with an empty name (the broker names it amq.gen-…), exclusive, auto-delete, not durable: it lives exactly as long as the connection, so a command to a device that went away comes back unroutable. Bound to tether.discover. Servers publish to it through the default exchange, mandatory, with user_id = their account, reply_to = their reply queue, correlation_id = message_id = the command id, and expiration = the milliseconds left until the command's deadline (a command is never carried out late).",
                "parameters": { "inbox": { "$ref": "#/components/parameters/inbox" } },
                "messages": messages_of(&["command", "cancel", "watch", "unwatch"]),
                "bindings": { "amqp": {
                    "is": "queue",
                    "queue": {
                        "name": "{inbox}",
                        "durable": false,
                        "exclusive": true,
                        "autoDelete": true,
                        "vhost": "/",
                    },
                    "bindingVersion": BINDING_VERSION,
                } },
            },
            "discover": {
                "address": null,
                "title": "Discovery",
                "description": "A fanout exchange: a server that connects publishes an announce to it, which reaches every inbox bound to it (a device binds its inbox with an empty routing key). The device answers by publishing its hello again.",
                "messages": messages_of(&["announce"]),
                "bindings": { "amqp": {
                    "is": "routingKey",
                    "exchange": exchange(DISCOVER_EXCHANGE),
                    "bindingVersion": BINDING_VERSION,
                } },
            },
        },
        "operations": {
            "sendHello": operation("send", "hello", &["hello"], "Say hello", "On every connection, and when an announce arrives.", device_publish()),
            "sendHeartbeat": operation("send", "heartbeat", &["heartbeat"], "Heartbeat", "Every heartbeat_ms.", device_publish()),
            "sendBye": operation("send", "bye", &["bye"], "Say goodbye", "Before going away.", device_publish()),
            "sendTelemetry": operation("send", "telemetry", &["telemetry"], "Report a reading", "Announced metrics only, by the device's clock.", device_publish()),
            "sendAnswers": operation("send", "replies", &["delivered", "progress", "reply"], "Answer a command", "To the command's reply_to, with its correlation_id; delivered before the command is carried out. A command id is carried out at most once: a command that arrives again is answered delivered again and, if it ended, with the same outcome.", device_publish()),
            "receiveCommands": {
                "action": "receive",
                "channel": channel_ref("inbox"),
                "title": "Take commands",
                "description": "Commands and cancels, from a server account only.",
                "messages": channel_messages("inbox", &["command", "cancel"]),
                "bindings": inbox_consume(),
                "reply": {
                    "address": {
                        "description": "The command's reply_to property: the sending server replica's reply queue.",
                        "location": "$message.header#/reply_to",
                    },
                    "channel": channel_ref("replies"),
                    "messages": channel_messages("replies", &["delivered", "progress", "reply"]),
                },
            },
            "receiveWatch": operation("receive", "inbox", &["watch", "unwatch"], "Report faster while watched", "Only to devices that announced capabilities.reporting: report at the fastest interval any unexpired lease asks for, never faster than fastest_ms nor slower than interval_ms.", inbox_consume()),
            "receiveAnnounce": operation("receive", "discover", &["announce"], "Say hello again", "Arrives in the inbox through its binding to tether.discover; answer with the hello of the current session.", inbox_consume()),
        },
        "components": {
            "messages": components_messages(),
            "parameters": {
                "deviceId": { "description": "The device's id, also its broker user name: 1 to 64 ASCII letters, digits, '-' or '_'." },
                "metric": { "description": "An announced metric's name: one routing-key word (no '.', not '*' or '#')." },
                "inbox": { "description": "The broker-named queue (amq.gen-…) the device declared, sent in its hello." },
                "replyTo": { "description": "The command's reply_to property: a server replica's reply queue." },
            },
            "correlationIds": {
                "commandId": {
                    "description": "The AMQP correlation_id property: the command id, on a command and a cancel and on every answer about it.",
                    "location": "$message.header#/correlation_id",
                },
            },
            "securitySchemes": {
                "deviceAccount": {
                    "type": "userPassword",
                    "description": "SASL PLAIN: user = the device id, password = the secret an admin provisioned (tether-server device add ID, or POST /api/v1/devices). A device account may only check Tether's exchanges, declare and consume its own inbox and bind it to tether.discover, publish its own presence and readings, and publish answers through the default exchange.",
                },
            },
        },
    })
}
