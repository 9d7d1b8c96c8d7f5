//! On-disk encoding of store values (postcard, behind a format byte) and keys.
//!
//! Times are stored as Unix milliseconds: an `Instant` does not survive a restart.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{LoadedSession, SessionRecord, StoreError};
use crate::core::session::{Expiry, Phase, Will};
use crate::core::types::{
    BROKER_ORIGIN, ByteString, Bytes, Delivery, Message, Properties, QoS, RetainHandling, SubscriptionOptions,
};

/// Value format version; bump on incompatible changes.
const FORMAT: u8 = 1;

/// Byte strings serialized as bytes (postcard writes a length and the raw bytes) and borrowed
/// back from the value buffer.
#[derive(Debug, Clone, Copy)]
struct Bin<'a>(&'a [u8]);

impl Serialize for Bin<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Bin<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'de [u8]>::deserialize(d).map(Bin)
    }
}

#[derive(Serialize, Deserialize)]
struct PropsRec<'a> {
    utf8: bool,
    #[serde(borrow)]
    content_type: Option<&'a str>,
    #[serde(borrow)]
    response_topic: Option<&'a str>,
    #[serde(borrow)]
    correlation: Option<Bin<'a>>,
    #[serde(borrow)]
    user: Vec<(&'a str, &'a str)>,
}

#[derive(Serialize, Deserialize)]
struct MessageRec<'a> {
    #[serde(borrow)]
    topic: &'a str,
    #[serde(borrow)]
    payload: Bin<'a>,
    qos: u8,
    retain: bool,
    #[serde(borrow)]
    props: Option<PropsRec<'a>>,
    expires_at_ms: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct QueueRec<'a> {
    #[serde(borrow)]
    message: MessageRec<'a>,
    qos: u8,
    retain: bool,
    sub_ids: Vec<u32>,
    /// The PUBREC arrived: only the PUBREL is outstanding.
    released: bool,
}

#[derive(Serialize, Deserialize)]
struct SubRec<'a> {
    filter: &'a str,
    qos: u8,
    no_local: bool,
    retain_as_published: bool,
    retain_handling: u8,
    id: Option<u32>,
}

#[derive(Serialize, Deserialize)]
struct WillRec<'a> {
    #[serde(borrow)]
    message: MessageRec<'a>,
    expiry_interval: Option<u32>,
    delay_ms: u64,
}

#[derive(Serialize, Deserialize)]
enum ExpiryRec {
    OnDisconnect,
    AfterMs(u64),
    Never,
}

#[derive(Serialize, Deserialize)]
struct SessionRec<'a> {
    store_id: u64,
    #[serde(borrow)]
    subscriptions: Vec<SubRec<'a>>,
    expiry: ExpiryRec,
    #[serde(borrow)]
    will: Option<WillRec<'a>>,
    disconnected_at_ms: Option<u64>,
}

/// Converts between `Instant` deadlines and wall-clock milliseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    instant: Instant,
    unix_ms: u64,
}

impl Clock {
    /// The current time on both clocks.
    pub(crate) fn now() -> Self {
        Clock { instant: Instant::now(), unix_ms: unix_ms(SystemTime::now()) }
    }

    fn to_unix(self, at: Instant) -> u64 {
        match at.checked_duration_since(self.instant) {
            Some(ahead) => self.unix_ms.saturating_add(ahead.as_millis() as u64),
            None => self.unix_ms.saturating_sub(self.instant.duration_since(at).as_millis() as u64),
        }
    }

