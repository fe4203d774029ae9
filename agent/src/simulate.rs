//! Simulated devices with real behaviour, for demos, tests and benchmarks.
//!
//! - `thermostat`: `set_target` (5–30 °C) and `get_state`; the temperature drifts
//!   toward the target over time.
//! - `switch`: `on`, `off`, `toggle`, `get_state`.
//! - `gateway`: `reboot` (takes seconds, reports progress, goes away and comes back),
//!   `collect_logs` (streams lines as progress), `echo` (with a requested delay, to
//!   exercise timeouts) and `fail` (always fails, to exercise errors).

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use protocol::{ArgKind, ArgSpec, Capabilities, CommandSpec, MetricSpec};
use serde_json::{Value, json};

use crate::{Command, CommandContext, CommandError, Handler};

/// The simulated kinds, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Thermostat,
    Switch,
    Gateway,
}

impl Kind {
    pub const ALL: [Self; 3] = [Self::Thermostat, Self::Switch, Self::Gateway];

    pub fn name(self) -> &'static str {
        match self {
            Self::Thermostat => "thermostat",
            Self::Switch => "switch",
            Self::Gateway => "gateway",
        }
    }
}

/// A simulated device of any kind.
#[derive(Debug)]
pub enum Simulated {
    Thermostat(Thermostat),
    Switch(Switch),
    Gateway(Gateway),
}

impl Simulated {
    pub fn new(kind: Kind) -> Self {
        match kind {
            Kind::Thermostat => Self::Thermostat(Thermostat::default()),
            Kind::Switch => Self::Switch(Switch::default()),
            Kind::Gateway => Self::Gateway(Gateway::default()),
        }
    }
}

impl Handler for Simulated {
    fn capabilities(&self) -> Capabilities {
        match self {
            Self::Thermostat(_) => Thermostat::capabilities(),
            Self::Switch(_) => Switch::capabilities(),
            Self::Gateway(_) => Gateway::capabilities(),
        }
    }

    async fn handle(
        &self,
        command: Command,
        context: CommandContext,
    ) -> Result<Value, CommandError> {
        match self {
            Self::Thermostat(device) => device.handle(&command),
            Self::Switch(device) => device.handle(&command),
            Self::Gateway(device) => device.handle(&command, &context).await,
        }
    }

    fn readings(&self) -> Vec<(String, f64)> {
        match self {
            Self::Thermostat(device) => {
                vec![(
                    "temperature".into(),
                    round(device.temperature() + noise(0.05)),
                )]
            }
            Self::Switch(device) => vec![("power".into(), device.power())],
            Self::Gateway(device) => device.readings(),
        }
    }
}

/// Uniform noise in `-amplitude..amplitude`.
fn noise(amplitude: f64) -> f64 {
    (fastrand::f64() * 2.0 - 1.0) * amplitude
}

fn command(name: &str, description: &str, args: Vec<ArgSpec>) -> CommandSpec {
    CommandSpec {
        name: name.into(),
        description: description.into(),
        args,
    }
}

fn arg(
    name: &str,
    description: &str,
    kind: ArgKind,
    required: bool,
    default: Option<Value>,
) -> ArgSpec {
    ArgSpec {
        name: name.into(),
        description: description.into(),
        kind,
        required,
        default,
    }
}

fn metric(name: &str, unit: &str, min: f64, max: f64) -> MetricSpec {
    MetricSpec {
        name: name.into(),
        unit: unit.into(),
        min: Some(min),
        max: Some(max),
    }
}

fn unknown(command: &Command) -> CommandError {
    CommandError {
        code: protocol::ErrorCode::UnknownCommand,
        message: format!("unknown command \"{}\"", command.name),
    }
}

/// A thermostat: the room temperature approaches the target by 10% of the gap a second.
#[derive(Debug)]
pub struct Thermostat {
    state: Mutex<ThermostatState>,
}

#[derive(Debug)]
struct ThermostatState {
    target: f64,
    temperature: f64,
    /// When `temperature` was last brought up to date.
    updated: Instant,
}

impl Default for Thermostat {
    fn default() -> Self {
        Self {
            state: Mutex::new(ThermostatState {
                target: 20.0,
                temperature: 17.5,
                updated: Instant::now(),
            }),
        }
    }
}

impl Thermostat {
    pub const MIN_TARGET: f64 = 5.0;
    pub const MAX_TARGET: f64 = 30.0;

