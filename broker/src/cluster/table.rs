//! The routes of the live peers: which peers need a message published here, and which node
//! serves each matching shared group.
//!
//! One subscription trie (the core's) holds every peer's filters, keyed by a per-peer number,
//! so a publish is matched once whatever the number of peers. A second trie holds the shared
//! groups of every node, this one included (node key 0), one entry per (node, group, filter).
//! Generic over the per-peer handle `T` (the link's queue) so it is tested without sockets.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use rustc_hash::FxHashMap;

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

/// Node key of this node in the shared trie.
const SELF: u64 = 0;

/// A shared group on one filter, as `(group, filter)`.
pub type Group = (ByteString, ByteString);

/// One live peer.
#[derive(Debug)]
pub struct Peer<T> {
    key: u64,
    /// Filters it announced (valid ones only).
    filters: BTreeSet<String>,
    /// Shared groups it announced, with their entry ids in the shared trie.
    groups: BTreeMap<Group, u64>,
    /// The per-peer handle.
    pub handle: T,
}

/// Where a message goes: the peers (each once) with the shared groups each serves for it, and
/// the shared groups this node serves.
#[derive(Debug)]
pub struct Plan<'a, T> {
    /// Peers to send to, with the groups picked on them.
    pub peers: Vec<(&'a Peer<T>, Vec<Group>)>,
    /// Groups picked on this node.
    pub local: Vec<Group>,
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
    /// Shared groups of every node; members are entry ids.
    shared: Trie<PeerKey>,
    /// Entry id → (node key, group).
    entries: FxHashMap<u64, (u64, Group)>,
    /// This node's groups: entry id and local subscription count.
    local: BTreeMap<Group, (u64, usize)>,
    next_key: u64,
    /// Spreads a group's messages over its nodes (round robin when one group dominates).
    cursor: AtomicUsize,
}

impl<T> Default for PeerTable<T> {
    fn default() -> Self {
        PeerTable {
            peers: BTreeMap::new(),
            trie: Trie::default(),
            shared: Trie::default(),
            entries: FxHashMap::default(),
            local: BTreeMap::new(),
            next_key: 1,
            cursor: AtomicUsize::new(0),
        }
    }
}

