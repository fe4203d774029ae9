//! The least HTTP/1.1 client a download needs: one `GET`, optionally from a byte offset
//! (`Range: bytes=N-`), over plain TCP or TLS, then the connection is closed.
//!
//! TLS is rustls with the system's root certificates, the very stack the agent already
//! links for `amqps://`. Bodies framed by `Content-Length`, chunked, or the end of the
//! connection. No redirects (a 3xx is the caller's to report), no compression, no
//! keep-alive; every wait is bounded ([`CONNECT_TIMEOUT`], [`READ_TIMEOUT`]), and so is
//! what is read of the response's head.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::io::{
    AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader,
};
use rustls_connector::RustlsConnector;

/// The longest wait for a connection (TCP and TLS handshake).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// The longest wait for the next bytes of a response.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest line of a response's head, and the longest head.
const MAX_LINE: usize = 8 * 1024;
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;

/// Where to download from: an `http://` or `https://` URL, parsed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Url {
    tls: bool,
    host: url::Host<String>,
    port: u16,
    /// The path and query, as sent in the request line.
    target: String,
    /// Scheme, host, port and path, without the query (which may hold a token).
    shown: String,
}

impl Url {
    /// # Errors
    /// A sentence for people when the URL cannot be used.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let url =
            url::Url::parse(text).map_err(|error| format!("the url is not usable: {error}"))?;
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            other => {
                return Err(format!(
                    "the url's scheme is {other}: only http and https downloads are supported"
                ));
            }
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err("the url may not hold a user name or password".into());
        }
        let host = url.host().ok_or("the url has no host")?.to_owned();
        let default_port = if tls { 443 } else { 80 };
        let port = url.port().unwrap_or(default_port);
        let mut target = url.path().to_owned();
        if let Some(query) = url.query() {
            target.push('?');
            target.push_str(query);
        }
        let mut authority = host.to_string();
        if port != default_port {
            authority.push_str(&format!(":{port}"));
        }
        let shown = format!("{}://{authority}{}", url.scheme(), url.path());
        Ok(Self {
            tls,
            host,
            port,
            target,
            shown,
        })
    }

    pub(crate) fn is_tls(&self) -> bool {
        self.tls
    }

    /// The URL without its query, for logs and messages.
    pub(crate) fn shown(&self) -> &str {
        &self.shown
    }

    /// The `Host` header: the host, and the port when it is not the scheme's.
    fn authority(&self) -> String {
        let default_port = if self.tls { 443 } else { 80 };
        if self.port == default_port {
            self.host.to_string()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A byte stream in either direction.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A tokio TCP stream as the `futures` I/O traits that rustls-connector speaks.
struct Tcp(tokio::net::TcpStream);

impl AsyncRead for Tcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut read = tokio::io::ReadBuf::new(buf);
        match tokio::io::AsyncRead::poll_read(Pin::new(&mut self.0), cx, &mut read) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(read.filled().len())),
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Tcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        tokio::io::AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::io::AsyncWrite::poll_flush(Pin::new(&mut self.0), cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::io::AsyncWrite::poll_shutdown(Pin::new(&mut self.0), cx)
    }
}

/// The TLS client for `https://` downloads: rustls with the system's root certificates.
///
/// # Errors
/// When the system's certificates cannot be loaded.
pub(crate) fn tls_connector() -> io::Result<RustlsConnector> {
    RustlsConnector::new_with_native_certs()
}

async fn connect(url: &Url, tls: Option<&RustlsConnector>) -> io::Result<Box<dyn Io>> {
    let tcp = match &url.host {
        url::Host::Domain(name) => tokio::net::TcpStream::connect((name.as_str(), url.port)).await,
        url::Host::Ipv4(address) => tokio::net::TcpStream::connect((*address, url.port)).await,
        url::Host::Ipv6(address) => tokio::net::TcpStream::connect((*address, url.port)).await,
    }?;
    let _ = tcp.set_nodelay(true);
    let tcp = Tcp(tcp);
    if !url.tls {
        return Ok(Box::new(tcp));
    }
    let connector = tls.ok_or_else(|| io::Error::other("no TLS client for an https url"))?;
    let name = match &url.host {
        url::Host::Domain(name) => name.clone(),
        url::Host::Ipv4(address) => address.to_string(),
        url::Host::Ipv6(address) => address.to_string(),
    };
    Ok(Box::new(connector.connect_async(&name, tcp).await?))
}

