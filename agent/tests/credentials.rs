//! Each device logs in with its own account, and the broker-checked identity travels on
//! every message: the agent stamps its device id on what it publishes, obeys inbox
//! messages only from server accounts, checks (never declares) the topology, and keeps
//! retrying when its login is refused or the topology is not there yet. Runs against
//! the embedded broker, with the server's side done by hand as the server account.

mod support;

use std::{sync::Arc, time::Duration};

use agent::simulate::{Kind, Simulated};
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use protocol::{
    CancelRequest, CommandId, CommandRequest, DeviceMessage, Outcome, ServerMessage, names,
};
use serde_json::json;
use support::{TestBroker, answers_until_replied, hello, next_within, to_inbox, user_id};
use tokio::sync::oneshot;

/// Starts an agent for a simulated gateway; it stops when the sender is dropped or used.
fn spawn_agent(
    config: agent::Config,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(agent::run(
        config,
        Arc::new(Simulated::new(Kind::Gateway)),
        async move {
            let _ = stopped.await;
        },
    ));
    (stop, task)
}

/// A gateway `echo` command, answered after `delay_ms`.
fn echo(id: &str, delay_ms: u64) -> ServerMessage {
    ServerMessage::Command(CommandRequest {
        command_id: CommandId::from(id),
        name: "echo".into(),
        args: [
            ("message".to_owned(), json!(id)),
            ("delay_ms".to_owned(), json!(delay_ms)),
        ]
        .into(),
        timeout_ms: 10_000,
        deadline_ms: None,
    })
}

/// Sends `message` to `inbox` through the default exchange, as a server sends commands.
#[tokio::test]
async fn a_command_from_the_server_account_is_run_and_answered_as_the_device() {
    let broker = TestBroker::start(support::Devices::new(&[("gw-a", "secret-a")])).await;
    let server = broker.server().await;
    server.declare_topology().await;
    let mut presence = server.presence_of("gw-a").await;
    let (replies_queue, mut replies) = server.private_queue().await;

    // Credentials in the URL are replaced by the device's own.
    let mut config = broker.agent_config("gw-a", "secret-a", "gateway");
    config.amqp_url = format!("amqp://someone:else@{}/%2f", broker.addr);
    let (_stop, _agent) = spawn_agent(config);

    let (hello, delivery) = hello(&mut presence).await;
    assert_eq!(hello.device_id.as_str(), "gw-a");
    assert_eq!(
        user_id(&delivery),
        Some("gw-a"),
        "the hello says who sent it"
    );

    let logs = ServerMessage::Command(CommandRequest {
        command_id: CommandId::from("logs-1"),
        name: "collect_logs".into(),
        args: [("lines".to_owned(), json!(2))].into(),
        timeout_ms: 10_000,
        deadline_ms: None,
    });
    to_inbox(&server, &hello.inbox, &replies_queue, "logs-1", &logs).await;
    let answers = answers_until_replied(&mut replies, "gw-a", &["logs-1"]).await;
    let kinds: Vec<&str> = answers
        .iter()
        .map(|(_, message)| match message {
            DeviceMessage::Delivered(_) => "delivered",
            DeviceMessage::Progress(_) => "progress",
            DeviceMessage::Reply(_) => "reply",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["delivered", "progress", "progress", "reply"]);
    let Some((_, DeviceMessage::Reply(reply))) = answers.last() else {
        unreachable!()
    };
    assert!(matches!(reply.outcome, Outcome::Ok { .. }), "{reply:?}");

    // Heartbeats say who sent them too.
    loop {
        let delivery = next_within(&mut presence, Duration::from_secs(10))
            .await
            .expect("heartbeats keep coming");
        if let DeviceMessage::Heartbeat(_) = protocol::decode(&delivery.data).unwrap() {
            assert_eq!(user_id(&delivery), Some("gw-a"));
            break;
        }
    }
}

#[tokio::test]
async fn inbox_messages_from_another_device_or_from_nobody_are_ignored() {
    let broker = TestBroker::start(support::Devices::new(&[
        ("gw-a", "secret-a"),
        ("gw-b", "secret-b"),
    ]))
    .await;
    let server = broker.server().await;
    server.declare_topology().await;
    let mut presence = server.presence_of("gw-a").await;
    let (replies_queue, mut replies) = server.private_queue().await;
    let (_stop, _agent) = spawn_agent(broker.agent_config("gw-a", "secret-a", "gateway"));
    let (hello, _) = hello(&mut presence).await;

    // A legitimate command that takes a while, so that there is something to cancel.
    to_inbox(
        &server,
        &hello.inbox,
        &replies_queue,
        "slow",
        &echo("slow", 800),
    )
    .await;

    // Another provisioned device, which knows the inbox's name, puts messages into it:
    // as itself (the broker lets it stamp only its own id) and with no user_id at all.
    let intruder = Connection::connect(
        &format!("amqp://gw-b:secret-b@{}/%2f", broker.addr),
        ConnectionProperties::default(),
    )
    .await
    .expect("the other device logs in");
    let channel = intruder.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let as_b = || {
        BasicProperties::default()
            .with_reply_to(replies_queue.as_str().into())
            .with_user_id("gw-b".into())
    };
    let cancel = ServerMessage::Cancel(CancelRequest {
        command_id: CommandId::from("slow"),
    });
    let injected = [
        (
            echo("evil-1", 0),
            as_b().with_correlation_id("evil-1".into()),
        ),
        (cancel, as_b()),
        (
            ServerMessage::Announce(protocol::AnnounceRequest {}),
            as_b(),
        ),
        (
            echo("evil-2", 0),
            BasicProperties::default()
                .with_reply_to(replies_queue.as_str().into())
                .with_correlation_id("evil-2".into()),
        ),
    ];
    for (message, properties) in injected {
        let confirm = channel
            .basic_publish(
                "".into(),
                hello.inbox.as_str().into(),
                BasicPublishOptions::default(),
                &protocol::encode(&message),
                properties.with_content_type(names::CONTENT_TYPE.into()),
            )
            .await
            .expect("the other device may publish through the default exchange");
        // Confirmed: it is in the inbox before the command below.
        assert!(confirm.await.unwrap().is_ack());
    }

    to_inbox(
        &server,
        &hello.inbox,
        &replies_queue,
        "after",
        &echo("after", 0),
    )
    .await;
    let answers = answers_until_replied(&mut replies, "gw-a", &["slow", "after"]).await;
    for (id, message) in &answers {
        assert!(id == "slow" || id == "after", "answered {id}: {message:?}");
        if let DeviceMessage::Reply(reply) = message {
            assert!(
                matches!(reply.outcome, Outcome::Ok { .. }),
                "not cancelled by the other device: {reply:?}"
            );
        }
    }
    assert!(
        next_within(&mut replies, Duration::from_millis(500))
            .await
            .is_none(),
        "nothing more is answered"
    );
    // The announce request from the other device did not make it say hello again.
    while let Some(delivery) = next_within(&mut presence, Duration::from_millis(100)).await {
        let message: DeviceMessage = protocol::decode(&delivery.data).unwrap();
        assert!(
            matches!(message, DeviceMessage::Heartbeat(_)),
            "{message:?}"
        );
    }
}

#[tokio::test]
async fn a_wrong_secret_does_not_get_in_and_is_retried() {
    let broker = TestBroker::start(support::Devices::new(&[("gw-a", "secret-a")])).await;
    let server = broker.server().await;
    server.declare_topology().await;
    let mut presence = server.presence_of("gw-a").await;
    let (stop, agent) = spawn_agent(broker.agent_config("gw-a", "not-the-secret", "gateway"));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while broker.devices.attempts_by("gw-a") < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent keeps trying to log in"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        next_within(&mut presence, Duration::from_millis(300))
            .await
            .is_none(),
        "a refused device never says hello"
    );
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), agent)
        .await
        .expect("the agent stops when told")
        .unwrap()
        .expect("a refused login is retried, not the end");
}

