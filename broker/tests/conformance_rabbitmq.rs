//! The broker conformance cases against RabbitMQ (`TETHER_TEST_AMQP_URL`, default
//! 127.0.0.1:5672): the embedded broker must behave the same. Fails if RabbitMQ is not
//! running (scripts/test.sh starts it). The permission cases make their device users
//! with `rabbitmqctl` (`TETHER_RABBITMQCTL`, default `rabbitmqctl`), so they need the
//! right to run it (root, or the rabbitmq user) on the broker's machine.

use std::{net::SocketAddr, process::Command, time::Duration};

#[path = "support/conformance.rs"]
mod cases;
#[path = "support/doors.rs"]
mod doors;
#[path = "support/limits.rs"]
mod limits;
#[path = "support/permissions.rs"]
mod permissions;
#[path = "support/topics.rs"]
mod topics;

async fn broker_url() -> String {
    std::env::var("TETHER_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// RabbitMQ with its defaults, which the shared broker cannot change: a handshake must
/// be over within 10 s (`handshake_timeout`), and a message may be 128 MiB
/// (`max_message_size`). The handshake case therefore takes 10 s here, while the rest
/// of the suite runs beside it.
async fn door() -> doors::Door {
    doors::Door {
        addr: addr_of(&broker_url().await).await,
        handshake_timeout: Duration::from_secs(10),
        max_message_size: 128 * 1024 * 1024,
    }
}

/// The address in an `amqp://user:password@host:port/vhost` URL.
async fn addr_of(url: &str) -> SocketAddr {
    let host_port = url
        .rsplit('@')
        .next()
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no host:port in {url}"));
    tokio::net::lookup_host(host_port)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("cannot resolve {host_port}"))
}

/// A device user of its own, made with `rabbitmqctl` and deleted after the case, with
/// the permissions `protocol::policy` gives a device, as RabbitMQ regexes: configure its
/// server-named inbox; write its replies, presence and readings; read its inbox and the
/// announce requests; and on the topic exchanges, write only its own routing keys.
async fn device() -> permissions::Device {
    let user = format!("tether-test-dev-{:08x}", fastrand::u32(..));
    let password = format!("secret-{:08x}", fastrand::u32(..));
    let account = RabbitUser(user.clone());
    let commands = [
        vec!["add_user", &user, &password],
        vec![
            "set_permissions",
            "-p",
            "/",
            &user,
            r"^amq\.gen-.*",
            r"^(amq\.default|amq\.gen-.*|tether\.presence|tether\.telemetry)$",
            r"^(amq\.gen-.*|tether\.discover)$",
        ],
        vec![
            "set_topic_permissions",
            "-p",
            "/",
            &user,
            "tether.presence",
            &format!(r"^presence\.{user}\.[^.]+$"),
            "^$",
        ],
        vec![
            "set_topic_permissions",
            "-p",
            "/",
            &user,
            "tether.telemetry",
            &format!(r"^telemetry\.{user}\.[^.]+$"),
            "^$",
        ],
    ]
    .map(|args| args.into_iter().map(str::to_owned).collect::<Vec<_>>());
    tokio::task::spawn_blocking(move || {
        for args in commands {
            rabbitmqctl(&args).unwrap_or_else(|why| panic!("rabbitmqctl {args:?}: {why}"));
        }
    })
    .await
    .expect("rabbitmqctl ran");
    permissions::Device {
        addr: addr_of(&broker_url().await).await,
        user,
        password,
        account: Box::new(account),
    }
}

/// A device user as [`device`] makes one, that may hold `connections` connections
/// (`rabbitmqctl set_user_limits`).
async fn limited_device(connections: usize) -> permissions::Device {
    let device = device().await;
    let args = [
        "set_user_limits".to_owned(),
        device.user.clone(),
        format!(r#"{{"max-connections": {connections}}}"#),
    ];
    tokio::task::spawn_blocking(move || {
        rabbitmqctl(&args).unwrap_or_else(|why| panic!("rabbitmqctl {args:?}: {why}"));
    })
    .await
    .expect("rabbitmqctl ran");
    device
}

/// A RabbitMQ user made for one case, deleted when dropped (if it still is there).
struct RabbitUser(String);

impl permissions::Revoke for RabbitUser {
    fn revoke(&self) {
        rabbitmqctl(&["delete_user", &self.0]).expect("rabbitmqctl delete_user");
    }
}

impl Drop for RabbitUser {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["delete_user", &self.0]);
    }
}

/// Runs `rabbitmqctl -q` with `args`; why it failed, if it did.
fn rabbitmqctl<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Result<(), String> {
    let program = std::env::var("TETHER_RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".into());
    let output = Command::new(&program)
        .arg("-q")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}
