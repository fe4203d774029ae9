//! Devices on the embedded broker: the test authenticator (`dev-<n>` logs in with
//! `secret-<n>`, as `Account::Device`), the broker `permissions.rs` runs against, and
//! what only the embedded broker does with an authenticator: the server account is
//! never asked about, a login the authenticator does not answer is bounded by the
//! handshake deadline, and `disconnect_user` closes one user's connections only.
//! Included by `conformance_embedded.rs`.

use std::{
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use broker::{Authenticator, Broker, BrokerHandle, Config};
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
    let (addr, handle) = serve(Arc::new(TestDevices::default()), Config::on_free_port()).await;
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
