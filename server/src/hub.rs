//! The hub: the server's bridge to the broker, and the only server code that speaks AMQP.
//!
//! It keeps the [`registry`] of devices from their presence messages, sends commands to
//! device inboxes as AMQP RPC (mandatory, with an expiration, the replica's reply queue
//! and the command id as correlation id, under publisher confirms), follows each
//! command through its statuses in [`commands`], and tells every listener what changed
//! as [`LiveEvent`]s. A pending command is an entry in a map and a deadline in a sorted
//! set, watched by one timer task; no task or thread waits on it.
//!
//! Topology (see DESIGN.md): devices publish presence to `tether.presence`; this replica
//! reads it through its own exclusive queue bound to `presence.#`, reads replies from
//! its own exclusive reply queue, and shares command updates with other replicas over
//! the `tether.events` fanout exchange. Malformed or foreign messages are counted in
//! [`Stats`] and dropped; consumers never ack-loop (they consume with auto-ack).

mod commands;
mod flood;
mod recorder;
mod registry;

pub use self::recorder::{
    QUEUE_MAX_BYTES, QUEUE_MAX_LENGTH, Recorder, RecorderConfig, RecorderSnapshot, RecorderStats,
    Rejected, Stop, declare_queue as declare_store_queue,
};

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    ExchangeKind,
    message::Delivery,
    options::{
        BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
        QueueBindOptions, QueueDeclareOptions,
    },
    types::FieldTable,
};
use protocol::{
    ArgumentError, CancelRequest, CommandId, CommandRequest, CommandStatus, DeviceId,
    DeviceMessage, MetricSpec, ServerMessage, UnwatchRequest, WatchRequest,
    api::{CommandView, DeviceView, Latest, LiveEvent, Reading, SendCommand, timeouts},
    names::{self, PresenceKind},
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast, oneshot};

use self::{
    commands::Commands,
    flood::{Admission, FloodGate, MAX_READINGS_PER_SECOND},
    registry::Registry,
};
use crate::{redact, store::Store};

/// How the hub reaches the broker, and where it stores readings.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub amqp_url: String,
    /// A command's deadline when the caller gives none.
    pub default_timeout: Duration,
    /// Where readings are stored; `None` keeps only the live view.
    pub store: Option<Store>,
    /// How many [`Recorder`]s this replica runs on the shared storage queue.
    pub recorders: usize,
    /// The storage queue: [`names::STORE_QUEUE`] but in tests, and whether it expires.
    pub store_queue: String,
    pub store_queue_expires: Option<Duration>,
    /// How often a watched device is asked to report (it keeps to what it announced).
    pub watch_interval: Duration,
    /// How long one watch lease lasts; renewed every third of it while viewers stay.
    pub watch_lease: Duration,
}

impl HubConfig {
    /// Defaults: 10 s command timeout, no storage.
    pub fn new(amqp_url: impl Into<String>) -> Self {
        Self {
            amqp_url: amqp_url.into(),
            default_timeout: Duration::from_millis(timeouts::DEFAULT_MS),
            store: None,
            recorders: 1,
            store_queue: names::STORE_QUEUE.to_owned(),
            store_queue_expires: None,
            watch_interval: Duration::from_secs(1),
            watch_lease: Duration::from_secs(30),
        }
    }
}

impl HubConfig {
    /// How this replica's recorders work.
    fn recorder_config(&self) -> RecorderConfig {
        RecorderConfig {
            queue: self.store_queue.clone(),
            expires: self.store_queue_expires,
            ..RecorderConfig::new(self.amqp_url.clone())
        }
    }
}

/// What the hub knows of a device's metric.
#[derive(Debug, Clone, PartialEq)]
pub enum Known {
    UnknownDevice,
    UnknownMetric,
    Metric(MetricSpec),
}

/// Why a command was not sent. Nothing was sent to the device in any of these cases.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SendError {
    #[error("no device \"{0}\" has ever connected")]
    UnknownDevice(String),
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
}

/// Why a command was not cancelled.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CancelError {
    #[error("no command \"{0}\"")]
    UnknownCommand(CommandId),
    #[error("command \"{}\" has already ended as {}", .0.id, .0.status)]
    AlreadyEnded(Box<CommandView>),
    #[error("command \"{0}\" was sent by another server replica; cancel it there")]
    NotOurs(CommandId),
}

