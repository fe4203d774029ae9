//! What a device says it can do: commands with typed arguments, and the metrics it
//! reports. The server validates every command against these before sending it, and
//! the browser builds its forms from them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Everything a device announces in its hello.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    #[serde(default)]
    pub commands: Vec<CommandSpec>,
    #[serde(default)]
    pub metrics: Vec<MetricSpec>,
    /// How often readings go out, and how fast they may be asked to: a device that
    /// announces this reports faster while someone watches it (see `ServerMessage::Watch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reporting: Option<Reporting>,
}

/// A device's reporting pace.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reporting {
    /// The usual interval between readings.
    pub interval_ms: u64,
    /// The shortest interval the device accepts while watched.
    pub fastest_ms: u64,
}

impl Capabilities {
    pub fn command(&self, name: &str) -> Option<&CommandSpec> {
        self.commands.iter().find(|spec| spec.name == name)
    }
}

/// One command a device accepts.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandSpec {
    pub name: String,
    /// One line for people: shown beside the command's form.
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub args: Vec<ArgSpec>,
}

/// One argument of a command.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArgSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(flatten)]
    pub kind: ArgKind,
    /// A required argument without a default must be given.
    #[serde(default)]
    pub required: bool,
    /// Used when the argument is not given. Must itself be valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
}

/// An argument's type and the values it allows.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ArgKind {
    Boolean,
    Integer {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<i64>,
    },
    Number {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<f64>,
    },
    String {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_len: Option<usize>,
    },
    Choice {
        choices: Vec<String>,
    },
}

/// A metric a device reports.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSpec {
    /// One word of the routing key `telemetry.<device>.<metric>`: no `.`, and not `*`
    /// or `#` (the broker refuses a device's reading under such a key).
    #[cfg_attr(
        feature = "schema",
        schemars(schema_with = "crate::schema::routing_word")
    )]
    pub name: String,
    /// Unit for people, e.g. `°C`, `W`, `%`, `dBm`.
    #[serde(default)]
    pub unit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

impl MetricSpec {
    /// Whether a reading fits what was announced: a finite number within the range.
    pub fn admits(&self, value: f64) -> bool {
        value.is_finite()
            && self.min.is_none_or(|min| value >= min)
            && self.max.is_none_or(|max| value <= max)
    }
}

/// Why a command's arguments are refused. The message names the argument and the rule.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ArgumentError {
    #[error("unknown argument \"{0}\"")]
    Unknown(String),
    #[error("missing required argument \"{0}\"")]
    Missing(String),
    #[error("argument \"{name}\" must be {expected}")]
    WrongType {
        name: String,
        expected: &'static str,
    },
    #[error("argument \"{name}\" is {value}, outside the allowed range {range}")]
    OutOfRange {
        name: String,
        value: String,
        range: String,
    },
    #[error("argument \"{name}\" is longer than {max_len} characters")]
    TooLong { name: String, max_len: usize },
    #[error("argument \"{name}\" must be one of {choices}")]
    NotAChoice { name: String, choices: String },
}

impl CommandSpec {
    /// Checks `args` against this command's argument specs and returns them with every
    /// default filled in. Unknown arguments are refused, so that typos do not pass silently.
    pub fn validate(
        &self,
        args: &BTreeMap<String, Value>,
    ) -> Result<BTreeMap<String, Value>, ArgumentError> {
        if let Some(unknown) = args
            .keys()
            .find(|name| !self.args.iter().any(|a| &a.name == *name))
        {
            return Err(ArgumentError::Unknown(unknown.clone()));
        }
        let mut valid = BTreeMap::new();
        for spec in &self.args {
            let value = match args.get(&spec.name).filter(|v| !v.is_null()) {
                Some(value) => value,
                None => match &spec.default {
                    Some(default) => default,
                    None if spec.required => return Err(ArgumentError::Missing(spec.name.clone())),
                    None => continue,
                },
            };
            spec.check(value)?;
            valid.insert(spec.name.clone(), value.clone());
        }
        Ok(valid)
    }
}

impl ArgSpec {
    /// Checks one value against this argument's type and bounds.
    pub fn check(&self, value: &Value) -> Result<(), ArgumentError> {
        let wrong_type = |expected| ArgumentError::WrongType {
            name: self.name.clone(),
            expected,
        };
        match &self.kind {
            ArgKind::Boolean => value
                .as_bool()
                .map(drop)
                .ok_or_else(|| wrong_type("true or false")),
            ArgKind::Integer { min, max } => {
                let n = value.as_i64().ok_or_else(|| wrong_type("a whole number"))?;
                self.in_range(n, *min, *max)
            }
            ArgKind::Number { min, max } => {
                let x = value.as_f64().ok_or_else(|| wrong_type("a number"))?;
                self.in_range(x, *min, *max)
            }
            ArgKind::String { max_len } => {
                let s = value.as_str().ok_or_else(|| wrong_type("text"))?;
                match max_len {
                    Some(max_len) if s.chars().count() > *max_len => Err(ArgumentError::TooLong {
                        name: self.name.clone(),
                        max_len: *max_len,
                    }),
                    _ => Ok(()),
                }
            }
            ArgKind::Choice { choices } => {
                let s = value.as_str().ok_or_else(|| wrong_type("text"))?;
                if choices.iter().any(|c| c == s) {
                    Ok(())
                } else {
                    Err(ArgumentError::NotAChoice {
                        name: self.name.clone(),
                        choices: choices.join(", "),
                    })
                }
            }
        }
    }

    fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
        &self,
        value: T,
        min: Option<T>,
        max: Option<T>,
    ) -> Result<(), ArgumentError> {
        let below = min.is_some_and(|min| value < min);
        let above = max.is_some_and(|max| value > max);
        if !below && !above {
            return Ok(());
        }
        let bound = |b: Option<T>| b.map_or_else(String::new, |b| b.to_string());
        Err(ArgumentError::OutOfRange {
            name: self.name.clone(),
            value: value.to_string(),
            range: format!("{}..={}", bound(min), bound(max)),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_metric_admits_finite_readings_within_its_range() {
        let spec = MetricSpec {
            name: "temp".into(),
            unit: "°C".into(),
            min: Some(-10.0),
            max: Some(50.0),
        };
        assert!(spec.admits(-10.0) && spec.admits(50.0) && spec.admits(21.5));
        assert!(!spec.admits(50.1) && !spec.admits(-11.0));
        assert!(!spec.admits(f64::NAN));
        let open = MetricSpec {
            min: None,
            max: None,
            ..spec
        };
        assert!(open.admits(1e9));
        assert!(!open.admits(f64::INFINITY));
    }

    fn set_target() -> CommandSpec {
        serde_json::from_value(json!({
            "name": "set_target",
            "description": "Set the target temperature",
            "args": [
                {"name": "celsius", "type": "number", "min": 5.0, "max": 30.0, "required": true},
                {"name": "mode", "type": "choice", "choices": ["eco", "comfort"], "default": "comfort"},
                {"name": "hold_minutes", "type": "integer", "min": 0, "max": 1440},
                {"name": "label", "type": "string", "max_len": 8},
                {"name": "quiet", "type": "boolean"}
            ]
        }))
        .unwrap()
    }

    fn args(value: Value) -> BTreeMap<String, Value> {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn valid_arguments_get_their_defaults() {
        let valid = set_target()
            .validate(&args(json!({"celsius": 21.5})))
            .unwrap();
        assert_eq!(valid, args(json!({"celsius": 21.5, "mode": "comfort"})));
    }

    #[test]
    fn each_rule_is_enforced_with_a_clear_message() {
        let cases = [
            (json!({}), "missing required argument \"celsius\""),
            (
                json!({"celsius": null}),
                "missing required argument \"celsius\"",
            ),
            (
                json!({"celsius": 40}),
                "argument \"celsius\" is 40, outside the allowed range 5..=30",
            ),
            (
                json!({"celsius": "warm"}),
                "argument \"celsius\" must be a number",
            ),
            (
                json!({"celsius": 20, "mode": "turbo"}),
                "argument \"mode\" must be one of eco, comfort",
            ),
            (
                json!({"celsius": 20, "hold_minutes": 1.5}),
                "argument \"hold_minutes\" must be a whole number",
            ),
            (
                json!({"celsius": 20, "hold_minutes": -1}),
                "argument \"hold_minutes\" is -1, outside the allowed range 0..=1440",
            ),
            (
                json!({"celsius": 20, "label": "far too long"}),
                "argument \"label\" is longer than 8 characters",
            ),
            (
                json!({"celsius": 20, "quiet": "yes"}),
                "argument \"quiet\" must be true or false",
            ),
            (
                json!({"celsius": 20, "colour": "red"}),
                "unknown argument \"colour\"",
            ),
        ];
        for (given, message) in cases {
            let error = set_target().validate(&args(given.clone())).unwrap_err();
            assert_eq!(error.to_string(), message, "for {given}");
        }
    }

    #[test]
    fn open_ranges_print_as_such() {
        let spec: CommandSpec = serde_json::from_value(json!({
            "name": "n", "args": [{"name": "x", "type": "integer", "min": 1}]
        }))
        .unwrap();
        let error = spec.validate(&args(json!({"x": 0}))).unwrap_err();
        assert_eq!(
            error.to_string(),
            "argument \"x\" is 0, outside the allowed range 1..="
        );
    }

    #[test]
    fn specs_round_trip() {
        let spec = set_target();
        let back: CommandSpec =
            serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
    }
}

/// The commands `tether-agent` has built in besides the actions a device declares. The
/// device page gives each a card of its own: a log viewer, and diagnostics reports kept
/// by the server.
pub mod builtin {
    /// The last lines of a configured log, optionally filtered and followed; the lines
    /// come as progress messages.
    pub const LOGS: &str = "logs";
    /// A report of the device, as the reply's result.
    pub const DIAGNOSTICS: &str = "diagnostics";
    /// A software update: download, verify, install, hand over to the new version (and
    /// roll back if it does not come back healthy).
    pub const UPDATE: &str = "update";
    /// Both, in the order the agent announces them.
    pub const ALL: &[&str] = &[LOGS, DIAGNOSTICS];
}
