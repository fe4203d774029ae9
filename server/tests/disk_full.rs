//! SQLite's disk full, for real: the real `tether-server` process (embedded broker)
//! with its database and data folder on a 4 MiB tmpfs of the test's own, a thermostat
//! publishing a reading every 50 ms under publisher confirms (so the test knows every
//! reading the broker took), and a gateway that carries out commands. The tmpfs is
//! filled to the last byte; while it is full the server must stay up and answer, a
//! command must still succeed, a login must be refused as "unavailable" (not a 500),
//! an API token must keep working, and the log must say why. Once the space is freed,
//! every confirmed reading is stored, the command is in the command log, `PRAGMA
//! integrity_check` is ok and a login works.
//!
//! It mounts a tmpfs, so it needs root (or CAP_SYS_ADMIN): without, it fails saying so.

use std::{
    collections::BTreeSet,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use agent::simulate::Kind;
use lapin::{
    BasicProperties, Confirmation, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use protocol::{
    CommandStatus, DeviceId, DeviceMessage, Heartbeat, Hello, TelemetrySample, api::CommandView,
    auth::Role, names,
};
use reqwest::{StatusCode, header};
use serde_json::json;
use testkit::ServerProcess;

/// The tmpfs's size.
const SIZE: &str = "4m";

/// How often the thermostat reports.
const EVERY: Duration = Duration::from_millis(50);

/// A tmpfs mounted for the test; unmounted (and its folder removed) when dropped, also
/// when the test panics.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount() -> Self {
        let dir = std::env::temp_dir().join(format!("tether-disk-full-{:08x}", fastrand::u32(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={SIZE}"), "tmpfs"])
            .arg(&dir)
            .output();
        match mounted {
            Ok(output) if output.status.success() => Self { dir },
            other => {
                let _ = std::fs::remove_dir(&dir);
                panic!(
                    "this test mounts a {SIZE} tmpfs to fill it, which needs root or CAP_SYS_ADMIN \
                     (run the tests as root, or in a container with CAP_SYS_ADMIN): \
                     `mount -t tmpfs -o size={SIZE} tmpfs {}` failed: {}",
                    dir.display(),
                    match other {
                        Ok(output) => String::from_utf8_lossy(&output.stderr).trim().to_owned(),
                        Err(error) => error.to_string(),
                    }
                )
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(&self.dir).status();
        if !unmounted.is_ok_and(|status| status.success()) {
            // Still busy (a process of ours not yet gone): detach it now, freed when
            // the last user lets go.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Fills the file system under `dir` to the last byte (a file written until ENOSPC);
/// removing the file frees it.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("the filler file is created");
    let chunk = vec![0xA5u8; 64 * 1024];
    let mut small = false;
    loop {
        let piece = if small { &chunk[..512] } else { &chunk[..] };
        match file.write(piece) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) if error.raw_os_error() == Some(28) => {
                // ENOSPC: what is left is smaller than a chunk; take it in small pieces.
                if small {
                    break;
                }
                small = true;
            }
            Err(error) => panic!("filling {}: {error}", path.display()),
        }
    }
    path
}

/// Starts the server on `dir` with its embedded broker on `broker_port` (the devices'
/// port across restarts); waits until it listens.
fn start_server(dir: &Path, broker_port: u16) -> ServerProcess {
    ServerProcess::start(
        env!("CARGO_BIN_EXE_tether-server"),
        "server",
        &[
            ("TETHER_ADDR", "127.0.0.1:0".into()),
            ("TETHER_BROKER_ADDR", format!("127.0.0.1:{broker_port}")),
            (
                "TETHER_DATABASE_URL",
                format!("sqlite://{}", database(dir).display()),
            ),
            ("TETHER_DATA_DIR", dir.join("data").display().to_string()),
        ],
    )
}

fn database(dir: &Path) -> PathBuf {
    dir.join("tether.db")
}

/// Polls `check` every 100 ms until it is true; panics after `within`, saying what.
async fn until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A thermostat written with bare lapin: hello, heartbeats, and a `temp` reading every
/// [`EVERY`] stamped `first + n·EVERY`, each published under publisher confirms; the
/// stamps of those the broker confirmed.
struct Thermostat {
    confirmed: Arc<Mutex<BTreeSet<u64>>>,
    nacked: Arc<Mutex<u64>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Thermostat {
    async fn start(url: &str, id: DeviceId) -> Self {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("the thermostat connects to the embedded broker: {e}"));
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let inbox = testkit::private_queue(&channel, "the thermostat's inbox").await;
        let session_id = testkit::unique("session");
        let publish = {
            let channel = channel.clone();
            let id = id.clone();
            move |exchange: &'static str, key: String, message: DeviceMessage| {
                let channel = channel.clone();
                let properties = BasicProperties::default()
                    .with_content_type(names::CONTENT_TYPE.into())
                    .with_user_id(id.as_str().into());
                async move {
                    let confirm = channel
                        .basic_publish(
                            exchange.into(),
                            key.as_str().into(),
                            BasicPublishOptions::default(),
                            &protocol::encode(&message),
                            properties,
                        )
                        .await?;
                    confirm.await
                }
            }
        };
        let hello = DeviceMessage::Hello(Hello {
            device_id: id.clone(),
            session_id: session_id.clone(),
            inbox,
            kind: "thermostat".into(),
            firmware: "1".into(),
            heartbeat_ms: 1_000,
            capabilities: serde_json::from_value(json!({
                "metrics": [{"name": "temp", "unit": "°C", "min": -10.0, "max": 50.0}]
            }))
            .unwrap(),
        });
        let hello_key = format!("presence.{id}.hello");
        assert!(matches!(
            publish(names::PRESENCE_EXCHANGE, hello_key, hello).await,
            Ok(Confirmation::Ack(_))
        ));
        let confirmed = Arc::new(Mutex::new(BTreeSet::new()));
        let nacked = Arc::new(Mutex::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (confirmed, nacked, stop) = (confirmed.clone(), nacked.clone(), stop.clone());
            async move {
                let _connection = connection;
                let first = common::now_ms();
                let mut tick = tokio::time::interval(EVERY);
                let mut n: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let ts_ms = first + n * EVERY.as_millis() as u64;
                    if n.is_multiple_of(20) {
                        let beat = DeviceMessage::Heartbeat(Heartbeat {
                            device_id: id.clone(),
                            session_id: session_id.clone(),
                        });
                        let _ = publish(
                            names::PRESENCE_EXCHANGE,
                            format!("presence.{id}.heartbeat"),
                            beat,
                        )
                        .await;
                    }
                    let reading = DeviceMessage::Telemetry(TelemetrySample {
                        device_id: id.clone(),
                        session_id: session_id.clone(),
                        metric: "temp".into(),
                        value: 20.0 + (n % 10) as f64 / 10.0,
                        ts_ms,
                    });
                    match publish(
                        names::TELEMETRY_EXCHANGE,
                        names::telemetry_key(&id, "temp"),
                        reading,
                    )
                    .await
                    {
                        Ok(Confirmation::Ack(_)) => {
                            confirmed.lock().unwrap().insert(ts_ms);
                        }
                        _ => *nacked.lock().unwrap() += 1,
                    }
                    n += 1;
                }
            }
        });
        Self {
            confirmed,
            nacked,
            stop,
            task,
        }
    }

    /// Stops publishing; the stamps the broker confirmed.
    async fn stop(self) -> BTreeSet<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the thermostat ran");
        std::mem::take(&mut self.confirmed.lock().unwrap())
    }
}

/// The stamps of `device`'s stored `temp` readings, read from the database file.
fn stored(database: &Path, device: &str) -> BTreeSet<u64> {
    let connection = rusqlite::Connection::open(database).unwrap();
    let mut statement = connection
        .prepare("SELECT ts_ms FROM samples WHERE device = ?1 AND metric = 'temp'")
        .unwrap();
    statement
        .query_map([device], |row| row.get::<_, i64>(0))
        .unwrap()
        .map(|ts| u64::try_from(ts.unwrap()).unwrap())
        .collect()
}

/// A login through the form, as a browser posts it: the answer's status and where it
/// sends the browser.
async fn log_in(base: &str, name: &str, password: &str) -> (StatusCode, String, bool) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = client
        .post(format!("{base}/auth/login"))
        .form(&[("name", name), ("password", password), ("next", "/")])
        .send()
        .await
        .expect("the server answers a login");
    let location = response
        .headers()
        .get(header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let cookie = response.headers().contains_key(header::SET_COOKIE);
    (response.status(), location, cookie)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_queues_readings_and_refuses_logins_then_everything_is_stored() {
    let tmpfs = Tmpfs::mount();
    let dir = tmpfs.dir.clone();
    let database = database(&dir);

    // A user, and the two devices' credentials, written before the server starts.
    let (token, name, gateway, gateway_secret, thermostat, thermostat_secret) = {
        let store = store::Store::open(&format!("sqlite://{}", database.display()))
            .await
            .expect("the database opens on the tmpfs");
        let (token, name) = testkit::user_token(&store, Role::Admin, &[]).await;
        let gateway = DeviceId::new(testkit::unique("full-gw")).unwrap();
        let thermostat = DeviceId::new(testkit::unique("full-th")).unwrap();
        let gateway_secret = store.provision_device(gateway.as_str()).await.unwrap();
        let thermostat_secret = store.provision_device(thermostat.as_str()).await.unwrap();
        (
            token,
            name,
            gateway,
            gateway_secret,
            thermostat,
            thermostat_secret,
        )
    };
    let broker_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = start_server(&dir, broker_port);
    let client = testkit::api_client(&token);
    let broker =
        |id: &DeviceId, secret: &str| format!("amqp://{id}:{secret}@127.0.0.1:{broker_port}/%2f");

    let agent = testkit::Agent::start_as(
        &broker(&gateway, &gateway_secret),
        gateway.clone(),
        "tether-server",
        Kind::Gateway,
        |config| config.heartbeat = Duration::from_secs(1),
    );
    let device_online = async |id: &DeviceId| {
        let url = server.url(&format!("/api/v1/devices/{id}"));
        until(
            &format!("{id} online"),
            Duration::from_secs(20),
            async || {
                let Ok(response) = client.get(&url).send().await else {
                    return false;
                };
                let view: serde_json::Value = response.json().await.unwrap_or_default();
                view["online"] == json!(true)
            },
        )
        .await;
    };
    device_online(&gateway).await;
    let thermostat_device =
        Thermostat::start(&broker(&thermostat, &thermostat_secret), thermostat.clone()).await;
    device_online(&thermostat).await;
    // Readings are being stored before the disk fills.
    until(
        "the first readings stored",
        Duration::from_secs(20),
        async || stored(&database, thermostat.as_str()).len() >= 10,
    )
    .await;

    // The disk fills.
    let before = server.lines();
    let filler = fill(&dir);
    let full_at = tokio::time::Instant::now();
    until(
        "the server to log that it cannot store readings as the disk is full",
        Duration::from_secs(20),
        async || server.logged(before, &["cannot store", "full"]).is_some(),
    )
    .await;
    server.still_running();
    let health = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(
        health.status(),
        StatusCode::OK,
        "the server answers while the disk is full"
    );
    // An API token keeps working.
    let device = client
        .get(server.url(&format!("/api/v1/devices/{thermostat}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        device.status(),
        StatusCode::OK,
        "an API token works while the disk is full"
    );
    // A command still goes through.
    let sent = client
        .post(server.url(&format!("/api/v1/devices/{gateway}/commands")))
        .json(&json!({"name": "echo", "args": {"message": "while full"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        sent.status(),
        StatusCode::ACCEPTED,
        "a command while the disk is full: {}",
        sent.text().await.unwrap_or_default()
    );
    let command: CommandView = sent.json().await.unwrap();
    let ended: CommandView = client
        .get(server.url(&format!("/api/v1/commands/{}?wait_ms=15000", command.id.0)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ended.status,
        CommandStatus::Succeeded,
        "the command while the disk is full: {ended:?}"
    );
    // A login is refused, saying the service is unavailable, not with a 500.
    let (status, location, cookie) = log_in(&server.base, &name, "correct horse battery").await;
    assert!(
        status.is_redirection() && location.starts_with("/login?error=unavailable") && !cookie,
        "a login while the disk is full is refused as unavailable, got {status} to {location:?}"
    );
    let page = client
        .get(server.url(&location))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("cannot check passwords right now"),
        "the login page says the service is unavailable: {page}"
    );
    let why = server.logged(before, &["cannot start a session", "full"]);
    assert!(
        why.is_some(),
        "the log says why the login failed (the database or disk is full)"
    );
    server.still_running();
    // Full for a few seconds in all.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(full_at.elapsed())).await;

    // Space returns.
    std::fs::remove_file(&filler).unwrap();
    let freed_at = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let nacked = *thermostat_device.nacked.lock().unwrap();
    let confirmed = thermostat_device.stop().await;
    assert!(
        confirmed.len() >= 100,
        "only {} readings were confirmed: the thermostat did not report",
        confirmed.len()
    );
    until(
        "every confirmed reading stored",
        Duration::from_secs(45),
        async || {
            let stored = stored(&database, thermostat.as_str());
            confirmed.difference(&stored).next().is_none()
        },
    )
    .await;
    let caught_up = freed_at.elapsed();
    until(
        "the command written to the command log",
        Duration::from_secs(20),
        async || {
            let connection = rusqlite::Connection::open(&database).unwrap();
            connection
                .query_row(
                    "SELECT status FROM commands WHERE id = ?1",
                    [&command.id.0],
                    |row| row.get::<_, String>(0),
                )
                .is_ok_and(|status| status == "succeeded")
        },
    )
    .await;
    let integrity: String = rusqlite::Connection::open(&database)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let (status, location, cookie) = log_in(&server.base, &name, "correct horse battery").await;
    assert!(
        status.is_redirection() && location == "/" && cookie,
        "a login once space returned works, got {status} to {location:?}"
    );
    server.still_running();
    println!(
        "{} readings confirmed ({nacked} not), all stored {caught_up:?} after space returned",
        confirmed.len()
    );
    agent.stop().await;
    drop(server);
    drop(tmpfs);
}
