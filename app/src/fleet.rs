//! The fleet as the UI sees it: devices and commands, fetched through server functions
//! and kept current by the live channel.
//!
//! Server-side, the functions reach the hub through the [`Fleet`] trait, provided as
//! context by the server (`app` cannot depend on `server`, which depends on it).
//! Browser-side, [`live`] keeps one WebSocket per tab and feeds reactive signals.

pub mod live;

use leptos::{prelude::*, server_fn::codec::Json};
use protocol::api::{CommandView, DeviceView};

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
fn fleet() -> Result<SharedFleet, ServerFnError> {
    use_context::<SharedFleet>()
        .ok_or_else(|| ServerFnError::new("the server is misconfigured: no fleet"))
}

/// Every device, sorted by id.
#[server(endpoint = "devices")]
pub async fn list_devices() -> Result<Vec<DeviceView>, ServerFnError> {
    Ok(fleet()?.devices())
}

/// One device, or `None` if no device of that id has ever connected.
#[server(endpoint = "device")]
pub async fn get_device(id: String) -> Result<Option<DeviceView>, ServerFnError> {
    Ok(fleet()?.device(&id))
}

/// The most recent commands of one device, newest first.
#[server(endpoint = "recent_commands")]
pub async fn recent_commands(
    device: String,
    limit: usize,
) -> Result<Vec<CommandView>, ServerFnError> {
    Ok(fleet()?.recent_commands(Some(&device), limit.min(200)))
}

/// Sends a command; returns it once the broker has confirmed it. The error message is
/// meant for the user.
#[server(endpoint = "send_command", input = Json)]
pub async fn send_command(
    device: String,
    request: protocol::api::SendCommand,
) -> Result<CommandView, ServerFnError> {
    fleet()?
        .send_command(device, request)
        .await
        .map_err(|e| ServerFnError::new(e.message))
}

/// Cancels a pending command.
#[server(endpoint = "cancel_command")]
pub async fn cancel_command(id: String) -> Result<CommandView, ServerFnError> {
    fleet()?
        .cancel_command(id)
        .await
        .map_err(|e| ServerFnError::new(e.message))
}

/// A device's downsampled history, for its charts.
#[server(endpoint = "telemetry", input = Json)]
pub async fn telemetry_history(
    device: String,
    query: protocol::api::HistoryQuery,
) -> Result<protocol::api::History, ServerFnError> {
    fleet()?
        .history(device, query)
        .await
        .map_err(|e| ServerFnError::new(e.message))
}

/// A server function error as the user should read it (without Leptos's prefixes).
pub fn error_message(error: &ServerFnError) -> String {
    match error {
        ServerFnError::ServerError(message) => message.clone(),
        ServerFnError::Request(_) | ServerFnError::Response(_) => {
            "cannot reach the server; check your connection and try again".to_owned()
        }
        other => other.to_string(),
    }
}
