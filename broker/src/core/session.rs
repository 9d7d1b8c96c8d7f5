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

use rustc_hash::{FxHashMap, FxHashSet};
use tokio::sync::Notify;

use super::trie::Member;
use super::types::{ByteString, Delivery, Message, QoS, SessionId, SubscriptionOptions};

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
}

/// Per-connection wake-up and close request, shared between the session (any thread) and
/// the connection's writer (its worker thread).
#[derive(Debug, Default)]
pub struct ConnSignal {
    notify: Notify,
    kick: AtomicU8,
}

impl ConnSignal {
    /// Wakes the writer (a permit is stored if it is not waiting yet).
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Waits for [`ConnSignal::wake`] or [`ConnSignal::kick`].
    pub async fn wait(&self) {
        self.notify.notified().await;
    }

    /// Asks the connection to close. The first reason wins.
    pub fn kick(&self, reason: Kick) {
        let _ = self.kick.compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire);
        self.notify.notify_one();
    }

    /// The pending close request, if any.
    pub fn kicked(&self) -> Option<Kick> {
        match self.kick.load(Ordering::Acquire) {
            1 => Some(Kick::TakenOver),
            2 => Some(Kick::ServerShuttingDown),
            3 => Some(Kick::Detached),
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

/// Link to the connection currently serving the session.
#[derive(Debug)]
pub struct Attachment {
    /// Connection generation; stale callbacks and timers compare against it.
    pub generation: u64,
    /// Wakes the connection's writer.
    pub signal: Arc<ConnSignal>,
    /// Effective outbound window: min(client Receive Maximum, `max_inflight`).
    pub window: u16,
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

/// An outbound QoS 1/2 message that has a packet id.
#[derive(Debug, Clone)]
pub struct Inflight {
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
    /// The will of the current (or last) connection.
    pub will: Option<Will>,
    limits: QueueLimits,
    queue: VecDeque<Delivery>,
    queued_bytes: usize,
    inflight: VecDeque<Inflight>,
    outbound_ids: FxHashSet<u16>,
    /// Inflight entries sent on the current connection (they use the client's window).
    sent_count: usize,
    next_packet_id: u16,
    /// Inbound QoS 2 packet ids received (PUBREC sent) and not yet released.
    inbound_qos2: FxHashSet<u16>,
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
            limits,
            queue: VecDeque::new(),
            queued_bytes: 0,
            inflight: VecDeque::new(),
            outbound_ids: FxHashSet::default(),
            sent_count: 0,
            next_packet_id: 0,
            inbound_qos2: FxHashSet::default(),
        }
    }

    /// Messages waiting to be sent.
    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// Outbound QoS 1/2 messages awaiting acknowledgement.
    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    /// In-flight entries, oldest first.
    pub fn inflight(&self) -> impl Iterator<Item = &Inflight> {
        self.inflight.iter()
    }

    /// Whether a connection with this generation is the one attached.
    pub fn is_attached(&self, generation: u64) -> bool {
        self.attachment.as_ref().is_some_and(|a| a.generation == generation)
    }

    /// Attaches a new connection. Everything in flight will be sent again on it.
    pub fn attach(&mut self, generation: u64, signal: Arc<ConnSignal>, client_receive_max: u16) {
        self.attachment = Some(Attachment {
            generation,
            signal,
            window: client_receive_max.min(self.limits.max_inflight).max(1),
            writer_idle: false,
        });
        self.last_generation = generation;
        self.sent_count = 0;
    }

    /// Detaches the connection if it is still the attached one, and stops its writer.
    pub fn detach(&mut self, generation: u64) -> bool {
        if self.is_attached(generation) {
            if let Some(a) = self.attachment.take() {
                a.signal.kick(Kick::Detached);
            }
            true
        } else {
            false
        }
    }

    /// Discards queued and in-flight state and subscriptions (clean start or expiry).
    pub fn clear(&mut self) {
        self.queue.clear();
        self.queued_bytes = 0;
        self.inflight.clear();
        self.outbound_ids.clear();
        self.sent_count = 0;
        self.inbound_qos2.clear();
        self.subscriptions.clear();
    }

    /// Offers a delivery. Overflow policy when the queue is full (by count or bytes): evict
    /// the oldest queued QoS 0 message to make room; when none is left, drop the offered
    /// message. Acknowledged QoS 1/2 messages are thus never evicted for newer traffic.
    pub fn enqueue(&mut self, delivery: Delivery) -> Enqueued {
        if self.ended {
            return Enqueued::SessionEnded;
        }
        if self.attachment.is_none() && delivery.qos == QoS::AtMostOnce {
            return Enqueued::SkippedOffline;
        }
        let size = delivery.message.size();
        let mut evicted = 0;
        while self.is_full(size) {
            let Some(old) = self
                .queue
                .iter()
                .position(|d| d.qos == QoS::AtMostOnce)
                .and_then(|pos| self.queue.remove(pos))
            else {
                return Enqueued::Overflow { queued: false, evicted };
            };
            self.queued_bytes -= old.message.size();
            evicted += 1;
        }
        self.queued_bytes += size;
        self.queue.push_back(delivery);
        if evicted > 0 {
            self.wake();
            return Enqueued::Overflow { queued: true, evicted };
        }
        if self.wake() { Enqueued::Wake } else { Enqueued::Queued }
    }

    fn is_full(&self, incoming: usize) -> bool {
        self.queue.len() >= self.limits.max_messages
            || (self.limits.max_bytes > 0
                && self.queued_bytes + incoming > self.limits.max_bytes
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

    fn allocate_packet_id(&mut self) -> u16 {
        loop {
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if self.outbound_ids.insert(self.next_packet_id) {
                return self.next_packet_id;
            }
        }
    }

    /// Moves work for the connection `generation` into `out`: first retransmissions of what
    /// was in flight on an earlier connection (in the original order, MQTT 5.0 §4.6), then
    /// queued messages, while the client's window allows. `qos0_ok` is false while the socket
    /// is under write back-pressure. Marks the writer idle when nothing is left to send.
    pub fn next_batch(
        &mut self,
        generation: u64,
        qos0_ok: bool,
        max: usize,
        now: Instant,
        out: &mut Vec<Outgoing>,
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
            if head.message.is_expired(now) {
                if let Some(d) = self.queue.pop_front() {
                    self.queued_bytes -= d.message.size();
                }
                stats.expired += 1;
                continue;
            }
            match head.qos {
                QoS::AtMostOnce if !qos0_ok => break,
                QoS::AtMostOnce => {}
                _ if self.sent_count >= window || self.inflight.len() >= usize::from(u16::MAX) - 1 => break,
                _ => {}
            }
            let Some(delivery) = self.queue.pop_front() else { break };
            self.queued_bytes -= delivery.message.size();
            let packet_id = match delivery.qos {
                QoS::AtMostOnce => None,
                qos => {
                    let packet_id = self.allocate_packet_id();
                    self.inflight.push_back(Inflight {
                        packet_id,
                        delivery: delivery.clone(),
                        phase: if qos == QoS::AtLeastOnce { Phase::AwaitPuback } else { Phase::AwaitPubrec },
                        sent_on: generation,
                    });
                    self.sent_count += 1;
                    Some(packet_id)
                }
            };
            out.push(Outgoing::Publish { packet_id, delivery, dup: false });
        }
        if out.is_empty()
            && let Some(a) = &mut self.attachment
        {
            a.writer_idle = true;
        }
        stats
    }

    fn remove_inflight(&mut self, packet_id: u16, expect: Phase) -> Option<Inflight> {
        let pos = self.inflight.iter().position(|e| e.packet_id == packet_id && e.phase == expect)?;
        let entry = self.inflight.remove(pos)?;
        self.outbound_ids.remove(&packet_id);
        if self.attachment.as_ref().is_some_and(|a| a.generation == entry.sent_on) {
            self.sent_count -= 1;
        }
        // Window space opened: let the writer continue.
        self.wake();
        Some(entry)
    }

    /// PUBACK received. Returns the acknowledged delivery, or `None` for an unknown id
    /// (ignored, like Mosquitto: a late ack after a retransmission).
    pub fn on_puback(&mut self, packet_id: u16) -> Option<Inflight> {
        self.remove_inflight(packet_id, Phase::AwaitPuback)
    }

    /// PUBREC received: the message is delivered, move to the release phase. Returns false
    /// for an unknown id (the PUBREL is sent anyway, with "not found" in v5).
    pub fn on_pubrec(&mut self, packet_id: u16, generation: u64) -> bool {
        match self.inflight.iter_mut().find(|e| e.packet_id == packet_id) {
            Some(e) if e.phase == Phase::AwaitPubrec => {
                e.phase = Phase::AwaitPubcomp;
                e.sent_on = generation;
                true
            }
            // A repeated PUBREC: the PUBREL is simply sent again.
            Some(e) if e.phase == Phase::AwaitPubcomp => true,
            _ => false,
        }
    }

    /// PUBREC with an error reason (v5): the exchange ends without delivery.
    pub fn on_pubrec_failed(&mut self, packet_id: u16) -> Option<Inflight> {
        self.remove_inflight(packet_id, Phase::AwaitPubrec)
    }

    /// Drops an in-flight message without delivery (it could not be sent, e.g. larger than
    /// the client accepts), as if its exchange had completed.
    pub fn discard_inflight(&mut self, packet_id: u16) -> Option<Inflight> {
        let phase = self.inflight.iter().find(|e| e.packet_id == packet_id)?.phase;
        self.remove_inflight(packet_id, phase)
    }

    /// PUBCOMP received.
    pub fn on_pubcomp(&mut self, packet_id: u16) -> Option<Inflight> {
        self.remove_inflight(packet_id, Phase::AwaitPubcomp)
    }

    /// Inbound QoS 2 PUBLISH with `packet_id`. Returns true when the message is new and must
    /// be routed; false for a retransmission (DUP) of one already routed, which only needs
    /// its PUBREC again. A non-DUP reuse of an id whose PUBREL never arrived starts over:
    /// clients only reuse an id after completing the exchange.
    pub fn begin_inbound_qos2(&mut self, packet_id: u16, dup: bool) -> bool {
        !(self.inbound_qos2.contains(&packet_id) && dup) && {
            self.inbound_qos2.insert(packet_id);
            true
        }
    }

    /// Inbound PUBREL: forget the packet id. Returns whether it was known.
    pub fn release_inbound_qos2(&mut self, packet_id: u16) -> bool {
        self.inbound_qos2.remove(&packet_id)
    }

    /// Inbound QoS 2 exchanges awaiting PUBREL (they count against Receive Maximum).
    pub fn inbound_qos2_len(&self) -> usize {
        self.inbound_qos2.len()
    }
}

/// A session: identity plus locked state.
#[derive(Debug)]
pub struct Session {
    /// Process-unique id.
    pub id: SessionId,
    /// MQTT client identifier.
    pub client_id: ByteString,
    online: AtomicBool,
    state: Mutex<SessionState>,
}

impl Session {
    /// A new, detached session.
    pub fn new(id: SessionId, client_id: ByteString, expiry: Expiry, limits: QueueLimits) -> Self {
        Session {
            id,
            client_id,
            online: AtomicBool::new(false),
            state: Mutex::new(SessionState::new(expiry, limits)),
        }
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

    fn is_online(&self) -> bool {
        self.online.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: QueueLimits = QueueLimits { max_messages: 4, max_bytes: 0, max_inflight: 2 };

    fn state() -> SessionState {
        SessionState::new(Expiry::Never, LIMITS)
    }

    fn delivery(topic: &str, qos: QoS) -> Delivery {
        Delivery::new(Arc::new(Message::new(topic.to_string(), "p", qos, false)), qos, false)
    }

    fn batch(st: &mut SessionState, generation: u64) -> Vec<Outgoing> {
        let mut out = Vec::new();
        st.next_batch(generation, true, 100, Instant::now(), &mut out);
        out
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
    fn qos0_is_not_queued_offline_but_qos1_is() {
        let mut st = state();
        assert_eq!(st.enqueue(delivery("a", QoS::AtMostOnce)), Enqueued::SkippedOffline);
        assert_eq!(st.enqueue(delivery("a", QoS::AtLeastOnce)), Enqueued::Queued);
        assert_eq!(st.queue_len(), 1);
    }

    #[test]
    fn window_limits_inflight_and_acks_reopen_it() {
        let mut st = state();
        st.attach(1, Arc::new(ConnSignal::default()), 10);
        for _ in 0..3 {
            st.enqueue(delivery("a", QoS::AtLeastOnce));
        }
        assert_eq!(
            ids(&batch(&mut st, 1)),
            vec![(Some(1), false), (Some(2), false)],
            "window is min(10, max_inflight 2)"
        );
        assert!(batch(&mut st, 1).is_empty());
        assert_eq!(st.on_puback(1).map(|e| e.packet_id), Some(1));
        assert_eq!(ids(&batch(&mut st, 1)), vec![(Some(3), false)]);
        assert!(st.on_puback(1).is_none(), "second ack for the same id is ignored");
    }

    #[test]
    fn client_receive_maximum_lowers_the_window() {
        let mut st = state();
        st.attach(1, Arc::new(ConnSignal::default()), 1);
        st.enqueue(delivery("a", QoS::AtLeastOnce));
        st.enqueue(delivery("a", QoS::ExactlyOnce));
        assert_eq!(batch(&mut st, 1).len(), 1);
        assert!(batch(&mut st, 1).is_empty());
    }

    #[test]
    fn qos0_waits_behind_a_full_window_to_keep_order() {
        let mut st = state();
        st.attach(1, Arc::new(ConnSignal::default()), 1);
        st.enqueue(delivery("a", QoS::AtLeastOnce));
        st.enqueue(delivery("b", QoS::AtLeastOnce));
        st.enqueue(delivery("c", QoS::AtMostOnce));
        assert_eq!(ids(&batch(&mut st, 1)), vec![(Some(1), false)]);
        st.on_puback(1);
        assert_eq!(ids(&batch(&mut st, 1)), vec![(Some(2), false), (None, false)]);
    }

    #[test]
    fn reconnect_resends_in_order_with_dup_and_pubrel() {
        let mut st = SessionState::new(Expiry::Never, QueueLimits { max_inflight: 10, ..LIMITS });
        st.attach(1, Arc::new(ConnSignal::default()), 10);
        st.enqueue(delivery("a", QoS::AtLeastOnce));
        st.enqueue(delivery("b", QoS::ExactlyOnce));
        st.enqueue(delivery("c", QoS::ExactlyOnce));
        assert_eq!(batch(&mut st, 1).len(), 3);
        assert!(st.on_pubrec(3, 1));
        assert!(st.detach(1));
        st.enqueue(delivery("d", QoS::AtLeastOnce));
        st.attach(2, Arc::new(ConnSignal::default()), 10);
        assert_eq!(
            ids(&batch(&mut st, 2)),
            vec![(Some(1), true), (Some(2), true), (Some(3), true), (Some(4), false)],
            "PUBLISH 1 and 2 with DUP, PUBREL 3, then the queued message"
        );
        assert!(batch_first(&mut st).is_none());
        assert!(st.on_pubcomp(3).is_some());
        assert!(st.on_pubrec(2, 2));
        assert!(st.on_pubcomp(2).is_some());
        assert!(st.on_puback(1).is_some() && st.on_puback(4).is_some());
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
            st.enqueue(delivery("a", QoS::AtLeastOnce));
        }
        assert_eq!(batch(&mut st, 1).len(), 3);
        st.detach(1);
        st.attach(2, Arc::new(ConnSignal::default()), 2);
        assert_eq!(ids(&batch(&mut st, 2)), vec![(Some(1), true), (Some(2), true)]);
        st.on_puback(1);
        assert_eq!(ids(&batch(&mut st, 2)), vec![(Some(3), true)]);
    }

    #[test]
    fn stale_generation_gets_nothing() {
        let mut st = state();
        st.attach(2, Arc::new(ConnSignal::default()), 10);
        st.enqueue(delivery("a", QoS::AtLeastOnce));
        assert!(batch(&mut st, 1).is_empty());
        assert!(!st.detach(1));
        assert!(st.is_attached(2));
    }

    #[test]
    fn overflow_evicts_oldest_qos0_then_refuses() {
        let mut st = state();
        st.attach(1, Arc::new(ConnSignal::default()), 10);
        st.enqueue(delivery("q0-a", QoS::AtMostOnce));
        st.enqueue(delivery("q1-a", QoS::AtLeastOnce));
        st.enqueue(delivery("q0-b", QoS::AtMostOnce));
        st.enqueue(delivery("q1-b", QoS::AtLeastOnce));
        assert_eq!(
            st.enqueue(delivery("q1-c", QoS::AtLeastOnce)),
            Enqueued::Overflow { queued: true, evicted: 1 }
        );
        assert_eq!(
            st.enqueue(delivery("q1-d", QoS::AtLeastOnce)),
            Enqueued::Overflow { queued: true, evicted: 1 }
        );
        assert_eq!(
            st.enqueue(delivery("q1-e", QoS::AtLeastOnce)),
            Enqueued::Overflow { queued: false, evicted: 0 }
        );
        assert_eq!(
            st.enqueue(delivery("q0-c", QoS::AtMostOnce)),
            Enqueued::Overflow { queued: false, evicted: 0 }
        );
        let topics: Vec<String> = st.queue.iter().map(|d| d.message.topic.to_string()).collect();
        assert_eq!(topics, ["q1-a", "q1-b", "q1-c", "q1-d"]);
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
            assert!(matches!(st.enqueue(delivery("a", QoS::AtLeastOnce)), Enqueued::Queued | Enqueued::Wake));
        }
        assert_eq!(
            st.enqueue(delivery("a", QoS::AtLeastOnce)),
            Enqueued::Overflow { queued: false, evicted: 0 }
        );
    }

    #[test]
    fn expired_messages_are_dropped_before_sending() {
        let mut st = state();
        st.attach(1, Arc::new(ConnSignal::default()), 10);
        let mut msg = Message::new("a", "p", QoS::AtLeastOnce, false);
        msg.expires_at = Some(Instant::now() - Duration::from_secs(1));
        st.enqueue(Delivery::new(Arc::new(msg), QoS::AtLeastOnce, false));
        st.enqueue(delivery("b", QoS::AtLeastOnce));
        let mut out = Vec::new();
        let stats = st.next_batch(1, true, 10, Instant::now(), &mut out);
        assert_eq!(stats.expired, 1);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn writer_is_woken_once_until_it_asks_again() {
        let mut st = state();
        st.attach(1, Arc::new(ConnSignal::default()), 10);
        assert!(batch(&mut st, 1).is_empty(), "marks the writer idle");
        assert_eq!(st.enqueue(delivery("a", QoS::AtLeastOnce)), Enqueued::Wake);
        assert_eq!(st.enqueue(delivery("a", QoS::AtLeastOnce)), Enqueued::Queued);
    }

    #[test]
    fn inbound_qos2_dedup() {
        let mut st = state();
        assert!(st.begin_inbound_qos2(7, false));
        assert!(!st.begin_inbound_qos2(7, true), "DUP retransmission is not routed again");
        assert!(st.begin_inbound_qos2(7, false), "non-DUP reuse is a new message");
        assert!(st.release_inbound_qos2(7));
        assert!(!st.release_inbound_qos2(7));
        assert!(st.begin_inbound_qos2(7, true), "after release a DUP is new again");
    }

    #[test]
    fn packet_ids_skip_those_in_use_and_wrap() {
        let mut st = SessionState::new(
            Expiry::Never,
            QueueLimits { max_messages: 10, max_bytes: 0, max_inflight: 10 },
        );
        st.attach(1, Arc::new(ConnSignal::default()), 10);
        st.next_packet_id = u16::MAX - 1;
        for _ in 0..3 {
            st.enqueue(delivery("a", QoS::AtLeastOnce));
        }
        assert_eq!(
            ids(&batch(&mut st, 1)),
            vec![(Some(u16::MAX), false), (Some(1), false), (Some(2), false)]
        );
        st.next_packet_id = 0;
        st.enqueue(delivery("a", QoS::AtLeastOnce));
        assert_eq!(ids(&batch(&mut st, 1)), vec![(Some(3), false)], "1 and 2 are still in flight");
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
