//! The PostgreSQL store. One client, pipelining concurrent statements; if the
//! connection drops, the next call connects again, so a database restart costs the
//! calls made while it was down (the workers retry their batch) and nothing more.

use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use protocol::api::Point;
use tokio_postgres::{
    Client, NoTls,
    types::{FromSql, ToSql, Type},
};

use super::{Sample, SeriesQuery, sql};

#[derive(Clone)]
pub struct Postgres {
    url: Arc<str>,
    client: Arc<Mutex<Option<Arc<Client>>>>,
    /// Held while appending to the audit trail (see `audit`); other processes on the
    /// same database are told apart by the chain's primary key instead.
    pub(crate) appending: Arc<crate::audit::Appending>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres").finish_non_exhaustive()
    }
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS samples (
        device TEXT NOT NULL,
        metric TEXT NOT NULL,
        ts_ms BIGINT NOT NULL,
        value DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (device, metric, ts_ms)
    );
    CREATE INDEX IF NOT EXISTS samples_by_time ON samples (ts_ms);
";

impl Postgres {
    /// Connects now (creating the table): an unreachable database is an error.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let store = Self::deferred(url)?;
        store.client().await?;
        Ok(store)
    }

    /// Connects on first use, and again after every break: for a server that should
    /// start while the database is down (its recorders retry, its history answers 503).
    /// Only a URL that does not parse is an error.
    pub fn deferred(url: &str) -> anyhow::Result<Self> {
        url.parse::<tokio_postgres::Config>()
            .context("not a PostgreSQL URL")?;
        Ok(Self {
            url: url.into(),
            client: Arc::default(),
            appending: Arc::default(),
        })
    }

    /// The live client, connecting (and creating the tables if needed) if there is none
    /// or the last one broke.
    async fn client(&self) -> anyhow::Result<Arc<Client>> {
        if let Some(client) = self
            .client
            .lock()
            .expect("client lock")
            .as_ref()
            .filter(|c| !c.is_closed())
        {
            return Ok(client.clone());
        }
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .context("cannot connect to PostgreSQL")?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!("PostgreSQL connection lost: {error}");
            }
        });
        // Two replicas creating the tables at once can race in PostgreSQL's catalog;
        // the loser's error is harmless, so try once more.
        if create_tables(&client).await.is_err() {
            create_tables(&client)
                .await
                .context("cannot create the tables")?;
        }
        let client = Arc::new(client);
        *self.client.lock().expect("client lock") = Some(client.clone());
        Ok(client)
    }

    pub async fn insert(&self, samples: Vec<Sample>) -> anyhow::Result<u64> {
        let client = self.client().await?;
        let mut devices = Vec::with_capacity(samples.len());
        let mut metrics = Vec::with_capacity(samples.len());
        let mut times = Vec::with_capacity(samples.len());
        let mut values = Vec::with_capacity(samples.len());
        for sample in samples {
            devices.push(sample.device);
            metrics.push(sample.metric);
            times.push(sample.ts_ms);
            values.push(sample.value);
        }
        // One statement per batch: it is its own transaction.
        let inserted = client
            .execute(
                "INSERT INTO samples (device, metric, ts_ms, value)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::float8[])
                 ON CONFLICT DO NOTHING",
                &[&devices, &metrics, &times, &values],
            )
            .await
            .context("cannot store samples")?;
        Ok(inserted)
    }

    pub async fn series(&self, query: SeriesQuery) -> anyhow::Result<Vec<(String, Vec<Point>)>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT metric, (ts_ms - $3) / $4 AS bucket, AVG(ts_ms)::float8, AVG(value),
                        MIN(value), MAX(value), COUNT(*)
                 FROM samples
                 WHERE device = $1 AND metric = ANY($2) AND ts_ms >= $3 AND ts_ms < $5
                 GROUP BY metric, bucket ORDER BY metric, bucket",
                &[
                    &query.device,
                    &query.metrics,
                    &query.from_ms,
                    &query.bucket_ms.max(1),
                    &query.to_ms,
                ],
            )
            .await
            .context("cannot read samples")?;
        let mut all: Vec<(String, Vec<Point>)> = Vec::new();
        for row in rows {
            let metric: String = row.get(0);
            let point = Point {
                t_ms: row.get::<_, f64>(2).round() as u64,
                avg: row.get(3),
                min: row.get(4),
                max: row.get(5),
                count: row.get::<_, i64>(6) as u32,
            };
            match all.last_mut() {
                Some((last, points)) if *last == metric => points.push(point),
                _ => all.push((metric, vec![point])),
            }
        }
        // In the order asked for, as SQLite gives them.
        all.sort_by_key(|(metric, _)| query.metrics.iter().position(|m| m == metric));
        Ok(all)
    }

    pub async fn metrics(&self, device: &str) -> anyhow::Result<Vec<String>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT DISTINCT metric FROM samples WHERE device = $1 ORDER BY metric",
                &[&device],
            )
            .await
            .context("cannot read metrics")?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    pub async fn count(&self, device: Option<&str>) -> anyhow::Result<u64> {
        let client = self.client().await?;
        let row = match device {
            Some(device) => {
                client
                    .query_one("SELECT COUNT(*) FROM samples WHERE device = $1", &[&device])
                    .await
            }
            None => client.query_one("SELECT COUNT(*) FROM samples", &[]).await,
        }
        .context("cannot count samples")?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    pub async fn prune(&self, before_ms: i64) -> anyhow::Result<u64> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM samples WHERE ts_ms < $1", &[&before_ms])
            .await
            .context("cannot prune samples")
    }
}

