//! Pure validation of the custom resources.
//!
//! These are the CRD's schema constraints and CEL rules again, in Rust: `render` sees objects
//! that never passed an API server, and an object stored before a rule existed must still be
//! refused. Every error names the field (`spec.listeners[1].port`) so the message is actionable
//! in a status condition, an event and `render`'s output.

use std::collections::BTreeSet;
use std::fmt;

use crate::crd::{MqttBridgeSpec, MqttBrokerSpec, MqttUserSpec};

/// One refused field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path, e.g. `spec.acl[0].topic`.
    pub field: String,
    /// Why it is refused.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Joins errors into one condition/event message.
pub fn summary(errors: &[FieldError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError { field: field.into(), message: message.into() });
    }

    fn range(&mut self, field: impl Into<String>, value: i64, min: i64, max: i64) {
        if value < min || value > max {
            self.push(field, format!("{value} is outside {min}..={max}"));
        }
    }
}

/// An MQTT topic filter: `+` fills a whole level, `#` is the whole last level, no NUL.
/// Same language as [`crate::crd::TOPIC_FILTER_RE`].
pub fn is_valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len() - 1;
    levels.iter().enumerate().all(|(i, level)| match *level {
        "+" => true,
        "#" => i == last,
        other => !other.contains('+') && !other.contains('#'),
    })
}

/// A DNS label as Kubernetes port names need (at most 15 characters).
fn is_port_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !name.is_empty()
        && name.len() <= 15
        && bytes[0].is_ascii_lowercase()
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[bytes.len() - 1] != b'-'
}

/// A Kubernetes quantity in the forms the CRD's pattern allows (`1Gi`, `500M`, `10`).
pub fn is_quantity(value: &str) -> bool {
    let suffixes = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E", ""];
    suffixes.iter().any(|suffix| {
        value.strip_suffix(suffix).is_some_and(|number| {
            let mut parts = number.splitn(2, '.');
            let whole = parts.next().unwrap_or_default();
            let frac = parts.next();
            !whole.is_empty()
                && whole.bytes().all(|b| b.is_ascii_digit())
                && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
        })
    })
}

/// `host:port` or `[v6]:port`.
fn is_address(address: &str) -> bool {
    let Some((host, port)) = address.rsplit_once(':') else { return false };
    let host_ok = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
    } else {
        !host.is_empty() && !host.bytes().any(|b| b.is_ascii_whitespace() || b"[]:".contains(&b))
    };
    host_ok && !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

/// Refusals for a broker spec (empty = valid).
fn is_cluster_port(port: i32) -> bool {
    port == i32::from(crate::names::CLUSTER_GOSSIP_PORT) || port == i32::from(crate::names::CLUSTER_LINK_PORT)
}

fn cluster_port_reason(port: i32) -> String {
    format!(
        "port {port} is reserved for clustering (gossip {}/UDP, inter-node link {}/TCP)",
        crate::names::CLUSTER_GOSSIP_PORT,
        crate::names::CLUSTER_LINK_PORT
    )
}

