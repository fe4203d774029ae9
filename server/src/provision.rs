//! The API for device credentials (API.md): a device must be provisioned before it may
//! connect to the broker, and connects with a secret of its own as its user name and
//! password. Admins only. The secret is in the answer to provisioning or rotating and
//! nowhere else: the store keeps its hash, and the audit trail records who provisioned,
//! rotated or revoked which device, never the secret.
//!
//! `POST /v1/devices` and `DELETE /v1/devices/{id}` share their paths with the device
//! reads in `api`, whose routes send those methods here (axum refuses two routes on one
//! path); the rest are in [`routes`]. The handlers only unpack the request: [`list`],
//! [`provision`], [`rotate`] and [`revoke`] do the work, for the UI's server functions
//! (`fleet`) too.

use crate::openapi::shared;
use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use protocol::api::{ApiError, ErrorCode};
use protocol::auth::{DeviceCredential, ProvisionedDevice, Role};
use serde::Deserialize;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    admin::store_unavailable,
    api::Body,
    audit,
    auth::{Identity, Source},
    error::Failure,
    state::AppState,
};

/// What the audit trail says about each change, from the API and the command line
/// alike.
pub const PROVISIONED: &str = "may connect with a secret of its own (shown once)";
pub const ROTATED: &str = "new secret; the old one no longer connects";
pub const REVOKED: &str = "credential deleted; the device can no longer connect";

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_provisioned))
        .routes(routes!(rotate_secret))
}

/// The body of `POST /v1/devices`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    pub id: String,
}

#[utoipa::path(
get, path = "/v1/provisioned", tag = "devices",
summary = "Every provisioned device (no secrets)",
description = "Needs the admin role.",
responses(
    (status = 200, description = "Sorted by id", body = Vec<ProvisionedDevice>),
    shared::AdminOnly,
    shared::StoreUnavailable,
)
)]
async fn list_provisioned(
    State(state): State<AppState>,
    who: Identity,
) -> Result<Json<Vec<ProvisionedDevice>>, Failure> {
    list(&state, &who).await.map(Json)
}

#[utoipa::path(
post, path = "/v1/devices", tag = "devices",
summary = "Provision a device: a broker credential of its own",
description = "Needs the admin role. The secret is shown once.",
request_body = NewDevice,
responses(
    (status = 201, description = "The credential", body = DeviceCredential),
    shared::AdminOnly,
    (status = 409, description = "`already_exists`: the device is provisioned already", body = ApiError),
    (status = 422, description = "`invalid_input`: an id that is no device id, or the servers' own account", body = ApiError),
    shared::StoreUnavailable,
)
)]
pub(crate) async fn provision_device(
    State(state): State<AppState>,
    who: Identity,
    Source(address): Source,
    Body(new): Body<NewDevice>,
) -> Result<(StatusCode, Json<DeviceCredential>), Failure> {
    let credential = provision(&state, &who, &address, &new.id).await?;
    Ok((StatusCode::CREATED, Json(credential)))
}

#[utoipa::path(
post, path = "/v1/devices/{id}/secret", tag = "devices",
summary = "Give a device a new secret (the old one stops working)",
description = "Needs the admin role.",
params(("id" = String, Path, description = "The device's id")),
responses(
    (status = 200, description = "The new credential", body = DeviceCredential),
    shared::AdminOnly,
    (status = 404, description = "`not_found`: the device is not provisioned", body = ApiError),
    shared::StoreUnavailable,
)
)]
async fn rotate_secret(
    State(state): State<AppState>,
    who: Identity,
    Source(address): Source,
    Path(id): Path<String>,
) -> Result<Json<DeviceCredential>, Failure> {
    rotate(&state, &who, &address, &id).await.map(Json)
}

