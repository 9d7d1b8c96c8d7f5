//! Will messages: when they are published and when not, v5 Will Delay Interval, will
//! properties, and no wills during broker shutdown.

use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::{LastWill as LastWill5, LastWillProperties};

use crate::common::{self, v3, v5};
use crate::raw::{self, Props, Raw};

/// A v3 watcher subscribed to `topic`.
async fn watcher(port: u16, topic: &str) -> v3::Client {
    let (mut w, _) = v3::connect(v3::options(port, &format!("watch-{topic}"))).await;
    w.subscribe(topic, v3::QoS::AtLeastOnce).await;
    w
}

fn v3_with_will(port: u16, id: &str, topic: &str) -> v3::MqttOptions {
    let mut o = v3::options(port, id);
    o.set_last_will(rumqttc::LastWill::new(topic, "will", v3::QoS::AtLeastOnce, false));
    o
}

fn v5_with_will(port: u16, id: &str, topic: &str, props: Option<LastWillProperties>) -> v5::MqttOptions {
    let mut o = v5::options(port, id);
    o.set_last_will(LastWill5::new(topic, "will", v5::QoS::AtLeastOnce, false, props));
    o
}

#[tokio::test]
async fn v3_will_published_on_network_drop() {
    let broker = common::broker();
    let port = broker.addr().port();
    let mut w = watcher(port, "w3/drop").await;
    let (c, _) = v3::connect(v3_with_will(port, "w3-drop", "w3/drop")).await;
    w.expect_no_publish().await;
    drop(c);
    let p = w.expect_publish().await;
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("w3/drop", &b"will"[..]));
}

#[tokio::test]
async fn v3_no_will_on_normal_disconnect() {
    let broker = common::broker();
    let port = broker.addr().port();
    let mut w = watcher(port, "w3/normal").await;
    let (c, _) = v3::connect(v3_with_will(port, "w3-normal", "w3/normal")).await;
    c.disconnect().await;
    w.expect_no_publish().await;
}

#[tokio::test]
async fn v3_will_published_on_keep_alive_timeout() {
    let broker = common::broker();
    let port = broker.addr().port();
    let mut w = watcher(port, "w3/ka").await;
    let connect = raw::v311("w3-ka").keep_alive(1).will(raw::Will::new("w3/ka", "silent"));
    let (mut c, _) = Raw::connect_ok(port, &connect).await;
    let start = Instant::now();
    c.expect_closed(Duration::from_secs(4)).await;
    assert_eq!(w.expect_publish().await.payload, &b"silent"[..]);
    assert!(start.elapsed() >= Duration::from_millis(900), "closed too early: {:?}", start.elapsed());
}

#[tokio::test]
async fn v3_will_published_on_protocol_error() {
    let broker = common::broker();
    let port = broker.addr().port();
    let mut w = watcher(port, "w3/proto").await;
    let connect = raw::v311("w3-proto").will(raw::Will::new("w3/proto", "broken"));
    let (mut c, _) = Raw::connect_ok(port, &connect).await;
    c.send(&raw::v311("w3-proto").encode()).await;
    c.expect_closed(common::WAIT).await;
    assert_eq!(w.expect_publish().await.payload, &b"broken"[..]);
}

#[tokio::test]
async fn v3_will_published_on_takeover() {
    let broker = common::broker();
    let port = broker.addr().port();
    let mut w = watcher(port, "w3/take").await;
    let (mut first, _) = v3::connect(v3_with_will(port, "w3-take", "w3/take")).await;
    let (_second, _) = v3::connect(v3::options(port, "w3-take")).await;
    first.expect_error().await;
    assert_eq!(w.expect_publish().await.payload, &b"will"[..]);
}

