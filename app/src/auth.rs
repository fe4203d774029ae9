//! Who is using the app, and the pages for logging in and managing access.
//!
//! [`provide_me`] asks the server once per page load who is asking (rendered on the
//! server, so the answer travels with the HTML); components read it with [`use_me`] to
//! leave out what the user's role may not do. The server checks every request anyway:
//! hiding a button is a courtesy, not the protection.
//!
//! - [`login`]: the login and first-run pages (plain HTML forms: they work before and
//!   without WASM).
//! - [`account`]: the user's own page: password and API tokens.
//! - [`users`]: admins manage users; [`credentials`]: admins provision devices;
//!   [`audit`]: admins read the audit trail.

pub mod account;
pub mod audit;
pub mod credentials;
pub mod login;
pub mod users;

use leptos::prelude::*;
use protocol::auth::{Me, Role};

use crate::fleet::{AppError, who_am_i};

/// The identity of the person using this tab, once known.
#[derive(Debug, Clone, Copy)]
pub struct Identity(pub Resource<Result<Me, AppError>>);

pub fn provide_me() -> Identity {
    let identity = Identity(Resource::new(|| (), |_| who_am_i()));
    provide_context(identity);
    identity
}

pub fn use_me() -> Identity {
    use_context::<Identity>().unwrap_or_else(provide_me)
}

impl Identity {
    /// The user, once the answer is in (and they are logged in).
    pub fn get(&self) -> Option<Me> {
        self.0.get().and_then(Result::ok)
    }

    /// Whether the user has at least `role` (false until known).
    pub fn has(&self, role: Role) -> bool {
        self.get().is_some_and(|me| me.role >= role)
    }
}

/// For a logged-in user: the sections (fleet, jobs, updates, the API's reference), `children` (the live indicator),
/// their name and role, links to what their role may open, and the logout button (a form, so it works without WASM).
#[component]
pub fn UserMenu(children: ChildrenFn) -> impl IntoView {
    let me = use_me();
    view! {
        <Transition fallback=|| ()>
            {move || me.get().map(|me| {
                let admin = me.role == Role::Admin;
                view! {
                    <nav class="sections" aria-label="Sections">
                        <a href="/">"Fleet"</a>
                        <a href="/jobs">"Jobs"</a>
                        <a href="/updates">"Updates"</a>
                        // Served by the server itself (not a route of the app).
                        <a href="/docs/api" rel="external">"API"</a>
                    </nav>
                    {children()}
                    <nav class="user-menu" aria-label="Account">
                        {admin.then(|| view! {
                            <a href="/admin/users">"Users"</a>
                            <a href="/admin/devices">"Devices"</a>
                            <a href="/admin/audit">"Audit"</a>
                        })}
                        <a href="/account" data-testid="me">{me.name.clone()} " · " {me.role.as_str()}</a>
                        <form method="post" action="/auth/logout" class="inline">
                            <button type="submit" class="link">"Log out"</button>
                        </form>
                    </nav>
                }
            })}
        </Transition>
    }
}

/// Shown instead of a page the user's role may not open.
#[component]
pub fn NeedsRole(role: Role, children: ChildrenFn) -> impl IntoView {
    let me = use_me();
    view! {
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || match me.0.get() {
                None => ().into_any(),
                Some(Err(error)) => view! {
                    <section class="card"><p class="error" role="alert" data-code=error.code>{error.message}</p></section>
                }.into_any(),
                Some(Ok(me)) if me.role >= role => children().into_any(),
                Some(Ok(me)) => view! {
                    <section class="card">
                        <h1>"Not for your role"</h1>
                        <p>{format!("This page needs the {role} role; you are {}.", me.role)}</p>
                    </section>
                }.into_any(),
            }}
        </Transition>
    }
}

/// A query parameter of the current URL.
pub(crate) fn query(name: &'static str) -> Memo<String> {
    let query = leptos_router::hooks::use_query_map();
    Memo::new(move |_| query.read().get(name).unwrap_or_default())
}
