//! What the agent's tests share: an embedded broker with device accounts, and the
//! server's side of the conversation done with bare lapin, logged in as the server
//! account (the hub is not part of these tests).

#![allow(dead_code, reason = "each test file uses some of these")]

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt as _;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer,
    options::{BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use protocol::{DeviceId, DeviceMessage, Hello, ServerMessage, names, policy::Account};

/// The server account's user name and password on the test broker.
pub const SERVER_USER: &str = "tether-server";
pub const SERVER_PASSWORD: &str = "pw";

/// Provisioned devices, by id, with their secrets; remembers who tried to log in.
#[derive(Debug, Default)]
pub struct Devices {
    pub secrets: HashMap<String, String>,
    pub attempts: Mutex<Vec<String>>,
}

impl Devices {
    pub fn new(devices: &[(&str, &str)]) -> Self {
        Self {
            secrets: devices
                .iter()
                .map(|(id, secret)| ((*id).to_owned(), (*secret).to_owned()))
                .collect(),
            attempts: Mutex::default(),
        }
    }

    /// How many logins (right or wrong) `user` has tried.
    pub fn attempts_by(&self, user: &str) -> usize {
        self.attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|u| *u == user)
            .count()
    }
}

impl broker::Authenticator for Devices {
    fn authenticate<'a>(
        &'a self,
        user: &'a str,
        password: &'a str,
        _peer: IpAddr,
    ) -> Pin<Box<dyn Future<Output = Option<Account>> + Send + 'a>> {
        Box::pin(async move {
            self.attempts.lock().unwrap().push(user.to_owned());
            let secret = self.secrets.get(user)?;
            (secret == password)
                .then(|| DeviceId::new(user).ok().map(Account::Device))
                .flatten()
        })
    }
}

/// A broker of the test's own, serving `devices` beside the server account.
pub struct TestBroker {
    pub addr: SocketAddr,
    pub devices: Arc<Devices>,
}

impl TestBroker {
    pub async fn start(devices: Devices) -> Self {
        let devices = Arc::new(devices);
        let config = broker::Config {
            user: SERVER_USER.into(),
            password: SERVER_PASSWORD.into(),
            authenticator: Some(devices.clone()),
            ..broker::Config::on_free_port()
        };
        let broker = broker::Broker::bind(config)
            .await
            .expect("the broker binds");
        let addr = broker.local_addr().expect("the broker has an address");
        tokio::spawn(broker.serve(std::future::pending()));
        Self { addr, devices }
    }

    /// The broker's URL without credentials, as a device is told it.
    pub fn url(&self) -> String {
        format!("amqp://{}/%2f", self.addr)
    }

    /// The URL with the server account's credentials.
    pub fn server_url(&self) -> String {
        format!("amqp://{SERVER_USER}:{SERVER_PASSWORD}@{}/%2f", self.addr)
    }

    /// An agent configuration for `id` logging in with `secret`, reconnecting quickly.
    pub fn agent_config(&self, id: &str, secret: &str, kind: &str) -> agent::Config {
        let mut config = agent::Config::new(self.url(), DeviceId::new(id).unwrap(), kind);
        config.secret = Some(secret.into());
        config.reconnect_min = Duration::from_millis(50);
        config.reconnect_max = Duration::from_millis(200);
        config
    }

    /// The server's side: a connection as the server account, with a channel.
    pub async fn server(&self) -> Server {
        let connection = Connection::connect(&self.server_url(), ConnectionProperties::default())
            .await
            .expect("the server account logs in");
        let channel = connection.create_channel().await.unwrap();
        Server {
            _connection: connection,
            channel,
        }
    }
}

/// A connection as the server account.
pub struct Server {
    _connection: Connection,
    pub channel: Channel,
}

impl Server {
    /// Declares Tether's exchanges, as a server does when it starts.
    pub async fn declare_topology(&self) {
        common::amqp::declare_exchanges(&self.channel)
            .await
            .expect("the server account declares the topology");
    }

