//! The live channel, browser side: one connection per tab. The server sends a
//! snapshot, then every change; on any break the tab reconnects with backoff and takes
//! a fresh snapshot. Pages read the signals here.
//!
//! The connection is a WebSocket to `/api/v1/live` where the network lets one through.
//! Where it does not (some proxies and corporate networks refuse or hold the upgrade),
//! a WebSocket that cannot open or brings nothing within [`FIRST_MESSAGE_MS`] is given
//! up for Server-Sent Events (`/api/v1/live/stream`), and those likewise for long polls
//! (`/api/v1/live/sessions`): the same session on the server, snapshot then events,
//! with the tab's requests posted instead of sent on the socket. A connection that
//! worked is tried again as it was; when every kind failed, the next try starts from
//! the WebSocket again. [`Live::transport`] says which carries the tab (the connection
//! indicator shows it). Commands never go over the live channel: they are server
//! functions, whichever transport carries the events.
//!
//! A tab is sent only the devices it shows: those its views watch ([`Live::watch`]) and
//! the page of the fleet list it shows ([`Live::show_fleet`]), which the server keeps
//! current (`fleet_page` events). `devices` holds those and no others.
//!
//! Commands: those of the devices the tab watches and of the jobs it follows.
//!
//! Jobs: the latest view of every job the tab heard of (bounded), and the latest state
//! of each device of the jobs a page follows ([`Live::follow_job`], told to the server,
//! which sends only those); the snapshot holds no jobs, so job pages read them afresh
//! on every snapshot ([`Live::snapshots`]).

use std::collections::BTreeMap;

use leptos::prelude::*;
use protocol::{
    CommandId, DeviceId,
    api::{CommandView, DeviceView, LiveEvent, LiveRequest, Reading},
    fleet::{DevicePage, DeviceQuery},
    job::{JobId, JobTarget, JobView},
};

/// Where requests to the server go while connected.
#[cfg(feature = "hydrate")]
type Outbox = futures_channel::mpsc::UnboundedSender<String>;
#[cfg(not(feature = "hydrate"))]
type Outbox = ();

/// Commands kept in the tab, newest by creation.
const KEEP_COMMANDS: usize = 500;
/// Jobs kept in the tab, newest by creation.
const KEEP_JOBS: usize = 200;
/// Devices of followed jobs kept in the tab, least recently changed dropped first.
const KEEP_JOB_TARGETS: usize = 5_000;

/// How long a connection may take to bring its first event before the tab gives it up
/// for the next kind (a proxy may hold a WebSocket or an event stream open and pass
/// nothing through).
pub const FIRST_MESSAGE_MS: u32 = 8_000;

/// What carries the live channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveTransport {
    WebSocket,
    /// Server-Sent Events, requests posted.
    Sse,
    /// Long polls, requests posted.
    Polling,
}

impl LiveTransport {
    /// Its name in the connection indicator.
    pub fn label(self) -> &'static str {
        match self {
            LiveTransport::WebSocket => "WebSocket",
            LiveTransport::Sse => "SSE",
            LiveTransport::Polling => "polling",
        }
    }

    /// What to try when this cannot connect at all.
    pub fn fallback(self) -> Option<Self> {
        match self {
            LiveTransport::WebSocket => Some(LiveTransport::Sse),
            LiveTransport::Sse => Some(LiveTransport::Polling),
            LiveTransport::Polling => None,
        }
    }
}

/// The state of the live channel, for the connection indicator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkStatus {
    /// Not yet connected (also what the server renders).
    Connecting,
    /// Connected and in sync.
    Live,
    /// Lost; trying again.
    Reconnecting,
}

