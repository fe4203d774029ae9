//! The fleet as the UI sees it: devices and commands, fetched through server functions
//! and kept current by the live channel.
//!
//! Server-side, the functions reach the hub through the [`Fleet`] trait, provided as
//! context by the server (`app` cannot depend on `server`, which depends on it).
//! Browser-side, [`live`] keeps one WebSocket per tab and feeds reactive signals.
//!
//! The server functions fail with an [`AppError`]: the JSON API's code and message
//! (API.md), or `unreachable` when the server could not be reached.

pub mod live;

use leptos::{
    prelude::*,
    server_fn::{
        codec::{Json, JsonEncoding},
        error::{FromServerFnError, ServerFnErrorErr},
    },
};
use protocol::api::{CommandView, DeviceView};
use serde::{Deserialize, Serialize};

/// Why a server function failed: a stable `code` for programs (the JSON API's, as in
/// API.md, plus `unreachable` and `internal`), a `message` for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppError {
    pub code: String,
    pub message: String,
}

impl AppError {
    /// The request or its answer was lost on the way: the network, or the server down.
    pub const UNREACHABLE: &'static str = "unreachable";
    /// Anything else that is not the API's own error: the server misconfigured, an
    /// answer that could not be read.
    pub const INTERNAL: &'static str = "internal";

    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

impl From<protocol::api::ApiError> for AppError {
    fn from(protocol::api::ApiError { code, message }: protocol::api::ApiError) -> Self {
        Self { code, message }
    }
}

impl FromServerFnError for AppError {
    type Encoder = JsonEncoding;

    fn from_server_fn_error(error: ServerFnErrorErr) -> Self {
        match error {
            ServerFnErrorErr::Request(_) | ServerFnErrorErr::Response(_) => Self::new(
                Self::UNREACHABLE,
                "cannot reach the server; check your connection and try again",
            ),
            ServerFnErrorErr::ServerError(message) => Self::new(Self::INTERNAL, message),
            other => Self::new(Self::INTERNAL, other.to_string()),
        }
    }
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for AppError {}

/// What the server functions need from the hub.
#[cfg(feature = "ssr")]
pub trait Fleet: Send + Sync + 'static {
    fn devices(&self) -> Vec<DeviceView>;
    fn device(&self, id: &str) -> Option<DeviceView>;
    fn recent_commands(&self, device: Option<&str>, limit: usize) -> Vec<CommandView>;
    fn send_command(
        &self,
        device: String,
        request: protocol::api::SendCommand,
    ) -> std::pin::Pin<
        Box<dyn Future<Output = Result<CommandView, protocol::api::ApiError>> + Send + '_>,
    >;
    fn cancel_command(
        &self,
        id: String,
    ) -> std::pin::Pin<
        Box<dyn Future<Output = Result<CommandView, protocol::api::ApiError>> + Send + '_>,
    >;
    fn history(
        &self,
        device: String,
        query: protocol::api::HistoryQuery,
    ) -> std::pin::Pin<
        Box<
            dyn Future<Output = Result<protocol::api::History, protocol::api::ApiError>>
                + Send
                + '_,
        >,
    >;
}

/// The hub, as the server provides it to server functions.
#[cfg(feature = "ssr")]
pub type SharedFleet = std::sync::Arc<dyn Fleet>;

#[cfg(feature = "ssr")]
fn fleet() -> Result<SharedFleet, AppError> {
    use_context::<SharedFleet>()
        .ok_or_else(|| AppError::new(AppError::INTERNAL, "the server is misconfigured: no fleet"))
}

/// Every device, sorted by id.
#[server(endpoint = "devices", input = Json)]
pub async fn list_devices() -> Result<Vec<DeviceView>, AppError> {
    Ok(fleet()?.devices())
}

/// One device, or `None` if no device of that id has ever connected.
#[server(endpoint = "device", input = Json)]
pub async fn get_device(id: String) -> Result<Option<DeviceView>, AppError> {
    Ok(fleet()?.device(&id))
}

/// The most recent commands of one device, newest first.
#[server(endpoint = "recent_commands", input = Json)]
pub async fn recent_commands(device: String, limit: usize) -> Result<Vec<CommandView>, AppError> {
    Ok(fleet()?.recent_commands(Some(&device), limit.min(200)))
}

/// Sends a command; returns it once the broker has confirmed it. The error is the JSON
/// API's (`unknown_device`, `device_offline`, `invalid_arguments`…); its message is
/// meant for the user.
#[server(endpoint = "send_command", input = Json)]
pub async fn send_command(
    device: String,
    request: protocol::api::SendCommand,
) -> Result<CommandView, AppError> {
    fleet()?
        .send_command(device, request)
        .await
        .map_err(AppError::from)
}

/// Cancels a pending command.
#[server(endpoint = "cancel_command", input = Json)]
pub async fn cancel_command(id: String) -> Result<CommandView, AppError> {
    fleet()?.cancel_command(id).await.map_err(AppError::from)
}

/// A device's downsampled history, for its charts.
#[server(endpoint = "telemetry", input = Json)]
pub async fn telemetry_history(
    device: String,
    query: protocol::api::HistoryQuery,
) -> Result<protocol::api::History, AppError> {
    fleet()?
        .history(device, query)
        .await
        .map_err(AppError::from)
}

#[cfg(test)]
mod tests {
    use leptos::server_fn::error::{FromServerFnError, ServerFnErrorErr};

    use super::AppError;

    #[test]
    fn the_api_error_keeps_its_code_and_message() {
        let error = AppError::from(protocol::api::ApiError {
            code: "device_offline".into(),
            message: "device \"d\" is offline".into(),
        });
        assert_eq!(error.code, "device_offline");
        assert_eq!(error.to_string(), "device \"d\" is offline");
    }

    #[test]
    fn errors_cross_the_wire_whole() {
        let error = AppError::new("unknown_command", "no command \"x\"");
        assert_eq!(AppError::de(error.ser()), error);
        // An answer that is not ours (a proxy's page) still reads as an error.
        let garbled = AppError::de("<html>Bad gateway</html>".into());
        assert_eq!(garbled.code, AppError::INTERNAL);
    }

    #[test]
    fn a_lost_request_reads_as_unreachable() {
        for error in [
            ServerFnErrorErr::Request("fetch failed".into()),
            ServerFnErrorErr::Response("connection reset".into()),
        ] {
            let error = AppError::from_server_fn_error(error);
            assert_eq!(error.code, AppError::UNREACHABLE);
            assert_eq!(
                error.message,
                "cannot reach the server; check your connection and try again"
            );
        }
    }
}
