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
//!   later on the same ports and database;
//! - `rabbit-kill`, `rabbit-stop`, `server-kill-rabbit`: on a RabbitMQ node of the
//!   suite's own (`scripts/identity-broker.sh`, devices admitted by Tether's HTTP auth
//!   backend as in a deployment): the node killed with SIGKILL and started again; the
//!   node stopped for `TETHER_FAULTS_OUTAGE_SECS` (default 60) and started again; the
//!   server killed with SIGKILL and started again three seconds later;
//! - `postgres-restart`: the store is a PostgreSQL of the suite's own (initdb in the
//!   fault's folder), stopped at once (`pg_ctl stop -m immediate`, as a crash) for the
//!   phase and started again.
//!
//! Besides the commands, `TETHER_FAULTS_METERS` simulated meters (default 4) publish a
//! reading every 25 ms each, with publisher confirms, reconnecting whenever their
//! connection ends; at the end, every reading the broker confirmed is looked up in the
//! store (readings lost must be 0, except where a fault takes the broker's queued
//! readings with it, which the design allows: see `readings_at_risk`).
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

const FAULTS: [&str; 8] = [
    "agent-kill",
    "link-cut",
    "link-slow",
    "server-kill",
    "rabbit-kill",
    "rabbit-stop",
    "server-kill-rabbit",
    "postgres-restart",
];
const PHASES: [&str; 3] = ["before", "during", "after"];
/// Each command's deadline.
const TIMEOUT_MS: u64 = 10_000;
/// How often each meter publishes a reading (40 a second: under the 50 a second a
/// device may send).
const METER_EVERY: Duration = Duration::from_millis(25);

/// Whether the fault runs on a RabbitMQ node of the suite's own (else on the server's
/// embedded broker).
fn on_rabbitmq(fault: &str) -> bool {
    matches!(fault, "rabbit-kill" | "rabbit-stop" | "server-kill-rabbit")
}

/// Whether the fault hits every device (else only the third behind the fault link).
fn hits_all(fault: &str) -> bool {
    !matches!(fault, "agent-kill" | "link-cut" | "link-slow")
}

