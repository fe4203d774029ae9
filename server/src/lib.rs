//! Tether's web server.
//!
//! - [`Config`]: every setting, from flags or `TETHER_*` environment variables.
//! - [`hub`]: the bridge to the broker — device registry, commands, live events. The
//!   only module that speaks AMQP.
//! - [`api`]: the JSON HTTP API, and the hub as the UI's server functions see it.
//! - [`live`]: the WebSocket that streams a snapshot and then every event to a tab.
//! - [`router`]: every route (health, metrics, API, pages, static files), separate
//!   from serving so tests can call it directly.
//! - [`Server`] / [`run`]: bind, serve until `shutdown`, drain.
//!
//! `main.rs` only parses the configuration, sets up logging and calls [`run`]; the
//! integration tests call the same code on port 0.

pub mod api;
pub mod hub;
pub mod live;
pub mod store;

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use app::{App, fleet::SharedFleet, shell};
use axum::{
    Router,
    extract::{FromRef, State},
    http::StatusCode,
    response::IntoResponse,
    routing::get,
};
use leptos::prelude::*;
use leptos_axum::{LeptosRoutes, generate_route_list};
use tokio::net::TcpListener;

use crate::{
    hub::{Hub, HubConfig},
    store::Store,
};

/// How often readings older than the retention are deleted.
const PRUNE_INTERVAL: Duration = Duration::from_secs(600);

/// Server settings. Each one is a flag and an environment variable of the same name.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tether-server", version, about = "Tether's web server")]
pub struct Config {
    /// Address to serve HTTP on. Port 0 picks a free port.
    /// Unset: `LEPTOS_SITE_ADDR` (set by cargo-leptos), else 127.0.0.1:3000.
    #[arg(long = "addr", env = "TETHER_ADDR")]
    pub addr: Option<SocketAddr>,

    /// Folder holding the built site (`pkg/` with the WASM, JS and CSS, and the
    /// public assets). Unset: `LEPTOS_SITE_ROOT`, else `target/site`.
    #[arg(long = "site-root", env = "TETHER_SITE_ROOT")]
    pub site_root: Option<PathBuf>,

    /// The AMQP 0-9-1 broker devices connect to (RabbitMQ, say). Unset: start the
    /// embedded broker and use it.
    #[arg(long = "amqp-url", env = "TETHER_AMQP_URL")]
    pub amqp_url: Option<String>,

    /// Where the embedded broker listens when TETHER_AMQP_URL is unset. Not 5672, so it
    /// never collides with a RabbitMQ on the same machine.
    #[arg(
        long = "broker-addr",
        env = "TETHER_BROKER_ADDR",
        default_value = "127.0.0.1:5673"
    )]
    pub broker_addr: SocketAddr,

    /// The embedded broker's user and password (the guest account works only from
    /// this machine, as in RabbitMQ).
    #[arg(
        long = "broker-user",
        env = "TETHER_BROKER_USER",
        default_value = "guest"
    )]
    pub broker_user: String,
    #[arg(
        long = "broker-password",
        env = "TETHER_BROKER_PASSWORD",
        default_value = "guest",
        hide_env_values = true
    )]
    pub broker_password: String,

    /// A command's deadline when the caller gives none, in milliseconds.
    #[arg(long = "command-timeout-ms", env = "TETHER_COMMAND_TIMEOUT_MS", default_value_t = protocol::api::timeouts::DEFAULT_MS,
          value_parser = clap::value_parser!(u64).range(protocol::api::timeouts::MIN_MS..=protocol::api::timeouts::MAX_MS))]
    pub command_timeout_ms: u64,

    /// Where readings are stored: `postgres://user@host/db` for PostgreSQL,
    /// `sqlite://<path>` (or a bare path) for SQLite, `none` to keep only the live view.
    #[arg(
        long = "database-url",
        env = "TETHER_DATABASE_URL",
        default_value = "sqlite://tether-data/telemetry.db",
        hide_env_values = true
    )]
    pub database_url: String,

    /// How long readings are kept, e.g. `30d`, `12h`; older ones are pruned.
    #[arg(long = "retention", env = "TETHER_RETENTION", default_value = "30d",
          value_parser = store::parse_duration)]
    pub retention: Duration,

    /// Recorders this replica runs on the shared storage queue (each is one
    /// competing consumer writing batches).
    #[arg(long = "recorders", env = "TETHER_RECORDERS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub recorders: u16,

    /// The durable queue readings wait in to be stored. Every replica of one Tether
    /// shares it; only a test or staging server should name its own.
    #[arg(long = "store-queue", env = "TETHER_STORE_QUEUE", default_value = protocol::names::STORE_QUEUE)]
    pub store_queue: String,

    /// Delete the storage queue after it has had no consumer for this many ms. For a
    /// queue of a test server's own, so it cannot pile up readings once that is gone.
    #[arg(long = "store-queue-expires-ms", env = "TETHER_STORE_QUEUE_EXPIRES_MS")]
    pub store_queue_expires_ms: Option<u64>,

    /// How often a device someone watches is asked to report, in ms (each device keeps
    /// to the fastest pace it announced).
    #[arg(long = "watch-interval-ms", env = "TETHER_WATCH_INTERVAL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub watch_interval_ms: u64,

    /// How long a watch lease lasts, in ms: a device slows down this long after a server
    /// that watched it vanished. Renewed every third of it while someone watches.
    #[arg(long = "watch-lease-ms", env = "TETHER_WATCH_LEASE_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1_000..=600_000))]
    pub watch_lease_ms: u64,
}

