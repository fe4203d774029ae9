//! The API for who may do what (API.md): the caller's own identity, users, API tokens,
//! device groups and the audit trail. Users, groups and the audit trail are for admins;
//! anyone may manage their own tokens. Every change is written to the audit trail.

use app::fleet::{AuditFilter, NewUser, UserChange};
use axum::extract::{Path, State};
use axum::{
    Json, Router,
    http::StatusCode,
    routing::{get, put},
};
use protocol::auth::{AuditCheck, AuditEntry, Me, NewToken, Role, TokenView, UserView};
use serde::Deserialize;
use store::{AccountError, AuditQuery};

use crate::{
    api::{Body, Device, Params},
    audit,
    auth::{Identity, Source},
    error::Failure,
    state::AppState,
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/me", get(me))
        .route("/v1/users", get(list_users).post(create_user))
        .route(
            "/v1/users/{name}",
            get(get_user).patch(change_user).delete(delete_user),
        )
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{id}", axum::routing::delete(revoke_token))
        .route("/v1/groups", get(list_groups))
        .route(
            "/v1/devices/{id}/groups",
            put(set_device_groups).get(device_groups),
        )
        .route("/v1/audit", get(audit_trail))
        .route("/v1/audit/verify", get(verify_audit))
}

impl From<AccountError> for Failure {
    fn from(error: AccountError) -> Self {
        let (status, code) = match &error {
            AccountError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
            AccountError::Exists(_) => (StatusCode::CONFLICT, "already_exists"),
            AccountError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AccountError::Db(_) => return store_unavailable(&error),
        };
        Self::new(status, code, error.to_string())
    }
}

pub fn store_unavailable(error: &dyn std::fmt::Display) -> Failure {
    tracing::error!("the accounts database failed: {error}");
    Failure::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the database is unavailable; try again shortly",
    )
}

async fn me(who: Identity) -> Json<Me> {
    Json(who.me())
}

pub(crate) async fn list_users(
    State(state): State<AppState>,
    who: Identity,
) -> Result<Json<Vec<UserView>>, Failure> {
    who.require(Role::Admin, "listing users")?;
    Ok(Json(
        state
            .accounts
            .users()
            .await
            .map_err(|e| store_unavailable(&e))?,
    ))
}

pub(crate) async fn get_user(
    State(state): State<AppState>,
    who: Identity,
    Path(name): Path<String>,
) -> Result<Json<UserView>, Failure> {
    if who.name != name {
        who.require(Role::Admin, "looking at other users")?;
    }
    state
        .accounts
        .user(&name)
        .await
        .map_err(|e| store_unavailable(&e))?
        .map(Json)
        .ok_or_else(|| {
            Failure::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no user \"{name}\""),
            )
        })
}

pub(crate) async fn create_user(
    State(state): State<AppState>,
    who: Identity,
    Source(address): Source,
    Body(new): Body<NewUser>,
) -> Result<(StatusCode, Json<UserView>), Failure> {
    who.require(Role::Admin, "creating users")?;
    let user = state
        .accounts
        .add_user(new.name.trim(), &new.password, new.role, &new.groups)
        .await?;
    let detail = format!("role {}, groups [{}]", user.role, user.groups.join(", "));
    audit::record(
        &state,
        &who.actor(),
        &address,
        "user_created",
        &user.name,
        &detail,
    )
    .await;
    Ok((StatusCode::CREATED, Json(user)))
}

pub(crate) async fn change_user(
    State(state): State<AppState>,
    who: Identity,
    Source(address): Source,
    Path(name): Path<String>,
    Body(change): Body<UserChange>,
) -> Result<Json<UserView>, Failure> {
    who.require(Role::Admin, "changing users")?;
    if name == who.name && change.role.is_some_and(|role| role < Role::Admin) {
        return Err(Failure::new(
            StatusCode::CONFLICT,
            "own_role",
            "you cannot lower your own role (another admin can)",
        ));
    }
    let mut user = None;
    state.recent.forget_all();
    if let Some(role) = change.role {
        user = Some(state.accounts.set_role(&name, role).await?);
        audit::record(
            &state,
            &who.actor(),
            &address,
            "user_role_changed",
            &name,
            &format!("role {role}"),
        )
        .await;
    }
    if let Some(groups) = &change.groups {
        user = Some(state.accounts.set_groups(&name, groups).await?);
        audit::record(
            &state,
            &who.actor(),
            &address,
            "user_groups_changed",
            &name,
            &format!("groups [{}]", groups.join(", ")),
        )
        .await;
    }
    if let Some(password) = &change.password {
        user = Some(state.accounts.set_password(&name, password).await?);
        audit::record(
            &state,
            &who.actor(),
            &address,
            "password_reset",
            &name,
            "set by an admin; the user's sessions ended",
        )
        .await;
    }
    match user {
        Some(user) => Ok(Json(user)),
        None => get_user(State(state), who, Path(name)).await,
    }
}

