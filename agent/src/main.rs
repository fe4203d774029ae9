//! `tether-agent`: runs one device, or a simulated fleet, against a broker.
//!
//! Each device logs in to the broker with its own account: user = its id, password =
//! the secret it was provisioned with (`tether-server device add ID`). Give the secret in
//! the environment rather than as a flag: a command line is visible to every local user.
//!
//! ```text
//! TETHER_DEVICE_SECRET=… tether-agent --amqp-url amqp://broker.lan:5672/%2f \
//!     --device-id boiler-1 --kind thermostat
//! tether-agent --simulate 50 --kind mixed --device-id lab --secrets-file lab.secrets
//! ```
//!
//! A secrets file has one line per device, `<device-id> <secret>`; blank lines and lines
//! starting with `#` are ignored. With `--simulate`, every simulated device
//! (`lab-thermostat-1`, `lab-switch-2`, …) needs a line.
//!
//! The device obeys inbox messages only from the server accounts (`--server-account`,
//! default `tether-server`); anything else is logged and dropped.
//!
//! On a real device, give it a configuration file (see `agent/agent.example.toml` and
//! [`agent::config_file`]): it runs the actions declared there and reports the machine's
//! metrics, with no simulation. Flags and environment variables given explicitly win
//! over the file. `--check-config` checks the file, prints every mistake with its line
//! and exits 1 if there is any (0 with a summary otherwise), without connecting.
//!
//! ```text
//! tether-agent --config /etc/tether/agent.toml --check-config
//! TETHER_AGENT_CONFIG=/etc/tether/agent.toml tether-agent
//! ```
//!
//! With an `[update]` table that enables it, the device takes the built-in `update`
//! command ([`agent::update`]): after installing, this process starts the new
//! executable with its own arguments and `TETHER_UPDATE_TRIAL` set, and exits once that
//! one is healthy (or rolls back and goes on). Its exit status is then 0.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use agent::simulate::{Kind, Simulated};
use anyhow::Context as _;
use protocol::DeviceId;
use tokio::sync::watch;

/// Settings, as flags or environment variables.
#[derive(Debug, clap::Parser)]
#[command(
    name = "tether-agent",
    version,
    about = "A Tether device agent with simulated device kinds"
)]
struct Args {
    /// A configuration file (TOML): run the real device it describes instead of a
    /// simulation. Flags and environment variables given explicitly win over it.
    #[arg(long, env = "TETHER_AGENT_CONFIG", conflicts_with = "simulate")]
    config: Option<PathBuf>,

    /// Check the configuration file, print every mistake with its line, and exit: 1 if
    /// there is any, 0 otherwise. Connects to nothing.
    #[arg(long, requires = "config")]
    check_config: bool,

    /// A file holding the device's secret (with --config); must not be accessible to
    /// other users.
    #[arg(
        long,
        env = "TETHER_DEVICE_SECRET_FILE",
        conflicts_with = "device_secret"
    )]
    device_secret_file: Option<PathBuf>,

    /// The firmware version the device reports (with --config).
    #[arg(long, env = "TETHER_FIRMWARE")]
    firmware: Option<String>,

    /// The broker to connect out to. With a device secret, any credentials in it are
    /// replaced by the device's own.
    #[arg(
        long,
        env = "TETHER_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,

    /// The device's id (with --simulate: the prefix of each device's id).
    #[arg(long, env = "TETHER_DEVICE_ID", default_value = "sim")]
    device_id: String,

    /// What to simulate (thermostat, switch, gateway; `mixed` cycles through every kind);
    /// with --config, the device's kind, any text.
    #[arg(long, env = "TETHER_DEVICE_KIND", default_value = "mixed")]
    kind: String,

    /// Run this many devices, each with its own connection, named `<device-id>-<kind>-<n>`.
    #[arg(long, env = "TETHER_SIMULATE")]
    simulate: Option<usize>,

    /// The device's secret: it logs in as user = its id with this password. Prefer the
    /// environment variable; a command line is visible to every local user.
    #[arg(
        long,
        env = "TETHER_DEVICE_SECRET",
        hide_env_values = true,
        conflicts_with_all = ["secrets_file", "simulate"]
    )]
    device_secret: Option<String>,

    /// A file of `<device-id> <secret>` lines (blank lines and `#` comments ignored):
    /// each device logs in with its own line. Required for --simulate; without it, it
    /// may hold the one device's secret.
    #[arg(long, env = "TETHER_SECRETS_FILE")]
    secrets_file: Option<PathBuf>,

    /// A broker account whose inbox messages (commands and the like) the device obeys;
    /// repeat it, or comma-separate in the environment variable, for several.
    #[arg(
        long = "server-account",
        env = "TETHER_SERVER_ACCOUNTS",
        value_delimiter = ',',
        default_value = agent::DEFAULT_SERVER_ACCOUNT
    )]
    server_accounts: Vec<String>,

    /// Heartbeat interval in milliseconds.
    #[arg(long, env = "TETHER_HEARTBEAT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    heartbeat_ms: u64,

    /// The longest pause between two attempts to connect, in milliseconds (the pause
    /// doubles from 250 ms up to it, with jitter).
    #[arg(long, env = "TETHER_RECONNECT_MAX_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(250..=3_600_000))]
    reconnect_max_ms: u64,

    /// How often to publish readings, in milliseconds; 0 for never.
    #[arg(long, env = "TETHER_TELEMETRY_MS", default_value_t = 5000)]
    telemetry_ms: u64,

    /// The fastest a server may ask readings to come while someone watches, in ms.
    #[arg(long, env = "TETHER_TELEMETRY_FASTEST_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..))]
    telemetry_fastest_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum KindArg {
    Thermostat,
    Switch,
    Gateway,
    Mixed,
}

