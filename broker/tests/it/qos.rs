//! QoS 0/1/2 delivery, exactly-once inbound QoS 2, the in-flight window, retransmission on
//! reconnect, acknowledgements in any order and overlapping subscriptions.

use std::collections::BTreeSet;

use crate::common::{self, QUIET, v3, v5};
use crate::raw::{self, PUBACK, PUBCOMP, PUBREC, PUBREL, Packet, Publish, Raw, prop};

#[tokio::test]
async fn v3_delivered_qos_is_min_of_published_and_granted() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut sub1, _) = v3::connect(v3::options(port, "q-sub1")).await;
    let ack = sub1.subscribe("q/#", v3::QoS::AtLeastOnce).await;
    assert_eq!(ack.return_codes, vec![v3::SubscribeReasonCode::Success(v3::QoS::AtLeastOnce)]);
    let (mut sub0, _) = v3::connect(v3::options(port, "q-sub0")).await;
    sub0.subscribe("q/#", v3::QoS::AtMostOnce).await;
    let (mut sub2, _) = v3::connect(v3::options(port, "q-sub2")).await;
    sub2.subscribe("q/#", v3::QoS::ExactlyOnce).await;
    let (publisher, _) = v3::connect(v3::options(port, "q-pub")).await;
    use v3::QoS::{AtLeastOnce as Q1, AtMostOnce as Q0, ExactlyOnce as Q2};
    for (qos, capped_at_1) in [(Q0, Q0), (Q1, Q1), (Q2, Q1)] {
        publisher.client.publish("q/t", qos, false, format!("{qos:?}")).await.unwrap();
        let got1 = sub1.expect_publish().await;
        assert_eq!(got1.payload, format!("{qos:?}").as_bytes());
        assert_eq!(got1.qos, capped_at_1, "granted QoS 1, published {qos:?}");
        assert_eq!(sub0.expect_publish().await.qos, v3::QoS::AtMostOnce, "granted QoS 0");
        assert_eq!(sub2.expect_publish().await.qos, qos, "granted QoS 2");
    }
}

#[tokio::test]
async fn v5_delivered_qos_is_min_of_published_and_granted() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut sub1, _) = v5::connect(v5::options(port, "q5-sub1")).await;
    let ack = sub1.subscribe("q5/#", v5::QoS::AtLeastOnce).await;
    assert_eq!(ack.return_codes, vec![v5::SubscribeReasonCode::Success(v5::QoS::AtLeastOnce)]);
    let (mut sub0, _) = v5::connect(v5::options(port, "q5-sub0")).await;
    sub0.subscribe("q5/#", v5::QoS::AtMostOnce).await;
    let (publisher, _) = v5::connect(v5::options(port, "q5-pub")).await;
    use v5::QoS::{AtLeastOnce as Q1, AtMostOnce as Q0, ExactlyOnce as Q2};
    for (qos, capped_at_1) in [(Q0, Q0), (Q1, Q1), (Q2, Q1)] {
        publisher.client.publish("q5/t", qos, false, "x").await.unwrap();
        assert_eq!(sub1.expect_publish().await.qos, capped_at_1, "granted QoS 1, published {qos:?}");
        assert_eq!(sub0.expect_publish().await.qos, v5::QoS::AtMostOnce);
    }
}

/// Sends a QoS 2 PUBLISH with `id` (DUP as given) and expects the PUBREC.
async fn publish_qos2(raw: &mut Raw, topic: &str, id: u16, dup: bool, payload: &[u8]) {
    let mut p = Publish::new(topic, 2, id, payload);
    p.dup = dup;
    raw.publish(&p).await;
    match raw.expect().await {
        Packet::Ack { kind: PUBREC, id: got, code, .. } => {
            assert_eq!(got, id);
            assert!(code < 0x80, "PUBREC refused: 0x{code:02x}");
        }
        other => panic!("expected PUBREC {id}, got {other:?}"),
    }
}

async fn release(raw: &mut Raw, id: u16) {
    raw.ack(PUBREL, id).await;
    match raw.expect().await {
        Packet::Ack { kind: PUBCOMP, id: got, code, .. } => {
            assert_eq!(got, id);
            assert_eq!(code, 0, "PUBCOMP reason (0x92 = packet id not found)");
        }
        other => panic!("expected PUBCOMP {id}, got {other:?}"),
    }
}

