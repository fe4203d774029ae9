//! Jobs over the HTTP API, against RabbitMQ with simulated gateways: a job's
//! concurrency as the command log shows it, the failure threshold, pause, resume and
//! cancel, devices offline when their turn comes, who may do and see what, the live
//! channel, and the audit trail. (The server killed in the middle of a job:
//! `restart.rs`.)

mod support;

use std::{collections::HashSet, time::Duration};

use agent::simulate::Kind;
use protocol::{
    CommandStatus,
    api::{ApiError, CommandView, LiveEvent},
    auth::Role,
    job::{JobState, JobView, TargetPage, TargetStatus},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use store::CommandQuery;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

/// `n` simulated gateways, online on the server's hub.
async fn gateways(server: &support::Running, name: &str, n: usize) -> Vec<testkit::Agent> {
    let mut agents = Vec::with_capacity(n);
    for _ in 0..n {
        let agent =
            testkit::Agent::start(&testkit::rabbitmq_url(), name, Kind::Gateway, |config| {
                config.heartbeat = Duration::from_secs(1);
            })
            .await;
        agents.push(agent);
    }
    for agent in &agents {
        testkit::online(&server.hub, &agent.id).await;
    }
    agents
}

fn ids(agents: &[testkit::Agent]) -> Vec<String> {
    agents.iter().map(|a| a.id.to_string()).collect()
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> (StatusCode, Value) {
    let response = client.post(url).json(&body).send().await.unwrap();
    (response.status(), response.json().await.unwrap())
}

async fn get<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    url: String,
) -> (StatusCode, T) {
    let response = client.get(url).send().await.unwrap();
    (response.status(), response.json().await.unwrap())
}

/// Polls `check` every 50 ms until it gives a value; panics after `within`.
async fn poll<T>(what: &str, within: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the job is in one of `states`; gives it as it is then.
async fn until_state(
    server: &support::Running,
    client: &reqwest::Client,
    id: &str,
    states: &[JobState],
    within: Duration,
) -> JobView {
    let url = server.url(&format!("/api/v1/jobs/{id}"));
    poll(&format!("the job is {states:?}"), within, async || {
        let (status, job): (StatusCode, JobView) = get(client, url.clone()).await;
        (status == StatusCode::OK && states.contains(&job.state)).then_some(job)
    })
    .await
}

/// The job's commands, from the command log.
async fn job_commands(server: &support::Running, job: &str) -> Vec<CommandView> {
    server
        .accounts
        .command_page(CommandQuery {
            job: Some(job.to_owned()),
            limit: 1_000,
            ..CommandQuery::default()
        })
        .await
        .unwrap()
}

/// The job's commands once the command log has them all ended (it is written in
/// batches, within about 50 ms of each change).
async fn ended_job_commands(server: &support::Running, job: &str) -> Vec<CommandView> {
    poll(
        "every command of the job ended, in the log",
        Duration::from_secs(5),
        async || {
            let commands = job_commands(server, job).await;
            commands
                .iter()
                .all(|c| c.status.is_terminal())
                .then_some(commands)
        },
    )
    .await
}

/// The most commands that were running at once: each runs from its creation to its
/// last change (its end); at the same millisecond an end comes before a start.
fn most_at_once(commands: &[CommandView]) -> usize {
    let mut moments: Vec<(u64, i32)> = Vec::new();
    for command in commands {
        moments.push((command.created_ms, 1));
        moments.push((command.updated_ms, -1));
    }
    moments.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, change) in moments {
        now += change;
        most = most.max(now);
    }
    usize::try_from(most).unwrap_or(0)
}

#[tokio::test]
async fn a_job_over_twenty_devices_runs_five_at_once_and_every_device_ends() {
    let server = support::start().await;
    let (client, token, _) = server.user(Role::Admin, &[]).await;
    let agents = gateways(&server, "job-twenty", 20).await;
    let mut live = live(&server, &token).await;

    let (status, created) = post(
        &client,
        server.url("/api/v1/jobs"),
        json!({
            "name": "greet the fleet",
            "command": "echo",
            "args": {"message": "hi", "delay_ms": 300},
            "targets": {"ids": ids(&agents)},
            "concurrency": 5,
        }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let created: JobView = serde_json::from_value(created).unwrap();
    assert_eq!(created.counts.total, 20);
    assert_eq!(created.state, JobState::Running);

    let done = until_state(
        &server,
        &client,
        &created.id.0,
        &[JobState::Completed],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(done.counts.succeeded, 20, "{:?}", done.counts);
    assert_eq!(done.counts.finished(), 20);
    assert!(done.ended_ms.is_some() && done.stop_reason.is_none());

    // The command log: one command per device, never more than five at once.
    let commands = ended_job_commands(&server, &created.id.0).await;
    assert_eq!(commands.len(), 20);
    let devices: HashSet<_> = commands.iter().map(|c| c.device_id.clone()).collect();
    assert_eq!(devices.len(), 20, "each device commanded once");
    assert!(
        commands
            .iter()
            .all(|c| c.status == CommandStatus::Succeeded)
    );
    assert_eq!(most_at_once(&commands), 5, "five at once, never more");

    // The live channel's last word on the job matches the API.
    let last = testkit::within(Duration::from_secs(5), "the live counts", async {
        loop {
            if let Some(LiveEvent::JobUpdated { job }) = next_event(&mut live).await
                && job.id == created.id
                && job.state == JobState::Completed
            {
                return job;
            }
        }
    })
    .await;
    assert_eq!(last.counts, done.counts);

    // Its devices, paged and filtered.
    let (status, page): (StatusCode, TargetPage) = get(
        &client,
        server.url(&format!(
            "/api/v1/jobs/{}/devices?status=succeeded&offset=14&limit=7",
            created.id
        )),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((page.total, page.targets.len()), (20, 6));
    assert!(page.targets.iter().all(|t| t.command_id.is_some()));
    let one = &agents[3].id;
    let (_, page): (StatusCode, TargetPage) = get(
        &client,
        server.url(&format!("/api/v1/jobs/{}/devices?search={one}", created.id)),
    )
    .await;
    assert_eq!(page.total, 1);
    assert_eq!(page.targets[0].device_id, *one);
    assert_eq!(
        page.targets[0].message.as_deref(),
        Some(r#"{"message":"hi"}"#)
    );

    // Listed, newest first, and audited.
    let (_, jobs): (StatusCode, Vec<JobView>) = get(&client, server.url("/api/v1/jobs")).await;
    assert_eq!(jobs.first().map(|j| &j.id), Some(&created.id));
    let audit = server
        .accounts
        .audit(store::AuditQuery {
            action: Some("job_created".into()),
            target: Some(created.id.0.clone()),
            ..store::AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);
}

#[tokio::test]
async fn a_job_halts_at_its_failure_threshold_and_starts_no_device_after() {
    let server = support::start().await;
    // An operator sees the devices of its groups only: an admin puts the job's
    // devices in one of them.
    let (client, _, _) = server.user(Role::Operator, &["halt"]).await;
    let (admin, _, _) = server.user(Role::Admin, &[]).await;
    let agents = gateways(&server, "job-halt", 8).await;
    for agent in &agents {
        let response = admin
            .put(server.url(&format!("/api/v1/devices/{}/groups", agent.id)))
            .json(&json!(["halt"]))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    let (status, created) = post(
        &client,
        server.url("/api/v1/jobs"),
        json!({
            "command": "fail",
            "args": {"message": "disk full"},
            "targets": {"group": "halt", "kind": "gateway"},
            "concurrency": 2,
            "failure_threshold": {"count": 3},
        }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let created: JobView = serde_json::from_value(created).unwrap();
    assert_eq!(created.counts.total, 8);

    let halted = until_state(
        &server,
        &client,
        &created.id.0,
        &[JobState::Halted],
        Duration::from_secs(30),
    )
    .await;
    let reason = halted.stop_reason.clone().unwrap_or_default();
    assert!(reason.contains("threshold"), "{reason}");
    let halted_at = halted.ended_ms.expect("a halted job has ended");

    // Those started before the halt finish; nothing is started after it.
    let settled = poll(
        "every device settled",
        Duration::from_secs(10),
        async || {
            let (_, job): (StatusCode, JobView) =
                get(&client, server.url(&format!("/api/v1/jobs/{}", created.id))).await;
            (job.counts.finished() == 8).then_some(job)
        },
    )
    .await;
    let commands = ended_job_commands(&server, &created.id.0).await;
    assert!(
        commands.iter().all(|c| c.created_ms <= halted_at),
        "no command after the halt"
    );
    assert!(
        (3..=4).contains(&commands.len()),
        "three failures halt it, with at most one more already running: {}",
        commands.len()
    );
    assert_eq!(settled.counts.failed as usize, commands.len());
    assert_eq!(settled.counts.cancelled as usize, 8 - commands.len());
    let (_, page): (StatusCode, TargetPage) = get(
        &client,
        server.url(&format!(
            "/api/v1/jobs/{}/devices?status=failed",
            created.id
        )),
    )
    .await;
    assert!(page.targets.iter().all(|t| {
        t.message
            .as_deref()
            .is_some_and(|m| m.contains("disk full"))
    }));

    // Halted is the end: it can be neither resumed nor cancelled.
    let (status, body) = post(
        &client,
        server.url(&format!("/api/v1/jobs/{}/resume", created.id)),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

#[tokio::test]
async fn a_job_is_paused_resumed_and_cancelled_and_offline_devices_are_skipped() {
    let server = support::start().await;
    let (client, _, _) = server.user(Role::Admin, &[]).await;
    let agents = gateways(&server, "job-control", 4).await;
    let mut targets = ids(&agents);
    // Provisioned, never connected: offline when its turn comes.
    targets.insert(1, testkit::unique("job-ghost"));

    let (status, created) = post(
        &client,
        server.url("/api/v1/jobs"),
        json!({
            "command": "echo",
            "args": {"message": "slow", "delay_ms": 1_500},
            "targets": {"ids": targets},
            "concurrency": 1,
            "timeout_ms": 20_000,
        }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let created: JobView = serde_json::from_value(created).unwrap();
    let job_url = |what: &str| server.url(&format!("/api/v1/jobs/{}{what}", created.id));

    // Paused while the first device works: it finishes, nothing else starts.
    let (status, paused) = post(&client, job_url("/pause"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert_eq!(paused["state"], "paused");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let started = job_commands(&server, &created.id.0).await.len();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(job_commands(&server, &created.id.0).await.len(), started);
    assert!(started <= 1, "paused at once: {started} started");
    // Pausing again changes nothing.
    let (status, _) = post(&client, job_url("/pause"), json!({})).await;
    assert_eq!(status, StatusCode::OK);

    // Resumed: the ghost is skipped, the next device starts.
    let (status, resumed) = post(&client, job_url("/resume"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{resumed}");
    poll(
        "the ghost is skipped and another device runs",
        Duration::from_secs(10),
        async || {
            let (_, job): (StatusCode, JobView) = get(&client, job_url("")).await;
            (job.counts.skipped == 1 && job.counts.succeeded >= 1 && job.counts.running == 1)
                .then_some(())
        },
    )
    .await;

    // Cancelled: the running command is cancelled, the rest never start.
    let (status, cancelled) = post(&client, job_url("/cancel"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");
    assert!(
        cancelled["stop_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("cancelled by ")),
        "{cancelled}"
    );
    let settled = poll(
        "every device settled",
        Duration::from_secs(10),
        async || {
            let (_, job): (StatusCode, JobView) = get(&client, job_url("")).await;
            (job.counts.finished() == 5).then_some(job)
        },
    )
    .await;
    assert_eq!(settled.state, JobState::Cancelled);
    assert_eq!(settled.counts.skipped, 1);
    assert!(settled.counts.cancelled >= 2, "{:?}", settled.counts);
    let commands = ended_job_commands(&server, &created.id.0).await;
    assert!(
        commands.iter().all(|c| c.status.is_terminal()),
        "every command of the job ended"
    );
    assert!(
        commands
            .iter()
            .any(|c| c.status == CommandStatus::Cancelled),
        "the running one was cancelled: {commands:?}"
    );
    let (_, page): (StatusCode, TargetPage) =
        get(&client, job_url("/devices?status=skipped")).await;
    assert_eq!(page.targets[0].status, TargetStatus::Skipped);
    assert!(
        page.targets[0]
            .message
            .as_deref()
            .unwrap_or("")
            .contains("offline")
    );
    let (status, _) = post(&client, job_url("/cancel"), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "cancelled is the end");
}

#[tokio::test]
async fn jobs_are_refused_clearly_and_kept_from_those_who_may_not_see_them() {
    let server = support::start().await;
    let (admin, _, _) = server.user(Role::Admin, &[]).await;
    let (viewer, _, _) = server.user(Role::Viewer, &["lab"]).await;
    let (outsider, outsider_token, _) = server.user(Role::Operator, &["elsewhere"]).await;
    let agents = gateways(&server, "job-refuse", 1).await;
    let device = agents[0].id.to_string();
    let error = |body: Value| -> ApiError { serde_json::from_value(body).unwrap() };
    let jobs = server.url("/api/v1/jobs");

    for (body, status, code) in [
        (
            json!({"command": "echo", "targets": {}}),
            422,
            "invalid_job",
        ),
        (
            json!({"command": "echo", "targets": {"ids": [device]}, "concurrency": 0}),
            422,
            "invalid_job",
        ),
        (
            json!({"command": "echo", "targets": {"ids": [device]}, "failure_threshold": {"percent": 0}}),
            422,
            "invalid_job",
        ),
        (
            json!({"command": "launch", "targets": {"ids": [device]}}),
            422,
            "unknown_command",
        ),
        (
            json!({"command": "echo", "args": {"delay_ms": "soon"}, "targets": {"ids": [device]}}),
            422,
            "invalid_arguments",
        ),
        (
            json!({"command": "echo", "targets": {"kind": "toaster"}}),
            422,
            "invalid_job",
        ),
        (
            json!({"command": "echo", "targets": {"ids": ["not a device!"]}}),
            422,
            "",
        ),
        (json!({"targets": {"all": true}}), 422, ""),
    ] {
        let (got, body) = post(&admin, jobs.clone(), body.clone()).await;
        assert_eq!(got.as_u16(), status, "{body}");
        if !code.is_empty() {
            assert_eq!(error(body).code, code);
        }
    }

    // A viewer may not start jobs.
    let (status, body) = post(
        &viewer,
        jobs.clone(),
        json!({"command": "echo", "targets": {"all": true}}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    let (status, created) = post(
        &admin,
        jobs.clone(),
        json!({"command": "echo", "targets": {"ids": [device]}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    until_state(
        &server,
        &admin,
        &id,
        &[JobState::Completed],
        Duration::from_secs(20),
    )
    .await;

    // Someone outside the device's groups: the job does not exist for them.
    let (status, body): (StatusCode, Value) =
        get(&outsider, server.url(&format!("/api/v1/jobs/{id}"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(error(body).code, "unknown_job");
    let (_, listed): (StatusCode, Vec<JobView>) = get(&outsider, jobs.clone()).await;
    assert!(listed.iter().all(|j| j.id.0 != id));
    let (status, _) = post(
        &outsider,
        server.url(&format!("/api/v1/jobs/{id}/cancel")),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Nor on the live channel: a tab of theirs that follows it is refused as for a job
    // that does not exist, and so is one that follows a job nobody made.
    let mut tab = live(&server, &outsider_token).await;
    for job in [id.as_str(), "nope"] {
        use futures_util::SinkExt as _;
        let follow = json!({"type": "follow", "job_id": job}).to_string();
        tab.send(Message::Text(follow.into())).await.unwrap();
        let refusal = testkit::within(Duration::from_secs(10), "the refusal", async {
            loop {
                if let Some(LiveEvent::Refused { code, message }) = next_event(&mut tab).await {
                    return (code, message);
                }
            }
        })
        .await;
        assert_eq!(refusal.0, "not_found", "{refusal:?}");
        assert!(refusal.1.contains(job), "{refusal:?}");
    }
    // And no job by that name at all.
    let (status, _): (StatusCode, Value) = get(&admin, server.url("/api/v1/jobs/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn live(server: &support::Running, token: &str) -> Socket {
    let mut request = server
        .url("/api/v1/live")
        .replace("http://", "ws://")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    socket
}

async fn next_event(socket: &mut Socket) -> Option<LiveEvent> {
    use futures_util::StreamExt as _;
    match socket.next().await {
        Some(Ok(Message::Text(text))) => serde_json::from_str(&text).ok(),
        _ => None,
    }
}

#[tokio::test]
async fn another_replicas_browsers_see_a_job_live() {
    let first = support::start().await;
    let database = format!("sqlite://{}", first.database.display());
    let second = support::start_with(|config| config.database_url = database).await;
    let (client, _, _) = first.user(Role::Admin, &[]).await;
    let (_, token, _) = second.user(Role::Admin, &[]).await;
    let agents = gateways(&first, "job-replicas", 2).await;
    let mut live = live(&second, &token).await;

    // Each device takes a while, so that the tab follows the job (as its page does once
    // it has it) before any of them ends.
    let (status, created) = post(
        &client,
        first.url("/api/v1/jobs"),
        json!({"command": "echo", "args": {"delay_ms": 1_500}, "targets": {"ids": ids(&agents)}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let created: JobView = serde_json::from_value(created).unwrap();
    {
        use futures_util::SinkExt as _;
        let follow = json!({"type": "follow", "job_id": created.id}).to_string();
        live.send(Message::Text(follow.into())).await.unwrap();
    }
    let (mut targets, mut completed) = (HashSet::new(), false);
    testkit::within(
        Duration::from_secs(15),
        "the other replica's events",
        async {
            while !(completed && targets.len() == 2) {
                match next_event(&mut live).await {
                    Some(LiveEvent::JobTarget { target })
                        if target.job_id == created.id
                            && target.status == TargetStatus::Succeeded =>
                    {
                        targets.insert(target.device_id);
                    }
                    Some(LiveEvent::JobUpdated { job }) if job.id == created.id => {
                        completed |= job.state == JobState::Completed;
                    }
                    _ => {}
                }
            }
        },
    )
    .await;
    // And the second replica answers for the job from the shared database.
    let (status, job): (StatusCode, JobView) = get(
        &testkit::api_client(&token),
        second.url(&format!("/api/v1/jobs/{}", created.id)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(job.counts.succeeded, 2);
}
