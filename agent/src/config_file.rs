//! The agent's configuration file (TOML, e.g. `/etc/tether/agent.toml`): who the device
//! is, where its broker is, its pace, its built-in features and its [actions](crate::actions).
//!
//! ```toml
//! amqp_url = "amqps://broker.example.com:5671/%2f"  # or a cluster's nodes: a list of
//!                                                  # URLs, or one text, comma-separated
//! device_id = "boiler-1"
//! secret_file = "/etc/tether/secret"   # or: secret = "…" (the file is preferred)
//! server_accounts = ["tether-server"]
//! kind = "gateway"
//! firmware = "2.4.1"
//! heartbeat_ms = 5000
//! telemetry_ms = 5000                  # 0: never
//! telemetry_fastest_ms = 1000
//!
//! [machine]                            # the machine's own metrics
//! enabled = true
//!
//! [logs]                               # what the `logs` command may read, by name
//! max_lines = 500
//! follow_max_s = 60
//! [logs.sources]
//! syslog = { file = "/var/log/syslog" }
//! agent = { unit = "tether-agent.service" }
//!
//! [update]                             # the built-in `update` command (see crate::update)
//! enabled = true
//! public_key = "…64 hex digits…"
//!
//! [[actions]]
//! name = "restart_service"
//! program = "/usr/bin/systemctl"
//! argv = ["restart", "--", "{service}"]
//! args = [{ name = "service", type = "choice", choices = ["nginx", "mosquitto"], required = true }]
//! ```
//!
//! Every top-level key is also a flag and an environment variable of `tether-agent`,
//! which win over the file ([`Overrides`]); the file wins over the defaults. The tables
//! (`[machine]`, `[logs]`, `[update]`, `[[actions]]`) are only in the file. Unknown keys
//! are mistakes. [`load`] reports every mistake it finds, each with its line and column
//! where it has one. A secret file must not be accessible to other users (like ssh,
//! the agent refuses one that is); a relative `secret_file`, `update.executable` or
//! `update.state_dir` is relative to the configuration file's directory.

use std::{
    fmt,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use protocol::DeviceId;
use serde::Deserialize;
use toml::Spanned;

use crate::{
    Config,
    actions::{ActionSpec, Actions},
    logs::{Logs, LogsFile},
    real::BUILT_IN_COMMANDS,
    update::{UpdateConfig, UpdateFile},
};

/// The file as written. Every field is optional here; what is required is checked
/// after the overrides are applied.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    amqp_url: Option<Spanned<Urls>>,
    device_id: Option<Spanned<String>>,
    secret: Option<Spanned<String>>,
    secret_file: Option<Spanned<PathBuf>>,
    server_accounts: Option<Spanned<Vec<String>>>,
    kind: Option<Spanned<String>>,
    firmware: Option<Spanned<String>>,
    heartbeat_ms: Option<Spanned<u64>>,
    telemetry_ms: Option<Spanned<u64>>,
    telemetry_fastest_ms: Option<Spanned<u64>>,
    machine: Option<Spanned<toml::Value>>,
    logs: Option<Spanned<LogsFile>>,
    update: Option<Spanned<UpdateFile>>,
    #[serde(default)]
    actions: Vec<Spanned<ActionSpec>>,
}

/// `amqp_url` as written: one text (which may hold several URLs, comma-separated), or
/// a list of URLs (a cluster's nodes).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Urls {
    One(String),
    Many(Vec<String>),
}

impl Urls {
    /// As [`Config::amqp_url`] takes them: comma-separated.
    fn joined(&self) -> String {
        match self {
            Self::One(url) => url.clone(),
            Self::Many(urls) => urls.join(","),
        }
    }
}

/// Settings given as flags or environment variables; each one that is set wins over
/// the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub amqp_url: Option<String>,
    pub device_id: Option<String>,
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
    pub server_accounts: Option<Vec<String>>,
    pub kind: Option<String>,
    pub firmware: Option<String>,
    pub heartbeat_ms: Option<u64>,
    pub telemetry_ms: Option<u64>,
    pub telemetry_fastest_ms: Option<u64>,
}

/// A configuration that can run.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub actions: Actions,
    /// The `[machine]` table as written, for the machine's metrics; `None` when absent.
    pub machine: Option<toml::Value>,
    /// The log sources of the `[logs]` table, checked; none when absent.
    pub logs: Logs,
    /// The `[update]` table, checked; updates are off when absent.
    pub update: UpdateConfig,
}

