//! A routed message on the inter-node link: an MQTT 5 PUBLISH (ntex-mqtt's codec) that keeps
//! topic, payload, RETAIN, the application properties and the remaining expiry. The link
//! always runs at QoS 1, so the publisher's QoS travels in one trailing User Property that
//! the receiving node removes.

use std::num::NonZeroU32;
use std::time::Instant;

use ntex_mqtt::v5::codec;

use crate::core::types::{BROKER_ORIGIN, ByteString, Bytes, Message, Properties, QoS, expiry_deadline};

/// User Property carrying the publisher's QoS (a name clients are unlikely to use; it is
/// only read when it is the last property, where the sender puts it).
pub const QOS_PROPERTY: &str = "$fleetmq-qos";

/// The PUBLISH properties for `message`, `now` (for the remaining expiry).
pub fn properties(message: &Message, now: Instant) -> codec::PublishProperties {
    let mut out = codec::PublishProperties::default();
    if let Some(p) = &message.properties {
        out.is_utf8_payload = p.payload_is_utf8;
        out.content_type = p.content_type.clone();
        out.response_topic = p.response_topic.clone();
        out.correlation_data = p.correlation_data.clone();
        out.user_properties = p.user_properties.clone();
    }
    out.message_expiry_interval = message.remaining_expiry(now).and_then(NonZeroU32::new);
    out.user_properties
        .push((ByteString::from_static(QOS_PROPERTY), ByteString::from(message.qos.level().to_string())));
    out
}

/// The message a peer sent: `packet` as received (its QoS is the link's), `payload` read.
pub fn message(packet: &codec::Publish, payload: Bytes, now: Instant) -> Message {
    let p = &packet.properties;
    let mut user_properties = p.user_properties.clone();
    let mut qos = match packet.qos {
        codec::QoS::AtMostOnce => QoS::AtMostOnce,
        codec::QoS::AtLeastOnce => QoS::AtLeastOnce,
        codec::QoS::ExactlyOnce => QoS::ExactlyOnce,
    };
    if user_properties.last().is_some_and(|(name, _)| name == QOS_PROPERTY)
        && let Some((_, level)) = user_properties.pop()
    {
        qos = match &*level {
            "0" => QoS::AtMostOnce,
            "2" => QoS::ExactlyOnce,
            _ => QoS::AtLeastOnce,
        };
    }
    let properties = Properties {
        payload_is_utf8: p.is_utf8_payload,
        content_type: p.content_type.clone(),
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.clone(),
        user_properties,
    };
    Message {
        topic: packet.topic.clone(),
        payload,
        qos,
        retain: packet.retain,
        properties: (!properties.is_empty()).then(|| Box::new(properties)),
        expires_at: expiry_deadline(now, p.message_expiry_interval.map(NonZeroU32::get)),
        origin: BROKER_ORIGIN,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn round_trip(message: &Message) -> Message {
        let now = Instant::now();
        let packet = codec::Publish {
            dup: false,
            retain: message.retain,
            qos: codec::QoS::AtLeastOnce,
            packet_id: None,
            topic: message.topic.clone(),
            payload_size: message.payload.len() as u32,
            properties: properties(message, now),
        };
        super::message(&packet, message.payload.clone(), now)
    }

    #[test]
    fn qos_retain_payload_and_properties_survive_the_link() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let mut m = Message::new("a/b", "payload", qos, true);
            m.properties = Some(Box::new(Properties {
                payload_is_utf8: true,
                content_type: Some("text/plain".into()),
                response_topic: Some("reply/here".into()),
                correlation_data: Some(Bytes::from_static(b"\x01\x02")),
                user_properties: vec![("k".into(), "v".into()), ("k".into(), "v2".into())],
            }));
            let got = round_trip(&m);
            assert_eq!(got.qos, qos);
            assert!(got.retain);
            assert_eq!(got.payload, m.payload);
            assert_eq!(got.properties, m.properties, "user properties in order, marker removed");
            assert_eq!(got.expires_at, None);
        }
        let plain = round_trip(&Message::new("t", "", QoS::AtMostOnce, false));
        assert_eq!(plain.properties, None, "nothing added for a v3-style message");
        assert!(!plain.retain);
    }

    #[test]
    fn expiry_is_carried_as_remaining_seconds() {
        let mut m = Message::new("t", "x", QoS::AtLeastOnce, false);
        m.expires_at = Some(Instant::now() + Duration::from_secs(30));
        let got = round_trip(&m);
        let left = got.expires_at.unwrap().saturating_duration_since(Instant::now());
        assert!(left > Duration::from_secs(28) && left <= Duration::from_secs(30), "{left:?}");
    }

    #[test]
    fn a_clients_own_marker_lookalike_is_kept_when_not_last() {
        let mut m = Message::new("t", "x", QoS::AtMostOnce, false);
        m.properties = Some(Box::new(Properties {
            user_properties: vec![(QOS_PROPERTY.into(), "2".into())],
            ..Properties::default()
        }));
        let got = round_trip(&m);
        assert_eq!(got.qos, QoS::AtMostOnce);
        assert_eq!(got.properties.unwrap().user_properties.len(), 1);
    }
}
