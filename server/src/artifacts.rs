//! Artifacts: files an admin uploads for devices to install (`/api/v1/artifacts`,
//! API.md), and their download by devices.
//!
//! A file is streamed to disk in the data folder (`artifacts/`, beside the server's
//! other files) while its SHA-256 is computed, refused past `TETHER_MAX_ARTIFACT_MB`,
//! signed with the server's ed25519 update key (its public half is what agents are
//! configured with), and described in the store. Devices download it from
//! `/api/v1/artifacts/{id}/download?device=…&expires=…&token=…`: no login, but a token
//! for that device and artifact until that time (HMAC-SHA256 under a key of the
//! server's), so a link that leaks is good for one artifact, shortly. Downloads answer
//! `Range` requests (206), so a device on a slow link resumes where it stopped.
//!
//! Both keys are files in the data folder, made on first start (mode 0600); replicas
//! that serve the same devices need the same ones, and the same `artifacts/` folder.

use crate::openapi::shared;
use protocol::api::{ApiError, ErrorCode};
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
};
use utoipa_axum::{router::OpenApiRouter, routes};

use anyhow::Context as _;
use axum::{
    Json,
    body::Body,
    extract::{Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use ed25519_dalek::{Signer as _, SigningKey};
use futures_util::StreamExt as _;
use hmac::{Hmac, Mac as _};
use protocol::{
    DeviceId,
    artifact::{ArtifactId, ArtifactView, NewArtifact},
    auth::Role,
};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;
use tower::ServiceExt as _;

use crate::{
    api::{Params, PathId},
    audit,
    auth::{Identity, Source},
    error::Failure,
    state::AppState,
};

/// The artifacts' folder and the keys that sign them and their download links.
#[derive(Clone)]
pub struct Artifacts {
    dir: PathBuf,
    signing: Arc<SigningKey>,
    download_key: Arc<[u8; 32]>,
    max_bytes: u64,
}

impl std::fmt::Debug for Artifacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Artifacts")
            .field("dir", &self.dir)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl Artifacts {
    /// The artifacts kept in `data_dir` (its `artifacts/` folder and its two keys, made
    /// if missing), each at most `max_bytes`.
    pub fn open(data_dir: &Path, max_bytes: u64) -> anyhow::Result<Self> {
        let dir = data_dir.join("artifacts");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot make the artifacts folder {}", dir.display()))?;
        let signing = SigningKey::from_bytes(&key_file(&data_dir.join("update-signing.key"))?);
        let download_key = key_file(&data_dir.join("download.key"))?;
        Ok(Self {
            dir,
            signing: Arc::new(signing),
            download_key: Arc::new(download_key),
            max_bytes,
        })
    }

    /// The public half of the update key, hex: what agents verify signatures with.
    pub fn public_key(&self) -> String {
        hex::encode(self.signing.verifying_key().as_bytes())
    }

    fn path(&self, id: &ArtifactId) -> PathBuf {
        self.dir.join(&id.0)
    }

    fn mac(&self, artifact: &ArtifactId, device: &DeviceId, expires_ms: u64) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as hmac::Mac>::new_from_slice(self.download_key.as_slice())
            .expect("HMAC takes a key of any length");
        mac.update(format!("{artifact}\n{device}\n{expires_ms}").as_bytes());
        mac
    }

    /// The token that lets `device` download `artifact` until `expires_ms`.
    pub fn token(&self, artifact: &ArtifactId, device: &DeviceId, expires_ms: u64) -> String {
        hex::encode(
            self.mac(artifact, device, expires_ms)
                .finalize()
                .into_bytes(),
        )
    }

    /// The path and query (after the server's address) of `device`'s download of
    /// `artifact`, good until `expires_ms`.
    pub fn download_path(
        &self,
        artifact: &ArtifactId,
        device: &DeviceId,
        expires_ms: u64,
    ) -> String {
        format!(
            "/api/v1/artifacts/{artifact}/download?device={device}&expires={expires_ms}&token={}",
            self.token(artifact, device, expires_ms)
        )
    }

    /// Whether `token` is `device`'s for `artifact` until `expires_ms` (compared in
    /// constant time).
    fn verify(
        &self,
        artifact: &ArtifactId,
        device: &DeviceId,
        expires_ms: u64,
        token: &str,
    ) -> bool {
        let Ok(token) = hex::decode(token) else {
            return false;
        };
        self.mac(artifact, device, expires_ms)
            .verify_slice(&token)
            .is_ok()
    }
}

/// How long a device's download link lasts beyond its command's deadline.
const LINK_SLACK_MS: u64 = 10 * 60 * 1000;

/// The arguments of the agent's `update` command for one device of an update job: its
/// own download link (to `public_url`), and the file's SHA-256, size, signature, version
/// and architecture.
#[derive(Debug)]
pub struct UpdateArgs {
    pub artifacts: Artifacts,
    /// Where devices reach this server (`TETHER_PUBLIC_URL`).
    pub public_url: String,
}

impl ::jobs::DeviceArgs for UpdateArgs {
    fn args_for(
        &self,
        job: &protocol::job::JobView,
        device: &DeviceId,
    ) -> Result<std::collections::BTreeMap<String, serde_json::Value>, String> {
        let artifact = job
            .artifact
            .as_ref()
            .ok_or_else(|| "this job installs nothing".to_owned())?;
        let expires = common::now_ms() + job.timeout_ms + LINK_SLACK_MS;
        let url = format!(
            "{}{}",
            self.public_url.trim_end_matches('/'),
            self.artifacts.download_path(&artifact.id, device, expires)
        );
        Ok(std::collections::BTreeMap::from([
            ("url".to_owned(), url.into()),
            ("sha256".to_owned(), artifact.sha256.clone().into()),
            ("size".to_owned(), artifact.size.into()),
            ("version".to_owned(), artifact.version.clone().into()),
            ("signature".to_owned(), artifact.signature.clone().into()),
            ("arch".to_owned(), artifact.arch.clone().into()),
        ]))
    }
}

/// A 32-byte key kept hex in `path`, made (mode 0600) if missing.
fn key_file(path: &Path) -> anyhow::Result<[u8; 32]> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let bytes = hex::decode(text.trim())
                .with_context(|| format!("{} does not hold a hex key", path.display()))?;
            bytes
                .try_into()
                .map_err(|_| anyhow::anyhow!("{} does not hold a 32-byte key", path.display()))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            let mut file = std::fs::OpenOptions::new();
            file.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut file, 0o600);
            let mut file = file
                .open(path)
                .with_context(|| format!("cannot make {}", path.display()))?;
            file.write_all(hex::encode(key).as_bytes())?;
            Ok(key)
        }
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, upload))
        .routes(routes!(signing_key))
        .routes(routes!(get_one, remove))
        .routes(routes!(download))
        // Uploads are streamed to disk with a limit of their own.
        .route_layer(axum::extract::DefaultBodyLimit::disable())
}

