//! Broker behaviour as Tether and ordinary clients rely on it, driven by lapin. Included
//! by `conformance_embedded.rs` and `conformance_rabbitmq.rs`, which each provide a
//! `crate::broker_url()`: the same cases must pass on both brokers. Queue names are
//! unique per run, so leftovers on a long-lived RabbitMQ change nothing. The set-up
//! (connect, declare, bind, consume, publish) is in the helpers at the end, so each case
//! reads as the behaviour it checks.

use std::time::Duration;

use futures_util::StreamExt as _;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    ExchangeKind,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
        BasicPublishOptions, BasicQosOptions, BasicRecoverOptions, BasicRejectOptions,
        ConfirmSelectOptions, ExchangeBindOptions, ExchangeDeclareOptions, ExchangeUnbindOptions,
        QueueBindOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};

#[tokio::test]
async fn request_and_reply_round_trip_with_properties() {
    let (connection, channel) = open().await;
    let queue = private_queue(&channel, FieldTable::default()).await;
    assert!(queue.starts_with("amq.gen-"), "{queue}");
    let mut consumer = consume(&channel, &queue).await;

    let body = vec![7u8; 300_000]; // several frames
    let properties = BasicProperties::default()
        .with_correlation_id("c-1".into())
        .with_reply_to("replies".into())
        .with_content_type("application/json".into());
    publish(&channel, "", &queue, &body, properties).await;

    let delivery = next(&mut consumer).await;
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
    let (connection, channel) = open().await;
    let presence = unique("presence");
    declare_exchange(&channel, &presence, ExchangeKind::Topic)
        .await
        .unwrap();
    let all = private_queue(&channel, FieldTable::default()).await;
    let hellos = private_queue(&channel, FieldTable::default()).await;
    bind(&channel, &all, &presence, "presence.#").await;
    bind(&channel, &hellos, &presence, "presence.*.hello").await;
    for key in [
        "presence.a.hello",
        "presence.a.heartbeat",
        "telemetry.a.cpu",
    ] {
        publish(
            &channel,
            &presence,
            key,
            key.as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    let mut all_consumer = consume_no_ack(&channel, &all).await;
    let mut hello_consumer = consume_no_ack(&channel, &hellos).await;
    assert_eq!(text(next(&mut all_consumer).await), "presence.a.hello");
    assert_eq!(text(next(&mut all_consumer).await), "presence.a.heartbeat");
    assert_eq!(text(next(&mut hello_consumer).await), "presence.a.hello");
    assert!(
        nothing_arrives(&mut hello_consumer).await,
        "only hellos reach the hello queue"
    );

    // Redeclaring with another type is refused (406) and closes the channel.
    let other = channel_on(&connection).await;
    let error = declare_exchange(&other, &presence, ExchangeKind::Fanout)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("PRECONDITION_FAILED"), "{error}");
}

#[tokio::test]
async fn exchanges_bound_to_exchanges_pass_messages_on_once_each_even_in_a_cycle() {
    let (connection, channel) = open().await;
    let (source, fan) = (unique("e2e-topic"), unique("e2e-fanout"));
    // Not auto-deleted (RabbitMQ would delete the topic exchange when it loses its last
    // binding below): deleted at the end.
    for (name, kind) in [(&source, ExchangeKind::Topic), (&fan, ExchangeKind::Fanout)] {
        channel
            .exchange_declare(
                name.as_str().into(),
                kind,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    let queue = private_queue(&channel, FieldTable::default()).await;
    bind(&channel, &queue, &fan, "").await;
    let exchange_bind = async |destination: &str, source: &str, key: &str| {
        channel
            .exchange_bind(
                destination.into(),
                source.into(),
                key.into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await
    };
    // The topic exchange passes `a.*` on to the fanout one, which feeds the queue.
    exchange_bind(&fan, &source, "a.*").await.unwrap();
    publish(&channel, &source, "a.x", b"a.x", BasicProperties::default()).await;
    publish(&channel, &source, "b.x", b"b.x", BasicProperties::default()).await;
    // A cycle: the fanout exchange also passes everything back to the topic one. Each
    // exchange is visited once, and the queue gets one copy.
    exchange_bind(&source, &fan, "").await.unwrap();
    publish(&channel, &source, "a.y", b"a.y", BasicProperties::default()).await;
    publish(&channel, &fan, "any", b"fan", BasicProperties::default()).await;
    // Unbound, `a.*` no longer goes on.
    channel
        .exchange_unbind(
            fan.as_str().into(),
            source.as_str().into(),
            "a.*".into(),
            ExchangeUnbindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    publish(&channel, &source, "a.z", b"a.z", BasicProperties::default()).await;
    send(&channel, &queue, b"end").await;
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while received.last().is_none_or(|last| last != "end") {
        match get(&channel, &queue).await {
            Some(body) => received.push(String::from_utf8(body).unwrap()),
            None if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            None => panic!("only {received:?}"),
        }
    }
    assert_eq!(received, ["a.x", "a.y", "fan", "end"]);

    // Binding from an exchange that does not exist: 404, the channel closed.
    let other = channel_on(&connection).await;
    let error = other
        .exchange_bind(
            fan.as_str().into(),
            unique("missing").as_str().into(),
            "".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("NOT_FOUND"), "{error}");
    for name in [&source, &fan] {
        channel
            .exchange_delete(name.as_str().into(), Default::default())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn an_auto_delete_exchange_goes_with_its_last_binding_and_only_then() {
    let (connection, channel) = open().await;
    let exists = async |name: &str| {
        // On a channel of its own: a 404 closes the channel it came on.
        let probe = channel_on(&connection).await;
        probe
            .exchange_declare(
                name.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .is_ok()
    };
    let (unbound, deleted, never) = (
        unique("auto-unbound"),
        unique("auto-queue-deleted"),
        unique("auto-never-bound"),
    );
    for name in [&unbound, &deleted, &never] {
        declare_exchange(&channel, name, ExchangeKind::Topic)
            .await
            .unwrap();
    }
    // Never bound: it stays.
    assert!(exists(&never).await);
    // Its last binding removed: it goes.
    let queue = private_queue(&channel, FieldTable::default()).await;
    bind(&channel, &queue, &unbound, "a.#").await;
    bind(&channel, &queue, &unbound, "b.#").await;
    channel
        .queue_unbind(
            queue.as_str().into(),
            unbound.as_str().into(),
            "a.#".into(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert!(exists(&unbound).await, "one binding is left");
    channel
        .queue_unbind(
            queue.as_str().into(),
            unbound.as_str().into(),
            "b.#".into(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert!(!exists(&unbound).await, "gone with its last binding");
    // Its last bound queue deleted: it goes.
    let doomed = private_queue(&channel, FieldTable::default()).await;
    bind(&channel, &doomed, &deleted, "#").await;
    channel
        .queue_delete(doomed.as_str().into(), Default::default())
        .await
        .unwrap();
    assert!(!exists(&deleted).await, "gone with its last queue");
    channel
        .exchange_delete(never.as_str().into(), Default::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn mandatory_publishes_to_nowhere_come_back_before_their_confirm() {
    let (_connection, channel) = open().await;
    select_confirms(&channel).await;
    let confirm = publish_confirmed(
        &channel,
        &unique("gone"),
        mandatory(),
        b"hello?",
        BasicProperties::default().with_correlation_id("x".into()),
    )
    .await;
    let Confirmation::Ack(Some(returned)) = confirm else {
        panic!("expected an ack with the returned message, got {confirm:?}")
    };
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.delivery.data, b"hello?");

    let queue = private_queue(&channel, FieldTable::default()).await;
    let routed = publish_confirmed(
        &channel,
        &queue,
        mandatory(),
        b"here",
        BasicProperties::default(),
    )
    .await;
    assert!(matches!(routed, Confirmation::Ack(None)), "{routed:?}");
}

#[tokio::test]
async fn exclusive_queues_belong_to_their_connection_and_vanish_with_it() {
    let url = start().await;
    let (owner, owner_channel) = open_at(&url).await;
    let inbox = private_queue(&owner_channel, FieldTable::default()).await;

    let (other, other_channel) = open_at(&url).await;
    let locked = other_channel
        .basic_consume(
            inbox.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert!(locked.to_string().contains("RESOURCE_LOCKED"), "{locked}");

    owner.close(200, "bye".into()).await.unwrap();
    let sender = channel_on(&other).await;
    select_confirms(&sender).await;
    let confirm = publish_confirmed(
        &sender,
        &inbox,
        mandatory(),
        b"?",
        BasicProperties::default(),
    )
    .await;
    assert!(
        matches!(confirm, Confirmation::Ack(Some(_))),
        "the inbox is gone with its connection: {confirm:?}"
    );
}

#[tokio::test]
async fn unacked_messages_return_to_the_queue_marked_redelivered() {
    let (connection, setup) = open().await;
    // Shared, so it outlives its consumers; on RabbitMQ it expires a minute after the test.
    let work = declare_queue(
        &setup,
        &unique("work"),
        QueueDeclareOptions::default(),
        expires_in_a_minute(),
    )
    .await
    .unwrap();
    for n in 0..3 {
        send(&setup, &work, format!("job {n}").as_bytes()).await;
    }
    let worker = channel_on(&connection).await;
    worker
        .basic_qos(1, BasicQosOptions::default())
        .await
        .unwrap();
    let mut jobs = consume(&worker, &work).await;
    let first = next(&mut jobs).await;
    assert_eq!(first.data, b"job 0");
    // Prefetch 1: nothing more until this one is settled.
    assert!(nothing_arrives(&mut jobs).await);
    worker.close(200, "crash".into()).await.unwrap();

    let again = channel_on(&connection).await;
    let mut jobs = consume(&again, &work).await;
    let redelivered = next(&mut jobs).await;
    assert_eq!(redelivered.data, b"job 0");
    assert!(redelivered.redelivered);
}

#[tokio::test]
async fn requeued_messages_go_back_where_they_were_however_they_come_back() {
    let (connection, setup) = open().await;
    let work = declare_queue(
        &setup,
        &unique("requeue"),
        QueueDeclareOptions::default(),
        expires_in_a_minute(),
    )
    .await
    .unwrap();
    for n in 0..6 {
        send(&setup, &work, format!("m{n}").as_bytes()).await;
    }
    assert_eq!(ready_within(&setup, &work, 6).await, 6);
    let all = ["m0", "m1", "m2", "m3", "m4", "m5"];
    // Takes the first `count` messages on a channel of their own and stops consuming,
    // leaving them unacknowledged; `put_back` returns them; then the queue is read in
    // order (and filled again the same way).
    async fn taken(connection: &Connection, queue: &str, count: u16) -> (Channel, Vec<Delivery>) {
        let channel = channel_on(connection).await;
        channel
            .basic_qos(count, BasicQosOptions::default())
            .await
            .unwrap();
        let mut consumer = consume(&channel, queue).await;
        let mut deliveries = Vec::new();
        for _ in 0..count {
            deliveries.push(next(&mut consumer).await);
        }
        channel
            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
            .await
            .unwrap();
        (channel, deliveries)
    }
    async fn read_all(channel: &Channel, queue: &str) -> Vec<String> {
        let mut order = Vec::new();
        while let Some(body) = get(channel, queue).await {
            order.push(String::from_utf8(body).unwrap());
        }
        order
    }
    let requeue = BasicRejectOptions { requeue: true };

    // 1. basic.nack of the first four at once, with `multiple` and `requeue`.
    let (_channel, deliveries) = taken(&connection, &work, 4).await;
    let texts: Vec<String> = deliveries
        .iter()
        .map(|d| String::from_utf8(d.data.clone()).unwrap())
        .collect();
    assert_eq!(texts, all[..4]);
    deliveries[3]
        .acker
        .nack(BasicNackOptions {
            multiple: true,
            requeue: true,
        })
        .await
        .unwrap();
    assert_eq!(ready_within(&setup, &work, 6).await, 6);
    assert_eq!(read_all(&setup, &work).await, all, "after a multiple nack");

    // 2. Rejects one at a time, in another order than they were delivered.
    for n in 0..6 {
        send(&setup, &work, format!("m{n}").as_bytes()).await;
    }
    assert_eq!(ready_within(&setup, &work, 6).await, 6);
    let (_channel, deliveries) = taken(&connection, &work, 3).await;
    for n in [2, 0, 1] {
        deliveries[n].acker.reject(requeue).await.unwrap();
    }
    assert_eq!(ready_within(&setup, &work, 6).await, 6);
    assert_eq!(
        read_all(&setup, &work).await,
        all,
        "after rejects in another order"
    );

    // 3. A channel closed with messages unacknowledged.
    for n in 0..6 {
        send(&setup, &work, format!("m{n}").as_bytes()).await;
    }
    assert_eq!(ready_within(&setup, &work, 6).await, 6);
    let (channel, _deliveries) = taken(&connection, &work, 3).await;
    channel.close(200, "done".into()).await.unwrap();
    assert_eq!(ready_within(&setup, &work, 6).await, 6);
    assert_eq!(read_all(&setup, &work).await, all, "after a channel closed");
}

#[tokio::test]
async fn basic_recover_delivers_again_what_is_unacknowledged_in_order() {
    let (connection, setup) = open().await;
    let work = declare_queue(
        &setup,
        &unique("recover"),
        QueueDeclareOptions::default(),
        expires_in_a_minute(),
    )
    .await
    .unwrap();
    for n in 0..3 {
        send(&setup, &work, format!("m{n}").as_bytes()).await;
    }
    let worker = channel_on(&connection).await;
    let mut jobs = consume(&worker, &work).await;
    for n in 0..3 {
        let delivery = next(&mut jobs).await;
        assert_eq!(
            (
                String::from_utf8(delivery.data).unwrap(),
                delivery.redelivered
            ),
            (format!("m{n}"), false)
        );
    }
    worker
        .basic_recover(BasicRecoverOptions { requeue: true })
        .await
        .unwrap();
    let mut again = Vec::new();
    for _ in 0..3 {
        let delivery = next(&mut jobs).await;
        assert!(delivery.redelivered);
        again.push(String::from_utf8(delivery.data.clone()).unwrap());
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
    }
    assert_eq!(again, ["m0", "m1", "m2"]);
    assert!(nothing_arrives(&mut jobs).await);
}

#[tokio::test]
async fn basic_recover_without_requeue_is_not_implemented() {
    let (_connection, channel) = open().await;
    let refused = tokio::time::timeout(
        Duration::from_secs(5),
        channel.basic_recover(BasicRecoverOptions { requeue: false }),
    )
    .await
    .expect("an answer, not a hang");
    let error = refused.unwrap_err().to_string();
    assert!(error.contains("NOT_IMPLEMENTED"), "{error}");
}

#[tokio::test]
async fn a_transaction_publishes_and_settles_at_commit_and_forgets_at_rollback() {
    let (connection, setup) = open().await;
    let work = declare_queue(
        &setup,
        &unique("tx"),
        QueueDeclareOptions::default(),
        expires_in_a_minute(),
    )
    .await
    .unwrap();
    let tx = channel_on(&connection).await;
    tx.tx_select().await.unwrap();
    // Whether anything the transaction published is in the queue yet: a marker sent
    // after it on the same connection, so the broker read the publishes before it.
    let held_back = async || {
        send(&setup, &work, b"marker").await;
        let ready = ready_within(&setup, &work, 1).await;
        assert_eq!(get(&setup, &work).await.unwrap(), b"marker");
        ready == 1
    };
    // Publishes wait for the commit; a rollback forgets them.
    send(&tx, &work, b"rolled back").await;
    send(&tx, &work, b"rolled back too").await;
    assert!(held_back().await, "nothing before the commit");
    tx.tx_rollback().await.unwrap();
    send(&tx, &work, b"m0").await;
    send(&tx, &work, b"m1").await;
    assert!(held_back().await, "nothing before the commit");
    tx.tx_commit().await.unwrap();
    assert_eq!(
        ready_within(&setup, &work, 2).await,
        2,
        "both at the commit"
    );

    // Acks too: rolled back, the deliveries stay unacknowledged; committed, they are done.
    tx.basic_qos(2, BasicQosOptions::default()).await.unwrap();
    let mut jobs = consume(&tx, &work).await;
    let (m0, m1) = (next(&mut jobs).await, next(&mut jobs).await);
    m0.acker.ack(BasicAckOptions::default()).await.unwrap();
    tx.tx_rollback().await.unwrap();
    m1.acker.ack(BasicAckOptions::default()).await.unwrap();
    tx.tx_commit().await.unwrap();
    tx.close(200, "done".into()).await.unwrap();
    // m0's ack was rolled back, so closing the channel put it back; m1's was committed.
    assert_eq!(ready_within(&setup, &work, 1).await, 1);
    assert_eq!(get(&setup, &work).await.unwrap(), b"m0");

    // A channel is transactional or confirms, not both.
    let confirming = channel_on(&connection).await;
    select_confirms(&confirming).await;
    let error = confirming.tx_select().await.unwrap_err().to_string();
    assert!(error.contains("PRECONDITION_FAILED"), "{error}");
    let plain = channel_on(&connection).await;
    let error = plain.tx_commit().await.unwrap_err().to_string();
    assert!(error.contains("PRECONDITION_FAILED"), "{error}");
}

#[tokio::test]
async fn update_secret_is_answered_and_the_connection_goes_on() {
    let (connection, _channel) = open().await;
    tokio::time::timeout(
        Duration::from_secs(5),
        connection.update_secret("a new secret".into(), "token refreshed".into()),
    )
    .await
    .expect("an answer, not a hang")
    .unwrap();
    let channel = channel_on(&connection).await;
    let queue = private_queue(&channel, FieldTable::default()).await;
    send(&channel, &queue, b"still here").await;
    assert_eq!(get(&channel, &queue).await.unwrap(), b"still here");
}

#[tokio::test]
async fn a_consumer_connection_that_closes_mid_flow_loses_nothing() {
    let url = start().await;
    let (_connection, setup) = open_at(&url).await;
    let work = declare_queue(
        &setup,
        &unique("flow"),
        QueueDeclareOptions::default(),
        expires_in_a_minute(),
    )
    .await
    .unwrap();
    const JOBS: u32 = 2_000;
    for n in 0..JOBS {
        send(&setup, &work, format!("job {n}").as_bytes()).await;
    }
    assert_eq!(ready_within(&setup, &work, JOBS).await, JOBS, "published");
    // A worker without a prefetch limit is handed everything at once, and its
    // connection ends as soon as the first message arrives: most were on their way.
    let (worker, channel) = open_at(&url).await;
    let mut jobs = consume(&channel, &work).await;
    next(&mut jobs).await;
    worker.close(200, "crash".into()).await.unwrap();
    let back = ready_within(&setup, &work, JOBS).await;
    assert_eq!(
        back, JOBS,
        "only {back} of {JOBS} messages went back to the queue"
    );
}

#[tokio::test]
async fn wrong_credentials_are_refused() {
    let url = start().await.replace("guest:guest", "guest:wrong");
    let refused = Connection::connect(&url, ConnectionProperties::default()).await;
    assert!(refused.is_err(), "a wrong password must not get in");
}

#[tokio::test]
async fn expired_messages_are_never_delivered() {
    let (_connection, channel) = open().await;
    let plain = private_queue(&channel, FieldTable::default()).await;
    let with_ttl = private_queue(
        &channel,
        args(&[("x-message-ttl", AMQPValue::LongInt(100))]),
    )
    .await;
    publish(&channel, "", &plain, b"stale", expiring_in_100_ms()).await;
    send(&channel, &plain, b"fresh").await;
    send(&channel, &with_ttl, b"stale").await;
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
    let (_connection, channel) = open().await;
    select_confirms(&channel).await;
    let max = |overflow: &str| {
        args(&[
            ("x-max-length", AMQPValue::LongInt(2)),
            ("x-overflow", AMQPValue::LongString(overflow.into())),
        ])
    };
    let drop_head = private_queue(&channel, max("drop-head")).await;
    let reject = private_queue(&channel, max("reject-publish")).await;
    let mut confirmations = Vec::new();
    for n in 1..=3 {
        for queue in [&drop_head, &reject] {
            let confirm = publish_confirmed(
                &channel,
                queue,
                BasicPublishOptions::default(),
                format!("m{n}").as_bytes(),
                BasicProperties::default(),
            )
            .await;
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
    let (_connection, channel) = open().await;
    let limited = private_queue(
        &channel,
        args(&[("x-max-length-bytes", AMQPValue::LongInt(10))]),
    )
    .await;
    for body in ["aaaa", "bbbb", "cccccc"] {
        send(&channel, &limited, body.as_bytes()).await;
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
    let (_connection, channel) = open_at(&url).await;
    let shared = declare_queue(
        &channel,
        &unique("shared"),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    for _ in 0..3 {
        send(&channel, &shared, b"x").await;
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

    let (_, listener) = open_at(&url).await;
    let mut consumer = consume(&listener, &shared).await;
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
    let (connection, channel) = open().await;
    let name = unique("redeclare");
    let expires = expires_in_a_minute();
    declare_queue(
        &channel,
        &name,
        QueueDeclareOptions::default(),
        expires.clone(),
    )
    .await
    .unwrap();
    // The same declaration again is fine.
    declare_queue(
        &channel,
        &name,
        QueueDeclareOptions::default(),
        expires.clone(),
    )
    .await
    .unwrap();
    let auto_delete = QueueDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    let error = declare_queue(&channel, &name, auto_delete, expires)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("PRECONDITION_FAILED"), "{error}");
    // A passive declare only checks that it exists.
    let other = channel_on(&connection).await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    declare_queue(&other, &name, passive, FieldTable::default())
        .await
        .unwrap();
    let missing = declare_queue(&other, &unique("missing"), passive, FieldTable::default())
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("NOT_FOUND"), "{missing}");
}

#[tokio::test]
async fn a_message_that_expires_while_its_consumer_is_busy_is_never_delivered() {
    let (_connection, channel) = open().await;
    let inbox = private_queue(&channel, FieldTable::default()).await;
    channel
        .basic_qos(1, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = consume(&channel, &inbox).await;
    send(&channel, &inbox, b"first").await;
    publish(&channel, "", &inbox, b"stale", expiring_in_100_ms()).await;
    send(&channel, &inbox, b"last").await;

    let first = next(&mut consumer).await;
    assert_eq!(first.data, b"first");
    tokio::time::sleep(Duration::from_millis(300)).await; // "stale" expires while we are busy
    first.ack(BasicAckOptions::default()).await.unwrap();
    let after = next(&mut consumer).await;
    assert_eq!(
        after.data, b"last",
        "the expired message was dropped, not delivered late"
    );
}

// Helpers: the set-up every case shares.

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

async fn channel_on(connection: &Connection) -> Channel {
    connection.create_channel().await.unwrap()
}

/// A connection to the broker at `url` and a channel on it.
async fn open_at(url: &str) -> (Connection, Channel) {
    let connection = connect(url).await;
    let channel = channel_on(&connection).await;
    (connection, channel)
}

/// A connection to a broker of the case's own (a new one, for the embedded broker) and
/// a channel on it.
async fn open() -> (Connection, Channel) {
    open_at(&start().await).await
}

fn args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in pairs {
        table.insert((*key).into(), value.clone());
    }
    table
}

/// `x-expires`: on RabbitMQ, a shared queue goes a minute after its test.
fn expires_in_a_minute() -> FieldTable {
    args(&[("x-expires", AMQPValue::LongInt(60_000))])
}

/// Declares a queue; returns its name (the broker's choice if `name` is empty).
async fn declare_queue(
    channel: &Channel,
    name: &str,
    options: QueueDeclareOptions,
    arguments: FieldTable,
) -> lapin::Result<String> {
    let queue = channel
        .queue_declare(name.into(), options, arguments)
        .await?;
    Ok(queue.name().to_string())
}

/// Declares a broker-named queue that is exclusive to this connection and auto-deleted;
/// returns its name.
async fn private_queue(channel: &Channel, arguments: FieldTable) -> String {
    let private = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    declare_queue(channel, "", private, arguments)
        .await
        .unwrap()
}

/// Declares an auto-delete exchange.
async fn declare_exchange(channel: &Channel, name: &str, kind: ExchangeKind) -> lapin::Result<()> {
    let auto_delete = ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    channel
        .exchange_declare(name.into(), kind, auto_delete, FieldTable::default())
        .await
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, key: &str) {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

/// A consumer that acknowledges by hand.
async fn consume(channel: &Channel, queue: &str) -> Consumer {
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap()
}

async fn consume_no_ack(channel: &Channel, queue: &str) -> Consumer {
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    channel
        .basic_consume(queue.into(), "".into(), no_ack, FieldTable::default())
        .await
        .unwrap()
}

/// The consumer's next delivery, within 5 s.
async fn next(consumer: &mut Consumer) -> Delivery {
    tokio::time::timeout(Duration::from_secs(5), consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

fn text(delivery: Delivery) -> String {
    String::from_utf8(delivery.data).unwrap()
}

/// Whether nothing reaches the consumer for 200 ms.
async fn nothing_arrives(consumer: &mut Consumer) -> bool {
    tokio::time::timeout(Duration::from_millis(200), consumer.next())
        .await
        .is_err()
}

/// Publishes without waiting for a confirm.
async fn publish(
    channel: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    properties: BasicProperties,
) {
    channel
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .unwrap();
}

/// How many messages `queue` holds ready, once that is `expected` or 10 s have passed.
async fn ready_within(channel: &Channel, queue: &str, expected: u32) -> u32 {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ready = channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .unwrap()
            .message_count();
        if ready == expected || tokio::time::Instant::now() >= deadline {
            return ready;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes a plain message to a queue through the default exchange.
async fn send(channel: &Channel, queue: &str, body: &[u8]) {
    publish(channel, "", queue, body, BasicProperties::default()).await;
}

fn expiring_in_100_ms() -> BasicProperties {
    BasicProperties::default().with_expiration("100".into())
}

async fn select_confirms(channel: &Channel) {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
}

fn mandatory() -> BasicPublishOptions {
    BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    }
}

/// Publishes to a queue through the default exchange on a channel with confirms, and
/// waits for the broker's answer.
async fn publish_confirmed(
    channel: &Channel,
    queue: &str,
    options: BasicPublishOptions,
    body: &[u8],
    properties: BasicProperties,
) -> Confirmation {
    channel
        .basic_publish("".into(), queue.into(), options, body, properties)
        .await
        .unwrap()
        .await
        .unwrap()
}

/// basic.get without ack: the next message's body, if any.
async fn get(channel: &Channel, queue: &str) -> Option<Vec<u8>> {
    channel
        .basic_get(
            queue.into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .map(|message| message.delivery.data)
}
