//! The JSON HTTP API over the hub, for scripts and other systems (documented in
//! API.md), and the same operations for the UI's server functions ([`app::fleet::Fleet`]).
//!
//! Every error is JSON `{"code": "...", "message": "..."}` with a fitting status:
//! unknown device or command 404, bad input 400 or 422, conflicts 409, broker down 503.

use std::{pin::Pin, time::Duration};

use axum::{
    Json, Router,
    extract::{FromRequest, FromRequestParts, Path, Query, State, rejection::JsonRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use protocol::{
    CommandId, MetricSpec,
    api::{ApiError, CommandView, DeviceView, History, HistoryQuery, SendCommand, Series, history},
};
use serde::Deserialize;

use crate::{
    AppState,
    hub::{CancelError, Hub, SendError},
    live,
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

/// An API error response.
#[derive(Debug)]
pub struct Failure(StatusCode, ApiError);

impl Failure {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self(
            status,
            ApiError {
                code: code.to_owned(),
                message: message.into(),
            },
        )
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<SendError> for Failure {
    fn from(error: SendError) -> Self {
        let (status, code) = match &error {
            SendError::UnknownDevice(_) => (StatusCode::NOT_FOUND, "unknown_device"),
            SendError::DeviceOffline(_) => (StatusCode::CONFLICT, "device_offline"),
            SendError::UnknownCommand { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "unknown_command")
            }
            SendError::InvalidArguments(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_arguments")
            }
            SendError::InvalidTimeout(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_timeout"),
            SendError::BrokerUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "broker_unavailable"),
        };
        Self::new(status, code, error.to_string())
    }
}

impl From<CancelError> for Failure {
    fn from(error: CancelError) -> Self {
        let (status, code) = match &error {
            CancelError::UnknownCommand(_) => (StatusCode::NOT_FOUND, "unknown_command"),
            CancelError::AlreadyEnded(_) => (StatusCode::CONFLICT, "already_ended"),
            CancelError::NotOurs(_) => (StatusCode::CONFLICT, "other_replica"),
        };
        Self::new(status, code, error.to_string())
    }
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
    Path(id): Path<String>,
) -> Result<Json<DeviceView>, Failure> {
    device(&hub, &id).map(Json)
}

fn device(hub: &Hub, id: &str) -> Result<DeviceView, Failure> {
    protocol::DeviceId::new(id)
        .ok()
        .and_then(|id| hub.device(&id))
        .ok_or_else(|| {
            Failure::new(
                StatusCode::NOT_FOUND,
                "unknown_device",
                format!("no device \"{id}\" has ever connected"),
            )
        })
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
    Path(id): Path<String>,
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
    Path(id): Path<String>,
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
    Path(id): Path<String>,
    Params(wait): Params<Wait>,
) -> Result<Json<CommandView>, Failure> {
    let id = CommandId(id);
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
    Path(id): Path<String>,
) -> Result<Json<CommandView>, Failure> {
    Ok(Json(hub.cancel(&CommandId(id)).await?))
}

async fn device_telemetry(
    State(hub): State<Hub>,
    Path(id): Path<String>,
    Params(query): Params<HistoryQuery>,
) -> Result<Json<History>, Failure> {
    Ok(Json(history(&hub, &id, query).await?))
}

/// A device's history, downsampled: for the API and the UI's charts.
pub async fn history(hub: &Hub, id: &str, query: HistoryQuery) -> Result<History, Failure> {
    let unknown_device = || {
        Failure::new(
            StatusCode::NOT_FOUND,
            "unknown_device",
            format!("no device \"{id}\" has ever connected"),
        )
    };
    let device_id = protocol::DeviceId::new(id).map_err(|_| unknown_device())?;
    let to = query.to.unwrap_or_else(crate::hub::now_ms);
    let from = query
        .from
        .unwrap_or_else(|| to.saturating_sub(history::DEFAULT_SPAN_MS));
    if from >= to {
        return Err(Failure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_range",
            format!("from ({from}) must be before to ({to}), both in ms since the Unix epoch"),
        ));
    }
    let max_points = query.max_points.unwrap_or(history::DEFAULT_POINTS);
    if !(1..=history::MAX_POINTS).contains(&max_points) {
        return Err(Failure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_max_points",
            format!(
                "max_points must be between 1 and {} (got {max_points})",
                history::MAX_POINTS
            ),
        ));
    }
    let store = hub.store().ok_or_else(|| {
        Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_off",
            "this server keeps no history (TETHER_DATABASE_URL=none)",
        )
    })?;
    let store_failed = |error: anyhow::Error| {
        tracing::warn!("telemetry history for {id}: {error:#}");
        Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the telemetry store cannot be read right now; try again shortly",
        )
    };
    // The metrics to read, as the device announced them; for a device not heard from
    // since this server started (or a metric it no longer announces), what is stored.
    let known = hub.device(&device_id);
    let announced = known
        .as_ref()
        .map(|device| device.capabilities.metrics.clone())
        .unwrap_or_default();
    let asked_for = |name: &String| query.metric.as_ref().is_none_or(|m| m == name);
    let mut specs: Vec<MetricSpec> = announced
        .into_iter()
        .filter(|s| asked_for(&s.name))
        .collect();
    if specs.is_empty() {
        let stored = store.metrics(id).await.map_err(store_failed)?;
        if stored.is_empty() && known.is_none() {
            return Err(unknown_device());
        }
        specs = stored
            .into_iter()
            .filter(asked_for)
            .map(|name| MetricSpec {
                name,
                unit: String::new(),
                min: None,
                max: None,
            })
            .collect();
        if let (Some(metric), true) = (&query.metric, specs.is_empty()) {
            return Err(Failure::new(
                StatusCode::NOT_FOUND,
                "unknown_metric",
                format!("device \"{id}\" has no metric \"{metric}\""),
            ));
        }
    }
    let as_i64 = |ms: u64| i64::try_from(ms).unwrap_or(i64::MAX);
    let bucket_ms = crate::store::bucket_ms(as_i64(from), as_i64(to), max_points);
    let mut found = store
        .series(crate::store::SeriesQuery {
            device: id.to_owned(),
            metrics: specs.iter().map(|s| s.name.clone()).collect(),
            from_ms: as_i64(from),
            to_ms: as_i64(to),
            bucket_ms,
        })
        .await
        .map_err(store_failed)?;
    let series = specs
        .into_iter()
        .map(|spec| {
            let points = found
                .iter_mut()
                .find(|(m, _)| *m == spec.name)
                .map(|(_, points)| std::mem::take(points))
                .unwrap_or_default();
            Series { spec, points }
        })
        .collect();
    Ok(History {
        device_id,
        from_ms: from,
        to_ms: to,
        bucket_ms: bucket_ms as u64,
        series,
    })
}

