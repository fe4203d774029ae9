//! The form that starts a job: which devices, which command with which arguments, and
//! how it runs. When the devices chosen include some this tab knows (the live view has
//! every device and what it announced), their commands are offered and the arguments
//! get the inputs the device page's forms use; any other command is typed, with its
//! arguments as a JSON object. Everything is checked in the browser with
//! [`NewJob::check`] before it is sent; the server checks again.
//!
//! A software update is the command `update` with an artifact instead of arguments
//! (the server fills them in for each device): choosing it, offered or typed, shows the
//! artifacts to pick from. `/jobs?artifact=<id>` (the Updates page's "Roll out") opens
//! the form with it chosen. Unless a timeout is given, an update gives each device the
//! longest allowed ([`UPDATE_TIMEOUT_MS`]): downloads over slow links take time.

use std::collections::BTreeMap;

use leptos::prelude::*;
use leptos_router::hooks::use_navigate;
use protocol::{
    CommandSpec, DeviceId,
    api::{DeviceView, timeouts},
    artifact::ArtifactId,
    capability::builtin,
    job::{NewJob, OfflinePolicy, Selector, Threshold, limits},
};
use serde_json::Value;

use crate::{
    devices::command_form::{ArgInput, build_args, initial_values},
    fleet::{create_job, job_preview, list_artifacts, live::use_live},
    updates::{artifact_label, short_sha, size_text},
};

/// The value of the command choice for a command typed by hand.
const OTHER: &str = "other";
/// The prefix of the command choice's values for offered commands.
const OFFERED: &str = "cmd:";

/// Each device's deadline in an update job unless one is given: the longest a command
/// may have (`protocol::api::timeouts::MAX_MS`), since a download over a slow link takes
/// time.
pub const UPDATE_TIMEOUT_MS: u64 = timeouts::MAX_MS;

/// The command choice's value for a software update.
fn update_choice() -> String {
    format!("{OFFERED}{}", builtin::UPDATE)
}

/// What the form holds besides the command: text as typed, turned into a [`NewJob`]
/// by [`Draft::build`].
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    pub name: String,
    /// Device ids, separated by commas or white space.
    pub ids: String,
    pub group: String,
    pub kind: String,
    pub search: String,
    pub online_only: bool,
    pub all: bool,
    pub concurrency: String,
    pub threshold: ThresholdKind,
    pub threshold_value: String,
    pub offline: OfflinePolicy,
    pub wait_minutes: String,
    /// Empty for the server's default.
    pub timeout_s: String,
}

/// Which kind of failure threshold the form asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThresholdKind {
    None,
    Count,
    Percent,
}

impl Default for Draft {
    fn default() -> Self {
        Self {
            name: String::new(),
            ids: String::new(),
            group: String::new(),
            kind: String::new(),
            search: String::new(),
            online_only: false,
            all: false,
            concurrency: limits::DEFAULT_CONCURRENCY.to_string(),
            threshold: ThresholdKind::None,
            threshold_value: String::new(),
            offline: OfflinePolicy::Skip,
            wait_minutes: (limits::DEFAULT_WAIT_MS / 60_000).to_string(),
            timeout_s: String::new(),
        }
    }
}

