//! Names and labels of everything the operator creates, in one place so builders, reconcilers,
//! watches and docs agree.

use std::collections::BTreeMap;

/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "fleetmq-operator";
/// `app.kubernetes.io/managed-by` value on every object the operator creates; the Secret watch
/// selects on it.
pub const MANAGED_BY: &str = "fleetmq-operator";
/// Label naming the broker an object belongs to.
pub const BROKER_LABEL: &str = "fleetmq.io/broker";
/// Pod-template annotation with the hash of the restart-requiring settings.
pub const RESTART_HASH_ANNOTATION: &str = "fleetmq.io/restart-hash";

/// Mount point of the ConfigMap; the broker runs with `--config /etc/fleetmq/broker.yaml`.
pub const CONFIG_DIR: &str = "/etc/fleetmq";
/// Key of the broker config in the ConfigMap.
pub const CONFIG_KEY: &str = "broker.yaml";
/// Mount point of the auth Secret (password file, ACL file, bridge config and certificates).
/// Kept apart from the ConfigMap mount: a volume nested inside a ConfigMap mount breaks when
/// the kubelet swaps the ConfigMap's `..data` link.
pub const AUTH_DIR: &str = "/var/run/secrets/fleetmq/auth";
/// Mount point of the server certificate Secret.
pub const TLS_DIR: &str = "/var/run/secrets/fleetmq/tls";
/// Mount point of the data volume (PVC or emptyDir).
pub const DATA_DIR: &str = "/var/lib/fleetmq";
/// Key of the Mosquitto-format password file in the auth Secret.
pub const PASSWORD_FILE_KEY: &str = "passwords";
/// Key of the Mosquitto-format ACL file in the auth Secret.
pub const ACL_FILE_KEY: &str = "acl";
/// Key of the broker's admin API bearer token in the auth Secret (generated once, kept).
pub const ADMIN_TOKEN_KEY: &str = "admin-token";
/// Key of the cluster secret (gossip cluster id, inter-node link password) in the auth Secret
/// (generated once, kept).
pub const CLUSTER_SECRET_KEY: &str = "cluster-secret";
/// UDP port of cluster gossip in the pods (listeners may not use it).
pub const CLUSTER_GOSSIP_PORT: u16 = 7946;
/// TCP port of the inter-node link in the pods (listeners may not use it).
pub const CLUSTER_LINK_PORT: u16 = 7947;

/// The host pods of `broker` reach each other under (the headless Service's name, resolved to
/// every pod, ready or not).
pub fn peers_host(broker: &str, namespace: &str) -> String {
    format!("{}.{namespace}.svc", headless_service(broker))
}

/// ConfigMap with the broker config.
pub fn config_map(broker: &str) -> String {
    format!("{broker}-config")
}

/// Secret with the password file, ACL file and bridge credentials.
pub fn auth_secret(broker: &str) -> String {
    format!("{broker}-auth")
}

/// Headless Service for peer discovery (the StatefulSet's `serviceName`).
pub fn headless_service(broker: &str) -> String {
    format!("{broker}-headless")
}

/// Client Service (same name as the broker, so clients use `<broker>.<namespace>.svc`).
pub fn client_service(broker: &str) -> String {
    broker.to_string()
}

/// Secret that a cert-manager Certificate fills.
pub fn tls_secret(broker: &str) -> String {
    format!("{broker}-tls")
}

/// Generated credentials of an MqttUser.
pub fn credentials_secret(user: &str) -> String {
    format!("{user}-mqtt-credentials")
}

/// In-cluster DNS name of the client Service.
pub fn service_host(broker: &str, namespace: &str) -> String {
    format!("{}.{namespace}.svc", client_service(broker))
}

/// Labels that select the broker's pods (immutable in a StatefulSet: never add to them).
pub fn selector_labels(broker: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "fleetmq-broker".to_string()),
        ("app.kubernetes.io/instance".to_string(), broker.to_string()),
    ])
}

/// Labels on every object of a broker.
pub fn broker_labels(broker: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(broker);
    labels.insert("app.kubernetes.io/component".to_string(), "broker".to_string());
    labels.insert("app.kubernetes.io/managed-by".to_string(), MANAGED_BY.to_string());
    labels.insert(BROKER_LABEL.to_string(), broker.to_string());
    labels
}

/// Labels of a user's generated credentials Secret.
pub fn user_secret_labels(broker: &str, user: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "fleetmq-user".to_string()),
        ("app.kubernetes.io/instance".to_string(), user.to_string()),
        ("app.kubernetes.io/managed-by".to_string(), MANAGED_BY.to_string()),
        (BROKER_LABEL.to_string(), broker.to_string()),
    ])
}

/// `key=value,...` form of a label map.
pub fn selector_string(labels: &BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}
