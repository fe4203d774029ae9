//! Jobs: one command sent to many devices, a few at a time, followed to the end.
//!
//! [`Jobs`] creates jobs (their devices already chosen by the caller, who knows who may
//! see what), pauses, resumes and cancels them, and runs every job this server replica
//! owns: one task per job (`driver`) that starts devices up to the job's concurrency,
//! follows their commands through the hub's live events, halts the job at its failure
//! threshold and completes it when every device is done. Each device's command is an
//! ordinary command sent through [`Hub::send_for`], carrying the job's id.
//!
//! Everything a job is lives in the store (`store::jobs`): its state, and each device's
//! status, written before anything is sent. A replica holds a lease on the jobs it runs
//! and renews it; when it stops or dies, the lease runs out and a replica (itself, once
//! restarted) takes the job over where it was. A device whose command was being sent
//! when the server died is never sent it again: its command is looked up in the command
//! log, and if it is not there it is reported failed, its outcome unknown.
//!
//! Every change is a [`LiveEvent`](protocol::api::LiveEvent) to this replica's browsers:
//! `JobTarget` for each device, `JobUpdated` for the job (coalesced to a few a second).

mod driver;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{Shutdown, duration_ms, now_ms};
use hub::Hub;
use protocol::{
    DeviceId,
    api::{LiveEvent, timeouts},
    job::{
        JobAction, JobArtifact, JobCounts, JobId, JobState, JobView, NewJob, OfflinePolicy, limits,
    },
};
use store::Store;
use tokio::sync::Notify;

/// How the job runner paces itself.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// How long a replica's claim on a job lasts; renewed every third of it.
    pub lease: Duration,
    /// How often a running job re-reads its state (changed by another replica), checks
    /// its commands and tells browsers its counts.
    pub check_every: Duration,
    /// How long a device that installed an update has to come back with the new
    /// version before its update is reported failed.
    pub update_return: Duration,
    /// How long a device back with the new version must stay online before its update
    /// counts as done: the agent keeps the new version only once it stayed up a few
    /// seconds (and rolls back if it falls over before).
    pub update_settle: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            check_every: Duration::from_secs(1),
            update_return: Duration::from_secs(300),
            update_settle: Duration::from_secs(5),
        }
    }
}

/// The arguments of a job's command that differ per device: a software update's
/// download link, which carries a token for that device. Given by the server.
pub trait DeviceArgs: Send + Sync + std::fmt::Debug + 'static {
    /// The arguments of `job`'s command for `device`, or why it cannot have any.
    ///
    /// # Errors
    /// A message for people (the device's part of the job fails with it).
    fn args_for(
        &self,
        job: &JobView,
        device: &DeviceId,
    ) -> Result<std::collections::BTreeMap<String, serde_json::Value>, String>;
}

/// Why a job could not be created or changed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("no job \"{0}\"")]
    Unknown(JobId),
    #[error("job \"{}\" has already ended as {}", .0.id, .0.state)]
    Finished(Box<JobView>),
    #[error("{0}")]
    Invalid(String),
    #[error("the server is stopping; try again once it is back")]
    ShuttingDown,
    #[error("jobs are unavailable (their database is down); try again shortly")]
    Store(#[source] anyhow::Error),
}

/// The job runner of one server replica; cheap to clone.
#[derive(Debug, Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    hub: Hub,
    store: Store,
    /// This replica, as the owner of the jobs it runs.
    owner: String,
    shutdown: Shutdown,
    config: JobsConfig,
    /// Per-device arguments (software updates), when the server gives any.
    device_args: Option<Arc<dyn DeviceArgs>>,
    /// The jobs this replica runs, each with the bell that makes its task look again.
    running: Mutex<HashMap<JobId, Arc<Notify>>>,
}

impl Jobs {
    /// Starts the runner: it takes back the jobs this replica ran before it stopped (and
    /// any whose replica's lease ran out), now and every third of a lease, and runs
    /// them under `shutdown`.
    pub fn start(
        hub: Hub,
        store: Store,
        shutdown: &Shutdown,
        config: JobsConfig,
        device_args: Option<Arc<dyn DeviceArgs>>,
    ) -> Self {
        let owner = hub.replica_id().to_owned();
        let jobs = Self {
            inner: Arc::new(Inner {
                hub,
                store,
                owner,
                shutdown: shutdown.clone(),
                config,
                device_args,
                running: Mutex::default(),
            }),
        };
        let claimer = jobs.clone();
        shutdown.spawn(async move { claimer.claim_until_stopped().await });
        jobs
    }

