//! Jobs as kept: a job and its devices written and read back with their counts, pages
//! of devices filtered, moves that only happen from the expected status, claims and
//! leases between replicas, a job's commands found in the command log, and an older
//! database given the command log's `job_id` column. Each case on SQLite, on
//! PostgreSQL and in memory (see `support`).

#[macro_use]
mod support;

use std::collections::BTreeMap;

use protocol::{
    CommandId, CommandStatus, DeviceId,
    api::CommandView,
    job::{
        JobCounts, JobId, JobState, JobTarget, JobView, OfflinePolicy, Selector, TargetQuery,
        TargetStatus, Threshold,
    },
};
use store::{JobQuery, LoggedCommand};
use support::Db;

fn job(id: &str, created_ms: u64) -> JobView {
    JobView {
        id: JobId(id.into()),
        name: "reboot the lab".into(),
        command: "reboot".into(),
        args: BTreeMap::from([("seconds".into(), serde_json::json!(5))]),
        targets: Selector {
            group: Some("lab".into()),
            ..Selector::default()
        },
        concurrency: 3,
        failure_threshold: Some(Threshold::Percent(20)),
        offline: OfflinePolicy::Wait,
        wait_ms: 60_000,
        timeout_ms: 10_000,
        state: JobState::Running,
        created_by: "ada".into(),
        created_ms,
        updated_ms: created_ms,
        ended_ms: None,
        stop_reason: None,
        counts: JobCounts::default(),
        artifact: None,
    }
}

fn devices(n: usize) -> Vec<DeviceId> {
    (0..n)
        .map(|i| DeviceId::new(format!("dev_{i:04}")).unwrap())
        .collect()
}

fn moved(target: &JobTarget, status: TargetStatus, command: Option<&str>) -> JobTarget {
    JobTarget {
        status,
        command_id: command.map(|c| CommandId(c.into())),
        message: Some(format!("now {status}")),
        updated_ms: target.updated_ms + 1,
        ..target.clone()
    }
}

async fn a_job_and_its_devices_are_read_back_with_counts(db: &Db) {
    let store = &db.store;
    let view = job("j1", 1_000);
    // More devices than one statement takes.
    store
        .create_job(&view, "r1", 5_000, &devices(2_500))
        .await
        .unwrap();
    let stored = store.job("j1").await.unwrap().unwrap();
    assert_eq!((stored.owner.as_str(), stored.lease_ms), ("r1", 5_000));
    let mut expected = view.clone();
    expected.counts = JobCounts {
        total: 2_500,
        pending: 2_500,
        ..JobCounts::default()
    };
    assert_eq!(stored.view, expected);
    assert!(store.job("nope").await.unwrap().is_none());

    // Moves happen only from the expected status.
    let page = store
        .job_targets("j1", &TargetQuery::default())
        .await
        .unwrap();
    assert_eq!(
        (page.total, page.targets.len(), page.limit),
        (2_500, 50, 50)
    );
    let first = page.targets[0].clone();
    assert_eq!((first.seq, first.device_id.as_str()), (0, "dev_0000"));
    let starting = moved(&first, TargetStatus::Starting, None);
    assert!(
        store
            .update_target(&starting, &[TargetStatus::Pending])
            .await
            .unwrap()
    );
    assert!(
        !store
            .update_target(&starting, &[TargetStatus::Pending])
            .await
            .unwrap(),
        "no longer pending"
    );
    let running = moved(&starting, TargetStatus::Running, Some("c1"));
    assert!(
        store
            .update_target(&running, &[TargetStatus::Starting])
            .await
            .unwrap()
    );
    let failed = moved(&running, TargetStatus::Failed, Some("c1"));
    assert!(
        store
            .update_target(&failed, &[TargetStatus::Running])
            .await
            .unwrap()
    );
    let counts = store.job_counts("j1").await.unwrap();
    assert_eq!(
        (counts.total, counts.pending, counts.failed),
        (2_500, 2_499, 1)
    );

    // Pages: filtered by status and by a search (its wildcards taken literally).
    let query = TargetQuery {
        status: Some(TargetStatus::Failed),
        ..TargetQuery::default()
    };
    let page = store.job_targets("j1", &query).await.unwrap();
    assert_eq!(page.targets, vec![failed]);
    let query = TargetQuery {
        search: Some("DEV_24".into()),
        offset: 90,
        limit: Some(7),
        ..TargetQuery::default()
    };
    let page = store.job_targets("j1", &query).await.unwrap();
    assert_eq!((page.total, page.targets.len()), (100, 7));
    assert_eq!(page.targets[0].device_id.as_str(), "dev_2490");
    let query = TargetQuery {
        search: Some("%".into()),
        ..TargetQuery::default()
    };
    assert_eq!(store.job_targets("j1", &query).await.unwrap().total, 0);

    // The rest cancelled at once, and the job halted.
    let moved_all = store
        .update_targets(
            "j1",
            &[TargetStatus::Pending, TargetStatus::Waiting],
            TargetStatus::Cancelled,
            "not started",
            9_000,
        )
        .await
        .unwrap();
    assert_eq!(moved_all, 2_499);
    assert!(
        store
            .set_job_state(
                "j1",
                &[JobState::Running],
                JobState::Halted,
                Some("threshold"),
                9_000
            )
            .await
            .unwrap()
    );
    assert!(
        !store
            .set_job_state("j1", &[JobState::Running], JobState::Paused, None, 9_001)
            .await
            .unwrap(),
        "halted is the end"
    );
    let stored = store.job("j1").await.unwrap().unwrap().view;
    assert_eq!(stored.state, JobState::Halted);
    assert_eq!(
        (stored.ended_ms, stored.stop_reason.as_deref()),
        (Some(9_000), Some("threshold"))
    );
    assert_eq!((stored.counts.cancelled, stored.counts.failed), (2_499, 1));
    assert_eq!(store.job_devices("j1").await.unwrap().len(), 2_500);
}