impl Loaded {
    /// One line saying what this configuration runs.
    pub fn summary(&self) -> String {
        let machine = self
            .machine
            .as_ref()
            .and_then(|machine| machine.get("enabled"))
            .and_then(toml::Value::as_bool)
            .unwrap_or(true);
        format!(
            "device {} ({}) at {}: {} action(s), {} log source(s), machine metrics {}, updates {}",
            self.config.device_id,
            self.config.kind,
            common::redact(&self.config.amqp_url),
            self.actions.len(),
            self.logs.sources.len(),
            if machine { "on" } else { "off" },
            match (self.update.enabled, self.update.public_key.is_some()) {
                (false, _) => "off",
                (true, false) => "on (unsigned accepted)",
                (true, true) => "on (signed only)",
            }
        )
    }

    /// The configuration as JSON with its secrets removed, for the diagnostics: the
    /// secret is `***`, so is the URL's password and every action's environment value
    /// (which may hold tokens).
    pub fn redacted(&self) -> serde_json::Value {
        use serde_json::json;
        let config = &self.config;
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let actions: Vec<serde_json::Value> = self
            .actions
            .specs()
            .map(|spec| {
                json!({
                    "name": spec.name,
                    "program": spec.program,
                    "argv": spec.argv,
                    "env": spec.env.keys().map(|key| (key.clone(), "***")).collect::<std::collections::BTreeMap<_, _>>(),
                    "timeout_ms": spec.timeout_ms,
                    "cancellable": spec.cancellable,
                })
            })
            .collect();
        let sources: serde_json::Map<String, serde_json::Value> = self
            .logs
            .sources
            .iter()
            .map(|(name, source)| {
                let source = match source {
                    crate::logs::Source::File(path) => json!({ "file": path }),
                    crate::logs::Source::Unit(unit) => json!({ "unit": unit }),
                };
                (name.clone(), source)
            })
            .collect();
        json!({
            "amqp_url": common::redact(&config.amqp_url),
            "device_id": config.device_id.as_str(),
            "secret": config.secret.as_ref().map(|_| "***"),
            "server_accounts": config.server_accounts,
            "kind": config.kind,
            "firmware": config.firmware,
            "heartbeat_ms": ms(config.heartbeat),
            "telemetry_ms": config.telemetry.map_or(0, ms),
            "telemetry_fastest_ms": ms(config.telemetry_fastest),
            "machine": self.machine.as_ref().and_then(|machine| serde_json::to_value(machine).ok()),
            "logs": {
                "sources": sources,
                "max_lines": self.logs.max_lines,
                "follow_max_s": self.logs.follow_max_s,
            },
            "update": self.update.shown(),
            "actions": actions,
        })
    }
}

/// One mistake, with where it is (1-based line and column) when it has a place.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub at: Option<(usize, usize)>,
    pub message: String,
}

