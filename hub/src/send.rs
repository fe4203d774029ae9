//! Sending: a command validated against what the device announced and published to its
//! inbox as AMQP RPC (mandatory, with an expiration, this replica's reply queue and the
//! command id as correlation id, under publisher confirms); cancelling (one's own here,
//! another replica's forwarded to it by [`crate::forward`]); waiting for a command to
//! end; sharing command changes with other replicas over `tether.events`, and keeping
//! track of those replicas; and what happens to pending commands when a device goes
//! away. Also the errors of each, every one meaning that nothing was sent.

use std::{
    collections::HashMap,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use common::{duration_ms, now_ms};
use lapin::{Confirmation, options::BasicPublishOptions};
use protocol::{
    ArgumentError, CancelRequest, CommandId, CommandRequest, CommandStatus, DeviceId,
    ServerMessage,
    api::{CommandView, LiveEvent, SendCommand, timeouts},
    job::JobId,
    names,
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::command_log::SEND_FLUSH_WITHIN;
use crate::commands::Departure;
use crate::hub::Hub;

/// How long after a device's session ends its pending commands wait for answers that
/// were already on their way (they travel on another queue than the goodbye).
pub(crate) const OFFLINE_GRACE: Duration = Duration::from_millis(300);

/// A command update as shared between replicas on `tether.events` by earlier versions
/// (no AMQP `type`); still understood, so replicas can be upgraded one at a time.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ReplicaEvent {
    pub(crate) origin: String,
    pub(crate) command: CommandView,
}

/// Command updates shared between replicas on `tether.events`, of AMQP `type`
/// [`COMMANDS_KIND`]: every change made while the one before was being published goes
/// in the next message, so a busy replica sends few messages and an idle one waits for
/// nothing.
#[derive(Debug, Deserialize)]
pub(crate) struct ReplicaBatch {
    pub(crate) origin: String,
    pub(crate) commands: Vec<CommandView>,
}

/// [`ReplicaBatch`] as written.
#[derive(Serialize)]
struct ReplicaBatchOut<'a> {
    origin: &'a str,
    commands: &'a [CommandView],
}

pub(crate) const COMMANDS_KIND: &str = "commands";

/// The AMQP `type` of a replica's goodbye on `tether.events` (no body): the others stop
/// sharing with it at once instead of [`OTHERS_GONE_AFTER`] later.
pub(crate) const REPLICA_GONE_KIND: &str = "replica_gone";

/// Most command changes in one shared message.
const SHARE_BATCH: usize = 256;

/// Command changes waiting to be shared with other replicas.
#[derive(Debug, Default)]
pub(crate) struct Sharing {
    pending: Vec<CommandView>,
    /// Whether a caller of [`Hub::share`] is publishing (it takes what others add).
    publishing: bool,
}

/// Clears [`Sharing::publishing`] however the publishing caller ends, cancelled
/// included (what it had taken is then lost for the other replicas, as when the broker
/// is down: sharing is best effort).
struct Publishing<'a>(&'a Hub);

impl Drop for Publishing<'_> {
    fn drop(&mut self) {
        self.0.sharing().publishing = false;
    }
}

/// A live event another replica made (a job's progress) and shares with the others'
/// browsers, on `tether.events` with the AMQP `type` [`SHARED_LIVE_KIND`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SharedLive {
    pub(crate) origin: String,
    pub(crate) event: LiveEvent,
}

pub(crate) const SHARED_LIVE_KIND: &str = "live";

/// The AMQP `type` of a replica's "I am here" on `tether.events` (no body), sent when it
/// connects and every [`ANNOUNCE_EVERY`].
pub(crate) const REPLICA_KIND: &str = "replica";

/// How long a waiter of a stopping hub still waits for its command to be ended by the
/// stop, so that it answers with the end rather than the state just before it.
const STOPPING_WAIT: Duration = Duration::from_millis(500);

/// How often a replica says it is here.
pub(crate) const ANNOUNCE_EVERY: Duration = Duration::from_secs(5);

/// How long after another replica was last heard from command changes are still shared:
/// three announcements missed. After that it is gone: its commands are orphans.
const OTHERS_GONE_AFTER: Duration = Duration::from_secs(15);

