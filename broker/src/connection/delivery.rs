//! Messages going out: basic.qos, consume and cancel, basic.get, deliveries from the
//! vhost to consumers, their settling with ack, nack or reject, and basic.recover.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use amq_protocol::protocol::{AMQPClass, basic};
use protocol::policy::{Permission, Resource};

use super::{Connection, NOT_IMPLEMENTED, Settling, Transaction, Unacked};
use crate::vhost::{Consume, Delivery, PRECONDITION_FAILED, Refusal};

impl Connection {
    /// basic.qos: the prefetch count for this channel's later consumers.
    pub(super) fn basic_qos(&mut self, id: u16, qos: basic::Qos) -> Result<(), Refusal> {
        if let Some(channel) = self.channels.get_mut(&id) {
            channel.prefetch = qos.prefetch_count;
        }
        self.method(
            id,
            AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
        );
        Ok(())
    }

    pub(super) fn basic_consume(
        &mut self,
        id: u16,
        consume: basic::Consume,
    ) -> Result<(), Refusal> {
        self.permit(Resource::Queue, consume.queue.as_str(), Permission::Read)?;
        let tag = if consume.consumer_tag.as_str().is_empty() {
            format!("amq.ctag-{:016x}", fastrand::u64(..))
        } else {
            consume.consumer_tag.to_string()
        };
        let prefetch = self.channels.get(&id).map_or(0, |c| c.prefetch);
        let deliver = self.deliver.clone();
        let added = self.vhost().consume(
            self.id,
            Consume {
                channel: id,
                queue: consume.queue.as_str(),
                tag: tag.clone(),
                no_ack: consume.no_ack,
                prefetch,
                deliver,
                quota: self.quota(|limits| limits.consumers),
                outbox: self.outbox.clone(),
            },
        );
        // Deliveries reach this task through its channel, after this method is
        // handled, so consume-ok still goes out before the first of them.
        added.map(|()| {
            self.answer(
                id,
                consume.nowait,
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: tag.as_str().into(),
                })),
            );
        })
    }

    pub(super) fn basic_cancel(&mut self, id: u16, cancel: basic::Cancel) -> Result<(), Refusal> {
        self.vhost()
            .cancel(self.id, id, cancel.consumer_tag.as_str());
        self.answer(
            id,
            cancel.nowait,
            AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                consumer_tag: cancel.consumer_tag,
            })),
        );
        Ok(())
    }

    /// basic.get: one message, or get-empty.
    pub(super) fn basic_get(&mut self, id: u16, get: basic::Get) -> Result<(), Refusal> {
        self.permit(Resource::Queue, get.queue.as_str(), Permission::Read)?;
        let taken = self.vhost().get(self.id, get.queue.as_str())?;
        let Some((message, charge, remaining)) = taken else {
            self.method(
                id,
                AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
            );
            return Ok(());
        };
        let Some(channel) = self.channels.get_mut(&id) else {
            return Ok(());
        };
        // Unacknowledged, it stays counted until settled; else once it is written.
        let tag = channel.hand_out((!get.no_ack).then(|| Unacked {
            queue: get.queue.to_string(),
            message: message.clone(),
            counter: Arc::new(AtomicUsize::new(1)),
            charge,
        }));
        self.method(
            id,
            AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                delivery_tag: tag,
                redelivered: message.redelivered,
                exchange: message.exchange.as_str().into(),
                routing_key: message.routing_key.as_str().into(),
                message_count: remaining,
            })),
        );
        self.content(id, &message, false);
        Ok(())
    }

    pub(super) fn basic_ack(&mut self, id: u16, ack: basic::Ack) -> Result<(), Refusal> {
        self.settle(id, ack.delivery_tag, ack.multiple, false);
        Ok(())
    }

    pub(super) fn basic_nack(&mut self, id: u16, nack: basic::Nack) -> Result<(), Refusal> {
        self.settle(id, nack.delivery_tag, nack.multiple, nack.requeue);
        Ok(())
    }

    pub(super) fn basic_reject(&mut self, id: u16, reject: basic::Reject) -> Result<(), Refusal> {
        self.settle(id, reject.delivery_tag, false, reject.requeue);
        Ok(())
    }

    /// basic.recover (and the deprecated recover-async, which has no answer): every
    /// message the channel holds unacknowledged goes back to its queue, where it was,
    /// marked redelivered, to be delivered again. `requeue=false` (redeliver to the same
    /// consumer) is refused with 540, as RabbitMQ refuses it.
    pub(super) fn basic_recover(
        &mut self,
        id: u16,
        requeue: bool,
        answer: bool,
    ) -> Result<(), Refusal> {
        if !requeue {
            return Err(Refusal::new(
                NOT_IMPLEMENTED,
                "NOT_IMPLEMENTED - requeue=false",
            ));
        }
        let Some(channel) = self.channels.get_mut(&id) else {
            return Ok(());
        };
        let unacked = std::mem::take(&mut channel.unacked);
        {
            let mut vhost = self.vhost();
            for (_, entry) in unacked {
                entry.counter.fetch_sub(1, Ordering::Relaxed);
                vhost.requeue(&entry.queue, entry.message, entry.charge);
            }
        }
        if answer {
            self.method(
                id,
                AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
            );
        }
        Ok(())
    }

    /// A delivery that will not reach its consumer (its channel or connection is gone)
    /// goes back to its queue, unless it needed no acknowledgement.
    pub(super) fn give_back(&mut self, delivery: Delivery) {
        self.outbox.written(delivery.message.body.len());
        if !delivery.no_ack {
            delivery.unacked.fetch_sub(1, Ordering::Relaxed);
            self.vhost()
                .requeue(&delivery.queue, delivery.message, delivery.charge);
        }
    }

    /// A message the vhost handed to one of this connection's consumers: basic.deliver.
    /// Unacknowledged, it stays counted until settled; the copy encoded for the writer
    /// is counted until written.
    pub(super) fn deliver(&mut self, delivery: Delivery) {
        let Some(channel) = self.channels.get_mut(&delivery.channel) else {
            // The channel closed meanwhile.
            return self.give_back(delivery);
        };
        let Delivery {
            channel: id,
            consumer_tag,
            queue,
            message,
            no_ack,
            unacked,
            charge,
        } = delivery;
        let tag = channel.hand_out((!no_ack).then(|| Unacked {
            queue,
            message: message.clone(),
            counter: unacked,
            charge,
        }));
        self.method(
            id,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: consumer_tag.as_str().into(),
                delivery_tag: tag,
                redelivered: message.redelivered,
                exchange: message.exchange.as_str().into(),
                routing_key: message.routing_key.as_str().into(),
            })),
        );
        self.content(id, &message, true);
    }

    /// Acknowledges (or rejects) one delivery, or all up to it with `multiple`; in a
    /// transaction, at its commit.
    fn settle(&mut self, id: u16, tag: u64, multiple: bool, requeue: bool) {
        let Some(channel) = self.channels.get_mut(&id) else {
            return;
        };
        let settling = Settling {
            tag,
            multiple,
            requeue,
        };
        match channel.transaction.as_mut() {
            Some(transaction) if transaction.settlings.len() >= Transaction::MAX_SETTLINGS => {
                let refusal = Refusal::new(
                    PRECONDITION_FAILED,
                    format!(
                        "PRECONDITION_FAILED - a transaction holds at most {} acks, nacks and rejects: commit before settling more",
                        Transaction::MAX_SETTLINGS
                    ),
                );
                self.close_channel_with(id, &refusal, 60, 80);
            }
            Some(transaction) => transaction.settlings.push(settling),
            None => self.settle_now(id, settling),
        }
    }

    /// Carries out an ack, nack or reject on channel `id`.
    pub(super) fn settle_now(&mut self, id: u16, settling: Settling) {
        let Settling {
            tag,
            multiple,
            requeue,
        } = settling;
        let Some(channel) = self.channels.get_mut(&id) else {
            return;
        };
        let tags: Vec<u64> = if multiple {
            channel.unacked.range(..=tag).map(|(t, _)| *t).collect()
        } else {
            vec![tag]
        };
        let settled: Vec<Unacked> = tags
            .iter()
            .filter_map(|t| channel.unacked.remove(t))
            .collect();
        let mut vhost = self
            .vhost
            .lock()
            .expect("no code panics while holding the vhost lock");
        for entry in settled {
            entry.counter.fetch_sub(1, Ordering::Relaxed);
            if requeue {
                vhost.requeue(&entry.queue, entry.message, entry.charge);
            } else {
                // Settled: its bytes are uncounted.
                drop(entry.charge);
                vhost.settled(&entry.queue);
            }
        }
    }
}
