//! Subscription trie: topic filters by level, with `+`, `#` and shared groups.
//!
//! Generic over the subscriber value so it can be unit tested without sessions; the router
//! stores `Arc<Session>` in it. Matching only reads, so many publishers match concurrently
//! under a read lock (see [`super::router`]).

use std::sync::atomic::{AtomicUsize, Ordering};

use rustc_hash::FxHashMap;

use super::types::{ByteString, SubscriptionOptions};

/// What the trie needs from a subscriber.
pub trait Member {
    /// Stable identity (the session id): one entry per member and filter.
    fn key(&self) -> u64;
    /// Whether the member is connected; shared groups prefer connected members.
    fn is_online(&self) -> bool;
    /// Whether the member may receive messages on `topic` (its ACL read rules). Shared
    /// groups pick among the members that may.
    fn may_read(&self, _topic: &str) -> bool {
        true
    }
}

/// A subscriber with the options of one subscription.
#[derive(Debug, Clone)]
pub struct Entry<V> {
    /// The subscriber.
    pub value: V,
    /// Its subscription options for this filter.
    pub options: SubscriptionOptions,
}

/// One subscription that matched a topic.
#[derive(Debug)]
pub struct Matched<'a, V> {
    /// The subscriber and its options.
    pub entry: &'a Entry<V>,
    /// True for the chosen member of a shared group (never merged with other matches of the
    /// same client, MQTT 5.0 §4.8.2).
    pub shared: bool,
}

struct Leaf<V> {
    direct: FxHashMap<u64, Entry<V>>,
    shared: FxHashMap<ByteString, SharedGroup<V>>,
}

impl<V> Default for Leaf<V> {
    fn default() -> Self {
        Leaf { direct: FxHashMap::default(), shared: FxHashMap::default() }
    }
}

impl<V> Leaf<V> {
    fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.shared.is_empty()
    }
}

struct SharedGroup<V> {
    members: Vec<Entry<V>>,
    /// Round-robin position; atomic because matching runs under a shared (read) lock.
    cursor: AtomicUsize,
}

struct Node<V> {
    children: FxHashMap<ByteString, Node<V>>,
    plus: Option<Box<Node<V>>>,
    hash: Option<Box<Leaf<V>>>,
    leaf: Leaf<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node { children: FxHashMap::default(), plus: None, hash: None, leaf: Leaf::default() }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.plus.is_none() && self.hash.is_none() && self.leaf.is_empty()
    }
}

/// The subscription trie.
pub struct Trie<V> {
    root: Node<V>,
    len: usize,
}

impl<V> Default for Trie<V> {
    fn default() -> Self {
        Trie { root: Node::default(), len: 0 }
    }
}

impl<V: Member> Trie<V> {
    /// Number of subscriptions (direct entries plus shared-group memberships).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds or replaces `value`'s subscription to `filter` (in `group` when shared).
    /// Returns true when it replaced an existing one.
    pub fn insert(&mut self, filter: &ByteString, group: Option<&ByteString>, entry: Entry<V>) -> bool {
        let leaf = leaf_mut(&mut self.root, filter);
        let key = entry.value.key();
        let replaced = match group {
            None => leaf.direct.insert(key, entry).is_some(),
            Some(group) => {
                let group = leaf
                    .shared
                    .entry(group.clone())
                    .or_insert_with(|| SharedGroup { members: Vec::new(), cursor: AtomicUsize::new(0) });
                match group.members.iter_mut().find(|m| m.value.key() == key) {
                    Some(existing) => {
                        *existing = entry;
                        true
                    }
                    None => {
                        group.members.push(entry);
                        false
                    }
                }
            }
        };
        if !replaced {
            self.len += 1;
        }
        replaced
    }

    /// Removes `key`'s subscription to `filter`; returns whether it existed. Empty branches
    /// are pruned so churn does not leave garbage behind.
    pub fn remove(&mut self, filter: &str, group: Option<&str>, key: u64) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = remove_at(&mut self.root, &levels, group, key);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Appends every subscription matching `topic` to `out`. For shared groups exactly one
    /// member is chosen, round robin, preferring connected members.
    pub fn matches<'a>(&'a self, topic: &str, out: &mut Vec<Matched<'a, V>>) {
        let levels: Vec<&str> = topic.split('/').collect();
        // MQTT 5.0 §4.7.2: filters starting with a wildcard do not match `$` topics.
        let dollar = topic.starts_with('$');
        collect(&self.root, topic, &levels, !dollar, out);
    }
}

