//! The JSON API and the live WebSocket, over real HTTP, against the real broker and a
//! real agent.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use agent::simulate::{Kind, Simulated};
use futures_util::StreamExt as _;
use protocol::{
    CommandStatus, DeviceId,
    api::{ApiError, CommandView, DeviceView, History, LiveEvent},
    auth::Role,
    fleet::DevicePage,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::oneshot;

fn amqp_url() -> String {
    testkit::rabbitmq_url()
}

/// A server and one simulated device; both stop when this is dropped.
struct Setup {
    base: String,
    device: DeviceId,
    client: reqwest::Client,
    /// An admin's API token, which `client` sends.
    token: String,
    /// A viewer's, of no device group.
    viewer: String,
    hub: hub::Hub,
    /// The server's database of users and device credentials.
    accounts: store::Store,
    _stop_server: oneshot::Sender<()>,
    /// Stops (and says bye) when dropped.
    _agent: testkit::Agent,
}

async fn setup(kind: Kind) -> Setup {
    setup_with(kind, None).await
}

/// With readings stored in a SQLite file of its own, through a queue of its own, and a
/// device reporting every `telemetry`.
async fn setup_with(kind: Kind, telemetry: Option<Duration>) -> Setup {
    let mut config = server::Config::new(SocketAddr::from(([127, 0, 0, 1], 0)), amqp_url());
    let tag = format!("{:08x}", fastrand::u32(..));
    if telemetry.is_some() {
        let path = std::env::temp_dir().join(format!("tether-api-{tag}/telemetry.db"));
        config.database_url = format!("sqlite://{}", path.display());
        config.store_queue = format!("tether.telemetry.store.test-{tag}");
        config.store_queue_expires_ms = Some(60_000);
    }
    let server = server::Server::bind(config)
        .await
        .expect("RabbitMQ must be running (scripts/test.sh starts it)");
    let base = format!("http://{}", server.local_addr().unwrap());
    let hub = server.hub().clone();
    let (token, _) = testkit::user_token(server.accounts(), Role::Admin, &[]).await;
    let (viewer, _) = testkit::user_token(server.accounts(), Role::Viewer, &[]).await;
    let accounts = server.accounts().clone();
    assert!(
        hub.is_connected(),
        "RabbitMQ must be running at {} (scripts/test.sh starts it)",
        amqp_url()
    );
    let (stop_server, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));

    let agent = testkit::Agent::start(
        &amqp_url(),
        &format!("api-{}", kind.name()),
        kind,
        |config| {
            config.heartbeat = Duration::from_secs(1);
            config.telemetry = telemetry;
        },
    )
    .await;
    testkit::online(&hub, &agent.id).await;
    Setup {
        base,
        device: agent.id.clone(),
        client: testkit::api_client(&token),
        token,
        viewer,
        hub,
        accounts,
        _stop_server: stop_server,
        _agent: agent,
    }
}

impl Setup {
    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> (StatusCode, T) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (response.status(), response.json().await.unwrap())
    }

    async fn post(&self, path: &str, body: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        (response.status(), response.json().await.unwrap())
    }

    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .delete(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (response.status(), response.json().await.unwrap())
    }

    /// Opens the live channel with this setup's token (and `origin`, if given).
    async fn live(
        &self,
        origin: Option<&str>,
    ) -> Result<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        tokio_tungstenite::tungstenite::Error,
    > {
        live(&self.base, &self.token, origin, "").await
    }

    fn commands_path(&self) -> String {
        format!("/api/v1/devices/{}/commands", self.device)
    }
}

/// Opens `base`'s live channel with `token` (and `origin`, if given).
async fn live(
    base: &str,
    token: &str,
    origin: Option<&str>,
    shows: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::Error,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let query = if shows.is_empty() {
        String::new()
    } else {
        format!("?{shows}")
    };
    let mut request = format!("{}/api/v1/live{query}", base.replace("http", "ws"))
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    if let Some(origin) = origin {
        headers.insert("origin", origin.parse().unwrap());
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| socket)
}

fn error(value: Value) -> ApiError {
    serde_json::from_value(value).expect("an API error body")
}

#[tokio::test]
async fn devices_are_listed_and_looked_up() {
    let setup = setup(Kind::Switch).await;
    let (status, page): (_, DevicePage) = setup.get("/api/v1/devices").await;
    assert_eq!(status, StatusCode::OK);
    let listed = page
        .devices
        .iter()
        .find(|d| d.id == setup.device)
        .expect("listed");
    assert!(listed.online);
    assert_eq!(listed.kind, "switch");

    let (status, device): (_, DeviceView) = setup
        .get(&format!("/api/v1/devices/{}", setup.device))
        .await;
    assert_eq!((status, device.id), (StatusCode::OK, setup.device.clone()));
    let (status, body): (_, Value) = setup.get("/api/v1/devices/nobody-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        error(body),
        ApiError {
            code: "unknown_device".into(),
            message: "no device \"nobody-here\" has ever connected".into()
        }
    );
}

