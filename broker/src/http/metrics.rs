//! `/metrics`: the broker's counters in the Prometheus text format.
//!
//! Nothing is recorded for Prometheus on the publish path: a custom
//! [`Collector`] reads the core's atomics and walks the sessions when a scrape arrives, so
//! the cost is paid per scrape, not per message.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder as _, Registry, TextEncoder};

use crate::core::Broker;
use crate::core::admin::QUEUE_DEPTH_BUCKETS;
use crate::core::metrics::DropReason;
use crate::core::types::QoS;

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One exported family: name, help, type and label names.
struct Spec {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
}

const fn counter(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Spec {
    Spec { name, help, kind: MetricType::COUNTER, labels }
}

const fn gauge(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Spec {
    Spec { name, help, kind: MetricType::GAUGE, labels }
}

const BUILD_INFO: Spec = gauge("fleetmq_build_info", "FleetMQ build; the value is always 1.", &["version"]);
const UPTIME: Spec = gauge("fleetmq_uptime_seconds", "Seconds since the broker started.", &[]);
const CONNECTIONS: Spec = gauge("fleetmq_connections", "MQTT connections currently open.", &[]);
const LISTENER_CONNECTIONS: Spec =
    gauge("fleetmq_listener_connections", "MQTT connections currently open, by listener.", &["listener"]);
const CONNECTIONS_MAX: Spec =
    gauge("fleetmq_connections_max", "Highest number of simultaneous MQTT connections since start.", &[]);
const CONNECTIONS_ACCEPTED: Spec =
    counter("fleetmq_connections_accepted_total", "MQTT connections accepted (CONNACK success).", &[]);
const CONNECTIONS_REFUSED: Spec =
    counter("fleetmq_connections_refused_total", "MQTT connection attempts refused at CONNECT.", &[]);
const RATE_LIMITED: Spec = counter(
    "fleetmq_connections_rate_limited_total",
    "Connections refused by a listener's max_connection_rate.",
    &[],
);
const THROTTLED: Spec = counter(
    "fleetmq_publish_throttled_total",
    "Times a connection paused reading because it exceeded limits.max_publish_rate.",
    &[],
);
const AUTH_FAILURES: Spec =
    counter("fleetmq_auth_failures_total", "Connection attempts refused by authentication.", &[]);
const RECEIVED: Spec =
    counter("fleetmq_messages_received_total", "PUBLISH packets received from clients, by QoS.", &["qos"]);
const SENT: Spec =
    counter("fleetmq_messages_sent_total", "PUBLISH packets sent to clients, by QoS.", &["qos"]);
const RECEIVED_BYTES: Spec = counter(
    "fleetmq_messages_received_bytes_total",
    "Bytes of PUBLISH packets received from clients, by QoS.",
    &["qos"],
);
const SENT_BYTES: Spec = counter(
    "fleetmq_messages_sent_bytes_total",
    "Bytes of PUBLISH packets sent to clients, by QoS.",
    &["qos"],
);
const NET_RECEIVED: Spec =
    counter("fleetmq_received_bytes_total", "Bytes of all MQTT packets received from clients.", &[]);
const NET_SENT: Spec = counter("fleetmq_sent_bytes_total", "Bytes of all MQTT packets sent to clients.", &[]);
const DROPPED: Spec = counter(
    "fleetmq_messages_dropped_total",
    "Messages not delivered to a subscriber, by reason (queue_full, expired, too_large).",
    &["reason"],
);
const SESSIONS: Spec = gauge("fleetmq_sessions", "Sessions held, connected or not.", &[]);
const QUEUED: Spec =
    gauge("fleetmq_queued_messages", "Messages waiting in session queues (sum over sessions).", &[]);
const QUEUED_MAX: Spec = gauge("fleetmq_queued_messages_max", "Depth of the deepest session queue.", &[]);
const QUEUE_DEPTH: Spec = Spec {
    name: "fleetmq_session_queue_depth",
    help: "Session queue depths (messages), one observation per session at scrape time.",
    kind: MetricType::HISTOGRAM,
    labels: &[],
};
const INFLIGHT: Spec = gauge(
    "fleetmq_inflight_messages",
    "Outbound QoS 1/2 messages sent and awaiting acknowledgement (sum over sessions).",
    &[],
);
const SUBSCRIPTIONS: Spec = gauge("fleetmq_subscriptions", "Subscriptions across all sessions.", &[]);
const RETAINED: Spec = gauge("fleetmq_retained_messages", "Retained messages held.", &[]);
const SCHEDULED: Spec =
    gauge("fleetmq_scheduled_jobs", "Timed jobs pending (delayed publishes, delayed wills, expiries).", &[]);
const STORE_SIZE: Spec = gauge(
    "fleetmq_store_size_bytes",
    "Bytes the durable store occupies on disk (0 without persistence).",
    &[],
);

const BRIDGE_UP: Spec =
    gauge("fleetmq_bridge_up", "1 while the bridge is connected to its remote, else 0.", &["bridge"]);
const BRIDGE_MESSAGES: Spec = counter(
    "fleetmq_bridge_messages_total",
    "Messages of a bridge by direction: out (acknowledged by the remote), in (published here), dropped (QoS 0 while the remote was down).",
    &["bridge", "direction"],
);
const BRIDGE_OVERFLOW: Spec = counter(
    "fleetmq_bridge_queue_dropped_total",
    "Messages a bridge dropped because its queue was full (queue.max_messages / queue.max_bytes, by its overflow policy).",
    &["bridge"],
);
const BRIDGE_RECONNECTS: Spec = counter(
    "fleetmq_bridge_reconnects_total",
    "Successful reconnects of a bridge after a lost link.",
    &["bridge"],
);
const BRIDGE_QUEUE: Spec = gauge(
    "fleetmq_bridge_queue_depth",
    "Messages waiting for a bridge's remote (queued and in flight in its internal session).",
    &["bridge"],
);

const CLUSTER_MEMBERS: Spec =
    gauge("fleetmq_cluster_members", "Alive cluster members, this node included (clustering only).", &[]);
const CLUSTER_LINK_UP: Spec =
    gauge("fleetmq_cluster_link_up", "1 while this node's link to the peer is connected, else 0.", &["peer"]);
const CLUSTER_MESSAGES: Spec = counter(
    "fleetmq_cluster_messages_total",
    "Messages between this node and a peer by direction: out (forwarded and acknowledged), in (received from it), dropped (its queue was full or its link failed with them in flight).",
    &["peer", "direction"],
);

const CLUSTER_SESSIONS: Spec = counter(
    "fleetmq_cluster_sessions_total",
    "Sessions moved between this node and its peers: taken_over (from a peer, its client connected here), handed_over (to a peer), drained_out / drained_in (a draining node's sessions), connects_refused (the client id was connecting on another node at the same time, or its session was in transit).",
    &["event"],
);

const CLUSTER_QUEUE: Spec = gauge(
    "fleetmq_cluster_queue_depth",
    "Messages waiting for a live peer here (queued plus in flight on the link).",
    &["peer"],
);

/// Bridge families: exported only when bridges are configured.
#[cfg(test)]
const BRIDGE_FAMILIES: &[&Spec] =
    &[&BRIDGE_UP, &BRIDGE_MESSAGES, &BRIDGE_OVERFLOW, &BRIDGE_RECONNECTS, &BRIDGE_QUEUE];

const ALL: &[&Spec] = &[
    &BUILD_INFO,
    &UPTIME,
    &CONNECTIONS,
    &LISTENER_CONNECTIONS,
    &CONNECTIONS_MAX,
    &CONNECTIONS_ACCEPTED,
    &CONNECTIONS_REFUSED,
    &RATE_LIMITED,
    &THROTTLED,
    &AUTH_FAILURES,
    &RECEIVED,
    &SENT,
    &RECEIVED_BYTES,
    &SENT_BYTES,
    &NET_RECEIVED,
    &NET_SENT,
    &DROPPED,
    &SESSIONS,
    &QUEUED,
    &QUEUED_MAX,
    &QUEUE_DEPTH,
    &INFLIGHT,
    &SUBSCRIPTIONS,
    &RETAINED,
    &SCHEDULED,
    &STORE_SIZE,
    &BRIDGE_UP,
    &BRIDGE_MESSAGES,
    &BRIDGE_OVERFLOW,
    &BRIDGE_RECONNECTS,
    &BRIDGE_QUEUE,
    &CLUSTER_MEMBERS,
    &CLUSTER_LINK_UP,
    &CLUSTER_MESSAGES,
    &CLUSTER_QUEUE,
    &CLUSTER_SESSIONS,
];

const QOS_LEVELS: [(QoS, &str); 3] =
    [(QoS::AtMostOnce, "0"), (QoS::AtLeastOnce, "1"), (QoS::ExactlyOnce, "2")];

/// Reads the broker's state at scrape time.
struct BrokerCollector {
    broker: Broker,
    descs: Vec<Desc>,
}

/// Builds the families of one scrape, in [`ALL`] order.
#[derive(Default)]
struct Families(Vec<MetricFamily>);

impl Families {
    fn family(&mut self, spec: &Spec) -> &mut MetricFamily {
        if self.0.last().is_none_or(|f| f.name() != spec.name) {
            let mut family = MetricFamily::default();
            family.set_name(spec.name.to_string());
            family.set_help(spec.help.to_string());
            family.set_field_type(spec.kind);
            self.0.push(family);
        }
        let last = self.0.len() - 1;
        &mut self.0[last]
    }

    fn labels(spec: &Spec, values: &[&str]) -> Vec<LabelPair> {
        spec.labels
            .iter()
            .zip(values)
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name((*name).to_string());
                pair.set_value((*value).to_string());
                pair
            })
            .collect()
    }

    fn value(&mut self, spec: &Spec, labels: &[&str], value: f64) {
        let mut metric = Metric::from_label(Self::labels(spec, labels));
        if spec.kind == MetricType::COUNTER {
            let mut c = Counter::default();
            c.set_value(value);
            metric.set_counter(c);
        } else {
            let mut g = Gauge::default();
            g.set_value(value);
            metric.set_gauge(g);
        }
        self.family(spec).mut_metric().push(metric);
    }

    fn count(&mut self, spec: &Spec, labels: &[&str], value: u64) {
        // f64 is exact up to 2^53: beyond what any of these counters reaches.
        self.value(spec, labels, value as f64);
    }
}

