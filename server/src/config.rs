//! Every setting of `tether-server`, each a flag and a `TETHER_*` environment variable
//! of the same name, with defaults that run on a laptop.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// Server settings. Each one is a flag and an environment variable of the same name.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tether-server", version, about = "Tether's web server")]
pub struct Config {
    /// Address to serve HTTP on. Port 0 picks a free port.
    /// Unset: `LEPTOS_SITE_ADDR` (set by cargo-leptos), else 127.0.0.1:3000.
    #[arg(long = "addr", env = "TETHER_ADDR")]
    pub addr: Option<SocketAddr>,

    /// Folder holding the built site (`pkg/` with the WASM, JS and CSS, and the
    /// public assets). Unset: `LEPTOS_SITE_ROOT`, else `target/site`.
    #[arg(long = "site-root", env = "TETHER_SITE_ROOT")]
    pub site_root: Option<PathBuf>,

    /// The AMQP 0-9-1 broker devices connect to (RabbitMQ, say), or the nodes of a
    /// RabbitMQ cluster, comma-separated: the hub and each recorder start with a random
    /// one and move on to the next when it does not answer or its connection is lost.
    /// Unset: start the embedded broker and use it.
    #[arg(long = "amqp-url", env = "TETHER_AMQP_URL")]
    pub amqp_url: Option<String>,

