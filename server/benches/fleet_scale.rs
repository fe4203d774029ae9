//! 10,000 devices, many browsers, a light fleet page (issue 14). Not a test: it measures
//! and reports, for BENCHMARKS.md.
//!
//! ```text
//! ulimit -n 20000
//! cargo build --release -p agent --bin tether-agent
//! cargo bench -p server --bench fleet_scale -- [devices] [sockets] [embedded|rabbitmq]
//! ```
//!
//! Defaults: 10,000 devices, 5,000 live sockets, the embedded broker. Settings from the
//! environment: `TETHER_FLEET_IDLE_SECS` (30), `TETHER_FLEET_RATES` (the commands/s of
//! each fan-out phase, `5,20,50`), `TETHER_FLEET_PHASE_SECS` (15),
//! `TETHER_FLEET_STALL_SECS` (how long without 1 % of the devices more online ends the
//! wait: 120), `TETHER_FLEET_HEARTBEAT_MS` (each device's heartbeat: 5000; faster makes
//! an hour of an idle fleet's traffic go by in minutes, for the agent's memory over
//! time), `TETHER_BROKER_MAX_CONNECTIONS` (passed on to the server), `TETHER_SERVER_BIN`
//! (another build's `tether-server`, to compare two builds with the same bench).
//!
//! Real processes: a release `tether-server` on free ports with a SQLite database in a
//! folder of its own, and ONE `tether-agent --simulate N` process (gateways, heartbeat
//! every 5 s, no readings; `TETHER_AGENT_BIN` or `<target>/release/tether-agent`; its
//! log in `<folder>/agent.log`). Every device has an account of its own, provisioned
//! with [`store::Store`] (argon2id, as `tether-server device add` does) in this process,
//! so the server's memory is not the hashing's. `TETHER_FLEET_DIR=<folder>` keeps the
//! database and the secrets file there and reuses them on the next run with the same N
//! (hashing 10,000 secrets takes minutes); the server's first check of each secret
//! (argon2, in the server) is part of the time to online all the same.
//!
//! The steps, each reported:
//! 1. devices: time until all are online (`GET /api/v1/devices?status=online&limit=1`,
//!    its `total`, every second), the agent's and the server's resident memory (the
//!    server's before the agent started and with every device online), and CPU over an
//!    idle spell with every device heartbeating every 5 s. If not all come online, the
//!    wait ends after a stall and the rest runs with those that did.
//! 2. the fleet page: size and time (median, p95 of 20) of `GET /`, `GET /api/v1/devices`
//!    and a searched, filtered, sorted list, as an admin (API token), without
//!    compression and with `br` as a browser asks.
//! 3. browsers: `sockets` live WebSockets (`/api/v1/live?fleet={}&watch=<the 10 devices
//!    commanded below>`) from this process,
//!    the server's memory per socket once each has its snapshot; then fan-out: commands
//!    (`echo`) to 10 devices through the API at a steady rate, every status change of
//!    which goes to every socket; frames received per second across the sockets, the
//!    commands/s the API answered and its latency.
//!
//! - **embedded**: the server runs its embedded broker.
//! - **rabbitmq**: the tests' identity RabbitMQ (`scripts/identity-broker.sh start;
//!   eval "$(scripts/identity-broker.sh env)"`), which admits devices through Tether's
//!   HTTP auth backend; devices are provisioned in its database and revoked afterwards.
//!   `TETHER_FLEET_BROKER_PID` (the node's beam pid) adds its memory and CPU.
//!
//! Memory is VmRSS from `/proc/PID/status`; CPU is utime + stime from `/proc/PID/stat`.
//! Both children are killed when the bench ends, on error too.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{StreamExt as _, stream};
use protocol::{auth::Role, fleet::DevicePage};
use serde_json::json;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};

