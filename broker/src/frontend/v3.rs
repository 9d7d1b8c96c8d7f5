//! MQTT 3.1 / 3.1.1 front end.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::num::{NonZeroU16, NonZeroU32};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use tracing::Instrument as _;

use ntex::io::IoRef;
use ntex::io::types::PeerAddr;
use ntex::service::cfg::SharedCfg;
use ntex::service::{Middleware, Service, ServiceCtx, ServiceFactory, fn_factory_with_config, fn_service};
use ntex::time::Seconds;
use ntex_mqtt::Control;
use ntex_mqtt::error::{DispatcherError, ProtocolError};
use ntex_mqtt::v3::{self, codec};

use super::writer::{self, Sent, Wire, Writer};
use super::{
    ConnState, FrontendError, InboundPublish, ListenerContext, PendingAcks, PublishOutcome, display_peer,
    preamble,
};
use crate::core::admin::ConnectionInfo;
use crate::core::broker::{ConnectError, ConnectRequest, DisconnectKind, SubscribeRequest};
use crate::core::session::{Expiry, Kick, Outgoing, Will};
use crate::core::topic;
use crate::core::types::{ByteString, Message, ProtocolVersion, QoS, SubscriptionOptions};

/// v3 connection state.
pub struct ConnV3 {
    pub(crate) common: ConnState,
    pub(crate) io: IoRef,
}

impl std::ops::Deref for ConnV3 {
    type Target = ConnState;
    fn deref(&self) -> &ConnState {
        &self.common
    }
}

impl std::fmt::Debug for ConnV3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.common.fmt(f)
    }
}

