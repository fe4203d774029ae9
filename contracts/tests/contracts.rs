//! The contracts under `contracts/` against the protocol's types, the AsyncAPI document
//! against itself, and PROTOCOL.md's examples against both the schemas and the decoder.

use std::{collections::BTreeSet, fs, path::Path};

use protocol::{
    Capabilities, DeviceMessage, ServerMessage,
    schema::{Sender, messages},
};
use serde_json::{Value, json};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The first line where `a` and `b` differ, for the failure message.
fn first_difference(a: &str, b: &str) -> String {
    let (mut left, mut right) = (a.lines(), b.lines());
    for number in 1.. {
        match (left.next(), right.next()) {
            (None, None) => break,
            (l, r) if l == r => continue,
            (l, r) => {
                return format!(
                    "line {number}: checked in {:?}, generated {:?}",
                    l.unwrap_or("<end of file>"),
                    r.unwrap_or("<end of file>")
                );
            }
        }
    }
    "only in the final newline".into()
}

#[test]
fn the_checked_in_contracts_are_what_the_types_generate() {
    let files = contracts::files();
    let mut problems = Vec::new();
    for file in &files {
        match fs::read_to_string(root().join(&file.path)) {
            Ok(text) if text == file.contents => {}
            Ok(text) => problems.push(format!(
                "contracts/{} differs ({})",
                file.path,
                first_difference(&text, &file.contents)
            )),
            Err(error) => problems.push(format!("contracts/{} is missing ({error})", file.path)),
        }
    }
    for entry in fs::read_dir(root().join(contracts::SCHEMAS_DIR)).expect("contracts/schemas/") {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let path = format!("{}/{name}", contracts::SCHEMAS_DIR);
        if !files.iter().any(|file| file.path == path) {
            problems.push(format!("contracts/{path} is no longer generated"));
        }
    }
    assert!(
        problems.is_empty(),
        "the contracts under contracts/ do not match the protocol's types:\n  {}\nrun `{}` to update them, review the diff and commit it",
        problems.join("\n  "),
        contracts::REGENERATE
    );
}

/// Every schema by file name, compiled.
struct Schemas(Vec<(String, jsonschema::Validator)>);

impl Schemas {
    fn new() -> Self {
        Self(
            contracts::schemas()
                .into_iter()
                .map(|(name, schema)| {
                    let validator = jsonschema::draft202012::new(&schema)
                        .unwrap_or_else(|e| panic!("{name}.schema.json does not compile: {e}"));
                    (name, validator)
                })
                .collect(),
        )
    }

    fn get(&self, name: &str) -> &jsonschema::Validator {
        &self
            .0
            .iter()
            .find(|(known, _)| known == name)
            .unwrap_or_else(|| panic!("no schema {name}.schema.json"))
            .1
    }

