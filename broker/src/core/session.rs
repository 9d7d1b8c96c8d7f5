//! Session state: subscriptions, the bounded outbound queue, QoS 1/2 in-flight windows in
//! both directions, the will, and the link to the connection currently attached.
//!
//! All of it sits behind one mutex per session. That lock is always the innermost one taken
//! (nothing else is locked while holding it), so publishers on any thread can enqueue while
//! the connection's writer drains, without lock-order deadlocks.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures::task::AtomicWaker;
use rustc_hash::{FxHashMap, FxHashSet};

use super::trie::Member;
use super::types::{ByteString, Delivery, Message, QoS, SessionId, SubscriptionOptions};
use crate::auth::ClientAcl;

/// How long a session outlives its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Ends when the connection closes (clean session / Session Expiry Interval 0).
    OnDisconnect,
    /// Kept this long after the connection closes.
    After(Duration),
    /// Kept until the client cleans it (v5 0xFFFFFFFF, or v3 with no configured expiry).
    Never,
}

impl Expiry {
    /// From a v5 Session Expiry Interval.
    pub fn from_interval(secs: u32) -> Self {
        match secs {
            0 => Expiry::OnDisconnect,
            u32::MAX => Expiry::Never,
            s => Expiry::After(Duration::from_secs(u64::from(s))),
        }
    }

    /// Applies a broker-side cap.
    pub fn capped(self, cap: Option<Duration>) -> Self {
        match (self, cap) {
            (Expiry::OnDisconnect, _) | (_, None) => self,
            (Expiry::Never, Some(cap)) => Expiry::After(cap),
            (Expiry::After(d), Some(cap)) => Expiry::After(d.min(cap)),
        }
    }

    /// The interval to report in CONNACK (v5), in seconds.
    pub fn as_interval(self) -> u32 {
        match self {
            Expiry::OnDisconnect => 0,
            Expiry::After(d) => u32::try_from(d.as_secs()).unwrap_or(u32::MAX - 1),
            Expiry::Never => u32::MAX,
        }
    }
}

/// A will message waiting for its connection to end (MQTT 5.0 §3.1.2.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// The message to publish (its `expires_at` is set when it is published).
    pub message: Message,
    /// Message Expiry Interval to apply at publish time.
    pub expiry_interval: Option<u32>,
    /// Will Delay Interval.
    pub delay: Duration,
}

/// Why the broker asks a connection to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// Another connection took the session over (v5 reason 0x8E).
    TakenOver = 1,
    /// The broker is shutting down (v5 reason 0x8B).
    ServerShuttingDown = 2,
    /// The session no longer belongs to this connection (it closed, or the session ended):
    /// the writer just stops.
    Detached = 3,
    /// Disconnected through the admin API (v5 reason 0x98).
    AdminAction = 4,
    /// The client's credentials were withdrawn (v5 reason 0x87).
    NotAuthorized = 5,
}

/// Per-connection wake-up and close request, shared between the session (any thread) and
/// the connection's writer (its worker thread). One waiter only (the connection's task):
/// an `AtomicWaker` and a permit flag, so waiting costs no future state beyond a reference
/// (tokio's `Notify` kept a waiter node of about 100 bytes in every idle connection).
#[derive(Debug, Default)]
pub struct ConnSignal {
    waker: AtomicWaker,
    woken: AtomicBool,
    kick: AtomicU8,
}

impl ConnSignal {
    /// Wakes the writer (a permit is stored if it is not waiting yet).
    pub fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Waits for [`ConnSignal::wake`] or [`ConnSignal::kick`], consuming the permit. Dropping
    /// the future before it is ready consumes nothing.
    pub fn wait(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.woken.swap(false, Ordering::AcqRel) {
                return std::task::Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // A wake between the check and the registration would otherwise be missed.
            if self.woken.swap(false, Ordering::AcqRel) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
    }

    /// Asks the connection to close. The first reason wins.
    pub fn kick(&self, reason: Kick) {
        let _ = self.kick.compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire);
        self.wake();
    }

    /// The pending close request, if any.
    pub fn kicked(&self) -> Option<Kick> {
        match self.kick.load(Ordering::Acquire) {
            1 => Some(Kick::TakenOver),
            2 => Some(Kick::ServerShuttingDown),
            3 => Some(Kick::Detached),
            4 => Some(Kick::AdminAction),
            5 => Some(Kick::NotAuthorized),
            _ => None,
        }
    }
}

/// Per-session limits, copied from the config when the session is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// `limits.max_queued_messages`.
    pub max_messages: usize,
    /// `limits.max_queued_bytes` (0 = unlimited).
    pub max_bytes: usize,
    /// `limits.max_inflight`.
    pub max_inflight: u16,
}

/// What a full session queue gives up once no queued QoS 0 message is left to evict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverflowPolicy {
    /// The offered message (every client session).
    #[default]
    DropNewest,
    /// The oldest queued message, whatever its QoS (a bridge configured with
    /// `queue.overflow: drop_oldest`).
    DropOldest,
}

/// Link to the connection currently serving the session.
#[derive(Debug)]
pub struct Attachment {
    /// Connection generation; stale callbacks and timers compare against it.
    pub generation: u64,
    /// Wakes the connection's writer.
    pub signal: Arc<ConnSignal>,
    /// Effective outbound window: min(client Receive Maximum, `max_inflight`).
    pub window: u16,
    /// Who is connected (address, protocol, keep-alive), for the admin API and metrics; set by
    /// the front end right after connect (see `Broker::set_connection_info`).
    pub info: Option<Arc<super::admin::ConnectionInfo>>,
    /// The writer found nothing to do and waits for a signal.
    writer_idle: bool,
}

/// Phase of an outbound QoS 1/2 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// QoS 1 PUBLISH sent, waiting for PUBACK.
    AwaitPuback,
    /// QoS 2 PUBLISH sent, waiting for PUBREC.
    AwaitPubrec,
    /// QoS 2 PUBREL sent, waiting for PUBCOMP.
    AwaitPubcomp,
}

/// The packet id of the message with sequence number `seq`. Deriving it (instead of
/// allocating) means a restarted broker re-sends a message with the id it had before, without
/// writing every assignment to disk. Two messages in flight at once collide only if their
/// sequence numbers are 65535 apart; the writer then waits for the older one.
pub fn packet_id_of(seq: u64) -> u16 {
    (seq % 65_535) as u16 + 1
}

/// A delivery waiting in the session queue.
#[derive(Debug, Clone)]
pub struct Queued {
    /// Per-session sequence number (the store key, and the packet id's source).
    pub seq: u64,
    /// The message and per-subscriber flags.
    pub delivery: Delivery,
    /// May have been sent before a broker restart: send with DUP.
    pub maybe_sent: bool,
}

/// The session queue: deliveries ordered by sequence number, with the bookkeeping the bounds
/// need kept in step (bytes, and where the QoS 0 messages are, so overflow finds the oldest
/// one without scanning a long queue of QoS 1/2 messages).
#[derive(Debug, Default)]
struct Queue {
    entries: VecDeque<Queued>,
    bytes: usize,
    /// Sequence numbers of the queued QoS 0 messages, oldest first.
    qos0: VecDeque<u64>,
}

impl Queue {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn front(&self) -> Option<&Queued> {
        self.entries.front()
    }

    fn iter(&self) -> impl Iterator<Item = &Queued> {
        self.entries.iter()
    }

    fn push(&mut self, q: Queued) {
        self.bytes += q.delivery.message.size();
        if q.delivery.qos == QoS::AtMostOnce {
            self.qos0.push_back(q.seq);
        }
        self.entries.push_back(q);
    }

