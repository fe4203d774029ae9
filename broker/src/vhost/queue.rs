//! Queues: their ready messages and the bytes they hold, their limits (`x-message-ttl`,
//! `x-max-length`, `x-max-length-bytes`, `x-overflow`), round-robin dispatch to their
//! consumers, and the vhost's queue methods: declare, get, purge, delete, requeue.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use amq_protocol::types::{AMQPValue, FieldTable};

use crate::admission::{Counted, Quota};

use super::{
    Charge, ConnectionId, Delivery, Message, NOT_FOUND, Outbound, PRECONDITION_FAILED,
    RESOURCE_LOCKED, Refusal, Vhost, consumer::Consumer,
};

/// What a queue.declare asks for.
#[derive(Debug, Clone, Copy)]
pub struct QueueDeclare<'a> {
    /// Empty: the broker names the queue.
    pub name: &'a str,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub passive: bool,
    pub arguments: &'a FieldTable,
    /// A limited account's queues are counted; a new one beyond its limit is refused.
    pub quota: Option<Quota<'a>>,
}

/// A queue's ready messages. Their bytes are added to the vhost's running total as they
/// come and taken off as they are dropped (the queue with them included), so the memory
/// limit is checked without walking every queue on each publish; a message taken out to
/// be delivered stays counted, by its [`Charge`], until it is settled or written.
#[derive(Debug, Default)]
struct Ready {
    messages: VecDeque<Message>,
    /// Bytes of this queue's messages.
    bytes: usize,
    /// How many messages the queue has taken in: the next one's position.
    taken_in: u64,
    /// Bytes held by all queues of the vhost, this one's included.
    held: Arc<AtomicUsize>,
}

impl Ready {
    fn counted(held: Arc<AtomicUsize>) -> Self {
        Self {
            messages: VecDeque::new(),
            bytes: 0,
            taken_in: 0,
            held,
        }
    }

    /// A new message, behind all the others.
    fn push_back(&mut self, mut message: Message) {
        self.count_in(message.body.len());
        message.position = self.taken_in;
        self.taken_in += 1;
        self.messages.push_back(message);
    }

    /// A message taken out before, back where it was: ahead of every message that came
    /// after it, behind those before it that are back too. (The queue's messages are
    /// always in the order of their positions.)
    fn put_back(&mut self, message: Message) {
        self.count_in(message.body.len());
        let at = self
            .messages
            .partition_point(|waiting| waiting.position < message.position);
        self.messages.insert(at, message);
    }

    /// The oldest message, dropped: its bytes are uncounted.
    fn pop_front(&mut self) -> Option<Message> {
        let message = self.messages.pop_front()?;
        self.count_out(message.body.len());
        Some(message)
    }

    /// The oldest message, taken out of the queue but not out of memory: its bytes are
    /// counted by the returned [`Charge`] from now on.
    fn take_front(&mut self) -> Option<(Message, Charge)> {
        let message = self.messages.pop_front()?;
        let bytes = message.body.len();
        self.bytes -= bytes;
        let charge = Charge {
            held: self.held.clone(),
            bytes,
        };
        Some((message, charge))
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

/// A queue's limits, from its declare arguments.
#[derive(Debug, Default)]
struct Limits {
    /// `x-message-ttl`.
    ttl: Option<Duration>,
    /// `x-max-length` and `x-max-length-bytes` (bodies only, as RabbitMQ counts); beyond
    /// either the oldest messages are dropped, or with `x-overflow: reject-publish` the
    /// new one is refused.
    max_length: Option<usize>,
    max_bytes: Option<usize>,
    reject_publish: bool,
}

impl Limits {
    fn parse(queue: &str, arguments: &FieldTable) -> Result<Self, Refusal> {
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
                        "PRECONDITION_FAILED - invalid arg 'x-overflow' for queue '{queue}': {other:?}"
                    ),
                ));
            }
        };
        Ok(Self {
            ttl,
            max_length,
            max_bytes,
            reject_publish,
        })
    }
}

/// What a queue did with a message offered to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Offer {
    Taken,
    /// Full, with `x-overflow: reject-publish`.
    Refused,
    /// It can never fit: a limit of zero, or a body larger than the byte limit.
    Dropped,
}

