//! A form per command a device announced, generated from its argument specs, and the
//! checks the browser makes before sending (the server's own rules, so mistakes show
//! at once).

use std::collections::BTreeMap;

use leptos::prelude::*;
use protocol::{
    ArgKind, ArgSpec, CommandSpec, DeviceId,
    api::{SendCommand, timeouts},
};
use serde_json::Value;

use crate::fleet::{live::use_live, send_command};

/// A form for one command, generated from its argument specs. Arguments are checked in
/// the browser with the same rules the server applies, so mistakes show at once.
#[component]
pub fn CommandForm(device_id: DeviceId, spec: CommandSpec) -> impl IntoView {
    let live = use_live();
    let values: RwSignal<BTreeMap<String, String>> = RwSignal::new(initial_values(&spec));
    let timeout_s = RwSignal::new((timeouts::DEFAULT_MS / 1000).to_string());
    let error = RwSignal::new(None::<String>);
    // The server's code for the error shown (none for the browser's own checks).
    let error_code = RwSignal::new(None::<String>);
    let sending = RwSignal::new(false);
    let form_id = format!("command-{}", spec.name);
    let title = spec.name.replace('_', " ");
    let send_label = format!("Send {title}");

    let submit = {
        let (spec, device_id) = (spec.clone(), device_id.clone());
        move |event: leptos::ev::SubmitEvent| {
            event.prevent_default();
            let request =
                match build_request(&spec, &values.get_untracked(), &timeout_s.get_untracked()) {
                    Ok(request) => request,
                    Err(message) => {
                        error_code.set(None);
                        return error.set(Some(message));
                    }
                };
            error.set(None);
            error_code.set(None);
            sending.set(true);
            let device = device_id.to_string();
            leptos::task::spawn_local(async move {
                match send_command(device, request).await {
                    Ok(command) => live.upsert_command(command),
                    Err(e) => {
                        error_code.set(Some(e.code));
                        error.set(Some(e.message));
                    }
                }
                sending.set(false);
            });
        }
    };

    view! {
        <form class="command" id=form_id.clone() aria-label=title.clone() novalidate on:submit=submit>
            <h3>{title.clone()}</h3>
            {(!spec.description.is_empty()).then(|| view! { <p class="muted">{spec.description.clone()}</p> })}
            {spec.args.iter().map(|arg| view! { <ArgInput form_id=form_id.clone() arg=arg.clone() values /> }).collect_view()}
            <label class="field timeout">
                <span>"Deadline (s)"</span>
                <input type="number" min="0.1" max="300" step="any" name="timeout_s" prop:value=move || timeout_s.get()
                    on:input=move |ev| timeout_s.set(event_target_value(&ev)) />
            </label>
            <p class="error" role="alert" data-testid="form-error" data-code=move || error_code.get()>{move || error.get()}</p>
            <button type="submit" disabled=move || sending.get()>
                {move || if sending.get() { "Sending…".to_owned() } else { send_label.clone() }}
            </button>
        </form>
    }
    .into_any()
}

/// One argument's input, labelled, with its hint; its text is `values[arg.name]`.
/// Shared with the job form ([`crate::jobs::new`]).
#[component]
pub(crate) fn ArgInput(
    form_id: String,
    arg: ArgSpec,
    values: RwSignal<BTreeMap<String, String>>,
) -> impl IntoView {
    let input_id = format!("{form_id}-{}", arg.name);
    let name = arg.name.clone();
    let value = {
        let name = name.clone();
        move || values.with(|v| v.get(&name).cloned().unwrap_or_default())
    };
    let set = {
        let name = name.clone();
        move |text: String| {
            values.update(|v| {
                v.insert(name.clone(), text);
            })
        }
    };
    // Numbers share one input: bounds and step differ by kind.
    let numeric = match &arg.kind {
        ArgKind::Integer { min, max } => {
            Some((min.map(|m| m.to_string()), max.map(|m| m.to_string()), "1"))
        }
        ArgKind::Number { min, max } => Some((
            min.map(|m| m.to_string()),
            max.map(|m| m.to_string()),
            "any",
        )),
        _ => None,
    };
    let hint = match (&arg.kind, &numeric) {
        (_, Some((min, max, _))) => range_hint(min.clone(), max.clone()),
        (ArgKind::String { max_len: Some(n) }, _) => format!("up to {n} characters"),
        _ => String::new(),
    };
    let label = format!(
        "{}{}",
        arg.name.replace('_', " "),
        if arg.required { " (required)" } else { "" }
    );
    let control = match arg.kind.clone() {
        ArgKind::Boolean => {
            let set = set.clone();
            view! {
                <input id=input_id.clone() type="checkbox" name=name.clone() prop:checked=move || value() == "true"
                    on:change=move |ev| set(event_target_checked(&ev).to_string()) />
            }.into_any()
        }
        ArgKind::Choice { choices } => {
            let set = set.clone();
            view! {
                <select id=input_id.clone() name=name.clone() prop:value=value on:change=move |ev| set(event_target_value(&ev))>
                    {(!arg.required).then(|| view! { <option value="">"—"</option> })}
                    {choices.into_iter().map(|c| view! { <option value=c.clone()>{c.clone()}</option> }).collect_view()}
                </select>
            }.into_any()
        }
        ArgKind::String { max_len } => {
            let set = set.clone();
            view! {
                <input id=input_id.clone() type="text" name=name.clone() maxlength=max_len.map(|m| m.to_string())
                    prop:value=value on:input=move |ev| set(event_target_value(&ev)) />
            }.into_any()
        }
        ArgKind::Integer { .. } | ArgKind::Number { .. } => {
            let (min, max, step) = numeric.unwrap_or_default();
            let set = set.clone();
            view! {
                <input id=input_id.clone() type="number" step=step name=name.clone() min=min max=max
                    prop:value=value on:input=move |ev| set(event_target_value(&ev)) />
            }
            .into_any()
        }
    };
    view! {
        <div class="field">
            <label for=input_id>{label}</label>
            {control}
            {(!hint.is_empty() || !arg.description.is_empty()).then(|| view! {
                <small class="muted">{arg.description.clone()} {(!hint.is_empty()).then(|| format!(" ({hint})"))}</small>
            })}
        </div>
    }
    .into_any()
}

