//! Durable storage behind a small seam.
//!
//! The core's in-memory structures are authoritative while the broker runs; a [`Store`]
//! mirrors their changes so they survive a restart, and hands them back at start
//! ([`Store::load`]). Writes are submitted without blocking ([`Store::submit`], under the
//! session lock, so they reach the store in the order they happened) and get a ticket; a
//! caller that must not acknowledge before the data is durable waits for its ticket
//! ([`Store::durable`], [`Durable`]), and a connection waits for all of its tickets at once on
//! the store's [`Watermark`]. [`MemoryStore`] (for
//! `storage.persistence: false`) keeps nothing; [`disk::DiskStore`] is the embedded engine.

pub mod disk;
mod records;

pub(crate) use records::unix_ms;

/// Encodes a session for a handover to another cluster node (as the store encodes it).
pub fn encode_handover(session: &LoadedSession) -> Vec<u8> {
    records::encode_handover(session, records::Clock::now())
}

/// Encodes a delivery relayed to another cluster node (as the store encodes queued messages).
pub fn encode_delivery(delivery: &crate::core::types::Delivery) -> Vec<u8> {
    records::encode_delivery(delivery, false, records::Clock::now())
}

/// Decodes [`encode_delivery`]'s output.
pub fn decode_delivery(bytes: &[u8]) -> Result<crate::core::types::Delivery, String> {
    records::decode_delivery(bytes, records::Clock::now()).map(|(delivery, _)| delivery)
}

/// Encodes a retained message sent to a joining cluster node (as the store encodes it).
pub fn encode_message(message: &crate::core::types::Message) -> Vec<u8> {
    records::encode_message(message, records::Clock::now())
}

/// Decodes [`encode_message`]'s output.
pub fn decode_message(bytes: &[u8]) -> Result<crate::core::types::Message, String> {
    records::decode_message(bytes, records::Clock::now())
}

/// Decodes [`encode_handover`]'s output; the error says what is wrong.
pub fn decode_handover(bytes: &[u8]) -> Result<LoadedSession, String> {
    records::decode_handover(bytes, records::Clock::now())
}

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

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
    /// Sequence numbers below this one were acknowledged ([`Op::QueueFloor`]).
    pub floor: u64,
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
    /// Every delivery of the session below `floor` is gone. Stands for one deletion per
    /// acknowledged message; the engine drops the entries below it lazily.
    QueueFloor {
        /// Session incarnation.
        store_id: u64,
        /// Lowest sequence number still held.
        floor: u64,
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

impl Op {
    /// Whether an acknowledgement may depend on this change being on disk. Deletions never
    /// do: a deletion lost in a crash only brings back something already handled (a message
    /// is re-sent, an ended session reappears until it expires), never loses data.
    pub fn needs_sync(&self) -> bool {
        !matches!(
            self,
            Op::QueueDelete { .. }
                | Op::QueueFloor { .. }
                | Op::SessionDelete { .. }
                | Op::DelayedDelete(_)
                | Op::Inbound { present: false, .. }
        )
    }
}

/// How far the store has come: every change with a ticket up to `durable` is on disk (or
/// needs not be), unless `failed`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watermark {
    /// Highest ticket whose change (and everything before it) is durable.
    pub durable: u64,
    /// The store failed; nothing more will become durable.
    pub failed: bool,
}

/// Durable state the core writes through.
pub trait Store: Send + Sync + 'static {
    /// Engine name for logs.
    fn kind(&self) -> &'static str;
    /// Whether anything is kept; when false the core skips building writes altogether.
    fn is_persistent(&self) -> bool;
    /// Queues a change without blocking; returns its ticket (tickets grow in submission
    /// order, which is also the order the store applies changes in).
    fn submit(&self, op: Op) -> u64;
    /// Completion of every change up to `ticket`.
    fn durable(&self, ticket: u64) -> Durable;
    /// Completion of everything submitted so far.
    fn flush(&self) -> Durable;
    /// Progress updates, for waiting on many tickets at once (a connection's acknowledgements).
    fn watermark(&self) -> Option<watch::Receiver<Watermark>>;
    /// Everything stored, for recovery at start.
    fn load(&self) -> Result<Loaded, StoreError>;
    /// Bytes on disk, for metrics.
    fn disk_size(&self) -> u64;
}

/// The point after which an acknowledgement may be sent.
#[must_use = "durability only helps if waited for"]
#[derive(Debug, Clone)]
pub struct Durable {
    ticket: u64,
    progress: Option<watch::Receiver<Watermark>>,
}

impl Durable {
    /// Nothing to wait for.
    pub fn ready() -> Self {
        Durable { ticket: 0, progress: None }
    }

    /// Completes when `progress` passes `ticket`.
    pub fn pending(ticket: u64, progress: watch::Receiver<Watermark>) -> Self {
        Durable { ticket, progress: Some(progress) }
    }

    /// `Some(Ok)` once durable, `Some(Err)` if the store failed, `None` while pending.
    pub fn check(&self) -> Option<Result<(), StoreError>> {
        let Some(progress) = &self.progress else { return Some(Ok(())) };
        let mark = *progress.borrow();
        if mark.durable >= self.ticket {
            Some(Ok(()))
        } else if mark.failed {
            Some(Err(StoreError::Engine("the message store failed; see the error log".into())))
        } else {
            None
        }
    }

    /// True when already durable (nothing to wait for).
    pub fn is_ready(&self) -> bool {
        matches!(self.check(), Some(Ok(())))
    }

    /// Waits until durable.
    pub async fn wait(self) -> Result<(), StoreError> {
        let Some(mut progress) = self.progress else { return Ok(()) };
        let ticket = self.ticket;
        let mark = progress
            .wait_for(|m| m.durable >= ticket || m.failed)
            .await
            .map(|m| *m)
            .map_err(|_| StoreError::Closed)?;
        if mark.durable >= ticket {
            Ok(())
        } else {
            Err(StoreError::Engine("the message store failed; see the error log".into()))
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

    fn submit(&self, _op: Op) -> u64 {
        0
    }

    fn durable(&self, _ticket: u64) -> Durable {
        Durable::ready()
    }

    fn flush(&self) -> Durable {
        Durable::ready()
    }

    fn watermark(&self) -> Option<watch::Receiver<Watermark>> {
        None
    }

    fn load(&self) -> Result<Loaded, StoreError> {
        Ok(Loaded::default())
    }

    fn disk_size(&self) -> u64 {
        0
    }
}