#[path = "support/host.rs"]
mod host;
use host::{
    Args, Process, agent_binary, cpu_model, cpu_ticks, list_setting, load_average, rss_kb, setting,
    threads, ticks_per_second,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broker {
    Embedded,
    RabbitMq,
}

/// Devices commanded in the fan-out phases.
const COMMANDED: usize = 10;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::from_env();
    let count: usize = args.parsed(0, "devices", 10_000)?;
    let sockets: usize = args.parsed(1, "sockets", 5_000)?;
    let broker = match args.get(2) {
        None | Some("embedded") => Broker::Embedded,
        Some("rabbitmq") => Broker::RabbitMq,
        Some(other) => anyhow::bail!("the broker is embedded or rabbitmq, not {other}"),
    };
    let idle_secs: u64 = setting("TETHER_FLEET_IDLE_SECS")?.unwrap_or(30);
    let phase_secs: u64 = setting("TETHER_FLEET_PHASE_SECS")?.unwrap_or(15);
    let stall_secs: u64 = setting("TETHER_FLEET_STALL_SECS")?.unwrap_or(120);
    let rates: Vec<u32> = list_setting("TETHER_FLEET_RATES", "5,20,50")?;
    let agent_bin = agent_binary();
    anyhow::ensure!(
        agent_bin.exists(),
        "{} is missing: cargo build --release -p agent --bin tether-agent (or set TETHER_AGENT_BIN)",
        agent_bin.display()
    );
    let open_files = open_files_limit();
    println!(
        "# fleet scale: {count} devices in one agent process, {sockets} live sockets, {broker:?} broker"
    );
    println!(
        "machine: {} cores, {}, {:.0} GiB; load average at start {}; open files limit {open_files}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        mem_total_kb() as f64 / 1024.0 / 1024.0,
        load_average(),
    );
    if open_files < (count + sockets) as u64 + 512 {
        println!(
            "warning: the open files limit ({open_files}) may be short of {count} devices + {sockets} sockets in the server: ulimit -n 20000"
        );
    }

    let (dir, keep) = match std::env::var_os("TETHER_FLEET_DIR") {
        Some(dir) => (PathBuf::from(dir), true),
        None => (
            std::env::temp_dir().join(format!("tether-fleet-{:08x}", fastrand::u32(..))),
            false,
        ),
    };
    std::fs::create_dir_all(&dir)?;
    let result = run(
        &dir,
        Run {
            count,
            sockets,
            broker,
            idle_secs,
            phase_secs,
            stall_secs,
            rates,
            agent_bin,
        },
    )
    .await;
    if !keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

struct Run {
    count: usize,
    sockets: usize,
    broker: Broker,
    idle_secs: u64,
    phase_secs: u64,
    stall_secs: u64,
    rates: Vec<u32>,
    agent_bin: PathBuf,
}

async fn run(dir: &Path, run: Run) -> anyhow::Result<()> {
    let Run {
        count,
        sockets,
        broker,
        idle_secs,
        phase_secs,
        stall_secs,
        rates,
        agent_bin,
    } = run;
    let prefix = "fleet";
    let database = format!("sqlite://{}", dir.join("tether.db").display());
    let accounts = store::Store::open(&database).await?;
    let (token, _) = testkit::user_token(&accounts, Role::Admin, &[]).await;
    let (secrets, amqp_url, identity) = match broker {
        Broker::Embedded => {
            let secrets = provisioned(&accounts, dir, prefix, count).await?;
            (secrets, None, None)
        }
        Broker::RabbitMq => {
            let url = env("TETHER_TEST_IDENTITY_AMQP_URL")?;
            let identity = store::Store::open(&env("TETHER_TEST_IDENTITY_DATABASE")?).await?;
            let secrets = provisioned(&identity, dir, prefix, count).await?;
            (secrets, Some(url), Some(identity))
        }
    };
    let outcome = measure(
        dir, &database, amqp_url, &secrets, &token, prefix, &agent_bin, count, sockets, broker,
        idle_secs, phase_secs, stall_secs, &rates,
    )
    .await;
    if let Some(identity) = identity {
        for n in 1..=count {
            let _ = identity
                .revoke_device(&format!("{prefix}-gateway-{n}"))
                .await;
        }
        let _ = std::fs::remove_file(&secrets);
    }
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    dir: &Path,
    database: &str,
    amqp_url: Option<String>,
    secrets: &Path,
    token: &str,
    prefix: &str,
    agent_bin: &Path,
    count: usize,
    sockets: usize,
    broker: Broker,
    idle_secs: u64,
    phase_secs: u64,
    stall_secs: u64,
    rates: &[u32],
) -> anyhow::Result<()> {
    let (server, device_url) = start_server(dir, database, amqp_url.as_deref());
    let base = server.base.clone();
    let server_pid = server.child.id();
    let broker_pid: Option<u32> = setting("TETHER_FLEET_BROKER_PID")?;
    let client = testkit::api_client(token);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let server_rss_empty = rss_kb(server_pid);
    println!(
        "server started: {:.1} MB resident",
        server_rss_empty as f64 / 1024.0
    );

    // 1. Devices.
    let heartbeat_ms: u64 = setting("TETHER_FLEET_HEARTBEAT_MS")?.unwrap_or(5_000);
    let started = Instant::now();
    let server_cpu_start = cpu_ticks(server_pid);
    let agent_log = dir.join("agent.log");
    let mut agent = Command::new(agent_bin);
    agent
        .args(["--simulate", &count.to_string(), "--kind", "gateway"])
        .args(["--device-id", prefix, "--telemetry-ms", "0"])
        .args(["--heartbeat-ms", &heartbeat_ms.to_string()])
        .env("TETHER_AMQP_URL", &device_url)
        .env("TETHER_SECRETS_FILE", secrets)
        // lapin logs every refused or reset connection as an ERROR of its own.
        .env("RUST_LOG", "info,lapin=off")
        .env("NO_COLOR", "1")
        .stdout(Stdio::from(std::fs::File::create(&agent_log)?))
        .stderr(Stdio::inherit());
    if broker == Broker::RabbitMq {
        agent.env("TETHER_SERVER_ACCOUNTS", common::amqp_user(&device_url));
    } else {
        agent.env("TETHER_SERVER_ACCOUNTS", "tether-server");
    }
    let mut agents = Process(agent.spawn()?);
    let agent_pid = agents.0.id();
    // The most online so far, and when the count last grew by 1 % of N (or by one).
    let (mut best, mut progress) = (0, (0, Instant::now()));
    let mut agent_peak = 0;
    let mut last_report = Instant::now();
    let online_after = loop {
        let online = online(&client, &base).await.unwrap_or(best);
        agent_peak = agent_peak.max(rss_kb(agent_pid));
        if online >= count {
            break Some(started.elapsed());
        }
        if let Ok(Some(status)) = agents.0.try_wait() {
            anyhow::bail!("the agent process exited ({status}) with {online} of {count} online");
        }
        best = best.max(online);
        if online >= progress.0 + (count / 100).max(1) {
            progress = (online, Instant::now());
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            println!(
                "  {:>4.0} s: {online} online; agent {:.0} MB, server {:.0} MB, load {}",
                started.elapsed().as_secs_f64(),
                rss_kb(agent_pid) as f64 / 1024.0,
                rss_kb(server_pid) as f64 / 1024.0,
                load_average()
            );
        }
        if progress.1.elapsed() >= Duration::from_secs(stall_secs) {
            println!(
                "STALLED: {best} of {count} devices online, fewer than 1 % more in {stall_secs} s; the agent's last lines:"
            );
            for line in last_lines(&agent_log, 10) {
                println!("  agent: {line}");
            }
            break None;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let connect_cpu = (cpu_ticks(server_pid) - server_cpu_start) as f64 / ticks_per_second();
    let reached = if online_after.is_some() { count } else { best };
    match online_after {
        Some(after) => println!(
            "all {count} devices online in {:.1} s (server CPU meanwhile {connect_cpu:.1} s)",
            after.as_secs_f64()
        ),
        None => println!("{reached} of {count} devices online; going on with those"),
    }
    // Past the logins' last allocations, then idle: heartbeats only.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (server_cpu, agent_cpu, broker_cpu) = (
        cpu_ticks(server_pid),
        cpu_ticks(agent_pid),
        broker_pid.map(cpu_ticks),
    );
    let load_before_idle = load_average();
    let agent_rss_idle = rss_kb(agent_pid);
    let idle = Instant::now();
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let secs = idle.elapsed().as_secs_f64();
    let share = |before: u64, pid: u32| {
        100.0 * (cpu_ticks(pid) - before) as f64 / ticks_per_second() / secs
    };
    let (server_idle, agent_idle) = (share(server_cpu, server_pid), share(agent_cpu, agent_pid));
    let still_online = online(&client, &base).await.unwrap_or(0);
    let (server_rss, agent_rss) = (rss_kb(server_pid), rss_kb(agent_pid));
    agent_peak = agent_peak.max(agent_rss);
    let threads = threads(agent_pid);

    println!();
    println!(
        "## devices (load average {load_before_idle} → {})",
        load_average()
    );
    println!(
        "| broker | devices online | online after | agent RSS (peak) | agent RSS / device | agent threads | server RSS empty → with devices | server RSS / device | server CPU idle | agent CPU idle | online at the end |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {broker:?} | {reached} of {count} | {} | {:.0} MB ({:.0} MB) | {:.1} KB | {threads} | {:.0} → {:.0} MB | {:.1} KB | {server_idle:.1} % | {agent_idle:.1} % | {still_online} |",
        online_after.map_or("—".into(), |d| format!("{:.1} s", d.as_secs_f64())),
        agent_rss as f64 / 1024.0,
        agent_peak as f64 / 1024.0,
        agent_rss as f64 / reached.max(1) as f64,
        server_rss_empty as f64 / 1024.0,
        server_rss as f64 / 1024.0,
        server_rss.saturating_sub(server_rss_empty) as f64 / reached.max(1) as f64,
    );
    println!(
        "(idle: {secs:.0} s with every device heartbeating every {heartbeat_ms} ms, {:.0} heartbeats/s; CPU in % of one core; KB = 1024 bytes)",
        reached as f64 * 1000.0 / heartbeat_ms as f64
    );
    println!(
        "agent RSS over the idle spell: {:.0} → {:.0} MB ({:+.1} KB / device, {:.0} heartbeats each)",
        agent_rss_idle as f64 / 1024.0,
        agent_rss as f64 / 1024.0,
        (agent_rss as f64 - agent_rss_idle as f64) / reached.max(1) as f64,
        secs * 1000.0 / heartbeat_ms as f64
    );
    if let (Some(pid), Some(before)) = (broker_pid, broker_cpu) {
        println!(
            "broker process {pid}: {:.0} MB resident ({:.1} KB / device), {:.1} % of a core idle",
            rss_kb(pid) as f64 / 1024.0,
            rss_kb(pid) as f64 / reached.max(1) as f64,
            share(before, pid)
        );
    }

    // 2. The fleet page.
    println!();
    println!("## the fleet page with {reached} devices online (20 requests each, one at a time)");
    println!("| request | encoding | bytes | median | p95 |");
    println!("|---|---|---|---|---|");
    for path in [
        "/",
        "/api/v1/devices",
        "/api/v1/devices?search=1&status=online&sort=last_seen&order=desc",
    ] {
        for encoding in ["identity", "br, gzip"] {
            let (bytes, times) =
                timed_gets(&client, &format!("{base}{path}"), encoding, 20).await?;
            println!(
                "| `GET {path}` | {encoding} | {bytes} | {:.1} ms | {:.1} ms |",
                percentile(&times, 0.5),
                percentile(&times, 0.95)
            );
        }
    }

    // 3. Browsers.
    println!();
    let counters = Arc::new(Counters::default());
    let rss_before_sockets = rss_kb(server_pid);
    let cpu_before_sockets = cpu_ticks(server_pid);
    // Each tab shows the fleet page and watches the devices the fan-out commands (as
    // a dashboard of them would): every status of every command goes to every socket,
    // the most a tab can be sent.
    let targets: Vec<String> = (1..=COMMANDED.min(reached.max(1)))
        .map(|n| format!("{prefix}-gateway-{n}"))
        .collect();
    let live_url = format!(
        "{}/api/v1/live?fleet=%7B%7D&watch={}",
        base.replace("http://", "ws://"),
        targets.join(",")
    );
    let opening = Instant::now();
    let opened: Vec<anyhow::Result<()>> = stream::iter(0..sockets)
        .map(|_| open_socket(&live_url, token, counters.clone()))
        .buffer_unordered(64)
        .collect()
        .await;
    let failed: Vec<String> = opened
        .into_iter()
        .filter_map(|r| r.err().map(|e| format!("{e:#}")))
        .collect();
    let open = sockets - failed.len();
    if let Some(first) = failed.first() {
        println!(
            "{} of {sockets} sockets failed to open, the first: {first}",
            failed.len()
        );
    }
    // Each has its snapshot (the first frame).
    let wait = Instant::now();
    while counters.snapshots.load(Ordering::Relaxed) < open as u64
        && wait.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let opened_in = opening.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_with_sockets = rss_kb(server_pid);
    let socket_cpu = (cpu_ticks(server_pid) - cpu_before_sockets) as f64 / ticks_per_second();
    println!(
        "## browsers: {open} live sockets open and snapshotted in {:.1} s (server CPU {socket_cpu:.1} s); snapshot {} bytes on average; {} still open",
        opened_in.as_secs_f64(),
        counters.snapshot_bytes.load(Ordering::Relaxed)
            / counters.snapshots.load(Ordering::Relaxed).max(1),
        counters.open.load(Ordering::Relaxed),
    );
    println!(
        "server RSS {:.0} → {:.0} MB: {:.1} KB per socket; bench process {:.0} MB",
        rss_before_sockets as f64 / 1024.0,
        rss_with_sockets as f64 / 1024.0,
        rss_with_sockets.saturating_sub(rss_before_sockets) as f64 / open.max(1) as f64,
        rss_kb(std::process::id()) as f64 / 1024.0,
    );
    // What the sockets get while nothing is commanded (heartbeats only).
    let quiet = counters.frames.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(5)).await;
    println!(
        "frames while nothing is commanded: {:.0}/s across the sockets",
        (counters.frames.load(Ordering::Relaxed) - quiet) as f64 / 5.0
    );

    println!();
    println!(
        "## fan-out: echo commands to {COMMANDED} devices through the API, {open} sockets, {phase_secs} s a rate"
    );
    println!(
        "| asked commands/s | answered commands/s | failed | POST median | POST p95 | frames/s received | command_updated | fleet_page | device_updated | snapshots (lagged) | other | server CPU | bench CPU | load |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &rate in rates {
        let phase = fan_out(
            &client,
            &base,
            &targets,
            rate,
            Duration::from_secs(phase_secs),
            &counters,
            server_pid,
        )
        .await;
        println!(
            "| {rate} | {:.1} | {} | {:.1} ms | {:.1} ms | {:.0} | {} | {} | {} | {} | {} | {:.0} % | {:.0} % | {} |",
            phase.answered as f64 / phase.secs,
            phase.failed,
            percentile(&phase.latencies, 0.5),
            percentile(&phase.latencies, 0.95),
            phase.frames as f64 / phase.secs,
            phase.by_kind[0],
            phase.by_kind[1],
            phase.by_kind[2],
            phase.by_kind[3],
            phase.by_kind[4],
            phase.server_cpu,
            phase.bench_cpu,
            load_average(),
        );
        if let Some(error) = phase.first_error {
            println!("  first failure: {error}");
        }
    }
    println!(
        "server at the end: {:.0} MB resident; sockets still open {}; load average {}",
        rss_kb(server_pid) as f64 / 1024.0,
        counters.open.load(Ordering::Relaxed),
        load_average()
    );
    let agent_lines = last_lines(&agent_log, 3);
    println!("agent's last log lines:");
    for line in agent_lines {
        println!("  {line}");
    }
    drop(agents);
    drop(server);
    Ok(())
}

/// Frames the bench's sockets received, by type.
#[derive(Default)]
struct Counters {
    open: AtomicUsize,
    frames: AtomicU64,
    snapshots: AtomicU64,
    snapshot_bytes: AtomicU64,
    command_updated: AtomicU64,
    fleet_page: AtomicU64,
    device_updated: AtomicU64,
    other: AtomicU64,
}

impl Counters {
    fn by_kind(&self) -> [u64; 5] {
        [
            self.command_updated.load(Ordering::Relaxed),
            self.fleet_page.load(Ordering::Relaxed),
            self.device_updated.load(Ordering::Relaxed),
            self.snapshots.load(Ordering::Relaxed),
            self.other.load(Ordering::Relaxed),
        ]
    }
}

/// Opens one live socket as the admin and reads it until it closes, counting frames.
async fn open_socket(url: &str, token: &str, counters: Arc<Counters>) -> anyhow::Result<()> {
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    counters.open.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        while let Some(Ok(message)) = socket.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            counters.frames.fetch_add(1, Ordering::Relaxed);
            let kind = text
                .split_once("\"type\":\"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .map_or("", |(kind, _)| kind);
            let counter = match kind {
                "snapshot" => {
                    counters
                        .snapshot_bytes
                        .fetch_add(text.len() as u64, Ordering::Relaxed);
                    &counters.snapshots
                }
                "command_updated" => &counters.command_updated,
                "fleet_page" => &counters.fleet_page,
                "device_updated" => &counters.device_updated,
                _ => &counters.other,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        counters.open.fetch_sub(1, Ordering::Relaxed);
    });
    Ok(())
}

struct Phase {
    secs: f64,
    answered: u64,
    failed: u64,
    first_error: Option<String>,
    latencies: Vec<f64>,
    frames: u64,
    by_kind: [u64; 5],
    server_cpu: f64,
    bench_cpu: f64,
}

/// Sends `echo` to `targets` in turn at `rate` a second for `length` (at most 256 in
/// flight: a tick that finds them all busy is skipped, so the rate answered shows what
/// the API sustains), counting the frames every socket receives meanwhile.
async fn fan_out(
    client: &reqwest::Client,
    base: &str,
    targets: &[String],
    rate: u32,
    length: Duration,
    counters: &Counters,
    server_pid: u32,
) -> Phase {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(256));
    let (done, mut results) = tokio::sync::mpsc::unbounded_channel();
    let (frames, kinds) = (counters.frames.load(Ordering::Relaxed), counters.by_kind());
    let (server_cpu, bench_cpu) = (cpu_ticks(server_pid), cpu_ticks(std::process::id()));
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n = 0;
    while started.elapsed() < length {
        tick.tick().await;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            continue;
        };
        let url = format!(
            "{base}/api/v1/devices/{}/commands",
            targets[n % targets.len()]
        );
        n += 1;
        let (client, done) = (client.clone(), done.clone());
        tokio::spawn(async move {
            let sent = Instant::now();
            let outcome = client
                .post(url)
                .json(&json!({"name": "echo", "args": {"message": "fan-out"}}))
                .send()
                .await;
            let outcome = match outcome {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(format!(
                    "{}: {}",
                    response.status(),
                    response.text().await.unwrap_or_default()
                )),
                Err(error) => Err(error.to_string()),
            };
            let _ = done.send((outcome, sent.elapsed().as_secs_f64() * 1000.0));
            drop(permit);
        });
    }
    // Frames and CPU over the phase itself; answers still coming are waited for.
    let secs = started.elapsed().as_secs_f64();
    let frames = counters.frames.load(Ordering::Relaxed) - frames;
    let now = counters.by_kind();
    let by_kind = std::array::from_fn(|i| now[i] - kinds[i]);
    let server_cpu =
        100.0 * (cpu_ticks(server_pid) - server_cpu) as f64 / ticks_per_second() / secs;
    let bench_cpu =
        100.0 * (cpu_ticks(std::process::id()) - bench_cpu) as f64 / ticks_per_second() / secs;
    drop(done);
    let (mut answered, mut failed, mut first_error, mut latencies) = (0, 0, None, Vec::new());
    while let Some((outcome, ms)) = results.recv().await {
        latencies.push(ms);
        match outcome {
            Ok(()) => answered += 1,
            Err(error) => {
                failed += 1;
                first_error.get_or_insert(error);
            }
        }
    }
    // The sockets catch up before the next phase.
    tokio::time::sleep(Duration::from_secs(3)).await;
    Phase {
        secs,
        answered,
        failed,
        first_error,
        latencies,
        frames,
        by_kind,
        server_cpu,
        bench_cpu,
    }
}