    /// Why `value` does not fit schema `name`, or `None` when it fits.
    fn refusal(&self, name: &str, value: &Value) -> Option<String> {
        let errors: Vec<String> = self
            .get(name)
            .iter_errors(value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        (!errors.is_empty()).then(|| errors.join("; "))
    }
}

fn sender_of(tag: &str) -> Option<Sender> {
    messages().iter().find(|m| m.name == tag).map(|m| m.sender)
}

/// What the protocol's own decoder says of a message body: `Err` with its reason.
fn decode(value: &Value) -> Result<(), String> {
    let bytes = serde_json::to_vec(value).unwrap();
    let tag = value.get("type").and_then(Value::as_str).unwrap_or("");
    match sender_of(tag) {
        Some(Sender::Server) => protocol::decode::<ServerMessage>(&bytes).map(drop),
        _ => protocol::decode::<DeviceMessage>(&bytes).map(drop),
    }
    .map_err(|e| e.to_string())
}

/// What the schemas say of a message body: its own message's schema and the schema of
/// everything its sender sends must agree; `Err` with the reasons.
fn validate(schemas: &Schemas, value: &Value) -> Result<(), String> {
    let tag = value.get("type").and_then(Value::as_str).unwrap_or("");
    let Some(sender) = sender_of(tag) else {
        return match schemas.refusal("device-message", value) {
            Some(why) => Err(why),
            None => panic!(
                "device-message.schema.json admits a message of unknown type {tag:?}: {value}"
            ),
        };
    };
    let any = match sender {
        Sender::Device => "device-message",
        Sender::Server => "server-message",
    };
    let (own, all) = (schemas.refusal(tag, value), schemas.refusal(any, value));
    assert_eq!(
        own.is_none(),
        all.is_none(),
        "{tag}.schema.json and {any}.schema.json disagree on {value}: {own:?} / {all:?}"
    );
    own.map_or(Ok(()), Err)
}

/// An example and the line of PROTOCOL.md it is on.
type Example = (usize, Value);

/// The JSON examples in PROTOCOL.md: every value in a ```json block (a block may hold
/// several, one per line) and every inline code span that is a message (`{"v":…}`).
/// Inline spans elided with `…` outside a string are not JSON; they are counted apart.
fn protocol_md_examples() -> (Vec<Example>, Vec<(usize, String)>) {
    let text = fs::read_to_string(root().join("../PROTOCOL.md")).expect("PROTOCOL.md");
    let (mut examples, mut elided) = (Vec::new(), Vec::new());
    let mut block: Option<(usize, String)> = None;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if let Some((start, body)) = &mut block {
            if line.trim_start().starts_with("```") {
                let values = serde_json::Deserializer::from_str(body).into_iter::<Value>();
                for value in values {
                    let value = value.unwrap_or_else(|e| {
                        panic!("PROTOCOL.md line {start}: a ```json block that is not JSON ({e}): fix the example")
                    });
                    examples.push((*start, value));
                }
                block = None;
            } else {
                body.push_str(line);
                body.push('\n');
            }
            continue;
        }
        if line.trim_start().starts_with("```json") {
            block = Some((number, String::new()));
            continue;
        }
        for (i, span) in line.split('`').enumerate() {
            if i % 2 == 1 && span.starts_with("{\"v\":") {
                match serde_json::from_str::<Value>(span) {
                    Ok(value) => examples.push((number, value)),
                    Err(_) if span.contains('…') => elided.push((number, span.to_owned())),
                    Err(e) => panic!(
                        "PROTOCOL.md line {number}: {span} is neither JSON ({e}) nor elided with …: fix the example"
                    ),
                }
            }
        }
    }
    assert!(block.is_none(), "PROTOCOL.md ends inside a ```json block");
    (examples, elided)
}

