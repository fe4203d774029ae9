//! Software updates as the server runs them, against RabbitMQ: an update job sends each
//! device its own download link with the artifact's SHA-256, size, signature, version
//! and architecture; a device that installed it is updated only once it is back online
//! with the new version, and failed (rolled back) when it comes back with its old one.
//! The devices here play the agent's `update` command (download, check, answer, come
//! back as another version); the real agent's own update, with its verification and
//! rollback, is tested in `agent/tests/update.rs`.

mod support;

use std::{sync::Arc, time::Duration};

use agent::{Command, CommandContext, CommandError, Handler};
use protocol::{
    ArgKind, ArgSpec, Capabilities, CommandSpec, DeviceId,
    api::DeviceView,
    artifact::ArtifactView,
    auth::Role,
    capability::builtin,
    job::{JobState, JobView, TargetPage, TargetStatus},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

/// A device that announces `update` like the agent (for x86_64), downloads the file
/// from the link it is given, checks it, and says it installed it.
struct Updater {
    installed: mpsc::UnboundedSender<(DeviceId, String, Value)>,
    id: DeviceId,
}

fn arg(name: &str, kind: ArgKind, required: bool) -> ArgSpec {
    ArgSpec {
        name: name.into(),
        description: String::new(),
        kind,
        required,
        default: None,
    }
}

fn text(max_len: usize) -> ArgKind {
    ArgKind::String {
        max_len: Some(max_len),
    }
}

impl Handler for Updater {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            commands: vec![CommandSpec {
                name: builtin::UPDATE.into(),
                description: "Install a software update".into(),
                args: vec![
                    arg("url", text(2048), true),
                    arg("sha256", text(64), true),
                    arg(
                        "size",
                        ArgKind::Integer {
                            min: Some(1),
                            max: None,
                        },
                        true,
                    ),
                    arg("version", text(100), true),
                    arg("signature", text(128), false),
                    arg(
                        "arch",
                        ArgKind::Choice {
                            choices: vec!["x86_64".into(), "any".into()],
                        },
                        true,
                    ),
                ],
            }],
            metrics: Vec::new(),
            reporting: None,
        }
    }

    async fn handle(
        &self,
        command: Command,
        context: CommandContext,
    ) -> Result<Value, CommandError> {
        context.progress(Some(0), "downloading").await;
        let url = command.string("url").unwrap_or_default().to_owned();
        let body = reqwest::get(&url)
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| CommandError::failed(format!("download failed: {e}")))?
            .bytes()
            .await
            .map_err(|e| CommandError::failed(format!("download failed: {e}")))?;
        context.progress(Some(100), "verifying").await;
        if hex::encode(Sha256::digest(&body)) != command.string("sha256").unwrap_or_default() {
            return Err(CommandError::failed("verification failed: sha256"));
        }
        let version = command.string("version").unwrap_or_default().to_owned();
        let _ = self.installed.send((
            self.id.clone(),
            version.clone(),
            Value::Object(command.args.clone().into_iter().collect()),
        ));
        Ok(json!({ "installed": version, "previous": "1.0.0" }))
    }
}

/// A device of this test: logs in with `url`, reports `firmware`.
fn device(
    url: &str,
    id: &DeviceId,
    firmware: &str,
    installed: &mpsc::UnboundedSender<(DeviceId, String, Value)>,
) -> testkit::Agent {
    let updater = Updater {
        installed: installed.clone(),
        id: id.clone(),
    };
    let firmware = firmware.to_owned();
    testkit::Agent::start_handler(
        url,
        id.clone(),
        &common::amqp_user(&testkit::rabbitmq_url()),
        "gateway",
        Arc::new(updater),
        move |config| {
            config.firmware = firmware;
            config.heartbeat = Duration::from_secs(1);
        },
    )
}

