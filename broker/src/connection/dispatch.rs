//! Frames in: each whole frame in the read buffer is screened (its size; a channel
//! before connection.open; a channel the broker is closing), parsed, and sent on, with
//! one short match from each AMQP method to its handler.

use amq_protocol::{
    frame::{AMQPFrame, parse_frame},
    protocol::{
        AMQPClass, basic::AMQPMethod as BasicMethod, channel::AMQPMethod as ChannelMethod,
        confirm::AMQPMethod as ConfirmMethod, exchange::AMQPMethod as ExchangeMethod,
        queue::AMQPMethod as QueueMethod, tx::AMQPMethod as TxMethod,
    },
};

use super::{COMMAND_INVALID, Connection, FRAME_ERROR, Fatal, NOT_IMPLEMENTED, UNEXPECTED_FRAME};

/// The frame type of a method frame.
const METHOD_FRAME: u8 = 1;

/// What to do with the frame at the start of the buffer, before parsing it.
enum Screened {
    /// Not all of it has arrived.
    Partial,
    /// Parse it and handle it.
    Parse,
    /// Drop its `usize` bytes unparsed.
    Drop(usize),
}

impl Connection {
    /// Parses and handles every whole frame in `buffer`, leaving a partial one.
    pub(super) fn drain(&mut self, buffer: &mut Vec<u8>) -> Result<(), Fatal> {
        loop {
            match self.screen(buffer)? {
                Screened::Partial => return Ok(()),
                Screened::Drop(length) => {
                    buffer.drain(..length);
                    continue;
                }
                Screened::Parse => {}
            }
            let (consumed, frame) = match parse_frame(buffer.as_slice()) {
                Ok((rest, frame)) => (buffer.len() - rest.len(), frame),
                Err(nom::Err::Incomplete(_)) => return Ok(()),
                Err(_) => {
                    self.close(FRAME_ERROR, "FRAME_ERROR - malformed frame", 0, 0);
                    return Err(Fatal);
                }
            };
            buffer.drain(..consumed);
            self.handle(frame)?;
            // A login the authenticator is asked about: the rest waits for its answer.
            if self.closing || self.pending_login.is_some() {
                return Ok(());
            }
        }
    }

    /// Looks at the frame header before anything is parsed or buffered beyond it: a frame
    /// larger than `frame_max` ends the connection; one on a channel before
    /// connection.open is refused as RabbitMQ refuses it (505 UNEXPECTED_FRAME with its
    /// first octets); content for a channel the broker is closing is dropped unparsed,
    /// so a refused message's body costs nothing.
    fn screen(&mut self, buffer: &[u8]) -> Result<Screened, Fatal> {
        if buffer.len() < 7 {
            return Ok(Screened::Partial);
        }
        let size = u32::from_be_bytes([buffer[3], buffer[4], buffer[5], buffer[6]]);
        if size > self.frame_max {
            self.close(
                FRAME_ERROR,
                &format!(
                    "FRAME_ERROR - frame size {size} exceeds frame_max {}",
                    self.frame_max
                ),
                0,
                0,
            );
            return Err(Fatal);
        }
        // The protocol header, or a frame: 7 octets of header, the payload, frame-end.
        let length = 8 + size as usize;
        let channel = u16::from_be_bytes([buffer[1], buffer[2]]);
        if buffer.starts_with(b"AMQP") || channel == 0 {
            return Ok(Screened::Parse);
        }
        if buffer.len() < length {
            return Ok(Screened::Partial);
        }
        if !self.is_open() {
            let (kind, payload) = (buffer[0], &buffer[7..length - 1]);
            self.close(UNEXPECTED_FRAME, &unexpected_frame(kind, payload), 0, 0);
            return Err(Fatal);
        }
        let closing = self.channels.get(&channel).is_some_and(|c| c.closing);
        if closing && buffer[0] != METHOD_FRAME {
            return Ok(Screened::Drop(length));
        }
        Ok(Screened::Parse)
    }

