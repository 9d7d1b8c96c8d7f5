//! Front ends: MQTT 3.1/3.1.1 ([`v3`]) and 5.0 ([`v5`]) connections, translating packets into
//! core calls and core deliveries into packets.
//!
//! A connection is one task ([`connection`]): the [`preamble`] picks the protocol, the
//! protocol module runs the CONNECT handshake, then its read side handles the client's
//! packets while the [`writer`] moves the session's deliveries onto the socket. ntex-mqtt
//! provides the codecs only. Why not its server and sink: in 8.2.1 a v5 QoS 2 packet id is
//! never released after PUBREL (a reused id gets PUBACK 0x91 and the message is lost),
//! acknowledgements out of order close the connection, a PUBREL cannot be resent after a
//! reconnect, a second CONNECT is ignored, and its per-connection pipeline was most of an
//! idle connection's memory. Sessions need their own in-flight record anyway (it outlives
//! the connection), so the core owns it.

pub mod connection;
pub mod preamble;
pub mod socket;
pub mod v3;
pub mod v5;
pub mod writer;

use std::cell::Cell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::core::admin::ConnectionInfo;
use crate::core::broker::{Broker, ConnectError, Credentials, DisconnectKind, PublishError, Published};
use crate::core::session::{ConnSignal, Kick, Session};
use crate::core::types::{ByteString, Bytes, Message, Properties, ProtocolVersion, QoS, expiry_deadline};
use crate::store::Durable;

/// Settings shared by all connections of a listener.
#[derive(Debug, Clone)]
pub struct ListenerContext {
    /// The broker.
    pub broker: Broker,
    /// Listener name for logs (shared with every connection's [`ConnectionInfo`]).
    pub name: Arc<str>,
    /// The listener's `max_connections`, shared by its workers (`None`: unlimited).
    pub slots: Option<Arc<ConnectionSlots>>,
    /// `tls.use_identity_as_username`: the client certificate's CN is the username.
    pub identity_as_username: bool,
}

/// Counts a listener's connections against its `max_connections`.
#[derive(Debug)]
pub struct ConnectionSlots {
    max: u32,
    used: std::sync::atomic::AtomicU32,
}

impl ConnectionSlots {
    /// Slots for at most `max` concurrent connections.
    pub fn new(max: u32) -> Self {
        ConnectionSlots { max, used: std::sync::atomic::AtomicU32::new(0) }
    }

    /// Takes a slot for a connection, or `None` when all are in use.
    pub fn acquire(self: &Arc<Self>) -> Option<SlotGuard> {
        use std::sync::atomic::Ordering;
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1))
            .ok()
            .map(|_| SlotGuard(self.clone()))
    }

    /// Connections holding a slot.
    pub fn used(&self) -> u32 {
        self.used.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// A connection's slot, returned when the connection ends.
#[derive(Debug)]
pub struct SlotGuard(Arc<ConnectionSlots>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl ListenerContext {
    /// Who the client claims to be: with `use_identity_as_username` the verified client
    /// certificate's subject CN (no password needed), else CONNECT's User Name and
    /// Password. Returns the username to use and the credentials to check.
    pub(crate) fn credentials(
        &self,
        io: &impl socket::Socket,
        username: Option<&ByteString>,
        password: Option<&Bytes>,
    ) -> Result<(Option<ByteString>, Credentials), &'static str> {
        if self.identity_as_username {
            let cn = io
                .peer_common_name()
                .ok_or("use_identity_as_username: the client certificate has no subject CN")?;
            return Ok((Some(ByteString::from(cn)), Credentials::Certificate));
        }
        Ok(match username {
            Some(user) => (
                Some(user.clone()),
                Credentials::Password {
                    username: user.clone(),
                    password: password.cloned().unwrap_or_default(),
                },
            ),
            None => (None, Credentials::Anonymous),
        })
    }

    /// A slot for a new connection: `Ok(None)` on an unlimited listener, `Err` when full.
    pub(crate) fn slot(&self) -> Result<Option<SlotGuard>, ConnectError> {
        match &self.slots {
            None => Ok(None),
            Some(slots) => slots.acquire().map(Some).ok_or(ConnectError::QuotaExceeded),
        }
    }
}

/// Per-connection state, owned by the connection's read side. Dropping it is the end of the
/// connection: the session is detached and the will handled.
pub struct ConnState {
    pub(crate) broker: Broker,
    pub(crate) session: Arc<Session>,
    pub(crate) generation: u64,
    pub(crate) signal: Arc<ConnSignal>,
    /// Peer, protocol, listener and start, shared with the admin API (one copy per
    /// connection: issue 6 counts every idle connection's bytes).
    pub(crate) info: Arc<ConnectionInfo>,
    /// The listener slot this connection holds (released on drop).
    pub(crate) _slot: Option<SlotGuard>,
    /// How the connection ends, recorded on the way out. Boxed (set once, at the end):
    /// inline it took 40 bytes of every connection's future.
    ending: Cell<Option<Box<Ending>>>,
}

/// What a connection's end is logged and handled with.
#[derive(Debug, Default)]
struct Ending {
    /// Set when the client sent DISCONNECT.
    disconnect: Option<DisconnectKind>,
    /// Why the connection ended, when it was not a client DISCONNECT.
    close_reason: Option<String>,
}

impl std::fmt::Debug for ConnState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnState").field("client_id", self.client_id()).finish_non_exhaustive()
    }
}

