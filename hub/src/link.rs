//! The broker link: connecting, declaring this replica's topology, consuming, and
//! reconnecting with backoff when the connection breaks, until the hub stops.
//!
//! Topology: devices publish presence to `tether.presence`; this replica reads it
//! through its own exclusive queue bound to `presence.#`, reads replies from its own
//! exclusive reply queue, reads readings through its own queue bound to `telemetry.#`,
//! and shares command updates with other replicas over the `tether.events` fanout
//! exchange (its queue there also takes what one replica asks another directly: a
//! forwarded cancel and its answer). Consumers use auto-ack on these private queues, so nothing a handler
//! refuses can redeliver in a loop.

use std::time::Duration;

use anyhow::Context as _;
use common::{Retry, redact};
use futures_util::StreamExt as _;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer,
    message::Delivery,
    options::{
        BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use protocol::{CommandStatus, ServerMessage, names};

use crate::hub::{Hub, HubConfig};

/// Why pending commands end when the server stops.
const STOPPED: &str =
    "the server stopped before the device answered; whether it was carried out is unknown";
/// The longest pause between a replica's (and a recorder's) attempts to reach its broker.
pub(crate) const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// A replica's durable reply queue is deleted once unused this long (a day).
const REPLY_QUEUE_EXPIRES_MS: i64 = 24 * 3_600 * 1_000;
/// Longest the hub spends telling others and closing its connection when it stops.
const GOODBYE: Duration = Duration::from_secs(2);

/// A connected broker link: the publishing channel (in confirm mode) and the queue that
/// devices send this replica's replies to.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub(crate) channel: Channel,
    pub(crate) reply_queue: String,
    /// This replica's queue on `tether.events`, where other replicas also send it
    /// requests (a cancel forwarded to it) and answers (to one it forwarded).
    pub(crate) events_queue: String,
    /// The broker account this replica logged in as: every message it publishes says
    /// so in `user_id`, which the broker checks and the agents require of a server.
    pub(crate) user: String,
}

impl Link {
    /// The properties every message of this replica starts from: Tether's content type
    /// and the account it speaks as.
    pub(crate) fn properties(&self) -> BasicProperties {
        signed(&self.user)
    }

    /// Publishes to a device's inbox through the default exchange, without waiting for
    /// the broker's confirm.
    pub(crate) async fn to_inbox(
        &self,
        inbox: &str,
        message: &ServerMessage,
        properties: BasicProperties,
    ) -> lapin::Result<()> {
        self.channel
            .basic_publish(
                "".into(),
                inbox.into(),
                BasicPublishOptions::default(),
                &protocol::encode(message),
                properties,
            )
            .await
            .map(drop)
    }
}

/// Tether's content type and `user_id` = `user`.
fn signed(user: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(names::CONTENT_TYPE.into())
        .with_user_id(user.into())
}

/// The sender a message carries: the broker guarantees it is the account that
/// published it (RabbitMQ's `user_id` rule, which the embedded broker keeps too).
pub(crate) fn sender(delivery: &Delivery) -> Option<&str> {
    delivery
        .properties
        .user_id()
        .as_ref()
        .map(|user| user.as_str())
}

/// The consumers of one connection.
pub(crate) struct Consumers {
    presence: Consumer,
    replies: Consumer,
    events: Consumer,
    telemetry: Consumer,
}

/// A fresh connection with its link and consumers.
pub(crate) struct Connected {
    connection: Connection,
    /// Which of the broker URLs it is to (`common::Brokers`).
    index: usize,
    pub(crate) link: Link,
    consumers: Consumers,
}

/// Which of the consumers a delivery came from.
#[derive(Debug, Clone, Copy)]
enum Queue {
    Presence,
    Replies,
    Events,
    Telemetry,
}

impl Hub {
    /// Serves the broker connection; when it fails, fails what was pending and
    /// reconnects with backoff. When the hub stops, ends what is pending as the server
    /// having stopped, tells the other replicas, and closes the connection.
    pub(crate) async fn maintain_link(&self, first: Option<Connected>) {
        let shutdown = self.inner.shutdown.clone();
        let mut current = first;
        loop {
            let connected = match current.take() {
                Some(connected) => connected,
                None => match self.reconnect().await {
                    Some(connected) => {
                        // Back: the other replicas may have stopped sharing with this one.
                        self.announce().await;
                        // What they shared meanwhile went to the queue that was lost.
                        self.refresh_mirrors().await;
                        connected
                    }
                    None => break,
                },
            };
            let Connected {
                connection,
                index,
                mut consumers,
                ..
            } = connected;
            let failed = tokio::select! {
                error = self.consume(&mut consumers) => error,
                () = shutdown.stopping() => {
                    let ended = self.end_pending_on_stop();
                    let goodbye = async {
                        self.share(&ended).await;
                        // What another caller was still sharing goes out first.
                        self.shared(GOODBYE / 2).await;
                        self.say_goodbye().await;
                        self.set_link(None);
                        let _ = connection.close(200, "the server is stopping".into()).await;
                    };
                    if tokio::time::timeout(GOODBYE, goodbye).await.is_err() {
                        tracing::warn!("the broker did not answer the goodbye in {GOODBYE:?}");
                    }
                    return;
                }
            };
            tracing::warn!("lost the broker connection: {failed:#}");
            // Its node may be down: the next attempt goes to the next URL.
            self.inner.brokers.lost(index);
            self.set_link(None);
            let _ =
                tokio::time::timeout(GOODBYE, connection.close(200, "reconnecting".into())).await;
            self.end_all(
                CommandStatus::OutcomeUnknown,
                "the server lost its broker connection; the answer cannot arrive, so whether it was carried out is unknown",
            );
        }
        // Stopped while disconnected.
        self.end_pending_on_stop();
    }