/// Why the fault may lose readings the broker had confirmed, when the design allows it;
/// `None` when every confirmed reading must be stored.
fn readings_at_risk(fault: &str) -> Option<&'static str> {
    match fault {
        "server-kill" => Some("the embedded broker's queues live in the killed process"),
        "rabbit-kill" | "rabbit-stop" => Some(
            "readings are published transient, and RabbitMQ drops transient messages when it stops",
        ),
        _ => None,
    }
}

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
        outage: Duration::from_secs(setting("TETHER_FAULTS_OUTAGE_SECS")?.unwrap_or(60)),
        meters: setting("TETHER_FAULTS_METERS")?.unwrap_or(4),
        agent: agent_binary(),
        server: std::env::var_os("TETHER_SERVER_BIN")
            .map_or_else(|| env!("CARGO_BIN_EXE_tether-server").into(), PathBuf::from),
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
        "| fault | sent | refused at once | terminal statuses | non-terminal past deadline | duplicates carried out | carried out, status says not | readings confirmed | readings lost | recovery |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
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
    /// How long `rabbit-stop` keeps the node down.
    outage: Duration,
    meters: usize,
    agent: PathBuf,
    server: PathBuf,
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
    /// Readings the broker confirmed, those of them not stored, and why the design
    /// allows that under this fault (when it does).
    readings_confirmed: usize,
    readings_lost: usize,
    readings_at_risk: Option<&'static str>,
    /// Readings published whose confirm never came (the connection ended first), and
    /// how many of those were stored all the same.
    readings_unconfirmed: usize,
    readings_unconfirmed_stored: usize,
    meter_reconnects: usize,
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
        let at_risk = self
            .readings_at_risk
            .map_or_else(String::new, |why| format!(" (allowed here: {why})"));
        format!(
            "  devices hit: {}\n  a browser watching them: {} shown with another status than the truth, {} not shown, {} reconnections\n  readings: {} confirmed by the broker, {} of them not stored{at_risk}; {} published without a confirm (the connection ended), {} of those stored; the meters reconnected {} times",
            phases.join("; "),
            self.browser_wrong,
            self.browser_missing,
            self.browser_reconnects,
            self.readings_confirmed,
            self.readings_lost,
            self.readings_unconfirmed,
            self.readings_unconfirmed_stored,
            self.meter_reconnects,
        )
    }

    fn kept_promises(&self) -> bool {
        self.stuck == 0
            && self.duplicates == 0
            && self.dishonest == 0
            && self.browser_wrong == 0
            && (self.readings_lost == 0 || self.readings_at_risk.is_some())
            && self.readings_confirmed > 0
            && self.recovery.is_some()
    }

    fn row(&self, fault: &str) -> String {
        let list = |map: Vec<(String, usize)>| {
            map.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let lost = if self.readings_at_risk.is_some() && self.readings_lost > 0 {
            format!("{} (allowed)", self.readings_lost)
        } else {
            self.readings_lost.to_string()
        };
        format!(
            "| {fault} | {} | {} | {} | {} | {} | {} | {} | {lost} | {} |",
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
            self.readings_confirmed,
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
    device: String,
    tag: String,
    at: Instant,
    /// To one of the devices the fault hit.
    affected: bool,
    /// Before (0), during (1) or after (2) the fault.
    phase: u8,
}

/// The server under test, on fixed ports so that a restarted one is where it was.
struct Server {
    binary: PathBuf,
    dir: PathBuf,
    database: String,
    http: SocketAddr,
    /// Its embedded broker's address, or the RabbitMQ it uses (its URL).
    broker: Broker,
    process: Option<Process>,
}

enum Broker {
    Embedded(SocketAddr),
    RabbitMq(String),
}

impl Server {
    /// Where devices reach the broker.
    fn amqp(&self) -> SocketAddr {
        match &self.broker {
            Broker::Embedded(addr) => *addr,
            Broker::RabbitMq(url) => url
                .split('@')
                .nth(1)
                .and_then(|rest| rest.split('/').next())
                .and_then(|addr| addr.parse().ok())
                .expect("the suite's RabbitMQ URL names 127.0.0.1:<port>"),
        }
    }

    fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))?;
        let mut command = Command::new(&self.binary);
        match &self.broker {
            Broker::Embedded(addr) => command
                .env("TETHER_BROKER_ADDR", addr.to_string())
                .env_remove("TETHER_AMQP_URL"),
            Broker::RabbitMq(url) => command.env("TETHER_AMQP_URL", url),
        };
        let mut child = command
            .env("TETHER_ADDR", self.http.to_string())
            .env("TETHER_DATABASE_URL", &self.database)
            .env("TETHER_DATA_DIR", self.dir.join("data"))
            .env("RUST_LOG", "warn,server=info,broker=info,hub=info")
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

/// A RabbitMQ node of the suite's own, with Tether's HTTP auth backend for devices
/// (`scripts/identity-broker.sh`, on free ports): stopped when dropped.
struct RabbitNode {
    dir: PathBuf,
    amqp_port: u16,
    env: Vec<(&'static str, String)>,
}

impl RabbitNode {
    fn start(dir: &Path, server: &Path) -> anyhow::Result<Self> {
        let dir = dir.join("rabbitmq");
        let amqp_port = free_port()?.port();
        let node = Self {
            env: vec![
                ("TETHER_IDENTITY_DIR", dir.display().to_string()),
                ("TETHER_IDENTITY_AMQP_PORT", amqp_port.to_string()),
                ("TETHER_IDENTITY_DIST_PORT", free_port()?.port().to_string()),
                ("TETHER_IDENTITY_AUTH_PORT", free_port()?.port().to_string()),
                (
                    "TETHER_IDENTITY_NODE",
                    format!("tether-faults-{:06x}@localhost", fastrand::u32(..1 << 24)),
                ),
                ("TETHER_SERVER_BIN", server.display().to_string()),
            ],
            dir,
            amqp_port,
        };
        node.script("start")?;
        Ok(node)
    }

    /// Runs `scripts/identity-broker.sh <verb>` for this node; its output goes to the
    /// fault's folder.
    fn script(&self, verb: &str) -> anyhow::Result<()> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/identity-broker.sh");
        std::fs::create_dir_all(&self.dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.with_extension("log"))?;
        let status = Command::new(script)
            .arg(verb)
            .envs(self.env.iter().map(|(k, v)| (*k, v)))
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()?;
        anyhow::ensure!(
            status.success(),
            "scripts/identity-broker.sh {verb} failed (see {})",
            self.dir.with_extension("log").display()
        );
        Ok(())
    }

    /// The servers' URL (RabbitMQ's `guest`, from this machine only).
    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// The database the auth backend checks devices against: the server under test
    /// uses it too, so a device provisioned there gets in.
    fn database(&self) -> String {
        format!("sqlite://{}/devices.db", self.dir.display())
    }

    /// Sends `signal` to the node's Erlang VM and waits until it is gone.
    fn end(&self, signal: &str, within: Duration) -> anyhow::Result<()> {
        let pid = std::fs::read_to_string(self.dir.join("rabbit/rabbitmq.pid"))?
            .trim()
            .to_owned();
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.clone()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
        let started = Instant::now();
        while Path::new(&format!("/proc/{pid}")).exists() {
            anyhow::ensure!(
                started.elapsed() < within,
                "the RabbitMQ node (pid {pid}) did not end within {within:?} of SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        if let Err(error) = self.script("stop") {
            eprintln!("cannot stop the suite's RabbitMQ node: {error:#}");
        }
    }
}

/// A PostgreSQL of the suite's own, in the fault's folder, on a free port: stopped
/// when dropped.
struct Postgres {
    /// Owned by the `postgres` user when the suite runs as root (PostgreSQL refuses
    /// to run as root).
    home: PathBuf,
    bin: PathBuf,
    port: u16,
}

impl Postgres {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        let bin = match std::env::var_os("TETHER_PG_BIN") {
            Some(bin) => PathBuf::from(bin),
            None => {
                let out = Command::new("pg_config")
                    .arg("--bindir")
                    .output()
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "pg_config not found ({e}): install PostgreSQL, or set TETHER_PG_BIN"
                        )
                    })?;
                PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
            }
        };
        let home = dir.join("postgres");
        std::fs::create_dir_all(&home)?;
        let postgres = Self {
            home,
            bin,
            port: free_port()?.port(),
        };
        if Self::as_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(&postgres.home)
                .status()?;
            anyhow::ensure!(
                status.success(),
                "cannot give {} to postgres",
                postgres.home.display()
            );
        }
        let data = postgres.home.join("data");
        postgres.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--no-sync".as_ref(),
            ],
        )?;
        postgres.up()?;
        Ok(postgres)
    }

    /// Whether the suite runs as root (asked once).
    fn as_root() -> bool {
        static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ROOT.get_or_init(|| {
            Command::new("id")
                .arg("-u")
                .output()
                .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
        })
    }

    /// Runs one of PostgreSQL's programs, as `postgres` when the suite is root.
    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
        let binary = self.bin.join(program);
        let mut command = if Self::as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&binary);
            command
        } else {
            Command::new(&binary)
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.home.with_extension("log"))?;
        let status = command
            .args(args)
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", binary.display()))?;
        anyhow::ensure!(
            status.success(),
            "{program} failed (see {})",
            self.home.with_extension("log").display()
        );
        Ok(())
    }

    fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let data = self.home.join("data");
        let mut all: Vec<&std::ffi::OsStr> = vec!["-D".as_ref(), data.as_os_str()];
        all.extend(args.iter().map(|a| std::ffi::OsStr::new(*a)));
        self.run("pg_ctl", &all)
    }

    /// Starts it and waits until it takes connections.
    fn up(&self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.home.display()
        );
        let log = self.home.join("server.log");
        self.pg_ctl(&[
            "-l",
            &log.display().to_string(),
            "-o",
            &options,
            "-w",
            "-t",
            "60",
            "start",
        ])
    }

    /// Stops it at once, as a crash would: no checkpoint, connections cut.
    fn crash(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["-m", "immediate", "-w", "stop"])
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.crash();
    }
}

