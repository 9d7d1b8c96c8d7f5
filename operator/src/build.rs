//! Pure builders: one function per Kubernetes object, each deterministic (same input, same
//! bytes), no I/O. [`plan_broker`] assembles everything a broker needs from already-fetched
//! inputs; the reconciler applies the plan and `render` prints it.
//!
//! The restart-vs-reload rule lives here. Everything the broker can hot-reload (users, ACLs,
//! bridges, limits, the anonymous policy, certificate contents) is in the ConfigMap or the
//! auth/TLS Secrets, which are mounted by fixed names, so changing them never touches the pod
//! template. What the broker reads only at start (the `listeners` with their TLS settings,
//! `storage`, `server`, the HTTP endpoint's address and `log` sections of `broker.yaml`) and
//! what Kubernetes needs to re-create pods for (image, resources, volume claims) is hashed by
//! [`restart_hash`] into the pod-template annotation [`names::RESTART_HASH_ANNOTATION`], so the
//! StatefulSet rolls.

use std::collections::BTreeMap;

use fleetmq_config::BrokerConfig;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, LifecycleHandler, LocalObjectReference, ObjectFieldSelector,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    SeccompProfile, Secret, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec,
    SleepAction, TopologySpreadConstraint, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Resource as _, ResourceExt};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::auth::{self, BridgeEntry, PasswordHasher, SecretValue, UserEntry};
use crate::config::{self, RenderedConfig};
use crate::crd::{Endpoint, ListenerProtocol, MqttBroker, MqttBrokerSpec, MqttUser};
use crate::names;

/// The broker image when `spec.image` is unset: the broker of the operator's own version.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/fleetmq/fleetmq-broker:v", env!("CARGO_PKG_VERSION"));
/// Seconds the pod keeps serving after it is marked terminating, so endpoint controllers and
/// kube-proxy stop sending new connections before the broker starts its shutdown.
pub const PRE_STOP_SLEEP_SECONDS: i64 = 5;
/// Non-root user and group of the broker process (the distroless `nonroot` id).
pub const BROKER_UID: i64 = 65532;

/// Errors of the build step.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The broker object lacks a name or namespace.
    #[error("MqttBroker has no {0}")]
    Metadata(&'static str),
    /// The spec cannot be expressed as a broker config.
    #[error(transparent)]
    Config(#[from] config::ConfigRefused),
    /// Hashing or password generation failed.
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    /// A typed object did not convert (a bug).
    #[error("serializing {kind}: {source}")]
    Serialize {
        /// Object kind.
        kind: String,
        /// serde's error.
        source: serde_json::Error,
    },
}

/// Environment facts the builders need that are not in the custom resources.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildOptions {
    /// Image when `spec.image` is unset.
    pub default_image: String,
    /// Whether the Prometheus Operator's ServiceMonitor CRD is served.
    pub service_monitor_served: bool,
    /// OTLP collector the broker pods export traces to (`OTEL_EXPORTER_OTLP_ENDPOINT`); `None`:
    /// trace export stays off.
    pub otlp_endpoint: Option<String>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            default_image: DEFAULT_IMAGE.to_string(),
            service_monitor_served: false,
            otlp_endpoint: None,
        }
    }
}

/// One object to apply: its API resource and the object itself.
#[derive(Debug, Clone)]
pub struct Desired {
    /// Group/version/kind/plural for the dynamic API.
    pub resource: ApiResource,
    /// The object (apiVersion, kind, metadata with name and namespace, body).
    pub object: DynamicObject,
}

impl Desired {
    /// Wraps a typed k8s-openapi object.
    pub fn typed<K>(object: &K) -> Result<Self, BuildError>
    where
        K: kube::Resource<DynamicType = ()> + Serialize,
    {
        let resource = ApiResource::erase::<K>(&());
        let value = serde_json::to_value(object)
            .map_err(|source| BuildError::Serialize { kind: resource.kind.clone(), source })?;
        let object = serde_json::from_value(value)
            .map_err(|source| BuildError::Serialize { kind: resource.kind.clone(), source })?;
        Ok(Desired { resource, object })
    }