    /// Creates a job for `devices` (chosen and checked by the caller, in this order) and
    /// starts it; a software update names what it installs (`artifact`).
    pub async fn create(
        &self,
        new: NewJob,
        devices: Vec<DeviceId>,
        created_by: String,
        artifact: Option<JobArtifact>,
    ) -> Result<JobView, JobError> {
        new.check().map_err(JobError::Invalid)?;
        if devices.is_empty() {
            return Err(JobError::Invalid("no device matches the selection".into()));
        }
        if new.artifact.is_some() != artifact.is_some() {
            return Err(JobError::Invalid(
                "an update needs the artifact to install".into(),
            ));
        }
        if devices.len() > limits::MAX_TARGETS {
            return Err(JobError::Invalid(format!(
                "{} devices match; a job may command at most {}",
                devices.len(),
                limits::MAX_TARGETS
            )));
        }
        if self.inner.shutdown.is_stopping() {
            return Err(JobError::ShuttingDown);
        }
        let now = now_ms();
        let total = u32::try_from(devices.len()).unwrap_or(u32::MAX);
        let job = JobView {
            id: JobId(format!("{:032x}", fastrand::u128(..))),
            name: new
                .name
                .filter(|name| !name.trim().is_empty())
                .unwrap_or_else(|| new.command.clone()),
            command: new.command,
            args: new.args,
            targets: new.targets,
            concurrency: new.concurrency,
            failure_threshold: new.failure_threshold,
            offline: new.offline,
            wait_ms: match new.offline {
                OfflinePolicy::Wait => new.wait_ms.unwrap_or(limits::DEFAULT_WAIT_MS),
                OfflinePolicy::Skip => 0,
            },
            timeout_ms: new.timeout_ms.unwrap_or(timeouts::DEFAULT_MS),
            state: JobState::Running,
            created_by,
            created_ms: now,
            updated_ms: now,
            ended_ms: None,
            stop_reason: None,
            counts: JobCounts {
                total,
                pending: total,
                ..JobCounts::default()
            },
            artifact,
        };
        let lease = now + duration_ms(self.inner.config.lease);
        self.inner
            .store
            .create_job(&job, &self.inner.owner, lease, &devices)
            .await
            .map_err(JobError::Store)?;
        self.inner
            .hub
            .publish(LiveEvent::JobUpdated {
                job: Box::new(job.clone()),
            })
            .await;
        self.run(job.clone());
        Ok(job)
    }

    /// Pauses, resumes or cancels a job, as `by` (named in the job's stop reason).
    /// Pausing a paused job, or resuming a running one, changes nothing and is no error;
    /// a job that has ended cannot be changed.
    pub async fn control(
        &self,
        id: &JobId,
        action: JobAction,
        by: &str,
    ) -> Result<JobView, JobError> {
        let store = &self.inner.store;
        let job = self.get(id).await?;
        let (from, to, reason): (&[JobState], JobState, Option<String>) = match action {
            JobAction::Pause => (&[JobState::Running], JobState::Paused, None),
            JobAction::Resume => (&[JobState::Paused], JobState::Running, None),
            JobAction::Cancel => (
                &[JobState::Running, JobState::Paused],
                JobState::Cancelled,
                Some(format!("cancelled by {by}")),
            ),
        };
        if job.state == to && !to.is_finished() {
            return Ok(job);
        }
        if job.state.is_finished() {
            return Err(JobError::Finished(Box::new(job)));
        }
        let changed = store
            .set_job_state(&id.0, from, to, reason.as_deref(), now_ms())
            .await
            .map_err(JobError::Store)?;
        let job = self.get(id).await?;
        if !changed && job.state.is_finished() {
            return Err(JobError::Finished(Box::new(job)));
        }
        // Its task looks at once; a task on another replica within `check_every`.
        if let Some(bell) = self.bell(id) {
            bell.notify_one();
        } else if to == JobState::Cancelled {
            // Nobody here runs it: the devices not started are cancelled now; its owner
            // (or whoever takes it over) cancels the running ones.
            self.claim().await;
        }
        self.inner
            .hub
            .publish(LiveEvent::JobUpdated {
                job: Box::new(job.clone()),
            })
            .await;
        Ok(job)
    }

    /// A job as it is now, with its counts.
    pub async fn get(&self, id: &JobId) -> Result<JobView, JobError> {
        self.inner
            .store
            .job(&id.0)
            .await
            .map_err(JobError::Store)?
            .map(|stored| stored.view)
            .ok_or_else(|| JobError::Unknown(id.clone()))
    }

    /// The jobs this replica runs now.
    pub fn running(&self) -> Vec<JobId> {
        self.running_jobs().keys().cloned().collect()
    }

    fn bell(&self, id: &JobId) -> Option<Arc<Notify>> {
        self.running_jobs().get(id).cloned()
    }

    fn running_jobs(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Arc<Notify>>> {
        self.inner
            .running
            .lock()
            .expect("no code panics while holding the running jobs' lock")
    }

    /// Runs `job` here, unless it already runs here.
    fn run(&self, job: JobView) {
        let bell = Arc::new(Notify::new());
        {
            let mut running = self.running_jobs();
            if running.contains_key(&job.id) {
                return;
            }
            running.insert(job.id.clone(), bell.clone());
        }
        let jobs = self.clone();
        self.inner.shutdown.spawn(async move {
            let id = job.id.clone();
            driver::Driver::new(jobs.clone(), job, bell).run().await;
            jobs.running_jobs().remove(&id);
        });
    }

    async fn claim_until_stopped(self) {
        let every = self.inner.config.lease / 3;
        loop {
            self.claim().await;
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = self.inner.shutdown.stopping() => return,
            }
        }
    }

    /// Takes (or keeps) the jobs this replica runs and those whose lease ran out, and
    /// runs those not yet running here.
    async fn claim(&self) {
        let now = now_ms();
        let lease = now + duration_ms(self.inner.config.lease);
        match self
            .inner
            .store
            .claim_jobs(&self.inner.owner, now, lease)
            .await
        {
            Ok(jobs) => {
                for job in jobs {
                    self.run(job.view);
                }
            }
            Err(error) => tracing::warn!("cannot claim jobs (retrying): {error:#}"),
        }
    }
}