type Answer<'a> = Pin<Box<dyn Future<Output = Result<CommandView, ApiError>> + Send + 'a>>;

impl app::fleet::Fleet for Hub {
    fn devices(&self) -> Vec<DeviceView> {
        Hub::devices(self)
    }

    fn device(&self, id: &str) -> Option<DeviceView> {
        protocol::DeviceId::new(id)
            .ok()
            .and_then(|id| Hub::device(self, &id))
    }

    fn recent_commands(&self, device: Option<&str>, limit: usize) -> Vec<CommandView> {
        match device.map(protocol::DeviceId::new) {
            None => Hub::recent_commands(self, None, limit),
            Some(Ok(id)) => Hub::recent_commands(self, Some(&id), limit),
            Some(Err(_)) => Vec::new(),
        }
    }

    fn send_command(&self, device: String, request: SendCommand) -> Answer<'_> {
        Box::pin(async move {
            self.send(&device, request)
                .await
                .map_err(|e| Failure::from(e).1)
        })
    }

    fn history(
        &self,
        device: String,
        query: HistoryQuery,
    ) -> Pin<Box<dyn Future<Output = Result<History, ApiError>> + Send + '_>> {
        Box::pin(async move {
            history(self, &device, query)
                .await
                .map_err(|failure| failure.1)
        })
    }

    fn cancel_command(&self, id: String) -> Answer<'_> {
        Box::pin(async move {
            self.cancel(&CommandId(id))
                .await
                .map_err(|e| Failure::from(e).1)
        })
    }
}
