//! MQTT 5.0 front end: the handshake, the client's packets, and the encoding of deliveries,
//! over ntex-mqtt's v5 codec.

use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::num::{NonZeroU16, NonZeroU32};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing::Instrument as _;

use ntex::time::Seconds;
use ntex_mqtt::v5::codec;
use rustc_hash::FxHashMap;

use super::connection::{self, Inbound, Reply, Stop};
use super::socket::Socket;
use super::writer::{Sent, Wire};
use super::{
    ConnState, InboundPublish, ListenerContext, PendingAcks, PublishOutcome, PublishRate, display_peer,
};
use crate::core::admin::ConnectionInfo;
use crate::core::broker::{ConnectError, ConnectRequest, PublishError, SubscribeError, SubscribeRequest};
use crate::core::session::{Expiry, Kick, Outgoing, Will};
use crate::core::topic;
use crate::core::types::{
    ByteString, Message, Properties, ProtocolVersion, QoS, RetainHandling, SubscriptionOptions,
};
use crate::transport::TransportError;

/// Client limits from CONNECT that the connection honours.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ClientLimits {
    /// Maximum Packet Size the client accepts.
    pub max_packet_size: Option<u32>,
    /// Topic Alias Maximum the client accepts.
    pub topic_alias_max: u16,
    /// Session Expiry Interval in CONNECT (DISCONNECT may not raise it from 0).
    pub connect_expiry: u32,
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

/// Keep-alive policy: returns (idle timeout, Server Keep Alive to announce). A client asking
/// for none (0) or for more than `limits.max_keepalive` is told the maximum; with the default
/// maximum (65535) a client asking for none gets no timeout at all.
fn keepalive(requested: u16, max: u16) -> (Option<Seconds>, Option<u16>) {
    let effective = match requested {
        0 if max == u16::MAX => return (None, None),
        0 => max,
        r => r.min(max),
    };
    // MQTT 5.0 §3.1.2.10: the server disconnects after one and a half keep-alive periods.
    (
        Some(Seconds(effective.saturating_add(effective.div_ceil(2)))),
        (effective != requested).then_some(effective),
    )
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

fn refusal(code: codec::ConnectAckReason, reason: String) -> Box<codec::ConnectAck> {
    Box::new(codec::ConnectAck {
        reason_code: code,
        reason_string: Some(ByteString::from(reason)),
        ..codec::ConnectAck::default()
    })
}

/// Serves an MQTT 5.0 connection whose CONNECT is next in the read buffer.
pub(crate) async fn serve<S: Socket + 'static>(
    io: S,
    ctx: Rc<ListenerContext>,
) -> Result<(), TransportError> {
    let io = Rc::new(io);
    let limits = &ctx.broker.config().limits;
    let max_packet = super::max_packet_size(limits);
    let codec = codec::Codec::new();
    // CONNECT may be larger so the handshake can refuse it by name (CONNACK 0x95); the
    // connection's limit is set once CONNECT is accepted.
    codec.set_max_inbound_size(max_packet.saturating_mul(2));
    // Payloads that arrive in pieces are reassembled ([`super::PayloadAssembly`]); big chunks
    // keep the pieces few.
    codec.set_min_chunk_size(max_packet);
    // In a block, and the handshake's result matched without a binding: whatever is named
    // here would otherwise keep its room in this future for the connection's life.
    let (inbound, writer, keep_alive) = {
        let (connect, size) = connection::read_connect(&*io, &codec, |packet| match packet {
            codec::Decoded::Packet(codec::Packet::Connect(connect), size) => Some((connect, size)),
            _ => None,
        })
        .await?;
        let peer = io.peer_addr();
        let span = super::connect_span(&connect.client_id, peer, &ctx.name);
        // Boxed: the handshake's futures are not kept for the connection's life.
        match Box::pin(accept(&*io, &ctx, *connect, size, peer).instrument(span)).await {
            Err(ack) => {
                let _ = io.encode(codec::Encoded::Packet(codec::Packet::ConnectAck(ack)), &codec);
                connection::close(&*io).await;
                return Ok(());
            }
            Ok((conn, client, ack, keep_alive)) => {
                codec.set_max_inbound_size(max_packet);
                if io.encode(codec::Encoded::Packet(codec::Packet::ConnectAck(ack)), &codec).is_err() {
                    return Ok(());
                }
                // Out now rather than with the connection's first write pass: a burst of
                // connects otherwise held a write page per pending CONNACK, and the heap kept
                // that peak (issue 6, heaptrack).
                io.send_buf();
                let (inbound, writer) = halves(&io, conn, client, codec, limits);
                (inbound, writer, keep_alive)
            }
        }
    };
    connection::spawn_established(inbound, writer, keep_alive);
    Ok(())
}

