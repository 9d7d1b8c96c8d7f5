//! Durable storage behind a small seam.
//!
//! The core's in-memory structures are authoritative while the broker runs; a [`Store`]
//! mirrors their changes so they survive a restart, and hands them back at start
//! ([`Store::load`]). Writes are submitted without blocking ([`Store::submit`], under the
//! session lock, so they reach the store in the order they happened); a caller that must not
//! acknowledge before the data is durable waits on [`Store::barrier`]. [`MemoryStore`] (for
//! `storage.persistence: false`) keeps nothing; [`disk::DiskStore`] is the embedded engine.

pub mod disk;
mod records;

pub(crate) use records::unix_ms;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use tokio::sync::oneshot;

use crate::core::session::{Expiry, Phase, Will};
use crate::core::types::{ByteString, Delivery, Message, SubscriptionOptions};

/// Errors from a storage engine.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The engine failed (I/O, corruption); the message names the path and the reason.
    #[error("store error: {0}")]
    Engine(String),
    /// The writer thread is gone (broker shutting down or the store failed earlier).
    #[error("store is closed")]
    Closed,
}

/// What a persistent session looks like in the store (everything but its queue).
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// Store incarnation id.
    pub store_id: u64,
    /// Client identifier.
    pub client_id: ByteString,
    /// Lifetime after disconnect.
    pub expiry: Expiry,
    /// Subscriptions as sent by the client.
    pub subscriptions: Vec<(ByteString, SubscriptionOptions)>,
    /// Will of the current or last connection.
    pub will: Option<Will>,
    /// When the last connection ended (`None`: connected when written).
    pub disconnected_at: Option<SystemTime>,
}

/// A session with its stored queue, as loaded at start.
#[derive(Debug)]
pub struct LoadedSession {
    /// Session metadata.
    pub record: SessionRecord,
    /// Queued deliveries by sequence number, with `AwaitPubcomp` where the PUBREC arrived.
    pub deliveries: Vec<(u64, Delivery, Option<Phase>)>,
    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub inbound: Vec<u16>,
}

/// Everything a store hands back at start.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Retained messages.
    pub retained: Vec<Message>,
    /// Persistent sessions.
    pub sessions: Vec<LoadedSession>,
    /// Delayed publishes: (due time, store key, message).
    pub delayed: Vec<(SystemTime, DelayedKey, Message)>,
}

/// Store key of a delayed publish.
pub type DelayedKey = (u64, u64);

/// One change to mirror.
#[derive(Debug)]
pub enum Op {
    /// Retained message set for its topic.
    RetainedSet(Arc<Message>),
    /// Retained message of a topic cleared.
    RetainedClear(ByteString),
    /// Session metadata written (created, resumed, subscriptions or will changed, detached).
    SessionPut(Box<SessionRecord>),
    /// Session ended: its metadata (if still this incarnation), queue and inbound ids go.
    SessionDelete {
        /// Client identifier (the metadata key).
        client_id: ByteString,
        /// Incarnation to delete.
        store_id: u64,
    },
    /// Delivery queued (or its state changed).
    QueuePut {
        /// Session incarnation.
        store_id: u64,
        /// Sequence number.
        seq: u64,
        /// The delivery.
        delivery: Delivery,
        /// `Some(AwaitPubcomp)` once the PUBREC arrived.
        phase: Option<Phase>,
    },
    /// Delivery gone.
    QueueDelete {
        /// Session incarnation.
        store_id: u64,
        /// Sequence number.
        seq: u64,
    },
    /// Inbound QoS 2 packet id recorded or released.
    Inbound {
        /// Session incarnation.
        store_id: u64,
        /// Packet id.
        packet_id: u16,
        /// Recorded (`true`) or released.
        present: bool,
    },
    /// Delayed publish scheduled.
    DelayedPut(DelayedKey, SystemTime, Box<Message>),
    /// Delayed publish fired.
    DelayedDelete(DelayedKey),
}

/// Durable state the core writes through.
pub trait Store: Send + Sync + 'static {
    /// Engine name for logs.
    fn kind(&self) -> &'static str;
    /// Whether anything is kept; when false the core skips building writes altogether.
    fn is_persistent(&self) -> bool;
    /// Queues a change; never blocks.
    fn submit(&self, op: Op);
    /// Resolves once everything submitted so far is durable (per `storage.fsync`).
    fn barrier(&self) -> Durable;
    /// Everything stored, for recovery at start.
    fn load(&self) -> Result<Loaded, StoreError>;
    /// Bytes on disk, for metrics.
    fn disk_size(&self) -> u64;
}

/// Completion of a [`Store::barrier`].
#[must_use = "a barrier only helps if awaited"]
#[derive(Debug)]
pub struct Durable(Option<oneshot::Receiver<Result<(), StoreError>>>);

impl Durable {
    /// Already durable (nothing to wait for).
    pub fn ready() -> Self {
        Durable(None)
    }

    /// Completes when `rx` does.
    pub fn pending(rx: oneshot::Receiver<Result<(), StoreError>>) -> Self {
        Durable(Some(rx))
    }

    /// True when there is nothing to wait for.
    pub fn is_ready(&self) -> bool {
        self.0.is_none()
    }
}

impl Future for Durable {
    type Output = Result<(), StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.0.as_mut() {
            None => Poll::Ready(Ok(())),
            Some(rx) => Pin::new(rx).poll(cx).map(|r| r.unwrap_or(Err(StoreError::Closed))),
        }
    }
}

/// No persistence: everything is kept only in the core's memory.
#[derive(Debug, Default)]
pub struct MemoryStore;

impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn is_persistent(&self) -> bool {
        false
    }

    fn submit(&self, _op: Op) {}

    fn barrier(&self) -> Durable {
        Durable::ready()
    }

    fn load(&self) -> Result<Loaded, StoreError> {
        Ok(Loaded::default())
    }

    fn disk_size(&self) -> u64 {
        0
    }
}
