//! Session lifetime (clean session, Session Expiry Interval, caps, DISCONNECT changes),
//! offline queueing and its bounds, client-id takeover and empty client ids.

use std::time::Duration;

use fleetmq_broker::core::metrics::DropReason;
use fleetmq_config::ByteSize;

use crate::common::{self, QUIET, v3, v5};
use crate::raw::{self, PUBACK, Packet, Props, Raw, Version, prop};

fn v3_persistent(port: u16, id: &str) -> v3::MqttOptions {
    let mut o = v3::options(port, id);
    o.set_clean_session(false);
    o
}

fn v5_persistent(port: u16, id: &str, expiry: u32) -> v5::MqttOptions {
    let mut o = v5::options(port, id);
    o.set_clean_start(false).set_session_expiry_interval(Some(expiry));
    o
}

#[tokio::test]
async fn v3_clean_session_ends_at_disconnect() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut c, ack) = v3::connect(v3::options(port, "cs-1")).await;
    assert!(!ack.session_present);
    c.subscribe("cs/t", v3::QoS::AtLeastOnce).await;
    c.disconnect().await;
    // Reconnecting without clean session finds no session: no subscription either.
    let (mut c, ack) = v3::connect(v3_persistent(port, "cs-1")).await;
    assert!(!ack.session_present, "clean session 1 must not leave a session behind");
    let (publisher, _) = v3::connect(v3::options(port, "cs-pub")).await;
    publisher.client.publish("cs/t", v3::QoS::AtLeastOnce, false, "x").await.unwrap();
    c.expect_no_publish().await;
}

#[tokio::test]
async fn v3_persistent_session_resumes_subscriptions_and_queues_qos1_qos2_but_not_qos0() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut c, ack) = v3::connect(v3_persistent(port, "ps-1")).await;
    assert!(!ack.session_present);
    c.subscribe("ps/#", v3::QoS::ExactlyOnce).await;
    c.disconnect().await;
    let (publisher, _) = v3::connect(v3::options(port, "ps-pub")).await;
    publisher.client.publish("ps/0", v3::QoS::AtMostOnce, false, "q0").await.unwrap();
    publisher.client.publish("ps/1", v3::QoS::AtLeastOnce, false, "q1").await.unwrap();
    publisher.client.publish("ps/2", v3::QoS::ExactlyOnce, false, "q2").await.unwrap();
    let mut publisher = publisher;
    publisher.expect_ack().await;
    publisher.expect_ack().await;
    let (mut c, ack) = v3::connect(v3_persistent(port, "ps-1")).await;
    assert!(ack.session_present);
    let a = c.expect_publish().await;
    assert_eq!((a.topic.as_str(), a.qos), ("ps/1", v3::QoS::AtLeastOnce));
    let b = c.expect_publish().await;
    assert_eq!((b.topic.as_str(), b.qos), ("ps/2", v3::QoS::ExactlyOnce));
    c.expect_no_publish().await;
    // The subscription itself survived too.
    publisher.client.publish("ps/live", v3::QoS::AtLeastOnce, false, "x").await.unwrap();
    assert_eq!(c.expect_publish().await.topic, "ps/live");
}

#[tokio::test]
async fn v5_persistent_session_queues_qos1_qos2_but_not_qos0() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut c, ack) = v5::connect(v5_persistent(port, "ps5-1", 60)).await;
    assert!(!ack.session_present);
    c.subscribe("ps5/#", v5::QoS::ExactlyOnce).await;
    c.disconnect().await;
    let (mut publisher, _) = v5::connect(v5::options(port, "ps5-pub")).await;
    publisher.client.publish("ps5/0", v5::QoS::AtMostOnce, false, "q0").await.unwrap();
    publisher.client.publish("ps5/1", v5::QoS::AtLeastOnce, false, "q1").await.unwrap();
    publisher.client.publish("ps5/2", v5::QoS::ExactlyOnce, false, "q2").await.unwrap();
    publisher.expect_ack().await;
    publisher.expect_ack().await;
    let (mut c, ack) = v5::connect(v5_persistent(port, "ps5-1", 60)).await;
    assert!(ack.session_present);
    assert_eq!(c.expect_publish().await.topic, &b"ps5/1"[..]);
    assert_eq!(c.expect_publish().await.topic, &b"ps5/2"[..]);
    c.expect_no_publish().await;
}