/// The read side and the writer of an accepted connection.
fn halves<S: Socket>(
    io: &Rc<S>,
    conn: ConnState,
    client: ClientLimits,
    codec: codec::Codec,
    limits: &fleetmq_config::Limits,
) -> (Inbound5<S>, Wire5<S>) {
    let writer = Wire5 {
        codec: codec::Codec::new(),
        max_packet_size: client.max_packet_size,
        alias_max: client.topic_alias_max,
        aliases: FxHashMap::default(),
        socket: PhantomData,
    };
    let inbound = Inbound5 {
        max_packet: limits.max_packet_size.as_u64(),
        max_inflight: limits.max_inflight,
        max_topic_alias: limits.max_topic_alias,
        conn,
        client,
        io: io.clone(),
        codec,
        aliases: RefCell::new(FxHashMap::default()),
        assembly: super::PayloadAssembly::default(),
        rate: PublishRate::new(limits.max_publish_rate).map(Box::new),
        acks: PendingAcks::default(),
    };
    (inbound, writer)
}

/// The accepted connection (state, client limits, CONNACK, idle timeout), or the CONNACK
/// refusing it.
type Accepted =
    Result<(ConnState, ClientLimits, Box<codec::ConnectAck>, Option<Seconds>), Box<codec::ConnectAck>>;

