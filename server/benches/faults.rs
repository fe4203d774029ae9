//! The fault suite: real processes under a steady command load, one fault at a time,
//! and what every command came to. RELIABILITY.md reports its runs.
//!
//! ```text
//! cargo build --release -p agent --bin tether-agent
//! cargo bench -p server --bench faults -- [fault ...]
//! ```
//!
//! Each fault gets a fresh `tether-server` (release, embedded broker, SQLite, fixed
//! ports so that a restarted one is found where it was) and `TETHER_FAULTS_DEVICES`
//! real `tether-agent` processes (default 12), each with one action, `mark`, that
//! appends the command's tag to a file of its own: the record of what each device
//! really carried out. A load of `TETHER_FAULTS_RATE` commands a second (default 200)
//! goes through the HTTP API to the devices in turn, for three phases of
//! `TETHER_FAULTS_PHASE_SECS` (default 15): before, during and after the fault. Then
//! the suite waits past every command's deadline and reads what became of each.
//!
//! Faults (all by default):
//! - `agent-kill`: a third of the agents are killed with SIGKILL, and started again
//!   after the phase;
//! - `link-cut`: a third of the agents reach the broker through a link that is
//!   blackholed (nothing passes, nothing is closed) for the phase, then healed;
//! - `link-slow`: the same link delays every chunk by 400 ms for the phase;
//! - `server-kill`: the server is killed with SIGKILL, and started again three seconds
//!   later on the same ports and database.
//!
//! For each fault, one line: commands sent, refused at once (and why), their terminal
//! statuses, those left non-terminal past their deadline (must be 0), duplicates
//! carried out (must be 0), commands carried out that ended `failed`, `offline` or
//! `rejected` (the device did it, the status says it did not: must be 0), and the
//! time from the fault's end until every device it hit had succeeded again (recovery:
//! for each, the first command sent to it after the fault that succeeded).

