//! The live channel, server side: `GET /api/v1/live` upgrades to a WebSocket that
//! sends a snapshot (devices and recent commands), then every event, as JSON text.
//! A client that falls too far behind gets a fresh snapshot instead of a gap.
//!
//! The client may send `{"type":"watch","device_id":…}` and `{"type":"unwatch",…}`
//! while it shows a device: watched devices report faster (see [`Hub::watch`]) until
//! the tab unwatches them or goes away. Anything else it sends is ignored. When the
//! server stops, every socket is closed with 1001 (going away), and tabs reconnect.
//!
//! Each socket carries only what its user may see: the snapshot and every event are
//! filtered by the user's device groups. The user's session (or token) is checked again
//! every minute: one that was revoked or expired closes the socket with 1008, and a
//! changed role or group applies from then on.

use axum::{
    extract::{
        State, WebSocketUpgrade,
        ws::{CloseFrame, Message, WebSocket, close_code},
    },
    http::{HeaderMap, header},
    response::Response,
};
use std::{collections::HashMap, time::Duration};

use protocol::{
    DeviceId,
    api::{LiveEvent, LiveRequest},
    auth::Role,
    job::JobId,
};
use tokio::sync::broadcast::error::RecvError;

use hub::Watching;

use crate::{
    auth::{Identity, find_identity},
    state::AppState,
};

/// Devices one tab may watch at once.
const MAX_WATCHED_PER_CLIENT: usize = 32;

/// Recent commands in each snapshot.
const SNAPSHOT_COMMANDS: usize = 200;

/// A stopping server passes on the last events (the hub ending pending commands) until
/// none has come for `LAST_EVENTS_QUIET`, and for `LAST_EVENTS_WITHIN` at most, then
/// closes the socket: a slow or flooded tab cannot hold the stop up.
const LAST_EVENTS_QUIET: Duration = Duration::from_millis(250);
const LAST_EVENTS_WITHIN: Duration = Duration::from_secs(1);

/// How often an open socket's credentials are checked again.
const RECHECK: Duration = Duration::from_secs(60);

pub async fn upgrade(
    socket: WebSocketUpgrade,
    State(state): State<AppState>,
    who: Identity,
    headers: HeaderMap,
) -> Response {
    // Only what proves who this is, to check it again later.
    let mut credentials = HeaderMap::new();
    for name in [header::AUTHORIZATION, header::COOKIE] {
        for value in headers.get_all(&name) {
            credentials.append(name.clone(), value.clone());
        }
    }
    socket.on_upgrade(move |socket| {
        // Tracked, so that a stopping server waits for its goodbye.
        let shutdown = state.shutdown.clone();
        let served = shutdown.spawn(serve(socket, state, who, credentials));
        async move {
            let _ = served.await;
        }
    })
}

async fn serve(mut socket: WebSocket, state: AppState, mut who: Identity, credentials: HeaderMap) {
    let (hub, shutdown) = (&state.hub, &state.shutdown);
    // Dropped with the connection, which releases every watch it held.
    let mut watching: HashMap<DeviceId, Watching> = HashMap::new();
    // Whether this user may see each job they were sent events of (every device of it):
    // asked of the store once per job, forgotten when the identity is checked again.
    let mut jobs_seen: HashMap<JobId, bool> = HashMap::new();
    let (snapshot, mut events) = hub.subscribe(SNAPSHOT_COMMANDS);
    if send(&mut socket, &state, &who, &mut jobs_seen, snapshot)
        .await
        .is_err()
    {
        return;
    }
    let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK);
    loop {
        tokio::select! {
            _ = recheck.tick() => match find_identity(&state, &credentials).await {
                Ok(Some(fresh)) if fresh.name == who.name => {
                    watching.retain(|device, _| state.groups.may_see(&fresh, device.as_str()));
                    jobs_seen.clear();
                    who = fresh;
                }
                Ok(_) | Err(_) => {
                    let close = CloseFrame {
                        code: close_code::POLICY,
                        reason: "your session ended; log in again".into(),
                    };
                    let _ = socket.send(Message::Close(Some(close))).await;
                    return;
                }
            },
            () = shutdown.stopping() => {
                // The tab learns how its pending commands ended, then that we are gone.
                let last_events = async {
                    while let Ok(Ok(event)) = tokio::time::timeout(LAST_EVENTS_QUIET, events.recv()).await {
                        if send(&mut socket, &state, &who, &mut jobs_seen, event).await.is_err() {
                            return false;
                        }
                    }
                    true
                };
                if !tokio::time::timeout(LAST_EVENTS_WITHIN, last_events).await.unwrap_or(true) {
                    return;
                }
                let close = CloseFrame {
                    code: close_code::AWAY,
                    reason: "the server is stopping".into(),
                };
                let _ = socket.send(Message::Close(Some(close))).await;
                return;
            }
            event = events.recv() => match event {
                Ok(event) => {
                    if send(&mut socket, &state, &who, &mut jobs_seen, event).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!("a live client missed {missed} events; resyncing it");
                    let (snapshot, fresh) = hub.subscribe(SNAPSHOT_COMMANDS);
                    events = fresh;
                    if send(&mut socket, &state, &who, &mut jobs_seen, snapshot).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<LiveRequest>(&text) {
                    Ok(LiveRequest::Watch { device_id }) => {
                        if watching.len() < MAX_WATCHED_PER_CLIENT
                            && !watching.contains_key(&device_id)
                            && state.groups.may_see(&who, device_id.as_str())
                        {
                            let guard = hub.watch(&device_id);
                            watching.insert(device_id, guard);
                        }
                    }
                    Ok(LiveRequest::Unwatch { device_id }) => {
                        watching.remove(&device_id);
                    }
                    Err(error) => tracing::debug!("ignoring a live client's message: {error}"),
                },
                // Pings are answered by axum.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// Sends `event` as far as `who` may see it: nothing of devices outside their groups.
async fn send(
    socket: &mut WebSocket,
    state: &AppState,
    who: &Identity,
    jobs_seen: &mut HashMap<JobId, bool>,
    event: LiveEvent,
) -> Result<(), axum::Error> {
    if let LiveEvent::JobUpdated { job } = &event
        && who.role != Role::Admin
    {
        let may_see = match jobs_seen.get(&job.id) {
            Some(&seen) => seen,
            None => {
                let seen = crate::jobs::may_see(state, who, &job.id)
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
    let Some(event) = visible(state, who, event) else {
        return Ok(());
    };
    // Serializing these types cannot fail: strings, numbers and JSON values only.
    let text = serde_json::to_string(&event).expect("live events always serialize");
    socket.send(Message::Text(text.into())).await
}

fn visible(state: &AppState, who: &Identity, event: LiveEvent) -> Option<LiveEvent> {
    let may_see = |device: &DeviceId| state.groups.may_see(who, device.as_str());
    match event {
        LiveEvent::Snapshot {
            mut devices,
            mut commands,
        } => {
            devices.retain(|d| may_see(&d.id));
            commands.retain(|c| may_see(&c.device_id));
            Some(LiveEvent::Snapshot { devices, commands })
        }
        LiveEvent::DeviceUpdated { ref device } if !may_see(&device.id) => None,
        LiveEvent::CommandUpdated { ref command } if !may_see(&command.device_id) => None,
        LiveEvent::Telemetry { ref reading } if !may_see(&reading.device_id) => None,
        LiveEvent::JobTarget { ref target } if !may_see(&target.device_id) => None,
        event => Some(event),
    }
}
