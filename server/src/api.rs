//! The JSON HTTP API over the hub, for scripts and other systems (documented in
//! API.md). Ids and bodies are parsed here, at the edge; every error is a
//! [`Failure`]: JSON `{"code": "...", "message": "..."}` with a fitting status.

use crate::openapi::shared;
use std::time::Duration;

use axum::{
    Json, Router,
    extract::{FromRequest, FromRequestParts, Path, Query, State, rejection::JsonRejection},
    http::StatusCode,
};
use hub::CancelError;
use protocol::{
    CommandId, DeviceId,
    api::{CommandView, DeviceView, History, HistoryQuery, SendCommand},
    auth::Role,
    fleet::{DevicePage, DeviceQuery},
};
use serde::Deserialize;
use store::CommandQuery;

use crate::{
    audit,
    auth::{Identity, Source},
    error::{Failure, parse_device_id},
    history, live, openapi, provision,
    state::AppState,
};
use protocol::api::{ApiError, ErrorCode};
use utoipa_axum::{router::OpenApiRouter, routes};

/// The longest a `GET /api/v1/commands/{id}?wait_ms=` may wait.
const MAX_WAIT_MS: u64 = 60_000;

/// The API's routes, under `/api`; each one is described in the OpenAPI document,
/// which is kept for `GET /api/v1/openapi.json` (see `openapi`).
pub fn routes() -> Router<AppState> {
    let (router, document) = OpenApiRouter::with_openapi(openapi::base())
        // Provisioning shares these two paths (see `provision`).
        .routes(routes!(list_devices, provision::provision_device))
        .routes(routes!(get_device, provision::revoke_device))
        .routes(routes!(device_commands, send_command))
        .routes(routes!(device_telemetry))
        .routes(routes!(recent_commands))
        .routes(routes!(get_command, cancel_command))
        .routes(routes!(openapi::serve))
        .merge(live::routes())
        .merge(crate::admin::routes())
        .merge(crate::diagnostics::routes())
        .merge(crate::jobs::routes())
        .merge(crate::artifacts::routes())
        .merge(provision::routes())
        .split_for_parts();
    openapi::keep(document);
    router
        .fallback(|| async {
            Failure::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "no such API endpoint",
            )
        })
        .method_not_allowed_fallback(|| async {
            Failure::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                "this API endpoint does not answer this method",
            )
        })
}

/// A device id from the path (`{id}`), parsed once: a malformed one is an unknown
/// device (404), as no device could have it.
#[derive(Debug)]
pub struct Device(pub DeviceId);

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
#[derive(Debug)]
pub struct Command(pub CommandId);

impl<S: Send + Sync> FromRequestParts<S> for Command {
    type Rejection = Failure;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(CommandId(path_id(parts, state).await?)))
    }
}

/// The route's one path parameter, as text (a job's or an artifact's id).
#[derive(Debug)]
pub struct PathId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = Failure;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(path_id(parts, state).await?))
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
                ErrorCode::BadRequest,
                rejection.body_text(),
            )
        })?;
    Ok(id)
}

/// A JSON body whose rejection is an API error too.
#[derive(Debug)]
pub struct Body<T>(pub T);

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
                ErrorCode::BadRequest,
                rejection.body_text(),
            )),
        }
    }
}

/// A query string whose rejection is an API error too.
#[derive(Debug)]
pub struct Params<T>(pub T);

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
                ErrorCode::BadRequest,
                rejection.body_text(),
            )),
        }
    }
}

#[utoipa::path(
get, path = "/v1/devices", tag = "devices",
summary = "A page of the fleet list",
description = "The devices the caller may see, filtered, sorted and paged, with the fleet's counts.",
params(DeviceQuery),
responses(
    (status = 200, description = "The page", body = DevicePage),
    (status = 422, description = "`invalid_input`: a query out of bounds (`limit` outside 1..=500, `search` or `kind` over 128 bytes)", body = ApiError),
)
)]
async fn list_devices(
    State(state): State<AppState>,
    who: Identity,
    Params(query): Params<DeviceQuery>,
) -> Result<Json<DevicePage>, Failure> {
    device_page(&state, &who, &query).map(Json)
}

