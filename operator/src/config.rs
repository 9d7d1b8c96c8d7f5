//! MqttBroker → the broker's own config type ([`fleetmq_config::BrokerConfig`]).
//!
//! [`broker_config`] is the ONE place where CRD fields become broker config keys, and every file
//! path it writes is a path the StatefulSet mounts ([`crate::names`]):
//!
//! - every listener (`mqtt`, `mqtts`, `ws`, `wss`) binds `0.0.0.0:<port>`; `mqtts`/`wss` read
//!   the certificate from [`names::TLS_DIR`] (`tls.crt`, `tls.key`, and `ca.crt` for client
//!   certificates), `ws`/`wss` serve `spec.listeners[].path` (default `/mqtt`);
//! - `auth.password_file` / `auth.acl_file` are the auth Secret's files under
//!   [`names::AUTH_DIR`];
//! - the HTTP endpoint (`/healthz`, `/readyz`, `/metrics`) is always on, on the metrics port,
//!   because the probes use it; `spec.metrics.enabled` only decides whether Services and a
//!   ServiceMonitor expose it.
//!
//! - `bridges` come from the broker's MqttBridges ([`crate::auth::bridges`]), their passwords
//!   and certificates from files in the auth Secret.
//!
//! Should a CRD field ever ask for something the broker cannot do, report it as [`Unsupported`]
//! (the MqttBroker status says so) rather than rendering a config the broker would refuse.
//! Today everything maps.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use fleetmq_config::{
    BrokerConfig, ByteSize, DEFAULT_WS_PATH, Limits, Listener, ListenerProtocol, LogFormat, Tls, TlsVersion,
};

use crate::crd::{self, MqttBrokerSpec};
use crate::names;

/// A CRD field the broker cannot honour yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    /// The field (or object) that asks for it, e.g. `MqttBridge cloud`.
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

/// The mapping cannot produce a config the broker accepts (e.g. an `mqtts` listener without
/// `spec.tls`, or a value the broker's own validation refuses).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigRefused {
    /// The CRD field to change.
    pub field: String,
    /// Why.
    pub message: String,
}

/// Whether the broker serves mqtts/wss listeners; users' credentials Secrets point at the first
/// `mqtts` listener when it does (see [`crate::build::client_endpoint`]).
pub const TLS_LISTENERS_SUPPORTED: bool = true;

/// Certificate chain key of a `kubernetes.io/tls` Secret (also what cert-manager writes).
pub const TLS_CERT_KEY: &str = "tls.crt";
/// Private key key of a `kubernetes.io/tls` Secret.
pub const TLS_KEY_KEY: &str = "tls.key";
/// CA bundle key (cert-manager writes the issuing CA there); read only for client certificates.
pub const TLS_CA_KEY: &str = "ca.crt";

