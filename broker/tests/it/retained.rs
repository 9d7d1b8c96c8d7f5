//! Retained messages: set, replace, clear; RETAIN flag on subscribe vs. live delivery; v5
//! Retain Handling and Retain As Published; none for shared subscriptions.

use std::time::Duration;

use crate::common::{self, v3, v5};
use crate::raw::{self, Raw};

#[tokio::test]
async fn v3_retained_set_replace_and_clear() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (publisher, _) = v3::connect(v3::options(port, "rt-pub")).await;
    publisher.client.publish("rt/a", v3::QoS::AtLeastOnce, true, "1").await.unwrap();
    publisher.client.publish("rt/a", v3::QoS::AtLeastOnce, true, "2").await.unwrap();
    let mut publisher = publisher;
    publisher.expect_ack().await;
    publisher.expect_ack().await;
    let (mut s1, _) = v3::connect(v3::options(port, "rt-s1")).await;
    s1.subscribe("rt/#", v3::QoS::AtLeastOnce).await;
    let p = s1.expect_publish().await;
    assert_eq!((p.topic.as_str(), &p.payload[..], p.retain), ("rt/a", &b"2"[..], true), "replaced value");
    s1.expect_no_publish().await;
    // Clearing with an empty payload: current subscribers still get the empty message.
    publisher.client.publish("rt/a", v3::QoS::AtLeastOnce, true, "").await.unwrap();
    let cleared = s1.expect_publish().await;
    assert_eq!((cleared.topic.as_str(), cleared.payload.len()), ("rt/a", 0));
    assert!(!cleared.retain, "live delivery has RETAIN=0 in v3");
    publisher.expect_ack().await;
    let (mut s2, _) = v3::connect(v3::options(port, "rt-s2")).await;
    s2.subscribe("rt/#", v3::QoS::AtLeastOnce).await;
    s2.expect_no_publish().await;
}

#[tokio::test]
async fn v3_retained_flag_set_on_subscribe_delivery_but_not_on_live_delivery() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut live, _) = v3::connect(v3::options(port, "rf-live")).await;
    live.subscribe("rf/t", v3::QoS::AtMostOnce).await;
    let (publisher, _) = v3::connect(v3::options(port, "rf-pub")).await;
    publisher.client.publish("rf/t", v3::QoS::ExactlyOnce, true, "r").await.unwrap();
    let p = live.expect_publish().await;
    assert!(!p.retain, "live delivery to an existing subscription");
    let (mut late, _) = v3::connect(v3::options(port, "rf-late")).await;
    late.subscribe("rf/+", v3::QoS::ExactlyOnce).await;
    let p = late.expect_publish().await;
    assert!(p.retain, "delivered because of the subscription: RETAIN=1");
    assert_eq!(p.qos, v3::QoS::ExactlyOnce, "stored at the published QoS");
    // Subscribing again re-sends it (v3 behaves like Retain Handling 0).
    late.subscribe("rf/+", v3::QoS::AtMostOnce).await;
    let p = late.expect_publish().await;
    assert!(p.retain);
    assert_eq!(p.qos, v3::QoS::AtMostOnce, "min(stored QoS, granted QoS)");
}

#[tokio::test]
async fn v5_retained_set_replace_clear_and_empty_payload_delivered() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut existing, _) = v5::connect(v5::options(port, "rt5-live")).await;
    existing.subscribe("rt5/a", v5::QoS::AtLeastOnce).await;
    let (publisher, _) = v5::connect(v5::options(port, "rt5-pub")).await;
    publisher.client.publish("rt5/a", v5::QoS::AtLeastOnce, true, "1").await.unwrap();
    publisher.client.publish("rt5/a", v5::QoS::AtLeastOnce, true, "2").await.unwrap();
    existing.expect_publish().await;
    existing.expect_publish().await;
    let (mut s1, _) = v5::connect(v5::options(port, "rt5-s1")).await;
    s1.subscribe("rt5/a", v5::QoS::AtLeastOnce).await;
    let p = s1.expect_publish().await;
    assert_eq!((&p.payload[..], p.retain), (&b"2"[..], true));
    publisher.client.publish("rt5/a", v5::QoS::AtLeastOnce, true, "").await.unwrap();
    let cleared = existing.expect_publish().await;
    assert!(cleared.payload.is_empty(), "the clearing publish reaches current subscribers");
    let (mut s2, _) = v5::connect(v5::options(port, "rt5-s2")).await;
    s2.subscribe("rt5/a", v5::QoS::AtLeastOnce).await;
    s2.expect_no_publish().await;
}

async fn retained_fixture(port: u16, topic: &str) -> v5::Client {
    let (mut publisher, _) = v5::connect(v5::options(port, &format!("{topic}-pub"))).await;
    publisher.client.publish(topic, v5::QoS::AtLeastOnce, true, "kept").await.unwrap();
    publisher.expect_ack().await;
    publisher
}

fn filter(path: &str, rule: v5::RetainForwardRule) -> v5::Filter {
    v5::Filter {
        path: path.into(),
        qos: v5::QoS::AtLeastOnce,
        nolocal: false,
        preserve_retain: false,
        retain_forward_rule: rule,
    }
}

