//! Topic matching: a trie of a topic exchange's binding keys, walked without backtracking.
//!
//! Matching a key by trying every way each `#` could split it takes exponential time: a
//! binding of 64 `#` words against a 127-word key never finishes, and it would run under
//! the vhost's one lock, stalling every connection. (RabbitMQ 3.10's own `trie_match`
//! recurses that way too; there it only ties up the publishing channel's process.)
//!
//! Here the trie is walked as an automaton: the set of nodes the key read so far can have
//! reached is advanced one key word at a time, each node at most once per word. A match
//! therefore visits at most (key words + 1) × (trie nodes) nodes, whatever the patterns.
//! A run of `#` words is stored as a single `#` (`#.#` matches exactly what `#` does),
//! so a `#` node never has a `#` child and a wall of `#` costs no more than one.

use std::collections::HashMap;

use super::bindings::Destinations;

/// The words of a routing or binding key, split as RabbitMQ splits them: the empty key
/// has no words; otherwise every `.` separates two words, which may be empty (`a..b` is
/// `a`, ``, `b`; `.` is two empty words).
fn words(key: &str) -> impl Iterator<Item = &str> {
    let mut words = key.split('.');
    if key.is_empty() {
        words.next(); // `split` yields one empty word for the empty string
    }
    words
}

/// One step down the trie: what a word of a binding key matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edge<'k> {
    /// This word exactly. (`*` and `#` in a routing key are plain words too.)
    Word(&'k str),
    /// `*`: any one word.
    Star,
    /// `#`: zero or more words.
    Hash,
}

/// The path of a binding key, with runs of `#` collapsed into one.
fn path(pattern: &str) -> Vec<Edge<'_>> {
    let mut path = Vec::new();
    for word in words(pattern) {
        let edge = match word {
            "*" => Edge::Star,
            "#" => Edge::Hash,
            word => Edge::Word(word),
        };
        if !(edge == Edge::Hash && path.last() == Some(&Edge::Hash)) {
            path.push(edge);
        }
    }
    path
}

/// A topic exchange's bindings, by the words of their keys.
#[derive(Debug, Default)]
pub(super) struct TopicTrie {
    root: Node,
}

#[derive(Debug, Default)]
struct Node {
    /// Children by a literal word.
    words: HashMap<String, Node>,
    /// The child for `*`.
    star: Option<Box<Node>>,
    /// The child for `#`; a `#` node has none (runs of `#` are collapsed).
    hash: Option<Box<Node>>,
    /// Queues whose binding key ends here.
    bound: Destinations,
}

/// A node that the key read so far reaches, and whether it is a `#` node, which stays
/// reached whatever word comes next.
type Reached<'t> = (&'t Node, bool);

impl TopicTrie {
    /// Binds `queue` with the pattern `key`; the caller makes sure the pair is new.
    pub(super) fn bind(&mut self, key: &str, queue: &str) {
        let mut node = &mut self.root;
        for edge in path(key) {
            node = node.child_or_new(edge);
        }
        node.bound.add(queue);
    }

    /// Removes the binding of `queue` with `key`, and the nodes it alone needed; the
    /// caller makes sure the binding exists.
    pub(super) fn unbind(&mut self, key: &str, queue: &str) {
        self.root.unbind(&path(key), queue);
    }

    /// Adds to `found` every queue with a binding matching `routing_key`; a queue bound by
    /// several matching keys may be added more than once.
    pub(super) fn matches<'t>(&'t self, routing_key: &str, found: &mut Vec<&'t str>) {
        let mut reached = Vec::new();
        reach(&mut reached, &self.root, false);
        let mut next = Vec::new();
        for word in words(routing_key) {
            next.clear();
            for &(node, is_hash) in &reached {
                if is_hash {
                    reach(&mut next, node, true);
                }
                if let Some(child) = node.words.get(word) {
                    reach(&mut next, child, false);
                }
                if let Some(child) = &node.star {
                    reach(&mut next, child, false);
                }
            }
            // Each node once: a `#` node is reached from itself and from its parent, and
            // kept twice it would be kept four times a word later, and so on.
            next.sort_unstable_by_key(|&(node, _)| std::ptr::from_ref(node) as usize);
            next.dedup_by(|a, b| std::ptr::eq(a.0, b.0));
            if next.is_empty() {
                return;
            }
            std::mem::swap(&mut reached, &mut next);
        }
        for (node, _) in reached {
            found.extend(node.bound.queues());
        }
    }
}

/// Marks `node` reached, and the `#` below it, which may match zero words right there.
fn reach<'t>(reached: &mut Vec<Reached<'t>>, mut node: &'t Node, mut is_hash: bool) {
    loop {
        reached.push((node, is_hash));
        match &node.hash {
            Some(hash) => (node, is_hash) = (hash, true),
            None => return,
        }
    }
}

impl Node {
    fn child_or_new(&mut self, edge: Edge<'_>) -> &mut Node {
        match edge {
            Edge::Word(word) => self.words.entry(word.to_owned()).or_default(),
            Edge::Star => self.star.get_or_insert_default(),
            Edge::Hash => self.hash.get_or_insert_default(),
        }
    }

    fn child_mut(&mut self, edge: Edge<'_>) -> Option<&mut Node> {
        match edge {
            Edge::Word(word) => self.words.get_mut(word),
            Edge::Star => self.star.as_deref_mut(),
            Edge::Hash => self.hash.as_deref_mut(),
        }
    }

    fn remove_child(&mut self, edge: Edge<'_>) {
        match edge {
            Edge::Word(word) => drop(self.words.remove(word)),
            Edge::Star => self.star = None,
            Edge::Hash => self.hash = None,
        }
    }