/// Device ids separated by commas or white space, each checked, in order, once each.
pub fn parse_ids(text: &str) -> Result<Vec<DeviceId>, String> {
    let mut ids: Vec<DeviceId> = Vec::new();
    for word in text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
    {
        let id = DeviceId::new(word).map_err(|_| {
            format!("\"{word}\" is not a device id (1 to 64 letters, digits, '-' or '_')")
        })?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

fn text(value: &str) -> Option<String> {
    Some(value.trim().to_owned()).filter(|v| !v.is_empty())
}

impl Draft {
    /// The devices chosen, as the server takes them.
    pub fn selector(&self) -> Result<Selector, String> {
        Ok(Selector {
            ids: parse_ids(&self.ids)?,
            group: text(&self.group),
            kind: text(&self.kind),
            search: text(&self.search),
            online: self.online_only.then_some(true),
            all: self.all,
        })
    }

    /// The job to send `command` with `args`, checked as the server checks it.
    pub fn build(&self, command: &str, args: BTreeMap<String, Value>) -> Result<NewJob, String> {
        self.job(command, args, None)
    }

    /// The software update that installs `artifact` (an id, as chosen; empty for none),
    /// checked as the server checks it. Without a timeout given, [`UPDATE_TIMEOUT_MS`].
    pub fn build_update(&self, artifact: &str) -> Result<NewJob, String> {
        let artifact = text(artifact).ok_or("choose the artifact to install")?;
        self.job(builtin::UPDATE, BTreeMap::new(), Some(ArtifactId(artifact)))
    }

    fn job(
        &self,
        command: &str,
        args: BTreeMap<String, Value>,
        artifact: Option<ArtifactId>,
    ) -> Result<NewJob, String> {
        let targets = self.selector()?;
        let concurrency = self.concurrency.trim().parse::<u32>().map_err(|_| {
            format!(
                "devices at once must be a whole number from 1 to {}",
                limits::MAX_CONCURRENCY
            )
        })?;
        let failure_threshold = match self.threshold {
            ThresholdKind::None => None,
            ThresholdKind::Count => Some(Threshold::Count(
                self.threshold_value
                    .trim()
                    .parse::<u32>()
                    .map_err(|_| "the failure threshold must be a whole number of devices")?,
            )),
            ThresholdKind::Percent => Some(Threshold::Percent(
                self.threshold_value
                    .trim()
                    .parse::<u8>()
                    .ok()
                    .filter(|p| (1..=100).contains(p))
                    .ok_or("the failure threshold must be between 1 and 100 %")?,
            )),
        };
        let wait_ms = match self.offline {
            OfflinePolicy::Skip => None,
            OfflinePolicy::Wait => Some(
                self.wait_minutes
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .map(|m| (m * 60_000.0).round())
                    .filter(|ms| *ms >= 1.0 && *ms <= limits::MAX_WAIT_MS as f64)
                    .map(|ms| ms as u64)
                    .ok_or_else(|| {
                        format!(
                            "the minutes to wait for offline devices must be more than 0 and at most {} (a week)",
                            limits::MAX_WAIT_MS / 60_000
                        )
                    })?,
            ),
        };
        let timeout_ms = match text(&self.timeout_s) {
            None => artifact.is_some().then_some(UPDATE_TIMEOUT_MS),
            Some(seconds) => Some(
                seconds
                    .parse::<f64>()
                    .ok()
                    .map(|s| (s * 1000.0).round())
                    .filter(|ms| *ms >= timeouts::MIN_MS as f64 && *ms <= timeouts::MAX_MS as f64)
                    .map(|ms| ms as u64)
                    .ok_or_else(|| {
                        format!(
                            "the timeout per device must be between {} and {} seconds",
                            timeouts::MIN_MS as f64 / 1000.0,
                            timeouts::MAX_MS / 1000
                        )
                    })?,
            ),
        };
        let job = NewJob {
            name: text(&self.name),
            command: command.trim().to_owned(),
            args,
            targets,
            concurrency,
            failure_threshold,
            offline: self.offline,
            wait_ms,
            timeout_ms,
            artifact,
        };
        job.check()?;
        Ok(job)
    }
}

/// Arguments typed as JSON: an object (or nothing, for none).
pub fn parse_args(text: &str) -> Result<BTreeMap<String, Value>, String> {
    if text.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map.into_iter().collect()),
        Ok(_) => Err("the arguments must be a JSON object, like {\"seconds\": 5}".to_owned()),
        Err(e) => Err(format!("the arguments are not valid JSON: {e}")),
    }
}

/// A command the chosen devices announced, and how many of them did.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Offer {
    pub spec: CommandSpec,
    pub devices: usize,
}

/// What a selector reaches among the devices the server knows: how many, and the
/// commands they announced (by name; the first device's spec of each). Computed by the
/// server ([`known`] over the devices the caller may see, those of the group only when
/// the selector names one).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Known {
    pub devices: usize,
    pub offers: Vec<Offer>,
}

