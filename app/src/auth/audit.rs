//! The audit trail for admins: every entry newest first, filtered by who, what and on
//! what, paged, and whether the chain of hashes is intact (an entry deleted or altered
//! in the database breaks it).

use leptos::prelude::*;
use leptos_meta::Title;
use protocol::auth::{AuditEntry, Role};

use super::NeedsRole;
use crate::fleet::{AuditFilter, audit_trail, audit_verify};

/// Entries per page.
const PAGE: usize = 50;

#[component]
pub fn AuditPage() -> impl IntoView {
    view! {
        <Title text="Audit · Tether" />
        <NeedsRole role=Role::Admin>
            <Audit />
        </NeedsRole>
    }
}

#[component]
fn Audit() -> impl IntoView {
    let (actor, action, target) = (
        RwSignal::new(String::new()),
        RwSignal::new(String::new()),
        RwSignal::new(String::new()),
    );
    // How far back, in hours; 0 for all time.
    let since_hours = RwSignal::new(0u64);
    let filter = RwSignal::new(AuditFilter {
        limit: Some(PAGE),
        ..AuditFilter::default()
    });
    let entries = Resource::new(move || filter.get(), audit_trail);
    let check = Resource::new(|| (), |_| audit_verify());
    let apply = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let text = |s: RwSignal<String>| {
            Some(s.get_untracked().trim().to_owned()).filter(|s| !s.is_empty())
        };
        let hours = since_hours.get_untracked();
        let from_ms = (hours > 0).then(|| {
            let now = crate::fleet::live::now_ms();
            i64::try_from(now.saturating_sub(hours * 3_600_000)).unwrap_or(0)
        });
        filter.set(AuditFilter {
            actor: text(actor),
            action: text(action),
            target: text(target),
            from_ms,
            limit: Some(PAGE),
            ..AuditFilter::default()
        });
    };
    view! {
        <section class="card" aria-labelledby="audit-heading">
            <h1 id="audit-heading">"Audit trail"</h1>
            <Transition fallback=|| ()>
                {move || check.get().map(|answer| match answer {
                    Ok(c) if c.broken_at.is_none() => view! {
                        <p class="ok" data-testid="audit-check" data-intact="true">{format!("The chain is intact ({} entries).", c.entries)}</p>
                    }.into_any(),
                    Ok(c) => view! {
                        <p class="error" role="alert" data-testid="audit-check" data-intact="false">
                            {format!("The chain is broken at entry {}: {}", c.broken_at.unwrap_or_default(), c.why.unwrap_or_default())}
                        </p>
                    }.into_any(),
                    Err(e) => view! { <p class="error" role="alert" data-code=e.code>{e.message}</p> }.into_any(),
                })}
            </Transition>
            <form on:submit=apply class="row" data-testid="audit-filter">
                <label>"Who" <input name="actor" prop:value=actor on:input=move |ev| actor.set(event_target_value(&ev)) /></label>
                <label>"Action" <input name="action" prop:value=action on:input=move |ev| action.set(event_target_value(&ev)) /></label>
                <label>"On" <input name="target" prop:value=target on:input=move |ev| target.set(event_target_value(&ev)) /></label>
                <label>"Since"
                    <select name="since" on:change=move |ev| since_hours.set(event_target_value(&ev).parse().unwrap_or(0))>
                        <option value="0">"all time"</option>
                        <option value="1">"the last hour"</option>
                        <option value="24">"the last day"</option>
                        <option value="168">"the last week"</option>
                    </select>
                </label>
                <button type="submit">"Filter"</button>
            </form>
            <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || entries.get().map(|answer| match answer {
                    Err(e) => view! { <p class="error" role="alert" data-code=e.code>{e.message}</p> }.into_any(),
                    Ok(list) if list.is_empty() => view! { <p class="muted">"No entries."</p> }.into_any(),
                    Ok(list) => {
                        let older = (list.len() == PAGE).then(|| list.last().map(|e| e.seq)).flatten();
                        view! {
                            <table class="table" data-testid="audit">
                                <thead><tr><th>"#"</th><th>"When (UTC)"</th><th>"Who"</th><th>"From"</th><th>"Action"</th><th>"On"</th><th>"Detail"</th></tr></thead>
                                <tbody>{list.into_iter().map(row).collect_view()}</tbody>
                            </table>
                            {older.map(|seq| view! {
                                <button type="button" on:click=move |_| filter.update(|f| f.before = Some(seq))>"Older entries"</button>
                            })}
                        }.into_any()
                    }
                })}
            </Transition>
        </section>
    }
}

fn row(entry: AuditEntry) -> impl IntoView {
    let (action, actor) = (entry.action.clone(), entry.actor.clone());
    view! {
        <tr data-action=action data-actor=actor>
            <td>{entry.seq}</td>
            <td>{when(entry.ts_ms)}</td>
            <td>{entry.actor}</td>
            <td>{entry.source}</td>
            <td>{entry.action}</td>
            <td>{entry.target}</td>
            <td class="detail">{entry.detail}</td>
        </tr>
    }
}

/// A time as `YYYY-MM-DD HH:MM:SS` in UTC: the same on the server and in the browser,
/// so hydration agrees.
pub fn when(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::when;

    #[test]
    fn times_are_written_in_utc() {
        assert_eq!(when(0), "1970-01-01 00:00:00");
        assert_eq!(when(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(when(1_795_600_000_123), "2026-11-25 09:46:40");
    }
}
