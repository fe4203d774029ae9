//! One job's task: it starts devices up to the job's concurrency, follows their
//! commands, halts the job at its failure threshold, and completes it.
//!
//! Its devices are kept in three sets: `pending` (not started, in job order),
//! `waiting` (offline when their turn came, policy `wait`) and `running` (their
//! command sent, by command id), plus the sends in flight (`starts`). Each move is
//! written to the store first and only then made in memory, so the store is never
//! behind what browsers were told; a write that fails is tried again at the next
//! check. A device is marked `starting` in the store before its command is sent: if
//! the server dies then, the job finds the command in the command log when it resumes,
//! or reports the device failed, its outcome unknown; it never sends it twice.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use common::now_ms;
use hub::SendError;
use protocol::{
    CommandId, CommandStatus, DeviceId,
    api::{CommandView, LiveEvent, SendCommand},
    job::{JobState, JobTarget, JobView, OfflinePolicy, TargetStatus},
};
use tokio::{sync::Notify, task::JoinSet};

use crate::Jobs;

/// A device that installed an update and is restarting into it.
struct Returning {
    target: JobTarget,
    /// When it answered that it had installed the update (ms since the epoch): it has
    /// come back once it is online since a later time.
    installed_ms: u64,
    /// When it is reported failed if it has not come back with the version.
    until_ms: u64,
}

/// What came of writing a device's move to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    /// Written, counted, told.
    Moved,
    /// The store had it in another status: someone else (another replica, after a
    /// lease ran out) moved it, and it is theirs now; forget it here.
    Lost,
    /// The store could not be reached: try again later.
    Failed,
}

/// What a send in flight gives back.
type Started = (JobTarget, Result<CommandView, SendError>);

/// How long a job waits before trying again when the broker or the store is down.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// The longest message kept for a device (a command's result or error).
const MAX_MESSAGE: usize = 300;

pub(crate) struct Driver {
    jobs: Jobs,
    job: JobView,
    bell: Arc<Notify>,
    pending: VecDeque<JobTarget>,
    waiting: Vec<JobTarget>,
    running: HashMap<CommandId, JobTarget>,
    /// Devices that installed an update, until they come back with its version.
    returning: HashMap<DeviceId, Returning>,
    starts: JoinSet<Started>,
    /// Counts changed since browsers were last told.
    dirty: bool,
    /// Nothing is started before this (the broker or the store was down).
    hold_until: Option<Instant>,
    /// The devices were loaded from the store.
    loaded: bool,
}

impl Driver {
    pub(crate) fn new(jobs: Jobs, job: JobView, bell: Arc<Notify>) -> Self {
        Self {
            jobs,
            job,
            bell,
            pending: VecDeque::new(),
            waiting: Vec::new(),
            running: HashMap::new(),
            returning: HashMap::new(),
            starts: JoinSet::new(),
            dirty: false,
            hold_until: None,
            loaded: false,
        }
    }

