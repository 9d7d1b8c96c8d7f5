//! Limits: connections, packet size, keep-alive; and the anonymous-access rule for
//! non-loopback listeners.

use std::time::{Duration, Instant};

use fleetmq_broker::server::RunningBroker;
use fleetmq_config::{ByteSize, Listener};

use crate::common::{self, v3, v5};
use crate::raw::{self, Packet, Raw, prop};

fn connack(p: &Packet) -> (u8, raw::Props) {
    match p {
        Packet::ConnAck { code, props, .. } => (*code, props.clone()),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[tokio::test]
async fn v5_max_connections_refused_with_quota_exceeded_0x97() {
    let broker = common::broker_with(|c| c.limits.max_connections = 1);
    let port = broker.addr().port();
    let (first, _) = Raw::connect_ok(port, &raw::v5("mc5-1")).await;
    let (mut second, ack) = Raw::connect(port, &raw::v5("mc5-2")).await;
    let (code, props) = connack(&ack);
    assert_eq!(code, 0x97, "Quota exceeded");
    assert!(props.get_str(prop::REASON_STRING).is_some(), "reason string on the refusal");
    second.expect_closed(common::WAIT).await;
    // Once the first leaves, there is room again.
    drop(first);
    let deadline = Instant::now() + common::WAIT;
    loop {
        let (_c, ack) = Raw::connect(port, &raw::v5("mc5-3")).await;
        if connack(&ack).0 == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "connection slot never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn v3_max_connections_refused_with_0x03() {
    let broker = common::broker_with(|c| c.limits.max_connections = 2);
    let port = broker.addr().port();
    let (_a, _) = Raw::connect_ok(port, &raw::v311("mc3-1")).await;
    let (_b, _) = v5::connect(v5::options(port, "mc3-2")).await;
    let (mut c, ack) = Raw::connect(port, &raw::v311("mc3-3")).await;
    assert_eq!(connack(&ack).0, 0x03, "Server unavailable");
    c.expect_closed(common::WAIT).await;
}

async fn oversized(v5: bool) {
    let broker = common::broker_with(|c| c.limits.max_packet_size = ByteSize::b(1024));
    let port = broker.addr().port();
    let (mut watcher, _) = v3::connect(v3::options(port, "big-watch")).await;
    watcher.subscribe("big/#", v3::QoS::AtLeastOnce).await;
    let connect = if v5 { raw::v5("big-1") } else { raw::v311("big-1") };
    let (mut c, _) = Raw::connect_ok(port, &connect).await;
    // Just below the limit passes.
    c.publish(&raw::Publish::new("big/ok", 1, 1, &[b'x'; 900])).await;
    assert!(matches!(c.expect().await, Packet::Ack { kind: raw::PUBACK, id: 1, .. }));
    assert_eq!(watcher.expect_publish().await.topic, "big/ok");
    c.publish(&raw::Publish::new("big/no", 1, 2, &[b'x'; 2000])).await;
    let before = c.expect_closed(common::WAIT).await;
    if v5 {
        assert_eq!(raw::disconnect_code(&before), Some(0x95), "Packet too large: {before:?}");
    } else {
        assert!(before.is_empty(), "{before:?}");
    }
    watcher.expect_no_publish().await;
}

#[tokio::test]
async fn v5_packet_above_max_packet_size_disconnects_with_0x95() {
    oversized(true).await;
}

#[tokio::test]
async fn v3_packet_above_max_packet_size_closes_the_connection() {
    oversized(false).await;
}

#[tokio::test]
async fn v5_server_keep_alive_caps_the_requested_keep_alive() {
    let broker = common::broker_with(|c| c.limits.max_keepalive = 10);
    let port = broker.addr().port();
    for (asked, told) in [(100, Some(10)), (0, Some(10)), (10, None), (5, None)] {
        let (_c, ack) = Raw::connect(port, &raw::v5(&format!("ska-{asked}")).keep_alive(asked)).await;
        let (code, props) = connack(&ack);
        assert_eq!(code, 0);
        assert_eq!(props.get_int(prop::SERVER_KEEP_ALIVE), told, "asked {asked}");
    }
}

#[tokio::test]
async fn v3_keep_alive_outside_the_maximum_is_refused_0x02() {
    let broker = common::broker_with(|c| c.limits.max_keepalive = 10);
    let port = broker.addr().port();
    for asked in [11, 600, 0] {
        let (_c, ack) = Raw::connect(port, &raw::v311(&format!("ka3-{asked}")).keep_alive(asked)).await;
        assert_eq!(connack(&ack).0, 0x02, "keep-alive {asked} with limits.max_keepalive 10");
    }
    for asked in [1, 10] {
        let (_c, ack) = Raw::connect(port, &raw::v311(&format!("ka3ok-{asked}")).keep_alive(asked)).await;
        assert_eq!(connack(&ack).0, 0x00, "keep-alive {asked} is within the maximum");
    }
}

#[tokio::test]
async fn v3_keep_alive_zero_is_accepted_without_a_maximum() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut c, _) = Raw::connect_ok(port, &raw::v311("ka0").keep_alive(0)).await;
    c.expect_nothing(Duration::from_millis(1500)).await;
}

#[tokio::test]
async fn v3_keep_alive_timeout_after_one_and_a_half_periods() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut c, _) = Raw::connect_ok(port, &raw::v311("kat3").keep_alive(2)).await;
    let start = Instant::now();
    // Still open after one full period without traffic...
    c.expect_nothing(Duration::from_millis(2200)).await;
    // ...closed after one and a half.
    c.expect_closed(Duration::from_millis(2800)).await;
    assert!(start.elapsed() >= Duration::from_millis(2900), "closed after {:?}", start.elapsed());
}

