//! Limits on what one account may hold, where RabbitMQ 3.10 has the same limit and it
//! can be set the same way: a user's `max-connections` (RabbitMQ: `rabbitmqctl
//! set_user_limits`; the embedded broker: `AccountLimits::connections`, for devices), and
//! the `channel_max` a client settles on at tune. Included by `conformance_embedded.rs`
//! and `conformance_rabbitmq.rs`, which each provide `crate::limited_device(n)` (a device
//! that may hold `n` connections) and `crate::door()`; byte for byte on both brokers.
//!
//! What RabbitMQ 3.10 answers, and so what these cases expect:
//! - A connection beyond the user's limit: connection.close 530 NOT_ALLOWED `connection
//!   refused for user '…': user connection limit (n) is reached`, blaming
//!   connection.open; once one of its connections has closed, the user gets in again.
//! - A channel beyond the negotiated `channel_max`: connection.close 530 NOT_ALLOWED
//!   `number of channels opened (n) has reached the negotiated channel_max (n)`,
//!   blaming no method; channel ids themselves are not checked against it.

use std::{net::SocketAddr, time::Duration};

use tokio::time::Instant;

use crate::doors::raw::{self, RawClient, describe};

const WITHIN: Duration = Duration::from_secs(10);

/// Logs in as `user` and asks for connection.open: everything the broker says until it
/// either opens the connection or closes it.
pub async fn try_open(addr: SocketAddr, user: &str, password: &str) -> (RawClient, Vec<String>) {
    let mut client = RawClient::connect(addr).await;
    client.send_bytes(raw::PROTOCOL_HEADER).await;
    for frame in [
        raw::start_ok_as(user, password),
        raw::tune_ok(0),
        raw::connection_open("/"),
    ] {
        client.send(&frame).await;
    }
    let mut answers = Vec::new();
    while let Some(frame) = client.next_within(WITHIN).await {
        let answer = describe(&frame);
        let last = answer == "connection.open-ok" || answer.starts_with("connection.close");
        answers.push(answer);
        if last {
            break;
        }
    }
    (client, answers)
}

#[tokio::test]
async fn a_device_beyond_its_connection_limit_is_refused_at_open() {
    let device = crate::limited_device(2).await;
    let (user, password) = (device.user.as_str(), device.password.as_str());
    let opened = ["connection.start", "connection.tune", "connection.open-ok"];
    let (first, answers) = try_open(device.addr, user, password).await;
    assert_eq!(answers, opened);
    let (_second, answers) = try_open(device.addr, user, password).await;
    assert_eq!(answers, opened);

    let (mut third, answers) = try_open(device.addr, user, password).await;
    let refused = format!(
        "connection.close 530 NOT_ALLOWED - connection refused for user '{user}': user \
         connection limit (2) is reached (10, 40)"
    );
    assert_eq!(
        answers,
        ["connection.start", "connection.tune", refused.as_str()]
    );
    third.send(&raw::connection_close_ok()).await;
    assert_eq!(
        third.answers_until_closed(WITHIN).await,
        Vec::<String>::new(),
        "the refused connection is closed"
    );

    // Once one of its connections is gone, the device gets in again (RabbitMQ counts
    // connections a moment after they close, so this may take a few tries).
    drop(first);
    let deadline = Instant::now() + WITHIN;
    loop {
        let (_again, answers) = try_open(device.addr, user, password).await;
        if answers == opened {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {answers:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_channel_beyond_the_negotiated_channel_max_closes_the_connection() {
    let door = crate::door().await;
    let mut client = RawClient::connect(door.addr).await;
    client.send_bytes(raw::PROTOCOL_HEADER).await;
    for frame in [
        raw::start_ok("guest"),
        raw::tune_ok_with(2, 0),
        raw::connection_open("/"),
    ] {
        client.send(&frame).await;
    }
    for expected in ["connection.start", "connection.tune", "connection.open-ok"] {
        let frame = client.next_within(WITHIN).await;
        assert_eq!(frame.as_ref().map(describe).as_deref(), Some(expected));
    }
    // Ids are not counted, channels are: channel 5 is one of two.
    for id in [5, 1] {
        client.send(&raw::channel_open(id)).await;
        let opened = client.next_within(WITHIN).await;
        assert_eq!(
            opened.as_ref().map(describe),
            Some(format!("channel.open-ok on {id}"))
        );
    }
    client.send(&raw::channel_open(2)).await;
    assert_eq!(
        client.answers_until_closed(WITHIN).await,
        [
            "connection.close 530 NOT_ALLOWED - number of channels opened (2) has reached \
             the negotiated channel_max (2) (0, 0)"
        ]
    );
}
