//! Who may do what, over real HTTP against the real server: logging in and out with
//! the forms, the first-run link, throttling, roles, device groups (in the API and on
//! the live channel), API tokens, and the audit trail with its tamper check.

use std::{net::SocketAddr, time::Duration};

use agent::simulate::Kind;
use futures_util::StreamExt as _;
use protocol::{
    api::{ApiError, CommandView, LiveEvent},
    auth::{AuditCheck, AuditEntry, Me, NewToken, Role, TokenView, UserView},
    fleet::DevicePage,
};
use reqwest::{StatusCode, header};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

mod support;

use support::Running;

/// Follows no redirects, sends no credentials of its own.
fn anonymous() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn start() -> Running {
    support::start().await
}

/// What the auth tests do with a running server.
trait AuthTests {
    async fn log_in(&self, name: &str, password: &str, next: &str) -> reqwest::Response;
    async fn audit(&self, admin: &reqwest::Client, query: &str) -> Vec<AuditEntry>;
    async fn live(&self, token: &str) -> Result<LiveSocket, tokio_tungstenite::tungstenite::Error>;
    /// The live channel of a tab that shows what `query` says (`watch=…&fleet=…`).
    async fn live_showing(
        &self,
        token: &str,
        query: &str,
    ) -> Result<LiveSocket, tokio_tungstenite::tungstenite::Error>;
}

impl AuthTests for Running {
    /// Posts a login form; the answer, not followed.
    async fn log_in(&self, name: &str, password: &str, next: &str) -> reqwest::Response {
        anonymous()
            .post(self.url("/auth/login"))
            .form(&[("name", name), ("password", password), ("next", next)])
            .send()
            .await
            .unwrap()
    }

