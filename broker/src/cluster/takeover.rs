//! Session takeover across nodes. Before a client's CONNECT is accepted, the node it reached
//! asks every peer with a live link for the client's session (`$cluster/claim`); a peer that
//! has it closes the client's old connection, ends the session there and sends it back
//! (`$cluster/handover`, the session and its queue encoded as the store encodes them), the
//! others answer `$cluster/none`. The claiming node installs the session (writing it to its own
//! store) and lets the CONNECT resume it. Control messages ride the same links, in the same
//! queues, as forwarded messages; the forwarder never forwards a client's `$cluster/` topic, so
//! everything under it arriving on a link is control.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustc_hash::FxHashMap;
use tokio::sync::oneshot;

use crate::core::Broker;
use crate::core::types::{ByteString, Bytes, Message, QoS};
use crate::store::LoadedSession;

/// Topic prefix of the control messages (never a forwarded message's).
pub const CONTROL_PREFIX: &str = "$cluster/";
const CLAIM: &str = "$cluster/claim";
const HANDOVER: &str = "$cluster/handover";
const NONE: &str = "$cluster/none";
const BUSY: &str = "$cluster/busy";
const PUSH: &str = "$cluster/push";
const DELIVER: &str = "$cluster/deliver";
const RETAINED_SYNC: &str = "$cluster/retained-sync";
const RETAINED: &str = "$cluster/retained";
/// Retained messages per `$cluster/retained` chunk, by encoded size.
pub const RETAINED_CHUNK: usize = 512 * 1024;
/// How long a CONNECT waits for the peers' answers. A peer that does not answer in time is
/// assumed not to have the session (logged): the client then starts or resumes what this node
/// has.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(3);

/// Largest encoded session handed over in one piece. A session whose queue is larger keeps
/// its oldest messages up to this size and the rest are dropped (logged); the link listener
/// accepts packets of this size.
pub const MAX_HANDOVER: u32 = 64 << 20;

/// Encodes `session` for a handover within [`MAX_HANDOVER`], dropping its newest queued
/// messages if it does not fit (and saying how many).
pub fn encode_within_limit(mut session: LoadedSession) -> Vec<u8> {
    let limit = MAX_HANDOVER as usize;
    let mut bytes = crate::store::encode_handover(&session);
    if bytes.len() <= limit {
        return bytes;
    }
    let total = session.deliveries.len();
    // Shrink by the measured average size, then confirm by encoding again.
    while bytes.len() > limit && !session.deliveries.is_empty() {
        let keep = (session.deliveries.len() as u128 * limit as u128 / bytes.len() as u128) as usize;
        session.deliveries.truncate(keep.min(session.deliveries.len() - 1));
        bytes = crate::store::encode_handover(&session);
    }
    tracing::error!(
        client_id = %session.record.client_id,
        dropped = total - session.deliveries.len(),
        "cluster: session too large to hand over in one piece ({} MiB); its newest queued messages were dropped",
        MAX_HANDOVER >> 20
    );
    bytes
}

/// Claims in progress, by claim id.
#[derive(Default)]
pub struct Claims {
    next: AtomicU64,
    pending: Mutex<FxHashMap<u64, Pending>>,
}

struct Pending {
    client_id: String,
    /// Peers that have not answered yet.
    waiting: BTreeSet<String>,
    done: Option<oneshot::Sender<Outcome>>,
}

/// A claim in progress on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimState {
    /// Waiting for the peers' answers.
    Waiting,
    /// Answered: the CONNECT goes ahead (until it is done, see [`Claims::finish`]).
    Decided,
}

/// How a claim ended.
#[derive(Debug)]
pub enum Outcome {
    /// A peer handed the session over and it is installed here (the store ticket to wait for).
    Imported(u64),
    /// No peer has it.
    Nothing,
    /// A peer claims the same client id at the same moment and wins.
    Lost,
}

