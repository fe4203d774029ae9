//! The live channel over plain HTTP, for networks whose proxies let no WebSocket
//! through: the very session the WebSocket carries ([`super::serve`]: a snapshot, then
//! every event the tab shows, the same filtering, limits, refusals, checks of the
//! user's session and resyncs), its events carried by Server-Sent Events or by long
//! polls, its requests posted.
//!
//! - `GET /api/v1/live/stream?watch=&fleet=&jobs=` (as the upgrade's address): a
//!   `text/event-stream` whose first event is `session` (`{"session":"<id>"}`), then
//!   each live event as a message (`data:` its JSON), a comment every
//!   [`KEEP_ALIVE`] so that proxies keep it open, and last an `end` event
//!   (`{"code","message"}`) when the server ends the session. Closing the stream ends
//!   the session.
//! - `POST /api/v1/live/sessions?watch=&fleet=&jobs=`: opens a session for long polls,
//!   201 `{"session":"<id>"}`. `GET /api/v1/live/sessions/<id>/events?after=<n>&wait_ms=<ms>`
//!   answers `{"events":[…],"next":<n>,"end"?:{"code","message"}}` as soon as there
//!   are events numbered above `after` (0 at first; then the `next` of the last
//!   answer, which also tells the server what the tab has, so that an answer lost on
//!   the way is sent again), or after `wait_ms` (25 s unless told, at most 30 s) with
//!   none. A newer poll of the same session makes an older one still waiting answer at
//!   once. A session no poll waited on for the idle time
//!   (`TETHER_LIVE_SESSION_IDLE_MS`, a minute unless told) expires.
//! - `POST /api/v1/live/sessions/<id>` with a request as the WebSocket takes it (JSON,
//!   `application/json`, at most 16 KiB): 202, its answer comes as events, in order.
//!   `DELETE /api/v1/live/sessions/<id>` ends the session.
//!
//! A session belongs to the user who opened it: another user's id is as unknown as
//! one that never was (404 `unknown_session`); an ended one is 410 with why
//! (`session_expired`, `session_closed`, `unauthorized`, `server_stopping`). A user
//! holds at most [`MAX_SESSIONS_PER_USER`] sessions, the server [`MAX_SESSIONS`]. What
//! a session holds for its tab is bounded ([`MAX_HELD_EVENTS`], [`MAX_HELD_BYTES`]):
//! past that it drops what it holds and sends a fresh snapshot instead, never a gap.
//! Opening a stream or a session and polling are refused to other sites' pages, as the
//! WebSocket upgrade and every POST are (`guard.rs`).

use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    fmt,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Json,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse as _, Response},
};
use protocol::api::{LiveParams, LiveRequest};
use serde::Deserialize;
use tokio::{
    sync::{Notify, mpsc},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use super::{End, Gone, Incoming, MAX_INCOMING, MAX_REFUSAL, Transport, clipped, credentials};
use crate::{api::Params, auth::Identity, error::Failure, guard, state::AppState};
use protocol::api::{ApiError, ErrorCode};

/// Sessions one user holds at once (over HTTP; WebSockets are not counted).
pub const MAX_SESSIONS_PER_USER: usize = 32;

/// Sessions the server holds at once.
pub const MAX_SESSIONS: usize = 10_000;

/// Events a session holds for its tab; past that it resyncs the tab.
pub const MAX_HELD_EVENTS: usize = 2_048;

/// Bytes of events a session holds for its tab (beyond one event, however large:
/// a snapshot may be larger); past that it resyncs the tab.
pub const MAX_HELD_BYTES: usize = 2 * 1024 * 1024;

/// Requests waiting to be done in one session; more are refused (429).
const MAX_WAITING_REQUESTS: usize = 16;

/// How long a poll waits for events unless told, and at most.
const POLL_WAIT: Duration = Duration::from_secs(25);
const MAX_POLL_WAIT: Duration = Duration::from_secs(30);

/// Most bytes of events in one poll's answer or one write to a stream (at least one
/// event, however large).
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// How often an idle event stream says it is still there.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Ended sessions remembered, to say why rather than "unknown".
const REMEMBER_ENDED: usize = 4_096;

/// The HTTP sessions of this server.
pub struct Sessions {
    idle: Duration,
    registry: Mutex<Registry>,
    /// Live sessions being served, over any transport (WebSockets included).
    serving: AtomicUsize,
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sessions")
            .field("idle", &self.idle)
            .field("open", &lock(&self.registry).open.len())
            .finish()
    }
}

