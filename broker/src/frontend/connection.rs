//! One client connection after its transport: the CONNECT handshake, then a single task that
//! reads the client's packets and writes the session's deliveries until the connection ends.
//!
//! ntex-mqtt is used as the codec only. Its server (per-connection dispatcher, boxed service
//! pipeline, readiness futures, sink) held about 9 KiB of every idle connection's 13 KiB and
//! about 7 µs of every delivery's 23 µs (issue 6 profiles in BENCHMARKS.md), while the front
//! ends already handled every packet but PINGREQ and DISCONNECT themselves. The reader and the
//! writer ([`super::writer`]) are two halves of one future, so a connection is one task.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use ntex::codec::{Decoder, Encoder};
use ntex::io::{Filter, Io, RecvError};
use ntex::time::Seconds;
use ntex_mqtt::error::DecodeError;
use ntex_mqtt::v5::codec::DisconnectReasonCode;

use super::preamble::{self, Preamble};
use super::socket::{Socket, TcpSocket};
use super::writer::{self, Wire};
use super::{ConnState, ListenerContext, PendingAcks, PublishRate};
use crate::transport::TransportError;

/// How long a new connection may take to send its CONNECT.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a closing connection may take to flush its last packets.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves one client connection on a listener's ntex transport (TLS, WebSocket, PROXY).
pub(crate) async fn serve<F: Filter>(io: Io<F>, ctx: Rc<ListenerContext>) -> Result<(), TransportError> {
    serve_socket(io.boxed(), ctx).await
}

/// Serves one client connection on plain TCP (see [`super::socket`]).
pub(crate) async fn serve_tcp(
    stream: tokio::net::TcpStream,
    ctx: Rc<ListenerContext>,
) -> Result<(), TransportError> {
    serve_socket(TcpSocket::new(stream), ctx).await
}

async fn serve_socket<S: Socket + 'static>(io: S, ctx: Rc<ListenerContext>) -> Result<(), TransportError> {
    let preamble = match ntex::time::timeout(CONNECT_TIMEOUT, preamble::normalize(&io)).await {
        Ok(Ok(preamble)) => preamble,
        Ok(Err(err)) => return Err(TransportError::Mqtt(err.to_string())),
        Err(()) => return Err(no_connect()),
    };
    match preamble {
        // Boxed: the connection holds only the protocol it speaks, not room for both. The
        // handshake ends by spawning the connection's own task ([`spawn_established`]), so
        // this task and its boxes end then.
        Preamble::V3 { v3_1 } => Box::pin(super::v3::serve(io, ctx, v3_1)).await,
        Preamble::V5 => Box::pin(super::v5::serve(io, ctx)).await,
    }
}

/// Reads the first packet with `codec`, within [`CONNECT_TIMEOUT`], and takes the CONNECT
/// out of it with `connect` (`None`: another packet, which ends the connection).
pub(crate) async fn read_connect<S: Socket, C: Decoder<Error = DecodeError>, P>(
    io: &S,
    codec: &C,
    connect: impl FnOnce(C::Item) -> Option<P>,
) -> Result<P, TransportError> {
    let packet = match ntex::time::timeout(CONNECT_TIMEOUT, poll_fn(|cx| io.poll_recv(codec, cx))).await {
        Ok(Ok(packet)) => packet,
        Ok(Err(RecvError::PeerGone(None))) => {
            return Err(TransportError::Mqtt("closed before CONNECT".to_string()));
        }
        Ok(Err(RecvError::Decoder(err))) => {
            return Err(TransportError::Mqtt(format!("invalid CONNECT: {err}")));
        }
        Ok(Err(RecvError::PeerGone(Some(err)))) => {
            return Err(TransportError::Mqtt(format!("network error before CONNECT: {err}")));
        }
        // No keep-alive timer runs yet and nothing has been written.
        Ok(Err(RecvError::KeepAlive | RecvError::WriteBackpressure)) => return Err(no_connect()),
        Err(()) => return Err(no_connect()),
    };
    connect(packet)
        .ok_or_else(|| TransportError::Mqtt("the first packet is not CONNECT [MQTT-3.1.0-1]".to_string()))
}