    /// The type of the queues that must outlive a broker node: the storage queue and
    /// each replica's durable reply queue. `quorum` (RabbitMQ only) replicates them
    /// over a cluster's nodes; a queue's type cannot change once it is declared.
    #[arg(
        long = "queue-type",
        env = "TETHER_QUEUE_TYPE",
        default_value = "classic"
    )]
    pub queue_type: hub::QueueType,

    /// Where the embedded broker listens when TETHER_AMQP_URL is unset. Not 5672, so it
    /// never collides with a RabbitMQ on the same machine.
    #[arg(
        long = "broker-addr",
        env = "TETHER_BROKER_ADDR",
        default_value = "127.0.0.1:5673"
    )]
    pub broker_addr: SocketAddr,

    /// The embedded broker's server account, which this server (and any other replica
    /// using this broker) logs in with; devices log in as their id with their secret.
    /// Agents obey commands from this account only (their `TETHER_SERVER_ACCOUNTS`).
    #[arg(
        long = "broker-user",
        env = "TETHER_BROKER_USER",
        default_value = "tether-server"
    )]
    pub broker_user: String,
    /// The server account's password. Unset: made up on first start and kept in
    /// `TETHER_DATA_DIR/broker-password`.
    #[arg(
        long = "broker-password",
        env = "TETHER_BROKER_PASSWORD",
        hide_env_values = true
    )]
    pub broker_password: Option<String>,

    /// Connections the embedded broker keeps open at once (devices, and each replica's
    /// own); more are turned away. Each is a file descriptor: the server raises its soft
    /// open files limit to the hard one, and warns if that is still short.
    #[arg(
        long = "broker-max-connections",
        env = "TETHER_BROKER_MAX_CONNECTIONS",
        default_value_t = 16_384,
        value_parser = clap::value_parser!(u64).range(1..=1_000_000)
    )]
    pub broker_max_connections: u64,

    /// A command's deadline when the caller gives none, in milliseconds.
    #[arg(long = "command-timeout-ms", env = "TETHER_COMMAND_TIMEOUT_MS", default_value_t = protocol::api::timeouts::DEFAULT_MS,
          value_parser = clap::value_parser!(u64).range(protocol::api::timeouts::MIN_MS..=protocol::api::timeouts::MAX_MS))]
    pub command_timeout_ms: u64,

    /// Where readings are stored: `postgres://user@host/db` for PostgreSQL,
    /// `sqlite://<path>` (or a bare path) for SQLite, `none` to keep only the live view.
    #[arg(
        long = "database-url",
        env = "TETHER_DATABASE_URL",
        default_value = "sqlite://tether-data/telemetry.db",
        hide_env_values = true
    )]
    pub database_url: String,

    /// This server's own folder: it keeps its replica id there (`replica-id`), which
    /// names its durable reply queue, so that a restarted server gets the replies that
    /// arrived while it was down. Every replica needs its own.
    #[arg(
        long = "data-dir",
        env = "TETHER_DATA_DIR",
        default_value = "tether-data"
    )]
    pub data_dir: PathBuf,

    /// How long readings and ended commands are kept, e.g. `30d`, `12h`; older ones are pruned.
    #[arg(long = "retention", env = "TETHER_RETENTION", default_value = "30d",
          value_parser = store::parse_duration)]
    pub retention: Duration,

    /// Recorders this replica runs on the shared storage queue (each is one
    /// competing consumer writing batches).
    #[arg(long = "recorders", env = "TETHER_RECORDERS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub recorders: u16,

    /// The durable queue readings wait in to be stored. Every replica of one Tether
    /// shares it; only a test or staging server should name its own.
    #[arg(long = "store-queue", env = "TETHER_STORE_QUEUE", default_value = protocol::names::STORE_QUEUE)]
    pub store_queue: String,

    /// Delete the storage queue after it has had no consumer for this many ms. For a
    /// queue of a test server's own, so it cannot pile up readings once that is gone.
    #[arg(long = "store-queue-expires-ms", env = "TETHER_STORE_QUEUE_EXPIRES_MS")]
    pub store_queue_expires_ms: Option<u64>,

    /// How often a device someone watches is asked to report, in ms (each device keeps
    /// to the fastest pace it announced).
    #[arg(long = "watch-interval-ms", env = "TETHER_WATCH_INTERVAL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub watch_interval_ms: u64,

    /// How long a watch lease lasts, in ms: a device slows down this long after a server
    /// that watched it vanished. Renewed every third of it while someone watches.
    #[arg(long = "watch-lease-ms", env = "TETHER_WATCH_LEASE_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1_000..=600_000))]
    pub watch_lease_ms: u64,

    /// How long a live session over plain HTTP (long polls, for browsers whose network
    /// lets no WebSocket through) lasts with no poll waiting on it, in ms.
    #[arg(long = "live-session-idle-ms", env = "TETHER_LIVE_SESSION_IDLE_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub live_session_idle_ms: u64,

    /// How long a write to an HTTP connection may wait on a peer that takes nothing, in
    /// ms: past it the connection is closed. A tab whose live socket or event stream
    /// stopped reading (a laptop gone to sleep) so ends its session and frees what it
    /// held; a WebSocket's every send must also complete within it.
    #[arg(long = "write-timeout-ms", env = "TETHER_WRITE_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub write_timeout_ms: u64,

    /// Origins besides this server's own address whose pages may change things, e.g.
    /// `https://tether.example.com` when a proxy serves Tether there; comma-separated.
    /// Every other site's request to change anything, or to open the live channel, is
    /// refused.
    #[arg(
        long = "allowed-origins",
        env = "TETHER_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// Addresses that may ask `/auth/rabbitmq/*` (RabbitMQ's HTTP auth backend), e.g.
    /// the RabbitMQ host's, comma-separated. Unset: this machine only.
    #[arg(
        long = "broker-auth-from",
        env = "TETHER_BROKER_AUTH_FROM",
        value_delimiter = ','
    )]
    pub broker_auth_from: Vec<std::net::IpAddr>,

    /// How long a login lasts before the user must log in again, e.g. `12h`, `7d`.
    #[arg(long = "session-ttl", env = "TETHER_SESSION_TTL", default_value = "12h",
          value_parser = store::parse_duration)]
    pub session_ttl: Duration,

    /// Mark the session cookie `Secure`: set it when users reach Tether over HTTPS.
    /// (Behind a proxy that sends `X-Forwarded-Proto: https` it is set anyway.)
    #[arg(long = "secure-cookies", env = "TETHER_SECURE_COOKIES")]
    pub secure_cookies: bool,

    /// The largest artifact (a software update's file) an admin may upload, in MiB.
    /// Artifacts are kept in the data folder (`artifacts/`).
    #[arg(long = "max-artifact-mb", env = "TETHER_MAX_ARTIFACT_MB", default_value_t = 512,
          value_parser = clap::value_parser!(u64).range(1..=16_384))]
    pub max_artifact_mb: u64,

    /// Where devices reach this server over HTTP, e.g. `https://tether.example.com`: the
    /// links of software updates point there. Unset: `http://` and the address served on
    /// (an unspecified address, `0.0.0.0`, becomes this machine's name).
    #[arg(long = "public-url", env = "TETHER_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// A task instead of serving: manage users and device credentials, check the audit
    /// trail.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What `tether-server` can do besides serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Users: `tether-server user add NAME --role admin`.
    #[command(subcommand)]
    User(UserCommand),
    /// Device credentials: `tether-server device add boiler-1`.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// The audit trail: `tether-server audit verify`.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum UserCommand {
    /// Creates a user. The password is read from standard input with
    /// `--password-stdin`; otherwise one is made up and printed.
    Add {
        name: String,
        /// viewer, operator or admin.
        #[arg(long, default_value = "viewer")]
        role: protocol::auth::Role,
        /// Device groups the user may see, comma-separated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Lists the users.
    List,
}

