//! The built-in `logs` command: the last lines of a configured log — a file, or a
//! systemd unit's journal — optionally filtered, sent as bounded progress messages,
//! and optionally followed for a bounded time.
//!
//! Only the sources named in the configuration's `[logs]` table can be read: the
//! command takes a source's **name** (a `choice` of the configured names), never a
//! path, so that a device does not become a remote file reader.
//!
//! ```toml
//! [logs]
//! max_lines = 500          # the most lines one command may ask for (at most 5000)
//! follow_max_s = 60        # the longest a command may follow (at most 600)
//! [logs.sources]
//! syslog = { file = "/var/log/syslog" }
//! agent = { unit = "tether-agent.service" }   # also the agent's own log in diagnostics
//! ```
//!
//! - A file's last lines are found by reading it backwards in blocks, never whole.
//! - A journal is read with `/usr/bin/journalctl -u UNIT -n N --no-pager -o short-iso`,
//!   started like an action: directly (never through a shell), in its own process
//!   group (killed at the end), with a clean environment, bounded in time and output.
//! - `filter` keeps the lines containing it, ignoring case: a plain substring, not a
//!   pattern. For a file, the last `lines` matching lines (looking back at most
//!   [`MAX_SCAN_BYTES`]); for a journal, the matching lines among its last
//!   `max_lines`.
//! - Lines go out as progress messages of at most [`PROGRESS_MAX_BYTES`], at most four
//!   a second; a line longer than [`LINE_MAX_BYTES`] is cut (and the reply says
//!   `truncated`). The reply is `{"source", "lines": <lines sent>, "truncated"}`, with
//!   `"output"` (the lines, `\n`-separated) when they fit in [`REPLY_MAX_BYTES`].
//! - `follow`: after the last lines, new ones as they come, until `follow_s` seconds have
//!   passed or the command is cancelled. A file is polled every [`FOLLOW_POLL`]; when
//!   it is replaced (another inode: rotation) or shrinks (truncation), it is reopened
//!   and read from its start. A journal is followed by `journalctl -f`, killed at the
//!   end. Everything runs inside the command's future: dropping it stops all of it.

use std::{
    collections::BTreeMap,
    io::{Read as _, Seek as _, SeekFrom},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use protocol::{ArgKind, ArgSpec, CommandSpec};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::{sync::mpsc, time::Instant};
use toml::Spanned;

use crate::{
    Command, CommandContext, CommandError,
    actions::{GroupGuard, PATH, PROGRESS_EVERY, PROGRESS_MAX_BYTES, pump},
};

/// The default and the largest `max_lines`.
pub const DEFAULT_MAX_LINES: u64 = 500;
pub const MAX_MAX_LINES: u64 = 5000;
/// The default and the largest `follow_max_s`.
pub const DEFAULT_FOLLOW_MAX_S: u64 = 60;
pub const MAX_FOLLOW_MAX_S: u64 = 600;
/// The default of the command's `lines`.
pub const DEFAULT_LINES: u64 = 100;
/// How far back a file is searched for matching lines.
pub const MAX_SCAN_BYTES: u64 = 16 * 1024 * 1024;
/// A longer line is cut.
pub const LINE_MAX_BYTES: usize = 1000;
/// The most the reply carries of the lines themselves.
pub const REPLY_MAX_BYTES: usize = 4 * 1024;
/// How often a followed file is looked at.
pub const FOLLOW_POLL: Duration = Duration::from_millis(500);
/// Where the journal is read from.
pub const JOURNALCTL: &str = "/usr/bin/journalctl";
/// How long `journalctl -n` may take.
const JOURNAL_TIMEOUT: Duration = Duration::from_secs(15);
/// The most a followed file is read at once; more than that (a burst) is skipped.
const FOLLOW_READ_MAX: u64 = 1024 * 1024;
/// What marks a cut line.
const CUT: &str = " […]";

/// The `[logs]` table as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsFile {
    #[serde(default)]
    pub sources: BTreeMap<String, Spanned<SourceFile>>,
    pub max_lines: Option<Spanned<u64>>,
    pub follow_max_s: Option<Spanned<u64>>,
}

