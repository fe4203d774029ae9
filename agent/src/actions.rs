//! Actions: commands that run programs, declared in the agent's configuration file.
//!
//! Each action is announced as a command with typed arguments (the capability types of
//! [`protocol::ArgSpec`]); when the server sends it, the arguments have already been
//! validated against those types, and the action's program is started **directly,
//! never through a shell**, with its argument list in which every `{name}` placeholder
//! is replaced by the text of the validated value. A value is never split nor
//! interpreted: `; rm -rf /` arrives as one literal argument. `{{` and `}}` stand for
//! literal braces. An argument element that is exactly one placeholder of an optional
//! argument that was not given is left out; inside a longer element it becomes empty.
//!
//! The program runs:
//! - in `cwd` (default `/`), with stdin from `/dev/null`, and a clean environment:
//!   `PATH=/usr/sbin:/usr/bin:/sbin:/bin`, `LANG=C.UTF-8`, plus the action's `env`;
//! - in its own process group, which is killed (SIGKILL to the whole group) when it runs
//!   out of time (the action's `timeout_ms` or the command's own deadline, whichever is
//!   first), when the command is cancelled (its future dropped), when the agent shuts
//!   down, and once the program itself has exited (so that nothing it left behind in
//!   the background outlives it);
//! - with stdout and stderr read together: streamed as progress messages, at most four a
//!   second (lines are coalesced) and each at most 1 KiB, and kept up to
//!   `max_output_bytes` (what comes after is dropped and the reply says `truncated`).
//!
//! Its exit code decides: 0 replies `{"exit_code": 0, "output": "<last 4 KiB>",
//! "truncated": bool}`; anything else (or death by a signal, or running out of time)
//! fails the command with the code and the output's tail.
//!
//! **Non-cancellable actions** (`cancellable = false`): the session cannot refuse a
//! cancel — it drops the command's future and replies `cancelled` at once. Such an
//! action's program is therefore run in a task of its own, detached from that future:
//! on cancel it keeps running to completion (or to its own timeout, when it is killed)
//! and nothing more is reported about it — no progress, no reply. Only the agent's own
//! shutdown kills it (when the runtime drops the task).

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use protocol::{ArgSpec, CommandSpec, capability::valid_command_name};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::{io::AsyncReadExt as _, sync::mpsc};

use crate::{Command, CommandContext, CommandError};

/// The environment's `PATH` for every action.
pub const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// The default and the longest time an action may run.
pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// The default and the largest amount of output kept.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 64 * 1024;
pub const MAX_MAX_OUTPUT_BYTES: u64 = 16 * 1024 * 1024;
/// The most output a reply carries: the end of what was kept.
pub const REPLY_TAIL_BYTES: usize = 4 * 1024;
/// The longest progress message, and the shortest gap between two.
pub const PROGRESS_MAX_BYTES: usize = 1024;
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// One action as declared in the configuration file (`[[actions]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    /// The command's name, as the server sends it.
    pub name: String,
    /// One line for people.
    #[serde(default)]
    pub description: String,
    /// Typed arguments, as in any command's capabilities.
    #[serde(default)]
    pub args: Vec<ArgSpec>,
    /// The program's absolute path; it is run directly, never through a shell.
    pub program: PathBuf,
    /// Its arguments, with `{arg}` placeholders.
    #[serde(default)]
    pub argv: Vec<String>,
    /// Where it runs; `/` by default.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Extra environment variables, on top of `PATH` and `LANG`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_max_output_bytes")]
    pub max_output_bytes: u64,
    #[serde(default = "default_cancellable")]
    pub cancellable: bool,
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}
fn default_max_output_bytes() -> u64 {
    DEFAULT_MAX_OUTPUT_BYTES
}
fn default_cancellable() -> bool {
    true
}

/// A piece of an argv element: literal text or an argument's value.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Arg(String),
}

/// Splits an argv element into pieces; `{{` and `}}` are literal braces.
fn parse_element(element: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = element.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => {
                            return Err(format!(
                                "argv element {element:?} has an unclosed `{{` (write `{{{{` for a literal brace)"
                            ));
                        }
                    }
                }
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Arg(name));
            }
            '}' => {
                return Err(format!(
                    "argv element {element:?} has a lone `}}` (write `}}}}` for a literal brace)"
                ));
            }
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