async fn accept<S: Socket>(
    io: &S,
    ctx: &ListenerContext,
    pkt: codec::Connect,
    packet_size: u32,
    peer: Option<std::net::SocketAddr>,
) -> Accepted {
    let broker = &ctx.broker;
    let limits = &broker.config().limits;
    let client_id = pkt.client_id.clone();
    let refused = |reason: &str| {
        super::record_connect(ProtocolVersion::V5, reason);
        broker.metrics().connection(false);
        tracing::info!(client_id = %client_id, peer = %display_peer(peer), protocol = "5.0", "connection refused: {reason}");
    };
    let max_packet = super::max_packet_size(limits);
    if super::packet_size(packet_size) > u64::from(max_packet) {
        let reason = format!(
            "CONNECT of {} bytes exceeds limits.max_packet_size ({max_packet} bytes)",
            super::packet_size(packet_size)
        );
        tracing::warn!(client_id = %client_id, peer = %display_peer(peer), "{reason}");
        refused(&reason);
        return Err(refusal(codec::ConnectAckReason::PacketTooLarge, reason));
    }
    if let Some(method) = &pkt.auth_method {
        let reason = format!("authentication method {method:?} is not supported");
        refused(&reason);
        return Err(refusal(codec::ConnectAckReason::BadAuthenticationMethod, reason));
    }
    let will =
        match pkt.last_will.as_ref().map(|w| will_in(w, usize::from(limits.max_topic_levels))).transpose() {
            Ok(will) => will,
            Err(reason) => {
                refused(&reason);
                return Err(refusal(codec::ConnectAckReason::TopicNameInvalid, reason));
            }
        };
    let (timeout, server_keepalive) = keepalive(pkt.keep_alive, limits.max_keepalive);
    let client = ClientLimits {
        max_packet_size: pkt.max_packet_size.map(NonZeroU32::get),
        topic_alias_max: pkt.topic_alias_max,
        connect_expiry: pkt.session_expiry_interval_secs,
    };
    let keep_alive = pkt.keep_alive;
    let (username, credentials) = match ctx.credentials(io, pkt.username.as_ref(), pkt.password.as_ref()) {
        Ok(found) => found,
        Err(reason) => {
            broker.metrics().auth_failure();
            refused(reason);
            return Err(refusal(codec::ConnectAckReason::NotAuthorized, reason.to_string()));
        }
    };
    if let Err(err) = broker.authenticate(credentials).await {
        refused(&err.to_string());
        let code = match err {
            ConnectError::BadCredentials => codec::ConnectAckReason::BadUserNameOrPassword,
            _ => codec::ConnectAckReason::NotAuthorized,
        };
        // The reason string stays generic: which part was wrong is not for the client.
        return Err(refusal(code, err.to_string()));
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
                return Err(refusal(codec::ConnectAckReason::ServerBusy, reason.to_string()));
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
            return Err(refusal(code, err.to_string()));
        }
    };
    let id = connected.assigned_client_id.clone().unwrap_or(client_id);
    let info = Arc::new(ConnectionInfo {
        peer,
        protocol: ProtocolVersion::V5,
        keep_alive: server_keepalive.unwrap_or(keep_alive),
        listener: ctx.name.clone(),
        username: pkt.username.clone(),
        connected_at: SystemTime::now(),
    });
    broker.set_connection_info(&connected.session, connected.generation, info.clone());
    tracing::info!(
        client_id = %id,
        peer = %display_peer(peer),
        listener = %ctx.name,
        protocol = "5.0",
        keep_alive,
        clean_start = pkt.clean_start,
        session_present = connected.session_present,
        "client connected"
    );
    super::record_connect(ProtocolVersion::V5, "accepted");
    let state = ConnState {
        broker: broker.clone(),
        session: connected.session.clone(),
        generation: connected.generation,
        signal: connected.signal.clone(),
        info,
        _slot: slot,
        ending: Cell::new(None),
    };
    let granted_expiry = connected.expiry.as_interval();
    let ack = codec::ConnectAck {
        session_present: connected.session_present,
        assigned_client_id: connected.assigned_client_id,
        session_expiry_interval_secs: (granted_expiry != client.connect_expiry).then_some(granted_expiry),
        max_qos: codec::QoS::ExactlyOnce,
        receive_max: NonZeroU16::new(limits.max_inflight).unwrap_or(NonZeroU16::MIN),
        topic_alias_max: limits.max_topic_alias,
        retain_available: true,
        wildcard_subscription_available: true,
        subscription_identifiers_available: true,
        shared_subscription_available: true,
        server_keepalive_sec: server_keepalive,
        max_packet_size: Some(max_packet),
        ..codec::ConnectAck::default()
    };
    Ok((state, client, Box::new(ack), timeout))
}

/// The read side of a v5 connection.
struct Inbound5<S> {
    conn: ConnState,
    client: ClientLimits,
    io: Rc<S>,
    codec: codec::Codec,
    /// Topic aliases the client set (Topic Alias → topic).
    aliases: RefCell<FxHashMap<u16, ByteString>>,
    /// `limits.max_packet_size`, checked on the whole packet.
    max_packet: u64,
    /// `limits.max_inflight`: the Receive Maximum announced in CONNACK.
    max_inflight: u16,
    /// `limits.max_topic_alias`: the Topic Alias Maximum announced in CONNACK.
    max_topic_alias: u16,
    /// PUBLISH whose payload is still arriving.
    assembly: super::PayloadAssembly<codec::Publish>,
    /// `limits.max_publish_rate` of this connection (boxed: most connections have none).
    rate: Option<Box<PublishRate>>,
    /// Acknowledgements waiting for the store (sent by the writer).
    acks: PendingAcks<Ack5>,
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

type Handled = Result<Option<codec::Encoded>, Stop>;
type Reply5<'a> = Result<Reply<'a, codec::Encoded>, Stop>;

impl<S: Socket> Inbound for Inbound5<S> {
    type Codec = codec::Codec;
    type Socket = S;
    type Ack = Ack5;