/// The live view of the fleet, shared by every page of the tab.
#[derive(Debug, Clone, Copy)]
pub struct Live {
    /// The devices the tab shows (watched, or on the fleet page), as last heard.
    pub devices: RwSignal<BTreeMap<DeviceId, DeviceView>>,
    /// The fleet page the tab shows, as the server last sent it, with its query.
    pub fleet: RwSignal<Option<(DeviceQuery, DevicePage)>>,
    /// The fleet page the tab shows, told to the server again on every reconnect.
    fleet_query: StoredValue<Option<DeviceQuery>>,
    pub commands: RwSignal<BTreeMap<CommandId, CommandView>>,
    /// The latest reading of each device's metrics.
    pub readings: RwSignal<BTreeMap<(DeviceId, String), Reading>>,
    pub status: RwSignal<LinkStatus>,
    /// What carries the live channel (or was last tried).
    pub transport: RwSignal<LiveTransport>,
    /// Whether a snapshot has arrived: until then pages show what the server rendered.
    pub synced: RwSignal<bool>,
    /// Milliseconds since the Unix epoch, ticking every second in the browser, for
    /// "5 min ago" labels.
    pub now_ms: RwSignal<u64>,
    /// What `logs` commands sent while running, every line (views keep only the last
    /// message).
    pub outputs: RwSignal<super::output::Outputs>,
    /// The latest view of each job the tab heard of.
    pub jobs: RwSignal<BTreeMap<JobId, JobView>>,
    /// The latest state of each device of the jobs followed (see [`Live::follow_job`]).
    pub job_targets: RwSignal<BTreeMap<(JobId, DeviceId), JobTarget>>,
    /// How many snapshots arrived: what was read before the latest one (jobs, which
    /// the snapshot does not hold) may have missed events while the channel was down.
    pub snapshots: RwSignal<u64>,
    /// Jobs whose devices some view shows, by how many views show each.
    following: StoredValue<BTreeMap<JobId, usize>>,
    /// Devices this tab shows, by how many views show each: they report faster while
    /// watched. Told to the server again on every reconnect.
    watching: RwSignal<BTreeMap<DeviceId, usize>>,
    #[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
    outbox: StoredValue<Option<Outbox>>,
}

impl Live {
    /// Applies one event from the server.
    pub fn apply(&self, event: LiveEvent) {
        match event {
            LiveEvent::Snapshot { devices, commands } => {
                self.devices
                    .set(devices.into_iter().map(|d| (d.id.clone(), d)).collect());
                self.commands
                    .set(commands.into_iter().map(|c| (c.id.clone(), c)).collect());
                self.synced.set(true);
                self.status.set(LinkStatus::Live);
                self.snapshots.update(|n| *n += 1);
            }
            LiveEvent::DeviceUpdated { device } => self.devices.update(|all| {
                all.insert(device.id.clone(), device);
            }),
            LiveEvent::CommandUpdated { command } => {
                self.outputs.update(|outputs| outputs.record(&command));
                self.upsert_command(command);
            }
            LiveEvent::Telemetry { reading } => self.readings.update(|latest| {
                latest.insert((reading.device_id.clone(), reading.metric.clone()), reading);
            }),
            LiveEvent::JobUpdated { job } => self.upsert_job(*job),
            LiveEvent::JobTarget { target } => self.upsert_job_target(target),
            LiveEvent::FleetPage { query, page } => {
                if self.fleet_query.with_value(|q| q.as_ref() != Some(&query)) {
                    return; // An answer to a query the tab no longer shows.
                }
                let watching = self.watching.get_untracked();
                self.devices.update(|all| {
                    all.retain(|id, _| watching.contains_key(id));
                    for device in &page.devices {
                        all.insert(device.id.clone(), device.clone());
                    }
                });
                self.fleet.set(Some((query, page)));
            }
            // The tab only asks what its pages build; a refusal is a limit reached (or
            // a bug), worth a line in the console, not a banner.
            LiveEvent::Refused { code, message } => {
                leptos::logging::warn!("the live channel refused a request ({code}): {message}");
            }
        }
    }

    /// A view shows the fleet list with `query` from now on (one at a time): the server
    /// sends its page and keeps it current.
    pub fn show_fleet(&self, query: DeviceQuery) {
        if self.fleet_query.with_value(|q| q.as_ref() == Some(&query)) {
            return;
        }
        self.fleet_query.set_value(Some(query.clone()));
        self.tell(&LiveRequest::Fleet { query: Some(query) });
    }

    /// The fleet list is no longer shown.
    pub fn hide_fleet(&self) {
        if self
            .fleet_query
            .try_with_value(Option::is_none)
            .unwrap_or(true)
        {
            return;
        }
        self.fleet_query.set_value(None);
        self.fleet.try_set(None);
        let watching = self.watching.try_get_untracked().unwrap_or_default();
        self.devices
            .try_update(|all| all.retain(|id, _| watching.contains_key(id)));
        self.tell(&LiveRequest::Fleet { query: None });
    }

    /// The query of the fleet page the tab shows, if any.
    pub fn fleet_query(&self) -> Option<DeviceQuery> {
        self.fleet_query.try_get_value().flatten()
    }

