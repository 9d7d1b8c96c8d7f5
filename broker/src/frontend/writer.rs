//! The connection writer: the half of a connection's task ([`super::connection`]) that moves
//! the session's queued deliveries onto the socket.
//!
//! Publishers on any thread only append to the session queue and wake this task; it takes
//! up to [`BATCH`] messages per lock and encodes them back to back, so many publishes leave
//! in one socket write. It pauses while the socket is under write back-pressure (the
//! session queue, which is bounded, absorbs the rest) and respects the client's Receive
//! Maximum through the session's window.

use std::future::Future;

use std::sync::Arc;
use std::time::Instant;

use std::rc::Rc;

use super::PendingAcks;
use super::socket::Socket;
use crate::core::broker::Broker;
use crate::core::metrics::DropReason;
use crate::core::session::{ConnSignal, Kick, Outgoing, Session};

/// Messages taken from the queue per lock.
pub const BATCH: usize = 64;

/// Result of encoding one outgoing item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Written to the connection's buffer (approximate packet bytes).
    Written(u64),
    /// Larger than the client's Maximum Packet Size: discarded (MQTT 5.0 §3.1.2.11.4).
    TooLarge,
    /// The connection is closed.
    Closed,
}

/// Protocol-specific encoding of outgoing packets.
pub trait Wire {
    /// An acknowledgement held until durable (see [`super::PendingAcks`]).
    type Ack;
    /// Encodes an acknowledgement; `durable` is false when the store failed to keep what it
    /// confirms (v5 answers with an error reason, v3 can only close the connection).
    fn send_ack(&mut self, ack: Self::Ack, durable: bool) -> Sent;
    /// Encodes `item` into the connection's write buffer.
    fn send(&mut self, item: Outgoing, now: Instant) -> Sent;
    /// Closes the connection for `reason` (v5 sends the matching DISCONNECT).
    fn close(&mut self, reason: Kick);
    /// The connection's socket type.
    type Socket: Socket;
    /// The connection's socket.
    fn io(&self) -> &Self::Socket;
    /// Whether the connection is closed.
    fn is_closed(&self) -> bool {
        self.io().is_closed()
    }
    /// Writes what is buffered to the socket now, if the socket is idle, instead of waiting
    /// for ntex's write pass after every other task of this turn.
    fn send_now(&self) {
        self.io().send_buf();
    }
    /// Resolves when the socket's write buffer is below its high-water mark; false when the
    /// connection closed.
    fn ready(&self) -> impl Future<Output = bool> {
        std::future::poll_fn(|cx| self.io().poll_flush(cx, false).map(|r| r.is_ok()))
    }
}

/// What a connection's writer owns.
pub(crate) struct Writer<W: Wire> {
    /// Protocol encoding onto the socket.
    pub(crate) wire: W,
    /// The broker core.
    pub(crate) broker: Broker,
    /// The session whose queue this writer drains.
    pub(crate) session: Arc<Session>,
    /// Connection generation within the session (stale writers stop).
    pub(crate) generation: u64,
    /// Wake-ups from publishers and the read side.
    pub(crate) signal: Arc<ConnSignal>,
    /// Acknowledgements held until the store has made their data durable.
    pub(crate) acks: Rc<PendingAcks<W::Ack>>,
}

/// Runs until the connection closes or the session moves on.
///
/// Held acknowledgements go first, in arrival order, as soon as the store's watermark passes
/// them: one watermark per connection replaces a task (and a cross-thread wake) per message.
pub(crate) async fn run<W: Wire>(writer: &mut Writer<W>) {
    let mut watermark = writer.broker.store_watermark();
    // Allocated while there is something to send and given back when the writer goes idle:
    // 64 items of 48 bytes held by every idle connection were 3 KiB of its ~16 KiB.
    let mut batch = Vec::new();
    let mut ready_acks = Vec::new();
    loop {
        if let Some(kick) = writer.signal.kicked() {
            if kick != Kick::Detached {
                writer.wire.close(kick);
            }
            return;
        }
        if writer.wire.is_closed() {
            return;
        }
        let acks_waiting = writer.acks.take_ready(&mut ready_acks);
        for (ack, durable) in ready_acks.drain(..) {
            match writer.wire.send_ack(ack, durable) {
                Sent::Written(bytes) => writer.broker.metrics().bytes(0, bytes),
                Sent::TooLarge => {}
                Sent::Closed => return,
            }
        }
        // Under write back-pressure, wait for the socket (the session queue absorbs the rest).
        if !writer.wire.ready().await {
            return;
        }
        if batch.capacity() == 0 {
            batch.reserve_exact(BATCH);
        }
        let stats = writer.broker.next_batch(&writer.session, writer.generation, BATCH, &mut batch);
        if stats.expired > 0 {
            writer.broker.metrics().dropped(DropReason::Expired, u64::from(stats.expired));
        }
        if batch.is_empty() {
            batch = Vec::new();
            match watermark.as_mut() {
                Some(progress) if acks_waiting => {
                    // Boxed: only connections with acknowledgements waiting for the store
                    // need room for this future.
                    tokio::select! {
                        () = writer.signal.wait() => {}
                        changed = Box::pin(progress.changed()) => {
                            if changed.is_err() {
                                // The store is gone (shutdown): acknowledgements cannot complete.
                                watermark = None;
                            }
                        }
                    }
                }
                _ => writer.signal.wait().await,
            }
            continue;
        }
        // A short batch drained the queue: this writer is about to sleep, so nothing more is
        // coming to coalesce with. Sending now (rather than in ntex's shared write pass after
        // every other woken connection) keeps light-load latency low; full batches under load
        // still leave in as few writes as before.
        let drained = batch.len() < BATCH;
        let now = Instant::now();
        for item in batch.drain(..) {
            let (qos, packet_id) = match &item {
                Outgoing::Publish { delivery, packet_id, .. } => (Some(delivery.qos), *packet_id),
                Outgoing::Release { .. } => (None, None),
            };
            match writer.wire.send(item, now) {
                Sent::Written(bytes) => match qos {
                    Some(qos) => writer.broker.metrics().message_sent(qos, bytes),
                    None => writer.broker.metrics().bytes(0, bytes),
                },
                Sent::TooLarge => {
                    writer.broker.metrics().dropped(DropReason::TooLarge, 1);
                    if let Some(id) = packet_id {
                        writer.broker.discard(&writer.session, id);
                    }
                    tracing::debug!(client_id = %writer.session.client_id, "message larger than the client's Maximum Packet Size discarded");
                }
                Sent::Closed => return,
            }
        }
        if drained {
            writer.wire.send_now();
        }
    }
}
