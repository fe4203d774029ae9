//! What each broker account may do: one decision function, which the embedded broker
//! applies itself and the server answers RabbitMQ's HTTP auth backend with, so that the
//! same policy holds on both brokers.
//!
//! The model is RabbitMQ's: each action on a resource needs one of three permissions —
//! *configure* (declare, delete), *write* (publish to an exchange, bind a queue) and
//! *read* (consume a queue, bind from an exchange) — and a publish to a topic exchange
//! is further checked on its routing key (topic permissions).
//!
//! - A **server** account may do anything: servers declare the topology, send commands
//!   and share events.
//! - A **device** account (its user name is its device id) may declare only its own
//!   server-named inbox (`amq.gen-…`; clients cannot choose such names, so it cannot
//!   take another's), consume it, bind it to `tether.discover`; publish its own
//!   presence (`presence.<id>.<kind>`) and readings (`telemetry.<id>.<metric>`), and
//!   replies through the default exchange. Nothing else: it cannot read presence,
//!   telemetry or events, write `tether.events`, or declare or delete Tether's exchanges
//!   or the storage queue. (It can still put a message into any queue whose name it
//!   knows, through the default exchange, as AMQP allows. What proves the sender is
//!   the `user_id` property: the broker refuses one that is not the publisher's own
//!   user but lets a message without one through, so servers drop device messages
//!   whose `user_id` is missing or another's, and agents obey only server accounts.)

use crate::names::{DISCOVER_EXCHANGE, DeviceId, PRESENCE_EXCHANGE, TELEMETRY_EXCHANGE};

/// Who an authenticated broker connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Account {
    /// A Tether server replica.
    Server,
    /// A provisioned device; its user name is its id.
    Device(DeviceId),
}

/// What a permission is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Exchange,
    Queue,
}

/// RabbitMQ's three permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Declare or delete.
    Configure,
    /// Publish to an exchange; bind a queue (write on the queue).
    Write,
    /// Consume or purge a queue; bind from an exchange (read on the exchange).
    Read,
}

/// The default exchange's name as RabbitMQ's permission checks see it.
pub const DEFAULT_EXCHANGE: &str = "amq.default";

/// Whether `account` may have `permission` on the named exchange or queue.
pub fn resource_allowed(
    account: &Account,
    resource: Resource,
    name: &str,
    permission: Permission,
) -> bool {
    let Account::Device(_) = account else {
        return true;
    };
    let own_inbox = name.starts_with("amq.gen-");
    match (resource, permission) {
        // Its inbox: declared, consumed and bound by the device itself.
        (Resource::Queue, _) => own_inbox,
        // Replies, presence and readings; which keys is the topic check's business.
        (Resource::Exchange, Permission::Write) => {
            matches!(
                name,
                DEFAULT_EXCHANGE | "" | PRESENCE_EXCHANGE | TELEMETRY_EXCHANGE
            )
        }
        // Binding its inbox to the announce requests.
        (Resource::Exchange, Permission::Read) => name == DISCOVER_EXCHANGE,
        (Resource::Exchange, Permission::Configure) => false,
    }
}

/// Whether `account` may publish (write) to the topic exchange `exchange` with
/// `routing_key`. Other permissions on topics are not used by Tether and are refused
/// to devices.
pub fn topic_allowed(
    account: &Account,
    exchange: &str,
    routing_key: &str,
    permission: Permission,
) -> bool {
    let Account::Device(id) = account else {
        return true;
    };
    if permission != Permission::Write {
        return false;
    }
    let prefix = match exchange {
        PRESENCE_EXCHANGE => "presence",
        TELEMETRY_EXCHANGE => "telemetry",
        _ => return false,
    };
    let mut words = routing_key.split('.');
    words.next() == Some(prefix)
        && words.next() == Some(id.as_str())
        && words
            .next()
            .is_some_and(|last| !last.is_empty() && last != "*" && last != "#")
        && words.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{EVENTS_EXCHANGE, STORE_QUEUE};

    fn device(id: &str) -> Account {
        Account::Device(DeviceId::new(id).unwrap())
    }

    #[test]
    fn a_server_may_do_anything() {
        for permission in [Permission::Configure, Permission::Write, Permission::Read] {
            assert!(resource_allowed(
                &Account::Server,
                Resource::Exchange,
                EVENTS_EXCHANGE,
                permission
            ));
            assert!(resource_allowed(
                &Account::Server,
                Resource::Queue,
                STORE_QUEUE,
                permission
            ));
        }
        assert!(topic_allowed(
            &Account::Server,
            PRESENCE_EXCHANGE,
            "presence.x.hello",
            Permission::Write
        ));
    }

    #[test]
    fn a_device_may_keep_its_inbox_and_speak_for_itself_only() {
        let d = device("boiler-1");
        use Permission::*;
        use Resource::*;
        // Its own inbox.
        for permission in [Configure, Write, Read] {
            assert!(resource_allowed(&d, Queue, "amq.gen-Xyz", permission));
        }
        assert!(resource_allowed(&d, Exchange, DISCOVER_EXCHANGE, Read));
        // Publishing where it should.
        for exchange in [DEFAULT_EXCHANGE, "", PRESENCE_EXCHANGE, TELEMETRY_EXCHANGE] {
            assert!(
                resource_allowed(&d, Exchange, exchange, Write),
                "{exchange}"
            );
        }
        assert!(topic_allowed(
            &d,
            PRESENCE_EXCHANGE,
            "presence.boiler-1.hello",
            Write
        ));
        assert!(topic_allowed(
            &d,
            TELEMETRY_EXCHANGE,
            "telemetry.boiler-1.temp",
            Write
        ));
        // Nowhere else.
        assert!(
            !resource_allowed(&d, Exchange, EVENTS_EXCHANGE, Write),
            "forged statuses"
        );
        assert!(
            !resource_allowed(&d, Exchange, PRESENCE_EXCHANGE, Read),
            "reading presence"
        );
        assert!(!resource_allowed(&d, Exchange, TELEMETRY_EXCHANGE, Read));
        assert!(!resource_allowed(&d, Exchange, EVENTS_EXCHANGE, Read));
        assert!(
            !resource_allowed(&d, Exchange, PRESENCE_EXCHANGE, Configure),
            "deleting presence"
        );
        assert!(!resource_allowed(&d, Queue, STORE_QUEUE, Configure));
        assert!(!resource_allowed(&d, Queue, STORE_QUEUE, Read));
        assert!(
            !resource_allowed(&d, Queue, "tether.replies.r1", Read),
            "another's replies"
        );
        for key in [
            "presence.boiler-2.hello",
            "presence.boiler-1",
            "presence.boiler-1.hello.extra",
            "presence.boiler-1.",
            "presence.boiler-1.#",
            "presence.*.hello",
            "telemetry.boiler-1.temp",
        ] {
            assert!(!topic_allowed(&d, PRESENCE_EXCHANGE, key, Write), "{key}");
        }
        assert!(!topic_allowed(
            &d,
            PRESENCE_EXCHANGE,
            "presence.boiler-1.hello",
            Read
        ));
        assert!(!topic_allowed(&d, EVENTS_EXCHANGE, "anything", Write));
    }
}
