//! Telemetry ingest: how many readings a second get from devices through the broker's
//! durable storage queue into the store, by number of devices, store and recorders.
//!
//! `cargo bench -p server --bench ingest` (RabbitMQ at `TETHER_TEST_AMQP_URL`, default
//! 127.0.0.1:5672; PostgreSQL at `TETHER_TEST_DATABASE_URL`, default the local `test`
//! database, in a scratch database dropped afterwards). Environment: `INGEST_SAMPLES`
//! (default 60,000 per round), `INGEST_DEVICES` (default `10,100,1000`), `INGEST_AGENTS`
//! (default `10,100,500`).
//!
//! Each round publishes its readings into the storage queue as fast as the broker
//! confirms them, spread evenly over N device ids (each device's readings 100 ms apart,
//! so none is a flood), from 4 publishing connections; then starts the recorders and
//! times how fast they drain that backlog into the store (check, batch, commit, ack):
//! what storage alone sustains, apart from the broker's own publish rate. Then a live round: N real simulated agents (one connection each)
//! reporting every second, and whether storage keeps up with them.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use agent::simulate::{Kind, Simulated};
use hub::{Recorder, RecorderConfig, RecorderStats, Stop, StoreQueue};
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions},
};
use protocol::{DeviceId, DeviceMessage, TelemetrySample, names};
use store::Store;
use tokio::sync::{oneshot, watch};

const PUBLISHERS: usize = 4;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let amqp = std::env::var("TETHER_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
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
    println!(
        "ingest benchmark: {samples} readings a round, {PUBLISHERS} publishing connections, RabbitMQ at {amqp}"
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
                let round = round(&amqp, store, recorders, devices, samples).await?;
                println!(
                    "| {store_kind} | {recorders} | {devices} | {:.0} | {:.0} | {} | {:.2} s |",
                    round.stored_per_s, round.publish_per_s, round.batches, round.elapsed_s
                );
            }
        }
    }
    // Each agent is a connection: a RabbitMQ with the usual 1,024 file descriptors
    // cannot take 1,000 of them (it runs out and fails), hence a smaller default.
    let agent_counts: Vec<usize> = std::env::var("INGEST_AGENTS")
        .unwrap_or_else(|_| "10,100,500".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    println!();
    println!("live agents reporting 3 metrics every second, SQLite, 1 recorder:");
    println!("| agents | offered/s | stored/s | backlog after |");
    println!("|---|---|---|---|");
    for &agents in &agent_counts {
        let dir = std::env::temp_dir().join(format!("tether-ingest-{:016x}", fastrand::u64(..)));
        let store = Store::open(dir.join("telemetry.db").to_str().unwrap()).await?;
        let (offered, stored, backlog) = live_round(&amqp, store, agents).await?;
        println!("| {agents} | {offered:.0} | {stored:.0} | {backlog} |");
    }
    scratch.drop_it().await;
    Ok(())
}

struct Round {
    stored_per_s: f64,
    publish_per_s: f64,
    batches: u64,
    elapsed_s: f64,
}

async fn round(
    amqp: &str,
    store: Store,
    recorders: usize,
    devices: usize,
    samples: u64,
) -> anyhow::Result<Round> {
    let tag = format!("{:08x}", fastrand::u32(..));
    let queue = format!("tether.telemetry.store.bench-{tag}");
    let prefix = format!("ingest-{tag}");
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
    let ids: Vec<DeviceId> = (0..devices)
        .map(|n| DeviceId::new(format!("{prefix}-{n}")).unwrap())
        .collect();
    let start_ms = now_ms() - samples / devices as u64 * 100 - 60_000;
    let started = Instant::now();
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let (amqp, ids) = (amqp.to_owned(), ids.clone());
        publishers.push(tokio::spawn(async move {
            let connection = Connection::connect(&amqp, ConnectionProperties::default()).await?;
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            let mut pending = Vec::with_capacity(256);
            for i in (p as u64..samples).step_by(PUBLISHERS) {
                let device = &ids[(i % ids.len() as u64) as usize];
                let nth = i / ids.len() as u64;
                let body = protocol::encode(&DeviceMessage::Telemetry(TelemetrySample {
                    device_id: device.clone(),
                    session_id: "bench".into(),
                    metric: "cpu".into(),
                    value: (i % 100) as f64,
                    ts_ms: start_ms + nth * 100,
                }));
                let confirm = channel
                    .basic_publish(
                        names::TELEMETRY_EXCHANGE.into(),
                        names::telemetry_key(device, "cpu").as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default(),
                    )
                    .await?;
                pending.push(confirm);
                if pending.len() == 256 {
                    for confirm in pending.drain(..) {
                        confirm.await?;
                    }
                }
            }
            for confirm in pending {
                confirm.await?;
            }
            let _ = connection.close(200, "done".into()).await;
            anyhow::Ok(())
        }));
    }
    for publisher in publishers {
        publisher.await??;
    }
    let published = started.elapsed();
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
    anyhow::ensure!(seen.stored == samples, "stored {seen:?} of {samples}");
    // Leave the store empty for the next round.
    store.prune(i64::MAX).await?;
    delete_queue(amqp, &queue).await;
    Ok(Round {
        stored_per_s: samples as f64 / elapsed.as_secs_f64(),
        publish_per_s: samples as f64 / published.as_secs_f64(),
        batches: seen.batches,
        elapsed_s: elapsed.as_secs_f64(),
    })
}

/// `agents` simulated gateways reporting every second for 10 s: readings offered and
/// stored per second, and what was still queued at the end.
async fn live_round(amqp: &str, store: Store, agents: usize) -> anyhow::Result<(f64, f64, u64)> {
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
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (stop, stopped) = watch::channel(false);
    let mut running = Vec::new();
    for n in 0..agents {
        let id = DeviceId::new(format!("live-{tag}-{n}")).unwrap();
        let mut config = agent::Config::new(amqp, id, "gateway");
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
    // Let every agent connect (a connection takes some milliseconds of the broker's
    // time), then measure 10 s.
    tokio::time::sleep(Duration::from_secs(3) + Duration::from_millis(25) * agents as u32).await;
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
    Ok((agents as f64 * 3.0, stored, backlog))
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
