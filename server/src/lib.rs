//! Tether's web server: the HTTP side and the wiring. The device link is the `hub`
//! crate, storage the `store` crate; this crate serves them over HTTP.
//!
//! - [`config`]: every setting, from flags or `TETHER_*` environment variables.
//! - [`api`]: the JSON HTTP API; [`error`]: the errors it and the server functions
//!   return; [`history`]: a device's downsampled telemetry history.
//! - [`fleet`]: the same operations for the UI's server functions.
//! - [`jobs`]: one command to many devices; [`artifacts`]: software update files and
//!   their downloads.
//! - [`live`]: the WebSocket that streams a snapshot and then every event to a tab.
//! - [`health`]: `/healthz` and `/readyz`; [`metrics`]: `/metrics` in the Prometheus
//!   format.
//! - [`guard`]: cross-site requests refused; [`write_bound`]: every connection's
//!   writes bounded, so a peer that stops reading cannot hold what it reaches for good.
//! - [`assets`]: the site's files, precompressed and cached; compression and
//!   `Cache-Control` for every answer.
//! - [`auth`]: who is asking (sessions, API tokens), the login forms, who sees which
//!   devices; [`admin`]: the API for users, tokens, groups and the audit trail;
//!   [`provision`]: the API for device credentials; [`audit`]: writing to the audit
//!   trail.
//! - [`broker_auth`]: RabbitMQ's HTTP auth backend, answering with the same policy the
//!   embedded broker applies; [`broker_accounts`]: the embedded broker's accounts (the
//!   server's, devices' checked against the database).
//! - [`cli`]: the tasks besides serving (`user add`, `device add`, `audit verify`).
//! - [`state`]: what every handler can reach.
//! - This file wires them: [`Server::bind`] starts the embedded broker (if no broker
//!   is configured), the store, the hub and the recorders under one [`Shutdown`];
//!   [`Server::serve`] serves until told to stop, then stops everything in order.
//!
//! `main.rs` only parses the configuration, sets up logging and calls [`run`]; the
//! integration tests call the same code on port 0.
// The job pages' views nest deeply enough to pass the default limit when the
// server renders them.
#![recursion_limit = "256"]

pub mod admin;
pub mod api;
pub mod artifacts;
pub mod assets;
pub mod audit;
pub mod auth;
pub mod broker_accounts;
pub mod broker_auth;
pub mod cli;
pub mod config;
pub mod diagnostics;
pub mod error;
pub mod fleet;
pub mod guard;
pub mod health;
pub mod history;
pub mod jobs;
pub mod live;
pub mod metrics;
pub mod openapi;
pub mod provision;
pub mod state;
pub mod websocket;
pub mod write_bound;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use app::{App, fleet::SharedFleet, shell};
use axum::{
    Router,
    extract::{Request, State},
    http::Uri,
    routing::get,
    serve::ListenerExt as _,
};
use common::{Shutdown, redact};
use hub::{Hub, HubConfig, Recorder, RecorderConfig, RecorderStats, Stop};
use leptos::prelude::*;
use leptos_axum::{LeptosRoutes, generate_route_list};
use store::Store;
use tokio::net::TcpListener;

pub use crate::{config::Config, state::AppState};

/// How often readings older than the retention are deleted.
const PRUNE_INTERVAL: Duration = Duration::from_secs(600);
/// Once told to stop, the server exits within 5 s: in-flight requests get this long
/// to finish, then its tasks (hub, recorders, pruning) this long, then the embedded
/// broker this long to close its connections.
const REQUESTS_WITHIN: Duration = Duration::from_millis(2_500);
const TASKS_WITHIN: Duration = Duration::from_millis(1_500);
const BROKER_WITHIN: Duration = Duration::from_millis(750);

/// A server that has bound its port and started its parts.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    /// How long a write may wait on a peer that takes nothing.
    write_timeout: Duration,
    /// Connections closed for that, for `/metrics`.
    write_timeouts: write_bound::Timeouts,
    router: Router,
    hub: Hub,
    accounts: Store,
    artifacts: artifacts::Artifacts,
    setup: auth::login::SetupLink,
    /// The embedded broker's URL and handle, when this server runs one.
    embedded_broker: Option<(String, broker::BrokerHandle)>,
    shutdown: Shutdown,
    /// The embedded broker's own, stopped last so that the hub can say goodbye.
    broker_shutdown: Shutdown,
}

