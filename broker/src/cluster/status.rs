//! Counters and states the admin API, `/metrics` and `$SYS` show.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// State of this node's outgoing link to a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "error")]
pub enum LinkState {
    /// Connecting (first attempt or after a loss).
    Connecting,
    /// Connected: forwarded messages flow.
    Connected,
    /// Not connected; the last error, retried with backoff.
    Down(String),
    /// The peer left or died; no link.
    Closed,
}

impl LinkState {
    /// `connecting`, `connected`, `down` or `closed` (as in the admin API).
    pub fn as_str(&self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Down(_) => "down",
            LinkState::Closed => "closed",
        }
    }
}

/// Per-peer counters, kept after the peer goes (Prometheus counters never go back).
#[derive(Debug)]
pub struct PeerStats {
    /// Messages forwarded to the peer and acknowledged by it.
    pub forwarded_out: AtomicU64,
    /// Messages received from the peer over its link to us.
    pub forwarded_in: AtomicU64,
    /// Messages for the peer dropped: its queue was full, or the link failed with them in
    /// flight.
    pub dropped: AtomicU64,
    /// Successful link connects after the first.
    pub reconnects: AtomicU64,
    /// Messages sent on the link and not yet acknowledged (a gauge).
    pub inflight: AtomicU64,
    link: Mutex<LinkState>,
}

impl Default for PeerStats {
    fn default() -> Self {
        PeerStats {
            forwarded_out: AtomicU64::new(0),
            forwarded_in: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            inflight: AtomicU64::new(0),
            link: Mutex::new(LinkState::Closed),
        }
    }
}

impl PeerStats {
    /// The link's state now.
    pub fn link(&self) -> LinkState {
        self.link.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records the link's state.
    pub fn set_link(&self, state: LinkState) {
        *self.link.lock().unwrap_or_else(|p| p.into_inner()) = state;
    }

    /// Adds to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Membership state of a node as gossip sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// Heartbeats arrive (always true of this node).
    Alive,
    /// The failure detector declared it dead.
    Dead,
    /// It announced a graceful shutdown.
    Left,
}

/// One node in `GET /api/v1/cluster`.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    /// Node name.
    pub name: String,
    /// This node.
    #[serde(rename = "self")]
    pub is_self: bool,
    /// Alive, dead or left.
    pub state: MemberState,
    /// Start generation (milliseconds since the epoch at its start).
    pub generation: u64,
    /// Where it gossips.
    pub gossip_address: String,
    /// Its inter-node link address, once announced.
    pub link_address: Option<String>,
    /// Distinct filters it announced.
    pub routes: usize,
    /// This node's link to it (absent for this node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkState>,
    /// Messages this node forwarded to it (acknowledged).
    pub forwarded_out: u64,
    /// Messages it forwarded to this node.
    pub forwarded_in: u64,
    /// Messages for it dropped here.
    pub dropped: u64,
    /// Messages waiting for it here (queued plus in flight on the link).
    pub queued: u64,
}

/// Sessions that moved between this node and its peers since it started.
#[derive(Debug, Default)]
pub struct SessionMoves {
    /// Taken over from a peer when its client connected here.
    pub taken_over: AtomicU64,
    /// Handed to a peer whose client connected there.
    pub handed_over: AtomicU64,
    /// Pushed to a peer by this node's drain.
    pub drained_out: AtomicU64,
    /// Received from a draining peer.
    pub drained_in: AtomicU64,
    /// CONNECTs refused because the client id was connecting on another node at the same time
    /// (or its session was on its way between nodes).
    pub connects_refused: AtomicU64,
}

/// [`SessionMoves`] as numbers (admin API).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SessionMoveCounts {
    /// Taken over from peers.
    pub taken_over: u64,
    /// Handed to peers.
    pub handed_over: u64,
    /// Pushed to peers on drain.
    pub drained_out: u64,
    /// Received from draining peers.
    pub drained_in: u64,
    /// CONNECTs refused (concurrent connect elsewhere, session in transit).
    pub connects_refused: u64,
}

impl SessionMoves {
    /// The current counts.
    pub fn counts(&self) -> SessionMoveCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SessionMoveCounts {
            taken_over: get(&self.taken_over),
            handed_over: get(&self.handed_over),
            drained_out: get(&self.drained_out),
            drained_in: get(&self.drained_in),
            connects_refused: get(&self.connects_refused),
        }
    }
}

/// `GET /api/v1/cluster`.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// This node's name.
    pub node: String,
    /// Sessions moved to and from peers.
    pub sessions: SessionMoveCounts,
    /// Alive nodes, this one included.
    pub alive: usize,
    /// Every node gossip knows (alive, dead, left), by name.
    pub members: Vec<Member>,
}
