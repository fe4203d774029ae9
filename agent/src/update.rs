//! The built-in `update` command: download a new version, verify it, install it, hand
//! over to it, and roll back if it does not come back healthy — so that an update never
//! leaves a device without a working agent.
//!
//! Announced only when the configuration file's `[update]` table says `enabled = true`:
//!
//! ```toml
//! [update]
//! enabled = true
//! public_key = "3b6a27bc…"          # hex ed25519; then every update must be signed with it
//! executable = "/usr/bin/tether-agent"   # what is replaced; default: this very program
//! state_dir = "/var/lib/tether-agent"    # downloads, the previous version, the trial
//! install = ["/usr/bin/dpkg", "-i", "{file}"]   # optional: instead of replacing `executable`
//! health_timeout_s = 60              # how long the new version has to come back healthy
//! ```
//!
//! What one command does, each stage a progress message (paced: at most two a second;
//! the wire contract is in PROTOCOL.md, "Built-in commands"):
//!
//! 1. **downloading**: `GET url` over HTTP/1.1 (or HTTPS with the system's roots) into
//!    `<state_dir>/update/<sha256>.part`, streamed to disk. What is already there is
//!    kept and the download resumes with `Range: bytes=N-` (a 206 continues it, a 200
//!    starts over). Errors are retried with backoff until the command's time is nearly
//!    up; a 3xx (redirects are not followed) or a 4xx other than 408/429 ends it at once.
//! 2. **verifying**: the size, the SHA-256 and — when `public_key` is set — the ed25519
//!    signature of the 32-byte digest. A file that fails is deleted; it is never run.
//! 3. **installing**: `executable` is copied to `<state_dir>/previous` (mode kept), the
//!    new file written to `<executable>.new` (mode 0755), synced and renamed over
//!    `executable`; or the configured `install` program runs (directly, like an action,
//!    with `{file}` and `{version}`), its exit status deciding.
//! 4. **restarting into `<version>`**: the reply (`{"installed": …, "previous": …}`) goes
//!    out, the session says bye (reason `update`) and closes, and this process starts
//!    `executable` with its own arguments and environment plus
//!    `TETHER_UPDATE_TRIAL=<state_dir>/trial`. The new agent writes
//!    `<state_dir>/trial.healthy` (its pid and firmware) once its first hello is out
//!    ([`Trial`]). Healthy within `health_timeout_s`, and still running 3 s later: this
//!    process exits, leaving the new one running (under systemd, where `INVOCATION_ID`
//!    is set, it first stops the new one, and `Restart=always` starts the new
//!    executable as the service). Otherwise — the new version exits, or is not healthy
//!    in time — it is killed (its process group), `previous` is put back over
//!    `executable`, and this process reconnects as the old version, whose hello tells
//!    the server so. A custom `install` cannot be undone: then this process only goes
//!    on as the old version, and says so in its log.
//!
//! The custom `install` step runs as the agent's user, under the service's confinement,
//! like any action. Its `{file}` is `<state_dir>/update/<sha256>`, already verified.
//!
//! While it is installed but not yet proven, an update is held by a guard that rolls it
//! back whenever it is dropped: when the command times out or is cancelled after
//! installing, when the session is lost before the handover, when the agent is stopped
//! during the trial.
//!
//! `<state_dir>/installed` records the version the last update installed, with the
//! SHA-256 and size of `executable` after it; on start, an agent whose `executable`
//! still matches reports that version as its firmware ([`UpdateConfig::installed_version`])
//! unless `--firmware` says otherwise.

mod http;

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Read as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use ed25519_dalek::{Signature, VerifyingKey};
use protocol::{ArgKind, ArgSpec, CommandSpec, capability::builtin};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::{io::AsyncWriteExt as _, time::Instant};
use toml::Spanned;

use crate::{
    Command, CommandContext, CommandError,
    actions::{ActionSpec, Actions, GroupGuard},
    logs::SpannedProblem,
    session::HandedOver,
};

/// The environment variable that puts a new version on trial: the path whose
/// `.healthy` sibling it writes once it is online.
pub const TRIAL_ENV: &str = "TETHER_UPDATE_TRIAL";
/// Where downloads and the previous version are kept unless configured.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tether-agent";
/// How long a new version has to come back healthy, unless configured, and the bounds.
pub const DEFAULT_HEALTH_TIMEOUT_S: u64 = 60;
pub const MIN_HEALTH_TIMEOUT_S: u64 = 5;
/// The server waits 5 minutes for a device that installed an update to come back; a
/// device must have rolled back (and reconnected) well before that.
pub const MAX_HEALTH_TIMEOUT_S: u64 = 240;
/// The shortest gap between two progress messages about the same stage.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// The longest a stopped trial process is waited for.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How often the trial is checked on.
const TRIAL_POLL: Duration = Duration::from_millis(200);
/// How long a new version that said it is healthy must stay up before it is kept.
const SETTLE: Duration = Duration::from_secs(3);
/// The output of a custom install step kept for its failure message.
const INSTALL_OUTPUT_BYTES: u64 = 64 * 1024;

/// The architecture an update's `arch` must name (or `any`): `x86_64`, `aarch64`,
/// `armv7`, or Rust's own name for any other.
pub fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "arm" => "armv7",
        other => other,
    }
}

/// The `[update]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateFile {
    pub enabled: Option<Spanned<bool>>,
    pub public_key: Option<Spanned<String>>,
    pub executable: Option<Spanned<PathBuf>>,
    pub state_dir: Option<Spanned<PathBuf>>,
    pub install: Option<Spanned<Vec<String>>>,
    pub health_timeout_s: Option<Spanned<u64>>,
}

