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
}

/// Why a request failed: an AMQP reply code and text, as RabbitMQ words them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: u16,
    pub text: String,
}

impl Refusal {
    fn new(code: u16, text: impl Into<String>) -> Self {
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
    /// Bytes of message bodies all queues may hold together; publishes beyond it are
    /// refused (nacked), so a flood cannot exhaust memory.
    max_bytes: usize,
    /// Bytes all queues hold now, kept by each queue as messages come and go.
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
    use amq_protocol::types::FieldTable;

    use super::*;

    fn message(queue: &str, bytes: usize) -> Message {
        Message {
            exchange: String::new(),
            routing_key: queue.to_owned(),
            properties: BasicProperties::default(),
            body: Arc::new(vec![0; bytes]),
            redelivered: false,
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
        assert_eq!(
            vhost.get(1, &a).unwrap().map(|(m, _)| m.body.len()),
            Some(600)
        );
        assert!(
            !vhost.publish("", message(&a, 600)).unwrap().rejected,
            "taking one off made room"
        );
        vhost.delete(1, &a, false, false).unwrap();
        let (b, ..) = vhost.declare_queue(1, &broker_named).unwrap();
        assert!(
            !vhost.publish("", message(&b, 900)).unwrap().rejected,
            "a deleted queue gives its bytes back"
        );
    }
}