impl Collector for BrokerCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let broker = &self.broker;
        let m = broker.metrics();
        let totals = broker.session_totals();
        let mut out = Families::default();
        out.count(&BUILD_INFO, &[env!("CARGO_PKG_VERSION")], 1);
        out.value(&UPTIME, &[], broker.uptime().as_secs_f64());
        out.count(&CONNECTIONS, &[], m.connected());
        // Every configured listener, so an idle one reads 0 instead of vanishing.
        for listener in &broker.config().listeners {
            let name = listener.display_name();
            let n = totals.by_listener.iter().find(|(l, _)| *l == name).map_or(0, |(_, n)| *n);
            out.count(&LISTENER_CONNECTIONS, &[&name], n);
        }
        out.count(&CONNECTIONS_MAX, &[], m.connected_max());
        out.count(&CONNECTIONS_ACCEPTED, &[], m.connections_accepted());
        out.count(&CONNECTIONS_REFUSED, &[], m.connections_refused());
        out.count(&RATE_LIMITED, &[], m.connections_rate_limited());
        out.count(&THROTTLED, &[], m.publishes_throttled());
        out.count(&AUTH_FAILURES, &[], m.auth_failures());
        for (qos, label) in QOS_LEVELS {
            out.count(&RECEIVED, &[label], m.received(qos));
        }
        for (qos, label) in QOS_LEVELS {
            out.count(&SENT, &[label], m.sent(qos));
        }
        for (qos, label) in QOS_LEVELS {
            out.count(&RECEIVED_BYTES, &[label], m.received_bytes(qos));
        }
        for (qos, label) in QOS_LEVELS {
            out.count(&SENT_BYTES, &[label], m.sent_bytes(qos));
        }
        out.count(&NET_RECEIVED, &[], m.bytes_received());
        out.count(&NET_SENT, &[], m.bytes_sent());
        for reason in DropReason::ALL {
            out.count(&DROPPED, &[reason.as_str()], m.dropped_count(reason));
        }
        out.count(&SESSIONS, &[], totals.sessions);
        out.count(&QUEUED, &[], totals.queued);
        out.count(&QUEUED_MAX, &[], totals.queued_max);
        let mut histogram = Histogram::default();
        histogram.set_sample_count(totals.sessions);
        histogram.set_sample_sum(totals.queued as f64);
        histogram.set_bucket(
            QUEUE_DEPTH_BUCKETS
                .iter()
                .zip(totals.depth_buckets)
                .map(|(bound, count)| {
                    let mut bucket = Bucket::default();
                    bucket.set_upper_bound(*bound as f64);
                    bucket.set_cumulative_count(count);
                    bucket
                })
                .collect(),
        );
        let mut metric = Metric::default();
        metric.set_histogram(histogram);
        out.family(&QUEUE_DEPTH).mut_metric().push(metric);
        out.count(&INFLIGHT, &[], totals.inflight);
        out.count(&SUBSCRIPTIONS, &[], broker.subscription_count() as u64);
        out.count(&RETAINED, &[], broker.retained_count() as u64);
        out.count(&SCHEDULED, &[], broker.scheduled_count() as u64);
        out.count(&STORE_SIZE, &[], broker.store_size());
        let bridges = broker.bridges().all();
        for b in &bridges {
            let up = b.snapshot().state == crate::bridge::state::LinkState::Connected;
            out.count(&BRIDGE_UP, &[&b.name], u64::from(up));
        }
        for b in &bridges {
            out.count(&BRIDGE_MESSAGES, &[&b.name, "out"], b.forwarded_out.load(Ordering::Relaxed));
            out.count(&BRIDGE_MESSAGES, &[&b.name, "in"], b.forwarded_in.load(Ordering::Relaxed));
            out.count(&BRIDGE_MESSAGES, &[&b.name, "dropped"], b.dropped.load(Ordering::Relaxed));
        }
        for b in &bridges {
            out.count(&BRIDGE_OVERFLOW, &[&b.name], b.dropped_overflow.load(Ordering::Relaxed));
        }
        for b in &bridges {
            out.count(&BRIDGE_RECONNECTS, &[&b.name], b.reconnects.load(Ordering::Relaxed));
        }
        for b in &bridges {
            out.count(&BRIDGE_QUEUE, &[&b.name], crate::bridge::queue_depth(broker, b) as u64);
        }
        if let Some(cluster) = crate::cluster::Cluster::of(broker) {
            use crate::cluster::status::{LinkState, PeerStats};
            out.count(&CLUSTER_MEMBERS, &[], cluster.alive() as u64);
            let peers = cluster.peer_stats();
            for (name, s) in &peers {
                out.count(&CLUSTER_LINK_UP, &[name], u64::from(s.link() == LinkState::Connected));
            }
            for (name, s) in &peers {
                out.count(&CLUSTER_MESSAGES, &[name, "out"], PeerStats::get(&s.forwarded_out));
                out.count(&CLUSTER_MESSAGES, &[name, "in"], PeerStats::get(&s.forwarded_in));
                out.count(&CLUSTER_MESSAGES, &[name, "dropped"], PeerStats::get(&s.dropped));
            }
            for (name, depth) in cluster.queue_depths() {
                out.count(&CLUSTER_QUEUE, &[&name], depth);
            }
            let moves = cluster.moves();
            for (event, n) in [
                ("taken_over", moves.taken_over),
                ("handed_over", moves.handed_over),
                ("drained_out", moves.drained_out),
                ("drained_in", moves.drained_in),
                ("connects_refused", moves.connects_refused),
            ] {
                out.count(&CLUSTER_SESSIONS, &[event], n);
            }
        }
        out.0
    }
}

