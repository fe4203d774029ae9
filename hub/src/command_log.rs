//! The command log: every command this replica sends, and each change of its status,
//! written to the database, so that history outlives the process and a restart loses
//! nothing.
//!
//! - Writing: changes go to one writer task through a channel and are written in
//!   batches (up to [`BATCH`] changes, or what came within [`LINGER`]): a database
//!   round trip per status change would cap the command rate at the database's.
//!   `send` answers once its command is in the log (a flush, which concurrent sends
//!   share), so a command the caller was told about survives a crash right after.
//!   Each change carries a version that grows across restarts (the clock, and a
//!   counter within a millisecond), so a batch written twice, or late, never moves a
//!   command back. A database that is down is retried with backoff; changes wait in
//!   memory.
//! - Resuming: a replica with a log reads its replies from a durable queue named after
//!   its replica id (kept in the data folder), so replies that arrive while it is down
//!   wait there. On start it takes back its unfinished commands with their deadlines;
//!   replies waiting in the queue then end them, and the timer ends the rest (those
//!   whose deadline passed while it was down, as timed out). On a graceful stop it
//!   leaves them unfinished, for the next start.
//! - Vanished replicas: a replica that never comes back cannot end its commands, so
//!   every replica ends other replicas' unfinished commands once their deadline is
//!   [`ORPHAN_GRACE`] past, saying that the outcome is unknown.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use common::{Retry, Shutdown, duration_ms, now_ms};
use protocol::{CommandStatus, api::CommandView};
use store::{LoggedCommand, Store};
use tokio::sync::{mpsc, oneshot, watch};

use crate::hub::Hub;

/// Changes written in one batch at most, and how long the writer lingers for more.
const BATCH: usize = 500;
const LINGER: Duration = Duration::from_millis(50);
/// How long past its deadline another replica's unfinished command is left to it.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(60);
/// How often each replica looks for vanished replicas' commands.
const ORPHAN_SWEEP: Duration = Duration::from_secs(30);
/// Why a vanished replica's command ends.
pub const ORPHANED: &str = "the server that sent it went away before the device answered, and did not come back; whether it was carried out is unknown";
/// The longest `send` waits for its command to be in the log before answering.
pub(crate) const SEND_FLUSH_WITHIN: Duration = Duration::from_secs(5);
/// The longest a stopping replica spends writing what is left.
const FLUSH_WITHIN: Duration = Duration::from_secs(1);

/// Where commands are logged, and under which replica id.
#[derive(Debug, Clone)]
pub struct CommandLog {
    pub store: Store,
    /// Stable across restarts of this replica (kept in its data folder); names its
    /// durable reply queue.
    pub replica: String,
    /// Whether replies can outlive this process: the broker is not embedded in it.
    /// Then the reply queue is durable and a stop leaves pending commands for the next
    /// start; else a stop ends them (their answers would die with the broker).
    pub resumable: bool,
}

impl CommandLog {
    /// This replica's durable reply queue.
    pub fn reply_queue(&self) -> String {
        format!("tether.replies.{}", self.replica)
    }
}

/// What the writer task is handed: a change, or a request to write everything handed
/// before it now and say when that is done.
#[derive(Debug)]
enum Change {
    Command(Box<LoggedCommand>),
    Flush(oneshot::Sender<()>),
}

/// The writer's end: hands changes to the writer task.
#[derive(Debug)]
pub(crate) struct LogWriter {
    changes: mpsc::UnboundedSender<Change>,
    replica: String,
    version: AtomicU64,
    /// Batches written and failed writes, for `/metrics`.
    pub(crate) written: Arc<AtomicU64>,
    pub(crate) failures: Arc<AtomicU64>,
    /// Whether the writer's last write failed (the database is down): then nobody
    /// waits for the log, since it cannot be written before the database is back.
    failing: watch::Receiver<bool>,
}

impl LogWriter {
    /// Starts the writer task under `shutdown`: it writes until stopped, then what is
    /// left, within [`FLUSH_WITHIN`].
    pub(crate) fn start(log: &CommandLog, shutdown: &Shutdown) -> Self {
        let (changes, received) = mpsc::unbounded_channel();
        let (written, failures) = (Arc::default(), Arc::default());
        let (set_failing, failing) = watch::channel(false);
        shutdown.spawn(write(
            log.store.clone(),
            received,
            shutdown.clone(),
            Arc::clone(&written),
            Arc::clone(&failures),
            set_failing,
        ));
        Self {
            changes,
            replica: log.replica.clone(),
            version: AtomicU64::new(0),
            written,
            failures,
            failing,
        }
    }

