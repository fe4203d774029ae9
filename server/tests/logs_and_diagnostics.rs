//! A real device's logs and diagnostics, through the server: the agent as a library
//! (`RealDevice` from a configuration file, as `tether-agent --config` runs it) against
//! a server with its own broker, provisioned over the API.
//!
//! - Diagnostics: a report collected through the API is kept by the server, listed and
//!   downloaded as a JSON file (without the device's secret); the wrong ids give clear
//!   404s, and a user who may not see the device cannot read its reports.
//! - Logs: every line a `logs` command sends while following reaches the live channel
//!   as its own event, in order (what the device page's log viewer shows).

#[path = "support/cross.rs"]
mod cross;

use std::{sync::Arc, time::Duration};

use agent::{
    config_file::{Overrides, parse},
    real::RealDevice,
};
use cross::{Running, outcome, provision, send, server_and_admin};
use futures_util::StreamExt as _;
use protocol::{
    CommandStatus, DeviceId,
    api::{ApiError, DiagnosticsReport, LiveEvent},
    auth::Role,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

const SECRET_MARK: &str = "do-not-leak";

/// A device running the agent from a configuration file, with one log source `app` (a
/// file of its own); stopped when dropped.
struct Device {
    id: String,
    log: std::path::PathBuf,
    dir: std::path::PathBuf,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start_device(server: &Running, admin: &reqwest::Client, name: &str) -> Device {
    let (id, secret, url) = provision(server, admin, name).await;
    let dir = std::env::temp_dir().join(testkit::unique("tether-real-device"));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("app.log");
    std::fs::write(&log, "boot\nstarting\nready\n").unwrap();
    let text = format!(
        "amqp_url = \"{url}\"\ndevice_id = \"{id}\"\nsecret = \"{secret}\"\n\
         kind = \"gateway\"\nheartbeat_ms = 1000\ntelemetry_ms = 0\n\
         [logs]\nfollow_max_s = 30\n[logs.sources]\napp = {{ file = \"{}\" }}\n\
         [[actions]]\nname = \"noop\"\nprogram = \"/bin/true\"\nenv = {{ TOKEN = \"{SECRET_MARK}\" }}\n",
        log.display()
    );
    let loaded = parse(&text, &dir, &Overrides::default()).expect("a valid configuration");
    let device = Arc::new(RealDevice::configured(&loaded, Vec::new()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(agent::run(loaded.config, device, async {
        let _ = stopped.await;
    }));
    let device_id = DeviceId::new(&id).unwrap();
    testkit::eventually(&format!("{id} online"), Duration::from_secs(15), || {
        server.hub.device(&device_id).filter(|d| d.online)
    })
    .await;
    Device {
        id,
        log,
        dir,
        _stop: stop,
    }
}

async fn get(client: &reqwest::Client, url: String) -> (StatusCode, String) {
    let answer = client.get(url).send().await.unwrap();
    (answer.status(), answer.text().await.unwrap())
}

fn api_error(text: &str) -> ApiError {
    serde_json::from_str(text).unwrap_or_else(|_| panic!("an API error: {text}"))
}

#[tokio::test]
async fn diagnostics_reports_are_kept_listed_and_downloaded() {
    let (server, admin) = server_and_admin().await;
    let device = start_device(&server, &admin, "diag").await;
    let id = &device.id;
    let list = server.url(&format!("/api/v1/devices/{id}/diagnostics"));

    let (status, body) = get(&admin, list.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "[]", "no report yet");

    let sent = send(&server, &admin, id, json!({"name": "diagnostics"})).await;
    let done = outcome(&server, &admin, &sent).await;
    assert_eq!(done.status, CommandStatus::Succeeded, "{done:?}");

    // Listed (once the command log has it: written within a moment).
    let mut reports: Vec<DiagnosticsReport> = Vec::new();
    for _ in 0..100 {
        let (status, body) = get(&admin, list.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        reports = serde_json::from_str(&body).unwrap();
        if !reports.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reports.len(), 1);
    let report = &reports[0];
    assert_eq!(report.command_id, sent.id);
    assert_eq!(report.device_id.as_str(), id);
    assert!(report.bytes > 200, "{report:?}");
    assert!(report.issued_by.is_some());

    // Downloaded as a file.
    let answer = admin
        .get(format!("{list}/{}", sent.id.0))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let disposition = answer.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        disposition.starts_with(&format!("attachment; filename=\"diagnostics-{id}-"))
            && disposition.ends_with("Z.json\""),
        "{disposition}"
    );
    assert_eq!(answer.headers()["content-type"], "application/json");
    let text = answer.text().await.unwrap();
    assert!(
        !text.contains(SECRET_MARK),
        "a secret in the report: {text}"
    );
    let file: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(file["device_id"], json!(id));
    assert_eq!(file["command_id"], json!(sent.id.0));
    assert_eq!(file["report"]["kernel"]["arch"], std::env::consts::ARCH);
    assert_eq!(file["report"]["config"]["secret"], "***");
    assert_eq!(file["report"]["agent_version"], env!("CARGO_PKG_VERSION"));

    // Ids that are not a report of this device.
    let other = start_device(&server, &admin, "diag-other").await;
    let cases = [
        (format!("{list}/no-such-report"), "unknown_report"),
        (
            server.url(&format!(
                "/api/v1/devices/{}/diagnostics/{}",
                other.id, sent.id.0
            )),
            "unknown_report",
        ),
        (
            server.url("/api/v1/devices/never-seen/diagnostics"),
            "unknown_device",
        ),
        (
            server.url("/api/v1/devices/bad%20id/diagnostics"),
            "unknown_device",
        ),
    ];
    for (url, code) in cases {
        let (status, body) = get(&admin, url.clone()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{url}: {body}");
        assert_eq!(api_error(&body).code, code, "{url}");
    }
    // A command that is not a diagnostics report.
    let noop = send(&server, &admin, id, json!({"name": "noop"})).await;
    outcome(&server, &admin, &noop).await;
    let (status, body) = get(&admin, format!("{list}/{}", noop.id.0)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(api_error(&body).code, "unknown_report");

    // A viewer of another group: the device does not exist for them.
    let (outsider, _) = testkit::user_token(&server.accounts, Role::Viewer, &["elsewhere"]).await;
    let outsider = testkit::api_client(&outsider);
    for url in [list.clone(), format!("{list}/{}", sent.id.0)] {
        let (status, body) = get(&outsider, url).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(api_error(&body).code, "unknown_device");
    }
}

#[tokio::test]
async fn every_line_of_a_followed_log_reaches_the_live_channel_in_order() {
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};

    let (server, admin) = server_and_admin().await;
    let device = start_device(&server, &admin, "logs").await;
    // The tab shows the device's page, so it is sent its commands.
    let mut request = format!(
        "{}/api/v1/live?watch={}",
        server.base.replace("http", "ws"),
        device.id
    )
    .into_client_request()
    .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", server.token).parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();

    let sent = send(
        &server,
        &admin,
        &device.id,
        json!({"name": "logs", "args": {"source": "app", "lines": 2, "follow": true, "follow_s": 8},
               "timeout_ms": 20000}),
    )
    .await;
    // New lines while it follows, in bursts (each more than one progress message).
    let appended: Vec<String> = (0..120)
        .map(|i| format!("line {i:03} {}", "x".repeat(40)))
        .collect();
    let log = device.log.clone();
    let writer = {
        let appended = appended.clone();
        tokio::spawn(async move {
            use std::io::Write as _;
            tokio::time::sleep(Duration::from_millis(800)).await;
            for burst in appended.chunks(30) {
                let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
                for line in burst {
                    writeln!(file, "{line}").unwrap();
                }
                drop(file);
                tokio::time::sleep(Duration::from_millis(600)).await;
            }
        })
    };

    let mut lines: Vec<String> = Vec::new();
    let mut end = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while end.is_none() {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .expect("the command ends within 20 s")
            .expect("the live channel stays open")
            .unwrap();
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(LiveEvent::CommandUpdated { command }) = serde_json::from_str(&text) else {
            continue;
        };
        if command.id != sent.id {
            continue;
        }
        if command.status == CommandStatus::Progress {
            lines.extend(
                command
                    .message
                    .unwrap_or_default()
                    .split('\n')
                    .map(str::to_owned),
            );
        } else if command.status.is_terminal() {
            end = Some(command);
        }
    }
    writer.await.unwrap();
    let end = end.unwrap();
    assert_eq!(end.status, CommandStatus::Succeeded, "{end:?}");
    let mut expected = vec!["starting".to_owned(), "ready".to_owned()];
    expected.extend(appended);
    assert_eq!(lines, expected, "every line once, in order");
    assert_eq!(end.result.unwrap()["lines"], json!(expected.len()));
}
