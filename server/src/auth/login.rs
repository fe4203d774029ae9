//! The forms people log in with, as plain HTML forms posting to `/auth/*` and answered
//! with redirects, so they work before (or without) any WASM: login, logout, the first
//! run's admin account, and changing one's password. Errors come back to the form's
//! page as `?error=<code>`, which the page turns into a message.
//!
//! The session is a random secret in an HttpOnly, SameSite=Lax cookie (Secure when the
//! server is configured for HTTPS or a proxy says the request came over it); the
//! database keeps only its hash. Cross-site posts never get here (the cross-site guard
//! runs first), so a hostile page cannot log anyone in or out.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use axum::extract::State;
use axum::{
    Form, Router,
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Redirect, Response},
    routing::post,
};
use protocol::auth::Role;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use store::AccountError;

use super::{Identity, SESSION_COOKIE, Source, cookie};
use crate::{audit, state::AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/login", post(log_in))
        .route("/logout", post(log_out))
        .route("/setup", post(set_up))
        .route("/password", post(change_password))
}

/// The one-time secret of the first-run link, while no user exists.
#[derive(Debug, Clone, Default)]
pub struct SetupLink(Arc<Mutex<Option<String>>>);

impl SetupLink {
    /// A fresh secret for the first-run link.
    pub fn issue() -> anyhow::Result<Self> {
        Ok(Self(Arc::new(Mutex::new(Some(random_hex(24)?)))))
    }

    pub fn secret(&self) -> Option<String> {
        self.lock().clone()
    }

    /// Whether `offered` is the secret, compared as hashes so that timing says nothing.
    fn matches(&self, offered: &str) -> bool {
        self.lock()
            .as_deref()
            .is_some_and(|secret| Sha256::digest(secret) == Sha256::digest(offered))
    }

    fn spend(&self) {
        self.lock().take();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `bytes` random bytes from the operating system, as hex.
pub fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buffer = vec![0; bytes];
    getrandom::fill(&mut buffer).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    Ok(hex::encode(buffer))
}

#[derive(Deserialize)]
struct LoginForm {
    name: String,
    password: String,
    #[serde(default)]
    next: String,
}

async fn log_in(
    State(state): State<AppState>,
    Source(address): Source,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = local_path(&form.next);
    let back = |error: &str| {
        Redirect::to(&format!(
            "/login?error={error}&next={}",
            super::encode(next)
        ))
        .into_response()
    };
    let name = form.name.trim();
    if let Err(locked) = state.throttle.check(name, &address, Instant::now()) {
        if locked.first {
            let shown = shown_name(name);
            let detail = format!(
                "locked out for {}s more; further attempts in this lock-out are not recorded",
                locked.wait.as_secs().max(1)
            );
            audit::record(&state, &shown, &address, "login_throttled", &shown, &detail).await;
        }
        return back("throttled");
    }
    if name.chars().count() > MAX_NAME_CHARS {
        // No account has such a name: a failure, without asking the database.
        state.throttle.failed(name, &address, Instant::now());
        let shown = shown_name(name);
        audit::record(
            &state,
            &shown,
            &address,
            "login_failed",
            &shown,
            "no such name",
        )
        .await;
        return back("invalid");
    }
    match state.accounts.check_password(name, &form.password).await {
        Ok(Some(user)) => {
            state.throttle.succeeded(name);
            audit::record(&state, &user.name, &address, "login", &user.name, "").await;
            match start_session(&state, &headers, &user.name, next).await {
                Ok(response) => response,
                Err(error) => {
                    tracing::error!("cannot start a session: {error:#}");
                    back("unavailable")
                }
            }
        }
        Ok(None) => {
            state.throttle.failed(name, &address, Instant::now());
            audit::record(
                &state,
                name,
                &address,
                "login_failed",
                name,
                "wrong name or password",
            )
            .await;
            back("invalid")
        }
        Err(error) => {
            tracing::error!("cannot check a password: {error:#}");
            back("unavailable")
        }
    }
}

/// Sets a new session's cookie and sends the browser on to `next`.
async fn start_session(
    state: &AppState,
    headers: &HeaderMap,
    name: &str,
    next: &str,
) -> anyhow::Result<Response> {
    let secret = state
        .accounts
        .create_session(name, state.session_ttl)
        .await?;
    let mut cookie = format!(
        "{SESSION_COOKIE}={secret}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}",
        state.session_ttl.as_secs()
    );
    if state.secure_cookies || forwarded_https(headers) {
        cookie.push_str("; Secure");
    }
    let mut response = Redirect::to(next).into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, HeaderValue::from_str(&cookie)?);
    Ok(response)
}

async fn log_out(
    State(state): State<AppState>,
    Source(address): Source,
    identity: Option<axum::Extension<Identity>>,
    headers: HeaderMap,
) -> Response {
    if let Some(secret) = cookie(&headers, SESSION_COOKIE)
        && let Err(error) = state.accounts.end_session(&secret).await
    {
        tracing::error!("cannot end a session: {error:#}");
    }
    state.recent.forget_all();
    if let Some(axum::Extension(who)) = identity {
        audit::record(&state, &who.actor(), &address, "logout", &who.name, "").await;
    }
    let mut response = Redirect::to("/login?error=logged_out").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_static("tether_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"),
    );
    response
}

