//! Software updates: the files devices install with the agent's built-in `update`
//! command (artifacts), and the key they verify them with.
//!
//! - [`UpdatesPage`] (`/updates`): the artifacts, newest first, each with "Roll out"
//!   (operators and admins: the new-job form at `/jobs?artifact=<id>`, the artifact
//!   chosen, see [`crate::jobs::new`]) and "Remove" (admins, asked first); for admins,
//!   the upload form ([`upload`]); and the server's update key, which agents are
//!   configured with.
//! - [`http`]: the browser's own requests to the artifacts API (the upload streams the
//!   file as the request's body, with its progress; the removal): the JSON API does that
//!   work and keeps the audit trail, so the server functions only read.
//!
//! A rollout is a job like any other; its page shows the artifact and each device's
//! stage as it happens (see [`crate::jobs::detail`]).

pub mod http;
pub mod upload;

use std::collections::BTreeSet;

use leptos::prelude::*;
use leptos_meta::Title;
use protocol::{
    artifact::{ArtifactId, ArtifactView},
    auth::Role,
};

use crate::{
    auth::{audit::when, credentials::copy_text, use_me},
    fleet::{AppError, list_artifacts, update_signing_key},
};

/// A size for people: `512 bytes`, `34.2 kB`, `3.4 MB`, `1.2 GB` (powers of 1000, as
/// the agent's progress messages count).
pub fn size_text(bytes: u64) -> String {
    let b = bytes as f64;
    if bytes < 1_000 {
        format!("{bytes} bytes")
    } else if bytes < 1_000_000 {
        format!("{:.1} kB", b / 1e3)
    } else if bytes < 1_000_000_000 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.1} GB", b / 1e9)
    }
}

/// The start of a SHA-256 (12 hex digits and an ellipsis), enough to tell files apart
/// at a glance; the whole one goes in a `title`.
pub fn short_sha(sha256: &str) -> String {
    match sha256.char_indices().nth(12) {
        Some((at, _)) => format!("{}…", &sha256[..at]),
        None => sha256.to_owned(),
    }
}

/// "tether-agent 2.0.0 (aarch64)".
pub fn artifact_label(name: &str, version: &str, arch: &str) -> String {
    format!("{name} {version} ({arch})")
}

/// The artifacts to show: those the server listed, those uploaded from this page since,
/// less those removed from it; newest first.
pub fn shown(
    read: Vec<ArtifactView>,
    added: &[ArtifactView],
    removed: &BTreeSet<ArtifactId>,
) -> Vec<ArtifactView> {
    let mut all = read;
    for artifact in added {
        if !all.iter().any(|a| a.id == artifact.id) {
            all.push(artifact.clone());
        }
    }
    all.retain(|a| !removed.contains(&a.id));
    all.sort_by(|a, b| {
        b.created_ms
            .cmp(&a.created_ms)
            .then_with(|| b.id.cmp(&a.id))
    });
    all
}

/// `text` made safe for a URL's path segment or query value (percent-encoded UTF-8).
pub fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[component]
pub fn UpdatesPage() -> impl IntoView {
    let me = use_me();
    let read = Resource::new(|| (), |_| list_artifacts());
    let key = Resource::new(|| (), |_| update_signing_key());
    // What this page changed since the list was read: shown at once.
    let added = RwSignal::new(Vec::<ArtifactView>::new());
    let removed = RwSignal::new(BTreeSet::<ArtifactId>::new());
    // Effects run only in the browser: the page marks itself once hydrated, so tests
    // can tell its buttons work.
    let hydrated = RwSignal::new(false);
    Effect::new(move |_| hydrated.set(true));
    let uploaded = Callback::new(move |artifact: ArtifactView| {
        removed.update(|r| {
            r.remove(&artifact.id);
        });
        added.update(|a| a.push(artifact));
    });

    view! {
        <Title text="Updates · Tether" />
        <section class="card" aria-labelledby="updates-heading" data-testid="updates"
            data-hydrated=move || hydrated.get().then_some("true")>
            <h1 id="updates-heading">"Software updates"</h1>
            <p class="lead">
                "Files devices install with the agent's built-in " <code>"update"</code>
                " command. Rolling one out is a job: each device downloads it, checks it, installs it and restarts into it, and goes back to its previous version if the new one does not come up."
            </p>
            <Transition fallback=|| view! { <p class="muted">"Loading artifacts…"</p> }>
                {move || read.get().map(|answer| match answer {
                    Err(e) => view! { <p class="error" role="alert" data-code=e.code>{e.message}</p> }.into_any(),
                    Ok(list) => view! { <ArtifactList read=list added removed /> }.into_any(),
                })}
            </Transition>
        </section>
        <Transition fallback=|| ()>
            {move || me.has(Role::Admin).then(|| view! {
                <section class="card" aria-labelledby="upload-heading" data-testid="upload">
                    <h2 id="upload-heading">"Upload an artifact"</h2>
                    <upload::UploadForm on_uploaded=uploaded />
                </section>
            })}
        </Transition>
        <SigningKey key />
    }
}

