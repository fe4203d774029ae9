//! A browser whose socket stops reading, against the real server over real TCP: while
//! commands to a watched device make a steady flow of live events, a WebSocket and then
//! an event stream complete their handshake and never read again (a small receive
//! buffer, so the server feels it at once). Each is ended once its writes waited the
//! configured bound (`TETHER_WRITE_TIMEOUT_MS`, 3 s here): the server closes the
//! connection, frees the session and counts it in `/metrics`. Meanwhile a normal tab
//! gets every event and the API answers; a tab that stops reading for less than the
//! bound is not cut off and ends up with every command's true end (from the events, or
//! a fresh snapshot), never a gap.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use agent::simulate::Kind;
use futures_util::StreamExt as _;
use protocol::{
    CommandId, CommandStatus,
    api::{CommandView, LiveEvent},
    auth::Role,
};
use reqwest::StatusCode;
use serde_json::json;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

mod support;

use support::Running;

/// The write bound the server is given.
const BOUND: Duration = Duration::from_secs(3);

/// The receive buffer of the clients that stall (the kernel's least, about).
const SMALL_BUFFER: u32 = 4 * 1024;

/// Polls `check` every 100 ms until it gives something; panics after `within`, saying
/// what was waited for and what `check` saw last.
async fn until<T>(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match check().await {
            Ok(found) => return found,
            Err(seen) => assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {within:?} waiting for {what}; last seen: {seen}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A metric's value in `/metrics` (the first line that starts with `name `).
async fn metric(running: &Running, client: &reqwest::Client, name: &str) -> u64 {
    let text = client
        .get(running.url("/metrics"))
        .send()
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("/metrics has a body");
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("/metrics has no {name}:\n{text}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{name} is not a number ({e}):\n{text}"))
}

/// A TCP connection to the server with a small receive buffer: once it stops reading,
/// the server's writes to it wait almost at once.
async fn small_buffered(running: &Running) -> TcpStream {
    let addr = running.base.trim_start_matches("http://").parse().unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(SMALL_BUFFER).unwrap();
    socket.connect(addr).await.expect("the server accepts")
}

/// Sends `request` (an HTTP/1.1 head) on a fresh small-buffered connection and reads
/// the answer's head, which must start with `expect`; then reads nothing more.
async fn stalled(running: &Running, request: String, expect: &str) -> TcpStream {
    let mut stream = small_buffered(running).await;
    stream.write_all(request.as_bytes()).await.unwrap();
    // Byte by byte, so that nothing past the head is taken.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0; 1];
        let n = testkit::within(
            Duration::from_secs(10),
            "the answer's head",
            stream.read(&mut byte),
        )
        .await
        .unwrap();
        assert_eq!(n, 1, "the connection ended within the head: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with(expect), "{head}");
    stream
}

/// Reads what the server sent a stalled connection until it closes (the end, or a
/// reset); panics if it has not within 30 s, or keeps sending: its session lives on.
async fn read_to_close(stream: &mut TcpStream, what: &str) -> usize {
    let mut total = 0;
    let mut buffer = vec![0; 64 * 1024];
    testkit::within(
        Duration::from_secs(30),
        &format!("the server closing {what}"),
        async {
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => total += n,
                }
                assert!(
                    total < 256 * 1024 * 1024,
                    "the server still sends to {what} ({total} bytes read): its session was not ended"
                );
            }
        },
    )
    .await;
    total
}

/// Commands sent to `device`, echoing a long message (so that events are large), by
/// four senders, until `stop`; every id sent.
fn flow(
    running: &Running,
    client: &reqwest::Client,
    device: &str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<CommandId>> {
    let url = running.url(&format!("/api/v1/devices/{device}/commands"));
    let senders: Vec<_> = (0..4)
        .map(|sender| {
            let (url, client, stop) = (url.clone(), client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut sent = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let message = format!("{sender}-{}-{}", sent.len(), "x".repeat(900));
                    let response = client
                        .post(&url)
                        .json(&json!({"name": "echo", "args": {"message": message}}))
                        .send()
                        .await
                        .expect("the server answers a command while a tab stalls");
                    assert_eq!(
                        response.status(),
                        StatusCode::ACCEPTED,
                        "a command while a tab stalls: {}",
                        response.text().await.unwrap_or_default()
                    );
                    let view: CommandView = response.json().await.unwrap();
                    sent.push(view.id);
                }
                sent
            })
        })
        .collect();
    tokio::spawn(async move {
        let mut all = Vec::new();
        for sender in senders {
            all.extend(sender.await.expect("a sender panicked"));
        }
        all
    })
}