#[tokio::test]
async fn v3_persistent_session_expiry_from_config() {
    let broker = common::broker_with(|c| c.sessions.persistent_session_expiry = Some(Duration::from_secs(1)));
    let port = broker.addr().port();
    let (c, _) = v3::connect(v3_persistent(port, "pse-1")).await;
    c.disconnect().await;
    let (c, ack) = v3::connect(v3_persistent(port, "pse-1")).await;
    assert!(ack.session_present, "kept within sessions.persistent_session_expiry");
    c.disconnect().await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (_c, ack) = v3::connect(v3_persistent(port, "pse-1")).await;
    assert!(!ack.session_present, "expired after sessions.persistent_session_expiry");
}

#[tokio::test]
async fn v3_persistent_session_outlives_disconnect_by_default() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (c, _) = v3::connect(v3_persistent(port, "psn-1")).await;
    c.disconnect().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_c, ack) = v3::connect(v3_persistent(port, "psn-1")).await;
    assert!(ack.session_present);
}

#[tokio::test]
async fn v5_session_expiry_zero_ends_session_at_disconnect() {
    let broker = common::broker();
    let port = broker.addr().port();
    let mut o = v5::options(port, "se0-1");
    o.set_clean_start(false);
    let (mut c, _) = v5::connect(o.clone()).await;
    c.subscribe("se0/t", v5::QoS::AtLeastOnce).await;
    c.disconnect().await;
    let (mut publisher, _) = v5::connect(v5::options(port, "se0-pub")).await;
    publisher.client.publish("se0/t", v5::QoS::AtLeastOnce, false, "x").await.unwrap();
    match publisher.expect_ack().await {
        v5::Packet::PubAck(a) => assert_eq!(a.reason, v5::PubAckReason::NoMatchingSubscribers),
        other => panic!("{other:?}"),
    }
    let (mut c, ack) = v5::connect(o).await;
    assert!(!ack.session_present);
    c.expect_no_publish().await;
}

#[tokio::test]
async fn v5_session_expiry_interval_keeps_session_then_ends_it() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut c, _) = v5::connect(v5_persistent(port, "sei-1", 1)).await;
    c.subscribe("sei/t", v5::QoS::AtLeastOnce).await;
    c.disconnect().await;
    let (publisher, _) = v5::connect(v5::options(port, "sei-pub")).await;
    publisher.client.publish("sei/t", v5::QoS::AtLeastOnce, false, "kept").await.unwrap();
    let (mut c, ack) = v5::connect(v5_persistent(port, "sei-1", 1)).await;
    assert!(ack.session_present, "within the Session Expiry Interval");
    assert_eq!(c.expect_publish().await.payload, &b"kept"[..]);
    c.disconnect().await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (_c, ack) = v5::connect(v5_persistent(port, "sei-1", 1)).await;
    assert!(!ack.session_present, "ended after the Session Expiry Interval");
}

#[tokio::test]
async fn v5_session_expiry_max_value_never_expires() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (c, ack) = v5::connect(v5_persistent(port, "semax-1", u32::MAX)).await;
    let granted = ack.properties.and_then(|p| p.session_expiry_interval);
    assert_eq!(granted, None, "granted as asked: no Session Expiry Interval in CONNACK");
    c.disconnect().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_c, ack) = v5::connect(v5_persistent(port, "semax-1", u32::MAX)).await;
    assert!(ack.session_present);
}

#[tokio::test]
async fn v5_max_session_expiry_caps_interval_and_connack_reports_it() {
    let broker = common::broker_with(|c| c.sessions.max_session_expiry = Some(Duration::from_secs(1)));
    let port = broker.addr().port();
    for asked in [3600, u32::MAX] {
        let (c, ack) = v5::connect(v5_persistent(port, "cap-1", asked)).await;
        let props = ack.properties.expect("CONNACK properties");
        assert_eq!(props.session_expiry_interval, Some(1), "asked {asked}, granted the cap");
        c.disconnect().await;
    }
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (c, ack) = v5::connect(v5_persistent(port, "cap-1", 3600)).await;
    assert!(!ack.session_present, "the capped interval applied");
    drop(c);
    // Below the cap the client's value stands and CONNACK does not repeat it.
    let (_c, ack) = v5::connect(v5_persistent(port, "cap-2", 1)).await;
    assert_eq!(ack.properties.and_then(|p| p.session_expiry_interval), None);
}

