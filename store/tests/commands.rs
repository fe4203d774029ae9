//! The command log: versioned writes in batches, reading a command back exactly, pages
//! of them, the unfinished ones per replica, and retention. Each case on SQLite, on
//! PostgreSQL and in memory (see `support`).

#[macro_use]
mod support;

use std::{collections::BTreeMap, time::Duration};

use protocol::{CommandId, CommandStatus, DeviceId, api::CommandView};
use serde_json::json;
use store::{CommandQuery, LoggedCommand};
use support::Db;

/// A command just accepted: version 1, sent by replica `r1`.
fn command(id: &str, device: &str, created_ms: u64) -> LoggedCommand {
    LoggedCommand {
        view: CommandView {
            id: CommandId(id.into()),
            device_id: DeviceId::new(device).unwrap(),
            name: "reboot".into(),
            args: BTreeMap::new(),
            status: CommandStatus::Accepted,
            created_ms,
            updated_ms: created_ms,
            deadline_ms: created_ms + 30_000,
            percent: None,
            message: None,
            result: None,
            error: None,
            issued_by: None,
            job_id: None,
        },
        replica: "r1".into(),
        session_id: format!("{device}-session"),
        inbox: format!("inbox.{device}"),
        version: 1,
    }
}

/// The same command, `version` changes later, at `status`.
fn moved(command: &LoggedCommand, version: u64, status: CommandStatus) -> LoggedCommand {
    let mut moved = command.clone();
    moved.version = version;
    moved.view.status = status;
    moved.view.updated_ms = command.view.created_ms + version;
    moved
}

/// A page, which must be readable.
async fn page(db: &Db, query: CommandQuery) -> Vec<CommandView> {
    db.store.command_page(query).await.unwrap()
}

fn ids(views: &[CommandView]) -> Vec<&str> {
    views.iter().map(|view| view.id.0.as_str()).collect()
}

async fn versions_only_move_a_command_forward(db: &Db) {
    let store = &db.store;
    assert_eq!(store.logged_command("c1").await.unwrap(), None);
    store.log_commands(Vec::new()).await.unwrap();

    let first = command("c1", "pump-1", 1_000);
    store.log_commands(vec![first.clone()]).await.unwrap();
    assert_eq!(
        store.logged_command("c1").await.unwrap(),
        Some(first.clone())
    );

    let delivered = moved(&first, 3, CommandStatus::Delivered);
    store.log_commands(vec![delivered.clone()]).await.unwrap();
    assert_eq!(
        store.logged_command("c1").await.unwrap(),
        Some(delivered.clone())
    );

    // A stale batch (lower version), and one that repeats the stored version with other
    // contents: neither lands.
    let sent = moved(&first, 2, CommandStatus::Sent);
    let mut same = moved(&first, 3, CommandStatus::Succeeded);
    same.view.message = Some("not me".into());
    store.log_commands(vec![sent]).await.unwrap();
    store.log_commands(vec![same]).await.unwrap();
    assert_eq!(
        store.logged_command("c1").await.unwrap(),
        Some(delivered.clone())
    );

    // Several versions of one command in a batch, in any order: the highest is written,
    // beside another command's first.
    let progress = moved(&first, 4, CommandStatus::Progress);
    let succeeded = moved(&first, 6, CommandStatus::Succeeded);
    let other = command("c2", "pump-2", 2_000);
    store
        .log_commands(vec![
            progress.clone(),
            succeeded.clone(),
            other.clone(),
            moved(&first, 5, CommandStatus::Progress),
            first.clone(),
        ])
        .await
        .unwrap();
    assert_eq!(store.logged_command("c1").await.unwrap(), Some(succeeded));
    assert_eq!(store.logged_command("c2").await.unwrap(), Some(other));
    assert_eq!(store.logged_command("c3").await.unwrap(), None);
}

