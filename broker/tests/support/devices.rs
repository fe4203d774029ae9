//! Devices on the embedded broker: the test authenticator (`dev-<n>` logs in with
//! `secret-<n>`, as `Account::Device`), the broker `permissions.rs` runs against, and
//! what only the embedded broker does with an authenticator: the server account is
//! never asked about, a login the authenticator does not answer is bounded by the
//! handshake deadline, and `disconnect_user` closes one user's connections only; and the
//! limits on what a device holds that RabbitMQ 3.10 has no equal of (channels offered at
//! tune, queues and consumers per account), and that the server account has none.
//! Included by `conformance_embedded.rs`.

use std::{
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use amq_protocol::{
    frame::AMQPFrame,
    protocol::{AMQPClass, connection, queue},
};
use broker::{AccountLimits, Authenticator, Broker, BrokerHandle, Config};
use protocol::{DeviceId, policy::Account};
use tokio::time::Instant;

use crate::{
    doors::raw::{self, RawClient, describe},
    permissions::{Device, Revoke},
};

/// Accepts `dev-<n>` with password `secret-<n>` as that device, answering a moment
/// later as a real store would; remembers whom it was asked about, from where.
#[derive(Debug, Default)]
pub struct TestDevices {
    pub asked: Mutex<Vec<(String, IpAddr)>>,
}

impl Authenticator for TestDevices {
    fn authenticate<'a>(
        &'a self,
        user: &'a str,
        password: &'a str,
        peer: IpAddr,
    ) -> Pin<Box<dyn Future<Output = Option<Account>> + Send + 'a>> {
        Box::pin(async move {
            self.asked.lock().unwrap().push((user.to_owned(), peer));
            tokio::time::sleep(Duration::from_millis(10)).await;
            let n = user.strip_prefix("dev-")?;
            let secret = password.strip_prefix("secret-")?;
            (secret == n).then(|| DeviceId::new(user).ok().map(Account::Device))?
        })
    }
}

/// Never answers.
struct Silent;

impl Authenticator for Silent {
    fn authenticate<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: IpAddr,
    ) -> Pin<Box<dyn Future<Output = Option<Account>> + Send + 'a>> {
        Box::pin(std::future::pending())
    }
}

/// Serves a broker with `authenticator`: its address and handle.
async fn serve(
    authenticator: Arc<dyn Authenticator>,
    config: Config,
) -> (SocketAddr, BrokerHandle) {
    let config = Config {
        authenticator: Some(authenticator),
        ..config
    };
    let broker = Broker::bind(config).await.expect("the broker binds");
    let (addr, handle) = (broker.local_addr().expect("an address"), broker.handle());
    tokio::spawn(broker.serve(std::future::pending()));
    (addr, handle)
}

/// A broker of the case's own with the test authenticator, and one of its devices.
pub async fn device() -> Device {
    device_on(Config::on_free_port()).await
}

/// A device as [`device`], that may hold `connections` connections.
pub async fn limited_device(connections: usize) -> Device {
    let mut config = Config::on_free_port();
    config.limits.connections = connections;
    device_on(config).await
}

/// A broker of the case's own with `config` and the test authenticator, and one of its
/// devices.
pub async fn device_on(config: Config) -> Device {
    let (addr, handle) = serve(Arc::new(TestDevices::default()), config).await;
    let n = fastrand::u32(..);
    let user = format!("dev-{n}");
    Device {
        addr,
        account: Box::new(Disconnect {
            handle,
            user: user.clone(),
        }),
        user,
        password: format!("secret-{n}"),
    }
}

/// Revokes a device as the server would: by closing its connections.
struct Disconnect {
    handle: BrokerHandle,
    user: String,
}

impl Revoke for Disconnect {
    fn revoke(&self) {
        self.handle.disconnect_user(&self.user);
    }
}

#[tokio::test]
async fn the_server_account_is_never_asked_about() {
    let devices = Arc::new(TestDevices::default());
    let (addr, _) = serve(devices.clone(), Config::on_free_port()).await;
    let _server = RawClient::logged_in(addr, 0).await;
    assert_eq!(*devices.asked.lock().unwrap(), []);
    let _device = RawClient::logged_in_as(addr, "dev-7", "secret-7", 0).await;
    let loopback = IpAddr::from([127, 0, 0, 1]);
    assert_eq!(
        *devices.asked.lock().unwrap(),
        [("dev-7".to_owned(), loopback)]
    );
}

#[tokio::test]
async fn without_an_authenticator_only_the_server_account_gets_in() {
    let broker = Broker::bind(Config::on_free_port()).await.expect("binds");
    let addr = broker.local_addr().expect("an address");
    tokio::spawn(broker.serve(std::future::pending()));
    let mut client = RawClient::connect(addr).await;
    client.send_bytes(raw::PROTOCOL_HEADER).await;
    client.send(&raw::start_ok_as("dev-1", "secret-1")).await;
    let answers = client.answers_until_closed(Duration::from_secs(10)).await;
    assert_eq!(answers.len(), 2, "started, then refused: {answers:?}");
    assert!(
        answers[1].starts_with("connection.close 403"),
        "{answers:?}"
    );
}

