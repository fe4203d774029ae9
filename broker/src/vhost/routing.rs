//! Routing: the exchanges (direct, fanout, topic, and the `amq.*` ones every vhost has),
//! their bindings to queues and to other exchanges (RabbitMQ's exchange.bind), and which
//! queues a published message reaches.
//!
//! - here: declaring and deleting exchanges, binding and unbinding queues and
//!   exchanges, routing (through exchange-to-exchange bindings too, each exchange
//!   visited once, so a cycle of bindings ends); an auto-delete exchange deleted with
//!   its last binding (unbound, or its queue or destination exchange deleted), as in
//!   RabbitMQ.
//! - `bindings`: an exchange's bindings, indexed for its kind so a publish does not
//!   test every binding.
//! - `topic`: the trie of a topic exchange's keys, matched without backtracking.

mod bindings;
mod topic;

use std::collections::HashMap;

use self::bindings::Bindings;
use super::{
    ACCESS_REFUSED, COMMAND_INVALID, ConnectionId, NOT_FOUND, PRECONDITION_FAILED, Refusal, Vhost,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
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
    /// Deleted when its last binding (to a queue or an exchange) goes, as in RabbitMQ.
    auto_delete: bool,
    /// To queues.
    bindings: Bindings,
    /// To other exchanges (this one the source), indexed the same way by their names.
    to_exchanges: Bindings,
}

impl Exchange {
    /// Auto-delete, and bound to nothing any more.
    fn unused_auto_delete(&self) -> bool {
        self.auto_delete && self.bindings.is_empty() && self.to_exchanges.is_empty()
    }

    fn new(kind: ExchangeKind, durable: bool) -> Self {
        Self {
            kind,
            durable,
            auto_delete: false,
            bindings: Bindings::new(kind),
            to_exchanges: Bindings::new(kind),
        }
    }
}

