//! The plain maths behind a chart, apart from its component so that they are tested
//! on their own: round value ticks and the value axis, how values and times read,
//! time-axis steps and ticks in local time, lines broken at silences, and live readings
//! merged into their bucket.

use protocol::api::Point;

const SECOND: u64 = 1_000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// Evenly spaced round values covering `[lo, hi]`, about `count` of them.
pub fn nice_ticks(lo: f64, hi: f64, count: usize) -> (Vec<f64>, f64) {
    let span = (hi - lo).abs().max(f64::EPSILON);
    let raw = span / count.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let first = (lo / step).floor() * step;
    let last = (hi / step).ceil() * step;
    let n = ((last - first) / step).round() as usize;
    ((0..=n).map(|i| first + i as f64 * step).collect(), step)
}

/// Decimals that show a step of `step` without noise: the fewest that make it whole.
pub fn decimals_for(step: f64) -> usize {
    (0..=4usize)
        .find(|d| {
            let scaled = step * 10f64.powi(*d as i32);
            (scaled - scaled.round()).abs() < 1e-6 * scaled.abs().max(1.0)
        })
        .unwrap_or(4)
}

/// A value with `decimals` decimals, never "-0".
pub fn format_value(value: f64, decimals: usize) -> String {
    let text = format!("{value:.decimals$}");
    if text
        .trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.')
    {
        text.trim_start_matches('-').to_owned()
    } else {
        text
    }
}

/// The time-axis step for a span: the smallest round step giving at most six ticks.
pub fn time_step(span_ms: u64) -> u64 {
    [
        10 * SECOND,
        15 * SECOND,
        30 * SECOND,
        MINUTE,
        2 * MINUTE,
        5 * MINUTE,
        10 * MINUTE,
        15 * MINUTE,
        30 * MINUTE,
        HOUR,
        2 * HOUR,
        3 * HOUR,
        6 * HOUR,
        12 * HOUR,
        DAY,
        2 * DAY,
    ]
    .into_iter()
    .find(|step| span_ms / step <= 6)
    .unwrap_or(7 * DAY)
}

/// Tick times in `[from, to]` at multiples of `step` in local time.
pub fn time_ticks(from_ms: u64, to_ms: u64, step: u64, offset_min: i64) -> Vec<u64> {
    let offset = offset_min * 60_000;
    let local_from = from_ms as i64 + offset;
    let first = local_from.div_euclid(step as i64) * step as i64 + step as i64 - offset;
    let first = if first - step as i64 >= from_ms as i64 {
        first - step as i64
    } else {
        first
    };
    (0..)
        .map(|i| first + i * step as i64)
        .take_while(|t| *t <= to_ms as i64)
        .map(|t| t as u64)
        .collect()
}

/// A time label for the axis: `14:05`, `14:05:30` for steps under a minute, and
/// `Tue 24` for steps of a day or more.
pub fn time_label(t_ms: u64, step: u64, offset_min: i64) -> String {
    let local = t_ms as i64 + offset_min * 60_000;
    let days = local.div_euclid(DAY as i64);
    let of_day = local.rem_euclid(DAY as i64);
    let (h, m, s) = (
        of_day / HOUR as i64,
        (of_day / MINUTE as i64) % 60,
        (of_day / 1000) % 60,
    );
    if step >= DAY {
        const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
        let (_, _, day) = civil_from_days(days);
        format!("{} {day}", WEEKDAYS[days.rem_euclid(7) as usize])
    } else if step < MINUTE {
        format!("{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}")
    }
}

/// A full time for the readout: `Tue 24 14:05:30`.
pub fn moment_label(t_ms: u64, offset_min: i64) -> String {
    format!(
        "{} {}",
        time_label(t_ms, DAY, offset_min),
        time_label(t_ms, SECOND, offset_min)
    )
}