/// Raw v5 persistent connect with a Session Expiry Interval.
fn raw_v5_session(id: &str, expiry: u32) -> raw::Connect {
    raw::v5(id).clean(false).prop(prop::SESSION_EXPIRY, expiry)
}

#[tokio::test]
async fn v5_disconnect_can_shorten_session_expiry_to_zero() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut c, _) = Raw::connect_ok(port, &raw_v5_session("dse-1", 60)).await;
    c.disconnect(0x00, Props::new().int(prop::SESSION_EXPIRY, 0)).await;
    c.expect_closed(common::WAIT).await;
    let (_c, present) = Raw::connect_ok(port, &raw_v5_session("dse-1", 60)).await;
    assert!(!present, "DISCONNECT set the Session Expiry Interval to 0");
}

#[tokio::test]
async fn v5_disconnect_can_lengthen_session_expiry() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut c, _) = Raw::connect_ok(port, &raw_v5_session("dsl-1", 1)).await;
    c.disconnect(0x00, Props::new().int(prop::SESSION_EXPIRY, 60)).await;
    c.expect_closed(common::WAIT).await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (_c, present) = Raw::connect_ok(port, &raw_v5_session("dsl-1", 1)).await;
    assert!(present, "DISCONNECT raised the Session Expiry Interval to 60 s");
}

#[tokio::test]
async fn v5_disconnect_raising_expiry_from_zero_is_a_protocol_error() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut watcher, _) = v5::connect(v5::options(port, "dz-watch")).await;
    watcher.subscribe("dz/will", v5::QoS::AtLeastOnce).await;
    let connect = raw::v5("dz-1").clean(false).will(raw::Will::new("dz/will", "gone"));
    let (mut c, _) = Raw::connect_ok(port, &connect).await;
    c.disconnect(0x00, Props::new().int(prop::SESSION_EXPIRY, 30)).await;
    let before = c.expect_closed(common::WAIT).await;
    assert_eq!(raw::disconnect_code(&before), Some(0x82), "DISCONNECT Protocol Error expected: {before:?}");
    // Not a normal disconnect: the will goes out, and the session was not kept.
    assert_eq!(watcher.expect_publish().await.payload, &b"gone"[..]);
    let (_c, present) = Raw::connect_ok(port, &connect).await;
    assert!(!present, "the session expiry stayed 0");
}

#[tokio::test]
async fn offline_queue_bounded_by_max_queued_messages_drops_the_newest() {
    let broker = common::broker_with(|c| c.limits.max_queued_messages = 3);
    let port = broker.addr().port();
    let (mut c, _) = v3::connect(v3_persistent(port, "qm-1")).await;
    c.subscribe("qm/t", v3::QoS::AtLeastOnce).await;
    c.disconnect().await;
    let (mut publisher, _) = v3::connect(v3::options(port, "qm-pub")).await;
    for i in 0..5 {
        publisher.client.publish("qm/t", v3::QoS::AtLeastOnce, false, format!("{i}")).await.unwrap();
    }
    for _ in 0..5 {
        publisher.expect_ack().await;
    }
    assert_eq!(broker.broker.metrics().dropped_count(DropReason::QueueFull), 2, "drops are counted");
    let (mut c, _) = v3::connect(v3_persistent(port, "qm-1")).await;
    for i in 0..3 {
        assert_eq!(c.expect_publish().await.payload, format!("{i}").as_bytes());
    }
    c.expect_no_publish().await;
}

#[tokio::test]
async fn offline_queue_bounded_by_max_queued_bytes() {
    let broker = common::broker_with(|c| c.limits.max_queued_bytes = ByteSize::b(100));
    let port = broker.addr().port();
    let (mut c, _) = v5::connect(v5_persistent(port, "qb-1", 60)).await;
    c.subscribe("qb/t", v5::QoS::AtLeastOnce).await;
    c.disconnect().await;
    let (mut publisher, _) = v5::connect(v5::options(port, "qb-pub")).await;
    // 4 (topic) + 40 (payload) bytes each: two fit in 100 bytes, the third does not.
    for i in 0..3 {
        publisher.client.publish("qb/t", v5::QoS::AtLeastOnce, false, vec![b'0' + i; 40]).await.unwrap();
        publisher.expect_ack().await;
    }
    assert_eq!(broker.broker.metrics().dropped_count(DropReason::QueueFull), 1);
    let (mut c, _) = v5::connect(v5_persistent(port, "qb-1", 60)).await;
    assert_eq!(c.expect_publish().await.payload[0], b'0');
    assert_eq!(c.expect_publish().await.payload[0], b'1');
    c.expect_no_publish().await;
}

