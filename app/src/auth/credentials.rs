//! Admins manage device credentials: which devices may connect to the broker. A device
//! is provisioned by its id (checked here with `protocol`'s own rules, and again by the
//! server); its secret, the broker's address and a ready command line to start its
//! agent are shown once, right after provisioning or rotating, and never again (the
//! server keeps only the secret's hash). Rotating and revoking ask first.

use leptos::prelude::*;
use leptos_meta::Title;
use protocol::{
    DeviceId,
    auth::{DeviceCredential, Role},
};

use super::NeedsRole;
use crate::fleet::{
    AppError, Provisioned, live::use_live, provision_device, provisioned_devices, revoke_device,
    rotate_device_secret,
};

#[component]
pub fn DeviceCredentialsPage() -> impl IntoView {
    view! {
        <Title text="Devices · Tether" />
        <NeedsRole role=Role::Admin>
            <Credentials />
        </NeedsRole>
    }
}

/// A change to a provisioned device that is asked about first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Rotate,
    Revoke,
}

/// What is wrong with `text` as a device id; `None` when it is a valid one, or still
/// empty (nothing to complain about yet).
pub fn id_problem(text: &str) -> Option<String> {
    if text.is_empty() {
        return None;
    }
    DeviceId::new(text).err().map(|_| {
        "A device id is 1 to 64 ASCII letters, digits, '-' or '_' (no spaces or dots).".to_owned()
    })
}

