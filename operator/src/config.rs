//! MqttBroker → the broker's own config type ([`fleetmq_config::BrokerConfig`]).
//!
//! [`broker_config`] is the ONE place where CRD fields become broker config keys. The broker
//! does not yet have keys for everything the CRD can ask for (TLS and WebSocket listeners,
//! password and ACL files, persistence, conflation, bridges, an HTTP endpoint). Those fields are
//! still reconciled on the Kubernetes side (Secrets, Certificates, volumes, ports), and this
//! function reports each of them as [`Unsupported`] so the MqttBroker status can say so. When the
//! broker grows a key, wire it here and drop the matching `Unsupported` entry; nothing else
//! changes.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use fleetmq_config::{BrokerConfig, ByteSize, Limits, Listener, ListenerProtocol, LogFormat};

use crate::crd::{self, MqttBrokerSpec};
use crate::names;

/// A CRD field the broker cannot honour yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    /// The field (or object) that asks for it, e.g. `spec.listeners[1]`.
    pub field: String,
    /// What is missing in the broker.
    pub reason: String,
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.field, self.reason)
    }
}

/// The broker config for one MqttBroker, and what of the spec it could not express.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedConfig {
    /// Passes [`BrokerConfig::validate`].
    pub config: BrokerConfig,
    /// Fields reconciled on the Kubernetes side but not (yet) served by the broker.
    pub unsupported: Vec<Unsupported>,
}

impl RenderedConfig {
    /// The ConfigMap's `broker.yaml`: a header naming the source, then the broker's own YAML.
    pub fn to_yaml(&self, namespace: &str, broker: &str) -> String {
        format!(
            "# Rendered by fleetmq-operator from MqttBroker {namespace}/{broker}; edits are overwritten.\n{}",
            self.config.to_yaml()
        )
    }
}

/// The mapping cannot produce a config the broker accepts (e.g. no plain MQTT listener).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigRefused {
    /// The CRD field to change.
    pub field: String,
    /// Why.
    pub message: String,
}

/// Whether the broker enforces the password and ACL files the operator writes. False until
/// fleetmq-config has `auth.password_file` / `auth.acl_file`; the user reconciler reports it.
pub const AUTH_FILES_SUPPORTED: bool = false;
/// Whether the broker serves mqtts/wss listeners; until then users' credentials Secrets point
/// at a plain MQTT listener.
pub const TLS_LISTENERS_SUPPORTED: bool = false;
/// Whether the broker runs bridges from the bridge file the operator writes.
pub const BRIDGES_SUPPORTED: bool = false;