    /// Adds or replaces a job, unless a later state of it is already known (the answer
    /// to a request can arrive after the live events that followed it).
    pub fn upsert_job(&self, job: JobView) {
        self.jobs.update(|all| {
            keep_latest(all, job.id.clone(), job, job_supersedes);
            if all.len() > KEEP_JOBS {
                let oldest = all
                    .values()
                    .min_by_key(|j| (j.created_ms, j.id.clone()))
                    .map(|j| j.id.clone());
                if let Some(oldest) = oldest {
                    all.remove(&oldest);
                }
            }
        });
    }

    /// Keeps a device's state in a job, if a view follows that job.
    pub fn upsert_job_target(&self, target: JobTarget) {
        if !self
            .following
            .try_with_value(|f| f.contains_key(&target.job_id))
            .unwrap_or(false)
        {
            return;
        }
        self.job_targets.update(|all| {
            let key = (target.job_id.clone(), target.device_id.clone());
            keep_latest(all, key, target, target_supersedes);
            if all.len() > KEEP_JOB_TARGETS {
                let stalest = all
                    .iter()
                    .min_by_key(|(_, t)| t.updated_ms)
                    .map(|(k, _)| k.clone());
                if let Some(stalest) = stalest {
                    all.remove(&stalest);
                }
            }
        });
    }

    /// The latest known state of `job`: `read` (what the server answered) or what the
    /// live channel said since, whichever is later.
    pub fn latest_job(&self, read: JobView) -> JobView {
        self.jobs.with(|all| match all.get(&read.id) {
            Some(known) if !job_supersedes(&read, known) => known.clone(),
            _ => read,
        })
    }

    /// The latest known state of a device of a followed job, as [`Live::latest_job`].
    pub fn latest_target(&self, read: JobTarget) -> JobTarget {
        self.job_targets.with(
            |all| match all.get(&(read.job_id.clone(), read.device_id.clone())) {
                Some(known) if !target_supersedes(&read, known) => known.clone(),
                _ => read,
            },
        )
    }

    /// A view shows the devices of `job` from now on: the server sends their changes and
    /// the job's commands, and they are kept.
    pub fn follow_job(&self, job: &JobId) {
        let mut first = false;
        self.following.update_value(|all| {
            let count = all.entry(job.clone()).or_insert(0);
            *count += 1;
            first = *count == 1;
        });
        if first {
            self.tell(&LiveRequest::Follow {
                job_id: job.clone(),
            });
        }
    }

    /// A view that showed the devices of `job` is gone; when it was the last, what was
    /// kept of them goes.
    pub fn unfollow_job(&self, job: &JobId) {
        let mut last = false;
        self.following.try_update_value(|all| {
            if let Some(count) = all.get_mut(job) {
                *count -= 1;
                if *count == 0 {
                    all.remove(job);
                    last = true;
                }
            }
        });
        if last {
            self.job_targets
                .try_update(|all| all.retain(|(j, _), _| j != job));
            self.tell(&LiveRequest::Unfollow {
                job_id: job.clone(),
            });
        }
    }

    /// A view shows `device` from now on: the server asks it to report faster.
    pub fn watch(&self, device: &DeviceId) {
        let mut first = false;
        self.watching.update(|all| {
            let count = all.entry(device.clone()).or_insert(0);
            *count += 1;
            first = *count == 1;
        });
        if first {
            self.tell(&LiveRequest::Watch {
                device_id: device.clone(),
            });
        }
    }

    /// A view that showed `device` is gone.
    pub fn unwatch(&self, device: &DeviceId) {
        let mut last = false;
        self.watching.try_update(|all| {
            if let Some(count) = all.get_mut(device) {
                *count -= 1;
                if *count == 0 {
                    all.remove(device);
                    last = true;
                }
            }
        });
        if last {
            let on_page = self
                .fleet
                .try_with_untracked(|f| {
                    f.as_ref()
                        .is_some_and(|(_, page)| page.devices.iter().any(|d| &d.id == device))
                })
                .unwrap_or(false);
            if !on_page {
                self.devices.try_update(|all| all.remove(device));
            }
            self.tell(&LiveRequest::Unwatch {
                device_id: device.clone(),
            });
        }
    }

