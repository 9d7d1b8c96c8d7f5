//! Test harness: start a broker on 127.0.0.1:0 and drive it with rumqttc.

#![allow(dead_code)]

use std::time::Duration;

use fleetmq_broker::server::RunningBroker;
use fleetmq_config::{BrokerConfig, Listener};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a test waits to be sure something does not happen.
pub const QUIET: Duration = Duration::from_millis(300);

/// A broker with test defaults (anonymous, 2 workers, no `$SYS`), tweaked by `f`.
pub fn broker_with(f: impl FnOnce(&mut BrokerConfig)) -> RunningBroker {
    let mut config = BrokerConfig {
        listeners: vec![Listener {
            name: Some("test".into()),
            ..Listener::mqtt("127.0.0.1:0".parse().unwrap())
        }],
        ..BrokerConfig::default()
    };
    // Tests run side by side: no fixed HTTP port (tests of the endpoint turn it on, on port 0).
    config.http.enabled = false;
    config.server.workers = 2;
    // In memory unless a test asks for a store (it then sets a temporary storage.data_dir).
    config.storage.persistence = false;
    config.sys.interval = Duration::ZERO;
    config.auth.allow_anonymous = Some(true);
    f(&mut config);
    RunningBroker::start(config).expect("broker starts")
}

/// A broker with test defaults.
pub fn broker() -> RunningBroker {
    broker_with(|_| {})
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for the broker binary) and was not
/// handed out before in this test process: the kernel may give `bind(0)` the port it just
/// released, and tests run in parallel threads, so two calls could otherwise collide.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}