/// Builds the broker config. `bridges` are the names of the MqttBridges rendered into the auth
/// Secret (for the unsupported-feature report).
///
/// `peers_host` is the name every pod of the broker resolves to (the headless Service): the
/// cluster's gossip seed.
pub fn broker_config(
    spec: &MqttBrokerSpec,
    bridges: &[fleetmq_config::Bridge],
    peers_host: &str,
) -> Result<RenderedConfig, ConfigRefused> {
    let unsupported = Vec::new();

    let tls = spec.tls.as_ref().map(listener_tls);
    let mut listeners = Vec::new();
    for (i, listener) in spec.listeners.iter().enumerate() {
        let protocol = match listener.protocol {
            crd::ListenerProtocol::Mqtt => ListenerProtocol::Mqtt,
            crd::ListenerProtocol::Mqtts => ListenerProtocol::Mqtts,
            crd::ListenerProtocol::Ws => ListenerProtocol::Ws,
            crd::ListenerProtocol::Wss => ListenerProtocol::Wss,
        };
        let tls = if protocol.is_tls() {
            // Validation requires spec.tls for these; say so by field rather than let the broker
            // config check report a less helpful key.
            Some(tls.clone().ok_or_else(|| ConfigRefused {
                field: "spec.tls".to_string(),
                message: format!("required by spec.listeners[{i}] (protocol {})", protocol.as_str()),
            })?)
        } else {
            None
        };
        // The path is written out even when it is the default, so broker.yaml says what is served.
        let path = protocol
            .is_websocket()
            .then(|| listener.path.clone().unwrap_or_else(|| DEFAULT_WS_PATH.to_string()));
        listeners.push(Listener {
            name: Some(listener.name.clone()),
            protocol,
            path,
            tls,
            ..Listener::mqtt(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port(listener.port))))
        });
    }
    let mut config = BrokerConfig { listeners, ..BrokerConfig::default() };

    // Auth: the anonymous policy is explicit (the broker's default depends on the bind address,
    // and in a pod that is never loopback). The password and ACL files are always set: the auth
    // Secret always exists (a broker without users gets files with comments only), so adding the
    // first MqttUser changes a mounted file, never broker.yaml or the pods.
    config.auth.allow_anonymous = Some(spec.auth.allow_anonymous);
    config.auth.password_file =
        Some(PathBuf::from(format!("{}/{}", names::AUTH_DIR, names::PASSWORD_FILE_KEY)));
    config.auth.acl_file = Some(PathBuf::from(format!("{}/{}", names::AUTH_DIR, names::ACL_FILE_KEY)));

    // The HTTP endpoint (metrics, health, readiness) listens on the pod network on the metrics
    // port, always: the liveness and readiness probes are HTTP GETs on it.
    config.http.enabled = true;
    config.http.bind = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port(spec.http_port())));
    // The admin API is always on, behind a token generated once into the auth Secret: the
    // operator reads each bridge's live state from it (MqttBridge status), and operators of the
    // fleet use it and the console with the same token.
    config.http.admin_token_file =
        Some(PathBuf::from(format!("{}/{}", names::AUTH_DIR, names::ADMIN_TOKEN_KEY)));

    // Clustering is always on, also for one replica, so `kubectl scale` never changes broker.yaml
    // (the section needs a restart): the pods find each other through the headless Service, and
    // each pod's name and address come from the environment (downward API, see
    // `build::stateful_set`), since one ConfigMap serves every pod.
    config.cluster = Some(fleetmq_config::Cluster {
        gossip_bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, names::CLUSTER_GOSSIP_PORT)),
        link_bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, names::CLUSTER_LINK_PORT)),
        seeds: vec![format!("{peers_host}:{}", names::CLUSTER_GOSSIP_PORT)],
        secret_file: Some(PathBuf::from(format!("{}/{}", names::AUTH_DIR, names::CLUSTER_SECRET_KEY))),
        ..fleetmq_config::Cluster::default()
    });

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

    // Bridges reload live in the broker: they are in broker.yaml, never in the restart hash.
    config.bridges = bridges.to_vec();

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

/// The `tls` block every `mqtts`/`wss` listener gets: the files of the certificate Secret the
/// StatefulSet mounts at [`names::TLS_DIR`]. The broker re-reads them when the kubelet swaps the
/// Secret (cert-manager renewals included), so their contents never need a restart.
fn listener_tls(spec: &crd::TlsSpec) -> Tls {
    let file = |key: &str| PathBuf::from(format!("{}/{key}", names::TLS_DIR));
    Tls {
        cert_file: file(TLS_CERT_KEY),
        key_file: file(TLS_KEY_KEY),
        // Only with client certificates: a Secret from secretName may lack ca.crt, and a missing
        // ca_file stops the broker.
        ca_file: spec.require_client_certificate.then(|| file(TLS_CA_KEY)),
        min_version: match spec.min_version {
            None | Some(crd::TlsMinVersion::V1_2) => TlsVersion::V1_2,
            Some(crd::TlsMinVersion::V1_3) => TlsVersion::V1_3,
        },
        require_certificate: spec.require_client_certificate,
        use_identity_as_username: spec.use_identity_as_username,
    }
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
