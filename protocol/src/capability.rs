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
    #[cfg_attr(feature = "schema", schemars(length(max = limits::COMMANDS)))]
    pub commands: Vec<CommandSpec>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(max = limits::METRICS)))]
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
    /// The usual interval between readings: at most a day, and not below `fastest_ms`.
    #[cfg_attr(
        feature = "schema",
        schemars(range(min = limits::FASTEST_REPORTING_MS, max = limits::SLOWEST_REPORTING_MS))
    )]
    pub interval_ms: u64,
    /// The shortest interval the device accepts while watched, at least 100 ms.
    #[cfg_attr(
        feature = "schema",
        schemars(range(min = limits::FASTEST_REPORTING_MS, max = limits::SLOWEST_REPORTING_MS))
    )]
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
    /// 1–64 ASCII letters, digits, `_`, `-` or `.`; unique among the device's commands.
    #[cfg_attr(
        feature = "schema",
        schemars(schema_with = "crate::schema::command_name")
    )]
    pub name: String,
    /// One line for people: shown beside the command's form. Servers cut a longer one
    /// to 200 characters.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(max = limits::DESCRIPTION)))]
    pub description: String,
    /// Unique by name.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(max = limits::ARGS)))]
    pub args: Vec<ArgSpec>,
}

/// One argument of a command.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArgSpec {
    /// 1–64 ASCII letters, digits, `_`, `-` or `.`.
    #[cfg_attr(
        feature = "schema",
        schemars(schema_with = "crate::schema::command_name")
    )]
    pub name: String,
    /// Servers cut a longer one to 200 characters.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(max = limits::DESCRIPTION)))]
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
        /// 1 to 256 strings of 1–128 characters.
        #[cfg_attr(
            feature = "schema",
            schemars(length(min = 1, max = limits::CHOICES), inner(length(min = 1, max = limits::CHOICE)))
        )]
        choices: Vec<String>,
    },
}

/// A metric a device reports.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSpec {
    /// One word of the routing key `telemetry.<device>.<metric>`: 1–64 ASCII letters,
    /// digits, `_` or `-` (no `.`, `*` or `#`, which the broker refuses in a device's
    /// key); unique among the device's metrics.
    #[cfg_attr(
        feature = "schema",
        schemars(schema_with = "crate::schema::routing_word")
    )]
    pub name: String,
    /// Unit for people, e.g. `°C`, `W`, `%`, `dBm`. Servers cut a longer one to 32
    /// characters.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(max = limits::UNIT)))]
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

/// What servers accept in a hello's capabilities: beyond these a hello is dropped (a
/// name a routing key or a form cannot carry, a default its own argument refuses, a
/// range that admits nothing), or, for text shown to people, cut to length.
pub mod limits {
    /// Longest command, argument or metric name, in bytes (names are ASCII).
    pub const NAME: usize = 64;
    /// Most commands a device may announce.
    pub const COMMANDS: usize = 256;
    /// Most arguments a command may have.
    pub const ARGS: usize = 64;
    /// Most metrics a device may announce.
    pub const METRICS: usize = 256;
    /// Most choices a `choice` argument may offer.
    pub const CHOICES: usize = 256;
    /// Longest choice, in characters.
    pub const CHOICE: usize = 128;
    /// Longest description (commands, arguments), in characters: longer ones are cut.
    pub const DESCRIPTION: usize = 200;
    /// Longest unit, in characters: longer ones are cut.
    pub const UNIT: usize = 32;
    /// The fastest reporting a device may announce, and its slowest usual pace (a day).
    pub const FASTEST_REPORTING_MS: u64 = 100;
    pub const SLOWEST_REPORTING_MS: u64 = 86_400_000;
}

/// A command or argument name: 1–64 ASCII letters, digits, `_`, `-` or `.`.
pub fn valid_command_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= limits::NAME
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

/// A metric name: 1–64 ASCII letters, digits, `_` or `-`. It is the last word of the
/// routing key `telemetry.<device>.<metric>`, so no `.`, `*` or `#`.
pub fn valid_metric_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= limits::NAME
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-'))
}

/// At most the first 64 characters of `text`, for messages about it (a hostile name
/// can be megabytes long).
pub fn shown(text: &str) -> &str {
    text.char_indices()
        .nth(64)
        .map_or(text, |(at, _)| &text[..at])
}

/// `text` cut to at most `max` characters (never inside a character).
pub fn cut(text: &mut String, max: usize) {
    if let Some((at, _)) = text.char_indices().nth(max) {
        text.truncate(at);
    }
}

