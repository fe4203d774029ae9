//! The live channel, server side: `GET /api/v1/live` upgrades to a WebSocket that
//! sends a snapshot, then every change the tab shows, as JSON text. A client that falls
//! too far behind gets a fresh snapshot instead of a gap.
//!
//! A tab is sent what it shows, not the whole fleet: the devices it watches (a device's
//! page: `{"type":"watch","device_id":…}`, `unwatch`; they report faster while watched,
//! see [`Hub::watch`]) and the page of the fleet list it shows (`{"type":"fleet",
//! "query":{…}}`, or `null` when it no longer does): a `fleet_page` event when asked and
//! whenever the page's devices, their order or the counts change (checked twice a
//! second, from a page shared by every tab that shows the same one), and each change of
//! a device on it as it happens. The upgrade's own `?watch=a,b&fleet={…}` says what it
//! shows from the start, so that the snapshot holds it. A command goes to the tabs
//! that watch its device or follow its job (a job's page: `{"type":"follow","job_id":…}`,
//! `unfollow`, or `?jobs=a,b` on the upgrade), and so does a change of one of a job's
//! devices; a job's own changes go to every tab whose user may see it (the jobs list).
//! A request that is not done (not JSON, of no known type, out of bounds, past a tab's
//! limits, a device or job the user may not see) is answered with a `refused` event
//! saying why, and the socket stays. When the server stops, every socket is closed with
//! 1001 (going away), and tabs reconnect.
//!
//! Each socket carries only what its user may see: the snapshot and every event are
//! filtered by the user's device groups. The user's session (or token) is checked again
//! every minute: one that was revoked or expired closes the socket with 1008, and a
//! changed role or group applies from then on.
//!
//! Three transports carry the same session ([`serve`], over a [`Transport`]): the
//! WebSocket ([`Socket`]: requests are its text frames), and, for networks whose
//! proxies let no WebSocket through, Server-Sent Events and long polls ([`http`]:
//! events held in a bounded outbox that the stream or the polls take, requests
//! posted). Everything above (the snapshot, the filtering, the limits and refusals,
//! the identity checked again, the resync of a tab that fell behind, the goodbye on
//! stop) is [`serve`]'s, written once; a transport only moves text.
//!
//! A tab that stops reading cannot hold its session for good: every write to a
//! connection is bounded (`TETHER_WRITE_TIMEOUT_MS`, [`crate::write_bound`]), and a
//! WebSocket's every send must complete within that bound ([`LiveSocket`]); past it
//! the session ends, its socket or stream is closed and its watches are released.
//! Within it, the tab merely falls behind and catches up, or resyncs from a snapshot.

use axum::{
    extract::State,
    http::{HeaderMap, HeaderName, HeaderValue, header},
    response::Response,
};
use futures_util::{SinkExt, StreamExt as _};
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};
use tokio_tungstenite::tungstenite::{Message, protocol::frame::coding::CloseCode};

use protocol::{
    DeviceId,
    api::{ApiError, CommandView, ErrorCode, LiveEvent, LiveParams, LiveRequest},
    auth::Role,
    fleet::{DevicePage, DeviceQuery},
    job::JobId,
};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use hub::{Event, SharedPage, Subscription, Watching};

pub mod http;

use crate::{
    api::Params,
    auth::{Identity, find_identity},
    state::AppState,
    websocket::{self, Socket, Upgrade},
};

/// Devices one tab may watch at once.
const MAX_WATCHED_PER_CLIENT: usize = 32;

/// Jobs one tab may follow at once.
const MAX_FOLLOWED_PER_CLIENT: usize = 16;

/// The longest job id a tab may follow (the server's are 32 characters).
const MAX_JOB_ID: usize = 64;

/// Recent commands sent when a tab starts watching a device or following a job.
const COMMANDS_ON_FOLLOW: usize = 50;

/// Recent commands in each snapshot.
const SNAPSHOT_COMMANDS: usize = 200;

/// How often a tab's fleet page is checked for changes (when any device changed).
const FLEET_PAGE_EVERY: Duration = Duration::from_millis(500);

/// The largest message a tab may send (its requests are a few hundred bytes).
const MAX_INCOMING: usize = 16 * 1024;