    /// Re-reads, from the command log, the other replicas' commands this replica mirrors
    /// and had not seen end: the changes they shared while this replica's link was down
    /// went to its queue on `tether.events`, which went with the link, and would
    /// otherwise show them unfinished here for good (found stopping a cluster node under
    /// load, `server/tests/cluster.rs`). Called once the new queue exists, so that a
    /// change is either in the log by now or arrives on it.
    pub(crate) async fn refresh_mirrors(&self) {
        let Some(log) = &self.inner.config.command_log else {
            return;
        };
        let unfinished = self.state().commands.unfinished_mirrors();
        let mut refreshed = Vec::new();
        for (id, origin) in unfinished {
            match log.store.logged_command(&id.0).await {
                Ok(Some(logged)) => refreshed.push((logged.view, origin)),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(
                        "cannot re-read other replicas' commands from the log: {error:#}"
                    );
                    return;
                }
            }
        }
        if refreshed.is_empty() {
            return;
        }
        let mut state = self.state();
        let changed: Vec<protocol::api::CommandView> = refreshed
            .into_iter()
            .filter_map(|(view, origin)| state.commands.mirror(view, &origin))
            .collect();
        self.broadcast_commands(&state, &changed);
    }

    /// A stopping hub ends its pending commands with their outcome unknown (the device
    /// may have carried them out), unless a command log keeps them for its next start.
    fn end_pending_on_stop(&self) -> Vec<protocol::api::CommandView> {
        if self
            .inner
            .config
            .command_log
            .as_ref()
            .is_some_and(|log| log.resumable)
        {
            let pending = self.state().commands.pending();
            if pending > 0 {
                tracing::info!("leaving {pending} pending commands in the log for the next start");
            }
            return Vec::new();
        }
        self.end_all(CommandStatus::OutcomeUnknown, STOPPED)
    }

    /// Connects again, with backoff and jitter up to 5 s between attempts; `None` if
    /// the hub stops first. A replica is one of a few, not of a fleet: trying every 5 s
    /// costs the broker nothing, and a cap of 15 s kept commands refused for up to 15 s
    /// after RabbitMQ was back (the fault suite's rabbit-stop).
    async fn reconnect(&self) -> Option<Connected> {
        let mut retry = Retry::new(Duration::from_millis(500), RECONNECT_MAX);
        loop {
            let pause = retry.failed();
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.inner.shutdown.stopping() => return None,
            }
            match connect(&self.inner.config, &self.inner.brokers).await {
                Ok(connected) => {
                    tracing::info!("connected to the broker");
                    self.set_link(Some(connected.link.clone()));
                    return Some(connected);
                }
                Err(error) => {
                    tracing::warn!("cannot reach the broker: {error:#}; retrying")
                }
            }
        }
    }

    /// Handles deliveries until a consumer fails; returns why.
    async fn consume(&self, consumers: &mut Consumers) -> anyhow::Error {
        loop {
            let delivery = tokio::select! {
                d = consumers.presence.next() => d.map(|d| d.map(|d| (Queue::Presence, d))),
                d = consumers.replies.next() => d.map(|d| d.map(|d| (Queue::Replies, d))),
                d = consumers.events.next() => d.map(|d| d.map(|d| (Queue::Events, d))),
                d = consumers.telemetry.next() => d.map(|d| d.map(|d| (Queue::Telemetry, d))),
            };
            match delivery {
                Some(Ok((Queue::Presence, delivery))) => self.on_presence(&delivery),
                Some(Ok((Queue::Replies, delivery))) => {
                    let changed = self.on_reply(&delivery);
                    self.share(&changed).await;
                }
                Some(Ok((Queue::Events, delivery))) => self.on_replica_event(&delivery),
                Some(Ok((Queue::Telemetry, delivery))) => self.on_telemetry(&delivery),
                Some(Err(error)) => return anyhow::Error::new(error).context("a consumer failed"),
                None => return anyhow::anyhow!("the broker cancelled a consumer"),
            }
        }
    }
}

/// Longest one broker URL may take to accept a connection before the next is tried (a
/// node that accepts sockets but never answers must not hold the hub).
const CONNECT_WITHIN: Duration = Duration::from_secs(10);

