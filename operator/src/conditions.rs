//! Status conditions (`Ready`, `Progressing`, `Degraded`) and their reasons.
//!
//! A condition's `lastTransitionTime` changes only when its status flips, so re-running a
//! reconcile with the same outcome produces an identical status and no write.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The object does what its spec asks.
pub const READY: &str = "Ready";
/// The operator or Kubernetes is moving towards the spec (rollout, scaling).
pub const PROGRESSING: &str = "Progressing";
/// Something in the spec cannot be (fully) honoured; the message says what and why.
pub const DEGRADED: &str = "Degraded";

/// Reasons, shared by all three kinds. Documented in docs/operator.md.
pub mod reason {
    /// All pods ready (broker) / rendered and enforced (user, bridge).
    pub const AVAILABLE: &str = "Available";
    /// Broker pods are starting or not ready.
    pub const PODS_NOT_READY: &str = "PodsNotReady";
    /// The spec breaks a rule; the message names the field.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The spec asks for a feature the broker does not have yet; the message names the fields.
    pub const UNSUPPORTED_BY_BROKER: &str = "UnsupportedByBroker";
    /// Writing an object failed; the operator retries with backoff.
    pub const APPLY_FAILED: &str = "ApplyFailed";
    /// A change needs an immutable field changed (StatefulSet volumeClaimTemplates).
    pub const IMMUTABLE_FIELD_CHANGED: &str = "ImmutableFieldChanged";
    /// `spec.tls.issuerRef` is set but cert-manager's Certificate API is not served.
    pub const CERT_MANAGER_MISSING: &str = "CertManagerMissing";
    /// `spec.metrics.serviceMonitor` is enabled but the ServiceMonitor API is not served.
    pub const SERVICE_MONITOR_MISSING: &str = "ServiceMonitorCRDMissing";
    /// A StatefulSet rollout is in progress.
    pub const ROLLING_OUT: &str = "RollingOut";
    /// Nothing is changing.
    pub const STABLE: &str = "Stable";
    /// Nothing is wrong.
    pub const AS_EXPECTED: &str = "AsExpected";
    /// The referenced MqttBroker does not exist.
    pub const BROKER_NOT_FOUND: &str = "BrokerNotFound";
    /// A referenced Secret does not exist.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// A referenced Secret lacks the key (or it is not UTF-8).
    pub const SECRET_KEY_MISSING: &str = "SecretKeyMissing";
    /// Another MqttUser of the same broker claims the username.
    pub const USERNAME_CONFLICT: &str = "UsernameConflict";
    /// The user or bridge is written into the broker's auth Secret.
    pub const RENDERED: &str = "Rendered";
    /// A broker pod reports the bridge connecting, backing off or not running.
    pub const BRIDGE_NOT_CONNECTED: &str = "BridgeNotConnected";
}

/// A condition before timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    /// `Ready`, `Progressing` or `Degraded`.
    pub type_: &'static str,
    /// True or False.
    pub status: bool,
    /// CamelCase reason from [`reason`].
    pub reason: &'static str,
    /// What a person should know or do.
    pub message: String,
}

impl Cond {
    /// A condition.
    pub fn new(type_: &'static str, status: bool, reason: &'static str, message: impl Into<String>) -> Self {
        Cond { type_, status, reason, message: message.into() }
    }
}

/// Turns `new` into API conditions, keeping `lastTransitionTime` from `existing` where the
/// status did not change.
pub fn merge(existing: &[Condition], new: &[Cond], generation: Option<i64>, now: &Time) -> Vec<Condition> {
    new.iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" };
            let last = existing
                .iter()
                .find(|e| e.type_ == c.type_ && e.status == status)
                .map(|e| e.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: c.type_.to_string(),
                status: status.to_string(),
                reason: c.reason.to_string(),
                message: truncate(&c.message, 32 * 1024),
                observed_generation: generation,
                last_transition_time: last,
            }
        })
        .collect()
}

/// Condition messages are limited to 32 KiB by the API.
fn truncate(message: &str, max: usize) -> String {
    if message.len() <= max {
        return message.to_string();
    }
    let mut end = max - 3;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &message[..end])
}

/// The current time as a condition timestamp.
pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_kept_while_status_unchanged() {
        let t0 = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let t1 = now();
        let first = merge(&[], &[Cond::new(READY, false, reason::PODS_NOT_READY, "0/1")], Some(1), &t0);
        let same = merge(&first, &[Cond::new(READY, false, reason::PODS_NOT_READY, "0/1")], Some(1), &t1);
        assert_eq!(first, same);
        let flipped = merge(&same, &[Cond::new(READY, true, reason::AVAILABLE, "1/1")], Some(1), &t1);
        assert_eq!(flipped[0].last_transition_time, t1);
        assert_eq!(flipped[0].status, "True");
    }
}
