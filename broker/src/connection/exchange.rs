//! The exchange class: exchange.declare and exchange.delete, answered from the vhost.

use amq_protocol::protocol::{AMQPClass, exchange};

use super::Connection;
use crate::vhost::Refusal;

impl Connection {
    pub(super) fn exchange_declare(
        &mut self,
        id: u16,
        declare: exchange::Declare,
    ) -> Result<(), Refusal> {
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
        let result = self
            .vhost()
            .delete_exchange(delete.exchange.as_str(), delete.if_unused);
        result.map(|()| {
            self.answer(
                id,
                delete.nowait,
                AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
            );
        })
    }
}
