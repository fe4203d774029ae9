//! The live channel, browser side: one WebSocket per tab to `/api/v1/live`. The server
//! sends a snapshot, then every change; on any break the tab reconnects with backoff
//! and takes a fresh snapshot. Pages read the signals here; nothing polls.
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
    use futures_util::{SinkExt as _, StreamExt as _};
    use gloo_net::websocket::{Message, futures::WebSocket};
    use gloo_timers::future::TimeoutFuture;
    use leptos::prelude::*;
    use protocol::backoff::Backoff;

    use super::{LinkStatus, Live};

    /// A lost socket is retried after 0.5–1 s, then twice as long each time, up to 10 s.
    const RECONNECT: Backoff = Backoff::new(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(10),
    );

    /// Keeps the tab connected: connect, read events until the socket breaks, wait with
    /// backoff and jitter, and again. Every new connection starts with a snapshot.
    pub async fn stay_connected(live: Live) {
        let mut failures: u32 = 0;
        loop {
            // What the tab shows goes in the address, so the snapshot holds it; later
            // changes go out as requests.
            if let Ok(socket) = WebSocket::open(&live_url(&live)) {
                let (mut outgoing, mut incoming) = socket.split();
                // Requests go out through a channel while this connection lasts.
                let (outbox, mut requests) = futures_channel::mpsc::unbounded::<String>();
                live.outbox.set_value(Some(outbox));
                leptos::task::spawn_local(async move {
                    while let Some(text) = requests.next().await {
                        if outgoing.send(Message::Text(text)).await.is_err() {
                            break;
                        }
                    }
                });
                while let Some(Ok(message)) = incoming.next().await {
                    let text = match message {
                        Message::Text(text) => text,
                        Message::Bytes(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                    };
                    match serde_json::from_str(&text) {
                        Ok(event) => {
                            failures = 0;
                            live.apply(event);
                        }
                        Err(error) => leptos::logging::warn!("ignoring a live message: {error}"),
                    }
                }
            }
            // Dropping the sender ends the writer, and with it the socket.
            live.outbox.set_value(None);
            let commands = live.commands;
            live.outputs.update(|outputs| {
                outputs.interrupted(|id| {
                    commands
                        .with_untracked(|all| all.get(id).is_some_and(|c| !c.status.is_terminal()))
                })
            });
            live.status.set(LinkStatus::Reconnecting);
            failures = failures.saturating_add(1);
            let pause = RECONNECT.delay(failures, js_sys::Math::random());
            TimeoutFuture::new(u32::try_from(pause.as_millis()).unwrap_or(u32::MAX)).await;
        }
    }

    /// Moves `now_ms` on every second.
    pub async fn tick(live: Live) {
        loop {
            live.now_ms.set(super::now_ms());
            TimeoutFuture::new(1_000).await;
        }
    }

    /// The live channel's address, saying what the tab shows now.
    fn live_url(live: &Live) -> String {
        let location = window().location();
        let scheme = if location.protocol().as_deref() == Ok("https:") {
            "wss"
        } else {
            "ws"
        };
        let host = location.host().unwrap_or_default();
        let mut params = Vec::new();
        let watching: Vec<String> = live
            .watching
            .get_untracked()
            .into_keys()
            .map(|id| id.to_string())
            .collect();
        if !watching.is_empty() {
            params.push(format!("watch={}", watching.join(",")));
        }
        let following: Vec<String> = live
            .following
            .with_value(|all| all.keys().map(|id| id.to_string()).collect());
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
            format!("{scheme}://{host}/api/v1/live")
        } else {
            format!("{scheme}://{host}/api/v1/live?{}", params.join("&"))
        }
    }
}
