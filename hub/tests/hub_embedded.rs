//! The same hub behaviour against the embedded broker, started once for this test binary
//! on a free port, in a runtime of its own so that it outlives each test's runtime.

#[path = "support/hub_cases.rs"]
mod cases;

fn amqp_url() -> String {
    testkit::embedded_broker_url()
}

/// The hub loses its broker (here, a broker of the test's own that stops) while a device
/// holds a command: the device may have carried it out, and its answer cannot arrive, so
/// the command ends with its outcome unknown, never as failed.
#[tokio::test]
async fn a_command_in_a_devices_hands_when_the_broker_goes_ends_with_its_outcome_unknown() {
    use std::time::Duration;

    use protocol::CommandStatus;
    use serde_json::json;

    let broker = broker::Broker::bind(broker::Config {
        authenticator: Some(std::sync::Arc::new(testkit::EmbeddedDevices)),
        ..broker::Config::on_free_port()
    })
    .await
    .expect("the broker binds");
    let url = broker.url().expect("a URL");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(broker.serve(async {
        let _ = stopped.await;
    }));
    let hub = testkit::start_hub(hub::HubConfig::new(url.clone())).await;
    // Provisioned as for the shared embedded broker (the same authenticator), logging
    // in to this one.
    let (id, device_url) = testkit::provision(&testkit::embedded_broker_url(), "gw-lost").await;
    let gateway = testkit::Agent::start_as(
        &testkit::at_address_of(&device_url, &url),
        id,
        &common::amqp_user(&url),
        agent::simulate::Kind::Gateway,
        |_| {},
    );
    testkit::online(&hub, &gateway.id).await;
    let slow = hub
        .send(
            &gateway.id,
            testkit::command("echo", json!({"delay_ms": 20_000}), Some(30_000)),
        )
        .await
        .unwrap();
    testkit::eventually("delivered", Duration::from_secs(5), || {
        hub.command(&slow.id)
            .filter(|c| c.status == CommandStatus::Delivered)
    })
    .await;

    stop.send(()).unwrap();
    let ended = testkit::within(
        Duration::from_secs(10),
        "the command ends",
        hub.wait(&slow.id, Duration::from_secs(30)),
    )
    .await
    .unwrap();
    assert_eq!(ended.status, CommandStatus::OutcomeUnknown, "{ended:?}");
    let why = ended.error.unwrap_or_default();
    assert!(why.contains("unknown"), "{why}");
    let _ = serving.await;
    gateway.stop().await;
}