    fn to_instant(self, ms: u64) -> Instant {
        if ms >= self.unix_ms {
            self.instant + Duration::from_millis(ms - self.unix_ms)
        } else {
            self.instant.checked_sub(Duration::from_millis(self.unix_ms - ms)).unwrap_or(self.instant)
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn qos_from(level: u8) -> Result<QoS, String> {
    match level {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        2 => Ok(QoS::ExactlyOnce),
        other => Err(format!("invalid QoS {other}")),
    }
}

fn message_rec<'a>(m: &'a Message, clock: Clock) -> MessageRec<'a> {
    MessageRec {
        topic: &m.topic,
        payload: Bin(&m.payload),
        qos: m.qos.level(),
        retain: m.retain,
        props: m.properties.as_deref().map(|p| PropsRec {
            utf8: p.payload_is_utf8,
            content_type: p.content_type.as_deref(),
            response_topic: p.response_topic.as_deref(),
            correlation: p.correlation_data.as_deref().map(Bin),
            user: p.user_properties.iter().map(|(k, v)| (&**k, &**v)).collect(),
        }),
        expires_at_ms: m.expires_at.map(|at| clock.to_unix(at)),
    }
}

fn message_from(r: MessageRec<'_>, clock: Clock) -> Result<Message, String> {
    let properties = r.props.map(|p| {
        Box::new(Properties {
            payload_is_utf8: p.utf8,
            content_type: p.content_type.map(ByteString::from),
            response_topic: p.response_topic.map(ByteString::from),
            correlation_data: p.correlation.map(|b| Bytes::copy_from_slice(b.0)),
            user_properties: p
                .user
                .into_iter()
                .map(|(k, v)| (ByteString::from(k), ByteString::from(v)))
                .collect(),
        })
    });
    Ok(Message {
        topic: ByteString::from(r.topic),
        payload: Bytes::copy_from_slice(r.payload.0),
        qos: qos_from(r.qos)?,
        retain: r.retain,
        properties,
        expires_at: r.expires_at_ms.map(|ms| clock.to_instant(ms)),
        origin: BROKER_ORIGIN,
    })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT];
    // Serializing our own plain structs into a Vec cannot fail.
    out.extend(postcard::to_stdvec(value).unwrap_or_default());
    out
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, String> {
    match bytes.split_first() {
        Some((&FORMAT, rest)) => postcard::from_bytes(rest).map_err(|e| format!("undecodable {what}: {e}")),
        Some((other, _)) => {
            Err(format!("{what} has unknown format version {other} (written by a newer FleetMQ?)"))
        }
        None => Err(format!("empty {what} record")),
    }
}

/// Encodes a retained message.
pub(crate) fn encode_message(m: &Message, clock: Clock) -> Vec<u8> {
    encode(&message_rec(m, clock))
}

/// Decodes a retained or delayed message.
pub(crate) fn decode_message(bytes: &[u8], clock: Clock) -> Result<Message, String> {
    message_from(decode(bytes, "message")?, clock)
}

/// Encodes a queued delivery.
pub(crate) fn encode_delivery(d: &Delivery, released: bool, clock: Clock) -> Vec<u8> {
    encode(&QueueRec {
        message: message_rec(&d.message, clock),
        qos: d.qos.level(),
        retain: d.retain,
        sub_ids: d.subscription_ids.iter().map(|id| id.get()).collect(),
        released,
    })
}

/// Decodes a queued delivery; the flag says whether its PUBREC had arrived.
pub(crate) fn decode_delivery(bytes: &[u8], clock: Clock) -> Result<(Delivery, bool), String> {
    let r: QueueRec<'_> = decode(bytes, "queued message")?;
    let delivery = Delivery {
        message: Arc::new(message_from(r.message, clock)?),
        qos: qos_from(r.qos)?,
        retain: r.retain,
        subscription_ids: r.sub_ids.into_iter().filter_map(std::num::NonZeroU32::new).collect(),
    };
    Ok((delivery, r.released))
}

/// Encodes session metadata.
pub(crate) fn encode_session(s: &SessionRecord, clock: Clock) -> Vec<u8> {
    encode(&SessionRec {
        store_id: s.store_id,
        subscriptions: s
            .subscriptions
            .iter()
            .map(|(filter, o)| SubRec {
                filter,
                qos: o.qos.level(),
                no_local: o.no_local,
                retain_as_published: o.retain_as_published,
                retain_handling: match o.retain_handling {
                    RetainHandling::SendAlways => 0,
                    RetainHandling::SendIfNew => 1,
                    RetainHandling::DontSend => 2,
                },
                id: o.subscription_id.map(|id| id.get()),
            })
            .collect(),
        expiry: match s.expiry {
            Expiry::OnDisconnect => ExpiryRec::OnDisconnect,
            Expiry::After(d) => ExpiryRec::AfterMs(d.as_millis() as u64),
            Expiry::Never => ExpiryRec::Never,
        },
        will: s.will.as_ref().map(|w| WillRec {
            message: message_rec(&w.message, clock),
            expiry_interval: w.expiry_interval,
            delay_ms: w.delay.as_millis() as u64,
        }),
        disconnected_at_ms: s.disconnected_at.map(unix_ms),
    })
}

/// Decodes session metadata stored under `client_id`.
pub(crate) fn decode_session(client_id: &str, bytes: &[u8], clock: Clock) -> Result<SessionRecord, String> {
    let r: SessionRec<'_> = decode(bytes, "session")?;
    let mut subscriptions = Vec::with_capacity(r.subscriptions.len());
    for sub in r.subscriptions {
        subscriptions.push((
            ByteString::from(sub.filter),
            SubscriptionOptions {
                qos: qos_from(sub.qos)?,
                no_local: sub.no_local,
                retain_as_published: sub.retain_as_published,
                retain_handling: match sub.retain_handling {
                    0 => RetainHandling::SendAlways,
                    1 => RetainHandling::SendIfNew,
                    _ => RetainHandling::DontSend,
                },
                subscription_id: sub.id.and_then(std::num::NonZeroU32::new),
            },
        ));
    }
    let will = match r.will {
        Some(w) => Some(Will {
            message: message_from(w.message, clock)?,
            expiry_interval: w.expiry_interval,
            delay: Duration::from_millis(w.delay_ms),
        }),
        None => None,
    };
    Ok(SessionRecord {
        store_id: r.store_id,
        client_id: ByteString::from(client_id),
        expiry: match r.expiry {
            ExpiryRec::OnDisconnect => Expiry::OnDisconnect,
            ExpiryRec::AfterMs(ms) => Expiry::After(Duration::from_millis(ms)),
            ExpiryRec::Never => Expiry::Never,
        },
        subscriptions,
        will,
        disconnected_at: r.disconnected_at_ms.map(from_unix_ms),
    })
}

/// Queue key: store id then sequence number, big-endian so keys sort by both.
pub(crate) fn queue_key(store_id: u64, seq: u64) -> [u8; 16] {
    let mut k = [0; 16];
    k[..8].copy_from_slice(&store_id.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Inbound QoS 2 key: store id then packet id.
pub(crate) fn inbound_key(store_id: u64, packet_id: u16) -> [u8; 10] {
    let mut k = [0; 10];
    k[..8].copy_from_slice(&store_id.to_be_bytes());
    k[8..].copy_from_slice(&packet_id.to_be_bytes());
    k
}

/// Delayed publish key: due time (Unix ms) then a sequence number.
pub(crate) fn delayed_key(key: (u64, u64)) -> [u8; 16] {
    queue_key(key.0, key.1)
}

/// Splits a 16-byte key into its two big-endian numbers.
pub(crate) fn split_key16(key: &[u8]) -> Result<(u64, u64), String> {
    let (a, b) = key.split_at_checked(8).ok_or("short key")?;
    let a = u64::from_be_bytes(a.try_into().map_err(|_| "bad key")?);
    let b = u64::from_be_bytes(b.try_into().map_err(|_| "bad key length")?);
    Ok((a, b))
}

/// Splits a queue-floor record into (store id, floor).
pub(crate) fn split_floor(key: &[u8], value: &[u8]) -> Result<(u64, u64), String> {
    let store_id = u64::from_be_bytes(key.try_into().map_err(|_| "bad floor key length")?);
    let floor = u64::from_be_bytes(value.try_into().map_err(|_| "bad floor value length")?);
    Ok((store_id, floor))
}

/// Splits an inbound key.
pub(crate) fn split_inbound_key(key: &[u8]) -> Result<(u64, u16), String> {
    if key.len() != 10 {
        return Err("bad inbound key length".into());
    }
    let store_id = u64::from_be_bytes(key[..8].try_into().map_err(|_| "bad key")?);
    let packet_id = u16::from_be_bytes(key[8..].try_into().map_err(|_| "bad key")?);
    Ok((store_id, packet_id))
}

/// Converts a store error message.
pub(crate) fn corrupt(what: &str, key: &[u8], reason: String) -> StoreError {
    StoreError::Engine(format!("{what} record {}: {reason}", String::from_utf8_lossy(key)))
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn rich_message() -> Message {
        let mut m = Message::new("a/b", vec![0u8, 1, 2, 255], QoS::ExactlyOnce, true);
        m.properties = Some(Box::new(Properties {
            payload_is_utf8: true,
            content_type: Some("text/plain".into()),
            response_topic: Some("reply/here".into()),
            correlation_data: Some(Bytes::from_static(b"\x00corr")),
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "v2".into())],
        }));
        m.expires_at = Some(Instant::now() + Duration::from_secs(30));
        m
    }

    #[test]
    fn messages_round_trip_with_properties_and_expiry() {
        let clock = Clock::now();
        let m = rich_message();
        let back = decode_message(&encode_message(&m, clock), clock).unwrap();
        assert_eq!(back.topic, m.topic);
        assert_eq!(back.payload, m.payload);
        assert_eq!(back.properties, m.properties);
        assert_eq!((back.qos, back.retain), (m.qos, m.retain));
        let drift = back.expires_at.unwrap().max(m.expires_at.unwrap())
            - back.expires_at.unwrap().min(m.expires_at.unwrap());
        assert!(drift < Duration::from_millis(2), "expiry survives as wall-clock time");
    }

    #[test]
    fn deliveries_and_sessions_round_trip() {
        let clock = Clock::now();
        let d = Delivery {
            message: Arc::new(rich_message()),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![NonZeroU32::new(7).unwrap()],
        };
        let (back, released) = decode_delivery(&encode_delivery(&d, true, clock), clock).unwrap();
        assert!(released);
        assert_eq!(
            (back.qos, back.retain, back.subscription_ids.clone()),
            (d.qos, d.retain, d.subscription_ids.clone())
        );
        let record = SessionRecord {
            store_id: 99,
            client_id: "dev-1".into(),
            expiry: Expiry::After(Duration::from_secs(3600)),
            subscriptions: vec![(
                "$share/g/a/+".into(),
                SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::SendIfNew,
                    subscription_id: NonZeroU32::new(3),
                },
            )],
            will: Some(Will {
                message: rich_message(),
                expiry_interval: Some(5),
                delay: Duration::from_secs(9),
            }),
            disconnected_at: Some(SystemTime::now()),
        };
        let back = decode_session("dev-1", &encode_session(&record, clock), clock).unwrap();
        assert_eq!(back.store_id, 99);
        assert_eq!(back.expiry, record.expiry);
        assert_eq!(back.subscriptions, record.subscriptions);
        assert_eq!(
            back.will.as_ref().map(|w| (w.delay, w.expiry_interval)),
            Some((Duration::from_secs(9), Some(5)))
        );
        assert_eq!(back.disconnected_at.map(unix_ms), record.disconnected_at.map(unix_ms));
    }

