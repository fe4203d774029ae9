//! Who is asking, checked on every request before anything else runs.
//!
//! A browser carries a session cookie (set by the login form, [`login`]); a script
//! carries `Authorization: Bearer <token>`. [`authenticate`] turns either into an
//! [`Identity`] in the request's extensions, which handlers, server functions and the
//! live channel read. Without one, only the login and first-run pages, the built
//! site's files and the health and metrics endpoints answer: other pages redirect to
//! the login page, the API and server functions answer 401 `unauthenticated`.
//!
//! What an identity may do is its [`Role`]; which devices it sees is [`DeviceGroups`]:
//! admins see every device, everyone else the devices in a group they were granted.
//!
//! - [`login`]: the forms (login, logout, first run, password change) and cookies.
//! - [`throttle`]: failed logins slowed down per account and per address.

pub mod login;
pub mod throttle;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use axum::{
    extract::{ConnectInfo, FromRequestParts, Request, State},
    http::{HeaderMap, Method, StatusCode, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Redirect, Response},
};
use protocol::api::ErrorCode;
use protocol::auth::{Me, Role};
use store::Store;
use tokio_util::sync::CancellationToken;

use crate::{error::Failure, state::AppState};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "tether_session";

/// How often each replica reloads the device groups, which another replica may have
/// changed.
const GROUPS_RELOAD: Duration = Duration::from_secs(10);

/// The person (or the person's API token) a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    /// The role in force: a token's, never above its owner's.
    pub role: Role,
    pub groups: Vec<String>,
    /// The API token's id, when the request carried one.
    pub token: Option<String>,
}

impl Identity {
    /// How the audit trail and the command views name this identity.
    pub fn actor(&self) -> String {
        match &self.token {
            Some(id) => format!("{} (token {id})", self.name),
            None => self.name.clone(),
        }
    }

    pub fn me(&self) -> Me {
        Me {
            name: self.name.clone(),
            role: self.role,
            groups: self.groups.clone(),
        }
    }

    /// 403 `forbidden` unless this identity has at least `role`.
    pub fn require(&self, role: Role, to: &str) -> Result<(), Failure> {
        if self.role >= role {
            Ok(())
        } else {
            Err(Failure::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                format!("{to} needs the {role} role; you are {}", self.role),
            ))
        }
    }
}

/// The client's address, for the audit trail and login throttling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Identity {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        identity(parts).cloned()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Source {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(source(parts))
    }
}

/// The identity [`authenticate`] found for this request, or 401.
pub fn identity(parts: &Parts) -> Result<&Identity, Failure> {
    parts
        .extensions
        .get::<Identity>()
        .ok_or_else(unauthenticated)
}

/// Where this request came from.
pub fn source(parts: &Parts) -> Source {
    parts
        .extensions
        .get::<Source>()
        .cloned()
        .unwrap_or_else(|| Source("unknown".into()))
}

pub fn unauthenticated() -> Failure {
    Failure::new(
        StatusCode::UNAUTHORIZED,
        ErrorCode::Unauthenticated,
        "log in first, or send an API token as `Authorization: Bearer <token>`",
    )
}

/// The middleware: finds who is asking and lets the request through, or answers for
/// the handler (401, or a redirect to the login page).
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let source = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |info| info.0.ip().to_string());
    request.extensions_mut().insert(Source(source));
    let identity = match find_identity(&state, request.headers()).await {
        Ok(identity) => identity,
        Err(failure) => return failure.into_response(),
    };
    let path = request.uri().path();
    match identity {
        Some(identity) => {
            request.extensions_mut().insert(identity);
            next.run(request).await
        }
        None if is_public(path) => next.run(request).await,
        None if path.starts_with("/api/")
            || !matches!(*request.method(), Method::GET | Method::HEAD) =>
        {
            unauthenticated().into_response()
        }
        None => {
            let here = request.uri().path_and_query().map_or("/", |p| p.as_str());
            Redirect::to(&format!("/login?next={}", encode(here))).into_response()
        }
    }
}