/// A stopping server passes on the last events (the hub ending pending commands) until
/// none has come for `LAST_EVENTS_QUIET`, and for `LAST_EVENTS_WITHIN` at most, then
/// closes the socket: a slow or flooded tab cannot hold the stop up.
const LAST_EVENTS_QUIET: Duration = Duration::from_millis(250);
const LAST_EVENTS_WITHIN: Duration = Duration::from_secs(1);

/// How often an open socket's credentials are checked again.
const RECHECK: Duration = Duration::from_secs(60);

/// The live channel's routes (under `/api`), each in the OpenAPI document.
pub fn routes() -> utoipa_axum::router::OpenApiRouter<AppState> {
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::new()
        .routes(routes!(upgrade))
        .routes(routes!(http::stream))
        .routes(routes!(http::open))
        .routes(routes!(http::request, http::close))
        .routes(routes!(http::poll))
}

#[utoipa::path(
get, path = "/v1/live", tag = "live",
summary = "The live channel, as a WebSocket",
description = "A WebSocket upgrade (`Connection: upgrade`, `Upgrade: websocket`, `Sec-WebSocket-Version: 13`, `Sec-WebSocket-Key`). The socket carries `LiveEvent`s to the client and `LiveRequest`s from it (API.md, Live events).",
params(LiveParams),
responses(
    (status = 101, description = "Switching protocols: the socket is open; the first event is a `snapshot`"),
    (status = 400, description = "`bad_upgrade`: not a WebSocket upgrade (the reason is in the message)", body = ApiError),
    (status = 403, description = "`cross_site`: asked from another site's page", body = ApiError),
)
)]
pub async fn upgrade(
    upgrade: Upgrade,
    State(state): State<AppState>,
    who: Identity,
    headers: HeaderMap,
    Params(shows): Params<LiveParams>,
) -> Response {
    let credentials = credentials(&headers);
    let (response, pending) = upgrade.accept();
    // Tracked, so that a stopping server waits for its goodbye.
    let shutdown = state.shutdown.clone();
    shutdown.spawn(async move {
        if let Some(socket) = pending.socket(MAX_INCOMING).await {
            let socket = LiveSocket {
                socket,
                bound: state.write_timeout,
                timeouts: state.write_timeouts.clone(),
            };
            serve(socket, state, who, credentials, shows).await;
        }
    });
    response
}

/// The headers that prove who a session's user is.
pub(crate) type Credentials = Box<[(HeaderName, HeaderValue)]>;

/// Only what proves who is asking, to check it again later: copied, as the request's
/// header values share (and would keep for the session's life) the connection's whole
/// read buffer.
pub(crate) fn credentials(headers: &HeaderMap) -> Credentials {
    let mut credentials = Vec::new();
    for name in [header::AUTHORIZATION, header::COOKIE] {
        for value in headers.get_all(&name) {
            if let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
                credentials.push((name.clone(), value));
            }
        }
    }
    credentials.into_boxed_slice()
}

/// What carries a live session to its tab: the WebSocket ([`Socket`]), or an HTTP
/// session whose events go out as Server-Sent Events or long polls and whose requests
/// come in as POSTs ([`http::Queued`]). The session itself ([`serve`]) is the same
/// whatever carries it.
pub(crate) trait Transport: Send {
    /// The tab's next request; `None` once the tab is gone (the session ends).
    fn request(&mut self) -> impl Future<Output = Option<Incoming>> + Send;
    /// Sends one event, as JSON text.
    fn send(&mut self, text: String) -> impl Future<Output = Result<(), Gone>> + Send;
    /// Holds what is sent from now on until [`Transport::flush`], to send it together.
    fn hold(&mut self);
    /// How many bytes are held.
    fn held(&self) -> usize;
    /// Sends what is held.
    fn flush(&mut self) -> impl Future<Output = Result<(), Gone>> + Send;
    /// Whether events were dropped since last asked because the tab did not take them
    /// in time: it is then sent a fresh snapshot.
    fn overflowed(&mut self) -> bool;
    /// Ends the session, telling the tab why.
    fn close(&mut self, end: End) -> impl Future<Output = ()> + Send;
}

/// A request from a tab, or why it could not be read.
pub(crate) enum Incoming {
    Request(LiveRequest),
    Unreadable(String),
}

