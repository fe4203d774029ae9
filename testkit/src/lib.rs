//! Fixtures shared by Tether's integration tests (the hub's, the API's, the HTTP
//! pages'): which broker to test against, unique names so tests can share one broker,
//! simulated agents, raw devices written with bare lapin to misbehave in ways the agent
//! never would, and waiting for a condition with a clear message when it does not come.
//!
//! Every test talks to real parts. A broker that is not there fails the test that
//! needs it; nothing is skipped.
//!
//! Devices log in as themselves, as in production: every simulated or raw device is
//! first given an account of its own on the broker it uses ([`provision`]): in this
//! test binary's embedded broker, whose authenticator knows them, or in the database
//! of the RabbitMQ node the tests run with Tether's HTTP auth backend
//! (`scripts/identity-broker.sh`). The tests' servers log in with that broker's server
//! account (the URL [`rabbitmq_url`] and [`embedded_broker_url`] give), and the agents
//! obey that account.

use std::{
    collections::HashMap,
    future::Future,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use agent::simulate::{Kind, Simulated};
use hub::{Hub, HubConfig};
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicPublishOptions, QueueDeclareOptions},
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::FieldTable,
};
use protocol::{DeviceId, DeviceMessage, Hello, api::SendCommand, names, policy::Account};
use serde_json::{Value, json};
use tokio::sync::watch;

pub use common::Shutdown;

pub mod fault_link;
pub mod server_process;
pub mod slow_link;

pub use server_process::ServerProcess;

/// The RabbitMQ node that admits devices through Tether's HTTP auth backend
/// (`TETHER_TEST_IDENTITY_AMQP_URL`, its server account's URL), which scripts/test.sh
/// starts with `scripts/identity-broker.sh`. Panics, saying how to start it, when unset.
pub fn rabbitmq_url() -> String {
    identity_env("TETHER_TEST_IDENTITY_AMQP_URL")
}

/// The database the identity RabbitMQ's auth backend checks devices against
/// (`TETHER_TEST_IDENTITY_DATABASE`).
fn identity_database() -> String {
    identity_env("TETHER_TEST_IDENTITY_DATABASE")
}

fn identity_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need the RabbitMQ node that checks devices with Tether's auth backend; \
             start it with `eval \"$(scripts/identity-broker.sh start)\"` (scripts/test.sh does)"
        )
    })
}

/// Device accounts of this test binary's embedded broker: id → secret.
fn embedded_devices() -> &'static Mutex<HashMap<String, String>> {
    static DEVICES: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    DEVICES.get_or_init(Mutex::default)
}

/// The embedded broker's authenticator: the devices [`provision`] registered. Public
/// for a test that runs a broker of its own (one it stops, say) with the same devices.
#[derive(Debug)]
pub struct EmbeddedDevices;

impl broker::Authenticator for EmbeddedDevices {
    fn authenticate<'a>(
        &'a self,
        user: &'a str,
        password: &'a str,
        _peer: IpAddr,
    ) -> Pin<Box<dyn Future<Output = Option<Account>> + Send + 'a>> {
        let known = embedded_devices()
            .lock()
            .expect("no test panics holding the device list")
            .get(user)
            .is_some_and(|secret| secret == password);
        let account = known
            .then(|| DeviceId::new(user).ok().map(Account::Device))
            .flatten();
        Box::pin(std::future::ready(account))
    }
}

/// The embedded broker of this test binary: started once, on a free port, in a runtime
/// of its own so that it outlives each test's runtime. Its server account is `guest`
/// (from this machine); devices [`provision`]ed for it log in as themselves.
pub fn embedded_broker_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(start_embedded_broker).clone()
}

/// An embedded broker of the caller's own, for a test that must be alone on its broker:
/// devices [`provision`]ed on [`embedded_broker_url`] log in to it too (with their URL's
/// address replaced by this one's). It lasts as long as the test binary.
pub fn private_embedded_broker_url() -> String {
    start_embedded_broker()
}