    fn handle(&mut self, frame: AMQPFrame) -> Result<(), Fatal> {
        match frame {
            AMQPFrame::Heartbeat | AMQPFrame::InvalidHeartbeat(_) => Ok(()),
            AMQPFrame::ProtocolHeader(_) => {
                self.close(
                    COMMAND_INVALID,
                    "COMMAND_INVALID - unexpected protocol header",
                    0,
                    0,
                );
                Err(Fatal)
            }
            AMQPFrame::Method(0, AMQPClass::Connection(method)) => self.connection_method(method),
            AMQPFrame::Method(channel, method) if self.is_open() && channel > 0 => {
                self.channel_method(channel, method)
            }
            AMQPFrame::Header(channel, header) => self.content_header(channel, header),
            AMQPFrame::Body(channel, body) => self.content_body(channel, body),
            AMQPFrame::Method(_, method) => {
                self.close(
                    COMMAND_INVALID,
                    "COMMAND_INVALID - unexpected method",
                    method.get_amqp_class_id(),
                    method.get_amqp_method_id(),
                );
                Err(Fatal)
            }
        }
    }

    /// A method on channel `id`: each goes to its handler. A refusal (403, 404, 405,
    /// 406…) closes the channel; a hard error, or what the broker does not implement,
    /// closes the connection.
    fn channel_method(&mut self, id: u16, method: AMQPClass) -> Result<(), Fatal> {
        let class_id = method.get_amqp_class_id();
        let method_id = method.get_amqp_method_id();
        if let AMQPClass::Channel(ChannelMethod::Open(_)) = method {
            return self.channel_open(id, class_id, method_id);
        }
        let Some(channel) = self.channels.get(&id) else {
            return Ok(());
        };
        let close = matches!(
            method,
            AMQPClass::Channel(ChannelMethod::Close(_) | ChannelMethod::CloseOk(_))
        );
        if channel.closing && !close {
            // The broker closed it: all but close and close-ok is dropped, as the spec asks.
            return Ok(());
        }
        let result = match method {
            AMQPClass::Channel(ChannelMethod::Close(_)) => self.channel_close(id),
            AMQPClass::Channel(ChannelMethod::CloseOk(_)) => self.channel_close_ok(id),
            AMQPClass::Channel(ChannelMethod::Flow(flow)) => self.channel_flow(id, flow),
            AMQPClass::Exchange(ExchangeMethod::Declare(declare)) => {
                self.exchange_declare(id, declare)
            }
            AMQPClass::Exchange(ExchangeMethod::Delete(delete)) => self.exchange_delete(id, delete),
            AMQPClass::Exchange(ExchangeMethod::Bind(bind)) => self.exchange_bind(id, bind),
            AMQPClass::Exchange(ExchangeMethod::Unbind(unbind)) => self.exchange_unbind(id, unbind),
            AMQPClass::Queue(QueueMethod::Declare(declare)) => self.queue_declare(id, declare),
            AMQPClass::Queue(QueueMethod::Bind(bind)) => self.queue_bind(id, bind),
            AMQPClass::Queue(QueueMethod::Unbind(unbind)) => self.queue_unbind(id, unbind),
            AMQPClass::Queue(QueueMethod::Purge(purge)) => self.queue_purge(id, purge),
            AMQPClass::Queue(QueueMethod::Delete(delete)) => self.queue_delete(id, delete),
            AMQPClass::Basic(BasicMethod::Qos(qos)) => self.basic_qos(id, qos),
            AMQPClass::Basic(BasicMethod::Consume(consume)) => self.basic_consume(id, consume),
            AMQPClass::Basic(BasicMethod::Cancel(cancel)) => self.basic_cancel(id, cancel),
            AMQPClass::Basic(BasicMethod::Publish(publish)) => self.basic_publish(id, publish),
            AMQPClass::Basic(BasicMethod::Get(get)) => self.basic_get(id, get),
            AMQPClass::Basic(BasicMethod::Ack(ack)) => self.basic_ack(id, ack),
            AMQPClass::Basic(BasicMethod::Nack(nack)) => self.basic_nack(id, nack),
            AMQPClass::Basic(BasicMethod::Reject(reject)) => self.basic_reject(id, reject),
            AMQPClass::Basic(BasicMethod::Recover(recover)) => {
                self.basic_recover(id, recover.requeue, true)
            }
            AMQPClass::Basic(BasicMethod::RecoverAsync(recover)) => {
                self.basic_recover(id, recover.requeue, false)
            }
            AMQPClass::Confirm(ConfirmMethod::Select(select)) => self.confirm_select(id, select),
            AMQPClass::Tx(TxMethod::Select(_)) => self.tx_select(id),
            AMQPClass::Tx(TxMethod::Commit(_)) => self.tx_commit(id),
            AMQPClass::Tx(TxMethod::Rollback(_)) => self.tx_rollback(id),
            _ => {
                self.close(
                    NOT_IMPLEMENTED,
                    "NOT_IMPLEMENTED - this method is not supported by the embedded broker",
                    class_id,
                    method_id,
                );
                return Err(Fatal);
            }
        };
        match result {
            Ok(()) => Ok(()),
            // A hard error (an unknown exchange type: 503) closes the connection.
            Err(refusal) if refusal.code >= 500 => {
                self.close(refusal.code, &refusal.text, class_id, method_id);
                Err(Fatal)
            }
            Err(refusal) => {
                self.close_channel_with(id, &refusal, class_id, method_id);
                Ok(())
            }
        }
    }
}

