//! Jobs: one command sent to many devices (see `protocol::job`), kept so that a job
//! outlives the server that runs it.
//!
//! `jobs` holds one row per job: its settings as JSON (`spec`), its state, and which
//! server replica runs it (`owner`) until when (`lease_ms`): a replica renews its lease
//! while it runs the job, and any replica may take over a job whose lease ran out (its
//! replica stopped or died). `job_targets` holds one row per device of a job, in the
//! order they are started (`seq`), with its status, its command once sent and a message.
//!
//! Every change is one conditional statement (`… WHERE status IN (…)`), so a change
//! that lost a race (a job cancelled while a device was being started) changes nothing
//! and says so. A job's targets are written before its row, so a job that exists has
//! all its devices.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context as _;
use protocol::{
    CommandId, DeviceId,
    job::{
        JobArtifact, JobCounts, JobId, JobState, JobTarget, JobView, OfflinePolicy, Selector,
        TargetPage, TargetQuery, TargetStatus, Threshold,
    },
};
use serde::{Deserialize, Serialize};

use crate::{
    LoggedCommand, Store,
    sql::{Row, Value},
};

pub(crate) const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        state TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL,
        ended_ms BIGINT,
        stop_reason TEXT,
        owner TEXT NOT NULL,
        lease_ms BIGINT NOT NULL,
        total BIGINT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS jobs_by_time ON jobs (created_ms, id);
    CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, lease_ms);
    CREATE TABLE IF NOT EXISTS job_targets (
        job_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        device_id TEXT NOT NULL,
        status TEXT NOT NULL,
        command_id TEXT,
        message TEXT,
        updated_ms BIGINT NOT NULL,
        PRIMARY KEY (job_id, seq)
    );
    CREATE INDEX IF NOT EXISTS job_targets_by_status ON job_targets (job_id, status, seq);
";

/// The settings of a job, as kept in `jobs.spec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Spec {
    name: String,
    command: String,
    args: BTreeMap<String, serde_json::Value>,
    targets: Selector,
    concurrency: u32,
    #[serde(default)]
    failure_threshold: Option<Threshold>,
    offline: OfflinePolicy,
    wait_ms: u64,
    timeout_ms: u64,
    #[serde(default)]
    artifact: Option<JobArtifact>,
}

/// A job as kept: its view (with its counts) and who runs it until when.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredJob {
    pub view: JobView,
    pub owner: String,
    pub lease_ms: u64,
}

/// Which jobs to list, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobQuery {
    pub state: Option<JobState>,
    /// Only those created before this job (`(created_ms, id)` of the previous page's last).
    pub before: Option<(u64, String)>,
    /// At most 500; 0 means 50.
    pub limit: usize,
}

const JOB_COLUMNS: &str = "id, spec, state, created_by, created_ms, updated_ms, ended_ms, stop_reason, owner, lease_ms, total";
const TARGET_COLUMNS: &str = "job_id, seq, device_id, status, command_id, message, updated_ms";

/// A job someone must still run: unfinished, or with devices not yet settled.
const UNSETTLED: &str = "(state IN ('running', 'paused') OR EXISTS (
    SELECT 1 FROM job_targets t WHERE t.job_id = jobs.id
    AND t.status IN ('pending', 'waiting', 'starting', 'running')))";

/// Targets per `INSERT`: 4 000 parameters.
const TARGETS_PER_STATEMENT: usize = 1_000;

