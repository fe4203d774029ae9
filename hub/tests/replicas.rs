//! Replicas share command changes over `tether.events` only while another replica is
//! there: a replica alone publishes none (only its "I am here" every few seconds), one
//! that joins is told every change from then on, and one that stops says goodbye, after
//! which the others share nothing again. A cancel of another replica's command is
//! forwarded to it, and waits for its answer a bounded time. On an embedded broker of
//! the test's own, so no other test's replica is there.

use std::time::Duration;

use agent::simulate::Kind;
use protocol::{CommandStatus, names};
use serde_json::json;
use testkit::Spy;

/// The AMQP types of what the spy's queue got until nothing came for 500 ms.
async fn kinds_seen(seen: &mut Spy) -> Vec<Option<String>> {
    let mut kinds = Vec::new();
    while let Some(delivery) = seen.next(Duration::from_millis(500)).await {
        kinds.push(delivery.properties.kind().as_ref().map(|k| k.to_string()));
    }
    kinds
}

#[tokio::test]
async fn a_replica_alone_shares_nothing_one_that_joins_sees_every_change_and_one_that_leaves_says_so()
 {
    let server_url = testkit::private_embedded_broker_url();
    let first = testkit::start_hub(hub::HubConfig::new(server_url.clone())).await;

    // What goes over tether.events, seen by a queue of the test's own.
    let mut seen = Spy::on(&server_url, names::EVENTS_EXCHANGE, "").await;

    let (id, device_url) = testkit::provision(&testkit::embedded_broker_url(), "replicas-sw").await;
    let agent = testkit::Agent::start_as(
        &testkit::at_address_of(&device_url, &server_url),
        id.clone(),
        &common::amqp_user(&server_url),
        Kind::Switch,
        |config| config.heartbeat = Duration::from_secs(1),
    );
    testkit::online(&first, &id).await;

    let run = |hub: hub::Hub, name: &'static str| {
        let id = id.clone();
        async move {
            let sent = hub
                .send(&id, testkit::command(name, json!({}), None))
                .await
                .expect("sent");
            let done = hub
                .wait(&sent.id, Duration::from_secs(10))
                .await
                .expect("known");
            assert_eq!(done.status, CommandStatus::Succeeded);
            done
        }
    };
    // Alone: nothing but its own "I am here".
    run(first.clone(), "on").await;
    let kinds = kinds_seen(&mut seen).await;
    assert!(
        kinds.iter().all(|k| k.as_deref() == Some("replica")),
        "a replica alone shared {kinds:?}"
    );

    // Another replica joins: it is told of every change of the next command.
    let second_shutdown = common::Shutdown::new();
    let second = hub::Hub::start(hub::HubConfig::new(server_url.clone()), &second_shutdown).await;
    testkit::online(&second, &id).await;
    let done = run(first.clone(), "off").await;
    let mirrored = testkit::eventually(
        "the other replica mirrors the command to its end",
        Duration::from_secs(5),
        || {
            second
                .command(&done.id)
                .filter(|c| c.status == CommandStatus::Succeeded)
        },
    )
    .await;
    assert_eq!(mirrored.result, done.result);

    // It stops: it says goodbye, and the first shares nothing from then on (not for
    // the next 15 s, as if the other were still there).
    second_shutdown.stop_and_wait(Duration::from_secs(5)).await;
    let kinds = kinds_seen(&mut seen).await;
    assert!(
        kinds.iter().any(|k| k.as_deref() == Some("commands")),
        "the changes went out in batches: {kinds:?}"
    );
    assert!(
        kinds.iter().any(|k| k.as_deref() == Some("replica_gone")),
        "the stopping replica said goodbye: {kinds:?}"
    );
    run(first.clone(), "on").await;
    let kinds = kinds_seen(&mut seen).await;
    assert!(
        kinds.iter().all(|k| k.as_deref() == Some("replica")),
        "a replica left alone again shared {kinds:?}"
    );
    agent.stop().await;
}

