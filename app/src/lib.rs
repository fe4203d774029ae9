//! Tether's user interface: the HTML shell, the routes and their pages.
//!
//! Everything here renders on the server (feature `ssr`) and hydrates in the
//! browser (feature `hydrate`). Server-only code sits behind `ssr`, so nothing
//! from tokio or lapin reaches the WASM bundle.
//!
//! - [`shell`]: the HTML document the server wraps around [`App`].
//! - [`App`]: meta tags, stylesheet, the live connection and the router.
//! - [`fleet`]: server functions, the [`fleet::Fleet`] trait the server implements, and
//!   the live channel that keeps every page current.
//! - [`devices`]: the fleet list and the device page with command forms and log.
//! - [`jobs`]: jobs (one command to many devices): the list, the form that starts one,
//!   and one job's page with its devices.
//! - [`updates`]: software updates: the artifacts (upload, roll out, remove) and the key
//!   agents verify them with.
//! - [`auth`]: who is using the app; login, first run, account, users, device
//!   credentials and audit pages.
//! - [`routes`]: the pages the browser loads on demand, each a file of its own.

pub mod auth;
pub mod devices;
pub mod fleet;
pub mod jobs;
pub mod routes;
pub mod updates;

use leptos::prelude::*;
use leptos_meta::{HashedStylesheet, MetaTags, Title, provide_meta_context};
use leptos_router::{
    Lazy, ParamSegment, SsrMode, StaticSegment,
    components::{Route, Router, Routes},
};

use crate::fleet::live::{LinkStatus, LiveTransport, provide_live};

/// The HTML document around the app: head with hydration scripts, body with [`App`].
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8" />
                <meta name="viewport" content="width=device-width, initial-scale=1" />
                <link rel="icon" href="/favicon.svg" type="image/svg+xml" />
                <AutoReload options=options.clone() />
                // The bundle's file names carry their content's hash when cargo-leptos
                // built the site with `hash-files` (server/src/assets.rs).
                <HashedStylesheet options=options.clone() id="leptos" />
                <HydrationScripts options />
                <MetaTags />
            </head>
            <body>
                <App />
            </body>
        </html>
    }
}

/// The root component: stylesheet, title and routes.
#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    let live = provide_live();
    auth::provide_me();

    view! {
        <Title text="Tether" />
        <Router>
            <header class="topbar">
                <a class="brand" href="/">
                    "Tether"
                </a>
                <auth::UserMenu>
                    <ConnectionIndicator status=live.status transport=live.transport />
                </auth::UserMenu>
            </header>
            <main>
                <Routes fallback=NotFound>
                    // Async: the server waits for the data and sends whole pages, so they
                    // are complete before (or without) any WASM. `Lazy`: the page's code
                    // is fetched when it is first shown (`routes`).
                    <Route path=StaticSegment("") view=devices::list::DeviceListPage ssr=SsrMode::Async />
                    <Route
                        path=(StaticSegment("devices"), ParamSegment("id"))
                        view={Lazy::<routes::DeviceRoute>::new()}
                        ssr=SsrMode::Async
                    />
                    <Route path=StaticSegment("jobs") view={Lazy::<routes::JobsRoute>::new()} ssr=SsrMode::Async />
                    <Route
                        path=(StaticSegment("jobs"), ParamSegment("id"))
                        view={Lazy::<routes::JobRoute>::new()}
                        ssr=SsrMode::Async
                    />
                    <Route path=StaticSegment("updates") view={Lazy::<routes::UpdatesRoute>::new()} ssr=SsrMode::Async />
                    <Route path=StaticSegment("login") view=auth::login::LoginPage />
                    <Route path=StaticSegment("setup") view=auth::login::SetupPage />
                    <Route path=StaticSegment("account") view={Lazy::<routes::AccountRoute>::new()} ssr=SsrMode::Async />
                    <Route path=(StaticSegment("admin"), StaticSegment("users")) view={Lazy::<routes::UsersRoute>::new()} ssr=SsrMode::Async />
                    <Route path=(StaticSegment("admin"), StaticSegment("devices")) view={Lazy::<routes::CredentialsRoute>::new()} ssr=SsrMode::Async />
                    <Route path=(StaticSegment("admin"), StaticSegment("audit")) view={Lazy::<routes::AuditRoute>::new()} ssr=SsrMode::Async />
                </Routes>
            </main>
        </Router>
    }
}

/// Whether this tab is receiving live updates, and over what: "live (WebSocket)",
/// "live (SSE)" or "live (polling)" (`fleet::live` falls back to the latter two where
/// the network lets no WebSocket through).
#[component]
pub fn ConnectionIndicator(
    status: RwSignal<LinkStatus>,
    transport: RwSignal<LiveTransport>,
) -> impl IntoView {
    let text = move || match status.get() {
        LinkStatus::Connecting => "connecting…".to_owned(),
        LinkStatus::Live => format!("live ({})", transport.get().label()),
        LinkStatus::Reconnecting => "reconnecting…".to_owned(),
    };
    let class = move || match status.get() {
        LinkStatus::Live => "link live",
        _ => "link down",
    };
    view! {
        <span class=class role="status" aria-live="polite" data-testid="connection" title="Live updates">
            <span class="dot" aria-hidden="true"></span>
            {text}
        </span>
    }
}

/// Shown for any path no route matches.
#[component]
fn NotFound() -> impl IntoView {
    #[cfg(feature = "ssr")]
    if let Some(response) = use_context::<leptos_axum::ResponseOptions>() {
        response.set_status(http::StatusCode::NOT_FOUND);
    }
    view! {
        <section class="card">
            <h1>"Page not found"</h1>
            <p>"There is nothing at this address. " <a href="/">"Back to the fleet"</a></p>
        </section>
    }
}