#[derive(Debug, Default)]
pub(super) struct Queue {
    pub(super) owner: Option<ConnectionId>,
    auto_delete: bool,
    limits: Limits,
    messages: Ready,
    pub(super) consumers: Vec<Consumer>,
    /// Round-robin position among consumers.
    next: usize,
    /// Auto-delete queues go when their last consumer leaves, once they had one.
    pub(super) had_consumers: bool,
    /// Its place among the queues of the limited account that declared it.
    _counted: Option<Counted>,
}

impl Queue {
    /// How long a message may wait here: its own `expiration` or the queue's
    /// `x-message-ttl`, whichever is sooner.
    pub(super) fn ttl_for(&self, per_message: Option<Duration>) -> Option<Duration> {
        match (per_message, self.limits.ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes a message in within the queue's limits: dropping the oldest to make room,
    /// or with `x-overflow: reject-publish` refusing the new one.
    pub(super) fn offer(&mut self, message: Message) -> Offer {
        let bytes = message.body.len();
        if self.full_for(bytes) {
            if self.limits.reject_publish {
                return Offer::Refused;
            }
            while !self.messages.is_empty() && self.full_for(bytes) {
                self.messages.pop_front();
            }
            if self.full_for(bytes) {
                return Offer::Dropped;
            }
        }
        self.messages.push_back(message);
        Offer::Taken
    }

    /// Whether a message of `bytes` would take the queue past a limit.
    fn full_for(&self, bytes: usize) -> bool {
        self.limits
            .max_length
            .is_some_and(|max| self.messages.len() >= max)
            || self
                .limits
                .max_bytes
                .is_some_and(|max| self.messages.bytes + bytes > max)
    }

    /// Whether the queue should go: auto-delete, and its last consumer left.
    pub(super) fn unused(&self) -> bool {
        self.auto_delete && self.had_consumers && self.consumers.is_empty()
    }

    /// Hands waiting messages to consumers with room, round robin; `name` is this
    /// queue's, for the deliveries.
    fn dispatch(&mut self, name: &str) {
        let now = Instant::now();
        while !self.messages.is_empty() && !self.consumers.is_empty() {
            // Expired messages at the head are dropped, never delivered.
            if self.messages.front().is_some_and(|m| m.expired(now)) {
                self.messages.pop_front();
                continue;
            }
            let count = self.consumers.len();
            // A consumer at its prefetch, or whose connection's outbox is full (its peer
            // reads slowly, or not at all), is passed over; the others go on.
            let ready = (0..count)
                .map(|offset| (self.next + offset) % count)
                .find(|&i| {
                    let consumer = &self.consumers[i];
                    consumer.has_room() && consumer.outbox.room_for(name)
                });
            let Some(index) = ready else { return };
            self.next = (index + 1) % count;
            let Some((message, charge)) = self.messages.take_front() else {
                return;
            };
            let consumer = &self.consumers[index];
            // The body's bytes are reserved in the connection's outbox until written.
            let bytes = message.body.len();
            consumer.outbox.add(bytes);
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
                charge,
            };
            if let Err(Outbound::Deliver(undelivered)) =
                consumer.deliver.send(Outbound::Deliver(Box::new(delivery)))
            {
                // The connection is going away; it will remove its consumers.
                consumer.outbox.written(bytes);
                self.consumers.remove(index);
                self.messages.put_back(undelivered.message);
            }
        }
    }
}

impl Vhost {
    /// Declares a queue (a broker-named one if the name is empty); returns its name and
    /// message and consumer counts.
    pub fn declare_queue(
        &mut self,
        connection: ConnectionId,
        declare: &QueueDeclare<'_>,
    ) -> Result<(String, u32, u32), Refusal> {
        let QueueDeclare {
            name,
            exclusive,
            auto_delete,
            passive,
            arguments,
            quota,
        } = *declare;
        let name = if name.is_empty() {
            if passive {
                return Err(Refusal::new(
                    NOT_FOUND,
                    "NOT_FOUND - no queue '' in vhost '/'",
                ));
            }
            server_named()
        } else {
            name.to_owned()
        };
        classic_only(&name, arguments)?;
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
        let limits = Limits::parse(&name, arguments)?;
        // RabbitMQ 3.10 limits queues per vhost (`max-queues`), not per user; a device's
        // queues are refused with its answer and text (406, closing the channel), naming
        // the user instead of the vhost.
        let counted = match quota {
            None => None,
            Some(Quota { user, max }) => {
                Some(self.queue_tally.take(user, max).ok_or_else(|| {
                    Refusal::new(
                        PRECONDITION_FAILED,
                        format!(
                            "PRECONDITION_FAILED - cannot declare queue '{name}': queue limit for \
                         user '{user}' ({max}) is reached"
                        ),
                    )
                })?)
            }
        };
        self.queues.insert(
            name.clone(),
            Queue {
                owner,
                auto_delete,
                limits,
                messages: Ready::counted(self.held.clone()),
                _counted: counted,
                ..Queue::default()
            },
        );
        Ok((name, 0, 0))
    }

