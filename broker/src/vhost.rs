//! The broker's shared state: exchanges, queues, bindings and consumers. Connections call
//! in under one lock, never held across an `.await`; deliveries leave through each
//! consumer's connection channel.
//!
//! - here: the [`Vhost`], what it shares with connections ([`Message`], [`Delivery`],
//!   [`Outbound`], [`Refusal`]), and publishing: route a message, then offer it to each
//!   queue it reaches, within the vhost's memory limit.
//! - `routing`: exchanges (direct, fanout, topic), bindings, topic matching.
//! - `queue`: queues, their limits and TTLs, declare, get, purge, delete, requeue, and
//!   round-robin dispatch to consumers.
//! - `consumer`: consume, cancel, and what a closing channel or connection takes with it.

mod consumer;
mod queue;
mod routing;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use amq_protocol::protocol::BasicProperties;

use crate::admission::Tally;

pub use self::{
    consumer::Consume,
    queue::{QueueDeclare, server_named},
};
use self::{
    queue::{Offer, Queue},
    routing::Exchange,
};

/// Which connection owns something (exclusive queues, consumers).
pub type ConnectionId = u64;

/// A message as stored in a queue.
#[derive(Debug, Clone)]
pub struct Message {
    pub exchange: String,
    pub routing_key: String,
    pub properties: BasicProperties,
    pub body: Arc<Vec<u8>>,
    pub redelivered: bool,
    /// Where it stands in its queue: numbered as the queue takes it in, so that a
    /// message put back (rejected, nacked, or left unacknowledged by a closed channel)
    /// goes back to where it was among the others, as RabbitMQ does. Set by the queue.
    pub position: u64,
    /// Past this, the message is dropped instead of delivered (per-message
    /// `expiration` or the queue's `x-message-ttl`, whichever is sooner).
    pub expires_at: Option<Instant>,
}

impl Message {
    fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// What a connection hears from the vhost about its consumers.
#[derive(Debug)]
pub enum Outbound {
    Deliver(Box<Delivery>),
    /// The queue was deleted under the consumer (consumer_cancel_notify).
    Cancelled {
        channel: u16,
        tag: String,
    },
}

/// Where a published message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    /// Queues that took it.
    pub queues: usize,
    /// A full queue with `x-overflow: reject-publish` refused it (the publisher gets a nack).
    pub rejected: bool,
}

/// Bytes of message bodies counted against the vhost's memory limit while they are
/// outside the queues: handed to a consumer and on their way to it, delivered and not
/// yet settled, or encoded and waiting to be written. Uncounted when dropped, wherever
/// that happens (an ack, a reject, a channel or connection gone, a message written);
/// a message requeued is counted by its queue again instead.
#[derive(Debug)]
pub struct Charge {
    held: Arc<AtomicUsize>,
    bytes: usize,
}

impl Charge {
    /// Counts `bytes` more, until the charge is dropped.
    pub fn new(held: &Arc<AtomicUsize>, bytes: usize) -> Self {
        held.fetch_add(bytes, Ordering::Relaxed);
        Self {
            held: held.clone(),
            bytes,
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A message handed to a consumer, sent to its connection.
#[derive(Debug)]
pub struct Delivery {
    pub channel: u16,
    pub consumer_tag: String,
    pub queue: String,
    pub message: Message,
    pub no_ack: bool,
    /// The consumer's count of unacknowledged messages, to decrement on ack.
    pub unacked: Arc<AtomicUsize>,
    /// The message's bytes, still counted against the memory limit.
    pub charge: Charge,
}

/// Why a request failed: an AMQP reply code and text, as RabbitMQ words them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: u16,
    pub text: String,
}

impl Refusal {
    pub(crate) fn new(code: u16, text: impl Into<String>) -> Self {
        Self {
            code,
            text: text.into(),
        }
    }
}

pub const ACCESS_REFUSED: u16 = 403;
/// A hard error: it closes the connection, not only the channel.
pub const COMMAND_INVALID: u16 = 503;
pub const NOT_FOUND: u16 = 404;
pub const RESOURCE_LOCKED: u16 = 405;
pub const PRECONDITION_FAILED: u16 = 406;

#[derive(Debug)]
pub struct Vhost {
    exchanges: HashMap<String, Exchange>,
    queues: HashMap<String, Queue>,
    /// Bytes of message bodies the broker may hold together; publishes beyond it are
    /// refused (nacked), so a flood cannot exhaust memory.
    max_bytes: usize,
    /// Bytes held now: kept by each queue as messages come and go, and by the
    /// [`Charge`]s of messages that left a queue and are not settled or written yet.
    held: Arc<AtomicUsize>,
    /// The queues and the consumers of each limited account.
    queue_tally: Arc<Tally>,
    consumer_tally: Arc<Tally>,
}

impl Vhost {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            exchanges: routing::standard_exchanges(),
            queues: HashMap::new(),
            max_bytes,
            held: Arc::default(),
            queue_tally: Arc::default(),
            consumer_tally: Arc::default(),
        }
    }

