//! The API for device credentials (API.md): a device must be provisioned before it may
//! connect to the broker, and connects with a secret of its own as its user name and
//! password. Admins only. The secret is in the answer to provisioning or rotating and
//! nowhere else: the store keeps its hash, and the audit trail records who provisioned,
//! rotated or revoked which device, never the secret.
//!
//! `POST /v1/devices` and `DELETE /v1/devices/{id}` share their paths with the device
//! reads in `api`, whose routes send those methods here (axum refuses two routes on one
//! path); the rest are in [`routes`].

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    routing::{get, post},
};
use protocol::auth::{DeviceCredential, ProvisionedDevice, Role};
use serde::Deserialize;

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

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/provisioned", get(list_provisioned))
        .route("/v1/devices/{id}/secret", post(rotate_secret))
}

/// The body of `POST /v1/devices`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    pub id: String,
}

async fn list_provisioned(
    State(state): State<AppState>,
    who: Identity,
) -> Result<Json<Vec<ProvisionedDevice>>, Failure> {
    who.require(Role::Admin, "listing provisioned devices")?;
    Ok(Json(
        state
            .accounts
            .provisioned_devices()
            .await
            .map_err(|e| store_unavailable(&e))?,
    ))
}

pub(crate) async fn provision_device(
    State(state): State<AppState>,
    who: Identity,
    Source(address): Source,
    Body(new): Body<NewDevice>,
) -> Result<(StatusCode, Json<DeviceCredential>), Failure> {
    who.require(Role::Admin, "provisioning devices")?;
    let secret = state.accounts.provision_device(&new.id).await?;
    audit::record(
        &state,
        &who.actor(),
        &address,
        "device_provisioned",
        &new.id,
        PROVISIONED,
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(credential(&state, new.id, secret)),
    ))
}

async fn rotate_secret(
    State(state): State<AppState>,
    who: Identity,
    Source(address): Source,
    Path(id): Path<String>,
) -> Result<Json<DeviceCredential>, Failure> {
    who.require(Role::Admin, "rotating device secrets")?;
    let secret = state.accounts.rotate_device_secret(&id).await?;
    audit::record(
        &state,
        &who.actor(),
        &address,
        "device_secret_rotated",
        &id,
        ROTATED,
    )
    .await;
    Ok(Json(credential(&state, id, secret)))
}

pub(crate) async fn revoke_device(
    State(state): State<AppState>,
    who: Identity,
    Source(address): Source,
    Path(id): Path<String>,
) -> Result<StatusCode, Failure> {
    who.require(Role::Admin, "revoking devices")?;
    state.accounts.revoke_device(&id).await?;
    audit::record(
        &state,
        &who.actor(),
        &address,
        "device_revoked",
        &id,
        REVOKED,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
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
    let mut url = url::Url::parse(broker_url).ok()?;
    url.set_username("").ok()?;
    url.set_password(None).ok()?;
    Some(url.to_string())
}

/// `broker_url` with `id` and `secret` as its user and password. `None` if it does not
/// parse or cannot carry them (no host).
pub fn with_credential(broker_url: &str, id: &str, secret: &str) -> Option<String> {
    let mut url = url::Url::parse(broker_url).ok()?;
    url.set_username(id).ok()?;
    url.set_password(Some(secret)).ok()?;
    Some(url.to_string())
}

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
