//! `/metrics`: what the hub and the recorders counted, in the Prometheus text format
//! (encoded by `prometheus-client`). Each metric is registered once, in [`render`],
//! from one snapshot per scrape.

use axum::{extract::State, http::header, response::IntoResponse};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::state::AppState;

type Labels = Vec<(&'static str, &'static str)>;

pub async fn serve(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        render(&state),
    )
}

/// The text of one scrape.
pub fn render(state: &AppState) -> String {
    let hub = state.hub.stats();
    let recorders = state.recorders.snapshot();
    let mut registry = Registry::with_prefix("tether");

    let gauge = |registry: &mut Registry, name: &str, help: &str, value: u64| {
        let metric = Gauge::<i64>::default();
        metric.set(i64::try_from(value).unwrap_or(i64::MAX));
        registry.register(name, help, metric);
    };
    // Registered without the `_total` suffix, which the encoder adds to counters.
    let counter = |registry: &mut Registry, name: &str, help: &str, value: u64| {
        let metric = Counter::<u64>::default();
        metric.inc_by(value);
        registry.register(name, help, metric);
    };
    let counters = |registry: &mut Registry,
                    name: &str,
                    help: &str,
                    label: &'static str,
                    values: &[(&'static str, u64)]| {
        let family = Family::<Labels, Counter<u64>>::default();
        for (value, n) in values {
            family.get_or_create(&vec![(label, *value)]).inc_by(*n);
        }
        registry.register(name, help, family);
    };

    let devices = Family::<Labels, Gauge<i64>>::default();
    let online = hub.devices_online;
    devices
        .get_or_create(&vec![("state", "online")])
        .set(online as i64);
    devices
        .get_or_create(&vec![("state", "offline")])
        .set(hub.devices.saturating_sub(online) as i64);
    registry.register(
        "devices",
        "Devices known to this replica, by presence.",
        devices,
    );
    gauge(
        &mut registry,
        "commands_pending",
        "Commands sent by this replica that have not ended.",
        hub.pending_commands,
    );
    gauge(
        &mut registry,
        "watched_devices",
        "Devices this replica's viewers are watching (reporting faster).",
        hub.watched_devices,
    );
    counter(
        &mut registry,
        "command_log_batches",
        "Batches of command changes written to the command log.",
        hub.command_log_batches,
    );
    counter(
        &mut registry,
        "command_log_failures",
        "Writes to the command log that failed (and are retried).",
        hub.command_log_failures,
    );
    counter(
        &mut registry,
        "audit_failures",
        "Audit entries that could not be written.",
        state
            .audit_failures
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    gauge(
        &mut registry,
        "live_sessions",
        "Live sessions (browser tabs) being served, over WebSockets, event streams and long polls.",
        state.live_sessions.serving() as u64,
    );
    counter(
        &mut registry,
        "http_write_timeouts",
        "Connections closed because a write to them waited on a peer that took nothing for TETHER_WRITE_TIMEOUT_MS (a live socket or event stream that stopped reading, a stalled download).",
        state
            .write_timeouts
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    gauge(
        &mut registry,
        "broker_connected",
        "Whether the broker link is up.",
        u64::from(hub.connected),
    );
    counters(
        &mut registry,
        "messages_dropped",
        "Messages from the broker that were dropped, by reason.",
        "reason",
        &[
            ("malformed", hub.malformed),
            ("hello_refused", hub.refused_hellos),
            ("foreign", hub.foreign),
            ("stale_session", hub.stale),
            ("impostor", hub.impostors),
            ("late", hub.late),
        ],
    );
    counter(
        &mut registry,
        "commands_returned",
        "Commands that came back unroutable (device gone).",
        hub.returned,
    );
    counters(
        &mut registry,
        "readings",
        "Device readings, by what became of them.",
        "outcome",
        &[
            ("accepted", hub.readings_accepted),
            ("unknown_metric", hub.readings_unknown_metric),
            ("out_of_range", hub.readings_out_of_range),
            ("flood", hub.readings_flood),
            ("wrong_type", hub.readings_wrong_type),
            ("bad_timestamp", hub.readings_bad_timestamp),
        ],
    );
    counter(
        &mut registry,
        "samples_stored",
        "Readings written to the store by this replica's recorders.",
        recorders.stored,
    );
    counter(
        &mut registry,
        "samples_duplicate",
        "Readings redelivered after being stored (kept once).",
        recorders.duplicates,
    );
    counter(
        &mut registry,
        "store_errors",
        "Failed batch writes (each retried; nothing is acknowledged before it is stored).",
        recorders.store_errors,
    );
    counters(
        &mut registry,
        "samples_rejected",
        "Readings the recorders refused to store, by reason.",
        "reason",
        &recorders.rejected,
    );

    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}