#[tokio::test]
async fn v5_will_published_on_network_drop_but_not_on_normal_disconnect() {
    let broker = common::broker();
    let port = broker.addr().port();
    let mut w = watcher(port, "w5/#").await;
    let (c, _) = v5::connect(v5_with_will(port, "w5-normal", "w5/normal", None)).await;
    c.disconnect().await;
    w.expect_no_publish().await;
    let (c, _) = v5::connect(v5_with_will(port, "w5-drop", "w5/drop", None)).await;
    drop(c);
    assert_eq!(w.expect_publish().await.topic, "w5/drop");
    w.expect_no_publish().await;
}

#[tokio::test]
async fn v5_disconnect_with_will_message_0x04_publishes_the_will() {
    let broker = common::broker();
    let port = broker.addr().port();
    let mut w = watcher(port, "w5/x04").await;
    let connect = raw::v5("w5-x04").will(raw::Will::new("w5/x04", "asked"));
    let (mut c, _) = Raw::connect_ok(port, &connect).await;
    c.disconnect(0x04, Props::new()).await;
    c.expect_closed(common::WAIT).await;
    assert_eq!(w.expect_publish().await.payload, &b"asked"[..]);
}

#[tokio::test]
async fn v5_will_published_on_keep_alive_timeout_and_protocol_error() {
    let broker = common::broker();
    let port = broker.addr().port();
    let mut w = watcher(port, "w5e/#").await;
    let (mut silent, _) =
        Raw::connect_ok(port, &raw::v5("w5-ka").keep_alive(1).will(raw::Will::new("w5e/ka", "ka"))).await;
    let (mut broken, _) =
        Raw::connect_ok(port, &raw::v5("w5-proto").will(raw::Will::new("w5e/proto", "proto"))).await;
    broken.send(&raw::v5("w5-proto").encode()).await;
    let before = broken.expect_closed(common::WAIT).await;
    assert_eq!(raw::disconnect_code(&before), Some(0x82), "{before:?}");
    assert_eq!(w.expect_publish().await.payload, &b"proto"[..]);
    silent.expect_closed(Duration::from_secs(4)).await;
    assert_eq!(w.expect_publish().await.payload, &b"ka"[..]);
}

#[tokio::test]
async fn v5_will_published_on_takeover() {
    let broker = common::broker();
    let port = broker.addr().port();
    let mut w = watcher(port, "w5/take").await;
    let (mut first, _) = v5::connect(v5_with_will(port, "w5-take", "w5/take", None)).await;
    let (_second, _) = v5::connect(v5::options(port, "w5-take")).await;
    assert!(first.expect_error().await.contains("SessionTakenOver"));
    assert_eq!(w.expect_publish().await.payload, &b"will"[..]);
}

fn delayed_will(delay: u32) -> LastWillProperties {
    LastWillProperties {
        delay_interval: Some(delay),
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    }
}

#[tokio::test]
async fn v5_will_delay_publishes_after_the_delay() {
    let broker = common::broker();
    let port = broker.addr().port();
    let mut w = watcher(port, "wd/after").await;
    let mut o = v5_with_will(port, "wd-after", "wd/after", Some(delayed_will(1)));
    o.set_clean_start(false).set_session_expiry_interval(Some(60));
    let (c, _) = v5::connect(o).await;
    drop(c);
    let start = Instant::now();
    w.expect_no_publish().await;
    assert_eq!(w.expect_publish().await.topic, "wd/after");
    assert!(start.elapsed() >= Duration::from_millis(800), "published after {:?}", start.elapsed());
}

#[tokio::test]
async fn v5_will_delay_is_cancelled_by_reconnect_within_the_delay() {
    let broker = common::broker();
    let port = broker.addr().port();
    let mut w = watcher(port, "wd/cancel").await;
    let mut o = v5_with_will(port, "wd-cancel", "wd/cancel", Some(delayed_will(1)));
    o.set_clean_start(false).set_session_expiry_interval(Some(60));
    let (c, _) = v5::connect(o.clone()).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = v5::options(port, "wd-cancel");
    again.set_clean_start(false).set_session_expiry_interval(Some(60));
    let (_c, ack) = v5::connect(again).await;
    assert!(ack.session_present);
    if let Some(p) = w.publish_within(Duration::from_millis(1500)).await {
        panic!("will published although the session reconnected within the delay: {p:?}");
    }
}

