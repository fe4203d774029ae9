//! The live channel without a WebSocket, over real HTTP against the real server:
//! Server-Sent Events and long polls carry the same session (a snapshot first, then
//! live events, requests posted), each session belongs to its user, and what an
//! attacker could grow is bounded (sessions per user, idle sessions, request sizes).

use std::time::Duration;

use agent::simulate::Kind;
use protocol::{
    CommandStatus,
    api::{ApiError, CommandView, LiveEvent},
    auth::Role,
};
use reqwest::{StatusCode, header};
use serde_json::{Value, json};

mod support;

use support::Running;

/// One Server-Sent Event: its type (`message` unless named) and its data.
#[derive(Debug)]
struct Sse {
    event: String,
    data: String,
}

/// An open event stream, read event by event.
struct Stream {
    response: reqwest::Response,
    buffer: String,
}

impl Stream {
    async fn open(client: &reqwest::Client, url: &str) -> Self {
        let response = client.get(url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{url}");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (comments skipped), or `None` if none comes within `wait` or the
    /// stream ended.
    async fn next(&mut self, wait: Duration) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = "message".to_owned();
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(name) = line.strip_prefix("event: ") {
                        event = name.to_owned();
                    } else if let Some(line) = line.strip_prefix("data: ") {
                        data.push(line);
                    }
                }
                if !data.is_empty() {
                    return Some(Sse {
                        event,
                        data: data.join("\n"),
                    });
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .ok()??;
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("the stream is UTF-8"));
        }
    }

    /// The next live event.
    async fn event(&mut self) -> LiveEvent {
        let sse = self
            .next(Duration::from_secs(10))
            .await
            .expect("a live event within 10 s");
        assert_eq!(sse.event, "message", "{sse:?}");
        serde_json::from_str(&sse.data).unwrap_or_else(|e| panic!("{e}: {}", sse.data))
    }

    /// Live events until `found` says one is what was waited for.
    async fn until<T>(&mut self, what: &str, mut found: impl FnMut(&LiveEvent) -> Option<T>) -> T {
        testkit::within(Duration::from_secs(20), what, async {
            loop {
                if let Some(found) = found(&self.event().await) {
                    return found;
                }
            }
        })
        .await
    }
}

/// A session's id, from the stream's first event.
async fn session_of(stream: &mut Stream) -> String {
    let first = stream
        .next(Duration::from_secs(5))
        .await
        .expect("a first event");
    assert_eq!(first.event, "session", "{first:?}");
    let data: Value = serde_json::from_str(&first.data).unwrap();
    data["session"].as_str().unwrap().to_owned()
}

/// Waits (5 s at most) until `check` holds.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    testkit::within(Duration::from_secs(5), what, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

async fn api_error(response: reqwest::Response) -> (StatusCode, ApiError) {
    let status = response.status();
    let text = response.text().await.unwrap();
    let error = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {status} {text}"));
    (status, error)
}

/// Posts `body` as a live request to session `id`.
async fn post_request(
    running: &Running,
    client: &reqwest::Client,
    id: &str,
    body: &Value,
) -> reqwest::Response {
    client
        .post(running.url(&format!("/api/v1/live/sessions/{id}")))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// A command's updates, until it ends.
fn command_end(id: &protocol::CommandId) -> impl FnMut(&LiveEvent) -> Option<CommandView> + '_ {
    move |event| match event {
        LiveEvent::CommandUpdated { command }
            if command.id == *id && command.status.is_terminal() =>
        {
            Some(command.clone())
        }
        _ => None,
    }
}

async fn send_echo(
    running: &Running,
    client: &reqwest::Client,
    device: &str,
    message: &str,
) -> CommandView {
    let sent = client
        .post(running.url(&format!("/api/v1/devices/{device}/commands")))
        .json(&json!({"name": "echo", "args": {"message": message, "delay_ms": 200}}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), StatusCode::ACCEPTED);
    sent.json().await.unwrap()
}

