//! A device nobody here wrote in Rust: `examples/python-device/device.py` (Python on
//! pika, written from PROTOCOL.md) against a real server with its own broker, provisioned
//! over the API. Through the HTTP API only: it comes online with what it announced, a
//! command runs with progress to its result, a command is cancelled while it runs, its
//! heartbeats keep it online, its readings show up live and in the history, and on
//! SIGTERM it says bye and is offline at once (not after its heartbeats lapse).
//!
//! Python: TETHER_PYTHON, else /usr/bin/python3, with pika (Debian's python3-pika;
//! scripts/bootstrap.sh installs it). A missing Python or pika fails the test, saying
//! what to install; it is never skipped.

#[path = "support/cross.rs"]
mod cross;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use cross::*;
use protocol::{CommandStatus, api::CommandView};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The heartbeat the device announces: it is declared offline 3 of them after the last.
const HEARTBEAT_MS: u64 = 1000;

fn python() -> PathBuf {
    let python =
        std::env::var_os("TETHER_PYTHON").map_or_else(|| "/usr/bin/python3".into(), PathBuf::from);
    let probe = Command::new(&python)
        .args(["-c", "import pika"])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): install Python 3 and pika (apt-get install python3-pika, \
                 or scripts/bootstrap.sh), or set TETHER_PYTHON",
                python.display()
            )
        });
    assert!(
        probe.status.success(),
        "{} cannot import pika: apt-get install python3-pika (or scripts/bootstrap.sh), or set \
         TETHER_PYTHON to a Python with pika\n{}",
        python.display(),
        String::from_utf8_lossy(&probe.stderr)
    );
    python
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python-device/device.py")
}

/// GET `path` as the admin: its JSON.
async fn get(server: &Running, admin: &reqwest::Client, path: &str) -> (StatusCode, Value) {
    let answer = admin.get(server.url(path)).send().await.unwrap();
    let status = answer.status();
    (status, answer.json().await.unwrap_or(Value::Null))
}

/// Polls `path` until it answers 200 with JSON `check` accepts (at most `within`).
async fn until(
    server: &Running,
    admin: &reqwest::Client,
    path: &str,
    what: &str,
    within: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    until_answer(server, admin, path, what, within, |status, body| {
        status == StatusCode::OK && check(body)
    })
    .await
}

