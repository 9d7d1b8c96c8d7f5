//! A routed message on the inter-node link: an MQTT 5 PUBLISH (ntex-mqtt's codec) that keeps
//! topic, payload, RETAIN, the application properties and the remaining expiry. The link
//! always runs at QoS 1, so the publisher's QoS travels in a trailing User Property, preceded
//! by one User Property per shared group the receiving node is picked to serve; the receiving
//! node removes them.

use std::num::NonZeroU32;
use std::time::Instant;

use ntex_mqtt::v5::codec;

use super::table::Group;
use crate::core::types::{BROKER_ORIGIN, ByteString, Bytes, Message, Properties, QoS, expiry_deadline};

/// User Property carrying the publisher's QoS (a name clients are unlikely to use; it is
/// only read when it is the last property, where the sender puts it).
pub const QOS_PROPERTY: &str = "$fleetmq-qos";
/// User Property naming a shared group (`<group>/<filter>`) the receiver serves.
pub const SHARE_PROPERTY: &str = "$fleetmq-share";

/// The PUBLISH properties for `message`, `now` (for the remaining expiry), naming the shared
/// `groups` the receiver serves.
pub fn properties(message: &Message, now: Instant, groups: &[Group]) -> codec::PublishProperties {
    let mut out = codec::PublishProperties::default();
    if let Some(p) = &message.properties {
        out.is_utf8_payload = p.payload_is_utf8;
        out.content_type = p.content_type.clone();
        out.response_topic = p.response_topic.clone();
        out.correlation_data = p.correlation_data.clone();
        out.user_properties = p.user_properties.clone();
    }
    out.message_expiry_interval = message.remaining_expiry(now).and_then(NonZeroU32::new);
    for (group, filter) in groups {
        out.user_properties
            .push((ByteString::from_static(SHARE_PROPERTY), ByteString::from(format!("{group}/{filter}"))));
    }
    out.user_properties
        .push((ByteString::from_static(QOS_PROPERTY), ByteString::from(message.qos.level().to_string())));
    out
}

/// The message a peer sent (`packet` as received, its QoS is the link's; `payload` read) and
/// the shared groups this node serves for it.
pub fn message(packet: &codec::Publish, payload: Bytes, now: Instant) -> (Message, Vec<Group>) {
    let p = &packet.properties;
    let mut user_properties = p.user_properties.clone();
    let mut groups = Vec::new();
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
        // Only a node sends the marker, so the group properties before it are the node's too.
        while user_properties.last().is_some_and(|(name, _)| name == SHARE_PROPERTY) {
            if let Some((_, value)) = user_properties.pop()
                && let Some((group, filter)) = value.split_once('/')
            {
                groups.push((ByteString::from(group.to_string()), ByteString::from(filter.to_string())));
            }
        }
        groups.reverse();
    }
    let properties = Properties {
        payload_is_utf8: p.is_utf8_payload,
        content_type: p.content_type.clone(),
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.clone(),
        user_properties,
    };
    let message = Message {
        topic: packet.topic.clone(),
        payload,
        qos,
        retain: packet.retain,
        properties: (!properties.is_empty()).then(|| Box::new(properties)),
        expires_at: expiry_deadline(now, p.message_expiry_interval.map(NonZeroU32::get)),
        origin: BROKER_ORIGIN,
    };
    (message, groups)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn round_trip(message: &Message) -> Message {
        let (message, groups) = round_trip_groups(message, &[]);
        assert!(groups.is_empty());
        message
    }

    fn round_trip_groups(message: &Message, groups: &[Group]) -> (Message, Vec<Group>) {
        let now = Instant::now();
        let packet = codec::Publish {
            dup: false,
            retain: message.retain,
            qos: codec::QoS::AtLeastOnce,
            packet_id: None,
            topic: message.topic.clone(),
            payload_size: message.payload.len() as u32,
            properties: properties(message, now, groups),
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
    fn shared_groups_travel_in_order_and_are_removed() {
        let mut m = Message::new("jobs/1", "x", QoS::ExactlyOnce, false);
        m.properties = Some(Box::new(Properties {
            user_properties: vec![("k".into(), "v".into())],
            ..Properties::default()
        }));
        let groups = vec![("w".into(), "jobs/#".into()), ("$queue".into(), "jobs/+".into())];
        let (got, got_groups) = round_trip_groups(&m, &groups);
        assert_eq!(got_groups, groups);
        assert_eq!(got.qos, QoS::ExactlyOnce);
        assert_eq!(got.properties, m.properties);
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
