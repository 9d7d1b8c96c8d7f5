//! `$SYS/broker/...` status topics.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::{self, QUIET, v3, v5};

const REQUIRED: [&str; 15] = [
    "$SYS/broker/version",
    "$SYS/broker/uptime",
    "$SYS/broker/clients/connected",
    "$SYS/broker/clients/total",
    "$SYS/broker/clients/disconnected",
    "$SYS/broker/clients/maximum",
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
    "$SYS/broker/publish/messages/received",
    "$SYS/broker/publish/messages/sent",
    "$SYS/broker/publish/messages/dropped",
    "$SYS/broker/bytes/received",
    "$SYS/broker/bytes/sent",
    "$SYS/broker/subscriptions/count",
    "$SYS/broker/retained messages/count",
];

/// Collects `$SYS` values until `done` holds for the latest values or `within` passes.
async fn watch_until(
    c: &mut v3::Client,
    values: &mut BTreeMap<String, String>,
    within: Duration,
    done: impl Fn(&BTreeMap<String, String>) -> bool,
) -> bool {
    let deadline = Instant::now() + within;
    while !done(values) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        if let Some(p) = c.publish_within(left).await {
            values.insert(p.topic.clone(), String::from_utf8(p.payload.to_vec()).unwrap());
        }
    }
    true
}

fn num(values: &BTreeMap<String, String>, topic: &str) -> u64 {
    values.get(topic).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{topic}: {values:?}"))
}

#[tokio::test]
async fn sys_topics_are_published_retained_with_mosquitto_names() {
    let broker = common::broker_with(|c| c.sys.interval = Duration::from_secs(1));
    let port = broker.addr().port();
    let (mut c, _) = v3::connect(v3::options(port, "sys-names")).await;
    c.subscribe("$SYS/broker/#", v3::QoS::AtMostOnce).await;
    let mut values = BTreeMap::new();
    // The retained snapshot arrives right after the SUBACK.
    while let Some(p) = c.publish_within(QUIET).await {
        assert!(p.retain, "{} delivered on subscribe must be retained", p.topic);
        values.insert(p.topic.clone(), String::from_utf8(p.payload.to_vec()).unwrap());
    }
    for topic in REQUIRED {
        assert!(values.contains_key(topic), "{topic} missing; got {:?}", values.keys().collect::<Vec<_>>());
    }
    assert!(!values["$SYS/broker/version"].is_empty());
    let uptime = &values["$SYS/broker/uptime"];
    let secs = uptime.strip_suffix(" seconds").unwrap_or_else(|| panic!("uptime {uptime:?}"));
    secs.parse::<u64>().unwrap();
    for topic in REQUIRED.iter().filter(|t| !t.ends_with("version") && !t.ends_with("uptime")) {
        num(&values, topic);
    }
    // Nothing under "#": `$` topics are not matched by wildcards at the first level.
    let (mut all, _) = v5::connect(v5::options(port, "sys-hash")).await;
    all.subscribe("#", v5::QoS::AtMostOnce).await;
    if let Some(p) = all.publish_within(Duration::from_millis(1300)).await {
        panic!("'#' received {p:?}");
    }
}

#[tokio::test]
async fn sys_values_follow_the_broker_state() {
    let broker = common::broker_with(|c| c.sys.interval = Duration::from_secs(1));
    let port = broker.addr().port();
    let (mut sys, _) = v3::connect(v3::options(port, "sys-state")).await;
    sys.subscribe("$SYS/broker/#", v3::QoS::AtMostOnce).await;
    // A persistent client that leaves (disconnected session), a client with a subscription
    // that publishes a retained message and stays.
    let mut gone = v3::options(port, "sys-gone");
    gone.set_clean_session(false);
    let (g, _) = v3::connect(gone).await;
    g.disconnect().await;
    let (mut stay, _) = v5::connect(v5::options(port, "sys-stay")).await;
    stay.subscribe("sys/t", v5::QoS::AtLeastOnce).await;
    for i in 0..3 {
        stay.client.publish("sys/t", v5::QoS::AtLeastOnce, i == 0, "payload").await.unwrap();
        stay.expect_publish().await;
    }
    let mut values = BTreeMap::new();
    let ok = watch_until(&mut sys, &mut values, Duration::from_secs(4), |v| {
        let get = |t: &str| v.get(t).and_then(|x| x.parse::<u64>().ok());
        get("$SYS/broker/clients/connected") == Some(2)
            && get("$SYS/broker/clients/disconnected") == Some(1)
            && get("$SYS/broker/clients/total") == Some(3)
            && get("$SYS/broker/publish/messages/received").is_some_and(|n| n >= 3)
            && get("$SYS/broker/messages/received").is_some_and(|n| n >= 3)
            && get("$SYS/broker/publish/messages/sent").is_some_and(|n| n >= 3)
            && get("$SYS/broker/subscriptions/count") == Some(2)
    })
    .await;
    assert!(ok, "values never matched the state: {values:#?}");
    assert!(num(&values, "$SYS/broker/clients/maximum") >= 2);
    assert!(num(&values, "$SYS/broker/bytes/received") > 0);
    assert!(num(&values, "$SYS/broker/bytes/sent") > 0);
    // The retained count includes our retained message (and the `$SYS` topics themselves).
    let sys_topics = values.keys().filter(|t| t.starts_with("$SYS/")).count() as u64;
    let ok = watch_until(&mut sys, &mut values, Duration::from_secs(3), |v| {
        v.get("$SYS/broker/retained messages/count").and_then(|x| x.parse::<u64>().ok())
            == Some(sys_topics + 1)
    })
    .await;
    assert!(ok, "retained messages/count should be {} : {values:#?}", sys_topics + 1);
}

#[tokio::test]
async fn sys_dropped_counts_queue_overflow() {
    let broker = common::broker_with(|c| {
        c.sys.interval = Duration::from_secs(1);
        c.limits.max_queued_messages = 1;
    });
    let port = broker.addr().port();
    let mut persistent = v3::options(port, "sys-drop-sub");
    persistent.set_clean_session(false);
    let (mut s, _) = v3::connect(persistent).await;
    s.subscribe("drop/t", v3::QoS::AtLeastOnce).await;
    s.disconnect().await;
    let (mut p, _) = v3::connect(v3::options(port, "sys-drop-pub")).await;
    for _ in 0..3 {
        p.client.publish("drop/t", v3::QoS::AtLeastOnce, false, "x").await.unwrap();
        p.expect_ack().await;
    }
    let (mut sys, _) = v3::connect(v3::options(port, "sys-drop-watch")).await;
    sys.subscribe("$SYS/broker/publish/messages/dropped", v3::QoS::AtMostOnce).await;
    let mut values = BTreeMap::new();
    let ok = watch_until(&mut sys, &mut values, Duration::from_secs(3), |v| {
        v.get("$SYS/broker/publish/messages/dropped").map(String::as_str) == Some("2")
    })
    .await;
    assert!(ok, "two messages dropped: {values:?}");
}

#[tokio::test]
async fn sys_zero_interval_disables_sys_topics() {
    let broker = common::broker_with(|c| c.sys.interval = Duration::ZERO);
    let port = broker.addr().port();
    let (mut c, _) = v3::connect(v3::options(port, "sys-off")).await;
    c.subscribe("$SYS/#", v3::QoS::AtMostOnce).await;
    if let Some(p) = c.publish_within(Duration::from_millis(1200)).await {
        panic!("$SYS published although sys.interval is 0: {p:?}");
    }
    assert_eq!(broker.broker.retained_count(), 0);
}
