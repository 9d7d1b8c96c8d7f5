//! Membership over chitchat: publishes this node's link address and routes as gossip keys,
//! turns the live nodes' keys into the peer table, keeps the member list for the admin API and
//! `$SYS/broker/cluster/members`, and announces a graceful leave.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chitchat::transport::UdpTransport;
use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState, ProtocolVersion,
};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex as AsyncMutex, oneshot, watch};

use super::Cluster;
use super::keys::{self, LEFT_KEY, LINK_KEY, ROUTE_PREFIX, SHARED_PREFIX};
use super::status::{Member, MemberState};
use crate::core::Broker;
use crate::core::types::{Message, QoS};

/// How often seeds given as DNS names are resolved again and contacted (chitchat itself
/// re-resolves them only every 60 s; a pod that starts before its peers' DNS records exist
/// should not wait that long).
const SEED_REFRESH: Duration = Duration::from_secs(3);

/// `$SYS` topic with the number of alive members.
pub const SYS_MEMBERS: &str = "$SYS/broker/cluster/members";
/// `$SYS` topic prefix of the session move counters (`.../taken_over`, `.../handed_over`,
/// `.../drained_out`, `.../drained_in`, `.../connects_refused`).
pub const SYS_SESSIONS: &str = "$SYS/broker/cluster/sessions";
/// `$SYS` topic prefix of each peer's link state and counters (`.../<peer>/link`,
/// `.../<peer>/forwarded/out`, `.../forwarded/in`, `.../dropped`).
pub const SYS_PEERS: &str = "$SYS/broker/cluster/peers";

/// What gossip says about one live peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PeerInfo {
    /// Its link address.
    pub link: String,
    /// Its filters.
    pub filters: Vec<String>,
    /// Its shared groups, `(group, filter)`.
    pub groups: Vec<(String, String)>,
}

/// Chitchat refuses gossip from another cluster id. Derived from the secret, so nodes with a
/// different secret (another cluster, a misconfigured pod) never merge state; a hash, so the
/// secret itself is not on the wire.
fn cluster_id(secret: Option<&str>) -> String {
    match secret {
        None => "fleetmq".to_string(),
        Some(secret) => {
            let digest = Sha256::digest(format!("fleetmq cluster id\0{secret}").as_bytes());
            let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
            format!("fleetmq-{hex}")
        }
    }
}

/// The live peers from chitchat's live-node map: the newest generation of each name, without
/// this node, nodes that announced leaving, and nodes that have not announced a link yet.
fn live_peers<'a>(
    nodes: impl Iterator<Item = (&'a ChitchatId, &'a NodeState)>,
    self_name: &str,
) -> BTreeMap<String, PeerInfo> {
    let mut newest: BTreeMap<&str, (u64, &NodeState)> = BTreeMap::new();
    for (id, state) in nodes {
        if &*id.node_id == self_name {
            continue;
        }
        let slot = newest.entry(&id.node_id).or_insert((id.generation_id, state));
        if id.generation_id > slot.0 {
            *slot = (id.generation_id, state);
        }
    }
    newest
        .into_iter()
        .filter(|(_, (_, state))| state.get(LEFT_KEY).is_none())
        .filter_map(|(name, (_, state))| {
            let link = state.get(LINK_KEY)?.to_string();
            let filters =
                state.key_values().filter_map(|(k, _)| keys::filter_of(k)).map(str::to_string).collect();
            let groups = state
                .key_values()
                .filter_map(|(k, _)| keys::shared_of(k))
                .map(|(g, f)| (g.to_string(), f.to_string()))
                .collect();
            Some((name.to_string(), PeerInfo { link, filters, groups }))
        })
        .collect()
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    let target = format!("{}:{port}", super::host_for_address(host));
    tokio::net::lookup_host(&target)
        .await
        .map_err(|e| format!("cannot resolve {target}: {e}"))?
        .next()
        .ok_or_else(|| format!("{target} resolves to no address"))
}