pub(crate) async fn delete_user(
    State(state): State<AppState>,
    who: Identity,
    Source(address): Source,
    Path(name): Path<String>,
) -> Result<StatusCode, Failure> {
    who.require(Role::Admin, "deleting users")?;
    if name == who.name {
        return Err(Failure::new(
            StatusCode::CONFLICT,
            "own_account",
            "you cannot delete your own account (another admin can)",
        ));
    }
    state.accounts.delete_user(&name).await?;
    state.recent.forget_all();
    audit::record(
        &state,
        &who.actor(),
        &address,
        "user_deleted",
        &name,
        "sessions ended, tokens revoked",
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub struct Owner {
    pub owner: Option<String>,
}

pub(crate) async fn list_tokens(
    State(state): State<AppState>,
    who: Identity,
    Params(owner): Params<Owner>,
) -> Result<Json<Vec<TokenView>>, Failure> {
    let owner = match owner.owner {
        Some(owner) if owner == who.name => Some(owner),
        Some(owner) => {
            who.require(Role::Admin, "listing other users' tokens")?;
            Some(owner)
        }
        None if who.role == Role::Admin => None,
        None => Some(who.name.clone()),
    };
    Ok(Json(
        state
            .accounts
            .tokens(owner.as_deref())
            .await
            .map_err(|e| store_unavailable(&e))?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub name: String,
    /// At most the creator's role; the creator's own if absent.
    pub role: Option<Role>,
    /// Whom it acts for: the creator if absent; another user only for admins.
    pub owner: Option<String>,
}

pub(crate) async fn create_token(
    State(state): State<AppState>,
    who: Identity,
    Source(address): Source,
    Body(request): Body<TokenRequest>,
) -> Result<(StatusCode, Json<NewToken>), Failure> {
    let owner = request.owner.unwrap_or_else(|| who.name.clone());
    if owner != who.name {
        who.require(Role::Admin, "creating tokens for other users")?;
    }
    let role = request.role.unwrap_or(who.role);
    if role > who.role {
        return Err(Failure::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "a token cannot have a higher role ({role}) than yours ({})",
                who.role
            ),
        ));
    }
    let created = state
        .accounts
        .create_token(&owner, request.name.trim(), role)
        .await?;
    let detail = format!("\"{}\" for {owner}, role {role}", created.token.name);
    audit::record(
        &state,
        &who.actor(),
        &address,
        "token_created",
        &created.token.id,
        &detail,
    )
    .await;
    Ok((StatusCode::CREATED, Json(created)))
}

pub(crate) async fn revoke_token(
    State(state): State<AppState>,
    who: Identity,
    Source(address): Source,
    Path(id): Path<String>,
) -> Result<Json<TokenView>, Failure> {
    let unknown = || {
        Failure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no token \"{id}\""),
        )
    };
    let token = state
        .accounts
        .token_by_id(&id)
        .await
        .map_err(|e| store_unavailable(&e))?
        .ok_or_else(unknown)?;
    if token.owner != who.name && who.role != Role::Admin {
        // Others' tokens do not exist, as far as this caller can tell.
        return Err(unknown());
    }
    let token = state.accounts.revoke_token(&id).await?;
    state.recent.forget_all();
    audit::record(
        &state,
        &who.actor(),
        &address,
        "token_revoked",
        &id,
        &format!("\"{}\" of {}", token.name, token.owner),
    )
    .await;
    Ok(Json(token))
}

async fn list_groups(
    State(state): State<AppState>,
    who: Identity,
) -> Result<Json<Vec<String>>, Failure> {
    who.require(Role::Admin, "listing groups")?;
    Ok(Json(
        state
            .accounts
            .groups()
            .await
            .map_err(|e| store_unavailable(&e))?,
    ))
}

async fn device_groups(
    State(state): State<AppState>,
    who: Identity,
    Device(id): Device,
) -> Result<Json<Vec<String>>, Failure> {
    if !state.groups.may_see(&who, id.as_str()) {
        return Err(Failure::unknown_device(&id));
    }
    Ok(Json(state.groups.of(id.as_str())))
}

async fn set_device_groups(
    State(state): State<AppState>,
    who: Identity,
    Source(address): Source,
    Device(id): Device,
    Body(groups): Body<Vec<String>>,
) -> Result<Json<Vec<String>>, Failure> {
    who.require(Role::Admin, "changing a device's groups")?;
    state
        .accounts
        .set_device_groups(id.as_str(), &groups)
        .await?;
    state.groups.set(id.as_str(), groups.clone());
    audit::record(
        &state,
        &who.actor(),
        &address,
        "device_groups_changed",
        id.as_str(),
        &format!("groups [{}]", groups.join(", ")),
    )
    .await;
    Ok(Json(groups))
}

pub(crate) async fn audit_trail(
    State(state): State<AppState>,
    who: Identity,
    Params(filter): Params<AuditFilter>,
) -> Result<Json<Vec<AuditEntry>>, Failure> {
    who.require(Role::Admin, "reading the audit trail")?;
    let query = AuditQuery {
        actor: filter.actor.filter(|s| !s.is_empty()),
        action: filter.action.filter(|s| !s.is_empty()),
        target: filter.target.filter(|s| !s.is_empty()),
        from_ms: filter.from_ms,
        to_ms: filter.to_ms,
        before_seq: filter.before,
        limit: filter.limit.unwrap_or(100).clamp(1, 1_000),
    };
    Ok(Json(
        state
            .accounts
            .audit(query)
            .await
            .map_err(|e| store_unavailable(&e))?,
    ))
}

pub(crate) async fn verify_audit(
    State(state): State<AppState>,
    who: Identity,
) -> Result<Json<AuditCheck>, Failure> {
    who.require(Role::Admin, "checking the audit trail")?;
    Ok(Json(
        state
            .accounts
            .audit_verify()
            .await
            .map_err(|e| store_unavailable(&e))?,
    ))
}
