//! Graceful shutdown, as RabbitMQ does it: when `serve`'s shutdown future resolves, the
//! port is freed, every open connection gets `connection.close` 320 (CONNECTION_FORCED)
//! and a short while for its close-ok, handshakes under way are dropped, and `serve`
//! returns once every connection has ended.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use amq_protocol::{
    frame::{AMQPFrame, gen_frame, parse_frame},
    protocol::{
        AMQPClass, AMQPErrorKind, AMQPHardError,
        connection::{self, AMQPMethod as ConnectionMethod},
    },
    types::FieldTable,
};
use broker::{Broker, Config};
use futures_util::StreamExt as _;
use lapin::{
    Connection, ConnectionProperties, ErrorKind, Event,
    options::{BasicConsumeOptions, QueueDeclareOptions},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::oneshot,
    task::JoinHandle,
};

const SHUTDOWN_TEXT: &str =
    "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'";

#[tokio::test]
async fn open_connections_are_closed_with_connection_forced_and_the_port_is_freed() {
    let broker = Running::start().await;

    // A consumer on an open channel, and a connection with no channel at all.
    let consuming = connect(&broker.url).await;
    let channel = consuming.create_channel().await.expect("a channel");
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let queue = channel
        .queue_declare("".into(), options, FieldTable::default())
        .await
        .expect("a queue");
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "shutdown-test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("a consumer");
    let idle = connect(&broker.url).await;
    // Listening before the shutdown: lapin reports events only to live listeners.
    let consuming_error = first_error(&consuming);
    let idle_error = first_error(&idle);

    // Half-way through the handshake: only the protocol header sent; and a socket that
    // sent nothing at all.
    let mut half_way = TcpStream::connect(broker.addr).await.expect("tcp");
    half_way
        .write_all(b"AMQP\x00\x00\x09\x01")
        .await
        .expect("the protocol header");
    let mut silent = TcpStream::connect(broker.addr).await.expect("tcp");
    // The broker has taken both in (it answered the header with connection.start).
    let mut half_way = RawClient::new(half_way);
    assert!(matches!(
        half_way.next_frame().await,
        Some(AMQPFrame::Method(
            0,
            AMQPClass::Connection(ConnectionMethod::Start(_))
        ))
    ));

    let addr = broker.addr;
    let took = broker.shut_down().await;
    assert!(took < Duration::from_secs(2), "serve took {took:?}");

    // Each lapin connection saw the broker close it with 320 and the text RabbitMQ uses,
    // not an I/O error: a clean close, its close-ok answered before the socket closed.
    for (name, error) in [("consuming", consuming_error), ("idle", idle_error)] {
        let error = tokio::time::timeout(Duration::from_secs(2), error)
            .await
            .unwrap_or_else(|_| panic!("the {name} connection heard of the shutdown"))
            .expect("the listener");
        let ErrorKind::ProtocolError(amqp) = error.kind() else {
            panic!("the {name} connection saw {error} instead of a server close");
        };
        assert_eq!(
            amqp.kind(),
            &AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED),
            "{name}"
        );
        assert_eq!(amqp.get_id(), 320, "{name}");
        assert_eq!(amqp.get_message().as_str(), SHUTDOWN_TEXT, "{name}");
    }
    assert!(consuming.status().errored() && idle.status().errored());
    // The consumer's stream ends instead of hanging.
    let ended = tokio::time::timeout(Duration::from_secs(2), consumer.next())
        .await
        .expect("the consumer's stream ends");
    assert!(!matches!(ended, Some(Ok(_))), "no delivery after shutdown");

    // Handshakes under way were dropped without a close, and did not hold shutdown up.
    assert!(
        half_way.next_frame().await.is_none(),
        "a handshake is dropped"
    );
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(1), silent.read_to_end(&mut rest))
        .await
        .expect("the silent socket is closed");
    assert!(read.is_ok() && rest.is_empty(), "{read:?} {rest:?}");

    std::net::TcpListener::bind(addr).expect("the port is free again");
}

#[tokio::test]
async fn a_client_that_never_answers_the_close_is_dropped_after_a_short_wait() {
    let broker = Running::start().await;
    let mut client = RawClient::open(broker.addr).await;

    let stopping = broker.shut_down();
    tokio::pin!(stopping);
    let closed_at = tokio::select! {
        frame = client.next_frame() => {
            let Some(AMQPFrame::Method(0, AMQPClass::Connection(ConnectionMethod::Close(close)))) = frame else {
                panic!("expected connection.close, got {frame:?}");
            };
            assert_eq!(close.reply_code, 320);
            assert_eq!(close.reply_text.as_str(), SHUTDOWN_TEXT);
            assert_eq!((close.class_id, close.method_id), (0, 0));
            Instant::now()
        }
        _ = &mut stopping => panic!("serve returned before closing the connection"),
    };
    // No close-ok: the broker waits a little for one, then drops the connection.
    let took = stopping.await;
    assert!(took < Duration::from_secs(2), "serve took {took:?}");
    assert_eq!(client.next_frame().await, None, "the socket is closed");
    let waited = closed_at.elapsed();
    assert!(
        waited >= Duration::from_millis(400),
        "the broker gave the client time to answer, not {waited:?}"
    );
}