/// The artifacts, newest first, with their actions.
#[component]
fn ArtifactList(
    read: Vec<ArtifactView>,
    added: RwSignal<Vec<ArtifactView>>,
    removed: RwSignal<BTreeSet<ArtifactId>>,
) -> impl IntoView {
    let me = use_me();
    let asking = RwSignal::new(None::<ArtifactId>);
    let busy = RwSignal::new(false);
    let failed = RwSignal::new(None::<AppError>);
    let done = RwSignal::new(None::<String>);
    let list = move || added.with(|a| removed.with(|r| shown(read.clone(), a, r)));

    let remove = move |artifact: ArtifactView| {
        busy.set(true);
        failed.set(None);
        done.set(None);
        leptos::task::spawn_local(async move {
            let url = format!("/api/v1/artifacts/{}", encode_component(&artifact.id.0));
            let answer = http::delete(&url).await;
            busy.set(false);
            asking.set(None);
            let label = artifact_label(&artifact.name, &artifact.version, &artifact.arch);
            match answer {
                Ok(reply) if reply.status == 204 => {
                    removed.update(|r| {
                        r.insert(artifact.id.clone());
                    });
                    done.set(Some(format!("Removed {label}.")));
                }
                Ok(reply) => {
                    let error = http::error_of(reply.status, &reply.body);
                    if error.code == "unknown_artifact" {
                        // Removed meanwhile, elsewhere: gone all the same.
                        removed.update(|r| {
                            r.insert(artifact.id.clone());
                        });
                    }
                    failed.set(Some(error));
                }
                Err(error) => failed.set(Some(error)),
            }
        });
    };

    let row = move |artifact: ArtifactView| {
        let id = artifact.id.clone();
        let label = artifact_label(&artifact.name, &artifact.version, &artifact.arch);
        let roll_out = format!("/jobs?artifact={}", encode_component(&id.0));
        let actions = {
            let artifact = artifact.clone();
            move || {
                let operator = me.has(Role::Operator);
                let admin = me.has(Role::Admin);
                let artifact = artifact.clone();
                let id = artifact.id.clone();
                if asking.with(|a| a.as_ref() == Some(&id)) {
                    let question = format!(
                        "Remove {label}? Its file is deleted: devices of a rollout still running can no longer download it. This cannot be undone."
                    );
                    return view! {
                        <span class="confirm" role="alert">
                            <span>{question}</span>
                            <button type="button" class="danger" data-testid="artifact-remove-confirm"
                                disabled=move || busy.get() on:click=move |_| remove(artifact.clone())>"Yes, remove"</button>
                            <button type="button" class="link" on:click=move |_| asking.set(None)>"Keep it"</button>
                        </span>
                    }
                    .into_any();
                }
                view! {
                    <span class="actions">
                        {operator.then(|| view! {
                            <a class="button" href=roll_out.clone() data-testid="artifact-roll-out">"Roll out"</a>
                        })}
                        {admin.then(|| view! {
                            <button type="button" class="link" data-testid="artifact-remove"
                                on:click=move |_| asking.set(Some(id.clone()))>"Remove"</button>
                        })}
                    </span>
                }
                .into_any()
            }
        };
        view! {
            <tr data-testid="artifact-row" data-artifact=artifact.id.0.clone()>
                <th scope="row" data-testid="artifact-name">{artifact.name.clone()}</th>
                <td data-label="Version" data-testid="artifact-version">{artifact.version.clone()}</td>
                <td data-label="Arch" data-testid="artifact-arch">{artifact.arch.clone()}</td>
                <td data-label="Size" data-testid="artifact-size" title=format!("{} bytes", artifact.size)>{size_text(artifact.size)}</td>
                <td data-label="SHA-256"><code data-testid="artifact-sha256" title=artifact.sha256.clone()>{short_sha(&artifact.sha256)}</code></td>
                <td data-label="Uploaded" class="muted" data-testid="artifact-uploaded">
                    {when(artifact.created_ms)} " UTC by " {artifact.created_by.clone()}
                </td>
                <td class="artifact-actions">{actions}</td>
            </tr>
        }
    };

    view! {
        {move || done.get().map(|m| view! { <p class="ok" role="status" data-testid="artifact-done">{m}</p> })}
        {move || failed.get().map(|e| view! { <p class="error" role="alert" data-code=e.code>{e.message}</p> })}
        {move || {
            let list = list();
            if list.is_empty() {
                return view! { <p class="empty" data-testid="no-artifacts">"No artifact uploaded yet."</p> }.into_any();
            }
            view! {
                <table class="table artifacts" data-testid="artifacts">
                    <caption class="sr-only">"Artifacts, newest first"</caption>
                    <thead>
                        <tr>
                            <th scope="col">"Name"</th>
                            <th scope="col">"Version"</th>
                            <th scope="col">"Arch"</th>
                            <th scope="col">"Size"</th>
                            <th scope="col">"SHA-256"</th>
                            <th scope="col">"Uploaded (UTC)"</th>
                            <th scope="col"><span class="sr-only">"Actions"</span></th>
                        </tr>
                    </thead>
                    <tbody>{list.into_iter().map(row).collect_view()}</tbody>
                </table>
            }
            .into_any()
        }}
    }
}