impl<V: Member> Trie<V> {
    /// One member of shared group `group` on exactly `filter` that may read `topic` (round
    /// robin, preferring connected members), for a cluster that picked this node for it.
    pub fn pick_shared<'a>(&'a self, filter: &str, group: &str, topic: &str) -> Option<&'a Entry<V>> {
        let mut node = &self.root;
        for level in filter.split('/') {
            node = match level {
                "#" => {
                    return node
                        .hash
                        .as_deref()
                        .and_then(|leaf| leaf.shared.get(group))
                        .and_then(|g| pick_member(g, topic));
                }
                "+" => node.plus.as_deref()?,
                _ => node.children.get(level)?,
            };
        }
        node.leaf.shared.get(group).and_then(|g| pick_member(g, topic))
    }
}

fn leaf_mut<'a, V>(mut node: &'a mut Node<V>, filter: &str) -> &'a mut Leaf<V> {
    for level in filter.split('/') {
        match level {
            "#" => return node.hash.get_or_insert_with(Default::default),
            "+" => node = node.plus.get_or_insert_with(Default::default),
            _ => node = node.children.entry(ByteString::from(level)).or_default(),
        }
    }
    &mut node.leaf
}

fn remove_from_leaf<V: Member>(leaf: &mut Leaf<V>, group: Option<&str>, key: u64) -> bool {
    match group {
        None => leaf.direct.remove(&key).is_some(),
        Some(group) => {
            let Some(g) = leaf.shared.get_mut(group) else {
                return false;
            };
            let Some(pos) = g.members.iter().position(|m| m.value.key() == key) else {
                return false;
            };
            g.members.remove(pos);
            if g.members.is_empty() {
                leaf.shared.remove(group);
            }
            true
        }
    }
}

fn remove_at<V: Member>(node: &mut Node<V>, levels: &[&str], group: Option<&str>, key: u64) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        return remove_from_leaf(&mut node.leaf, group, key);
    };
    match *first {
        "#" => {
            let Some(hash) = node.hash.as_mut() else { return false };
            let removed = remove_from_leaf(hash, group, key);
            if hash.is_empty() {
                node.hash = None;
            }
            removed
        }
        "+" => {
            let Some(plus) = node.plus.as_mut() else { return false };
            let removed = remove_at(plus, rest, group, key);
            if plus.is_empty() {
                node.plus = None;
            }
            removed
        }
        level => {
            let Some(child) = node.children.get_mut(level) else { return false };
            let removed = remove_at(child, rest, group, key);
            if child.is_empty() {
                node.children.remove(level);
            }
            removed
        }
    }
}

fn push_leaf<'a, V: Member>(leaf: &'a Leaf<V>, topic: &str, out: &mut Vec<Matched<'a, V>>) {
    out.extend(leaf.direct.values().map(|entry| Matched { entry, shared: false }));
    for group in leaf.shared.values() {
        if let Some(entry) = pick_member(group, topic) {
            out.push(Matched { entry, shared: true });
        }
    }
}

fn pick_member<'a, V: Member>(group: &'a SharedGroup<V>, topic: &str) -> Option<&'a Entry<V>> {
    let n = group.members.len();
    if n == 0 {
        return None;
    }
    let start = group.cursor.fetch_add(1, Ordering::Relaxed);
    let candidates =
        || (0..n).map(move |i| &group.members[(start + i) % n]).filter(|m| m.value.may_read(topic));
    candidates()
        .find(|m| m.value.is_online())
        // Nobody connected: queue on a persistent member rather than drop the message.
        .or_else(|| candidates().next())
}

