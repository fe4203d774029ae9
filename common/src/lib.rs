//! What Tether's server side (hub, store, web server) and its agent both need at run
//! time, in one place:
//!
//! - [`Retry`]: reconnect backoff with jitter (the pacing itself is
//!   [`protocol::backoff`], which the browser shares).
//! - [`now_ms`] and [`duration_ms`]: the wall clock in the milliseconds the protocol
//!   speaks.
//! - [`redact`]: a URL (or a list of them) without its password, for logs and errors.
//! - [`Brokers`]: several broker addresses (`amqp://a,amqp://b`), tried in turn.
//! - `amqp` (feature `amqp`): Tether's exchanges declared on a lapin channel, for
//!   the hub and the agent; the store leaves it out and so has no AMQP in it.
//! - [`Shutdown`]: one cancellation token and task tracker for a whole process.
//! - [`init_logging`]: `tracing` output filtered by `RUST_LOG` (default `info`).

#[cfg(feature = "amqp")]
pub mod amqp;
mod brokers;
mod shutdown;

pub use brokers::{Brokers, split_urls};
pub use shutdown::Shutdown;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use protocol::backoff::Backoff;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, duration_ms)
}

/// A duration in whole milliseconds, saturating.
pub fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A URL without its password, for logs and errors; in a comma-separated list of URLs
/// (several broker addresses, or PostgreSQL's `host1,host2`), every one's. Text that is
/// not a URL with a password (a bare file path, say) is returned as it is.
pub fn redact(text: &str) -> String {
    // Piece by piece: parsed whole, a list is one URL whose path holds the others'
    // passwords in clear.
    text.split(',')
        .map(redact_one)
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_one(text: &str) -> String {
    match url::Url::parse(text.trim()) {
        Ok(mut url) if url.password().is_some() => {
            // Only fails for URLs that cannot have a password, which this one has.
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        _ => text.to_owned(),
    }
}

/// The user an AMQP URL logs in as: its user name, percent-decoded, or `guest` when it
/// names none (what lapin and RabbitMQ's clients then send). The broker refuses a
/// message whose `user_id` property is not this, so a publisher stamps it with it. Of a
/// list of URLs, the first's ([`Brokers::parse`] checks they all agree).
pub fn amqp_user(amqp_url: &str) -> String {
    let first = split_urls(amqp_url).next().unwrap_or_default();
    let Ok(url) = url::Url::parse(first) else {
        return "guest".to_owned();
    };
    match url.username() {
        "" => "guest".to_owned(),
        user => percent_encoding::percent_decode_str(user)
            .decode_utf8_lossy()
            .into_owned(),
    }
}

/// `broker_url` with `user` and `password` as its credential (percent-encoded as a URL
/// needs); of a comma-separated list, every URL. `None` if one does not parse or cannot
/// carry one (no host).
pub fn with_credential(broker_url: &str, user: &str, password: &str) -> Option<String> {
    let urls = split_urls(broker_url)
        .map(|one| {
            let mut url = url::Url::parse(one).ok()?;
            // Encoded here, all but the unreserved characters: the URL standard leaves
            // `,` (which separates a list's URLs) and `%` as they are.
            url.set_username(&userinfo(user)).ok()?;
            url.set_password(Some(&userinfo(password))).ok()?;
            Some(url.to_string())
        })
        .collect::<Option<Vec<_>>>()?;
    (!urls.is_empty()).then(|| urls.join(","))
}

/// A user name or password percent-encoded for a URL's userinfo.
fn userinfo(text: &str) -> String {
    const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(text, RESERVED).to_string()
}

#[cfg(test)]
mod amqp_user_tests {
    use super::amqp_user;

    #[test]
    fn the_user_is_the_urls_decoded_or_guest() {
        assert_eq!(
            amqp_user("amqp://tether-server:pw@host:5672/%2f"),
            "tether-server"
        );
        assert_eq!(amqp_user("amqp://a%40b:pw@host/%2f"), "a@b");
        assert_eq!(amqp_user("amqp://host:5672/%2f"), "guest");
        assert_eq!(amqp_user("not a url"), "guest");
        assert_eq!(amqp_user("amqp://a:x@h1/%2f, amqp://a:x@h2/%2f"), "a");
    }

    #[test]
    fn credentials_go_into_every_url_of_a_list() {
        assert_eq!(
            super::with_credential("amqp://h1:5681/%2f,amqp://h2:5682/%2f", "d-1", "s,1")
                .as_deref(),
            Some("amqp://d-1:s%2C1@h1:5681/%2f,amqp://d-1:s%2C1@h2:5682/%2f")
        );
        assert_eq!(super::with_credential("amqp://h1/%2f,nope", "d", "s"), None);
    }
}

/// Failures in a row and the pause before the next attempt: exponential backoff with
/// jitter between `min` and `max`.
#[derive(Debug, Clone)]
pub struct Retry {
    backoff: Backoff,
    failures: u32,
}

impl Retry {
    pub const fn new(min: Duration, max: Duration) -> Self {
        Self {
            backoff: Backoff::new(min, max),
            failures: 0,
        }
    }

    /// One more failure: the pause to wait before trying again.
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.backoff.delay(self.failures, fastrand::f64())
    }

    /// It worked: the next failure starts from `min` again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default: `info`). Call once, from `main`.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_in_urls() {
        assert_eq!(
            redact("postgres://app:secret@db:5432/tether"),
            "postgres://app:***@db:5432/tether"
        );
        assert_eq!(
            redact("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://host:5672"), "amqp://host:5672");
        assert_eq!(
            redact("tether-data/telemetry.db"),
            "tether-data/telemetry.db"
        );
        // A password with an '@' in it stays hidden whole.
        assert_eq!(
            redact("amqp://dev:p%40ss@host/%2f"),
            "amqp://dev:***@host/%2f"
        );
        // Every URL of a list, not only the first.
        assert_eq!(
            redact("amqp://s:pw1@h1:5681/%2f,amqp://s:pw2@h2:5682/%2f"),
            "amqp://s:***@h1:5681/%2f,amqp://s:***@h2:5682/%2f"
        );
        assert_eq!(
            redact("postgres://app:secret@db1,db2/tether"),
            "postgres://app:***@db1,db2/tether"
        );
    }

    #[test]
    fn retries_back_off_and_start_over_after_a_success() {
        let mut retry = Retry::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = retry.failed();
        assert!((Duration::from_millis(50)..=Duration::from_millis(100)).contains(&first));
        for _ in 0..10 {
            assert!(retry.failed() <= Duration::from_secs(1));
        }
        assert_eq!(retry.failures(), 11);
        retry.succeeded();
        assert!(retry.failed() <= Duration::from_millis(100));
    }
}