/// The page of the fleet list `query` asks for, among the devices `who` may see.
pub fn device_page(
    state: &AppState,
    who: &Identity,
    query: &DeviceQuery,
) -> Result<DevicePage, Failure> {
    query.check().map_err(|message| {
        Failure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidInput,
            message,
        )
    })?;
    Ok(state
        .hub
        .device_page(query, |id| state.groups.may_see(who, id.as_str())))
}

#[utoipa::path(
get, path = "/v1/devices/{id}", tag = "devices",
summary = "One device",
params(("id" = String, Path, description = "The device's id")),
responses(
    (status = 200, description = "The device", body = DeviceView),
    (status = 404, description = "`unknown_device`: no such device, or one the caller may not see", body = ApiError),
)
)]
async fn get_device(
    State(state): State<AppState>,
    who: Identity,
    Device(id): Device,
) -> Result<Json<DeviceView>, Failure> {
    device(&state, &who, &id).map(Json)
}

/// The device, if it exists and `who` may see it: one they may not see does not exist,
/// as far as they can tell.
/// A device that never came online because its hello was refused is unknown too, with
/// the reason in the message.
pub fn device(state: &AppState, who: &Identity, id: &DeviceId) -> Result<DeviceView, Failure> {
    if !state.groups.may_see(who, id.as_str()) {
        return Err(Failure::unknown_device(id));
    }
    state.hub.device(id).ok_or_else(|| {
        match state.hub.refused_hello(id) {
            Some(refused) => Failure::new(
                StatusCode::NOT_FOUND,
                ErrorCode::UnknownDevice,
                format!(
                    "no device \"{id}\" has ever connected: its last hello ({} s ago) was refused: {}",
                    common::now_ms().saturating_sub(refused.at_ms) / 1000,
                    refused.problem
                ),
            ),
            None => Failure::unknown_device(id),
        }
    })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct Page {
    /// How many commands: 50 if absent; more than 1,000 is 1,000.
    limit: Option<usize>,
    /// The id of the last command of the previous page: older ones come next.
    before: Option<String>,
}

impl Page {
    /// How many commands to list: 50 unless asked, at most 1,000.
    fn limit(&self) -> usize {
        self.limit.unwrap_or(50).min(1_000)
    }
}

#[utoipa::path(
get, path = "/v1/devices/{id}/commands", tag = "commands",
summary = "A device's commands, newest first",
params(("id" = String, Path, description = "The device's id"), Page),
responses(
    (status = 200, description = "Up to `limit` commands, newest first", body = Vec<CommandView>),
    (status = 400, description = "`bad_request`: `before` names no command, or a query that does not parse", body = ApiError),
    (status = 404, description = "`unknown_device`: no such device (neither known now nor with a history), or one the caller may not see", body = ApiError),
    (status = 503, description = "`store_unavailable`: the command log cannot be read", body = ApiError),
)
)]
async fn device_commands(
    State(state): State<AppState>,
    who: Identity,
    Device(id): Device,
    Params(page): Params<Page>,
) -> Result<Json<Vec<CommandView>>, Failure> {
    // A device the server does not know (yet, or any more) may still have a history.
    if !state.groups.may_see(&who, id.as_str()) {
        return Err(Failure::unknown_device(&id));
    }
    let limit = page.limit();
    let history = command_history(&state, &who, Some(&id), page.before, limit).await?;
    if history.is_empty() && state.hub.device(&id).is_none() {
        return Err(Failure::unknown_device(&id));
    }
    Ok(Json(history))
}

