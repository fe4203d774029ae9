//! A job over a fleet: how long one command takes to reach every device of a large job
//! a hundred at a time, and what the server spends meanwhile. Not a test: it measures and
//! reports, for BENCHMARKS.md.
//!
//! ```text
//! cargo build --release -p agent --bin tether-agent
//! cargo bench -p server --bench job_rollout -- [devices] [concurrency] [delay_ms]
//! ```
//!
//! Defaults: 1,000 devices, 100 at once, `echo` with a 500 ms delay (a command that
//! takes a moment on the device, so at best `devices / concurrency × delay` = 5 s).
//!
//! Real processes: a release `tether-server` (this crate's binary, with its embedded
//! broker and a SQLite database in a temporary folder) and one `tether-agent --simulate`
//! process holding every device (each with an account of its own, provisioned through
//! the API; `TETHER_AGENT_BIN` or `<target>/release/tether-agent`). The job is started
//! through the API once every device is online; the server's CPU time and resident
//! memory come from `/proc`, sampled every 100 ms while the job runs. The command log
//! (the server's SQLite file) then gives how many commands ran at once at most, and
//! that every device was commanded exactly once.

use std::{
    collections::HashSet,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use futures_util::{StreamExt as _, stream};
use protocol::{
    auth::Role,
    fleet::DevicePage,
    job::{JobState, JobView},
};
use serde_json::json;
use store::CommandQuery;

#[path = "support/host.rs"]
mod host;
use host::{Args, Process, agent_binary, cpu_model, cpu_ticks, rss_kb, ticks_per_second};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::from_env();
    let count: usize = args.parsed(0, "devices", 1_000)?;
    let concurrency: u32 = args.parsed(1, "devices at once", 100)?;
    let delay_ms: u64 = args.parsed(2, "each command's delay_ms", 500)?;
    let agent_bin = agent_binary();
    anyhow::ensure!(
        agent_bin.exists(),
        "{} is missing: cargo build --release -p agent --bin tether-agent (or set TETHER_AGENT_BIN)",
        agent_bin.display()
    );
    println!(
        "# job rollout: {count} devices, {concurrency} at once, echo with {delay_ms} ms delay"
    );
    println!(
        "machine: {} cores, {}; load average at start {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );

    let dir = std::env::temp_dir().join(format!("tether-job-bench-{:08x}", fastrand::u32(..)));
    std::fs::create_dir_all(&dir)?;
    let database = format!("sqlite://{}", dir.join("tether.db").display());
    let accounts = store::Store::open(&database).await?;
    let (token, _) = testkit::user_token(&accounts, Role::Admin, &[]).await;
    let client = testkit::api_client(&token);

    let server = start_server(&dir, &database);
    let base = server.base.clone();
    let server_pid = server.child.id();
    println!(
        "server started: {:.0} MB resident",
        rss_kb(server_pid) as f64 / 1024.0
    );

    // Every device gets an account of its own, through the API (argon2 each).
    let prefix = "bench";
    let ids: Vec<String> = (1..=count)
        .map(|n| format!("{prefix}-gateway-{n}"))
        .collect();
    let started = Instant::now();
    let credentials: Vec<(String, String, String)> = stream::iter(ids.clone())
        .map(|id| {
            let (client, base) = (client.clone(), base.clone());
            async move {
                let body: serde_json::Value = client
                    .post(format!("{base}/api/v1/devices"))
                    .json(&json!({ "id": id }))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                let secret = body["secret"].as_str().unwrap_or_default().to_owned();
                let url = body["amqp_url"].as_str().unwrap_or_default().to_owned();
                anyhow::Ok((id, secret, url))
            }
        })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    println!(
        "provisioned {count} devices in {:.1} s; server {:.0} MB resident",
        started.elapsed().as_secs_f64(),
        rss_kb(server_pid) as f64 / 1024.0
    );
    let secrets = dir.join("devices.secrets");
    let lines: Vec<String> = credentials
        .iter()
        .map(|(id, secret, _)| format!("{id} {secret}"))
        .collect();
    std::fs::write(&secrets, lines.join("\n") + "\n")?;
    let amqp_url = credentials[0].2.clone();

    let started = Instant::now();
    let agents = Process(
        Command::new(&agent_bin)
            .args(["--simulate", &count.to_string(), "--kind", "gateway"])
            .args(["--device-id", prefix, "--telemetry-ms", "0"])
            .env("TETHER_AMQP_URL", &amqp_url)
            .env("TETHER_SECRETS_FILE", &secrets)
            .env("TETHER_SERVER_ACCOUNTS", "tether-server")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?,
    );
    loop {
        let page: DevicePage = client
            .get(format!(
                "{base}/api/v1/devices?search={prefix}-&status=online&limit=1"
            ))
            .send()
            .await?
            .json()
            .await?;
        let online = page.total as usize;
        if online >= count {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "only {online} of {count} devices online after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "all {count} devices online in {:.1} s; agent process {:.0} MB resident, server {:.0} MB",
        started.elapsed().as_secs_f64(),
        rss_kb(agents.0.id()) as f64 / 1024.0,
        rss_kb(server_pid) as f64 / 1024.0
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (cpu_before, rss_before) = (cpu_ticks(server_pid), rss_kb(server_pid));
    let idle_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_cpu = (cpu_ticks(server_pid) - cpu_before) as f64
        / ticks_per_second()
        / idle_start.elapsed().as_secs_f64();

    let cpu_start = cpu_ticks(server_pid);
    let started = Instant::now();
    let job: JobView = client
        .post(format!("{base}/api/v1/jobs"))
        .json(&json!({
            "name": "bench rollout",
            "command": "echo",
            "args": {"message": "rolled out", "delay_ms": delay_ms},
            "targets": {"search": format!("{prefix}-"), "kind": "gateway"},
            "concurrency": concurrency,
            "timeout_ms": 60_000,
        }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let mut peak_rss = rss_kb(server_pid);
    let done = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak_rss = peak_rss.max(rss_kb(server_pid));
        let now: JobView = client
            .get(format!("{base}/api/v1/jobs/{}", job.id))
            .send()
            .await?
            .json()
            .await?;
        if now.state.is_finished() {
            break now;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the job did not finish in 10 minutes: {:?}",
            now.counts
        );
    };
    let took = started.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(server_pid) - cpu_start) as f64 / ticks_per_second();
    anyhow::ensure!(
        done.state == JobState::Completed,
        "the job ended {}",
        done.state
    );

    // The command log's word on it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let commands = accounts
        .command_page(CommandQuery {
            job: Some(job.id.0.clone()),
            limit: 1_000,
            ..CommandQuery::default()
        })
        .await?;
    let mut all = commands.clone();
    let mut last = commands.last().map(|c| (c.created_ms, c.id.0.clone()));
    while all.len() < count && last.is_some() {
        let page = accounts
            .command_page(CommandQuery {
                job: Some(job.id.0.clone()),
                before: last.clone(),
                limit: 1_000,
                ..CommandQuery::default()
            })
            .await?;
        if page.is_empty() {
            break;
        }
        last = page.last().map(|c| (c.created_ms, c.id.0.clone()));
        all.extend(page);
    }
    let devices: HashSet<_> = all.iter().map(|c| c.device_id.clone()).collect();
    let mut moments: Vec<(u64, i32)> = all
        .iter()
        .flat_map(|c| [(c.created_ms, 1), (c.updated_ms, -1)])
        .collect();
    moments.sort();
    let (mut now, mut most) = (0, 0);
    for (_, change) in moments {
        now += change;
        most = most.max(now);
    }

    let ideal = (count as f64 / f64::from(concurrency)).ceil() * delay_ms as f64 / 1000.0;
    println!();
    println!(
        "| devices | at once | succeeded | failed | time to finish | ideal | devices/s | server CPU | server CPU busy | server RSS before → peak | most at once (log) | commands / devices |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {count} | {concurrency} | {} | {} | {took:.2} s | {ideal:.1} s | {:.0} | {cpu:.2} s | {:.0} % | {:.0} → {:.0} MB | {most} | {} / {} |",
        done.counts.succeeded,
        done.counts.failed,
        count as f64 / took,
        100.0 * cpu / took,
        rss_before as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        all.len(),
        devices.len(),
    );
    println!(
        "server idle with {count} devices heartbeating: {:.1} % of a core",
        idle_cpu * 100.0
    );
    drop(agents);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Starts the release server on free ports with its embedded broker.
fn start_server(dir: &Path, database: &str) -> testkit::ServerProcess {
    testkit::ServerProcess::start(
        env!("CARGO_BIN_EXE_tether-server"),
        "server",
        &[
            ("TETHER_ADDR", "127.0.0.1:0".into()),
            ("TETHER_BROKER_ADDR", "127.0.0.1:0".into()),
            ("TETHER_DATABASE_URL", database.into()),
            ("TETHER_DATA_DIR", dir.display().to_string()),
            ("RUST_LOG", "warn,server=info".into()),
        ],
    )
}