    fn io(&self) -> &S {
        &self.io
    }

    fn acks(&self) -> &PendingAcks<Ack5> {
        &self.acks
    }

    fn codec(&self) -> &codec::Codec {
        &self.codec
    }

    fn conn(&self) -> &ConnState {
        &self.conn
    }

    fn rate(&self) -> Option<&PublishRate> {
        self.rate.as_deref()
    }

    fn handle(&self, packet: codec::Decoded) -> Reply5<'_> {
        if let codec::Decoded::Publish(_, _, size) | codec::Decoded::Packet(_, size) = &packet
            && super::packet_size(*size) > self.max_packet
        {
            // The codec bounds the Remaining Length; Maximum Packet Size is the whole packet.
            let reason = format!(
                "packet of {} bytes exceeds limits.max_packet_size ({} bytes)",
                super::packet_size(*size),
                self.max_packet
            );
            tracing::warn!(client_id = %self.conn.client_id(), "{reason}; disconnecting");
            return self.disconnect(codec::DisconnectReasonCode::PacketTooLarge, &reason).map(Reply::from);
        }
        match packet {
            codec::Decoded::Publish(pkt, payload, size) => {
                if let Some(rate) = &self.rate {
                    rate.take();
                }
                let expected = pkt.payload_size as usize;
                match self.assembly.start(pkt, payload, expected, size) {
                    Some((pkt, payload, size)) => self.on_publish(pkt, payload, size).map(Reply::from),
                    None => Ok(Reply::None),
                }
            }
            codec::Decoded::PayloadChunk(chunk, eof) => match self.assembly.chunk(&chunk, eof) {
                Ok(Some((pkt, payload, size))) => self.on_publish(pkt, payload, size).map(Reply::from),
                Ok(None) => Ok(Reply::None),
                Err(reason) => {
                    self.disconnect(codec::DisconnectReasonCode::MalformedPacket, reason).map(Reply::from)
                }
            },
            codec::Decoded::Packet(pkt, _) => match pkt {
                codec::Packet::PublishAck(ack) => {
                    self.conn.broker.puback(&self.conn.session, ack.packet_id.get());
                    Ok(Reply::None)
                }
                codec::Packet::PublishReceived(ack) => Ok(self.on_pubrec(&ack).into()),
                codec::Packet::PublishComplete(ack) => {
                    self.conn.broker.pubcomp(&self.conn.session, ack.packet_id.get());
                    Ok(Reply::None)
                }
                codec::Packet::PublishRelease(rel) => Ok(Reply::Send(self.on_pubrel(&rel))),
                codec::Packet::Subscribe(sub) => Ok(Reply::Wait(Box::pin(self.on_subscribe(sub)))),
                codec::Packet::Unsubscribe(unsub) => Ok(Reply::Send(self.on_unsubscribe(&unsub))),
                codec::Packet::PingRequest => {
                    Ok(Reply::Send(codec::Encoded::Packet(codec::Packet::PingResponse)))
                }
                codec::Packet::Disconnect(d) => self.on_disconnect(&d).map(Reply::from),
                // Enhanced authentication is not offered.
                codec::Packet::Auth(_) => self
                    .disconnect(
                        codec::DisconnectReasonCode::BadAuthenticationMethod,
                        "enhanced authentication (AUTH) is not supported",
                    )
                    .map(Reply::from),
                codec::Packet::Connect(_) => self
                    .disconnect(
                        codec::DisconnectReasonCode::ProtocolError,
                        "second CONNECT on a connection [MQTT-3.1.0-2]",
                    )
                    .map(Reply::from),
                other => self
                    .disconnect(
                        codec::DisconnectReasonCode::ProtocolError,
                        &format!("unexpected packet from a client: {}", other.packet_type()),
                    )
                    .map(Reply::from),
            },
        }
    }

