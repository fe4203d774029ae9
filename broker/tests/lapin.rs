//! The embedded broker driven by lapin, the client Tether itself uses.

use std::time::Duration;

use broker::{Broker, Config};
use futures_util::StreamExt as _;
use lapin::{
    BasicProperties, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    },
    types::FieldTable,
};

async fn start() -> String {
    let broker = Broker::bind(Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    })
    .await
    .expect("bind");
    let url = broker.url().unwrap();
    tokio::spawn(broker.serve(std::future::pending()));
    url
}

async fn connect(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect to the embedded broker")
}

fn private() -> QueueDeclareOptions {
    QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn request_and_reply_round_trip_with_properties() {
    let url = start().await;
    let connection = connect(&url).await;
    let channel = connection.create_channel().await.unwrap();
    let queue = channel
        .queue_declare("".into(), private(), FieldTable::default())
        .await
        .unwrap();
    assert!(
        queue.name().as_str().starts_with("amq.gen-"),
        "{}",
        queue.name()
    );
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let body = vec![7u8; 300_000]; // several frames
    let properties = BasicProperties::default()
        .with_correlation_id("c-1".into())
        .with_reply_to("replies".into())
        .with_content_type("application/json".into());
    channel
        .basic_publish(
            "".into(),
            queue.name().clone(),
            BasicPublishOptions::default(),
            &body,
            properties,
        )
        .await
        .unwrap();

    let delivery = tokio::time::timeout(Duration::from_secs(5), consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(delivery.data, body);
    assert_eq!(
        delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str()),
        Some("c-1")
    );
    assert_eq!(
        delivery.properties.reply_to().as_ref().map(|c| c.as_str()),
        Some("replies")
    );
    assert!(!delivery.redelivered);
    delivery.ack(BasicAckOptions::default()).await.unwrap();
    connection.close(200, "bye".into()).await.unwrap();
}

#[tokio::test]
async fn topic_and_fanout_exchanges_route_like_rabbitmq() {
    let url = start().await;
    let connection = connect(&url).await;
    let channel = connection.create_channel().await.unwrap();
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            "t.presence".into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .unwrap();
    let all = channel
        .queue_declare("".into(), private(), FieldTable::default())
        .await
        .unwrap();
    let hellos = channel
        .queue_declare("".into(), private(), FieldTable::default())
        .await
        .unwrap();
    channel
        .queue_bind(
            all.name().clone(),
            "t.presence".into(),
            "presence.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            hellos.name().clone(),
            "t.presence".into(),
            "presence.*.hello".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for key in [
        "presence.a.hello",
        "presence.a.heartbeat",
        "telemetry.a.cpu",
    ] {
        channel
            .basic_publish(
                "t.presence".into(),
                key.into(),
                BasicPublishOptions::default(),
                key.as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap();
    }
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut all_consumer = channel
        .basic_consume(all.name().clone(), "".into(), no_ack, FieldTable::default())
        .await
        .unwrap();
    let mut hello_consumer = channel
        .basic_consume(
            hellos.name().clone(),
            "".into(),
            no_ack,
            FieldTable::default(),
        )
        .await
        .unwrap();
    let next = async |consumer: &mut lapin::Consumer| {
        let delivery = tokio::time::timeout(Duration::from_secs(5), consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        String::from_utf8(delivery.data).unwrap()
    };
    assert_eq!(next(&mut all_consumer).await, "presence.a.hello");
    assert_eq!(next(&mut all_consumer).await, "presence.a.heartbeat");
    assert_eq!(next(&mut hello_consumer).await, "presence.a.hello");
    let nothing_more =
        tokio::time::timeout(Duration::from_millis(200), hello_consumer.next()).await;
    assert!(nothing_more.is_err(), "only hellos reach the hello queue");

    // Redeclaring with another type is refused (406) and closes the channel.
    let other = connection.create_channel().await.unwrap();
    let error = other
        .exchange_declare(
            "t.presence".into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert!(error.to_string().contains("PRECONDITION_FAILED"), "{error}");
}

#[tokio::test]
async fn mandatory_publishes_to_nowhere_come_back_before_their_confirm() {
    let url = start().await;
    let connection = connect(&url).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let confirm = channel
        .basic_publish(
            "".into(),
            "amq.gen-gone".into(),
            mandatory,
            b"hello?",
            BasicProperties::default().with_correlation_id("x".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let Confirmation::Ack(Some(returned)) = confirm else {
        panic!("expected an ack with the returned message, got {confirm:?}")
    };
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.delivery.data, b"hello?");

    let queue = channel
        .queue_declare("".into(), private(), FieldTable::default())
        .await
        .unwrap();
    let routed = channel
        .basic_publish(
            "".into(),
            queue.name().clone(),
            mandatory,
            b"here",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(matches!(routed, Confirmation::Ack(None)), "{routed:?}");
}

#[tokio::test]
async fn exclusive_queues_belong_to_their_connection_and_vanish_with_it() {
    let url = start().await;
    let owner = connect(&url).await;
    let owner_channel = owner.create_channel().await.unwrap();
    let inbox = owner_channel
        .queue_declare("".into(), private(), FieldTable::default())
        .await
        .unwrap()
        .name()
        .clone();

    let other = connect(&url).await;
    let other_channel = other.create_channel().await.unwrap();
    let locked = other_channel
        .basic_consume(
            inbox.clone(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert!(locked.to_string().contains("RESOURCE_LOCKED"), "{locked}");

    owner.close(200, "bye".into()).await.unwrap();
    let sender = other.create_channel().await.unwrap();
    sender
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let confirm = sender
        .basic_publish(
            "".into(),
            inbox,
            mandatory,
            b"?",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(
        matches!(confirm, Confirmation::Ack(Some(_))),
        "the inbox is gone with its connection: {confirm:?}"
    );
}

#[tokio::test]
async fn unacked_messages_return_to_the_queue_marked_redelivered() {
    let url = start().await;
    let connection = connect(&url).await;
    let setup = connection.create_channel().await.unwrap();
    setup
        .queue_declare(
            "work".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for n in 0..3 {
        setup
            .basic_publish(
                "".into(),
                "work".into(),
                BasicPublishOptions::default(),
                format!("job {n}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap();
    }
    let worker = connection.create_channel().await.unwrap();
    worker
        .basic_qos(1, BasicQosOptions::default())
        .await
        .unwrap();
    let mut jobs = worker
        .basic_consume(
            "work".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), jobs.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.data, b"job 0");
    // Prefetch 1: nothing more until this one is settled.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), jobs.next())
            .await
            .is_err()
    );
    worker.close(200, "crash".into()).await.unwrap();

    let again = connection.create_channel().await.unwrap();
    let mut jobs = again
        .basic_consume(
            "work".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let redelivered = tokio::time::timeout(Duration::from_secs(5), jobs.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(redelivered.data, b"job 0");
    assert!(redelivered.redelivered);
}

#[tokio::test]
async fn wrong_credentials_are_refused() {
    let url = start().await.replace("guest:guest", "guest:wrong");
    let refused = Connection::connect(&url, ConnectionProperties::default()).await;
    assert!(refused.is_err(), "a wrong password must not get in");
}