/// RabbitMQ's text for a frame it did not expect: its type and its first 16 octets,
/// written as Erlang writes a binary (without the line breaks Erlang adds to long ones).
fn unexpected_frame(kind: u8, payload: &[u8]) -> String {
    let (which, octets) = if payload.len() <= 16 {
        ("all", payload)
    } else {
        ("first 16", &payload[..16])
    };
    format!(
        "UNEXPECTED_FRAME - type {kind}, {which} octets = {}",
        erlang_binary(octets)
    )
}

/// `<<"text">>` when every octet is printable ASCII, else `<<0,20,0,10,0>>`.
fn erlang_binary(octets: &[u8]) -> String {
    if !octets.is_empty() && octets.iter().all(|b| (0x20..0x7f).contains(b)) {
        let text: String = octets
            .iter()
            .flat_map(|&b| match b {
                b'"' | b'\\' => vec!['\\', char::from(b)],
                _ => vec![char::from(b)],
            })
            .collect();
        return format!("<<\"{text}\">>");
    }
    let numbers: Vec<String> = octets.iter().map(u8::to_string).collect();
    format!("<<{}>>", numbers.join(","))
}

#[cfg(test)]
mod tests {
    use super::unexpected_frame;

    #[test]
    fn unexpected_frames_are_described_as_rabbitmq_describes_them() {
        // Each text as RabbitMQ 3.10 wrote it for the same frame.
        assert_eq!(
            unexpected_frame(1, &[0, 20, 0, 10, 0]),
            "UNEXPECTED_FRAME - type 1, all octets = <<0,20,0,10,0>>"
        );
        assert_eq!(
            unexpected_frame(3, b"hello"),
            "UNEXPECTED_FRAME - type 3, all octets = <<\"hello\">>"
        );
        let long = [
            0, 50, 0, 10, 0, 30, 113, 113, 113, 113, 113, 113, 113, 113, 113, 113, 113,
        ];
        assert_eq!(
            unexpected_frame(1, &long),
            "UNEXPECTED_FRAME - type 1, first 16 octets = \
             <<0,50,0,10,0,30,113,113,113,113,113,113,113,113,113,113>>"
        );
    }
}