impl Store {
    /// Creates a job (its view's counts are ignored: every device starts `pending`),
    /// run by `owner` until `lease_ms`, for `devices` in this order.
    pub async fn create_job(
        &self,
        job: &JobView,
        owner: &str,
        lease_ms: u64,
        devices: &[DeviceId],
    ) -> anyhow::Result<()> {
        let spec = Spec {
            name: job.name.clone(),
            command: job.command.clone(),
            args: job.args.clone(),
            targets: job.targets.clone(),
            concurrency: job.concurrency,
            failure_threshold: job.failure_threshold,
            offline: job.offline,
            wait_ms: job.wait_ms,
            timeout_ms: job.timeout_ms,
            artifact: job.artifact.clone(),
        };
        let spec = serde_json::to_string(&spec).context("cannot encode a job")?;
        let mut statements = Vec::new();
        for (chunk_number, chunk) in devices.chunks(TARGETS_PER_STATEMENT).enumerate() {
            let mut params: Vec<Value> = Vec::with_capacity(chunk.len() * 4);
            let mut rows = Vec::with_capacity(chunk.len());
            for (i, device) in chunk.iter().enumerate() {
                let n = params.len();
                rows.push(format!(
                    "(${}, ${}, ${}, 'pending', ${})",
                    n + 1,
                    n + 2,
                    n + 3,
                    n + 4
                ));
                params.push(job.id.0.as_str().into());
                params.push(int((chunk_number * TARGETS_PER_STATEMENT + i) as u64));
                params.push(device.as_str().into());
                params.push(int(job.created_ms));
            }
            statements.push((
                format!(
                    "INSERT INTO job_targets (job_id, seq, device_id, status, updated_ms) VALUES {}",
                    rows.join(", ")
                ),
                params,
            ));
        }
        statements.push((
            format!("INSERT INTO jobs ({JOB_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL, $7, $8, $9)"),
            vec![
                job.id.0.as_str().into(),
                spec.into(),
                job.state.as_str().into(),
                job.created_by.as_str().into(),
                int(job.created_ms),
                int(job.updated_ms),
                owner.into(),
                int(lease_ms),
                int(devices.len() as u64),
            ],
        ));
        self.execute_all(statements)
            .await
            .context("cannot write a new job")?;
        Ok(())
    }

    /// One job, with its counts.
    pub async fn job(&self, id: &str) -> anyhow::Result<Option<StoredJob>> {
        let Some(mut job) = self.job_settings(id).await? else {
            return Ok(None);
        };
        let total = job.view.counts.total;
        job.view.counts = self.job_counts(id).await?;
        job.view.counts.total = job.view.counts.total.max(total);
        Ok(Some(job))
    }

    /// One job without counting its devices (its counts are zero but the total): its
    /// state and settings, for the replica running it, which keeps the counts itself.
    pub async fn job_settings(&self, id: &str) -> anyhow::Result<Option<StoredJob>> {
        let row = self
            .query_opt(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"),
                vec![id.into()],
            )
            .await
            .context("cannot read a job")?;
        row.as_ref().map(job_from).transpose()
    }

    /// Jobs, newest first, with their counts.
    pub async fn jobs(&self, query: JobQuery) -> anyhow::Result<Vec<JobView>> {
        let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE 1 = 1");
        let mut params: Vec<Value> = Vec::new();
        if let Some(state) = query.state {
            params.push(state.as_str().into());
            sql.push_str(&format!(" AND state = ${}", params.len()));
        }
        if let Some((created_ms, id)) = query.before {
            params.push(int(created_ms));
            params.push(id.into());
            sql.push_str(&format!(
                " AND (created_ms, id) < (${}, ${})",
                params.len() - 1,
                params.len()
            ));
        }
        let limit = match query.limit {
            0 => 50,
            limit => limit.min(500),
        };
        params.push(int(limit as u64));
        sql.push_str(&format!(
            " ORDER BY created_ms DESC, id DESC LIMIT ${}",
            params.len()
        ));
        let rows = self.query(&sql, params).await.context("cannot read jobs")?;
        let mut jobs = Vec::with_capacity(rows.len());
        for row in &rows {
            jobs.push(job_from(row)?.view);
        }
        if jobs.is_empty() {
            return Ok(jobs);
        }
        let placeholders: Vec<String> = (1..=jobs.len()).map(|n| format!("${n}")).collect();
        let counts = self
            .query(
                &format!(
                    "SELECT job_id, status, COUNT(*) FROM job_targets WHERE job_id IN ({})
                     GROUP BY job_id, status",
                    placeholders.join(", ")
                ),
                jobs.iter().map(|j| Value::from(j.id.0.as_str())).collect(),
            )
            .await
            .context("cannot count jobs' devices")?;
        let mut by_job: HashMap<String, JobCounts> = HashMap::new();
        for row in &counts {
            let status = status_from(row.text(1)?)?;
            let n = u32::try_from(row.unsigned(2)?).unwrap_or(u32::MAX);
            let counts = by_job.entry(row.text(0)?.to_owned()).or_default();
            counts.add(status, n);
            counts.total += n;
        }
        for job in &mut jobs {
            if let Some(counts) = by_job.remove(&job.id.0) {
                job.counts = counts;
            }
        }
        Ok(jobs)
    }

