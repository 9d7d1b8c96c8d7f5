//! FleetMQ broker configuration.
//!
//! One set of types for the YAML file the broker reads (`fleetmq-broker --config`) and the
//! file the operator renders into a ConfigMap, so the operator can never write a config the
//! broker rejects. Every key is documented in `docs/configuration.md` with its default.
//!
//! Parsing is strict: unknown keys and malformed values are errors that name the key and the
//! line ([`BrokerConfig::from_yaml_str`]); semantic checks that serde cannot express live in
//! [`BrokerConfig::validate`].

pub mod bridge;
pub mod cluster;
mod rules;
pub mod topic;
mod units;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use bridge::{
    Backoff, Bridge, BridgeProtocol, BridgeQueue, BridgeTls, BridgeTopic, Direction, Notifications, Overflow,
};
pub use cluster::{Cluster, ClusterTls};
pub use units::{ByteSize, byte_size, duration, opt_duration};

/// The largest packet MQTT can encode: a 4-byte remaining length of 268,435,455 plus the
/// fixed header (MQTT 5.0 §1.5.5).
pub const MQTT_MAX_PACKET_SIZE: u64 = 268_435_460;

/// Errors from loading or validating a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// File that failed.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// YAML syntax error, unknown key or a value of the wrong type. The message names the key
    /// path and the line.
    #[error("{origin}: {message}")]
    Parse {
        /// File name, or `<string>` for in-memory YAML.
        origin: String,
        /// What was wrong, with the key path and position.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// Dotted key path, e.g. `limits.max_inflight`.
        key: String,
        /// Why the value is refused.
        reason: String,
    },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid { key: key.into(), reason: reason.into() }
    }
}

/// The whole broker configuration (the YAML document's root).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Network listeners. Default: one MQTT listener on `127.0.0.1:1883`.
    #[serde(deserialize_with = "rules::de_listeners")]
    pub listeners: Vec<Listener>,
    /// Where and how state is kept.
    pub storage: Storage,
    /// Who may connect.
    pub auth: Auth,
    /// Per-connection and per-session limits.
    pub limits: Limits,
    /// Session lifetime policy.
    pub sessions: Sessions,
    /// `$SYS` topic publishing.
    pub sys: Sys,
    /// Process-level settings.
    pub server: Server,
    /// The HTTP endpoint: metrics, health, admin API.
    pub http: Http,
    /// Logging.
    pub log: Log,
    /// Links to remote brokers (see docs/bridges.md). Reloaded live, bridge by bridge.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bridges: Vec<Bridge>,
    /// Clustering (see docs/clustering.md). Absent: a single broker, no cluster ports.
    /// Needs a restart to change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Cluster>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listeners: vec![Listener::default()],
            storage: Storage::default(),
            auth: Auth::default(),
            limits: Limits::default(),
            sessions: Sessions::default(),
            sys: Sys::default(),
            server: Server::default(),
            http: Http::default(),
            log: Log::default(),
            bridges: Vec::new(),
            cluster: None,
        }
    }
}

/// Transport of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// Plain MQTT over TCP.
    #[default]
    Mqtt,
    /// MQTT over TLS.
    Mqtts,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl ListenerProtocol {
    /// The name used in config, logs and default listener names.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerProtocol::Mqtt => "mqtt",
            ListenerProtocol::Mqtts => "mqtts",
            ListenerProtocol::Ws => "ws",
            ListenerProtocol::Wss => "wss",
        }
    }

    /// Whether the transport is TLS (needs `tls`).
    pub fn is_tls(self) -> bool {
        matches!(self, ListenerProtocol::Mqtts | ListenerProtocol::Wss)
    }

    /// Whether the transport is WebSocket (uses `path`).
    pub fn is_websocket(self) -> bool {
        matches!(self, ListenerProtocol::Ws | ListenerProtocol::Wss)
    }
}

/// The WebSocket path when a `ws`/`wss` listener sets none (what MQTT.js and Paho use).
pub const DEFAULT_WS_PATH: &str = "/mqtt";

