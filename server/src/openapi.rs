//! The OpenAPI 3.1 document of `/api/v1`, served at `GET /api/v1/openapi.json` without
//! a login (it describes the API and holds no data). It is not written by hand: the API's
//! router is an `utoipa_axum::OpenApiRouter` to which every route is added with
//! `routes!(handler, …)`, each handler carrying its `#[utoipa::path]` (method, path,
//! parameters, body, responses), and the bodies' schemas come from the types themselves
//! (`protocol`'s `openapi` feature). A route cannot be served without being described.
//! [`finish`] then adds what every operation shares: the `/api` prefix, the two ways to
//! log in, 401 `unauthenticated`, and 400 `bad_request` where a query or body is read.

use std::sync::OnceLock;

use axum::http::StatusCode;
use protocol::api::{ApiError, ErrorCode};
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
            Every error is `{\"code\", \"message\"}` with the HTTP status listed for its code \
            (`ErrorCode` lists every code). Clients MUST ignore fields they do not know. \
            Only `/api/v1` is the contract: the web UI's server functions (`/api/<name>`) are \
            its internal calls, not part of this API, and may change in any release.",
        license(name = "MIT OR Apache-2.0"),
    ),
    components(schemas(ApiError, ErrorCode)),
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

/// Error answers many operations share: each is one row of their `responses(...)`,
/// written once here. Never built: they only describe.
pub mod shared {
    use protocol::api::ApiError;

    #[derive(Debug, utoipa::IntoResponses)]
    #[response(
        status = 503,
        description = "`store_unavailable`: the database cannot be read or written"
    )]
    #[allow(dead_code)]
    pub struct StoreUnavailable(ApiError);

    #[derive(Debug, utoipa::IntoResponses)]
    #[response(status = 403, description = "`forbidden`: needs the admin role")]
    #[allow(dead_code)]
    pub struct AdminOnly(ApiError);

    #[derive(Debug, utoipa::IntoResponses)]
    #[response(status = 403, description = "`forbidden`: needs the operator role")]
    #[allow(dead_code)]
    pub struct OperatorOnly(ApiError);

    #[derive(Debug, utoipa::IntoResponses)]
    #[response(
        status = 404,
        description = "`unknown_job`: no such job, or one with a device the caller may not see"
    )]
    #[allow(dead_code)]
    pub struct UnknownJob(ApiError);
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

/// `GET /docs/api`: the document as a page people read, rendered here from the document
/// (no script, nothing fetched from elsewhere): each operation's method, path, summary,
/// parameters, body and responses. Behind the login, as every page.
pub async fn page() -> axum::response::Html<String> {
    let document: serde_json::Value = document()
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    axum::response::Html(render(&document))
}

/// HTML-escapes `text`.
fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A schema, named by its component when it is one.
fn schema_name(schema: &serde_json::Value) -> String {
    if let Some(name) = schema["$ref"].as_str() {
        return name.rsplit('/').next().unwrap_or(name).to_owned();
    }
    if schema["type"] == "array" {
        return format!("[{}]", schema_name(&schema["items"]));
    }
    match &schema["type"] {
        serde_json::Value::String(kind) => kind.clone(),
        serde_json::Value::Array(kinds) => kinds
            .iter()
            .filter_map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(" | "),
        _ => "any".into(),
    }
}

fn render(document: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let mut html = String::from(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Tether API</title><style>\
         body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.4}\
         code,.path{font-family:ui-monospace,monospace}\
         section{border-top:1px solid #ccc;padding:.5rem 0}\
         .method{display:inline-block;min-width:4.5rem;font-weight:bold}\
         table{border-collapse:collapse;margin:.3rem 0}td,th{text-align:left;padding:.1rem .6rem .1rem 0;vertical-align:top}\
         </style></head><body><p><a href=\"/\">← Tether</a></p><h1>Tether API</h1>",
    );
    let _ = write!(
        html,
        "<p>{} The machine-readable document: <a href=\"/api/v1/openapi.json\"><code>/api/v1/openapi.json</code></a> (OpenAPI 3.1). \
         Log in with the session cookie or <code>Authorization: Bearer &lt;token&gt;</code>.</p>",
        esc(document["info"]["description"].as_str().unwrap_or_default())
    );
    let empty = serde_json::Map::new();
    for (path, item) in document["paths"].as_object().unwrap_or(&empty) {
        for (method, operation) in item.as_object().unwrap_or(&empty) {
            let _ = write!(
                html,
                "<section><h3><span class=\"method\">{}</span> <span class=\"path\">{}</span></h3><p>{}</p>",
                esc(&method.to_uppercase()),
                esc(path),
                esc(operation["summary"].as_str().unwrap_or_default())
            );
            if let Some(description) = operation["description"].as_str() {
                let _ = write!(html, "<p>{}</p>", esc(description));
            }
            if operation["security"] == serde_json::json!([{}]) {
                html.push_str("<p><em>No login needed.</em></p>");
            }
            if let Some(parameters) = operation["parameters"].as_array() {
                html.push_str(
                    "<table><tr><th>Parameter</th><th>In</th><th>Type</th><th></th></tr>",
                );
                for parameter in parameters {
                    let _ = write!(
                        html,
                        "<tr><td><code>{}</code>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        esc(parameter["name"].as_str().unwrap_or_default()),
                        if parameter["required"] == true {
                            " (required)"
                        } else {
                            ""
                        },
                        esc(parameter["in"].as_str().unwrap_or_default()),
                        esc(&schema_name(&parameter["schema"])),
                        esc(parameter["description"].as_str().unwrap_or_default())
                    );
                }
                html.push_str("</table>");
            }
            if let Some(content) = operation["requestBody"]["content"].as_object() {
                for (kind, body) in content {
                    let _ = write!(
                        html,
                        "<p>Body ({}): <code>{}</code></p>",
                        esc(kind),
                        esc(&schema_name(&body["schema"]))
                    );
                }
            }
            html.push_str("<table><tr><th>Status</th><th>Body</th><th></th></tr>");
            for (status, response) in operation["responses"].as_object().unwrap_or(&empty) {
                let body = response["content"]
                    .as_object()
                    .and_then(|c| c.values().next())
                    .map(|c| schema_name(&c["schema"]))
                    .unwrap_or_default();
                let _ = write!(
                    html,
                    "<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
                    esc(status),
                    esc(&body),
                    esc(response["description"].as_str().unwrap_or_default())
                );
            }
            html.push_str("</table></section>");
        }
    }
    html.push_str("</body></html>");
    html
}
