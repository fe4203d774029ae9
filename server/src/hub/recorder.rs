//! Storing readings: queue-based load levelling.
//!
//! Every reading is also routed to one durable queue, `tether.telemetry.store`, shared
//! by every replica. Each replica runs one or more [`Recorder`]s that compete for it:
//! a recorder takes up to `batch` messages (or what arrived within `linger`), checks
//! them, writes the good ones in one transaction, and only then acknowledges the whole
//! batch with one `multiple` ack. A recorder that dies mid-batch leaves its messages
//! unacknowledged, so the broker hands them to another; one that dies between commit and
//! ack makes the batch arrive twice, which the store's key turns into one copy. When the
//! database is down the recorder keeps the batch and retries with backoff, and the
//! queue absorbs what keeps coming (up to [`QUEUE_MAX_BYTES`], oldest dropped first).

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use lapin::{
    Channel, Connection, ConnectionProperties, Consumer,
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use protocol::{DeviceMessage, TelemetrySample, names};
use serde::Serialize;

use super::{
    Hub, Known, declare_exchanges,
    flood::{Admission, FloodGate},
    now_ms,
};
use crate::{redact, store::Store};

/// The storage queue's caps, oldest readings dropped first: what a store outage may
/// pile up before the broker sheds it. The bytes cap matters most: a reading's body is
/// about 150 bytes, so 128 MiB is some 900,000 readings (2.5 minutes of 10,000 devices
/// at 3 readings a second, hours of a small fleet), and it leaves the embedded broker's
/// 256 MiB for everything else (commands above all) however long the store is down.
pub const QUEUE_MAX_LENGTH: i64 = 10_000_000;
pub const QUEUE_MAX_BYTES: i64 = 128 * 1024 * 1024;
/// How far ahead of this server's clock a reading's time may be.
const MAX_CLOCK_AHEAD_MS: i64 = 5 * 60_000;
/// 2001-09-09: a reading from before this was measured by a device without a clock.
const MIN_PLAUSIBLE_MS: i64 = 1_000_000_000_000;

/// How a recorder works.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    pub amqp_url: String,
    /// The shared queue: [`names::STORE_QUEUE`] except in tests.
    pub queue: String,
    /// What the queue is bound to on `tether.telemetry`.
    pub binding: String,
    /// Most messages per transaction.
    pub batch: usize,
    /// Longest a message waits for its batch to fill.
    pub linger: Duration,
    /// Deletes the queue after it has had no consumer this long (`x-expires`): for
    /// test and staging servers using a queue of their own, never the shared one.
    pub expires: Option<Duration>,
}

impl RecorderConfig {
    pub fn new(amqp_url: impl Into<String>) -> Self {
        Self {
            amqp_url: amqp_url.into(),
            queue: names::STORE_QUEUE.to_owned(),
            binding: names::TELEMETRY_ALL.to_owned(),
            batch: 500,
            linger: Duration::from_millis(200),
            expires: None,
        }
    }
}

/// Declares the storage queue as `config` describes it and binds it (and the exchanges,
/// should this run before any hub's). Everyone who declares it must use this, so that
/// its arguments always agree. The hub declares it too when it connects, so that
/// readings are kept from the moment a replica with storage is up, before its recorders
/// have connected.
pub async fn declare_queue(channel: &Channel, config: &RecorderConfig) -> anyhow::Result<()> {
    declare_exchanges(channel).await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(QUEUE_MAX_LENGTH),
    );
    arguments.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(QUEUE_MAX_BYTES),
    );
    if let Some(expires) = config.expires {
        let ms = i64::try_from(expires.as_millis()).unwrap_or(i64::MAX);
        arguments.insert("x-expires".into(), AMQPValue::LongLongInt(ms));
    }
    let queue = config.queue.as_str();
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .with_context(|| format!("cannot declare the storage queue {queue}"))?;
    channel
        .queue_bind(
            queue.into(),
            names::TELEMETRY_EXCHANGE.into(),
            config.binding.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("cannot bind the storage queue")
}