impl Config {
    /// Defaults for everything, serving on `addr`, using the broker at `amqp_url`.
    pub fn new(addr: SocketAddr, amqp_url: impl Into<String>) -> Self {
        Self {
            addr: Some(addr),
            site_root: None,
            amqp_url: Some(amqp_url.into()),
            broker_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            broker_user: "guest".into(),
            broker_password: "guest".into(),
            command_timeout_ms: protocol::api::timeouts::DEFAULT_MS,
            database_url: "none".into(),
            retention: Duration::from_secs(30 * 86_400),
            recorders: 1,
            store_queue: protocol::names::STORE_QUEUE.into(),
            store_queue_expires_ms: None,
            watch_interval_ms: 1_000,
            watch_lease_ms: 30_000,
        }
    }
}

/// What every handler can reach.
#[derive(Debug, Clone, FromRef)]
pub struct AppState {
    pub leptos_options: LeptosOptions,
    pub hub: Hub,
}

/// A server that has bound its port.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    router: Router,
    hub: Hub,
    /// The embedded broker's URL, when this server runs one.
    embedded_broker: Option<String>,
}

impl Server {
    /// Starts the hub (connected to the broker, or retrying in the background), binds
    /// the configured address and builds the routes.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        let options = leptos_options(&config)?;
        let (amqp_url, embedded_broker) = match &config.amqp_url {
            Some(url) => (url.clone(), None),
            None => {
                let url = start_embedded_broker(&config).await?;
                (url.clone(), Some(url))
            }
        };
        let store = match config.database_url.as_str() {
            "none" => None,
            url => {
                let store = Store::open_or_defer(url).await?;
                tracing::info!(
                    "storing readings in {} ({}), keeping them {:?}",
                    redact(url),
                    store.kind(),
                    config.retention
                );
                tokio::spawn(
                    store
                        .clone()
                        .prune_forever(config.retention, PRUNE_INTERVAL),
                );
                Some(store)
            }
        };
        let hub_config = HubConfig {
            default_timeout: Duration::from_millis(config.command_timeout_ms),
            store,
            recorders: usize::from(config.recorders),
            store_queue: config.store_queue.clone(),
            store_queue_expires: config.store_queue_expires_ms.map(Duration::from_millis),
            watch_interval: Duration::from_millis(config.watch_interval_ms),
            watch_lease: Duration::from_millis(config.watch_lease_ms),
            ..HubConfig::new(amqp_url)
        };
        let hub = Hub::start(hub_config, std::future::pending()).await;
        let addr = options.site_addr;
        let listener = TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} (is another server using it? set TETHER_ADDR)")
        })?;
        Ok(Self {
            listener,
            router: router(AppState {
                leptos_options: options,
                hub: hub.clone(),
            }),
            hub,
            embedded_broker,
        })
    }

    /// The address actually bound (differs from the configured one for port 0).
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The URL devices use to reach the embedded broker, if this server runs one.
    pub fn embedded_broker_url(&self) -> Option<&str> {
        self.embedded_broker.as_deref()
    }

    /// Serves until `shutdown` resolves, then lets open requests finish.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .context("HTTP server failed")
    }
}

