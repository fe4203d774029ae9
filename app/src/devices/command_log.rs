//! The commands sent to a device, newest first, each walking through its statuses
//! live, with a way to cancel those still pending.

use leptos::prelude::*;
use protocol::{DeviceId, api::CommandView};

use super::{StatusBadge, ago, command_form::input_text};
use crate::fleet::{AppError, cancel_command, live::use_live};

/// The commands sent to this device, newest first, each walking through its statuses.
#[component]
pub fn CommandLog(device_id: DeviceId, initial: Vec<CommandView>) -> impl IntoView {
    let live = use_live();
    let now_ms = Signal::derive(move || live.now_ms.get());
    let commands = move || {
        let mut commands: Vec<CommandView> = if live.synced.get() {
            live.commands.with(|all| {
                all.values()
                    .filter(|c| c.device_id == device_id)
                    .cloned()
                    .collect()
            })
        } else {
            initial.clone()
        };
        commands.sort_by_key(|c| std::cmp::Reverse(c.created_ms));
        commands
    };
    view! {
        <section class="card" aria-labelledby="log-heading">
            <h2 id="log-heading">"Command log"</h2>
            <ol class="log" aria-live="polite" data-testid="command-log">
                <For each=commands key=|c| (c.id.clone(), c.status, c.updated_ms, c.percent, c.message.clone()) let:command>
                    <CommandEntry command now_ms />
                </For>
            </ol>
        </section>
    }
    .into_any()
}

#[component]
fn CommandEntry(command: CommandView, now_ms: Signal<u64>) -> impl IntoView {
    let created = command.created_ms;
    let args = if command.args.is_empty() {
        String::new()
    } else {
        command
            .args
            .iter()
            .map(|(k, v)| format!("{k}={}", input_text(v)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let may_cancel = crate::auth::use_me().has(protocol::auth::Role::Operator);
    let pending = !command.status.is_terminal();
    let cancel_error = RwSignal::new(None::<AppError>);
    let id = command.id.0.clone();
    let cancel = move |_| {
        let id = id.clone();
        leptos::task::spawn_local(async move {
            if let Err(e) = cancel_command(id).await {
                cancel_error.set(Some(e));
            }
        });
    };
    // A diagnostics report is long: it is downloaded, not shown here.
    let report = protocol::api::DiagnosticsReport::of(&command).map(|r| {
        format!(
            "/api/v1/devices/{}/diagnostics/{}",
            r.device_id, r.command_id.0
        )
    });
    let result = command
        .result
        .as_ref()
        .filter(|_| report.is_none())
        .map(|r| serde_json::to_string_pretty(r).unwrap_or_default());
    view! {
        <li class="entry" data-testid="command" data-command=command.id.0.clone() data-status=command.status.as_str()>
            <div class="entry-head">
                <strong class="name">{command.name.replace('_', " ")}</strong>
                <span class="muted args">{args}</span>
                <StatusBadge status=command.status />
                <span class="muted when">{move || ago(now_ms.get(), created)}</span>
                {command.issued_by.clone().map(|by| view! { <span class="muted by" data-testid="issued-by">"by " {by}</span> })}
                {(pending && may_cancel).then(|| view! { <button type="button" class="link" on:click=cancel>"Cancel"</button> })}
            </div>
            {pending.then(|| view! {
                <progress max="100" value=command.percent.map(|p| p.to_string()) aria-label="progress">
                    {command.percent.map(|p| format!("{p}%"))}
                </progress>
            })}
            {command.message.clone().map(|m| view! { <p class="progress-message">{m}</p> })}
            {result.map(|r| view! { <pre class="result" data-testid="result">{r}</pre> })}
            {report.map(|href| view! { <p><a href=href download rel="external">"Download the report"</a></p> })}
            {command.error.clone().map(|e| view! { <p class="error" data-testid="command-error">{e}</p> })}
            {move || cancel_error.get().map(|e| view! { <p class="error" role="alert" data-code=e.code>{e.message}</p> })}
        </li>
    }
    .into_any()
}
