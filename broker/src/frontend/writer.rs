//! The connection writer: the half of a connection's task ([`super::connection`]) that moves
//! the session's queued deliveries onto the socket.
//!
//! Publishers on any thread only append to the session queue and wake this task; it takes
//! up to [`BATCH`] messages per lock and encodes them back to back, so many publishes leave
//! in one socket write. It pauses while the socket is under write back-pressure (the
//! session queue, which is bounded, absorbs the rest) and respects the client's Receive
//! Maximum through the session's window.

use super::connection::Inbound;
use super::socket::Socket;
use crate::core::metrics::DropReason;
use crate::core::session::{ConnSignal, Kick, Outgoing};

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

/// Protocol-specific encoding of outgoing packets: the writer's own state (v5's topic
/// aliases, a codec without the read side's size limit). The socket, the connection state
/// and the held acknowledgements belong to the read side ([`Inbound`]), which the writer
/// borrows: one copy of each per connection.
pub(crate) trait Wire {
    /// The read side this writer belongs to.
    type Inbound: Inbound;
    /// Encodes an acknowledgement; `durable` is false when the store failed to keep what it
    /// confirms (v5 answers with an error reason, v3 can only close the connection).
    fn send_ack(&mut self, on: &Self::Inbound, ack: <Self::Inbound as Inbound>::Ack, durable: bool) -> Sent;
    /// Encodes `item` into the connection's write buffer.
    fn send(&mut self, on: &Self::Inbound, item: Outgoing) -> Sent;
    /// Closes the connection for `reason` (v5 sends the matching DISCONNECT).
    fn close(&mut self, on: &Self::Inbound, reason: Kick);
}

thread_local! {
    /// Each worker's batch buffer. A batch is taken and written without waiting in between,
    /// so one buffer per thread serves every connection: kept in each connection's future it
    /// was 24 bytes of every idle connection and an allocation per burst (issue 6).
    static BATCH_BUF: std::cell::Cell<Vec<Outgoing>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs until the connection closes or the session moves on.
///
/// Held acknowledgements go first, in arrival order, as soon as the store's watermark passes
/// them: one watermark per connection replaces a task (and a cross-thread wake) per message.
pub(crate) async fn run<W: Wire>(on: &W::Inbound, wire: &mut W) {
    // `on.conn()` and `on.io()` are asked for where used, not kept: whatever this function
    // holds across an `await` is room in every connection's future.
    let mut watermark = on.conn().broker.store_watermark();
    loop {
        let Some(acks_waiting) = send_acks(on, wire) else { return };
        // Under write back-pressure, wait for the socket (the session queue absorbs the rest).
        if std::future::poll_fn(|cx| on.io().poll_flush(cx, false)).await.is_err() {
            return;
        }
        match send_batch(on, wire) {
            Batch::Closed => return,
            Batch::Sent => continue,
            Batch::Empty => {}
        }
        match watermark.as_mut() {
            // Boxed: only connections with acknowledgements waiting for the store need room
            // for this wait.
            Some(progress) if acks_waiting => {
                if !Box::pin(wait_for_store(&on.conn().signal, progress)).await {
                    // The store is gone (shutdown): acknowledgements cannot complete.
                    watermark = None;
                }
            }
            _ => on.conn().signal.wait().await,
        }
    }
}

/// Sends the held acknowledgements whose data is durable now. Returns whether some still
/// wait, or `None` when the connection must stop (closed, or the session moved on).
///
/// This and [`send_batch`] are plain functions so that nothing they hold is kept in the
/// connection's future while it waits.
fn send_acks<W: Wire>(on: &W::Inbound, wire: &mut W) -> Option<bool> {
    let conn = on.conn();
    if let Some(kick) = conn.signal.kicked() {
        if kick != Kick::Detached {
            wire.close(on, kick);
        }
        return None;
    }
    if on.io().is_closed() {
        return None;
    }
    while let Some((ack, durable)) = on.acks().pop_ready() {
        match wire.send_ack(on, ack, durable) {
            Sent::Written(bytes) => conn.broker.metrics().bytes(0, bytes),
            Sent::TooLarge => {}
            Sent::Closed => return None,
        }
    }
    Some(on.acks().is_waiting())
}

/// What [`send_batch`] did.
enum Batch {
    /// Nothing was queued.
    Empty,
    /// Messages were written.
    Sent,
    /// The connection closed.
    Closed,
}

/// Takes up to [`BATCH`] messages from the session queue and encodes them.
fn send_batch<W: Wire>(on: &W::Inbound, wire: &mut W) -> Batch {
    let conn = on.conn();
    let mut batch = BATCH_BUF.take();
    if batch.capacity() == 0 {
        batch.reserve_exact(BATCH);
    }
    let stats = conn.broker.next_batch(&conn.session, conn.generation, BATCH, &mut batch);
    if stats.expired > 0 {
        conn.broker.metrics().dropped(DropReason::Expired, u64::from(stats.expired));
    }
    if batch.is_empty() {
        BATCH_BUF.set(batch);
        return Batch::Empty;
    }
    // A short batch drained the queue: this writer is about to sleep, so nothing more is
    // coming to coalesce with. Sending now (rather than after every other task of this
    // turn) keeps light-load latency low; full batches under load still leave in as few
    // writes as before.
    let drained = batch.len() < BATCH;
    let mut outcome = Batch::Sent;
    for item in batch.drain(..) {
        if matches!(outcome, Batch::Closed) {
            // Dropped: the session keeps what was not acknowledged.
            continue;
        }
        let (qos, packet_id) = match &item {
            Outgoing::Publish { delivery, packet_id, .. } => (Some(delivery.qos), *packet_id),
            Outgoing::Release { .. } => (None, None),
        };
        match wire.send(on, item) {
            Sent::Written(bytes) => match qos {
                Some(qos) => conn.broker.metrics().message_sent(qos, bytes),
                None => conn.broker.metrics().bytes(0, bytes),
            },
            Sent::TooLarge => {
                conn.broker.metrics().dropped(DropReason::TooLarge, 1);
                if let Some(id) = packet_id {
                    conn.broker.discard(&conn.session, id);
                }
                tracing::debug!(client_id = %conn.client_id(), "message larger than the client's Maximum Packet Size discarded");
            }
            Sent::Closed => outcome = Batch::Closed,
        }
    }
    BATCH_BUF.set(batch);
    if drained && matches!(outcome, Batch::Sent) {
        on.io().send_buf();
    }
    outcome
}

/// Waits for a wake-up or for the store's watermark to move; false when the store is gone.
async fn wait_for_store(
    signal: &ConnSignal,
    progress: &mut tokio::sync::watch::Receiver<crate::store::Watermark>,
) -> bool {
    tokio::select! {
        () = signal.wait() => true,
        changed = progress.changed() => changed.is_ok(),
    }
}
