//! Permission checks: `protocol::policy` asked at the points RabbitMQ 3.10 asks its
//! auth backends, and refused with its texts (channel.close 403 ACCESS_REFUSED). What
//! each method needs, as RabbitMQ has it:
//!
//! | method | permission |
//! |---|---|
//! | exchange.declare (not passive), exchange.delete | configure on the exchange |
//! | queue.declare (not passive; a server name once chosen), queue.delete | configure on the queue |
//! | queue.purge, basic.consume, basic.get | read on the queue |
//! | queue.bind, queue.unbind | write on the queue, read on the exchange, and for a topic exchange read on the binding key |
//! | basic.publish | write on the exchange (`amq.default` for `""`), and for a topic exchange write on the routing key |
//!
//! Passive declares are not checked: they only tell whether something exists. The
//! server account may do anything, so it is not asked at all. Whoever publishes, a
//! `user_id` property must name the user who logged in (RabbitMQ's rule for every user
//! without the `impersonator` tag, its own guest included): a device cannot pass its
//! messages off as another's.

use amq_protocol::protocol::BasicProperties;
use protocol::policy::{self, Account, DEFAULT_EXCHANGE, Permission, Resource};

use super::{ACCESS_REFUSED, Connection};
use crate::vhost::{PRECONDITION_FAILED, Refusal};

impl Connection {
    /// Whether the connection needs asking at all: not for the server account.
    fn checked(&self) -> bool {
        self.account != Some(Account::Server)
    }

    /// `permission` on the named exchange or queue, or RabbitMQ's refusal. The default
    /// exchange (`""`) is `amq.default` here, as in RabbitMQ.
    pub(super) fn permit(
        &self,
        resource: Resource,
        name: &str,
        permission: Permission,
    ) -> Result<(), Refusal> {
        if !self.checked() {
            return Ok(());
        }
        let (kind, name) = match resource {
            Resource::Exchange if name.is_empty() => ("exchange", DEFAULT_EXCHANGE),
            Resource::Exchange => ("exchange", name),
            Resource::Queue => ("queue", name),
        };
        let allowed = self
            .account
            .as_ref()
            .is_some_and(|account| policy::resource_allowed(account, resource, name, permission));
        if allowed {
            return Ok(());
        }
        Err(Refusal {
            code: ACCESS_REFUSED,
            text: format!(
                "ACCESS_REFUSED - access to {kind} '{name}' in vhost '/' refused for user '{}'",
                self.user
            ),
        })
    }

    /// `permission` on `key` in the topic exchange `exchange` (RabbitMQ's topic
    /// permissions), if `exchange` is one; nothing to check for other kinds, or for an
    /// exchange that does not exist (the method's own answer says so).
    pub(super) fn permit_topic(
        &self,
        exchange: &str,
        key: &str,
        permission: Permission,
    ) -> Result<(), Refusal> {
        if !self.checked() || self.vhost().exchange_is_topic(exchange) != Some(true) {
            return Ok(());
        }
        let allowed = self
            .account
            .as_ref()
            .is_some_and(|account| policy::topic_allowed(account, exchange, key, permission));
        if allowed {
            return Ok(());
        }
        Err(Refusal {
            code: ACCESS_REFUSED,
            text: format!(
                "ACCESS_REFUSED - access to topic '{key}' in exchange '{exchange}' in vhost '/' \
                 refused for user '{}'",
                self.user
            ),
        })
    }

    /// A published message's `user_id`, if set, must be the user's own name.
    pub(super) fn check_user_id(&self, properties: &BasicProperties) -> Result<(), Refusal> {
        match properties.user_id() {
            Some(claimed) if claimed.as_str() != self.user => Err(Refusal {
                code: PRECONDITION_FAILED,
                text: format!(
                    "PRECONDITION_FAILED - user_id property set to '{claimed}' but \
                     authenticated user was '{}'",
                    self.user
                ),
            }),
            _ => Ok(()),
        }
    }
}
