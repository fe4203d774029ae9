//! Connect rate: how many devices a second can log in, each checked against the
//! database (its secret's argon2id hash), and how long a login takes, with the server
//! account's logins (no hash) beside them as the floor. Not a test: it measures and
//! reports.
//!
//! ```text
//! cargo bench -p server --bench connect_rate -- [devices] [concurrency,…]
//! ```
//!
//! Defaults: 200 devices, 1, 10 and 50 logins at once. One login is a lapin
//! `Connection::connect` (TCP, AMQP handshake, PLAIN, vhost) then its close; each row is
//! `devices` logins, every device once (the server account that many times). The
//! devices' first logins (10 at once) pay the argon2 check; the rows after them are the
//! same devices reconnecting, whose secrets the store remembers beside the hash they
//! verified against (a row read and a SHA-256).
//!
//! Two brokers:
//! - **embedded**: a real [`server::Server`] with its embedded broker and a SQLite
//!   database in a temporary folder; the devices are provisioned in it
//!   ([`store::Store::provision_device`]) and the broker checks each login against it
//!   (`broker_accounts::DeviceLogins`: a row read and an argon2 verification on
//!   tokio's blocking pool, in this process);
//! - **RabbitMQ**: the tests' node that admits devices through Tether's HTTP auth backend
//!   (`eval "$(scripts/identity-broker.sh env)"`), whose auth server checks each
//!   device the same way in its own process; its server account (guest) is RabbitMQ's
//!   internal one. The devices are provisioned in its database and revoked afterwards.
//!
//! Then the cost of one argon2 check alone (`Store::check_device_secret`), one and two
//! at a time. `CONNECT_RATE_PIDS=name=pid,…` (e.g. the auth server's and RabbitMQ's)
//! adds the CPU those processes spent per login to each row; this process's own is
//! always shown (for the embedded broker it holds the broker and the argon2 checks).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use futures_util::{StreamExt as _, TryStreamExt as _, stream};
use lapin::{Connection, ConnectionProperties};
use store::Store;

#[path = "support/host.rs"]
mod host;
use host::{Args, cpu_model, load_average};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::from_env();
    let count: usize = args.parsed(0, "logins", 200)?;
    let concurrency: Vec<usize> = args.list(1, "logins at once", "1,10,50")?;
    let watched = watched_pids();

    println!("# connect rate: {count} logins a row, {concurrency:?} at once");
    println!(
        "machine: {} cores, {}; load average at start {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        load_average()
    );
    println!();
    let mut header = "| broker | account | at once | logins | failed | seconds | logins/s | p50 | p99 | max | CPU/login, bench process |".to_owned();
    let mut rule = "|---|---|---|---|---|---|---|---|---|---|---|".to_owned();
    for (name, _) in &watched {
        header.push_str(&format!(" CPU/login, {name} |"));
        rule.push_str("---|");
    }
    println!("{header}");
    println!("{rule}");

    // (a) A server with its embedded broker, checking devices against its database.
    let dir = std::env::temp_dir().join(format!("tether-connect-rate-{:016x}", fastrand::u64(..)));
    let mut config = server::Config::new(SocketAddr::from(([127, 0, 0, 1], 0)), "");
    config.amqp_url = None;
    config.database_url = format!("sqlite://{}", dir.join("tether.db").display());
    config.data_dir = dir.join("data");
    let server = server::Server::bind(config).await?;
    let embedded = server
        .embedded_broker_url()
        .expect("a server without a broker URL runs the embedded broker")
        .to_owned();
    let tag = format!("{:08x}", fastrand::u32(..));
    let provisioned = Instant::now();
    let embedded_devices: Vec<(String, String, String)> = stream::iter(0..count)
        .map(|n| {
            let (accounts, embedded) = (server.accounts(), &embedded);
            let id = format!("rate-{tag}-{n}");
            async move {
                let secret = accounts.provision_device(&id).await?;
                let url = testkit::with_credential(embedded, &id, &secret);
                anyhow::Ok((id, secret, url))
            }
        })
        .buffered(2)
        .try_collect()
        .await?;
    eprintln!(
        "provisioned {count} devices in the server's database in {:.1} s",
        provisioned.elapsed().as_secs_f64()
    );
    let server_urls = vec![embedded.clone(); count];
    let device_urls: Vec<String> = embedded_devices.iter().map(|(_, _, u)| u.clone()).collect();
    for &at_once in &concurrency {
        row(
            "embedded",
            "server account",
            &server_urls,
            at_once,
            &watched,
        )
        .await;
    }
    row(
        "embedded",
        "devices, first login",
        &device_urls,
        10,
        &watched,
    )
    .await;
    for &at_once in &concurrency {
        row(
            "embedded",
            "devices, reconnecting",
            &device_urls,
            at_once,
            &watched,
        )
        .await;
    }

    // (b) RabbitMQ with Tether's HTTP auth backend.
    let rabbitmq = testkit::rabbitmq_url();
    let database = std::env::var("TETHER_TEST_IDENTITY_DATABASE").map_err(|_| {
        anyhow::anyhow!(
            "TETHER_TEST_IDENTITY_DATABASE is not set: eval \"$(scripts/identity-broker.sh env)\" first"
        )
    })?;
    let identity = Store::open(&database).await?;
    let provisioned = Instant::now();
    let rabbit_devices: Vec<(protocol::DeviceId, String)> = stream::iter(0..count)
        .map(|n| {
            let (identity, rabbitmq) = (&identity, &rabbitmq);
            let id = protocol::DeviceId::new(format!("rate-{tag}-{n}"));
            async move {
                let id = id?;
                let url = testkit::provision_in(identity, rabbitmq, &id).await;
                anyhow::Ok((id, url))
            }
        })
        .buffered(2)
        .try_collect()
        .await?;
    eprintln!(
        "provisioned {count} devices in the identity broker's database in {:.1} s",
        provisioned.elapsed().as_secs_f64()
    );
    let guest_urls = vec![rabbitmq.clone(); count];
    let device_urls: Vec<String> = rabbit_devices.iter().map(|(_, u)| u.clone()).collect();
    for &at_once in &concurrency {
        row(
            "RabbitMQ",
            "server account (internal)",
            &guest_urls,
            at_once,
            &watched,
        )
        .await;
    }
    row(
        "RabbitMQ",
        "devices (HTTP backend), first login",
        &device_urls,
        10,
        &watched,
    )
    .await;
    for &at_once in &concurrency {
        row(
            "RabbitMQ",
            "devices (HTTP backend), reconnecting",
            &device_urls,
            at_once,
            &watched,
        )
        .await;
    }
    for (id, _) in &rabbit_devices {
        let _ = identity.revoke_device(id.as_str()).await;
    }

    // The argon2 check alone, as the embedded broker makes it.
    println!();
    println!(
        "argon2id check of a device secret alone (`Store::check_device_secret` with a wrong secret, never remembered: what a first login costs; m=19 MiB, t=2, p=1):"
    );
    println!();
    println!("| at once | checks | seconds | checks/s | p50 | p99 | CPU/check, bench process |");
    println!("|---|---|---|---|---|---|---|");
    for at_once in [1, 2] {
        let cpu = process_cpu(std::process::id());
        let started = Instant::now();
        let mut latencies: Vec<Duration> = stream::iter(&embedded_devices)
            .map(|(id, secret, _)| {
                let accounts = server.accounts();
                // A wrong secret of the same length: never remembered, so every check
                // runs argon2, as a device's first login does.
                let wrong = "0".repeat(secret.len());
                async move {
                    let t0 = Instant::now();
                    let ok = accounts.check_device_secret(id, &wrong).await;
                    assert!(
                        matches!(ok, Ok(false)),
                        "a wrong secret for {id} is refused"
                    );
                    t0.elapsed()
                }
            })
            .buffer_unordered(at_once)
            .collect()
            .await;
        let elapsed = started.elapsed();
        let cpu = process_cpu(std::process::id()).zip(cpu).map(|(b, a)| b - a);
        latencies.sort();
        println!(
            "| {at_once} | {} | {:.2} | {:.1} | {} | {} | {} |",
            latencies.len(),
            elapsed.as_secs_f64(),
            latencies.len() as f64 / elapsed.as_secs_f64(),
            ms(at(&latencies, 0.50)),
            ms(at(&latencies, 0.99)),
            cpu_per(cpu, latencies.len()),
        );
    }
    println!();
    println!("load average at the end: {}", load_average());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `urls.len()` logins, `at_once` at a time, each with the next URL; prints a row.
