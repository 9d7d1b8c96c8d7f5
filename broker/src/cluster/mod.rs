//! Clustering (issue 9, first slice): replicas of one broker find each other by gossip
//! (chitchat: scuttlebutt anti-entropy, phi-accrual failure detection, per-node key/values),
//! publish the filters they need as gossip keys, and forward each locally published message
//! once to every live peer with a matching filter (retained messages to every peer) over a
//! persistent MQTT 5 link per peer. See docs/clustering.md.
//!
//! `keys` encodes routes as gossip keys, `local` counts this node's filters, `table` matches
//! topics against the peers' filters, `wire` maps messages to link PUBLISHes, `link` is the
//! outgoing side of one peer, `link_server` the incoming side, `gossip` runs membership and
//! `status` holds what the admin API, `/metrics` and `$SYS` show.

mod gossip;
pub mod keys;
pub mod link;
pub mod link_server;
pub mod local;
pub mod status;
pub mod table;
pub mod takeover;
pub mod wire;

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use fleetmq_config::BrokerConfig;
use tokio::sync::{oneshot, watch};

use crate::core::Broker;
use crate::core::hooks::{Forwarded, Forwarder, RouteWatch, SharedMode};
use crate::core::topic::SubscriptionFilter;
use crate::core::types::Message;
use link::{Identity, PeerQueue};
use local::LocalRoutes;
use status::{ClusterStatus, LinkState, Member, MemberState, PeerStats};
use table::PeerTable;

/// Why clustering cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No `cluster.node_name` and no usable hostname.
    #[error(
        "cluster.node_name is not set and the hostname cannot be used ({0}); set cluster.node_name or \
         --cluster-node-name"
    )]
    NoNodeName(String),
    /// The secret file cannot be used.
    #[error("cluster.secret_file {path}: {reason}")]
    Secret {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// `cluster.tls` cannot be used (the error names the key and file).
    #[error(transparent)]
    Tls(#[from] crate::transport::tls::TlsError),
}

/// This node's cluster membership and forwarding. Shared by the core (as its route watcher
/// and forwarder), the link listener, the gossip task and the HTTP endpoint.
pub struct Cluster {
    config: fleetmq_config::Cluster,
    /// TLS towards peers' links (`cluster.tls`).
    link_tls: Option<Arc<rustls::ClientConfig>>,
    node: String,
    advertise_host: String,
    secret: Option<String>,
    /// Start time in milliseconds: chitchat's generation, so a restarted node is told apart
    /// from its previous incarnation.
    generation: u64,
    local: Arc<LocalRoutes>,
    table: RwLock<PeerTable<PeerQueue>>,
    /// Counters per peer name, kept for the life of the process.
    stats: Mutex<BTreeMap<String, Arc<PeerStats>>>,
    /// Membership as of the last gossip round.
    members: Mutex<Vec<Member>>,
    /// `host:port` peers use for the link (known once the listener is bound).
    link_address: Mutex<String>,
    stop: watch::Sender<bool>,
    stopped: Mutex<Option<oneshot::Receiver<()>>>,
    /// Session claims this node is waiting on.
    claims: takeover::Claims,
    /// Client ids whose sessions this draining node pushed to a peer that has not
    /// acknowledged them yet: claims for them are answered `Busy` (the client retries and
    /// finds the session at its new node).
    in_transit: Mutex<std::collections::HashSet<String>>,
    /// Session moves, for metrics and the admin API.
    moves: status::SessionMoves,
    /// This node's retained sync with a peer after it joined.
    retained_sync: Mutex<takeover::RetainedSync>,
    /// Whether this node knows the cluster (see [`Cluster::joined`]); latched.
    joined: watch::Sender<bool>,
    /// When this node started; the join timeout counts from here.
    started: std::time::Instant,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("node", &self.node).finish_non_exhaustive()
    }
}

