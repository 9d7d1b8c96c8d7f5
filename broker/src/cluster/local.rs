//! This node's subscription filters, reference counted, as the gossip keys it publishes.

use std::collections::BTreeSet;
use std::sync::Mutex;

use rustc_hash::FxHashMap;
use tokio::sync::Notify;

use super::keys::{route_key, shared_key};
use crate::core::topic::SubscriptionFilter;

/// Counts sessions per distinct gossip key (`r:<filter>` for plain subscriptions,
/// `s:<group>/<filter>` for shared ones); the gossip task publishes the keys with a count above
/// zero.
#[derive(Default)]
pub struct LocalRoutes {
    counts: Mutex<FxHashMap<String, usize>>,
    /// Woken when the set of keys changed (coalesces bursts into one gossip update).
    pub(super) changed: Notify,
}

impl LocalRoutes {
    /// The route keys this node needs, sorted.
    pub fn keys(&self) -> BTreeSet<String> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    /// Applies one subscription change; returns true when the key appeared or disappeared.
    pub(super) fn change(&self, filter: &SubscriptionFilter, delta: isize) -> bool {
        let key = match &filter.group {
            None => route_key(&filter.filter),
            Some(group) => shared_key(group, &filter.filter),
        };
        let Some(key) = key else { return false };
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(key).or_default();
        let before = *count;
        *count = count.saturating_add_signed(delta);
        let after = *count;
        if after == 0 {
            counts.retain(|_, c| *c > 0);
        }
        drop(counts);
        let flipped = (before == 0) != (after == 0);
        if flipped {
            self.changed.notify_one();
        }
        flipped
    }
}

#[cfg(test)]
impl crate::core::hooks::RouteWatch for LocalRoutes {
    fn added(&self, filter: &SubscriptionFilter) {
        self.change(filter, 1);
    }

    fn removed(&self, filter: &SubscriptionFilter) {
        self.change(filter, -1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::hooks::RouteWatch;
    use crate::core::topic::parse_subscription;
    use crate::core::types::ByteString;

    fn f(s: &str) -> SubscriptionFilter {
        parse_subscription(&ByteString::from(s.to_string()), 32).unwrap()
    }

    #[test]
    fn many_sessions_on_one_filter_are_one_key() {
        let routes = LocalRoutes::default();
        for _ in 0..10_000 {
            routes.added(&f("fleet/+/temp"));
        }
        routes.added(&f("$share/g/jobs/#"));
        routes.added(&f("$SYS/#"));
        let keys: Vec<String> = routes.keys().into_iter().collect();
        assert_eq!(keys, vec!["r:fleet/+/temp".to_string(), "s:g/jobs/#".to_string()]);
        for _ in 0..9_999 {
            routes.removed(&f("fleet/+/temp"));
        }
        assert!(routes.keys().contains("r:fleet/+/temp"), "one session still subscribed");
        routes.removed(&f("fleet/+/temp"));
        routes.removed(&f("$share/g/jobs/#"));
        assert!(routes.keys().is_empty());
        routes.removed(&f("never/added"));
        assert!(routes.keys().is_empty(), "an unmatched removal never goes negative");
    }
}
