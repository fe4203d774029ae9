//! Topic exchanges at the edges of RabbitMQ's semantics — the empty key, empty words,
//! `*` and `#` in routing keys, runs of `#` — and patterns built to make a backtracking
//! matcher explode. Included by `conformance_embedded.rs` and `conformance_rabbitmq.rs`
//! beside `conformance.rs`: the same table must pass on both brokers.

use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
        QueueBindOptions, QueueDeclareOptions,
    },
    types::FieldTable,
};

/// Routing keys published to every pattern of [`PATTERNS`].
const KEYS: &[&str] = &[
    "",
    "a",
    "a.",
    ".",
    ".a",
    "a.b",
    "a..b",
    "a.b.c",
    "a.*",
    "a.#.b",
    "#",
    "x.a.y.a.z",
    "A.b",
    "a*",
    "##",
    "x",
    "ab",
];

/// All of [`KEYS`] but the empty key, which is first.
const NONEMPTY_KEYS: &[&str] = match KEYS.split_first() {
    Some((_empty, rest)) => rest,
    None => &[],
};

/// Binding patterns, each with the keys of [`KEYS`] it matches, in that order.
const PATTERNS: &[(&str, &[&str])] = &[
    // The empty key has no words: only the empty pattern and `#` runs match it.
    ("", &[""]),
    ("#", KEYS),
    ("#.#", KEYS),
    ("*", &["a", "#", "a*", "##", "x", "ab"]),
    // Empty words are words.
    ("*.*", &["a.", ".", ".a", "a.b", "a.*", "A.b"]),
    ("#.*", NONEMPTY_KEYS),
    ("#.*.#", NONEMPTY_KEYS),
    (
        "*.#.*",
        &[
            "a.",
            ".",
            ".a",
            "a.b",
            "a..b",
            "a.b.c",
            "a.*",
            "a.#.b",
            "x.a.y.a.z",
            "A.b",
        ],
    ),
    ("a", &["a"]),
    (".", &["."]),
    ("*.a", &[".a"]),
    ("#.a", &["a", ".a"]),
    ("a.*", &["a.", "a.b", "a.*"]),
    ("a.#", &["a", "a.", "a.b", "a..b", "a.b.c", "a.*", "a.#.b"]),
    (
        "#.a.#",
        &[
            "a",
            "a.",
            ".a",
            "a.b",
            "a..b",
            "a.b.c",
            "a.*",
            "a.#.b",
            "x.a.y.a.z",
        ],
    ),
    ("a.b", &["a.b"]),
    ("a..b", &["a..b"]),
    ("a.*.b", &["a..b", "a.#.b"]),
    ("a.#.b", &["a.b", "a..b", "a.#.b"]),
    ("a.#.#.b", &["a.b", "a..b", "a.#.b"]),
    ("a.b.c.#", &["a.b.c"]),
    // Only a whole word is a wildcard, and words are case-sensitive.
    ("a*", &["a*"]),
    ("##", &["##"]),
    ("#a", &[]),
    ("A.b", &["A.b"]),
];

#[tokio::test]
async fn topic_patterns_route_as_in_rabbitmq() {
    let (_connection, channel) = confirming_channel().await;
    let exchange = exchange(&channel, "edges", ExchangeKind::Topic).await;
    let mut queues = Vec::new();
    for (pattern, _) in PATTERNS {
        queues.push(bound_queue(&channel, &exchange, pattern).await);
    }
    for key in KEYS {
        publish(&channel, &exchange, key, BasicPublishOptions::default()).await;
    }
    for ((pattern, expected), queue) in PATTERNS.iter().zip(&queues) {
        assert_eq!(
            drain(&channel, queue).await,
            *expected,
            "pattern {pattern:?}"
        );
    }
}

#[tokio::test]
async fn a_queue_gets_one_copy_however_many_of_its_bindings_match() {
    let (_connection, channel) = confirming_channel().await;
    let topic = exchange(&channel, "copies", ExchangeKind::Topic).await;
    // Another binding keeps the auto-delete exchange once the queue's are gone.
    bound_queue(&channel, &topic, "z").await;
    let queue = bound_queue(&channel, &topic, "a.#").await;
    for pattern in ["a.#.#", "#", "a.*"] {
        bind(&channel, &queue, &topic, pattern).await;
    }
    publish(&channel, &topic, "a.b", mandatory()).await;
    assert_eq!(drain(&channel, &queue).await, ["a.b"]);
    for pattern in ["a.#", "#", "a.*"] {
        unbind(&channel, &queue, &topic, pattern).await;
    }
    publish(&channel, &topic, "a.b", mandatory()).await;
    assert_eq!(
        drain(&channel, &queue).await,
        ["a.b"],
        "`a.#.#` still binds it"
    );
    unbind(&channel, &queue, &topic, "a.#.#").await;
    let returned = publish(&channel, &topic, "a.b", mandatory()).await;
    assert!(
        matches!(returned, Confirmation::Ack(Some(_))),
        "{returned:?}"
    );

    let fanout = exchange(&channel, "copies", ExchangeKind::Fanout).await;
    let queue = bound_queue(&channel, &fanout, "x").await;
    bind(&channel, &queue, &fanout, "y").await;
    publish(&channel, &fanout, "any", mandatory()).await;
    unbind(&channel, &queue, &fanout, "x").await;
    publish(&channel, &fanout, "again", mandatory()).await;
    assert_eq!(drain(&channel, &queue).await, ["any", "again"]);
}

