//! The server the HTTP tests of accounts, devices and the broker auth backend start:
//! on port 0, against RabbitMQ, with a SQLite file and a storage queue of its own, so
//! tests never share state. Each test binary uses a part of it.
#![allow(dead_code)]

use std::{net::SocketAddr, path::PathBuf};

use protocol::auth::Role;
use store::Store;
use tokio::sync::oneshot;

/// A running server; it stops when this is dropped.
pub struct Running {
    pub base: String,
    pub accounts: Store,
    pub hub: hub::Hub,
    pub artifacts: server::artifacts::Artifacts,
    /// Its SQLite file, for tests that go behind its back.
    pub database: PathBuf,
    /// The first-run link's secret, while no user exists.
    pub first_run: Option<String>,
    _stop: oneshot::Sender<()>,
}

/// A server with the default settings.
pub async fn start() -> Running {
    start_with(|_| {}).await
}

/// A server with `adjust` applied to its settings.
pub async fn start_with(adjust: impl FnOnce(&mut server::Config)) -> Running {
    let tag = format!("{:08x}", fastrand::u32(..));
    let database = std::env::temp_dir().join(format!("tether-test-{tag}/tether.db"));
    let mut config = server::Config::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        testkit::rabbitmq_url(),
    );
    config.database_url = format!("sqlite://{}", database.display());
    config.store_queue = format!("tether.telemetry.store.test-{tag}");
    config.store_queue_expires_ms = Some(60_000);
    adjust(&mut config);
    let server = server::Server::bind(config)
        .await
        .expect("the server starts (RabbitMQ must be running: scripts/test.sh starts it)");
    let base = format!("http://{}", server.local_addr().unwrap());
    let (accounts, hub) = (server.accounts().clone(), server.hub().clone());
    let artifacts = server.artifacts().clone();
    let first_run = server.first_run_secret();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    Running {
        base,
        accounts,
        hub,
        artifacts,
        database,
        first_run,
        _stop: stop,
    }
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A user of `role` in `groups` with an API token: a client sending it, the
    /// token, and the user's name.
    pub async fn user(&self, role: Role, groups: &[&str]) -> (reqwest::Client, String, String) {
        let (token, name) = testkit::user_token(&self.accounts, role, groups).await;
        (testkit::api_client(&token), token, name)
    }
}
