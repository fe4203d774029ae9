//! Command round trip through the hub and through the HTTP API, beside a bare lapin
//! request/reply baseline through the same broker, in the same run. Not a test: it
//! measures and reports.
//!
//! ```text
//! cargo bench -p server --bench command_roundtrip -- [devices] [commands] [concurrency] [rabbitmq|embedded]
//! ```
//!
//! Both brokers unless one is named (to profile one, say).
//!
//! Against each broker, each round `commands` requests (`concurrency` in flight, or one):
//! 1. baseline: bare lapin RPC to an echo consumer (publish with reply_to and
//!    correlation_id, answer matched back by correlation id), one in flight and
//!    `concurrency` in flight;
//! 2. hub: `Hub::send` + `Hub::wait` to `devices` simulated switches (`get_state`),
//!    each an in-process agent with its own connection, one and `concurrency` in flight;
//! 3. hub at a fixed offered rate (1,000 commands/s, open loop): the latency a steady
//!    load sees;
//! 4. hub with the command log (SQLite), as a server with a database runs it;
//! 5. the HTTP API of a whole server (in this process, SQLite): `POST` the command,
//!    then long-poll `GET /api/v1/commands/{id}?wait_ms=`, one and `concurrency` in
//!    flight;
//! 6. hub under load: round 2 with 1,000 commands pending on slow gateways.
//!
//! And, once, the HTTP floor: the same two requests per command (`POST`, then `GET`)
//! from the same client to an axum server in this process whose handlers only decode
//! the body and answer a command (no hub, no broker, no database, no authentication):
//! what HTTP alone costs per command on this machine, which no API can beat.
//!
//! Then the ratios the goals are stated in: hub median over bare median with one in
//! flight, hub and API throughput over bare throughput with `concurrency` in flight,
//! and the HTTP floor's throughput over bare throughput (the most the API could reach).
//!
//! Against both of the tests' brokers, with devices logged in as themselves and every
//! message's identity checked as in production: RabbitMQ admitting devices through
//! Tether's HTTP auth backend (`scripts/identity-broker.sh start` prints its settings),
//! and the embedded broker.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use agent::simulate::{Kind, Simulated};
use futures_util::{StreamExt as _, stream};
use hub::{Hub, HubConfig};
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions},
    types::FieldTable,
};
use protocol::{
    CommandStatus, DeviceId,
    api::{CommandView, SendCommand},
};
use tokio::sync::{oneshot, watch};

/// The allocator `tether-server` runs with (its `main.rs`), so that the hub and the
/// API here cost what they cost there; the baseline shares it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let devices = args.first().copied().unwrap_or(10);
    let commands = args.get(1).copied().unwrap_or(5_000);
    let concurrency = args.get(2).copied().unwrap_or(32);
    let only = std::env::args()
        .skip(1)
        .find(|a| a.parse::<usize>().is_err() && !a.starts_with('-'));

    println!(
        "# command round trip: {devices} devices, {commands} commands, {concurrency} in flight"
    );
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );
    println!();
    println!("| broker | round | commands/s | p50 | p99 | p99.9 | max |");
    println!("|---|---|---|---|---|---|---|");
    let floor = http_floor(commands, concurrency).await?;
    report(
        &format!(
            "(none) | HTTP floor (POST, then GET; no-op axum handlers), {concurrency} in flight"
        ),
        &floor,
    );
    let mut ratios = Vec::new();
    for name in ["RabbitMQ", "embedded"] {
        if only
            .as_ref()
            .is_some_and(|only| !only.eq_ignore_ascii_case(name))
        {
            continue;
        }
        let url = match name {
            "RabbitMQ" => testkit::rabbitmq_url(),
            _ => testkit::embedded_broker_url(),
        };
        ratios.push(rounds(name, &url, devices, commands, concurrency, floor.rate()).await?);
    }
    println!();
    println!(
        "| broker | hub p50 / bare p50, 1 in flight (goal ≤ 1.5×) | hub / bare commands/s, {concurrency} in flight (goal ≥ 0.5×) | API / bare commands/s, {concurrency} in flight (goal ≥ 0.4×) | HTTP floor / bare commands/s, {concurrency} in flight | API p50 / bare p50, 1 in flight | hub p99 at {OFFERED_PER_SECOND}/s offered (goal ≤ 2 ms) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for row in ratios {
        println!("{row}");
    }
    Ok(())
}

