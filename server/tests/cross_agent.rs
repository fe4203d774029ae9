//! The cross-built agent, for real: the static aarch64 `tether-agent` that
//! `scripts/cross-build.sh aarch64` makes, run under qemu-user against a server with its
//! own broker, provisioned over the API, comes online, runs a command sent through the
//! API and exits cleanly on SIGTERM.
//!
//! And (ignored, run by hand for BENCHMARKS.md) the x86_64 musl agent's footprint: its
//! resident memory after a minute online, and the bytes on the wire per heartbeat and
//! per reading, counted by a TCP proxy between it and the broker.
//!
//! The binaries: TETHER_AARCH64_AGENT (TETHER_X86_64_AGENT), by default
//! `<target dir>/cross/<triple>/tether-agent`. A missing binary or qemu-aarch64-static
//! fails the test, with what to run; it is never skipped.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use protocol::{CommandStatus, DeviceId, api::CommandView, auth::DeviceCredential};
use reqwest::StatusCode;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

/// The target directory: CARGO_TARGET_DIR if it is absolute (a relative one is relative
/// to where cargo ran, not to this test's directory), else the one this test binary was
/// built in (`<target>/debug/deps/cross_agent-…`).
fn target_dir() -> PathBuf {
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
fn agent_binary(variable: &str, triple: &str, short: &str) -> PathBuf {
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
fn on_path(program: &str, how: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("{program} is not on the PATH: {how}"))
}

/// A child process that is killed when this is dropped (a failed assertion included),
/// and whose output, kept in a file, is printed if the test fails.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    /// Runs `program args…` with `env`, its stdout and stderr to a log file.
    fn spawn(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
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

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits up to `limit` for the process to exit.
    async fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
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
struct Running {
    base: String,
    hub: hub::Hub,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// A server with its own broker and an admin's client.
async fn server_and_admin() -> (Running, reqwest::Client) {
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
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    let running = Running {
        base,
        hub,
        _stop: stop,
    };
    (running, testkit::api_client(&token))
}

/// Provisions `name` (made unique) over the API: its id, secret and broker URL.
async fn provision(
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
async fn echo(server: &Running, admin: &reqwest::Client, id: &str) -> CommandView {
    let sent = admin
        .post(server.url(&format!("/api/v1/devices/{id}/commands")))
        .json(&json!({"name": "echo", "args": {"message": "from the API"}}))
        .send()
        .await
        .unwrap();
    assert!(sent.status().is_success(), "{}", sent.status());
    let sent: CommandView = sent.json().await.unwrap();
    admin
        .get(server.url(&format!("/api/v1/commands/{}?wait_ms=10000", sent.id.0)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_cross_built_aarch64_agent_runs_under_qemu_and_obeys_commands() {
    let binary = agent_binary(
        "TETHER_AARCH64_AGENT",
        "aarch64-unknown-linux-musl",
        "aarch64",
    );
    let qemu = on_path(
        "qemu-aarch64-static",
        "apt-get install -y qemu-user-static (then run `scripts/cross-build.sh aarch64` if \
         the agent is not built yet)",
    );
    let (server, admin) = server_and_admin().await;
    let (id, secret, url) = provision(&server, &admin, "qemu-gw").await;

    let binary = binary.to_str().unwrap();
    let mut agent = Agent::spawn(
        &qemu,
        &[
            binary,
            "--device-id",
            &id,
            "--kind",
            "gateway",
            "--heartbeat-ms",
            "1000",
        ],
        &[("TETHER_AMQP_URL", &url), ("TETHER_DEVICE_SECRET", &secret)],
    );

    // Online (under emulation, startup takes a moment longer than natively).
    let device = DeviceId::new(&id).unwrap();
    testkit::eventually(
        &format!("{id} (aarch64, under qemu) online"),
        Duration::from_secs(30),
        || server.hub.device(&device).filter(|d| d.online),
    )
    .await;

    let done = echo(&server, &admin, &id).await;
    assert_eq!(done.status, CommandStatus::Succeeded, "{done:?}");

    // SIGTERM: it says goodbye and exits 0.
    let status = agent
        .terminate(Duration::from_secs(10))
        .await
        .expect("the agent exits within 10 s of SIGTERM");
    assert!(status.success(), "the agent exited with {status}");
    testkit::eventually(
        &format!("{id} offline after SIGTERM"),
        Duration::from_secs(10),
        || server.hub.device(&device).filter(|d| !d.online),
    )
    .await;
}

/// Bytes through a [`proxy`], each way, and the device's (upstream) AMQP frames by
/// type: 1 method, 2 content header, 3 content body, 8 heartbeat.
#[derive(Default)]
struct Counts {
    up: AtomicU64,
    down: AtomicU64,
    /// Frames and bytes (7-byte header and end octet included) sent up, per frame type.
    frames: std::sync::Mutex<std::collections::BTreeMap<u8, (u64, u64)>>,
}

impl Counts {
    fn get(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::SeqCst),
            self.down.load(Ordering::SeqCst),
        )
    }

    fn frames(&self) -> std::collections::BTreeMap<u8, (u64, u64)> {
        self.frames.lock().unwrap().clone()
    }
}

/// Splits the device's byte stream into AMQP frames (after the 8-byte protocol header).
#[derive(Default)]
struct Frames {
    buffer: Vec<u8>,
    past_header: bool,
}

impl Frames {
    fn feed(&mut self, bytes: &[u8], counts: &Counts) {
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
async fn proxy(upstream: String) -> (String, Arc<Counts>) {
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

async fn pump(
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
fn via(url: &str, addr: &str) -> String {
    let at = url
        .find('@')
        .map_or_else(|| url.find("://").unwrap() + 3, |i| i + 1);
    let end = url[at..].find('/').map_or(url.len(), |i| at + i);
    format!("{}{addr}{}", &url[..at], &url[end..])
}

/// The host:port of `url`.
fn host_port(url: &str) -> String {
    let at = url
        .find('@')
        .map_or_else(|| url.find("://").unwrap() + 3, |i| i + 1);
    let end = url[at..].find('/').map_or(url.len(), |i| at + i);
    url[at..end].to_owned()
}

/// VmRSS and VmHWM of `pid`, in kB, and the rest of its memory lines.
fn memory(pid: u32) -> (u64, u64, String) {
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

/// The footprint numbers of BENCHMARKS.md: two x86_64 musl agents (gateways), one with
/// no readings and one with readings every 5 s, both with a heartbeat every 5 s, each
/// through its own counting proxy, online for `TETHER_FOOTPRINT_SECS` (60) s.
#[tokio::test]
#[ignore = "a measurement, about a minute: cargo test -p server --test cross_agent footprint -- --ignored --nocapture"]
async fn footprint() {
    let binary = agent_binary("TETHER_X86_64_AGENT", "x86_64-unknown-linux-musl", "x86_64");
    let secs: u64 = std::env::var("TETHER_FOOTPRINT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    // Appended to the agents' broker URL, e.g. `?frame_max=8192`: lapin keeps send and
    // receive buffers of 32 frames each, so the frame size the broker offers (128 KiB
    // from the embedded broker) is 8 MiB of resident memory unless the URL asks for less.
    let query = std::env::var("TETHER_FOOTPRINT_URL_QUERY").unwrap_or_default();
    let (server, admin) = server_and_admin().await;
    let mut runs = Vec::new();
    for (name, telemetry_ms) in [("quiet", "0"), ("telemetry", "5000")] {
        let (id, secret, url) = provision(&server, &admin, &format!("fp-{name}")).await;
        let (addr, counts) = proxy(host_port(&url)).await;
        let agent = Agent::spawn(
            &binary,
            &[
                "--device-id",
                &id,
                "--kind",
                "gateway",
                "--heartbeat-ms",
                "5000",
                "--telemetry-ms",
                telemetry_ms,
            ],
            &[
                ("TETHER_AMQP_URL", &format!("{}{query}", via(&url, &addr))),
                ("TETHER_DEVICE_SECRET", &secret),
            ],
        );
        runs.push((name, id, agent, counts));
    }
    for (_, id, _, _) in &runs {
        testkit::online(&server.hub, &DeviceId::new(id).unwrap()).await;
    }
    // Past the handshake, the hello and the first readings: then count.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let start: Vec<_> = runs
        .iter()
        .map(|run| (run.3.get(), run.3.frames()))
        .collect();
    let started = Instant::now();
    let mut sampled = Vec::new();
    for (name, _, agent, _) in &runs {
        sampled.push((*name, agent.pid(), memory(agent.pid())));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let elapsed = started.elapsed().as_secs_f64();
    println!("footprint over {elapsed:.1} s (heartbeat every 5 s):");
    let beats = elapsed / 5.0;
    let mut totals = Vec::new();
    for ((name, id, agent, counts), ((up0, down0), frames0)) in runs.iter().zip(start) {
        let (up, down) = counts.get();
        let (rss, hwm, rest) = memory(agent.pid());
        let (up, down) = (up - up0, down - down0);
        println!(
            "  {name:10} {id}: up {up} B, down {down} B ({:.1} B per 5 s up, {:.1} down); \
             VmRSS {rss} kB, VmHWM {hwm} kB ({rest})",
            up as f64 / beats,
            down as f64 / beats
        );
        for (kind, (count, bytes)) in counts.frames() {
            let (count0, bytes0) = frames0.get(&kind).copied().unwrap_or_default();
            let what = match kind {
                1 => "method",
                2 => "content header",
                3 => "content body",
                8 => "heartbeat",
                _ => "other",
            };
            println!(
                "    up, {what} frames: {} ({} bytes with framing)",
                count - count0,
                bytes - bytes0
            );
        }
        totals.push((up, down));
    }
    let ((quiet_up, quiet_down), (busy_up, busy_down)) = (totals[0], totals[1]);
    println!(
        "  per heartbeat (quiet run / {beats:.1}): {:.0} B up, {:.0} B down",
        quiet_up as f64 / beats,
        quiet_down as f64 / beats
    );
    println!(
        "  per reading (telemetry run - quiet run, / {beats:.1}): {:.0} B up, {:.0} B down",
        (busy_up as f64 - quiet_up as f64) / beats,
        (busy_down as f64 - quiet_down as f64) / beats
    );
    for (name, pid, (rss, hwm, _)) in sampled {
        println!(
            "  {name:10} at the start of the window (pid {pid}): VmRSS {rss} kB, VmHWM {hwm} kB"
        );
    }
    println!(
        "  binary {}: {} bytes",
        binary.display(),
        std::fs::metadata(&binary).unwrap().len()
    );
    for (_, _, mut agent, _) in runs {
        let status = agent.terminate(Duration::from_secs(10)).await;
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
    }
}