/// One listening socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Name used in logs and metrics. Default: `<protocol>-<port>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Transport. Default: `mqtt`.
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// Address and port, e.g. `0.0.0.0:1883` or `[::]:1883`.
    pub bind: SocketAddr,
    /// Concurrent connections on this listener; 0 = unlimited (`limits.max_connections`
    /// still applies across listeners).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_connections: u32,
    /// New connections accepted per second on this listener; 0 = unlimited.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_connection_rate: u32,
    /// Expect a PROXY protocol v1 or v2 header (from a load balancer) on every connection
    /// and take the client address from it; connections without one are refused.
    #[serde(default, skip_serializing_if = "is_false")]
    pub proxy_protocol: bool,
    /// HTTP path of a `ws`/`wss` listener. Default: `/mqtt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Certificates of a `mqtts`/`wss` listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

impl Default for Listener {
    fn default() -> Self {
        Listener {
            name: None,
            protocol: ListenerProtocol::Mqtt,
            bind: SocketAddr::from(([127, 0, 0, 1], 1883)),
            max_connections: 0,
            max_connection_rate: 0,
            proxy_protocol: false,
            path: None,
            tls: None,
        }
    }
}

impl Listener {
    /// A plain MQTT listener on `bind`.
    pub fn mqtt(bind: SocketAddr) -> Self {
        Listener { bind, ..Listener::default() }
    }

    /// The listener's name for logs: the configured one or `<protocol>-<port>`.
    pub fn display_name(&self) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => format!("{}-{}", self.protocol.as_str(), self.bind.port()),
        }
    }

    /// The WebSocket path (`path` or `/mqtt`).
    pub fn ws_path(&self) -> &str {
        self.path.as_deref().unwrap_or(DEFAULT_WS_PATH)
    }
}

/// Lowest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    V1_3,
}

/// TLS settings of a listener (Mosquitto's `certfile`, `keyfile`, `cafile`,
/// `require_certificate`, `use_identity_as_username`). The files are re-read when they
/// change: new handshakes use the new certificate, open connections stay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA bundle that client certificates must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Lowest protocol version: `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Refuse clients without a certificate signed by `ca_file`. Without it, a certificate is
    /// verified when the client offers one.
    #[serde(default, skip_serializing_if = "is_false")]
    pub require_certificate: bool,
    /// The client certificate's subject Common Name becomes the username (no password
    /// needed); needs `require_certificate`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub use_identity_as_username: bool,
}

/// When a write counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// Acknowledge (PUBACK, PUBREC, SUBACK) only after the write is on disk; writes from all
    /// connections are committed together (group commit).
    #[default]
    Always,
    /// Acknowledge once written to the journal; the journal is synced every
    /// `storage.fsync_interval`. A power loss or OS crash can lose that window; a broker crash
    /// (`kill -9`) loses nothing.
    Interval,
}

/// State storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// Keep sessions, queues, in-flight state, retained and delayed messages in an embedded
    /// durable store under `data_dir`. `false` keeps everything in memory only.
    pub persistence: bool,
    /// Directory for durable state. Default: `./data`.
    pub data_dir: PathBuf,
    /// Durability policy.
    pub fsync: Fsync,
    /// Sync period for `fsync: interval`.
    #[serde(serialize_with = "duration::serialize", deserialize_with = "rules::de_positive_duration")]
    pub fsync_interval: Duration,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            persistence: true,
            data_dir: PathBuf::from("./data"),
            fsync: Fsync::Always,
            fsync_interval: Duration::from_millis(50),
        }
    }
}

/// Authentication and authorization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Accept clients without credentials. Default (unset): refused when `password_file` is
    /// set; otherwise allowed only when every listener binds a loopback address, like
    /// Mosquitto's local-only mode. Set `true` or `false` to decide explicitly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_anonymous: Option<bool>,
    /// Mosquitto-format password file (`user:hash` lines; `$7$` PBKDF2-SHA512, `$6$` SHA-512
    /// and argon2id hashes). Re-read when it changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Mosquitto-format ACL file. Unset: every client may publish and subscribe to every
    /// topic except `$SYS` writes. Re-read when it changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acl_file: Option<PathBuf>,
}

