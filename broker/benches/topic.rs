//! Routing, timed per publish: the vhost's routing now (bindings indexed by kind, topic
//! keys in a trie walked without backtracking) against the routing it replaced (every
//! binding tested, topic patterns matched by backtracking; kept below as `before`).
//!
//! ```sh
//! cargo bench -p broker --bench topic
//! ```
//!
//! Prints a Markdown table. Each figure is the best of five batches of about 50 ms, so
//! it is what one route costs on an idle core; the lock is held that long per publish.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use amq_protocol::types::FieldTable;
use broker::bench::{QueueDeclare, Vhost};

/// The routing this change replaced.
mod before {
    /// Every binding tested against the key; (queue, key) pairs, as they were stored.
    pub fn route(kind: &str, bindings: &[(String, String)], routing_key: &str) -> Vec<String> {
        let mut targets: Vec<String> = bindings
            .iter()
            .filter(|(_, key)| match kind {
                "fanout" => true,
                "direct" => key == routing_key,
                _ => topic_matches(key, routing_key),
            })
            .map(|(queue, _)| queue.clone())
            .collect();
        targets.sort();
        targets.dedup();
        targets
    }

    /// Tries every way each `#` could split the key: exponential in the `#` count.
    fn topic_matches(pattern: &str, key: &str) -> bool {
        fn matches(pattern: &[&str], key: &[&str]) -> bool {
            match (pattern.first(), key.first()) {
                (None, None) => true,
                (Some(&"#"), _) => {
                    matches(&pattern[1..], key) || (!key.is_empty() && matches(pattern, &key[1..]))
                }
                (Some(&"*"), Some(_)) => matches(&pattern[1..], &key[1..]),
                (Some(p), Some(k)) if p == k => matches(&pattern[1..], &key[1..]),
                _ => false,
            }
        }
        let pattern: Vec<&str> = pattern.split('.').collect();
        let key: Vec<&str> = if key.is_empty() {
            Vec::new()
        } else {
            key.split('.').collect()
        };
        matches(&pattern, &key)
    }
}

/// One exchange `x` of `kind` with its bindings, both in a vhost and as the old list.
struct Exchange {
    kind: &'static str,
    vhost: Vhost,
    old: Vec<(String, String)>,
}

impl Exchange {
    fn new(kind: &'static str, bindings: Vec<(String, String)>) -> Self {
        let mut vhost = Vhost::new(usize::MAX);
        vhost
            .declare_exchange("x", kind, false, false, false)
            .unwrap();
        let no_arguments = FieldTable::default();
        for (queue, key) in &bindings {
            let declare = QueueDeclare {
                name: queue,
                exclusive: false,
                auto_delete: false,
                passive: false,
                arguments: &no_arguments,
                quota: None,
            };
            vhost.declare_queue(1, &declare).unwrap();
            vhost.bind(1, queue, "x", key).unwrap();
        }
        Self {
            kind,
            vhost,
            old: bindings,
        }
    }

    /// Checks both routings agree on `keys`, then times each over them, per key.
    fn compare(&self, keys: &[String], old_too: bool) -> (Option<Duration>, Duration) {
        for key in keys {
            let now = self.vhost.route("x", key).unwrap();
            if old_too {
                assert_eq!(now, before::route(self.kind, &self.old, key), "{key}");
            }
        }
        let per_key = |total: Duration| total / keys.len() as u32;
        let old = old_too.then(|| {
            per_key(best_of_five(|| {
                for key in keys {
                    black_box(before::route(self.kind, &self.old, black_box(key)));
                }
            }))
        });
        let now = per_key(best_of_five(|| {
            for key in keys {
                black_box(self.vhost.route("x", black_box(key)).unwrap());
            }
        }));
        (old, now)
    }
}

/// The best time of five batches of `work`, per run, batches sized to about 50 ms.
fn best_of_five(mut work: impl FnMut()) -> Duration {
    let mut runs: u32 = 1;
    loop {
        let started = Instant::now();
        for _ in 0..runs {
            work();
        }
        if started.elapsed() >= Duration::from_millis(50) || runs >= 1 << 24 {
            break;
        }
        runs *= 2;
    }
    (0..5)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..runs {
                work();
            }
            started.elapsed() / runs
        })
        .min()
        .unwrap()
}

