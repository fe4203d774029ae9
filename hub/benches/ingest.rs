//! Telemetry ingest: how many readings a second get from devices through the broker's
//! durable storage queue into the store, by number of devices, store and recorders.
//!
//! `cargo bench -p hub --bench ingest` against the RabbitMQ node that admits devices
//! through Tether's HTTP auth backend (`eval "$(scripts/identity-broker.sh env)"`, or
//! `start`; [`testkit::rabbitmq_url`]), PostgreSQL at `TETHER_TEST_DATABASE_URL`
//! (default the local `test` database, in a scratch database dropped afterwards).
//! Environment: `INGEST_SAMPLES` (default 60,000 per round), `INGEST_DEVICES` (default
//! `10,100,1000`), `INGEST_AGENTS` (default `10,100,500`).
//!
//! Every reading is published by the device it speaks for, logged in as itself, with
//! `user_id` = its id, as the recorders require (anything else is an impostor). The
//! devices are provisioned once in the identity broker's database (an argon2 hash each)
//! and their accounts reused by every round; they are revoked at the end.
//!
//! Each round: the devices log in (each its own connection, a few logins at a time,
//! at most [`MAX_OPEN`] connections open at once), then publish their readings into the
//! storage queue as fast as the broker confirms them (each device's readings 100 ms
//! apart, so none is a flood); the publish rate counts that part only, not the logins.
//! Then the recorders start, and the round times how fast they drain that backlog into
//! the store (check, batch, commit, ack): what storage alone sustains, apart from the
//! broker's own publish rate. Then a live round: N real simulated agents (one
//! connection each, logged in as themselves) reporting every second, and whether
//! storage keeps up with them.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use agent::simulate::{Kind, Simulated};
use futures_util::{StreamExt as _, TryStreamExt as _, stream};
use hub::{Hub, HubConfig, Recorder, RecorderConfig, RecorderStats, Stop, StoreQueue};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions},
};
use protocol::{DeviceId, DeviceMessage, TelemetrySample, names};
use store::Store;
use tokio::sync::{oneshot, watch};

