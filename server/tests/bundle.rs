//! How the bundle and every other answer travel: the site's files precompressed at
//! start (brotli, gzip) and chosen by `Accept-Encoding`; hashed names cached for a
//! year, everything else revalidated; pages compressed on the fly; the live WebSocket
//! and artifact downloads (ranges) left alone. Against a site root of the test's own,
//! shaped like cargo-leptos's with `hash-files = true`.

mod support;

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use protocol::{DeviceId, artifact::ArtifactView, auth::Role};
use reqwest::{StatusCode, header::HeaderMap};

const WASM: &str = "tether.Ab3dEfGh1jKlMnOpQr5t_w.wasm";
const JS: &str = "tether.Zy9xWvUtSrQpOnMlKj-hgf.js";
const CSS: &str = "tether.Cc4ssCc4ssCc4ssCc4ssCc.css";

/// A site root like cargo-leptos's: hashed bundle files under `pkg/`, and a
/// `favicon.svg` (not hashed) at the top.
struct Site {
    root: PathBuf,
    wasm: Vec<u8>,
    svg: Vec<u8>,
}

impl Site {
    fn new() -> Self {
        let root = std::env::temp_dir().join(format!("tether-bundle-{:016x}", fastrand::u64(..)));
        std::fs::create_dir_all(root.join("pkg")).unwrap();
        // Compressible but not trivially: a WASM header, then text-like sections.
        let mut wasm = b"\0asm\x01\0\0\0".to_vec();
        let mut rng = fastrand::Rng::with_seed(7);
        while wasm.len() < 300_000 {
            let word = ["leptos", "tether", "device", "signal", "effect", "render"][rng.usize(..6)];
            wasm.extend_from_slice(word.as_bytes());
            wasm.push(rng.u8(..));
        }
        let js = "export function init() { return fetch('/pkg/x'); }\n".repeat(200);
        let css = ".topbar { display: flex; gap: 1rem; }\n".repeat(200);
        let svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\">{}</svg>",
            "<circle cx=\"8\" cy=\"8\" r=\"7\"/>".repeat(40)
        )
        .into_bytes();
        std::fs::write(root.join("pkg").join(WASM), &wasm).unwrap();
        std::fs::write(root.join("pkg").join(JS), js).unwrap();
        std::fs::write(root.join("pkg").join(CSS), css).unwrap();
        std::fs::write(root.join("favicon.svg"), &svg).unwrap();
        Self { root, wasm, svg }
    }

    /// Waits until the server has written every precompressed neighbour (it does so
    /// in the background at start); fails after 60 s.
    async fn wait_for_neighbours(&self) {
        let wanted: Vec<PathBuf> = [WASM, JS, CSS]
            .iter()
            .flat_map(|name| {
                ["br", "gz"].map(|ext| self.root.join("pkg").join(format!("{name}.{ext}")))
            })
            .chain(["br", "gz"].map(|ext| self.root.join(format!("favicon.svg.{ext}"))))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let missing: Vec<&Path> = wanted
                .iter()
                .filter(|path| !path.exists())
                .map(PathBuf::as_path)
                .collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not precompress the site within 60 s: missing {missing:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

async fn start(site: &Site) -> support::Running {
    let root = site.root.clone();
    support::start_with(move |config| config.site_root = Some(root)).await
}

async fn get(url: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut request = reqwest::Client::new().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("HTTP request");
    let (status, headers) = (response.status(), response.headers().clone());
    (status, headers, response.bytes().await.unwrap().to_vec())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .map_or("", |value| value.to_str().expect("header text"))
}

fn unbrotli(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::Decompressor::new(bytes, 4096)
        .read_to_end(&mut out)
        .expect("a brotli stream");
    out
}

fn ungzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("a gzip stream");
    out
}

#[tokio::test]
async fn the_wasm_is_served_precompressed_by_accept_encoding_and_cached_for_a_year() {
    let site = Site::new();
    let server = start(&site).await;
    site.wait_for_neighbours().await;
    let url = server.url(&format!("/pkg/{WASM}"));

    let (status, headers, body) = get(&url, &[("accept-encoding", "gzip, deflate, br")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "content-encoding"), "br");
    assert_eq!(header(&headers, "content-type"), "application/wasm");
    assert_eq!(header(&headers, "vary"), "accept-encoding");
    assert_eq!(
        header(&headers, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert_eq!(header(&headers, "content-length"), body.len().to_string());
    assert!(
        body.len() < site.wasm.len() / 2,
        "brotli made {} bytes of {}",
        body.len(),
        site.wasm.len()
    );
    assert_eq!(unbrotli(&body), site.wasm);

    let (status, headers, body) = get(&url, &[("accept-encoding", "gzip")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "content-encoding"), "gzip");
    assert_eq!(header(&headers, "content-type"), "application/wasm");
    assert_eq!(header(&headers, "vary"), "accept-encoding");
    assert_eq!(
        header(&headers, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert_eq!(ungzip(&body), site.wasm);

    // No Accept-Encoding: the file itself, whole, which can be fetched by ranges.
    let (status, headers, body) = get(&url, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "content-encoding"), "");
    assert_eq!(header(&headers, "content-type"), "application/wasm");
    assert_eq!(header(&headers, "accept-ranges"), "bytes");
    assert_eq!(
        header(&headers, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert_eq!(body, site.wasm);
    // Nor is anything compressed for a client that refuses every encoding.
    let (_, headers, body) = get(&url, &[("accept-encoding", "identity")]).await;
    assert_eq!(header(&headers, "content-encoding"), "");
    assert_eq!(body, site.wasm);

    // The JS and the CSS likewise.
    for (name, kind) in [(JS, "text/javascript"), (CSS, "text/css")] {
        let (status, headers, body) = get(
            &server.url(&format!("/pkg/{name}")),
            &[("accept-encoding", "br")],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{name}");
        assert_eq!(header(&headers, "content-encoding"), "br", "{name}");
        assert!(
            header(&headers, "content-type").starts_with(kind),
            "{name}: {headers:?}"
        );
        assert_eq!(
            header(&headers, "cache-control"),
            "public, max-age=31536000, immutable",
            "{name}"
        );
        assert_eq!(
            unbrotli(&body),
            std::fs::read(site.root.join("pkg").join(name)).unwrap()
        );
    }

    // A browser revalidating (it should not need to: immutable) gets 304.
    let (_, headers, _) = get(&url, &[("accept-encoding", "br")]).await;
    let modified = header(&headers, "last-modified").to_owned();
    let (status, headers, body) = get(
        &url,
        &[("accept-encoding", "br"), ("if-modified-since", &modified)],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    assert_eq!(
        header(&headers, "cache-control"),
        "public, max-age=31536000, immutable"
    );
}

#[tokio::test]
async fn files_without_a_hash_are_revalidated_and_answer_304_when_unchanged() {
    let site = Site::new();
    let server = start(&site).await;
    site.wait_for_neighbours().await;
    let url = server.url("/favicon.svg");

    let (status, headers, body) = get(&url, &[("accept-encoding", "gzip")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "content-encoding"), "gzip");
    assert_eq!(header(&headers, "content-type"), "image/svg+xml");
    assert_eq!(header(&headers, "cache-control"), "no-cache");
    assert_eq!(header(&headers, "vary"), "accept-encoding");
    assert_eq!(ungzip(&body), site.svg);
    let modified = header(&headers, "last-modified").to_owned();
    assert!(!modified.is_empty(), "no Last-Modified: {headers:?}");

    let (status, headers, body) = get(
        &url,
        &[
            ("accept-encoding", "gzip"),
            ("if-modified-since", &modified),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    assert_eq!(header(&headers, "cache-control"), "no-cache");

    // A file the site does not have is the app's not-found page, as before.
    let (status, headers, body) = get(&server.url("/pkg/nothing.wasm"), &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(header(&headers, "content-type").starts_with("text/html"));
    assert!(String::from_utf8_lossy(&body).contains("<html"));
}

#[tokio::test]
async fn the_server_writes_the_compressed_neighbours_once() {
    let site = Site::new();
    let server = start(&site).await;
    site.wait_for_neighbours().await;
    let wasm_br = site.root.join("pkg").join(format!("{WASM}.br"));
    assert_eq!(unbrotli(&std::fs::read(&wasm_br).unwrap()), site.wasm);
    let written = std::fs::metadata(&wasm_br).unwrap().modified().unwrap();
    drop(server);

    // A second start finds them up to date and leaves them.
    let _again = start(&site).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        std::fs::metadata(&wasm_br).unwrap().modified().unwrap(),
        written,
        "the up-to-date .br was written again"
    );
    let leftovers: Vec<_> = std::fs::read_dir(site.root.join("pkg"))
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[tokio::test]
async fn pages_are_compressed_on_the_fly_and_never_cached_stale() {
    let site = Site::new();
    let server = start(&site).await;

    for (encoding, decode) in [("br", unbrotli as fn(&[u8]) -> Vec<u8>), ("gzip", ungzip)] {
        let (status, headers, body) =
            get(&server.url("/login"), &[("accept-encoding", encoding)]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header(&headers, "content-encoding"), encoding);
        assert!(header(&headers, "content-type").starts_with("text/html"));
        assert!(
            header(&headers, "cache-control").contains("no-cache"),
            "{headers:?}"
        );
        assert!(
            header(&headers, "vary").contains("accept-encoding"),
            "{headers:?}"
        );
        let html = String::from_utf8(decode(&body)).expect("UTF-8 HTML");
        assert!(html.contains("<html"), "{html}");
        // The page links to the hashed-name-less bundle: this test binary has no hash
        // file beside it.
        assert!(html.contains("/pkg/tether"), "{html}");
    }

    // Without Accept-Encoding, the page as it is.
    let (status, headers, body) = get(&server.url("/login"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "content-encoding"), "");
    assert!(String::from_utf8(body).unwrap().contains("<html"));

    // A logged-in page, and a JSON answer, too.
    let (admin, _, _) = server.user(Role::Admin, &[]).await;
    let page = admin
        .get(server.url("/"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(header(page.headers(), "content-encoding"), "gzip");
    assert!(header(page.headers(), "cache-control").contains("no-cache"));
    let html = String::from_utf8(ungzip(&page.bytes().await.unwrap())).unwrap();
    assert!(html.contains("<h1>Fleet</h1>"), "{html}");
    let metrics = admin
        .get(server.url("/metrics"))
        .header("accept-encoding", "br")
        .send()
        .await
        .unwrap();
    assert_eq!(header(metrics.headers(), "content-encoding"), "br");
    let text = String::from_utf8(unbrotli(&metrics.bytes().await.unwrap())).unwrap();
    assert!(text.contains("tether_broker_connected"), "{text}");
}

#[tokio::test]
async fn the_live_websocket_still_upgrades_for_a_browser_accepting_compression() {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

    let site = Site::new();
    let server = start(&site).await;
    let (_, token, _) = server.user(Role::Viewer, &[]).await;
    let mut request = server
        .url("/api/v1/live")
        .replace("http", "ws")
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    // What browsers send with every WebSocket handshake.
    headers.insert("accept-encoding", "gzip, deflate, br".parse().unwrap());
    let (mut socket, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the live channel upgrades");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(response.headers().get("content-encoding").is_none());
    // And it speaks: its first message is the snapshot.
    let first = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .expect("a first message within 10 s")
        .expect("the socket stays open")
        .expect("a message");
    assert!(first.is_text(), "{first:?}");
}

#[tokio::test]
async fn artifact_downloads_are_never_compressed_so_ranges_keep_working() {
    let site = Site::new();
    let server = start(&site).await;
    let (admin, _, _) = server.user(Role::Admin, &[]).await;
    // Very compressible: compression would have every reason to kick in.
    let bytes = vec![b'a'; 200_000];
    let uploaded: ArtifactView = admin
        .post(server.url("/api/v1/artifacts?name=fw&version=3&arch=any"))
        .header("content-type", "application/octet-stream")
        .body(bytes.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let device = DeviceId::new("gw-1").unwrap();
    let link = server.url(&server.artifacts.download_path(
        &uploaded.id,
        &device,
        common::now_ms() + 60_000,
    ));

    let (status, headers, body) = get(&link, &[("accept-encoding", "gzip, br")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "content-encoding"), "");
    assert_eq!(header(&headers, "accept-ranges"), "bytes");
    assert_eq!(header(&headers, "content-length"), "200000");
    assert_eq!(body, bytes);

    let (status, headers, body) = get(
        &link,
        &[("accept-encoding", "gzip, br"), ("range", "bytes=150000-")],
    )
    .await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&headers, "content-encoding"), "");
    assert_eq!(
        header(&headers, "content-range"),
        "bytes 150000-199999/200000"
    );
    assert_eq!(body, &bytes[150_000..]);
}
