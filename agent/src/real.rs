//! A real device: the actions declared in the configuration file, the built-in
//! [`logs`](crate::logs), [`diagnostics`](crate::diagnostics) and
//! [`update`](crate::update) commands, and the readings of the machine it runs on (and
//! of any other [`Readings`] source).

use protocol::{Capabilities, ErrorCode, capability::builtin};
use serde_json::Value;

use std::sync::Arc;

use crate::{
    Command, CommandContext, CommandError, Handler, Readings,
    actions::Actions,
    config_file::Loaded,
    diagnostics::Diagnostics,
    logs::Logs,
    machine::{MachineConfig, MachineMetrics},
    update::{Trial, Updater},
};

/// Commands the agent provides itself, which no action may be named after: `logs`
/// (announced when log sources are configured), `diagnostics` (always) and `update`
/// (announced when the `[update]` table enables it).
pub const BUILT_IN_COMMANDS: &[&str] = &[builtin::LOGS, builtin::DIAGNOSTICS, builtin::UPDATE];

/// A [`Handler`] for a real device: its commands are the declared actions, its
/// metrics those of its readings sources. The reporting pace comes from the
/// [`crate::Config`] it runs with.
pub struct RealDevice {
    actions: Actions,
    readings: Vec<Box<dyn Readings>>,
    logs: Arc<Logs>,
    diagnostics: Diagnostics,
    update: Option<Updater>,
    trial: Option<Trial>,
}

impl std::fmt::Debug for RealDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealDevice")
            .field("actions", &self.actions)
            .field("readings", &self.readings.len())
            .field("logs", &self.logs)
            .field("update", &self.update)
            .field("trial", &self.trial)
            .finish_non_exhaustive()
    }
}

impl RealDevice {
    /// A device with `actions` and `readings`, no log sources, and diagnostics that do
    /// not show the configuration; see [`RealDevice::configured`].
    pub fn new(actions: Actions, readings: Vec<Box<dyn Readings>>) -> Self {
        Self {
            actions,
            readings,
            logs: Arc::new(Logs::default()),
            diagnostics: Diagnostics::default(),
            update: None,
            trial: None,
        }
    }

    /// A device as `loaded` configures it: its actions, its log sources, the `update`
    /// command when enabled, and its configuration (secrets removed) in the diagnostics.
    pub fn configured(loaded: &Loaded, readings: Vec<Box<dyn Readings>>) -> Self {
        let device = Self::new(loaded.actions.clone(), readings)
            .with_logs(loaded.logs.clone())
            .with_config(loaded.redacted());
        if loaded.update.enabled {
            device.with_update(Updater::new(
                loaded.update.clone(),
                loaded.config.firmware.clone(),
            ))
        } else {
            device
        }
    }

    /// Offers the built-in `update` command.
    #[must_use]
    pub fn with_update(mut self, updater: Updater) -> Self {
        self.update = Some(updater);
        self
    }

    /// Runs on trial after an update: reports healthy once the first hello is out.
    #[must_use]
    pub fn with_trial(mut self, trial: Trial) -> Self {
        self.trial = Some(trial);
        self
    }

    /// Reads logs from `logs`' sources (the `logs` command, and the agent's own log in
    /// the diagnostics when a source is named `agent`).
    #[must_use]
    pub fn with_logs(mut self, logs: Logs) -> Self {
        self.logs = Arc::new(logs);
        self.diagnostics.logs = Some(self.logs.clone());
        self
    }

    /// Shows `config` (which must hold no secret) in the diagnostics.
    #[must_use]
    pub fn with_config(mut self, config: Value) -> Self {
        self.diagnostics.config = Some(config);
        self
    }
}

/// The readings sources the configuration turns on. `machine` is the configuration
/// file's `[machine]` table, as given; `None` when absent.
///
/// # Errors
/// If the `[machine]` table cannot be used.
pub fn readings_from(machine: Option<&toml::Value>) -> anyhow::Result<Vec<Box<dyn Readings>>> {
    let config: MachineConfig = match machine {
        Some(table) => table
            .clone()
            .try_into()
            .map_err(|error| anyhow::anyhow!("[machine]: {error}"))?,
        None => MachineConfig::default(),
    };
    let mut readings: Vec<Box<dyn Readings>> = Vec::new();
    if config.enabled {
        readings.push(Box::new(MachineMetrics::new(config)));
    }
    Ok(readings)
}

impl Handler for RealDevice {
    fn capabilities(&self) -> Capabilities {
        let mut commands = self.actions.commands();
        commands.extend(self.logs.command());
        commands.push(Diagnostics::command());
        commands.extend(self.update.as_ref().map(Updater::command));
        Capabilities {
            commands,
            metrics: self
                .readings
                .iter()
                .flat_map(|source| source.metrics())
                .collect(),
            reporting: None,
        }
    }

    async fn handle(
        &self,
        command: Command,
        context: CommandContext,
    ) -> Result<Value, CommandError> {
        if self.actions.handles(&command.name) {
            self.actions.run(&command, &context).await
        } else if command.name == builtin::LOGS && !self.logs.is_empty() {
            self.logs.run(&command, &context).await
        } else if command.name == builtin::DIAGNOSTICS {
            self.diagnostics.run(&command).await
        } else if command.name == builtin::UPDATE
            && let Some(updater) = &self.update
        {
            updater.run(&command, &context).await
        } else {
            Err(CommandError {
                code: ErrorCode::UnknownCommand,
                message: format!("unknown command \"{}\"", command.name),
            })
        }
    }

    fn readings(&self) -> Vec<(String, f64)> {
        self.readings
            .iter()
            .flat_map(|source| source.read())
            .collect()
    }

    fn online(&self) {
        if let Some(trial) = &self.trial {
            trial.online();
        }
    }
}