/// The `[update]` table, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateConfig {
    /// Whether the `update` command is announced at all.
    pub enabled: bool,
    /// When set, every update must carry a signature that verifies with it.
    pub public_key: Option<[u8; 32]>,
    /// What an update replaces (absolute).
    pub executable: PathBuf,
    /// Downloads, the previous version and the trial's files.
    pub state_dir: PathBuf,
    /// A program and its arguments (with `{file}` and `{version}`) that installs instead.
    pub install: Option<Vec<String>>,
    pub health_timeout: Duration,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            public_key: None,
            executable: std::env::current_exe()
                .unwrap_or_else(|_| PathBuf::from("/usr/bin/tether-agent")),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            install: None,
            health_timeout: Duration::from_secs(DEFAULT_HEALTH_TIMEOUT_S),
        }
    }
}

impl UpdateFile {
    /// Checks the table; relative paths are relative to `base` (the configuration
    /// file's directory).
    ///
    /// # Errors
    /// Every problem, with the span of the value it is about.
    pub fn check(self, base: &Path) -> Result<UpdateConfig, Vec<SpannedProblem>> {
        let mut problems: Vec<SpannedProblem> = Vec::new();
        let mut config = UpdateConfig {
            enabled: self.enabled.as_ref().is_some_and(|e| *e.get_ref()),
            ..UpdateConfig::default()
        };
        if let Some(key) = &self.public_key {
            match parse_public_key(key.get_ref()) {
                Ok(key) => config.public_key = Some(key),
                Err(message) => {
                    problems.push((Some(key.span()), format!("update.public_key: {message}")));
                }
            }
        }
        let executable_span = self.executable.as_ref().map(Spanned::span);
        if let Some(executable) = &self.executable {
            config.executable = base.join(executable.get_ref());
        }
        if let Some(state_dir) = &self.state_dir {
            config.state_dir = base.join(state_dir.get_ref());
        }
        if let Some(install) = &self.install {
            let argv = install.get_ref();
            match argv.first() {
                None => problems.push((
                    Some(install.span()),
                    "update.install names no program".into(),
                )),
                Some(program) if program.contains(['{', '}']) => problems.push((
                    Some(install.span()),
                    format!("update.install: the program {program:?} may not hold a placeholder"),
                )),
                Some(_) => {
                    for problem in install_action(argv, 1).problems() {
                        problems.push((Some(install.span()), format!("update.install: {problem}")));
                    }
                }
            }
            config.install = Some(argv.clone());
        }
        if let Some(timeout) = &self.health_timeout_s {
            let value = *timeout.get_ref();
            if !(MIN_HEALTH_TIMEOUT_S..=MAX_HEALTH_TIMEOUT_S).contains(&value) {
                problems.push((
                    Some(timeout.span()),
                    format!(
                        "update.health_timeout_s is {value}, outside \
                         {MIN_HEALTH_TIMEOUT_S}..={MAX_HEALTH_TIMEOUT_S}"
                    ),
                ));
            }
            config.health_timeout = Duration::from_secs(value);
        }
        // What is replaced and restarted must be there (a custom install may put it
        // there, but the handover starts it).
        if config.enabled {
            match fs::metadata(&config.executable) {
                Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => {}
                Ok(_) => problems.push((
                    executable_span,
                    format!(
                        "update.executable {} is not an executable file",
                        config.executable.display()
                    ),
                )),
                Err(error) => problems.push((
                    executable_span,
                    format!(
                        "update.executable {} cannot be used: {error}",
                        config.executable.display()
                    ),
                )),
            }
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }
}

fn parse_public_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = decode_hex::<32>(text.trim()).ok_or(
        "must be 64 hex digits (the server's update key, GET /api/v1/artifacts/signing-key)",
    )?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "is not an ed25519 public key")?;
    Ok(bytes)
}

/// `N` bytes from exactly `2N` hex digits.
fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut bytes = [0; N];
    (text.len() == 2 * N && hex::decode_to_slice(text, &mut bytes).is_ok()).then_some(bytes)
}

/// What an update installed: its version, and `executable` as it was right after.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
struct Record {
    version: String,
    sha256: String,
    size: u64,
}

impl UpdateConfig {
    fn record_path(&self) -> PathBuf {
        self.state_dir.join("installed")
    }

    fn previous_path(&self) -> PathBuf {
        self.state_dir.join("previous")
    }

    fn trial_path(&self) -> PathBuf {
        self.state_dir.join("trial")
    }

    /// The version the last update installed, if updates are enabled and `executable`
    /// is still what it installed; the firmware an agent reports unless told otherwise.
    pub fn installed_version(&self) -> Option<String> {
        if !self.enabled {
            return None;
        }
        let text = fs::read(self.record_path()).ok()?;
        let record: Record = serde_json::from_slice(&text).ok()?;
        let size = fs::metadata(&self.executable).ok()?.len();
        (size == record.size && hex::encode(sha256_file(&self.executable).ok()?) == record.sha256)
            .then_some(record.version)
    }

    /// As JSON for the diagnostics (nothing here is secret).
    pub fn shown(&self) -> Value {
        json!({
            "enabled": self.enabled,
            "public_key": self.public_key.map(hex::encode),
            "executable": self.executable,
            "state_dir": self.state_dir,
            "install": self.install,
            "health_timeout_s": self.health_timeout.as_secs(),
        })
    }
}

/// The action that runs a custom install step: `argv[0]` with the rest as arguments,
/// `{file}` and `{version}` its placeholders.
fn install_action(argv: &[String], timeout_ms: u64) -> ActionSpec {
    let text = |name: &str| ArgSpec {
        name: name.into(),
        description: String::new(),
        kind: ArgKind::String { max_len: None },
        required: true,
        default: None,
    };
    ActionSpec {
        name: "install".into(),
        description: "the update's install step".into(),
        args: vec![text("file"), text("version")],
        program: PathBuf::from(argv.first().cloned().unwrap_or_default()),
        argv: argv.iter().skip(1).cloned().collect(),
        cwd: None,
        env: BTreeMap::new(),
        timeout_ms: timeout_ms.clamp(1, crate::actions::MAX_TIMEOUT_MS),
        max_output_bytes: INSTALL_OUTPUT_BYTES,
        cancellable: true,
    }
}