    fn forget(&mut self, q: &Queued) {
        self.bytes -= q.delivery.message.size();
        if q.delivery.qos == QoS::AtMostOnce {
            // Almost always the front: QoS 0 messages leave in order.
            if self.qos0.front() == Some(&q.seq) {
                self.qos0.pop_front();
            } else if let Some(pos) = self.qos0.iter().position(|s| *s == q.seq) {
                self.qos0.remove(pos);
            }
        }
    }

    fn pop_front(&mut self) -> Option<Queued> {
        let q = self.entries.pop_front()?;
        self.forget(&q);
        Some(q)
    }

    fn remove_seq(&mut self, seq: u64) -> Option<Queued> {
        let pos = self.entries.binary_search_by_key(&seq, |q| q.seq).ok()?;
        let q = self.entries.remove(pos)?;
        self.forget(&q);
        Some(q)
    }

    fn evict_oldest_qos0(&mut self) -> Option<Queued> {
        let seq = *self.qos0.front()?;
        self.remove_seq(seq)
    }

    fn retain(&mut self, mut keep: impl FnMut(&Queued) -> bool) {
        self.entries.retain(|q| keep(q));
        self.bytes = self.entries.iter().map(|q| q.delivery.message.size()).sum();
        self.qos0 =
            self.entries.iter().filter(|q| q.delivery.qos == QoS::AtMostOnce).map(|q| q.seq).collect();
    }

    fn clear(&mut self) {
        *self = Queue::default();
    }
}

/// An outbound QoS 1/2 message that has a packet id.
#[derive(Debug, Clone)]
pub struct Inflight {
    /// Per-session sequence number.
    pub seq: u64,
    /// Packet identifier.
    pub packet_id: u16,
    /// What is being delivered.
    pub delivery: Delivery,
    /// Where the exchange stands.
    pub phase: Phase,
    /// Generation of the connection it was last sent on; anything else means it must be
    /// sent again (with DUP, or as PUBREL) on the current connection.
    sent_on: u64,
}

/// What the writer must put on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// A PUBLISH; `packet_id` is `None` for QoS 0.
    Publish {
        /// Packet identifier for QoS 1/2.
        packet_id: Option<u16>,
        /// The message and per-subscriber flags.
        delivery: Delivery,
        /// DUP flag (a retransmission).
        dup: bool,
    },
    /// A PUBREL for a QoS 2 message whose PUBREC arrived on an earlier connection.
    Release {
        /// Packet identifier.
        packet_id: u16,
    },
}

/// Result of offering a message to a session's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Queued; the writer should be woken.
    Wake,
    /// Queued; the writer is already busy (or there is none).
    Queued,
    /// Queued in place of an older queued message of the same topic (conflation).
    Conflated,
    /// Not queued: QoS 0 for an offline session (not kept, as in Mosquitto).
    SkippedOffline,
    /// Dropped: the session ended.
    SessionEnded,
    /// Dropped because the queue is full (the message offered, or an older QoS 0 one was
    /// evicted to make room; see [`SessionState::enqueue`]).
    Overflow {
        /// The offered message was queued (an older QoS 0 message made room).
        queued: bool,
        /// Messages evicted.
        evicted: u32,
    },
}

/// Counters the writer reports back for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchStats {
    /// Queued messages dropped because their expiry passed before sending.
    pub expired: u32,
}

/// Changes a durable store must mirror, reported in order while the session lock is held.
/// Only QoS 1/2 deliveries are reported (QoS 0 is never stored). The broker passes a journal
/// that writes to the store for persistent sessions, and [`NoJournal`] otherwise.
pub trait Journal {
    /// A delivery entered the queue.
    fn queued(&mut self, seq: u64, delivery: &Delivery);
    /// A QoS 2 delivery's PUBREC arrived: it only needs its PUBREL now.
    fn released(&mut self, seq: u64, delivery: &Delivery);
    /// A delivery left for good (acknowledged, expired, evicted, replaced, discarded).
    fn removed(&mut self, seq: u64);
    /// Every delivery with a sequence number below `floor` has left. Acknowledgements mostly
    /// arrive oldest first, so this replaces one deletion per message with one small, often
    /// overwritten record per session (the store drops the entries below it lazily).
    fn acked_below(&mut self, floor: u64);
    /// An inbound QoS 2 packet id was recorded (`true`) or released (`false`).
    fn inbound(&mut self, packet_id: u16, present: bool);
}

/// A journal that records nothing (in-memory sessions).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoJournal;

impl Journal for NoJournal {
    fn queued(&mut self, _: u64, _: &Delivery) {}
    fn released(&mut self, _: u64, _: &Delivery) {}
    fn removed(&mut self, _: u64) {}
    fn acked_below(&mut self, _: u64) {}
    fn inbound(&mut self, _: u16, _: bool) {}
}

/// Stored state of a session, as loaded at start.
#[derive(Debug, Default)]
pub struct Restored {
    /// Queued deliveries by sequence number, with the phase they had reached (only
    /// `AwaitPubcomp` is recorded; earlier phases are re-sent from the queue).
    pub deliveries: Vec<(u64, Delivery, Option<Phase>)>,
    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub inbound: Vec<u16>,
    /// Every sequence number below this one was acknowledged (see [`Journal::acked_below`]).
    pub floor: u64,
}

/// The mutable part of a session.
#[derive(Debug)]
pub struct SessionState {
    /// The connection serving the session, if any.
    pub attachment: Option<Attachment>,
    /// The session was discarded; late deliveries are ignored.
    pub ended: bool,
    /// Lifetime after disconnect.
    pub expiry: Expiry,
    /// Generation of the last connection, also after it detached (timers check it).
    pub last_generation: u64,
    /// Subscriptions by the filter as the client sent it (with any `$share/` prefix).
    pub subscriptions: FxHashMap<ByteString, SubscriptionOptions>,
    /// The will of the current (or last) connection. Boxed: most clients set none, and inline
    /// it took 112 of every session's 576 bytes.
    pub will: Option<Box<Will>>,
    /// When the last connection ended, if it has (persisted for expiry after a restart).
    pub disconnected_at: Option<std::time::SystemTime>,
    /// Metadata has been written to the store (so ending the session must delete it).
    pub persisted: bool,
    limits: QueueLimits,
    /// Set by [`SessionState::set_own_limits`]: config reloads leave `limits` alone.
    own_limits: bool,
    overflow: OverflowPolicy,
    queue: Queue,
    /// Sent and unacknowledged, in sequence order.
    inflight: VecDeque<Inflight>,
    /// Inflight entries sent on the current connection (they use the client's window).
    sent_count: usize,
    next_seq: u64,
    /// Set on the stand-in left behind when the session moved to another cluster node: what
    /// is routed to it goes there (see `core::hooks::Relay`).
    pub relay: Option<super::hooks::RelayTo>,
    /// Packet-id bookkeeping and conflation, allocated when first needed.
    ids: Option<Box<Ids>>,
}

/// The parts of a session's state that only QoS 1/2 traffic and offline conflation use.
/// Boxed: an idle session, or one with QoS 0 traffic only, keeps one pointer instead of three
/// empty hash tables (96 bytes of every idle connection, issue 6).
#[derive(Debug, Default)]
struct Ids {
    /// Packet ids of the outbound messages in flight.
    outbound: FxHashSet<u16>,
    /// Inbound QoS 2 packet ids received (PUBREC sent) and not yet released.
    inbound_qos2: FxHashSet<u16>,
    /// Offline conflation: topic → sequence number of its queued message.
    conflated: FxHashMap<ByteString, u64>,
}

impl SessionState {
    fn new(expiry: Expiry, limits: QueueLimits) -> Self {
        SessionState {
            attachment: None,
            ended: false,
            expiry,
            last_generation: 0,
            subscriptions: FxHashMap::default(),
            will: None,
            disconnected_at: None,
            persisted: false,
            limits,
            own_limits: false,
            overflow: OverflowPolicy::DropNewest,
            queue: Queue::default(),
            inflight: VecDeque::new(),
            sent_count: 0,
            next_seq: 0,
            relay: None,
            ids: None,
        }
    }