#[tokio::test]
async fn a_close_crossing_the_brokers_close_is_answered() {
    let broker = Running::start().await;
    let mut client = RawClient::open(broker.addr).await;

    let stopping = tokio::spawn(broker.shut_down());
    let frame = client.next_frame().await;
    assert!(
        matches!(
            frame,
            Some(AMQPFrame::Method(
                0,
                AMQPClass::Connection(ConnectionMethod::Close(_))
            ))
        ),
        "{frame:?}"
    );
    // The client happened to be closing too: its close gets a close-ok, and that ends it.
    client
        .send(AMQPFrame::Method(
            0,
            AMQPClass::Connection(ConnectionMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            })),
        ))
        .await;
    assert!(matches!(
        client.next_frame().await,
        Some(AMQPFrame::Method(
            0,
            AMQPClass::Connection(ConnectionMethod::CloseOk(_))
        ))
    ));
    assert_eq!(client.next_frame().await, None, "the socket is closed");
    let took = stopping.await.expect("serve");
    assert!(took < Duration::from_millis(450), "no wait: {took:?}");
}

/// A broker served on a free port until [`Running::shut_down`].
struct Running {
    addr: SocketAddr,
    url: String,
    stop: oneshot::Sender<()>,
    served: JoinHandle<()>,
}

impl Running {
    async fn start() -> Self {
        let broker = Broker::bind(Config::on_free_port())
            .await
            .expect("the broker binds");
        let (addr, url) = (broker.local_addr().unwrap(), broker.url().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(broker.serve(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            url,
            stop,
            served,
        }
    }

    /// Triggers shutdown; how long `serve` took to return (it must, within 5 s).
    async fn shut_down(self) -> Duration {
        let started = Instant::now();
        self.stop.send(()).expect("serve is running");
        tokio::time::timeout(Duration::from_secs(5), self.served)
            .await
            .expect("serve returns")
            .expect("serve does not panic");
        started.elapsed()
    }
}

async fn connect(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect to the embedded broker")
}

/// The first error `connection` reports from now on.
fn first_error(connection: &Connection) -> JoinHandle<lapin::Error> {
    let mut events = connection.events_listener();
    tokio::spawn(async move {
        loop {
            match events.next().await {
                Some(Event::Error(error)) => return error,
                Some(_) => {}
                None => panic!("the events ended without an error"),
            }
        }
    })
}

/// A client speaking raw AMQP frames, to do what lapin would not: stop half-way, or
/// never answer.
struct RawClient {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl RawClient {
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buffer: Vec::new(),
        }
    }

    /// Connected, authenticated and past connection.open, with no heartbeats.
    async fn open(addr: SocketAddr) -> Self {
        let mut client = Self::new(TcpStream::connect(addr).await.expect("tcp"));
        client
            .stream
            .write_all(b"AMQP\x00\x00\x09\x01")
            .await
            .expect("the protocol header");
        client
            .expect("start", |m| matches!(m, ConnectionMethod::Start(_)))
            .await;
        client
            .send(AMQPFrame::Method(
                0,
                AMQPClass::Connection(ConnectionMethod::StartOk(connection::StartOk {
                    client_properties: FieldTable::default(),
                    mechanism: "PLAIN".into(),
                    response: "\0guest\0guest".into(),
                    locale: "en_US".into(),
                })),
            ))
            .await;
        client
            .expect("tune", |m| matches!(m, ConnectionMethod::Tune(_)))
            .await;
        client
            .send(AMQPFrame::Method(
                0,
                AMQPClass::Connection(ConnectionMethod::TuneOk(connection::TuneOk {
                    channel_max: 16,
                    frame_max: 131_072,
                    heartbeat: 0,
                })),
            ))
            .await;
        client
            .send(AMQPFrame::Method(
                0,
                AMQPClass::Connection(ConnectionMethod::Open(connection::Open {
                    virtual_host: "/".into(),
                })),
            ))
            .await;
        client
            .expect("open-ok", |m| matches!(m, ConnectionMethod::OpenOk(_)))
            .await;
        client
    }

    /// The next frame, which must be the connection method `expected` says it is.
    async fn expect(&mut self, name: &str, expected: fn(&ConnectionMethod) -> bool) {
        match self.next_frame().await {
            Some(AMQPFrame::Method(0, AMQPClass::Connection(method))) if expected(&method) => {}
            other => panic!("expected connection.{name}, got {other:?}"),
        }
    }

    async fn send(&mut self, frame: AMQPFrame) {
        let bytes = cookie_factory::gen_simple(gen_frame(&frame), Vec::new()).expect("encode");
        self.stream.write_all(&bytes).await.expect("send a frame");
    }

    /// The next frame from the broker; `None` once it closed the socket. Within 5 s.
    async fn next_frame(&mut self) -> Option<AMQPFrame> {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Ok((rest, frame)) = parse_frame(self.buffer.as_slice()) {
                    let consumed = self.buffer.len() - rest.len();
                    self.buffer.drain(..consumed);
                    return Some(frame);
                }
                match self.stream.read_buf(&mut self.buffer).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("a frame or the end within 5 s")
    }
}