fn unavailable(error: anyhow::Error) -> Failure {
    tracing::error!("artifacts: {error:#}");
    Failure::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::StoreUnavailable,
        "artifacts are unavailable (their database is down); try again shortly",
    )
}

fn unknown(id: &str) -> Failure {
    Failure::new(
        StatusCode::NOT_FOUND,
        ErrorCode::UnknownArtifact,
        format!("no artifact \"{id}\""),
    )
}

#[utoipa::path(
get, path = "/v1/artifacts", tag = "artifacts",
summary = "Every artifact, newest first",
responses(
    (status = 200, description = "The artifacts", body = Vec<ArtifactView>),
    shared::StoreUnavailable,
)
)]
async fn list(
    State(state): State<AppState>,
    _who: Identity,
) -> Result<Json<Vec<ArtifactView>>, Failure> {
    all(&state).await.map(Json)
}

/// Every artifact, newest first (anyone logged in may read them; the UI's Updates page
/// too).
pub async fn all(state: &AppState) -> Result<Vec<ArtifactView>, Failure> {
    state.accounts.artifacts().await.map_err(unavailable)
}

#[utoipa::path(
get, path = "/v1/artifacts/{id}", tag = "artifacts",
summary = "One artifact",
params(("id" = String, Path, description = "The artifact's id")),
responses(
    (status = 200, description = "The artifact", body = ArtifactView),
    (status = 404, description = "`unknown_artifact`", body = ApiError),
    shared::StoreUnavailable,
)
)]
async fn get_one(
    State(state): State<AppState>,
    _who: Identity,
    PathId(id): PathId,
) -> Result<Json<ArtifactView>, Failure> {
    state
        .accounts
        .artifact(&id)
        .await
        .map_err(unavailable)?
        .map(Json)
        .ok_or_else(|| unknown(&id))
}