/// Polls `path` until `check` accepts its status and JSON (at most `within`).
async fn until_answer(
    server: &Running,
    admin: &reqwest::Client,
    path: &str,
    what: &str,
    within: Duration,
    check: impl Fn(StatusCode, &Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = get(server, admin, path).await;
        if check(status, &body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}; last {path}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts the Python device as `id` with its secret, heartbeating every
/// `heartbeat_ms`, with `more` arguments.
fn start_device(id: &str, secret: &str, url: &str, heartbeat_ms: &str, more: &[&str]) -> Agent {
    let script = script();
    let mut args = vec![
        script.to_str().unwrap(),
        "--amqp-url",
        url,
        "--device-id",
        id,
        "--heartbeat-ms",
        heartbeat_ms,
    ];
    args.extend_from_slice(more);
    Agent::spawn(&python(), &args, &[("TETHER_DEVICE_SECRET", secret)])
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_device_comes_online_obeys_reports_and_says_bye() {
    let started = Instant::now();
    let (server, admin) = server_and_admin().await;
    let (id, secret, url) = provision(&server, &admin, "py-coffee").await;
    let heartbeat = HEARTBEAT_MS.to_string();
    let mut device = start_device(
        &id,
        &secret,
        &url,
        &heartbeat,
        &["--firmware", "0.1.0-test"],
    );
    let device_path = format!("/api/v1/devices/{id}");

    // Online, with what it announced.
    let view = until(
        &server,
        &admin,
        &device_path,
        "the device online",
        Duration::from_secs(20),
        |d| d["online"] == true,
    )
    .await;
    assert_eq!(view["kind"], "coffee machine", "{view}");
    assert_eq!(view["firmware"], "0.1.0-test", "{view}");
    assert_eq!(view["heartbeat_ms"], HEARTBEAT_MS, "{view}");
    let capabilities = &view["capabilities"];
    let brew = &capabilities["commands"][0];
    assert_eq!(brew["name"], "brew", "{capabilities}");
    assert_eq!(
        brew["args"][0],
        json!({"name": "cups", "description": "how many", "type": "integer", "min": 1, "max": 12, "required": true}),
        "{capabilities}"
    );
    assert_eq!(
        brew["args"][1]["choices"],
        json!(["mild", "strong"]),
        "{capabilities}"
    );
    assert_eq!(
        capabilities["metrics"][0]["name"], "boiler_temp",
        "{capabilities}"
    );
    assert_eq!(
        capabilities["reporting"],
        json!({"interval_ms": 5000, "fastest_ms": 500}),
        "{capabilities}"
    );
    let online_since = view["since_ms"].as_u64().unwrap();

    // The server refuses what the device did not announce: 42.0 is not an integer.
    let refused = admin
        .post(server.url(&format!("{device_path}/commands")))
        .json(&json!({"name": "brew", "args": {"cups": 2.0}}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // A command with progress: delivered, progress per cup, then its result.
    let sent = send(
        &server,
        &admin,
        &id,
        json!({"name": "brew", "args": {"cups": 3, "strength": "strong"}}),
    )
    .await;
    assert_eq!(sent.args["strength"], "strong");
    let done = outcome(&server, &admin, &sent).await;
    assert_eq!(done.status, CommandStatus::Succeeded, "{done:?}");
    assert_eq!(
        done.result,
        Some(json!({"cups": 3, "strength": "strong"})),
        "{done:?}"
    );
    assert_eq!(done.percent, Some(100), "{done:?}");
    assert_eq!(
        done.message.as_deref(),
        Some("cup 2 of 3 poured"),
        "the last progress message stays with the command: {done:?}"
    );

    // A default filled in by the server reaches the device.
    let mild = send(
        &server,
        &admin,
        &id,
        json!({"name": "brew", "args": {"cups": 1}}),
    )
    .await;
    let mild = outcome(&server, &admin, &mild).await;
    assert_eq!(
        mild.result,
        Some(json!({"cups": 1, "strength": "mild"})),
        "{mild:?}"
    );

    // Cancelled while it runs (12 cups take 3.6 s): it ends as cancelled, and the device
    // stops (it takes the next command at once instead of answering busy).
    let long = send(
        &server,
        &admin,
        &id,
        json!({"name": "brew", "args": {"cups": 12}}),
    )
    .await;
    let command_path = format!("/api/v1/commands/{}", long.id.0);
    until(
        &server,
        &admin,
        &command_path,
        "progress on the long brew",
        Duration::from_secs(10),
        |c| c["status"] == "progress",
    )
    .await;
    let cancelled = admin
        .delete(server.url(&command_path))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::OK);
    let cancelled: CommandView = cancelled.json().await.unwrap();
    assert_eq!(cancelled.status, CommandStatus::Cancelled, "{cancelled:?}");
    // The device's `cancelled` reply arrives after the command ended: it changes nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, still) = get(&server, &admin, &command_path).await;
    assert_eq!(still["status"], "cancelled", "{still}");
    let after = send(
        &server,
        &admin,
        &id,
        json!({"name": "brew", "args": {"cups": 1}}),
    )
    .await;
    let after = outcome(&server, &admin, &after).await;
    assert_eq!(
        after.status,
        CommandStatus::Succeeded,
        "the cancelled brew stopped: {after:?}"
    );

    // A reading: live (the device's latest) and stored (the history).
    let view = until(
        &server,
        &admin,
        &device_path,
        "a live reading",
        Duration::from_secs(10),
        |d| d["latest"]["boiler_temp"]["value"].is_number(),
    )
    .await;
    let value = view["latest"]["boiler_temp"]["value"].as_f64().unwrap();
    assert!((0.0..=130.0).contains(&value), "{view}");
    until(
        &server,
        &admin,
        &format!("{device_path}/telemetry?metric=boiler_temp"),
        "a stored reading",
        Duration::from_secs(15),
        |history| {
            history["series"][0]["points"]
                .as_array()
                .is_some_and(|points| points.iter().any(|p| p["count"].as_u64() > Some(0)))
        },
    )
    .await;

    // Heartbeats keep it online past 3 heartbeats of silence after its hello.
    let view = until(
        &server,
        &admin,
        &device_path,
        "heartbeats",
        Duration::from_secs(10),
        |d| d["last_seen_ms"].as_u64().unwrap_or(0) > online_since + 3 * HEARTBEAT_MS + 500,
    )
    .await;
    assert_eq!(view["online"], true, "{view}");
    assert_eq!(
        view["since_ms"].as_u64(),
        Some(online_since),
        "never went offline: {view}"
    );

    // SIGTERM: it says bye and exits 0; offline at once, long before 3 missed heartbeats.
    let stopping_ms = common::now_ms();
    let status = device
        .terminate(Duration::from_secs(10))
        .await
        .expect("the Python device exits within 10 s of SIGTERM");
    assert!(status.success(), "the Python device exited with {status}");
    let view = until(
        &server,
        &admin,
        &device_path,
        "the device offline",
        Duration::from_secs(10),
        |d| d["online"] == false,
    )
    .await;
    let offline_after = view["since_ms"]
        .as_u64()
        .unwrap()
        .saturating_sub(stopping_ms);
    assert!(
        offline_after < 2 * HEARTBEAT_MS,
        "offline {offline_after} ms after SIGTERM: by its bye, not by missed heartbeats\n{}",
        device.output()
    );
    let output = device.output();
    assert!(
        output.contains("online: session") && output.contains("bye"),
        "{output}"
    );
    eprintln!("the Python device's test took {:?}", started.elapsed());
}

/// The same device set up wrong (a heartbeat faster than servers take): it never comes
/// online, and the API says why, to the admin who provisioned it.
#[tokio::test(flavor = "multi_thread")]
async fn a_python_device_whose_hello_is_refused_is_told_why() {
    let (server, admin) = server_and_admin().await;
    let (id, secret, url) = provision(&server, &admin, "py-wrong").await;
    let _device = start_device(&id, &secret, &url, "50", &[]);
    let device_path = format!("/api/v1/devices/{id}");
    let refusal = until_answer(
        &server,
        &admin,
        &device_path,
        "the refusal",
        Duration::from_secs(20),
        |status, body| {
            assert_ne!(
                status,
                StatusCode::OK,
                "a refused device is not online: {body}"
            );
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("was refused"))
        },
    )
    .await;
    let message = refusal["message"].as_str().unwrap();
    assert!(
        message.contains("heartbeat_ms 50 is outside 100–600000"),
        "{message}"
    );
    let provisioned = until(
        &server,
        &admin,
        "/api/v1/provisioned",
        "the refusal in the list",
        Duration::from_secs(5),
        |list| {
            list.as_array().is_some_and(|all| {
                all.iter()
                    .any(|d| d["id"] == id.as_str() && d.get("hello_refused").is_some())
            })
        },
    )
    .await;
    let entry = provisioned
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id.as_str())
        .unwrap();
    assert!(
        entry["hello_refused"]["problem"]
            .as_str()
            .is_some_and(|p| p.contains("heartbeat_ms 50")),
        "{entry}"
    );
}