/// A simulated meter: a device that publishes a reading every [`METER_EVERY`] with
/// publisher confirms, reconnecting whenever its connection ends, and keeps the time
/// of every reading the broker confirmed, to be looked up in the store at the end.
struct Meter {
    id: protocol::DeviceId,
    /// Its broker URL, with its credential.
    url: String,
    confirmed: Mutex<Vec<u64>>,
    /// Published, but the connection ended before the broker confirmed or refused.
    unconfirmed: Mutex<Vec<u64>>,
    refused: std::sync::atomic::AtomicUsize,
    reconnects: std::sync::atomic::AtomicUsize,
}

impl Meter {
    async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut last_ts = 0;
        loop {
            match self.session(&mut last_ts, &mut stop).await {
                Ok(()) => return,
                Err(_) => {
                    self.reconnects
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        }
    }

    /// One connection: hello, then readings until told to stop (`Ok`) or the
    /// connection fails.
    async fn session(
        &self,
        last_ts: &mut u64,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        use lapin::{
            BasicProperties, Connection, ConnectionProperties,
            options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
            types::FieldTable,
        };
        use protocol::{DeviceMessage, Heartbeat, Hello, TelemetrySample, names};
        let connection = tokio::time::timeout(
            Duration::from_secs(5),
            Connection::connect(&self.url, ConnectionProperties::default()),
        )
        .await??;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let inbox = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?
            .name()
            .to_string();
        let session_id = format!("meter-{:08x}", fastrand::u32(..));
        let signed = || BasicProperties::default().with_user_id(self.id.as_str().into());
        let hello = DeviceMessage::Hello(Hello {
            device_id: self.id.clone(),
            session_id: session_id.clone(),
            inbox,
            kind: "meter".into(),
            firmware: "1".into(),
            heartbeat_ms: 1_000,
            capabilities: serde_json::from_value(json!({
                "metrics": [{"name": "seq", "min": 0.0, "max": 1000.0}]
            }))?,
        });
        channel
            .basic_publish(
                names::PRESENCE_EXCHANGE.into(),
                format!("presence.{}.hello", self.id).as_str().into(),
                BasicPublishOptions::default(),
                &protocol::encode(&hello),
                signed(),
            )
            .await?
            .await?;
        let heartbeat = protocol::encode(&DeviceMessage::Heartbeat(Heartbeat {
            device_id: self.id.clone(),
            session_id: session_id.clone(),
        }));
        let key = names::telemetry_key(&self.id, "seq");
        let mut tick = tokio::time::interval(METER_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heartbeat = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => {
                    let _ = connection.close(200, "done".into()).await;
                    return Ok(());
                }
            }
            if last_heartbeat.elapsed() >= Duration::from_secs(1) {
                last_heartbeat = Instant::now();
                channel
                    .basic_publish(
                        names::PRESENCE_EXCHANGE.into(),
                        format!("presence.{}.heartbeat", self.id).as_str().into(),
                        BasicPublishOptions::default(),
                        &heartbeat,
                        signed(),
                    )
                    .await?;
            }
            // Never two readings in one millisecond, nor more than 40 a second of
            // the device's clock, whatever the scheduler does.
            let ts = common::now_ms().max(*last_ts + METER_EVERY.as_millis() as u64);
            *last_ts = ts;
            let body = protocol::encode(&DeviceMessage::Telemetry(TelemetrySample {
                device_id: self.id.clone(),
                session_id: session_id.clone(),
                metric: "seq".into(),
                value: (ts % 1000) as f64,
                ts_ms: ts,
            }));
            let confirmed = async {
                channel
                    .basic_publish(
                        names::TELEMETRY_EXCHANGE.into(),
                        key.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        signed(),
                    )
                    .await?
                    .await
            };
            match tokio::time::timeout(Duration::from_secs(5), confirmed).await {
                Ok(Ok(confirmation)) if confirmation.is_ack() => {
                    self.confirmed.lock().expect("confirmed").push(ts);
                }
                Ok(Ok(_)) => {
                    self.refused
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(Err(error)) => {
                    self.unconfirmed.lock().expect("unconfirmed").push(ts);
                    return Err(error.into());
                }
                Err(_) => {
                    self.unconfirmed.lock().expect("unconfirmed").push(ts);
                    anyhow::bail!("no confirm within 5 s");
                }
            }
        }
    }
}

/// Of `times` (a meter's readings), those in the store.
async fn stored(
    accounts: &store::Store,
    device: &str,
    times: &[u64],
) -> anyhow::Result<std::collections::HashSet<u64>> {
    let (Some(first), Some(last)) = (times.iter().min(), times.iter().max()) else {
        return Ok(std::collections::HashSet::new());
    };
    let series = accounts
        .series(store::SeriesQuery {
            device: device.to_owned(),
            metrics: vec!["seq".into()],
            from_ms: *first as i64,
            to_ms: *last as i64 + 1,
            bucket_ms: 1,
        })
        .await?;
    Ok(series
        .into_iter()
        .flat_map(|(_, points)| points.into_iter().map(|p| p.t_ms))
        .collect())
}

async fn run(fault: &str, dir: &Path, settings: &Settings) -> anyhow::Result<Report> {
    // What the fault needs of its own: a RabbitMQ node, a PostgreSQL.
    let rabbit = if on_rabbitmq(fault) {
        Some(RabbitNode::start(dir, &settings.server)?)
    } else {
        None
    };
    let postgres = if fault == "postgres-restart" {
        Some(Postgres::start(dir)?)
    } else {
        None
    };
    let database = match (&rabbit, &postgres) {
        (Some(node), _) => node.database(),
        (None, Some(postgres)) => postgres.url(),
        (None, None) => format!("sqlite://{}", dir.join("tether.db").display()),
    };
    let accounts = store::Store::open(&database).await?;
    let (token, _) = testkit::user_token(&accounts, Role::Admin, &[]).await;
    let mut server = Server {
        binary: settings.server.clone(),
        dir: dir.to_owned(),
        database,
        http: free_port()?,
        broker: match &rabbit {
            Some(node) => Broker::RabbitMq(node.url()),
            None => Broker::Embedded(free_port()?),
        },
        process: None,
    };
    server.start()?;
    let client = testkit::api_client(&token);
    let server_account = if rabbit.is_some() {
        "guest"
    } else {
        "tether-server"
    };

    // A third of the devices go through a link that fails on command.
    let link = FaultLink::to(server.amqp()).await?;
    let through_link = settings.devices.div_ceil(3);
    // The devices the fault hits: the first `hit_count` (all, or those behind the link).
    let hit_count = if hits_all(fault) {
        settings.devices
    } else {
        through_link
    };
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
            server.amqp()
        };
        let config = dir.join(format!("{id}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"amqp_url = "amqp://{broker}/%2f"
device_id = "{id}"
secret_file = "{secret}"
server_accounts = ["{server_account}"]
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

    // The meters, publishing readings through every phase.
    let mut meters = Vec::new();
    for n in 0..settings.meters {
        let id = protocol::DeviceId::new(format!("faults-meter-{n}"))?;
        let secret = accounts.provision_device(id.as_str()).await?;
        meters.push(Arc::new(Meter {
            url: format!("amqp://{id}:{secret}@{}/%2f", server.amqp()),
            id,
            confirmed: Mutex::default(),
            unconfirmed: Mutex::default(),
            refused: Default::default(),
            reconnects: Default::default(),
        }));
    }
    let (stop_meters, meters_stopped) = tokio::sync::watch::channel(false);
    let metering: Vec<_> = meters
        .iter()
        .map(|meter| tokio::spawn(meter.clone().run(meters_stopped.clone())))
        .collect();

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
            affected: hit_count,
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
        "server-kill" | "server-kill-rabbit" => {
            server.kill();
            tokio::time::sleep(Duration::from_secs(3)).await;
            server.start()?;
            // Recovery counts from the restart.
            restarted = Some(Instant::now());
            tokio::time::sleep(settings.phase.saturating_sub(Duration::from_secs(3))).await;
        }
        "rabbit-kill" | "rabbit-stop" => {
            let node = rabbit.as_ref().expect("a RabbitMQ fault has its node");
            let started = Instant::now();
            // These block (the script waits for the node): in place, so the load and
            // the meters go on on the runtime's other threads.
            if fault == "rabbit-kill" {
                tokio::task::block_in_place(|| node.end("KILL", Duration::from_secs(10)))?;
            } else {
                tokio::task::block_in_place(|| node.end("TERM", Duration::from_secs(60)))?;
                tokio::time::sleep(settings.outage).await;
            }
            tokio::task::block_in_place(|| node.script("start"))?;
            restarted = Some(Instant::now());
            println!(
                "  {fault}: the node was down {:.1} s",
                started.elapsed().as_secs_f64()
            );
            tokio::time::sleep(settings.phase.saturating_sub(started.elapsed())).await;
        }
        "postgres-restart" => {
            let postgres = postgres
                .as_ref()
                .expect("postgres-restart has its PostgreSQL");
            tokio::task::block_in_place(|| postgres.crash())?;
            tokio::time::sleep(settings.phase).await;
            tokio::task::block_in_place(|| postgres.up())?;
        }
        other => anyhow::bail!("unknown fault {other}"),
    }
    let healed = restarted.unwrap_or_else(Instant::now);
    phase.store(2, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(settings.phase).await;
    // The after phase goes on until every device the fault hit has succeeded again
    // (devices reconnect with a backoff that grows with the outage), for at most two
    // minutes more: recovery is measured, not cut short by the phase.
    let hit_ids: Vec<String> = devices[..hit_count].iter().map(|d| d.id.clone()).collect();
    let give_up = Instant::now() + Duration::from_secs(120);
    let mut recovered = std::collections::HashSet::new();
    while recovered.len() < hit_ids.len() && Instant::now() < give_up {
        // Per device not yet back, its latest command old enough to have ended.
        let settled = Instant::now() - Duration::from_secs(3);
        let mut candidates: HashMap<String, String> = HashMap::new();
        for command in sent.lock().expect("sent").iter().rev() {
            if command.at >= healed && command.at <= settled && !recovered.contains(&command.device)
            {
                candidates
                    .entry(command.device.clone())
                    .or_insert_with(|| command.id.clone());
            }
        }
        for (device, id) in candidates {
            let view: Option<CommandView> = match client
                .get(format!("{}/api/v1/commands/{id}", server.base()))
                .send()
                .await
            {
                Ok(response) => response.json().await.ok(),
                Err(_) => None,
            };
            if view.is_some_and(|v| v.status == CommandStatus::Succeeded) {
                recovered.insert(device);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let _ = stop_load.send(true);
    let _ = stop_meters.send(true);
    load.await?;
    for metering in metering {
        metering.await?;
    }

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
                Some(status) => {
                    report.browser_wrong += 1;
                    if std::env::var_os("TETHER_FAULTS_VERBOSE").is_some() {
                        println!(
                            "  the browser shows {} {status:?}, the truth is {:?} (created {} ms before the end of the fault)",
                            command.id,
                            view.status,
                            healed.saturating_duration_since(command.at).as_millis()
                        );
                    }
                }
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
    if first_success.len() == hit_count {
        report.recovery = first_success.values().max().copied();
    }

    // Every reading the broker confirmed, looked up in the store: the recorders may
    // still be catching up (after a store outage, their backoff), so until nothing is
    // missing or a minute has passed.
    report.readings_at_risk = readings_at_risk(fault);
    let waited = Instant::now();
    loop {
        let (mut confirmed, mut lost, mut unconfirmed, mut unconfirmed_stored) = (0, 0, 0, 0);
        for meter in &meters {
            let times = meter.confirmed.lock().expect("confirmed").clone();
            let doubtful = meter.unconfirmed.lock().expect("unconfirmed").clone();
            let all: Vec<u64> = times.iter().chain(&doubtful).copied().collect();
            let found = stored(&accounts, meter.id.as_str(), &all).await?;
            confirmed += times.len();
            lost += times.iter().filter(|t| !found.contains(t)).count();
            unconfirmed += doubtful.len();
            unconfirmed_stored += doubtful.iter().filter(|t| found.contains(t)).count();
        }
        report.readings_confirmed = confirmed;
        report.readings_lost = lost;
        report.readings_unconfirmed = unconfirmed;
        report.readings_unconfirmed_stored = unconfirmed_stored;
        if lost == 0 || waited.elapsed() > Duration::from_secs(60) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    report.meter_reconnects = meters
        .iter()
        .map(|m| m.reconnects.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    let refused_readings: usize = meters
        .iter()
        .map(|m| m.refused.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    if refused_readings > 0 {
        *report
            .refused
            .entry("readings nacked by the broker".into())
            .or_default() += refused_readings;
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
                    // Past the 5 s a send may wait for the command log.
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                let why = match response {
                    Ok(response) if response.status().is_success() => {
                        match response.json::<CommandView>().await {
                            Ok(view) => {
                                sent.lock().expect("sent").push(Sent {
                                    id: view.id.to_string(),
                                    device: view.device_id.to_string(),
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
                    Err(e) if e.is_timeout() => "no answer in 10 s".to_owned(),
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

    /// A fresh snapshot replaces what the tab shows, as the app does
    /// (`app/src/fleet/live.rs`): a command it showed as unfinished that the snapshot
    /// no longer holds (only the latest commands are in it) is no longer shown, rather
    /// than shown with a status that may have moved on meanwhile. An ended one keeps
    /// its status, which cannot change.
    fn resync(&self, commands: &[CommandView]) {
        let holds: std::collections::HashSet<String> =
            commands.iter().map(|c| c.id.to_string()).collect();
        self.statuses
            .lock()
            .expect("statuses")
            .retain(|id, status| status.is_terminal() || holds.contains(id));
        for command in commands {
            self.take(command);
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
                            self.resync(&commands);
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
