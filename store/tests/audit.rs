//! The audit trail: reading it, appending to it from many tasks and from two stores at
//! once, and finding entries altered or deleted behind the store's back. Each case on
//! SQLite, on PostgreSQL and, where it needs no way around the store, in memory (see
//! `support`).

#[macro_use]
mod support;

use std::time::Duration;

use store::{AuditQuery, NewAudit, Store};
use support::Db;

fn audit(actor: &str, action: &str, target: &str) -> NewAudit {
    NewAudit {
        actor: actor.into(),
        source: "127.0.0.1".into(),
        action: action.into(),
        target: target.into(),
        detail: format!("{actor} {action} {target}"),
    }
}

async fn the_audit_trail_is_read_newest_first_with_filters_and_pages(db: &Db) {
    let store = &db.store;
    assert!(store.audit(AuditQuery::default()).await.unwrap().is_empty());
    let first = store
        .audit_append(audit("alice", "login", "alice"))
        .await
        .unwrap();
    assert_eq!(first.seq, 1);
    assert_eq!(first.detail, "alice login alice");
    tokio::time::sleep(Duration::from_millis(5)).await;
    for i in 2..=25 {
        let actor = if i % 2 == 0 { "bob" } else { "carol" };
        let entry = store
            .audit_append(audit(actor, "command_sent", &format!("pump-{}", i % 3)))
            .await
            .unwrap();
        assert_eq!(entry.seq, i);
        assert!(entry.ts_ms > first.ts_ms);
    }

    let all = store.audit(AuditQuery::default()).await.unwrap();
    assert_eq!(all.len(), 25);
    assert_eq!(all[0].seq, 25, "newest first");
    assert_eq!(all[24], first);

    let page = |before_seq, limit| AuditQuery {
        before_seq,
        limit,
        ..AuditQuery::default()
    };
    let one = store.audit(page(None, 10)).await.unwrap();
    assert_eq!(
        one.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (16..=25).rev().collect::<Vec<_>>()
    );
    let two = store.audit(page(Some(16), 10)).await.unwrap();
    assert_eq!(
        two.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (6..=15).rev().collect::<Vec<_>>()
    );
    let three = store.audit(page(Some(6), 10)).await.unwrap();
    assert_eq!(three.len(), 5);
    assert_eq!(
        store.audit(page(None, 5_000)).await.unwrap().len(),
        25,
        "capped, not refused"
    );

    let by = |actor: Option<&str>, action: Option<&str>, target: Option<&str>| AuditQuery {
        actor: actor.map(Into::into),
        action: action.map(Into::into),
        target: target.map(Into::into),
        ..AuditQuery::default()
    };
    let bobs = store.audit(by(Some("bob"), None, None)).await.unwrap();
    assert_eq!(bobs.len(), 12);
    assert!(bobs.iter().all(|e| e.actor == "bob"));
    assert_eq!(
        store.audit(by(None, Some("login"), None)).await.unwrap(),
        std::slice::from_ref(&first)
    );
    assert!(
        store
            .audit(by(None, Some("log"), None))
            .await
            .unwrap()
            .is_empty(),
        "exact, not a prefix"
    );
    let pump = store
        .audit(by(Some("carol"), Some("command_sent"), Some("pump-0")))
        .await
        .unwrap();
    // Carol has the odd entries 3…25; pump-0 the multiples of 3: 3, 9, 15, 21.
    assert_eq!(
        pump.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [21, 15, 9, 3]
    );

    let range = |from_ms, to_ms| AuditQuery {
        from_ms,
        to_ms,
        ..AuditQuery::default()
    };
    let after = first.ts_ms as i64 + 1;
    assert_eq!(
        store.audit(range(Some(after), None)).await.unwrap().len(),
        24
    );
    assert_eq!(
        store.audit(range(None, Some(after))).await.unwrap(),
        std::slice::from_ref(&first)
    );
    assert_eq!(
        store
            .audit(range(Some(first.ts_ms as i64), Some(after)))
            .await
            .unwrap(),
        [first]
    );

    let check = store.audit_verify().await.unwrap();
    assert_eq!(
        (check.entries, check.broken_at, check.why),
        (25, None, None)
    );

    // A user's filter takes in their tokens' actions, and nobody else's: not a user whose
    // name only starts the same, nor one whose name has LIKE's wildcards in it.
    for actor in [
        "d_n (token 1f2e)",
        "dan (token 77aa)",
        "d_n",
        "d_nny",
        "dxn (token 0000)",
    ] {
        store
            .audit_append(audit(actor, "token_created", "t"))
            .await
            .unwrap();
    }
    let actors = |name: &'static str| async move {
        let found = store.audit(by(Some(name), None, None)).await.unwrap();
        found.into_iter().map(|e| e.actor).collect::<Vec<_>>()
    };
    assert_eq!(actors("d_n").await, ["d_n", "d_n (token 1f2e)"]);
    assert_eq!(actors("dan").await, ["dan (token 77aa)"]);
}

