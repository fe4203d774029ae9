//! Tether on a three-node RabbitMQ cluster (`scripts/rabbit-cluster.sh`), one node stopped
//! under load. Two real `tether-server` replicas (quorum queues, every node's URL, one
//! database), devices spread over the nodes (each given every URL, starting with a
//! random one), a steady command load through both replicas' HTTP APIs, and readings
//! published with publisher confirms. Then the node most devices are on stops, and:
//! commands go on after a short gap (every device works again, those that were on the
//! stopped node included), no command is left unfinished past its deadline, none is
//! carried out twice, and every confirmed reading is stored. The node is started again
//! at the end, whatever happens, so that the cluster is whole for the next run.
//!
//! Needs the cluster: `eval "$(scripts/rabbit-cluster.sh start && scripts/rabbit-cluster.sh env)"`
//! (scripts/test.sh does). Without it the test fails, saying so.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use agent::{CommandContext, Handler, simulate::Kind};
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions},
};
use protocol::{
    CommandStatus, DeviceId, DeviceMessage, TelemetrySample, api::CommandView, auth::Role, names,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::ServerProcess;

const DEVICES: usize = 6;
/// Commands per second through the two replicas together.
const COMMANDS_PER_SECOND: u64 = 10;
/// Each command's deadline.
const COMMAND_TIMEOUT_MS: u64 = 8_000;
/// Readings per second from the test's own publisher.
const READINGS_PER_SECOND: u64 = 20;

fn cluster_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: this test needs the three-node RabbitMQ cluster; start it with \
             `scripts/rabbit-cluster.sh start && eval \"$(scripts/rabbit-cluster.sh env)\"` (scripts/test.sh does)"
        )
    })
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/rabbit-cluster.sh")
}

/// `scripts/rabbit-cluster.sh args…`, its output; panics with what it said on failure.
fn cluster(args: &[&str]) -> String {
    let output = Command::new(script())
        .args(args)
        .output()
        .expect("scripts/rabbit-cluster.sh runs");
    assert!(
        output.status.success(),
        "scripts/rabbit-cluster.sh {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Starts the stopped node again when dropped (the test's end, or a panic).
struct Restart(Option<usize>);

impl Drop for Restart {
    fn drop(&mut self) {
        if let Some(node) = self.0.take() {
            let status = Command::new(script())
                .args(["start-node", &node.to_string()])
                .status();
            if !status.is_ok_and(|status| status.success()) {
                eprintln!(
                    "cluster: could not start node {node} again: run scripts/rabbit-cluster.sh start-node {node}"
                );
            }
        }
    }
}

/// Starts a replica: every node's URL, quorum queues, the shared database, its own data
/// folder; waits until it listens.
fn start_replica(name: &str, dir: &Path, database: &str, store_queue: &str) -> ServerProcess {
    let data = dir.join(name);
    std::fs::create_dir_all(&data).unwrap();
    ServerProcess::start(
        env!("CARGO_BIN_EXE_tether-server"),
        name,
        &[
            ("TETHER_ADDR", "127.0.0.1:0".into()),
            (
                "TETHER_AMQP_URL",
                cluster_env("TETHER_TEST_CLUSTER_AMQP_URLS"),
            ),
            ("TETHER_QUEUE_TYPE", "quorum".into()),
            ("TETHER_DATABASE_URL", database.into()),
            ("TETHER_DATA_DIR", data.display().to_string()),
            ("TETHER_STORE_QUEUE", store_queue.into()),
            ("TETHER_STORE_QUEUE_EXPIRES_MS", "600000".into()),
        ],
    )
}

/// A simulated gateway that counts how often it carried out each command.
struct Counting {
    inner: agent::simulate::Simulated,
    runs: Arc<Mutex<HashMap<String, u32>>>,
}

impl Handler for Counting {
    fn capabilities(&self) -> protocol::Capabilities {
        self.inner.capabilities()
    }

    async fn handle(
        &self,
        command: agent::Command,
        context: CommandContext,
    ) -> Result<Value, agent::CommandError> {
        *self
            .runs
            .lock()
            .unwrap()
            .entry(command.id.0.clone())
            .or_default() += 1;
        self.inner.handle(command, context).await
    }
}

/// What the load sent.
#[derive(Debug, Clone)]
struct Sent {
    id: String,
    device: String,
    replica: usize,
    at: Instant,
}

#[derive(Default)]
struct Load {
    sent: Mutex<Vec<Sent>>,
    /// Refusals by status and code (a device offline while it moves, a replica
    /// reconnecting), with when.
    refused: Mutex<Vec<(Instant, String)>>,
}

async fn send_loop(
    client: reqwest::Client,
    bases: [String; 2],
    devices: Vec<String>,
    load: Arc<Load>,
    stop: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(1_000 / COMMANDS_PER_SECOND));
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let replica = n % 2;
        let device = devices[(n / 2) % devices.len()].clone();
        n += 1;
        let client = client.clone();
        let base = bases[replica].clone();
        let load = load.clone();
        tokio::spawn(async move {
            let at = Instant::now();
            let body = json!({"name": "echo", "args": {"message": format!("n{n}"), "delay_ms": 100}, "timeout_ms": COMMAND_TIMEOUT_MS});
            let response = client
                .post(format!("{base}/api/v1/devices/{device}/commands"))
                .json(&body)
                .send()
                .await;
            match response {
                Ok(response) if response.status() == StatusCode::ACCEPTED => {
                    let view: CommandView = response.json().await.unwrap();
                    load.sent.lock().unwrap().push(Sent {
                        id: view.id.0,
                        device,
                        replica,
                        at,
                    });
                }
                Ok(response) => {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    let code = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| v["code"].as_str().map(str::to_owned))
                        .unwrap_or(text);
                    load.refused
                        .lock()
                        .unwrap()
                        .push((at, format!("{status} {code}")));
                }
                Err(error) => load.refused.lock().unwrap().push((at, format!("{error}"))),
            }
        });
    }
}