/// Year, month and day of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// The points split where the device was silent for longer than `gap_ms`.
pub fn segments(points: &[Point], gap_ms: u64) -> Vec<&[Point]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..points.len() {
        if points[i].t_ms.saturating_sub(points[i - 1].t_ms) > gap_ms {
            out.push(&points[start..i]);
            start = i;
        }
    }
    if start < points.len() {
        out.push(&points[start..]);
    }
    out
}

/// Adds a live reading to a series bucketed from `origin_ms` in `bucket_ms` steps:
/// into the last point if it falls in the same bucket, as a new point if later, not at
/// all if it is not newer than what is there (the history already had it).
pub fn merge_reading(
    points: &mut Vec<Point>,
    t_ms: u64,
    value: f64,
    origin_ms: u64,
    bucket_ms: u64,
) {
    let bucket = |t: u64| t.saturating_sub(origin_ms) / bucket_ms.max(1);
    match points.last_mut() {
        Some(last) if t_ms <= last.t_ms => {}
        Some(last) if bucket(last.t_ms) == bucket(t_ms) && bucket_ms > 1 => {
            let n = f64::from(last.count);
            last.avg = (last.avg * n + value) / (n + 1.0);
            last.t_ms = ((last.t_ms as f64 * n + t_ms as f64) / (n + 1.0)).round() as u64;
            last.min = last.min.min(value);
            last.max = last.max.max(value);
            last.count += 1;
        }
        _ => points.push(Point {
            t_ms,
            avg: value,
            min: value,
            max: value,
            count: 1,
        }),
    }
}