    #[test]
    fn unknown_format_and_garbage_are_errors() {
        let clock = Clock::now();
        let mut bytes = encode_message(&rich_message(), clock);
        bytes[0] = 9;
        assert!(decode_message(&bytes, clock).unwrap_err().contains("format version 9"));
        assert!(decode_message(&[FORMAT, 0xff, 0xff], clock).is_err());
        assert!(decode_message(&[], clock).is_err());
    }

    #[test]
    fn keys_sort_by_session_then_sequence() {
        assert!(queue_key(1, 300) < queue_key(2, 1));
        assert!(queue_key(1, 2) < queue_key(1, 256));
        assert_eq!(split_key16(&queue_key(7, 9)).unwrap(), (7, 9));
        assert_eq!(split_inbound_key(&inbound_key(7, 513)).unwrap(), (7, 513));
    }
}

/// A session moving between cluster nodes: its metadata and every delivery, each encoded as
/// the store encodes it.
#[derive(Serialize, Deserialize)]
struct HandoverRec<'a> {
    client_id: &'a str,
    #[serde(borrow)]
    session: &'a [u8],
    /// (sequence number, encoded delivery; its flag says the PUBREC had arrived).
    #[serde(borrow)]
    deliveries: Vec<(u64, &'a [u8])>,
    inbound: Vec<u16>,
    floor: u64,
}