#[derive(Default)]
struct Registry {
    open: HashMap<String, Arc<Channel>>,
    per_user: HashMap<String, usize>,
    /// Why each recently ended session ended, and whose it was.
    ended: HashMap<String, (String, Ending)>,
    ended_order: VecDeque<String>,
}

/// Why a session ended: the API error a late poll or request is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ending {
    code: ErrorCode,
    message: &'static str,
}

const CLOSED: Ending = Ending {
    code: ErrorCode::SessionClosed,
    message: "the live session was closed; open a new one",
};

const EXPIRED: Ending = Ending {
    code: ErrorCode::SessionExpired,
    message: "the live session expired (no poll came for too long); open a new one",
};

impl From<End> for Ending {
    fn from(end: End) -> Self {
        let (code, message) = end.reason();
        Self { code, message }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; if something did, the data is still
    // whole (every change is a single step).
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Sessions {
    /// Sessions that expire after `idle` with no poll waiting.
    pub fn new(idle: Duration) -> Self {
        Self {
            idle,
            registry: Mutex::default(),
            serving: AtomicUsize::new(0),
        }
    }

    /// How many live sessions are being served, over any transport.
    pub fn serving(&self) -> usize {
        self.serving.load(Ordering::Relaxed)
    }

    /// Counts a session being served until the guard is dropped.
    pub(crate) fn served(self: &Arc<Self>) -> Served {
        self.serving.fetch_add(1, Ordering::Relaxed);
        Served(self.clone())
    }

    /// How many sessions are open.
    pub fn open_count(&self) -> usize {
        lock(&self.registry).open.len()
    }

    /// A new session of `who`'s, if they and the server have room.
    fn open(&self, who: &Identity, streamed: bool) -> Result<(Arc<Channel>, Requests), Failure> {
        let mut registry = lock(&self.registry);
        if registry.open.len() >= MAX_SESSIONS {
            return Err(Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::TooManySessions,
                "the server holds as many live sessions as it can; try again later",
            ));
        }
        let held = registry.per_user.get(&who.name).copied().unwrap_or(0);
        if held >= MAX_SESSIONS_PER_USER {
            return Err(Failure::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooManySessions,
                format!(
                    "you hold {MAX_SESSIONS_PER_USER} live sessions already; close one \
                     (or let it expire) first"
                ),
            ));
        }
        let id = new_id()?;
        let (sender, requests) = mpsc::channel(MAX_WAITING_REQUESTS);
        let channel = Arc::new(Channel {
            id: id.clone(),
            owner: who.name.clone(),
            streamed,
            requests: sender,
            outbox: Mutex::new(Outbox::new(streamed)),
            ready: Notify::new(),
            ended: CancellationToken::new(),
        });
        registry.open.insert(id, channel.clone());
        *registry.per_user.entry(who.name.clone()).or_default() += 1;
        Ok((channel, requests))
    }

