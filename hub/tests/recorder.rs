//! Storing readings through the shared durable queue, against RabbitMQ
//! (`TETHER_TEST_AMQP_URL`) and the embedded broker: competing recorders split the work
//! with nothing stored twice or lost, a recorder that dies mid-batch loses nothing, and
//! bad readings (readings sent by another account than their device's included) are
//! counted and dropped. Each test uses its own queue and device ids; readings are
//! published by the device, logged in as itself.

use std::{sync::Arc, time::Duration};

use hub::{Recorder, RecorderConfig, RecorderStats, Rejected, Stop, StoreQueue};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::FieldTable,
};
use protocol::{DeviceId, DeviceMessage, TelemetrySample, names};
use store::Store;
use tokio::sync::oneshot;

async fn publish(channel: &Channel, key: &str, body: &[u8], properties: BasicProperties) {
    channel
        .basic_publish(
            names::TELEMETRY_EXCHANGE.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

/// A test's queue goes away a minute after its last use, even if the test crashed.
const EXPIRES_MS: i64 = 60_000;

fn rabbitmq() -> String {
    testkit::rabbitmq_url()
}

fn embedded() -> String {
    testkit::embedded_broker_url()
}

/// One test's queue, device, store, the server account's channel and the device's
/// publishing channel.
struct Bench {
    url: String,
    queue: String,
    device: DeviceId,
    store: Store,
    dir: std::path::PathBuf,
    channel: Channel,
    _connection: Connection,
    device_channel: Channel,
    _device_connection: Connection,
}

/// A channel in confirm mode on a new connection to `url`.
async fn confirming(url: &str) -> (Connection, Channel) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("the broker must be running at {url}: {e}"));
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (connection, channel)
}

impl Bench {
    async fn new(url: String) -> Self {
        let tag = format!("{:08x}", fastrand::u32(..));
        let (device, device_url) = testkit::provision(&url, "rec").await;
        let dir = std::env::temp_dir().join(format!("tether-recorder-{tag}"));
        let store = Store::open(dir.join("telemetry.db").to_str().unwrap())
            .await
            .unwrap();
        let (connection, channel) = confirming(&url).await;
        let (device_connection, device_channel) = confirming(&device_url).await;
        let bench = Self {
            queue: format!("tether.telemetry.store.test-{tag}"),
            url,
            device,
            store,
            dir,
            channel,
            _connection: connection,
            device_channel,
            _device_connection: device_connection,
        };
        // Declared as the recorders declare it, so that readings published before any
        // recorder runs wait in it.
        bench
            .config(100, Duration::ZERO)
            .queue
            .declare(&bench.channel)
            .await
            .unwrap();
        bench
    }

    fn recorder(&self, batch: usize, linger: Duration) -> Recorder {
        Recorder::new(
            self.config(batch, linger),
            self.store.clone(),
            None,
            Arc::new(RecorderStats::default()),
        )
    }

    fn config(&self, batch: usize, linger: Duration) -> RecorderConfig {
        RecorderConfig {
            queue: StoreQueue {
                name: self.queue.clone(),
                binding: format!("telemetry.{}.#", self.device),
                expires: Some(Duration::from_millis(EXPIRES_MS as u64)),
                queue_type: hub::QueueType::Classic,
            },
            batch,
            linger,
            ..RecorderConfig::new(self.url.clone())
        }
    }

    /// Publishes as the device (its `user_id`, as agents do).
    async fn publish_raw(&self, key: &str, body: &[u8]) {
        let signed = BasicProperties::default().with_user_id(self.device.as_str().into());
        publish(&self.device_channel, key, body, signed).await;
    }

    /// `n` readings of `cpu`, 100 ms apart (well under the per-second limit).
    async fn publish(&self, n: u64, start_ms: u64) {
        for i in 0..n {
            let body = protocol::encode(&DeviceMessage::Telemetry(TelemetrySample {
                device_id: self.device.clone(),
                session_id: "s".into(),
                metric: "cpu".into(),
                value: (i % 100) as f64,
                ts_ms: start_ms + i * 100,
            }));
            self.publish_raw(&names::telemetry_key(&self.device, "cpu"), &body)
                .await;
        }
    }

