//! The device side of Tether: connect out to the broker, announce an inbox, carry out
//! commands, stay present.
//!
//! - [`run`]: the agent's life — connect, serve a session, reconnect with backoff and
//!   jitter (each time with a new session id and a new inbox) — until `shutdown`.
//! - [`Handler`]: what an integrator implements for a real device: its capabilities and
//!   how it carries out a [`Command`], reporting progress through a [`CommandContext`].
//! - [`simulate`]: simulated devices (`thermostat`, `switch`, `gateway`) with real
//!   behaviour, for demos and tests.
//! - [`config_file`]: the agent's TOML configuration file, checked with every mistake
//!   reported at its line (`tether-agent --config FILE [--check-config]`).
//! - [`actions`]: commands that run programs, declared in that file: started directly
//!   (never through a shell) with validated arguments, output streamed as bounded
//!   progress, their process group killed on timeout, cancel and shutdown.
//! - [`real`]: [`real::RealDevice`], the handler of a real device: its actions, the
//!   built-in [`logs`] and [`diagnostics`] commands, and its [`Readings`] sources (the
//!   machine's own metrics).
//! - [`logs`]: the last lines of configured log files and journals (by name, never by
//!   path), filtered, paced and bounded, optionally followed for a bounded time.
//! - [`diagnostics`]: a report of the device with its configuration's secrets removed.
//! - [`update`]: the built-in `update` command: download, verify, install, hand over to
//!   the new version, and roll back if it does not come back healthy.
//!
//! Each device logs in to the broker with its own account (user = device id, password
//! = [`Config::secret`]) and every message it publishes carries `user_id` = its id, which
//! the broker checks against the login. It obeys inbox messages only when their
//! `user_id` is one of [`Config::server_accounts`], and it only checks that Tether's
//! exchanges exist: servers declare them.
//!
//! Arguments are validated against the announced capabilities before a handler sees
//! them; a handler never runs past the command's timeout; every command gets exactly one
//! reply unless the connection is lost first.

pub mod actions;
pub mod config_file;
pub mod diagnostics;
pub mod logs;
pub mod machine;
mod pace;
pub mod real;
pub mod recent;
mod session;
pub mod simulate;
pub mod update;

use std::{future::Future, sync::Arc, time::Duration};

use lapin::uri::AMQPUri;

use protocol::{Capabilities, CommandId, DeviceId, ErrorCode};
use serde_json::Value;

pub use session::CommandContext;

/// How an agent connects and presents itself.
#[derive(Clone)]
pub struct Config {
    /// `amqp://user:password@host:port/vhost` (or `amqps://…`), or several,
    /// comma-separated (the nodes of a RabbitMQ cluster): the agent starts with a random
    /// one, so that a fleet given the same list spreads over the nodes, and moves on to
    /// the next whenever one does not answer or its connection is lost; only a whole
    /// round that failed backs off. Its credentials are used only when `secret` is
    /// `None`.
    pub amqp_url: String,
    /// Who the device is; with `secret`, also its user name on the broker.
    pub device_id: DeviceId,
    /// The device's own broker password (provisioned with the device). When set, the
    /// agent logs in as user = `device_id` with it, whatever credentials `amqp_url`
    /// carries. Every message the agent publishes says it is from `device_id`, and the
    /// broker refuses that from any other login, so without a secret the URL's user must
    /// be the device id.
    pub secret: Option<String>,
    /// The broker accounts whose inbox messages (commands, cancels, watches, announce
    /// requests) the agent obeys. Anything else in the inbox — from another device, or
    /// without a `user_id` — is logged, acknowledged and otherwise ignored.
    pub server_accounts: Vec<String>,
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
    /// How long connecting, then declaring the inbox, may each take before the device
    /// gives up on that broker connection and tries again (a broker that accepted the
    /// socket but never answers must not hold it forever).
    pub setup_timeout: Duration,
    /// The frame size to ask the broker for unless the URL sets `frame_max`
    /// ([`DEVICE_FRAME_MAX`] by default). The AMQP client keeps 32 frames each way, and
    /// its ring buffers end up resident as traffic goes round them.
    pub frame_max: u32,
    /// Shared by the devices of one process (a simulated fleet): they count their
    /// sessions and failures in it, and one task reports the sums now and then
    /// ([`FleetLog::report`]), instead of each device logging its own. `None`: the
    /// device logs for itself.
    pub fleet: Option<Arc<FleetLog>>,
}

