//! Topic names and filters: wildcards, `$` topics, invalid filters, the level limit and
//! the ban on publishing to `$SYS`.

use std::collections::BTreeSet;

use fleetmq_broker::core::topic;

use crate::common::{self, QUIET, v3, v5};
use crate::raw::{self, Packet, Raw, prop};

const TOPICS: [&str; 7] = ["a/b/c", "a", "a/b", "x/y", "/x", "a//c", "sport/tennis/player1"];

/// (filter, topics of [`TOPICS`] it must receive)
fn cases() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("a/+/c", vec!["a/b/c", "a//c"]),
        ("a/#", vec!["a/b/c", "a", "a/b", "a//c"]),
        ("+/+", vec!["a/b", "x/y", "/x"]),
        ("#", TOPICS.to_vec()),
        ("+", vec!["a"]),
        ("/+", vec!["/x"]),
        ("sport/tennis/+", vec!["sport/tennis/player1"]),
        ("sport/+", vec![]),
        ("a/b", vec!["a/b"]),
    ]
}

#[tokio::test]
async fn v3_plus_and_hash_wildcards_match() {
    let broker = common::broker();
    let port = broker.addr().port();
    let mut subs = Vec::new();
    for (i, (filter, _)) in cases().into_iter().enumerate() {
        let (mut c, _) = v3::connect(v3::options(port, &format!("wc3-{i}"))).await;
        c.subscribe(filter, v3::QoS::AtLeastOnce).await;
        subs.push(c);
    }
    let (publisher, _) = v3::connect(v3::options(port, "wc3-pub")).await;
    for t in TOPICS {
        publisher.client.publish(t, v3::QoS::AtLeastOnce, false, "x").await.unwrap();
    }
    for ((filter, want), c) in cases().into_iter().zip(&mut subs) {
        let mut got = BTreeSet::new();
        while let Some(p) = c.publish_within(QUIET).await {
            assert!(got.insert(p.topic.clone()), "{filter}: {} delivered twice", p.topic);
        }
        let want: BTreeSet<String> = want.into_iter().map(String::from).collect();
        assert_eq!(got, want, "filter {filter}");
        // Cross-check against the broker's reference matcher.
        for t in TOPICS {
            assert_eq!(topic::matches(filter, t), want.contains(t), "{filter} vs {t}");
        }
    }
}

#[tokio::test]
async fn v5_plus_and_hash_wildcards_match() {
    let broker = common::broker();
    let port = broker.addr().port();
    let mut subs = Vec::new();
    for (i, (filter, _)) in cases().into_iter().enumerate() {
        let (mut c, _) = v5::connect(v5::options(port, &format!("wc5-{i}"))).await;
        c.subscribe(filter, v5::QoS::AtLeastOnce).await;
        subs.push(c);
    }
    let (publisher, _) = v5::connect(v5::options(port, "wc5-pub")).await;
    for t in TOPICS {
        publisher.client.publish(t, v5::QoS::AtLeastOnce, false, "x").await.unwrap();
    }
    for ((filter, want), c) in cases().into_iter().zip(&mut subs) {
        let mut got = BTreeSet::new();
        while let Some(p) = c.publish_within(QUIET).await {
            got.insert(String::from_utf8(p.topic.to_vec()).unwrap());
        }
        let want: BTreeSet<String> = want.into_iter().map(String::from).collect();
        assert_eq!(got, want, "filter {filter}");
    }
}