#[tokio::test]
async fn the_fleet_list_is_searched_filtered_sorted_and_paged() {
    let setup = setup(Kind::Switch).await;
    // Five more devices, named alike (other tests' devices on the same broker are not).
    let tag = format!("pg{:06x}", fastrand::u32(..0xff_ffff));
    let mut agents = Vec::new();
    for kind in [
        Kind::Thermostat,
        Kind::Thermostat,
        Kind::Thermostat,
        Kind::Gateway,
        Kind::Gateway,
    ] {
        let agent = testkit::Agent::start(
            &amqp_url(),
            &format!("{tag}-{}", kind.name()),
            kind,
            |config| {
                config.heartbeat = Duration::from_secs(1);
            },
        )
        .await;
        testkit::online(&setup.hub, &agent.id).await;
        agents.push(agent);
    }
    let mut ids: Vec<String> = agents.iter().map(|a| a.id.to_string()).collect();
    ids.sort();
    // One says bye: offline.
    let gone = agents.remove(0);
    let gone_id = gone.id.clone();
    gone.stop().await;
    testkit::eventually(
        "the stopped device offline",
        Duration::from_secs(10),
        || setup.hub.device(&gone_id).filter(|d| !d.online).map(drop),
    )
    .await;
    let page = |query: String| {
        let setup = &setup;
        async move {
            let (status, page): (_, DevicePage) =
                setup.get(&format!("/api/v1/devices?{query}")).await;
            assert_eq!(status, StatusCode::OK, "{query}");
            page
        }
    };
    let listed = |page: &DevicePage| -> Vec<String> {
        page.devices.iter().map(|d| d.id.to_string()).collect()
    };

    // A search ignores case; the summary counts every device, whatever the query.
    let all = page(format!("search={}", tag.to_uppercase())).await;
    assert_eq!((all.total, all.offset, all.limit), (5, 0, 50));
    assert_eq!(listed(&all), ids);
    assert!(
        all.summary.total >= 6 && all.summary.online + all.summary.offline == all.summary.total
    );
    assert!(
        all.summary
            .kinds
            .iter()
            .any(|k| k.kind == "thermostat" && k.count >= 3)
    );

    let thermostats = page(format!("search={tag}&kind=thermostat")).await;
    assert_eq!(thermostats.total, 3);
    assert!(thermostats.devices.iter().all(|d| d.kind == "thermostat"));
    let offline = page(format!("search={tag}&status=offline")).await;
    assert_eq!(listed(&offline), [gone_id.to_string()]);
    let online = page(format!("search={tag}&status=online")).await;
    assert_eq!(online.total, 4);
    assert!(online.devices.iter().all(|d| d.online));

    // Sorted by status: online first; descending, offline first.
    let by_status = page(format!("search={tag}&sort=status")).await;
    assert_eq!(listed(&by_status).last(), Some(&gone_id.to_string()));
    let by_status = page(format!("search={tag}&sort=status&order=desc")).await;
    assert_eq!(listed(&by_status).first(), Some(&gone_id.to_string()));
    let by_kind = page(format!("search={tag}&sort=kind&order=desc")).await;
    let kinds: Vec<&str> = by_kind.devices.iter().map(|d| d.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "thermostat",
            "thermostat",
            "thermostat",
            "gateway",
            "gateway"
        ]
    );

    // Pages are slices of the same order.
    let second = page(format!("search={tag}&limit=2&offset=2")).await;
    assert_eq!((second.total, second.offset, second.limit), (5, 2, 2));
    assert_eq!(listed(&second), ids[2..4]);
    let past = page(format!("search={tag}&offset=100")).await;
    assert!(past.devices.is_empty());
    assert_eq!(past.total, 5);

    // What cannot be answered says why.
    for (query, code) in [
        ("limit=0", "invalid_input"),
        ("limit=501", "invalid_input"),
        ("status=sleeping", "bad_request"),
        ("sort=colour", "bad_request"),
        ("offset=-1", "bad_request"),
    ] {
        let (status, body): (_, Value) = setup.get(&format!("/api/v1/devices?{query}")).await;
        let error = error(body);
        assert_eq!(error.code, code, "{query}: {}", error.message);
        assert!(status.is_client_error(), "{query}");
    }
    let (status, body): (_, Value) = setup
        .get(&format!("/api/v1/devices?search={}", "x".repeat(200)))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(error(body).message.contains("search"));

    // A viewer of no group sees no device, and no count of them either.
    let nothing: DevicePage = testkit::api_client(&setup.viewer)
        .get(format!("{}/api/v1/devices?search={tag}", setup.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((nothing.total, nothing.summary.total), (0, 0));
    assert!(nothing.devices.is_empty() && nothing.summary.kinds.is_empty());
    for agent in agents {
        agent.stop().await;
    }
}

/// Publishes a hello as `device` (connected as itself) on the presence exchange.
async fn say_hello(channel: &lapin::Channel, device: &DeviceId, session: &str, metric: &str) {
    let hello = protocol::DeviceMessage::Hello(protocol::Hello {
        device_id: device.clone(),
        session_id: session.into(),
        inbox: "amq.gen-not-consumed".into(),
        kind: "meter".into(),
        firmware: "1".into(),
        heartbeat_ms: 60_000,
        capabilities: serde_json::from_value(json!({"metrics": [{"name": metric}]})).unwrap(),
    });
    channel
        .basic_publish(
            protocol::names::PRESENCE_EXCHANGE.into(),
            format!("presence.{device}.hello").as_str().into(),
            Default::default(),
            &protocol::encode(&hello),
            lapin::BasicProperties::default().with_user_id(device.as_str().into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_refused_hello_is_shown_where_people_look() {
    let s = setup(Kind::Switch).await;
    // A device whose credential works but whose every hello breaks a rule: the API
    // says why it is not there, and so does the list of provisioned devices.
    let (device, url) = testkit::provision(&amqp_url(), "api-refused").await;
    s.accounts.provision_device(device.as_str()).await.unwrap();
    let connection = lapin::Connection::connect(&url, Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    say_hello(&channel, &device, "s1", "cpu.load").await;
    let path = format!("/api/v1/devices/{device}");
    let why =
        testkit::eventually_async("the refusal to be told", Duration::from_secs(5), || async {
            let (status, body): (StatusCode, Value) = s.get(&path).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
            let message = error(body).message;
            message.contains("was refused").then_some(message)
        })
        .await;
    assert!(
        why.starts_with(&format!(
            "no device \"{device}\" has ever connected: its last hello ("
        )),
        "{why}"
    );
    assert!(why.contains("metric name \"cpu.load\" must be"), "{why}");
    let (status, listed): (StatusCode, Value) = s.get("/api/v1/provisioned").await;
    assert_eq!(status, StatusCode::OK);
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == device.as_str())
        .unwrap_or_else(|| panic!("{device} listed: {listed}"));
    assert!(
        entry["hello_refused"]["problem"]
            .as_str()
            .is_some_and(|p| p.contains("cpu.load")),
        "{entry}"
    );
    // Someone who may not see the device learns nothing of it.
    let response = reqwest::Client::new()
        .get(format!("{}{path}", s.base))
        .bearer_auth(&s.viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let message = response.json::<ApiError>().await.unwrap().message;
    assert!(!message.contains("hello"), "{message}");

    // Fixed, it comes online and the refusal is gone; broken again (same session), it
    // stays online with what it announced before, and its view says its hello was
    // refused.
    say_hello(&channel, &device, "s1", "cpu_load").await;
    testkit::online(&s.hub, &device).await;
    let (_, view): (StatusCode, DeviceView) = s.get(&path).await;
    assert_eq!(view.hello_refused, None);
    assert_eq!(view.capabilities.metrics[0].name, "cpu_load");
    let (_, listed): (StatusCode, Value) = s.get("/api/v1/provisioned").await;
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == device.as_str())
        .unwrap();
    assert!(entry.get("hello_refused").is_none(), "{entry}");
    say_hello(&channel, &device, "s1", "cpu#load").await;
    let view = testkit::eventually_async("the view to say so", Duration::from_secs(5), || async {
        let (_, view): (StatusCode, DeviceView) = s.get(&path).await;
        view.hello_refused.is_some().then_some(view)
    })
    .await;
    assert!(view.online);
    assert_eq!(view.capabilities.metrics[0].name, "cpu_load");
    assert!(
        view.hello_refused
            .unwrap()
            .problem
            .contains("metric name \"cpu#load\""),
    );
}

#[tokio::test]
async fn a_command_is_accepted_then_long_polled_to_its_result() {
    let setup = setup(Kind::Switch).await;
    let (status, body) = setup.post(&setup.commands_path(), r#"{"name":"on"}"#).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let accepted: CommandView = serde_json::from_value(body).unwrap();
    let (status, done): (_, CommandView) = setup
        .get(&format!("/api/v1/commands/{}?wait_ms=5000", accepted.id))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (done.status, done.result),
        (CommandStatus::Succeeded, Some(json!({"on": true})))
    );

    let (_, recent): (_, Vec<CommandView>) = setup.get(&setup.commands_path()).await;
    assert_eq!(recent.first().map(|c| &c.id), Some(&accepted.id));
}

#[tokio::test]
async fn bad_requests_get_json_errors_with_fitting_statuses() {
    use reqwest::Method;
    let setup = setup(Kind::Thermostat).await;
    let commands = setup.commands_path();
    let telemetry = format!("/api/v1/devices/{}/telemetry", setup.device);
    let (get, post, delete) = (Method::GET, Method::POST, Method::DELETE);
    // Method, path, JSON body, the status and code expected.
    let cases: &[(Method, &str, &str, StatusCode, &str)] = &[
        (
            post.clone(),
            &commands,
            r#"{"name":"set_target","args":{"celsius":99}}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_arguments",
        ),
        (
            post.clone(),
            &commands,
            r#"{"name":"launch"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_command",
        ),
        (
            post.clone(),
            &commands,
            r#"{"name":"get_state","timeout_ms":5}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_timeout",
        ),
        (
            post.clone(),
            &commands,
            r#"{"name":"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            post.clone(),
            &commands,
            r#"{"args":{}}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_request",
        ),
        (
            post.clone(),
            "/api/v1/devices/ghost/commands",
            r#"{"name":"get_state"}"#,
            StatusCode::NOT_FOUND,
            "unknown_device",
        ),
        // A malformed id is refused at the edge, as no device could have it.
        (
            post.clone(),
            "/api/v1/devices/not%20a%20device/commands",
            r#"{"name":"get_state"}"#,
            StatusCode::NOT_FOUND,
            "unknown_device",
        ),
        (
            get.clone(),
            "/api/v1/devices/not.a.device",
            "",
            StatusCode::NOT_FOUND,
            "unknown_device",
        ),
        (
            get.clone(),
            "/api/v1/devices/ghost",
            "",
            StatusCode::NOT_FOUND,
            "unknown_device",
        ),
        (
            get.clone(),
            "/api/v1/devices/ghost/commands",
            "",
            StatusCode::NOT_FOUND,
            "unknown_device",
        ),
        (
            get.clone(),
            &format!("{commands}?limit=lots"),
            "",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            get.clone(),
            "/api/v1/commands/does-not-exist",
            "",
            StatusCode::NOT_FOUND,
            "unknown_command",
        ),
        (
            delete.clone(),
            "/api/v1/commands/does-not-exist",
            "",
            StatusCode::NOT_FOUND,
            "unknown_command",
        ),
        (
            get.clone(),
            &format!("{telemetry}?from=2000&to=1000"),
            "",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_range",
        ),
        (
            get.clone(),
            &format!("{telemetry}?max_points=0"),
            "",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_max_points",
        ),
        (
            get.clone(),
            "/api/v1/nothing-here",
            "",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let mut request = setup
            .client
            .request(method.clone(), format!("{}{path}", setup.base));
        if !body.is_empty() {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let got = response.status();
        let answer: Value = response.json().await.unwrap();
        assert_eq!(got, *status, "{method} {path} {body}: {answer}");
        let answer = error(answer);
        assert_eq!(
            answer.code, *code,
            "{method} {path} {body}: {}",
            answer.message
        );
        assert!(!answer.message.is_empty());
    }
}

#[tokio::test]
async fn a_pending_command_can_be_cancelled_once() {
    let setup = setup(Kind::Gateway).await;
    let (_, body) = setup
        .post(
            &setup.commands_path(),
            r#"{"name":"echo","args":{"delay_ms":20000},"timeout_ms":30000}"#,
        )
        .await;
    let accepted: CommandView = serde_json::from_value(body).unwrap();
    let (status, body) = setup
        .delete(&format!("/api/v1/commands/{}", accepted.id))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        serde_json::from_value::<CommandView>(body).unwrap().status,
        CommandStatus::Cancelled
    );
    let (status, body) = setup
        .delete(&format!("/api/v1/commands/{}", accepted.id))
        .await;
    assert_eq!(
        (status, error(body).code.as_str()),
        (StatusCode::CONFLICT, "already_ended")
    );
}

#[tokio::test]
async fn the_live_channel_sends_a_snapshot_then_each_status() {
    let setup = setup(Kind::Gateway).await;
    let mut socket = live(
        &setup.base,
        &setup.token,
        None,
        &format!("watch={}", setup.device),
    )
    .await
    .expect("WebSocket upgrade");
    let mut next = async || -> LiveEvent {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("an event in time")
            .unwrap()
            .unwrap();
        serde_json::from_str(message.to_text().unwrap()).unwrap()
    };
    let LiveEvent::Snapshot { devices, .. } = next().await else {
        panic!("the first message is not a snapshot")
    };
    assert!(devices.iter().any(|d| d.id == setup.device && d.online));

    let (_, body) = setup
        .post(
            &setup.commands_path(),
            r#"{"name":"collect_logs","args":{"lines":2}}"#,
        )
        .await;
    let accepted: CommandView = serde_json::from_value(body).unwrap();
    let mut statuses = Vec::new();
    while statuses
        .last()
        .is_none_or(|s: &CommandStatus| !s.is_terminal())
    {
        if let LiveEvent::CommandUpdated { command } = next().await
            && command.id == accepted.id
        {
            statuses.push(command.status);
        }
    }
    statuses.dedup();
    use CommandStatus::*;
    // The device's receipt can overtake the broker's confirm (seen under load): the
    // command is then past `sent`, and never goes back to it.
    let sent_at = statuses.iter().position(|s| *s == Sent);
    assert!(sent_at.is_none_or(|at| at == 1), "{statuses:?}");
    statuses.retain(|s| *s != Sent);
    assert_eq!(statuses, [Accepted, Delivered, Progress, Succeeded]);
}

#[tokio::test]
async fn a_long_message_reaches_a_live_client_whole_from_frames_of_4_kib() {
    let setup = setup(Kind::Gateway).await;
    // Commands echoing 1,000 characters of 1 to 4 bytes each (so that frames end inside
    // characters), twice in each command (argument and result): a snapshot of well
    // over 64 KiB.
    let message = "ü✓😀a".repeat(250);
    let mut ids = Vec::new();
    for _ in 0..30 {
        let (status, body) = setup
            .post(
                &setup.commands_path(),
                &json!({"name": "echo", "args": {"message": message}}).to_string(),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let accepted: CommandView = serde_json::from_value(body).unwrap();
        let (_, done): (_, CommandView) = setup
            .get(&format!("/api/v1/commands/{}?wait_ms=5000", accepted.id))
            .await;
        assert_eq!(done.status, CommandStatus::Succeeded);
        ids.push(accepted.id);
    }
    let whole = |text: &str| {
        let Ok(LiveEvent::Snapshot { commands, .. }) = serde_json::from_str(text) else {
            panic!("the first message is not a snapshot");
        };
        for id in &ids {
            let command = commands
                .iter()
                .find(|c| &c.id == id)
                .expect("every command in the snapshot");
            assert_eq!(command.args.get("message"), Some(&json!(message)));
            assert_eq!(command.result, Some(json!({"message": message})));
        }
    };

    // On the wire: a text frame, continuation frames, none over 4 KiB, the last final.
    // The tab watches the device: its commands are in the snapshot.
    let shows = format!("watch={}", setup.device);
    let frames = raw_live_frames(&setup.base, &setup.token, &shows).await;
    assert!(frames.len() > 16, "{} frames", frames.len());
    for (i, (fin, opcode, payload)) in frames.iter().enumerate() {
        assert_eq!(*opcode, if i == 0 { 1 } else { 0 }, "frame {i}'s opcode");
        assert_eq!(*fin, i == frames.len() - 1, "frame {i}'s FIN");
        assert!(payload.len() <= 4096, "frame {i}: {} bytes", payload.len());
    }
    let text: Vec<u8> = frames.into_iter().flat_map(|(_, _, p)| p).collect();
    assert!(text.len() > 64 * 1024, "{} bytes", text.len());
    whole(std::str::from_utf8(&text).expect("UTF-8 once reassembled"));

    // A client gets it as one message, and the socket answers pings.
    let mut socket = live(&setup.base, &setup.token, None, &shows)
        .await
        .expect("WebSocket upgrade");
    let first = testkit::within(Duration::from_secs(10), "the snapshot", socket.next())
        .await
        .expect("a message")
        .unwrap();
    whole(first.to_text().expect("a text message"));
    use futures_util::SinkExt as _;
    use tokio_tungstenite::tungstenite::Message;
    socket
        .send(Message::Ping(b"still there?"[..].into()))
        .await
        .unwrap();
    testkit::within(Duration::from_secs(5), "the pong", async {
        loop {
            match socket.next().await.expect("open").unwrap() {
                Message::Pong(data) => break assert_eq!(&data[..], b"still there?"),
                _ => continue,
            }
        }
    })
    .await;
}

/// The frames of the first message the live channel sends, read off the connection by
/// hand: (FIN, opcode, payload) each.
async fn raw_live_frames(base: &str, token: &str, shows: &str) -> Vec<(bool, u8, Vec<u8>)> {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::io::BufReader::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let request = format!(
        "GET /api/v1/live?{shows} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: {key}\r\n\r\n"
    );
    stream
        .get_mut()
        .write_all(request.as_bytes())
        .await
        .unwrap();
    let mut head = String::new();
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).await.unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    assert!(head.starts_with("http/1.1 101"), "{head}");
    // RFC 6455's own example key and answer.
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    testkit::within(Duration::from_secs(10), "the snapshot's frames", async {
        let mut frames = Vec::new();
        loop {
            let mut header = [0u8; 2];
            stream.read_exact(&mut header).await.unwrap();
            let (fin, opcode) = (header[0] & 0x80 != 0, header[0] & 0x0f);
            assert_eq!(header[1] & 0x80, 0, "a server's frames are not masked");
            let len = match header[1] & 0x7f {
                126 => u64::from(stream.read_u16().await.unwrap()),
                127 => stream.read_u64().await.unwrap(),
                len => u64::from(len),
            };
            let mut payload = vec![0; usize::try_from(len).unwrap()];
            stream.read_exact(&mut payload).await.unwrap();
            frames.push((fin, opcode, payload));
            if fin {
                return frames;
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_bad_upgrade_to_the_live_channel_is_refused_with_the_reason() {
    let setup = setup(Kind::Switch).await;
    let upgrade = [
        ("connection", "upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    for (left_out, reason) in [
        ("sec-websocket-key", "`Sec-WebSocket-Key` header missing"),
        ("sec-websocket-version", "`Sec-WebSocket-Version`"),
        ("upgrade", "`Upgrade` header"),
        ("connection", "`Connection` header"),
    ] {
        let mut request = setup.client.get(format!("{}/api/v1/live", setup.base));
        for (name, value) in upgrade {
            if name != left_out {
                request = request.header(name, value);
            }
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "without {left_out}"
        );
        let body = error(response.json().await.unwrap());
        assert_eq!(body.code, "bad_upgrade");
        assert!(
            body.message.contains(reason),
            "without {left_out}: {}",
            body.message
        );
    }
    // A wrong version is refused too.
    let mut request = setup.client.get(format!("{}/api/v1/live", setup.base));
    for (name, value) in upgrade {
        let value = if name == "sec-websocket-version" {
            "8"
        } else {
            value
        };
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn without_an_amqp_url_the_server_runs_its_own_broker() {
    let mut config = server::Config::new(SocketAddr::from(([127, 0, 0, 1], 0)), "unused");
    config.amqp_url = None;
    let server = server::Server::bind(config)
        .await
        .expect("the embedded broker starts");
    let broker_url = server
        .embedded_broker_url()
        .expect("an embedded broker")
        .to_owned();
    // The server account, with a password made up for this data folder.
    assert!(
        broker_url.starts_with("amqp://tether-server:"),
        "{broker_url}"
    );
    assert!(!broker_url.contains("guest"), "{broker_url}");
    assert!(
        server.hub().is_connected(),
        "the hub reached its own broker"
    );
    let base = format!("http://{}", server.local_addr().unwrap());
    let hub = server.hub().clone();
    let (token, _) = testkit::user_token(server.accounts(), Role::Admin, &[]).await;
    let accounts = server.accounts().clone();
    tokio::spawn(server.serve(std::future::pending()));

    // Devices log in as themselves, checked against the server's database: a wrong
    // secret is refused, the provisioned one gets in.
    let device = DeviceId::new(format!("embedded-{:08x}", fastrand::u32(..))).unwrap();
    let device_url = testkit::provision_in(&accounts, &broker_url, &device).await;
    let wrong = testkit::with_credential(&broker_url, device.as_str(), "not-its-secret");
    let refused = lapin::Connection::connect(&wrong, lapin::ConnectionProperties::default()).await;
    assert!(refused.is_err(), "a wrong secret is refused");
    let config = agent::Config::new(device_url, device.clone(), "switch");
    tokio::spawn(agent::run(
        config,
        Arc::new(Simulated::new(Kind::Switch)),
        std::future::pending(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !hub.device(&device).is_some_and(|d| d.online) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent did not come online"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = testkit::api_client(&token);
    let accepted: CommandView = client
        .post(format!("{base}/api/v1/devices/{device}/commands"))
        .json(&json!({"name": "toggle"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let done: CommandView = client
        .get(format!(
            "{base}/api/v1/commands/{}?wait_ms=5000",
            accepted.id
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (done.status, done.result),
        (CommandStatus::Succeeded, Some(json!({"on": true})))
    );
}

#[tokio::test]
async fn stored_telemetry_is_served_downsampled() {
    let setup = setup_with(Kind::Gateway, Some(Duration::from_millis(100))).await;
    let path = format!("/api/v1/devices/{}/telemetry", setup.device);
    // Readings are stored through the queue within a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let history = loop {
        let (status, history): (_, History) = setup.get(&path).await;
        assert_eq!(status, StatusCode::OK);
        let stored = |s: &protocol::api::Series| s.points.iter().map(|p| p.count).sum::<u32>();
        if history.series.iter().all(|s| stored(s) >= 5) {
            break history;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readings were not stored: {history:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Every announced metric, with its unit and range, over the last hour.
    let names: Vec<_> = history
        .series
        .iter()
        .map(|s| s.spec.name.as_str())
        .collect();
    assert_eq!(names, ["cpu", "memory", "signal"]);
    let cpu = &history.series[0];
    assert_eq!(
        (cpu.spec.unit.as_str(), cpu.spec.min, cpu.spec.max),
        ("%", Some(0.0), Some(100.0))
    );
    assert_eq!(history.to_ms - history.from_ms, 3_600_000);
    assert_eq!(history.bucket_ms, 12_000);
    assert!(cpu.points.iter().all(|p| p.min <= p.avg && p.avg <= p.max));

    // One metric, a narrow range, few points.
    let (from, to) = (history.to_ms - 60_000, history.to_ms + 1_000);
    let (status, one): (_, History) = setup
        .get(&format!(
            "{path}?metric=signal&from={from}&to={to}&max_points=2"
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one.series.len(), 1);
    assert_eq!(one.series[0].spec.unit, "dBm");
    assert!((1..=2).contains(&one.series[0].points.len()));

    for (query, status, code) in [
        ("?metric=humidity", StatusCode::NOT_FOUND, "unknown_metric"),
        (
            "?from=10&to=5",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_range",
        ),
        (
            "?max_points=0",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_max_points",
        ),
        (
            "?max_points=100000",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_max_points",
        ),
        ("?from=yesterday", StatusCode::BAD_REQUEST, "bad_request"),
    ] {
        let (got, body): (_, Value) = setup.get(&format!("{path}{query}")).await;
        assert_eq!((got, error(body).code.as_str()), (status, code), "{query}");
    }
    let (status, body): (_, Value) = setup.get("/api/v1/devices/nobody-here/telemetry").await;
    assert_eq!(
        (status, error(body).code.as_str()),
        (StatusCode::NOT_FOUND, "unknown_device")
    );
}

#[tokio::test]
async fn without_storage_history_is_a_clear_503() {
    let setup = setup(Kind::Gateway).await;
    let (status, body): (_, Value) = setup
        .get(&format!("/api/v1/devices/{}/telemetry", setup.device))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error(body).code, "storage_off");
}

/// The events that come during `period`.
async fn drain(
    socket: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    period: Duration,
) -> Vec<LiveEvent> {
    let mut events = Vec::new();
    let until = tokio::time::Instant::now() + period;
    while let Ok(Some(Ok(message))) = tokio::time::timeout_at(until, socket.next()).await {
        if let Ok(event) = serde_json::from_str::<LiveEvent>(message.to_text().unwrap_or_default())
        {
            events.push(event);
        }
    }
    events
}

/// The first event `pick` takes, within 10 s.
async fn first_of<T>(
    socket: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    what: &str,
    mut pick: impl FnMut(LiveEvent) -> Option<T>,
) -> T {
    testkit::within(Duration::from_secs(10), what, async {
        loop {
            let message = socket.next().await.expect("the socket stays open").unwrap();
            if let Ok(event) =
                serde_json::from_str::<LiveEvent>(message.to_text().unwrap_or_default())
                && let Some(picked) = pick(event)
            {
                return picked;
            }
        }
    })
    .await
}

/// Sends `request` to the live channel as a tab does.
async fn tell(
    socket: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    request: Value,
) {
    use futures_util::SinkExt as _;
    socket
        .send(tokio_tungstenite::tungstenite::Message::text(
            request.to_string(),
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_tab_is_sent_only_what_it_shows() {
    let setup = setup(Kind::Switch).await;
    let tag = format!("shows{:06x}", fastrand::u32(..0xff_ffff));
    let mut agents = Vec::new();
    for _ in 0..2 {
        let agent = testkit::Agent::start(
            &amqp_url(),
            &format!("{tag}-t"),
            Kind::Thermostat,
            |config| {
                config.heartbeat = Duration::from_secs(1);
                config.telemetry = Some(Duration::from_millis(200));
            },
        )
        .await;
        testkit::online(&setup.hub, &agent.id).await;
        agents.push(agent);
    }
    let (shown, hidden) = (agents[0].id.clone(), agents[1].id.clone());

    // The tab shows a fleet page that holds one of them.
    let query = serde_json::to_string(&json!({"search": shown.as_str()})).unwrap();
    let encoded: String = query
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let mut socket = live(&setup.base, &setup.token, None, &format!("fleet={encoded}"))
        .await
        .expect("WebSocket upgrade");
    let LiveEvent::Snapshot { devices, .. } = first_of(&mut socket, "a snapshot", Some).await
    else {
        panic!("a snapshot first");
    };
    let ids: Vec<&DeviceId> = devices.iter().map(|d| &d.id).collect();
    assert_eq!(ids, [&shown], "the snapshot holds the page's devices only");
    let page = first_of(&mut socket, "the fleet page", |e| match e {
        LiveEvent::FleetPage { page, .. } => Some(page),
        _ => None,
    })
    .await;
    assert_eq!(page.total, 1);
    assert_eq!(page.devices[0].id, shown);
    assert!(page.summary.total >= 3);

    // Readings of the device shown arrive; of the others, nothing at all.
    let events = drain(&mut socket, Duration::from_millis(1_500)).await;
    let about = |events: &[LiveEvent], id: &DeviceId| {
        events.iter().any(|event| match event {
            LiveEvent::Telemetry { reading } => &reading.device_id == id,
            LiveEvent::DeviceUpdated { device } => &device.id == id,
            _ => false,
        })
    };
    assert!(about(&events, &shown), "no reading of the device shown");
    assert!(
        !about(&events, &hidden),
        "a device not shown reached the tab"
    );
    assert!(
        !about(&events, &setup.device),
        "a device not shown reached the tab"
    );

    // A query out of bounds is ignored; the socket stays.
    tell(&mut socket, json!({"type": "fleet", "query": {"limit": 0}})).await;
    // Another page: both of them, and changes of its devices as they happen.
    tell(
        &mut socket,
        json!({"type": "fleet", "query": {"search": tag}}),
    )
    .await;
    let page = first_of(&mut socket, "the new page", |e| match e {
        LiveEvent::FleetPage { page, .. } => Some(page),
        _ => None,
    })
    .await;
    assert_eq!(page.total, 2);
    agents.remove(1).stop().await;
    first_of(
        &mut socket,
        "the device on the page going offline",
        |e| match e {
            LiveEvent::DeviceUpdated { device } if device.id == hidden && !device.online => {
                Some(())
            }
            _ => None,
        },
    )
    .await;
    // Online only: the page loses it by itself.
    tell(
        &mut socket,
        json!({"type": "fleet", "query": {"search": tag, "status": "online"}}),
    )
    .await;
    // (The page of the query before may still be on its way: the answer to this one
    // is the page with its query.)
    let page = first_of(&mut socket, "the online page", |e| match e {
        LiveEvent::FleetPage { query, page }
            if serde_json::to_value(&query).unwrap()["status"] == "online" =>
        {
            Some(page)
        }
        _ => None,
    })
    .await;
    assert_eq!(
        page.devices.iter().map(|d| &d.id).collect::<Vec<_>>(),
        [&shown]
    );

    // Watching a device sends it at once.
    tell(
        &mut socket,
        json!({"type": "watch", "device_id": setup.device}),
    )
    .await;
    first_of(&mut socket, "the watched device", |e| match e {
        LiveEvent::DeviceUpdated { device } if device.id == setup.device => Some(()),
        _ => None,
    })
    .await;

    // The commands of a watched device arrive; once it is no longer watched, not.
    let send = async |name: &str| {
        let (status, body) = setup
            .post(&setup.commands_path(), &json!({"name": name}).to_string())
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        serde_json::from_value::<CommandView>(body).unwrap().id
    };
    let watched = send("on").await;
    first_of(&mut socket, "the watched device's command", |e| match e {
        LiveEvent::CommandUpdated { command } if command.id == watched => Some(()),
        _ => None,
    })
    .await;
    tell(
        &mut socket,
        json!({"type": "unwatch", "device_id": setup.device}),
    )
    .await;
    let _ = drain(&mut socket, Duration::from_millis(300)).await;
    let unwatched = send("off").await;
    let events = drain(&mut socket, Duration::from_millis(1_500)).await;
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, LiveEvent::CommandUpdated { command } if command.id == unwatched)),
        "a command of a device no longer shown reached the tab"
    );
    // Watched again: its recent commands come at once, that one included.
    tell(
        &mut socket,
        json!({"type": "watch", "device_id": setup.device}),
    )
    .await;
    first_of(
        &mut socket,
        "the recent commands of a device watched again",
        |e| match e {
            LiveEvent::CommandUpdated { command } if command.id == unwatched => Some(()),
            _ => None,
        },
    )
    .await;

    // No fleet page any more: its device's readings stop.
    tell(&mut socket, json!({"type": "fleet", "query": null})).await;
    let _ = drain(&mut socket, Duration::from_millis(500)).await;
    let events = drain(&mut socket, Duration::from_millis(1_500)).await;
    assert!(
        !about(&events, &shown),
        "a device no longer shown reached the tab"
    );
    for agent in agents {
        agent.stop().await;
    }
}

#[tokio::test]
async fn what_a_tab_says_it_shows_is_checked_and_a_flood_is_cut_off() {
    let setup = setup(Kind::Switch).await;
    // Garbage in the address: nothing it names is shown, the socket still opens, and
    // each part that cannot be done is refused, saying why.
    let mut socket = live(
        &setup.base,
        &setup.token,
        None,
        "watch=not%20an%20id,,%2F..%2F,x%2A&fleet=%7Bnot%20json",
    )
    .await
    .expect("WebSocket upgrade");
    let LiveEvent::Snapshot { devices, .. } = first_of(&mut socket, "a snapshot", Some).await
    else {
        panic!("a snapshot first");
    };
    assert!(devices.is_empty(), "garbage showed {devices:?}");
    let mut refusals: Vec<(String, String)> = Vec::new();
    while refusals.len() < 4 {
        refusals.push(
            first_of(&mut socket, "the address's refusals", |e| match e {
                LiveEvent::Refused { code, message } => Some((code, message)),
                _ => None,
            })
            .await,
        );
    }
    let codes: Vec<&str> = refusals.iter().map(|(code, _)| code.as_str()).collect();
    assert_eq!(
        codes,
        [
            "invalid_request",
            "invalid_request",
            "invalid_request",
            "invalid_query"
        ],
        "{refusals:?}"
    );
    assert!(refusals[0].1.contains("not an id"), "{refusals:?}");
    // A query out of bounds, another device's id that is no id, a request of no known
    // type: each refused with the reason; the socket stays and answers what makes sense.
    tell(
        &mut socket,
        json!({"type": "fleet", "query": {"limit": 100000}}),
    )
    .await;
    tell(
        &mut socket,
        json!({"type": "fleet", "query": {"search": "x".repeat(129)}}),
    )
    .await;
    tell(
        &mut socket,
        json!({"type": "watch", "device_id": "no such id!"}),
    )
    .await;
    tell(&mut socket, json!({"type": "shutdown"})).await;
    // Job ids too long, empty, not strings, and more jobs than a tab may follow.
    tell(
        &mut socket,
        json!({"type": "follow", "job_id": "j".repeat(10_000)}),
    )
    .await;
    tell(&mut socket, json!({"type": "follow", "job_id": ""})).await;
    tell(&mut socket, json!({"type": "follow", "job_id": 42})).await;
    for n in 0..100 {
        tell(
            &mut socket,
            json!({"type": "follow", "job_id": format!("job-{n}")}),
        )
        .await;
    }
    tell(
        &mut socket,
        json!({"type": "watch", "device_id": setup.device}),
    )
    .await;
    let mut refused: std::collections::BTreeMap<String, usize> = Default::default();
    let mut messages = Vec::new();
    let first = first_of(
        &mut socket,
        "an answer to the one request that makes sense",
        |e| match e {
            LiveEvent::FleetPage { .. } => Some(Err("a fleet page for a query out of bounds")),
            LiveEvent::DeviceUpdated { device } if device.id == setup.device => Some(Ok(())),
            LiveEvent::Refused { code, message } => {
                *refused.entry(code).or_default() += 1;
                messages.push(message);
                None
            }
            _ => None,
        },
    )
    .await;
    assert_eq!(first, Ok(()));
    // Two queries out of bounds; an id that is no id, a type nobody knows, job ids too
    // long, empty and not a string; a hundred jobs that do not exist.
    assert_eq!(
        refused,
        [
            ("invalid_query".to_owned(), 2),
            ("invalid_request".to_owned(), 5),
            ("not_found".to_owned(), 100)
        ]
        .into(),
        "{messages:#?}"
    );
    assert!(
        messages.iter().all(|m| m.len() <= 250),
        "a refusal quotes the whole input: {messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("limit 100000")),
        "{messages:?}"
    );
    // A tab watches at most 32 devices: the 33rd is refused as too many, and the
    // socket goes on.
    for n in 0..40 {
        tell(
            &mut socket,
            json!({"type": "watch", "device_id": format!("ghost-{n}")}),
        )
        .await;
    }
    let mut too_many = 0;
    while too_many < 9 {
        first_of(
            &mut socket,
            "a refusal of a watch past the limit",
            |e| match e {
                LiveEvent::Refused { code, .. } if code == "too_many" => Some(()),
                LiveEvent::Refused { code, message } => panic!("refused as {code}: {message}"),
                _ => None,
            },
        )
        .await;
        too_many += 1;
    }
    let extra = drain(&mut socket, Duration::from_millis(300)).await;
    assert!(
        !extra.iter().any(|e| matches!(e, LiveEvent::Refused { .. })),
        "more refusals than watches past the limit: {extra:?}"
    );
    // A message past the 16 KiB a tab may send closes the socket.
    tell(
        &mut socket,
        json!({"type": "watch", "device_id": "d".repeat(20_000)}),
    )
    .await;
    let closed = testkit::within(Duration::from_secs(5), "the socket closed", async {
        loop {
            match socket.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(message)) if message.is_close() => return,
                Some(Ok(_)) => {}
            }
        }
    });
    closed.await;
    // A viewer of no group may not watch the device: it is never sent.
    let mut outsider = live(
        &setup.base,
        &setup.viewer,
        None,
        &format!("watch={}", setup.device),
    )
    .await
    .expect("WebSocket upgrade");
    let LiveEvent::Snapshot { devices, .. } = first_of(&mut outsider, "a snapshot", Some).await
    else {
        panic!("a snapshot first");
    };
    assert!(devices.is_empty());
    tell(
        &mut outsider,
        json!({"type": "watch", "device_id": setup.device}),
    )
    .await;
    let events = drain(&mut outsider, Duration::from_millis(1_500)).await;
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, LiveEvent::DeviceUpdated { device } if device.id == setup.device)),
        "a device outside the viewer's groups reached them"
    );
    // Refused as a device that does not exist would be: nothing says it does.
    assert!(
        events.iter().any(|e| matches!(
            e,
            LiveEvent::Refused { code, message } if code == "not_found" && message.contains("may see")
        )),
        "{events:?}"
    );

    // An address naming more than a tab may hold: the excess refused in one go, not
    // each looked up; what fits is still checked (jobs nobody made: not found).
    let jobs: Vec<String> = (0..100).map(|n| format!("job-{n}")).collect();
    let ghosts: Vec<String> = (0..40).map(|n| format!("ghost-{n}")).collect();
    let mut crowded = live(
        &setup.base,
        &setup.token,
        None,
        &format!("watch={}&jobs={}", ghosts.join(","), jobs.join(",")),
    )
    .await
    .expect("WebSocket upgrade");
    let events = drain(&mut crowded, Duration::from_millis(1_500)).await;
    let mut refused: std::collections::BTreeMap<&str, usize> = Default::default();
    for event in &events {
        if let LiveEvent::Refused { code, .. } = event {
            *refused.entry(code.as_str()).or_default() += 1;
        }
    }
    assert_eq!(
        refused,
        [("not_found", 16), ("too_many", 2)].into(),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_tab_watching_a_device_over_the_live_channel_speeds_it_up() {
    // The device reports every 5 s, or every second while watched.
    let setup = setup_with(Kind::Gateway, Some(Duration::from_secs(5))).await;
    let mut socket = setup.live(None).await.expect("WebSocket upgrade");
    use futures_util::SinkExt as _;
    use tokio_tungstenite::tungstenite::Message;
    let first = socket.next().await.unwrap().unwrap();
    assert!(first.to_text().unwrap().contains("\"snapshot\""));
    socket
        .send(Message::text("this is not a request"))
        .await
        .unwrap();
    tell(
        &mut socket,
        json!({"type": "watch", "device_id": setup.device}),
    )
    .await;
    let mut readings = 0;
    let _ = tokio::time::timeout(Duration::from_millis(5_500), async {
        while let Some(Ok(message)) = socket.next().await {
            if let Ok(LiveEvent::Telemetry { reading }) =
                serde_json::from_str::<LiveEvent>(message.to_text().unwrap_or_default())
                && reading.device_id == setup.device
            {
                readings += 1;
                if readings == 9 {
                    break;
                }
            }
        }
    })
    .await;
    assert_eq!(setup.hub.watched_devices(), 1);
    // Three metrics a round: three rounds within 5.5 s, where 5 s apart gives two at most.
    assert!(readings >= 9, "only {readings} readings while watched");
    drop(socket);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while setup.hub.watched_devices() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "closing the tab did not release its watch"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_server_whose_database_is_down_starts_and_answers_history_with_503() {
    let mut config = server::Config::new(SocketAddr::from(([127, 0, 0, 1], 0)), amqp_url());
    config.database_url = "postgres://postgres@127.0.0.1:1/tether".into();
    config.store_queue = format!("tether.telemetry.store.test-{:08x}", fastrand::u32(..));
    config.store_queue_expires_ms = Some(60_000);
    let server = server::Server::bind(config)
        .await
        .expect("the server starts without its database");
    let base = format!("http://{}", server.local_addr().unwrap());
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    // Not even credentials can be checked: a clear 503 too, not a 401.
    let response = testkit::api_client("tth_any_token")
        .get(format!("{base}/api/v1/devices/anyone/telemetry"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: ApiError = response.json().await.unwrap();
    assert_eq!(body.code, "store_unavailable");
    assert!(body.message.contains("try again"), "{}", body.message);
}

#[tokio::test]
async fn a_hostile_page_can_neither_command_nor_listen() {
    let setup = setup(Kind::Gateway).await;
    let (status, body) = setup
        .post(
            &setup.commands_path(),
            r#"{"name":"echo","args":{"delay_ms":20000},"timeout_ms":30000}"#,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let pending: CommandView = serde_json::from_value(body).unwrap();
    testkit::eventually("the device has it", Duration::from_secs(5), || {
        setup
            .hub
            .command(&pending.id)
            .filter(|c| c.status == CommandStatus::Delivered)
    })
    .await;
    let evil = "http://evil.example";
    let own = setup.base.clone();
    let send = |origin: Option<&str>, method: reqwest::Method, path: &str| {
        let mut request = setup
            .client
            .request(method, format!("{}{path}", setup.base));
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request
    };
    // The page posts a plain form to the cancel server function, as a hostile page can.
    let form = send(Some(evil), reqwest::Method::POST, "/api/cancel_command")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("id={}", pending.id))
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::FORBIDDEN);
    assert_eq!(error(form.json().await.unwrap()).code, "cross_site");
    // The same form from no page at all is still not what the server function takes.
    let plain = send(None, reqwest::Method::POST, "/api/cancel_command")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("id={}", pending.id))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Nor through the JSON API, nor by a browser that only says it is cross-site.
    let path = format!("/api/v1/commands/{}", pending.id);
    let delete = send(Some(evil), reqwest::Method::DELETE, &path)
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), StatusCode::FORBIDDEN);
    let marked = send(None, reqwest::Method::DELETE, &path)
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(marked.status(), StatusCode::FORBIDDEN);
    let posted = send(Some(evil), reqwest::Method::POST, &setup.commands_path())
        .header("content-type", "application/json")
        .body(r#"{"name":"reboot"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        setup.hub.command(&pending.id).map(|c| c.status),
        Some(CommandStatus::Delivered),
        "the command is untouched"
    );
    // The live channel does not open for it.
    match setup.live(Some(evil)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::FORBIDDEN)
        }
        other => panic!(
            "the live channel opened for another site: {:?}",
            other.map(|_| ())
        ),
    }
    // The server's own pages can do all of it.
    setup
        .live(Some(&own))
        .await
        .expect("the live channel opens for our own pages");
    let cancel = send(Some(&own), reqwest::Method::POST, "/api/cancel_command")
        .header("content-type", "application/json")
        .body(format!(r#"{{"id":"{}"}}"#, pending.id))
        .send()
        .await
        .unwrap();
    assert_eq!(
        cancel.status(),
        StatusCode::OK,
        "{}",
        cancel.text().await.unwrap()
    );
    assert_eq!(
        setup.hub.command(&pending.id).map(|c| c.status),
        Some(CommandStatus::Cancelled)
    );
}
