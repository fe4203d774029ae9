//! One connection's life: connect, check the topology, declare the inbox, say hello,
//! serve commands and send heartbeats until the connection fails, a restart is asked
//! for, or shutdown.
//!
//! Every message published carries `user_id` = the device id, which the broker checks
//! against the login; every inbox message is obeyed only if its `user_id` is one of the
//! configured server accounts.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use common::redact;
use futures_util::StreamExt as _;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    },
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::FieldTable,
    uri::AMQPUri,
};
use protocol::{
    Bye, CommandId, CommandRequest, Delivered, DeviceMessage, ErrorCode, Heartbeat, Hello, Outcome,
    Progress, Reply, ServerMessage, TelemetrySample,
    names::{self, ExchangeType, PresenceKind},
};
use tokio::{sync::mpsc, task::AbortHandle};

use crate::{
    Command, CommandError, Config, Handler,
    pace::Pace,
    recent::{self, Recent, Seen},
};

/// How many commands the broker hands this device before it acknowledges them.
const PREFETCH: u16 = 32;

/// How a session ended, when it ended on purpose.
pub(crate) enum End {
    Shutdown,
    Restart {
        downtime: Duration,
    },
    /// A command's reply asked to hand over (a software update): run this, then go on
    /// as it says.
    HandOver(HandOver),
}

/// What a handler asks the session to do once its command's reply is out.
pub(crate) enum AfterReply {
    /// Go away (bye "restart") and come back after the downtime.
    Restart(Duration),
    /// Go away (bye "update"), then run the handover (see [`End::HandOver`]).
    HandOver(HandOver),
}

impl std::fmt::Debug for AfterReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Restart(downtime) => f.debug_tuple("Restart").field(downtime).finish(),
            Self::HandOver(_) => f.write_str("HandOver"),
        }
    }
}

/// Work done between two sessions, with no connection open: starting a new version of
/// the agent and watching it, say. Dropping it before it is done must leave the device
/// as it was (the update's guard rolls back).
pub(crate) type HandOver = Pin<Box<dyn Future<Output = HandedOver> + Send>>;

/// How a handover ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandedOver {
    /// Another process is the device now: this one stops.
    Exit,
    /// This process goes on: it connects again, as it was.
    Resume,
}

/// A session that failed; `served` tells whether it got as far as saying hello.
pub(crate) struct Failure {
    pub error: anyhow::Error,
    pub served: bool,
}

/// What a handler can do while it works on a command.
#[derive(Debug, Clone)]
pub struct CommandContext {
    publisher: Publisher,
    reply_to: String,
    command_id: CommandId,
    restart: mpsc::UnboundedSender<AfterReply>,
}

impl CommandContext {
    /// Reports progress: a percentage (0–100) if known, and what is happening.
    pub async fn progress(&self, percent: Option<u8>, message: impl Into<String>) {
        let progress = Progress {
            command_id: self.command_id.clone(),
            session_id: self.publisher.session_id.clone(),
            percent: percent.map(|p| p.min(100)),
            message: Some(message.into()),
        };
        self.publisher
            .reply(
                &self.reply_to,
                &self.command_id,
                &DeviceMessage::Progress(progress),
            )
            .await;
    }

    /// After this command's reply is sent, the device goes away (bye, disconnect) and
    /// comes back after `downtime` with a new session — what a reboot looks like.
    pub fn restart_after_reply(&self, downtime: Duration) {
        // The session is gone if this fails, and then there is nothing to restart.
        let _ = self.restart.send(AfterReply::Restart(downtime));
    }

    /// After this command's reply is sent, the device goes away (bye "update",
    /// disconnect) and `run` runs `handover` before it connects again, if it does. If the
    /// reply is never sent (the command times out, is cancelled, or the session is lost),
    /// `handover` is dropped unpolled.
    pub(crate) fn hand_over_after_reply(&self, handover: HandOver) {
        let _ = self.restart.send(AfterReply::HandOver(handover));
    }
}

/// Publishes on the session's channel, stamping every message with its session id and
/// with `user_id` = the device id (the broker refuses a `user_id` that is not the
/// login's, so servers can trust it).
#[derive(Debug, Clone)]
struct Publisher {
    channel: Channel,
    device_id: protocol::DeviceId,
    session_id: String,
}