async fn every_field_is_read_back_exactly(db: &Db) {
    let store = &db.store;
    let mut full = command("full", "valve_7", 1_700_000_000_123);
    full.view.name = "set_schedule".into();
    full.view.args = BTreeMap::from([
        (
            "days".into(),
            json!(["mon", "wed", {"nested": [1, 2.5, null, true]}]),
        ),
        ("level".into(), json!(42)),
        (
            "note".into(),
            json!("quote \" and 'apostrophe' and ünïcödé and $1"),
        ),
        ("empty".into(), json!({})),
    ]);
    full.view.status = CommandStatus::Succeeded;
    full.view.updated_ms = 1_700_000_004_567;
    full.view.deadline_ms = u64::try_from(i64::MAX).unwrap();
    full.view.percent = Some(100);
    full.view.message = Some("done, 3 of 3".into());
    full.view.result = Some(json!({"applied": [1, 2, 3], "ok": true, "x": 0.1}));
    full.view.error = Some(String::new());
    full.view.issued_by = Some("alice (token 1f2e)".into());
    full.replica = "replica-a".into();
    full.session_id = "s-42".into();
    full.inbox = "device.valve_7.inbox".into();
    full.version = 9;

    let mut timed_out = command("bare", "valve_7", 5);
    timed_out.view.status = CommandStatus::TimedOut;
    timed_out.view.result = Some(json!(null));
    timed_out.view.percent = Some(0);
    timed_out.view.error = Some("no answer".into());
    let bare = command("plain", "valve_8", 6);

    store
        .log_commands(vec![full.clone(), timed_out.clone(), bare.clone()])
        .await
        .unwrap();
    assert_eq!(
        store.logged_command("full").await.unwrap(),
        Some(full.clone())
    );
    assert_eq!(
        store.logged_command("plain").await.unwrap(),
        Some(bare.clone())
    );
    // A JSON null result is kept as one, not taken for no result.
    assert_eq!(
        store.logged_command("bare").await.unwrap(),
        Some(timed_out.clone())
    );

    // Every status survives the trip.
    let statuses = [
        CommandStatus::Accepted,
        CommandStatus::Sent,
        CommandStatus::Delivered,
        CommandStatus::Progress,
    ]
    .into_iter()
    .chain(CommandStatus::TERMINAL);
    for (i, status) in statuses.enumerate() {
        let logged = moved(&full, 10 + i as u64, status);
        store.log_commands(vec![logged.clone()]).await.unwrap();
        assert_eq!(store.logged_command("full").await.unwrap(), Some(logged));
    }

    let read = page(db, CommandQuery::default()).await;
    assert_eq!(ids(&read), ["full", "plain", "bare"]);
}