/// [`Known`] of `devices` for `selector`; a group in it is not checked here (pass only
/// the group's devices).
pub fn known<'a>(selector: &Selector, devices: impl IntoIterator<Item = &'a DeviceView>) -> Known {
    let mut filters = selector.clone();
    if filters.group.take().is_some() {
        filters.all = true;
    }
    let mut known = Known::default();
    let mut offers: BTreeMap<String, Offer> = BTreeMap::new();
    for device in devices {
        let chosen = selector.ids.contains(&device.id)
            || filters.matches(device.id.as_str(), Some(&device.kind), &[], device.online);
        if !chosen {
            continue;
        }
        known.devices += 1;
        for spec in &device.capabilities.commands {
            offers
                .entry(spec.name.clone())
                .or_insert_with(|| Offer {
                    spec: spec.clone(),
                    devices: 0,
                })
                .devices += 1;
        }
    }
    known.offers = offers.into_values().collect();
    known
}

/// How the command is chosen at the moment.
#[derive(Debug, Clone, PartialEq)]
enum Mode {
    /// Not yet.
    Unchosen,
    /// One the devices announced: inputs generated from its spec.
    Offered(CommandSpec),
    /// Typed by hand, arguments as JSON.
    Typed,
    /// A software update: an artifact instead of arguments.
    Update,
}

