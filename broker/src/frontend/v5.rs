//! MQTT 5.0 front end.

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
use ntex_mqtt::error::{DispatcherError, ProtocolError};
use ntex_mqtt::v5::{self, codec};
use ntex_mqtt::{Control, Reason};
use rustc_hash::FxHashMap;

use super::PendingAcks;
use super::writer::{self, Sent, Wire, Writer};
use super::{ConnState, FrontendError, InboundPublish, ListenerContext, PublishOutcome, display_peer};
use crate::core::admin::ConnectionInfo;
use crate::core::broker::{ConnectError, ConnectRequest, PublishError, SubscribeError, SubscribeRequest};
use crate::core::session::{Expiry, Kick, Outgoing, Will};
use crate::core::topic;
use crate::core::types::{
    ByteString, Message, Properties, ProtocolVersion, QoS, RetainHandling, SubscriptionOptions,
};

/// Client limits from CONNECT that the writer honours.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ClientLimits {
    /// Maximum Packet Size the client accepts.
    pub max_packet_size: Option<u32>,
    /// Topic Alias Maximum the client accepts.
    pub topic_alias_max: u16,
    /// Session Expiry Interval in CONNECT (DISCONNECT may not raise it from 0).
    pub connect_expiry: u32,
}

/// v5 state kept next to [`ConnState`].
pub struct ConnV5 {
    pub(crate) common: ConnState,
    pub(crate) io: IoRef,
    pub(crate) client: ClientLimits,
}

impl std::ops::Deref for ConnV5 {
    type Target = ConnState;
    fn deref(&self) -> &ConnState {
        &self.common
    }
}

impl std::fmt::Debug for ConnV5 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.common.fmt(f)
    }
}