/// The rounds against one broker.
async fn rounds(
    broker: &str,
    url: &str,
    devices: usize,
    commands: usize,
    concurrency: usize,
    http_floor: f64,
) -> anyhow::Result<String> {
    let report = |round: &str, result: &Round| report(&format!("{broker} | {round}"), result);
    let url = url.to_owned();
    // One in flight: latency alone. Fewer commands, as each waits for the one before.
    let single = (commands / 5).max(100);
    let bare = BareRpc::start(&url).await?;
    let bare_single = bare.round(single, 1).await;
    report(
        "bare lapin request/reply (baseline), 1 in flight",
        &bare_single,
    );
    let bare_many = bare.round(commands, concurrency).await;
    report(
        &format!("bare lapin request/reply (baseline), {concurrency} in flight"),
        &bare_many,
    );

    // One replica at a time on the broker, as most deployments run: each round's hub
    // stops (and says goodbye) before the next starts, so none shares its commands
    // with another.
    let hub_config = HubConfig {
        default_timeout: Duration::from_secs(30),
        ..HubConfig::new(url.clone())
    };
    let hub_shutdown = common::Shutdown::new();
    let hub = Hub::start(hub_config.clone(), &hub_shutdown).await;
    anyhow::ensure!(hub.is_connected(), "cannot reach the broker at {url}");
    let (stop, stopped) = watch::channel(false);
    let mut switches = Vec::new();
    for n in 0..devices {
        switches.push(spawn_agent(&url, &format!("bench-sw{n}"), Kind::Switch, &stopped).await);
    }
    for id in &switches {
        wait_online(&hub, id).await;
    }
    let hub_single = through_hub(&hub, &switches, single, 1).await;
    report(
        &format!("hub, {devices} switches, 1 in flight"),
        &hub_single,
    );
    let hub_many = through_hub(&hub, &switches, commands, concurrency).await;
    report(
        &format!("hub, {devices} switches, {concurrency} in flight"),
        &hub_many,
    );
    let paced = hub_paced(&hub, &switches, commands, OFFERED_PER_SECOND).await;
    report(
        &format!("hub, {devices} switches, {OFFERED_PER_SECOND}/s offered"),
        &paced,
    );
    hub_shutdown.stop_and_wait(Duration::from_secs(3)).await;

    // The same, with every command and status change written to the command log
    // (SQLite, the default), as a server with a database runs.
    let dir = std::env::temp_dir().join(format!("tether-bench-{:08x}", fastrand::u32(..)));
    let store = store::Store::open(&format!("sqlite://{}", dir.join("log.db").display())).await?;
    let logged_shutdown = common::Shutdown::new();
    let logged = Hub::start(
        HubConfig {
            default_timeout: Duration::from_secs(30),
            command_log: Some(hub::CommandLog {
                store: store.clone(),
                replica: format!("bench-{:08x}", fastrand::u32(..)),
                resumable: false,
            }),
            ..HubConfig::new(url.clone())
        },
        &logged_shutdown,
    )
    .await;
    for id in &switches {
        wait_online(&logged, id).await;
    }
    let logged_round = through_hub(&logged, &switches, commands, concurrency).await;
    report(
        &format!("hub + command log (SQLite), {devices} switches, {concurrency} in flight"),
        &logged_round,
    );
    logged_shutdown.stop_and_wait(Duration::from_secs(3)).await;

    // A whole server: the HTTP API in front of a hub with its command log.
    let api = Api::start(&url, &dir).await?;
    for id in &switches {
        wait_online(&api.hub, id).await;
    }
    let api_single = api.round(&switches, single, 1).await;
    report(
        &format!("HTTP API (POST, then long-poll), {devices} switches, 1 in flight"),
        &api_single,
    );
    let api_many = api.round(&switches, commands, concurrency).await;
    report(
        &format!("HTTP API (POST, then long-poll), {devices} switches, {concurrency} in flight"),
        &api_many,
    );
    api.stop().await;

    let hub_shutdown = common::Shutdown::new();
    let hub = Hub::start(hub_config, &hub_shutdown).await;
    for id in &switches {
        wait_online(&hub, id).await;
    }
    let mut gateways = Vec::new();
    for n in 0..4 {
        gateways.push(spawn_agent(&url, &format!("bench-gw{n}"), Kind::Gateway, &stopped).await);
    }
    for id in &gateways {
        wait_online(&hub, id).await;
    }
    let slow = SendCommand {
        name: "echo".into(),
        args: [("delay_ms".to_owned(), serde_json::json!(120_000))].into(),
        timeout_ms: Some(150_000),
    };
    for n in 0..1_000 {
        hub.send(&gateways[n % gateways.len()], slow.clone())
            .await?;
    }
    let pending = hub.stats().pending_commands;
    let loaded = through_hub(&hub, &switches, commands, concurrency).await;
    report(
        &format!(
            "hub, {devices} switches, {pending} pending on slow devices, {concurrency} in flight"
        ),
        &loaded,
    );

    let median = |round: &Round| round.quantile(0.5).as_secs_f64();
    let ratios = format!(
        "| {broker} | {:.2}× | {:.2}× | {:.2}× | {:.2}× | {:.2}× | {:.2} ms |",
        median(&hub_single) / median(&bare_single),
        hub_many.rate() / bare_many.rate(),
        api_many.rate() / bare_many.rate(),
        http_floor / bare_many.rate(),
        median(&api_single) / median(&bare_single),
        paced.quantile(0.99).as_secs_f64() * 1000.0,
    );

    hub_shutdown.stop_and_wait(Duration::from_secs(3)).await;
    let _ = stop.send(true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ratios)
}