/// Why a message was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Not a telemetry message of this protocol version.
    Malformed,
    /// A reading whose value is not a number.
    WrongType,
    /// A reading under another routing key than its own.
    Foreign,
    /// A metric its device did not announce.
    UnknownMetric,
    /// Outside the announced range, or not finite.
    OutOfRange,
    /// More than `MAX_READINGS_PER_SECOND` (50) measured in one second of the device's clock
    /// (not one second of arrival: a backlog arrives all at once and is not a flood).
    Flood,
    /// Measured in the future, or before clocks were set.
    BadTimestamp,
}

impl Rejected {
    pub const ALL: [Self; 7] = [
        Self::Malformed,
        Self::WrongType,
        Self::Foreign,
        Self::UnknownMetric,
        Self::OutOfRange,
        Self::Flood,
        Self::BadTimestamp,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::WrongType => "wrong_type",
            Self::Foreign => "foreign",
            Self::UnknownMetric => "unknown_metric",
            Self::OutOfRange => "out_of_range",
            Self::Flood => "flood",
            Self::BadTimestamp => "bad_timestamp",
        }
    }
}

/// What the recorders of one replica (or one test) did.
#[derive(Debug, Default)]
pub struct RecorderStats {
    /// Samples written.
    pub stored: AtomicU64,
    /// Samples that were already stored (a redelivered batch).
    pub duplicates: AtomicU64,
    /// Batches committed.
    pub batches: AtomicU64,
    /// Failed attempts to write a batch (each retried).
    pub store_errors: AtomicU64,
    rejected: [AtomicU64; Rejected::ALL.len()],
}

/// A copy of [`RecorderStats`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct RecorderSnapshot {
    pub stored: u64,
    pub duplicates: u64,
    pub batches: u64,
    pub store_errors: u64,
    pub rejected: Vec<(&'static str, u64)>,
}

impl RecorderSnapshot {
    pub fn rejected(&self, why: Rejected) -> u64 {
        self.rejected
            .iter()
            .find(|(label, _)| *label == why.label())
            .map_or(0, |(_, n)| *n)
    }
}

impl RecorderStats {
    fn reject(&self, why: Rejected) {
        self.rejected[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> RecorderSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        RecorderSnapshot {
            stored: load(&self.stored),
            duplicates: load(&self.duplicates),
            batches: load(&self.batches),
            store_errors: load(&self.store_errors),
            rejected: Rejected::ALL
                .iter()
                .map(|why| (why.label(), load(&self.rejected[*why as usize])))
                .collect(),
        }
    }
}

/// How a recorder's run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Write and acknowledge what it holds, then leave.
    Drain,
    /// Leave at once, as a crashing process would: what it holds goes back to the queue.
    Abandon,
}

/// One competing consumer of the shared queue.
#[derive(Debug, Clone)]
pub struct Recorder {
    config: RecorderConfig,
    store: Store,
    /// The fleet, for what devices announced; without it only what needs no
    /// announcement is checked.
    hub: Option<Hub>,
    stats: Arc<RecorderStats>,
}

impl Recorder {
    pub fn new(
        config: RecorderConfig,
        store: Store,
        hub: Option<Hub>,
        stats: Arc<RecorderStats>,
    ) -> Self {
        Self {
            config,
            store,
            hub,
            stats,
        }
    }

    pub fn stats(&self) -> &Arc<RecorderStats> {
        &self.stats
    }

    /// Records until `stop` resolves, reconnecting with backoff when the broker link
    /// breaks.
    pub async fn run(self, stop: impl Future<Output = Stop> + Send) {
        let mut stop = std::pin::pin!(stop);
        let mut failures: u32 = 0;
        loop {
            let (connection, mut consumer) = match self.connect().await {
                Ok(connected) => {
                    failures = 0;
                    connected
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let pause = Duration::from_millis(
                        250u64.saturating_mul(1 << failures.min(6)).min(15_000),
                    );
                    tracing::warn!("recorder: {error:#}; retrying in {pause:?}");
                    tokio::select! {
                        () = tokio::time::sleep(pause) => continue,
                        _ = &mut stop => return,
                    }
                }
            };
            let ended = self.consume(&mut consumer, stop.as_mut()).await;
            let _ = connection.close(200, "recorder stopping".into()).await;
            match ended {
                Ok(()) => return,
                Err(error) => tracing::warn!("recorder lost the broker: {error:#}; reconnecting"),
            }
        }
    }

