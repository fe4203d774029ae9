//! The queue class: queue.declare, bind, unbind, purge and delete, answered from the
//! vhost once the account may (see `access`).

use amq_protocol::protocol::{AMQPClass, queue};
use protocol::policy::{Permission, Resource};

use super::{ACCESS_REFUSED, Connection};
use crate::vhost::{QueueDeclare, Refusal, Vhost, server_named};

impl Connection {
    /// queue.declare. A name is chosen here for a queue declared without one, so that
    /// permission is checked on it, as RabbitMQ does; clients may not choose `amq.*`
    /// names, so nobody can declare a queue under a name the broker gives out.
    pub(super) fn queue_declare(
        &mut self,
        id: u16,
        declare: queue::Declare,
    ) -> Result<(), Refusal> {
        let name = match declare.queue.as_str() {
            "" if !declare.passive => server_named(),
            chosen if !declare.passive && chosen.starts_with("amq.") => {
                return Err(Refusal {
                    code: ACCESS_REFUSED,
                    text: format!(
                        "ACCESS_REFUSED - queue name '{chosen}' contains reserved prefix 'amq.*'"
                    ),
                });
            }
            chosen => chosen.to_owned(),
        };
        if !declare.passive {
            self.permit(Resource::Queue, &name, Permission::Configure)?;
        }
        let result = self.vhost().declare_queue(
            self.id,
            &QueueDeclare {
                name: &name,
                exclusive: declare.exclusive,
                auto_delete: declare.auto_delete,
                passive: declare.passive,
                arguments: &declare.arguments,
                quota: self.quota(|limits| limits.queues),
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
        self.may_bind(
            bind.queue.as_str(),
            bind.exchange.as_str(),
            bind.routing_key.as_str(),
        )?;
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
        self.may_bind(
            unbind.queue.as_str(),
            unbind.exchange.as_str(),
            unbind.routing_key.as_str(),
        )?;
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
        self.permit(Resource::Queue, purge.queue.as_str(), Permission::Read)?;
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
        self.permit(
            Resource::Queue,
            delete.queue.as_str(),
            Permission::Configure,
        )?;
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

    /// Binding (or unbinding) `queue` to `exchange` with `key`, in RabbitMQ's order:
    /// write on the queue, not the default exchange, read on the exchange, and for a
    /// topic exchange read on the key.
    fn may_bind(&self, queue: &str, exchange: &str, key: &str) -> Result<(), Refusal> {
        self.permit(Resource::Queue, queue, Permission::Write)?;
        Vhost::bindable_exchange(exchange)?;
        self.permit(Resource::Exchange, exchange, Permission::Read)?;
        self.permit_topic(exchange, key, Permission::Read)
    }
}
