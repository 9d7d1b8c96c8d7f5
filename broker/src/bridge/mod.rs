//! Bridges: links from this broker to remote MQTT brokers (`bridges` in the config; see
//! docs/bridges.md). `mapping` resolves topic rules, `backoff` spaces reconnects, `state`
//! holds what the admin API and `/metrics` show, `tls` builds the client TLS config, `remote` wraps ntex-mqtt's v5 and v3.1.1 clients,
//! `link` runs one bridge's connection.

pub mod backoff;
mod link;
pub mod mapping;
mod remote;
pub mod state;
pub mod tls;

use std::sync::Arc;

use fleetmq_config::{Bridge, Overflow};
use tokio::sync::{mpsc, watch};

use crate::core::Broker;
use crate::core::session::{OverflowPolicy, QueueLimits};
use state::BridgeStatus;

/// Client ids starting with this are the bridges' internal sessions; clients may not use it.
pub const SESSION_PREFIX: &str = "$bridge/";

/// The internal session's client id of bridge `name`.
pub fn session_id(name: &str) -> String {
    format!("{SESSION_PREFIX}{name}")
}

/// Messages waiting in a bridge's internal session (queued plus in flight).
pub fn queue_depth(broker: &Broker, status: &BridgeStatus) -> usize {
    broker.session(&status.session_id).map_or(0, |session| {
        let st = session.lock();
        st.queue_len() + st.inflight_len()
    })
}

/// Gives the internal session of bridge `config` (once it exists) the bridge's own queue
/// bounds and overflow policy; unset bounds follow `limits.max_queued_messages` /
/// `max_queued_bytes` as they are now. Called whenever the session may be new (start,
/// connect) and after every reload (the global limits may have changed).
pub(crate) fn apply_queue(broker: &Broker, config: &Bridge) {
    let Some(session) = broker.session(&session_id(&config.name)) else { return };
    let global = broker.settings().queue;
    let limits = QueueLimits {
        max_messages: config.queue.max_messages.map_or(global.max_messages, |n| n as usize),
        max_bytes: config
            .queue
            .max_bytes
            .map_or(global.max_bytes, |b| usize::try_from(b.as_u64()).unwrap_or(usize::MAX)),
        max_inflight: global.max_inflight,
    };
    let policy = match config.queue.overflow {
        Overflow::DropNewest => OverflowPolicy::DropNewest,
        Overflow::DropOldest => OverflowPolicy::DropOldest,
    };
    session.lock().set_own_limits(limits, policy);
}

/// Deletes the internal sessions (with their queues) of bridges that are not in `configured`:
/// a bridge removed from the config, found at start in the store or left by a reload.
fn discard_removed(broker: &Broker, configured: &[Bridge]) {
    for client_id in broker.client_ids() {
        let Some(name) = client_id.strip_prefix(SESSION_PREFIX) else { continue };
        if configured.iter().any(|b| b.name == name) {
            continue;
        }
        if let Some(discarded) = broker.discard_session(&client_id) {
            tracing::info!(
                bridge = %name,
                discarded,
                "bridge no longer configured: deleted its internal session {client_id} and {discarded} queued messages"
            );
        }
    }
}

/// Handle on the bridge manager: a task on the main arbiter that runs one task per bridge
/// and applies reloaded `bridges` lists. [`Bridges::stop`] ends them all.
#[derive(Debug, Clone)]
pub struct Bridges {
    updates: mpsc::UnboundedSender<Vec<Bridge>>,
    stop: watch::Sender<bool>,
}

impl Bridges {
    /// Starts every configured bridge on the current ntex arbiter. Call after the store
    /// recovered, so the internal sessions resume with their stored queues.
    pub fn start(broker: &Broker) -> Self {
        let (stop, stopped) = watch::channel(false);
        let (updates, rx) = mpsc::unbounded_channel();
        let initial = broker.config().bridges.clone();
        // Before anything is routed to the recovered internal sessions: removed bridges'
        // sessions go, the others get their own queue bounds.
        discard_removed(broker, &initial);
        for config in &initial {
            apply_queue(broker, config);
        }
        ntex::rt::spawn(manage(broker.clone(), initial, rx, stopped));
        Bridges { updates, stop }
    }

    /// Applies a reloaded list: bridges whose settings are unchanged keep running untouched;
    /// removed ones stop; added and changed ones (re)start (a changed bridge's counters start
    /// over). Callable from any thread.
    pub fn update(&self, bridges: Vec<Bridge>) {
        let _ = self.updates.send(bridges);
    }

    /// Asks every bridge to disconnect and stop reconnecting.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// One running bridge.
struct Running {
    config: Bridge,
    status: Arc<BridgeStatus>,
    stop: watch::Sender<bool>,
}

fn spawn(broker: &Broker, index: usize, config: Bridge) -> Running {
    let status = Arc::new(BridgeStatus::new(&config.name));
    let (stop, stopped) = watch::channel(false);
    tracing::info!(bridge = %config.name, addresses = ?config.addresses, "starting bridge");
    apply_queue(broker, &config);
    ntex::rt::spawn(link::run(broker.clone(), index, per_node(broker, &config), status.clone(), stopped));
    Running { config, status, stop }
}

/// With clustering, every node runs each configured bridge for its own clients: the internal
/// session's subscriptions are not announced to peers (see `core::router`) and what the bridge
/// brings in is delivered on this node only ([`Broker::publish_here`]), so each message crosses
/// the bridge once. Each node then needs its own session on the remote: the node name is
/// appended to the remote client id (`<client_id>.<node>`).
fn per_node(broker: &Broker, config: &Bridge) -> Bridge {
    let mut config = config.clone();
    if let Some(cluster) = crate::cluster::Cluster::of(broker) {
        config.client_id = Some(format!("{}.{}", config.remote_client_id(), cluster.node()));
    }
    config
}

async fn manage(
    broker: Broker,
    initial: Vec<Bridge>,
    mut updates: mpsc::UnboundedReceiver<Vec<Bridge>>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut running: Vec<Running> =
        initial.into_iter().enumerate().map(|(i, config)| spawn(&broker, i, config)).collect();
    broker.bridges().set(running.iter().map(|r| r.status.clone()).collect());
    loop {
        tokio::select! {
            update = updates.recv() => {
                let Some(new) = update else { break };
                let mut next = Vec::with_capacity(new.len());
                for (index, config) in new.into_iter().enumerate() {
                    match running.iter().position(|r| r.config == config) {
                        Some(i) => next.push(running.swap_remove(i)),
                        None => next.push(spawn(&broker, index, config)),
                    }
                }
                for old in running.drain(..) {
                    tracing::info!(bridge = %old.config.name, "bridge removed or changed by a reload: stopping it");
                    let _ = old.stop.send(true);
                }
                running = next;
                for bridge in &running {
                    apply_queue(&broker, &bridge.config);
                }
                let configured: Vec<Bridge> = running.iter().map(|r| r.config.clone()).collect();
                discard_removed(&broker, &configured);
                broker.bridges().set(running.iter().map(|r| r.status.clone()).collect());
            }
            _ = stopped.changed() => break,
        }
    }
    for bridge in &running {
        let _ = bridge.stop.send(true);
    }
}
