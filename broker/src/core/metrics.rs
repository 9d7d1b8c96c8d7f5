//! Broker counters. Plain atomics on the hot path; `$SYS`, the admin API's stats and the
//! Prometheus endpoint (`crate::http::metrics`) read them.

use std::sync::atomic::{AtomicU64, Ordering};

use super::types::QoS;

/// Why a message was not delivered to a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The subscriber's queue was full (`limits.max_queued_messages` / `max_queued_bytes`).
    QueueFull,
    /// Its Message Expiry Interval passed before it could be sent.
    Expired,
    /// Larger than the subscriber's Maximum Packet Size.
    TooLarge,
}

impl DropReason {
    /// Label used in `$SYS` and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Expired => "expired",
            DropReason::TooLarge => "too_large",
        }
    }

    /// All reasons, for exporting.
    pub const ALL: [DropReason; 3] = [DropReason::QueueFull, DropReason::Expired, DropReason::TooLarge];
}

/// Process-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    received: [AtomicU64; 3],
    sent: [AtomicU64; 3],
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    /// PUBLISH packet bytes by QoS (part of `bytes_received` / `bytes_sent`).
    publish_bytes_received: [AtomicU64; 3],
    publish_bytes_sent: [AtomicU64; 3],
    dropped: [AtomicU64; 3],
    auth_failures: AtomicU64,
    connections_accepted: AtomicU64,
    connections_refused: AtomicU64,
    connected: AtomicU64,
    connected_max: AtomicU64,
    connections_rate_limited: AtomicU64,
    publishes_throttled: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Metrics {
    /// A PUBLISH arrived from a client.
    pub fn message_received(&self, qos: QoS, packet_bytes: u64) {
        add(&self.received[qos as usize], 1);
        add(&self.publish_bytes_received[qos as usize], packet_bytes);
        add(&self.bytes_received, packet_bytes);
    }

    /// A PUBLISH was written to a client.
    pub fn message_sent(&self, qos: QoS, packet_bytes: u64) {
        add(&self.sent[qos as usize], 1);
        add(&self.publish_bytes_sent[qos as usize], packet_bytes);
        add(&self.bytes_sent, packet_bytes);
    }

    /// Non-PUBLISH traffic, for the byte totals.
    pub fn bytes(&self, received: u64, sent: u64) {
        add(&self.bytes_received, received);
        add(&self.bytes_sent, sent);
    }

    /// Messages not delivered.
    pub fn dropped(&self, reason: DropReason, n: u64) {
        add(&self.dropped[reason as usize], n);
    }

    /// A connection finished its handshake (or was refused).
    pub fn connection(&self, accepted: bool) {
        if accepted {
            add(&self.connections_accepted, 1);
            let now = self.connected.fetch_add(1, Ordering::Relaxed) + 1;
            self.connected_max.fetch_max(now, Ordering::Relaxed);
        } else {
            add(&self.connections_refused, 1);
        }
    }

    /// A client presented credentials (or none) that authentication refused.
    pub fn auth_failure(&self) {
        add(&self.auth_failures, 1);
    }

    /// A listener's connection rate limit refused a connection.
    pub fn connection_rate_limited(&self) {
        add(&self.connections_rate_limited, 1);
    }

    /// A connection paused reading because it exceeded `limits.max_publish_rate`.
    pub fn publish_throttled(&self) {
        add(&self.publishes_throttled, 1);
    }

    /// Times connections were paused by `limits.max_publish_rate`.
    pub fn publishes_throttled(&self) -> u64 {
        get(&self.publishes_throttled)
    }

    /// Connections refused by listener connection rate limits.
    pub fn connections_rate_limited(&self) -> u64 {
        get(&self.connections_rate_limited)
    }

    /// An accepted connection closed.
    pub fn disconnected(&self) {
        self.connected.fetch_sub(1, Ordering::Relaxed);
    }

    /// Messages received at `qos`.
    pub fn received(&self, qos: QoS) -> u64 {
        get(&self.received[qos as usize])
    }

    /// Messages sent at `qos`.
    pub fn sent(&self, qos: QoS) -> u64 {
        get(&self.sent[qos as usize])
    }

    /// All messages received.
    pub fn received_total(&self) -> u64 {
        self.received.iter().map(get).sum()
    }

    /// All messages sent.
    pub fn sent_total(&self) -> u64 {
        self.sent.iter().map(get).sum()
    }

    /// Bytes read from clients.
    pub fn bytes_received(&self) -> u64 {
        get(&self.bytes_received)
    }

    /// Bytes written to clients.
    pub fn bytes_sent(&self) -> u64 {
        get(&self.bytes_sent)
    }

    /// PUBLISH packet bytes received at `qos`.
    pub fn received_bytes(&self, qos: QoS) -> u64 {
        get(&self.publish_bytes_received[qos as usize])
    }

    /// PUBLISH packet bytes sent at `qos`.
    pub fn sent_bytes(&self, qos: QoS) -> u64 {
        get(&self.publish_bytes_sent[qos as usize])
    }

    /// Connection attempts refused by authentication since start.
    pub fn auth_failures(&self) -> u64 {
        get(&self.auth_failures)
    }

    /// Messages dropped for `reason`.
    pub fn dropped_count(&self, reason: DropReason) -> u64 {
        get(&self.dropped[reason as usize])
    }

    /// Connections currently open.
    pub fn connected(&self) -> u64 {
        get(&self.connected)
    }

    /// Highest number of simultaneous connections.
    pub fn connected_max(&self) -> u64 {
        get(&self.connected_max)
    }

    /// Handshakes accepted since start.
    pub fn connections_accepted(&self) -> u64 {
        get(&self.connections_accepted)
    }

    /// Handshakes refused since start.
    pub fn connections_refused(&self) -> u64 {
        get(&self.connections_refused)
    }
}