#[tokio::test]
async fn v5_will_published_when_the_session_ends_before_the_delay() {
    let broker = common::broker();
    let port = broker.addr().port();
    let mut w = watcher(port, "wd/end").await;
    let mut o = v5_with_will(port, "wd-end", "wd/end", Some(delayed_will(30)));
    o.set_clean_start(false).set_session_expiry_interval(Some(1));
    let (c, _) = v5::connect(o).await;
    drop(c);
    let start = Instant::now();
    assert_eq!(w.expect_publish().await.topic, "wd/end");
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(800) && took < Duration::from_secs(3), "published after {took:?}");
}

#[tokio::test]
async fn v5_will_properties_are_passed_through() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut w, _) = v5::connect(v5::options(port, "wp-watch")).await;
    w.subscribe("wp/t", v5::QoS::AtLeastOnce).await;
    let props = LastWillProperties {
        delay_interval: None,
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(120),
        content_type: Some("text/plain".into()),
        response_topic: Some("wp/reply".into()),
        correlation_data: Some(b"corr-1".to_vec().into()),
        user_properties: vec![("k".into(), "v1".into()), ("k".into(), "v2".into()), ("a".into(), "b".into())],
    };
    let (c, _) = v5::connect(v5_with_will(port, "wp-1", "wp/t", Some(props))).await;
    drop(c);
    let p = w.expect_publish().await;
    let got = p.properties.expect("will properties");
    assert_eq!(got.payload_format_indicator, Some(1));
    assert_eq!(got.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got.response_topic.as_deref(), Some("wp/reply"));
    assert_eq!(got.correlation_data.as_deref(), Some(&b"corr-1"[..]));
    assert_eq!(
        got.user_properties,
        vec![("k".into(), "v1".into()), ("k".into(), "v2".into()), ("a".into(), "b".into())]
    );
    let expiry = got.message_expiry_interval.expect("Message Expiry Interval");
    assert!((119..=120).contains(&expiry), "{expiry}");
}

#[tokio::test]
async fn no_wills_are_published_during_broker_shutdown() {
    let broker = common::broker();
    let port = broker.addr().port();
    let core = broker.broker.clone();
    let (mut w, _) = v5::connect(v5::options(port, "sd-watch")).await;
    w.subscribe("sd/#", v5::QoS::AtLeastOnce).await;
    // Retained wills: had either been published, the retained store would hold it.
    let mut o3 = v3::options(port, "sd-3");
    o3.set_last_will(rumqttc::LastWill::new("sd/3", "w3", v3::QoS::AtLeastOnce, true));
    let (mut c3, _) = v3::connect(o3).await;
    let mut o5 = v5::options(port, "sd-5");
    o5.set_last_will(LastWill5::new("sd/5", "w5", v5::QoS::AtLeastOnce, true, None));
    let (mut c5, _) = v5::connect(o5).await;
    let raw_connect = raw::v5("sd-raw").will(raw::Will { retain: true, ..raw::Will::new("sd/raw", "wr") });
    let (mut craw, _) = Raw::connect_ok(port, &raw_connect).await;
    common::stop(broker).await;
    let before = craw.expect_closed(common::WAIT).await;
    assert_eq!(raw::disconnect_code(&before), Some(0x8B), "Server shutting down: {before:?}");
    assert!(c5.expect_error().await.contains("ServerShuttingDown"));
    c3.expect_error().await;
    loop {
        match w.next_packet(common::WAIT).await {
            Some(Ok(v5::Packet::Publish(p))) => panic!("will published during shutdown: {p:?}"),
            Some(Ok(_)) => continue,
            Some(Err(err)) => {
                assert!(err.contains("ServerShuttingDown"), "{err}");
                break;
            }
            None => panic!("watcher not disconnected"),
        }
    }
    assert_eq!(core.retained_count(), 0, "a will was published during shutdown");
}
