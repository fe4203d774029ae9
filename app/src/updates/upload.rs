//! The upload form (admins): name, version, architecture and the file, checked in the
//! browser with `protocol`'s own rules, then sent as the body of
//! `POST /api/v1/artifacts?name=…&version=…&arch=…` with its progress. The server's
//! `{code, message}` is shown when it refuses (413 `artifact_too_large`, 422
//! `invalid_input`…); the artifact it kept is shown in the list at once.

use leptos::{html::Input, prelude::*};
use protocol::artifact::{ARCHITECTURES, ArtifactView, MAX_NAME, NewArtifact};

use super::{encode_component, http, size_text};
use crate::fleet::AppError;

/// Where the upload of `new` goes: its fields in the query, encoded.
pub fn upload_url(new: &NewArtifact) -> String {
    format!(
        "/api/v1/artifacts?name={}&version={}&arch={}",
        encode_component(&new.name),
        encode_component(&new.version),
        encode_component(&new.arch)
    )
}

/// The upload as typed, checked; or what is wrong with it, for people.
pub fn checked(
    name: &str,
    version: &str,
    arch: &str,
    file: Option<&(String, u64)>,
) -> Result<NewArtifact, String> {
    if arch.is_empty() {
        return Err("choose the architecture the file is for".to_owned());
    }
    let new = NewArtifact {
        name: name.trim().to_owned(),
        version: version.trim().to_owned(),
        arch: arch.to_owned(),
    };
    new.check()?;
    match file {
        None => Err("choose the file to upload".to_owned()),
        Some((name, 0)) => Err(format!("{name} is empty")),
        Some(_) => Ok(new),
    }
}

/// "37 % (1.2 of 3.4 MB)".
pub fn progress_text(sent: u64, total: u64) -> String {
    let percent = (sent.saturating_mul(100) / total.max(1)).min(100);
    format!("{percent} % ({} of {})", size_text(sent), size_text(total))
}

