//! MQTT 3.1 / 3.1.1 protocol details: one listener for every version, UNSUBSCRIBE, and a
//! second CONNECT on a connection.

use crate::common::{self, QUIET, v3, v5};
use std::time::Duration;

use crate::raw::{self, Packet, Publish, Raw, Version};

#[tokio::test]
async fn mqtt31_311_and_5_clients_share_one_listener() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut c31, _) = Raw::connect_ok(port, &raw::Connect::new(Version::V31, "ver-31")).await;
    c31.subscribe_ok(1, &[("ver/t", 1)]).await;
    let (mut c311, _) = v3::connect(v3::options(port, "ver-311")).await;
    c311.subscribe("ver/t", v3::QoS::AtLeastOnce).await;
    let (mut c5, _) = v5::connect(v5::options(port, "ver-5")).await;
    c5.subscribe("ver/t", v5::QoS::AtLeastOnce).await;
    c31.publish(&raw::Publish::new("ver/t", 1, 9, b"from 3.1")).await;
    assert!(matches!(c31.expect().await, Packet::Ack { kind: raw::PUBACK, id: 9, .. }));
    assert_eq!(c31.expect_publish().await.payload, b"from 3.1");
    assert_eq!(c311.expect_publish().await.payload, &b"from 3.1"[..]);
    assert_eq!(c5.expect_publish().await.payload, &b"from 3.1"[..]);
}

#[tokio::test]
async fn v3_unsubscribe_stops_delivery() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut c, _) = Raw::connect_ok(port, &raw::v311("uns3")).await;
    c.subscribe_ok(1, &[("uns3/a", 1)]).await;
    c.unsubscribe(2, &["uns3/a", "uns3/never"]).await;
    assert!(matches!(c.expect().await, Packet::UnsubAck { id: 2, .. }));
    let (publisher, _) = v3::connect(v3::options(port, "uns3-pub")).await;
    publisher.client.publish("uns3/a", v3::QoS::AtLeastOnce, false, "x").await.unwrap();
    c.expect_nothing(QUIET).await;
}

#[tokio::test]
async fn v3_second_connect_closes_the_connection() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut c, _) = Raw::connect_ok(port, &raw::v311("twice3")).await;
    c.send(&raw::v311("twice3").encode()).await;
    let before = c.expect_closed(common::WAIT).await;
    assert!(before.is_empty(), "closed without a reply: {before:?}");
}

/// A PUBLISH whose bytes arrive in several TCP segments (normal under load) must be
/// reassembled, for every protocol version and QoS: ntex-mqtt's codec hands the payload over
/// in pieces when the packet is incomplete in the read buffer.
#[tokio::test]
async fn publish_split_across_segments_is_reassembled() {
    let broker = common::broker();
    let port = broker.addr().port();
    for (v5, name) in [(false, "split-v3"), (true, "split-v5")] {
        let connect = if v5 { raw::v5(&format!("{name}-sub")) } else { raw::v311(&format!("{name}-sub")) };
        let (mut sub, _) = Raw::connect_ok(port, &connect).await;
        sub.subscribe_ok(1, &[(&format!("{name}/t"), 2)]).await;
        let connect = if v5 { raw::v5(&format!("{name}-pub")) } else { raw::v311(&format!("{name}-pub")) };
        let (mut publisher, _) = Raw::connect_ok(port, &connect).await;
        for (qos, id) in [(0u8, 0u16), (1, 1), (2, 2)] {
            let payload: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
            let bytes = Publish::new(&format!("{name}/t"), qos, id, &payload).encode(v5);
            // Header and a little payload, then the rest in two more writes.
            for part in [&bytes[..20], &bytes[20..1500], &bytes[1500..]] {
                publisher.send(part).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let got = sub.expect_publish().await;
            assert_eq!(got.payload, payload, "{name} QoS {qos}: payload reassembled intact");
            if qos > 0 {
                match publisher.expect().await {
                    Packet::Ack { id: acked, .. } => assert_eq!(acked, id),
                    other => panic!("{name}: expected the acknowledgement of {id}, got {other:?}"),
                }
            }
        }
    }
}

#[tokio::test]
async fn unsupported_protocol_level_gets_connack_0x01() {
    let broker = common::broker();
    let port = broker.addr().port();
    // A CONNECT with protocol level 6 (no such MQTT version): MQTT 3.1.1 §3.1.2.2 asks for
    // CONNACK 0x01 (unacceptable protocol level), then the close.
    let mut connect = raw::v311("level6").encode();
    assert_eq!(&connect[2..9], b"\x00\x04MQTT\x04", "fixed header of a short CONNECT, then name and level");
    connect[8] = 6;
    let mut c = Raw::open(port, false).await;
    c.send(&connect).await;
    let packets = c.expect_closed(Duration::from_secs(5)).await;
    assert!(
        matches!(packets.as_slice(), [Packet::ConnAck { code: 0x01, session_present: false, .. }]),
        "{packets:?}"
    );
    // The listener still serves the next client.
    let (_ok, _) = Raw::connect_ok(port, &raw::v311("after-level6")).await;
}