impl KindArg {
    fn pick(self, n: usize) -> Kind {
        match self {
            Self::Thermostat => Kind::Thermostat,
            Self::Switch => Kind::Switch,
            Self::Gateway => Kind::Gateway,
            Self::Mixed => Kind::ALL[n % Kind::ALL.len()],
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_logging();
    let matches = <Args as clap::CommandFactory>::command().get_matches();
    let args = <Args as clap::FromArgMatches>::from_arg_matches(&matches)?;
    if let Some(path) = &args.config {
        return run_configured(path, &args, &matches).await;
    }
    // First, before anything is read or said: the program may start again from here.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if args.simulate.is_some() {
        tune_allocator_for_fleet();
    }
    let kind = <KindArg as clap::ValueEnum>::from_str(&args.kind, true).map_err(|_| {
        anyhow::anyhow!(
            "--kind {:?}: a simulation is one of thermostat, switch, gateway, mixed \
             (any kind goes with --config)",
            args.kind
        )
    })?;
    let devices: Vec<(DeviceId, Kind)> = match args.simulate {
        None => vec![(DeviceId::new(&args.device_id)?, kind.pick(0))],
        Some(count) => (1..=count)
            .map(|n| {
                let kind = kind.pick(n - 1);
                Ok((
                    DeviceId::new(format!("{}-{}-{n}", args.device_id, kind.name()))?,
                    kind,
                ))
            })
            .collect::<anyhow::Result<_>>()?,
    };

    anyhow::ensure!(
        args.simulate.is_none() || args.secrets_file.is_some(),
        "--simulate needs --secrets-file (TETHER_SECRETS_FILE): each simulated device logs \
         in to the broker with its own id and secret"
    );
    let mut secrets = match &args.secrets_file {
        Some(path) => Some(read_secrets(path)?),
        None => None,
    };
    let server_accounts: Vec<String> = args
        .server_accounts
        .iter()
        .map(|account| account.trim().to_owned())
        .filter(|account| !account.is_empty())
        .collect();
    anyhow::ensure!(
        !server_accounts.is_empty(),
        "--server-account (TETHER_SERVER_ACCOUNTS) names no account: the device would obey nobody"
    );

    let mut configs = Vec::with_capacity(devices.len());
    let mut missing = Vec::new();
    for (device_id, kind) in devices {
        let mut config = agent::Config::new(args.amqp_url.clone(), device_id, kind.name());
        config.secret = match &mut secrets {
            Some(secrets) => {
                let secret = secrets.remove(&config.device_id);
                if secret.is_none() {
                    missing.push(config.device_id.to_string());
                }
                secret
            }
            None => args.device_secret.clone(),
        };
        config.server_accounts.clone_from(&server_accounts);
        configs.push((config, kind));
    }
    if let Some(path) = &args.secrets_file {
        anyhow::ensure!(
            missing.is_empty(),
            "{} has no secret for {} device(s): {}",
            path.display(),
            missing.len(),
            abbreviate(&missing)
        );
    }
    // Checked before any device starts: a configuration that cannot work for one device
    // is the operator's to fix, not something to retry.
    for (config, _) in &configs {
        config.check()?;
    }

    let count = configs.len();
    if args.simulate.is_some() {
        raise_open_files_limit(count);
    }
    // A fleet reports as one: a line every few seconds while things change, rather
    // than a line per device and failure.
    let fleet = args
        .simulate
        .is_some()
        .then(|| Arc::new(agent::FleetLog::default()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut agents = tokio::task::JoinSet::new();
    for (mut config, kind) in configs {
        config.heartbeat = Duration::from_millis(args.heartbeat_ms);
        config.telemetry =
            (args.telemetry_ms > 0).then(|| Duration::from_millis(args.telemetry_ms));
        config.telemetry_fastest = Duration::from_millis(args.telemetry_fastest_ms);
        config.reconnect_max = Duration::from_millis(args.reconnect_max_ms);
        if fleet.is_some() {
            config.frame_max = agent::FLEET_FRAME_MAX;
        }
        config.fleet.clone_from(&fleet);
        let mut stop = stop_rx.clone();
        let device = config.device_id.clone();
        agents.spawn(async move {
            let ended = agent::run(config, Arc::new(Simulated::new(kind)), async move {
                let _ = stop.wait_for(|stop| *stop).await;
            })
            .await;
            (device, ended)
        });
    }
    if let Some(fleet) = &fleet {
        let (fleet, mut stop) = (fleet.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(FLEET_REPORT);
            let mut last = None;
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = stop.wait_for(|stop| *stop) => return,
                }
                if let Some(line) = fleet.report(count, &mut last) {
                    tracing::info!("{line}");
                }
            }
        });
    }
    // Each device retries on its own for as long as the process runs: one that cannot
    // connect never ends the others. A device ends early only when its configuration
    // cannot work at all (checked above) or its task panicked; the rest go on.
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut stopping = false;
    let mut failed = 0_usize;
    // Set when asked to stop: the devices' goodbyes are bounded, and so is the whole stop.
    let mut stop_by = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = &mut shutdown, if !stopping => {
                stopping = true;
                stop_by = tokio::time::Instant::now() + FLEET_STOP_WITHIN;
                let _ = stop_tx.send(true);
            }
            () = shutdown_signal(), if stopping => {
                tracing::error!("asked to stop again: exiting without waiting for the goodbyes");
                std::process::exit(1);
            }
            () = tokio::time::sleep_until(stop_by), if stopping => {
                tracing::error!("the stop took longer than {FLEET_STOP_WITHIN:?}: exiting without waiting any more");
                std::process::exit(1);
            }
            ended = agents.join_next() => match ended {
                None => break,
                Some(Ok((_, Ok(())))) if stopping => {}
                Some(Ok((device, Ok(())))) => tracing::info!(%device, "device ended"),
                Some(Ok((device, Err(error)))) => {
                    failed += 1;
                    tracing::error!(%device, "device stopped: {error:#}");
                }
                Some(Err(error)) => {
                    failed += 1;
                    tracing::error!("a device's task failed: {error}");
                }
            }
        }
    }
    anyhow::ensure!(
        failed == 0,
        "{failed} of {count} devices stopped on an error"
    );
    Ok(())
}