fn qos_in(qos: codec::QoS) -> QoS {
    match qos {
        codec::QoS::AtMostOnce => QoS::AtMostOnce,
        codec::QoS::AtLeastOnce => QoS::AtLeastOnce,
        codec::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn qos_out(qos: QoS) -> codec::QoS {
    match qos {
        QoS::AtMostOnce => codec::QoS::AtMostOnce,
        QoS::AtLeastOnce => codec::QoS::AtLeastOnce,
        QoS::ExactlyOnce => codec::QoS::ExactlyOnce,
    }
}

/// Idle timeout for a v3 client, or why its keep-alive is refused. v3 cannot be told a
/// different value, so (as in Mosquitto) a client above `limits.max_keepalive`, or asking for
/// none while a maximum is configured, is refused.
fn idle_timeout(requested: u16, max: u16) -> Result<Seconds, String> {
    if max != u16::MAX && (requested == 0 || requested > max) {
        return Err(format!("keep-alive {requested}s is not within 1..={max}s (limits.max_keepalive)"));
    }
    if requested == 0 {
        return Ok(Seconds::ZERO);
    }
    // MQTT 3.1.1 §3.1.2.10: one and a half keep-alive periods.
    Ok(Seconds(requested.saturating_add(requested.div_ceil(2))))
}

fn will_in(w: &codec::LastWill, max_levels: usize) -> Result<Will, String> {
    topic::validate_topic_name(&w.topic, max_levels).map_err(|e| format!("will topic: {e}"))?;
    if w.topic.starts_with('$') {
        return Err("will topic must not start with '$'".to_string());
    }
    Ok(Will {
        message: Message::new(w.topic.clone(), w.message.clone(), qos_in(w.qos), w.retain),
        expiry_interval: None,
        delay: Duration::ZERO,
    })
}

/// Handles CONNECT for MQTT 3.1 and 3.1.1.
pub async fn handshake(
    h: v3::Handshake,
    ctx: Rc<ListenerContext>,
) -> Result<v3::HandshakeAck<ConnV3>, FrontendError> {
    let peer = h.io().query::<PeerAddr>().get().map(|p| p.0);
    let span = super::connect_span(&h.packet().client_id, peer, &ctx.name);
    connect(h, ctx).instrument(span).await
}

async fn connect(
    h: v3::Handshake,
    ctx: Rc<ListenerContext>,
) -> Result<v3::HandshakeAck<ConnV3>, FrontendError> {
    let broker = &ctx.broker;
    let config = broker.config();
    let limits = &config.limits;
    let io = h.io().get_ref();
    let protocol = if preamble::take_mark(&io) { ProtocolVersion::V3_1 } else { ProtocolVersion::V3_1_1 };
    let pkt = h.packet();
    let peer = h.io().query::<PeerAddr>().get().map(|p| p.0);
    let client_id = pkt.client_id.clone();
    let refused = |reason: &str| {
        super::record_connect(protocol, reason);
        broker.metrics().connection(false);
        tracing::info!(
            client_id = %client_id,
            peer = %display_peer(peer),
            protocol = protocol.as_str(),
            "connection refused: {reason}"
        );
    };
    let max_packet = u32::try_from(limits.max_packet_size.as_u64()).unwrap_or(u32::MAX);
    if super::packet_size(h.packet_size()) > u64::from(max_packet) {
        // v3 has no CONNACK code for this: close without one, as Mosquitto does.
        let reason = format!(
            "CONNECT of {} bytes exceeds limits.max_packet_size ({max_packet} bytes)",
            super::packet_size(h.packet_size())
        );
        tracing::warn!(client_id = %client_id, peer = %display_peer(peer), "{reason}");
        refused(&reason);
        return Err(FrontendError);
    }
    let timeout = match idle_timeout(pkt.keep_alive, limits.max_keepalive) {
        Ok(t) => t,
        Err(reason) => {
            refused(&reason);
            return Ok(h.identifier_rejected());
        }
    };
    let will =
        match pkt.last_will.as_ref().map(|w| will_in(w, usize::from(limits.max_topic_levels))).transpose() {
            Ok(will) => will,
            Err(reason) => {
                // v3 has no "topic invalid" CONNACK code; "not authorized" is what Mosquitto's
                // ACL check answers for a will it will not publish.
                refused(&reason);
                return Ok(h.not_authorized());
            }
        };
    let expiry = if pkt.clean_session {
        Expiry::OnDisconnect
    } else {
        config.sessions.persistent_session_expiry.map_or(Expiry::Never, Expiry::After)
    };
    let keep_alive = pkt.keep_alive;
    let (username, credentials) =
        match ctx.credentials(&h.io().get_ref(), pkt.username.as_ref(), pkt.password.as_ref()) {
            Ok(found) => found,
            Err(reason) => {
                broker.metrics().auth_failure();
                refused(reason);
                return Ok(h.not_authorized());
            }
        };
    if let Err(err) = broker.authenticate(credentials).await {
        refused(&err.to_string());
        return Ok(match err {
            ConnectError::BadCredentials => h.bad_username_or_pwd(),
            _ => h.not_authorized(),
        });
    }
    let request = ConnectRequest {
        client_id: client_id.clone(),
        clean_start: pkt.clean_session,
        expiry,
        will,
        protocol,
        receive_max: u16::MAX,
        username: username.clone(),
        password: pkt.password.clone(),
        peer,
    };
    // In a cluster, the client's session may live on another node: take it over first.
    // Held until the CONNECT is done, so a peer claiming the same client id meanwhile loses.
    // Either way, a node that has just started admits clients once it knows the cluster.
    let _claim = match crate::cluster::Cluster::of(broker) {
        Some(cluster) if !client_id.is_empty() => match cluster.claim(broker, &client_id).await {
            Some(guard) => Some(guard),
            None => {
                refused("the same client id is connecting on another node right now");
                return Ok(h.service_unavailable());
            }
        },
        Some(cluster) => {
            cluster.joined().await;
            None
        }
        None => None,
    };
    // A listener slot first (per-listener max_connections), then the broker's own checks.
    let (connected, slot) = match ctx.slot().and_then(|slot| broker.connect(request).map(|c| (c, slot))) {
        Ok(pair) => pair,
        Err(err) => {
            refused(&err.to_string());
            return Ok(match err {
                ConnectError::NotAuthorized => h.not_authorized(),
                ConnectError::BadCredentials => h.bad_username_or_pwd(),
                ConnectError::ClientIdRejected => h.identifier_rejected(),
                ConnectError::QuotaExceeded | ConnectError::ServerUnavailable => h.service_unavailable(),
            });
        }
    };
    let id = connected.assigned_client_id.clone().unwrap_or(client_id);
    broker.set_connection_info(
        &connected.session,
        connected.generation,
        ConnectionInfo {
            peer,
            protocol,
            keep_alive,
            listener: ctx.name.clone(),
            username: pkt.username.clone(),
            connected_at: SystemTime::now(),
        },
    );
    tracing::info!(
        client_id = %id,
        peer = %display_peer(peer),
        listener = %ctx.name,
        protocol = protocol.as_str(),
        keep_alive,
        clean_session = !connected.session_present,
        "client connected"
    );
    super::record_connect(protocol, "accepted");
    let state = ConnV3 {
        io,
        common: ConnState {
            broker: broker.clone(),
            session: connected.session.clone(),
            generation: connected.generation,
            signal: connected.signal.clone(),
            client_id: id,
            protocol,
            peer,
            listener: ctx.name.clone(),
            _slot: slot,
            disconnect: Cell::new(None),
            close_reason: RefCell::new(None),
            connected_at: Instant::now(),
        },
    };
    let ack = h.ack(state, connected.session_present).idle_timeout(timeout);
    Ok(match NonZeroU32::new(super::remaining_limit(max_packet)) {
        Some(max) => ack.max_packet_size(max),
        None => ack,
    })
}

/// Control service: records why a connection stops.
pub fn control() -> impl ServiceFactory<
    Control<FrontendError>,
    v3::Session<ConnV3>,
    Response = Option<codec::Encoded>,
    Error = FrontendError,
    InitError = FrontendError,
> {
    fn_factory_with_config(async |session: v3::Session<ConnV3>| {
        Ok(fn_service(move |msg: Control<FrontendError>| {
            if let Control::Stop(reason) = &msg {
                session.set_close_reason(super::v5::stop_reason(reason, &session.client_id));
            }
            async { Ok(None) }
        }))
    })
}

/// PING and DISCONNECT acknowledgements (everything else is handled by [`Inbound`]).
pub fn protocol() -> impl ServiceFactory<
    v3::ProtocolMessage,
    v3::Session<ConnV3>,
    Response = v3::ProtocolMessageAck,
    Error = FrontendError,
    InitError = FrontendError,
> {
    fn_factory_with_config(async |_: v3::Session<ConnV3>| {
        Ok(fn_service(async |msg: v3::ProtocolMessage| Ok(msg.ack())))
    })
}

/// Never called: [`Inbound`] handles every PUBLISH before ntex-mqtt's dispatcher.
pub fn publish_unused() -> impl ServiceFactory<
    v3::Publish,
    v3::Session<ConnV3>,
    Response = (),
    Error = FrontendError,
    InitError = FrontendError,
> {
    fn_factory_with_config(async |_: v3::Session<ConnV3>| {
        Ok(fn_service(async |_: v3::Publish| Err::<(), _>(FrontendError)))
    })
}

/// Middleware in front of ntex-mqtt's v3 dispatcher (see [`super::v5::Inbound`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Inbound;

impl<S> Middleware<S, (SharedCfg, v3::Session<ConnV3>)> for Inbound {
    type Service = InboundService<S>;

    fn create(&self, inner: S, (_, session): (SharedCfg, v3::Session<ConnV3>)) -> Self::Service {
        let conn: &ConnV3 = &session;
        let wire = Wire3 {
            client_id: conn.client_id.clone(),
            io: conn.io.clone(),
            sink: session.sink().clone(),
            codec: codec::Codec::default(),
        };
        let acks = Rc::new(PendingAcks::default());
        ntex::rt::spawn(writer::run(Writer {
            wire,
            broker: conn.broker.clone(),
            session: conn.session.clone(),
            generation: conn.generation,
            signal: conn.signal.clone(),
            acks: acks.clone(),
        }));
        let max_packet = conn.broker.config().limits.max_packet_size.as_u64();
        let rate = super::PublishRate::new(conn.broker.config().limits.max_publish_rate);
        InboundService {
            inner,
            session,
            codec: codec::Codec::default(),
            max_packet,
            assembly: super::PayloadAssembly::default(),
            rate,
            acks,
        }
    }
}

/// Per-connection service created by [`Inbound`].
pub struct InboundService<S> {
    inner: S,
    session: v3::Session<ConnV3>,
    codec: codec::Codec,
    max_packet: u64,
    /// PUBLISH whose payload is still arriving.
    assembly: super::PayloadAssembly<codec::Publish>,
    /// `limits.max_publish_rate` of this connection.
    rate: Option<super::PublishRate>,
    /// Acknowledgements waiting for the store (sent by the writer).
    acks: Rc<PendingAcks<Ack3>>,
}

/// A v3 acknowledgement held until durable.
#[derive(Debug, Clone, Copy)]
pub enum Ack3 {
    /// PUBACK for a QoS 1 PUBLISH.
    Puback(NonZeroU16),
    /// PUBREC for a QoS 2 PUBLISH.
    Pubrec(NonZeroU16),
    /// PUBREL answering a PUBREC.
    Pubrel(NonZeroU16),
}

impl Ack3 {
    /// Whether this confirms a PUBLISH (rather than answering a PUBREC).
    fn confirms_publish(self) -> bool {
        matches!(self, Ack3::Puback(_) | Ack3::Pubrec(_))
    }

    fn packet(self) -> codec::Packet {
        match self {
            Ack3::Puback(packet_id) => codec::Packet::PublishAck { packet_id },
            Ack3::Pubrec(packet_id) => codec::Packet::PublishReceived { packet_id },
            Ack3::Pubrel(packet_id) => codec::Packet::PublishRelease { packet_id },
        }
    }
}

type Res<E> = Result<Option<codec::Encoded>, DispatcherError<E>>;

impl<S, E> Service<codec::Decoded> for InboundService<S>
where
    S: Service<codec::Decoded, Response = Option<codec::Encoded>, Error = DispatcherError<E>>,
{
    type Response = Option<codec::Encoded>;
    type Error = DispatcherError<E>;

    async fn ready(&self, ctx: ServiceCtx<'_, Self>) -> Result<(), Self::Error> {
        // Over limits.max_publish_rate: not ready, so ntex stops reading this socket.
        if let Some(rate) = &self.rate
            && rate.wait().await
        {
            self.session.broker.metrics().publish_throttled();
        }
        ctx.ready(&self.inner).await
    }
    ntex::forward_poll!(inner);
    ntex::forward_shutdown!(inner);

    async fn call(&self, req: codec::Decoded, ctx: ServiceCtx<'_, Self>) -> Res<E> {
        let conn = &*self.session;
        if let codec::Decoded::Publish(_, _, size) | codec::Decoded::Packet(_, size) = &req
            && super::packet_size(*size) > self.max_packet
        {
            // ntex-mqtt bounds the Remaining Length; the limit is on the whole packet.
            let reason = format!(
                "packet of {} bytes exceeds limits.max_packet_size ({} bytes)",
                super::packet_size(*size),
                self.max_packet
            );
            tracing::warn!(client_id = %conn.client_id, "{reason}; disconnecting");
            conn.set_close_reason(format!("packet too large: {reason}"));
            self.session.sink().close();
            return Ok(None);
        }
        match req {
            codec::Decoded::Publish(pkt, payload, size) => {
                if let Some(rate) = &self.rate {
                    rate.take();
                }
                let expected = pkt.payload_size as usize;
                match self.assembly.start(pkt, payload, expected, size) {
                    Some((pkt, payload, size)) => self.on_publish(pkt, payload, size),
                    None => Ok(None),
                }
            }
            codec::Decoded::PayloadChunk(chunk, eof) => match self.assembly.chunk(&chunk, eof) {
                Ok(Some((pkt, payload, size))) => self.on_publish(pkt, payload, size),
                Ok(None) => Ok(None),
                Err(reason) => Err(ProtocolError::generic_violation(reason).into()),
            },
            codec::Decoded::Packet(pkt, size) => match pkt {
                codec::Packet::PublishAck { packet_id } => {
                    conn.broker.puback(&conn.session, packet_id.get());
                    Ok(None)
                }
                codec::Packet::PublishReceived { packet_id } => {
                    // v3 always releases, known id or not; after the release is stored, so a
                    // restart re-sends the PUBREL rather than the PUBLISH.
                    let (_, durable) = conn.broker.pubrec(&conn.session, packet_id.get(), conn.generation);
                    Ok(self.ready_ack(durable, Ack3::Pubrel(packet_id)))
                }
                codec::Packet::PublishComplete { packet_id } => {
                    conn.broker.pubcomp(&conn.session, packet_id.get());
                    Ok(None)
                }
                codec::Packet::PublishRelease { packet_id } => {
                    conn.broker.release_inbound_qos2(&conn.session, packet_id.get());
                    Ok(Some(codec::Encoded::Packet(codec::Packet::PublishComplete { packet_id })))
                }
                codec::Packet::Subscribe { packet_id, topic_filters } => {
                    self.on_subscribe(packet_id, &topic_filters).await
                }
                codec::Packet::Unsubscribe { packet_id, topic_filters } => {
                    conn.broker.unsubscribe(&conn.session, &topic_filters);
                    Ok(Some(codec::Encoded::Packet(codec::Packet::UnsubscribeAck { packet_id })))
                }
                codec::Packet::Connect(_) => {
                    conn.set_close_reason("protocol error: second CONNECT");
                    Err(ProtocolError::generic_violation("second CONNECT on a connection [MQTT-3.1.0-2]")
                        .into())
                }
                codec::Packet::Disconnect => {
                    conn.disconnect.set(Some(DisconnectKind::Normal { publish_will: false, expiry: None }));
                    ctx.call(&self.inner, codec::Decoded::Packet(codec::Packet::Disconnect, size)).await
                }
                other => ctx.call(&self.inner, codec::Decoded::Packet(other, size)).await,
            },
        }
    }
}

impl<S> InboundService<S> {
    /// The acknowledgement to answer with now, if its data is durable and none is held
    /// before it; otherwise the writer sends it later.
    fn ready_ack(&self, durable: crate::store::Durable, ack: Ack3) -> Option<codec::Encoded> {
        let (ack, durable) = self.acks.offer(durable, ack, &self.session.signal)?;
        if durable {
            return Some(codec::Encoded::Packet(ack.packet()));
        }
        if ack.confirms_publish() {
            self.session.set_close_reason("message store unavailable");
        }
        store_failed(&self.session.client_id, self.session.sink(), ack);
        None
    }

    fn on_publish<E>(&self, pkt: codec::Publish, payload: ntex::util::Bytes, size: u32) -> Res<E> {
        let conn = &*self.session;
        if pkt.payload_size as usize != payload.len() {
            return Err(ProtocolError::generic_violation("incomplete PUBLISH payload").into());
        }
        if pkt.topic.is_empty() || pkt.topic.contains(['+', '#']) {
            conn.set_close_reason("protocol error: invalid PUBLISH topic");
            return Err(
                ProtocolError::generic_violation("invalid topic name in PUBLISH [MQTT-3.3.2-2]").into()
            );
        }
        let qos = qos_in(pkt.qos);
        // v3 cannot refuse a PUBLISH: a refused one is still acknowledged and dropped, as
        // Mosquitto does for ACL denials (`publish` logs the reason).
        let (_, durable): (PublishOutcome, _) = conn.publish(InboundPublish {
            topic: pkt.topic,
            payload,
            qos,
            retain: pkt.retain,
            dup: pkt.dup,
            packet_id: pkt.packet_id.map(NonZeroU16::get),
            properties: None,
            expiry_interval: None,
            packet_size: size,
        });
        let Some(packet_id) = pkt.packet_id else { return Ok(None) };
        let ack = if qos == QoS::ExactlyOnce { Ack3::Pubrec(packet_id) } else { Ack3::Puback(packet_id) };
        Ok(self.ready_ack(durable, ack))
    }

    async fn on_subscribe<E>(
        &self,
        packet_id: NonZeroU16,
        filters: &[(ntex::util::ByteString, codec::QoS)],
    ) -> Res<E> {
        let conn = &*self.session;
        let requests: Vec<SubscribeRequest> = filters
            .iter()
            .map(|(filter, qos)| SubscribeRequest {
                filter: filter.clone(),
                options: SubscriptionOptions::with_qos(qos_in(*qos)),
            })
            .collect();
        let (results, retained, durable) = conn.broker.subscribe(&conn.session, &requests);
        let stored = durable.wait().await;
        let status = results
            .iter()
            .zip(&requests)
            .map(|(result, req)| match result {
                Ok(_) if stored.is_err() => codec::SubscribeReturnCode::Failure,
                Ok(qos) => {
                    tracing::debug!(client_id = %conn.client_id, "subscribed to '{}' (QoS {})", req.filter, qos.level());
                    codec::SubscribeReturnCode::Success(qos_out(*qos))
                }
                Err(err) => {
                    tracing::info!(client_id = %conn.client_id, "subscription to '{}' refused: {err}", req.filter);
                    codec::SubscribeReturnCode::Failure
                }
            })
            .collect();
        if let Err(err) = &stored {
            tracing::error!(client_id = %conn.client_id, "subscriptions not stored: {err}");
        }
        // Encode the SUBACK now so retained messages queued next can only follow it.
        let suback = codec::Packet::SubscribeAck { packet_id, status };
        if conn.io.encode(codec::Encoded::Packet(suback), &self.codec).is_err() {
            return Ok(None);
        }
        conn.broker.deliver_retained(&conn.session, retained);
        Ok(None)
    }
}

/// The store could not keep what `ack` would confirm. v3 has no negative acknowledgement:
/// a PUBLISH is refused by closing the connection, so the client re-sends it later or
/// elsewhere; a PUBREL is withheld (the client re-sends its PUBREC on reconnect).
fn store_failed(client_id: &str, sink: &v3::MqttSink, ack: Ack3) {
    if ack.confirms_publish() {
        tracing::error!(client_id, "PUBLISH not acknowledged, closing: message store unavailable");
        sink.close();
    } else {
        tracing::error!(client_id, "PUBREL withheld: message store unavailable");
    }
}

/// Encodes outgoing packets for a v3 client.
struct Wire3 {
    client_id: ByteString,
    io: IoRef,
    sink: v3::MqttSink,
    codec: codec::Codec,
}

impl Wire for Wire3 {
    type Ack = Ack3;

    fn send_ack(&mut self, ack: Ack3, durable: bool) -> Sent {
        if !durable {
            store_failed(&self.client_id, &self.sink, ack);
            return if ack.confirms_publish() { Sent::Closed } else { Sent::Written(0) };
        }
        match self.io.encode(codec::Encoded::Packet(ack.packet()), &self.codec) {
            Ok(()) => Sent::Written(4),
            Err(_) => Sent::Closed,
        }
    }

    fn send(&mut self, item: Outgoing, _now: Instant) -> Sent {
        let (encoded, bytes) = match item {
            Outgoing::Release { packet_id } => {
                let Some(packet_id) = NonZeroU16::new(packet_id) else { return Sent::Written(0) };
                (codec::Encoded::Packet(codec::Packet::PublishRelease { packet_id }), 4)
            }
            Outgoing::Publish { packet_id, delivery, dup } => {
                let message = &delivery.message;
                let pkt = codec::Publish {
                    dup,
                    retain: delivery.retain,
                    qos: qos_out(delivery.qos),
                    topic: message.topic.clone(),
                    packet_id: packet_id.and_then(NonZeroU16::new),
                    payload_size: message.payload.len() as u32,
                };
                let bytes = 6 + message.topic.len() as u64 + message.payload.len() as u64;
                (codec::Encoded::Publish(pkt, Some(message.payload.clone())), bytes)
            }
        };
        match self.io.encode(encoded, &self.codec) {
            Ok(()) => Sent::Written(bytes),
            Err(err) => {
                tracing::debug!("encoding PUBLISH failed: {err}");
                Sent::Closed
            }
        }
    }

    fn close(&mut self, reason: Kick) {
        if reason != Kick::Detached {
            self.sink.close();
        }
    }

    fn is_closed(&self) -> bool {
        self.io.is_closed()
    }

    fn backpressure(&self) -> bool {
        self.io.is_wr_backpressure()
    }

    fn send_now(&self) {
        // An error closes the connection; the writer sees it through `is_closed`.
        let _ = self.io.send_buf();
    }

    fn ready(&self) -> impl Future<Output = bool> {
        self.sink.ready()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_timeout_policy() {
        assert_eq!(idle_timeout(60, u16::MAX), Ok(Seconds(90)));
        assert_eq!(idle_timeout(1, u16::MAX), Ok(Seconds(2)), "1.5 s rounds up, never down to 1 s");
        assert_eq!(idle_timeout(0, u16::MAX), Ok(Seconds::ZERO));
        assert!(idle_timeout(0, 600).is_err());
        assert!(idle_timeout(601, 600).is_err());
        assert_eq!(idle_timeout(600, 600), Ok(Seconds(900)));
    }
}