    fn ids(&self) -> Option<&Ids> {
        self.ids.as_deref()
    }

    fn ids_mut(&mut self) -> &mut Ids {
        self.ids.get_or_insert_default()
    }

    /// Empties the session for a handover to another cluster node: every delivery in sequence
    /// order (in flight ones too, with `AwaitPubcomp` where the PUBREC already arrived) and the
    /// inbound QoS 2 ids, shaped like what the store keeps so the receiving node restores them
    /// the same way ([`SessionState::restore`]). Sequence numbers travel along, so packet ids
    /// stay the same for the client.
    pub fn take_for_handover(&mut self) -> Restored {
        let mut deliveries: Vec<(u64, Delivery, Option<Phase>)> = self
            .inflight
            .drain(..)
            .map(|i| (i.seq, i.delivery, (i.phase == Phase::AwaitPubcomp).then_some(Phase::AwaitPubcomp)))
            .collect();
        deliveries.extend(self.queue.entries.drain(..).map(|q| (q.seq, q.delivery, None)));
        deliveries.sort_by_key(|(seq, _, _)| *seq);
        self.queue.bytes = 0;
        self.queue.qos0.clear();
        let inbound = self.ids.take().map_or_else(Vec::new, |ids| ids.inbound_qos2.into_iter().collect());
        Restored { deliveries, inbound, floor: self.next_seq }
    }

    /// Puts back what the store kept: messages with an outstanding PUBREL go in flight (their
    /// PUBREL is re-sent), everything else is queued and sent with DUP set.
    pub fn restore(&mut self, mut restored: Restored) {
        // New sequence numbers must stay above the stored floor, or the store would take
        // them for acknowledged ones.
        self.next_seq = self.next_seq.max(restored.floor);
        restored.deliveries.sort_by_key(|(seq, _, _)| *seq);
        for (seq, delivery, phase) in restored.deliveries {
            self.next_seq = self.next_seq.max(seq + 1);
            if phase == Some(Phase::AwaitPubcomp) {
                let packet_id = packet_id_of(seq);
                if self.ids_mut().outbound.insert(packet_id) {
                    self.inflight.push_back(Inflight {
                        seq,
                        packet_id,
                        delivery,
                        phase: Phase::AwaitPubcomp,
                        sent_on: 0,
                    });
                }
                continue;
            }
            self.queue.push(Queued { seq, delivery, maybe_sent: true });
        }
        if !restored.inbound.is_empty() {
            self.ids_mut().inbound_qos2.extend(restored.inbound);
        }
    }

    /// Messages waiting to be sent.
    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// Queued deliveries, oldest first.
    pub fn queued(&self) -> impl Iterator<Item = &Queued> {
        self.queue.iter()
    }