    /// Sends a request if connected; on reconnect the watch list is sent afresh anyway.
    fn tell(&self, request: &LiveRequest) {
        #[cfg(feature = "hydrate")]
        self.outbox.try_with_value(|outbox| {
            if let (Some(outbox), Ok(text)) = (outbox, serde_json::to_string(request)) {
                let _ = outbox.unbounded_send(text);
            }
        });
        #[cfg(not(feature = "hydrate"))]
        let _ = request;
    }

    /// Adds or replaces a command, unless a later status of it is already known (the
    /// answer to a send can arrive after the live events that followed it).
    pub fn upsert_command(&self, command: CommandView) {
        self.commands.update(|all| {
            if all
                .get(&command.id)
                .is_none_or(|known| command.supersedes(known))
            {
                all.insert(command.id.clone(), command);
            }
            if all.len() > KEEP_COMMANDS {
                let oldest = all
                    .values()
                    .min_by_key(|c| c.created_ms)
                    .map(|c| c.id.clone());
                if let Some(oldest) = oldest {
                    all.remove(&oldest);
                }
            }
        });
    }
}

/// Puts `new` under `key` unless what is there is later (`supersedes(new, known)`
/// says whether `new` is).
fn keep_latest<K: Ord, V>(
    all: &mut BTreeMap<K, V>,
    key: K,
    new: V,
    supersedes: impl Fn(&V, &V) -> bool,
) {
    if all.get(&key).is_none_or(|known| supersedes(&new, known)) {
        all.insert(key, new);
    }
}

/// Whether `new` is a later state of the job than `known`: nothing follows its end;
/// otherwise the later update, and at the same millisecond, the one with more devices
/// done (a device once done stays done).
fn job_supersedes(new: &JobView, known: &JobView) -> bool {
    if known.state.is_finished() && !new.state.is_finished() {
        return false;
    }
    if new.state.is_finished() && !known.state.is_finished() {
        return true;
    }
    (new.updated_ms, new.counts.finished()) >= (known.updated_ms, known.counts.finished())
}

/// Whether `new` is a later state of a job's device than `known`: nothing follows its
/// end; otherwise the later update, and at the same millisecond, the later step.
fn target_supersedes(new: &JobTarget, known: &JobTarget) -> bool {
    use protocol::job::TargetStatus::{Pending, Running, Starting, Waiting};
    let step = |t: &JobTarget| match t.status {
        Pending => 0,
        Waiting => 1,
        Starting => 2,
        Running => 3,
        _ => 4,
    };
    if known.status.is_finished() && !new.status.is_finished() {
        return false;
    }
    if new.status.is_finished() && !known.status.is_finished() {
        return true;
    }
    (new.updated_ms, step(new)) >= (known.updated_ms, step(known))
}

/// Creates the live view for this tab and, in the browser, connects it.
pub fn provide_live() -> Live {
    let live = Live {
        devices: RwSignal::new(BTreeMap::new()),
        fleet: RwSignal::new(None),
        fleet_query: StoredValue::new(None),
        commands: RwSignal::new(BTreeMap::new()),
        readings: RwSignal::new(BTreeMap::new()),
        status: RwSignal::new(LinkStatus::Connecting),
        transport: RwSignal::new(LiveTransport::WebSocket),
        synced: RwSignal::new(false),
        now_ms: RwSignal::new(now_ms()),
        outputs: RwSignal::new(Default::default()),
        jobs: RwSignal::new(BTreeMap::new()),
        job_targets: RwSignal::new(BTreeMap::new()),
        snapshots: RwSignal::new(0),
        following: StoredValue::new(BTreeMap::new()),
        watching: RwSignal::new(BTreeMap::new()),
        outbox: StoredValue::new(None),
    };
    provide_context(live);
    #[cfg(feature = "hydrate")]
    {
        // The login and first-run pages have no one to stream to yet.
        let path = web_sys::window()
            .and_then(|w| w.location().pathname().ok())
            .unwrap_or_default();
        if !matches!(path.as_str(), "/login" | "/setup") {
            leptos::task::spawn_local(browser::stay_connected(live));
            leptos::task::spawn_local(browser::tick(live));
        }
    }
    live
}

pub fn use_live() -> Live {
    expect_context::<Live>()
}