    fn farewell(&self, stop: &Stop) -> Option<codec::Encoded> {
        let (code, reason) = stop.disconnect_code()?;
        let disconnect = codec::Disconnect::new(code).reason_string(Some(ByteString::from(reason)));
        Some(codec::Encoded::Packet(codec::Packet::Disconnect(disconnect)))
    }
}

impl<S: Socket> Inbound5<S> {
    /// Ends the connection with a DISCONNECT carrying `code` and `reason`.
    fn disconnect(&self, code: codec::DisconnectReasonCode, reason: &str) -> Handled {
        tracing::info!(client_id = %self.conn.client_id(), "disconnecting client: {reason}");
        Err(Stop::violation(code, reason))
    }

    fn on_publish(&self, mut pkt: codec::Publish, payload: ntex::util::Bytes, size: u32) -> Handled {
        let conn = &self.conn;
        if pkt.payload_size as usize != payload.len() {
            return self
                .disconnect(codec::DisconnectReasonCode::MalformedPacket, "incomplete PUBLISH payload");
        }
        if let Some(alias) = pkt.properties.topic_alias {
            if alias.get() > self.max_topic_alias {
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
        if qos == QoS::ExactlyOnce && conn.session.lock().inbound_qos2_len() >= usize::from(self.max_inflight)
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
        let conn = &self.conn;
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
            tracing::error!(client_id = %conn.client_id(), "PUBREL withheld: message store unavailable");
        }
        encode_ack(release, durable)
    }

    fn on_pubrel(&self, rel: &codec::PublishAck2) -> codec::Encoded {
        let known = self.conn.broker.release_inbound_qos2(&self.conn.session, rel.packet_id.get());
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

    async fn on_subscribe(&self, sub: codec::Subscribe) -> Handled {
        let conn = &self.conn;
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
                    tracing::debug!(client_id = %conn.client_id(), "subscribed to '{}' (QoS {})", req.filter, qos.level());
                    match qos {
                        QoS::AtMostOnce => codec::SubscribeAckReason::GrantedQos0,
                        QoS::AtLeastOnce => codec::SubscribeAckReason::GrantedQos1,
                        QoS::ExactlyOnce => codec::SubscribeAckReason::GrantedQos2,
                    }
                }
                Err(err) => {
                    tracing::info!(client_id = %conn.client_id(), "subscription to '{}' refused: {err}", req.filter);
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
                tracing::error!(client_id = %conn.client_id(), "subscriptions not stored: {err}");
                let failed = vec![codec::SubscribeAckReason::UnspecifiedError; status.len()];
                (failed, Some(ByteString::from_static("subscription store unavailable")))
            }
        };
        let suback =
            codec::SubscribeAck { packet_id: sub.packet_id, properties: Vec::new(), reason_string, status };
        // Encode the SUBACK now so retained messages queued next can only follow it.
        if self.io.encode(codec::Encoded::Packet(codec::Packet::SubscribeAck(suback)), &self.codec).is_err() {
            return Err(Stop::PeerGone(None));
        }
        conn.broker.deliver_retained(&conn.session, retained);
        Ok(None)
    }