/// Another replica, as heard on `tether.events`.
#[derive(Debug)]
pub(crate) struct Other {
    /// When it was last heard from (ms), or said goodbye.
    heard_ms: u64,
    /// The queue it takes requests from other replicas on (its events queue, the
    /// `reply_to` of what it publishes there); `None` from a version without it.
    queue: Option<String>,
    /// It said goodbye.
    gone: bool,
}

impl Other {
    fn present(&self, now_ms: u64) -> bool {
        !self.gone && now_ms.saturating_sub(self.heard_ms) <= duration_ms(OTHERS_GONE_AFTER)
    }
}

/// What a replica knows of another (the owner of a command).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Owner {
    /// Heard from lately; the queue it takes requests on, if it said.
    Present(Option<String>),
    /// Said goodbye, or silent for longer than it would be if it were there.
    Gone,
    /// Not heard from, but this replica has not been connected long enough to know.
    Unsure,
}

/// Why a command was not sent. Nothing was sent to the device in any of these cases.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SendError {
    #[error("no device \"{0}\" has ever connected")]
    UnknownDevice(DeviceId),
    #[error("device \"{0}\" is offline")]
    DeviceOffline(DeviceId),
    #[error("device \"{device}\" has no command \"{name}\"")]
    UnknownCommand { device: DeviceId, name: String },
    #[error("{0}")]
    InvalidArguments(#[from] ArgumentError),
    #[error("timeout_ms must be between {min} and {max} (got {got})", min = timeouts::MIN_MS, max = timeouts::MAX_MS, got = .0)]
    InvalidTimeout(u64),
    #[error("the server is not connected to the broker; try again shortly")]
    BrokerUnavailable,
    #[error("the server is stopping; try again once it is back")]
    ShuttingDown,
}

/// Why a command was not cancelled.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CancelError {
    #[error("no command \"{0}\"")]
    UnknownCommand(CommandId),
    #[error("command \"{}\" has already ended as {}", .0.id, .0.status)]
    AlreadyEnded(Box<CommandView>),
    /// The replica that sent it went away: it ended now as `outcome_unknown`, as it would
    /// have in time ([`crate::ORPHANED`]); its device was told to stop if that could be
    /// reached.
    #[error("command \"{}\" was sent by a server replica that went away; it ended as {}: {}", .0.id, .0.status, .0.error.as_deref().unwrap_or_default())]
    Orphaned(Box<CommandView>),
    /// Another replica sent it and did not answer the forwarded cancel in time (or its
    /// queue vanished, or it has not been heard from yet, or it runs a version that
    /// takes no forwarded cancels). Nothing changed; the caller may try again.
    #[error(
        "command \"{0}\" was sent by another server replica, which did not answer; try again shortly"
    )]
    ReplicaUnavailable(CommandId),
    /// Not connected to the broker: another replica's command cannot be reached.
    #[error("the server is not connected to the broker; try again shortly")]
    BrokerUnavailable,
    /// The command log could not be read (the command is not in memory).
    #[error("the command log is unavailable; try again shortly")]
    StoreUnavailable,
}

/// What a replica can do about a cancel by itself ([`Hub::cancel_here`]).
#[derive(Debug)]
pub(crate) enum Here {
    /// Its own, and now cancelled.
    Cancelled(CommandView),
    /// Ended already.
    Ended(CommandView),
    /// Another replica's (`origin`), still going as far as this one knows.
    Theirs { view: CommandView, origin: String },
    /// Not in memory.
    Unknown,
}

impl Hub {
    /// Validates a command against what the device announced, sends it, and returns it
    /// once the broker has confirmed it: `sent`, or `offline` if the device's inbox is
    /// gone, or `failed` if the broker refused it.
    pub async fn send(
        &self,
        device_id: &DeviceId,
        request: SendCommand,
    ) -> Result<CommandView, SendError> {
        self.send_as(device_id, request, None).await
    }

    /// [`Hub::send`], recording who sent it (shown with the command everywhere).
    pub async fn send_as(
        &self,
        device_id: &DeviceId,
        request: SendCommand,
        issued_by: Option<String>,
    ) -> Result<CommandView, SendError> {
        self.send_for(device_id, request, issued_by, None).await
    }

