//! A simulated gateway publishes readings of each announced metric to
//! `tether.telemetry`, under `telemetry.<device>.<metric>`, at its interval. Runs against
//! the embedded broker, logged in as the device.

mod support;

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use agent::simulate::{Kind, Simulated};
use protocol::{DeviceMessage, names};
use support::{Devices, TestBroker, next_within, user_id};

#[tokio::test]
async fn a_gateway_reports_each_announced_metric_at_its_interval() {
    let broker = TestBroker::start(Devices::new(&[("gw-telemetry", "secret")])).await;

    // A listener bound before the device starts, as a server replica would be.
    let server = broker.server().await;
    server.declare_topology().await;
    let mut config = broker.agent_config("gw-telemetry", "secret", "gateway");
    let device = config.device_id.clone();
    let mut samples = server
        .listen(names::TELEMETRY_EXCHANGE, &format!("telemetry.{device}.#"))
        .await;

    config.telemetry = Some(Duration::from_millis(100));
    tokio::spawn(agent::run(
        config,
        Arc::new(Simulated::new(Kind::Gateway)),
        std::future::pending(),
    ));

    let mut seen = BTreeSet::new();
    let mut count = 0;
    while count < 9 {
        let delivery = next_within(&mut samples, Duration::from_secs(5))
            .await
            .expect("samples keep coming");
        assert_eq!(
            user_id(&delivery),
            Some(device.as_str()),
            "signed by the device"
        );
        let DeviceMessage::Telemetry(sample) =
            protocol::decode::<DeviceMessage>(&delivery.data).unwrap()
        else {
            panic!("not a sample")
        };
        assert_eq!(sample.device_id, device);
        assert_eq!(
            delivery.routing_key.as_str(),
            format!("telemetry.{device}.{}", sample.metric)
        );
        seen.insert(sample.metric);
        count += 1;
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["cpu", "memory", "signal"]
    );
}
