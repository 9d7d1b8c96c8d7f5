//! `bridges`: links from this broker to remote MQTT brokers (Mosquitto's `connection`
//! sections), with topic rules using Mosquitto's prefix semantics.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{ByteSize, byte_size, duration, opt_duration};

/// One bridge to a remote broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bridge {
    /// Unique name: used in the internal session id (`$bridge/<name>`), in
    /// `$SYS/broker/connection/<name>/state`, metrics and logs.
    pub name: String,
    /// Remote `host:port` addresses, tried in order (failover).
    pub addresses: Vec<String>,
    /// MQTT version spoken to the remote. Default: `5`.
    #[serde(default)]
    pub protocol: BridgeProtocol,
    /// Client id on the remote. Default: `fleetmq-bridge-<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Keep-alive towards the remote. Default: 60s.
    #[serde(default = "default_keepalive", with = "duration")]
    pub keepalive: Duration,
    /// Start a clean session on the remote at every connect. Default: false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub clean_session: bool,
    /// Session Expiry Interval asked of the remote (v5). Unset: never expires (unless
    /// `clean_session`).
    #[serde(default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub session_expiry: Option<Duration>,
    /// User Name on the remote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// File holding the password on the remote (surrounding whitespace ignored), so a
    /// Kubernetes Secret can be mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// TLS towards the remote. Unset: plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<BridgeTls>,
    /// Reconnect delays.
    #[serde(default)]
    pub backoff: Backoff,
    /// Bounds and overflow policy of the store-and-forward queue (out direction).
    #[serde(default, skip_serializing_if = "BridgeQueue::is_default")]
    pub queue: BridgeQueue,
    /// Connection state notifications, locally and on the remote.
    #[serde(default, skip_serializing_if = "Notifications::is_default")]
    pub notifications: Notifications,
    /// Topic rules.
    pub topics: Vec<BridgeTopic>,
}

fn default_keepalive() -> Duration {
    Duration::from_secs(60)
}

fn is_false(v: &bool) -> bool {
    !*v
}

impl Bridge {
    /// The client id used on the remote.
    pub fn remote_client_id(&self) -> String {
        self.client_id.clone().unwrap_or_else(|| format!("fleetmq-bridge-{}", self.name))
    }

    /// Topic of the state notification on this broker: `notifications.topic`, else
    /// `$SYS/broker/connection/<name>/state`.
    pub fn local_state_topic(&self) -> String {
        self.notifications
            .topic
            .clone()
            .unwrap_or_else(|| format!("$SYS/broker/connection/{}/state", self.name))
    }

    /// Topic of the state notification on the remote: `notifications.topic`, else Mosquitto's
    /// `$SYS/broker/connection/<remote client id>/state`.
    pub fn remote_state_topic(&self) -> String {
        self.notifications
            .topic
            .clone()
            .unwrap_or_else(|| format!("$SYS/broker/connection/{}/state", self.remote_client_id()))
    }
}

/// MQTT version of a bridge link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BridgeProtocol {
    /// MQTT 3.1.1.
    V3_1_1,
    /// MQTT 5.0.
    #[default]
    V5,
}

impl Serialize for BridgeProtocol {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(match self {
            BridgeProtocol::V3_1_1 => "3.1.1",
            BridgeProtocol::V5 => "5",
        })
    }
}

impl<'de> Deserialize<'de> for BridgeProtocol {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        // YAML gives `5` as an integer and `"5"`/`3.1.1` as strings; accept both spellings.
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = BridgeProtocol;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"3.1.1\" or \"5\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v.trim() {
                    "3.1.1" => Ok(BridgeProtocol::V3_1_1),
                    "5" | "5.0" => Ok(BridgeProtocol::V5),
                    other => {
                        Err(E::custom(format!("unknown protocol {other:?}, expected \"3.1.1\" or \"5\"")))
                    }
                }
            }
        }
        de.deserialize_any(V)
    }
}

