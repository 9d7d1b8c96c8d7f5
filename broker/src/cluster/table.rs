//! The routes of the live peers: which peers need a message published here.
//!
//! One subscription trie (the core's) holds every peer's filters, keyed by a per-peer number,
//! so a publish is matched once whatever the number of peers. Generic over the per-peer
//! handle `T` (the link's queue) so it is tested without sockets.

use std::collections::{BTreeMap, BTreeSet};

use crate::core::topic;
use crate::core::trie::{Entry, Member, Trie};
use crate::core::types::{ByteString, QoS, SubscriptionOptions};

/// A peer as a trie member.
#[derive(Debug, Clone, Copy)]
struct PeerKey(u64);

impl Member for PeerKey {
    fn key(&self) -> u64 {
        self.0
    }

    fn is_online(&self) -> bool {
        true
    }
}

/// One live peer.
#[derive(Debug)]
pub struct Peer<T> {
    key: u64,
    /// Filters it announced (valid ones only).
    filters: BTreeSet<String>,
    /// The per-peer handle.
    pub handle: T,
}

impl<T> Peer<T> {
    /// Number of filters announced.
    pub fn route_count(&self) -> usize {
        self.filters.len()
    }
}

/// Live peers by node name, with their routes.
pub struct PeerTable<T> {
    peers: BTreeMap<String, Peer<T>>,
    trie: Trie<PeerKey>,
    next_key: u64,
}

impl<T> Default for PeerTable<T> {
    fn default() -> Self {
        PeerTable { peers: BTreeMap::new(), trie: Trie::default(), next_key: 1 }
    }
}

impl<T> PeerTable<T> {
    /// Adds `name` with `handle` (or keeps the existing peer) and makes its routes exactly
    /// `filters`: only the difference touches the trie. Invalid filters (a peer's gossip is
    /// input) are skipped with a warning. Returns true when the peer is new.
    pub fn sync<'a>(
        &mut self,
        name: &str,
        filters: impl IntoIterator<Item = &'a str>,
        handle: impl FnOnce() -> T,
    ) -> bool {
        let wanted: BTreeSet<String> = filters
            .into_iter()
            .filter(|f| match topic::validate_filter(f, usize::MAX) {
                Ok(()) => true,
                Err(err) => {
                    tracing::warn!(peer = name, filter = f, "ignoring an invalid route from a peer: {err}");
                    false
                }
            })
            .map(str::to_string)
            .collect();
        let new = !self.peers.contains_key(name);
        if new {
            let key = self.next_key;
            self.next_key += 1;
            self.peers.insert(name.to_string(), Peer { key, filters: BTreeSet::new(), handle: handle() });
        }
        let Some(peer) = self.peers.get_mut(name) else { return new };
        let options = SubscriptionOptions::with_qos(QoS::AtMostOnce);
        for gone in peer.filters.difference(&wanted) {
            self.trie.remove(gone, None, peer.key);
        }
        for added in wanted.difference(&peer.filters) {
            let entry = Entry { value: PeerKey(peer.key), options };
            self.trie.insert(&ByteString::from(added.clone()), None, entry);
        }
        peer.filters = wanted;
        new
    }

    /// Drops a peer and its routes; returns its handle.
    pub fn remove(&mut self, name: &str) -> Option<T> {
        let peer = self.peers.remove(name)?;
        for filter in &peer.filters {
            self.trie.remove(filter, None, peer.key);
        }
        Some(peer.handle)
    }

    /// The peers whose filters match `topic`, each once.
    pub fn matching(&self, topic: &str) -> Vec<&Peer<T>> {
        let mut matches = Vec::new();
        self.trie.matches(topic, &mut matches);
        let mut keys: Vec<u64> = matches.iter().map(|m| m.entry.value.0).collect();
        keys.sort_unstable();
        keys.dedup();
        self.peers.values().filter(|p| keys.binary_search(&p.key).is_ok()).collect()
    }

    /// Every live peer.
    pub fn all(&self) -> impl Iterator<Item = (&String, &Peer<T>)> {
        self.peers.iter()
    }

    /// Looks up a peer.
    pub fn get(&self, name: &str) -> Option<&Peer<T>> {
        self.peers.get(name)
    }

    /// Peer names.
    pub fn names(&self) -> Vec<String> {
        self.peers.keys().cloned().collect()
    }

    /// Total routes in the trie (for tests and the admin view).
    pub fn route_count(&self) -> usize {
        self.trie.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(table: &PeerTable<u8>, topic: &str) -> Vec<u8> {
        let mut got: Vec<u8> = table.matching(topic).iter().map(|p| p.handle).collect();
        got.sort();
        got
    }

    #[test]
    fn routes_follow_gossip_and_each_peer_matches_once() {
        let mut table = PeerTable::default();
        assert!(table.sync("b", ["a/+", "a/#", "x"], || 2));
        assert!(table.sync("c", ["a/b"], || 3));
        assert_eq!(names(&table, "a/b"), vec![2, 3], "b matched by two filters, once");
        assert_eq!(names(&table, "x"), vec![2]);
        assert!(names(&table, "y").is_empty());
        // A delta: b drops a/+ and a/#, adds y; the existing handle is kept.
        assert!(!table.sync("b", ["x", "y"], || 99));
        assert_eq!(names(&table, "a/b"), vec![3]);
        assert_eq!(names(&table, "y"), vec![2]);
        assert_eq!(table.route_count(), 3);
        assert_eq!(table.remove("c"), Some(3));
        assert!(names(&table, "a/b").is_empty(), "a dead peer's routes are gone");
        assert_eq!(table.route_count(), 2);
        assert_eq!(table.remove("c"), None);
    }

    #[test]
    fn wildcards_keep_mqtt_semantics_and_bad_filters_are_skipped() {
        let mut table = PeerTable::default();
        table.sync("b", ["#", "bad/#/x", "a/b#"], || 2);
        assert_eq!(table.get("b").map(Peer::route_count), Some(1));
        assert_eq!(names(&table, "any/topic"), vec![2]);
        assert!(names(&table, "$SYS/x").is_empty(), "# does not match $ topics");
        table.sync("c", ["$app/+"], || 3);
        assert_eq!(names(&table, "$app/x"), vec![3]);
    }
}