    fn on_unsubscribe(&self, unsub: &codec::Unsubscribe) -> codec::Encoded {
        let conn = &self.conn;
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

    fn on_disconnect(&self, d: &codec::Disconnect) -> Handled {
        let expiry = d.session_expiry_interval_secs;
        if expiry.is_some_and(|e| e > 0) && self.client.connect_expiry == 0 {
            // Not a clean disconnect, so the will stays armed.
            return self.disconnect(
                codec::DisconnectReasonCode::ProtocolError,
                "DISCONNECT sets a Session Expiry Interval but CONNECT's was 0 [MQTT-3.14.2-2]",
            );
        }
        self.conn.set_disconnect(crate::core::broker::DisconnectKind::Normal {
            publish_will: d.reason_code == codec::DisconnectReasonCode::DisconnectWithWillMessage,
            expiry: expiry.map(Expiry::from_interval),
        });
        Err(Stop::Disconnected)
    }
}

/// Encodes outgoing packets for a v5 client.
struct Wire5<S> {
    codec: codec::Codec,
    max_packet_size: Option<u32>,
    alias_max: u16,
    aliases: FxHashMap<ByteString, NonZeroU16>,
    socket: PhantomData<fn() -> S>,
}

impl<S: Socket> Wire5<S> {
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

impl<S: Socket> Wire for Wire5<S> {
    type Inbound = Inbound5<S>;

    fn send_ack(&mut self, on: &Inbound5<S>, ack: Ack5, durable: bool) -> Sent {
        let Some(encoded) = encode_ack(ack, durable) else { return Sent::Written(0) };
        match on.io.encode(encoded, &self.codec) {
            Ok(()) => Sent::Written(4),
            Err(_) => Sent::Closed,
        }
    }

