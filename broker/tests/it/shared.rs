//! Shared subscriptions: `$share/<group>/<filter>` and `$queue/<filter>`.

use std::collections::BTreeSet;

use crate::common::{self, v3, v5};
use crate::raw::{self, Raw};

/// Publishes `n` QoS 1 messages to `topic` with payloads "0".."n-1" and waits for the acks
/// (so every one has been routed).
async fn publish_n(port: u16, id: &str, topic: &str, n: usize) {
    let (mut p, _) = v3::connect(v3::options(port, id)).await;
    for i in 0..n {
        p.client.publish(topic, v3::QoS::AtLeastOnce, false, format!("{i}")).await.unwrap();
    }
    for _ in 0..n {
        p.expect_ack().await;
    }
}

/// Payloads (as numbers) a v3 client receives until it stays quiet.
async fn drain3(c: &mut v3::Client) -> Vec<usize> {
    let mut got = Vec::new();
    while let Some(p) = c.publish_within(common::QUIET).await {
        got.push(std::str::from_utf8(&p.payload).unwrap().parse().unwrap());
    }
    got
}

async fn drain5(c: &mut v5::Client) -> Vec<usize> {
    let mut got = Vec::new();
    while let Some(p) = c.publish_within(common::QUIET).await {
        got.push(std::str::from_utf8(&p.payload).unwrap().parse().unwrap());
    }
    got
}

fn set(v: &[usize]) -> BTreeSet<usize> {
    v.iter().copied().collect()
}

#[tokio::test]
async fn v5_shared_subscription_delivers_each_message_to_one_member_round_robin() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut a, _) = v5::connect(v5::options(port, "sh5-a")).await;
    a.subscribe("$share/g/sh5/t", v5::QoS::AtLeastOnce).await;
    let (mut b, _) = v5::connect(v5::options(port, "sh5-b")).await;
    b.subscribe("$share/g/sh5/t", v5::QoS::AtLeastOnce).await;
    publish_n(port, "sh5-pub", "sh5/t", 6).await;
    let (ga, gb) = (drain5(&mut a).await, drain5(&mut b).await);
    assert_eq!(ga.len() + gb.len(), 6, "each message exactly once: {ga:?} {gb:?}");
    assert_eq!(set(&ga).union(&set(&gb)).count(), 6, "no duplicates: {ga:?} {gb:?}");
    let (evens, odds) = (set(&[0, 2, 4]), set(&[1, 3, 5]));
    assert!(
        (set(&ga) == evens && set(&gb) == odds) || (set(&ga) == odds && set(&gb) == evens),
        "round robin alternates between members: {ga:?} {gb:?}"
    );
}

#[tokio::test]
async fn v3_shared_subscription_delivers_each_message_to_one_member_round_robin() {
    let broker = common::broker();
    let port = broker.addr().port();
    let mut members = Vec::new();
    for id in ["sh3-a", "sh3-b", "sh3-c"] {
        let (mut c, _) = v3::connect(v3::options(port, id)).await;
        let ack = c.subscribe("$share/workers/sh3/+", v3::QoS::AtLeastOnce).await;
        assert_eq!(ack.return_codes, vec![v3::SubscribeReasonCode::Success(v3::QoS::AtLeastOnce)]);
        members.push(c);
    }
    publish_n(port, "sh3-pub", "sh3/x", 6).await;
    let mut all = Vec::new();
    for m in &mut members {
        let got = drain3(m).await;
        assert_eq!(got.len(), 2, "three members share six messages evenly: {got:?}");
        all.extend(got);
    }
    assert_eq!(set(&all), (0..6).collect(), "every message delivered once");
}