async fn inbound_qos2_dup_is_routed_once(v5: bool) {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut sub, _) = v3::connect(v3::options(port, "dup-sub")).await;
    sub.subscribe("dup/t", v3::QoS::ExactlyOnce).await;
    let connect = if v5 { raw::v5("dup-pub") } else { raw::v311("dup-pub") };
    let (mut publisher, _) = Raw::connect_ok(port, &connect).await;
    publish_qos2(&mut publisher, "dup/t", 10, false, b"once").await;
    assert_eq!(sub.expect_publish().await.payload, &b"once"[..]);
    // The retransmission is acknowledged again, but not routed again.
    publish_qos2(&mut publisher, "dup/t", 10, true, b"once").await;
    sub.expect_no_publish().await;
    release(&mut publisher, 10).await;
    // After the release the id starts a new message.
    publish_qos2(&mut publisher, "dup/t", 10, false, b"again").await;
    assert_eq!(sub.expect_publish().await.payload, &b"again"[..]);
    release(&mut publisher, 10).await;
    sub.expect_no_publish().await;
}

#[tokio::test]
async fn v3_inbound_qos2_dup_retransmission_is_acked_but_routed_once() {
    inbound_qos2_dup_is_routed_once(false).await;
}

#[tokio::test]
async fn v5_inbound_qos2_dup_retransmission_is_acked_but_routed_once() {
    inbound_qos2_dup_is_routed_once(true).await;
}

async fn inbound_qos2_exactly_once_across_reconnect(v5: bool) {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut sub, _) = v3::connect(v3::options(port, "xo-sub")).await;
    sub.subscribe("xo/t", v3::QoS::ExactlyOnce).await;
    let connect = if v5 {
        raw::v5("xo-pub").clean(false).prop(prop::SESSION_EXPIRY, 60)
    } else {
        raw::v311("xo-pub").clean(false)
    };
    let (mut publisher, _) = Raw::connect_ok(port, &connect).await;
    publish_qos2(&mut publisher, "xo/t", 7, false, b"m").await;
    assert_eq!(sub.expect_publish().await.payload, &b"m"[..]);
    // Connection lost before the PUBREL.
    drop(publisher);
    let (mut publisher, present) = Raw::connect_ok(port, &connect).await;
    assert!(present, "session resumed");
    publish_qos2(&mut publisher, "xo/t", 7, true, b"m").await;
    sub.expect_no_publish().await;
    release(&mut publisher, 7).await;
    sub.expect_no_publish().await;
}

#[tokio::test]
async fn v3_inbound_qos2_exactly_once_across_reconnect() {
    inbound_qos2_exactly_once_across_reconnect(false).await;
}

#[tokio::test]
async fn v5_inbound_qos2_exactly_once_across_reconnect() {
    inbound_qos2_exactly_once_across_reconnect(true).await;
}

/// A raw persistent subscriber to `topic` at QoS 2.
async fn persistent_subscriber(port: u16, v5: bool, id: &str, topic: &str) -> (Raw, raw::Connect) {
    let connect = if v5 {
        raw::v5(id).clean(false).prop(prop::SESSION_EXPIRY, 300)
    } else {
        raw::v311(id).clean(false)
    };
    let (mut sub, _) = Raw::connect_ok(port, &connect).await;
    assert_eq!(sub.subscribe_ok(1, &[(topic, 2)]).await, vec![2]);
    (sub, connect)
}

