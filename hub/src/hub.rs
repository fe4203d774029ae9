//! The [`Hub`] itself: its configuration, its shared state, how it starts and stops,
//! and what anyone may read of it. What it does is in the sibling modules: [`link`]
//! (the broker connection), [`intake`] (what devices and replicas publish), [`send`]
//! (commands), [`forward`] (cancels of other replicas' commands), [`watch`] (watch
//! leases), [`timer`] (deadlines and heartbeats) and [`stats`].
//!
//! [`link`]: crate::link
//! [`intake`]: crate::intake
//! [`send`]: crate::send
//! [`forward`]: crate::forward
//! [`watch`]: crate::watch
//! [`timer`]: crate::timer
//! [`stats`]: crate::stats

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, atomic::AtomicU64},
    time::Duration,
};

use common::Shutdown;
use protocol::{
    CommandId, CommandStatus, DeviceId,
    api::{CommandView, DeviceView, LiveEvent, timeouts},
};
use tokio::sync::{Notify, broadcast, oneshot};

use crate::{
    announced::{Announced, Known},
    command_log::{CommandLog, LogWriter},
    commands::{Commands, Departure},
    flood::FloodGate,
    link::Link,
    registry::Registry,
    stats::Stats,
    store_queue::StoreQueue,
};

/// How the hub reaches the broker.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The broker's URL, or several, comma-separated (the nodes of a RabbitMQ
    /// cluster): the hub starts with a random one and moves on to the next whenever one
    /// does not answer or its connection is lost (`common::Brokers`).
    pub amqp_url: String,
    /// A command's deadline when the caller gives none.
    pub default_timeout: Duration,
    /// The storage queue, declared whenever the hub connects so that readings are kept
    /// from the moment a replica with storage is up (its recorders consume it); `None`
    /// when this replica stores nothing.
    pub store_queue: Option<StoreQueue>,
    /// How often a watched device is asked to report (it keeps to what it announced).
    pub watch_interval: Duration,
    /// How long one watch lease lasts; renewed every third of it while viewers stay.
    pub watch_lease: Duration,
    /// Where every command and its changes are logged, so that they outlive this
    /// process; `None` keeps them in memory only (and a stop ends the pending ones).
    pub command_log: Option<CommandLog>,
    /// The type of this replica's durable reply queue (with a resumable command log):
    /// quorum to survive a node of a RabbitMQ cluster. The storage queue has its own
    /// ([`StoreQueue::queue_type`]).
    pub queue_type: crate::store_queue::QueueType,
}

impl HubConfig {
    /// Defaults: 10 s command timeout, no storage queue.
    pub fn new(amqp_url: impl Into<String>) -> Self {
        Self {
            amqp_url: amqp_url.into(),
            default_timeout: Duration::from_millis(timeouts::DEFAULT_MS),
            store_queue: None,
            watch_interval: Duration::from_secs(1),
            watch_lease: Duration::from_secs(30),
            command_log: None,
            queue_type: crate::store_queue::QueueType::Classic,
        }
    }
}

/// The hub; cheap to clone, shared by every request handler.
#[derive(Debug, Clone)]
pub struct Hub {
    pub(crate) inner: Arc<Inner>,
}

/// A live event as every listener gets it: shared rather than copied, and written as
/// JSON at most once however many sockets send it.
#[derive(Debug)]
pub struct SharedEvent {
    event: LiveEvent,
    json: std::sync::OnceLock<String>,
    /// Where the change it tells of stands among the changes made under the state
    /// lock (1, 2, …), which a snapshot may already hold (see [`Subscription`]); 0 for
    /// an event made outside it (a job's progress), which no snapshot holds.
    seq: u64,
}

/// A live event as listeners receive it.
pub type Event = Arc<SharedEvent>;

/// What the hub's broadcast carries: an event, or word that events were dropped before
/// they reached it (the fan-out queue overflowed), so every listener must resync.
#[derive(Debug, Clone)]
enum Fanned {
    Event(Event),
    Dropped(u64),
}

impl SharedEvent {
    pub(crate) fn new(event: LiveEvent) -> Event {
        Self::numbered(event, 0)
    }