/// Starts the embedded broker in this process; returns the URL to reach it.
async fn start_embedded_broker(config: &Config) -> anyhow::Result<String> {
    let broker_config = broker::Config {
        addr: config.broker_addr,
        user: config.broker_user.clone(),
        password: config.broker_password.clone(),
        ..broker::Config::default()
    };
    let broker = broker::Broker::bind(broker_config).await.with_context(|| {
        format!("cannot start the embedded broker on {} (set TETHER_BROKER_ADDR, or TETHER_AMQP_URL to use another broker)", config.broker_addr)
    })?;
    let url = broker.url()?;
    let addr = broker.local_addr()?;
    tracing::info!(
        "embedded AMQP broker on {addr} (nothing is persisted); devices connect with TETHER_AMQP_URL=amqp://{}:<password>@{addr}/%2f",
        config.broker_user
    );
    tokio::spawn(broker.serve(std::future::pending()));
    Ok(url)
}

/// Binds, logs the address and serves until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let server = Server::bind(config).await?;
    tracing::info!("Tether is listening on http://{}", server.local_addr()?);
    server.serve(shutdown).await
}

/// All routes: health, readiness, metrics, the JSON API, the Leptos pages and server
/// functions, and the built site's files.
pub fn router(state: AppState) -> Router {
    let routes = generate_route_list(App);
    let fleet: SharedFleet = Arc::new(state.hub.clone());
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .nest("/api", api::routes())
        .leptos_routes_with_context(&state, routes, move || provide_context(fleet.clone()), {
            let options = state.leptos_options.clone();
            move || shell(options.clone())
        })
        .fallback(leptos_axum::file_and_error_handler::<AppState, _>(shell))
        .with_state(state)
}

/// Ready while the broker link is up.
async fn ready(State(hub): State<Hub>) -> impl IntoResponse {
    if hub.is_connected() {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the broker",
        )
    }
}