    /// [`Hub::send_as`] for a job: the command carries the job's id (in the command
    /// log too, where a job that resumes finds what it sent).
    pub async fn send_for(
        &self,
        device_id: &DeviceId,
        request: SendCommand,
        issued_by: Option<String>,
        job_id: Option<JobId>,
    ) -> Result<CommandView, SendError> {
        let timeout_ms = request
            .timeout_ms
            .unwrap_or(duration_ms(self.inner.config.default_timeout));
        if !(timeouts::MIN_MS..=timeouts::MAX_MS).contains(&timeout_ms) {
            return Err(SendError::InvalidTimeout(timeout_ms));
        }
        if self.inner.shutdown.is_stopping() {
            return Err(SendError::ShuttingDown);
        }
        let device_id = device_id.clone();
        let link = self.link().ok_or(SendError::BrokerUnavailable)?;
        let now_ms = now_ms();
        let (view, inbox, session_id) = {
            let mut state = self.state();
            let device = state
                .registry
                .get(&device_id)
                .ok_or_else(|| SendError::UnknownDevice(device_id.clone()))?;
            if !device.view.online {
                return Err(SendError::DeviceOffline(device_id));
            }
            let spec = device
                .view
                .capabilities
                .command(&request.name)
                .ok_or_else(|| SendError::UnknownCommand {
                    device: device_id.clone(),
                    name: request.name.clone(),
                })?;
            let args = spec.validate(&request.args)?;
            let view = CommandView {
                id: CommandId(format!("{:032x}", fastrand::u128(..))),
                device_id: device_id.clone(),
                name: request.name,
                args,
                status: CommandStatus::Accepted,
                created_ms: now_ms,
                updated_ms: now_ms,
                deadline_ms: now_ms + timeout_ms,
                percent: None,
                message: None,
                result: None,
                error: None,
                issued_by,
                job_id,
            };
            let (inbox, session_id) = (device.inbox.clone(), device.session_id.clone());
            let deadline = Instant::now() + Duration::from_millis(timeout_ms);
            state
                .commands
                .accept(view.clone(), session_id.clone(), inbox.clone(), deadline);
            self.broadcast_commands(&state, std::slice::from_ref(&view));
            (view, inbox, session_id)
        };
        self.inner.timer.notify_one();
        self.share(std::slice::from_ref(&view)).await;

        let request = ServerMessage::Command(CommandRequest {
            command_id: view.id.clone(),
            name: view.name.clone(),
            args: view.args.clone(),
            timeout_ms,
            deadline_ms: Some(view.deadline_ms),
        });
        let properties = link
            .properties()
            .with_reply_to(link.reply_queue.as_str().into())
            .with_correlation_id(view.id.0.as_str().into())
            .with_message_id(view.id.0.as_str().into())
            // A command that waited out its deadline in the inbox is dropped, never run.
            .with_expiration(timeout_ms.to_string().into());
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let confirmed = match link
            .channel
            .basic_publish(
                "".into(),
                inbox.as_str().into(),
                options,
                &protocol::encode(&request),
                properties,
            )
            .await
        {
            Ok(confirm) => confirm.await,
            Err(error) => Err(error),
        };
        let now_ms = common::now_ms();
        let changed = match confirmed {
            Ok(Confirmation::Nack(_)) => self.end_command(
                &view.id,
                CommandStatus::Failed,
                "the broker refused the command",
                now_ms,
            ),
            Ok(Confirmation::Ack(Some(_))) => {
                self.inner.stats.returned.fetch_add(1, Ordering::Relaxed);
                self.device_gone(&view.id, &device_id, &session_id, now_ms)
            }
            Ok(_) => {
                let mut state = self.state();
                let sent = state
                    .commands
                    .advance(&view.id, CommandStatus::Sent, now_ms, |_| {})
                    .ok();
                let sent: Vec<_> = sent.into_iter().collect();
                self.broadcast_commands(&state, &sent);
                sent
            }
            Err(error) => {
                tracing::warn!(command = %view.id, "publishing failed: {error}");
                let changed = self.end_command(
                    &view.id,
                    CommandStatus::Failed,
                    "the connection to the broker was lost while sending",
                    now_ms,
                );
                self.share(&changed).await;
                return Err(SendError::BrokerUnavailable);
            }
        };
        self.share(&changed).await;
        if let Some(log) = &self.inner.log
            && !log.flushed(SEND_FLUSH_WITHIN).await
        {
            tracing::warn!(command = %view.id, "sent, but not yet in the command log");
        }
        Ok(self.command(&view.id).unwrap_or(view))
    }