    /// `Kind/name`, for events and logs.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.resource.kind, self.object.name_any())
    }
}

/// Everything one broker needs.
#[derive(Debug, Clone)]
pub struct BrokerPlan {
    /// Objects in apply order (config and credentials before the workload that mounts them).
    pub objects: Vec<Desired>,
    /// The broker config and what of the spec the broker cannot honour yet.
    pub config: RenderedConfig,
    /// Hash of the rendered `broker.yaml` (status `configHash`).
    pub config_hash: String,
    /// Hash of the restart-requiring settings (pod-template annotation).
    pub restart_hash: String,
    /// In-cluster endpoints per listener (status `endpoints`).
    pub endpoints: Vec<Endpoint>,
}

/// The already-fetched inputs of one broker.
#[derive(Debug, Clone)]
pub struct BrokerInputs {
    /// The broker; `metadata.uid` becomes the owner reference (absent offline).
    pub broker: MqttBroker,
    /// Its valid users, one per username.
    pub users: Vec<UserEntry>,
    /// Its valid bridges.
    pub bridges: Vec<BridgeEntry>,
    /// The admin API token (kept from the live auth Secret, else newly generated; a placeholder
    /// offline).
    pub admin_token: SecretValue,
    /// The cluster secret (same life cycle as `admin_token`).
    pub cluster_secret: SecretValue,
    /// Environment facts.
    pub options: BuildOptions,
}

/// Builds every object of a broker.
pub fn plan_broker(inputs: &BrokerInputs, hasher: &PasswordHasher) -> Result<BrokerPlan, BuildError> {
    let broker = &inputs.broker;
    let name = broker.metadata.name.as_deref().ok_or(BuildError::Metadata("metadata.name"))?;
    let namespace = broker.metadata.namespace.as_deref().ok_or(BuildError::Metadata("metadata.namespace"))?;
    let bridges = auth::bridges(namespace, &inputs.bridges);
    let rendered = config::broker_config(&broker.spec, &bridges.config, &names::peers_host(name, namespace))?;
    let config_yaml = rendered.to_yaml(namespace, name);
    let config_hash = short_hash(config_yaml.as_bytes());

    let mut files = BTreeMap::new();
    files.insert(
        names::PASSWORD_FILE_KEY.to_string(),
        auth::password_file(namespace, name, &inputs.users, hasher)?,
    );
    files.insert(
        names::ACL_FILE_KEY.to_string(),
        auth::acl_file(namespace, name, &inputs.users, broker.spec.auth.allow_anonymous),
    );
    files.extend(bridges.files);
    files.insert(names::ADMIN_TOKEN_KEY.to_string(), inputs.admin_token.text());
    files.insert(names::CLUSTER_SECRET_KEY.to_string(), inputs.cluster_secret.text());

    let restart = restart_hash(&broker.spec, &rendered.config, &inputs.options.default_image);
    let mut objects = vec![
        Desired::typed(&config_map(broker, &config_yaml))?,
        Desired::typed(&auth_secret(broker, files))?,
    ];
    if let Some(cert) = certificate(broker) {
        objects.push(cert);
    }
    objects.push(Desired::typed(&headless_service(broker))?);
    objects.push(Desired::typed(&client_service(broker))?);
    objects.push(Desired::typed(&stateful_set(broker, &restart, &inputs.options))?);
    if let Some(pdb) = pod_disruption_budget(broker) {
        objects.push(Desired::typed(&pdb)?);
    }
    if inputs.options.service_monitor_served
        && let Some(sm) = service_monitor(broker)
    {
        objects.push(sm);
    }
    Ok(BrokerPlan {
        objects,
        config: rendered,
        config_hash,
        restart_hash: restart,
        endpoints: endpoints(broker),
    })
}

