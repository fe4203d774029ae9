//! What one device's connection costs the embedded broker: heap bytes and blocks, and
//! resident memory, per connection, with thousands connected and idle.
//!
//! ```sh
//! cargo bench -p broker --bench connection_memory                  # 2,000 devices
//! cargo bench -p broker --bench connection_memory -- 5000          # or another count
//! CARGO_PROFILE_BENCH_DEBUG=line-tables-only \
//!   cargo bench -p broker --bench connection_memory -- 2000 --sites # and where it goes
//! ```
//!
//! The devices run in a child process (this benchmark again, started with
//! `TETHER_CONNECTION_MEMORY_CLIENT`), so the figures are the broker's alone. Each logs
//! in as a device of its own and sets up what `tether-agent` sets up: a channel, the
//! passive checks of Tether's exchanges, a broker-named exclusive inbox bound to
//! `tether.discover`, a prefetch, a consumer; then it says hello and stays idle.
//!
//! The heap figures come from `dhat` (every allocation counted, exactly); resident memory
//! from `/proc/self/status` in a second run without the profiler, whose own bookkeeping
//! would weigh on it. `--sites` also prints the allocation sites that hold the most bytes
//! per connection at the end (needs debug line tables, as above).

use std::{
    io::{BufRead, BufReader, Write},
    net::IpAddr,
    pin::Pin,
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use broker::{Authenticator, Broker, Config};
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{
        BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ExchangeDeclareOptions,
        QueueBindOptions, QueueDeclareOptions,
    },
    types::FieldTable,
};
use protocol::{
    names::{self, DeviceId, ExchangeType, PresenceKind},
    policy::Account,
};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const CLIENT: &str = "TETHER_CONNECTION_MEMORY_CLIENT";
/// Connections set up at once by the client.
const AT_ONCE: usize = 64;

/// Every `bench-<n>` is a device; its password is irrelevant here.
struct Devices;

impl Authenticator for Devices {
    fn authenticate<'a>(
        &'a self,
        user: &'a str,
        _password: &'a str,
        _peer: IpAddr,
    ) -> Pin<Box<dyn Future<Output = Option<Account>> + Send + 'a>> {
        Box::pin(async move { DeviceId::new(user).ok().map(Account::Device) })
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if let Ok(url) = std::env::var(CLIENT) {
        let count: usize = args[0].parse().expect("a count");
        let first: usize = args[1].parse().expect("a first index");
        return client(&url, first, count);
    }
    let devices: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(2_000);
    let sites = args.iter().any(|a| a == "--sites");
    println!("# Embedded broker: memory per idle device connection ({devices} devices)\n");
    let heap = measure(devices, Mode::Heap { sites });
    let rss = measure(devices, Mode::Resident);
    println!("| measure | per connection |");
    println!("|---|---|");
    if let Figures::Heap { bytes, blocks } = heap {
        println!("| heap bytes held | {bytes:.0} B |");
        println!("| heap blocks held | {blocks:.1} |");
    }
    if let Figures::Resident { kib } = rss {
        println!("| resident memory (RSS) | {:.0} B |", kib * 1024.0);
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Heap { sites: bool },
    Resident,
}

enum Figures {
    Heap { bytes: f64, blocks: f64 },
    Resident { kib: f64 },
}

