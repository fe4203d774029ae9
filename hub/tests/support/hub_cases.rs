//! The hub against a real broker with real agents: included by `tests/hub.rs`
//! (RabbitMQ) and `tests/hub_embedded.rs` (the embedded broker), each of which says
//! where its broker is with a `crate::amqp_url()`. Each test uses its own device ids, so
//! tests can run in parallel on one broker. A missing broker fails the tests.

use std::{sync::Arc, time::Duration};

use agent::simulate::{Kind, Simulated};
use futures_util::StreamExt as _;
use hub::{Hub, HubConfig, SendError};
use lapin::BasicProperties;
use protocol::{
    CommandStatus, DeviceId, DeviceMessage, Outcome, Reply, ServerMessage,
    api::{CommandView, SendCommand},
    names,
};
use serde_json::json;
use testkit::{command, eventually, online, unique, within};
use tokio::sync::watch;

use crate::amqp_url;

async fn start_hub() -> Hub {
    testkit::start_hub(HubConfig::new(amqp_url())).await
}

async fn start_agent(name: &str, kind: Kind, heartbeat: Duration) -> testkit::Agent {
    testkit::Agent::start(&amqp_url(), name, kind, |config| {
        config.heartbeat = heartbeat
    })
    .await
}

/// The settings of an agent with an account of its own on this suite's broker, obeying
/// the hubs' account.
async fn device_config(name: &str, kind: &str) -> (DeviceId, agent::Config) {
    let (id, url) = testkit::provision(&amqp_url(), name).await;
    let mut config = agent::Config::new(url, id.clone(), kind);
    config.server_accounts = vec![common::amqp_user(&amqp_url())];
    (id, config)
}

/// A connection as the hubs' own (server) account, which may publish anywhere.
async fn server_channel() -> lapin::Channel {
    let connection =
        lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
            .await
            .expect("the server account connects");
    connection.create_channel().await.unwrap()
}

/// A device written with bare lapin, on this suite's broker.
async fn raw_device(name: &str, heartbeat_ms: u64) -> testkit::RawDevice {
    testkit::RawDevice::connect(&amqp_url(), name, heartbeat_ms).await
}

/// Ends a raw device as if its process were killed (no bye), and waits until the broker
/// has deleted its inbox, which RabbitMQ does shortly after confirming the close.
async fn vanish(device: &testkit::RawDevice) {
    device.connection.close(320, "killed".into()).await.unwrap();
    testkit::queue_gone(&amqp_url(), &device.inbox).await;
}

/// The next message in a raw device's inbox, which must be a command: the delivery
/// (for its properties) and the request.
async fn next_command(
    inbox: &mut lapin::Consumer,
) -> (lapin::message::Delivery, protocol::CommandRequest) {
    let delivery = within(Duration::from_secs(5), "the command", inbox.next())
        .await
        .unwrap()
        .unwrap();
    let ServerMessage::Command(request) =
        protocol::decode::<ServerMessage>(&delivery.data).unwrap()
    else {
        panic!("not a command")
    };
    (delivery, request)
}

async fn run(hub: &Hub, device: &DeviceId, request: SendCommand) -> CommandView {
    let sent = hub.send(device, request).await.expect("command accepted");
    hub.wait(&sent.id, Duration::from_secs(30))
        .await
        .expect("command known")
}