#[tokio::test]
async fn v3_pings_keep_the_connection_alive() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut c, _) = Raw::connect_ok(port, &raw::v311("ping3").keep_alive(1)).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        c.ping().await;
        match c.recv(common::WAIT).await {
            raw::Event::Packet(Packet::PingResp) => {}
            other => panic!("expected PINGRESP, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn v5_server_keep_alive_is_enforced() {
    let broker = common::broker_with(|c| c.limits.max_keepalive = 1);
    let port = broker.addr().port();
    let mut watch = v3::options(port, "kat5-watch");
    watch.set_keep_alive(Duration::from_secs(1));
    let mut w = v3::connect(watch).await.0;
    w.subscribe("kat5/will", v3::QoS::AtLeastOnce).await;
    // The client asks for no keep-alive; the broker imposes 1 s.
    let connect = raw::v5("kat5").keep_alive(0).will(raw::Will::new("kat5/will", "timeout"));
    let (mut c, ack) = Raw::connect(port, &connect).await;
    assert_eq!(connack(&ack).1.get_int(prop::SERVER_KEEP_ALIVE), Some(1));
    c.expect_closed(Duration::from_secs(4)).await;
    assert_eq!(w.expect_publish().await.payload, &b"timeout"[..], "will published on keep-alive timeout");
}

fn non_loopback(allow: Option<bool>) -> RunningBroker {
    common::broker_with(|c| {
        c.listeners =
            vec![Listener { name: Some("any".into()), ..Listener::mqtt("0.0.0.0:0".parse().unwrap()) }];
        c.auth.allow_anonymous = allow;
    })
}

#[tokio::test]
async fn non_loopback_listener_refuses_anonymous_clients_by_default() {
    let broker = non_loopback(None);
    let port = broker.addr().port();
    let (_c, ack) = Raw::connect(port, &raw::v5("anon5")).await;
    let (code, props) = connack(&ack);
    assert_eq!(code, 0x87, "Not authorized");
    assert!(props.get_str(prop::REASON_STRING).is_some());
    let (_c, ack) = Raw::connect(port, &raw::v311("anon3")).await;
    assert_eq!(connack(&ack).0, 0x05, "Not authorized");
}

#[tokio::test]
async fn non_loopback_listener_accepts_anonymous_when_allowed() {
    let broker = non_loopback(Some(true));
    let port = broker.addr().port();
    Raw::connect_ok(port, &raw::v5("anon5-ok")).await;
    Raw::connect_ok(port, &raw::v311("anon3-ok")).await;
}

#[tokio::test]
async fn loopback_listener_accepts_anonymous_by_default_and_false_refuses() {
    let broker = common::broker_with(|c| c.auth.allow_anonymous = None);
    Raw::connect_ok(broker.addr().port(), &raw::v311("lo-anon")).await;
    let broker = common::broker_with(|c| c.auth.allow_anonymous = Some(false));
    let (_c, ack) = Raw::connect(broker.addr().port(), &raw::v311("lo-denied")).await;
    assert_eq!(connack(&ack).0, 0x05);
}