    /// Cancels a pending command: it ends as `cancelled` now, and the device is told to
    /// stop if it is still working on it.
    ///
    /// Any replica can cancel any command: one that another replica sent (known from
    /// its shared changes, or from the command log) is forwarded to that replica, which
    /// cancels it by the same rules and answers (see [`crate::forward`]); the answer is
    /// this call's. A command whose replica is gone ends as `outcome_unknown`
    /// ([`CancelError::Orphaned`]), as every replica ends such commands in time anyway.
    pub async fn cancel(&self, id: &CommandId) -> Result<CommandView, CancelError> {
        match self.cancel_here(id).await {
            Here::Cancelled(view) => Ok(view),
            Here::Ended(view) => Err(CancelError::AlreadyEnded(Box::new(view))),
            Here::Theirs { view, origin } => self.cancel_theirs(view, &origin).await,
            Here::Unknown => self.cancel_logged(id).await,
        }
    }

    /// What this replica can do about a cancel by itself: cancel its own command, or
    /// say that the command ended, is another replica's, or is not in memory. Used for
    /// cancels made here and for those forwarded here alike, so both follow one set of
    /// rules.
    pub(crate) async fn cancel_here(&self, id: &CommandId) -> Here {
        let (view, inbox) = {
            let mut state = self.state();
            let Some(current) = state.commands.get(id) else {
                return Here::Unknown;
            };
            if current.status.is_terminal() {
                return Here::Ended(current);
            }
            let Some(inbox) = state.commands.inbox(id) else {
                let origin = state.commands.origin(id).unwrap_or_default().to_owned();
                return Here::Theirs {
                    view: current,
                    origin,
                };
            };
            let Ok(view) = state
                .commands
                .advance(id, CommandStatus::Cancelled, now_ms(), |v| {
                    v.error = Some("cancelled by a user".into())
                })
            else {
                return Here::Ended(current);
            };
            self.broadcast_commands(&state, std::slice::from_ref(&view));
            (view, inbox)
        };
        self.share(std::slice::from_ref(&view)).await;
        self.tell_device_to_stop(id, &inbox).await;
        Here::Cancelled(view)
    }

    /// Tells the device behind `inbox` to stop working on command `id`. Best effort: the
    /// command has ended for everyone already; a device that is gone has nothing to stop.
    pub(crate) async fn tell_device_to_stop(&self, id: &CommandId, inbox: &str) {
        if let Some(link) = self.link() {
            let message = ServerMessage::Cancel(CancelRequest {
                command_id: id.clone(),
            });
            let properties = link
                .properties()
                .with_reply_to(link.reply_queue.as_str().into())
                .with_correlation_id(id.0.as_str().into());
            let _ = link.to_inbox(inbox, &message, properties).await;
        }
    }

    /// Waits up to `max` for a command to end; returns it as it is then.
    pub async fn wait(&self, id: &CommandId, max: Duration) -> Option<CommandView> {
        let ended = {
            // Checked and registered under the state lock, so the end cannot slip
            // between the two.
            let state = self.state();
            let current = state.commands.get(id)?;
            if current.status.is_terminal() {
                return Some(current);
            }
            let (notify, ended) = oneshot::channel();
            self.waiters().entry(id.clone()).or_default().push(notify);
            ended
        };
        match self.until_ended(id, ended, max).await {
            Some(command) => Some(command),
            None => self.command(id),
        }
    }

    /// [`Hub::wait`] for a command known to exist (`known`, as the command log has it)
    /// that this replica may not have heard of yet: another replica's, sent a moment
    /// ago, whose changes are on their way here. Returns the latest of what the log
    /// and this replica know.
    pub async fn wait_for(&self, known: CommandView, max: Duration) -> CommandView {
        let latest = |here: Option<CommandView>, known: CommandView| match here {
            Some(here) if here.supersedes(&known) => here,
            _ => known,
        };
        let ended = {
            let state = self.state();
            let current = latest(state.commands.get(&known.id), known.clone());
            if current.status.is_terminal() {
                return current;
            }
            let (notify, ended) = oneshot::channel();
            self.waiters()
                .entry(known.id.clone())
                .or_default()
                .push(notify);
            ended
        };
        match self.until_ended(&known.id, ended, max).await {
            Some(command) => command,
            None => latest(self.command(&known.id), known),
        }
    }

