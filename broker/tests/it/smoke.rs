//! End-to-end smoke tests: one publish/subscribe round trip per protocol and QoS.

use crate::common::{self, v3, v5};

#[tokio::test]
async fn v311_pub_sub_all_qos() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut sub, ack) = v3::connect(v3::options(port, "sub")).await;
    assert!(!ack.session_present);
    sub.subscribe("smoke/#", v3::QoS::ExactlyOnce).await;
    let (publisher, _) = v3::connect(v3::options(port, "pub")).await;
    for (i, qos) in [v3::QoS::AtMostOnce, v3::QoS::AtLeastOnce, v3::QoS::ExactlyOnce].into_iter().enumerate()
    {
        publisher.client.publish(format!("smoke/{i}"), qos, false, format!("m{i}")).await.unwrap();
        let p = sub.expect_publish().await;
        assert_eq!(p.topic, format!("smoke/{i}"));
        assert_eq!(&p.payload[..], format!("m{i}").as_bytes());
        assert_eq!(p.qos, qos);
    }
}

#[tokio::test]
async fn v5_pub_sub_all_qos() {
    let broker = common::broker();
    let port = broker.addr().port();
    let (mut sub, _) = v5::connect(v5::options(port, "sub5")).await;
    sub.subscribe("smoke5/#", v5::QoS::ExactlyOnce).await;
    let (publisher, _) = v5::connect(v5::options(port, "pub5")).await;
    for (i, qos) in [v5::QoS::AtMostOnce, v5::QoS::AtLeastOnce, v5::QoS::ExactlyOnce].into_iter().enumerate()
    {
        publisher.client.publish(format!("smoke5/{i}"), qos, false, format!("m{i}")).await.unwrap();
        let p = sub.expect_publish().await;
        assert_eq!(&p.topic[..], format!("smoke5/{i}").as_bytes());
        assert_eq!(p.qos, qos);
    }
}
