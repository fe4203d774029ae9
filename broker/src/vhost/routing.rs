//! Routing: the exchanges (direct, fanout, topic, and the `amq.*` ones every vhost has),
//! their bindings to queues, and which queues a published message reaches.
//!
//! - here: declaring and deleting exchanges, binding and unbinding queues, routing.
//! - `bindings`: an exchange's bindings, indexed for its kind so a publish does not
//!   test every binding.
//! - `topic`: the trie of a topic exchange's keys, matched without backtracking.

mod bindings;
mod topic;

use std::collections::HashMap;

use self::bindings::Bindings;
use super::{ConnectionId, NOT_FOUND, PRECONDITION_FAILED, Refusal, Vhost};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
}

impl ExchangeKind {
    fn parse(kind: &str) -> Option<Self> {
        match kind {
            "direct" => Some(Self::Direct),
            "fanout" => Some(Self::Fanout),
            "topic" => Some(Self::Topic),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub(super) struct Exchange {
    kind: ExchangeKind,
    durable: bool,
    bindings: Bindings,
}

impl Exchange {
    fn new(kind: ExchangeKind, durable: bool) -> Self {
        Self {
            kind,
            durable,
            bindings: Bindings::new(kind),
        }
    }
}

/// The exchanges a new vhost starts with.
pub(super) fn standard_exchanges() -> HashMap<String, Exchange> {
    let mut exchanges = HashMap::new();
    for (name, kind) in [
        ("amq.direct", ExchangeKind::Direct),
        ("amq.fanout", ExchangeKind::Fanout),
        ("amq.topic", ExchangeKind::Topic),
    ] {
        exchanges.insert(name.to_owned(), Exchange::new(kind, true));
    }
    exchanges
}

impl Vhost {
    pub fn declare_exchange(
        &mut self,
        name: &str,
        kind: &str,
        durable: bool,
        passive: bool,
    ) -> Result<(), Refusal> {
        if let Some(existing) = self.exchanges.get(name) {
            if passive {
                return Ok(());
            }
            let same_kind = ExchangeKind::parse(kind) == Some(existing.kind);
            if !same_kind || existing.durable != durable {
                return Err(Refusal::new(
                    PRECONDITION_FAILED,
                    format!(
                        "PRECONDITION_FAILED - inequivalent arg 'type' or 'durable' for exchange '{name}' in vhost '/'"
                    ),
                ));
            }
            return Ok(());
        }
        if passive {
            return Err(Refusal::new(
                NOT_FOUND,
                format!("NOT_FOUND - no exchange '{name}' in vhost '/'"),
            ));
        }
        if name.starts_with("amq.") {
            return Err(Refusal::new(
                403,
                format!("ACCESS_REFUSED - exchange name '{name}' contains reserved prefix 'amq.*'"),
            ));
        }
        let kind = ExchangeKind::parse(kind).ok_or_else(|| {
            Refusal::new(
                503,
                format!("COMMAND_INVALID - unknown exchange type '{kind}'"),
            )
        })?;
        self.exchanges
            .insert(name.to_owned(), Exchange::new(kind, durable));
        Ok(())
    }

    pub fn delete_exchange(&mut self, name: &str, if_unused: bool) -> Result<(), Refusal> {
        if name.starts_with("amq.") || name.is_empty() {
            return Err(Refusal::new(
                403,
                format!(
                    "ACCESS_REFUSED - operation not permitted on the default exchange or 'amq.*' ('{name}')"
                ),
            ));
        }
        if if_unused
            && self
                .exchanges
                .get(name)
                .is_some_and(|e| !e.bindings.is_empty())
        {
            return Err(Refusal::new(
                PRECONDITION_FAILED,
                format!("PRECONDITION_FAILED - exchange '{name}' in vhost '/' in use"),
            ));
        }
        self.exchanges.remove(name);
        Ok(())
    }

    pub fn bind(
        &mut self,
        connection: ConnectionId,
        queue: &str,
        exchange: &str,
        key: &str,
    ) -> Result<(), Refusal> {
        self.usable_queue(connection, queue)?;
        let exchange_entry = self.exchanges.get_mut(exchange).ok_or_else(|| {
            Refusal::new(
                NOT_FOUND,
                format!("NOT_FOUND - no exchange '{exchange}' in vhost '/'"),
            )
        })?;
        exchange_entry.bindings.add(queue, key);
        Ok(())
    }

    pub fn unbind(
        &mut self,
        connection: ConnectionId,
        queue: &str,
        exchange: &str,
        key: &str,
    ) -> Result<(), Refusal> {
        self.usable_queue(connection, queue)?;
        if let Some(entry) = self.exchanges.get_mut(exchange) {
            entry.bindings.remove(queue, key);
        }
        Ok(())
    }

    /// The queues a message published to `exchange` with `routing_key` goes to, each
    /// once, in name order; the default exchange (`""`) routes to the queue so named.
    pub fn route(&self, exchange: &str, routing_key: &str) -> Result<Vec<String>, Refusal> {
        if exchange.is_empty() {
            return Ok(self
                .queues
                .contains_key(routing_key)
                .then(|| routing_key.to_owned())
                .into_iter()
                .collect());
        }
        let entry = self.exchanges.get(exchange).ok_or_else(|| {
            Refusal::new(
                NOT_FOUND,
                format!("NOT_FOUND - no exchange '{exchange}' in vhost '/'"),
            )
        })?;
        Ok(entry.bindings.route(routing_key))
    }

    /// A queue was deleted: its bindings go.
    pub(super) fn unbind_all(&mut self, queue: &str) {
        for exchange in self.exchanges.values_mut() {
            exchange.bindings.remove_queue(queue);
        }
    }
}
