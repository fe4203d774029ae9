//! The connection class: the protocol header, connection.start with the broker's
//! capabilities, PLAIN authentication (start-ok), tune, open, and close, including
//! waiting for the client's close-ok when the broker closed first.

use std::time::Duration;

use amq_protocol::{
    frame::{AMQPFrame, parse_frame},
    protocol::{AMQPClass, connection},
    types::{AMQPValue, FieldTable},
};
use tokio::{io::AsyncReadExt, net::tcp::OwnedReadHalf};

use super::{ACCESS_REFUSED, Connection, Fatal, NOT_IMPLEMENTED};

/// The protocol header of AMQP 0-9-1, the one this broker speaks.
pub(super) const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// Reads the client's protocol header, waiting 10 s at most: whether it is AMQP 0-9-1.
pub(super) async fn protocol_header(reader: &mut OwnedReadHalf) -> bool {
    let mut header = [0u8; 8];
    let read = tokio::time::timeout(Duration::from_secs(10), reader.read_exact(&mut header)).await;
    matches!(read, Ok(Ok(_))) && &header == PROTOCOL_HEADER
}

impl Connection {
    pub(super) fn send_start(&self) {
        let mut capabilities = FieldTable::default();
        for capability in [
            "publisher_confirms",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "per_consumer_qos",
            "authentication_failure_close",
            "exchange_exchange_bindings",
        ] {
            capabilities.insert(capability.into(), AMQPValue::Boolean(true));
        }
        let mut properties = FieldTable::default();
        properties.insert(
            "product".into(),
            AMQPValue::LongString("Tether embedded broker".into()),
        );
        properties.insert(
            "version".into(),
            AMQPValue::LongString(env!("CARGO_PKG_VERSION").into()),
        );
        properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: properties,
                mechanisms: "PLAIN".into(),
                locales: "en_US".into(),
            })),
        );
    }

    /// A method on channel 0, to its handler.
    pub(super) fn connection_method(
        &mut self,
        method: connection::AMQPMethod,
    ) -> Result<(), Fatal> {
        match method {
            connection::AMQPMethod::StartOk(start_ok) => self.connection_start_ok(&start_ok),
            connection::AMQPMethod::TuneOk(tune_ok) => self.connection_tune_ok(&tune_ok),
            connection::AMQPMethod::Open(_) => self.connection_open(),
            connection::AMQPMethod::Close(_) => self.connection_close(),
            connection::AMQPMethod::CloseOk(_) => self.connection_close_ok(),
            connection::AMQPMethod::Blocked(_) | connection::AMQPMethod::Unblocked(_) => Ok(()),
            other => {
                let class = AMQPClass::Connection(other);
                self.close(
                    NOT_IMPLEMENTED,
                    "NOT_IMPLEMENTED",
                    class.get_amqp_class_id(),
                    class.get_amqp_method_id(),
                );
                Err(Fatal)
            }
        }
    }

    /// connection.start-ok: the credentials; tune if they are good.
    fn connection_start_ok(&mut self, start_ok: &connection::StartOk) -> Result<(), Fatal> {
        if !self.authenticates(start_ok) {
            self.close(
                ACCESS_REFUSED,
                "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN",
                10,
                11,
            );
            return Err(Fatal);
        }
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                channel_max: self.config.channel_max,
                frame_max: self.config.frame_max,
                heartbeat: self.config.heartbeat,
            })),
        );
        Ok(())
    }

    /// connection.tune-ok: the frame size and heartbeat the client settled on.
    fn connection_tune_ok(&mut self, tune: &connection::TuneOk) -> Result<(), Fatal> {
        if tune.frame_max >= 4096 {
            self.frame_max = tune.frame_max.min(self.config.frame_max);
        }
        self.heartbeat = tune.heartbeat;
        Ok(())
    }

    fn connection_open(&mut self) -> Result<(), Fatal> {
        self.open = true;
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
        );
        Ok(())
    }

    fn connection_close(&mut self) -> Result<(), Fatal> {
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
        );
        self.closing = true;
        Ok(())
    }

    fn connection_close_ok(&mut self) -> Result<(), Fatal> {
        self.closing = true;
        Ok(())
    }

    /// After the broker's own connection.close: reads until the client's close-ok, or
    /// its connection.close crossing ours (answered with close-ok), for `within` at most.
    /// Everything else is discarded, as the spec asks. Whether the client answered.
    pub(super) async fn await_close_ok(
        &self,
        reader: &mut OwnedReadHalf,
        buffer: &mut Vec<u8>,
        within: Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            loop {
                if buffer.len() >= 7 {
                    let size = u32::from_be_bytes([buffer[3], buffer[4], buffer[5], buffer[6]]);
                    if size > self.frame_max {
                        return false;
                    }
                }
                let (consumed, frame) = match parse_frame(buffer.as_slice()) {
                    Ok((rest, frame)) => (buffer.len() - rest.len(), frame),
                    Err(nom::Err::Incomplete(_)) => break,
                    Err(_) => return false,
                };
                buffer.drain(..consumed);
                match frame {
                    AMQPFrame::Method(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)),
                    ) => {
                        return true;
                    }
                    AMQPFrame::Method(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::Close(_)),
                    ) => {
                        self.method(
                            0,
                            AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                                connection::CloseOk {},
                            )),
                        );
                        return true;
                    }
                    _ => {}
                }
            }
            match tokio::time::timeout_at(deadline, reader.read_buf(buffer)).await {
                Ok(Ok(read)) if read > 0 => {}
                _ => return false,
            }
        }
    }

    fn authenticates(&self, start_ok: &connection::StartOk) -> bool {
        if start_ok.mechanism.as_str() != "PLAIN" {
            return false;
        }
        // PLAIN: authzid NUL user NUL password.
        let response = start_ok.response.as_bytes();
        let mut parts = response.split(|b| *b == 0);
        let (_, user, password) = (parts.next(), parts.next(), parts.next());
        // As in RabbitMQ, the well-known guest account works from this machine only.
        if self.config.user == "guest" && !self.peer.ip().is_loopback() {
            return false;
        }
        user == Some(self.config.user.as_bytes())
            && password == Some(self.config.password.as_bytes())
    }
}
