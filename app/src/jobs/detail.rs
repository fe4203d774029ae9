//! One job: what it sends to which devices and how, its state and counts, the buttons
//! that pause, resume or cancel it, and its devices, a page at a time, filtered by
//! status and id. The header follows the job's live events; each row on the page
//! follows its device's. While a device's command runs, its row shows the command's
//! latest progress (a software update's stage: downloading with its percent, verifying,
//! installing, restarting) from the live channel; once it ended, the device's own
//! message in the job.

use std::sync::{Arc, Mutex};

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_params_map;
use protocol::{
    auth::Role,
    job::{JobAction, JobCounts, JobId, JobState, JobTarget, JobView, TargetQuery, TargetStatus},
};

use super::{
    JobProgress, JobStateBadge, TargetStatusBadge, args_text, duration_text, offline_text,
};
use crate::{
    auth::{audit::when, use_me},
    fleet::{AppError, control_job, get_job, job_targets, live::use_live},
    updates::{short_sha, size_text},
};

/// Devices per page.
const PAGE: u32 = 50;

/// What the page shows, apart from what changes as the job runs.
#[derive(Debug, Clone, PartialEq)]
enum Loaded {
    Failed(AppError),
    Unknown(String),
    Found(JobId),
}

#[component]
pub fn JobPage() -> impl IntoView {
    let params = use_params_map();
    let id = Memo::new(move |_| params.read().get("id").unwrap_or_default());
    let live = use_live();

    // The devices of this job are kept by the live view while the page shows it.
    let followed = Arc::new(Mutex::new(JobId(id.get_untracked())));
    if let Ok(job) = followed.lock() {
        live.follow_job(&job);
    }
    {
        let followed = Arc::clone(&followed);
        Effect::new(move |_| {
            let now = JobId(id.get());
            if let Ok(mut job) = followed.lock()
                && *job != now
            {
                live.unfollow_job(&job);
                live.follow_job(&now);
                *job = now;
            }
        });
    }
    on_cleanup(move || {
        if let Ok(job) = followed.lock() {
            live.unfollow_job(&job);
        }
    });

    let query = RwSignal::new(TargetQuery {
        limit: Some(PAGE),
        ..TargetQuery::default()
    });
    // Another job: from its first page, unfiltered.
    Effect::new(move |previous: Option<String>| {
        let now = id.get();
        if previous.is_some_and(|p| p != now) {
            query.set(TargetQuery {
                limit: Some(PAGE),
                ..TargetQuery::default()
            });
        }
        now
    });
    // Read again after every snapshot: events may have been missed while disconnected.
    let job_read = Resource::new(
        move || (id.get(), live.snapshots.get()),
        |(id, _)| get_job(id),
    );
    let targets_read = Resource::new(
        move || (id.get(), query.get(), live.snapshots.get()),
        |(id, query, _)| job_targets(id, query),
    );
    let job = Memo::new(move |_| {
        job_read
            .get()
            .map(|answer| answer.map(|read| live.latest_job(read)))
    });
    let loaded = Memo::new(move |_| {
        job.with(|answer| {
            answer.as_ref().map(|answer| match answer {
                Err(e) if e.code == "unknown_job" => Loaded::Unknown(id.get()),
                Err(e) => Loaded::Failed(e.clone()),
                Ok(job) => Loaded::Found(job.id.clone()),
            })
        })
    });
    let current = Signal::derive(move || job.get().and_then(Result::ok));

    view! {
        <Title text="Job · Tether" />
        <Transition fallback=|| view! { <section class="card"><p class="muted">"Loading job…"</p></section> }>
            {move || {
                // Read here, inside the Transition, so that it waits for the resource (the
                // devices' own Transition waits for theirs).
                let _ = job_read.get();
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
                            <h1>"Unknown job"</h1>
                            <p>"There is no job \"" {id} "\". " <a href="/jobs">"Back to the jobs"</a></p>
                        </section>
                    }.into_any()
                }
                Loaded::Found(_) => view! {
                    <JobHeader job=current />
                    <JobTargets query read=targets_read />
                }.into_any(),
            })}
        </Transition>
    }
}

