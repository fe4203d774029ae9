//! Publishing: basic.publish and the content header and body frames that follow it,
//! reassembled into a message and routed; a message larger than `max_message_size`, or
//! one the account may not publish (see `access`), refused by its header, so the body
//! of a refused message is never kept; mandatory returns; publisher confirms
//! (confirm.select, then an ack or nack for each publish).

use std::sync::Arc;

use amq_protocol::{
    frame::AMQPContentHeader,
    protocol::{AMQPClass, BasicProperties, basic, confirm},
};

use protocol::policy::{Permission, Resource};

use super::{COMMAND_INVALID, Connection, FRAME_ERROR, Fatal, NO_ROUTE, Publishing, Transaction};
use crate::vhost::{Charge, Message, NOT_FOUND, PRECONDITION_FAILED, Refusal};

impl Connection {
    /// basic.publish: the content frames that follow make the message.
    pub(super) fn basic_publish(
        &mut self,
        id: u16,
        publish: basic::Publish,
    ) -> Result<(), Refusal> {
        if let Some(channel) = self.channels.get_mut(&id) {
            channel.publishing = Some(Box::new(Publishing {
                method: publish,
                properties: BasicProperties::default(),
                size: 0,
                body: Vec::new(),
                header_seen: false,
            }));
        }
        Ok(())
    }

    pub(super) fn confirm_select(
        &mut self,
        id: u16,
        select: confirm::Select,
    ) -> Result<(), Refusal> {
        if let Some(channel) = self.channels.get_mut(&id) {
            if channel.transaction.is_some() {
                return Err(Refusal::new(
                    PRECONDITION_FAILED,
                    "PRECONDITION_FAILED - cannot switch from tx to confirm mode",
                ));
            }
            channel.confirm = true;
        }
        self.answer(
            id,
            select.nowait,
            AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
        );
        Ok(())
    }

    pub(super) fn content_header(
        &mut self,
        id: u16,
        header: AMQPContentHeader,
    ) -> Result<(), Fatal> {
        let Some(publishing) = self
            .channels
            .get_mut(&id)
            .and_then(|c| c.publishing.as_mut())
        else {
            self.close(
                COMMAND_INVALID,
                "COMMAND_INVALID - content header without basic.publish",
                60,
                40,
            );
            return Err(Fatal);
        };
        let exchange = publishing.method.exchange.to_string();
        let key = publishing.method.routing_key.to_string();
        let max = self.config.max_message_size;
        if header.body_size > max {
            // Refused before a byte of it is kept; the body that follows is dropped
            // unread while the channel closes.
            let refusal = Refusal {
                code: PRECONDITION_FAILED,
                text: format!(
                    "PRECONDITION_FAILED - message size {} is larger than configured max size {max}",
                    header.body_size
                ),
            };
            self.close_channel_with(id, &refusal, 60, 40);
            return Ok(());
        }
        if let Err(refusal) = self.may_publish(&exchange, &key, &header.properties) {
            self.close_channel_with(id, &refusal, 60, 40);
            return Ok(());
        }
        let Some(publishing) = self
            .channels
            .get_mut(&id)
            .and_then(|c| c.publishing.as_mut())
        else {
            return Ok(());
        };
        publishing.properties = header.properties;
        publishing.size = header.body_size;
        publishing.header_seen = true;
        if header.body_size == 0 {
            self.finish_publish(id);
        }
        Ok(())
    }

    /// RabbitMQ's checks of a publish, in its order, once its properties are known:
    /// write on the exchange, that the exchange exists, the topic permission on the
    /// routing key, the `user_id`.
    fn may_publish(
        &self,
        exchange: &str,
        key: &str,
        properties: &BasicProperties,
    ) -> Result<(), Refusal> {
        self.permit(Resource::Exchange, exchange, Permission::Write)?;
        if !exchange.is_empty() && self.vhost().exchange_is_topic(exchange).is_none() {
            return Err(Refusal {
                code: NOT_FOUND,
                text: format!("NOT_FOUND - no exchange '{exchange}' in vhost '/'"),
            });
        }
        self.permit_topic(exchange, key, Permission::Write)?;
        self.check_user_id(properties)
    }