fn no_connect() -> TransportError {
    TransportError::Mqtt(format!("no CONNECT within {} s", CONNECT_TIMEOUT.as_secs()))
}

/// Sends the last packets (a refusing CONNACK, a DISCONNECT) and closes the socket.
pub(crate) async fn close<S: Socket>(io: &S) {
    io.close();
    let _ = ntex::time::timeout(CLOSE_TIMEOUT, io.shutdown()).await;
}

/// Why a connection's read side stopped.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The client sent DISCONNECT.
    Disconnected,
    /// The client broke a rule; `code` is MQTT 5's reason for its DISCONNECT.
    Violation {
        /// DISCONNECT reason code (MQTT 5 only).
        code: DisconnectReasonCode,
        /// What was wrong, for the log and the reason string.
        reason: String,
    },
    /// The client's packet could not be decoded.
    Decode(DecodeError),
    /// Nothing arrived for one and a half keep-alive periods.
    KeepAlive,
    /// The socket closed (with the error, if one).
    PeerGone(Option<io::Error>),
}

impl Stop {
    /// A protocol violation.
    pub(crate) fn violation(code: DisconnectReasonCode, reason: impl Into<String>) -> Self {
        Stop::Violation { code, reason: reason.into() }
    }

    /// The disconnect log line's reason (`None` for DISCONNECT, which the session records).
    fn reason(&self, client_id: &str) -> Option<String> {
        Some(match self {
            Stop::Disconnected => return None,
            Stop::Violation { reason, .. } => format!("protocol error: {reason}"),
            Stop::Decode(DecodeError::MaxSizeExceeded { size, max_size }) => {
                tracing::warn!(
                    client_id,
                    "packet of {size} bytes exceeds limits.max_packet_size ({max_size} bytes); disconnecting"
                );
                format!("packet too large ({size} > {max_size} bytes)")
            }
            Stop::Decode(err) => format!("protocol error: {err}"),
            Stop::KeepAlive => "keep-alive timeout".to_string(),
            Stop::PeerGone(Some(err)) => format!("network error: {err}"),
            Stop::PeerGone(None) => "connection closed by client without DISCONNECT".to_string(),
        })
    }

    /// The MQTT 5 DISCONNECT the broker sends for this stop, with its reason string.
    pub(crate) fn disconnect_code(&self) -> Option<(DisconnectReasonCode, String)> {
        match self {
            Stop::Disconnected | Stop::PeerGone(_) => None,
            Stop::Violation { code, reason } => Some((*code, reason.clone())),
            Stop::Decode(err @ DecodeError::MaxSizeExceeded { .. }) => {
                Some((DisconnectReasonCode::PacketTooLarge, err.to_string()))
            }
            Stop::Decode(err) => Some((DisconnectReasonCode::MalformedPacket, err.to_string())),
            Stop::KeepAlive => {
                Some((DisconnectReasonCode::KeepAliveTimeout, "keep-alive timeout".to_string()))
            }
        }
    }
}

/// What handling a packet asks for.
pub(crate) enum Reply<'a, E> {
    /// Nothing to send now.
    None,
    /// Send this answer.
    Send(E),
    /// Wait for this (a SUBSCRIBE waiting for the store), then send what it returns. Boxed:
    /// the rare long wait is not kept in every connection's future.
    Wait(Later<'a, E>),
}

impl<E> From<Option<E>> for Reply<'_, E> {
    fn from(answer: Option<E>) -> Self {
        answer.map_or(Reply::None, Reply::Send)
    }
}

/// The read side of an accepted connection, one per protocol version.
pub(crate) trait Inbound {
    /// The protocol's codec.
    type Codec: Decoder<Error = DecodeError> + Encoder;
    /// The connection's socket type.
    type Socket: Socket;
    /// An acknowledgement held until durable (see [`super::PendingAcks`]).
    type Ack;
    /// The connection's socket.
    fn io(&self) -> &Self::Socket;
    /// The codec used for this connection.
    fn codec(&self) -> &Self::Codec;
    /// The connection's state.
    fn conn(&self) -> &ConnState;
    /// Acknowledgements waiting for the store (the writer sends them).
    fn acks(&self) -> &PendingAcks<Self::Ack>;
    /// `limits.max_publish_rate` of this connection.
    fn rate(&self) -> Option<&PublishRate>;
    /// Handles one packet: what to answer, or why to stop.
    #[allow(clippy::type_complexity)]
    fn handle(
        &self,
        packet: <Self::Codec as Decoder>::Item,
    ) -> Result<Reply<'_, <Self::Codec as Encoder>::Item>, Stop>;
    /// The packet to send before closing for `stop` (MQTT 5's DISCONNECT).
    fn farewell(&self, stop: &Stop) -> Option<<Self::Codec as Encoder>::Item>;
}

