//! Diagnostics reports on the device page: collect one (the agent's built-in
//! `diagnostics` command), and the reports the server keeps, newest first, each
//! downloadable as a JSON file. A report collected while the page is open joins the
//! list as soon as its command succeeds.

use leptos::prelude::*;
use protocol::{
    CommandSpec, DeviceId,
    api::{DiagnosticsReport, SendCommand, timeouts},
    auth::Role,
};

use super::{StatusBadge, Tracked};
use crate::{
    auth::{audit::when, use_me},
    fleet::{AppError, diagnostics_reports, live::use_live},
};

/// How long a device has to put its report together.
const DEADLINE_MS: u64 = 60_000;

#[component]
pub fn Diagnostics(device_id: DeviceId, spec: CommandSpec) -> impl IntoView {
    let live = use_live();
    let me = use_me();
    let stored = {
        let device = device_id.to_string();
        Resource::new(|| (), move |_| diagnostics_reports(device.clone()))
    };
    let tracked = Tracked::new(live);
    let Tracked {
        error,
        sending,
        command,
        ..
    } = tracked;

    // The server's list, with the reports this tab saw succeed since.
    let reports = {
        let device = device_id.clone();
        Memo::new(move |_| -> Result<Vec<DiagnosticsReport>, AppError> {
            let mut all = stored.get().unwrap_or(Ok(Vec::new()))?;
            live.commands.with(|commands| {
                for report in commands.values().filter_map(DiagnosticsReport::of) {
                    if report.device_id == device
                        && !all.iter().any(|r| r.command_id == report.command_id)
                    {
                        all.push(report);
                    }
                }
            });
            all.sort_by_key(|r| std::cmp::Reverse(r.collected_ms));
            Ok(all)
        })
    };
    let collecting = move || tracked.running();

    let collect = {
        let (device, name) = (device_id.clone(), spec.name.clone());
        move |_| {
            let request = SendCommand {
                name: name.clone(),
                args: Default::default(),
                timeout_ms: Some(DEADLINE_MS.min(timeouts::MAX_MS)),
            };
            tracked.send(&device, request);
        }
    };

    let device = device_id.to_string();
    view! {
        <section class="card diagnostics" aria-labelledby="diagnostics-heading" data-testid="diagnostics">
            <h2 id="diagnostics-heading">"Diagnostics"</h2>
            <p class="muted">
                "A report of the device: its system and kernel, the agent and its configuration (secrets hidden), "
                "disks, network interfaces, time sync and the agent's own recent log. Reports are kept by the server."
            </p>
            {move || me.has(Role::Operator).then(|| view! {
                <p>
                    <button type="button" on:click=collect.clone() disabled=move || sending.get() || collecting()>
                        {move || if collecting() { "Collecting…" } else { "Collect a report" }}
                    </button>
                    {move || command.get().filter(|c| c.status != protocol::CommandStatus::Succeeded).map(|c| view! {
                        " " <span data-testid="diagnostics-status"><StatusBadge status=c.status /></span>
                        {c.error.map(|e| view! { <span class="error">" " {e}</span> })}
                    })}
                </p>
            })}
            <p class="error" role="alert" data-testid="diagnostics-error">{move || error.get()}</p>
            <Transition fallback=|| view! { <p class="muted">"Loading reports…"</p> }>
                {move || {
                    let _ = stored.get();
                    match reports.get() {
                        Err(e) => view! { <p class="error" data-code=e.code>{e.message}</p> }.into_any(),
                        Ok(list) if list.is_empty() => view! { <p class="muted" data-testid="no-reports">"No report yet."</p> }.into_any(),
                        Ok(list) => {
                            let device = device.clone();
                            view! {
                                <ul class="reports">
                                    {list.into_iter().map(|r| {
                                        let href = format!("/api/v1/devices/{device}/diagnostics/{}", r.command_id.0);
                                        view! {
                                            <li data-testid="report" data-command=r.command_id.0.clone()>
                                                <span>{when(r.collected_ms)} " UTC"</span>
                                                <span class="muted">" · " {size(r.bytes)}</span>
                                                {r.issued_by.map(|by| view! { <span class="muted">" · by " {by}</span> })}
                                                " " <a href=href download rel="external">"Download"</a>
                                            </li>
                                        }
                                    }).collect_view()}
                                </ul>
                            }.into_any()
                        }
                    }
                }}
            </Transition>
        </section>
    }
}

/// "812 B", "12.3 kB".
fn size(bytes: usize) -> String {
    if bytes < 1_000 {
        format!("{bytes} B")
    } else {
        format!("{:.1} kB", bytes as f64 / 1_000.0)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_naturally() {
        assert_eq!(super::size(812), "812 B");
        assert_eq!(super::size(12_345), "12.3 kB");
    }
}