/// The offered rate of the paced round.
const OFFERED_PER_SECOND: u32 = 1_000;

/// Latencies of one round and how long it took.
struct Round {
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Round {
    fn new(mut latencies: Vec<Duration>, elapsed: Duration) -> Self {
        latencies.sort();
        Self { latencies, elapsed }
    }

    /// The latency at quantile `q` (0.5: the median).
    fn quantile(&self, q: f64) -> Duration {
        let n = self.latencies.len();
        self.latencies[((n as f64 * q).ceil() as usize).clamp(1, n) - 1]
    }

    /// Commands a second over the round.
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

fn report(name: &str, round: &Round) {
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    println!(
        "| {name} | {:.0} | {} | {} | {} | {} |",
        round.rate(),
        ms(round.quantile(0.50)),
        ms(round.quantile(0.99)),
        ms(round.quantile(0.999)),
        ms(round.quantile(1.0)),
    );
}

async fn through_hub(
    hub: &Hub,
    devices: &[DeviceId],
    commands: usize,
    concurrency: usize,
) -> Round {
    let started = Instant::now();
    let latencies = stream::iter(0..commands)
        .map(|n| {
            let (hub, device) = (hub.clone(), devices[n % devices.len()].clone());
            async move { one_command(&hub, &device).await }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    Round::new(latencies, started.elapsed())
}

/// `commands` sent at `per_second`, each on its own task whatever the ones before are
/// doing (an open loop, as independent users are): the latency a steady load sees.
async fn hub_paced(hub: &Hub, devices: &[DeviceId], commands: usize, per_second: u32) -> Round {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(commands);
    for n in 0..commands {
        tick.tick().await;
        let (hub, device) = (hub.clone(), devices[n % devices.len()].clone());
        tasks.push(tokio::spawn(
            async move { one_command(&hub, &device).await },
        ));
    }
    let mut latencies = Vec::with_capacity(commands);
    for task in tasks {
        latencies.push(task.await.expect("no panic"));
    }
    Round::new(latencies, started.elapsed())
}

/// One `get_state` through the hub, sent and waited for: how long it took.
async fn one_command(hub: &Hub, device: &DeviceId) -> Duration {
    let t0 = Instant::now();
    let sent = hub.send(device, get_state()).await.expect("accepted");
    let done = hub
        .wait(&sent.id, Duration::from_secs(30))
        .await
        .expect("known");
    assert_eq!(done.status, CommandStatus::Succeeded, "{done:?}");
    t0.elapsed()
}

fn get_state() -> SendCommand {
    SendCommand {
        name: "get_state".into(),
        args: Default::default(),
        timeout_ms: None,
    }
}

/// A whole server in this process (HTTP API, hub, SQLite command log) on the broker
/// at `url`, and an admin's API client.
struct Api {
    base: String,
    client: reqwest::Client,
    hub: Hub,
    stop: oneshot::Sender<()>,
    served: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Api {
    async fn start(url: &str, dir: &std::path::Path) -> anyhow::Result<Self> {
        let tag = format!("{:08x}", fastrand::u32(..));
        let mut config = server::Config::new(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), url);
        config.database_url = format!("sqlite://{}", dir.join("server.db").display());
        config.store_queue = format!("tether.telemetry.store.bench-{tag}");
        config.store_queue_expires_ms = Some(60_000);
        let server = server::Server::bind(config).await?;
        let base = format!("http://{}", server.local_addr()?);
        let (token, _) =
            testkit::user_token(server.accounts(), protocol::auth::Role::Admin, &[]).await;
        let hub = server.hub().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));
        Ok(Self {
            base,
            client: testkit::api_client(&token),
            hub,
            stop,
            served,
        })
    }

    /// Stops the server and waits (a while) until it has.
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.served).await;
    }