/// Connects to the first of the broker URLs that answers, in turn from the one to try
/// next (`common::Brokers`), and declares this replica's topology there; an error
/// naming each URL and why it failed when none did.
pub(crate) async fn connect(
    config: &HubConfig,
    brokers: &common::Brokers,
) -> anyhow::Result<Connected> {
    let mut failures = Vec::new();
    for (index, amqp_url) in brokers.round() {
        match connect_to(config, amqp_url, index).await {
            Ok(connected) => {
                brokers.connected(index);
                if brokers.urls().len() > 1 {
                    tracing::info!("connected to the broker at {}", redact(amqp_url));
                }
                return Ok(connected);
            }
            Err(error) if brokers.urls().len() == 1 => return Err(error),
            Err(error) => {
                tracing::warn!("{error:#}; trying the next broker URL");
                failures.push(format!("{error:#}"));
            }
        }
    }
    anyhow::bail!("no broker answered: {}", failures.join("; "))
}

/// Connects to the broker at `amqp_url` and declares this replica's topology.
async fn connect_to(config: &HubConfig, amqp_url: &str, index: usize) -> anyhow::Result<Connected> {
    let user = common::amqp_user(amqp_url);
    let connection = tokio::time::timeout(
        CONNECT_WITHIN,
        Connection::connect(amqp_url, ConnectionProperties::default()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no answer within {CONNECT_WITHIN:?}"))
    .and_then(|connected| connected.map_err(anyhow::Error::new))
    .with_context(|| format!("cannot connect to the broker at {}", redact(amqp_url)))?;
    let channel = connection
        .create_channel()
        .await
        .context("cannot open a channel")?;
    common::amqp::declare_exchanges(&channel).await?;
    if let Some(store_queue) = &config.store_queue {
        // On a channel of its own: a refusal (a queue of that name declared with other
        // arguments) closes the channel it came on, and must not cost the hub its link.
        // The recorders keep trying, and saying why.
        let declared = async {
            let own = connection.create_channel().await?;
            store_queue.declare(&own).await?;
            own.close(200, "declared".into()).await?;
            anyhow::Ok(())
        };
        if let Err(error) = declared.await {
            tracing::error!("{error:#}; readings are not being stored");
        }
    }
    let private = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let queue = async |exchange: Option<(&str, &str)>| -> anyhow::Result<String> {
        let name = channel
            .queue_declare("".into(), private, FieldTable::default())
            .await
            .context("cannot declare a queue")?
            .name()
            .to_string();
        if let Some((exchange, key)) = exchange {
            channel
                .queue_bind(
                    name.as_str().into(),
                    exchange.into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("cannot bind to {exchange}"))?;
        }
        Ok(name)
    };
    let presence_queue = queue(Some((names::PRESENCE_EXCHANGE, names::PRESENCE_ALL))).await?;
    let reply_queue = match &config.command_log {
        // Durable and named after the replica, so that replies wait for it across a
        // restart; deleted a day after its replica was last seen.
        Some(log) if log.resumable => {
            let name = log.reply_queue();
            let mut arguments = FieldTable::default();
            arguments.insert(
                "x-expires".into(),
                AMQPValue::LongLongInt(REPLY_QUEUE_EXPIRES_MS),
            );
            // Quorum: replicated, so that the replies survive the node it was on.
            config.queue_type.add_to(&mut arguments);
            let durable = QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            channel
                .queue_declare(name.as_str().into(), durable, arguments)
                .await
                .map_err(|error| config.queue_type.declare_error(&name, error))
                .context("cannot declare the reply queue")?;
            name
        }
        _ => queue(None).await?,
    };
    let events_queue = queue(Some((names::EVENTS_EXCHANGE, ""))).await?;
    let telemetry_queue = queue(Some((names::TELEMETRY_EXCHANGE, names::TELEMETRY_ALL))).await?;
    // Auto-ack: these queues are private and transient, and a message that cannot be
    // handled is dropped and counted, so nothing could usefully be redelivered.
    let auto_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let consume = async |queue: &str| -> anyhow::Result<Consumer> {
        channel
            .basic_consume(queue.into(), "".into(), auto_ack, FieldTable::default())
            .await
            .with_context(|| format!("cannot consume {queue}"))
    };
    let consumers = Consumers {
        presence: consume(&presence_queue).await?,
        replies: consume(&reply_queue).await?,
        events: consume(&events_queue).await?,
        telemetry: consume(&telemetry_queue).await?,
    };
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("cannot enable publisher confirms")?;
    // Devices that were online before this connection say hello again, so a replica
    // that (re)starts knows the whole fleet at once instead of after each reconnect.
    let announce = protocol::encode(&ServerMessage::Announce(protocol::AnnounceRequest {}));
    channel
        .basic_publish(
            names::DISCOVER_EXCHANGE.into(),
            "".into(),
            BasicPublishOptions::default(),
            &announce,
            signed(&user),
        )
        .await
        .context("cannot ask devices to announce themselves")?;
    Ok(Connected {
        connection,
        index,
        link: Link {
            channel,
            reply_queue,
            events_queue,
            user,
        },
        consumers,
    })
}
