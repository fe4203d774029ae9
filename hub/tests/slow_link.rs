//! Agents behind a GPRS-like link ([`testkit::slow_link`]: 40 kbit/s each way, 500 ms
//! round trip, 2 % of segments lost and resent after 1 s) talking to the hub on the
//! embedded broker, which the hub reaches directly: they come online, answer commands
//! one after another and several at once within the commands' own deadlines, send a
//! bulk reply, follow a log that is being written (a real device's `logs`), and are
//! never taken for offline.
//!
//! Only outcomes are asserted; the figures (round trips, bytes on the wire) are printed
//! with `slow-link:` in front for BENCHMARKS.md:
//! `cargo test -p hub --test slow_link -- --nocapture`. `TETHER_SLOW_LINK_LOSS` (0 to
//! 1) and `TETHER_SLOW_LINK_SEED` change the loss and the random draws.

use std::time::Duration;

use agent::simulate::Kind;
use hub::{Hub, HubConfig};
use protocol::{CommandStatus, DeviceId, api::LiveEvent};
use serde_json::json;
use testkit::{
    Agent, command, eventually,
    slow_link::{Shape, SlowLink, Traffic},
    within,
};
use tokio::{sync::watch, time::Instant};

/// The heartbeat and telemetry interval of the agents here (the agent's default).
const INTERVAL: Duration = Duration::from_secs(5);

/// The link: GPRS-like, with the loss `TETHER_SLOW_LINK_LOSS` asks for.
fn shape() -> Shape {
    let loss = std::env::var("TETHER_SLOW_LINK_LOSS")
        .ok()
        .map(|loss| loss.parse().expect("TETHER_SLOW_LINK_LOSS is a number"));
    Shape::gprs().with_loss(loss.unwrap_or(0.02))
}

fn seed() -> u64 {
    std::env::var("TETHER_SLOW_LINK_SEED")
        .ok()
        .map_or(42, |seed| {
            seed.parse().expect("TETHER_SLOW_LINK_SEED is a number")
        })
}

/// A gateway with an account of its own on the embedded broker, reaching it through a
/// slow link of its own, with a 5 s heartbeat and telemetry every `telemetry`.
async fn gateway_behind_link(
    name: &str,
    seed: u64,
    telemetry: Option<Duration>,
) -> (Agent, SlowLink) {
    let url = testkit::embedded_broker_url();
    let (id, device_url) = testkit::provision(&url, name).await;
    let link = SlowLink::to_broker(&device_url, shape(), seed).await;
    let agent = Agent::start_as(
        &link.url(&device_url),
        id,
        &common::amqp_user(&url),
        Kind::Gateway,
        |config| {
            config.heartbeat = INTERVAL;
            config.telemetry = telemetry;
        },
    );
    (agent, link)
}

async fn start_hub() -> Hub {
    testkit::start_hub(HubConfig::new(testkit::embedded_broker_url())).await
}

/// Waits, longer than `testkit::online` would, for a device behind a slow link (its
/// login takes a dozen round trips); how long it took.
async fn comes_online(hub: &Hub, id: &DeviceId, since: Instant) -> Duration {
    eventually(&format!("{id} online"), Duration::from_secs(30), || {
        hub.device(id).filter(|d| d.online)
    })
    .await;
    since.elapsed()
}

/// What the watch saw: how often it looked, and every time a device was offline.
#[derive(Debug, Default)]
struct Watched {
    samples: u64,
    offline: Vec<String>,
    readings: u64,
    /// The longest the hub had heard nothing from one of them (its `last_seen_ms`).
    longest_silence: Duration,
}

fn now_ms() -> u64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970");
    u64::try_from(since_epoch.as_millis()).expect("a time in ms fits 64 bits")
}

/// Looks at `ids` every 100 ms, and listens to the live events, until `stop`; any
/// sight of one offline is recorded.
fn watch_online(
    hub: &Hub,
    ids: Vec<DeviceId>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Watched> {
    let hub = hub.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let (_, mut events) = hub.subscribe(0);
        let mut watched = Watched::default();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return watched,
                _ = tick.tick() => {
                    watched.samples += 1;
                    for id in &ids {
                        let device = hub.device(id);
                        if !device.as_ref().is_some_and(|d| d.online) {
                            watched.offline.push(format!("{id} offline at {:?} (polled)", started.elapsed()));
                        }
                        if let Some(device) = device {
                            let silence = Duration::from_millis(now_ms().saturating_sub(device.last_seen_ms));
                            watched.longest_silence = watched.longest_silence.max(silence);
                        }
                    }
                }
                event = events.recv() => match event {
                    Ok(LiveEvent::DeviceUpdated { device }) if ids.contains(&device.id) && !device.online => {
                        watched.offline.push(format!("{} offline at {:?} (event)", device.id, started.elapsed()));
                    }
                    Ok(LiveEvent::Telemetry { reading }) if ids.contains(&reading.device_id) => {
                        watched.readings += 1;
                    }
                    _ => {}
                },
            }
        }
    })
}