    fn numbered(event: LiveEvent, seq: u64) -> Event {
        Arc::new(Self {
            event,
            json: std::sync::OnceLock::new(),
            seq,
        })
    }

    /// The event as JSON, written the first time it is asked for.
    pub fn json(&self) -> &str {
        self.json.get_or_init(|| {
            // Serializing these types cannot fail: strings, numbers and JSON values only.
            serde_json::to_string(&self.event).expect("live events always serialize")
        })
    }
}

impl std::ops::Deref for SharedEvent {
    type Target = LiveEvent;

    fn deref(&self) -> &LiveEvent {
        &self.event
    }
}

/// Live events from the hub, each a copy of its own (a live socket shares them
/// instead: [`Hub::subscribe_to`]).
#[derive(Debug)]
pub struct Events(Subscription);

impl Events {
    pub async fn recv(&mut self) -> Result<LiveEvent, broadcast::error::RecvError> {
        self.0.recv().await.map(|event| event.event.clone())
    }
}

/// The hub's live events from a moment on: those of every change made after it (under
/// the state lock), and every event made outside the lock sent after it.
///
/// Events reach listeners through a task of their own ([`Hub::start`]), not from under
/// the state lock: waking thousands of sockets for each event takes milliseconds, which
/// the hub's lock must not be held for. So a subscriber taken under the lock may still
/// be sent changes from before it (the task had not passed them on yet); it skips
/// those by their number, and a snapshot taken under the same lock is followed by
/// exactly the later changes.
#[derive(Debug)]
pub struct Subscription {
    receiver: broadcast::Receiver<Fanned>,
    /// The number of the last change made before it.
    after: u64,
}

impl Subscription {
    /// The next event; `Lagged` if this listener fell so far behind that events were
    /// lost to it (it must resync), `Closed` once the hub is gone.
    pub async fn recv(&mut self) -> Result<Event, broadcast::error::RecvError> {
        loop {
            match self.receiver.recv().await? {
                Fanned::Event(event) if self.is_new(&event) => return Ok(event),
                Fanned::Event(_) => {}
                Fanned::Dropped(missed) => {
                    return Err(broadcast::error::RecvError::Lagged(missed));
                }
            }
        }
    }

    /// The next event if one is already here, without waiting.
    pub fn try_recv(&mut self) -> Result<Event, broadcast::error::TryRecvError> {
        loop {
            match self.receiver.try_recv()? {
                Fanned::Event(event) if self.is_new(&event) => return Ok(event),
                Fanned::Event(_) => {}
                Fanned::Dropped(missed) => {
                    return Err(broadcast::error::TryRecvError::Lagged(missed));
                }
            }
        }
    }

    /// Whether `event` is not already held by what this subscription started from.
    fn is_new(&self, event: &SharedEvent) -> bool {
        event.seq == 0 || event.seq > self.after
    }
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: HubConfig,
    /// The broker URLs of [`HubConfig::amqp_url`], and which to try next.
    pub(crate) brokers: common::Brokers,
    /// Identifies this replica's events on `tether.events`, so it skips its own.
    pub(crate) replica_id: String,
    state: Mutex<State>,
    /// Live events for this replica's browsers, sent on by the fan-out task in the
    /// order [`Inner::fanout`] was given them (see [`Subscription`]).
    events: broadcast::Sender<Fanned>,
    /// Events on their way to [`Inner::events`]: pushed while `state` is locked,
    /// numbered by [`Inner::changes`], so in the order of the changes they tell of.
    /// Bounded by [`FANOUT_QUEUE`]: what does not fit is counted in
    /// [`Inner::overflowed`] and dropped, and every listener then resyncs.
    fanout: tokio::sync::mpsc::Sender<Event>,
    /// Events dropped because [`Inner::fanout`] was full, not yet told to listeners.
    overflowed: Arc<AtomicU64>,
    /// The number of the last change told to listeners (see [`SharedEvent::seq`]).
    changes: AtomicU64,
    /// The broker link, while connected.
    link: Mutex<Option<Link>>,
    /// Callers of [`Hub::wait`], by command, told when it ends. Locked after `state`.
    waiters: Mutex<HashMap<CommandId, Vec<oneshot::Sender<CommandView>>>>,
    /// Wakes the timer when an earlier deadline arrives.
    pub(crate) timer: Notify,
    pub(crate) stats: Stats,
    /// Stops the hub's tasks; also stops new commands.
    pub(crate) shutdown: Shutdown,
    /// Writes command changes to the log, when there is one.
    pub(crate) log: Option<LogWriter>,
    /// Moves on with every device change told to listeners (see
    /// [`Hub::devices_generation`]).
    devices_generation: AtomicU64,
    /// Fleet pages, shared by the tabs that show the same one.
    pages: crate::pages::Pages,
    /// The other replicas heard from on `tether.events`, by id: when (ms), where they
    /// take requests, whether they said goodbye.
    pub(crate) others: Mutex<HashMap<String, crate::send::Other>>,
    /// Since when the broker link is up (`None` while it is down).
    connected_at: Mutex<Option<std::time::Instant>>,
    /// Cancels forwarded to other replicas, by correlation id, told their answer.
    pub(crate) forwarded: crate::forward::Forwarded,
    /// Command changes waiting to be shared with them, and whether a caller is
    /// publishing them (see [`Hub::share`]).
    pub(crate) sharing: Mutex<crate::send::Sharing>,
}