#[test]
fn protocol_md_examples_fit_the_schemas_and_decode() {
    let schemas = Schemas::new();
    let (examples, elided) = protocol_md_examples();
    let mut seen = BTreeSet::new();
    let mut problems = Vec::new();
    for (line, example) in &examples {
        if example.get("v").is_some() {
            let tag = example["type"].as_str().unwrap_or("?").to_owned();
            let (schema, decoder) = (validate(&schemas, example), decode(example));
            match (&schema, &decoder) {
                (Ok(()), Ok(())) => {}
                _ => problems.push(format!(
                    "line {line}, a {tag}: the schema says {schema:?}, the decoder {decoder:?}: {example}"
                )),
            }
            seen.insert(tag);
        } else if example.get("commands").is_some() || example.get("metrics").is_some() {
            let schema = schemas.refusal("capabilities", example);
            let decoder = serde_json::from_value::<Capabilities>(example.clone());
            if schema.is_some() || decoder.is_err() {
                problems.push(format!(
                    "line {line}, capabilities: the schema says {schema:?}, the decoder {:?}: {example}",
                    decoder.err().map(|e| e.to_string())
                ));
            }
            seen.insert("capabilities".to_owned());
        } else {
            problems.push(format!(
                "line {line}: an example that is neither a message (with \"v\") nor capabilities: teach this test what it is: {example}"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "PROTOCOL.md's examples and the contracts disagree:\n  {}\nfix the example in PROTOCOL.md, or the types (then run `{}`)",
        problems.join("\n  "),
        contracts::REGENERATE
    );
    // The extraction itself must keep finding what PROTOCOL.md shows, or this test
    // would pass by checking nothing.
    let expected = [
        "capabilities",
        "heartbeat",
        "bye",
        "command",
        "cancel",
        "announce",
        "delivered",
        "progress",
        "reply",
        "telemetry",
        "watch",
        "unwatch",
    ];
    let missing: Vec<_> = expected.iter().filter(|t| !seen.contains(**t)).collect();
    assert!(
        missing.is_empty(),
        "no example of {missing:?} found in PROTOCOL.md (found {seen:?}; {} elided): did an example move out of a ```json block or an inline `{{\"v\":…}}`?",
        elided.len()
    );
}

/// Bodies the decoder refuses: the schemas must refuse them too.
fn undecodable() -> Vec<(&'static str, Value)> {
    vec![
        (
            "no version",
            json!({"type": "heartbeat", "device_id": "d", "session_id": "s"}),
        ),
        (
            "version 2",
            json!({"v": 2, "type": "heartbeat", "device_id": "d", "session_id": "s"}),
        ),
        ("unknown type", json!({"v": 1, "type": "dance"})),
        (
            "no type",
            json!({"v": 1, "device_id": "d", "session_id": "s"}),
        ),
        (
            "a dot in a device id",
            json!({"v": 1, "type": "heartbeat", "device_id": "a.b", "session_id": "s"}),
        ),
        (
            "a '#' in a device id",
            json!({"v": 1, "type": "heartbeat", "device_id": "#", "session_id": "s"}),
        ),
        (
            "an empty device id",
            json!({"v": 1, "type": "heartbeat", "device_id": "", "session_id": "s"}),
        ),
        (
            "a device id of 65",
            json!({"v": 1, "type": "heartbeat", "device_id": "x".repeat(65), "session_id": "s"}),
        ),
        (
            "a non-ASCII device id",
            json!({"v": 1, "type": "bye", "device_id": "é", "session_id": "s"}),
        ),
        (
            "a hello without its inbox",
            json!({"v": 1, "type": "hello", "device_id": "d", "session_id": "s", "kind": "k", "firmware": "1", "heartbeat_ms": 1000}),
        ),
        (
            "a negative heartbeat",
            json!({"v": 1, "type": "hello", "device_id": "d", "session_id": "s", "inbox": "q", "kind": "k", "firmware": "1", "heartbeat_ms": -5}),
        ),
        (
            "an argument of unknown type",
            json!({"v": 1, "type": "hello", "device_id": "d", "session_id": "s", "inbox": "q", "kind": "k", "firmware": "1", "heartbeat_ms": 1000, "capabilities": {"commands": [{"name": "c", "args": [{"name": "a", "type": "colour"}]}]}}),
        ),
        (
            "a choice without choices",
            json!({"v": 1, "type": "hello", "device_id": "d", "session_id": "s", "inbox": "q", "kind": "k", "firmware": "1", "heartbeat_ms": 1000, "capabilities": {"commands": [{"name": "c", "args": [{"name": "a", "type": "choice"}]}]}}),
        ),
        (
            "a metric without a name",
            json!({"v": 1, "type": "hello", "device_id": "d", "session_id": "s", "inbox": "q", "kind": "k", "firmware": "1", "heartbeat_ms": 1000, "capabilities": {"metrics": [{"unit": "W"}]}}),
        ),
        (
            "a reading that is text",
            json!({"v": 1, "type": "telemetry", "device_id": "d", "session_id": "s", "metric": "t", "value": "21", "ts_ms": 1_764_000_000_000u64}),
        ),
        (
            "a reading without a time",
            json!({"v": 1, "type": "telemetry", "device_id": "d", "session_id": "s", "metric": "t", "value": 21}),
        ),
        (
            "a percent of 300",
            json!({"v": 1, "type": "progress", "command_id": "c", "session_id": "s", "percent": 300}),
        ),
        (
            "an outcome of unknown status",
            json!({"v": 1, "type": "reply", "command_id": "c", "session_id": "s", "outcome": {"status": "maybe"}}),
        ),
        (
            "an error without its message",
            json!({"v": 1, "type": "reply", "command_id": "c", "session_id": "s", "outcome": {"status": "error", "code": "busy"}}),
        ),
        (
            "an error code that is a number",
            json!({"v": 1, "type": "reply", "command_id": "c", "session_id": "s", "outcome": {"status": "error", "code": 5, "message": "m"}}),
        ),
        (
            "a command without a timeout",
            json!({"v": 1, "type": "command", "command_id": "c", "name": "n"}),
        ),
        (
            "arguments as a list",
            json!({"v": 1, "type": "command", "command_id": "c", "name": "n", "args": [1], "timeout_ms": 1000}),
        ),
        (
            "a cancel without its command",
            json!({"v": 1, "type": "cancel"}),
        ),
        (
            "a watch without a lease",
            json!({"v": 1, "type": "watch", "replica": "r", "interval_ms": 1000}),
        ),
    ]
}

/// Bodies the decoder takes that are outside the contract: servers drop them after
/// decoding, or never send them, or serde takes them only by leniency (a struct read
/// from an array). The schemas say what servers accept and send, so they refuse these.
fn refused_after_decoding() -> Vec<(&'static str, Value)> {
    let hello = |heartbeat_ms: u64, inbox: &str, metric: &str| json!({"v": 1, "type": "hello", "device_id": "d", "session_id": "s", "inbox": inbox, "kind": "k", "firmware": "1", "heartbeat_ms": heartbeat_ms, "capabilities": {"metrics": [{"name": metric}]}});
    let reading = |metric: &str, ts_ms: u64| json!({"v": 1, "type": "telemetry", "device_id": "d", "session_id": "s", "metric": metric, "value": 1.5, "ts_ms": ts_ms});
    vec![
        ("a heartbeat under 100 ms", hello(99, "q", "t")),
        ("a hello without an inbox name", hello(1000, "", "t")),
        ("a metric with a dot", hello(1000, "q", "a.b")),
        ("a metric named '#'", hello(1000, "q", "#")),
        (
            "a reading of a metric with a dot",
            reading("a.b", 1_764_000_000_000),
        ),
        (
            "a reading of a metric named '*'",
            reading("*", 1_764_000_000_000),
        ),
        ("a reading from before clocks were set", reading("t", 0)),
        (
            "a percent over 100",
            json!({"v": 1, "type": "progress", "command_id": "c", "session_id": "s", "percent": 101}),
        ),
        (
            "a command with a timeout of 50 ms",
            json!({"v": 1, "type": "command", "command_id": "c", "name": "n", "timeout_ms": 50}),
        ),
        (
            "capabilities as a list (serde reads a struct from an array)",
            json!({"v": 1, "type": "hello", "device_id": "d", "session_id": "s", "inbox": "q", "kind": "k", "firmware": "1", "heartbeat_ms": 1000, "capabilities": []}),
        ),
        (
            "a metric as a list (serde reads a struct from an array)",
            json!({"v": 1, "type": "hello", "device_id": "d", "session_id": "s", "inbox": "q", "kind": "k", "firmware": "1", "heartbeat_ms": 1000, "capabilities": {"metrics": [["t", "W", 0.0, 1.0]]}}),
        ),
        (
            "a command with a timeout of an hour",
            json!({"v": 1, "type": "command", "command_id": "c", "name": "n", "timeout_ms": 3_600_000}),
        ),
        ("a metric with a space", hello(1000, "q", "cpu load")),
        (
            "a metric of 65 characters",
            hello(1000, "q", &"m".repeat(65)),
        ),
        (
            "a session id that is not one word",
            json!({"v": 1, "type": "hello", "device_id": "d", "session_id": "a.b", "inbox": "q", "kind": "k", "firmware": "1", "heartbeat_ms": 1000}),
        ),
        (
            "an inbox name longer than an AMQP short string",
            hello(1000, &"q".repeat(256), "t"),
        ),
        (
            "a command name with a space",
            json!({"v": 1, "type": "hello", "device_id": "d", "session_id": "s", "inbox": "q", "kind": "k", "firmware": "1", "heartbeat_ms": 1000, "capabilities": {"commands": [{"name": "go now"}]}}),
        ),
        (
            "a choice argument without choices",
            json!({"v": 1, "type": "hello", "device_id": "d", "session_id": "s", "inbox": "q", "kind": "k", "firmware": "1", "heartbeat_ms": 1000, "capabilities": {"commands": [{"name": "go", "args": [{"name": "x", "type": "choice", "choices": []}]}]}}),
        ),
        (
            "an empty choice",
            json!({"v": 1, "type": "hello", "device_id": "d", "session_id": "s", "inbox": "q", "kind": "k", "firmware": "1", "heartbeat_ms": 1000, "capabilities": {"commands": [{"name": "go", "args": [{"name": "x", "type": "choice", "choices": [""]}]}]}}),
        ),
        (
            "reporting faster than 100 ms",
            json!({"v": 1, "type": "hello", "device_id": "d", "session_id": "s", "inbox": "q", "kind": "k", "firmware": "1", "heartbeat_ms": 1000, "capabilities": {"reporting": {"interval_ms": 1000, "fastest_ms": 50}}}),
        ),
        (
            "257 metrics",
            json!({"v": 1, "type": "hello", "device_id": "d", "session_id": "s", "inbox": "q", "kind": "k", "firmware": "1", "heartbeat_ms": 1000, "capabilities": {"metrics": (0..257).map(|i| json!({"name": format!("m{i}")})).collect::<Vec<_>>()}}),
        ),
    ]
}

#[test]
fn hostile_bodies_are_refused_by_the_schemas_as_by_the_servers() {
    let schemas = Schemas::new();
    let mut problems = Vec::new();
    for (what, body) in undecodable() {
        if decode(&body).is_ok() {
            problems.push(format!("{what}: the decoder takes it now; move it to refused_after_decoding or drop it: {body}"));
        }
        if validate(&schemas, &body).is_ok() {
            problems.push(format!(
                "{what}: the decoder refuses it but the schemas admit it: {body}"
            ));
        }
    }
    for (what, body) in refused_after_decoding() {
        if let Err(e) = decode(&body) {
            problems.push(format!(
                "{what}: the decoder refuses it now ({e}); move it to undecodable: {body}"
            ));
        }
        if validate(&schemas, &body).is_ok() {
            problems.push(format!(
                "{what}: servers refuse it but the schemas admit it: {body}"
            ));
        }
        // A hello servers drop by its own rules: the rules must say so.
        if let Ok(DeviceMessage::Hello(hello)) =
            protocol::decode::<DeviceMessage>(&serde_json::to_vec(&body).unwrap())
            && !what.contains("serde reads")
            && hello.problems().is_empty()
        {
            problems.push(format!(
                "{what}: Hello::problems finds nothing wrong, so servers take it: {body}"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the schemas admit what Tether refuses:\n  {}\nadd the rule to the type's schema (protocol/src/schema.rs, or a schemars attribute on the field), then run `{}`",
        problems.join("\n  "),
        contracts::REGENERATE
    );
}

#[test]
fn what_the_rust_side_encodes_fits_the_schemas() {
    let schemas = Schemas::new();
    let capabilities: Capabilities = serde_json::from_value(json!({
        "commands": [
            {"name": "set", "description": "Set it", "args": [
                {"name": "on", "type": "boolean", "required": true},
                {"name": "n", "type": "integer", "min": -3, "max": 9, "default": 2},
                {"name": "x", "type": "number", "min": 0.5},
                {"name": "s", "type": "string", "max_len": 8},
                {"name": "c", "type": "choice", "choices": ["a", "b"]}]},
            {"name": "toggle"}],
        "metrics": [{"name": "power", "unit": "W", "min": 0.0, "max": 3000.0}, {"name": "up"}],
        "reporting": {"interval_ms": 5000, "fastest_ms": 1000}
    }))
    .unwrap();
    let bodies = [
        json!({"type": "hello", "device_id": "sw-1", "session_id": "s1", "inbox": "amq.gen-abc", "kind": "switch", "firmware": "1.2.3", "heartbeat_ms": 2000, "capabilities": capabilities}),
        json!({"type": "heartbeat", "device_id": "sw-1", "session_id": "s1"}),
        json!({"type": "bye", "device_id": "sw-1", "session_id": "s1", "reason": "update"}),
        json!({"type": "delivered", "command_id": "c-1", "session_id": "s1"}),
        json!({"type": "progress", "command_id": "c-1", "session_id": "s1"}),
        json!({"type": "progress", "command_id": "c-1", "session_id": "s1", "percent": 100, "message": "done"}),
        json!({"type": "reply", "command_id": "c-1", "session_id": "s1", "outcome": {"status": "ok"}}),
        json!({"type": "reply", "command_id": "c-1", "session_id": "s1", "outcome": {"status": "error", "code": "overheated", "message": "hot"}}),
        json!({"type": "telemetry", "device_id": "sw-1", "session_id": "s1", "metric": "power", "value": -0.5, "ts_ms": 1_700_000_000_000u64}),
    ];
    let mut problems = Vec::new();
    for body in bodies {
        // Through the types and back out, as the agent would send it.
        let message: DeviceMessage = serde_json::from_value(body.clone()).unwrap();
        let encoded: Value = serde_json::from_slice(&protocol::encode(&message)).unwrap();
        if let Err(why) = validate(&schemas, &encoded) {
            problems.push(format!("{encoded}: {why}"));
        }
    }
    let server = [
        json!({"type": "command", "command_id": "c-9", "name": "set", "args": {"on": true}, "timeout_ms": 10_000}),
        json!({"type": "cancel", "command_id": "c-9"}),
        json!({"type": "announce"}),
        json!({"type": "watch", "replica": "r1", "interval_ms": 1_000, "lease_ms": 30_000}),
        json!({"type": "unwatch", "replica": "r1"}),
    ];
    for body in server {
        let message: ServerMessage = serde_json::from_value(body).unwrap();
        let encoded: Value = serde_json::from_slice(&protocol::encode(&message)).unwrap();
        if let Err(why) = validate(&schemas, &encoded) {
            problems.push(format!("{encoded}: {why}"));
        }
    }
    assert!(
        problems.is_empty(),
        "messages the Rust side sends do not fit the schemas:\n  {}\nthe schemas are stricter than the types: fix the rule in protocol/src/schema.rs or the field's schemars attribute, then run `{}`",
        problems.join("\n  "),
        contracts::REGENERATE
    );
}

/// Every `$ref` under `value`.
fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("$ref", Value::String(target)) => out.push(target),
                    _ => refs(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| refs(item, out)),
        _ => {}
    }
}

#[test]
fn the_asyncapi_document_holds_together() {
    let document = contracts::asyncapi();
    let files: BTreeSet<String> = contracts::files().into_iter().map(|f| f.path).collect();
    let mut targets = Vec::new();
    refs(&document, &mut targets);
    let mut problems = Vec::new();
    for target in &targets {
        if let Some(pointer) = target.strip_prefix('#') {
            if document.pointer(pointer).is_none() {
                problems.push(format!("$ref {target} points nowhere"));
            }
        } else if let Some(path) = target.strip_prefix("./") {
            if !files.contains(path) {
                problems.push(format!("$ref {target} names no generated schema"));
            }
        } else {
            problems.push(format!("$ref {target} is neither local nor a schema file"));
        }
    }
    // Every message is carried by a channel and used by an operation.
    for message in messages() {
        let reference = format!("#/components/messages/{}", message.name);
        if !targets.contains(&reference.as_str()) {
            problems.push(format!("message {} is in no channel", message.name));
        }
        let used = document["operations"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|op| op["messages"].as_array().unwrap())
            .any(|m| {
                m["$ref"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!("/messages/{}", message.name))
            });
        if !used {
            problems.push(format!("message {} is in no operation", message.name));
        }
    }
    // Every exchange a channel names is one of Tether's, with its type.
    for (name, channel) in document["channels"].as_object().unwrap() {
        let Some(exchange) = channel.pointer("/bindings/amqp/exchange") else {
            continue;
        };
        let exchange_name = exchange["name"].as_str().unwrap();
        if exchange_name.is_empty() {
            continue;
        }
        let known = protocol::names::EXCHANGES
            .iter()
            .any(|(known, _)| *known == exchange_name);
        if !known {
            problems.push(format!(
                "channel {name}: {exchange_name} is not one of protocol::names::EXCHANGES"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "contracts/src/asyncapi.rs makes a broken document:\n  {}\nfix it there, then run `{}`",
        problems.join("\n  "),
        contracts::REGENERATE
    );
}

/// Where JSON Schema cannot follow the decoder, pinned so that a change is noticed:
/// JSON Schema compares numbers by value, so `5000.0` is an integer to it, while serde
/// refuses a fraction-shaped number for an integer field (and the envelope's `v`).
/// Devices that write integers as integers never meet this.
#[test]
fn the_known_gaps_between_json_schema_and_the_decoder_stay_known() {
    let schemas = Schemas::new();
    let gaps = [
        json!({"v": 1.0, "type": "heartbeat", "device_id": "d", "session_id": "s"}),
        json!({"v": 1, "type": "hello", "device_id": "d", "session_id": "s", "inbox": "q", "kind": "k", "firmware": "1", "heartbeat_ms": 5000.0}),
        json!({"v": 1, "type": "telemetry", "device_id": "d", "session_id": "s", "metric": "t", "value": 1, "ts_ms": 1_764_000_000_000.0}),
    ];
    for body in gaps {
        assert!(
            validate(&schemas, &body).is_ok() && decode(&body).is_err(),
            "{body}: no longer a gap between the schemas and the decoder (schema: {:?}, decoder: {:?}); \
             if the decoder now takes it, or the schema refuses it, drop it from this list",
            validate(&schemas, &body),
            decode(&body)
        );
    }
}
