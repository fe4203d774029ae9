//! No restart loses a command: the real `tether-server` process, killed with SIGKILL
//! while a device works on a command, then started again on the same data folder.
//! The device's answer waited in the replica's durable reply queue, and the command
//! ends with it; a command whose deadline passed during the downtime ends timed out.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use agent::simulate::Kind;
use protocol::{
    CommandStatus,
    api::CommandView,
    auth::Role,
    job::{JobState, JobView},
};
use reqwest::StatusCode;
use serde_json::json;
use testkit::ServerProcess;

/// Starts the server on `dir` (its database and data folder), storing readings
/// through a queue of its own, and waits until it listens.
fn start(dir: &Path, tag: &str) -> ServerProcess {
    ServerProcess::start(
        env!("CARGO_BIN_EXE_tether-server"),
        "server",
        &[
            ("TETHER_ADDR", "127.0.0.1:0".into()),
            ("TETHER_AMQP_URL", testkit::rabbitmq_url()),
            (
                "TETHER_DATABASE_URL",
                format!("sqlite://{}", database(dir).display()),
            ),
            ("TETHER_DATA_DIR", dir.display().to_string()),
            (
                "TETHER_STORE_QUEUE",
                format!("tether.telemetry.store.test-{tag}"),
            ),
            ("TETHER_STORE_QUEUE_EXPIRES_MS", "60000".into()),
        ],
    )
}

fn database(dir: &Path) -> PathBuf {
    dir.join("tether.db")
}