/// First 16 hex digits of SHA-256: short enough for an annotation, long enough to never
/// collide between two configs of one broker.
pub fn short_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Hash of everything that needs a broker restart: the sections of the rendered config that the
/// broker applies only at start (on reload it logs them as needing a restart and keeps the
/// running values, see docs/configuration.md, "Hot reload"), plus the pod's image, resources
/// and volume claims.
///
/// Deliberately absent, because the broker reloads them from mounted files: users, passwords
/// and ACLs (auth Secret), bridges, `limits` and `auth` (ConfigMap), and certificate contents
/// (TLS Secret; the TLS *file paths* and settings are part of `listeners` and do count).
/// Hashing the rendered sections rather than CRD fields means a future CRD field that reaches
/// one of them rolls the pods without anyone remembering to add it here.
pub fn restart_hash(spec: &MqttBrokerSpec, config: &BrokerConfig, default_image: &str) -> String {
    let key = json!({
        "listeners": config.listeners,
        "storage": config.storage,
        "server": config.server,
        // The admin token file is read when the HTTP endpoint starts.
        "http": {
            "enabled": config.http.enabled,
            "bind": config.http.bind,
            "admin_token_file": config.http.admin_token_file,
        },
        "cluster": config.cluster,
        // The level reloads live; the format is fixed at start.
        "log": { "format": config.log.format },
        // Size and class live only in the volume claim templates, not in broker.yaml.
        "persistence": spec.persistence,
        "image": spec.image.as_deref().unwrap_or(default_image),
        "imagePullPolicy": spec.image_pull_policy,
        "resources": spec.resources,
    });
    short_hash(crate::yaml::to_yaml(&key).as_bytes())
}

fn owner(broker: &MqttBroker) -> Option<Vec<OwnerReference>> {
    // Absent offline (no uid): render prints no owner reference rather than a made-up uid that
    // the garbage collector would treat as a deleted owner.
    broker.controller_owner_ref(&()).map(|o| vec![o])
}

fn meta(broker: &MqttBroker, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: broker.metadata.namespace.clone(),
        labels: Some(names::broker_labels(&broker.name_any())),
        owner_references: owner(broker),
        ..ObjectMeta::default()
    }
}

/// The ConfigMap with `broker.yaml`.
pub fn config_map(broker: &MqttBroker, config_yaml: &str) -> ConfigMap {
    ConfigMap {
        metadata: meta(broker, names::config_map(&broker.name_any())),
        data: Some(BTreeMap::from([(names::CONFIG_KEY.to_string(), config_yaml.to_string())])),
        ..ConfigMap::default()
    }
}

/// The auth Secret: password file, ACL file, bridge file and bridge certificates.
pub fn auth_secret(broker: &MqttBroker, files: BTreeMap<String, String>) -> Secret {
    Secret {
        metadata: meta(broker, names::auth_secret(&broker.name_any())),
        type_: Some("Opaque".to_string()),
        data: Some(files.into_iter().map(|(k, v)| (k, ByteString(v.into_bytes()))).collect()),
        ..Secret::default()
    }
}

fn service_ports(spec: &MqttBrokerSpec) -> Vec<ServicePort> {
    let mut ports: Vec<ServicePort> = spec
        .listeners
        .iter()
        .map(|l| ServicePort {
            name: Some(l.name.clone()),
            port: l.port,
            target_port: Some(IntOrString::String(l.name.clone())),
            protocol: Some("TCP".to_string()),
            ..ServicePort::default()
        })
        .collect();
    if let Some(m) = spec.metrics.as_ref().filter(|m| m.enabled) {
        ports.push(ServicePort {
            name: Some("metrics".to_string()),
            port: m.port,
            target_port: Some(IntOrString::String(HTTP_PORT_NAME.to_string())),
            protocol: Some("TCP".to_string()),
            ..ServicePort::default()
        });
    }
    ports
}

