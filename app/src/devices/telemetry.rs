//! A device's readings on its page: a chart per announced metric over a chosen range
//! (15 min, 1 h, 24 h, 7 d), loaded from storage downsampled by the server, then
//! extended live. While the page is open the device reports faster (the tab watches it
//! over the live channel).

use std::collections::BTreeMap;

use leptos::prelude::*;
use protocol::{
    Capabilities, DeviceId, MetricSpec,
    api::{History, HistoryQuery, Point, Series},
};

use super::chart::{Chart, ChartData, math::merge_reading};
use crate::fleet::{
    AppError,
    live::{now_ms, use_live},
    telemetry_history,
};

/// Points per chart: enough for a smooth line, few enough that a week stays light.
const POINTS: u32 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    Quarter,
    Hour,
    Day,
    Week,
}

impl Range {
    pub const ALL: [Self; 4] = [Self::Quarter, Self::Hour, Self::Day, Self::Week];

    pub fn span_ms(self) -> u64 {
        match self {
            Self::Quarter => 15 * 60_000,
            Self::Hour => 3_600_000,
            Self::Day => 86_400_000,
            Self::Week => 7 * 86_400_000,
        }
    }

    /// The range ending now, and its bucket width: `(from_ms, to_ms, bucket_ms)`.
    fn up_to_now(self) -> (u64, u64, u64) {
        let to_ms = now_ms();
        let span = self.span_ms();
        (
            to_ms.saturating_sub(span),
            to_ms,
            (span / u64::from(POINTS)).max(1),
        )
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Quarter => "15 min",
            Self::Hour => "1 h",
            Self::Day => "24 h",
            Self::Week => "7 d",
        }
    }
}

#[component]
pub fn Telemetry(device_id: DeviceId, capabilities: Capabilities) -> impl IntoView {
    let live = use_live();
    let range = RwSignal::new(Range::Hour);
    let history = Resource::new(move || range.get(), {
        let id = device_id.to_string();
        move |range: Range| {
            let id = id.clone();
            async move {
                let query = HistoryQuery {
                    from: Some(now_ms().saturating_sub(range.span_ms())),
                    max_points: Some(POINTS),
                    ..HistoryQuery::default()
                };
                telemetry_history(id, query).await
            }
        }
    });

    // Faster readings while this page is open.
    {
        let id = device_id.clone();
        Effect::new(move |_| live.watch(&id));
        let id = device_id.clone();
        on_cleanup(move || live.unwatch(&id));
    }

    // What the charts start from (see `starting_point`). Computed where it is shown, not
    // in a memo: the resource must be read inside the `Transition` for server rendering
    // to wait for it.
    let shown = {
        let (id, metrics) = (device_id.clone(), capabilities.metrics.clone());
        move |result: Result<History, AppError>| {
            starting_point(result, &id, &metrics, range.get_untracked())
        }
    };

    // Readings that came live after the history was read, merged into its buckets.
    let fresh: RwSignal<BTreeMap<String, Vec<Point>>> = RwSignal::new(BTreeMap::new());
    Effect::new(move |_| {
        history.track();
        fresh.set(BTreeMap::new());
    });
    // Where live readings join what was read: its buckets, and how far each metric
    // was stored. Small, so that a reading (of any device) costs no copy of the history;
    // read only by the effect below, so only in the browser.
    let origin = Memo::new(move |_| {
        history.with(|result| {
            result
                .as_ref()
                .map(|result| Origin::of(result, range.get_untracked()))
        })
    });
    {
        let (id, metrics) = (device_id.clone(), capabilities.metrics.clone());
        Effect::new(move |_| {
            origin.with(|origin| {
                let Some(origin) = origin else {
                    live.readings.track();
                    return;
                };
                live.readings.with(|readings| {
                    for spec in &metrics {
                        let Some(reading) = readings.get(&(id.clone(), spec.name.clone())) else {
                            continue;
                        };
                        if reading.ts_ms
                            <= origin.stored_until.get(&spec.name).copied().unwrap_or(0)
                        {
                            continue;
                        }
                        fresh.update(|fresh| {
                            merge_reading(
                                fresh.entry(spec.name.clone()).or_default(),
                                reading.ts_ms,
                                reading.value,
                                origin.from_ms,
                                origin.bucket_ms,
                            )
                        });
                    }
                });
            })
        });
    }

    // Local time once in the browser; the server renders UTC. Until the page has
    // hydrated the charts draw exactly what the server drew (its clock, UTC), so that
    // hydration finds the same elements; then they follow the tab's clock.
    let offset_min = RwSignal::new(0i64);
    let hydrated = RwSignal::new(false);
    Effect::new(move |_| {
        #[cfg(feature = "hydrate")]
        offset_min.set(-(js_sys::Date::new_0().get_timezone_offset() as i64));
        hydrated.set(true);
    });

    let interval_ms = capabilities
        .reporting
        .map_or(5_000, |r| r.interval_ms)
        .max(1_000);
    let chart = move |history: &History, index: usize| {
        let history = history.clone();
        Signal::derive(move || {
            let series = &history.series[index];
            let mut points = series.points.clone();
            fresh.with(|fresh| {
                if let Some(more) = fresh.get(&series.spec.name) {
                    points.extend_from_slice(more);
                }
            });
            let to_ms = if hydrated.get() {
                live.now_ms.get().max(history.to_ms)
            } else {
                history.to_ms
            };
            let span = range.get_untracked().span_ms();
            ChartData {
                spec: series.spec.clone(),
                points,
                from_ms: to_ms.saturating_sub(span),
                to_ms,
                gap_ms: (history.bucket_ms.max(interval_ms) as f64 * 2.5) as u64,
                offset_min: offset_min.get(),
            }
        })
    };

    view! {
        <section class="card telemetry" aria-labelledby="telemetry-heading">
            <div class="telemetry-head">
                <h2 id="telemetry-heading">"Readings"</h2>
                <div class="range-picker" role="group" aria-label="Time range">
                    {Range::ALL.into_iter().map(|choice| view! {
                        <button
                            type="button"
                            class="secondary"
                            aria-pressed=move || (range.get() == choice).to_string()
                            on:click=move |_| range.set(choice)
                        >
                            {choice.label()}
                        </button>
                    }).collect_view()}
                </div>
            </div>
            <Transition fallback=|| view! { <p class="muted">"Loading readings…"</p> }>
                {move || history.get().map(shown.clone()).map(|(history, why)| view! {
                    {why.map(|why| view! {
                        <p class="notice" role="status" data-testid="history-unavailable" data-code=why.code>
                            {format!("No stored readings ({}); showing readings as they arrive.", why.message)}
                        </p>
                    })}
                    <div class="charts">
                        {(0..history.series.len()).map(|i| view! { <Chart data=chart(&history, i) /> }).collect_view()}
                    </div>
                })}
            </Transition>
        </section>
    }
}

