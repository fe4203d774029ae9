//! The targets on JSON: device messages, capabilities and arguments, API bodies. Each
//! input is either raw bytes (the parsers' own edge cases) or a valid example changed
//! in a few places (what gets past the parser to the checks behind it).

use std::collections::BTreeMap;

use arbitrary::Unstructured;
use protocol::{
    Capabilities, DeviceMessage, ServerMessage,
    api::{HistoryQuery, LiveParams, LiveRequest, SendCommand},
    artifact::NewArtifact,
    fleet::DeviceQuery,
    job::NewJob,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

use crate::{Finding, guarded, json as values};

/// Valid messages of every type a device or a server sends, as PROTOCOL.md shows them.
fn message_examples() -> Vec<Value> {
    vec![
        json!({"v": 1, "type": "hello", "device_id": "gw-1", "session_id": "s-1",
               "inbox": "amq.gen-abc", "kind": "gateway", "firmware": "1.2.0",
               "heartbeat_ms": 5000, "capabilities": capabilities_example()}),
        json!({"v": 1, "type": "heartbeat", "device_id": "gw-1", "session_id": "s-1"}),
        json!({"v": 1, "type": "bye", "device_id": "gw-1", "session_id": "s-1", "reason": "stop"}),
        json!({"v": 1, "type": "delivered", "command_id": "c-1", "session_id": "s-1"}),
        json!({"v": 1, "type": "progress", "command_id": "c-1", "session_id": "s-1",
               "percent": 50, "message": "half"}),
        json!({"v": 1, "type": "reply", "command_id": "c-1", "session_id": "s-1",
               "outcome": {"status": "ok", "result": {"on": true}}}),
        json!({"v": 1, "type": "reply", "command_id": "c-1", "session_id": "s-1",
               "outcome": {"status": "error", "code": "busy", "message": "later"}}),
        json!({"v": 1, "type": "telemetry", "device_id": "gw-1", "session_id": "s-1",
               "metric": "temp", "value": 21.5, "ts_ms": 1_700_000_000_000u64}),
        json!({"v": 1, "type": "command", "command_id": "c-1", "name": "set",
               "args": {"on": true}, "timeout_ms": 30000}),
        json!({"v": 1, "type": "cancel", "command_id": "c-1"}),
        json!({"v": 1, "type": "announce"}),
        json!({"v": 1, "type": "watch", "replica": "r-1", "interval_ms": 1000, "lease_ms": 30000}),
        json!({"v": 1, "type": "unwatch", "replica": "r-1"}),
    ]
}

fn capabilities_example() -> Value {
    json!({
        "commands": [
            {"name": "toggle"},
            {"name": "set", "description": "Set it", "args": [
                {"name": "on", "type": "boolean", "required": true},
                {"name": "level", "type": "integer", "min": 0, "max": 100, "default": 50},
                {"name": "gain", "type": "number", "min": -1.5, "max": 1.5},
                {"name": "label", "type": "string", "max_len": 8},
                {"name": "mode", "type": "choice", "choices": ["eco", "fast"], "default": "eco"}
            ]}
        ],
        "metrics": [{"name": "temp", "unit": "°C", "min": -40.0, "max": 85.0}],
        "reporting": {"interval_ms": 5000, "fastest_ms": 500}
    })
}

/// `example`, changed in a few places: a value replaced, a key removed or added, at any
/// depth.
fn mutated(u: &mut Unstructured, mut example: Value) -> arbitrary::Result<Value> {
    for _ in 0..u.int_in_range(0..=4u8)? {
        // Walks down a few levels, then changes what it stands on.
        let mut at = &mut example;
        for _ in 0..u.int_in_range(0..=4u8)? {
            let keys: Vec<String> = match &*at {
                Value::Object(map) => map.keys().cloned().collect(),
                Value::Array(items) => (0..items.len()).map(|i| i.to_string()).collect(),
                _ => Vec::new(),
            };
            if keys.is_empty() {
                break;
            }
            let key = u.choose(&keys)?.clone();
            at = match at {
                Value::Object(map) => map.get_mut(&key).expect("a key it listed"),
                Value::Array(items) => &mut items[key.parse::<usize>().expect("an index")],
                _ => unreachable!("only objects and arrays have keys"),
            };
        }
        match (u.int_in_range(0..=2u8)?, &mut *at) {
            (0, Value::Object(map)) if !map.is_empty() => {
                let key = u.choose(&map.keys().cloned().collect::<Vec<_>>())?.clone();
                map.remove(&key);
            }
            (1, Value::Object(map)) => {
                map.insert(values::string(u)?, values::value(u, 2)?);
            }
            _ => *at = values::value(u, 2)?,
        }
    }
    Ok(example)
}

/// The input as bytes to parse: raw (first byte even) or one of `examples` changed in
/// a few places (first byte odd). Also what the HTTP tests send the API.
pub fn input_bytes(data: &[u8], examples: &[Value]) -> Vec<u8> {
    let Some((&mode, rest)) = data.split_first() else {
        return Vec::new();
    };
    if mode % 2 == 0 {
        return rest.to_vec();
    }
    let mut u = Unstructured::new(rest);
    let example = u
        .choose(examples)
        .cloned()
        .unwrap_or_else(|_| examples[0].clone());
    let value = mutated(&mut u, example.clone()).unwrap_or(example);
    serde_json::to_vec(&value).expect("a JSON value serializes")
}

/// What decodes must encode to the same message.
fn round_trips<T>(message: &T) -> Result<(), Finding>
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let again = protocol::decode::<T>(&protocol::encode(message))
        .map_err(|e| format!("{message:?} encodes to something it cannot decode: {e}"))?;
    if &again != message {
        return Err(format!("{message:?} came back as {again:?}"));
    }
    Ok(())
}

