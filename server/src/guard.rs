//! Cross-site requests refused. A page on another site that the operator happens to
//! open can make their browser send requests here (a form posted, a WebSocket opened);
//! none of them may change anything or listen in. Every state-changing request (any
//! method but GET, HEAD and OPTIONS) and every WebSocket upgrade must come from this
//! server's own pages: the browser's `Sec-Fetch-Site` says so, or its `Origin` is this
//! server (as the `Host` header names it) or one of `TETHER_ALLOWED_ORIGINS` (a proxy's
//! public address). A request with neither header did not come from a browser page
//! (curl, scripts) and has nothing to forge. Server functions, moreover, take only
//! `application/json`, which no cross-site form can send.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{HeaderMap, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use protocol::api::ErrorCode;

use crate::error::Failure;

/// Origins besides the server's own that may change things, e.g. `https://tether.example.com`.
#[derive(Debug, Clone, Default)]
pub struct AllowedOrigins(Arc<Vec<String>>);

impl AllowedOrigins {
    pub fn new(origins: impl IntoIterator<Item = String>) -> Self {
        Self(Arc::new(
            origins
                .into_iter()
                .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                .filter(|o| !o.is_empty())
                .collect(),
        ))
    }
}

/// Parses one allowed origin as given in the configuration: `http(s)://host[:port]`,
/// nothing after it. Returned in the form browsers send (lower case, no `/`).
pub fn parse_origin(text: &str) -> Result<String, String> {
    let text = text.trim().trim_end_matches('/');
    let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not an origin ({e})"))?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some()
        && url.username().is_empty()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none();
    if !plain {
        return Err(format!(
            "{text:?} is not an origin: write scheme, host and port only, e.g. https://tether.example.com"
        ));
    }
    Ok(url.origin().ascii_serialization())
}

/// The middleware: refuses cross-site state changes and upgrades with 403 `cross_site`,
/// and server-function calls that are not JSON with 415 `unsupported_media_type`.
pub async fn refuse_cross_site(
    State(allowed): State<AllowedOrigins>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let changes = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    let upgrade = request.headers().contains_key(header::UPGRADE);
    if !(changes || upgrade) {
        return next.run(request).await;
    }
    if let Err(why) = same_site(request.headers(), &allowed) {
        tracing::warn!(
            "refused a cross-site {method} {}: {why}",
            request.uri().path()
        );
        return Failure::new(StatusCode::FORBIDDEN, ErrorCode::CrossSite, why).into_response();
    }
    if method == Method::POST
        && is_server_function(request.uri().path())
        && !is_json(request.headers())
    {
        return Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            "server functions take application/json",
        )
        .into_response();
    }
    next.run(request).await
}

/// Whether a request came from this server's own pages (or from no page at all).
pub fn same_site(headers: &HeaderMap, allowed: &AllowedOrigins) -> Result<(), String> {
    // A header that is there but is not text is not trusted as absent.
    let text = |name: &str| match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(Some)
            .map_err(|_| format!("its {name} header is not text")),
    };
    let fetch_site = text("sec-fetch-site")?;
    if matches!(fetch_site, Some("same-origin" | "none")) {
        return Ok(());
    }
    let Some(origin) = text("origin")? else {
        return match fetch_site {
            // A browser that says the request is cross-site, without an origin.
            Some(site) => Err(format!("the browser marked it {site}")),
            None => Ok(()),
        };
    };
    let origin = origin.trim_end_matches('/').to_ascii_lowercase();
    if allowed.0.contains(&origin) {
        return Ok(());
    }
    let host = text("host")?.unwrap_or_default();
    if !host.is_empty() && authority(&origin).is_some_and(|a| same_authority(&a, host)) {
        return Ok(());
    }
    Err(format!(
        "it came from a page of {origin}, not of this server; cross-site requests cannot \
         change anything (a proxy's address can be allowed with TETHER_ALLOWED_ORIGINS)"
    ))
}

