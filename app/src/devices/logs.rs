//! The log viewer: the device's built-in `logs` command asked from a small form (which
//! log, how many lines, a filter the device applies, follow for how long), and its
//! lines shown as they arrive: monospace, kept at the bottom while following, searched
//! in the browser, and downloadable as a text file.
//!
//! The lines are the command's progress messages, each kept by the tab as its live
//! event arrives ([`crate::fleet::output`]); once the command is over, a short log is
//! also in its reply (`output`), which is what shows when the tab saw no progress.

use std::collections::BTreeMap;

use leptos::{html, prelude::*};
use protocol::{
    ArgKind, CommandSpec, CommandStatus, DeviceId,
    api::{CommandView, timeouts},
    auth::Role,
};

use super::{StatusBadge, Tracked, command_form::build_request};
use crate::{
    auth::use_me,
    fleet::{cancel_command, live::use_live},
};

/// The deadline of a command that does not follow.
const FETCH_DEADLINE_S: u64 = 30;
/// The deadline of a follow is its length and this much more.
const FOLLOW_SLACK_S: u64 = 15;

#[component]
pub fn LogViewer(device_id: DeviceId, spec: CommandSpec) -> impl IntoView {
    let live = use_live();
    let me = use_me();
    let arg = |name: &str| spec.args.iter().find(|a| a.name == name).cloned();
    let sources = match arg("source").map(|a| a.kind) {
        Some(ArgKind::Choice { choices }) => choices,
        _ => Vec::new(),
    };
    let default_of = |name: &str| {
        arg(name)
            .and_then(|a| a.default)
            .map(|v| v.to_string())
            .unwrap_or_default()
    };
    let source = RwSignal::new(sources.first().cloned().unwrap_or_default());
    let lines = RwSignal::new(default_of("lines"));
    let filter = RwSignal::new(String::new());
    let follow = RwSignal::new(false);
    let follow_s = RwSignal::new(default_of("follow_s"));
    let search = RwSignal::new(String::new());
    let tracked = Tracked::new(live);
    let Tracked {
        error,
        sending,
        command,
        ..
    } = tracked;
    let running = move || tracked.running();

    let submit = {
        let (spec, device) = (spec.clone(), device_id.clone());
        move |event: leptos::ev::SubmitEvent| {
            event.prevent_default();
            let following = follow.get_untracked();
            let values: BTreeMap<String, String> = [
                ("source", source.get_untracked()),
                ("lines", lines.get_untracked()),
                ("filter", filter.get_untracked()),
                ("follow", following.to_string()),
                (
                    "follow_s",
                    if following {
                        follow_s.get_untracked()
                    } else {
                        String::new()
                    },
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            let deadline_s = if following {
                follow_s
                    .get_untracked()
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0)
                    .saturating_add(FOLLOW_SLACK_S)
                    .min(timeouts::MAX_MS / 1000)
            } else {
                FETCH_DEADLINE_S
            };
            let request = match build_request(&spec, &values, &deadline_s.to_string()) {
                Ok(request) => request,
                Err(message) => return error.set(Some(message)),
            };
            tracked.send(&device, request);
        }
    };
    let stop = move |_| {
        if let Some(id) = command.get_untracked().map(|c| c.id) {
            leptos::task::spawn_local(async move {
                if let Err(e) = cancel_command(id.0).await {
                    error.set(Some(e.message));
                }
            });
        }
    };

    // The lines so far: every progress message the tab saw, else the reply's copy.
    let shown = Memo::new(move |_| {
        let id = tracked.current()?;
        let seen = live.outputs.with(|outputs| {
            outputs.get(&id).map(|o| {
                (
                    o.lines.iter().cloned().collect::<Vec<_>>(),
                    o.dropped,
                    o.gaps,
                )
            })
        });
        match seen {
            Some(seen) => Some(seen),
            None => Some((reply_lines(command.get().as_ref()), 0, 0)),
        }
    });

    let output_ref = NodeRef::<html::Pre>::new();
    // While following, keep the newest line in sight unless the user scrolled up.
    Effect::new(move |_| {
        let _ = shown.get();
        if let Some(pre) = output_ref.get() {
            let at_bottom = pre.scroll_height() - pre.scroll_top() - pre.client_height() < 80;
            if at_bottom || running() {
                pre.set_scroll_top(pre.scroll_height());
            }
        }
    });

    let device_name = device_id.to_string();
    let download = move |_| {
        let Some(id) = command.get_untracked().map(|c| c.id) else {
            return;
        };
        let text = live
            .outputs
            .with_untracked(|outputs| outputs.get(&id).map(crate::fleet::output::Output::text))
            .unwrap_or_else(|| {
                let mut text = reply_lines(command.get_untracked().as_ref()).join("\n");
                text.push('\n');
                text
            });
        save_text(
            &format!("{device_name}-{}.log", source.get_untracked()),
            &text,
        );
    };

    let source_options = sources
        .iter()
        .map(|name| view! { <option value=name.clone()>{name.clone()}</option> })
        .collect_view();
    let max_lines = match arg("lines").map(|a| a.kind) {
        Some(ArgKind::Integer { max, .. }) => max.map(|m| m.to_string()),
        _ => None,
    };
    let max_follow = match arg("follow_s").map(|a| a.kind) {
        Some(ArgKind::Integer { max, .. }) => max.map(|m| m.to_string()),
        _ => None,
    };

    view! {
        <section class="card logs" aria-labelledby="logs-heading" data-testid="log-viewer">
            <h2 id="logs-heading">"Logs"</h2>
            {move || (!me.has(Role::Operator)).then(|| view! {
                <p class="muted">"Reading a device's logs needs the operator role."</p>
            })}
            <form class="log-controls" aria-label="Read logs" novalidate on:submit=submit>
                <label class="field">
                    <span>"Log"</span>
                    <select name="source" prop:value=move || source.get()
                        on:change=move |ev| source.set(event_target_value(&ev))>
                        {source_options}
                    </select>
                </label>
                <label class="field">
                    <span>"Last lines"</span>
                    <input type="number" name="lines" min="1" max=max_lines step="1"
                        prop:value=move || lines.get() on:input=move |ev| lines.set(event_target_value(&ev)) />
                </label>
                <label class="field">
                    <span>"Only lines containing"</span>
                    <input type="text" name="filter" maxlength="256" placeholder="on the device, ignoring case"
                        prop:value=move || filter.get() on:input=move |ev| filter.set(event_target_value(&ev)) />
                </label>
                <label class="field check">
                    <input type="checkbox" name="follow" prop:checked=move || follow.get()
                        on:change=move |ev| follow.set(event_target_checked(&ev)) />
                    <span>"Follow new lines"</span>
                </label>
                <label class="field">
                    <span>"for (s)"</span>
                    <input type="number" name="follow_s" min="1" max=max_follow step="1"
                        disabled=move || !follow.get()
                        prop:value=move || follow_s.get() on:input=move |ev| follow_s.set(event_target_value(&ev)) />
                </label>
                <div class="log-buttons">
                    <button type="submit" disabled=move || sending.get() || running() || !me.has(Role::Operator)>
                        {move || if follow.get() { "Follow" } else { "Show" }}
                    </button>
                    {move || running().then(|| view! { <button type="button" class="secondary" on:click=stop>"Stop"</button> })}
                </div>
            </form>
            <p class="error" role="alert" data-testid="log-error">{move || error.get()}</p>
            {move || command.get().map(|c| view! { <LogStatus command=c /> })}
            <div class="log-tools">
                <input type="search" name="search" aria-label="Search the lines shown" placeholder="Search"
                    prop:value=move || search.get() on:input=move |ev| search.set(event_target_value(&ev)) />
                <span class="muted" data-testid="log-count">{move || count_label(shown.get().as_ref(), &search.get())}</span>
                <button type="button" class="secondary" on:click=download
                    disabled=move || shown.get().is_none_or(|(lines, _, _)| lines.is_empty())>"Download"</button>
            </div>
            {move || shown.get().and_then(|(_, dropped, gaps)| {
                (dropped > 0 || gaps > 0).then(|| view! {
                    <p class="muted" data-testid="log-gaps">{gap_note(dropped, gaps)}</p>
                })
            })}
            <pre class="log-output" node_ref=output_ref data-testid="log-output" tabindex="0">
                {move || render_lines(shown.get().map(|(lines, _, _)| lines).unwrap_or_default(), &search.get())}
            </pre>
        </section>
    }
}

/// The command's state in a line: its status, and why it ended if it did not succeed.
#[component]
fn LogStatus(command: CommandView) -> impl IntoView {
    let note = match command.status {
        CommandStatus::Succeeded => None,
        _ if command.status.is_terminal() => command.error.clone(),
        _ => Some(
            if command.args.get("follow") == Some(&serde_json::Value::Bool(true)) {
                "following…".to_owned()
            } else {
                "reading…".to_owned()
            },
        ),
    };
    view! {
        <p class="log-status" data-testid="log-status" data-status=command.status.as_str()>
            <StatusBadge status=command.status />
            {note.map(|n| view! { <span class="muted">" " {n}</span> })}
        </p>
    }
}

/// The lines a finished command's reply carries (`output`), when it carries them.
fn reply_lines(command: Option<&CommandView>) -> Vec<String> {
    command
        .and_then(|c| c.result.as_ref())
        .and_then(|r| r.get("output"))
        .and_then(|o| o.as_str())
        .filter(|o| !o.is_empty())
        .map(|o| o.split('\n').map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Whether `line` contains `search`, ignoring case (the empty search matches all).
fn matches(line: &str, search: &str) -> bool {
    search.is_empty() || line.to_lowercase().contains(&search.to_lowercase())
}

/// "120 lines", or "3 of 120 lines match".
fn count_label(shown: Option<&(Vec<String>, usize, usize)>, search: &str) -> String {
    let Some((lines, _, _)) = shown else {
        return String::new();
    };
    let total = lines.len();
    let plural = |n: usize| if n == 1 { "line" } else { "lines" };
    if search.is_empty() {
        format!("{total} {}", plural(total))
    } else {
        let found = lines.iter().filter(|l| matches(l, search)).count();
        format!("{found} of {total} {} match", plural(total))
    }
}

fn gap_note(dropped: usize, gaps: usize) -> String {
    let mut notes = Vec::new();
    if dropped > 0 {
        notes.push(format!("the first {dropped} lines are no longer kept here"));
    }
    if gaps > 0 {
        notes.push(
            "the connection was lost while following: lines sent meanwhile are missing".to_owned(),
        );
    }
    let mut note = notes.join("; ");
    if let Some(first) = note.get(..1) {
        note = first.to_uppercase() + &note[1..];
    }
    note + "."
}

/// The lines as text, or only those matching `search`, each match marked.
fn render_lines(lines: Vec<String>, search: &str) -> AnyView {
    if search.is_empty() {
        let mut text = lines.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        return text.into_any();
    }
    lines
        .iter()
        .filter(|line| matches(line, search))
        .map(|line| {
            let parts = split_matches(line, search);
            view! {
                <span class="line">
                    {parts.into_iter().map(|(text, hit)| if hit {
                        view! { <mark>{text}</mark> }.into_any()
                    } else {
                        text.into_any()
                    }).collect_view()}
                    "\n"
                </span>
            }
        })
        .collect_view()
        .into_any()
}

/// `line` cut into pieces, each either a match of `search` (ignoring case) or not.
fn split_matches(line: &str, search: &str) -> Vec<(String, bool)> {
    let lower = line.to_lowercase();
    let needle = search.to_lowercase();
    // Lower-casing can change lengths outside ASCII: then mark the whole line.
    if lower.len() != line.len() || needle.is_empty() {
        return vec![(line.to_owned(), true)];
    }
    let mut parts = Vec::new();
    let mut at = 0;
    while let Some(found) = lower[at..].find(&needle) {
        let start = at + found;
        if start > at {
            parts.push((line[at..start].to_owned(), false));
        }
        parts.push((line[start..start + needle.len()].to_owned(), true));
        at = start + needle.len();
    }
    if at < line.len() {
        parts.push((line[at..].to_owned(), false));
    }
    parts
}

/// Offers `text` to the user as a file named `name`.
fn save_text(name: &str, text: &str) {
    #[cfg(feature = "hydrate")]
    {
        use wasm_bindgen::JsCast as _;
        let parts = js_sys::Array::of1(&wasm_bindgen::JsValue::from_str(text));
        let options = web_sys::BlobPropertyBag::new();
        options.set_type("text/plain;charset=utf-8");
        let Ok(blob) = web_sys::Blob::new_with_str_sequence_and_options(&parts, &options) else {
            return;
        };
        let Ok(url) = web_sys::Url::create_object_url_with_blob(&blob) else {
            return;
        };
        let link = document()
            .create_element("a")
            .ok()
            .and_then(|a| a.dyn_into::<web_sys::HtmlAnchorElement>().ok());
        if let Some(link) = link {
            link.set_href(&url);
            link.set_download(name);
            link.click();
        }
        // The download has started by then; the URL only holds the text in memory.
        set_timeout(
            move || {
                let _ = web_sys::Url::revoke_object_url(&url);
            },
            std::time::Duration::from_secs(30),
        );
    }
    #[cfg(not(feature = "hydrate"))]
    let _ = (name, text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_are_cut_out_ignoring_case() {
        assert_eq!(
            split_matches("Error: disk error", "ERROR"),
            vec![
                ("Error".to_owned(), true),
                (": disk ".to_owned(), false),
                ("error".to_owned(), true)
            ]
        );
        assert_eq!(
            split_matches("ok", "x"),
            vec![("ok".to_owned(), false)],
            "no match, one piece"
        );
        assert_eq!(split_matches("İx", "x"), vec![("İx".to_owned(), true)]);
    }

    #[test]
    fn counts_and_notes_read_naturally() {
        let shown = (vec!["a error".to_owned(), "b".to_owned()], 0, 0);
        assert_eq!(count_label(Some(&shown), ""), "2 lines");
        assert_eq!(count_label(Some(&shown), "ERR"), "1 of 2 lines match");
        assert_eq!(gap_note(5, 0), "The first 5 lines are no longer kept here.");
        assert!(gap_note(0, 1).starts_with("The connection was lost"));
    }
}
