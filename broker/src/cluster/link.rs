//! This node's link to one peer: an MQTT 5 client (ntex-mqtt) to the peer's link listener,
//! fed by a bounded queue. Messages go at QoS 1 in queue order; the link reconnects with
//! backoff and follows the peer's announced address.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ntex::service::cfg::SharedCfg;
use ntex::service::{ServiceFactory, fn_service};
use ntex::time::Seconds;
use ntex::util::Bytes;
use ntex_mqtt::v5;
use tokio::sync::{mpsc, oneshot, watch};

use super::status::{LinkState, PeerStats};
use super::table::Group;
use super::wire;
use crate::bridge::backoff::Backoff;
use crate::core::types::Message;

/// TCP connect plus CONNECT/CONNACK.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Keep-alive of the link (dead TCP peers are found by this or by gossip).
const KEEP_ALIVE: Seconds = Seconds(15);
/// User Name the link connects with (the secret is the password).
pub const LINK_USER: &str = "fleetmq-cluster";

/// A message for a peer, with the shared groups the peer serves for it, and who wants to
/// know when the peer acknowledged it.
type Item = (Arc<Message>, Vec<Group>, Option<oneshot::Sender<()>>);

/// Sending side of a peer's queue, held in the route table.
#[derive(Debug)]
pub struct PeerQueue {
    tx: mpsc::Sender<Item>,
    /// The peer's link address; dropping it ends the link task.
    addr: watch::Sender<String>,
    /// The peer's counters.
    pub stats: Arc<PeerStats>,
}

impl PeerQueue {
    /// Queues a message for the peer; a full queue drops it (newest dropped) and counts it.
    pub fn send(&self, message: &Arc<Message>, groups: Vec<Group>) {
        if self.tx.try_send((message.clone(), groups, None)).is_err() {
            PeerStats::add(&self.stats.dropped, 1);
        }
    }

    /// Queues a message like [`PeerQueue::send`]; the receiver resolves once the peer
    /// acknowledged it (and is dropped unresolved if it never is).
    pub fn send_acked(&self, message: &Arc<Message>) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        if self.tx.try_send((message.clone(), Vec::new(), Some(tx))).is_err() {
            PeerStats::add(&self.stats.dropped, 1);
        }
        rx
    }

    /// Messages waiting for the peer: queued plus sent and not yet acknowledged.
    pub fn depth(&self) -> u64 {
        let queued = self.tx.max_capacity().saturating_sub(self.tx.capacity());
        queued as u64 + PeerStats::get(&self.stats.inflight)
    }

    /// Follows a peer that announced a new link address (it restarted elsewhere).
    pub fn set_addr(&self, addr: &str) {
        self.addr.send_if_modified(|current| {
            let changed = current != addr;
            if changed {
                *current = addr.to_string();
            }
            changed
        });
    }
}

/// Who this node is on the link.
#[derive(Debug, Clone)]
pub struct Identity {
    /// This node's name (the link's client id).
    pub node: String,
    /// The cluster secret (the link's password).
    pub secret: Option<String>,
    /// TLS towards the peers (`cluster.tls`); the peer's advertised host is the name checked.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Starts the link to `peer` at `addr` on the current ntex arbiter; returns its queue.
pub fn spawn(
    identity: Identity,
    peer: &str,
    addr: &str,
    capacity: usize,
    stats: Arc<PeerStats>,
) -> PeerQueue {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let (addr_tx, addr_rx) = watch::channel(addr.to_string());
    stats.set_link(LinkState::Connecting);
    tracing::info!(peer, addr, "cluster: opening the link to a new peer");
    ntex::rt::spawn(run(identity, peer.to_string(), rx, addr_rx, stats.clone()));
    PeerQueue { tx, addr: addr_tx, stats }
}

async fn connect(identity: &Identity, addr: &str) -> Result<v5::client::Client, String> {
    let mut req = v5::client::Connect::new(addr.to_string())
        .client_id(identity.node.as_str())
        .keep_alive(KEEP_ALIVE)
        .username(LINK_USER.into());
    if let Some(secret) = &identity.secret {
        req = req.password(Bytes::copy_from_slice(secret.as_bytes()));
    }
    let result = match &identity.tls {
        None => {
            let connector = v5::client::MqttConnector::new()
                .pipeline(SharedCfg::default())
                .await
                .map_err(|err| format!("cannot create the connector: {err:?}"))?;
            tokio::time::timeout(CONNECT_TIMEOUT, connector.call(req)).await
        }
        Some(tls) => {
            let connector = v5::client::MqttConnector::new()
                .connector(ntex_tls::rustls::TlsConnector::from(tls.clone()))
                .pipeline(SharedCfg::default())
                .await
                .map_err(|err| format!("cannot create the connector: {err:?}"))?;
            tokio::time::timeout(CONNECT_TIMEOUT, connector.call(req)).await
        }
    };
    match result {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(ntex_mqtt::error::ClientError::Ack(ack))) => {
            Err(format!("refused by the peer: {:?}", ack.reason_code))
        }
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("timed out after {CONNECT_TIMEOUT:?}")),
    }
}

