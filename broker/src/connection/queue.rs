//! The queue class: queue.declare, bind, unbind, purge and delete, answered from the
//! vhost.

use amq_protocol::protocol::{AMQPClass, queue};

use super::Connection;
use crate::vhost::{QueueDeclare, Refusal};

impl Connection {
    pub(super) fn queue_declare(
        &mut self,
        id: u16,
        declare: queue::Declare,
    ) -> Result<(), Refusal> {
        let result = self.vhost().declare_queue(
            self.id,
            &QueueDeclare {
                name: declare.queue.as_str(),
                exclusive: declare.exclusive,
                auto_delete: declare.auto_delete,
                passive: declare.passive,
                arguments: &declare.arguments,
            },
        );
        result.map(|(name, messages, consumers)| {
            self.answer(
                id,
                declare.nowait,
                AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                    queue: name.into(),
                    message_count: messages,
                    consumer_count: consumers,
                })),
            );
        })
    }

    pub(super) fn queue_bind(&mut self, id: u16, bind: queue::Bind) -> Result<(), Refusal> {
        let result = self.vhost().bind(
            self.id,
            bind.queue.as_str(),
            bind.exchange.as_str(),
            bind.routing_key.as_str(),
        );
        result.map(|()| {
            self.answer(
                id,
                bind.nowait,
                AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
            );
        })
    }

    /// queue.unbind, which has no `nowait`.
    pub(super) fn queue_unbind(&mut self, id: u16, unbind: queue::Unbind) -> Result<(), Refusal> {
        let result = self.vhost().unbind(
            self.id,
            unbind.queue.as_str(),
            unbind.exchange.as_str(),
            unbind.routing_key.as_str(),
        );
        result.map(|()| {
            self.method(
                id,
                AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
            )
        })
    }

    pub(super) fn queue_purge(&mut self, id: u16, purge: queue::Purge) -> Result<(), Refusal> {
        let result = self.vhost().purge(self.id, purge.queue.as_str());
        result.map(|count| {
            self.answer(
                id,
                purge.nowait,
                AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                    message_count: count,
                })),
            );
        })
    }

    pub(super) fn queue_delete(&mut self, id: u16, delete: queue::Delete) -> Result<(), Refusal> {
        let result = self.vhost().delete(
            self.id,
            delete.queue.as_str(),
            delete.if_unused,
            delete.if_empty,
        );
        result.map(|count| {
            self.answer(
                id,
                delete.nowait,
                AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                    message_count: count,
                })),
            );
        })
    }
}