/// A login waits for the authenticator within the handshake's deadline only, and holds
/// nobody else up meanwhile.
#[tokio::test]
async fn a_login_the_authenticator_does_not_answer_ends_at_the_handshake_deadline() {
    let config = Config {
        handshake_timeout: Duration::from_millis(500),
        ..Config::on_free_port()
    };
    let (addr, _) = serve(Arc::new(Silent), config).await;
    let started = Instant::now();
    let mut waiting = RawClient::connect(addr).await;
    waiting.send_bytes(raw::PROTOCOL_HEADER).await;
    waiting.send(&raw::start_ok_as("dev-1", "secret-1")).await;
    let mut server = RawClient::logged_in(addr, 0).await;
    server.send(&raw::channel_open(1)).await;
    let opened = server.next_within(Duration::from_secs(5)).await;
    assert_eq!(
        opened.as_ref().map(describe).as_deref(),
        Some("channel.open-ok on 1")
    );
    let answers = waiting.answers_until_closed(Duration::from_secs(5)).await;
    assert_eq!(answers, ["connection.start"], "dropped without a word");
    assert!(started.elapsed() >= Duration::from_millis(500));
}

#[tokio::test]
async fn disconnecting_a_user_closes_its_connections_only() {
    let (addr, handle) = serve(Arc::new(TestDevices::default()), Config::on_free_port()).await;
    let mut first = RawClient::logged_in_as(addr, "dev-1", "secret-1", 0).await;
    let mut second = RawClient::logged_in_as(addr, "dev-1", "secret-1", 0).await;
    let mut other = RawClient::logged_in_as(addr, "dev-2", "secret-2", 0).await;
    let mut server = RawClient::logged_in(addr, 0).await;
    assert_eq!(handle.disconnect_user("dev-1"), 2);
    let forced = "connection.close 320 CONNECTION_FORCED - user 'dev-1' is deleted (0, 0)";
    for client in [&mut first, &mut second] {
        let answers = client.answers_until_closed(Duration::from_secs(5)).await;
        assert_eq!(answers, [forced]);
    }
    for client in [&mut other, &mut server] {
        client.send(&raw::channel_open(1)).await;
        let opened = client.next_within(Duration::from_secs(5)).await;
        assert_eq!(
            opened.as_ref().map(describe).as_deref(),
            Some("channel.open-ok on 1")
        );
    }
    assert_eq!(handle.disconnect_user("dev-1"), 0, "they are gone");
}

/// The next frame, described (`closed` if the broker hung up).
async fn answer(client: &mut RawClient) -> String {
    let frame = client.next_within(Duration::from_secs(5)).await;
    frame.as_ref().map_or_else(|| "closed".to_owned(), describe)
}

/// Sends `frame` and returns the answer, described.
async fn ask(client: &mut RawClient, frame: AMQPFrame) -> String {
    client.send(&frame).await;
    answer(client).await
}

/// A server-named exclusive queue's name, declared on channel `id`.
async fn inbox(client: &mut RawClient, id: u16) -> String {
    client.send(&raw::queue_declare(id, "", true)).await;
    match client.next_within(Duration::from_secs(5)).await {
        Some(AMQPFrame::Method(_, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)))) => {
            ok.queue.to_string()
        }
        other => panic!(
            "expected queue.declare-ok, got {:?}",
            other.map(|f| describe(&f))
        ),
    }
}

/// A device is offered `channels_per_connection` at tune, and refused beyond it as
/// RabbitMQ refuses beyond any negotiated `channel_max` (`limits.rs` shows RabbitMQ's).
#[tokio::test]
async fn a_device_is_offered_its_channels_and_refused_beyond_them() {
    let device = device().await;
    let mut client = RawClient::connect(device.addr).await;
    client.send_bytes(raw::PROTOCOL_HEADER).await;
    client
        .send(&raw::start_ok_as(&device.user, &device.password))
        .await;
    let _start = client.next_within(Duration::from_secs(5)).await;
    let tune = client.next_within(Duration::from_secs(5)).await;
    let Some(AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Tune(tune)))) =
        tune
    else {
        panic!("expected connection.tune, got {tune:?}");
    };
    assert_eq!(
        tune.channel_max,
        AccountLimits::default().channels_per_connection
    );
    // The client asks for more; it is held to the offer.
    client.send(&raw::tune_ok_with(2_047, 0)).await;
    assert_eq!(
        ask(&mut client, raw::connection_open("/")).await,
        "connection.open-ok"
    );
    for id in 1..=8 {
        let opened = ask(&mut client, raw::channel_open(id)).await;
        assert_eq!(opened, format!("channel.open-ok on {id}"));
    }
    client.send(&raw::channel_open(9)).await;
    assert_eq!(
        client.answers_until_closed(Duration::from_secs(5)).await,
        [
            "connection.close 530 NOT_ALLOWED - number of channels opened (8) has reached \
             the negotiated channel_max (8) (0, 0)"
        ]
    );
}