#[utoipa::path(
get, path = "/v1/commands", tag = "commands",
summary = "Recent commands to the devices the caller may see, newest first",
params(Page),
responses(
    (status = 200, description = "Up to `limit` commands, newest first", body = Vec<CommandView>),
    (status = 400, description = "`bad_request`: `before` names no command, or a query that does not parse", body = ApiError),
    (status = 503, description = "`store_unavailable`: the command log cannot be read", body = ApiError),
)
)]
async fn recent_commands(
    State(state): State<AppState>,
    who: Identity,
    Params(page): Params<Page>,
) -> Result<Json<Vec<CommandView>>, Failure> {
    let limit = page.limit();
    Ok(Json(
        command_history(&state, &who, None, page.before, limit).await?,
    ))
}

/// Commands newest first, of one device or of every device `who` may see, from the
/// command log (with the latest in-memory state of pending ones), or from memory when
/// the server keeps no log. Paged by `before`, a command id.
pub async fn command_history(
    state: &AppState,
    who: &Identity,
    device: Option<&DeviceId>,
    before: Option<String>,
    limit: usize,
) -> Result<Vec<CommandView>, Failure> {
    let Some(store) = &state.store else {
        if before.is_some() {
            return Ok(Vec::new());
        }
        return Ok(match device {
            Some(device) => state.hub.recent_commands(Some(device), limit),
            None => visible_commands(state, who, limit),
        });
    };
    let unavailable = |error| log_unavailable(error, "the command history is unavailable");
    let before = match before {
        None => None,
        Some(id) => {
            let logged = store.logged_command(&id).await.map_err(unavailable)?;
            let last = logged.ok_or_else(|| {
                Failure::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadRequest,
                    format!("`before` names no command: \"{id}\""),
                )
            })?;
            Some((last.view.created_ms, last.view.id.0))
        }
    };
    let query = CommandQuery {
        device: device.map(|d| d.as_str().to_owned()),
        devices: state.groups.visible_to(who),
        before,
        limit,
        ..CommandQuery::default()
    };
    let mut page = store.command_page(query).await.map_err(unavailable)?;
    for command in &mut page {
        if !command.status.is_terminal()
            && let Some(fresher) = state.hub.command(&command.id)
        {
            *command = fresher;
        }
    }
    Ok(page)
}

/// The command log could not be read: logged, and a 503 saying `what` ("… is unavailable").
pub fn log_unavailable(error: anyhow::Error, what: &str) -> Failure {
    tracing::error!("cannot read the command log: {error:#}");
    Failure::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::StoreUnavailable,
        format!("{what} (its database is down); try again shortly"),
    )
}

/// One command `who` may see: from memory, else from the command log.
pub async fn find_command(state: &AppState, who: &Identity, id: &CommandId) -> Option<CommandView> {
    let command = match state.hub.command(id) {
        // Another replica's, unfinished as far as this one heard: the log may know
        // better (its changes are lost to a replica whose link broke meanwhile).
        Some(command)
            if !command.status.is_terminal()
                && state.hub.command_origin(id).is_some()
                && state.store.is_some() =>
        {
            let logged = match &state.store {
                Some(store) => store.logged_command(&id.0).await.ok().flatten(),
                None => None,
            };
            match logged {
                Some(logged) if logged.view.supersedes(&command) => Some(logged.view),
                _ => Some(command),
            }
        }
        Some(command) => Some(command),
        None => match &state.store {
            Some(store) => store
                .logged_command(&id.0)
                .await
                .ok()
                .flatten()
                .map(|c| c.view),
            None => None,
        },
    };
    command.filter(|c| state.groups.may_see(who, c.device_id.as_str()))
}

/// The most recent commands to devices `who` may see, newest first, from memory.
pub fn visible_commands(state: &AppState, who: &Identity, limit: usize) -> Vec<CommandView> {
    if who.role == Role::Admin {
        return state.hub.recent_commands(None, limit);
    }
    // Others see a subset: look further back so that the page is still full.
    let mut commands = state
        .hub
        .recent_commands(None, limit.saturating_mul(20).max(1_000));
    commands.retain(|c| state.groups.may_see(who, c.device_id.as_str()));
    commands.truncate(limit);
    commands
}

