//! Several broker addresses for one Tether (the nodes of a RabbitMQ cluster):
//! `TETHER_AMQP_URL=amqp://…@node1/%2f,amqp://…@node2/%2f`, the agent's `amqp_url` alike.
//!
//! Which one first: a random one, chosen once per [`Brokers`] (a process's hub, each
//! recorder, each device of a simulated fleet), so that devices and replicas given the
//! same list spread over the nodes instead of all crowding the first. Then in the order
//! given: a connection that is lost, or an address that does not answer, moves on to
//! the next one, round and round; a whole round that failed is what backs off.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

/// The URLs of a comma-separated list, trimmed, empty ones left out. A comma inside a
/// URL (in a password, say) must be written `%2C`.
pub fn split_urls(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|url| !url.is_empty())
}

/// Broker URLs to connect to, one at a time, and which to try next. Cheap to clone;
/// clones share their place in the list.
#[derive(Debug, Clone)]
pub struct Brokers {
    urls: Arc<[String]>,
    next: Arc<AtomicUsize>,
}

impl Brokers {
    /// The URLs in `text` (see [`split_urls`]), unchecked: one that does not parse fails
    /// when it is tried, saying so. [`Brokers::parse`] checks them first.
    pub fn new(text: &str) -> Self {
        let mut urls: Vec<String> = split_urls(text).map(str::to_owned).collect();
        if urls.is_empty() {
            // Tried, it fails with a message naming the empty URL.
            urls.push(String::new());
        }
        let next = fastrand::usize(..urls.len());
        Self {
            urls: urls.into(),
            next: Arc::new(AtomicUsize::new(next)),
        }
    }

    /// The URLs in `text`, each checked: an `amqp://` or `amqps://` URL that parses, all
    /// logging in as the same user (every message is stamped with its publisher's
    /// account, which must not change with the node).
    ///
    /// # Errors
    /// Saying which URL is wrong and why, passwords hidden.
    pub fn parse(text: &str) -> Result<Self, String> {
        let brokers = Self::new(text);
        if brokers.urls.iter().all(String::is_empty) {
            return Err("no broker URL given".into());
        }
        let mut users = Vec::new();
        for (i, url) in brokers.urls.iter().enumerate() {
            let which = if brokers.urls.len() > 1 {
                format!(
                    "broker URL {} of {} ({})",
                    i + 1,
                    brokers.urls.len(),
                    crate::redact(url)
                )
            } else {
                format!("broker URL {}", crate::redact(url))
            };
            let parsed =
                url::Url::parse(url).map_err(|error| format!("{which} does not parse: {error}"))?;
            if !matches!(parsed.scheme(), "amqp" | "amqps") {
                return Err(format!(
                    "{which} is not an AMQP URL (amqp://user:password@host:port/vhost, or amqps://)"
                ));
            }
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(format!("{which} names no host"));
            }
            users.push(crate::amqp_user(url));
        }
        if let Some(other) = users.iter().find(|user| **user != users[0]) {
            return Err(format!(
                "the broker URLs log in as different users ({} and {other}): every node must be reached with the same account",
                users[0]
            ));
        }
        Ok(brokers)
    }

    /// The URLs, in the order given.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// One round of attempts: every URL once, with its place in the list, starting with
    /// the one to try next.
    pub fn round(&self) -> Vec<(usize, &str)> {
        let count = self.urls.len();
        let start = self.next.load(Ordering::Relaxed) % count;
        (0..count)
            .map(|i| {
                let index = (start + i) % count;
                (index, self.urls[index].as_str())
            })
            .collect()
    }

    /// The URL at `index` answered: the next round starts with it again (a connection
    /// that failed at once for another reason should not send everyone elsewhere).
    pub fn connected(&self, index: usize) {
        self.next.store(index, Ordering::Relaxed);
    }

    /// The connection to the URL at `index` was lost: the next round starts with the
    /// one after it (its node may be down), unless another clone moved on already.
    pub fn lost(&self, index: usize) {
        let count = self.urls.len();
        let _ = self.next.compare_exchange(
            index,
            (index + 1) % count,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// All the URLs, passwords hidden, for logs.
    pub fn redacted(&self) -> String {
        crate::redact(&self.urls.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_split_and_trimmed() {
        let brokers = Brokers::new(" amqp://a/%2f , amqp://b/%2f,, amqp://c/%2f ");
        assert_eq!(
            brokers.urls(),
            ["amqp://a/%2f", "amqp://b/%2f", "amqp://c/%2f"]
        );
        assert_eq!(Brokers::new("amqp://only/%2f").urls(), ["amqp://only/%2f"]);
    }

    #[test]
    fn a_round_tries_each_once_and_a_loss_moves_on() {
        let brokers = Brokers::new("amqp://a,amqp://b,amqp://c");
        let round: Vec<usize> = brokers.round().into_iter().map(|(i, _)| i).collect();
        assert_eq!(round.len(), 3);
        let first = round[0];
        assert_eq!(round, [first, (first + 1) % 3, (first + 2) % 3]);
        brokers.connected(1);
        assert_eq!(brokers.round()[0], (1, "amqp://b"));
        // Lost: the next round starts with the one after it, and once only: a second
        // report of the same loss (another task of the same process) changes nothing.
        let clone = brokers.clone();
        brokers.lost(1);
        clone.lost(1);
        assert_eq!(brokers.round()[0], (2, "amqp://c"));
        brokers.lost(2);
        assert_eq!(brokers.round()[0], (0, "amqp://a"));
    }

    #[test]
    fn the_first_is_chosen_at_random_so_that_many_spread() {
        let mut firsts = [0; 3];
        for _ in 0..300 {
            firsts[Brokers::new("amqp://a,amqp://b,amqp://c").round()[0].0] += 1;
        }
        assert!(firsts.iter().all(|&n| n > 50), "{firsts:?}");
    }

    #[test]
    fn every_url_must_parse_and_log_in_as_one_user() {
        assert!(Brokers::parse("amqp://s:pw@a:5681/%2f, amqp://s:pw@b:5682/%2f").is_ok());
        for (text, expected) in [
            ("", "no broker URL"),
            (" , ", "no broker URL"),
            (
                "amqp://s:pw1@a/%2f,not a url",
                "broker URL 2 of 2 (not a url) does not parse",
            ),
            ("http://s:pw1@a/", "is not an AMQP URL"),
            (
                "amqp://s:pw1@a/%2f,amqp://t:pw2@b/%2f",
                "different users (s and t)",
            ),
        ] {
            let error = Brokers::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
            assert!(!error.contains("pw1") && !error.contains("pw2"), "{error}");
        }
    }

    #[test]
    fn every_password_is_hidden() {
        let brokers = Brokers::new("amqp://s:one@a/%2f,amqp://s:two@b/%2f");
        assert_eq!(brokers.redacted(), "amqp://s:***@a/%2f,amqp://s:***@b/%2f");
    }
}
