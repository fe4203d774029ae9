//! The broker's doors: what a peer that does not follow the protocol gets, before and
//! after it has logged in. Included by `conformance_embedded.rs` and
//! `conformance_rabbitmq.rs`, which each provide a `crate::door()`: the same cases must
//! pass on both brokers, byte for byte where a broker answers at all. The peers are raw
//! clients (`raw.rs`), since lapin always follows the protocol.
//!
//! What RabbitMQ 3.10 does, and so what these cases expect:
//! - Before a successful login and tune (states `starting`, `tuning`), anything out of
//!   order gets no answer at all: RabbitMQ waits 3 s (so a client cannot retry logins
//!   quickly) and drops the socket. A failed login is told so (403) first.
//! - After tune-ok, before connection.open (`opening`): a frame on a channel is refused
//!   with 505 UNEXPECTED_FRAME, a wrong vhost with 530, any other connection method with
//!   504, each by connection.close.
//! - A handshake that is not over within `handshake_timeout` (10 s) is dropped without
//!   a word, whatever stage it stalled in; heartbeats do not extend it.
//! - A peer silent for two heartbeat intervals is dropped without a word.
//! - A message whose header announces more than `max_message_size` (128 MiB) is refused
//!   with channel.close 406. RabbitMQ 3.10 says so once the whole body has arrived; the
//!   embedded broker as soon as the header does, and drops the body that follows.

use std::{net::SocketAddr, time::Duration};

use amq_protocol::frame::AMQPFrame;
use futures_util::future::join_all;
use tokio::time::Instant;

#[path = "raw.rs"]
pub mod raw;

use raw::{
    FRAME_MAX, PROTOCOL_HEADER, RawClient, channel_close_ok, channel_open, connection_open,
    content_header, describe, encode, publish, start_ok, tune_ok,
};

/// The broker the cases knock on, and the limits it keeps.
#[derive(Debug, Clone, Copy)]
pub struct Door {
    pub addr: SocketAddr,
    /// How long a handshake may take (RabbitMQ's `handshake_timeout`).
    pub handshake_timeout: Duration,
    /// The largest message body accepted (RabbitMQ's `max_message_size`).
    pub max_message_size: u64,
}

const START: &str = "connection.start";
const TUNE: &str = "connection.tune";
const OPEN_OK: &str = "connection.open-ok";
/// A hang guard: every refusal here ends within about 3 s.
const ENDS_WITHIN: Duration = Duration::from_secs(10);

#[tokio::test]
async fn nobody_gets_in_without_logging_in() {
    let door = crate::door().await;
    let refused_login = "connection.close 403 ACCESS_REFUSED - Login was refused using \
        authentication mechanism PLAIN. For details see the broker logfile. (0, 0)";
    let attempts = [
        (
            "connection.open without start-ok",
            vec![connection_open("/")],
            vec![START],
        ),
        (
            "channel.open without start-ok",
            vec![channel_open(1)],
            vec![START],
        ),
        (
            "connection.open after a failed login",
            vec![start_ok("wrong"), connection_open("/")],
            vec![START, refused_login],
        ),
        (
            "connection.open without tune-ok",
            vec![start_ok("guest"), connection_open("/")],
            vec![START, TUNE],
        ),
        (
            "channel.open before connection.open",
            vec![start_ok("guest"), tune_ok(0), channel_open(1)],
            vec![
                START,
                TUNE,
                "connection.close 505 UNEXPECTED_FRAME - type 1, all octets = <<0,20,0,10,0>> (0, 0)",
            ],
        ),
        (
            "a vhost that does not exist",
            vec![start_ok("guest"), tune_ok(0), connection_open("nope")],
            vec![
                START,
                TUNE,
                "connection.close 530 NOT_ALLOWED - vhost nope not found (10, 40)",
            ],
        ),
        (
            "connection.open twice",
            vec![
                start_ok("guest"),
                tune_ok(0),
                connection_open("/"),
                connection_open("/"),
            ],
            vec![
                START,
                TUNE,
                OPEN_OK,
                "connection.close 504 CHANNEL_ERROR - unexpected method in connection state running (10, 40)",
            ],
        ),
    ];
    let tries = attempts.map(|(attempt, frames, expected)| async move {
        let mut client = RawClient::connect(door.addr).await;
        client.send_bytes(PROTOCOL_HEADER).await;
        for frame in &frames {
            client.send(frame).await;
        }
        let answers = client.answers_until_closed(ENDS_WITHIN).await;
        (attempt, answers, expected)
    });
    for (attempt, answers, expected) in join_all(tries).await {
        assert_eq!(answers, expected, "{attempt}");
    }
}