async fn pages_are_newest_first_per_device_and_restricted(db: &Db) {
    let store = &db.store;
    assert!(page(db, CommandQuery::default()).await.is_empty());
    // 30 commands on three devices, two at a time, so the id breaks ties.
    let mut all = Vec::new();
    for i in 0..30u64 {
        let device = format!("dev-{}", i % 3);
        all.push(command(&format!("c{i:02}"), &device, 1_000 + i / 2 * 10));
    }
    store.log_commands(all.clone()).await.unwrap();
    let mut newest_first = all.clone();
    newest_first
        .sort_by(|a, b| (b.view.created_ms, &b.view.id.0).cmp(&(a.view.created_ms, &a.view.id.0)));
    let expected: Vec<&str> = newest_first.iter().map(|c| c.view.id.0.as_str()).collect();

    let everything = page(db, CommandQuery::default()).await;
    assert_eq!(ids(&everything), expected);
    assert_eq!(everything[0], newest_first[0].view);

    // Pages of 7, each after the last of the one before, give everything once.
    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let read = page(
            db,
            CommandQuery {
                before: before.clone(),
                limit: 7,
                ..CommandQuery::default()
            },
        )
        .await;
        assert!(read.len() <= 7);
        let Some(last) = read.last() else { break };
        before = Some((last.created_ms, last.id.0.clone()));
        paged.extend(read);
    }
    assert_eq!(ids(&paged), expected);

    let of = |device: Option<&str>, devices: Option<&[&str]>, limit| CommandQuery {
        device: device.map(Into::into),
        devices: devices.map(|d| d.iter().map(|&d| d.to_owned()).collect()),
        limit,
        ..CommandQuery::default()
    };
    let dev1 = page(db, of(Some("dev-1"), None, 0)).await;
    assert_eq!(dev1.len(), 10);
    assert!(dev1.iter().all(|c| c.device_id.as_str() == "dev-1"));
    let dev1_expected: Vec<&str> = expected
        .iter()
        .copied()
        .filter(|id| id[1..].parse::<u64>().unwrap() % 3 == 1)
        .collect();
    assert_eq!(ids(&dev1), dev1_expected);
    let dev1_after = page(
        db,
        CommandQuery {
            before: Some((dev1[3].created_ms, dev1[3].id.0.clone())),
            ..of(Some("dev-1"), None, 2)
        },
    )
    .await;
    assert_eq!(ids(&dev1_after), dev1_expected[4..6]);

    let seen = page(db, of(None, Some(&["dev-0", "dev-2", "nope"]), 0)).await;
    assert_eq!(seen.len(), 20);
    assert!(seen.iter().all(|c| c.device_id.as_str() != "dev-1"));
    let none = page(db, of(None, Some(&[]), 0)).await;
    assert!(none.is_empty(), "an empty restriction shows nothing");
    let none = page(db, of(Some("dev-1"), Some(&["dev-0"]), 0)).await;
    assert!(none.is_empty(), "a device outside the restriction");
    let both = page(db, of(Some("dev-0"), Some(&["dev-0", "dev-1"]), 0)).await;
    assert_eq!(both.len(), 10);

    // Many devices in the restriction: one placeholder each.
    let many: Vec<String> = (0..600)
        .map(|i| format!("other-{i}"))
        .chain(["dev-2".to_owned()])
        .collect();
    let read = page(
        db,
        CommandQuery {
            devices: Some(many),
            ..CommandQuery::default()
        },
    )
    .await;
    assert_eq!(read.len(), 10);

    // Limits: 0 is 50, anything above 1000 is 1000.
    let more: Vec<LoggedCommand> = (0..1_100)
        .map(|i| command(&format!("m{i:04}"), "dev-9", 5_000 + i))
        .collect();
    store.log_commands(more).await.unwrap();
    assert_eq!(page(db, of(None, None, 0)).await.len(), 50);
    assert_eq!(page(db, of(None, None, 3)).await.len(), 3);
    assert_eq!(page(db, of(None, None, 5_000)).await.len(), 1_000);
    assert_eq!(page(db, of(None, None, 1_000)).await[0].id.0, "m1099");
}

