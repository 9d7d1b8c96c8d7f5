//! Retained messages: one per topic, found by filter at subscribe time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use rustc_hash::FxHashMap;

use super::types::{ByteString, Message};

#[derive(Default)]
struct Node {
    children: FxHashMap<ByteString, Node>,
    message: Option<Arc<Message>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.message.is_none()
    }
}

/// The retained message store (in memory; the durable store mirrors it).
#[derive(Default)]
pub struct Retained {
    root: RwLock<Node>,
    count: AtomicUsize,
}

impl Retained {
    /// Stores `message` for its topic, or clears the topic when the payload is empty
    /// (MQTT 5.0 §3.3.1.3). Returns true when something was stored or removed.
    pub fn set(&self, message: Arc<Message>) -> bool {
        let mut root = self.root.write().unwrap_or_else(|p| p.into_inner());
        let levels: Vec<&str> = message.topic.split('/').collect();
        if message.payload.is_empty() {
            let removed = remove(&mut root, &levels);
            if removed {
                self.count.fetch_sub(1, Ordering::Relaxed);
            }
            return removed;
        }
        let mut node = &mut *root;
        for level in levels {
            node = node.children.entry(ByteString::from(level)).or_default();
        }
        if node.message.replace(message).is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// True when nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the unexpired retained messages matching `filter` (a plain filter, without a
    /// `$share` prefix).
    pub fn matching(&self, filter: &str, now: Instant, out: &mut Vec<Arc<Message>>) {
        let root = self.root.read().unwrap_or_else(|p| p.into_inner());
        let levels: Vec<&str> = filter.split('/').collect();
        collect(&root, &levels, true, now, out);
    }

    /// Drops expired messages; returns how many.
    pub fn purge_expired(&self, now: Instant) -> usize {
        let mut root = self.root.write().unwrap_or_else(|p| p.into_inner());
        let purged = purge(&mut root, now);
        self.count.fetch_sub(purged, Ordering::Relaxed);
        purged
    }

    /// Every retained message (for persistence and tests).
    pub fn all(&self) -> Vec<Arc<Message>> {
        let mut out = Vec::new();
        let root = self.root.read().unwrap_or_else(|p| p.into_inner());
        everything(&root, true, Instant::now(), &mut out);
        out
    }
}

fn remove(node: &mut Node, levels: &[&str]) -> bool {
    match levels.split_first() {
        None => node.message.take().is_some(),
        Some((first, rest)) => {
            let Some(child) = node.children.get_mut(*first) else { return false };
            let removed = remove(child, rest);
            if child.is_empty() {
                node.children.remove(*first);
            }
            removed
        }
    }
}

fn purge(node: &mut Node, now: Instant) -> usize {
    let mut purged = 0;
    if node.message.as_ref().is_some_and(|m| m.is_expired(now)) {
        node.message = None;
        purged += 1;
    }
    node.children.retain(|_, child| {
        purged += purge(child, now);
        !child.is_empty()
    });
    purged
}

fn push(node: &Node, now: Instant, out: &mut Vec<Arc<Message>>) {
    if let Some(m) = &node.message
        && !m.is_expired(now)
    {
        out.push(m.clone());
    }
}

/// The node and all its descendants; `root` skips `$` topics for wildcard filters.
fn everything(node: &Node, root: bool, now: Instant, out: &mut Vec<Arc<Message>>) {
    push(node, now, out);
    for (level, child) in &node.children {
        if root && level.starts_with('$') {
            continue;
        }
        everything(child, false, now, out);
    }
}

fn collect(node: &Node, levels: &[&str], root: bool, now: Instant, out: &mut Vec<Arc<Message>>) {
    let Some((first, rest)) = levels.split_first() else {
        push(node, now, out);
        return;
    };
    match *first {
        "#" => everything(node, root, now, out),
        "+" => {
            for (level, child) in &node.children {
                if root && level.starts_with('$') {
                    continue;
                }
                collect(child, rest, false, now, out);
            }
        }
        level => {
            if let Some(child) = node.children.get(level) {
                collect(child, rest, false, now, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::core::topic;
    use crate::core::types::QoS;

    fn msg(topic: &str, payload: &str) -> Arc<Message> {
        Arc::new(Message::new(topic.to_string(), payload.to_string(), QoS::AtLeastOnce, true))
    }

    fn topics(r: &Retained, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        r.matching(filter, Instant::now(), &mut out);
        let mut t: Vec<String> = out.iter().map(|m| m.topic.to_string()).collect();
        t.sort();
        t
    }

    #[test]
    fn set_replace_clear() {
        let r = Retained::default();
        assert!(r.set(msg("a/b", "1")));
        assert!(r.set(msg("a/b", "2")));
        assert_eq!(r.len(), 1);
        let mut out = Vec::new();
        r.matching("a/b", Instant::now(), &mut out);
        assert_eq!(&out[0].payload[..], b"2");
        assert!(r.set(msg("a/b", "")));
        assert!(!r.set(msg("a/b", "")), "clearing twice removes nothing");
        assert!(r.is_empty());
        assert!(r.root.read().unwrap().is_empty(), "branches pruned");
    }

    #[test]
    fn filters_agree_with_reference_matcher() {
        let r = Retained::default();
        let all = ["TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA", "$SYS/x", "a/b/c", "a"];
        for t in all {
            r.set(msg(t, "x"));
        }
        for filter in ["#", "+", "+/+", "TopicA/+", "TopicA/#", "/#", "$SYS/#", "a/#", "+/b/+", "+/C"] {
            let mut want: Vec<String> =
                all.iter().filter(|t| topic::matches(filter, t)).map(|t| t.to_string()).collect();
            want.sort();
            assert_eq!(topics(&r, filter), want, "filter {filter}");
        }
    }

    #[test]
    fn expired_messages_are_hidden_and_purged() {
        let r = Retained::default();
        let mut m = Message::new("t", "x", QoS::AtMostOnce, true);
        m.expires_at = Some(Instant::now() - Duration::from_millis(1));
        r.set(Arc::new(m));
        r.set(msg("u", "y"));
        assert_eq!(topics(&r, "#"), vec!["u"]);
        assert_eq!(r.purge_expired(Instant::now()), 1);
        assert_eq!(r.len(), 1);
    }
}
