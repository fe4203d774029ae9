use crate::{
    Error, Promise, PromiseResolver,
    id_sequence::IdSequence,
    protocol::{AMQPError, AMQPSoftError},
    publisher_confirm::{Confirmation, PublisherConfirm},
    returned_messages::ReturnedMessages,
    shared::SharedMutex,
    types::DeliveryTag,
};
use std::{collections::HashMap, fmt, sync::MutexGuard};
use tracing::trace;

#[derive(Clone)]
pub(crate) struct Acknowledgements(SharedMutex<Inner>);

type AMQPResult = Result<(), AMQPError>;

impl Acknowledgements {
    pub(crate) fn new(channel_id: u16, returned_messages: ReturnedMessages) -> Self {
        Self(SharedMutex::new(Inner::new(channel_id, returned_messages)))
    }

    /// `returnable`: the publish's [`crate::returned_messages::fingerprint`] if it is
    /// mandatory (Tether's patch).
    pub(crate) fn register_pending(&self, returnable: Option<u64>) -> PublisherConfirm {
        self.lock_inner().register_pending(returnable)
    }

    pub(crate) fn get_last_pending(&self) -> Option<Promise<()>> {
        self.lock_inner().last.take()
    }

    pub(crate) fn ack(&self, delivery_tag: DeliveryTag) -> AMQPResult {
        self.lock_inner().drop_pending(delivery_tag, true)
    }

    pub(crate) fn nack(&self, delivery_tag: DeliveryTag) -> AMQPResult {
        self.lock_inner().drop_pending(delivery_tag, false)
    }

    pub(crate) fn ack_all_pending(&self) {
        self.lock_inner().drop_all(true);
    }

    pub(crate) fn nack_all_pending(&self) {
        self.lock_inner().drop_all(false);
    }

    pub(crate) fn ack_all_before(&self, delivery_tag: DeliveryTag) -> AMQPResult {
        self.lock_inner()
            .complete_pending_before(delivery_tag, true)
    }

    pub(crate) fn nack_all_before(&self, delivery_tag: DeliveryTag) -> AMQPResult {
        self.lock_inner()
            .complete_pending_before(delivery_tag, false)
    }

    pub(crate) fn on_channel_error(&self, error: Error) {
        self.lock_inner().on_channel_error(error);
    }

    pub(crate) fn reset(&self, error: Error) {
        self.lock_inner().reset(error);
    }

    fn lock_inner(&self) -> MutexGuard<'_, Inner> {
        self.0.lock()
    }
}

impl fmt::Debug for Acknowledgements {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Acknowledgements");
        if let Some(inner) = self.0.try_lock() {
            debug
                .field("delivery_tag", &inner.delivery_tag)
                .field("returned_messages", &inner.returned_messages)
                .field("pending", &inner.pending.keys());
        }
        debug.finish()
    }
}

/// A publish waiting for its confirm: its resolvers, and its fingerprint if the broker
/// may return it (Tether's patch).
type Pending = (
    PromiseResolver<Confirmation>,
    PromiseResolver<()>,
    Option<u64>,
);

struct Inner {
    channel_id: u16,
    delivery_tag: IdSequence<DeliveryTag>,
    last: Option<Promise<()>>,
    pending: HashMap<DeliveryTag, Pending>,
    returned_messages: ReturnedMessages,
}

impl Inner {
    fn new(channel_id: u16, returned_messages: ReturnedMessages) -> Self {
        Self {
            channel_id,
            delivery_tag: IdSequence::new(false),
            last: None,
            pending: HashMap::default(),
            returned_messages,
        }
    }

    fn register_pending(&mut self, returnable: Option<u64>) -> PublisherConfirm {
        let delivery_tag = self.delivery_tag.next();
        trace!("Publishing with delivery_tag {}", delivery_tag);
        let (promise, resolver) = Promise::new("acknowledgement");
        let (err_promise, err_resolver) = Promise::new("acknowledgement-error");
        let promise = PublisherConfirm::new(promise, self.returned_messages.clone());
        self.last = Some(err_promise);
        self.pending
            .insert(delivery_tag, (resolver, err_resolver, returnable));
        promise
    }

    fn complete_pending(&mut self, success: bool, delivery_tag: DeliveryTag, resolvers: Pending) {
        let returned_message = self.returned_messages.take_returned(resolvers.2);
        resolvers.0.resolve(if success {
            Confirmation::Ack(returned_message)
        } else {
            Confirmation::Nack(returned_message)
        });
        if Some(delivery_tag) == self.delivery_tag.current() {
            resolvers.1.resolve(());
        }
    }

    fn drop_all(&mut self, success: bool) {
        for (delivery_tag, resolvers) in std::mem::take(&mut self.pending) {
            self.complete_pending(success, delivery_tag, resolvers);
        }
        self.returned_messages.keep_unclaimed();
    }