/// The `update` command of a device whose configuration enables it. Its handover
/// starts `executable` with this process's own arguments and environment: it is meant
/// for the `tether-agent` binary, whose [`crate::run`] returns once it has handed over.
#[derive(Debug)]
pub struct Updater {
    config: Arc<UpdateConfig>,
    /// The firmware this agent reports: the reply's `previous`.
    firmware: String,
    busy: Arc<AtomicBool>,
}

/// Sends one progress message.
type ProgressFn =
    Arc<dyn Fn(Option<u8>, String) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

impl Updater {
    /// Updates as `config` says, for an agent that reports `firmware`.
    pub fn new(config: UpdateConfig, firmware: impl Into<String>) -> Self {
        Self {
            config: Arc::new(config),
            firmware: firmware.into(),
            busy: Arc::default(),
        }
    }

    /// The command announced.
    pub fn command(&self) -> CommandSpec {
        let arg = |name: &str, description: &str, kind: ArgKind, required: bool| ArgSpec {
            name: name.into(),
            description: description.into(),
            kind,
            required,
            default: None,
        };
        let text = |max_len| ArgKind::String {
            max_len: Some(max_len),
        };
        CommandSpec {
            name: builtin::UPDATE.into(),
            description: "Download, verify and install a new version, then restart into it \
                          (rolled back if it does not come back healthy)"
                .into(),
            args: vec![
                arg(
                    "url",
                    "Where to download the file (http or https)",
                    text(2048),
                    true,
                ),
                arg(
                    "sha256",
                    "The file's SHA-256, 64 lowercase hex digits",
                    text(64),
                    true,
                ),
                arg(
                    "size",
                    "The file's size in bytes",
                    ArgKind::Integer {
                        min: Some(1),
                        max: None,
                    },
                    true,
                ),
                arg(
                    "version",
                    "The version the device reports once updated",
                    text(100),
                    true,
                ),
                arg(
                    "signature",
                    "Hex ed25519 signature of the SHA-256 digest",
                    text(128),
                    false,
                ),
                arg(
                    "arch",
                    "The architecture the file is for",
                    ArgKind::Choice {
                        choices: vec![architecture().into(), "any".into()],
                    },
                    true,
                ),
            ],
        }
    }

    /// Downloads, verifies and installs; the reply is sent by the session, and the
    /// handover happens after it.
    ///
    /// # Errors
    /// `busy` while another update runs; `invalid_arguments`; `failed` when the download,
    /// the verification or the install fails (nothing is installed then).
    pub async fn run(
        &self,
        command: &Command,
        context: &CommandContext,
    ) -> Result<Value, CommandError> {
        let sender = context.clone();
        let send: ProgressFn = Arc::new(move |percent, message| {
            let context = sender.clone();
            Box::pin(async move { context.progress(percent, message).await })
        });
        let mut reporter = Reporter::new(send);
        let installed = self.prepare(command, &mut reporter).await?;
        let result = json!({
            "installed": installed.version,
            "previous": installed.previous_firmware,
        });
        reporter
            .stage(None, format!("restarting into {}", installed.version))
            .await;
        context.hand_over_after_reply(Box::pin(hand_over(installed)));
        Ok(result)
    }

    async fn prepare(
        &self,
        command: &Command,
        reporter: &mut Reporter,
    ) -> Result<Installed, CommandError> {
        let started = Instant::now();
        let request = UpdateRequest::from_command(command)?;
        let busy = Busy::take(&self.busy)
            .ok_or_else(|| CommandError::busy("an update is already in progress"))?;
        let config = &self.config;
        let key = config.public_key.map(|key| {
            VerifyingKey::from_bytes(&key).expect("checked when the configuration was loaded")
        });
        if key.is_some() && request.signature.is_none() {
            return Err(CommandError::failed(
                "verification failed: bad signature (the update is not signed, and this \
                 device accepts only signed updates)",
            ));
        }
        if request.signature.is_some() && key.is_none() {
            tracing::info!(
                "the update is signed, but no public_key is configured to verify it with"
            );
        }
        tracing::info!(
            version = %request.version,
            size = request.size,
            "updating from {}",
            request.url.shown()
        );
        let downloads = config.state_dir.join("update");
        let part = downloads.join(format!("{}.part", request.sha256));
        let verified = downloads.join(&request.sha256);
        let (dir, sha256, path) = (downloads.clone(), request.sha256.clone(), part.clone());
        let have = blocking(move || {
            prepare_downloads(&dir, &sha256)?;
            Ok(fs::metadata(&path).map_or(0, |meta| meta.len()))
        })
        .await
        .map_err(|error| {
            CommandError::failed(format!(
                "cannot use the state directory {}: {error}",
                downloads.display()
            ))
        })?;
        if config.install.is_none() {
            let executable = config.executable.clone();
            blocking(move || writable(&executable))
                .await
                .map_err(|error| CommandError::failed(format!("install failed: {error}")))?;
        }
        let needed = request.size.saturating_sub(have);
        if let Some(disk) = crate::machine::disk_usage(&downloads)
            && disk.available < needed
        {
            return Err(CommandError::failed(format!(
                "download failed: not enough space in {}: {} needed, {} free",
                downloads.display(),
                size_text(needed),
                size_text(disk.available)
            )));
        }

        // Downloading, until shortly before the command's deadline: verifying and
        // installing need a moment too.
        let reserve = (command.timeout / 5).min(Duration::from_secs(30));
        let download = Download {
            tls: if request.url.is_tls() {
                Some(http::tls_connector().map_err(|error| {
                    CommandError::failed(format!(
                        "download failed: cannot load the system's root certificates for https: {error}"
                    ))
                })?)
            } else {
                None
            },
            url: request.url.clone(),
            part: part.clone(),
            size: request.size,
            deadline: started + command.timeout.saturating_sub(reserve),
        };
        download.run(reporter).await?;

        reporter.stage(None, "verifying".into()).await;
        let (path, size, sha256, signature) = (
            part.clone(),
            request.size,
            request.sha256.clone(),
            request.signature,
        );
        let checked = blocking(move || Ok(verify(&path, size, &sha256, signature, key.as_ref())))
            .await
            .unwrap_or_else(|error| Err(format!("verification failed: {error}")));
        if let Err(message) = checked {
            let _ = fs::remove_file(&part);
            tracing::warn!(version = %request.version, "{message}; the download is deleted");
            return Err(CommandError::failed(message));
        }
        let (from, to) = (part.clone(), verified.clone());
        blocking(move || fs::rename(from, to))
            .await
            .map_err(|error| {
                CommandError::failed(format!(
                    "install failed: cannot keep the verified file: {error}"
                ))
            })?;

        reporter.stage(None, "installing".into()).await;
        // In a task of its own, so that a cancel or timeout cannot stop an install half
        // way: it is seen through, and then, its guard dropped, rolled back.
        let install = Install {
            config: config.clone(),
            file: verified,
            version: request.version,
            sha256: request.sha256,
            size: request.size,
            previous_firmware: self.firmware.clone(),
            command: command.clone(),
            remaining: (started + command.timeout).saturating_duration_since(Instant::now()),
            send: reporter.send.clone(),
            busy,
        };
        tokio::spawn(install.run())
            .await
            .unwrap_or_else(|error| Err(CommandError::failed(format!("install failed: {error}"))))
    }
}