    /// The end of command `id` as `ended` is told it, within `max`; `None` if it did not
    /// come (its waiter is then forgotten).
    async fn until_ended(
        &self,
        id: &CommandId,
        ended: oneshot::Receiver<CommandView>,
        max: Duration,
    ) -> Option<CommandView> {
        // A stopping server answers soon, with the command as it is then: ended by the
        // stop (as a hub without a resumable log does, at once), or left for the next
        // start.
        let stopping = self.inner.shutdown.clone();
        let ended = async move {
            tokio::pin!(ended);
            tokio::select! {
                ended = &mut ended => ended.ok(),
                () = stopping.stopping() => tokio::time::timeout(STOPPING_WAIT, ended)
                    .await
                    .ok()
                    .and_then(Result::ok),
            }
        };
        // The receiver is dropped with the timeout, before the waiters are swept.
        let told = tokio::time::timeout(max, ended).await;
        if let Ok(Some(command)) = told {
            return Some(command);
        }
        let mut waiters = self.waiters();
        if let Some(waiting) = waiters.get_mut(id) {
            waiting.retain(|notify| !notify.is_closed());
            if waiting.is_empty() {
                waiters.remove(id);
            }
        }
        None
    }

    /// Tells this replica's browsers, and the other replicas' (through `tether.events`),
    /// about something that is not the hub's own: a job's progress. Best effort across
    /// replicas, in order.
    pub async fn publish(&self, event: LiveEvent) {
        self.emit_unnumbered(event.clone());
        let Some(link) = self.link() else { return };
        let shared = SharedLive {
            origin: self.inner.replica_id.clone(),
            event,
        };
        self.to_replicas(&link, &protocol::encode(&shared), Some(SHARED_LIVE_KIND))
            .await;
    }

    /// Tells the other replicas about command changes. Best effort: if the broker is
    /// down, they learn nothing, and our own listeners already know. With no other
    /// replica heard from lately, nothing is published at all.
    ///
    /// The changes join those waiting; the first caller to find nobody publishing
    /// publishes them all, in order, then what came meanwhile, and so on; the others
    /// return at once. So under load many changes share one message, and nobody waits
    /// for a timer.
    pub(crate) async fn share(&self, commands: &[CommandView]) {
        if commands.is_empty() || !self.others_present() {
            return;
        }
        self.sharing().pending.extend_from_slice(commands);
        loop {
            let batch = {
                let mut sharing = self.sharing();
                if sharing.publishing || sharing.pending.is_empty() {
                    return;
                }
                sharing.publishing = true;
                std::mem::take(&mut sharing.pending)
            };
            let publishing = Publishing(self);
            if let Some(link) = self.link() {
                for commands in batch.chunks(SHARE_BATCH) {
                    let message = ReplicaBatchOut {
                        origin: &self.inner.replica_id,
                        commands,
                    };
                    self.to_replicas(&link, &protocol::encode(&message), Some(COMMANDS_KIND))
                        .await;
                }
            }
            drop(publishing);
        }
    }