/// Makes this node's route keys equal to the wanted set (only differences are written, so
/// gossip carries deltas).
async fn publish_routes(chitchat: &AsyncMutex<chitchat::Chitchat>, wanted: &BTreeSet<String>) {
    let mut chitchat = chitchat.lock().await;
    let state = chitchat.self_node_state();
    let current: BTreeSet<String> = state
        .key_values()
        .filter(|(k, _)| k.starts_with(ROUTE_PREFIX) || k.starts_with(SHARED_PREFIX))
        .map(|(k, _)| k.to_string())
        .collect();
    for gone in current.difference(wanted) {
        state.delete(gone);
    }
    for added in wanted.difference(&current) {
        state.set(added, "");
    }
}

/// The member list from chitchat's view: newest generation per name.
fn members(chitchat: &chitchat::Chitchat, self_name: &str) -> Vec<Member> {
    let live: HashSet<&ChitchatId> = chitchat.live_nodes().collect();
    let mut by_name: BTreeMap<String, Member> = BTreeMap::new();
    for (id, state) in chitchat.node_states() {
        let member_state = if state.get(LEFT_KEY).is_some() {
            MemberState::Left
        } else if live.contains(id) {
            MemberState::Alive
        } else {
            MemberState::Dead
        };
        let member = Member {
            name: id.node_id.to_string(),
            is_self: &*id.node_id == self_name,
            state: member_state,
            generation: id.generation_id,
            gossip_address: id.gossip_advertise_addr.to_string(),
            link_address: state.get(LINK_KEY).map(str::to_string),
            routes: state
                .key_values()
                .filter(|(k, _)| keys::filter_of(k).is_some() || keys::shared_of(k).is_some())
                .count(),
            link: None,
            forwarded_out: 0,
            forwarded_in: 0,
            dropped: 0,
            queued: 0,
        };
        match by_name.get(&member.name) {
            Some(existing) if existing.generation >= member.generation => {}
            _ => {
                by_name.insert(member.name.clone(), member);
            }
        }
    }
    by_name.into_values().collect()
}