impl Server {
    /// Starts the embedded broker (when no broker is configured), the store, the hub
    /// (connected to the broker, or retrying in the background) and the recorders,
    /// binds the configured address and builds the routes. Everything runs under one
    /// [`Shutdown`], which [`Server::serve`] stops.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        let (shutdown, broker_shutdown) = (Shutdown::new(), Shutdown::new());
        config.check_broker()?;
        let options = leptos_options(&config)?;
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
                shutdown.spawn(store.clone().prune_until(
                    config.retention,
                    PRUNE_INTERVAL,
                    shutdown.token().clone(),
                ));
                Some(store)
            }
        };
        let accounts = match &store {
            Some(store) => store.clone(),
            None => {
                tracing::warn!(
                    "TETHER_DATABASE_URL=none: users, tokens and the audit trail live in memory and are lost when the server stops"
                );
                Store::open("memory").await?
            }
        };
        let (amqp_url, embedded_broker) = match &config.amqp_url {
            Some(url) => (url.clone(), None),
            None => {
                let (url, handle) =
                    start_embedded_broker(&config, &accounts, &broker_shutdown).await?;
                (url.clone(), Some((url, handle)))
            }
        };
        let server_account = common::amqp_user(&amqp_url);
        let device_broker_url = provision::device_broker_url(&amqp_url);
        if device_broker_url.is_none() {
            tracing::warn!(
                "the broker URL {} does not parse: provisioned devices are given no URL to connect with",
                redact(&amqp_url)
            );
        }
        let groups = auth::DeviceGroups::default();
        if let Err(error) = groups.reload(&accounts).await {
            tracing::error!("cannot load the device groups (retrying): {error:#}");
        }
        shutdown.spawn(
            groups
                .clone()
                .reload_until(accounts.clone(), shutdown.token().clone()),
        );
        let command_log = match &store {
            Some(store) => Some(hub::CommandLog {
                store: store.clone(),
                replica: replica_id(&config.data_dir)?,
                // The embedded broker's queues die with this process.
                resumable: embedded_broker.is_none(),
            }),
            None => None,
        };
        let hub_config = HubConfig {
            command_log,
            queue_type: config.queue_type,
            default_timeout: Duration::from_millis(config.command_timeout_ms),
            store_queue: store.is_some().then(|| config.store_queue()),
            watch_interval: Duration::from_millis(config.watch_interval_ms),
            watch_lease: Duration::from_millis(config.watch_lease_ms),
            ..HubConfig::new(amqp_url.clone())
        };
        let hub = Hub::start(hub_config, &shutdown).await;
        let recorders = Arc::new(RecorderStats::default());
        if let Some(store) = &store {
            let recorder_config = RecorderConfig {
                queue: config.store_queue(),
                ..RecorderConfig::new(amqp_url)
            };
            for _ in 0..config.recorders {
                let recorder = Recorder::new(
                    recorder_config.clone(),
                    store.clone(),
                    Some(Arc::new(hub.clone())),
                    recorders.clone(),
                );
                let stopping = shutdown.clone();
                shutdown.spawn(recorder.run(async move {
                    stopping.stopping().await;
                    Stop::Drain
                }));
            }
        }
        let addr = options.site_addr;
        let listener = TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} (is another server using it? set TETHER_ADDR)")
        })?;
        let setup = first_run_link(&accounts, listener.local_addr()?).await?;
        let artifacts =
            artifacts::Artifacts::open(&config.data_dir, config.max_artifact_mb * 1024 * 1024)?;
        let public_url = public_url(&config, listener.local_addr()?);
        let update_args = artifacts::UpdateArgs {
            artifacts: artifacts.clone(),
            public_url,
        };
        let jobs = ::jobs::Jobs::start(
            hub.clone(),
            accounts.clone(),
            &shutdown,
            ::jobs::JobsConfig::default(),
            Some(Arc::new(update_args)),
        );
        let write_timeout = Duration::from_millis(config.write_timeout_ms);
        let write_timeouts = write_bound::Timeouts::default();
        Ok(Self {
            listener,
            write_timeout,
            write_timeouts: write_timeouts.clone(),
            router: router(AppState {
                leptos_options: options,
                hub: hub.clone(),
                jobs,
                artifacts: artifacts.clone(),
                store,
                recorders,
                shutdown: shutdown.clone(),
                allowed_origins: guard::AllowedOrigins::new(config.allowed_origins.clone()),
                accounts: accounts.clone(),
                groups,
                throttle: Arc::default(),
                setup: setup.clone(),
                session_ttl: config.session_ttl,
                secure_cookies: config.secure_cookies,
                recent: auth::Recent::default(),
                audit_failures: Arc::default(),
                device_broker_url,
                server_account,
                embedded_broker: embedded_broker.as_ref().map(|(_, handle)| handle.clone()),
                broker_auth_from: Arc::new(config.broker_auth_from.clone()),
                live_sessions: Arc::new(live::http::Sessions::new(Duration::from_millis(
                    config.live_session_idle_ms,
                ))),
                write_timeout,
                write_timeouts,
            }),
            hub,
            accounts,
            artifacts,
            setup,
            embedded_broker,
            shutdown,
            broker_shutdown,
        })
    }

    /// The address actually bound (differs from the configured one for port 0).
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Software update files and their download links.
    pub fn artifacts(&self) -> &artifacts::Artifacts {
        &self.artifacts
    }

    /// Users, tokens, device groups and the audit trail.
    pub fn accounts(&self) -> &Store {
        &self.accounts
    }

    /// The first-run link's secret (`/setup?token=…`), while no user exists.
    pub fn first_run_secret(&self) -> Option<String> {
        self.setup.secret()
    }

    /// The URL devices use to reach the embedded broker, if this server runs one.
    pub fn embedded_broker_url(&self) -> Option<&str> {
        self.embedded_broker.as_ref().map(|(url, _)| url.as_str())
    }

    /// Serves until `signal` resolves, then stops: no new connections are accepted,
    /// in-flight requests finish, live sockets close, pending commands end as the
    /// server having stopped, recorders write and acknowledge their batch, and the
    /// embedded broker closes its connections. Returns once all of that is done, and
    /// within 5 s in any case.
    pub async fn serve(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let shutdown = self.shutdown.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = signal => stop.stop(),
                () = stop.stopping() => {}
            }
        });
        let stopping = shutdown.clone();
        // Tapped (with nothing) for axum's `ConnectInfo<SocketAddr>`, which it gives
        // for a tapped listener of any kind.
        let listener =
            write_bound::Bounded::new(self.listener, self.write_timeout, self.write_timeouts)
                .tap_io(|_| {});
        let http = axum::serve(
            listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { stopping.stopping().await })
        .into_future();
        let deadline = async {
            shutdown.stopping().await;
            tokio::time::sleep(REQUESTS_WITHIN).await;
        };
        let served = tokio::select! {
            served = http => served.context("HTTP server failed"),
            () = deadline => {
                tracing::warn!("some requests did not finish within {REQUESTS_WITHIN:?}; leaving them");
                Ok(())
            }
        };
        // The HTTP side is done (or failed): stop the rest, if not yet stopped.
        if !shutdown.stop_and_wait(TASKS_WITHIN).await {
            tracing::warn!("some tasks did not stop within {TASKS_WITHIN:?}");
        }
        if !self.broker_shutdown.stop_and_wait(BROKER_WITHIN).await {
            tracing::warn!("the embedded broker did not stop within {BROKER_WITHIN:?}");
        }
        tracing::info!("stopped");
        served
    }
}