impl ActionSpec {
    /// Everything wrong with this action on its own (not counting clashes with others),
    /// each as a sentence. Checks the file system: the program must exist and be
    /// executable, the working directory must exist.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !valid_command_name(&self.name) {
            problems.push(format!(
                "the name {:?} must be 1–64 letters, digits, `_`, `-` or `.`",
                self.name
            ));
        }
        // Each argument as servers check it in a hello (name, range, choices, default).
        let mut names = BTreeSet::new();
        for arg in &self.args {
            problems.extend(arg.problems());
            if !names.insert(arg.name.as_str()) {
                problems.push(format!("argument {:?} is declared twice", arg.name));
            }
        }
        for element in &self.argv {
            match parse_element(element) {
                Err(problem) => problems.push(problem),
                Ok(pieces) => {
                    for piece in pieces {
                        if let Piece::Arg(name) = piece
                            && !names.contains(name.as_str())
                        {
                            problems.push(format!(
                                "argv element {element:?} refers to {{{name}}}, which is not a declared argument"
                            ));
                        }
                    }
                }
            }
        }
        if !self.program.is_absolute() {
            problems.push(format!(
                "program {} must be an absolute path (no PATH lookup, no shell)",
                self.program.display()
            ));
        } else {
            match std::fs::metadata(&self.program) {
                Err(error) => problems.push(format!(
                    "program {} cannot be used: {error}",
                    self.program.display()
                )),
                Ok(meta) if !meta.is_file() => {
                    problems.push(format!("program {} is not a file", self.program.display()))
                }
                Ok(meta) if meta.permissions().mode() & 0o111 == 0 => problems.push(format!(
                    "program {} is not executable",
                    self.program.display()
                )),
                Ok(_) => {}
            }
        }
        if let Some(cwd) = &self.cwd {
            if !cwd.is_absolute() {
                problems.push(format!("cwd {} must be an absolute path", cwd.display()));
            } else if !cwd.is_dir() {
                problems.push(format!(
                    "cwd {} is not an existing directory",
                    cwd.display()
                ));
            }
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains(['=', '\0']) {
                problems.push(format!(
                    "env key {key:?} must be non-empty without `=` or NUL"
                ));
            }
            if value.contains('\0') {
                problems.push(format!("env value of {key:?} contains NUL"));
            }
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&self.timeout_ms) {
            problems.push(format!(
                "timeout_ms is {}, outside 1..={MAX_TIMEOUT_MS}",
                self.timeout_ms
            ));
        }
        if !(1..=MAX_MAX_OUTPUT_BYTES).contains(&self.max_output_bytes) {
            problems.push(format!(
                "max_output_bytes is {}, outside 1..={MAX_MAX_OUTPUT_BYTES}",
                self.max_output_bytes
            ));
        }
        problems
    }

    /// The command announced for it.
    pub fn command(&self) -> CommandSpec {
        CommandSpec {
            name: self.name.clone(),
            description: self.description.clone(),
            args: self.args.clone(),
        }
    }

    /// The program's arguments with every placeholder replaced by its value's text.
    fn argv_for(&self, args: &BTreeMap<String, Value>) -> Vec<String> {
        let mut argv = Vec::with_capacity(self.argv.len());
        for element in &self.argv {
            // Checked when the action was accepted.
            let pieces = parse_element(element).unwrap_or_default();
            if let [Piece::Arg(name)] = pieces.as_slice()
                && !args.contains_key(name)
            {
                continue;
            }
            let mut out = String::new();
            for piece in pieces {
                match piece {
                    Piece::Text(text) => out.push_str(&text),
                    Piece::Arg(name) => out.push_str(&value_text(args.get(&name))),
                }
            }
            argv.push(out);
        }
        argv
    }
}

/// A value as program text: strings as they are, numbers and booleans as JSON writes them.
fn value_text(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    }
}

/// The declared actions, checked.
#[derive(Debug, Clone, Default)]
pub struct Actions {
    specs: Vec<Arc<ActionSpec>>,
}