/// One source as written: `{ file = "/var/log/syslog" }` or `{ unit = "nginx.service" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFile {
    pub file: Option<PathBuf>,
    pub unit: Option<String>,
}

/// A problem with the `[logs]` table and the byte span it is about.
pub type SpannedProblem = (Option<std::ops::Range<usize>>, String);

/// Where a source's lines come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Unit(String),
}

/// The configured sources, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logs {
    pub sources: BTreeMap<String, Source>,
    pub max_lines: u64,
    pub follow_max_s: u64,
}

impl Default for Logs {
    fn default() -> Self {
        Self {
            sources: BTreeMap::new(),
            max_lines: DEFAULT_MAX_LINES,
            follow_max_s: DEFAULT_FOLLOW_MAX_S,
        }
    }
}

fn valid_unit(unit: &str) -> bool {
    !unit.is_empty()
        && unit.len() <= 256
        && !unit.starts_with('-')
        && unit
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '@' | '-' | '\\'))
}

impl Logs {
    /// Checks the `[logs]` table; every problem comes with the span it is about.
    ///
    /// # Errors
    /// Every problem found.
    pub fn check(file: LogsFile) -> Result<Self, Vec<SpannedProblem>> {
        let mut problems = Vec::new();
        let mut logs = Self::default();
        if let Some(max_lines) = &file.max_lines {
            let value = *max_lines.get_ref();
            if !(1..=MAX_MAX_LINES).contains(&value) {
                problems.push((
                    Some(max_lines.span()),
                    format!("logs.max_lines is {value}, outside 1..={MAX_MAX_LINES}"),
                ));
            }
            logs.max_lines = value;
        }
        if let Some(follow) = &file.follow_max_s {
            let value = *follow.get_ref();
            if !(1..=MAX_FOLLOW_MAX_S).contains(&value) {
                problems.push((
                    Some(follow.span()),
                    format!("logs.follow_max_s is {value}, outside 1..={MAX_FOLLOW_MAX_S}"),
                ));
            }
            logs.follow_max_s = value;
        }
        for (name, source) in file.sources {
            let span = Some(source.span());
            let source = source.into_inner();
            if !protocol::capability::valid_command_name(&name) {
                problems.push((
                    span.clone(),
                    format!("log source {name:?}: the name must be 1–64 letters, digits, `_`, `-` or `.`"),
                ));
            }
            match (source.file, source.unit) {
                (Some(file), None) => {
                    if file.is_absolute() {
                        logs.sources.insert(name, Source::File(file));
                    } else {
                        problems.push((
                            span,
                            format!(
                                "log source {name:?}: file {} must be an absolute path",
                                file.display()
                            ),
                        ));
                    }
                }
                (None, Some(unit)) => {
                    if valid_unit(&unit) {
                        logs.sources.insert(name, Source::Unit(unit));
                    } else {
                        problems.push((
                            span,
                            format!("log source {name:?}: {unit:?} is not a systemd unit name"),
                        ));
                    }
                }
                _ => problems.push((
                    span,
                    format!("log source {name:?}: give either file or unit (exactly one)"),
                )),
            }
        }
        if problems.is_empty() {
            Ok(logs)
        } else {
            Err(problems)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// The `logs` command, announced only when there are sources.
    pub fn command(&self) -> Option<CommandSpec> {
        if self.sources.is_empty() {
            return None;
        }
        let max_lines = i64::try_from(self.max_lines).unwrap_or(i64::MAX);
        let follow_max = i64::try_from(self.follow_max_s).unwrap_or(i64::MAX);
        Some(CommandSpec {
            name: protocol::capability::builtin::LOGS.into(),
            description: "The last lines of a configured log, optionally filtered or followed"
                .into(),
            args: vec![
                ArgSpec {
                    name: "source".into(),
                    description: "Which log".into(),
                    kind: ArgKind::Choice {
                        choices: self.sources.keys().cloned().collect(),
                    },
                    required: true,
                    default: None,
                },
                ArgSpec {
                    name: "lines".into(),
                    description: "How many of the last lines".into(),
                    kind: ArgKind::Integer {
                        min: Some(1),
                        max: Some(max_lines),
                    },
                    required: false,
                    default: Some(json!(DEFAULT_LINES.min(self.max_lines))),
                },
                ArgSpec {
                    name: "filter".into(),
                    description: "Only lines containing this text (ignoring case)".into(),
                    kind: ArgKind::String { max_len: Some(256) },
                    required: false,
                    default: None,
                },
                ArgSpec {
                    name: "follow".into(),
                    description: "Then send new lines as they come".into(),
                    kind: ArgKind::Boolean,
                    required: false,
                    default: Some(json!(false)),
                },
                ArgSpec {
                    name: "follow_s".into(),
                    description: "How long to follow, in seconds".into(),
                    kind: ArgKind::Integer {
                        min: Some(1),
                        max: Some(follow_max),
                    },
                    required: false,
                    default: Some(json!(self.follow_max_s)),
                },
            ],
        })
    }

    /// Runs the `logs` command, sending lines as progress through `context`.
    ///
    /// # Errors
    /// An unknown source, bad arguments, or a log that cannot be read.
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

    /// [`Logs::run`], with progress messages going to `progress`. Dropping the future
    /// stops everything it started.
    ///
    /// # Errors
    /// As [`Logs::run`].
    pub async fn run_with<F, Fut>(
        &self,
        command: &Command,
        progress: F,
    ) -> Result<Value, CommandError>
    where
        F: FnMut(String) -> Fut + Send,
        Fut: Future<Output = ()> + Send,
    {
        let name = command.string("source").unwrap_or_default();
        let Some(source) = self.sources.get(name) else {
            return Err(CommandError::invalid_arguments(format!(
                "no log source is named {name:?}"
            )));
        };
        let lines = command
            .integer("lines")
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(DEFAULT_LINES)
            .clamp(1, self.max_lines);
        let lines = usize::try_from(lines).unwrap_or(usize::MAX);
        let filter = Filter::new(command.string("filter"));
        let follow = command
            .args
            .get("follow")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let follow_s = command
            .integer("follow_s")
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(self.follow_max_s)
            .clamp(1, self.follow_max_s);
        // Finish (and reply) before the session's own deadline would cut us off.
        let started = Instant::now();
        let end = started
            + command
                .timeout
                .saturating_sub(Duration::from_secs(2))
                .max(Duration::from_millis(500));
        let follow_end = (started + Duration::from_secs(follow_s)).min(end);
        let mut out = Emitter::new(progress, end);

        match source {
            Source::File(path) => {
                let (tail, cut, next) = tail_file(path, lines, &filter).map_err(|error| {
                    CommandError::failed(format!("{}: {error}", path.display()))
                })?;
                out.truncated |= cut;
                for line in tail {
                    out.line(&line).await;
                }
                out.flush().await;
                if follow {
                    follow_file(path, next, &filter, follow_end, &mut out).await;
                }
            }
            Source::Unit(unit) => {
                if follow {
                    let args = journal_args(unit, lines, true);
                    follow_journal(&args, &filter, follow_end, &mut out).await?;
                } else {
                    let asked = if filter.is_some() {
                        usize::try_from(self.max_lines).unwrap_or(lines)
                    } else {
                        lines
                    };
                    let args = journal_args(unit, asked, false);
                    let text = run_bounded(
                        Path::new(JOURNALCTL),
                        &args,
                        JOURNAL_TIMEOUT,
                        asked.saturating_mul(4096),
                    )
                    .await
                    .map_err(CommandError::failed)?;
                    let kept: Vec<&str> =
                        text.lines().filter(|line| filter.matches(line)).collect();
                    let skip = kept.len().saturating_sub(lines);
                    for line in &kept[skip..] {
                        out.line(line).await;
                    }
                }
            }
        }
        out.flush().await;
        let mut reply = json!({
            "source": name,
            "lines": out.sent,
            "truncated": out.truncated,
        });
        if let Some(kept) = out.kept {
            reply["output"] = json!(kept);
        }
        Ok(reply)
    }
}

fn journal_args(unit: &str, lines: usize, follow: bool) -> Vec<String> {
    let mut args = vec![
        "-u".to_owned(),
        unit.to_owned(),
        "-n".to_owned(),
        lines.to_string(),
        "--no-pager".to_owned(),
        "-o".to_owned(),
        "short-iso".to_owned(),
    ];
    if follow {
        args.push("-f".to_owned());
    }
    args
}

/// A case-insensitive substring, or nothing (every line matches).
#[derive(Debug, Clone)]
pub struct Filter(Option<String>);

impl Filter {
    pub fn new(text: Option<&str>) -> Self {
        Self(text.filter(|text| !text.is_empty()).map(str::to_lowercase))
    }

    pub fn is_some(&self) -> bool {
        self.0.is_some()
    }

    pub fn matches(&self, line: &str) -> bool {
        self.0
            .as_ref()
            .is_none_or(|filter| line.to_lowercase().contains(filter.as_str()))
    }
}

/// Lines into paced, bounded progress messages; counts what was sent and keeps a small
/// result for the reply.
struct Emitter<F> {
    progress: F,
    pending: String,
    last: Option<Instant>,
    end: Instant,
    sent: usize,
    pending_lines: usize,
    truncated: bool,
    kept: Option<String>,
}

impl<F, Fut> Emitter<F>
where
    F: FnMut(String) -> Fut + Send,
    Fut: Future<Output = ()> + Send,
{
    fn new(progress: F, end: Instant) -> Self {
        Self {
            progress,
            pending: String::new(),
            last: None,
            end,
            sent: 0,
            pending_lines: 0,
            truncated: false,
            kept: Some(String::new()),
        }
    }

    async fn line(&mut self, line: &str) {
        let line = line.trim_end_matches(['\r', '\n']);
        let line = if line.len() > LINE_MAX_BYTES {
            self.truncated = true;
            let mut end = LINE_MAX_BYTES - CUT.len();
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}{CUT}", &line[..end])
        } else {
            line.to_owned()
        };
        if !self.pending.is_empty() && self.pending.len() + 1 + line.len() > PROGRESS_MAX_BYTES {
            self.flush().await;
        }
        if Instant::now() >= self.end {
            // Out of time: what is left is not sent.
            self.truncated = true;
            return;
        }
        if !self.pending.is_empty() {
            self.pending.push('\n');
        }
        self.pending.push_str(&line);
        self.pending_lines += 1;
    }

    async fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if let Some(last) = self.last {
            let next = last + PROGRESS_EVERY;
            if next > self.end {
                self.truncated = true;
                self.pending.clear();
                self.pending_lines = 0;
                return;
            }
            tokio::time::sleep_until(next).await;
        }
        let message = std::mem::take(&mut self.pending);
        if let Some(kept) = &mut self.kept {
            if kept.len() + message.len() + 1 > REPLY_MAX_BYTES {
                self.kept = None;
            } else {
                if !kept.is_empty() {
                    kept.push('\n');
                }
                kept.push_str(&message);
            }
        }
        (self.progress)(message).await;
        self.last = Some(Instant::now());
        self.sent += std::mem::take(&mut self.pending_lines);
    }
}

