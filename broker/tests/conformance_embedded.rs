//! The broker conformance cases against the embedded broker, one broker per test, plus
//! what only the embedded broker does or can be made to do: refusing what it does not
//! implement, its limits set low (connections, memory, handshakes) to test them, and
//! its authenticator (`support/devices.rs`).

use std::{net::SocketAddr, time::Duration};

use amq_protocol::frame::AMQPFrame;
use broker::{Broker, BrokerHandle, Config};
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

/// A transaction that is never committed cannot hold the broker's memory: past 10,000
/// messages its channel is closed (RabbitMQ has no such bound).
#[tokio::test]
async fn a_transaction_holds_a_bounded_number_of_messages() {
    let url = broker_url().await;
    let connection = connect(&url).await;
    let channel = connection.create_channel().await.unwrap();
    channel.tx_select().await.unwrap();
    for _ in 0..=10_000 {
        // Publishing on a channel the broker closed fails, but only once the close is in.
        let _ = publish_to_nowhere(&channel, b"x").await;
    }
    if let Some(error) = commit_refused(&channel).await {
        assert!(error.contains("at most 10000 messages"), "{error}");
    }
    // The connection goes on.
    let other = connection.create_channel().await.unwrap();
    other.tx_select().await.unwrap();
    other.tx_commit().await.unwrap();
}

/// What a transaction holds counts against the memory limit: transactions left open
/// on many channels cannot hold more than the broker allows.
#[tokio::test]
async fn what_a_transaction_holds_counts_toward_the_memory_limit() {
    let (_, url) = start(Config {
        max_bytes: 64 * 1024,
        ..Config::on_free_port()
    })
    .await;
    let connection = connect(&url).await;
    let channel = connection.create_channel().await.unwrap();
    channel.tx_select().await.unwrap();
    let body = vec![0_u8; 16 * 1024];
    for _ in 0..5 {
        let _ = publish_to_nowhere(&channel, &body).await;
    }
    if let Some(error) = commit_refused(&channel).await {
        assert!(error.contains("memory limit"), "{error}");
    }
    // Closing the channel gave the room back: another transaction fits again.
    let other = connection.create_channel().await.unwrap();
    other.tx_select().await.unwrap();
    for _ in 0..3 {
        publish_to_nowhere(&other, &body).await.unwrap();
    }
    other.tx_commit().await.unwrap();
}

/// Publishes `body` to a queue that does not exist, through the default exchange.
async fn publish_to_nowhere(
    channel: &lapin::Channel,
    body: &[u8],
) -> lapin::Result<lapin::PublisherConfirm> {
    channel
        .basic_publish(
            "".into(),
            "nowhere".into(),
            lapin::options::BasicPublishOptions::default(),
            body,
            lapin::BasicProperties::default(),
        )
        .await
}