async fn unacked_resent_on_reconnect(v5: bool) {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut sub, connect) = persistent_subscriber(port, v5, "rs-sub", "rs/#").await;
    let (mut publisher, _) = v3::connect(v3::options(port, "rs-pub")).await;
    for (i, qos) in [v3::QoS::AtLeastOnce, v3::QoS::ExactlyOnce, v3::QoS::AtLeastOnce].into_iter().enumerate()
    {
        publisher.client.publish(format!("rs/{i}"), qos, false, format!("m{i}")).await.unwrap();
    }
    let mut first = Vec::new();
    for _ in 0..3 {
        let p = sub.expect_publish().await;
        assert!(!p.dup);
        first.push(p);
    }
    assert_eq!(first.iter().map(|p| p.topic.as_str()).collect::<Vec<_>>(), ["rs/0", "rs/1", "rs/2"]);
    // No acknowledgement at all; the connection drops. One more message arrives meanwhile,
    // once the broker has seen the drop (before that it would still be sent on the dropped
    // connection, and so be a retransmission too).
    drop(sub);
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while broker.broker.connected() > 1 {
        assert!(tokio::time::Instant::now() < deadline, "the broker did not see the subscriber go");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    for _ in 0..3 {
        publisher.expect_ack().await;
    }
    publisher.client.publish("rs/3", v3::QoS::AtLeastOnce, false, "m3").await.unwrap();
    publisher.expect_ack().await;
    let (mut sub, present) = Raw::connect_ok(port, &connect).await;
    assert!(present);
    for original in &first {
        let p = sub.expect_publish().await;
        assert!(p.dup, "retransmission carries DUP=1: {p:?}");
        assert_eq!(p.id, original.id, "same packet id");
        assert_eq!(p.topic, original.topic, "original order");
        assert_eq!(p.qos, original.qos);
        assert_eq!(p.payload, original.payload);
    }
    let queued = sub.expect_publish().await;
    assert_eq!(queued.topic, "rs/3", "the message queued offline follows the retransmissions");
    assert!(!queued.dup);
    assert!(!first.iter().any(|p| p.id == queued.id), "a fresh packet id");
    sub.ack(PUBACK, queued.id.unwrap()).await;
    sub.expect_nothing(QUIET).await;
    // Complete every exchange; a further reconnect resends nothing.
    for p in &first {
        let id = p.id.unwrap();
        if p.qos == 1 {
            sub.ack(PUBACK, id).await;
        } else {
            sub.ack(PUBREC, id).await;
            match sub.expect().await {
                Packet::Ack { kind: PUBREL, id: got, .. } => assert_eq!(got, id),
                other => panic!("expected PUBREL, got {other:?}"),
            }
            sub.ack(PUBCOMP, id).await;
        }
    }
    sub.expect_nothing(QUIET).await;
    drop(sub);
    let (mut sub, _) = Raw::connect_ok(port, &connect).await;
    sub.expect_nothing(QUIET).await;
}

#[tokio::test]
async fn v3_unacked_qos1_qos2_resent_on_reconnect_with_dup_same_ids_in_order() {
    unacked_resent_on_reconnect(false).await;
}

#[tokio::test]
async fn v5_unacked_qos1_qos2_resent_on_reconnect_with_dup_same_ids_in_order() {
    unacked_resent_on_reconnect(true).await;
}

#[tokio::test]
async fn v3_rumqttc_manual_acks_get_redelivery_after_reconnect() {
    let broker = common::broker();
    let port = broker.addr().port();
    let mut options = v3::options(port, "ma-sub");
    options.set_clean_session(false).set_manual_acks(true);
    let (mut sub, _) = v3::connect(options.clone()).await;
    sub.subscribe("ma/t", v3::QoS::AtLeastOnce).await;
    let (publisher, _) = v3::connect(v3::options(port, "ma-pub")).await;
    publisher.client.publish("ma/t", v3::QoS::AtLeastOnce, false, "hold").await.unwrap();
    let p = sub.expect_publish().await;
    assert!(!p.dup);
    drop(sub);
    let (mut sub, ack) = v3::connect(options).await;
    assert!(ack.session_present);
    let again = sub.expect_publish().await;
    assert!(again.dup);
    assert_eq!(again.pkid, p.pkid);
    assert_eq!(again.payload, p.payload);
    sub.client.ack(&again).await.unwrap();
    sub.expect_no_publish().await;
}

