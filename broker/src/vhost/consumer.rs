//! Consumers coming and going: basic.consume and basic.cancel, acks making room, and what
//! a closing channel or connection takes with it (its consumers, its exclusive queues).

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use super::{ConnectionId, Outbound, PRECONDITION_FAILED, Refusal, Vhost};
use crate::{
    admission::{Counted, Quota},
    outbox::Outbox,
};

/// What a basic.consume asks for.
#[derive(Debug)]
pub struct Consume<'a> {
    pub channel: u16,
    pub queue: &'a str,
    pub tag: String,
    pub no_ack: bool,
    /// The channel's basic.qos prefetch count; 0: unlimited.
    pub prefetch: u16,
    /// Where the consumer's connection hears of deliveries and cancellation.
    pub(crate) deliver: crate::pipe::Sender<Outbound>,
    /// A limited account's consumers are counted; one beyond its limit is refused.
    pub quota: Option<Quota<'a>>,
    /// The consumer's connection's outbox: no deliveries while it is full.
    pub outbox: Arc<Outbox>,
}

#[derive(Debug)]
pub(super) struct Consumer {
    connection: ConnectionId,
    pub(super) channel: u16,
    pub(super) tag: String,
    pub(super) no_ack: bool,
    /// 0: unlimited.
    prefetch: usize,
    pub(super) unacked: Arc<AtomicUsize>,
    pub(super) deliver: crate::pipe::Sender<Outbound>,
    pub(super) outbox: Arc<Outbox>,
    /// Its place among the consumers of its limited account.
    _counted: Option<Counted>,
}

impl Consumer {
    /// Whether it may take one more message now (prefetch).
    pub(super) fn has_room(&self) -> bool {
        self.no_ack || self.prefetch == 0 || self.unacked.load(Ordering::Relaxed) < self.prefetch
    }
}

impl Vhost {
    /// Adds a consumer; messages waiting in the queue start flowing to it.
    pub fn consume(
        &mut self,
        connection: ConnectionId,
        consume: Consume<'_>,
    ) -> Result<(), Refusal> {
        self.usable_queue(connection, consume.queue)?;
        // RabbitMQ 3.10 has no consumer limit; its later per-channel one
        // (`consumer_max_per_channel`) closes the connection (530). An account's consumers
        // are a count of what it holds, like its queues, so they are refused as queues
        // beyond `max-queues` are (406, closing the channel only), with the same words.
        let counted = match consume.quota {
            None => None,
            Some(Quota { user, max }) => {
                let queue = consume.queue;
                Some(self.consumer_tally.take(user, max).ok_or_else(|| {
                    Refusal::new(
                        PRECONDITION_FAILED,
                        format!(
                            "PRECONDITION_FAILED - cannot consume from queue '{queue}': \
                             consumer limit for user '{user}' ({max}) is reached"
                        ),
                    )
                })?)
            }
        };
        let entry = self.usable_queue(connection, consume.queue)?;
        entry.consumers.push(Consumer {
            connection,
            channel: consume.channel,
            tag: consume.tag,
            no_ack: consume.no_ack,
            prefetch: usize::from(consume.prefetch),
            unacked: Arc::default(),
            deliver: consume.deliver,
            outbox: consume.outbox,
            _counted: counted,
        });
        entry.had_consumers = true;
        self.dispatch(consume.queue);
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
}
