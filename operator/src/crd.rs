//! The custom resources: `MqttBroker`, `MqttUser` and `MqttBridge` (group `fleetmq.io`, version
//! `v1alpha1`).
//!
//! The schema comes from these types (schemars); rules that a schema cannot express are CEL
//! `x-kubernetes-validations` declared next to the field they guard. The same rules are applied
//! again in Rust by [`crate::validate`], so an object that reached the API server before a rule
//! existed (or a server without CEL) is still refused with the same message.

// kube's derive takes several `printcolumn(...)`/`validation = ...` items in one attribute;
// clippy mistakes their repeated keys (`type_`, `json_path`) for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, PodSecurityContext, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every FleetMQ resource.
pub const GROUP: &str = "fleetmq.io";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";

/// A valid MQTT topic filter: `+` fills a whole level, `#` is the whole last level. Written
/// without backslashes so the same text works in CEL, RE2 (the API server) and Rust's regex-free
/// checker in [`crate::validate::is_valid_filter`].
pub const TOPIC_FILTER_RE: &str = "^(([^+#/]*|[+])/)*([^+#/]*|[+]|#)$";

// ---------------------------------------------------------------------------------------------
// MqttBroker
// ---------------------------------------------------------------------------------------------

/// A FleetMQ broker deployment: a StatefulSet with its Services, config, credentials and
/// disruption budget.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "fleetmq.io",
    version = "v1alpha1",
    kind = "MqttBroker",
    plural = "mqttbrokers",
    shortname = "mqb",
    category = "fleetmq",
    namespaced,
    status = "MqttBrokerStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "An MQTT broker: replicas, listeners, TLS, persistence, limits, service, metrics and pod overrides.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!self.listeners.exists(l, l.protocol == 'mqtts' || l.protocol == 'wss') || has(self.tls)")
        .message("spec.tls is required when a listener uses protocol mqtts or wss")
        .field_path(".tls"),
    validation = Rule::new("self.listeners.all(l, self.listeners.exists_one(m, m.port == l.port))")
        .message("spec.listeners: two listeners use the same port")
        .field_path(".listeners"),
    validation = Rule::new("self.listeners.all(l, self.listeners.exists_one(m, m.name == l.name))")
        .message("spec.listeners: two listeners have the same name")
        .field_path(".listeners"),
    validation = Rule::new("self.listeners.all(l, l.port != (has(self.metrics) && has(self.metrics.port) ? self.metrics.port : 9090))")
        .message("spec.metrics.port (the broker's HTTP port for probes and metrics, default 9090) is already used by a listener")
        .field_path(".metrics.port"),
    validation = Rule::new("self.listeners.all(l, l.port != 7946 && l.port != 7947)")
        .message("spec.listeners: ports 7946 and 7947 are reserved for clustering (gossip and inter-node link)")
        .field_path(".listeners"),
    validation = Rule::new("!has(self.metrics) || !has(self.metrics.port) || (self.metrics.port != 7946 && self.metrics.port != 7947)")
        .message("spec.metrics.port: ports 7946 and 7947 are reserved for clustering (gossip and inter-node link)")
        .field_path(".metrics.port")
)]
pub struct MqttBrokerSpec {
    /// Number of broker pods. `kubectl scale mqb NAME --replicas=N` sets it.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// Broker container image. Default: the FleetMQ broker image of the operator's own version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Image pull policy. Default: Kubernetes' default for the image tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Secrets for pulling the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<String>,
    /// CPU and memory requests and limits of the broker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Network listeners. Default: one plain MQTT listener named `mqtt` on port 1883.
    #[serde(default = "default_listeners")]
    #[schemars(length(min = 1, max = 8))]
    pub listeners: Vec<ListenerSpec>,
    /// Server certificate and TLS settings of the `mqtts` and `wss` listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Client authentication policy.
    #[serde(default)]
    pub auth: AuthSpec,
    /// Durable state on a PersistentVolumeClaim per pod.
    #[serde(default)]
    pub persistence: PersistenceSpec,
    /// Connection, packet and queue limits (hot-reloaded, never restart pods).
    #[serde(default)]
    pub limits: LimitsSpec,
    /// The client Service.
    #[serde(default)]
    pub service: ServiceSpec,
    /// Prometheus metrics (Service port and ServiceMonitor) and the port of the broker's HTTP
    /// endpoint, which the probes use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsSpec>,
    /// Broker log level and format.
    #[serde(default)]
    pub log: LogSpec,
    /// How long the broker waits for clients to be disconnected on shutdown (seconds); the pod's
    /// termination grace period is derived from it.
    #[serde(default = "default_shutdown_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub shutdown_timeout_seconds: i32,
    /// Scheduling and metadata overrides for the broker pods.
    #[serde(default)]
    pub pod: PodOverrides,
    /// PodDisruptionBudget for the broker pods.
    #[serde(default)]
    pub pdb: PdbSpec,
}