fn start_embedded_broker() -> String {
    {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("a runtime for the broker");
            runtime.block_on(async move {
                let config = broker::Config {
                    authenticator: Some(Arc::new(EmbeddedDevices)),
                    ..broker::Config::on_free_port()
                };
                let url = broker::Broker::start(config)
                    .await
                    .expect("the embedded broker starts");
                sender.send(url).expect("the test waits for the URL");
                // Keeps this runtime, and with it the broker, alive.
                std::future::pending::<()>().await;
            });
        });
        receiver.recv().expect("the embedded broker started")
    }
}

/// A device account, made unique from `name`, on the test broker at `broker_url`
/// ([`embedded_broker_url`] or [`rabbitmq_url`]): its id and the URL it logs in with.
pub async fn provision(broker_url: &str, name: &str) -> (DeviceId, String) {
    let id = DeviceId::new(unique(name)).expect("a valid device id");
    if broker_url == embedded_broker_url() {
        let secret = format!("{:032x}", fastrand::u128(..));
        embedded_devices()
            .lock()
            .expect("no test panics holding the device list")
            .insert(id.to_string(), secret.clone());
        let url = with_credential(broker_url, id.as_str(), &secret);
        return (id, url);
    }
    assert_eq!(
        broker_url,
        rabbitmq_url(),
        "devices can be provisioned on the tests' own brokers only (embedded_broker_url, rabbitmq_url); for a server's own broker use provision_in"
    );
    let devices = store::Store::open(&identity_database())
        .await
        .expect("the identity broker's device database opens");
    let url = provision_in(&devices, broker_url, &id).await;
    (id, url)
}

/// Provisions `id` in `devices` (the database a server's broker checks devices
/// against); the URL it logs in to `broker_url` with.
pub async fn provision_in(devices: &store::Store, broker_url: &str, id: &DeviceId) -> String {
    let secret = devices
        .provision_device(id.as_str())
        .await
        .expect("provision a test device");
    with_credential(broker_url, id.as_str(), &secret)
}

/// `url` (with its credential) pointed at the host and port of `other`: a device
/// provisioned for one test broker logging in to another with the same accounts.
pub fn at_address_of(url: &str, other: &str) -> String {
    let address = |url: &str| {
        let rest = url.split_once('@').map_or(url, |(_, rest)| rest);
        rest.split('/').next().unwrap_or_default().to_owned()
    };
    url.replace(&address(url), &address(other))
}

