//! Broker behaviour as Tether and ordinary clients rely on it, driven by lapin. Included
//! by `conformance_embedded.rs` and `conformance_rabbitmq.rs`, which each provide a
//! `crate::broker_url()`: the same cases must pass on both brokers. Queue names are
//! unique per run, so leftovers on a long-lived RabbitMQ change nothing.

use std::time::Duration;

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
    crate::broker_url().await
}

fn unique(name: &str) -> String {
    format!("conformance-{name}-{:08x}", fastrand::u32(..))
}

async fn connect(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the broker at {url}: {e}"))
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
    let presence = unique("presence");
    let durable = ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            presence.as_str().into(),
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
            presence.as_str().into(),
            "presence.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            hellos.name().clone(),
            presence.as_str().into(),
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
                presence.as_str().into(),
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
            presence.as_str().into(),
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
            unique("gone").as_str().into(),
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
    // Shared, so it outlives its consumers; on RabbitMQ it expires a minute after the test.
    let work = unique("work");
    let expires = args(&[("x-expires", lapin::types::AMQPValue::LongInt(60_000))]);
    setup
        .queue_declare(
            work.as_str().into(),
            QueueDeclareOptions::default(),
            expires,
        )
        .await
        .unwrap();
    for n in 0..3 {
        setup
            .basic_publish(
                "".into(),
                work.as_str().into(),
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
            work.as_str().into(),
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
            work.as_str().into(),
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

fn args(pairs: &[(&str, lapin::types::AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in pairs {
        table.insert((*key).into(), value.clone());
    }
    table
}

async fn get(channel: &lapin::Channel, queue: &str) -> Option<Vec<u8>> {
    channel
        .basic_get(
            queue.into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .map(|message| message.delivery.data)
}

#[tokio::test]
async fn expired_messages_are_never_delivered() {
    let url = start().await;
    let connection = connect(&url).await;
    let channel = connection.create_channel().await.unwrap();
    let plain = channel
        .queue_declare("".into(), private(), FieldTable::default())
        .await
        .unwrap()
        .name()
        .to_string();
    let with_ttl = channel
        .queue_declare(
            "".into(),
            private(),
            args(&[("x-message-ttl", lapin::types::AMQPValue::LongInt(100))]),
        )
        .await
        .unwrap()
        .name()
        .to_string();
    let soon = BasicProperties::default().with_expiration("100".into());
    channel
        .basic_publish(
            "".into(),
            plain.as_str().into(),
            BasicPublishOptions::default(),
            b"stale",
            soon,
        )
        .await
        .unwrap();
    channel
        .basic_publish(
            "".into(),
            plain.as_str().into(),
            BasicPublishOptions::default(),
            b"fresh",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    channel
        .basic_publish(
            "".into(),
            with_ttl.as_str().into(),
            BasicPublishOptions::default(),
            b"stale",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        get(&channel, &plain).await.as_deref(),
        Some(&b"fresh"[..]),
        "the expired one was dropped"
    );
    assert_eq!(get(&channel, &with_ttl).await, None);
}

#[tokio::test]
async fn full_queues_drop_the_oldest_or_refuse_the_newest() {
    let url = start().await;
    let connection = connect(&url).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let max = |overflow: &str| {
        args(&[
            ("x-max-length", lapin::types::AMQPValue::LongInt(2)),
            (
                "x-overflow",
                lapin::types::AMQPValue::LongString(overflow.into()),
            ),
        ])
    };
    let drop_head = channel
        .queue_declare("".into(), private(), max("drop-head"))
        .await
        .unwrap()
        .name()
        .to_string();
    let reject = channel
        .queue_declare("".into(), private(), max("reject-publish"))
        .await
        .unwrap()
        .name()
        .to_string();
    let mut confirmations = Vec::new();
    for n in 1..=3 {
        for queue in [&drop_head, &reject] {
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    format!("m{n}").as_bytes(),
                    BasicProperties::default(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            confirmations.push((queue == &reject, n, confirm.is_ack()));
        }
    }
    assert_eq!(get(&channel, &drop_head).await.as_deref(), Some(&b"m2"[..]));
    assert_eq!(get(&channel, &reject).await.as_deref(), Some(&b"m1"[..]));
    let refused: Vec<_> = confirmations
        .iter()
        .filter(|(_, _, acked)| !acked)
        .map(|(to_reject, n, _)| (*to_reject, *n))
        .collect();
    assert_eq!(
        refused,
        [(true, 3)],
        "only the third publish to the reject-publish queue is nacked"
    );
}

#[tokio::test]
async fn a_byte_limit_drops_the_oldest_until_the_newest_fits() {
    let url = start().await;
    let connection = connect(&url).await;
    let channel = connection.create_channel().await.unwrap();
    let limited = channel
        .queue_declare(
            "".into(),
            private(),
            args(&[("x-max-length-bytes", lapin::types::AMQPValue::LongInt(10))]),
        )
        .await
        .unwrap()
        .name()
        .to_string();
    for body in ["aaaa", "bbbb", "cccccc"] {
        channel
            .basic_publish(
                "".into(),
                limited.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap();
    }
    // 4 + 4 + 6 bytes do not fit in 10: the oldest goes.
    assert_eq!(get(&channel, &limited).await.as_deref(), Some(&b"bbbb"[..]));
    assert_eq!(
        get(&channel, &limited).await.as_deref(),
        Some(&b"cccccc"[..])
    );
    assert_eq!(get(&channel, &limited).await, None);
}

#[tokio::test]
async fn deleting_a_queue_tells_its_consumers_and_purge_counts() {
    let url = start().await;
    let connection = connect(&url).await;
    let channel = connection.create_channel().await.unwrap();
    let shared = unique("shared");
    channel
        .queue_declare(
            shared.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..3 {
        channel
            .basic_publish(
                "".into(),
                shared.as_str().into(),
                BasicPublishOptions::default(),
                b"x",
                BasicProperties::default(),
            )
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        channel
            .queue_purge(
                shared.as_str().into(),
                lapin::options::QueuePurgeOptions::default()
            )
            .await
            .unwrap(),
        3
    );

    let listener = connect(&url).await.create_channel().await.unwrap();
    let mut consumer = listener
        .basic_consume(
            shared.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_delete(
            shared.as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), consumer.next())
        .await
        .expect("the consumer hears of it");
    assert!(
        ended.is_none(),
        "the consumer was cancelled by the broker: {ended:?}"
    );
}

#[tokio::test]
async fn redeclaring_a_queue_differently_is_refused() {
    let url = start().await;
    let connection = connect(&url).await;
    let channel = connection.create_channel().await.unwrap();
    let name = unique("redeclare");
    let expires = args(&[("x-expires", lapin::types::AMQPValue::LongInt(60_000))]);
    channel
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions::default(),
            expires.clone(),
        )
        .await
        .unwrap();
    // The same declaration again is fine.
    channel
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions::default(),
            expires.clone(),
        )
        .await
        .unwrap();
    let auto_delete = QueueDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    let error = channel
        .queue_declare(name.as_str().into(), auto_delete, expires)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("PRECONDITION_FAILED"), "{error}");
    // A passive declare only checks that it exists.
    let other = connection.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    other
        .queue_declare(name.as_str().into(), passive, FieldTable::default())
        .await
        .unwrap();
    let missing = other
        .queue_declare(
            unique("missing").as_str().into(),
            passive,
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("NOT_FOUND"), "{missing}");
}

#[tokio::test]
async fn a_message_that_expires_while_its_consumer_is_busy_is_never_delivered() {
    let url = start().await;
    let connection = connect(&url).await;
    let channel = connection.create_channel().await.unwrap();
    let inbox = channel
        .queue_declare("".into(), private(), FieldTable::default())
        .await
        .unwrap()
        .name()
        .clone();
    channel
        .basic_qos(1, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            inbox.clone(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .basic_publish(
            "".into(),
            inbox.clone(),
            BasicPublishOptions::default(),
            b"first",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    let soon = BasicProperties::default().with_expiration("100".into());
    channel
        .basic_publish(
            "".into(),
            inbox.clone(),
            BasicPublishOptions::default(),
            b"stale",
            soon,
        )
        .await
        .unwrap();
    channel
        .basic_publish(
            "".into(),
            inbox.clone(),
            BasicPublishOptions::default(),
            b"last",
            BasicProperties::default(),
        )
        .await
        .unwrap();

    let first = tokio::time::timeout(Duration::from_secs(5), consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.data, b"first");
    tokio::time::sleep(Duration::from_millis(300)).await; // "stale" expires while we are busy
    first.ack(BasicAckOptions::default()).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        next.data, b"last",
        "the expired message was dropped, not delivered late"
    );
}