/// The job's settings (fixed), its state, counts and progress (live), and the buttons.
#[component]
fn JobHeader(job: Signal<Option<JobView>>) -> impl IntoView {
    let live = use_live();
    let me = use_me();
    let Some(first) = job.get_untracked() else {
        return ().into_any();
    };
    let state = Memo::new(move |_| job.get().map_or(JobState::Running, |j| j.state));
    let counts = Memo::new(move |_| job.get().map(|j| j.counts).unwrap_or_default());
    let stop_reason = Memo::new(move |_| job.get().and_then(|j| j.stop_reason));
    let ended = Memo::new(move |_| job.get().and_then(|j| j.ended_ms));
    let asking = RwSignal::new(false);
    let busy = RwSignal::new(false);
    let failed = RwSignal::new(None::<AppError>);
    let hydrated = RwSignal::new(false);
    Effect::new(move |_| hydrated.set(true));

    let act = {
        let id = first.id.0.clone();
        move |action: JobAction| {
            let id = id.clone();
            busy.set(true);
            failed.set(None);
            leptos::task::spawn_local(async move {
                match control_job(id, action).await {
                    Ok(job) => live.upsert_job(job),
                    Err(e) => failed.set(Some(e)),
                }
                busy.set(false);
                asking.set(false);
            });
        }
    };
    let controls = move || {
        let state = state.get();
        if !me.has(Role::Operator) || state.is_finished() {
            return None;
        }
        let (pause, resume, confirm) = (act.clone(), act.clone(), act.clone());
        Some(view! {
            <div class="row-buttons job-controls" data-testid="job-controls">
                {(state == JobState::Running).then(|| view! {
                    <button type="button" class="secondary" data-testid="job-pause" disabled=move || busy.get()
                        on:click=move |_| pause(JobAction::Pause)>"Pause"</button>
                })}
                {(state == JobState::Paused).then(|| view! {
                    <button type="button" data-testid="job-resume" disabled=move || busy.get()
                        on:click=move |_| resume(JobAction::Resume)>"Resume"</button>
                })}
                {move || if asking.get() {
                    let confirm = confirm.clone();
                    view! {
                        <span class="confirm" role="alert">
                            <span>"Cancel this job? Running commands are cancelled and no more devices are started. This cannot be undone."</span>
                            <button type="button" class="danger" data-testid="job-cancel-confirm" disabled=move || busy.get()
                                on:click=move |_| confirm(JobAction::Cancel)>"Yes, cancel the job"</button>
                            <button type="button" class="link" data-testid="job-cancel-keep" on:click=move |_| asking.set(false)>"Keep it running"</button>
                        </span>
                    }.into_any()
                } else {
                    view! {
                        <button type="button" class="danger" data-testid="job-cancel" disabled=move || busy.get()
                            on:click=move |_| asking.set(true)>"Cancel job"</button>
                    }.into_any()
                }}
            </div>
        })
    };
    let count = |label: &'static str, testid: &'static str, of: fn(&JobCounts) -> u32| {
        view! {
            <div class=format!("count {testid}")>
                <dt>{label}</dt>
                <dd data-testid=testid>{move || of(&counts.get())}</dd>
            </div>
        }
    };
    // An update's arguments are each device's own (its download link): the artifact
    // says what it installs.
    let args = if first.artifact.is_some() {
        String::new()
    } else {
        args_text(&first)
    };
    let artifact = first.artifact.clone().map(|a| {
        view! {
            <dt>"Installs"</dt>
            <dd data-testid="job-artifact" data-artifact=a.id.0.clone()>
                <strong data-testid="job-artifact-name">{a.name.clone()}</strong>
                " " <span data-testid="job-artifact-version">{a.version.clone()}</span>
                " (" <span data-testid="job-artifact-arch">{a.arch.clone()}</span> ")"
                " · " <code data-testid="job-artifact-sha256" title=a.sha256.clone()>{short_sha(&a.sha256)}</code>
                " · " <span class="muted">{size_text(a.size)}</span>
            </dd>
        }
    });
    let threshold = first.failure_threshold.map_or_else(
        || "none: runs to the end".to_owned(),
        |t| format!("halt at {t}"),
    );

    view! {
        <section class="card job-header" data-testid="job" data-job=first.id.0.clone()
            data-state=move || state.get().as_str() data-hydrated=move || hydrated.get().then_some("true")>
            <p class="crumbs"><a href="/jobs">"Jobs"</a> " / "</p>
            <h1>{first.name.clone()}</h1>
            <p class="job-state-line">
                {move || view! { <JobStateBadge state=state.get() /> }}
                {move || ended.get().map(|ms| view! { <span class="muted">" ended " {when(ms)} " UTC"</span> })}
            </p>
            {move || stop_reason.get().map(|reason| view! {
                <p class="stop-reason" role="alert" data-testid="job-stop-reason">{reason}</p>
            })}
            <dl class="facts">
                <dt>"Command"</dt>
                <dd><code data-testid="job-command">{first.command.clone()}</code>
                    {(!args.is_empty()).then(|| view! { " " <span class="muted args" data-testid="job-args">{args}</span> })}
                </dd>
                {artifact}
                <dt>"Devices"</dt><dd data-testid="job-targets-description">{first.targets.describe()}</dd>
                <dt>"At once"</dt><dd>{first.concurrency}</dd>
                <dt>"Failures"</dt><dd>{threshold}</dd>
                <dt>"Offline devices"</dt><dd>{offline_text(&first)}</dd>
                <dt>"Timeout per device"</dt><dd>{duration_text(first.timeout_ms)}</dd>
                <dt>"Created"</dt><dd>{when(first.created_ms)} " UTC by " {first.created_by.clone()}</dd>
            </dl>
            {move || view! { <JobProgress counts=counts.get() /> }}
            <dl class="job-counts" data-testid="job-counts">
                {count("Total", "count-total", |c| c.total)}
                {count("Pending", "count-pending", |c| c.pending)}
                {count("Waiting", "count-waiting", |c| c.waiting)}
                {count("Running", "count-running", |c| c.running)}
                {count("Succeeded", "count-succeeded", |c| c.succeeded)}
                {count("Failed", "count-failed", |c| c.failed)}
                {count("Skipped", "count-skipped", |c| c.skipped)}
                {count("Cancelled", "count-cancelled", |c| c.cancelled)}
            </dl>
            {controls}
            {move || failed.get().map(|e| view! { <p class="error" role="alert" data-code=e.code>{e.message}</p> })}
        </section>
    }
    .into_any()
}

