//! The built-in `update` command with real processes: the real `tether-agent`, copied
//! into a scratch folder as the device's executable, started with a configuration file
//! against this test's embedded broker; the test plays the server (commands into the
//! inbox, answers and presence read back) and serves the update file over HTTP itself
//! (honouring `Range`, and able to cut a download half way or to trickle it).
//!
//! The "new version" is a shell script that execs the real agent with `--firmware
//! 2.0.0` (padded with comments, so that its download takes a while), or one that exits
//! with status 3 at once.

mod support;

use std::{
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    process::{Child, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ed25519_dalek::{Signer as _, SigningKey};
use lapin::Consumer;
use protocol::{
    CommandId, CommandRequest, DeviceMessage, ErrorCode, Hello, Outcome, ServerMessage,
};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use support::{Server, TestBroker, next_within, to_inbox};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const DEVICE: &str = "updatable-1";
const SECRET: &str = "s3cret-u";
/// The longest a test waits for any one thing (the machine may be loaded).
const PATIENCE: Duration = Duration::from_secs(120);

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tether-update-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn own_arch() -> &'static str {
    match std::env::consts::ARCH {
        "arm" => "armv7",
        other => other,
    }
}

/// A shell script of about `padding` bytes (comments after the `exec`, never read).
fn script(body: &str, padding: usize) -> Vec<u8> {
    let mut text = format!("#!/bin/sh\n{body}\n");
    let line = format!("# {}\n", "x".repeat(98));
    while text.len() < padding {
        text.push_str(&line);
    }
    text.into_bytes()
}

/// The new version: the real agent reporting firmware 2.0.0.
fn new_version() -> Vec<u8> {
    script(
        &format!(
            "exec '{}' \"$@\" --firmware 2.0.0",
            env!("CARGO_BIN_EXE_tether-agent")
        ),
        1_500_000,
    )
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn signer() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

/// The signature the server would send: of the 32-byte SHA-256 digest.
fn signature(key: &SigningKey, bytes: &[u8]) -> String {
    let digest: [u8; 32] = Sha256::digest(bytes).into();
    hex::encode(key.sign(&digest).to_bytes())
}

fn public_key(key: &SigningKey) -> String {
    hex::encode(key.verifying_key().as_bytes())
}

// ---------------------------------------------------------------------------------
// The test's own file server.

/// What the file server has done.
#[derive(Debug, Default)]
struct Served {
    /// The `Range` start of each request (`None` without one).
    ranges: Mutex<Vec<Option<u64>>>,
    /// Body bytes written.
    bytes: AtomicU64,
}

struct FileServer {
    addr: std::net::SocketAddr,
    served: Arc<Served>,
}

#[derive(Clone)]
struct Serving {
    body: Arc<Vec<u8>>,
    /// Cut the next full response after half its bytes, once.
    cut_once: Arc<AtomicBool>,
    /// Pause between 64 KiB pieces.
    trickle: Option<Duration>,
    served: Arc<Served>,
}

impl FileServer {
    async fn start(body: Vec<u8>, cut_once: bool, trickle: Option<Duration>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(Served::default());
        let serving = Serving {
            body: Arc::new(body),
            cut_once: Arc::new(AtomicBool::new(cut_once)),
            trickle,
            served: served.clone(),
        };
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, serving.clone()));
            }
        });
        Self { addr, served }
    }

    /// A download link like the server's, with its token in the query.
    fn url(&self) -> String {
        format!(
            "http://{}/api/v1/artifacts/a-1/download?device={DEVICE}&expires=1&token=abcdef",
            self.addr
        )
    }

    fn ranges(&self) -> Vec<Option<u64>> {
        self.served.ranges.lock().unwrap().clone()
    }
}