/// TLS settings of a bridge (Mosquitto's `bridge_cafile`, `bridge_certfile`,
/// `bridge_keyfile`, `bridge_insecure`). The files are read at every connect attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeTls {
    /// PEM CA bundle the remote's certificate must chain to. Required unless
    /// `insecure_skip_verify`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for remotes that require one (with `key_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Name the remote's certificate must carry (and the SNI sent). Default: the host of the
    /// address being tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Accept any remote certificate (testing only; logged as a warning at every connect).
    #[serde(default, skip_serializing_if = "is_false")]
    pub insecure_skip_verify: bool,
}

/// Reconnect delays: exponential from `initial` up to `max`, with jitter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Backoff {
    /// First delay after a failed or lost connection. Default: 1s.
    #[serde(with = "duration")]
    pub initial: Duration,
    /// Largest delay. Default: 60s.
    #[serde(with = "duration")]
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(60) }
    }
}

/// The bridge's store-and-forward queue: messages for the remote wait in the internal session
/// `$bridge/<name>` while the remote is down or slow.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeQueue {
    /// Messages queued at most. Default: `limits.max_queued_messages`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_messages: Option<u32>,
    /// Payload bytes queued at most; 0 = unlimited. Default: `limits.max_queued_bytes`.
    #[serde(with = "opt_byte_size", skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<ByteSize>,
    /// What goes when the queue is full. Default: `drop_newest`.
    pub overflow: Overflow,
}

impl BridgeQueue {
    fn is_default(&self) -> bool {
        *self == BridgeQueue::default()
    }
}

/// Which message a full bridge queue gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// The arriving message is dropped; what is queued keeps its place (like any session
    /// queue of this broker, and like Mosquitto's `max_queued_messages`).
    #[default]
    DropNewest,
    /// The oldest queued message is dropped to make room: the remote gets the freshest data.
    DropOldest,
}

/// Mosquitto's `notifications`: a retained `1`/`0` state message while the link is up/down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Notifications {
    /// Publish the state on this broker (`$SYS/broker/connection/<name>/state`). Default: true.
    pub local: bool,
    /// Publish the state on the remote (`$SYS/broker/connection/<client id>/state`): `1` after
    /// connecting, `0` before a clean disconnect, and `0` as the bridge's will for an unclean
    /// one. Default: false (the remote must let the bridge publish to that topic).
    pub remote: bool,
    /// Topic used on both sides instead of the defaults above.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

impl Default for Notifications {
    fn default() -> Self {
        Notifications { local: true, remote: false, topic: None }
    }
}

impl Notifications {
    fn is_default(&self) -> bool {
        *self == Notifications::default()
    }
}

/// Serde for `Option<ByteSize>` in the style of [`byte_size`].
mod opt_byte_size {
    use super::{ByteSize, byte_size};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<ByteSize>, ser: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => byte_size::serialize(v, ser),
            None => ser.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Option<ByteSize>, D::Error> {
        Option::<ByteSize>::deserialize(de)
    }
}

/// Direction of a topic rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Remote → local.
    In,
    /// Local → remote.
    Out,
    /// Both ways.
    Both,
}

impl Direction {
    /// Whether local messages are forwarded to the remote.
    pub fn is_out(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }

    /// Whether remote messages are forwarded here.
    pub fn is_in(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }
}

/// One topic rule (Mosquitto's `topic <pattern> <direction> <qos> <local> <remote>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeTopic {
    /// Topic filter, relative to the prefixes.
    pub pattern: String,
    /// `in`, `out` or `both`.
    pub direction: Direction,
    /// Highest QoS forwarded (0, 1 or 2). Default: 1.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Prepended to `pattern` on this broker; must end with `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_prefix: Option<String>,
    /// Prepended to `pattern` on the remote; must end with `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_prefix: Option<String>,
}

fn default_qos() -> u8 {
    1
}