    async fn connect(&self) -> anyhow::Result<(Connection, Consumer)> {
        let url = &self.config.amqp_url;
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .with_context(|| format!("cannot connect to the broker at {}", redact(url)))?;
        let channel = connection.create_channel().await?;
        declare_queue(&channel, &self.config).await?;
        let queue = self.config.queue.as_str();
        let prefetch = u16::try_from(self.config.batch.saturating_mul(2)).unwrap_or(u16::MAX);
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .context("cannot set the recorder's prefetch")?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("cannot consume {queue}"))?;
        Ok((connection, consumer))
    }

    /// Batches until told to stop (`Ok`) or the consumer fails (`Err`).
    async fn consume(
        &self,
        consumer: &mut Consumer,
        mut stop: std::pin::Pin<&mut (impl Future<Output = Stop> + Send)>,
    ) -> anyhow::Result<()> {
        let mut flood = FloodGate::default();
        let mut batch: Vec<Delivery> = Vec::with_capacity(self.config.batch);
        loop {
            let mut stopping = None;
            // Wait for a first message, then fill the batch until it is full or the first
            // has waited `linger`.
            let first = tokio::select! {
                next = consumer.next() => next,
                how = &mut stop => { stopping = Some(how); None }
            };
            match first {
                Some(delivery) => batch.push(delivery?),
                None if stopping.is_none() => anyhow::bail!("the broker cancelled the consumer"),
                None => {}
            }
            let deadline = tokio::time::Instant::now() + self.config.linger;
            while stopping.is_none() && batch.len() < self.config.batch {
                tokio::select! {
                    next = consumer.next() => match next {
                        Some(delivery) => batch.push(delivery?),
                        None => anyhow::bail!("the broker cancelled the consumer"),
                    },
                    () = tokio::time::sleep_until(deadline) => break,
                    how = &mut stop => stopping = Some(how),
                }
            }
            if stopping == Some(Stop::Abandon) {
                return Ok(());
            }
            if let Some(last) = batch.last() {
                let samples = batch
                    .iter()
                    .filter_map(|delivery| self.check(delivery, &mut flood))
                    .collect();
                self.write(samples).await;
                last.acker
                    .ack(BasicAckOptions { multiple: true })
                    .await
                    .context("cannot acknowledge a batch")?;
                batch.clear();
            }
            if stopping.is_some() {
                return Ok(());
            }
        }
    }

    /// Writes a batch, retrying with backoff until the store takes it: the batch stays
    /// unacknowledged meanwhile, so if this recorder dies the broker redelivers it.
    async fn write(&self, samples: Vec<crate::store::Sample>) {
        let total = samples.len() as u64;
        let mut failures: u32 = 0;
        loop {
            match self.store.insert(samples.clone()).await {
                Ok(inserted) => {
                    self.stats.stored.fetch_add(inserted, Ordering::Relaxed);
                    self.stats
                        .duplicates
                        .fetch_add(total - inserted, Ordering::Relaxed);
                    self.stats.batches.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(error) => {
                    self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                    failures = failures.saturating_add(1);
                    let pause = Duration::from_millis(
                        100u64.saturating_mul(1 << failures.min(8)).min(30_000),
                    );
                    tracing::warn!(
                        "cannot store {total} samples ({error:#}); they stay queued, retrying in {pause:?}"
                    );
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// A message as a sample to store, or counted and `None`.
    fn check(&self, delivery: &Delivery, flood: &mut FloodGate) -> Option<crate::store::Sample> {
        let verdict = check(
            &delivery.data,
            delivery.routing_key.as_str(),
            self.hub.as_ref(),
            flood,
            now_ms() as i64,
        );
        verdict.map_err(|why| self.stats.reject(why)).ok()
    }
}

/// Checks one message: well formed, under its own routing key, a plausible time, what
/// its device announced (when the device is known), and within the per-device rate.
fn check(
    data: &[u8],
    routing_key: &str,
    hub: Option<&Hub>,
    flood: &mut FloodGate,
    now_ms: i64,
) -> Result<crate::store::Sample, Rejected> {
    let sample = match protocol::decode::<DeviceMessage>(data) {
        Ok(DeviceMessage::Telemetry(sample)) => sample,
        Ok(_) => return Err(Rejected::Foreign),
        Err(_) if super::is_wrong_type(data) => return Err(Rejected::WrongType),
        Err(_) => return Err(Rejected::Malformed),
    };
    let TelemetrySample {
        device_id,
        metric,
        value,
        ts_ms,
        ..
    } = sample;
    if routing_key != names::telemetry_key(&device_id, &metric) {
        return Err(Rejected::Foreign);
    }
    let ts_ms = i64::try_from(ts_ms).map_err(|_| Rejected::BadTimestamp)?;
    if !(MIN_PLAUSIBLE_MS..=now_ms + MAX_CLOCK_AHEAD_MS).contains(&ts_ms) {
        return Err(Rejected::BadTimestamp);
    }
    // A device this replica has not heard from yet (a backlog read after a restart) is
    // stored after the checks that need no announcement: dropping it would lose real
    // measurements.
    match hub.map_or(Known::UnknownDevice, |hub| hub.metric(&device_id, &metric)) {
        Known::UnknownDevice if value.is_finite() => {}
        Known::Metric(spec) if spec.admits(value) => {}
        Known::UnknownMetric => return Err(Rejected::UnknownMetric),
        Known::UnknownDevice | Known::Metric(_) => return Err(Rejected::OutOfRange),
    }
    if flood.admit(&device_id, ts_ms) != Admission::Admitted {
        return Err(Rejected::Flood);
    }
    Ok(crate::store::Sample {
        device: device_id.as_str().to_owned(),
        metric,
        ts_ms,
        value,
    })
}

#[cfg(test)]
mod tests {
    use protocol::{DeviceId, encode};

    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn reading(device: &str, metric: &str, value: f64, ts_ms: i64) -> Vec<u8> {
        encode(&DeviceMessage::Telemetry(TelemetrySample {
            device_id: DeviceId::new(device).unwrap(),
            session_id: "s".into(),
            metric: metric.into(),
            value,
            ts_ms: ts_ms as u64,
        }))
    }

    #[test]
    fn good_readings_of_unknown_devices_are_kept() {
        let mut flood = FloodGate::default();
        let sample = check(
            &reading("d1", "cpu", 12.5, NOW - 10),
            "telemetry.d1.cpu",
            None,
            &mut flood,
            NOW,
        )
        .unwrap();
        assert_eq!(
            sample,
            crate::store::Sample {
                device: "d1".into(),
                metric: "cpu".into(),
                ts_ms: NOW - 10,
                value: 12.5
            }
        );
    }

    #[test]
    fn bad_messages_are_rejected_with_their_reason() {
        let mut flood = FloodGate::default();
        let mut check = |data: &[u8], key: &str| check(data, key, None, &mut flood, NOW);
        assert_eq!(check(b"{nope", "telemetry.d.x"), Err(Rejected::Malformed));
        let text = br#"{"v":1,"type":"telemetry","device_id":"d","session_id":"s","metric":"x","value":"hot","ts_ms":1800000000000}"#;
        assert_eq!(check(text, "telemetry.d.x"), Err(Rejected::WrongType));
        assert_eq!(
            check(&reading("d", "x", 1.0, NOW), "telemetry.e.x"),
            Err(Rejected::Foreign)
        );
        assert_eq!(
            check(&reading("d", "x", 1.0, NOW + 3_600_000), "telemetry.d.x"),
            Err(Rejected::BadTimestamp)
        );
        assert_eq!(
            check(&reading("d", "x", 1.0, 5), "telemetry.d.x"),
            Err(Rejected::BadTimestamp)
        );
    }
}