fn no_exchange(name: &str) -> Refusal {
    Refusal::new(
        NOT_FOUND,
        format!("NOT_FOUND - no exchange '{name}' in vhost '/'"),
    )
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

/// RabbitMQ's refusal of declaring, deleting or binding to the default exchange.
fn default_exchange_refused() -> Refusal {
    Refusal::new(
        ACCESS_REFUSED,
        "ACCESS_REFUSED - operation not permitted on the default exchange",
    )
}

impl Vhost {
    /// What a non-passive exchange.declare is refused for before permissions are
    /// checked, as in RabbitMQ: an unknown type (503 COMMAND_INVALID, which closes the
    /// connection), the default exchange. The type it names otherwise.
    pub fn declarable_exchange(name: &str, kind: &str) -> Result<ExchangeKind, Refusal> {
        let kind = ExchangeKind::parse(kind).ok_or_else(|| {
            Refusal::new(
                COMMAND_INVALID,
                format!("COMMAND_INVALID - unknown exchange type '{kind}'"),
            )
        })?;
        if name.is_empty() {
            return Err(default_exchange_refused());
        }
        Ok(kind)
    }

    /// Declares an exchange (or, `passive`, checks that it exists). `auto_delete`: it goes
    /// when its last binding goes (one that never had a binding stays), as in RabbitMQ.
    pub fn declare_exchange(
        &mut self,
        name: &str,
        kind: &str,
        durable: bool,
        auto_delete: bool,
        passive: bool,
    ) -> Result<(), Refusal> {
        if passive {
            if name.is_empty() {
                return Err(default_exchange_refused());
            }
            if !self.exchanges.contains_key(name) {
                return Err(Refusal::new(
                    NOT_FOUND,
                    format!("NOT_FOUND - no exchange '{name}' in vhost '/'"),
                ));
            }
            return Ok(());
        }
        let kind = Self::declarable_exchange(name, kind)?;
        if let Some(existing) = self.exchanges.get(name) {
            if existing.kind != kind || existing.durable != durable {
                return Err(Refusal::new(
                    PRECONDITION_FAILED,
                    format!(
                        "PRECONDITION_FAILED - inequivalent arg 'type' or 'durable' for exchange '{name}' in vhost '/'"
                    ),
                ));
            }
            return Ok(());
        }
        if name.starts_with("amq.") {
            return Err(Refusal::new(
                ACCESS_REFUSED,
                format!("ACCESS_REFUSED - exchange name '{name}' contains reserved prefix 'amq.*'"),
            ));
        }
        let mut exchange = Exchange::new(kind, durable);
        exchange.auto_delete = auto_delete;
        self.exchanges.insert(name.to_owned(), exchange);
        Ok(())
    }

    /// Whether deleting the exchange is refused for its name alone (the default one,
    /// `amq.*`): RabbitMQ says so before it checks permissions.
    pub fn undeletable_exchange(name: &str) -> Result<(), Refusal> {
        if name.is_empty() {
            return Err(default_exchange_refused());
        }
        if name.starts_with("amq.") {
            return Err(Refusal::new(
                ACCESS_REFUSED,
                format!(
                    "ACCESS_REFUSED - deletion of system exchange '{name}' in vhost '/' not allowed"
                ),
            ));
        }
        Ok(())
    }

    pub fn delete_exchange(&mut self, name: &str, if_unused: bool) -> Result<(), Refusal> {
        Self::undeletable_exchange(name)?;
        if if_unused
            && self
                .exchanges
                .get(name)
                .is_some_and(|e| !e.bindings.is_empty() || !e.to_exchanges.is_empty())
        {
            return Err(Refusal::new(
                PRECONDITION_FAILED,
                format!("PRECONDITION_FAILED - exchange '{name}' in vhost '/' in use"),
            ));
        }
        self.remove_exchange(name);
        Ok(())
    }

    /// Removes an exchange, and the bindings of other exchanges to it; an auto-delete
    /// exchange that loses its last binding so goes too.
    fn remove_exchange(&mut self, name: &str) {
        self.exchanges.remove(name);
        self.unbind_everywhere(name, |exchange| &mut exchange.to_exchanges);
    }

    /// Removes every binding to `destination` from the bindings `of` picks in each
    /// exchange; auto-delete exchanges left without a binding go (and so on).
    fn unbind_everywhere(&mut self, destination: &str, of: fn(&mut Exchange) -> &mut Bindings) {
        let mut emptied = Vec::new();
        for (name, exchange) in &mut self.exchanges {
            let bindings = of(exchange);
            if bindings.is_empty() {
                continue;
            }
            bindings.remove_queue(destination);
            if exchange.unused_auto_delete() {
                emptied.push(name.clone());
            }
        }
        for name in emptied {
            self.remove_exchange(&name);
        }
    }

    /// Deletes `name` if it is auto-delete and just lost its last binding.
    fn delete_if_unbound(&mut self, name: &str) {
        if self
            .exchanges
            .get(name)
            .is_some_and(Exchange::unused_auto_delete)
        {
            self.remove_exchange(name);
        }
    }

    /// Refuses binding to the default exchange, as RabbitMQ does before checking
    /// permissions on the exchange (it binds every queue by itself).
    pub fn bindable_exchange(exchange: &str) -> Result<(), Refusal> {
        if exchange.is_empty() {
            return Err(default_exchange_refused());
        }
        Ok(())
    }

    /// Whether the exchange routes by topic; `None` if there is no such exchange.
    pub fn exchange_is_topic(&self, name: &str) -> Option<bool> {
        self.exchanges
            .get(name)
            .map(|exchange| exchange.kind == ExchangeKind::Topic)
    }

    pub fn bind(
        &mut self,
        connection: ConnectionId,
        queue: &str,
        exchange: &str,
        key: &str,
    ) -> Result<(), Refusal> {
        Self::bindable_exchange(exchange)?;
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
        Self::bindable_exchange(exchange)?;
        self.usable_queue(connection, queue)?;
        if let Some(entry) = self.exchanges.get_mut(exchange) {
            entry.bindings.remove(queue, key);
        }
        self.delete_if_unbound(exchange);
        Ok(())
    }

    /// Binds exchange `destination` to exchange `source` with `key` (exchange.bind):
    /// what `source` routes with it goes on through `destination` too. Both must exist
    /// (the source is looked for first, as RabbitMQ does); neither may be the default
    /// exchange.
    pub fn bind_exchange(
        &mut self,
        destination: &str,
        source: &str,
        key: &str,
    ) -> Result<(), Refusal> {
        Self::bindable_exchange(destination)?;
        Self::bindable_exchange(source)?;
        if !self.exchanges.contains_key(source) {
            return Err(no_exchange(source));
        }
        if !self.exchanges.contains_key(destination) {
            return Err(no_exchange(destination));
        }
        if let Some(entry) = self.exchanges.get_mut(source) {
            entry.to_exchanges.add(destination, key);
        }
        Ok(())
    }

    /// Removes that binding (exchange.unbind); one that is not there is no error, as in
    /// RabbitMQ.
    pub fn unbind_exchange(
        &mut self,
        destination: &str,
        source: &str,
        key: &str,
    ) -> Result<(), Refusal> {
        Self::bindable_exchange(destination)?;
        Self::bindable_exchange(source)?;
        if let Some(entry) = self.exchanges.get_mut(source) {
            entry.to_exchanges.remove(destination, key);
        }
        self.delete_if_unbound(source);
        Ok(())
    }

    /// The queues a message published to `exchange` with `routing_key` goes to, each
    /// once, in name order; the default exchange (`""`) routes to the queue so named.
    /// Exchanges bound to one the message reaches are followed, each once.
    pub fn route(&self, exchange: &str, routing_key: &str) -> Result<Vec<String>, Refusal> {
        if exchange.is_empty() {
            return Ok(self
                .queues
                .contains_key(routing_key)
                .then(|| routing_key.to_owned())
                .into_iter()
                .collect());
        }
        let entry = self
            .exchanges
            .get(exchange)
            .ok_or_else(|| no_exchange(exchange))?;
        if entry.to_exchanges.is_empty() {
            return Ok(entry.bindings.route(routing_key));
        }
        let mut queues = std::collections::BTreeSet::new();
        let mut visited = std::collections::HashSet::new();
        let mut reached = vec![exchange.to_owned()];
        while let Some(name) = reached.pop() {
            if !visited.insert(name.clone()) {
                continue;
            }
            let Some(entry) = self.exchanges.get(&name) else {
                continue;
            };
            queues.extend(entry.bindings.route(routing_key));
            reached.extend(entry.to_exchanges.route(routing_key));
        }
        Ok(queues.into_iter().collect())
    }

    /// A queue was deleted: its bindings go.
    pub(super) fn unbind_all(&mut self, queue: &str) {
        self.unbind_everywhere(queue, |exchange| &mut exchange.bindings);
    }
}
