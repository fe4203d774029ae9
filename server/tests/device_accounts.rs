//! Device accounts on the server's own (embedded) broker, end to end over HTTP: a device
//! provisioned through the API logs in with the credential in the answer and is
//! commanded; a wrong or old secret is refused; rotating or revoking a credential closes
//! the connections made with it at once; the servers' own account name cannot be taken
//! by a device. And the command line's `--secrets-file`.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use agent::simulate::Kind;
use futures_util::StreamExt as _;
use lapin::{Connection, ConnectionProperties};
use protocol::{CommandStatus, DeviceId, api::CommandView, auth::DeviceCredential};
use reqwest::StatusCode;
use serde_json::json;
use server::config::DeviceCommand::{Add, Rotate};

mod support;

use support::{Running, start_with};

/// A server running its own broker.
async fn server_with_own_broker() -> Running {
    start_with(|config| config.amqp_url = None).await
}

async fn provision(server: &Running, client: &reqwest::Client, id: &str) -> reqwest::Response {
    client
        .post(server.url("/api/v1/devices"))
        .json(&json!({ "id": id }))
        .send()
        .await
        .unwrap()
}

/// A device's connection, and what it was closed with, once it is.
async fn connect(url: &str) -> (Connection, Arc<Mutex<Option<String>>>) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("the device logs in");
    let closed = Arc::new(Mutex::new(None));
    let mut events = connection.events_listener();
    let seen = closed.clone();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if let lapin::Event::Error(error) = event {
                *seen.lock().unwrap() = Some(error.to_string());
            }
        }
    });
    (connection, closed)
}

async fn closed_within(connection: &Connection, why: &Arc<Mutex<Option<String>>>) -> String {
    testkit::eventually("the connection closed", Duration::from_secs(3), || {
        (!connection.status().connected()).then(|| why.lock().unwrap().clone().unwrap_or_default())
    })
    .await
}

#[tokio::test]
async fn a_device_provisioned_through_the_api_logs_in_and_a_revoked_one_is_thrown_out() {
    let server = server_with_own_broker().await;
    let (admin, _, _) = server.user(protocol::auth::Role::Admin, &[]).await;
    let id = testkit::unique("own-broker-gw");
    let answer = provision(&server, &admin, &id).await;
    assert_eq!(answer.status(), StatusCode::CREATED);
    let credential: DeviceCredential = answer.json().await.unwrap();
    let url = credential
        .amqp_url
        .expect("the answer carries the broker URL");
    assert!(
        url.contains(&format!("{id}:{}@", credential.secret)),
        "{url}"
    );

    // The agent, with exactly that URL, is online and does what it is told.
    let device = DeviceId::new(&id).unwrap();
    let agent =
        testkit::Agent::start_as(&url, device.clone(), "tether-server", Kind::Gateway, |c| {
            c.heartbeat = Duration::from_secs(1);
        });
    testkit::online(&server.hub, &device).await;
    let sent: CommandView = admin
        .post(server.url(&format!("/api/v1/devices/{id}/commands")))
        .json(&json!({"name": "echo", "args": {"message": "hi"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let done: CommandView = admin
        .get(server.url(&format!("/api/v1/commands/{}?wait_ms=5000", sent.id.0)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(done.status, CommandStatus::Succeeded, "{done:?}");

    // A wrong secret is refused.
    let wrong = testkit::with_credential(&url, &id, "0123456789abcdef");
    assert!(
        Connection::connect(&wrong, ConnectionProperties::default())
            .await
            .is_err()
    );

    // Revoked: its connections are closed at once (320, as RabbitMQ closes a deleted
    // user's), it is offline at once, and it cannot log in again.
    let (spare, why) = connect(&url).await;
    let revoked = admin
        .delete(server.url(&format!("/api/v1/devices/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    let why = closed_within(&spare, &why).await;
    assert!(
        why.contains("CONNECTION_FORCED") || why.contains("320") || why.is_empty(),
        "{why}"
    );
    assert!(
        !server.hub.device(&device).unwrap().online,
        "offline at once"
    );
    assert!(
        Connection::connect(&url, ConnectionProperties::default())
            .await
            .is_err(),
        "a revoked device cannot log in"
    );
    agent.signal_stop();
}

#[tokio::test]
async fn rotating_a_secret_closes_the_connections_made_with_the_old_one() {
    let server = server_with_own_broker().await;
    let (admin, _, _) = server.user(protocol::auth::Role::Admin, &[]).await;
    let id = testkit::unique("rotated");
    let old: DeviceCredential = provision(&server, &admin, &id).await.json().await.unwrap();
    let old_url = old.amqp_url.unwrap();
    let (connection, why) = connect(&old_url).await;
    let new: DeviceCredential = admin
        .post(server.url(&format!("/api/v1/devices/{id}/secret")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    closed_within(&connection, &why).await;
    assert!(
        Connection::connect(&old_url, ConnectionProperties::default())
            .await
            .is_err(),
        "the old secret no longer logs in"
    );
    let (fresh, _) = connect(&new.amqp_url.unwrap()).await;
    assert!(fresh.status().connected());
}

#[tokio::test]
async fn no_device_may_take_the_servers_account_name() {
    let server = server_with_own_broker().await;
    let (admin, _, _) = server.user(protocol::auth::Role::Admin, &[]).await;
    let answer = provision(&server, &admin, "tether-server").await;
    assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["code"], "invalid_input", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("servers' own"),
        "{body}"
    );
}

#[tokio::test]
async fn the_command_line_can_append_secrets_to_a_file_for_the_agent() {
    let dir = std::env::temp_dir().join(testkit::unique("tether-secrets"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = server::Config::new(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), "");
    config.amqp_url = None;
    config.database_url = format!("sqlite://{}", dir.join("t.db").display());
    let file = dir.join("fleet.secrets");
    let run = |command| server::cli::run(&config, server::config::Command::Device(command));
    run(Add {
        id: "boiler-1".into(),
        secrets_file: Some(file.clone()),
    })
    .await
    .unwrap();
    run(Add {
        id: "boiler-2".into(),
        secrets_file: Some(file.clone()),
    })
    .await
    .unwrap();
    run(Rotate {
        id: "boiler-1".into(),
        secrets_file: Some(file.clone()),
    })
    .await
    .unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once(' ')).collect();
    assert_eq!(
        lines.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        ["boiler-1", "boiler-2", "boiler-1"]
    );
    let store = store::Store::open(&config.database_url).await.unwrap();
    assert!(
        store
            .check_device_secret("boiler-1", lines[2].1)
            .await
            .unwrap(),
        "the rotated secret"
    );
    assert!(
        !store
            .check_device_secret("boiler-1", lines[0].1)
            .await
            .unwrap(),
        "not the old one"
    );
    assert!(
        store
            .check_device_secret("boiler-2", lines[1].1)
            .await
            .unwrap()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "only its owner may read it: {mode:o}");
    }
    let refused = run(Add {
        id: "tether-server".into(),
        secrets_file: Some(file.clone()),
    })
    .await;
    assert!(refused.unwrap_err().to_string().contains("servers' own"));
    let _ = std::fs::remove_dir_all(&dir);
}