/// The form; with `artifact`, a software update installing it is chosen at first.
#[component]
pub fn NewJobForm(artifact: Option<String>) -> impl IntoView {
    let live = use_live();
    let navigate = use_navigate();
    let draft = RwSignal::new(Draft::default());
    let choice = RwSignal::new(if artifact.is_some() {
        update_choice()
    } else {
        String::new()
    });
    let artifact = RwSignal::new(artifact.unwrap_or_default());
    let typed_name = RwSignal::new(String::new());
    let typed_args = RwSignal::new("{}".to_owned());
    let values = RwSignal::new(BTreeMap::<String, String>::new());
    let error = RwSignal::new(None::<(Option<String>, String)>);
    let sending = RwSignal::new(false);

    let selector = Memo::new(move |_| draft.with(Draft::selector).ok());
    // Asked of the server, which knows every device (a tab has only those it shows)
    // and the groups; the last answer stays until the next arrives.
    let asked = LocalResource::new(move || {
        let selector = selector.get();
        async move {
            match selector {
                Some(s) if !s.ids.is_empty() || s.has_filter() => job_preview(s).await.ok(),
                _ => Some(Known::default()),
            }
        }
    });
    let last_known = RwSignal::new(Known::default());
    Effect::new(move |_| {
        if let Some(Some(known)) = asked.get() {
            last_known.set(known);
        }
    });
    let known = Memo::new(move |_| last_known.get());
    let mode = Memo::new(move |_| {
        let choice = choice.get();
        if choice == update_choice() {
            return Mode::Update;
        }
        let offers = known.with(|k| k.offers.clone());
        if let Some(name) = choice.strip_prefix(OFFERED)
            && let Some(offer) = offers.iter().find(|o| o.spec.name == name)
        {
            return Mode::Offered(offer.spec.clone());
        }
        if choice == OTHER || offers.is_empty() {
            Mode::Typed
        } else {
            Mode::Unchosen
        }
    });

    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let built = match mode.get_untracked() {
            Mode::Unchosen => Err("choose the command to send".to_owned()),
            Mode::Offered(spec) => build_args(&spec, &values.get_untracked())
                .and_then(|args| draft.with_untracked(|d| d.build(&spec.name, args))),
            Mode::Update => draft.with_untracked(|d| d.build_update(&artifact.get_untracked())),
            Mode::Typed if typed_name.with_untracked(|n| n.trim() == builtin::UPDATE) => {
                draft.with_untracked(|d| d.build_update(&artifact.get_untracked()))
            }
            Mode::Typed => parse_args(&typed_args.get_untracked()).and_then(|args| {
                draft.with_untracked(|d| d.build(&typed_name.get_untracked(), args))
            }),
        };
        let job = match built {
            Ok(job) => job,
            Err(message) => return error.set(Some((None, message))),
        };
        error.set(None);
        sending.set(true);
        let navigate = navigate.clone();
        leptos::task::spawn_local(async move {
            let answer = create_job(job).await;
            sending.set(false);
            match answer {
                Ok(job) => {
                    let path = format!("/jobs/{}", job.id);
                    live.upsert_job(job);
                    navigate(&path, Default::default());
                }
                Err(e) => error.set(Some((Some(e.code), e.message))),
            }
        });
    };

    // An input bound to one text field of the draft.
    let field = move |get: fn(&Draft) -> &String, set: fn(&mut Draft, String)| {
        (
            move || draft.with(|d| get(d).clone()),
            move |ev: leptos::ev::Event| draft.update(|d| set(d, event_target_value(&ev))),
        )
    };
    let (name_value, name_input) = field(|d| &d.name, |d, v| d.name = v);
    let (ids_value, ids_input) = field(|d| &d.ids, |d, v| d.ids = v);
    let (group_value, group_input) = field(|d| &d.group, |d, v| d.group = v);
    let (kind_value, kind_input) = field(|d| &d.kind, |d, v| d.kind = v);
    let (search_value, search_input) = field(|d| &d.search, |d, v| d.search = v);
    let (concurrency_value, concurrency_input) =
        field(|d| &d.concurrency, |d, v| d.concurrency = v);
    let (threshold_value, threshold_input) =
        field(|d| &d.threshold_value, |d, v| d.threshold_value = v);
    let (wait_value, wait_input) = field(|d| &d.wait_minutes, |d, v| d.wait_minutes = v);
    let (timeout_value, timeout_input) = field(|d| &d.timeout_s, |d, v| d.timeout_s = v);
    let threshold = move || draft.with(|d| d.threshold);
    // A memo: the artifact picker is redrawn when this changes, not at every keystroke.
    let typed_update = Memo::new(move |_| typed_name.with(|n| n.trim() == builtin::UPDATE));
    let updating = move || match mode.get() {
        Mode::Update => true,
        Mode::Typed => typed_update.get(),
        _ => false,
    };
    let waits = move || draft.with(|d| d.offline == OfflinePolicy::Wait);

    let preview = move || {
        let selector = selector.get()?;
        if selector.ids.is_empty() && !selector.has_filter() {
            return None;
        }
        let n = known.with(|k| k.devices);
        let devices = if n == 1 { "device" } else { "devices" };
        Some(format!("{n} {devices} match."))
    };

    let choose = move |ev: leptos::ev::Event| {
        let value = event_target_value(&ev);
        if let Some(name) = value.strip_prefix(OFFERED) {
            let spec = known.with_untracked(|k| {
                k.offers
                    .iter()
                    .find(|o| o.spec.name == name)
                    .map(|o| o.spec.clone())
            });
            values.set(spec.as_ref().map(initial_values).unwrap_or_default());
        }
        choice.set(value);
    };
    let command_picker = move || {
        let Known { devices, offers } = known.get();
        if offers.is_empty() && mode.get() != Mode::Update {
            return None;
        }
        let update_offered = offers.iter().any(|o| o.spec.name == builtin::UPDATE);
        // The choice is read per option: choosing does not redraw the list.
        let chosen = move |value: String| move || choice.with(|c| *c == value);
        Some(view! {
            <div class="field">
                <label for="new-job-command">"Command"</label>
                <select id="new-job-command" name="command" data-testid="job-command" on:change=choose>
                    <option value="" prop:selected=chosen(String::new())>"Choose a command…"</option>
                    {offers.into_iter().map(|offer| {
                        let value = format!("{OFFERED}{}", offer.spec.name);
                        let selected = chosen(value.clone());
                        let name = if offer.spec.name == builtin::UPDATE {
                            format!("{} (software update)", offer.spec.name)
                        } else {
                            offer.spec.name.clone()
                        };
                        let label = if offer.devices == devices {
                            name
                        } else {
                            format!("{name} ({} of {devices} devices)", offer.devices)
                        };
                        view! { <option value=value prop:selected=selected>{label}</option> }
                    }).collect_view()}
                    {(!update_offered).then(|| {
                        let selected = chosen(update_choice());
                        view! { <option value=update_choice() prop:selected=selected>"update (software update)"</option> }
                    })}
                    <option value=OTHER prop:selected=chosen(OTHER.to_owned())>"Another command…"</option>
                </select>
            </div>
        })
    };
    let command_inputs = move || {
        match mode.get() {
        Mode::Unchosen => ().into_any(),
        Mode::Offered(spec) => view! {
            {(!spec.description.is_empty()).then(|| view! { <p class="muted">{spec.description.clone()}</p> })}
            <div class="job-args" data-testid="job-args">
                {spec.args.iter().map(|arg| view! { <ArgInput form_id="new-job-arg".to_owned() arg=arg.clone() values /> }).collect_view()}
            </div>
        }
        .into_any(),
        Mode::Update => view! { <ArtifactPicker artifact /> }.into_any(),
        Mode::Typed => view! {
            <div class="field">
                <label for="new-job-command-name">"Command name"</label>
                <input id="new-job-command-name" type="text" name="command_name" autocomplete="off" spellcheck="false"
                    prop:value=move || typed_name.get() on:input=move |ev| typed_name.set(event_target_value(&ev)) />
            </div>
            {move || typed_update.get().then(|| view! { <ArtifactPicker artifact /> })}
            <div class="field" hidden=move || typed_update.get()>
                <label for="new-job-args">"Arguments (JSON object)"</label>
                <textarea id="new-job-args" name="args" rows="3" spellcheck="false"
                    prop:value=move || typed_args.get() on:input=move |ev| typed_args.set(event_target_value(&ev))></textarea>
                <small class="muted">"Name devices this tab knows to choose among the commands they announced."</small>
            </div>
        }
        .into_any(),
    }
    };

    view! {
        <form class="new-job" aria-label="New job" novalidate on:submit=submit data-testid="new-job-form">
            <fieldset>
                <legend>"Devices"</legend>
                <div class="field wide">
                    <label for="new-job-ids">"Device ids"</label>
                    <textarea id="new-job-ids" name="ids" rows="2" spellcheck="false" placeholder="boiler-1, boiler-2"
                        prop:value=ids_value on:input=ids_input></textarea>
                    <small class="muted">"Separated by commas or spaces; devices matching the criteria below are added."</small>
                </div>
                <div class="field">
                    <label for="new-job-group">"Group"</label>
                    <input id="new-job-group" type="text" name="group" autocomplete="off" prop:value=group_value on:input=group_input />
                </div>
                <div class="field">
                    <label for="new-job-kind">"Kind"</label>
                    <input id="new-job-kind" type="text" name="kind" autocomplete="off" prop:value=kind_value on:input=kind_input />
                </div>
                <div class="field">
                    <label for="new-job-search">"Id contains"</label>
                    <input id="new-job-search" type="text" name="search" autocomplete="off" prop:value=search_value on:input=search_input />
                </div>
                <label class="check">
                    <input type="checkbox" name="online" prop:checked=move || draft.with(|d| d.online_only)
                        on:change=move |ev| draft.update(|d| d.online_only = event_target_checked(&ev)) />
                    "Online only"
                </label>
                <label class="check">
                    <input type="checkbox" name="all" prop:checked=move || draft.with(|d| d.all)
                        on:change=move |ev| draft.update(|d| d.all = event_target_checked(&ev)) />
                    "All devices"
                </label>
                <p class="muted wide" data-testid="job-preview">{preview}</p>
            </fieldset>
            <fieldset>
                <legend>"Command"</legend>
                {command_picker}
                {command_inputs}
            </fieldset>
            <fieldset>
                <legend>"Settings"</legend>
                <div class="field">
                    <label for="new-job-name">"Name (optional)"</label>
                    <input id="new-job-name" type="text" name="name" maxlength=limits::MAX_NAME.to_string() autocomplete="off"
                        prop:value=name_value on:input=name_input />
                </div>
                <div class="field">
                    <label for="new-job-concurrency">"Devices at once"</label>
                    <input id="new-job-concurrency" type="number" name="concurrency" min="1" max=limits::MAX_CONCURRENCY.to_string() step="1"
                        prop:value=concurrency_value on:input=concurrency_input />
                </div>
                <div class="field">
                    <label for="new-job-threshold">"Halt after failures"</label>
                    <div class="pair">
                        <select id="new-job-threshold" name="threshold" on:change=move |ev| {
                            let kind = match event_target_value(&ev).as_str() {
                                "count" => ThresholdKind::Count,
                                "percent" => ThresholdKind::Percent,
                                _ => ThresholdKind::None,
                            };
                            draft.update(|d| d.threshold = kind);
                        }>
                            <option value="none" prop:selected=move || threshold() == ThresholdKind::None>"never"</option>
                            <option value="count" prop:selected=move || threshold() == ThresholdKind::Count>"devices failed"</option>
                            <option value="percent" prop:selected=move || threshold() == ThresholdKind::Percent>"% of devices failed"</option>
                        </select>
                        <input type="number" name="threshold_value" min="1" step="1" aria-label="Failure threshold"
                            hidden=move || threshold() == ThresholdKind::None
                            prop:value=threshold_value on:input=threshold_input />
                    </div>
                </div>
                <div class="field">
                    <label for="new-job-offline">"Offline devices"</label>
                    <div class="pair">
                        <select id="new-job-offline" name="offline" on:change=move |ev| {
                            let policy = if event_target_value(&ev) == "wait" { OfflinePolicy::Wait } else { OfflinePolicy::Skip };
                            draft.update(|d| d.offline = policy);
                        }>
                            <option value="skip" prop:selected=move || !waits()>"skip them"</option>
                            <option value="wait" prop:selected=waits>"wait for them"</option>
                        </select>
                        <input type="number" name="wait_minutes" min="1" step="any" aria-label="Minutes to wait"
                            hidden=move || !waits() prop:value=wait_value on:input=wait_input />
                        <span class="muted" hidden=move || !waits()>"min"</span>
                    </div>
                </div>
                <div class="field">
                    <label for="new-job-timeout">"Timeout per device (s)"</label>
                    <input id="new-job-timeout" type="number" name="timeout_s" min="0.1" max=(timeouts::MAX_MS / 1000).to_string() step="any"
                        placeholder=move || if updating() { UPDATE_TIMEOUT_MS / 1000 } else { timeouts::DEFAULT_MS / 1000 }.to_string()
                        prop:value=timeout_value on:input=timeout_input />
                    <small class="muted" hidden=move || !updating() data-testid="update-timeout-note">
                        {format!("Updates: {} s unless set, the longest allowed; downloads over slow links take time.", UPDATE_TIMEOUT_MS / 1000)}
                    </small>
                </div>
            </fieldset>
            <p class="error" role="alert" data-testid="job-form-error" data-code=move || error.get().and_then(|(code, _)| code)>
                {move || error.get().map(|(_, message)| message)}
            </p>
            <button type="submit" data-testid="job-start" disabled=move || sending.get()>
                {move || match (sending.get(), updating()) {
                    (true, _) => "Starting…",
                    (false, true) => "Start the update",
                    (false, false) => "Start job",
                }}
            </button>
        </form>
    }
}

