//! The tx class, as RabbitMQ has it: after tx.select a channel's publishes, acks, nacks
//! and rejects wait until tx.commit carries them out, in the order they came (mandatory
//! returns before the commit-ok), or tx.rollback forgets them (the deliveries stay
//! unacknowledged); a channel that closes forgets them too. A channel is in tx mode or
//! in confirm mode, never both (406, as RabbitMQ answers).

use amq_protocol::protocol::{AMQPClass, tx};

use super::{Connection, Transaction};
use crate::vhost::{PRECONDITION_FAILED, Refusal};

impl Connection {
    pub(super) fn tx_select(&mut self, id: u16) -> Result<(), Refusal> {
        let Some(channel) = self.channels.get_mut(&id) else {
            return Ok(());
        };
        if channel.confirm {
            return Err(Refusal::new(
                PRECONDITION_FAILED,
                "PRECONDITION_FAILED - cannot switch from confirm to tx mode",
            ));
        }
        channel.transaction.get_or_insert_with(Box::default);
        self.method(id, AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})));
        Ok(())
    }

    pub(super) fn tx_commit(&mut self, id: u16) -> Result<(), Refusal> {
        let pending = self.take_transaction(id)?;
        for (message, mandatory, charge) in pending.publishes {
            // Uncounted here: routing counts it again, in its queues.
            drop(charge);
            if self.route(id, message, mandatory).is_none() {
                // The channel closed for a refused publish: the rest goes with it.
                return Ok(());
            }
        }
        for settling in pending.settlings {
            self.settle_now(id, settling);
        }
        self.method(id, AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})));
        Ok(())
    }

    pub(super) fn tx_rollback(&mut self, id: u16) -> Result<(), Refusal> {
        self.take_transaction(id)?;
        self.method(
            id,
            AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
        );
        Ok(())
    }

    /// What channel `id`'s transaction holds, leaving it empty (the channel stays in tx
    /// mode); 406 if the channel is not transactional.
    fn take_transaction(&mut self, id: u16) -> Result<Transaction, Refusal> {
        let Some(channel) = self.channels.get_mut(&id) else {
            return Ok(Transaction::default());
        };
        match channel.transaction.as_mut() {
            Some(transaction) => Ok(std::mem::take(&mut **transaction)),
            None => Err(Refusal::new(
                PRECONDITION_FAILED,
                "PRECONDITION_FAILED - channel is not transactional",
            )),
        }
    }
}
