//! The fleet as the UI sees it: devices, commands and jobs, fetched through server functions
//! and kept current by the live channel.
//!
//! Server-side, the functions reach the hub through the [`Fleet`] trait, provided as
//! context by the server (`app` cannot depend on `server`, which depends on it).
//! Browser-side, [`live`] keeps one WebSocket per tab and feeds reactive signals.
//!
//! The server functions fail with an [`AppError`]: the JSON API's code and message
//! (API.md), or `unreachable` when the server could not be reached.

pub mod live;
pub mod output;

use leptos::{
    prelude::*,
    server_fn::{
        codec::{Json, JsonEncoding},
        error::{FromServerFnError, ServerFnErrorErr},
    },
};
use protocol::{
    api::{CommandView, DeviceView},
    artifact::ArtifactView,
    auth::{
        AuditCheck, AuditEntry, DeviceCredential, Me, NewToken, ProvisionedDevice, Role, TokenView,
        UserView,
    },
    fleet::{DevicePage, DeviceQuery},
    job::{JobAction, JobListQuery, JobView, NewJob, TargetPage, TargetQuery},
};
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

/// An answer the server computes asynchronously.
#[cfg(feature = "ssr")]
pub type Answer<'a, T> =
    std::pin::Pin<Box<dyn Future<Output = Result<T, protocol::api::ApiError>> + Send + 'a>>;

/// The request a server function serves: the server finds who is asking in it.
#[cfg(feature = "ssr")]
pub type Caller = http::request::Parts;

/// What the server functions need from the server: the fleet, as far as the caller may
/// see it, and what they may do. Every method checks who is asking.
#[cfg(feature = "ssr")]
pub trait Fleet: Send + Sync + 'static {
    fn me(&self, caller: &Caller) -> Result<Me, protocol::api::ApiError>;
    fn device_page(
        &self,
        caller: &Caller,
        query: &DeviceQuery,
    ) -> Result<DevicePage, protocol::api::ApiError>;
    fn device(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<Option<DeviceView>, protocol::api::ApiError>;
    fn recent_commands(
        &self,
        caller: Caller,
        device: String,
        limit: usize,
    ) -> Answer<'_, Vec<CommandView>>;
    fn send_command(
        &self,
        caller: Caller,
        device: String,
        request: protocol::api::SendCommand,
    ) -> Answer<'_, CommandView>;
    fn cancel_command(&self, caller: Caller, id: String) -> Answer<'_, CommandView>;
    fn history(
        &self,
        caller: Caller,
        device: String,
        query: protocol::api::HistoryQuery,
    ) -> Answer<'_, protocol::api::History>;
    /// The caller's own tokens (an admin's: everyone's).
    fn tokens(&self, caller: Caller) -> Answer<'_, Vec<TokenView>>;
    fn create_token(&self, caller: Caller, name: String, role: Role) -> Answer<'_, NewToken>;
    fn revoke_token(&self, caller: Caller, id: String) -> Answer<'_, TokenView>;
    fn users(&self, caller: Caller) -> Answer<'_, Vec<UserView>>;
    fn create_user(&self, caller: Caller, user: NewUser) -> Answer<'_, UserView>;
    fn change_user(&self, caller: Caller, name: String, change: UserChange)
    -> Answer<'_, UserView>;
    fn audit(&self, caller: Caller, filter: AuditFilter) -> Answer<'_, Vec<AuditEntry>>;
    fn audit_verify(&self, caller: Caller) -> Answer<'_, AuditCheck>;
    /// A device's diagnostics reports, newest first.
    fn diagnostics_reports(
        &self,
        caller: Caller,
        device: String,
    ) -> Answer<'_, Vec<protocol::api::DiagnosticsReport>>;
    /// Admin: the provisioned devices, and whether each is connected now.
    fn provisioned_devices(&self, caller: Caller) -> Answer<'_, Vec<Provisioned>>;
    /// Admin: provisions a device; its secret is in the answer, and nowhere else.
    fn provision_device(&self, caller: Caller, id: String) -> Answer<'_, DeviceCredential>;
    /// Admin: a new secret for a provisioned device; the old one stops working.
    fn rotate_device_secret(&self, caller: Caller, id: String) -> Answer<'_, DeviceCredential>;
    /// Admin: takes a device's credential away.
    fn revoke_device(&self, caller: Caller, id: String) -> Answer<'_, ()>;
    /// Jobs the caller may see, newest first.
    fn jobs(&self, caller: Caller, query: JobListQuery) -> Answer<'_, Vec<JobView>>;
    /// One job (`unknown_job` if there is none of this id the caller may see).
    fn job(&self, caller: Caller, id: String) -> Answer<'_, JobView>;
    /// A page of a job's devices, in job order.
    fn job_targets(&self, caller: Caller, id: String, query: TargetQuery)
    -> Answer<'_, TargetPage>;
    /// What a job for `selector` would reach: how many devices the caller may see match,
    /// and the commands they announced.
    fn job_preview(
        &self,
        caller: &Caller,
        selector: &protocol::job::Selector,
    ) -> Result<crate::jobs::new::Known, protocol::api::ApiError>;
    /// Operator: starts a job.
    fn create_job(&self, caller: Caller, job: NewJob) -> Answer<'_, JobView>;
    /// Operator: pauses, resumes or cancels a job.
    fn control_job(&self, caller: Caller, id: String, action: JobAction) -> Answer<'_, JobView>;
    /// Software update files, newest first.
    fn artifacts(&self, caller: Caller) -> Answer<'_, Vec<ArtifactView>>;
    /// The public half of the server's update key, hex: what agents verify updates with.
    fn update_signing_key(&self, caller: &Caller) -> Result<String, protocol::api::ApiError>;
}

