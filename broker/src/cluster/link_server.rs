//! The receiving end of the inter-node links: a small MQTT 5 server (ntex-mqtt) on
//! `cluster.link_bind` that accepts peers presenting the cluster secret as password and
//! routes what they send to this node's sessions only.

use std::sync::Arc;
use std::time::Instant;

use fleetmq_config::BrokerConfig;
use ntex::io::Io;
use ntex::service::cfg::SharedCfg;
use ntex::service::{ServiceFactory, fn_factory_with_config, fn_service};
use ntex::time::Seconds;
use ntex_mqtt::error::MqttError;
use ntex_mqtt::{MqttServiceConfig, QoS, v5};

use super::Cluster;
use super::link::LINK_USER;
use super::status::PeerStats;
use super::wire;
use crate::core::Broker;

/// Name of the link listener in the ntex server.
pub const SERVICE_NAME: &str = "cluster-link";

/// Why a link connection or one of its publishes failed.
#[derive(Debug)]
pub struct LinkError(#[expect(dead_code, reason = "read through Debug in connection errors")] String);

impl LinkError {
    /// An error saying `why`.
    pub fn new(why: impl Into<String>) -> Self {
        LinkError(why.into())
    }
}

impl From<()> for LinkError {
    fn from(_: ()) -> Self {
        LinkError(String::new())
    }
}

impl TryFrom<LinkError> for v5::PublishAck {
    type Error = LinkError;

    fn try_from(err: LinkError) -> Result<Self, Self::Error> {
        Err(err)
    }
}

/// One accepted peer connection.
#[derive(Clone)]
struct Peer {
    /// The peer's node name (the link's client id).
    name: String,
    stats: Arc<PeerStats>,
}

/// Equal without an early exit, so the comparison time does not tell how much of a guessed
/// secret was right.
fn same_secret(given: &[u8], secret: &[u8]) -> bool {
    let mut diff = given.len() ^ secret.len();
    for (i, s) in secret.iter().enumerate() {
        diff |= usize::from(given.get(i).copied().unwrap_or(0) ^ s);
    }
    diff == 0
}

/// The ntex-mqtt settings of the link listener: packets as large as clients may send.
pub fn config(config: &BrokerConfig) -> SharedCfg {
    let max_packet = u32::try_from(config.limits.max_packet_size.as_u64()).unwrap_or(u32::MAX);
    SharedCfg::new(SERVICE_NAME)
        .add(
            MqttServiceConfig::new()
                .set_max_qos(QoS::AtLeastOnce)
                // Room for the properties the link adds around a client's largest packet, and
                // for a session handed over with its queue (see `takeover`).
                .set_max_size(
                    max_packet.saturating_add(64 * 1024).max(super::takeover::MAX_HANDOVER + 64 * 1024),
                )
                .set_max_receive(256)
                .set_connect_timeout(Seconds(10)),
        )
        .into()
}

/// The service factory for the link listener.
pub fn factory<F: ntex::io::Filter>(
    cluster: Arc<Cluster>,
    broker: Broker,
) -> impl ServiceFactory<Io<F>, SharedCfg, Response = (), Error = MqttError<LinkError>, InitError = ()> {
    let secret = cluster.identity().secret;
    let control = cluster.clone();
    v5::MqttServer::new(fn_service(move |h: v5::Handshake| {
        let secret = secret.clone();
        let cluster = cluster.clone();
        async move {
            let pkt = h.packet();
            let password_ok = match &secret {
                None => true,
                Some(secret) => pkt.password.as_ref().is_some_and(|p| same_secret(p, secret.as_bytes())),
            };
            let user_ok = pkt.username.as_deref() == Some(LINK_USER);
            let name = pkt.client_id.to_string();
            if !password_ok || !user_ok || fleetmq_config::cluster::node_name(&name).is_err() {
                tracing::warn!(
                    client_id = %name,
                    "cluster link: connection refused (wrong user name, secret or node name)"
                );
                return Ok::<_, LinkError>(h.failed(v5::codec::ConnectAckReason::BadUserNameOrPassword));
            }
            tracing::debug!(peer = %name, "cluster link: peer connected");
            Ok(h.ack(Peer { stats: cluster.stats_for(&name), name }))
        }
    }))
    .publish(fn_factory_with_config(move |session: v5::Session<Peer>| {
        let broker = broker.clone();
        let stats = session.stats.clone();
        let from = session.name.clone();
        let cluster = control.clone();
        async move {
            Ok::<_, LinkError>(fn_service(move |publish: v5::Publish| {
                let broker = broker.clone();
                let stats = stats.clone();
                let from = from.clone();
                let cluster = cluster.clone();
                async move {
                    let payload = publish.read_all().await.map_err(|e| LinkError(format!("{e:?}")))?;
                    let topic = publish.packet().topic.clone();
                    if topic.starts_with(super::takeover::CONTROL_PREFIX) {
                        cluster.on_control(&broker, &from, &topic, &payload).await;
                        return Ok::<_, LinkError>(publish.ack());
                    }
                    let (message, groups) = wire::message(publish.packet(), payload, Instant::now());
                    if crate::core::topic::validate_topic_name(&message.topic, usize::MAX).is_ok() {
                        broker.publish_from_peer(message, groups);
                        PeerStats::add(&stats.forwarded_in, 1);
                    }
                    Ok::<_, LinkError>(publish.ack())
                }
            }))
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cre", b"s3cret"));
        assert!(!same_secret(b"s3cret!", b"s3cret"));
        assert!(!same_secret(b"", b"s3cret"));
        assert!(!same_secret(b"S3cret", b"s3cret"));
    }
}
