//! The device side of Tether: connect out to the broker, announce an inbox, carry out
//! commands, stay present.
//!
//! - [`run`]: the agent's life — connect, serve a session, reconnect with backoff and
//!   jitter (each time with a new session id and a new inbox) — until `shutdown`.
//! - [`Handler`]: what an integrator implements for a real device: its capabilities and
//!   how it carries out a [`Command`], reporting progress through a [`CommandContext`].
//! - [`simulate`]: simulated devices (`thermostat`, `switch`, `gateway`) with real
//!   behaviour, for demos and tests.
//!
//! Arguments are validated against the announced capabilities before a handler sees
//! them; a handler never runs past the command's timeout; every command gets exactly one
//! reply unless the connection is lost first.

mod pace;
mod session;
pub mod simulate;

use std::{future::Future, sync::Arc, time::Duration};

use protocol::{Capabilities, CommandId, DeviceId, ErrorCode};
use serde_json::Value;

pub use session::CommandContext;

/// How an agent connects and presents itself.
#[derive(Debug, Clone)]
pub struct Config {
    /// `amqp://user:password@host:port/vhost` (or `amqps://…`).
    pub amqp_url: String,
    pub device_id: DeviceId,
    /// What sort of device this is, shown to users (e.g. `thermostat`).
    pub kind: String,
    pub firmware: String,
    /// How often to send a heartbeat; the server declares the device offline after
    /// a few are missed.
    pub heartbeat: Duration,
    /// How often to publish readings of the announced metrics; `None` for never.
    pub telemetry: Option<Duration>,
    /// The fastest a server may ask for while someone watches the device.
    pub telemetry_fastest: Duration,
    /// First delay before reconnecting; doubles on each failure up to `reconnect_max`.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl Config {
    /// A configuration with sensible timings for `device_id` of `kind`.
    pub fn new(amqp_url: impl Into<String>, device_id: DeviceId, kind: impl Into<String>) -> Self {
        Self {
            amqp_url: amqp_url.into(),
            device_id,
            kind: kind.into(),
            firmware: env!("CARGO_PKG_VERSION").to_owned(),
            heartbeat: Duration::from_secs(5),
            telemetry: Some(Duration::from_secs(5)),
            telemetry_fastest: Duration::from_secs(1),
            reconnect_min: Duration::from_millis(250),
            reconnect_max: Duration::from_secs(30),
        }
    }
}

/// A command as a handler receives it: arguments already checked against the spec,
/// with defaults filled in.
#[derive(Debug, Clone)]
pub struct Command {
    pub id: CommandId,
    pub name: String,
    pub args: std::collections::BTreeMap<String, Value>,
    /// How long the handler has; it is stopped when this runs out.
    pub timeout: Duration,
}

impl Command {
    /// An argument as a number (validation has already checked the type).
    pub fn number(&self, name: &str) -> Option<f64> {
        self.args.get(name).and_then(Value::as_f64)
    }

    pub fn integer(&self, name: &str) -> Option<i64> {
        self.args.get(name).and_then(Value::as_i64)
    }

    pub fn string(&self, name: &str) -> Option<&str> {
        self.args.get(name).and_then(Value::as_str)
    }
}

/// Why a handler did not carry out a command; sent to the server as the reply.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct CommandError {
    pub code: ErrorCode,
    pub message: String,
}

impl CommandError {
    /// It tried and it did not work.
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::Failed,
            message: message.into(),
        }
    }

    /// The arguments make no sense for the device's current state.
    pub fn invalid_arguments(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::InvalidArguments,
            message: message.into(),
        }
    }

    /// It cannot take the command now.
    pub fn busy(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::Busy,
            message: message.into(),
        }
    }
}

/// A device's behaviour. Implement it for a real device; [`simulate`] has examples.
pub trait Handler: Send + Sync + 'static {
    /// What the device can do, announced in every hello.
    fn capabilities(&self) -> Capabilities;

    /// Carries out one command. Commands may run concurrently; the future is dropped if
    /// the command is cancelled or runs out of time.
    fn handle(
        &self,
        command: Command,
        context: CommandContext,
    ) -> impl Future<Output = Result<Value, CommandError>> + Send;

    /// Current readings, as (metric, value), for metrics announced in the capabilities;
    /// published to `tether.telemetry` every `Config::telemetry`. None by default.
    fn readings(&self) -> Vec<(String, f64)> {
        Vec::new()
    }
}

/// Runs the agent until `shutdown` resolves: connects, serves sessions, and reconnects
/// with exponential backoff and full jitter whenever the connection is lost. On
/// shutdown it says bye and closes the connection. It returns an error only if the
/// configuration cannot work at all.
pub async fn run<H: Handler>(
    config: Config,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let mut failures: u32 = 0;
    loop {
        let outcome = session::serve(&config, &handler, shutdown.as_mut()).await;
        let pause = match outcome {
            Ok(session::End::Shutdown) => return Ok(()),
            Ok(session::End::Restart { downtime }) => {
                failures = 0;
                tracing::info!(device = %config.device_id, "restarting; back in {downtime:?}");
                downtime
            }
            Err(session::Failure { error, served }) => {
                failures = if served {
                    1
                } else {
                    failures.saturating_add(1)
                };
                let pause = backoff(&config, failures);
                tracing::warn!(device = %config.device_id, "connection lost or refused: {error:#}; retrying in {pause:?}");
                pause
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = &mut shutdown => return Ok(()),
        }
    }
}

/// Exponential backoff with jitter ([`protocol::backoff`]), so that a fleet that lost
/// its broker does not come back all at once.
fn backoff(config: &Config, failures: u32) -> Duration {
    protocol::backoff::Backoff::new(config.reconnect_min, config.reconnect_max)
        .delay(failures, fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_under_the_cap() {
        let mut config = Config::new("amqp://x", DeviceId::new("d").unwrap(), "k");
        config.reconnect_min = Duration::from_millis(100);
        config.reconnect_max = Duration::from_secs(2);
        for _ in 0..100 {
            assert!(backoff(&config, 1) <= Duration::from_millis(100));
            assert!(backoff(&config, 3) <= Duration::from_millis(400));
            assert!(backoff(&config, 3) >= Duration::from_millis(200));
            assert!(backoff(&config, 40) <= Duration::from_secs(2));
        }
    }
}
