//! The HTTP endpoint: Prometheus `/metrics`, `/healthz`, `/readyz` and the admin API, driven
//! over real HTTP/1.1 (a minimal client on a tokio socket) next to real MQTT clients.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use fleetmq_broker::server::RunningBroker;
use fleetmq_config::{BrokerConfig, Listener};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{self, WAIT, v3, v5};

const TOKEN: &str = "s3cret-token";

/// A broker with the HTTP endpoint on an ephemeral port, tweaked by `f`.
fn broker_http(f: impl FnOnce(&mut BrokerConfig)) -> (RunningBroker, SocketAddr) {
    let broker = common::broker_with(|c| {
        c.http.enabled = true;
        c.http.bind = "127.0.0.1:0".parse().unwrap();
        f(c);
    });
    let http = broker.http_addr().expect("the HTTP endpoint is bound");
    assert_ne!(http.port(), 0, "port 0 is resolved");
    (broker, http)
}

/// A broker with the admin API on (token [`TOKEN`] in a file under `dir`).
fn broker_admin(dir: &Path, f: impl FnOnce(&mut BrokerConfig)) -> (RunningBroker, SocketAddr) {
    let token_file = dir.join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    broker_http(|c| {
        c.http.admin_token_file = Some(token_file);
        f(c);
    })
}

/// One HTTP response.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("UTF-8 body")
    }

    fn json(&self) -> Value {
        assert_eq!(self.header("content-type"), Some("application/json"), "{self:?}");
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }

    /// The `error` message of a JSON error reply with `status`.
    fn error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", self.text());
        self.json()["error"].as_str().expect("an error message").to_string()
    }
}

/// Sends `request` (a complete HTTP/1.1 request) and reads the response until the server
/// closes the connection.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect to the HTTP endpoint");
    stream.write_all(request).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw)).await.expect("response in time").unwrap();
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> Reply {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("end of headers");
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status code");
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header line");
            (n.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n").expect("chunk size");
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap().trim(), 16).unwrap();
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    }
    Reply { status, headers, body }
}

/// `method path` with an optional bearer token.
async fn call(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> Reply {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Length: 0\r\n\r\n"
    );
    exchange(addr, request.as_bytes()).await
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    call(addr, "GET", path, None).await
}

/// An authorized admin call.
async fn api(addr: SocketAddr, method: &str, path: &str) -> Reply {
    call(addr, method, path, Some(TOKEN)).await
}

/// An authorized admin GET expected to succeed, as JSON.
async fn api_json(addr: SocketAddr, path: &str) -> Value {
    let reply = api(addr, "GET", path).await;
    assert_eq!(reply.status, 200, "GET {path}: {}", reply.text());
    reply.json()
}

/// Parses the Prometheus text exposition format strictly enough to catch a malformed
/// scrape: every sample belongs to a family declared once with `# TYPE` (histograms through
/// `_bucket`, `_sum`, `_count`), names and labels are well formed, values are numbers.
/// Returns the samples by series (`name{labels}` as written).
fn parse_exposition(text: &str) -> BTreeMap<String, f64> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = BTreeMap::new();
    assert!(text.ends_with('\n'), "exposition ends with a newline");
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let (keyword, name, rest) =
                (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            assert!(valid_name(name), "bad metric name in {line:?}");
            match keyword {
                Some("HELP") => assert!(!rest.is_empty(), "empty HELP: {line:?}"),
                Some("TYPE") => {
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&rest),
                        "{line:?}"
                    );
                    assert!(types.insert(name.to_string(), rest.to_string()).is_none(), "TYPE twice: {name}");
                }
                _ => panic!("unexpected comment {line:?}"),
            }
            continue;
        }
        let (series, value) =
            line.rsplit_once(' ').unwrap_or_else(|| panic!("sample without value: {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, Some(labels.strip_suffix('}').expect("labels end with }"))),
            None => (series, None),
        };
        assert!(valid_name(name), "bad sample name in {line:?}");
        for pair in labels.into_iter().flat_map(|l| l.split(',')) {
            let (key, val) = pair.split_once('=').unwrap_or_else(|| panic!("bad label in {line:?}"));
            assert!(valid_name(key) && !key.contains(':'), "bad label name in {line:?}");
            assert!(
                val.len() >= 2 && val.starts_with('"') && val.ends_with('"'),
                "unquoted label in {line:?}"
            );
        }
        let family_declared = types.contains_key(name)
            || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|base| types.get(base).is_some_and(|t| t == "histogram"))
            });
        assert!(family_declared, "sample {name} has no TYPE line");
        if types.get(name).is_some_and(|t| t == "counter") {
            assert!(name.ends_with("_total"), "counter {name} must end in _total");
        }
        assert!(samples.insert(series.to_string(), value).is_none(), "series twice: {series}");
    }
    samples
}

async fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let reply = get(addr, "/metrics").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    parse_exposition(&reply.text())
}

fn sample(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples.get(series).unwrap_or_else(|| panic!("no series {series} in {samples:#?}"))
}

/// Polls `check` until it holds (state changes on other threads: worker, writer).
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_follow_traffic() {
    let (broker, http) = broker_http(|_| {});
    let port = broker.addr().port();
    let before = scrape(http).await;
    assert_eq!(
        sample(&before, &format!("fleetmq_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))),
        1.0
    );
    assert_eq!(sample(&before, "fleetmq_connections"), 0.0);
    assert_eq!(sample(&before, "fleetmq_messages_received_total{qos=\"1\"}"), 0.0);
    for reason in ["queue_full", "expired", "too_large"] {
        assert_eq!(sample(&before, &format!("fleetmq_messages_dropped_total{{reason=\"{reason}\"}}")), 0.0);
    }

    let (mut sub, _) = v3::connect(v3::options(port, "m-sub")).await;
    sub.subscribe("m/#", v3::QoS::AtLeastOnce).await;
    let (mut publisher, _) = v5::connect(v5::options(port, "m-pub")).await;
    for i in 0..3 {
        publisher.client.publish("m/t", v5::QoS::AtLeastOnce, false, format!("payload-{i}")).await.unwrap();
        publisher.expect_ack().await;
        assert_eq!(sub.expect_publish().await.payload, format!("payload-{i}").as_bytes());
    }
    publisher.client.publish("m/kept", v5::QoS::AtMostOnce, true, "r").await.unwrap();
    sub.expect_publish().await;
    broker.broker.metrics().auth_failure();

    let after = scrape(http).await;
    assert_eq!(sample(&after, "fleetmq_connections"), 2.0);
    assert_eq!(sample(&after, "fleetmq_listener_connections{listener=\"test\"}"), 2.0);
    assert_eq!(sample(&after, "fleetmq_connections_accepted_total"), 2.0);
    assert_eq!(sample(&after, "fleetmq_messages_received_total{qos=\"1\"}"), 3.0);
    assert_eq!(sample(&after, "fleetmq_messages_received_total{qos=\"0\"}"), 1.0);
    assert_eq!(sample(&after, "fleetmq_messages_sent_total{qos=\"1\"}"), 3.0);
    // Each QoS 1 PUBLISH carries topic "m/t" and a 9-byte payload: at least 12 bytes, at most
    // the whole packet (2 fixed header + 5 topic + 2 packet id + 9 payload + 1 v5 properties).
    for series in
        ["fleetmq_messages_received_bytes_total{qos=\"1\"}", "fleetmq_messages_sent_bytes_total{qos=\"1\"}"]
    {
        let bytes = sample(&after, series);
        assert!((3.0 * 12.0..=3.0 * 19.0).contains(&bytes), "{series} {bytes}");
    }
    assert_eq!(sample(&after, "fleetmq_messages_received_bytes_total{qos=\"2\"}"), 0.0);
    assert!(sample(&after, "fleetmq_received_bytes_total") > sample(&before, "fleetmq_received_bytes_total"));
    assert!(sample(&after, "fleetmq_sent_bytes_total") >= 3.0 * 18.0);
    assert_eq!(sample(&after, "fleetmq_subscriptions"), 1.0);
    assert_eq!(sample(&after, "fleetmq_retained_messages"), 1.0);
    assert_eq!(sample(&after, "fleetmq_sessions"), 2.0);
    assert_eq!(sample(&after, "fleetmq_auth_failures_total"), 1.0);
    assert_eq!(sample(&after, "fleetmq_store_size_bytes"), 0.0, "no persistence");
    assert_eq!(sample(&after, "fleetmq_session_queue_depth_count"), 2.0);
    assert_eq!(sample(&after, "fleetmq_session_queue_depth_bucket{le=\"+Inf\"}"), 2.0);

    // A subscriber that stops reading: its queue shows in the queue gauges.
    drop(sub);
    eventually("the subscriber's connection is gone", async || {
        sample(&scrape(http).await, "fleetmq_connections") == 1.0
    })
    .await;
    let (persistent, _) = v3::connect({
        let mut o = v3::options(port, "m-offline");
        o.set_clean_session(false);
        o
    })
    .await;
    let mut persistent = persistent;
    persistent.subscribe("q/#", v3::QoS::AtLeastOnce).await;
    persistent.disconnect().await;
    for _ in 0..4 {
        publisher.client.publish("q/x", v5::QoS::AtLeastOnce, false, "queued").await.unwrap();
        publisher.expect_ack().await;
    }
    let queued = scrape(http).await;
    assert_eq!(sample(&queued, "fleetmq_queued_messages"), 4.0);
    assert_eq!(sample(&queued, "fleetmq_queued_messages_max"), 4.0);
    assert_eq!(sample(&queued, "fleetmq_session_queue_depth_bucket{le=\"1\"}"), 1.0, "only the publisher's");
    assert_eq!(sample(&queued, "fleetmq_session_queue_depth_bucket{le=\"10\"}"), 2.0);
    assert_eq!(sample(&queued, "fleetmq_session_queue_depth_sum"), 4.0);
}

#[tokio::test]
async fn health_and_readiness() {
    let (broker, http) = broker_http(|_| {});
    let health = get(http, "/healthz").await;
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    let ready = get(http, "/readyz").await;
    assert_eq!((ready.status, ready.text().as_str()), (200, "ready\n"));
    assert_eq!(get(http, "/nope").await.status, 404);
    let post = call(http, "POST", "/healthz", None).await;
    assert_eq!((post.status, post.header("allow")), (405, Some("GET")));
    let api = get(http, "/api/v1/clients").await;
    assert!(api.error(404).contains("admin_token_file"), "admin API off without a token file");

    // Shutdown begins (what `serve` does after the listeners stop accepting): not ready,
    // still alive.
    broker.broker.begin_shutdown();
    let ready = get(http, "/readyz").await;
    assert_eq!((ready.status, ready.text().as_str()), (503, "shutting down\n"));
    assert_eq!(get(http, "/healthz").await.status, 200);
}

#[tokio::test]
async fn http_disabled_binds_nothing_and_port_conflicts_name_http_bind() {
    let broker = common::broker();
    assert_eq!(broker.http_addr(), None);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = BrokerConfig {
        listeners: vec![Listener::mqtt("127.0.0.1:0".parse().unwrap())],
        ..BrokerConfig::default()
    };
    config.storage.persistence = false;
    config.http.enabled = true;
    config.http.bind = taken.local_addr().unwrap();
    let err = RunningBroker::start(config).err().expect("the HTTP port is taken");
    let message = format!("{err:#}");
    assert!(
        message.contains("http.bind") && message.contains(&taken.local_addr().unwrap().to_string()),
        "{message}"
    );
}

#[tokio::test]
async fn admin_api_requires_the_bearer_token_and_follows_the_token_file() {
    let dir = common::temp_dir("http-auth");
    let (_broker, http) = broker_admin(&dir, |_| {});
    let none = call(http, "GET", "/api/v1/stats", None).await;
    assert!(none.error(401).contains("token"));
    assert_eq!(none.header("www-authenticate"), Some("Bearer realm=\"fleetmq\""));
    call(http, "GET", "/api/v1/stats", Some("wrong")).await.error(401);
    call(http, "GET", "/api/v1/stats", Some(&TOKEN[..TOKEN.len() - 1])).await.error(401);
    // Unknown resources are not revealed without a token either.
    call(http, "GET", "/api/v1/nothing-here", None).await.error(401);
    let basic = format!(
        "GET /api/v1/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Basic {TOKEN}\r\n\r\n"
    );
    exchange(http, basic.as_bytes()).await.error(401);
    assert_eq!(api(http, "GET", "/api/v1/stats").await.status, 200);
    api(http, "GET", "/api/v1/nothing-here").await.error(404);

    // Rotated the way Kubernetes updates a Secret: a new file moved into place.
    let file = dir.join("admin-token");
    std::fs::write(dir.join("next"), "rotated-token").unwrap();
    std::fs::rename(dir.join("next"), &file).unwrap();
    api(http, "GET", "/api/v1/stats").await.error(401);
    assert_eq!(call(http, "GET", "/api/v1/stats", Some("rotated-token")).await.status, 200);

    // An empty or missing file disables the API instead of accepting anything.
    std::fs::write(&file, "\n").unwrap();
    assert!(call(http, "GET", "/api/v1/stats", Some("")).await.error(503).contains("admin_token_file"));
    call(http, "GET", "/api/v1/stats", Some("rotated-token")).await.error(503);
    std::fs::remove_file(&file).unwrap();
    call(http, "GET", "/api/v1/stats", Some("rotated-token")).await.error(503);
    std::fs::write(&file, TOKEN).unwrap();
    assert_eq!(api(http, "GET", "/api/v1/stats").await.status, 200, "back once the file is");
}

#[tokio::test]
async fn list_get_and_disconnect_clients() {
    let dir = common::temp_dir("http-clients");
    let (_broker, http) = broker_admin(&dir, |_| {});
    let port = _broker.addr().port();
    let (mut c5, _) = v5::connect({
        let mut o = v5::options(port, "adm/c5");
        o.set_keep_alive(Duration::from_secs(25));
        o.set_session_expiry_interval(Some(300));
        o
    })
    .await;
    c5.subscribe("a/+", v5::QoS::AtLeastOnce).await;
    let (mut c3, _) = v3::connect({
        let mut o = v3::options(port, "adm-c3");
        o.set_clean_session(false);
        o
    })
    .await;

    let list = api_json(http, "/api/v1/clients").await;
    assert_eq!(list["total"], 2);
    let items = list["items"].as_array().unwrap();
    let ids: Vec<&str> = items.iter().map(|c| c["client_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["adm-c3", "adm/c5"], "sorted by client id");
    let c3_json = &items[0];
    assert_eq!(c3_json["connected"], true);
    assert_eq!(c3_json["protocol"], "3.1.1");
    assert_eq!(c3_json["keep_alive"], 30);
    assert_eq!(c3_json["listener"], "test");
    assert_eq!(c3_json["session_expiry_interval"], Value::Null, "v3 persistent: never expires by default");
    assert!(c3_json["address"].as_str().unwrap().starts_with("127.0.0.1:"), "{c3_json}");
    assert!(c3_json["connected_at"].as_u64().unwrap() > 1_600_000_000);
    let c5_json = &items[1];
    assert_eq!(
        (&c5_json["protocol"], &c5_json["keep_alive"], &c5_json["session_expiry_interval"]),
        (&Value::from("5.0"), &Value::from(25), &Value::from(300))
    );
    assert_eq!(
        (&c5_json["subscription_count"], &c5_json["queued"], &c5_json["inflight"]),
        (&1.into(), &0.into(), &0.into())
    );

    // Pagination.
    let page = api_json(http, "/api/v1/clients?limit=1&offset=1").await;
    assert_eq!((&page["total"], &page["limit"], &page["offset"]), (&2.into(), &1.into(), &1.into()));
    assert_eq!(page["items"][0]["client_id"], "adm/c5");
    assert_eq!(api_json(http, "/api/v1/clients?offset=5").await["items"].as_array().unwrap().len(), 0);
    assert!(api(http, "GET", "/api/v1/clients?limit=x").await.error(400).contains("limit"));
    assert!(api(http, "GET", "/api/v1/clients?limt=1").await.error(400).contains("limt"));

    // One client; its id has a '/', percent-encoded or not.
    let one = api_json(http, "/api/v1/clients/adm%2Fc5").await;
    assert_eq!(one["client_id"], "adm/c5");
    assert_eq!(one["subscriptions"][0]["filter"], "a/+");
    assert_eq!(one["subscriptions"][0]["qos"], 1);
    assert_eq!(api_json(http, "/api/v1/clients/adm/c5").await["client_id"], "adm/c5");
    api(http, "GET", "/api/v1/clients/nobody").await.error(404);
    let put = api(http, "PUT", "/api/v1/clients/adm-c3").await;
    assert_eq!(put.header("allow"), Some("GET, DELETE"));
    put.error(405);

    // v5: DISCONNECT with reason 0x98 (Administrative action).
    let done = api(http, "DELETE", "/api/v1/clients/adm%2Fc5").await;
    assert_eq!(done.status, 200, "{}", done.text());
    let done = done.json();
    assert_eq!(
        (&done["was_connected"], &done["connection_closed"], &done["session_ended"]),
        (&true.into(), &true.into(), &false.into())
    );
    let err = c5.expect_error().await;
    assert!(err.contains("AdministrativeAction"), "{err}");

    // v3: the connection is closed; the persistent session stays until asked to end.
    let done = api(http, "DELETE", "/api/v1/clients/adm-c3").await.json();
    assert_eq!(done["connection_closed"], true);
    c3.expect_error().await;
    let offline = api_json(http, "/api/v1/clients/adm-c3").await;
    assert_eq!((&offline["connected"], &offline["address"]), (&false.into(), &Value::Null));
    assert!(offline["disconnected_at"].as_u64().is_some());
    assert!(api(http, "DELETE", "/api/v1/clients/adm-c3").await.error(409).contains("session=true"));
    assert!(api(http, "DELETE", "/api/v1/clients/adm-c3?sesion=true").await.error(400).contains("sesion"));
    let ended = api(http, "DELETE", "/api/v1/clients/adm-c3?session=true").await.json();
    assert_eq!((&ended["was_connected"], &ended["session_ended"]), (&false.into(), &true.into()));
    api(http, "GET", "/api/v1/clients/adm-c3").await.error(404);
    // The session really ended: a reconnect finds none.
    let (_again, ack) = v3::connect({
        let mut o = v3::options(port, "adm-c3");
        o.set_clean_session(false);
        o
    })
    .await;
    assert!(!ack.session_present);
}

#[tokio::test]
async fn disconnect_with_session_true_ends_a_connected_v5_session() {
    let dir = common::temp_dir("http-end");
    let (broker, http) = broker_admin(&dir, |_| {});
    let port = broker.addr().port();
    let opts = || {
        let mut o = v5::options(port, "end-me");
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(600));
        o
    };
    let (mut c, _) = v5::connect(opts()).await;
    c.subscribe("e/#", v5::QoS::AtLeastOnce).await;
    let done = api(http, "DELETE", "/api/v1/clients/end-me?session=true").await.json();
    assert_eq!((&done["was_connected"], &done["session_ended"]), (&true.into(), &true.into()));
    assert!(c.expect_error().await.contains("AdministrativeAction"));
    assert_eq!(broker.broker.subscription_count(), 0);
    let (_c, ack) = v5::connect(opts()).await;
    assert!(!ack.session_present, "nothing to resume");
}

#[tokio::test]
async fn admin_disconnect_publishes_the_will_like_any_server_side_close() {
    let dir = common::temp_dir("http-will");
    let (broker, http) = broker_admin(&dir, |_| {});
    let port = broker.addr().port();
    let (mut watcher, _) = v3::connect(v3::options(port, "will-watch")).await;
    watcher.subscribe("wills/#", v3::QoS::AtLeastOnce).await;
    let mut o = v3::options(port, "will-owner");
    o.set_last_will(rumqttc::LastWill::new("wills/owner", "gone", v3::QoS::AtLeastOnce, false));
    let (mut owner, _) = v3::connect(o).await;
    assert_eq!(api(http, "DELETE", "/api/v1/clients/will-owner").await.status, 200);
    owner.expect_error().await;
    let will = watcher.expect_publish().await;
    assert_eq!((will.topic.as_str(), &will.payload[..]), ("wills/owner", &b"gone"[..]));
}

#[tokio::test]
async fn subscriptions_listing() {
    let dir = common::temp_dir("http-subs");
    let (broker, http) = broker_admin(&dir, |_| {});
    let port = broker.addr().port();
    let (mut a, _) = v5::connect(v5::options(port, "sub-a")).await;
    a.subscribe_filters(
        vec![
            v5::Filter::new("x/#", v5::QoS::ExactlyOnce),
            v5::Filter::new("$share/g/y/+", v5::QoS::AtMostOnce),
        ],
        Some(7),
    )
    .await;
    let (mut b, _) = v3::connect(v3::options(port, "sub-b")).await;
    b.subscribe("z", v3::QoS::AtLeastOnce).await;

    let all = api_json(http, "/api/v1/subscriptions").await;
    assert_eq!(all["total"], 3);
    let rows: Vec<(String, String, u64)> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["client_id"].as_str().unwrap().into(),
                s["filter"].as_str().unwrap().into(),
                s["qos"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("sub-a".to_string(), "$share/g/y/+".to_string(), 0),
            ("sub-a".to_string(), "x/#".to_string(), 2),
            ("sub-b".to_string(), "z".to_string(), 1)
        ]
    );
    assert_eq!(all["items"][0]["subscription_id"], 7);
    assert_eq!(all["items"][2]["subscription_id"], Value::Null);
    let only_b = api_json(http, "/api/v1/subscriptions?client=sub-b").await;
    assert_eq!((&only_b["total"], &only_b["items"][0]["filter"]), (&1.into(), &"z".into()));
    let paged = api_json(http, "/api/v1/subscriptions?limit=1&offset=1").await;
    assert_eq!(paged["items"][0]["filter"], "x/#");
    api(http, "GET", "/api/v1/subscriptions?client=ghost").await.error(404);
}

async fn publish_retained(port: u16) {
    let (mut p, _) = v5::connect(v5::options(port, "ret-pub")).await;
    p.client.publish("r/a", v5::QoS::AtLeastOnce, true, "hello").await.unwrap();
    p.expect_ack().await;
    p.client.publish("r/b", v5::QoS::AtMostOnce, true, vec![0xff, 0x00, 0x01]).await.unwrap();
    p.client
        .publish_with_properties(
            "s/c",
            v5::QoS::ExactlyOnce,
            true,
            "{\"v\":1}",
            v5::PublishProperties {
                payload_format_indicator: Some(1),
                content_type: Some("application/json".into()),
                correlation_data: Some(b"id-1".to_vec().into()),
                user_properties: vec![("k".into(), "v".into())],
                message_expiry_interval: Some(3600),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    p.expect_ack().await;
    p.disconnect().await;
}

#[tokio::test]
async fn retained_list_get_and_delete() {
    let dir = common::temp_dir("http-ret");
    let (broker, http) = broker_admin(&dir, |_| {});
    let port = broker.addr().port();
    publish_retained(port).await;
    eventually("three retained messages", async || broker.broker.retained_count() == 3).await;

    let all = api_json(http, "/api/v1/retained").await;
    let topics: Vec<&str> =
        all["items"].as_array().unwrap().iter().map(|m| m["topic"].as_str().unwrap()).collect();
    assert_eq!(topics, ["r/a", "r/b", "s/c"]);
    assert_eq!(all["items"][1]["payload_size"], 3);
    let r = api_json(http, "/api/v1/retained?prefix=r%2F").await;
    assert_eq!(r["total"], 2);
    assert_eq!(api_json(http, "/api/v1/retained?prefix=r/a").await["total"], 1);
    assert_eq!(api_json(http, "/api/v1/retained?filter=%2B/c").await["items"][0]["topic"], "s/c");
    assert_eq!(api_json(http, "/api/v1/retained?limit=1&offset=2").await["items"][0]["topic"], "s/c");
    api(http, "GET", "/api/v1/retained?filter=a/%23/b").await.error(400);

    let a = api_json(http, "/api/v1/retained/r%2Fa").await;
    assert_eq!(
        (&a["payload"], &a["payload_encoding"], &a["qos"]),
        (&"hello".into(), &"utf8".into(), &1.into())
    );
    assert_eq!(a["properties"], Value::Null);
    let b = api_json(http, "/api/v1/retained/r/b").await;
    assert_eq!((&b["payload"], &b["payload_encoding"]), (&"/wAB".into(), &"base64".into()));
    assert!(api(http, "GET", "/api/v1/retained/r/b?encoding=utf8").await.error(422).contains("base64"));
    assert_eq!(api_json(http, "/api/v1/retained/r/a?encoding=base64").await["payload"], "aGVsbG8=");
    let c = api_json(http, "/api/v1/retained/s%2Fc").await;
    assert_eq!(c["payload"], "{\"v\":1}");
    assert_eq!(c["properties"]["content_type"], "application/json");
    assert_eq!(c["properties"]["payload_format_indicator"], true);
    assert_eq!(c["properties"]["correlation_data"], "aWQtMQ==");
    assert_eq!(c["properties"]["user_properties"], serde_json::json!([["k", "v"]]));
    let expires_in = c["expires_in"].as_u64().unwrap();
    assert!((3590..=3600).contains(&expires_in), "{expires_in}");
    api(http, "GET", "/api/v1/retained/r/none").await.error(404);
    api(http, "GET", "/api/v1/retained/r/%2B").await.error(400);

    let (mut watcher, _) = v5::connect(v5::options(port, "ret-watch")).await;
    watcher.subscribe("r/#", v5::QoS::AtLeastOnce).await;
    watcher.expect_publish().await;
    watcher.expect_publish().await;
    let cleared = api(http, "DELETE", "/api/v1/retained/r%2Fa").await;
    assert_eq!(cleared.status, 200, "{}", cleared.text());
    assert_eq!(cleared.json()["cleared"], true);
    watcher.expect_no_publish().await;
    api(http, "DELETE", "/api/v1/retained/r/a").await.error(404);
    assert_eq!(broker.broker.retained_count(), 2);
    let (mut late, _) = v5::connect(v5::options(port, "ret-late")).await;
    late.subscribe("r/#", v5::QoS::AtLeastOnce).await;
    assert_eq!(late.expect_publish().await.topic, "r/b");
    late.expect_no_publish().await;
}

#[tokio::test]
async fn retained_delete_is_durable_across_a_restart() {
    let dir = common::temp_dir("http-ret-store");
    let data = dir.join("data");
    let config = |c: &mut BrokerConfig| {
        c.storage.persistence = true;
        c.storage.data_dir = data.clone();
    };
    let (broker, http) = broker_admin(&dir, config);
    let port = broker.addr().port();
    publish_retained(port).await;
    eventually("three retained messages", async || broker.broker.retained_count() == 3).await;
    let metrics = scrape(http).await;
    assert!(sample(&metrics, "fleetmq_store_size_bytes") > 0.0, "the store is on disk");
    assert_eq!(api(http, "DELETE", "/api/v1/retained/s%2Fc").await.status, 200);
    common::stop(broker).await;

    let (broker, http) = broker_admin(&dir, config);
    let port = broker.addr().port();
    let topics: Vec<String> = api_json(http, "/api/v1/retained").await["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["topic"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(topics, ["r/a", "r/b"], "the cleared message did not come back");
    let (mut s, _) = v5::connect(v5::options(port, "ret-after")).await;
    s.subscribe("s/#", v5::QoS::AtLeastOnce).await;
    s.expect_no_publish().await;
}

#[tokio::test]
async fn stats_and_reload() {
    let dir = common::temp_dir("http-stats");
    let (broker, http) = broker_admin(&dir, |c| {
        let mut ws = Listener::mqtt("127.0.0.1:0".parse().unwrap());
        ws.protocol = fleetmq_config::ListenerProtocol::Ws;
        c.listeners.push(ws);
    });
    let port = broker.addr().port();
    let (mut sub, _) = v3::connect(v3::options(port, "st-sub")).await;
    sub.subscribe("st/#", v3::QoS::ExactlyOnce).await;
    let (mut p, _) = v5::connect(v5::options(port, "st-pub")).await;
    p.client.publish("st/1", v5::QoS::AtLeastOnce, true, "x").await.unwrap();
    p.expect_ack().await;
    p.client.publish("st/2", v5::QoS::AtMostOnce, false, "y").await.unwrap();
    sub.expect_publish().await;
    sub.expect_publish().await;

    let stats = api_json(http, "/api/v1/stats").await;
    assert_eq!(stats["version"], format!("fleetmq {}", env!("CARGO_PKG_VERSION")));
    assert_eq!(stats["clients"]["connected"], 2);
    assert_eq!(stats["clients"]["total"], 2);
    assert_eq!(stats["clients"]["accepted"], 2);
    assert_eq!(stats["messages"]["received"], 2);
    assert_eq!(stats["messages"]["received_by_qos"], serde_json::json!([1, 1, 0]));
    assert_eq!(stats["messages"]["sent"], 2);
    assert_eq!(stats["messages"]["dropped"], 0);
    assert_eq!(stats["messages"]["dropped_by_reason"]["queue_full"], 0);
    assert_eq!(
        (&stats["subscriptions"], &stats["retained"], &stats["sessions"]),
        (&1.into(), &1.into(), &2.into())
    );
    let received = stats["bytes"]["received"].as_u64().unwrap();
    assert!(received > 0 && received <= broker.broker.metrics().bytes_received(), "{received}");
    assert!(stats["uptime_seconds"].as_u64().is_some());
    // The listeners with their bound ports (the config says 0), for the console's tester.
    let listeners = stats["listeners"].as_array().expect("listeners");
    assert_eq!(listeners.len(), 2, "{listeners:?}");
    assert_eq!(listeners[0]["protocol"], "mqtt");
    assert_eq!(listeners[0]["address"], broker.addr().to_string());
    assert_eq!(listeners[0]["path"], Value::Null);
    assert_eq!(listeners[1]["protocol"], "ws");
    assert_eq!(listeners[1]["path"], "/mqtt");
    let ws_port: u16 = listeners[1]["address"].as_str().unwrap().rsplit(':').next().unwrap().parse().unwrap();
    assert!(ws_port != 0 && ws_port != port, "{listeners:?}");
    api(http, "GET", "/api/v1/stats?x=1").await.error(400);

    // Reload does what SIGHUP does (the in-process broker has no config file to re-read, so
    // the summary says what the reloader found) and answers with the reloader's summary.
    let wrong_method = api(http, "GET", "/api/v1/reload").await;
    assert_eq!(wrong_method.header("allow"), Some("POST"));
    wrong_method.error(405);
    let reloaded = api(http, "POST", "/api/v1/reload").await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    assert_eq!(reloaded.json()["result"], broker.reload().expect("a reload without changes succeeds"));
}

#[tokio::test]
async fn request_bodies_are_bounded() {
    let dir = common::temp_dir("http-body");
    let (_broker, http) = broker_admin(&dir, |_| {});
    let big = format!(
        "POST /api/v1/reload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n",
        1024 * 1024
    );
    assert!(exchange(http, big.as_bytes()).await.error(413).contains("larger than"));
    let not_api = "POST /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 100000\r\n\r\n";
    assert_eq!(exchange(http, not_api.as_bytes()).await.status, 413);
    // A small body is read and ignored.
    let small = format!(
        "POST /api/v1/reload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    assert_ne!(exchange(http, small.as_bytes()).await.status, 413);
}

/// The console's assets: public (no token), with their content types and caching headers;
/// the admin API they call still refuses requests without the token.
#[tokio::test]
async fn console_assets_are_served_and_the_api_still_needs_the_token() {
    let dir = common::temp_dir("http-console");
    let (_broker, http) = broker_admin(&dir, |_| {});

    for (path, content_type, needle) in [
        ("/console/", "text/html; charset=utf-8", "<title>FleetMQ console</title>"),
        ("/console/app.js", "text/javascript; charset=utf-8", "export async function api"),
        ("/console/pages.js", "text/javascript; charset=utf-8", "export const pages"),
        ("/console/tester.js", "text/javascript; charset=utf-8", "export const tester"),
        ("/console/style.css", "text/css; charset=utf-8", "@media"),
        ("/console/icon.svg", "image/svg+xml", "<svg"),
        ("/console/vendor/mqtt.esm.js", "text/javascript; charset=utf-8", "MIT License"),
    ] {
        let reply = get(http, path).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.header("content-type"), Some(content_type), "{path}");
        assert!(reply.text().contains(needle), "{path} does not contain {needle:?}");
        assert_eq!(reply.header("cache-control"), Some("no-cache"), "{path}");
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"), "{path}");
        assert!(reply.header("content-security-policy").is_some_and(|v| v.contains("script-src 'self'")));
        // Revalidation with the ETag answers 304 without the body.
        let etag = reply.header("etag").expect("an ETag").to_string();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\nIf-None-Match: {etag}\r\n\r\n"
        );
        let revalidated = exchange(http, request.as_bytes()).await;
        assert_eq!(revalidated.status, 304, "{path}");
        assert!(revalidated.body.is_empty(), "{path}");
    }

    // Relative redirects, so a path prefix in front of the broker is kept.
    for path in ["/", "/console"] {
        let reply = get(http, path).await;
        assert_eq!(reply.status, 308, "{path}");
        assert_eq!(reply.header("location"), Some("console/"), "{path}");
    }
    assert_eq!(get(http, "/console/nope.js").await.status, 404);
    assert_eq!(get(http, "/console/../metrics").await.status, 404);
    let post = call(http, "POST", "/console/", None).await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));

    // Nothing the console shows is readable without the token.
    for path in ["/api/v1/stats", "/api/v1/clients", "/api/v1/retained", "/api/v1/subscriptions"] {
        get(http, path).await.error(401);
        call(http, "GET", path, Some("not-the-token")).await.error(401);
        assert_eq!(api(http, "GET", path).await.status, 200, "{path}");
    }
}