/// Runs an accepted connection (see [`run`]) as a task of its own on this worker.
///
/// The handshake's future ends here. Kept inside it, the established connection cost about
/// twice its size: the handshake's locals and the connection's halves were laid out side by
/// side, 2.0 KiB per connection where the halves and `run` need 0.9 KiB (issue 6, heaptrack).
pub(crate) fn spawn_established<I, W>(inbound: I, mut wire: W, keep_alive: Option<Seconds>)
where
    I: Inbound + 'static,
    W: Wire<Inbound = I> + 'static,
{
    // Not awaited: the connection logs its own end.
    drop(ntex::rt::spawn(async move { run(&inbound, &mut wire, keep_alive).await }));
}

/// Runs an accepted connection until it ends: the read side and the writer (`wire`), in one
/// task. `keep_alive`: the idle timeout (`None`: none). Both halves are borrowed, so the
/// connection's future holds each of them once.
pub(crate) async fn run<I: Inbound, W: Wire<Inbound = I>>(
    inbound: &I,
    wire: &mut W,
    keep_alive: Option<Seconds>,
) {
    let io = inbound.io();
    if let Some(timeout) = keep_alive {
        io.start_timer(timeout);
    }
    let stop = {
        let mut read = pin!(read(inbound, keep_alive));
        let mut write = pin!(writer::run(inbound, wire));
        // Read side first, then the writer; each result ends the connection. (Written out
        // rather than with `tokio::select!`, whose bookkeeping took 40 more bytes of every
        // connection's future.)
        poll_fn(|cx| {
            if let Poll::Ready(stop) = read.as_mut().poll(cx) {
                return Poll::Ready(Some(stop));
            }
            // The writer stopped: the session moved on (it said goodbye) or the socket closed.
            if write.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            // Only a plain TCP socket writes from here, when the socket failed.
            io.poll_write_pending(cx).map(|()| None)
        })
        .await
    };
    if let Some(stop) = stop {
        let conn = inbound.conn();
        if let Some(reason) = stop.reason(conn.client_id()) {
            conn.set_close_reason(reason);
        }
        if let Some(packet) = inbound.farewell(&stop) {
            let _ = io.encode(packet, inbound.codec());
        }
    }
    close(io).await;
}

/// A reply that has to wait (SUBSCRIBE), finished before the next packet is read.
type Later<'a, E> = Pin<Box<dyn Future<Output = Result<Option<E>, Stop>> + 'a>>;

/// What the read side does after a packet.
enum Step<'a, E> {
    /// Read the next one.
    Next,
    /// The client does not read what it is sent: wait for the socket first.
    Backpressure,
    /// Finish this reply first.
    Wait(Later<'a, E>),
    /// The connection ends.
    Stop(Stop),
}

/// The read side: reads and handles the client's packets until the connection must end.
///
/// Packets and replies are handled in plain functions ([`on_received`], [`send_reply`]): the
/// packet types are large, and a value still held at an `await` would take room in every
/// connection's future.
async fn read<I: Inbound>(inbound: &I, keep_alive: Option<Seconds>) -> Stop {
    // As in the writer, the socket and codec are asked for where used, not kept.
    let mut later: Option<Later<'_, <I::Codec as Encoder>::Item>> = None;
    let mut backpressure = false;
    loop {
        if let Some(reply) = later.as_mut() {
            let result = reply.await;
            later = None;
            if let Err(stop) = send_reply(inbound.io(), inbound.codec(), result) {
                return stop;
            }
        }
        if std::mem::take(&mut backpressure)
            && let Err(err) = poll_fn(|cx| inbound.io().poll_flush(cx, false)).await
        {
            return Stop::PeerGone(Some(err));
        }
        if let Some(rate) = inbound.rate()
            && rate.pause().is_some()
        {
            // Over limits.max_publish_rate: not reading lets TCP slow the client down. Boxed:
            // only throttled connections need room for the wait.
            Box::pin(rate.wait()).await;
            inbound.conn().broker.metrics().publish_throttled();
        }
        let received = poll_fn(|cx| inbound.io().poll_recv(inbound.codec(), cx)).await;
        match on_received(inbound, received, keep_alive) {
            Step::Next => {}
            Step::Backpressure => backpressure = true,
            Step::Wait(reply) => later = Some(reply),
            Step::Stop(stop) => return stop,
        }
    }
}