/// Checks the bridges; errors are `(key, reason)` with keys such as
/// `bridges[0].topics[1].pattern`.
pub(crate) fn validate(bridges: &[Bridge]) -> Result<(), (String, String)> {
    let err = |key: String, reason: String| Err((key, reason));
    for (i, bridge) in bridges.iter().enumerate() {
        let at = format!("bridges[{i}]");
        let name = &bridge.name;
        if name.trim().is_empty() || name.contains(['/', '+', '#', '\0']) {
            return err(format!("{at}.name"), format!("{name:?} must be non-empty without '/', '+', '#'"));
        }
        if let Some(j) = bridges[..i].iter().position(|b| &b.name == name) {
            return err(format!("{at}.name"), format!("{name:?} is already used by bridges[{j}]"));
        }
        if bridge.addresses.is_empty() {
            return err(format!("{at}.addresses"), "at least one host:port is required".into());
        }
        for (k, address) in bridge.addresses.iter().enumerate() {
            let ok = address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return err(format!("{at}.addresses[{k}]"), format!("{address:?} is not host:port"));
            }
        }
        if bridge.client_id.as_deref().is_some_and(|id| id.is_empty()) {
            return err(format!("{at}.client_id"), "must not be empty".into());
        }
        if let Some(tls) = &bridge.tls {
            if tls.ca_file.is_none() && !tls.insecure_skip_verify {
                return err(
                    format!("{at}.tls.ca_file"),
                    "required to verify the remote (or set insecure_skip_verify for tests)".into(),
                );
            }
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                let key = if tls.cert_file.is_some() { "key_file" } else { "cert_file" };
                return err(format!("{at}.tls.{key}"), "cert_file and key_file go together".into());
            }
            if tls.server_name.as_deref().is_some_and(|n| n.trim().is_empty()) {
                return err(format!("{at}.tls.server_name"), "must not be empty".into());
            }
        }
        if bridge.backoff.initial.is_zero() {
            return err(format!("{at}.backoff.initial"), "must be above 0s".into());
        }
        if bridge.backoff.max < bridge.backoff.initial {
            return err(format!("{at}.backoff.max"), "must be at least backoff.initial".into());
        }
        if bridge.queue.max_messages == Some(0) {
            return err(format!("{at}.queue.max_messages"), "must be at least 1".into());
        }
        if let Some(topic) = &bridge.notifications.topic
            && (topic.is_empty() || topic.contains(['+', '#', '\0']))
        {
            return err(
                format!("{at}.notifications.topic"),
                format!("{topic:?} must be a non-empty topic name without wildcards"),
            );
        }
        if bridge.topics.is_empty() {
            return err(format!("{at}.topics"), "at least one topic rule is required".into());
        }
        for (t, topic) in bridge.topics.iter().enumerate() {
            let at = format!("{at}.topics[{t}]");
            crate::rules::filter(&topic.pattern).or_else(|reason| err(format!("{at}.pattern"), reason))?;
            if topic.pattern.starts_with("$share/") {
                return err(format!("{at}.pattern"), "shared subscriptions cannot be bridged".into());
            }
            if bridge.protocol == BridgeProtocol::V3_1_1 && topic.direction == Direction::Both {
                // v3 has no No Local: the remote would echo every forwarded message back in.
                return err(
                    format!("{at}.direction"),
                    "`both` needs protocol 5 (No Local); with 3.1.1 use an `in` and an `out` rule on different remote topics"
                        .into(),
                );
            }
            if topic.qos > 2 {
                return err(format!("{at}.qos"), format!("{} is not 0, 1 or 2", topic.qos));
            }
            for (key, prefix) in
                [("local_prefix", &topic.local_prefix), ("remote_prefix", &topic.remote_prefix)]
            {
                if let Some(prefix) = prefix
                    && (!prefix.ends_with('/') || prefix.contains(['+', '#', '\0']))
                {
                    return err(
                        format!("{at}.{key}"),
                        format!("{prefix:?} must end with '/' and contain no wildcards"),
                    );
                }
            }
        }
    }
    Ok(())
}
