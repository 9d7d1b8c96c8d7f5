//! MQTT 3.1 / 3.1.1 front end: the handshake, the client's packets, and the encoding of
//! deliveries, over ntex-mqtt's v3 codec.

use std::cell::Cell;
use std::marker::PhantomData;
use std::num::NonZeroU16;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::Instrument as _;

use ntex::time::Seconds;
use ntex_mqtt::v3::codec;
use ntex_mqtt::v5::codec::DisconnectReasonCode;

use super::connection::{self, Inbound, Reply, Stop};
use super::socket::Socket;
use super::writer::{Sent, Wire};
use super::{
    ConnState, InboundPublish, ListenerContext, PendingAcks, PublishOutcome, PublishRate, display_peer,
};
use crate::core::admin::ConnectionInfo;
use crate::core::broker::{ConnectError, ConnectRequest, DisconnectKind, SubscribeRequest};
use crate::core::session::{Expiry, Kick, Outgoing, Will};
use crate::core::topic;
use crate::core::types::{Message, ProtocolVersion, QoS, SubscriptionOptions};
use crate::transport::TransportError;

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

/// Serves an MQTT 3.1 / 3.1.1 connection whose CONNECT is next in the read buffer (`v3_1`: it
/// was a 3.1 CONNECT, rewritten by the preamble).
pub(crate) async fn serve<S: Socket + 'static>(
    io: S,
    ctx: Rc<ListenerContext>,
    v3_1: bool,
) -> Result<(), TransportError> {
    let io = Rc::new(io);
    let protocol = if v3_1 { ProtocolVersion::V3_1 } else { ProtocolVersion::V3_1_1 };
    let limits = &ctx.broker.config().limits;
    let max_packet = super::max_packet_size(limits);
    let codec = codec::Codec::new();
    // CONNECT may be larger so the handshake can refuse it by name; the connection's limit is
    // set once CONNECT is accepted.
    codec.set_max_size(max_packet.saturating_mul(2));
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
        match Box::pin(accept(&*io, &ctx, protocol, *connect, size, peer).instrument(span)).await {
            Err(code) => {
                if let Some(return_code) = code {
                    let ack = codec::ConnectAck { session_present: false, return_code };
                    let _ = io.encode(codec::Encoded::Packet(codec::Packet::ConnectAck(ack)), &codec);
                }
                connection::close(&*io).await;
                return Ok(());
            }
            Ok((conn, session_present, keep_alive)) => {
                let limit = super::remaining_limit(max_packet);
                if limit > 0 {
                    codec.set_max_size(limit);
                }
                let ack = codec::ConnectAck {
                    session_present,
                    return_code: codec::ConnectAckReason::ConnectionAccepted,
                };
                if io.encode(codec::Encoded::Packet(codec::Packet::ConnectAck(ack)), &codec).is_err() {
                    return Ok(());
                }
                // Out now rather than with the connection's first write pass: a burst of
                // connects otherwise held a write page per pending CONNACK, and the heap kept
                // that peak (issue 6, heaptrack).
                io.send_buf();
                let (inbound, writer) = halves(&io, conn, codec, max_packet, limits.max_publish_rate);
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
    codec: codec::Codec,
    max_packet: u32,
    max_publish_rate: u32,
) -> (Inbound3<S>, Wire3<S>) {
    let inbound = Inbound3 {
        max_packet: u64::from(max_packet),
        conn,
        io: io.clone(),
        codec,
        assembly: super::PayloadAssembly::default(),
        rate: PublishRate::new(max_publish_rate).map(Box::new),
        acks: PendingAcks::default(),
    };
    (inbound, Wire3 { codec: codec::Codec::new(), socket: PhantomData })
}

/// The accepted connection (state, session present, idle timeout), or the CONNACK return
/// code to refuse it with (`None`: close without CONNACK).
type Accepted = Result<(ConnState, bool, Option<Seconds>), Option<codec::ConnectAckReason>>;

async fn accept<S: Socket>(
    io: &S,
    ctx: &ListenerContext,
    protocol: ProtocolVersion,
    pkt: codec::Connect,
    packet_size: u32,
    peer: Option<std::net::SocketAddr>,
) -> Accepted {
    use codec::ConnectAckReason as Code;
    let broker = &ctx.broker;
    let config = broker.config();
    let limits = &config.limits;
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
    let max_packet = super::max_packet_size(limits);
    if super::packet_size(packet_size) > u64::from(max_packet) {
        // v3 has no CONNACK code for this: close without one, as Mosquitto does.
        let reason = format!(
            "CONNECT of {} bytes exceeds limits.max_packet_size ({max_packet} bytes)",
            super::packet_size(packet_size)
        );
        tracing::warn!(client_id = %client_id, peer = %display_peer(peer), "{reason}");
        refused(&reason);
        return Err(None);
    }
    let timeout = match idle_timeout(pkt.keep_alive, limits.max_keepalive) {
        Ok(t) => t,
        Err(reason) => {
            refused(&reason);
            return Err(Some(Code::IdentifierRejected));
        }
    };
    let will =
        match pkt.last_will.as_ref().map(|w| will_in(w, usize::from(limits.max_topic_levels))).transpose() {
            Ok(will) => will,
            Err(reason) => {
                // v3 has no "topic invalid" CONNACK code; "not authorized" is what Mosquitto's
                // ACL check answers for a will it will not publish.
                refused(&reason);
                return Err(Some(Code::NotAuthorized));
            }
        };
    let expiry = if pkt.clean_session {
        Expiry::OnDisconnect
    } else {
        config.sessions.persistent_session_expiry.map_or(Expiry::Never, Expiry::After)
    };
    let keep_alive = pkt.keep_alive;
    let (username, credentials) = match ctx.credentials(io, pkt.username.as_ref(), pkt.password.as_ref()) {
        Ok(found) => found,
        Err(reason) => {
            broker.metrics().auth_failure();
            refused(reason);
            return Err(Some(Code::NotAuthorized));
        }
    };
    if let Err(err) = broker.authenticate(credentials).await {
        refused(&err.to_string());
        return Err(Some(match err {
            ConnectError::BadCredentials => Code::BadUserNameOrPassword,
            _ => Code::NotAuthorized,
        }));
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
                return Err(Some(Code::ServiceUnavailable));
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
            return Err(Some(match err {
                ConnectError::NotAuthorized => Code::NotAuthorized,
                ConnectError::BadCredentials => Code::BadUserNameOrPassword,
                ConnectError::ClientIdRejected => Code::IdentifierRejected,
                ConnectError::QuotaExceeded | ConnectError::ServerUnavailable => Code::ServiceUnavailable,
            }));
        }
    };
    let id = connected.assigned_client_id.clone().unwrap_or(client_id);
    let info = Arc::new(ConnectionInfo {
        peer,
        protocol,
        keep_alive,
        listener: ctx.name.clone(),
        username: pkt.username.clone(),
        connected_at: SystemTime::now(),
    });
    broker.set_connection_info(&connected.session, connected.generation, info.clone());
    tracing::info!(
        client_id = %id,
        peer = %display_peer(peer),
        listener = %ctx.name,
        protocol = protocol.as_str(),
        keep_alive,
        clean_session = pkt.clean_session,
        session_present = connected.session_present,
        "client connected"
    );
    super::record_connect(protocol, "accepted");
    let state = ConnState {
        broker: broker.clone(),
        session: connected.session.clone(),
        generation: connected.generation,
        signal: connected.signal.clone(),
        info,
        _slot: slot,
        ending: Cell::new(None),
    };
    Ok((state, connected.session_present, (!timeout.is_zero()).then_some(timeout)))
}

/// The read side of a v3 connection.
struct Inbound3<S> {
    conn: ConnState,
    io: Rc<S>,
    codec: codec::Codec,
    /// `limits.max_packet_size`, checked on the whole packet.
    max_packet: u64,
    /// PUBLISH whose payload is still arriving.
    assembly: super::PayloadAssembly<codec::Publish>,
    /// `limits.max_publish_rate` of this connection (boxed: most connections have none).
    rate: Option<Box<PublishRate>>,
    /// Acknowledgements waiting for the store (sent by the writer).
    acks: PendingAcks<Ack3>,
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

type Handled<'a> = Result<Reply<'a, codec::Encoded>, Stop>;

impl<S: Socket> Inbound for Inbound3<S> {
    type Codec = codec::Codec;
    type Socket = S;
    type Ack = Ack3;

    fn io(&self) -> &S {
        &self.io
    }

    fn acks(&self) -> &PendingAcks<Ack3> {
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

    fn handle(&self, packet: codec::Decoded) -> Handled<'_> {
        let conn = &self.conn;
        if let codec::Decoded::Publish(_, _, size) | codec::Decoded::Packet(_, size) = &packet
            && super::packet_size(*size) > self.max_packet
        {
            // The codec bounds the Remaining Length; the limit is on the whole packet.
            let reason = format!(
                "packet of {} bytes exceeds limits.max_packet_size ({} bytes)",
                super::packet_size(*size),
                self.max_packet
            );
            tracing::warn!(client_id = %conn.client_id(), "{reason}; disconnecting");
            return Err(Stop::violation(DisconnectReasonCode::PacketTooLarge, reason));
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
                Err(reason) => Err(Stop::violation(DisconnectReasonCode::MalformedPacket, reason)),
            },
            codec::Decoded::Packet(pkt, _) => match pkt {
                codec::Packet::PublishAck { packet_id } => {
                    conn.broker.puback(&conn.session, packet_id.get());
                    Ok(Reply::None)
                }
                codec::Packet::PublishReceived { packet_id } => {
                    // v3 always releases, known id or not; after the release is stored, so a
                    // restart re-sends the PUBREL rather than the PUBLISH.
                    let (_, durable) = conn.broker.pubrec(&conn.session, packet_id.get(), conn.generation);
                    Ok(self.ready_ack(durable, Ack3::Pubrel(packet_id)).into())
                }
                codec::Packet::PublishComplete { packet_id } => {
                    conn.broker.pubcomp(&conn.session, packet_id.get());
                    Ok(Reply::None)
                }
                codec::Packet::PublishRelease { packet_id } => {
                    conn.broker.release_inbound_qos2(&conn.session, packet_id.get());
                    Ok(Reply::Send(codec::Encoded::Packet(codec::Packet::PublishComplete { packet_id })))
                }
                codec::Packet::Subscribe { packet_id, topic_filters } => {
                    Ok(Reply::Wait(Box::pin(self.on_subscribe(packet_id, topic_filters))))
                }
                codec::Packet::Unsubscribe { packet_id, topic_filters } => {
                    conn.broker.unsubscribe(&conn.session, &topic_filters);
                    Ok(Reply::Send(codec::Encoded::Packet(codec::Packet::UnsubscribeAck { packet_id })))
                }
                codec::Packet::PingRequest => {
                    Ok(Reply::Send(codec::Encoded::Packet(codec::Packet::PingResponse)))
                }
                codec::Packet::Disconnect => {
                    conn.set_disconnect(DisconnectKind::Normal { publish_will: false, expiry: None });
                    Err(Stop::Disconnected)
                }
                codec::Packet::Connect(_) => Err(Stop::violation(
                    DisconnectReasonCode::ProtocolError,
                    "second CONNECT on a connection [MQTT-3.1.0-2]",
                )),
                other => Err(Stop::violation(
                    DisconnectReasonCode::ProtocolError,
                    format!("unexpected packet from a client: {other:?}"),
                )),
            },
        }
    }

    fn farewell(&self, _: &Stop) -> Option<codec::Encoded> {
        // MQTT 3 has no server DISCONNECT: the socket just closes.
        None
    }
}

impl<S: Socket> Inbound3<S> {
    /// The acknowledgement to answer with now, if its data is durable and none is held
    /// before it; otherwise the writer sends it later.
    fn ready_ack(&self, durable: crate::store::Durable, ack: Ack3) -> Option<codec::Encoded> {
        let (ack, durable) = self.acks.offer(durable, ack, &self.conn.signal)?;
        if durable {
            return Some(codec::Encoded::Packet(ack.packet()));
        }
        if ack.confirms_publish() {
            self.conn.set_close_reason("message store unavailable");
        }
        store_failed(self.conn.client_id(), &*self.io, ack);
        None
    }

    fn on_publish(
        &self,
        pkt: codec::Publish,
        payload: ntex::util::Bytes,
        size: u32,
    ) -> Result<Option<codec::Encoded>, Stop> {
        let conn = &self.conn;
        if pkt.payload_size as usize != payload.len() {
            return Err(Stop::violation(DisconnectReasonCode::MalformedPacket, "incomplete PUBLISH payload"));
        }
        if pkt.topic.is_empty() || pkt.topic.contains(['+', '#']) {
            return Err(Stop::violation(
                DisconnectReasonCode::TopicNameInvalid,
                "invalid PUBLISH topic [MQTT-3.3.2-2]",
            ));
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

    async fn on_subscribe(
        &self,
        packet_id: NonZeroU16,
        filters: Vec<(ntex::util::ByteString, codec::QoS)>,
    ) -> Result<Option<codec::Encoded>, Stop> {
        let conn = &self.conn;
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
                    tracing::debug!(client_id = %conn.client_id(), "subscribed to '{}' (QoS {})", req.filter, qos.level());
                    codec::SubscribeReturnCode::Success(qos_out(*qos))
                }
                Err(err) => {
                    tracing::info!(client_id = %conn.client_id(), "subscription to '{}' refused: {err}", req.filter);
                    codec::SubscribeReturnCode::Failure
                }
            })
            .collect();
        if let Err(err) = &stored {
            tracing::error!(client_id = %conn.client_id(), "subscriptions not stored: {err}");
        }
        // Encode the SUBACK now so retained messages queued next can only follow it.
        let suback = codec::Packet::SubscribeAck { packet_id, status };
        if self.io.encode(codec::Encoded::Packet(suback), &self.codec).is_err() {
            return Err(Stop::PeerGone(None));
        }
        conn.broker.deliver_retained(&conn.session, retained);
        Ok(None)
    }
}