    /// The count of bytes held, for connections to charge what they hold to.
    pub fn held(&self) -> Arc<AtomicUsize> {
        self.held.clone()
    }

    /// Whether `bytes` more fit within the memory limit now.
    pub fn has_room_for(&self, bytes: usize) -> bool {
        self.held.load(Ordering::Relaxed) + bytes <= self.max_bytes
    }

    /// Routes a published message to its queues.
    pub fn publish(&mut self, exchange: &str, message: Message) -> Result<Routed, Refusal> {
        let targets = self.route(exchange, &message.routing_key)?;
        let now = Instant::now();
        let per_message = message
            .properties
            .expiration()
            .as_ref()
            .and_then(|ms| ms.as_str().parse::<u64>().ok())
            .map(Duration::from_millis);
        let mut routed = Routed {
            queues: 0,
            rejected: false,
        };
        for name in &targets {
            let Some(queue) = self.queues.get_mut(name) else {
                continue;
            };
            let mut copy = message.clone();
            copy.expires_at = queue.ttl_for(per_message).map(|ttl| now + ttl);
            let held = self.held.load(Ordering::Relaxed);
            if held + copy.body.len() > self.max_bytes {
                tracing::warn!(
                    "refusing a message for '{name}': queues hold {held} bytes, the limit is {}",
                    self.max_bytes
                );
                routed.rejected = true;
                continue;
            }
            match queue.offer(copy) {
                Offer::Taken => {
                    routed.queues += 1;
                    self.dispatch(name);
                }
                Offer::Refused => routed.rejected = true,
                Offer::Dropped => {}
            }
        }
        // Routed somewhere counts as routed, even if a full queue refused it too.
        if routed.queues == 0 && routed.rejected {
            routed.queues = targets.len();
        }
        Ok(routed)
    }
}

#[cfg(test)]
mod tests {
    use amq_protocol::types::{AMQPValue, FieldTable};

    use super::*;

    fn message(queue: &str, bytes: usize) -> Message {
        Message {
            exchange: String::new(),
            routing_key: queue.to_owned(),
            properties: BasicProperties::default(),
            body: Arc::new(vec![0; bytes]),
            redelivered: false,
            position: 0,
            expires_at: None,
        }
    }

    #[test]
    fn the_memory_limit_counts_what_queues_hold_now() {
        let mut vhost = Vhost::new(1_000);
        let no_args = FieldTable::default();
        let broker_named = QueueDeclare {
            name: "",
            exclusive: false,
            auto_delete: false,
            passive: false,
            arguments: &no_args,
            quota: None,
        };
        let (a, ..) = vhost.declare_queue(1, &broker_named).unwrap();
        assert!(!vhost.publish("", message(&a, 600)).unwrap().rejected);
        assert!(
            vhost.publish("", message(&a, 600)).unwrap().rejected,
            "1,200 bytes would pass 1,000"
        );
        let (taken, charge, _) = vhost.get(1, &a).unwrap().expect("a message");
        assert_eq!(taken.body.len(), 600);
        assert!(
            vhost.publish("", message(&a, 600)).unwrap().rejected,
            "a message taken off and not yet settled still counts"
        );
        drop(charge);
        assert!(
            !vhost.publish("", message(&a, 600)).unwrap().rejected,
            "settling the one taken off made room"
        );
        let (taken, charge, _) = vhost.get(1, &a).unwrap().expect("a message");
        vhost.requeue(&a, taken, charge);
        assert_eq!(
            vhost.held.load(Ordering::Relaxed),
            600,
            "requeued, counted once"
        );
        vhost.delete(1, &a, false, false).unwrap();
        let (b, ..) = vhost.declare_queue(1, &broker_named).unwrap();
        assert!(
            !vhost.publish("", message(&b, 900)).unwrap().rejected,
            "a deleted queue gives its bytes back"
        );
    }

    #[test]
    fn queues_are_classic_only() {
        let mut vhost = Vhost::new(1_000);
        let declare = |arguments| QueueDeclare {
            name: "replies",
            exclusive: false,
            auto_delete: false,
            passive: false,
            arguments,
            quota: None,
        };
        let mut quorum = FieldTable::default();
        quorum.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        let refused = vhost.declare_queue(1, &declare(&quorum)).unwrap_err();
        assert!(
            format!("{refused:?}").contains("classic queues only (quorum queues need RabbitMQ)"),
            "{refused:?}"
        );
        let mut classic = FieldTable::default();
        classic.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("classic".into()),
        );
        vhost.declare_queue(1, &declare(&classic)).unwrap();
        // Nor does a classic queue become quorum when declared again.
        assert!(vhost.declare_queue(1, &declare(&quorum)).is_err());
        vhost
            .declare_queue(1, &declare(&FieldTable::default()))
            .unwrap();
    }
}
