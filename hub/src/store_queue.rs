//! The storage queue: one durable queue, shared by every replica, that every reading is
//! also routed to and the [recorders](crate::Recorder) consume. Everyone who declares it
//! uses [`StoreQueue::declare`], so that its arguments always agree.

use std::time::Duration;

use anyhow::Context as _;
use lapin::{
    Channel,
    options::{QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use protocol::names;

/// The storage queue's caps, oldest readings dropped first: what a store outage may
/// pile up before the broker sheds it. The bytes cap matters most: a reading's body is
/// about 150 bytes, so 128 MiB is some 900,000 readings (2.5 minutes of 10,000 devices
/// at 3 readings a second, hours of a small fleet), and it leaves the embedded broker's
/// 256 MiB for everything else (commands above all) however long the store is down.
pub const QUEUE_MAX_LENGTH: i64 = 10_000_000;
pub const QUEUE_MAX_BYTES: i64 = 128 * 1024 * 1024;
/// The storage queue as declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreQueue {
    /// [`names::STORE_QUEUE`] except in tests and staging.
    pub name: String,
    /// What it is bound to on `tether.telemetry`.
    pub binding: String,
    /// Deletes the queue after it has had no consumer this long (`x-expires`): for
    /// test and staging servers using a queue of their own, never the shared one.
    pub expires: Option<Duration>,
}

impl Default for StoreQueue {
    fn default() -> Self {
        Self::named(names::STORE_QUEUE)
    }
}

impl StoreQueue {
    /// The queue `name`, bound to every reading, never expiring.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            binding: names::TELEMETRY_ALL.to_owned(),
            expires: None,
        }
    }

    /// Declares the queue (and the exchanges, should this run before any hub's) and
    /// binds it. The hub declares it whenever it connects, so that readings are kept
    /// from the moment a replica with storage is up, before its recorders connect.
    pub async fn declare(&self, channel: &Channel) -> anyhow::Result<()> {
        common::amqp::declare_exchanges(channel).await?;
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(QUEUE_MAX_LENGTH),
        );
        arguments.insert(
            "x-max-length-bytes".into(),
            AMQPValue::LongLongInt(QUEUE_MAX_BYTES),
        );
        if let Some(expires) = self.expires {
            let ms = i64::try_from(expires.as_millis()).unwrap_or(i64::MAX);
            arguments.insert("x-expires".into(), AMQPValue::LongLongInt(ms));
        }
        let queue = self.name.as_str();
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
                self.binding.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("cannot bind the storage queue")
    }
}