impl Default for MqttBrokerSpec {
    /// The spec of `spec: {}`, every default applied (what the API server stores).
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("an empty broker spec deserializes")
    }
}

/// Port of the broker's HTTP endpoint when `spec.metrics.port` is not set (the CEL rule on
/// listener ports spells the same number).
pub const DEFAULT_HTTP_PORT: i32 = 9090;

impl MqttBrokerSpec {
    /// Port of the broker's HTTP endpoint (`/healthz`, `/readyz`, `/metrics`): `metrics.port`,
    /// else [`DEFAULT_HTTP_PORT`]. Served whether or not metrics are enabled, since the probes
    /// need it.
    pub fn http_port(&self) -> i32 {
        self.metrics.as_ref().map_or(DEFAULT_HTTP_PORT, |m| m.port)
    }
}

fn default_replicas() -> i32 {
    1
}

fn default_shutdown_timeout() -> i32 {
    5
}

fn default_listeners() -> Vec<ListenerSpec> {
    vec![ListenerSpec { name: "mqtt".to_string(), protocol: ListenerProtocol::Mqtt, port: 1883, path: None }]
}

/// Image pull policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    /// Always pull.
    Always,
    /// Pull when the image is not on the node.
    IfNotPresent,
    /// Never pull.
    Never,
}

impl PullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Transport of a listener.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// MQTT over plain TCP.
    Mqtt,
    /// MQTT over TLS.
    Mqtts,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl ListenerProtocol {
    /// Lowercase name, as in the CRD.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerProtocol::Mqtt => "mqtt",
            ListenerProtocol::Mqtts => "mqtts",
            ListenerProtocol::Ws => "ws",
            ListenerProtocol::Wss => "wss",
        }
    }

    /// Whether the listener needs the server certificate.
    pub fn is_tls(self) -> bool {
        matches!(self, ListenerProtocol::Mqtts | ListenerProtocol::Wss)
    }

    /// Whether the listener speaks WebSocket.
    pub fn is_websocket(self) -> bool {
        matches!(self, ListenerProtocol::Ws | ListenerProtocol::Wss)
    }
}

/// One listener: a container port, a port on both Services, and a listener in the broker config.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.path) || self.protocol == 'ws' || self.protocol == 'wss'")
        .message("spec.listeners[].path is only valid for ws and wss listeners")
        .field_path(".path")
)]
pub struct ListenerSpec {
    /// Name of the port (a DNS label of at most 15 characters, as Kubernetes port names are).
    #[schemars(length(min = 1, max = 15), regex(pattern = "^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// `mqtt`, `mqtts`, `ws` or `wss`.
    pub protocol: ListenerProtocol,
    /// Container and Service port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// HTTP path of a WebSocket listener. Default: `/mqtt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), regex(pattern = "^/"))]
    pub path: Option<String>,
}

