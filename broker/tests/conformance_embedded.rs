//! The broker conformance cases against the embedded broker, one broker per test, plus
//! what only the embedded broker does or can be made to do: refusing what it does not
//! implement, its limits set low (connections, memory, handshakes) to test them, and
//! its authenticator (`support/devices.rs`).

use std::{net::SocketAddr, time::Duration};

use broker::{Broker, Config};
use lapin::{Connection, ConnectionProperties};

#[path = "support/conformance.rs"]
mod cases;
#[path = "support/devices.rs"]
mod devices;
#[path = "support/doors.rs"]
mod doors;
#[path = "support/limits.rs"]
mod limits;
#[path = "support/permissions.rs"]
mod permissions;
#[path = "support/topics.rs"]
mod topics;

use devices::{device, limited_device};

use doors::raw::{self, RawClient};

async fn broker_url() -> String {
    Broker::start(Config::on_free_port())
        .await
        .expect("the embedded broker starts")
}

/// A broker of the case's own whose handshakes must be over within 500 ms, so the
/// handshake case does not wait RabbitMQ's 10 s.
async fn door() -> doors::Door {
    let handshake_timeout = Duration::from_millis(500);
    let config = Config {
        handshake_timeout,
        ..Config::on_free_port()
    };
    let max_message_size = config.max_message_size;
    let (addr, _) = start(config).await;
    doors::Door {
        addr,
        handshake_timeout,
        max_message_size,
    }
}

/// Starts a broker with `config`: its address and URL.
async fn start(config: Config) -> (SocketAddr, String) {
    let broker = Broker::bind(config).await.expect("the broker binds");
    let addr = broker.local_addr().expect("an address");
    let url = broker.url().expect("a URL");
    tokio::spawn(broker.serve(std::future::pending()));
    (addr, url)
}

async fn connect(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect to the embedded broker")
}

/// 64 `#` words against a 127-word key, on a queue it reaches and on one it does not
/// (`#` × 63 then `end`, the worst case for a matcher that backtracks). RabbitMQ 3.10 fails
/// this: its trie matcher tries every way the `#` words could split the key (8 `#` against
/// 16 words takes it 3 s a publish). Here a matcher that backtracked would hold the vhost
/// lock and stall every connection, the test's own included, so the case runs on a
/// thread and runtime of its own, under a hang guard.
#[test]
fn a_wall_of_hashes_against_a_long_key_is_routed_at_once() {
    use std::sync::mpsc::{RecvTimeoutError, channel};
    let (done, finished) = channel();
    let case = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(topics::hash_walls_route(64, 127));
        let _ = done.send(());
    });
    match finished.recv_timeout(Duration::from_secs(10)) {
        Ok(()) => {}
        Err(RecvTimeoutError::Timeout) => panic!("the broker stalled on a wall of `#`"),
        Err(RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(case.join().expect_err("the case ended early"))
        }
    }
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
        max_connections: 2,
        ..Config::on_free_port()
    };
    let url = Broker::start(config).await.expect("the broker starts");
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
        max_bytes: 1_000,
        ..Config::on_free_port()
    };
    let url = Broker::start(config).await.expect("the broker starts");
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