/// What a peer sent on its link under [`CONTROL_PREFIX`].
#[derive(Debug, PartialEq)]
pub enum Control {
    /// Asks for `client_id`'s session; answer with the claim id.
    Claim {
        /// Claim id (the claimer's).
        id: u64,
        /// Client identifier.
        client_id: String,
    },
    /// The session of claim `id` (encoded by [`crate::store::encode_handover`]).
    Handover {
        /// Claim id.
        id: u64,
        /// The encoded session.
        session: Bytes,
    },
    /// No session for claim `id` here.
    None {
        /// Claim id.
        id: u64,
    },
    /// A draining node hands a session over unasked (encoded like `Handover`).
    Push {
        /// The encoded session.
        session: Bytes,
    },
    /// A message for a session that moved to the receiving node, routed to the sender after
    /// the move (see `core::hooks::Relay`).
    Deliver {
        /// Client identifier.
        client_id: String,
        /// The delivery, encoded as the store encodes queued messages.
        delivery: Bytes,
    },
    /// A joining node asks for the peer's retained messages (sync `id`).
    RetainedSync {
        /// Sync id (the joiner's).
        id: u64,
    },
    /// One chunk of a peer's retained messages for sync `id`: `index` counts from 0; the
    /// last chunk says how many there are.
    Retained {
        /// Sync id.
        id: u64,
        /// Chunk number.
        index: u32,
        /// On the last chunk: the number of chunks.
        total: Option<u32>,
        /// Messages, each encoded as the store encodes retained messages.
        messages: Vec<Bytes>,
    },
    /// The answering node is claiming the same client id itself and wins the tie (the
    /// smaller node name): the claimer refuses its CONNECT, the client retries.
    Busy {
        /// Claim id.
        id: u64,
    },
}

impl Control {
    /// The message that carries it on a link.
    pub fn to_message(&self) -> Message {
        let (topic, payload) = match self {
            Control::Claim { id, client_id } => {
                let mut p = id.to_be_bytes().to_vec();
                p.extend_from_slice(client_id.as_bytes());
                (CLAIM, p)
            }
            Control::Handover { id, session } => {
                let mut p = id.to_be_bytes().to_vec();
                p.extend_from_slice(session);
                (HANDOVER, p)
            }
            Control::None { id } => (NONE, id.to_be_bytes().to_vec()),
            Control::Busy { id } => (BUSY, id.to_be_bytes().to_vec()),
            Control::Deliver { client_id, delivery } => {
                // id field: the client id's length, then the client id, then the delivery.
                let mut p = (client_id.len() as u64).to_be_bytes().to_vec();
                p.extend_from_slice(client_id.as_bytes());
                p.extend_from_slice(delivery);
                (DELIVER, p)
            }
            Control::RetainedSync { id } => (RETAINED_SYNC, id.to_be_bytes().to_vec()),
            Control::Retained { id, index, total, messages } => {
                let mut p = id.to_be_bytes().to_vec();
                p.extend_from_slice(&index.to_be_bytes());
                p.extend_from_slice(&total.map_or(0, |t| t + 1).to_be_bytes());
                for m in messages {
                    p.extend_from_slice(&(m.len() as u32).to_be_bytes());
                    p.extend_from_slice(m);
                }
                (RETAINED, p)
            }
            Control::Push { session } => {
                let mut p = 0u64.to_be_bytes().to_vec();
                p.extend_from_slice(session);
                (PUSH, p)
            }
        };
        Message::new(ByteString::from_static(topic), Bytes::from(payload), QoS::AtLeastOnce, false)
    }

    /// Parses a control message; `None` for anything malformed.
    pub fn parse(topic: &str, payload: &Bytes) -> Option<Control> {
        let id = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
        let rest = payload.slice(8..);
        match topic {
            CLAIM => Some(Control::Claim { id, client_id: String::from_utf8(rest.to_vec()).ok()? }),
            HANDOVER => Some(Control::Handover { id, session: rest }),
            NONE => Some(Control::None { id }),
            BUSY => Some(Control::Busy { id }),
            PUSH => Some(Control::Push { session: rest }),
            RETAINED_SYNC => Some(Control::RetainedSync { id }),
            RETAINED => {
                let index = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
                let total = u32::from_be_bytes(rest.get(4..8)?.try_into().ok()?).checked_sub(1);
                let mut messages = Vec::new();
                let mut at = 8;
                while at < rest.len() {
                    let len = u32::from_be_bytes(rest.get(at..at + 4)?.try_into().ok()?) as usize;
                    messages
                        .push(rest.slice(at + 4..at.checked_add(4 + len).filter(|&end| end <= rest.len())?));
                    at += 4 + len;
                }
                Some(Control::Retained { id, index, total, messages })
            }
            DELIVER => {
                let len = usize::try_from(id).ok().filter(|&n| n <= rest.len())?;
                let client_id = String::from_utf8(rest.get(..len)?.to_vec()).ok()?;
                Some(Control::Deliver { client_id, delivery: rest.slice(len..) })
            }
            _ => None,
        }
    }
}

