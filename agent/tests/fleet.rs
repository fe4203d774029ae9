//! A simulated fleet in one `tether-agent --simulate` process, against a broker that
//! lets only some of its devices in: the process keeps running, the devices that got
//! in are online, the others retry with backoff (reported as one summary line, not one
//! line each), and every device comes online once the broker lets it in.

mod support;

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use protocol::{DeviceMessage, names};
use support::{Devices, SERVER_PASSWORD, SERVER_USER, TestBroker, next_within};

/// The agent process, killed if the test ends without stopping it.
struct Agent {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    fn start(url: &str, prefix: &str, count: usize, secrets: &std::path::Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tether-agent"))
            .args(["--simulate", &count.to_string(), "--kind", "gateway"])
            .args(["--device-id", prefix, "--telemetry-ms", "0"])
            .args(["--heartbeat-ms", "1000", "--reconnect-max-ms", "500"])
            .env("TETHER_AMQP_URL", url)
            .env("TETHER_SECRETS_FILE", secrets)
            .env("TETHER_SERVER_ACCOUNTS", SERVER_USER)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            // Logs go to standard output.
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("tether-agent starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (output, kept) = (child.stdout.take().unwrap(), lines.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(output).lines().map_while(Result::ok) {
                eprintln!("agent: {line}");
                kept.lock().unwrap().push(line);
            }
        });
        Self { child, lines }
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits until the agent has written a line `matches` accepts.
    async fn logged(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        for _ in 0..600 {
            if let Some(line) = self.lines.lock().unwrap().iter().find(|l| matches(l)) {
                return line.clone();
            }
            assert!(self.running(), "the agent exited while waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the agent never logged {what}");
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A broker on `addr` letting in the server account and `max_devices` devices at once,
/// stopped (closing every connection) by sending on the returned channel.
async fn broker_on(
    addr: SocketAddr,
    devices: Devices,
    max_devices: usize,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let config = broker::Config {
        addr,
        user: SERVER_USER.into(),
        password: SERVER_PASSWORD.into(),
        authenticator: Some(Arc::new(devices)),
        // The server account's own connection takes a place too.
        max_connections: max_devices + 1,
        ..broker::Config::default()
    };
    let broker = broker::Broker::bind(config)
        .await
        .expect("the broker binds");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(broker.serve(async move {
        let _ = stopped.await;
    }));
    (stop, serving)
}

/// Waits until hellos from `want` distinct devices came through `presence`.
async fn hellos(presence: &mut lapin::Consumer, want: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    while seen.len() < want {
        let delivery = next_within(presence, Duration::from_secs(60))
            .await
            .unwrap_or_else(|| panic!("only {} devices said hello: {seen:?}", seen.len()));
        if let DeviceMessage::Hello(hello) = protocol::decode(&delivery.data).unwrap() {
            seen.insert(hello.device_id.to_string());
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_the_broker_turns_away_retry_while_the_others_stay_online() {
    let prefix = format!("fleet{:06x}", fastrand::u32(..0xff_ffff));
    let ids: Vec<String> = (1..=6).map(|n| format!("{prefix}-gateway-{n}")).collect();
    let dir = std::env::temp_dir().join(format!("tether-fleet-test-{prefix}"));
    std::fs::create_dir_all(&dir).unwrap();
    let secrets = dir.join("devices.secrets");
    let lines: Vec<String> = ids
        .iter()
        .map(|id| format!("{id} secret-of-{id}"))
        .collect();
    std::fs::write(&secrets, lines.join("\n") + "\n").unwrap();
    let right: Vec<(String, String)> = ids
        .iter()
        .map(|id| (id.clone(), format!("secret-of-{id}")))
        .collect();
    let as_devices = |list: &[(String, String)]| {
        Devices::new(
            &list
                .iter()
                .map(|(id, secret)| (id.as_str(), secret.as_str()))
                .collect::<Vec<_>>(),
        )
    };

    // First a broker with room for 4 devices, where the sixth's secret is not the one
    // the device has: 4 of the 6 get in, the fifth finds no place, the sixth no place
    // or a refused login.
    let addr = SocketAddr::from((
        [127, 0, 0, 1],
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(),
    ));
    let mut wrong = right.clone();
    wrong[5].1 = "not-the-devices-secret".into();
    let (stop, serving) = broker_on(addr, as_devices(&wrong), 4).await;
    let test_broker = TestBroker {
        addr,
        devices: Arc::new(Devices::default()),
    };
    let server = test_broker.server().await;
    server.declare_topology().await;
    let mut presence = server
        .listen(names::PRESENCE_EXCHANGE, "presence.*.hello")
        .await;
    let mut agent = Agent::start(&test_broker.url(), &prefix, 6, &secrets);
    let first = hellos(&mut presence, 4).await;
    assert!(first.iter().all(|id| ids.contains(id)), "{first:?}");
    // The others keep failing, summed up in the fleet's report, and the process goes on.
    let report = agent
        .logged("a report of failed connections", |line| {
            line.contains("of 6 devices online") && line.contains("connection attempts failed")
        })
        .await;
    assert!(report.contains("devices retrying with backoff"), "{report}");
    assert!(agent.running());
    let lines = agent.lines.lock().unwrap().clone();
    assert!(
        !lines.iter().any(|line| line.contains("secret-of-")),
        "no secret in the log: {lines:?}"
    );

    // Then the broker comes back with room for everyone and the sixth's secret right:
    // every device comes online, in the same agent process.
    drop(presence);
    drop(server);
    let _ = stop.send(());
    serving.await.unwrap();
    let (stop, serving) = broker_on(addr, as_devices(&right), 100).await;
    let server = test_broker.server().await;
    server.declare_topology().await;
    let mut presence = server
        .listen(names::PRESENCE_EXCHANGE, "presence.*.hello")
        .await;
    // Devices that got in before the listener was bound said hello to nobody: every
    // device says it again when a server asks (as a starting server does).
    server.announce().await;
    let all = hellos(&mut presence, 6).await;
    assert_eq!(all, ids.iter().cloned().collect::<BTreeSet<_>>());
    agent
        .logged("every device online", |line| {
            line.contains("6 of 6 devices online")
        })
        .await;
    assert!(agent.running());
    let status = agent.terminate();
    assert!(status.success(), "{status:?}");
    drop(server);
    let _ = stop.send(());
    serving.await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