/// Builds the broker config. `users` and `bridges` are the names of the MqttUsers and
/// MqttBridges rendered into the auth Secret (for the unsupported-feature report).
pub fn broker_config(
    spec: &MqttBrokerSpec,
    users: &[String],
    bridges: &[String],
) -> Result<RenderedConfig, ConfigRefused> {
    let mut unsupported = Vec::new();
    let mut missing =
        |field: String, reason: &str| unsupported.push(Unsupported { field, reason: reason.to_string() });

    // Listeners: plain MQTT only. TLS and WebSocket listeners keep their container and Service
    // ports (so clients and probes see them once the broker serves them) but are not rendered.
    let mut listeners = Vec::new();
    for (i, listener) in spec.listeners.iter().enumerate() {
        match listener.protocol {
            crd::ListenerProtocol::Mqtt => listeners.push(Listener {
                name: Some(listener.name.clone()),
                protocol: ListenerProtocol::Mqtt,
                ..Listener::mqtt(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port(listener.port))))
            }),
            other => missing(
                format!("spec.listeners[{i}]"),
                &format!(
                    "protocol {} needs TLS/WebSocket listeners, which the broker does not have yet",
                    other.as_str()
                ),
            ),
        }
    }
    if listeners.is_empty() {
        return Err(ConfigRefused {
            field: "spec.listeners".to_string(),
            message: "the broker serves only protocol mqtt today; add a listener with protocol mqtt"
                .to_string(),
        });
    }
    let mut config = BrokerConfig { listeners, ..BrokerConfig::default() };
    if spec.tls.is_some() {
        // The certificate is mounted at names::TLS_DIR; no broker key reads it yet.
        missing("spec.tls".to_string(), "the broker has no TLS listener config yet (certificate is mounted)");
    }

    // Auth: the anonymous policy is explicit (the broker's default depends on the bind address,
    // and in a pod that is never loopback). Password and ACL files are written to the auth
    // Secret at names::AUTH_DIR but the broker has no key to read them yet.
    config.auth.allow_anonymous = Some(spec.auth.allow_anonymous);
    if !AUTH_FILES_SUPPORTED && (!users.is_empty() || !spec.auth.allow_anonymous) {
        let who =
            if users.is_empty() { String::new() } else { format!(" for MqttUser {}", users.join(", ")) };
        let effect = if spec.auth.allow_anonymous {
            "clients are accepted without checking passwords or ACLs"
        } else {
            "every client is refused until it does"
        };
        missing(
            "spec.auth".to_string(),
            &format!("the broker does not read password_file/acl_file yet{who}; {effect}"),
        );
    }

    // The HTTP endpoint (metrics, health) listens on the pod network on the metrics port.
    let http_port = spec.metrics.as_ref().map_or(9090, |m| m.port);
    config.http.bind = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port(http_port)));

    // Limits (hot-reloadable by design: they live in the ConfigMap, never in the pod template).
    config.limits = limits(&spec.limits);

    // Storage: the data dir is always a mounted volume (the root filesystem is read-only): the
    // PersistentVolumeClaim with persistence, else an emptyDir, and then the broker keeps its
    // state in memory only.
    config.storage.data_dir = PathBuf::from(names::DATA_DIR);
    config.storage.persistence = spec.persistence.enabled;
    if let Some(fsync) = spec.persistence.fsync {
        config.storage.fsync = match fsync {
            crd::Fsync::Always => fleetmq_config::Fsync::Always,
            crd::Fsync::Interval => fleetmq_config::Fsync::Interval,
        };
    }
    if let Some(interval) = spec.persistence.fsync_interval.as_deref().and_then(parse_interval) {
        config.storage.fsync_interval = interval;
    }

    if spec.metrics.as_ref().is_some_and(|m| m.enabled) {
        missing("spec.metrics".to_string(), "the broker has no HTTP /metrics endpoint yet");
    }
    if !BRIDGES_SUPPORTED && !bridges.is_empty() {
        missing(
            format!("MqttBridge {}", bridges.join(", ")),
            "the broker has no bridge client yet (configuration is written to the auth Secret)",
        );
    }

    config.server.shutdown_timeout =
        Duration::from_secs(u64::try_from(spec.shutdown_timeout_seconds.max(1)).unwrap_or(5));
    config.log.level = match spec.log.level {
        crd::LogLevel::Error => "error",
        crd::LogLevel::Warn => "warn",
        crd::LogLevel::Info => "info",
        crd::LogLevel::Debug => "debug",
        crd::LogLevel::Trace => "trace",
    }
    .to_string();
    config.log.format = match spec.log.format {
        crd::LogFormat::Text => LogFormat::Text,
        crd::LogFormat::Json => LogFormat::Json,
    };

    config.validate().map_err(|err| ConfigRefused {
        field: "spec".to_string(),
        message: format!("broker config refused: {err}"),
    })?;
    Ok(RenderedConfig { config, unsupported })
}

/// `50ms`, `2s` (the CRD pattern); `None` for anything else.
pub fn parse_interval(text: &str) -> Option<Duration> {
    let (number, unit) = if let Some(n) = text.strip_suffix("ms") {
        (n, Duration::from_millis(1))
    } else {
        (text.strip_suffix('s')?, Duration::from_secs(1))
    };
    let n: u32 = number.parse().ok().filter(|n| *n > 0)?;
    unit.checked_mul(n)
}

fn port(port: i32) -> u16 {
    // Validation keeps ports in 1..=65535; clamp rather than panic if it was bypassed.
    u16::try_from(port.clamp(1, 65535)).unwrap_or(1883)
}

fn limits(spec: &crd::LimitsSpec) -> Limits {
    let d = Limits::default();
    let to_u16 = |v: Option<i32>, default: u16| v.and_then(|v| u16::try_from(v).ok()).unwrap_or(default);
    let to_u32 = |v: Option<i64>, default: u32| v.and_then(|v| u32::try_from(v).ok()).unwrap_or(default);
    let to_bytes = |v: Option<i64>, default: ByteSize| {
        v.and_then(|v| u64::try_from(v).ok()).map(ByteSize::b).unwrap_or(default)
    };
    Limits {
        max_connections: to_u32(spec.max_connections, d.max_connections),
        max_packet_size: to_bytes(spec.max_packet_size, d.max_packet_size),
        max_inflight: to_u16(spec.max_inflight, d.max_inflight),
        max_queued_messages: to_u32(spec.max_queued_messages, d.max_queued_messages),
        max_queued_bytes: to_bytes(spec.max_queued_bytes, d.max_queued_bytes),
        max_keepalive: to_u16(spec.max_keepalive, d.max_keepalive),
        max_topic_levels: d.max_topic_levels,
        max_topic_alias: d.max_topic_alias,
        max_publish_rate: d.max_publish_rate,
        conflate: spec.conflate.clone(),
    }
}