/// The identity the request's token or session cookie names: from [`Recent`] if it was
/// looked up in the last few seconds, else from the store. A token that is not valid is
/// an error (the script should know); a stale cookie is only no identity.
pub async fn find_identity(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Identity>, Failure> {
    let key = credential_key(headers);
    if let Some(known) = key.and_then(|key| state.recent.get(&key)) {
        return Ok(Some(known));
    }
    let found = look_up(&state.accounts, headers).await?;
    if let (Some(key), Some(identity)) = (key, &found) {
        state.recent.put(key, identity.clone());
    }
    Ok(found)
}

/// The hash of the credential a request carries, if any.
fn credential_key(headers: &HeaderMap) -> Option<[u8; 32]> {
    use sha2::{Digest, Sha256};
    let credential = match headers.get(header::AUTHORIZATION) {
        Some(value) => format!("bearer {}", value.to_str().ok()?),
        None => format!("cookie {}", cookie(headers, SESSION_COOKIE)?),
    };
    Some(Sha256::digest(credential).into())
}

/// Identities found in the last [`RECENT_FOR`], by the hash of their credential: a
/// database lookup per request would cost more than the request itself. Forgotten at
/// once on this replica whenever a session, token or user changes here; another
/// replica's change reaches this one within [`RECENT_FOR`].
#[derive(Debug, Clone, Default)]
pub struct Recent(Arc<std::sync::Mutex<RecentMap>>);

type RecentMap = HashMap<[u8; 32], (Identity, std::time::Instant)>;

/// How long a looked-up identity is trusted without asking the store again.
pub const RECENT_FOR: Duration = Duration::from_secs(5);
/// Identities remembered at most (only valid ones are remembered, so a flood of
/// made-up tokens fills nothing).
const RECENT_MAX: usize = 10_000;

impl Recent {
    fn get(&self, key: &[u8; 32]) -> Option<Identity> {
        let recent = self.lock();
        let (identity, since) = recent.get(key)?;
        (since.elapsed() < RECENT_FOR).then(|| identity.clone())
    }

    fn put(&self, key: [u8; 32], identity: Identity) {
        let mut recent = self.lock();
        if recent.len() >= RECENT_MAX {
            recent.retain(|_, (_, since)| since.elapsed() < RECENT_FOR);
            if recent.len() >= RECENT_MAX {
                recent.clear();
            }
        }
        recent.insert(key, (identity, std::time::Instant::now()));
    }

    /// Forgets every identity: a session, token, role or group changed.
    pub fn forget_all(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RecentMap> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// [`find_identity`] without the memory.
async fn look_up(accounts: &Store, headers: &HeaderMap) -> Result<Option<Identity>, Failure> {
    let unavailable = |error: anyhow::Error| {
        tracing::error!("cannot check credentials: {error:#}");
        Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::StoreUnavailable,
            "cannot check credentials: the database is unavailable; try again shortly",
        )
    };
    if let Some(authorization) = headers.get(header::AUTHORIZATION) {
        let secret = authorization
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|secret| !secret.is_empty())
            .ok_or_else(|| {
                Failure::new(
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::Unauthenticated,
                    "the Authorization header must be `Bearer <token>`",
                )
            })?;
        let (user, token) = accounts
            .token(secret)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| {
                Failure::new(
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::Unauthenticated,
                    "this API token is unknown or was revoked",
                )
            })?;
        return Ok(Some(Identity {
            name: user.name,
            role: token.role,
            groups: user.groups,
            token: Some(token.id),
        }));
    }
    let Some(secret) = cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    Ok(accounts
        .session(&secret)
        .await
        .map_err(unavailable)?
        .map(|user| Identity {
            name: user.name,
            role: user.role,
            groups: user.groups,
            token: None,
        }))
}

/// What anyone may reach without logging in: the login and first-run pages and their
/// forms, the site's own files, health and metrics.
fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/login"
            | "/setup"
            | "/healthz"
            | "/readyz"
            | "/metrics"
            | "/favicon.svg"
            // It describes the API and holds no data (see `openapi`).
            | "/api/v1/openapi.json"
    ) || path.starts_with("/auth/")
        || path.starts_with("/pkg/")
        // Devices fetch updates with a token of their own (checked by the handler).
        || (path.starts_with("/api/v1/artifacts/") && path.ends_with("/download"))
}

/// One cookie's value from the `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"').to_owned())
}

/// Percent-encodes a path for a query string.
fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Which devices are in which groups, for deciding who sees what: loaded from the store
/// at start, changed by admins here, and reloaded now and then (another replica's
/// admins change it too).
#[derive(Debug, Clone, Default)]
pub struct DeviceGroups(Arc<RwLock<HashMap<String, Vec<String>>>>);