type Socket = tokio_tungstenite::WebSocketStream<TcpStream>;

/// A tab's live WebSocket watching `device`, on a small-buffered connection.
async fn tab(running: &Running, token: &str, device: &str) -> Socket {
    let mut request = format!(
        "{}/api/v1/live?watch={device}",
        running.base.replace("http", "ws")
    )
    .into_client_request()
    .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let stream = small_buffered(running).await;
    tokio_tungstenite::client_async(request, stream)
        .await
        .expect("the live channel opens")
        .0
}

/// What a tab knows of each command's status: from events and snapshots, in order.
#[derive(Default)]
struct Seen {
    status: HashMap<CommandId, CommandStatus>,
    snapshots: usize,
    events: usize,
}

impl Seen {
    fn take(&mut self, text: &str) {
        let event: LiveEvent =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("not a live event ({e}): {text}"));
        self.events += 1;
        match event {
            LiveEvent::Snapshot { commands, .. } => {
                self.snapshots += 1;
                // A snapshot is the whole truth as of its time.
                for command in commands {
                    self.status.insert(command.id, command.status);
                }
            }
            LiveEvent::CommandUpdated { command } => {
                self.status.insert(command.id, command.status);
            }
            _ => {}
        }
    }

    /// The commands of `sent` this tab does not show succeeded, as text.
    fn missing(&self, sent: &[CommandId]) -> Result<(), String> {
        let missing: Vec<String> = sent
            .iter()
            .filter(|id| self.status.get(*id) != Some(&CommandStatus::Succeeded))
            .map(|id| format!("{} ({:?})", id.0, self.status.get(id)))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} of {} commands not seen succeeded, e.g. {:?} ({} events, {} snapshots)",
                missing.len(),
                sent.len(),
                &missing[..missing.len().min(3)],
                self.events,
                self.snapshots
            ))
        }
    }
}