/// The tab is gone.
#[derive(Debug)]
pub(crate) struct Gone;

/// Why the server ends a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The user's session or token was revoked or expired.
    SessionEnded,
    /// The server is stopping.
    Stopping,
}

impl End {
    /// The reason as an API error's code and message.
    pub(crate) fn reason(self) -> (ErrorCode, &'static str) {
        match self {
            End::SessionEnded => (ErrorCode::Unauthorized, "your session ended; log in again"),
            End::Stopping => (ErrorCode::ServerStopping, "the server is stopping"),
        }
    }
}

/// A live session's WebSocket: each send (or flush, or the goodbye) must complete
/// within the write bound (`TETHER_WRITE_TIMEOUT_MS`), else the session ends and the
/// socket is dropped, which frees everything it held. Within the bound a tab that reads
/// slowly holds its session up and falls behind the hub's events; once it reads again
/// it gets them, or a fresh snapshot if it fell too far behind.
pub(crate) struct LiveSocket {
    socket: Socket,
    bound: Duration,
    timeouts: crate::write_bound::Timeouts,
}

impl LiveSocket {
    /// What a bounded write came to: a tab that took nothing for the bound is gone.
    fn written<E>(
        &self,
        written: Result<Result<(), E>, tokio::time::error::Elapsed>,
    ) -> Result<(), Gone> {
        match written {
            Ok(result) => result.map_err(|_| Gone),
            Err(_) => {
                self.timeouts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(
                    "ending a live session: its tab took nothing for {:?} (it stopped reading)",
                    self.bound
                );
                Err(Gone)
            }
        }
    }
}