#[tokio::test]
async fn a_handshake_that_stalls_is_dropped_at_the_deadline() {
    let door = crate::door().await;
    let header = PROTOCOL_HEADER.to_vec();
    let stalls = [
        ("nothing at all", vec![], vec![]),
        ("half a protocol header", vec![b"AMQP".to_vec()], vec![]),
        ("the protocol header", vec![header.clone()], vec![START]),
        (
            "start-ok",
            vec![header.clone(), encode(&start_ok("guest"))],
            vec![START, TUNE],
        ),
        (
            "tune-ok",
            vec![
                header.clone(),
                encode(&start_ok("guest")),
                encode(&tune_ok(0)),
            ],
            vec![START, TUNE],
        ),
    ];
    let within = door.handshake_timeout + Duration::from_secs(5);
    let stalled = stalls.map(|(sent, bytes, expected)| async move {
        let mut client = RawClient::connect(door.addr).await;
        for piece in &bytes {
            client.send_bytes(piece).await;
        }
        (sent, client.answers_until_closed(within).await, expected)
    });
    let kept_alive = async {
        let mut client = RawClient::connect(door.addr).await;
        client.send_bytes(&header).await;
        heartbeats_until_closed(&mut client, within).await;
    };
    let (stalled, ()) = tokio::join!(join_all(stalled), kept_alive);
    for (sent, answers, expected) in stalled {
        assert_eq!(answers, expected, "after {sent}, hung up without a word");
    }
}

/// Sends a heartbeat every 200 ms until the broker hangs up, within `within`.
async fn heartbeats_until_closed(client: &mut RawClient, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        assert!(
            Instant::now() < deadline,
            "heartbeats kept a handshake open past {within:?}"
        );
        match tokio::time::timeout(Duration::from_millis(200), client.next_frame()).await {
            Ok(None) => return,
            Ok(Some(_)) => {}
            Err(_) => client.send(&AMQPFrame::Heartbeat).await,
        }
    }
}

#[tokio::test]
async fn a_peer_silent_for_two_heartbeats_is_closed() {
    let door = crate::door().await;
    // A 1 s heartbeat, then nothing at all from this client.
    let mut client = RawClient::logged_in(door.addr, 1).await;
    let started = Instant::now();
    let answers = client.answers_until_closed(ENDS_WITHIN).await;
    assert_eq!(answers, Vec::<String>::new(), "hung up without a word");
    assert!(
        started.elapsed() >= Duration::from_millis(1_500),
        "closed before two heartbeats were missed: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_message_larger_than_the_maximum_is_refused() {
    let door = crate::door().await;
    let mut client = RawClient::logged_in(door.addr, 0).await;
    client.send(&channel_open(1)).await;
    let opened = client.next_within(ENDS_WITHIN).await;
    assert_eq!(
        opened.as_ref().map(describe).as_deref(),
        Some("channel.open-ok on 1")
    );

    let size = door.max_message_size + 1;
    client.send(&publish(1, "conformance-nowhere")).await;
    client.send(&content_header(1, size)).await;
    send_body(&mut client, 1, size).await;
    let refusal = client.next_within(ENDS_WITHIN).await;
    assert_eq!(
        refusal.as_ref().map(describe),
        Some(format!(
            "channel.close on 1 406 PRECONDITION_FAILED - message size {size} is larger \
             than configured max size {} (60, 40)",
            door.max_message_size
        ))
    );
    // Only the channel is closed: the connection goes on.
    client.send(&channel_close_ok(1)).await;
    client.send(&channel_open(2)).await;
    let reopened = client.next_within(ENDS_WITHIN).await;
    assert_eq!(
        reopened.as_ref().map(describe).as_deref(),
        Some("channel.open-ok on 2")
    );
}

/// Sends a body of `size` bytes on channel `id`, in frames of the largest size allowed,
/// encoding one frame and sending it again and again so the client holds one frame only.
pub async fn send_body(client: &mut RawClient, id: u16, size: u64) {
    let chunk = u64::from(FRAME_MAX - 8);
    let full = encode(&AMQPFrame::Body(id, vec![b'x'; chunk as usize]));
    let mut left = size;
    while left >= chunk {
        client.send_bytes(&full).await;
        left -= chunk;
    }
    if left > 0 {
        client
            .send(&AMQPFrame::Body(id, vec![b'x'; left as usize]))
            .await;
    }
}