/// The install step, and what the guard it makes needs.
struct Install {
    config: Arc<UpdateConfig>,
    /// The verified download.
    file: PathBuf,
    version: String,
    sha256: String,
    size: u64,
    previous_firmware: String,
    command: Command,
    remaining: Duration,
    send: ProgressFn,
    busy: Busy,
}

impl Install {
    async fn run(self) -> Result<Installed, CommandError> {
        let config = self.config;
        let old_record = fs::read(config.record_path()).ok();
        let custom = match &config.install {
            None => {
                let (config, file) = (config.clone(), self.file.clone());
                blocking(move || install_file(&file, &config.executable, &config.state_dir))
                    .await
                    .map_err(|error| CommandError::failed(format!("install failed: {error}")))?;
                false
            }
            Some(argv) => {
                install_custom(
                    argv,
                    &self.file,
                    &self.version,
                    &self.command,
                    self.remaining,
                    &self.send,
                )
                .await?;
                true
            }
        };
        // From here on, the guard rolls back whatever stops the update short of success.
        let installed = Installed {
            config: config.clone(),
            version: self.version.clone(),
            previous_firmware: self.previous_firmware,
            custom,
            old_record,
            armed: true,
            _busy: self.busy,
        };
        let (version, sha256, size, file) = (self.version, self.sha256, self.size, self.file);
        let recorded = blocking(move || {
            let record = if custom {
                // What the install step left in place.
                Record {
                    version,
                    size: fs::metadata(&config.executable)?.len(),
                    sha256: hex::encode(sha256_file(&config.executable)?),
                }
            } else {
                Record {
                    version,
                    sha256,
                    size,
                }
            };
            let _ = fs::remove_file(&file);
            write_atomically(
                &config.record_path(),
                &serde_json::to_vec(&record).unwrap_or_default(),
            )
        })
        .await;
        if let Err(error) = recorded {
            tracing::warn!("cannot record the installed version: {error}");
        }
        tracing::info!(version = %installed.version, "installed; handing over after the reply");
        Ok(installed)
    }
}

/// An update command's arguments, checked beyond what their spec says.
#[derive(Debug)]
struct UpdateRequest {
    url: http::Url,
    sha256: String,
    size: u64,
    version: String,
    signature: Option<[u8; 64]>,
}

impl UpdateRequest {
    fn from_command(command: &Command) -> Result<Self, CommandError> {
        let invalid = CommandError::invalid_arguments;
        let url = http::Url::parse(command.string("url").unwrap_or_default())
            .map_err(|message| invalid(format!("argument \"url\": {message}")))?;
        let sha256 = command.string("sha256").unwrap_or_default();
        if sha256.len() != 64
            || !sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(invalid(
                "argument \"sha256\" must be 64 lowercase hex digits".to_owned(),
            ));
        }
        let size = command
            .integer("size")
            .and_then(|size| u64::try_from(size).ok())
            .filter(|size| *size > 0)
            .ok_or_else(|| invalid("argument \"size\" must be at least 1".to_owned()))?;
        let version = command.string("version").unwrap_or_default().trim();
        if version.is_empty() || version.chars().any(char::is_control) {
            return Err(invalid(
                "argument \"version\" must be text without control characters".to_owned(),
            ));
        }
        let signature = match command.string("signature").map(str::trim) {
            None | Some("") => None,
            Some(text) => Some(decode_hex::<64>(&text.to_ascii_lowercase()).ok_or_else(|| {
                invalid("argument \"signature\" must be 128 hex digits".to_owned())
            })?),
        };
        Ok(Self {
            url,
            sha256: sha256.to_owned(),
            size,
            version: version.to_owned(),
            signature,
        })
    }
}

/// Holds the one-update-at-a-time flag while it lives.
#[derive(Debug)]
struct Busy(Arc<AtomicBool>);

