//! `cluster`: replicas of one broker that gossip membership and routes and forward messages to
//! each other (see docs/clustering.md). The whole section needs a restart to change.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration;

/// Default UDP gossip port (the memberlist/Serf convention, so firewalls rules read familiar).
pub const DEFAULT_GOSSIP_PORT: u16 = 7946;
/// Default TCP port of the inter-node link.
pub const DEFAULT_LINK_PORT: u16 = 7947;

/// Longest node name: a DNS name (a StatefulSet pod name always fits).
const MAX_NODE_NAME: usize = 253;

/// Clustering settings. Present = clustering on; absent = a single broker that opens no
/// cluster ports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// This node's name, unique in the cluster (gossip identity, link client id, metric
    /// label). Default: the machine's hostname (a StatefulSet pod's name). CLI:
    /// `--cluster-node-name` / `FLEETMQ_NODE_NAME`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// UDP address for gossip. The port is what peers and seeds use.
    pub gossip_bind: SocketAddr,
    /// TCP address of the inter-node link (an MQTT 5 listener for peers only). Port 0 picks a
    /// free port, which is then advertised through gossip.
    pub link_bind: SocketAddr,
    /// How peers reach this node: a DNS name or IP, without port (the ports are
    /// `gossip_bind`'s and `link_bind`'s). Default: the node name. CLI:
    /// `--cluster-advertise-host` / `FLEETMQ_ADVERTISE_HOST`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise_host: Option<String>,
    /// Gossip seeds, `host:port` (DNS names are resolved again at every attempt, so a headless
    /// Service name works; listing this node itself is harmless).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<String>,
    /// File holding the shared cluster secret (surrounding whitespace ignored). Required when
    /// `gossip_bind` or `link_bind` is not a loopback address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// Time between gossip rounds. Failure detection scales with it (a silent node is
    /// declared dead after roughly 15–20 intervals).
    #[serde(with = "duration")]
    pub gossip_interval: Duration,
    /// Messages waiting per peer while its link is slow or down; beyond it new messages for
    /// that peer are dropped (and counted).
    pub forward_queue: u32,
    /// TLS on the inter-node link: this node serves `cert_file`/`key_file` and verifies its
    /// peers' certificates against `ca_file` for their advertised host. Absent: plain TCP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClusterTls>,
}

/// `cluster.tls`: certificates of the inter-node link. Read at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    /// PEM certificate chain this node serves on the link (leaf first); it must be valid for
    /// the node's `advertise_host`.
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file`.
    pub key_file: PathBuf,
    /// PEM CA bundle the peers' link certificates must chain to.
    pub ca_file: PathBuf,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            node_name: None,
            gossip_bind: SocketAddr::from(([0, 0, 0, 0], DEFAULT_GOSSIP_PORT)),
            link_bind: SocketAddr::from(([0, 0, 0, 0], DEFAULT_LINK_PORT)),
            advertise_host: None,
            seeds: Vec::new(),
            secret_file: None,
            gossip_interval: Duration::from_secs(1),
            forward_queue: 10_000,
            tls: None,
        }
    }
}

impl Cluster {
    /// Whether a secret is mandatory: some cluster socket is reachable from other machines.
    pub fn needs_secret(&self) -> bool {
        !self.gossip_bind.ip().is_loopback() || !self.link_bind.ip().is_loopback()
    }
}

/// Checks a node name: DNS-name characters only, since it becomes an MQTT client id, a metric
/// label and part of log lines.
pub fn node_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NODE_NAME {
        return Err(format!("{name:?} must be 1 to {MAX_NODE_NAME} characters"));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')) {
        return Err(format!("{name:?} may only contain letters, digits, '-', '.' and '_'"));
    }
    Ok(())
}

/// Checks an advertised host: a DNS name or an IP address, without a port.
pub fn advertise_host(host: &str) -> Result<(), String> {
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if host.is_empty() || host.len() > MAX_NODE_NAME {
        return Err(format!("{host:?} must be a DNS name or IP address"));
    }
    if !host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')) {
        return Err(format!("{host:?} must be a DNS name or IP address, without a port"));
    }
    Ok(())
}

/// `host:port` with a non-empty host and a port above 0 (`[v6]:port` accepted).
fn host_port(address: &str) -> bool {
    address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
}

/// Semantic checks; errors name the key (`cluster.seeds[1]`).
pub(crate) fn validate(cluster: &Cluster) -> Result<(), (String, String)> {
    let err = |key: &str, reason: String| Err((format!("cluster.{key}"), reason));
    if let Some(name) = &cluster.node_name
        && let Err(reason) = node_name(name)
    {
        return err("node_name", reason);
    }
    if let Some(host) = &cluster.advertise_host
        && let Err(reason) = advertise_host(host)
    {
        return err("advertise_host", reason);
    }
    if cluster.gossip_bind.port() == 0 {
        return err("gossip_bind", "needs a fixed port: seeds and peers address it".into());
    }
    for (i, seed) in cluster.seeds.iter().enumerate() {
        if !host_port(seed) {
            return err(&format!("seeds[{i}]"), format!("{seed:?} is not host:port"));
        }
    }
    if cluster.needs_secret() && cluster.secret_file.is_none() {
        return err(
            "secret_file",
            "required when gossip_bind or link_bind is not a loopback address (otherwise anyone who \
             reaches the port could inject messages)"
                .into(),
        );
    }
    if cluster.gossip_interval < Duration::from_millis(10)
        || cluster.gossip_interval > Duration::from_secs(60)
    {
        return err("gossip_interval", "must be between 10ms and 60s".into());
    }
    if cluster.forward_queue == 0 {
        return err("forward_queue", "must be at least 1".into());
    }
    Ok(())
}