/// Starts a broker, connects `devices` devices to it from a child process, and returns
/// what the broker held per device once they were all set up.
fn measure(devices: usize, mode: Mode) -> Figures {
    let profiler = match mode {
        Mode::Heap { .. } => Some(
            dhat::Profiler::builder()
                .file_name(std::env::temp_dir().join("tether-connection-memory.json"))
                .build(),
        ),
        Mode::Resident => None,
    };
    let runtime = runtime();
    let url = runtime.block_on(async {
        let broker = Broker::bind(Config {
            authenticator: Some(Arc::new(Devices)),
            ..Config::on_free_port()
        })
        .await
        .expect("the broker binds");
        let url = broker.url().expect("its address");
        tokio::spawn(broker.serve(std::future::pending()));
        declare_topology(&url).await;
        url
    });
    // A first batch grows what grows once (maps, the runtime's slabs), then the
    // measured batch is counted from there.
    let warm = connect(&url, 0, 200.min(devices));
    std::thread::sleep(Duration::from_millis(500));
    let before = snapshot(mode);
    let measured = connect(&url, 200, devices);
    std::thread::sleep(Duration::from_secs(2));
    let after = snapshot(mode);
    let per = |a: f64, b: f64| (b - a) / devices as f64;
    let figures = match (before, after) {
        (
            Figures::Heap {
                bytes: b0,
                blocks: k0,
            },
            Figures::Heap {
                bytes: b1,
                blocks: k1,
            },
        ) => Figures::Heap {
            bytes: per(b0, b1),
            blocks: per(k0, k1),
        },
        (Figures::Resident { kib: r0 }, Figures::Resident { kib: r1 }) => {
            Figures::Resident { kib: per(r0, r1) }
        }
        _ => unreachable!("both snapshots are of one mode"),
    };
    if let (Mode::Heap { sites: true }, Some(profiler)) = (mode, profiler) {
        // Written now, while every device is connected: `eb` is what each site holds.
        drop(profiler);
        print_sites(devices + 200 + 1);
    }
    drop(measured);
    drop(warm);
    runtime.shutdown_timeout(Duration::from_secs(2));
    figures
}

fn snapshot(mode: Mode) -> Figures {
    match mode {
        Mode::Heap { .. } => {
            let stats = dhat::HeapStats::get();
            Figures::Heap {
                bytes: stats.curr_bytes as f64,
                blocks: stats.curr_blocks as f64,
            }
        }
        Mode::Resident => {
            let status = std::fs::read_to_string("/proc/self/status").expect("/proc");
            let kib = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .expect("VmRSS");
            Figures::Resident { kib }
        }
    }
}

/// Tether's exchanges, as a server declares them.
async fn declare_topology(url: &str) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("the server account connects");
    let channel = connection.create_channel().await.expect("a channel");
    for (name, kind) in names::EXCHANGES {
        let kind = match kind {
            ExchangeType::Topic => lapin::ExchangeKind::Topic,
            ExchangeType::Fanout => lapin::ExchangeKind::Fanout,
        };
        channel
            .exchange_declare(
                name.into(),
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("the exchange is declared");
    }
    // Kept open, as a server's connection is.
    std::mem::forget(connection);
}

/// The devices `first..first + count`, connected from a child process that stays until
/// the returned handle drops.
fn connect(url: &str, first: usize, count: usize) -> ChildDevices {
    let mut child = Command::new(std::env::current_exe().expect("this benchmark"))
        .args([count.to_string(), first.to_string()])
        .env(CLIENT, url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the client starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("its stdout"))
        .read_line(&mut line)
        .expect("the client reports");
    assert_eq!(line.trim(), "ready", "the client failed: {line}");
    ChildDevices(child)
}

struct ChildDevices(std::process::Child);