/// `broker_url` with another user and password.
pub fn with_credential(broker_url: &str, user: &str, password: &str) -> String {
    common::with_credential(broker_url, user, password)
        .unwrap_or_else(|| panic!("{broker_url} cannot carry a credential"))
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

/// [`eventually`] with a check that awaits (an HTTP request): polled every 50 ms.
pub async fn eventually_async<T, F: Future<Output = Option<T>>>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
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
    /// Starts a simulated `kind` named after `name` (made unique) on the test broker at
    /// `url` (the server account's URL), with an account of its own ([`provision`]) and
    /// `configure` applied to its settings.
    pub async fn start(
        url: &str,
        name: &str,
        kind: Kind,
        configure: impl FnOnce(&mut agent::Config),
    ) -> Self {
        let (id, device_url) = provision(url, name).await;
        Self::start_as(&device_url, id, &common::amqp_user(url), kind, configure)
    }

    /// Starts a simulated `kind` as `id`, logging in with `device_url` (its credential),
    /// obeying the server account `server`.
    pub fn start_as(
        device_url: &str,
        id: DeviceId,
        server: &str,
        kind: Kind,
        configure: impl FnOnce(&mut agent::Config),
    ) -> Self {
        Self::start_handler(
            device_url,
            id,
            server,
            kind.name(),
            Arc::new(Simulated::new(kind)),
            configure,
        )
    }

    /// Starts `handler` (a real device, say) as `id` of kind `kind`, logging in with
    /// `device_url`, obeying the server account `server`.
    pub fn start_handler<H: agent::Handler>(
        device_url: &str,
        id: DeviceId,
        server: &str,
        kind: &str,
        handler: Arc<H>,
        configure: impl FnOnce(&mut agent::Config),
    ) -> Self {
        let mut config = agent::Config::new(device_url, id.clone(), kind);
        config.server_accounts = vec![server.to_owned()];
        config.reconnect_min = Duration::from_millis(50);
        configure(&mut config);
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(agent::run(config, handler, async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
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

/// A server-named, exclusive, auto-delete queue on `channel` (a device's inbox, a test's
/// own listener); its name. Panics, saying what, when the broker refuses it.
pub async fn private_queue(channel: &lapin::Channel, what: &str) -> String {
    let private = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    channel
        .queue_declare("".into(), private, FieldTable::default())
        .await
        .unwrap_or_else(|e| panic!("{what}: the broker refused a queue of its own: {e}"))
        .name()
        .to_string()
}

/// Waits until the broker at `url` no longer has `queue`. RabbitMQ deletes an exclusive
/// queue shortly *after* it confirms its owner's connection close, so a test that kills a
/// device and then expects its inbox to be gone must wait for this first.
pub async fn queue_gone(url: &str, queue: &str) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("the broker must be running at {url}: {e}"));
    eventually_async(
        &format!("the broker to delete the queue {queue}"),
        Duration::from_secs(5),
        || async {
            let channel = connection.create_channel().await.ok()?;
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            // A queue that still exists is declared (or refused as another connection's,
            // 405); only 404 says it is gone. Either way a failed declare closes the channel.
            match channel
                .queue_declare(queue.into(), passive, FieldTable::default())
                .await
            {
                Err(e)
                    if matches!(
                        e.kind(),
                        lapin::ErrorKind::ProtocolError(amqp)
                            if *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)
                    ) =>
                {
                    Some(())
                }
                _ => None,
            }
        },
    )
    .await;
    let _ = connection.close(200, "done".into()).await;
}

/// A queue of a test's own, bound to an exchange: what the test sees of the messages it
/// routes (read without acks). The queue goes with the connection.
#[derive(Debug)]
pub struct Spy {
    pub connection: Connection,
    pub channel: lapin::Channel,
    pub queue: String,
    seen: lapin::Consumer,
}

impl Spy {
    /// Logs in at `url`, declares a server-named exclusive queue and binds it to
    /// `exchange` with `key`; panics, saying what, when the broker refuses any of it.
    pub async fn on(url: &str, exchange: &str, key: &str) -> Self {
        use lapin::options::{BasicConsumeOptions, QueueBindOptions};
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("the spy cannot log in at {url}: {e}"));
        let channel = connection.create_channel().await.unwrap();
        let queue = private_queue(&channel, "the spy").await;
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("the spy cannot bind to {exchange} with {key:?}: {e}"));
        let seen = channel
            .basic_consume(
                queue.as_str().into(),
                "spy".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("the spy's consumer");
        Self {
            connection,
            channel,
            queue,
            seen,
        }
    }

    /// The next message, if one comes within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<lapin::message::Delivery> {
        use futures_util::StreamExt as _;
        match tokio::time::timeout(within, self.seen.next()).await {
            Ok(Some(Ok(delivery))) => Some(delivery),
            _ => None,
        }
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
    /// Connects to the test broker at `url` with an account of its own ([`provision`]),
    /// declares an inbox and says hello with one `echo` command and one `temp` metric
    /// (°C, -10 to 50).
    pub async fn connect(url: &str, name: &str, heartbeat_ms: u64) -> Self {
        let (id, device_url) = provision(url, name).await;
        let connection = Connection::connect(&device_url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("the broker must be running at {url}: {e}"));
        let channel = connection.create_channel().await.unwrap();
        let inbox = private_queue(&channel, "a raw device's inbox").await;
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

    /// Consumes its inbox (auto-ack): what the servers send it, to read in a test.
    pub async fn consume_inbox(&self) -> lapin::Consumer {
        self.channel
            .basic_consume(
                self.inbox.as_str().into(),
                "".into(),
                lapin::options::BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("cannot consume {}'s inbox: {e}", self.id))
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

    /// Publishes as itself (`user_id` = its id, as the broker requires) and waits for
    /// the broker to take it.
    pub async fn publish(
        &self,
        exchange: &str,
        key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) {
        let properties = properties.with_user_id(self.id.as_str().into());
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