    /// Logs a command's latest state, sent to `session_id` through `inbox`.
    pub(crate) fn log(&self, view: &CommandView, session_id: &str, inbox: &str) {
        let _ = self.changes.send(Change::Command(Box::new(LoggedCommand {
            view: view.clone(),
            replica: self.replica.clone(),
            session_id: session_id.to_owned(),
            inbox: inbox.to_owned(),
            version: self.next_version(),
        })));
    }

    /// Resolves once every change logged so far is written (or after `within`, when
    /// the writer stops, or as soon as a write fails, whichever comes first; at once
    /// while the database is known to be down). Concurrent callers share one write.
    ///
    /// Without the early answers, every command sent during a database outage would
    /// be answered `within` late (the fault suite's postgres-restart found sends
    /// taking 5 s for as long as the database was down, and until the writer's next
    /// retry after).
    pub(crate) async fn flushed(&self, within: Duration) -> bool {
        if *self.failing.borrow() {
            return false;
        }
        let (done, written) = oneshot::channel();
        if self.changes.send(Change::Flush(done)).is_err() {
            return false;
        }
        let mut failing = self.failing.clone();
        tokio::select! {
            written = tokio::time::timeout(within, written) => matches!(written, Ok(Ok(()))),
            _ = failing.wait_for(|failing| *failing) => false,
        }
    }

    /// Greater than every version before it, in this process and (the clock allowing)
    /// in this replica's earlier runs.
    fn next_version(&self) -> u64 {
        let floor = now_ms() << 20;
        let mut current = self.version.load(Ordering::Relaxed);
        loop {
            let next = floor.max(current + 1);
            match self.version.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(actual) => current = actual,
            }
        }
    }
}

/// The writer task: batches, writes, retries.
async fn write(
    store: Store,
    mut changes: mpsc::UnboundedReceiver<Change>,
    shutdown: Shutdown,
    written: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    failing: watch::Sender<bool>,
) {
    let mut batch = Vec::new();
    // Told once the batch is written.
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        if batch.is_empty() && waiting.is_empty() {
            tokio::select! {
                change = changes.recv() => match change {
                    Some(Change::Command(change)) => batch.push(*change),
                    Some(Change::Flush(done)) => waiting.push(done),
                    None => return,
                },
                () = shutdown.stopping() => break,
            }
            let linger = tokio::time::sleep(LINGER);
            tokio::pin!(linger);
            // Linger for more, unless someone waits for the write.
            while batch.len() < BATCH && waiting.is_empty() {
                tokio::select! {
                    change = changes.recv() => match change {
                        Some(Change::Command(change)) => batch.push(*change),
                        Some(Change::Flush(done)) => waiting.push(done),
                        None => break,
                    },
                    () = &mut linger => break,
                }
            }
            // What is already queued goes in the same write.
            while batch.len() < BATCH {
                match changes.try_recv() {
                    Ok(Change::Command(change)) => batch.push(*change),
                    Ok(Change::Flush(done)) => waiting.push(done),
                    Err(_) => break,
                }
            }
        }
        let mut retry = Retry::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            if batch.is_empty() {
                break;
            }
            match store.log_commands(batch.clone()).await {
                Ok(()) => {
                    written.fetch_add(1, Ordering::Relaxed);
                    failing.send_if_modified(|failing| std::mem::replace(failing, false));
                    batch.clear();
                    break;
                }
                Err(error) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    failing.send_if_modified(|failing| !std::mem::replace(failing, true));
                    tracing::warn!(
                        "cannot write {} command changes to the log: {error:#}; retrying",
                        batch.len()
                    );
                    tokio::select! {
                        () = tokio::time::sleep(retry.failed()) => {}
                        () = shutdown.stopping() => break,
                    }
                }
            }
        }
        if batch.is_empty() {
            for done in waiting.drain(..) {
                let _ = done.send(());
            }
        }
        if shutdown.is_stopping() {
            break;
        }
    }
    // Stopping: what is in hand and what is queued, once, within a bound.
    while let Ok(change) = changes.try_recv() {
        if let Change::Command(change) = change {
            batch.push(*change);
        }
    }
    if batch.is_empty() {
        return;
    }
    let count = batch.len();
    match tokio::time::timeout(FLUSH_WITHIN, store.log_commands(batch)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::error!("stopping: cannot write the last {count} command changes: {error:#}")
        }
        Err(_) => tracing::error!(
            "stopping: the last {count} command changes were not written within {FLUSH_WITHIN:?}"
        ),
    }
}

