//! The audit trail: who did what, to what, from where. Append-only and hash-chained.
//!
//! Entries are numbered 1, 2, 3… (`seq`, the primary key) and each stores the hash of
//! the one before (`prev_hash`, empty for the first) and its own `hash`, a SHA-256 over
//! all of its fields including `prev_hash`. Changing an entry's text then shows as a
//! hash that no longer matches; deleting one as a gap in the numbers; and rewriting an
//! entry together with its hash as the next entry no longer following it. (Cutting off
//! the newest entries leaves a shorter chain that holds: only a copy of the last hash
//! kept elsewhere would show that.)
//!
//! There is no way here to change or delete an entry, and retention does not touch
//! them. Appending reads the last entry and inserts the next numbers (a batch of the
//! entries waiting, in one statement: all or none); two appenders that read the same
//! last entry (two server replicas on one PostgreSQL, or the command line beside a
//! server on one SQLite file) both try the same number, the primary key lets one in,
//! and the other reads again and retries.

use anyhow::Context as _;
use protocol::auth::{AuditCheck, AuditEntry};
use sha2::{Digest as _, Sha256};

use crate::{
    Store, now_ms,
    sql::{Row, Value},
};

pub(crate) const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS audit (
        seq BIGINT PRIMARY KEY,
        ts_ms BIGINT NOT NULL,
        actor TEXT NOT NULL,
        source TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS audit_by_time ON audit (ts_ms);
    CREATE INDEX IF NOT EXISTS audit_by_actor ON audit (actor, seq);
    CREATE INDEX IF NOT EXISTS audit_by_action ON audit (action, seq);
    CREATE INDEX IF NOT EXISTS audit_by_target ON audit (target, seq);
";

/// One thing to record; the store adds its number and time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewAudit {
    pub actor: String,
    pub source: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

/// Which entries to read, newest first. Every filter given must match exactly, except
/// that `actor` also matches that user's tokens (`alice (token 1f2e…)`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditQuery {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    /// Inclusive, ms since the Unix epoch.
    pub from_ms: Option<i64>,
    /// Exclusive.
    pub to_ms: Option<i64>,
    /// Only entries before this one: the `seq` of the last entry of the previous page.
    pub before_seq: Option<u64>,
    /// At most 1000; 0 means 100.
    pub limit: usize,
}

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1_000;

/// How many times an append tries for the next number. A try lost is lost to an append
/// that succeeded, so the trail is moving; the loser tries again at once, as fast as
/// the winner's next append, so with two appenders busy each try is about a coin toss.
/// Two stores appending flat out in a test lost up to 16 times in a row (once in 1,600
/// appends); a real trail, written at the pace of people, rarely loses once.
const APPEND_ATTEMPTS: usize = 100;
/// Most entries written in one statement (nine parameters each).
const MAX_BATCH: usize = 500;
/// How many entries `audit_verify` reads at a time.
const VERIFY_PAGE: i64 = 1_000;

/// Appending's turn, and the entries waiting for it with whom to tell when written.
#[derive(Debug, Default)]
pub(crate) struct Appending {
    turn: tokio::sync::Mutex<()>,
    #[allow(clippy::type_complexity)]
    waiting: std::sync::Mutex<Vec<(NewAudit, Told)>>,
}

/// Where an appender learns how its entry went.
type Told = tokio::sync::oneshot::Sender<anyhow::Result<AuditEntry>>;

impl Appending {
    fn waiting(&self) -> std::sync::MutexGuard<'_, Vec<(NewAudit, Told)>> {
        self.waiting
            .lock()
            .expect("no code panics while holding the audit queue")
    }
}

/// `items` in runs of at most `size`, in order.
fn chunks<T>(items: Vec<T>, size: usize) -> Vec<Vec<T>> {
    let mut runs = Vec::new();
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        runs.push(items.by_ref().take(size).collect());
    }
    runs
}

/// An entry as stored: the view, and its links.
struct Stored {
    entry: AuditEntry,
    prev_hash: String,
    hash: String,
}

const COLUMNS: &str = "seq, ts_ms, actor, source, action, target, detail";

impl Store {
    /// Appends one entry to the chain and gives it back with its number and time.
    ///
    /// Appenders in this process take turns, and whoever has the turn writes every
    /// entry waiting then, its own and those that came while the one before wrote, in
    /// one statement: under load many entries share one database round trip, and alone
    /// an entry waits for nothing. The write runs on a task of its own, so a caller that
    /// gives up (a dropped request) loses nobody's entry.
    pub async fn audit_append(&self, new: NewAudit) -> anyhow::Result<AuditEntry> {
        let (done, written) = tokio::sync::oneshot::channel();
        self.appending().waiting().push((new, done));
        {
            let _turn = self.appending().turn.lock().await;
            let waiting = std::mem::take(&mut *self.appending().waiting());
            if !waiting.is_empty() {
                let store = self.clone();
                let _ = tokio::spawn(async move {
                    for batch in chunks(waiting, MAX_BATCH) {
                        let (entries, told): (Vec<NewAudit>, Vec<_>) = batch.into_iter().unzip();
                        match store.append_batch(&entries).await {
                            Ok(appended) => {
                                for (entry, done) in appended.into_iter().zip(told) {
                                    let _ = done.send(Ok(entry));
                                }
                            }
                            Err(error) => {
                                for done in told {
                                    let _ = done.send(Err(anyhow::anyhow!("{error:#}")));
                                }
                            }
                        }
                    }
                })
                .await;
            }
        }
        written
            .await
            .context("the audit writer stopped before writing the entry")?
    }

