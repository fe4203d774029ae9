//! The connection class: the protocol header, connection.start with the broker's
//! capabilities, PLAIN authentication (start-ok), tune, open, update-secret, and close,
//! including waiting for the client's close-ok when the broker closed first.
//!
//! Each step is taken only in its turn ([`Stage`]), as in RabbitMQ. Before the client
//! has logged in and tuned, anything out of turn gets no answer at all: the connection
//! is dropped after [`SILENT_CLOSE_DELAY`], as RabbitMQ does, so a client cannot try
//! passwords quickly; a failed login is told why first. From tune-ok on, a method out of
//! turn is refused with connection.close 504, a frame on a channel with 505.

use std::time::Duration;

use amq_protocol::{
    frame::{AMQPFrame, parse_frame},
    protocol::{AMQPClass, connection},
    types::{AMQPValue, FieldTable},
};
use tokio::{io::AsyncReadExt, net::tcp::OwnedReadHalf, time::Instant};

use super::{CHANNEL_ERROR, COMMAND_INVALID, Connection, FRAME_MIN_SIZE, Fatal, NOT_ALLOWED};

/// The protocol header of AMQP 0-9-1, the one this broker speaks.
pub(super) const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// How long a connection whose handshake failed is kept, silent, before it is dropped:
/// RabbitMQ's `SILENT_CLOSE_DELAY`.
pub(super) const SILENT_CLOSE_DELAY: Duration = Duration::from_secs(3);

/// Where a connection is in the handshake, named as RabbitMQ names its states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// connection.start sent; waiting for start-ok with the credentials.
    Starting,
    /// Logged in, connection.tune sent; waiting for tune-ok.
    Tuning,
    /// Tuned; waiting for connection.open.
    Opening,
    /// Open: channels may be used.
    Running,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Tuning => "tuning",
            Self::Opening => "opening",
            Self::Running => "running",
        }
    }

    /// Whether the client has logged in and tuned: only then is an error answered.
    pub(super) fn answers_errors(self) -> bool {
        matches!(self, Self::Opening | Self::Running)
    }
}

/// Reads the client's protocol header until `deadline`: `Some(true)` if it is AMQP
/// 0-9-1, `Some(false)` if it is another, `None` if none came whole in time.
pub(super) async fn protocol_header(reader: &mut OwnedReadHalf, deadline: Instant) -> Option<bool> {
    let mut header = [0u8; 8];
    let read = tokio::time::timeout_at(deadline, reader.read_exact(&mut header)).await;
    matches!(read, Ok(Ok(_))).then(|| &header == PROTOCOL_HEADER)
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

    /// A method on channel 0: each in its turn, to its handler.
    pub(super) fn connection_method(
        &mut self,
        method: connection::AMQPMethod,
    ) -> Result<(), Fatal> {
        use connection::AMQPMethod as Method;
        match (self.stage, method) {
            (Stage::Starting, Method::StartOk(start_ok)) => self.connection_start_ok(&start_ok),
            (Stage::Tuning, Method::TuneOk(tune_ok)) => self.connection_tune_ok(&tune_ok),
            (Stage::Opening, Method::Open(open)) => self.connection_open(&open),
            (Stage::Running, Method::Close(_)) => self.connection_close(),
            (Stage::Running, Method::CloseOk(_)) => self.connection_close_ok(),
            // RabbitMQ's internal and HTTP auth backends, whose logins do not expire,
            // answer update-secret-ok without checking the new secret: the connection
            // is already authenticated, and nothing it may do depends on the secret.
            // So does this broker.
            (Stage::Running, Method::UpdateSecret(_)) => {
                self.method(
                    0,
                    AMQPClass::Connection(Method::UpdateSecretOk(connection::UpdateSecretOk {})),
                );
                Ok(())
            }
            (stage, other) => {
                let class = AMQPClass::Connection(other);
                self.close(
                    CHANNEL_ERROR,
                    &format!(
                        "CHANNEL_ERROR - unexpected method in connection state {}",
                        stage.name()
                    ),
                    class.get_amqp_class_id(),
                    class.get_amqp_method_id(),
                );
                Err(Fatal)
            }
        }
    }

    /// connection.start-ok: the credentials (see `login`); tune if they are good.
    fn connection_start_ok(&mut self, start_ok: &connection::StartOk) -> Result<(), Fatal> {
        if start_ok.mechanism.as_str() != "PLAIN" {
            self.close(
                COMMAND_INVALID,
                "COMMAND_INVALID - unknown authentication mechanism",
                10,
                11,
            );
            return Err(Fatal);
        }
        let failure_close = declares(start_ok, "authentication_failure_close");
        self.log_in(start_ok.response.as_bytes(), failure_close)
    }

    /// connection.tune-ok: the frame size and heartbeat the client settled on.
    fn connection_tune_ok(&mut self, tune: &connection::TuneOk) -> Result<(), Fatal> {
        self.frame_max = match tune.frame_max {
            0 => self.config.frame_max,
            asked => asked.max(FRAME_MIN_SIZE).min(self.config.frame_max),
        };
        // As RabbitMQ: the client may settle on fewer channels than offered, not more
        // (0, which RabbitMQ refuses, is taken as the offer).
        if tune.channel_max != 0 {
            self.channel_max = self.channel_max.min(tune.channel_max);
        }
        self.heartbeat = tune.heartbeat;
        self.stage = Stage::Opening;
        Ok(())
    }

    /// connection.open: the connection needs one of the open connections' places, the
    /// only vhost is `/`, and a limited account may have only so many connections open
    /// (checked in RabbitMQ's order, with its texts: a user over its `max-connections`
    /// is refused with 530 NOT_ALLOWED, and the connection closed).
    fn connection_open(&mut self, open: &connection::Open) -> Result<(), Fatal> {
        if !self.place.open() {
            self.close(
                NOT_ALLOWED,
                &format!(
                    "NOT_ALLOWED - connection refused: node connection limit ({}) is reached",
                    self.config.max_connections
                ),
                10,
                40,
            );
            return Err(Fatal);
        }
        if open.virtual_host.as_str() != "/" {
            self.close(
                NOT_ALLOWED,
                &format!("NOT_ALLOWED - vhost {} not found", open.virtual_host),
                10,
                40,
            );
            return Err(Fatal);
        }
        if let Some(quota) = self.quota(|limits| limits.connections) {
            let Some(counted) = self.sessions.connections.take(quota.user, quota.max) else {
                let text = format!(
                    "NOT_ALLOWED - connection refused for user '{}': user connection limit ({}) \
                     is reached",
                    quota.user, quota.max
                );
                self.close(NOT_ALLOWED, &text, 10, 40);
                return Err(Fatal);
            };
            self.counted = Some(counted);
        }
        self.stage = Stage::Running;
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
        let deadline = Instant::now() + within;
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
            buffer.reserve(super::READ_CHUNK);
            match tokio::time::timeout_at(deadline, reader.read_buf(buffer)).await {
                Ok(Ok(read)) if read > 0 => {}
                _ => return false,
            }
        }
    }
}

/// Whether the client's properties declare `capability`.
fn declares(start_ok: &connection::StartOk, capability: &str) -> bool {
    let Some(AMQPValue::FieldTable(capabilities)) =
        start_ok.client_properties.inner().get("capabilities")
    else {
        return false;
    };
    matches!(
        capabilities.inner().get(capability),
        Some(AMQPValue::Boolean(true))
    )
}
