//! The broker conformance cases against the embedded broker, one broker per test, plus
//! what only the embedded broker does (refusing what it does not implement).

use std::time::Duration;

use broker::{Broker, Config};
use lapin::{Connection, ConnectionProperties};

#[path = "support/conformance.rs"]
mod cases;

async fn broker_url() -> String {
    let broker = Broker::bind(Config {
        addr: "127.0.0.1:0".parse().expect("an address"),
        ..Config::default()
    })
    .await
    .expect("the embedded broker binds");
    let url = broker.url().expect("its URL");
    tokio::spawn(broker.serve(std::future::pending()));
    url
}

async fn connect(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect to the embedded broker")
}

#[tokio::test]
async fn what_is_not_implemented_is_refused_cleanly() {
    let url = broker_url().await;
    let connection = connect(&url).await;
    let channel = connection.create_channel().await.unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(5), channel.tx_select())
        .await
        .expect("an answer, not a hang");
    let error = refused.unwrap_err();
    assert!(error.to_string().contains("NOT_IMPLEMENTED"), "{error}");
}

#[tokio::test]
async fn connections_beyond_the_limit_are_turned_away() {
    let config = Config {
        addr: "127.0.0.1:0".parse().expect("an address"),
        max_connections: 2,
        ..Config::default()
    };
    let broker = Broker::bind(config).await.expect("binds");
    let url = broker.url().expect("its URL");
    tokio::spawn(broker.serve(std::future::pending()));
    let first = connect(&url).await;
    let second = connect(&url).await;
    let third = tokio::time::timeout(
        Duration::from_secs(5),
        Connection::connect(&url, ConnectionProperties::default()),
    )
    .await
    .expect("an answer, not a hang");
    assert!(third.is_err(), "a third connection must be refused");
    drop((first, second));
}

#[tokio::test]
async fn publishes_beyond_the_memory_limit_are_refused() {
    let config = Config {
        addr: "127.0.0.1:0".parse().expect("an address"),
        max_bytes: 1_000,
        ..Config::default()
    };
    let broker = Broker::bind(config).await.expect("binds");
    let url = broker.url().expect("its URL");
    tokio::spawn(broker.serve(std::future::pending()));
    let connection = connect(&url).await;
    let channel = connection.create_channel().await.expect("a channel");
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let options = lapin::options::QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let queue = channel
        .queue_declare("".into(), options, lapin::types::FieldTable::default())
        .await
        .expect("a queue");
    let mut answers = Vec::new();
    for _ in 0..2 {
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.name().clone(),
                lapin::options::BasicPublishOptions::default(),
                &[0u8; 600],
                lapin::BasicProperties::default(),
            )
            .await
            .expect("published")
            .await
            .expect("confirmed");
        answers.push(confirm.is_ack());
    }
    assert_eq!(
        answers,
        [true, false],
        "the second 600 bytes would pass the 1,000-byte limit"
    );
}