    /// Takes one message off a queue (basic.get); returns it, its charge (its bytes
    /// still count until it is settled), and how many remain.
    pub fn get(
        &mut self,
        connection: ConnectionId,
        name: &str,
    ) -> Result<Option<(Message, Charge, u32)>, Refusal> {
        let queue = self.usable_queue(connection, name)?;
        let now = Instant::now();
        while let Some((message, charge)) = queue.messages.take_front() {
            if !message.expired(now) {
                return Ok(Some((message, charge, queue.messages.len() as u32)));
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

    /// Puts a message back in its queue where it was among the others (RabbitMQ's
    /// order, whatever order messages come back in), marked redelivered: counted by the
    /// queue again instead of by its charge. If the queue is gone, so is the message.
    pub fn requeue(&mut self, queue: &str, mut message: Message, charge: Charge) {
        message.redelivered = true;
        if let Some(entry) = self.queues.get_mut(queue) {
            entry.messages.put_back(message);
        }
        drop(charge);
        self.dispatch(queue);
    }

    /// Deletes an auto-delete queue whose last consumer left.
    pub(super) fn delete_if_unused(&mut self, name: &str) {
        if self.queues.get(name).is_some_and(Queue::unused) {
            self.delete_queue(name);
        }
    }

    /// Deletes a queue and its bindings; consumers on other connections are told.
    pub(super) fn delete_queue(&mut self, name: &str) {
        if let Some(queue) = self.queues.remove(name) {
            for consumer in queue.consumers {
                // A consumer on another connection learns its queue is gone.
                let _ = consumer.deliver.send(Outbound::Cancelled {
                    channel: consumer.channel,
                    tag: consumer.tag,
                });
            }
        }
        self.unbind_all(name);
    }

    /// The queue so named, if it exists and this connection may use it.
    pub(super) fn usable_queue(
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

    /// Hands a queue's waiting messages to its consumers with room.
    pub fn dispatch(&mut self, name: &str) {
        if let Some(queue) = self.queues.get_mut(name) {
            queue.dispatch(name);
        }
    }
}

/// Refuses a queue type other than classic (`x-queue-type`), new or redeclared, as
/// RabbitMQ refuses a type it does not know (406, closing the channel): this broker is
/// one process, and has nothing to replicate a quorum queue to. Silently declaring a
/// classic queue instead would let a server believe its queues survive a node.
fn classic_only(queue: &str, arguments: &FieldTable) -> Result<(), Refusal> {
    match arguments.inner().get("x-queue-type") {
        None => Ok(()),
        Some(AMQPValue::LongString(kind)) if kind.as_bytes() == b"classic" => Ok(()),
        Some(other) => {
            let kind = match other {
                AMQPValue::LongString(kind) => {
                    String::from_utf8_lossy(kind.as_bytes()).into_owned()
                }
                other => format!("{other:?}"),
            };
            Err(Refusal::new(
                PRECONDITION_FAILED,
                format!(
                    "PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue '{queue}' in vhost '/': \
                     '{kind}': the embedded broker has classic queues only ({kind} queues need RabbitMQ)"
                ),
            ))
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

/// A name for a queue declared without one: `amq.gen-` and 22 random characters, as
/// RabbitMQ names them. Clients may not declare `amq.*` names themselves.
pub fn server_named() -> String {
    format!("amq.gen-{}", random_name())
}

fn random_name() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..22)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}
