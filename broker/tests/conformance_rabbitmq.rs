//! The broker conformance cases against RabbitMQ (`TETHER_TEST_AMQP_URL`, default
//! 127.0.0.1:5672): the embedded broker must behave the same. Fails if RabbitMQ is not
//! running (scripts/test.sh starts it).

use std::{net::SocketAddr, time::Duration};

#[path = "support/conformance.rs"]
mod cases;
#[path = "support/doors.rs"]
mod doors;
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