/// A cancel of another replica's command goes to that replica's own queue, signed by
/// the servers' account, and waits a bounded time for its answer: a replica that does
/// not answer makes it fail as `ReplicaUnavailable` within seconds, its late answer is
/// counted and dropped, as is an answer that does not parse, and the consumer goes on
/// to take the next real answer. The other replica here is the test's own, speaking
/// the protocol by hand.
#[tokio::test]
async fn a_forwarded_cancel_waits_a_bounded_time_and_takes_only_a_real_answer() {
    use lapin::{BasicProperties, options::BasicPublishOptions};
    use protocol::{CommandId, DeviceId, api::CommandView};

    let server_url = testkit::private_embedded_broker_url();
    let hub = testkit::start_hub(hub::HubConfig::new(server_url.clone())).await;
    let account = common::amqp_user(&server_url);
    // The other replica: a queue on tether.events, as every replica has, which it
    // names in the reply_to of what it says there.
    let mut ghost = Spy::on(&server_url, names::EVENTS_EXCHANGE, "").await;
    let ghost_id = testkit::unique("ghost");
    let (channel, queue) = (ghost.channel.clone(), ghost.queue.clone());
    let publish =
        async |exchange: &str, key: &str, kind: &str, body: Vec<u8>, correlation: Option<&str>| {
            let mut properties = BasicProperties::default()
                .with_user_id(account.as_str().into())
                .with_app_id(ghost_id.as_str().into())
                .with_type(kind.into())
                .with_reply_to(queue.as_str().into());
            if let Some(correlation) = correlation {
                properties = properties.with_correlation_id(correlation.into());
            }
            channel
                .basic_publish(
                    exchange.into(),
                    key.into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await
                .unwrap()
                .await
                .unwrap();
        };
    let command = CommandView {
        id: CommandId(testkit::unique("ghost-command")),
        device_id: DeviceId::new(testkit::unique("ghost-device")).unwrap(),
        name: "echo".into(),
        args: Default::default(),
        status: CommandStatus::Sent,
        created_ms: common::now_ms(),
        updated_ms: common::now_ms(),
        deadline_ms: common::now_ms() + 60_000,
        percent: None,
        message: None,
        result: None,
        error: None,
        issued_by: None,
        job_id: None,
    };
    let envelope = |value: serde_json::Value| {
        let mut value = value;
        value["v"] = json!(protocol::PROTOCOL_VERSION);
        serde_json::to_vec(&value).unwrap()
    };
    publish(names::EVENTS_EXCHANGE, "", "replica", Vec::new(), None).await;
    publish(
        names::EVENTS_EXCHANGE,
        "",
        "commands",
        envelope(json!({"origin": ghost_id, "commands": [command]})),
        None,
    )
    .await;
    testkit::eventually(
        "the ghost's command mirrored",
        Duration::from_secs(5),
        || hub.command(&command.id),
    )
    .await;

    // The forwarded cancel, as the ghost receives it.
    let forwarded = async |ghost: &mut Spy| loop {
        let delivery = ghost
            .next(Duration::from_secs(5))
            .await
            .expect("the cancel forwarded to the ghost");
        if delivery.properties.kind().as_ref().map(|k| k.as_str()) == Some("cancel") {
            return delivery;
        }
    };
    let started = std::time::Instant::now();
    let (refused, request) = tokio::join!(hub.cancel(&command.id), forwarded(&mut ghost));
    let waited = started.elapsed();
    assert!(
        matches!(refused, Err(hub::CancelError::ReplicaUnavailable(_))),
        "{refused:?}"
    );
    assert!(
        (Duration::from_secs(4)..Duration::from_secs(8)).contains(&waited),
        "waited {waited:?}"
    );
    let property =
        |value: &Option<lapin::types::ShortString>| value.as_ref().map(|v| v.to_string());
    assert_eq!(
        property(request.properties.user_id()),
        Some(account.clone())
    );
    assert_eq!(
        property(request.properties.app_id()).as_deref(),
        Some(hub.replica_id())
    );
    let reply_to = property(request.properties.reply_to()).expect("reply_to");
    let correlation = property(request.properties.correlation_id()).expect("correlation_id");
    let asked: serde_json::Value = serde_json::from_slice(&request.data).unwrap();
    assert_eq!(asked["command_id"], json!(command.id));
    assert!(
        !hub.command(&command.id).unwrap().status.is_terminal(),
        "nothing changed"
    );

    // Its answer, too late: counted and dropped.
    let mut cancelled = command.clone();
    cancelled.status = CommandStatus::Cancelled;
    cancelled.error = Some("cancelled by a user".into());
    cancelled.updated_ms = common::now_ms();
    let answer = envelope(json!({"outcome": "cancelled", "command": cancelled}));
    let late = hub.stats().late;
    publish(
        "",
        &reply_to,
        "cancel_answer",
        answer.clone(),
        Some(&correlation),
    )
    .await;
    testkit::eventually("the late answer counted", Duration::from_secs(5), || {
        Some(hub.stats()).filter(|s| s.late > late)
    })
    .await;
    assert!(!hub.command(&command.id).unwrap().status.is_terminal());

    // Asked again: a broken answer is dropped, then the real one is taken.
    let cancelling = tokio::spawn({
        let hub = hub.clone();
        let id = command.id.clone();
        async move { hub.cancel(&id).await }
    });
    let request = forwarded(&mut ghost).await;
    let correlation = property(request.properties.correlation_id()).expect("correlation_id");
    let malformed = hub.stats().malformed;
    publish(
        "",
        &reply_to,
        "cancel_answer",
        b"{\"v\":1,\"outcome\":\"maybe\"}".to_vec(),
        Some(&correlation),
    )
    .await;
    testkit::eventually("the broken answer counted", Duration::from_secs(5), || {
        Some(hub.stats()).filter(|s| s.malformed > malformed)
    })
    .await;
    publish("", &reply_to, "cancel_answer", answer, Some(&correlation)).await;
    let taken = cancelling
        .await
        .unwrap()
        .expect("the real answer is the cancel's");
    assert_eq!(taken, cancelled);
    assert_eq!(hub.command(&command.id), Some(cancelled));
}