/// Everything that changes together, behind one lock that is never held across an
/// `.await`.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) registry: Registry,
    pub(crate) commands: Commands,
    /// The live path's rate limit, by the second readings arrive in.
    pub(crate) flood: FloodGate,
    /// How many of this replica's viewers watch each device.
    pub(crate) watched: HashMap<DeviceId, usize>,
    /// Devices whose credential was revoked through this replica: nothing they send is
    /// taken any more (until provisioned again).
    pub(crate) revoked: std::collections::HashSet<DeviceId>,
    /// The last hello each device sent that was dropped, until one is taken (at most
    /// [`REFUSED_HELLOS`] devices: past it the record starts afresh).
    pub(crate) refused_hellos: HashMap<DeviceId, protocol::api::RefusedHello>,
}

/// Devices whose refused hello is remembered.
pub(crate) const REFUSED_HELLOS: usize = 10_000;

/// Live events a slow browser may fall behind by before it must resync.
const EVENT_BUFFER: usize = 4096;
/// Live events that may wait for the fan-out task (each an `Arc`, a few hundred bytes
/// with its event) before they are dropped and every listener resyncs instead: the
/// fan-out can fall behind a burst (waking 10,000 sockets takes milliseconds an
/// event), and memory must not grow without bound meanwhile.
const FANOUT_QUEUE: usize = 65_536;

impl Hub {
    /// Connects to the broker, declares the topology and starts consuming. If the
    /// broker cannot be reached now, the hub starts disconnected (sends are refused as
    /// `BrokerUnavailable`, `is_connected` is false) and keeps trying in the
    /// background, as it does whenever the link drops.
    ///
    /// Its tasks run under `shutdown`. When that stops, the hub ends every pending
    /// command with its outcome unknown ("the server stopped"), tells listeners and other replicas,
    /// and closes its broker connection; with a command log, it leaves them pending
    /// instead, logged, and takes them back when it starts again (`command_log`).
    pub async fn start(config: HubConfig, shutdown: &Shutdown) -> Self {
        let brokers = common::Brokers::new(&config.amqp_url);
        let first = match crate::link::connect(&config, &brokers).await {
            Ok(connected) => Some(connected),
            Err(error) => {
                tracing::error!(
                    "{error:#}; retrying in the background (start the broker, or set TETHER_AMQP_URL)"
                );
                None
            }
        };
        let log = config
            .command_log
            .as_ref()
            .map(|log| LogWriter::start(log, shutdown));
        let replica_id = match &config.command_log {
            Some(log) => log.replica.clone(),
            None => format!("{:016x}", fastrand::u64(..)),
        };
        let command_log = config.command_log.clone();
        let events = broadcast::channel(EVENT_BUFFER).0;
        let (fanout, to_send) = tokio::sync::mpsc::channel::<Event>(FANOUT_QUEUE);
        let overflowed = Arc::default();
        // Until the hub is gone (its last events, those of a stop, included).
        tokio::spawn(fan_out(to_send, events.clone(), Arc::clone(&overflowed)));
        let hub = Self {
            inner: Arc::new(Inner {
                config,
                brokers,
                replica_id,
                state: Mutex::default(),
                events,
                fanout,
                overflowed,
                changes: AtomicU64::new(0),
                link: Mutex::new(first.as_ref().map(|connected| connected.link.clone())),
                waiters: Mutex::default(),
                timer: Notify::new(),
                stats: Stats::default(),
                shutdown: shutdown.clone(),
                log,
                devices_generation: AtomicU64::new(0),
                pages: crate::pages::Pages::default(),
                others: Mutex::default(),
                connected_at: Mutex::new(first.is_some().then(std::time::Instant::now)),
                forwarded: crate::forward::Forwarded::default(),
                sharing: Mutex::default(),
            }),
        };
        // The other replicas learn at once that this one is here (and share with it).
        hub.announce().await;
        if let Some(log) = command_log {
            // Before replies are handled, so that those waiting in the queue find them.
            hub.resume(&log).await;
            shutdown.spawn(hub.clone().end_orphans(log));
        }
        let (link_hub, timer_hub) = (hub.clone(), hub.clone());
        shutdown.spawn(async move { link_hub.maintain_link(first).await });
        let stopping = shutdown.clone();
        shutdown.spawn(async move {
            tokio::select! {
                () = timer_hub.run_timer() => {}
                () = stopping.stopping() => {}
            }
        });
        hub
    }

