//! The built site's files (the WASM bundle, its JS glue, the stylesheet, `public/`)
//! and how every answer travels: compressed, with caching headers.
//!
//! - Site files are served from the site root by [`ServeDir`], which picks a file's
//!   precompressed `.br` or `.gz` neighbour by `Accept-Encoding`. [`precompress`]
//!   writes those neighbours once, at start, in a thread of its own (brotli at quality
//!   11 takes seconds for the WASM: never on a request's path); until they exist, the
//!   file is compressed on the fly like any other answer.
//! - A file whose name carries cargo-leptos's content hash (`tether.<hash>.wasm`,
//!   [`is_hashed`]) never changes: `Cache-Control: public, max-age=31536000,
//!   immutable`. Other files are revalidated (`no-cache`, with `Last-Modified`).
//!   Both say `Vary: Accept-Encoding`.
//! - Everything else (pages, API answers) is compressed on the fly by [`compression`]
//!   and revalidated on every use ([`cache_control`]: `private, no-cache` unless the
//!   handler said otherwise). Not compressed: what is already (a `Content-Encoding`),
//!   ranges and files (artifact downloads are `application/octet-stream`: the agent
//!   resumes them with `Range`, and compressing would drop `Accept-Ranges`), and the
//!   live WebSocket's upgrade.
//! - [`detect_hashes`]: whether this server's site has hashed names, so that the
//!   shell links to them (leptos reads the names from the hash file cargo-leptos
//!   writes next to the server's executable).