async fn run(
    identity: Identity,
    peer: String,
    mut rx: mpsc::Receiver<Item>,
    mut addr: watch::Receiver<String>,
    stats: Arc<PeerStats>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    // A message taken from the queue when the connection turned out to be closed: sent first
    // after the reconnect, so order is kept and nothing is lost to the reconnect itself.
    let mut pending: Option<Item> = None;
    let mut connected_once = false;
    loop {
        let target = addr.borrow_and_update().clone();
        stats.set_link(LinkState::Connecting);
        let client = match connect(&identity, &target).await {
            Ok(client) => client,
            Err(err) => {
                tracing::debug!(peer, addr = %target, "cluster link: {err}");
                stats.set_link(LinkState::Down(err));
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    changed = addr.changed() => if changed.is_err() { break },
                }
                continue;
            }
        };
        backoff.reset();
        if connected_once {
            PeerStats::add(&stats.reconnects, 1);
        }
        connected_once = true;
        stats.set_link(LinkState::Connected);
        tracing::info!(peer, addr = %target, "cluster: link connected");
        let sink = client.sink();
        // The peer never sends us publishes; acknowledge whatever control traffic arrives.
        // `closed` resolves when the connection ends, so an idle link notices a loss at once.
        let (done, mut closed) = tokio::sync::oneshot::channel::<()>();
        ntex::rt::spawn(async move {
            let _ = client
                .start(fn_service(|msg: v5::client::ProtocolMessage| async move { Ok::<_, ()>(msg.ack()) }))
                .await;
            let _ = done.send(());
        });
        let finished = loop {
            if !sink.ready().await {
                break false;
            }
            let (message, groups, acked) = match pending.take() {
                Some(message) => message,
                None => {
                    tokio::select! {
                        message = rx.recv() => match message {
                            Some(message) => message,
                            None => break true,
                        },
                        changed = addr.changed() => {
                            if changed.is_err() { break true }
                            // The peer restarted at another address: reconnect there.
                            sink.close();
                            break false;
                        }
                        _ = &mut closed => break false,
                    }
                }
            };
            if !sink.is_open() {
                pending = Some((message, groups, acked));
                break false;
            }
            let now = Instant::now();
            if message.is_expired(now) {
                continue;
            }
            let ack = sink
                .publish(message.topic.clone())
                .retain(message.retain)
                .properties(|p| *p = wire::properties(&message, now, &groups))
                .send_at_least_once(message.payload.clone());
            let stats = stats.clone();
            // Takeover control messages share the queue but are not forwarded messages.
            let forwarded = !message.topic.starts_with(super::takeover::CONTROL_PREFIX);
            PeerStats::add(&stats.inflight, 1);
            ntex::rt::spawn(async move {
                match ack.await {
                    Ok(_) => {
                        if forwarded {
                            PeerStats::add(&stats.forwarded_out, 1);
                        }
                        if let Some(acked) = acked {
                            let _ = acked.send(());
                        }
                    }
                    Err(_) => PeerStats::add(&stats.dropped, 1),
                }
                stats.inflight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            });
        };
        if finished {
            sink.close();
            break;
        }
        tracing::info!(peer, "cluster: link lost, reconnecting");
        stats.set_link(LinkState::Down("connection lost".to_string()));
    }
    stats.set_link(LinkState::Closed);
    tracing::info!(peer, "cluster: link closed (peer gone)");
}