async fn get_command(client: &reqwest::Client, base: &str, id: &str, wait_ms: u64) -> CommandView {
    let response = client
        .get(format!("{base}/api/v1/commands/{id}?wait_ms={wait_ms}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

async fn send(
    client: &reqwest::Client,
    base: &str,
    device: &str,
    body: serde_json::Value,
) -> CommandView {
    let response = client
        .post(format!("{base}/api/v1/devices/{device}/commands"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    response.json().await.unwrap()
}

/// Polls `check` every 50 ms until it is true; panics after `within`.
async fn until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the server lists `device` online.
async fn online(client: &reqwest::Client, base: &str, device: &str) {
    until(
        "the device is online",
        Duration::from_secs(15),
        async || {
            let Ok(response) = client
                .get(format!("{base}/api/v1/devices/{device}"))
                .send()
                .await
            else {
                return false;
            };
            let view: serde_json::Value = response.json().await.unwrap_or_default();
            view["online"] == json!(true)
        },
    )
    .await;
}

/// The server's data folder and a token of an admin made in its database beforehand.
async fn prepare() -> (tempdir::Dir, String, String) {
    let tag = format!("{:08x}", fastrand::u32(..));
    let dir = tempdir::Dir::new(&format!("tether-restart-{tag}"));
    let accounts = store::Store::open(&format!("sqlite://{}", database(&dir.0).display()))
        .await
        .unwrap();
    let (token, _) = testkit::user_token(&accounts, Role::Admin, &[]).await;
    (dir, tag, token)
}

#[tokio::test]
async fn a_command_survives_its_server_being_killed_while_the_device_works() {
    let (dir, tag, token) = prepare().await;
    let client = testkit::api_client(&token);
    let server = start(&dir.0, &tag);
    let agent = testkit::Agent::start(
        &testkit::rabbitmq_url(),
        "restart-gw",
        Kind::Gateway,
        |config| {
            config.heartbeat = Duration::from_secs(1);
        },
    )
    .await;
    let device = agent.id.to_string();
    online(&client, &server.base, &device).await;
    let body = json!({"name": "echo", "args": {"message": "still here", "delay_ms": 3_000}, "timeout_ms": 30_000});
    let sent = send(&client, &server.base, &device, body).await;
    until("the device has it", Duration::from_secs(5), async || {
        get_command(&client, &server.base, &sent.id.0, 0)
            .await
            .status
            == CommandStatus::Delivered
    })
    .await;

    drop(server); // SIGKILL: no goodbye, nothing flushed but what was written.
    // The device answers while no server runs.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let again = start(&dir.0, &tag);
    let done = get_command(&client, &again.base, &sent.id.0, 10_000).await;
    assert_eq!(done.status, CommandStatus::Succeeded, "{done:?}");
    assert_eq!(done.result, Some(json!({"message": "still here"})));
    assert!(done.issued_by.is_some_and(|by| by.contains("(token ")));
    // And it is in the history, which comes from the log.
    let history: Vec<CommandView> = client
        .get(format!("{}/api/v1/devices/{device}/commands", again.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        history.first().map(|c| (&c.id, c.status)),
        Some((&sent.id, CommandStatus::Succeeded))
    );
}

#[tokio::test]
async fn a_command_whose_deadline_passes_while_its_server_is_down_ends_timed_out() {
    let (dir, tag, token) = prepare().await;
    let client = testkit::api_client(&token);
    let server = start(&dir.0, &tag);
    // A device that takes commands and never answers.
    let device = testkit::RawDevice::connect(&testkit::rabbitmq_url(), "restart-raw", 60_000).await;
    online(&client, &server.base, device.id.as_str()).await;
    let sent = send(
        &client,
        &server.base,
        device.id.as_str(),
        json!({"name": "echo", "timeout_ms": 2_000}),
    )
    .await;
    assert_eq!(sent.status, CommandStatus::Sent);

    drop(server);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = start(&dir.0, &tag);
    let ended = get_command(&client, &again.base, &sent.id.0, 5_000).await;
    assert_eq!(ended.status, CommandStatus::TimedOut, "{ended:?}");
    assert_eq!(
        ended.error.as_deref(),
        Some("the device did not answer before the deadline")
    );
}

#[tokio::test]
async fn a_job_resumes_after_its_server_is_killed_and_commands_no_device_twice() {
    let (dir, tag, token) = prepare().await;
    let client = testkit::api_client(&token);
    let server = start(&dir.0, &tag);
    let mut agents = Vec::new();
    for _ in 0..6 {
        let agent = testkit::Agent::start(
            &testkit::rabbitmq_url(),
            "restart-job",
            Kind::Gateway,
            |config| {
                config.heartbeat = Duration::from_secs(1);
            },
        )
        .await;
        online(&client, &server.base, agent.id.as_str()).await;
        agents.push(agent);
    }
    let ids: Vec<String> = agents.iter().map(|a| a.id.to_string()).collect();
    let response = client
        .post(format!("{}/api/v1/jobs", server.base))
        .json(&json!({
            "command": "echo",
            "args": {"message": "once", "delay_ms": 1_200},
            "targets": {"ids": ids},
            "concurrency": 2,
            "timeout_ms": 30_000,
            // The restarted server knows the devices once they say hello again; a
            // device's turn that comes before that waits for it instead of skipping it
            // (seen under load).
            "offline": "wait",
            "wait_ms": 60_000,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let job: JobView = response.json().await.unwrap();
    let job_url = |base: &str| format!("{base}/api/v1/jobs/{}", job.id);
    // Killed in the middle: two devices done, two at work.
    until(
        "two devices done and two at work",
        Duration::from_secs(20),
        async || {
            let Ok(response) = client.get(job_url(&server.base)).send().await else {
                return false;
            };
            let now: JobView = response.json().await.unwrap();
            now.counts.succeeded >= 2 && now.counts.running == 2
        },
    )
    .await;
    drop(server);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let again = start(&dir.0, &tag);
    let mut done = None;
    until(
        "the job completes after the restart",
        Duration::from_secs(40),
        async || {
            let Ok(response) = client.get(job_url(&again.base)).send().await else {
                return false;
            };
            let now: JobView = response.json().await.unwrap();
            let finished = now.state == JobState::Completed;
            done = Some(now);
            finished
        },
    )
    .await;
    let done = done.unwrap();
    assert_eq!(done.counts.succeeded, 6, "{:?}", done.counts);

    // The command log: each device commanded exactly once.
    let log = store::Store::open(&format!("sqlite://{}", database(&dir.0).display()))
        .await
        .unwrap();
    let commands = log
        .command_page(store::CommandQuery {
            job: Some(job.id.0.clone()),
            limit: 100,
            ..store::CommandQuery::default()
        })
        .await
        .unwrap();
    let mut devices: Vec<String> = commands.iter().map(|c| c.device_id.to_string()).collect();
    devices.sort();
    let mut expected = agents.iter().map(|a| a.id.to_string()).collect::<Vec<_>>();
    expected.sort();
    assert_eq!(devices, expected, "one command per device: {commands:?}");
}

/// A temporary folder, removed when dropped.
mod tempdir {
    pub struct Dir(pub std::path::PathBuf);

    impl Dir {
        pub fn new(name: &str) -> Self {
            let path = std::env::temp_dir().join(name);
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
