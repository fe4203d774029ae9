//! A real device: the actions declared in the configuration file, and the readings of
//! the machine it runs on (and of any other [`Readings`] source).

use protocol::{Capabilities, ErrorCode};
use serde_json::Value;

use crate::{
    Command, CommandContext, CommandError, Handler, Readings,
    actions::Actions,
    machine::{MachineConfig, MachineMetrics},
};

/// Commands the agent provides itself, which no action may be named after. None yet;
/// built-in features that add commands list them here.
pub const BUILT_IN_COMMANDS: &[&str] = &[];

/// A [`Handler`] for a real device: its commands are the declared actions, its
/// metrics those of its readings sources. The reporting pace comes from the
/// [`crate::Config`] it runs with.
pub struct RealDevice {
    actions: Actions,
    readings: Vec<Box<dyn Readings>>,
}

impl std::fmt::Debug for RealDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealDevice")
            .field("actions", &self.actions)
            .field("readings", &self.readings.len())
            .finish()
    }
}

impl RealDevice {
    pub fn new(actions: Actions, readings: Vec<Box<dyn Readings>>) -> Self {
        Self { actions, readings }
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
        Capabilities {
            commands: self.actions.commands(),
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
}
