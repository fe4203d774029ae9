//! RabbitMQ's HTTP auth backend, served by Tether, so that a RabbitMQ broker admits
//! exactly the devices provisioned here and applies the same policy the embedded broker
//! does ([`protocol::policy`]). RabbitMQ asks, for each connection and each action:
//!
//! - `/auth/rabbitmq/user` (`username`, `password`): `allow` for a provisioned device
//!   with its secret, else `deny`;
//! - `/auth/rabbitmq/vhost` (`username`, `vhost`): devices live in `/`;
//! - `/auth/rabbitmq/resource` (`username`, `vhost`, `resource`, `name`,
//!   `permission`): the policy's resource check;
//! - `/auth/rabbitmq/topic` (…, `routing_key`): the policy's topic check.
//!
//! Server replicas authenticate with RabbitMQ's own (internal) backend, listed first in
//! `rabbitmq.conf` (README), so only devices are ever asked about here. Requests come
//! as query strings (RabbitMQ's default `GET`) or forms (`POST`). Only addresses in
//! `TETHER_BROKER_AUTH_FROM` (default: this machine) may ask: the answers would
//! otherwise be a way to guess device secrets without going through the broker.

use std::net::IpAddr;

use axum::{
    Router,
    extract::{FromRequest, Request, State},
    http::{Method, StatusCode},
    response::{IntoResponse, Response},
    routing::any,
};
use protocol::{
    DeviceId,
    policy::{self, Account, Permission, Resource},
};

use crate::{
    auth::{self, Source},
    state::AppState,
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/user", any(user))
        .route("/vhost", any(vhost))
        .route("/resource", any(resource))
        .route("/topic", any(topic))
}

/// What RabbitMQ sends; each endpoint uses some of it.
#[derive(Debug, Default)]
struct Ask {
    username: String,
    password: String,
    vhost: String,
    resource: String,
    name: String,
    permission: String,
    routing_key: String,
}

/// The longest question taken: RabbitMQ's are a few hundred bytes.
const MAX_QUESTION: usize = 16 * 1024;

/// The question, from the form (POST) or the query string (GET), asked from a trusted
/// address; anything else is answered for the handler.
impl FromRequest<AppState> for Ask {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Response> {
        let (parts, body) = request.into_parts();
        refused(state, &auth::source(&parts)).map_or(Ok(()), Err)?;
        if parts.method != Method::POST {
            return Ok(parse(parts.uri.query().unwrap_or_default().as_bytes()));
        }
        let body = axum::body::to_bytes(body, MAX_QUESTION)
            .await
            .map_err(|_| (StatusCode::PAYLOAD_TOO_LARGE, "deny").into_response())?;
        Ok(parse(&body))
    }
}

fn parse(body: &[u8]) -> Ask {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    let get = |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    Ask {
        username: get("username"),
        password: get("password"),
        vhost: get("vhost"),
        resource: get("resource"),
        name: get("name"),
        permission: get("permission"),
        routing_key: get("routing_key"),
    }
}

fn answer(allowed: bool) -> Response {
    (StatusCode::OK, if allowed { "allow" } else { "deny" }).into_response()
}

/// 403 for an address that may not ask at all.
fn refused(state: &AppState, Source(address): &Source) -> Option<Response> {
    let trusted = address.parse::<IpAddr>().is_ok_and(|ip| {
        if state.broker_auth_from.is_empty() {
            ip.is_loopback()
        } else {
            state.broker_auth_from.contains(&ip)
        }
    });
    (!trusted).then(|| {
        tracing::warn!("refused a broker auth question from {address}");
        (StatusCode::FORBIDDEN, "deny").into_response()
    })
}

/// The device a user name names (servers never reach this backend).
fn device(username: &str) -> Option<Account> {
    DeviceId::new(username).ok().map(Account::Device)
}

async fn user(State(state): State<AppState>, ask: Ask) -> Response {
    if device(&ask.username).is_none() {
        return answer(false);
    }
    match state
        .accounts
        .check_device_secret(&ask.username, &ask.password)
        .await
    {
        Ok(allowed) => answer(allowed),
        Err(error) => {
            tracing::error!("cannot check a device's secret for the broker: {error:#}");
            answer(false)
        }
    }
}

async fn vhost(ask: Ask) -> Response {
    answer(device(&ask.username).is_some() && ask.vhost == "/")
}

fn permission(text: &str) -> Option<Permission> {
    match text {
        "configure" => Some(Permission::Configure),
        "write" => Some(Permission::Write),
        "read" => Some(Permission::Read),
        _ => None,
    }
}

async fn resource(ask: Ask) -> Response {
    let kind = match ask.resource.as_str() {
        "exchange" => Some(Resource::Exchange),
        "queue" => Some(Resource::Queue),
        _ => None,
    };
    let allowed = match (device(&ask.username), kind, permission(&ask.permission)) {
        (Some(account), Some(kind), Some(permission)) => {
            ask.vhost == "/" && policy::resource_allowed(&account, kind, &ask.name, permission)
        }
        _ => false,
    };
    answer(allowed)
}

async fn topic(ask: Ask) -> Response {
    let allowed = match (device(&ask.username), permission(&ask.permission)) {
        (Some(account), Some(permission)) => {
            ask.vhost == "/"
                && policy::topic_allowed(&account, &ask.name, &ask.routing_key, permission)
        }
        _ => false,
    };
    answer(allowed)
}
