//! The broker target: a fresh embedded broker per input, a script of steps played over
//! up to four connections (the server account and two device accounts), then three
//! promises checked: every connection whose peer hung up ends, a new client can still
//! log in, declare, publish and get its message back, and the broker stops in time.

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::OnceLock,
    time::Duration,
};

use amq_protocol::{
    frame::{AMQPContentHeader, AMQPFrame, parse_frame},
    protocol::{AMQPClass, basic, channel, connection, queue},
    types::FieldTable,
};
use arbitrary::{Arbitrary, Unstructured};
use broker::{Authenticator, Broker, Config};
use protocol::{DeviceId, policy::Account};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, tcp::OwnedWriteHalf},
    runtime::Runtime,
    sync::oneshot,
    task::JoinHandle,
};

use crate::{
    Finding,
    amqp::{self, Step},
    guarded,
};

/// Connections one input may open.
const MAX_PEERS: usize = 4;
/// Steps one input may take.
const MAX_STEPS: usize = 256;
/// How long anything the broker owes may take.
const WITHIN: Duration = Duration::from_secs(3);

#[derive(Debug, Arbitrary)]
enum Op {
    /// Another connection: as the server account, or as device `fz-a` or `fz-b`.
    Connect(u8),
    On(u8, Step),
    /// Lets the broker catch up.
    Pause,
}

/// Device accounts `fz-a` and `fz-b`, password `pw`.
#[derive(Debug)]
struct Devices;

impl Authenticator for Devices {
    fn authenticate<'a>(
        &'a self,
        user: &'a str,
        password: &'a str,
        _peer: IpAddr,
    ) -> Pin<Box<dyn Future<Output = Option<Account>> + Send + 'a>> {
        Box::pin(async move {
            (matches!(user, "fz-a" | "fz-b") && password == "pw")
                .then(|| DeviceId::new(user).ok().map(Account::Device))
                .flatten()
        })
    }
}

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime starts")
    })
}

struct Peer {
    writer: OwnedWriteHalf,
    /// Reads (and drops) everything the broker says; ends at end of stream.
    reader: JoinHandle<()>,
}

async fn connect(addr: SocketAddr, who: u8) -> std::io::Result<Peer> {
    let socket = TcpStream::connect(addr).await?;
    let (mut reader, mut writer) = socket.into_split();
    let login = match who % 3 {
        0 => amqp::login("guest", "guest", 2_047),
        1 => amqp::login("fz-a", "pw", 8),
        _ => amqp::login("fz-b", "pw", 8),
    };
    writer.write_all(&login).await?;
    let reader = tokio::spawn(async move {
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(read) = reader.read(&mut buffer).await {
            if read == 0 {
                break;
            }
        }
    });
    Ok(Peer { writer, reader })
}

