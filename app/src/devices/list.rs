//! The fleet: every device, online first, updating live.

use leptos::prelude::*;
use protocol::api::DeviceView;

use super::PresenceBadge;
use crate::fleet::{AppError, list_devices, live::use_live};

/// The landing page. Rendered on the server with the devices known then, so it is
/// useful before WASM loads; once hydrated, the live channel keeps it current.
#[component]
pub fn DeviceListPage() -> impl IntoView {
    let live = use_live();
    let rendered = Resource::new(|| (), |_| list_devices());
    let hydrated = RwSignal::new(false);
    // Effects run only in the browser, after hydration: the page marks itself so that
    // tests (and curious users) can tell the WASM has taken over.
    Effect::new(move |_| hydrated.set(true));
    let help_open = RwSignal::new(false);

    let devices = move || -> Option<Result<Vec<DeviceView>, AppError>> {
        if live.synced.get() {
            let mut devices: Vec<_> = live.devices.get().into_values().collect();
            devices.sort_by(|a, b| b.online.cmp(&a.online).then_with(|| a.id.cmp(&b.id)));
            return Some(Ok(devices));
        }
        rendered.get().map(|r| {
            r.map(|mut devices| {
                devices.sort_by(|a, b| b.online.cmp(&a.online).then_with(|| a.id.cmp(&b.id)));
                devices
            })
        })
    };

    view! {
        <section class="card" data-testid="fleet" data-hydrated=move || hydrated.get().then_some("true")>
            <h1>"Fleet"</h1>
            <Suspense fallback=|| view! { <p class="muted">"Loading devices…"</p> }>
                {move || devices().map(|result| match result {
                    Err(error) => view! { <p class="error" role="alert" data-code=error.code>{error.message}</p> }.into_any(),
                    Ok(devices) if devices.is_empty() => view! {
                        <p class="empty">"No devices have connected yet."</p>
                    }.into_any(),
                    Ok(devices) => view! { <DeviceTable devices /> }.into_any(),
                })}
            </Suspense>
            <button
                type="button"
                class="secondary"
                aria-expanded=move || help_open.get().to_string()
                aria-controls="connect-help"
                on:click=move |_| help_open.update(|open| *open = !*open)
            >
                {move || if help_open.get() { "Hide how to connect a device" } else { "Show how to connect a device" }}
            </button>
            <div id="connect-help" class="help" role="region" aria-label="How to connect a device" hidden=move || !help_open.get()>
                <p>"Provision the device first: an admin does it on the " <a href="/admin/devices">"device credentials"</a> " page (or with " <code>"tether-server device add ID"</code> "), which shows its secret once, with the command that starts its agent beside the device:"</p>
                <pre><code>"TETHER_AMQP_URL='amqp://127.0.0.1:5673/%2f' TETHER_DEVICE_SECRET='<its secret>' tether-agent --device-id boiler-1"</code></pre>
                <p>"Or build your own with the agent library; PROTOCOL.md describes the wire format for other languages."</p>
            </div>
        </section>
    }
}

#[component]
fn DeviceTable(devices: Vec<DeviceView>) -> impl IntoView {
    let live = use_live();
    let now_ms = Signal::derive(move || live.now_ms.get());
    view! {
        <table class="devices">
            <caption class="sr-only">"Devices"</caption>
            <thead>
                <tr>
                    <th scope="col">"Device"</th>
                    <th scope="col">"Status"</th>
                    <th scope="col">"Reading"</th>
                    <th scope="col">"Kind"</th>
                    <th scope="col">"Firmware"</th>
                    <th scope="col">"Last seen"</th>
                </tr>
            </thead>
            <tbody>
                {devices.into_iter().map(|device| {
                    let heard = device.clone();
                    // Recomputed on every reading of any device, but the row changes only
                    // when its own text does.
                    let reading = {
                        let device = device.clone();
                        Memo::new(move |_| key_reading(&device, live))
                    };
                    view! {
                        <tr data-testid="device-row" data-device=device.id.to_string()>
                            <th scope="row"><a href=format!("/devices/{}", device.id)>{device.id.to_string()}</a></th>
                            <td data-label="Status"><PresenceBadge device=device.clone() now_ms /></td>
                            <td data-label="Reading" class="reading" data-testid="key-reading">{reading}</td>
                            <td data-label="Kind">{device.kind.clone()}</td>
                            <td data-label="Firmware">{device.firmware.clone()}</td>
                            <td data-label="Last seen" class="muted">{move || super::last_heard(now_ms.get(), &heard)}</td>
                        </tr>
                    }
                }).collect_view()}
            </tbody>
        </table>
    }
}

/// The device's first announced metric and its latest value: live if a reading came
/// since the device list was read, else what the server knew.
fn key_reading(device: &DeviceView, live: crate::fleet::live::Live) -> String {
    let Some(spec) = device.capabilities.metrics.first() else {
        return String::new();
    };
    let known = device.latest.get(&spec.name).map(|l| (l.value, l.ts_ms));
    let fresh = live.readings.with(|readings| {
        readings
            .get(&(device.id.clone(), spec.name.clone()))
            .map(|r| (r.value, r.ts_ms))
    });
    let latest = match (known, fresh) {
        (Some(known), Some(fresh)) => Some(if fresh.1 >= known.1 { fresh } else { known }),
        (known, fresh) => fresh.or(known),
    };
    latest.map_or_else(
        || "—".to_owned(),
        |(value, _)| {
            let value = super::chart::math::format_value(value, 1);
            if spec.unit.is_empty() {
                format!("{} {value}", spec.name)
            } else {
                format!("{} {value} {}", spec.name, spec.unit)
            }
        },
    )
}