async fn unfinished_commands_are_found_per_replica(db: &Db) {
    let store = &db.store;
    assert!(store.unfinished_commands(None).await.unwrap().is_empty());
    let mut batch = Vec::new();
    for (i, (replica, status)) in [
        ("r1", CommandStatus::Accepted),
        ("r1", CommandStatus::Progress),
        ("r1", CommandStatus::Succeeded),
        ("r2", CommandStatus::Sent),
        ("r2", CommandStatus::Cancelled),
        ("r3", CommandStatus::Offline),
    ]
    .into_iter()
    .enumerate()
    {
        let mut logged = moved(&command(&format!("u{i}"), "dev", 100 + i as u64), 2, status);
        logged.replica = replica.into();
        batch.push(logged);
    }
    store.log_commands(batch.clone()).await.unwrap();

    let r1 = store.unfinished_commands(Some("r1")).await.unwrap();
    assert_eq!(r1, batch[0..2]);
    let r2 = store.unfinished_commands(Some("r2")).await.unwrap();
    assert_eq!(r2, [batch[3].clone()]);
    assert!(
        store
            .unfinished_commands(Some("r3"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .unfinished_commands(Some("r9"))
            .await
            .unwrap()
            .is_empty()
    );
    let all = store.unfinished_commands(None).await.unwrap();
    assert_eq!(all, [batch[0].clone(), batch[1].clone(), batch[3].clone()]);

    // Once ended, it is no longer unfinished; taken over by another replica, it is that
    // replica's.
    let mut ended = moved(&batch[0], 3, CommandStatus::TimedOut);
    ended.replica = "r2".into();
    let mut taken = moved(&batch[1], 3, CommandStatus::Progress);
    taken.replica = "r2".into();
    store
        .log_commands(vec![ended, taken.clone()])
        .await
        .unwrap();
    assert!(
        store
            .unfinished_commands(Some("r1"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.unfinished_commands(Some("r2")).await.unwrap(),
        [taken.clone(), batch[3].clone()]
    );
}

async fn retention_prunes_only_old_finished_commands(db: &Db) {
    let store = &db.store;
    assert_eq!(store.prune_commands(i64::MAX).await.unwrap(), 0);
    let old_done = moved(&command("old-done", "dev", 1_000), 2, CommandStatus::Failed);
    let old_open = moved(
        &command("old-open", "dev", 1_000),
        2,
        CommandStatus::Delivered,
    );
    let new_done = moved(
        &command("new-done", "dev", 9_000),
        2,
        CommandStatus::Succeeded,
    );
    let new_open = command("new-open", "dev", 9_000);
    let edge_done = moved(
        &command("edge-done", "dev", 5_000),
        2,
        CommandStatus::Rejected,
    );
    store
        .log_commands(vec![
            old_done,
            old_open.clone(),
            new_done,
            new_open,
            edge_done,
        ])
        .await
        .unwrap();

    assert_eq!(store.prune_commands(5_000).await.unwrap(), 1);
    assert_eq!(store.logged_command("old-done").await.unwrap(), None);
    let left = page(db, CommandQuery::default()).await;
    assert_eq!(
        ids(&left),
        ["new-open", "new-done", "edge-done", "old-open"]
    );
    assert_eq!(store.prune_commands(5_000).await.unwrap(), 0);

    assert_eq!(store.prune_commands(i64::MAX).await.unwrap(), 2);
    let left = page(db, CommandQuery::default()).await;
    assert_eq!(ids(&left), ["new-open", "old-open"]);
    assert_eq!(
        store.unfinished_commands(None).await.unwrap(),
        [old_open, command("new-open", "dev", 9_000)]
    );

    // The server's retention loop prunes them with the samples.
    let ancient = moved(&command("ancient", "dev", 1), 2, CommandStatus::Succeeded);
    store.log_commands(vec![ancient]).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let hour = Duration::from_secs(3_600);
    let pruning = tokio::spawn(store.clone().prune_until(hour, hour, stop.clone()));
    tokio::time::timeout(Duration::from_secs(10), async {
        while store.logged_command("ancient").await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("prune_until prunes finished commands");
    stop.cancel();
    pruning.await.unwrap();
    assert_eq!(store.unfinished_commands(None).await.unwrap().len(), 2);
}

async fn large_batches_are_written(db: &Db) {
    let store = &db.store;
    let first: Vec<LoggedCommand> = (0..500)
        .map(|i| command(&format!("b{i:03}"), &format!("dev-{}", i % 20), 1_000 + i))
        .collect();
    store.log_commands(first.clone()).await.unwrap();
    // 500 updates, each command twice in the batch.
    let updates: Vec<LoggedCommand> = first
        .iter()
        .flat_map(|c| {
            [
                moved(c, 2, CommandStatus::Progress),
                moved(c, 3, CommandStatus::Succeeded),
            ]
        })
        .collect();
    store.log_commands(updates.clone()).await.unwrap();
    assert!(store.unfinished_commands(None).await.unwrap().is_empty());
    let read = page(
        db,
        CommandQuery {
            limit: 1_000,
            ..CommandQuery::default()
        },
    )
    .await;
    assert_eq!(read.len(), 500);
    assert!(read.iter().all(|c| c.status == CommandStatus::Succeeded));
    assert_eq!(
        store.logged_command("b123").await.unwrap(),
        Some(moved(&first[123], 3, CommandStatus::Succeeded))
    );
    // More than one statement's worth (on PostgreSQL, several statements; on SQLite,
    // one transaction).
    let many: Vec<LoggedCommand> = (0..2_500)
        .map(|i| command(&format!("n{i:04}"), "dev-x", 100_000 + i))
        .collect();
    store.log_commands(many).await.unwrap();
    let read = page(
        db,
        CommandQuery {
            device: Some("dev-x".into()),
            limit: 1_000,
            ..CommandQuery::default()
        },
    )
    .await;
    assert_eq!(read.len(), 1_000);
    assert_eq!(read[0].id.0, "n2499");
    assert_eq!(store.unfinished_commands(None).await.unwrap().len(), 2_500);
}

/// Commands of one name in one status (a device's diagnostics reports): only those,
/// newest first, paged like any page.
async fn pages_filter_by_name_and_status(db: &Db) {
    let store = &db.store;
    let mut all = Vec::new();
    for i in 0..12u64 {
        let mut c = command(&format!("d{i:02}"), "box-1", 1_000 + i);
        c.view.name = if i % 2 == 0 { "diagnostics" } else { "reboot" }.into();
        let status = if i % 4 == 0 {
            CommandStatus::Succeeded
        } else {
            CommandStatus::Failed
        };
        all.push(moved(&c, 2, status));
    }
    let mut elsewhere = command("x1", "box-2", 5_000);
    elsewhere.view.name = "diagnostics".into();
    all.push(moved(&elsewhere, 2, CommandStatus::Succeeded));
    store.log_commands(all).await.unwrap();

    let reports = |before, limit| CommandQuery {
        device: Some("box-1".into()),
        name: Some("diagnostics".into()),
        status: Some(CommandStatus::Succeeded),
        before,
        limit,
        ..CommandQuery::default()
    };
    let read = page(db, reports(None, 0)).await;
    assert_eq!(ids(&read), ["d08", "d04", "d00"]);
    let next = page(db, reports(Some((1_008, "d08".into())), 1)).await;
    assert_eq!(ids(&next), ["d04"]);
    let named = page(
        db,
        CommandQuery {
            name: Some("diagnostics".into()),
            ..CommandQuery::default()
        },
    )
    .await;
    assert_eq!(named.len(), 7, "every device's, in any status");
    let nothing = page(
        db,
        CommandQuery {
            name: Some("diagnostics' OR '1'='1".into()),
            ..CommandQuery::default()
        },
    )
    .await;
    assert!(nothing.is_empty(), "the name is a parameter, never SQL");
}

/// Two stores on one database (two replicas) write the same commands concurrently; the
/// highest version of each ends up stored whatever the order.
async fn two_writers_keep_the_highest_version(db: &Db) {
    let other = store::Store::open(&db.url()).await.unwrap();
    let base: Vec<LoggedCommand> = (0..50)
        .map(|i| command(&format!("w{i:02}"), "dev", 1_000 + i))
        .collect();
    let mut tasks = Vec::new();
    for version in 1..=10u64 {
        let store = if version % 2 == 0 {
            db.store.clone()
        } else {
            other.clone()
        };
        let mut batch: Vec<LoggedCommand> = base
            .iter()
            .map(|c| moved(c, version, CommandStatus::Progress))
            .collect();
        fastrand::shuffle(&mut batch);
        tasks.push(tokio::spawn(async move { store.log_commands(batch).await }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    for c in &base {
        let stored = db
            .store
            .logged_command(&c.view.id.0)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.version, 10);
        assert_eq!(stored, moved(c, 10, CommandStatus::Progress));
    }
}

cases!(
    everywhere: [
        versions_only_move_a_command_forward,
        every_field_is_read_back_exactly,
        pages_are_newest_first_per_device_and_restricted,
        pages_filter_by_name_and_status,
        unfinished_commands_are_found_per_replica,
        retention_prunes_only_old_finished_commands,
        large_batches_are_written,
    ],
    on_disk: [two_writers_keep_the_highest_version]
);
