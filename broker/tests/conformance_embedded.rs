//! The broker conformance cases against the embedded broker, one broker per test, plus
//! what only the embedded broker does (refusing what it does not implement).

use std::time::Duration;

use broker::{Broker, Config};
use lapin::{Connection, ConnectionProperties};

#[path = "support/conformance.rs"]
mod cases;
#[path = "support/topics.rs"]
mod topics;

async fn broker_url() -> String {
    Broker::start(Config::on_free_port())
        .await
        .expect("the embedded broker starts")
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

/// Writes one frame the way a client would.
async fn write_frame(socket: &mut tokio::net::TcpStream, frame: amq_protocol::frame::AMQPFrame) {
    use tokio::io::AsyncWriteExt as _;
    let bytes = cookie_factory::gen_simple(amq_protocol::frame::gen_frame(&frame), Vec::new())
        .expect("encodes");
    socket.write_all(&bytes).await.expect("writes");
}

#[tokio::test]
async fn a_peer_that_goes_silent_is_closed_after_two_heartbeats() {
    use amq_protocol::{
        frame::AMQPFrame,
        protocol::{AMQPClass, connection},
    };
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let url = broker_url().await;
    let addr = url
        .rsplit('@')
        .next()
        .and_then(|rest| rest.split('/').next())
        .expect("host:port")
        .to_owned();
    let mut socket = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    socket
        .write_all(b"AMQP\x00\x00\x09\x01")
        .await
        .expect("header");
    let start_ok = connection::StartOk {
        client_properties: Default::default(),
        mechanism: "PLAIN".into(),
        response: "\0guest\0guest".into(),
        locale: "en_US".into(),
    };
    write_frame(
        &mut socket,
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(start_ok)),
        ),
    )
    .await;
    // A 1 s heartbeat, then nothing at all from this client.
    let tune_ok = connection::TuneOk {
        channel_max: 16,
        frame_max: 131_072,
        heartbeat: 1,
    };
    write_frame(
        &mut socket,
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(tune_ok)),
        ),
    )
    .await;
    let open = connection::Open {
        virtual_host: "/".into(),
    };
    write_frame(
        &mut socket,
        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Open(open))),
    )
    .await;

    let started = std::time::Instant::now();
    let mut sink = vec![0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match socket.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // start, tune, open-ok, then the broker's own heartbeats
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the broker kept a silent peer open");
    assert!(
        started.elapsed() >= Duration::from_millis(1_500),
        "closed too early: {:?}",
        started.elapsed()
    );
}
