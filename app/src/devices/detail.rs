//! One device: its state, a form per command it announced, and a live log of the
//! commands sent to it. The forms are in [`super::command_form`], the log in
//! [`super::command_log`]; this is the page and its header.

use leptos::prelude::*;
use leptos_router::hooks::use_params_map;
use protocol::{Capabilities, DeviceId, api::DeviceView, auth::Role, capability::builtin};

use super::{
    PresenceBadge, command_form::CommandForm, command_log::CommandLog, diagnostics::Diagnostics,
    logs::LogViewer,
};
use crate::{
    auth::use_me,
    fleet::{AppError, get_device, live::use_live, recent_commands},
};

/// What the page shows, apart from the details that change with every heartbeat.
#[derive(Debug, Clone, PartialEq)]
enum Loaded {
    Failed(AppError),
    Unknown(String),
    Found(DeviceId, Capabilities),
}

#[component]
pub fn DevicePage() -> impl IntoView {
    let params = use_params_map();
    let id = Memo::new(move |_| params.read().get("id").unwrap_or_default());
    let live = use_live();
    let rendered = Resource::new(
        move || id.get(),
        |id| async move { (get_device(id.clone()).await, recent_commands(id, 50).await) },
    );

    let device = Memo::new(move |_| -> Option<Result<Option<DeviceView>, AppError>> {
        let id = id.get();
        // The live view has it once the tab watches it (the server sends it then);
        // until then, what was read.
        if live.synced.get()
            && let Some(known) = live.devices.with(|all| {
                all.iter()
                    .find(|(k, _)| k.as_str() == id)
                    .map(|(_, d)| d.clone())
            })
        {
            return Some(Ok(Some(known)));
        }
        rendered.get().map(|(device, _)| device)
    });
    let loaded = Memo::new(move |_| {
        device.get().map(|result| match result {
            Err(error) => Loaded::Failed(error),
            Ok(None) => Loaded::Unknown(id.get()),
            Ok(Some(d)) => Loaded::Found(d.id, std::sync::Arc::unwrap_or_clone(d.capabilities)),
        })
    });
    // Commands the server rendered, until the live channel has its own.
    let initial_commands = move || {
        rendered
            .get()
            .and_then(|(_, commands)| commands.ok())
            .unwrap_or_default()
    };

    view! {
        <Suspense fallback=|| view! { <section class="card"><p class="muted">"Loading device…"</p></section> }>
            {move || {
                // Read here, inside the Suspense, so that it waits for the resource: read
                // only through the memos (owned outside), it would render before the
                // server functions answered.
                let _ = rendered.get();
                loaded.get()
            }.map(|loaded| match loaded {
                Loaded::Failed(error) => view! {
                    <section class="card"><p class="error" role="alert" data-code=error.code>{error.message}</p></section>
                }.into_any(),
                Loaded::Unknown(id) => {
                    #[cfg(feature = "ssr")]
                    if let Some(response) = use_context::<leptos_axum::ResponseOptions>() {
                        response.set_status(http::StatusCode::NOT_FOUND);
                    }
                    view! {
                        <section class="card">
                            <h1>"Unknown device"</h1>
                            <p>"No device \"" {id} "\" has connected to this server. " <a href="/">"Back to the fleet"</a></p>
                        </section>
                    }.into_any()
                }
                Loaded::Found(id, capabilities) => {
                    // The agent's built-in commands have cards of their own.
                    let (built_in, commands): (Vec<_>, Vec<_>) = capabilities
                        .commands
                        .iter()
                        .cloned()
                        .partition(|c| builtin::ALL.contains(&c.name.as_str()));
                    let card = |name: &str| built_in.iter().find(|c| c.name == name).cloned();
                    // The live channel sends this device's changes while the page shows it.
                    {
                        let id = id.clone();
                        Effect::new(move |_| live.watch(&id));
                    }
                    {
                        let id = id.clone();
                        on_cleanup(move || live.unwatch(&id));
                    }
                    view! {
                        <DeviceHeader device=Signal::derive(move || device.get().and_then(Result::ok).flatten()) />
                        {(!capabilities.metrics.is_empty()).then(|| view! {
                            <super::telemetry::Telemetry device_id=id.clone() capabilities=capabilities.clone() />
                        })}
                        {(!commands.is_empty()).then(|| view! {
                            <section class="card" aria-labelledby="commands-heading">
                                <h2 id="commands-heading">"Commands"</h2>
                                <CommandForms device_id=id.clone() commands=commands.clone() />
                            </section>
                        })}
                        {card(builtin::LOGS).map(|spec| view! { <LogViewer device_id=id.clone() spec /> })}
                        {card(builtin::DIAGNOSTICS).map(|spec| view! { <Diagnostics device_id=id.clone() spec /> })}
                        <CommandLog device_id=id initial=initial_commands() />
                    }.into_any()
                }
            })}
        </Suspense>
    }
}

/// A form per command, for those whose role may send them.
#[component]
fn CommandForms(device_id: DeviceId, commands: Vec<protocol::CommandSpec>) -> impl IntoView {
    let me = use_me();
    move || {
        if me.has(Role::Operator) {
            let forms = commands
                .iter()
                .map(|spec| view! { <CommandForm device_id=device_id.clone() spec=spec.clone() /> })
                .collect_view();
            view! { <div class="forms">{forms}</div> }.into_any()
        } else {
            view! {
                <p class="muted" data-testid="no-commands">
                    "You can watch this device. Sending commands needs the operator role."
                </p>
            }
            .into_any()
        }
    }
}

#[component]
fn DeviceHeader(device: Signal<Option<DeviceView>>) -> impl IntoView {
    let live = use_live();
    let now_ms = Signal::derive(move || live.now_ms.get());
    // Effects run only in the browser, once the page is hydrated: this page's code is
    // fetched on demand (`crate::routes`), so that can be after the live channel is up.
    let hydrated = RwSignal::new(false);
    Effect::new(move |_| hydrated.set(true));
    move || {
        device.get().map(|d| {
            let heard = d.clone();
            view! {
                <section class="card device-header" data-hydrated=move || hydrated.get().then_some("true")>
                    <p class="crumbs"><a href="/">"Fleet"</a> " / "</p>
                    <h1>{d.id.to_string()}</h1>
                    <p class="presence"><PresenceBadge device=d.clone() now_ms /></p>
                    <dl class="facts">
                        <dt>"Kind"</dt><dd>{d.kind.clone()}</dd>
                        <dt>"Firmware"</dt><dd>{d.firmware.clone()}</dd>
                        <dt>"Last seen"</dt><dd>{move || super::last_heard(now_ms.get(), &heard)}</dd>
                        <dt>"Heartbeat"</dt><dd>{format!("every {} s", d.heartbeat_ms as f64 / 1000.0)}</dd>
                    </dl>
                    {d.hello_refused.clone().map(|refused| view! {
                        <p class="error" role="alert" data-testid="hello-refused">
                            {format!(
                                "Its last hello was refused ({}), so what it announced then is not in effect: {}",
                                crate::auth::audit::when(refused.at_ms),
                                refused.problem
                            )}
                        </p>
                    })}
                </section>
            }
            .into_any()
        })
    }
}