impl Hub {
    /// Takes back this replica's unfinished commands from the log, before the link
    /// consumes replies. A deadline that passed while the server was down is due now.
    pub(crate) async fn resume(&self, log: &CommandLog) {
        let unfinished = match log.store.unfinished_commands(Some(&log.replica)).await {
            Ok(unfinished) => unfinished,
            Err(error) => {
                tracing::error!(
                    "cannot read the unfinished commands from the log: {error:#}; they are not resumed"
                );
                return;
            }
        };
        if unfinished.is_empty() {
            return;
        }
        tracing::info!(
            "resuming {} unfinished commands from the log",
            unfinished.len()
        );
        let now = now_ms();
        let mut state = self.state();
        for logged in unfinished {
            let left = Duration::from_millis(logged.view.deadline_ms.saturating_sub(now));
            let deadline = std::time::Instant::now() + left;
            state
                .commands
                .accept(logged.view, logged.session_id, logged.inbox, deadline);
        }
        drop(state);
        self.inner.timer.notify_one();
    }

    /// Every [`ORPHAN_SWEEP`], ends other replicas' unfinished commands whose deadline
    /// is [`ORPHAN_GRACE`] past: their replica is gone. Runs until the hub stops.
    pub(crate) async fn end_orphans(self, log: CommandLog) {
        let stopping = self.inner.shutdown.clone();
        loop {
            tokio::select! {
                () = tokio::time::sleep(ORPHAN_SWEEP) => {}
                () = stopping.stopping() => return,
            }
            if let Err(error) = self.end_orphans_now(&log).await {
                tracing::warn!("cannot look for vanished replicas' commands: {error:#}");
            }
        }
    }

    /// One sweep of [`Hub::end_orphans`]; returns what it ended.
    pub async fn end_orphans_now(&self, log: &CommandLog) -> anyhow::Result<Vec<CommandView>> {
        let cutoff = now_ms().saturating_sub(duration_ms(ORPHAN_GRACE));
        let orphans: Vec<LoggedCommand> = log
            .store
            .unfinished_commands(None)
            .await?
            .into_iter()
            .filter(|c| c.replica != log.replica && c.view.deadline_ms < cutoff)
            .collect();
        let mut ended = Vec::new();
        for orphan in orphans {
            ended.extend(orphaned(orphan));
        }
        if ended.is_empty() {
            return Ok(Vec::new());
        }
        tracing::warn!(
            "ending {} commands of vanished server replicas",
            ended.len()
        );
        log.store.log_commands(ended.clone()).await?;
        Ok(self.mirror_orphans(&ended).await)
    }

    /// Tells this replica's listeners and the other replicas that vanished replicas'
    /// commands ended (as [`orphaned`] made them, already logged).
    pub(crate) async fn mirror_orphans(&self, ended: &[LoggedCommand]) -> Vec<CommandView> {
        let views: Vec<CommandView> = {
            let mut state = self.state();
            let views: Vec<CommandView> = ended
                .iter()
                .filter_map(|c| state.commands.mirror(c.view.clone(), &c.replica))
                .collect();
            self.broadcast_commands(&state, &views);
            views
        };
        self.share(&views).await;
        views
    }
}

/// A vanished replica's unfinished command as it ends: `outcome_unknown` because of
/// [`ORPHANED`], to be written under the dead replica's name with a version above
/// anything it wrote. `None` if it had ended already.
pub(crate) fn orphaned(mut orphan: LoggedCommand) -> Option<LoggedCommand> {
    let status = orphan
        .view
        .status
        .advance(CommandStatus::OutcomeUnknown)
        .ok()?;
    orphan.view.status = status;
    orphan.view.updated_ms = now_ms();
    orphan.view.error = Some(ORPHANED.to_owned());
    orphan.version = (now_ms() << 20) | 0xF_FFFF;
    Some(orphan)
}