/// How often a simulated fleet reports how many devices are online and what failed.
const FLEET_REPORT: Duration = Duration::from_secs(10);

/// Every simulated device holds a socket: raises the soft limit on open files to the
/// hard one, and warns when that is still short of the fleet.
/// glibc's allocator tuned for a simulated fleet: set through `GLIBC_TUNABLES` by running
/// this program again with them (as the same process: `exec`), since glibc reads them
/// only when a program starts and setting them from inside needs unsafe code.
///
/// Every connection's AMQP client (lapin) keeps two ring buffers of 32 frames, 128 KiB
/// each at a fleet's 4 KiB frames, zero-filled when made. glibc maps a block that large
/// afresh (zero pages, resident only once written) until the first such block is freed;
/// from then on it raises its threshold and serves them from its heaps, filling them
/// with zeros, so every new connection's buffers are resident at once: a fleet whose
/// connections were turned away and retried held over 400 KB a device. A fixed
/// threshold below their size keeps them mapped, resident only as far as traffic has
/// gone round them. A threshold the user set is kept.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator_for_fleet() {
    use std::os::unix::process::CommandExt as _;
    let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    let Some(tunables) = agent::fleet_malloc_tunables(&current) else {
        return;
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(error) => {
            tracing::warn!("cannot find this program to tune its allocator for a fleet: {error}");
            return;
        }
    };
    let error = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("GLIBC_TUNABLES", tunables)
        .exec();
    tracing::warn!(
        "cannot run again with the allocator tuned for a fleet ({error}); going on untuned"
    );
}