#[utoipa::path(
post, path = "/v1/devices/{id}/commands", tag = "commands",
summary = "Send a command to a device",
description = "Validated against what the device announced, recorded (in the command log when there is one) and published to the device; answers once the broker took it, without waiting for the device. Needs the operator role.",
params(("id" = String, Path, description = "The device's id")),
request_body = SendCommand,
responses(
    (status = 202, description = "The command as it is once the broker took it: `sent` (or `offline` if the broker returned it, `failed` if it refused it; later if the device already answered), with its id and `args` as stored, the announced defaults filled in", body = CommandView),
    shared::OperatorOnly,
    (status = 404, description = "`unknown_device`: no such device, or one the caller may not see", body = ApiError),
    (status = 409, description = "`device_offline`: the device is offline", body = ApiError),
    (status = 422, description = "`unknown_command`: the device announced no such command; `invalid_arguments`: arguments its spec refuses; `invalid_timeout`: `timeout_ms` outside 100..=300000", body = ApiError),
    (status = 503, description = "`broker_unavailable`: no broker link; `server_stopping`: the server is stopping", body = ApiError),
)
)]
async fn send_command(
    State(state): State<AppState>,
    who: Identity,
    Source(address): Source,
    Device(id): Device,
    Body(request): Body<SendCommand>,
) -> Result<(StatusCode, Json<CommandView>), Failure> {
    let command = send(&state, &who, &address, &id, request).await?;
    Ok((StatusCode::ACCEPTED, Json(command)))
}

/// Sends a command as `who` (an operator who may see the device), recorded in the audit
/// trail whether it went or not.
pub async fn send(
    state: &AppState,
    who: &Identity,
    address: &str,
    id: &DeviceId,
    request: SendCommand,
) -> Result<CommandView, Failure> {
    // With the broker down, that is the answer (the hub says so) whatever the device.
    if state.hub.is_connected() {
        device(state, who, id)?;
    }
    let detail = serde_json::json!({ "name": request.name, "args": request.args }).to_string();
    if let Err(refused) = who.require(Role::Operator, "sending commands") {
        audit::record(
            state,
            &who.actor(),
            address,
            "command_refused",
            id.as_str(),
            &detail,
        )
        .await;
        return Err(refused);
    }
    match state.hub.send_as(id, request, Some(who.actor())).await {
        Ok(command) => {
            let detail = format!("{} {detail}", command.id);
            audit::record(
                state,
                &who.actor(),
                address,
                "command_sent",
                id.as_str(),
                &detail,
            )
            .await;
            Ok(command)
        }
        Err(error) => {
            let detail = format!("{detail}: {error}");
            audit::record(
                state,
                &who.actor(),
                address,
                "command_failed",
                id.as_str(),
                &detail,
            )
            .await;
            Err(error.into())
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct Wait {
    /// Wait up to this long for the command to end (long poll).
    wait_ms: Option<u64>,
}

#[utoipa::path(
get, path = "/v1/commands/{id}", tag = "commands",
summary = "One command, optionally waiting for it to end",
params(("id" = String, Path, description = "The command's id"), Wait),
responses(
    (status = 200, description = "The command: ended, or as it is when the wait is over", body = CommandView),
    (status = 404, description = "`unknown_command`: no such command, or one to a device the caller may not see", body = ApiError),
)
)]
async fn get_command(
    State(state): State<AppState>,
    who: Identity,
    Command(id): Command,
    Params(wait): Params<Wait>,
) -> Result<Json<CommandView>, Failure> {
    let unknown = || {
        Failure::new(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownCommand,
            format!("no command \"{id}\""),
        )
    };
    // Whether it may be seen is decided before waiting, so no one waits on others'
    // commands. From memory, else from the command log: another replica's command,
    // sent a moment ago, is in the log before its sender answered, and its changes
    // reach this replica a moment later.
    let known = find_command(&state, &who, &id).await.ok_or_else(unknown)?;
    let command = match wait.wait_ms {
        Some(ms) if ms > 0 => {
            let waited = state
                .hub
                .wait_for(known, Duration::from_millis(ms.min(MAX_WAIT_MS)))
                .await;
            // Still going, as far as this replica heard: the log may know better.
            match find_command(&state, &who, &id).await {
                Some(logged) if !waited.status.is_terminal() && logged.supersedes(&waited) => {
                    logged
                }
                _ => waited,
            }
        }
        _ => known,
    };
    Ok(Json(command))
}

#[utoipa::path(
delete, path = "/v1/commands/{id}", tag = "commands",
summary = "Cancel a command that has not ended",
description = "Needs the operator role. Whichever replica sent it.",
params(("id" = String, Path, description = "The command's id")),
responses(
    (status = 200, description = "The command, now `cancelled`", body = CommandView),
    shared::OperatorOnly,
    (status = 404, description = "`unknown_command`: no such command, or one to a device the caller may not see", body = ApiError),
    (status = 409, description = "`already_ended`: the command had ended (or its replica is gone: it is now `outcome_unknown`)", body = ApiError),
    (status = 503, description = "`replica_unavailable`: the replica that sent it did not answer in time; `broker_unavailable`; `store_unavailable`", body = ApiError),
)
)]
async fn cancel_command(
    State(state): State<AppState>,
    who: Identity,
    Source(address): Source,
    Command(id): Command,
) -> Result<Json<CommandView>, Failure> {
    Ok(Json(cancel(&state, &who, &address, &id).await?))
}