impl Busy {
    fn take(flag: &Arc<AtomicBool>) -> Option<Self> {
        (!flag.swap(true, Ordering::AcqRel)).then(|| Self(flag.clone()))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Progress messages: stages at once, the same stage's news at most every
/// [`PROGRESS_EVERY`], and never the same message twice in a row.
struct Reporter {
    send: ProgressFn,
    last: Option<Instant>,
    last_text: String,
}

impl Reporter {
    fn new(send: ProgressFn) -> Self {
        Self {
            send,
            last: None,
            last_text: String::new(),
        }
    }

    async fn stage(&mut self, percent: Option<u8>, text: String) {
        self.last = Some(Instant::now());
        self.last_text.clone_from(&text);
        (self.send)(percent, text).await;
    }

    async fn paced(&mut self, percent: Option<u8>, text: String) {
        if text == self.last_text
            || self
                .last
                .is_some_and(|last| last.elapsed() < PROGRESS_EVERY)
        {
            return;
        }
        self.stage(percent, text).await;
    }
}

/// `3.4 MB`, `120 kB` or `512 bytes`.
fn size_text(bytes: u64) -> String {
    if bytes >= 1_000_000 {
        format!("{:.1} MB", bytes as f64 / 1e6)
    } else if bytes >= 10_000 {
        format!("{} kB", bytes / 1000)
    } else {
        format!("{bytes} bytes")
    }
}

/// `1.2 of 3.4 MB`, in the unit of the total.
fn amount(part: u64, total: u64) -> String {
    if total >= 1_000_000 {
        format!("{:.1} of {:.1} MB", part as f64 / 1e6, total as f64 / 1e6)
    } else if total >= 10_000 {
        format!("{} of {} kB", part / 1000, total / 1000)
    } else {
        format!("{part} of {total} bytes")
    }
}

fn percent(part: u64, total: u64) -> u8 {
    u8::try_from(part.saturating_mul(100) / total.max(1))
        .unwrap_or(100)
        .min(100)
}

/// One file to download into `part`, resuming what is there.
struct Download {
    url: http::Url,
    tls: Option<rustls_connector::RustlsConnector>,
    part: PathBuf,
    size: u64,
    deadline: Instant,
}

/// Why an attempt stopped: worth another try, or not.
enum Stop {
    Retry(String),
    Fail(CommandError),
}

impl Download {
    async fn run(&self, reporter: &mut Reporter) -> Result<(), CommandError> {
        let have = tokio::fs::metadata(&self.part).await.map_or(0, |m| m.len());
        reporter
            .stage(
                Some(percent(have.min(self.size), self.size)),
                format!(
                    "downloading: {} % ({})",
                    percent(have.min(self.size), self.size),
                    amount(have.min(self.size), self.size)
                ),
            )
            .await;
        let backoff =
            protocol::backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let mut failures: u32 = 0;
        loop {
            let error = match tokio::time::timeout_at(self.deadline, self.attempt(reporter)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(Stop::Fail(error))) => return Err(error),
                Ok(Err(Stop::Retry(error))) => error,
                Err(_) => {
                    let have = tokio::fs::metadata(&self.part).await.map_or(0, |m| m.len());
                    format!("it was not done in time ({})", amount(have, self.size))
                }
            };
            failures += 1;
            let pause = backoff.delay(failures, fastrand::f64());
            if Instant::now() + pause >= self.deadline {
                tracing::warn!(
                    "update download from {} failed: {error}; giving up",
                    self.url.shown()
                );
                return Err(CommandError::failed(format!(
                    "download failed: {error} (gave up after {failures} attempt(s): the \
                     command's time is nearly up)"
                )));
            }
            tracing::warn!(
                "update download from {}: {error}; retrying in {pause:.1?}",
                self.url.shown()
            );
            reporter
                .stage(
                    None,
                    format!(
                        "downloading: {error}; retrying in {:.1} s",
                        pause.as_secs_f64()
                    ),
                )
                .await;
            tokio::time::sleep(pause).await;
        }
    }

    /// A file of the wrong size: deleted, and the command fails.
    fn mismatch(&self, message: String) -> Stop {
        let _ = fs::remove_file(&self.part);
        Stop::Fail(CommandError::failed(format!(
            "verification failed: {message}"
        )))
    }

    async fn attempt(&self, reporter: &mut Reporter) -> Result<(), Stop> {
        let cannot_write = |error: io::Error| {
            Stop::Fail(CommandError::failed(format!(
                "download failed: cannot write {}: {error}",
                self.part.display()
            )))
        };
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&self.part)
            .await
            .map_err(cannot_write)?;
        let mut have = file.metadata().await.map_err(cannot_write)?.len();
        if have > self.size {
            file.set_len(0).await.map_err(cannot_write)?;
            have = 0;
        }
        if have == self.size {
            return Ok(());
        }
        let shown = self.url.shown();
        let mut response = http::get(&self.url, have, self.tls.as_ref())
            .await
            .map_err(|error| Stop::Retry(format!("cannot fetch {shown}: {error}")))?;
        let status = response.status;
        let reason = response.reason.clone();
        match status {
            200 => {
                if have > 0 {
                    tracing::info!("the server does not resume downloads; starting over");
                    file.set_len(0).await.map_err(cannot_write)?;
                    have = 0;
                }
            }
            206 => {
                match response
                    .header("content-range")
                    .and_then(http::content_range)
                {
                    Some((_, _, Some(total))) if total != self.size => {
                        return Err(self.mismatch(format!(
                            "the server's file is {total} bytes, not {}",
                            self.size
                        )));
                    }
                    Some((first, _, _)) if first == have => {
                        reporter
                            .stage(
                                Some(percent(have, self.size)),
                                format!("downloading: resuming at {}", size_text(have)),
                            )
                            .await;
                    }
                    _ => {
                        file.set_len(0).await.map_err(cannot_write)?;
                        return Err(Stop::Retry(
                            "the server resumed elsewhere than asked; starting over".into(),
                        ));
                    }
                }
            }
            416 => {
                file.set_len(0).await.map_err(cannot_write)?;
                return Err(Stop::Retry(format!(
                    "the server cannot resume at {}; starting over",
                    size_text(have)
                )));
            }
            300..=399 => {
                return Err(Stop::Fail(CommandError::failed(format!(
                    "download failed: {shown} answered {status} {reason}, a redirect (which \
                     is not followed)"
                ))));
            }
            408 | 429 | 500..=599 => {
                return Err(Stop::Retry(format!("{shown} answered {status} {reason}")));
            }
            _ => {
                let detail = response.body.text(300).await;
                let detail = if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {detail}")
                };
                return Err(Stop::Fail(CommandError::failed(format!(
                    "download failed: {shown} answered {status} {reason}{detail}"
                ))));
            }
        }
        if let Some(length) = response.content_length()
            && have + length != self.size
        {
            return Err(self.mismatch(format!(
                "the server's file is {} bytes, not {}",
                have + length,
                self.size
            )));
        }
        use tokio::io::AsyncSeekExt as _;
        file.seek(io::SeekFrom::Start(have))
            .await
            .map_err(cannot_write)?;
        let mut buf = vec![0; 64 * 1024];
        loop {
            let n = match response.body.read(&mut buf).await {
                Ok(n) => n,
                Err(error) => {
                    let _ = file.flush().await;
                    return Err(Stop::Retry(format!("the download broke off: {error}")));
                }
            };
            if n == 0 {
                break;
            }
            if have + n as u64 > self.size {
                return Err(self.mismatch(format!(
                    "the server's file is larger than {} bytes",
                    self.size
                )));
            }
            file.write_all(&buf[..n]).await.map_err(cannot_write)?;
            have += n as u64;
            reporter
                .paced(
                    Some(percent(have, self.size)),
                    format!(
                        "downloading: {} % ({})",
                        percent(have, self.size),
                        amount(have, self.size)
                    ),
                )
                .await;
        }
        file.flush().await.map_err(cannot_write)?;
        file.sync_data().await.map_err(cannot_write)?;
        if have < self.size {
            return Err(Stop::Retry(format!(
                "the connection closed after {}",
                amount(have, self.size)
            )));
        }
        Ok(())
    }
}