/// Encodes a session for a handover to another node (message expiry travels as wall-clock
/// time, like in the store).
pub(crate) fn encode_handover(s: &LoadedSession, clock: Clock) -> Vec<u8> {
    let session = encode_session(&s.record, clock);
    let deliveries: Vec<(u64, Vec<u8>)> = s
        .deliveries
        .iter()
        .map(|(seq, d, phase)| (*seq, encode_delivery(d, *phase == Some(Phase::AwaitPubcomp), clock)))
        .collect();
    encode(&HandoverRec {
        client_id: &s.record.client_id,
        session: &session,
        deliveries: deliveries.iter().map(|(seq, bytes)| (*seq, bytes.as_slice())).collect(),
        inbound: s.inbound.clone(),
        floor: s.floor,
    })
}

/// Decodes [`encode_handover`]'s output.
pub(crate) fn decode_handover(bytes: &[u8], clock: Clock) -> Result<LoadedSession, String> {
    let r: HandoverRec<'_> = decode(bytes, "session handover")?;
    let record = decode_session(r.client_id, r.session, clock)?;
    let mut deliveries = Vec::with_capacity(r.deliveries.len());
    for (seq, bytes) in r.deliveries {
        let (delivery, released) = decode_delivery(bytes, clock)?;
        deliveries.push((seq, delivery, released.then_some(Phase::AwaitPubcomp)));
    }
    Ok(LoadedSession { record, deliveries, inbound: r.inbound, floor: r.floor })
}