/// Limits on connections, packets and session queues.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Maximum concurrent client connections across all listeners; 0 = unlimited.
    pub max_connections: u32,
    /// Largest packet accepted from a client (advertised as Maximum Packet Size in v5).
    #[serde(serialize_with = "byte_size::serialize", deserialize_with = "rules::de_packet_size")]
    pub max_packet_size: ByteSize,
    /// Outbound QoS 1/2 messages in flight per session (also the inbound Receive Maximum
    /// the broker advertises). The client's own Receive Maximum lowers it further.
    #[serde(deserialize_with = "rules::de_at_least_one")]
    pub max_inflight: u16,
    /// Messages queued per session (offline, or waiting for the in-flight window).
    #[serde(deserialize_with = "rules::de_at_least_one")]
    pub max_queued_messages: u32,
    /// Payload bytes queued per session; 0 = unlimited.
    #[serde(with = "byte_size")]
    pub max_queued_bytes: ByteSize,
    /// Largest keep-alive a client may use, in seconds. v5 clients asking for more (or for
    /// none) are told this value via Server Keep Alive; v3 clients asking for more are
    /// refused. 65535 accepts every value.
    #[serde(deserialize_with = "rules::de_at_least_one")]
    pub max_keepalive: u16,
    /// Deepest topic name or filter accepted, in levels.
    #[serde(deserialize_with = "rules::de_at_least_one")]
    pub max_topic_levels: u16,
    /// Topic aliases a v5 client may use towards the broker (Topic Alias Maximum).
    pub max_topic_alias: u16,
    /// PUBLISH packets per second one client may send; 0 = unlimited. Above it the broker
    /// stops reading from the client until the rate drops (nothing is refused or lost).
    #[serde(skip_serializing_if = "is_zero")]
    pub max_publish_rate: u32,
    /// Topic filters whose messages are conflated for offline sessions: a newly queued message
    /// replaces the queued message of the same topic, so a reconnecting client gets only the
    /// newest value per topic. Never applies to online delivery.
    #[serde(deserialize_with = "rules::de_filters", skip_serializing_if = "Vec::is_empty")]
    pub conflate: Vec<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 0,
            max_packet_size: ByteSize::mib(1),
            max_inflight: 64,
            max_queued_messages: 1000,
            max_queued_bytes: ByteSize::mib(16),
            max_keepalive: 65535,
            max_topic_levels: 128,
            max_topic_alias: 64,
            max_publish_rate: 0,
            conflate: Vec::new(),
        }
    }
}

/// Session lifetime policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Sessions {
    /// How long a v3 persistent session (clean session = 0) outlives its connection. Unset
    /// (the default) = until the client cleans it, as in Mosquitto.
    #[serde(
        serialize_with = "opt_duration::serialize",
        deserialize_with = "rules::de_session_expiry",
        skip_serializing_if = "Option::is_none"
    )]
    pub persistent_session_expiry: Option<Duration>,
    /// Upper bound for the Session Expiry Interval a v5 client may ask for. Unset = no cap.
    #[serde(
        serialize_with = "opt_duration::serialize",
        deserialize_with = "rules::de_session_expiry",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_session_expiry: Option<Duration>,
}

/// `$SYS` publishing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sys {
    /// Interval between `$SYS/broker/...` updates; `0s` disables them.
    #[serde(with = "duration")]
    pub interval: Duration,
}

impl Default for Sys {
    fn default() -> Self {
        Sys { interval: Duration::from_secs(10) }
    }
}

/// Process settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Network worker threads; 0 = one per CPU core.
    pub workers: usize,
    /// How long a graceful shutdown waits for clients to be disconnected.
    #[serde(serialize_with = "duration::serialize", deserialize_with = "rules::de_positive_duration")]
    pub shutdown_timeout: Duration,
}

impl Default for Server {
    fn default() -> Self {
        Server { workers: 0, shutdown_timeout: Duration::from_secs(5) }
    }
}

/// The HTTP endpoint: `/metrics` (Prometheus), `/healthz`, `/readyz` and the admin API
/// (`/api/v1/...`, only with `admin_token_file`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Serve the endpoint.
    pub enabled: bool,
    /// Address and port.
    pub bind: SocketAddr,
    /// File holding the admin API's bearer token (surrounding whitespace ignored). Unset:
    /// the admin API is off. Re-read when it changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
}