/// Runs blocking file work off the runtime's threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|error| Err(io::Error::other(error.to_string())))
}

/// Creates the downloads folder and empties it of everything but this update's partial
/// download; a verified file left from an earlier attempt is checked again, as a partial
/// download, before it is used.
fn prepare_downloads(downloads: &Path, sha256: &str) -> io::Result<()> {
    fs::create_dir_all(downloads)?;
    let part = format!("{sha256}.part");
    for entry in fs::read_dir(downloads)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_str() == Some(sha256) {
            fs::rename(entry.path(), downloads.join(&part))?;
        } else if name.to_str() != Some(part.as_str()) {
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(path)?;
            } else {
                fs::remove_file(path)?;
            }
        }
    }
    Ok(())
}

/// Whether `<executable>.new` can be written, so that a download is not wasted on a
/// device that cannot install it.
fn writable(executable: &Path) -> io::Result<()> {
    let meta = fs::metadata(executable).map_err(|error| {
        io::Error::new(error.kind(), format!("{}: {error}", executable.display()))
    })?;
    if !meta.is_file() {
        return Err(io::Error::other(format!(
            "{} is not a file",
            executable.display()
        )));
    }
    let new = sibling(executable, ".new");
    fs::File::create(&new)
        .and_then(|_| fs::remove_file(&new))
        .map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("cannot write {}: {error}", new.display()),
            )
        })
}

/// `path` with `suffix` added to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn sha256_file(path: &Path) -> io::Result<[u8; 32]> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buf[..n]);
    }
}

/// Checks a downloaded file; the error is the command's message.
fn verify(
    path: &Path,
    size: u64,
    sha256: &str,
    signature: Option<[u8; 64]>,
    key: Option<&VerifyingKey>,
) -> Result<(), String> {
    let failed =
        |error: io::Error| format!("verification failed: cannot read the download: {error}");
    let length = fs::metadata(path).map_err(failed)?.len();
    if length != size {
        return Err(format!(
            "verification failed: the file is {length} bytes, not {size}"
        ));
    }
    let digest = sha256_file(path).map_err(failed)?;
    let got = hex::encode(digest);
    if got != sha256 {
        return Err(format!(
            "verification failed: its SHA-256 is {got}, not {sha256}"
        ));
    }
    if let Some(key) = key {
        let signature = signature.ok_or("verification failed: bad signature (none given)")?;
        key.verify_strict(&digest, &Signature::from_bytes(&signature))
            .map_err(|_| "verification failed: bad signature".to_owned())?;
    }
    Ok(())
}

/// Copies `from` over `to` atomically: written to `<to>.new`, synced, renamed, the
/// directory synced. With `mode` the copy gets it, otherwise it keeps `from`'s.
fn replace(from: &Path, to: &Path, mode: Option<u32>) -> io::Result<()> {
    let new = sibling(to, ".new");
    let _ = fs::remove_file(&new);
    fs::copy(from, &new)?;
    if let Some(mode) = mode {
        fs::set_permissions(&new, fs::Permissions::from_mode(mode))?;
    }
    fs::File::open(&new)?.sync_all()?;
    fs::rename(&new, to)?;
    sync_dir(to);
    Ok(())
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        let _ = fs::File::open(dir).and_then(|dir| dir.sync_all());
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let new = sibling(path, ".new");
    let mut file = fs::File::create(&new)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&new, path)?;
    sync_dir(path);
    Ok(())
}

/// The default install: keep the current executable as `previous`, then put the new
/// file in its place.
fn install_file(file: &Path, executable: &Path, state_dir: &Path) -> io::Result<()> {
    let previous = state_dir.join("previous");
    replace(executable, &previous, None).map_err(|error| {
        io::Error::new(
            error.kind(),
            format!(
                "cannot keep {} as {}: {error}",
                executable.display(),
                previous.display()
            ),
        )
    })?;
    replace(file, executable, Some(0o755)).map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("cannot replace {}: {error}", executable.display()),
        )
    })
}

