//! The pages the browser loads on demand (`cargo leptos build --split`): each page's
//! code is a file of its own under `/pkg`, fetched the first time the page is shown (the
//! server names the current page's file in the HTML, so the browser fetches it beside
//! the main bundle). The fleet list, login and first-run pages stay in the main bundle:
//! they are where people arrive.
//!
//! Every page here renders whole on the server as before; only its hydration waits for
//! its file. Without `--split` (the server build, `cargo clippy`), each is an ordinary
//! call.

use leptos::prelude::*;
use leptos_router::{LazyRoute, lazy_route};

use crate::{auth, devices, jobs, updates};

/// `/devices/:id`: a device, its commands, readings, logs and actions.
#[derive(Debug)]
pub struct DeviceRoute;

#[lazy_route]
impl LazyRoute for DeviceRoute {
    fn data() -> Self {
        Self
    }

    fn view(this: Self) -> AnyView {
        let _ = this;
        view! { <devices::detail::DevicePage /> }.into_any()
    }
}

/// `/jobs`: the jobs and the form that starts one.
#[derive(Debug)]
pub struct JobsRoute;

#[lazy_route]
impl LazyRoute for JobsRoute {
    fn data() -> Self {
        Self
    }

    fn view(this: Self) -> AnyView {
        let _ = this;
        view! { <jobs::list::JobsPage /> }.into_any()
    }
}

/// `/jobs/:id`: one job and its devices.
#[derive(Debug)]
pub struct JobRoute;

#[lazy_route]
impl LazyRoute for JobRoute {
    fn data() -> Self {
        Self
    }

    fn view(this: Self) -> AnyView {
        let _ = this;
        view! { <jobs::detail::JobPage /> }.into_any()
    }
}

/// `/updates`: software updates.
#[derive(Debug)]
pub struct UpdatesRoute;

#[lazy_route]
impl LazyRoute for UpdatesRoute {
    fn data() -> Self {
        Self
    }

    fn view(this: Self) -> AnyView {
        let _ = this;
        view! { <updates::UpdatesPage /> }.into_any()
    }
}

/// `/account`.
#[derive(Debug)]
pub struct AccountRoute;

#[lazy_route]
impl LazyRoute for AccountRoute {
    fn data() -> Self {
        Self
    }

    fn view(this: Self) -> AnyView {
        let _ = this;
        view! { <auth::account::AccountPage /> }.into_any()
    }
}

/// `/admin/users`.
#[derive(Debug)]
pub struct UsersRoute;

#[lazy_route]
impl LazyRoute for UsersRoute {
    fn data() -> Self {
        Self
    }

    fn view(this: Self) -> AnyView {
        let _ = this;
        view! { <auth::users::UsersPage /> }.into_any()
    }
}

/// `/admin/devices`: device credentials.
#[derive(Debug)]
pub struct CredentialsRoute;

#[lazy_route]
impl LazyRoute for CredentialsRoute {
    fn data() -> Self {
        Self
    }

    fn view(this: Self) -> AnyView {
        let _ = this;
        view! { <auth::credentials::DeviceCredentialsPage /> }.into_any()
    }
}

/// `/admin/audit`.
#[derive(Debug)]
pub struct AuditRoute;

#[lazy_route]
impl LazyRoute for AuditRoute {
    fn data() -> Self {
        Self
    }

    fn view(this: Self) -> AnyView {
        let _ = this;
        view! { <auth::audit::AuditPage /> }.into_any()
    }
}
