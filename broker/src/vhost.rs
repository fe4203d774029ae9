//! The broker's shared state: exchanges, queues, bindings and consumers, and routing.
//! Connections call in under one lock, never held across an `.await`; deliveries leave
//! through each consumer's connection channel.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use amq_protocol::{
    protocol::BasicProperties,
    types::{AMQPValue, FieldTable},
};
use tokio::sync::mpsc;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
}

impl ExchangeKind {
    pub fn parse(kind: &str) -> Option<Self> {
        match kind {
            "direct" => Some(Self::Direct),
            "fanout" => Some(Self::Fanout),
            "topic" => Some(Self::Topic),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Exchange {
    kind: ExchangeKind,
    durable: bool,
    /// (queue, binding key)
    bindings: Vec<(String, String)>,
}

#[derive(Debug)]
struct Consumer {
    connection: ConnectionId,
    channel: u16,
    tag: String,
    no_ack: bool,
    /// 0: unlimited.
    prefetch: usize,
    unacked: Arc<AtomicUsize>,
    deliver: mpsc::UnboundedSender<Outbound>,
}

/// A queue's ready messages. Their bytes are added to the vhost's running total as they
/// come and taken off as they go (dropping the queue included), so the memory limit is
/// checked without walking every queue on each publish.
#[derive(Debug, Default)]
struct Ready {
    messages: VecDeque<Message>,
    /// Bytes of this queue's messages.
    bytes: usize,
    /// Bytes held by all queues of the vhost, this one's included.
    held: Arc<AtomicUsize>,
}

impl Ready {
    fn counted(held: Arc<AtomicUsize>) -> Self {
        Self {
            messages: VecDeque::new(),
            bytes: 0,
            held,
        }
    }

    fn push_back(&mut self, message: Message) {
        self.count_in(message.body.len());
        self.messages.push_back(message);
    }

    fn push_front(&mut self, message: Message) {
        self.count_in(message.body.len());
        self.messages.push_front(message);
    }

    fn pop_front(&mut self) -> Option<Message> {
        let message = self.messages.pop_front()?;
        self.count_out(message.body.len());
        Some(message)
    }

    fn count_in(&mut self, bytes: usize) {
        self.bytes += bytes;
        self.held.fetch_add(bytes, Ordering::Relaxed);
    }

    fn count_out(&mut self, bytes: usize) {
        self.bytes -= bytes;
        self.held.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn front(&self) -> Option<&Message> {
        self.messages.front()
    }

    fn clear(&mut self) {
        self.messages.clear();
        let bytes = self.bytes;
        self.count_out(bytes);
    }

    fn len(&self) -> usize {
        self.messages.len()
    }

    fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

impl Drop for Ready {
    fn drop(&mut self) {
        self.clear();
    }
}

#[derive(Debug, Default)]
struct Queue {
    owner: Option<ConnectionId>,
    auto_delete: bool,
    /// `x-message-ttl`.
    ttl: Option<Duration>,
    /// `x-max-length` and `x-max-length-bytes` (bodies only, as RabbitMQ counts); beyond
    /// either the oldest messages are dropped, or with `x-overflow: reject-publish` the
    /// new one is refused.
    max_length: Option<usize>,
    max_bytes: Option<usize>,
    reject_publish: bool,
    messages: Ready,
    consumers: Vec<Consumer>,
    /// Round-robin position among consumers.
    next: usize,
    /// Auto-delete queues go when their last consumer leaves, once they had one.
    had_consumers: bool,
}

impl Queue {
    /// Whether a message of `bytes` would take the queue past a limit.
    fn full_for(&self, bytes: usize) -> bool {
        self.max_length
            .is_some_and(|max| self.messages.len() >= max)
            || self
                .max_bytes
                .is_some_and(|max| self.messages.bytes + bytes > max)
    }
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
    /// Bytes all queues hold now, kept by each queue's [`Ready`].
    held: Arc<AtomicUsize>,
}

impl Vhost {
    pub fn new(max_bytes: usize) -> Self {
        let mut exchanges = HashMap::new();
        for (name, kind) in [
            ("amq.direct", ExchangeKind::Direct),
            ("amq.fanout", ExchangeKind::Fanout),
            ("amq.topic", ExchangeKind::Topic),
        ] {
            exchanges.insert(
                name.to_owned(),
                Exchange {
                    kind,
                    durable: true,
                    bindings: Vec::new(),
                },
            );
        }
        Self {
            exchanges,
            queues: HashMap::new(),
            max_bytes,
            held: Arc::default(),
        }
    }
}

impl Vhost {
    pub fn declare_exchange(
        &mut self,
        name: &str,
        kind: &str,
        durable: bool,
        passive: bool,
    ) -> Result<(), Refusal> {
        if let Some(existing) = self.exchanges.get(name) {
            if passive {
                return Ok(());
            }
            let same_kind = ExchangeKind::parse(kind) == Some(existing.kind);
            if !same_kind || existing.durable != durable {
                return Err(Refusal::new(
                    PRECONDITION_FAILED,
                    format!(
                        "PRECONDITION_FAILED - inequivalent arg 'type' or 'durable' for exchange '{name}' in vhost '/'"
                    ),
                ));
            }
            return Ok(());
        }
        if passive {
            return Err(Refusal::new(
                NOT_FOUND,
                format!("NOT_FOUND - no exchange '{name}' in vhost '/'"),
            ));
        }
        if name.starts_with("amq.") {
            return Err(Refusal::new(
                403,
                format!("ACCESS_REFUSED - exchange name '{name}' contains reserved prefix 'amq.*'"),
            ));
        }
        let kind = ExchangeKind::parse(kind).ok_or_else(|| {
            Refusal::new(
                503,
                format!("COMMAND_INVALID - unknown exchange type '{kind}'"),
            )
        })?;
        self.exchanges.insert(
            name.to_owned(),
            Exchange {
                kind,
                durable,
                bindings: Vec::new(),
            },
        );
        Ok(())
    }

    /// Declares a queue (a broker-named one if `name` is empty); returns its name and
    /// message and consumer counts.
    pub fn declare_queue(
        &mut self,
        connection: ConnectionId,
        name: &str,
        exclusive: bool,
        auto_delete: bool,
        passive: bool,
        arguments: &FieldTable,
    ) -> Result<(String, u32, u32), Refusal> {
        let name = if name.is_empty() {
            if passive {
                return Err(Refusal::new(
                    NOT_FOUND,
                    "NOT_FOUND - no queue '' in vhost '/'",
                ));
            }
            format!("amq.gen-{}", random_name())
        } else {
            name.to_owned()
        };
        if let Some(queue) = self.queues.get(&name) {
            if queue.owner.is_some_and(|owner| owner != connection) {
                return Err(Refusal::new(
                    RESOURCE_LOCKED,
                    format!(
                        "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{name}' in vhost '/'"
                    ),
                ));
            }
            let differs = if queue.owner.is_some() != exclusive {
                Some("exclusive")
            } else if queue.auto_delete != auto_delete {
                Some("auto_delete")
            } else {
                None
            };
            if let (Some(flag), false) = (differs, passive) {
                return Err(Refusal::new(
                    PRECONDITION_FAILED,
                    format!(
                        "PRECONDITION_FAILED - inequivalent arg '{flag}' for queue '{name}' in vhost '/'"
                    ),
                ));
            }
            let counts = (queue.messages.len() as u32, queue.consumers.len() as u32);
            return Ok((name, counts.0, counts.1));
        }
        if passive {
            return Err(Refusal::new(
                NOT_FOUND,
                format!("NOT_FOUND - no queue '{name}' in vhost '/'"),
            ));
        }
        let owner = exclusive.then_some(connection);
        let ttl = integer_argument(arguments, "x-message-ttl")?
            .map(|ms| Duration::from_millis(ms as u64));
        let max_length = integer_argument(arguments, "x-max-length")?.map(|n| n as usize);
        let max_bytes = integer_argument(arguments, "x-max-length-bytes")?.map(|n| n as usize);
        let reject_publish = match arguments.inner().get("x-overflow") {
            None => false,
            Some(AMQPValue::LongString(s)) if s.as_bytes() == b"drop-head" => false,
            Some(AMQPValue::LongString(s)) if s.as_bytes() == b"reject-publish" => true,
            Some(other) => {
                return Err(Refusal::new(
                    PRECONDITION_FAILED,
                    format!(
                        "PRECONDITION_FAILED - invalid arg 'x-overflow' for queue '{name}': {other:?}"
                    ),
                ));
            }
        };
        self.queues.insert(
            name.clone(),
            Queue {
                owner,
                auto_delete,
                ttl,
                max_length,
                max_bytes,
                reject_publish,
                messages: Ready::counted(self.held.clone()),
                ..Queue::default()
            },
        );
        Ok((name, 0, 0))
    }

    pub fn bind(
        &mut self,
        connection: ConnectionId,
        queue: &str,
        exchange: &str,
        key: &str,
    ) -> Result<(), Refusal> {
        self.usable_queue(connection, queue)?;
        let exchange_entry = self.exchanges.get_mut(exchange).ok_or_else(|| {
            Refusal::new(
                NOT_FOUND,
                format!("NOT_FOUND - no exchange '{exchange}' in vhost '/'"),
            )
        })?;
        let binding = (queue.to_owned(), key.to_owned());
        if !exchange_entry.bindings.contains(&binding) {
            exchange_entry.bindings.push(binding);
        }
        Ok(())
    }

    /// Routes a published message to its queues.
    pub fn publish(&mut self, exchange: &str, message: Message) -> Result<Routed, Refusal> {
        let targets: Vec<String> = if exchange.is_empty() {
            self.queues
                .contains_key(&message.routing_key)
                .then(|| message.routing_key.clone())
                .into_iter()
                .collect()
        } else {
            let entry = self.exchanges.get(exchange).ok_or_else(|| {
                Refusal::new(
                    NOT_FOUND,
                    format!("NOT_FOUND - no exchange '{exchange}' in vhost '/'"),
                )
            })?;
            let mut targets: Vec<String> = entry
                .bindings
                .iter()
                .filter(|(_, key)| match entry.kind {
                    ExchangeKind::Fanout => true,
                    ExchangeKind::Direct => *key == message.routing_key,
                    ExchangeKind::Topic => topic_matches(key, &message.routing_key),
                })
                .map(|(queue, _)| queue.clone())
                .collect();
            targets.sort();
            targets.dedup();
            targets
        };
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
            let ttl = match (per_message, queue.ttl) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let mut copy = message.clone();
            copy.expires_at = ttl.map(|ttl| now + ttl);
            let held = self.held.load(Ordering::Relaxed);
            if held + copy.body.len() > self.max_bytes {
                tracing::warn!(
                    "refusing a message for '{name}': queues hold {held} bytes, the limit is {}",
                    self.max_bytes
                );
                routed.rejected = true;
                continue;
            }
            if queue.full_for(copy.body.len()) {
                if queue.reject_publish {
                    routed.rejected = true;
                    continue;
                }
                while !queue.messages.is_empty() && queue.full_for(copy.body.len()) {
                    queue.messages.pop_front();
                }
                // A limit of zero, or a message larger than the byte limit on its own.
                if queue.full_for(copy.body.len()) {
                    continue;
                }
            }
            queue.messages.push_back(copy);
            routed.queues += 1;
            self.dispatch(name);
        }
        // Routed somewhere counts as routed, even if a full queue refused it too.
        if routed.queues == 0 && routed.rejected {
            routed.queues = targets.len();
        }
        Ok(routed)
    }

    /// Takes one message off a queue (basic.get); returns it and how many remain.
    pub fn get(
        &mut self,
        connection: ConnectionId,
        name: &str,
    ) -> Result<Option<(Message, u32)>, Refusal> {
        let queue = self.usable_queue(connection, name)?;
        let now = Instant::now();
        while let Some(message) = queue.messages.pop_front() {
            if !message.expired(now) {
                return Ok(Some((message, queue.messages.len() as u32)));
            }
        }
        Ok(None)
    }

    /// Drops every ready message of a queue; returns how many.
    pub fn purge(&mut self, connection: ConnectionId, name: &str) -> Result<u32, Refusal> {
        let queue = self.usable_queue(connection, name)?;
        let count = queue.messages.len() as u32;
        queue.messages.clear();
        Ok(count)
    }

    /// Deletes a queue on request; its consumers are told (basic.cancel). Returns how
    /// many messages went with it.
    pub fn delete(
        &mut self,
        connection: ConnectionId,
        name: &str,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<u32, Refusal> {
        let queue = match self.usable_queue(connection, name) {
            Ok(queue) => queue,
            // Deleting what is not there is fine, as in RabbitMQ.
            Err(refusal) if refusal.code == NOT_FOUND => return Ok(0),
            Err(refusal) => return Err(refusal),
        };
        if if_unused && !queue.consumers.is_empty() {
            return Err(Refusal::new(
                PRECONDITION_FAILED,
                format!("PRECONDITION_FAILED - queue '{name}' in vhost '/' in use"),
            ));
        }
        if if_empty && !queue.messages.is_empty() {
            return Err(Refusal::new(
                PRECONDITION_FAILED,
                format!("PRECONDITION_FAILED - queue '{name}' in vhost '/' not empty"),
            ));
        }
        let count = queue.messages.len() as u32;
        self.delete_queue(name);
        Ok(count)
    }

    pub fn unbind(
        &mut self,
        connection: ConnectionId,
        queue: &str,
        exchange: &str,
        key: &str,
    ) -> Result<(), Refusal> {
        self.usable_queue(connection, queue)?;
        if let Some(entry) = self.exchanges.get_mut(exchange) {
            entry.bindings.retain(|(q, k)| !(q == queue && k == key));
        }
        Ok(())
    }

    pub fn delete_exchange(&mut self, name: &str, if_unused: bool) -> Result<(), Refusal> {
        if name.starts_with("amq.") || name.is_empty() {
            return Err(Refusal::new(
                403,
                format!(
                    "ACCESS_REFUSED - operation not permitted on the default exchange or 'amq.*' ('{name}')"
                ),
            ));
        }
        if if_unused
            && self
                .exchanges
                .get(name)
                .is_some_and(|e| !e.bindings.is_empty())
        {
            return Err(Refusal::new(
                PRECONDITION_FAILED,
                format!("PRECONDITION_FAILED - exchange '{name}' in vhost '/' in use"),
            ));
        }
        self.exchanges.remove(name);
        Ok(())
    }

    /// Adds a consumer; messages waiting in the queue start flowing to it.
    #[allow(clippy::too_many_arguments)]
    pub fn consume(
        &mut self,
        connection: ConnectionId,
        channel: u16,
        queue: &str,
        tag: String,
        no_ack: bool,
        prefetch: u16,
        deliver: mpsc::UnboundedSender<Outbound>,
    ) -> Result<(), Refusal> {
        let entry = self.usable_queue(connection, queue)?;
        entry.consumers.push(Consumer {
            connection,
            channel,
            tag,
            no_ack,
            prefetch: usize::from(prefetch),
            unacked: Arc::default(),
            deliver,
        });
        entry.had_consumers = true;
        self.dispatch(queue);
        Ok(())
    }

    /// Removes a consumer; an auto-delete queue without consumers left goes away.
    pub fn cancel(&mut self, connection: ConnectionId, channel: u16, tag: &str) {
        let names: Vec<String> = self.queues.keys().cloned().collect();
        for name in names {
            if let Some(queue) = self.queues.get_mut(&name) {
                queue.consumers.retain(|c| {
                    !(c.connection == connection && c.channel == channel && c.tag == tag)
                });
            }
            self.delete_if_unused(&name);
        }
    }

    /// A consumer acknowledged (or rejected without requeue) messages: it may take more.
    pub fn settled(&mut self, queue: &str) {
        self.dispatch(queue);
    }

    /// Puts messages back at the head of their queue, marked redelivered.
    pub fn requeue(&mut self, queue: &str, mut message: Message) {
        message.redelivered = true;
        if let Some(entry) = self.queues.get_mut(queue) {
            entry.messages.push_front(message);
        }
        self.dispatch(queue);
    }

    /// A channel closed: its consumers go.
    pub fn close_channel(&mut self, connection: ConnectionId, channel: u16) {
        let names: Vec<String> = self.queues.keys().cloned().collect();
        for name in names {
            if let Some(queue) = self.queues.get_mut(&name) {
                queue
                    .consumers
                    .retain(|c| !(c.connection == connection && c.channel == channel));
            }
            self.delete_if_unused(&name);
        }
    }

    /// A connection closed: its consumers go, and so do its exclusive queues.
    pub fn close_connection(&mut self, connection: ConnectionId) {
        let names: Vec<String> = self.queues.keys().cloned().collect();
        for name in names {
            let exclusive = self
                .queues
                .get(&name)
                .is_some_and(|q| q.owner == Some(connection));
            if exclusive {
                self.delete_queue(&name);
                continue;
            }
            if let Some(queue) = self.queues.get_mut(&name) {
                queue.consumers.retain(|c| c.connection != connection);
            }
            self.delete_if_unused(&name);
        }
    }

    fn delete_if_unused(&mut self, name: &str) {
        let unused = self
            .queues
            .get(name)
            .is_some_and(|q| q.auto_delete && q.had_consumers && q.consumers.is_empty());
        if unused {
            self.delete_queue(name);
        }
    }

    fn delete_queue(&mut self, name: &str) {
        if let Some(queue) = self.queues.remove(name) {
            for consumer in queue.consumers {
                // A consumer on another connection learns its queue is gone.
                let _ = consumer.deliver.send(Outbound::Cancelled {
                    channel: consumer.channel,
                    tag: consumer.tag,
                });
            }
        }
        for exchange in self.exchanges.values_mut() {
            exchange.bindings.retain(|(queue, _)| queue != name);
        }
    }

    fn usable_queue(
        &mut self,
        connection: ConnectionId,
        name: &str,
    ) -> Result<&mut Queue, Refusal> {
        let queue = self.queues.get_mut(name).ok_or_else(|| {
            Refusal::new(
                NOT_FOUND,
                format!("NOT_FOUND - no queue '{name}' in vhost '/'"),
            )
        })?;
        if queue.owner.is_some_and(|owner| owner != connection) {
            return Err(Refusal::new(
                RESOURCE_LOCKED,
                format!(
                    "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{name}' in vhost '/'"
                ),
            ));
        }
        Ok(queue)
    }

    /// Hands waiting messages to consumers with room, round robin.
    fn dispatch(&mut self, name: &str) {
        let Some(queue) = self.queues.get_mut(name) else {
            return;
        };
        let now = Instant::now();
        while !queue.messages.is_empty() && !queue.consumers.is_empty() {
            // Expired messages at the head are dropped, never delivered.
            if queue.messages.front().is_some_and(|m| m.expired(now)) {
                queue.messages.pop_front();
                continue;
            }
            let count = queue.consumers.len();
            let ready = (0..count)
                .map(|offset| (queue.next + offset) % count)
                .find(|&i| {
                    let c = &queue.consumers[i];
                    c.no_ack || c.prefetch == 0 || c.unacked.load(Ordering::Relaxed) < c.prefetch
                });
            let Some(index) = ready else { return };
            queue.next = (index + 1) % count;
            let Some(message) = queue.messages.pop_front() else {
                return;
            };
            let consumer = &queue.consumers[index];
            if !consumer.no_ack {
                consumer.unacked.fetch_add(1, Ordering::Relaxed);
            }
            let delivery = Delivery {
                channel: consumer.channel,
                consumer_tag: consumer.tag.clone(),
                queue: name.to_owned(),
                message,
                no_ack: consumer.no_ack,
                unacked: consumer.unacked.clone(),
            };
            if let Err(mpsc::error::SendError(Outbound::Deliver(undelivered))) =
                consumer.deliver.send(Outbound::Deliver(Box::new(delivery)))
            {
                // The connection is going away; it will remove its consumers.
                queue.consumers.remove(index);
                queue.messages.push_front(undelivered.message);
            }
        }
    }
}

/// A whole-number queue argument, whatever integer type the client sent it as.
fn integer_argument(arguments: &FieldTable, key: &str) -> Result<Option<i64>, Refusal> {
    let value = match arguments.inner().get(key) {
        None => return Ok(None),
        Some(AMQPValue::ShortShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortUInt(n)) => i64::from(*n),
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(other) => {
            return Err(Refusal::new(
                PRECONDITION_FAILED,
                format!("PRECONDITION_FAILED - invalid arg '{key}': {other:?}"),
            ));
        }
    };
    if value < 0 {
        return Err(Refusal::new(
            PRECONDITION_FAILED,
            format!("PRECONDITION_FAILED - invalid arg '{key}': {value} is negative"),
        ));
    }
    Ok(Some(value))
}

/// AMQP topic matching: words split by `.`, `*` matches one word, `#` zero or more.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    fn matches(pattern: &[&str], key: &[&str]) -> bool {
        match (pattern.first(), key.first()) {
            (None, None) => true,
            (Some(&"#"), _) => {
                matches(&pattern[1..], key) || (!key.is_empty() && matches(pattern, &key[1..]))
            }
            (Some(&"*"), Some(_)) => matches(&pattern[1..], &key[1..]),
            (Some(p), Some(k)) if p == k => matches(&pattern[1..], &key[1..]),
            _ => false,
        }
    }
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    };
    matches(&pattern, &key)
}

fn random_name() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..22)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
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
        let (a, ..) = vhost
            .declare_queue(1, "", false, false, false, &no_args)
            .unwrap();
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
        let (b, ..) = vhost
            .declare_queue(1, "", false, false, false, &no_args)
            .unwrap();
        assert!(
            !vhost.publish("", message(&b, 900)).unwrap().rejected,
            "a deleted queue gives its bytes back"
        );
    }

    #[test]
    fn topic_patterns_match_as_in_rabbitmq() {
        let cases = [
            ("presence.#", "presence.gw-1.hello", true),
            ("presence.#", "presence", true),
            ("presence.*.hello", "presence.gw-1.hello", true),
            ("presence.*.hello", "presence.gw-1.bye", false),
            ("presence.*", "presence.a.b", false),
            ("#", "anything.at.all", true),
            ("#.hello", "presence.gw.hello", true),
            ("a.#.z", "a.z", true),
            ("a.#.z", "a.b.c.z", true),
            ("a.*.z", "a.z", false),
            ("telemetry.#", "presence.x", false),
        ];
        for (pattern, key, expected) in cases {
            assert_eq!(topic_matches(pattern, key), expected, "{pattern} vs {key}");
        }
    }
}
