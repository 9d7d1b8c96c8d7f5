//! MQTT 5.0 features: topic aliases, message expiry, property pass-through, subscription
//! identifiers, No Local, Maximum Packet Size, CONNACK properties, reason codes, UNSUBACK
//! and a second CONNECT.

use std::time::Duration;

use fleetmq_config::ByteSize;

use crate::common::{self, QUIET, v3, v5};
use crate::raw::{self, Packet, Props, Raw, prop};

fn connack_props(p: Packet) -> Props {
    match p {
        Packet::ConnAck { code: 0, props, .. } => props,
        other => panic!("expected a successful CONNACK, got {other:?}"),
    }
}

#[tokio::test]
async fn v5_connack_advertises_broker_limits_and_capabilities() {
    let broker = common::broker_with(|c| {
        c.limits.max_inflight = 7;
        c.limits.max_topic_alias = 5;
        c.limits.max_packet_size = ByteSize::b(4096);
    });
    let port = broker.addr().port();
    let (_c, ack) = Raw::connect(port, &raw::v5("caps")).await;
    let props = connack_props(ack);
    assert_eq!(props.get_int(prop::RECEIVE_MAXIMUM), Some(7), "Receive Maximum = limits.max_inflight");
    assert_eq!(props.get_int(prop::TOPIC_ALIAS_MAXIMUM), Some(5), "Topic Alias Maximum");
    assert_eq!(props.get_int(prop::MAXIMUM_PACKET_SIZE), Some(4096), "Maximum Packet Size");
    for (id, name) in [
        (prop::RETAIN_AVAILABLE, "Retain Available"),
        (prop::WILDCARD_SUB_AVAILABLE, "Wildcard Subscription Available"),
        (prop::SUB_ID_AVAILABLE, "Subscription Identifiers Available"),
        (prop::SHARED_SUB_AVAILABLE, "Shared Subscription Available"),
    ] {
        assert_ne!(props.get_int(id), Some(0), "{name} must not be 0");
    }
}

#[tokio::test]
async fn v5_inbound_topic_alias_is_resolved() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut sub, _) = v5::connect(v5::options(port, "ta-sub")).await;
    sub.subscribe("ta/#", v5::QoS::AtLeastOnce).await;
    let (mut c, _) = Raw::connect_ok(port, &raw::v5("ta-pub")).await;
    let mut set = raw::Publish::new("ta/long/topic", 1, 1, b"first");
    set.props = Props::new().int(prop::TOPIC_ALIAS, 3);
    c.publish(&set).await;
    let mut used = raw::Publish::new("", 1, 2, b"second");
    used.props = Props::new().int(prop::TOPIC_ALIAS, 3);
    c.publish(&used).await;
    // Re-pointing the alias.
    let mut moved = raw::Publish::new("ta/other", 0, 0, b"third");
    moved.props = Props::new().int(prop::TOPIC_ALIAS, 3);
    c.publish(&moved).await;
    let mut again = raw::Publish::new("", 0, 0, b"fourth");
    again.props = Props::new().int(prop::TOPIC_ALIAS, 3);
    c.publish(&again).await;
    for (topic, payload) in [
        ("ta/long/topic", "first"),
        ("ta/long/topic", "second"),
        ("ta/other", "third"),
        ("ta/other", "fourth"),
    ] {
        let p = sub.expect_publish().await;
        assert_eq!((&p.topic[..], &p.payload[..]), (topic.as_bytes(), payload.as_bytes()));
    }
}

#[tokio::test]
async fn v5_topic_alias_above_maximum_disconnects_with_0x94() {
    let broker = common::broker_with(|c| c.limits.max_topic_alias = 5);
    let port = broker.addr().port();
    let (mut c, _) = Raw::connect_ok(port, &raw::v5("ta-max")).await;
    let mut p = raw::Publish::new("ta/t", 0, 0, b"x");
    p.props = Props::new().int(prop::TOPIC_ALIAS, 6);
    c.publish(&p).await;
    let before = c.expect_closed(common::WAIT).await;
    assert_eq!(raw::disconnect_code(&before), Some(0x94), "Topic Alias Invalid: {before:?}");
}

