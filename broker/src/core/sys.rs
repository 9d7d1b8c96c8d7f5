//! `$SYS/broker/...` status topics, published as retained messages on an interval, with
//! Mosquitto's topic names where Mosquitto has one.

use super::broker::Broker;
use super::metrics::DropReason;
use super::types::{Message, QoS};

/// Version string published on `$SYS/broker/version`.
pub const VERSION: &str = concat!("fleetmq ", env!("CARGO_PKG_VERSION"));

/// The current `$SYS` values as (topic, payload) pairs.
pub fn snapshot(broker: &Broker) -> Vec<(&'static str, String)> {
    let m = broker.metrics();
    let connected = m.connected();
    let total = broker.session_count() as u64;
    let dropped: u64 = DropReason::ALL.iter().map(|r| m.dropped_count(*r)).sum();
    vec![
        ("$SYS/broker/version", VERSION.to_string()),
        ("$SYS/broker/uptime", format!("{} seconds", broker.uptime().as_secs())),
        ("$SYS/broker/clients/connected", connected.to_string()),
        ("$SYS/broker/clients/total", total.max(connected).to_string()),
        ("$SYS/broker/clients/disconnected", total.saturating_sub(connected).to_string()),
        ("$SYS/broker/clients/maximum", m.connected_max().to_string()),
        ("$SYS/broker/messages/received", m.received_total().to_string()),
        ("$SYS/broker/messages/sent", m.sent_total().to_string()),
        ("$SYS/broker/publish/messages/received", m.received_total().to_string()),
        ("$SYS/broker/publish/messages/sent", m.sent_total().to_string()),
        ("$SYS/broker/publish/messages/dropped", dropped.to_string()),
        ("$SYS/broker/bytes/received", m.bytes_received().to_string()),
        ("$SYS/broker/bytes/sent", m.bytes_sent().to_string()),
        ("$SYS/broker/subscriptions/count", broker.subscription_count().to_string()),
        ("$SYS/broker/retained messages/count", broker.retained_count().to_string()),
        ("$SYS/broker/store/messages/scheduled", broker.scheduled_count().to_string()),
    ]
}

/// Publishes the snapshot.
pub fn publish(broker: &Broker) {
    for (topic, value) in snapshot(broker) {
        broker.publish_internal(Message::new(topic, value, QoS::AtMostOnce, true));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetmq_config::BrokerConfig;

    #[test]
    fn snapshot_has_mosquitto_names_and_is_retained() {
        let broker = Broker::new(BrokerConfig::default());
        let names: Vec<&str> = snapshot(&broker).iter().map(|(t, _)| *t).collect();
        for required in [
            "$SYS/broker/version",
            "$SYS/broker/uptime",
            "$SYS/broker/clients/connected",
            "$SYS/broker/clients/total",
            "$SYS/broker/messages/received",
            "$SYS/broker/messages/sent",
            "$SYS/broker/bytes/received",
            "$SYS/broker/bytes/sent",
            "$SYS/broker/subscriptions/count",
            "$SYS/broker/retained messages/count",
        ] {
            assert!(names.contains(&required), "{required}");
        }
        publish(&broker);
        assert_eq!(broker.retained_count(), names.len());
    }
}