/// The last `count` lines of the file at `path` that `filter` keeps, read backwards in
/// blocks; whether the search stopped at [`MAX_SCAN_BYTES`]; and the file's length
/// when it was read (where following starts).
///
/// # Errors
/// If the file cannot be opened or read.
pub fn tail_file(
    path: &Path,
    count: usize,
    filter: &Filter,
) -> std::io::Result<(Vec<String>, bool, u64)> {
    const BLOCK: u64 = 64 * 1024;
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut pos = len;
    // Bytes after `pos` not yet split into lines (a partial line at their start).
    let mut rest: Vec<u8> = Vec::new();
    let mut found: Vec<String> = Vec::new();
    let mut first = true;
    let mut cut = false;
    while found.len() < count {
        if pos == 0 {
            if !rest.is_empty() {
                let line = String::from_utf8_lossy(&rest).into_owned();
                if filter.matches(&line) {
                    found.push(line);
                }
            }
            break;
        }
        if len - pos >= MAX_SCAN_BYTES {
            cut = true;
            break;
        }
        let size = BLOCK.min(pos);
        pos -= size;
        file.seek(SeekFrom::Start(pos))?;
        let mut block = vec![0; usize::try_from(size).unwrap_or(0)];
        file.read_exact(&mut block)?;
        block.extend_from_slice(&rest);
        if first {
            // A last line without its newline still counts; a final newline ends it.
            if block.last() == Some(&b'\n') {
                block.pop();
            }
            first = false;
        }
        // Every complete line is after a newline in this block.
        let mut end = block.len();
        while let Some(newline) = block[..end].iter().rposition(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&block[newline + 1..end]).into_owned();
            if filter.matches(&line) {
                found.push(line);
                if found.len() == count {
                    break;
                }
            }
            end = newline;
        }
        block.truncate(end);
        rest = block;
        if rest.len() as u64 > MAX_SCAN_BYTES {
            // One enormous line: it is not a log.
            cut = true;
            break;
        }
    }
    found.reverse();
    Ok((found, cut, len))
}

