//! A TCP proxy that can fail on command, for fault tests and the fault suite: in front
//! of an upstream address (a broker), on `127.0.0.1:0`, it passes bytes through until
//! told to [`blackhole`](FaultLink::blackhole), to [`delay`](FaultLink::delay) every
//! chunk, or to [`throttle`](FaultLink::throttle) each direction to a rate;
//! [`heal`](FaultLink::heal) passes bytes again. [`sever`](FaultLink::sever) ends every
//! connection through it now.
//!
//! A blackhole is what a dead link is to TCP: nothing passes either way and nothing is
//! closed, so neither side learns that the link is gone but by its own timeouts. Bytes
//! are held, not dropped: TCP resends what a dead link lost until its peer acknowledges
//! it, so once the link heals, what was sent during the outage arrives, late and in
//! order (a peer that gave up meanwhile has closed its side, which then reaches the
//! other once healed). Connections made while blackholed hang until healed, as a SYN
//! into a dead link is resent.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::watch,
    task::JoinSet,
};

/// How the link behaves now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Pass,
    Blackhole,
    /// Every chunk waits this long before it is passed on.
    Delay(Duration),
    /// Each direction passes at most this many bytes a second.
    Throttle(u64),
}

/// The proxy; it stops (dropping every connection) when dropped.
#[derive(Debug)]
pub struct FaultLink {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Bumped by [`FaultLink::sever`]: every connection older than it is ended.
    generation: Arc<AtomicU64>,
    tasks: Arc<Mutex<JoinSet<()>>>,
    _accept: tokio::task::JoinHandle<()>,
}

impl FaultLink {
    /// A link to `upstream`, passing bytes.
    pub async fn to(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, watching) = watch::channel(Mode::Pass);
        let generation = Arc::new(AtomicU64::new(0));
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let accept = tokio::spawn({
            let (generation, tasks) = (generation.clone(), tasks.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let (watching, generation, tasks) =
                        (watching.clone(), generation.clone(), tasks.clone());
                    let born = generation.load(Ordering::SeqCst);
                    tokio::spawn(async move {
                        // A connection made while blackholed hangs until healed.
                        let mut waiting = watching.clone();
                        if waiting
                            .wait_for(|mode| *mode != Mode::Blackhole)
                            .await
                            .is_err()
                        {
                            return;
                        }
                        let Ok(server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        let (client_read, client_write) = client.into_split();
                        let (server_read, server_write) = server.into_split();
                        let mut set = tasks.lock().expect("the link's task set");
                        // Connections that ended are forgotten, so the set stays small.
                        while set.try_join_next().is_some() {}
                        for (from, to) in [(client_read, server_write), (server_read, client_write)]
                        {
                            set.spawn(pump(from, to, watching.clone(), generation.clone(), born));
                        }
                    });
                }
            }
        });
        Ok(Self {
            addr,
            mode,
            generation,
            tasks,
            _accept: accept,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    pub fn blackhole(&self) {
        self.set(Mode::Blackhole);
    }

    pub fn delay(&self, by: Duration) {
        self.set(Mode::Delay(by));
    }

    pub fn throttle(&self, bytes_per_sec: u64) {
        self.set(Mode::Throttle(bytes_per_sec));
    }

    pub fn heal(&self) {
        self.set(Mode::Pass);
    }

    /// Ends every connection through the link now (both sides see the stream end);
    /// new ones are made as the mode allows.
    pub fn sever(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.tasks.lock().expect("the link's task set").abort_all();
    }
}

impl Drop for FaultLink {
    fn drop(&mut self) {
        self._accept.abort();
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.abort_all();
        }
    }
}

/// Carries one direction as the mode says.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    generation: Arc<AtomicU64>,
    born: u64,
) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let read = from.read(&mut buffer).await;
        if generation.load(Ordering::SeqCst) != born {
            return;
        }
        // Held while blackholed: what was read, and the news that the far side closed,
        // pass once healed.
        let now = match mode.wait_for(|mode| *mode != Mode::Blackhole).await {
            Ok(now) => *now,
            Err(_) => return,
        };
        if generation.load(Ordering::SeqCst) != born {
            return;
        }
        match (read, now) {
            (Ok(0) | Err(_), _) => return,
            (Ok(_), Mode::Blackhole) => unreachable!("waited until it was not"),
            (Ok(n), Mode::Pass) => {
                if to.write_all(&buffer[..n]).await.is_err() {
                    return;
                }
            }
            (Ok(n), Mode::Delay(by)) => {
                tokio::time::sleep(by).await;
                if to.write_all(&buffer[..n]).await.is_err() {
                    return;
                }
            }
            (Ok(n), Mode::Throttle(rate)) => {
                let rate = rate.max(1);
                for chunk in buffer[..n].chunks(1024) {
                    let pause = Duration::from_secs_f64(chunk.len() as f64 / rate as f64);
                    tokio::time::sleep(pause).await;
                    if to.write_all(chunk).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