#[derive(Deserialize)]
struct SetupForm {
    token: String,
    name: String,
    password: String,
    confirm: String,
}

/// The first run: whoever holds the link the server printed creates the first admin.
async fn set_up(
    State(state): State<AppState>,
    Source(address): Source,
    headers: HeaderMap,
    Form(form): Form<SetupForm>,
) -> Response {
    let back = |error: &str| {
        Redirect::to(&format!(
            "/setup?error={error}&token={}",
            super::encode(&form.token)
        ))
        .into_response()
    };
    if !state.setup.matches(&form.token) {
        audit::record(
            &state,
            form.name.trim(),
            &address,
            "setup_refused",
            "",
            "a wrong or spent first-run link",
        )
        .await;
        return Redirect::to("/setup?error=spent").into_response();
    }
    if form.password != form.confirm {
        return back("mismatch");
    }
    match state.accounts.user_count().await {
        Ok(0) => {}
        Ok(_) => {
            state.setup.spend();
            return Redirect::to("/setup?error=spent").into_response();
        }
        Err(error) => {
            tracing::error!("cannot count users: {error:#}");
            return back("unavailable");
        }
    }
    let name = form.name.trim();
    match state
        .accounts
        .add_user(name, &form.password, Role::Admin, &[])
        .await
    {
        Ok(user) => {
            state.setup.spend();
            audit::record(
                &state,
                &user.name,
                &address,
                "user_created",
                &user.name,
                "role admin, through the first-run link",
            )
            .await;
            match start_session(&state, &headers, &user.name, "/").await {
                Ok(response) => response,
                Err(_) => Redirect::to("/login").into_response(),
            }
        }
        Err(AccountError::Invalid(why)) => back(&format!("invalid&why={}", super::encode(&why))),
        Err(error) => {
            tracing::error!("cannot create the first user: {error}");
            back("unavailable")
        }
    }
}

#[derive(Deserialize)]
struct PasswordForm {
    current: String,
    password: String,
    confirm: String,
}

async fn change_password(
    State(state): State<AppState>,
    Source(address): Source,
    identity: Option<axum::Extension<Identity>>,
    headers: HeaderMap,
    Form(form): Form<PasswordForm>,
) -> Response {
    let Some(axum::Extension(who)) = identity else {
        return Redirect::to("/login?next=/account").into_response();
    };
    let back = |error: &str| Redirect::to(&format!("/account?error={error}")).into_response();
    if who.token.is_some() {
        return back("token");
    }
    if form.password != form.confirm {
        return back("mismatch");
    }
    match state
        .accounts
        .check_password(&who.name, &form.current)
        .await
    {
        Ok(Some(_)) => {}
        Ok(None) => {
            state.throttle.failed(&who.name, &address, Instant::now());
            audit::record(
                &state,
                &who.actor(),
                &address,
                "password_change_failed",
                &who.name,
                "wrong current password",
            )
            .await;
            return back("wrong_password");
        }
        Err(_) => return back("unavailable"),
    }
    match state.accounts.set_password(&who.name, &form.password).await {
        Ok(_) => {
            state.recent.forget_all();
            audit::record(
                &state,
                &who.actor(),
                &address,
                "password_changed",
                &who.name,
                "every other session ended",
            )
            .await;
            start_session(&state, &headers, &who.name, "/account?error=changed")
                .await
                .unwrap_or_else(|_| Redirect::to("/login").into_response())
        }
        Err(AccountError::Invalid(why)) => back(&format!("invalid&why={}", super::encode(&why))),
        Err(error) => {
            tracing::error!("cannot change a password: {error}");
            back("unavailable")
        }
    }
}

/// User names are at most this long; what a login form claims is cut to it before it
/// is written anywhere.
const MAX_NAME_CHARS: usize = 64;

/// A claimed name as the audit trail keeps it: at most [`MAX_NAME_CHARS`].
fn shown_name(name: &str) -> String {
    audit::cut(name, MAX_NAME_CHARS)
}

/// `next` if it is a path on this server (of a sane length), else `/`: the login form
/// must not become a way to send people to another site.
fn local_path(next: &str) -> &str {
    let local = next.len() <= 2_048
        && next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && !next.chars().any(char::is_control);
    if local { next } else { "/" }
}

/// Whether a proxy in front says the browser spoke HTTPS to it.
fn forwarded_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|proto| proto.eq_ignore_ascii_case("https"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_login() {
        assert_eq!(local_path("/devices/pump-1?x=1"), "/devices/pump-1?x=1");
        for foreign in [
            "https://evil.example",
            "//evil.example",
            "/\\evil.example",
            "",
            "devices",
            "/a\nb",
        ] {
            assert_eq!(local_path(foreign), "/", "{foreign:?}");
        }
    }

    #[test]
    fn the_first_run_secret_matches_once() {
        let link = SetupLink::issue().unwrap();
        let secret = link.secret().unwrap();
        assert_eq!(secret.len(), 48);
        assert!(!link.matches("wrong"));
        assert!(link.matches(&secret));
        link.spend();
        assert!(!link.matches(&secret));
    }
}