    fn send(&mut self, on: &Inbound5<S>, item: Outgoing) -> Sent {
        let encoded = match item {
            Outgoing::Release { packet_id } => {
                let Some(packet_id) = NonZeroU16::new(packet_id) else { return Sent::Written(0) };
                let pkt = codec::Packet::PublishRelease(codec::PublishAck2 {
                    packet_id,
                    reason_code: codec::PublishAck2Reason::Success,
                    properties: Vec::new(),
                    reason_string: None,
                });
                return match on.io.encode(codec::Encoded::Packet(pkt), &self.codec) {
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
                // The clock only for messages that expire (most do not; see `next_batch`).
                if message.expires_at.is_some() {
                    properties.message_expiry_interval =
                        message.remaining_expiry(Instant::now()).and_then(NonZeroU32::new);
                }
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
                    // Measured with the full topic, before any alias is assigned.
                    if super::packet_size(publish_remaining_length(&pkt)) > u64::from(max) {
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
        match on.io.encode(encoded.0, &self.codec) {
            Ok(()) => Sent::Written(encoded.1),
            Err(err) => {
                tracing::debug!("encoding PUBLISH failed: {err}");
                Sent::Closed
            }
        }
    }

    fn close(&mut self, on: &Inbound5<S>, reason: Kick) {
        let code = match reason {
            Kick::TakenOver => codec::DisconnectReasonCode::SessionTakenOver,
            Kick::ServerShuttingDown => codec::DisconnectReasonCode::ServerShuttingDown,
            Kick::AdminAction => codec::DisconnectReasonCode::AdministrativeAction,
            Kick::NotAuthorized => codec::DisconnectReasonCode::NotAuthorized,
            Kick::Detached => return,
        };
        let disconnect = codec::Packet::Disconnect(codec::Disconnect::new(code));
        let _ = on.io.encode(codec::Encoded::Packet(disconnect), &self.codec);
        on.io.close();
    }
}

/// The Remaining Length of `pkt` as the v5 codec encodes it, payload included. Written here
/// because ntex-mqtt keeps its size computation crate-private; the test checks it against
/// the codec's output.
fn publish_remaining_length(pkt: &codec::Publish) -> u32 {
    fn var_int_len(n: usize) -> usize {
        match n {
            0..=127 => 1,
            128..=16_383 => 2,
            16_384..=2_097_151 => 3,
            _ => 4,
        }
    }
    let str_len = |s: &ByteString| 2 + s.len();
    let p = &pkt.properties;
    let properties = p.topic_alias.map_or(0, |_| 3)
        + p.correlation_data.as_ref().map_or(0, |d| 3 + d.len())
        + p.message_expiry_interval.map_or(0, |_| 5)
        + p.content_type.as_ref().map_or(0, |t| 1 + str_len(t))
        + usize::from(p.is_utf8_payload) * 2
        + p.response_topic.as_ref().map_or(0, |t| 1 + str_len(t))
        + p.subscription_ids.iter().map(|id| 1 + var_int_len(id.get() as usize)).sum::<usize>()
        + p.user_properties.iter().map(|(k, v)| 1 + str_len(k) + str_len(v)).sum::<usize>();
    let packet_id = if pkt.qos == codec::QoS::AtMostOnce { 0 } else { 2 };
    let total =
        str_len(&pkt.topic) + packet_id + var_int_len(properties) + properties + pkt.payload_size as usize;
    u32::try_from(total).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use ntex::codec::Encoder as _;
    use ntex::util::BytePages;

    use super::*;

    /// The whole encoded packet, as the codec writes it.
    fn encoded_len(pkt: codec::Publish) -> u64 {
        let payload = ntex::util::Bytes::from(vec![b'x'; pkt.payload_size as usize]);
        let mut out = BytePages::default();
        codec::Codec::new().encodev(codec::Encoded::Publish(pkt, Some(payload)), &mut out).expect("encodes");
        out.len() as u64
    }

    #[test]
    fn publish_size_matches_the_codec() {
        let id = NonZeroU32::new(300).expect("non-zero");
        let mut cases = vec![
            codec::Publish {
                dup: false,
                retain: false,
                qos: codec::QoS::AtMostOnce,
                packet_id: None,
                topic: ByteString::from_static("a"),
                payload_size: 0,
                properties: codec::PublishProperties::default(),
            },
            codec::Publish {
                dup: true,
                retain: true,
                qos: codec::QoS::ExactlyOnce,
                packet_id: NonZeroU16::new(7),
                topic: ByteString::from("sensors/".repeat(20)),
                payload_size: 20_000,
                properties: codec::PublishProperties {
                    topic_alias: NonZeroU16::new(3),
                    correlation_data: Some(ntex::util::Bytes::from_static(b"corr")),
                    message_expiry_interval: NonZeroU32::new(60),
                    content_type: Some(ByteString::from_static("text/plain")),
                    is_utf8_payload: true,
                    response_topic: Some(ByteString::from_static("reply/here")),
                    subscription_ids: vec![
                        NonZeroU32::MIN,
                        id,
                        NonZeroU32::new(268_435_455).expect("max id"),
                    ],
                    user_properties: vec![
                        (ByteString::from_static("k"), ByteString::from_static("v")),
                        (ByteString::from_static("key2"), ByteString::from("v".repeat(200))),
                    ],
                },
            },
        ];
        // Property lengths around the one-byte limit of their own length field.
        for n in [100, 110, 120, 130] {
            let mut pkt = cases[0].clone();
            pkt.qos = codec::QoS::AtLeastOnce;
            pkt.packet_id = NonZeroU16::new(1);
            pkt.properties.user_properties =
                vec![(ByteString::from_static("k"), ByteString::from("v".repeat(n)))];
            cases.push(pkt);
        }
        for pkt in cases {
            let computed = super::super::packet_size(publish_remaining_length(&pkt));
            assert_eq!(computed, encoded_len(pkt.clone()), "{pkt:?}");
        }
    }

    #[test]
    fn keepalive_policy() {
        assert_eq!(keepalive(60, u16::MAX), (Some(Seconds(90)), None));
        assert_eq!(keepalive(1, u16::MAX), (Some(Seconds(2)), None), "1.5 s rounds up, never down to 1 s");
        assert_eq!(keepalive(0, u16::MAX), (None, None), "no keep-alive requested and no cap");
        assert_eq!(keepalive(0, 120), (Some(Seconds(180)), Some(120)));
        assert_eq!(keepalive(600, 120), (Some(Seconds(180)), Some(120)));
        assert_eq!(keepalive(u16::MAX, u16::MAX - 1), (Some(Seconds(u16::MAX)), Some(u16::MAX - 1)));
    }
}
