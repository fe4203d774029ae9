//! The command log: every command's latest state, so a restarting server replica picks
//! up the commands it was waiting on, the others end those of a replica that vanished,
//! and the history of commands outlives the process.
//!
//! One row per command (`id` the primary key), overwritten as the command moves on. A
//! replica numbers its changes to a command (`version`) and may write them in batches,
//! late or twice (a batch retried after a failure that was not one); a write only lands
//! if its version is higher than the stored one, so nothing moves a command back. The
//! check is in the statement itself (`ON CONFLICT (id) DO UPDATE … WHERE
//! commands.version < excluded.version`), so two writers need no lock between them.
//!
//! `terminal` (0 or 1) is kept beside the status so that the unfinished commands, and
//! the finished ones retention may delete, are found through an index.

use std::collections::BTreeMap;

use anyhow::Context as _;
use protocol::{CommandId, CommandStatus, DeviceId, api::CommandView, job::JobId};

use crate::{
    Store,
    sql::{Row, Value},
};

pub(crate) const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS commands (
        id TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        name TEXT NOT NULL,
        args TEXT NOT NULL,
        status TEXT NOT NULL,
        terminal BIGINT NOT NULL,
        created_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL,
        deadline_ms BIGINT NOT NULL,
        percent BIGINT,
        message TEXT,
        result TEXT,
        error TEXT,
        issued_by TEXT,
        replica TEXT NOT NULL,
        session_id TEXT NOT NULL,
        inbox TEXT NOT NULL,
        version BIGINT NOT NULL,
        job_id TEXT
    );
    CREATE INDEX IF NOT EXISTS commands_by_device ON commands (device_id, created_ms, id);
    CREATE INDEX IF NOT EXISTS commands_by_time ON commands (created_ms, id);
    CREATE INDEX IF NOT EXISTS commands_unfinished ON commands (terminal, replica);
";

/// Added after the table was first made: older databases get it on open.
pub(crate) const ADDED_COLUMNS: [(&str, &str, &str); 1] = [("commands", "job_id", "TEXT")];

/// Indexes on added columns, made once the columns exist.
pub(crate) const AFTER_ADDED: &str = "
    CREATE INDEX IF NOT EXISTS commands_by_job ON commands (job_id, device_id);
";

/// One command as the log keeps it: its latest view, which server replica sent it (and
/// awaits its reply), and to which device session and inbox.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedCommand {
    pub view: CommandView,
    pub replica: String,
    pub session_id: String,
    pub inbox: String,
    /// How many changes the replica has made to it; a write with a lower or equal
    /// version than the stored one is ignored (updates may be written in batches and a
    /// retried batch must not move a command back).
    pub version: u64,
}

/// Which commands to read, newest first (by `created_ms`, then `id`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandQuery {
    /// Only this device's.
    pub device: Option<String>,
    /// Only those of these devices (the devices a caller may see): `None` is no
    /// restriction, an empty list gives nothing.
    pub devices: Option<Vec<String>>,
    /// Only commands of this name (`diagnostics`, say).
    pub name: Option<String>,
    /// Only commands in this status.
    pub status: Option<CommandStatus>,
    /// Only the commands of this job.
    pub job: Option<String>,
    /// Only those before this one: the `(created_ms, id)` of the last command of the
    /// previous page.
    pub before: Option<(u64, String)>,
    /// At most 1000; 0 means 50.
    pub limit: usize,
}

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 1_000;

/// The columns a write sets, in the order of [`LOGGED`] and of [`params`].
const COLUMNS: [&str; 19] = [
    "id",
    "device_id",
    "name",
    "args",
    "status",
    "terminal",
    "created_ms",
    "updated_ms",
    "deadline_ms",
    "percent",
    "message",
    "result",
    "error",
    "issued_by",
    "replica",
    "session_id",
    "inbox",
    "version",
    "job_id",
];

/// The columns a read gives, in the order [`logged_from`] takes them.
const LOGGED: &str = "id, device_id, name, args, status, terminal, created_ms, updated_ms,
    deadline_ms, percent, message, result, error, issued_by, replica, session_id, inbox,
    version, job_id";

/// Rows per `INSERT`: 19 000 parameters, under SQLite's 32 766 and PostgreSQL's 65 535.
const ROWS_PER_STATEMENT: usize = 1_000;

