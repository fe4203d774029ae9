//! Every error a caller can see, as one [`Failure`]: an HTTP status and the JSON body
//! `{"code": "...", "message": "..."}` that the API and the UI's server functions both
//! return. Unknown device or command 404, bad input 400 or 422, conflicts 409, broker,
//! store or server unavailable 503.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use hub::{CancelError, SendError};
use protocol::{
    DeviceId,
    api::{ApiError, ErrorCode},
};

use crate::history::HistoryError;

/// An API error response.
#[derive(Debug)]
pub struct Failure(pub StatusCode, pub ApiError);

impl Failure {
    /// `code` is one of [`ErrorCode`]'s, each documented in the OpenAPI document: a code
    /// cannot be made up here.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self(status, ApiError::new(code, message))
    }

    /// No device of this id (or of this malformed text) has ever connected.
    pub fn unknown_device(id: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownDevice,
            format!("no device \"{id}\" has ever connected"),
        )
    }

    /// What the UI's server functions carry.
    pub fn into_api_error(self) -> ApiError {
        self.1
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
            SendError::UnknownDevice(id) => return Self::unknown_device(id),
            SendError::DeviceOffline(_) => (StatusCode::CONFLICT, ErrorCode::DeviceOffline),
            SendError::UnknownCommand { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::UnknownCommand)
            }
            SendError::InvalidArguments(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::InvalidArguments,
            ),
            SendError::InvalidTimeout(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidTimeout)
            }
            SendError::BrokerUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::BrokerUnavailable,
            ),
            SendError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::ServerStopping),
        };
        Self::new(status, code, error.to_string())
    }
}

impl From<CancelError> for Failure {
    fn from(error: CancelError) -> Self {
        let (status, code) = match &error {
            CancelError::UnknownCommand(_) => (StatusCode::NOT_FOUND, ErrorCode::UnknownCommand),
            CancelError::AlreadyEnded(_) => (StatusCode::CONFLICT, ErrorCode::AlreadyEnded),
            // Ended now as outcome_unknown: over, as far as the caller can do anything.
            CancelError::Orphaned(_) => (StatusCode::CONFLICT, ErrorCode::AlreadyEnded),
            CancelError::ReplicaUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::ReplicaUnavailable,
            ),
            CancelError::BrokerUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::BrokerUnavailable,
            ),
            CancelError::StoreUnavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::StoreUnavailable)
            }
        };
        Self::new(status, code, error.to_string())
    }
}

impl From<HistoryError> for Failure {
    fn from(error: HistoryError) -> Self {
        let (status, code) = match &error {
            HistoryError::UnknownDevice(id) => return Self::unknown_device(id),
            HistoryError::UnknownMetric { .. } => (StatusCode::NOT_FOUND, ErrorCode::UnknownMetric),
            HistoryError::InvalidRange { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidRange)
            }
            HistoryError::InvalidMaxPoints(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::InvalidMaxPoints,
            ),
            HistoryError::StorageOff => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::StorageOff),
            HistoryError::StoreUnavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::StoreUnavailable)
            }
        };
        Self::new(status, code, error.to_string())
    }
}

/// A device id from a URL or a server function's argument, parsed once at the edge. A
/// malformed id is an unknown device: no device could have it.
pub fn parse_device_id(text: &str) -> Result<DeviceId, Failure> {
    DeviceId::new(text).map_err(|_| Failure::unknown_device(text))
}
