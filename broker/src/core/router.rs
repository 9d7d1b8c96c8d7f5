//! Routing: which sessions get a published message, at which QoS.
//!
//! Subscriptions live in tries sharded by the filter's first level, behind read-write locks,
//! so publishers on every worker match concurrently and a SUBSCRIBE only blocks publishes
//! to one shard. Filters starting with a wildcard live in their own trie, consulted for
//! every topic except `$` topics.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard};

use rustc_hash::FxHasher;

use super::hooks::{RouteWatch, SharedMode};
use super::session::Session;
use super::topic::SubscriptionFilter;
use super::trie::{Entry, Matched, Member, Trie};
use super::types::{Delivery, Message, SubscriptionOptions};

const SHARDS: usize = 16;

type SessionTrie = Trie<Arc<Session>>;

/// The subscription index.
pub struct Router {
    shards: Box<[RwLock<SessionTrie>]>,
    wildcard_root: RwLock<SessionTrie>,
    /// Told about added and removed subscriptions (clustering), under the shard's lock so
    /// the order of changes to one filter is kept.
    watch: OnceLock<Arc<dyn RouteWatch>>,
}

/// Whether the watcher hears of this session's subscriptions: not for a bridge's internal
/// session, which serves this node's clients only (every node runs its own bridge).
fn announced(session: &Session) -> bool {
    !session.client_id.starts_with(crate::bridge::SESSION_PREFIX)
}