pub fn validate_broker(spec: &MqttBrokerSpec) -> Vec<FieldError> {
    let mut e = Errors(Vec::new());
    e.range("spec.replicas", spec.replicas.into(), 0, 100);
    e.range("spec.shutdownTimeoutSeconds", spec.shutdown_timeout_seconds.into(), 1, 3600);
    if spec.listeners.is_empty() {
        e.push("spec.listeners", "at least one listener is required");
    }
    if spec.listeners.len() > 8 {
        e.push("spec.listeners", "at most 8 listeners");
    }
    let mut ports = BTreeSet::new();
    let mut names = BTreeSet::new();
    for (i, l) in spec.listeners.iter().enumerate() {
        let at = format!("spec.listeners[{i}]");
        if !is_port_name(&l.name) {
            e.push(format!("{at}.name"), format!("{:?} is not a DNS label of at most 15 characters", l.name));
        }
        e.range(format!("{at}.port"), l.port.into(), 1, 65535);
        if !ports.insert(l.port) {
            e.push(format!("{at}.port"), format!("port {} is used by another listener", l.port));
        }
        if is_cluster_port(l.port) {
            e.push(format!("{at}.port"), cluster_port_reason(l.port));
        }
        if !names.insert(l.name.as_str()) {
            e.push(format!("{at}.name"), format!("name {:?} is used by another listener", l.name));
        }
        if let Some(path) = &l.path {
            if !l.protocol.is_websocket() {
                e.push(format!("{at}.path"), "only valid for ws and wss listeners");
            } else if !path.starts_with('/') {
                e.push(format!("{at}.path"), "must start with /");
            }
        }
    }
    if let Some(metrics) = &spec.metrics
        && is_cluster_port(metrics.port)
    {
        e.push("spec.metrics.port", cluster_port_reason(metrics.port));
    }
    if spec.listeners.iter().any(|l| l.protocol.is_tls()) && spec.tls.is_none() {
        e.push("spec.tls", "required when a listener uses protocol mqtts or wss");
    }
    if let Some(tls) = &spec.tls {
        if tls.secret_name.is_some() == tls.issuer_ref.is_some() {
            e.push("spec.tls", "set exactly one of secretName or issuerRef");
        }
        if tls.use_identity_as_username && !tls.require_client_certificate {
            e.push("spec.tls.useIdentityAsUsername", "requires spec.tls.requireClientCertificate");
        }
        if let Some(issuer) = &tls.issuer_ref
            && issuer.kind != "Issuer"
            && issuer.kind != "ClusterIssuer"
        {
            e.push(
                "spec.tls.issuerRef.kind",
                format!("{:?} is neither Issuer nor ClusterIssuer", issuer.kind),
            );
        }
    }
    if !is_quantity(&spec.persistence.size) {
        e.push("spec.persistence.size", format!("{:?} is not a quantity such as 1Gi", spec.persistence.size));
    }
    if let Some(interval) = &spec.persistence.fsync_interval
        && crate::config::parse_interval(interval).is_none()
    {
        e.push(
            "spec.persistence.fsyncInterval",
            format!("{interval:?} is not a duration such as 50ms or 1s"),
        );
    }
    let limits = &spec.limits;
    if let Some(v) = limits.max_connections {
        e.range("spec.limits.maxConnections", v, 0, u32::MAX.into());
    }
    if let Some(v) = limits.max_inflight {
        e.range("spec.limits.maxInflight", v.into(), 1, 65535);
    }
    if let Some(v) = limits.max_queued_messages {
        e.range("spec.limits.maxQueuedMessages", v, 1, u32::MAX.into());
    }
    if let Some(v) = limits.max_queued_bytes {
        e.range("spec.limits.maxQueuedBytes", v, 0, i64::MAX);
    }
    if let Some(v) = limits.max_packet_size {
        e.range("spec.limits.maxPacketSize", v, 64, 268_435_460);
    }
    if let Some(v) = limits.max_keepalive {
        e.range("spec.limits.maxKeepalive", v.into(), 1, 65535);
    }
    for (i, filter) in limits.conflate.iter().enumerate() {
        if !is_valid_filter(filter) {
            e.push(
                format!("spec.limits.conflate[{i}]"),
                format!("{filter:?} is not a valid MQTT topic filter"),
            );
        }
    }
    if !spec.service.load_balancer_source_ranges.is_empty()
        && spec.service.type_ != crate::crd::ServiceType::LoadBalancer
    {
        e.push("spec.service.loadBalancerSourceRanges", "requires spec.service.type LoadBalancer");
    }
    // The broker's HTTP endpoint listens on this port whether or not metrics are enabled (the
    // probes use it), so it must never collide with a listener.
    let http_port = spec.http_port();
    if ports.contains(&http_port) {
        e.push(
            "spec.metrics.port",
            format!(
                "port {http_port} (the broker's HTTP port for probes and metrics, default {}) is already used by a listener",
                crate::crd::DEFAULT_HTTP_PORT
            ),
        );
    }
    if let Some(metrics) = &spec.metrics {
        e.range("spec.metrics.port", metrics.port.into(), 1, 65535);
        if metrics.service_monitor.as_ref().is_some_and(|sm| sm.enabled) && !metrics.enabled {
            e.push("spec.metrics.serviceMonitor.enabled", "requires spec.metrics.enabled");
        }
    }
    e.0
}