/// A provisioned device as the admin page lists it: its credential's dates (never the
/// secret), and its presence as the server knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provisioned {
    #[serde(flatten)]
    pub device: ProvisionedDevice,
    /// Whether it is connected now; `None` if it never connected (since this server
    /// started).
    pub online: Option<bool>,
}

/// A user as an admin creates them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct NewUser {
    pub name: String,
    pub password: String,
    pub role: Role,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// What an admin changes about a user; absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct UserChange {
    pub role: Option<Role>,
    pub groups: Option<Vec<String>>,
    pub password: Option<String>,
}

/// Which audit entries to show: exact matches, and paging by `before` (a `seq`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub before: Option<u64>,
    pub limit: Option<usize>,
}

/// The server, as it provides itself to server functions.
#[cfg(feature = "ssr")]
pub type SharedFleet = std::sync::Arc<dyn Fleet>;

/// The fleet and the request being served.
#[cfg(feature = "ssr")]
fn fleet() -> Result<(SharedFleet, Caller), AppError> {
    let misconfigured = |what| {
        AppError::new(
            AppError::INTERNAL,
            format!("the server is misconfigured: no {what}"),
        )
    };
    let fleet = use_context::<SharedFleet>().ok_or_else(|| misconfigured("fleet"))?;
    let caller = use_context::<Caller>().ok_or_else(|| misconfigured("request"))?;
    Ok((fleet, caller))
}

/// Who is asking: name, role and groups.
#[server(endpoint = "me", input = Json)]
pub async fn who_am_i() -> Result<Me, AppError> {
    let (fleet, caller) = fleet()?;
    Ok(fleet.me(&caller)?)
}

/// A page of the devices the caller may see, as `query` asks, with their counts.
#[server(endpoint = "devices", input = Json)]
pub async fn fleet_page(query: DeviceQuery) -> Result<DevicePage, AppError> {
    let (fleet, caller) = fleet()?;
    Ok(fleet.device_page(&caller, &query)?)
}

/// One device, or `None` if no device of that id has ever connected (or the caller
/// may not see it).
#[server(endpoint = "device", input = Json)]
pub async fn get_device(id: String) -> Result<Option<DeviceView>, AppError> {
    let (fleet, caller) = fleet()?;
    Ok(fleet.device(&caller, &id)?)
}