    pub(crate) async fn run(mut self) {
        let hub = self.jobs.inner.hub.clone();
        let shutdown = self.jobs.inner.shutdown.clone();
        let mut events = hub.events();
        let mut check = tokio::time::interval(self.jobs.inner.config.check_every);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Browsers hear of counts at most this often.
        let mut tell = tokio::time::interval(Duration::from_millis(250));
        tell.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(job = %self.job.id, state = %self.job.state, "running job");
        loop {
            if !self.loaded
                && let Err(error) = self.load().await
            {
                tracing::warn!(job = %self.job.id, "cannot load the job's devices (retrying): {error:#}");
            }
            if self.loaded && self.step().await {
                self.tell().await;
                tracing::info!(job = %self.job.id, state = %self.job.state, "job done");
                return;
            }
            tokio::select! {
                biased;
                () = shutdown.stopping() => {
                    // Left as it is in the store; taken back when the server starts again.
                    return;
                }
                Some(joined) = self.starts.join_next(), if !self.starts.is_empty() => {
                    match joined {
                        Ok(started) => self.started(started).await,
                        Err(error) => tracing::error!(job = %self.job.id, "a send task failed: {error}"),
                    }
                }
                () = self.bell.notified() => self.refresh().await,
                event = events.recv() => match event {
                    Ok(LiveEvent::CommandUpdated { command }) => {
                        if command.job_id.as_ref() == Some(&self.job.id) && command.status.is_terminal() {
                            self.command_ended(&command).await;
                        } else {
                            continue;
                        }
                    }
                    Ok(LiveEvent::DeviceUpdated { device }) => {
                        if self.returning.contains_key(&device.id) {
                            self.check_returning(Some(&device.id)).await;
                        } else if !(device.online && self.waiting.iter().any(|t| t.device_id == device.id)) {
                            continue;
                        }
                    }
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.check_running().await,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = check.tick() => {
                    self.refresh().await;
                    self.check_running().await;
                    self.check_returning(None).await;
                }
                _ = tell.tick() => {
                    if self.dirty {
                        self.tell().await;
                    }
                    continue;
                }
            }
        }
    }

    /// Reads the job's unfinished devices; settles those caught being sent when a
    /// server stopped.
    async fn load(&mut self) -> anyhow::Result<()> {
        // A load that failed half way is done again from the start.
        self.pending.clear();
        self.waiting.clear();
        self.running.clear();
        let store = &self.jobs.inner.store;
        let id = self.job.id.0.clone();
        let targets = store
            .targets_in(
                &id,
                &[
                    TargetStatus::Pending,
                    TargetStatus::Waiting,
                    TargetStatus::Starting,
                    TargetStatus::Running,
                ],
            )
            .await?;
        self.job.counts = store.job_counts(&id).await?;
        for target in targets {
            match target.status {
                TargetStatus::Pending => self.pending.push_back(target),
                TargetStatus::Waiting => self.waiting.push(target),
                TargetStatus::Running => match target.command_id.clone() {
                    Some(command) => {
                        self.running.insert(command, target);
                    }
                    None => {
                        self.settle_unknown(target).await?;
                    }
                },
                _ => self.settle_unknown(target).await?,
            }
        }
        self.loaded = true;
        self.dirty = true;
        Ok(())
    }

    /// A device whose command was being sent when a server stopped: its command, if the
    /// command log has it, else failed with its outcome unknown (never sent again).
    async fn settle_unknown(&mut self, target: JobTarget) -> anyhow::Result<()> {
        let logged = self
            .jobs
            .inner
            .store
            .job_command(&self.job.id.0, target.device_id.as_str())
            .await?;
        match logged {
            Some(logged) => {
                let mut running = target.clone();
                running.status = TargetStatus::Running;
                running.command_id = Some(logged.view.id.clone());
                running.updated_ms = now_ms();
                match self.write(&target, running.clone()).await {
                    Write::Moved => {
                        self.running.insert(logged.view.id, running);
                    }
                    Write::Lost => {}
                    Write::Failed => anyhow::bail!("the store is unavailable"),
                }
            }
            None => {
                self.finish(
                    &target,
                    TargetStatus::Failed,
                    Some("the server stopped while sending this device's command; it was not sent again, so whether it ran is unknown".into()),
                )
                .await;
            }
        }
        Ok(())
    }

    /// One round: settle what the state asks, halt at the threshold, start devices,
    /// complete. True once the job has nothing left to do here.
    async fn step(&mut self) -> bool {
        match self.job.state {
            JobState::Cancelled => return self.wind_down(true).await,
            JobState::Halted => return self.wind_down(false).await,
            JobState::Completed => return true,
            JobState::Running | JobState::Paused => {}
        }
        if let Some(threshold) = self.job.failure_threshold {
            let limit = threshold.failures(self.job.counts.total);
            if self.job.counts.failed >= limit {
                let reason = format!(
                    "halted: {} of {} devices failed, reaching the threshold ({threshold})",
                    self.job.counts.failed, self.job.counts.total
                );
                if self.set_state(JobState::Halted, Some(&reason)).await {
                    return self.wind_down(false).await;
                }
                return false;
            }
        }
        if self.job.state == JobState::Running {
            self.expire_waiting().await;
            self.fill().await;
        }
        let idle = self.pending.is_empty()
            && self.waiting.is_empty()
            && self.running.is_empty()
            && self.returning.is_empty()
            && self.starts.is_empty();
        idle && self.set_state(JobState::Completed, None).await
    }

    /// A cancelled or halted job: devices not started are cancelled; running commands
    /// are cancelled (`cancel`) or left to finish. True once nothing runs.
    async fn wind_down(&mut self, cancel: bool) -> bool {
        let why = if cancel {
            "not started: the job was cancelled"
        } else {
            "not started: the job halted"
        };
        if !self.pending.is_empty() || !self.waiting.is_empty() {
            let moved = self
                .jobs
                .inner
                .store
                .update_targets(
                    &self.job.id.0,
                    &[TargetStatus::Pending, TargetStatus::Waiting],
                    TargetStatus::Cancelled,
                    why,
                    now_ms(),
                )
                .await;
            match moved {
                Ok(_) => {
                    let now = now_ms();
                    for mut target in self.pending.drain(..).chain(self.waiting.drain(..)) {
                        self.job
                            .counts
                            .moved(target.status, TargetStatus::Cancelled);
                        target.status = TargetStatus::Cancelled;
                        target.message = Some(why.into());
                        target.updated_ms = now;
                        self.jobs
                            .inner
                            .hub
                            .publish(LiveEvent::JobTarget { target })
                            .await;
                    }
                    self.dirty = true;
                }
                Err(error) => {
                    tracing::warn!(job = %self.job.id, "cannot cancel the job's devices (retrying): {error:#}");
                    return false;
                }
            }
        }
        if cancel {
            let hub = self.jobs.inner.hub.clone();
            for command in self.running.keys().cloned().collect::<Vec<_>>() {
                // Ended as cancelled (its event settles the device), or already ended
                // (the check settles it); another replica's is cancelled by it (the hub
                // forwards the cancel), or ends on its own if that cannot answer.
                let _ = hub.cancel(&command).await;
            }
            self.check_running().await;
        }
        self.running.is_empty() && self.returning.is_empty() && self.starts.is_empty()
    }

    /// Devices waited for too long are skipped.
    async fn expire_waiting(&mut self) {
        if self.waiting.is_empty() || now_ms() < self.wait_until() {
            return;
        }
        let why = format!(
            "skipped: offline, and not back within {} of the job's start",
            human(self.job.wait_ms)
        );
        for target in std::mem::take(&mut self.waiting) {
            if !self
                .finish(&target, TargetStatus::Skipped, Some(why.clone()))
                .await
            {
                self.waiting.push(target);
            }
        }
    }

    fn wait_until(&self) -> u64 {
        self.job.created_ms.saturating_add(self.job.wait_ms)
    }

    fn online(&self, target: &JobTarget) -> bool {
        self.jobs
            .inner
            .hub
            .device(&target.device_id)
            .is_some_and(|device| device.online)
    }

    /// Starts devices until the job's concurrency is reached.
    async fn fill(&mut self) {
        if self.hold_until.is_some_and(|until| Instant::now() < until) {
            return;
        }
        self.hold_until = None;
        let concurrency = usize::try_from(self.job.concurrency).unwrap_or(usize::MAX);
        while self.running.len() + self.returning.len() + self.starts.len() < concurrency {
            let target = match self.waiting.iter().position(|t| self.online(t)) {
                Some(back) => self.waiting.remove(back),
                None => match self.pending.pop_front() {
                    Some(next) => next,
                    None => return,
                },
            };
            if !self.online(&target) {
                self.offline(target).await;
                continue;
            }
            let mut starting = target.clone();
            starting.status = TargetStatus::Starting;
            starting.message = None;
            starting.updated_ms = now_ms();
            match self.write(&target, starting.clone()).await {
                Write::Moved => {}
                // Someone else started it: never send it twice.
                Write::Lost => continue,
                Write::Failed => {
                    // The store is down: try again shortly, in the same order.
                    self.pending.push_front(target);
                    self.hold_until = Some(Instant::now() + RETRY_AFTER);
                    return;
                }
            }
            let args = match (&self.job.artifact, &self.jobs.inner.device_args) {
                (None, _) => Ok(self.job.args.clone()),
                (Some(_), Some(device_args)) => {
                    device_args.args_for(&self.job, &starting.device_id)
                }
                (Some(_), None) => Err("this server cannot give devices updates".to_owned()),
            };
            let args = match args {
                Ok(args) => args,
                Err(why) => {
                    self.finish(&starting, TargetStatus::Failed, Some(cut(&why)))
                        .await;
                    continue;
                }
            };
            let hub = self.jobs.inner.hub.clone();
            let request = SendCommand {
                name: self.job.command.clone(),
                args,
                timeout_ms: Some(self.job.timeout_ms),
            };
            let (issued_by, job_id) = (self.job.created_by.clone(), self.job.id.clone());
            self.starts.spawn(async move {
                let sent = hub
                    .send_for(&starting.device_id, request, Some(issued_by), Some(job_id))
                    .await;
                (starting, sent)
            });
        }
    }

    /// A device offline when its turn came: skipped, or waited for.
    async fn offline(&mut self, target: JobTarget) {
        let wait = self.job.offline == OfflinePolicy::Wait && now_ms() < self.wait_until();
        if !wait {
            self.finish(
                &target,
                TargetStatus::Skipped,
                Some("skipped: offline when its turn came".into()),
            )
            .await;
            return;
        }
        if target.status == TargetStatus::Waiting {
            self.waiting.push(target);
            return;
        }
        let mut waiting = target.clone();
        waiting.status = TargetStatus::Waiting;
        waiting.message = Some("offline: waiting for it to come back".into());
        waiting.updated_ms = now_ms();
        match self.write(&target, waiting.clone()).await {
            Write::Moved => self.waiting.push(waiting),
            Write::Lost => {}
            Write::Failed => {
                self.pending.push_front(target);
                self.hold_until = Some(Instant::now() + RETRY_AFTER);
            }
        }
    }

    /// A send came back.
    async fn started(&mut self, (target, sent): Started) {
        match sent {
            Ok(command) if command.status.is_terminal() => {
                if command.status == CommandStatus::Offline {
                    // Its inbox was gone: as good as offline when its turn came.
                    self.back_to(&target, TargetStatus::Pending).await;
                    if let Some(target) = self.pending.pop_front() {
                        self.offline(target).await;
                    }
                    return;
                }
                self.settle(&target, &command).await;
            }
            Ok(command) => {
                let mut running = target.clone();
                running.status = TargetStatus::Running;
                running.command_id = Some(command.id.clone());
                running.updated_ms = now_ms();
                let written = self.write(&target, running.clone()).await;
                if written == Write::Lost {
                    return;
                }
                if written == Write::Moved {
                    self.running.insert(command.id.clone(), running);
                    if self.job.state == JobState::Cancelled {
                        let _ = self.jobs.inner.hub.cancel(&command.id).await;
                    }
                    // It may have ended before it was in `running`.
                    if let Some(now) = self.jobs.inner.hub.command(&command.id)
                        && now.status.is_terminal()
                    {
                        self.command_ended(&now).await;
                    }
                } else {
                    // Sent, but not recorded: the store is down. Kept as running in
                    // memory; the write is tried again when it ends.
                    let mut remembered = running;
                    remembered.status = TargetStatus::Starting;
                    self.running.insert(command.id, remembered);
                }
            }
            Err(SendError::DeviceOffline(_) | SendError::UnknownDevice(_)) => {
                self.back_to(&target, TargetStatus::Pending).await;
                if let Some(target) = self.pending.pop_front() {
                    self.offline(target).await;
                }
            }
            Err(SendError::BrokerUnavailable | SendError::ShuttingDown) => {
                self.back_to(&target, TargetStatus::Pending).await;
                self.hold_until = Some(Instant::now() + RETRY_AFTER);
            }
            Err(refused) => {
                self.finish(
                    &target,
                    TargetStatus::Failed,
                    Some(cut(&format!("rejected: {refused}"))),
                )
                .await;
            }
        }
    }

    /// A device whose send did not happen goes back to `status` (pending), first in line.
    async fn back_to(&mut self, target: &JobTarget, status: TargetStatus) {
        let mut back = target.clone();
        back.status = status;
        back.updated_ms = now_ms();
        let written = self.write(target, back.clone()).await;
        if written == Write::Moved {
            self.pending.push_front(back);
        } else if written == Write::Failed {
            // Still `starting` in the store: settled from the command log if the server
            // stops now; kept in line here.
            self.pending.push_front(target.clone());
        }
    }

    /// A command of this job ended.
    async fn command_ended(&mut self, command: &CommandView) {
        if let Some(target) = self.running.get(&command.id).cloned() {
            self.settle(&target, command).await;
        }
    }

    /// Looks at every running command (for events missed, and other replicas' commands).
    async fn check_running(&mut self) {
        let hub = self.jobs.inner.hub.clone();
        let store = self.jobs.inner.store.clone();
        for (id, target) in self.running.clone() {
            let command = match hub.command(&id) {
                Some(command) => Some(command),
                None => store
                    .logged_command(&id.0)
                    .await
                    .ok()
                    .flatten()
                    .map(|c| c.view),
            };
            if let Some(command) = command
                && command.status.is_terminal()
            {
                self.settle(&target, &command).await;
            }
        }
    }

    /// Devices restarting into an update (one, or all): back with the version is
    /// success; back with another (it rolled back) or not back in time is failure.
    async fn check_returning(&mut self, only: Option<&DeviceId>) {
        let Some(artifact) = self.job.artifact.clone() else {
            return;
        };
        let now = now_ms();
        let devices: Vec<DeviceId> = match only {
            Some(id) => vec![id.clone()],
            None => self.returning.keys().cloned().collect(),
        };
        for id in devices {
            let Some(returning) = self.returning.get(&id) else {
                continue;
            };
            let device = self.jobs.inner.hub.device(&id);
            let back = device
                .as_ref()
                .filter(|d| d.online && d.since_ms > returning.installed_ms);
            let settle =
                u64::try_from(self.jobs.inner.config.update_settle.as_millis()).unwrap_or(u64::MAX);
            let outcome = match back {
                // Back with the version, but not yet for long: the agent may still fall
                // back to the old one.
                Some(device)
                    if device.firmware == artifact.version
                        && now < device.since_ms.saturating_add(settle) =>
                {
                    None
                }
                Some(device) if device.firmware == artifact.version => Some((
                    TargetStatus::Succeeded,
                    format!("updated to {} and back online", artifact.version),
                )),
                Some(device) => Some((
                    TargetStatus::Failed,
                    format!(
                        "rolled back: it came back with version {} instead of {}",
                        device.firmware, artifact.version
                    ),
                )),
                None if now > returning.until_ms => Some((
                    TargetStatus::Failed,
                    format!(
                        "installed {}, but it did not come back within {}",
                        artifact.version,
                        human(
                            u64::try_from(self.jobs.inner.config.update_return.as_millis())
                                .unwrap_or(u64::MAX)
                        )
                    ),
                )),
                None => None,
            };
            if let Some((status, message)) = outcome {
                let target = returning.target.clone();
                if self.finish(&target, status, Some(message)).await {
                    self.returning.remove(&id);
                }
            }
        }
    }

    /// A device's command ended: the device's outcome.
    async fn settle(&mut self, target: &JobTarget, command: &CommandView) {
        if command.status == CommandStatus::Succeeded
            && let Some(artifact) = &self.job.artifact
        {
            let version = artifact.version.clone();
            let mut installed = target.clone();
            installed.status = TargetStatus::Running;
            installed.command_id = Some(command.id.clone());
            installed.message = Some(format!(
                "installed {version}; waiting for it to come back with it"
            ));
            installed.updated_ms = now_ms();
            let mut from = target.clone();
            from.command_id = Some(command.id.clone());
            let written = self.write(&from, installed.clone()).await;
            if written == Write::Lost {
                self.running.remove(&command.id);
            }
            if written == Write::Moved {
                self.running.remove(&command.id);
                let until_ms = command.updated_ms.saturating_add(
                    u64::try_from(self.jobs.inner.config.update_return.as_millis())
                        .unwrap_or(u64::MAX),
                );
                self.returning.insert(
                    installed.device_id.clone(),
                    Returning {
                        target: installed,
                        installed_ms: command.updated_ms,
                        until_ms,
                    },
                );
                self.check_returning(Some(&target.device_id)).await;
            }
            return;
        }
        let (status, message) = match command.status {
            CommandStatus::Succeeded => (
                TargetStatus::Succeeded,
                command
                    .result
                    .as_ref()
                    .filter(|r| !r.is_null())
                    .map(|r| cut(&r.to_string())),
            ),
            CommandStatus::Cancelled if self.job.state == JobState::Cancelled => (
                TargetStatus::Cancelled,
                Some("cancelled with the job".into()),
            ),
            other => (
                TargetStatus::Failed,
                Some(cut(&match &command.error {
                    Some(error) => format!("{other}: {error}"),
                    None => other.to_string(),
                })),
            ),
        };
        let mut from = target.clone();
        from.command_id = Some(command.id.clone());
        if self.finish(&from, status, message).await {
            self.running.remove(&command.id);
        }
    }

    /// Ends a device for this job: written, counted, told. False if the store could not
    /// take it (tried again later by whoever called).
    async fn finish(
        &mut self,
        target: &JobTarget,
        status: TargetStatus,
        message: Option<String>,
    ) -> bool {
        let mut done = target.clone();
        done.status = status;
        done.message = message;
        done.updated_ms = now_ms();
        self.write(target, done).await != Write::Failed
    }

    /// Writes a device's move from `from` to `to` (only if the store still has it as
    /// `from`, or as `starting` for a device sent while the store was down), counts it
    /// and tells browsers; see [`Write`] for what else can come of it.
    async fn write(&mut self, from: &JobTarget, to: JobTarget) -> Write {
        let allowed: &[TargetStatus] = if from.status == TargetStatus::Running {
            &[TargetStatus::Running, TargetStatus::Starting]
        } else {
            std::slice::from_ref(&from.status)
        };
        match self.jobs.inner.store.update_target(&to, allowed).await {
            Ok(true) => {
                self.job.counts.moved(from.status, to.status);
                self.dirty = true;
                self.jobs
                    .inner
                    .hub
                    .publish(LiveEvent::JobTarget { target: to })
                    .await;
                Write::Moved
            }
            Ok(false) => {
                // Someone else moved it (another replica, after a lease ran out): the
                // store's word stands; recount.
                tracing::warn!(job = %self.job.id, device = %to.device_id, "a job's device was changed elsewhere");
                if let Ok(counts) = self.jobs.inner.store.job_counts(&self.job.id.0).await {
                    self.job.counts = counts;
                }
                Write::Lost
            }
            Err(error) => {
                tracing::warn!(job = %self.job.id, "cannot write a job's device (retrying): {error:#}");
                Write::Failed
            }
        }
    }

    /// Re-reads the job's state (a user here or on another replica may have changed it).
    /// Not its counts: this task keeps them as it moves devices (counting a job of many
    /// thousand devices every second would cost the database for nothing).
    async fn refresh(&mut self) {
        match self.jobs.inner.store.job_settings(&self.job.id.0).await {
            Ok(Some(stored)) => {
                let changed = stored.view.state != self.job.state;
                self.job.state = stored.view.state;
                self.job.updated_ms = stored.view.updated_ms;
                self.job.ended_ms = stored.view.ended_ms;
                self.job.stop_reason = stored.view.stop_reason;
                if changed {
                    self.tell().await;
                }
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(job = %self.job.id, "cannot read the job (retrying): {error:#}")
            }
        }
    }

    /// Moves the job to `to` if it is still running or paused: whether it did.
    async fn set_state(&mut self, to: JobState, reason: Option<&str>) -> bool {
        let store = &self.jobs.inner.store;
        let from = [JobState::Running, JobState::Paused];
        match store
            .set_job_state(&self.job.id.0, &from, to, reason, now_ms())
            .await
        {
            Ok(true) => {
                self.refresh().await;
                self.tell().await;
                true
            }
            Ok(false) => {
                // Changed meanwhile (cancelled, say): look again next round.
                self.refresh().await;
                false
            }
            Err(error) => {
                tracing::warn!(job = %self.job.id, "cannot write the job's state (retrying): {error:#}");
                false
            }
        }
    }

    /// Tells browsers the job as it is now.
    async fn tell(&mut self) {
        self.dirty = false;
        self.jobs
            .inner
            .hub
            .publish(LiveEvent::JobUpdated {
                job: Box::new(self.job.clone()),
            })
            .await;
    }
}

/// `text`, at most [`MAX_MESSAGE`] characters.
fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_MESSAGE) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// A duration for people: "90 s", "15 min", "2 h".
fn human(ms: u64) -> String {
    match ms {
        ms if ms < 120_000 => format!("{} s", ms / 1000),
        ms if ms < 7_200_000 => format!("{} min", ms / 60_000),
        ms => format!("{} h", ms / 3_600_000),
    }
}