impl Default for Router {
    fn default() -> Self {
        Router {
            shards: (0..SHARDS).map(|_| RwLock::new(Trie::default())).collect(),
            wildcard_root: RwLock::new(Trie::default()),
            watch: OnceLock::new(),
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Router {
    fn shard_for_filter(&self, filter: &str) -> &RwLock<SessionTrie> {
        let first = filter.split('/').next().unwrap_or_default();
        if first == "+" || first == "#" { &self.wildcard_root } else { self.shard_for_level(first) }
    }

    fn shard_for_level(&self, level: &str) -> &RwLock<SessionTrie> {
        let mut hasher = FxHasher::default();
        level.hash(&mut hasher);
        &self.shards[(hasher.finish() as usize) % SHARDS]
    }

    /// Installs the route watcher (once; later calls are ignored). Install it before any
    /// subscription exists (before recovery), or those are never reported.
    pub fn set_watch(&self, watch: Arc<dyn RouteWatch>) {
        let _ = self.watch.set(watch);
    }

    /// Adds or replaces a subscription; returns true when it replaced one.
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        filter: &SubscriptionFilter,
        options: SubscriptionOptions,
    ) -> bool {
        let mut trie = self.shard_for_filter(&filter.filter).write().unwrap_or_else(|p| p.into_inner());
        let replaced =
            trie.insert(&filter.filter, filter.group.as_ref(), Entry { value: session.clone(), options });
        if !replaced
            && announced(session)
            && let Some(watch) = self.watch.get()
        {
            watch.added(filter);
        }
        replaced
    }

    /// Removes a subscription; returns whether it existed.
    pub fn unsubscribe(&self, session: &Arc<Session>, filter: &SubscriptionFilter) -> bool {
        let mut trie = self.shard_for_filter(&filter.filter).write().unwrap_or_else(|p| p.into_inner());
        let removed = trie.remove(&filter.filter, filter.group.as_deref(), session.key());
        if removed
            && announced(session)
            && let Some(watch) = self.watch.get()
        {
            watch.removed(filter);
        }
        removed
    }

    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        self.shards.iter().chain(std::iter::once(&self.wildcard_root)).map(|s| read(s).len()).sum()
    }

    /// True when nobody is subscribed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `deliver` once per session that should receive `message`, with the delivery
    /// computed from its subscriptions: overlapping subscriptions of one session merge into
    /// one delivery at the highest granted QoS carrying every Subscription Identifier (MQTT
    /// 5.0 §3.3.4); a shared-group pick is always its own delivery; No Local subscriptions
    /// skip the publisher. Runs under shared locks: `deliver` must only take session locks.
    pub fn route(&self, message: &Arc<Message>, deliver: impl FnMut(&Arc<Session>, Delivery)) {
        self.route_with(message, &SharedMode::Local, deliver);
    }

    /// [`Router::route`], with the shared groups served chosen by `shared` (a cluster serves
    /// each group on one node only).
    pub fn route_with(
        &self,
        message: &Arc<Message>,
        shared: &SharedMode,
        mut deliver: impl FnMut(&Arc<Session>, Delivery),
    ) {
        let first = message.topic.split('/').next().unwrap_or_default();
        let shard = read(self.shard_for_level(first));
        let wild = (!message.topic.starts_with('$')).then(|| read(&self.wildcard_root));

        let mut matches: Vec<Matched<'_, Arc<Session>>> = Vec::new();
        shard.matches(&message.topic, &mut matches);
        if let Some(wild) = &wild {
            wild.matches(&message.topic, &mut matches);
        }
        if let SharedMode::Only(groups) = shared {
            matches.retain(|m| !m.shared);
            for (group, filter) in groups {
                // A filter matching the topic starts with the topic's first level (this shard)
                // or with a wildcard (the wildcard trie, absent for `$` topics).
                let trie = if filter.starts_with(['+', '#']) { wild.as_deref() } else { Some(&*shard) };
                if let Some(entry) = trie.and_then(|t| t.pick_shared(filter, group, &message.topic)) {
                    matches.push(Matched { entry, shared: true });
                }
            }
        }
        // No Local, and the subscriber's ACL read rules (shared picks were already made among
        // members that may read).
        matches.retain(|m| {
            !(m.entry.options.no_local && m.entry.value.id == message.origin)
                && (m.shared || m.entry.value.may_read(&message.topic))
        });
        if matches.is_empty() {
            return;
        }
        // Shared picks first (each its own delivery), then direct matches grouped by session.
        matches.sort_unstable_by_key(|m| (!m.shared, m.entry.value.id));
        let mut i = 0;
        while i < matches.len() {
            let m = &matches[i];
            let session = &m.entry.value;
            let mut qos = message.qos.min(m.entry.options.qos);
            let mut retain = message.retain && m.entry.options.retain_as_published;
            let mut ids: Vec<_> = m.entry.options.subscription_id.into_iter().collect();
            let mut j = i + 1;
            if !m.shared {
                while j < matches.len() && matches[j].entry.value.id == session.id {
                    let o = &matches[j].entry.options;
                    qos = qos.max(message.qos.min(o.qos));
                    retain |= message.retain && o.retain_as_published;
                    ids.extend(o.subscription_id);
                    j += 1;
                }
            }
            deliver(session, Delivery { message: message.clone(), qos, retain, subscription_ids: ids });
            i = j;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;
    use crate::core::session::{Expiry, QueueLimits};
    use crate::core::topic::parse_subscription;
    use crate::core::types::{ByteString, QoS};

    fn session(id: u64) -> Arc<Session> {
        let s = Arc::new(Session::new(
            id,
            id,
            ByteString::from(format!("c{id}")),
            Expiry::Never,
            QueueLimits { max_messages: 10, max_bytes: 0, max_inflight: 10 },
        ));
        s.set_online(true);
        s
    }

    fn sub(router: &Router, s: &Arc<Session>, filter: &str, qos: QoS, id: Option<u32>) {
        let f = parse_subscription(&ByteString::from(filter), 32).unwrap();
        let opts = SubscriptionOptions {
            subscription_id: id.and_then(NonZeroU32::new),
            ..SubscriptionOptions::with_qos(qos)
        };
        router.subscribe(s, &f, opts);
    }

    fn route(router: &Router, topic: &str, qos: QoS, origin: u64) -> Vec<(u64, QoS, Vec<u32>)> {
        let mut msg = Message::new(topic.to_string(), "x", qos, true);
        msg.origin = origin;
        let mut got = Vec::new();
        router.route(&Arc::new(msg), |s, d| {
            got.push((s.id, d.qos, d.subscription_ids.iter().map(|i| i.get()).collect()));
        });
        got.sort();
        got
    }

    #[test]
    fn overlapping_subscriptions_merge_to_highest_qos_with_all_ids() {
        let router = Router::default();
        let a = session(1);
        sub(&router, &a, "TopicA/#", QoS::ExactlyOnce, Some(2));
        sub(&router, &a, "TopicA/+", QoS::AtLeastOnce, Some(1));
        sub(&router, &a, "#", QoS::AtMostOnce, None);
        let got = route(&router, "TopicA/C", QoS::ExactlyOnce, 0);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, QoS::ExactlyOnce);
        let mut ids = got[0].2.clone();
        ids.sort();
        assert_eq!(ids, vec![1, 2]);
        assert_eq!(
            route(&router, "TopicA/C", QoS::AtLeastOnce, 0)[0].1,
            QoS::AtLeastOnce,
            "capped by message QoS"
        );
    }

    #[test]
    fn granted_qos_caps_delivery() {
        let router = Router::default();
        let a = session(1);
        sub(&router, &a, "t", QoS::AtMostOnce, None);
        assert_eq!(route(&router, "t", QoS::ExactlyOnce, 0)[0].1, QoS::AtMostOnce);
    }

    #[test]
    fn no_local_skips_the_publisher_only() {
        let router = Router::default();
        let (a, b) = (session(1), session(2));
        let f = parse_subscription(&ByteString::from("t"), 32).unwrap();
        let opts = SubscriptionOptions { no_local: true, ..SubscriptionOptions::with_qos(QoS::AtLeastOnce) };
        router.subscribe(&a, &f, opts);
        router.subscribe(&b, &f, opts);
        assert_eq!(route(&router, "t", QoS::AtLeastOnce, 1).iter().map(|g| g.0).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn shared_and_direct_are_separate_deliveries() {
        let router = Router::default();
        let a = session(1);
        sub(&router, &a, "$share/g/t/#", QoS::AtLeastOnce, None);
        sub(&router, &a, "t/#", QoS::AtLeastOnce, None);
        assert_eq!(route(&router, "t/x", QoS::AtLeastOnce, 0).len(), 2);
    }

    #[test]
    fn wildcard_root_filters_skip_dollar_topics_and_shards_agree() {
        let router = Router::default();
        let a = session(1);
        sub(&router, &a, "#", QoS::AtMostOnce, None);
        sub(&router, &a, "$SYS/#", QoS::AtLeastOnce, None);
        assert_eq!(route(&router, "$SYS/broker/uptime", QoS::AtLeastOnce, 0)[0].1, QoS::AtLeastOnce);
        assert_eq!(route(&router, "x/y", QoS::AtLeastOnce, 0)[0].1, QoS::AtMostOnce);
        assert_eq!(router.len(), 2);
        let f = parse_subscription(&ByteString::from("#"), 32).unwrap();
        assert!(router.unsubscribe(&a, &f));
        assert!(route(&router, "x/y", QoS::AtLeastOnce, 0).is_empty());
    }
}