#[tokio::test]
async fn wildcard_filters_do_not_match_dollar_topics() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut hash, _) = v3::connect(v3::options(port, "dl-hash")).await;
    hash.subscribe("#", v3::QoS::AtLeastOnce).await;
    let (mut plus, _) = v5::connect(v5::options(port, "dl-plus")).await;
    plus.subscribe("+/x", v5::QoS::AtLeastOnce).await;
    let (mut explicit, _) = v3::connect(v3::options(port, "dl-explicit")).await;
    explicit.subscribe("$app/#", v3::QoS::AtLeastOnce).await;
    let (mut explicit_plus, _) = v3::connect(v3::options(port, "dl-explicit-plus")).await;
    explicit_plus.subscribe("$app/+", v3::QoS::AtLeastOnce).await;
    let (publisher, _) = v3::connect(v3::options(port, "dl-pub")).await;
    publisher.client.publish("$app/x", v3::QoS::AtLeastOnce, true, "dollar").await.unwrap();
    assert_eq!(explicit.expect_publish().await.topic, "$app/x");
    assert_eq!(explicit_plus.expect_publish().await.topic, "$app/x");
    hash.expect_no_publish().await;
    plus.expect_no_publish().await;
    // Nor as retained messages at subscribe time.
    let (mut late, _) = v3::connect(v3::options(port, "dl-late")).await;
    late.subscribe("#", v3::QoS::AtLeastOnce).await;
    late.subscribe("+/x", v3::QoS::AtLeastOnce).await;
    late.expect_no_publish().await;
    late.subscribe("$app/x", v3::QoS::AtLeastOnce).await;
    assert!(late.expect_publish().await.retain);
}

const INVALID_FILTERS: [&str; 7] =
    ["a+/b", "a/b#", "a/+b", "$share/g", "$share//a", "$share/g+/a", "$queue/"];

#[tokio::test]
async fn v5_invalid_filters_get_suback_0x8f_with_a_reason_string() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut c, _) = Raw::connect_ok(port, &raw::v5("if5")).await;
    let mut filters: Vec<(&str, u8)> = INVALID_FILTERS.iter().map(|f| (*f, 1)).collect();
    filters.push(("ok/+", 1));
    c.subscribe(1, &filters, None).await;
    match c.expect().await {
        Packet::SubAck { codes, props, .. } => {
            let mut want = vec![0x8F; INVALID_FILTERS.len()];
            want.push(0x01);
            assert_eq!(codes, want, "Topic Filter Invalid for {INVALID_FILTERS:?}");
            assert!(props.get_str(prop::REASON_STRING).is_some_and(|r| !r.is_empty()), "reason string");
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
    // Still connected and the valid filter works.
    let (publisher, _) = v3::connect(v3::options(port, "if5-pub")).await;
    publisher.client.publish("ok/1", v3::QoS::AtLeastOnce, false, "x").await.unwrap();
    assert_eq!(c.expect_publish().await.topic, "ok/1");
}

#[tokio::test]
async fn v3_invalid_filters_get_suback_0x80() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut c, _) = Raw::connect_ok(port, &raw::v311("if3")).await;
    let mut filters: Vec<(&str, u8)> = INVALID_FILTERS.iter().map(|f| (*f, 1)).collect();
    filters.push(("ok/#", 2));
    let codes = c.subscribe_ok(1, &filters).await;
    let mut want = vec![0x80; INVALID_FILTERS.len()];
    want.push(0x02);
    assert_eq!(codes, want, "Failure for {INVALID_FILTERS:?}");
}

