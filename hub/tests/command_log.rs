//! The command log, at the hub: every change written (in batches), taken back by a hub
//! of the same replica that starts again, and a vanished replica's commands ended by
//! another. Against RabbitMQ and a SQLite file.

use std::time::Duration;

use hub::{CommandLog, Hub, HubConfig};
use protocol::CommandStatus;
use serde_json::json;

fn log(store: &store::Store, replica: &str) -> CommandLog {
    CommandLog {
        store: store.clone(),
        replica: replica.to_owned(),
        resumable: true,
    }
}

async fn store() -> (store::Store, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(testkit::unique("tether-log"));
    let store = store::Store::open(&format!("sqlite://{}", dir.join("log.db").display()))
        .await
        .unwrap();
    (store, dir)
}

async fn logged_status(store: &store::Store, id: &str) -> Option<CommandStatus> {
    store
        .logged_command(id)
        .await
        .unwrap()
        .map(|c| c.view.status)
}

#[tokio::test]
async fn every_change_is_logged_and_a_restarted_replica_takes_its_commands_back() {
    let url = testkit::rabbitmq_url();
    let (store, dir) = store().await;
    let replica = testkit::unique("replica");
    let first_stop = common::Shutdown::new();
    let first = Hub::start(
        HubConfig {
            command_log: Some(log(&store, &replica)),
            ..HubConfig::new(url.clone())
        },
        &first_stop,
    )
    .await;
    assert!(first.is_connected(), "RabbitMQ must be running at {url}");
    let device = testkit::RawDevice::connect(&url, "log-raw", 60_000).await;
    testkit::online(&first, &device.id).await;
    let sent = first
        .send(&device.id, testkit::command("echo", json!({}), Some(2_000)))
        .await
        .unwrap();
    assert_eq!(sent.status, CommandStatus::Sent);
    // Sent is in the log once `send` returns: a crash now would not lose it.
    assert_eq!(
        logged_status(&store, &sent.id.0).await,
        Some(CommandStatus::Sent)
    );

    // The replica stops (gracefully: it leaves the command pending) and starts again.
    assert!(first_stop.stop_and_wait(Duration::from_secs(3)).await);
    assert_eq!(
        logged_status(&store, &sent.id.0).await,
        Some(CommandStatus::Sent)
    );
    let second = testkit::start_hub(HubConfig {
        command_log: Some(log(&store, &replica)),
        ..HubConfig::new(url.clone())
    })
    .await;
    assert_eq!(
        second.command(&sent.id).map(|c| c.status),
        Some(CommandStatus::Sent),
        "taken back"
    );
    let ended = second.wait(&sent.id, Duration::from_secs(5)).await.unwrap();
    assert_eq!(ended.status, CommandStatus::TimedOut);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while logged_status(&store, &sent.id.0).await != Some(CommandStatus::TimedOut) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the end was not logged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_vanished_replicas_commands_are_ended_by_another_as_unknown() {
    let url = testkit::rabbitmq_url();
    let (store, dir) = store().await;
    let gone_stop = common::Shutdown::new();
    let gone = Hub::start(
        HubConfig {
            command_log: Some(log(&store, &testkit::unique("gone"))),
            ..HubConfig::new(url.clone())
        },
        &gone_stop,
    )
    .await;
    let device = testkit::RawDevice::connect(&url, "orphan-raw", 60_000).await;
    testkit::online(&gone, &device.id).await;
    let sent = gone
        .send(&device.id, testkit::command("echo", json!({}), Some(100)))
        .await
        .unwrap();
    assert!(gone_stop.stop_and_wait(Duration::from_secs(3)).await);

    let other = testkit::start_hub(HubConfig {
        command_log: Some(log(&store, &testkit::unique("other"))),
        ..HubConfig::new(url.clone())
    })
    .await;
    // Within its grace, another replica's command is left alone.
    let other_log = log(&store, "other-view");
    assert!(other.end_orphans_now(&other_log).await.unwrap().is_empty());
    // Past it (the deadline moved back, as if a minute had gone by), it is ended.
    let mut old = store.logged_command(&sent.id.0).await.unwrap().unwrap();
    old.view.deadline_ms -= hub::ORPHAN_GRACE.as_millis() as u64 + 1_000;
    old.version += 1;
    store.log_commands(vec![old]).await.unwrap();
    let ended = other.end_orphans_now(&other_log).await.unwrap();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].status, CommandStatus::OutcomeUnknown);
    assert_eq!(ended[0].error.as_deref(), Some(hub::ORPHANED));
    assert_eq!(
        logged_status(&store, &sent.id.0).await,
        Some(CommandStatus::OutcomeUnknown)
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A cancel of a command whose replica is gone (it stopped, leaving it pending in the
/// log for a next start that has not come) cannot be forwarded: the command ends at
/// once with its outcome unknown, as it would have a minute past its deadline, in the
/// log too, and its device (whose inbox the log knows) is told to stop.
#[tokio::test]
async fn a_cancel_of_a_gone_replicas_command_ends_it_as_unknown_and_tells_the_device() {
    use futures_util::StreamExt as _;

    let url = testkit::rabbitmq_url();
    let (store, dir) = store().await;
    let gone_stop = common::Shutdown::new();
    let gone = Hub::start(
        HubConfig {
            command_log: Some(log(&store, &testkit::unique("gone"))),
            ..HubConfig::new(url.clone())
        },
        &gone_stop,
    )
    .await;
    let other = testkit::start_hub(HubConfig {
        command_log: Some(log(&store, &testkit::unique("other"))),
        ..HubConfig::new(url.clone())
    })
    .await;
    let device = testkit::RawDevice::connect(&url, "orphan-cancel", 60_000).await;
    let mut inbox = device.consume_inbox().await;
    testkit::online(&gone, &device.id).await;
    let sent = gone
        .send(
            &device.id,
            testkit::command("echo", json!({}), Some(60_000)),
        )
        .await
        .unwrap();
    let mut next_message = async || {
        let delivery = testkit::within(Duration::from_secs(5), "a message", inbox.next())
            .await
            .unwrap()
            .unwrap();
        protocol::decode::<protocol::ServerMessage>(&delivery.data).unwrap()
    };
    assert!(matches!(
        next_message().await,
        protocol::ServerMessage::Command(_)
    ));
    assert!(gone_stop.stop_and_wait(Duration::from_secs(3)).await);
    assert_eq!(
        logged_status(&store, &sent.id.0).await,
        Some(CommandStatus::Sent),
        "left for its next start"
    );

    // Its goodbye may take a moment to arrive; until then its queue is found gone.
    let refused = testkit::within(Duration::from_secs(10), "the cancel", async {
        loop {
            match other.cancel(&sent.id).await {
                Err(hub::CancelError::ReplicaUnavailable(_)) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                other => return other,
            }
        }
    })
    .await
    .unwrap_err();
    let hub::CancelError::Orphaned(ended) = &refused else {
        panic!("{refused:?}")
    };
    assert_eq!(
        (ended.status, ended.error.as_deref()),
        (CommandStatus::OutcomeUnknown, Some(hub::ORPHANED))
    );
    assert_eq!(other.command(&sent.id).as_ref(), Some(&**ended));
    assert_eq!(
        logged_status(&store, &sent.id.0).await,
        Some(CommandStatus::OutcomeUnknown)
    );
    let stop = next_message().await;
    assert!(
        matches!(&stop, protocol::ServerMessage::Cancel(c) if c.command_id == sent.id),
        "{stop:?}"
    );
    assert!(matches!(
        other.cancel(&sent.id).await,
        Err(hub::CancelError::AlreadyEnded(_))
    ));
    let _ = std::fs::remove_dir_all(dir);
}

/// With the database down, a send is answered as soon as the broker took the command,
/// not after waiting for the log in vain: the fault suite's postgres-restart found
/// every send of an outage answered 5 s late (the bound of that wait), as if the
/// server were down too.
#[tokio::test]
async fn with_the_database_down_a_send_does_not_wait_for_the_log() {
    let url = testkit::rabbitmq_url();
    // Nothing listens on port 1: every write fails at once, as with a stopped server.
    let down = store::Store::open_or_defer("postgres://postgres@127.0.0.1:1/tether")
        .await
        .unwrap();
    let hub = testkit::start_hub(HubConfig {
        command_log: Some(log(&down, &testkit::unique("replica"))),
        ..HubConfig::new(url.clone())
    })
    .await;
    assert!(hub.is_connected(), "RabbitMQ must be running at {url}");
    let device = testkit::RawDevice::connect(&url, "log-down", 60_000).await;
    let mut inbox = device.consume_inbox().await;
    testkit::online(&hub, &device.id).await;
    // Three sends in a row: with the old wait, each took the full 5 s.
    let started = std::time::Instant::now();
    for _ in 0..3 {
        let sent = hub
            .send(&device.id, testkit::command("echo", json!({}), Some(5_000)))
            .await
            .unwrap();
        assert_eq!(sent.status, CommandStatus::Sent);
        use futures_util::StreamExt as _;
        testkit::within(
            Duration::from_secs(5),
            "the command in the inbox",
            inbox.next(),
        )
        .await
        .expect("the inbox is open")
        .expect("a delivery");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "three sends with the database down took {:?}: they waited for the log",
        started.elapsed()
    );
}