/// The Prometheus registry with the broker's collector.
pub struct Exporter {
    registry: Registry,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

impl Exporter {
    /// Registers the broker's metrics.
    pub fn new(broker: Broker) -> Result<Self, prometheus::Error> {
        let descs = ALL
            .iter()
            .map(|spec| {
                Desc::new(
                    spec.name.to_string(),
                    spec.help.to_string(),
                    spec.labels.iter().map(|l| (*l).to_string()).collect(),
                    HashMap::new(),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let registry = Registry::new();
        registry.register(Box::new(BrokerCollector { broker, descs }))?;
        Ok(Exporter { registry })
    }

    /// One scrape in the text exposition format.
    pub fn render(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut buf = Vec::with_capacity(4096);
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetmq_config::BrokerConfig;

    #[test]
    fn every_family_is_exported_once_with_valid_names() {
        let broker = Broker::new(BrokerConfig::default());
        broker.metrics().message_received(QoS::AtLeastOnce, 12);
        let text = String::from_utf8(Exporter::new(broker).unwrap().render().unwrap()).unwrap();
        let optional = |s: &&&Spec| {
            BRIDGE_FAMILIES.iter().any(|b| b.name == s.name) || s.name.starts_with("fleetmq_cluster_")
        };
        for spec in ALL.iter().filter(|s| !optional(s)) {
            let header = format!("# TYPE {} ", spec.name);
            assert_eq!(text.matches(&header).count(), 1, "{}", spec.name);
            if spec.kind == MetricType::COUNTER {
                assert!(spec.name.ends_with("_total"), "{}", spec.name);
            }
        }
        assert!(text.contains("fleetmq_messages_received_total{qos=\"1\"} 1\n"), "{text}");
        assert!(text.contains("fleetmq_messages_received_bytes_total{qos=\"1\"} 12\n"), "{text}");
        assert!(text.contains("fleetmq_session_queue_depth_bucket{le=\"+Inf\"} 0\n"), "{text}");
        assert!(!text.contains("fleetmq_bridge_"), "no bridge families without bridges");
        assert!(!text.contains("fleetmq_cluster_"), "no cluster families without clustering");
    }

    #[test]
    fn bridge_families_have_one_series_per_bridge() {
        use crate::bridge::state::{BridgeStatus, LinkState};
        let broker = Broker::new(BrokerConfig::default());
        let (up, down) = (BridgeStatus::new("up"), BridgeStatus::new("down"));
        up.set(LinkState::Connected, Some("127.0.0.1:1883".into()));
        BridgeStatus::count(&up.forwarded_out);
        BridgeStatus::count(&down.dropped);
        BridgeStatus::count(&down.dropped_overflow);
        broker.bridges().set(vec![std::sync::Arc::new(up), std::sync::Arc::new(down)]);
        let text = String::from_utf8(Exporter::new(broker).unwrap().render().unwrap()).unwrap();
        for family in BRIDGE_FAMILIES {
            assert_eq!(text.matches(&format!("# TYPE {} ", family.name)).count(), 1, "{}", family.name);
        }
        for line in [
            "fleetmq_bridge_up{bridge=\"up\"} 1\n",
            "fleetmq_bridge_up{bridge=\"down\"} 0\n",
            "fleetmq_bridge_messages_total{bridge=\"up\",direction=\"out\"} 1\n",
            "fleetmq_bridge_messages_total{bridge=\"down\",direction=\"dropped\"} 1\n",
            "fleetmq_bridge_queue_depth{bridge=\"up\"} 0\n",
            "fleetmq_bridge_reconnects_total{bridge=\"down\"} 0\n",
            "fleetmq_bridge_queue_dropped_total{bridge=\"down\"} 1\n",
            "fleetmq_bridge_queue_dropped_total{bridge=\"up\"} 0\n",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }
}