    /// How many of a job's devices are in each status.
    pub async fn job_counts(&self, id: &str) -> anyhow::Result<JobCounts> {
        let rows = self
            .query(
                "SELECT status, COUNT(*) FROM job_targets WHERE job_id = $1 GROUP BY status",
                vec![id.into()],
            )
            .await
            .context("cannot count a job's devices")?;
        let mut counts = JobCounts::default();
        for row in &rows {
            let n = u32::try_from(row.unsigned(1)?).unwrap_or(u32::MAX);
            counts.add(status_from(row.text(0)?)?, n);
            counts.total += n;
        }
        Ok(counts)
    }

    /// A page of a job's devices, in job order, and how many match in all.
    pub async fn job_targets(&self, id: &str, query: &TargetQuery) -> anyhow::Result<TargetPage> {
        let mut filter = String::from(" WHERE job_id = $1");
        let mut params: Vec<Value> = vec![id.into()];
        if let Some(status) = query.status {
            params.push(status.as_str().into());
            filter.push_str(&format!(" AND status = ${}", params.len()));
        }
        if let Some(search) = query.search.as_deref().filter(|s| !s.is_empty()) {
            params.push(format!("%{}%", like_escaped(&search.to_lowercase())).into());
            filter.push_str(&format!(
                " AND LOWER(device_id) LIKE ${} ESCAPE '\\'",
                params.len()
            ));
        }
        let total = self
            .query_opt(
                &format!("SELECT COUNT(*) FROM job_targets{filter}"),
                params.clone(),
            )
            .await
            .context("cannot count a job's devices")?
            .map(|row| row.unsigned(0))
            .transpose()?
            .unwrap_or(0);
        let limit = query.limit();
        params.push(int(u64::from(limit)));
        params.push(int(u64::from(query.offset)));
        let rows = self
            .query(
                &format!(
                    "SELECT {TARGET_COLUMNS} FROM job_targets{filter} ORDER BY seq LIMIT ${} OFFSET ${}",
                    params.len() - 1,
                    params.len()
                ),
                params,
            )
            .await
            .context("cannot read a job's devices")?;
        Ok(TargetPage {
            targets: rows
                .iter()
                .map(target_from)
                .collect::<anyhow::Result<_>>()?,
            total: u32::try_from(total).unwrap_or(u32::MAX),
            offset: query.offset,
            limit,
        })
    }

    /// Every device of a job, in job order (to decide who may see it).
    pub async fn job_devices(&self, id: &str) -> anyhow::Result<Vec<String>> {
        let rows = self
            .query(
                "SELECT device_id FROM job_targets WHERE job_id = $1 ORDER BY seq",
                vec![id.into()],
            )
            .await
            .context("cannot read a job's devices")?;
        rows.iter().map(|row| Ok(row.text(0)?.to_owned())).collect()
    }

    /// A job's devices in these statuses, in job order (for the replica running it).
    pub async fn targets_in(
        &self,
        id: &str,
        statuses: &[TargetStatus],
    ) -> anyhow::Result<Vec<JobTarget>> {
        let mut params: Vec<Value> = vec![id.into()];
        let placeholders = statuses_in(statuses, &mut params);
        let rows = self
            .query(
                &format!(
                    "SELECT {TARGET_COLUMNS} FROM job_targets WHERE job_id = $1 AND status IN ({placeholders}) ORDER BY seq"
                ),
                params,
            )
            .await
            .context("cannot read a job's devices")?;
        rows.iter().map(target_from).collect()
    }