async fn pubrel_resent_after_reconnect(v5: bool) {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut sub, connect) = persistent_subscriber(port, v5, "rel-sub", "rel/t").await;
    let (publisher, _) = v3::connect(v3::options(port, "rel-pub")).await;
    publisher.client.publish("rel/t", v3::QoS::ExactlyOnce, false, "two").await.unwrap();
    let p = sub.expect_publish().await;
    let id = p.id.unwrap();
    sub.ack(PUBREC, id).await;
    match sub.expect().await {
        Packet::Ack { kind: PUBREL, id: got, .. } => assert_eq!(got, id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    // No PUBCOMP; the connection drops.
    drop(sub);
    let (mut sub, present) = Raw::connect_ok(port, &connect).await;
    assert!(present);
    match sub.expect().await {
        Packet::Ack { kind: PUBREL, id: got, .. } => assert_eq!(got, id, "PUBREL re-sent, not the PUBLISH"),
        other => panic!("expected the PUBREL again, got {other:?}"),
    }
    sub.expect_nothing(QUIET).await;
    sub.ack(PUBCOMP, id).await;
    // Give the broker the PUBCOMP before the reconnect: a CONNECT racing ahead of it (another
    // worker thread) takes the session over with the PUBREL still outstanding, which is
    // correct behaviour but not what this test is about.
    sub.expect_nothing(QUIET).await;
    drop(sub);
    let (mut sub, _) = Raw::connect_ok(port, &connect).await;
    sub.expect_nothing(QUIET).await;
}

#[tokio::test]
async fn v3_qos2_pubrel_resent_on_reconnect_after_pubrec() {
    pubrel_resent_after_reconnect(false).await;
}

#[tokio::test]
async fn v5_qos2_pubrel_resent_on_reconnect_after_pubrec() {
    pubrel_resent_after_reconnect(true).await;
}

/// Publishes `n` QoS 1 messages `prefix/<i>` and waits until the broker acknowledged all.
async fn publish_qos1(port: u16, id: &str, topic: &str, n: usize) {
    let (mut publisher, _) = v3::connect(v3::options(port, id)).await;
    for i in 0..n {
        publisher.client.publish(topic, v3::QoS::AtLeastOnce, false, format!("{i}")).await.unwrap();
    }
    for _ in 0..n {
        publisher.expect_ack().await;
    }
}

#[tokio::test]
async fn v5_client_receive_maximum_limits_messages_in_flight() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut sub, _) = Raw::connect_ok(port, &raw::v5("rm-sub").prop(prop::RECEIVE_MAXIMUM, 2)).await;
    sub.subscribe_ok(1, &[("rm/t", 1)]).await;
    publish_qos1(port, "rm-pub", "rm/t", 4).await;
    let a = sub.expect_publish().await;
    let b = sub.expect_publish().await;
    assert_eq!((a.payload.as_slice(), b.payload.as_slice()), (&b"0"[..], &b"1"[..]));
    sub.expect_nothing(QUIET).await;
    sub.ack(PUBACK, a.id.unwrap()).await;
    assert_eq!(sub.expect_publish().await.payload, b"2");
    sub.expect_nothing(QUIET).await;
    sub.ack(PUBACK, b.id.unwrap()).await;
    assert_eq!(sub.expect_publish().await.payload, b"3");
}

#[tokio::test]
async fn max_inflight_bounds_the_window_and_is_advertised_as_receive_maximum() {
    let broker = common::broker_with(|c| c.limits.max_inflight = 2);
    let port = broker.addr().port();
    let (_, connack) = Raw::connect(port, &raw::v5("mi-probe")).await;
    match connack {
        Packet::ConnAck { props, .. } => assert_eq!(props.get_int(prop::RECEIVE_MAXIMUM), Some(2)),
        other => panic!("{other:?}"),
    }
    // A v3 client has no Receive Maximum: the broker's limit alone applies.
    let (mut sub, _) = Raw::connect_ok(port, &raw::v311("mi-sub")).await;
    sub.subscribe_ok(1, &[("mi/t", 1)]).await;
    publish_qos1(port, "mi-pub", "mi/t", 3).await;
    let a = sub.expect_publish().await;
    sub.expect_publish().await;
    sub.expect_nothing(QUIET).await;
    sub.ack(PUBACK, a.id.unwrap()).await;
    assert_eq!(sub.expect_publish().await.payload, b"2");
    // A v5 client asking for more than the limit still gets at most max_inflight.
    let (mut sub5, _) = Raw::connect_ok(port, &raw::v5("mi-sub5").prop(prop::RECEIVE_MAXIMUM, 100)).await;
    sub5.subscribe_ok(1, &[("mi5/t", 1)]).await;
    publish_qos1(port, "mi-pub5", "mi5/t", 3).await;
    sub5.expect_publish().await;
    sub5.expect_publish().await;
    sub5.expect_nothing(QUIET).await;
}