    /// Removes the binding at the end of `path` below this node, then the nodes left with
    /// neither bindings nor children, so unbinding gives the memory back. Recursion is as
    /// deep as the key has words: at most 256 (a key is at most 255 bytes).
    fn unbind(&mut self, path: &[Edge<'_>], queue: &str) {
        let Some((&edge, rest)) = path.split_first() else {
            self.bound.remove(queue);
            return;
        };
        let Some(child) = self.child_mut(edge) else {
            return;
        };
        child.unbind(rest, queue);
        if child.is_empty() {
            self.remove_child(edge);
        }
    }

    fn is_empty(&self) -> bool {
        self.bound.is_empty() && self.words.is_empty() && self.star.is_none() && self.hash.is_none()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn matches(pattern: &str, key: &str) -> bool {
        let mut trie = TopicTrie::default();
        trie.bind(pattern, "q");
        let mut found = Vec::new();
        trie.matches(key, &mut found);
        !found.is_empty()
    }

    /// The conformance suite checks these edge cases against RabbitMQ too
    /// (`tests/support/topics.rs`).
    #[test]
    fn topic_patterns_match_as_in_rabbitmq() {
        let cases = [
            ("presence.#", "presence.gw-1.hello", true),
            ("presence.#", "presence", true),
            ("presence.*.hello", "presence.gw-1.hello", true),
            ("presence.*.hello", "presence.gw-1.bye", false),
            ("presence.*", "presence.a.b", false),
            ("#", "anything.at.all", true),
            ("#.hello", "presence.gw.hello", true),
            ("a.#.z", "a.z", true),
            ("a.#.z", "a.b.c.z", true),
            ("a.*.z", "a.z", false),
            ("telemetry.#", "presence.x", false),
            // The empty key has no words; the empty pattern matches only it.
            ("", "", true),
            ("", "a", false),
            ("", ".", false),
            ("#", "", true),
            ("#.#", "", true),
            ("*", "", false),
            ("#.*", "", false),
            // Empty words are words.
            ("*", ".", false),
            ("*.*", ".", true),
            ("#", ".", true),
            (".", ".", true),
            ("a.*", "a.", true),
            ("a", "a.", false),
            ("a.*.b", "a..b", true),
            ("a..b", "a..b", true),
            ("a.b", "a..b", false),
            ("*.a", ".a", true),
            ("a.#", "a", true),
            ("#.a", "a", true),
            ("a.#.#.b", "a.b", true),
            ("#.a.#", "x.a.y.a.z", true),
            ("#.*.#", "", false),
            ("#.*.#", "x", true),
            ("*.#.*", "x", false),
            ("*.#.*", "x.y", true),
            // In a routing key, `*` and `#` are plain words.
            ("a.b", "a.*", false),
            ("a.*", "a.*", true),
            ("a.#.b", "a.#.b", true),
            ("*", "#", true),
            // Only a whole word is a wildcard; words are case-sensitive.
            ("a*", "ab", false),
            ("a*", "a*", true),
            ("##", "x", false),
            ("##", "##", true),
            ("#a", "a", false),
            ("A.b", "a.b", false),
        ];
        for (pattern, key, expected) in cases {
            assert_eq!(matches(pattern, key), expected, "{pattern:?} vs {key:?}");
        }
    }

    /// Runs `work` in a thread and fails if it is not done within 5 s: a guard against a
    /// hang (a backtracking matcher takes longer than anyone waits), not a timing test.
    fn finishes<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || done.send(work()));
        result
            .recv_timeout(Duration::from_secs(5))
            .expect("the match did not finish within 5 s")
    }

    #[test]
    fn a_wall_of_hashes_against_a_long_key_finishes() {
        let hashes = vec!["#"; 64].join(".");
        let key = vec!["w"; 127].join(".");
        assert!(finishes({
            let (hashes, key) = (hashes.clone(), key.clone());
            move || matches(&hashes, &key)
        }));
        // The worst case for backtracking: no match, so every split is tried.
        let no_end = format!("{}.end", vec!["#"; 63].join("."));
        assert!(!finishes(move || matches(&no_end, &key)));
        // Without the collapse of `#` runs, alternating wildcards still cannot blow up.
        let alternating = vec!["#.*"; 64].join(".");
        let short = vec!["w"; 63].join(".");
        let long = vec!["w"; 127].join(".");
        assert!(finishes(move || {
            !matches(&alternating, &short) && matches(&alternating, &long)
        }));
    }

    #[test]
    fn many_bindings_each_queue_found_by_its_own_patterns() {
        let mut trie = TopicTrie::default();
        trie.bind("a.*", "star");
        trie.bind("a.#", "hash");
        trie.bind("a.b", "exact");
        trie.bind("#", "all");
        trie.bind("b.#", "other");
        let mut found = Vec::new();
        trie.matches("a.b", &mut found);
        found.sort_unstable();
        assert_eq!(found, ["all", "exact", "hash", "star"]);
    }

    #[test]
    fn unbinding_everything_leaves_an_empty_trie() {
        let mut trie = TopicTrie::default();
        let keys = ["a.b.c", "a.*.c", "a.#", "#", "#.#.x", "", "a..b"];
        for key in keys {
            trie.bind(key, "q");
        }
        trie.unbind("a.*.c", "q");
        let mut found = Vec::new();
        trie.matches("a.b.c", &mut found);
        assert_eq!(found, ["q", "q", "q"], "a.b.c, a.#, #");
        for key in keys.iter().filter(|key| **key != "a.*.c") {
            trie.unbind(key, "q");
        }
        assert!(trie.root.is_empty(), "{:?}", trie.root);
    }
}