#[tokio::test]
async fn v5_unknown_topic_alias_disconnects_with_0x94() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut c, _) = Raw::connect_ok(port, &raw::v5("ta-unknown")).await;
    let mut p = raw::Publish::new("", 1, 1, b"x");
    p.props = Props::new().int(prop::TOPIC_ALIAS, 2);
    c.publish(&p).await;
    let before = c.expect_closed(common::WAIT).await;
    assert_eq!(raw::disconnect_code(&before), Some(0x94), "Topic Alias Invalid: {before:?}");
}

#[tokio::test]
async fn v5_outbound_topic_aliases_are_assigned_within_the_client_maximum() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut sub, _) = Raw::connect_ok(port, &raw::v5("tao-sub").prop(prop::TOPIC_ALIAS_MAXIMUM, 2)).await;
    sub.subscribe_ok(1, &[("tao/#", 0)]).await;
    let (publisher, _) = v3::connect(v3::options(port, "tao-pub")).await;
    for t in ["tao/1", "tao/2", "tao/3", "tao/1", "tao/3", "tao/2"] {
        publisher.client.publish(t, v3::QoS::AtMostOnce, false, t).await.unwrap();
    }
    let mut aliases = std::collections::HashMap::new();
    for t in ["tao/1", "tao/2", "tao/3", "tao/1", "tao/3", "tao/2"] {
        let p = sub.expect_publish().await;
        assert_eq!(p.payload, t.as_bytes());
        let alias = p.props.get_int(prop::TOPIC_ALIAS);
        if let Some(a) = alias {
            assert!((1..=2).contains(&a), "alias {a} beyond the client's Topic Alias Maximum 2");
        }
        match aliases.get(t) {
            None => {
                assert_eq!(p.topic, t, "first use carries the topic");
                if let Some(a) = alias {
                    aliases.insert(t, a);
                }
            }
            Some(a) => {
                assert_eq!(alias, Some(*a), "{t} reuses its alias");
                assert_eq!(p.topic, "", "{t}: topic omitted once the alias is known");
            }
        }
    }
    assert_eq!(aliases.len(), 2, "two aliases assigned: {aliases:?}");
}

#[tokio::test]
async fn v5_no_outbound_topic_alias_without_a_client_maximum() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut sub, _) = Raw::connect_ok(port, &raw::v5("tan-sub")).await;
    sub.subscribe_ok(1, &[("tan/t", 0)]).await;
    let (publisher, _) = v3::connect(v3::options(port, "tan-pub")).await;
    for _ in 0..2 {
        publisher.client.publish("tan/t", v3::QoS::AtMostOnce, false, "x").await.unwrap();
        let p = sub.expect_publish().await;
        assert_eq!(p.topic, "tan/t");
        assert!(!p.props.has(prop::TOPIC_ALIAS));
    }
}

#[tokio::test]
async fn v5_expired_queued_messages_are_dropped_and_remaining_interval_is_forwarded() {
    let broker = common::broker();
    let port = broker.addr().port();
    let connect = raw::v5("mx-sub").clean(false).prop(prop::SESSION_EXPIRY, 60);
    let (mut sub, _) = Raw::connect_ok(port, &connect).await;
    sub.subscribe_ok(1, &[("mx/#", 1)]).await;
    sub.disconnect(0, Props::new()).await;
    let (mut publisher, _) = Raw::connect_ok(port, &raw::v5("mx-pub")).await;
    for (i, (topic, expiry)) in
        [("mx/short", Some(1)), ("mx/long", Some(60)), ("mx/none", None)].into_iter().enumerate()
    {
        let mut p = raw::Publish::new(topic, 1, i as u16 + 1, topic.as_bytes());
        if let Some(e) = expiry {
            p.props = Props::new().int(prop::MESSAGE_EXPIRY, e);
        }
        publisher.publish(&p).await;
        publisher.expect().await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut sub, present) = Raw::connect_ok(port, &connect).await;
    assert!(present);
    let long = sub.expect_publish().await;
    assert_eq!(long.topic, "mx/long", "the expired message was dropped");
    let left = long.props.get_int(prop::MESSAGE_EXPIRY).expect("remaining interval");
    assert!((58..=59).contains(&left), "remaining interval forwarded, got {left}");
    let none = sub.expect_publish().await;
    assert_eq!(none.topic, "mx/none");
    assert!(!none.props.has(prop::MESSAGE_EXPIRY));
    assert_eq!(broker.broker.metrics().dropped_count(fleetmq_broker::core::metrics::DropReason::Expired), 1);
}

