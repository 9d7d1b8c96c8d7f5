//! Flow control under load: a subscriber that stops reading must not slow the others, and its
//! queue stays bounded (overflow is dropped and counted, not buffered without limit).

use std::time::Duration;

use fleetmq_broker::core::metrics::DropReason;

use crate::common::{self, v3};
use crate::raw::{self, Raw};

#[tokio::test]
async fn a_stalled_subscriber_does_not_slow_others_and_its_queue_is_bounded() {
    let broker = common::broker_with(|c| c.limits.max_queued_messages = 100);
    let port = broker.addr().port();

    // Subscribes, then never reads its socket again.
    let (mut stalled, _) = Raw::connect_ok(port, &raw::v311("stalled")).await;
    stalled.subscribe_ok(1, &[("flood/#", 0)]).await;

    let (mut fast, _) = v3::connect(v3::options(port, "fast")).await;
    fast.subscribe("flood/#", v3::QoS::AtMostOnce).await;

    let mut options = v3::options(port, "flooder");
    options.set_inflight(50);
    let (publisher, _) = v3::connect(options).await;
    const N: usize = 4000;
    // The publisher keeps at most WINDOW messages ahead of the fast subscriber: the broker
    // never slows publishers down, so an unpaced one would overflow every queue of 100, the
    // fast subscriber's included.
    const WINDOW: usize = 50;
    let payload = vec![0x5a; 4096];

    // 16 MB pass through the broker; the fast subscriber gets every message, in order, while
    // the stalled one's socket buffer and then its bounded queue fill up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for start in (0..N).step_by(WINDOW) {
        for i in start..start + WINDOW {
            publisher
                .client
                .publish(format!("flood/{i}"), v3::QoS::AtLeastOnce, false, payload.clone())
                .await
                .unwrap();
        }
        for i in start..start + WINDOW {
            let p = tokio::time::timeout_at(deadline, fast.expect_publish())
                .await
                .expect("fast subscriber keeps up");
            assert_eq!(p.topic, format!("flood/{i}"));
        }
    }
    let dropped = broker.broker.metrics().dropped_count(DropReason::QueueFull);
    assert!(dropped > 0, "the stalled subscriber's queue overflowed and was counted");
    let queued = broker.broker.session("stalled").expect("session").lock().queue_len();
    assert!(queued <= 100, "stalled queue bounded by max_queued_messages, holds {queued}");
    drop(stalled);
}