    /// `who`'s session `id`, or why not.
    fn find(&self, id: &str, who: &Identity) -> Result<Arc<Channel>, Failure> {
        if !is_id(id) {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidSession,
                "a live session id is 32 lowercase hex digits",
            ));
        }
        let registry = lock(&self.registry);
        if let Some(channel) = registry.open.get(id)
            && channel.owner == who.name
        {
            return Ok(channel.clone());
        }
        if let Some((owner, ending)) = registry.ended.get(id)
            && *owner == who.name
        {
            return Err(Failure::new(StatusCode::GONE, ending.code, ending.message));
        }
        Err(Failure::new(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownSession,
            format!("no live session {id} of yours; open a new one"),
        ))
    }

    /// Forgets an ended session, remembering why it ended.
    fn remove(&self, channel: &Channel, ending: Ending) {
        let mut registry = lock(&self.registry);
        if registry.open.remove(&channel.id).is_none() {
            return;
        }
        if let Some(held) = registry.per_user.get_mut(&channel.owner) {
            *held -= 1;
            if *held == 0 {
                registry.per_user.remove(&channel.owner);
            }
        }
        if registry.ended_order.len() >= REMEMBER_ENDED
            && let Some(oldest) = registry.ended_order.pop_front()
        {
            registry.ended.remove(&oldest);
        }
        registry.ended_order.push_back(channel.id.clone());
        registry
            .ended
            .insert(channel.id.clone(), (channel.owner.clone(), ending));
    }
}

/// A live session being served; counted until dropped.
pub(crate) struct Served(Arc<Sessions>);

impl Drop for Served {
    fn drop(&mut self) {
        self.0.serving.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A new session id: 128 random bits as hex.
fn new_id() -> Result<String, Failure> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|error| {
        tracing::error!("no randomness from the OS for a live session: {error}");
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "cannot make a session id now",
        )
    })?;
    Ok(hex::encode(bytes))
}

fn is_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

type Requests = mpsc::Receiver<LiveRequest>;

/// One HTTP session as the handlers reach it.
struct Channel {
    id: String,
    owner: String,
    /// Its events go to an event stream (else to polls).
    streamed: bool,
    requests: mpsc::Sender<LiveRequest>,
    outbox: Mutex<Outbox>,
    /// Woken when events or the end arrive, and when a newer poll comes.
    ready: Notify,
    /// Cancelled when the session ends (or is to end: its stream closed, a DELETE).
    ended: CancellationToken,
}

impl Channel {
    /// Ends the session (from outside it) unless it ended already.
    fn close(&self, ending: Ending) {
        lock(&self.outbox).end.get_or_insert(ending);
        self.ended.cancel();
        self.ready.notify_waiters();
    }
}

/// What a session holds for its tab until taken, numbered from 1.
struct Outbox {
    events: VecDeque<(u64, String)>,
    bytes: usize,
    /// The number the next event gets.
    next: u64,
    /// Events were dropped for want of room; the session has not resynced yet.
    overflowed: bool,
    /// Whether events are being held to be released together.
    holding: bool,
    /// Bytes pushed since holding started.
    held: usize,
    /// Why the session ended, once it did.
    end: Option<Ending>,
    /// Streams and polls waiting on it now.
    attached: usize,
    /// When the last one left (or the session was opened).
    detached_at: Instant,
    /// Polls so far: an older poll gives way to a newer one.
    polls: u64,
}

impl Outbox {
    fn new(streamed: bool) -> Self {
        Self {
            events: VecDeque::new(),
            bytes: 0,
            next: 1,
            overflowed: false,
            holding: false,
            held: 0,
            end: None,
            attached: usize::from(streamed),
            detached_at: Instant::now(),
            polls: 0,
        }
    }

    /// Holds `text` for the tab, unless it is out of room: then everything held is
    /// dropped and the session is to resync (until it has, nothing more is held).
    fn push(&mut self, text: String) {
        if self.overflowed {
            return;
        }
        let full = self.events.len() >= MAX_HELD_EVENTS
            || self.bytes.saturating_add(text.len()) > MAX_HELD_BYTES;
        if full && !self.events.is_empty() {
            self.events.clear();
            self.bytes = 0;
            self.overflowed = true;
            return;
        }
        self.bytes += text.len();
        self.held += text.len();
        self.events.push_back((self.next, text));
        self.next += 1;
    }

    /// Whether the session is to resync, once: the next event it holds is a snapshot.
    fn take_overflow(&mut self) -> bool {
        std::mem::take(&mut self.overflowed)
    }