/// The job's devices, a page at a time, filtered by status and id; each row follows
/// its device's live events.
#[component]
fn JobTargets(
    query: RwSignal<TargetQuery>,
    read: Resource<Result<protocol::job::TargetPage, AppError>>,
) -> impl IntoView {
    let live = use_live();
    let search = RwSignal::new(query.with_untracked(|q| q.search.clone().unwrap_or_default()));
    let apply_search = move || {
        let text = Some(search.get_untracked().trim().to_owned()).filter(|s| !s.is_empty());
        if query.with_untracked(|q| q.search != text) {
            query.update(|q| {
                q.search = text;
                q.offset = 0;
            });
        }
    };
    let status_is = move |status: Option<TargetStatus>| move || query.with(|q| q.status == status);
    let page = move |step: i64| {
        query.update(|q| {
            let offset = i64::from(q.offset) + step * i64::from(PAGE);
            q.offset = u32::try_from(offset.max(0)).unwrap_or(0);
        });
    };

    view! {
        <section class="card" aria-labelledby="targets-heading" data-testid="job-targets">
            <h2 id="targets-heading">"Devices"</h2>
            <form class="row" data-testid="job-targets-filter" on:submit=move |ev| {
                ev.prevent_default();
                apply_search();
            }>
                <label>"Status"
                    <select name="status" data-testid="job-targets-status" on:change=move |ev| {
                        let status = TargetStatus::parse(&event_target_value(&ev));
                        query.update(|q| {
                            q.status = status;
                            q.offset = 0;
                        });
                    }>
                        <option value="" prop:selected=status_is(None)>"any"</option>
                        {TargetStatus::ALL.into_iter().map(|s| view! {
                            <option value=s.as_str() prop:selected=status_is(Some(s))>{s.as_str()}</option>
                        }).collect_view()}
                    </select>
                </label>
                <label>"Device"
                    <input type="search" name="search" placeholder="id contains…" data-testid="job-targets-search"
                        prop:value=move || search.get()
                        on:input=move |ev| search.set(event_target_value(&ev))
                        on:change=move |_| apply_search() />
                </label>
                <button type="submit" class="secondary">"Filter"</button>
            </form>
            <Transition fallback=|| view! { <p class="muted">"Loading devices…"</p> }>
            {move || read.get().map(|answer| match answer {
                Err(e) => view! { <p class="error" role="alert" data-code=e.code>{e.message}</p> }.into_any(),
                Ok(page_read) => {
                    let shown = page_read.targets.len() as u32;
                    let range = if page_read.total == 0 || shown == 0 {
                        "No devices match.".to_owned()
                    } else {
                        format!(
                            "Showing {}–{} of {}",
                            page_read.offset + 1,
                            page_read.offset + shown,
                            page_read.total
                        )
                    };
                    let has_previous = page_read.offset > 0;
                    let has_next = page_read.offset + shown < page_read.total;
                    view! {
                        <p class="muted" data-testid="job-targets-range">{range}</p>
                        {(shown > 0).then(|| view! {
                            <table class="table targets">
                                <thead>
                                    <tr>
                                        <th scope="col">"#"</th>
                                        <th scope="col">"Device"</th>
                                        <th scope="col">"Status"</th>
                                        <th scope="col">"Message"</th>
                                        <th scope="col">"Command"</th>
                                        <th scope="col">"Updated (UTC)"</th>
                                    </tr>
                                </thead>
                                <tbody>
                                    {page_read.targets.into_iter().map(|target| {
                                        let latest = Memo::new(move |_| live.latest_target(target.clone()));
                                        view! { <TargetRow target=latest /> }
                                    }).collect_view()}
                                </tbody>
                            </table>
                        })}
                        <div class="row-buttons pager">
                            <button type="button" class="secondary" data-testid="targets-previous" disabled=!has_previous
                                on:click=move |_| page(-1)>"Previous"</button>
                            <button type="button" class="secondary" data-testid="targets-next" disabled=!has_next
                                on:click=move |_| page(1)>"Next"</button>
                        </div>
                    }.into_any()
                }
            })}
            </Transition>
        </section>
    }
}

