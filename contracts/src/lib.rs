//! Tether's device protocol as open contracts, generated from `protocol`'s types:
//!
//! - `schemas/<message>.schema.json`: a JSON Schema (2020-12) for the body of every
//!   message a device sends or receives (`hello.schema.json`, …), one for any message
//!   each side sends (`device-message`, `server-message`), and one for a hello's
//!   `capabilities` alone;
//! - `asyncapi.yaml`: an AsyncAPI 3.0 document of the AMQP side (exchanges, routing
//!   keys, the inbox, replies), from the device's point of view, referencing those
//!   schemas.
//!
//! [`files`] makes them in memory; `cargo run -p contracts` writes them under
//! `contracts/`, and the crate's tests fail when the checked-in files differ, or when
//! an example in PROTOCOL.md disagrees with the schemas or with the decoder.

mod asyncapi;
mod yaml;

use serde_json::Value;

pub use asyncapi::asyncapi;
pub use yaml::to_yaml;

/// The command that rewrites every generated file.
pub const REGENERATE: &str = "cargo run -p contracts";

/// The folder, relative to `contracts/`, that holds the schemas.
pub const SCHEMAS_DIR: &str = "schemas";

/// One generated file: its path relative to `contracts/`, and its contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub path: String,
    pub contents: String,
}

/// The schema file of a message, relative to `contracts/`.
pub fn schema_path(name: &str) -> String {
    format!("{SCHEMAS_DIR}/{name}.schema.json")
}

/// Every schema by the name of its file (without `.schema.json`): one per message
/// (named by its `type`), then `device-message`, `server-message` and `capabilities`.
pub fn schemas() -> Vec<(String, Value)> {
    let mut schemas: Vec<(String, Value)> = protocol::schema::messages()
        .into_iter()
        .map(|message| (message.name.to_owned(), message.schema.to_value()))
        .collect();
    schemas.push((
        "device-message".into(),
        protocol::schema::device_message().to_value(),
    ));
    schemas.push((
        "server-message".into(),
        protocol::schema::server_message().to_value(),
    ));
    schemas.push((
        "capabilities".into(),
        protocol::schema::capabilities().to_value(),
    ));
    for (_, schema) in &mut schemas {
        unwrap_descriptions(schema);
        if let Value::Object(object) = schema {
            object.insert(
                "$comment".into(),
                Value::from(format!(
                    "Generated from the protocol crate's types; do not edit: run `{REGENERATE}` to update."
                )),
            );
        }
    }
    schemas
}

/// Every generated file, in a stable order and with stable contents.
pub fn files() -> Vec<File> {
    let mut files: Vec<File> = schemas()
        .into_iter()
        .map(|(name, schema)| File {
            path: schema_path(&name),
            contents: pretty(&schema),
        })
        .collect();
    files.push(File {
        path: "asyncapi.yaml".into(),
        contents: format!(
            "# Generated from the protocol crate by `{REGENERATE}`; do not edit.\n{}",
            to_yaml(&sorted(&asyncapi()))
        ),
    });
    files
}

/// JSON as written to the schema files: keys sorted, two-space indents, a final newline.
fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(&sorted(value)).expect("JSON values serialize");
    text.push('\n');
    text
}

/// `value` with every object's keys in order, whether or not some dependency turned on
/// serde_json's `preserve_order` (then the order would be insertion order, which may
/// differ between builds with and without dev-dependencies).
pub fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(key, value)| (key.clone(), sorted(value)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// Descriptions come from doc comments, hard-wrapped at 90 columns: joins each
/// paragraph's lines into one.
fn unwrap_descriptions(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                match value {
                    Value::String(text) if key == "description" => {
                        *text = text
                            .split("\n\n")
                            .map(|paragraph| paragraph.split('\n').collect::<Vec<_>>().join(" "))
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    _ => unwrap_descriptions(value),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}