#[tokio::test]
async fn every_group_and_every_plain_subscriber_gets_each_message() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut g1a, _) = v3::connect(v3::options(port, "grp-g1a")).await;
    g1a.subscribe("$share/g1/grp/t", v3::QoS::AtLeastOnce).await;
    let (mut g1b, _) = v3::connect(v3::options(port, "grp-g1b")).await;
    g1b.subscribe("$share/g1/grp/t", v3::QoS::AtLeastOnce).await;
    let (mut g2, _) = v5::connect(v5::options(port, "grp-g2")).await;
    g2.subscribe("$share/g2/grp/#", v5::QoS::AtLeastOnce).await;
    let (mut plain, _) = v3::connect(v3::options(port, "grp-plain")).await;
    plain.subscribe("grp/t", v3::QoS::AtLeastOnce).await;
    publish_n(port, "grp-pub", "grp/t", 4).await;
    let (a, b) = (drain3(&mut g1a).await, drain3(&mut g1b).await);
    assert_eq!((a.len(), b.len()), (2, 2), "group g1 shares: {a:?} {b:?}");
    assert_eq!(drain5(&mut g2).await, vec![0, 1, 2, 3], "the only member of g2 gets all");
    assert_eq!(drain3(&mut plain).await, vec![0, 1, 2, 3], "plain subscribers unaffected");
}

#[tokio::test]
async fn queue_subscription_delivers_each_message_to_one_member() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut a, _) = v3::connect(v3::options(port, "q-a")).await;
    a.subscribe("$queue/jobs/#", v3::QoS::AtLeastOnce).await;
    let (mut b, _) = v5::connect(v5::options(port, "q-b")).await;
    b.subscribe("$queue/jobs/#", v5::QoS::AtLeastOnce).await;
    publish_n(port, "q-pub", "jobs/build", 4).await;
    let (ga, gb) = (drain3(&mut a).await, drain5(&mut b).await);
    assert_eq!((ga.len(), gb.len()), (2, 2), "{ga:?} {gb:?}");
    assert_eq!(set(&ga).union(&set(&gb)).count(), 4);
}

#[tokio::test]
async fn disconnected_member_gets_nothing_while_others_are_connected() {
    let broker = common::broker();
    let port = broker.addr().port();
    let mut persistent = v3::options(port, "shd-a");
    persistent.set_clean_session(false);
    let (mut a, _) = v3::connect(persistent.clone()).await;
    a.subscribe("$share/g/shd/t", v3::QoS::AtLeastOnce).await;
    let (mut b, _) = v3::connect(v3::options(port, "shd-b")).await;
    b.subscribe("$share/g/shd/t", v3::QoS::AtLeastOnce).await;
    a.disconnect().await;
    publish_n(port, "shd-pub", "shd/t", 4).await;
    assert_eq!(drain3(&mut b).await, vec![0, 1, 2, 3], "the connected member gets everything");
    let (mut a, ack) = v3::connect(persistent).await;
    assert!(ack.session_present);
    a.expect_no_publish().await;
}

#[tokio::test]
async fn shared_group_with_no_member_connected_queues_for_a_persistent_member() {
    let broker = common::broker();
    let port = broker.addr().port();
    let mut persistent = v3::options(port, "sho-a");
    persistent.set_clean_session(false);
    let (mut a, _) = v3::connect(persistent.clone()).await;
    a.subscribe("$share/g/sho/t", v3::QoS::AtLeastOnce).await;
    a.disconnect().await;
    publish_n(port, "sho-pub", "sho/t", 2).await;
    let (mut a, _) = v3::connect(persistent).await;
    assert_eq!(drain3(&mut a).await, vec![0, 1]);
}

#[tokio::test]
async fn v5_no_local_on_a_shared_subscription_is_a_protocol_error_0x82() {
    let broker = common::broker();
    let port = broker.addr().port();
    for filter in ["$share/g/nl/t", "$queue/nl/t"] {
        let (mut c, _) = Raw::connect_ok(port, &raw::v5("shnl")).await;
        c.subscribe(1, &[(filter, raw::opts(1, true, false, 0))], None).await;
        let before = c.expect_closed(common::WAIT).await;
        assert_eq!(raw::disconnect_code(&before), Some(0x82), "{filter}: {before:?}");
    }
}
