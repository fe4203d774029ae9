//! One metric over time, as an SVG line chart: the mean of each bucket as a line, its
//! minimum to maximum as a band behind it, gaps where the device said nothing, the
//! announced unit on the value axis, local times on the time axis, the latest value in
//! the heading, and a readout of the nearest point under the pointer.
//!
//! The maths (ticks, labels, gaps) are plain functions in [`math`]; everything is
//! computed from the data alone, so the chart renders the same on the server (it is
//! there before WASM loads) and in the browser.

pub mod math;

use leptos::prelude::*;
use protocol::{MetricSpec, api::Point};

use math::{
    decimals_for, format_value, moment_label, segments, time_label, time_step, time_ticks,
    value_axis,
};

// About the size a chart is drawn at, so that text in it reads at its font size.
const WIDTH: f64 = 480.0;
const HEIGHT: f64 = 210.0;
const LEFT: f64 = 48.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 24.0;
const BOTTOM: f64 = 26.0;
const PLOT_W: f64 = WIDTH - LEFT - RIGHT;
const PLOT_H: f64 = HEIGHT - TOP - BOTTOM;

/// What one chart shows.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartData {
    /// The metric as announced: name, unit, and the range the value axis never extends
    /// past.
    pub spec: MetricSpec,
    /// Oldest first.
    pub points: Vec<Point>,
    /// The time window, ms since the Unix epoch.
    pub from_ms: u64,
    pub to_ms: u64,
    /// A silence longer than this breaks the line.
    pub gap_ms: u64,
    /// Minutes to add to UTC for local time (0 on the server).
    pub offset_min: i64,
}