/// The machine's hostname (a StatefulSet pod's name), from the kernel.
fn hostname() -> Result<String, String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .map_err(|_| "neither /proc/sys/kernel/hostname nor $HOSTNAME is readable".to_string())?;
    fleetmq_config::cluster::node_name(&name).map(|()| name)
}

fn read_secret(path: &PathBuf) -> Result<String, ClusterError> {
    let err = |reason: String| ClusterError::Secret { path: path.clone(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(err("the file is empty".to_string()));
    }
    Ok(secret.to_string())
}

impl Cluster {
    /// Sets clustering up for `broker` when its config has a `cluster` section: resolves the
    /// node name, reads the secret and installs the core hooks. Call before
    /// [`Broker::recover`] so restored subscriptions are announced. Nothing is bound or sent
    /// until [`Cluster::start`].
    pub fn attach(broker: &Broker) -> Result<Option<Arc<Cluster>>, ClusterError> {
        let config = broker.config();
        let Some(cluster) = Cluster::new(&config)? else { return Ok(None) };
        broker.set_cluster_hooks(cluster.clone(), cluster.clone());
        Ok(Some(cluster))
    }

    fn new(config: &BrokerConfig) -> Result<Option<Arc<Cluster>>, ClusterError> {
        let Some(c) = &config.cluster else { return Ok(None) };
        let node = match &c.node_name {
            Some(name) => name.clone(),
            None => hostname().map_err(ClusterError::NoNodeName)?,
        };
        let secret = c.secret_file.as_ref().map(read_secret).transpose()?;
        let link_tls = match &c.tls {
            Some(tls) => Some(crate::bridge::tls::client_config_at(
                "cluster.tls",
                &fleetmq_config::BridgeTls {
                    ca_file: Some(tls.ca_file.clone()),
                    cert_file: None,
                    key_file: None,
                    server_name: None,
                    insecure_skip_verify: false,
                },
            )?),
            None => None,
        };
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or_default();
        let (stop, _) = watch::channel(false);
        Ok(Some(Arc::new(Cluster {
            advertise_host: c.advertise_host.clone().unwrap_or_else(|| node.clone()),
            config: c.clone(),
            link_tls,
            node,
            secret,
            generation,
            local: Arc::new(LocalRoutes::default()),
            table: RwLock::new(PeerTable::default()),
            stats: Mutex::new(BTreeMap::new()),
            members: Mutex::new(Vec::new()),
            link_address: Mutex::new(String::new()),
            stop,
            stopped: Mutex::new(None),
            claims: takeover::Claims::default(),
            in_transit: Mutex::new(std::collections::HashSet::new()),
            moves: status::SessionMoves::default(),
            retained_sync: Mutex::new(takeover::RetainedSync::default()),
            joined: watch::channel(false).0,
            started: std::time::Instant::now(),
        })))
    }

    /// Takes `client_id`'s session from whichever peer has it, before a CONNECT of that
    /// client is accepted here (see [`takeover`]). Waits for every peer with a live link, at
    /// most [`takeover::CLAIM_TIMEOUT`]; a handed-over session is installed (and durable when
    /// persistent) before this returns. Keep the returned guard until the CONNECT is done, so a
    /// concurrent claim from a peer loses meanwhile. `None`: another node is connecting the
    /// same client id at this moment and wins; refuse this CONNECT (the client retries).
    pub async fn claim(self: &Arc<Self>, broker: &Broker, client_id: &str) -> Option<takeover::ClaimGuard> {
        self.joined().await;
        let peers = self.connected_peers();
        let (id, answer) = self.claims.start(client_id, peers.clone());
        let guard = takeover::ClaimGuard { cluster: self.clone(), id };
        if peers.is_empty() {
            self.claims.decide(id);
            return Some(guard);
        }
        let claim = Arc::new(takeover::Control::Claim { id, client_id: client_id.to_string() }.to_message());
        {
            let table = self.table.read().unwrap_or_else(|p| p.into_inner());
            for name in &peers {
                if let Some(peer) = table.get(name) {
                    peer.handle.send(&claim, Vec::new());
                }
            }
        }
        match tokio::time::timeout(takeover::CLAIM_TIMEOUT, answer).await {
            Ok(Ok(takeover::Outcome::Imported(ticket))) => {
                if let Err(err) = broker.durable(ticket).wait().await {
                    tracing::error!(client_id, "cluster: storing a handed-over session failed: {err}");
                }
                Some(guard)
            }
            Ok(Ok(takeover::Outcome::Lost)) => {
                Self::bump(&self.moves.connects_refused);
                tracing::info!(
                    client_id,
                    "cluster: the client connects on another node at the same time; refused here"
                );
                None
            }
            Ok(_) => Some(guard),
            Err(_) => {
                tracing::warn!(
                    client_id,
                    peers = ?self.claims.silent(id),
                    "cluster: no answer to a session claim within {:?}; the client goes on with what this node has",
                    takeover::CLAIM_TIMEOUT
                );
                self.claims.decide(id);
                Some(guard)
            }
        }
    }

    /// The live peers (with routes in the table) whose link is connected, by name.
    fn connected_peers(&self) -> BTreeSet<String> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        table
            .all()
            .filter(|(_, peer)| matches!(peer.handle.stats.link(), LinkState::Connected))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Waits until this node knows the cluster: a (re)started node learns its peers and
    /// their routes by gossip a few rounds after its listeners are bound, and a client it
    /// admitted before that would publish into a node that forwards to nobody (acknowledged,
    /// delivered to no other node) and claim its session from nobody (a fresh session while
    /// its own is on a peer). So CONNECTs wait here, at most [`Cluster::join_timeout`].
    pub async fn joined(&self) {
        let mut joined = self.joined.subscribe();
        let _ = tokio::time::timeout(self.join_timeout(), joined.wait_for(|j| *j)).await;
    }

    /// Whether this node knows the cluster (for `/readyz`).
    pub fn is_joined(&self) -> bool {
        *self.joined.borrow()
    }

    /// How long after start a node admits clients without knowing every peer: the first node
    /// of a cluster (or a single replica) has nobody to learn from, and a peer that is down
    /// must not keep the others' restarts waiting.
    pub fn join_timeout(&self) -> std::time::Duration {
        (self.config.gossip_interval * 5)
            .clamp(std::time::Duration::from_secs(2), std::time::Duration::from_secs(5))
    }

    /// Decides whether this node knows the cluster now: every peer gossip knows of (`known`,
    /// by name; left ones excluded) is live here with its routes and a connected link, or
    /// the join timeout passed.
    fn check_joined(&self, known: &BTreeSet<String>) {
        if self.is_joined() {
            return;
        }
        let connected = self.connected_peers();
        let missing: Vec<&String> = known.difference(&connected).collect();
        if !known.is_empty() && missing.is_empty() {
            tracing::info!(
                peers = known.len(),
                "cluster: joined (every peer's routes known, links up); admitting clients"
            );
        } else if self.started.elapsed() >= self.join_timeout() {
            if known.is_empty() {
                tracing::info!(
                    "cluster: no peer found within {:?}; admitting clients as the only node",
                    self.join_timeout()
                );
            } else {
                tracing::warn!(
                    unreachable = ?missing,
                    "cluster: admitting clients after {:?} without these peers (down, or not reachable yet)",
                    self.join_timeout()
                );
            }
        } else {
            return;
        }
        self.joined.send_replace(true);
    }

    /// How long a moved session's stand-in relays messages here to its new node: well past
    /// the time gossip needs to spread the session's routes from there (usually a few rounds;
    /// the stand-in costs only its subscriptions, so it errs long).
    pub fn relay_grace(&self) -> std::time::Duration {
        (self.config.gossip_interval * 20)
            .clamp(std::time::Duration::from_secs(2), std::time::Duration::from_secs(30))
    }

    /// How long a draining node stays after handing its sessions over, relaying, before it
    /// announces that it leaves (a few gossip rounds; bounded by the drain's deadline).
    fn drain_linger(&self) -> std::time::Duration {
        (self.config.gossip_interval * 5)
            .clamp(std::time::Duration::from_millis(500), std::time::Duration::from_secs(10))
    }

    fn relay_to(self: &Arc<Self>, peer: &str) -> (Arc<takeover::LinkRelay>, std::time::Duration) {
        self.relay_for(peer, self.relay_grace())
    }

    /// A closed relay to `peer` for a session about to move there (see
    /// [`takeover::LinkRelay`]), and how long its stand-in lives.
    fn relay_for(
        self: &Arc<Self>,
        peer: &str,
        grace: std::time::Duration,
    ) -> (Arc<takeover::LinkRelay>, std::time::Duration) {
        (Arc::new(takeover::LinkRelay::new(Arc::downgrade(self), peer.to_string())), grace)
    }

    fn relay_hook(
        relay: &(Arc<takeover::LinkRelay>, std::time::Duration),
    ) -> (crate::core::hooks::RelayTo, std::time::Duration) {
        (crate::core::hooks::RelayTo(relay.0.clone()), relay.1)
    }

    /// Queues a control message for `peer` (dropped, and said so, when it is not a peer).
    pub fn send_control(&self, peer: &str, control: takeover::Control) {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        match table.get(peer) {
            Some(p) => p.handle.send(&Arc::new(control.to_message()), Vec::new()),
            None => tracing::warn!(peer, "cluster: control message for an unknown peer dropped"),
        }
    }

    /// Drain: hands every session still on this node to the peers (each to its
    /// [`takeover::heir`]) and waits (at most `bound`) until the peers acknowledged them and
    /// everything else queued for them. Call once clients were asked to leave and before
    /// leaving the cluster; clients that reconnect anywhere get their session back by the
    /// usual claim. Returns how many sessions were handed over. Without live peers nothing
    /// moves (the sessions stay in this node's store).
    pub async fn hand_over_all(self: &Arc<Self>, broker: &Broker, bound: std::time::Duration) -> usize {
        let peers: Vec<String> = self.connected_peers().into_iter().collect();
        if peers.is_empty() {
            return 0;
        }
        let mut moved = 0;
        for client_id in broker.client_ids() {
            if client_id.starts_with(crate::bridge::SESSION_PREFIX) {
                continue;
            }
            let Some(heir) = takeover::heir(&client_id, &peers) else { break };
            // Marked before it leaves, so a claim arriving meanwhile is told to retry.
            self.transit(&client_id, true);
            // A draining node's stand-ins relay until it is gone: peers keep routing here
            // until they learn that it left, which it announces last.
            let relay = self.relay_for(heir, std::time::Duration::from_secs(3600));
            let Some(session) = broker.export_session(&client_id, Some(Self::relay_hook(&relay))) else {
                self.transit(&client_id, false);
                continue;
            };
            let push = takeover::Control::Push { session: takeover::encode_within_limit(session).into() };
            let acked = {
                let table = self.table.read().unwrap_or_else(|p| p.into_inner());
                table.get(heir).map(|peer| peer.handle.send_acked(&Arc::new(push.to_message())))
            };
            relay.0.open();
            let Some(acked) = acked else {
                self.transit(&client_id, false);
                continue;
            };
            moved += 1;
            Self::bump(&self.moves.drained_out);
            let (cluster, id) = (self.clone(), client_id.to_string());
            ntex::rt::spawn(async move {
                // Stored at the heir (or the link gave up): claims go there from now on.
                let _ = acked.await;
                cluster.transit(&id, false);
            });
        }
        let deadline = std::time::Instant::now() + bound;
        self.drain(bound).await;
        tracing::info!(
            sessions = moved,
            peers = peers.len(),
            "cluster: sessions handed over to the other nodes"
        );
        // Stay a little longer: until gossip has spread the sessions' new routes, messages
        // for them still arrive here and are relayed to their new nodes.
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        tokio::time::sleep(self.drain_linger().min(left)).await;
        self.drain(deadline.saturating_duration_since(std::time::Instant::now())).await;
        moved
    }

    /// Session moves since start.
    pub fn moves(&self) -> status::SessionMoveCounts {
        self.moves.counts()
    }

    fn bump(counter: &std::sync::atomic::AtomicU64) {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn transit(&self, client_id: &str, on: bool) {
        let mut in_transit = self.in_transit.lock().unwrap_or_else(|p| p.into_inner());
        if on {
            in_transit.insert(client_id.to_string());
        } else {
            in_transit.remove(client_id);
        }
    }

    /// After start: asks the first peer whose link comes up for its retained messages, so a
    /// joining (or restarted) node has the cluster's retained state, not only what is
    /// published after it joined. Nothing happens when no peer shows up within a while (the
    /// first node of a cluster keeps its own stored retained messages).
    async fn sync_retained_once(self: Arc<Self>) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut stop = self.stop.subscribe();
        let peer = loop {
            let first = self.connected_peers().into_iter().next();
            if let Some(peer) = first {
                break peer;
            }
            if std::time::Instant::now() >= deadline || *stop.borrow_and_update() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
                _ = stop.changed() => return,
            }
        };
        let id = self.generation;
        *self.retained_sync.lock().unwrap_or_else(|p| p.into_inner()) =
            takeover::RetainedSync { asked: Some((id, peer.clone())), ..Default::default() };
        tracing::info!(peer, "cluster: asking a peer for its retained messages");
        self.send_control(&peer, takeover::Control::RetainedSync { id });
    }

    /// A control message from peer `from` (arrived on its link).
    pub async fn on_control(
        self: &Arc<Self>,
        broker: &Broker,
        from: &str,
        topic: &str,
        payload: &crate::core::types::Bytes,
    ) {
        use takeover::Control;
        match Control::parse(topic, payload) {
            Some(Control::Claim { id, client_id }) => {
                // Both nodes claim the same client id at once: the smaller node name wins, on
                // both sides (the other side may not be claiming yet when this claim arrives
                // there, so the larger one also gives up on its own).
                // A claim here that is decided (its CONNECT going ahead) always wins; a session
                // on its way to another node (drain) is not answered for until it arrived.
                let moving = self.in_transit.lock().unwrap_or_else(|p| p.into_inner()).contains(&client_id);
                let wins = moving
                    || match self.claims.state(&client_id) {
                        Some(takeover::ClaimState::Decided) => true,
                        Some(takeover::ClaimState::Waiting) if self.node.as_str() < from => true,
                        Some(takeover::ClaimState::Waiting) => {
                            self.claims.concede(&client_id);
                            false
                        }
                        None => false,
                    };
                let relay = self.relay_to(from);
                let answer = if wins {
                    Control::Busy { id }
                } else {
                    match broker.export_session(&client_id, Some(Self::relay_hook(&relay))) {
                        Some(session) => {
                            Self::bump(&self.moves.handed_over);
                            Control::Handover { id, session: takeover::encode_within_limit(session).into() }
                        }
                        None => Control::None { id },
                    }
                };
                let table = self.table.read().unwrap_or_else(|p| p.into_inner());
                match table.get(from) {
                    Some(peer) => peer.handle.send(&Arc::new(answer.to_message()), Vec::new()),
                    None => tracing::warn!(
                        peer = from,
                        client_id,
                        "cluster: cannot answer a session claim (peer unknown here)"
                    ),
                }
                drop(table);
                relay.0.open();
            }
            Some(Control::Handover { id, session }) => match crate::store::decode_handover(&session) {
                // Installed right here, not by the waiting CONNECT: messages the old node
                // relays for the session follow on this same link and must find it.
                Ok(session) if !self.claims.waiting(id) => {
                    let _ = takeover::late_handover(broker, session);
                }
                Ok(session) if broker.has_newer_session(&session) => {
                    // A node that came back from a crash offered the session the client had
                    // before it started a newer one here: keep the newer one.
                    tracing::warn!(
                        client_id = %session.record.client_id,
                        "cluster: an older copy of the session handed over by a peer was dropped (this node's is newer)"
                    );
                    self.claims.answer(id, from, takeover::Outcome::Nothing);
                }
                Ok(session) => {
                    Self::bump(&self.moves.taken_over);
                    let ticket = broker.import_session(session);
                    self.claims.answer(id, from, takeover::Outcome::Imported(ticket));
                }
                Err(err) => {
                    tracing::error!(peer = from, "cluster: undecodable session handover: {err}");
                    self.claims.answer(id, from, takeover::Outcome::Nothing);
                }
            },
            Some(Control::None { id }) => {
                self.claims.answer(id, from, takeover::Outcome::Nothing);
            }
            Some(Control::Busy { id }) => {
                self.claims.answer(id, from, takeover::Outcome::Lost);
            }
            Some(Control::Deliver { client_id, delivery }) => {
                match crate::store::decode_delivery(&delivery) {
                    Ok(delivery) => match broker.deliver_relayed(&client_id, delivery) {
                        Some(ticket) => {
                            if let Err(err) = broker.durable(ticket).wait().await {
                                tracing::error!(
                                    peer = from,
                                    client_id,
                                    "cluster: storing a relayed message failed: {err}"
                                );
                            }
                        }
                        None => tracing::debug!(
                            peer = from,
                            client_id,
                            "cluster: relayed message for a session not here, dropped"
                        ),
                    },
                    Err(err) => tracing::error!(peer = from, "cluster: undecodable relayed message: {err}"),
                }
            }
            Some(Control::RetainedSync { id }) => {
                let all = broker.retained_for_sync();
                tracing::info!(
                    peer = from,
                    messages = all.len(),
                    "cluster: sending retained messages to a joining node"
                );
                for chunk in takeover::retained_chunks(id, &all) {
                    self.send_control(from, chunk);
                }
            }
            Some(Control::Retained { id, total, messages, .. }) => {
                let done = {
                    let mut sync = self.retained_sync.lock().unwrap_or_else(|p| p.into_inner());
                    if sync.asked.as_ref().is_none_or(|(asked, peer)| *asked != id || peer != from) {
                        return;
                    }
                    sync.chunks += 1;
                    for bytes in messages {
                        match crate::store::decode_message(&bytes) {
                            Ok(message) => sync.messages.push(message),
                            Err(err) => {
                                tracing::warn!(
                                    peer = from,
                                    "cluster: undecodable retained message skipped: {err}"
                                )
                            }
                        }
                    }
                    total.map(|total| {
                        sync.asked = None;
                        (std::mem::take(&mut sync.messages), sync.chunks == total)
                    })
                };
                let Some((received, complete)) = done else { return };
                let count = received.len();
                let ticket = if complete {
                    broker.replace_retained(received)
                } else {
                    // Chunks went missing (the link's queue was full): keep what arrived, clear
                    // nothing.
                    tracing::warn!(
                        peer = from,
                        "cluster: retained sync incomplete; only the messages received were applied"
                    );
                    received.into_iter().map(|m| broker.replace_retained_one(m)).max().unwrap_or(0)
                };
                if let Err(err) = broker.durable(ticket).wait().await {
                    tracing::error!("cluster: storing synced retained messages failed: {err}");
                }
                tracing::info!(
                    peer = from,
                    messages = count,
                    complete,
                    "cluster: retained messages taken from a peer"
                );
            }
            // Acknowledged (by the link) only once stored here, so the draining node may go.
            Some(Control::Push { session }) => match crate::store::decode_handover(&session) {
                Ok(session) => {
                    let client_id = session.record.client_id.to_string();
                    Self::bump(&self.moves.drained_in);
                    let ticket = takeover::late_handover(broker, session);
                    if let Err(err) = broker.durable(ticket).wait().await {
                        tracing::error!(
                            peer = from,
                            client_id,
                            "cluster: storing a session handed over by a draining node failed: {err}"
                        );
                    }
                }
                Err(err) => {
                    tracing::error!(peer = from, "cluster: undecodable session from a draining node: {err}")
                }
            },
            None => tracing::warn!(peer = from, topic, "cluster: malformed control message ignored"),
        }
    }

    /// The cluster of `broker`, when clustering is on.
    pub fn of(broker: &Broker) -> Option<Arc<Cluster>> {
        let forwarder: Arc<dyn Any + Send + Sync> = broker.forwarder()?;
        forwarder.downcast::<Cluster>().ok()
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The settings in force.
    pub fn config(&self) -> &fleetmq_config::Cluster {
        &self.config
    }

    /// How this node presents itself on links.
    pub fn identity(&self) -> Identity {
        Identity { node: self.node.clone(), secret: self.secret.clone(), tls: self.link_tls.clone() }
    }

    /// Counters of peer `name` (created on first use).
    pub fn stats_for(&self, name: &str) -> Arc<PeerStats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).entry(name.to_string()).or_default().clone()
    }

    /// Counters of every peer seen since start, by name.
    pub fn peer_stats(&self) -> Vec<(String, Arc<PeerStats>)> {
        let stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.iter().map(|(name, s)| (name.clone(), s.clone())).collect()
    }

    /// Alive members, this node included.
    pub fn alive(&self) -> usize {
        let members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        members.iter().filter(|m| m.state == MemberState::Alive).count().max(1)
    }

    /// Membership, links and counters.
    pub fn status(&self) -> ClusterStatus {
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if members.is_empty() {
            members.push(self.self_member());
        }
        let depths: BTreeMap<String, u64> = self.queue_depths().into_iter().collect();
        for m in members.iter_mut().filter(|m| !m.is_self) {
            m.queued = depths.get(&m.name).copied().unwrap_or_default();
            let stats = self.stats_for(&m.name);
            m.link = Some(stats.link());
            m.forwarded_out = PeerStats::get(&stats.forwarded_out);
            m.forwarded_in = PeerStats::get(&stats.forwarded_in);
            m.dropped = PeerStats::get(&stats.dropped);
        }
        ClusterStatus {
            node: self.node.clone(),
            sessions: self.moves.counts(),
            alive: members.iter().filter(|m| m.state == MemberState::Alive).count(),
            members,
        }
    }

    fn self_member(&self) -> Member {
        Member {
            name: self.node.clone(),
            is_self: true,
            state: MemberState::Alive,
            generation: self.generation,
            gossip_address: format!(
                "{}:{}",
                host_for_address(&self.advertise_host),
                self.config.gossip_bind.port()
            ),
            link_address: Some(self.link_address.lock().unwrap_or_else(|p| p.into_inner()).clone()),
            routes: self.local.keys().len(),
            link: None,
            forwarded_out: 0,
            forwarded_in: 0,
            dropped: 0,
            queued: 0,
        }
    }

    /// Messages waiting per live peer (queued plus in flight), by name.
    pub fn queue_depths(&self) -> Vec<(String, u64)> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        table.all().map(|(name, peer)| (name.clone(), peer.handle.depth())).collect()
    }

    /// Waits (at most `bound`) until the connected links have sent and had acknowledged what
    /// is queued for them, so a graceful stop loses as little as it can.
    async fn drain(&self, bound: std::time::Duration) {
        let deadline = std::time::Instant::now() + bound;
        loop {
            let busy = {
                let table = self.table.read().unwrap_or_else(|p| p.into_inner());
                table.all().any(|(_, peer)| {
                    peer.handle.stats.link() == status::LinkState::Connected && peer.handle.depth() > 0
                })
            };
            if !busy || std::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Starts gossip on the current ntex arbiter, announcing `link_port` (the bound link
    /// listener's port) for peers to connect to.
    pub fn start(self: &Arc<Self>, broker: Broker, link_port: u16) {
        *self.link_address.lock().unwrap_or_else(|p| p.into_inner()) =
            format!("{}:{link_port}", host_for_address(&self.advertise_host));
        let (done, stopped) = oneshot::channel();
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) = Some(stopped);
        ntex::rt::spawn(gossip::run(self.clone(), broker, self.stop.subscribe(), done));
        ntex::rt::spawn(self.clone().sync_retained_once());
    }

    /// Sends what is queued for connected peers (up to 2 s), announces that this node leaves,
    /// stops gossip and closes the links (bounded: a few gossip intervals more).
    pub async fn stop(&self) {
        self.drain(std::time::Duration::from_secs(2)).await;
        let _ = self.stop.send(true);
        let stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(stopped) = stopped {
            let bound = self.config.gossip_interval * 4 + std::time::Duration::from_secs(2);
            let _ = tokio::time::timeout(bound, stopped).await;
        }
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        for name in table.names() {
            table.remove(&name);
        }
    }

    /// Makes the peer table match gossip: `peers` are the live peers (by name) with their
    /// link address and filters. New peers get a link, gone ones lose theirs and their routes.
    fn apply(&self, peers: BTreeMap<String, gossip::PeerInfo>) {
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        for name in table.names() {
            if !peers.contains_key(&name) {
                tracing::info!(peer = %name, "cluster: peer gone, its routes dropped");
                table.remove(&name);
            }
        }
        let capacity = self.config.forward_queue as usize;
        for (name, info) in peers {
            let groups = info.groups.iter().map(|(g, f)| (g.as_str(), f.as_str()));
            let new = table.sync(&name, info.filters.iter().map(String::as_str), groups, || {
                tracing::info!(peer = %name, routes = info.filters.len(), "cluster: peer joined");
                link::spawn(self.identity(), &name, &info.link, capacity, self.stats_for(&name))
            });
            if !new && let Some(peer) = table.get(&name) {
                peer.handle.set_addr(&info.link);
            }
        }
    }

    fn set_members(&self, members: Vec<Member>) {
        *self.members.lock().unwrap_or_else(|p| p.into_inner()) = members;
    }
}

/// `host` as the host part of `host:port` (IPv6 literals in brackets).
fn host_for_address(host: &str) -> String {
    if host.contains(':') { format!("[{host}]") } else { host.to_string() }
}

impl Forwarder for Cluster {
    fn forward(&self, message: &Arc<Message>) -> Forwarded {
        // `$SYS` is per node; `$cluster/` on a link means control, so a client's is not sent.
        if message.topic.starts_with("$SYS/") || message.topic.starts_with(takeover::CONTROL_PREFIX) {
            return Forwarded { peers: 0, shared: SharedMode::Local };
        }
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        // Retained state (including clears) goes everywhere, so a later subscriber on any node
        // finds it.
        let plan = table.plan(&message.topic, message.retain);
        for (peer, groups) in &plan.peers {
            peer.handle.send(message, groups.clone());
        }
        Forwarded { peers: plan.peers.len(), shared: SharedMode::Only(plan.local) }
    }
}

impl RouteWatch for Cluster {
    fn added(&self, filter: &SubscriptionFilter) {
        self.local.change(filter, 1);
        if let Some(group) = &filter.group {
            let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
            table.local_group_added((group.clone(), filter.filter.clone()));
        }
    }

    fn removed(&self, filter: &SubscriptionFilter) {
        self.local.change(filter, -1);
        if let Some(group) = &filter.group {
            let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
            table.local_group_removed(&(group.clone(), filter.filter.clone()));
        }
    }
}
