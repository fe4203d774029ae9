//! The exchange class: exchange.declare and exchange.delete, answered from the vhost
//! once the account may (configure on the exchange; a passive declare is not checked),
//! and exchange.bind and unbind (write on the destination, read on the source and, for
//! a topic source, on the key: RabbitMQ's checks in its order). Refusals for the name
//! or type alone come first, as in RabbitMQ.

use amq_protocol::protocol::{AMQPClass, exchange};
use protocol::policy::{Permission, Resource};

use super::Connection;
use crate::vhost::{Refusal, Vhost};

impl Connection {
    pub(super) fn exchange_declare(
        &mut self,
        id: u16,
        declare: exchange::Declare,
    ) -> Result<(), Refusal> {
        let name = declare.exchange.as_str();
        if !declare.passive {
            Vhost::declarable_exchange(name, declare.kind.as_str())?;
            self.permit(Resource::Exchange, name, Permission::Configure)?;
        }
        let durable = declare.durable;
        let result = self.vhost().declare_exchange(
            declare.exchange.as_str(),
            declare.kind.as_str(),
            durable,
            declare.auto_delete,
            declare.passive,
        );
        result.map(|()| {
            self.answer(
                id,
                declare.nowait,
                AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {})),
            );
        })
    }

    pub(super) fn exchange_delete(
        &mut self,
        id: u16,
        delete: exchange::Delete,
    ) -> Result<(), Refusal> {
        let name = delete.exchange.as_str();
        Vhost::undeletable_exchange(name)?;
        self.permit(Resource::Exchange, name, Permission::Configure)?;
        let result = self.vhost().delete_exchange(name, delete.if_unused);
        result.map(|()| {
            self.answer(
                id,
                delete.nowait,
                AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
            );
        })
    }

    pub(super) fn exchange_bind(&mut self, id: u16, bind: exchange::Bind) -> Result<(), Refusal> {
        let (destination, source, key) = (
            bind.destination.as_str(),
            bind.source.as_str(),
            bind.routing_key.as_str(),
        );
        self.may_bind_exchange(destination, source, key)?;
        let result = self.vhost().bind_exchange(destination, source, key);
        result.map(|()| {
            self.answer(
                id,
                bind.nowait,
                AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
            );
        })
    }

    pub(super) fn exchange_unbind(
        &mut self,
        id: u16,
        unbind: exchange::Unbind,
    ) -> Result<(), Refusal> {
        let (destination, source, key) = (
            unbind.destination.as_str(),
            unbind.source.as_str(),
            unbind.routing_key.as_str(),
        );
        self.may_bind_exchange(destination, source, key)?;
        let result = self.vhost().unbind_exchange(destination, source, key);
        result.map(|()| {
            self.answer(
                id,
                unbind.nowait,
                AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})),
            );
        })
    }

    /// Binding (or unbinding) exchange `destination` to `source` with `key`, in
    /// RabbitMQ's order: write on the destination, neither the default exchange, read on
    /// the source, and for a topic source read on the key.
    fn may_bind_exchange(&self, destination: &str, source: &str, key: &str) -> Result<(), Refusal> {
        self.permit(Resource::Exchange, destination, Permission::Write)?;
        Vhost::bindable_exchange(destination)?;
        Vhost::bindable_exchange(source)?;
        self.permit(Resource::Exchange, source, Permission::Read)?;
        self.permit_topic(source, key, Permission::Read)
    }
}