/// A temporary directory, removed when dropped.
#[derive(Debug)]
pub struct TempDir(std::path::PathBuf);

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A new, empty temporary directory unique to this test run.
pub fn temp_dir(tag: &str) -> TempDir {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "fleetmq-it-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

/// Stops `broker` gracefully from a blocking thread (its `stop` joins the broker thread).
pub async fn stop(broker: RunningBroker) {
    tokio::task::spawn_blocking(move || broker.stop()).await.unwrap().expect("broker stops cleanly");
}

/// MQTT 3.1.1 client (rumqttc).
pub mod v3 {
    use super::*;
    pub use rumqttc::{
        ConnAck, ConnectReturnCode, Event, MqttOptions, Packet, Publish, QoS, SubAck, SubscribeReasonCode,
    };

    /// A connected client and its event stream.
    pub struct Client {
        pub client: rumqttc::AsyncClient,
        pub events: mpsc::UnboundedReceiver<Result<Event, String>>,
        task: JoinHandle<()>,
    }

    impl Drop for Client {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// Options for `id` against `port` (clean session, 30 s keep-alive).
    pub fn options(port: u16, id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    /// Starts the event loop; the first event should be the CONNACK.
    pub fn start(options: MqttOptions) -> Client {
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 100);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(ev) => {
                        if tx.send(Ok(ev)).is_err() {
                            return;
                        }
                    }
                    Err(err) => {
                        let _ = tx.send(Err(err.to_string()));
                        return;
                    }
                }
            }
        });
        Client { client, events, task }
    }

    /// Connects and returns the client after a successful CONNACK.
    pub async fn connect(options: MqttOptions) -> (Client, ConnAck) {
        let mut c = start(options);
        let ack = c.connack().await.expect("CONNACK");
        assert_eq!(ack.code, ConnectReturnCode::Success, "{ack:?}");
        (c, ack)
    }

    impl Client {
        /// Next incoming packet (skips outgoing events), or the connection error.
        pub async fn next_packet(&mut self, within: Duration) -> Option<Result<Packet, String>> {
            let deadline = tokio::time::Instant::now() + within;
            loop {
                match tokio::time::timeout_at(deadline, self.events.recv()).await {
                    Ok(Some(Ok(Event::Incoming(p)))) => return Some(Ok(p)),
                    Ok(Some(Ok(Event::Outgoing(_)))) => continue,
                    Ok(Some(Err(e))) => return Some(Err(e)),
                    Ok(None) | Err(_) => return None,
                }
            }
        }

        /// Waits for the CONNACK (or the refusal as an error).
        pub async fn connack(&mut self) -> Result<ConnAck, String> {
            match self.next_packet(WAIT).await {
                Some(Ok(Packet::ConnAck(ack))) => Ok(ack),
                Some(Ok(other)) => Err(format!("expected CONNACK, got {other:?}")),
                Some(Err(e)) => Err(e),
                None => Err("no CONNACK".into()),
            }
        }

        /// Subscribes and waits for the SUBACK.
        pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> SubAck {
            self.client.subscribe(filter, qos).await.unwrap();
            loop {
                match self.next_packet(WAIT).await {
                    Some(Ok(Packet::SubAck(ack))) => return ack,
                    Some(Ok(_)) => continue,
                    other => panic!("expected SUBACK, got {other:?}"),
                }
            }
        }

        /// Next PUBLISH within `WAIT`.
        pub async fn publish_within(&mut self, within: Duration) -> Option<Publish> {
            loop {
                match self.next_packet(within).await {
                    Some(Ok(Packet::Publish(p))) => return Some(p),
                    Some(Ok(_)) => continue,
                    _ => return None,
                }
            }
        }

        /// Next PUBLISH, failing the test if none arrives.
        pub async fn expect_publish(&mut self) -> Publish {
            self.publish_within(WAIT).await.expect("a PUBLISH")
        }

        /// Asserts no PUBLISH arrives for a while.
        pub async fn expect_no_publish(&mut self) {
            if let Some(p) = self.publish_within(QUIET).await {
                panic!("unexpected PUBLISH {p:?}");
            }
        }

        /// Sends DISCONNECT and waits until it is written.
        pub async fn disconnect(mut self) {
            let _ = self.client.disconnect().await;
            let _ = self.next_packet(Duration::from_millis(500)).await;
        }

        /// Waits for the connection to fail (closed by the broker); returns the error text.
        /// Packets arriving first are skipped.
        pub async fn expect_error(&mut self) -> String {
            loop {
                match self.next_packet(WAIT).await {
                    Some(Err(e)) => return e,
                    Some(Ok(_)) => continue,
                    None => panic!("connection still open after {WAIT:?}"),
                }
            }
        }

        /// Next PUBACK (QoS 1) or PUBREC (QoS 2), skipping other packets.
        pub async fn expect_ack(&mut self) -> Packet {
            loop {
                match self.next_packet(WAIT).await {
                    Some(Ok(p @ (Packet::PubAck(_) | Packet::PubRec(_)))) => return p,
                    Some(Ok(_)) => continue,
                    other => panic!("expected an acknowledgement, got {other:?}"),
                }
            }
        }
    }
}

/// MQTT 5.0 client (rumqttc::v5).
pub mod v5 {
    use super::*;
    pub use rumqttc::v5::mqttbytes::QoS;
    pub use rumqttc::v5::mqttbytes::v5::{
        ConnAck, ConnectReturnCode, Filter, Packet, PubAckReason, PubRecReason, Publish, PublishProperties,
        RetainForwardRule, SubAck, SubscribeProperties, SubscribeReasonCode,
    };
    pub use rumqttc::v5::{Event, MqttOptions};

    /// A connected client and its event stream.
    pub struct Client {
        pub client: rumqttc::v5::AsyncClient,
        pub events: mpsc::UnboundedReceiver<Result<Event, String>>,
        task: JoinHandle<()>,
    }