/// Where live readings join a history: its first bucket, bucket width, and the time of
/// the last stored point of each metric (readings up to it are already drawn).
#[derive(Debug, Clone, PartialEq)]
struct Origin {
    from_ms: u64,
    bucket_ms: u64,
    stored_until: BTreeMap<String, u64>,
}

impl Origin {
    fn of(result: &Result<History, AppError>, range: Range) -> Self {
        match result {
            Ok(history) => Self {
                from_ms: history.from_ms,
                bucket_ms: history.bucket_ms,
                stored_until: history
                    .series
                    .iter()
                    .map(|s| (s.spec.name.clone(), s.points.last().map_or(0, |p| p.t_ms)))
                    .collect(),
            },
            // As `starting_point` draws it: the range up to now, nothing stored.
            Err(_) => {
                let (from_ms, _, bucket_ms) = range.up_to_now();
                Self {
                    from_ms,
                    bucket_ms,
                    stored_until: BTreeMap::new(),
                }
            }
        }
    }
}

/// The history to draw from: the stored one or, when it cannot be read (no storage on
/// this server, the database down), empty series over the range that fill in live, and
/// why (the server's error, `storage_off` or `store_unavailable`), to show above them.
fn starting_point(
    result: Result<History, AppError>,
    device_id: &DeviceId,
    metrics: &[MetricSpec],
    range: Range,
) -> (History, Option<AppError>) {
    match result {
        Ok(history) => (history, None),
        Err(error) => {
            let (from_ms, to_ms, bucket_ms) = range.up_to_now();
            let empty = History {
                device_id: device_id.clone(),
                from_ms,
                to_ms,
                bucket_ms,
                series: metrics
                    .iter()
                    .map(|spec| Series {
                        spec: spec.clone(),
                        points: Vec::new(),
                    })
                    .collect(),
            };
            (empty, Some(error))
        }
    }
}