async fn serve(mut stream: tokio::net::TcpStream, serving: Serving) {
    let mut head = Vec::new();
    let mut byte = [0; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let range = head
        .lines()
        .find_map(|line| line.strip_prefix("range: bytes="))
        .and_then(|rest| rest.trim().trim_end_matches('-').parse::<u64>().ok());
    serving.served.ranges.lock().unwrap().push(range);
    let body = &serving.body;
    let len = body.len() as u64;
    let (status, from) = match range {
        Some(from) if from >= len => {
            let _ = stream
                .write_all(b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
            return;
        }
        Some(from) => (206, from),
        None => (200, 0),
    };
    let mut response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n",
        if status == 206 {
            "Partial Content"
        } else {
            "OK"
        },
        len - from
    );
    if status == 206 {
        response.push_str(&format!(
            "Content-Range: bytes {from}-{}/{len}\r\n",
            len - 1
        ));
    }
    response.push_str("\r\n");
    if stream.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    let mut rest = &body[usize::try_from(from).unwrap()..];
    if status == 200 && serving.cut_once.swap(false, Ordering::SeqCst) {
        rest = &rest[..rest.len() / 2];
    }
    for piece in rest.chunks(64 * 1024) {
        if stream.write_all(piece).await.is_err() {
            return;
        }
        serving
            .served
            .bytes
            .fetch_add(piece.len() as u64, Ordering::SeqCst);
        if let Some(pause) = serving.trickle {
            tokio::time::sleep(pause).await;
        }
    }
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

// ---------------------------------------------------------------------------------
// The device: a folder with the agent's copy, its configuration and state.

struct Device {
    dir: PathBuf,
    executable: PathBuf,
    state: PathBuf,
    config: PathBuf,
    log: PathBuf,
}

impl Device {
    /// A device whose `[update]` table has `update_toml` besides `enabled`, `executable`,
    /// `state_dir` and `health_timeout_s`.
    fn new(name: &str, broker: &TestBroker, update_toml: &str) -> Self {
        let dir = scratch(name);
        let executable = dir.join("tether-agent");
        std::fs::copy(env!("CARGO_BIN_EXE_tether-agent"), &executable).unwrap();
        std::fs::set_permissions(&executable, std::fs::Permissions::from_mode(0o755)).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, SECRET).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                r#"amqp_url = "{url}"
device_id = "{DEVICE}"
secret_file = "secret"
kind = "updatable"
firmware = "1.0.0"
heartbeat_ms = 1000
telemetry_ms = 0

[machine]
enabled = false

[update]
enabled = true
executable = "tether-agent"
state_dir = "state"
health_timeout_s = 60
{update_toml}
"#,
                url = broker.url()
            ),
        )
        .unwrap();
        Self {
            state: dir.join("state"),
            log: dir.join("agent.log"),
            dir,
            executable,
            config,
        }
    }

    /// Starts the agent from its executable, outside systemd, its log in `agent.log`.
    fn start(&self) -> Agent {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = std::process::Command::new(&self.executable)
            .arg("--config")
            .arg(&self.config)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("the agent starts");
        Agent {
            child,
            state: self.state.clone(),
            log: self.log.clone(),
        }
    }

    fn executable_bytes(&self) -> Vec<u8> {
        std::fs::read(&self.executable).unwrap()
    }
}

/// A running agent: stopped on drop (even when a test panics), and with it the new
/// version it may have handed over to.
struct Agent {
    child: Child,
    state: PathBuf,
    log: PathBuf,
}

impl Agent {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the old process to exit by itself.
    async fn exited(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// The pid the new version wrote when it was healthy.
    fn new_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.state.join("trial.healthy"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }
}

fn alive(pid: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // A zombie is as good as gone.
    !status
        .rsplit(')')
        .next()
        .is_some_and(|rest| rest.trim_start().starts_with('Z'))
}

fn stop_pid(pid: i32) {
    use nix::{sys::signal, unistd::Pid};
    let _ = signal::killpg(Pid::from_raw(pid), signal::Signal::SIGTERM);
    let _ = signal::kill(Pid::from_raw(pid), signal::Signal::SIGTERM);
    let start = Instant::now();
    while alive(pid) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = signal::killpg(Pid::from_raw(pid), signal::Signal::SIGKILL);
    let _ = signal::kill(Pid::from_raw(pid), signal::Signal::SIGKILL);
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let pid = i32::try_from(self.child.id()).unwrap();
            // SIGTERM, so that a trial in progress is stopped and rolled back.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
            let start = Instant::now();
            while self.child.try_wait().ok().flatten().is_none()
                && start.elapsed() < Duration::from_secs(15)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(pid) = self.new_pid() {
            stop_pid(pid);
        }
    }
}

// ---------------------------------------------------------------------------------
// The server's side.

struct Console {
    server: Server,
    presence: Consumer,
    replies_queue: String,
    replies: Consumer,
    /// Answers read while waiting for another command's.
    backlog: Vec<DeviceMessage>,
}