/// Sends the lines appended to the file at `path` after byte `from`, until `end`;
/// reopens it when it is replaced or shrinks.
async fn follow_file<F, Fut>(
    path: &Path,
    from: u64,
    filter: &Filter,
    end: Instant,
    out: &mut Emitter<F>,
) where
    F: FnMut(String) -> Fut + Send,
    Fut: Future<Output = ()> + Send,
{
    let mut file = std::fs::File::open(path).ok();
    let mut inode = file
        .as_ref()
        .and_then(|file| file.metadata().ok())
        .map(|meta| (meta.dev(), meta.ino()));
    let mut pos = from;
    let mut partial: Vec<u8> = Vec::new();
    loop {
        if Instant::now() >= end {
            break;
        }
        tokio::time::sleep_until((Instant::now() + FOLLOW_POLL).min(end)).await;
        let now = std::fs::metadata(path)
            .ok()
            .map(|meta| ((meta.dev(), meta.ino()), meta.len()));
        let replaced = match (now, inode) {
            (Some((id, _)), Some(old)) => id != old,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if replaced {
            // What was written to the old file before it was moved away still counts.
            if let Some(old) = file.as_mut() {
                let bytes = read_from(old, pos);
                emit(&mut partial, &bytes, filter, out).await;
            }
            if !partial.is_empty() {
                let line = String::from_utf8_lossy(&std::mem::take(&mut partial)).into_owned();
                if filter.matches(&line) {
                    out.line(&line).await;
                }
            }
            file = std::fs::File::open(path).ok();
            inode = file
                .as_ref()
                .and_then(|file| file.metadata().ok())
                .map(|meta| (meta.dev(), meta.ino()));
            pos = 0;
        } else if let (Some((_, len)), Some(_)) = (now, inode)
            && len < pos
        {
            // Truncated in place: start again from its start.
            pos = 0;
            partial.clear();
        }
        if let Some(current) = file.as_mut() {
            let bytes = read_from(current, pos);
            pos += bytes.len() as u64;
            emit(&mut partial, &bytes, filter, out).await;
        }
        out.flush().await;
    }
    out.flush().await;
}

/// What the file holds from `pos` on, up to [`FOLLOW_READ_MAX`].
fn read_from(file: &mut std::fs::File, pos: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(pos)).is_ok() {
        let _ = file.take(FOLLOW_READ_MAX).read_to_end(&mut bytes);
    }
    bytes
}