/// A broker URL without the user and password it may carry: the device's secret is
/// given to the agent apart from it.
pub fn without_credential(url: &str) -> String {
    let Some(scheme) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme..];
    let authority = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority].rfind('@') {
        Some(at) => format!("{}{}", &url[..scheme], &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// `text` as one word for a POSIX shell, in single quotes.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The command line that starts the device's agent with its credential. `url` is the
/// broker's address without credential; without one, a placeholder to fill in.
pub fn agent_command(url: Option<&str>, id: &str, secret: &str) -> String {
    // The id needs no quotes: a device id is letters, digits, '-' and '_'.
    let url = shell_quote(url.unwrap_or("<broker URL>"));
    format!(
        "TETHER_AMQP_URL={url} TETHER_DEVICE_SECRET={} tether-agent --device-id {id}",
        shell_quote(secret)
    )
}

/// The server's error, said for this page where it can say more.
fn explain(error: AppError, id: &str) -> AppError {
    let message = match error.code.as_str() {
        "already_exists" => format!(
            "\"{id}\" is already provisioned. Rotate its secret in the list to get a new one, or revoke it first."
        ),
        "not_found" => format!("\"{id}\" is not provisioned (any more); the list is refreshed."),
        "store_unavailable" => {
            "The database is unavailable, so nothing was changed; try again shortly.".to_owned()
        }
        _ => return error,
    };
    AppError { message, ..error }
}

#[component]
fn Credentials() -> impl IntoView {
    let live = use_live();
    let devices = Resource::new(|| (), |_| provisioned_devices());
    // The credential just made: shown once, gone on reload.
    let shown = RwSignal::new(None::<DeviceCredential>);
    let failed = RwSignal::new(None::<AppError>);
    let done = RwSignal::new(None::<String>);
    let asking = RwSignal::new(None::<(Change, String)>);
    let busy = RwSignal::new(false);
    let id = RwSignal::new(String::new());
    let problem = Memo::new(move |_| id_problem(id.get().trim()));
    // Effects run only in the browser: the page marks itself once hydrated, so tests
    // can tell its buttons work.
    let hydrated = RwSignal::new(false);
    Effect::new(move |_| hydrated.set(true));

    let provision = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let wanted = id.get_untracked().trim().to_owned();
        if let Some(why) = id_problem(&wanted).or_else(|| {
            wanted
                .is_empty()
                .then(|| "Type the id of the device to provision.".to_owned())
        }) {
            failed.set(Some(AppError::new("invalid_input", why)));
            return;
        }
        busy.set(true);
        leptos::task::spawn_local(async move {
            let answer = provision_device(wanted.clone()).await;
            busy.set(false);
            match answer {
                Ok(credential) => {
                    shown.set(Some(credential));
                    failed.set(None);
                    done.set(None);
                    id.set(String::new());
                    devices.refetch();
                }
                Err(error) => failed.set(Some(explain(error, &wanted))),
            }
        });
    };
    let confirm = move |change: Change, device: String| {
        busy.set(true);
        leptos::task::spawn_local(async move {
            let answer = match change {
                Change::Rotate => rotate_device_secret(device.clone()).await.map(Some),
                Change::Revoke => revoke_device(device.clone()).await.map(|()| None),
            };
            busy.set(false);
            asking.set(None);
            match answer {
                Ok(Some(credential)) => {
                    shown.set(Some(credential));
                    failed.set(None);
                    done.set(None);
                }
                Ok(None) => {
                    if shown.with_untracked(|c| c.as_ref().is_some_and(|c| c.id == device)) {
                        shown.set(None);
                    }
                    failed.set(None);
                    done.set(Some(format!(
                        "Revoked {device}: it is disconnected and can no longer log in."
                    )));
                }
                Err(error) => failed.set(Some(explain(error, &device))),
            }
            devices.refetch();
        });
    };
    // Whether the device is connected: live if the tab shows it, else what the server
    // said with the list.
    let online = move |device: &Provisioned| -> Option<bool> {
        let id = DeviceId::new(device.device.id.as_str()).ok()?;
        live.devices
            .with(|all| all.get(&id).map(|d| d.online))
            .or(device.online)
    };

    view! {
        <section class="card" aria-labelledby="devices-heading" data-testid="credentials" data-hydrated=move || hydrated.get().then_some("true")>
            <h1 id="devices-heading">"Device credentials"</h1>
            <p class="muted">"A device connects to the broker with its id as the user name and a secret of its own. Only provisioned devices can log in; revoking one disconnects it."</p>
            {move || shown.get().map(|credential| view! { <Shown credential on_done=move || shown.set(None) /> })}
            {move || done.get().map(|m| view! { <p class="ok" role="status">{m}</p> })}
            {move || failed.get().map(|e| view! { <p class="error" role="alert" data-code=e.code>{e.message}</p> })}
            <Transition fallback=|| view! { <p class="muted">"Loading devices…"</p> }>
                {move || devices.get().map(|answer| match answer {
                    Err(e) => view! { <p class="error" role="alert" data-code=e.code>{e.message}</p> }.into_any(),
                    Ok(list) if list.is_empty() => view! { <p class="empty" data-testid="no-provisioned">"No device is provisioned yet."</p> }.into_any(),
                    Ok(list) => view! {
                        <table class="table" data-testid="provisioned">
                            <thead><tr><th>"Device"</th><th>"Status"</th><th>"Provisioned"</th><th>"Secret last rotated"</th><th></th></tr></thead>
                            <tbody>
                                {list.into_iter().map(|device| {
                                    let status = {
                                        let device = device.clone();
                                        move || match online(&device) {
                                            Some(true) => view! { <span class="badge online" data-testid="presence">"online"</span> },
                                            Some(false) => view! { <span class="badge offline" data-testid="presence">"offline"</span> },
                                            None => view! { <span class="badge muted" data-testid="presence">"never connected"</span> },
                                        }
                                    };
                                    let id = device.device.id.clone();
                                    let actions = move || {
                                        let id = id.clone();
                                        match asking.get() {
                                            Some((change, about)) if about == id => {
                                                let (question, yes) = match change {
                                                    Change::Rotate => (format!("Give {id} a new secret? The old one stops working: its agent must be restarted with the new one."), "Yes, rotate"),
                                                    Change::Revoke => (format!("Revoke {id}? It is disconnected and can no longer log in."), "Yes, revoke"),
                                                };
                                                view! {
                                                    <span class="confirm" role="alert">
                                                        <span>{question}</span>
                                                        <button type="button" class="danger" disabled=move || busy.get() on:click=move |_| confirm(change, id.clone())>{yes}</button>
                                                        <button type="button" class="link" on:click=move |_| asking.set(None)>"Cancel"</button>
                                                    </span>
                                                }.into_any()
                                            }
                                            _ => {
                                                let other = id.clone();
                                                view! {
                                                    <span class="actions">
                                                        <button type="button" class="link" on:click=move |_| asking.set(Some((Change::Rotate, id.clone())))>"Rotate secret"</button>
                                                        <button type="button" class="link" on:click=move |_| asking.set(Some((Change::Revoke, other.clone())))>"Revoke"</button>
                                                    </span>
                                                }.into_any()
                                            }
                                        }
                                    };
                                    view! {
                                        <tr data-device=device.device.id.clone()>
                                            <th scope="row"><a href=format!("/devices/{}", device.device.id)>{device.device.id.clone()}</a></th>
                                            <td>
                                                {status}
                                                {device.device.hello_refused.clone().map(|refused| view! {
                                                    <small class="error refused-hello" role="alert" data-testid="hello-refused">
                                                        {format!("Its last hello was refused ({}): {}", crate::auth::audit::when(refused.at_ms), refused.problem)}
                                                    </small>
                                                })}
                                            </td>
                                            <td>{crate::auth::audit::when(device.device.created_ms)}</td>
                                            <td>{device.device.rotated_ms.map_or_else(|| "never".to_owned(), crate::auth::audit::when)}</td>
                                            <td>{actions}</td>
                                        </tr>
                                    }
                                }).collect_view()}
                            </tbody>
                        </table>
                    }.into_any(),
                })}
            </Transition>
        </section>
        <section class="card" aria-labelledby="provision-heading">
            <h2 id="provision-heading">"Provision a device"</h2>
            <form on:submit=provision class="row" data-testid="provision">
                <label>"Device id"
                    <input
                        name="id"
                        required
                        maxlength="64"
                        autocomplete="off"
                        spellcheck="false"
                        placeholder="boiler-1"
                        aria-invalid=move || problem.get().is_some().to_string()
                        aria-describedby="device-id-problem"
                        prop:value=id
                        on:input=move |ev| {
                            id.set(event_target_value(&ev));
                            failed.set(None);
                        }
                    />
                </label>
                <button type="submit" disabled=move || busy.get()>"Provision"</button>
            </form>
            <p id="device-id-problem" class="error" data-testid="id-problem">{move || problem.get()}</p>
        </section>
    }
}

/// The credential just made, with the warning that it is not shown again.
#[component]
fn Shown(credential: DeviceCredential, on_done: impl Fn() + 'static) -> impl IntoView {
    let url = credential.amqp_url.as_deref().map(without_credential);
    let command = agent_command(url.as_deref(), &credential.id, &credential.secret);
    let copied = RwSignal::new(None::<bool>);
    let copy = {
        let command = command.clone();
        move |_| copy_text(&command, copied)
    };
    view! {
        <div class="secret-once" data-testid="credential" data-device=credential.id.clone()>
            <p class="warning" role="alert">
                <strong>"Copy the secret now: it will not be shown again."</strong>
                " Tether keeps only its hash; if it is lost, rotate the secret."
            </p>
            <dl class="facts">
                <dt>"Device"</dt>
                <dd data-testid="credential-device">{credential.id.clone()}</dd>
                <dt>"Broker URL"</dt>
                <dd>{match url {
                    Some(url) => view! { <code data-testid="broker-url">{url}</code> }.into_any(),
                    None => view! { <span class="muted" data-testid="broker-url">"unknown to this server: use your broker's address"</span> }.into_any(),
                }}</dd>
                <dt>"Secret"</dt>
                <dd><code data-testid="device-secret">{credential.secret.clone()}</code></dd>
            </dl>
            <p>"Start its agent with:"</p>
            <pre data-testid="agent-command">{command}</pre>
            <div class="row-buttons">
                <button type="button" on:click=copy>"Copy command"</button>
                <span role="status" data-testid="copied" class="muted">{move || match copied.get() {
                    Some(true) => "Copied.",
                    Some(false) => "This browser cannot copy here; select the command and copy it by hand.",
                    None => "",
                }}</span>
                <button type="button" class="secondary" on:click=move |_| on_done()>"Done, hide it"</button>
            </div>
        </div>
    }
}

/// Puts `text` on the clipboard, if the browser lets the page (the Clipboard API exists
/// only in secure contexts: HTTPS or localhost); `copied` tells how it went.
#[cfg(feature = "hydrate")]
pub(crate) fn copy_text(text: &str, copied: RwSignal<Option<bool>>) {
    use wasm_bindgen::{JsCast, JsValue, closure::Closure};
    let get = |on: &JsValue, name: &str| {
        js_sys::Reflect::get(on, &JsValue::from_str(name))
            .ok()
            .filter(|v| !v.is_undefined() && !v.is_null())
    };
    let written = get(&js_sys::global(), "navigator")
        .and_then(|navigator| get(&navigator, "clipboard"))
        .and_then(|clipboard| {
            let write = get(&clipboard, "writeText")?
                .dyn_into::<js_sys::Function>()
                .ok()?;
            write.call1(&clipboard, &JsValue::from_str(text)).ok()
        });
    let Some(written) = written else {
        copied.set(Some(false));
        return;
    };
    // `promise.then(ok, refused)`, each callback freed once called.
    let ok = Closure::once_into_js(move |_: JsValue| copied.set(Some(true)));
    let refused = Closure::once_into_js(move |_: JsValue| copied.set(Some(false)));
    let then = get(&written, "then").and_then(|then| then.dyn_into::<js_sys::Function>().ok());
    if then
        .and_then(|then| then.call2(&written, &ok, &refused).ok())
        .is_none()
    {
        copied.set(Some(false));
    }
}

#[cfg(not(feature = "hydrate"))]
pub(crate) fn copy_text(_: &str, _: RwSignal<Option<bool>>) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_with_the_protocols_rules() {
        assert_eq!(id_problem(""), None, "nothing typed yet");
        assert_eq!(id_problem("boiler-1"), None);
        assert_eq!(id_problem("pump_2"), None);
        assert_eq!(id_problem(&"a".repeat(64)), None);
        for bad in ["two words", "a.b", "ü", "x*", &"a".repeat(65)] {
            assert!(id_problem(bad).is_some(), "{bad:?} passed");
        }
    }

    #[test]
    fn the_url_is_shown_without_its_credential() {
        assert_eq!(
            without_credential("amqp://boiler-1:0a1b@127.0.0.1:5672/%2f"),
            "amqp://127.0.0.1:5672/%2f"
        );
        assert_eq!(
            without_credential("amqps://pump_2:ff@broker.example.com/site?heartbeat=10"),
            "amqps://broker.example.com/site?heartbeat=10"
        );
        assert_eq!(
            without_credential("amqp://127.0.0.1:5673"),
            "amqp://127.0.0.1:5673"
        );
        // An @ after the authority is not a credential.
        assert_eq!(
            without_credential("amqp://host/v@host"),
            "amqp://host/v@host"
        );
        assert_eq!(without_credential("not a url"), "not a url");
    }

    #[test]
    fn the_command_line_is_ready_to_paste() {
        assert_eq!(
            agent_command(Some("amqp://127.0.0.1:5673/%2f"), "boiler-1", "0a1b"),
            "TETHER_AMQP_URL='amqp://127.0.0.1:5673/%2f' TETHER_DEVICE_SECRET='0a1b' tether-agent --device-id boiler-1"
        );
        assert_eq!(
            agent_command(None, "d", "s"),
            "TETHER_AMQP_URL='<broker URL>' TETHER_DEVICE_SECRET='s' tether-agent --device-id d"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn errors_say_what_to_do() {
        let taken = explain(AppError::new("already_exists", "x"), "boiler-1");
        assert_eq!(taken.code, "already_exists");
        assert!(taken.message.contains("already provisioned"));
        let down = explain(AppError::new("store_unavailable", "x"), "b");
        assert!(down.message.contains("database is unavailable"));
        let other = AppError::new("forbidden", "needs admin");
        assert_eq!(explain(other.clone(), "b"), other);
    }
}