fn range_hint(min: Option<String>, max: Option<String>) -> String {
    match (min, max) {
        (Some(min), Some(max)) => format!("{min} to {max}"),
        (Some(min), None) => format!("at least {min}"),
        (None, Some(max)) => format!("at most {max}"),
        (None, None) => String::new(),
    }
}

/// How a JSON value shows in a text input.
pub(crate) fn input_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The text of each argument's input before anything is typed: its default, if any.
pub(crate) fn initial_values(spec: &CommandSpec) -> BTreeMap<String, String> {
    spec.args
        .iter()
        .map(|arg| {
            (
                arg.name.clone(),
                arg.default.as_ref().map(input_text).unwrap_or_default(),
            )
        })
        .collect()
}

/// Turns the form's text into typed arguments and checks them against the spec.
pub(super) fn build_request(
    spec: &CommandSpec,
    values: &BTreeMap<String, String>,
    timeout_s: &str,
) -> Result<SendCommand, String> {
    let args = build_args(spec, values)?;
    let timeout_ms = timeout_s
        .trim()
        .parse::<f64>()
        .ok()
        .map(|s| (s * 1000.0).round() as u64)
        .filter(|ms| (timeouts::MIN_MS..=timeouts::MAX_MS).contains(ms))
        .ok_or_else(|| {
            format!(
                "the deadline must be between {} and {} seconds",
                timeouts::MIN_MS as f64 / 1000.0,
                timeouts::MAX_MS / 1000
            )
        })?;
    Ok(SendCommand {
        name: spec.name.clone(),
        args,
        timeout_ms: Some(timeout_ms),
    })
}

/// The inputs' text as typed arguments, checked against the spec (the server's rules).
pub(crate) fn build_args(
    spec: &CommandSpec,
    values: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, Value>, String> {
    let mut args = BTreeMap::new();
    for arg in &spec.args {
        let text = values.get(&arg.name).map(|t| t.trim()).unwrap_or_default();
        if text.is_empty() && !matches!(arg.kind, ArgKind::Boolean) {
            continue;
        }
        let value = match &arg.kind {
            ArgKind::Boolean => Value::Bool(text == "true"),
            ArgKind::Integer { .. } => text
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| format!("argument \"{}\" must be a whole number", arg.name))?,
            ArgKind::Number { .. } => text
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .map(Value::from)
                .ok_or_else(|| format!("argument \"{}\" must be a number", arg.name))?,
            ArgKind::String { .. } | ArgKind::Choice { .. } => Value::String(text.to_owned()),
        };
        args.insert(arg.name.clone(), value);
    }
    spec.validate(&args).map_err(|e| e.to_string())?;
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> CommandSpec {
        serde_json::from_value(serde_json::json!({
            "name": "set_target",
            "args": [
                {"name": "celsius", "type": "number", "min": 5.0, "max": 30.0, "required": true},
                {"name": "hold", "type": "integer"},
                {"name": "quiet", "type": "boolean"}
            ]
        }))
        .unwrap()
    }

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn form_text_becomes_typed_arguments() {
        let request = build_request(
            &spec(),
            &values(&[("celsius", " 21.5 "), ("hold", "30"), ("quiet", "true")]),
            "10",
        )
        .unwrap();
        assert_eq!(request.args["celsius"], serde_json::json!(21.5));
        assert_eq!(request.args["hold"], serde_json::json!(30));
        assert_eq!(request.args["quiet"], serde_json::json!(true));
        assert_eq!(request.timeout_ms, Some(10_000));
    }

    #[test]
    fn form_mistakes_read_clearly() {
        let cases = [
            (
                values(&[("celsius", "99")]),
                "10",
                "argument \"celsius\" is 99, outside the allowed range 5..=30",
            ),
            (
                values(&[("celsius", "")]),
                "10",
                "missing required argument \"celsius\"",
            ),
            (
                values(&[("celsius", "warm")]),
                "10",
                "argument \"celsius\" must be a number",
            ),
            (
                values(&[("celsius", "20"), ("hold", "1.5")]),
                "10",
                "argument \"hold\" must be a whole number",
            ),
            (
                values(&[("celsius", "20")]),
                "900",
                "the deadline must be between 0.1 and 300 seconds",
            ),
        ];
        for (given, timeout, message) in cases {
            assert_eq!(
                build_request(&spec(), &given, timeout).unwrap_err(),
                message
            );
        }
    }
}