impl Drop for ConnState {
    fn drop(&mut self) {
        let ending = self.ending.take().unwrap_or_default();
        let how = ending.disconnect.unwrap_or(DisconnectKind::Abnormal);
        let reason = match (how, self.signal.kicked()) {
            (DisconnectKind::Normal { publish_will: false, .. }, _) => "client sent DISCONNECT".to_string(),
            (DisconnectKind::Normal { publish_will: true, .. }, _) => {
                "client sent DISCONNECT with will (0x04)".to_string()
            }
            (DisconnectKind::Abnormal, Some(Kick::TakenOver)) => {
                "session taken over by another connection".to_string()
            }
            (DisconnectKind::Abnormal, Some(Kick::ServerShuttingDown)) => "broker shutting down".to_string(),
            (DisconnectKind::Abnormal, Some(Kick::AdminAction)) => {
                "disconnected through the admin API".to_string()
            }
            (DisconnectKind::Abnormal, _) => {
                ending.close_reason.unwrap_or_else(|| "connection closed".to_string())
            }
        };
        let info = &self.info;
        tracing::info!(
            client_id = %self.client_id(),
            peer = %display_peer(info.peer),
            listener = %info.listener,
            protocol = info.protocol.as_str(),
            duration_s = info.connected_at.elapsed().map_or(0, |d| d.as_secs()),
            "client disconnected: {reason}"
        );
        self.broker.disconnect(&self.session, self.generation, how);
    }
}

/// Acknowledgements held back until what they confirm is durable, in the order the client's
/// packets arrived (MQTT 5.0 §4.6 requires PUBACKs in order). The connection's writer sends
/// them as the store's watermark passes them, many per socket write. Shared by the inbound
/// middleware and the writer of one connection (same worker thread).
pub(crate) struct PendingAcks<A> {
    /// Boxed on first use: without persistence nothing is ever held, and inline the empty
    /// queue took 32 bytes of every connection's task.
    queue: Cell<Option<Box<AckQueue<A>>>>,
}

/// Held acknowledgements in arrival order, each with the write it waits for.
type AckQueue<A> = VecDeque<(Durable, A)>;

impl<A> Default for PendingAcks<A> {
    fn default() -> Self {
        PendingAcks { queue: Cell::new(None) }
    }
}

impl<A> PendingAcks<A> {
    /// Returns the acknowledgement to send now (with whether its data is durable) when it
    /// needs no waiting and nothing is queued before it; otherwise queues it and wakes the
    /// writer.
    pub(crate) fn offer(&self, durable: Durable, ack: A, signal: &ConnSignal) -> Option<(A, bool)> {
        // Taken out and put back (a `Cell`: 8 bytes less in every connection's future).
        let mut queue = self.queue.take();
        if queue.as_ref().is_none_or(|q| q.is_empty())
            && let Some(result) = durable.check()
        {
            self.queue.set(queue);
            return Some((ack, result.is_ok()));
        }
        queue.get_or_insert_default().push_back((durable, ack));
        self.queue.set(queue);
        signal.wake();
        None
    }

    /// The oldest held acknowledgement, once its data is durable (with whether the store
    /// kept it); `None` while it still waits, or when none is held.
    pub(crate) fn pop_ready(&self) -> Option<(A, bool)> {
        let mut queue = self.queue.take()?;
        let ready = queue.front().and_then(|(durable, _)| durable.check());
        let popped = ready.and_then(|result| queue.pop_front().map(|(_, ack)| (ack, result.is_ok())));
        self.queue.set(Some(queue));
        popped
    }

    /// Whether acknowledgements are held.
    pub(crate) fn is_waiting(&self) -> bool {
        let queue = self.queue.take();
        let waiting = queue.as_ref().is_some_and(|q| !q.is_empty());
        self.queue.set(queue);
        waiting
    }
}