fn raise_open_files_limit(devices: usize) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let needed = u64::try_from(devices)
        .unwrap_or(u64::MAX)
        .saturating_add(64);
    let limit = getrlimit(Resource::Nofile);
    let mut now = limit.current;
    if limit.current != limit.maximum
        && setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        )
        .is_ok()
    {
        now = limit.maximum;
    }
    if let Some(now) = now
        && now < needed
    {
        tracing::warn!(
            "the open files limit is {now}, below the {needed} that {devices} devices need: \
             devices past about {} cannot connect (raise it: ulimit -n)",
            now.saturating_sub(64)
        );
    }
}

/// Runs (or with --check-config, checks) the real device a configuration file
/// describes; flags and environment variables given explicitly win over the file.
async fn run_configured(
    path: &std::path::Path,
    args: &Args,
    matches: &clap::ArgMatches,
) -> anyhow::Result<()> {
    let given = |id: &str| {
        matches
            .value_source(id)
            .is_some_and(|source| source != clap::parser::ValueSource::DefaultValue)
    };
    let mut overrides = agent::config_file::Overrides {
        amqp_url: given("amqp_url").then(|| args.amqp_url.clone()),
        device_id: given("device_id").then(|| args.device_id.clone()),
        secret: args.device_secret.clone(),
        secret_file: args.device_secret_file.clone(),
        server_accounts: given("server_accounts").then(|| args.server_accounts.clone()),
        kind: given("kind").then(|| args.kind.clone()),
        firmware: args.firmware.clone(),
        heartbeat_ms: given("heartbeat_ms").then_some(args.heartbeat_ms),
        telemetry_ms: given("telemetry_ms").then_some(args.telemetry_ms),
        telemetry_fastest_ms: given("telemetry_fastest_ms").then_some(args.telemetry_fastest_ms),
    };
    // A secrets file may hold this device's secret, as without --config.
    if overrides.secret.is_none()
        && overrides.secret_file.is_none()
        && let Some(secrets_file) = &args.secrets_file
        && let Some(device_id) = &overrides.device_id
    {
        let mut secrets = read_secrets(secrets_file)?;
        overrides.secret = secrets.remove(&DeviceId::new(device_id)?);
    }
    let mut loaded = match agent::config_file::load(path, &overrides) {
        Ok(loaded) => loaded,
        Err(problems) => {
            eprintln!("{problems}");
            if args.check_config {
                std::process::exit(1);
            }
            anyhow::bail!(
                "{} mistake(s) in {}",
                problems.problems.len(),
                path.display()
            );
        }
    };
    // The [machine] table is checked too: its keys and types are the machine module's.
    let readings = match agent::real::readings_from(loaded.machine.as_ref()) {
        Ok(readings) => readings,
        Err(error) if args.check_config => {
            eprintln!("{}: {error:#}", path.display());
            std::process::exit(1);
        }
        Err(error) => return Err(error),
    };
    // After an update, the version it installed (unless --firmware says otherwise).
    if !args.check_config
        && overrides.firmware.is_none()
        && let Some(version) = loaded.update.installed_version()
    {
        tracing::info!("firmware {version}: installed by the last update");
        loaded.config.firmware = version;
    }
    let mut device = agent::real::RealDevice::configured(&loaded, readings);
    // What it will announce, checked as servers check a hello: one they would drop
    // would leave the device offline for good.
    let problems = agent::Handler::capabilities(&device).problems();
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!(
                "{}: servers would refuse the capabilities: {problem}",
                path.display()
            );
        }
        if args.check_config {
            std::process::exit(1);
        }
        anyhow::bail!(
            "{} problem(s) with the capabilities {} announces",
            problems.len(),
            path.display()
        );
    }
    if args.check_config {
        println!("{}: ok: {}", path.display(), loaded.summary());
        return Ok(());
    }
    if given("reconnect_max_ms") {
        loaded.config.reconnect_max = Duration::from_millis(args.reconnect_max_ms);
    }
    tracing::info!("{}", loaded.summary());
    if let Some(trial) = agent::update::Trial::from_env(loaded.config.firmware.clone()) {
        tracing::info!("started on trial by the previous version after an update");
        device = device.with_trial(trial);
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut stop = stop_rx;
    let mut agent = tokio::spawn(agent::run(loaded.config, Arc::new(device), async move {
        let _ = stop.wait_for(|stop| *stop).await;
    }));
    tokio::select! {
        () = shutdown_signal() => {
            let _ = stop_tx.send(true);
            stopped_within(&mut agent).await
        }
        // It ends by itself only when an update handed the device over to a new version.
        ended = &mut agent => {
            tracing::info!("handed over to the new version; exiting");
            ended?
        }
    }
}