/// Plays `data` as a script against a broker of its own.
pub fn broker_session(data: &[u8]) -> Result<(), Finding> {
    guarded(|| {
        let mut u = Unstructured::new(data);
        let mut ops = Vec::new();
        while ops.len() < MAX_STEPS && !u.is_empty() {
            match Op::arbitrary(&mut u) {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        runtime().block_on(play(ops))
    })
}

async fn play(ops: Vec<Op>) -> Result<(), Finding> {
    let config = Config {
        authenticator: Some(std::sync::Arc::new(Devices)),
        heartbeat: 0,
        ..Config::on_free_port()
    };
    let broker = Broker::bind(config)
        .await
        .map_err(|e| format!("the broker did not bind: {e}"))?;
    let addr = broker.local_addr().map_err(|e| e.to_string())?;
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(broker.serve(async {
        let _ = stopped.await;
    }));

    let mut peers = vec![
        connect(addr, 0)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?,
    ];
    for op in &ops {
        match op {
            Op::Connect(who) if peers.len() < MAX_PEERS => {
                if let Ok(peer) = connect(addr, *who).await {
                    peers.push(peer);
                }
            }
            Op::Connect(_) => {}
            Op::On(which, step) => {
                let at = usize::from(*which) % peers.len();
                let peer = &mut peers[at];
                // A broker that hung up already is not a finding.
                let _ = peer.writer.write_all(&amqp::encode_step(step)).await;
            }
            Op::Pause => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }

    // Every peer hangs up; the broker must end each connection.
    for (n, mut peer) in peers.into_iter().enumerate() {
        let _ = peer.writer.shutdown().await;
        if tokio::time::timeout(WITHIN, &mut peer.reader)
            .await
            .is_err()
        {
            peer.reader.abort();
            return Err(format!(
                "connection {n} was still open {WITHIN:?} after its peer hung up"
            ));
        }
    }

    // A newcomer is served.
    tokio::time::timeout(WITHIN, still_serves(addr))
        .await
        .map_err(|_| format!("a new connection was not served within {WITHIN:?}"))??;

    let _ = stop.send(());
    tokio::time::timeout(WITHIN, serving)
        .await
        .map_err(|_| format!("the broker did not stop within {WITHIN:?}"))?
        .map_err(|e| format!("the broker's task failed: {e}"))?;
    Ok(())
}

/// Logs in as guest, declares a queue of its own, publishes to it and gets the message
/// back.
async fn still_serves(addr: SocketAddr) -> Result<(), Finding> {
    let mut socket = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("a new connection was refused: {e}"))?;
    let mut bytes = amqp::login("guest", "guest", 2_047);
    let frames = [
        AMQPFrame::Method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        ),
        AMQPFrame::Method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "alive".into(),
                passive: false,
                durable: false,
                exclusive: true,
                auto_delete: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        ),
    ];
    for frame in &frames {
        bytes.extend(amqp::encode(frame));
    }
    let publish = AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "alive".into(),
            mandatory: false,
            immediate: false,
        })),
    );
    let header = AMQPFrame::Header(
        1,
        AMQPContentHeader {
            class_id: 60,
            body_size: 4,
            properties: Default::default(),
        },
    );
    for frame in [
        publish,
        header,
        AMQPFrame::Body(1, b"ping".to_vec()),
        AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: "alive".into(),
                no_ack: true,
            })),
        ),
    ] {
        bytes.extend(amqp::encode(&frame));
    }
    socket
        .write_all(&bytes)
        .await
        .map_err(|e| format!("a new connection could not write: {e}"))?;

    let mut buffer = Vec::new();
    let mut got = false;
    loop {
        loop {
            match parse_frame(buffer.as_slice()) {
                Ok((rest, frame)) => {
                    let consumed = buffer.len() - rest.len();
                    buffer.drain(..consumed);
                    match frame {
                        AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::GetOk(_))) => {
                            got = true
                        }
                        AMQPFrame::Body(1, body) if got && body == b"ping" => {
                            let _ = socket.shutdown().await;
                            return Ok(());
                        }
                        AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::GetEmpty(_))) => {
                            return Err("a new client's message was lost".into());
                        }
                        AMQPFrame::Method(_, class @ AMQPClass::Connection(_))
                        | AMQPFrame::Method(_, class @ AMQPClass::Channel(_))
                            if !matches!(
                                class,
                                AMQPClass::Connection(
                                    connection::AMQPMethod::Start(_)
                                        | connection::AMQPMethod::Tune(_)
                                        | connection::AMQPMethod::OpenOk(_)
                                ) | AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))
                            ) =>
                        {
                            return Err(format!("a new client was refused: {class:?}"));
                        }
                        _ => {}
                    }
                }
                Err(nom::Err::Incomplete(_)) => break,
                Err(e) => return Err(format!("the broker sent a malformed frame: {e:?}")),
            }
        }
        let mut chunk = [0u8; 4096];
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err("the broker hung up on a new client".into()),
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
        }
    }
}
