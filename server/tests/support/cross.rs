//! What the cross-built agent's test (`tests/cross_agent.rs`) and its footprint
//! benchmark (`benches/agent_footprint.rs`) share: finding the binaries, a server with
//! its own broker and an admin, provisioning, an agent process killed on drop, and a
//! counting TCP proxy that splits the device's traffic into AMQP frames.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use protocol::{api::CommandView, auth::DeviceCredential};
use reqwest::StatusCode;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

/// The target directory: CARGO_TARGET_DIR if it is absolute (a relative one is relative
/// to where cargo ran, not to this test's directory), else the one this test binary was
/// built in (`<target>/debug/deps/cross_agent-…`).
pub(crate) fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from)
        && dir.is_absolute()
    {
        return dir;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .expect("the test binary is in <target>/debug/deps")
        .to_owned()
}

/// The cross-built agent for `triple`, from `variable` or the build script's output.
pub(crate) fn agent_binary(variable: &str, triple: &str, short: &str) -> PathBuf {
    let path = std::env::var_os(variable).map_or_else(
        || target_dir().join(format!("cross/{triple}/tether-agent")),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "no cross-built agent at {}: run `scripts/cross-build.sh {short}` (or set {variable})",
        path.display()
    );
    path
}

/// `program` on the PATH, or a failure saying how to get it.
pub(crate) fn on_path(program: &str, how: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("{program} is not on the PATH: {how}"))
}

/// A child process that is killed when this is dropped (a failed assertion included),
/// and whose output, kept in a file, is printed if the test fails.
pub(crate) struct Agent {
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
}

impl Agent {
    /// Runs `program args…` with `env`, its stdout and stderr to a log file.
    pub(crate) fn spawn(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let log = std::env::temp_dir().join(format!("{}.log", testkit::unique("tether-agent")));
        let out = std::fs::File::create(&log).expect("the agent's log file");
        let mut command = Command::new(program);
        command
            .args(args)
            .env_remove("TETHER_SECRETS_FILE")
            .env_remove("TETHER_SIMULATE")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
        Self { child, log }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits up to `limit` for the process to exit.
    pub(crate) async fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -TERM {}", self.pid());
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- the agent's output ---\n{}", self.output());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A server with its own (embedded) broker, on port 0 with a SQLite file of its own: it
/// needs no RabbitMQ. It stops when this is dropped.
pub(crate) struct Running {
    pub(crate) base: String,
    pub(crate) hub: hub::Hub,
    /// The server's accounts, for users of other roles.
    pub(crate) accounts: store::Store,
    /// The admin's API token.
    pub(crate) token: String,
    pub(crate) _stop: tokio::sync::oneshot::Sender<()>,
}

impl Running {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// A server with its own broker and an admin's client.
pub(crate) async fn server_and_admin() -> (Running, reqwest::Client) {
    let tag = testkit::unique("cross");
    let dir = std::env::temp_dir().join(format!("tether-{tag}"));
    let mut config = server::Config::new(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), "");
    config.amqp_url = None;
    config.database_url = format!("sqlite://{}", dir.join("tether.db").display());
    config.store_queue = format!("tether.telemetry.store.test-{tag}");
    config.store_queue_expires_ms = Some(60_000);
    let server = server::Server::bind(config)
        .await
        .expect("the server starts with its own broker");
    let base = format!("http://{}", server.local_addr().unwrap());
    let hub = server.hub().clone();
    let (token, _) = testkit::user_token(server.accounts(), protocol::auth::Role::Admin, &[]).await;
    let accounts = server.accounts().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    let admin = testkit::api_client(&token);
    let running = Running {
        base,
        hub,
        accounts,
        token,
        _stop: stop,
    };
    (running, admin)
}

/// Provisions `name` (made unique) over the API: its id, secret and broker URL.
pub(crate) async fn provision(
    server: &Running,
    admin: &reqwest::Client,
    name: &str,
) -> (String, String, String) {
    let id = testkit::unique(name);
    let answer = admin
        .post(server.url("/api/v1/devices"))
        .json(&json!({ "id": id }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::CREATED);
    let credential: DeviceCredential = answer.json().await.unwrap();
    let url = credential
        .amqp_url
        .expect("the answer carries the broker URL");
    (id, credential.secret, url)
}

/// Sends `echo` to `id` through the API and waits for its outcome.
pub(crate) async fn echo(server: &Running, admin: &reqwest::Client, id: &str) -> CommandView {
    let body = json!({"name": "echo", "args": {"message": "from the API"}});
    let sent = send(server, admin, id, body).await;
    outcome(server, admin, &sent).await
}

/// Sends a command (`body` as the API takes it) to `id`; the command as accepted.
pub(crate) async fn send(
    server: &Running,
    admin: &reqwest::Client,
    id: &str,
    body: serde_json::Value,
) -> CommandView {
    let sent = admin
        .post(server.url(&format!("/api/v1/devices/{id}/commands")))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), StatusCode::ACCEPTED);
    sent.json().await.unwrap()
}

/// Waits (long-polling the API, at most a minute) for `command` to end.
pub(crate) async fn outcome(
    server: &Running,
    admin: &reqwest::Client,
    command: &CommandView,
) -> CommandView {
    for _ in 0..6 {
        let now: CommandView = admin
            .get(server.url(&format!("/api/v1/commands/{}?wait_ms=10000", command.id.0)))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if now.status.is_terminal() {
            return now;
        }
    }
    panic!("{} did not end within a minute", command.id.0);
}

/// Bytes through a [`proxy`], each way, and the device's (upstream) AMQP frames by
/// type: 1 method, 2 content header, 3 content body, 8 heartbeat.
#[derive(Default)]
pub(crate) struct Counts {
    pub(crate) up: AtomicU64,
    pub(crate) down: AtomicU64,
    /// Frames and bytes (7-byte header and end octet included) sent up, per frame type.
    pub(crate) frames: std::sync::Mutex<std::collections::BTreeMap<u8, (u64, u64)>>,
}

impl Counts {
    pub(crate) fn get(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::SeqCst),
            self.down.load(Ordering::SeqCst),
        )
    }

    pub(crate) fn frames(&self) -> std::collections::BTreeMap<u8, (u64, u64)> {
        self.frames.lock().unwrap().clone()
    }
}