/// `times` GETs of `url` one after another: the body's size (the last) and each time, ms.
async fn timed_gets(
    client: &reqwest::Client,
    url: &str,
    encoding: &str,
    times: usize,
) -> anyhow::Result<(usize, Vec<f64>)> {
    let (mut bytes, mut took) = (0, Vec::with_capacity(times));
    for _ in 0..times {
        let started = Instant::now();
        let response = client
            .get(url)
            .header("accept-encoding", encoding)
            .send()
            .await?
            .error_for_status()?;
        let body = response.bytes().await?;
        took.push(started.elapsed().as_secs_f64() * 1000.0);
        bytes = body.len();
    }
    Ok((bytes, took))
}

fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).map_err(|_| {
        anyhow::anyhow!("{name} is not set: eval \"$(scripts/identity-broker.sh env)\" first")
    })
}

/// The secrets file of `count` gateways `<prefix>-gateway-<n>`, provisioned in `store`
/// (or found in `dir` from an earlier run with as many).
async fn provisioned(
    store: &store::Store,
    dir: &Path,
    prefix: &str,
    count: usize,
) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("devices-{count}.secrets"));
    if let Ok(text) = std::fs::read_to_string(&path)
        && text.lines().count() == count
    {
        println!(
            "reusing {count} devices provisioned earlier ({})",
            path.display()
        );
        return Ok(path);
    }
    let started = Instant::now();
    let lines: Vec<String> = stream::iter(1..=count)
        .map(|n| async move {
            let id = format!("{prefix}-gateway-{n}");
            // A device left from an interrupted run gets a new secret.
            let secret = match store.provision_device(&id).await {
                Ok(secret) => secret,
                Err(store::AccountError::Exists(_)) => store.rotate_device_secret(&id).await?,
                Err(error) => return Err(error.into()),
            };
            anyhow::Ok(format!("{id} {secret}"))
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    std::fs::write(&path, lines.join("\n") + "\n")?;
    println!(
        "provisioned {count} devices in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(path)
}

/// Starts the release server on free ports; the broker URL devices are given (the
/// embedded broker's, or `amqp_url`).
fn start_server(
    dir: &Path,
    database: &str,
    amqp_url: Option<&str>,
) -> (testkit::ServerProcess, String) {
    // Another build's server may be measured with the same bench: `TETHER_SERVER_BIN`.
    let binary = std::env::var_os("TETHER_SERVER_BIN")
        .map_or_else(|| env!("CARGO_BIN_EXE_tether-server").into(), PathBuf::from);
    let mut settings = vec![
        ("TETHER_ADDR", "127.0.0.1:0".to_owned()),
        ("TETHER_BROKER_ADDR", "127.0.0.1:0".to_owned()),
        ("TETHER_DATABASE_URL", database.to_owned()),
        ("TETHER_DATA_DIR", dir.join("data").display().to_string()),
        ("RUST_LOG", "warn,server=info,broker=info".to_owned()),
    ];
    if let Some(url) = amqp_url {
        settings.push(("TETHER_AMQP_URL", url.to_owned()));
    }
    let server = testkit::ServerProcess::start(binary, "server", &settings);
    let device_url = match (amqp_url, &server.broker) {
        (Some(url), _) => url.to_owned(),
        (None, Some(broker)) => format!("amqp://{broker}/%2f"),
        (None, None) => unreachable!("ServerProcess waits for the embedded broker's address"),
    };
    (server, device_url)
}

/// The last `n` lines of a file.
fn last_lines(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| (*l).to_owned())
        .collect()
}

/// Devices online, as the fleet list counts them.
async fn online(client: &reqwest::Client, base: &str) -> anyhow::Result<usize> {
    let page: DevicePage = client
        .get(format!("{base}/api/v1/devices?status=online&limit=1"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(page.total as usize)
}

fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(0)
}

fn mem_total_kb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
