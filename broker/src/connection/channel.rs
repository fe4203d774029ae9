//! The channel class: channel.open, close, close-ok and flow, and closing a channel,
//! which gives its unacknowledged messages back to their queues; a refusal (404, 405,
//! 406…) closes the channel it came on, as in RabbitMQ.

use std::sync::atomic::Ordering;

use amq_protocol::protocol::{AMQPClass, channel};

use super::{CHANNEL_ERROR, Channel, Connection, Fatal, NOT_ALLOWED};
use crate::vhost::Refusal;

impl Connection {
    /// channel.open: a new channel, within `channel_max`; reopening one is fatal. One
    /// more than the `channel_max` settled at tune (for a device, at most its
    /// `channels_per_connection`) closes the connection with RabbitMQ's 530 NOT_ALLOWED
    /// and its text, blaming no method, as RabbitMQ does.
    pub(super) fn channel_open(
        &mut self,
        id: u16,
        class_id: u16,
        method_id: u16,
    ) -> Result<(), Fatal> {
        let open = self.channels.len();
        if !self.channels.contains_key(&id) && open >= usize::from(self.channel_max) {
            let text = format!(
                "NOT_ALLOWED - number of channels opened ({open}) has reached the negotiated \
                 channel_max ({})",
                self.channel_max
            );
            self.close(NOT_ALLOWED, &text, 0, 0);
            return Err(Fatal);
        }
        if self.channels.contains_key(&id) || id > self.config.channel_max {
            self.close(
                CHANNEL_ERROR,
                "CHANNEL_ERROR - channel already open or out of range",
                class_id,
                method_id,
            );
            return Err(Fatal);
        }
        self.channels.insert(id, Channel::default());
        self.method(
            id,
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
        );
        Ok(())
    }

    pub(super) fn channel_close(&mut self, id: u16) -> Result<(), Refusal> {
        self.close_channel(id);
        self.method(
            id,
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
        );
        Ok(())
    }

    /// channel.close-ok: the client confirms a close the broker sent.
    pub(super) fn channel_close_ok(&mut self, id: u16) -> Result<(), Refusal> {
        self.close_channel(id);
        Ok(())
    }

    pub(super) fn channel_flow(&mut self, id: u16, flow: channel::Flow) -> Result<(), Refusal> {
        self.method(
            id,
            AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                active: flow.active,
            })),
        );
        Ok(())
    }

    /// Forgets a channel: its consumers go, its unacknowledged messages are requeued.
    pub(super) fn close_channel(&mut self, id: u16) {
        if let Some(channel) = self.channels.remove(&id) {
            let mut vhost = self
                .vhost
                .lock()
                .expect("no code panics while holding the vhost lock");
            vhost.close_channel(self.id, id);
            for (_, entry) in channel.unacked {
                entry.counter.fetch_sub(1, Ordering::Relaxed);
                vhost.requeue(&entry.queue, entry.message, entry.charge);
            }
        }
    }

    /// Closes a channel for a soft error (404, 405, 406…), as RabbitMQ does.
    pub(super) fn close_channel_with(
        &mut self,
        id: u16,
        refusal: &Refusal,
        class_id: u16,
        method_id: u16,
    ) {
        self.close_channel(id);
        // Keep the id reserved until close-ok, so late frames are dropped quietly.
        let closing = Channel {
            closing: true,
            ..Channel::default()
        };
        self.channels.insert(id, closing);
        self.method(
            id,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: refusal.code,
                reply_text: refusal.text.as_str().into(),
                class_id,
                method_id,
            })),
        );
    }
}