/// The broker's server certificate: an existing `kubernetes.io/tls` Secret, or a cert-manager
/// issuer for which the operator creates a `Certificate`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.secretName) != has(self.issuerRef)")
        .message("spec.tls: set exactly one of secretName or issuerRef"),
    validation = Rule::new("!has(self.useIdentityAsUsername) || !self.useIdentityAsUsername || (has(self.requireClientCertificate) && self.requireClientCertificate)")
        .message("spec.tls.useIdentityAsUsername requires spec.tls.requireClientCertificate")
        .field_path(".useIdentityAsUsername")
)]
pub struct TlsSpec {
    /// Existing Secret with `tls.crt` and `tls.key` (and `ca.crt` with
    /// `requireClientCertificate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// cert-manager issuer; the operator creates a Certificate whose Secret is `<broker>-tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
    /// Extra DNS names for the Certificate (the Service names are always included).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    /// Lowest TLS version the `mqtts` and `wss` listeners accept: `"1.2"` (TLS 1.2 and 1.3, the
    /// default) or `"1.3"`. Quote it in YAML.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<TlsMinVersion>,
    /// Mutual TLS: refuse clients without a certificate signed by the CA in the Secret's
    /// `ca.crt` (cert-manager writes the issuing CA there; with `secretName` the Secret must
    /// have that key, or the broker does not start). Default: false (no client certificates
    /// are asked for).
    #[serde(default)]
    pub require_client_certificate: bool,
    /// The client certificate's subject Common Name becomes the MQTT username (no password is
    /// checked; that user's ACL rules apply). Requires `requireClientCertificate`.
    #[serde(default)]
    pub use_identity_as_username: bool,
}

// The generated schema shows this doc as `tls.minVersion`'s description (not the field's), so
// it is written for the reader of the CRD.
/// Lowest TLS version the `mqtts` and `wss` listeners accept: `"1.2"` (TLS 1.2 and 1.3, the
/// default) or `"1.3"`. Quote it in YAML.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TlsMinVersion {
    /// TLS 1.2 and 1.3.
    #[serde(rename = "1.2")]
    V1_2,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    V1_3,
}

/// A cert-manager issuer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// Issuer name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// `Issuer` (namespaced, the default) or `ClusterIssuer`.
    #[serde(default = "default_issuer_kind")]
    pub kind: String,
    /// API group of the issuer. Default: `cert-manager.io`.
    #[serde(default = "default_issuer_group")]
    pub group: String,
}

fn default_issuer_kind() -> String {
    "Issuer".to_string()
}

fn default_issuer_group() -> String {
    "cert-manager.io".to_string()
}

/// Client authentication.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// Accept clients that send no username. Default: false.
    #[serde(default)]
    pub allow_anonymous: bool,
}

/// When the broker counts a write as durable (the broker's `storage.fsync`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// Acknowledge only after the write is on disk; concurrent writes share one fsync (group
    /// commit). The default.
    Always,
    /// Acknowledge once journaled; sync every `fsyncInterval`. A node crash can lose that
    /// window, a broker crash loses nothing.
    Interval,
}

/// Durable state.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PersistenceSpec {
    /// Give each pod a PersistentVolumeClaim for its state (otherwise an emptyDir).
    #[serde(default)]
    pub enabled: bool,
    /// StorageClass of the claims. Default: the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Size of each claim, a Kubernetes quantity. Default: `1Gi`.
    #[serde(default = "default_size")]
    #[schemars(regex(pattern = "^[0-9]+(\\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    pub size: String,
    /// Durability policy: `always` (default) or `interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsync: Option<Fsync>,
    /// Sync period with `fsync: interval`, e.g. `50ms` or `1s`. Default: `50ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[1-9][0-9]*(ms|s)$"))]
    pub fsync_interval: Option<String>,
}

impl Default for PersistenceSpec {
    fn default() -> Self {
        PersistenceSpec {
            enabled: false,
            storage_class_name: None,
            size: default_size(),
            fsync: None,
            fsync_interval: None,
        }
    }
}