fn service_meta(broker: &MqttBroker, name: String, role: &str) -> ObjectMeta {
    let mut m = meta(broker, name);
    if let Some(labels) = m.labels.as_mut() {
        // Tells the two Services apart (the ServiceMonitor selects the client one only).
        labels.insert("fleetmq.io/service".to_string(), role.to_string());
    }
    m
}

/// Headless Service for peer discovery: every pod gets `<pod>.<broker>-headless`, ready or not.
pub fn headless_service(broker: &MqttBroker) -> Service {
    let name = broker.name_any();
    Service {
        metadata: service_meta(broker, names::headless_service(&name), "headless"),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            publish_not_ready_addresses: Some(true),
            selector: Some(names::selector_labels(&name)),
            ports: Some({
                let mut ports = service_ports(&broker.spec);
                for port in cluster_container_ports() {
                    let name = port.name.clone().unwrap_or_default();
                    ports.push(ServicePort {
                        port: port.container_port,
                        target_port: Some(IntOrString::String(name.clone())),
                        name: Some(name),
                        protocol: port.protocol,
                        ..ServicePort::default()
                    });
                }
                ports
            }),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The client Service (`<broker>.<namespace>.svc`).
pub fn client_service(broker: &MqttBroker) -> Service {
    let name = broker.name_any();
    let spec = &broker.spec.service;
    let mut metadata = service_meta(broker, names::client_service(&name), "client");
    if !spec.annotations.is_empty() {
        metadata.annotations = Some(spec.annotations.clone());
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(spec.type_.as_str().to_string()),
            selector: Some(names::selector_labels(&name)),
            ports: Some(service_ports(&broker.spec)),
            load_balancer_source_ranges: (!spec.load_balancer_source_ranges.is_empty())
                .then(|| spec.load_balancer_source_ranges.clone()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Name of the container port of the broker's HTTP endpoint (`/healthz`, `/readyz`,
/// `/metrics`); the Services' `metrics` port and the ServiceMonitor target it by this name.
pub const HTTP_PORT_NAME: &str = "metrics";
/// Seconds of termination grace beyond preStop and `shutdownTimeoutSeconds`: the cluster drain
/// (handing sessions over, relaying, leaving the cluster).
pub const DRAIN_MARGIN_SECONDS: i64 = 15;
/// Name of the cluster gossip port (UDP) in the pod and the headless Service.
pub const CLUSTER_GOSSIP_PORT_NAME: &str = "gossip";
/// Name of the inter-node link port (TCP) in the pod and the headless Service.
pub const CLUSTER_LINK_PORT_NAME: &str = "cluster-link";

/// Path of the liveness probe: `200 ok` while the broker process runs.
pub const LIVENESS_PATH: &str = "/healthz";
/// Path of the readiness probe: `200 ready` once listeners are bound and the store is open,
/// `503` after SIGTERM (so endpoints drop the pod during shutdown).
pub const READINESS_PATH: &str = "/readyz";

/// Seconds the startup probe waits in total for the HTTP endpoint (it answers only once the
/// store is recovered, which takes time with a large persistent store).
pub const STARTUP_SECONDS: i32 = 300;

/// The probes, built in one place: `(startup, liveness, readiness)`, all HTTP GETs on the
/// broker's HTTP endpoint (port [`HTTP_PORT_NAME`]). The endpoint is served by the same server
/// as the MQTT listeners, so an answer means the listeners are bound; TLS and WebSocket
/// listeners need no probe of their own. The startup probe holds the other two off while the
/// broker recovers its store, so a slow recovery is not killed by the liveness probe.
pub fn probes() -> (Probe, Probe, Probe) {
    let get = |path: &str| {
        Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String(HTTP_PORT_NAME.to_string()),
            scheme: Some("HTTP".to_string()),
            ..HTTPGetAction::default()
        })
    };
    let period = 5;
    let startup = Probe {
        http_get: get(LIVENESS_PATH),
        period_seconds: Some(period),
        timeout_seconds: Some(3),
        failure_threshold: Some(STARTUP_SECONDS / period),
        ..Probe::default()
    };
    let liveness = Probe {
        http_get: get(LIVENESS_PATH),
        period_seconds: Some(10),
        timeout_seconds: Some(3),
        failure_threshold: Some(3),
        ..Probe::default()
    };
    let readiness = Probe {
        http_get: get(READINESS_PATH),
        period_seconds: Some(5),
        timeout_seconds: Some(3),
        failure_threshold: Some(2),
        ..Probe::default()
    };
    (startup, liveness, readiness)
}

fn default_pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(BROKER_UID),
        run_as_group: Some(BROKER_UID),
        fs_group: Some(BROKER_UID),
        fs_group_change_policy: Some("OnRootMismatch".to_string()),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            localhost_profile: None,
        }),
        ..PodSecurityContext::default()
    }
}

fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_string()]), add: None }),
        ..SecurityContext::default()
    }
}

/// Name of the TLS Secret the pods mount, if TLS is configured.
pub fn tls_secret_name(broker: &MqttBroker) -> Option<String> {
    broker.spec.tls.as_ref().map(|tls| match &tls.secret_name {
        Some(name) => name.clone(),
        None => names::tls_secret(&broker.name_any()),
    })
}

/// The StatefulSet.
pub fn stateful_set(broker: &MqttBroker, restart_hash: &str, options: &BuildOptions) -> StatefulSet {
    let default_image = options.default_image.as_str();
    let name = broker.name_any();
    let spec = &broker.spec;
    let selector = names::selector_labels(&name);

    let mut ports: Vec<ContainerPort> = spec
        .listeners
        .iter()
        .map(|l| ContainerPort {
            name: Some(l.name.clone()),
            container_port: l.port,
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        })
        .collect();
    // Always declared: the probes target it by name, whether or not metrics are exposed.
    ports.push(ContainerPort {
        name: Some(HTTP_PORT_NAME.to_string()),
        container_port: spec.http_port(),
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    });
    ports.extend(cluster_container_ports());

    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    };
    let mut mounts = vec![
        mount("config", names::CONFIG_DIR, true),
        mount("auth", names::AUTH_DIR, true),
        mount("data", names::DATA_DIR, false),
        mount("tmp", "/tmp", false),
    ];
    let mut volumes = vec![
        Volume {
            name: "config".to_string(),
            config_map: Some(ConfigMapVolumeSource {
                name: names::config_map(&name),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "auth".to_string(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(names::auth_secret(&name)),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "tmp".to_string(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    if let Some(secret) = tls_secret_name(broker) {
        mounts.push(mount("tls", names::TLS_DIR, true));
        volumes.push(Volume {
            name: "tls".to_string(),
            secret: Some(SecretVolumeSource { secret_name: Some(secret), ..SecretVolumeSource::default() }),
            ..Volume::default()
        });
    }
    let volume_claim_templates = if spec.persistence.enabled {
        Some(vec![PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".to_string()),
                labels: Some(selector.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".to_string()]),
                storage_class_name: spec.persistence.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_string(),
                        Quantity(spec.persistence.size.clone()),
                    )])),
                    ..VolumeResourceRequirements::default()
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            ..PersistentVolumeClaim::default()
        }])
    } else {
        volumes.push(Volume {
            name: "data".to_string(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        });
        None
    };
    volumes.sort_by(|a, b| a.name.cmp(&b.name));

    let (startup, liveness, readiness) = probes();
    let container = Container {
        name: "broker".to_string(),
        image: Some(spec.image.clone().unwrap_or_else(|| default_image.to_string())),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_string()),
        args: Some(vec!["--config".to_string(), format!("{}/{}", names::CONFIG_DIR, names::CONFIG_KEY)]),
        env: Some({
            let mut env = cluster_env(broker);
            if let Some(endpoint) = options.otlp_endpoint.as_deref() {
                env.extend(otlp_env(broker, endpoint));
            }
            env
        }),
        ports: Some(ports),
        resources: spec.resources.clone(),
        security_context: Some(container_security()),
        volume_mounts: Some(mounts),
        startup_probe: Some(startup),
        liveness_probe: Some(liveness),
        readiness_probe: Some(readiness),
        lifecycle: Some(k8s_openapi::api::core::v1::Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction { seconds: PRE_STOP_SLEEP_SECONDS }),
                ..LifecycleHandler::default()
            }),
            ..Default::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        ..Container::default()
    };

    let pod = &spec.pod;
    let mut labels = pod.labels.clone();
    labels.extend(names::broker_labels(&name));
    let mut annotations = pod.annotations.clone();
    annotations.insert(names::RESTART_HASH_ANNOTATION.to_string(), restart_hash.to_string());
    let topology_spread_constraints = if !pod.topology_spread_constraints.is_empty() {
        Some(pod.topology_spread_constraints.clone())
    } else if spec.replicas > 1 {
        // Replicas on one node share its fate; spread them unless the user decided otherwise.
        Some(vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "kubernetes.io/hostname".to_string(),
            when_unsatisfiable: "ScheduleAnyway".to_string(),
            label_selector: Some(LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            }),
            ..TopologySpreadConstraint::default()
        }])
    } else {
        None
    };
    // SIGTERM arrives after the preStop sleep; the broker then has shutdown_timeout to send
    // DISCONNECT (0x8B) to every client and hand its sessions to the other pods, then relays
    // for a few gossip rounds (at most 5 s with the default 1 s rounds) and leaves the cluster
    // (at most 6 s). The margin covers those so the kubelet never SIGKILLs a draining pod.
    let grace = PRE_STOP_SLEEP_SECONDS + i64::from(spec.shutdown_timeout_seconds) + DRAIN_MARGIN_SECONDS;

    StatefulSet {
        metadata: meta(broker, name.clone()),
        spec: Some(StatefulSetSpec {
            replicas: Some(spec.replicas),
            service_name: Some(names::headless_service(&name)),
            selector: LabelSelector { match_labels: Some(selector), ..LabelSelector::default() },
            // Broker pods do not depend on each other's order; start and replace them together.
            pod_management_policy: Some("Parallel".to_string()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".to_string()),
                ..StatefulSetUpdateStrategy::default()
            }),
            volume_claim_templates,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    security_context: Some(pod.security_context.clone().unwrap_or_else(default_pod_security)),
                    termination_grace_period_seconds: Some(grace),
                    // The broker never talks to the API server.
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    service_account_name: pod.service_account_name.clone(),
                    affinity: pod.affinity.clone(),
                    tolerations: (!pod.tolerations.is_empty()).then(|| pod.tolerations.clone()),
                    node_selector: (!pod.node_selector.is_empty()).then(|| pod.node_selector.clone()),
                    topology_spread_constraints,
                    priority_class_name: pod.priority_class_name.clone(),
                    image_pull_secrets: (!spec.image_pull_secrets.is_empty()).then(|| {
                        spec.image_pull_secrets
                            .iter()
                            .map(|n| LocalObjectReference { name: n.clone() })
                            .collect()
                    }),
                    ..PodSpec::default()
                }),
            },
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

