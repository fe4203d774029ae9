//! Jobs: one command sent to many devices, a few at a time, followed to the end.
//!
//! - [`list`]: every job, newest first, each with its progress, updating live; and for
//!   operators the form that starts one ([`new`]).
//! - [`detail`]: one job: its settings, state and counts, the buttons that pause,
//!   resume or cancel it, and its devices, paged and filtered, updating live.
//!
//! The live channel carries every change ([`crate::fleet::live::Live::jobs`], and the
//! devices of the jobs a page follows); what the server answered is merged with it, the
//! later state winning, so an answer overtaken by events never shows old news.

pub mod detail;
pub mod list;
pub mod new;

use leptos::prelude::*;
use protocol::job::{JobCounts, JobState, JobView, OfflinePolicy, TargetStatus};

use crate::devices::command_form::input_text;

/// A job's state as a coloured label.
#[component]
pub fn JobStateBadge(state: JobState) -> impl IntoView {
    let tone = match state {
        JobState::Running => "busy",
        JobState::Paused | JobState::Cancelled => "muted",
        JobState::Completed => "ok",
        JobState::Halted => "bad",
    };
    view! {
        <span class=format!("badge status {tone}") data-testid="job-state" data-state=state.as_str()>
            {state.as_str()}
        </span>
    }
}

/// A device's status in a job as a coloured label.
#[component]
pub fn TargetStatusBadge(status: TargetStatus) -> impl IntoView {
    let tone = match status {
        TargetStatus::Succeeded => "ok",
        TargetStatus::Failed => "bad",
        TargetStatus::Skipped | TargetStatus::Cancelled | TargetStatus::Pending => "muted",
        TargetStatus::Waiting | TargetStatus::Starting | TargetStatus::Running => "busy",
    };
    view! { <span class=format!("badge status {tone}") data-testid="target-status">{status.as_str()}</span> }
}

/// How far a job is: a bar of its finished devices (succeeded, failed, skipped,
/// cancelled, each its own colour) out of all, and the numbers.
#[component]
pub fn JobProgress(counts: JobCounts) -> impl IntoView {
    let total = counts.total;
    let finished = counts.finished();
    let width = |n: u32| {
        let share = if total == 0 {
            0.0
        } else {
            f64::from(n) * 100.0 / f64::from(total)
        };
        format!("width: {share:.2}%")
    };
    let summary = progress_text(&counts);
    view! {
        <div class="job-progress" data-testid="job-progress" data-finished=finished.to_string() data-total=total.to_string()>
            <div
                class="bar"
                role="progressbar"
                aria-label="Devices done"
                aria-valuemin="0"
                aria-valuemax=total.to_string()
                aria-valuenow=finished.to_string()
            >
                <span class="seg succeeded" style=width(counts.succeeded)></span>
                <span class="seg failed" style=width(counts.failed)></span>
                <span class="seg skipped" style=width(counts.skipped)></span>
                <span class="seg cancelled" style=width(counts.cancelled)></span>
            </div>
            <small class="muted">{summary}</small>
        </div>
    }
}

/// "2 of 3 done: 1 succeeded, 1 failed".
pub fn progress_text(counts: &JobCounts) -> String {
    let parts: Vec<String> = [
        (counts.succeeded, "succeeded"),
        (counts.failed, "failed"),
        (counts.skipped, "skipped"),
        (counts.cancelled, "cancelled"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    let done = format!("{} of {} done", counts.finished(), counts.total);
    if parts.is_empty() {
        done
    } else {
        format!("{done}: {}", parts.join(", "))
    }
}

/// A job's arguments as `name=value, …` (empty without any).
pub fn args_text(job: &JobView) -> String {
    job.args
        .iter()
        .map(|(k, v)| format!("{k}={}", input_text(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What happens to offline devices, for people.
pub fn offline_text(job: &JobView) -> String {
    match job.offline {
        OfflinePolicy::Skip => "skipped".to_owned(),
        OfflinePolicy::Wait => format!("waited for up to {}", duration_text(job.wait_ms)),
    }
}

/// "90 s", "15 min", "2 h", "1.5 h".
pub fn duration_text(ms: u64) -> String {
    let seconds = ms as f64 / 1000.0;
    let trim = |x: f64| {
        let text = format!("{x:.1}");
        text.strip_suffix(".0").map(str::to_owned).unwrap_or(text)
    };
    if seconds < 120.0 {
        format!("{} s", trim(seconds))
    } else if seconds < 7_200.0 {
        format!("{} min", trim(seconds / 60.0))
    } else {
        format!("{} h", trim(seconds / 3_600.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reads_naturally() {
        let mut counts = JobCounts {
            total: 3,
            pending: 3,
            ..JobCounts::default()
        };
        assert_eq!(progress_text(&counts), "0 of 3 done");
        counts.moved(TargetStatus::Pending, TargetStatus::Succeeded);
        counts.moved(TargetStatus::Pending, TargetStatus::Failed);
        assert_eq!(progress_text(&counts), "2 of 3 done: 1 succeeded, 1 failed");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration_text(10_000), "10 s");
        assert_eq!(duration_text(500), "0.5 s");
        assert_eq!(duration_text(900_000), "15 min");
        assert_eq!(duration_text(3_600_000), "60 min");
        assert_eq!(duration_text(5_400_000 * 2), "3 h");
        assert_eq!(duration_text(9_000_000), "2.5 h");
    }
}