fn default_size() -> String {
    "1Gi".to_string()
}

/// Limits. Unset fields keep the broker's defaults (see docs/configuration.md).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Concurrent client connections per pod; 0 = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_connections: Option<i64>,
    /// Outbound QoS 1/2 messages in flight per session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub max_inflight: Option<i32>,
    /// Messages queued per session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4294967295_i64))]
    pub max_queued_messages: Option<i64>,
    /// Payload bytes queued per session; 0 = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_queued_bytes: Option<i64>,
    /// Largest packet accepted from a client, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 64, max = 268435460))]
    pub max_packet_size: Option<i64>,
    /// Largest keep-alive a client may use, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub max_keepalive: Option<i32>,
    /// Topic filters whose messages are conflated for offline sessions: a queued message is
    /// replaced by a newer one on the same topic, so a reconnecting client gets only the newest
    /// value per topic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 1024)))]
    #[x_kube(validation = Rule::new(
        "self.all(f, f.matches('^(([^+#/]*|[+])/)*([^+#/]*|[+]|#)$'))"
    ).message("spec.limits.conflate: every entry must be a valid MQTT topic filter"))]
    pub conflate: Vec<String>,
}

/// Kubernetes Service type of the client Service.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ServiceType {
    /// Reachable inside the cluster (the default).
    #[default]
    ClusterIP,
    /// Also on a port of every node.
    NodePort,
    /// Also through a cloud load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// The client Service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.loadBalancerSourceRanges) || size(self.loadBalancerSourceRanges) == 0 || self.type == 'LoadBalancer'")
        .message("spec.service.loadBalancerSourceRanges requires spec.service.type LoadBalancer")
        .field_path(".loadBalancerSourceRanges")
)]
pub struct ServiceSpec {
    /// `ClusterIP` (default), `NodePort` or `LoadBalancer`.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Annotations of the client Service (e.g. for a cloud load balancer).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// CIDRs allowed to reach a LoadBalancer Service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load_balancer_source_ranges: Vec<String>,
}

/// Prometheus metrics.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.serviceMonitor) || !self.serviceMonitor.enabled || self.enabled")
        .message("spec.metrics.serviceMonitor.enabled requires spec.metrics.enabled")
        .field_path(".serviceMonitor.enabled")
)]
pub struct MetricsSpec {
    /// Expose `/metrics` as port `metrics` of the Services (and allow a ServiceMonitor). The
    /// broker's HTTP endpoint runs either way: the probes use it.
    #[serde(default)]
    pub enabled: bool,
    /// Port of the broker's HTTP endpoint (`/metrics`, `/healthz`, `/readyz`), also when
    /// metrics are not enabled; must differ from every listener port. Default: 9090.
    #[serde(default = "default_metrics_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Create a Prometheus Operator ServiceMonitor (only when that CRD is served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_monitor: Option<ServiceMonitorSpec>,
}

fn default_metrics_port() -> i32 {
    DEFAULT_HTTP_PORT
}

/// A ServiceMonitor for the broker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    /// Create it.
    #[serde(default)]
    pub enabled: bool,
    /// Scrape interval, e.g. `30s`. Default: Prometheus' own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[0-9]+(ms|s|m|h)$"))]
    pub interval: Option<String>,
    /// Extra labels (e.g. the `release` label your Prometheus selects on).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Broker log level.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// The default.
    #[default]
    Info,
    /// Every packet.
    Debug,
    /// Everything.
    Trace,
}

/// Broker log format.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (the default in a cluster, for log collectors).
    #[default]
    Json,
}

/// Logging.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogSpec {
    /// `error`, `warn`, `info` (default), `debug` or `trace`.
    #[serde(default)]
    pub level: LogLevel,
    /// `json` (default) or `text`.
    #[serde(default)]
    pub format: LogFormat,
}