    fn capabilities() -> Capabilities {
        Capabilities {
            commands: vec![
                command(
                    "set_target",
                    "Set the target temperature",
                    vec![arg(
                        "celsius",
                        "Target temperature in °C",
                        ArgKind::Number {
                            min: Some(Self::MIN_TARGET),
                            max: Some(Self::MAX_TARGET),
                        },
                        true,
                        None,
                    )],
                ),
                command("get_state", "Read the temperature and the target", vec![]),
            ],
            metrics: vec![metric("temperature", "°C", -10.0, 50.0)],
            reporting: None,
        }
    }

    fn handle(&self, command: &Command) -> Result<Value, CommandError> {
        let mut state = self
            .state
            .lock()
            .expect("no code panics while holding this lock");
        state.catch_up(Instant::now());
        match command.name.as_str() {
            "set_target" => {
                let celsius = command
                    .number("celsius")
                    .ok_or_else(|| CommandError::invalid_arguments("celsius is required"))?;
                state.target = celsius;
                Ok(json!({ "target": state.target, "temperature": round(state.temperature) }))
            }
            "get_state" => {
                Ok(json!({ "target": state.target, "temperature": round(state.temperature) }))
            }
            _ => Err(unknown(command)),
        }
    }

    /// The current room temperature.
    pub fn temperature(&self) -> f64 {
        let mut state = self
            .state
            .lock()
            .expect("no code panics while holding this lock");
        state.catch_up(Instant::now());
        state.temperature
    }
}

impl ThermostatState {
    fn catch_up(&mut self, now: Instant) {
        let seconds = now.duration_since(self.updated).as_secs_f64();
        self.temperature = self.target + (self.temperature - self.target) * 0.9_f64.powf(seconds);
        self.updated = now;
    }
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A switch that is on or off.
#[derive(Debug, Default)]
pub struct Switch {
    on: Mutex<bool>,
}

impl Switch {
    /// Power draw in W: a load of about 45 W when on, standby when off.
    pub fn power(&self) -> f64 {
        let on = *self
            .on
            .lock()
            .expect("no code panics while holding this lock");
        if on {
            round(45.0 + noise(5.0))
        } else {
            round(0.4 + noise(0.05))
        }
    }

    fn capabilities() -> Capabilities {
        Capabilities {
            commands: vec![
                command("on", "Switch on", vec![]),
                command("off", "Switch off", vec![]),
                command("toggle", "Switch to the other state", vec![]),
                command("get_state", "Read the state", vec![]),
            ],
            metrics: vec![metric("power", "W", 0.0, 3000.0)],
            reporting: None,
        }
    }

    fn handle(&self, command: &Command) -> Result<Value, CommandError> {
        let mut on = self
            .on
            .lock()
            .expect("no code panics while holding this lock");
        match command.name.as_str() {
            "on" => *on = true,
            "off" => *on = false,
            "toggle" => *on = !*on,
            "get_state" => {}
            _ => return Err(unknown(command)),
        }
        Ok(json!({ "on": *on }))
    }
}

/// A gateway: slow operations with progress, and a reboot that takes it offline.
#[derive(Debug)]
pub struct Gateway {
    /// CPU and memory load in %, wandering.
    load: Mutex<(f64, f64)>,
}

impl Default for Gateway {
    fn default() -> Self {
        Self {
            load: Mutex::new((15.0, 40.0)),
        }
    }
}

impl Gateway {
    /// CPU wanders between 2 and 95 %, memory creeps between 20 and 85 %, the signal
    /// hovers around -70 dBm.
    fn readings(&self) -> Vec<(String, f64)> {
        let mut load = self
            .load
            .lock()
            .expect("no code panics while holding this lock");
        load.0 = (load.0 + noise(8.0)).clamp(2.0, 95.0);
        load.1 = (load.1 + noise(1.0) + 0.1).clamp(20.0, 85.0);
        vec![
            ("cpu".into(), round(load.0)),
            ("memory".into(), round(load.1)),
            (
                "signal".into(),
                round((-70.0 + noise(6.0)).clamp(-120.0, -30.0)),
            ),
        ]
    }