/// Splits `bytes` (after `partial`) into complete lines and sends those `filter` keeps;
/// an unfinished last line waits in `partial`.
async fn emit<F, Fut>(partial: &mut Vec<u8>, bytes: &[u8], filter: &Filter, out: &mut Emitter<F>)
where
    F: FnMut(String) -> Fut + Send,
    Fut: Future<Output = ()> + Send,
{
    partial.extend_from_slice(bytes);
    let Some(last) = partial.iter().rposition(|&b| b == b'\n') else {
        if partial.len() > LINE_MAX_BYTES * 64 {
            partial.clear();
            out.truncated = true;
        }
        return;
    };
    let complete: Vec<u8> = partial.drain(..=last).collect();
    for line in String::from_utf8_lossy(&complete).lines() {
        if filter.matches(line) {
            out.line(line).await;
        }
    }
}

/// A program started like an action: directly, with a clean environment, stdin from
/// `/dev/null`, in its own process group (killed when dropped), stdout and stderr read
/// together in chunks.
struct Started {
    child: tokio::process::Child,
    group: GroupGuard,
    chunks: mpsc::Receiver<Vec<u8>>,
}

fn start(program: &Path, args: &[String]) -> Result<Started, String> {
    let mut child = tokio::process::Command::new(program);
    child
        .args(args)
        .current_dir("/")
        .env_clear()
        .env("PATH", PATH)
        .env("LANG", "C.UTF-8")
        .env("SYSTEMD_PAGER", "")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = child
        .spawn()
        .map_err(|error| format!("cannot start {}: {error}", program.display()))?;
    let group = GroupGuard(
        child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(nix::unistd::Pid::from_raw),
    );
    let (chunk_tx, chunks) = mpsc::channel::<Vec<u8>>(16);
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(pump(stdout, chunk_tx.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(pump(stderr, chunk_tx));
    }
    Ok(Started {
        child,
        group,
        chunks,
    })
}

/// Runs `program` with `args` like an action and returns its output (stdout and stderr,
/// at most `max_bytes`); killed after `limit`.
///
/// # Errors
/// If it cannot start, runs out of time, or exits with a failure and says nothing.
pub(crate) async fn run_bounded(
    program: &Path,
    args: &[String],
    limit: Duration,
    max_bytes: usize,
) -> Result<String, String> {
    let mut started = start(program, args)?;
    let mut output = Vec::new();
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    let mut status = None;
    let mut open = true;
    while open || status.is_none() {
        tokio::select! {
            chunk = started.chunks.recv(), if open => match chunk {
                Some(chunk) => {
                    let room = max_bytes.saturating_sub(output.len());
                    output.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                None => open = false,
            },
            done = started.child.wait(), if status.is_none() => {
                status = Some(done);
                // Whatever it left behind goes with it; then the pipes close.
                started.group.kill();
            }
            () = &mut deadline => {
                started.group.kill();
                return Err(format!("{} took longer than {limit:?} and was killed", program.display()));
            }
        }
    }
    let text = String::from_utf8_lossy(&output).into_owned();
    match status {
        Some(Ok(status)) if status.success() => Ok(text),
        Some(Ok(status)) if !text.trim().is_empty() && status.code().is_some() => Err(format!(
            "{} exited with {status}: {}",
            program.display(),
            text.trim()
        )),
        Some(Ok(status)) => Err(format!("{} exited with {status}", program.display())),
        Some(Err(error)) => Err(format!("cannot wait for {}: {error}", program.display())),
        None => Err(format!("{} did not finish", program.display())),
    }
}

/// Sends what `journalctl -f …` prints until `end`, then kills it.
async fn follow_journal<F, Fut>(
    args: &[String],
    filter: &Filter,
    end: Instant,
    out: &mut Emitter<F>,
) -> Result<(), CommandError>
where
    F: FnMut(String) -> Fut + Send,
    Fut: Future<Output = ()> + Send,
{
    let mut started = start(Path::new(JOURNALCTL), args).map_err(CommandError::failed)?;
    let mut partial = Vec::new();
    let mut ticks = tokio::time::interval(PROGRESS_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = tokio::time::sleep_until(end);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            chunk = started.chunks.recv() => match chunk {
                Some(chunk) => emit(&mut partial, &chunk, filter, out).await,
                None => break,
            },
            _ = ticks.tick() => out.flush().await,
            () = &mut deadline => break,
        }
    }
    started.group.kill();
    let _ = started.child.start_kill();
    out.flush().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_ignores_case_and_is_not_a_pattern() {
        let filter = Filter::new(Some("ErRor"));
        assert!(filter.matches("an ERROR here"));
        assert!(!filter.matches("a warning"));
        assert!(!Filter::new(Some("a.c")).matches("abc"));
        assert!(Filter::new(Some("")).matches("anything"));
    }

    #[test]
    fn unit_names_are_checked() {
        assert!(valid_unit("nginx.service"));
        assert!(valid_unit("getty@tty1.service"));
        assert!(!valid_unit("--all"));
        assert!(!valid_unit("a b"));
        assert!(!valid_unit(""));
    }
}
