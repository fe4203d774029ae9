//! Stopping the server (what SIGTERM or Ctrl-C does): it stops accepting, lets
//! in-flight requests finish, closes live sockets, lets the recorders store what they
//! hold, and is done within 5 s, leaving its ports free. On RabbitMQ a pending command
//! stays pending in the command log, for the next start to resume (its answer waits in
//! the replica's durable reply queue); with the embedded broker, whose queues die with
//! the server, it ends with its outcome unknown, saying the server stopped, and the broker closes
//! its devices' connections with a goodbye.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use agent::simulate::Kind;
use futures_util::StreamExt as _;
use lapin::{Connection, ConnectionProperties};
use protocol::{
    CommandStatus,
    api::{CommandView, LiveEvent},
};
use serde_json::json;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::{
    Message, client::IntoClientRequest as _, protocol::frame::coding::CloseCode,
};

#[tokio::test]
async fn a_stopped_server_on_rabbitmq_finishes_its_work_and_frees_its_port() {
    stops_gracefully(Some(testkit::rabbitmq_url())).await;
}

#[tokio::test]
async fn a_stopped_server_with_its_own_broker_says_goodbye_to_devices_and_frees_its_ports() {
    stops_gracefully(None).await;
}

async fn stops_gracefully(amqp_url: Option<String>) {
    let tag = testkit::unique("stop");
    let dir = std::env::temp_dir().join(format!("tether-{tag}"));
    let mut config = server::Config::new(SocketAddr::from(([127, 0, 0, 1], 0)), "");
    config.amqp_url = amqp_url;
    config.database_url = format!("sqlite://{}", dir.join("telemetry.db").display());
    config.store_queue = format!("tether.telemetry.store.test-{tag}");
    config.store_queue_expires_ms = Some(60_000);
    let server = server::Server::bind(config)
        .await
        .expect("the server starts (RabbitMQ must be running: scripts/test.sh starts it)");
    let addr = server.local_addr().unwrap();
    let hub = server.hub().clone();
    let accounts = server.accounts().clone();
    let (token, _) = testkit::user_token(&accounts, protocol::auth::Role::Admin, &[]).await;
    assert!(hub.is_connected(), "the hub reached its broker");
    let broker_url = server
        .embedded_broker_url()
        .map_or_else(testkit::rabbitmq_url, str::to_owned);
    let embedded = server.embedded_broker_url().is_some();
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));

    let configure = |config: &mut agent::Config| {
        config.heartbeat = Duration::from_secs(1);
        config.telemetry = Some(Duration::from_millis(100));
    };
    let agent = if embedded {
        // The server's own broker checks devices against the server's database.
        let id = protocol::DeviceId::new(testkit::unique("stop-gw")).unwrap();
        let device_url = testkit::provision_in(&accounts, &broker_url, &id).await;
        testkit::Agent::start_as(&device_url, id, "tether-server", Kind::Gateway, configure)
    } else {
        testkit::Agent::start(&broker_url, "stop-gw", Kind::Gateway, configure).await
    };
    testkit::online(&hub, &agent.id).await;
    // A device connection of our own, to see how the broker ends it.
    let device_link = Connection::connect(&broker_url, ConnectionProperties::default())
        .await
        .expect("a device connects");
    let closed_with = Arc::new(Mutex::new(None));
    tokio::spawn({
        let (closed_with, mut events) = (closed_with.clone(), device_link.events_listener());
        async move {
            while let Some(event) = events.next().await {
                if let lapin::Event::Error(error) = event {
                    closed_with
                        .lock()
                        .unwrap()
                        .get_or_insert(format!("{error:?}"));
                }
            }
        }
    });

    let base = format!("http://{addr}");
    let client = testkit::api_client(&token);
    let accepted: CommandView = client
        .post(format!("{base}/api/v1/devices/{}/commands", agent.id))
        .json(&json!({"name": "echo", "args": {"delay_ms": 20_000}, "timeout_ms": 30_000}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    testkit::eventually("the device has the command", Duration::from_secs(5), || {
        hub.command(&accepted.id)
            .filter(|c| c.status == CommandStatus::Delivered)
    })
    .await;
    // Readings reach the store while the server runs.
    tokio::time::sleep(Duration::from_millis(600)).await;
    // In flight when the stop comes: a long poll on the command, and a live socket.
    let long_poll = tokio::spawn({
        let url = format!("{base}/api/v1/commands/{}?wait_ms=30000", accepted.id);
        let client = client.clone();
        async move {
            let response = client
                .get(url)
                .send()
                .await
                .expect("the long poll is answered");
            assert_eq!(response.status(), reqwest::StatusCode::OK);
            response.json::<CommandView>().await.unwrap()
        }
    });
    // The tab shows the device, so it is sent its commands.
    let mut live = format!("ws://{addr}/api/v1/live?watch={}", agent.id)
        .into_client_request()
        .unwrap();
    live.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(live)
        .await
        .expect("the live channel opens");
    let Some(Ok(Message::Text(_snapshot))) = socket.next().await else {
        panic!("a snapshot first");
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    let asked = Instant::now();
    stop.send(()).unwrap();
    let served = testkit::within(Duration::from_secs(5), "stopping", serving).await;
    served
        .expect("serve ends")
        .expect("serve ends without error");
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(5), "stopped in {took:?}");

    // The in-flight request finished: with the command ended (the server stopped), or,
    // where it can be resumed, as it was.
    let ended = long_poll.await.unwrap();
    if embedded {
        assert_eq!(ended.status, CommandStatus::OutcomeUnknown, "{ended:?}");
        let why = ended.error.unwrap_or_default();
        assert!(why.contains("server stopped"), "{why}");
    } else {
        assert_eq!(ended.status, CommandStatus::Delivered, "{ended:?}");
    }
    // The live tab was told how it ended, if it did, then the socket closed as "going
    // away".
    let mut saw_end = false;
    let close = loop {
        match testkit::within(Duration::from_secs(2), "the socket closing", socket.next()).await {
            Some(Ok(Message::Text(text))) => {
                if let Ok(LiveEvent::CommandUpdated { command }) = serde_json::from_str(&text)
                    && command.id == accepted.id
                    && command.status == CommandStatus::OutcomeUnknown
                {
                    saw_end = true;
                }
            }
            Some(Ok(Message::Close(frame))) => break frame,
            other => panic!("the socket should close cleanly, got {other:?}"),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Away));
    assert_eq!(
        saw_end, embedded,
        "the tab was told how the pending command ended"
    );

    // Nothing listens on the HTTP port any more.
    std::net::TcpListener::bind(addr).expect("the HTTP port is free again");
    // The recorders stored what they had.
    let store = store::Store::open(dir.join("telemetry.db").to_str().unwrap())
        .await
        .unwrap();
    assert!(store.count(Some(agent.id.as_str())).await.unwrap() > 0);
    // And the command log holds the command as it was last seen.
    let logged = store
        .logged_command(&accepted.id.0)
        .await
        .unwrap()
        .expect("the command is in the log");
    let expected = if embedded {
        CommandStatus::OutcomeUnknown
    } else {
        CommandStatus::Delivered
    };
    assert_eq!(logged.view.status, expected, "{logged:?}");

    if embedded {
        // The broker said goodbye (connection.close, 320 CONNECTION_FORCED) rather than
        // dropping the socket, and its port is free.
        testkit::eventually("the device told", Duration::from_secs(2), || {
            closed_with.lock().unwrap().clone()
        })
        .await;
        let why = closed_with.lock().unwrap().clone().unwrap();
        assert!(
            why.contains("CONNECTION_FORCED") || why.contains("320"),
            "{why}"
        );
        let broker_addr: SocketAddr = broker_url
            .rsplit_once('@')
            .map(|(_, host)| host.trim_end_matches("/%2f"))
            .unwrap()
            .parse()
            .unwrap();
        std::net::TcpListener::bind(broker_addr).expect("the broker's port is free again");
    } else {
        assert!(device_link.status().connected(), "RabbitMQ itself stays up");
    }
    agent.signal_stop();
    let _ = std::fs::remove_dir_all(dir);
}
