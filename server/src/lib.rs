//! Tether's web server.
//!
//! - [`Config`]: every setting, from flags or `TETHER_*` environment variables.
//! - [`router`]: the HTTP routes (health, server-rendered pages, static files),
//!   separate from serving so tests can call it directly.
//! - [`run`]: binds, serves until `shutdown` resolves, then drains connections.
//!
//! `main.rs` only parses the configuration, sets up logging and calls [`run`];
//! the integration tests call the same [`run`] on port 0.

pub mod hub;

use std::{future::Future, net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use app::{App, shell};
use axum::{Router, routing::get};
use leptos::prelude::*;
use leptos_axum::{LeptosRoutes, generate_route_list};
use tokio::net::TcpListener;

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
}

/// A server that has bound its port and is ready to serve.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    router: Router,
}

impl Server {
    /// Binds the configured address and builds the routes.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        let options = leptos_options(&config)?;
        let addr = options.site_addr;
        let listener = TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} (is another server using it? set TETHER_ADDR)")
        })?;
        Ok(Self {
            listener,
            router: router(options),
        })
    }

    /// The address actually bound (differs from the configured one for port 0).
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
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

/// Binds, logs the address and serves until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let server = Server::bind(config).await?;
    tracing::info!("Tether is listening on http://{}", server.local_addr()?);
    server.serve(shutdown).await
}

/// All HTTP routes: health checks, the Leptos pages, and the built site's files.
pub fn router(options: LeptosOptions) -> Router {
    let routes = generate_route_list(App);
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ready" }))
        .leptos_routes(&options, routes, {
            let options = options.clone();
            move || shell(options.clone())
        })
        .fallback(leptos_axum::file_and_error_handler(shell))
        .with_state(options)
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
