//! Writing to the audit trail. Every action a person or token takes, and every failed
//! attempt to log in, is appended here with who, from where and on what. The store
//! chains each entry to the one before by a hash, so a row deleted or altered later is
//! found by `tether-server audit verify` and the audit page.

use store::NewAudit;

use crate::state::AppState;

/// The longest actor, source, action and target kept, and the longest detail (a
/// command's arguments, say): what a caller sends cannot make an entry large.
const MAX_NAME: usize = 256;
const MAX_DETAIL: usize = 4 * 1024;

/// `text`, cut to `max` characters with an ellipsis.
pub fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

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
        actor: cut(actor, MAX_NAME),
        source: cut(source, MAX_NAME),
        action: cut(action, MAX_NAME),
        target: cut(target, MAX_NAME),
        detail: cut(detail, MAX_DETAIL),
    };
    if let Err(error) = state.accounts.audit_append(entry).await {
        state
            .audit_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::error!("cannot write to the audit trail ({actor} {action} {target}): {error:#}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_fields_are_cut_with_an_ellipsis() {
        assert_eq!(super::cut("short", 8), "short");
        assert_eq!(super::cut("ééééé", 3), "ééé…");
        assert_eq!(
            super::cut(&"x".repeat(10_000), super::MAX_DETAIL)
                .chars()
                .count(),
            4_097
        );
    }
}