/// The most recent commands of one device, newest first.
#[server(endpoint = "recent_commands", input = Json)]
pub async fn recent_commands(device: String, limit: usize) -> Result<Vec<CommandView>, AppError> {
    let (fleet, caller) = fleet()?;
    Ok(fleet
        .recent_commands(caller, device, limit.min(200))
        .await?)
}

/// Sends a command; returns it once the broker has confirmed it. The error is the JSON
/// API's (`unknown_device`, `device_offline`, `invalid_arguments`, `forbidden`…); its
/// message is meant for the user.
#[server(endpoint = "send_command", input = Json)]
pub async fn send_command(
    device: String,
    request: protocol::api::SendCommand,
) -> Result<CommandView, AppError> {
    let (fleet, caller) = fleet()?;
    Ok(fleet.send_command(caller, device, request).await?)
}

/// Cancels a pending command.
#[server(endpoint = "cancel_command", input = Json)]
pub async fn cancel_command(id: String) -> Result<CommandView, AppError> {
    let (fleet, caller) = fleet()?;
    Ok(fleet.cancel_command(caller, id).await?)
}

/// A device's downsampled history, for its charts.
#[server(endpoint = "telemetry", input = Json)]
pub async fn telemetry_history(
    device: String,
    query: protocol::api::HistoryQuery,
) -> Result<protocol::api::History, AppError> {
    let (fleet, caller) = fleet()?;
    Ok(fleet.history(caller, device, query).await?)
}

/// A device's diagnostics reports (the results of its `diagnostics` command), newest
/// first; each is downloaded from `/api/v1/devices/{id}/diagnostics/{command_id}`.
#[server(endpoint = "diagnostics_reports", input = Json)]
pub async fn diagnostics_reports(
    device: String,
) -> Result<Vec<protocol::api::DiagnosticsReport>, AppError> {
    let (fleet, caller) = fleet()?;
    Ok(fleet.diagnostics_reports(caller, device).await?)
}

/// The caller's API tokens (an admin's: everyone's), newest first.
#[server(endpoint = "tokens", input = Json)]
pub async fn list_tokens() -> Result<Vec<TokenView>, AppError> {
    let (fleet, caller) = fleet()?;
    Ok(fleet.tokens(caller).await?)
}

/// Creates an API token for the caller; its secret is in the answer, and nowhere else.
#[server(endpoint = "create_token", input = Json)]
pub async fn create_token(name: String, role: Role) -> Result<NewToken, AppError> {
    let (fleet, caller) = fleet()?;
    Ok(fleet.create_token(caller, name, role).await?)
}

#[server(endpoint = "revoke_token", input = Json)]
pub async fn revoke_token(id: String) -> Result<TokenView, AppError> {
    let (fleet, caller) = fleet()?;
    Ok(fleet.revoke_token(caller, id).await?)
}

#[server(endpoint = "users", input = Json)]
pub async fn list_users() -> Result<Vec<UserView>, AppError> {
    let (fleet, caller) = fleet()?;
    Ok(fleet.users(caller).await?)
}

#[server(endpoint = "create_user", input = Json)]
pub async fn create_user(user: NewUser) -> Result<UserView, AppError> {
    let (fleet, caller) = fleet()?;
    Ok(fleet.create_user(caller, user).await?)
}

#[server(endpoint = "change_user", input = Json)]
pub async fn change_user(name: String, change: UserChange) -> Result<UserView, AppError> {
    let (fleet, caller) = fleet()?;
    Ok(fleet.change_user(caller, name, change).await?)
}

#[server(endpoint = "audit", input = Json)]
pub async fn audit_trail(filter: AuditFilter) -> Result<Vec<AuditEntry>, AppError> {
    let (fleet, caller) = fleet()?;
    Ok(fleet.audit(caller, filter).await?)
}

#[server(endpoint = "audit_verify", input = Json)]
pub async fn audit_verify() -> Result<AuditCheck, AppError> {
    let (fleet, caller) = fleet()?;
    Ok(fleet.audit_verify(caller).await?)
}