use std::{
    collections::{BTreeMap, HashMap},
    io::{BufRead as _, BufReader},
    net::{SocketAddr, TcpListener},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use protocol::{
    CommandStatus,
    api::{ApiError, CommandView},
    auth::Role,
    fleet::DevicePage,
};
use serde_json::json;
use testkit::fault_link::FaultLink;

#[path = "support/host.rs"]
mod host;
use host::{Args, Process, agent_binary, cpu_model, setting};

const FAULTS: [&str; 4] = ["agent-kill", "link-cut", "link-slow", "server-kill"];
const PHASES: [&str; 3] = ["before", "during", "after"];
/// Each command's deadline.
const TIMEOUT_MS: u64 = 10_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::from_env();
    let faults: Vec<String> = match args.get(0) {
        None => FAULTS.iter().map(|f| (*f).to_owned()).collect(),
        Some(_) => (0..)
            .map_while(|i| args.get(i).map(str::to_owned))
            .collect(),
    };
    for fault in &faults {
        anyhow::ensure!(
            FAULTS.contains(&fault.as_str()),
            "unknown fault {fault}: one of {FAULTS:?}"
        );
    }
    let settings = Settings {
        devices: setting("TETHER_FAULTS_DEVICES")?.unwrap_or(12),
        rate: setting("TETHER_FAULTS_RATE")?.unwrap_or(200),
        phase: Duration::from_secs(setting("TETHER_FAULTS_PHASE_SECS")?.unwrap_or(15)),
        agent: agent_binary(),
    };
    anyhow::ensure!(
        settings.agent.exists(),
        "no agent at {}: cargo build --release -p agent --bin tether-agent",
        settings.agent.display()
    );
    println!(
        "fault suite: {} devices, {} commands/s, phases of {:?}; {} ({} cores)",
        settings.devices,
        settings.rate,
        settings.phase,
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| fault | sent | refused at once | terminal statuses | non-terminal past deadline | duplicates carried out | carried out, status says not | recovery |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut broken = Vec::new();
    let mut details = Vec::new();
    for fault in &faults {
        let dir =
            std::env::temp_dir().join(format!("tether-faults-{fault}-{:08x}", fastrand::u32(..)));
        std::fs::create_dir_all(&dir)?;
        let report = run(fault, &dir, &settings).await?;
        println!("{}", report.row(fault));
        details.push(report.detail());
        if report.kept_promises() {
            let _ = std::fs::remove_dir_all(&dir);
        } else {
            println!("  (kept for a look: {})", dir.display());
            broken.push(fault.clone());
        }
    }
    println!();
    for (fault, detail) in faults.iter().zip(&details) {
        println!("{fault}\n{detail}");
    }
    anyhow::ensure!(broken.is_empty(), "promises broken under {broken:?}");
    Ok(())
}

struct Settings {
    devices: usize,
    rate: u32,
    phase: Duration,
    agent: PathBuf,
}

/// What one fault came to.
#[derive(Default)]
struct Report {
    sent: usize,
    refused: BTreeMap<String, usize>,
    statuses: BTreeMap<&'static str, usize>,
    stuck: usize,
    duplicates: usize,
    dishonest: usize,
    recovery: Option<Duration>,
    /// The terminal statuses of commands to the devices the fault hit, by phase.
    affected: [BTreeMap<&'static str, usize>; 3],
    /// What the watching browser showed of the commands to the devices the fault hit:
    /// another status than the truth, or nothing.
    browser_wrong: usize,
    browser_missing: usize,
    browser_reconnects: usize,
}

impl Report {
    /// What the devices the fault hit saw, phase by phase.
    fn detail(&self) -> String {
        let phases: Vec<String> = PHASES
            .iter()
            .enumerate()
            .map(|(n, phase)| {
                let mut parts: Vec<String> = self.affected[n]
                    .iter()
                    .map(|(status, count)| format!("{status} {count}"))
                    .collect();
                parts.extend(self.refused.iter().filter_map(|(k, v)| {
                    k.strip_prefix(phase).map(|why| format!("refused{why} {v}"))
                }));
                format!("{phase}: {}", parts.join(", "))
            })
            .collect();
        format!(
            "  devices hit: {}\n  a browser watching them: {} shown with another status than the truth, {} not shown, {} reconnections",
            phases.join("; "),
            self.browser_wrong,
            self.browser_missing,
            self.browser_reconnects
        )
    }

    fn kept_promises(&self) -> bool {
        self.stuck == 0
            && self.duplicates == 0
            && self.dishonest == 0
            && self.browser_wrong == 0
            && self.recovery.is_some()
    }

    fn row(&self, fault: &str) -> String {
        let list = |map: Vec<(String, usize)>| {
            map.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "| {fault} | {} | {} | {} | {} | {} | {} | {} |",
            self.sent,
            list(
                self.refused
                    .iter()
                    .filter(|(k, _)| !PHASES.iter().any(|p| k.starts_with(p)))
                    .map(|(k, v)| (k.clone(), *v))
                    .collect()
            ),
            list(
                self.statuses
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), *v))
                    .collect()
            ),
            self.stuck,
            self.duplicates,
            self.dishonest,
            self.recovery.map_or_else(
                || "never".to_owned(),
                |d| format!("{:.1} s", d.as_secs_f64())
            )
        )
    }
}

/// A command the API took.
struct Sent {
    id: String,
    tag: String,
    at: Instant,
    /// To one of the devices the fault hit.
    affected: bool,
    /// Before (0), during (1) or after (2) the fault.
    phase: u8,
}

/// The server under test, on fixed ports so that a restarted one is where it was.
struct Server {
    dir: PathBuf,
    database: String,
    http: SocketAddr,
    amqp: SocketAddr,
    process: Option<Process>,
}

impl Server {
    fn start(&mut self) -> anyhow::Result<()> {
        let binary = std::env::var_os("TETHER_SERVER_BIN")
            .map_or_else(|| env!("CARGO_BIN_EXE_tether-server").into(), PathBuf::from);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))?;
        let mut child = Command::new(binary)
            .env("TETHER_ADDR", self.http.to_string())
            .env("TETHER_BROKER_ADDR", self.amqp.to_string())
            .env("TETHER_DATABASE_URL", &self.database)
            .env("TETHER_DATA_DIR", self.dir.join("data"))
            .env_remove("TETHER_AMQP_URL")
            .env("RUST_LOG", "warn,server=info,broker=info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let (ready, listening) = mpsc::channel();
        let copy = self.dir.join("server.out");
        std::thread::spawn(move || {
            let mut out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(copy)
                .ok();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("listening on http://") {
                    let _ = ready.send(());
                }
                if let Some(out) = &mut out {
                    use std::io::Write as _;
                    let _ = writeln!(out, "{line}");
                }
            }
        });
        self.process = Some(Process(child));
        listening
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| anyhow::anyhow!("the server did not start (see its log)"))?;
        Ok(())
    }

    fn kill(&mut self) {
        // Process's drop kills with SIGKILL and reaps.
        self.process = None;
    }

    fn base(&self) -> String {
        format!("http://{}", self.http)
    }
}

