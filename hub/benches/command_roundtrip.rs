//! Command round trip through the hub, beside a bare lapin request/reply baseline
//! through the same broker, in the same run. Not a test: it measures and reports.
//!
//! ```text
//! cargo bench -p hub --bench command_roundtrip -- [devices] [commands] [concurrency]
//! ```
//!
//! Three rounds, each `commands` requests with `concurrency` in flight:
//! 1. baseline: bare lapin RPC to an echo consumer (publish with reply_to and
//!    correlation_id, answer matched back by correlation id);
//! 2. hub: `Hub::send` + `Hub::wait` to `devices` simulated switches (`get_state`),
//!    each an in-process agent with its own connection;
//! 3. hub under load: the same, with 1,000 commands pending on slow gateways.
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
use protocol::{CommandStatus, DeviceId, api::SendCommand};
use tokio::sync::{oneshot, watch};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let devices = args.first().copied().unwrap_or(10);
    let commands = args.get(1).copied().unwrap_or(5_000);
    let concurrency = args.get(2).copied().unwrap_or(32);
    let rabbitmq = testkit::rabbitmq_url();
    let embedded_url = testkit::embedded_broker_url();

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
    for (name, url) in [
        ("RabbitMQ", rabbitmq.as_str()),
        ("embedded", embedded_url.as_str()),
    ] {
        rounds(name, url, devices, commands, concurrency).await?;
    }
    Ok(())
}

/// The three rounds against one broker.
async fn rounds(
    broker: &str,
    url: &str,
    devices: usize,
    commands: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let report = |round: &str, result: &Round| report(&format!("{broker} | {round}"), result);
    let url = url.to_owned();
    let baseline = bare_lapin(&url, commands, concurrency).await?;
    report("bare lapin request/reply (baseline)", &baseline);

    let hub = Hub::start(
        HubConfig {
            default_timeout: Duration::from_secs(30),
            ..HubConfig::new(url.clone())
        },
        &common::Shutdown::new(),
    )
    .await;
    anyhow::ensure!(hub.is_connected(), "cannot reach the broker at {url}");
    let (stop, stopped) = watch::channel(false);
    let mut switches = Vec::new();
    for n in 0..devices {
        switches.push(spawn_agent(&url, &format!("bench-sw{n}"), Kind::Switch, &stopped).await);
    }
    for id in &switches {
        wait_online(&hub, id).await;
    }
    let hub_round = through_hub(&hub, &switches, commands, concurrency).await;
    report(&format!("hub, {devices} switches"), &hub_round);

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
        &format!("hub + command log (SQLite), {devices} switches"),
        &logged_round,
    );
    logged_shutdown.stop_and_wait(Duration::from_secs(3)).await;
    let _ = std::fs::remove_dir_all(&dir);

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
        &format!("hub, {devices} switches, {pending} pending on slow devices"),
        &loaded,
    );

    let _ = stop.send(true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

/// Latencies of one round and how long it took.
struct Round {
    latencies: Vec<Duration>,
    elapsed: Duration,
}

fn report(name: &str, round: &Round) {
    let mut sorted = round.latencies.clone();
    sorted.sort();
    let at =
        |q: f64| sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1];
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    println!(
        "| {name} | {:.0} | {} | {} | {} | {} |",
        sorted.len() as f64 / round.elapsed.as_secs_f64(),
        ms(at(0.50)),
        ms(at(0.99)),
        ms(at(0.999)),
        ms(sorted[sorted.len() - 1]),
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
            async move {
                let t0 = Instant::now();
                let request = SendCommand {
                    name: "get_state".into(),
                    args: Default::default(),
                    timeout_ms: None,
                };
                let sent = hub.send(&device, request).await.expect("accepted");
                let done = hub
                    .wait(&sent.id, Duration::from_secs(30))
                    .await
                    .expect("known");
                assert_eq!(done.status, CommandStatus::Succeeded, "{done:?}");
                t0.elapsed()
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    Round {
        latencies,
        elapsed: started.elapsed(),
    }
}

/// The same exchange of messages with nothing but lapin: an echo consumer that answers
/// to `reply_to` with the `correlation_id`, and a client that matches answers back.
async fn bare_lapin(url: &str, commands: usize, concurrency: usize) -> anyhow::Result<Round> {
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
    let mut requests = server_channel
        .basic_consume(
            inbox.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
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
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
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

    let started = Instant::now();
    let latencies = stream::iter(0..commands)
        .map(|n| {
            let (channel, waiting, inbox, replies) = (channel.clone(), waiting.clone(), inbox.clone(), replies.clone());
            async move {
                let t0 = Instant::now();
                let id = format!("c{n}");
                let (done, answered) = oneshot::channel();
                waiting.lock().expect("no panics under this lock").insert(id.clone(), done);
                let properties = BasicProperties::default().with_reply_to(replies.as_str().into()).with_correlation_id(id.as_str().into());
                let body = br#"{"v":1,"type":"command","command_id":"c","name":"get_state","args":{},"timeout_ms":10000}"#;
                channel.basic_publish("".into(), inbox.as_str().into(), BasicPublishOptions::default(), body, properties).await.expect("publish");
                answered.await.expect("answered");
                t0.elapsed()
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    Ok(Round {
        latencies,
        elapsed: started.elapsed(),
    })
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