/// Publishes readings of `device` under publisher confirms, one at a time, each with a
/// time of its own; on a failure reconnects to the next node. The confirmed readings'
/// times.
async fn publish_readings(
    urls: Vec<String>,
    device: DeviceId,
    stop: Arc<AtomicBool>,
    confirmed: Arc<Mutex<Vec<u64>>>,
    unconfirmed: Arc<AtomicU64>,
) {
    let mut at = fastrand::usize(..urls.len());
    let mut last_ts = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let url = &urls[at];
        at = (at + 1) % urls.len();
        let Ok(connection) = Connection::connect(url, ConnectionProperties::default()).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let Ok(channel) = connection.create_channel().await else {
            continue;
        };
        if channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .is_err()
        {
            continue;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(1_000 / READINGS_PER_SECOND));
        // A device keeps its rate: after a stalled confirm it does not catch up in a burst
        // (a burst would pass the per-device limit of 50 a second and be refused, as
        // PROTOCOL.md says).
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let ts_ms = common::now_ms().max(last_ts + 1);
            last_ts = ts_ms;
            let sample = DeviceMessage::Telemetry(TelemetrySample {
                device_id: device.clone(),
                session_id: "cluster-test".into(),
                metric: "load".into(),
                value: 1.0,
                ts_ms,
            });
            let published = channel
                .basic_publish(
                    names::TELEMETRY_EXCHANGE.into(),
                    names::telemetry_key(&device, "load").as_str().into(),
                    BasicPublishOptions::default(),
                    &protocol::encode(&sample),
                    BasicProperties::default()
                        .with_content_type(names::CONTENT_TYPE.into())
                        .with_user_id(device.as_str().into()),
                )
                .await;
            let confirm = match published {
                Ok(confirm) => confirm.await,
                Err(error) => Err(error),
            };
            match confirm {
                Ok(confirmation) if confirmation.is_ack() => {
                    confirmed.lock().unwrap().push(ts_ms);
                }
                _ => {
                    // Unknown whether the broker kept it: not counted either way.
                    unconfirmed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        let _ = connection.close(200, "done".into()).await;
    }
}

/// The node (1-3) most of `devices` are connected to, and how many are on each (none
/// on `stopped`, which is not asked).
fn busiest_node(devices: &[String], stopped: Option<usize>) -> (usize, [usize; 3]) {
    let mut counts = [0; 3];
    for (i, count) in counts.iter_mut().enumerate() {
        if stopped == Some(i + 1) {
            continue;
        }
        let users = cluster(&["users", &(i + 1).to_string()]);
        *count = users
            .lines()
            .filter(|user| devices.iter().any(|d| d == user.trim()))
            .count();
    }
    let node = (0..3).max_by_key(|&i| counts[i]).unwrap() + 1;
    (node, counts)
}

async fn command(client: &reqwest::Client, base: &str, id: &str) -> CommandView {
    let response = client
        .get(format!("{base}/api/v1/commands/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "GET command {id}");
    response.json().await.unwrap()
}

#[tokio::test]
async fn a_node_stopped_under_load_loses_no_command_and_no_reading() {
    let urls: Vec<String> = common::split_urls(&cluster_env("TETHER_TEST_CLUSTER_AMQP_URLS"))
        .map(str::to_owned)
        .collect();
    assert_eq!(urls.len(), 3, "three nodes: {urls:?}");
    let devices_db = store::Store::open(&cluster_env("TETHER_TEST_CLUSTER_DATABASE"))
        .await
        .expect("the cluster's device database opens");
    // Whole before it starts (a previous run's node stopped, say).
    let status = Command::new(script()).arg("status").output().unwrap();
    assert!(
        status.status.success(),
        "the cluster is not whole: {}; run scripts/rabbit-cluster.sh start",
        String::from_utf8_lossy(&status.stderr)
    );

    let tag = format!("{:08x}", fastrand::u32(..));
    let dir = std::env::temp_dir().join(format!("tether-cluster-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let database = format!("sqlite://{}", dir.join("tether.db").display());
    let store = store::Store::open(&database).await.unwrap();
    let (token, _) = testkit::user_token(&store, Role::Admin, &[]).await;
    let client = testkit::api_client(&token);
    let store_queue = format!("tether.telemetry.store.test-cluster-{tag}");
    let replicas = [
        start_replica("replica-a", &dir, &database, &store_queue),
        start_replica("replica-b", &dir, &database, &store_queue),
    ];
    let bases = [replicas[0].base.clone(), replicas[1].base.clone()];

    // Devices, each given every node's URL (it starts with a random one).
    let base_url = provision_base(&urls);
    let runs = Arc::new(Mutex::new(HashMap::new()));
    let mut agents = Vec::new();
    let mut device_ids = Vec::new();
    for i in 0..DEVICES {
        let id = DeviceId::new(testkit::unique(&format!("cl{i}"))).unwrap();
        let secret = devices_db.provision_device(id.as_str()).await.unwrap();
        let url = testkit::with_credential(&base_url, id.as_str(), &secret);
        let handler = Arc::new(Counting {
            inner: agent::simulate::Simulated::new(Kind::Gateway),
            runs: runs.clone(),
        });
        agents.push(testkit::Agent::start_handler(
            &url,
            id.clone(),
            "guest",
            Kind::Gateway.name(),
            handler,
            |config| {
                config.heartbeat = Duration::from_secs(1);
                config.telemetry = None;
                config.reconnect_max = Duration::from_secs(2);
            },
        ));
        device_ids.push(id.to_string());
    }
    for device in &device_ids {
        for base in &bases {
            until(
                &format!("{device} online at {base}"),
                Duration::from_secs(20),
                async || {
                    let Ok(response) = client
                        .get(format!("{base}/api/v1/devices/{device}"))
                        .send()
                        .await
                    else {
                        return false;
                    };
                    response.json::<Value>().await.unwrap_or_default()["online"] == json!(true)
                },
            )
            .await;
        }
    }

    // Readings from a device of the test's own, under publisher confirms.
    let reader = DeviceId::new(testkit::unique("cl-readings")).unwrap();
    let reader_secret = devices_db.provision_device(reader.as_str()).await.unwrap();
    let reader_urls: Vec<String> = urls
        .iter()
        .map(|url| {
            testkit::with_credential(
                &provision_base(std::slice::from_ref(url)),
                reader.as_str(),
                &reader_secret,
            )
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let confirmed = Arc::new(Mutex::new(Vec::new()));
    let unconfirmed = Arc::new(AtomicU64::new(0));
    let readings = tokio::spawn(publish_readings(
        reader_urls,
        reader.clone(),
        stop.clone(),
        confirmed.clone(),
        unconfirmed.clone(),
    ));
    let load = Arc::new(Load::default());
    let sending = tokio::spawn(send_loop(
        client.clone(),
        bases.clone(),
        device_ids.clone(),
        load.clone(),
        stop.clone(),
    ));

    tokio::time::sleep(Duration::from_secs(5)).await;
    let (node, spread) = busiest_node(&device_ids, None);
    eprintln!("cluster: devices per node {spread:?}; stopping node {node}");
    let restart = Restart(Some(node));
    let stopped_at = Instant::now();
    cluster(&["stop-node", &node.to_string()]);
    eprintln!("cluster: node {node} stopped in {:?}", stopped_at.elapsed());

    // Every device works again: a command sent after the stop succeeded, for each.
    let recovered_within = Duration::from_secs(60);
    let mut recovered: BTreeMap<String, Duration> = BTreeMap::new();
    let deadline = Instant::now() + recovered_within;
    while recovered.len() < device_ids.len() {
        assert!(
            Instant::now() < deadline,
            "not every device works again within {recovered_within:?} of the stop: only {recovered:?}"
        );
        let sent: Vec<Sent> = load
            .sent
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.at > stopped_at && !recovered.contains_key(&s.device))
            .cloned()
            .collect();
        for s in sent {
            if recovered.contains_key(&s.device) {
                continue;
            }
            let view = command(&client, &bases[s.replica], &s.id).await;
            if view.status == CommandStatus::Succeeded {
                recovered.insert(s.device.clone(), s.at - stopped_at);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // And some more load after that.
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    sending.await.unwrap();
    readings.await.unwrap();
    let (node_after, spread_after) = busiest_node(&device_ids, Some(node));
    eprintln!("cluster: devices per node after the stop {spread_after:?} (busiest {node_after})");

    // Every command ends by its deadline; none is left pending.
    tokio::time::sleep(Duration::from_millis(COMMAND_TIMEOUT_MS + 2_000)).await;
    let sent = load.sent.lock().unwrap().clone();
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    let mut unfinished = Vec::new();
    for s in &sent {
        let view = command(&client, &bases[(s.replica + 1) % 2], &s.id).await;
        *statuses.entry(format!("{:?}", view.status)).or_default() += 1;
        if !view.status.is_terminal() {
            unfinished.push(view);
        }
    }
    let refused = load.refused.lock().unwrap().clone();
    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
    for (_, why) in &refused {
        *refusals.entry(why.clone()).or_default() += 1;
    }
    let twice: Vec<(String, u32)> = runs
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| (id.clone(), *n))
        .collect();
    let gap = recovered.values().max().copied().unwrap_or_default();
    let confirmed = confirmed.lock().unwrap().clone();
    // The recorders write what the queue holds within moments.
    let mut stored = 0;
    for _ in 0..100 {
        stored = store.count(Some(reader.as_str())).await.unwrap();
        if stored >= confirmed.len() as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "cluster: {} commands sent, statuses {statuses:?}; refused {refusals:?}; \
         every device working again within {gap:?} of the stop ({recovered:?}); \
         readings: {} confirmed, {} unconfirmed, {} stored",
        sent.len(),
        confirmed.len(),
        unconfirmed.load(Ordering::Relaxed),
        stored
    );
    assert!(
        unfinished.is_empty(),
        "commands left unfinished past their deadline: {unfinished:?}"
    );
    assert!(
        twice.is_empty(),
        "commands carried out more than once: {twice:?}"
    );
    assert!(
        stored >= confirmed.len() as u64,
        "readings lost: {} confirmed, {stored} stored",
        confirmed.len()
    );
    assert!(
        statuses.get("Succeeded").copied().unwrap_or(0) > sent.len() / 2,
        "most commands succeed: {statuses:?}"
    );

    // Clean up: the node back, the test's quorum queues deleted.
    drop(restart);
    for agent in agents {
        agent.signal_stop();
    }
    drop(replicas);
    delete_queues(&urls, &dir, &store_queue).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The nodes' URLs without the servers' credential, comma-separated (as a server gives
/// devices its own).
fn provision_base(urls: &[String]) -> String {
    urls.iter()
        .map(|url| {
            let mut url = url::Url::parse(url).unwrap();
            url.set_username("").unwrap();
            url.set_password(None).unwrap();
            url.to_string()
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Deletes the storage queue and the replicas' reply queues (quorum queues, each a Raft
/// group on every node, kept a day otherwise).
async fn delete_queues(urls: &[String], dir: &Path, store_queue: &str) {
    let mut queues = vec![store_queue.to_owned()];
    for replica in ["replica-a", "replica-b"] {
        if let Ok(id) = std::fs::read_to_string(dir.join(replica).join("replica-id")) {
            queues.push(format!("tether.replies.{}", id.trim()));
        }
    }
    for url in urls {
        let Ok(connection) = Connection::connect(url, ConnectionProperties::default()).await else {
            continue;
        };
        for queue in &queues {
            if let Ok(channel) = connection.create_channel().await {
                let _ = channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
        }
        let _ = connection.close(200, "done".into()).await;
        return;
    }
}

/// Polls `check` every 100 ms until it is true; panics after `within`.
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
