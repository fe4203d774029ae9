//! An exchange's bindings, indexed for its kind, so that a publish looks its queues up
//! (by key for direct, in a trie for topic) instead of testing every binding under the
//! vhost's lock.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{ExchangeKind, topic::TopicTrie};

/// Queues a message goes to from one place in an index, each with how many bindings lead
/// it there. A queue bound by two keys that land in the same place (any two keys on a
/// fanout exchange; `a.#` and `a.#.#` on a topic one) gets one copy of a message, and
/// stays until its last such binding goes.
#[derive(Debug, Default)]
pub(super) struct Destinations(BTreeMap<String, usize>);

impl Destinations {
    pub(super) fn add(&mut self, queue: &str) {
        *self.0.entry(queue.to_owned()).or_default() += 1;
    }

    pub(super) fn remove(&mut self, queue: &str) {
        if let Some(count) = self.0.get_mut(queue) {
            *count -= 1;
            if *count == 0 {
                self.0.remove(queue);
            }
        }
    }

    /// The queues, each once, in name order.
    pub(super) fn queues(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Debug)]
pub(super) struct Bindings {
    /// Every binding as (queue, key), by queue: what `if-unused` and unbinding a deleted
    /// queue need, without searching the index.
    all: BTreeSet<(String, String)>,
    index: Index,
}

#[derive(Debug)]
enum Index {
    /// The queues bound with each key; a message goes to those of its routing key.
    Direct(HashMap<String, Destinations>),
    /// Every bound queue, whatever its key.
    Fanout(Destinations),
    Topic(TopicTrie),
}

impl Bindings {
    pub(super) fn new(kind: ExchangeKind) -> Self {
        let index = match kind {
            ExchangeKind::Direct => Index::Direct(HashMap::new()),
            ExchangeKind::Fanout => Index::Fanout(Destinations::default()),
            ExchangeKind::Topic => Index::Topic(TopicTrie::default()),
        };
        Self {
            all: BTreeSet::new(),
            index,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// Binds `queue` with `key`; binding the same pair again changes nothing.
    pub(super) fn add(&mut self, queue: &str, key: &str) {
        if !self.all.insert((queue.to_owned(), key.to_owned())) {
            return;
        }
        match &mut self.index {
            Index::Direct(by_key) => by_key.entry(key.to_owned()).or_default().add(queue),
            Index::Fanout(queues) => queues.add(queue),
            Index::Topic(trie) => trie.bind(key, queue),
        }
    }

    /// Removes the binding of `queue` with `key`, if there is one.
    pub(super) fn remove(&mut self, queue: &str, key: &str) {
        if !self.all.remove(&(queue.to_owned(), key.to_owned())) {
            return;
        }
        match &mut self.index {
            Index::Direct(by_key) => {
                if let Some(queues) = by_key.get_mut(key) {
                    queues.remove(queue);
                    if queues.is_empty() {
                        by_key.remove(key);
                    }
                }
            }
            Index::Fanout(queues) => queues.remove(queue),
            Index::Topic(trie) => trie.unbind(key, queue),
        }
    }

    /// Removes every binding of `queue` (it was deleted).
    pub(super) fn remove_queue(&mut self, queue: &str) {
        let keys: Vec<String> = self
            .all
            .range((queue.to_owned(), String::new())..)
            .take_while(|(bound, _)| bound == queue)
            .map(|(_, key)| key.clone())
            .collect();
        for key in keys {
            self.remove(queue, &key);
        }
    }

    /// The queues a message with `routing_key` goes to, each once, in name order.
    pub(super) fn route(&self, routing_key: &str) -> Vec<String> {
        let owned = |queues: &Destinations| queues.queues().map(str::to_owned).collect();
        match &self.index {
            Index::Direct(by_key) => by_key.get(routing_key).map(owned).unwrap_or_default(),
            Index::Fanout(queues) => owned(queues),
            Index::Topic(trie) => {
                let mut found = Vec::new();
                trie.matches(routing_key, &mut found);
                found.sort_unstable();
                found.dedup();
                found.into_iter().map(str::to_owned).collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_gets_one_copy_however_many_of_its_bindings_match() {
        let mut topic = Bindings::new(ExchangeKind::Topic);
        for key in ["a.#", "a.#.#", "#", "a.*"] {
            topic.add("q", key);
        }
        topic.add("other", "b.#");
        assert_eq!(topic.route("a.b"), ["q"]);
        topic.remove("q", "a.#.#"); // lands on the same trie node as `a.#`
        topic.remove("q", "#");
        topic.remove("q", "a.*");
        assert_eq!(topic.route("a.b"), ["q"], "`a.#` still binds it");
        topic.remove("q", "a.#");
        assert!(topic.route("a.b").is_empty());
        assert_eq!(topic.route("b"), ["other"]);

        let mut fanout = Bindings::new(ExchangeKind::Fanout);
        fanout.add("q", "x");
        fanout.add("q", "y");
        fanout.add("p", "x");
        assert_eq!(fanout.route("anything"), ["p", "q"]);
        fanout.remove("q", "x");
        assert_eq!(fanout.route(""), ["p", "q"], "`y` still binds q");
    }

    #[test]
    fn direct_exchanges_route_by_the_exact_key() {
        let mut direct = Bindings::new(ExchangeKind::Direct);
        direct.add("b", "k");
        direct.add("a", "k");
        direct.add("a", "k"); // again: still one binding
        direct.add("c", "K");
        assert_eq!(direct.route("k"), ["a", "b"]);
        assert_eq!(direct.route("K"), ["c"]);
        assert!(direct.route("k.").is_empty());
        direct.remove("a", "k");
        assert_eq!(direct.route("k"), ["b"]);
    }

    #[test]
    fn a_deleted_queue_loses_all_its_bindings_and_only_its_own() {
        for kind in [
            ExchangeKind::Direct,
            ExchangeKind::Fanout,
            ExchangeKind::Topic,
        ] {
            let mut bindings = Bindings::new(kind);
            for key in ["k", "k.#", "*", ""] {
                bindings.add("gone", key);
                bindings.add("gone-too-not", key);
            }
            bindings.remove_queue("gone");
            for key in ["k", ""] {
                assert_eq!(bindings.route(key), ["gone-too-not"], "{kind:?} {key:?}");
            }
            bindings.remove_queue("gone-too-not");
            assert!(bindings.is_empty(), "{kind:?}");
        }
    }
}