impl Claims {
    /// Registers a claim for `client_id` awaiting `peers`; returns its id and the answer.
    pub fn start(&self, client_id: &str, peers: BTreeSet<String>) -> (u64, oneshot::Receiver<Outcome>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let pending = Pending { client_id: client_id.to_string(), waiting: peers, done: Some(tx) };
        self.lock().insert(id, pending);
        (id, rx)
    }

    /// Forgets claim `id` (its CONNECT is done or refused); returns the peers that never
    /// answered.
    pub fn finish(&self, id: u64) -> BTreeSet<String> {
        self.lock().remove(&id).map(|p| p.waiting).unwrap_or_default()
    }

    /// Decides claim `id` without all answers (they timed out): its CONNECT goes ahead.
    pub fn decide(&self, id: u64) {
        if let Some(done) = self.lock().get_mut(&id).and_then(|p| p.done.take()) {
            let _ = done.send(Outcome::Nothing);
        }
    }

    /// The peers that have not answered claim `id` yet.
    pub fn silent(&self, id: u64) -> BTreeSet<String> {
        self.lock().get(&id).map(|p| p.waiting.clone()).unwrap_or_default()
    }

    /// Whether claim `id` still waits for its answer (not decided, not timed out).
    pub fn waiting(&self, id: u64) -> bool {
        self.lock().get(&id).is_some_and(|p| p.done.is_some())
    }

    /// `from` answered claim `id`.
    pub fn answer(&self, id: u64, from: &str, outcome: Outcome) {
        let mut pending = self.lock();
        let Some(claim) = pending.get_mut(&id) else { return };
        claim.waiting.remove(from);
        if matches!(outcome, Outcome::Nothing) && !claim.waiting.is_empty() {
            return;
        }
        if let Some(done) = claim.done.take() {
            let _ = done.send(outcome);
        }
    }

    /// Ends every claim for `client_id` in progress here as lost: a peer with a smaller name
    /// claims the same client id at the same moment.
    pub fn concede(&self, client_id: &str) {
        for claim in self.lock().values_mut().filter(|p| p.client_id == client_id) {
            if let Some(done) = claim.done.take() {
                let _ = done.send(Outcome::Lost);
            }
        }
    }

    /// Whether a claim for `client_id` is in progress here (a concurrent CONNECT), and how
    /// far: still waiting for answers, or decided (its CONNECT is going ahead).
    pub fn state(&self, client_id: &str) -> Option<ClaimState> {
        let pending = self.lock();
        let mut found = None;
        for p in pending.values().filter(|p| p.client_id == client_id) {
            if p.done.is_none() {
                return Some(ClaimState::Decided);
            }
            found = Some(ClaimState::Waiting);
        }
        found
    }

    /// Whether a claim for `client_id` is still waiting for answers here.
    pub fn claiming(&self, client_id: &str) -> bool {
        self.state(client_id) == Some(ClaimState::Waiting)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FxHashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Keeps a claim registered until its CONNECT is done (dropped after `Broker::connect`), so a
/// peer's claim for the same client id meanwhile is answered `Busy`.
pub struct ClaimGuard {
    pub(super) cluster: std::sync::Arc<super::Cluster>,
    pub(super) id: u64,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        self.cluster.claims.finish(self.id);
    }
}

/// Relays deliveries for a moved session to the node it moved to, over the link.
///
/// A relay starts closed: the session's handover (or push) must be on the link before the
/// first relayed delivery, or the new node gets a delivery for a session it does not have
/// yet and drops it. Publishers on other threads relay as soon as the export has set the
/// relay, which is before the handover is encoded and queued, so deliveries wait here until
/// [`LinkRelay::open`] (called right after queueing the handover) sends them, in order.
pub struct LinkRelay {
    cluster: std::sync::Weak<super::Cluster>,
    peer: String,
    gate: Gate<Control>,
}

impl LinkRelay {
    /// A closed relay to `peer`.
    pub fn new(cluster: std::sync::Weak<super::Cluster>, peer: String) -> Self {
        LinkRelay { cluster, peer, gate: Gate::default() }
    }