impl Transport for LiveSocket {
    async fn request(&mut self) -> Option<Incoming> {
        loop {
            // Pings are answered by tungstenite (the pong goes out with the next read,
            // which is at once: the session always reads).
            match self.socket.next().await? {
                Ok(Message::Text(text)) => {
                    return Some(match serde_json::from_str::<LiveRequest>(text.as_str()) {
                        Ok(request) => Incoming::Request(request),
                        Err(error) => Incoming::Unreadable(error.to_string()),
                    });
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    async fn send(&mut self, text: String) -> Result<(), Gone> {
        let sent =
            tokio::time::timeout(self.bound, websocket::send_text(&mut self.socket, text)).await;
        self.written(sent)
    }

    fn hold(&mut self) {
        self.socket.get_mut().hold(true);
    }

    fn held(&self) -> usize {
        self.socket.get_ref().held()
    }

    async fn flush(&mut self) -> Result<(), Gone> {
        self.socket.get_mut().hold(false);
        let flushed = tokio::time::timeout(self.bound, SinkExt::flush(&mut self.socket)).await;
        self.written(flushed)
    }

    fn overflowed(&mut self) -> bool {
        // A socket that does not read holds the session up (TCP pushes back, within the
        // write bound), and falls behind the hub: it lags instead.
        false
    }

    async fn close(&mut self, end: End) {
        let code = match end {
            End::SessionEnded => CloseCode::Policy,
            End::Stopping => CloseCode::Away,
        };
        let closed = tokio::time::timeout(
            self.bound,
            websocket::close(&mut self.socket, code, end.reason().1),
        )
        .await;
        let _ = self.written(closed.map(Ok::<(), Gone>));
    }
}

/// What one tab shows: the devices it watches, the jobs it follows and the fleet page
/// it shows.
struct Shows {
    watching: HashMap<DeviceId, Watching>,
    following: HashSet<JobId>,
    fleet: Option<DeviceQuery>,
    /// The page last sent (the devices on it shared with every tab that was sent it).
    page: Option<Arc<SharedPage>>,
    /// Whether the page is to be sent again even if it did not change.
    resend: bool,
    /// The devices' generation the page was last checked at.
    checked: u64,
}

impl Shows {
    fn shows(&self, device: &DeviceId) -> bool {
        self.watching.contains_key(device)
            || self
                .page
                .as_ref()
                .is_some_and(|page| page.ids.contains(device))
    }

    /// Whether the tab shows `command`: its device's page or its job's.
    fn shows_command(&self, command: &CommandView) -> bool {
        self.watching.contains_key(&command.device_id)
            || command
                .job_id
                .as_ref()
                .is_some_and(|job| self.following.contains(job))
    }

    /// Starts following `job` if it exists, `who` may see it and the tab has room:
    /// whether it started (not when it was followed already), or why not. What of it
    /// `who` may see is checked again per event, as for everything else.
    async fn follow(
        &mut self,
        state: &AppState,
        who: &Identity,
        jobs_seen: &mut HashMap<JobId, bool>,
        job: JobId,
    ) -> Result<bool, Refusal> {
        if job.0.is_empty() || job.0.len() > MAX_JOB_ID {
            return Err(refused(
                ErrorCode::InvalidRequest,
                format!("a job id is 1 to {MAX_JOB_ID} bytes long"),
            ));
        }
        if self.following.contains(&job) {
            return Ok(false);
        }
        if self.following.len() >= MAX_FOLLOWED_PER_CLIENT {
            return Err(refused(
                ErrorCode::TooMany,
                format!("a tab follows at most {MAX_FOLLOWED_PER_CLIENT} jobs at once"),
            ));
        }
        let unavailable = || {
            refused(
                ErrorCode::StoreUnavailable,
                "the job cannot be looked up now; follow it again later",
            )
        };
        let known = match state.accounts.job(&job.0).await {
            Ok(found) => found.is_some(),
            Err(error) => {
                tracing::error!("live: cannot look the job {:?} up: {error:#}", job.0);
                return Err(unavailable());
            }
        };
        // `may_see` logs its own store failures.
        let seen = known
            && crate::jobs::may_see(state, who, &job)
                .await
                .map_err(|_| unavailable())?;
        jobs_seen.insert(job.clone(), seen);
        if !seen {
            return Err(refused(
                ErrorCode::NotFound,
                format!("no job {:?} that you may see", job.0),
            ));
        }
        Ok(self.following.insert(job))
    }

    /// Starts watching `device` if `who` may see it and the tab has room: whether it
    /// started (not when it was watched already), or why not.
    fn watch(
        &mut self,
        state: &AppState,
        who: &Identity,
        device: DeviceId,
    ) -> Result<bool, Refusal> {
        if self.watching.contains_key(&device) {
            return Ok(false);
        }
        if self.watching.len() >= MAX_WATCHED_PER_CLIENT {
            return Err(refused(
                ErrorCode::TooMany,
                format!("a tab watches at most {MAX_WATCHED_PER_CLIENT} devices at once"),
            ));
        }
        if !state.groups.may_see(who, device.as_str()) {
            return Err(refused(
                ErrorCode::NotFound,
                format!("no device {:?} that you may see", device.as_str()),
            ));
        }
        let guard = state.hub.watch(&device);
        self.watching.insert(device, guard);
        Ok(true)
    }

    /// The fleet page to send, if the tab shows one and it changed since last sent (or
    /// `force`).
    fn fleet_page(&mut self, state: &AppState, who: &Identity, force: bool) -> Option<LiveEvent> {
        let query = self.fleet.as_ref()?;
        let generation = state.hub.devices_generation();
        if !force && generation == self.checked {
            return None;
        }
        self.checked = generation;
        let page = state.hub.shared_device_page(query, &viewer(who), |id| {
            state.groups.may_see(who, id.as_str())
        });
        if !force
            && !self.resend
            && self
                .page
                .as_ref()
                .is_some_and(|sent| same_page(sent, &page))
        {
            return None;
        }
        let event = LiveEvent::FleetPage {
            query: query.clone(),
            page: page.page.clone(),
        };
        self.page = Some(page);
        self.resend = false;
        Some(event)
    }
}

/// Whether two pages show the same devices in the same order, with the same counts
/// (changes of the devices themselves reach the tab as they happen).
fn same_page(a: &DevicePage, b: &DevicePage) -> bool {
    (a.total, a.offset, a.limit) == (b.total, b.offset, b.limit)
        && a.summary == b.summary
        && a.devices.len() == b.devices.len()
        && a.devices.iter().zip(&b.devices).all(|(a, b)| a.id == b.id)
}

/// A name for the devices `who` may see: every identity of the same name sees the same
/// devices, so they share fleet pages.
fn viewer(who: &Identity) -> String {
    if who.role == Role::Admin {
        return "*".to_owned();
    }
    let mut groups = who.groups.clone();
    groups.sort();
    groups.dedup();
    format!("groups:{}", groups.join("\n"))
}

/// Why a tab's request was not done: sent as a `refused` event.
struct Refusal {
    code: ErrorCode,
    message: String,
}

fn refused(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

impl From<Refusal> for LiveEvent {
    fn from(refusal: Refusal) -> Self {
        LiveEvent::Refused {
            code: refusal.code.as_str().to_owned(),
            message: refusal.message,
        }
    }
}

/// What a tab sent that could not be read, said back in at most this many bytes (the
/// parser's message can quote the input).
const MAX_REFUSAL: usize = 200;

/// `text` cut to at most `max` bytes, at a character boundary.
fn clipped(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// The ids of a comma-separated list in the upgrade's address, at most `max` of them
/// (what a tab may hold): the rest is refused at once, in one refusal, rather than each
/// looked up.
fn listed<'a>(
    ids: Option<&'a str>,
    max: usize,
    what: &str,
    refusals: &mut Vec<LiveEvent>,
) -> Vec<&'a str> {
    let mut ids: Vec<&str> = ids
        .into_iter()
        .flat_map(|ids| ids.split(','))
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .collect();
    if ids.len() > max {
        refusals.push(
            refused(
                ErrorCode::TooMany,
                format!(
                    "{} {what} in the address; a tab holds at most {max}",
                    ids.len()
                ),
            )
            .into(),
        );
        ids.truncate(max);
    }
    ids
}

/// What the upgrade's address says the tab shows, and what of it was refused (sent
/// after the snapshot). Jobs are followed by the caller: that is checked in the store.
fn shows_from(state: &AppState, who: &Identity, params: &LiveParams) -> (Shows, Vec<LiveEvent>) {
    let mut refusals = Vec::new();
    let mut shows = Shows {
        watching: HashMap::new(),
        following: HashSet::new(),
        fleet: None,
        page: None,
        resend: false,
        checked: 0,
    };
    for id in listed(
        params.watch.as_deref(),
        MAX_WATCHED_PER_CLIENT,
        "devices to watch",
        &mut refusals,
    ) {
        match DeviceId::new(id) {
            Ok(device) => {
                if let Err(refusal) = shows.watch(state, who, device) {
                    refusals.push(refusal.into());
                }
            }
            Err(error) => refusals.push(
                refused(
                    ErrorCode::InvalidRequest,
                    clipped(format!("watch: {error}"), MAX_REFUSAL),
                )
                .into(),
            ),
        }
    }
    if let Some(json) = params.fleet.as_deref() {
        match serde_json::from_str::<DeviceQuery>(json) {
            Ok(query) => match query.check() {
                Ok(()) => shows.fleet = Some(query),
                Err(why) => refusals.push(refused(ErrorCode::InvalidQuery, why).into()),
            },
            Err(error) => refusals.push(
                refused(
                    ErrorCode::InvalidQuery,
                    clipped(format!("fleet: {error}"), MAX_REFUSAL),
                )
                .into(),
            ),
        }
    }
    (shows, refusals)
}

/// One tab's live session, over whatever `out` is: the snapshot (and what the tab's
/// address asked for), then every event it shows, its requests answered, its identity
/// checked again every [`RECHECK`], a fresh snapshot whenever it fell behind, until the
/// tab is gone, its user's session ended or the server stops.
pub(crate) async fn serve(
    mut out: impl Transport,
    state: AppState,
    mut who: Identity,
    credentials: Credentials,
    params: LiveParams,
) {
    let _served = state.live_sessions.served();
    let out = &mut out;
    let shutdown = &state.shutdown;
    // Dropped with the session, which releases every watch it held.
    let (mut shows, mut refusals) = shows_from(&state, &who, &params);
    // Whether this user may see each job they were sent events of (every device of it):
    // asked of the store once per job, forgotten when the identity is checked again.
    let mut jobs_seen: HashMap<JobId, bool> = HashMap::new();
    let jobs = listed(
        params.jobs.as_deref(),
        MAX_FOLLOWED_PER_CLIENT,
        "jobs to follow",
        &mut refusals,
    );
    for id in jobs {
        let job = JobId(id.to_owned());
        if let Err(refusal) = Box::pin(shows.follow(&state, &who, &mut jobs_seen, job)).await {
            refusals.push(refusal.into());
        }
    }
    // The page first: its devices are then in the snapshot.
    let first_page = shows.fleet_page(&state, &who, true);
    let (first, mut events) = snapshot(&state, &shows, &who);
    let refusals = refusals.into_iter().map(|r| Outgoing::Own(Box::new(r)));
    let opening = std::iter::once(Outgoing::from(first)).chain(first_page.map(Outgoing::from));
    for event in opening.chain(refusals) {
        if send(out, &state, &who, &shows, &mut jobs_seen, event)
            .await
            .is_err()
        {
            return;
        }
    }
    let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK);
    let mut fleet_check = tokio::time::interval(FLEET_PAGE_EVERY);
    fleet_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Whether the tab fell behind (the hub's events, or what the transport holds
        // for it): then it resyncs from a fresh snapshot.
        let mut missed = None;
        tokio::select! {
            // Boxed, as other rarely taken paths: what a session keeps between events is
            // only as large as its common paths.
            _ = recheck.tick() => match Box::pin(recheck_identity(&state, &credentials)).await {
                Ok(Some(fresh)) if fresh.name == who.name => {
                    shows.watching.retain(|device, _| state.groups.may_see(&fresh, device.as_str()));
                    jobs_seen.clear();
                    who = fresh;
                    // The page may hold other devices now.
                    shows.resend = true;
                    shows.checked = shows.checked.wrapping_sub(1);
                }
                Ok(_) | Err(_) => {
                    out.close(End::SessionEnded).await;
                    return;
                }
            },
            _ = fleet_check.tick(), if shows.fleet.is_some() => {
                if let Some(page) = shows.fleet_page(&state, &who, false)
                    && send(out, &state, &who, &shows, &mut jobs_seen, page).await.is_err()
                {
                    return;
                }
            },
            () = shutdown.stopping() => {
                // The tab learns how its pending commands ended, then that we are gone.
                let last_events = async {
                    while let Ok(Ok(event)) = tokio::time::timeout(LAST_EVENTS_QUIET, events.recv()).await {
                        if send(out, &state, &who, &shows, &mut jobs_seen, event).await.is_err() {
                            return false;
                        }
                    }
                    true
                };
                if !tokio::time::timeout(LAST_EVENTS_WITHIN, last_events).await.unwrap_or(true) {
                    return;
                }
                out.close(End::Stopping).await;
                return;
            }
            event = events.recv() => match event {
                Ok(event) => match Box::pin(send_batch(out, &state, &who, &shows, &mut jobs_seen, event, &mut events)).await {
                    Ok(lagged) => missed = lagged,
                    Err(Gone) => return,
                },
                Err(RecvError::Lagged(lagged)) => missed = Some(lagged),
                Err(RecvError::Closed) => return,
            },
            incoming = out.request() => {
                let answer = match incoming {
                    Some(Incoming::Request(request)) => {
                        Box::pin(answer(&state, &who, &mut shows, &mut jobs_seen, request)).await
                    }
                    Some(Incoming::Unreadable(error)) => {
                        tracing::debug!("refusing a live client's message: {error}");
                        vec![refused(ErrorCode::InvalidRequest, clipped(error, MAX_REFUSAL)).into()]
                    }
                    None => return,
                };
                for answer in answer {
                    if send(out, &state, &who, &shows, &mut jobs_seen, answer).await.is_err() {
                        return;
                    }
                }
            },
        }
        if out.overflowed() {
            missed = Some(missed.unwrap_or(0));
        }
        if let Some(missed) = missed
            && Box::pin(resync(
                out,
                &state,
                &who,
                &mut shows,
                &mut jobs_seen,
                &mut events,
                missed,
            ))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Does what a tab asked: the events that answer it (its state at once, or why not).
async fn answer(
    state: &AppState,
    who: &Identity,
    shows: &mut Shows,
    jobs_seen: &mut HashMap<JobId, bool>,
    request: LiveRequest,
) -> Vec<LiveEvent> {
    let hub = &state.hub;
    match request {
        LiveRequest::Watch { device_id } => {
            // The tab may not have it yet: its current state and its recent commands,
            // at once.
            match shows.watch(state, who, device_id.clone()) {
                Ok(true) => {
                    let device = hub
                        .device(&device_id)
                        .map(|device| LiveEvent::DeviceUpdated { device });
                    let commands = hub
                        .recent_commands(Some(&device_id), COMMANDS_ON_FOLLOW)
                        .into_iter()
                        .rev()
                        .map(|command| LiveEvent::CommandUpdated { command });
                    device.into_iter().chain(commands).collect()
                }
                Ok(false) => Vec::new(),
                Err(refusal) => vec![refusal.into()],
            }
        }
        LiveRequest::Unwatch { device_id } => {
            shows.watching.remove(&device_id);
            Vec::new()
        }
        LiveRequest::Follow { job_id } => {
            // The tab has read the job and its devices; the commands of it this replica
            // knows come at once, later changes as they happen.
            match shows.follow(state, who, jobs_seen, job_id.clone()).await {
                Ok(true) => hub
                    .commands_where(COMMANDS_ON_FOLLOW, |c| c.job_id.as_ref() == Some(&job_id))
                    .into_iter()
                    .rev()
                    .map(|command| LiveEvent::CommandUpdated { command })
                    .collect(),
                Ok(false) => Vec::new(),
                Err(refusal) => vec![refusal.into()],
            }
        }
        LiveRequest::Unfollow { job_id } => {
            shows.following.remove(&job_id);
            Vec::new()
        }
        LiveRequest::Fleet { query } => match query {
            Some(query) => match query.check() {
                Ok(()) => {
                    shows.fleet = Some(query);
                    shows.fleet_page(state, who, true).into_iter().collect()
                }
                Err(why) => vec![refused(ErrorCode::InvalidQuery, why).into()],
            },
            None => {
                shows.fleet = None;
                shows.page = None;
                Vec::new()
            }
        },
    }
}

/// A snapshot of what the tab shows, and the events that follow it.
fn snapshot(state: &AppState, shows: &Shows, who: &Identity) -> (LiveEvent, Subscription) {
    state.hub.subscribe_to(
        SNAPSHOT_COMMANDS,
        |id| shows.shows(id),
        |command| {
            shows.shows_command(command) && state.groups.may_see(who, command.device_id.as_str())
        },
    )
}

/// Most events written together (see [`send_batch`]), and most bytes.
const BATCH_EVENTS: usize = 64;
const BATCH_BYTES: usize = 32 * 1024;

/// Sends `first` and whatever events are already waiting behind it (up to
/// [`BATCH_EVENTS`] or [`BATCH_BYTES`]) in one write: a socket that fell behind a burst
/// catches up in a few system calls instead of one per event. `Some(missed)` if it
/// found it had fallen too far behind (the caller resyncs it).
async fn send_batch(
    out: &mut impl Transport,
    state: &AppState,
    who: &Identity,
    shows: &Shows,
    jobs_seen: &mut HashMap<JobId, bool>,
    first: Event,
    events: &mut Subscription,
) -> Result<Option<u64>, Gone> {
    out.hold();
    let mut lagged = None;
    let mut sent = send(out, state, who, shows, jobs_seen, first).await;
    for _ in 1..BATCH_EVENTS {
        if sent.is_err() || out.held() >= BATCH_BYTES {
            break;
        }
        match events.try_recv() {
            Ok(event) => sent = send(out, state, who, shows, jobs_seen, event).await,
            Err(TryRecvError::Lagged(missed)) => {
                lagged = Some(missed);
                break;
            }
            // Nothing more now, or the hub is gone (the next `recv` says so).
            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
        }
    }
    let flushed = out.flush().await;
    sent?;
    flushed?;
    Ok(lagged)
}

/// Sends a tab that fell `missed` events behind a fresh snapshot (and fleet page), and
/// follows the events after it from then on.
async fn resync(
    out: &mut impl Transport,
    state: &AppState,
    who: &Identity,
    shows: &mut Shows,
    jobs_seen: &mut HashMap<JobId, bool>,
    events: &mut Subscription,
    missed: u64,
) -> Result<(), Gone> {
    tracing::debug!("a live client missed {missed} events; resyncing it");
    // The page first, as when it connected: its devices are then in the snapshot.
    let page = shows.fleet_page(state, who, true);
    let (fresh_snapshot, fresh) = snapshot(state, shows, who);
    *events = fresh;
    for event in std::iter::once(fresh_snapshot).chain(page) {
        send(out, state, who, shows, jobs_seen, event).await?;
    }
    Ok(())
}

/// [`find_identity`] again, from a socket's credentials.
async fn recheck_identity(
    state: &AppState,
    credentials: &Credentials,
) -> Result<Option<Identity>, crate::error::Failure> {
    let headers: HeaderMap = credentials.iter().cloned().collect();
    find_identity(state, &headers).await
}

/// What a socket sends: an event of its own (a snapshot, a fleet page, an answer), or
/// one of the hub's, shared with every socket and written as JSON once.
enum Outgoing {
    Own(Box<LiveEvent>),
    Shared(Event),
}

impl From<LiveEvent> for Outgoing {
    fn from(event: LiveEvent) -> Self {
        Self::Own(Box::new(event))
    }
}

impl From<Event> for Outgoing {
    fn from(event: Event) -> Self {
        Self::Shared(event)
    }
}

/// Sends `event` as far as `who` may see it (nothing of devices outside their groups)
/// and the tab shows it (a device's changes and readings only while it is watched or
/// on the fleet page).
async fn send(
    out: &mut impl Transport,
    state: &AppState,
    who: &Identity,
    shows: &Shows,
    jobs_seen: &mut HashMap<JobId, bool>,
    event: impl Into<Outgoing>,
) -> Result<(), Gone> {
    let outgoing = event.into();
    let event: &LiveEvent = match &outgoing {
        Outgoing::Own(event) => event,
        Outgoing::Shared(event) => event,
    };
    match event {
        LiveEvent::DeviceUpdated { device } if !shows.shows(&device.id) => return Ok(()),
        LiveEvent::Telemetry { reading } if !shows.shows(&reading.device_id) => return Ok(()),
        LiveEvent::CommandUpdated { command } if !shows.shows_command(command) => return Ok(()),
        LiveEvent::JobTarget { target } if !shows.following.contains(&target.job_id) => {
            return Ok(());
        }
        _ => {}
    }
    if let LiveEvent::JobUpdated { job } = event
        && who.role != Role::Admin
    {
        let may_see = match jobs_seen.get(&job.id) {
            Some(&seen) => seen,
            None => {
                let seen = Box::pin(crate::jobs::may_see(state, who, &job.id))
                    .await
                    .unwrap_or(false);
                jobs_seen.insert(job.id.clone(), seen);
                seen
            }
        };
        if !may_see {
            return Ok(());
        }
    }
    if !visible(state, who, event) {
        return Ok(());
    }
    let text = match outgoing {
        Outgoing::Shared(event) => event.json().to_owned(),
        Outgoing::Own(event) => match *event {
            LiveEvent::Snapshot {
                mut devices,
                mut commands,
            } => {
                let may_see = |device: &DeviceId| state.groups.may_see(who, device.as_str());
                devices.retain(|d| may_see(&d.id));
                commands.retain(|c| may_see(&c.device_id));
                json(&LiveEvent::Snapshot { devices, commands })
            }
            event => json(&event),
        },
    };
    out.send(text).await
}

fn json(event: &LiveEvent) -> String {
    // Serializing these types cannot fail: strings, numbers and JSON values only.
    serde_json::to_string(event).expect("live events always serialize")
}

/// Whether `who` may see `event` (a snapshot is filtered instead, when sent).
fn visible(state: &AppState, who: &Identity, event: &LiveEvent) -> bool {
    let may_see = |device: &DeviceId| state.groups.may_see(who, device.as_str());
    match event {
        LiveEvent::DeviceUpdated { device } => may_see(&device.id),
        LiveEvent::CommandUpdated { command } => may_see(&command.device_id),
        LiveEvent::Telemetry { reading } => may_see(&reading.device_id),
        LiveEvent::JobTarget { target } => may_see(&target.device_id),
        LiveEvent::Snapshot { .. }
        | LiveEvent::JobUpdated { .. }
        | LiveEvent::FleetPage { .. }
        | LiveEvent::Refused { .. } => true,
    }
}