/// A device's row. While its command runs, its latest progress message (and percent);
/// otherwise the device's message in the job.
#[component]
fn TargetRow(target: Memo<JobTarget>) -> impl IntoView {
    let live = use_live();
    let first = target.get_untracked();
    let device = first.device_id.to_string();
    let stage = Memo::new(move |_| {
        let target = target.get();
        if target.status.is_finished() {
            return None;
        }
        let id = target.command_id?;
        live.commands.with(|all| {
            let command = all.get(&id).filter(|c| !c.status.is_terminal())?;
            command
                .message
                .clone()
                .map(|message| (message, command.percent))
        })
    });
    let label = format!("Progress of {device}");
    let message = move || {
        match stage.get() {
        Some((message, percent)) => view! {
            <div class="stage" data-testid="target-stage" data-percent=percent.map(|p| p.to_string())>
                <span>{message}</span>
                {percent.map(|p| view! {
                    <progress max="100" value=p.to_string() aria-label=label.clone()></progress>
                })}
            </div>
        }
        .into_any(),
        None => target.get().message.into_any(),
    }
    };
    view! {
        <tr data-testid="job-target-row" data-device=device.clone() data-status=move || target.get().status.as_str()>
            <td class="muted seq">{first.seq + 1}</td>
            <th scope="row"><a href=format!("/devices/{device}")>{device.clone()}</a></th>
            <td data-label="Status">{move || view! { <TargetStatusBadge status=target.get().status /> }}</td>
            <td data-label="Message" class="message" data-testid="target-message">{message}</td>
            <td data-label="Command"><code data-testid="target-command">{move || target.get().command_id.map(|c| c.0)}</code></td>
            <td data-label="Updated" class="muted">{move || when(target.get().updated_ms)}</td>
        </tr>
    }
}
