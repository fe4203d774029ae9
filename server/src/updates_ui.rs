//! What the UI's Updates page reads through its server functions ([`crate::fleet`]):
//! the artifacts and the public half of the update key. Uploads and removals go from
//! the browser straight to the artifacts API (`server/src/artifacts.rs`), which streams
//! the file and keeps the audit trail; reading needs nothing of it but the store and
//! the key.

use axum::http::StatusCode;
use protocol::artifact::ArtifactView;

use crate::{auth::Identity, error::Failure, state::AppState};

/// Every artifact, newest first, as `GET /api/v1/artifacts` lists them (anyone logged
/// in may read them).
pub async fn artifacts(state: &AppState, _who: &Identity) -> Result<Vec<ArtifactView>, Failure> {
    state.accounts.artifacts().await.map_err(|error| {
        tracing::error!("artifacts: {error:#}");
        Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "artifacts are unavailable (their database is down); try again shortly",
        )
    })
}

/// The public half of the server's update key, hex (`GET /api/v1/artifacts/signing-key`):
/// what agents verify artifacts with (`[update] public_key`).
pub fn signing_key(state: &AppState, _who: &Identity) -> String {
    state.artifacts.public_key()
}
