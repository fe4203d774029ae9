//! What every request handler can reach.

use std::{
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use axum::extract::FromRef;
use common::Shutdown;
use hub::{Hub, RecorderStats};
use leptos::prelude::LeptosOptions;
use store::Store;

use crate::{
    auth::{DeviceGroups, Recent, login::SetupLink, throttle::Throttle},
    guard::AllowedOrigins,
};

#[derive(Debug, Clone, FromRef)]
pub struct AppState {
    pub leptos_options: LeptosOptions,
    pub hub: Hub,
    /// The jobs this replica runs, and how jobs are created and changed.
    pub jobs: ::jobs::Jobs,
    /// Software update files, their keys and download links.
    pub artifacts: crate::artifacts::Artifacts,
    /// Where readings are stored; `None` when this server keeps no history.
    pub store: Option<Store>,
    /// What this replica's recorders did, for `/metrics`.
    pub recorders: Arc<RecorderStats>,
    /// Stopping: live sockets close when it does.
    pub shutdown: Shutdown,
    /// Other sites whose pages may change things (a proxy's address).
    pub allowed_origins: AllowedOrigins,
    /// Users, sessions, tokens, device groups and the audit trail: the same database as
    /// the readings, or one in memory when readings are not kept.
    pub accounts: Store,
    /// Which devices are in which groups, for deciding who sees what.
    pub groups: DeviceGroups,
    /// Failed logins, per account and address.
    pub throttle: Arc<Throttle>,
    /// The first-run link's secret, while no user exists.
    pub setup: SetupLink,
    /// How long a login lasts.
    pub session_ttl: Duration,
    /// Mark the session cookie `Secure` (the server is reached over HTTPS).
    pub secure_cookies: bool,
    /// Identities looked up in the last few seconds.
    pub recent: Recent,
    /// Audit entries that could not be written, for `/metrics`.
    pub audit_failures: Arc<AtomicU64>,
    /// The broker URL devices are told to use, without the server's own user and
    /// password: a provisioned device's credential is filled in (`provision`). `None`
    /// when the broker URL does not parse.
    pub device_broker_url: Option<String>,
    /// The broker account this server logs in as. Devices are never provisioned under
    /// its name: agents obey what this account sends.
    pub server_account: String,
    /// The embedded broker, when this server runs one: a revoked device's connections
    /// are closed through it.
    pub embedded_broker: Option<broker::BrokerHandle>,
    /// The live channel's sessions over plain HTTP (Server-Sent Events, long polls).
    pub live_sessions: Arc<crate::live::http::Sessions>,
    /// How long a write may wait on a peer that takes nothing (a live socket's every
    /// send must complete within it).
    #[from_ref(skip)]
    pub write_timeout: Duration,
    /// Connections closed because a write waited longer, for `/metrics`.
    #[from_ref(skip)]
    pub write_timeouts: crate::write_bound::Timeouts,
    /// Who may ask the RabbitMQ auth backend; empty: loopback only.
    pub broker_auth_from: Arc<Vec<std::net::IpAddr>>,
}
