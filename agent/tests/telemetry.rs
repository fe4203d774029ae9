//! A simulated gateway publishes readings of each announced metric to
//! `tether.telemetry`, under `telemetry.<device>.<metric>`, at its interval. Runs against
//! the embedded broker.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use agent::simulate::{Kind, Simulated};
use futures_util::StreamExt as _;
use lapin::{
    Connection, ConnectionProperties, ExchangeKind,
    options::{BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use protocol::{DeviceId, DeviceMessage, names};

#[tokio::test]
async fn a_gateway_reports_each_announced_metric_at_its_interval() {
    let url = broker::Broker::start(broker::Config::on_free_port())
        .await
        .unwrap();

    // A listener bound before the device starts, as a server replica would be.
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            names::TELEMETRY_EXCHANGE.into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .unwrap();
    let private = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let queue = channel
        .queue_declare("".into(), private, FieldTable::default())
        .await
        .unwrap();
    let device = DeviceId::new("gw-telemetry").unwrap();
    let binding = format!("telemetry.{device}.#");
    channel
        .queue_bind(
            queue.name().clone(),
            names::TELEMETRY_EXCHANGE.into(),
            binding.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut samples = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            no_ack,
            FieldTable::default(),
        )
        .await
        .unwrap();

    let mut config = agent::Config::new(url, device.clone(), "gateway");
    config.telemetry = Some(Duration::from_millis(100));
    tokio::spawn(agent::run(
        config,
        Arc::new(Simulated::new(Kind::Gateway)),
        std::future::pending(),
    ));

    let mut seen = BTreeSet::new();
    let mut count = 0;
    while count < 9 {
        let delivery = tokio::time::timeout(Duration::from_secs(5), samples.next())
            .await
            .expect("samples keep coming")
            .unwrap()
            .unwrap();
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