#[utoipa::path(
delete, path = "/v1/devices/{id}", tag = "devices",
summary = "Revoke a device's credential",
description = "Needs the admin role. Its connections are closed.",
params(("id" = String, Path, description = "The device's id")),
responses(
    (status = 204, description = "Revoked"),
    shared::AdminOnly,
    (status = 404, description = "`not_found`: the device is not provisioned", body = ApiError),
    shared::StoreUnavailable,
)
)]
pub(crate) async fn revoke_device(
    State(state): State<AppState>,
    who: Identity,
    Source(address): Source,
    Path(id): Path<String>,
) -> Result<StatusCode, Failure> {
    revoke(&state, &who, &address, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// The operations themselves, for the API's handlers above and the UI's server functions
// (`fleet`) alike: each checks the caller's role, does the work and writes the audit
// entry. `source` is the caller's address, as the audit trail records it.

/// Every provisioned device, sorted by id, without secrets.
pub(crate) async fn list(
    state: &AppState,
    who: &Identity,
) -> Result<Vec<ProvisionedDevice>, Failure> {
    who.require(Role::Admin, "listing provisioned devices")?;
    let mut devices = state
        .accounts
        .provisioned_devices()
        .await
        .map_err(|e| store_unavailable(&e))?;
    // Why a device that has its credential is not online, when its hello was refused.
    let refused = state.hub.refused_hellos();
    if !refused.is_empty() {
        for device in &mut devices {
            if let Ok(id) = protocol::DeviceId::new(device.id.as_str()) {
                device.hello_refused = refused.get(&id).cloned();
            }
        }
    }
    Ok(devices)
}

/// Provisions the device `id` (checked by the store as a [`protocol::DeviceId`]): the
/// answer carries its secret, this once.
pub(crate) async fn provision(
    state: &AppState,
    who: &Identity,
    source: &str,
    id: &str,
) -> Result<DeviceCredential, Failure> {
    who.require(Role::Admin, "provisioning devices")?;
    if id == state.server_account {
        // Agents obey this account: a device under its name could command them all.
        return Err(Failure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidInput,
            format!("{id:?} is the servers' own broker account; a device cannot have that name"),
        ));
    }
    let secret = state.accounts.provision_device(id).await?;
    if let Ok(device) = protocol::DeviceId::new(id) {
        state.hub.admit(&device);
    }
    audit::record(
        state,
        &who.actor(),
        source,
        "device_provisioned",
        id,
        PROVISIONED,
    )
    .await;
    Ok(credential(state, id.to_owned(), secret))
}

/// Gives the provisioned device `id` a new secret, in the answer this once.
pub(crate) async fn rotate(
    state: &AppState,
    who: &Identity,
    source: &str,
    id: &str,
) -> Result<DeviceCredential, Failure> {
    who.require(Role::Admin, "rotating device secrets")?;
    let secret = state.accounts.rotate_device_secret(id).await?;
    // Whoever holds the old secret is logged in with it no longer: the device comes
    // back with the new one.
    disconnect(state, id);
    audit::record(
        state,
        &who.actor(),
        source,
        "device_secret_rotated",
        id,
        ROTATED,
    )
    .await;
    Ok(credential(state, id.to_owned(), secret))
}

/// Revokes the device `id`'s credential: it can no longer log in.
pub(crate) async fn revoke(
    state: &AppState,
    who: &Identity,
    source: &str,
    id: &str,
) -> Result<(), Failure> {
    who.require(Role::Admin, "revoking devices")?;
    state.accounts.revoke_device(id).await?;
    // Every revocation (API and UI) passes here, once the credential is gone, so it
    // cannot log in again after being thrown out.
    disconnect(state, id);
    if let Ok(device) = protocol::DeviceId::new(id) {
        state.hub.revoke(&device);
    }
    audit::record(state, &who.actor(), source, "device_revoked", id, REVOKED).await;
    Ok(())
}

/// Closes the device's connections to the embedded broker, if this server runs one
/// (RabbitMQ keeps them until they drop; the hub ignores a revoked device meanwhile).
fn disconnect(state: &AppState, id: &str) {
    if let Some(broker) = &state.embedded_broker {
        let closed = broker.disconnect_user(id);
        if closed > 0 {
            tracing::info!("closed {closed} broker connection(s) of device {id}");
        }
    }
}

/// The answer to provisioning or rotating: the secret, and the broker URL with it.
fn credential(state: &AppState, id: String, secret: String) -> DeviceCredential {
    let amqp_url = state
        .device_broker_url
        .as_deref()
        .and_then(|url| with_credential(url, &id, &secret));
    DeviceCredential {
        id,
        secret,
        amqp_url,
    }
}

/// The broker URL as devices are to use it: the server's own, without the server's
/// user and password (which are not the devices' to have). `None` if it does not parse.
pub fn device_broker_url(broker_url: &str) -> Option<String> {
    // Of a cluster's nodes, every one: the agent takes the list as the server does.
    let urls = common::split_urls(broker_url)
        .map(|one| {
            let mut url = url::Url::parse(one).ok()?;
            url.set_username("").ok()?;
            url.set_password(None).ok()?;
            Some(url.to_string())
        })
        .collect::<Option<Vec<_>>>()?;
    (!urls.is_empty()).then(|| urls.join(","))
}

pub use common::with_credential;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_credential_is_replaced_by_the_devices() {
        let base = device_broker_url("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(base, "amqp://127.0.0.1:5672/%2f");
        assert_eq!(
            with_credential(&base, "boiler-1", "0a1b").as_deref(),
            Some("amqp://boiler-1:0a1b@127.0.0.1:5672/%2f")
        );
        let cluster = device_broker_url("amqp://s:pw@n1:5681/%2f,amqp://s:pw@n2:5682/%2f").unwrap();
        assert_eq!(cluster, "amqp://n1:5681/%2f,amqp://n2:5682/%2f");
        assert_eq!(
            with_credential(&cluster, "d-1", "ab").as_deref(),
            Some("amqp://d-1:ab@n1:5681/%2f,amqp://d-1:ab@n2:5682/%2f")
        );
        let tls = device_broker_url("amqps://tether@broker.example.com/site?heartbeat=10");
        assert_eq!(
            tls.as_deref(),
            Some("amqps://broker.example.com/site?heartbeat=10")
        );
        assert_eq!(
            with_credential(&tls.unwrap(), "pump_2", "ff").as_deref(),
            Some("amqps://pump_2:ff@broker.example.com/site?heartbeat=10")
        );
        assert_eq!(device_broker_url("not a url"), None);
        assert_eq!(with_credential("mailto:x@example.com", "a", "b"), None);
    }
}
