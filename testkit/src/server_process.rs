//! A `tether-server` process of a test's or benchmark's own, for what must run the real
//! binary (a SIGKILL and a restart, a node of a cluster, a disk that fills): started with
//! exactly the settings given, read until it says where it listens, killed on drop.

use std::{
    ffi::OsStr,
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

/// How long a server may take to say where it listens.
const START_LIMIT: Duration = Duration::from_secs(60);

/// A running `tether-server`. Its output is kept ([`ServerProcess::logged`]); lines at
/// WARN or ERROR are also printed with its name (every line with
/// `TETHER_TEST_SERVER_LOG` set). Dropping it kills it with SIGKILL and reaps it.
#[derive(Debug)]
pub struct ServerProcess {
    pub child: Child,
    /// `http://127.0.0.1:<port>`, where it said it listens.
    pub base: String,
    /// Its embedded broker's address, when it runs one and said so.
    pub broker: Option<String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    /// Starts `binary` as `name` with `settings` and none of the caller's other `TETHER_*`
    /// variables (a `TETHER_AMQP_URL` in the environment would change what it connects
    /// to); `RUST_LOG` is `info` unless given. Waits until it says where it listens and,
    /// when it runs an embedded broker (no `TETHER_AMQP_URL` given), where that listens.
    ///
    /// # Panics
    /// If it cannot be started or does not say where it listens within a minute.
    pub fn start(binary: impl AsRef<OsStr>, name: &str, settings: &[(&str, String)]) -> Self {
        let mut command = Command::new(binary);
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("TETHER_") {
                command.env_remove(var);
            }
        }
        command
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(settings.iter().map(|(var, value)| (var, value)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: tether-server does not start: {e}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (found, said) = mpsc::channel();
        for output in [
            Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("piped")),
        ] {
            let (found, log, name) = (found.clone(), log.clone(), name.to_owned());
            std::thread::spawn(move || {
                let everything = std::env::var_os("TETHER_TEST_SERVER_LOG").is_some();
                for line in BufReader::new(output).lines().map_while(Result::ok) {
                    if everything || line.contains("WARN") || line.contains("ERROR") {
                        eprintln!("{name}: {line}");
                    }
                    if let Some(at) = line.find("listening on http://") {
                        let _ = found.send(Said::Http(
                            line[at + "listening on ".len()..].trim().to_owned(),
                        ));
                    } else if let Some(at) = line.find("embedded AMQP broker on ") {
                        let addr = line[at + "embedded AMQP broker on ".len()..]
                            .split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned();
                        let _ = found.send(Said::Broker(addr));
                    }
                    log.lock().expect("no reader panics").push(line);
                }
            });
        }
        let embedded = !settings.iter().any(|(var, _)| *var == "TETHER_AMQP_URL");
        let (mut base, mut broker) = (None, None);
        let deadline = std::time::Instant::now() + START_LIMIT;
        while base.is_none() || (embedded && broker.is_none()) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match said.recv_timeout(left) {
                Ok(Said::Http(at)) => base = Some(at),
                Ok(Said::Broker(at)) => broker = Some(at),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let lines = log.lock().expect("no reader panics").join("\n  ");
                    panic!(
                        "{name}: tether-server did not say where it listens within {START_LIMIT:?}; its output:\n  {lines}"
                    );
                }
            }
        }
        Self {
            child,
            base: base.expect("waited for"),
            broker,
            log,
        }
    }

    /// `base` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// How many lines it has written so far.
    pub fn lines(&self) -> usize {
        self.log.lock().expect("no reader panics").len()
    }

    /// The first line it wrote since line `from` that holds every one of `words`.
    pub fn logged(&self, from: usize, words: &[&str]) -> Option<String> {
        self.log
            .lock()
            .expect("no reader panics")
            .iter()
            .skip(from)
            .find(|line| words.iter().all(|word| line.contains(word)))
            .cloned()
    }

    /// Panics, with its last 30 lines, if it has exited.
    pub fn still_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("a child can be waited for") {
            let log = self.log.lock().expect("no reader panics");
            let tail = &log[log.len().saturating_sub(30)..];
            panic!(
                "the server exited ({status}); its last lines:\n{}",
                tail.join("\n")
            );
        }
    }
}

enum Said {
    Http(String),
    Broker(String),
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