/// Pod-level overrides.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    /// Affinity rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Tolerations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Node selector.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Topology spread constraints. When empty and `replicas > 1`, pods are spread over nodes
    /// (`ScheduleAnyway`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// Extra pod annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Extra pod labels (the operator's own labels win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Priority class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Pod security context. Default: non-root user and group 65532, fsGroup 65532, seccomp
    /// `RuntimeDefault`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
    /// Service account of the broker pods. Default: the namespace's `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
}

/// PodDisruptionBudget.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PdbSpec {
    /// Create the budget. Default: true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Pods that may be unavailable during voluntary disruptions (number or percentage).
    /// Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}

impl Default for PdbSpec {
    fn default() -> Self {
        PdbSpec { enabled: true, max_unavailable: None }
    }
}

fn default_true() -> bool {
    true
}

/// Observed state of a broker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MqttBrokerStatus {
    /// `Ready`, `Progressing` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods of the StatefulSet.
    #[serde(default)]
    pub replicas: i32,
    /// Ready pods.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// In-cluster address of each listener.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    /// Hash of the rendered broker config (the ConfigMap's `broker.yaml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
}

/// Where clients inside the cluster reach one listener.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Listener name.
    pub name: String,
    /// Listener protocol.
    pub protocol: String,
    /// `<broker>.<namespace>.svc`.
    pub host: String,
    /// Service port.
    pub port: i32,
    /// `mqtt://host:port` (or `mqtts://`, `ws://`, `wss://` with the path).
    pub url: String,
}

// ---------------------------------------------------------------------------------------------
// MqttUser
// ---------------------------------------------------------------------------------------------

/// One MQTT identity on one broker, with its ACL.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "fleetmq.io",
    version = "v1alpha1",
    kind = "MqttUser",
    plural = "mqttusers",
    shortname = "mqu",
    category = "fleetmq",
    namespaced,
    status = "MqttUserStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "An MQTT user of one broker: password (generated or from a Secret) and ACL rules.",
    printcolumn(name = "Broker", type_ = "string", json_path = ".spec.brokerRef.name"),
    printcolumn(name = "Username", type_ = "string", json_path = ".status.username"),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct MqttUserSpec {
    /// The broker (same namespace).
    pub broker_ref: BrokerRef,
    /// MQTT username. Default: `metadata.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), regex(pattern = "^[^:\\s]+$"))]
    pub username: Option<String>,
    /// Take the password from this Secret (GitOps, Vault, External Secrets). Without it the
    /// operator generates one into Secret `<name>-mqtt-credentials`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// ACL rules in Mosquitto's semantics. A user without rules has no topic access once the
    /// broker enforces ACLs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub acl: Vec<AclRule>,
}

impl Default for MqttUserSpec {
    /// An empty spec (invalid until `brokerRef.name` is set); for tooling that needs `Default`.
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({"brokerRef": {"name": ""}})).expect("deserializes")
    }
}

/// A broker in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerRef {
    /// `MqttBroker` name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A key of a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret. Default: `password`.
    #[serde(default = "default_password_key")]
    pub key: String,
}

fn default_password_key() -> String {
    "password".to_string()
}

/// What an ACL rule allows.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AclAccess {
    /// Subscribe and receive.
    Read,
    /// Publish.
    Write,
    /// Both.
    Readwrite,
    /// Neither (overrides broader rules).
    Deny,
}

impl AclAccess {
    /// Mosquitto's keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            AclAccess::Read => "read",
            AclAccess::Write => "write",
            AclAccess::Readwrite => "readwrite",
            AclAccess::Deny => "deny",
        }
    }
}

