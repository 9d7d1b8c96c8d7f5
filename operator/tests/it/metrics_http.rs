//! The operator's /metrics and /healthz endpoint, served on a loopback port.

use std::io::{Read, Write};
use std::net::TcpStream;

use fleetmq_operator::metrics::{self, Metrics};

fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_metrics_and_health() {
    let m = Metrics::new();
    let (addr, server) = metrics::serve(m.clone(), "127.0.0.1:0".parse().expect("addr")).await.expect("bind");
    let task = tokio::spawn(server);

    m.reconcile("mqttbroker").finish(None);
    m.reconcile("mqttbroker").finish(Some("kube"));
    m.leader.set(1);

    let (status, body) = tokio::task::spawn_blocking(move || get(addr, "/metrics")).await.expect("join");
    assert_eq!(status, 200);
    assert!(body.contains("fleetmq_operator_reconciliations_total{controller=\"mqttbroker\"} 2"), "{body}");
    assert!(
        body.contains("fleetmq_operator_reconcile_errors_total{controller=\"mqttbroker\",error=\"kube\"} 1")
    );
    assert!(body.contains("fleetmq_operator_reconcile_duration_seconds_count{controller=\"mqttbroker\"} 2"));
    assert!(body.contains("fleetmq_operator_leader 1"));

    let (status, body) = tokio::task::spawn_blocking(move || get(addr, "/healthz")).await.expect("join");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    m.set_healthy(false);
    let (status, _) = tokio::task::spawn_blocking(move || get(addr, "/healthz")).await.expect("join");
    assert_eq!(status, 503);
    let (status, _) = tokio::task::spawn_blocking(move || get(addr, "/nope")).await.expect("join");
    assert_eq!(status, 404);
    task.abort();
}
