//! The OpenAPI document of `/api/v1` against the real server: it lists exactly the
//! routes the server answers (probed: every documented method answers something else
//! than the unknown-route 404 or 405, every other method 405), and real answers validate
//! against the schemas it gives for their status. Also what API.md states about the
//! cases that were unclear (defaults filled in, limits, unknown routes and methods).

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use agent::simulate::Kind;
use protocol::{DeviceId, api::ErrorCode, auth::Role};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// Every operation under `/api/v1`, as the server's code adds it. A route added to the
/// router is in the document (the router is built from the annotated handlers); this
/// list makes adding one a visible change of the API.
const OPERATIONS: &[(&str, &str)] = &[
    ("GET", "/api/v1/artifacts"),
    ("POST", "/api/v1/artifacts"),
    ("GET", "/api/v1/artifacts/signing-key"),
    ("GET", "/api/v1/artifacts/{id}"),
    ("DELETE", "/api/v1/artifacts/{id}"),
    ("GET", "/api/v1/artifacts/{id}/download"),
    ("GET", "/api/v1/audit"),
    ("GET", "/api/v1/audit/verify"),
    ("GET", "/api/v1/commands"),
    ("GET", "/api/v1/commands/{id}"),
    ("DELETE", "/api/v1/commands/{id}"),
    ("GET", "/api/v1/devices"),
    ("POST", "/api/v1/devices"),
    ("GET", "/api/v1/devices/{id}"),
    ("DELETE", "/api/v1/devices/{id}"),
    ("GET", "/api/v1/devices/{id}/commands"),
    ("POST", "/api/v1/devices/{id}/commands"),
    ("GET", "/api/v1/devices/{id}/diagnostics"),
    ("GET", "/api/v1/devices/{id}/diagnostics/{command}"),
    ("GET", "/api/v1/devices/{id}/groups"),
    ("PUT", "/api/v1/devices/{id}/groups"),
    ("POST", "/api/v1/devices/{id}/secret"),
    ("GET", "/api/v1/devices/{id}/telemetry"),
    ("GET", "/api/v1/groups"),
    ("GET", "/api/v1/jobs"),
    ("POST", "/api/v1/jobs"),
    ("GET", "/api/v1/jobs/{id}"),
    ("POST", "/api/v1/jobs/{id}/cancel"),
    ("GET", "/api/v1/jobs/{id}/devices"),
    ("POST", "/api/v1/jobs/{id}/pause"),
    ("POST", "/api/v1/jobs/{id}/resume"),
    ("GET", "/api/v1/live"),
    ("POST", "/api/v1/live/sessions"),
    ("POST", "/api/v1/live/sessions/{id}"),
    ("DELETE", "/api/v1/live/sessions/{id}"),
    ("GET", "/api/v1/live/sessions/{id}/events"),
    ("GET", "/api/v1/live/stream"),
    ("GET", "/api/v1/me"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/provisioned"),
    ("GET", "/api/v1/tokens"),
    ("POST", "/api/v1/tokens"),
    ("DELETE", "/api/v1/tokens/{id}"),
    ("GET", "/api/v1/users"),
    ("POST", "/api/v1/users"),
    ("GET", "/api/v1/users/{name}"),
    ("PATCH", "/api/v1/users/{name}"),
    ("DELETE", "/api/v1/users/{name}"),
];

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// A server and one simulated gateway; both stop when this is dropped.
struct Setup {
    base: String,
    device: DeviceId,
    client: reqwest::Client,
    hub: hub::Hub,
    _stop_server: oneshot::Sender<()>,
    _agent: testkit::Agent,
}

async fn setup() -> Setup {
    let config = server::Config::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        testkit::rabbitmq_url(),
    );
    let server = server::Server::bind(config)
        .await
        .expect("RabbitMQ must be running (scripts/test.sh starts it)");
    let base = format!("http://{}", server.local_addr().unwrap());
    let hub = server.hub().clone();
    let (token, _) = testkit::user_token(server.accounts(), Role::Admin, &[]).await;
    let (stop_server, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    let agent = testkit::Agent::start(
        &testkit::rabbitmq_url(),
        "openapi-gateway",
        Kind::Gateway,
        |config| config.heartbeat = Duration::from_secs(1),
    )
    .await;
    testkit::online(&hub, &agent.id).await;
    Setup {
        base,
        device: agent.id.clone(),
        client: testkit::api_client(&token),
        hub,
        _stop_server: stop_server,
        _agent: agent,
    }
}

impl Setup {
    /// `method path` with `body` (JSON) if any: the status and the body, as JSON if it
    /// is (else `Value::Null`).
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.client.request(
            Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{}{path}", self.base),
        );
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let json = response
            .headers()
            .get("content-type")
            .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
        if !json {
            return (status, Value::Null);
        }
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn document(&self) -> Value {
        // No login needed: a client without credentials.
        let response = reqwest::get(format!("{}/api/v1/openapi.json", self.base))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }
}

/// The documented operations, as (METHOD, path).
fn operations(document: &Value) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if METHODS.contains(&method.to_uppercase().as_str()) {
                found.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    found
}

/// `document` made strict, for the tests only: every object schema that lists its
/// `properties` (and says nothing of others: not a map) refuses any other property, so
/// that an answer carrying a field the document does not describe fails. The served
/// document stays open: clients must ignore fields they do not know (API.md, Rules).
fn strict(document: &Value) -> Value {
    fn close(schema: &mut Value) {
        match schema {
            Value::Object(object) => {
                let lists_properties = object.get("properties").is_some_and(Value::is_object);
                let says_otherwise = object.contains_key("additionalProperties")
                    || object.contains_key("unevaluatedProperties")
                    || object.contains_key("patternProperties");
                if lists_properties && !says_otherwise {
                    object.insert("additionalProperties".into(), Value::Bool(false));
                }
                for (key, value) in object.iter_mut() {
                    // A property named like a keyword is a name, not a schema: go into
                    // the schemas it names, never the map itself.
                    if key == "properties" {
                        if let Value::Object(properties) = value {
                            properties.values_mut().for_each(close);
                        }
                    } else {
                        close(value);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(close),
            _ => {}
        }
    }
    let mut strict = document.clone();
    close(&mut strict["components"]["schemas"]);
    close(&mut strict["paths"]);
    strict
}

/// The codes `document`'s `ErrorCode` schema lists.
fn documented_codes(document: &Value) -> BTreeSet<String> {
    let code = &document["components"]["schemas"]["ApiError"]["properties"]["code"];
    assert_eq!(
        code["$ref"], "#/components/schemas/ErrorCode",
        "ApiError.code is an ErrorCode: {code}"
    );
    let schema = &document["components"]["schemas"]["ErrorCode"];
    assert_eq!(schema["type"], "string", "{schema}");
    schema["enum"]
        .as_array()
        .expect("ErrorCode is an enum")
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect()
}

/// The schema `document` gives for the JSON answer `status` of `method path`, as a
/// validator (its `$ref`s resolved against the document's components). Panics if that
/// status is not documented for the operation.
fn validator(
    document: &Value,
    method: &str,
    path: &str,
    status: StatusCode,
) -> jsonschema::Validator {
    let operation = &document["paths"][path][method.to_lowercase()];
    assert!(operation.is_object(), "{method} {path} is not documented");
    let response = &operation["responses"][status.as_str()];
    assert!(
        response.is_object(),
        "{method} {path} answered {status}, which the document does not list: {}",
        operation["responses"]
    );
    let schema = &response["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} {status} has no JSON schema"
    );
    let mut root = schema.clone();
    root["components"] = document["components"].clone();
    jsonschema::draft202012::new(&root).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// Checks that `body` (the answer `status` of `method path`) is valid for the document.
fn check(document: &Value, method: &str, path: &str, status: StatusCode, body: &Value) {
    let validator = validator(document, method, path, status);
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status}: the answer does not match the document: {errors:?}\n{body:#}"
    );
}

/// A documented path with its parameters filled in with `x`.
fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for c in path.chars() {
        match c {
            '{' => inside = true,
            '}' => {
                inside = false;
                out.push('x');
            }
            _ if !inside => out.push(c),
            _ => {}
        }
    }
    out
}

fn is_unknown_route(status: StatusCode, body: &Value) -> bool {
    status == StatusCode::NOT_FOUND && body["message"] == "no such API endpoint"
}

#[tokio::test]
async fn the_document_describes_every_route_and_the_routes_answer() {
    let setup = setup().await;
    let document = strict(&setup.document().await);
    assert_eq!(document["openapi"], "3.1.0");

    // `ApiError.code` is the enum of every code the server can send, each explained.
    let codes = documented_codes(&document);
    let known: BTreeSet<String> = ErrorCode::ALL
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    assert_eq!(codes, known);
    let explained = document["components"]["schemas"]["ErrorCode"]["description"]
        .as_str()
        .unwrap();
    for code in ErrorCode::ALL {
        assert!(
            explained.contains(&format!("- `{}`: {}", code.as_str(), code.description())),
            "{code} is not explained"
        );
    }
    // So is a live `refused` event's.
    let refused = document["components"]["schemas"]["LiveEvent"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["properties"]["type"]["enum"] == json!(["refused"]))
        .expect("a refused event");
    assert_eq!(
        refused["properties"]["code"]["$ref"], "#/components/schemas/ErrorCode",
        "{refused}"
    );
    // Only /api/v1 is the contract, says the document itself.
    let about = document["info"]["description"].as_str().unwrap();
    assert!(
        about.contains("server functions") && about.contains("not part of this API"),
        "{about}"
    );

    let documented = operations(&document);
    let listed: BTreeSet<(String, String)> = OPERATIONS
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(
        documented, listed,
        "the document and the server's list of operations differ"
    );

    // Every operation says how to log in (or that it needs no login), what answers
    // 401, and what each error code's status is.
    for (method, path) in &documented {
        let operation = &document["paths"][path][method.to_lowercase()];
        let responses = operation["responses"].as_object().unwrap();
        let public = operation["security"] == json!([{}]);
        assert_eq!(
            responses.contains_key("401"),
            !public,
            "{method} {path}: 401 listed iff a login is needed"
        );
        assert!(
            operation["summary"].is_string(),
            "{method} {path}: no summary"
        );
        for (status, response) in responses {
            let code: u16 = status.parse().unwrap();
            if code >= 400 {
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ApiError",
                    "{method} {path} {status}: errors are ApiError"
                );
            }
        }
    }
    let schemes = &document["components"]["securitySchemes"];
    assert_eq!(schemes["session"]["in"], "cookie");
    assert_eq!(schemes["session"]["name"], "tether_session");
    assert_eq!(schemes["token"]["scheme"], "bearer");

    // Probing: each documented method of each path is routed (whatever it then says of
    // the made-up ids), each other method is 405 `method_not_allowed`.
    let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    let mut probed_codes = BTreeSet::new();
    for path in paths {
        let url = concrete(path);
        for method in METHODS {
            if path.ends_with("/live/stream") && method == "GET" {
                // An event stream: routed if it starts (checked by live_http.rs).
                continue;
            }
            let body = matches!(method, "POST" | "PUT" | "PATCH").then(|| json!({}));
            let (status, answer) = setup.call(method, &url, body).await;
            if status.as_u16() >= 400 {
                // Every error is an ApiError with a listed code.
                let code = answer["code"].as_str().unwrap_or_default();
                assert!(
                    codes.contains(code),
                    "{method} {url}: {status} {answer}: not a listed code"
                );
                probed_codes.insert(code.to_owned());
            }
            if documented.contains(&(method.to_owned(), path.clone())) {
                assert!(
                    !is_unknown_route(status, &answer) && status != StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {url} is documented but not routed: {status} {answer}"
                );
                // And it is the answer the document gives for that status.
                check(&document, method, path, status, &answer);
            } else {
                assert_eq!(
                    (status, answer["code"].as_str()),
                    (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed")),
                    "{method} {url} is not documented but answered {answer}"
                );
            }
        }
    }

    assert!(probed_codes.len() >= 5, "{probed_codes:?}");

    // The page people read lists every operation.
    let page = setup
        .client
        .get(format!("{}/docs/api", setup.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.unwrap();
    for (method, path) in &documented {
        assert!(
            page.contains(&format!(
                "<span class=\"method\">{method}</span> <span class=\"path\">{path}</span>"
            )),
            "{method} {path} is not on /docs/api"
        );
    }

    // Unknown routes: 404 `not_found`, with or without a login.
    let (status, answer) = setup.call("GET", "/api/v1/nothing-here", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(answer["code"], "not_found");
    check(
        &document,
        "GET",
        "/api/v1/devices/{id}",
        StatusCode::NOT_FOUND,
        &answer,
    );
    let (status, _) = setup.call("POST", "/api/v2/devices", Some(json!({}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn real_answers_match_the_document() {
    let setup = setup().await;
    let served = setup.document().await;
    // Strict: an answer with a field the document does not describe fails.
    let document = strict(&served);
    let device = setup.device.to_string();
    let mut checked = 0;
    // The error codes the answers carried.
    let mut codes = BTreeSet::new();
    let mut call = async |method: &str, template: &str, path: String, body: Option<Value>| {
        let (status, answer) = setup.call(method, &path, body).await;
        check(&document, method, template, status, &answer);
        checked += 1;
        if status.as_u16() >= 400 {
            codes.insert(answer["code"].as_str().unwrap().to_owned());
        }
        (status, answer)
    };

    let (status, page) = call("GET", "/api/v1/devices", "/api/v1/devices".into(), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!page["devices"].as_array().unwrap().is_empty());
    let (status, _) = call(
        "GET",
        "/api/v1/devices",
        "/api/v1/devices?limit=501".into(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = call(
        "GET",
        "/api/v1/devices",
        "/api/v1/devices?limit=many".into(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let one = "/api/v1/devices/{id}";
    let (status, view) = call("GET", one, format!("/api/v1/devices/{device}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["online"], true);
    let (status, error) = call("GET", one, "/api/v1/devices/no-such-device".into(), None).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_device"))
    );

    // A command: 202 with the command as recorded, its defaults filled in.
    let commands = "/api/v1/devices/{id}/commands";
    let path = format!("/api/v1/devices/{device}/commands");
    let (status, sent) = call(
        "POST",
        commands,
        path.clone(),
        Some(json!({"name": "collect_logs"})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{sent}");
    assert!(
        ["sent", "delivered", "progress", "succeeded"].contains(&sent["status"].as_str().unwrap()),
        "the broker took it: {sent}"
    );
    assert!(
        sent["args"]["lines"].is_number(),
        "the announced default is filled in: {sent}"
    );
    let (status, error) = call("POST", commands, path.clone(), Some(json!({"name": "fly"}))).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("unknown_command"))
    );
    let (status, error) = call(
        "POST",
        commands,
        path.clone(),
        Some(json!({"name": "collect_logs", "args": {"lines": 100000}})),
    )
    .await;
    assert_eq!(
        (status, error["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_arguments"))
    );
    let (status, error) = call("POST", commands, path.clone(), Some(json!({"nom": 1}))).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("bad_request"))
    );

    let id = sent["id"].as_str().unwrap();
    let (status, done) = call(
        "GET",
        "/api/v1/commands/{id}",
        format!("/api/v1/commands/{id}?wait_ms=10000"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        done["args"], sent["args"],
        "args are kept as sent, defaults included"
    );
    assert!(
        done.get("result").is_some() && done.get("error").is_none(),
        "{done}"
    );
    // A wait over the limit is cut to it, not refused.
    let (status, _) = call(
        "GET",
        "/api/v1/commands/{id}",
        format!("/api/v1/commands/{id}?wait_ms=999999999"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, error) = call(
        "GET",
        "/api/v1/commands/{id}",
        "/api/v1/commands/nope".into(),
        None,
    )
    .await;
    assert_eq!(
        (status, error["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_command"))
    );
    let (status, error) = call(
        "DELETE",
        "/api/v1/commands/{id}",
        format!("/api/v1/commands/{id}"),
        None,
    )
    .await;
    assert_eq!(
        (status, error["code"].as_str()),
        (StatusCode::CONFLICT, Some("already_ended"))
    );

    let (status, history) = call("GET", commands, format!("{path}?limit=5"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(history[0]["id"], id);
    let (status, none) = call(
        "GET",
        "/api/v1/commands",
        "/api/v1/commands?limit=0".into(),
        None,
    )
    .await;
    assert_eq!(
        (status, none),
        (StatusCode::OK, json!([])),
        "limit=0 lists none"
    );
    let (status, _) = call(
        "GET",
        "/api/v1/devices/{id}/telemetry",
        format!("/api/v1/devices/{device}/telemetry?from=10&to=5"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "from after to");
    let (status, error) = call(
        "GET",
        "/api/v1/devices/{id}/telemetry",
        format!("/api/v1/devices/{device}/telemetry?from=5&to=5"),
        None,
    )
    .await;
    assert_eq!(
        (status, error["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_range")),
        "an empty range"
    );

    // Jobs.
    let (status, job) = call(
        "POST",
        "/api/v1/jobs",
        "/api/v1/jobs".into(),
        Some(json!({"command": "collect_logs", "targets": {"ids": [device]}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let job_id = job["id"].as_str().unwrap();
    let (status, _) = call("GET", "/api/v1/jobs", "/api/v1/jobs".into(), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(
        "GET",
        "/api/v1/jobs/{id}",
        format!("/api/v1/jobs/{job_id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(
        "GET",
        "/api/v1/jobs/{id}/devices",
        format!("/api/v1/jobs/{job_id}/devices"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, error) = call("GET", "/api/v1/jobs/{id}", "/api/v1/jobs/nope".into(), None).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_job"))
    );
    let (status, error) = call(
        "POST",
        "/api/v1/jobs",
        "/api/v1/jobs".into(),
        Some(json!({"command": "fly", "targets": {"ids": [device]}})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");

    // The rest of what a script reads.
    for (template, path) in [
        ("/api/v1/me", "/api/v1/me".to_owned()),
        ("/api/v1/users", "/api/v1/users".to_owned()),
        ("/api/v1/tokens", "/api/v1/tokens".to_owned()),
        ("/api/v1/groups", "/api/v1/groups".to_owned()),
        ("/api/v1/audit", "/api/v1/audit?limit=5".to_owned()),
        ("/api/v1/audit/verify", "/api/v1/audit/verify".to_owned()),
        ("/api/v1/artifacts", "/api/v1/artifacts".to_owned()),
        (
            "/api/v1/artifacts/signing-key",
            "/api/v1/artifacts/signing-key".to_owned(),
        ),
        ("/api/v1/provisioned", "/api/v1/provisioned".to_owned()),
        (
            "/api/v1/devices/{id}/groups",
            format!("/api/v1/devices/{device}/groups"),
        ),
        (
            "/api/v1/devices/{id}/diagnostics",
            format!("/api/v1/devices/{device}/diagnostics"),
        ),
    ] {
        let (status, _) = call("GET", template, path, None).await;
        assert_eq!(status, StatusCode::OK, "{template}");
    }
    let (status, session) = call(
        "POST",
        "/api/v1/live/sessions",
        "/api/v1/live/sessions".into(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let session = session["session"].as_str().unwrap();
    let (status, _) = call(
        "GET",
        "/api/v1/live/sessions/{id}/events",
        format!("/api/v1/live/sessions/{session}/events?after=0&wait_ms=1000"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // A JSON body without its content type: 415 `bad_request`, as documented.
    let response = setup
        .client
        .post(format!("{}/api/v1/devices/{device}/commands", setup.base))
        .body(r#"{"name":"collect_logs"}"#)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        (status, answer["code"].as_str()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, Some("bad_request"))
    );
    check(
        &document,
        "POST",
        "/api/v1/devices/{id}/commands",
        status,
        &answer,
    );

    // Without a login: 401, as documented.
    let response = reqwest::get(format!("{}/api/v1/devices", setup.base))
        .await
        .unwrap();
    let status = response.status();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    check(&document, "GET", "/api/v1/devices", status, &answer);
    codes.insert(answer["code"].as_str().unwrap().to_owned());
    assert!(checked >= 30, "{checked}");

    // Every code an answer carried is one the document lists (and explains).
    let listed = documented_codes(&served);
    assert!(codes.len() >= 8, "{codes:?}");
    let undocumented: Vec<&String> = codes.difference(&listed).collect();
    assert!(
        undocumented.is_empty(),
        "codes the answers carried that ErrorCode does not list: {undocumented:?}"
    );
}

/// What the admin makes and reads (users, tokens, device credentials, artifacts)
/// against the strict document: each kind of object the API answers with
/// carries only fields the document describes.
#[tokio::test]
async fn what_is_made_matches_the_strict_document() {
    let setup = setup().await;
    let document = strict(&setup.document().await);
    let tag = format!("{:06x}", fastrand::u32(..0xff_ffff));
    let call = async |method: &str, template: &str, path: String, body: Option<Value>| {
        let (status, answer) = setup.call(method, &path, body).await;
        if status != StatusCode::NO_CONTENT {
            check(&document, method, template, status, &answer);
        }
        (status, answer)
    };

    let user = format!("openapi-{tag}");
    let (status, made) = call(
        "POST",
        "/api/v1/users",
        "/api/v1/users".into(),
        Some(json!({"name": user, "password": "a long password", "role": "viewer", "groups": ["site-a"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let one = "/api/v1/users/{name}";
    let (status, _) = call("GET", one, format!("/api/v1/users/{user}"), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(
        "PATCH",
        one,
        format!("/api/v1/users/{user}"),
        Some(json!({"role": "operator"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, error) = call(
        "POST",
        "/api/v1/users",
        "/api/v1/users".into(),
        Some(json!({"name": user, "password": "a long password", "role": "viewer"})),
    )
    .await;
    assert_eq!(
        (status, error["code"].as_str()),
        (StatusCode::CONFLICT, Some("already_exists"))
    );

    let (status, token) = call(
        "POST",
        "/api/v1/tokens",
        "/api/v1/tokens".into(),
        Some(json!({"name": "openapi", "role": "viewer"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{token}");
    let (status, _) = call("GET", "/api/v1/tokens", "/api/v1/tokens".into(), None).await;
    assert_eq!(status, StatusCode::OK);
    let token_id = token["token"]["id"].as_str().unwrap();
    let (status, revoked) = call(
        "DELETE",
        "/api/v1/tokens/{id}",
        format!("/api/v1/tokens/{token_id}"),
        None,
    )
    .await;
    assert_eq!(
        (status, &revoked["revoked"]),
        (StatusCode::OK, &json!(true))
    );

    let device = format!("openapi-made-{tag}");
    let (status, credential) = call(
        "POST",
        "/api/v1/devices",
        "/api/v1/devices".into(),
        Some(json!({"id": device})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{credential}");
    let (status, _) = call(
        "POST",
        "/api/v1/devices/{id}/secret",
        format!("/api/v1/devices/{device}/secret"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, provisioned) = call(
        "GET",
        "/api/v1/provisioned",
        "/api/v1/provisioned".into(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        provisioned
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == device.as_str() && p.get("rotated_ms").is_some()),
        "{provisioned}"
    );

    // An artifact: uploaded as the body, listed, read, removed.
    let response = setup
        .client
        .post(format!(
            "{}/api/v1/artifacts?name=openapi&version=1.0.{tag}&arch=any",
            setup.base
        ))
        .header("content-type", "application/octet-stream")
        .body(vec![7u8; 1000])
        .send()
        .await
        .unwrap();
    let status = response.status();
    let artifact: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{artifact}");
    check(&document, "POST", "/api/v1/artifacts", status, &artifact);
    let artifact_id = artifact["id"].as_str().unwrap();
    let (status, listed) = call("GET", "/api/v1/artifacts", "/api/v1/artifacts".into(), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!listed.as_array().unwrap().is_empty());
    let (status, _) = call(
        "GET",
        "/api/v1/artifacts/{id}",
        format!("/api/v1/artifacts/{artifact_id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(
        "DELETE",
        "/api/v1/artifacts/{id}",
        format!("/api/v1/artifacts/{artifact_id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // These servers keep no readings (`TETHER_DATABASE_URL=none`): the history is 503
    // `storage_off`, as documented.
    let (status, error) = call(
        "GET",
        "/api/v1/devices/{id}/telemetry",
        format!("/api/v1/devices/{}/telemetry", setup.device),
        None,
    )
    .await;
    assert_eq!(
        (status, error["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("storage_off"))
    );
}

/// The check can fail: a device whose `online` is not a boolean, a command without
/// its status or with one that does not exist, are refused.
#[tokio::test]
async fn a_wrong_answer_does_not_validate() {
    let setup = setup().await;
    let document = setup.document().await;
    let (_, mut view) = setup
        .call("GET", &format!("/api/v1/devices/{}", setup.device), None)
        .await;
    let devices = validator(&document, "GET", "/api/v1/devices/{id}", StatusCode::OK);
    assert!(devices.is_valid(&view));

    // A field the document does not describe: fine for the served document (clients
    // ignore what they do not know), a failure for the tests' strict copy, in the
    // device itself and in an object within it.
    let strict_devices = validator(
        &strict(&document),
        "GET",
        "/api/v1/devices/{id}",
        StatusCode::OK,
    );
    assert!(strict_devices.is_valid(&view), "{view}");
    let mut extra = view.clone();
    extra["surprise"] = json!(1);
    assert!(devices.is_valid(&extra));
    assert!(!strict_devices.is_valid(&extra));
    let mut nested = view.clone();
    nested["latest"]["cpu"] = json!({"value": 1.0, "ts_ms": 5, "unit": "%"});
    assert!(devices.is_valid(&nested));
    assert!(!strict_devices.is_valid(&nested));
    let errors = validator(
        &strict(&document),
        "GET",
        "/api/v1/devices/{id}",
        StatusCode::NOT_FOUND,
    );
    assert!(errors.is_valid(&json!({"code": "unknown_device", "message": "no"})));
    assert!(!errors.is_valid(&json!({"code": "unknown_device", "message": "no", "detail": 1})));
    assert!(
        !errors.is_valid(&json!({"code": "made_up", "message": "no"})),
        "a code ErrorCode does not list"
    );

    view["online"] = json!("yes");
    assert!(!devices.is_valid(&view));
    view.as_object_mut().unwrap().remove("online");
    assert!(!devices.is_valid(&view));

    let (_, sent) = setup
        .call(
            "POST",
            &format!("/api/v1/devices/{}/commands", setup.device),
            Some(json!({"name": "collect_logs"})),
        )
        .await;
    let commands = validator(&document, "GET", "/api/v1/commands/{id}", StatusCode::OK);
    assert!(commands.is_valid(&sent));
    let mut wrong = sent.clone();
    wrong["status"] = json!("done");
    assert!(!commands.is_valid(&wrong));
    wrong.as_object_mut().unwrap().remove("status");
    assert!(!commands.is_valid(&wrong));
    let errors = validator(
        &document,
        "GET",
        "/api/v1/commands/{id}",
        StatusCode::NOT_FOUND,
    );
    assert!(!errors.is_valid(&json!({"code": 404})));
}

/// API.md, Rules: a device with no accepted reading has no `latest` at all (not `{}`,
/// not `null`), in the list as alone; one that sent readings has them there.
#[tokio::test]
async fn a_device_without_readings_has_no_latest() {
    let setup = setup().await;
    let document = strict(&setup.document().await);
    let quiet = testkit::Agent::start(
        &testkit::rabbitmq_url(),
        "openapi-quiet",
        Kind::Thermostat,
        |config| {
            config.heartbeat = Duration::from_secs(1);
            config.telemetry = None;
        },
    )
    .await;
    testkit::online(&setup.hub, &quiet.id).await;

    let one = format!("/api/v1/devices/{}", quiet.id);
    let (status, view) = setup.call("GET", &one, None).await;
    assert_eq!(status, StatusCode::OK);
    check(&document, "GET", "/api/v1/devices/{id}", status, &view);
    assert!(view.get("id").is_some(), "{view}");
    assert!(view.get("latest").is_none(), "no `latest` key: {view}");

    let (status, page) = setup
        .call("GET", &format!("/api/v1/devices?search={}", quiet.id), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    check(&document, "GET", "/api/v1/devices", status, &page);
    let listed = listed(&page, &quiet.id).expect("listed");
    assert!(listed.get("latest").is_none(), "no `latest` key: {listed}");

    // The contrast: the gateway sends readings, and its `latest` holds them.
    let gateway = format!("/api/v1/devices/{}", setup.device);
    let view = until("a reading", Duration::from_secs(20), async || {
        let (_, view) = setup.call("GET", &gateway, None).await;
        view["latest"]
            .as_object()
            .is_some_and(|l| !l.is_empty())
            .then_some(view)
    })
    .await;
    check(
        &document,
        "GET",
        "/api/v1/devices/{id}",
        StatusCode::OK,
        &view,
    );
    quiet.stop().await;
}

/// API.md, Rules: a device that went offline (here: its agent said bye) stays listed,
/// `online: false`, in the list and alone, for as long as the server runs.
#[tokio::test]
async fn an_offline_device_stays_listed() {
    let setup = setup().await;
    let document = strict(&setup.document().await);
    let leaving = testkit::Agent::start(
        &testkit::rabbitmq_url(),
        "openapi-leaving",
        Kind::Switch,
        |config| config.heartbeat = Duration::from_millis(200),
    )
    .await;
    testkit::online(&setup.hub, &leaving.id).await;
    let id = leaving.id.clone();
    let one = format!("/api/v1/devices/{id}");
    let (_, before) = setup.call("GET", &one, None).await;
    assert_eq!(before["online"], true, "{before}");
    leaving.stop().await;

    let offline = until("offline", Duration::from_secs(10), async || {
        let (_, view) = setup.call("GET", &one, None).await;
        (view["online"] == false).then_some(view)
    })
    .await;
    check(
        &document,
        "GET",
        "/api/v1/devices/{id}",
        StatusCode::OK,
        &offline,
    );
    assert!(
        offline["since_ms"].as_u64() >= before["since_ms"].as_u64(),
        "since_ms is when it went offline: {offline}"
    );

    // Well past the point where its heartbeats would have counted as missed (3 × 200
    // ms), and again: still there, still offline.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (status, view) = setup.call("GET", &one, None).await;
        assert_eq!(status, StatusCode::OK, "{view}");
        check(&document, "GET", "/api/v1/devices/{id}", status, &view);
        assert_eq!(view["online"], false, "{view}");

        for query in [
            format!("search={id}"),
            format!("search={id}&status=offline"),
        ] {
            let (status, page) = setup
                .call("GET", &format!("/api/v1/devices?{query}"), None)
                .await;
            assert_eq!(status, StatusCode::OK);
            check(&document, "GET", "/api/v1/devices", status, &page);
            let listed = listed(&page, &id).unwrap_or_else(|| panic!("listed ({query}): {page}"));
            assert_eq!(listed["online"], false, "{listed}");
        }
        let (_, online) = setup
            .call(
                "GET",
                &format!("/api/v1/devices?search={id}&status=online"),
                None,
            )
            .await;
        assert!(listed(&online, &id).is_none(), "{online}");
    }
}

/// The device `id` in a page of `GET /api/v1/devices`.
fn listed<'a>(page: &'a Value, id: &DeviceId) -> Option<&'a Value> {
    page["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id.as_str())
}

/// What `check` gives once it gives something; panics after `within`.
async fn until(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> Option<Value>,
) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