/// Runs the configured install step like an action: directly, with a clean environment,
/// its output bounded and its process group killed when time is up.
async fn install_custom(
    argv: &[String],
    file: &Path,
    version: &str,
    command: &Command,
    remaining: Duration,
    send: &ProgressFn,
) -> Result<(), CommandError> {
    let timeout_ms = u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX);
    let actions = Actions::new(vec![install_action(argv, timeout_ms)]).map_err(|problems| {
        CommandError::failed(format!("install failed: {}", problems.join("; ")))
    })?;
    let install = Command {
        id: command.id.clone(),
        name: "install".into(),
        args: [
            ("file".to_owned(), Value::from(file.display().to_string())),
            ("version".to_owned(), Value::from(version)),
        ]
        .into(),
        timeout: remaining,
    };
    let send = send.clone();
    let mut last: Option<std::time::Instant> = None;
    actions
        .run_with(&install, move |output| {
            let due = last.is_none_or(|last| last.elapsed() >= PROGRESS_EVERY);
            if due {
                last = Some(std::time::Instant::now());
            }
            let send = send.clone();
            async move {
                if due {
                    send(None, format!("installing: {output}")).await;
                }
            }
        })
        .await
        .map(drop)
        .map_err(|error| CommandError::failed(format!("install failed: {}", error.message)))
}

/// An update installed but not yet proven: rolled back when dropped, unless it was
/// [`Installed::keep`]-ed.
struct Installed {
    config: Arc<UpdateConfig>,
    version: String,
    previous_firmware: String,
    custom: bool,
    /// The `installed` record before this update, put back on rollback.
    old_record: Option<Vec<u8>>,
    armed: bool,
    _busy: Busy,
}

impl Installed {
    /// The new version proved itself: nothing to roll back.
    fn keep(&mut self) {
        self.armed = false;
    }

    /// Puts the previous version back (once), saying why.
    fn roll_back(&mut self, why: &str) {
        if !std::mem::take(&mut self.armed) {
            return;
        }
        let executable = &self.config.executable;
        if self.custom {
            tracing::error!(
                "the update to {} failed: {why}; a custom install cannot be rolled back: \
                 this process goes on as {}, but {} may be the new version",
                self.version,
                self.previous_firmware,
                executable.display()
            );
            return;
        }
        match replace(&self.config.previous_path(), executable, None) {
            Ok(()) => tracing::warn!(
                "rolled back: {why}; {} is version {} again",
                executable.display(),
                self.previous_firmware
            ),
            Err(error) => tracing::error!(
                "rolled back: {why}; but {} cannot be restored from {}: {error}",
                executable.display(),
                self.config.previous_path().display()
            ),
        }
        let record = self.config.record_path();
        let _ = match &self.old_record {
            Some(old) => write_atomically(&record, old),
            None => fs::remove_file(&record),
        };
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        self.roll_back("the update was interrupted before the new version proved healthy");
    }
}

/// Waits for a child for at most `limit`; whether it ended.
async fn reap(child: &mut tokio::process::Child, limit: Duration) -> bool {
    tokio::time::timeout(limit, child.wait()).await.is_ok()
}

/// The handover, run by [`crate::run`] once the session has said bye: start the new
/// version on trial, and keep it or roll back.
async fn hand_over(mut installed: Installed) -> HandedOver {
    let config = installed.config.clone();
    let trial = config.trial_path();
    let healthy = sibling(&trial, ".healthy");
    let _ = fs::remove_file(&healthy);
    let spawned = tokio::process::Command::new(&config.executable)
        .args(std::env::args_os().skip(1))
        .env(TRIAL_ENV, &trial)
        .stdin(std::process::Stdio::null())
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            installed.roll_back(&format!("the new version cannot be started: {error}"));
            return HandedOver::Resume;
        }
    };
    let pid = child.id().unwrap_or_default();
    // Declared after `installed`, so dropped before it: the trial process is killed,
    // then the update rolled back.
    let mut group = GroupGuard(i32::try_from(pid).ok().map(nix::unistd::Pid::from_raw));
    let limit = config.health_timeout;
    tracing::info!(
        "started version {} (pid {pid}) on trial: it has {} s to come back healthy",
        installed.version,
        limit.as_secs()
    );
    let deadline = Instant::now() + limit;
    let mut poll = tokio::time::interval(TRIAL_POLL);
    let report = loop {
        tokio::select! {
            status = child.wait() => {
                let how = match status {
                    Ok(status) => describe(status),
                    Err(error) => format!("could not be waited for ({error})"),
                };
                group.kill();
                installed.roll_back(&format!("the new version {how} before it was healthy"));
                return HandedOver::Resume;
            }
            _ = poll.tick() => {
                if let Ok(report) = fs::read_to_string(&healthy) {
                    break report;
                }
                if Instant::now() >= deadline {
                    group.kill();
                    reap(&mut child, STOP_GRACE).await;
                    installed.roll_back(&format!(
                        "the new version was not healthy within {} s",
                        limit.as_secs()
                    ));
                    return HandedOver::Resume;
                }
            }
        }
    };
    // One that falls over right after its hello is not healthy either.
    tokio::select! {
        status = child.wait() => {
            let how = match status {
                Ok(status) => describe(status),
                Err(error) => format!("could not be waited for ({error})"),
            };
            group.kill();
            installed.roll_back(&format!("the new version {how} right after it came online"));
            return HandedOver::Resume;
        }
        () = tokio::time::sleep(SETTLE) => {}
    }
    installed.keep();
    let mut lines = report.lines();
    let reported_pid = lines.next().unwrap_or_default().trim().to_owned();
    let firmware = lines.next().unwrap_or_default().trim().to_owned();
    tracing::info!(
        "updated to {}: the new version (pid {reported_pid}) is online and healthy",
        installed.version
    );
    if firmware != installed.version {
        tracing::warn!(
            "the new version reports firmware {firmware:?}, not {:?}: is `firmware` set in \
             the configuration, or --firmware given?",
            installed.version
        );
    }
    if std::env::var_os("INVOCATION_ID").is_some() {
        // Under systemd: the service's main process must be the new executable, which
        // Restart= brings up once this one exits. The trial process goes first (it says
        // bye), so that two agents are never online at once.
        tracing::info!(
            "under systemd: stopping the trial process; systemd restarts the service into {}",
            installed.version
        );
        if let Some(group) = group.0 {
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGTERM);
        }
        if !reap(&mut child, STOP_GRACE).await {
            group.kill();
            reap(&mut child, Duration::from_secs(2)).await;
        }
        group.0 = None;
    } else {
        // The trial process is the device now; it outlives this one.
        group.0 = None;
    }
    HandedOver::Exit
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => format!("ended ({status})"),
    }
}