    /// The handover is queued on the link: sends what was held and relays directly from now
    /// on.
    pub fn open(&self) {
        let cluster = self.cluster.upgrade();
        self.gate.open(|control| {
            if let Some(cluster) = &cluster {
                cluster.send_control(&self.peer, control);
            }
        });
    }
}

impl crate::core::hooks::Relay for LinkRelay {
    fn relay(&self, client_id: &str, delivery: &crate::core::types::Delivery) {
        let control = Control::Deliver {
            client_id: client_id.to_string(),
            delivery: crate::store::encode_delivery(delivery).into(),
        };
        self.gate.pass(control, |control| {
            if let Some(cluster) = self.cluster.upgrade() {
                cluster.send_control(&self.peer, control);
            }
        });
    }
}

/// Holds items until opened, then lets them through in the order they came.
struct Gate<T> {
    /// `Some`: closed, with what came so far; `None`: open.
    held: Mutex<Option<Vec<T>>>,
}

impl<T> Default for Gate<T> {
    fn default() -> Self {
        Gate { held: Mutex::new(Some(Vec::new())) }
    }
}

impl<T> Gate<T> {
    /// Sends `item` now if open, else holds it.
    fn pass(&self, item: T, send: impl FnOnce(T)) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        match held.as_mut() {
            Some(waiting) => waiting.push(item),
            // Under the lock, so it cannot overtake items `open` is still sending.
            None => send(item),
        }
    }

    /// Sends what is held, in order, and opens.
    fn open(&self, mut send: impl FnMut(T)) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for item in held.take().unwrap_or_default() {
            send(item);
        }
    }
}

/// Splits retained messages into `$cluster/retained` chunks for sync `id` (at least one, so
/// the last chunk always says how many there are).
pub fn retained_chunks(id: u64, messages: &[std::sync::Arc<Message>]) -> Vec<Control> {
    let mut chunks: Vec<Vec<Bytes>> = vec![Vec::new()];
    let mut size = 0;
    for m in messages {
        let bytes = Bytes::from(crate::store::encode_message(m));
        if size + bytes.len() > RETAINED_CHUNK && !chunks.last().is_some_and(Vec::is_empty) {
            chunks.push(Vec::new());
            size = 0;
        }
        size += bytes.len();
        if let Some(chunk) = chunks.last_mut() {
            chunk.push(bytes);
        }
    }
    let total = chunks.len() as u32;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, messages)| {
            let index = i as u32;
            Control::Retained { id, index, total: (index + 1 == total).then_some(total), messages }
        })
        .collect()
}

/// A retained sync in progress on a joining node.
#[derive(Default)]
pub struct RetainedSync {
    /// Sync id and the peer asked.
    pub asked: Option<(u64, String)>,
    /// Chunks received.
    pub chunks: u32,
    /// Messages received.
    pub messages: Vec<Message>,
}

/// The peer a draining node gives `client_id`'s session to: rendezvous hashing over the
/// peers' names, so sessions spread evenly and the choice does not depend on the order peers
/// are listed in.
pub fn heir<'a>(client_id: &str, peers: &'a [String]) -> Option<&'a String> {
    use std::hash::{Hash, Hasher};
    peers.iter().max_by_key(|peer| {
        // SipHash with fixed keys: well mixed, and the same on every node (one binary).
        #[allow(deprecated)]
        let mut h = std::hash::SipHasher::new();
        peer.hash(&mut h);
        client_id.hash(&mut h);
        h.finish()
    })
}