async fn acks_in_any_order(v5: bool) {
    let broker = common::broker_with(|c| c.limits.max_inflight = 3);
    let port = broker.addr().port();
    let connect = if v5 { raw::v5("ooo-sub") } else { raw::v311("ooo-sub") };
    let (mut sub, _) = Raw::connect_ok(port, &connect).await;
    sub.subscribe_ok(1, &[("ooo/#", 2)]).await;
    let (publisher, _) = v3::connect(v3::options(port, "ooo-pub")).await;
    for i in 0..3 {
        publisher.client.publish(format!("ooo/{i}"), v3::QoS::AtLeastOnce, false, "x").await.unwrap();
    }
    let ids: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(sub.expect_publish().await.id.unwrap());
        }
        v
    };
    for i in [2, 0, 1] {
        sub.ack(PUBACK, ids[i]).await;
    }
    // The window (3) is free again only if all three acks were accepted.
    for i in 0..3 {
        publisher.client.publish(format!("ooo/q2/{i}"), v3::QoS::ExactlyOnce, false, "y").await.unwrap();
    }
    let mut ids2 = Vec::new();
    for _ in 0..3 {
        let p = sub.expect_publish().await;
        assert_eq!(p.qos, 2);
        ids2.push(p.id.unwrap());
    }
    for i in [1, 2, 0] {
        sub.ack(PUBREC, ids2[i]).await;
    }
    let mut released = BTreeSet::new();
    for _ in 0..3 {
        match sub.expect().await {
            Packet::Ack { kind: PUBREL, id, code: 0, .. } => {
                released.insert(id);
            }
            other => panic!("expected PUBREL, got {other:?}"),
        }
    }
    assert_eq!(released, ids2.iter().copied().collect());
    for i in [2, 0, 1] {
        sub.ack(PUBCOMP, ids2[i]).await;
    }
    for i in 0..3 {
        publisher.client.publish(format!("ooo/last/{i}"), v3::QoS::AtLeastOnce, false, "z").await.unwrap();
    }
    for i in 0..3 {
        let p = sub.expect_publish().await;
        assert_eq!(p.topic, format!("ooo/last/{i}"), "connection alive and window free");
    }
}

#[tokio::test]
async fn v3_acks_in_any_order_keep_the_connection() {
    acks_in_any_order(false).await;
}

#[tokio::test]
async fn v5_acks_in_any_order_keep_the_connection() {
    acks_in_any_order(true).await;
}

#[tokio::test]
async fn v3_overlapping_subscriptions_deliver_once_at_highest_granted_qos() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut sub, _) = v3::connect(v3::options(port, "ov-sub")).await;
    sub.subscribe("ov/#", v3::QoS::AtMostOnce).await;
    sub.subscribe("ov/+", v3::QoS::ExactlyOnce).await;
    sub.subscribe("ov/x", v3::QoS::AtLeastOnce).await;
    let (publisher, _) = v3::connect(v3::options(port, "ov-pub")).await;
    publisher.client.publish("ov/x", v3::QoS::ExactlyOnce, false, "one").await.unwrap();
    let p = sub.expect_publish().await;
    assert_eq!(p.qos, v3::QoS::ExactlyOnce);
    sub.expect_no_publish().await;
    publisher.client.publish("ov/x", v3::QoS::AtLeastOnce, false, "two").await.unwrap();
    assert_eq!(sub.expect_publish().await.qos, v3::QoS::AtLeastOnce, "still capped by the message QoS");
    sub.expect_no_publish().await;
}

#[tokio::test]
async fn v5_overlapping_subscriptions_deliver_once_with_all_subscription_ids() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut sub, _) = v5::connect(v5::options(port, "ov5-sub")).await;
    sub.subscribe_filters(vec![v5::Filter::new("ov5/#", v5::QoS::AtMostOnce)], Some(1)).await;
    sub.subscribe_filters(vec![v5::Filter::new("ov5/+", v5::QoS::ExactlyOnce)], Some(2)).await;
    sub.subscribe_filters(vec![v5::Filter::new("ov5/x", v5::QoS::AtLeastOnce)], None).await;
    sub.subscribe_filters(vec![v5::Filter::new("ov5/y", v5::QoS::AtLeastOnce)], Some(9)).await;
    let (publisher, _) = v5::connect(v5::options(port, "ov5-pub")).await;
    publisher.client.publish("ov5/x", v5::QoS::ExactlyOnce, false, "one").await.unwrap();
    let p = sub.expect_publish().await;
    assert_eq!(p.qos, v5::QoS::ExactlyOnce);
    let mut ids = p.properties.expect("properties").subscription_identifiers;
    ids.sort();
    assert_eq!(ids, vec![1, 2], "every matching identifier, on one delivery");
    sub.expect_no_publish().await;
}