    /// Forgets the events the tab has: those numbered up to `after`.
    fn ack(&mut self, after: u64) {
        while let Some((number, text)) = self.events.front() {
            if *number > after {
                break;
            }
            self.bytes -= text.len();
            self.events.pop_front();
        }
    }

    /// Whether there are events numbered above `after`.
    fn has_after(&self, after: u64) -> bool {
        self.events
            .back()
            .is_some_and(|(number, _)| *number > after)
    }

    /// The events numbered above `after`, as a JSON array's items, up to
    /// [`MAX_ANSWER_BYTES`] (at least one), and the number of the last.
    fn after(&self, after: u64) -> (String, u64) {
        let mut items = String::new();
        let mut last = after;
        for (number, text) in self.events.iter().filter(|(number, _)| *number > after) {
            if !items.is_empty() {
                if items.len() + text.len() > MAX_ANSWER_BYTES {
                    break;
                }
                items.push(',');
            }
            items.push_str(text);
            last = *number;
        }
        (items, last)
    }

    /// Takes events off the front as Server-Sent Events, up to [`MAX_ANSWER_BYTES`]
    /// (at least one).
    fn take_stream(&mut self) -> String {
        let mut chunk = String::new();
        while let Some((_, text)) = self.events.front() {
            if !chunk.is_empty() && chunk.len() + text.len() > MAX_ANSWER_BYTES {
                break;
            }
            let (_, text) = self.events.pop_front().expect("there is a front");
            self.bytes -= text.len();
            // Compact JSON holds no line break: one `data:` line per event.
            chunk.push_str("data: ");
            chunk.push_str(&text);
            chunk.push_str("\n\n");
        }
        chunk
    }
}

/// A session's side of an HTTP session: requests from its channel, events into its
/// outbox.
pub(crate) struct Queued {
    channel: Arc<Channel>,
    requests: Requests,
    sessions: Arc<Sessions>,
}

impl Transport for Queued {
    async fn request(&mut self) -> Option<Incoming> {
        loop {
            let idle_in = {
                let outbox = lock(&self.channel.outbox);
                if outbox.attached > 0 {
                    self.sessions.idle
                } else {
                    (outbox.detached_at + self.sessions.idle)
                        .saturating_duration_since(Instant::now())
                }
            };
            if idle_in.is_zero() {
                lock(&self.channel.outbox).end.get_or_insert(EXPIRED);
                return None;
            }
            tokio::select! {
                request = self.requests.recv() => return request.map(Incoming::Request),
                () = self.channel.ended.cancelled() => return None,
                () = tokio::time::sleep(idle_in) => {}
            }
        }
    }

    async fn send(&mut self, text: String) -> Result<(), Gone> {
        if self.channel.ended.is_cancelled() {
            return Err(Gone);
        }
        let wake = {
            let mut outbox = lock(&self.channel.outbox);
            outbox.push(text);
            !outbox.holding
        };
        if wake {
            self.channel.ready.notify_waiters();
        }
        Ok(())
    }

    fn hold(&mut self) {
        let mut outbox = lock(&self.channel.outbox);
        outbox.holding = true;
        outbox.held = 0;
    }

    fn held(&self) -> usize {
        lock(&self.channel.outbox).held
    }

    async fn flush(&mut self) -> Result<(), Gone> {
        lock(&self.channel.outbox).holding = false;
        self.channel.ready.notify_waiters();
        Ok(())
    }

    fn overflowed(&mut self) -> bool {
        lock(&self.channel.outbox).take_overflow()
    }

    async fn close(&mut self, end: End) {
        lock(&self.channel.outbox).end.get_or_insert(end.into());
        self.channel.ready.notify_waiters();
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        let ending = *lock(&self.channel.outbox).end.get_or_insert(CLOSED);
        // Streams write what is left and the end; waiting polls answer.
        self.channel.ended.cancel();
        self.channel.ready.notify_waiters();
        self.sessions.remove(&self.channel, ending);
    }
}

