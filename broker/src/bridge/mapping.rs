//! Topic rules with Mosquitto's prefix semantics: an `out` rule subscribes locally to
//! `local_prefix + pattern` and publishes to `remote_prefix + (topic - local_prefix)`; an
//! `in` rule subscribes remotely to `remote_prefix + pattern` and publishes locally to
//! `local_prefix + (topic - remote_prefix)`.

use fleetmq_config::{BridgeTopic, Direction};

use crate::core::types::QoS;

/// One topic rule, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Filter on this broker (`local_prefix + pattern`).
    pub local_filter: String,
    /// Filter on the remote (`remote_prefix + pattern`).
    pub remote_filter: String,
    local_prefix: String,
    remote_prefix: String,
    /// Highest QoS forwarded.
    pub qos: QoS,
    /// Which way messages go.
    pub direction: Direction,
}

impl Rule {
    /// From a validated config rule.
    pub fn new(topic: &BridgeTopic) -> Self {
        let local_prefix = topic.local_prefix.clone().unwrap_or_default();
        let remote_prefix = topic.remote_prefix.clone().unwrap_or_default();
        Rule {
            local_filter: format!("{local_prefix}{}", topic.pattern),
            remote_filter: format!("{remote_prefix}{}", topic.pattern),
            local_prefix,
            remote_prefix,
            qos: match topic.qos {
                0 => QoS::AtMostOnce,
                1 => QoS::AtLeastOnce,
                _ => QoS::ExactlyOnce,
            },
            direction: topic.direction,
        }
    }

    /// The remote topic for a local one matched by `local_filter`; `None` when the topic is
    /// not under the local prefix or the result would be empty.
    pub fn to_remote(&self, local_topic: &str) -> Option<String> {
        swap_prefix(local_topic, &self.local_prefix, &self.remote_prefix)
    }

    /// The local topic for a remote one matched by `remote_filter`.
    pub fn to_local(&self, remote_topic: &str) -> Option<String> {
        swap_prefix(remote_topic, &self.remote_prefix, &self.local_prefix)
    }

    /// Whether `local_topic` is forwarded out by this rule.
    pub fn matches_local(&self, local_topic: &str) -> bool {
        self.direction.is_out() && fleetmq_config::topic::matches(&self.local_filter, local_topic)
    }

    /// Whether `remote_topic` is forwarded in by this rule.
    pub fn matches_remote(&self, remote_topic: &str) -> bool {
        self.direction.is_in() && fleetmq_config::topic::matches(&self.remote_filter, remote_topic)
    }
}

fn swap_prefix(topic: &str, from: &str, to: &str) -> Option<String> {
    let rest = topic.strip_prefix(from)?;
    let mapped = format!("{to}{rest}");
    (!mapped.is_empty()).then_some(mapped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pattern: &str, direction: Direction, local: Option<&str>, remote: Option<&str>) -> Rule {
        Rule::new(&BridgeTopic {
            pattern: pattern.into(),
            direction,
            qos: 1,
            local_prefix: local.map(Into::into),
            remote_prefix: remote.map(Into::into),
        })
    }

    #[test]
    fn out_rule_swaps_local_for_remote_prefix() {
        let r = rule("sensors/#", Direction::Out, Some("site/"), Some("edge1/"));
        assert_eq!(r.local_filter, "site/sensors/#");
        assert_eq!(r.remote_filter, "edge1/sensors/#");
        assert!(r.matches_local("site/sensors/t1"));
        assert!(!r.matches_local("sensors/t1"), "outside the local prefix");
        assert!(!r.matches_remote("edge1/sensors/t1"), "out rules do not forward in");
        assert_eq!(r.to_remote("site/sensors/t1").as_deref(), Some("edge1/sensors/t1"));
        assert_eq!(r.to_remote("other/sensors/t1"), None);
    }

    #[test]
    fn in_rule_swaps_remote_for_local_prefix() {
        let r = rule("cmd/+", Direction::In, Some("from-cloud/"), Some("edge1/"));
        assert!(r.matches_remote("edge1/cmd/reboot"));
        assert!(!r.matches_local("from-cloud/cmd/reboot"));
        assert_eq!(r.to_local("edge1/cmd/reboot").as_deref(), Some("from-cloud/cmd/reboot"));
    }

    #[test]
    fn prefixes_are_optional_on_either_side() {
        let r = rule("a/#", Direction::Both, None, Some("r/"));
        assert_eq!(r.to_remote("a/b").as_deref(), Some("r/a/b"));
        assert_eq!(r.to_local("r/a/b").as_deref(), Some("a/b"));
        let r = rule("a/#", Direction::Both, Some("l/"), None);
        assert_eq!(r.to_remote("l/a/b").as_deref(), Some("a/b"));
        assert_eq!(r.to_local("a/b").as_deref(), Some("l/a/b"));
        let r = rule("#", Direction::Both, None, None);
        assert_eq!(r.to_remote("x").as_deref(), Some("x"));
        assert!(!r.matches_local("$SYS/broker/uptime"), "wildcards never match $ topics");
    }

    #[test]
    fn a_prefix_is_stripped_only_as_a_whole_level_prefix() {
        let r = rule("#", Direction::Out, Some("site/"), Some("edge/"));
        // `site/#` also matches the parent `site` itself; it has no level under the prefix.
        assert!(r.matches_local("site"));
        assert_eq!(r.to_remote("site"), None);
        assert_eq!(r.to_remote("site/"), Some("edge/".into()));
        assert_eq!(r.to_remote("sites/x"), None);
    }
}