    /// Moves one device of a job on, if it is still in one of `from`: whether it did.
    pub async fn update_target(
        &self,
        target: &JobTarget,
        from: &[TargetStatus],
    ) -> anyhow::Result<bool> {
        let mut params: Vec<Value> = vec![
            target.status.as_str().into(),
            optional(target.command_id.as_ref().map(|c| c.0.as_str())),
            optional(target.message.as_deref()),
            int(target.updated_ms),
            target.job_id.0.as_str().into(),
            int(u64::from(target.seq)),
        ];
        let placeholders = statuses_in(from, &mut params);
        let changed = self
            .execute(
                &format!(
                    "UPDATE job_targets SET status = $1, command_id = $2, message = $3, updated_ms = $4
                     WHERE job_id = $5 AND seq = $6 AND status IN ({placeholders})"
                ),
                params,
            )
            .await
            .context("cannot write a job's device")?;
        Ok(changed > 0)
    }

    /// Moves every device of a job that is in one of `from` to `to`, with `message`:
    /// how many moved.
    pub async fn update_targets(
        &self,
        id: &str,
        from: &[TargetStatus],
        to: TargetStatus,
        message: &str,
        now_ms: u64,
    ) -> anyhow::Result<u64> {
        let mut params: Vec<Value> =
            vec![to.as_str().into(), message.into(), int(now_ms), id.into()];
        let placeholders = statuses_in(from, &mut params);
        self.execute(
            &format!(
                "UPDATE job_targets SET status = $1, message = $2, updated_ms = $3
                 WHERE job_id = $4 AND status IN ({placeholders})"
            ),
            params,
        )
        .await
        .context("cannot write a job's devices")
    }

    /// Changes a job's state, if it is in one of `from`: whether it did. A finished
    /// state records when it ended and why (`stop_reason`).
    pub async fn set_job_state(
        &self,
        id: &str,
        from: &[JobState],
        to: JobState,
        stop_reason: Option<&str>,
        now_ms: u64,
    ) -> anyhow::Result<bool> {
        let ended = if to.is_finished() {
            int(now_ms)
        } else {
            Value::Null
        };
        let mut params: Vec<Value> = vec![
            to.as_str().into(),
            int(now_ms),
            ended,
            optional(stop_reason),
            id.into(),
        ];
        let first = params.len() + 1;
        let placeholders: Vec<String> = (first..first + from.len())
            .map(|n| format!("${n}"))
            .collect();
        params.extend(from.iter().map(|s| Value::from(s.as_str())));
        let changed = self
            .execute(
                &format!(
                    "UPDATE jobs SET state = $1, updated_ms = $2, ended_ms = $3,
                     stop_reason = COALESCE($4, stop_reason)
                     WHERE id = $5 AND state IN ({})",
                    placeholders.join(", ")
                ),
                params,
            )
            .await
            .context("cannot write a job's state")?;
        Ok(changed > 0)
    }

    /// Takes every job that `owner` runs, or whose lease ran out before `now_ms`, and
    /// that is unfinished or still has devices to settle (a cancelled or halted job
    /// whose commands have not ended), for `owner` until `lease_ms`: the jobs it now runs.
    pub async fn claim_jobs(
        &self,
        owner: &str,
        now_ms: u64,
        lease_ms: u64,
    ) -> anyhow::Result<Vec<StoredJob>> {
        self.execute(
            &format!(
                "UPDATE jobs SET owner = $1, lease_ms = $2
                 WHERE (owner = $1 OR lease_ms < $3) AND {UNSETTLED}"
            ),
            vec![owner.into(), int(lease_ms), int(now_ms)],
        )
        .await
        .context("cannot claim jobs")?;
        let rows = self
            .query(
                &format!(
                    "SELECT {JOB_COLUMNS} FROM jobs
                     WHERE owner = $1 AND {UNSETTLED} ORDER BY created_ms, id"
                ),
                vec![owner.into()],
            )
            .await
            .context("cannot read claimed jobs")?;
        rows.iter().map(job_from).collect()
    }