/// Every mistake found in a configuration file.
#[derive(Debug, Clone)]
pub struct Problems {
    pub path: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.problems.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            match problem.at {
                Some((line, column)) => write!(
                    f,
                    "{}:{line}:{column}: {}",
                    self.path.display(),
                    problem.message
                )?,
                None => write!(f, "{}: {}", self.path.display(), problem.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// Reads, parses and checks the configuration file at `path` with `overrides` applied.
///
/// # Errors
/// Every mistake found, each with its place where it has one.
pub fn load(path: &Path, overrides: &Overrides) -> Result<Loaded, Problems> {
    let text = std::fs::read_to_string(path).map_err(|error| Problems {
        path: path.to_owned(),
        problems: vec![Problem {
            at: None,
            message: format!("cannot read the configuration file: {error}"),
        }],
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base, overrides).map_err(|problems| Problems {
        path: path.to_owned(),
        problems,
    })
}

/// The 1-based line and column of byte `offset` in `text`.
fn place(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

/// Parses and checks configuration `text`; relative secret files are found in `base`.
///
/// # Errors
/// Every mistake found.
pub fn parse(text: &str, base: &Path, overrides: &Overrides) -> Result<Loaded, Vec<Problem>> {
    let file: File = toml::from_str(text).map_err(|error| {
        vec![Problem {
            at: error.span().map(|span| place(text, span.start)),
            message: error.message().trim().to_owned(),
        }]
    })?;
    let mut problems = Vec::new();
    let at = |span: std::ops::Range<usize>| Some(place(text, span.start));
    let mut problem = |at: Option<(usize, usize)>, message: String| {
        problems.push(Problem { at, message });
    };

    // A value from the flags (no place), else from the file (its place), else none.
    fn pick<T: Clone>(
        flag: Option<&T>,
        file: Option<&Spanned<T>>,
    ) -> Option<(T, Option<std::ops::Range<usize>>)> {
        flag.map(|value| (value.clone(), None))
            .or_else(|| file.map(|value| (value.get_ref().clone(), Some(value.span()))))
    }
    let here = |span: &Option<std::ops::Range<usize>>| span.clone().and_then(at);

    let device_id = match pick(overrides.device_id.as_ref(), file.device_id.as_ref()) {
        None => {
            problem(None, "device_id is missing".into());
            None
        }
        Some((id, span)) => match DeviceId::new(&id) {
            Ok(id) => Some(id),
            Err(error) => {
                problem(here(&span), format!("device_id {id:?}: {error}"));
                None
            }
        },
    };
    let file_urls = file
        .amqp_url
        .as_ref()
        .map(|urls| Spanned::new(urls.span(), urls.get_ref().joined()));
    let (amqp_url, url_span) = pick(overrides.amqp_url.as_ref(), file_urls.as_ref()).map_or_else(
        || ("amqp://127.0.0.1:5672/%2f".to_owned(), None),
        |(url, span)| (url, span),
    );

    // The secret: flag, flag's file, file's secret, file's secret file.
    if file.secret.is_some() && file.secret_file.is_some() {
        problem(
            file.secret.as_ref().and_then(|s| at(s.span())),
            "give either secret or secret_file, not both".into(),
        );
    }
    let secret = if let Some(secret) = &overrides.secret {
        Some(secret.clone())
    } else if let Some(path) = &overrides.secret_file {
        read_secret(path)
            .map_err(|message| problem(None, message))
            .ok()
    } else if let Some(secret) = &file.secret {
        Some(secret.get_ref().clone())
    } else if let Some(path) = &file.secret_file {
        read_secret(&base.join(path.get_ref()))
            .map_err(|message| problem(at(path.span()), message))
            .ok()
    } else {
        problem(
            None,
            "the device's secret is missing: set secret_file (preferred) or secret".into(),
        );
        None
    };
    if secret.as_deref() == Some("") {
        problem(None, "the device's secret is empty".into());
    }

    let server_accounts = match pick(
        overrides.server_accounts.as_ref(),
        file.server_accounts.as_ref(),
    ) {
        None => vec![crate::DEFAULT_SERVER_ACCOUNT.to_owned()],
        Some((accounts, span)) => {
            let accounts: Vec<String> = accounts
                .iter()
                .map(|account| account.trim().to_owned())
                .filter(|account| !account.is_empty())
                .collect();
            if accounts.is_empty() {
                problem(
                    here(&span),
                    "server_accounts names no account: the device would obey nobody".into(),
                );
            }
            accounts
        }
    };
    let kind = match pick(overrides.kind.as_ref(), file.kind.as_ref()) {
        None => "device".to_owned(),
        Some((kind, span)) => {
            if kind.trim().is_empty() || kind.len() > 64 {
                problem(here(&span), "kind must be 1–64 characters".into());
            }
            kind
        }
    };
    let firmware = pick(overrides.firmware.as_ref(), file.firmware.as_ref())
        .map_or_else(|| env!("CARGO_PKG_VERSION").to_owned(), |(v, _)| v);

    let mut millis = |name: &str,
                      flag: Option<&u64>,
                      file: Option<&Spanned<u64>>,
                      default: u64,
                      range: std::ops::RangeInclusive<u64>,
                      zero_ok: bool| {
        let (value, span) = pick(flag, file).unwrap_or((default, None));
        if !(range.contains(&value) || zero_ok && value == 0) {
            let zero = if zero_ok { " (or 0 for never)" } else { "" };
            problem(
                here(&span),
                format!(
                    "{name} is {value}, outside {}..={}{zero}",
                    range.start(),
                    range.end()
                ),
            );
        }
        value
    };
    let heartbeat_ms = millis(
        "heartbeat_ms",
        overrides.heartbeat_ms.as_ref(),
        file.heartbeat_ms.as_ref(),
        5000,
        100..=600_000,
        false,
    );
    let telemetry_ms = millis(
        "telemetry_ms",
        overrides.telemetry_ms.as_ref(),
        file.telemetry_ms.as_ref(),
        5000,
        100..=86_400_000,
        true,
    );
    let telemetry_fastest_ms = millis(
        "telemetry_fastest_ms",
        overrides.telemetry_fastest_ms.as_ref(),
        file.telemetry_fastest_ms.as_ref(),
        1000,
        100..=86_400_000,
        false,
    );

    let machine = file.machine.as_ref().map(|machine| {
        let value = machine.get_ref();
        match value.as_table() {
            None => problem(at(machine.span()), "[machine] must be a table".into()),
            Some(table) => {
                if let Some(enabled) = table.get("enabled")
                    && !enabled.is_bool()
                {
                    problem(
                        at(machine.span()),
                        "machine.enabled must be true or false".into(),
                    );
                }
            }
        }
        value.clone()
    });

    let logs = match file.logs {
        None => Logs::default(),
        Some(logs) => match Logs::check(logs.into_inner()) {
            Ok(logs) => logs,
            Err(found) => {
                for (span, message) in found {
                    problem(span.and_then(at), message);
                }
                Logs::default()
            }
        },
    };

    let update = match file.update {
        None => UpdateConfig::default(),
        Some(update) => match update.into_inner().check(base) {
            Ok(update) => update,
            Err(found) => {
                for (span, message) in found {
                    problem(span.and_then(at), message);
                }
                UpdateConfig::default()
            }
        },
    };

    let mut seen = std::collections::BTreeMap::new();
    for action in &file.actions {
        let spec = action.get_ref();
        let place = at(action.span());
        for message in spec.problems() {
            problem(place, format!("action {:?}: {message}", spec.name));
        }
        if BUILT_IN_COMMANDS.contains(&spec.name.as_str()) {
            problem(
                place,
                format!("action {:?}: the name is a built-in command's", spec.name),
            );
        }
        if let Some((line, _)) = seen.insert(spec.name.clone(), place.unwrap_or((0, 0))) {
            problem(
                place,
                format!(
                    "action {:?}: another action (line {line}) has the same name",
                    spec.name
                ),
            );
        }
    }

    let mut config = None;
    if let (Some(device_id), Some(secret)) = (device_id, secret) {
        let mut candidate = Config::new(amqp_url, device_id, kind);
        candidate.secret = Some(secret);
        candidate.server_accounts = server_accounts;
        candidate.firmware = firmware;
        candidate.heartbeat = Duration::from_millis(heartbeat_ms);
        candidate.telemetry = (telemetry_ms > 0).then(|| Duration::from_millis(telemetry_ms));
        candidate.telemetry_fastest = Duration::from_millis(telemetry_fastest_ms);
        if let Err(error) = candidate.check() {
            problem(here(&url_span), format!("amqp_url: {error:#}"));
        }
        config = Some(candidate);
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let actions = Actions::new(file.actions.into_iter().map(Spanned::into_inner).collect())
        .map_err(|messages| {
            messages
                .into_iter()
                .map(|message| Problem { at: None, message })
                .collect::<Vec<_>>()
        })?;
    Ok(Loaded {
        config: config.expect("a config is made whenever there are no problems"),
        actions,
        machine,
        logs,
        update,
    })
}

/// Reads a secret file: refused if other users may access it, or if it is empty.
/// Trailing line breaks are not part of the secret.
fn read_secret(path: &Path) -> Result<String, String> {
    let metadata = std::fs::metadata(path)
        .map_err(|error| format!("secret_file {}: {error}", path.display()))?;
    let mode = metadata.permissions().mode();
    if mode & 0o007 != 0 {
        return Err(format!(
            "secret_file {} is accessible by other users (mode {:o}); it must not be: \
             chmod 600 {0}",
            path.display(),
            mode & 0o777
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("secret_file {}: {error}", path.display()))?;
    let secret = text.trim_end_matches(['\n', '\r']).to_owned();
    if secret.is_empty() {
        return Err(format!("secret_file {} is empty", path.display()));
    }
    Ok(secret)
}
