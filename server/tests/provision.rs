//! Device credentials over real HTTP against the real server (RabbitMQ as its broker):
//! admins provision, rotate and revoke; no one else may; secrets are shown once and
//! never listed; every change is in the audit trail. And the same from the command
//! line, on the server's database.

use std::net::SocketAddr;

use protocol::auth::{AuditEntry, DeviceCredential, ProvisionedDevice, Role};
use reqwest::StatusCode;
use serde_json::json;
use server::config::DeviceCommand::{Add, List, Remove, Rotate};
use store::AuditQuery;

mod support;

use support::{Running, start};

/// What the provisioning tests do with a running server.
trait ProvisionTests {
    async fn provision(&self, client: &reqwest::Client, id: &str) -> reqwest::Response;
    async fn rotate(&self, client: &reqwest::Client, id: &str) -> reqwest::Response;
    async fn revoke(&self, client: &reqwest::Client, id: &str) -> reqwest::Response;
    async fn provisioned(&self, client: &reqwest::Client) -> reqwest::Response;
    async fn audit_of(&self, target: &str) -> Vec<AuditEntry>;
}

impl ProvisionTests for Running {
    async fn provision(&self, client: &reqwest::Client, id: &str) -> reqwest::Response {
        client
            .post(self.url("/api/v1/devices"))
            .json(&json!({ "id": id }))
            .send()
            .await
            .unwrap()
    }

    async fn rotate(&self, client: &reqwest::Client, id: &str) -> reqwest::Response {
        client
            .post(self.url(&format!("/api/v1/devices/{id}/secret")))
            .send()
            .await
            .unwrap()
    }

    async fn revoke(&self, client: &reqwest::Client, id: &str) -> reqwest::Response {
        client
            .delete(self.url(&format!("/api/v1/devices/{id}")))
            .send()
            .await
            .unwrap()
    }

    async fn provisioned(&self, client: &reqwest::Client) -> reqwest::Response {
        client
            .get(self.url("/api/v1/provisioned"))
            .send()
            .await
            .unwrap()
    }

    async fn audit_of(&self, target: &str) -> Vec<AuditEntry> {
        self.accounts
            .audit(AuditQuery {
                target: Some(target.into()),
                limit: 100,
                ..AuditQuery::default()
            })
            .await
            .unwrap()
    }
}

/// The status and the error's code.
async fn error_of(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let error: protocol::api::ApiError = response.json().await.expect("a JSON error");
    (status, error.code)
}

/// The broker URL the test server uses, with the device's credential in it.
fn expected_url(id: &str, secret: &str) -> String {
    let mut url = url::Url::parse(&testkit::rabbitmq_url()).unwrap();
    url.set_username(id).unwrap();
    url.set_password(Some(secret)).unwrap();
    url.to_string()
}