/// Splits the device's byte stream into AMQP frames (after the 8-byte protocol header).
#[derive(Default)]
pub(crate) struct Frames {
    pub(crate) buffer: Vec<u8>,
    pub(crate) past_header: bool,
}

impl Frames {
    pub(crate) fn feed(&mut self, bytes: &[u8], counts: &Counts) {
        self.buffer.extend_from_slice(bytes);
        if !self.past_header {
            if self.buffer.len() < 8 {
                return;
            }
            self.buffer.drain(..8);
            self.past_header = true;
        }
        while self.buffer.len() >= 7 {
            let size = u32::from_be_bytes(self.buffer[3..7].try_into().unwrap()) as usize;
            if self.buffer.len() < 7 + size + 1 {
                return;
            }
            let kind = self.buffer[0];
            let mut frames = counts.frames.lock().unwrap();
            let entry = frames.entry(kind).or_default();
            entry.0 += 1;
            entry.1 += (7 + size + 1) as u64;
            drop(frames);
            self.buffer.drain(..7 + size + 1);
        }
    }
}

/// A TCP proxy to `upstream` that counts the payload bytes each way (TCP/IP headers
/// not included): its address and the counts.
pub(crate) async fn proxy(upstream: String) -> (String, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let counts = Arc::new(Counts::default());
    let counting = counts.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(&upstream).await.unwrap();
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let (a, b) = (counting.clone(), counting.clone());
            tokio::spawn(async move {
                pump(&mut client_read, &mut server_write, &a, true).await;
            });
            tokio::spawn(async move {
                pump(&mut server_read, &mut client_write, &b, false).await;
            });
        }
    });
    (addr, counts)
}

pub(crate) async fn pump(
    from: &mut (impl tokio::io::AsyncRead + Unpin),
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    counts: &Counts,
    up: bool,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buffer = vec![0; 64 * 1024];
    let mut frames = Frames::default();
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if up {
                    counts.up.fetch_add(n as u64, Ordering::SeqCst);
                    frames.feed(&buffer[..n], counts);
                } else {
                    counts.down.fetch_add(n as u64, Ordering::SeqCst);
                }
                if to.write_all(&buffer[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

/// `url` with its host:port replaced by `addr`.
pub(crate) fn via(url: &str, addr: &str) -> String {
    let at = url
        .find('@')
        .map_or_else(|| url.find("://").unwrap() + 3, |i| i + 1);
    let end = url[at..].find('/').map_or(url.len(), |i| at + i);
    format!("{}{addr}{}", &url[..at], &url[end..])
}

/// The host:port of `url`.
pub(crate) fn host_port(url: &str) -> String {
    let at = url
        .find('@')
        .map_or_else(|| url.find("://").unwrap() + 3, |i| i + 1);
    let end = url[at..].find('/').map_or(url.len(), |i| at + i);
    url[at..end].to_owned()
}

/// VmRSS and VmHWM of `pid`, in kB, and the rest of its memory lines.
pub(crate) fn memory(pid: u32) -> (u64, u64, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse().ok())
            .unwrap_or(0)
    };
    let rest = ["RssAnon:", "RssFile:", "VmData:", "VmStk:", "Threads:"]
        .iter()
        .map(|name| format!("{name} {}", field(name)))
        .collect::<Vec<_>>()
        .join(", ");
    (field("VmRSS:"), field("VmHWM:"), rest)
}