/// A message off the wire, decoded as what devices send and as what servers send.
pub fn device_message(data: &[u8]) -> Result<(), Finding> {
    guarded(|| {
        let bytes = input_bytes(data, &message_examples());
        if let Ok(message) = protocol::decode::<DeviceMessage>(&bytes) {
            round_trips(&message)?;
            if let DeviceMessage::Hello(hello) = &message {
                // What the browser builds its forms from must check what it announced.
                let args = BTreeMap::new();
                for spec in &hello.capabilities.commands {
                    let _ = spec.validate(&args);
                }
                // What servers do with a hello: check it, then cut its text.
                let problems = hello.problems();
                let mut cut = hello.clone();
                cut.cut_text();
                if cut.kind.chars().count() > protocol::device::MAX_KIND
                    || cut.firmware.chars().count() > protocol::device::MAX_FIRMWARE
                {
                    return Err(format!("{cut:?} was not cut to its limits"));
                }
                if problems.is_empty() != cut.problems().is_empty() {
                    return Err(format!("cutting the text of {hello:?} changed its verdict"));
                }
            }
            let _ = message.answer_to();
        }
        if let Ok(message) = protocol::decode::<ServerMessage>(&bytes) {
            round_trips(&message)?;
        }
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = protocol::names::parse_presence_key(text);
            let _ = protocol::DeviceId::new(text);
        }
        Ok(())
    })
}

/// Capabilities a device announced and arguments someone sent: every command's
/// arguments through the validator, which must accept what it returned, unchanged.
pub fn capabilities(data: &[u8]) -> Result<(), Finding> {
    guarded(|| {
        let mut u = Unstructured::new(data);
        let announced = mutated(&mut u, capabilities_example()).unwrap_or(Value::Null);
        let Ok(capabilities) = serde_json::from_value::<Capabilities>(announced) else {
            return Ok(());
        };
        // Accepted by the announcement's rules: every name is one servers take, and
        // every default is a value its argument accepts.
        if capabilities.problems().is_empty() {
            for command in &capabilities.commands {
                if !protocol::capability::valid_command_name(&command.name) {
                    return Err(format!("{command:?} passed with a bad name"));
                }
                for spec in &command.args {
                    if let Some(default) = &spec.default
                        && spec.check(default).is_err()
                    {
                        return Err(format!("{spec:?} passed with a default it refuses"));
                    }
                }
            }
            for metric in &capabilities.metrics {
                if !protocol::capability::valid_metric_name(&metric.name) {
                    return Err(format!("{metric:?} passed with a bad name"));
                }
            }
        }
        let sent = values::object(&mut u, 2).unwrap_or_default();
        let mut args: BTreeMap<String, Value> = sent.into_iter().collect();
        // Often the names the spec has, so that checks of values run.
        for spec in capabilities.commands.iter().flat_map(|c| &c.args) {
            if u.ratio(1, 2).unwrap_or(false) {
                args.insert(
                    spec.name.clone(),
                    values::value(&mut u, 1).unwrap_or(Value::Null),
                );
            }
        }
        for command in &capabilities.commands {
            match command.validate(&args) {
                Ok(valid) => {
                    for name in valid.keys() {
                        if !command.args.iter().any(|spec| &spec.name == name) {
                            return Err(format!("{name} is not an argument of {command:?}"));
                        }
                    }
                    for spec in &command.args {
                        if spec.required && !valid.contains_key(&spec.name) {
                            return Err(format!("{} is required but missing", spec.name));
                        }
                    }
                    match command.validate(&valid) {
                        Ok(again) if again == valid => {}
                        other => {
                            return Err(format!(
                                "{command:?} accepted {args:?} as {valid:?}, then {other:?}"
                            ));
                        }
                    }
                }
                Err(error) => {
                    if error.to_string().is_empty() {
                        return Err(format!("{error:?} says nothing"));
                    }
                }
            }
        }
        Ok(())
    })
}