/// `scheme://host[:port]` as (scheme, `host[:port]` without the scheme's default port).
fn authority(origin: &str) -> Option<(String, String)> {
    let url = url::Url::parse(origin).ok()?;
    let host = url.host_str()?;
    Some((
        url.scheme().to_owned(),
        match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        },
    ))
}

fn same_authority((scheme, origin): &(String, String), host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "https" => ":443",
        _ => ":80",
    };
    *origin == host || host.strip_suffix(default) == Some(origin.as_str())
}

/// Leptos server functions live under `/api/`; the JSON API under `/api/v1/`.
fn is_server_function(path: &str) -> bool {
    path.starts_with("/api/") && !path.starts_with("/api/v1/")
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn own_pages_and_scripts_pass_other_sites_do_not() {
        let none = AllowedOrigins::default();
        let ok = |pairs| same_site(&headers(pairs), &none).is_ok();
        assert!(ok(&[("host", "127.0.0.1:3000")]), "curl sends no origin");
        assert!(ok(&[
            ("host", "127.0.0.1:3000"),
            ("origin", "http://127.0.0.1:3000")
        ]));
        assert!(ok(&[
            ("host", "tether.example"),
            ("origin", "http://tether.example")
        ]));
        assert!(ok(&[
            ("host", "tether.example:443"),
            ("origin", "https://tether.example")
        ]));
        assert!(ok(&[
            ("host", "x"),
            ("sec-fetch-site", "same-origin"),
            ("origin", "http://y")
        ]));
        assert!(!ok(&[
            ("host", "127.0.0.1:3000"),
            ("origin", "http://127.0.0.1:3001")
        ]));
        assert!(!ok(&[
            ("host", "127.0.0.1:3000"),
            ("origin", "http://evil.example")
        ]));
        assert!(!ok(&[("host", "127.0.0.1:3000"), ("origin", "null")]));
        // Whatever the scheme, only this server answers at its own host and port (a TLS
        // proxy in front of it has the same authority).
        assert!(ok(&[
            ("host", "127.0.0.1:3000"),
            ("origin", "https://127.0.0.1:3000")
        ]));
        assert!(!ok(&[("host", "a"), ("sec-fetch-site", "cross-site")]));
        // Garbage where a browser would say where it came from is not "no page at all".
        let mut garbage = headers(&[("host", "127.0.0.1:3000")]);
        garbage.insert(
            "origin",
            header::HeaderValue::from_bytes(b"http://\xff").unwrap(),
        );
        assert!(same_site(&garbage, &none).is_err());
        let proxy = AllowedOrigins::new(["https://Tether.Example.com/".to_owned()]);
        assert!(
            same_site(
                &headers(&[
                    ("host", "10.0.0.5:3000"),
                    ("origin", "https://tether.example.com")
                ]),
                &proxy
            )
            .is_ok()
        );
    }

    #[test]
    fn allowed_origins_are_checked_when_configured() {
        assert_eq!(
            parse_origin("https://Tether.Example.com/"),
            Ok("https://tether.example.com".to_owned())
        );
        assert_eq!(
            parse_origin("http://10.0.0.5:8080"),
            Ok("http://10.0.0.5:8080".to_owned())
        );
        for wrong in [
            "*",
            "tether.example.com",
            "https://x/app",
            "ftp://x",
            "https://u@x",
            "",
        ] {
            assert!(parse_origin(wrong).is_err(), "{wrong}");
        }
    }

    #[test]
    fn server_functions_are_told_apart_from_the_api() {
        assert!(is_server_function("/api/cancel_command"));
        assert!(!is_server_function("/api/v1/commands/x"));
        assert!(!is_server_function("/devices"));
        assert!(is_json(&headers(&[(
            "content-type",
            "application/json; charset=utf-8"
        )])));
        assert!(!is_json(&headers(&[(
            "content-type",
            "application/x-www-form-urlencoded"
        )])));
        assert!(!is_json(&headers(&[("content-type", "text/plain")])));
    }
}