impl Actions {
    /// Checks every action (see [`ActionSpec::problems`]) and that their names are
    /// unique; returns every problem, each prefixed with the action's name.
    ///
    /// # Errors
    /// Every problem found.
    pub fn new(specs: Vec<ActionSpec>) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut seen = BTreeSet::new();
        for spec in &specs {
            for problem in spec.problems() {
                problems.push(format!("action {:?}: {problem}", spec.name));
            }
            if !seen.insert(spec.name.clone()) {
                problems.push(format!(
                    "action {:?}: another action has the same name",
                    spec.name
                ));
            }
        }
        if problems.is_empty() {
            Ok(Self {
                specs: specs.into_iter().map(Arc::new).collect(),
            })
        } else {
            Err(problems)
        }
    }

    /// The declared actions.
    pub fn specs(&self) -> impl Iterator<Item = &ActionSpec> {
        self.specs.iter().map(|spec| &**spec)
    }

    pub fn commands(&self) -> Vec<CommandSpec> {
        self.specs.iter().map(|spec| spec.command()).collect()
    }

    pub fn handles(&self, name: &str) -> bool {
        self.specs.iter().any(|spec| spec.name == name)
    }

    pub fn len(&self) -> usize {
        self.specs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// Runs `command`'s action, streaming its output as progress through `context`.
    ///
    /// # Errors
    /// Unknown command, a program that cannot start, a non-zero exit, a signal, or
    /// running out of time.
    pub async fn run(
        &self,
        command: &Command,
        context: &CommandContext,
    ) -> Result<Value, CommandError> {
        self.run_with(command, |message| {
            let context = context.clone();
            async move { context.progress(None, message).await }
        })
        .await
    }

    /// [`Actions::run`], with progress messages going to `progress` (already bounded
    /// in rate and size).
    ///
    /// # Errors
    /// As [`Actions::run`].
    pub async fn run_with<F, Fut>(
        &self,
        command: &Command,
        mut progress: F,
    ) -> Result<Value, CommandError>
    where
        F: FnMut(String) -> Fut + Send,
        Fut: Future<Output = ()> + Send,
    {
        let Some(spec) = self.specs.iter().find(|spec| spec.name == command.name) else {
            return Err(CommandError {
                code: protocol::ErrorCode::UnknownCommand,
                message: format!("unknown command \"{}\"", command.name),
            });
        };
        let limit = Duration::from_millis(spec.timeout_ms).min(command.timeout);
        let (progress_tx, mut progress_rx) = mpsc::channel::<String>(4);
        let task = tokio::spawn(execute(
            spec.clone(),
            spec.argv_for(&command.args),
            limit,
            progress_tx,
        ));
        // Dropping this future (cancel, timeout, shutdown) aborts a cancellable action's
        // task, whose guard kills the process group; a non-cancellable one runs on.
        let _abort = spec.cancellable.then(|| AbortOnDrop(task.abort_handle()));
        let mut task = task;
        loop {
            tokio::select! {
                Some(message) = progress_rx.recv() => progress(message).await,
                joined = &mut task => {
                    // Whatever was queued before the end still goes out, in order.
                    while let Ok(message) = progress_rx.try_recv() {
                        progress(message).await;
                    }
                    return joined.unwrap_or_else(|error| {
                        Err(CommandError::failed(format!("the action's task ended: {error}")))
                    });
                }
            }
        }
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Kills a process group with SIGKILL when dropped, unless it is known to be gone.
pub(crate) struct GroupGuard(pub(crate) Option<nix::unistd::Pid>);

impl GroupGuard {
    pub(crate) fn kill(&mut self) {
        if let Some(group) = self.0.take() {
            // ESRCH (nothing left in the group) is the usual, fine outcome.
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Output kept for the reply, and the pending progress text.
#[derive(Default)]
struct Output {
    kept: Vec<u8>,
    limit: usize,
    truncated: bool,
    pending: String,
    pending_cut: bool,
}

impl Output {
    fn take(&mut self, chunk: &[u8]) {
        let room = self.limit.saturating_sub(self.kept.len());
        let used = &chunk[..chunk.len().min(room)];
        if used.len() < chunk.len() {
            self.truncated = true;
        }
        self.kept.extend_from_slice(used);
        if self.pending.len() < PROGRESS_MAX_BYTES {
            self.pending.push_str(&String::from_utf8_lossy(used));
        } else if !used.is_empty() {
            self.pending_cut = true;
        }
    }

    /// The next progress message, if there is anything to say.
    fn progress(&mut self) -> Option<String> {
        let mut text = std::mem::take(&mut self.pending);
        let cut = std::mem::take(&mut self.pending_cut) || text.len() > PROGRESS_MAX_BYTES;
        if cut {
            const MARK: &str = " […]";
            let mut end = PROGRESS_MAX_BYTES - MARK.len();
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push_str(MARK);
        }
        let text = text.trim_end().to_owned();
        (!text.is_empty()).then_some(text)
    }

    fn tail(&self) -> String {
        let text = String::from_utf8_lossy(&self.kept);
        let mut start = text.len().saturating_sub(REPLY_TAIL_BYTES);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        text[start..].to_owned()
    }
}

/// Starts the program and sees it through; runs in a task of its own.
async fn execute(
    spec: Arc<ActionSpec>,
    argv: Vec<String>,
    limit: Duration,
    progress: mpsc::Sender<String>,
) -> Result<Value, CommandError> {
    let mut child = tokio::process::Command::new(&spec.program);
    child
        .args(&argv)
        .current_dir(spec.cwd.clone().unwrap_or_else(|| PathBuf::from("/")))
        .env_clear()
        .env("PATH", PATH)
        .env("LANG", "C.UTF-8")
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = child.spawn().map_err(|error| {
        CommandError::failed(format!("cannot start {}: {error}", spec.program.display()))
    })?;
    let mut group = GroupGuard(
        child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(nix::unistd::Pid::from_raw),
    );
    let (chunk_tx, mut chunks) = mpsc::channel::<Vec<u8>>(16);
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(pump(stdout, chunk_tx.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(pump(stderr, chunk_tx.clone()));
    }
    drop(chunk_tx);

    let mut output = Output {
        limit: usize::try_from(spec.max_output_bytes).unwrap_or(usize::MAX),
        ..Output::default()
    };
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    let mut ticks = tokio::time::interval(PROGRESS_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut open = true;
    let status = loop {
        tokio::select! {
            chunk = chunks.recv(), if open => match chunk {
                Some(chunk) => output.take(&chunk),
                None => open = false,
            },
            _ = ticks.tick() => {
                if let Some(message) = output.progress() {
                    // Never held up by a slow forwarder: a message it has no room for is
                    // dropped (the output is still kept for the reply).
                    let _ = progress.try_send(message);
                }
            }
            status = child.wait() => break Some(status),
            () = &mut deadline => break None,
        }
    };
    // Whatever the program left behind goes with it; then the pipes close.
    group.kill();
    if status.is_none() {
        let _ = child.wait().await;
    }
    let drain = tokio::time::sleep(Duration::from_secs(1));
    tokio::pin!(drain);
    while open {
        tokio::select! {
            chunk = chunks.recv() => match chunk {
                Some(chunk) => output.take(&chunk),
                None => open = false,
            },
            () = &mut drain => break,
        }
    }
    if let Some(message) = output.progress() {
        let _ = progress.send(message).await;
    }
    let tail = output.tail();
    let status = match status {
        None => {
            return Err(CommandError::failed(format!(
                "timed out after {} ms and was killed; output: {tail}",
                limit.as_millis()
            )));
        }
        Some(Err(error)) => {
            return Err(CommandError::failed(format!(
                "cannot wait for {}: {error}",
                spec.program.display()
            )));
        }
        Some(Ok(status)) => status,
    };
    match status.code() {
        Some(0) => Ok(json!({
            "exit_code": 0,
            "output": tail,
            "truncated": output.truncated,
        })),
        Some(code) => Err(CommandError::failed(format!(
            "exited with code {code}; output: {tail}"
        ))),
        None => {
            use std::os::unix::process::ExitStatusExt as _;
            Err(CommandError::failed(format!(
                "killed by signal {}; output: {tail}",
                status.signal().unwrap_or_default()
            )))
        }
    }
}

/// Reads a pipe in chunks until it closes.
pub(crate) async fn pump(
    mut pipe: impl tokio::io::AsyncRead + Unpin,
    chunks: mpsc::Sender<Vec<u8>>,
) {
    let mut buffer = vec![0; 8192];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if chunks.send(buffer[..n].to_vec()).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_whole_or_part_of_an_element() {
        assert_eq!(
            parse_element("--unit={service}.service").unwrap(),
            vec![
                Piece::Text("--unit=".into()),
                Piece::Arg("service".into()),
                Piece::Text(".service".into())
            ]
        );
        assert_eq!(
            parse_element("{{literal}}").unwrap(),
            vec![Piece::Text("{literal}".into())]
        );
        assert!(parse_element("{open").is_err());
        assert!(parse_element("close}").is_err());
    }

    #[test]
    fn output_is_kept_up_to_its_limit_and_progress_is_cut() {
        let mut output = Output {
            limit: 10,
            ..Output::default()
        };
        output.take(b"0123456789abc");
        assert!(output.truncated);
        assert_eq!(output.tail(), "0123456789");
        let mut output = Output {
            limit: 1 << 20,
            ..Output::default()
        };
        output.take(&vec![b'x'; 5000]);
        let message = output.progress().unwrap();
        assert!(message.len() <= PROGRESS_MAX_BYTES, "{}", message.len());
        assert!(output.progress().is_none());
    }
}