/// One ACL rule.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.topic.matches('^(([^+#/]*|[+])/)*([^+#/]*|[+]|#)$')")
        .message("spec.acl[].topic is not a valid MQTT topic filter: '+' and '#' must fill a whole level and '#' must be the last")
        .field_path(".topic"),
    validation = Rule::new("!(self.topic.startsWith('$SYS') && (self.access == 'write' || self.access == 'readwrite'))")
        .message("spec.acl[].access: writing to $SYS topics is refused")
        .field_path(".access")
)]
pub struct AclRule {
    /// Topic filter (`+` and `#` wildcards).
    #[schemars(length(min = 1, max = 1024))]
    pub topic: String,
    /// `read`, `write`, `readwrite` or `deny`.
    pub access: AclAccess,
}

/// Observed state of a user.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MqttUserStatus {
    /// `Ready` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The effective username.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Secret with username, password, host, port and uri (generated passwords only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// MqttBridge
// ---------------------------------------------------------------------------------------------

/// A link from a broker to a remote MQTT broker.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "fleetmq.io",
    version = "v1alpha1",
    kind = "MqttBridge",
    plural = "mqttbridges",
    shortname = "mqbr",
    category = "fleetmq",
    namespaced,
    status = "MqttBridgeStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "A bridge from a broker to a remote MQTT broker, with topic rules in Mosquitto's bridge semantics.",
    printcolumn(name = "Broker", type_ = "string", json_path = ".spec.brokerRef.name"),
    printcolumn(name = "Remote", type_ = "string", json_path = ".spec.remote.addresses[0]"),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct MqttBridgeSpec {
    /// The local broker (same namespace).
    pub broker_ref: BrokerRef,
    /// The remote broker.
    pub remote: RemoteSpec,
    /// Topic rules.
    #[schemars(length(min = 1, max = 256))]
    pub topics: Vec<BridgeTopic>,
}

impl Default for MqttBridgeSpec {
    /// An empty spec (invalid until broker, remote and topics are set); for tooling that needs
    /// `Default`.
    fn default() -> Self {
        serde_json::from_value(
            serde_json::json!({"brokerRef": {"name": ""}, "remote": {"addresses": []}, "topics": []}),
        )
        .expect("deserializes")
    }
}

/// MQTT protocol version of the bridge connection.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolVersion {
    /// MQTT 3.1.1 (the default, like Mosquitto's).
    #[default]
    Mqttv311,
    /// MQTT 5.0.
    Mqttv5,
}

impl ProtocolVersion {
    /// Lowercase name, as in the CRD.
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolVersion::Mqttv311 => "mqttv311",
            ProtocolVersion::Mqttv5 => "mqttv5",
        }
    }
}

/// The remote end of a bridge.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RemoteSpec {
    /// `host:port` addresses, tried in order (Mosquitto's round-robin off).
    #[schemars(length(min = 1, max = 16), inner(length(min = 3, max = 261)))]
    #[x_kube(validation = Rule::new(
        "self.all(a, a.matches('^([^\\\\s:\\\\[\\\\]]+|\\\\[[0-9a-fA-F:.]+\\\\]):[0-9]{1,5}$'))"
    ).message("spec.remote.addresses: every address must be host:port"))]
    pub addresses: Vec<String>,
    /// `mqttv311` (default) or `mqttv5`.
    #[serde(default)]
    pub protocol_version: ProtocolVersion,
    /// Client id on the remote broker. Default: `<namespace>.<bridge name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 65535))]
    pub client_id: Option<String>,
    /// Keep-alive in seconds. Default: 60.
    #[serde(default = "default_keepalive")]
    #[schemars(range(min = 0, max = 65535))]
    pub keepalive: i32,
    /// Start with a clean session. Default: false, so the remote queues messages while the
    /// bridge is down (Mosquitto's `cleansession false`).
    #[serde(default)]
    pub clean_session: bool,
    /// Secret with the remote username and password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<CredentialsSecretRef>,
    /// TLS to the remote broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<BridgeTls>,
}

fn default_keepalive() -> i32 {
    60
}