    /// Outbound QoS 1/2 messages awaiting acknowledgement.
    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    /// In-flight entries, oldest first.
    pub fn inflight(&self) -> impl Iterator<Item = &Inflight> {
        self.inflight.iter()
    }

    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub fn inbound_qos2(&self) -> impl Iterator<Item = u16> + '_ {
        self.ids().into_iter().flat_map(|ids| ids.inbound_qos2.iter().copied())
    }

    /// Whether a connection with this generation is the one attached.
    pub fn is_attached(&self, generation: u64) -> bool {
        self.attachment.as_ref().is_some_and(|a| a.generation == generation)
    }

    /// Replaces the queue limits (config reload). Queued messages above a lowered limit stay;
    /// the new limit applies to what arrives next. The in-flight window of a connection
    /// already attached keeps its size until the client reconnects.
    /// Sessions with limits of their own ([`SessionState::set_own_limits`]) keep them.
    pub fn set_limits(&mut self, limits: QueueLimits) {
        if !self.own_limits {
            self.limits = limits;
        }
    }

    /// Gives this session its own limits and overflow policy (a bridge's internal session,
    /// whose queue is configured per bridge); from now on [`SessionState::set_limits`] does
    /// not replace them. Applies to what arrives next, like `set_limits`.
    pub fn set_own_limits(&mut self, limits: QueueLimits, overflow: OverflowPolicy) {
        self.limits = limits;
        self.overflow = overflow;
        self.own_limits = true;
    }

    /// Attaches a new connection. Everything in flight will be sent again on it.
    pub fn attach(&mut self, generation: u64, signal: Arc<ConnSignal>, client_receive_max: u16) {
        self.attachment = Some(Attachment {
            generation,
            signal,
            window: client_receive_max.min(self.limits.max_inflight).max(1),
            info: None,
            writer_idle: false,
        });
        self.last_generation = generation;
        self.sent_count = 0;
        self.disconnected_at = None;
        // Conflation is for offline queues only.
        if let Some(ids) = self.ids.as_mut() {
            ids.conflated.clear();
        }
    }

    /// Detaches the connection if it is still the attached one, and stops its writer.
    pub fn detach(&mut self, generation: u64) -> bool {
        if self.is_attached(generation) {
            if let Some(a) = self.attachment.take() {
                a.signal.kick(Kick::Detached);
            }
            self.disconnected_at = Some(std::time::SystemTime::now());
            true
        } else {
            false
        }
    }

    /// Discards queued and in-flight state and subscriptions (clean start or expiry).
    pub fn clear(&mut self) {
        self.queue.clear();
        self.inflight.clear();
        self.ids = None;
        self.sent_count = 0;
        self.subscriptions.clear();
    }

    /// Offers a delivery. Overflow policy when the queue is full (by count or bytes): evict
    /// the oldest queued QoS 0 message to make room; when none is left, drop the offered
    /// message. Acknowledged QoS 1/2 messages are thus never evicted for newer traffic. With
    /// `conflate` (the topic matches `limits.conflate`) and no connection attached, the
    /// message replaces the queued message of the same topic instead.
    pub fn enqueue(&mut self, delivery: Delivery, conflate: bool, journal: &mut impl Journal) -> Enqueued {
        if self.ended {
            return Enqueued::SessionEnded;
        }
        if self.attachment.is_none() && delivery.qos == QoS::AtMostOnce {
            return Enqueued::SkippedOffline;
        }
        let mut conflated = false;
        if conflate
            && self.attachment.is_none()
            && let Some(old_seq) =
                self.ids().and_then(|ids| ids.conflated.get(&delivery.message.topic).copied())
            && let Some(old) = self.queue.remove_seq(old_seq)
        {
            if old.delivery.qos != QoS::AtMostOnce {
                journal.removed(old_seq);
            }
            conflated = true;
        }
        let size = delivery.message.size();
        let mut evicted = 0;
        while self.is_full(size) {
            if self.queue.evict_oldest_qos0().is_some() {
                evicted += 1;
                continue;
            }
            // Terminates: `is_full` is false once the queue is empty.
            if self.overflow == OverflowPolicy::DropOldest
                && let Some(old) = self.queue.pop_front()
            {
                if old.delivery.qos != QoS::AtMostOnce {
                    journal.removed(old.seq);
                }
                if let Some(ids) = self.ids.as_mut().filter(|ids| !ids.conflated.is_empty()) {
                    ids.conflated.retain(|_, seq| *seq != old.seq);
                }
                evicted += 1;
                continue;
            }
            return Enqueued::Overflow { queued: false, evicted };
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if delivery.qos != QoS::AtMostOnce {
            journal.queued(seq, &delivery);
        }
        if conflate && self.attachment.is_none() {
            self.ids_mut().conflated.insert(delivery.message.topic.clone(), seq);
        }
        self.queue.push(Queued { seq, delivery, maybe_sent: false });
        if evicted > 0 {
            self.wake();
            return Enqueued::Overflow { queued: true, evicted };
        }
        if conflated {
            return Enqueued::Conflated;
        }
        if self.wake() { Enqueued::Wake } else { Enqueued::Queued }
    }

    fn is_full(&self, incoming: usize) -> bool {
        self.queue.len() >= self.limits.max_messages
            || (self.limits.max_bytes > 0
                && self.queue.bytes + incoming > self.limits.max_bytes
                && !self.queue.is_empty())
    }

    /// Notifies an idle writer; returns whether a notification was sent.
    fn wake(&mut self) -> bool {
        match &mut self.attachment {
            Some(a) if a.writer_idle => {
                a.writer_idle = false;
                a.signal.wake();
                true
            }
            _ => false,
        }
    }

    /// Asks the attached connection to close.
    pub fn kick(&self, reason: Kick) {
        if let Some(a) = &self.attachment {
            a.signal.kick(reason);
        }
    }

    /// Drops queued messages whose expiry has passed (also while offline); returns how many.
    pub fn drop_expired(&mut self, now: Instant, journal: &mut impl Journal) -> u32 {
        let mut dropped = 0;
        self.queue.retain(|q| {
            if q.delivery.message.is_expired(now) {
                if q.delivery.qos != QoS::AtMostOnce {
                    journal.removed(q.seq);
                }
                dropped += 1;
                false
            } else {
                true
            }
        });
        dropped
    }

    /// Moves work for the connection `generation` into `out`: first retransmissions of what
    /// was in flight on an earlier connection (in the original order, MQTT 5.0 §4.6), then
    /// queued messages, while the client's window allows. `qos0_ok` is false while the socket
    /// is under write back-pressure. Marks the writer idle when nothing is left to send.
    /// `now` is asked only for messages with an expiry: most have none, and reading the clock
    /// was 1 % of the broker's CPU in the 1→100 fan-out at 500 msg/s (issue 6).
    pub fn next_batch(
        &mut self,
        generation: u64,
        qos0_ok: bool,
        max: usize,
        now: impl Fn() -> Instant,
        out: &mut Vec<Outgoing>,
        journal: &mut impl Journal,
    ) -> BatchStats {
        let mut stats = BatchStats::default();
        let Some(window) =
            self.attachment.as_ref().filter(|a| a.generation == generation).map(|a| a.window as usize)
        else {
            return stats;
        };
        if self.sent_count < self.inflight.len() {
            for entry in self.inflight.iter_mut() {
                if out.len() >= max || self.sent_count >= window {
                    break;
                }
                if entry.sent_on == generation {
                    continue;
                }
                entry.sent_on = generation;
                self.sent_count += 1;
                out.push(match entry.phase {
                    Phase::AwaitPubcomp => Outgoing::Release { packet_id: entry.packet_id },
                    Phase::AwaitPuback | Phase::AwaitPubrec => Outgoing::Publish {
                        packet_id: Some(entry.packet_id),
                        delivery: entry.delivery.clone(),
                        dup: true,
                    },
                });
            }
        }
        while out.len() < max {
            let Some(head) = self.queue.front() else { break };
            if head.delivery.message.expires_at.is_some() && head.delivery.message.is_expired(now()) {
                if let Some(q) = self.queue.pop_front()
                    && q.delivery.qos != QoS::AtMostOnce
                {
                    journal.removed(q.seq);
                }
                stats.expired += 1;
                continue;
            }
            match head.delivery.qos {
                QoS::AtMostOnce if !qos0_ok => break,
                QoS::AtMostOnce => {}
                // Window full, or the derived packet id is still in use by an older message.
                _ if self.sent_count >= window
                    || self.ids().is_some_and(|ids| ids.outbound.contains(&packet_id_of(head.seq))) =>
                {
                    break;
                }
                _ => {}
            }
            let Some(q) = self.queue.pop_front() else { break };
            let packet_id = match q.delivery.qos {
                QoS::AtMostOnce => None,
                qos => {
                    let packet_id = packet_id_of(q.seq);
                    self.ids_mut().outbound.insert(packet_id);
                    let entry = Inflight {
                        seq: q.seq,
                        packet_id,
                        delivery: q.delivery.clone(),
                        phase: if qos == QoS::AtLeastOnce { Phase::AwaitPuback } else { Phase::AwaitPubrec },
                        sent_on: generation,
                    };
                    // Kept in sequence order: the oldest held message is then at the front
                    // (see `remove_inflight`). Only PUBREL-stage entries restored at start
                    // can be newer than a queued message.
                    match self.inflight.back() {
                        Some(last) if last.seq > entry.seq => {
                            let pos = self.inflight.partition_point(|e| e.seq < entry.seq);
                            self.inflight.insert(pos, entry);
                        }
                        _ => self.inflight.push_back(entry),
                    }
                    self.sent_count += 1;
                    Some(packet_id)
                }
            };
            out.push(Outgoing::Publish { packet_id, delivery: q.delivery, dup: q.maybe_sent });
        }
        if out.is_empty()
            && let Some(a) = &mut self.attachment
        {
            a.writer_idle = true;
        }
        stats
    }

    fn remove_inflight(
        &mut self,
        packet_id: u16,
        expect: Option<Phase>,
        journal: &mut impl Journal,
    ) -> Option<Inflight> {
        let pos = self
            .inflight
            .iter()
            .position(|e| e.packet_id == packet_id && expect.is_none_or(|p| e.phase == p))?;
        let entry = self.inflight.remove(pos)?;
        if let Some(ids) = self.ids.as_mut() {
            ids.outbound.remove(&packet_id);
        }
        if self.attachment.as_ref().is_some_and(|a| a.generation == entry.sent_on) {
            self.sent_count -= 1;
        }
        // The lowest sequence number still held (both are in sequence order); acknowledgements
        // usually remove exactly that.
        let floor = match (self.inflight.front(), self.queue.front()) {
            (Some(e), Some(q)) => e.seq.min(q.seq),
            (Some(e), None) => e.seq,
            (None, Some(q)) => q.seq,
            (None, None) => self.next_seq,
        };
        if entry.seq < floor {
            journal.acked_below(floor);
        } else {
            journal.removed(entry.seq);
        }
        // Window space opened: let the writer continue.
        self.wake();
        Some(entry)
    }

    /// PUBACK received. Returns the acknowledged delivery, or `None` for an unknown id
    /// (ignored, like Mosquitto: a late ack after a retransmission).
    pub fn on_puback(&mut self, packet_id: u16, journal: &mut impl Journal) -> Option<Inflight> {
        self.remove_inflight(packet_id, Some(Phase::AwaitPuback), journal)
    }

    /// PUBREC received: the message is delivered, move to the release phase. Returns false
    /// for an unknown id (the PUBREL is sent anyway, with "not found" in v5).
    pub fn on_pubrec(&mut self, packet_id: u16, generation: u64, journal: &mut impl Journal) -> bool {
        match self.inflight.iter_mut().find(|e| e.packet_id == packet_id) {
            Some(e) if e.phase == Phase::AwaitPubrec => {
                e.phase = Phase::AwaitPubcomp;
                e.sent_on = generation;
                journal.released(e.seq, &e.delivery);
                true
            }
            // A repeated PUBREC: the PUBREL is simply sent again.
            Some(e) if e.phase == Phase::AwaitPubcomp => true,
            _ => false,
        }
    }

    /// PUBREC with an error reason (v5): the exchange ends without delivery.
    pub fn on_pubrec_failed(&mut self, packet_id: u16, journal: &mut impl Journal) -> Option<Inflight> {
        self.remove_inflight(packet_id, Some(Phase::AwaitPubrec), journal)
    }

    /// Drops an in-flight message without delivery (it could not be sent, e.g. larger than
    /// the client accepts), as if its exchange had completed.
    pub fn discard_inflight(&mut self, packet_id: u16, journal: &mut impl Journal) -> Option<Inflight> {
        self.remove_inflight(packet_id, None, journal)
    }

    /// PUBCOMP received.
    pub fn on_pubcomp(&mut self, packet_id: u16, journal: &mut impl Journal) -> Option<Inflight> {
        self.remove_inflight(packet_id, Some(Phase::AwaitPubcomp), journal)
    }

    /// Inbound QoS 2 PUBLISH with `packet_id`. Returns true when the message is new and must
    /// be routed; false for a retransmission (DUP) of one already routed, which only needs
    /// its PUBREC again. A non-DUP reuse of an id whose PUBREL never arrived starts over:
    /// clients only reuse an id after completing the exchange.
    pub fn begin_inbound_qos2(&mut self, packet_id: u16, dup: bool, journal: &mut impl Journal) -> bool {
        let inbound = &mut self.ids_mut().inbound_qos2;
        if inbound.contains(&packet_id) && dup {
            return false;
        }
        if inbound.insert(packet_id) {
            journal.inbound(packet_id, true);
        }
        true
    }

    /// Inbound PUBREL: forget the packet id. Returns whether it was known.
    pub fn release_inbound_qos2(&mut self, packet_id: u16, journal: &mut impl Journal) -> bool {
        let known = self.ids.as_mut().is_some_and(|ids| ids.inbound_qos2.remove(&packet_id));
        if known {
            journal.inbound(packet_id, false);
        }
        known
    }

    /// Inbound QoS 2 exchanges awaiting PUBREL (they count against Receive Maximum).
    pub fn inbound_qos2_len(&self) -> usize {
        self.ids().map_or(0, |ids| ids.inbound_qos2.len())
    }
}