#[tokio::test]
async fn an_update_job_succeeds_when_a_device_comes_back_with_the_version_and_fails_when_it_rolled_back()
 {
    let server = support::start().await;
    let (admin, _, _) = server.user(Role::Admin, &[]).await;
    let file: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
    let uploaded: ArtifactView = admin
        .post(server.url("/api/v1/artifacts?name=gateway-fw&version=2.0.0&arch=x86_64"))
        .body(file.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let (installed_tx, mut installed) = mpsc::unbounded_channel();
    let mut devices = Vec::new();
    for name in ["upd-good", "upd-bad"] {
        let (id, url) = testkit::provision(&testkit::rabbitmq_url(), name).await;
        let agent = device(&url, &id, "1.0.0", &installed_tx);
        testkit::online(&server.hub, &id).await;
        let response = admin
            .put(server.url(&format!("/api/v1/devices/{id}/groups")))
            .json(&json!(["site-u"]))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        devices.push((id, url, Some(agent)));
    }

    // An artifact for another architecture: no device would take it.
    let other: ArtifactView = admin
        .post(server.url("/api/v1/artifacts?name=gateway-fw&version=2.0.0&arch=aarch64"))
        .body(file.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let refused = admin
        .post(server.url("/api/v1/jobs"))
        .json(&json!({"command": "update", "artifact": other.id, "targets": {"group": "site-u"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "invalid_arguments", "{body}");
    // An update names its artifact, and only the server fills in its arguments.
    for bad in [
        json!({"command": "update", "targets": {"group": "site-u"}}),
        json!({"command": "update", "artifact": uploaded.id, "args": {"url": "http://evil"}, "targets": {"group": "site-u"}}),
        json!({"command": "echo", "artifact": uploaded.id, "targets": {"group": "site-u"}}),
    ] {
        let response = admin
            .post(server.url("/api/v1/jobs"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }

    let job: JobView = admin
        .post(server.url("/api/v1/jobs"))
        .json(&json!({
            "name": "firmware 2.0.0",
            "command": "update",
            "artifact": uploaded.id,
            "targets": {"group": "site-u"},
            "concurrency": 1,
            "timeout_ms": 30_000,
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        job.artifact.as_ref().map(|a| a.version.as_str()),
        Some("2.0.0")
    );

    // Each device installs, then comes back: the good one as 2.0.0, the bad one as
    // 1.0.0 (as an agent does that rolled back).
    for round in 0..2 {
        let (id, version, args) = testkit::within(
            Duration::from_secs(30),
            "a device installs the update",
            installed.recv(),
        )
        .await
        .unwrap();
        assert_eq!(version, "2.0.0");
        assert_eq!(args["sha256"], uploaded.sha256);
        assert_eq!(args["size"], uploaded.size);
        assert_eq!(args["signature"], uploaded.signature);
        assert_eq!(args["arch"], "x86_64");
        let link = args["url"].as_str().unwrap();
        assert!(link.contains(&format!("device={id}")), "{link}");
        // The link is this device's only.
        let stolen = reqwest::get(link.replace(&format!("device={id}"), "device=someone-else"))
            .await
            .unwrap();
        assert_eq!(stolen.status(), StatusCode::FORBIDDEN);

        let slot = devices.iter_mut().find(|(d, _, _)| *d == id).unwrap();
        // Still the old session until it restarts: not yet updated.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now: JobView = admin
            .get(server.url(&format!("/api/v1/jobs/{}", job.id)))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            now.counts.succeeded + now.counts.failed,
            round,
            "not updated before it is back"
        );
        slot.2.take().unwrap().stop().await;
        if id.as_str().contains("good") {
            slot.2 = Some(device(&slot.1, &id, "2.0.0", &installed_tx));
        } else {
            // Up as the new version, but it falls over within seconds and the agent
            // puts the old one back: not an update that worked.
            let brief = device(&slot.1, &id, "2.0.0", &installed_tx);
            testkit::online(&server.hub, &id).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            brief.stop().await;
            slot.2 = Some(device(&slot.1, &id, "1.0.0", &installed_tx));
        }
    }

    let done = testkit::within(Duration::from_secs(30), "the update job ends", async {
        loop {
            let now: JobView = admin
                .get(server.url(&format!("/api/v1/jobs/{}", job.id)))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if now.state.is_finished() {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(done.state, JobState::Completed);
    assert_eq!((done.counts.succeeded, done.counts.failed), (1, 1));
    let page: TargetPage = admin
        .get(server.url(&format!("/api/v1/jobs/{}/devices", job.id)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for target in &page.targets {
        let message = target.message.clone().unwrap_or_default();
        if target.device_id.as_str().contains("good") {
            assert_eq!(target.status, TargetStatus::Succeeded);
            assert!(message.contains("updated to 2.0.0"), "{message}");
        } else {
            assert_eq!(target.status, TargetStatus::Failed);
            assert!(message.contains("rolled back"), "{message}");
        }
    }
    // The fleet list shows the new version.
    let good = &devices
        .iter()
        .find(|(d, _, _)| d.as_str().contains("good"))
        .unwrap()
        .0;
    let view: DeviceView = admin
        .get(server.url(&format!("/api/v1/devices/{good}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view.firmware, "2.0.0");
    for (_, _, agent) in devices {
        if let Some(agent) = agent {
            agent.stop().await;
        }
    }
}