/// The cluster's ports in the pod: gossip (UDP) and the inter-node link (TCP).
fn cluster_container_ports() -> Vec<ContainerPort> {
    vec![
        ContainerPort {
            name: Some(CLUSTER_GOSSIP_PORT_NAME.to_string()),
            container_port: i32::from(names::CLUSTER_GOSSIP_PORT),
            protocol: Some("UDP".to_string()),
            ..ContainerPort::default()
        },
        ContainerPort {
            name: Some(CLUSTER_LINK_PORT_NAME.to_string()),
            container_port: i32::from(names::CLUSTER_LINK_PORT),
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        },
    ]
}

/// The pod's cluster identity: its name (the node name) and the address peers reach it under
/// (`<pod>.<headless Service>.<namespace>.svc`). `$(FLEETMQ_NODE_NAME)` is expanded by the
/// kubelet from the variable above it.
fn cluster_env(broker: &MqttBroker) -> Vec<EnvVar> {
    let namespace = broker.metadata.namespace.clone().unwrap_or_default();
    vec![
        EnvVar {
            name: "FLEETMQ_NODE_NAME".to_string(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".to_string(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
        },
        EnvVar {
            name: "FLEETMQ_ADVERTISE_HOST".to_string(),
            value: Some(format!(
                "$(FLEETMQ_NODE_NAME).{}",
                names::peers_host(&broker.name_any(), &namespace)
            )),
            value_from: None,
        },
    ]
}

/// Trace export settings for the broker container: the collector, and resource attributes that
/// name the pod (the `$(POD_NAME)` reference is expanded by the kubelet from the variable above
/// it).
fn otlp_env(broker: &MqttBroker, endpoint: &str) -> Vec<EnvVar> {
    let value =
        |name: &str, value: String| EnvVar { name: name.to_string(), value: Some(value), value_from: None };
    let namespace = broker.metadata.namespace.clone().unwrap_or_default();
    vec![
        EnvVar {
            name: "POD_NAME".to_string(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".to_string(),
                    api_version: None,
                }),
                ..EnvVarSource::default()
            }),
        },
        value("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_string()),
        value(
            "OTEL_RESOURCE_ATTRIBUTES",
            format!(
                "k8s.namespace.name={namespace},k8s.statefulset.name={},k8s.pod.name=$(POD_NAME)",
                broker.name_any()
            ),
        ),
    ]
}