#[tokio::test]
async fn v5_retain_handling_0_sends_on_every_subscribe() {
    let broker = common::broker();
    let port = broker.addr().port();
    let _p = retained_fixture(port, "rh0/t").await;
    let (mut s, _) = v5::connect(v5::options(port, "rh0-sub")).await;
    for _ in 0..2 {
        s.subscribe_filters(vec![filter("rh0/t", v5::RetainForwardRule::OnEverySubscribe)], None).await;
        let p = s.expect_publish().await;
        assert!(p.retain);
        assert_eq!(p.payload, &b"kept"[..]);
    }
}

#[tokio::test]
async fn v5_retain_handling_1_sends_only_for_a_new_subscription() {
    let broker = common::broker();
    let port = broker.addr().port();
    let _p = retained_fixture(port, "rh1/t").await;
    let (mut s, _) = v5::connect(v5::options(port, "rh1-sub")).await;
    s.subscribe_filters(vec![filter("rh1/t", v5::RetainForwardRule::OnNewSubscribe)], None).await;
    assert!(s.expect_publish().await.retain, "new subscription");
    s.subscribe_filters(vec![filter("rh1/t", v5::RetainForwardRule::OnNewSubscribe)], None).await;
    s.expect_no_publish().await;
}

#[tokio::test]
async fn v5_retain_handling_2_never_sends_at_subscribe() {
    let broker = common::broker();
    let port = broker.addr().port();
    let publisher = retained_fixture(port, "rh2/t").await;
    let (mut s, _) = v5::connect(v5::options(port, "rh2-sub")).await;
    s.subscribe_filters(vec![filter("rh2/t", v5::RetainForwardRule::Never)], None).await;
    s.expect_no_publish().await;
    // The subscription itself works.
    publisher.client.publish("rh2/t", v5::QoS::AtLeastOnce, false, "live").await.unwrap();
    assert_eq!(s.expect_publish().await.payload, &b"live"[..]);
}

#[tokio::test]
async fn v5_retain_as_published_keeps_the_retain_flag_on_live_delivery() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut rap, _) = v5::connect(v5::options(port, "rap-1")).await;
    let mut f = filter("rap/t", v5::RetainForwardRule::OnEverySubscribe);
    f.preserve_retain = true;
    rap.subscribe_filters(vec![f], None).await;
    let (mut plain, _) = v5::connect(v5::options(port, "rap-2")).await;
    plain.subscribe("rap/t", v5::QoS::AtLeastOnce).await;
    let (publisher, _) = v5::connect(v5::options(port, "rap-pub")).await;
    publisher.client.publish("rap/t", v5::QoS::AtLeastOnce, true, "r").await.unwrap();
    assert!(rap.expect_publish().await.retain, "Retain As Published");
    assert!(!plain.expect_publish().await.retain, "RETAIN=0 without Retain As Published");
    publisher.client.publish("rap/t", v5::QoS::AtLeastOnce, false, "n").await.unwrap();
    assert!(!rap.expect_publish().await.retain, "a non-retained message stays RETAIN=0");
    plain.expect_publish().await;
}

#[tokio::test]
async fn shared_subscriptions_get_no_retained_messages() {
    let broker = common::broker();
    let port = broker.addr().port();
    let _p = retained_fixture(port, "rsh/t").await;
    let (mut s5, _) = v5::connect(v5::options(port, "rsh-5")).await;
    s5.subscribe("$share/g/rsh/t", v5::QoS::AtLeastOnce).await;
    s5.expect_no_publish().await;
    let (mut s3, _) = v3::connect(v3::options(port, "rsh-3")).await;
    s3.subscribe("$queue/rsh/t", v3::QoS::AtLeastOnce).await;
    s3.subscribe("$share/h/rsh/#", v3::QoS::AtLeastOnce).await;
    s3.expect_no_publish().await;
    // A plain subscription on the same topic does get it.
    s3.subscribe("rsh/t", v3::QoS::AtLeastOnce).await;
    assert!(s3.expect_publish().await.retain);
}

#[tokio::test]
async fn v5_expired_retained_message_is_not_delivered() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut publisher, _) = Raw::connect_ok(port, &raw::v5("rx-pub")).await;
    let mut p = raw::Publish::new("rx/short", 0, 0, b"short");
    p.retain = true;
    p.props = raw::Props::new().int(raw::prop::MESSAGE_EXPIRY, 1);
    publisher.publish(&p).await;
    let mut q = raw::Publish::new("rx/long", 0, 0, b"long");
    q.retain = true;
    q.props = raw::Props::new().int(raw::prop::MESSAGE_EXPIRY, 100);
    publisher.publish(&q).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (mut s, _) = Raw::connect_ok(port, &raw::v5("rx-sub")).await;
    s.subscribe_ok(1, &[("rx/#", 1)]).await;
    let got = s.expect_publish().await;
    assert_eq!(got.topic, "rx/long", "the expired retained message is gone");
    let left = got.props.get_int(raw::prop::MESSAGE_EXPIRY).expect("remaining Message Expiry Interval");
    assert!((98..=99).contains(&left), "remaining interval forwarded, got {left}");
    s.expect_nothing(common::QUIET).await;
}