/// Cancels a command as `who` (an operator who may see its device), recorded in the
/// audit trail. Whichever replica sent the command: another replica's cancel is
/// forwarded to it by the hub (503 `replica_unavailable` if it does not answer in time;
/// one that is gone ends the command as `outcome_unknown`, 409 `already_ended`).
pub async fn cancel(
    state: &AppState,
    who: &Identity,
    address: &str,
    id: &CommandId,
) -> Result<CommandView, Failure> {
    // Who may cancel is decided here, by the replica the request reached; the hub
    // forwards the cancel to the replica that sent the command if that is another.
    let Some(command) = find_command(state, who, id).await else {
        return Err(CancelError::UnknownCommand(id.clone()).into());
    };
    let target = command.device_id.as_str();
    if let Err(refused) = who.require(Role::Operator, "cancelling commands") {
        audit::record(
            state,
            &who.actor(),
            address,
            "cancel_refused",
            target,
            &id.0,
        )
        .await;
        return Err(refused);
    }
    let cancelled = state.hub.cancel(id).await;
    let action = if cancelled.is_ok() {
        "command_cancelled"
    } else {
        "cancel_failed"
    };
    audit::record(state, &who.actor(), address, action, target, &id.0).await;
    Ok(cancelled?)
}

#[utoipa::path(
get, path = "/v1/devices/{id}/telemetry", tag = "telemetry",
summary = "A device's readings over a range, downsampled",
params(("id" = String, Path, description = "The device's id"), HistoryQuery),
responses(
    (status = 200, description = "One series per metric asked for", body = History),
    (status = 404, description = "`unknown_device`: no such device, or one the caller may not see; `unknown_metric`: the device announced no such metric", body = ApiError),
    (status = 422, description = "`invalid_range`: `from` is not before `to` (after the defaults: `to` now, `from` an hour before `to`); `invalid_max_points`: `max_points` outside 1..=2000", body = ApiError),
    (status = 503, description = "`storage_off`: the server keeps no readings; `store_unavailable`: the database cannot be read", body = ApiError),
)
)]
async fn device_telemetry(
    State(state): State<AppState>,
    who: Identity,
    Device(id): Device,
    Params(query): Params<HistoryQuery>,
) -> Result<Json<History>, Failure> {
    device(&state, &who, &id)?;
    Ok(Json(
        history::read(&state.hub, state.store.as_ref(), &id, query).await?,
    ))
}