#[utoipa::path(
get, path = "/v1/artifacts/signing-key", tag = "artifacts",
summary = "The server's update-signing public key",
responses(
    (status = 200, description = "The key", body = UpdateKey),
)
)]
async fn signing_key(State(state): State<AppState>, _who: Identity) -> Json<UpdateKey> {
    Json(UpdateKey {
        algorithm: "ed25519",
        public_key: state.artifacts.public_key(),
    })
}

/// The key artifacts are signed with.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct UpdateKey {
    /// Always `ed25519`.
    algorithm: &'static str,
    /// The public key, hex.
    public_key: String,
}

/// Admin: stores the body as an artifact.
#[utoipa::path(
post, path = "/v1/artifacts", tag = "artifacts",
summary = "Upload an artifact (the request body is the file)",
description = "Needs the admin role. The body is the file itself, streamed to disk; at most `TETHER_MAX_ARTIFACT_MB`.",
params(NewArtifact),
request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file"),
responses(
    (status = 201, description = "The artifact, signed", body = ArtifactView),
    shared::AdminOnly,
    (status = 413, description = "`artifact_too_large`: over `TETHER_MAX_ARTIFACT_MB`", body = ApiError),
    (status = 422, description = "`invalid_input`: a name, version or arch that does not check, or an empty file", body = ApiError),
    (status = 500, description = "`internal`: the file could not be written", body = ApiError),
    shared::StoreUnavailable,
)
)]
async fn upload(
    State(state): State<AppState>,
    who: Identity,
    Source(address): Source,
    Params(new): Params<NewArtifact>,
    body: Body,
) -> Result<(StatusCode, Json<ArtifactView>), Failure> {
    let detail = format!("{} {} ({})", new.name, new.version, new.arch);
    if let Err(refused) = who.require(Role::Admin, "uploading artifacts") {
        audit::record(
            &state,
            &who.actor(),
            &address,
            "artifact_refused",
            "",
            &detail,
        )
        .await;
        return Err(refused);
    }
    new.check().map_err(|message| {
        Failure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidInput,
            message,
        )
    })?;
    let artifacts = &state.artifacts;
    let id = ArtifactId(format!("{:032x}", fastrand::u128(..)));
    let partial = artifacts.dir.join(format!(".upload-{id}"));
    let received = receive(body, &partial, artifacts.max_bytes).await;
    let (sha256, size) = match received {
        Ok(done) => done,
        Err(failure) => {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(failure);
        }
    };
    let path = artifacts.path(&id);
    if let Err(error) = tokio::fs::rename(&partial, &path).await {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(internal(
            anyhow::Error::from(error).context("cannot keep the upload"),
        ));
    }
    let signature = artifacts.signing.sign(&sha256);
    let view = ArtifactView {
        id,
        name: new.name,
        version: new.version,
        arch: new.arch,
        sha256: hex::encode(sha256),
        size,
        signature: hex::encode(signature.to_bytes()),
        created_by: who.actor(),
        created_ms: common::now_ms(),
    };
    if let Err(error) = state.accounts.add_artifact(&view).await {
        let _ = tokio::fs::remove_file(&path).await;
        return Err(unavailable(error));
    }
    let detail = format!("{detail}: {} bytes, sha256 {}", view.size, view.sha256);
    audit::record(
        &state,
        &who.actor(),
        &address,
        "artifact_uploaded",
        &view.id.0,
        &detail,
    )
    .await;
    Ok((StatusCode::CREATED, Json(view)))
}

fn internal(error: anyhow::Error) -> Failure {
    tracing::error!("artifacts: {error:#}");
    Failure::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Internal,
        "the server could not keep the file; see its log",
    )
}

