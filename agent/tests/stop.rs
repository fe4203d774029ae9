//! A stop never hangs: `tether-agent` asked to stop (SIGTERM) just after its broker went
//! away without a word (no FIN: a link blackholed by a proxy, as a dead NAT or a cut
//! cable does) exits within a few seconds instead of waiting for answers that never
//! come.

mod support;

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};

use support::{TestBroker, hello};

/// A TCP proxy to `upstream` that can be blackholed: from then on it forwards nothing
/// either way and closes nothing, so neither side learns that the link is gone.
async fn blackhole_proxy(upstream: SocketAddr) -> (SocketAddr, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let blackholed = Arc::new(AtomicBool::new(false));
    let flag = blackholed.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(upstream).await else {
                continue;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(pump(client_read, server_write, flag.clone()));
            tokio::spawn(pump(server_read, client_write, flag.clone()));
        }
    });
    (addr, blackholed)
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, blackholed: Arc<AtomicBool>) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let read = from.read(&mut buffer).await;
        let blackholed = blackholed.load(Ordering::SeqCst);
        match read {
            Ok(n) if n > 0 && !blackholed => {
                if to.write_all(&buffer[..n]).await.is_err() {
                    return;
                }
            }
            // Swallowed.
            Ok(n) if n > 0 => {}
            // The far side closed: blackholed, the near side is never told (its
            // write half held open for good).
            _ if blackholed => std::future::pending::<()>().await,
            _ => return,
        }
    }
}

#[tokio::test]
async fn a_stop_just_after_the_broker_vanished_ends_within_seconds() {
    let broker = TestBroker::start(support::Devices::new(&[("dev-stop", "secret-stop")])).await;
    let server = broker.server().await;
    server.declare_topology().await;
    let mut presence = server.presence_of("dev-stop").await;
    let (proxy, blackholed) = blackhole_proxy(broker.addr).await;
    let mut agent = Command::new(env!("CARGO_BIN_EXE_tether-agent"))
        .env("TETHER_AMQP_URL", format!("amqp://{proxy}/%2f"))
        .env("TETHER_DEVICE_ID", "dev-stop")
        .env("TETHER_DEVICE_KIND", "switch")
        .env("TETHER_DEVICE_SECRET", "secret-stop")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("tether-agent starts");
    let (hello, _) = hello(&mut presence).await;
    assert_eq!(hello.device_id.as_str(), "dev-stop");

    blackholed.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = loop {
        if let Some(status) = agent.try_wait().unwrap() {
            break Some(status);
        }
        if asked.elapsed() > Duration::from_secs(20) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = asked.elapsed();
    if exited.is_none() {
        let _ = agent.kill();
        let _ = agent.wait();
        panic!("the agent did not stop within 20 s of SIGTERM");
    }
    // The goodbye and the close are bounded by 2 s each.
    assert!(took < Duration::from_secs(8), "stopping took {took:?}");
}