/// Refuses what other sites' pages ask (a GET that opens or reads a session would
/// otherwise let any page spend its visitor's sessions).
fn same_site(state: &AppState, headers: &HeaderMap) -> Result<(), Failure> {
    guard::same_site(headers, &state.allowed_origins).map_err(|why| {
        tracing::warn!("refused a cross-site live session request: {why}");
        Failure::new(StatusCode::FORBIDDEN, ErrorCode::CrossSite, why)
    })
}

/// Opens a session of `who`'s and starts it.
fn start(
    state: &AppState,
    who: Identity,
    headers: &HeaderMap,
    params: LiveParams,
    streamed: bool,
) -> Result<Arc<Channel>, Failure> {
    let (channel, requests) = state.live_sessions.open(&who, streamed)?;
    let queued = Queued {
        channel: channel.clone(),
        requests,
        sessions: state.live_sessions.clone(),
    };
    let credentials = credentials(headers);
    // Tracked, so that a stopping server waits for its goodbye.
    state.shutdown.spawn(super::serve(
        queued,
        state.clone(),
        who,
        credentials,
        params,
    ));
    Ok(channel)
}

/// `GET /api/v1/live/stream`: a session whose events are Server-Sent Events.
#[utoipa::path(
get, path = "/v1/live/stream", tag = "live",
summary = "The live channel, as Server-Sent Events",
description = "First `event: session` with `{\"session\"}`, then every `LiveEvent` as a plain message, and `event: end` with `{\"code\",\"message\"}` when the server ends the session.",
params(LiveParams),
responses(
    (status = 200, description = "The event stream", content_type = "text/event-stream", body = String),
    (status = 403, description = "`cross_site`: asked from another site's page", body = ApiError),
    (status = 429, description = "`too_many_sessions`: the user holds 32 sessions", body = ApiError),
    (status = 503, description = "`too_many_sessions`: the server holds 10,000 sessions", body = ApiError),
)
)]
pub async fn stream(
    State(state): State<AppState>,
    who: Identity,
    headers: HeaderMap,
    Params(params): Params<LiveParams>,
) -> Result<Response, Failure> {
    same_site(&state, &headers)?;
    let channel = start(&state, who, &headers, params, true)?;
    let first = format!(
        "event: session\ndata: {}\n\n",
        serde_json::json!({ "session": channel.id })
    );
    let stream = futures_util::stream::unfold(
        StreamState {
            channel: StreamGuard(channel),
            first: Some(first),
            done: false,
        },
        next_chunk,
    );
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx and others would buffer the stream otherwise.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Ends its session when the stream is dropped (the tab went away).
struct StreamGuard(Arc<Channel>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.close(CLOSED);
    }
}

struct StreamState {
    channel: StreamGuard,
    first: Option<String>,
    done: bool,
}

/// The stream's next write: the session's id first, then events as they come (a
/// comment when none came for [`KEEP_ALIVE`]), the end last.
async fn next_chunk(mut at: StreamState) -> Option<(Result<Bytes, Infallible>, StreamState)> {
    if at.done {
        return None;
    }
    if let Some(first) = at.first.take() {
        return Some((Ok(Bytes::from(first)), at));
    }
    let channel = at.channel.0.clone();
    loop {
        let notified = channel.ready.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let chunk = {
            let mut outbox = lock(&channel.outbox);
            if !outbox.events.is_empty() && !outbox.holding {
                Some(outbox.take_stream())
            } else if let Some(ending) = outbox.end.filter(|_| outbox.events.is_empty()) {
                at.done = true;
                Some(format!(
                    "event: end\ndata: {}\n\n",
                    serde_json::json!({ "code": ending.code, "message": ending.message })
                ))
            } else {
                None
            }
        };
        if let Some(chunk) = chunk {
            return Some((Ok(Bytes::from(chunk)), at));
        }
        tokio::select! {
            () = &mut notified => {}
            // The end is set before this is cancelled: the next turn writes it.
            () = channel.ended.cancelled() => {}
            () = tokio::time::sleep(KEEP_ALIVE) => {
                return Some((Ok(Bytes::from_static(b": still here\n\n")), at));
            }
        }
    }
}