/// A session that arrived with nobody waiting for it (its claim timed out, or a draining node
/// pushed it): installed only if the client has no session here now, so a session that
/// started meanwhile is not replaced; otherwise its messages are dropped, and said so.
/// Returns the store ticket of the installed session (0: none).
pub fn late_handover(broker: &Broker, session: LoadedSession) -> u64 {
    let client_id = session.record.client_id.to_string();
    if broker.session(&client_id).is_none() {
        broker.import_session(session)
    } else {
        tracing::warn!(
            client_id,
            messages = session.deliveries.len(),
            "cluster: a session handed over unasked was dropped (the client already has a session here)"
        );
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_round_trip() {
        for control in [
            Control::Claim { id: 7, client_id: "dev/1 ü".into() },
            Control::Handover { id: u64::MAX, session: Bytes::from_static(b"\x01abc") },
            Control::None { id: 0 },
            Control::Busy { id: 3 },
            Control::Push { session: Bytes::from_static(b"\x01s") },
            Control::Deliver { client_id: "dev-1".into(), delivery: Bytes::from_static(b"\x01d") },
            Control::RetainedSync { id: 5 },
            Control::Retained { id: 5, index: 0, total: None, messages: vec![Bytes::from_static(b"ab")] },
            Control::Retained { id: 5, index: 1, total: Some(2), messages: vec![] },
        ] {
            let m = control.to_message();
            assert!(m.topic.starts_with(CONTROL_PREFIX));
            assert_eq!(Control::parse(&m.topic, &m.payload), Some(control));
        }
        assert_eq!(Control::parse(CLAIM, &Bytes::from_static(b"short")), None);
        assert_eq!(Control::parse(DELIVER, &Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 9, b'a'])), None);
        assert_eq!(Control::parse("$cluster/other", &Bytes::from_static(&[0; 8])), None);
    }

    #[test]
    fn a_gate_holds_until_opened_and_keeps_the_order() {
        let gate = Gate::default();
        let sent = Mutex::new(Vec::new());
        let send = |n: u32| sent.lock().expect("lock").push(n);
        gate.pass(1, send);
        gate.pass(2, send);
        assert!(sent.lock().expect("lock").is_empty(), "closed: held");
        gate.open(send);
        gate.pass(3, send);
        gate.open(send);
        assert_eq!(*sent.lock().expect("lock"), [1, 2, 3]);
    }

    #[test]
    fn heirs_are_spread_and_stable() {
        let peers: Vec<String> = ["node-1", "node-2", "node-3"].iter().map(|s| s.to_string()).collect();
        let mut counts = std::collections::BTreeMap::new();
        for i in 0..3000 {
            let heir = heir(&format!("dev-{i}"), &peers).expect("a peer");
            *counts.entry(heir.clone()).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!(counts.values().all(|&n| n > 800), "{counts:?}");
        let reversed: Vec<String> = peers.iter().rev().cloned().collect();
        assert_eq!(heir("dev-7", &peers), heir("dev-7", &reversed));
        assert_eq!(heir("dev-7", &[]), None);
    }

    #[test]
    fn a_claim_completes_when_every_peer_said_no_or_one_handed_over() {
        let claims = Claims::default();
        let (id, mut rx) = claims.start("c", ["a".to_string(), "b".to_string()].into());
        assert!(claims.claiming("c"));
        claims.answer(id, "a", Outcome::Nothing);
        assert!(rx.try_recv().is_err(), "still waiting for b");
        claims.answer(id, "b", Outcome::Nothing);
        assert!(matches!(rx.try_recv(), Ok(Outcome::Nothing)));
        assert!(claims.finish(id).is_empty());

        let (id, mut rx) = claims.start("e", ["a".to_string(), "b".to_string()].into());
        claims.answer(id, "a", Outcome::Lost);
        assert!(matches!(rx.try_recv(), Ok(Outcome::Lost)), "one busy answer decides");
        claims.finish(id);

        let (id, mut rx) = claims.start("f", ["a".to_string()].into());
        claims.concede("f");
        assert!(matches!(rx.try_recv(), Ok(Outcome::Lost)));
        assert!(!claims.claiming("f"));
        claims.finish(id);

        let (id, _rx) = claims.start("d", ["a".to_string()].into());
        assert_eq!(claims.finish(id), BTreeSet::from(["a".to_string()]), "a never answered");
        assert!(!claims.claiming("d"));
    }
}