/// Reads `socket` into `seen` until it ends; `paused` makes it stop reading meanwhile.
fn read_tab(
    mut socket: Socket,
    seen: Arc<Mutex<Seen>>,
    paused: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            while paused.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let message = match tokio::time::timeout(Duration::from_millis(50), socket.next()).await
            {
                Err(_) => continue,
                Ok(None | Some(Err(_))) => return,
                Ok(Some(Ok(message))) => message,
            };
            if let Ok(text) = message.to_text()
                && !text.is_empty()
            {
                seen.lock().unwrap().take(text);
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tab_that_stops_reading_is_cut_off_after_the_bound_and_others_get_everything() {
    let running = support::start_with(|config| {
        config.write_timeout_ms = u64::try_from(BOUND.as_millis()).unwrap();
    })
    .await;
    let agent = testkit::Agent::start(
        &testkit::rabbitmq_url(),
        "stall-gw",
        Kind::Gateway,
        |config| {
            config.heartbeat = Duration::from_secs(1);
        },
    )
    .await;
    testkit::online(&running.hub, &agent.id).await;
    let device = agent.id.to_string();
    let (client, token, _) = running.user(Role::Admin, &[]).await;
    let host = running.base.trim_start_matches("http://").to_owned();
    let sessions = async || -> u64 { metric(&running, &client, "tether_live_sessions").await };
    let timeouts =
        async || -> u64 { metric(&running, &client, "tether_http_write_timeouts_total").await };
    assert_eq!(timeouts().await, 0);

    // A normal tab, reading all along.
    let normal = Arc::new(Mutex::new(Seen::default()));
    let reading = read_tab(
        tab(&running, &token, &device).await,
        normal.clone(),
        Arc::default(),
    );
    // A tab that will stop reading for less than the bound.
    let brief = Arc::new(Mutex::new(Seen::default()));
    let brief_paused = Arc::new(AtomicBool::new(false));
    let brief_reading = read_tab(
        tab(&running, &token, &device).await,
        brief.clone(),
        brief_paused.clone(),
    );
    until("both tabs' sessions", Duration::from_secs(10), async || {
        let n = sessions().await;
        if n == 2 {
            Ok(())
        } else {
            Err(format!("{n} sessions"))
        }
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let flowing = flow(&running, &client, &device, stop.clone());

    // A WebSocket that completes its upgrade, then never reads.
    let started = tokio::time::Instant::now();
    let mut socket = stalled(
        &running,
        format!(
            "GET /api/v1/live?watch={device} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer {token}\r\n\r\n"
        ),
        "HTTP/1.1 101",
    )
    .await;
    // Meanwhile the brief tab stops reading for a third of the bound.
    tokio::time::sleep(Duration::from_millis(500)).await;
    brief_paused.store(true, Ordering::Relaxed);
    tokio::time::sleep(BOUND / 3).await;
    brief_paused.store(false, Ordering::Relaxed);

    until(
        "the stalled WebSocket's session to end (http_write_timeouts_total 1)",
        BOUND + Duration::from_secs(20),
        async || {
            let n = timeouts().await;
            if n >= 1 {
                Ok(())
            } else {
                Err(format!("{n} write timeouts"))
            }
        },
    )
    .await;
    assert!(
        started.elapsed() >= BOUND,
        "the stalled WebSocket was cut off after {:?}, before the bound ({BOUND:?})",
        started.elapsed()
    );
    assert_eq!(
        timeouts().await,
        1,
        "only the stalled WebSocket is cut off (not the brief tab nor the normal one)"
    );
    until(
        "the stalled WebSocket's session to be freed (2 sessions left)",
        Duration::from_secs(10),
        async || {
            let n = sessions().await;
            if n == 2 {
                Ok(())
            } else {
                Err(format!("{n} sessions"))
            }
        },
    )
    .await;
    // The API answers meanwhile.
    let response = client
        .get(running.url(&format!("/api/v1/devices/{device}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Its connection is closed: what it holds ends, nothing new follows.
    let read = read_to_close(&mut socket, "the stalled WebSocket").await;
    println!("the stalled WebSocket was sent {read} bytes before it was closed");

    // An event stream that never reads, likewise.
    let started = tokio::time::Instant::now();
    let mut stream = stalled(
        &running,
        format!(
            "GET /api/v1/live/stream?watch={device} HTTP/1.1\r\nHost: {host}\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        ),
        "HTTP/1.1 200",
    )
    .await;
    until(
        "the stalled event stream's session to end (http_write_timeouts_total 2)",
        BOUND + Duration::from_secs(20),
        async || {
            let n = timeouts().await;
            if n >= 2 {
                Ok(())
            } else {
                Err(format!("{n} write timeouts"))
            }
        },
    )
    .await;
    assert!(
        started.elapsed() >= BOUND,
        "the stalled event stream was cut off after {:?}, before the bound ({BOUND:?})",
        started.elapsed()
    );
    until(
        "the stalled event stream's session to be freed (2 sessions left)",
        Duration::from_secs(10),
        async || {
            let n = sessions().await;
            if n == 2 {
                Ok(())
            } else {
                Err(format!("{n} sessions"))
            }
        },
    )
    .await;
    let read = read_to_close(&mut stream, "the stalled event stream").await;
    println!("the stalled event stream was sent {read} bytes before it was closed");

    // Every command ends, and both tabs show each one's true end.
    stop.store(true, Ordering::Relaxed);
    let sent = testkit::within(Duration::from_secs(30), "the senders to stop", flowing)
        .await
        .expect("the senders");
    assert!(
        sent.len() >= 20,
        "only {} commands were sent: too little flow to fill a socket",
        sent.len()
    );
    for (tab, seen) in [
        ("the normal tab", &normal),
        ("the briefly stalled tab", &brief),
    ] {
        until(
            &format!("{tab} to show every command succeeded"),
            Duration::from_secs(30),
            async || seen.lock().unwrap().missing(&sent),
        )
        .await;
    }
    assert_eq!(timeouts().await, 2, "no other connection was cut off");
    let normal_events = normal.lock().unwrap().events;
    let (brief_events, brief_snapshots) = {
        let brief = brief.lock().unwrap();
        (brief.events, brief.snapshots)
    };
    println!(
        "{} commands; the normal tab got {normal_events} events, the briefly stalled one \
         {brief_events} ({brief_snapshots} snapshots)",
        sent.len(),
    );
    reading.abort();
    brief_reading.abort();
    agent.stop().await;
}