    async fn ready_messages(&self) -> u32 {
        self.channel
            .queue_declare(
                self.queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count()
    }

    async fn stored(&self) -> u64 {
        self.store.count(Some(self.device.as_str())).await.unwrap()
    }

    async fn wait_stored(&self, n: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.stored().await < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {n} samples stored",
                self.stored().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Nothing more arrives late.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(self.stored().await, n);
    }

    async fn finish(self) {
        let _ = self
            .channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn(recorder: Recorder) -> (oneshot::Sender<Stop>, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(recorder.run(async move { stopped.await.unwrap_or(Stop::Drain) }));
    (stop, task)
}

use common::now_ms;

async fn two_recorders_share_the_queue_storing_each_sample_once(url: String) {
    let bench = Bench::new(url).await;
    let start = now_ms() - 600_000;
    bench.publish(2_000, start).await;
    // Small batches and a prefetch of two batches: neither can take everything.
    let (first, second) = (
        bench.recorder(50, Duration::from_millis(20)),
        bench.recorder(50, Duration::from_millis(20)),
    );
    let (first_stats, second_stats) = (first.stats().clone(), second.stats().clone());
    let (stop_first, first_task) = spawn(first);
    let (stop_second, second_task) = spawn(second);
    bench.wait_stored(2_000).await;
    let (a, b) = (first_stats.snapshot(), second_stats.snapshot());
    assert_eq!(a.stored + b.stored, 2_000, "{a:?} {b:?}");
    assert_eq!(a.duplicates + b.duplicates, 0);
    assert!(
        a.stored > 0 && b.stored > 0,
        "both recorders did some of the work: {} and {}",
        a.stored,
        b.stored
    );
    // Every sample is there, with its value.
    let series = bench
        .store
        .series(store::SeriesQuery {
            device: bench.device.to_string(),
            metrics: vec!["cpu".into()],
            from_ms: start as i64,
            to_ms: start as i64 + 200_000,
            bucket_ms: 1,
        })
        .await
        .unwrap();
    let points = &series[0].1;
    assert_eq!(points.len(), 2_000);
    assert!(
        points
            .iter()
            .enumerate()
            .all(|(i, p)| p.t_ms == start + i as u64 * 100 && p.avg == (i % 100) as f64)
    );
    let _ = (stop_first.send(Stop::Drain), stop_second.send(Stop::Drain));
    first_task.await.unwrap();
    second_task.await.unwrap();
    assert_eq!(
        bench.ready_messages().await,
        0,
        "everything was acknowledged"
    );
    bench.finish().await;
}

async fn a_recorder_that_dies_mid_batch_loses_nothing(url: String) {
    let bench = Bench::new(url).await;
    let start = now_ms() - 600_000;
    bench.publish(300, start).await;
    // This one takes everything into one batch that waits a minute to fill…
    let doomed = bench.recorder(1_000, Duration::from_secs(60));
    let (kill, doomed_task) = spawn(doomed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while bench.ready_messages().await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the recorder never took the messages"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // …and dies holding them, unacknowledged.
    kill.send(Stop::Abandon).unwrap();
    doomed_task.await.unwrap();
    assert_eq!(bench.stored().await, 0);
    // As if another one had died after committing a third of them, before its ack.
    let committed: Vec<_> = (0..100)
        .map(|i| store::Sample {
            device: bench.device.to_string(),
            metric: "cpu".into(),
            ts_ms: (start + i * 100) as i64,
            value: (i % 100) as f64,
        })
        .collect();
    bench.store.insert(committed).await.unwrap();

    let survivor = bench.recorder(64, Duration::from_millis(20));
    let stats = survivor.stats().clone();
    let (stop, task) = spawn(survivor);
    bench.wait_stored(300).await;
    let seen = stats.snapshot();
    assert_eq!((seen.stored, seen.duplicates), (200, 100), "{seen:?}");
    stop.send(Stop::Drain).unwrap();
    task.await.unwrap();
    bench.finish().await;
}

async fn bad_readings_are_counted_and_not_stored(url: String) {
    let bench = Bench::new(url).await;
    let recorder = bench.recorder(100, Duration::from_millis(20));
    let stats = recorder.stats().clone();
    let (stop, task) = spawn(recorder);
    let device = bench.device.clone();
    let key = names::telemetry_key(&device, "cpu");
    let now = now_ms();
    bench.publish_raw(&key, b"not json at all").await;
    bench
        .publish_raw(
            &key,
            format!(r#"{{"v":1,"type":"telemetry","device_id":"{device}","session_id":"s","metric":"cpu","value":"hot","ts_ms":{now}}}"#)
                .as_bytes(),
        )
        .await;
    // Under another device's key.
    let body = protocol::encode(&DeviceMessage::Telemetry(TelemetrySample {
        device_id: device.clone(),
        session_id: "s".into(),
        metric: "memory".into(),
        value: 1.0,
        ts_ms: now,
    }));
    bench.publish_raw(&key, &body).await;
    // From an hour in the future.
    let future = protocol::encode(&DeviceMessage::Telemetry(TelemetrySample {
        device_id: device.clone(),
        session_id: "s".into(),
        metric: "cpu".into(),
        value: 1.0,
        ts_ms: now + 3_600_000,
    }));
    bench.publish_raw(&key, &future).await;
    // A good reading, but sent by another account (the server's) than its device's.
    let good = protocol::encode(&DeviceMessage::Telemetry(TelemetrySample {
        device_id: device.clone(),
        session_id: "s".into(),
        metric: "cpu".into(),
        value: 1.0,
        ts_ms: now - 1_000,
    }));
    publish(&bench.channel, &key, &good, BasicProperties::default()).await;
    // A flood: 80 readings measured within one second.
    for i in 0..80 {
        let body = protocol::encode(&DeviceMessage::Telemetry(TelemetrySample {
            device_id: device.clone(),
            session_id: "s".into(),
            metric: "cpu".into(),
            value: 1.0,
            ts_ms: (now / 1000) * 1000 + i,
        }));
        bench.publish_raw(&key, &body).await;
    }
    bench.wait_stored(50).await;
    let seen = stats.snapshot();
    assert_eq!(seen.rejected(Rejected::Malformed), 1, "{seen:?}");
    assert_eq!(seen.rejected(Rejected::WrongType), 1);
    assert_eq!(seen.rejected(Rejected::Foreign), 1);
    assert_eq!(seen.rejected(Rejected::BadTimestamp), 1);
    assert_eq!(seen.rejected(Rejected::Impostor), 1);
    assert_eq!(seen.rejected(Rejected::Flood), 30);
    // The recorder kept going, and acknowledged the bad ones too.
    bench.publish(5, now + 10_000).await;
    bench.wait_stored(55).await;
    stop.send(Stop::Drain).unwrap();
    task.await.unwrap();
    assert_eq!(bench.ready_messages().await, 0);
    bench.finish().await;
}

mod rabbitmq {
    use super::*;

    #[tokio::test]
    async fn competing_recorders() {
        two_recorders_share_the_queue_storing_each_sample_once(rabbitmq()).await;
    }

    #[tokio::test]
    async fn death_mid_batch() {
        a_recorder_that_dies_mid_batch_loses_nothing(rabbitmq()).await;
    }

    #[tokio::test]
    async fn bad_readings() {
        bad_readings_are_counted_and_not_stored(rabbitmq()).await;
    }
}

mod embedded {
    use super::*;

    #[tokio::test]
    async fn competing_recorders() {
        two_recorders_share_the_queue_storing_each_sample_once(embedded()).await;
    }

    #[tokio::test]
    async fn death_mid_batch() {
        a_recorder_that_dies_mid_batch_loses_nothing(embedded()).await;
    }

    #[tokio::test]
    async fn bad_readings() {
        bad_readings_are_counted_and_not_stored(embedded()).await;
    }
}