impl Publisher {
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        correlation_id: Option<&CommandId>,
        message: &DeviceMessage,
    ) -> lapin::Result<()> {
        let mut properties = BasicProperties::default()
            .with_content_type(names::CONTENT_TYPE.into())
            .with_user_id(self.device_id.as_str().into());
        if let Some(id) = correlation_id {
            properties = properties.with_correlation_id(id.0.as_str().into());
        }
        self.channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                &protocol::encode(message),
                properties,
            )
            .await
            .map(drop)
    }

    async fn presence(&self, kind: PresenceKind, message: &DeviceMessage) -> lapin::Result<()> {
        let key = names::presence_key(&self.device_id, kind);
        self.publish(names::PRESENCE_EXCHANGE, &key, None, message)
            .await
    }

    /// Publishes one sample per reading to `telemetry.<device>.<metric>`.
    async fn telemetry(&self, readings: Vec<(String, f64)>) -> lapin::Result<()> {
        let ts_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        for (metric, value) in readings {
            let key = names::telemetry_key(&self.device_id, &metric);
            let sample = DeviceMessage::Telemetry(TelemetrySample {
                device_id: self.device_id.clone(),
                session_id: self.session_id.clone(),
                metric,
                value,
                ts_ms,
            });
            self.publish(names::TELEMETRY_EXCHANGE, &key, None, &sample)
                .await?;
        }
        Ok(())
    }

    /// Sends something about a command to the server's reply queue. A failure here means
    /// the connection is going down, which the session loop notices and handles.
    async fn reply(&self, reply_to: &str, command_id: &CommandId, message: &DeviceMessage) {
        if let Err(error) = self.publish("", reply_to, Some(command_id), message).await {
            tracing::warn!(command = %command_id, "cannot send to {reply_to}: {error}");
        }
    }
}

/// The longest a stopping session waits to say bye, and then for the broker to answer
/// its close: a stop must end even when the broker went away unannounced.
const GOODBYE_WITHIN: Duration = Duration::from_secs(2);

/// Commands running in this session, so that they can be cancelled, and stopped when
/// the session ends.
type Running = Arc<Mutex<HashMap<CommandId, AbortHandle>>>;

/// The commands handed to this device lately, kept across sessions (see [`Recent`]).
pub(crate) type SharedRecent = Arc<Mutex<Recent>>;

/// A session's view of the device's commands: those running in it, and those handed to
/// the device lately (in any session).
#[derive(Clone)]
struct Commands {
    running: Running,
    recent: SharedRecent,
}

/// Serves one session over a new connection, logging in as `login` says (see
/// [`Config::login`]).
pub(crate) async fn serve<H: Handler, S: Future<Output = ()>>(
    config: &Config,
    url: &str,
    login: &AMQPUri,
    handler: &Arc<H>,
    recent: &SharedRecent,
    mut shutdown: Pin<&mut S>,
) -> Result<End, Failure> {
    let failed = |served| move |error| Failure { error, served };
    let connecting = tokio::time::timeout(
        config.setup_timeout,
        Connection::connect_uri(login.clone(), ConnectionProperties::default()),
    );
    let connection = tokio::select! {
        connection = connecting => match connection {
            Ok(connection) => connection,
            Err(_) => {
                return Err(Failure {
                    error: anyhow::anyhow!(
                        "cannot connect to {}: no answer within {} ms",
                        redact(url),
                        config.setup_timeout.as_millis()
                    ),
                    served: false,
                });
            }
        },
        () = &mut shutdown => return Ok(End::Shutdown),
    }
    .map_err(|error| {
        let user = &login.authority.userinfo.username;
        let refused = matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)));
        let hint = if refused {
            " (is the device provisioned on this broker, and its secret right?)"
        } else {
            ""
        };
        anyhow::Error::new(error)
            .context(format!("cannot connect to {} as {user}{hint}", redact(url)))
    })
    .map_err(failed(false))?;
    let commands = Commands {
        running: Arc::default(),
        recent: recent.clone(),
    };
    let result = serve_connection(config, handler, &connection, &commands, shutdown).await;
    for (_, task) in commands
        .running
        .lock()
        .expect("no code panics while holding this lock")
        .drain()
    {
        task.abort();
    }
    // Bounded: a broker that vanished without a word (no FIN) never answers the close.
    if connection.status().connected()
        && tokio::time::timeout(GOODBYE_WITHIN, connection.close(200, "bye".into()))
            .await
            .is_err()
    {
        tracing::warn!(device = %config.device_id, "the broker did not answer the close within {GOODBYE_WITHIN:?}; leaving without it");
    }
    result
}