/// Streams `body` into `path`: its SHA-256 and size, or why not.
async fn receive(body: Body, path: &Path, max_bytes: u64) -> Result<([u8; 32], u64), Failure> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| internal(anyhow::Error::from(e).context("cannot write the upload")))?;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| {
            Failure::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                format!("the upload broke off: {error}"),
            )
        })?;
        size += chunk.len() as u64;
        if size > max_bytes {
            return Err(Failure::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::ArtifactTooLarge,
                format!(
                    "an artifact may be at most {} MiB (TETHER_MAX_ARTIFACT_MB)",
                    max_bytes / (1024 * 1024)
                ),
            ));
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| internal(anyhow::Error::from(e).context("cannot write the upload")))?;
    }
    if size == 0 {
        return Err(Failure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidInput,
            "the artifact is empty: send the file as the request's body",
        ));
    }
    file.sync_all()
        .await
        .map_err(|e| internal(anyhow::Error::from(e).context("cannot write the upload")))?;
    Ok((hasher.finalize().into(), size))
}

/// Admin: forgets an artifact and deletes its file.
#[utoipa::path(
delete, path = "/v1/artifacts/{id}", tag = "artifacts",
summary = "Forget an artifact and delete its file",
description = "Needs the admin role.",
params(("id" = String, Path, description = "The artifact's id")),
responses(
    (status = 204, description = "Removed"),
    shared::AdminOnly,
    (status = 404, description = "`unknown_artifact`", body = ApiError),
    shared::StoreUnavailable,
)
)]
async fn remove(
    State(state): State<AppState>,
    who: Identity,
    Source(address): Source,
    PathId(id): PathId,
) -> Result<StatusCode, Failure> {
    if let Err(refused) = who.require(Role::Admin, "removing artifacts") {
        audit::record(
            &state,
            &who.actor(),
            &address,
            "artifact_remove_refused",
            &id,
            "",
        )
        .await;
        return Err(refused);
    }
    if !state
        .accounts
        .remove_artifact(&id)
        .await
        .map_err(unavailable)?
    {
        return Err(unknown(&id));
    }
    let _ = tokio::fs::remove_file(state.artifacts.path(&ArtifactId(id.clone()))).await;
    audit::record(&state, &who.actor(), &address, "artifact_removed", &id, "").await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Ticket {
    /// The device the link was made for.
    device: String,
    /// Until when the link is good (ms since the epoch).
    expires: u64,
    /// The link's HMAC.
    token: String,
}

/// A device's download: no login, the token instead; `Range` answered.
#[utoipa::path(
get, path = "/v1/artifacts/{id}/download", tag = "artifacts",
summary = "A device's download of an artifact",
description = "No login: the link's token instead (each device is given its own link in its update command). `Range` is answered.",
security(()),
params(("id" = String, Path, description = "The artifact's id"), Ticket),
responses(
    (status = 200, description = "The file", content_type = "application/octet-stream", body = Vec<u8>),
    (status = 206, description = "The range asked for", content_type = "application/octet-stream", body = Vec<u8>),
    (status = 403, description = "`invalid_token`: a link that is not valid; `token_expired`: a link past its time", body = ApiError),
    (status = 404, description = "`unknown_artifact`", body = ApiError),
    shared::StoreUnavailable,
)
)]
async fn download(
    State(state): State<AppState>,
    PathId(id): PathId,
    Params(ticket): Params<Ticket>,
    request: Request,
) -> Result<Response, Failure> {
    let id = ArtifactId(id);
    let forbidden =
        |message: &str| Failure::new(StatusCode::FORBIDDEN, ErrorCode::InvalidToken, message);
    let Ok(device) = DeviceId::new(ticket.device) else {
        return Err(forbidden("this download link is not valid"));
    };
    if !state
        .artifacts
        .verify(&id, &device, ticket.expires, &ticket.token)
    {
        return Err(forbidden("this download link is not valid"));
    }
    if ticket.expires < common::now_ms() {
        return Err(Failure::new(
            StatusCode::FORBIDDEN,
            ErrorCode::TokenExpired,
            "this download link has expired; the server gives a fresh one with each update",
        ));
    }
    if state
        .accounts
        .artifact(&id.0)
        .await
        .map_err(unavailable)?
        .is_none()
    {
        return Err(unknown(&id.0));
    }
    let served = tower_http::services::ServeFile::new(state.artifacts.path(&id))
        .oneshot(request)
        .await
        .map_err(|error| internal(anyhow::anyhow!("cannot serve an artifact: {error}")))?;
    let mut response = served.map(Body::new).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}