/// `limits.max_publish_rate` for one connection: a token bucket (one second's worth of
/// burst) that may go into debt; while in debt the connection stops reading from the socket,
/// so TCP slows the client down. Nothing is refused.
#[derive(Debug)]
pub(crate) struct PublishRate {
    rate: f64,
    tokens: Cell<f64>,
    last: Cell<Instant>,
}

impl PublishRate {
    /// A limiter for `per_second` PUBLISH packets (`None` when 0 = unlimited).
    pub(crate) fn new(per_second: u32) -> Option<Self> {
        (per_second > 0).then(|| {
            let rate = f64::from(per_second);
            PublishRate { rate, tokens: Cell::new(rate), last: Cell::new(Instant::now()) }
        })
    }

    fn refill(&self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last.get()).as_secs_f64();
        self.tokens.set((self.tokens.get() + elapsed * self.rate).min(self.rate));
        self.last.set(now);
    }

    /// Counts one PUBLISH.
    pub(crate) fn take(&self) {
        self.refill(Instant::now());
        self.tokens.set(self.tokens.get() - 1.0);
    }

    /// How long reading must pause before the next packet (`None`: not in debt).
    pub(crate) fn pause(&self) -> Option<std::time::Duration> {
        self.refill(Instant::now());
        let debt = -self.tokens.get();
        (debt >= 0.0).then(|| std::time::Duration::from_secs_f64((debt + 1e-3) / self.rate))
    }

    /// Waits until the connection may send again; returns whether it had to.
    pub(crate) async fn wait(&self) -> bool {
        let mut paused = false;
        while let Some(pause) = self.pause() {
            paused = true;
            ntex::time::sleep(pause).await;
        }
        paused
    }
}

/// Reassembles PUBLISH payloads that ntex-mqtt's codec delivers in pieces: when a packet has
/// not fully arrived, the codec emits the header with part of the payload, then
/// `PayloadChunk`s. Core calls need the whole message, and MQTT allows one PUBLISH in progress
/// at a time per connection, so one slot suffices.
pub(crate) struct PayloadAssembly<P> {
    /// Boxed: a whole PUBLISH header would otherwise sit in every idle connection.
    pending: Cell<Option<Box<Partial<P>>>>,
}

struct Partial<P> {
    packet: P,
    size: u32,
    expected: usize,
    payload: ntex::util::BytesMut,
}

impl<P> Default for PayloadAssembly<P> {
    fn default() -> Self {
        PayloadAssembly { pending: Cell::new(None) }
    }
}

impl<P> PayloadAssembly<P> {
    /// A PUBLISH header with the payload received so far: returns the complete packet, or
    /// keeps it until the rest arrives.
    pub(crate) fn start(
        &self,
        packet: P,
        payload: Bytes,
        expected: usize,
        size: u32,
    ) -> Option<(P, Bytes, u32)> {
        if payload.len() >= expected {
            return Some((packet, payload, size));
        }
        let mut buf = ntex::util::BytesMut::with_capacity(expected);
        buf.extend_from_slice(&payload);
        self.pending.set(Some(Box::new(Partial { packet, size, expected, payload: buf })));
        None
    }

    /// The next piece of the pending payload; the complete packet once `eof`.
    pub(crate) fn chunk(&self, chunk: &Bytes, eof: bool) -> Result<Option<(P, Bytes, u32)>, &'static str> {
        // Taken out while it grows (a `Cell`, not a `RefCell`: 8 bytes less in every
        // connection's future); put back unless complete or refused.
        let Some(mut partial) = self.pending.take() else { return Err("payload chunk without a PUBLISH") };
        partial.payload.extend_from_slice(chunk);
        if partial.payload.len() > partial.expected {
            return Err("PUBLISH payload longer than announced");
        }
        if !eof {
            self.pending.set(Some(partial));
            return Ok(None);
        }
        let done = partial;
        if done.payload.len() != done.expected {
            return Err("incomplete PUBLISH payload");
        }
        Ok(Some((done.packet, done.payload.freeze(), done.size)))
    }
}

/// Size of a whole MQTT packet with this Remaining Length: the type byte, the variable-length
/// Remaining Length itself, and the rest. The codecs limit and report the Remaining Length;
/// MQTT 5.0 §3.1.2.11.4 defines Maximum Packet Size as the whole packet.
pub(crate) fn packet_size(remaining: u32) -> u64 {
    let length_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + length_bytes + u64::from(remaining)
}