use std::{
    ffi::OsStr,
    fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use axum::{
    body::Body,
    extract::Request,
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    middleware::Next,
    response::{IntoResponse as _, Response},
};
use leptos::config::LeptosOptions;
use tower::ServiceExt as _;
use tower_http::{
    compression::{
        CompressionLayer, DefaultPredicate, Predicate,
        predicate::{NotForContentType, SizeAbove},
    },
    services::ServeDir,
};

/// For a file whose name carries its content's hash.
pub const IMMUTABLE: HeaderValue = HeaderValue::from_static("public, max-age=31536000, immutable");
/// For the site's other files: keep them, but ask before each use (`Last-Modified`).
pub const REVALIDATE: HeaderValue = HeaderValue::from_static("no-cache");
/// For pages and API answers: per user and per moment.
pub const DYNAMIC: HeaderValue = HeaderValue::from_static("private, no-cache");

/// Brotli's best quality, for files compressed once.
const BROTLI_QUALITY: u32 = 11;
/// Brotli's window (log2): 4 MiB, more than the WASM bundle.
const BROTLI_WINDOW: u32 = 22;
/// Smaller files are not worth a compressed neighbour.
const MIN_SIZE: u64 = 256;
/// What is worth compressing among the site's files.
const COMPRESSIBLE: &[&str] = &[
    "wasm", "js", "mjs", "css", "svg", "html", "json", "txt", "map", "xml", "ico",
];

/// The built site's files, served with their precompressed neighbours and caching
/// headers.
#[derive(Debug, Clone)]
pub struct SiteFiles {
    files: ServeDir,
    pkg_prefix: Arc<str>,
}

impl SiteFiles {
    pub fn new(options: &LeptosOptions) -> Self {
        let files = ServeDir::new(&*options.site_root)
            .precompressed_br()
            .precompressed_gzip()
            .append_index_html_on_directories(false);
        let pkg = options.site_pkg_dir.trim_matches('/');
        Self {
            files,
            pkg_prefix: format!("/{pkg}/").into(),
        }
    }

    /// The file at the request's path, or `None` when there is none (the caller then
    /// renders its not-found page).
    pub async fn serve(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<Response> {
        if !matches!(*method, Method::GET | Method::HEAD) {
            return None;
        }
        let mut file_request = Request::builder()
            .method(method.clone())
            .uri(uri.clone())
            .body(Body::empty())
            .ok()?;
        *file_request.headers_mut() = file_headers(headers);
        let response = match self.files.clone().oneshot(file_request).await {
            Ok(response) => response,
            Err(error) => match error {},
        };
        if matches!(
            response.status(),
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
        ) {
            return None;
        }
        let mut response = response.into_response();
        let path = uri.path();
        let hashed = path.starts_with(&*self.pkg_prefix) && is_hashed(path);
        let headers = response.headers_mut();
        headers.insert(
            header::CACHE_CONTROL,
            if hashed { IMMUTABLE } else { REVALIDATE },
        );
        headers.insert(
            header::VARY,
            HeaderValue::from_static(header::ACCEPT_ENCODING.as_str()),
        );
        Some(response)
    }
}

/// The request headers that matter to a file: encodings, ranges, validators.
fn file_headers(headers: &HeaderMap) -> HeaderMap {
    let mut kept = HeaderMap::new();
    for name in [
        header::ACCEPT_ENCODING,
        header::RANGE,
        header::IF_RANGE,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
    ] {
        for value in headers.get_all(&name) {
            kept.append(name.clone(), value.clone());
        }
    }
    kept
}

/// Whether a file name carries cargo-leptos's content hash: `<stem>.<hash>.<ext>`, the
/// hash 22 characters of unpadded URL-safe base64 (an MD5), e.g.
/// `tether.hJ3k…Q.wasm`.
pub fn is_hashed(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    let mut parts = name.rsplit('.');
    let (Some(_ext), Some(hash), Some(stem)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    !stem.is_empty()
        && hash.len() == 22
        && hash
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// On-the-fly compression (brotli, gzip) of the answers worth it: not images, event
/// streams, already encoded answers or ranges (tower-http's defaults), nor files
/// (`application/octet-stream`: artifact downloads), nor a protocol switch.
pub fn compression() -> CompressionLayer<impl Predicate> {
    let predicate = DefaultPredicate::new()
        .and(SizeAbove::new(256))
        .and(NotForContentType::const_new("application/octet-stream"))
        .and(
            |status: StatusCode,
             _: axum::http::Version,
             _: &HeaderMap,
             _: &axum::http::Extensions| { status != StatusCode::SWITCHING_PROTOCOLS },
        );
    CompressionLayer::new()
        .br(true)
        .gzip(true)
        .compress_when(predicate)
}

/// Answers the handler gave no `Cache-Control` are revalidated on every use.
pub async fn cache_control(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    if !response.headers().contains_key(header::CACHE_CONTROL) {
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, DYNAMIC);
    }
    response
}

/// Whether the site's files have hashed names: sets `options.hash_files` when the
/// hash file cargo-leptos wrote next to this executable names files that exist under
/// the site root (leptos then links to them), and says what is wrong otherwise.
pub fn detect_hashes(options: &mut LeptosOptions) {
    let Some(hash_file) = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(&*options.hash_file)))
    else {
        return;
    };
    let pkg = Path::new(&*options.site_root).join(&*options.site_pkg_dir);
    match fs::read_to_string(&hash_file) {
        Ok(hashes) => {
            let names = hashed_names(&options.output_name, &hashes);
            let present = !names.is_empty() && names.iter().all(|name| pkg.join(name).is_file());
            if present {
                options.hash_files = true;
                tracing::info!(
                    "the site's files have hashed names ({}): cached for a year",
                    names.join(", ")
                );
            } else if options.hash_files {
                tracing::error!(
                    "{} names {} but {} does not hold them: rebuild the site (scripts/run.sh, or cargo leptos build --release --split and scripts/rehash-split.mjs) or set TETHER_SITE_ROOT",
                    hash_file.display(),
                    names.join(", "),
                    pkg.display()
                );
            } else {
                tracing::warn!(
                    "ignoring {}: {} does not hold the files it names ({}); the site's own names are used",
                    hash_file.display(),
                    pkg.display(),
                    names.join(", ")
                );
            }
        }
        Err(_) if options.hash_files => tracing::error!(
            "LEPTOS_HASH_FILES is set but {} cannot be read: the pages will link to files that do not exist",
            hash_file.display()
        ),
        Err(_) => {}
    }
}

/// The file names a cargo-leptos hash file (`js: <hash>` lines) stands for.
fn hashed_names(output_name: &str, hashes: &str) -> Vec<String> {
    hashes
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(kind, _)| matches!(kind.trim(), "js" | "wasm" | "css"))
        .map(|(kind, hash)| format!("{output_name}.{}.{}", hash.trim(), kind.trim()))
        .collect()
}

/// What [`precompress`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Precompressed {
    /// Neighbours written.
    pub written: usize,
    /// Neighbours already up to date.
    pub fresh: usize,
}

