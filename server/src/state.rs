//! What every request handler can reach.

use std::sync::Arc;

use axum::extract::FromRef;
use common::Shutdown;
use hub::{Hub, RecorderStats};
use leptos::prelude::LeptosOptions;
use store::Store;

use crate::guard::AllowedOrigins;

#[derive(Debug, Clone, FromRef)]
pub struct AppState {
    pub leptos_options: LeptosOptions,
    pub hub: Hub,
    /// Where readings are stored; `None` when this server keeps no history.
    pub store: Option<Store>,
    /// What this replica's recorders did, for `/metrics`.
    pub recorders: Arc<RecorderStats>,
    /// Stopping: live sockets close when it does.
    pub shutdown: Shutdown,
    /// Other sites whose pages may change things (a proxy's address).
    pub allowed_origins: AllowedOrigins,
}
