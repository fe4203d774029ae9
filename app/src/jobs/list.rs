//! Every job the user may see, newest first, with its progress, updating live; above
//! them, for operators and admins, the form that starts one (open, with the update
//! chosen, at `/jobs?artifact=<id>`).

use leptos::prelude::*;
use leptos_meta::Title;
use protocol::{
    auth::Role,
    job::{JobListQuery, JobView},
};

use super::{JobProgress, JobStateBadge, new::NewJobForm};
use crate::{
    auth::{audit::when, use_me},
    fleet::{
        list_jobs,
        live::{Live, use_live},
    },
};

/// Jobs per page.
const PAGE: u32 = 50;

#[component]
pub fn JobsPage() -> impl IntoView {
    let live = use_live();
    let me = use_me();
    let preset = crate::auth::query("artifact");
    // The id of the last job of the previous page; none for the newest.
    let before = RwSignal::new(None::<String>);
    // Read again after every snapshot: events may have been missed while disconnected.
    let rendered = Resource::new(
        move || (before.get(), live.snapshots.get()),
        |(before, _)| {
            list_jobs(JobListQuery {
                before,
                limit: Some(PAGE),
                ..JobListQuery::default()
            })
        },
    );
    let hydrated = RwSignal::new(false);
    Effect::new(move |_| hydrated.set(true));

    let jobs = move || {
        rendered
            .get()
            .map(|answer| answer.map(|read| merged(read, live, before.get().is_none())))
    };

    view! {
        <Title text="Jobs · Tether" />
        <Transition fallback=|| ()>
            {move || me.has(Role::Operator).then(|| {
                // `?artifact=<id>` (the Updates page's "Roll out"): the form opens with
                // that update chosen.
                let artifact = Some(preset.get()).filter(|a| !a.is_empty());
                let open = artifact.is_some();
                view! {
                    <details class="card new-job-card" data-testid="new-job" open=open>
                        <summary>{if open { "Roll out an update" } else { "New job" }}</summary>
                        <NewJobForm artifact=artifact />
                    </details>
                }
            })}
        </Transition>
        <section class="card" aria-labelledby="jobs-heading" data-testid="jobs" data-hydrated=move || hydrated.get().then_some("true")>
            <h1 id="jobs-heading">"Jobs"</h1>
            <Transition fallback=|| view! { <p class="muted">"Loading jobs…"</p> }>
                {move || jobs().map(|answer| match answer {
                    Err(e) => view! { <p class="error" role="alert" data-code=e.code>{e.message}</p> }.into_any(),
                    Ok((list, _)) if list.is_empty() => view! { <p class="empty" data-testid="no-jobs">"No jobs yet."</p> }.into_any(),
                    Ok((list, older)) => view! {
                        <table class="table jobs">
                            <caption class="sr-only">"Jobs, newest first"</caption>
                            <thead>
                                <tr>
                                    <th scope="col">"Job"</th>
                                    <th scope="col">"Command"</th>
                                    <th scope="col">"State"</th>
                                    <th scope="col">"Progress"</th>
                                    <th scope="col">"Created by"</th>
                                    <th scope="col">"Created (UTC)"</th>
                                </tr>
                            </thead>
                            <tbody>{list.into_iter().map(row).collect_view()}</tbody>
                        </table>
                        {older.map(|id| view! {
                            <button type="button" class="secondary" on:click=move |_| before.set(Some(id.clone()))>"Older jobs"</button>
                        })}
                    }.into_any(),
                })}
                {move || before.get().is_some().then(|| view! {
                    <button type="button" class="link" on:click=move |_| before.set(None)>"Newest jobs"</button>
                })}
            </Transition>
        </section>
    }
}

/// The jobs the server listed, each at its latest known state, and on the first page
/// the jobs created since (heard of live); newest first. With the id to page on from,
/// when there may be older ones.
fn merged(read: Vec<JobView>, live: Live, first_page: bool) -> (Vec<JobView>, Option<String>) {
    let full = read.len() >= PAGE as usize;
    let older = full.then(|| read.last().map(|j| j.id.0.clone())).flatten();
    let oldest = read.iter().map(|j| j.created_ms).min().unwrap_or(0);
    let mut jobs: Vec<JobView> = read.into_iter().map(|j| live.latest_job(j)).collect();
    if first_page {
        live.jobs.with(|all| {
            for job in all.values() {
                let newer = !full || job.created_ms >= oldest;
                if newer && !jobs.iter().any(|j| j.id == job.id) {
                    jobs.push(job.clone());
                }
            }
        });
    }
    jobs.sort_by(|a, b| {
        b.created_ms
            .cmp(&a.created_ms)
            .then_with(|| b.id.cmp(&a.id))
    });
    (jobs, older)
}

fn row(job: JobView) -> impl IntoView {
    let href = format!("/jobs/{}", job.id);
    view! {
        <tr data-testid="job-row" data-job=job.id.0.clone() data-state=job.state.as_str()>
            <th scope="row"><a href=href>{job.name.clone()}</a></th>
            <td data-label="Command"><code>{job.command.clone()}</code></td>
            <td data-label="State"><JobStateBadge state=job.state /></td>
            <td data-label="Progress" class="progress-cell"><JobProgress counts=job.counts /></td>
            <td data-label="Created by">{job.created_by.clone()}</td>
            <td data-label="Created" class="muted">{when(job.created_ms)}</td>
        </tr>
    }
}
