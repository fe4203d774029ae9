//! The browser's own requests to the artifacts API: an upload (the file chosen in a
//! file input, as the request's body, with its progress) and a removal.
//!
//! They are same-origin requests from Tether's own page, so the session cookie goes
//! with them and the browser marks them `Sec-Fetch-Site: same-origin`, which the
//! server's cross-site guard lets through (`server/src/guard.rs`). They are made with
//! `XMLHttpRequest` rather than `fetch` only because it reports how much of the body
//! was sent. On the server there is nothing to send: these answer `unreachable` there
//! (no handler calls them while rendering).

use leptos::{html::Input, prelude::*};

use crate::fleet::AppError;

/// What the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

/// The API's `{code, message}` from an answer that is not a success; a stand-in when
/// the body is not one (a proxy's page, nothing).
pub fn error_of(status: u16, body: &str) -> AppError {
    match serde_json::from_str::<protocol::api::ApiError>(body) {
        Ok(error) => error.into(),
        Err(_) if status == 413 => AppError::new(
            "artifact_too_large",
            "the file is larger than the server (or a proxy before it) takes",
        ),
        Err(_) => AppError::new(
            AppError::INTERNAL,
            format!("the server answered {status} without saying why"),
        ),
    }
}

fn lost() -> AppError {
    AppError::new(
        AppError::UNREACHABLE,
        "cannot reach the server; check your connection and try again",
    )
}

/// The name and size of the file chosen in `input`, if any.
#[cfg(feature = "hydrate")]
pub fn chosen_file(input: &NodeRef<Input>) -> Option<(String, u64)> {
    let file = input.get_untracked()?.files()?.get(0)?;
    Some((file.name(), file.size() as u64))
}

#[cfg(not(feature = "hydrate"))]
pub fn chosen_file(_: &NodeRef<Input>) -> Option<(String, u64)> {
    None
}

/// Forgets the file chosen in `input`.
pub fn clear_file(input: &NodeRef<Input>) {
    if let Some(input) = input.get_untracked() {
        input.set_value("");
    }
}

/// POSTs the file chosen in `input` as the body of a request to `url`;
/// `progress(sent, total)` as it goes.
#[cfg(feature = "hydrate")]
pub async fn upload(
    input: &NodeRef<Input>,
    url: &str,
    progress: impl Fn(u64, u64) + 'static,
) -> Result<Reply, AppError> {
    let file = input
        .get_untracked()
        .and_then(|input| input.files())
        .and_then(|files| files.get(0))
        .ok_or_else(|| AppError::new("invalid_input", "choose the file to upload"))?;
    browser::send("POST", url, Some(&file), progress).await
}

#[cfg(not(feature = "hydrate"))]
pub async fn upload(
    _: &NodeRef<Input>,
    _: &str,
    _: impl Fn(u64, u64) + 'static,
) -> Result<Reply, AppError> {
    Err(lost())
}

/// DELETEs `url`.
#[cfg(feature = "hydrate")]
pub async fn delete(url: &str) -> Result<Reply, AppError> {
    browser::send("DELETE", url, None, |_, _| {}).await
}

#[cfg(not(feature = "hydrate"))]
pub async fn delete(_: &str) -> Result<Reply, AppError> {
    Err(lost())
}

#[cfg(feature = "hydrate")]
mod browser {
    use wasm_bindgen::{JsCast as _, closure::Closure};
    use web_sys::{Blob, ProgressEvent, XmlHttpRequest};

    use super::{AppError, Reply, lost};

    /// One request; its answer once it ended (`loadend`: loaded, failed or aborted).
    pub async fn send(
        method: &str,
        url: &str,
        body: Option<&Blob>,
        progress: impl Fn(u64, u64) + 'static,
    ) -> Result<Reply, AppError> {
        let broken = || AppError::new(AppError::INTERNAL, "this browser cannot send the request");
        let xhr = XmlHttpRequest::new().map_err(|_| broken())?;
        xhr.open_with_async(method, url, true)
            .map_err(|_| broken())?;
        let (ended_tx, ended) = futures_channel::oneshot::channel::<()>();
        let mut ended_tx = Some(ended_tx);
        let on_end = Closure::<dyn FnMut()>::new(move || {
            if let Some(tx) = ended_tx.take() {
                let _ = tx.send(());
            }
        });
        xhr.set_onloadend(Some(on_end.as_ref().unchecked_ref()));
        let on_progress = Closure::<dyn FnMut(ProgressEvent)>::new(move |event: ProgressEvent| {
            if event.length_computable() {
                progress(event.loaded() as u64, event.total() as u64);
            }
        });
        let upload = xhr.upload().ok();
        let sent = match body {
            Some(body) => {
                xhr.set_request_header("content-type", "application/octet-stream")
                    .map_err(|_| broken())?;
                if let Some(upload) = &upload {
                    upload.set_onprogress(Some(on_progress.as_ref().unchecked_ref()));
                }
                xhr.send_with_opt_blob(Some(body))
            }
            None => xhr.send(),
        };
        if sent.is_err() {
            return Err(lost());
        }
        let _ = ended.await;
        xhr.set_onloadend(None);
        if let Some(upload) = &upload {
            upload.set_onprogress(None);
        }
        drop((on_end, on_progress));
        match xhr.status().unwrap_or(0) {
            // The request never got an answer: the network, or the server went away.
            0 => Err(lost()),
            status => Ok(Reply {
                status,
                body: xhr.response_text().ok().flatten().unwrap_or_default(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_apis_error_is_kept() {
        let error = error_of(
            422,
            r#"{"code":"invalid_input","message":"the artifact is empty"}"#,
        );
        assert_eq!(error.code, "invalid_input");
        assert_eq!(error.message, "the artifact is empty");
        assert_eq!(error_of(413, "<html>").code, "artifact_too_large");
        let other = error_of(502, "");
        assert_eq!(other.code, AppError::INTERNAL);
        assert!(other.message.contains("502"));
    }
}