impl Console {
    async fn new(broker: &TestBroker) -> Self {
        let server = broker.server().await;
        server.declare_topology().await;
        let presence = server.presence_of(DEVICE).await;
        let (replies_queue, replies) = server.private_queue().await;
        Self {
            server,
            presence,
            replies_queue,
            replies,
            backlog: Vec::new(),
        }
    }

    /// The next presence message (heartbeats skipped).
    async fn presence(&mut self, agent: &Agent) -> DeviceMessage {
        loop {
            let delivery = next_within(&mut self.presence, PATIENCE)
                .await
                .unwrap_or_else(|| panic!("no presence; the agent's log:\n{}", agent.log()));
            let message: DeviceMessage = protocol::decode(&delivery.data).unwrap();
            if !matches!(message, DeviceMessage::Heartbeat(_)) {
                return message;
            }
        }
    }

    async fn hello(&mut self, agent: &Agent) -> Hello {
        loop {
            if let DeviceMessage::Hello(hello) = self.presence(agent).await {
                return hello;
            }
        }
    }

    async fn send(&self, hello: &Hello, id: &str, args: Value) {
        let request = ServerMessage::Command(CommandRequest {
            command_id: CommandId::from(id),
            name: "update".into(),
            args: serde_json::from_value(args).unwrap(),
            timeout_ms: 120_000,
            deadline_ms: None,
        });
        to_inbox(
            &self.server,
            &hello.inbox,
            &self.replies_queue,
            id,
            &request,
        )
        .await;
    }

    /// The next answer, from the backlog first.
    async fn answer(&mut self, agent: &Agent, id: &str) -> DeviceMessage {
        if let Some(index) = self.backlog.iter().position(|m| about(m) == id) {
            return self.backlog.remove(index);
        }
        loop {
            let delivery = next_within(&mut self.replies, PATIENCE)
                .await
                .unwrap_or_else(|| panic!("no reply to {id}; the agent's log:\n{}", agent.log()));
            let message: DeviceMessage = protocol::decode(&delivery.data).unwrap();
            if about(&message) == id {
                return message;
            }
            self.backlog.push(message);
        }
    }

    /// The answers to `id` up to its reply: its progress messages and its outcome.
    async fn outcome(&mut self, agent: &Agent, id: &str) -> (Vec<String>, Outcome) {
        let mut progress = Vec::new();
        loop {
            match self.answer(agent, id).await {
                DeviceMessage::Progress(p) => progress.push(p.message.unwrap_or_default()),
                DeviceMessage::Reply(reply) => return (progress, reply.outcome),
                _ => {}
            }
        }
    }

    async fn update(
        &mut self,
        agent: &Agent,
        hello: &Hello,
        id: &str,
        args: Value,
    ) -> (Vec<String>, Outcome) {
        self.send(hello, id, args).await;
        self.outcome(agent, id).await
    }
}

/// Which command an answer is about.
fn about(message: &DeviceMessage) -> &str {
    match message {
        DeviceMessage::Delivered(m) => &m.command_id.0,
        DeviceMessage::Progress(m) => &m.command_id.0,
        DeviceMessage::Reply(m) => &m.command_id.0,
        other => panic!("not an answer: {other:?}"),
    }
}

fn args(url: &str, file: &[u8], signature: Option<String>) -> Value {
    let mut args = json!({
        "url": url,
        "sha256": sha256_hex(file),
        "size": file.len(),
        "version": "2.0.0",
        "arch": own_arch(),
    });
    if let Some(signature) = signature {
        args["signature"] = json!(signature);
    }
    args
}

fn failed_with(outcome: &Outcome, fragment: &str, agent: &Agent) {
    match outcome {
        Outcome::Error {
            code: ErrorCode::Failed,
            message,
        } if message.contains(fragment) => {}
        other => panic!(
            "expected a failure with {fragment:?}, got {other:?}; the agent's log:\n{}",
            agent.log()
        ),
    }
}

fn no_downloads_left(device: &Device) {
    let left: Vec<_> = std::fs::read_dir(device.state.join("update"))
        .map(|entries| entries.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "downloads left behind: {left:?}");
}

// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_installs_hands_over_and_the_device_comes_back_as_the_new_version() {
    let broker = TestBroker::start(support::Devices::new(&[(DEVICE, SECRET)])).await;
    let mut console = Console::new(&broker).await;
    let key = signer();
    let device = Device::new(
        "success",
        &broker,
        &format!("public_key = \"{}\"", public_key(&key)),
    );
    let file = new_version();
    let files = FileServer::start(file.clone(), false, None).await;
    let mut agent = device.start();

    let hello = console.hello(&agent).await;
    assert_eq!(hello.firmware, "1.0.0");
    let update = hello
        .capabilities
        .command("update")
        .expect("update is announced");
    let arch = update.args.iter().find(|a| a.name == "arch").unwrap();
    assert_eq!(
        arch.kind,
        protocol::ArgKind::Choice {
            choices: vec![own_arch().to_owned(), "any".to_owned()]
        },
        "the device takes files for its own architecture, or for any"
    );
    let names: Vec<&str> = update.args.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        ["url", "sha256", "size", "version", "signature", "arch"]
    );

    // A file for another architecture is refused by argument validation.
    let other = ["x86_64", "aarch64", "armv7"]
        .into_iter()
        .find(|a| *a != own_arch())
        .unwrap();
    let mut wrong = args(&files.url(), &file, Some(signature(&key, &file)));
    wrong["arch"] = json!(other);
    let (_, outcome) = console.update(&agent, &hello, "u-arch", wrong).await;
    assert!(
        matches!(&outcome, Outcome::Error { code: ErrorCode::InvalidArguments, message } if message.contains("arch")),
        "{outcome:?}"
    );
    assert!(files.ranges().is_empty(), "nothing was downloaded");

    let (progress, outcome) = console
        .update(
            &agent,
            &hello,
            "u-1",
            args(&files.url(), &file, Some(signature(&key, &file))),
        )
        .await;
    match &outcome {
        Outcome::Ok { result } => {
            assert_eq!(result, &json!({"installed": "2.0.0", "previous": "1.0.0"}));
        }
        other => panic!(
            "not a success: {other:?}; the agent's log:\n{}",
            agent.log()
        ),
    }
    assert!(
        progress
            .iter()
            .any(|p| p.starts_with("downloading: ") && p.contains(" % (") && p.ends_with(" MB)")),
        "{progress:?}"
    );
    let stages: Vec<&str> = progress
        .iter()
        .map(|p| p.split(':').next().unwrap())
        .filter(|stage| *stage != "downloading")
        .collect();
    assert_eq!(stages, ["verifying", "installing", "restarting into 2.0.0"]);
    assert!(progress.len() < 20, "paced: {progress:?}");

    // The old session says bye, and the new version says hello.
    match console.presence(&agent).await {
        DeviceMessage::Bye(bye) => assert_eq!(bye.reason, "update"),
        other => panic!("expected a bye, got {other:?}"),
    }
    let back = console.hello(&agent).await;
    assert_eq!(back.firmware, "2.0.0", "the new version is online");
    assert_ne!(back.session_id, hello.session_id);
    assert!(back.capabilities.command("update").is_some());

    assert_eq!(
        device.executable_bytes(),
        file,
        "the executable is the new file"
    );
    assert_eq!(
        std::fs::read(device.state.join("previous")).unwrap(),
        std::fs::read(env!("CARGO_BIN_EXE_tether-agent")).unwrap(),
        "the previous version is kept"
    );
    no_downloads_left(&device);
    let status = agent
        .exited(PATIENCE)
        .await
        .unwrap_or_else(|| panic!("the old process did not exit; its log:\n{}", agent.log()));
    assert!(status.success(), "{status:?}");
    let pid = agent.new_pid().expect("the new version wrote its pid");
    assert!(alive(pid), "the new version runs on");
    let log = agent.log();
    assert!(log.contains("is online and healthy"), "{log}");
    drop(agent);
    assert!(!alive(pid));
    let _ = std::fs::remove_dir_all(&device.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_download_is_deleted_and_never_run_and_a_second_update_is_refused() {
    let broker = TestBroker::start(support::Devices::new(&[(DEVICE, SECRET)])).await;
    let mut console = Console::new(&broker).await;
    let device = Device::new("corrupted", &broker, "");
    let canary = device.dir.join("executed");
    let intended = new_version();
    // Served instead: a file of the same size that would leave a mark if it ever ran.
    let mut served = script(&format!("touch '{}'", canary.display()), intended.len());
    served.truncate(intended.len());
    let files = FileServer::start(served, false, Some(Duration::from_millis(100))).await;
    let before = device.executable_bytes();
    let agent = device.start();
    let hello = console.hello(&agent).await;

    console
        .send(&hello, "u-1", args(&files.url(), &intended, None))
        .await;
    // While it downloads (slowly), another update is refused.
    let mut first = Vec::new();
    loop {
        let message = console.answer(&agent, "u-1").await;
        let downloading = matches!(&message, DeviceMessage::Progress(p)
            if p.message.as_deref().is_some_and(|m| m.starts_with("downloading: ")));
        first.push(message);
        if downloading {
            break;
        }
    }
    let (_, second) = console
        .update(&agent, &hello, "u-2", args(&files.url(), &intended, None))
        .await;
    assert!(
        matches!(&second, Outcome::Error { code: ErrorCode::Busy, message } if message.contains("already in progress")),
        "{second:?}"
    );
    let (progress, outcome) = console.outcome(&agent, "u-1").await;
    failed_with(&outcome, "verification failed: its SHA-256", &agent);
    assert!(progress.iter().any(|p| p == "verifying"), "{progress:?}");
    assert!(!progress.iter().any(|p| p == "installing"), "{progress:?}");

    assert_eq!(
        device.executable_bytes(),
        before,
        "the executable is unchanged"
    );
    assert!(!device.state.join("previous").exists());
    no_downloads_left(&device);
    assert!(!canary.exists(), "the bad file never ran");
    assert!(
        agent.log().contains("the download is deleted"),
        "{}",
        agent.log()
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&device.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_public_key_a_bad_or_missing_signature_is_refused() {
    let broker = TestBroker::start(support::Devices::new(&[(DEVICE, SECRET)])).await;
    let mut console = Console::new(&broker).await;
    let key = signer();
    let device = Device::new(
        "signature",
        &broker,
        &format!("public_key = \"{}\"", public_key(&key)),
    );
    let file = new_version();
    let files = FileServer::start(file.clone(), false, None).await;
    let before = device.executable_bytes();
    let agent = device.start();
    let hello = console.hello(&agent).await;

    // Signed by another key.
    let impostor = SigningKey::from_bytes(&[9; 32]);
    let (_, outcome) = console
        .update(
            &agent,
            &hello,
            "u-1",
            args(&files.url(), &file, Some(signature(&impostor, &file))),
        )
        .await;
    failed_with(&outcome, "verification failed: bad signature", &agent);
    assert_eq!(files.ranges().len(), 1, "downloaded, then refused");
    no_downloads_left(&device);

    // Not signed at all: refused before anything is downloaded.
    let (_, outcome) = console
        .update(&agent, &hello, "u-2", args(&files.url(), &file, None))
        .await;
    failed_with(&outcome, "verification failed: bad signature", &agent);
    assert_eq!(files.ranges().len(), 1);

    assert_eq!(
        device.executable_bytes(),
        before,
        "the executable is unchanged"
    );
    assert!(!device.state.join("previous").exists());
    drop(agent);
    let _ = std::fs::remove_dir_all(&device.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_that_crashes_is_rolled_back() {
    let broker = TestBroker::start(support::Devices::new(&[(DEVICE, SECRET)])).await;
    let mut console = Console::new(&broker).await;
    let device = Device::new("crash", &broker, "");
    let file = script("exit 3", 200_000);
    let files = FileServer::start(file.clone(), false, None).await;
    let before = device.executable_bytes();
    let mut agent = device.start();
    let hello = console.hello(&agent).await;

    let (progress, outcome) = console
        .update(&agent, &hello, "u-1", args(&files.url(), &file, None))
        .await;
    assert!(
        matches!(&outcome, Outcome::Ok { result } if result["installed"] == "2.0.0"),
        "installed: {outcome:?}; the agent's log:\n{}",
        agent.log()
    );
    assert!(
        progress.iter().any(|p| p == "restarting into 2.0.0"),
        "{progress:?}"
    );

    match console.presence(&agent).await {
        DeviceMessage::Bye(bye) => assert_eq!(bye.reason, "update"),
        other => panic!("expected a bye, got {other:?}"),
    }
    // The old version comes back, as itself.
    let back = console.hello(&agent).await;
    assert_eq!(back.firmware, "1.0.0", "the old version is back");
    assert_ne!(back.session_id, hello.session_id);
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the old process goes on"
    );
    assert!(
        device.executable_bytes() == before,
        "the executable is the old one again"
    );
    assert!(!device.state.join("trial.healthy").exists());
    let log = agent.log();
    assert!(
        log.contains("rolled back: the new version exited with status 3 before it was healthy"),
        "{log}"
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&device.dir);
}

/// A new version that never comes online: it writes its pid, then sleeps.
fn silent_version(dir: &std::path::Path) -> Vec<u8> {
    script(
        &format!(
            "echo $$ > '{}'\nexec sleep 600",
            dir.join("silent.pid").display()
        ),
        100_000,
    )
}

fn silent_pid(dir: &std::path::Path) -> Option<i32> {
    std::fs::read_to_string(dir.join("silent.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_that_does_not_come_online_in_time_is_killed_and_rolled_back() {
    let broker = TestBroker::start(support::Devices::new(&[(DEVICE, SECRET)])).await;
    let mut console = Console::new(&broker).await;
    let device = Device::new("silent", &broker, "");
    std::fs::write(
        &device.config,
        std::fs::read_to_string(&device.config)
            .unwrap()
            .replace("health_timeout_s = 60", "health_timeout_s = 5"),
    )
    .unwrap();
    let file = silent_version(&device.dir);
    let files = FileServer::start(file.clone(), false, None).await;
    let before = device.executable_bytes();
    let agent = device.start();
    let hello = console.hello(&agent).await;

    let (_, outcome) = console
        .update(&agent, &hello, "u-1", args(&files.url(), &file, None))
        .await;
    assert!(matches!(&outcome, Outcome::Ok { .. }), "{outcome:?}");
    let back = console.hello(&agent).await;
    assert_eq!(back.firmware, "1.0.0", "the old version is back");
    let pid = silent_pid(&device.dir).expect("the new version ran");
    assert!(!alive(pid), "the new version was killed");
    assert!(
        device.executable_bytes() == before,
        "the old executable is back"
    );
    let log = agent.log();
    assert!(
        log.contains("rolled back: the new version was not healthy within 5 s"),
        "{log}"
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&device.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_agent_during_the_trial_kills_the_new_version_and_rolls_back() {
    let broker = TestBroker::start(support::Devices::new(&[(DEVICE, SECRET)])).await;
    let mut console = Console::new(&broker).await;
    let device = Device::new("stopped", &broker, "");
    let file = silent_version(&device.dir);
    let files = FileServer::start(file.clone(), false, None).await;
    let before = device.executable_bytes();
    let mut agent = device.start();
    let hello = console.hello(&agent).await;

    let (_, outcome) = console
        .update(&agent, &hello, "u-1", args(&files.url(), &file, None))
        .await;
    assert!(matches!(&outcome, Outcome::Ok { .. }), "{outcome:?}");
    let start = Instant::now();
    let pid = loop {
        if let Some(pid) = silent_pid(&device.dir) {
            break pid;
        }
        assert!(start.elapsed() < PATIENCE, "the new version never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(device.executable_bytes(), file, "on trial");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(agent.child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = agent
        .exited(Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("the agent did not stop; its log:\n{}", agent.log()));
    assert!(status.success(), "{status:?}");
    let start = Instant::now();
    while alive(pid) && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!alive(pid), "the new version was killed");
    assert!(
        device.executable_bytes() == before,
        "the old executable is back"
    );
    let log = agent.log();
    assert!(
        log.contains("rolled back: the update was interrupted"),
        "{log}"
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&device.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_half_way_resumes_where_it_stopped() {
    let broker = TestBroker::start(support::Devices::new(&[(DEVICE, SECRET)])).await;
    let mut console = Console::new(&broker).await;
    let device = Device::new("resume", &broker, "");
    let file = new_version();
    let size = file.len() as u64;
    let files = FileServer::start(file.clone(), true, None).await;
    let agent = device.start();
    let hello = console.hello(&agent).await;

    let (progress, outcome) = console
        .update(&agent, &hello, "u-1", args(&files.url(), &file, None))
        .await;
    assert!(
        matches!(&outcome, Outcome::Ok { .. }),
        "{outcome:?}; the agent's log:\n{}",
        agent.log()
    );
    let ranges = files.ranges();
    assert_eq!(ranges.first(), Some(&None), "{ranges:?}");
    assert!(
        ranges.contains(&Some(size / 2)),
        "resumed from the half: {ranges:?}"
    );
    let served = files.served.bytes.load(Ordering::SeqCst);
    assert!(
        (served as f64) < 1.6 * size as f64,
        "{served} bytes served for a file of {size}"
    );
    assert!(
        progress
            .iter()
            .any(|p| p.starts_with("downloading: resuming at ")),
        "{progress:?}"
    );
    // Let it come back as the new version before it is all stopped.
    loop {
        if let DeviceMessage::Hello(back) = console.presence(&agent).await {
            assert_eq!(back.firmware, "2.0.0");
            break;
        }
    }
    assert_eq!(device.executable_bytes(), file);
    drop(agent);
    let _ = std::fs::remove_dir_all(&device.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_install_step_decides_by_its_exit_status() {
    let broker = TestBroker::start(support::Devices::new(&[(DEVICE, SECRET)])).await;
    let mut console = Console::new(&broker).await;
    let device = Device::new(
        "custom",
        &broker,
        r#"install = ["/bin/sh", "-c", "echo installing {version} from $0; exit 4", "{file}"]"#,
    );
    let file = new_version();
    let files = FileServer::start(file.clone(), false, None).await;
    let before = device.executable_bytes();
    let agent = device.start();
    let hello = console.hello(&agent).await;

    let (progress, outcome) = console
        .update(&agent, &hello, "u-1", args(&files.url(), &file, None))
        .await;
    failed_with(&outcome, "install failed: exited with code 4", &agent);
    let verified = device.state.join("update").join(sha256_hex(&file));
    failed_with(
        &outcome,
        &format!("installing 2.0.0 from {}", verified.display()),
        &agent,
    );
    assert!(progress.iter().any(|p| p == "installing"), "{progress:?}");
    assert_eq!(
        device.executable_bytes(),
        before,
        "the executable is unchanged"
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&device.dir);
}

#[test]
fn check_config_places_update_mistakes_at_their_line() {
    let dir = scratch("check");
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.join("agent.toml");
    let check = |text: &str| {
        std::fs::write(&config, text).unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_tether-agent"))
            .arg("--check-config")
            .arg("--config")
            .arg(&config)
            .env_clear()
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let head =
        format!("device_id = \"{DEVICE}\"\nsecret_file = \"secret\"\n\n[update]\nenabled = true\n");

    let (code, _, stderr) = check(&format!("{head}public_key = \"00\"\nrollback = true\n"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("agent.toml:7:") && stderr.contains("rollback"),
        "an unknown key, at its line: {stderr}"
    );

    let (code, _, stderr) = check(&format!(
        "{head}public_key = \"00\"\nhealth_timeout_s = 4\n"
    ));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("agent.toml:6:") && stderr.contains("update.public_key"),
        "{stderr}"
    );
    assert!(
        stderr.contains("agent.toml:7:") && stderr.contains("health_timeout_s is 4"),
        "{stderr}"
    );

    let (code, stdout, stderr) = check(&format!(
        "{head}public_key = \"{}\"\n",
        public_key(&signer())
    ));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("updates on (signed only)"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_the_table_no_update_is_announced() {
    let dir = scratch("off");
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    for text in [
        "device_id = \"d-1\"\nsecret_file = \"secret\"\n".to_owned(),
        "device_id = \"d-1\"\nsecret_file = \"secret\"\n[update]\nenabled = false\n".to_owned(),
    ] {
        let loaded =
            agent::config_file::parse(&text, &dir, &agent::config_file::Overrides::default())
                .unwrap();
        let device = agent::real::RealDevice::configured(&loaded, Vec::new());
        let capabilities = agent::Handler::capabilities(&device);
        assert!(capabilities.command("update").is_none(), "{text}");
    }
    let text = "device_id = \"d-1\"\nsecret_file = \"secret\"\n[update]\nenabled = true\n";
    let loaded =
        agent::config_file::parse(text, &dir, &agent::config_file::Overrides::default()).unwrap();
    let device = agent::real::RealDevice::configured(&loaded, Vec::new());
    assert!(
        agent::Handler::capabilities(&device)
            .command("update")
            .is_some()
    );
    // No action may take the name.
    let text = "device_id = \"d-1\"\nsecret_file = \"secret\"\n[[actions]]\nname = \"update\"\nprogram = \"/bin/true\"\n";
    let problems = agent::config_file::parse(text, &dir, &agent::config_file::Overrides::default())
        .unwrap_err();
    assert!(
        problems.iter().any(|p| p.message.contains("built-in")),
        "{problems:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
