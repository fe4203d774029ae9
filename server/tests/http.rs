//! Starts the real server on port 0 and talks to it over HTTP.

use std::{net::SocketAddr, time::Duration};

use testkit::within;

use tokio::sync::oneshot;

/// A server running in the background; dropping it shuts the server down.
struct Running {
    addr: SocketAddr,
    /// Sends an admin's API token.
    client: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

async fn start() -> Running {
    start_with(testkit::rabbitmq_url()).await
}

async fn start_with(amqp_url: String) -> Running {
    let config = server::Config::new(SocketAddr::from(([127, 0, 0, 1], 0)), amqp_url);
    let server = server::Server::bind(config).await.expect("bind port 0");
    let addr = server.local_addr().expect("bound address");
    let (token, _) = testkit::user_token(server.accounts(), protocol::auth::Role::Admin, &[]).await;
    let client = testkit::api_client(&token);
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        client,
        _stop: stop,
    }
}

async fn get(running: &Running, path: &str) -> (u16, String) {
    let response = running
        .client
        .get(format!("http://{}{path}", running.addr))
        .send()
        .await
        .expect("HTTP request");
    let status = response.status().as_u16();
    (status, response.text().await.expect("response body"))
}

#[tokio::test]
async fn home_page_is_rendered_on_the_server_with_hydration_scripts() {
    let running = start().await;
    let (status, body) = get(&running, "/").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("<h1>Fleet</h1>"),
        "server-rendered heading missing: {body}"
    );
    assert!(
        body.contains("Show how to connect a device"),
        "button missing: {body}"
    );
    assert!(
        body.contains("/pkg/tether.js"),
        "hydration script missing: {body}"
    );
    assert!(
        body.contains("/pkg/tether.css"),
        "stylesheet missing: {body}"
    );
}

#[tokio::test]
async fn health_endpoints_answer() {
    let running = start().await;
    assert_eq!(get(&running, "/healthz").await, (200, "ok".to_owned()));
    assert_eq!(get(&running, "/readyz").await, (200, "ready".to_owned()));
    let (status, metrics) = get(&running, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("tether_broker_connected 1"), "{metrics}");
    assert!(
        metrics.contains("tether_messages_dropped_total{reason=\"malformed\"} 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn unknown_page_is_a_404_with_a_way_back() {
    let running = start().await;
    let (status, body) = get(&running, "/no-such-page").await;
    assert_eq!(status, 404);
    assert!(body.contains("Page not found"), "{body}");
    assert!(body.contains("href=\"/\""), "{body}");
}

#[tokio::test]
async fn without_a_broker_pages_still_render_and_commands_fail_clearly() {
    // What the server logs goes with the test's output, so a failure shows it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("debug,hyper=info,h2=info,reqwest=info")
        .with_test_writer()
        .try_init();
    // Every step is bounded: a server that stops answering fails the test, naming the
    // step, instead of hanging the run.
    let step = Duration::from_secs(20);
    // Nothing listens on port 1: the hub starts disconnected and keeps retrying.
    let running = within(
        step,
        "starting the server",
        start_with("amqp://guest:guest@127.0.0.1:1/%2f".into()),
    )
    .await;
    let (status, body) = within(step, "GET /", get(&running, "/")).await;
    assert_eq!(status, 200);
    assert!(body.contains("<h1>Fleet</h1>"), "{body}");
    assert_eq!(
        within(step, "GET /readyz", get(&running, "/readyz")).await,
        (503, "not connected to the broker".to_owned())
    );
    let (_, metrics) = within(step, "GET /metrics", get(&running, "/metrics")).await;
    assert!(metrics.contains("tether_broker_connected 0"), "{metrics}");

    let response = within(
        step,
        "the command's POST",
        running
            .client
            .post(format!(
                "http://{}/api/v1/devices/any/commands",
                running.addr
            ))
            .header("content-type", "application/json")
            .body(r#"{"name":"toggle"}"#)
            .send(),
    )
    .await
    .expect("HTTP request");
    assert_eq!(response.status().as_u16(), 503);
    let error: protocol::api::ApiError = within(step, "the refusal's body", response.json())
        .await
        .expect("JSON error");
    assert_eq!(error.code, "broker_unavailable");
    assert_eq!(
        error.message,
        "the server is not connected to the broker; try again shortly"
    );
}
