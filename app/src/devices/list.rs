//! The fleet: a page of devices at a time, searched, filtered and sorted as the page's
//! address says (`/?search=…&status=online&kind=…&sort=…&order=…&offset=…`), with the
//! fleet's counts above it, updating live.
//!
//! The server renders the page asked for, so it is useful before WASM loads and at any
//! fleet size: the filter form is a plain GET form, sorting and paging are links. Once
//! hydrated, the same links and form navigate in the tab, the tab tells the live channel
//! which page it shows ([`Live::show_fleet`](crate::fleet::live::Live::show_fleet)), and
//! the server keeps that page current: devices come, go and change place as they
//! change, and each row follows its device's live events.

use leptos::prelude::*;
use leptos_router::hooks::{use_navigate, use_query_map};
use protocol::{
    DeviceId,
    api::DeviceView,
    fleet::{DevicePage, DeviceQuery, DeviceSort, FleetSummary, SortOrder, StatusFilter},
};

use super::PresenceBadge;
use crate::fleet::{fleet_page, live::use_live};

/// The landing page.
#[component]
pub fn DeviceListPage() -> impl IntoView {
    let params = use_query_map();
    let query = Memo::new(move |_| params.with(|p| DeviceQuery::from_params(|name| p.get(name))));
    let read = Resource::new(move || query.get(), fleet_page);
    let live = use_live();
    // In the browser: the live channel sends this page and keeps it current.
    Effect::new(move |_| live.show_fleet(query.get()));
    on_cleanup(move || live.hide_fleet());
    let hydrated = RwSignal::new(false);
    // Effects run only in the browser, after hydration: the page marks itself so that
    // tests (and curious users) can tell the WASM has taken over.
    Effect::new(move |_| hydrated.set(true));
    let help_open = RwSignal::new(false);

    view! {
        <section class="card" data-testid="fleet" data-hydrated=move || hydrated.get().then_some("true")>
            <h1>"Fleet"</h1>
            <Transition fallback=|| view! { <p class="muted">"Loading devices…"</p> }>
                {move || read.get().map(|answer| match answer {
                    Err(error) => view! { <p class="error" role="alert" data-code=error.code>{error.message}</p> }.into_any(),
                    Ok(page) => view! { <Fleet page query=query.get_untracked() /> }.into_any(),
                })}
            </Transition>
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

/// The counts, the filters, one page of devices and the pager: as read, then as the
/// live channel sends the same page.
#[component]
fn Fleet(page: DevicePage, query: DeviceQuery) -> impl IntoView {
    let live = use_live();
    let current = {
        let query = query.clone();
        Memo::new(move |_| {
            live.fleet
                .with(|fleet| {
                    fleet
                        .as_ref()
                        .filter(|(shown, _)| *shown == query)
                        .map(|(_, page)| page.clone())
                })
                .unwrap_or_else(|| page.clone())
        })
    };
    let link = {
        let query = query.clone();
        move |offset: u32| {
            href(&DeviceQuery {
                offset,
                ..query.clone()
            })
        }
    };
    let pager = move || {
        let (offset, limit, shown, total) = current.with(|p| {
            let shown = u32::try_from(p.devices.len()).unwrap_or(u32::MAX);
            (p.offset, p.limit, shown, p.total)
        });
        let previous = (offset > 0).then(|| link(offset.saturating_sub(limit)));
        let next = (offset + shown < total).then(|| link(offset + limit));
        view! {
            {match previous {
                Some(href) => view! { <a class="button secondary" href=href rel="prev" data-testid="fleet-previous">"Previous"</a> }.into_any(),
                None => view! { <span class="button secondary disabled" aria-disabled="true">"Previous"</span> }.into_any(),
            }}
            {match next {
                Some(href) => view! { <a class="button secondary" href=href rel="next" data-testid="fleet-next">"Next"</a> }.into_any(),
                None => view! { <span class="button secondary disabled" aria-disabled="true">"Next"</span> }.into_any(),
            }}
        }
    };
    let range = move || {
        current.with(|p| {
            let shown = u32::try_from(p.devices.len()).unwrap_or(u32::MAX);
            if p.summary.total == 0 {
                "No devices have connected yet.".to_owned()
            } else if shown == 0 {
                "No devices match.".to_owned()
            } else {
                format!(
                    "Showing {}–{} of {}",
                    p.offset + 1,
                    p.offset + shown,
                    p.total
                )
            }
        })
    };
    let summary = Signal::derive(move || current.with(|p| p.summary.clone()));
    view! {
        <Summary summary />
        <Filters query=query.clone() summary />
        <p class="muted" data-testid="fleet-range">{range}</p>
        <DeviceTable current query />
        <nav class="row-buttons pager" aria-label="Pages of devices">{pager}</nav>
    }
}

/// How many devices the user may see, online and offline.
#[component]
fn Summary(summary: Signal<FleetSummary>) -> impl IntoView {
    view! {
        <dl class="job-counts fleet-counts" data-testid="fleet-counts">
            <div><dt>"Devices"</dt><dd data-testid="count-devices">{move || summary.with(|s| s.total)}</dd></div>
            <div><dt>"Online"</dt><dd data-testid="count-online">{move || summary.with(|s| s.online)}</dd></div>
            <div><dt>"Offline"</dt><dd data-testid="count-offline">{move || summary.with(|s| s.offline)}</dd></div>
        </dl>
    }
}

/// Search, status and kind: a GET form to this page, so it works before WASM loads;
/// once hydrated, a change of either list applies at once, and the search on submit.
/// The sort stays; the page goes back to the first. The kinds to choose from are the
/// fleet's as the live channel keeps them (a kind that appears is offered at once), and
/// the one chosen stays offered when no device of it is left.
#[component]
fn Filters(query: DeviceQuery, summary: Signal<FleetSummary>) -> impl IntoView {
    let navigate = use_navigate();
    let search = RwSignal::new(query.search.clone().unwrap_or_default());
    let status = RwSignal::new(query.status);
    let kind = RwSignal::new(query.kind.clone());
    let go = {
        let query = query.clone();
        move || {
            let next = DeviceQuery {
                search: Some(search.get_untracked()),
                status: status.get_untracked(),
                kind: kind.get_untracked(),
                offset: 0,
                ..query.clone()
            };
            navigate(&href(&next), Default::default());
        }
    };
    let (on_submit, on_status, on_kind) = (go.clone(), go.clone(), go);
    let status_is = |s: Option<StatusFilter>| query.status == s;
    let chosen_kind = query.kind.clone();
    let kinds = Memo::new(move |_| {
        let mut kinds: Vec<(String, u32)> =
            summary.with(|s| s.kinds.iter().map(|k| (k.kind.clone(), k.count)).collect());
        if let Some(chosen) = &chosen_kind
            && !kinds.iter().any(|(kind, _)| kind == chosen)
        {
            kinds.push((chosen.clone(), 0));
            kinds.sort();
        }
        kinds
    });
    let chosen_kind = query.kind.clone();
    view! {
        <form class="row" method="get" action="/" role="search" aria-label="Filter devices" data-testid="fleet-filter"
            on:submit=move |ev| {
                ev.prevent_default();
                on_submit();
            }>
            <label>"Device"
                <input type="search" name="search" placeholder="id contains…" data-testid="fleet-search"
                    maxlength=DeviceQuery::MAX_TEXT value=query.search.clone().unwrap_or_default()
                    on:input=move |ev| search.set(event_target_value(&ev)) />
            </label>
            <label>"Status"
                <select name="status" data-testid="fleet-status" on:change=move |ev| {
                    status.set(StatusFilter::parse(&event_target_value(&ev)));
                    on_status();
                }>
                    <option value="" selected=status_is(None)>"any"</option>
                    {StatusFilter::ALL.into_iter().map(|s| view! {
                        <option value=s.as_str() selected=status_is(Some(s))>{s.as_str()}</option>
                    }).collect_view()}
                </select>
            </label>
            <label>"Kind"
                <select name="kind" data-testid="fleet-kind" on:change=move |ev| {
                    kind.set(Some(event_target_value(&ev)).filter(|k| !k.is_empty()));
                    on_kind();
                }>
                    <option value="" selected=query.kind.is_none()>"any"</option>
                    {move || kinds.get().into_iter().map(|(k, count)| {
                        let selected = chosen_kind.as_deref() == Some(k.as_str());
                        let label = format!("{k} ({count})");
                        view! { <option value=k selected=selected>{label}</option> }
                    }).collect_view()}
                </select>
            </label>
            {query.sort.map(|s| view! { <input type="hidden" name="sort" value=s.as_str() /> })}
            {query.order.map(|o| view! { <input type="hidden" name="order" value=o.as_str() /> })}
            <button type="submit" class="secondary">"Filter"</button>
        </form>
    }
}

/// This page's address for `query`.
fn href(query: &DeviceQuery) -> String {
    let params = query.to_params();
    if params.is_empty() {
        return "/".to_owned();
    }
    let pairs: Vec<String> = params
        .into_iter()
        .map(|(name, value)| format!("{name}={}", encode(&value)))
        .collect();
    format!("/?{}", pairs.join("&"))
}

/// `text` percent-encoded for a query string (everything but unreserved characters).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(byte));
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// A column heading that sorts by it: ascending first, descending when it already
/// sorts ascending; from the first page.
#[component]
fn SortHeading(label: &'static str, by: DeviceSort, query: DeviceQuery) -> impl IntoView {
    let current = query.sort() == by;
    let descending = current && query.order() == SortOrder::Desc;
    let next = DeviceQuery {
        sort: Some(by),
        order: Some(if current && !descending {
            SortOrder::Desc
        } else {
            SortOrder::Asc
        }),
        offset: 0,
        ..query
    };
    let aria_sort = match (current, descending) {
        (false, _) => "none",
        (true, false) => "ascending",
        (true, true) => "descending",
    };
    let arrow = match (current, descending) {
        (false, _) => "",
        (true, false) => " ▲",
        (true, true) => " ▼",
    };
    view! {
        <th scope="col" aria-sort=aria_sort>
            <a href=href(&next) data-testid=format!("sort-{}", by.as_str())>{label}{arrow}</a>
        </th>
    }
}

#[component]
fn DeviceTable(current: Memo<DevicePage>, query: DeviceQuery) -> impl IntoView {
    let live = use_live();
    let now_ms = Signal::derive(move || live.now_ms.get());
    view! {
        <table class="devices">
            <caption class="sr-only">"Devices"</caption>
            <thead>
                <tr>
                    <SortHeading label="Device" by=DeviceSort::Id query=query.clone() />
                    <SortHeading label="Status" by=DeviceSort::Status query=query.clone() />
                    <th scope="col">"Reading"</th>
                    <SortHeading label="Kind" by=DeviceSort::Kind query=query.clone() />
                    <SortHeading label="Firmware" by=DeviceSort::Firmware query=query.clone() />
                    <SortHeading label="Last seen" by=DeviceSort::LastSeen query />
                </tr>
            </thead>
            <tbody>
                <For
                    each=move || current.with(|p| p.devices.clone())
                    key=|device| device.id.clone()
                    children=move |device| view! { <DeviceRow device now_ms /> }
                />
            </tbody>
        </table>
    }
}

/// One device: as the page was read, then as the live channel has it.
#[component]
fn DeviceRow(device: DeviceView, now_ms: Signal<u64>) -> impl IntoView {
    let live = use_live();
    let id: DeviceId = device.id.clone();
    let current = {
        let id = id.clone();
        Memo::new(move |_| {
            live.devices
                .with(|all| all.get(&id).cloned())
                .filter(|fresh| {
                    fresh.last_seen_ms >= device.last_seen_ms || fresh.since_ms >= device.since_ms
                })
                .unwrap_or_else(|| device.clone())
        })
    };
    // Recomputed on every reading of any device, but the cell changes only when its own
    // text does.
    let reading = Memo::new(move |_| current.with(|device| key_reading(device, live)));
    view! {
        <tr data-testid="device-row" data-device=id.to_string()>
            <th scope="row"><a href=format!("/devices/{id}")>{id.to_string()}</a></th>
            <td data-label="Status">{move || view! { <PresenceBadge device=current.get() now_ms /> }}</td>
            <td data-label="Reading" class="reading" data-testid="key-reading">{reading}</td>
            <td data-label="Kind">{move || current.with(|d| d.kind.clone())}</td>
            <td data-label="Firmware">{move || current.with(|d| d.firmware.clone())}</td>
            <td data-label="Last seen" class="muted">{move || super::last_heard(now_ms.get(), &current.get())}</td>
        </tr>
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_carry_the_query_encoded() {
        assert_eq!(href(&DeviceQuery::default()), "/");
        let query = DeviceQuery {
            search: Some("boiler 1&x=é".into()),
            status: Some(StatusFilter::Online),
            sort: Some(DeviceSort::LastSeen),
            offset: 50,
            ..DeviceQuery::default()
        };
        assert_eq!(
            href(&query),
            "/?search=boiler%201%26x%3D%C3%A9&status=online&sort=last_seen&offset=50"
        );
    }
}
