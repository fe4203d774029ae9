//! The SQLite store: one file, written through one connection and read through another
//! (WAL mode, so reads never wait for a write). rusqlite is blocking, so every call runs
//! on tokio's blocking pool.
//!
//! In memory (no file), the writer and the reader are one connection: two connections
//! can only share a memory database in SQLite's shared-cache mode, where a read that
//! meets a write fails at once with `SQLITE_LOCKED` instead of waiting as `busy_timeout`
//! makes it do on a file.

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use protocol::api::Point;
use rusqlite::{Connection, params};

use super::{Sample, SeriesQuery, sql};

#[derive(Clone)]
pub struct Sqlite {
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
    /// Held while appending to the audit trail (see `audit`).
    pub(crate) appending: Arc<crate::audit::Appending>,
}

impl std::fmt::Debug for Sqlite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sqlite").finish_non_exhaustive()
    }
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS samples (
        device TEXT NOT NULL,
        metric TEXT NOT NULL,
        ts_ms INTEGER NOT NULL,
        value REAL NOT NULL,
        PRIMARY KEY (device, metric, ts_ms)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS samples_by_time ON samples (ts_ms);
";

impl Sqlite {
    pub async fn open(path: &str) -> anyhow::Result<Self> {
        let path = path.to_owned();
        run(move || {
            if let Some(parent) = Path::new(&path)
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
            {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            let writer = connection(&path)?;
            create_tables(&writer)?;
            let reader = connection(&path)?;
            Ok(Self {
                writer: Arc::new(Mutex::new(writer)),
                reader: Arc::new(Mutex::new(reader)),
                appending: Arc::default(),
            })
        })
        .await
    }

    /// A database of its own in memory, gone when the last clone is dropped.
    pub async fn memory() -> anyhow::Result<Self> {
        run(|| {
            let connection = Connection::open_in_memory()?;
            connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
            create_tables(&connection)?;
            let connection = Arc::new(Mutex::new(connection));
            Ok(Self {
                writer: connection.clone(),
                reader: connection,
                appending: Arc::default(),
            })
        })
        .await
    }

    /// Runs one statement of the shared SQL (see `sql`) on the writer.
    pub(crate) async fn execute(
        &self,
        sql: String,
        params: Vec<sql::Value>,
    ) -> anyhow::Result<u64> {
        let writer = self.writer.clone();
        run(move || {
            let db = lock(&writer);
            let mut statement = db.prepare_cached(&sql)?;
            Ok(statement.execute(rusqlite::params_from_iter(params.iter().map(to_sqlite)))? as u64)
        })
        .await
    }

    /// Runs statements of the shared SQL on the writer, in one transaction, each
    /// prepared once and cached (the command log's, one per command, are all alike).
    pub(crate) async fn execute_all(
        &self,
        statements: Vec<(String, Vec<sql::Value>)>,
    ) -> anyhow::Result<u64> {
        let writer = self.writer.clone();
        run(move || {
            let mut db = lock(&writer);
            let transaction = db.transaction()?;
            let mut changed = 0;
            for (sql, params) in &statements {
                let mut statement = transaction.prepare_cached(sql)?;
                changed += statement
                    .execute(rusqlite::params_from_iter(params.iter().map(to_sqlite)))?
                    as u64;
            }
            transaction.commit()?;
            Ok(changed)
        })
        .await
    }

    /// Runs one `SELECT` of the shared SQL on the reader.
    pub(crate) async fn query(
        &self,
        sql: String,
        params: Vec<sql::Value>,
    ) -> anyhow::Result<Vec<sql::Row>> {
        let reader = self.reader.clone();
        run(move || {
            let db = lock(&reader);
            let mut statement = db.prepare_cached(&sql)?;
            let columns = statement.column_count();
            let mut rows =
                statement.query(rusqlite::params_from_iter(params.iter().map(to_sqlite)))?;
            let mut all = Vec::new();
            while let Some(row) = rows.next()? {
                let values = (0..columns)
                    .map(|column| from_sqlite(row.get_ref(column)?))
                    .collect::<anyhow::Result<_>>()?;
                all.push(sql::Row(values));
            }
            Ok(all)
        })
        .await
    }

    pub async fn insert(&self, samples: Vec<Sample>) -> anyhow::Result<u64> {
        let writer = self.writer.clone();
        run(move || {
            let mut db = lock(&writer);
            let transaction = db.transaction()?;
            let mut inserted = 0;
            {
                let mut statement = transaction.prepare_cached(
                    "INSERT INTO samples (device, metric, ts_ms, value) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT DO NOTHING",
                )?;
                for sample in &samples {
                    inserted += statement.execute(params![
                        sample.device,
                        sample.metric,
                        sample.ts_ms,
                        sample.value
                    ])? as u64;
                }
            }
            transaction.commit()?;
            Ok(inserted)
        })
        .await
    }

    pub async fn series(&self, query: SeriesQuery) -> anyhow::Result<Vec<(String, Vec<Point>)>> {
        let reader = self.reader.clone();
        run(move || {
            let db = lock(&reader);
            let mut statement = db.prepare_cached(
                "SELECT (ts_ms - ?3) / ?5 AS bucket, AVG(ts_ms), AVG(value), MIN(value), MAX(value), COUNT(*)
                 FROM samples
                 WHERE device = ?1 AND metric = ?2 AND ts_ms >= ?3 AND ts_ms < ?4
                 GROUP BY bucket ORDER BY bucket",
            )?;
            let mut all = Vec::new();
            for metric in &query.metrics {
                let points = statement
                    .query_map(
                        params![
                            query.device,
                            metric,
                            query.from_ms,
                            query.to_ms,
                            query.bucket_ms.max(1)
                        ],
                        |row| {
                            Ok(Point {
                                t_ms: row.get::<_, f64>(1)?.round() as u64,
                                avg: row.get(2)?,
                                min: row.get(3)?,
                                max: row.get(4)?,
                                count: row.get::<_, i64>(5)? as u32,
                            })
                        },
                    )?
                    .collect::<Result<Vec<_>, _>>()?;
                if !points.is_empty() {
                    all.push((metric.clone(), points));
                }
            }
            Ok(all)
        })
        .await
    }

    pub async fn metrics(&self, device: &str) -> anyhow::Result<Vec<String>> {
        let (reader, device) = (self.reader.clone(), device.to_owned());
        run(move || {
            let db = lock(&reader);
            let mut statement = db.prepare_cached(
                "SELECT DISTINCT metric FROM samples WHERE device = ?1 ORDER BY metric",
            )?;
            let metrics = statement
                .query_map([device], |row| row.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            Ok(metrics)
        })
        .await
    }

    pub async fn count(&self, device: Option<&str>) -> anyhow::Result<u64> {
        let (reader, device) = (self.reader.clone(), device.map(str::to_owned));
        run(move || {
            let db = lock(&reader);
            let count: i64 = match device {
                Some(device) => db.query_row(
                    "SELECT COUNT(*) FROM samples WHERE device = ?1",
                    [device],
                    |row| row.get(0),
                )?,
                None => db.query_row("SELECT COUNT(*) FROM samples", [], |row| row.get(0))?,
            };
            Ok(count as u64)
        })
        .await
    }

    pub async fn prune(&self, before_ms: i64) -> anyhow::Result<u64> {
        let writer = self.writer.clone();
        run(move || {
            let db = lock(&writer);
            Ok(db.execute("DELETE FROM samples WHERE ts_ms < ?1", [before_ms])? as u64)
        })
        .await
    }
}

/// Enough cached statements for every one the shared SQL uses, so none is parsed twice.
const STATEMENT_CACHE: usize = 64;

/// The samples table, and the accounts and audit tables the backends share.
fn create_tables(connection: &Connection) -> anyhow::Result<()> {
    connection.execute_batch(SCHEMA)?;
    for schema in super::SHARED_SCHEMAS {
        connection.execute_batch(schema)?;
    }
    for (table, column, kind) in super::ADDED_COLUMNS {
        // SQLite has no `ADD COLUMN IF NOT EXISTS`: a column already there is the one
        // error to pass over.
        match connection.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}")) {
            Err(error) if error.to_string().contains("duplicate column") => {}
            other => other?,
        }
    }
    for schema in super::AFTER_ADDED {
        connection.execute_batch(schema)?;
    }
    Ok(())
}

fn to_sqlite(value: &sql::Value) -> rusqlite::types::ToSqlOutput<'_> {
    use rusqlite::types::ValueRef;
    rusqlite::types::ToSqlOutput::Borrowed(match value {
        sql::Value::Int(value) => ValueRef::Integer(*value),
        sql::Value::Text(value) => ValueRef::Text(value.as_bytes()),
        sql::Value::Null => ValueRef::Null,
    })
}

fn from_sqlite(value: rusqlite::types::ValueRef<'_>) -> anyhow::Result<sql::Value> {
    use rusqlite::types::ValueRef;
    Ok(match value {
        ValueRef::Integer(value) => sql::Value::Int(value),
        ValueRef::Text(text) => sql::Value::Text(
            std::str::from_utf8(text)
                .context("a text column is not UTF-8")?
                .to_owned(),
        ),
        ValueRef::Null => sql::Value::Null,
        other => anyhow::bail!(
            "a column holds {:?}, not an integer or text",
            other.data_type()
        ),
    })
}

fn connection(path: &str) -> anyhow::Result<Connection> {
    let connection = Connection::open(path)?;
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // WAL: readers never block the writer; NORMAL sync is durable across a process
    // crash (only an OS crash can lose the last commits).
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    connection.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(connection)
}

/// A poisoned lock only means another call panicked mid-statement; SQLite rolled that
/// transaction back, so the connection is still good.
fn lock(connection: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    connection
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn run<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .context("a database task panicked")?
}