fn valid(peer: &str, filter: &str) -> bool {
    match topic::validate_filter(filter, usize::MAX) {
        Ok(()) => true,
        Err(err) => {
            tracing::warn!(peer, filter, "ignoring an invalid route from a peer: {err}");
            false
        }
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
        groups: impl IntoIterator<Item = (&'a str, &'a str)>,
        handle: impl FnOnce() -> T,
    ) -> bool {
        let wanted: BTreeSet<String> =
            filters.into_iter().filter(|f| valid(name, f)).map(str::to_string).collect();
        let wanted_groups: BTreeSet<Group> = groups
            .into_iter()
            .filter(|(_, f)| valid(name, f))
            .map(|(g, f)| (ByteString::from(g.to_string()), ByteString::from(f.to_string())))
            .collect();
        let new = !self.peers.contains_key(name);
        if new {
            let key = self.next_key;
            self.next_key += 1;
            let peer = Peer { key, filters: BTreeSet::new(), groups: BTreeMap::new(), handle: handle() };
            self.peers.insert(name.to_string(), peer);
        }
        let Some(peer) = self.peers.get_mut(name) else { return new };
        let gone: Vec<Group> = peer.groups.keys().filter(|g| !wanted_groups.contains(*g)).cloned().collect();
        for group in gone {
            if let Some(id) = peer.groups.remove(&group) {
                self.shared.remove(&group.1, None, id);
                self.entries.remove(&id);
            }
        }
        for group in wanted_groups {
            if !peer.groups.contains_key(&group) {
                let id = self.next_key;
                self.next_key += 1;
                let entry =
                    Entry { value: PeerKey(id), options: SubscriptionOptions::with_qos(QoS::AtMostOnce) };
                self.shared.insert(&group.1, None, entry);
                self.entries.insert(id, (peer.key, group.clone()));
                peer.groups.insert(group, id);
            }
        }
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
        for (group, id) in &peer.groups {
            self.shared.remove(&group.1, None, *id);
            self.entries.remove(id);
        }
        Some(peer.handle)
    }

    /// A local session joined `group` (reference counted: the first one adds this node as a
    /// candidate for the group).
    pub fn local_group_added(&mut self, group: Group) {
        if let Some((_, count)) = self.local.get_mut(&group) {
            *count += 1;
            return;
        }
        let id = self.next_key;
        self.next_key += 1;
        let entry = Entry { value: PeerKey(id), options: SubscriptionOptions::with_qos(QoS::AtMostOnce) };
        self.shared.insert(&group.1, None, entry);
        self.entries.insert(id, (SELF, group.clone()));
        self.local.insert(group, (id, 1));
    }

    /// A local session left `group` (the last one removes this node as a candidate).
    pub fn local_group_removed(&mut self, group: &Group) {
        let Some((id, count)) = self.local.get_mut(group) else { return };
        *count -= 1;
        if *count == 0 {
            let id = *id;
            self.local.remove(group);
            self.shared.remove(&group.1, None, id);
            self.entries.remove(&id);
        }
    }

    /// Where a message on `topic` goes: the peers with a matching filter (every peer with
    /// `everyone`, for retained messages), plus, for each matching shared group, the one node
    /// picked to serve it (added to the peers when it is a peer).
    pub fn plan(&self, topic: &str, everyone: bool) -> Plan<'_, T> {
        let mut peers: Vec<(&Peer<T>, Vec<Group>)> = if everyone {
            self.peers.values().map(|p| (p, Vec::new())).collect()
        } else {
            self.matching(topic).into_iter().map(|p| (p, Vec::new())).collect()
        };
        let mut local = Vec::new();
        let mut matches = Vec::new();
        self.shared.matches(topic, &mut matches);
        if matches.is_empty() {
            return Plan { peers, local };
        }
        // Candidate nodes per group, in a stable order.
        let mut candidates: BTreeMap<&Group, Vec<u64>> = BTreeMap::new();
        for m in &matches {
            if let Some((node, group)) = self.entries.get(&m.entry.value.0) {
                candidates.entry(group).or_default().push(*node);
            }
        }
        for (group, mut nodes) in candidates {
            nodes.sort_unstable();
            nodes.dedup();
            let pick = nodes[self.cursor.fetch_add(1, Ordering::Relaxed) % nodes.len()];
            if pick == SELF {
                local.push(group.clone());
            } else if let Some(slot) = peers.iter_mut().find(|(p, _)| p.key == pick) {
                slot.1.push(group.clone());
            } else if let Some(peer) = self.peers.values().find(|p| p.key == pick) {
                peers.push((peer, vec![group.clone()]));
            }
        }
        Plan { peers, local }
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
        assert!(table.sync("b", ["a/+", "a/#", "x"], [], || 2));
        assert!(table.sync("c", ["a/b"], [], || 3));
        assert_eq!(names(&table, "a/b"), vec![2, 3], "b matched by two filters, once");
        assert_eq!(names(&table, "x"), vec![2]);
        assert!(names(&table, "y").is_empty());
        // A delta: b drops a/+ and a/#, adds y; the existing handle is kept.
        assert!(!table.sync("b", ["x", "y"], [], || 99));
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
        table.sync("b", ["#", "bad/#/x", "a/b#"], [], || 2);
        assert_eq!(table.get("b").map(Peer::route_count), Some(1));
        assert_eq!(names(&table, "any/topic"), vec![2]);
        assert!(names(&table, "$SYS/x").is_empty(), "# does not match $ topics");
        table.sync("c", ["$app/+"], [], || 3);
        assert_eq!(names(&table, "$app/x"), vec![3]);
    }

    fn g(group: &str, filter: &str) -> Group {
        (ByteString::from(group.to_string()), ByteString::from(filter.to_string()))
    }

    /// (peer handle, groups) per peer, sorted, and the local groups.
    fn plan(table: &PeerTable<u8>, topic: &str, everyone: bool) -> (Vec<(u8, Vec<Group>)>, Vec<Group>) {
        let plan = table.plan(topic, everyone);
        let mut peers: Vec<(u8, Vec<Group>)> =
            plan.peers.iter().map(|(p, g)| (p.handle, g.clone())).collect();
        peers.sort();
        (peers, plan.local)
    }

    #[test]
    fn each_shared_group_is_served_by_exactly_one_node() {
        let mut table = PeerTable::default();
        table.sync("b", [], [("w", "jobs/#")], || 2);
        table.sync("c", ["jobs/x"], [("w", "jobs/#"), ("other", "jobs/+")], || 3);
        table.local_group_added(g("w", "jobs/#"));
        let mut served = BTreeMap::new();
        for _ in 0..30 {
            let (peers, local) = plan(&table, "jobs/x", false);
            let mut w_servers = 0;
            for (handle, groups) in &peers {
                if groups.contains(&g("w", "jobs/#")) {
                    w_servers += 1;
                    *served.entry(*handle).or_insert(0) += 1;
                }
                if *handle == 2 {
                    assert!(!groups.is_empty(), "b is only sent what it serves a group for");
                }
            }
            if local.contains(&g("w", "jobs/#")) {
                w_servers += 1;
                *served.entry(0).or_insert(0) += 1;
            }
            assert_eq!(w_servers, 1, "group w served once across the cluster");
            assert!(
                peers.iter().any(|(h, gs)| *h == 3 && gs.contains(&g("other", "jobs/+"))),
                "only c has `other`"
            );
            assert!(peers.iter().any(|(h, _)| *h == 3), "c has a direct route");
        }
        assert_eq!(served.len(), 3, "w's messages spread over the three nodes: {served:?}");
        // No member anywhere for this topic: no group picks.
        assert_eq!(plan(&table, "other/x", false), (vec![], vec![]));
        // The local group goes when its last local member goes; a dead peer's groups go with it.
        table.local_group_added(g("w", "jobs/#"));
        table.local_group_removed(&g("w", "jobs/#"));
        assert!((0..10).any(|_| !plan(&table, "jobs/x", false).1.is_empty()), "one local member left");
        table.local_group_removed(&g("w", "jobs/#"));
        table.remove("b");
        for _ in 0..10 {
            let (peers, local) = plan(&table, "jobs/x", false);
            assert!(local.is_empty());
            assert_eq!(peers, vec![(3, vec![g("other", "jobs/+"), g("w", "jobs/#")])]);
        }
        // Retained: every peer, groups still picked once.
        table.sync("b", [], [], || 2);
        let (peers, _) = plan(&table, "jobs/x", true);
        assert_eq!(peers.iter().map(|(h, _)| *h).collect::<Vec<_>>(), vec![2, 3]);
    }
}