    async fn round(&self, devices: &[DeviceId], commands: usize, concurrency: usize) -> Round {
        http_round(&self.client, &self.base, devices, commands, concurrency).await
    }
}

/// `POST /api/v1/devices/{id}/commands`, then `GET /api/v1/commands/{id}?wait_ms=`
/// until it ended, to the server at `base`: what a script does.
async fn http_round(
    client: &reqwest::Client,
    base: &str,
    devices: &[DeviceId],
    commands: usize,
    concurrency: usize,
) -> Round {
    {
        let started = Instant::now();
        let latencies = stream::iter(0..commands)
            .map(|n| {
                let device = &devices[n % devices.len()];
                async move {
                    let t0 = Instant::now();
                    let mut command: CommandView = client
                        .post(format!("{base}/api/v1/devices/{device}/commands"))
                        .json(&get_state())
                        .send()
                        .await
                        .expect("POST")
                        .error_for_status()
                        .expect("202")
                        .json()
                        .await
                        .expect("a command");
                    while !command.status.is_terminal() {
                        command = client
                            .get(format!(
                                "{base}/api/v1/commands/{}?wait_ms=30000",
                                command.id
                            ))
                            .send()
                            .await
                            .expect("GET")
                            .error_for_status()
                            .expect("200")
                            .json()
                            .await
                            .expect("a command");
                    }
                    assert_eq!(command.status, CommandStatus::Succeeded, "{command:?}");
                    t0.elapsed()
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        Round::new(latencies, started.elapsed())
    }
}

/// The HTTP floor: [`http_round`] against an axum server in this process whose
/// `POST` decodes the command and answers it accepted, and whose `GET` answers it
/// succeeded. Only HTTP and JSON, both ways, as the API round does them.
async fn http_floor(commands: usize, concurrency: usize) -> anyhow::Result<Round> {
    use axum::{
        Json, Router,
        extract::Path,
        http::StatusCode,
        routing::{get, post},
    };
    fn command(id: String, device: String, status: CommandStatus) -> CommandView {
        CommandView {
            id: protocol::CommandId(id),
            device_id: DeviceId::new(device).expect("the bench's device ids are valid"),
            name: "get_state".into(),
            args: Default::default(),
            status,
            created_ms: 1,
            updated_ms: 1,
            deadline_ms: 30_001,
            percent: None,
            message: None,
            result: None,
            error: None,
            issued_by: Some("bench".into()),
            job_id: None,
        }
    }
    let app = Router::new()
        .route(
            "/api/v1/devices/{device}/commands",
            post(
                |Path(device): Path<String>, Json(request): Json<SendCommand>| async move {
                    let mut view = command(
                        format!("{:032x}", fastrand::u128(..)),
                        device,
                        CommandStatus::Accepted,
                    );
                    view.name = request.name;
                    (StatusCode::ACCEPTED, Json(view))
                },
            ),
        )
        .route(
            "/api/v1/commands/{id}",
            get(|Path(id): Path<String>| async move {
                Json(command(id, "bench-sw0".into(), CommandStatus::Succeeded))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let served = tokio::spawn(async move { axum::serve(listener, app).await });
    let devices: Vec<DeviceId> = (0..10)
        .map(|n| DeviceId::new(format!("bench-sw{n}")).expect("a valid id"))
        .collect();
    let client = testkit::api_client("not checked");
    let round = http_round(&client, &base, &devices, commands, concurrency).await;
    served.abort();
    Ok(round)
}

/// The same exchange of messages with nothing but lapin: an echo consumer that answers
/// to `reply_to` with the `correlation_id`, and a client that matches answers back.
struct BareRpc {
    channel: lapin::Channel,
    inbox: String,
    replies: String,
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>,
    _connections: [Connection; 2],
}

impl BareRpc {
    async fn start(url: &str) -> anyhow::Result<Self> {
        let server = Connection::connect(url, ConnectionProperties::default()).await?;
        let server_channel = server.create_channel().await?;
        let private = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        let inbox = server_channel
            .queue_declare("".into(), private, FieldTable::default())
            .await?
            .name()
            .to_string();
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let mut requests = server_channel
            .basic_consume(
                inbox.as_str().into(),
                "".into(),
                no_ack,
                FieldTable::default(),
            )
            .await?;
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = requests.next().await {
                let (Some(reply_to), Some(id)) = (
                    delivery.properties.reply_to().clone(),
                    delivery.properties.correlation_id().clone(),
                ) else {
                    continue;
                };
                let properties = BasicProperties::default().with_correlation_id(id);
                let _ = server_channel
                    .basic_publish(
                        "".into(),
                        reply_to,
                        BasicPublishOptions::default(),
                        &delivery.data,
                        properties,
                    )
                    .await;
            }
        });

        let client = Connection::connect(url, ConnectionProperties::default()).await?;
        let channel = client.create_channel().await?;
        let replies = channel
            .queue_declare("".into(), private, FieldTable::default())
            .await?
            .name()
            .to_string();
        let waiting: Arc<Mutex<HashMap<String, oneshot::Sender<()>>>> = Arc::default();
        let mut answers = channel
            .basic_consume(
                replies.as_str().into(),
                "".into(),
                no_ack,
                FieldTable::default(),
            )
            .await?;
        let matcher = waiting.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = answers.next().await {
                let id = delivery
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|id| id.to_string())
                    .unwrap_or_default();
                if let Some(done) = matcher
                    .lock()
                    .expect("no panics under this lock")
                    .remove(&id)
                {
                    let _ = done.send(());
                }
            }
        });
        Ok(Self {
            channel,
            inbox,
            replies,
            waiting,
            _connections: [server, client],
        })
    }

    async fn round(&self, commands: usize, concurrency: usize) -> Round {
        let started = Instant::now();
        let latencies = stream::iter(0..commands)
            .map(|n| async move {
                let t0 = Instant::now();
                let id = format!("c{n}-{}", fastrand::u32(..));
                let (done, answered) = oneshot::channel();
                self.waiting
                    .lock()
                    .expect("no panics under this lock")
                    .insert(id.clone(), done);
                let properties = BasicProperties::default()
                    .with_reply_to(self.replies.as_str().into())
                    .with_correlation_id(id.as_str().into());
                let body = br#"{"v":1,"type":"command","command_id":"c","name":"get_state","args":{},"timeout_ms":10000}"#;
                self.channel
                    .basic_publish(
                        "".into(),
                        self.inbox.as_str().into(),
                        BasicPublishOptions::default(),
                        body,
                        properties,
                    )
                    .await
                    .expect("publish");
                answered.await.expect("answered");
                t0.elapsed()
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        Round::new(latencies, started.elapsed())
    }
}

/// An in-process agent with an account of its own on the broker at `url`.
async fn spawn_agent(
    url: &str,
    name: &str,
    kind: Kind,
    stopped: &watch::Receiver<bool>,
) -> DeviceId {
    let (id, device_url) = testkit::provision(url, name).await;
    let mut config = agent::Config::new(device_url, id.clone(), kind.name());
    config.server_accounts = vec![common::amqp_user(url)];
    let mut stopped = stopped.clone();
    tokio::spawn(agent::run(
        config,
        Arc::new(Simulated::new(kind)),
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
    ));
    id
}

async fn wait_online(hub: &Hub, id: &DeviceId) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !hub.device(id).is_some_and(|d| d.online) {
        assert!(Instant::now() < deadline, "{id} did not come online");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
