//! What each bridge is doing, shared with the admin API and `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Connection state of a bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Trying the remote addresses.
    Connecting,
    /// Connected to the remote.
    Connected,
    /// Waiting before the next attempt.
    Backoff,
}

impl LinkState {
    /// Name used in the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Backoff => "backoff",
        }
    }
}

/// The live status of one bridge. Counters are atomics so the forwarding paths never take
/// the lock.
#[derive(Debug)]
pub struct BridgeStatus {
    /// Bridge name.
    pub name: String,
    /// Client id of the bridge's internal session (`$bridge/<name>`).
    pub session_id: String,
    link: Mutex<Link>,
    /// Messages forwarded to the remote (acknowledged by it, for QoS 1/2).
    pub forwarded_out: AtomicU64,
    /// Messages forwarded from the remote into this broker.
    pub forwarded_in: AtomicU64,
    /// Successful connects after the first one.
    pub reconnects: AtomicU64,
    /// QoS 0 messages dropped because the remote was down.
    pub dropped: AtomicU64,
    /// Messages dropped because the bridge's queue was full (`queue.max_messages` /
    /// `queue.max_bytes`), by either overflow policy.
    pub dropped_overflow: AtomicU64,
}

#[derive(Debug, Clone)]
struct Link {
    state: LinkState,
    address: Option<String>,
    last_error: Option<String>,
}

/// A point-in-time copy of a bridge's link state.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Connection state.
    pub state: LinkState,
    /// Remote address while connected.
    pub address: Option<String>,
    /// Why the last attempt or connection failed.
    pub last_error: Option<String>,
}

impl BridgeStatus {
    /// A bridge that is about to connect.
    pub fn new(name: &str) -> Self {
        BridgeStatus {
            name: name.to_string(),
            session_id: super::session_id(name),
            link: Mutex::new(Link { state: LinkState::Connecting, address: None, last_error: None }),
            forwarded_out: AtomicU64::new(0),
            forwarded_in: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            dropped_overflow: AtomicU64::new(0),
        }
    }

    fn link(&self) -> std::sync::MutexGuard<'_, Link> {
        // A panic while holding this lock leaves plain data behind; keep serving it.
        self.link.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a state change; `address` is kept only while connected.
    pub fn set(&self, state: LinkState, address: Option<String>) {
        let mut link = self.link();
        link.state = state;
        link.address = address;
    }

    /// Records why the link failed.
    pub fn set_error(&self, error: String) {
        self.link().last_error = Some(error);
    }

    /// Current link state.
    pub fn snapshot(&self) -> Snapshot {
        let link = self.link().clone();
        Snapshot { state: link.state, address: link.address, last_error: link.last_error }
    }

    /// Adds to a counter.
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// All configured bridges, in config order.
#[derive(Debug, Default)]
pub struct Board {
    bridges: Mutex<Vec<Arc<BridgeStatus>>>,
}

impl Board {
    /// Replaces the list (after a reload added, changed or removed bridges).
    pub fn set(&self, statuses: Vec<Arc<BridgeStatus>>) {
        *self.bridges.lock().unwrap_or_else(|p| p.into_inner()) = statuses;
    }

    /// Counts a QoS 0 message not kept for the bridge whose internal session is `session_id`.
    pub fn dropped_offline(&self, session_id: &str) {
        if let Some(status) = self.all().iter().find(|b| b.session_id == session_id) {
            BridgeStatus::count(&status.dropped);
        }
    }

    /// Counts `n` messages a full queue dropped, if `session_id` is a bridge's internal
    /// session (a no-op for client sessions, without taking the lock).
    pub fn dropped_overflow(&self, session_id: &str, n: u64) {
        if n == 0 || !session_id.starts_with(super::SESSION_PREFIX) {
            return;
        }
        if let Some(status) = self.all().iter().find(|b| b.session_id == session_id) {
            status.dropped_overflow.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Every bridge's status.
    pub fn all(&self) -> Vec<Arc<BridgeStatus>> {
        self.bridges.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