/// A response whose head has been read; its body is read with [`Body::read`].
pub(crate) struct Response {
    pub status: u16,
    pub reason: String,
    /// Names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl Response {
    /// The first header called `name` (lower case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// How many bytes the body holds, when the server said.
    pub(crate) fn content_length(&self) -> Option<u64> {
        match self.body.framing {
            Framing::Length(length) => Some(length),
            _ => None,
        }
    }
}

/// `GET url`, from byte `from` on when it is not 0.
///
/// # Errors
/// When the server cannot be reached, the head does not come in time or is not HTTP.
pub(crate) async fn get(
    url: &Url,
    from: u64,
    tls: Option<&RustlsConnector>,
) -> io::Result<Response> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect(url, tls))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
            )
        })??;
    let mut request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: tether-agent/{}\r\nAccept: */*\r\n\
         Accept-Encoding: identity\r\nConnection: close\r\n",
        url.target,
        url.authority(),
        env!("CARGO_PKG_VERSION"),
    );
    if from > 0 {
        request.push_str(&format!("Range: bytes={from}-\r\n"));
    }
    request.push_str("\r\n");
    let mut reader = BufReader::new(stream);
    timed(async {
        reader.get_mut().write_all(request.as_bytes()).await?;
        reader.get_mut().flush().await
    })
    .await?;
    read_head(reader).await
}

/// Reads a response's head from `reader` (informational 1xx responses skipped).
async fn read_head(mut reader: BufReader<Box<dyn Io>>) -> io::Result<Response> {
    let mut budget = MAX_HEAD;
    loop {
        let status_line = read_line(&mut reader, &mut budget).await?;
        let mut words = status_line.splitn(3, ' ');
        let version = words.next().unwrap_or_default();
        let status = words.next().and_then(|code| code.parse::<u16>().ok());
        let (true, Some(status)) = (version.starts_with("HTTP/1."), status) else {
            return Err(invalid(format!(
                "not an HTTP response: {:?}",
                status_line.chars().take(80).collect::<String>()
            )));
        };
        let reason = words.next().unwrap_or_default().trim().to_owned();
        let mut headers = Vec::new();
        loop {
            let line = read_line(&mut reader, &mut budget).await?;
            if line.is_empty() {
                break;
            }
            if headers.len() >= MAX_HEADERS {
                return Err(invalid(format!("more than {MAX_HEADERS} headers")));
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(invalid(format!("a header without a colon: {line:?}")));
            };
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        if (100..200).contains(&status) {
            continue;
        }
        fn header<'a>(
            headers: &'a [(String, String)],
            name: &'a str,
        ) -> impl Iterator<Item = &'a str> {
            headers
                .iter()
                .filter(move |(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        }
        let chunked = header(&headers, "transfer-encoding").any(|value| {
            value
                .split(',')
                .any(|coding| coding.trim().eq_ignore_ascii_case("chunked"))
        });
        let framing = if chunked {
            Framing::Chunked {
                left: 0,
                started: false,
                done: false,
            }
        } else {
            let mut lengths = header(&headers, "content-length").map(|value| value.parse::<u64>());
            match (lengths.next(), lengths.next()) {
                (None, _) => Framing::Close { done: false },
                (Some(Ok(length)), None) => Framing::Length(length),
                _ => return Err(invalid("an unusable Content-Length".into())),
            }
        };
        return Ok(Response {
            status,
            reason,
            headers,
            body: Body {
                reader,
                framing,
                read: 0,
            },
        });
    }
}

/// A response's body.
pub(crate) struct Body {
    reader: BufReader<Box<dyn Io>>,
    framing: Framing,
    /// Bytes of content read so far.
    read: u64,
}

enum Framing {
    Length(u64),
    Chunked {
        /// What is left of the current chunk.
        left: u64,
        /// Whether a chunk has begun (whose data ends with a line break).
        started: bool,
        done: bool,
    },
    Close {
        done: bool,
    },
}

impl Body {
    /// Reads the next bytes of content into `buf`; 0 at the end of the body.
    ///
    /// # Errors
    /// When the connection breaks, closes before the announced end, falls silent for
    /// [`READ_TIMEOUT`], or the chunked framing is broken.
    pub(crate) async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match &mut self.framing {
                Framing::Length(length) => {
                    let left = *length - self.read;
                    if left == 0 || buf.is_empty() {
                        return Ok(0);
                    }
                    let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let n = timed(self.reader.read(&mut buf[..want])).await?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!(
                                "the connection closed after {} of {length} bytes",
                                self.read
                            ),
                        ));
                    }
                    self.read += n as u64;
                    return Ok(n);
                }
                Framing::Chunked {
                    left,
                    started,
                    done,
                } => {
                    if *done || buf.is_empty() {
                        return Ok(0);
                    }
                    if *left == 0 {
                        let mut budget = MAX_HEAD;
                        if *started {
                            let end = read_line(&mut self.reader, &mut budget).await?;
                            if !end.is_empty() {
                                return Err(invalid("a chunk longer than it said".into()));
                            }
                        }
                        let line = read_line(&mut self.reader, &mut budget).await?;
                        let size = line.split(';').next().unwrap_or_default().trim();
                        let size = u64::from_str_radix(size, 16)
                            .map_err(|_| invalid(format!("a bad chunk size: {line:?}")))?;
                        *started = true;
                        if size == 0 {
                            // Trailers, up to the empty line that ends the body.
                            while !read_line(&mut self.reader, &mut budget).await?.is_empty() {}
                            *done = true;
                            return Ok(0);
                        }
                        *left = size;
                        continue;
                    }
                    let want = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                    let n = timed(self.reader.read(&mut buf[..want])).await?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("the connection closed after {} bytes", self.read),
                        ));
                    }
                    *left -= n as u64;
                    self.read += n as u64;
                    return Ok(n);
                }
                Framing::Close { done } => {
                    if *done || buf.is_empty() {
                        return Ok(0);
                    }
                    let n = timed(self.reader.read(buf)).await?;
                    if n == 0 {
                        *done = true;
                    }
                    self.read += n as u64;
                    return Ok(n);
                }
            }
        }
    }

    /// Up to `limit` bytes of the body as text (an error page, say), best effort.
    pub(crate) async fn text(&mut self, limit: usize) -> String {
        let mut kept = Vec::new();
        let mut buf = [0; 1024];
        while kept.len() < limit {
            match self.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => kept.extend_from_slice(&buf[..n]),
            }
        }
        kept.truncate(limit);
        String::from_utf8_lossy(&kept)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect::<String>()
            .trim()
            .to_owned()
    }
}

/// One line of a head (without its line break), taken from `budget`.
async fn read_line<R: futures_util::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    budget: &mut usize,
) -> io::Result<String> {
    let mut line = Vec::new();
    let limit = MAX_LINE.min(*budget);
    let n = timed(
        (&mut *reader)
            .take(limit as u64)
            .read_until(b'\n', &mut line),
    )
    .await?;
    *budget -= n;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the connection closed in the response's head",
        ));
    }
    if line.last() != Some(&b'\n') {
        return Err(invalid(if n >= limit {
            "the response's head is too long".into()
        } else {
            "the connection closed in the response's head".into()
        }));
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

async fn timed<T>(work: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(READ_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the server sent nothing for {} s", READ_TIMEOUT.as_secs()),
            ))
        })
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// The first byte, last byte and total of a `Content-Range: bytes A-B/T` (total `None`
/// for `*`).
pub(crate) fn content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        total => Some(total.parse().ok()?),
    };
    Some((first.trim().parse().ok()?, last.trim().parse().ok()?, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A canned response as a stream.
    struct Canned(futures_util::io::Cursor<Vec<u8>>);

    impl AsyncRead for Canned {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            // Three bytes at a time, so that every boundary is crossed.
            let n = buf.len().min(3);
            Pin::new(&mut self.0).poll_read(cx, &mut buf[..n])
        }
    }

    impl AsyncWrite for Canned {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    async fn response(text: &[u8]) -> io::Result<(Response, Result<Vec<u8>, String>)> {
        let stream: Box<dyn Io> = Box::new(Canned(futures_util::io::Cursor::new(text.to_vec())));
        let mut response = read_head(BufReader::new(stream)).await?;
        let mut body = Vec::new();
        let mut buf = [0; 5];
        let body = loop {
            match response.body.read(&mut buf).await {
                Ok(0) => break Ok(body),
                Ok(n) => body.extend_from_slice(&buf[..n]),
                Err(error) => break Err(error.to_string()),
            }
        };
        Ok((response, body))
    }

    #[tokio::test]
    async fn bodies_by_length_chunks_or_close() {
        let (first, body) = response(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 206 Partial Content\r\nContent-Length: 11\r\nContent-Range: bytes 5-15/16\r\n\r\nhello worldIGNORED",
        )
        .await
        .unwrap();
        assert_eq!(first.status, 206);
        assert_eq!(first.reason, "Partial Content");
        assert_eq!(first.content_length(), Some(11));
        assert_eq!(first.header("content-range"), Some("bytes 5-15/16"));
        assert_eq!(body.unwrap(), b"hello world");

        let (_, body) = response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(body.unwrap(), b"hello world");

        let (old, body) = response(b"HTTP/1.0 200 OK\nServer: old\n\nuntil the end")
            .await
            .unwrap();
        assert_eq!(old.content_length(), None);
        assert_eq!(body.unwrap(), b"until the end");
    }

    #[tokio::test]
    async fn a_short_or_broken_body_is_an_error() {
        let (_, body) = response(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nonly ten b")
            .await
            .unwrap();
        assert_eq!(
            body.unwrap_err(),
            "the connection closed after 10 of 20 bytes"
        );
        let (_, body) = response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello!!\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
        assert!(body.unwrap_err().contains("longer than it said"));
        let (_, body) = response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
            .await
            .unwrap();
        assert!(body.unwrap_err().contains("bad chunk size"));
        assert!(response(b"SSH-2.0-OpenSSH\r\n\r\n").await.is_err());
        assert!(
            response(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
                .await
                .is_err()
        );
        let long = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(MAX_LINE));
        assert!(response(long.as_bytes()).await.is_err());
    }

    #[test]
    fn urls_keep_their_query_to_themselves() {
        let url =
            Url::parse("http://10.0.0.1:8080/api/v1/artifacts/a1/download?token=s3cret").unwrap();
        assert!(!url.is_tls());
        assert_eq!(url.target, "/api/v1/artifacts/a1/download?token=s3cret");
        assert_eq!(url.authority(), "10.0.0.1:8080");
        assert_eq!(
            url.shown(),
            "http://10.0.0.1:8080/api/v1/artifacts/a1/download"
        );
        let url = Url::parse("https://[::1]/f").unwrap();
        assert!(url.is_tls());
        assert_eq!(url.authority(), "[::1]");
        assert_eq!(url.port, 443);
        assert!(
            Url::parse("ftp://host/f")
                .unwrap_err()
                .contains("only http and https")
        );
        assert!(Url::parse("http://user:pw@host/f").is_err());
        assert!(Url::parse("not a url").is_err());
    }

    #[test]
    fn content_ranges_parse() {
        assert_eq!(
            content_range("bytes 100-199/200"),
            Some((100, 199, Some(200)))
        );
        assert_eq!(content_range("bytes 0-9/*"), Some((0, 9, None)));
        assert_eq!(content_range("items 0-9/10"), None);
        assert_eq!(content_range("bytes */200"), None);
    }
}
