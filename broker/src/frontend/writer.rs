//! The connection writer: one task per connection, on the connection's worker thread,
//! moving the session's queued deliveries onto the socket.
//!
//! Publishers on any thread only append to the session queue and wake this task; it takes
//! up to [`BATCH`] messages per lock and encodes them back to back, so many publishes leave
//! in one socket write. It pauses while the socket is under write back-pressure (the
//! session queue, which is bounded, absorbs the rest) and respects the client's Receive
//! Maximum through the session's window.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

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
    /// Encodes `item` into the connection's write buffer.
    fn send(&mut self, item: Outgoing, now: Instant) -> Sent;
    /// Closes the connection for `reason` (v5 sends the matching DISCONNECT).
    fn close(&mut self, reason: Kick);
    /// Whether the connection is closed.
    fn is_closed(&self) -> bool;
    /// Whether the socket's write buffer is above its high-water mark.
    fn backpressure(&self) -> bool;
    /// Resolves when writing may continue; false when the connection closed.
    fn ready(&self) -> impl Future<Output = bool>;
}

/// Runs until the connection closes or the session moves on.
pub async fn run<W: Wire>(
    mut wire: W,
    broker: Broker,
    session: Arc<Session>,
    generation: u64,
    signal: Arc<ConnSignal>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        if let Some(kick) = signal.kicked() {
            if kick != Kick::Detached {
                wire.close(kick);
            }
            return;
        }
        if wire.is_closed() {
            return;
        }
        if wire.backpressure() {
            if !wire.ready().await {
                return;
            }
            if wire.backpressure() {
                // ntex raises the sink's flag from a spawned task; let it run.
                tokio::task::yield_now().await;
            }
            continue;
        }
        let stats = broker.next_batch(&session, generation, BATCH, &mut batch);
        if stats.expired > 0 {
            broker.metrics().dropped(DropReason::Expired, u64::from(stats.expired));
        }
        if batch.is_empty() {
            signal.wait().await;
            continue;
        }
        let now = Instant::now();
        for item in batch.drain(..) {
            let (qos, packet_id) = match &item {
                Outgoing::Publish { delivery, packet_id, .. } => (Some(delivery.qos), *packet_id),
                Outgoing::Release { .. } => (None, None),
            };
            match wire.send(item, now) {
                Sent::Written(bytes) => match qos {
                    Some(qos) => broker.metrics().message_sent(qos, bytes),
                    None => broker.metrics().bytes(0, bytes),
                },
                Sent::TooLarge => {
                    broker.metrics().dropped(DropReason::TooLarge, 1);
                    if let Some(id) = packet_id {
                        broker.discard(&session, id);
                    }
                    tracing::debug!(client_id = %session.client_id, "message larger than the client's Maximum Packet Size discarded");
                }
                Sent::Closed => return,
            }
        }
    }
}