impl Capabilities {
    /// Everything that makes servers drop a hello announcing these, each a sentence
    /// naming the command, argument or metric; empty if they are fine.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.commands.len() > limits::COMMANDS {
            problems.push(format!(
                "{} commands announced; at most {} are accepted",
                self.commands.len(),
                limits::COMMANDS
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for command in self.commands.iter().take(limits::COMMANDS) {
            if !seen.insert(command.name.as_str()) {
                problems.push(format!(
                    "command {:?} is announced twice",
                    shown(&command.name)
                ));
            }
            problems.extend(command.problems());
        }
        if self.metrics.len() > limits::METRICS {
            problems.push(format!(
                "{} metrics announced; at most {} are accepted",
                self.metrics.len(),
                limits::METRICS
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for metric in self.metrics.iter().take(limits::METRICS) {
            if !seen.insert(metric.name.as_str()) {
                problems.push(format!(
                    "metric {:?} is announced twice",
                    shown(&metric.name)
                ));
            }
            problems.extend(metric.problems());
        }
        if let Some(Reporting {
            interval_ms,
            fastest_ms,
        }) = self.reporting
            && !(limits::FASTEST_REPORTING_MS <= fastest_ms
                && fastest_ms <= interval_ms
                && interval_ms <= limits::SLOWEST_REPORTING_MS)
        {
            problems.push(format!(
                "reporting must have {} ≤ fastest_ms ≤ interval_ms ≤ {}: fastest_ms is \
                 {fastest_ms}, interval_ms {interval_ms}",
                limits::FASTEST_REPORTING_MS,
                limits::SLOWEST_REPORTING_MS
            ));
        }
        problems
    }

    /// Cuts the text shown to people (descriptions, units) to its limits.
    pub fn cut_text(&mut self) {
        for command in &mut self.commands {
            cut(&mut command.description, limits::DESCRIPTION);
            for arg in &mut command.args {
                cut(&mut arg.description, limits::DESCRIPTION);
            }
        }
        for metric in &mut self.metrics {
            cut(&mut metric.unit, limits::UNIT);
        }
    }
}

impl CommandSpec {
    /// Everything wrong with this command's announcement (see
    /// [`Capabilities::problems`]).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let name = shown(&self.name);
        if !valid_command_name(&self.name) {
            problems.push(format!(
                "command name {name:?} must be 1–64 ASCII letters, digits, `_`, `-` or `.`"
            ));
        }
        if self.args.len() > limits::ARGS {
            problems.push(format!(
                "command {name:?} has {} arguments; at most {} are accepted",
                self.args.len(),
                limits::ARGS
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for arg in self.args.iter().take(limits::ARGS) {
            if !seen.insert(arg.name.as_str()) {
                problems.push(format!(
                    "command {name:?}: argument {:?} is declared twice",
                    shown(&arg.name)
                ));
            }
            problems.extend(
                arg.problems()
                    .into_iter()
                    .map(|problem| format!("command {name:?}: {problem}")),
            );
        }
        problems
    }
}

impl ArgSpec {
    /// Everything wrong with this argument's declaration: its name, a range that admits
    /// nothing, choices, and a default it would itself refuse.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let name = shown(&self.name);
        if !valid_command_name(&self.name) {
            problems.push(format!(
                "argument name {name:?} must be 1–64 ASCII letters, digits, `_`, `-` or `.`"
            ));
        }
        match &self.kind {
            ArgKind::Integer {
                min: Some(min),
                max: Some(max),
            } if min > max => {
                problems.push(format!("argument {name:?}: min {min} is above max {max}"))
            }
            ArgKind::Number { min, max } => {
                if min.is_some_and(|x| !x.is_finite()) || max.is_some_and(|x| !x.is_finite()) {
                    problems.push(format!("argument {name:?}: min and max must be finite"));
                } else if let (Some(min), Some(max)) = (min, max)
                    && min > max
                {
                    problems.push(format!("argument {name:?}: min {min} is above max {max}"));
                }
            }
            ArgKind::Choice { choices } => {
                if choices.is_empty() {
                    problems.push(format!("argument {name:?} has no choices"));
                } else if choices.len() > limits::CHOICES {
                    problems.push(format!(
                        "argument {name:?} has {} choices; at most {} are accepted",
                        choices.len(),
                        limits::CHOICES
                    ));
                }
                if let Some(long) = choices
                    .iter()
                    .find(|choice| choice.is_empty() || choice.chars().count() > limits::CHOICE)
                {
                    problems.push(format!(
                        "argument {name:?}: choice {long:?} must be 1–{} characters",
                        limits::CHOICE
                    ));
                }
            }
            _ => {}
        }
        if let Some(default) = &self.default
            && let Err(error) = self.check(default)
        {
            problems.push(format!(
                "the default of argument {name:?} is refused: {error}"
            ));
        }
        problems
    }
}

impl MetricSpec {
    /// Everything wrong with this metric's announcement: its name (a routing-key word)
    /// and a range that admits nothing.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let name = shown(&self.name);
        if !valid_metric_name(&self.name) {
            problems.push(format!(
                "metric name {name:?} must be 1–64 ASCII letters, digits, `_` or `-` (no `.`: \
                 it is a word of the routing key telemetry.<device>.<metric>)"
            ));
        }
        if self.min.is_some_and(|x| !x.is_finite()) || self.max.is_some_and(|x| !x.is_finite()) {
            problems.push(format!("metric {name:?}: min and max must be finite"));
        } else if let (Some(min), Some(max)) = (self.min, self.max)
            && min > max
        {
            problems.push(format!("metric {name:?}: min {min} is above max {max}"));
        }
        problems
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

    fn announced(value: Value) -> Capabilities {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn well_formed_capabilities_have_no_problems() {
        let fine = announced(json!({
            "commands": [
                {"name": "set_target", "description": "Set the target temperature",
                 "args": [{"name": "celsius", "type": "number", "min": 5, "max": 30, "required": true}]},
                {"name": "reboot", "args": [{"name": "seconds", "type": "integer", "min": 1, "max": 60, "default": 3}]},
                {"name": "svc.restart-2", "args": [{"name": "unit", "type": "choice", "choices": ["a", "b"], "default": "a"},
                                                   {"name": "note", "type": "string", "max_len": 4, "default": "ok"},
                                                   {"name": "n", "type": "integer", "min": 3, "max": 3}]}
            ],
            "metrics": [{"name": "temperature", "unit": "°C", "min": -10, "max": 50}, {"name": "rssi_dBm-2"}],
            "reporting": {"interval_ms": 5000, "fastest_ms": 100}
        }));
        assert_eq!(fine.problems(), Vec::<String>::new());
        assert_eq!(set_target().problems(), Vec::<String>::new());
    }

    #[test]
    fn each_announcement_rule_is_enforced_with_a_clear_message() {
        let arg = |spec: Value| json!({"commands": [{"name": "c", "args": [spec]}]});
        let cases = [
            (
                json!({"metrics": [{"name": "cpu.load"}]}),
                "metric name \"cpu.load\" must be 1–64 ASCII letters, digits, `_` or `-` (no `.`",
            ),
            (
                json!({"metrics": [{"name": "#"}]}),
                "metric name \"#\" must be",
            ),
            (
                json!({"metrics": [{"name": "*"}]}),
                "metric name \"*\" must be",
            ),
            (
                json!({"metrics": [{"name": ""}]}),
                "metric name \"\" must be",
            ),
            (
                json!({"metrics": [{"name": "x".repeat(65)}]}),
                "must be 1–64",
            ),
            (
                json!({"metrics": [{"name": "t"}, {"name": "t"}]}),
                "metric \"t\" is announced twice",
            ),
            (
                json!({"metrics": [{"name": "t", "min": 5, "max": 1}]}),
                "metric \"t\": min 5 is above max 1",
            ),
            (
                json!({"commands": [{"name": "a b"}]}),
                "command name \"a b\" must be 1–64 ASCII letters, digits, `_`, `-` or `.`",
            ),
            (
                json!({"commands": [{"name": "é"}]}),
                "command name \"é\" must be",
            ),
            (
                json!({"commands": [{"name": "go"}, {"name": "go"}]}),
                "command \"go\" is announced twice",
            ),
            (
                arg(json!({"name": "x/y", "type": "boolean"})),
                "command \"c\": argument name \"x/y\" must be",
            ),
            (
                json!({"commands": [{"name": "c", "args": [{"name": "x", "type": "boolean"}, {"name": "x", "type": "integer"}]}]}),
                "command \"c\": argument \"x\" is declared twice",
            ),
            (
                arg(json!({"name": "x", "type": "integer", "min": 2, "max": 1})),
                "command \"c\": argument \"x\": min 2 is above max 1",
            ),
            (
                arg(json!({"name": "x", "type": "number", "min": 2.5, "max": 1})),
                "argument \"x\": min 2.5 is above max 1",
            ),
            (
                arg(json!({"name": "x", "type": "choice", "choices": []})),
                "argument \"x\" has no choices",
            ),
            (
                arg(json!({"name": "x", "type": "choice", "choices": [""]})),
                "argument \"x\": choice \"\" must be 1–128 characters",
            ),
            (
                arg(json!({"name": "x", "type": "choice", "choices": ["a"], "default": "b"})),
                "the default of argument \"x\" is refused: argument \"x\" must be one of a",
            ),
            (
                arg(json!({"name": "x", "type": "integer", "max": 9, "default": 10})),
                "the default of argument \"x\" is refused: argument \"x\" is 10, outside the allowed range ..=9",
            ),
            (
                arg(json!({"name": "x", "type": "integer", "default": 1.5})),
                "the default of argument \"x\" is refused: argument \"x\" must be a whole number",
            ),
            (
                arg(json!({"name": "x", "type": "string", "max_len": 2, "default": "abc"})),
                "is longer than 2 characters",
            ),
            (
                arg(json!({"name": "x", "type": "boolean", "default": "yes"})),
                "must be true or false",
            ),
            (
                json!({"reporting": {"interval_ms": 1000, "fastest_ms": 2000}}),
                "reporting must have 100 ≤ fastest_ms ≤ interval_ms ≤ 86400000: fastest_ms is 2000, interval_ms 1000",
            ),
            (
                json!({"reporting": {"interval_ms": 1000, "fastest_ms": 99}}),
                "reporting must have",
            ),
            (
                json!({"reporting": {"interval_ms": 86_400_001u64, "fastest_ms": 1000}}),
                "reporting must have",
            ),
        ];
        for (given, expected) in cases {
            let problems = announced(given.clone()).problems();
            assert!(
                problems.len() == 1 && problems[0].contains(expected),
                "for {given}: {problems:?}, expected one containing {expected:?}"
            );
        }
    }

    #[test]
    fn announcements_are_bounded_in_size_and_names_in_messages() {
        let many = |n: usize, what: &str| -> Capabilities {
            let names: Vec<Value> = (0..n)
                .map(|i| json!({"name": format!("n{i}"), "type": "boolean"}))
                .collect();
            match what {
                "commands" => announced(
                    json!({"commands": (0..n).map(|i| json!({"name": format!("n{i}")})).collect::<Vec<_>>()}),
                ),
                "metrics" => announced(
                    json!({"metrics": (0..n).map(|i| json!({"name": format!("n{i}")})).collect::<Vec<_>>()}),
                ),
                "args" => announced(json!({"commands": [{"name": "c", "args": names}]})),
                _ => announced(
                    json!({"commands": [{"name": "c", "args": [{"name": "x", "type": "choice", "choices": (0..n).map(|i| i.to_string()).collect::<Vec<_>>()}]}]}),
                ),
            }
        };
        for (what, limit) in [
            ("commands", limits::COMMANDS),
            ("metrics", limits::METRICS),
            ("args", limits::ARGS),
            ("choices", limits::CHOICES),
        ] {
            assert_eq!(
                many(limit, what).problems(),
                Vec::<String>::new(),
                "{limit} {what}"
            );
            let problems = many(limit + 1, what).problems();
            assert_eq!(problems.len(), 1, "{what}: {problems:?}");
            assert!(
                problems[0].contains(&format!("at most {limit}")),
                "{problems:?}"
            );
        }
        // A hostile name is shown by its start only.
        let long = announced(json!({"metrics": [{"name": "é".repeat(100_000)}]}));
        let problems = long.problems();
        assert!(problems[0].len() < 300, "{}", problems[0].len());
    }

    #[test]
    fn text_for_people_is_cut_to_its_limit_on_a_character_boundary() {
        let mut caps = announced(json!({
            "commands": [{"name": "c", "description": "é".repeat(300), "args": [{"name": "a", "type": "boolean", "description": "d".repeat(201)}]}],
            "metrics": [{"name": "m", "unit": "µ".repeat(40)}]
        }));
        caps.cut_text();
        assert_eq!(caps.commands[0].description, "é".repeat(200));
        assert_eq!(caps.commands[0].args[0].description, "d".repeat(200));
        assert_eq!(caps.metrics[0].unit, "µ".repeat(32));
        let mut short = String::from("ok");
        cut(&mut short, 5);
        assert_eq!(short, "ok");
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