/// Reads a secrets file: one `<device-id> <secret>` line per device; blank lines and
/// lines starting with `#` are ignored. Errors name the file and line, never a secret.
fn read_secrets(path: &std::path::Path) -> anyhow::Result<HashMap<DeviceId, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the secrets file {}", path.display()))?;
    warn_if_readable_by_others(path);
    parse_secrets(&text).with_context(|| format!("in the secrets file {}", path.display()))
}

fn parse_secrets(text: &str) -> anyhow::Result<HashMap<DeviceId, String>> {
    let mut secrets = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(id), Some(secret), None) = (words.next(), words.next(), words.next()) else {
            anyhow::bail!("line {number}: expected `<device-id> <secret>`");
        };
        let id = DeviceId::new(id).with_context(|| format!("line {number}: not a device id"))?;
        anyhow::ensure!(
            !secrets.contains_key(&id),
            "line {number}: a second secret for {id}"
        );
        secrets.insert(id, secret.to_owned());
    }
    Ok(secrets)
}

/// Secrets should be for this user's eyes only; says so if the file is not.
fn warn_if_readable_by_others(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(metadata) = std::fs::metadata(path)
        && metadata.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            "the secrets file {} can be read by other users; chmod 600 it",
            path.display()
        );
    }
}

/// The first few of a list, and how many more there are.
fn abbreviate(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

/// The longest a graceful stop may take (the session's bye and close are bounded by 2 s
/// each, and a running action is killed): past it, or at a second Ctrl-C or SIGTERM,
/// the process exits at once, so that a stop (systemd's, say) never hangs.
const STOP_WITHIN: Duration = Duration::from_secs(10);
/// The same for a simulated fleet, whose devices say bye all at once.
const FLEET_STOP_WITHIN: Duration = Duration::from_secs(30);

/// Waits for the agent to stop after it was asked to, within [`STOP_WITHIN`] or until a
/// second signal; then exits the process with status 1.
async fn stopped_within<T>(
    agent: &mut tokio::task::JoinHandle<anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::select! {
        ended = agent => ended?,
        () = shutdown_signal() => {
            tracing::error!("asked to stop again: exiting without waiting for the goodbye");
            std::process::exit(1);
        }
        () = tokio::time::sleep(STOP_WITHIN) => {
            tracing::error!("the stop took longer than {STOP_WITHIN:?}: exiting without waiting any more");
            std::process::exit(1);
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        Some(()) = async { match terminate.as_mut() { Some(t) => t.recv().await, None => std::future::pending().await } } => {}
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn a_secrets_file_skips_blanks_and_comments() {
        let secrets = parse_secrets(
            "# lab devices\n\nlab-switch-1 s3cret\n   \n  lab-gateway-2\tother  \n#x y\n",
        )
        .unwrap();
        assert_eq!(secrets.len(), 2);
        assert_eq!(secrets[&DeviceId::new("lab-switch-1").unwrap()], "s3cret");
        assert_eq!(secrets[&DeviceId::new("lab-gateway-2").unwrap()], "other");
    }

    #[test]
    fn a_bad_secrets_line_is_named_without_its_secret() {
        for (text, expected) in [
            (
                "ok-1 a\nlonely\n",
                "line 2: expected `<device-id> <secret>`",
            ),
            ("a b c\n", "line 1: expected `<device-id> <secret>`"),
            ("bad/id hush\n", "line 1: not a device id"),
            ("d-1 a\nd-1 hush\n", "line 2: a second secret for d-1"),
        ] {
            let error = format!("{:#}", parse_secrets(text).unwrap_err());
            assert!(error.starts_with(expected), "{error}");
            assert!(!error.contains("hush"), "{error}");
        }
    }

    #[test]
    fn server_accounts_repeat_and_default() {
        let args = Args::try_parse_from(["tether-agent"]).unwrap();
        assert_eq!(args.server_accounts, ["tether-server"]);
        let args = Args::try_parse_from([
            "tether-agent",
            "--server-account",
            "a",
            "--server-account",
            "b,c",
        ])
        .unwrap();
        assert_eq!(args.server_accounts, ["a", "b", "c"]);
    }

    #[test]
    fn one_secret_does_not_go_with_a_fleet() {
        let error =
            Args::try_parse_from(["tether-agent", "--simulate", "3", "--device-secret", "x"])
                .unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
    }
}