/// Device connections open at once while publishing a backlog: the identity node runs
/// with 1,024 file descriptors, fewer sockets than 1,000 devices need.
const MAX_OPEN: usize = 400;
/// Device logins in flight at once: each costs the auth server an argon2 check (about
/// 20 ms of CPU), so more at once only queues them (and RabbitMQ closes a handshake not
/// done within 10 s).
const LOGINS_AT_ONCE: usize = 4;
/// Agents started together in the live round, each wave online before the next.
const AGENT_WAVE: usize = 25;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let amqp = testkit::rabbitmq_url();
    let admin = std::env::var("TETHER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let samples: u64 = std::env::var("INGEST_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60_000);
    let device_counts: Vec<usize> = std::env::var("INGEST_DEVICES")
        .unwrap_or_else(|_| "10,100,1000".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    // Each agent is a connection, held for the whole live round: the identity node's
    // 1,024 file descriptors do not take 1,000 of them, hence a smaller default.
    let agent_counts: Vec<usize> = std::env::var("INGEST_AGENTS")
        .unwrap_or_else(|_| "10,100,500".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let needed = device_counts
        .iter()
        .chain(&agent_counts)
        .copied()
        .max()
        .unwrap_or(0);
    let fleet = Fleet::provision(&amqp, needed).await?;
    println!(
        "ingest benchmark: {samples} readings a round, published by the devices themselves (one connection each), RabbitMQ at {}",
        redact(&amqp)
    );
    println!(
        "| store | recorders | devices | stored/s (drain) | published/s | batches | drain time |"
    );
    println!("|---|---|---|---|---|---|---|");
    let scratch = Scratch::create(&admin).await?;
    for store_kind in ["sqlite", "postgres"] {
        for recorders in [1usize, 2] {
            for &devices in &device_counts {
                let store = match store_kind {
                    "sqlite" => {
                        let dir = std::env::temp_dir()
                            .join(format!("tether-ingest-{:016x}", fastrand::u64(..)));
                        Store::open(dir.join("telemetry.db").to_str().unwrap()).await?
                    }
                    _ => Store::open(&scratch.url).await?,
                };
                let round =
                    round(&amqp, &fleet.devices[..devices], store, recorders, samples).await?;
                println!(
                    "| {store_kind} | {recorders} | {devices} | {:.0} | {:.0} | {} | {:.2} s |",
                    round.stored_per_s, round.publish_per_s, round.batches, round.elapsed_s
                );
            }
        }
    }
    println!();
    println!("live agents reporting 3 metrics every second, SQLite, 1 recorder:");
    println!("| agents | offered/s | stored/s | backlog after |");
    println!("|---|---|---|---|");
    for &agents in &agent_counts {
        let dir = std::env::temp_dir().join(format!("tether-ingest-{:016x}", fastrand::u64(..)));
        let store = Store::open(dir.join("telemetry.db").to_str().unwrap()).await?;
        let (offered, stored, backlog) = live_round(&amqp, &fleet.devices[..agents], store).await?;
        println!("| {agents} | {offered:.0} | {stored:.0} | {backlog} |");
    }
    scratch.drop_it().await;
    fleet.revoke().await;
    Ok(())
}

/// A provisioned device: its id and the URL it logs in with (its own credential).
#[derive(Clone)]
struct Device {
    id: DeviceId,
    url: String,
}

/// The benchmark's device accounts in the identity broker's database.
struct Fleet {
    database: Store,
    devices: Vec<Device>,
}

impl Fleet {
    /// `count` device accounts, two provisioned at a time (an argon2 hash each).
    async fn provision(amqp: &str, count: usize) -> anyhow::Result<Self> {
        let database = std::env::var("TETHER_TEST_IDENTITY_DATABASE").map_err(|_| {
            anyhow::anyhow!(
                "TETHER_TEST_IDENTITY_DATABASE is not set: eval \"$(scripts/identity-broker.sh env)\" first"
            )
        })?;
        let database = Store::open(&database).await?;
        let tag = format!("{:08x}", fastrand::u32(..));
        let started = Instant::now();
        let devices = stream::iter(0..count)
            .map(|n| {
                let database = &database;
                let tag = &tag;
                async move {
                    let id = DeviceId::new(format!("ingest-{tag}-{n}"))?;
                    let url = testkit::provision_in(database, amqp, &id).await;
                    anyhow::Ok(Device { id, url })
                }
            })
            .buffered(2)
            .try_collect::<Vec<_>>()
            .await?;
        eprintln!(
            "provisioned {count} devices in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(Self { database, devices })
    }

    async fn revoke(self) {
        for device in &self.devices {
            let _ = self.database.revoke_device(device.id.as_str()).await;
        }
    }
}

/// Logs `device` in; a channel with publisher confirms.
async fn login(device: &Device) -> anyhow::Result<(Connection, Channel)> {
    let connection = Connection::connect(&device.url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((connection, channel))
}

/// `amqp` without its password, for printing.
fn redact(amqp: &str) -> String {
    match amqp.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}://{host}")
        }
        None => amqp.to_owned(),
    }
}

struct Round {
    stored_per_s: f64,
    publish_per_s: f64,
    batches: u64,
    elapsed_s: f64,
}