/// Counts of messages the hub dropped, by why.
#[derive(Debug, Default)]
pub struct Stats {
    /// Bodies that were not a message of this protocol version.
    pub malformed: AtomicU64,
    /// Well-formed messages on a queue where they do not belong.
    pub foreign: AtomicU64,
    /// Messages from a device session that a newer one replaced, or from an unknown device.
    pub stale: AtomicU64,
    /// Messages about commands that had already ended, or that we never sent.
    pub late: AtomicU64,
    /// Commands that came back unroutable: the device's inbox was gone.
    pub returned: AtomicU64,
    /// Readings passed on to listeners.
    pub readings_accepted: AtomicU64,
    /// Readings of a metric the device did not announce.
    pub readings_unknown_metric: AtomicU64,
    /// Readings outside the announced range (or not finite).
    pub readings_out_of_range: AtomicU64,
    /// Readings beyond a device's rate limit.
    pub readings_flood: AtomicU64,
    /// Readings whose value is not a number.
    pub readings_wrong_type: AtomicU64,
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct StatsSnapshot {
    pub malformed: u64,
    pub foreign: u64,
    pub stale: u64,
    pub late: u64,
    pub returned: u64,
    pub pending_commands: u64,
    pub readings_accepted: u64,
    pub readings_unknown_metric: u64,
    pub readings_out_of_range: u64,
    pub readings_flood: u64,
    pub readings_wrong_type: u64,
    /// What this replica's recorders did.
    pub recorders: RecorderSnapshot,
}

/// The hub; cheap to clone, shared by every request handler.
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: HubConfig,
    /// Identifies this replica's events on `tether.events`, so it skips its own.
    replica_id: String,
    state: Mutex<State>,
    /// Live events for this replica's browsers. Sent while `state` is locked, so a
    /// snapshot taken under the same lock is followed by exactly the later events.
    events: broadcast::Sender<LiveEvent>,
    /// The broker link, while connected.
    link: Mutex<Option<Link>>,
    /// Callers of [`Hub::wait`], by command, told when it ends. Locked after `state`.
    waiters: Mutex<HashMap<CommandId, Vec<oneshot::Sender<CommandView>>>>,
    /// Wakes the timer when an earlier deadline arrives.
    timer: Notify,
    stats: Stats,
    recorder_stats: Arc<RecorderStats>,
}

#[derive(Debug, Default)]
struct State {
    registry: Registry,
    commands: Commands,
    /// The live path's rate limit, by the second readings arrive in.
    flood: FloodGate,
    /// How many of this replica's viewers watch each device.
    watched: HashMap<DeviceId, usize>,
}

/// Held while someone watches a device through this replica: the device reports faster
/// until the last of these is dropped (see [`Hub::watch`]).
#[derive(Debug)]
pub struct Watching {
    hub: Hub,
    device: DeviceId,
}

impl Drop for Watching {
    fn drop(&mut self) {
        let last = {
            let mut state = self.hub.state();
            match state.watched.get_mut(&self.device) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                _ => state.watched.remove(&self.device).is_some(),
            }
        };
        if last {
            let unwatch = ServerMessage::Unwatch(UnwatchRequest {
                replica: self.hub.inner.replica_id.clone(),
            });
            self.hub.tell(&self.device, unwatch);
        }
    }
}

/// A connected broker link: the publishing channel (in confirm mode) and the queue that
/// devices send this replica's replies to.
#[derive(Debug, Clone)]
struct Link {
    channel: Channel,
    reply_queue: String,
}

impl Link {
    /// Publishes to a device's inbox through the default exchange, without waiting for
    /// the broker's confirm.
    async fn to_inbox(
        &self,
        inbox: &str,
        message: &ServerMessage,
        properties: BasicProperties,
    ) -> lapin::Result<()> {
        self.channel
            .basic_publish(
                "".into(),
                inbox.into(),
                BasicPublishOptions::default(),
                &protocol::encode(message),
                properties,
            )
            .await
            .map(drop)
    }
}

/// The consumers of one connection.
struct Consumers {
    presence: Consumer,
    replies: Consumer,
    events: Consumer,
    telemetry: Consumer,
}

/// A command update as shared between replicas on `tether.events`.
#[derive(Debug, Serialize, Deserialize)]
struct ReplicaEvent {
    origin: String,
    command: CommandView,
}

/// How long after a device's session ends its pending commands wait for answers that
/// were already on their way (they travel on another queue than the goodbye).
const OFFLINE_GRACE: Duration = Duration::from_millis(300);
/// How often device heartbeats are checked.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// Live events a slow browser may fall behind by before it must resync.
const EVENT_BUFFER: usize = 4096;