    /// Extends `owner`'s lease on one job to `lease_ms`: whether it still runs it.
    pub async fn renew_job(&self, id: &str, owner: &str, lease_ms: u64) -> anyhow::Result<bool> {
        let changed = self
            .execute(
                "UPDATE jobs SET lease_ms = $1 WHERE id = $2 AND owner = $3",
                vec![int(lease_ms), id.into(), owner.into()],
            )
            .await
            .context("cannot renew a job's lease")?;
        Ok(changed > 0)
    }

    /// The latest command a job sent to a device, from the command log.
    pub async fn job_command(
        &self,
        job: &str,
        device: &str,
    ) -> anyhow::Result<Option<LoggedCommand>> {
        let id = self
            .query_opt(
                "SELECT id FROM commands WHERE job_id = $1 AND device_id = $2
                 ORDER BY created_ms DESC, id DESC LIMIT 1",
                vec![job.into(), device.into()],
            )
            .await
            .context("cannot read the command log")?;
        match id {
            Some(row) => self.logged_command(row.text(0)?).await,
            None => Ok(None),
        }
    }
}

/// `$n, $n+1…` for `statuses`, pushed onto `params`.
fn statuses_in(statuses: &[TargetStatus], params: &mut Vec<Value>) -> String {
    let first = params.len() + 1;
    let placeholders: Vec<String> = (first..first + statuses.len())
        .map(|n| format!("${n}"))
        .collect();
    params.extend(statuses.iter().map(|s| Value::from(s.as_str())));
    placeholders.join(", ")
}

/// `text` with LIKE's wildcards and escape character escaped (by `\`).
fn like_escaped(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

fn status_from(text: &str) -> anyhow::Result<TargetStatus> {
    TargetStatus::parse(text).with_context(|| format!("an unknown job device status {text:?}"))
}

fn total_of(row: &Row) -> anyhow::Result<u32> {
    Ok(u32::try_from(row.unsigned(10)?).unwrap_or(u32::MAX))
}

/// A row of [`JOB_COLUMNS`], its counts all zero but the total.
fn job_from(row: &Row) -> anyhow::Result<StoredJob> {
    let id = row.text(0)?;
    let read = || -> anyhow::Result<StoredJob> {
        let spec: Spec = serde_json::from_str(row.text(1)?).context("settings that do not read")?;
        let state = row.text(2)?;
        let state =
            JobState::parse(state).with_context(|| format!("an unknown state {state:?}"))?;
        Ok(StoredJob {
            view: JobView {
                id: JobId(id.to_owned()),
                name: spec.name,
                command: spec.command,
                args: spec.args,
                targets: spec.targets,
                concurrency: spec.concurrency,
                failure_threshold: spec.failure_threshold,
                offline: spec.offline,
                wait_ms: spec.wait_ms,
                timeout_ms: spec.timeout_ms,
                state,
                created_by: row.text(3)?.to_owned(),
                created_ms: row.unsigned(4)?,
                updated_ms: row.unsigned(5)?,
                ended_ms: row
                    .opt_int(6)?
                    .map(|ms| u64::try_from(ms).unwrap_or_default()),
                stop_reason: row.opt_text(7)?.map(str::to_owned),
                counts: JobCounts {
                    total: total_of(row)?,
                    ..JobCounts::default()
                },
                artifact: spec.artifact,
            },
            owner: row.text(8)?.to_owned(),
            lease_ms: row.unsigned(9)?,
        })
    };
    read().with_context(|| format!("job {id} is damaged"))
}

/// A row of [`TARGET_COLUMNS`].
fn target_from(row: &Row) -> anyhow::Result<JobTarget> {
    Ok(JobTarget {
        job_id: JobId(row.text(0)?.to_owned()),
        seq: u32::try_from(row.unsigned(1)?).context("a job device's place is out of range")?,
        device_id: DeviceId::new(row.text(2)?)?,
        status: status_from(row.text(3)?)?,
        command_id: row.opt_text(4)?.map(|c| CommandId(c.to_owned())),
        message: row.opt_text(5)?.map(str::to_owned),
        updated_ms: row.unsigned(6)?,
    })
}

fn int(value: u64) -> Value {
    Value::Int(i64::try_from(value).unwrap_or(i64::MAX))
}

fn optional(text: Option<&str>) -> Value {
    text.map_or(Value::Null, Value::from)
}