async fn round(
    amqp: &str,
    devices: &[Device],
    store: Store,
    recorders: usize,
    samples: u64,
) -> anyhow::Result<Round> {
    let tag = format!("{:08x}", fastrand::u32(..));
    let queue = format!("tether.telemetry.store.bench-{tag}");
    let config = RecorderConfig {
        queue: StoreQueue {
            expires: Some(Duration::from_secs(60)),
            ..StoreQueue::named(queue.clone())
        },
        ..RecorderConfig::new(amqp)
    };
    // The queue first, as the recorders declare it, so the readings wait in it.
    {
        let connection = Connection::connect(amqp, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        config.queue.declare(&channel).await?;
        let _ = connection.close(200, "declared".into()).await;
    }
    let count = devices.len() as u64;
    let start_ms = now_ms() - samples / count * 100 - 60_000;
    // Device d publishes readings d, d + N, d + 2N, …: its own, 100 ms apart.
    let (mut logging_in, mut publishing) = (Duration::ZERO, Duration::ZERO);
    for (group, chunk) in devices.chunks(MAX_OPEN).enumerate() {
        let first = (group * MAX_OPEN) as u64;
        let started = Instant::now();
        let logged_in: Vec<(Connection, Channel)> = stream::iter(chunk)
            .map(login)
            .buffered(LOGINS_AT_ONCE)
            .try_collect()
            .await?;
        logging_in += started.elapsed();
        let started = Instant::now();
        let mut publishers = Vec::new();
        for (k, ((_, channel), device)) in logged_in.iter().zip(chunk).enumerate() {
            let (channel, id) = (channel.clone(), device.id.clone());
            let d = first + k as u64;
            publishers.push(tokio::spawn(async move {
                let properties = BasicProperties::default()
                    .with_content_type(names::CONTENT_TYPE.into())
                    .with_user_id(id.as_str().into());
                let key = names::telemetry_key(&id, "cpu");
                let mut pending = Vec::with_capacity(256);
                for i in (d..samples).step_by(count as usize) {
                    let body = protocol::encode(&DeviceMessage::Telemetry(TelemetrySample {
                        device_id: id.clone(),
                        session_id: "bench".into(),
                        metric: "cpu".into(),
                        value: (i % 100) as f64,
                        ts_ms: start_ms + i / count * 100,
                    }));
                    let confirm = channel
                        .basic_publish(
                            names::TELEMETRY_EXCHANGE.into(),
                            key.as_str().into(),
                            BasicPublishOptions::default(),
                            &body,
                            properties.clone(),
                        )
                        .await?;
                    pending.push(confirm);
                    if pending.len() == 256 {
                        for confirm in pending.drain(..) {
                            anyhow::ensure!(confirm.await?.is_ack(), "a reading was refused");
                        }
                    }
                }
                for confirm in pending {
                    anyhow::ensure!(confirm.await?.is_ack(), "a reading was refused");
                }
                anyhow::Ok(())
            }));
        }
        for publisher in publishers {
            publisher.await??;
        }
        publishing += started.elapsed();
        for (connection, _) in logged_in {
            let _ = connection.close(200, "done".into()).await;
        }
    }
    eprintln!(
        "{} device logins in {:.1} s, {samples} readings published in {:.2} s",
        devices.len(),
        logging_in.as_secs_f64(),
        publishing.as_secs_f64()
    );
    // Then the recorders drain the backlog: what storage alone sustains.
    let stats = Arc::new(RecorderStats::default());
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    let draining = Instant::now();
    for _ in 0..recorders {
        let recorder = Recorder::new(config.clone(), store.clone(), None, stats.clone());
        let (stop, stopped) = oneshot::channel();
        tasks.push(tokio::spawn(
            recorder.run(async move { stopped.await.unwrap_or(Stop::Drain) }),
        ));
        stops.push(stop);
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while stats.snapshot().stored + stats.snapshot().duplicates < samples {
        anyhow::ensure!(
            Instant::now() < deadline,
            "stored only {:?} of {samples}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = draining.elapsed();
    for stop in stops {
        let _ = stop.send(Stop::Drain);
    }
    for task in tasks {
        task.await?;
    }
    let seen = stats.snapshot();
    anyhow::ensure!(seen.stored >= samples, "stored {seen:?} of {samples}");
    if seen.stored > samples {
        // The queue takes every reading on the broker: others' tests may share it.
        eprintln!(
            "{} readings more than published: other devices on this broker were reporting",
            seen.stored - samples
        );
    }
    // Leave the store empty for the next round.
    store.prune(i64::MAX).await?;
    delete_queue(amqp, &queue).await;
    Ok(Round {
        stored_per_s: samples as f64 / elapsed.as_secs_f64(),
        publish_per_s: samples as f64 / publishing.as_secs_f64(),
        batches: seen.batches,
        elapsed_s: elapsed.as_secs_f64(),
    })
}

/// `devices` as simulated gateways reporting every second for 10 s: readings offered
/// and stored per second, and what was still queued at the end.
async fn live_round(
    amqp: &str,
    devices: &[Device],
    store: Store,
) -> anyhow::Result<(f64, f64, u64)> {
    let tag = format!("{:08x}", fastrand::u32(..));
    let queue = format!("tether.telemetry.store.bench-{tag}");
    let config = RecorderConfig {
        queue: StoreQueue {
            expires: Some(Duration::from_secs(60)),
            ..StoreQueue::named(queue.clone())
        },
        ..RecorderConfig::new(amqp)
    };
    let stats = Arc::new(RecorderStats::default());
    let recorder = Recorder::new(config, store.clone(), None, stats.clone());
    let (stop_recorder, stopped) = oneshot::channel();
    let recorder = tokio::spawn(recorder.run(async move { stopped.await.unwrap_or(Stop::Drain) }));
    // A hub only to see every agent online (each login an argon2 check on the auth
    // server: all at once would outlast RabbitMQ's handshake timeout), stopped before
    // the measurement.
    let hub_shutdown = common::Shutdown::new();
    let hub = Hub::start(HubConfig::new(amqp), &hub_shutdown).await;
    anyhow::ensure!(
        hub.is_connected(),
        "cannot reach the broker at {}",
        redact(amqp)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (stop, stopped) = watch::channel(false);
    let mut running = Vec::new();
    let connecting = Instant::now();
    for wave in devices.chunks(AGENT_WAVE) {
        for device in wave {
            let mut config = agent::Config::new(device.url.clone(), device.id.clone(), "gateway");
            config.server_accounts = vec![common::amqp_user(amqp)];
            config.heartbeat = Duration::from_secs(30);
            config.telemetry = Some(Duration::from_secs(1));
            let mut stopped = stopped.clone();
            running.push(tokio::spawn(agent::run(
                config,
                Arc::new(Simulated::new(Kind::Gateway)),
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
            )));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for device in wave {
            while !hub.device(&device.id).is_some_and(|d| d.online) {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{} did not come online",
                    device.id
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    eprintln!(
        "{} agents online in {:.1} s",
        devices.len(),
        connecting.elapsed().as_secs_f64()
    );
    hub_shutdown.stop_and_wait(Duration::from_secs(3)).await;
    // Let every agent settle into its reporting, then measure 10 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = stats.snapshot().stored;
    let window = Duration::from_secs(10);
    tokio::time::sleep(window).await;
    let stored = (stats.snapshot().stored - before) as f64 / window.as_secs_f64();
    let _ = stop.send(true);
    for agent in running {
        let _ = agent.await;
    }
    let backlog = count_ready(amqp, &queue).await;
    let _ = stop_recorder.send(Stop::Drain);
    recorder.await?;
    delete_queue(amqp, &queue).await;
    Ok((devices.len() as f64 * 3.0, stored, backlog))
}

async fn count_ready(amqp: &str, queue: &str) -> u64 {
    let Ok(connection) = Connection::connect(amqp, ConnectionProperties::default()).await else {
        return 0;
    };
    let Ok(channel) = connection.create_channel().await else {
        return 0;
    };
    let count = channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .map_or(0, |q| u64::from(q.message_count()));
    let _ = connection.close(200, "done".into()).await;
    count
}

async fn delete_queue(amqp: &str, queue: &str) {
    if let Ok(connection) = Connection::connect(amqp, ConnectionProperties::default()).await {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = connection.close(200, "done".into()).await;
    }
}

use common::now_ms;

/// A PostgreSQL database of the benchmark's own.
struct Scratch {
    admin: String,
    name: String,
    url: String,
}

impl Scratch {
    async fn create(admin: &str) -> anyhow::Result<Self> {
        let (client, connection) = tokio_postgres::connect(admin, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        let name = format!("tether_bench_{:08x}", fastrand::u32(..));
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let base = admin.rsplit_once('/').map_or(admin, |(base, _)| base);
        Ok(Self {
            admin: admin.to_owned(),
            url: format!("{base}/{name}"),
            name,
        })
    }

    async fn drop_it(self) {
        if let Ok((client, connection)) =
            tokio_postgres::connect(&self.admin, tokio_postgres::NoTls).await
        {
            tokio::spawn(connection);
            let _ = client
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .await;
        }
    }
}