#[tokio::test]
async fn admins_provision_rotate_and_revoke_device_credentials() {
    let running = start().await;
    let (admin, _, admin_name) = running.user(Role::Admin, &[]).await;
    let id = testkit::unique("boiler");

    let created = running.provision(&admin, &id).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let first: DeviceCredential = created.json().await.unwrap();
    assert_eq!(first.id, id);
    assert_eq!(first.secret.len(), 48, "24 bytes in hex");
    assert_eq!(
        first.amqp_url.as_deref(),
        Some(expected_url(&id, &first.secret).as_str()),
        "the server's broker with the device's credential instead of the server's"
    );
    assert!(
        running
            .accounts
            .check_device_secret(&id, &first.secret)
            .await
            .unwrap()
    );

    let listed = running.provisioned(&admin).await;
    assert_eq!(listed.status(), StatusCode::OK);
    let listed = listed.text().await.unwrap();
    assert!(
        !listed.contains(&first.secret),
        "a secret is listed: {listed}"
    );
    let listed: Vec<ProvisionedDevice> = serde_json::from_str(&listed).unwrap();
    let device = listed.iter().find(|d| d.id == id).expect("listed");
    assert_eq!(device.rotated_ms, None);

    // Again, or with an id no device can have, or with more than an id.
    assert_eq!(
        error_of(running.provision(&admin, &id).await).await,
        (StatusCode::CONFLICT, "already_exists".into())
    );
    assert_eq!(
        error_of(running.provision(&admin, "two words").await).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_input".into())
    );
    let extra = admin
        .post(running.url("/api/v1/devices"))
        .json(&json!({ "id": "pump-1", "secret": "mine" }))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(extra).await.0, StatusCode::UNPROCESSABLE_ENTITY);

    // Nobody else may provision, list, rotate or revoke.
    for role in [Role::Viewer, Role::Operator] {
        let (client, _, _) = running.user(role, &[]).await;
        for response in [
            running.provisioned(&client).await,
            running.provision(&client, &testkit::unique("sneaky")).await,
            running.rotate(&client, &id).await,
            running.revoke(&client, &id).await,
        ] {
            assert_eq!(
                error_of(response).await,
                (StatusCode::FORBIDDEN, "forbidden".into()),
                "{role}"
            );
        }
        // The device routes sharing those paths still answer them as before.
        let devices = client.get(running.url("/api/v1/devices")).send().await;
        assert_eq!(devices.unwrap().status(), StatusCode::OK);
        let one = client.get(running.url(&format!("/api/v1/devices/{id}")));
        assert_eq!(
            error_of(one.send().await.unwrap()).await,
            (StatusCode::NOT_FOUND, "unknown_device".into())
        );
    }
    assert!(
        running
            .accounts
            .check_device_secret(&id, &first.secret)
            .await
            .unwrap()
    );

    let rotated = running.rotate(&admin, &id).await;
    assert_eq!(rotated.status(), StatusCode::OK);
    let second: DeviceCredential = rotated.json().await.unwrap();
    assert_ne!(second.secret, first.secret);
    assert_eq!(
        second.amqp_url.as_deref(),
        Some(expected_url(&id, &second.secret).as_str())
    );
    assert!(
        !running
            .accounts
            .check_device_secret(&id, &first.secret)
            .await
            .unwrap()
    );
    assert!(
        running
            .accounts
            .check_device_secret(&id, &second.secret)
            .await
            .unwrap()
    );
    let listed: Vec<ProvisionedDevice> = running.provisioned(&admin).await.json().await.unwrap();
    assert!(listed.iter().any(|d| d.id == id && d.rotated_ms.is_some()));
    assert_eq!(
        error_of(running.rotate(&admin, "never-provisioned").await).await,
        (StatusCode::NOT_FOUND, "not_found".into())
    );

    let revoked = running.revoke(&admin, &id).await;
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    assert!(
        !running
            .accounts
            .check_device_secret(&id, &second.secret)
            .await
            .unwrap()
    );
    let listed: Vec<ProvisionedDevice> = running.provisioned(&admin).await.json().await.unwrap();
    assert!(listed.iter().all(|d| d.id != id));
    assert_eq!(
        error_of(running.revoke(&admin, &id).await).await,
        (StatusCode::NOT_FOUND, "not_found".into())
    );

    let trail = running.audit_of(&id).await;
    let actions: Vec<&str> = trail.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "device_revoked",
            "device_secret_rotated",
            "device_provisioned"
        ],
        "newest first, refused attempts not among them: {trail:#?}"
    );
    for entry in &trail {
        assert!(
            entry.actor.starts_with(&format!("{admin_name} (token ")),
            "{entry:?}"
        );
        assert!(!entry.detail.contains(&first.secret) && !entry.detail.contains(&second.secret));
    }
}

