//! The remote side of a bridge over ntex-mqtt's clients (v5 or v3.1.1, plain or TLS),
//! behind one small interface so the forwarding logic in `link` is written once.

use std::future::Future;
use std::time::Duration;

use fleetmq_config::{Bridge, BridgeProtocol};
use ntex::connect::Address;
use ntex::service::cfg::SharedCfg;
use ntex::service::{ServiceFactory, fn_service};
use ntex::time::Seconds;
use ntex::util::{ByteString, Bytes};
use ntex_mqtt::error::{ClientError, SendPacketError};
use ntex_mqtt::{v3, v5};
use ntex_tls::rustls::TlsConnector;

use super::tls::Target;
use crate::core::types::{Properties, QoS};

/// TCP connect plus CONNECT/CONNACK, per address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected remote, before its dispatcher runs.
pub(super) enum Client {
    /// MQTT 5.0.
    V5(v5::client::Client),
    /// MQTT 3.1.1.
    V3(v3::client::Client),
}

/// Sends to the remote.
#[derive(Clone)]
pub(super) enum Sink {
    /// MQTT 5.0.
    V5(v5::MqttSink),
    /// MQTT 3.1.1.
    V3(v3::MqttSink),
}

/// A QoS 2 message the remote has received (PUBREC): the PUBREL/PUBCOMP exchange, not started
/// until awaited (ntex-mqtt does not name its `PublishReceived` types publicly).
pub(super) struct Received(std::pin::Pin<Box<dyn Future<Output = Result<(), SendPacketError>>>>);

/// A PUBLISH from the remote, payload read.
pub(super) struct Inbound {
    pub topic: String,
    pub qos: QoS,
    pub retain: bool,
    pub payload: Bytes,
    /// v5 application properties (none on 3.1.1 links).
    pub properties: Option<Box<Properties>>,
    /// v5 Message Expiry Interval as received (the remote already subtracted its own wait).
    pub expiry_interval: Option<u32>,
}

/// What a PUBLISH to the remote carries besides topic, payload and flags. 3.1.1 links cannot
/// carry it and drop it.
#[derive(Debug, Default, Clone)]
pub(super) struct Outbound {
    /// v5 application properties, forwarded unchanged.
    pub properties: Option<Box<Properties>>,
    /// Seconds the message has left (MQTT 5.0 §3.3.2.3.3: the remaining lifetime is sent).
    pub expiry_interval: Option<u32>,
}

fn properties_out(props: &mut v5::codec::PublishProperties, out: &Outbound) {
    if let Some(p) = &out.properties {
        props.is_utf8_payload = p.payload_is_utf8;
        props.content_type = p.content_type.clone();
        props.response_topic = p.response_topic.clone();
        props.correlation_data = p.correlation_data.clone();
        props.user_properties = p.user_properties.clone();
    }
    props.message_expiry_interval = out.expiry_interval.and_then(std::num::NonZeroU32::new);
}

/// The bridge's will on the remote (`notifications.remote`): a retained `0` on the state
/// topic, published by the remote when the link dies without DISCONNECT.
fn will_topic(config: &Bridge) -> Option<ByteString> {
    config.notifications.remote.then(|| ByteString::from(config.remote_state_topic()))
}

/// What the local side made of an [`Inbound`] message.
pub(super) enum Handled {
    /// Published here (durably): acknowledge.
    Accepted,
    /// Refused here for good (bad topic): acknowledge (v5 with an error reason) so the remote
    /// does not send it again.
    Refused,
    /// Could not be stored: v5 answers with an error reason, v3 (which has none) closes the
    /// connection so the remote sends it again.
    Failed(String),
}