/// Admin: the provisioned devices, sorted by id, without secrets.
#[server(endpoint = "provisioned_devices", input = Json)]
pub async fn provisioned_devices() -> Result<Vec<Provisioned>, AppError> {
    let (fleet, caller) = fleet()?;
    Ok(fleet.provisioned_devices(caller).await?)
}

/// Admin: lets the device `id` connect; the answer holds its secret, shown once.
#[server(endpoint = "provision_device", input = Json)]
pub async fn provision_device(id: String) -> Result<DeviceCredential, AppError> {
    let (fleet, caller) = fleet()?;
    Ok(fleet.provision_device(caller, id).await?)
}

/// Admin: a new secret for the device `id`, shown once; the old one stops working.
#[server(endpoint = "rotate_device_secret", input = Json)]
pub async fn rotate_device_secret(id: String) -> Result<DeviceCredential, AppError> {
    let (fleet, caller) = fleet()?;
    Ok(fleet.rotate_device_secret(caller, id).await?)
}

/// Admin: takes the device `id`'s credential away.
#[server(endpoint = "revoke_device", input = Json)]
pub async fn revoke_device(id: String) -> Result<(), AppError> {
    let (fleet, caller) = fleet()?;
    Ok(fleet.revoke_device(caller, id).await?)
}

/// Jobs the caller may see, newest first (paged by `before`).
#[server(endpoint = "jobs", input = Json)]
pub async fn list_jobs(query: JobListQuery) -> Result<Vec<JobView>, AppError> {
    let (fleet, caller) = fleet()?;
    Ok(fleet.jobs(caller, query).await?)
}

/// One job; `unknown_job` if there is none of this id the caller may see.
#[server(endpoint = "job", input = Json)]
pub async fn get_job(id: String) -> Result<JobView, AppError> {
    let (fleet, caller) = fleet()?;
    Ok(fleet.job(caller, id).await?)
}

/// A page of a job's devices, in job order, filtered by status and id.
#[server(endpoint = "job_targets", input = Json)]
pub async fn job_targets(id: String, query: TargetQuery) -> Result<TargetPage, AppError> {
    let (fleet, caller) = fleet()?;
    Ok(fleet.job_targets(caller, id, query).await?)
}

/// How many devices the caller may see a job for `selector` would reach, and the
/// commands they announced.
#[server(endpoint = "job_preview", input = Json)]
pub async fn job_preview(
    selector: protocol::job::Selector,
) -> Result<crate::jobs::new::Known, AppError> {
    let (fleet, caller) = fleet()?;
    Ok(fleet.job_preview(&caller, &selector)?)
}

/// Starts a job (operators and admins); the answer is the job as created.
#[server(endpoint = "create_job", input = Json)]
pub async fn create_job(job: NewJob) -> Result<JobView, AppError> {
    let (fleet, caller) = fleet()?;
    Ok(fleet.create_job(caller, job).await?)
}

/// Pauses, resumes or cancels a job (operators and admins); the answer is the job after.
#[server(endpoint = "control_job", input = Json)]
pub async fn control_job(id: String, action: JobAction) -> Result<JobView, AppError> {
    let (fleet, caller) = fleet()?;
    Ok(fleet.control_job(caller, id, action).await?)
}

/// The software update files (artifacts), newest first. They are uploaded and removed
/// by the browser through the JSON API (`/api/v1/artifacts`), which streams the file.
#[server(endpoint = "artifacts", input = Json)]
pub async fn list_artifacts() -> Result<Vec<ArtifactView>, AppError> {
    let (fleet, caller) = fleet()?;
    Ok(fleet.artifacts(caller).await?)
}

/// The public half of the server's update key (64 hex digits), which agents are
/// configured with to verify updates.
#[server(endpoint = "update_signing_key", input = Json)]
pub async fn update_signing_key() -> Result<String, AppError> {
    let (fleet, caller) = fleet()?;
    Ok(fleet.update_signing_key(&caller)?)
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