async fn serve_connection<H: Handler, S: Future<Output = ()>>(
    config: &Config,
    handler: &Arc<H>,
    connection: &Connection,
    tasks: &Commands,
    mut shutdown: Pin<&mut S>,
) -> Result<End, Failure> {
    let failed = |served| move |error: anyhow::Error| Failure { error, served };
    let (channel, inbox) = tokio::time::timeout(config.setup_timeout, declare(connection))
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "the broker did not answer the inbox's declaration within {} ms",
                config.setup_timeout.as_millis()
            ))
        })
        .map_err(failed(false))?;
    let mut commands = channel
        .basic_consume(
            inbox.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("cannot consume the inbox")
        .map_err(failed(false))?;
    // Readings go out at the configured pace, faster while servers hold watch leases.
    let mut pace = config
        .telemetry
        .map(|normal| Pace::new(normal, config.telemetry_fastest));
    let publisher = Publisher {
        channel: channel.clone(),
        device_id: config.device_id.clone(),
        session_id: new_session_id(),
    };
    let hello = Hello {
        device_id: config.device_id.clone(),
        session_id: publisher.session_id.clone(),
        inbox: inbox.clone(),
        kind: config.kind.clone(),
        firmware: config.firmware.clone(),
        heartbeat_ms: u64::try_from(config.heartbeat.as_millis()).unwrap_or(u64::MAX),
        capabilities: protocol::Capabilities {
            reporting: pace.as_ref().map(Pace::reporting),
            ..handler.capabilities()
        },
    };
    let hello = DeviceMessage::Hello(hello);
    publisher
        .presence(PresenceKind::Hello, &hello)
        .await
        .context("cannot say hello")
        .map_err(failed(false))?;
    // In a fleet, counted (and reported by the fleet's task), not logged one by one.
    let _online = match &config.fleet {
        Some(fleet) => {
            tracing::debug!(device = %config.device_id, session = %publisher.session_id, %inbox, "online");
            Some(fleet.session(&config.device_id))
        }
        None => {
            tracing::info!(device = %config.device_id, session = %publisher.session_id, %inbox, "online");
            None
        }
    };
    handler.online();

    let (restart_tx, mut restart_rx) = mpsc::unbounded_channel();
    let mut heartbeat = tokio::time::interval(config.heartbeat);
    heartbeat.tick().await; // The first tick is immediate; hello just said it all.
    // Far in the future when there is nothing to wait for, so the branch never fires.
    let never = || tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600);
    let mut last_reading = tokio::time::Instant::now();
    let mut next_reading = last_reading;
    // Inbox messages ignored because they are not from a server account.
    let mut ignored: u64 = 0;
    let bye = |reason: &str| {
        DeviceMessage::Bye(Bye {
            device_id: config.device_id.clone(),
            session_id: publisher.session_id.clone(),
            reason: reason.to_owned(),
        })
    };
    loop {
        tokio::select! {
            () = &mut shutdown => {
                let message = bye("shutdown");
                let goodbye = publisher.presence(PresenceKind::Bye, &message);
                if tokio::time::timeout(GOODBYE_WITHIN, goodbye).await.is_err() {
                    tracing::warn!(device = %config.device_id, "could not say bye within {GOODBYE_WITHIN:?}");
                }
                return Ok(End::Shutdown);
            }
            Some(after) = restart_rx.recv() => match after {
                AfterReply::Restart(downtime) => {
                    let _ = publisher.presence(PresenceKind::Bye, &bye("restart")).await;
                    return Ok(End::Restart { downtime });
                }
                AfterReply::HandOver(handover) => {
                    let _ = publisher.presence(PresenceKind::Bye, &bye("update")).await;
                    return Ok(End::HandOver(handover));
                }
            },
            _ = heartbeat.tick() => {
                let beat = DeviceMessage::Heartbeat(Heartbeat { device_id: config.device_id.clone(), session_id: publisher.session_id.clone() });
                publisher.presence(PresenceKind::Heartbeat, &beat).await.context("cannot send a heartbeat").map_err(failed(true))?;
            }
            () = tokio::time::sleep_until(next_reading), if pace.is_some() => {
                publisher.telemetry(handler.readings()).await.context("cannot send telemetry").map_err(failed(true))?;
                last_reading = tokio::time::Instant::now();
                if let Some(pace) = &pace {
                    next_reading = last_reading + pace.interval(last_reading.into_std());
                }
            }
            () = tokio::time::sleep_until(pace.as_ref().and_then(Pace::next_expiry).map_or_else(never, Into::into)) => {
                if let Some(pace) = &mut pace {
                    pace.expire(std::time::Instant::now());
                    tracing::debug!(device = %config.device_id, "a watch lease lapsed; reporting every {:?}", pace.interval(std::time::Instant::now()));
                    next_reading = last_reading + pace.interval(std::time::Instant::now());
                }
            }
            delivery = commands.next() => match delivery {
                Some(Ok(delivery)) if !from_server(config, &delivery) => {
                    ignore(&config.device_id, &mut ignored, delivery).await.map_err(failed(true))?;
                }
                Some(Ok(delivery)) => {
                    on_delivery(handler, &publisher, tasks, &restart_tx, &hello, pace.as_mut(), delivery).await.map_err(failed(true))?;
                    if let Some(pace) = &pace {
                        // Sooner when a viewer arrived (at once, if the faster interval has
                        // already passed), later when the last one left.
                        next_reading = last_reading + pace.interval(std::time::Instant::now());
                    }
                }
                Some(Err(error)) => return Err(failed(true)(anyhow::Error::new(error).context("inbox consumer failed"))),
                None => return Err(failed(true)(anyhow::anyhow!("the broker cancelled the inbox consumer"))),
            }
        }
    }
}

