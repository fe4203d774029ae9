//! A bound on every write to an HTTP connection: a peer that stops reading (a tab on a
//! laptop gone to sleep, a stalled proxy, someone holding sockets open on purpose)
//! pushes back through TCP, and a write to it waits. Without a bound it waits for good,
//! and whatever is behind it (a live session, its task, its socket buffers, the watches
//! it holds) is held for good too.
//!
//! [`Bounded`] is the server's listener: each connection it accepts is a [`WriteBound`],
//! whose writes fail with `TimedOut` once one has made no progress for the bound
//! (`TETHER_WRITE_TIMEOUT_MS`). hyper then drops the connection, and with it what it
//! carried: an event stream's session, a poll's answer, a page; an upgraded WebSocket
//! writes through it too, and its session ends (it also bounds each of its sends as a
//! whole, `live.rs`). Each connection so closed is counted (`/metrics`,
//! `tether_http_write_timeouts_total`).

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    time::Sleep,
};

/// Connections closed because a write to them made no progress within the bound (shared
/// with the live sessions, which count theirs there too).
pub type Timeouts = Arc<AtomicU64>;

/// The server's listener: every connection's writes are bounded.
#[derive(Debug)]
pub struct Bounded {
    listener: TcpListener,
    bound: Duration,
    timeouts: Timeouts,
}

impl Bounded {
    pub fn new(listener: TcpListener, bound: Duration, timeouts: Timeouts) -> Self {
        Self {
            listener,
            bound,
            timeouts,
        }
    }
}

impl axum::serve::Listener for Bounded {
    type Io = WriteBound<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.listener).await;
        (
            WriteBound::new(stream, self.bound, self.timeouts.clone()),
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// A connection whose writes fail once one has made no progress for `bound`.
#[derive(Debug)]
pub struct WriteBound<S> {
    inner: S,
    bound: Duration,
    /// Running while a write waits on the peer; reset by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
    timeouts: Timeouts,
    /// Counted already (the caller may try again after the first error).
    counted: bool,
}

impl<S> WriteBound<S> {
    pub fn new(inner: S, bound: Duration, timeouts: Timeouts) -> Self {
        Self {
            inner,
            bound,
            stalled: None,
            timeouts,
            counted: false,
        }
    }

    /// What a write that waits on the peer comes to: still waiting, or the error that
    /// ends the connection once it waited for the bound.
    fn waiting<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let bound = self.bound;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(bound)));
        ready!(stalled.as_mut().poll(cx));
        if !std::mem::replace(&mut self.counted, true) {
            self.timeouts.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                "closing a connection whose peer took nothing for {bound:?} (it stopped reading)"
            );
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the peer took nothing for {bound:?}"),
        )))
    }

    /// `result` of a write: progress resets the bound.
    fn progress<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match result {
            Poll::Pending => self.waiting(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteBound<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteBound<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.progress(cx, result)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn a_write_the_peer_never_takes_fails_after_the_bound_and_is_counted_once() {
        let (near, mut far) = tokio::io::duplex(64);
        let timeouts = Timeouts::default();
        let mut bounded = WriteBound::new(near, Duration::from_millis(200), timeouts.clone());
        // Within its room, writes go through.
        bounded.write_all(&[1; 64]).await.unwrap();
        let started = tokio::time::Instant::now();
        let error = bounded.write_all(&[2; 64]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(bounded.write_all(&[3; 1]).await.is_err());
        assert_eq!(
            timeouts.load(Ordering::Relaxed),
            1,
            "one connection, counted once"
        );
        // What it took is there for the peer.
        let mut got = [0; 64];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [1; 64]);
    }

    #[tokio::test]
    async fn a_slow_peer_that_keeps_taking_is_not_cut_off() {
        let (near, mut far) = tokio::io::duplex(16);
        let timeouts = Timeouts::default();
        let mut bounded = WriteBound::new(near, Duration::from_millis(500), timeouts.clone());
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut chunk = [0; 16];
            while got.len() < 160 {
                // Slower than the whole write, faster than the bound each time.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let n = far.read(&mut chunk).await.unwrap();
                got.extend_from_slice(&chunk[..n]);
            }
            got
        });
        bounded.write_all(&[7; 160]).await.unwrap();
        assert_eq!(reader.await.unwrap(), vec![7; 160]);
        assert_eq!(timeouts.load(Ordering::Relaxed), 0);
    }
}
