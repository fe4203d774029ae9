//! The live channel's WebSocket, on tokio-tungstenite directly rather than through
//! axum's `WebSocketUpgrade`, for one reason: memory. A server holds thousands of these
//! sockets, and tungstenite writes each frame whole into a buffer of the socket's own
//! that keeps its largest size for good, so a socket once sent a 60 KB snapshot would
//! keep 60 KB. Here a long text goes out as a fragmented message (frames of at most
//! [`FRAGMENT`] bytes, which every client reassembles into one message), so no socket's
//! buffer grows past a few KiB. axum's socket cannot send frames.
//!
//! [`Upgrade`] checks the request as axum did (HTTP/1.1 `GET`, `Connection: upgrade`,
//! `Upgrade: websocket`, `Sec-WebSocket-Version: 13`, a `Sec-WebSocket-Key`) and answers
//! 101; [`Upgrade::socket`] then waits for the connection and wraps it.

use axum::{
    extract::FromRequestParts,
    http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header, request::Parts},
    response::{IntoResponse as _, Response},
};
use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use futures_util::SinkExt as _;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Bytes, Message,
        handshake::derive_accept_key,
        protocol::{
            CloseFrame, Role, WebSocketConfig,
            frame::{
                Frame,
                coding::{CloseCode, Data, OpCode},
            },
        },
    },
};

use protocol::api::ErrorCode;

use crate::error::Failure;

/// An upgraded live socket.
pub type Socket = WebSocketStream<Held<TokioIo<hyper::upgrade::Upgraded>>>;

/// A connection whose writes can be held back and sent together: while
/// [`Held::hold`] is on, what is written collects in a buffer and flushing does
/// nothing; once it is off, the next flush writes it all at once and gives the buffer
/// back. A socket sent several events at a time so makes one `send` call for them
/// instead of one each (a profile of 10,000 sockets found 69 % of the server's time in
/// those calls), and an idle socket holds no buffer.
#[derive(Debug)]
pub struct Held<S> {
    inner: S,
    held: Vec<u8>,
    holding: bool,
}

impl<S> Held<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            held: Vec::new(),
            holding: false,
        }
    }

    /// Starts or stops holding writes back (a flush after stopping sends them).
    pub fn hold(&mut self, holding: bool) {
        self.holding = holding;
    }

    /// How many bytes are held back.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> Held<S> {
    /// Writes what is held back; `Ready(Ok)` once all of it is out.
    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.held.is_empty() {
            let written = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held))?;
            if written == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.held.drain(..written);
        }
        // Given back: an idle socket keeps no buffer.
        self.held = Vec::new();
        Poll::Ready(Ok(()))
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Held<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Held<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.holding {
            self.held.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        // What was held goes first, in order.
        ready!(self.poll_release(cx))?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.holding {
            return Poll::Ready(Ok(()));
        }
        ready!(self.poll_release(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.holding = false;
        ready!(self.poll_release(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The largest frame sent: a longer text goes out in pieces of this size.
pub const FRAGMENT: usize = 4 * 1024;

/// A request to upgrade to a WebSocket, checked.
#[derive(Debug)]
pub struct Upgrade {
    accept: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let bad =
            |message: &str| Failure::new(StatusCode::BAD_REQUEST, ErrorCode::BadUpgrade, message);
        if parts.version != Version::HTTP_11 {
            return Err(bad("a WebSocket upgrade needs HTTP/1.1"));
        }
        if parts.method != Method::GET {
            return Err(Failure::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::BadUpgrade,
                "a WebSocket upgrade is a GET request",
            ));
        }
        let headers = &parts.headers;
        if !has_token(headers, header::CONNECTION, "upgrade") {
            return Err(bad("`Connection` header did not include `upgrade`"));
        }
        if !has_token(headers, header::UPGRADE, "websocket") {
            return Err(bad("`Upgrade` header did not include `websocket`"));
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|version| version.as_bytes() != b"13")
        {
            return Err(bad("`Sec-WebSocket-Version` header did not include `13`"));
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or_else(|| bad("`Sec-WebSocket-Key` header missing"))?;
        let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .expect("base64 is a valid header value");
        let on_upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or_else(|| {
                Failure::new(
                    StatusCode::UPGRADE_REQUIRED,
                    ErrorCode::BadUpgrade,
                    "this connection cannot be upgraded",
                )
            })?;
        Ok(Self { accept, on_upgrade })
    }
}

impl Upgrade {
    /// The 101 response to send back, and the socket once it was sent (`None` if the
    /// connection went away first).
    pub fn accept(self) -> (Response, Pending) {
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, self.accept);
        (response, Pending(self.on_upgrade))
    }
}

/// A socket whose 101 is on its way.
#[derive(Debug)]
pub struct Pending(hyper::upgrade::OnUpgrade);

impl Pending {
    /// The socket, once the connection was handed over; `None` if it went away first.
    pub async fn socket(self, max_incoming: usize) -> Option<Socket> {
        let upgraded = match self.0.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!("a WebSocket upgrade failed: {error}");
                return None;
            }
        };
        // Small buffers: a server holds thousands of these sockets, a tab's requests are
        // a few hundred bytes (a longer one is read in more turns), and each frame is
        // written as it comes anyway.
        let config = WebSocketConfig::default()
            .read_buffer_size(1024)
            .write_buffer_size(0)
            .max_message_size(Some(max_incoming))
            .max_frame_size(Some(max_incoming));
        Some(
            WebSocketStream::from_raw_socket(
                Held::new(TokioIo::new(upgraded)),
                Role::Server,
                Some(config),
            )
            .await,
        )
    }
}

/// Whether the comma-separated header `name` holds `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|value| {
            value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    })
}