impl Drop for ChildDevices {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The child: sets the devices up, says `ready`, and holds them until stdin closes.
fn client(url: &str, first: usize, count: usize) {
    let runtime = runtime();
    let held = runtime.block_on(async {
        let mut held = Vec::with_capacity(count);
        let ids: Vec<usize> = (first..first + count).collect();
        for batch in ids.chunks(AT_ONCE) {
            let set_up = batch.iter().map(|n| device(url, *n));
            held.extend(futures_util::future::join_all(set_up).await);
        }
        held
    });
    println!("ready");
    std::io::stdout().flush().expect("stdout");
    let mut rest = String::new();
    let _ = std::io::stdin().read_line(&mut rest);
    drop(held);
}

async fn device(url: &str, n: usize) -> (Connection, lapin::Consumer) {
    let id = DeviceId::new(format!("bench-{n}")).expect("a valid id");
    // The frame size a simulated fleet asks for (so each client keeps small buffers).
    let url = format!(
        "{}?frame_max=4096",
        url.replacen("guest:guest", &format!("{id}:secret"), 1)
    );
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("a device connects");
    let channel = connection.create_channel().await.expect("a channel");
    for (name, kind) in [
        (names::PRESENCE_EXCHANGE, lapin::ExchangeKind::Topic),
        (names::TELEMETRY_EXCHANGE, lapin::ExchangeKind::Topic),
        (names::DISCOVER_EXCHANGE, lapin::ExchangeKind::Fanout),
    ] {
        let passive = ExchangeDeclareOptions {
            passive: true,
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(name.into(), kind, passive, FieldTable::default())
            .await
            .expect("the exchange exists");
    }
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
        .await
        .expect("the inbox is declared");
    channel
        .queue_bind(
            inbox.name().clone(),
            names::DISCOVER_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("the inbox is bound");
    channel
        .basic_qos(8, BasicQosOptions::default())
        .await
        .expect("a prefetch");
    let consumer = channel
        .basic_consume(
            inbox.name().clone(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("the inbox is consumed");
    channel
        .basic_publish(
            names::PRESENCE_EXCHANGE.into(),
            names::presence_key(&id, PresenceKind::Hello)
                .as_str()
                .into(),
            BasicPublishOptions::default(),
            br#"{"type":"hello"}"#,
            BasicProperties::default(),
        )
        .await
        .expect("hello is sent");
    (connection, consumer)
}

/// The allocation sites holding the most at the end of the profile, per connection.
fn print_sites(connections: usize) {
    let path = std::env::temp_dir().join("tether-connection-memory.json");
    let text = std::fs::read_to_string(&path).expect("dhat's profile");
    let profile: serde_json::Value = serde_json::from_str(&text).expect("dhat's JSON");
    let frames = profile["ftbl"].as_array().expect("a frame table");
    let mut sites: Vec<(u64, u64, String)> = profile["pps"]
        .as_array()
        .expect("program points")
        .iter()
        .map(|pp| {
            let bytes = pp["eb"].as_u64().unwrap_or(0);
            let blocks = pp["ebk"].as_u64().unwrap_or(0);
            let trace = pp["fs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| frames.get(f.as_u64()? as usize)?.as_str())
                .map(|f| {
                    // `0x…: function (file:line:column)`: the function and where.
                    let f = f.split_once(": ").map_or(f, |(_, rest)| rest);
                    let name = f.split(" (").next().unwrap_or(f);
                    let place = f
                        .rsplit_once('/')
                        .map_or("", |(_, place)| place.trim_end_matches(')'));
                    (name.to_owned(), place.to_owned())
                })
                .filter(|(name, _)| !allocator(name))
                .take(4)
                .map(|(name, place)| format!("{name} ({place})"))
                .collect::<Vec<_>>()
                .join(" < ");
            (bytes, blocks, trace)
        })
        .filter(|(bytes, _, _)| *bytes > 0)
        .collect();
    sites.sort_by_key(|site| std::cmp::Reverse(site.0));
    println!("\nWhere the bytes are held at the end (per connection, top 25):\n");
    println!("| bytes | blocks | site |");
    println!("|---|---|---|");
    for (bytes, blocks, trace) in sites.iter().take(25) {
        println!(
            "| {:.0} | {:.2} | {} |",
            *bytes as f64 / connections as f64,
            *blocks as f64 / connections as f64,
            trace.replace('|', "\\|")
        );
    }
    println!();
}

/// Frames of the allocator itself, which every site shares.
fn allocator(name: &str) -> bool {
    const NAMES: &[&str] = &[
        "alloc",
        "__rust_alloc",
        "__rust_alloc_zeroed",
        "alloc_zeroed",
        "alloc_impl",
        "alloc_impl_runtime",
        "allocate",
        "allocate_zeroed",
        "box_new_uninit",
        "exchange_malloc",
    ];
    NAMES.contains(&name) || name.starts_with("new<") || name.contains("dhat")
}

/// Two workers, as the server's runtime has on this machine; the same for both sides.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}