impl Default for Http {
    fn default() -> Self {
        Http { enabled: true, bind: SocketAddr::from(([127, 0, 0, 1], 8080)), admin_token_file: None }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `error`, `warn`, `info`, `debug` (every packet, like `mosquitto -v`) or `trace`, or a
    /// full `tracing` filter such as `info,fleetmq_broker::core=debug`.
    #[serde(deserialize_with = "rules::de_nonempty")]
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Log { level: "info".to_string(), format: LogFormat::Text }
    }
}

impl BrokerConfig {
    /// Parses YAML. An empty document gives the defaults. `origin` names the source in errors.
    pub fn from_yaml_str(yaml: &str, origin: &str) -> Result<Self, ConfigError> {
        if yaml.trim().is_empty() {
            return Ok(BrokerConfig::default());
        }
        let de = serde_yaml::Deserializer::from_str(yaml);
        BrokerConfig::deserialize(de)
            .map_err(|err| ConfigError::Parse { origin: origin.to_string(), message: err.to_string() })
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
        let config = Self::from_yaml_str(&text, &path.display().to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// Renders the config as YAML (what the operator writes into the ConfigMap).
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("broker config is always representable as YAML")
    }

    /// Checks ranges and uniqueness. Parsing already applies the same rules (so file errors
    /// carry a line number); this covers configs built in code, such as the operator's.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let check = |key: &str, result: Result<(), String>| {
            result.map_err(|reason| ConfigError::invalid(key, reason))
        };
        rules::listeners(&self.listeners).map_err(|(key, reason)| ConfigError::invalid(key, reason))?;
        let limits = &self.limits;
        check("limits.max_packet_size", rules::packet_size(&limits.max_packet_size))?;
        check("limits.max_inflight", rules::at_least_one(&limits.max_inflight))?;
        check("limits.max_queued_messages", rules::at_least_one(&limits.max_queued_messages))?;
        check("limits.max_keepalive", rules::at_least_one(&limits.max_keepalive))?;
        check("limits.max_topic_levels", rules::at_least_one(&limits.max_topic_levels))?;
        check(
            "sessions.persistent_session_expiry",
            rules::session_expiry(&self.sessions.persistent_session_expiry),
        )?;
        check("sessions.max_session_expiry", rules::session_expiry(&self.sessions.max_session_expiry))?;
        check("server.shutdown_timeout", rules::positive_duration(&self.server.shutdown_timeout))?;
        check("storage.fsync_interval", rules::positive_duration(&self.storage.fsync_interval))?;
        for (i, filter) in self.limits.conflate.iter().enumerate() {
            check(&format!("limits.conflate[{i}]"), rules::filter(filter))?;
        }
        check("log.level", rules::nonempty(&self.log.level))?;
        bridge::validate(&self.bridges).map_err(|(key, reason)| ConfigError::invalid(key, reason))?;
        if let Some(cluster) = &self.cluster {
            cluster::validate(cluster).map_err(|(key, reason)| ConfigError::invalid(key, reason))?;
            let link = cluster.link_bind;
            if link.port() != 0 {
                if let Some(i) = self.listeners.iter().position(|l| l.bind == link) {
                    return Err(ConfigError::invalid(
                        "cluster.link_bind",
                        format!("{link} is already used by listeners[{i}]"),
                    ));
                }
                if self.http.enabled && self.http.bind == link {
                    return Err(ConfigError::invalid(
                        "cluster.link_bind",
                        format!("{link} is already used by http.bind"),
                    ));
                }
            }
        }
        // Port 0 picks a free port at bind time, so it never collides.
        if self.http.enabled
            && self.http.bind.port() != 0
            && let Some(i) = self.listeners.iter().position(|l| l.bind == self.http.bind)
        {
            return Err(ConfigError::invalid(
                "http.bind",
                format!("{} is already used by listeners[{i}]", self.http.bind),
            ));
        }
        Ok(())
    }

    /// Whether clients without credentials are accepted, after applying the default rule
    /// (refused once a password file is configured; otherwise allowed only when every
    /// listener is on a loopback address).
    pub fn anonymous_allowed(&self) -> bool {
        self.auth.allow_anonymous.unwrap_or_else(|| {
            self.auth.password_file.is_none() && self.listeners.iter().all(|l| l.bind.ip().is_loopback())
        })
    }
}

#[cfg(test)]
mod tests;