/// A new version on trial: once its first hello is out it tells the version that
/// started it, by writing `<trial>.healthy` (its pid, then its firmware, one a line).
#[derive(Debug)]
pub struct Trial {
    healthy: PathBuf,
    firmware: String,
    reported: AtomicBool,
}

impl Trial {
    /// The trial that [`TRIAL_ENV`] asks for, if any.
    pub fn from_env(firmware: impl Into<String>) -> Option<Self> {
        let trial = std::env::var_os(TRIAL_ENV).filter(|value| !value.is_empty())?;
        Some(Self::new(PathBuf::from(trial), firmware))
    }

    pub fn new(trial: PathBuf, firmware: impl Into<String>) -> Self {
        Self {
            healthy: sibling(&trial, ".healthy"),
            firmware: firmware.into(),
            reported: AtomicBool::new(false),
        }
    }

    /// Says "healthy", the first time it is called.
    pub fn online(&self) {
        if self.reported.swap(true, Ordering::AcqRel) {
            return;
        }
        let report = format!("{}\n{}\n", std::process::id(), self.firmware);
        match write_atomically(&self.healthy, report.as_bytes()) {
            Ok(()) => tracing::info!(
                "on trial after an update: online, so reported healthy ({})",
                self.healthy.display()
            ),
            Err(error) => tracing::error!(
                "on trial after an update, but cannot report healthy in {}: {error}; the \
                 previous version will roll back",
                self.healthy.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tether-update-unit-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn amounts_and_percentages_read_well() {
        assert_eq!(amount(1_200_000, 3_400_000), "1.2 of 3.4 MB");
        assert_eq!(amount(12_345, 40_000), "12 of 40 kB");
        assert_eq!(amount(50, 100), "50 of 100 bytes");
        assert_eq!(size_text(1_100_000), "1.1 MB");
        assert_eq!(percent(37, 100), 37);
        assert_eq!(percent(5, 0), 100);
    }

    #[test]
    fn verification_checks_size_digest_and_signature() {
        use ed25519_dalek::{Signer as _, SigningKey};
        let dir = scratch("verify");
        let path = dir.join("file");
        fs::write(&path, b"new version").unwrap();
        let digest: [u8; 32] = Sha256::digest(b"new version").into();
        let sha = hex::encode(digest);
        let signer = SigningKey::from_bytes(&[7; 32]);
        let key = signer.verifying_key();
        let good = signer.sign(&digest).to_bytes();
        assert_eq!(verify(&path, 11, &sha, None, None), Ok(()));
        assert_eq!(verify(&path, 11, &sha, Some(good), Some(&key)), Ok(()));
        assert!(
            verify(&path, 12, &sha, None, None)
                .unwrap_err()
                .contains("11 bytes, not 12")
        );
        let other = hex::encode([0u8; 32]);
        assert!(
            verify(&path, 11, &other, None, None)
                .unwrap_err()
                .starts_with("verification failed: its SHA-256")
        );
        let bad = signer.sign(b"something else").to_bytes();
        assert_eq!(
            verify(&path, 11, &sha, Some(bad), Some(&key)).unwrap_err(),
            "verification failed: bad signature"
        );
        assert!(
            verify(&path, 11, &sha, None, Some(&key))
                .unwrap_err()
                .starts_with("verification failed: bad signature")
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_table_is_checked() {
        let dir = scratch("table");
        let file: UpdateFile = toml::from_str(&format!(
            "enabled = true\npublic_key = \"{}\"\nstate_dir = \"state\"\nhealth_timeout_s = 10\n",
            hex::encode(
                ed25519_dalek::SigningKey::from_bytes(&[1; 32])
                    .verifying_key()
                    .as_bytes()
            )
        ))
        .unwrap();
        let config = file.check(&dir).unwrap();
        assert!(config.enabled);
        assert_eq!(config.state_dir, dir.join("state"));
        assert_eq!(config.health_timeout, Duration::from_secs(10));
        assert_eq!(config.executable, std::env::current_exe().unwrap());

        let file: UpdateFile = toml::from_str(
            "enabled = true\npublic_key = \"abc\"\nhealth_timeout_s = 1\ninstall = [\"dpkg\", \"{nope}\"]\nexecutable = \"missing\"\n",
        )
        .unwrap();
        let problems: Vec<String> = file
            .check(&dir)
            .unwrap_err()
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        let all = problems.join("\n");
        for fragment in [
            "update.public_key: must be 64 hex digits",
            "update.health_timeout_s is 1",
            "update.install: program dpkg must be an absolute path",
            "{nope}, which is not a declared argument",
            "update.executable",
        ] {
            assert!(all.contains(fragment), "no {fragment:?} in:\n{all}");
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_install_replaces_atomically_and_keeps_the_previous_version() {
        let dir = scratch("install");
        let executable = dir.join("agent");
        fs::write(&executable, b"old").unwrap();
        fs::set_permissions(&executable, fs::Permissions::from_mode(0o750)).unwrap();
        let file = dir.join("download");
        fs::write(&file, b"new").unwrap();
        writable(&executable).unwrap();
        install_file(&file, &executable, &dir).unwrap();
        assert_eq!(fs::read(&executable).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&executable).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(fs::read(dir.join("previous")).unwrap(), b"old");
        assert_eq!(
            fs::metadata(dir.join("previous"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o750
        );
        assert!(!dir.join("agent.new").exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_downloads_folder_keeps_only_this_update() {
        let dir = scratch("downloads");
        let sha = "a".repeat(64);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("{}.part", "b".repeat(64))), b"old").unwrap();
        fs::write(dir.join(&sha), b"verified once").unwrap();
        prepare_downloads(&dir, &sha).unwrap();
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [format!("{sha}.part")]);
        let _ = fs::remove_dir_all(&dir);
    }
}