async fn gateway(running: &Running, name: &str) -> (testkit::Agent, String) {
    let agent = testkit::Agent::start(&testkit::rabbitmq_url(), name, Kind::Gateway, |config| {
        config.heartbeat = Duration::from_secs(1);
    })
    .await;
    testkit::online(&running.hub, &agent.id).await;
    let id = agent.id.to_string();
    (agent, id)
}

#[tokio::test]
async fn an_event_stream_carries_a_snapshot_live_events_and_posted_requests() {
    let running = support::start().await;
    let (_agent, device) = gateway(&running, "sse-gw").await;
    // The device in a group, seen by an operator of that group.
    let (admin, _, _) = running.user(Role::Admin, &[]).await;
    let grouped = admin
        .put(running.url(&format!("/api/v1/devices/{device}/groups")))
        .json(&json!(["site-a"]))
        .send()
        .await
        .unwrap();
    assert_eq!(grouped.status(), StatusCode::OK);
    let (operator_a, _, _) = running.user(Role::Operator, &["site-a"]).await;

    // Opened showing the device: the snapshot holds it.
    let mut stream = Stream::open(
        &operator_a,
        &running.url(&format!("/api/v1/live/stream?watch={device}")),
    )
    .await;
    let id = session_of(&mut stream).await;
    let LiveEvent::Snapshot { devices, .. } = stream.event().await else {
        panic!("a snapshot after the session's id");
    };
    assert!(devices.iter().any(|d| d.id.as_str() == device));

    // A command's life arrives live.
    let sent = send_echo(&running, &operator_a, &device, "over sse").await;
    let ended = stream
        .until("the command's end on the stream", command_end(&sent.id))
        .await;
    assert_eq!(ended.status, CommandStatus::Succeeded);
    assert_eq!(ended.result, Some(json!({"message": "over sse"})));

    // Requests go as POSTs; their answers come on the stream, in order.
    let unwatched = post_request(
        &running,
        &operator_a,
        &id,
        &json!({"type": "unwatch", "device_id": device}),
    )
    .await;
    assert_eq!(unwatched.status(), StatusCode::ACCEPTED);
    let sent = send_echo(&running, &operator_a, &device, "unseen").await;
    let watched = post_request(
        &running,
        &operator_a,
        &id,
        &json!({"type": "watch", "device_id": device}),
    )
    .await;
    assert_eq!(watched.status(), StatusCode::ACCEPTED);
    // Watching again sends the device at once, then its recent commands.
    stream
        .until("the device, sent when watched again", |event| match event {
            LiveEvent::DeviceUpdated { device: d } if d.id.as_str() == device => Some(()),
            _ => None,
        })
        .await;
    stream
        .until("the command sent while unwatched", command_end(&sent.id))
        .await;
    // A device the user may not see is refused on the stream, as on a WebSocket.
    let refused = post_request(
        &running,
        &operator_a,
        &id,
        &json!({"type": "watch", "device_id": "not-theirs"}),
    )
    .await;
    assert_eq!(refused.status(), StatusCode::ACCEPTED);
    let code = stream
        .until("the refusal", |event| match event {
            LiveEvent::Refused { code, .. } => Some(code.clone()),
            _ => None,
        })
        .await;
    assert_eq!(code, "not_found");

    // What is not a request is refused at once, with why.
    let (status, error) = api_error(
        operator_a
            .post(running.url(&format!("/api/v1/live/sessions/{id}")))
            .header(header::CONTENT_TYPE, "application/json")
            .body("{\"type\":\"dance\"}")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, error.code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let (status, error) = api_error(
        operator_a
            .post(running.url(&format!("/api/v1/live/sessions/{id}")))
            .header(header::CONTENT_TYPE, "text/plain")
            .body("{\"type\":\"fleet\",\"query\":null}")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, error.code.as_str()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
    let huge = json!({"type": "watch", "device_id": "x".repeat(20_000)});
    let (status, error) = api_error(post_request(&running, &operator_a, &id, &huge).await).await;
    assert_eq!(
        (status, error.code.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
    );

    // Another user cannot speak in this session, nor learn that it exists.
    let (status, error) = api_error(
        post_request(
            &running,
            &admin,
            &id,
            &json!({"type": "watch", "device_id": device}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, error.code.as_str()),
        (StatusCode::NOT_FOUND, "unknown_session")
    );
    let (status, error) = api_error(
        admin
            .delete(running.url(&format!("/api/v1/live/sessions/{id}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, error.code.as_str()),
        (StatusCode::NOT_FOUND, "unknown_session")
    );
    // Nor poll it (and its owner cannot poll a streamed session either).
    let (status, _) = api_error(
        admin
            .get(running.url(&format!("/api/v1/live/sessions/{id}/events")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, error) = api_error(
        operator_a
            .get(running.url(&format!("/api/v1/live/sessions/{id}/events")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, error.code.as_str()),
        (StatusCode::CONFLICT, "streamed_session")
    );
    for bad in ["nope", "0123456789ABCDEF0123456789ABCDEF"] {
        let (status, error) = api_error(
            post_request(
                &running,
                &operator_a,
                bad,
                &json!({"type": "fleet", "query": null}),
            )
            .await,
        )
        .await;
        assert_eq!(
            (status, error.code.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_session")
        );
    }

    // The stream is still live after all that.
    let sent = send_echo(&running, &operator_a, &device, "still here").await;
    stream
        .until("a command after the refusals", command_end(&sent.id))
        .await;

    // Closing the stream ends the session.
    drop(stream);
    eventually("the session ends with its stream", || async {
        post_request(
            &running,
            &operator_a,
            &id,
            &json!({"type": "fleet", "query": null}),
        )
        .await
        .status()
            == StatusCode::GONE
    })
    .await;
}

#[tokio::test]
async fn the_event_stream_is_refused_to_other_sites_and_never_compressed() {
    let running = support::start().await;
    let (operator, _, _) = running.user(Role::Operator, &[]).await;
    let url = running.url("/api/v1/live/stream");
    let host = running.base.trim_start_matches("http://").to_owned();
    let (status, error) = api_error(
        operator
            .get(&url)
            .header(header::ORIGIN, "http://evil.example")
            .header("sec-fetch-site", "cross-site")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, error.code.as_str()),
        (StatusCode::FORBIDDEN, "cross_site")
    );
    let (status, _) = api_error(
        operator
            .post(running.url("/api/v1/live/sessions"))
            .header(header::ORIGIN, "http://evil.example")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // From its own page, and with the browser asking for compression: each event must
    // go out as it comes, so the stream is not compressed (a compressor holds bytes).
    let response = operator
        .get(&url)
        .header(header::ORIGIN, format!("http://{host}"))
        .header("sec-fetch-site", "same-origin")
        .header(header::ACCEPT_ENCODING, "br, gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get(header::CONTENT_ENCODING).is_none());
    let mut stream = Stream {
        response,
        buffer: String::new(),
    };
    session_of(&mut stream).await;
    assert!(matches!(stream.event().await, LiveEvent::Snapshot { .. }));

    // No one without credentials.
    let anonymous = reqwest::Client::new();
    assert_eq!(
        anonymous.get(&url).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}

/// Polls session `id` for what follows `after`.
async fn poll(
    running: &Running,
    client: &reqwest::Client,
    id: &str,
    after: u64,
    wait_ms: u64,
) -> reqwest::Response {
    client
        .get(running.url(&format!(
            "/api/v1/live/sessions/{id}/events?after={after}&wait_ms={wait_ms}"
        )))
        .send()
        .await
        .unwrap()
}

/// The events of one poll's answer, and its `next`.
async fn polled(response: reqwest::Response) -> (Vec<LiveEvent>, u64, Value) {
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let events = serde_json::from_value(body["events"].clone()).unwrap();
    (events, body["next"].as_u64().unwrap(), body["end"].clone())
}

async fn open_polled(
    running: &Running,
    client: &reqwest::Client,
    query: &str,
) -> reqwest::Response {
    client
        .post(running.url(&format!("/api/v1/live/sessions{query}")))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn long_polls_carry_the_same_session() {
    let running = support::start().await;
    let (_agent, device) = gateway(&running, "poll-gw").await;
    let (operator, _, _) = running.user(Role::Operator, &[]).await;
    let (admin, _, _) = running.user(Role::Admin, &[]).await;
    let opened = open_polled(&running, &admin, &format!("?watch={device}")).await;
    assert_eq!(opened.status(), StatusCode::CREATED);
    let id = opened.json::<Value>().await.unwrap()["session"]
        .as_str()
        .unwrap()
        .to_owned();

    let (events, mut after, end) = polled(poll(&running, &admin, &id, 0, 5_000).await).await;
    assert!(end.is_null());
    let Some(LiveEvent::Snapshot { devices, .. }) = events.first() else {
        panic!("a snapshot first: {events:?}");
    };
    assert!(devices.iter().any(|d| d.id.as_str() == device));
    // An answer lost on the way is sent again to the same cursor.
    let (again, again_after, _) = polled(poll(&running, &admin, &id, 0, 5_000).await).await;
    assert!(matches!(again.first(), Some(LiveEvent::Snapshot { .. })));
    assert_eq!(again_after, after);

    // A command's life arrives in the polls.
    let sent = send_echo(&running, &admin, &device, "over polls").await;
    let ended = testkit::within(
        Duration::from_secs(20),
        "the command's end in a poll",
        async {
            loop {
                let (events, next, _) =
                    polled(poll(&running, &admin, &id, after, 5_000).await).await;
                after = next;
                if let Some(command) = events.iter().find_map(|e| command_end(&sent.id)(e)) {
                    return command;
                }
            }
        },
    )
    .await;
    assert_eq!(ended.result, Some(json!({"message": "over polls"})));

    // Requests are posted; their answers come in the polls.
    let asked = post_request(
        &running,
        &admin,
        &id,
        &json!({"type": "fleet", "query": {"limit": 5}}),
    )
    .await;
    assert_eq!(asked.status(), StatusCode::ACCEPTED);
    let page = testkit::within(Duration::from_secs(10), "the fleet page in a poll", async {
        loop {
            let (events, next, _) = polled(poll(&running, &admin, &id, after, 5_000).await).await;
            after = next;
            if let Some(page) = events.into_iter().find_map(|e| match e {
                LiveEvent::FleetPage { page, .. } => Some(page),
                _ => None,
            }) {
                return page;
            }
        }
    })
    .await;
    assert_eq!(page.limit, 5);

    // A poll with nothing to say answers once its wait is over.
    let started = std::time::Instant::now();
    let (events, next, _) = polled(poll(&running, &admin, &id, after, 300).await).await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(
        events
            .iter()
            .all(|e| !matches!(e, LiveEvent::Snapshot { .. }))
    );
    after = next;
    // A newer poll makes an older one still waiting answer at once.
    let older = tokio::spawn({
        let (admin, url) = (
            admin.clone(),
            running.url(&format!(
                "/api/v1/live/sessions/{id}/events?after={after}&wait_ms=20000"
            )),
        );
        async move { admin.get(url).send().await.unwrap().status() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let newer = tokio::spawn({
        let (admin, url) = (
            admin.clone(),
            running.url(&format!(
                "/api/v1/live/sessions/{id}/events?after={after}&wait_ms=500"
            )),
        );
        async move { admin.get(url).send().await.unwrap().status() }
    });
    let older = tokio::time::timeout(Duration::from_secs(5), older)
        .await
        .expect("the older poll answers when a newer one comes")
        .unwrap();
    assert_eq!(older, StatusCode::OK);
    assert_eq!(newer.await.unwrap(), StatusCode::OK);

    // Bad cursors and waits are refused with why.
    let (status, error) = api_error(poll(&running, &admin, &id, after + 1_000, 0).await).await;
    assert_eq!(
        (status, error.code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_cursor")
    );
    let (status, error) = api_error(
        admin
            .get(running.url(&format!("/api/v1/live/sessions/{id}/events?after=-1")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, error.code.as_str()),
        (StatusCode::BAD_REQUEST, "bad_request")
    );

    // Another user's polls and requests find no such session.
    let (status, error) = api_error(poll(&running, &operator, &id, after, 0).await).await;
    assert_eq!(
        (status, error.code.as_str()),
        (StatusCode::NOT_FOUND, "unknown_session")
    );
    let (status, _) = api_error(
        post_request(
            &running,
            &operator,
            &id,
            &json!({"type": "fleet", "query": null}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let unknown = "0123456789abcdef0123456789abcdef";
    let (status, error) = api_error(poll(&running, &admin, unknown, 0, 0).await).await;
    assert_eq!(
        (status, error.code.as_str()),
        (StatusCode::NOT_FOUND, "unknown_session")
    );

    // Its owner ends it; then it is gone, and says so.
    let closed = admin
        .delete(running.url(&format!("/api/v1/live/sessions/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(closed.status(), StatusCode::NO_CONTENT);
    eventually("the closed session is gone", || async {
        poll(&running, &admin, &id, 0, 0).await.status() == StatusCode::GONE
    })
    .await;
    let (status, error) = api_error(poll(&running, &admin, &id, 0, 0).await).await;
    assert_eq!(
        (status, error.code.as_str()),
        (StatusCode::GONE, "session_closed")
    );
}

#[tokio::test]
async fn sessions_are_bounded_per_user_and_expire_when_no_poll_comes() {
    let running = support::start_with(|config| config.live_session_idle_ms = 3_000).await;
    let (viewer, _, _) = running.user(Role::Viewer, &[]).await;
    let (other, _, _) = running.user(Role::Viewer, &[]).await;
    let mut ids = Vec::new();
    for _ in 0..server::live::http::MAX_SESSIONS_PER_USER {
        let opened = open_polled(&running, &viewer, "").await;
        assert_eq!(opened.status(), StatusCode::CREATED);
        ids.push(
            opened.json::<Value>().await.unwrap()["session"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let (status, error) = api_error(open_polled(&running, &viewer, "").await).await;
    assert_eq!(
        (status, error.code.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "too_many_sessions")
    );
    // An event stream counts too.
    let (status, _) = api_error(
        viewer
            .get(running.url("/api/v1/live/stream"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // Another user is not held back by them.
    assert_eq!(
        open_polled(&running, &other, "").await.status(),
        StatusCode::CREATED
    );

    // A poll waiting keeps its session; the others expire, and say so.
    let kept = ids[0].clone();
    let (_, after, _) = polled(poll(&running, &viewer, &kept, 0, 5_000).await).await;
    let keeping = tokio::spawn({
        let (viewer, url) = (
            viewer.clone(),
            running.url(&format!(
                "/api/v1/live/sessions/{kept}/events?after={after}&wait_ms=6000"
            )),
        );
        async move { viewer.get(url).send().await.unwrap().status() }
    });
    tokio::time::sleep(Duration::from_millis(6_500)).await;
    assert_eq!(keeping.await.unwrap(), StatusCode::OK);
    let (status, error) = api_error(poll(&running, &viewer, &ids[1], 0, 0).await).await;
    assert_eq!(
        (status, error.code.as_str()),
        (StatusCode::GONE, "session_expired")
    );
    let (events, _, end) = polled(poll(&running, &viewer, &kept, after, 0).await).await;
    assert!(events.is_empty() && end.is_null(), "{events:?} {end}");
    // Room again.
    assert_eq!(
        open_polled(&running, &viewer, "").await.status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn a_watch_over_the_limit_is_refused_as_on_the_websocket() {
    let running = support::start().await;
    let (admin, _, _) = running.user(Role::Admin, &[]).await;
    // 32 watches in the address (an admin may watch any id), then one more posted.
    let ids: Vec<String> = (0..32).map(|n| format!("limit-{n}")).collect();
    let opened = open_polled(&running, &admin, &format!("?watch={}", ids.join(","))).await;
    assert_eq!(opened.status(), StatusCode::CREATED);
    let id = opened.json::<Value>().await.unwrap()["session"]
        .as_str()
        .unwrap()
        .to_owned();
    let (events, after, _) = polled(poll(&running, &admin, &id, 0, 5_000).await).await;
    assert!(matches!(events.first(), Some(LiveEvent::Snapshot { .. })));
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, LiveEvent::Refused { .. })),
        "{events:?}"
    );
    let asked = post_request(
        &running,
        &admin,
        &id,
        &json!({"type": "watch", "device_id": "limit-32"}),
    )
    .await;
    assert_eq!(asked.status(), StatusCode::ACCEPTED);
    let (events, _, _) = polled(poll(&running, &admin, &id, after, 5_000).await).await;
    let Some(LiveEvent::Refused { code, .. }) = events.first() else {
        panic!("a refusal: {events:?}");
    };
    assert_eq!(code, "too_many");
}

#[tokio::test]
async fn a_stopping_server_ends_streams_and_polls_with_why() {
    let running = support::start().await;
    let (viewer, _, _) = running.user(Role::Viewer, &[]).await;
    let mut stream = Stream::open(&viewer, &running.url("/api/v1/live/stream")).await;
    session_of(&mut stream).await;
    assert!(matches!(stream.event().await, LiveEvent::Snapshot { .. }));
    let opened = open_polled(&running, &viewer, "").await;
    let id = opened.json::<Value>().await.unwrap()["session"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, after, _) = polled(poll(&running, &viewer, &id, 0, 5_000).await).await;
    let waiting = tokio::spawn({
        let (viewer, url) = (
            viewer.clone(),
            running.url(&format!(
                "/api/v1/live/sessions/{id}/events?after={after}&wait_ms=20000"
            )),
        );
        async move {
            viewer
                .get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(running);
    let end = stream
        .next(Duration::from_secs(5))
        .await
        .expect("the stream says why it ends");
    assert_eq!(end.event, "end");
    let end: Value = serde_json::from_str(&end.data).unwrap();
    assert_eq!(end["code"], "server_stopping");
    assert!(
        stream.next(Duration::from_secs(2)).await.is_none(),
        "then it ends"
    );
    let answer = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting poll answers")
        .unwrap();
    assert_eq!(answer["end"]["code"], "server_stopping", "{answer}");
}

#[tokio::test]
async fn a_user_removed_meanwhile_loses_their_stream_at_the_next_check() {
    let running = support::start().await;
    let (admin, _, _) = running.user(Role::Admin, &[]).await;
    let (viewer, _, name) = running.user(Role::Viewer, &[]).await;
    let mut stream = Stream::open(&viewer, &running.url("/api/v1/live/stream")).await;
    session_of(&mut stream).await;
    assert!(matches!(stream.event().await, LiveEvent::Snapshot { .. }));
    let opened = open_polled(&running, &viewer, "").await;
    let id = opened.json::<Value>().await.unwrap()["session"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, after, _) = polled(poll(&running, &viewer, &id, 0, 5_000).await).await;

    let removed = admin
        .delete(running.url(&format!("/api/v1/users/{name}")))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);
    // The credentials are checked again every minute: the stream ends then, saying why.
    let end = testkit::within(Duration::from_secs(75), "the stream's end", async {
        loop {
            if let Some(sse) = stream.next(Duration::from_secs(20)).await
                && sse.event == "end"
            {
                return sse;
            }
        }
    })
    .await;
    let end: Value = serde_json::from_str(&end.data).unwrap();
    assert_eq!(end["code"], "unauthorized");
    assert!(
        stream.next(Duration::from_secs(2)).await.is_none(),
        "then it ends"
    );
    // Nor can the removed user poll their other session.
    assert_eq!(
        poll(&running, &viewer, &id, after, 0).await.status(),
        StatusCode::UNAUTHORIZED
    );
}
