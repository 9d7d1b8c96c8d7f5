//! What a node publishes in its gossip state, and how those keys are read back.
//!
//! One key per distinct subscription filter (`r:<filter>`, empty value), so a filter shared by
//! 10,000 local sessions is one key, and a subscription change that does not add or remove a
//! distinct filter costs no gossip at all. Chitchat carries only changed keys (deltas).

/// Prefix of route keys.
pub const ROUTE_PREFIX: &str = "r:";
/// Prefix of shared-subscription keys: `s:<group>/<filter>` (a group name has no `/`).
pub const SHARED_PREFIX: &str = "s:";
/// The node's inter-node link address, `host:port`.
pub const LINK_KEY: &str = "link";
/// Set by a node that is shutting down, so peers drop it at once instead of waiting for the
/// failure detector.
pub const LEFT_KEY: &str = "left";

/// Longest filter published as is; longer ones are cut to a shorter, wider filter so a key
/// always fits in one gossip datagram.
const MAX_FILTER_KEY: usize = 512;

/// The gossip key announcing interest in `filter`, or `None` for filters peers never need
/// (`$SYS` topics are per node and never forwarded).
///
/// A long filter is widened (its leading levels then `#`): a wider filter only makes a peer
/// send messages the receiving node then routes to nobody, never miss one.
pub fn route_key(filter: &str) -> Option<String> {
    if filter == "$SYS" || filter.starts_with("$SYS/") {
        return None;
    }
    if filter.len() <= MAX_FILTER_KEY {
        return Some(format!("{ROUTE_PREFIX}{filter}"));
    }
    let mut kept = String::new();
    for level in filter.split('/') {
        if level == "#" || kept.len() + level.len() + 3 > MAX_FILTER_KEY {
            break;
        }
        kept.push_str(level);
        kept.push('/');
    }
    kept.push('#');
    Some(format!("{ROUTE_PREFIX}{kept}"))
}

/// Longest shared key announced. Longer shared filters are not announced: this node still
/// serves them for messages published here (see docs/clustering.md).
pub const MAX_SHARED_KEY: usize = 4096;

/// The gossip key announcing members of shared group `group` on `filter` here, or `None` for
/// `$SYS` filters and filters too long to announce.
pub fn shared_key(group: &str, filter: &str) -> Option<String> {
    let key = format!("{SHARED_PREFIX}{group}/{filter}");
    (!(filter == "$SYS" || filter.starts_with("$SYS/")) && key.len() <= MAX_SHARED_KEY).then_some(key)
}

/// The `(group, filter)` of a shared key, if `key` is one.
pub fn shared_of(key: &str) -> Option<(&str, &str)> {
    let (group, filter) = key.strip_prefix(SHARED_PREFIX)?.split_once('/')?;
    (!group.is_empty() && !filter.is_empty()).then_some((group, filter))
}

/// The filter of a route key, if `key` is one.
pub fn filter_of(key: &str) -> Option<&str> {
    key.strip_prefix(ROUTE_PREFIX).filter(|f| !f.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::topic;

    #[test]
    fn keys_round_trip_and_skip_sys() {
        for f in ["a/b", "#", "+/x", "$share-like/a", "/"] {
            let key = route_key(f).unwrap();
            assert_eq!(filter_of(&key), Some(f));
        }
        assert_eq!(route_key("$SYS/#"), None);
        assert_eq!(route_key("$SYS"), None);
        assert_eq!(filter_of("link"), None);
        assert_eq!(filter_of("r:"), None);
        let key = shared_key("workers", "jobs/+/x").unwrap();
        assert_eq!(shared_of(&key), Some(("workers", "jobs/+/x")));
        assert_eq!(shared_of(&shared_key("$queue", "a//b").unwrap()), Some(("$queue", "a//b")));
        assert_eq!(filter_of(&key), None);
        assert_eq!(shared_of("r:a/b"), None);
        assert_eq!(shared_key("g", "$SYS/#"), None);
        assert_eq!(shared_key("g", &"x".repeat(MAX_SHARED_KEY)), None);
    }

    #[test]
    fn long_filters_widen_and_still_match() {
        let long = format!("fleet/{}/+/temp", "x".repeat(600));
        let key = route_key(&long).unwrap();
        let wide = filter_of(&key).unwrap();
        assert_eq!(wide, "fleet/#");
        assert!(topic::validate_filter(wide, 128).is_ok());
        let topic_name = format!("fleet/{}/7/temp", "x".repeat(600));
        assert!(topic::matches(&long, &topic_name) && topic::matches(wide, &topic_name));
        let levels = format!("{}/#", vec!["ab"; 300].join("/"));
        let wide = route_key(&levels).unwrap();
        assert!(wide.len() <= ROUTE_PREFIX.len() + MAX_FILTER_KEY, "{}", wide.len());
        assert!(wide.ends_with("/#"));
    }
}
