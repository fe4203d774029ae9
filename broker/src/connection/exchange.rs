//! The exchange class: exchange.declare and exchange.delete, answered from the vhost
//! once the account may (configure on the exchange; a passive declare is not checked).
//! Refusals for the name or type alone come first, as in RabbitMQ.

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
}