/// Opens the session's channel, checks that the exchanges it uses exist, and declares
/// its inbox: broker-named, exclusive (only this connection may consume it) and
/// auto-deleted, so that it disappears with the connection and commands to a gone
/// device come back unroutable at once.
async fn declare(connection: &Connection) -> anyhow::Result<(Channel, String)> {
    let channel = connection
        .create_channel()
        .await
        .context("cannot open a channel")?;
    for exchange in [
        names::PRESENCE_EXCHANGE,
        names::TELEMETRY_EXCHANGE,
        names::DISCOVER_EXCHANGE,
    ] {
        check_exchange(&channel, exchange).await?;
    }
    let inbox = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .context("cannot declare the inbox")?;
    // Servers that start later ask every device to say hello again through this exchange.
    channel
        .queue_bind(
            inbox.name().clone(),
            names::DISCOVER_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("cannot bind the inbox for discovery")?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .context("cannot set prefetch")?;
    Ok((channel, inbox.name().to_string()))
}

/// Checks that one of Tether's exchanges exists, without declaring it (a passive
/// declare). Servers declare the topology; a device account may not, and a device that
/// declared it could get it wrong. A missing exchange means no server has set up this
/// broker yet: the session fails and is retried with backoff until one has.
///
/// # Panics
/// If `name` is not one of [`names::EXCHANGES`]: a mistake in this module.
async fn check_exchange(channel: &Channel, name: &str) -> anyhow::Result<()> {
    let (_, kind) = names::EXCHANGES
        .iter()
        .find(|(known, _)| *known == name)
        .unwrap_or_else(|| panic!("{name} is not one of Tether's exchanges"));
    let kind = match kind {
        ExchangeType::Topic => ExchangeKind::Topic,
        ExchangeType::Fanout => ExchangeKind::Fanout,
    };
    let passive = ExchangeDeclareOptions {
        passive: true,
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(name.into(), kind, passive, FieldTable::default())
        .await
        .map_err(|error| match error.kind() {
            lapin::ErrorKind::ProtocolError(amqp)
                if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)) =>
            {
                anyhow::anyhow!(
                    "exchange {name} does not exist: the server has not declared Tether's \
                     topology on this broker yet (start a Tether server first)"
                )
            }
            _ => anyhow::Error::new(error).context(format!("cannot check exchange {name}")),
        })
}

/// Whether an inbox message comes from one of the server accounts the device obeys,
/// as the broker vouches with its `user_id`.
fn from_server(config: &Config, delivery: &Delivery) -> bool {
    delivery
        .properties
        .user_id()
        .as_ref()
        .is_some_and(|user| config.server_accounts.iter().any(|s| s == user.as_str()))
}