#[tokio::test]
async fn the_command_line_provisions_rotates_and_removes_devices() {
    let running = start().await;
    let (admin, _, _) = running.user(Role::Admin, &[]).await;
    let mut config = server::Config::new(SocketAddr::from(([127, 0, 0, 1], 0)), "");
    config.database_url = format!("sqlite://{}", running.database.display());
    config.amqp_url = None;
    let device = |command| server::config::Command::Device(command);
    let id = testkit::unique("cli-device");

    server::cli::run(
        &config,
        device(Add {
            id: id.clone(),
            secrets_file: None,
        }),
    )
    .await
    .expect("provisioned");
    // The running server, on the same database, sees it.
    let listed: Vec<ProvisionedDevice> = running.provisioned(&admin).await.json().await.unwrap();
    assert!(listed.iter().any(|d| d.id == id));
    server::cli::run(&config, device(List)).await.unwrap();
    let again = server::cli::run(
        &config,
        device(Add {
            id: id.clone(),
            secrets_file: None,
        }),
    )
    .await
    .expect_err("already provisioned");
    assert!(again.to_string().contains("already provisioned"), "{again}");
    server::cli::run(
        &config,
        device(Rotate {
            id: id.clone(),
            secrets_file: None,
        }),
    )
    .await
    .expect("rotated");
    server::cli::run(&config, device(Remove { id: id.clone() }))
        .await
        .expect("removed");
    let gone = server::cli::run(&config, device(Remove { id: id.clone() }))
        .await
        .expect_err("no longer provisioned");
    assert!(gone.to_string().contains("not provisioned"), "{gone}");
    let invalid = server::cli::run(
        &config,
        device(Add {
            id: "a b".into(),
            secrets_file: None,
        }),
    )
    .await;
    assert!(invalid.is_err());

    let trail = running.audit_of(&id).await;
    let done: Vec<(&str, &str, &str)> = trail
        .iter()
        .map(|e| (e.actor.as_str(), e.source.as_str(), e.action.as_str()))
        .collect();
    assert_eq!(
        done,
        [
            (
                "tether-server device remove",
                "command line",
                "device_revoked"
            ),
            (
                "tether-server device rotate",
                "command line",
                "device_secret_rotated"
            ),
            (
                "tether-server device add",
                "command line",
                "device_provisioned"
            ),
        ]
    );
    assert!(
        running
            .accounts
            .provisioned_devices()
            .await
            .unwrap()
            .is_empty()
    );
}

/// Calls the UI's server function `name` with the JSON `args`, as the browser does.
async fn server_fn(
    running: &Running,
    client: &reqwest::Client,
    name: &str,
    args: serde_json::Value,
) -> reqwest::Response {
    client
        .post(running.url(&format!("/api/{name}")))
        .json(&args)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_pages_server_functions_do_what_the_api_does() {
    let running = start().await;
    let (admin, _, admin_name) = running.user(Role::Admin, &[]).await;
    let id = testkit::unique("paged");

    let made = server_fn(&running, &admin, "provision_device", json!({ "id": id })).await;
    assert_eq!(made.status(), StatusCode::OK);
    let first: DeviceCredential = made.json().await.unwrap();
    assert_eq!(
        first.amqp_url.as_deref(),
        Some(expected_url(&id, &first.secret).as_str())
    );
    let listed = server_fn(&running, &admin, "provisioned_devices", json!({})).await;
    let listed: Vec<app::fleet::Provisioned> = listed.json().await.unwrap();
    let row = listed.iter().find(|d| d.device.id == id).expect("listed");
    assert_eq!(row.online, None, "it never connected");

    // The same refusals, with the API's codes.
    let again = server_fn(&running, &admin, "provision_device", json!({ "id": id })).await;
    assert_eq!(error_of(again).await.1, "already_exists");
    let invalid = server_fn(&running, &admin, "provision_device", json!({ "id": "a.b" })).await;
    assert_eq!(error_of(invalid).await.1, "invalid_input");
    let (operator, _, _) = running.user(Role::Operator, &[]).await;
    for (name, args) in [
        ("provisioned_devices", json!({})),
        (
            "provision_device",
            json!({ "id": testkit::unique("sneaky") }),
        ),
        ("rotate_device_secret", json!({ "id": id })),
        ("revoke_device", json!({ "id": id })),
    ] {
        let refused = server_fn(&running, &operator, name, args).await;
        assert_eq!(error_of(refused).await.1, "forbidden", "{name}");
    }

    let rotated = server_fn(
        &running,
        &admin,
        "rotate_device_secret",
        json!({ "id": id }),
    )
    .await;
    let second: DeviceCredential = rotated.json().await.unwrap();
    assert_ne!(second.secret, first.secret);
    let revoked = server_fn(&running, &admin, "revoke_device", json!({ "id": id })).await;
    assert_eq!(revoked.status(), StatusCode::OK);
    let gone = server_fn(&running, &admin, "revoke_device", json!({ "id": id })).await;
    assert_eq!(error_of(gone).await.1, "not_found");

    let trail = running.audit_of(&id).await;
    let actions: Vec<&str> = trail.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "device_revoked",
            "device_secret_rotated",
            "device_provisioned"
        ]
    );
    assert!(trail.iter().all(|e| e.actor.starts_with(&admin_name)));
}