/// The value axis: round ticks around the data, padded so the line never touches the
/// frame (but not past the announced range: no "-20 %" under a CPU load); a flat line
/// sits in the middle.
pub fn value_axis(
    points: &[Point],
    min: Option<f64>,
    max: Option<f64>,
) -> (f64, f64, Vec<f64>, f64) {
    let lo = points.iter().map(|p| p.min).fold(f64::INFINITY, f64::min);
    let hi = points
        .iter()
        .map(|p| p.max)
        .fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if !lo.is_finite() || !hi.is_finite() {
        (0.0, 1.0)
    } else if (hi - lo).abs() < 1e-9 {
        let pad = (hi.abs() * 0.05).max(1.0);
        (lo - pad, hi + pad)
    } else {
        let pad = (hi - lo) * 0.08;
        (lo - pad, hi + pad)
    };
    let lo = min
        .filter(|m| *m <= lo + (hi - lo) * 0.5)
        .map_or(lo, |m| lo.max(m));
    let hi = max
        .filter(|m| *m >= hi - (hi - lo) * 0.5)
        .map_or(hi, |m| hi.min(m));
    let (ticks, step) = nice_ticks(lo, hi, 4);
    let ticks: Vec<f64> = ticks
        .into_iter()
        .filter(|t| min.is_none_or(|m| *t >= m - step * 1e-9))
        .filter(|t| max.is_none_or(|m| *t <= m + step * 1e-9))
        .collect();
    let ticks = if ticks.len() < 2 {
        nice_ticks(lo, hi, 4).0
    } else {
        ticks
    };
    let (first, last) = (ticks[0], *ticks.last().unwrap_or(&ticks[0]));
    (first, last, ticks, step)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t_ms: u64, v: f64) -> Point {
        Point {
            t_ms,
            avg: v,
            min: v,
            max: v,
            count: 1,
        }
    }

    #[test]
    fn value_ticks_are_round_and_cover_the_data() {
        let (ticks, step) = nice_ticks(18.3, 23.9, 4);
        assert_eq!(step, 2.0);
        assert_eq!(ticks, [18.0, 20.0, 22.0, 24.0]);
        let (ticks, step) = nice_ticks(-75.2, -64.1, 4);
        assert_eq!(step, 5.0);
        assert_eq!(ticks.first(), Some(&-80.0));
        assert_eq!(ticks.last(), Some(&-60.0));
        let (_, step) = nice_ticks(0.0, 0.9, 4);
        assert_eq!(step, 0.25);
        assert_eq!(decimals_for(0.25), 2);
        assert_eq!(decimals_for(2.0), 0);
        assert_eq!(decimals_for(0.5), 1);
        assert_eq!(decimals_for(25.0), 0);
    }

    #[test]
    fn the_value_axis_stays_within_the_announced_range() {
        let low_cpu = [point(0, 1.0), point(1, 12.0)];
        let (lo, hi, ticks, _) = value_axis(&low_cpu, Some(0.0), Some(100.0));
        assert_eq!(lo, 0.0, "no negative load");
        assert!((12.0..=20.0).contains(&hi), "{hi}");
        assert!(ticks.iter().all(|t| *t >= 0.0));
        let (lo, hi, _, _) = value_axis(&low_cpu, None, None);
        assert!(lo < 1.0 && hi > 12.0);
        let flat = [point(0, 21.0), point(1, 21.0)];
        let (lo, hi, _, _) = value_axis(&flat, Some(-10.0), Some(50.0));
        assert!(lo < 21.0 && hi > 21.0);
    }

    #[test]
    fn values_never_read_minus_zero() {
        assert_eq!(format_value(-0.001, 1), "0.0");
        assert_eq!(format_value(-1.25, 1), "-1.2");
        assert_eq!(format_value(21.456, 2), "21.46");
    }

    #[test]
    fn time_axes_have_a_handful_of_round_ticks_in_local_time() {
        // 2026-11-24 14:07:00 UTC.
        let t = 1_795_529_220_000;
        assert_eq!(time_step(15 * MINUTE), 5 * MINUTE);
        assert_eq!(time_step(HOUR), 10 * MINUTE);
        assert_eq!(time_step(DAY), 6 * HOUR);
        assert_eq!(time_step(7 * DAY), 2 * DAY);
        let ticks = time_ticks(t, t + 15 * MINUTE, 5 * MINUTE, 0);
        let labels: Vec<_> = ticks
            .iter()
            .map(|t| time_label(*t, 5 * MINUTE, 0))
            .collect();
        assert_eq!(labels, ["14:10", "14:15", "14:20"]);
        // An hour ahead of UTC (Paris in winter).
        let labels: Vec<_> = time_ticks(t, t + 15 * MINUTE, 5 * MINUTE, 60)
            .iter()
            .map(|t| time_label(*t, 5 * MINUTE, 60))
            .collect();
        assert_eq!(labels, ["15:10", "15:15", "15:20"]);
        assert_eq!(time_label(t, DAY, 0), "Tue 24");
        assert_eq!(time_label(t, 30 * SECOND, 0), "14:07:00");
        assert_eq!(moment_label(t + 5_000, 0), "Tue 24 14:07:05");
    }

    #[test]
    fn silences_break_the_line() {
        let points = [
            point(0, 1.0),
            point(1_000, 1.0),
            point(60_000, 1.0),
            point(61_000, 1.0),
        ];
        let parts = segments(&points, 5_000);
        assert_eq!(parts.iter().map(|s| s.len()).collect::<Vec<_>>(), [2, 2]);
        assert!(segments(&[], 5_000).is_empty());
    }

    #[test]
    fn live_readings_join_their_bucket_or_start_the_next() {
        let mut points = vec![point(10_000, 2.0)];
        merge_reading(&mut points, 10_000, 9.0, 0, 12_000);
        assert_eq!(points.len(), 1, "already there");
        merge_reading(&mut points, 11_000, 4.0, 0, 12_000);
        assert_eq!(points.len(), 1);
        assert_eq!(
            (points[0].avg, points[0].min, points[0].max, points[0].count),
            (3.0, 2.0, 4.0, 2)
        );
        merge_reading(&mut points, 12_500, 5.0, 0, 12_000);
        assert_eq!(points.len(), 2, "the next bucket");
        // With one-millisecond buckets every reading is its own point.
        let mut raw = vec![point(10, 1.0)];
        merge_reading(&mut raw, 11, 2.0, 0, 1);
        assert_eq!(raw.len(), 2);
    }
}