/// Acknowledges and drops an inbox message that is not from a server account: another
/// device (which can put messages into any queue it knows the name of) or a sender
/// without a `user_id`. It is never run nor answered, and its body is never logged.
/// The warning is written for the first ten, then at every power of two, so that a
/// flood cannot fill the log; `ignored` counts them all.
async fn ignore(
    device: &protocol::DeviceId,
    ignored: &mut u64,
    delivery: Delivery,
) -> anyhow::Result<()> {
    *ignored += 1;
    let sender = delivery
        .properties
        .user_id()
        .as_ref()
        .map(|user| user.as_str().to_owned());
    delivery
        .ack(BasicAckOptions::default())
        .await
        .context("cannot acknowledge an ignored inbox message")?;
    if *ignored <= 10 || ignored.is_power_of_two() {
        match sender {
            Some(user) => {
                tracing::warn!(%device, ignored = *ignored, "ignoring an inbox message from {user:?}: not a server account")
            }
            None => {
                tracing::warn!(%device, ignored = *ignored, "ignoring an inbox message without a user_id: not from a server account")
            }
        }
    }
    Ok(())
}

/// Handles one message from the inbox. Anything that is not a usable command is logged
/// and acknowledged, so it cannot come back; only a broker failure is an error.
async fn on_delivery<H: Handler>(
    handler: &Arc<H>,
    publisher: &Publisher,
    commands: &Commands,
    restart: &mpsc::UnboundedSender<AfterReply>,
    hello: &DeviceMessage,
    pace: Option<&mut Pace>,
    delivery: Delivery,
) -> anyhow::Result<()> {
    let message = protocol::decode::<ServerMessage>(&delivery.data);
    let reply_to = delivery
        .properties
        .reply_to()
        .as_ref()
        .map(|r| r.to_string());
    delivery
        .ack(BasicAckOptions::default())
        .await
        .context("cannot acknowledge a command")?;
    match message {
        Err(error) => tracing::warn!("ignoring an inbox message: {error}"),
        Ok(ServerMessage::Watch(watch)) => match pace {
            Some(pace) => {
                pace.watch(
                    &watch.replica,
                    Duration::from_millis(watch.interval_ms),
                    Duration::from_millis(watch.lease_ms),
                    std::time::Instant::now(),
                );
                tracing::debug!(replica = %watch.replica, "watched; reporting every {:?}", pace.interval(std::time::Instant::now()));
            }
            None => tracing::debug!("ignoring a watch: this device reports no telemetry"),
        },
        Ok(ServerMessage::Unwatch(unwatch)) => {
            if let Some(pace) = pace {
                pace.unwatch(&unwatch.replica);
            }
        }
        Ok(ServerMessage::Announce(_)) => publisher
            .presence(PresenceKind::Hello, hello)
            .await
            .context("cannot announce the device again")?,
        Ok(ServerMessage::Cancel(cancel)) => {
            let task = commands
                .running
                .lock()
                .expect("no code panics while holding this lock")
                .remove(&cancel.command_id);
            if let Some(task) = task {
                task.abort();
                tracing::info!(command = %cancel.command_id, "cancelled");
                let outcome = Outcome::Error {
                    code: ErrorCode::Cancelled,
                    message: "cancelled on request".into(),
                };
                lock(&commands.recent).ended(&cancel.command_id, &outcome);
                if let Some(reply_to) = &reply_to {
                    publisher
                        .reply(
                            reply_to,
                            &cancel.command_id,
                            &reply(publisher, &cancel.command_id, outcome),
                        )
                        .await;
                }
            }
        }
        Ok(ServerMessage::Command(request)) => {
            let Some(reply_to) = reply_to else {
                tracing::warn!(command = %request.command_id, "ignoring a command without reply_to");
                return Ok(());
            };
            start_command(handler, publisher, commands, restart, request, reply_to).await;
        }
    }
    Ok(())
}