    /// A private queue, consumed without acks.
    pub async fn private_queue(&self) -> (String, Consumer) {
        let private = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        let queue = self
            .channel
            .queue_declare("".into(), private, FieldTable::default())
            .await
            .unwrap();
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let consumer = self
            .channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                no_ack,
                FieldTable::default(),
            )
            .await
            .unwrap();
        (queue.name().to_string(), consumer)
    }

    /// A private queue bound to `exchange` with `binding`, consumed without acks.
    pub async fn listen(&self, exchange: &str, binding: &str) -> Consumer {
        let (queue, consumer) = self.private_queue().await;
        self.channel
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                binding.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        consumer
    }

    /// Listens to `device`'s presence messages.
    pub async fn presence_of(&self, device: &str) -> Consumer {
        self.listen(names::PRESENCE_EXCHANGE, &format!("presence.{device}.*"))
            .await
    }

    /// Asks every device to say hello again, as a server does when it starts.
    pub async fn announce(&self) {
        publish(
            &self.channel,
            names::DISCOVER_EXCHANGE,
            "",
            &ServerMessage::Announce(protocol::AnnounceRequest {}),
            BasicProperties::default().with_user_id(SERVER_USER.into()),
        )
        .await;
    }
}

/// Publishes `message` as JSON with `properties`.
pub async fn publish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    message: &ServerMessage,
    properties: BasicProperties,
) {
    channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            &protocol::encode(message),
            properties.with_content_type(names::CONTENT_TYPE.into()),
        )
        .await
        .expect("the publish goes out");
}

/// The next message from `consumer`, if one comes within `wait`.
pub async fn next_within(
    consumer: &mut Consumer,
    wait: Duration,
) -> Option<lapin::message::Delivery> {
    tokio::time::timeout(wait, consumer.next())
        .await
        .ok()
        .map(|delivery| {
            delivery
                .expect("the consumer goes on")
                .expect("the delivery is whole")
        })
}

/// Waits (5 s at most) for a hello on a presence listener, skipping heartbeats.
pub async fn hello(presence: &mut Consumer) -> (Hello, lapin::message::Delivery) {
    loop {
        let delivery = next_within(presence, Duration::from_secs(5))
            .await
            .expect("the device says hello");
        if let DeviceMessage::Hello(hello) = protocol::decode(&delivery.data).unwrap() {
            return (hello, delivery);
        }
    }
}

/// The `user_id` property of a delivery, if any.
pub fn user_id(delivery: &lapin::message::Delivery) -> Option<&str> {
    delivery.properties.user_id().as_ref().map(|u| u.as_str())
}

/// Puts `message` into a device's inbox as the server account, answers to `reply_to`.
pub async fn to_inbox(
    server: &Server,
    inbox: &str,
    reply_to: &str,
    id: &str,
    message: &ServerMessage,
) {
    let properties = BasicProperties::default()
        .with_reply_to(reply_to.into())
        .with_correlation_id(id.into())
        .with_user_id(SERVER_USER.into());
    publish(&server.channel, "", inbox, message, properties).await;
}

/// Reads answers until every command in `expected` has its reply (10 s at most), checking
/// that each answer is stamped with the device's id; returns (command id, answer) in
/// order of arrival.
pub async fn answers_until_replied(
    replies: &mut Consumer,
    device: &str,
    expected: &[&str],
) -> Vec<(String, DeviceMessage)> {
    let mut answers = Vec::new();
    let mut waiting: BTreeSet<&str> = expected.iter().copied().collect();
    while !waiting.is_empty() {
        let delivery = next_within(replies, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("no reply to {waiting:?}; got {answers:?}"));
        assert_eq!(
            user_id(&delivery),
            Some(device),
            "answers say who sent them"
        );
        let message: DeviceMessage = protocol::decode(&delivery.data).unwrap();
        let id = match &message {
            DeviceMessage::Delivered(m) => m.command_id.0.clone(),
            DeviceMessage::Progress(m) => m.command_id.0.clone(),
            DeviceMessage::Reply(m) => {
                waiting.remove(m.command_id.0.as_str());
                m.command_id.0.clone()
            }
            other => panic!("not an answer: {other:?}"),
        };
        let correlation = delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.to_string());
        assert_eq!(correlation.as_deref(), Some(id.as_str()));
        answers.push((id, message));
    }
    answers
}

/// The progress messages and the outcome of one command among `answers` (as
/// [`answers_until_replied`] gives them).
pub fn progress_and_outcome(
    answers: Vec<(String, DeviceMessage)>,
) -> (Vec<String>, protocol::Outcome) {
    let mut progress = Vec::new();
    for (_, answer) in answers {
        match answer {
            DeviceMessage::Progress(p) => progress.push(p.message.unwrap_or_default()),
            DeviceMessage::Reply(reply) => return (progress, reply.outcome),
            _ => {}
        }
    }
    panic!("no reply among the answers")
}