/// Why the inbound handler gave up on the connection (v3 only).
#[derive(Debug)]
struct InboundError(#[expect(dead_code, reason = "read through Debug in the connection error")] String);

fn qos_from(qos: ntex_mqtt::QoS) -> QoS {
    match qos {
        ntex_mqtt::QoS::AtMostOnce => QoS::AtMostOnce,
        ntex_mqtt::QoS::AtLeastOnce => QoS::AtLeastOnce,
        ntex_mqtt::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn qos_to(qos: QoS) -> ntex_mqtt::QoS {
    match qos {
        QoS::AtMostOnce => ntex_mqtt::QoS::AtMostOnce,
        QoS::AtLeastOnce => ntex_mqtt::QoS::AtLeastOnce,
        QoS::ExactlyOnce => ntex_mqtt::QoS::ExactlyOnce,
    }
}

/// Connects to `address` (plain, or TLS with `tls`), speaking the configured protocol.
pub(super) async fn connect(
    config: &Bridge,
    address: &str,
    password: Option<&str>,
    tls: Option<&(std::sync::Arc<rustls::ClientConfig>, Option<String>)>,
) -> Result<Client, String> {
    match tls {
        None => connect_to(config, address.to_string(), password, None).await.map_err(Failure::into_message),
        Some((tls_config, server_name)) => {
            let target = resolve(address, server_name.as_deref()).await?;
            match connect_to(config, target.clone(), password, Some(tls_config.clone())).await {
                Ok(client) => Ok(client),
                Err(Failure::Other(err)) => {
                    // ntex reports a failed handshake as a closed connection; find out why.
                    let config = tls_config.clone();
                    let probe = target.clone();
                    let reason = tokio::task::spawn_blocking(move || super::tls::diagnose(config, &probe))
                        .await
                        .ok()
                        .flatten();
                    Err(match reason {
                        Some(reason) => format!("TLS handshake with {} failed: {reason}", target.addr),
                        None => err,
                    })
                }
                Err(failure) => Err(failure.into_message()),
            }
        }
    }
}

/// Why one connect attempt failed.
enum Failure {
    /// The remote answered CONNACK with an error.
    Refused(String),
    /// No answer within [`CONNECT_TIMEOUT`].
    TimedOut(String),
    /// Anything else: refused or reset TCP connection, failed TLS handshake, codec error.
    Other(String),
}

impl Failure {
    fn into_message(self) -> String {
        match self {
            Failure::Refused(m) | Failure::TimedOut(m) | Failure::Other(m) => m,
        }
    }
}

async fn connect_to<A: Address + Clone>(
    config: &Bridge,
    addr: A,
    password: Option<&str>,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> Result<Client, Failure> {
    let keepalive = Seconds(u16::try_from(config.keepalive.as_secs()).unwrap_or(u16::MAX));
    match config.protocol {
        BridgeProtocol::V5 => {
            let mut req = v5::client::Connect::new(addr)
                .client_id(config.remote_client_id())
                .keep_alive(keepalive)
                .packet(|pkt| {
                    // The codec's default is a clean start; a bridge keeps its remote session.
                    pkt.clean_start = config.clean_session;
                    pkt.session_expiry_interval_secs = match config.session_expiry {
                        Some(d) => u32::try_from(d.as_secs()).unwrap_or(u32::MAX - 1),
                        None if config.clean_session => 0,
                        None => u32::MAX,
                    };
                });
            if let Some(topic) = will_topic(config) {
                req = req.last_will(v5::codec::LastWill {
                    qos: ntex_mqtt::QoS::AtLeastOnce,
                    retain: true,
                    topic,
                    message: Bytes::from_static(b"0"),
                    will_delay_interval_sec: None,
                    correlation_data: None,
                    message_expiry_interval: None,
                    content_type: None,
                    user_properties: Vec::new(),
                    is_utf8_payload: None,
                    response_topic: None,
                });
            }
            if let Some(user) = &config.username {
                req = req.username(user.as_str().into());
            }
            if let Some(password) = password {
                req = req.password(Bytes::copy_from_slice(password.as_bytes()));
            }
            let client = match tls {
                None => attempt(v5::client::MqttConnector::new(), req).await,
                Some(tls) => {
                    attempt(v5::client::MqttConnector::new().connector(TlsConnector::from(tls)), req).await
                }
            };
            client.map(Client::V5)
        }
        BridgeProtocol::V3_1_1 => {
            let mut req =
                v3::client::Connect::new(addr).client_id(config.remote_client_id()).keep_alive(keepalive);
            if config.clean_session {
                req = req.clean_session();
            }
            if let Some(topic) = will_topic(config) {
                req = req.last_will(v3::codec::LastWill {
                    qos: ntex_mqtt::QoS::AtLeastOnce,
                    retain: true,
                    topic,
                    message: Bytes::from_static(b"0"),
                });
            }
            if let Some(user) = &config.username {
                req = req.username(user.as_str());
            }
            if let Some(password) = password {
                req = req.password(Bytes::copy_from_slice(password.as_bytes()));
            }
            let client = match tls {
                None => attempt(v3::client::MqttConnector::new(), req).await,
                Some(tls) => {
                    attempt(v3::client::MqttConnector::new().connector(TlsConnector::from(tls)), req).await
                }
            };
            client.map(Client::V3)
        }
    }
}

/// Resolves `host:port` for a TLS connection; the certificate is checked against
/// `server_name` or else the host.
async fn resolve(address: &str, server_name: Option<&str>) -> Result<Target, String> {
    let addr = tokio::net::lookup_host(address)
        .await
        .map_err(|err| format!("cannot resolve: {err}"))?
        .next()
        .ok_or_else(|| "no address found".to_string())?;
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok(Target { server_name: server_name.unwrap_or(host).to_string(), addr })
}

/// One CONNECT attempt through `factory`, bounded by [`CONNECT_TIMEOUT`].
async fn attempt<R, F, C, Ack>(factory: F, req: R) -> Result<C, Failure>
where
    F: ServiceFactory<R, SharedCfg, Response = C, Error = ClientError<Ack>>,
    F::InitError: std::fmt::Debug,
    Ack: std::fmt::Debug,
{
    let service = factory
        .pipeline(SharedCfg::default())
        .await
        .map_err(|err| Failure::Other(format!("cannot create the connector: {err:?}")))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, service.call(req)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(ClientError::Ack(ack))) => Err(Failure::Refused(format!("refused by the remote: {ack:?}"))),
        Ok(Err(err)) => Err(Failure::Other(err.to_string())),
        Err(_) => Err(Failure::TimedOut(format!("timed out after {CONNECT_TIMEOUT:?}"))),
    }
}

impl Client {
    /// Sends to this connection.
    pub(super) fn sink(&self) -> Sink {
        match self {
            Client::V5(c) => Sink::V5(c.sink()),
            Client::V3(c) => Sink::V3(c.sink()),
        }
    }

    /// The remote's Receive Maximum (v3 has none).
    pub(super) fn receive_max(&self) -> u16 {
        match self {
            Client::V5(c) => c.packet().receive_max.get(),
            Client::V3(_) => u16::MAX,
        }
    }

    /// Runs the connection until it closes, passing every remote PUBLISH to `handler`;
    /// returns why it ended.
    pub(super) async fn run<H, F>(self, handler: H) -> String
    where
        H: Fn(Inbound) -> F + Clone + 'static,
        F: Future<Output = Handled> + 'static,
    {
        let result = match self {
            Client::V5(client) => client
                .start(fn_service(move |msg: v5::client::ProtocolMessage| {
                    let handler = handler.clone();
                    async move {
                        let v5::client::ProtocolMessage::Publish(publish) = msg else { return Ok(msg.ack()) };
                        let pkt = publish.packet();
                        let (topic, qos, retain) = (pkt.topic.to_string(), qos_from(pkt.qos), pkt.retain);
                        let properties = crate::frontend::v5::properties_in(&pkt.properties);
                        let expiry_interval =
                            pkt.properties.message_expiry_interval.map(std::num::NonZeroU32::get);
                        let payload = publish.read_all().await.map_err(|e| InboundError(format!("{e:?}")))?;
                        let inbound = Inbound { topic, qos, retain, payload, properties, expiry_interval };
                        let reason = match handler(inbound).await {
                            Handled::Accepted => v5::codec::PublishAckReason::Success,
                            Handled::Refused => v5::codec::PublishAckReason::TopicNameInvalid,
                            Handled::Failed(_) => v5::codec::PublishAckReason::UnspecifiedError,
                        };
                        Ok::<_, InboundError>(publish.ack(reason))
                    }
                }))
                .await
                .map_err(|e| format!("{e:?}")),
            Client::V3(client) => client
                .start(fn_service(move |msg: v3::client::ProtocolMessage| {
                    let handler = handler.clone();
                    async move {
                        let v3::client::ProtocolMessage::Publish(publish) = msg else { return Ok(msg.ack()) };
                        let pkt = publish.packet();
                        let (topic, qos, retain) = (pkt.topic.to_string(), qos_from(pkt.qos), pkt.retain);
                        let payload = publish.read_all().await.map_err(|e| InboundError(format!("{e:?}")))?;
                        let inbound =
                            Inbound { topic, qos, retain, payload, properties: None, expiry_interval: None };
                        match handler(inbound).await {
                            Handled::Accepted | Handled::Refused => Ok(publish.ack()),
                            Handled::Failed(reason) => Err(InboundError(reason)),
                        }
                    }
                }))
                .await
                .map_err(|e| format!("{e:?}")),
        };
        match result {
            Ok(()) => "the remote closed the connection".to_string(),
            Err(err) => format!("connection error: {err}"),
        }
    }
}

impl Sink {
    /// Whether the connection is open.
    pub(super) fn is_open(&self) -> bool {
        match self {
            Sink::V5(s) => s.is_open(),
            Sink::V3(s) => s.is_open(),
        }
    }

    /// Whether a QoS 1/2 publish can go now (the remote's Receive Maximum).
    pub(super) fn is_ready(&self) -> bool {
        match self {
            Sink::V5(s) => s.is_ready(),
            Sink::V3(s) => s.is_ready(),
        }
    }

    /// Resolves when publishing may continue; false when the connection closed.
    pub(super) async fn ready(&self) -> bool {
        match self {
            Sink::V5(s) => s.ready().await,
            Sink::V3(s) => s.ready().await,
        }
    }

    /// Closes the connection (DISCONNECT).
    pub(super) fn close(&self) {
        match self {
            Sink::V5(s) => s.close(),
            Sink::V3(s) => s.close(),
        }
    }

    /// Subscribes to `filters`; returns per filter whether the remote granted it. `no_local`
    /// applies to v5 only (v3 cannot express it).
    pub(super) async fn subscribe(&self, filters: &[(String, QoS)]) -> Result<Vec<bool>, SendPacketError> {
        match self {
            Sink::V5(s) => {
                let mut sub = s.subscribe(None);
                for (filter, qos) in filters {
                    sub = sub.topic_filter(
                        filter.as_str().into(),
                        v5::codec::SubscriptionOptions {
                            qos: qos_to(*qos),
                            // What the bridge forwards out must not come back (`both` rules).
                            no_local: true,
                            retain_as_published: true,
                            retain_handling: v5::codec::RetainHandling::AtSubscribeNew,
                        },
                    );
                }
                let ack = sub.send().await?;
                Ok(ack.status.iter().map(|code| (*code as u8) < 0x80).collect())
            }
            Sink::V3(s) => {
                let mut sub = s.subscribe();
                for (filter, qos) in filters {
                    sub = sub.topic_filter(filter.as_str().into(), qos_to(*qos));
                }
                let codes = sub.send().await?;
                Ok(codes.iter().map(|c| !matches!(c, v3::codec::SubscribeReturnCode::Failure)).collect())
            }
        }
    }

    /// QoS 0 publish.
    pub(super) fn publish_qos0(&self, topic: String, payload: Bytes, retain: bool, out: &Outbound) -> bool {
        match self {
            Sink::V5(s) => s
                .publish(topic)
                .retain(retain)
                .properties(|p| properties_out(p, out))
                .send_at_most_once(payload)
                .is_ok(),
            Sink::V3(s) => {
                let publish = s.publish(topic);
                let publish = if retain { publish.retain() } else { publish };
                publish.send_at_most_once(payload).is_ok()
            }
        }
    }

    /// QoS 1 publish; the packet is encoded now (call only when [`Sink::is_ready`]), the
    /// future resolves on PUBACK with whether the remote accepted it.
    pub(super) fn publish_qos1(
        &self,
        topic: String,
        payload: Bytes,
        retain: bool,
        out: &Outbound,
    ) -> impl Future<Output = Result<bool, SendPacketError>> + 'static {
        let v5 = match self {
            Sink::V5(s) => Some(
                s.publish(topic.clone())
                    .retain(retain)
                    .properties(|p| properties_out(p, out))
                    .send_at_least_once(payload.clone()),
            ),
            Sink::V3(_) => None,
        };
        let v3 = match self {
            Sink::V3(s) => {
                let publish = s.publish(topic);
                let publish = if retain { publish.retain() } else { publish };
                Some(publish.send_at_least_once(payload))
            }
            Sink::V5(_) => None,
        };
        async move {
            match (v5, v3) {
                (Some(v5), _) => v5.await.map(|ack| (ack.reason_code as u8) < 0x80),
                (None, Some(v3)) => v3.await.map(|()| true),
                (None, None) => Err(SendPacketError::Disconnected),
            }
        }
    }

    /// QoS 2 publish; resolves on PUBREC.
    pub(super) fn publish_qos2(
        &self,
        topic: String,
        payload: Bytes,
        retain: bool,
        out: &Outbound,
    ) -> impl Future<Output = Result<Received, SendPacketError>> + 'static {
        let v5 = match self {
            Sink::V5(s) => Some(
                s.publish(topic.clone())
                    .retain(retain)
                    .properties(|p| properties_out(p, out))
                    .send_exactly_once(payload.clone()),
            ),
            Sink::V3(_) => None,
        };
        let v3 = match self {
            Sink::V3(s) => {
                let publish = s.publish(topic);
                let publish = if retain { publish.retain() } else { publish };
                Some(publish.send_exactly_once(payload))
            }
            Sink::V5(_) => None,
        };
        async move {
            match (v5, v3) {
                (Some(v5), _) => v5.await.map(|r| Received(Box::pin(r.release()))),
                (None, Some(v3)) => v3.await.map(|r| Received(Box::pin(r.release()))),
                (None, None) => Err(SendPacketError::Disconnected),
            }
        }
    }
}

impl Received {
    /// Sends PUBREL and waits for PUBCOMP.
    pub(super) async fn release(self) -> Result<(), SendPacketError> {
        self.0.await
    }
}