    impl Drop for Client {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// Options for `id` against `port`.
    pub fn options(port: u16, id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    /// Starts the event loop.
    pub fn start(options: MqttOptions) -> Client {
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 100);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(ev) => {
                        if tx.send(Ok(ev)).is_err() {
                            return;
                        }
                    }
                    Err(err) => {
                        let _ = tx.send(Err(format!("{err:?}")));
                        return;
                    }
                }
            }
        });
        Client { client, events, task }
    }

    /// Connects and returns the client after a successful CONNACK.
    pub async fn connect(options: MqttOptions) -> (Client, ConnAck) {
        let mut c = start(options);
        let ack = c.connack().await.expect("CONNACK");
        assert_eq!(ack.code, ConnectReturnCode::Success, "{ack:?}");
        (c, ack)
    }

    impl Client {
        /// Next incoming packet, or the connection error.
        pub async fn next_packet(&mut self, within: Duration) -> Option<Result<Packet, String>> {
            let deadline = tokio::time::Instant::now() + within;
            loop {
                match tokio::time::timeout_at(deadline, self.events.recv()).await {
                    Ok(Some(Ok(Event::Incoming(p)))) => return Some(Ok(p)),
                    Ok(Some(Ok(Event::Outgoing(_)))) => continue,
                    Ok(Some(Err(e))) => return Some(Err(e)),
                    Ok(None) | Err(_) => return None,
                }
            }
        }

        /// Waits for the CONNACK (a refusal comes back as the error text).
        pub async fn connack(&mut self) -> Result<ConnAck, String> {
            match self.next_packet(WAIT).await {
                Some(Ok(Packet::ConnAck(ack))) => Ok(ack),
                Some(Ok(other)) => Err(format!("expected CONNACK, got {other:?}")),
                Some(Err(e)) => Err(e),
                None => Err("no CONNACK".into()),
            }
        }

        /// Subscribes and waits for the SUBACK.
        pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> SubAck {
            self.client.subscribe(filter, qos).await.unwrap();
            self.suback().await
        }

        /// Waits for the next SUBACK.
        pub async fn suback(&mut self) -> SubAck {
            loop {
                match self.next_packet(WAIT).await {
                    Some(Ok(Packet::SubAck(ack))) => return ack,
                    Some(Ok(_)) => continue,
                    other => panic!("expected SUBACK, got {other:?}"),
                }
            }
        }

        /// Next PUBLISH within `within`.
        pub async fn publish_within(&mut self, within: Duration) -> Option<Publish> {
            loop {
                match self.next_packet(within).await {
                    Some(Ok(Packet::Publish(p))) => return Some(p),
                    Some(Ok(_)) => continue,
                    _ => return None,
                }
            }
        }

        /// Next PUBLISH, failing the test if none arrives.
        pub async fn expect_publish(&mut self) -> Publish {
            self.publish_within(WAIT).await.expect("a PUBLISH")
        }

        /// Asserts no PUBLISH arrives for a while.
        pub async fn expect_no_publish(&mut self) {
            if let Some(p) = self.publish_within(QUIET).await {
                panic!("unexpected PUBLISH {p:?}");
            }
        }

        /// Sends DISCONNECT and waits until it is written.
        pub async fn disconnect(mut self) {
            let _ = self.client.disconnect().await;
            let _ = self.next_packet(Duration::from_millis(500)).await;
        }

        /// Subscribes with explicit options and an optional Subscription Identifier.
        pub async fn subscribe_filters(&mut self, filters: Vec<Filter>, id: Option<usize>) -> SubAck {
            match id {
                Some(id) => self
                    .client
                    .subscribe_many_with_properties(
                        filters,
                        SubscribeProperties { id: Some(id), user_properties: Vec::new() },
                    )
                    .await
                    .unwrap(),
                None => self.client.subscribe_many(filters).await.unwrap(),
            }
            self.suback().await
        }

        /// Waits for the connection to fail; returns the error text (a server DISCONNECT
        /// reads `ServerDisconnect { reason_code: ..., .. }`). Packets arriving first are
        /// skipped.
        pub async fn expect_error(&mut self) -> String {
            loop {
                match self.next_packet(WAIT).await {
                    Some(Err(e)) => return e,
                    Some(Ok(_)) => continue,
                    None => panic!("connection still open after {WAIT:?}"),
                }
            }
        }

        /// Next PUBACK (QoS 1) or PUBREC (QoS 2), skipping other packets.
        pub async fn expect_ack(&mut self) -> Packet {
            loop {
                match self.next_packet(WAIT).await {
                    Some(Ok(p @ (Packet::PubAck(_) | Packet::PubRec(_)))) => return p,
                    Some(Ok(_)) => continue,
                    other => panic!("expected an acknowledgement, got {other:?}"),
                }
            }
        }
    }
}