    /// Every device ever seen, sorted by id.
    pub fn devices(&self) -> Vec<DeviceView> {
        self.state().registry.views()
    }

    /// The page of the fleet list `query` asks for, among the devices `may_see` lets
    /// through, with their counts. Filtered and sorted under the lock without copying;
    /// only the page's devices are cloned.
    pub fn device_page(
        &self,
        query: &protocol::fleet::DeviceQuery,
        may_see: impl Fn(&DeviceId) -> bool,
    ) -> protocol::fleet::DevicePage {
        self.with_devices(|devices| query.page(devices.filter(|d| may_see(&d.id))))
    }

    /// `read` over every device, in no order, under the lock and without copying them
    /// (`read` must be quick: it holds up the hub).
    pub fn with_devices<R>(
        &self,
        read: impl FnOnce(&mut dyn Iterator<Item = &DeviceView>) -> R,
    ) -> R {
        let state = self.state();
        read(&mut state.registry.iter_views())
    }

    /// [`Hub::device_page`] for a live tab: the same page for every tab of a `viewer`
    /// (a name for the set of devices `may_see` lets through: every tab given the same
    /// name must see the same devices), computed once per generation.
    pub fn shared_device_page(
        &self,
        query: &protocol::fleet::DeviceQuery,
        viewer: &str,
        may_see: impl Fn(&DeviceId) -> bool,
    ) -> Arc<crate::SharedPage> {
        let generation = self.devices_generation();
        self.inner.pages.get(query, viewer, generation, || {
            self.device_page(query, may_see)
        })
    }