/// Writes a `.gz` and a `.br` neighbour for each compressible file under `root`
/// (recursively) that lacks one or has an older one: all the gzip ones first (fast),
/// then brotli at its best quality. Each is written to a temporary name and renamed,
/// so that a request never reads half a file. Returns at once; the work runs on a
/// thread of its own (a server stopped meanwhile exits without waiting for it, and
/// `stop` ends it between two files). A site root that cannot be written to is left
/// as it is (its files are then compressed on the fly).
pub fn precompress(root: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Precompressed> {
    std::thread::Builder::new()
        .name("precompress".into())
        .spawn(move || {
            let started = Instant::now();
            let files = compressible_files(&root);
            let mut done = Precompressed::default();
            for encoding in [Encoding::Gzip, Encoding::Brotli] {
                for file in &files {
                    if stop.load(Ordering::Relaxed) {
                        return done;
                    }
                    match compress_file(file, encoding) {
                        Ok(true) => done.written += 1,
                        Ok(false) => done.fresh += 1,
                        Err(error) => {
                            tracing::warn!(
                                "cannot write the {} neighbour of {} (served compressed on the fly instead): {error}",
                                encoding.extension(),
                                file.display()
                            );
                        }
                    }
                }
            }
            if done.written > 0 {
                tracing::info!(
                    "precompressed the site's files in {} ms: {} written, {} up to date",
                    started.elapsed().as_millis(),
                    done.written,
                    done.fresh
                );
            }
            done
        })
        .expect("spawn the precompress thread")
}

#[derive(Debug, Clone, Copy)]
enum Encoding {
    Gzip,
    Brotli,
}

impl Encoding {
    fn extension(self) -> &'static str {
        match self {
            Encoding::Gzip => "gz",
            Encoding::Brotli => "br",
        }
    }

    fn compress(self, input: &[u8]) -> io::Result<Vec<u8>> {
        match self {
            Encoding::Gzip => {
                let mut encoder = flate2::write::GzEncoder::new(
                    Vec::with_capacity(input.len() / 2),
                    flate2::Compression::best(),
                );
                encoder.write_all(input)?;
                encoder.finish()
            }
            Encoding::Brotli => {
                let mut output = Vec::with_capacity(input.len() / 2);
                {
                    let mut encoder = brotli::CompressorWriter::new(
                        &mut output,
                        64 * 1024,
                        BROTLI_QUALITY,
                        BROTLI_WINDOW,
                    );
                    encoder.write_all(input)?;
                    encoder.flush()?;
                }
                Ok(output)
            }
        }
    }
}

/// The files under `root` worth a compressed neighbour.
fn compressible_files(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                folders.push(path);
            } else if kind.is_file()
                && path
                    .extension()
                    .and_then(OsStr::to_str)
                    .is_some_and(|ext| COMPRESSIBLE.contains(&ext))
                && entry.metadata().is_ok_and(|meta| meta.len() >= MIN_SIZE)
            {
                found.push(path);
            }
        }
    }
    // The biggest first: the WASM bundle is what matters.
    found.sort_by_key(|path| std::cmp::Reverse(fs::metadata(path).map_or(0, |m| m.len())));
    found
}

/// Writes `file`'s neighbour in `encoding` unless an up-to-date one exists; `true`
/// when it wrote one. A neighbour no smaller than the file is not kept.
fn compress_file(file: &Path, encoding: Encoding) -> io::Result<bool> {
    let mut name = file.as_os_str().to_owned();
    name.push(".");
    name.push(encoding.extension());
    let neighbour = PathBuf::from(name);
    let modified = fs::metadata(file)?.modified()?;
    if fs::metadata(&neighbour)
        .and_then(|meta| meta.modified())
        .is_ok_and(|written| written >= modified)
    {
        return Ok(false);
    }
    let input = fs::read(file)?;
    let output = encoding.compress(&input)?;
    if output.len() >= input.len() {
        let _ = fs::remove_file(&neighbour);
        return Ok(false);
    }
    let mut temporary = neighbour.clone().into_os_string();
    temporary.push(format!(".tmp{}", std::process::id()));
    let temporary = PathBuf::from(temporary);
    let written = fs::write(&temporary, &output).and_then(|()| fs::rename(&temporary, &neighbour));
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written.map(|()| true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_names_are_recognised() {
        assert!(is_hashed("/pkg/tether.hJ3k9XyZ_abcdefghij-kl.wasm"));
        assert!(is_hashed("/pkg/tether.hJ3k9XyZ_abcdefghij-kl.js"));
        assert!(!is_hashed("/pkg/tether.wasm"));
        assert!(!is_hashed("/pkg/tether_bg.wasm"));
        assert!(!is_hashed("/pkg/.hJ3k9XyZ_abcdefghij-kl.js"));
        assert!(!is_hashed("/pkg/tether.hJ3k9XyZ_abcdefghij-k.js"));
        assert!(!is_hashed("/pkg/tether.hJ3k9XyZ_abcdefghij+kl.js"));
    }

    #[test]
    fn a_hash_file_names_the_three_files() {
        let names = hashed_names(
            "tether",
            "js: AAAAAAAAAAAAAAAAAAAAAA\nwasm: BBBBBBBBBBBBBBBBBBBBBB\ncss: CCCCCCCCCCCCCCCCCCCCCC\n",
        );
        assert_eq!(
            names,
            [
                "tether.AAAAAAAAAAAAAAAAAAAAAA.js",
                "tether.BBBBBBBBBBBBBBBBBBBBBB.wasm",
                "tether.CCCCCCCCCCCCCCCCCCCCCC.css"
            ]
        );
    }
}