#[tokio::test]
async fn queue_overflow_evicts_the_oldest_qos0_message_first() {
    let broker = common::broker_with(|c| c.limits.max_queued_messages = 3);
    let port = broker.addr().port();
    // Receive Maximum 1: one unacknowledged message blocks the queue behind it.
    let (mut sub, _) = Raw::connect_ok(port, &raw::v5("ev-sub").prop(prop::RECEIVE_MAXIMUM, 1)).await;
    sub.subscribe_ok(1, &[("ev/#", 1)]).await;
    let (mut publisher, _) = v3::connect(v3::options(port, "ev-pub")).await;
    publisher.client.publish("ev/m1", v3::QoS::AtLeastOnce, false, "m1").await.unwrap();
    let m1 = sub.expect_publish().await;
    assert_eq!(m1.topic, "ev/m1");
    // Queue (max 3): m2, z1, z2 | m3 evicts z1 | m4 evicts z2 | m5 finds no QoS 0: dropped.
    for (topic, qos) in [
        ("ev/m2", v3::QoS::AtLeastOnce),
        ("ev/z1", v3::QoS::AtMostOnce),
        ("ev/z2", v3::QoS::AtMostOnce),
        ("ev/m3", v3::QoS::AtLeastOnce),
        ("ev/m4", v3::QoS::AtLeastOnce),
        ("ev/m5", v3::QoS::AtLeastOnce),
    ] {
        publisher.client.publish(topic, qos, false, "x").await.unwrap();
    }
    for _ in 0..5 {
        publisher.expect_ack().await;
    }
    assert_eq!(broker.broker.metrics().dropped_count(DropReason::QueueFull), 3);
    sub.ack(PUBACK, m1.id.unwrap()).await;
    for want in ["ev/m2", "ev/m3", "ev/m4"] {
        let p = sub.expect_publish().await;
        assert_eq!(p.topic, want);
        sub.ack(PUBACK, p.id.unwrap()).await;
    }
    sub.expect_nothing(QUIET).await;
}

async fn takeover_resumes(v5_first: bool) {
    let broker = common::broker();
    let port = broker.addr().port();
    let connect = if v5_first {
        raw::v5("to-1").clean(false).prop(prop::SESSION_EXPIRY, 60)
    } else {
        raw::v311("to-1").clean(false)
    };
    let (mut first, _) = Raw::connect_ok(port, &connect).await;
    first.subscribe_ok(1, &[("to/t", 1)]).await;
    let (mut second, present) = Raw::connect_ok(port, &connect).await;
    assert!(present, "clean start 0 resumes the session");
    let before = first.expect_closed(common::WAIT).await;
    if v5_first {
        assert_eq!(raw::disconnect_code(&before), Some(0x8E), "Session taken over: {before:?}");
    } else {
        assert!(before.is_empty(), "v3 connection just closed: {before:?}");
    }
    let (publisher, _) = v3::connect(v3::options(port, "to-pub")).await;
    publisher.client.publish("to/t", v3::QoS::AtLeastOnce, false, "x").await.unwrap();
    assert_eq!(second.expect_publish().await.payload, b"x", "subscription carried over");
}

#[tokio::test]
async fn v3_takeover_closes_first_connection_and_resumes_session() {
    takeover_resumes(false).await;
}

#[tokio::test]
async fn v5_takeover_sends_disconnect_0x8e_and_resumes_session() {
    takeover_resumes(true).await;
}

#[tokio::test]
async fn v3_takeover_with_clean_session_replaces_the_session() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut first, _) = v3::connect(v3_persistent(port, "toc-1")).await;
    first.subscribe("toc/t", v3::QoS::AtLeastOnce).await;
    let (mut second, ack) = v3::connect(v3::options(port, "toc-1")).await;
    assert!(!ack.session_present, "clean session 1 starts afresh");
    first.expect_error().await;
    let (publisher, _) = v3::connect(v3::options(port, "toc-pub")).await;
    publisher.client.publish("toc/t", v3::QoS::AtLeastOnce, false, "x").await.unwrap();
    second.expect_no_publish().await;
}