/// Beyond its queue limit a device's declare is refused with RabbitMQ's answer beyond a
/// vhost's `max-queues` (406, the channel closed, the connection going on), naming the
/// user; a queue deleted, or an exclusive queue gone with its connection, gives its
/// place back.
#[tokio::test]
async fn a_device_beyond_its_queue_limit_is_refused() {
    let mut config = Config::on_free_port();
    config.limits.queues = 2;
    let device = device_on(config).await;
    let user = device.user.as_str();
    let mut client = RawClient::logged_in_as(device.addr, user, &device.password, 0).await;
    assert_eq!(
        ask(&mut client, raw::channel_open(1)).await,
        "channel.open-ok on 1"
    );
    let first = inbox(&mut client, 1).await;
    let _second = inbox(&mut client, 1).await;
    let refused = ask(&mut client, raw::queue_declare(1, "", true)).await;
    let (head, tail) = refused
        .split_once("amq.gen-")
        .unwrap_or_else(|| panic!("{refused}"));
    assert_eq!(
        head,
        "channel.close on 1 406 PRECONDITION_FAILED - cannot declare queue '"
    );
    assert!(
        tail.ends_with(&format!(
            "': queue limit for user '{user}' (2) is reached (50, 10)"
        )),
        "{refused}"
    );
    client.send(&raw::channel_close_ok(1)).await;
    assert_eq!(
        ask(&mut client, raw::channel_open(2)).await,
        "channel.open-ok on 2"
    );
    assert_eq!(
        ask(&mut client, raw::queue_delete(2, &first)).await,
        "queue.delete-ok on 2"
    );
    let _third = inbox(&mut client, 2).await;
    drop(client);
    // Its exclusive queues went with the connection.
    let mut client = RawClient::logged_in_as(device.addr, user, &device.password, 0).await;
    assert_eq!(
        ask(&mut client, raw::channel_open(1)).await,
        "channel.open-ok on 1"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        client.send(&raw::queue_declare(1, "", true)).await;
        let answer = answer(&mut client).await;
        if answer == "queue.declare-ok on 1" {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {answer}");
        client.send(&raw::channel_close_ok(1)).await;
        assert_eq!(
            ask(&mut client, raw::channel_open(1)).await,
            "channel.open-ok on 1"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _fourth = inbox(&mut client, 1).await;
}

/// Beyond its consumer limit a device's basic.consume is refused as its queues are (406,
/// the channel closed); a consumer cancelled gives its place back.
#[tokio::test]
async fn a_device_beyond_its_consumer_limit_is_refused() {
    let mut config = Config::on_free_port();
    config.limits.consumers = 2;
    let device = device_on(config).await;
    let user = device.user.as_str();
    let mut client = RawClient::logged_in_as(device.addr, user, &device.password, 0).await;
    assert_eq!(
        ask(&mut client, raw::channel_open(1)).await,
        "channel.open-ok on 1"
    );
    let queue = inbox(&mut client, 1).await;
    for tag in ["a", "b"] {
        let consumed = ask(&mut client, raw::basic_consume_acked(1, &queue, tag)).await;
        assert_eq!(consumed, "basic.consume-ok on 1");
    }
    assert_eq!(
        ask(&mut client, raw::channel_open(2)).await,
        "channel.open-ok on 2"
    );
    assert_eq!(
        ask(&mut client, raw::basic_consume_acked(2, &queue, "c")).await,
        format!(
            "channel.close on 2 406 PRECONDITION_FAILED - cannot consume from queue \
             '{queue}': consumer limit for user '{user}' (2) is reached (60, 20)"
        )
    );
    client.send(&raw::channel_close_ok(2)).await;
    assert_eq!(
        ask(&mut client, raw::basic_cancel(1, "a")).await,
        "basic.cancel-ok on 1"
    );
    assert_eq!(
        ask(&mut client, raw::basic_consume_acked(1, &queue, "c")).await,
        "basic.consume-ok on 1"
    );
}

/// The server account holds whatever it needs, whatever the devices' limits.
#[tokio::test]
async fn the_server_account_is_not_limited() {
    let config = Config {
        limits: AccountLimits {
            connections: 1,
            channels_per_connection: 1,
            queues: 1,
            consumers: 1,
        },
        ..Config::on_free_port()
    };
    let (addr, _) = serve(Arc::new(TestDevices::default()), config).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = RawClient::logged_in(addr, 0).await;
        for id in 1..=3 {
            assert_eq!(
                ask(&mut client, raw::channel_open(id)).await,
                format!("channel.open-ok on {id}")
            );
            let queue = inbox(&mut client, id).await;
            let consumed = ask(&mut client, raw::basic_consume_acked(id, &queue, "")).await;
            assert_eq!(consumed, format!("basic.consume-ok on {id}"));
        }
        clients.push(client);
    }
}
