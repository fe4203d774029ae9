//! Replicas share command changes over `tether.events` only while another replica is
//! there: a replica alone publishes none (only its "I am here" every few seconds), one
//! that joins is told every change from then on, and one that stops says goodbye, after
//! which the others share nothing again. On an embedded broker of the test's own, so no
//! other test's replica is there.

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