/// RabbitMQ 3.10 gives the same answer only once the whole body has arrived (the doors
/// case shows it on both brokers); the embedded broker refuses the header alone, so a
/// peer cannot make it hold 128 MiB per channel of a message it will refuse anyway.
#[tokio::test]
async fn an_oversized_message_is_refused_by_its_header_and_its_body_never_kept() {
    let (addr, _) = start(Config::on_free_port()).await;
    let mut client = RawClient::logged_in(addr, 0).await;
    client.send(&raw::channel_open(1)).await;
    let opened = client.next_within(Duration::from_secs(5)).await;
    assert_eq!(
        opened.as_ref().map(raw::describe).as_deref(),
        Some("channel.open-ok on 1")
    );
    client.send(&raw::publish(1, "anywhere")).await;
    client.send(&raw::content_header(1, u64::MAX)).await;
    // No body at all: the header alone is refused.
    let refusal = client.next_within(Duration::from_secs(5)).await;
    assert_eq!(
        refusal.as_ref().map(raw::describe).as_deref(),
        Some(
            "channel.close on 1 406 PRECONDITION_FAILED - message size 18446744073709551615 \
             is larger than configured max size 134217728 (60, 40)"
        )
    );
    // A body sent anyway is dropped as it comes: this process, the broker's, does not
    // grow with it.
    let before = resident_bytes();
    doors::send_body(&mut client, 1, 256 * 1024 * 1024).await;
    client.send(&raw::channel_close_ok(1)).await;
    client.send(&raw::channel_open(2)).await;
    let reopened = client.next_within(Duration::from_secs(30)).await;
    assert_eq!(
        reopened.as_ref().map(raw::describe).as_deref(),
        Some("channel.open-ok on 2"),
        "the broker read all of the body, then the close-ok"
    );
    let grown = resident_bytes().saturating_sub(before);
    assert!(
        grown < 64 * 1024 * 1024,
        "the process grew by {grown} bytes while a refused body of 256 MiB went by"
    );
}

/// This process's resident memory, in bytes (Linux).
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

/// Handshakes have places of their own, held for `handshake_timeout` at most: with the
/// defaults, 4,096 peers that connect and stop would fill 1,024 handshake places for
/// 10 s, take no device's place, and be gone after. The same with small numbers.
#[tokio::test]
async fn stalled_handshakes_do_not_lock_devices_out() {
    let config = Config {
        max_handshakes: 2,
        max_connections: 4,
        handshake_timeout: Duration::from_millis(500),
        ..Config::on_free_port()
    };
    let (addr, url) = start(config).await;
    let devices = [connect(&url).await, connect(&url).await];
    // Far more peers than there are places send the protocol header and stop there.
    let mut stalled = Vec::new();
    for _ in 0..16 {
        let mut peer = RawClient::connect(addr).await;
        peer.send_bytes(raw::PROTOCOL_HEADER).await;
        stalled.push(peer);
    }
    // They take no open connection's place: the devices in go on working…
    for device in &devices {
        device
            .create_channel()
            .await
            .expect("a device already in works on");
    }
    // …and a new device gets in once the stalled handshakes are dropped (500 ms).
    let newcomer = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match Connection::connect(&url, ConnectionProperties::default()).await {
                Ok(connection) => return connection,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("a new device got in within 10 s");
    newcomer
        .create_channel()
        .await
        .expect("the new device works");
    for mut peer in stalled {
        let answers = peer.answers_until_closed(Duration::from_secs(5)).await;
        assert!(
            answers.len() <= 1,
            "turned away, or started and dropped: {answers:?}"
        );
    }
}

/// Places are checked as a connection comes (turned away if none is left) and again at
/// connection.open: refused then with RabbitMQ's answer beyond its `connection_max`.
#[tokio::test]
async fn a_connection_that_logs_in_after_the_last_place_went_is_refused_at_open() {
    let config = Config {
        max_connections: 1,
        ..Config::on_free_port()
    };
    let (addr, url) = start(config).await;
    let mut late = RawClient::connect(addr).await;
    late.send_bytes(raw::PROTOCOL_HEADER).await;
    late.send(&raw::start_ok("guest")).await;
    late.send(&raw::tune_ok(0)).await;
    for _ in ["connection.start", "connection.tune"] {
        late.next_within(Duration::from_secs(5)).await;
    }
    // Meanwhile a device takes the one place.
    let _device = connect(&url).await;
    late.send(&raw::connection_open("/")).await;
    assert_eq!(
        late.answers_until_closed(Duration::from_secs(5)).await,
        [
            "connection.close 530 NOT_ALLOWED - connection refused: node connection limit (1) \
          is reached (10, 40)"
        ]
    );
}