/// `POST /api/v1/live/sessions`: a session whose events are polled.
#[utoipa::path(
post, path = "/v1/live/sessions", tag = "live",
summary = "Open a live session whose events are polled",
params(LiveParams),
responses(
    (status = 201, description = "The session", body = LiveSession),
    (status = 403, description = "`cross_site`: asked from another site's page", body = ApiError),
    (status = 429, description = "`too_many_sessions`: the user holds 32 sessions", body = ApiError),
    (status = 503, description = "`too_many_sessions`: the server holds 10,000 sessions", body = ApiError),
)
)]
pub async fn open(
    State(state): State<AppState>,
    who: Identity,
    headers: HeaderMap,
    Params(params): Params<LiveParams>,
) -> Result<Response, Failure> {
    let channel = start(&state, who, &headers, params, false)?;
    Ok((
        StatusCode::CREATED,
        Json(LiveSession {
            session: channel.id.clone(),
        }),
    )
        .into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PollParams {
    /// The `next` of the previous answer; 0 for the first poll.
    #[serde(default)]
    after: u64,
    /// How long to wait for events: 25,000 ms if absent, at most 30,000.
    wait_ms: Option<u64>,
}

/// The answer of `POST /api/v1/live/sessions`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct LiveSession {
    /// The session's id, for polls and requests.
    pub session: String,
}

/// A poll's answer (described here; written by `poll` as text).
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct LivePoll {
    /// The `after` of the next poll.
    next: u64,
    /// The events numbered above `after` (at most 256 KiB of them).
    events: Vec<protocol::api::LiveEvent>,
    /// Why the server ended the session, with its last events.
    end: Option<ApiError>,
}

/// `GET /api/v1/live/sessions/{id}/events`: the events after `after`, once there are
/// some (or the wait is over).
#[utoipa::path(
get, path = "/v1/live/sessions/{id}/events", tag = "live",
summary = "Poll a live session's events",
params(("id" = String, Path, description = "The session's id"), PollParams),
responses(
    (status = 200, description = "The events numbered above `after`, or none once `wait_ms` passed", body = LivePoll),
    (status = 400, description = "`invalid_cursor`: `after` is past the session's last event; `invalid_session`: a session id that is no id; `bad_request`: a query that does not parse", body = ApiError),
    (status = 403, description = "`cross_site`: asked from another site's page", body = ApiError),
    (status = 404, description = "`unknown_session`: no such session of this user", body = ApiError),
    (status = 409, description = "`streamed_session`: the session's events go to its event stream", body = ApiError),
    (status = 410, description = "The session ended: `session_expired`, `session_closed`, `unauthorized`, `server_stopping`", body = ApiError),
)
)]
pub async fn poll(
    State(state): State<AppState>,
    who: Identity,
    headers: HeaderMap,
    crate::api::PathId(id): crate::api::PathId,
    Params(params): Params<PollParams>,
) -> Result<Response, Failure> {
    same_site(&state, &headers)?;
    let channel = state.live_sessions.find(&id, &who)?;
    if channel.streamed {
        return Err(Failure::new(
            StatusCode::CONFLICT,
            ErrorCode::StreamedSession,
            "this session's events go to its event stream; they cannot be polled",
        ));
    }
    let wait = params
        .wait_ms
        .map_or(POLL_WAIT, Duration::from_millis)
        .min(MAX_POLL_WAIT);
    let after = params.after;
    let turn = {
        let mut outbox = lock(&channel.outbox);
        if after >= outbox.next {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidCursor,
                format!(
                    "after={after} is past the last event of this session ({})",
                    outbox.next - 1
                ),
            ));
        }
        outbox.ack(after);
        outbox.attached += 1;
        outbox.polls += 1;
        outbox.polls
    };
    let _attached = Attached(channel.clone());
    // An older poll still waiting answers now.
    channel.ready.notify_waiters();
    let deadline = Instant::now() + wait;
    loop {
        let notified = channel.ready.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let outbox = lock(&channel.outbox);
            let ready = outbox.has_after(after) && !outbox.holding;
            if ready || outbox.end.is_some() || outbox.polls != turn {
                break;
            }
        }
        tokio::select! {
            () = &mut notified => {}
            () = channel.ended.cancelled() => break,
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    let outbox = lock(&channel.outbox);
    let (items, next) = if outbox.polls == turn {
        outbox.after(after)
    } else {
        (String::new(), after)
    };
    let end = outbox
        .end
        .filter(|_| next + 1 >= outbox.next)
        .map(|ending| {
            format!(
                ",\"end\":{}",
                serde_json::json!({ "code": ending.code, "message": ending.message })
            )
        })
        .unwrap_or_default();
    drop(outbox);
    let body = format!("{{\"next\":{next},\"events\":[{items}]{end}}}");
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

/// A poll waiting on a session: the session does not expire meanwhile.
struct Attached(Arc<Channel>);

impl Drop for Attached {
    fn drop(&mut self) {
        let mut outbox = lock(&self.0.outbox);
        outbox.attached -= 1;
        if outbox.attached == 0 {
            outbox.detached_at = Instant::now();
        }
    }
}

/// `POST /api/v1/live/sessions/{id}`: a request, as the WebSocket takes it.
#[utoipa::path(
post, path = "/v1/live/sessions/{id}", tag = "live",
summary = "Send a request (watch, unwatch, follow, unfollow, fleet) to a live session",
params(("id" = String, Path, description = "The session's id")),
request_body = LiveRequest,
responses(
    (status = 202, description = "Queued; its answer comes as events, in order"),
    (status = 400, description = "`invalid_request`: not such a request; `invalid_session`: a session id that is no id", body = ApiError),
    (status = 403, description = "`cross_site`: asked from another site's page", body = ApiError),
    (status = 404, description = "`unknown_session`: no such session of this user", body = ApiError),
    (status = 410, description = "The session ended: `session_expired`, `session_closed`, `unauthorized`, `server_stopping`", body = ApiError),
    (status = 413, description = "`too_large`: a request over 16 KiB", body = ApiError),
    (status = 415, description = "`unsupported_media_type`: not JSON", body = ApiError),
    (status = 429, description = "`too_many_requests`: 16 requests wait in the session", body = ApiError),
)
)]
pub async fn request(
    State(state): State<AppState>,
    who: Identity,
    crate::api::PathId(id): crate::api::PathId,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, Failure> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            "a live request is application/json",
        ));
    }
    let channel = state.live_sessions.find(&id, &who)?;
    let body = axum::body::to_bytes(body, MAX_INCOMING)
        .await
        .map_err(|_| {
            Failure::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::TooLarge,
                format!("a live request is at most {MAX_INCOMING} bytes"),
            )
        })?;
    let request = serde_json::from_slice::<LiveRequest>(&body).map_err(|error| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            clipped(error.to_string(), MAX_REFUSAL),
        )
    })?;
    match channel.requests.try_send(request) {
        Ok(()) => Ok(StatusCode::ACCEPTED),
        Err(mpsc::error::TrySendError::Full(_)) => Err(Failure::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyRequests,
            format!(
                "{MAX_WAITING_REQUESTS} requests of this session wait already; send more once they are answered"
            ),
        )),
        Err(mpsc::error::TrySendError::Closed(_)) => {
            let ending = lock(&channel.outbox).end.unwrap_or(CLOSED);
            Err(Failure::new(StatusCode::GONE, ending.code, ending.message))
        }
    }
}

