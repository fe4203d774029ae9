//! The JSON HTTP API over the hub, for scripts and other systems (documented in
//! API.md). Ids and bodies are parsed here, at the edge; every error is a
//! [`Failure`]: JSON `{"code": "...", "message": "..."}` with a fitting status.

use std::time::Duration;

use axum::{
    Json, Router,
    extract::{FromRequest, FromRequestParts, Path, Query, State, rejection::JsonRejection},
    http::StatusCode,
    routing::get,
};
use hub::Hub;
use protocol::{
    CommandId, DeviceId,
    api::{CommandView, DeviceView, History, HistoryQuery, SendCommand},
};
use serde::Deserialize;

use crate::{
    error::{Failure, parse_device_id},
    history, live,
    state::AppState,
};

/// The longest a `GET /api/v1/commands/{id}?wait_ms=` may wait.
const MAX_WAIT_MS: u64 = 60_000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/devices", get(list_devices))
        .route("/v1/devices/{id}", get(get_device))
        .route(
            "/v1/devices/{id}/commands",
            get(device_commands).post(send_command),
        )
        .route("/v1/devices/{id}/telemetry", get(device_telemetry))
        .route("/v1/commands", get(recent_commands))
        .route("/v1/commands/{id}", get(get_command).delete(cancel_command))
        .route("/v1/live", get(live::upgrade))
        .fallback(|| async {
            Failure::new(StatusCode::NOT_FOUND, "not_found", "no such API endpoint")
        })
}

/// A device id from the path (`{id}`), parsed once: a malformed one is an unknown
/// device (404), as no device could have it.
struct Device(DeviceId);

impl<S: Send + Sync> FromRequestParts<S> for Device {
    type Rejection = Failure;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        parse_device_id(&path_id(parts, state).await?).map(Self)
    }
}

/// A command id from the path (`{id}`).
struct Command(CommandId);

impl<S: Send + Sync> FromRequestParts<S> for Command {
    type Rejection = Failure;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(CommandId(path_id(parts, state).await?)))
    }
}

/// The route's one path parameter, as text.
async fn path_id<S: Send + Sync>(
    parts: &mut axum::http::request::Parts,
    state: &S,
) -> Result<String, Failure> {
    let Path(id) = Path::<String>::from_request_parts(parts, state)
        .await
        .map_err(|rejection| {
            Failure::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                rejection.body_text(),
            )
        })?;
    Ok(id)
}

/// A JSON body whose rejection is an API error too.
struct Body<T>(T);

impl<T, S> FromRequest<S> for Body<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = Failure;

    async fn from_request(
        request: axum::extract::Request,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(Failure::new(
                rejection.status(),
                "bad_request",
                rejection.body_text(),
            )),
        }
    }
}

/// A query string whose rejection is an API error too.
struct Params<T>(T);

impl<T, S> FromRequestParts<S> for Params<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Failure;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                rejection.body_text(),
            )),
        }
    }
}

async fn list_devices(State(hub): State<Hub>) -> Json<Vec<DeviceView>> {
    Json(hub.devices())
}

async fn get_device(
    State(hub): State<Hub>,
    Device(id): Device,
) -> Result<Json<DeviceView>, Failure> {
    device(&hub, &id).map(Json)
}

fn device(hub: &Hub, id: &DeviceId) -> Result<DeviceView, Failure> {
    hub.device(id).ok_or_else(|| Failure::unknown_device(id))
}

#[derive(Debug, Deserialize)]
struct Limit {
    limit: Option<usize>,
}

impl Limit {
    /// How many commands to list: 50 unless asked, at most 1,000.
    fn get(&self) -> usize {
        self.limit.unwrap_or(50).min(1_000)
    }
}

async fn device_commands(
    State(hub): State<Hub>,
    Device(id): Device,
    Params(limit): Params<Limit>,
) -> Result<Json<Vec<CommandView>>, Failure> {
    let device = device(&hub, &id)?;
    Ok(Json(hub.recent_commands(Some(&device.id), limit.get())))
}

async fn recent_commands(
    State(hub): State<Hub>,
    Params(limit): Params<Limit>,
) -> Json<Vec<CommandView>> {
    Json(hub.recent_commands(None, limit.get()))
}

async fn send_command(
    State(hub): State<Hub>,
    Device(id): Device,
    Body(request): Body<SendCommand>,
) -> Result<(StatusCode, Json<CommandView>), Failure> {
    let command = hub.send(&id, request).await?;
    Ok((StatusCode::ACCEPTED, Json(command)))
}

#[derive(Debug, Deserialize)]
struct Wait {
    /// Wait up to this long for the command to end (long poll).
    wait_ms: Option<u64>,
}

async fn get_command(
    State(hub): State<Hub>,
    Command(id): Command,
    Params(wait): Params<Wait>,
) -> Result<Json<CommandView>, Failure> {
    let unknown = || {
        Failure::new(
            StatusCode::NOT_FOUND,
            "unknown_command",
            format!("no command \"{id}\""),
        )
    };
    let command = match wait.wait_ms {
        Some(ms) if ms > 0 => {
            hub.wait(&id, Duration::from_millis(ms.min(MAX_WAIT_MS)))
                .await
        }
        _ => hub.command(&id),
    };
    command.map(Json).ok_or_else(unknown)
}

async fn cancel_command(
    State(hub): State<Hub>,
    Command(id): Command,
) -> Result<Json<CommandView>, Failure> {
    Ok(Json(hub.cancel(&id).await?))
}

async fn device_telemetry(
    State(state): State<AppState>,
    Device(id): Device,
    Params(query): Params<HistoryQuery>,
) -> Result<Json<History>, Failure> {
    Ok(Json(
        history::read(&state.hub, state.store.as_ref(), &id, query).await?,
    ))
}