#[component]
pub fn UploadForm(on_uploaded: Callback<ArtifactView>) -> impl IntoView {
    let name = RwSignal::new(String::new());
    let version = RwSignal::new(String::new());
    let arch = RwSignal::new(String::new());
    let file_input = NodeRef::<Input>::new();
    let file = RwSignal::new(None::<(String, u64)>);
    // Bytes sent and the total, while sending.
    let progress = RwSignal::new(None::<(u64, u64)>);
    let failed = RwSignal::new(None::<AppError>);
    let done = RwSignal::new(None::<String>);
    let sending = move || progress.get().is_some();

    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        if progress.get_untracked().is_some() {
            return;
        }
        done.set(None);
        let new = match checked(
            &name.get_untracked(),
            &version.get_untracked(),
            &arch.get_untracked(),
            file.get_untracked().as_ref(),
        ) {
            Ok(new) => new,
            Err(message) => return failed.set(Some(AppError::new("invalid_input", message))),
        };
        failed.set(None);
        let total = file.get_untracked().map_or(0, |(_, size)| size);
        progress.set(Some((0, total)));
        leptos::task::spawn_local(async move {
            let answer = http::upload(&file_input, &upload_url(&new), move |sent, total| {
                progress.set(Some((sent, total)));
            })
            .await;
            progress.set(None);
            let reply = match answer {
                Ok(reply) => reply,
                Err(error) => return failed.set(Some(error)),
            };
            if reply.status != 201 {
                return failed.set(Some(http::error_of(reply.status, &reply.body)));
            }
            match serde_json::from_str::<ArtifactView>(&reply.body) {
                Ok(artifact) => {
                    done.set(Some(format!(
                        "Uploaded {}: {}.",
                        super::artifact_label(&artifact.name, &artifact.version, &artifact.arch),
                        size_text(artifact.size)
                    )));
                    name.set(String::new());
                    version.set(String::new());
                    arch.set(String::new());
                    file.set(None);
                    http::clear_file(&file_input);
                    on_uploaded.run(artifact);
                }
                Err(error) => failed.set(Some(AppError::new(
                    AppError::INTERNAL,
                    format!("the server kept the file, but its answer cannot be read ({error}); reload the page"),
                ))),
            }
        });
    };
    let max = MAX_NAME.to_string();

    view! {
        <form class="upload" aria-label="Upload an artifact" novalidate on:submit=submit data-testid="upload-form">
            <div class="field">
                <label for="artifact-name">"Name"</label>
                <input id="artifact-name" type="text" name="name" required maxlength=max.clone() autocomplete="off" spellcheck="false"
                    placeholder="tether-agent"
                    prop:value=move || name.get() on:input=move |ev| name.set(event_target_value(&ev)) />
            </div>
            <div class="field">
                <label for="artifact-version">"Version"</label>
                <input id="artifact-version" type="text" name="version" required maxlength=max autocomplete="off" spellcheck="false"
                    placeholder="2.0.0"
                    prop:value=move || version.get() on:input=move |ev| version.set(event_target_value(&ev)) />
                <small class="muted">"What devices report as their firmware once updated."</small>
            </div>
            <div class="field">
                <label for="artifact-arch">"Architecture"</label>
                <select id="artifact-arch" name="arch" required on:change=move |ev| arch.set(event_target_value(&ev))>
                    <option value="" prop:selected=move || arch.with(String::is_empty)>"Choose…"</option>
                    {ARCHITECTURES.into_iter().map(|a| view! {
                        <option value=a prop:selected=move || arch.with(|v| v == a)>{a}</option>
                    }).collect_view()}
                </select>
                <small class="muted">"A device takes only its own, or " <code>"any"</code> " (a script)."</small>
            </div>
            <div class="field wide">
                <label for="artifact-file">"File"</label>
                <input id="artifact-file" type="file" name="file" required node_ref=file_input
                    on:change=move |_| {
                        file.set(http::chosen_file(&file_input));
                        failed.set(None);
                    } />
                {move || file.get().map(|(name, size)| view! {
                    <small class="muted" data-testid="upload-file">{name} " · " {size_text(size)}</small>
                })}
            </div>
            <div class="wide upload-send">
                <button type="submit" data-testid="upload-start" disabled=sending>
                    {move || if sending() { "Uploading…" } else { "Upload" }}
                </button>
                {move || progress.get().map(|(sent, total)| view! {
                    <span class="upload-progress" role="status" data-testid="upload-progress">
                        <progress max=total.max(1).to_string() value=sent.to_string() aria-label="Upload progress"></progress>
                        <span>{progress_text(sent, total)}</span>
                    </span>
                })}
            </div>
            {move || done.get().map(|m| view! { <p class="ok wide" role="status" data-testid="upload-done">{m}</p> })}
            {move || failed.get().map(|e| view! {
                <p class="error wide" role="alert" data-testid="upload-error" data-code=e.code>{e.message}</p>
            })}
        </form>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fields_go_in_the_query_encoded() {
        let new = NewArtifact {
            name: "tether agent".into(),
            version: "2.0.0+build&1".into(),
            arch: "any".into(),
        };
        assert_eq!(
            upload_url(&new),
            "/api/v1/artifacts?name=tether%20agent&version=2.0.0%2Bbuild%261&arch=any"
        );
    }

    #[test]
    fn the_upload_is_checked_before_it_is_sent() {
        let file = ("agent".to_owned(), 10);
        let ok = checked(" tether-agent ", "2.0.0", "aarch64", Some(&file)).unwrap();
        assert_eq!(
            (ok.name.as_str(), ok.version.as_str()),
            ("tether-agent", "2.0.0")
        );
        let cases = [
            checked("a", "1", "", Some(&file)),
            checked(" ", "1", "any", Some(&file)),
            checked("a", "", "any", Some(&file)),
            checked("a", "1", "any", None),
            checked("a", "1", "any", Some(&("empty.bin".to_owned(), 0))),
        ];
        let messages: Vec<String> = cases.into_iter().map(Result::unwrap_err).collect();
        assert_eq!(
            messages,
            [
                "choose the architecture the file is for",
                "the name is missing",
                "the version is missing",
                "choose the file to upload",
                "empty.bin is empty",
            ]
        );
    }

    #[test]
    fn progress_reads_naturally() {
        assert_eq!(
            progress_text(1_200_000, 3_400_000),
            "35 % (1.2 MB of 3.4 MB)"
        );
        assert_eq!(progress_text(0, 0), "0 % (0 bytes of 0 bytes)");
    }
}