/// Decodes `bytes` as `T`; if it decodes and its own check passes, it must encode to
/// what decodes to the same value.
fn body<T>(bytes: &[u8], check: impl Fn(&T) -> Result<(), String>) -> Result<(), Finding>
where
    T: Serialize + DeserializeOwned + std::fmt::Debug,
{
    let Ok(decoded) = serde_json::from_slice::<T>(bytes) else {
        return Ok(());
    };
    if let Err(message) = check(&decoded) {
        if message.trim().is_empty() {
            return Err(format!("{decoded:?} refused without a message"));
        }
        return Ok(());
    }
    let encoded = serde_json::to_value(&decoded).map_err(|e| e.to_string())?;
    let again: T = serde_json::from_value(encoded.clone())
        .map_err(|e| format!("{decoded:?} encodes to {encoded} that does not decode: {e}"))?;
    let twice = serde_json::to_value(&again).map_err(|e| e.to_string())?;
    if twice != encoded {
        return Err(format!("{encoded} came back as {twice}"));
    }
    Ok(())
}

/// The API's request bodies and queries: the first byte says which.
pub fn api_body(data: &[u8]) -> Result<(), Finding> {
    let examples = [
        json!({"name": "set", "args": {"on": true, "level": 3}, "timeout_ms": 5000}),
        json!({"name": "night", "command": "set", "args": {"on": false},
               "targets": {"ids": ["gw-1"], "group": "north", "online": true},
               "concurrency": 5, "failure_threshold": {"percent": 10},
               "offline": "wait", "wait_ms": 60000, "timeout_ms": 30000}),
        json!({"search": "gw", "status": "online", "kind": "gateway", "sort": "id",
               "order": "desc", "offset": 0, "limit": 50}),
        json!({"metric": "temp", "from": 0, "to": 3_600_000, "max_points": 300}),
        json!({"type": "watch", "device_id": "gw-1"}),
        json!({"type": "fleet", "query": {"search": "gw", "limit": 20}}),
        json!({"watch": "gw-1,gw-2", "fleet": "{\"limit\":5}", "jobs": "j-1"}),
        json!({"name": "firmware", "version": "1.2.3", "arch": "aarch64"}),
    ];
    guarded(|| {
        let Some((&which, rest)) = data.split_first() else {
            return Ok(());
        };
        let bytes = input_bytes(rest, &examples);
        match which % 7 {
            0 => body::<SendCommand>(&bytes, |_| Ok(())),
            1 => body::<NewJob>(&bytes, NewJob::check),
            2 => body::<DeviceQuery>(&bytes, DeviceQuery::check),
            3 => body::<HistoryQuery>(&bytes, |_| Ok(())),
            4 => body::<LiveRequest>(&bytes, |_| Ok(())),
            5 => body::<LiveParams>(&bytes, |params| {
                if let Some(fleet) = &params.fleet
                    && let Ok(query) = serde_json::from_str::<DeviceQuery>(fleet)
                {
                    query.check()?;
                }
                Ok(())
            }),
            _ => body::<NewArtifact>(&bytes, NewArtifact::check),
        }
    })
}