/// `limits.max_packet_size` in bytes, as MQTT's 32-bit Maximum Packet Size.
pub(crate) fn max_packet_size(limits: &fleetmq_config::Limits) -> u32 {
    u32::try_from(limits.max_packet_size.as_u64()).unwrap_or(u32::MAX)
}

/// The largest Remaining Length whose whole packet fits in `max_packet` bytes.
pub(crate) fn remaining_limit(max_packet: u32) -> u32 {
    (1..=4u32)
        .filter_map(|len_bytes| max_packet.checked_sub(1 + len_bytes))
        .filter(|r| packet_size(*r) <= u64::from(max_packet))
        .max()
        .unwrap_or(0)
}

/// The `mqtt.connect` trace span a handshake runs in (exported only with OpenTelemetry on;
/// the fields are not even evaluated otherwise). Protocol and outcome are recorded inside.
pub(crate) fn connect_span(client_id: &str, peer: Option<SocketAddr>, listener: &str) -> tracing::Span {
    tracing::info_span!(
        target: crate::telemetry::SPANS,
        "mqtt.connect",
        mqtt.client_id = client_id,
        net.peer = %display_peer(peer),
        mqtt.listener = listener,
        mqtt.protocol = tracing::field::Empty,
        mqtt.outcome = tracing::field::Empty,
    )
}

/// Records on the current `mqtt.connect` span how the CONNECT ended ("accepted" or the reason
/// it was refused).
pub(crate) fn record_connect(protocol: ProtocolVersion, outcome: &str) {
    tracing::Span::current().record("mqtt.protocol", protocol.as_str()).record("mqtt.outcome", outcome);
}

/// `ip:port` or `unknown`.
pub fn display_peer(peer: Option<SocketAddr>) -> String {
    peer.map_or_else(|| "unknown".to_string(), |p| p.to_string())
}

/// A PUBLISH from a client, protocol details removed.
#[derive(Debug)]
pub(crate) struct InboundPublish {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    pub packet_id: Option<u16>,
    pub properties: Option<Box<Properties>>,
    pub expiry_interval: Option<u32>,
    pub packet_size: u32,
}

/// What became of an inbound PUBLISH.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PublishOutcome {
    /// Routed or scheduled; `matched` is false when no subscription matched (a `$delayed`
    /// publish counts as matched: it was accepted for later).
    Accepted { matched: bool },
    /// A QoS 2 retransmission of a message already routed: acknowledge again only.
    Duplicate,
    /// Refused.
    Refused(PublishError),
}

impl ConnState {
    /// Routes a client's PUBLISH (exactly once for QoS 2, by packet id, across reconnects).
    /// The acknowledgement must wait for the returned [`Durable`].
    pub(crate) fn publish(&self, p: InboundPublish) -> (PublishOutcome, Durable) {
        self.broker.metrics().message_received(p.qos, packet_size(p.packet_size));
        tracing::debug!(
            client_id = %self.client_id(),
            "received PUBLISH (d{}, q{}, r{}, m{}, '{}', ... ({} bytes))",
            u8::from(p.dup),
            p.qos.level(),
            u8::from(p.retain),
            p.packet_id.unwrap_or(0),
            p.topic,
            p.payload.len()
        );
        let mut inbound_ticket = 0;
        if p.qos == QoS::ExactlyOnce
            && let Some(id) = p.packet_id
        {
            let (route, ticket) = self.broker.inbound_qos2(&self.session, id, p.dup);
            if !route {
                // Nothing new to store; acknowledgements leave in order, so this one cannot
                // overtake the first copy's if that is still waiting for the store.
                return (PublishOutcome::Duplicate, self.broker.durable(ticket));
            }
            inbound_ticket = ticket;
        }
        let message = Message {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties: p.properties,
            expires_at: expiry_deadline(Instant::now(), p.expiry_interval),
            origin: self.session.id,
        };
        let acl = self.session.acl_rules();
        let (outcome, durable) = match self.broker.publish_as(message, acl.as_deref().map(|acl| &**acl)) {
            Ok((Published::Routed { matched }, durable)) => {
                (PublishOutcome::Accepted { matched: matched > 0 }, durable)
            }
            Ok((Published::Delayed, durable)) => (PublishOutcome::Accepted { matched: true }, durable),
            Err(err) => {
                tracing::info!(client_id = %self.client_id(), "PUBLISH refused: {err}");
                (PublishOutcome::Refused(err), Durable::ready())
            }
        };
        // Tickets grow in submission order: the routing's ticket, when there is one, covers the
        // packet id recorded just before it.
        let durable = if durable.is_ready() && inbound_ticket > 0 {
            self.broker.durable(inbound_ticket)
        } else {
            durable
        };
        (outcome, durable)
    }