#[tokio::test]
async fn misplaced_hash_filter_is_refused_or_closes_the_connection() {
    let broker = common::broker();
    let port = broker.addr().port();
    for v5 in [false, true] {
        let connect = if v5 { raw::v5("hash-mid") } else { raw::v311("hash-mid") };
        let (mut c, _) = Raw::connect_ok(port, &connect).await;
        c.subscribe(1, &[("a/#/b", 1)], None).await;
        match c.recv(common::WAIT).await {
            raw::Event::Packet(Packet::SubAck { codes, .. }) => {
                assert_eq!(codes, vec![if v5 { 0x8F } else { 0x80 }], "v5={v5}")
            }
            raw::Event::Packet(Packet::Disconnect { code, .. }) => assert!(code >= 0x80, "v5={v5}"),
            raw::Event::Closed => {}
            other => panic!("a/#/b accepted? v5={v5}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn v5_topic_with_too_many_levels_is_refused() {
    let broker = common::broker_with(|c| c.limits.max_topic_levels = 3);
    let port = broker.addr().port();
    let (mut watcher, _) = v3::connect(v3::options(port, "lv5-watch")).await;
    watcher.subscribe("#", v3::QoS::AtLeastOnce).await;
    let (mut c, _) = Raw::connect_ok(port, &raw::v5("lv5")).await;
    for (qos, kind) in [(1, raw::PUBACK), (2, raw::PUBREC)] {
        c.publish(&raw::Publish::new("a/b/c/d", qos, 5, b"deep")).await;
        match c.expect().await {
            Packet::Ack { kind: k, id: 5, code, props } if k == kind => {
                assert_eq!(code, 0x90, "Topic Name Invalid (QoS {qos})");
                assert!(props.get_str(prop::REASON_STRING).is_some(), "reason string");
            }
            other => panic!("expected ack 0x90, got {other:?}"),
        }
    }
    watcher.expect_no_publish().await;
    c.publish(&raw::Publish::new("a/b/c", 1, 6, b"ok")).await;
    assert!(matches!(c.expect().await, Packet::Ack { kind: raw::PUBACK, id: 6, code: 0x00, .. }));
    assert_eq!(watcher.expect_publish().await.topic, "a/b/c");
    c.subscribe(2, &[("a/b/c/d", 1), ("a/+/+/#", 1), ("a/b/+", 1)], None).await;
    match c.expect().await {
        Packet::SubAck { codes, .. } => assert_eq!(codes, vec![0x8F, 0x8F, 0x01]),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn v3_topic_with_too_many_levels_is_acknowledged_and_dropped() {
    let broker = common::broker_with(|c| c.limits.max_topic_levels = 3);
    let port = broker.addr().port();
    let (mut watcher, _) = v3::connect(v3::options(port, "lv3-watch")).await;
    watcher.subscribe("#", v3::QoS::AtLeastOnce).await;
    let (mut c, _) = Raw::connect_ok(port, &raw::v311("lv3")).await;
    c.publish(&raw::Publish::new("a/b/c/d", 1, 5, b"deep")).await;
    assert!(matches!(c.expect().await, Packet::Ack { kind: raw::PUBACK, id: 5, .. }));
    watcher.expect_no_publish().await;
    assert_eq!(c.subscribe_ok(2, &[("a/b/c/d", 1), ("a/b/c", 1)]).await, vec![0x80, 0x01]);
}

#[tokio::test]
async fn v5_publish_to_sys_is_refused_with_0x87() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut watcher, _) = v3::connect(v3::options(port, "sys5-watch")).await;
    watcher.subscribe("$SYS/#", v3::QoS::AtLeastOnce).await;
    let (mut c, _) = Raw::connect_ok(port, &raw::v5("sys5")).await;
    for (qos, kind) in [(1, raw::PUBACK), (2, raw::PUBREC)] {
        let mut p = raw::Publish::new("$SYS/broker/uptime", qos, 3, b"fake");
        p.retain = true;
        c.publish(&p).await;
        match c.expect().await {
            Packet::Ack { kind: k, id: 3, code, props } if k == kind => {
                assert_eq!(code, 0x87, "Not Authorized (QoS {qos})");
                assert!(props.get_str(prop::REASON_STRING).is_some());
            }
            other => panic!("{other:?}"),
        }
    }
    watcher.expect_no_publish().await;
    assert_eq!(broker.broker.retained_count(), 0, "not stored as retained either");
}

#[tokio::test]
async fn v3_publish_to_sys_is_acknowledged_and_dropped() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut watcher, _) = v3::connect(v3::options(port, "sys3-watch")).await;
    watcher.subscribe("$SYS/#", v3::QoS::AtLeastOnce).await;
    let (mut c, _) = v3::connect(v3::options(port, "sys3")).await;
    c.client.publish("$SYS/broker/fake", v3::QoS::AtLeastOnce, true, "x").await.unwrap();
    assert!(matches!(c.expect_ack().await, v3::Packet::PubAck(_)));
    c.client.publish("$SYS/broker/fake", v3::QoS::ExactlyOnce, false, "y").await.unwrap();
    assert!(matches!(c.expect_ack().await, v3::Packet::PubRec(_)));
    watcher.expect_no_publish().await;
    assert_eq!(broker.broker.retained_count(), 0);
}