    /// Appends `batch` in order, in one statement: all of it or none.
    async fn append_batch(&self, batch: &[NewAudit]) -> anyhow::Result<Vec<AuditEntry>> {
        for _ in 0..APPEND_ATTEMPTS {
            let last = self
                .query_opt(
                    "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                    vec![],
                )
                .await
                .context("cannot read the end of the audit trail")?;
            let (last_seq, mut prev_hash) = match last {
                Some(row) => (row.unsigned(0)?, row.text(1)?.to_owned()),
                None => (0, String::new()),
            };
            let ts_ms = now_ms().max(0) as u64;
            let mut entries = Vec::with_capacity(batch.len());
            let mut rows = Vec::with_capacity(batch.len());
            let mut params = Vec::with_capacity(batch.len() * 9);
            for (n, new) in batch.iter().enumerate() {
                let entry = AuditEntry {
                    seq: last_seq + 1 + n as u64,
                    ts_ms,
                    actor: new.actor.clone(),
                    source: new.source.clone(),
                    action: new.action.clone(),
                    target: new.target.clone(),
                    detail: new.detail.clone(),
                };
                let hash = chain_hash(&entry, &prev_hash);
                let first = params.len() + 1;
                rows.push(format!(
                    "({})",
                    (first..first + 9)
                        .map(|p| format!("${p}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                params.extend([
                    Value::Int(entry.seq as i64),
                    Value::Int(entry.ts_ms as i64),
                    entry.actor.as_str().into(),
                    entry.source.as_str().into(),
                    entry.action.as_str().into(),
                    entry.target.as_str().into(),
                    entry.detail.as_str().into(),
                    std::mem::take(&mut prev_hash).into(),
                    hash.as_str().into(),
                ]);
                prev_hash = hash;
                entries.push(entry);
            }
            // No `ON CONFLICT`: if another writer took one of these numbers, the whole
            // statement fails and nothing of the batch is in (a batch half in would
            // break the chain); then the end of the trail has moved, and we try again.
            let inserted = self
                .execute(
                    &format!(
                        "INSERT INTO audit (seq, ts_ms, actor, source, action, target, detail, prev_hash, hash) VALUES {}",
                        rows.join(", ")
                    ),
                    params,
                )
                .await;
            match inserted {
                Ok(_) => return Ok(entries),
                Err(error) => {
                    let moved = self
                        .query_opt("SELECT MAX(seq) FROM audit", vec![])
                        .await
                        .ok()
                        .flatten()
                        .and_then(|row| row.unsigned(0).ok())
                        .is_some_and(|seq| seq != last_seq);
                    if !moved {
                        return Err(error.context("cannot append to the audit trail"));
                    }
                    tracing::debug!(
                        "audit entries from {} were taken by another writer; trying again",
                        last_seq + 1
                    );
                }
            }
        }
        anyhow::bail!(
            "cannot append to the audit trail: other writers took the next entry {APPEND_ATTEMPTS} times in a row"
        )
    }

    /// Entries matching the query, newest first.
    pub async fn audit(&self, query: AuditQuery) -> anyhow::Result<Vec<AuditEntry>> {
        let mut sql = format!("SELECT {COLUMNS} FROM audit WHERE 1 = 1");
        let mut params = Vec::new();
        if let Some(actor) = query.actor {
            // A user's own actions and their tokens' ("alice (token 1f2e…)").
            let escaped: String = actor
                .chars()
                .flat_map(|c| match c {
                    '\\' | '%' | '_' => vec!['\\', c],
                    c => vec![c],
                })
                .collect();
            params.push(actor.into());
            params.push(format!("{escaped} (token %").into());
            sql.push_str(&format!(
                " AND (actor = ${} OR actor LIKE ${} ESCAPE '\\')",
                params.len() - 1,
                params.len()
            ));
        }
        let mut filter = |condition: &str, value: Value| {
            params.push(value);
            sql.push_str(&format!(" AND {condition} ${}", params.len()));
        };
        if let Some(action) = query.action {
            filter("action =", action.into());
        }
        if let Some(target) = query.target {
            filter("target =", target.into());
        }
        if let Some(from_ms) = query.from_ms {
            filter("ts_ms >=", Value::Int(from_ms));
        }
        if let Some(to_ms) = query.to_ms {
            filter("ts_ms <", Value::Int(to_ms));
        }
        if let Some(before) = query.before_seq {
            filter(
                "seq <",
                Value::Int(i64::try_from(before).unwrap_or(i64::MAX)),
            );
        }
        let limit = match query.limit {
            0 => DEFAULT_PAGE,
            limit => limit.min(MAX_PAGE),
        };
        params.push(Value::Int(limit as i64));
        sql.push_str(&format!(" ORDER BY seq DESC LIMIT ${}", params.len()));
        let rows = self.query(&sql, params).await;
        rows.context("cannot read the audit trail")?
            .iter()
            .map(entry_from)
            .collect()
    }

    /// Walks the whole chain, oldest first, and says where it first breaks, if it does.
    /// `entries` counts the entries found intact before that point (all of them if the
    /// chain holds).
    pub async fn audit_verify(&self) -> anyhow::Result<AuditCheck> {
        let mut checked = 0;
        let mut prev_hash = String::new();
        loop {
            let rows = self
                .query(
                    &format!(
                        "SELECT {COLUMNS}, prev_hash, hash FROM audit WHERE seq > $1
                         ORDER BY seq LIMIT $2"
                    ),
                    vec![Value::Int(checked as i64), Value::Int(VERIFY_PAGE)],
                )
                .await
                .context("cannot read the audit trail")?;
            if rows.is_empty() {
                return Ok(AuditCheck {
                    entries: checked,
                    broken_at: None,
                    why: None,
                });
            }
            for row in &rows {
                let stored = stored_from(row)?;
                if let Some((broken_at, why)) = check_link(checked, &prev_hash, &stored) {
                    return Ok(AuditCheck {
                        entries: checked,
                        broken_at: Some(broken_at),
                        why: Some(why),
                    });
                }
                checked = stored.entry.seq;
                prev_hash = stored.hash;
            }
        }
    }
}

/// Why `stored`, read after entry `last` (0 before the first) whose hash is
/// `prev_hash`, breaks the chain, if it does: where, and why, in words.
fn check_link(last: u64, prev_hash: &str, stored: &Stored) -> Option<(u64, String)> {
    let seq = stored.entry.seq;
    let expected = last + 1;
    if seq > expected + 1 {
        return Some((
            expected,
            format!("entries {expected} to {} are missing (deleted)", seq - 1),
        ));
    }
    if seq > expected {
        return Some((expected, format!("entry {expected} is missing (deleted)")));
    }
    if chain_hash(&stored.entry, &stored.prev_hash) != stored.hash {
        return Some((seq, format!("entry {seq} was altered")));
    }
    if stored.prev_hash != prev_hash {
        let why = match last {
            0 => format!("entry {seq} does not start the chain"),
            last => format!("entry {seq} does not follow entry {last}"),
        };
        return Some((seq, why));
    }
    None
}

/// SHA-256, in hex, over the entry's fields and the previous hash. Each field is
/// preceded by its length (8 bytes, big-endian), so no two different entries encode
/// alike however their texts are cut: ("ab", "c") and ("a", "bc") differ.
fn chain_hash(entry: &AuditEntry, prev_hash: &str) -> String {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    field(b"tether-audit-v1");
    field(&entry.seq.to_be_bytes());
    field(&entry.ts_ms.to_be_bytes());
    field(entry.actor.as_bytes());
    field(entry.source.as_bytes());
    field(entry.action.as_bytes());
    field(entry.target.as_bytes());
    field(entry.detail.as_bytes());
    field(prev_hash.as_bytes());
    hex::encode(hasher.finalize())
}

/// A row of [`COLUMNS`].
fn entry_from(row: &Row) -> anyhow::Result<AuditEntry> {
    Ok(AuditEntry {
        seq: row.unsigned(0)?,
        ts_ms: row.unsigned(1)?,
        actor: row.text(2)?.to_owned(),
        source: row.text(3)?.to_owned(),
        action: row.text(4)?.to_owned(),
        target: row.text(5)?.to_owned(),
        detail: row.text(6)?.to_owned(),
    })
}

/// A row of [`COLUMNS`], `prev_hash`, `hash`.
fn stored_from(row: &Row) -> anyhow::Result<Stored> {
    Ok(Stored {
        entry: entry_from(row)?,
        prev_hash: row.text(7)?.to_owned(),
        hash: row.text(8)?.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(actor: &str, source: &str) -> AuditEntry {
        AuditEntry {
            seq: 1,
            ts_ms: 2,
            actor: actor.into(),
            source: source.into(),
            action: String::new(),
            target: String::new(),
            detail: String::new(),
        }
    }

    #[test]
    fn the_hash_cannot_be_kept_by_moving_text_between_fields() {
        assert_ne!(
            chain_hash(&entry("ab", "c"), ""),
            chain_hash(&entry("a", "bc"), "")
        );
        assert_ne!(
            chain_hash(&entry("a", ""), ""),
            chain_hash(&entry("a", ""), "x")
        );
        assert_eq!(
            chain_hash(&entry("a", ""), ""),
            chain_hash(&entry("a", ""), "")
        );
    }
}