    pub(super) fn content_body(&mut self, id: u16, body: Vec<u8>) -> Result<(), Fatal> {
        let Some(publishing) = self
            .channels
            .get_mut(&id)
            .and_then(|c| c.publishing.as_mut())
            .filter(|p| p.header_seen)
        else {
            self.close(
                COMMAND_INVALID,
                "COMMAND_INVALID - content body without a header",
                60,
                40,
            );
            return Err(Fatal);
        };
        publishing.body.extend_from_slice(&body);
        if publishing.body.len() as u64 > publishing.size {
            self.close(
                FRAME_ERROR,
                "FRAME_ERROR - body larger than announced",
                60,
                40,
            );
            return Err(Fatal);
        }
        if publishing.body.len() as u64 == publishing.size {
            self.finish_publish(id);
        }
        Ok(())
    }

    /// A whole message arrived: route it, return it if unroutable and mandatory, and
    /// confirm it (the return goes first, as in RabbitMQ).
    fn finish_publish(&mut self, id: u16) {
        let Some(channel) = self.channels.get_mut(&id) else {
            return;
        };
        let Some(publishing) = channel.publishing.take() else {
            return;
        };
        let publishing = *publishing;
        let message = Message {
            exchange: publishing.method.exchange.to_string(),
            routing_key: publishing.method.routing_key.to_string(),
            properties: publishing.properties,
            body: Arc::new(publishing.body),
            redelivered: false,
            position: 0,
            expires_at: None,
        };
        if let Some(transaction) = channel.transaction.as_mut() {
            // Routed at tx.commit, if it comes; counted against the memory limit meanwhile.
            let bytes = message.body.len();
            let refusal = if transaction.publishes.len() >= Transaction::MAX_MESSAGES
                || transaction.bytes + bytes > Transaction::MAX_BYTES
            {
                Some(format!(
                    "PRECONDITION_FAILED - a transaction holds at most {} messages and {} MiB: commit before publishing more",
                    Transaction::MAX_MESSAGES,
                    Transaction::MAX_BYTES >> 20
                ))
            } else if !self.vhost().has_room_for(bytes) {
                Some("PRECONDITION_FAILED - the broker's memory limit is reached: the transaction cannot hold more".to_owned())
            } else {
                None
            };
            if let Some(text) = refusal {
                self.close_channel_with(id, &Refusal::new(PRECONDITION_FAILED, text), 60, 40);
                return;
            }
            let charge = Charge::new(&self.held, bytes);
            if let Some(transaction) = self
                .channels
                .get_mut(&id)
                .and_then(|channel| channel.transaction.as_mut())
            {
                transaction.bytes += bytes;
                transaction
                    .publishes
                    .push((message, publishing.method.mandatory, charge));
            }
            return;
        }
        let confirm = channel.confirm.then(|| {
            channel.published += 1;
            channel.published
        });
        let Some(rejected) = self.route(id, message, publishing.method.mandatory) else {
            return;
        };
        if let Some(tag) = confirm {
            let answer = if rejected {
                // A full queue with reject-publish refused it: the publisher must know.
                basic::AMQPMethod::Nack(basic::Nack {
                    delivery_tag: tag,
                    multiple: false,
                    requeue: false,
                })
            } else {
                basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: tag,
                    multiple: false,
                })
            };
            self.method(id, AMQPClass::Basic(answer));
        }
    }

    /// Routes a message published on channel `id`, returning it first if it is
    /// unroutable and `mandatory`. Whether a full queue refused it; `None` if the
    /// publish was refused (its exchange is gone) and the channel closed for it.
    pub(super) fn route(&mut self, id: u16, message: Message, mandatory: bool) -> Option<bool> {
        let routed = self.vhost().publish(&message.exchange, message.clone());
        match routed {
            Ok(routed) if routed.queues == 0 && mandatory => {
                self.method(
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                        reply_code: NO_ROUTE,
                        reply_text: "NO_ROUTE".into(),
                        exchange: message.exchange.as_str().into(),
                        routing_key: message.routing_key.as_str().into(),
                    })),
                );
                self.content(id, &message, false);
                Some(false)
            }
            Ok(routed) => Some(routed.rejected),
            Err(refusal) => {
                self.close_channel_with(id, &refusal, 60, 40);
                None
            }
        }
    }
}
