//! What a device account may not do, tried as an attacker would, on a broker that
//! admits devices the way Tether deploys them: included by `tests/identity.rs` for the
//! tests' own RabbitMQ (devices checked by Tether's HTTP auth backend) and for the
//! embedded broker (devices checked by its authenticator). Every refusal is the
//! broker's, with RabbitMQ's codes; the last case is the agent's own refusal.

use std::time::Duration;

use agent::simulate::Kind;
use futures_util::StreamExt as _;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
        QueueBindOptions, QueueDeclareOptions,
    },
    types::FieldTable,
};
use protocol::{DeviceMessage, ServerMessage, names};
use serde_json::json;
use testkit::{command, online, unique};

use crate::amqp_url;

/// A device's fresh connection and channel (in confirm mode), logged in as itself, on
/// a broker whose topology a server declared.
async fn device() -> (protocol::DeviceId, Connection, Channel) {
    let server = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("the server account logs in");
    common::amqp::declare_exchanges(&server.create_channel().await.unwrap())
        .await
        .expect("the server declares the topology");
    let (id, url) = testkit::provision(&amqp_url(), "attacker").await;
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("a provisioned device logs in");
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    (id, connection, channel)
}

/// The broker's refusal of `result`, which must be an error naming `code`.
fn refused<T: std::fmt::Debug>(result: Result<T, lapin::Error>, code: &str, what: &str) {
    let error = result.expect_err(what);
    assert!(
        error.to_string().contains(code),
        "{what}: expected {code}, got {error}"
    );
}

async fn publish(
    channel: &Channel,
    exchange: &str,
    key: &str,
    properties: BasicProperties,
) -> Result<(), lapin::Error> {
    channel
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            b"{}",
            properties,
        )
        .await?
        .await
        .map(drop)
}

#[tokio::test]
async fn a_wrong_secret_or_an_unprovisioned_device_is_refused() {
    let (id, _url) = testkit::provision(&amqp_url(), "victim").await;
    for (user, password) in [(id.as_str(), "not-its-secret"), ("never-provisioned", "x")] {
        let url = testkit::with_credential(&amqp_url(), user, password);
        refused(
            Connection::connect(&url, ConnectionProperties::default()).await,
            "ACCESS_REFUSED",
            "a bad login",
        );
    }
}

#[tokio::test]
async fn a_device_cannot_say_hello_as_another() {
    let (id, _connection, channel) = device().await;
    let signed = BasicProperties::default().with_user_id(id.as_str().into());
    let other = format!("presence.{}.hello", unique("victim"));
    refused(
        publish(&channel, names::PRESENCE_EXCHANGE, &other, signed).await,
        "ACCESS_REFUSED",
        "a hello under another device's key",
    );
}

#[tokio::test]
async fn a_device_cannot_sign_as_another() {
    let (_id, _connection, channel) = device().await;
    let forged = BasicProperties::default().with_user_id(unique("victim").as_str().into());
    refused(
        publish(&channel, "", "amq.gen-anything", forged).await,
        "PRECONDITION_FAILED",
        "a user_id that is not the login's",
    );
}

#[tokio::test]
async fn a_device_cannot_read_presence() {
    let (_id, _connection, channel) = device().await;
    let queue = testkit::private_queue(&channel, "a device").await;
    refused(
        channel
            .queue_bind(
                queue.as_str().into(),
                names::PRESENCE_EXCHANGE.into(),
                "presence.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await,
        "ACCESS_REFUSED",
        "binding to every device's presence",
    );
}

#[tokio::test]
async fn a_device_cannot_publish_command_statuses_to_every_browser() {
    let (id, _connection, channel) = device().await;
    let signed = BasicProperties::default().with_user_id(id.as_str().into());
    refused(
        publish(&channel, names::EVENTS_EXCHANGE, "", signed).await,
        "ACCESS_REFUSED",
        "a forged event on tether.events",
    );
}

#[tokio::test]
async fn a_device_cannot_delete_or_redeclare_tethers_exchanges() {
    let (_id, connection, channel) = device().await;
    refused(
        channel
            .exchange_delete(
                names::PRESENCE_EXCHANGE.into(),
                ExchangeDeleteOptions::default(),
            )
            .await,
        "ACCESS_REFUSED",
        "deleting tether.presence",
    );
    let channel = connection.create_channel().await.unwrap();
    refused(
        channel
            .exchange_declare(
                names::EVENTS_EXCHANGE.into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await,
        "ACCESS_REFUSED",
        "declaring tether.events",
    );
    let channel = connection.create_channel().await.unwrap();
    refused(
        channel
            .queue_declare(
                names::STORE_QUEUE.into(),
                QueueDeclareOptions {
                    passive: false,
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await,
        "ACCESS_REFUSED",
        "declaring the storage queue",
    );
}

#[tokio::test]
async fn an_agent_ignores_a_command_another_device_put_into_its_inbox() {
    let hub = testkit::start_hub(hub::HubConfig::new(amqp_url())).await;
    // A server-side observer learns the agent's inbox from its hello, as a device that
    // saw it leak would.
    let agent = testkit::Agent::start(&amqp_url(), "obedient", Kind::Gateway, |config| {
        config.heartbeat = Duration::from_secs(1);
    })
    .await;
    let mut watch = testkit::Spy::on(
        &amqp_url(),
        names::PRESENCE_EXCHANGE,
        &format!("presence.{}.hello", agent.id),
    )
    .await;
    online(&hub, &agent.id).await;
    // It says hello again when asked: the announce request from a new hub.
    let _second = testkit::start_hub(hub::HubConfig::new(amqp_url())).await;
    let hello = watch
        .next(Duration::from_secs(5))
        .await
        .expect("the agent's hello");
    let DeviceMessage::Hello(hello) = protocol::decode::<DeviceMessage>(&hello.data).unwrap()
    else {
        panic!("not a hello")
    };

    // The intruder, a device of its own, puts a command into that inbox, replies to a
    // queue of its own: nothing comes back.
    let (intruder, _connection, channel) = device().await;
    let replies = testkit::private_queue(&channel, "the intruder's replies").await;
    let request = ServerMessage::Command(protocol::CommandRequest {
        command_id: "injected".into(),
        name: "echo".into(),
        args: serde_json::from_value(json!({"message": "pwned"})).unwrap(),
        timeout_ms: 5_000,
        deadline_ms: None,
    });
    let properties = BasicProperties::default()
        .with_user_id(intruder.as_str().into())
        .with_reply_to(replies.as_str().into())
        .with_correlation_id("injected".into());
    channel
        .basic_publish(
            "".into(),
            hello.inbox.as_str().into(),
            BasicPublishOptions::default(),
            &protocol::encode(&request),
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let mut answers = channel
        .basic_consume(
            replies.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(2), answers.next()).await;
    assert!(
        answered.is_err(),
        "the agent answered an intruder: {answered:?}"
    );
    // The server's own command still works.
    let sent = hub
        .send(&agent.id, command("echo", json!({"message": "hi"}), None))
        .await
        .unwrap();
    let done = hub.wait(&sent.id, Duration::from_secs(5)).await.unwrap();
    assert_eq!(done.status, protocol::CommandStatus::Succeeded, "{done:?}");
    agent.stop().await;
}