/// With no user yet, a one-time link that lets whoever opens it create the first admin
/// (printed for the person who started the server, as Jupyter and Grafana do).
async fn first_run_link(
    accounts: &Store,
    addr: SocketAddr,
) -> anyhow::Result<auth::login::SetupLink> {
    match accounts.user_count().await {
        Ok(0) => {
            let link = auth::login::SetupLink::issue()?;
            let secret = link.secret().unwrap_or_default();
            tracing::warn!(
                "no user exists yet: open http://{addr}/setup?token={secret} to create the first admin (or run `tether-server user add NAME --role admin`)"
            );
            Ok(link)
        }
        Ok(_) => Ok(auth::login::SetupLink::default()),
        Err(error) => {
            tracing::error!(
                "cannot count users ({error:#}); if none exists, create one with `tether-server user add NAME --role admin`"
            );
            Ok(auth::login::SetupLink::default())
        }
    }
}

/// Where devices reach this server: `TETHER_PUBLIC_URL`, else `http://` and the bound
/// address (an unspecified one replaced by this machine's name).
fn public_url(config: &Config, bound: SocketAddr) -> String {
    if let Some(url) = &config.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    if bound.ip().is_unspecified() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into());
        tracing::warn!(
            "TETHER_PUBLIC_URL is unset: update links point to http://{host}:{}; set it to where devices reach this server",
            bound.port()
        );
        return format!("http://{host}:{}", bound.port());
    }
    format!("http://{bound}")
}