    async fn audit(&self, admin: &reqwest::Client, query: &str) -> Vec<AuditEntry> {
        let response = admin
            .get(self.url(&format!("/api/v1/audit?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    async fn live(&self, token: &str) -> Result<LiveSocket, tokio_tungstenite::tungstenite::Error> {
        self.live_showing(token, "").await
    }

    async fn live_showing(
        &self,
        token: &str,
        query: &str,
    ) -> Result<LiveSocket, tokio_tungstenite::tungstenite::Error> {
        let path = if query.is_empty() {
            "/api/v1/live".to_owned()
        } else {
            format!("/api/v1/live?{query}")
        };
        let mut request = self
            .url(&path)
            .replace("http", "ws")
            .into_client_request()
            .unwrap();
        if !token.is_empty() {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        tokio_tungstenite::connect_async(request)
            .await
            .map(|(socket, _)| socket)
    }
}

type LiveSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next live event, or `None` if none comes within `wait`.
async fn next_event(socket: &mut LiveSocket, wait: Duration) -> Option<LiveEvent> {
    loop {
        let message = tokio::time::timeout(wait, socket.next())
            .await
            .ok()??
            .ok()?;
        if let Ok(text) = message.to_text() {
            return serde_json::from_str(text).ok();
        }
    }
}

fn location(response: &reqwest::Response) -> &str {
    response
        .headers()
        .get(header::LOCATION)
        .map_or("", |v| v.to_str().unwrap())
}

/// The session cookie a response sets, as `name=value`.
fn session_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("tether_session=") && !c.starts_with("tether_session=;"))
}

async fn api_error(response: reqwest::Response) -> (StatusCode, ApiError) {
    (
        response.status(),
        response.json().await.expect("a JSON error"),
    )
}

#[tokio::test]
async fn without_credentials_only_the_login_page_and_the_probes_answer() {
    let running = start().await;
    let get = |path: &str| anonymous().get(running.url(path)).send();
    let (status, error) = api_error(get("/api/v1/devices").await.unwrap()).await;
    assert_eq!(
        (status, error.code.as_str()),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
    let server_fn = anonymous()
        .post(running.url("/api/devices"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(api_error(server_fn).await.0, StatusCode::UNAUTHORIZED);
    // Pages send the browser to the login page, and back afterwards.
    let page = get("/devices/pump-1?range=1h").await.unwrap();
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        location(&page),
        "/login?next=%2Fdevices%2Fpump-1%3Frange%3D1h"
    );
    let login = get("/login").await.unwrap();
    assert_eq!(login.status(), StatusCode::OK);
    let html = login.text().await.unwrap();
    assert!(html.contains(r#"action="/auth/login""#), "{html}");
    assert_eq!(get("/healthz").await.unwrap().status(), StatusCode::OK);
    // Nor the live channel, nor a made-up or malformed token.
    match running.live("").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED)
        }
        other => panic!(
            "the live channel opened for no one: {:?}",
            other.map(|_| ())
        ),
    }
    for authorization in ["Bearer tth_made_up", "Basic YWRtaW46YWRtaW4=", "Bearer "] {
        let response = anonymous()
            .get(running.url("/api/v1/devices"))
            .header("authorization", authorization)
            .send()
            .await
            .unwrap();
        let (status, error) = api_error(response).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{authorization}");
        assert_eq!(error.code, "unauthenticated");
    }
}

#[tokio::test]
async fn a_person_logs_in_with_the_form_and_out_again() {
    let running = start().await;
    let (admin, _, _) = running.user(Role::Admin, &[]).await;
    let name = testkit::unique("alice");
    running
        .accounts
        .add_user(&name, "alice's long password", Role::Operator, &[])
        .await
        .unwrap();

    let wrong = running.log_in(&name, "guess", "/devices/x").await;
    assert_eq!(wrong.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&wrong), "/login?error=invalid&next=%2Fdevices%2Fx");
    assert_eq!(session_cookie(&wrong), None);
    // A link to another site is not followed after logging in.
    let right = running
        .log_in(&name, "alice's long password", "https://evil.example/")
        .await;
    assert_eq!(location(&right), "/");
    let set_cookie = session_cookie(&right).expect("a session cookie");
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=43200"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(
        !set_cookie.contains("Secure"),
        "plain HTTP here: {set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_owned();

    let me = anonymous()
        .get(running.url("/api/v1/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::OK);
    let me: Me = me.json().await.unwrap();
    assert_eq!((me.name.as_str(), me.role), (name.as_str(), Role::Operator));
    let page = anonymous()
        .get(running.url("/"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.text().await.unwrap().contains(&name),
        "the page names the user"
    );

    let out = anonymous()
        .post(running.url("/auth/logout"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(location(&out), "/login?error=logged_out");
    let cleared = out
        .headers()
        .get(header::SET_COOKIE)
        .unwrap()
        .to_str()
        .unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    // The old cookie is dead on the server, not only forgotten by the browser.
    let after = anonymous()
        .get(running.url("/api/v1/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);

    let actions: Vec<String> = running
        .audit(&admin, &format!("target={name}"))
        .await
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, ["logout", "login", "login_failed"], "newest first");
}

#[tokio::test]
async fn failed_logins_lock_the_account_out_for_a_while() {
    let running = start().await;
    let name = testkit::unique("bob");
    running
        .accounts
        .add_user(&name, "bob's long password", Role::Viewer, &[])
        .await
        .unwrap();
    for _ in 0..6 {
        let wrong = running.log_in(&name, "guess", "/").await;
        assert!(location(&wrong).starts_with("/login?error=invalid"));
    }
    // Now even the right password must wait.
    let locked = running.log_in(&name, "bob's long password", "/").await;
    assert!(
        location(&locked).starts_with("/login?error=throttled"),
        "{}",
        location(&locked)
    );
    assert_eq!(session_cookie(&locked), None);
    // A flood during the lock-out is refused too, and recorded once, not once a try.
    for _ in 0..5 {
        let again = running.log_in(&name, "guess", "/").await;
        assert!(location(&again).starts_with("/login?error=throttled"));
    }
    let (admin, _, _) = running.user(Role::Admin, &[]).await;
    let throttled = running
        .audit(&admin, &format!("action=login_throttled&target={name}"))
        .await;
    assert_eq!(throttled.len(), 1, "{throttled:#?}");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let later = running.log_in(&name, "bob's long password", "/").await;
    assert!(session_cookie(&later).is_some(), "{}", location(&later));
}

#[tokio::test]
async fn a_login_with_a_huge_name_is_refused_and_recorded_cut_short() {
    let running = start().await;
    let huge = "x".repeat(100_000);
    let refused = running
        .log_in(&huge, "whatever password", &"/".repeat(5_000))
        .await;
    assert_eq!(refused.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&refused), "/login?error=invalid&next=%2F");
    let (admin, _, _) = running.user(Role::Admin, &[]).await;
    let failed = running.audit(&admin, "action=login_failed").await;
    assert_eq!(failed.len(), 1);
    assert_eq!(
        failed[0].actor.chars().count(),
        65,
        "64 characters and an ellipsis"
    );
}

#[tokio::test]
async fn the_first_run_link_creates_the_first_admin_once() {
    let running = start().await;
    let secret = running
        .first_run
        .clone()
        .expect("no user yet: a first-run link");
    let set_up = |token: &str, password: &str, confirm: &str| {
        anonymous()
            .post(running.url("/auth/setup"))
            .form(&[
                ("token", token),
                ("name", "root-admin"),
                ("password", password),
                ("confirm", confirm),
            ])
            .send()
    };
    let forged = set_up("not-the-secret", "a long password", "a long password")
        .await
        .unwrap();
    assert_eq!(location(&forged), "/setup?error=spent");
    let mismatch = set_up(&secret, "a long password", "another one")
        .await
        .unwrap();
    assert!(location(&mismatch).starts_with("/setup?error=mismatch"));
    let short = set_up(&secret, "short", "short").await.unwrap();
    assert!(
        location(&short).starts_with("/setup?error=invalid"),
        "{}",
        location(&short)
    );
    let done = set_up(&secret, "a long password", "a long password")
        .await
        .unwrap();
    assert_eq!(location(&done), "/");
    let cookie = session_cookie(&done).expect("logged in at once");
    let me: Me = anonymous()
        .get(running.url("/api/v1/me"))
        .header("cookie", cookie.split(';').next().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((me.name.as_str(), me.role), ("root-admin", Role::Admin));
    let again = set_up(&secret, "a long password", "a long password")
        .await
        .unwrap();
    assert_eq!(location(&again), "/setup?error=spent");
    assert_eq!(running.accounts.user_count().await.unwrap(), 1);
}

#[tokio::test]
async fn roles_decide_who_commands_and_groups_who_sees_what() {
    let running = start().await;
    let agent = testkit::Agent::start(
        &testkit::rabbitmq_url(),
        "auth-gw",
        Kind::Gateway,
        |config| {
            config.heartbeat = Duration::from_secs(1);
        },
    )
    .await;
    testkit::online(&running.hub, &agent.id).await;
    let device = agent.id.to_string();
    let (admin, _, _) = running.user(Role::Admin, &[]).await;
    let grouped = admin
        .put(running.url(&format!("/api/v1/devices/{device}/groups")))
        .json(&json!(["site-a"]))
        .send()
        .await
        .unwrap();
    assert_eq!(grouped.status(), StatusCode::OK);
    let (viewer, viewer_token, viewer_name) = running.user(Role::Viewer, &["site-a"]).await;
    let (operator, _, operator_name) = running.user(Role::Operator, &["site-a"]).await;
    let (outsider, outsider_token, _) = running.user(Role::Operator, &["site-b"]).await;
    // Both tabs show the device's page, and a fleet page.
    let shows = format!("watch={device}&fleet=%7B%7D");
    let mut viewer_live = running.live_showing(&viewer_token, &shows).await.unwrap();
    let mut outsider_live = running.live_showing(&outsider_token, &shows).await.unwrap();
    let Some(LiveEvent::Snapshot { devices, .. }) =
        next_event(&mut outsider_live, Duration::from_secs(5)).await
    else {
        panic!("a snapshot first");
    };
    assert!(
        devices.iter().all(|d| d.id.as_str() != device),
        "the outsider's snapshot shows the device"
    );
    let Some(LiveEvent::Snapshot { devices, .. }) =
        next_event(&mut viewer_live, Duration::from_secs(5)).await
    else {
        panic!("a snapshot first");
    };
    assert!(devices.iter().any(|d| d.id.as_str() == device));

    let list = |client: &reqwest::Client| {
        let request = client.get(running.url("/api/v1/devices")).send();
        async move {
            request
                .await
                .unwrap()
                .json::<DevicePage>()
                .await
                .unwrap()
                .devices
        }
    };
    assert!(list(&viewer).await.iter().any(|d| d.id.as_str() == device));
    assert!(
        list(&outsider)
            .await
            .iter()
            .all(|d| d.id.as_str() != device)
    );
    let commands_url = running.url(&format!("/api/v1/devices/{device}/commands"));
    let long_echo = json!({"name": "echo", "args": {"delay_ms": 20_000}, "timeout_ms": 30_000});

    // The viewer sees it but may not command it; the outsider does not even see it.
    let (status, error) = api_error(
        viewer
            .post(&commands_url)
            .json(&long_echo)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, error.code.as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    assert!(error.message.contains("operator"), "{}", error.message);
    let (status, error) = api_error(
        outsider
            .post(&commands_url)
            .json(&long_echo)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, error.code.as_str()),
        (StatusCode::NOT_FOUND, "unknown_device")
    );
    let hidden = outsider
        .get(running.url(&format!("/api/v1/devices/{device}")))
        .send()
        .await
        .unwrap();
    assert_eq!(hidden.status(), StatusCode::NOT_FOUND);

    // The operator of its group commands it, and everyone sees who did.
    let sent = operator
        .post(&commands_url)
        .json(&long_echo)
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), StatusCode::ACCEPTED);
    let sent: CommandView = sent.json().await.unwrap();
    let by = sent.issued_by.clone().expect("who sent it");
    assert!(by.starts_with(&format!("{operator_name} (token ")), "{by}");
    let seen = testkit::within(Duration::from_secs(5), "the viewer's live event", async {
        loop {
            if let Some(LiveEvent::CommandUpdated { command }) =
                next_event(&mut viewer_live, Duration::from_secs(5)).await
                && command.id == sent.id
            {
                return command;
            }
        }
    })
    .await;
    assert_eq!(seen.issued_by.as_deref(), Some(by.as_str()));
    let cancel_url = running.url(&format!("/api/v1/commands/{}", sent.id));
    assert_eq!(
        viewer.delete(&cancel_url).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        outsider.delete(&cancel_url).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        outsider.get(&cancel_url).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    let cancelled = operator.delete(&cancel_url).send().await.unwrap();
    assert_eq!(cancelled.status(), StatusCode::OK);
    // Nothing of it reached the outsider's socket.
    while let Some(event) = next_event(&mut outsider_live, Duration::from_millis(500)).await {
        let about_device = match &event {
            LiveEvent::Snapshot { devices, commands } => {
                devices.iter().any(|d| d.id.as_str() == device)
                    || commands.iter().any(|c| c.device_id.as_str() == device)
            }
            LiveEvent::DeviceUpdated { device: d } => d.id.as_str() == device,
            LiveEvent::CommandUpdated { command } => command.device_id.as_str() == device,
            LiveEvent::Telemetry { reading } => reading.device_id.as_str() == device,
            LiveEvent::JobTarget { target } => target.device_id.as_str() == device,
            LiveEvent::FleetPage { page, .. } => {
                page.devices.iter().any(|d| d.id.as_str() == device)
            }
            // No job in this test.
            LiveEvent::JobUpdated { .. } => true,
            // Says only what the outsider asked for and that it is not theirs to see.
            LiveEvent::Refused { code, .. } => code != "not_found",
        };
        assert!(!about_device, "the outsider saw {event:?}");
    }

    let trail = running.audit(&admin, &format!("target={device}")).await;
    let summary: Vec<(&str, bool)> = trail
        .iter()
        .map(|e| {
            (
                e.action.as_str(),
                e.actor.starts_with(&operator_name) || e.actor.starts_with(&viewer_name),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("command_cancelled", true),
            ("cancel_refused", true),
            ("command_sent", true),
            ("command_refused", true),
            ("device_groups_changed", false),
        ],
        "{trail:#?}"
    );
    assert!(trail.iter().all(|e| e.source == "127.0.0.1"), "{trail:#?}");
    assert!(trail[2].detail.contains(&sent.id.0), "{}", trail[2].detail);
}

#[tokio::test]
async fn admins_manage_users_and_tokens_and_a_revoked_token_is_refused() {
    let running = start().await;
    let (admin, _, admin_name) = running.user(Role::Admin, &[]).await;
    let (operator, _, operator_name) = running.user(Role::Operator, &[]).await;
    let name = testkit::unique("carol");
    let new_user = json!({"name": name, "password": "carol's first password", "role": "viewer", "groups": ["site-a"]});
    let (status, error) = api_error(
        operator
            .post(running.url("/api/v1/users"))
            .json(&new_user)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, error.code.as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let created = admin
        .post(running.url("/api/v1/users"))
        .json(&new_user)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: UserView = created.json().await.unwrap();
    assert_eq!(
        (created.role, created.groups.clone()),
        (Role::Viewer, vec!["site-a".to_owned()])
    );
    let again = admin
        .post(running.url("/api/v1/users"))
        .json(&new_user)
        .send()
        .await
        .unwrap();
    assert_eq!(api_error(again).await.0, StatusCode::CONFLICT);
    let promoted: UserView = admin
        .patch(running.url(&format!("/api/v1/users/{name}")))
        .json(&json!({"role": "operator"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(promoted.role, Role::Operator);

    // An operator's token can be no more than an operator.
    let too_high = operator
        .post(running.url("/api/v1/tokens"))
        .json(&json!({"name": "ci", "role": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(api_error(too_high).await.0, StatusCode::FORBIDDEN);
    let created = operator
        .post(running.url("/api/v1/tokens"))
        .json(&json!({"name": "ci", "role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let NewToken { token, secret } = created.json().await.unwrap();
    assert_eq!(
        (token.owner.as_str(), token.role),
        (operator_name.as_str(), Role::Viewer)
    );
    let listed = operator
        .get(running.url("/api/v1/tokens"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !listed.contains(&secret),
        "the secret is shown once only: {listed}"
    );
    let listed: Vec<TokenView> = serde_json::from_str(&listed).unwrap();
    assert!(listed.iter().all(|t| t.owner == operator_name));
    let scripted = testkit::api_client(&secret);
    let me: Me = scripted
        .get(running.url("/api/v1/me"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (me.name.as_str(), me.role),
        (operator_name.as_str(), Role::Viewer)
    );
    // Another user cannot revoke it (nor learn it exists); its owner can.
    let (other, _, _) = running.user(Role::Operator, &[]).await;
    let revoke_url = running.url(&format!("/api/v1/tokens/{}", token.id));
    assert_eq!(
        other.delete(&revoke_url).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    let revoked: TokenView = operator
        .delete(&revoke_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(revoked.revoked);
    let (status, error) = api_error(
        scripted
            .get(running.url("/api/v1/me"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, error.code.as_str()),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );

    let by_admin = running
        .audit(&admin, &format!("actor={}", admin_name))
        .await;
    let actions: Vec<&str> = by_admin.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["user_role_changed", "user_created"],
        "{by_admin:#?}"
    );
    let tokens = running.audit(&admin, "action=token_revoked").await;
    assert_eq!(tokens.len(), 1);
    assert_eq!(
        (
            tokens[0].target.as_str(),
            tokens[0].actor.starts_with(&operator_name)
        ),
        (token.id.as_str(), true)
    );
    assert_eq!(
        api_error(
            operator
                .get(running.url("/api/v1/audit"))
                .send()
                .await
                .unwrap()
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    let page: Vec<AuditEntry> = running.audit(&admin, "limit=2").await;
    let older = running
        .audit(&admin, &format!("limit=2&before={}", page[1].seq))
        .await;
    assert!(older.iter().all(|e| e.seq < page[1].seq) && !older.is_empty());
}

#[tokio::test]
async fn tampering_with_the_audit_trail_is_detected() {
    let running = start().await;
    let (admin, _, _) = running.user(Role::Admin, &[]).await;
    for n in 0..3 {
        let name = testkit::unique(&format!("user{n}"));
        let body = json!({"name": name, "password": "a long password", "role": "viewer"});
        let created = admin
            .post(running.url("/api/v1/users"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), StatusCode::CREATED);
    }
    let verify = async || -> AuditCheck {
        admin
            .get(running.url("/api/v1/audit/verify"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    let intact = verify().await;
    assert_eq!((intact.entries, intact.broken_at), (3, None));
    let mut config = server::Config::new(SocketAddr::from(([127, 0, 0, 1], 0)), "");
    config.database_url = format!("sqlite://{}", running.database.display());
    let command = || server::config::Command::Audit(server::config::AuditCommand::Verify);
    server::cli::run(&config, command())
        .await
        .expect("intact on the command line too");

    // Someone with the database file rewrites history.
    let db = rusqlite::Connection::open(&running.database).unwrap();
    let changed = db
        .execute("UPDATE audit SET detail = 'role admin' WHERE seq = 2", [])
        .unwrap();
    assert_eq!(changed, 1);
    let broken = verify().await;
    assert_eq!(broken.broken_at, Some(2), "{broken:?}");
    let error = server::cli::run(&config, command())
        .await
        .expect_err("broken");
    assert!(error.to_string().contains("broken at entry 2"), "{error}");
}