/// Remote credentials.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key of the username. Default: `username`.
    #[serde(default = "default_username_key")]
    pub username_key: String,
    /// Key of the password. Default: `password`.
    #[serde(default = "default_password_key")]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".to_string()
}

/// TLS settings of a bridge.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BridgeTls {
    /// Secret with the CA bundle that signs the remote's certificate. Default: the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<CaSecretRef>,
    /// `kubernetes.io/tls` Secret with a client certificate (`tls.crt`, `tls.key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_secret_ref: Option<NameRef>,
    /// Name to verify in the remote certificate. Default: the host of the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Skip certificate verification (testing only).
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// A CA bundle in a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaSecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key of the PEM bundle. Default: `ca.crt`.
    #[serde(default = "default_ca_key")]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".to_string()
}

/// A Secret by name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NameRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Direction of a bridge topic rule, from the local broker's point of view.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Remote to local.
    In,
    /// Local to remote.
    Out,
    /// Both ways.
    Both,
}

impl Direction {
    /// Mosquitto's keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
            Direction::Both => "both",
        }
    }
}

/// One bridge topic rule (Mosquitto's `topic pattern direction qos local-prefix remote-prefix`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.pattern.matches('^(([^+#/]*|[+])/)*([^+#/]*|[+]|#)$')")
        .message("spec.topics[].pattern is not a valid MQTT topic filter")
        .field_path(".pattern"),
    validation = Rule::new("!has(self.localPrefix) || !(self.localPrefix.contains('+') || self.localPrefix.contains('#'))")
        .message("spec.topics[].localPrefix must not contain wildcards")
        .field_path(".localPrefix"),
    validation = Rule::new("!has(self.remotePrefix) || !(self.remotePrefix.contains('+') || self.remotePrefix.contains('#'))")
        .message("spec.topics[].remotePrefix must not contain wildcards")
        .field_path(".remotePrefix")
)]
pub struct BridgeTopic {
    /// Topic filter, relative to the prefixes.
    #[schemars(length(min = 1, max = 1024))]
    pub pattern: String,
    /// `in`, `out` or `both`.
    pub direction: Direction,
    /// QoS of the bridge's subscriptions and publishes. Default: 0.
    #[serde(default)]
    #[schemars(range(min = 0, max = 2))]
    pub qos: i32,
    /// Prefix on the local broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub local_prefix: Option<String>,
    /// Prefix on the remote broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub remote_prefix: Option<String>,
}

/// Observed state of a bridge.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MqttBridgeStatus {
    /// `Ready` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Live state read from the broker pods' admin API: `connected` when the bridge is connected
    /// on every pod that answered, else the state of the first pod where it is not
    /// (`connecting`, `backoff`, `notRunning`); absent while no pod answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The last connection error of the first pod whose bridge is not connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The bridge on each broker pod, in pod order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<BridgePodStatus>,
}

/// A bridge's state on one broker pod (from that pod's admin API).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BridgePodStatus {
    /// Pod name.
    pub pod: String,
    /// `connecting`, `connected`, `backoff`, `notRunning` (the pod's broker does not run the
    /// bridge) or `unreachable` (its admin API did not answer).
    pub state: String,
    /// Last connection error, or why the pod could not be asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Messages waiting on that pod for the remote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<u64>,
}

// ---------------------------------------------------------------------------------------------

/// Every CRD of the operator, in a fixed order (broker, user, bridge).
pub fn all_crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    vec![MqttBroker::crd(), MqttUser::crd(), MqttBridge::crd()]
}

/// The CRDs as one multi-document YAML stream (what `fleetmq-operator crd` prints).
pub fn crds_yaml() -> String {
    all_crds().iter().map(crd_yaml).collect::<Vec<_>>().join("")
}

/// One CRD as a YAML document starting with `---`.
pub fn crd_yaml(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> String {
    let value = serde_json::to_value(crd).expect("CRDs serialize");
    format!("---\n{}", crate::yaml::to_yaml(&value))
}