/// `(p50, p90, max)` of `times`.
fn percentiles(times: &[Duration]) -> (Duration, Duration, Duration) {
    let mut sorted = times.to_vec();
    sorted.sort();
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9), sorted[sorted.len() - 1])
}

/// Runs `request` on `id` and checks that it succeeded (within its deadline, or the hub
/// would have timed it out); its round trip.
async fn succeeds(
    hub: &Hub,
    id: &DeviceId,
    request: protocol::api::SendCommand,
) -> (Duration, serde_json::Value) {
    let started = Instant::now();
    let sent = hub.send(id, request).await.expect("command accepted");
    let done = hub
        .wait(&sent.id, Duration::from_secs(90))
        .await
        .expect("command known");
    assert_eq!(done.status, CommandStatus::Succeeded, "{done:?}");
    (started.elapsed(), done.result.expect("a result"))
}

fn per(traffic: Traffic, count: f64) -> (f64, f64) {
    (traffic.up as f64 / count, traffic.down as f64 / count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_behind_a_gprs_link_answers_commands_and_stays_online() {
    let hub = start_hub().await;
    let shape = shape();
    eprintln!("slow-link: link {shape:?}, seed {}", seed());
    let started = Instant::now();
    let (gateway, link) = gateway_behind_link("gw-gprs", seed(), Some(INTERVAL)).await;
    // The same without telemetry: its traffic is heartbeats alone.
    let (quiet, quiet_link) = gateway_behind_link("gw-gprs-quiet", seed() + 1, None).await;
    let online_after = comes_online(&hub, &gateway.id, started).await;
    comes_online(&hub, &quiet.id, started).await;
    eprintln!(
        "slow-link: online after {online_after:?}; login {} B up, {} B down",
        link.traffic().up,
        link.traffic().down
    );

    let (stop_watch, stopped) = watch::channel(false);
    let window = Instant::now();
    let watcher = watch_online(&hub, vec![gateway.id.clone(), quiet.id.clone()], stopped);

    // Idle: two heartbeat (and telemetry) intervals exactly, so each periodic message
    // is in the window exactly twice whatever its phase.
    let idle = 2.0;
    let (before, quiet_before) = (link.traffic(), quiet_link.traffic());
    tokio::time::sleep(INTERVAL * 2).await;
    let (idle_traffic, quiet_idle) = (link.traffic() - before, quiet_link.traffic() - quiet_before);
    let (heartbeat_up, heartbeat_down) = per(quiet_idle, idle);
    let (both_up, both_down) = per(idle_traffic, idle);
    eprintln!(
        "slow-link: per heartbeat {heartbeat_up:.0} B up, {heartbeat_down:.0} B down; per reading (3 metrics) {:.0} B up, {:.0} B down",
        both_up - heartbeat_up,
        both_down - heartbeat_down,
    );
    let idle_rate = |traffic: Traffic| {
        (
            traffic.up as f64 / (INTERVAL * 2).as_secs_f64(),
            traffic.down as f64 / (INTERVAL * 2).as_secs_f64(),
        )
    };
    let (idle_up_per_s, idle_down_per_s) = idle_rate(idle_traffic);

    // 20 commands, one after another.
    let mut round_trips = Vec::new();
    let before = link.traffic();
    let sequential_started = Instant::now();
    for i in 0..20 {
        let message = format!("ping {i}");
        let (round_trip, result) = succeeds(
            &hub,
            &gateway.id,
            command("echo", json!({ "message": message }), None),
        )
        .await;
        assert_eq!(result, json!({ "message": message }));
        round_trips.push(round_trip);
    }
    let spent = sequential_started.elapsed().as_secs_f64();
    let commands_traffic = link.traffic() - before;
    let (p50, p90, max) = percentiles(&round_trips);
    eprintln!(
        "slow-link: 20 sequential echo commands: round trip p50 {p50:?}, p90 {p90:?}, max {max:?}; per command {:.0} B up, {:.0} B down (idle traffic taken out)",
        (commands_traffic.up as f64 - idle_up_per_s * spent) / 20.0,
        (commands_traffic.down as f64 - idle_down_per_s * spent) / 20.0,
    );

    // 5 at once.
    let concurrent = futures_util::future::join_all((0..5).map(|i| {
        let (hub, id) = (&hub, &gateway.id);
        async move {
            let message = format!("together {i}");
            let (round_trip, result) = succeeds(
                hub,
                id,
                command("echo", json!({ "message": message }), None),
            )
            .await;
            assert_eq!(result, json!({ "message": message }));
            round_trip
        }
    }))
    .await;
    let (p50, p90, max) = percentiles(&concurrent);
    eprintln!(
        "slow-link: 5 concurrent echo commands: round trip p50 {p50:?}, p90 {p90:?}, max {max:?}"
    );

    // Watch for 30 s in all.
    tokio::time::sleep_until(window + Duration::from_secs(30)).await;
    stop_watch.send(true).unwrap();
    let watched = watcher.await.unwrap();
    eprintln!(
        "slow-link: watched {:?}: {} samples, {} readings arrived, longest silence {:?}, offline sightings: {:?}; link connections {} and {}",
        window.elapsed(),
        watched.samples,
        watched.readings,
        watched.longest_silence,
        watched.offline,
        link.traffic().connections,
        quiet_link.traffic().connections,
    );
    assert!(watched.offline.is_empty(), "{:?}", watched.offline);
    let latest = hub
        .device(&gateway.id)
        .map(|d| d.latest)
        .unwrap_or_default();
    assert!(!latest.is_empty(), "readings cross the link");
    assert_eq!(
        (link.traffic().connections, quiet_link.traffic().connections),
        (1, 1),
        "no reconnection"
    );

    within(Duration::from_secs(30), "the agents stop", async {
        tokio::join!(gateway.stop(), quiet.stop())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_reply_crosses_a_gprs_link() {
    let hub = start_hub().await;
    let (gateway, link) = gateway_behind_link("gw-gprs-bulk", seed() + 2, Some(INTERVAL)).await;
    comes_online(&hub, &gateway.id, Instant::now()).await;
    let (stop_watch, stopped) = watch::channel(false);
    let watcher = watch_online(&hub, vec![gateway.id.clone()], stopped);

    // The longest echo the gateway allows (1,000 characters) each way.
    let message = "x".repeat(1000);
    let before = link.traffic();
    let (round_trip, result) = succeeds(
        &hub,
        &gateway.id,
        command("echo", json!({ "message": message }), None),
    )
    .await;
    assert_eq!(result, json!({ "message": message }));
    let spent = link.traffic() - before;
    eprintln!(
        "slow-link: echo of 1,000 characters: round trip {round_trip:?}, {} B up, {} B down",
        spent.up, spent.down
    );

    // The bulk reply: 200 log lines (about 8 KiB of result), each also streamed as
    // progress; the gateway itself takes 20 s.
    let before = link.traffic();
    let (round_trip, result) = succeeds(
        &hub,
        &gateway.id,
        command("collect_logs", json!({ "lines": 200 }), Some(60_000)),
    )
    .await;
    let lines = result["lines"].as_array().expect("lines");
    assert_eq!(lines.len(), 200);
    let spent = link.traffic() - before;
    eprintln!(
        "slow-link: collect_logs of 200 lines ({} B of result JSON, 200 progress messages): round trip {round_trip:?} (20 s of it the gateway's own), {} B up, {} B down",
        result.to_string().len(),
        spent.up,
        spent.down
    );
    stop_watch.send(true).unwrap();
    let watched = watcher.await.unwrap();
    eprintln!(
        "slow-link: during the bulk reply: {} samples, longest silence {:?}, offline sightings: {:?}",
        watched.samples, watched.longest_silence, watched.offline
    );
    assert!(watched.offline.is_empty(), "{:?}", watched.offline);
    assert_eq!(link.traffic().connections, 1, "no reconnection");
    within(Duration::from_secs(30), "the agent stops", gateway.stop()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_comes_back_after_its_slow_link_drops_out() {
    let hub = start_hub().await;
    let (gateway, link) = gateway_behind_link("gw-gprs-sever", seed() + 3, Some(INTERVAL)).await;
    comes_online(&hub, &gateway.id, Instant::now()).await;

    let before = hub.device(&gateway.id).expect("known").since_ms;
    link.sever();
    let severed = Instant::now();
    // Online again in a new session (it came online, or went offline and back, since).
    eventually(
        &format!("{} back", gateway.id),
        Duration::from_secs(60),
        || {
            hub.device(&gateway.id)
                .filter(|d| d.online && d.since_ms > before && link.traffic().connections >= 2)
        },
    )
    .await;
    let (round_trip, result) = succeeds(
        &hub,
        &gateway.id,
        command("echo", json!({ "message": "back" }), None),
    )
    .await;
    assert_eq!(result, json!({ "message": "back" }));
    eprintln!(
        "slow-link: after a drop-out: a command answered {:?} after the link was cut (round trip {round_trip:?}), {} connections",
        severed.elapsed(),
        link.traffic().connections
    );
    within(Duration::from_secs(30), "the agent stops", gateway.stop()).await;
}

/// A real device's log followed across the link while lines are written to it (5 a
/// second, about 90 bytes each): every line arrives once, in order, and soon after it
/// was written; the device stays online. The lag of each line (written → on the hub's
/// live channel) is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_followed_across_a_gprs_link_keeps_up() {
    use std::io::Write as _;

    use agent::{
        config_file::{Overrides, parse},
        real::RealDevice,
    };

    const LINES: usize = 100;
    const EVERY: Duration = Duration::from_millis(200);

    let hub = start_hub().await;
    let url = testkit::embedded_broker_url();
    let (id, device_url) = testkit::provision(&url, "ctl-gprs-logs").await;
    let link = SlowLink::to_broker(&device_url, shape(), seed() + 4).await;
    let dir = std::env::temp_dir().join(testkit::unique("tether-slow-logs"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("app.log");
    std::fs::write(&path, "started\n").unwrap();
    let text = format!(
        // The credential is in the URL the agent is started with; the file's is unused.
        "amqp_url = \"{device_url}\"\ndevice_id = \"{id}\"\nsecret = \"unused\"\n\
         [logs]\nfollow_max_s = 120\n[logs.sources]\napp = {{ file = \"{}\" }}\n",
        path.display()
    );
    let loaded = parse(&text, &dir, &Overrides::default()).expect("a valid configuration");
    let agent = Agent::start_handler(
        &link.url(&device_url),
        id.clone(),
        &common::amqp_user(&url),
        "controller",
        std::sync::Arc::new(RealDevice::configured(&loaded, Vec::new())),
        |config| {
            config.heartbeat = INTERVAL;
            config.telemetry = None;
        },
    );
    comes_online(&hub, &id, Instant::now()).await;
    let (stop_watch, stopped) = watch::channel(false);
    let watcher = watch_online(&hub, vec![id.clone()], stopped);

    let (_, mut events) = hub.subscribe(0);
    let before = link.traffic();
    let sent = hub
        .send(
            &id,
            command(
                "logs",
                json!({"source": "app", "lines": 1, "follow": true, "follow_s": 40}),
                Some(60_000),
            ),
        )
        .await
        .expect("command accepted");
    // Written once the follow has surely begun (the command crossed the link).
    let writer = {
        let path = path.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let mut written = Vec::new();
            for n in 0..LINES {
                let line = format!(
                    "seq={n:03} sensor=4 value={:>6.2} {}",
                    n as f64 * 0.37,
                    "·".repeat(20)
                );
                let mut file = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .unwrap();
                writeln!(file, "{line}").unwrap();
                written.push((line, Instant::now()));
                tokio::time::sleep(EVERY).await;
            }
            written
        })
    };

    // What came, and when, until every line did (then the follow is cancelled).
    let mut arrived: Vec<(String, Instant)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    while arrived.len() < LINES + 1 {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {} lines came: {arrived:?}",
                    arrived.len(),
                    LINES + 1
                )
            })
            .expect("the live channel keeps up");
        if let LiveEvent::CommandUpdated { command } = event
            && command.id == sent.id
        {
            assert!(!command.status.is_terminal(), "it ended early: {command:?}");
            if let Some(message) = command
                .message
                .filter(|_| command.status == CommandStatus::Progress)
            {
                let now = Instant::now();
                arrived.extend(message.split('\n').map(|line| (line.to_owned(), now)));
            }
        }
    }
    let traffic = link.traffic() - before;
    let written: Vec<(String, Instant)> = writer.await.unwrap();
    hub.cancel(&sent.id).await.expect("the follow is cancelled");

    let lines: Vec<&str> = arrived.iter().map(|(line, _)| line.as_str()).collect();
    let mut expected = vec!["started"];
    expected.extend(written.iter().map(|(line, _)| line.as_str()));
    assert_eq!(lines, expected, "every line once, in order");
    let lags: Vec<Duration> = written
        .iter()
        .zip(&arrived[1..])
        .map(|((_, at), (_, came))| came.duration_since(*at))
        .collect();
    let (p50, p90, max) = percentiles(&lags);
    eprintln!(
        "slow-link: log follow of {LINES} lines ({} B each, one every {EVERY:?}): lag p50 {p50:?}, p90 {p90:?}, max {max:?}; {} B up, {} B down",
        written[0].0.len() + 1,
        traffic.up,
        traffic.down
    );
    // The follow polls the file every 500 ms and sends at most 4 messages a second;
    // the link adds 250 ms each way and a resent segment 1 s.
    assert!(max < Duration::from_secs(5), "a line took {max:?}");

    stop_watch.send(true).unwrap();
    let watched = watcher.await.unwrap();
    eprintln!(
        "slow-link: during the log follow: longest silence {:?}, offline sightings: {:?}",
        watched.longest_silence, watched.offline
    );
    assert!(watched.offline.is_empty(), "{:?}", watched.offline);
    assert_eq!(link.traffic().connections, 1, "no reconnection");
    within(Duration::from_secs(30), "the agent stops", agent.stop()).await;
    let _ = std::fs::remove_dir_all(&dir);
}