/// A device must be provisioned before it may connect to the broker; its secret is
/// printed once, with the line that starts `tether-agent` with it.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DeviceCommand {
    /// Provisions a device and prints its secret, which is not kept and cannot be shown
    /// again.
    Add {
        id: String,
        /// Append `<id> <secret>` to this file (created readable by its owner only)
        /// instead of printing the secret: for scripts, and `tether-agent --secrets-file`.
        #[arg(long)]
        secrets_file: Option<PathBuf>,
    },
    /// Lists the provisioned devices (never their secrets).
    List,
    /// Gives a device a new secret (printed once); the old one stops working.
    Rotate {
        id: String,
        /// Append `<id> <secret>` to this file instead of printing the secret.
        #[arg(long)]
        secrets_file: Option<PathBuf>,
    },
    /// Takes a device's credential away: it can no longer connect.
    Remove { id: String },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum AuditCommand {
    /// Checks that no entry of the audit trail was deleted or altered; exits 1 if one was.
    Verify,
}

impl Config {
    /// Defaults for everything, serving on `addr`, using the broker at `amqp_url`.
    pub fn new(addr: SocketAddr, amqp_url: impl Into<String>) -> Self {
        Self {
            addr: Some(addr),
            site_root: None,
            amqp_url: Some(amqp_url.into()),
            queue_type: hub::QueueType::Classic,
            broker_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            broker_user: "tether-server".into(),
            broker_password: None,
            broker_max_connections: 16_384,
            command_timeout_ms: protocol::api::timeouts::DEFAULT_MS,
            database_url: "none".into(),
            data_dir: std::env::temp_dir()
                .join(format!("tether-server-{:016x}", fastrand::u64(..))),
            retention: Duration::from_secs(30 * 86_400),
            recorders: 1,
            store_queue: protocol::names::STORE_QUEUE.into(),
            store_queue_expires_ms: None,
            watch_interval_ms: 1_000,
            watch_lease_ms: 30_000,
            live_session_idle_ms: 60_000,
            write_timeout_ms: 30_000,
            allowed_origins: Vec::new(),
            broker_auth_from: Vec::new(),
            session_ttl: Duration::from_secs(12 * 3_600),
            secure_cookies: false,
            max_artifact_mb: 512,
            public_url: None,
            command: None,
        }
    }
}

impl Config {
    /// Whether the broker settings can work: every URL of `TETHER_AMQP_URL` parses (all
    /// logging in as one account), and quorum queues are asked for only of RabbitMQ.
    ///
    /// # Errors
    /// Saying which setting is wrong and what to do, passwords hidden.
    pub fn check_broker(&self) -> anyhow::Result<()> {
        match &self.amqp_url {
            Some(urls) => {
                common::Brokers::parse(urls)
                    .map_err(|error| anyhow::anyhow!("TETHER_AMQP_URL: {error}"))?;
            }
            None => anyhow::ensure!(
                self.queue_type == hub::QueueType::Classic,
                "TETHER_QUEUE_TYPE={}: the embedded broker (TETHER_AMQP_URL unset) has classic queues only; \
                 quorum queues need a RabbitMQ cluster: set TETHER_AMQP_URL to its nodes, or TETHER_QUEUE_TYPE=classic",
                self.queue_type
            ),
        }
        Ok(())
    }

    /// The storage queue as configured.
    pub fn store_queue(&self) -> hub::StoreQueue {
        hub::StoreQueue {
            queue_type: self.queue_type,
            expires: self.store_queue_expires_ms.map(Duration::from_millis),
            ..hub::StoreQueue::named(self.store_queue.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_settings_are_checked_before_anything_starts() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut config = Config::new(addr, "amqp://s:pw@n1:5681/%2f,amqp://s:pw@n2:5682/%2f");
        config.queue_type = hub::QueueType::Quorum;
        config.check_broker().unwrap();
        config.amqp_url = Some("amqp://s:pw@n1:5681/%2f,n2:5682".into());
        let error = config.check_broker().unwrap_err().to_string();
        assert!(
            error.starts_with("TETHER_AMQP_URL: broker URL 2 of 2"),
            "{error}"
        );
        assert!(!error.contains("pw"), "{error}");
        // The embedded broker has no quorum queues: refused at start, saying so.
        config.amqp_url = None;
        let error = config.check_broker().unwrap_err().to_string();
        assert!(error.contains("classic queues only"), "{error}");
        config.queue_type = hub::QueueType::Classic;
        config.check_broker().unwrap();
    }

    #[test]
    fn the_queue_type_is_a_flag_and_a_setting() {
        use clap::Parser as _;
        let config = Config::try_parse_from(["tether-server", "--queue-type", "quorum"]).unwrap();
        assert_eq!(config.queue_type, hub::QueueType::Quorum);
        let error =
            Config::try_parse_from(["tether-server", "--queue-type", "stream"]).unwrap_err();
        assert!(error.to_string().contains("classic or quorum"), "{error}");
    }
}
