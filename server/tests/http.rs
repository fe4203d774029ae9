//! Starts the real server on port 0 and talks to it over HTTP.

use std::net::SocketAddr;

use tokio::sync::oneshot;

/// A server running in the background; dropping it shuts the server down.
struct Running {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn start() -> Running {
    let config = server::Config {
        addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        site_root: None,
    };
    let server = server::Server::bind(config).await.expect("bind port 0");
    let addr = server.local_addr().expect("bound address");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    Running { addr, _stop: stop }
}

async fn get(running: &Running, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{}{path}", running.addr))
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
}

#[tokio::test]
async fn unknown_page_is_a_404_with_a_way_back() {
    let running = start().await;
    let (status, body) = get(&running, "/no-such-page").await;
    assert_eq!(status, 404);
    assert!(body.contains("Page not found"), "{body}");
    assert!(body.contains("href=\"/\""), "{body}");
}