/// The public half of the server's update key, ready to copy into agents'
/// configurations.
#[component]
fn SigningKey(key: Resource<Result<String, AppError>>) -> impl IntoView {
    let copied = RwSignal::new(None::<bool>);
    view! {
        <section class="card" aria-labelledby="key-heading" data-testid="signing-key-card">
            <h2 id="key-heading">"Update signing key"</h2>
            <p>
                "The server signs every artifact it keeps. Agents verify updates with this public key: set it as "
                <code>"public_key"</code> " in the " <code>"[update]"</code>
                " table of their configuration, and they refuse any file it does not verify."
            </p>
            <Transition fallback=|| view! { <p class="muted">"Loading the key…"</p> }>
                {move || key.get().map(|answer| match answer {
                    Err(e) => view! { <p class="error" role="alert" data-code=e.code>{e.message}</p> }.into_any(),
                    Ok(public_key) => {
                        let snippet = format!("[update]\nenabled = true\npublic_key = \"{public_key}\"");
                        let copy = {
                            let public_key = public_key.clone();
                            move |_| copy_text(&public_key, copied)
                        };
                        view! {
                            <pre class="key-box" data-testid="signing-key" aria-label="Public key (ed25519, hex)">{public_key.clone()}</pre>
                            <div class="row-buttons">
                                <button type="button" on:click=copy>"Copy key"</button>
                                <span role="status" class="muted">{move || match copied.get() {
                                    Some(true) => "Copied.",
                                    Some(false) => "This browser cannot copy here; select the key and copy it by hand.",
                                    None => "",
                                }}</span>
                            </div>
                            <p class="muted">"In an agent's configuration file:"</p>
                            <pre class="key-box" data-testid="signing-key-config">{snippet}</pre>
                        }
                        .into_any()
                    }
                })}
            </Transition>
        </section>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(id: &str, created_ms: u64) -> ArtifactView {
        ArtifactView {
            id: ArtifactId(id.into()),
            name: "agent".into(),
            version: "2.0.0".into(),
            arch: "any".into(),
            sha256: "ab".repeat(32),
            size: 10,
            signature: String::new(),
            created_by: "admin".into(),
            created_ms,
        }
    }

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(size_text(0), "0 bytes");
        assert_eq!(size_text(999), "999 bytes");
        assert_eq!(size_text(34_200), "34.2 kB");
        assert_eq!(size_text(3_400_000), "3.4 MB");
        assert_eq!(size_text(1_234_000_000), "1.2 GB");
    }

    #[test]
    fn a_hash_is_shortened() {
        let sha = "0123456789abcdef".repeat(4);
        assert_eq!(short_sha(&sha), "0123456789ab…");
        assert_eq!(short_sha("abc"), "abc");
    }

    #[test]
    fn uploads_and_removals_show_at_once_newest_first() {
        let read = vec![artifact("b", 2), artifact("a", 1)];
        let added = [artifact("c", 3), artifact("b", 2)];
        let removed = BTreeSet::from([ArtifactId("a".into())]);
        let ids: Vec<String> = shown(read, &added, &removed)
            .into_iter()
            .map(|a| a.id.0)
            .collect();
        assert_eq!(ids, ["c", "b"]);
    }

    #[test]
    fn components_are_encoded_for_urls() {
        assert_eq!(encode_component("agent-1.2_x~"), "agent-1.2_x~");
        assert_eq!(encode_component("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