/// A port free now.
fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// One device: its id, configuration and the file of what it carried out.
struct Device {
    id: String,
    config: PathBuf,
    marks: PathBuf,
    process: Option<Process>,
}

impl Device {
    fn start(&mut self, agent: &Path, dir: &Path) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{}.log", self.id)))?;
        let child = Command::new(agent)
            .env("TETHER_AGENT_CONFIG", &self.config)
            .env("RUST_LOG", "info,lapin=off")
            .env("NO_COLOR", "1")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.process = Some(Process(child));
        Ok(())
    }
}

async fn run(fault: &str, dir: &Path, settings: &Settings) -> anyhow::Result<Report> {
    let database = format!("sqlite://{}", dir.join("tether.db").display());
    let accounts = store::Store::open(&database).await?;
    let (token, _) = testkit::user_token(&accounts, Role::Admin, &[]).await;
    let mut server = Server {
        dir: dir.to_owned(),
        database,
        http: free_port()?,
        amqp: free_port()?,
        process: None,
    };
    server.start()?;
    let client = testkit::api_client(&token);

    // A third of the devices go through a link that fails on command.
    let link = FaultLink::to(server.amqp).await?;
    let through_link = settings.devices.div_ceil(3);
    let mut devices = Vec::new();
    for n in 0..settings.devices {
        let id = format!("faults-{n}");
        let secret = accounts.provision_device(&id).await?;
        let secret_file = dir.join(format!("{id}.secret"));
        std::fs::write(&secret_file, &secret)?;
        std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600))?;
        let marks = dir.join(format!("{id}.marks"));
        let broker = if n < through_link {
            link.addr()
        } else {
            server.amqp
        };
        let config = dir.join(format!("{id}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"amqp_url = "amqp://{broker}/%2f"
device_id = "{id}"
secret_file = "{secret}"
server_accounts = ["tether-server"]
kind = "faults"
heartbeat_ms = 1000
telemetry_ms = 0

[[actions]]
name = "mark"
program = "/bin/sh"
argv = ["-c", "printf '%s\n' \"$0\" >> \"$1\"", "{{tag}}", "{marks}"]
args = [{{ name = "tag", type = "string", max_len = 64, required = true }}]
"#,
                secret = secret_file.display(),
                marks = marks.display(),
            ),
        )?;
        let mut device = Device {
            id,
            config,
            marks,
            process: None,
        };
        device.start(&settings.agent, dir)?;
        devices.push(device);
    }
    online(
        &client,
        &server.base(),
        settings.devices,
        Duration::from_secs(60),
    )
    .await?;

    // A browser watching the devices the fault hits.
    let hit: Vec<String> = devices[..through_link]
        .iter()
        .map(|d| d.id.clone())
        .collect();
    let browser = Arc::new(Browser::default());
    let (stop_browser, browser_stopped) = tokio::sync::watch::channel(false);
    let watching = tokio::spawn(browser.clone().watch(
        format!("ws://{}/api/v1/live?watch={}", server.http, hit.join(",")),
        token.clone(),
        browser_stopped,
    ));

    // The load, in the background, through every phase.
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let refused: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let (stop_load, load_stopped) = tokio::sync::watch::channel(false);
    let phase = Arc::new(std::sync::atomic::AtomicU8::new(0));
    let load = tokio::spawn(
        Load {
            client: client.clone(),
            base: server.base(),
            devices: devices.iter().map(|d| d.id.clone()).collect(),
            affected: if fault == "server-kill" {
                settings.devices
            } else {
                through_link
            },
            rate: settings.rate,
            phase: phase.clone(),
            sent: sent.clone(),
            refused: refused.clone(),
        }
        .run(load_stopped),
    );

    tokio::time::sleep(settings.phase).await;
    phase.store(1, std::sync::atomic::Ordering::SeqCst);
    let mut restarted = None;
    let affected = &mut devices[..through_link];
    match fault {
        "agent-kill" => {
            for device in affected.iter_mut() {
                device.process = None;
            }
            tokio::time::sleep(settings.phase).await;
            for device in affected.iter_mut() {
                device.start(&settings.agent, dir)?;
            }
        }
        "link-cut" => {
            link.blackhole();
            if std::env::var_os("TETHER_FAULTS_VERBOSE").is_some() {
                let started = Instant::now();
                while started.elapsed() < settings.phase {
                    let view: serde_json::Value = client
                        .get(format!("{}/api/v1/devices/faults-0", server.base()))
                        .send()
                        .await?
                        .json()
                        .await?;
                    println!(
                        "  {:?} faults-0 online {} last_seen {}",
                        started.elapsed(),
                        view["online"],
                        view["last_seen_ms"]
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            } else {
                tokio::time::sleep(settings.phase).await;
            }
            link.heal();
        }
        "link-slow" => {
            link.delay(Duration::from_millis(400));
            tokio::time::sleep(settings.phase).await;
            link.heal();
        }
        "server-kill" => {
            server.kill();
            tokio::time::sleep(Duration::from_secs(3)).await;
            server.start()?;
            // Recovery counts from the restart.
            restarted = Some(Instant::now());
            tokio::time::sleep(settings.phase.saturating_sub(Duration::from_secs(3))).await;
        }
        other => anyhow::bail!("unknown fault {other}"),
    }
    let healed = restarted.unwrap_or_else(Instant::now);
    phase.store(2, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(settings.phase).await;
    let _ = stop_load.send(true);
    load.await?;

    // Past every deadline, with room for the timer.
    tokio::time::sleep(Duration::from_millis(TIMEOUT_MS + 5_000)).await;
    let sent = std::mem::take(&mut *sent.lock().expect("sent"));
    let mut report = Report {
        sent: sent.len(),
        refused: std::mem::take(&mut *refused.lock().expect("refused")),
        ..Report::default()
    };
    let mut carried_out: HashMap<String, usize> = HashMap::new();
    for device in &devices {
        if let Ok(text) = std::fs::read_to_string(&device.marks) {
            for tag in text.lines() {
                *carried_out.entry(tag.to_owned()).or_default() += 1;
            }
        }
    }
    report.duplicates = carried_out.values().map(|n| n.saturating_sub(1)).sum();
    let _ = stop_browser.send(true);
    let _ = watching.await;
    report.browser_reconnects = browser
        .reconnects
        .load(std::sync::atomic::Ordering::Relaxed);
    let shown = std::mem::take(&mut *browser.statuses.lock().expect("statuses"));
    let now_ms = common::now_ms();
    // Per device the fault hit, the first command sent after it that succeeded.
    let mut first_success: HashMap<String, Duration> = HashMap::new();
    for command in &sent {
        let view: CommandView = client
            .get(format!("{}/api/v1/commands/{}", server.base(), command.id))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        *report.statuses.entry(view.status.as_str()).or_default() += 1;
        if hit.iter().any(|id| *id == view.device_id.as_str()) {
            match shown.get(&command.id) {
                Some(status) if *status == view.status => {}
                Some(_) => report.browser_wrong += 1,
                None => report.browser_missing += 1,
            }
        }
        if command.affected {
            *report.affected[usize::from(command.phase)]
                .entry(view.status.as_str())
                .or_default() += 1;
            if std::env::var_os("TETHER_FAULTS_VERBOSE").is_some()
                && view.status != CommandStatus::Succeeded
            {
                println!(
                    "  {} {:?} +{} ms: {} ({})",
                    PHASES[usize::from(command.phase)],
                    view.status,
                    view.updated_ms.saturating_sub(view.created_ms),
                    view.error.as_deref().unwrap_or_default(),
                    carried_out.contains_key(&command.tag)
                );
            }
        }
        if !view.status.is_terminal() && now_ms > view.deadline_ms {
            report.stuck += 1;
        }
        let done = carried_out.contains_key(&command.tag);
        if done
            && matches!(
                view.status,
                CommandStatus::Failed | CommandStatus::Offline | CommandStatus::Rejected
            )
        {
            report.dishonest += 1;
        }
        if view.status == CommandStatus::Succeeded && command.affected && command.at >= healed {
            let after = command.at - healed;
            let first = first_success
                .entry(view.device_id.to_string())
                .or_insert(after);
            *first = (*first).min(after);
        }
    }
    // Recovered once every device the fault hit works again.
    let hit_count = if fault == "server-kill" {
        settings.devices
    } else {
        through_link
    };
    if first_success.len() == hit_count {
        report.recovery = first_success.values().max().copied();
    }
    drop(devices);
    server.kill();
    Ok(report)
}

/// The command load, and where it records what became of each send.
struct Load {
    client: reqwest::Client,
    base: String,
    devices: Vec<String>,
    /// The first this many devices are the ones the fault hits.
    affected: usize,
    rate: u32,
    /// The phase now, stamped on each command.
    phase: Arc<std::sync::atomic::AtomicU8>,
    sent: Arc<Mutex<Vec<Sent>>>,
    /// Refusals by reason (and, for the devices hit, by phase and reason).
    refused: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl Load {
    /// Sends `rate` commands a second to `devices` in turn until told to stop.
    async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let Self {
            client,
            base,
            devices,
            affected,
            rate,
            phase,
            sent,
            refused,
        } = self;
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0u64.. {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => break,
            }
            let device = devices[n as usize % devices.len()].clone();
            let affected = n as usize % devices.len() < affected;
            let (client, base, sent, refused) =
                (client.clone(), base.clone(), sent.clone(), refused.clone());
            let phase = phase.load(std::sync::atomic::Ordering::SeqCst);
            tasks.spawn(async move {
                let tag = format!("t{n}-{:08x}", fastrand::u32(..));
                let at = Instant::now();
                let response = client
                    .post(format!("{base}/api/v1/devices/{device}/commands"))
                    .json(&json!({"name": "mark", "args": {"tag": tag}, "timeout_ms": TIMEOUT_MS}))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                let why = match response {
                    Ok(response) if response.status().is_success() => {
                        match response.json::<CommandView>().await {
                            Ok(view) => {
                                sent.lock().expect("sent").push(Sent {
                                    id: view.id.to_string(),
                                    tag,
                                    at,
                                    affected,
                                    phase,
                                });
                                return;
                            }
                            Err(e) => format!("unreadable answer ({e})"),
                        }
                    }
                    Ok(response) => response
                        .json::<ApiError>()
                        .await
                        .map_or_else(|_| "unreadable refusal".to_owned(), |e| e.code),
                    Err(e) if e.is_connect() => "unreachable".to_owned(),
                    Err(e) if e.is_timeout() => "no answer in 5 s".to_owned(),
                    Err(_) => "connection lost".to_owned(),
                };
                let mut refused = refused.lock().expect("refused");
                *refused.entry(why.clone()).or_default() += 1;
                if affected {
                    *refused
                        .entry(format!("{} {why}", PHASES[usize::from(phase)]))
                        .or_default() += 1;
                }
            });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// A browser tab watching the devices a fault hits over the live channel, as a person
/// would: it keeps what its snapshot and events say of each command, reconnects when its
/// socket ends (a server restart) and takes the fresh snapshot as the truth.
#[derive(Default)]
struct Browser {
    statuses: Mutex<HashMap<String, CommandStatus>>,
    reconnects: std::sync::atomic::AtomicUsize,
}

impl Browser {
    fn take(&self, command: &CommandView) {
        let mut statuses = self.statuses.lock().expect("statuses");
        let known = statuses
            .entry(command.id.to_string())
            .or_insert(command.status);
        // Never back: a status only moves on.
        if !known.is_terminal() {
            *known = command.status;
        }
    }

    async fn watch(
        self: Arc<Self>,
        url: String,
        token: String,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        use futures_util::StreamExt as _;
        use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};
        loop {
            let Ok(mut request) = url.as_str().into_client_request() else {
                return;
            };
            if let Ok(value) = format!("Bearer {token}").parse() {
                request.headers_mut().insert("authorization", value);
            }
            if let Ok((mut socket, _)) = tokio_tungstenite::connect_async(request).await {
                loop {
                    let message = tokio::select! {
                        message = socket.next() => message,
                        _ = stop.changed() => return,
                    };
                    let text = match message {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(_)) => continue,
                        _ => break,
                    };
                    match serde_json::from_str::<protocol::api::LiveEvent>(&text) {
                        Ok(protocol::api::LiveEvent::Snapshot { commands, .. }) => {
                            for command in &commands {
                                self.take(command);
                            }
                        }
                        Ok(protocol::api::LiveEvent::CommandUpdated { command }) => {
                            self.take(&command);
                        }
                        _ => {}
                    }
                }
            }
            self.reconnects
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// Waits until `count` devices are online.
async fn online(
    client: &reqwest::Client,
    base: &str,
    count: usize,
    within: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let page: Option<DevicePage> = match client
            .get(format!("{base}/api/v1/devices?status=online&limit=1"))
            .send()
            .await
        {
            Ok(response) => response.json().await.ok(),
            Err(_) => None,
        };
        if page.is_some_and(|page| page.total as usize >= count) {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < within,
            "the devices did not all come online within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