/// Sends what a waiting reply produced.
fn send_reply<S: Socket, C: Encoder>(
    io: &S,
    codec: &C,
    result: Result<Option<C::Item>, Stop>,
) -> Result<(), Stop> {
    match result? {
        Some(answer) => io.encode(answer, codec).map_err(|_| Stop::PeerGone(None)),
        None => Ok(()),
    }
}

/// Handles what the socket delivered: a packet, or why none came.
#[allow(clippy::type_complexity)]
fn on_received<'a, I: Inbound>(
    inbound: &'a I,
    received: Result<<I::Codec as Decoder>::Item, RecvError<I::Codec>>,
    keep_alive: Option<Seconds>,
) -> Step<'a, <I::Codec as Encoder>::Item> {
    let packet = match received {
        Ok(packet) => packet,
        Err(RecvError::WriteBackpressure) => return Step::Backpressure,
        Err(RecvError::KeepAlive) => return Step::Stop(Stop::KeepAlive),
        Err(RecvError::Decoder(err)) => return Step::Stop(Stop::Decode(err)),
        Err(RecvError::PeerGone(err)) => return Step::Stop(Stop::PeerGone(err)),
    };
    let io = inbound.io();
    if let Some(timeout) = keep_alive {
        io.start_timer(timeout);
    }
    match inbound.handle(packet) {
        Ok(Reply::None) => Step::Next,
        Ok(Reply::Send(answer)) => {
            if io.encode(answer, inbound.codec()).is_err() {
                Step::Stop(Stop::PeerGone(None))
            } else {
                Step::Next
            }
        }
        Ok(Reply::Wait(reply)) => Step::Wait(reply),
        Err(stop) => Step::Stop(stop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_map_to_log_reasons_and_disconnect_codes() {
        let too_big = Stop::Decode(DecodeError::MaxSizeExceeded { size: 300, max_size: 200 });
        assert_eq!(too_big.reason("c").as_deref(), Some("packet too large (300 > 200 bytes)"));
        assert_eq!(
            too_big.disconnect_code().map(|(code, _)| code),
            Some(DisconnectReasonCode::PacketTooLarge)
        );
        let malformed = Stop::Decode(DecodeError::MalformedPacket);
        assert_eq!(
            malformed.disconnect_code().map(|(code, _)| code),
            Some(DisconnectReasonCode::MalformedPacket)
        );
        let alias = Stop::violation(DisconnectReasonCode::TopicAliasInvalid, "unknown topic alias");
        assert_eq!(alias.reason("c").as_deref(), Some("protocol error: unknown topic alias"));
        assert_eq!(
            alias.disconnect_code(),
            Some((DisconnectReasonCode::TopicAliasInvalid, "unknown topic alias".to_string()))
        );
        assert_eq!(Stop::KeepAlive.reason("c").as_deref(), Some("keep-alive timeout"));
        assert_eq!(
            Stop::KeepAlive.disconnect_code().map(|(code, _)| code),
            Some(DisconnectReasonCode::KeepAliveTimeout)
        );
        // The client left: nothing to tell it; its DISCONNECT is logged from the session state.
        assert_eq!(Stop::Disconnected.reason("c"), None);
        assert!(Stop::Disconnected.disconnect_code().is_none());
        assert!(Stop::PeerGone(None).disconnect_code().is_none());
        assert_eq!(
            Stop::PeerGone(None).reason("c").as_deref(),
            Some("connection closed by client without DISCONNECT")
        );
    }
}
