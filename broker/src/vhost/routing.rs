//! Routing: the exchanges (direct, fanout, topic, and the `amq.*` ones every vhost has),
//! their bindings to queues, and which queues a published message reaches.

use std::collections::HashMap;

use super::{ConnectionId, NOT_FOUND, PRECONDITION_FAILED, Refusal, Vhost};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExchangeKind {
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
    /// (queue, binding key)
    bindings: Vec<(String, String)>,
}

/// The exchanges a new vhost starts with.
pub(super) fn standard_exchanges() -> HashMap<String, Exchange> {
    let mut exchanges = HashMap::new();
    for (name, kind) in [
        ("amq.direct", ExchangeKind::Direct),
        ("amq.fanout", ExchangeKind::Fanout),
        ("amq.topic", ExchangeKind::Topic),
    ] {
        exchanges.insert(
            name.to_owned(),
            Exchange {
                kind,
                durable: true,
                bindings: Vec::new(),
            },
        );
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
        self.exchanges.insert(
            name.to_owned(),
            Exchange {
                kind,
                durable,
                bindings: Vec::new(),
            },
        );
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
        let binding = (queue.to_owned(), key.to_owned());
        if !exchange_entry.bindings.contains(&binding) {
            exchange_entry.bindings.push(binding);
        }
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
            entry.bindings.retain(|(q, k)| !(q == queue && k == key));
        }
        Ok(())
    }

    /// The queues a message published to `exchange` with `routing_key` goes to, each
    /// once, in name order; the default exchange (`""`) routes to the queue so named.
    pub(super) fn route(&self, exchange: &str, routing_key: &str) -> Result<Vec<String>, Refusal> {
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
        let mut targets: Vec<String> = entry
            .bindings
            .iter()
            .filter(|(_, key)| match entry.kind {
                ExchangeKind::Fanout => true,
                ExchangeKind::Direct => key == routing_key,
                ExchangeKind::Topic => topic_matches(key, routing_key),
            })
            .map(|(queue, _)| queue.clone())
            .collect();
        targets.sort();
        targets.dedup();
        Ok(targets)
    }

    /// A queue was deleted: its bindings go.
    pub(super) fn unbind_all(&mut self, queue: &str) {
        for exchange in self.exchanges.values_mut() {
            exchange.bindings.retain(|(bound, _)| bound != queue);
        }
    }
}

/// AMQP topic matching: words split by `.`, `*` matches one word, `#` zero or more.
fn topic_matches(pattern: &str, key: &str) -> bool {
    fn matches(pattern: &[&str], key: &[&str]) -> bool {
        match (pattern.first(), key.first()) {
            (None, None) => true,
            (Some(&"#"), _) => {
                matches(&pattern[1..], key) || (!key.is_empty() && matches(pattern, &key[1..]))
            }
            (Some(&"*"), Some(_)) => matches(&pattern[1..], &key[1..]),
            (Some(p), Some(k)) if p == k => matches(&pattern[1..], &key[1..]),
            _ => false,
        }
    }
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    };
    matches(&pattern, &key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns_match_as_in_rabbitmq() {
        let cases = [
            ("presence.#", "presence.gw-1.hello", true),
            ("presence.#", "presence", true),
            ("presence.*.hello", "presence.gw-1.hello", true),
            ("presence.*.hello", "presence.gw-1.bye", false),
            ("presence.*", "presence.a.b", false),
            ("#", "anything.at.all", true),
            ("#.hello", "presence.gw.hello", true),
            ("a.#.z", "a.z", true),
            ("a.#.z", "a.b.c.z", true),
            ("a.*.z", "a.z", false),
            ("telemetry.#", "presence.x", false),
        ];
        for (pattern, key, expected) in cases {
            assert_eq!(topic_matches(pattern, key), expected, "{pattern} vs {key}");
        }
    }
}