#[tokio::test]
async fn walls_of_hashes_route_like_any_pattern() {
    // Sizes RabbitMQ 3.10 routes at once; its matcher takes time exponential in both
    // (see `a_wall_of_hashes_against_a_long_key_is_routed_at_once` in
    // `conformance_embedded.rs`).
    hash_walls_route(64, 2).await;
    hash_walls_route(2, 127).await;
}

/// On a topic exchange with a queue bound by `hashes` `#` words, and another exchange
/// with a queue bound by `hashes - 1` `#` words then `end`: a key of `words` words reaches
/// the first queue; on the second, it is returned (mandatory) unless it ends in `end`.
pub async fn hash_walls_route(hashes: usize, words: usize) {
    let (_connection, channel) = confirming_channel().await;
    let wall = vec!["#"; hashes].join(".");
    let walled_end = format!("{}.end", vec!["#"; hashes - 1].join("."));
    let key = vec!["w"; words].join(".");
    let key_ending = format!("{}.end", vec!["w"; words - 1].join("."));

    let everything = exchange(&channel, "wall", ExchangeKind::Topic).await;
    let all = bound_queue(&channel, &everything, &wall).await;
    let routed = publish(&channel, &everything, &key, mandatory()).await;
    assert!(matches!(routed, Confirmation::Ack(None)), "{routed:?}");
    assert_eq!(drain(&channel, &all).await, [key.as_str()]);

    let ends = exchange(&channel, "walled-end", ExchangeKind::Topic).await;
    let ending = bound_queue(&channel, &ends, &walled_end).await;
    let returned = publish(&channel, &ends, &key, mandatory()).await;
    let Confirmation::Ack(Some(returned)) = returned else {
        panic!("a key matching nothing comes back: {returned:?}")
    };
    assert_eq!(returned.reply_code, 312);
    let routed = publish(&channel, &ends, &key_ending, mandatory()).await;
    assert!(matches!(routed, Confirmation::Ack(None)), "{routed:?}");
    assert_eq!(drain(&channel, &ending).await, [key_ending.as_str()]);
}

// Helpers.

fn unique(name: &str) -> String {
    format!("conformance-topics-{name}-{:08x}", fastrand::u32(..))
}

fn mandatory() -> BasicPublishOptions {
    BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    }
}

/// A new connection and a channel on it with publisher confirms: once a publish is
/// confirmed, its message is in every queue it was routed to.
async fn confirming_channel() -> (Connection, Channel) {
    let url = crate::broker_url().await;
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the broker at {url}: {e}"));
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (connection, channel)
}

/// Declares an auto-delete exchange; returns its name.
async fn exchange(channel: &Channel, name: &str, kind: ExchangeKind) -> String {
    let name = unique(name);
    let auto_delete = ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            name.as_str().into(),
            kind,
            auto_delete,
            FieldTable::default(),
        )
        .await
        .unwrap();
    name
}

/// Declares a private queue bound to `exchange` with `pattern`; returns its name.
async fn bound_queue(channel: &Channel, exchange: &str, pattern: &str) -> String {
    let private = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let queue = channel
        .queue_declare("".into(), private, FieldTable::default())
        .await
        .unwrap()
        .name()
        .to_string();
    bind(channel, &queue, exchange, pattern).await;
    queue
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, pattern: &str) {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            pattern.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

async fn unbind(channel: &Channel, queue: &str, exchange: &str, pattern: &str) {
    channel
        .queue_unbind(
            queue.into(),
            exchange.into(),
            pattern.into(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

/// Publishes `key` as both the routing key and the body, and waits for the confirm.
async fn publish(
    channel: &Channel,
    exchange: &str,
    key: &str,
    options: BasicPublishOptions,
) -> Confirmation {
    channel
        .basic_publish(
            exchange.into(),
            key.into(),
            options,
            key.as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap()
}

/// Every message waiting in `queue`, as text, oldest first.
async fn drain(channel: &Channel, queue: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        bodies.push(String::from_utf8(message.delivery.data).unwrap());
    }
    bodies
}