pub(crate) fn qos_in(qos: codec::QoS) -> QoS {
    match qos {
        codec::QoS::AtMostOnce => QoS::AtMostOnce,
        codec::QoS::AtLeastOnce => QoS::AtLeastOnce,
        codec::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

pub(crate) fn qos_out(qos: QoS) -> codec::QoS {
    match qos {
        QoS::AtMostOnce => codec::QoS::AtMostOnce,
        QoS::AtLeastOnce => codec::QoS::AtLeastOnce,
        QoS::ExactlyOnce => codec::QoS::ExactlyOnce,
    }
}

/// Keep-alive policy: returns (idle timeout in seconds, Server Keep Alive to announce).
/// A client asking for none (0) or for more than `limits.max_keepalive` is told the maximum;
/// with the default maximum (65535) a client asking for none gets no timeout at all.
fn keepalive(requested: u16, max: u16) -> (u16, Option<u16>) {
    let effective = match requested {
        0 if max == u16::MAX => return (u16::MAX, None),
        0 => max,
        r => r.min(max),
    };
    // MQTT 5.0 §3.1.2.10: the server disconnects after one and a half keep-alive periods.
    (effective.saturating_add(effective.div_ceil(2)), (effective != requested).then_some(effective))
}

/// The application properties of an MQTT 5 PUBLISH as the core keeps them (`None` when it has
/// none). Also used by the bridge for what its v5 remote sends.
pub(crate) fn properties_in(p: &codec::PublishProperties) -> Option<Box<Properties>> {
    let props = Properties {
        payload_is_utf8: p.is_utf8_payload,
        content_type: p.content_type.clone(),
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.clone(),
        user_properties: p.user_properties.clone(),
    };
    (!props.is_empty()).then(|| Box::new(props))
}

fn will_in(w: &codec::LastWill, max_levels: usize) -> Result<Will, String> {
    topic::validate_topic_name(&w.topic, max_levels).map_err(|e| format!("will topic: {e}"))?;
    if w.topic.starts_with('$') {
        return Err("will topic must not start with '$'".to_string());
    }
    let properties = Properties {
        payload_is_utf8: w.is_utf8_payload.unwrap_or(false),
        content_type: w.content_type.clone(),
        response_topic: w.response_topic.clone(),
        correlation_data: w.correlation_data.clone(),
        user_properties: w.user_properties.clone(),
    };
    let mut message = Message::new(w.topic.clone(), w.message.clone(), qos_in(w.qos), w.retain);
    message.properties = (!properties.is_empty()).then(|| Box::new(properties));
    Ok(Will {
        message,
        expiry_interval: w.message_expiry_interval.map(NonZeroU32::get),
        delay: Duration::from_secs(u64::from(w.will_delay_interval_sec.unwrap_or(0))),
    })
}

fn refuse(h: v5::Handshake, code: codec::ConnectAckReason, reason: String) -> v5::HandshakeAck<ConnV5> {
    h.fail_with(codec::ConnectAck {
        reason_code: code,
        reason_string: Some(ByteString::from(reason)),
        ..codec::ConnectAck::default()
    })
}

/// Handles CONNECT: maps it to a [`ConnectRequest`] and answers with CONNACK.
pub async fn handshake(
    h: v5::Handshake,
    ctx: Rc<ListenerContext>,
) -> Result<v5::HandshakeAck<ConnV5>, FrontendError> {
    let peer = h.io().query::<PeerAddr>().get().map(|p| p.0);
    let span = super::connect_span(&h.packet().client_id, peer, &ctx.name);
    connect(h, ctx).instrument(span).await
}

async fn connect(
    h: v5::Handshake,
    ctx: Rc<ListenerContext>,
) -> Result<v5::HandshakeAck<ConnV5>, FrontendError> {
    let broker = &ctx.broker;
    let limits = &broker.config().limits;
    let pkt = h.packet();
    let peer = h.io().query::<PeerAddr>().get().map(|p| p.0);
    let client_id = pkt.client_id.clone();
    let refused = |reason: &str| {
        super::record_connect(ProtocolVersion::V5, reason);
        broker.metrics().connection(false);
        tracing::info!(client_id = %client_id, peer = %display_peer(peer), protocol = "5.0", "connection refused: {reason}");
    };
    let max_packet = u32::try_from(limits.max_packet_size.as_u64()).unwrap_or(u32::MAX);
    if super::packet_size(h.packet_size()) > u64::from(max_packet) {
        let reason = format!(
            "CONNECT of {} bytes exceeds limits.max_packet_size ({max_packet} bytes)",
            super::packet_size(h.packet_size())
        );
        tracing::warn!(client_id = %client_id, peer = %display_peer(peer), "{reason}");
        refused(&reason);
        return Ok(refuse(h, codec::ConnectAckReason::PacketTooLarge, reason));
    }
    if let Some(method) = &pkt.auth_method {
        let reason = format!("authentication method {method:?} is not supported");
        refused(&reason);
        return Ok(refuse(h, codec::ConnectAckReason::BadAuthenticationMethod, reason));
    }
    let will =
        match pkt.last_will.as_ref().map(|w| will_in(w, usize::from(limits.max_topic_levels))).transpose() {
            Ok(will) => will,
            Err(reason) => {
                refused(&reason);
                return Ok(refuse(h, codec::ConnectAckReason::TopicNameInvalid, reason));
            }
        };
    let (timeout, server_keepalive) = keepalive(pkt.keep_alive, limits.max_keepalive);
    let client = ClientLimits {
        max_packet_size: pkt.max_packet_size.map(NonZeroU32::get),
        topic_alias_max: pkt.topic_alias_max,
        connect_expiry: pkt.session_expiry_interval_secs,
    };
    let keep_alive = pkt.keep_alive;
    let (username, credentials) =
        match ctx.credentials(&h.io().get_ref(), pkt.username.as_ref(), pkt.password.as_ref()) {
            Ok(found) => found,
            Err(reason) => {
                broker.metrics().auth_failure();
                refused(reason);
                return Ok(refuse(h, codec::ConnectAckReason::NotAuthorized, reason.to_string()));
            }
        };
    if let Err(err) = broker.authenticate(credentials).await {
        refused(&err.to_string());
        let code = match err {
            ConnectError::BadCredentials => codec::ConnectAckReason::BadUserNameOrPassword,
            _ => codec::ConnectAckReason::NotAuthorized,
        };
        // The reason string stays generic: which part was wrong is not for the client.
        return Ok(refuse(h, code, err.to_string()));
    }
    let request = ConnectRequest {
        client_id: client_id.clone(),
        clean_start: pkt.clean_start,
        expiry: Expiry::from_interval(pkt.session_expiry_interval_secs),
        will,
        protocol: ProtocolVersion::V5,
        receive_max: pkt.receive_max.map_or(u16::MAX, NonZeroU16::get),
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
                let reason = "the same client id is connecting on another node right now";
                refused(reason);
                return Ok(refuse(h, codec::ConnectAckReason::ServerBusy, reason.to_string()));
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
            let code = match err {
                ConnectError::NotAuthorized => codec::ConnectAckReason::NotAuthorized,
                ConnectError::BadCredentials => codec::ConnectAckReason::BadUserNameOrPassword,
                ConnectError::ClientIdRejected => codec::ConnectAckReason::ClientIdentifierNotValid,
                ConnectError::QuotaExceeded => codec::ConnectAckReason::QuotaExceeded,
                ConnectError::ServerUnavailable => codec::ConnectAckReason::ServerUnavailable,
            };
            return Ok(refuse(h, code, err.to_string()));
        }
    };
    let id = connected.assigned_client_id.clone().unwrap_or(client_id);
    broker.set_connection_info(
        &connected.session,
        connected.generation,
        ConnectionInfo {
            peer,
            protocol: ProtocolVersion::V5,
            keep_alive: server_keepalive.unwrap_or(keep_alive),
            listener: ctx.name.clone(),
            username: pkt.username.clone(),
            connected_at: SystemTime::now(),
        },
    );
    tracing::info!(
        client_id = %id,
        peer = %display_peer(peer),
        listener = %ctx.name,
        protocol = "5.0",
        keep_alive,
        clean_start = !connected.session_present,
        "client connected"
    );
    super::record_connect(ProtocolVersion::V5, "accepted");
    let state = ConnV5 {
        io: h.io().get_ref(),
        client,
        common: ConnState {
            broker: broker.clone(),
            session: connected.session.clone(),
            generation: connected.generation,
            signal: connected.signal.clone(),
            client_id: id,
            protocol: ProtocolVersion::V5,
            peer,
            listener: ctx.name.clone(),
            _slot: slot,
            disconnect: Cell::new(None),
            close_reason: RefCell::new(None),
            connected_at: Instant::now(),
        },
    };
    let granted_expiry = connected.expiry.as_interval();
    let max_inflight = limits.max_inflight;
    Ok(h.ack(state).keep_alive(timeout).with(|ack| {
        ack.session_present = connected.session_present;
        ack.assigned_client_id = connected.assigned_client_id;
        if granted_expiry != client.connect_expiry {
            ack.session_expiry_interval_secs = Some(granted_expiry);
        }
        ack.max_qos = codec::QoS::ExactlyOnce;
        ack.receive_max = NonZeroU16::new(max_inflight).unwrap_or(NonZeroU16::MIN);
        ack.retain_available = true;
        ack.wildcard_subscription_available = true;
        ack.subscription_identifiers_available = true;
        ack.shared_subscription_available = true;
        ack.server_keepalive_sec = server_keepalive;
        ack.max_packet_size = Some(max_packet);
    }))
}

/// Control service: records why a connection stops, for the disconnect log line.
pub fn control() -> impl ServiceFactory<
    Control<FrontendError>,
    v5::Session<ConnV5>,
    Response = Option<codec::Encoded>,
    Error = FrontendError,
    InitError = FrontendError,
> {
    fn_factory_with_config(async |session: v5::Session<ConnV5>| {
        Ok(fn_service(move |msg: Control<FrontendError>| {
            let reply = match &msg {
                Control::Stop(reason) => {
                    session.set_close_reason(stop_reason(reason, &session.client_id));
                    protocol_error_disconnect(reason)
                }
                Control::WrBackpressure(_) => None,
            };
            async move { Ok(reply) }
        }))
    })
}

/// The DISCONNECT for a protocol error, with the spec's reason code and the error as reason
/// string (ntex-mqtt's default answers most decode errors with 0x83).
fn protocol_error_disconnect(reason: &Reason<FrontendError>) -> Option<codec::Encoded> {
    use ntex_mqtt::error::DecodeError;
    let Reason::Protocol(err) = reason else { return None };
    let err = err.get_ref();
    let code = match err {
        ProtocolError::Decode(DecodeError::MaxSizeExceeded { .. }) => {
            codec::DisconnectReasonCode::PacketTooLarge
        }
        ProtocolError::Decode(_) => codec::DisconnectReasonCode::MalformedPacket,
        ProtocolError::KeepAliveTimeout => codec::DisconnectReasonCode::KeepAliveTimeout,
        ProtocolError::ProtocolViolation(v) => v.reason(),
        ProtocolError::Encode(_) | ProtocolError::ReadTimeout => {
            codec::DisconnectReasonCode::ImplementationSpecificError
        }
    };
    let disconnect = codec::Disconnect::new(code).reason_string(Some(ByteString::from(err.to_string())));
    Some(codec::Encoded::Packet(codec::Packet::Disconnect(disconnect)))
}

/// Human-readable reason for a stopped connection; oversized packets are logged as warnings.
pub(crate) fn stop_reason(reason: &Reason<FrontendError>, client_id: &ByteString) -> String {
    match reason {
        Reason::Protocol(err) => match err.get_ref() {
            ProtocolError::KeepAliveTimeout => "keep-alive timeout".to_string(),
            ProtocolError::Decode(ntex_mqtt::error::DecodeError::MaxSizeExceeded { size, max_size }) => {
                tracing::warn!(
                    client_id = %client_id,
                    "packet of {size} bytes exceeds limits.max_packet_size ({max_size} bytes); disconnecting"
                );
                format!("packet too large ({size} > {max_size} bytes)")
            }
            other => format!("protocol error: {other}"),
        },
        Reason::PeerGone(gone) => match gone.err() {
            Some(err) => format!("network error: {err}"),
            None => "connection closed by client without DISCONNECT".to_string(),
        },
        Reason::Error(_) => "closed by the broker".to_string(),
    }
}

/// PING, DISCONNECT and AUTH (everything else is handled by [`Inbound`]). Enhanced
/// authentication is not offered, so an AUTH packet ends the connection with 0x8C.
pub fn protocol() -> impl ServiceFactory<
    v5::ProtocolMessage,
    v5::Session<ConnV5>,
    Response = v5::ProtocolMessageAck,
    Error = FrontendError,
    InitError = FrontendError,
> {
    fn_factory_with_config(async |_: v5::Session<ConnV5>| {
        Ok(fn_service(async |msg: v5::ProtocolMessage| {
            Ok(match msg {
                v5::ProtocolMessage::Auth(_) => msg.disconnect_with(codec::Disconnect::new(
                    codec::DisconnectReasonCode::BadAuthenticationMethod,
                )),
                other => other.ack(),
            })
        }))
    })
}

/// Never called: [`Inbound`] handles every PUBLISH before ntex-mqtt's dispatcher.
pub fn publish_unused() -> impl ServiceFactory<
    v5::Publish,
    v5::Session<ConnV5>,
    Response = v5::PublishAck,
    Error = FrontendError,
    InitError = FrontendError,
> {
    fn_factory_with_config(async |_: v5::Session<ConnV5>| {
        Ok(fn_service(async |_: v5::Publish| Err::<v5::PublishAck, _>(FrontendError)))
    })
}

/// Middleware in front of ntex-mqtt's v5 dispatcher: handles PUBLISH, the acknowledgement
/// flows and SUBSCRIBE/UNSUBSCRIBE with the core, and starts the connection's writer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inbound;

impl<S> Middleware<S, (SharedCfg, v5::Session<ConnV5>)> for Inbound {
    type Service = InboundService<S>;

    fn create(&self, inner: S, (_, session): (SharedCfg, v5::Session<ConnV5>)) -> Self::Service {
        let conn: &ConnV5 = &session;
        let wire = Wire5 {
            io: conn.io.clone(),
            sink: session.sink().clone(),
            codec: codec::Codec::new(),
            max_packet_size: conn.client.max_packet_size,
            alias_max: conn.client.topic_alias_max,
            aliases: FxHashMap::default(),
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
            codec: codec::Codec::new(),
            aliases: RefCell::new(FxHashMap::default()),
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
    session: v5::Session<ConnV5>,
    codec: codec::Codec,
    /// Topic aliases the client set (Topic Alias → topic).
    aliases: RefCell<FxHashMap<u16, ByteString>>,
    /// `limits.max_packet_size`, checked on the whole packet.
    max_packet: u64,
    /// PUBLISH whose payload is still arriving.
    assembly: super::PayloadAssembly<codec::Publish>,
    /// `limits.max_publish_rate` of this connection.
    rate: Option<super::PublishRate>,
    /// Acknowledgements waiting for the store (sent by the writer).
    acks: Rc<PendingAcks<Ack5>>,
}

/// A v5 acknowledgement held until durable.
#[derive(Debug)]
pub enum Ack5 {
    /// PUBACK (QoS 1) or PUBREC (QoS 2).
    Publish {
        /// The acknowledgement.
        ack: codec::PublishAck,
        /// Send as PUBREC.
        qos2: bool,
    },
    /// PUBREL answering a PUBREC.
    Release(codec::PublishAck2),
}

/// Encodes an acknowledgement. When the store failed, a PUBACK/PUBREC says so (0x80) so the
/// client may publish again, and a PUBREL is withheld (the release was not recorded).
fn encode_ack(ack: Ack5, durable: bool) -> Option<codec::Encoded> {
    match ack {
        Ack5::Publish { mut ack, qos2 } => {
            if !durable {
                ack.reason_code = codec::PublishAckReason::UnspecifiedError;
                ack.reason_string = Some(ByteString::from_static("message store unavailable"));
            }
            Some(codec::Encoded::Packet(if qos2 {
                codec::Packet::PublishReceived(ack)
            } else {
                codec::Packet::PublishAck(ack)
            }))
        }
        Ack5::Release(rel) => durable.then_some(codec::Encoded::Packet(codec::Packet::PublishRelease(rel))),
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
        if let codec::Decoded::Publish(_, _, size) | codec::Decoded::Packet(_, size) = &req
            && super::packet_size(*size) > self.max_packet
        {
            // ntex-mqtt bounds the Remaining Length; Maximum Packet Size is the whole packet.
            let reason = format!(
                "packet of {} bytes exceeds limits.max_packet_size ({} bytes)",
                super::packet_size(*size),
                self.max_packet
            );
            tracing::warn!(client_id = %self.session.client_id, "{reason}; disconnecting");
            return self.disconnect(codec::DisconnectReasonCode::PacketTooLarge, &reason);
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
                codec::Packet::PublishAck(ack) => {
                    self.session.broker.puback(&self.session.session, ack.packet_id.get());
                    Ok(None)
                }
                codec::Packet::PublishReceived(ack) => Ok(self.on_pubrec(&ack)),
                codec::Packet::PublishComplete(ack) => {
                    self.session.broker.pubcomp(&self.session.session, ack.packet_id.get());
                    Ok(None)
                }
                codec::Packet::PublishRelease(rel) => Ok(Some(self.on_pubrel(&rel))),
                codec::Packet::Subscribe(sub) => self.on_subscribe(sub).await,
                codec::Packet::Unsubscribe(unsub) => Ok(Some(self.on_unsubscribe(&unsub))),
                codec::Packet::Connect(_) => {
                    self.session.set_close_reason("protocol error: second CONNECT");
                    Err(ProtocolError::generic_violation("second CONNECT on a connection [MQTT-3.1.0-2]")
                        .into())
                }
                codec::Packet::Disconnect(d) => {
                    self.on_disconnect(&d);
                    ctx.call(&self.inner, codec::Decoded::Packet(codec::Packet::Disconnect(d), size)).await
                }
                other => ctx.call(&self.inner, codec::Decoded::Packet(other, size)).await,
            },
        }
    }
}

impl<S> InboundService<S> {
    /// Closes the connection with a DISCONNECT carrying `code` and `reason`.
    fn disconnect<E>(&self, code: codec::DisconnectReasonCode, reason: &str) -> Res<E> {
        tracing::info!(client_id = %self.session.client_id, "disconnecting client: {reason}");
        self.session.set_close_reason(format!("protocol error: {reason}"));
        self.session.sink().close_with_reason(
            codec::Disconnect::new(code).reason_string(Some(ByteString::from(reason.to_string()))),
        );
        Ok(None)
    }

    fn on_publish<E>(&self, mut pkt: codec::Publish, payload: ntex::util::Bytes, size: u32) -> Res<E> {
        let conn = &*self.session;
        let limits = &conn.broker.config().limits;
        if pkt.payload_size as usize != payload.len() {
            return Err(ProtocolError::generic_violation("incomplete PUBLISH payload").into());
        }
        if let Some(alias) = pkt.properties.topic_alias {
            if alias.get() > limits.max_topic_alias {
                return self.disconnect(
                    codec::DisconnectReasonCode::TopicAliasInvalid,
                    "topic alias above Topic Alias Maximum",
                );
            }
            if pkt.topic.is_empty() {
                match self.aliases.borrow().get(&alias.get()) {
                    Some(topic) => pkt.topic = topic.clone(),
                    None => {
                        return self.disconnect(
                            codec::DisconnectReasonCode::TopicAliasInvalid,
                            "unknown topic alias",
                        );
                    }
                }
            } else {
                self.aliases.borrow_mut().insert(alias.get(), pkt.topic.clone());
            }
        } else if pkt.topic.is_empty() {
            return self
                .disconnect(codec::DisconnectReasonCode::ProtocolError, "empty topic without topic alias");
        }
        if pkt.topic.contains(['+', '#']) {
            return self
                .disconnect(codec::DisconnectReasonCode::TopicNameInvalid, "wildcard in PUBLISH topic");
        }
        let qos = qos_in(pkt.qos);
        let packet_id = pkt.packet_id.map(NonZeroU16::get);
        if qos == QoS::ExactlyOnce
            && conn.session.lock().inbound_qos2_len() >= usize::from(limits.max_inflight)
        {
            return self
                .disconnect(codec::DisconnectReasonCode::ReceiveMaximumExceeded, "Receive Maximum exceeded");
        }
        let (outcome, durable) = conn.publish(InboundPublish {
            topic: pkt.topic,
            payload,
            qos,
            retain: pkt.retain,
            dup: pkt.dup,
            packet_id,
            properties: properties_in(&pkt.properties),
            expiry_interval: pkt.properties.message_expiry_interval.map(NonZeroU32::get),
            packet_size: size,
        });
        let Some(packet_id) = pkt.packet_id else {
            return Ok(None);
        };
        let (reason_code, reason_string) = match &outcome {
            PublishOutcome::Accepted { matched: true } | PublishOutcome::Duplicate => {
                (codec::PublishAckReason::Success, None)
            }
            PublishOutcome::Accepted { matched: false } => {
                (codec::PublishAckReason::NoMatchingSubscribers, None)
            }
            PublishOutcome::Refused(err) => {
                if qos == QoS::ExactlyOnce {
                    // A PUBREC with an error ends the exchange: no PUBREL will come.
                    conn.broker.release_inbound_qos2(&conn.session, packet_id.get());
                }
                let code = match err {
                    PublishError::Topic(_) => codec::PublishAckReason::TopicNameInvalid,
                    PublishError::NotAuthorized => codec::PublishAckReason::NotAuthorized,
                };
                (code, Some(ByteString::from(err.to_string())))
            }
        };
        let ack = Ack5::Publish {
            ack: codec::PublishAck { packet_id, reason_code, properties: Vec::new(), reason_string },
            qos2: qos == QoS::ExactlyOnce,
        };
        Ok(self.acks.offer(durable, ack, &conn.signal).and_then(|(ack, durable)| encode_ack(ack, durable)))
    }

    fn on_pubrec(&self, ack: &codec::PublishAck) -> Option<codec::Encoded> {
        let conn = &*self.session;
        let id = ack.packet_id.get();
        if u8::from(ack.reason_code) >= 0x80 {
            conn.broker.pubrec_failed(&conn.session, id);
            return None;
        }
        let (known, durable) = conn.broker.pubrec(&conn.session, id, conn.generation);
        let release = Ack5::Release(codec::PublishAck2 {
            packet_id: ack.packet_id,
            reason_code: if known {
                codec::PublishAck2Reason::Success
            } else {
                codec::PublishAck2Reason::PacketIdNotFound
            },
            properties: Vec::new(),
            reason_string: None,
        });
        let (release, durable) = self.acks.offer(durable, release, &conn.signal)?;
        if !durable {
            tracing::error!(client_id = %conn.client_id, "PUBREL withheld: message store unavailable");
        }
        encode_ack(release, durable)
    }

    fn on_pubrel(&self, rel: &codec::PublishAck2) -> codec::Encoded {
        let known = self.session.broker.release_inbound_qos2(&self.session.session, rel.packet_id.get());
        codec::Encoded::Packet(codec::Packet::PublishComplete(codec::PublishAck2 {
            packet_id: rel.packet_id,
            reason_code: if known {
                codec::PublishAck2Reason::Success
            } else {
                codec::PublishAck2Reason::PacketIdNotFound
            },
            properties: Vec::new(),
            reason_string: None,
        }))
    }

    async fn on_subscribe<E>(&self, sub: codec::Subscribe) -> Res<E> {
        let conn = &*self.session;
        let mut requests = Vec::with_capacity(sub.topic_filters.len());
        for (filter, opts) in &sub.topic_filters {
            if opts.no_local && (filter.starts_with("$share/") || filter.starts_with("$queue/")) {
                return self.disconnect(
                    codec::DisconnectReasonCode::ProtocolError,
                    "No Local on a shared subscription",
                );
            }
            requests.push(SubscribeRequest {
                filter: filter.clone(),
                options: SubscriptionOptions {
                    qos: qos_in(opts.qos),
                    no_local: opts.no_local,
                    retain_as_published: opts.retain_as_published,
                    retain_handling: match opts.retain_handling {
                        codec::RetainHandling::AtSubscribe => RetainHandling::SendAlways,
                        codec::RetainHandling::AtSubscribeNew => RetainHandling::SendIfNew,
                        codec::RetainHandling::NoAtSubscribe => RetainHandling::DontSend,
                    },
                    subscription_id: sub.id,
                },
            });
        }
        let (results, retained, durable) = conn.broker.subscribe(&conn.session, &requests);
        let stored = durable.wait().await;
        let mut reason_string = None;
        let status = results
            .iter()
            .zip(&requests)
            .map(|(result, req)| match result {
                Ok(qos) => {
                    tracing::debug!(client_id = %conn.client_id, "subscribed to '{}' (QoS {})", req.filter, qos.level());
                    match qos {
                        QoS::AtMostOnce => codec::SubscribeAckReason::GrantedQos0,
                        QoS::AtLeastOnce => codec::SubscribeAckReason::GrantedQos1,
                        QoS::ExactlyOnce => codec::SubscribeAckReason::GrantedQos2,
                    }
                }
                Err(err) => {
                    tracing::info!(client_id = %conn.client_id, "subscription to '{}' refused: {err}", req.filter);
                    reason_string.get_or_insert_with(|| ByteString::from(format!("{}: {err}", req.filter)));
                    match err {
                        SubscribeError::NotAuthorized => codec::SubscribeAckReason::NotAuthorized,
                        SubscribeError::Topic(_) => codec::SubscribeAckReason::TopicFilterInvalid,
                    }
                }
            })
            .collect::<Vec<_>>();
        let (status, reason_string) = match stored {
            Ok(()) => (status, reason_string),
            Err(err) => {
                tracing::error!(client_id = %conn.client_id, "subscriptions not stored: {err}");
                let failed = vec![codec::SubscribeAckReason::UnspecifiedError; status.len()];
                (failed, Some(ByteString::from_static("subscription store unavailable")))
            }
        };
        let suback =
            codec::SubscribeAck { packet_id: sub.packet_id, properties: Vec::new(), reason_string, status };
        // Encode the SUBACK now so retained messages queued next can only follow it.
        if conn.io.encode(codec::Encoded::Packet(codec::Packet::SubscribeAck(suback)), &self.codec).is_err() {
            return Ok(None);
        }
        conn.broker.deliver_retained(&conn.session, retained);
        Ok(None)
    }

    fn on_unsubscribe(&self, unsub: &codec::Unsubscribe) -> codec::Encoded {
        let conn = &*self.session;
        let results = conn.broker.unsubscribe(&conn.session, &unsub.topic_filters);
        let status = results
            .iter()
            .map(|r| match r {
                Ok(true) => codec::UnsubscribeAckReason::Success,
                Ok(false) => codec::UnsubscribeAckReason::NoSubscriptionExisted,
                Err(_) => codec::UnsubscribeAckReason::TopicFilterInvalid,
            })
            .collect();
        codec::Encoded::Packet(codec::Packet::UnsubscribeAck(codec::UnsubscribeAck {
            packet_id: unsub.packet_id,
            properties: Vec::new(),
            reason_string: None,
            status,
        }))
    }

    fn on_disconnect(&self, d: &codec::Disconnect) {
        let conn = &*self.session;
        let expiry = d.session_expiry_interval_secs;
        if expiry.is_some_and(|e| e > 0) && conn.client.connect_expiry == 0 {
            // ntex-mqtt answers this protocol error [MQTT-3.14.2-2]; it is not a clean
            // disconnect, so the will stays armed.
            return;
        }
        conn.disconnect.set(Some(crate::core::broker::DisconnectKind::Normal {
            publish_will: d.reason_code == codec::DisconnectReasonCode::DisconnectWithWillMessage,
            expiry: expiry.map(Expiry::from_interval),
        }));
    }
}

/// Encodes outgoing packets for a v5 client.
struct Wire5 {
    io: IoRef,
    sink: v5::MqttSink,
    codec: codec::Codec,
    max_packet_size: Option<u32>,
    alias_max: u16,
    aliases: FxHashMap<ByteString, NonZeroU16>,
}

impl Wire5 {
    /// Topic alias for `topic`: an existing one, a new one while the client's maximum
    /// allows, or none. Returns (alias, whether the topic must still be sent).
    fn alias(&mut self, topic: &ByteString) -> (Option<NonZeroU16>, bool) {
        if self.alias_max == 0 {
            return (None, true);
        }
        if let Some(alias) = self.aliases.get(topic) {
            return (Some(*alias), false);
        }
        let next = self.aliases.len() + 1;
        match u16::try_from(next).ok().filter(|n| *n <= self.alias_max).and_then(NonZeroU16::new) {
            Some(alias) => {
                self.aliases.insert(topic.clone(), alias);
                (Some(alias), true)
            }
            None => (None, true),
        }
    }
}

impl Wire for Wire5 {
    type Ack = Ack5;

    fn send_ack(&mut self, ack: Ack5, durable: bool) -> Sent {
        let Some(encoded) = encode_ack(ack, durable) else { return Sent::Written(0) };
        match self.io.encode(encoded, &self.codec) {
            Ok(()) => Sent::Written(4),
            Err(_) => Sent::Closed,
        }
    }

    fn send(&mut self, item: Outgoing, now: Instant) -> Sent {
        let encoded = match item {
            Outgoing::Release { packet_id } => {
                let Some(packet_id) = NonZeroU16::new(packet_id) else { return Sent::Written(0) };
                let pkt = codec::Packet::PublishRelease(codec::PublishAck2 {
                    packet_id,
                    reason_code: codec::PublishAck2Reason::Success,
                    properties: Vec::new(),
                    reason_string: None,
                });
                return match self.io.encode(codec::Encoded::Packet(pkt), &self.codec) {
                    Ok(()) => Sent::Written(4),
                    Err(_) => Sent::Closed,
                };
            }
            Outgoing::Publish { packet_id, delivery, dup } => {
                let message = &delivery.message;
                let mut properties = codec::PublishProperties::default();
                if let Some(p) = &message.properties {
                    properties.is_utf8_payload = p.payload_is_utf8;
                    properties.content_type = p.content_type.clone();
                    properties.response_topic = p.response_topic.clone();
                    properties.correlation_data = p.correlation_data.clone();
                    properties.user_properties = p.user_properties.clone();
                }
                properties.message_expiry_interval = message.remaining_expiry(now).and_then(NonZeroU32::new);
                properties.subscription_ids = delivery.subscription_ids.clone();
                let mut pkt = codec::Publish {
                    dup,
                    retain: delivery.retain,
                    qos: qos_out(delivery.qos),
                    packet_id: packet_id.and_then(NonZeroU16::new),
                    topic: message.topic.clone(),
                    payload_size: message.payload.len() as u32,
                    properties,
                };
                if let Some(max) = self.max_packet_size {
                    // Measured with the full topic, before any alias is assigned. `size(0)`:
                    // the builder already counts `payload_size` in the Remaining Length.
                    let remaining = self.sink.publish_pkt(pkt.clone()).size(0);
                    if super::packet_size(remaining) > u64::from(max) {
                        return Sent::TooLarge;
                    }
                }
                let (alias, send_topic) = self.alias(&message.topic);
                pkt.properties.topic_alias = alias;
                if !send_topic {
                    pkt.topic = ByteString::new();
                }
                let bytes = 7 + pkt.topic.len() as u64 + message.payload.len() as u64;
                (codec::Encoded::Publish(pkt, Some(message.payload.clone())), bytes)
            }
        };
        match self.io.encode(encoded.0, &self.codec) {
            Ok(()) => Sent::Written(encoded.1),
            Err(err) => {
                tracing::debug!("encoding PUBLISH failed: {err}");
                Sent::Closed
            }
        }
    }

    fn close(&mut self, reason: Kick) {
        let code = match reason {
            Kick::TakenOver => codec::DisconnectReasonCode::SessionTakenOver,
            Kick::ServerShuttingDown => codec::DisconnectReasonCode::ServerShuttingDown,
            Kick::AdminAction => codec::DisconnectReasonCode::AdministrativeAction,
            Kick::NotAuthorized => codec::DisconnectReasonCode::NotAuthorized,
            Kick::Detached => return,
        };
        self.sink.close_with_reason(codec::Disconnect::new(code));
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
    fn keepalive_policy() {
        assert_eq!(keepalive(60, u16::MAX), (90, None));
        assert_eq!(keepalive(1, u16::MAX), (2, None), "1.5 s rounds up, never down to 1 s");
        assert_eq!(keepalive(0, u16::MAX), (u16::MAX, None), "no keep-alive requested and no cap");
        assert_eq!(keepalive(0, 120), (180, Some(120)));
        assert_eq!(keepalive(600, 120), (180, Some(120)));
        assert_eq!(keepalive(u16::MAX, u16::MAX - 1), (u16::MAX, Some(u16::MAX - 1)));
    }
}