fn collect<'a, V: Member>(
    node: &'a Node<V>,
    topic: &str,
    levels: &[&str],
    wildcards: bool,
    out: &mut Vec<Matched<'a, V>>,
) {
    match levels.split_first() {
        None => {
            push_leaf(&node.leaf, topic, out);
            // "a/#" also matches "a" (MQTT 5.0 §4.7.1.2).
            if let Some(hash) = &node.hash {
                push_leaf(hash, topic, out);
            }
        }
        Some((first, rest)) => {
            if let Some(child) = node.children.get(*first) {
                collect(child, topic, rest, true, out);
            }
            if wildcards {
                if let Some(plus) = &node.plus {
                    collect(plus, topic, rest, true, out);
                }
                if let Some(hash) = &node.hash {
                    push_leaf(hash, topic, out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::topic;
    use crate::core::types::QoS;

    #[derive(Debug, Clone)]
    struct M(u64, bool);
    impl Member for M {
        fn key(&self) -> u64 {
            self.0
        }
        fn is_online(&self) -> bool {
            self.1
        }
    }

    fn entry(id: u64) -> Entry<M> {
        Entry { value: M(id, true), options: SubscriptionOptions::with_qos(QoS::AtLeastOnce) }
    }

    fn matched_keys(trie: &Trie<M>, topic: &str) -> Vec<u64> {
        let mut out = Vec::new();
        trie.matches(topic, &mut out);
        let mut keys: Vec<u64> = out.iter().map(|m| m.entry.value.0).collect();
        keys.sort_unstable();
        keys
    }

    #[test]
    fn agrees_with_reference_matcher() {
        let filters =
            ["a/b", "a/+", "a/#", "#", "+/+", "/+", "+", "a/+/c", "$SYS/#", "+/b/#", "a//c", "/#", "a/b/"];
        let topics = ["a/b", "a", "a/b/c", "/x", "x", "$SYS/load", "a//c", "a/b/", "$other", "q/b", "q/b/z"];
        let mut trie = Trie::default();
        for (i, f) in filters.iter().enumerate() {
            trie.insert(&ByteString::from(*f), None, entry(i as u64));
        }
        for t in topics {
            let want: Vec<u64> = filters
                .iter()
                .enumerate()
                .filter(|(_, f)| topic::matches(f, t))
                .map(|(i, _)| i as u64)
                .collect();
            assert_eq!(matched_keys(&trie, t), want, "topic {t}");
        }
    }

    #[test]
    fn insert_replace_remove_and_prune() {
        let mut trie = Trie::default();
        let f = ByteString::from("a/+/c");
        assert!(!trie.insert(&f, None, entry(1)));
        assert!(trie.insert(&f, None, entry(1)), "same member and filter replaces");
        assert!(!trie.insert(&f, None, entry(2)));
        assert_eq!(trie.len(), 2);
        assert!(trie.remove("a/+/c", None, 1));
        assert!(!trie.remove("a/+/c", None, 1));
        assert!(!trie.remove("a/x/c", None, 2), "different filter");
        assert!(trie.remove("a/+/c", None, 2));
        assert!(trie.is_empty());
        assert!(trie.root.is_empty(), "empty branches are pruned");
    }

    #[test]
    fn shared_groups_round_robin_one_member_each() {
        let mut trie = Trie::default();
        let f = ByteString::from("jobs/#");
        let g = ByteString::from("workers");
        for id in 1..=3 {
            trie.insert(&f, Some(&g), entry(id));
        }
        trie.insert(&f, None, entry(9));
        let mut seen = Vec::new();
        for _ in 0..6 {
            let mut out = Vec::new();
            trie.matches("jobs/1", &mut out);
            assert_eq!(out.len(), 2, "one direct + one shared");
            let shared: Vec<u64> = out.iter().filter(|m| m.shared).map(|m| m.entry.value.0).collect();
            assert_eq!(shared.len(), 1);
            seen.push(shared[0]);
        }
        assert_eq!(seen, vec![1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn shared_groups_skip_offline_members() {
        let mut trie = Trie::default();
        let f = ByteString::from("t");
        let g = ByteString::from("g");
        trie.insert(&f, Some(&g), Entry { value: M(1, false), options: entry(1).options });
        trie.insert(&f, Some(&g), entry(2));
        for _ in 0..4 {
            assert_eq!(matched_keys(&trie, "t"), vec![2]);
        }
        assert!(trie.remove("t", Some("g"), 2));
        assert_eq!(matched_keys(&trie, "t"), vec![1], "offline member still queues when alone");
        assert!(trie.remove("t", Some("g"), 1));
        assert!(trie.root.is_empty());
    }

    #[test]
    fn dollar_topics_need_explicit_first_level() {
        let mut trie = Trie::default();
        trie.insert(&ByteString::from("#"), None, entry(1));
        trie.insert(&ByteString::from("+/x"), None, entry(2));
        trie.insert(&ByteString::from("$SYS/+"), None, entry(3));
        assert_eq!(matched_keys(&trie, "$SYS/x"), vec![3]);
        assert_eq!(matched_keys(&trie, "y/x"), vec![1, 2]);
    }

    #[test]
    fn pick_shared_finds_exactly_one_group_on_one_filter() {
        let mut trie = Trie::default();
        let g = ByteString::from("g");
        for (f, id) in [("jobs/#", 1), ("jobs/#", 2), ("jobs/+", 3), ("#", 4), ("a/b", 5)] {
            trie.insert(&ByteString::from(f), Some(&g), entry(id));
        }
        trie.insert(&ByteString::from("jobs/#"), None, entry(9));
        let picks: Vec<u64> =
            (0..4).filter_map(|_| trie.pick_shared("jobs/#", "g", "jobs/x")).map(|e| e.value.0).collect();
        assert_eq!(picks, vec![1, 2, 1, 2], "round robin among that group's members only");
        assert_eq!(trie.pick_shared("jobs/+", "g", "jobs/x").map(|e| e.value.0), Some(3));
        assert_eq!(trie.pick_shared("#", "g", "x").map(|e| e.value.0), Some(4));
        assert_eq!(trie.pick_shared("a/b", "g", "a/b").map(|e| e.value.0), Some(5));
        assert!(trie.pick_shared("jobs/#", "other", "jobs/x").is_none());
        assert!(trie.pick_shared("nope/#", "g", "nope/x").is_none());
        assert!(trie.pick_shared("a", "g", "a").is_none());
    }
}