fn words(word: &str, count: usize) -> String {
    vec![word; count].join(".")
}

fn queues_bound_with(keys: impl IntoIterator<Item = String>) -> Vec<(String, String)> {
    keys.into_iter()
        .enumerate()
        .map(|(i, key)| (format!("q{i:05}"), key))
        .collect()
}

fn show(time: Option<Duration>) -> String {
    match time {
        None => "never finishes".into(),
        Some(time) if time < Duration::from_micros(10) => format!("{} ns", time.as_nanos()),
        Some(time) if time < Duration::from_millis(10) => {
            format!("{:.1} µs", time.as_nanos() as f64 / 1e3)
        }
        Some(time) => format!("{:.1} ms", time.as_nanos() as f64 / 1e6),
    }
}

fn row(case: &str, (old, now): (Option<Duration>, Duration)) {
    println!("| {case} | {} | {} |", show(old), show(Some(now)));
}

fn main() {
    println!("| route one publish | before (backtracking, every binding) | now |");
    println!("|---|---|---|");

    // Tether's own patterns (protocol::names), and a few more of the same kind.
    let tether = Exchange::new(
        "topic",
        queues_bound_with(
            [
                "presence.#",
                "telemetry.#",
                "presence.*.hello",
                "#.bye",
                "presence.gw-1.*",
            ]
            .map(String::from),
        ),
    );
    let keys = [
        "presence.gw-1.hello",
        "presence.gw-2.bye",
        "telemetry.gw-7.cpu",
        "other.thing",
    ]
    .map(String::from);
    row(
        "5 Tether-style patterns, 4 keys",
        tether.compare(&keys, true),
    );

    // Walls of `#`: a queue bound by `hashes` of them, another by one fewer then `end`.
    // The key matches the first and not the second, which the old matcher only learns
    // after trying all C(words + hashes - 1, hashes - 1) ways to split the key.
    let walls = |hashes: usize| {
        let wall = words("#", hashes);
        let walled_end = format!("{}.end", words("#", hashes - 1));
        Exchange::new("topic", queues_bound_with([wall, walled_end]))
    };
    for (hashes, length) in [(6, 12), (8, 16), (10, 20)] {
        let case = format!("{hashes} `#` vs a {length}-word key");
        row(&case, walls(hashes).compare(&[words("w", length)], true));
    }
    row(
        "64 `#` vs a 127-word key",
        walls(64).compare(&[words("w", 127)], false),
    );

    // 10,000 bindings, a subscription per device; each key matches one or none.
    let devices = |pattern: fn(usize) -> String| queues_bound_with((0..10_000).map(pattern));
    let keys: Vec<String> = [42, 9_999, 123_456]
        .map(|device| format!("telemetry.dev-{device}.cpu"))
        .into();
    let per_device = Exchange::new("topic", devices(|i| format!("telemetry.dev-{i}.#")));
    row(
        "topic, 10,000 bindings `telemetry.dev-N.#`",
        per_device.compare(&keys, true),
    );
    let per_metric = Exchange::new("topic", devices(|i| format!("telemetry.*.m{i}")));
    let metric_keys = ["telemetry.dev-1.m42", "telemetry.dev-2.none"].map(String::from);
    row(
        "topic, 10,000 bindings `telemetry.*.mN`",
        per_metric.compare(&metric_keys, true),
    );
    let direct = Exchange::new("direct", devices(|i| format!("dev-{i}")));
    let direct_keys = ["dev-42", "dev-123456"].map(String::from);
    row(
        "direct, 10,000 bindings",
        direct.compare(&direct_keys, true),
    );
    let fanout = Exchange::new("fanout", devices(|i| format!("dev-{i}")));
    row(
        "fanout, 10,000 queues (all receive)",
        fanout.compare(&["any".to_owned()], true),
    );
}