#[tokio::test]
async fn v5_message_expiry_is_forwarded_to_online_subscribers() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut sub, _) = v5::connect(v5::options(port, "mxo-sub")).await;
    sub.subscribe("mxo/t", v5::QoS::AtLeastOnce).await;
    let (publisher, _) = v5::connect(v5::options(port, "mxo-pub")).await;
    let props = v5::PublishProperties { message_expiry_interval: Some(30), ..Default::default() };
    publisher.client.publish_with_properties("mxo/t", v5::QoS::AtLeastOnce, false, "x", props).await.unwrap();
    let p = sub.expect_publish().await;
    let left = p.properties.and_then(|p| p.message_expiry_interval);
    assert!(matches!(left, Some(29..=30)), "{left:?}");
}

#[tokio::test]
async fn v5_application_properties_pass_through_unchanged() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut sub, _) = v5::connect(v5::options(port, "pp-sub")).await;
    sub.subscribe("pp/t", v5::QoS::ExactlyOnce).await;
    let (mut sub3, _) = v3::connect(v3::options(port, "pp-sub3")).await;
    sub3.subscribe("pp/t", v3::QoS::AtLeastOnce).await;
    let (publisher, _) = v5::connect(v5::options(port, "pp-pub")).await;
    let users = vec![
        ("b".to_string(), "2".to_string()),
        ("a".to_string(), "1".to_string()),
        ("b".to_string(), "3".to_string()),
    ];
    let props = v5::PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        response_topic: Some("pp/reply".into()),
        correlation_data: Some(b"\x00\x01corr".to_vec().into()),
        user_properties: users.clone(),
        ..Default::default()
    };
    publisher.client.publish_with_properties("pp/t", v5::QoS::ExactlyOnce, false, "{}", props).await.unwrap();
    let p = sub.expect_publish().await;
    let got = p.properties.expect("properties");
    assert_eq!(got.payload_format_indicator, Some(1));
    assert_eq!(got.content_type.as_deref(), Some("application/json"));
    assert_eq!(got.response_topic.as_deref(), Some("pp/reply"));
    assert_eq!(got.correlation_data.as_deref(), Some(&b"\x00\x01corr"[..]));
    assert_eq!(got.user_properties, users, "user properties in order, duplicates kept");
    assert_eq!(got.message_expiry_interval, None);
    assert_eq!(&p.payload[..], b"{}");
    // A v3 subscriber gets the same message without properties.
    assert_eq!(sub3.expect_publish().await.payload, &b"{}"[..]);
}

#[tokio::test]
async fn v5_subscription_identifier_is_sent_with_matching_deliveries() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut sub, _) = v5::connect(v5::options(port, "sid-sub")).await;
    sub.subscribe_filters(vec![v5::Filter::new("sid/a", v5::QoS::AtLeastOnce)], Some(42)).await;
    sub.subscribe_filters(vec![v5::Filter::new("sid/b", v5::QoS::AtLeastOnce)], None).await;
    let (publisher, _) = v5::connect(v5::options(port, "sid-pub")).await;
    publisher.client.publish("sid/a", v5::QoS::AtLeastOnce, false, "a").await.unwrap();
    let p = sub.expect_publish().await;
    assert_eq!(p.properties.map(|p| p.subscription_identifiers), Some(vec![42]));
    publisher.client.publish("sid/b", v5::QoS::AtLeastOnce, false, "b").await.unwrap();
    let p = sub.expect_publish().await;
    assert!(p.properties.is_none_or(|p| p.subscription_identifiers.is_empty()));
}

#[tokio::test]
async fn v5_no_local_skips_the_subscribers_own_publishes() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut me, _) = v5::connect(v5::options(port, "nl-me")).await;
    let mut f = v5::Filter::new("nl/t", v5::QoS::AtLeastOnce);
    f.nolocal = true;
    me.subscribe_filters(vec![f], None).await;
    let (mut echo, _) = v5::connect(v5::options(port, "nl-echo")).await;
    echo.subscribe("nl/t", v5::QoS::AtLeastOnce).await;
    me.client.publish("nl/t", v5::QoS::AtLeastOnce, false, "mine").await.unwrap();
    me.expect_no_publish().await;
    echo.client.publish("nl/t", v5::QoS::AtLeastOnce, false, "theirs").await.unwrap();
    // A subscriber without No Local gets its own message.
    let got: Vec<Vec<u8>> =
        vec![echo.expect_publish().await.payload.to_vec(), echo.expect_publish().await.payload.to_vec()];
    assert_eq!(got, vec![b"mine".to_vec(), b"theirs".to_vec()]);
    assert_eq!(me.expect_publish().await.payload, &b"theirs"[..]);
}