/// Prometheus text format.
async fn metrics(State(hub): State<Hub>) -> impl IntoResponse {
    let stats = hub.stats();
    let devices = hub.devices();
    let online = devices.iter().filter(|d| d.online).count();
    let text = format!(
        "# HELP tether_devices Devices known to this replica, by presence.\n\
         # TYPE tether_devices gauge\n\
         tether_devices{{state=\"online\"}} {online}\n\
         tether_devices{{state=\"offline\"}} {offline}\n\
         # HELP tether_commands_pending Commands sent by this replica that have not ended.\n\
         # TYPE tether_commands_pending gauge\n\
         tether_commands_pending {pending}\n\
         # HELP tether_watched_devices Devices this replica's viewers are watching (reporting faster).\n\
         # TYPE tether_watched_devices gauge\n\
         tether_watched_devices {watched}\n\
         # HELP tether_broker_connected Whether the broker link is up.\n\
         # TYPE tether_broker_connected gauge\n\
         tether_broker_connected {connected}\n\
         # HELP tether_messages_dropped_total Messages from the broker that were dropped, by reason.\n\
         # TYPE tether_messages_dropped_total counter\n\
         tether_messages_dropped_total{{reason=\"malformed\"}} {malformed}\n\
         tether_messages_dropped_total{{reason=\"foreign\"}} {foreign}\n\
         tether_messages_dropped_total{{reason=\"stale_session\"}} {stale}\n\
         tether_messages_dropped_total{{reason=\"late\"}} {late}\n\
         # HELP tether_commands_returned_total Commands that came back unroutable (device gone).\n\
         # TYPE tether_commands_returned_total counter\n\
         tether_commands_returned_total {returned}\n\
         # HELP tether_readings_total Device readings, by what became of them.\n\
         # TYPE tether_readings_total counter\n\
         tether_readings_total{{outcome=\"accepted\"}} {accepted}\n\
         tether_readings_total{{outcome=\"unknown_metric\"}} {unknown_metric}\n\
         tether_readings_total{{outcome=\"out_of_range\"}} {out_of_range}\n\
         tether_readings_total{{outcome=\"flood\"}} {flood}\n\
         tether_readings_total{{outcome=\"wrong_type\"}} {wrong_type}\n\
         # HELP tether_samples_stored_total Readings written to the store by this replica's recorders.\n\
         # TYPE tether_samples_stored_total counter\n\
         tether_samples_stored_total {stored}\n\
         # HELP tether_samples_duplicate_total Readings redelivered after being stored (kept once).\n\
         # TYPE tether_samples_duplicate_total counter\n\
         tether_samples_duplicate_total {duplicates}\n\
         # HELP tether_store_errors_total Failed batch writes (each retried; nothing is acknowledged before it is stored).\n\
         # TYPE tether_store_errors_total counter\n\
         tether_store_errors_total {store_errors}\n\
         # HELP tether_samples_rejected_total Readings the recorders refused to store, by reason.\n\
         # TYPE tether_samples_rejected_total counter\n{rejected}",
        offline = devices.len() - online,
        pending = stats.pending_commands,
        connected = u8::from(hub.is_connected()),
        watched = hub.watched_devices(),
        malformed = stats.malformed,
        foreign = stats.foreign,
        stale = stats.stale,
        late = stats.late,
        returned = stats.returned,
        accepted = stats.readings_accepted,
        unknown_metric = stats.readings_unknown_metric,
        out_of_range = stats.readings_out_of_range,
        flood = stats.readings_flood,
        wrong_type = stats.readings_wrong_type,
        stored = stats.recorders.stored,
        duplicates = stats.recorders.duplicates,
        store_errors = stats.recorders.store_errors,
        rejected = stats
            .recorders
            .rejected
            .iter()
            .map(|(reason, n)| format!(
                "tether_samples_rejected_total{{reason=\"{reason}\"}} {n}\n"
            ))
            .collect::<String>(),
    );
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
}

/// Leptos's own settings (from cargo-leptos's `LEPTOS_*` variables or their
/// defaults), with Tether's flags applied on top.
fn leptos_options(config: &Config) -> anyhow::Result<LeptosOptions> {
    let built_by_cargo_leptos = option_env!("LEPTOS_OUTPUT_NAME").is_some()
        || std::env::var_os("LEPTOS_OUTPUT_NAME").is_some();
    let mut options = if built_by_cargo_leptos {
        get_configuration(None)
            .context("cannot read the Leptos configuration (LEPTOS_* environment variables)")?
            .leptos_options
    } else {
        // Outside cargo-leptos (tests, `cargo run`) no output name is baked in.
        LeptosOptions::builder()
            .output_name("tether")
            .site_root("target/site")
            .build()
    };
    if let Some(addr) = config.addr {
        options.site_addr = addr;
    }
    if let Some(root) = &config.site_root {
        options.site_root = root.to_string_lossy().into_owned().into();
    }
    Ok(options)
}

/// A URL without its password, for logs and errors.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user = url[scheme + 3..at].split(':').next().unwrap_or_default();
            format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_hidden_in_urls() {
        assert_eq!(
            redact("postgres://app:secret@db:5432/tether"),
            "postgres://app:***@db:5432/tether"
        );
        assert_eq!(
            redact("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact("tether-data/telemetry.db"),
            "tether-data/telemetry.db"
        );
    }
}
