//! Where readings, accounts, device credentials, the audit trail and the command log
//! are kept: SQLite by default (a file, no setup), PostgreSQL when the database URL says
//! `postgres://`, or SQLite in memory when it says `memory` (nothing survives the
//! process: for servers run without a database, and for tests).
//!
//! Readings: one table, `samples (device, metric, ts_ms, value)`, keyed by device,
//! metric and time, so storing a sample twice (a batch redelivered after its worker
//! died between commit and ack) keeps one copy. History is read downsampled: the range
//! is cut into at most `max_points` buckets and each bucket gives its mean, minimum,
//! maximum and count, computed by the database.
//!
//! Accounts ([`Store::add_user`] and the methods beside it) are created with the samples
//! when the store opens, in the same SQL on both databases (`BIGINT` and `TEXT` columns
//! only, see `sql.rs`):
//!
//! - `users (id, name, role, group_names, password_hash, created_ms)`: the password as
//!   an argon2id PHC string; the groups as one sorted, comma-separated column so that
//!   every change to a user is one statement. `id` is random, so a user deleted and
//!   made again under the same name does not inherit the old one's sessions or tokens.
//! - `sessions (secret_hash, user_id, created_ms, expires_ms, revoked)` and
//!   `api_tokens (id, secret_hash, user_id, owner, name, role, created_ms,
//!   last_used_ms, revoked)`: secrets are kept only as their SHA-256, so a copy of the
//!   database logs no one in.
//! - `device_groups (device, group_names)`: which groups may see a device.
//! - `device_credentials (device_id, secret_hash, created_ms, rotated_ms)`: the devices
//!   provisioned to connect to the broker ([`Store::provision_device`], see
//!   `devices.rs`), each secret kept only as its argon2id hash, as passwords are.
//!
//! The audit trail, `audit (seq, ts_ms, actor, source, action, target, detail,
//! prev_hash, hash)`: append-only, numbered 1, 2, 3… and chained, each entry's hash
//! covering the one before's, so a row altered or deleted later is found by
//! [`Store::audit_verify`]. Retention never prunes it.
//!
//! The command log, `commands (id, device_id, name, args, status, terminal, created_ms,
//! updated_ms, deadline_ms, percent, message, result, error, issued_by, replica,
//! session_id, inbox, version, job_id)`: one row per command, its latest state
//! ([`Store::log_commands`] and the methods beside it, see `commands.rs`), with the
//! server replica that sent it and awaits its reply, and the device session and inbox it
//! went to. `args` and `result` are JSON text, the status its snake_case name, and
//! `terminal` 1 once the status is final. A replica numbers its changes to a command
//! (`version`) and writes them in batches; a write with a version no higher than the
//! stored one is ignored, so a late or retried batch never moves a command back. A
//! restarting replica reads its unfinished commands back, the others end those of a
//! replica that is gone, and retention deletes finished commands as it does samples
//! (never unfinished ones).
//!
//! A test or a server without a database can keep all of it in memory:
//! `Store::open("memory")`.

mod accounts;
mod artifacts;
mod audit;
mod commands;
mod devices;
mod jobs;
mod postgres;
mod sql;
mod sqlite;

pub use accounts::AccountError;
pub use audit::{AuditQuery, NewAudit};
pub use commands::{CommandQuery, LoggedCommand};
pub use jobs::{JobQuery, StoredJob};

use std::time::Duration;

use anyhow::Context as _;
use protocol::api::Point;

use common::redact;
use tokio_util::sync::CancellationToken;

/// One reading to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub device: String,
    pub metric: String,
    pub ts_ms: i64,
    pub value: f64,
}

/// A downsampled read of one device's history.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesQuery {
    pub device: String,
    pub metrics: Vec<String>,
    /// Inclusive, ms since the Unix epoch.
    pub from_ms: i64,
    /// Exclusive.
    pub to_ms: i64,
    /// The width of one bucket; see [`bucket_ms`].
    pub bucket_ms: i64,
}

/// The bucket width that cuts `[from, to)` into at most `max_points` buckets.
pub fn bucket_ms(from_ms: i64, to_ms: i64, max_points: u32) -> i64 {
    let span = (to_ms - from_ms).max(1);
    let points = i64::from(max_points.max(1));
    (span + points - 1) / points
}

/// The telemetry store.
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Postgres),
}