/// Resolves the seeds given as names every [`SEED_REFRESH`] and hands every address found to
/// the gossip loop, until `stop`.
async fn resolve_seeds(
    seeds: Vec<String>,
    found: tokio::sync::mpsc::Sender<SocketAddr>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        for seed in &seeds {
            match tokio::net::lookup_host(seed.as_str()).await {
                Ok(addrs) => {
                    for addr in addrs {
                        if found.send(addr).await.is_err() {
                            return;
                        }
                    }
                }
                Err(err) => tracing::debug!("cluster: seed {seed} does not resolve (yet): {err}"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(SEED_REFRESH) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Runs membership until `stop`; `done` fires once the leave was announced.
pub(super) async fn run(
    cluster: Arc<Cluster>,
    broker: Broker,
    mut stop: watch::Receiver<bool>,
    done: oneshot::Sender<()>,
) {
    let config = cluster.config.clone();
    // In Kubernetes the pod's own DNS name may appear only once the pod exists in the
    // headless Service: keep trying rather than give up.
    let advertise = loop {
        match resolve(&cluster.advertise_host, config.gossip_bind.port()).await {
            Ok(addr) => break addr,
            Err(err) => {
                tracing::warn!("cluster: advertise_host: {err}; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = stop.changed() => { let _ = done.send(()); return }
                }
            }
        }
    };
    let interval = config.gossip_interval;
    let chitchat_config = ChitchatConfig {
        chitchat_id: ChitchatId::new(cluster.node.clone(), cluster.generation, advertise),
        cluster_id: cluster_id(cluster.secret.as_deref()),
        gossip_interval: interval,
        listen_addr: config.gossip_bind,
        seed_nodes: config.seeds.clone(),
        failure_detector_config: FailureDetectorConfig {
            // The defaults, with the intervals scaled to the gossip interval so tests with
            // short intervals detect failures quickly.
            phi_threshold: 8.0,
            sampling_window_size: 1000,
            max_interval: (interval * 20).max(Duration::from_secs(2)),
            initial_interval: interval,
            dead_node_grace_period: Duration::from_secs(3600),
        },
        marked_for_deletion_grace_period: Duration::from_secs(600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: ProtocolVersion::V0,
    };
    let link = cluster.link_address.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let handle: ChitchatHandle =
        match chitchat::spawn_chitchat(chitchat_config, vec![(LINK_KEY.to_string(), link)], &UdpTransport)
            .await
        {
            Ok(handle) => handle,
            Err(err) => {
                tracing::error!("cluster: cannot start gossip on {}: {err:#}", config.gossip_bind);
                let _ = done.send(());
                return;
            }
        };
    tracing::info!(
        node = %cluster.node,
        gossip = %config.gossip_bind,
        advertise = %advertise,
        seeds = ?config.seeds,
        "cluster: gossip started"
    );
    let chitchat = handle.chitchat();
    let mut live = chitchat.lock().await.live_nodes_watcher();
    publish_routes(&chitchat, &cluster.local.keys()).await;
    let mut tick = tokio::time::interval(interval);
    // Seeds by name, resolved off the loop (a slow resolver must not stall gossip handling).
    let (seed_tx, mut seed_rx) = tokio::sync::mpsc::channel::<SocketAddr>(64);
    let named: Vec<String> =
        config.seeds.iter().filter(|s| s.parse::<SocketAddr>().is_err()).cloned().collect();
    if !named.is_empty() {
        ntex::rt::spawn(resolve_seeds(named, seed_tx, stop.clone()));
    }
    let mut last_sys: Option<(Instant, usize)> = None;
    let mut warned_twin = false;
    loop {
        tokio::select! {
            _ = cluster.local.changed.notified() => {
                publish_routes(&chitchat, &cluster.local.keys()).await;
            }
            changed = live.changed() => {
                if changed.is_err() {
                    break;
                }
                let peers = {
                    let nodes = live.borrow_and_update();
                    live_peers(nodes.iter(), &cluster.node)
                };
                cluster.apply(peers);
            }
            _ = tick.tick() => {
                let (members, twin, known) = {
                    let chitchat = chitchat.lock().await;
                    // A live, newer incarnation of our name elsewhere: two nodes share a name
                    // (each would ignore the other), or this process is a stale copy.
                    let twin = chitchat.live_nodes().find(|id| {
                        *id.node_id == *cluster.node && id.generation_id > cluster.generation
                    }).map(|id| id.gossip_advertise_addr);
                    let members = members(&chitchat, &cluster.node);
                    let known = members
                        .iter()
                        .filter(|m| !m.is_self && m.state != MemberState::Left)
                        .map(|m| m.name.clone())
                        .collect::<BTreeSet<String>>();
                    (members, twin, known)
                };
                cluster.check_joined(&known);
                if twin.is_some() && !warned_twin {
                    tracing::error!(
                        node = %cluster.node,
                        other = ?twin,
                        "cluster: another live node uses this node name; node names must be unique"
                    );
                }
                warned_twin = twin.is_some();
                cluster.set_members(members);
                let alive = cluster.alive();
                let sys = broker.config().sys.interval;
                let due = match last_sys {
                    None => true,
                    Some((at, count)) => count != alive || at.elapsed() >= sys,
                };
                if !sys.is_zero() && due {
                    broker.publish_internal(Message::new(SYS_MEMBERS, alive.to_string(), QoS::AtMostOnce, true));
                    let moves = cluster.moves();
                    for (name, n) in [
                        ("taken_over", moves.taken_over),
                        ("handed_over", moves.handed_over),
                        ("drained_out", moves.drained_out),
                        ("drained_in", moves.drained_in),
                        ("connects_refused", moves.connects_refused),
                    ] {
                        let topic = format!("{SYS_SESSIONS}/{name}");
                        broker.publish_internal(Message::new(topic, n.to_string(), QoS::AtMostOnce, true));
                    }
                    for (peer, stats) in cluster.peer_stats() {
                        use super::status::PeerStats;
                        let base = format!("{SYS_PEERS}/{peer}");
                        for (leaf, value) in [
                            ("link", stats.link().as_str().to_string()),
                            ("forwarded/out", PeerStats::get(&stats.forwarded_out).to_string()),
                            ("forwarded/in", PeerStats::get(&stats.forwarded_in).to_string()),
                            ("dropped", PeerStats::get(&stats.dropped).to_string()),
                        ] {
                            let message = Message::new(format!("{base}/{leaf}"), value, QoS::AtMostOnce, true);
                            broker.publish_internal(message);
                        }
                    }
                    last_sys = Some((Instant::now(), alive));
                }
            }
            Some(seed) = seed_rx.recv() => {
                if seed != advertise && let Err(err) = handle.gossip(seed) {
                    tracing::debug!("cluster: gossip to seed {seed}: {err:#}");
                }
            }
            _ = stop.changed() => break,
        }
    }
    // Tell the peers now rather than let them wait for the failure detector: a few gossip
    // rounds (each reaches up to three peers) spread the key.
    chitchat.lock().await.self_node_state().set(LEFT_KEY, "1");
    tokio::time::sleep((interval * 3).max(Duration::from_millis(500))).await;
    if let Err(err) = handle.shutdown().await {
        tracing::debug!("cluster: gossip shutdown: {err:#}");
    }
    tracing::info!("cluster: left the cluster");
    let _ = done.send(());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chitchat instance holding one node's state (no sockets, no runtime needed).
    fn node(name: &str, generation: u64, keys: &[(&str, &str)]) -> chitchat::Chitchat {
        let addr: SocketAddr = ([127, 0, 0, 1], 7946).into();
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(name.to_string(), generation, addr),
            cluster_id: "t".to_string(),
            gossip_interval: Duration::from_secs(1),
            listen_addr: addr,
            seed_nodes: Vec::new(),
            failure_detector_config: FailureDetectorConfig::default(),
            marked_for_deletion_grace_period: Duration::from_secs(60),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V0,
        };
        let (_tx, seeds) = watch::channel(Default::default());
        let kvs = keys.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        chitchat::Chitchat::with_chitchat_id_and_seeds(config, seeds, kvs)
    }

    #[test]
    fn peers_are_read_from_gossip_keys() {
        let b = node("b", 1, &[("link", "b:7947"), ("r:a/+", ""), ("s:w/jobs/#", ""), ("other", "x")]);
        let peers = live_peers(b.node_states().iter(), "a");
        let info = &peers["b"];
        assert_eq!(info.link, "b:7947");
        assert_eq!(info.filters, vec!["a/+".to_string()]);
        assert_eq!(info.groups, vec![("w".to_string(), "jobs/#".to_string())]);
        assert!(live_peers(b.node_states().iter(), "b").is_empty(), "this node is not a peer");
        let no_link = node("c", 1, &[("r:a", "")]);
        assert!(live_peers(no_link.node_states().iter(), "a").is_empty(), "not ready without a link");
        let left = node("d", 1, &[("link", "d:1"), ("left", "1")]);
        assert!(live_peers(left.node_states().iter(), "a").is_empty(), "a leaving node is no peer");
        // Two incarnations of one name: the newest generation wins.
        let old = node("e", 1, &[("link", "old:1")]);
        let new = node("e", 2, &[("link", "new:1")]);
        let both = old.node_states().iter().chain(new.node_states().iter());
        assert_eq!(live_peers(both, "a")["e"].link, "new:1");
        let both = new.node_states().iter().chain(old.node_states().iter());
        assert_eq!(live_peers(both, "a")["e"].link, "new:1");
    }

    #[test]
    fn cluster_id_depends_on_the_secret_only() {
        assert_eq!(cluster_id(None), "fleetmq");
        let a = cluster_id(Some("one"));
        assert_eq!(a, cluster_id(Some("one")));
        assert_ne!(a, cluster_id(Some("two")));
        assert!(!a.contains("one"));
    }
}