    /// The client identifier (the session's: an assigned one when CONNECT had none).
    pub(crate) fn client_id(&self) -> &ByteString {
        &self.session.client_id
    }

    /// Records a protocol-level reason for the coming close, for the disconnect log line.
    pub(crate) fn set_close_reason(&self, reason: impl Into<String>) {
        let mut ending = self.ending.take().unwrap_or_default();
        ending.close_reason.get_or_insert_with(|| reason.into());
        self.ending.set(Some(ending));
    }

    /// Records the client's DISCONNECT.
    pub(crate) fn set_disconnect(&self, how: DisconnectKind) {
        let mut ending = self.ending.take().unwrap_or_default();
        ending.disconnect = Some(how);
        self.ending.set(Some(ending));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_reassembled_from_chunks() {
        let a: PayloadAssembly<&str> = PayloadAssembly::default();
        assert_eq!(
            a.start("whole", Bytes::from_static(b"abc"), 3, 9),
            Some(("whole", Bytes::from_static(b"abc"), 9))
        );
        assert!(a.start("split", Bytes::from_static(b"ab"), 6, 12).is_none());
        assert_eq!(a.chunk(&Bytes::from_static(b"cd"), false), Ok(None));
        assert_eq!(
            a.chunk(&Bytes::from_static(b"ef"), true),
            Ok(Some(("split", Bytes::from_static(b"abcdef"), 12)))
        );
        assert!(a.chunk(&Bytes::from_static(b"x"), true).is_err(), "no PUBLISH pending");
        assert!(a.start("short", Bytes::new(), 4, 6).is_none());
        assert!(a.chunk(&Bytes::from_static(b"xy"), true).is_err(), "eof before the announced size");
    }

    #[test]
    fn held_acknowledgements_leave_in_arrival_order_once_durable() {
        use crate::store::Watermark;
        let (store, progress) = tokio::sync::watch::channel(Watermark { durable: 0, failed: false });
        let acks = PendingAcks::default();
        let signal = ConnSignal::default();
        assert_eq!(acks.offer(Durable::ready(), 'a', &signal), Some(('a', true)), "nothing held: sent now");
        assert!(!acks.is_waiting() && acks.pop_ready().is_none());
        assert_eq!(acks.offer(Durable::pending(2, progress.clone()), 'b', &signal), None);
        assert_eq!(acks.offer(Durable::ready(), 'c', &signal), None, "durable, but behind b [MQTT-4.6.0-2]");
        assert!(acks.is_waiting());
        assert_eq!(acks.pop_ready(), None, "b is not durable yet");
        store.send_replace(Watermark { durable: 2, failed: false });
        assert_eq!(acks.pop_ready(), Some(('b', true)));
        assert_eq!(acks.pop_ready(), Some(('c', true)));
        assert!(acks.pop_ready().is_none() && !acks.is_waiting());
        assert_eq!(acks.offer(Durable::pending(5, progress), 'd', &signal), None);
        store.send_replace(Watermark { durable: 2, failed: true });
        assert_eq!(acks.pop_ready(), Some(('d', false)), "a failed store releases it as not durable");
    }

    #[test]
    fn connection_state_stays_small() {
        // Held by every connection for its whole life (issue 6: ≤ 2 KB per idle connection).
        // What only some connections need is boxed; this catches a field added inline.
        assert!(
            std::mem::size_of::<ConnState>() <= 56,
            "ConnState: {} bytes",
            std::mem::size_of::<ConnState>()
        );
        assert!(std::mem::size_of::<PendingAcks<u64>>() <= 8);
        assert!(std::mem::size_of::<PayloadAssembly<u64>>() <= 8);
    }

    #[test]
    fn packet_size_counts_the_fixed_header() {
        assert_eq!(packet_size(0), 2);
        assert_eq!(packet_size(127), 129);
        assert_eq!(packet_size(128), 131);
        assert_eq!(packet_size(1021), 1024);
        assert_eq!(packet_size(16_384), 16_388);
    }

    #[test]
    fn remaining_limit_is_the_exact_inverse() {
        for max in [64u32, 129, 130, 131, 1024, 16_386, 16_387, 16_388, 1 << 20, 268_435_460] {
            let r = remaining_limit(max);
            assert!(packet_size(r) <= u64::from(max), "{max}");
            assert!(packet_size(r + 1) > u64::from(max), "{max}: {r} is not the largest");
        }
    }
}