impl Store {
    /// Opens (creating if needed) the store a URL names: `postgres://…` or
    /// `postgresql://…` for PostgreSQL, `sqlite://<path>` or a bare path for SQLite,
    /// `memory` (or SQLite's own `:memory:`) for a new database in memory.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        if is_memory(url) {
            Self::memory().await
        } else if is_postgres(url) {
            Ok(Self::Postgres(
                postgres::Postgres::connect(url)
                    .await
                    .with_context(|| format!("cannot open PostgreSQL at {}", redact(url)))?,
            ))
        } else {
            let path = url.strip_prefix("sqlite://").unwrap_or(url);
            Ok(Self::Sqlite(
                sqlite::Sqlite::open(path)
                    .await
                    .with_context(|| format!("cannot open the SQLite database {path}"))?,
            ))
        }
    }

    /// Like [`Store::open`], but a PostgreSQL that cannot be reached now is connected to
    /// later, on first use, instead of being an error: a server starts while its database
    /// is down, as it does while its broker is. SQLite, and URLs that do not parse, fail
    /// as in `open`.
    pub async fn open_or_defer(url: &str) -> anyhow::Result<Self> {
        match Self::open(url).await {
            Err(error) if is_postgres(url) => {
                let store = postgres::Postgres::deferred(url)
                    .with_context(|| format!("cannot use {}", redact(url)))?;
                tracing::error!(
                    "{error:#}; starting anyway: readings wait in the broker's queue and history answers 503 until it is back"
                );
                Ok(Self::Postgres(store))
            }
            opened => opened,
        }
    }

    /// A new, empty store in memory (SQLite), gone with the last clone of it.
    pub async fn memory() -> anyhow::Result<Self> {
        Ok(Self::Sqlite(
            sqlite::Sqlite::memory()
                .await
                .context("cannot open an SQLite database in memory")?,
        ))
    }

    /// What kind of store this is, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// Stores a batch in one transaction; samples already stored are skipped. Returns how
    /// many were new.
    pub async fn insert(&self, samples: Vec<Sample>) -> anyhow::Result<u64> {
        if samples.is_empty() {
            return Ok(0);
        }
        match self {
            Self::Sqlite(store) => store.insert(samples).await,
            Self::Postgres(store) => store.insert(samples).await,
        }
    }

    /// Each requested metric's points in the range, oldest first, one per non-empty
    /// bucket. A metric without samples in the range has no entry.
    pub async fn series(&self, query: SeriesQuery) -> anyhow::Result<Vec<(String, Vec<Point>)>> {
        if query.metrics.is_empty() || query.to_ms <= query.from_ms {
            return Ok(Vec::new());
        }
        match self {
            Self::Sqlite(store) => store.series(query).await,
            Self::Postgres(store) => store.series(query).await,
        }
    }

    /// The metrics stored for a device, sorted.
    pub async fn metrics(&self, device: &str) -> anyhow::Result<Vec<String>> {
        match self {
            Self::Sqlite(store) => store.metrics(device).await,
            Self::Postgres(store) => store.metrics(device).await,
        }
    }

    /// How many samples are stored, for one device or for all.
    pub async fn count(&self, device: Option<&str>) -> anyhow::Result<u64> {
        match self {
            Self::Sqlite(store) => store.count(device).await,
            Self::Postgres(store) => store.count(device).await,
        }
    }

    /// Deletes every sample measured before `before_ms`; returns how many.
    pub async fn prune(&self, before_ms: i64) -> anyhow::Result<u64> {
        match self {
            Self::Sqlite(store) => store.prune(before_ms).await,
            Self::Postgres(store) => store.prune(before_ms).await,
        }
    }

    /// Prunes samples measured, and finished commands created, more than `retention` ago,
    /// now and then every `every`, until `stop`.
    pub async fn prune_until(self, retention: Duration, every: Duration, stop: CancellationToken) {
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        loop {
            let cutoff = now_ms().saturating_sub(retention_ms);
            let (samples, commands) = tokio::select! {
                pruned = async {
                    (self.prune(cutoff).await, self.prune_commands(cutoff).await)
                } => pruned,
                () = stop.cancelled() => return,
            };
            match samples {
                Ok(0) => {}
                Ok(pruned) => tracing::info!("pruned {pruned} samples older than {retention:?}"),
                Err(error) => tracing::warn!("cannot prune old samples: {error:#}"),
            }
            match commands {
                Ok(0) => {}
                Ok(pruned) => {
                    tracing::info!("pruned {pruned} finished commands older than {retention:?}")
                }
                Err(error) => tracing::warn!("cannot prune old commands: {error:#}"),
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

impl Store {
    /// This store's turn to append to the audit trail (see `audit`): one lock per
    /// store, shared by its clones.
    fn appending(&self) -> &audit::Appending {
        match self {
            Self::Sqlite(store) => &store.appending,
            Self::Postgres(store) => &store.appending,
        }
    }
}

/// The tables both backends create the same way, after their own `samples`.
const SHARED_SCHEMAS: [&str; 6] = [
    accounts::SCHEMA,
    artifacts::SCHEMA,
    audit::SCHEMA,
    commands::SCHEMA,
    devices::SCHEMA,
    jobs::SCHEMA,
];

/// Columns added to tables after they were first made, as `(table, column, type)`:
/// added on open where missing.
const ADDED_COLUMNS: [(&str, &str, &str); 1] = commands::ADDED_COLUMNS;

/// Statements that need the added columns (their indexes).
const AFTER_ADDED: [&str; 1] = [commands::AFTER_ADDED];

fn is_memory(url: &str) -> bool {
    matches!(
        url,
        "memory" | ":memory:" | "sqlite::memory:" | "sqlite://:memory:"
    )
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

fn now_ms() -> i64 {
    i64::try_from(common::now_ms()).unwrap_or(i64::MAX)
}

/// Parses a retention such as `30d`, `12h`, `90m` or `45s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 30d, 12h, 90m or 45s"))?;
    let seconds = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => return Err(format!("{text:?}: the unit must be d, h, m or s")),
    };
    if number == 0 {
        return Err("a duration must be more than zero".into());
    }
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_range_in_at_most_max_points() {
        assert_eq!(bucket_ms(0, 3_600_000, 300), 12_000);
        assert_eq!(bucket_ms(0, 10, 300), 1);
        assert_eq!(bucket_ms(0, 301, 300), 2);
        assert_eq!(bucket_ms(5, 5, 300), 1);
        let week = 7 * 86_400_000;
        assert!(week / bucket_ms(0, week, 400) <= 400);
    }

    #[test]
    fn retention_parses_units_and_refuses_nonsense() {
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(12 * 3_600)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(90 * 60)));
        assert_eq!(parse_duration("45s"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("0d").is_err());
        assert!(parse_duration("3w").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("").is_err());
    }
}