/// The server account Tether's servers log in with unless told otherwise.
pub const DEFAULT_SERVER_ACCOUNT: &str = "tether-server";

impl Config {
    /// A configuration with sensible timings for `device_id` of `kind`, logging in with
    /// the URL's credentials and obeying [`DEFAULT_SERVER_ACCOUNT`].
    pub fn new(amqp_url: impl Into<String>, device_id: DeviceId, kind: impl Into<String>) -> Self {
        Self {
            amqp_url: amqp_url.into(),
            device_id,
            secret: None,
            server_accounts: vec![DEFAULT_SERVER_ACCOUNT.into()],
            kind: kind.into(),
            firmware: env!("CARGO_PKG_VERSION").to_owned(),
            heartbeat: Duration::from_secs(5),
            telemetry: Some(Duration::from_secs(5)),
            telemetry_fastest: Duration::from_secs(1),
            reconnect_min: Duration::from_millis(250),
            reconnect_max: Duration::from_secs(30),
            setup_timeout: Duration::from_secs(30),
            frame_max: DEVICE_FRAME_MAX,
            fleet: None,
        }
    }

    /// Whether this configuration can work at all: every URL parses, and the agent would
    /// log in as its device (the broker refuses messages whose `user_id` is not the
    /// login's own). [`run`] checks it before it first connects; call it to find out
    /// sooner (`tether-agent` checks every device before it starts any).
    ///
    /// # Errors
    /// Saying what is wrong and what to do, without the URL's password or the secret.
    pub fn check(&self) -> anyhow::Result<()> {
        self.logins().map(drop)
    }

    /// Where and as whom the agent logs in, one for each URL of `amqp_url` (see
    /// [`Config::login_at`]), each with its URL as given (for messages, redacted).
    pub(crate) fn logins(&self) -> anyhow::Result<Vec<(String, AMQPUri)>> {
        let urls: Vec<&str> = common::split_urls(&self.amqp_url).collect();
        anyhow::ensure!(!urls.is_empty(), "no broker URL given (amqp_url)");
        urls.iter()
            .enumerate()
            .map(|(i, url)| {
                self.login_at(url)
                    .map(|login| ((*url).to_owned(), login))
                    .map_err(|error| {
                        if urls.len() > 1 {
                            error.context(format!("broker URL {} of {}", i + 1, urls.len()))
                        } else {
                            error
                        }
                    })
            })
            .collect()
    }

    /// The login at the first URL, for tests.
    #[cfg(test)]
    pub(crate) fn login(&self) -> anyhow::Result<AMQPUri> {
        Ok(self.logins()?.remove(0).1)
    }

    /// Where and as whom the agent logs in at `url`, parsed as lapin parses it, with
    /// user = device id and password = `secret` when a secret is set. Parsed rather than
    /// edited as text, so that no character of a secret can break the URL.
    fn login_at(&self, url: &str) -> anyhow::Result<AMQPUri> {
        let mut uri: AMQPUri = url.parse().map_err(|error| {
            anyhow::anyhow!(
                "the broker URL {} is not usable: {error}",
                common::redact(url)
            )
        })?;
        if let Some(secret) = &self.secret {
            uri.authority.userinfo.username = self.device_id.to_string();
            uri.authority.userinfo.password.clone_from(secret);
        }
        // A device's messages are small, and the AMQP client keeps buffers of 32 frames
        // each way: 8 KiB frames keep an idle agent near 4 MiB instead of 12 (with the
        // 128 KiB a broker offers). A URL that sets frame_max keeps its own.
        if uri.query.frame_max.is_none() {
            uri.query.frame_max = Some(self.frame_max);
        }
        // Without a secret: the URL's user, or guest if it names none.
        let user = &uri.authority.userinfo.username;
        if user != self.device_id.as_str() {
            anyhow::bail!(
                "device {} would log in to the broker as user \"{user}\", but the broker \
                 accepts messages from {0} only when it logs in as {0}: set the device's \
                 secret (Config::secret; tether-agent's --device-secret) or put the \
                 device id and secret in the URL",
                self.device_id
            );
        }
        Ok(uri)
    }
}