async fn concurrent_appends_make_one_unbroken_chain(db: &Db) {
    // Collected, so that all are spawned before any is awaited.
    let appends: Vec<_> = (0..20)
        .map(|i| {
            let store = db.store.clone();
            tokio::spawn(async move {
                store
                    .audit_append(audit("bob", "login", &i.to_string()))
                    .await
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for append in appends {
        seqs.push(append.await.unwrap().unwrap().seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    let check = db.store.audit_verify().await.unwrap();
    assert_eq!((check.entries, check.broken_at), (20, None));
}

/// Two stores on one database, as two server replicas on one PostgreSQL, or the
/// command line beside a running server on one SQLite file: their appends collide on
/// the next number, and the loser retries.
async fn two_stores_on_one_database_keep_one_chain(db: &Db) {
    let other = Store::open(&db.url()).await.unwrap();
    let appends: Vec<_> = (0..40)
        .map(|i| {
            let store = if i % 2 == 0 {
                db.store.clone()
            } else {
                other.clone()
            };
            tokio::spawn(async move {
                store
                    .audit_append(audit("bob", "login", &i.to_string()))
                    .await
            })
        })
        .collect();
    for append in appends {
        append.await.unwrap().unwrap();
    }
    let check = other.audit_verify().await.unwrap();
    assert_eq!((check.entries, check.broken_at), (40, None));
}

async fn an_altered_entry_is_found(db: &Db) {
    for i in 0..10 {
        db.store
            .audit_append(audit("bob", "login", &i.to_string()))
            .await
            .unwrap();
    }
    db.tamper("UPDATE audit SET detail = 'nothing happened' WHERE seq = 7")
        .await;
    let check = db.store.audit_verify().await.unwrap();
    assert_eq!(check.broken_at, Some(7));
    assert_eq!(check.why.as_deref(), Some("entry 7 was altered"));
    assert_eq!(check.entries, 6, "the ones before it hold");
    // The altered text is what is read back: the trail does not hide what was done.
    let seventh = db.store.audit(AuditQuery {
        before_seq: Some(8),
        limit: 1,
        ..Default::default()
    });
    assert_eq!(seventh.await.unwrap()[0].detail, "nothing happened");

    // Rewritten along with its own hash, by someone who knows how it is made: the entry
    // after it no longer follows it.
    let mut third = db
        .store
        .audit(AuditQuery {
            before_seq: Some(4),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .remove(0);
    third.detail = "forged".into();
    let hash = chain_hash(
        &third,
        &db.scalar("SELECT hash FROM audit WHERE seq = 2").await,
    );
    db.tamper(&format!(
        "UPDATE audit SET detail = 'forged', hash = '{hash}' WHERE seq = 3"
    ))
    .await;
    let check = db.store.audit_verify().await.unwrap();
    assert_eq!(
        (check.broken_at, check.why.as_deref()),
        (Some(4), Some("entry 4 does not follow entry 3"))
    );

    // A hash copied from another entry does not fit this one.
    db.tamper("UPDATE audit SET hash = (SELECT hash FROM audit WHERE seq = 2) WHERE seq = 1")
        .await;
    let check = db.store.audit_verify().await.unwrap();
    assert_eq!(
        (check.broken_at, check.why.as_deref()),
        (Some(1), Some("entry 1 was altered"))
    );
    assert_eq!(check.entries, 0);
}

async fn a_deleted_entry_is_found(db: &Db) {
    for i in 0..10 {
        db.store
            .audit_append(audit("bob", "login", &i.to_string()))
            .await
            .unwrap();
    }
    db.tamper("DELETE FROM audit WHERE seq = 5").await;
    let check = db.store.audit_verify().await.unwrap();
    assert_eq!(check.broken_at, Some(5));
    assert_eq!(check.why.as_deref(), Some("entry 5 is missing (deleted)"));
    assert_eq!(check.entries, 4);
    db.tamper("DELETE FROM audit WHERE seq IN (2, 3)").await;
    let check = db.store.audit_verify().await.unwrap();
    assert_eq!(
        (check.broken_at, check.why.as_deref()),
        (Some(2), Some("entries 2 to 3 are missing (deleted)"))
    );
    db.tamper("DELETE FROM audit WHERE seq = 1").await;
    let check = db.store.audit_verify().await.unwrap();
    assert_eq!(
        (check.broken_at, check.why.as_deref()),
        (Some(1), Some("entries 1 to 3 are missing (deleted)"))
    );
    assert_eq!(check.entries, 0);
}

/// The audit hash as the store documents it, for forging an entry as an insider might.
fn chain_hash(entry: &protocol::auth::AuditEntry, prev_hash: &str) -> String {
    use sha2::{Digest as _, Sha256};
    let mut hasher = Sha256::new();
    for field in [
        b"tether-audit-v1".as_slice(),
        &entry.seq.to_be_bytes(),
        &entry.ts_ms.to_be_bytes(),
        entry.actor.as_bytes(),
        entry.source.as_bytes(),
        entry.action.as_bytes(),
        entry.target.as_bytes(),
        entry.detail.as_bytes(),
        prev_hash.as_bytes(),
    ] {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field);
    }
    hex::encode(hasher.finalize())
}

cases!(
    everywhere: [
        the_audit_trail_is_read_newest_first_with_filters_and_pages,
        concurrent_appends_make_one_unbroken_chain,
    ],
    on_disk: [
        two_stores_on_one_database_keep_one_chain,
        an_altered_entry_is_found,
        a_deleted_entry_is_found,
    ]
);
