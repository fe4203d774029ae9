//! Fixtures shared by Tether's integration tests (the hub's, the API's, the HTTP
//! pages'): which broker to test against, unique names so tests can share one broker,
//! simulated agents, raw devices written with bare lapin to misbehave in ways the agent
//! never would, and waiting for a condition with a clear message when it does not come.
//!
//! Every test talks to real parts. A broker that is not there fails the test that
//! needs it; nothing is skipped.

use std::{future::Future, sync::Arc, sync::OnceLock, time::Duration};

use agent::simulate::{Kind, Simulated};
use hub::{Hub, HubConfig};
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicPublishOptions, QueueDeclareOptions},
    types::FieldTable,
};
use protocol::{DeviceId, DeviceMessage, Hello, api::SendCommand, names};
use serde_json::{Value, json};
use tokio::sync::watch;

pub use common::Shutdown;

/// RabbitMQ: `TETHER_TEST_AMQP_URL`, default the local one (scripts/test.sh starts it).
pub fn rabbitmq_url() -> String {
    std::env::var("TETHER_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The embedded broker of this test binary: started once, on a free port, in a runtime
/// of its own so that it outlives each test's runtime.
pub fn embedded_broker_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("a runtime for the broker");
            runtime.block_on(async move {
                let url = broker::Broker::start(broker::Config::on_free_port())
                    .await
                    .expect("the embedded broker starts");
                sender.send(url).expect("the test waits for the URL");
                // Keeps this runtime, and with it the broker, alive.
                std::future::pending::<()>().await;
            });
        });
        receiver.recv().expect("the embedded broker started")
    })
    .clone()
}

/// `name` with a random suffix: queues, devices and sessions of concurrent tests on one
/// broker never collide.
pub fn unique(name: &str) -> String {
    format!("{name}-{:08x}", fastrand::u32(..))
}

/// Polls `check` every 20 ms until it gives a value; panics after `within`.
pub async fn eventually<T>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `future`'s output; panics if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {limit:?}"))
}

/// A hub on the broker at `url`, which must be reachable.
pub async fn start_hub(config: HubConfig) -> Hub {
    let url = config.amqp_url.clone();
    let hub = Hub::start(config, &Shutdown::new()).await;
    assert!(
        hub.is_connected(),
        "the broker must be running for these tests at {url} (scripts/test.sh starts RabbitMQ)"
    );
    hub
}

/// Waits until `hub` sees `id` online.
pub async fn online(hub: &Hub, id: &DeviceId) {
    eventually(&format!("{id} online"), Duration::from_secs(10), || {
        hub.device(id).filter(|d| d.online)
    })
    .await;
}

/// A command request from JSON arguments.
pub fn command(name: &str, args: Value, timeout_ms: Option<u64>) -> SendCommand {
    SendCommand {
        name: name.into(),
        args: serde_json::from_value(args).expect("arguments are a JSON object"),
        timeout_ms,
    }
}

/// A running simulated agent; [`Agent::stop`] makes it say bye and disconnect.
#[derive(Debug)]
pub struct Agent {
    pub id: DeviceId,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Agent {
    /// Starts a simulated `kind` named after `name` (made unique) on the broker at `url`,
    /// with `configure` applied to its settings.
    pub fn start(
        url: &str,
        name: &str,
        kind: Kind,
        configure: impl FnOnce(&mut agent::Config),
    ) -> Self {
        let id = DeviceId::new(unique(name)).expect("a valid device id");
        let mut config = agent::Config::new(url, id.clone(), kind.name());
        config.reconnect_min = Duration::from_millis(50);
        configure(&mut config);
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(agent::run(
            config,
            Arc::new(Simulated::new(kind)),
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        ));
        Self { id, stop, task }
    }

    /// Says bye, disconnects, and checks that the agent ran without error.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.await.expect("agent task").expect("agent ran");
    }

    /// Stops it without waiting (as dropping a test's fixtures does).
    pub fn signal_stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// A device written with bare lapin, to misbehave in ways the agent never would.
#[derive(Debug)]
pub struct RawDevice {
    pub id: DeviceId,
    pub session_id: String,
    pub inbox: String,
    pub connection: Connection,
    pub channel: lapin::Channel,
}

impl RawDevice {
    /// Connects to `url`, declares an inbox and says hello with one `echo` command and
    /// one `temp` metric (°C, -10 to 50).
    pub async fn connect(url: &str, name: &str, heartbeat_ms: u64) -> Self {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("the broker must be running at {url}: {e}"));
        let channel = connection.create_channel().await.unwrap();
        let private = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        let inbox = channel
            .queue_declare("".into(), private, FieldTable::default())
            .await
            .unwrap()
            .name()
            .to_string();
        let id = DeviceId::new(unique(name)).unwrap();
        let device = Self {
            id,
            session_id: unique("session"),
            inbox,
            connection,
            channel,
        };
        let capabilities = serde_json::from_value(json!({
            "commands": [{"name": "echo"}],
            "metrics": [{"name": "temp", "unit": "°C", "min": -10.0, "max": 50.0}]
        }))
        .unwrap();
        let hello = DeviceMessage::Hello(Hello {
            device_id: device.id.clone(),
            session_id: device.session_id.clone(),
            inbox: device.inbox.clone(),
            kind: "raw".into(),
            firmware: "0".into(),
            heartbeat_ms,
            capabilities,
        });
        device
            .publish_presence("hello", &protocol::encode(&hello))
            .await;
        device
    }

    pub async fn publish_presence(&self, kind: &str, body: &[u8]) {
        let key = format!("presence.{}.{kind}", self.id);
        self.publish(
            names::PRESENCE_EXCHANGE,
            &key,
            body,
            BasicProperties::default(),
        )
        .await;
    }

    /// Publishes and waits for the broker to take it.
    pub async fn publish(
        &self,
        exchange: &str,
        key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) {
        self.channel
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

/// A user of `role` (a unique name, groups as given) with an API token: the secret for
/// `Authorization: Bearer`, and the user's name.
pub async fn user_token(
    accounts: &store::Store,
    role: protocol::auth::Role,
    groups: &[&str],
) -> (String, String) {
    let name = unique(role.as_str());
    let groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
    accounts
        .add_user(&name, "correct horse battery", role, &groups)
        .await
        .expect("create a test user");
    let token = accounts
        .create_token(&name, "tests", role)
        .await
        .expect("create a test token");
    (token.secret, name)
}

/// An HTTP client that sends `token` with every request.
pub fn api_client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = format!("Bearer {token}")
        .parse()
        .expect("a token is header text");
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("an HTTP client")
}