/// A session: identity plus locked state.
#[derive(Debug)]
pub struct Session {
    /// Process-unique id.
    pub id: SessionId,
    /// Id of this incarnation in the durable store (stable across restarts; a clean start
    /// creates a new one, so stale writes of the old session never touch the new one).
    pub store_id: u64,
    /// MQTT client identifier.
    pub client_id: ByteString,
    online: AtomicBool,
    /// The ACL rules of the client's last connection, checked for every delivery (read by
    /// publishers on any thread, replaced on connect and on auth reload).
    acl: ArcSwap<ClientAcl>,
    /// Whether `acl` has rules. Without an ACL file (the common case) deliveries and
    /// publishes skip loading `acl`: those loads were about 5 % of broker CPU in the QoS 0
    /// 1 KiB fan-in flood (issue 6).
    acl_has_rules: AtomicBool,
    /// Username of the last connection (the ACL is resolved again from it on reload).
    username: Mutex<Option<ByteString>>,
    state: Mutex<SessionState>,
}

/// The permissions without an ACL file, one copy shared by every session (an allocation per
/// session otherwise, issue 6).
fn allow_all() -> Arc<ClientAcl> {
    static ALLOW_ALL: std::sync::LazyLock<Arc<ClientAcl>> =
        std::sync::LazyLock::new(|| Arc::new(ClientAcl::allow_all()));
    ALLOW_ALL.clone()
}

impl Session {
    /// A new, detached session.
    pub fn new(
        id: SessionId,
        store_id: u64,
        client_id: ByteString,
        expiry: Expiry,
        limits: QueueLimits,
    ) -> Self {
        Session {
            id,
            store_id,
            client_id,
            online: AtomicBool::new(false),
            acl: ArcSwap::new(allow_all()),
            acl_has_rules: AtomicBool::new(false),
            username: Mutex::new(None),
            state: Mutex::new(SessionState::new(expiry, limits)),
        }
    }

    /// The client's ACL rules.
    pub fn acl(&self) -> arc_swap::Guard<Arc<ClientAcl>> {
        self.acl.load()
    }

    /// The client's ACL rules when an ACL file applies; `None` means allow-all (only `$SYS`
    /// writes refused, which the broker checks for every client anyway).
    pub fn acl_rules(&self) -> Option<arc_swap::Guard<Arc<ClientAcl>>> {
        self.acl_has_rules.load(Ordering::Acquire).then(|| self.acl.load())
    }

    /// Replaces the client's ACL rules.
    pub fn set_acl(&self, acl: ClientAcl) {
        let has_rules = acl.has_rules();
        self.acl.store(if has_rules { Arc::new(acl) } else { allow_all() });
        self.acl_has_rules.store(has_rules, Ordering::Release);
    }

    /// Username of the last connection.
    pub fn username(&self) -> Option<ByteString> {
        self.username.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records the username of a new connection.
    pub fn set_username(&self, username: Option<ByteString>) {
        *self.username.lock().unwrap_or_else(|p| p.into_inner()) = username;
    }

    /// Locks the state. A panic while holding the lock is a bug, but one connection's bug
    /// must not take the broker down, so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Mirrors whether a connection is attached, readable without the lock (shared groups
    /// check it while matching).
    pub fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Release);
    }
}

impl Member for Arc<Session> {
    fn key(&self) -> u64 {
        self.id
    }

    fn may_read(&self, topic: &str) -> bool {
        self.acl_rules().is_none_or(|acl| acl.can_read(topic))
    }

