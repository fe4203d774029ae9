//! A device's diagnostics reports: the results of the agent's built-in `diagnostics`
//! command. They are kept where every command's result is, in the command log (the
//! database), so they outlive the server process and are kept as long as the log keeps
//! commands (`TETHER_RETENTION`, 30 days by default); without a database, only the
//! recent ones in memory are there.
//!
//! - `GET /api/v1/devices/{id}/diagnostics?limit=` lists them, newest first (20 unless
//!   asked, at most 100).
//! - `GET /api/v1/devices/{id}/diagnostics/{command_id}` downloads one as a JSON file:
//!   the report with the device, the command and when it was collected.
//!
//! Whoever may see the device may read its reports (they hold no secrets: the agent
//! hides them before sending).

use crate::openapi::shared;
use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use protocol::api::{ApiError, ErrorCode};
use protocol::{
    CommandId, CommandStatus, DeviceId,
    api::{CommandView, DiagnosticsReport},
};
use serde::Deserialize;
use store::CommandQuery;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    api::Params,
    auth::Identity,
    error::{Failure, parse_device_id},
    state::AppState,
};

const DEFAULT_LIST: usize = 20;
const MAX_LIST: usize = 100;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(download))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Limit {
    /// How many reports: 20 if absent, between 1 and 100.
    limit: Option<usize>,
}

#[utoipa::path(
get, path = "/v1/devices/{id}/diagnostics", tag = "diagnostics",
summary = "A device's diagnostics reports, newest first",
params(("id" = String, Path, description = "The device's id"), Limit),
responses(
    (status = 200, description = "The reports", body = Vec<DiagnosticsReport>),
    (status = 404, description = "`unknown_device`", body = ApiError),
    shared::StoreUnavailable,
)
)]
async fn list(
    State(state): State<AppState>,
    who: Identity,
    Path(id): Path<String>,
    Params(Limit { limit }): Params<Limit>,
) -> Result<Json<Vec<DiagnosticsReport>>, Failure> {
    let id = parse_device_id(&id)?;
    let limit = limit.unwrap_or(DEFAULT_LIST).clamp(1, MAX_LIST);
    Ok(Json(reports(&state, &who, &id, limit).await?))
}

/// The device's reports `who` may read, newest first. A device that is neither known
/// now nor has any report is unknown.
pub async fn reports(
    state: &AppState,
    who: &Identity,
    device: &DeviceId,
    limit: usize,
) -> Result<Vec<DiagnosticsReport>, Failure> {
    if !state.groups.may_see(who, device.as_str()) {
        return Err(Failure::unknown_device(device));
    }
    let commands: Vec<CommandView> = match &state.store {
        Some(store) => store
            .command_page(CommandQuery {
                device: Some(device.as_str().to_owned()),
                name: Some(DiagnosticsReport::COMMAND.to_owned()),
                status: Some(CommandStatus::Succeeded),
                limit,
                ..CommandQuery::default()
            })
            .await
            .map_err(|error| {
                crate::api::log_unavailable(error, "the diagnostics reports are unavailable")
            })?,
        None => state.hub.recent_commands(Some(device), 1_000),
    };
    let reports: Vec<DiagnosticsReport> = commands
        .iter()
        .filter_map(DiagnosticsReport::of)
        .take(limit)
        .collect();
    if reports.is_empty() && state.hub.device(device).is_none() {
        return Err(Failure::unknown_device(device));
    }
    Ok(reports)
}

#[utoipa::path(
get, path = "/v1/devices/{id}/diagnostics/{command}", tag = "diagnostics",
summary = "Download one diagnostics report (a JSON file)",
params(("id" = String, Path, description = "The device's id"), ("command" = String, Path, description = "The id of the command that collected it")),
responses(
    (status = 200, description = "The report, as an attachment", content_type = "application/json", body = Object),
    (status = 404, description = "`unknown_device`; `unknown_report`", body = ApiError),
)
)]
async fn download(
    State(state): State<AppState>,
    who: Identity,
    Path((id, command)): Path<(String, String)>,
) -> Result<Response, Failure> {
    let device = parse_device_id(&id)?;
    if !state.groups.may_see(&who, device.as_str()) {
        return Err(Failure::unknown_device(&device));
    }
    let command = CommandId(command);
    let found = crate::api::find_command(&state, &who, &command)
        .await
        .filter(|c| c.device_id == device);
    let Some((report, listed)) = found.and_then(|c| {
        let listed = DiagnosticsReport::of(&c)?;
        Some((c.result?, listed))
    }) else {
        return Err(Failure::new(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownReport,
            format!(
                "device \"{device}\" has no diagnostics report \"{}\"",
                command.0
            ),
        ));
    };
    let file = serde_json::json!({
        "device_id": listed.device_id,
        "command_id": listed.command_id,
        "requested_ms": listed.requested_ms,
        "collected_ms": listed.collected_ms,
        "issued_by": listed.issued_by,
        "report": report,
    });
    let body = serde_json::to_string_pretty(&file).unwrap_or_default();
    let name = file_name(&device, listed.collected_ms);
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
        .unwrap_or(HeaderValue::from_static("attachment"));
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, no-store"),
            ),
        ],
        body,
    )
        .into_response())
}

/// `diagnostics-boiler-1-20261125T174640Z.json`: the device and when (UTC). A device
/// id is letters, digits, `-` and `_`, safe in a header and a file name.
pub fn file_name(device: &DeviceId, collected_ms: u64) -> String {
    let when = app::auth::audit::when(collected_ms)
        .replace([' '], "T")
        .replace([':', '-'], "");
    format!("diagnostics-{device}-{when}Z.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_carry_the_device_and_the_utc_time() {
        let device = DeviceId::new("boiler-1").unwrap();
        assert_eq!(
            file_name(&device, 1_795_600_000_123),
            "diagnostics-boiler-1-20261125T094640Z.json"
        );
    }
}
