//! Health for orchestrators: `/healthz` answers while the process serves; `/readyz`
//! only while the broker link is up (commands can be sent).

use axum::{extract::State, http::StatusCode, response::IntoResponse};
use hub::Hub;

/// Alive.
pub async fn live() -> &'static str {
    "ok"
}

/// Ready while the broker link is up.
pub async fn ready(State(hub): State<Hub>) -> impl IntoResponse {
    if hub.is_connected() {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the broker",
        )
    }
}