#[tokio::test]
async fn an_agent_started_before_the_server_connects_once_the_topology_is_declared() {
    let broker = TestBroker::start(support::Devices::new(&[("gw-a", "secret-a")])).await;
    let (_stop, agent) = spawn_agent(broker.agent_config("gw-a", "secret-a", "gateway"));

    // It logs in, finds no exchanges, and tries again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while broker.devices.attempts_by("gw-a") < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the agent retries");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!agent.is_finished(), "a missing topology is retried");
    let server = broker.server().await;
    // The agent checked, and did not declare: the exchanges are still missing. (A failed
    // passive declare closes its channel, hence a connection of its own.)
    let probe = broker.server().await;
    let missing = probe
        .channel
        .exchange_declare(
            names::PRESENCE_EXCHANGE.into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await;
    assert!(missing.is_err(), "the agent does not declare the topology");
    drop(probe);

    // The server starts: declares the topology, listens, and asks devices to say hello.
    server.declare_topology().await;
    let mut presence = server.presence_of("gw-a").await;
    server.announce().await;
    let (hello, delivery) = hello(&mut presence).await;
    assert_eq!(hello.device_id.as_str(), "gw-a");
    assert_eq!(user_id(&delivery), Some("gw-a"));
}

#[tokio::test]
async fn a_broker_that_accepts_but_never_answers_does_not_hold_the_device() {
    // Takes every connection and never says a word (a half-open link, a stuck broker).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(socket);
        }
    });
    let mut config = agent::Config::new(
        format!("amqp://gw-silent:secret@127.0.0.1:{port}/%2f"),
        protocol::DeviceId::new("gw-silent").unwrap(),
        "gateway",
    );
    config.setup_timeout = Duration::from_millis(300);
    config.reconnect_min = Duration::from_millis(50);
    config.reconnect_max = Duration::from_millis(200);
    let (stop, agent) = spawn_agent(config);
    // It gives up on each silent connection and tries again, again and again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while accepted.load(std::sync::atomic::Ordering::SeqCst) < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent hangs on a broker that never answers ({} connections)",
            accepted.load(std::sync::atomic::Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !agent.is_finished(),
        "a silent broker is retried, not fatal"
    );
    // And it still stops when asked.
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), agent)
        .await
        .expect("the agent stops while retrying")
        .unwrap()
        .unwrap();
}