#[tokio::test]
async fn v5_messages_larger_than_the_client_maximum_packet_size_are_dropped_for_it() {
    let broker = common::broker();
    let port = broker.addr().port();
    let mut o = v5::options(port, "mps-small");
    o.set_max_packet_size(Some(200));
    let (mut small, _) = v5::connect(o).await;
    small.subscribe("mps/t", v5::QoS::AtLeastOnce).await;
    let (mut big, _) = v5::connect(v5::options(port, "mps-big")).await;
    big.subscribe("mps/t", v5::QoS::AtLeastOnce).await;
    let (publisher, _) = v5::connect(v5::options(port, "mps-pub")).await;
    publisher.client.publish("mps/t", v5::QoS::AtLeastOnce, false, vec![b'x'; 500]).await.unwrap();
    publisher.client.publish("mps/t", v5::QoS::AtLeastOnce, false, "small").await.unwrap();
    assert_eq!(big.expect_publish().await.payload.len(), 500);
    assert_eq!(big.expect_publish().await.payload, &b"small"[..]);
    let p = small.expect_publish().await;
    assert_eq!(p.payload, &b"small"[..], "the oversized message was skipped, the next one delivered");
    small.expect_no_publish().await;
    assert_eq!(broker.broker.metrics().dropped_count(fleetmq_broker::core::metrics::DropReason::TooLarge), 1);
}

#[tokio::test]
async fn v5_puback_and_pubrec_say_0x10_when_no_subscription_matched() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut c, _) = v5::connect(v5::options(port, "nms")).await;
    c.client.publish("nms/nobody", v5::QoS::AtLeastOnce, false, "x").await.unwrap();
    match c.expect_ack().await {
        v5::Packet::PubAck(a) => assert_eq!(a.reason, v5::PubAckReason::NoMatchingSubscribers),
        other => panic!("{other:?}"),
    }
    c.client.publish("nms/nobody", v5::QoS::ExactlyOnce, false, "x").await.unwrap();
    match c.expect_ack().await {
        v5::Packet::PubRec(a) => assert_eq!(a.reason, v5::PubRecReason::NoMatchingSubscribers),
        other => panic!("{other:?}"),
    }
    c.subscribe("nms/somebody", v5::QoS::AtMostOnce).await;
    c.client.publish("nms/somebody", v5::QoS::AtLeastOnce, false, "x").await.unwrap();
    match c.expect_ack().await {
        v5::Packet::PubAck(a) => assert_eq!(a.reason, v5::PubAckReason::Success),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn v5_unsuback_reports_success_and_no_subscription_existed() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut c, _) = Raw::connect_ok(port, &raw::v5("uns5")).await;
    c.subscribe_ok(1, &[("uns/a", 1), ("$share/g/uns/b", 1)]).await;
    c.unsubscribe(2, &["uns/a", "uns/never", "$share/g/uns/b", "$share/h/uns/b"]).await;
    match c.expect().await {
        Packet::UnsubAck { id: 2, codes, .. } => assert_eq!(codes, vec![0x00, 0x11, 0x00, 0x11]),
        other => panic!("{other:?}"),
    }
    c.unsubscribe(3, &["uns/a"]).await;
    assert!(matches!(c.expect().await, Packet::UnsubAck { id: 3, codes, .. } if codes == vec![0x11]));
    let (publisher, _) = v3::connect(v3::options(port, "uns5-pub")).await;
    publisher.client.publish("uns/a", v3::QoS::AtLeastOnce, false, "x").await.unwrap();
    publisher.client.publish("uns/b", v3::QoS::AtLeastOnce, false, "x").await.unwrap();
    c.expect_nothing(QUIET).await;
}

#[tokio::test]
async fn v5_second_connect_disconnects_with_0x82() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut c, _) = Raw::connect_ok(port, &raw::v5("twice5")).await;
    c.send(&raw::v5("twice5").encode()).await;
    let before = c.expect_closed(common::WAIT).await;
    assert_eq!(raw::disconnect_code(&before), Some(0x82), "Protocol Error: {before:?}");
    assert!(!before.iter().any(|p| matches!(p, Packet::ConnAck { .. })), "no second CONNACK");
}