/// This replica's id, kept in `data_dir/replica-id` (created on first start).
fn replica_id(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("replica-id");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            let valid = !id.is_empty()
                && id.len() <= 64
                && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            anyhow::ensure!(
                valid,
                "{} must hold a replica id (1–64 letters, digits or -); delete it to get a new one",
                path.display()
            );
            Ok(id.to_owned())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("cannot create {}", data_dir.display()))?;
            let id = format!("{:016x}", fastrand::u64(..));
            std::fs::write(&path, format!("{id}\n"))
                .with_context(|| format!("cannot write {}", path.display()))?;
            tracing::info!("this server is replica {id} (kept in {})", path.display());
            Ok(id)
        }
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Starts the embedded broker in this process under `shutdown`, its devices checked
/// against `accounts`; returns the URL the server account reaches it with, and its
/// handle.
async fn start_embedded_broker(
    config: &Config,
    accounts: &Store,
    shutdown: &Shutdown,
) -> anyhow::Result<(String, broker::BrokerHandle)> {
    let password =
        broker_accounts::server_password(config.broker_password.as_deref(), &config.data_dir)?;
    let logins = broker_accounts::DeviceLogins {
        store: accounts.clone(),
        server_user: config.broker_user.clone(),
    };
    let broker_config = broker::Config {
        addr: config.broker_addr,
        user: config.broker_user.clone(),
        password,
        authenticator: Some(Arc::new(logins)),
        max_connections: usize::try_from(config.broker_max_connections).unwrap_or(usize::MAX),
        ..broker::Config::default()
    };
    let broker = broker::Broker::bind(broker_config).await.with_context(|| {
        format!("cannot start the embedded broker on {} (set TETHER_BROKER_ADDR, or TETHER_AMQP_URL to use another broker)", config.broker_addr)
    })?;
    let url = broker.url()?;
    let addr = broker.local_addr()?;
    tracing::info!(
        "embedded AMQP broker on {addr} (nothing is persisted); provisioned devices connect as their id with their secret (tether-server device add ID)"
    );
    let handle = broker.handle();
    // Its own shutdown, stopped after every other task's, so the hub can say goodbye.
    let stopping = shutdown.clone();
    shutdown.spawn(broker.serve(async move { stopping.stopping().await }));
    Ok((url, handle))
}

/// Binds, logs the address and serves until `signal` resolves; or does the task the
/// command line asked for instead.
pub async fn run(
    mut config: Config,
    signal: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if let Some(command) = config.command.take() {
        return cli::run(&config, command).await;
    }
    let server = Server::bind(config).await?;
    tracing::info!("Tether is listening on http://{}", server.local_addr()?);
    server.serve(signal).await
}

/// The app's pages, listed once per process. Listing them renders the app with resource
/// loading switched off by a flag that is global to the process (leptos_server's
/// `SuppressResourceLoad`): a page rendering meanwhile in another server of the same
/// process (the tests run several) would have its resources wait forever, and its
/// answer with them. Listed once, nothing renders during it: every server is built on
/// the list, so none serves before it exists.
fn route_list() -> Vec<leptos_axum::AxumRouteListing> {
    static ROUTES: std::sync::OnceLock<Vec<leptos_axum::AxumRouteListing>> =
        std::sync::OnceLock::new();
    ROUTES.get_or_init(|| generate_route_list(App)).clone()
}

/// All routes: health, readiness, metrics, the JSON API, the Leptos pages and server
/// functions, and the built site's files (precompressed once, in the background,
/// starting now).
pub fn router(state: AppState) -> Router {
    let routes = route_list();
    let fleet: SharedFleet = Arc::new(state.clone());
    let stop_compressing = Arc::new(AtomicBool::new(false));
    assets::precompress(
        state.leptos_options.site_root.to_string().into(),
        stop_compressing.clone(),
    );
    let stopping = state.shutdown.clone();
    tokio::spawn(async move {
        stopping.stopping().await;
        stop_compressing.store(true, Ordering::Relaxed);
    });
    let files = assets::SiteFiles::new(&state.leptos_options);
    let not_found = leptos_axum::file_and_error_handler::<AppState, _>(shell);
    Router::new()
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
        .route("/metrics", get(metrics::serve))
        .nest("/api", api::routes())
        .route("/docs/api", get(openapi::page))
        .nest(
            "/auth",
            auth::login::routes().nest("/rabbitmq", broker_auth::routes()),
        )
        .leptos_routes_with_context(&state, routes, move || provide_context(fleet.clone()), {
            let options = state.leptos_options.clone();
            move || shell(options.clone())
        })
        // The site's files, else the not-found page.
        .fallback(
            move |uri: Uri, State(state): State<AppState>, request: Request| async move {
                let file = files
                    .serve(request.method(), request.uri(), request.headers())
                    .await;
                match file {
                    Some(file) => file,
                    None => not_found(uri, State(state), request).await,
                }
            },
        )
        // Layers run outside in: compression and caching headers, the cross-site
        // guard, then who is asking.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.allowed_origins.clone(),
            guard::refuse_cross_site,
        ))
        .layer(axum::middleware::from_fn(assets::cache_control))
        .layer(assets::compression())
        .with_state(state)
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
    assets::detect_hashes(&mut options);
    Ok(options)
}