/// The store could not keep what `ack` would confirm. v3 has no negative acknowledgement:
/// a PUBLISH is refused by closing the connection, so the client re-sends it later or
/// elsewhere; a PUBREL is withheld (the client re-sends its PUBREC on reconnect).
fn store_failed<S: Socket>(client_id: &str, io: &S, ack: Ack3) {
    if ack.confirms_publish() {
        tracing::error!(client_id, "PUBLISH not acknowledged, closing: message store unavailable");
        io.close();
    } else {
        tracing::error!(client_id, "PUBREL withheld: message store unavailable");
    }
}

/// Encodes outgoing packets for a v3 client. Its own codec: the read side's limits the
/// size of what the client may send, and ntex-mqtt's v3 encoder applies it to PUBLISH too.
struct Wire3<S> {
    codec: codec::Codec,
    socket: PhantomData<fn() -> S>,
}

impl<S: Socket> Wire for Wire3<S> {
    type Inbound = Inbound3<S>;

    fn send_ack(&mut self, on: &Inbound3<S>, ack: Ack3, durable: bool) -> Sent {
        if !durable {
            store_failed(on.conn.client_id(), &*on.io, ack);
            return if ack.confirms_publish() { Sent::Closed } else { Sent::Written(0) };
        }
        match on.io.encode(codec::Encoded::Packet(ack.packet()), &self.codec) {
            Ok(()) => Sent::Written(4),
            Err(_) => Sent::Closed,
        }
    }

    fn send(&mut self, on: &Inbound3<S>, item: Outgoing) -> Sent {
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
        match on.io.encode(encoded, &self.codec) {
            Ok(()) => Sent::Written(bytes),
            Err(err) => {
                tracing::debug!("encoding PUBLISH failed: {err}");
                Sent::Closed
            }
        }
    }

    fn close(&mut self, on: &Inbound3<S>, reason: Kick) {
        if reason != Kick::Detached {
            on.io.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_halves_stay_small() {
        // Both live in every v3 connection's task (issue 6: ≤ 2 KB per idle connection).
        use super::super::socket::TcpSocket;
        let inbound = std::mem::size_of::<Inbound3<TcpSocket>>();
        let wire = std::mem::size_of::<Wire3<TcpSocket>>();
        assert!(inbound <= 120 && wire <= 24, "Inbound3 {inbound} bytes, Wire3 {wire} bytes");
    }

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