async fn start_command<H: Handler>(
    handler: &Arc<H>,
    publisher: &Publisher,
    commands: &Commands,
    restart: &mpsc::UnboundedSender<AfterReply>,
    request: CommandRequest,
    reply_to: String,
) {
    let Commands { running, recent } = commands;
    let id = request.command_id.clone();
    let delivered = DeviceMessage::Delivered(Delivered {
        command_id: id.clone(),
        session_id: publisher.session_id.clone(),
    });
    publisher.reply(&reply_to, &id, &delivered).await;

    // Seen before: never run twice (see `Recent`).
    let seen = lock(recent).start(&id);
    if let Some(seen) = seen {
        let again = match seen {
            // Its one reply comes when it ends.
            Seen::Started if running_now(running, &id) => None,
            Seen::Ended(outcome) => Some(outcome),
            other => Some(recent::not_again(&other)),
        };
        tracing::warn!(command = %id, "this command came again; it is not run again");
        if let Some(outcome) = again {
            publisher
                .reply(&reply_to, &id, &reply(publisher, &id, outcome))
                .await;
        }
        return;
    }

    let command = match check(handler.as_ref(), request) {
        Ok(command) => command,
        Err(error) => {
            let outcome = Outcome::Error {
                code: error.code,
                message: error.message,
            };
            lock(recent).ended(&id, &outcome);
            publisher
                .reply(&reply_to, &id, &reply(publisher, &id, outcome))
                .await;
            return;
        }
    };
    tracing::info!(command = %id, name = %command.name, "running");
    let (inner_restart_tx, mut inner_restart_rx) = mpsc::unbounded_channel();
    let context = CommandContext {
        publisher: publisher.clone(),
        reply_to: reply_to.clone(),
        command_id: id.clone(),
        restart: inner_restart_tx,
    };
    let (handler, publisher_for_task, running_for_task, recent, restart) = (
        handler.clone(),
        publisher.clone(),
        running.clone(),
        recent.clone(),
        restart.clone(),
    );
    // Held across the spawn so that the task cannot remove itself before it is listed.
    let mut listed = running
        .lock()
        .expect("no code panics while holding this lock");
    let key = id.clone();
    let task = tokio::spawn(async move {
        let timeout = command.timeout;
        let outcome = match tokio::time::timeout(timeout, handler.handle(command, context)).await {
            Ok(Ok(result)) => Outcome::Ok { result },
            Ok(Err(error)) => Outcome::Error {
                code: error.code,
                message: error.message,
            },
            Err(_) => Outcome::Error {
                code: ErrorCode::Failed,
                message: format!("gave up after {} ms", timeout.as_millis()),
            },
        };
        // Recorded before it leaves `running`, so that a copy arriving meanwhile finds
        // it in one or the other.
        lock(&recent).ended(&id, &outcome);
        running_for_task
            .lock()
            .expect("no code panics while holding this lock")
            .remove(&id);
        let message = reply(&publisher_for_task, &id, outcome);
        publisher_for_task.reply(&reply_to, &id, &message).await;
        // A restart or handover asked for by the handler happens only once its reply is
        // out.
        if let Ok(after) = inner_restart_rx.try_recv() {
            let _ = restart.send(after);
        }
    });
    listed.insert(key, task.abort_handle());
}

/// Checks a request against the announced capabilities, as the server did; a device
/// must not trust its input.
fn check<H: Handler>(handler: &H, request: CommandRequest) -> Result<Command, CommandError> {
    let capabilities = handler.capabilities();
    let Some(spec) = capabilities.command(&request.name) else {
        return Err(CommandError {
            code: ErrorCode::UnknownCommand,
            message: format!("unknown command \"{}\"", request.name),
        });
    };
    let args = spec
        .validate(&request.args)
        .map_err(|e| CommandError::invalid_arguments(e.to_string()))?;
    // Until the server's deadline when this clock agrees with it: part of the budget
    // may have gone by in the broker.
    let timeout = request.time_left(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            }),
    );
    Ok(Command {
        id: request.command_id,
        name: request.name,
        args,
        timeout,
    })
}

fn reply(publisher: &Publisher, command_id: &CommandId, outcome: Outcome) -> DeviceMessage {
    DeviceMessage::Reply(Reply {
        command_id: command_id.clone(),
        session_id: publisher.session_id.clone(),
        outcome,
    })
}

fn lock(recent: &SharedRecent) -> std::sync::MutexGuard<'_, Recent> {
    recent
        .lock()
        .expect("no code panics while holding the recent commands")
}

/// Whether `id` runs in this session now.
fn running_now(running: &Running, id: &CommandId) -> bool {
    running
        .lock()
        .expect("no code panics while holding this lock")
        .contains_key(id)
}

fn new_session_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}