    fn capabilities() -> Capabilities {
        let integer = |min, max| ArgKind::Integer {
            min: Some(min),
            max: Some(max),
        };
        Capabilities {
            commands: vec![
                command(
                    "reboot",
                    "Restart the gateway; it goes offline and comes back",
                    vec![arg(
                        "seconds",
                        "How long the gateway stays away",
                        integer(1, 60),
                        false,
                        Some(json!(3)),
                    )],
                ),
                command(
                    "collect_logs",
                    "Collect recent log lines",
                    vec![arg(
                        "lines",
                        "How many lines",
                        integer(1, 200),
                        false,
                        Some(json!(5)),
                    )],
                ),
                command(
                    "echo",
                    "Answer with the message after a delay",
                    vec![
                        arg(
                            "message",
                            "What to answer",
                            ArgKind::String {
                                max_len: Some(1000),
                            },
                            false,
                            Some(json!("hello")),
                        ),
                        arg(
                            "delay_ms",
                            "How long to wait first",
                            integer(0, 300_000),
                            false,
                            Some(json!(0)),
                        ),
                    ],
                ),
                command(
                    "fail",
                    "Always fails, with the given message",
                    vec![arg(
                        "message",
                        "The error to report",
                        ArgKind::String { max_len: Some(200) },
                        false,
                        Some(json!("simulated failure")),
                    )],
                ),
            ],
            metrics: vec![
                metric("cpu", "%", 0.0, 100.0),
                metric("memory", "%", 0.0, 100.0),
                metric("signal", "dBm", -120.0, -30.0),
            ],
            reporting: None,
        }
    }

    async fn handle(
        &self,
        command: &Command,
        context: &CommandContext,
    ) -> Result<Value, CommandError> {
        match command.name.as_str() {
            "reboot" => {
                let seconds = command.integer("seconds").unwrap_or(3);
                for (percent, step) in [
                    (10, "stopping services"),
                    (40, "syncing disks"),
                    (70, "flushing buffers"),
                    (100, "rebooting"),
                ] {
                    context.progress(Some(percent), step).await;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                context
                    .restart_after_reply(Duration::from_secs(u64::try_from(seconds).unwrap_or(3)));
                Ok(json!({ "rebooting": true, "back_in_s": seconds }))
            }
            "collect_logs" => {
                let lines = command.integer("lines").unwrap_or(5);
                let mut collected = Vec::new();
                for i in 1..=lines {
                    let line = format!("gateway[{}]: link ok, rssi -{} dBm", 1000 + i, 60 + i % 20);
                    let percent = u8::try_from(i * 100 / lines).unwrap_or(100);
                    context.progress(Some(percent), line.clone()).await;
                    collected.push(line);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(json!({ "lines": collected }))
            }
            "echo" => {
                let delay = command.integer("delay_ms").unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(u64::try_from(delay).unwrap_or(0))).await;
                Ok(json!({ "message": command.string("message").unwrap_or_default() }))
            }
            "fail" => Err(CommandError::failed(
                command.string("message").unwrap_or("simulated failure"),
            )),
            _ => Err(unknown(command)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thermostat_drifts_toward_its_target() {
        let mut state = ThermostatState {
            target: 25.0,
            temperature: 15.0,
            updated: Instant::now(),
        };
        let later = state.updated + Duration::from_secs(10);
        state.catch_up(later);
        assert!(
            state.temperature > 20.0 && state.temperature < 25.0,
            "{}",
            state.temperature
        );
        state.catch_up(later + Duration::from_secs(600));
        assert!((state.temperature - 25.0).abs() < 0.01);
    }

    #[test]
    fn readings_are_announced_metrics_within_their_ranges() {
        for kind in Kind::ALL {
            let device = Simulated::new(kind);
            let metrics = device.capabilities().metrics;
            for _ in 0..200 {
                let readings = device.readings();
                assert_eq!(readings.len(), metrics.len(), "{kind:?} reads every metric");
                for (name, value) in readings {
                    let spec = metrics
                        .iter()
                        .find(|m| m.name == name)
                        .unwrap_or_else(|| panic!("{name} is not announced"));
                    assert!(
                        spec.min.is_none_or(|min| value >= min)
                            && spec.max.is_none_or(|max| value <= max),
                        "{name} = {value}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_kind_announces_valid_defaults() {
        for kind in Kind::ALL {
            let capabilities = Simulated::new(kind).capabilities();
            assert!(!capabilities.commands.is_empty());
            for spec in &capabilities.commands {
                for arg in spec.args.iter().filter(|a| a.default.is_some()) {
                    arg.check(arg.default.as_ref().unwrap()).unwrap();
                }
            }
        }
    }
}