    /// A number that moves on whenever a device comes, goes or changes (as told to
    /// listeners): a fleet page computed at one generation is still right while it
    /// stays the same (but for when devices were last heard from).
    pub fn devices_generation(&self) -> u64 {
        self.inner
            .devices_generation
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// A device's credential was revoked. It can no longer log in; with the embedded
    /// broker its connections were closed too, but RabbitMQ keeps an open one until it
    /// drops. So: it is offline now, its pending commands end as offline at once, and
    /// whatever it still sends is ignored (counted as stale) until [`Hub::admit`].
    pub fn revoke(&self, id: &DeviceId) {
        let (now, now_ms) = (std::time::Instant::now(), common::now_ms());
        let mut state = self.state();
        state.revoked.insert(id.clone());
        let Some(session) = state.registry.get(id).map(|d| d.session_id.clone()) else {
            return;
        };
        let offline = state.registry.unroutable(id, &session, now_ms);
        let why = "the device's credential was revoked";
        if state
            .commands
            .device_gone(id, &session, why, Departure::Lost, now)
            > 0
        {
            self.inner.timer.notify_one();
        }
        let events: Vec<LiveEvent> = offline
            .map(|device| LiveEvent::DeviceUpdated { device })
            .into_iter()
            .collect();
        self.broadcast(&events);
    }

    /// A device was provisioned (again): what it sends is taken again.
    pub fn admit(&self, id: &DeviceId) {
        self.state().revoked.remove(id);
    }

    pub fn device(&self, id: &DeviceId) -> Option<DeviceView> {
        self.state().registry.get(id).map(|d| d.view.clone())
    }

    /// The last hello of `id` that was dropped for breaking a rule of the protocol,
    /// unless one was taken since: why a device set up wrong is not online, or does not
    /// offer what it announced.
    pub fn refused_hello(&self, id: &DeviceId) -> Option<protocol::api::RefusedHello> {
        self.state().refused_hellos.get(id).cloned()
    }

    /// Every device's refused hello, as [`Hub::refused_hello`] gives one: a copy taken
    /// under one lock, for a list of many devices.
    pub fn refused_hellos(&self) -> HashMap<DeviceId, protocol::api::RefusedHello> {
        self.state().refused_hellos.clone()
    }

    pub fn command(&self, id: &CommandId) -> Option<CommandView> {
        self.state().commands.get(id)
    }

    /// The replica that sent a command this one only mirrors; `None` for its own, and
    /// for commands it does not know.
    pub fn command_origin(&self, id: &CommandId) -> Option<String> {
        self.state().commands.origin(id).map(str::to_owned)
    }

    /// The most recent commands, newest first, of one device or of all.
    pub fn recent_commands(&self, device: Option<&DeviceId>, limit: usize) -> Vec<CommandView> {
        self.state().commands.recent(device, limit)
    }

    /// The `limit` latest commands `which` lets through, newest first.
    pub fn commands_where(
        &self,
        limit: usize,
        which: impl Fn(&CommandView) -> bool,
    ) -> Vec<CommandView> {
        self.state().commands.recent_of(limit, which)
    }

    /// Whether the broker link is up.
    pub fn is_connected(&self) -> bool {
        self.link().is_some()
    }

    /// A snapshot of devices and recent commands, and the events that follow it.
    pub fn subscribe(&self, recent: usize) -> (LiveEvent, Events) {
        let (snapshot, events) = self.subscribe_to(recent, |_| true, |_| true);
        (snapshot, Events(events))
    }

    /// [`Hub::subscribe`] with only the devices `devices` lets through in the snapshot,
    /// and the `recent` latest of the commands `commands` lets through. Only those are
    /// copied.
    pub fn subscribe_to(
        &self,
        recent: usize,
        devices: impl Fn(&DeviceId) -> bool,
        commands: impl Fn(&CommandView) -> bool,
    ) -> (LiveEvent, Subscription) {
        let state = self.state();
        let receiver = self.subscription(&state);
        let mut views: Vec<DeviceView> = state
            .registry
            .iter_views()
            .filter(|d| devices(&d.id))
            .cloned()
            .collect();
        views.sort_by(|a, b| a.id.cmp(&b.id));
        let recent_commands = state.commands.recent_of(recent, commands);
        let snapshot = LiveEvent::Snapshot {
            devices: views,
            commands: recent_commands,
        };
        (snapshot, receiver)
    }

    /// The live events from now on, without a snapshot (for the job runner).
    pub fn events(&self) -> Events {
        Events(self.subscription(&self.state()))
    }

    /// The events of the changes after those made so far (`_locked`: no change is
    /// being made meanwhile).
    fn subscription(&self, _locked: &State) -> Subscription {
        Subscription {
            receiver: self.inner.events.subscribe(),
            after: self
                .inner
                .changes
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// This replica's id (kept in its data folder when it has a command log).
    pub fn replica_id(&self) -> &str {
        &self.inner.replica_id
    }

    pub(crate) fn waiters(
        &self,
    ) -> MutexGuard<'_, HashMap<CommandId, Vec<oneshot::Sender<CommandView>>>> {
        self.inner
            .waiters
            .lock()
            .expect("no code panics while holding the waiters lock")
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .expect("no code panics while holding the hub's state lock")
    }

    pub(crate) fn link(&self) -> Option<Link> {
        self.inner
            .link
            .lock()
            .expect("no code panics while holding the link lock")
            .clone()
    }

    pub(crate) fn set_link(&self, link: Option<Link>) {
        *self
            .inner
            .connected_at
            .lock()
            .expect("no code panics while holding the link lock") =
            link.is_some().then(std::time::Instant::now);
        *self
            .inner
            .link
            .lock()
            .expect("no code panics while holding the link lock") = link;
    }

    /// How long the broker link has been up; `None` while it is down.
    pub(crate) fn connected_for(&self) -> Option<Duration> {
        self.inner
            .connected_at
            .lock()
            .expect("no code panics while holding the link lock")
            .map(|since| since.elapsed())
    }

    /// Sends events to this replica's listeners. Call with the state locked.
    pub(crate) fn broadcast(&self, events: &[LiveEvent]) {
        for event in events {
            if matches!(event, LiveEvent::DeviceUpdated { .. }) {
                // After the change it tells of (made under the same lock).
                self.inner
                    .devices_generation
                    .fetch_add(1, std::sync::atomic::Ordering::Release);
            }
            self.emit(event.clone());
        }
    }

    /// Hands an event of a change just made to the fan-out task, numbered. Call with
    /// the state locked (the numbers then follow the changes).
    fn emit(&self, event: LiveEvent) {
        let seq = self
            .inner
            .changes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        self.hand_over(SharedEvent::numbered(event, seq));
    }

    /// Hands an event made outside the state lock (a job's progress) to the fan-out
    /// task: listeners get it after everything handed over before it.
    pub(crate) fn emit_unnumbered(&self, event: LiveEvent) {
        self.hand_over(SharedEvent::new(event));
    }

    /// Queues `event` for the fan-out task; if the queue is full, drops it and counts
    /// it, and the task makes every listener resync.
    fn hand_over(&self, event: Event) {
        match self.inner.fanout.try_send(event) {
            Ok(()) => {}
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                self.inner
                    .overflowed
                    .fetch_add(1, std::sync::atomic::Ordering::Release);
            }
            // The fan-out task is gone, with the runtime: nobody listens.
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Sends command changes to listeners, ended commands to their waiters, and this
    /// replica's own to the command log. Call with the state locked.
    pub(crate) fn broadcast_commands(&self, state: &State, commands: &[CommandView]) {
        for command in commands {
            if let Some(log) = &self.inner.log
                && let Some((session_id, inbox)) = state.commands.route(&command.id)
            {
                log.log(command, session_id, inbox);
            }
            if command.status.is_terminal()
                && let Some(waiting) = self.waiters().remove(&command.id)
            {
                for notify in waiting {
                    let _ = notify.send(command.clone());
                }
            }
            self.emit(LiveEvent::CommandUpdated {
                command: command.clone(),
            });
        }
    }

    /// Ends every pending command of this replica with `status` and `why`, telling
    /// listeners and waiters; returns what ended (for the other replicas).
    pub(crate) fn end_all(&self, status: CommandStatus, why: &str) -> Vec<CommandView> {
        let mut state = self.state();
        let ended = state.commands.end_all(status, why, common::now_ms());
        self.broadcast_commands(&state, &ended);
        ended
    }

    /// Counts a dropped message and says why in the log (not every time: see below).
    pub(crate) fn dropped(&self, counter: &AtomicU64, what: &str) {
        let seen = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        // Every one is counted (/metrics); the first ten of a kind are logged, then one
        // at each power of two, so a flood of forged or broken messages cannot flood
        // the log.
        if seen <= 10 || seen.is_power_of_two() {
            tracing::warn!("dropped {what} ({seen} of this kind so far)");
        }
    }
}

impl Announced for Hub {
    fn metric(&self, device: &DeviceId, metric: &str) -> Known {
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
}

/// The fan-out task: passes the hub's events on to its listeners, in order, until the
/// hub is gone. When events were dropped because the queue was full, it drops the rest
/// of the backlog too and tells every listener to resync instead: each then takes a
/// snapshot, which holds every change made so far, those dropped included.
async fn fan_out(
    mut to_send: tokio::sync::mpsc::Receiver<Event>,
    sending: broadcast::Sender<Fanned>,
    overflowed: Arc<AtomicU64>,
) {
    use std::sync::atomic::Ordering;
    let mut batch = Vec::new();
    while to_send.recv_many(&mut batch, 256).await > 0 {
        if overflowed.load(Ordering::Acquire) == 0 {
            for event in batch.drain(..) {
                // No listener is fine: nobody is watching.
                let _ = sending.send(Fanned::Event(event));
            }
            continue;
        }
        let mut dropped = batch.len() as u64;
        batch.clear();
        while to_send.try_recv().is_ok() {
            dropped += 1;
        }
        // After the backlog is gone, so that what was dropped meanwhile is counted here.
        dropped += overflowed.swap(0, Ordering::AcqRel);
        tracing::warn!(
            "{dropped} live events did not fit the fan-out queue ({FANOUT_QUEUE}); every live view resyncs"
        );
        let _ = sending.send(Fanned::Dropped(dropped));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(n: u64) -> LiveEvent {
        LiveEvent::Telemetry {
            reading: protocol::api::Reading {
                device_id: DeviceId::new("d").unwrap(),
                metric: "m".into(),
                value: n as f64,
                ts_ms: n,
            },
        }
    }

    fn value(event: &Event) -> u64 {
        match &event.event {
            LiveEvent::Telemetry { reading } => reading.ts_ms,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_subscription_skips_the_changes_its_snapshot_holds_but_no_unnumbered_event() {
        let (sender, receiver) = broadcast::channel(16);
        let mut subscription = Subscription { receiver, after: 3 };
        // Changes 2 and 3 were made before the snapshot and passed on after it; a job's
        // event (unnumbered) came between them.
        for (n, seq) in [(2, 2), (7, 0), (3, 3), (4, 4), (5, 5)] {
            sender
                .send(Fanned::Event(SharedEvent::numbered(reading(n), seq)))
                .unwrap();
        }
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(value(&subscription.recv().await.unwrap()));
        }
        assert_eq!(seen, [7, 4, 5]);
        drop(sender);
        assert!(matches!(
            subscription.recv().await,
            Err(broadcast::error::RecvError::Closed)
        ));
    }

    #[tokio::test]
    async fn an_overflowing_fan_out_drops_its_backlog_and_makes_every_listener_resync() {
        let (queue, to_send) = tokio::sync::mpsc::channel(4);
        let sending = broadcast::channel(16).0;
        let mut first = Subscription {
            receiver: sending.subscribe(),
            after: 0,
        };
        let mut second = Subscription {
            receiver: sending.subscribe(),
            after: 0,
        };
        // The queue is full (4 waiting) and 2 more were dropped, before the task runs.
        for n in 1..=4 {
            queue
                .try_send(SharedEvent::numbered(reading(n), n))
                .unwrap();
        }
        assert!(
            queue
                .try_send(SharedEvent::numbered(reading(5), 5))
                .is_err()
        );
        let overflowed = Arc::new(AtomicU64::new(2));
        tokio::spawn(fan_out(to_send, sending, Arc::clone(&overflowed)));
        for subscription in [&mut first, &mut second] {
            assert!(matches!(
                next(subscription).await,
                Err(broadcast::error::RecvError::Lagged(6))
            ));
        }
        assert_eq!(overflowed.load(std::sync::atomic::Ordering::Relaxed), 0);
        // Then events flow again, in order, the backlog gone.
        queue
            .send(SharedEvent::numbered(reading(7), 7))
            .await
            .unwrap();
        queue
            .send(SharedEvent::numbered(reading(8), 8))
            .await
            .unwrap();
        assert_eq!(value(&next(&mut first).await.unwrap()), 7);
        assert_eq!(value(&next(&mut first).await.unwrap()), 8);
        assert_eq!(value(&next(&mut second).await.unwrap()), 7);
    }

    /// The subscription's next event, which must come within 5 s.
    async fn next(subscription: &mut Subscription) -> Result<Event, broadcast::error::RecvError> {
        tokio::time::timeout(Duration::from_secs(5), subscription.recv())
            .await
            .expect("an event within 5 s")
    }
}
