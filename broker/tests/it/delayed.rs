//! Delayed publish: `$delayed/<seconds>/<topic>`.

use std::time::{Duration, Instant};

use crate::common::{self, QUIET, v3, v5};
use crate::raw::{self, Packet, Raw, prop};

/// Forms the broker must refuse (v5 0x90) or drop (v3).
const BAD: [&str; 8] = [
    "$delayed/abc/dl/t",
    "$delayed/1.5/dl/t",
    "$delayed/-1/dl/t",
    "$delayed/4294968/dl/t",
    "$delayed/99999999999999999999/dl/t",
    "$delayed/5",
    "$delayed/5/",
    "$delayed/5/$SYS/x",
];

#[tokio::test]
async fn v3_delayed_publish_is_delivered_after_the_delay() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut sub, _) = v3::connect(v3::options(port, "dl3-sub")).await;
    sub.subscribe("dl3/#", v3::QoS::AtLeastOnce).await;
    let (mut publisher, _) = v3::connect(v3::options(port, "dl3-pub")).await;
    let start = Instant::now();
    publisher.client.publish("$delayed/1/dl3/t", v3::QoS::AtLeastOnce, false, "later").await.unwrap();
    publisher.expect_ack().await;
    assert!(sub.publish_within(Duration::from_millis(700)).await.is_none(), "delivered before the delay");
    let p = sub.expect_publish().await;
    assert!(start.elapsed() >= Duration::from_millis(950), "after {:?}", start.elapsed());
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("dl3/t", &b"later"[..]), "delivered to the target topic");
    sub.expect_no_publish().await;
}

#[tokio::test]
async fn v5_delayed_publish_is_delivered_after_the_delay() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut sub, _) = v5::connect(v5::options(port, "dl5-sub")).await;
    sub.subscribe("dl5/t", v5::QoS::AtLeastOnce).await;
    let (mut publisher, _) = Raw::connect_ok(port, &raw::v5("dl5-pub")).await;
    let start = Instant::now();
    publisher.publish(&raw::Publish::new("$delayed/2/dl5/t", 1, 1, b"later")).await;
    match publisher.expect().await {
        Packet::Ack { kind: raw::PUBACK, code, .. } => assert!(code < 0x80, "accepted, got 0x{code:02x}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(broker.broker.scheduled_count(), 1);
    assert!(sub.publish_within(Duration::from_millis(1700)).await.is_none(), "delivered before the delay");
    let p = sub.expect_publish().await;
    assert!(start.elapsed() >= Duration::from_millis(1950), "after {:?}", start.elapsed());
    assert_eq!(&p.topic[..], b"dl5/t");
}

#[tokio::test]
async fn v5_bad_delayed_forms_are_refused_with_0x90_and_a_reason_string() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut c, _) = Raw::connect_ok(port, &raw::v5("dlbad5")).await;
    let mut id = 1;
    for topic in BAD {
        for (qos, kind) in [(1, raw::PUBACK), (2, raw::PUBREC)] {
            c.publish(&raw::Publish::new(topic, qos, id, b"x")).await;
            match c.expect().await {
                Packet::Ack { kind: k, id: got, code, props } if k == kind && got == id => {
                    assert_eq!(code, 0x90, "{topic} QoS {qos}");
                    let reason = props.get_str(prop::REASON_STRING).unwrap_or_default();
                    assert!(!reason.is_empty(), "{topic}: reason string expected");
                }
                other => panic!("{topic}: {other:?}"),
            }
            id += 1;
        }
    }
    assert_eq!(broker.broker.scheduled_count(), 0, "nothing scheduled");
    // The refused QoS 2 exchanges are over: the ids can be used for new messages.
    c.publish(&raw::Publish::new("plain/t", 2, 2, b"x")).await;
    assert!(matches!(c.expect().await, Packet::Ack { kind: raw::PUBREC, id: 2, code: 0x00 | 0x10, .. }));
}

#[tokio::test]
async fn v3_bad_delayed_forms_are_acknowledged_and_dropped() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut watcher, _) = v3::connect(v3::options(port, "dlbad3-watch")).await;
    watcher.subscribe("dl/#", v3::QoS::AtLeastOnce).await;
    let (mut c, _) = v3::connect(v3::options(port, "dlbad3")).await;
    for topic in BAD {
        c.client.publish(topic, v3::QoS::AtLeastOnce, false, "x").await.unwrap();
        assert!(matches!(c.expect_ack().await, v3::Packet::PubAck(_)), "{topic}");
    }
    assert_eq!(broker.broker.scheduled_count(), 0, "nothing scheduled");
    watcher.expect_no_publish().await;
    assert!(c.next_packet(QUIET).await.is_none(), "connection kept");
}

#[tokio::test]
async fn maximum_delay_is_accepted_one_more_is_refused() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut c, _) = Raw::connect_ok(port, &raw::v5("dlmax")).await;
    c.publish(&raw::Publish::new("$delayed/4294967/far/t", 1, 1, b"x")).await;
    match c.expect().await {
        Packet::Ack { code, .. } => assert!(code < 0x80, "4294967 s is allowed, got 0x{code:02x}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(broker.broker.scheduled_count(), 1);
    c.publish(&raw::Publish::new("$delayed/4294968/far/t", 1, 2, b"x")).await;
    assert!(matches!(c.expect().await, Packet::Ack { id: 2, code: 0x90, .. }));
    assert_eq!(broker.broker.scheduled_count(), 1);
}