/// Refusals for a user spec. `name` is `metadata.name` (the default username).
pub fn validate_user(spec: &MqttUserSpec, name: &str) -> Vec<FieldError> {
    let mut e = Errors(Vec::new());
    if spec.broker_ref.name.is_empty() {
        e.push("spec.brokerRef.name", "must not be empty");
    }
    let (field, username) = match &spec.username {
        Some(u) => ("spec.username", u.as_str()),
        None => ("metadata.name", name),
    };
    if username.is_empty() || username.len() > 256 {
        e.push(field, "the username must have 1 to 256 characters");
    }
    if username.contains(':') || username.chars().any(char::is_whitespace) {
        e.push(field, format!("username {username:?} must not contain ':' or whitespace"));
    }
    if let Some(r) = &spec.password_secret_ref {
        if r.name.is_empty() {
            e.push("spec.passwordSecretRef.name", "must not be empty");
        }
        if r.key.is_empty() {
            e.push("spec.passwordSecretRef.key", "must not be empty");
        }
    }
    if spec.acl.len() > 256 {
        e.push("spec.acl", "at most 256 rules");
    }
    for (i, rule) in spec.acl.iter().enumerate() {
        if !is_valid_filter(&rule.topic) {
            e.push(
                format!("spec.acl[{i}].topic"),
                format!(
                    "{:?} is not a valid MQTT topic filter: '+' and '#' must fill a whole level and '#' must be the last",
                    rule.topic
                ),
            );
        }
        if rule.topic.starts_with("$SYS")
            && matches!(rule.access, crate::crd::AclAccess::Write | crate::crd::AclAccess::Readwrite)
        {
            e.push(format!("spec.acl[{i}].access"), "writing to $SYS topics is refused");
        }
    }
    e.0
}

/// Refusals for a bridge spec.
pub fn validate_bridge(spec: &MqttBridgeSpec) -> Vec<FieldError> {
    let mut e = Errors(Vec::new());
    if spec.broker_ref.name.is_empty() {
        e.push("spec.brokerRef.name", "must not be empty");
    }
    let remote = &spec.remote;
    if remote.addresses.is_empty() {
        e.push("spec.remote.addresses", "at least one address is required");
    }
    for (i, address) in remote.addresses.iter().enumerate() {
        if !is_address(address) {
            e.push(format!("spec.remote.addresses[{i}]"), format!("{address:?} is not host:port"));
        } else if let Some(port) = address.rsplit_once(':').and_then(|(_, p)| p.parse::<u32>().ok())
            && !(1..=65535).contains(&port)
        {
            e.push(format!("spec.remote.addresses[{i}]"), format!("port {port} is outside 1..=65535"));
        }
    }
    e.range("spec.remote.keepalive", remote.keepalive.into(), 0, 65535);
    if remote.client_id.as_deref() == Some("") {
        e.push("spec.remote.clientId", "must not be empty");
    }
    if spec.topics.is_empty() {
        e.push("spec.topics", "at least one topic rule is required");
    }
    for (i, topic) in spec.topics.iter().enumerate() {
        if !is_valid_filter(&topic.pattern) {
            e.push(
                format!("spec.topics[{i}].pattern"),
                format!("{:?} is not a valid MQTT topic filter", topic.pattern),
            );
        }
        e.range(format!("spec.topics[{i}].qos"), topic.qos.into(), 0, 2);
        for (field, prefix) in [("localPrefix", &topic.local_prefix), ("remotePrefix", &topic.remote_prefix)]
        {
            if prefix.as_deref().is_some_and(|p| p.contains('+') || p.contains('#')) {
                e.push(format!("spec.topics[{i}].{field}"), "must not contain wildcards");
            }
        }
    }
    e.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_filters() {
        for ok in ["a", "a/b", "+", "#", "a/+/c", "a/#", "+/+", "/", "a//b", "$SYS/#"] {
            assert!(is_valid_filter(ok), "{ok}");
        }
        for bad in ["", "a#", "#/a", "a/b+", "a/#/b", "+a", "a\0b"] {
            assert!(!is_valid_filter(bad), "{bad:?}");
        }
    }

    #[test]
    fn quantities_and_addresses() {
        for ok in ["1Gi", "500Mi", "10", "1.5Gi", "2T"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "Gi", "1GB", "1.Gi", "-1Gi", "1 Gi"] {
            assert!(!is_quantity(bad), "{bad:?}");
        }
        for ok in ["host:1883", "10.0.0.1:8883", "[::1]:1883", "a.b.c:1"] {
            assert!(is_address(ok), "{ok}");
        }
        for bad in ["host", "host:", ":1883", "h st:1", "[]:1", "host:123456"] {
            assert!(!is_address(bad), "{bad:?}");
        }
    }
}