impl Hub {
    /// Connects to the broker, declares the topology and starts consuming. If the
    /// broker cannot be reached now, the hub starts disconnected (sends are refused as
    /// `BrokerUnavailable`, `is_connected` is false) and keeps trying in the
    /// background, as it does whenever the link drops. Everything stops when
    /// `shutdown` resolves.
    pub async fn start(
        config: HubConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        let first = match connect(&config).await {
            Ok(connected) => Some(connected),
            Err(error) => {
                tracing::error!(
                    "{error:#}; retrying in the background (start the broker, or set TETHER_AMQP_URL)"
                );
                None
            }
        };
        let hub = Self {
            inner: Arc::new(Inner {
                config,
                replica_id: format!("{:016x}", fastrand::u64(..)),
                state: Mutex::default(),
                events: broadcast::channel(EVENT_BUFFER).0,
                link: Mutex::new(first.as_ref().map(|(_, link, _)| link.clone())),
                waiters: Mutex::default(),
                timer: Notify::new(),
                stats: Stats::default(),
                recorder_stats: Arc::default(),
            }),
        };
        if let Some(store) = &hub.inner.config.store {
            for _ in 0..hub.inner.config.recorders {
                let recorder = Recorder::new(
                    hub.inner.config.recorder_config(),
                    store.clone(),
                    Some(hub.clone()),
                    hub.inner.recorder_stats.clone(),
                );
                tokio::spawn(recorder.run(std::future::pending()));
            }
        }
        let (link_hub, timer_hub) = (hub.clone(), hub.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = link_hub.maintain_link(first.map(|(connection, _, consumers)| (connection, consumers))) => {}
                () = timer_hub.run_timer() => {}
                () = shutdown => {}
            }
        });
        hub
    }

    /// Every device ever seen, sorted by id.
    pub fn devices(&self) -> Vec<DeviceView> {
        self.state().registry.views()
    }

    pub fn device(&self, id: &DeviceId) -> Option<DeviceView> {
        self.state().registry.get(id).map(|d| d.view.clone())
    }

    pub fn command(&self, id: &CommandId) -> Option<CommandView> {
        self.state().commands.get(id)
    }

    /// The most recent commands, newest first, of one device or of all.
    pub fn recent_commands(&self, device: Option<&DeviceId>, limit: usize) -> Vec<CommandView> {
        self.state().commands.recent(device, limit)
    }

    /// Whether the broker link is up.
    pub fn is_connected(&self) -> bool {
        self.link().is_some()
    }

    pub fn stats(&self) -> StatsSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let stats = &self.inner.stats;
        StatsSnapshot {
            malformed: load(&stats.malformed),
            foreign: load(&stats.foreign),
            stale: load(&stats.stale),
            late: load(&stats.late),
            returned: load(&stats.returned),
            pending_commands: self.state().commands.pending() as u64,
            readings_accepted: load(&stats.readings_accepted),
            readings_unknown_metric: load(&stats.readings_unknown_metric),
            readings_out_of_range: load(&stats.readings_out_of_range),
            readings_flood: load(&stats.readings_flood),
            readings_wrong_type: load(&stats.readings_wrong_type),
            recorders: self.inner.recorder_stats.snapshot(),
        }
    }

    /// Someone watches `device`: while the returned guard lives, this replica holds a
    /// lease on the device's fast pace (renewed every third of the lease), so its
    /// readings come every `watch_interval` instead of every few seconds. Devices that
    /// announced no `reporting` are left alone.
    pub fn watch(&self, device: &DeviceId) -> Watching {
        let first = {
            let mut state = self.state();
            let count = state.watched.entry(device.clone()).or_insert(0);
            *count += 1;
            *count == 1
        };
        if first {
            self.tell_watch(device);
        }
        Watching {
            hub: self.clone(),
            device: device.clone(),
        }
    }

    /// How many devices this replica's viewers watch.
    pub fn watched_devices(&self) -> usize {
        self.state().watched.len()
    }

    fn tell_watch(&self, device: &DeviceId) {
        let config = &self.inner.config;
        let watch = ServerMessage::Watch(WatchRequest {
            replica: self.inner.replica_id.clone(),
            interval_ms: duration_ms(config.watch_interval),
            lease_ms: duration_ms(config.watch_lease),
        });
        self.tell(device, watch);
    }

    /// Sends `message` to an online device's inbox if it takes pace requests, without
    /// waiting: a lost one is made good by the next renewal, or by the lease lapsing.
    fn tell(&self, device: &DeviceId, message: ServerMessage) {
        let Some(link) = self.link() else { return };
        let inbox = self
            .state()
            .registry
            .get(device)
            .filter(|d| d.view.online && d.view.capabilities.reporting.is_some())
            .map(|d| d.inbox.clone());
        let Some(inbox) = inbox else { return };
        // A guard dropped while the runtime shuts down has nowhere to send from.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let properties =
                BasicProperties::default().with_content_type(names::CONTENT_TYPE.into());
            let published = link.to_inbox(&inbox, &message, properties).await;
            if let Err(error) = published {
                tracing::debug!("cannot send a pace request: {error}");
            }
        });
    }

    /// Where readings are stored, if anywhere.
    pub fn store(&self) -> Option<&Store> {
        self.inner.config.store.as_ref()
    }

    /// What `device` announced about `metric`.
    pub fn metric(&self, device: &DeviceId, metric: &str) -> Known {
        match self.state().registry.get(device) {
            None => Known::UnknownDevice,
            Some(known) => known
                .view
                .capabilities
                .metrics
                .iter()
                .find(|m| m.name == metric)
                .map_or(Known::UnknownMetric, |spec| Known::Metric(spec.clone())),
        }
    }

    /// A snapshot of devices and recent commands, and the events that follow it.
    pub fn subscribe(&self, recent: usize) -> (LiveEvent, broadcast::Receiver<LiveEvent>) {
        let state = self.state();
        let receiver = self.inner.events.subscribe();
        let snapshot = LiveEvent::Snapshot {
            devices: state.registry.views(),
            commands: state.commands.recent(None, recent),
        };
        (snapshot, receiver)
    }

    /// Validates a command against what the device announced, sends it, and returns it
    /// once the broker has confirmed it: `sent`, or `offline` if the device's inbox is
    /// gone, or `failed` if the broker refused it.
    pub async fn send(
        &self,
        device_id: &str,
        request: SendCommand,
    ) -> Result<CommandView, SendError> {
        let timeout_ms = request
            .timeout_ms
            .unwrap_or(duration_ms(self.inner.config.default_timeout));
        if !(timeouts::MIN_MS..=timeouts::MAX_MS).contains(&timeout_ms) {
            return Err(SendError::InvalidTimeout(timeout_ms));
        }
        let device_id = DeviceId::new(device_id).map_err(|e| SendError::UnknownDevice(e.0))?;
        let link = self.link().ok_or(SendError::BrokerUnavailable)?;
        let now_ms = now_ms();
        let (view, inbox, session_id) = {
            let mut state = self.state();
            let device = state
                .registry
                .get(&device_id)
                .ok_or_else(|| SendError::UnknownDevice(device_id.to_string()))?;
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
            };
            let (inbox, session_id) = (device.inbox.clone(), device.session_id.clone());
            let deadline = Instant::now() + Duration::from_millis(timeout_ms);
            state
                .commands
                .accept(view.clone(), session_id.clone(), inbox.clone(), deadline);
            self.broadcast(&[LiveEvent::CommandUpdated {
                command: view.clone(),
            }]);
            (view, inbox, session_id)
        };
        self.inner.timer.notify_one();
        self.share(std::slice::from_ref(&view)).await;

        let request = ServerMessage::Command(CommandRequest {
            command_id: view.id.clone(),
            name: view.name.clone(),
            args: view.args.clone(),
            timeout_ms,
        });
        let properties = BasicProperties::default()
            .with_content_type(names::CONTENT_TYPE.into())
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
        let now_ms = self::now_ms();
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
                self.broadcast_commands(&sent);
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
        Ok(self.command(&view.id).unwrap_or(view))
    }

    /// Cancels a pending command: it ends as `cancelled` now, and the device is told to
    /// stop if it is still working on it.
    pub async fn cancel(&self, id: &CommandId) -> Result<CommandView, CancelError> {
        let (view, inbox) = {
            let mut state = self.state();
            let current = state
                .commands
                .get(id)
                .ok_or_else(|| CancelError::UnknownCommand(id.clone()))?;
            if current.status.is_terminal() {
                return Err(CancelError::AlreadyEnded(Box::new(current)));
            }
            let inbox = state
                .commands
                .inbox(id)
                .ok_or_else(|| CancelError::NotOurs(id.clone()))?;
            let view = state
                .commands
                .advance(id, CommandStatus::Cancelled, now_ms(), |v| {
                    v.error = Some("cancelled by a user".into())
                })
                .map_err(|_| CancelError::AlreadyEnded(Box::new(current)))?;
            self.broadcast_commands(std::slice::from_ref(&view));
            (view, inbox)
        };
        self.share(std::slice::from_ref(&view)).await;
        if let Some(link) = self.link() {
            let message = ServerMessage::Cancel(CancelRequest {
                command_id: id.clone(),
            });
            let properties = BasicProperties::default()
                .with_content_type(names::CONTENT_TYPE.into())
                .with_reply_to(link.reply_queue.as_str().into())
                .with_correlation_id(id.0.as_str().into());
            // Best effort: the command has ended for everyone already; a device that is
            // gone has nothing to stop.
            let _ = link.to_inbox(&inbox, &message, properties).await;
        }
        Ok(view)
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
        match tokio::time::timeout(max, ended).await {
            Ok(Ok(command)) => Some(command),
            _ => {
                if let Some(waiting) = self.waiters().get_mut(id) {
                    waiting.retain(|notify| !notify.is_closed());
                }
                self.command(id)
            }
        }
    }

    fn waiters(&self) -> MutexGuard<'_, HashMap<CommandId, Vec<oneshot::Sender<CommandView>>>> {
        self.inner
            .waiters
            .lock()
            .expect("no code panics while holding the waiters lock")
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .expect("no code panics while holding the hub's state lock")
    }

    fn link(&self) -> Option<Link> {
        self.inner
            .link
            .lock()
            .expect("no code panics while holding the link lock")
            .clone()
    }

    fn set_link(&self, link: Option<Link>) {
        *self
            .inner
            .link
            .lock()
            .expect("no code panics while holding the link lock") = link;
    }

    /// Sends events to this replica's listeners. Call with the state locked.
    fn broadcast(&self, events: &[LiveEvent]) {
        for event in events {
            // No listener is fine: nobody is watching.
            let _ = self.inner.events.send(event.clone());
        }
    }

    /// Sends command changes to listeners, and ended commands to their waiters. Call
    /// with the state locked.
    fn broadcast_commands(&self, commands: &[CommandView]) {
        for command in commands {
            if command.status.is_terminal()
                && let Some(waiting) = self.waiters().remove(&command.id)
            {
                for notify in waiting {
                    let _ = notify.send(command.clone());
                }
            }
            let _ = self.inner.events.send(LiveEvent::CommandUpdated {
                command: command.clone(),
            });
        }
    }

    /// Tells the other replicas about command changes. Best effort: if the broker is
    /// down, they learn nothing, and our own listeners already know.
    async fn share(&self, commands: &[CommandView]) {
        let Some(link) = self.link() else { return };
        for command in commands {
            let event = ReplicaEvent {
                origin: self.inner.replica_id.clone(),
                command: command.clone(),
            };
            // The origin in a property too, so replicas skip their own without decoding.
            let properties = BasicProperties::default()
                .with_content_type(names::CONTENT_TYPE.into())
                .with_app_id(self.inner.replica_id.as_str().into());
            if let Err(error) = link
                .channel
                .basic_publish(
                    names::EVENTS_EXCHANGE.into(),
                    "".into(),
                    BasicPublishOptions::default(),
                    &protocol::encode(&event),
                    properties,
                )
                .await
            {
                tracing::debug!("cannot share an event with other replicas: {error}");
            }
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
        self.broadcast_commands(&ended);
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
        if state
            .commands
            .device_gone(device, session_id, why, Instant::now() + OFFLINE_GRACE)
            > 0
        {
            self.inner.timer.notify_one();
        }
        self.broadcast_commands(&ended);
        ended
    }

    /// Serves the broker connection; when it fails, fails what was pending and
    /// reconnects with backoff, forever. Starts by connecting if `first` is `None`.
    async fn maintain_link(&self, first: Option<(Connection, Consumers)>) {
        let mut current = first;
        loop {
            let (connection, mut consumers) = match current.take() {
                Some(connected) => connected,
                None => self.reconnect().await,
            };
            let error = self.consume(&mut consumers).await;
            tracing::warn!("lost the broker connection: {error:#}");
            self.set_link(None);
            let _ = connection.close(200, "reconnecting".into()).await;
            let mut state = self.state();
            let ended = state.commands.end_all(
                CommandStatus::Failed,
                "the server lost its broker connection; the answer cannot arrive",
                now_ms(),
            );
            self.broadcast_commands(&ended);
        }
    }

    /// Connects again, with exponential backoff up to 15 s between attempts.
    async fn reconnect(&self) -> (Connection, Consumers) {
        let mut failures: u32 = 0;
        loop {
            failures = failures.saturating_add(1);
            let pause =
                Duration::from_millis(250u64.saturating_mul(1 << failures.min(6)).min(15_000));
            tokio::time::sleep(pause).await;
            match connect(&self.inner.config).await {
                Ok((connection, link, consumers)) => {
                    tracing::info!("connected to the broker");
                    self.set_link(Some(link));
                    return (connection, consumers);
                }
                Err(error) => {
                    tracing::warn!("cannot reach the broker: {error:#}; retrying in {pause:?}")
                }
            }
        }
    }

    /// Handles deliveries until a consumer fails; returns why.
    async fn consume(&self, consumers: &mut Consumers) -> anyhow::Error {
        loop {
            let delivery = tokio::select! {
                d = consumers.presence.next() => d.map(|d| d.map(|d| (Queue::Presence, d))),
                d = consumers.replies.next() => d.map(|d| d.map(|d| (Queue::Replies, d))),
                d = consumers.events.next() => d.map(|d| d.map(|d| (Queue::Events, d))),
                d = consumers.telemetry.next() => d.map(|d| d.map(|d| (Queue::Telemetry, d))),
            };
            match delivery {
                Some(Ok((Queue::Presence, delivery))) => self.on_presence(&delivery),
                Some(Ok((Queue::Replies, delivery))) => {
                    let changed = self.on_reply(&delivery);
                    self.share(&changed).await;
                }
                Some(Ok((Queue::Events, delivery))) => self.on_replica_event(&delivery),
                Some(Ok((Queue::Telemetry, delivery))) => self.on_telemetry(&delivery),
                Some(Err(error)) => return anyhow::Error::new(error).context("a consumer failed"),
                None => return anyhow::anyhow!("the broker cancelled a consumer"),
            }
        }
    }

    fn on_presence(&self, delivery: &Delivery) {
        let message = match protocol::decode::<DeviceMessage>(&delivery.data) {
            Ok(message) => message,
            Err(error) => {
                return self.dropped(
                    &self.inner.stats.malformed,
                    &format!("presence message: {error}"),
                );
            }
        };
        let routed = names::parse_presence_key(delivery.routing_key.as_str());
        let (now, now_ms) = (Instant::now(), now_ms());
        let mut state = self.state();
        let mut events = Vec::new();
        // A watched device that (re)connected gets its lease on the new inbox at once.
        let mut rewatch = None;
        match (message, routed) {
            (DeviceMessage::Hello(hello), Some((device, PresenceKind::Hello)))
                if device == hello.device_id =>
            {
                if hello.heartbeat_ms < 100 || hello.inbox.is_empty() {
                    drop(state);
                    return self.dropped(
                        &self.inner.stats.malformed,
                        "hello without an inbox or with a heartbeat under 100 ms",
                    );
                }
                let (view, replaced) = state.registry.hello(hello, now, now_ms);
                if state.watched.contains_key(&device) {
                    rewatch = Some(device.clone());
                }
                if let Some(old) = replaced {
                    let why =
                        "the device reconnected with a new session; the old one cannot answer";
                    if state
                        .commands
                        .device_gone(&device, &old, why, now + OFFLINE_GRACE)
                        > 0
                    {
                        self.inner.timer.notify_one();
                    }
                }
                events.push(LiveEvent::DeviceUpdated { device: view });
            }
            (DeviceMessage::Heartbeat(beat), Some((device, PresenceKind::Heartbeat)))
                if device == beat.device_id =>
            {
                match state.registry.heartbeat(&beat, now, now_ms) {
                    Ok(back) => {
                        events.extend(back.map(|device| LiveEvent::DeviceUpdated { device }))
                    }
                    Err(_) => {
                        self.inner.stats.stale.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            (DeviceMessage::Bye(bye), Some((device, PresenceKind::Bye)))
                if device == bye.device_id =>
            {
                match state.registry.bye(&bye, now_ms) {
                    Ok(gone) => {
                        events.extend(gone.map(|device| LiveEvent::DeviceUpdated { device }));
                        let why = if bye.reason.is_empty() {
                            "the device went offline".to_owned()
                        } else {
                            format!("the device went offline ({})", bye.reason)
                        };
                        if state.commands.device_gone(
                            &device,
                            &bye.session_id,
                            &why,
                            now + OFFLINE_GRACE,
                        ) > 0
                        {
                            self.inner.timer.notify_one();
                        }
                    }
                    Err(_) => {
                        self.inner.stats.stale.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            (message, _) => {
                drop(state);
                return self.dropped(
                    &self.inner.stats.foreign,
                    &format!("{message:?} under routing key {}", delivery.routing_key),
                );
            }
        }
        self.broadcast(&events);
        drop(state);
        if let Some(device) = rewatch {
            self.tell_watch(&device);
        }
    }

    fn on_reply(&self, delivery: &Delivery) -> Vec<CommandView> {
        let message = match protocol::decode::<DeviceMessage>(&delivery.data) {
            Ok(message) => message,
            Err(error) => {
                self.dropped(&self.inner.stats.malformed, &format!("reply: {error}"));
                return Vec::new();
            }
        };
        let mut state = self.state();
        match state.commands.apply_device_message(&message, now_ms()) {
            Ok(view) => {
                self.broadcast_commands(std::slice::from_ref(&view));
                vec![view]
            }
            Err(commands::Ignored::NotAboutACommand) => {
                drop(state);
                self.dropped(
                    &self.inner.stats.foreign,
                    "a non-command message on the reply queue",
                );
                Vec::new()
            }
            Err(commands::Ignored::StaleSession) => {
                drop(state);
                self.dropped(&self.inner.stats.stale, "a reply from an old session");
                Vec::new()
            }
            Err(why) => {
                drop(state);
                self.dropped(
                    &self.inner.stats.late,
                    &format!("a reply about an ended or unknown command ({why:?})"),
                );
                Vec::new()
            }
        }
    }

    /// A reading: checked against what its device announced, rate-limited per device,
    /// then passed to listeners. Anything else is counted and dropped.
    fn on_telemetry(&self, delivery: &Delivery) {
        let sample = match protocol::decode::<DeviceMessage>(&delivery.data) {
            Ok(DeviceMessage::Telemetry(sample)) => sample,
            Ok(other) => {
                return self.dropped(
                    &self.inner.stats.foreign,
                    &format!("{other:?} on the telemetry exchange"),
                );
            }
            Err(error) if is_wrong_type(&delivery.data) => {
                return self.dropped(
                    &self.inner.stats.readings_wrong_type,
                    &format!("reading: {error}"),
                );
            }
            Err(error) => {
                return self.dropped(&self.inner.stats.malformed, &format!("reading: {error}"));
            }
        };
        let routed = names::telemetry_key(&sample.device_id, &sample.metric);
        if delivery.routing_key.as_str() != routed {
            return self.dropped(
                &self.inner.stats.foreign,
                &format!("a reading under routing key {}", delivery.routing_key),
            );
        }
        let stats = &self.inner.stats;
        let mut state = self.state();
        let State {
            registry, flood, ..
        } = &mut *state;
        let Some(device) = registry
            .get_mut(&sample.device_id)
            .filter(|d| d.session_id == sample.session_id)
        else {
            // Counted, not logged: every reading of a device in this state would log,
            // as heartbeats from old sessions are not logged either.
            stats.stale.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(spec) = device
            .view
            .capabilities
            .metrics
            .iter()
            .find(|m| m.name == sample.metric)
        else {
            drop(state);
            return self.dropped(
                &stats.readings_unknown_metric,
                &format!("a reading of unannounced metric {:?}", sample.metric),
            );
        };
        if !spec.admits(sample.value) {
            drop(state);
            return self.dropped(
                &stats.readings_out_of_range,
                &format!(
                    "{} = {} is outside its announced range",
                    sample.metric, sample.value
                ),
            );
        }
        let arrived_ms = i64::try_from(now_ms()).unwrap_or(i64::MAX);
        if let Admission::Refused { first } = flood.admit(&sample.device_id, arrived_ms) {
            stats.readings_flood.fetch_add(1, Ordering::Relaxed);
            if first {
                tracing::warn!(device = %sample.device_id, "dropping readings beyond {MAX_READINGS_PER_SECOND}/s");
            }
            return;
        }
        stats.readings_accepted.fetch_add(1, Ordering::Relaxed);
        let latest = Latest {
            value: sample.value,
            ts_ms: sample.ts_ms,
        };
        device
            .view
            .latest
            .entry(sample.metric.clone())
            .and_modify(|known| {
                if latest.ts_ms >= known.ts_ms {
                    *known = latest;
                }
            })
            .or_insert(latest);
        let reading = Reading {
            device_id: sample.device_id,
            metric: sample.metric,
            value: sample.value,
            ts_ms: sample.ts_ms,
        };
        self.broadcast(&[LiveEvent::Telemetry { reading }]);
    }

    fn on_replica_event(&self, delivery: &Delivery) {
        let own = delivery.properties.app_id().as_ref().map(|id| id.as_str());
        if own == Some(self.inner.replica_id.as_str()) {
            return;
        }
        let event = match protocol::decode::<ReplicaEvent>(&delivery.data) {
            Ok(event) => event,
            Err(error) => {
                return self.dropped(
                    &self.inner.stats.malformed,
                    &format!("replica event: {error}"),
                );
            }
        };
        if event.origin == self.inner.replica_id {
            return;
        }
        let mut state = self.state();
        state.commands.mirror(event.command.clone());
        self.broadcast_commands(&[event.command]);
    }

    fn dropped(&self, counter: &AtomicU64, what: &str) {
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("dropped {what}");
    }

    /// Times out commands at their deadlines and devices whose heartbeats stopped.
    async fn run_timer(&self) {
        let renew_every = self.inner.config.watch_lease / 3;
        let mut renewed = Instant::now();
        loop {
            let next_deadline = self.state().commands.next_deadline();
            let sweep = Instant::now() + SWEEP_INTERVAL;
            let wake_at = next_deadline.map_or(sweep, |deadline| deadline.min(sweep));
            tokio::select! {
                () = tokio::time::sleep_until(wake_at.into()) => {}
                () = self.inner.timer.notified() => continue,
            }
            let (now, now_ms) = (Instant::now(), now_ms());
            if now.duration_since(renewed) >= renew_every {
                renewed = now;
                let watched: Vec<DeviceId> = self.state().watched.keys().cloned().collect();
                for device in &watched {
                    self.tell_watch(device);
                }
            }
            let changed = {
                let mut state = self.state();
                for (device, session_id) in state.registry.expire(now, now_ms) {
                    // Silent for several heartbeats: no grace is needed.
                    let why = "the device stopped sending heartbeats";
                    state
                        .commands
                        .device_gone(&device.id, &session_id, why, now);
                    self.broadcast(&[LiveEvent::DeviceUpdated { device }]);
                }
                let changed = state.commands.expire(now, now_ms);
                self.broadcast_commands(&changed);
                changed
            };
            self.share(&changed).await;
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Queue {
    Presence,
    Replies,
    Events,
    Telemetry,
}

/// Declares Tether's exchanges (durable; declaring again is harmless).
async fn declare_exchanges(channel: &Channel) -> anyhow::Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for (exchange, kind) in [
        (names::PRESENCE_EXCHANGE, ExchangeKind::Topic),
        (names::TELEMETRY_EXCHANGE, ExchangeKind::Topic),
        (names::EVENTS_EXCHANGE, ExchangeKind::Fanout),
        (names::DISCOVER_EXCHANGE, ExchangeKind::Fanout),
    ] {
        channel
            .exchange_declare(exchange.into(), kind, durable, FieldTable::default())
            .await
            .with_context(|| format!("cannot declare exchange {exchange}"))?;
    }
    Ok(())
}

/// Connects and declares this replica's topology.
async fn connect(config: &HubConfig) -> anyhow::Result<(Connection, Link, Consumers)> {
    let amqp_url = config.amqp_url.as_str();
    let connection = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .with_context(|| format!("cannot connect to the broker at {}", redact(amqp_url)))?;
    let channel = connection
        .create_channel()
        .await
        .context("cannot open a channel")?;
    declare_exchanges(&channel).await?;
    if config.store.is_some() {
        // On a channel of its own: a refusal (a queue of that name declared with other
        // arguments) closes the channel it came on, and must not cost the hub its link.
        // The recorders keep trying, and saying why.
        let declared = async {
            let own = connection.create_channel().await?;
            declare_store_queue(&own, &config.recorder_config()).await?;
            own.close(200, "declared".into()).await?;
            anyhow::Ok(())
        };
        if let Err(error) = declared.await {
            tracing::error!("{error:#}; readings are not being stored");
        }
    }
    let private = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let queue = async |exchange: Option<(&str, &str)>| -> anyhow::Result<String> {
        let name = channel
            .queue_declare("".into(), private, FieldTable::default())
            .await
            .context("cannot declare a queue")?
            .name()
            .to_string();
        if let Some((exchange, key)) = exchange {
            channel
                .queue_bind(
                    name.as_str().into(),
                    exchange.into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("cannot bind to {exchange}"))?;
        }
        Ok(name)
    };
    let presence_queue = queue(Some((names::PRESENCE_EXCHANGE, names::PRESENCE_ALL))).await?;
    let reply_queue = queue(None).await?;
    let events_queue = queue(Some((names::EVENTS_EXCHANGE, ""))).await?;
    let telemetry_queue = queue(Some((names::TELEMETRY_EXCHANGE, names::TELEMETRY_ALL))).await?;
    // Auto-ack: these queues are private and transient, and a message that cannot be
    // handled is dropped and counted, so nothing could usefully be redelivered.
    let auto_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let consume = async |queue: &str| -> anyhow::Result<Consumer> {
        channel
            .basic_consume(queue.into(), "".into(), auto_ack, FieldTable::default())
            .await
            .with_context(|| format!("cannot consume {queue}"))
    };
    let consumers = Consumers {
        presence: consume(&presence_queue).await?,
        replies: consume(&reply_queue).await?,
        events: consume(&events_queue).await?,
        telemetry: consume(&telemetry_queue).await?,
    };
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("cannot enable publisher confirms")?;
    // Devices that were online before this connection say hello again, so a replica
    // that (re)starts knows the whole fleet at once instead of after each reconnect.
    let announce = protocol::encode(&ServerMessage::Announce(protocol::AnnounceRequest {}));
    channel
        .basic_publish(
            names::DISCOVER_EXCHANGE.into(),
            "".into(),
            BasicPublishOptions::default(),
            &announce,
            BasicProperties::default().with_content_type(names::CONTENT_TYPE.into()),
        )
        .await
        .context("cannot ask devices to announce themselves")?;
    Ok((
        connection,
        Link {
            channel,
            reply_queue,
        },
        consumers,
    ))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, duration_ms)
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Whether a body that did not decode is a reading whose value is not a number.
fn is_wrong_type(data: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(data).is_ok_and(|body| {
        body.get("type").and_then(|t| t.as_str()) == Some("telemetry")
            && body.get("value").is_some_and(|v| !v.is_number())
    })
}