/// Sends `text` as one text message: in frames of at most [`FRAGMENT`] bytes when it
/// is longer (split anywhere: a message's UTF-8 is checked whole, once reassembled).
pub async fn send_text(socket: &mut Socket, text: String) -> Result<(), tungstenite::Error> {
    if text.len() <= FRAGMENT {
        return socket.send(Message::text(text)).await;
    }
    let text = Bytes::from(text);
    let mut start = 0;
    while start < text.len() {
        let end = (start + FRAGMENT).min(text.len());
        let opcode = if start == 0 {
            Data::Text
        } else {
            Data::Continue
        };
        let last = end == text.len();
        let frame = Frame::message(text.slice(start..end), OpCode::Data(opcode), last);
        // Each frame is written as it is given (the write buffer's size is 0): a
        // blocked write waits in `feed` until the previous frame is out.
        socket.feed(Message::Frame(frame)).await?;
        start = end;
    }
    socket.flush().await
}

/// Closes the socket with `code` and `reason`.
pub async fn close(socket: &mut Socket, code: CloseCode, reason: &'static str) {
    let close = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = socket.send(Message::Close(Some(close))).await;
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::Held;

    #[tokio::test]
    async fn held_writes_go_out_together_in_order_and_leave_no_buffer() {
        let (near, mut far) = tokio::io::duplex(1024);
        let mut held = Held::new(near);
        held.write_all(b"one ").await.unwrap();
        held.flush().await.unwrap();
        let mut got = vec![0; 4];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"one ");

        held.hold(true);
        held.write_all(b"two ").await.unwrap();
        held.write_all(b"three ").await.unwrap();
        // Flushing while holding sends nothing.
        held.flush().await.unwrap();
        assert_eq!(held.held(), 10);
        let mut nothing = [0; 1];
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), far.read(&mut nothing))
                .await
                .is_err(),
            "nothing may reach the peer while writes are held"
        );

        held.hold(false);
        // A write after holding stops goes out after what was held.
        held.write_all(b"four").await.unwrap();
        held.flush().await.unwrap();
        assert_eq!(held.held(), 0);
        assert_eq!(held.held.capacity(), 0, "the buffer is given back");
        let mut got = vec![0; 14];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"two three four");
    }
}
