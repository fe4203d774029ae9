//! Two `tether-server` replicas on one broker and one database, behind a load balancer
//! without sticky sessions: every call a user makes may reach either. Here every call
//! goes to both, or alternates between them, and each answer is the one a single
//! replica would give: a command sent through one is seen, waited for, listed and
//! cancelled through the other (the cancel forwarded to the replica that sent it).

mod support;

use std::time::Duration;

use agent::simulate::Kind;
use protocol::{
    CommandStatus,
    api::{ApiError, CommandView},
    auth::Role,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// What a user holds: a client with their token, and the two replicas' addresses.
struct Balanced {
    client: reqwest::Client,
    replicas: [String; 2],
}

impl Balanced {
    fn url(&self, replica: usize, path: &str) -> String {
        format!("{}{path}", self.replicas[replica % 2])
    }

    async fn call(
        &self,
        replica: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.request(method, self.url(replica, path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    async fn get(&self, replica: usize, path: &str) -> (StatusCode, Value) {
        self.call(replica, reqwest::Method::GET, path, None).await
    }

    /// `GET path` on both replicas, which must answer alike (`volatile` fields, which
    /// each replica stamps with its own clock, aside); the answer.
    async fn same(&self, path: &str) -> (StatusCode, Value) {
        let first = self.get(0, path).await;
        let second = self.get(1, path).await;
        assert_eq!(
            (first.0, stable(first.1.clone())),
            (second.0, stable(second.1)),
            "the replicas answer GET {path} differently"
        );
        first
    }

    /// [`Balanced::same`], asked again until `done` holds of the answer (what one
    /// replica wrote reaches the database, and the other, within moments).
    async fn same_once(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let first = self.get(0, path).await;
            let second = self.get(1, path).await;
            if first.0 == StatusCode::OK
                && done(&first.1)
                && (first.0, stable(first.1.clone())) == (second.0, stable(second.1.clone()))
            {
                return first.1;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the replicas still answer GET {path} differently: {first:?} and {second:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An answer without what each replica stamps with its own clock: when it last heard
/// from a device, when that came online (the second replica learnt of it later), its
/// latest readings (they arrive at each replica on its own queue).
fn stable(mut value: Value) -> Value {
    match &mut value {
        Value::Object(fields) => {
            for volatile in ["last_seen_ms", "since_ms", "latest"] {
                fields.remove(volatile);
            }
            for field in fields.values_mut() {
                *field = stable(field.take());
            }
        }
        Value::Array(items) => {
            for item in items.iter_mut() {
                *item = stable(item.take());
            }
        }
        _ => {}
    }
    value
}

fn command(value: &Value) -> CommandView {
    serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{e}: {value}"))
}

fn code(value: &Value) -> String {
    serde_json::from_value::<ApiError>(value.clone())
        .unwrap_or_else(|e| panic!("{e}: {value}"))
        .code
}

#[tokio::test]
async fn every_call_a_user_makes_answers_alike_on_either_replica() {
    let started_ms = common::now_ms();
    let first = support::start().await;
    let (admin, _, _) = first.user(Role::Admin, &[]).await;
    let gateway = testkit::Agent::start(
        &testkit::rabbitmq_url(),
        "balanced-gw",
        Kind::Gateway,
        |config| {
            config.heartbeat = Duration::from_secs(1);
            config.telemetry = Some(Duration::from_millis(200));
        },
    )
    .await;
    let device = gateway.id.to_string();
    testkit::online(&first.hub, &gateway.id).await;
    // The user sees the device by its group (and the fleet's counts are of it alone,
    // whatever other tests' devices share the broker).
    let group = testkit::unique("site");
    let response = admin
        .put(first.url(&format!("/api/v1/devices/{device}/groups")))
        .json(&json!([group]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let database = format!("sqlite://{}", first.database.display());
    let second = support::start_with(|config| config.database_url = database).await;
    testkit::online(&second.hub, &gateway.id).await;
    let (_, token, _) = first.user(Role::Operator, &[group.as_str()]).await;
    let user = Balanced {
        client: testkit::api_client(&token),
        replicas: [first.base.clone(), second.base.clone()],
    };
    let (_, outsider, _) = first.user(Role::Operator, &["elsewhere"]).await;
    let outsider = Balanced {
        client: testkit::api_client(&outsider),
        replicas: user.replicas.clone(),
    };

    // Who they are, the fleet, the device.
    let (status, me) = user.same("/api/v1/me").await;
    assert_eq!(status, StatusCode::OK, "{me}");
    let (status, fleet) = user.same("/api/v1/devices").await;
    assert_eq!(status, StatusCode::OK, "{fleet}");
    assert_eq!(fleet["total"], 1, "{fleet}");
    assert_eq!(fleet["devices"][0]["id"], device.as_str());
    let (status, _) = user
        .same(&format!(
            "/api/v1/devices?search={device}&status=online&sort=status"
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, one) = user.same(&format!("/api/v1/devices/{device}")).await;
    assert_eq!((status, &one["online"]), (StatusCode::OK, &json!(true)));

    // A command sent through one replica is seen and waited for through the other, and
    // each answers for it alike, in history too.
    let send = async |replica: usize, args: Value, timeout_ms: u64| {
        let (status, sent) = user
            .call(
                replica,
                reqwest::Method::POST,
                &format!("/api/v1/devices/{device}/commands"),
                Some(json!({"name": "echo", "args": args, "timeout_ms": timeout_ms})),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{sent}");
        command(&sent)
    };
    for replica in 0..2 {
        let sent = send(replica, json!({"message": "hello"}), 10_000).await;
        let path = format!("/api/v1/commands/{}", sent.id);
        let (status, done) = user
            .get(replica + 1, &format!("{path}?wait_ms=10000"))
            .await;
        assert_eq!(status, StatusCode::OK, "{done}");
        let done = command(&done);
        assert_eq!(
            (done.status, done.result),
            (CommandStatus::Succeeded, Some(json!({"message": "hello"})))
        );
        let (_, seen) = user.same(&path).await;
        assert_eq!(command(&seen).status, CommandStatus::Succeeded);
    }

    // A long command sent through one replica is cancelled through the other: the
    // cancel goes to the replica that sent it, and every replica then says so.
    for replica in 0..2 {
        let sent = send(replica, json!({"delay_ms": 30_000}), 60_000).await;
        let path = format!("/api/v1/commands/{}", sent.id);
        // Waited for meanwhile: through the replica that sent it, then through the
        // other one.
        let wait = format!("{path}?wait_ms=10000");
        let waiting = user.get(replica * 2, &wait);
        let cancelling = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            user.call(replica + 1, reqwest::Method::DELETE, &path, None)
                .await
        };
        let ((waited_status, waited), (status, cancelled)) =
            tokio::time::timeout(Duration::from_secs(20), async {
                tokio::join!(waiting, cancelling)
            })
            .await
            .expect("the cancel and the wait end within seconds");
        assert_eq!(status, StatusCode::OK, "{cancelled}");
        let cancelled = command(&cancelled);
        assert_eq!(
            (cancelled.status, cancelled.error.as_deref()),
            (CommandStatus::Cancelled, Some("cancelled by a user"))
        );
        assert_eq!(waited_status, StatusCode::OK, "{waited}");
        assert_eq!(
            command(&waited),
            cancelled,
            "the waiter was told of the cancel"
        );
        let (_, seen) = user.same(&path).await;
        assert_eq!(command(&seen), cancelled);
        let (_, waited) = user.same(&format!("{path}?wait_ms=5000")).await;
        assert_eq!(command(&waited), cancelled);
        // Again, through either: it has ended.
        for again in [replica, replica + 1] {
            let (status, refused) = user.call(again, reqwest::Method::DELETE, &path, None).await;
            assert_eq!(
                (status, code(&refused)),
                (StatusCode::CONFLICT, "already_ended".to_owned()),
                "{refused}"
            );
        }
        // Someone who may not see the device cannot see or cancel it through either.
        for replica in 0..2 {
            let (status, refused) = outsider
                .call(replica, reqwest::Method::DELETE, &path, None)
                .await;
            assert_eq!(
                (status, code(&refused)),
                (StatusCode::NOT_FOUND, "unknown_command".to_owned())
            );
        }
        let (status, _) = outsider.same(&path).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    // A running command cancelled through the replica that did not send it, at once.
    let sent = send(0, json!({"delay_ms": 30_000}), 60_000).await;
    let (status, cancelled) = user
        .call(
            1,
            reqwest::Method::DELETE,
            &format!("/api/v1/commands/{}", sent.id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(command(&cancelled).status, CommandStatus::Cancelled);

    // History, the device's and everyone's, from the shared log, alike once every end
    // is written.
    let ended = |value: &Value| {
        value.as_array().is_some_and(|commands| {
            commands.len() == 5
                && commands.iter().all(|c| {
                    serde_json::from_value::<CommandView>(c.clone())
                        .is_ok_and(|c| c.status.is_terminal())
                })
        })
    };
    let history = user
        .same_once(&format!("/api/v1/devices/{device}/commands"), ended)
        .await;
    let statuses: Vec<CommandStatus> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|c| command(c).status)
        .collect();
    assert_eq!(
        statuses,
        [
            CommandStatus::Cancelled,
            CommandStatus::Cancelled,
            CommandStatus::Cancelled,
            CommandStatus::Succeeded,
            CommandStatus::Succeeded
        ]
    );
    let everyone = user.same_once("/api/v1/commands", ended).await;
    assert_eq!(everyone, history);
    let second_page = history[1]["id"].as_str().unwrap();
    let (status, page) = user
        .same(&format!(
            "/api/v1/devices/{device}/commands?limit=2&before={second_page}"
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        page.as_array().unwrap()[..],
        history.as_array().unwrap()[2..4]
    );

    // Stored readings over a window that has closed (the device reports every 200 ms).
    let to_ms = started_ms + 3_000;
    let left = Duration::from_millis((to_ms + 500).saturating_sub(common::now_ms()));
    tokio::time::sleep(left).await;
    let path = format!(
        "/api/v1/devices/{device}/telemetry?metric=cpu&from={started_ms}&to={to_ms}&max_points=10"
    );
    let readings = user
        .same_once(&path, |history| {
            history["series"][0]["points"]
                .as_array()
                .is_some_and(|points| !points.is_empty())
        })
        .await;
    assert_eq!(readings["series"][0]["name"], "cpu", "{readings}");
    let (status, _) = user
        .same(&format!("/api/v1/devices/{device}/diagnostics"))
        .await;
    assert_eq!(status, StatusCode::OK);

    // What does not exist does not, on either.
    for path in [
        "/api/v1/commands/no-such-command",
        "/api/v1/devices/no-such-device",
    ] {
        let (status, _) = user.same(path).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    for replica in 0..2 {
        let (status, refused) = user
            .call(
                replica,
                reqwest::Method::DELETE,
                "/api/v1/commands/no-such-command",
                None,
            )
            .await;
        assert_eq!(
            (status, code(&refused)),
            (StatusCode::NOT_FOUND, "unknown_command".to_owned())
        );
    }
    gateway.stop().await;
}