impl Store {
    /// Writes a batch of commands' latest states (inserting those not yet logged), in one
    /// transaction on SQLite and in one statement per 1000 commands on PostgreSQL. A
    /// command whose stored version is higher than or equal to the batch's is left as it
    /// is. The batch may hold several versions of one command: the highest is written.
    pub async fn log_commands(&self, batch: Vec<LoggedCommand>) -> anyhow::Result<()> {
        // By id: every writer then locks the rows it changes in the same order, so two
        // replicas writing the same commands at once wait for each other instead of
        // deadlocking (PostgreSQL takes a multi-row `INSERT`'s rows in the order given).
        let mut latest: BTreeMap<String, LoggedCommand> = BTreeMap::new();
        for command in batch {
            match latest.get(&command.view.id.0) {
                Some(kept) if kept.version >= command.version => {}
                _ => {
                    latest.insert(command.view.id.0.clone(), command);
                }
            }
        }
        if latest.is_empty() {
            return Ok(());
        }
        let commands: Vec<LoggedCommand> = latest.into_values().collect();
        // SQLite, in this process, runs one cached statement per command faster than
        // it parses and plans one of many rows; PostgreSQL, over the network, saves
        // round trips with many rows per statement.
        let rows = match self {
            Store::Sqlite(_) => 1,
            Store::Postgres(_) => ROWS_PER_STATEMENT,
        };
        let statements = commands
            .chunks(rows)
            .map(upsert)
            .collect::<anyhow::Result<_>>()?;
        self.execute_all(statements)
            .await
            .context("cannot write to the command log")?;
        Ok(())
    }

    /// One command, if logged.
    pub async fn logged_command(&self, id: &str) -> anyhow::Result<Option<LoggedCommand>> {
        let row = self
            .query_opt(
                &format!("SELECT {LOGGED} FROM commands WHERE id = $1"),
                vec![id.into()],
            )
            .await
            .context("cannot read the command log")?;
        row.as_ref().map(logged_from).transpose()
    }

    /// A page of commands, newest first (by `created_ms`, then `id`, both descending).
    pub async fn command_page(&self, query: CommandQuery) -> anyhow::Result<Vec<CommandView>> {
        let mut sql = format!("SELECT {LOGGED} FROM commands WHERE 1 = 1");
        let mut params: Vec<Value> = Vec::new();
        if let Some(device) = query.device {
            params.push(device.into());
            sql.push_str(&format!(" AND device_id = ${}", params.len()));
        }
        if let Some(devices) = query.devices {
            if devices.is_empty() {
                return Ok(Vec::new());
            }
            let first = params.len() + 1;
            let placeholders: Vec<String> = (first..first + devices.len())
                .map(|n| format!("${n}"))
                .collect();
            params.extend(devices.into_iter().map(Value::from));
            sql.push_str(&format!(" AND device_id IN ({})", placeholders.join(", ")));
        }
        if let Some(name) = query.name {
            params.push(name.into());
            sql.push_str(&format!(" AND name = ${}", params.len()));
        }
        if let Some(status) = query.status {
            params.push(status.as_str().into());
            sql.push_str(&format!(" AND status = ${}", params.len()));
        }
        if let Some(job) = query.job {
            params.push(job.into());
            sql.push_str(&format!(" AND job_id = ${}", params.len()));
        }
        if let Some((created_ms, id)) = query.before {
            params.push(int(created_ms));
            params.push(id.into());
            // A row comparison, which both databases answer from the index.
            sql.push_str(&format!(
                " AND (created_ms, id) < (${}, ${})",
                params.len() - 1,
                params.len()
            ));
        }
        let limit = match query.limit {
            0 => DEFAULT_PAGE,
            limit => limit.min(MAX_PAGE),
        };
        params.push(Value::Int(limit as i64));
        sql.push_str(&format!(
            " ORDER BY created_ms DESC, id DESC LIMIT ${}",
            params.len()
        ));
        let rows = self.query(&sql, params).await;
        rows.context("cannot read the command log")?
            .iter()
            .map(|row| Ok(logged_from(row)?.view))
            .collect()
    }

    /// Every command not yet in a terminal status, oldest first: of one replica (`Some`)
    /// or of all (`None`). A restarting replica resumes its own; the others end a
    /// vanished replica's.
    pub async fn unfinished_commands(
        &self,
        replica: Option<&str>,
    ) -> anyhow::Result<Vec<LoggedCommand>> {
        let rows = match replica {
            Some(replica) => {
                self.query(
                    &format!(
                        "SELECT {LOGGED} FROM commands WHERE terminal = 0 AND replica = $1
                         ORDER BY created_ms, id"
                    ),
                    vec![replica.into()],
                )
                .await
            }
            None => {
                self.query(
                    &format!(
                        "SELECT {LOGGED} FROM commands WHERE terminal = 0
                         ORDER BY created_ms, id"
                    ),
                    vec![],
                )
                .await
            }
        };
        rows.context("cannot read the command log")?
            .iter()
            .map(logged_from)
            .collect()
    }