#[component]
pub fn Chart(data: Signal<ChartData>) -> impl IntoView {
    // Where the pointer is, as a fraction of the plot's width.
    let hover: RwSignal<Option<f64>> = RwSignal::new(None);
    let on_move = move |event: leptos::ev::PointerEvent| {
        #[cfg(feature = "hydrate")]
        {
            use wasm_bindgen::JsCast as _;
            let Some(svg) = event
                .current_target()
                .and_then(|t| t.dyn_into::<web_sys::Element>().ok())
            else {
                return;
            };
            let rect = svg.get_bounding_client_rect();
            if rect.width() > 0.0 {
                let x = (f64::from(event.client_x()) - rect.left()) / rect.width() * WIDTH;
                hover.set(Some(((x - LEFT) / PLOT_W).clamp(0.0, 1.0)));
            }
        }
        #[cfg(not(feature = "hydrate"))]
        let _ = event;
    };

    move || {
        let data = data.get();
        let span = data.to_ms.saturating_sub(data.from_ms).max(1);
        let visible: Vec<Point> = data
            .points
            .iter()
            .filter(|p| p.t_ms >= data.from_ms && p.t_ms <= data.to_ms)
            .copied()
            .collect();
        let (lo, hi, ticks, step) = value_axis(&visible, data.spec.min, data.spec.max);
        let decimals = decimals_for(step);
        let x = move |t: u64| LEFT + (t.saturating_sub(data.from_ms)) as f64 / span as f64 * PLOT_W;
        let y = move |v: f64| TOP + (hi - v) / (hi - lo) * PLOT_H;
        let unit = data.spec.unit.clone();
        let with_unit = move |v: f64, d: usize| {
            if unit.is_empty() {
                format_value(v, d)
            } else {
                format!("{} {}", format_value(v, d), unit)
            }
        };

        let mut line = String::new();
        let mut band = Vec::new();
        let mut dots = Vec::new();
        for segment in segments(&visible, data.gap_ms) {
            if segment.len() == 1 {
                dots.push((x(segment[0].t_ms), y(segment[0].avg)));
            }
            for (i, p) in segment.iter().enumerate() {
                line.push_str(&format!(
                    "{}{:.1},{:.1}",
                    if i == 0 { "M" } else { "L" },
                    x(p.t_ms),
                    y(p.avg)
                ));
            }
            if segment.iter().any(|p| p.max > p.min) {
                let upper = segment
                    .iter()
                    .map(|p| format!("{:.1},{:.1}", x(p.t_ms), y(p.max)));
                let lower = segment
                    .iter()
                    .rev()
                    .map(|p| format!("{:.1},{:.1}", x(p.t_ms), y(p.min)));
                band.push(upper.chain(lower).collect::<Vec<_>>().join(" "));
            }
        }
        let latest = visible.last().copied();
        let t_step = time_step(span);
        let time_ticks = time_ticks(data.from_ms, data.to_ms, t_step, data.offset_min);
        let summary = match latest {
            Some(p) => format!(
                "{}: latest {}, from {} to {} in this range",
                data.spec.name,
                with_unit(p.avg, decimals + 1),
                with_unit(
                    visible.iter().map(|p| p.min).fold(f64::INFINITY, f64::min),
                    decimals + 1
                ),
                with_unit(
                    visible
                        .iter()
                        .map(|p| p.max)
                        .fold(f64::NEG_INFINITY, f64::max),
                    decimals + 1
                ),
            ),
            None => format!("{}: no readings in this range", data.spec.name),
        };
        let readout = hover.get().and_then(|fraction| {
            let t = data.from_ms as f64 + fraction * span as f64;
            let nearest = visible
                .iter()
                .min_by_key(|p| (p.t_ms as f64 - t).abs() as u64)?;
            let (px, py) = (x(nearest.t_ms), y(nearest.avg));
            let mut text = format!(
                "{} · {}",
                with_unit(nearest.avg, decimals + 1),
                moment_label(nearest.t_ms, data.offset_min)
            );
            if nearest.count > 1 {
                text.push_str(&format!(
                    " · {}–{} over {} readings",
                    format_value(nearest.min, decimals + 1),
                    format_value(nearest.max, decimals + 1),
                    nearest.count
                ));
            }
            // Keep the label inside the frame.
            let anchor = if px > LEFT + PLOT_W * 0.6 {
                "end"
            } else {
                "start"
            };
            let tx = if anchor == "end" { px - 8.0 } else { px + 8.0 };
            Some(view! {
                <g class="readout" data-testid="chart-readout">
                    <line x1=px x2=px y1=TOP y2=TOP + PLOT_H />
                    <circle cx=px cy=py r="4" />
                    <text x=tx y=TOP - 8.0 text-anchor=anchor>{text}</text>
                </g>
            })
        });
        let empty = visible.is_empty().then(|| {
            view! {
                <text class="empty" x=LEFT + PLOT_W / 2.0 y=TOP + PLOT_H / 2.0 text-anchor="middle">
                    "No readings in this range yet"
                </text>
            }
        });
        let readings: u64 = visible.iter().map(|p| u64::from(p.count)).sum();
        let headline = latest.map_or_else(|| "—".to_owned(), |p| with_unit(p.avg, decimals + 1));
        view! {
            <figure
                class="chart"
                data-testid="chart"
                data-metric=data.spec.name.clone()
                data-points=visible.len()
                data-readings=readings
            >
                <figcaption>
                    <span class="metric">{data.spec.name.clone()}</span>
                    <span class="latest" data-testid="chart-latest">{headline}</span>
                </figcaption>
                <svg
                    viewBox=format!("0 0 {WIDTH} {HEIGHT}")
                    role="img"
                    aria-label=summary
                    on:pointermove=on_move
                    on:pointerleave=move |_| hover.set(None)
                >
                    <g class="grid">
                        {ticks.iter().map(|v| view! {
                            <line x1=LEFT x2=LEFT + PLOT_W y1=y(*v) y2=y(*v) />
                        }).collect_view()}
                    </g>
                    <g class="axis y">
                        {ticks.iter().map(|v| view! {
                            <text x=LEFT - 6.0 y=y(*v) + 4.0 text-anchor="end">{format_value(*v, decimals)}</text>
                        }).collect_view()}
                        <text class="unit" x=LEFT - 6.0 y=TOP - 10.0 text-anchor="end">{data.spec.unit.clone()}</text>
                    </g>
                    <g class="axis x">
                        <line x1=LEFT x2=LEFT + PLOT_W y1=TOP + PLOT_H y2=TOP + PLOT_H />
                        {time_ticks.iter().map(|t| view! {
                            <line x1=x(*t) x2=x(*t) y1=TOP + PLOT_H y2=TOP + PLOT_H + 4.0 />
                            <text x=x(*t) y=HEIGHT - 8.0 text-anchor="middle">{time_label(*t, t_step, data.offset_min)}</text>
                        }).collect_view()}
                    </g>
                    {band.into_iter().map(|points| view! { <polygon class="band" points=points /> }).collect_view()}
                    <path class="line" d=line />
                    {dots.into_iter().map(|(cx, cy)| view! { <circle class="dot" cx=cx cy=cy r="2.5" /> }).collect_view()}
                    {latest.map(|p| view! { <circle class="last" cx=x(p.t_ms) cy=y(p.avg) r="3.5" /> })}
                    {empty}
                    {readout}
                </svg>
            </figure>
        }
    }
}