    fn drop_pending(&mut self, delivery_tag: DeliveryTag, success: bool) -> AMQPResult {
        if let Some(resolvers) = self.pending.remove(&delivery_tag) {
            self.complete_pending(success, delivery_tag, resolvers);
            if self.pending.is_empty() {
                self.returned_messages.keep_unclaimed();
            }
            Ok(())
        } else {
            Err(AMQPError::new(
                AMQPSoftError::PRECONDITIONFAILED.into(),
                format!(
                    "invalid {} received for inexistant delivery_tag {} on channel {}, current is {:?}, was expecting one of {:?}",
                    if success { "ack" } else { "nack" },
                    delivery_tag,
                    self.channel_id,
                    self.delivery_tag.current(),
                    self.pending.keys()
                )
                .into(),
            ))
        }
    }

    fn complete_pending_before(&mut self, delivery_tag: DeliveryTag, success: bool) -> AMQPResult {
        // Tags are collected from self.pending, so drop_pending should never fail here.
        // Multiple errors are unlikely, and if they occur they are likely identical; callers
        // also handle the underlying acknowledgement state independently, so returning the
        // last error is sufficient.
        let mut res = Ok(());
        for tag in self
            .pending
            .keys()
            .filter(|tag| **tag <= delivery_tag)
            .cloned()
            .collect::<Vec<DeliveryTag>>()
        {
            if let Err(err) = self.drop_pending(tag, success) {
                res = Err(err);
            }
        }
        res
    }

    fn on_channel_error(&mut self, error: Error) {
        for (delivery_tag, resolvers) in self.pending.drain() {
            resolvers.0.reject(error.clone());
            if Some(delivery_tag) == self.delivery_tag.current() {
                resolvers.1.reject(error.clone());
            }
        }
        self.returned_messages.clear_dropped_confirms();
        self.returned_messages.keep_unclaimed();
    }

    fn reset(&mut self, error: Error) {
        self.delivery_tag = IdSequence::new(false);
        self.on_channel_error(error);
    }
}

#[cfg(test)]
mod tether_patch_tests {
    use super::*;
    use crate::{
        BasicProperties, error_holder::ErrorHolder, message::BasicReturnMessage,
        returned_messages::fingerprint,
    };
    use std::{
        future::Future,
        pin::pin,
        task::{Context, Poll, Waker},
    };

    /// What the broker sends back for an unroutable mandatory publish.
    fn returned(messages: &ReturnedMessages, exchange: &str, key: &str, body: &[u8]) {
        messages.start_new_delivery(BasicReturnMessage::new(
            exchange.into(),
            key.into(),
            312,
            "NO_ROUTE".into(),
            ErrorHolder::default(),
        ));
        messages.handle_content_header_frame(
            body.len() as crate::types::PayloadSize,
            BasicProperties::default(),
            true,
        );
        messages.handle_body_frame(0, body.to_vec(), true);
    }

    /// The routing key of the message a confirm carries back, if any.
    fn carried(confirm: PublisherConfirm) -> Option<String> {
        let mut confirm = pin!(confirm);
        let Poll::Ready(confirmation) = confirm
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        else {
            panic!("not confirmed yet")
        };
        let confirmation = confirmation.unwrap();
        assert!(confirmation.is_ack());
        confirmation
            .take_message()
            .map(|message| message.delivery.routing_key.to_string())
    }

    #[test]
    fn a_return_reaches_the_confirm_of_its_own_publish_when_many_are_acked_at_once() {
        for _ in 0..50 {
            let messages = ReturnedMessages::default();
            let acks = Acknowledgements::new(1, messages.clone());
            // Not mandatory (never returned), routed, unroutable, unroutable.
            let plain = acks.register_pending(None);
            let routed = acks.register_pending(Some(fingerprint("", "inbox-a", b"one")));
            let first_gone = acks.register_pending(Some(fingerprint("", "inbox-b", b"two")));
            let second_gone = acks.register_pending(Some(fingerprint("", "inbox-c", b"3")));
            returned(&messages, "", "inbox-b", b"two");
            returned(&messages, "", "inbox-c", b"3");
            acks.ack_all_before(4).unwrap();

            assert_eq!(carried(plain), None);
            assert_eq!(carried(routed), None);
            assert_eq!(carried(first_gone).as_deref(), Some("inbox-b"));
            assert_eq!(carried(second_gone).as_deref(), Some("inbox-c"));
            assert!(messages.drain().is_empty(), "every return was claimed");
        }
    }

    #[test]
    fn a_return_no_pending_publish_claims_is_kept_for_wait_for_confirms() {
        let messages = ReturnedMessages::default();
        let acks = Acknowledgements::new(1, messages.clone());
        let plain = acks.register_pending(None);
        returned(&messages, "", "inbox-x", b"?");
        acks.ack(1).unwrap();
        assert_eq!(carried(plain), None);
        let kept = messages.drain();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].delivery.routing_key.as_str(), "inbox-x");
    }
}