impl DeviceGroups {
    /// Whether `who` may see (and, with the role for it, command) `device`.
    pub fn may_see(&self, who: &Identity, device: &str) -> bool {
        if who.role == Role::Admin {
            return true;
        }
        let groups = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        groups
            .get(device)
            .is_some_and(|of_device| of_device.iter().any(|g| who.groups.contains(g)))
    }

    /// The devices `who` may see, for filtering a query: `None` for an admin (every
    /// device).
    pub fn visible_to(&self, who: &Identity) -> Option<Vec<String>> {
        if who.role == Role::Admin {
            return None;
        }
        let groups = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(
            groups
                .iter()
                .filter(|(_, of_device)| of_device.iter().any(|g| who.groups.contains(g)))
                .map(|(device, _)| device.clone())
                .collect(),
        )
    }

    /// The devices in `group`, sorted.
    pub fn members(&self, group: &str) -> Vec<String> {
        let groups = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut members: Vec<String> = groups
            .iter()
            .filter(|(_, of_device)| of_device.iter().any(|g| g == group))
            .map(|(device, _)| device.clone())
            .collect();
        members.sort();
        members
    }

    /// The groups `device` is in.
    pub fn of(&self, device: &str) -> Vec<String> {
        let groups = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        groups.get(device).cloned().unwrap_or_default()
    }

    pub fn set(&self, device: &str, groups: Vec<String>) {
        let mut all = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if groups.is_empty() {
            all.remove(device);
        } else {
            all.insert(device.to_owned(), groups);
        }
    }

    pub async fn reload(&self, store: &Store) -> anyhow::Result<()> {
        let fresh = store.device_groups().await?;
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        Ok(())
    }

    /// Reloads every [`GROUPS_RELOAD`] until `stop`.
    pub async fn reload_until(self, store: Store, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(GROUPS_RELOAD) => {}
                () = stop.cancelled() => return,
            }
            if let Err(error) = self.reload(&store).await {
                tracing::warn!("cannot reload the device groups: {error:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(role: Role, groups: &[&str]) -> Identity {
        Identity {
            name: "u".into(),
            role,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            token: None,
        }
    }

    #[test]
    fn admins_see_every_device_others_their_groups_only() {
        let groups = DeviceGroups::default();
        groups.set("pump-1", vec!["site-a".into()]);
        groups.set("pump-2", vec!["site-b".into(), "site-c".into()]);
        assert!(groups.may_see(&who(Role::Admin, &[]), "pump-1"));
        assert!(groups.may_see(&who(Role::Admin, &[]), "no-groups"));
        let viewer = who(Role::Viewer, &["site-c"]);
        assert!(!groups.may_see(&viewer, "pump-1"));
        assert!(groups.may_see(&viewer, "pump-2"));
        assert!(!groups.may_see(&viewer, "no-groups"));
        groups.set("pump-2", vec![]);
        assert!(!groups.may_see(&viewer, "pump-2"));
    }

    #[test]
    fn recent_identities_are_keyed_by_credential_and_forgotten_on_change() {
        let recent = Recent::default();
        let mut alice = HeaderMap::new();
        alice.insert(header::AUTHORIZATION, "Bearer tth_a".parse().unwrap());
        let mut cookie_of_alice = HeaderMap::new();
        cookie_of_alice.insert(header::COOKIE, "tether_session=tth_a".parse().unwrap());
        let key = credential_key(&alice).unwrap();
        assert_ne!(
            Some(key),
            credential_key(&cookie_of_alice),
            "a token is not a cookie"
        );
        assert_eq!(credential_key(&HeaderMap::new()), None);
        recent.put(key, who(Role::Operator, &["a"]));
        assert_eq!(recent.get(&key).map(|w| w.role), Some(Role::Operator));
        recent.forget_all();
        assert_eq!(recent.get(&key), None);
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, "a=1; tether_session=abc".parse().unwrap());
        headers.append(header::COOKIE, "b=2".parse().unwrap());
        assert_eq!(cookie(&headers, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&headers, "b").as_deref(), Some("2"));
        assert_eq!(cookie(&headers, "tether"), None);
    }

    #[test]
    fn only_the_login_site_files_and_probes_are_public() {
        for path in [
            "/login",
            "/setup",
            "/auth/login",
            "/pkg/tether.wasm",
            "/healthz",
            "/metrics",
        ] {
            assert!(is_public(path), "{path}");
        }
        for path in [
            "/",
            "/devices/x",
            "/api/v1/devices",
            "/api/devices",
            "/login/x",
            "/account",
        ] {
            assert!(!is_public(path), "{path}");
        }
    }
}