/// The broker's reason for refusing a transaction (its commit must fail within 5 s).
/// The broker refuses by closing the channel, giving its reason. A commit sent before
/// that close comes in gets the reason. But on a loaded machine the close can come in
/// while the publishes are still going out, and lapin then refuses the commit itself,
/// saying only that the channel is closing or closed. So the reason is `None`: the
/// refusal happened (only the broker closes this channel), but its text is not seen.
async fn commit_refused(channel: &lapin::Channel) -> Option<String> {
    let error = tokio::time::timeout(Duration::from_secs(5), channel.tx_commit())
        .await
        .expect("an answer, not a hang")
        .unwrap_err()
        .to_string();
    if error.starts_with("invalid channel state") {
        assert!(
            error.contains("Closing") || error.contains("Closed"),
            "{error}"
        );
        return None;
    }
    Some(error)
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

/// Starts a broker with `config`: its address and handle.
async fn start_with_handle(config: Config) -> (SocketAddr, BrokerHandle) {
    let broker = Broker::bind(config).await.expect("the broker binds");
    let addr = broker.local_addr().expect("an address");
    let handle = broker.handle();
    tokio::spawn(broker.serve(std::future::pending()));
    (addr, handle)
}

/// The broker's next method frames, described, until `count` of them came; content
/// frames are skipped.
async fn methods(client: &mut RawClient, count: usize) -> Vec<String> {
    let mut seen = Vec::new();
    while seen.len() < count {
        match client.next_within(Duration::from_secs(5)).await {
            Some(AMQPFrame::Header(..) | AMQPFrame::Body(..)) => {}
            Some(frame) => seen.push(raw::describe(&frame)),
            None => seen.push("closed".to_owned()),
        }
    }
    seen.sort();
    seen
}

/// Publishes 600 bytes to `queue` on channel 1.
async fn publish_600(client: &mut RawClient, queue: &str) {
    let frames = raw::message(1, "", queue, &[7; 600], lapin::BasicProperties::default());
    for frame in &frames {
        client.send(frame).await;
    }
}

/// A message delivered and not yet acknowledged still takes its bytes of the memory
/// limit (RabbitMQ counts it too, as memory its queue holds): a publish that would pass
/// the limit is refused (nacked) until the delivery is acknowledged.
#[tokio::test]
async fn unacknowledged_messages_count_toward_the_memory_limit() {
    let config = Config {
        max_bytes: 1_000,
        ..Config::on_free_port()
    };
    let (addr, handle) = start_with_handle(config).await;
    let mut client = RawClient::logged_in(addr, 0).await;
    let setup = [raw::channel_open(1), raw::confirm_select(1)];
    for frame in &setup {
        client.send(frame).await;
    }
    assert_eq!(
        methods(&mut client, 2).await,
        ["channel.open-ok on 1", "confirm.select-ok on 1"]
    );
    // Not auto-deleted: it is still there when its consumer's channel closes.
    let queue = format!("unacked-{:08x}", fastrand::u32(..));
    client.send(&raw::queue_declare(1, &queue, false)).await;
    assert_eq!(methods(&mut client, 1).await, ["queue.declare-ok on 1"]);
    client.send(&raw::basic_consume_acked(1, &queue, "c")).await;
    assert_eq!(methods(&mut client, 1).await, ["basic.consume-ok on 1"]);
    let delivered = format!("basic.deliver on 1  {queue}");

    publish_600(&mut client, &queue).await;
    assert_eq!(
        methods(&mut client, 2).await,
        ["basic.ack on 1", delivered.as_str()]
    );
    assert_eq!(handle.usage().held_bytes, 600, "delivered, unacknowledged");
    publish_600(&mut client, &queue).await;
    assert_eq!(
        methods(&mut client, 1).await,
        ["basic.nack on 1"],
        "600 more would pass 1,000 while the first is unacknowledged"
    );
    client.send(&raw::basic_ack(1, 1, false)).await;
    publish_600(&mut client, &queue).await;
    assert_eq!(
        methods(&mut client, 2).await,
        ["basic.ack on 1", delivered.as_str()],
        "the ack gave its bytes back"
    );
    // A channel closed with a delivery unacknowledged gives it back to its queue, where
    // it is counted once.
    client.send(&raw::channel_close(1)).await;
    assert_eq!(methods(&mut client, 1).await, ["channel.close-ok on 1"]);
    assert_eq!(handle.usage().held_bytes, 600);
}

/// A consumer without a prefetch limit whose peer never reads its socket: its
/// connection's outbox fills (`outgoing_buffer`), it is passed over (messages stay in
/// the queue, within `max_bytes`, and publishes beyond are nacked), and once its writer
/// has been stuck for `stalled_writer_timeout` the connection is dropped. Meanwhile
/// 200 MiB are published at it, and this process, the broker's, does not grow with them.
#[tokio::test]
async fn a_consumer_that_never_reads_is_passed_over_then_dropped() {
    const MIB: usize = 1024 * 1024;
    let config = Config {
        max_bytes: 32 * MIB,
        stalled_writer_timeout: Duration::from_secs(2),
        ..Config::on_free_port()
    };
    let (max_bytes, budget) = (config.max_bytes, config.outgoing_buffer);
    let (addr, handle) = start_with_handle(config).await;
    let queue = format!("never-read-{:08x}", fastrand::u32(..));
    let mut sink = RawClient::logged_in(addr, 0).await;
    sink.send(&raw::channel_open(1)).await;
    sink.send(&raw::queue_declare(1, &queue, false)).await;
    sink.send(&raw::basic_consume_acked(1, &queue, "sink"))
        .await;
    assert_eq!(
        methods(&mut sink, 3).await,
        [
            "basic.consume-ok on 1",
            "channel.open-ok on 1",
            "queue.declare-ok on 1"
        ]
    );
    let started = tokio::time::Instant::now();
    // From here on the sink reads nothing.

    let before = resident_bytes();
    let url = format!("amqp://guest:guest@{addr}/%2f");
    let publisher = connect(&url).await;
    let channel = publisher.create_channel().await.expect("a channel");
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let body = vec![b'x'; MIB];
    let (mut acked, mut nacked) = (0, 0);
    let mut peak = broker::Usage {
        held_bytes: 0,
        outgoing_bytes: 0,
        connections: 0,
    };
    for _ in 0..25 {
        let mut confirms = Vec::new();
        for _ in 0..8 {
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    lapin::options::BasicPublishOptions::default(),
                    &body,
                    lapin::BasicProperties::default(),
                )
                .await
                .expect("published");
            confirms.push(confirm);
        }
        for confirm in confirms {
            if confirm.await.expect("confirmed").is_ack() {
                acked += 1;
            } else {
                nacked += 1;
            }
        }
        let usage = handle.usage();
        peak.held_bytes = peak.held_bytes.max(usage.held_bytes);
        peak.outgoing_bytes = peak.outgoing_bytes.max(usage.outgoing_bytes);
    }
    let grown = resident_bytes().saturating_sub(before);
    assert!(
        peak.held_bytes <= max_bytes + budget + MIB,
        "held {} bytes, the limit is {max_bytes} (and one outbox on its way)",
        peak.held_bytes
    );
    assert!(
        peak.outgoing_bytes <= budget + MIB + 64 * 1024,
        "{} bytes waited to be written",
        peak.outgoing_bytes
    );
    assert!(acked >= 28 && nacked > 0, "acked {acked}, nacked {nacked}");
    assert!(
        grown < 128 * MIB as u64,
        "the process grew by {grown} bytes while 200 MiB were published at a peer that \
         does not read"
    );

    // The sink's connection is dropped once its writer has been stuck 2 s: the publisher
    // is the only one left…
    let deadline = started + Duration::from_secs(15);
    while handle.usage().connections > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled connection is still open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "not before the timeout"
    );
    // …and the sink, reading at last, finds what had reached its socket, then the end.
    tokio::time::timeout(Duration::from_secs(10), async {
        while sink.next_frame().await.is_some() {}
    })
    .await
    .expect("the broker hung up on the sink");
    // What it had been delivered went back to the queue, within the limit.
    assert!(handle.usage().held_bytes <= max_bytes);
    drop(publisher);
}
