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

mod check;

pub use self::check::Rejected;

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use common::{Retry, redact};
use futures_util::StreamExt as _;
use lapin::{
    Connection, ConnectionProperties, Consumer,
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use serde::Serialize;
use store::{Sample, Store};

use crate::{announced::Announced, flood::FloodGate, store_queue::StoreQueue};

/// How a recorder works.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    /// The broker's URL, or several, comma-separated (a cluster's nodes): each recorder
    /// starts with a random one and moves on when it fails (`common::Brokers`).
    pub amqp_url: String,
    /// The shared queue it consumes.
    pub queue: StoreQueue,
    /// Most messages per transaction.
    pub batch: usize,
    /// Longest a message waits for its batch to fill.
    pub linger: Duration,
}

impl RecorderConfig {
    /// Batches of up to 500 readings or 200 ms, from the shared queue.
    pub fn new(amqp_url: impl Into<String>) -> Self {
        Self {
            amqp_url: amqp_url.into(),
            queue: StoreQueue::default(),
            batch: 500,
            linger: Duration::from_millis(200),
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
#[derive(Clone)]
pub struct Recorder {
    config: RecorderConfig,
    store: Store,
    /// What devices announced (the hub answers); without it only what needs no
    /// announcement is checked.
    announced: Option<Arc<dyn Announced>>,
    stats: Arc<RecorderStats>,
    /// The broker URLs, and which to try next.
    brokers: common::Brokers,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("config", &self.config)
            .field("store", &self.store.kind())
            .finish_non_exhaustive()
    }
}

/// Longest a stopping recorder keeps trying to write its last batch to a store that
/// fails; after it, the batch stays unacknowledged and the broker keeps it.
const LAST_WRITE: Duration = Duration::from_secs(2);

/// The stop signal, polled from several places: it resolves once, and is remembered.
struct StopSignal<F> {
    future: std::pin::Pin<Box<F>>,
    received: Option<Stop>,
}

impl<F: Future<Output = Stop>> StopSignal<F> {
    /// Resolves when told to stop (at once if it already was).
    async fn wait(&mut self) -> Stop {
        if let Some(how) = self.received {
            return how;
        }
        let how = self.future.as_mut().await;
        self.received = Some(how);
        how
    }
}

impl Recorder {
    pub fn new(
        config: RecorderConfig,
        store: Store,
        announced: Option<Arc<dyn Announced>>,
        stats: Arc<RecorderStats>,
    ) -> Self {
        Self {
            brokers: common::Brokers::new(&config.amqp_url),
            config,
            store,
            announced,
            stats,
        }
    }

    pub fn stats(&self) -> &Arc<RecorderStats> {
        &self.stats
    }

    /// Records until `stop` resolves, reconnecting with backoff when the broker link
    /// breaks. With [`Stop::Drain`] the batch in hand is written and acknowledged first
    /// (if the store takes it within a couple of seconds; else it stays queued).
    pub async fn run(self, stop: impl Future<Output = Stop> + Send) {
        let mut stop = StopSignal {
            future: Box::pin(stop),
            received: None,
        };
        let mut retry = Retry::new(Duration::from_millis(500), crate::link::RECONNECT_MAX);
        loop {
            let (connection, mut consumer, index) = match self.connect().await {
                Ok(connected) => {
                    retry.succeeded();
                    connected
                }
                Err(error) => {
                    let pause = retry.failed();
                    tracing::warn!("recorder: {error:#}; retrying in {pause:?}");
                    tokio::select! {
                        () = tokio::time::sleep(pause) => continue,
                        _ = stop.wait() => return,
                    }
                }
            };
            let ended = self.consume(&mut consumer, &mut stop).await;
            let _ = tokio::time::timeout(
                LAST_WRITE,
                connection.close(200, "recorder stopping".into()),
            )
            .await;
            match ended {
                Ok(()) => return,
                Err(error) => {
                    // Its node may be down: the next attempt goes to the next URL.
                    self.brokers.lost(index);
                    tracing::warn!("recorder lost the broker: {error:#}; reconnecting");
                }
            }
        }
    }

    /// Connects to the first broker URL that answers, in turn from the one to try next;
    /// the connection, its consumer, and which URL it is.
    async fn connect(&self) -> anyhow::Result<(Connection, Consumer, usize)> {
        let mut failures = Vec::new();
        for (index, url) in self.brokers.round() {
            match self.connect_to(url).await {
                Ok((connection, consumer)) => {
                    self.brokers.connected(index);
                    return Ok((connection, consumer, index));
                }
                Err(error) => failures.push(format!("{error:#}")),
            }
        }
        anyhow::bail!("{}", failures.join("; "))
    }

    async fn connect_to(&self, url: &str) -> anyhow::Result<(Connection, Consumer)> {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .with_context(|| format!("cannot connect to the broker at {}", redact(url)))?;
        let channel = connection.create_channel().await?;
        self.config.queue.declare(&channel).await?;
        let queue = self.config.queue.name.as_str();
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
    async fn consume<F: Future<Output = Stop>>(
        &self,
        consumer: &mut Consumer,
        stop: &mut StopSignal<F>,
    ) -> anyhow::Result<()> {
        let mut flood = FloodGate::default();
        let mut batch: Vec<Delivery> = Vec::with_capacity(self.config.batch);
        loop {
            // Wait for a first message, then fill the batch until it is full or the first
            // has waited `linger`.
            let first = tokio::select! {
                next = consumer.next() => next,
                _ = stop.wait() => None,
            };
            match first {
                Some(delivery) => batch.push(delivery?),
                None if stop.received.is_none() => {
                    anyhow::bail!("the broker cancelled the consumer")
                }
                None => {}
            }
            let deadline = tokio::time::Instant::now() + self.config.linger;
            while stop.received.is_none() && batch.len() < self.config.batch {
                tokio::select! {
                    next = consumer.next() => match next {
                        Some(delivery) => batch.push(delivery?),
                        None => anyhow::bail!("the broker cancelled the consumer"),
                    },
                    () = tokio::time::sleep_until(deadline) => break,
                    _ = stop.wait() => {}
                }
            }
            if stop.received == Some(Stop::Abandon) {
                return Ok(());
            }
            if let Some(last) = batch.last() {
                let samples = batch
                    .iter()
                    .filter_map(|delivery| self.check(delivery, &mut flood))
                    .collect();
                if !self.write(samples, stop).await {
                    // Stopping, and the store would not take it: it stays queued.
                    return Ok(());
                }
                last.acker
                    .ack(BasicAckOptions { multiple: true })
                    .await
                    .context("cannot acknowledge a batch")?;
                batch.clear();
            }
            if stop.received.is_some() {
                return Ok(());
            }
        }
    }

    /// Writes a batch, retrying with backoff until the store takes it: the batch stays
    /// unacknowledged meanwhile, so if this recorder dies the broker redelivers it.
    /// False if the recorder was told to stop and the store still failed
    /// [`LAST_WRITE`] later (or at once, for [`Stop::Abandon`]).
    async fn write<F: Future<Output = Stop>>(
        &self,
        samples: Vec<Sample>,
        stop: &mut StopSignal<F>,
    ) -> bool {
        let total = samples.len() as u64;
        let mut retry = Retry::new(Duration::from_millis(200), Duration::from_secs(30));
        let mut give_up = None;
        loop {
            match self.store.insert(samples.clone()).await {
                Ok(inserted) => {
                    self.stats.stored.fetch_add(inserted, Ordering::Relaxed);
                    self.stats
                        .duplicates
                        .fetch_add(total - inserted, Ordering::Relaxed);
                    self.stats.batches.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Err(error) => {
                    self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                    let pause = retry.failed();
                    tracing::warn!(
                        "cannot store {total} samples ({error:#}); they stay queued, retrying in {pause:?}"
                    );
                    if give_up.is_none() && stop.received.is_some() {
                        give_up = Some(tokio::time::Instant::now() + LAST_WRITE);
                    }
                    let until = give_up.unwrap_or_else(|| tokio::time::Instant::now() + pause);
                    tokio::select! {
                        () = tokio::time::sleep(pause.min(until.saturating_duration_since(tokio::time::Instant::now()))) => {}
                        how = stop.wait(), if give_up.is_none() => {
                            if how == Stop::Abandon {
                                return false;
                            }
                            give_up = Some(tokio::time::Instant::now() + LAST_WRITE);
                        }
                    }
                    if stop.received == Some(Stop::Abandon)
                        || give_up.is_some_and(|at| tokio::time::Instant::now() >= at)
                    {
                        return false;
                    }
                }
            }
        }
    }

    /// A message as a sample to store, or counted and `None`.
    fn check(&self, delivery: &Delivery, flood: &mut FloodGate) -> Option<Sample> {
        let verdict = check::check(
            &delivery.data,
            delivery.routing_key.as_str(),
            crate::link::sender(delivery),
            self.announced.as_deref(),
            flood,
            common::now_ms() as i64,
        );
        verdict.map_err(|why| self.stats.reject(why)).ok()
    }
}