async fn jobs_are_listed_newest_first_and_claimed_by_lease(db: &Db) {
    let store = &db.store;
    for (id, at) in [("a", 1_000), ("b", 2_000), ("c", 3_000)] {
        store
            .create_job(&job(id, at), "r1", 10_000, &devices(3))
            .await
            .unwrap();
    }
    let listed = store.jobs(JobQuery::default()).await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|j| j.id.0.as_str()).collect();
    assert_eq!(ids, ["c", "b", "a"]);
    assert!(
        listed
            .iter()
            .all(|j| j.counts.total == 3 && j.counts.pending == 3)
    );
    let older = store
        .jobs(JobQuery {
            before: Some((3_000, "c".into())),
            limit: 1,
            ..JobQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(older.len(), 1);
    assert_eq!(older[0].id.0, "b");

    // `a` completes; `b` is cancelled with devices still to settle.
    store
        .update_targets(
            "a",
            &[TargetStatus::Pending],
            TargetStatus::Succeeded,
            "",
            4_000,
        )
        .await
        .unwrap();
    store
        .set_job_state("a", &[JobState::Running], JobState::Completed, None, 4_000)
        .await
        .unwrap();
    store
        .set_job_state(
            "b",
            &[JobState::Running],
            JobState::Cancelled,
            Some("by ada"),
            4_000,
        )
        .await
        .unwrap();
    let state_query = JobQuery {
        state: Some(JobState::Completed),
        ..JobQuery::default()
    };
    assert_eq!(store.jobs(state_query).await.unwrap().len(), 1);

    // Another replica takes nothing while r1's lease runs…
    assert!(
        store
            .claim_jobs("r2", 5_000, 40_000)
            .await
            .unwrap()
            .is_empty()
    );
    // …and every unsettled job once it ran out: `c` running, `b` cancelled but unsettled.
    let claimed = store.claim_jobs("r2", 20_000, 50_000).await.unwrap();
    let ids: Vec<&str> = claimed.iter().map(|j| j.view.id.0.as_str()).collect();
    assert_eq!(ids, ["b", "c"]);
    assert!(
        claimed
            .iter()
            .all(|j| j.owner == "r2" && j.lease_ms == 50_000)
    );
    assert!(
        !store.renew_job("c", "r1", 60_000).await.unwrap(),
        "r1 lost it"
    );
    assert!(store.renew_job("c", "r2", 60_000).await.unwrap());
    // Settled, `b` is claimed no more.
    store
        .update_targets(
            "b",
            &[TargetStatus::Pending],
            TargetStatus::Cancelled,
            "",
            21_000,
        )
        .await
        .unwrap();
    let claimed = store.claim_jobs("r2", 21_000, 70_000).await.unwrap();
    assert_eq!(claimed.len(), 1);
}

async fn a_jobs_command_is_found_in_the_command_log(db: &Db) {
    let store = &db.store;
    let command = |id: &str, created_ms: u64, job: Option<&str>| LoggedCommand {
        view: CommandView {
            id: CommandId(id.into()),
            device_id: DeviceId::new("dev_0001").unwrap(),
            name: "reboot".into(),
            args: BTreeMap::new(),
            status: CommandStatus::Sent,
            created_ms,
            updated_ms: created_ms,
            deadline_ms: created_ms + 10_000,
            percent: None,
            message: None,
            result: None,
            error: None,
            issued_by: Some("ada".into()),
            job_id: job.map(|j| JobId(j.into())),
        },
        replica: "r1".into(),
        session_id: "s".into(),
        inbox: "i".into(),
        version: 1,
    };
    store
        .log_commands(vec![
            command("alone", 1_000, None),
            command("first", 2_000, Some("j9")),
            command("second", 3_000, Some("j9")),
        ])
        .await
        .unwrap();
    let found = store.job_command("j9", "dev_0001").await.unwrap().unwrap();
    assert_eq!(found.view.id.0, "second");
    assert_eq!(found.view.job_id, Some(JobId("j9".into())));
    assert!(store.job_command("j9", "dev_0002").await.unwrap().is_none());
    let alone = store.logged_command("alone").await.unwrap().unwrap();
    assert_eq!(alone.view.job_id, None);
}

async fn an_older_database_gets_the_job_column(db: &Db) {
    db.tamper("DROP INDEX commands_by_job").await;
    db.tamper("ALTER TABLE commands DROP COLUMN job_id").await;
    let reopened = store::Store::open(&db.url()).await.unwrap();
    let view = CommandView {
        id: CommandId("c".into()),
        device_id: DeviceId::new("d").unwrap(),
        name: "reboot".into(),
        args: BTreeMap::new(),
        status: CommandStatus::Accepted,
        created_ms: 1,
        updated_ms: 1,
        deadline_ms: 2,
        percent: None,
        message: None,
        result: None,
        error: None,
        issued_by: None,
        job_id: Some(JobId("j".into())),
    };
    let logged = LoggedCommand {
        view,
        replica: "r".into(),
        session_id: "s".into(),
        inbox: "i".into(),
        version: 1,
    };
    reopened.log_commands(vec![logged.clone()]).await.unwrap();
    assert_eq!(reopened.logged_command("c").await.unwrap(), Some(logged));
    // Opening it again changes nothing.
    store::Store::open(&db.url()).await.unwrap();
}

cases!(
    everywhere: [
        a_job_and_its_devices_are_read_back_with_counts,
        jobs_are_listed_newest_first_and_claimed_by_lease,
        a_jobs_command_is_found_in_the_command_log,
    ],
    on_disk: [an_older_database_gets_the_job_column]
);
