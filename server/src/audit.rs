//! Writing to the audit trail. Every action a person or token takes, and every failed
//! attempt to log in, is appended here with who, from where and on what. The store
//! chains each entry to the one before by a hash, so a row deleted or altered later is
//! found by `tether-server audit verify` and the audit page.

use store::NewAudit;

use crate::state::AppState;

/// Appends one entry. A database that cannot take it is logged loudly and counted
/// (`/metrics`), but does not undo what was done: the device already has its command.
pub async fn record(
    state: &AppState,
    actor: &str,
    source: &str,
    action: &str,
    target: &str,
    detail: &str,
) {
    let entry = NewAudit {
        actor: actor.to_owned(),
        source: source.to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        detail: detail.to_owned(),
    };
    if let Err(error) = state.accounts.audit_append(entry).await {
        state
            .audit_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::error!("cannot write to the audit trail ({actor} {action} {target}): {error:#}");
    }
}