    /// Deletes the commands in a terminal status created before `before_ms` (retention);
    /// returns how many. Unfinished ones stay, however old.
    pub async fn prune_commands(&self, before_ms: i64) -> anyhow::Result<u64> {
        self.execute(
            "DELETE FROM commands WHERE terminal = 1 AND created_ms < $1",
            vec![Value::Int(before_ms)],
        )
        .await
        .context("cannot prune the command log")
    }
}

/// One `INSERT` of these commands (their ids all different), each updating the stored
/// row only if its version is higher.
fn upsert(commands: &[LoggedCommand]) -> anyhow::Result<(String, Vec<Value>)> {
    let mut params = Vec::with_capacity(commands.len() * COLUMNS.len());
    let mut rows = Vec::with_capacity(commands.len());
    for command in commands {
        let first = params.len() + 1;
        let placeholders: Vec<String> = (first..first + COLUMNS.len())
            .map(|n| format!("${n}"))
            .collect();
        rows.push(format!("({})", placeholders.join(", ")));
        params.extend(self::params(command)?);
    }
    static ONE_ROW: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = if commands.len() == 1 {
        ONE_ROW.get_or_init(|| upsert_sql(&rows)).clone()
    } else {
        upsert_sql(&rows)
    };
    Ok((sql, params))
}

/// The text of an upsert of these rows of placeholders.
fn upsert_sql(rows: &[String]) -> String {
    let updates: Vec<String> = COLUMNS[1..]
        .iter()
        .map(|column| format!("{column} = excluded.{column}"))
        .collect();
    format!(
        "INSERT INTO commands ({}) VALUES {}
         ON CONFLICT (id) DO UPDATE SET {}
         WHERE commands.version < excluded.version",
        COLUMNS.join(", "),
        rows.join(", "),
        updates.join(", ")
    )
}

/// A command's values, in the order of [`COLUMNS`].
fn params(command: &LoggedCommand) -> anyhow::Result<Vec<Value>> {
    let view = &command.view;
    let args = serde_json::to_string(&view.args).context("cannot encode a command's args")?;
    let result = view
        .result
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .context("cannot encode a command's result")?;
    Ok(vec![
        view.id.0.as_str().into(),
        view.device_id.as_str().into(),
        view.name.as_str().into(),
        args.into(),
        view.status.as_str().into(),
        Value::Int(view.status.is_terminal().into()),
        int(view.created_ms),
        int(view.updated_ms),
        int(view.deadline_ms),
        view.percent.map_or(Value::Null, |p| Value::Int(p.into())),
        optional(view.message.as_deref()),
        result.map_or(Value::Null, Value::Text),
        optional(view.error.as_deref()),
        optional(view.issued_by.as_deref()),
        command.replica.as_str().into(),
        command.session_id.as_str().into(),
        command.inbox.as_str().into(),
        int(command.version),
        optional(view.job_id.as_ref().map(|job| job.0.as_str())),
    ])
}

/// A row of [`LOGGED`].
fn logged_from(row: &Row) -> anyhow::Result<LoggedCommand> {
    let id = row.text(0)?;
    let read = || -> anyhow::Result<LoggedCommand> {
        let args: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(row.text(3)?).context("args that are not a JSON object")?;
        let status = row.text(4)?;
        let status: CommandStatus =
            serde_json::from_value(serde_json::Value::String(status.to_owned()))
                .with_context(|| format!("an unknown status {status:?}"))?;
        let percent = row
            .opt_int(9)?
            .map(u8::try_from)
            .transpose()
            .context("a percentage that is not one")?;
        let result = row
            .opt_text(11)?
            .map(serde_json::from_str)
            .transpose()
            .context("a result that is not JSON")?;
        Ok(LoggedCommand {
            view: CommandView {
                id: CommandId(id.to_owned()),
                device_id: DeviceId::new(row.text(1)?)?,
                name: row.text(2)?.to_owned(),
                args,
                status,
                created_ms: row.unsigned(6)?,
                updated_ms: row.unsigned(7)?,
                deadline_ms: row.unsigned(8)?,
                percent,
                message: row.opt_text(10)?.map(str::to_owned),
                result,
                error: row.opt_text(12)?.map(str::to_owned),
                issued_by: row.opt_text(13)?.map(str::to_owned),
                job_id: row.opt_text(18)?.map(|job| JobId(job.to_owned())),
            },
            replica: row.text(14)?.to_owned(),
            session_id: row.text(15)?.to_owned(),
            inbox: row.text(16)?.to_owned(),
            version: row.unsigned(17)?,
        })
    };
    read().with_context(|| format!("command {id} in the log is damaged"))
}

/// A time or a version as a column: ms since the epoch fit an `i64` for 292 million
/// years, so saturating never happens in practice.
fn int(value: u64) -> Value {
    Value::Int(i64::try_from(value).unwrap_or(i64::MAX))
}

fn optional(text: Option<&str>) -> Value {
    text.map_or(Value::Null, Value::from)
}