impl Postgres {
    /// Runs one statement of the shared SQL (see `sql`).
    pub(crate) async fn execute(&self, sql: &str, params: Vec<sql::Value>) -> anyhow::Result<u64> {
        let client = self.client().await?;
        let statement = client.prepare(sql).await?;
        let params = bind(&params, statement.params())?;
        Ok(client.execute(&statement, &refs(&params)).await?)
    }

    /// Runs one `SELECT` of the shared SQL.
    pub(crate) async fn query(
        &self,
        sql: &str,
        params: Vec<sql::Value>,
    ) -> anyhow::Result<Vec<sql::Row>> {
        let client = self.client().await?;
        let statement = client.prepare(sql).await?;
        let params = bind(&params, statement.params())?;
        let rows = client.query(&statement, &refs(&params)).await?;
        rows.iter().map(from_postgres).collect()
    }
}

async fn create_tables(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(SCHEMA).await?;
    for schema in super::SHARED_SCHEMAS {
        client.batch_execute(schema).await?;
    }
    for (table, column, kind) in super::ADDED_COLUMNS {
        client
            .batch_execute(&format!(
                "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}"
            ))
            .await?;
    }
    for schema in super::AFTER_ADDED {
        client.batch_execute(schema).await?;
    }
    Ok(())
}

type Param<'a> = Box<dyn ToSql + Sync + Send + 'a>;

/// Each value as the type PostgreSQL inferred for its placeholder: an integer compared
/// with an `INTEGER` must be sent as an `i32`, one compared with a `BIGINT` as an `i64`.
fn bind<'a>(values: &'a [sql::Value], types: &[Type]) -> anyhow::Result<Vec<Param<'a>>> {
    anyhow::ensure!(
        values.len() == types.len(),
        "{} parameters for {} placeholders",
        values.len(),
        types.len()
    );
    values
        .iter()
        .zip(types)
        .map(|(value, ty)| {
            let param: Param<'a> = match value {
                sql::Value::Int(n) if *ty == Type::INT8 => Box::new(*n),
                sql::Value::Int(n) if *ty == Type::INT4 => Box::new(i32::try_from(*n)?),
                sql::Value::Int(n) if *ty == Type::INT2 => Box::new(i16::try_from(*n)?),
                sql::Value::Text(text) if <&str as ToSql>::accepts(ty) => Box::new(text.as_str()),
                sql::Value::Null if *ty == Type::INT8 => Box::new(None::<i64>),
                sql::Value::Null if *ty == Type::INT4 => Box::new(None::<i32>),
                sql::Value::Null if *ty == Type::INT2 => Box::new(None::<i16>),
                sql::Value::Null if <&str as ToSql>::accepts(ty) => Box::new(None::<&str>),
                other => anyhow::bail!("cannot send {other:?} as a PostgreSQL {ty}"),
            };
            Ok(param)
        })
        .collect()
}

fn refs<'a>(params: &'a [Param<'_>]) -> Vec<&'a (dyn ToSql + Sync)> {
    params.iter().map(|param| &**param as _).collect()
}

fn from_postgres(row: &tokio_postgres::Row) -> anyhow::Result<sql::Row> {
    let values = row
        .columns()
        .iter()
        .enumerate()
        .map(|(i, column)| {
            let ty = column.type_();
            let value = if *ty == Type::INT8 {
                row.try_get::<_, Option<i64>>(i)?.map(sql::Value::Int)
            } else if *ty == Type::INT4 {
                row.try_get::<_, Option<i32>>(i)?
                    .map(|n| sql::Value::Int(n.into()))
            } else if *ty == Type::INT2 {
                row.try_get::<_, Option<i16>>(i)?
                    .map(|n| sql::Value::Int(n.into()))
            } else if <String as FromSql>::accepts(ty) {
                row.try_get::<_, Option<String>>(i)?.map(sql::Value::Text)
            } else {
                anyhow::bail!(
                    "column {} is a PostgreSQL {ty}, not an integer or text",
                    column.name()
                )
            };
            Ok(value.unwrap_or(sql::Value::Null))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(sql::Row(values))
}