/// Milliseconds since the Unix epoch, on either side.
pub fn now_ms() -> u64 {
    #[cfg(feature = "hydrate")]
    {
        js_sys::Date::now() as u64
    }
    #[cfg(not(feature = "hydrate"))]
    {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use protocol::{CommandStatus, DeviceId};

    use super::*;

    fn at(status: CommandStatus, updated_ms: u64) -> CommandView {
        CommandView {
            id: "c".into(),
            device_id: DeviceId::new("d").unwrap(),
            name: "n".into(),
            args: Default::default(),
            status,
            created_ms: 0,
            updated_ms,
            deadline_ms: 0,
            percent: None,
            message: None,
            result: None,
            error: None,
            issued_by: None,
            job_id: None,
        }
    }

    #[test]
    fn transports_fall_back_from_the_websocket_to_sse_to_polling() {
        let mut tried = vec![LiveTransport::WebSocket];
        while let Some(next) = tried.last().and_then(|t| t.fallback()) {
            tried.push(next);
        }
        let labels: Vec<_> = tried.iter().map(|t| t.label()).collect();
        assert_eq!(labels, ["WebSocket", "SSE", "polling"]);
    }

    #[test]
    fn a_late_answer_never_undoes_later_news() {
        use CommandStatus::*;
        assert!(
            !at(Sent, 5).supersedes(&at(Succeeded, 5)),
            "same millisecond, earlier step"
        );
        assert!(!at(Sent, 4).supersedes(&at(Delivered, 5)));
        assert!(at(Succeeded, 5).supersedes(&at(Sent, 5)));
        assert!(at(Progress, 7).supersedes(&at(Progress, 6)));
        assert!(!at(Progress, 6).supersedes(&at(Progress, 7)));
        assert!(
            !at(TimedOut, 9).supersedes(&at(Succeeded, 5)),
            "nothing follows an end"
        );
    }

    fn job(state: protocol::job::JobState, updated_ms: u64, finished: u32) -> JobView {
        JobView {
            id: JobId("j".into()),
            name: "n".into(),
            command: "c".into(),
            args: Default::default(),
            targets: Default::default(),
            concurrency: 1,
            failure_threshold: None,
            offline: Default::default(),
            wait_ms: 0,
            timeout_ms: 0,
            state,
            created_by: "u".into(),
            created_ms: 0,
            updated_ms,
            ended_ms: None,
            stop_reason: None,
            counts: protocol::job::JobCounts {
                total: 5,
                succeeded: finished,
                ..Default::default()
            },
            artifact: None,
        }
    }

    fn target(status: protocol::job::TargetStatus, updated_ms: u64) -> JobTarget {
        JobTarget {
            job_id: JobId("j".into()),
            device_id: DeviceId::new("d").unwrap(),
            seq: 0,
            status,
            command_id: None,
            message: None,
            updated_ms,
        }
    }

    #[test]
    fn a_late_job_answer_never_undoes_later_news() {
        use protocol::job::JobState::*;
        assert!(job_supersedes(&job(Running, 6, 1), &job(Running, 5, 1)));
        assert!(!job_supersedes(&job(Running, 4, 2), &job(Running, 5, 1)));
        assert!(
            !job_supersedes(&job(Running, 5, 1), &job(Running, 5, 2)),
            "same millisecond, fewer done"
        );
        assert!(
            !job_supersedes(&job(Paused, 9, 2), &job(Cancelled, 5, 2)),
            "nothing follows an end"
        );
        assert!(job_supersedes(&job(Completed, 5, 5), &job(Running, 5, 4)));
    }

    #[test]
    fn a_late_target_answer_never_undoes_later_news() {
        use protocol::job::TargetStatus::*;
        assert!(target_supersedes(&target(Running, 5), &target(Starting, 5)));
        assert!(!target_supersedes(
            &target(Starting, 5),
            &target(Running, 5)
        ));
        assert!(!target_supersedes(&target(Running, 4), &target(Running, 5)));
        assert!(
            !target_supersedes(&target(Running, 9), &target(Failed, 5)),
            "nothing follows an end"
        );
        assert!(target_supersedes(
            &target(Succeeded, 3),
            &target(Running, 5)
        ));
    }
}

#[cfg(feature = "hydrate")]
mod browser {
    use futures_channel::{mpsc, oneshot};
    use futures_util::{
        SinkExt as _, StreamExt as _,
        future::{Either, select},
    };
    use gloo_net::websocket::{Message, futures::WebSocket};
    use gloo_timers::future::TimeoutFuture;
    use leptos::prelude::*;
    use protocol::{api::LiveEvent, backoff::Backoff};
    use wasm_bindgen::{JsCast as _, closure::Closure};
    use web_sys::{EventSource, MessageEvent, XmlHttpRequest};

    use super::{FIRST_MESSAGE_MS, LinkStatus, Live, LiveTransport};

    /// A lost connection is retried after 0.5–1 s, then twice as long each time, up to
    /// 10 s.
    const RECONNECT: Backoff = Backoff::new(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(10),
    );

    /// Keeps the tab connected: connect, read events until the connection breaks, wait
    /// with backoff and jitter, and again. Every new connection starts with a snapshot.
    /// A kind of connection that brought nothing is given up for the next at once;
    /// when none did, the next try (after the pause) starts from the WebSocket again.
    pub async fn stay_connected(live: Live) {
        let mut failures: u32 = 0;
        let mut transport = LiveTransport::WebSocket;
        loop {
            live.transport.set(transport);
            let heard = match transport {
                LiveTransport::WebSocket => websocket(live).await,
                LiveTransport::Sse => event_stream(live).await,
                LiveTransport::Polling => long_polls(live).await,
            };
            // Dropping the sender ends the writer, and with it the connection.
            live.outbox.set_value(None);
            let commands = live.commands;
            live.outputs.update(|outputs| {
                outputs.interrupted(|id| {
                    commands
                        .with_untracked(|all| all.get(id).is_some_and(|c| !c.status.is_terminal()))
                })
            });
            live.status.set(LinkStatus::Reconnecting);
            if heard {
                failures = 0;
            } else {
                if let Some(next) = transport.fallback() {
                    leptos::logging::warn!(
                        "the live channel got nothing over {}; trying {}",
                        transport.label(),
                        next.label()
                    );
                    transport = next;
                    continue;
                }
                transport = LiveTransport::WebSocket;
            }
            failures = failures.saturating_add(1);
            let pause = RECONNECT.delay(failures, js_sys::Math::random());
            TimeoutFuture::new(u32::try_from(pause.as_millis()).unwrap_or(u32::MAX)).await;
        }
    }

    /// Applies one event's JSON; whether it was one.
    fn apply_text(live: &Live, text: &str) -> bool {
        match serde_json::from_str::<LiveEvent>(text) {
            Ok(event) => {
                live.apply(event);
                true
            }
            Err(error) => {
                leptos::logging::warn!("ignoring a live message: {error}");
                false
            }
        }
    }

    /// `next`, or `None` if the tab has heard nothing yet and it does not come within
    /// [`FIRST_MESSAGE_MS`].
    async fn unless_silent<T>(heard: bool, next: impl Future<Output = Option<T>>) -> Option<T> {
        if heard {
            return next.await;
        }
        let next = std::pin::pin!(next);
        match select(next, TimeoutFuture::new(FIRST_MESSAGE_MS)).await {
            Either::Left((next, _)) => next,
            Either::Right(_) => None,
        }
    }

    /// The live channel over a WebSocket, until it breaks: whether it brought events.
    async fn websocket(live: Live) -> bool {
        let location = window().location();
        let scheme = if location.protocol().as_deref() == Ok("https:") {
            "wss"
        } else {
            "ws"
        };
        let host = location.host().unwrap_or_default();
        let url = format!("{scheme}://{host}/api/v1/live{}", query(&live));
        let Ok(socket) = WebSocket::open(&url) else {
            return false;
        };
        let (mut outgoing, mut incoming) = socket.split();
        // Requests go out through a channel while this connection lasts.
        let (outbox, mut requests) = mpsc::unbounded::<String>();
        live.outbox.set_value(Some(outbox));
        leptos::task::spawn_local(async move {
            while let Some(text) = requests.next().await {
                if outgoing.send(Message::Text(text)).await.is_err() {
                    break;
                }
            }
        });
        let mut heard = false;
        while let Some(Ok(message)) = unless_silent(heard, incoming.next()).await {
            let text = match message {
                Message::Text(text) => text,
                Message::Bytes(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            };
            heard |= apply_text(&live, &text);
        }
        heard
    }

    /// What an event stream brings.
    enum FromStream {
        Session(String),
        Event(String),
        /// The server ended the session, the stream broke, or a request could not be
        /// posted: the tab connects again (and says afresh what it shows).
        Over,
    }

    /// Closes the event stream and lets go of its handlers when dropped.
    struct Stream {
        source: EventSource,
        _handlers: Vec<Closure<dyn FnMut(MessageEvent)>>,
    }

    impl Drop for Stream {
        fn drop(&mut self) {
            self.source.close();
            self.source.set_onmessage(None);
            self.source.set_onerror(None);
        }
    }

    /// The live channel over Server-Sent Events, requests posted, until it breaks:
    /// whether it brought events.
    async fn event_stream(live: Live) -> bool {
        // Requests made from now on wait for the session's id; what the tab shows now
        // goes in the address.
        let (outbox, requests) = mpsc::unbounded::<String>();
        live.outbox.set_value(Some(outbox));
        let Ok(source) = EventSource::new(&format!("/api/v1/live/stream{}", query(&live))) else {
            return false;
        };
        let (tx, mut rx) = mpsc::unbounded::<FromStream>();
        let handler = |wrap: fn(String) -> FromStream| {
            let tx = tx.clone();
            Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
                let _ = tx.unbounded_send(wrap(event.data().as_string().unwrap_or_default()));
            })
        };
        let on_message = handler(FromStream::Event);
        let on_session = handler(FromStream::Session);
        let on_end = handler(|_| FromStream::Over);
        let on_error = handler(|_| FromStream::Over);
        source.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        // The browser would reconnect by itself, to a new session: the tab does it.
        source.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        let listen = |name: &str, handler: &Closure<dyn FnMut(MessageEvent)>| {
            source
                .add_event_listener_with_callback(name, handler.as_ref().unchecked_ref())
                .is_ok()
        };
        if !(listen("session", &on_session) && listen("end", &on_end)) {
            source.close();
            return false;
        }
        let _stream = Stream {
            source,
            _handlers: vec![on_message, on_session, on_end, on_error],
        };
        let mut requests = Some(requests);
        let mut heard = false;
        while let Some(message) = unless_silent(heard, rx.next()).await {
            match message {
                FromStream::Session(data) => {
                    let id = session_id(&data);
                    match (id, requests.take()) {
                        (Some(id), Some(requests)) => {
                            let tx = tx.clone();
                            leptos::task::spawn_local(post_requests(id, requests, move || {
                                let _ = tx.unbounded_send(FromStream::Over);
                            }));
                        }
                        _ => break,
                    }
                }
                FromStream::Event(text) => heard |= apply_text(&live, &text),
                FromStream::Over => break,
            }
        }
        heard
    }

    /// The session id in `{"session":"…"}`.
    fn session_id(json: &str) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Opened {
            session: String,
        }
        let id = serde_json::from_str::<Opened>(json).ok()?.session;
        // It goes into addresses: only what the server makes (hex).
        (!id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
    }

    /// A long poll's answer.
    #[derive(serde::Deserialize)]
    struct Polled {
        next: u64,
        events: Vec<serde_json::Value>,
        #[serde(default)]
        end: Option<protocol::api::ApiError>,
    }

    /// The live channel over long polls, requests posted, until it breaks: whether it
    /// brought events.
    async fn long_polls(live: Live) -> bool {
        let (outbox, requests) = mpsc::unbounded::<String>();
        live.outbox.set_value(Some(outbox));
        let opened = request(
            "POST",
            &format!("/api/v1/live/sessions{}", query(&live)),
            None,
        )
        .await;
        let Some(id) = opened
            .ok()
            .filter(|(status, _)| *status == 201)
            .and_then(|(_, body)| session_id(&body))
        else {
            return false;
        };
        let (broken_tx, mut broken) = oneshot::channel::<()>();
        leptos::task::spawn_local(post_requests(id.clone(), requests, move || {
            let _ = broken_tx.send(());
        }));
        let mut after = 0;
        let mut heard = false;
        loop {
            let url = format!("/api/v1/live/sessions/{id}/events?after={after}");
            let poll = async {
                match select(std::pin::pin!(request("GET", &url, None)), &mut broken).await {
                    Either::Left((Ok((200, body)), _)) => {
                        serde_json::from_str::<Polled>(&body).ok()
                    }
                    _ => None,
                }
            };
            let Some(polled) = unless_silent(heard, poll).await else {
                break;
            };
            for event in polled.events {
                match serde_json::from_value::<LiveEvent>(event) {
                    Ok(event) => {
                        live.apply(event);
                        heard = true;
                    }
                    Err(error) => leptos::logging::warn!("ignoring a live message: {error}"),
                }
            }
            after = polled.next;
            if let Some(end) = polled.end {
                leptos::logging::warn!("the live session ended ({}): {}", end.code, end.message);
                break;
            }
        }
        // The server would let it expire; tell it now (whether or not it is reached).
        leptos::task::spawn_local(async move {
            let _ = request("DELETE", &format!("/api/v1/live/sessions/{id}"), None).await;
        });
        heard
    }

    /// Posts the tab's requests to session `id`, in order, until the connection ends (the
    /// channel closes) or one cannot be posted (`broken` is then called: the tab
    /// connects again and says afresh what it shows).
    async fn post_requests(
        id: String,
        mut requests: mpsc::UnboundedReceiver<String>,
        broken: impl FnOnce(),
    ) {
        let url = format!("/api/v1/live/sessions/{id}");
        while let Some(text) = requests.next().await {
            match request("POST", &url, Some(&text)).await {
                Ok((202, _)) => {}
                // The request itself was refused (a bug, or a limit): said in the
                // console, as a refusal on the socket is.
                Ok((400, body)) => {
                    leptos::logging::warn!("the live channel refused a request: {body}");
                }
                _ => {
                    broken();
                    return;
                }
            }
        }
    }

    /// An `XMLHttpRequest` aborted (and its handler let go) if dropped before it ended.
    struct Pending {
        xhr: XmlHttpRequest,
        _on_end: Closure<dyn FnMut()>,
    }

    impl Drop for Pending {
        fn drop(&mut self) {
            self.xhr.set_onloadend(None);
            if self.xhr.ready_state() != XmlHttpRequest::DONE {
                let _ = self.xhr.abort();
            }
        }
    }

    /// One same-origin request (JSON `body`, if any): its status and body, or `Err` if
    /// no answer came. The session cookie goes with it, and the browser marks it
    /// same-origin, which the server's cross-site guard lets through.
    async fn request(method: &str, url: &str, body: Option<&str>) -> Result<(u16, String), ()> {
        let xhr = XmlHttpRequest::new().map_err(drop)?;
        xhr.open_with_async(method, url, true).map_err(drop)?;
        let (ended_tx, ended) = oneshot::channel::<()>();
        let mut ended_tx = Some(ended_tx);
        let on_end = Closure::<dyn FnMut()>::new(move || {
            if let Some(tx) = ended_tx.take() {
                let _ = tx.send(());
            }
        });
        xhr.set_onloadend(Some(on_end.as_ref().unchecked_ref()));
        let pending = Pending {
            xhr,
            _on_end: on_end,
        };
        let sent = match body {
            Some(body) => pending
                .xhr
                .set_request_header("content-type", "application/json")
                .and_then(|()| pending.xhr.send_with_opt_str(Some(body))),
            None => pending.xhr.send(),
        };
        sent.map_err(drop)?;
        let _ = ended.await;
        match pending.xhr.status().unwrap_or(0) {
            // No answer: the network, or the server went away.
            0 => Err(()),
            status => Ok((
                status,
                pending
                    .xhr
                    .response_text()
                    .ok()
                    .flatten()
                    .unwrap_or_default(),
            )),
        }
    }

    /// Moves `now_ms` on every second.
    pub async fn tick(live: Live) {
        loop {
            live.now_ms.set(super::now_ms());
            TimeoutFuture::new(1_000).await;
        }
    }

    /// The query that says what the tab shows now (`?watch=…&jobs=…&fleet=…`), or
    /// nothing.
    fn query(live: &Live) -> String {
        let mut params = Vec::new();
        let watching: Vec<String> = live
            .watching
            .get_untracked()
            .into_keys()
            .map(|id| String::from(js_sys::encode_uri_component(id.as_str())))
            .collect();
        if !watching.is_empty() {
            params.push(format!("watch={}", watching.join(",")));
        }
        let following: Vec<String> = live.following.with_value(|all| {
            all.keys()
                .map(|id| String::from(js_sys::encode_uri_component(&id.to_string())))
                .collect()
        });
        if !following.is_empty() {
            params.push(format!("jobs={}", following.join(",")));
        }
        if let Some(query) = live.fleet_query()
            && let Ok(json) = serde_json::to_string(&query)
        {
            params.push(format!(
                "fleet={}",
                String::from(js_sys::encode_uri_component(&json))
            ));
        }
        if params.is_empty() {
            String::new()
        } else {
            format!("?{}", params.join("&"))
        }
    }
}