/// `DELETE /api/v1/live/sessions/{id}`: ends the session.
#[utoipa::path(
delete, path = "/v1/live/sessions/{id}", tag = "live",
summary = "Close a live session",
params(("id" = String, Path, description = "The session's id")),
responses(
    (status = 204, description = "Closed"),
    (status = 403, description = "`cross_site`: asked from another site's page", body = ApiError),
    (status = 404, description = "`unknown_session`: no such session of this user", body = ApiError),
    (status = 410, description = "The session had ended", body = ApiError),
)
)]
pub async fn close(
    State(state): State<AppState>,
    who: Identity,
    crate::api::PathId(id): crate::api::PathId,
) -> Result<StatusCode, Failure> {
    state.live_sessions.find(&id, &who)?.close(CLOSED);
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outbox_that_overflows_drops_everything_and_asks_for_a_snapshot() {
        let mut outbox = Outbox::new(false);
        for n in 0..MAX_HELD_EVENTS {
            outbox.push(format!("{{\"n\":{n}}}"));
        }
        assert!(!outbox.take_overflow());
        assert_eq!(outbox.events.len(), MAX_HELD_EVENTS);
        outbox.push("{\"n\":\"one too many\"}".to_owned());
        assert!(outbox.events.is_empty(), "nothing half is kept");
        assert_eq!(outbox.bytes, 0);
        // Until the session resyncs, nothing more is held.
        outbox.push("{\"lost\":true}".to_owned());
        assert!(outbox.events.is_empty());
        assert!(outbox.take_overflow(), "the session is told once");
        assert!(!outbox.take_overflow());
        outbox.push("{\"type\":\"snapshot\"}".to_owned());
        // A tab that had every event before the overflow finds the snapshot next.
        let (items, last) = outbox.after(MAX_HELD_EVENTS as u64);
        assert_eq!(items, "{\"type\":\"snapshot\"}");
        assert_eq!(last, MAX_HELD_EVENTS as u64 + 1);
    }

    #[test]
    fn one_large_event_is_held_but_not_two() {
        let mut outbox = Outbox::new(true);
        let large = "x".repeat(MAX_HELD_BYTES + 1);
        outbox.push(large.clone());
        assert_eq!(
            outbox.events.len(),
            1,
            "a snapshot larger than the room fits alone"
        );
        outbox.push("{}".to_owned());
        assert!(outbox.events.is_empty());
        assert!(outbox.take_overflow());
    }

    #[test]
    fn polls_take_what_follows_their_cursor_and_acknowledge_the_rest() {
        let mut outbox = Outbox::new(false);
        for n in 1..=3 {
            outbox.push(format!("{n}"));
        }
        assert_eq!(outbox.after(0), ("1,2,3".to_owned(), 3));
        // An answer lost on the way: the same cursor gets the same events.
        assert_eq!(outbox.after(0), ("1,2,3".to_owned(), 3));
        outbox.ack(2);
        assert_eq!(outbox.events.len(), 1);
        assert_eq!(outbox.bytes, 1);
        assert_eq!(outbox.after(2), ("3".to_owned(), 3));
        assert!(!outbox.has_after(3));
        assert_eq!(outbox.after(3), (String::new(), 3));
        let big = "y".repeat(MAX_ANSWER_BYTES);
        outbox.push(big.clone());
        outbox.push(big.clone());
        let (items, last) = outbox.after(3);
        assert_eq!(
            (items.len(), last),
            (big.len(), 4),
            "one answer holds what fits"
        );
    }

    #[test]
    fn a_stream_takes_events_as_server_sent_events() {
        let mut outbox = Outbox::new(true);
        outbox.push("{\"a\":1}".to_owned());
        outbox.push("{\"b\":2}".to_owned());
        assert_eq!(
            outbox.take_stream(),
            "data: {\"a\":1}\n\ndata: {\"b\":2}\n\n"
        );
        assert!(outbox.events.is_empty());
        assert_eq!(outbox.bytes, 0);
    }

    #[test]
    fn session_ids_are_checked() {
        assert!(is_id(&new_id().unwrap()));
        assert!(!is_id("0123456789ABCDEF0123456789abcdef"));
        assert!(!is_id("0123"));
        assert!(!is_id("../../../../../../../../etc/pas"));
    }
}