    fn is_online(&self) -> bool {
        self.online.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl SessionState {
        fn enqueue_test(&mut self, d: Delivery) -> Enqueued {
            self.enqueue(d, false, &mut NoJournal)
        }
        fn on_puback_t(&mut self, id: u16) -> Option<Inflight> {
            self.on_puback(id, &mut NoJournal)
        }
        fn on_pubrec_t(&mut self, id: u16, generation: u64) -> bool {
            self.on_pubrec(id, generation, &mut NoJournal)
        }
        fn on_pubcomp_t(&mut self, id: u16) -> Option<Inflight> {
            self.on_pubcomp(id, &mut NoJournal)
        }
        fn begin_inbound_qos2_t(&mut self, id: u16, dup: bool) -> bool {
            self.begin_inbound_qos2(id, dup, &mut NoJournal)
        }
        fn release_inbound_qos2_t(&mut self, id: u16) -> bool {
            self.release_inbound_qos2(id, &mut NoJournal)
        }
    }

    const LIMITS: QueueLimits = QueueLimits { max_messages: 4, max_bytes: 0, max_inflight: 2 };

    #[test]
    fn acl_rules_are_skipped_only_without_an_acl_file() {
        let session = Arc::new(Session::new(1, 1, "c".into(), Expiry::Never, LIMITS));
        assert!(session.acl_rules().is_none());
        assert!(session.may_read("anything/at/all") && session.may_read("$SYS/broker/uptime"));
        let acl = crate::auth::Acl::parse("user alice\ntopic read a/#\n", "test").unwrap();
        session.set_acl(acl.client(Some("alice"), "c"));
        assert!(session.acl_rules().is_some());
        assert!(session.may_read("a/b"));
        assert!(!session.may_read("b"), "the file's rules apply to deliveries");
        // A reload that removes the ACL file goes back to allow-all.
        session.set_acl(ClientAcl::allow_all());
        assert!(session.acl_rules().is_none() && session.may_read("b"));
    }

    fn state() -> SessionState {
        SessionState::new(Expiry::Never, LIMITS)
    }

    fn delivery(topic: &str, qos: QoS) -> Delivery {
        Delivery::new(Arc::new(Message::new(topic.to_string(), "p", qos, false)), qos, false)
    }

    fn batch(st: &mut SessionState, generation: u64) -> Vec<Outgoing> {
        let mut out = Vec::new();
        st.next_batch(generation, true, 100, Instant::now, &mut out, &mut NoJournal);
        out
    }

    /// Records what a store would be told.
    #[derive(Default, Debug)]
    struct Recorder(Vec<String>);

    impl Journal for Recorder {
        fn queued(&mut self, seq: u64, d: &Delivery) {
            self.0.push(format!("queued {seq} {}", d.message.topic));
        }
        fn released(&mut self, seq: u64, _: &Delivery) {
            self.0.push(format!("released {seq}"));
        }
        fn removed(&mut self, seq: u64) {
            self.0.push(format!("removed {seq}"));
        }
        fn acked_below(&mut self, floor: u64) {
            self.0.push(format!("acked below {floor}"));
        }
        fn inbound(&mut self, packet_id: u16, present: bool) {
            self.0.push(format!("inbound {packet_id} {present}"));
        }
    }

    fn ids(out: &[Outgoing]) -> Vec<(Option<u16>, bool)> {
        out.iter()
            .map(|o| match o {
                Outgoing::Publish { packet_id, dup, .. } => (*packet_id, *dup),
                Outgoing::Release { packet_id } => (Some(*packet_id), true),
            })
            .collect()
    }

    #[test]
    fn packet_id_bookkeeping_is_allocated_only_when_used() {
        // Issue 6: an idle session, or one with QoS 0 traffic only, keeps no hash tables.
        assert!(std::mem::size_of::<SessionState>() <= 288, "{} bytes", std::mem::size_of::<SessionState>());
        let mut st = state();
        st.attach(1, Arc::new(ConnSignal::default()), 10);
        st.enqueue_test(delivery("a", QoS::AtMostOnce));
        assert_eq!(ids(&batch(&mut st, 1)), vec![(None, false)]);
        assert!(st.ids.is_none(), "QoS 0 needs no packet ids");
        st.enqueue_test(delivery("a", QoS::AtLeastOnce));
        assert_eq!(ids(&batch(&mut st, 1)), vec![(Some(2), false)]);
        assert!(st.ids.is_some());
        assert_eq!(st.on_puback_t(2).map(|e| e.packet_id), Some(2));
        assert!(st.on_puback_t(2).is_none(), "the id was released");
        assert!(st.begin_inbound_qos2_t(9, false));
        assert_eq!(st.inbound_qos2().collect::<Vec<_>>(), vec![9]);
        st.clear();
        assert!(st.ids.is_none() && st.inbound_qos2_len() == 0, "a clean start frees them");
    }

    #[test]
    fn qos0_is_not_queued_offline_but_qos1_is() {
        let mut st = state();
        assert_eq!(st.enqueue_test(delivery("a", QoS::AtMostOnce)), Enqueued::SkippedOffline);
        assert_eq!(st.enqueue_test(delivery("a", QoS::AtLeastOnce)), Enqueued::Queued);
        assert_eq!(st.queue_len(), 1);
    }

    #[test]
    fn window_limits_inflight_and_acks_reopen_it() {
        let mut st = state();
        st.attach(1, Arc::new(ConnSignal::default()), 10);
        for _ in 0..3 {
            st.enqueue_test(delivery("a", QoS::AtLeastOnce));
        }
        assert_eq!(
            ids(&batch(&mut st, 1)),
            vec![(Some(1), false), (Some(2), false)],
            "window is min(10, max_inflight 2)"
        );
        assert!(batch(&mut st, 1).is_empty());
        assert_eq!(st.on_puback_t(1).map(|e| e.packet_id), Some(1));
        assert_eq!(ids(&batch(&mut st, 1)), vec![(Some(3), false)]);
        assert!(st.on_puback_t(1).is_none(), "second ack for the same id is ignored");
    }

    #[test]
    fn client_receive_maximum_lowers_the_window() {
        let mut st = state();
        st.attach(1, Arc::new(ConnSignal::default()), 1);
        st.enqueue_test(delivery("a", QoS::AtLeastOnce));
        st.enqueue_test(delivery("a", QoS::ExactlyOnce));
        assert_eq!(batch(&mut st, 1).len(), 1);
        assert!(batch(&mut st, 1).is_empty());
    }

    #[test]
    fn qos0_waits_behind_a_full_window_to_keep_order() {
        let mut st = state();
        st.attach(1, Arc::new(ConnSignal::default()), 1);
        st.enqueue_test(delivery("a", QoS::AtLeastOnce));
        st.enqueue_test(delivery("b", QoS::AtLeastOnce));
        st.enqueue_test(delivery("c", QoS::AtMostOnce));
        assert_eq!(ids(&batch(&mut st, 1)), vec![(Some(1), false)]);
        st.on_puback_t(1);
        assert_eq!(ids(&batch(&mut st, 1)), vec![(Some(2), false), (None, false)]);
    }

    #[test]
    fn reconnect_resends_in_order_with_dup_and_pubrel() {
        let mut st = SessionState::new(Expiry::Never, QueueLimits { max_inflight: 10, ..LIMITS });
        st.attach(1, Arc::new(ConnSignal::default()), 10);
        st.enqueue_test(delivery("a", QoS::AtLeastOnce));
        st.enqueue_test(delivery("b", QoS::ExactlyOnce));
        st.enqueue_test(delivery("c", QoS::ExactlyOnce));
        assert_eq!(batch(&mut st, 1).len(), 3);
        assert!(st.on_pubrec_t(3, 1));
        assert!(st.detach(1));
        st.enqueue_test(delivery("d", QoS::AtLeastOnce));
        st.attach(2, Arc::new(ConnSignal::default()), 10);
        assert_eq!(
            ids(&batch(&mut st, 2)),
            vec![(Some(1), true), (Some(2), true), (Some(3), true), (Some(4), false)],
            "PUBLISH 1 and 2 with DUP, PUBREL 3, then the queued message"
        );
        assert!(batch_first(&mut st).is_none());
        assert!(st.on_pubcomp_t(3).is_some());
        assert!(st.on_pubrec_t(2, 2));
        assert!(st.on_pubcomp_t(2).is_some());
        assert!(st.on_puback_t(1).is_some() && st.on_puback_t(4).is_some());
        assert_eq!(st.inflight_len(), 0);
    }

    fn batch_first(st: &mut SessionState) -> Option<Outgoing> {
        batch(st, 2).into_iter().next()
    }

    #[test]
    fn resend_respects_a_smaller_window_on_the_new_connection() {
        let mut st = SessionState::new(Expiry::Never, QueueLimits { max_inflight: 10, ..LIMITS });
        st.attach(1, Arc::new(ConnSignal::default()), 10);
        for _ in 0..3 {
            st.enqueue_test(delivery("a", QoS::AtLeastOnce));
        }
        assert_eq!(batch(&mut st, 1).len(), 3);
        st.detach(1);
        st.attach(2, Arc::new(ConnSignal::default()), 2);
        assert_eq!(ids(&batch(&mut st, 2)), vec![(Some(1), true), (Some(2), true)]);
        st.on_puback_t(1);
        assert_eq!(ids(&batch(&mut st, 2)), vec![(Some(3), true)]);
    }

    #[test]
    fn stale_generation_gets_nothing() {
        let mut st = state();
        st.attach(2, Arc::new(ConnSignal::default()), 10);
        st.enqueue_test(delivery("a", QoS::AtLeastOnce));
        assert!(batch(&mut st, 1).is_empty());
        assert!(!st.detach(1));
        assert!(st.is_attached(2));
    }

    #[test]
    fn overflow_evicts_oldest_qos0_then_refuses() {
        let mut st = state();
        st.attach(1, Arc::new(ConnSignal::default()), 10);
        st.enqueue_test(delivery("q0-a", QoS::AtMostOnce));
        st.enqueue_test(delivery("q1-a", QoS::AtLeastOnce));
        st.enqueue_test(delivery("q0-b", QoS::AtMostOnce));
        st.enqueue_test(delivery("q1-b", QoS::AtLeastOnce));
        assert_eq!(
            st.enqueue_test(delivery("q1-c", QoS::AtLeastOnce)),
            Enqueued::Overflow { queued: true, evicted: 1 }
        );
        assert_eq!(
            st.enqueue_test(delivery("q1-d", QoS::AtLeastOnce)),
            Enqueued::Overflow { queued: true, evicted: 1 }
        );
        assert_eq!(
            st.enqueue_test(delivery("q1-e", QoS::AtLeastOnce)),
            Enqueued::Overflow { queued: false, evicted: 0 }
        );
        assert_eq!(
            st.enqueue_test(delivery("q0-c", QoS::AtMostOnce)),
            Enqueued::Overflow { queued: false, evicted: 0 }
        );
        let topics: Vec<String> = st.queue.iter().map(|q| q.delivery.message.topic.to_string()).collect();
        assert_eq!(st.queue.qos0.len(), 0, "the QoS 0 index follows the queue");
        assert_eq!(topics, ["q1-a", "q1-b", "q1-c", "q1-d"]);
    }

    #[test]
    fn own_limits_drop_oldest_and_survive_a_reload() {
        let mut st = state();
        st.set_own_limits(QueueLimits { max_messages: 2, ..LIMITS }, OverflowPolicy::DropOldest);
        // A reload of the global limits does not replace them.
        st.set_limits(LIMITS);
        let mut journal = Recorder::default();
        for topic in ["a", "b", "c"] {
            st.enqueue(delivery(topic, QoS::AtLeastOnce), false, &mut journal);
        }
        let topics: Vec<String> = st.queue.iter().map(|q| q.delivery.message.topic.to_string()).collect();
        assert_eq!(topics, ["b", "c"]);
        assert_eq!(journal.0, ["queued 0 a", "queued 1 b", "removed 0", "queued 2 c"]);
    }

    #[test]
    fn qos0_index_follows_sends_and_evictions() {
        let mut st =
            SessionState::new(Expiry::Never, QueueLimits { max_messages: 4, max_bytes: 0, max_inflight: 1 });
        st.attach(1, Arc::new(ConnSignal::default()), 1);
        for (t, q) in [
            ("a0", QoS::AtMostOnce),
            ("b1", QoS::AtLeastOnce),
            ("c0", QoS::AtMostOnce),
            ("d1", QoS::AtLeastOnce),
        ] {
            st.enqueue_test(delivery(t, q));
        }
        // Window 1: a0, then b1 fills the window, c0 needs none, d1 waits.
        let sent: Vec<String> = batch(&mut st, 1)
            .into_iter()
            .filter_map(|o| match o {
                Outgoing::Publish { delivery, .. } => Some(delivery.message.topic.to_string()),
                Outgoing::Release { .. } => None,
            })
            .collect();
        assert_eq!(sent, ["a0", "b1", "c0"]);
        assert_eq!(st.queue.qos0.len(), 0);
        for t in ["e1", "f1", "g1"] {
            st.enqueue_test(delivery(t, QoS::AtLeastOnce));
        }
        st.enqueue_test(delivery("h0", QoS::AtMostOnce));
        assert_eq!(st.queue.qos0.len(), 0, "h0 was refused: no room and nothing to evict");
        assert_eq!(st.queue_len(), 4);
        assert_eq!(st.queue.bytes, 4 * 3);
    }

    #[test]
    fn byte_limit_applies() {
        let mut st = SessionState::new(
            Expiry::Never,
            QueueLimits { max_messages: 100, max_bytes: 10, max_inflight: 1 },
        );
        st.attach(1, Arc::new(ConnSignal::default()), 10);
        // each message is topic (1) + payload (1) = 2 bytes
        for _ in 0..5 {
            assert!(matches!(
                st.enqueue_test(delivery("a", QoS::AtLeastOnce)),
                Enqueued::Queued | Enqueued::Wake
            ));
        }
        assert_eq!(
            st.enqueue_test(delivery("a", QoS::AtLeastOnce)),
            Enqueued::Overflow { queued: false, evicted: 0 }
        );
    }

    #[test]
    fn expired_messages_are_dropped_before_sending() {
        let mut st = state();
        st.attach(1, Arc::new(ConnSignal::default()), 10);
        let mut msg = Message::new("a", "p", QoS::AtLeastOnce, false);
        msg.expires_at = Some(Instant::now() - Duration::from_secs(1));
        st.enqueue_test(Delivery::new(Arc::new(msg), QoS::AtLeastOnce, false));
        st.enqueue_test(delivery("b", QoS::AtLeastOnce));
        let mut out = Vec::new();
        let stats = st.next_batch(1, true, 10, Instant::now, &mut out, &mut NoJournal);
        assert_eq!(stats.expired, 1);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn the_clock_is_read_only_for_messages_that_can_expire() {
        let mut st = state();
        st.attach(1, Arc::new(ConnSignal::default()), 10);
        st.enqueue_test(delivery("a", QoS::AtLeastOnce));
        st.enqueue_test(delivery("b", QoS::AtMostOnce));
        let reads = std::cell::Cell::new(0);
        let clock = || {
            reads.set(reads.get() + 1);
            Instant::now()
        };
        let mut out = Vec::new();
        st.next_batch(1, true, 10, clock, &mut out, &mut NoJournal);
        assert_eq!((out.len(), reads.get()), (2, 0), "no expiry, no clock");

        let mut msg = Message::new("c", "p", QoS::AtLeastOnce, false);
        msg.expires_at = Some(Instant::now() + Duration::from_secs(60));
        st.enqueue_test(Delivery::new(Arc::new(msg), QoS::AtLeastOnce, false));
        out.clear();
        let stats = st.next_batch(1, true, 10, clock, &mut out, &mut NoJournal);
        assert_eq!((out.len(), stats.expired, reads.get()), (1, 0, 1), "not yet expired: sent");
    }

    #[test]
    fn writer_is_woken_once_until_it_asks_again() {
        let mut st = state();
        st.attach(1, Arc::new(ConnSignal::default()), 10);
        assert!(batch(&mut st, 1).is_empty(), "marks the writer idle");
        assert_eq!(st.enqueue_test(delivery("a", QoS::AtLeastOnce)), Enqueued::Wake);
        assert_eq!(st.enqueue_test(delivery("a", QoS::AtLeastOnce)), Enqueued::Queued);
    }

    #[test]
    fn inbound_qos2_dedup() {
        let mut st = state();
        assert!(st.begin_inbound_qos2_t(7, false));
        assert!(!st.begin_inbound_qos2_t(7, true), "DUP retransmission is not routed again");
        assert!(st.begin_inbound_qos2_t(7, false), "non-DUP reuse is a new message");
        assert!(st.release_inbound_qos2_t(7));
        assert!(!st.release_inbound_qos2_t(7));
        assert!(st.begin_inbound_qos2_t(7, true), "after release a DUP is new again");
    }

    #[test]
    fn packet_ids_follow_sequence_numbers_and_wait_on_collision() {
        assert_eq!(packet_id_of(0), 1);
        assert_eq!(packet_id_of(65_534), 65_535);
        assert_eq!(packet_id_of(65_535), 1, "wraps, never 0");
        let mut st = SessionState::new(
            Expiry::Never,
            QueueLimits { max_messages: 10, max_bytes: 0, max_inflight: 10 },
        );
        st.attach(1, Arc::new(ConnSignal::default()), 10);
        st.next_seq = 65_534;
        for _ in 0..2 {
            st.enqueue_test(delivery("a", QoS::AtLeastOnce));
        }
        assert_eq!(ids(&batch(&mut st, 1)), vec![(Some(65_535), false), (Some(1), false)]);
        // A message whose derived id is still in flight waits for that id to be released.
        st.next_seq = 65_535 * 2;
        st.enqueue_test(delivery("b", QoS::AtLeastOnce));
        assert!(batch(&mut st, 1).is_empty(), "id 1 is still awaiting its PUBACK");
        assert!(st.on_puback_t(1).is_some());
        assert_eq!(ids(&batch(&mut st, 1)), vec![(Some(1), false)]);
    }

    #[test]
    fn journal_sees_every_stored_change_in_order() {
        let mut j = Recorder::default();
        let mut st = state();
        st.attach(1, Arc::new(ConnSignal::default()), 10);
        st.enqueue(delivery("q0", QoS::AtMostOnce), false, &mut j);
        st.enqueue(delivery("q1", QoS::AtLeastOnce), false, &mut j);
        st.enqueue(delivery("q2", QoS::ExactlyOnce), false, &mut j);
        let mut out = Vec::new();
        st.next_batch(1, true, 10, Instant::now, &mut out, &mut j);
        assert!(st.on_puback(packet_id_of(1), &mut j).is_some());
        assert!(st.on_pubrec(packet_id_of(2), 1, &mut j));
        assert!(st.on_pubcomp(packet_id_of(2), &mut j).is_some());
        assert!(st.begin_inbound_qos2(7, false, &mut j));
        assert!(!st.begin_inbound_qos2(7, true, &mut j));
        assert!(st.release_inbound_qos2(7, &mut j));
        assert_eq!(
            j.0,
            [
                "queued 1 q1",
                "queued 2 q2",
                "acked below 2",
                "released 2",
                "acked below 3",
                "inbound 7 true",
                "inbound 7 false"
            ],
            "QoS 0 is never journaled"
        );
    }

    #[test]
    fn in_order_acks_move_the_floor_and_out_of_order_ones_delete() {
        let mut j = Recorder::default();
        let mut st = SessionState::new(Expiry::Never, QueueLimits { max_inflight: 10, ..LIMITS });
        st.attach(1, Arc::new(ConnSignal::default()), 10);
        for topic in ["a", "b", "c", "d"] {
            st.enqueue(delivery(topic, QoS::AtLeastOnce), false, &mut j);
        }
        let mut out = Vec::new();
        st.next_batch(1, true, 2, Instant::now, &mut out, &mut j);
        j.0.clear();
        // c and d are still queued (batch of 2): acknowledging b (not the oldest) deletes it.
        assert!(st.on_puback(packet_id_of(1), &mut j).is_some());
        assert!(st.on_puback(packet_id_of(0), &mut j).is_some());
        assert_eq!(j.0, ["removed 1", "acked below 2"], "the floor never passes a held message");
        st.next_batch(1, true, 10, Instant::now, &mut out, &mut j);
        assert!(st.on_puback(packet_id_of(2), &mut j).is_some());
        assert!(st.on_puback(packet_id_of(3), &mut j).is_some());
        assert_eq!(j.0[2..], ["acked below 3", "acked below 4"]);
    }

    #[test]
    fn floor_stays_below_a_restored_pubrel_stage_entry() {
        let mut j = Recorder::default();
        let mut st = SessionState::new(Expiry::Never, QueueLimits { max_inflight: 10, ..LIMITS });
        st.restore(Restored {
            deliveries: vec![
                (3, delivery("a", QoS::AtLeastOnce), None),
                (5, delivery("b", QoS::ExactlyOnce), Some(Phase::AwaitPubcomp)),
            ],
            inbound: Vec::new(),
            floor: 3,
        });
        st.attach(1, Arc::new(ConnSignal::default()), 10);
        batch(&mut st, 1);
        let seqs: Vec<u64> = st.inflight().map(|e| e.seq).collect();
        assert_eq!(seqs, [3, 5], "in flight in sequence order");
        assert!(st.on_puback(packet_id_of(3), &mut j).is_some());
        assert!(st.on_pubcomp(packet_id_of(5), &mut j).is_some());
        assert_eq!(j.0, ["acked below 5", "acked below 6"]);
    }

    #[test]
    fn restore_keeps_new_sequence_numbers_above_the_floor() {
        let mut st = state();
        st.restore(Restored { deliveries: Vec::new(), inbound: Vec::new(), floor: 500 });
        let mut j = Recorder::default();
        st.enqueue(delivery("x", QoS::AtLeastOnce), false, &mut j);
        assert_eq!(j.0, ["queued 500 x"]);
    }

    #[test]
    fn restore_resends_queued_with_dup_and_pubrel_for_released() {
        let mut st = SessionState::new(
            Expiry::Never,
            QueueLimits { max_messages: 10, max_bytes: 0, max_inflight: 10 },
        );
        st.restore(Restored {
            deliveries: vec![
                (5, delivery("b", QoS::AtLeastOnce), None),
                (3, delivery("a", QoS::ExactlyOnce), Some(Phase::AwaitPubcomp)),
                (9, delivery("c", QoS::ExactlyOnce), None),
            ],
            inbound: vec![42],
            floor: 0,
        });
        assert_eq!(st.queue_len(), 2);
        assert_eq!(st.inflight_len(), 1);
        st.attach(1, Arc::new(ConnSignal::default()), 10);
        let out = batch(&mut st, 1);
        assert_eq!(
            ids(&out),
            vec![(Some(packet_id_of(3)), true), (Some(packet_id_of(5)), true), (Some(packet_id_of(9)), true)]
        );
        assert!(matches!(out[0], Outgoing::Release { .. }), "PUBREL for the released QoS 2 message");
        st.enqueue_test(delivery("d", QoS::AtLeastOnce));
        assert_eq!(ids(&batch(&mut st, 1)), vec![(Some(packet_id_of(10)), false)], "numbering continues");
        assert!(!st.begin_inbound_qos2_t(42, true), "restored inbound id still deduplicates");
    }

    #[test]
    fn conflation_keeps_the_newest_per_topic_while_offline_only() {
        let mut j = Recorder::default();
        let mut st = SessionState::new(
            Expiry::Never,
            QueueLimits { max_messages: 100, max_bytes: 0, max_inflight: 10 },
        );
        for i in 0..3 {
            for topic in ["t/1", "t/2"] {
                let d = Delivery::new(
                    Arc::new(Message::new(topic.to_string(), format!("{i}"), QoS::AtLeastOnce, false)),
                    QoS::AtLeastOnce,
                    false,
                );
                st.enqueue(d, true, &mut j);
            }
        }
        let kept: Vec<String> = st
            .queue
            .iter()
            .map(|q| {
                format!(
                    "{}={}",
                    q.delivery.message.topic,
                    String::from_utf8_lossy(&q.delivery.message.payload)
                )
            })
            .collect();
        assert_eq!(kept, ["t/1=2", "t/2=2"]);
        assert_eq!(
            j.0.iter().filter(|e| e.starts_with("removed")).count(),
            4,
            "replaced entries leave the store"
        );
        st.attach(1, Arc::new(ConnSignal::default()), 10);
        st.enqueue(delivery("t/1", QoS::AtLeastOnce), true, &mut j);
        assert_eq!(st.queue_len(), 3, "online delivery is never conflated");
    }

    #[test]
    fn expiry_conversions() {
        assert_eq!(Expiry::from_interval(0), Expiry::OnDisconnect);
        assert_eq!(Expiry::from_interval(u32::MAX), Expiry::Never);
        assert_eq!(
            Expiry::from_interval(60).capped(Some(Duration::from_secs(10))),
            Expiry::After(Duration::from_secs(10))
        );
        assert_eq!(Expiry::Never.capped(Some(Duration::from_secs(5))).as_interval(), 5);
        assert_eq!(Expiry::OnDisconnect.capped(Some(Duration::from_secs(5))), Expiry::OnDisconnect);
    }
}