#[tokio::test]
async fn v5_takeover_with_clean_start_replaces_the_session() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut first, _) = v5::connect(v5_persistent(port, "toc5-1", 60)).await;
    first.subscribe("toc5/t", v5::QoS::AtLeastOnce).await;
    let (mut second, ack) = v5::connect(v5::options(port, "toc5-1")).await;
    assert!(!ack.session_present);
    let err = first.expect_error().await;
    assert!(err.contains("SessionTakenOver"), "{err}");
    let (publisher, _) = v5::connect(v5::options(port, "toc5-pub")).await;
    publisher.client.publish("toc5/t", v5::QoS::AtLeastOnce, false, "x").await.unwrap();
    second.expect_no_publish().await;
}

fn connack_code(p: &Packet) -> u8 {
    match p {
        Packet::ConnAck { code, .. } => *code,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// Sends `connect` and returns the CONNACK code, or fails naming what came instead.
async fn refused_code(port: u16, connect: &raw::Connect) -> u8 {
    let mut c = Raw::open(port, connect.version == Version::V5).await;
    c.send(&connect.encode()).await;
    match c.recv(common::WAIT).await {
        raw::Event::Packet(p) => connack_code(&p),
        other => panic!("expected a CONNACK refusal for {connect:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn v311_empty_client_id_with_clean_session_0_is_rejected_0x02() {
    let broker = common::broker();
    let port = broker.addr().port();
    assert_eq!(refused_code(port, &raw::v311("").clean(false)).await, 0x02, "identifier rejected");
}

#[tokio::test]
async fn v311_empty_client_id_with_clean_session_1_is_accepted() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut c, present) = Raw::connect_ok(port, &raw::v311("")).await;
    assert!(!present);
    c.subscribe_ok(1, &[("eid/t", 0)]).await;
    let (mut d, _) = Raw::connect_ok(port, &raw::v311("")).await;
    d.publish(&raw::Publish::new("eid/t", 0, 0, b"hi")).await;
    assert_eq!(c.expect_publish().await.payload, b"hi", "two anonymous-id clients coexist");
}

#[tokio::test]
async fn v5_empty_client_id_gets_an_assigned_client_identifier() {
    let broker = common::broker();
    let port = broker.addr().port();
    let mut ids = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..2 {
        let (c, ack) = Raw::connect(port, &raw::v5("")).await;
        match ack {
            Packet::ConnAck { code: 0, props, .. } => {
                let id =
                    props.get_str(prop::ASSIGNED_CLIENT_ID).expect("Assigned Client Identifier").to_string();
                assert!(id.starts_with("fleetmq-"), "{id}");
                ids.push(id);
            }
            other => panic!("{other:?}"),
        }
        conns.push(c);
    }
    assert_ne!(ids[0], ids[1], "assigned ids are unique");
    // The assigned id is the session's id.
    assert!(broker.broker.session(&ids[0]).is_some());
}

#[tokio::test]
async fn v31_empty_client_id_is_always_rejected_0x02() {
    let broker = common::broker();
    let port = broker.addr().port();
    for clean in [true, false] {
        let code = refused_code(port, &raw::Connect::new(Version::V31, "").clean(clean)).await;
        assert_eq!(code, 0x02, "clean session {clean}");
    }
}

#[tokio::test]
async fn v31_client_with_id_is_accepted_and_works() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut c, present) = Raw::connect_ok(port, &raw::Connect::new(Version::V31, "v31-client")).await;
    assert!(!present);
    assert_eq!(c.subscribe_ok(1, &[("v31/t", 1)]).await, vec![1]);
    let (publisher, _) = v5::connect(v5::options(port, "v31-pub")).await;
    publisher.client.publish("v31/t", v5::QoS::AtLeastOnce, false, "old").await.unwrap();
    let p = c.expect_publish().await;
    assert_eq!((p.topic.as_str(), p.payload.as_slice(), p.qos), ("v31/t", &b"old"[..], 1));
}