/// The PodDisruptionBudget (unless `spec.pdb.enabled` is false).
pub fn pod_disruption_budget(broker: &MqttBroker) -> Option<PodDisruptionBudget> {
    let pdb = &broker.spec.pdb;
    pdb.enabled.then(|| PodDisruptionBudget {
        metadata: meta(broker, broker.name_any()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(pdb.max_unavailable.clone().unwrap_or(IntOrString::Int(1))),
            selector: Some(LabelSelector {
                match_labels: Some(names::selector_labels(&broker.name_any())),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

/// API resource of cert-manager's Certificate.
pub fn certificate_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"),
        "certificates",
    )
}

/// API resource of the Prometheus Operator's ServiceMonitor.
pub fn service_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    )
}

fn dynamic(resource: ApiResource, metadata: ObjectMeta, body: serde_json::Value) -> Desired {
    let mut object = DynamicObject::new(metadata.name.as_deref().unwrap_or_default(), &resource);
    object.metadata = metadata;
    object.data = body;
    Desired { resource, object }
}

/// The cert-manager Certificate, when `spec.tls.issuerRef` is set. Its Secret is
/// `<broker>-tls`; cert-manager renews it in place, which the broker hot-reloads.
pub fn certificate(broker: &MqttBroker) -> Option<Desired> {
    let tls = broker.spec.tls.as_ref()?;
    let issuer = tls.issuer_ref.as_ref()?;
    let name = broker.name_any();
    let ns = broker.metadata.namespace.clone().unwrap_or_default();
    let headless = names::headless_service(&name);
    let mut dns_names = vec![
        name.clone(),
        format!("{name}.{ns}"),
        format!("{name}.{ns}.svc"),
        format!("{name}.{ns}.svc.cluster.local"),
        format!("*.{headless}.{ns}.svc"),
        format!("*.{headless}.{ns}.svc.cluster.local"),
    ];
    for extra in &tls.dns_names {
        if !dns_names.contains(extra) {
            dns_names.push(extra.clone());
        }
    }
    Some(dynamic(
        certificate_resource(),
        meta(broker, names::tls_secret(&name)),
        json!({
            "spec": {
                "secretName": names::tls_secret(&name),
                "issuerRef": { "name": issuer.name, "kind": issuer.kind, "group": issuer.group },
                "dnsNames": dns_names,
                "privateKey": { "algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always" },
            }
        }),
    ))
}

/// The ServiceMonitor, when metrics and `serviceMonitor.enabled` are on.
pub fn service_monitor(broker: &MqttBroker) -> Option<Desired> {
    let metrics = broker.spec.metrics.as_ref().filter(|m| m.enabled)?;
    let sm = metrics.service_monitor.as_ref().filter(|s| s.enabled)?;
    let name = broker.name_any();
    let mut metadata = meta(broker, name.clone());
    if let Some(labels) = metadata.labels.as_mut() {
        labels.extend(sm.labels.clone());
    }
    let mut selector = names::selector_labels(&name);
    selector.insert("fleetmq.io/service".to_string(), "client".to_string());
    let mut endpoint = json!({ "port": "metrics", "path": "/metrics" });
    if let Some(interval) = &sm.interval {
        endpoint["interval"] = json!(interval);
    }
    Some(dynamic(
        service_monitor_resource(),
        metadata,
        json!({ "spec": { "selector": { "matchLabels": selector }, "endpoints": [endpoint] } }),
    ))
}

fn scheme(protocol: ListenerProtocol) -> &'static str {
    protocol.as_str()
}

/// In-cluster endpoints of every listener, in spec order.
pub fn endpoints(broker: &MqttBroker) -> Vec<Endpoint> {
    let host =
        names::service_host(&broker.name_any(), broker.metadata.namespace.as_deref().unwrap_or("default"));
    broker
        .spec
        .listeners
        .iter()
        .map(|l| {
            let path = if l.protocol.is_websocket() {
                l.path.clone().unwrap_or_else(|| fleetmq_config::DEFAULT_WS_PATH.to_string())
            } else {
                String::new()
            };
            Endpoint {
                name: l.name.clone(),
                protocol: l.protocol.as_str().to_string(),
                host: host.clone(),
                port: l.port,
                url: format!("{}://{host}:{}{path}", scheme(l.protocol), l.port),
            }
        })
        .collect()
}

/// The endpoint a user's credentials Secret points at: the first `mqtts` listener (credentials
/// should not cross the network in clear text when TLS is offered), else the first plain `mqtt`
/// one, else the first listener (`wss`/`ws`, with the path in the URI).
pub fn client_endpoint(broker: &MqttBroker) -> Option<Endpoint> {
    let all = endpoints(broker);
    all.iter()
        .find(|e| config::TLS_LISTENERS_SUPPORTED && e.protocol == "mqtts")
        .or_else(|| all.iter().find(|e| e.protocol == "mqtt"))
        .or_else(|| all.first())
        .cloned()
}

/// Percent-encodes a URI userinfo component (RFC 3986 unreserved characters stay).
fn userinfo(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The generated credentials Secret of a user (`<user>-mqtt-credentials`), owned by the
/// MqttUser.
pub fn user_credentials_secret(
    user: &MqttUser,
    broker: &MqttBroker,
    username: &str,
    password: &str,
) -> Secret {
    let user_name = user.name_any();
    let mut data = BTreeMap::from([
        ("username".to_string(), username.to_string()),
        ("password".to_string(), password.to_string()),
    ]);
    if let Some(ep) = client_endpoint(broker) {
        let path =
            ep.url.split_once(&format!(":{}", ep.port)).map(|(_, p)| p.to_string()).unwrap_or_default();
        data.insert("host".to_string(), ep.host.clone());
        data.insert("port".to_string(), ep.port.to_string());
        data.insert(
            "uri".to_string(),
            format!(
                "{}://{}:{}@{}:{}{path}",
                ep.protocol,
                userinfo(username),
                userinfo(password),
                ep.host,
                ep.port
            ),
        );
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(names::credentials_secret(&user_name)),
            namespace: user.metadata.namespace.clone(),
            labels: Some(names::user_secret_labels(&broker.name_any(), &user_name)),
            owner_references: user.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_string()),
        data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v.into_bytes()))).collect()),
        ..Secret::default()
    }
}