    /// Waits (up to `within`) until no command change is waiting to be shared.
    pub(crate) async fn shared(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            {
                let sharing = self.sharing();
                if !sharing.publishing && sharing.pending.is_empty() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn sharing(&self) -> std::sync::MutexGuard<'_, Sharing> {
        self.inner
            .sharing
            .lock()
            .expect("no code panics while holding the sharing lock")
    }

    /// Tells the other replicas that this one is here (they then share with it).
    pub(crate) async fn announce(&self) {
        if let Some(link) = self.link() {
            self.to_replicas(&link, b"", Some(REPLICA_KIND)).await;
        }
    }

    /// Tells the other replicas that this one is stopping (they stop sharing with it).
    pub(crate) async fn say_goodbye(&self) {
        if let Some(link) = self.link() {
            self.to_replicas(&link, b"", Some(REPLICA_GONE_KIND)).await;
        }
    }

    /// Whether another replica was heard from on `tether.events` lately (and did not
    /// say goodbye since).
    pub(crate) fn others_present(&self) -> bool {
        let now = now_ms();
        self.others().values().any(|other| other.present(now))
    }

    /// Notes that replica `id` was heard from now, and the queue it takes requests on
    /// (its events queue) if it said; whether it is new (or was gone).
    pub(crate) fn heard_from(&self, id: &str, queue: Option<String>) -> bool {
        let now = now_ms();
        let mut others = self.others();
        // Those not heard from for long are forgotten (the map stays as small as the
        // set of live replicas).
        others.retain(|_, other| {
            now.saturating_sub(other.heard_ms) <= duration_ms(OTHERS_GONE_AFTER)
        });
        let known = others.get(id);
        let new = known.is_none_or(|other| other.gone);
        let queue = queue.or_else(|| known.and_then(|other| other.queue.clone()));
        others.insert(
            id.to_owned(),
            Other {
                heard_ms: now,
                queue,
                gone: false,
            },
        );
        new
    }

    /// Replica `id` said goodbye: nothing is shared with it any more, and its commands
    /// are orphans (see [`Hub::owner`]) until it is heard from again.
    pub(crate) fn gone(&self, id: &str) {
        let now = now_ms();
        self.others()
            .entry(id.to_owned())
            .and_modify(|other| {
                other.gone = true;
                other.heard_ms = now;
            })
            .or_insert(Other {
                heard_ms: now,
                queue: None,
                gone: true,
            });
    }

    /// What this replica knows of replica `id`, the owner of a command it was asked to
    /// cancel.
    pub(crate) fn owner(&self, id: &str) -> Owner {
        let now = now_ms();
        if id == self.inner.replica_id {
            // Ours, yet not in memory: lost track of (the log could not be read when
            // this replica resumed). Nobody is waiting for its answer.
            return Owner::Gone;
        }
        match self.others().get(id) {
            Some(other) if other.gone => return Owner::Gone,
            Some(other) if other.present(now) => return Owner::Present(other.queue.clone()),
            _ => {}
        }
        // Silent: gone, if this replica has been connected long enough to have heard
        // it announce itself; else it may just not have been heard from yet.
        if self
            .connected_for()
            .is_some_and(|connected| connected > OTHERS_GONE_AFTER)
        {
            Owner::Gone
        } else {
            Owner::Unsure
        }
    }

    fn others(&self) -> std::sync::MutexGuard<'_, HashMap<String, Other>> {
        self.inner
            .others
            .lock()
            .expect("no code panics while holding the replicas lock")
    }

    /// Publishes `body` on `tether.events`, of AMQP type `kind` (none: a command change).
    async fn to_replicas(&self, link: &crate::link::Link, body: &[u8], kind: Option<&str>) {
        // The origin in a property too, so replicas skip their own without decoding;
        // and where this replica takes requests (a cancel forwarded to it).
        let mut properties = link
            .properties()
            .with_app_id(self.inner.replica_id.as_str().into())
            .with_reply_to(link.events_queue.as_str().into());
        if let Some(kind) = kind {
            properties = properties.with_type(kind.into());
        }
        if let Err(error) = link
            .channel
            .basic_publish(
                names::EVENTS_EXCHANGE.into(),
                "".into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
        {
            tracing::debug!("cannot share an event with other replicas: {error}");
        }
    }

    fn end_command(
        &self,
        id: &CommandId,
        status: CommandStatus,
        why: &str,
        now_ms: u64,
    ) -> Vec<CommandView> {
        let mut state = self.state();
        let ended: Vec<_> = state
            .commands
            .advance(id, status, now_ms, |v| v.error = Some(why.to_owned()))
            .ok()
            .into_iter()
            .collect();
        self.broadcast_commands(&state, &ended);
        ended
    }

    /// `command` came back unroutable: the device's session is gone. The command ends as
    /// offline now; the device is offline, and so, after a grace for answers already
    /// on their way, is every other command pending on that session.
    fn device_gone(
        &self,
        command: &CommandId,
        device: &DeviceId,
        session_id: &str,
        now_ms: u64,
    ) -> Vec<CommandView> {
        let why = "the device is offline: its inbox is gone";
        let mut state = self.state();
        if let Some(view) = state.registry.unroutable(device, session_id, now_ms) {
            self.broadcast(&[LiveEvent::DeviceUpdated { device: view }]);
        }
        let ended: Vec<_> = state
            .commands
            .advance(command, CommandStatus::Offline, now_ms, |v| {
                v.error = Some(why.to_owned())
            })
            .ok()
            .into_iter()
            .collect();
        if state.commands.device_gone(
            device,
            session_id,
            why,
            Departure::Lost,
            Instant::now() + OFFLINE_GRACE,
        ) > 0
        {
            self.inner.timer.notify_one();
        }
        self.broadcast_commands(&state, &ended);
        ended
    }
}