async fn row(
    broker: &str,
    account: &str,
    urls: &[String],
    at_once: usize,
    watched: &[(String, u32)],
) {
    // One login first, uncounted: the first connection warms what is lazily set up.
    if let Some(url) = urls.first() {
        let _ = login(url).await;
    }
    let own = process_cpu(std::process::id());
    let others: Vec<Option<Duration>> = watched.iter().map(|(_, pid)| process_cpu(*pid)).collect();
    let started = Instant::now();
    let results: Vec<Result<Duration, String>> = stream::iter(urls)
        .map(|url| login(url))
        .buffer_unordered(at_once)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let own = process_cpu(std::process::id()).zip(own).map(|(b, a)| b - a);
    let others: Vec<Option<Duration>> = watched
        .iter()
        .zip(others)
        .map(|((_, pid), before)| process_cpu(*pid).zip(before).map(|(b, a)| b - a))
        .collect();
    let mut latencies: Vec<Duration> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    latencies.sort();
    let failed = results.len() - latencies.len();
    if let Some(Err(error)) = results.iter().find(|r| r.is_err()) {
        eprintln!("{broker}, {account}, {at_once} at once: {failed} failed, e.g. {error}");
    }
    let mut line = format!(
        "| {broker} | {account} | {at_once} | {} | {failed} | {:.2} | {:.1} | {} | {} | {} | {} |",
        results.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        ms(at(&latencies, 0.50)),
        ms(at(&latencies, 0.99)),
        ms(latencies.last().copied()),
        cpu_per(own, results.len()),
    );
    for cpu in others {
        line.push_str(&format!(" {} |", cpu_per(cpu, results.len())));
    }
    println!("{line}");
}

/// One login: connect, then close; how long both took.
async fn login(url: &str) -> Result<Duration, String> {
    let t0 = Instant::now();
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|e| e.to_string())?;
    connection
        .close(200, "bye".into())
        .await
        .map_err(|e| e.to_string())?;
    Ok(t0.elapsed())
}

/// The `q` quantile of sorted latencies.
fn at(sorted: &[Duration], q: f64) -> Option<Duration> {
    (!sorted.is_empty())
        .then(|| sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1])
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("–".into(), |d| {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    })
}

fn cpu_per(cpu: Option<Duration>, n: usize) -> String {
    match cpu {
        Some(cpu) if n > 0 => format!("{:.1} ms", cpu.as_secs_f64() * 1000.0 / n as f64),
        _ => "–".into(),
    }
}

/// CPU time (user + system) a process has used, from /proc (clock ticks of 10 ms).
fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// `CONNECT_RATE_PIDS=auth=123,rabbitmq=456`: processes whose CPU to report per login.
fn watched_pids() -> Vec<(String, u32)> {
    std::env::var("CONNECT_RATE_PIDS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|pair| {
            let (name, pid) = pair.split_once('=')?;
            Some((name.trim().to_owned(), pid.trim().parse().ok()?))
        })
        .collect()
}
