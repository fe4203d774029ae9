//! The API for who may do what (API.md): the caller's own identity, users, API tokens,
//! device groups and the audit trail. Users, groups and the audit trail are for admins;
//! anyone may manage their own tokens. Every change is written to the audit trail.

use crate::openapi::shared;
use app::fleet::{AuditFilter, NewUser, UserChange};
use axum::extract::{Path, State};
use axum::{Json, http::StatusCode};
use protocol::api::{ApiError, ErrorCode};
use protocol::auth::{AuditCheck, AuditEntry, Me, NewToken, Role, TokenView, UserView};
use serde::Deserialize;
use store::{AccountError, AuditQuery};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    api::{Body, Device, Params},
    audit,
    auth::{Identity, Source},
    error::Failure,
    state::AppState,
};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(me))
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, change_user, delete_user))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(list_groups))
        .routes(routes!(set_device_groups, device_groups))
        .routes(routes!(audit_trail))
        .routes(routes!(verify_audit))
}

impl From<AccountError> for Failure {
    fn from(error: AccountError) -> Self {
        let (status, code) = match &error {
            AccountError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidInput),
            AccountError::Exists(_) => (StatusCode::CONFLICT, ErrorCode::AlreadyExists),
            AccountError::NotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            AccountError::Db(_) => return store_unavailable(&error),
        };
        Self::new(status, code, error.to_string())
    }
}

pub fn store_unavailable(error: &dyn std::fmt::Display) -> Failure {
    tracing::error!("the accounts database failed: {error}");
    Failure::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::StoreUnavailable,
        "the database is unavailable; try again shortly",
    )
}

#[utoipa::path(
get, path = "/v1/me", tag = "accounts",
summary = "Who the caller is",
responses((status = 200, description = "The caller", body = Me))
)]
async fn me(who: Identity) -> Json<Me> {
    Json(who.me())
}

#[utoipa::path(
get, path = "/v1/users", tag = "accounts",
summary = "Every user",
responses(
    (status = 200, description = "The users", body = Vec<UserView>),
    shared::AdminOnly,
    shared::StoreUnavailable,
)
)]
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

#[utoipa::path(
get, path = "/v1/users/{name}", tag = "accounts",
summary = "One user (admins: anyone; others: themselves)",
params(("name" = String, Path, description = "The user's name")),
responses(
    (status = 200, description = "The user", body = UserView),
    shared::AdminOnly,
    (status = 404, description = "`not_found`", body = ApiError),
    shared::StoreUnavailable,
)
)]
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
                ErrorCode::NotFound,
                format!("no user \"{name}\""),
            )
        })
}

#[utoipa::path(
post, path = "/v1/users", tag = "accounts",
summary = "Create a user",
request_body = NewUser,
responses(
    (status = 201, description = "The user", body = UserView),
    shared::AdminOnly,
    (status = 409, description = "`already_exists`", body = ApiError),
    (status = 422, description = "`invalid_input`: a name, password or group that does not check", body = ApiError),
    shared::StoreUnavailable,
)
)]
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

#[utoipa::path(
patch, path = "/v1/users/{name}", tag = "accounts",
summary = "Change a user's role, groups or password",
params(("name" = String, Path, description = "The user's name")),
request_body = UserChange,
responses(
    (status = 200, description = "The user", body = UserView),
    shared::AdminOnly,
    (status = 404, description = "`not_found`", body = ApiError),
    (status = 409, description = "`own_role`: lowering one's own role", body = ApiError),
    (status = 422, description = "`invalid_input`", body = ApiError),
    shared::StoreUnavailable,
)
)]
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
            ErrorCode::OwnRole,
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

#[utoipa::path(
delete, path = "/v1/users/{name}", tag = "accounts",
summary = "Delete a user (and their tokens and sessions)",
params(("name" = String, Path, description = "The user's name")),
responses(
    (status = 204, description = "Deleted"),
    shared::AdminOnly,
    (status = 404, description = "`not_found`", body = ApiError),
    (status = 409, description = "`own_account`: deleting oneself", body = ApiError),
    shared::StoreUnavailable,
)
)]
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
            ErrorCode::OwnAccount,
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Owner {
    /// Whose tokens: the caller's if absent (an admin's: everyone's).
    pub owner: Option<String>,
}

#[utoipa::path(
get, path = "/v1/tokens", tag = "accounts",
summary = "API tokens: the caller's own, or (admins) anyone's",
params(Owner),
responses(
    (status = 200, description = "The tokens (no secrets)", body = Vec<TokenView>),
    shared::AdminOnly,
    shared::StoreUnavailable,
)
)]
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

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub name: String,
    /// At most the creator's role; the creator's own if absent.
    pub role: Option<Role>,
    /// Whom it acts for: the creator if absent; another user only for admins.
    pub owner: Option<String>,
}

#[utoipa::path(
post, path = "/v1/tokens", tag = "accounts",
summary = "Create an API token (its secret is shown once)",
request_body = TokenRequest,
responses(
    (status = 201, description = "The token and its secret", body = NewToken),
    (status = 403, description = "`forbidden`: a role above the creator's, or (not admin) for another user", body = ApiError),
    (status = 404, description = "`not_found`: no such owner", body = ApiError),
    (status = 422, description = "`invalid_input`", body = ApiError),
    shared::StoreUnavailable,
)
)]
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
            ErrorCode::Forbidden,
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

#[utoipa::path(
delete, path = "/v1/tokens/{id}", tag = "accounts",
summary = "Revoke an API token",
params(("id" = String, Path, description = "The token's id")),
responses(
    (status = 200, description = "The token, revoked", body = TokenView),
    shared::AdminOnly,
    (status = 404, description = "`not_found`", body = ApiError),
    shared::StoreUnavailable,
)
)]
pub(crate) async fn revoke_token(
    State(state): State<AppState>,
    who: Identity,
    Source(address): Source,
    Path(id): Path<String>,
) -> Result<Json<TokenView>, Failure> {
    let unknown = || {
        Failure::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
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

#[utoipa::path(
get, path = "/v1/groups", tag = "accounts",
summary = "Every device group",
responses(
    (status = 200, description = "The groups", body = Vec<String>),
    shared::AdminOnly,
    shared::StoreUnavailable,
)
)]
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

#[utoipa::path(
get, path = "/v1/devices/{id}/groups", tag = "devices",
summary = "A device's groups",
params(("id" = String, Path, description = "The device's id")),
responses(
    (status = 200, description = "The groups", body = Vec<String>),
    (status = 404, description = "`unknown_device`: one the caller may not see", body = ApiError),
)
)]
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

#[utoipa::path(
put, path = "/v1/devices/{id}/groups", tag = "devices",
summary = "Set a device's groups",
params(("id" = String, Path, description = "The device's id")),
request_body = Vec<String>,
responses(
    (status = 200, description = "The groups", body = Vec<String>),
    shared::AdminOnly,
    (status = 422, description = "`invalid_input`: a group name that does not check", body = ApiError),
    shared::StoreUnavailable,
)
)]
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

#[utoipa::path(
get, path = "/v1/audit", tag = "accounts",
summary = "The audit trail, newest first",
params(AuditFilter),
responses(
    (status = 200, description = "The entries", body = Vec<AuditEntry>),
    shared::AdminOnly,
    shared::StoreUnavailable,
)
)]
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

#[utoipa::path(
get, path = "/v1/audit/verify", tag = "accounts",
summary = "Check the audit trail's hash chain",
responses(
    (status = 200, description = "The check", body = AuditCheck),
    shared::AdminOnly,
    shared::StoreUnavailable,
)
)]
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
