//! The storage queue: one durable queue, shared by every replica, that every reading is
//! also routed to and the [recorders](crate::Recorder) consume. Everyone who declares it
//! uses [`StoreQueue::declare`], so that its arguments always agree. [`QueueType`]:
//! classic, or quorum (replicated over a RabbitMQ cluster's nodes) for the queues that
//! must survive a node: this one and each replica's durable reply queue.

use std::{fmt, str::FromStr, time::Duration};

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
/// The type of the queues that must outlive a broker node: the storage queue and each
/// replica's durable reply queue (every other queue is private to one connection, and
/// goes with it). The rest of their arguments are the same for both types: RabbitMQ
/// 3.10's quorum queues take `x-max-length`, `x-max-length-bytes` (dropping the oldest,
/// their default overflow) and `x-expires`, and are always durable, never exclusive nor
/// auto-delete, never server-named, which these queues are anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// A queue on one node (RabbitMQ's default, and the embedded broker's only kind):
    /// while that node is down, nobody can use it.
    #[default]
    Classic,
    /// `x-queue-type=quorum`: replicated (Raft) over the cluster's nodes, usable while
    /// a majority of them is up. RabbitMQ only.
    Quorum,
}

impl QueueType {
    /// Adds the type to a queue's declare arguments. Classic says nothing, as before
    /// this setting existed, so that queues declared by older versions stay equivalent.
    pub fn add_to(self, arguments: &mut FieldTable) {
        if self == Self::Quorum {
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
    }

    /// `error` from declaring `queue` as this type, explained: a queue's type cannot
    /// change, so one declared with the other type is refused (PRECONDITION_FAILED,
    /// inequivalent `x-queue-type`) until the operator deletes it.
    pub fn declare_error(self, queue: &str, error: lapin::Error) -> anyhow::Error {
        let text = error.to_string();
        let hint = if text.contains("inequivalent arg 'x-queue-type'") {
            format!(
                ": the queue {queue} exists with another type than {self} (TETHER_QUEUE_TYPE), and a queue's type cannot change.                  Either set TETHER_QUEUE_TYPE to the type it has, or delete it (`rabbitmqctl delete_queue {queue}`; what it holds is lost,                  so stop the replicas and let it drain first) and start again"
            )
        } else if self == Self::Quorum && text.contains("x-queue-type") {
            " (quorum queues need RabbitMQ 3.8 or later: set TETHER_QUEUE_TYPE=classic otherwise)"
                .to_owned()
        } else {
            String::new()
        };
        anyhow::Error::new(error).context(format!("cannot declare the queue {queue}{hint}"))
    }
}

impl fmt::Display for QueueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Classic => "classic",
            Self::Quorum => "quorum",
        })
    }
}

impl FromStr for QueueType {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "classic" => Ok(Self::Classic),
            "quorum" => Ok(Self::Quorum),
            other => Err(format!("{other:?} is no queue type: classic or quorum")),
        }
    }
}

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
    /// Classic, or quorum to survive a node of a RabbitMQ cluster.
    pub queue_type: QueueType,
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
            queue_type: QueueType::Classic,
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
        self.queue_type.add_to(&mut arguments);
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
            .map_err(|error| self.queue_type.declare_error(queue, error))
            .context("cannot declare the storage queue")?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_types_parse_and_only_quorum_says_so() {
        assert_eq!("quorum".parse(), Ok(QueueType::Quorum));
        assert_eq!("classic".parse(), Ok(QueueType::Classic));
        assert!(
            "stream"
                .parse::<QueueType>()
                .unwrap_err()
                .contains("classic or quorum")
        );
        let mut arguments = FieldTable::default();
        QueueType::Classic.add_to(&mut arguments);
        assert!(arguments.inner().is_empty());
        QueueType::Quorum.add_to(&mut arguments);
        assert_eq!(
            arguments.inner().get("x-queue-type"),
            Some(&AMQPValue::LongString("quorum".into()))
        );
    }
}