/// The artifacts to install, newest first, and the one chosen.
#[component]
fn ArtifactPicker(artifact: RwSignal<String>) -> impl IntoView {
    let list = Resource::new(|| (), |_| list_artifacts());
    view! {
        <p class="muted wide">
            "Each device downloads the artifact from its own link, checks its hash, size and signature, installs it and restarts into it; it counts as updated once it is back online with the new version. Devices must run an agent with "
            <code>"[update] enabled = true"</code> "."
        </p>
        <div class="field wide">
            <label for="new-job-artifact">"Artifact"</label>
            <Transition fallback=|| view! { <span class="muted">"Loading artifacts…"</span> }>
                {move || list.get().map(|answer| match answer {
                    Err(e) => view! { <p class="error" role="alert" data-code=e.code>{e.message}</p> }.into_any(),
                    Ok(list) if list.is_empty() => view! {
                        <p class="muted" data-testid="job-no-artifacts">"No artifact yet: " <a href="/updates">"upload one on the Updates page"</a> "."</p>
                    }.into_any(),
                    Ok(list) => {
                        let missing = artifact.with_untracked(|id| !id.is_empty() && !list.iter().any(|a| a.id.0 == *id));
                        let chosen = {
                            let list = list.clone();
                            move || artifact.with(|id| list.iter().find(|a| a.id.0 == *id).cloned())
                        };
                        view! {
                            <select id="new-job-artifact" name="artifact" data-testid="job-artifact"
                                on:change=move |ev| artifact.set(event_target_value(&ev))>
                                <option value="" prop:selected=move || artifact.with(String::is_empty)>"Choose an artifact…"</option>
                                {list.into_iter().map(|a| {
                                    let id = a.id.0.clone();
                                    let selected = {
                                        let id = id.clone();
                                        move || artifact.with(|chosen| *chosen == id)
                                    };
                                    let label = format!("{} · {}", artifact_label(&a.name, &a.version, &a.arch), size_text(a.size));
                                    view! { <option value=id prop:selected=selected>{label}</option> }
                                }).collect_view()}
                            </select>
                            {missing.then(|| view! {
                                <small class="error" role="alert">"The artifact asked for is not (or no longer) on the server."</small>
                            })}
                            {move || chosen().map(|a| view! {
                                <small class="muted" data-testid="job-artifact-chosen">
                                    "SHA-256 " <code title=a.sha256.clone()>{short_sha(&a.sha256)}</code>
                                    " · uploaded by " {a.created_by.clone()}
                                </small>
                            })}
                        }.into_any()
                    }
                })}
            </Transition>
        </div>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str, kind: &str, online: bool, commands: &[&str]) -> DeviceView {
        DeviceView {
            id: DeviceId::new(id).unwrap(),
            kind: kind.into(),
            firmware: "1".into(),
            online,
            since_ms: 0,
            last_seen_ms: 0,
            heartbeat_ms: 1_000,
            capabilities: serde_json::from_value(serde_json::json!({
                "commands": commands.iter().map(|c| serde_json::json!({ "name": c })).collect::<Vec<_>>(),
            }))
            .unwrap(),
            latest: Default::default(),
            hello_refused: None,
        }
    }

    #[test]
    fn ids_are_split_checked_and_deduplicated() {
        let ids = parse_ids(" a, b\nc  a,,").unwrap();
        assert_eq!(
            ids.iter().map(DeviceId::as_str).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert!(parse_ids("ok bad.id").unwrap_err().contains("\"bad.id\""));
        assert!(parse_ids("  ").unwrap().is_empty());
    }

    #[test]
    fn the_draft_becomes_the_job_the_server_takes() {
        let draft = Draft {
            name: "  ".into(),
            ids: "gw-1 gw-2".into(),
            kind: "gateway".into(),
            online_only: true,
            concurrency: "2".into(),
            threshold: ThresholdKind::Percent,
            threshold_value: "10".into(),
            offline: OfflinePolicy::Wait,
            wait_minutes: "1.5".into(),
            timeout_s: "30".into(),
            ..Draft::default()
        };
        let job = draft.build("echo", BTreeMap::new()).unwrap();
        assert_eq!(job.name, None);
        assert_eq!(job.targets.ids.len(), 2);
        assert_eq!(job.targets.kind.as_deref(), Some("gateway"));
        assert_eq!(job.targets.online, Some(true));
        assert_eq!(job.targets.group, None);
        assert_eq!(job.concurrency, 2);
        assert_eq!(job.failure_threshold, Some(Threshold::Percent(10)));
        assert_eq!(job.wait_ms, Some(90_000));
        assert_eq!(job.timeout_ms, Some(30_000));
        // The defaults: no threshold, offline devices skipped, the server's timeout.
        let plain = Draft {
            all: true,
            ..Draft::default()
        }
        .build("reboot", BTreeMap::new())
        .unwrap();
        assert_eq!(plain.concurrency, limits::DEFAULT_CONCURRENCY);
        assert_eq!(
            (plain.failure_threshold, plain.wait_ms, plain.timeout_ms),
            (None, None, None)
        );
    }

    #[test]
    fn draft_mistakes_read_clearly() {
        let all = || Draft {
            all: true,
            ..Draft::default()
        };
        let cases = [
            (Draft::default(), "echo", "choose the devices"),
            (all(), " ", "choose the command"),
            (
                Draft {
                    concurrency: "0".into(),
                    ..all()
                },
                "echo",
                "devices at once must be between 1 and",
            ),
            (
                Draft {
                    concurrency: "two".into(),
                    ..all()
                },
                "echo",
                "devices at once must be a whole number",
            ),
            (
                Draft {
                    threshold: ThresholdKind::Percent,
                    threshold_value: "300".into(),
                    ..all()
                },
                "echo",
                "between 1 and 100 %",
            ),
            (
                Draft {
                    threshold: ThresholdKind::Count,
                    threshold_value: "0".into(),
                    ..all()
                },
                "echo",
                "at least 1 device",
            ),
            (
                Draft {
                    offline: OfflinePolicy::Wait,
                    wait_minutes: "0".into(),
                    ..all()
                },
                "echo",
                "minutes to wait",
            ),
            (
                Draft {
                    timeout_s: "900".into(),
                    ..all()
                },
                "echo",
                "between 0.1 and 300 seconds",
            ),
        ];
        for (draft, command, message) in cases {
            let error = draft.build(command, BTreeMap::new()).unwrap_err();
            assert!(error.contains(message), "{error:?} lacks {message:?}");
        }
    }

    #[test]
    fn an_update_names_its_artifact_and_takes_the_longest_timeout() {
        let draft = Draft {
            group: "lab".into(),
            ..Draft::default()
        };
        let job = draft.build_update(" 0af3 ").unwrap();
        assert_eq!(job.command, builtin::UPDATE);
        assert_eq!(job.artifact, Some(ArtifactId("0af3".into())));
        assert!(job.args.is_empty());
        assert_eq!(job.targets.group.as_deref(), Some("lab"));
        assert_eq!(job.timeout_ms, Some(timeouts::MAX_MS));
        // A timeout given is kept.
        let given = Draft {
            timeout_s: "90".into(),
            ..draft.clone()
        };
        assert_eq!(given.build_update("0af3").unwrap().timeout_ms, Some(90_000));
        assert_eq!(
            draft.build_update(" ").unwrap_err(),
            "choose the artifact to install"
        );
        // Any other command keeps the server's default.
        assert_eq!(
            draft.build("echo", BTreeMap::new()).unwrap().timeout_ms,
            None
        );
    }

    #[test]
    fn typed_arguments_are_a_json_object() {
        assert_eq!(parse_args(" ").unwrap(), BTreeMap::new());
        assert_eq!(
            parse_args(r#"{"seconds": 5}"#).unwrap()["seconds"],
            serde_json::json!(5)
        );
        assert!(parse_args("[1]").unwrap_err().contains("JSON object"));
        assert!(parse_args("{").unwrap_err().contains("not valid JSON"));
    }

    #[test]
    fn the_commands_of_the_devices_chosen_are_offered() {
        let devices = [
            device("gw-1", "gateway", true, &["echo", "reboot"]),
            device("gw-2", "gateway", false, &["echo"]),
            device("th-1", "thermostat", true, &["set_target"]),
        ];
        let offers = |selector: Selector| {
            let k = known(&selector, &devices);
            let names = k
                .offers
                .iter()
                .map(|o| (o.spec.name.clone(), o.devices))
                .collect::<Vec<_>>();
            (k.devices, names)
        };
        let by_id = Selector {
            ids: vec![
                DeviceId::new("gw-2").unwrap(),
                DeviceId::new("th-1").unwrap(),
            ],
            ..Selector::default()
        };
        assert_eq!(
            offers(by_id),
            (2, vec![("echo".into(), 1), ("set_target".into(), 1)])
        );
        let kind = Selector {
            kind: Some("gateway".into()),
            online: Some(true),
            ..Selector::default()
        };
        assert_eq!(
            offers(kind),
            (1, vec![("echo".into(), 1), ("reboot".into(), 1)])
        );
        // Groups are the server's to tell: every device could be in one.
        let group = Selector {
            group: Some("lab".into()),
            ..Selector::default()
        };
        assert_eq!(offers(group).0, 3);
        assert_eq!(offers(Selector::default()), (0, vec![]));
    }
}