/// Everything but the secret and the URL's password, which do not belong in logs.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("amqp_url", &common::redact(&self.amqp_url))
            .field("device_id", &self.device_id)
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .field("server_accounts", &self.server_accounts)
            .field("kind", &self.kind)
            .field("firmware", &self.firmware)
            .field("heartbeat", &self.heartbeat)
            .field("telemetry", &self.telemetry)
            .field("telemetry_fastest", &self.telemetry_fastest)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("frame_max", &self.frame_max)
            .field("fleet", &self.fleet.is_some())
            .finish()
    }
}

/// What the devices of one process add up to: how many are online, and the connection
/// failures since the last report, with one of them as an example. Ten thousand
/// simulated devices that cannot reach their broker would otherwise write hundreds of
/// lines a second.
#[derive(Debug, Default)]
pub struct FleetLog {
    online: std::sync::atomic::AtomicUsize,
    failures: std::sync::atomic::AtomicU64,
    failing: std::sync::Mutex<std::collections::HashSet<DeviceId>>,
    example: std::sync::Mutex<Option<String>>,
}

/// One device's session counted online in a [`FleetLog`] until it is dropped.
pub(crate) struct Online(Arc<FleetLog>);

impl Drop for Online {
    fn drop(&mut self) {
        self.0
            .online
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl FleetLog {
    /// How many of the fleet's devices have a session now.
    pub fn online(&self) -> usize {
        self.online.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn session(self: &Arc<Self>, device: &DeviceId) -> Online {
        self.online
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock_failing().remove(device);
        Online(self.clone())
    }

    pub(crate) fn failed(&self, device: &DeviceId, error: &anyhow::Error) {
        self.failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock_failing().insert(device.clone());
        let mut example = self
            .example
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if example.is_none() {
            *example = Some(format!("{device}: {error:#}"));
        }
    }

    fn lock_failing(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<DeviceId>> {
        self.failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A line saying how the fleet of `devices` is doing, taking the failures counted
    /// since the last one; `None` when nothing failed since and `online` is what it was
    /// (`last_online`).
    pub fn report(&self, devices: usize, last_online: &mut Option<usize>) -> Option<String> {
        let online = self.online();
        let failures = self.failures.swap(0, std::sync::atomic::Ordering::Relaxed);
        let example = self
            .example
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if failures == 0 && *last_online == Some(online) {
            return None;
        }
        *last_online = Some(online);
        let failing = self.lock_failing().len();
        let mut line = format!("{online} of {devices} devices online");
        if failures > 0 {
            line.push_str(&format!(
                "; {failures} connection attempts failed since the last report, \
                 {failing} devices retrying with backoff"
            ));
        }
        if let Some(example) = example {
            line.push_str(&format!(" (e.g. {example})"));
        }
        Some(line)
    }
}

/// The frame size an agent asks for unless its URL says otherwise (bytes).
pub const DEVICE_FRAME_MAX: u32 = 8_192;

/// The `GLIBC_TUNABLES` a simulated fleet runs with, given the current ones: glibc's
/// allocator maps blocks of 64 KiB and more afresh, always (a fixed threshold), so that
/// each connection's 128 KiB buffers are resident only as far as they were written.
/// `None` when a threshold is set already (the user's, or this one after the agent ran
/// itself again with it).
pub fn fleet_malloc_tunables(current: &str) -> Option<String> {
    const THRESHOLD: &str = "glibc.malloc.mmap_threshold=65536";
    if current
        .split(':')
        .any(|tunable| tunable.starts_with("glibc.malloc.mmap_threshold="))
    {
        return None;
    }
    Some(if current.is_empty() {
        THRESHOLD.to_owned()
    } else {
        format!("{current}:{THRESHOLD}")
    })
}

/// The smallest frame AMQP allows (bytes): what a simulated fleet asks for, halving
/// the client's buffers (2 × 32 frames per connection: 256 KiB, not 512).
pub const FLEET_FRAME_MAX: u32 = 4_096;

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

/// A source of readings a device reports besides its own handler's: the machine's own
/// metrics, say. What it announces is added to the device's capabilities, and what it
/// reads to every round of readings.
pub trait Readings: Send + Sync + 'static {
    /// The metrics it reports, with units and ranges.
    fn metrics(&self) -> Vec<protocol::MetricSpec>;

    /// Current values, as (metric, value), of metrics it announced. Must not block for
    /// long: it is called on the reporting tick.
    fn read(&self) -> Vec<(String, f64)>;
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

    /// Called each time a session has published its hello. Nothing by default; a
    /// [`real::RealDevice`] on trial after an update reports itself healthy.
    fn online(&self) {}
}

/// Runs the agent until `shutdown` resolves: connects, serves sessions, and reconnects
/// with exponential backoff and full jitter whenever the connection is lost. On
/// shutdown it says bye and closes the connection. It returns an error only if the
/// configuration cannot work at all (see [`Config::check`]); a refused login or a
/// topology the server has not declared yet is retried like a lost connection.
///
/// It also returns (`Ok`) when a software [`update`] has handed the device over to a
/// new version that proved healthy: the caller should then exit.
pub async fn run<H: Handler>(
    config: Config,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let logins = config.logins()?;
    tokio::pin!(shutdown);
    // Rounds over the URLs that failed in a row: what the backoff grows with.
    let mut failures: u32 = 0;
    // Which URL, starting with a random one so that a fleet spreads over the nodes,
    // and how many failed in a row within this round.
    let mut at = fastrand::usize(..logins.len());
    let mut tried: usize = 0;
    // For the whole life of the process, across sessions: no command runs twice.
    let recent = session::SharedRecent::default();
    loop {
        let (url, login) = &logins[at];
        let outcome =
            session::serve(&config, url, login, &handler, &recent, shutdown.as_mut()).await;
        let pause = match outcome {
            Ok(session::End::Shutdown) => return Ok(()),
            Ok(session::End::Restart { downtime }) => {
                failures = 0;
                tried = 0;
                tracing::info!(device = %config.device_id, "restarting; back in {downtime:?}");
                downtime
            }
            Ok(session::End::HandOver(handover)) => {
                // Dropped on shutdown, which stops whatever it started and undoes it.
                let handed = tokio::select! {
                    handed = handover => handed,
                    () = &mut shutdown => return Ok(()),
                };
                match handed {
                    session::HandedOver::Exit => return Ok(()),
                    session::HandedOver::Resume => {
                        failures = 0;
                        tried = 0;
                        tracing::info!(device = %config.device_id, "connecting again as firmware {}", config.firmware);
                        Duration::ZERO
                    }
                }
            }
            Err(session::Failure { error, served }) => {
                // The next URL: this one's node may be down. Only a whole round of
                // failures backs off further, so that a device whose node went away
                // reaches another within moments.
                at = (at + 1) % logins.len();
                if served {
                    failures = 1;
                    tried = 0;
                } else {
                    tried += 1;
                    if tried.is_multiple_of(logins.len()) || failures == 0 {
                        failures = failures.saturating_add(1);
                    }
                }
                let pause = backoff(&config, failures);
                match &config.fleet {
                    Some(fleet) => {
                        tracing::debug!(device = %config.device_id, "connection lost or refused: {error:#}; retrying in {pause:?}");
                        fleet.failed(&config.device_id, &error);
                    }
                    None => {
                        tracing::warn!(device = %config.device_id, "connection lost or refused: {error:#}; retrying in {pause:?}");
                    }
                }
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
    fn a_fleet_tunes_the_allocator_once_and_keeps_what_the_user_set() {
        assert_eq!(
            fleet_malloc_tunables("").as_deref(),
            Some("glibc.malloc.mmap_threshold=65536")
        );
        assert_eq!(
            fleet_malloc_tunables("glibc.malloc.arena_max=2").as_deref(),
            Some("glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=65536")
        );
        // Run again with them: nothing more to do, so no loop.
        let tuned = fleet_malloc_tunables("glibc.malloc.arena_max=2").unwrap();
        assert_eq!(fleet_malloc_tunables(&tuned), None);
        assert_eq!(
            fleet_malloc_tunables("glibc.malloc.mmap_threshold=1048576"),
            None
        );
        // A name that only starts the same is another tunable.
        assert!(fleet_malloc_tunables("glibc.malloc.mmap_threshold_max=1").is_some());
    }

    #[test]
    fn a_secret_replaces_the_urls_credentials() {
        let mut config = Config::new(
            "amqp://guest:guest@broker.lan:5672/%2f?heartbeat=10",
            DeviceId::new("boiler-1").unwrap(),
            "thermostat",
        );
        config.secret = Some("p@ss:w/rd%41 é".into());
        let login = config.login().unwrap();
        assert_eq!(login.authority.userinfo.username, "boiler-1");
        assert_eq!(login.authority.userinfo.password, "p@ss:w/rd%41 é");
        assert_eq!(login.authority.host, "broker.lan");
        assert_eq!(login.vhost, "/");
        assert_eq!(login.query.heartbeat, Some(10));
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("p@ss") && !shown.contains("guest:guest"),
            "{shown}"
        );
    }

    #[test]
    fn without_a_secret_the_url_must_log_in_as_the_device() {
        let device = DeviceId::new("boiler-1").unwrap();
        let config = Config::new("amqp://boiler-1:s%40cret@h/%2f", device.clone(), "k");
        assert_eq!(
            config.login().unwrap().authority.userinfo.password,
            "s@cret"
        );
        for url in ["amqp://guest:hush@h/%2f", "amqp://h/%2f"] {
            let error = Config::new(url, device.clone(), "k").check().unwrap_err();
            let error = format!("{error:#}");
            assert!(error.contains("as user \"guest\""), "{error}");
            assert!(!error.contains("hush"), "{error}");
        }
        let error = Config::new("http://boiler-1:hush@h", device, "k")
            .check()
            .unwrap_err();
        let error = format!("{error:#}");
        assert!(error.contains("is not usable"), "{error}");
        assert!(!error.contains("hush"), "{error}");
    }

    #[test]
    fn every_url_of_a_list_logs_in_as_the_device() {
        let device = DeviceId::new("boiler-1").unwrap();
        let mut config = Config::new(
            "amqp://n1:5681/%2f, amqp://guest:guest@n2:5682/%2f",
            device.clone(),
            "k",
        );
        config.secret = Some("s3cret".into());
        let logins = config.logins().unwrap();
        assert_eq!(logins.len(), 2);
        for (_, login) in &logins {
            assert_eq!(login.authority.userinfo.username, "boiler-1");
            assert_eq!(login.authority.userinfo.password, "s3cret");
        }
        assert_eq!(logins[1].1.authority.port, 5682);
        // One bad URL is named, its password hidden.
        config.amqp_url = "amqp://n1/%2f,http://x:hush@n2".into();
        let error = format!("{:#}", config.check().unwrap_err());
        assert!(error.contains("broker URL 2 of 2"), "{error}");
        assert!(!error.contains("hush"), "{error}");
        config.amqp_url = " , ".into();
        assert!(format!("{:#}", config.check().unwrap_err()).contains("no broker URL"));
    }

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
