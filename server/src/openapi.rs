//! The OpenAPI 3.1 document of `/api/v1`, served at `GET /api/v1/openapi.json` without
//! a login (it describes the API and holds no data). It is not written by hand: the API's
//! router is an `utoipa_axum::OpenApiRouter` to which every route is added with
//! `routes!(handler, …)`, each handler carrying its `#[utoipa::path]` (method, path,
//! parameters, body, responses), and the bodies' schemas come from the types themselves
//! (`protocol`'s `openapi` feature). A route cannot be served without being described.
//! [`finish`] then adds what every operation shares: the `/api` prefix, the two ways to
//! log in, 401 `unauthenticated`, and 400 `bad_request` where a query or body is read.

use std::sync::OnceLock;

use axum::{Json, http::StatusCode};
use protocol::api::ApiError;
use utoipa::{
    OpenApi,
    openapi::{
        ContentBuilder, RefOr, ResponseBuilder,
        path::Operation,
        security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        },
    },
};

use crate::auth::SESSION_COOKIE;

/// The security scheme names, as the document calls them.
pub const SESSION: &str = "session";
pub const TOKEN: &str = "token";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tether API",
        description = "The JSON HTTP API of a Tether server (API.md says what each part means). \
            Every error is `{\"code\", \"message\"}` with the HTTP status listed for its code.",
        license(name = "MIT OR Apache-2.0"),
    ),
    components(schemas(ApiError)),
    tags(
        (name = "devices", description = "The fleet: devices, their groups and credentials"),
        (name = "commands", description = "Commands sent to devices, and their history"),
        (name = "telemetry", description = "Readings kept in the database"),
        (name = "jobs", description = "One command sent to many devices"),
        (name = "artifacts", description = "Software update files"),
        (name = "diagnostics", description = "Diagnostics reports devices collected"),
        (name = "accounts", description = "Who may do what: users, tokens, groups, audit trail"),
        (name = "live", description = "Live events over WebSocket, Server-Sent Events or long polls"),
        (name = "meta", description = "This document"),
    )
)]
struct Base;

/// The document, once the router made it (see `api::routes`).
static DOCUMENT: OnceLock<String> = OnceLock::new();

/// Completes the document the router collected (paths relative to `/api`) and keeps
/// it for [`document`]. The first server of the process keeps it; every later one
/// makes the same.
pub fn keep(collected: utoipa::openapi::OpenApi) {
    DOCUMENT.get_or_init(|| {
        let document = finish(collected);
        document.to_pretty_json().unwrap_or_default()
    });
}

/// The base the router starts from: info, tags, the error schema.
pub fn base() -> utoipa::openapi::OpenApi {
    Base::openapi()
}

/// The prefix, the security schemes and requirement, and the shared responses.
fn finish(mut document: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    document.paths.paths = std::mem::take(&mut document.paths.paths)
        .into_iter()
        .map(|(path, item)| (format!("/api{path}"), item))
        .collect();
    let components = document
        .components
        .get_or_insert_with(utoipa::openapi::Components::new);
    components.add_security_scheme(
        SESSION,
        SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
            SESSION_COOKIE,
            "The session cookie the login form sets (POST /auth/login).",
        ))),
    );
    components.add_security_scheme(
        TOKEN,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An API token (`Authorization: Bearer <token>`), made on the account page or with POST /api/v1/tokens.",
                ))
                .build(),
        ),
    );
    document.security = Some(vec![
        SecurityRequirement::new(SESSION, Vec::<String>::new()),
        SecurityRequirement::new(TOKEN, Vec::<String>::new()),
    ]);
    for item in document.paths.paths.values_mut() {
        for operation in operations(item) {
            shared_responses(operation);
        }
    }
    document
}

/// Each operation of a path.
fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.options.as_mut(),
        item.head.as_mut(),
        item.patch.as_mut(),
        item.trace.as_mut(),
    ]
    .into_iter()
    .flatten()
}

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    "ApiError",
                ))))
                .build(),
        )
        .into()
}

/// 401 on every operation that needs a login (those that do not say `security(())`),
/// 400 on every one that reads a query, a path or a body, 415 and 422 `bad_request`
/// on those that read a JSON body.
fn shared_responses(operation: &mut Operation) {
    let public = operation
        .security
        .as_ref()
        .is_some_and(|s| s.iter().all(|r| r == &SecurityRequirement::default()));
    let responses = &mut operation.responses.responses;
    if !public && !responses.contains_key("401") {
        responses.insert(
            "401".into(),
            error_response(
                "`unauthenticated`: no session cookie nor API token, or a token that is unknown or revoked",
            ),
        );
    }
    let reads_input = operation.request_body.is_some()
        || operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let json_body = operation
        .request_body
        .as_ref()
        .is_some_and(|body| body.content.contains_key("application/json"));
    // A handler that lists its own 415 reads its body itself (a live request); the
    // others take it through `api::Body`, whose rejections are these.
    if json_body && !responses.contains_key("415") {
        {
            responses.insert(
                "415".into(),
                error_response("`bad_request`: a body without `Content-Type: application/json`"),
            );
        }
        let shape = "`bad_request`: a JSON body of the wrong shape (a missing field, a wrong type)";
        match responses.get_mut("422") {
            Some(RefOr::T(response)) => {
                response.description = format!("{}; {shape}", response.description);
            }
            _ => {
                responses.insert("422".into(), error_response(shape));
            }
        }
    }
    if reads_input && !responses.contains_key("400") {
        responses.insert(
            "400".into(),
            error_response(
                "`bad_request`: a query or path parameter that does not parse, or a body that is not JSON",
            ),
        );
    }
}

/// `GET /api/v1/openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "meta",
    summary = "This API's OpenAPI 3.1 document",
    description = "Needs no login: it describes the API and holds no data.",
    security(()),
    responses((status = 200, description = "The document", content_type = "application/json", body = Object)),
)]
pub async fn serve() -> Result<([(axum::http::HeaderName, &'static str); 1], String), StatusCode> {
    let document = DOCUMENT.get().ok_or(StatusCode::SERVICE_UNAVAILABLE)?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        document.clone(),
    ))
}

/// The document, as served.
pub fn document() -> Option<&'static str> {
    DOCUMENT.get().map(String::as_str)
}

/// The document as JSON, for the API page.
pub fn json() -> Option<Json<serde_json::Value>> {
    document()
        .and_then(|text| serde_json::from_str(text).ok())
        .map(Json)
}