#[tokio::test]
async fn a_command_succeeds_with_the_devices_result() {
    let hub = start_hub().await;
    let switch = start_agent("switch", Kind::Switch, Duration::from_secs(1)).await;
    online(&hub, &switch.id).await;

    let sent = hub
        .send(&switch.id, command("toggle", json!({}), None))
        .await
        .unwrap();
    assert!(
        matches!(
            sent.status,
            CommandStatus::Sent | CommandStatus::Delivered | CommandStatus::Succeeded
        ),
        "{sent:?}"
    );
    let done = hub.wait(&sent.id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(done.status, CommandStatus::Succeeded, "{done:?}");
    assert_eq!(done.result, Some(json!({"on": true})));

    let again = run(&hub, &switch.id, command("toggle", json!({}), None)).await;
    assert_eq!(again.result, Some(json!({"on": false})));
    assert_eq!(hub.recent_commands(Some(&switch.id), 10).len(), 2);
    switch.stop().await;
}

#[tokio::test]
async fn every_status_of_a_command_reaches_listeners_in_order() {
    let hub = start_hub().await;
    let gateway = start_agent("gw-events", Kind::Gateway, Duration::from_secs(1)).await;
    online(&hub, &gateway.id).await;
    let (_snapshot, mut events) = hub.subscribe(10);
    let done = run(
        &hub,
        &gateway.id,
        command("collect_logs", json!({"lines": 3}), None),
    )
    .await;
    assert_eq!(done.status, CommandStatus::Succeeded);
    assert_eq!(
        done.result.as_ref().unwrap()["lines"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    let mut statuses = Vec::new();
    while let Ok(Ok(event)) = tokio::time::timeout(Duration::from_millis(200), events.recv()).await
    {
        if let protocol::api::LiveEvent::CommandUpdated { command } = event
            && command.id == done.id
        {
            statuses.push(command.status);
        }
    }
    statuses.dedup();
    let expected = [
        CommandStatus::Accepted,
        CommandStatus::Sent,
        CommandStatus::Delivered,
        CommandStatus::Progress,
        CommandStatus::Succeeded,
    ];
    assert_eq!(statuses, expected);
    gateway.stop().await;
}

#[tokio::test]
async fn a_device_error_ends_the_command_as_failed() {
    let hub = start_hub().await;
    let gateway = start_agent("gw-fail", Kind::Gateway, Duration::from_secs(1)).await;
    online(&hub, &gateway.id).await;
    let done = run(
        &hub,
        &gateway.id,
        command("fail", json!({"message": "disk full"}), None),
    )
    .await;
    assert_eq!(
        (done.status, done.error.as_deref()),
        (CommandStatus::Failed, Some("disk full"))
    );
    gateway.stop().await;
}

#[tokio::test]
async fn bad_commands_are_rejected_before_anything_is_sent() {
    let hub = start_hub().await;
    let thermostat = start_agent("thermo", Kind::Thermostat, Duration::from_secs(1)).await;
    online(&hub, &thermostat.id).await;
    let id = &thermostat.id;

    let unknown = hub
        .send(id, command("explode", json!({}), None))
        .await
        .unwrap_err();
    assert_eq!(
        unknown.to_string(),
        format!("device \"{id}\" has no command \"explode\"")
    );
    let too_hot = hub
        .send(id, command("set_target", json!({"celsius": 99}), None))
        .await
        .unwrap_err();
    assert_eq!(
        too_hot.to_string(),
        "argument \"celsius\" is 99, outside the allowed range 5..=30"
    );
    let missing = hub
        .send(id, command("set_target", json!({}), None))
        .await
        .unwrap_err();
    assert!(
        matches!(missing, SendError::InvalidArguments(_)),
        "{missing:?}"
    );
    let too_long = hub
        .send(id, command("get_state", json!({}), Some(301_000)))
        .await
        .unwrap_err();
    assert_eq!(too_long, SendError::InvalidTimeout(301_000));
    let never_seen = DeviceId::new("no-such-device").unwrap();
    let nobody = hub
        .send(&never_seen, command("get_state", json!({}), None))
        .await
        .unwrap_err();
    assert_eq!(nobody, SendError::UnknownDevice(never_seen));
    // A malformed id never reaches the hub: the API refuses it at the edge
    // (`server/tests/api.rs`, the error table).
    assert!(
        hub.recent_commands(Some(&thermostat.id), 10).is_empty(),
        "nothing was accepted"
    );

    let set = run(
        &hub,
        &thermostat.id,
        command("set_target", json!({"celsius": 22.5}), None),
    )
    .await;
    assert_eq!(set.result.unwrap()["target"], json!(22.5));
    thermostat.stop().await;
}

#[tokio::test]
async fn a_device_that_says_bye_ends_its_pending_commands_at_once_one_it_was_carrying_out_as_outcome_unknown()
 {
    let hub = start_hub().await;
    let gateway = start_agent("gw-bye", Kind::Gateway, Duration::from_secs(5)).await;
    online(&hub, &gateway.id).await;
    let slow = hub
        .send(
            &gateway.id,
            command("echo", json!({"delay_ms": 20_000}), Some(30_000)),
        )
        .await
        .unwrap();
    eventually("delivered", Duration::from_secs(5), || {
        hub.command(&slow.id)
            .filter(|c| c.status == CommandStatus::Delivered)
    })
    .await;

    let id = gateway.id.clone();
    gateway.stop().await;
    // It had said `delivered`: it was carrying the command out when it left, so what
    // became of it is not known (never `offline`, which says it never got there).
    let ended = within(
        Duration::from_secs(2),
        "ended",
        hub.wait(&slow.id, Duration::from_secs(30)),
    )
    .await
    .unwrap();
    assert_eq!(ended.status, CommandStatus::OutcomeUnknown, "{ended:?}");
    assert!(
        ended
            .error
            .as_deref()
            .is_some_and(|e| e.contains("may or may not")),
        "{ended:?}"
    );
    assert!(!hub.device(&id).unwrap().online);
    let refused = hub
        .send(&id, command("echo", json!({}), None))
        .await
        .unwrap_err();
    assert_eq!(refused, SendError::DeviceOffline(id));
}

#[tokio::test]
async fn a_command_to_a_vanished_inbox_is_offline_at_once() {
    let hub = start_hub().await;
    let device = raw_device("raw-gone", 60_000).await;
    online(&hub, &device.id).await;
    vanish(&device).await;

    let sent = within(
        Duration::from_secs(2),
        "send",
        hub.send(&device.id, command("echo", json!({}), None)),
    )
    .await
    .unwrap();
    assert_eq!(sent.status, CommandStatus::Offline, "{sent:?}");
    assert_eq!(
        sent.error.as_deref(),
        Some("the device is offline: its inbox is gone")
    );
    assert!(!hub.device(&device.id).unwrap().online);
    assert_eq!(hub.stats().returned, 1);
}

/// The broker confirms many publishes with one `basic.ack` (`multiple`), and a
/// `basic.return` names no command: each return must still reach the command it came
/// from. A return given to the wrong command would leave a vanished device's command
/// `sent`, and end a live device's command as offline and take the live device offline
/// while it carries the command out.
#[tokio::test]
async fn returns_of_many_commands_confirmed_at_once_reach_their_own_commands() {
    let hub = start_hub().await;
    // With another replica present, every command is also shared on `tether.events`
    // from the same channel: publishes that are routed, so confirmed a moment after the
    // returns of those that are not.
    let other = start_hub().await;
    let live = start_agent("gw-live", Kind::Gateway, Duration::from_secs(2)).await;
    online(&hub, &live.id).await;
    let first = run(&hub, &live.id, command("echo", json!({}), None)).await;
    eventually(
        "the other replica to be shared with",
        Duration::from_secs(5),
        || other.command(&first.id),
    )
    .await;
    let mut gone = Vec::new();
    for n in 0..8 {
        let device = raw_device(&format!("raw-gone{n}"), 60_000).await;
        online(&hub, &device.id).await;
        gone.push(device);
    }
    for device in &gone {
        vanish(device).await;
    }

    // Interleaved, all at once, on the hub's one channel.
    let sends = (0..240).map(|n| {
        // The raw devices' echo takes no arguments.
        let (target, args) = if n % 2 == 0 {
            (live.id.clone(), json!({"message": n.to_string()}))
        } else {
            (gone[(n / 2) % gone.len()].id.clone(), json!({}))
        };
        let hub = hub.clone();
        async move {
            let sent = hub.send(&target, command("echo", args, None)).await;
            (target, sent)
        }
    });
    let results = futures_util::future::join_all(sends).await;
    let mut to_live = Vec::new();
    let mut returned = 0;
    for (target, sent) in results {
        if target == live.id {
            let view = sent.expect("the live device takes commands");
            assert_ne!(view.status, CommandStatus::Offline, "{view:?}");
            to_live.push(view);
        } else {
            match sent {
                // Sent before the hub knew: it came back, so it is offline.
                Ok(view) => {
                    assert_eq!(view.status, CommandStatus::Offline, "{view:?}");
                    returned += 1;
                }
                // Refused once a return had shown the device gone.
                Err(SendError::DeviceOffline(_)) => {}
                Err(other) => panic!("{other:?}"),
            }
        }
    }
    assert!(
        returned >= gone.len(),
        "each vanished device had a command returned"
    );
    assert_eq!(hub.stats().returned, returned as u64);
    assert!(hub.device(&live.id).unwrap().online);
    for device in &gone {
        assert!(!hub.device(&device.id).unwrap().online);
    }
    for view in to_live {
        let ended = hub.wait(&view.id, Duration::from_secs(30)).await.unwrap();
        assert_eq!(ended.status, CommandStatus::Succeeded, "{ended:?}");
    }
    live.stop().await;
}

#[tokio::test]
async fn a_silent_device_goes_offline_in_time_while_commands_flow_to_others() {
    let hub = start_hub().await;
    let busy = start_agent("switch-busy", Kind::Switch, Duration::from_secs(1)).await;
    let silent = raw_device("raw-quiet", 200).await;
    online(&hub, &busy.id).await;
    online(&hub, &silent.id).await;
    // Twenty commands a second to another device: each one wakes the hub's timer. It
    // must still check heartbeats: three missed 200 ms heartbeats, and a sweep, are
    // well under two seconds.
    let flowing = {
        let (hub, device) = (hub.clone(), busy.id.clone());
        tokio::spawn(async move {
            loop {
                let _ = hub.send(&device, command("toggle", json!({}), None)).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    eventually("the silent device offline", Duration::from_secs(2), || {
        (!hub.device(&silent.id).unwrap().online).then_some(())
    })
    .await;
    flowing.abort();
    busy.stop().await;
}

#[tokio::test]
async fn a_device_that_stops_heartbeating_goes_offline_and_its_commands_outcome_unknown() {
    let hub = start_hub().await;
    let device = raw_device("raw-silent", 200).await;
    online(&hub, &device.id).await;
    let pending = hub
        .send(&device.id, command("echo", json!({}), Some(60_000)))
        .await
        .unwrap();
    assert_eq!(pending.status, CommandStatus::Sent);

    // It never heartbeats: after three missed 200 ms heartbeats it is offline, long
    // before the command's 60 s deadline. The command was in its inbox, where the
    // device may have taken it (its `delivered` lost): its outcome is unknown.
    let ended = within(
        Duration::from_secs(3),
        "ended",
        hub.wait(&pending.id, Duration::from_secs(60)),
    )
    .await
    .unwrap();
    assert_eq!(ended.status, CommandStatus::OutcomeUnknown);
    assert_eq!(
        ended.error.as_deref(),
        Some(
            "the device stopped sending heartbeats after the command reached its inbox: it may or may not have been carried out"
        )
    );
    assert!(!hub.device(&device.id).unwrap().online);
}

#[tokio::test]
async fn a_slow_device_times_out_at_the_deadline_and_its_late_reply_is_ignored() {
    let hub = start_hub().await;
    let gateway = start_agent("gw-slow", Kind::Gateway, Duration::from_secs(1)).await;
    online(&hub, &gateway.id).await;
    let started = tokio::time::Instant::now();
    let sent = hub
        .send(
            &gateway.id,
            command("echo", json!({"delay_ms": 1_500}), Some(500)),
        )
        .await
        .unwrap();
    let ended = hub.wait(&sent.id, Duration::from_secs(10)).await.unwrap();
    let took = started.elapsed();
    assert_eq!(ended.status, CommandStatus::TimedOut);
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(1_400),
        "timed out after {took:?}"
    );

    // The device gives up at the same deadline and says so; that reply is too late.
    eventually("the late reply", Duration::from_secs(5), || {
        (hub.stats().late >= 1).then_some(())
    })
    .await;
    assert_eq!(
        hub.command(&sent.id).unwrap().status,
        CommandStatus::TimedOut
    );
    gateway.stop().await;
}

#[tokio::test]
async fn a_rebooted_device_comes_back_with_a_new_session_and_is_commandable() {
    let hub = start_hub().await;
    let gateway = start_agent("gw-reboot", Kind::Gateway, Duration::from_secs(1)).await;
    online(&hub, &gateway.id).await;
    let (_snapshot, mut events) = hub.subscribe(0);

    let reboot = run(
        &hub,
        &gateway.id,
        command("reboot", json!({"seconds": 1}), None),
    )
    .await;
    assert_eq!(reboot.status, CommandStatus::Succeeded);
    let mut went_offline = false;
    let came_back = within(Duration::from_secs(10), "back online", async {
        loop {
            if let Ok(protocol::api::LiveEvent::DeviceUpdated { device }) = events.recv().await
                && device.id == gateway.id
            {
                went_offline |= !device.online;
                if went_offline && device.online {
                    return device;
                }
            }
        }
    })
    .await;
    assert!(came_back.online);

    let echo = run(
        &hub,
        &gateway.id,
        command("echo", json!({"message": "again"}), None),
    )
    .await;
    assert_eq!(echo.result, Some(json!({"message": "again"})));
    gateway.stop().await;
}

#[tokio::test]
async fn cancelling_a_pending_command_ends_it_and_stops_the_device() {
    let hub = start_hub().await;
    let gateway = start_agent("gw-cancel", Kind::Gateway, Duration::from_secs(1)).await;
    online(&hub, &gateway.id).await;
    let slow = hub
        .send(
            &gateway.id,
            command("echo", json!({"delay_ms": 30_000}), Some(60_000)),
        )
        .await
        .unwrap();
    let cancelled = hub.cancel(&slow.id).await.unwrap();
    assert_eq!(cancelled.status, CommandStatus::Cancelled);
    let again = hub.cancel(&slow.id).await.unwrap_err();
    assert!(
        again
            .to_string()
            .ends_with("has already ended as cancelled"),
        "{again}"
    );
    // The device's own "cancelled" answer comes later and changes nothing.
    let fast = run(&hub, &gateway.id, command("echo", json!({}), None)).await;
    assert_eq!(fast.status, CommandStatus::Succeeded);
    assert_eq!(
        hub.command(&slow.id).unwrap().status,
        CommandStatus::Cancelled
    );
    gateway.stop().await;
}

#[tokio::test]
async fn a_thousand_pending_slow_commands_do_not_delay_a_fast_one() {
    let hub = start_hub().await;
    let mut slow = Vec::new();
    for n in 0..4 {
        slow.push(
            start_agent(
                &format!("gw-busy{n}"),
                Kind::Gateway,
                Duration::from_secs(2),
            )
            .await,
        );
    }
    let fast = start_agent("switch-fast", Kind::Switch, Duration::from_secs(2)).await;
    for agent in slow.iter().chain([&fast]) {
        online(&hub, &agent.id).await;
    }
    let sends = (0..1_000).map(|n| {
        let (hub, device) = (hub.clone(), slow[n % slow.len()].id.clone());
        async move {
            hub.send(
                &device,
                command("echo", json!({"delay_ms": 120_000}), Some(120_000)),
            )
            .await
        }
    });
    let pending: Vec<_> = futures_util::future::join_all(sends)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(hub.stats().pending_commands, 1_000);

    let toggled = within(
        Duration::from_secs(2),
        "the fast command",
        run(&hub, &fast.id, command("toggle", json!({}), None)),
    )
    .await;
    assert_eq!(toggled.status, CommandStatus::Succeeded);
    assert!(
        pending
            .iter()
            .all(|c| !hub.command(&c.id).unwrap().status.is_terminal())
    );
    for agent in slow {
        agent.stop().await;
    }
    // All end with their devices, after the short grace for late answers: those the
    // devices were carrying out as outcome unknown, those still in their inboxes (never
    // acknowledged) as offline.
    eventually("no pending commands", Duration::from_secs(2), || {
        (hub.stats().pending_commands == 0).then_some(())
    })
    .await;
    assert!(pending.iter().all(|c| {
        let status = hub.command(&c.id).unwrap().status;
        status == CommandStatus::Offline || status == CommandStatus::OutcomeUnknown
    }));
    fast.stop().await;
}

#[tokio::test]
async fn a_hello_breaking_the_rules_changes_nothing_and_text_for_people_is_cut() {
    let hub = start_hub().await;
    let device = raw_device("raw-rules", 60_000).await;
    online(&hub, &device.id).await;
    let dropped_before = hub.stats().refused_hellos;
    let before = hub.device(&device.id).unwrap();
    let hello = |session: &str, kind: &str, capabilities: serde_json::Value| {
        protocol::encode(&DeviceMessage::Hello(protocol::Hello {
            device_id: device.id.clone(),
            session_id: session.into(),
            inbox: device.inbox.clone(),
            kind: kind.into(),
            firmware: "1".into(),
            heartbeat_ms: 60_000,
            capabilities: serde_json::from_value(capabilities).unwrap(),
        }))
    };
    // Each is dropped: a dotted metric (its readings could never be published), a
    // default its own argument refuses, duplicate commands, reporting faster than its
    // fastest, a session id that is not one word. Sent with a new session too: the
    // device keeps its current one.
    let bad = [
        json!({"metrics": [{"name": "cpu.load"}]}),
        json!({"commands": [{"name": "go", "args": [{"name": "n", "type": "integer", "max": 5, "default": 9}]}]}),
        json!({"commands": [{"name": "go"}, {"name": "go"}]}),
        json!({"reporting": {"interval_ms": 1000, "fastest_ms": 5000}}),
    ];
    for (i, capabilities) in bad.iter().enumerate() {
        device
            .publish_presence(
                "hello",
                &hello(&device.session_id, "raw", capabilities.clone()),
            )
            .await;
        device
            .publish_presence(
                "hello",
                &hello(&format!("new-{i}"), "raw", capabilities.clone()),
            )
            .await;
    }
    device
        .publish_presence("hello", &hello("not one.word", "raw", json!({})))
        .await;
    eventually("the bad hellos counted", Duration::from_secs(5), || {
        Some(()).filter(|()| hub.stats().refused_hellos >= dropped_before + 9)
    })
    .await;
    let known = hub.device(&device.id).unwrap();
    assert!(known.online);
    assert_eq!(known.kind, "raw");
    let names: Vec<&str> = known
        .capabilities
        .metrics
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["temp"],
        "the announcement before the bad hellos stands"
    );
    assert_eq!(known.since_ms, before.since_ms, "no new session began");
    let refused = known
        .hello_refused
        .expect("the view says its hello was refused");
    assert!(
        refused.problem.contains("session_id \"not one.word\""),
        "{refused:?}"
    );
    assert_eq!(hub.refused_hello(&device.id), Some(refused));

    // Over-long text for people is cut, and the hello is taken.
    let long = hello(
        &device.session_id,
        &"k".repeat(100),
        json!({"commands": [{"name": "echo", "description": "é".repeat(500)}],
               "metrics": [{"name": "temp", "unit": "u".repeat(50)}]}),
    );
    device.publish_presence("hello", &long).await;
    let known = eventually("the long hello taken", Duration::from_secs(5), || {
        hub.device(&device.id)
            .filter(|d| d.kind.len() < 100 && d.kind.starts_with('k'))
    })
    .await;
    assert_eq!(known.kind, "k".repeat(64));
    assert_eq!(
        known.hello_refused, None,
        "a hello taken clears the refusal"
    );
    assert_eq!(hub.refused_hello(&device.id), None);
    assert_eq!(known.capabilities.commands[0].description, "é".repeat(200));
    assert_eq!(known.capabilities.metrics[0].unit, "u".repeat(32));

    // A command carries the server's deadline, so the device can tell what is left.
    let mut inbox = device.consume_inbox().await;
    let sent = hub
        .send(&device.id, command("echo", json!({}), Some(7_000)))
        .await
        .unwrap();
    let (_, request) = next_command(&mut inbox).await;
    assert_eq!(request.timeout_ms, 7_000);
    assert_eq!(request.deadline_ms, Some(sent.deadline_ms));
    assert_eq!(sent.deadline_ms, sent.created_ms + 7_000);
}

#[tokio::test]
async fn malformed_and_foreign_messages_are_counted_and_ignored() {
    let hub = start_hub().await;
    let device = raw_device("raw-noisy", 60_000).await;
    online(&hub, &device.id).await;

    // On the presence exchange: garbage, a future version, a reply, and a heartbeat
    // from a session that does not exist. (A device cannot publish under another's key:
    // the broker refuses it.)
    device.publish_presence("hello", b"\x00garbage").await;
    device
        .publish_presence("heartbeat", br#"{"v":99,"type":"heartbeat"}"#)
        .await;
    let stray = DeviceMessage::Reply(Reply {
        command_id: "x".into(),
        session_id: "y".into(),
        outcome: Outcome::Ok { result: json!(1) },
    });
    device
        .publish_presence("heartbeat", &protocol::encode(&stray))
        .await;
    // Under its own key, a heartbeat about another device.
    let beat = protocol::encode(&DeviceMessage::Heartbeat(protocol::Heartbeat {
        device_id: DeviceId::new(format!("{}-other", device.id)).unwrap(),
        session_id: device.session_id.clone(),
    }));
    device.publish_presence("heartbeat", &beat).await;
    let server = server_channel().await;
    let old = protocol::encode(&DeviceMessage::Heartbeat(protocol::Heartbeat {
        device_id: device.id.clone(),
        session_id: "old".into(),
    }));
    device.publish_presence("heartbeat", &old).await;
    // On the events exchange, where only servers may write: garbage.
    server
        .basic_publish(
            names::EVENTS_EXCHANGE.into(),
            "".into(),
            Default::default(),
            b"{not json",
            BasicProperties::default(),
        )
        .await
        .unwrap();

    // A command: the device answers with garbage, a reply from another session, then
    // the real reply.
    let mut inbox = device.consume_inbox().await;
    let sent = hub
        .send(&device.id, command("echo", json!({}), None))
        .await
        .unwrap();
    let (delivery, request) = next_command(&mut inbox).await;
    assert_eq!(request.command_id, sent.id);
    let reply_to = delivery.properties.reply_to().as_ref().unwrap().to_string();
    let correlated = BasicProperties::default().with_correlation_id(sent.id.0.as_str().into());
    device
        .publish("", &reply_to, b"[]", correlated.clone())
        .await;
    let answer = |session: &str| {
        protocol::encode(&DeviceMessage::Reply(Reply {
            command_id: sent.id.clone(),
            session_id: session.into(),
            outcome: Outcome::Ok {
                result: json!("pong"),
            },
        }))
    };
    device
        .publish("", &reply_to, &answer("someone-else"), correlated.clone())
        .await;
    device
        .publish("", &reply_to, &answer(&device.session_id), correlated)
        .await;

    let done = hub.wait(&sent.id, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (done.status, done.result),
        (CommandStatus::Succeeded, Some(json!("pong")))
    );
    let stats = eventually("all counted", Duration::from_secs(5), || {
        Some(hub.stats()).filter(|s| s.malformed >= 4 && s.foreign >= 2 && s.stale >= 2)
    })
    .await;
    assert_eq!((stats.malformed, stats.foreign), (4, 2), "{stats:?}");
    // At least our two: on a shared broker this hub also hears heartbeats and readings
    // of other tests' devices whose hello came before it started.
    assert!(stats.stale >= 2, "{stats:?}");
    assert!(
        hub.device(&device.id).unwrap().online,
        "the noise did not change the device"
    );
}

#[tokio::test]
async fn another_replica_sees_every_status_of_a_command_and_can_wait_for_it() {
    let sender = start_hub().await;
    let watcher = start_hub().await;
    let gateway = start_agent("gw-replicas", Kind::Gateway, Duration::from_secs(1)).await;
    online(&sender, &gateway.id).await;
    online(&watcher, &gateway.id).await;
    let (_snapshot, mut events) = watcher.subscribe(0);

    let sent = sender
        .send(
            &gateway.id,
            command("collect_logs", json!({"lines": 2}), None),
        )
        .await
        .unwrap();
    // The other replica learns of the command through `tether.events`, a moment later.
    eventually("the command mirrored", Duration::from_secs(5), || {
        watcher.command(&sent.id)
    })
    .await;
    let seen = within(
        Duration::from_secs(5),
        "the other replica",
        watcher.wait(&sent.id, Duration::from_secs(5)),
    )
    .await
    .expect("mirrored");
    assert_eq!(seen.status, CommandStatus::Succeeded);
    assert_eq!(seen.result, sender.command(&sent.id).unwrap().result);

    let mut statuses = Vec::new();
    while let Ok(Ok(event)) = tokio::time::timeout(Duration::from_millis(200), events.recv()).await
    {
        if let protocol::api::LiveEvent::CommandUpdated { command } = event
            && command.id == sent.id
        {
            statuses.push(command.status);
        }
    }
    statuses.dedup();
    assert_eq!(
        statuses.last(),
        Some(&CommandStatus::Succeeded),
        "{statuses:?}"
    );
    assert!(statuses.contains(&CommandStatus::Progress), "{statuses:?}");
    let refused = watcher.cancel(&sent.id).await.unwrap_err();
    assert!(refused.to_string().contains("already ended"), "{refused}");
    gateway.stop().await;
}

/// Behind a load balancer a cancel reaches any replica: one that only mirrors the
/// command forwards it to the replica that sent it, which cancels it (the device is told
/// to stop) and answers. A device that learnt where replicas take such requests cannot
/// cancel anything: the owner takes them only from the servers' account.
#[tokio::test]
async fn another_replica_cancels_a_command_through_the_replica_that_sent_it() {
    let owner = start_hub().await;
    let other = start_hub().await;
    // Where replicas take requests: the reply_to of what they say on tether.events.
    let mut events = testkit::Spy::on(&amqp_url(), names::EVENTS_EXCHANGE, "").await;
    let device = raw_device("raw-forwarded", 60_000).await;
    let intruder = raw_device("raw-canceller", 60_000).await;
    online(&owner, &device.id).await;
    online(&other, &device.id).await;
    let mut inbox = device.consume_inbox().await;
    let next_message = async |inbox: &mut lapin::Consumer| {
        let delivery = within(
            Duration::from_secs(5),
            "a message in the inbox",
            inbox.next(),
        )
        .await
        .unwrap()
        .unwrap();
        let sender = delivery
            .properties
            .user_id()
            .as_ref()
            .map(|u| u.to_string());
        (
            protocol::decode::<ServerMessage>(&delivery.data).unwrap(),
            sender,
        )
    };
    let sent = owner
        .send(&device.id, command("echo", json!({}), Some(60_000)))
        .await
        .unwrap();
    assert!(matches!(
        next_message(&mut inbox).await.0,
        ServerMessage::Command(_)
    ));
    eventually("the command mirrored", Duration::from_secs(5), || {
        other.command(&sent.id)
    })
    .await;

    // A device puts a cancel into the owner's queue, as a replica would: dropped.
    let owners_queue = within(
        Duration::from_secs(10),
        "the owner says where it is",
        async {
            loop {
                if let Some(delivery) = events.next(Duration::from_secs(10)).await
                    && delivery.properties.app_id().as_ref().map(|a| a.as_str())
                        == Some(owner.replica_id())
                    && let Some(queue) = delivery.properties.reply_to()
                {
                    return queue.to_string();
                }
            }
        },
    )
    .await;
    let forged =
        serde_json::to_vec(&json!({"v": protocol::PROTOCOL_VERSION, "command_id": sent.id}))
            .unwrap();
    let impostors = owner.stats().impostors;
    intruder
        .publish(
            "",
            &owners_queue,
            &forged,
            BasicProperties::default()
                .with_type("cancel".into())
                .with_app_id("forger".into())
                .with_reply_to(intruder.inbox.as_str().into())
                .with_correlation_id("forged".into()),
        )
        .await;
    eventually("the forged cancel counted", Duration::from_secs(5), || {
        Some(owner.stats()).filter(|s| s.impostors > impostors)
    })
    .await;
    assert!(
        !owner.command(&sent.id).unwrap().status.is_terminal(),
        "a device cancelled a command"
    );

    // The other replica cancels it: through its owner, which tells the device.
    let cancelled = within(
        Duration::from_secs(10),
        "the forwarded cancel",
        other.cancel(&sent.id),
    )
    .await
    .expect("cancelled by its owner");
    assert_eq!(
        (cancelled.status, cancelled.error.as_deref()),
        (CommandStatus::Cancelled, Some("cancelled by a user"))
    );
    assert_eq!(owner.command(&sent.id), Some(cancelled.clone()));
    assert_eq!(
        other.command(&sent.id),
        Some(cancelled.clone()),
        "the answer is taken at once"
    );
    let (stop, sender) = next_message(&mut inbox).await;
    assert!(
        matches!(&stop, ServerMessage::Cancel(c) if c.command_id == sent.id),
        "{stop:?}"
    );
    assert_eq!(sender, Some(common::amqp_user(&amqp_url())));
    // Again, on either: it has ended.
    for hub in [&other, &owner] {
        let again = hub.cancel(&sent.id).await.unwrap_err();
        assert!(
            matches!(&again, hub::CancelError::AlreadyEnded(c) if c.status == CommandStatus::Cancelled),
            "{again:?}"
        );
    }
    // A command nobody knows is unknown to both.
    let nobody = protocol::CommandId("no-such-command".into());
    assert!(matches!(
        other.cancel(&nobody).await,
        Err(hub::CancelError::UnknownCommand(_))
    ));
}

#[tokio::test]
async fn readings_of_announced_metrics_reach_listeners() {
    let hub = start_hub().await;
    let (id, mut config) = device_config("gw-readings", "gateway").await;
    config.telemetry = Some(Duration::from_millis(100));
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(agent::run(
        config,
        Arc::new(Simulated::new(Kind::Gateway)),
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
    ));
    online(&hub, &id).await;
    let (_snapshot, mut events) = hub.subscribe(0);
    let mut metrics = std::collections::BTreeSet::new();
    within(Duration::from_secs(5), "a reading of every metric", async {
        while metrics.len() < 3 {
            if let Ok(protocol::api::LiveEvent::Telemetry { reading }) = events.recv().await
                && reading.device_id == id
            {
                metrics.insert(reading.metric);
            }
        }
    })
    .await;
    assert_eq!(
        metrics.into_iter().collect::<Vec<_>>(),
        ["cpu", "memory", "signal"]
    );
    let _ = stop.send(true);
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn bad_readings_are_counted_and_dropped_and_a_flood_is_capped() {
    // With storage, through a storage queue of this test's own: the recorder checks
    // readings against what the device announced too.
    let dir = std::env::temp_dir().join(unique("tether-hub-readings"));
    let store = store::Store::open(dir.join("telemetry.db").to_str().unwrap())
        .await
        .unwrap();
    let store_queue = hub::StoreQueue {
        expires: Some(Duration::from_secs(60)),
        ..hub::StoreQueue::named(unique("tether.telemetry.store.test"))
    };
    let config = HubConfig {
        store_queue: Some(store_queue.clone()),
        ..HubConfig::new(amqp_url())
    };
    let hub = testkit::start_hub(config).await;
    // The recorders, as the server starts them: they ask the hub what devices announced.
    let recorded = Arc::new(hub::RecorderStats::default());
    let recorder = hub::Recorder::new(
        hub::RecorderConfig {
            queue: store_queue,
            ..hub::RecorderConfig::new(amqp_url())
        },
        store.clone(),
        Some(Arc::new(hub.clone())),
        recorded.clone(),
    );
    let recording = testkit::Shutdown::new();
    let stopping = recording.clone();
    recording.spawn(recorder.run(async move {
        stopping.stopping().await;
        hub::Stop::Drain
    }));
    let device = raw_device("raw-readings", 60_000).await;
    online(&hub, &device.id).await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // Within one second of the device's clock, a millisecond apart (two readings of a
    // metric at the same millisecond are one reading).
    let second = (now_ms / 1000 - 1) * 1000;
    let at = |metric: &str, value: f64, ms: u64| {
        protocol::encode(&DeviceMessage::Telemetry(protocol::TelemetrySample {
            device_id: device.id.clone(),
            session_id: device.session_id.clone(),
            metric: metric.into(),
            value,
            ts_ms: second + ms,
        }))
    };
    let reading = |metric: &str, value: f64| at(metric, value, 999);
    let key = |metric: &str| names::telemetry_key(&device.id, metric);
    let send = async |metric: &str, body: Vec<u8>| {
        device
            .publish(
                names::TELEMETRY_EXCHANGE,
                &key(metric),
                &body,
                BasicProperties::default(),
            )
            .await;
    };
    send("humidity", reading("humidity", 40.0)).await;
    send("temp", reading("temp", 99.0)).await;
    let text = format!(
        r#"{{"v":1,"type":"telemetry","device_id":"{}","session_id":"{}","metric":"temp","value":"warm","ts_ms":{now_ms}}}"#,
        device.id, device.session_id
    );
    send("temp", text.into_bytes()).await;
    // Stamped ten minutes ahead of the server's clock (PROTOCOL.md allows five): neither
    // stored nor the device's latest reading.
    let ahead = protocol::encode(&DeviceMessage::Telemetry(protocol::TelemetrySample {
        device_id: device.id.clone(),
        session_id: device.session_id.clone(),
        metric: "temp".into(),
        value: 55.0,
        ts_ms: now_ms + 600_000,
    }));
    send("temp", ahead).await;
    for ms in 0..121 {
        send("temp", at("temp", 21.0, ms)).await;
    }
    let stats = eventually("all readings counted", Duration::from_secs(5), || {
        Some(hub.stats())
            .filter(|s| s.readings_accepted + s.readings_flood >= 121 && s.readings_flood >= 1)
    })
    .await;
    assert_eq!(
        (
            stats.readings_unknown_metric,
            stats.readings_out_of_range,
            stats.readings_wrong_type,
            stats.readings_bad_timestamp
        ),
        (1, 1, 1, 1),
        "{stats:?}"
    );
    let latest = hub.device(&device.id).unwrap().latest["temp"];
    assert!(
        latest.value == 21.0 && latest.ts_ms < now_ms,
        "the reading from the future is not the latest: {latest:?}"
    );
    // At least: other tests' devices on the same broker may add accepted readings.
    assert!(
        stats.readings_accepted + stats.readings_flood >= 121,
        "{stats:?}"
    );
    assert!(
        stats.readings_accepted >= 50 && stats.readings_flood >= 1,
        "the flood was capped: {stats:?}"
    );
    // The hub still works for commands.
    assert!(hub.device(&device.id).unwrap().online);
    // Storage refused the same readings, and kept the 50 good ones of that second
    // (the flood gate counts by the second they were measured in).
    let stored = async || store.count(Some(device.id.as_str())).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stored().await < 50 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stored {}",
            stored().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stored().await, 50);
    let recorded = recorded.snapshot();
    use hub::Rejected;
    for (why, at_least) in [
        (Rejected::UnknownMetric, 1),
        (Rejected::OutOfRange, 1),
        (Rejected::WrongType, 1),
        (Rejected::BadTimestamp, 1),
        (Rejected::Flood, 71),
    ] {
        assert!(recorded.rejected(why) >= at_least, "{why:?}: {recorded:?}");
    }
    assert!(
        recording.stop_and_wait(Duration::from_secs(5)).await,
        "the recorder stops"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// How many readings of `device` reach `hub`'s listeners within `window`.
async fn readings_within(hub: &Hub, device: &DeviceId, window: Duration) -> usize {
    let (_snapshot, mut events) = hub.subscribe(0);
    let mut count = 0;
    let _ = tokio::time::timeout(window, async {
        loop {
            if let Ok(protocol::api::LiveEvent::Telemetry { reading }) = events.recv().await
                && &reading.device_id == device
            {
                count += 1;
            }
        }
    })
    .await;
    count
}

#[tokio::test]
async fn watched_devices_report_faster_until_the_last_viewer_of_every_replica_leaves() {
    let config = HubConfig {
        watch_interval: Duration::from_millis(100),
        watch_lease: Duration::from_millis(1_500),
        ..HubConfig::new(amqp_url())
    };
    let first = testkit::start_hub(config.clone()).await;
    let second = testkit::start_hub(config).await;
    let (id, mut agent_config) = device_config("gw-watched", "gateway").await;
    agent_config.telemetry = Some(Duration::from_secs(3));
    agent_config.telemetry_fastest = Duration::from_millis(100);
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(agent::run(
        agent_config,
        Arc::new(Simulated::new(Kind::Gateway)),
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
    ));
    online(&first, &id).await;
    online(&second, &id).await;
    let reporting = first.device(&id).unwrap().capabilities.reporting;
    assert_eq!(
        reporting,
        Some(protocol::Reporting {
            interval_ms: 3_000,
            fastest_ms: 100
        })
    );
    // Three metrics per reading round: count rounds.
    let rounds =
        async |hub: &Hub, ms: u64| readings_within(hub, &id, Duration::from_millis(ms)).await / 3;
    let idle = rounds(&first, 1_500).await;
    assert!(idle <= 1, "{idle} rounds in 1.5 s before anyone watched");

    let (a, b) = (first.watch(&id), first.watch(&id));
    assert_eq!(first.watched_devices(), 1);
    let fast = rounds(&first, 1_000).await;
    assert!(fast >= 5, "only {fast} rounds in 1 s while watched");
    drop(a);
    let fast = rounds(&first, 1_000).await;
    assert!(
        fast >= 5,
        "one viewer left of two, yet {fast} rounds in 1 s"
    );
    // Another replica's viewer keeps it fast after this replica's last one leaves; the
    // lease (1.5 s) is renewed, so this outlasts it.
    let c = second.watch(&id);
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(b);
    assert_eq!(first.watched_devices(), 0);
    let fast = rounds(&first, 2_000).await;
    assert!(
        fast >= 10,
        "another replica still watches, yet {fast} rounds in 2 s"
    );
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let slow = rounds(&first, 1_500).await;
    assert!(slow <= 1, "{slow} rounds in 1.5 s after every viewer left");
    let _ = stop.send(true);
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_hub_that_starts_later_learns_of_devices_already_online() {
    let first = start_hub().await;
    let switch = start_agent("switch-early", Kind::Switch, Duration::from_secs(30)).await;
    online(&first, &switch.id).await;

    // The device says hello only once per connection and heartbeats every 30 s: the late
    // hub learns of it because it asks every device to announce itself.
    let late = start_hub().await;
    let device = within(
        Duration::from_secs(5),
        "the late hub sees the device",
        async {
            loop {
                if let Some(device) = late.device(&switch.id).filter(|d| d.online) {
                    return device;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        },
    )
    .await;
    assert_eq!(device.kind, "switch");
    let toggled = run(&late, &switch.id, command("toggle", json!({}), None)).await;
    assert_eq!(toggled.status, CommandStatus::Succeeded);
    switch.stop().await;
}

#[tokio::test]
async fn messages_that_speak_for_another_device_than_their_sender_are_dropped() {
    let hub = start_hub().await;
    let device = raw_device("raw-victim", 60_000).await;
    let intruder = raw_device("raw-intruder", 60_000).await;
    online(&hub, &device.id).await;
    let mut inbox = device.consume_inbox().await;
    let sent = hub
        .send(&device.id, command("echo", json!({}), None))
        .await
        .unwrap();
    let (delivery, _) = next_command(&mut inbox).await;
    assert_eq!(
        delivery.properties.user_id().as_ref().map(|u| u.as_str()),
        Some(common::amqp_user(&amqp_url()).as_str()),
        "the hub signs its commands with its account"
    );
    let reply_to = delivery.properties.reply_to().as_ref().unwrap().to_string();
    let answer = |result: &str| {
        protocol::encode(&DeviceMessage::Reply(Reply {
            command_id: sent.id.clone(),
            session_id: device.session_id.clone(),
            outcome: Outcome::Ok {
                result: json!(result),
            },
        }))
    };
    // Another device that learnt the reply queue's name answers for the victim: the
    // default exchange lets it, its user_id gives it away.
    intruder
        .publish("", &reply_to, &answer("forged"), BasicProperties::default())
        .await;
    // The victim's own connection, without a user_id (RabbitMQ lets that through).
    device
        .channel
        .basic_publish(
            "".into(),
            reply_to.as_str().into(),
            Default::default(),
            &answer("unsigned"),
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    // A server account speaking for a device, on the presence exchange.
    let server = server_channel().await;
    let bye = protocol::encode(&DeviceMessage::Bye(protocol::Bye {
        device_id: device.id.clone(),
        session_id: device.session_id.clone(),
        reason: "forged".into(),
    }));
    server
        .basic_publish(
            names::PRESENCE_EXCHANGE.into(),
            format!("presence.{}.bye", device.id).as_str().into(),
            Default::default(),
            &bye,
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    eventually("three impostors counted", Duration::from_secs(5), || {
        Some(hub.stats()).filter(|s| s.impostors >= 3)
    })
    .await;
    let pending = hub.command(&sent.id).unwrap();
    assert!(!pending.status.is_terminal(), "{pending:?}");
    assert!(
        hub.device(&device.id).unwrap().online,
        "the forged bye did nothing"
    );
    device
        .publish("", &reply_to, &answer("real"), BasicProperties::default())
        .await;
    let done = hub.wait(&sent.id, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (done.status, done.result),
        (CommandStatus::Succeeded, Some(json!("real")))
    );
    assert_eq!(hub.stats().impostors, 3);
}

#[tokio::test]
async fn a_revoked_device_is_offline_at_once_and_ignored_until_admitted_again() {
    // Its pending command may have reached it: outcome unknown, at once.
    let hub = start_hub().await;
    let device = raw_device("raw-revoked", 60_000).await;
    online(&hub, &device.id).await;
    let sent = hub
        .send(&device.id, command("echo", json!({}), Some(30_000)))
        .await
        .unwrap();
    hub.revoke(&device.id);
    assert!(!hub.device(&device.id).unwrap().online, "offline at once");
    let ended = hub.wait(&sent.id, Duration::from_secs(5)).await.unwrap();
    assert_eq!(ended.status, CommandStatus::OutcomeUnknown, "{ended:?}");
    assert!(
        ended
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("revoked"),
        "{ended:?}"
    );
    // On a broker that keeps its connection (RabbitMQ), it may still talk: a heartbeat
    // and a fresh hello change nothing.
    let beat = protocol::encode(&DeviceMessage::Heartbeat(protocol::Heartbeat {
        device_id: device.id.clone(),
        session_id: device.session_id.clone(),
    }));
    device.publish_presence("heartbeat", &beat).await;
    let hello = protocol::encode(&DeviceMessage::Hello(protocol::Hello {
        device_id: device.id.clone(),
        session_id: unique("session"),
        inbox: device.inbox.clone(),
        kind: "raw".into(),
        firmware: "0".into(),
        heartbeat_ms: 60_000,
        capabilities: Default::default(),
    }));
    device.publish_presence("hello", &hello).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!hub.device(&device.id).unwrap().online, "still offline");
    assert!(
        hub.send(&device.id, command("echo", json!({}), None))
            .await
            .is_err(),
        "nothing can be sent to it"
    );
    // Provisioned again: it is heard again.
    hub.admit(&device.id);
    device.publish_presence("hello", &hello).await;
    online(&hub, &device.id).await;
}
