use super::*;

fn parse(yaml: &str) -> Result<BrokerConfig, ConfigError> {
    let config = BrokerConfig::from_yaml_str(yaml, "test.yaml")?;
    config.validate()?;
    Ok(config)
}

#[test]
fn empty_document_gives_loopback_defaults() {
    let config = parse("").unwrap();
    assert_eq!(config, BrokerConfig::default());
    assert_eq!(config.listeners[0].bind, "127.0.0.1:1883".parse().unwrap());
    assert!(config.anonymous_allowed(), "loopback-only default allows anonymous");
    assert_eq!(config.limits.max_packet_size, ByteSize::mib(1));
    assert_eq!(config.sys.interval, Duration::from_secs(10));
}

#[test]
fn full_document_parses_units() {
    let config = parse(
        r#"
listeners:
  - name: public
    bind: 0.0.0.0:1884
storage:
  data_dir: /var/lib/fleetmq
  persistence: false
  fsync: interval
  fsync_interval: 20ms
auth:
  allow_anonymous: true
limits:
  max_connections: 100
  max_packet_size: 256KiB
  max_inflight: 10
  max_queued_messages: 50
  max_queued_bytes: 1048576
  max_keepalive: 600
  max_topic_levels: 8
  max_topic_alias: 5
sessions:
  persistent_session_expiry: 7d
  max_session_expiry: 3600
sys:
  interval: 0s
server:
  workers: 2
  shutdown_timeout: 1m 30s
log:
  level: debug
  format: json
"#,
    )
    .unwrap();
    assert_eq!(config.listeners[0].display_name(), "public");
    assert_eq!(config.limits.max_packet_size.as_u64(), 256 * 1024);
    assert_eq!(config.limits.max_queued_bytes.as_u64(), 1_048_576);
    assert_eq!(config.sessions.persistent_session_expiry, Some(Duration::from_secs(7 * 86400)));
    assert_eq!(config.sessions.max_session_expiry, Some(Duration::from_secs(3600)));
    assert!(config.sys.interval.is_zero());
    assert_eq!(config.server.shutdown_timeout, Duration::from_secs(90));
    assert_eq!(config.log.format, LogFormat::Json);
    assert!(!config.storage.persistence);
    assert_eq!(config.storage.fsync, Fsync::Interval);
    assert_eq!(config.storage.fsync_interval, Duration::from_millis(20));
}

#[test]
fn conflate_filters_are_validated() {
    let ok = parse("limits:\n  conflate: ['sensors/+/temp', 'status/#']\n").unwrap();
    assert_eq!(ok.limits.conflate, vec!["sensors/+/temp", "status/#"]);
    let msg = parse("limits:\n  conflate:\n    - ok/+\n    - bad/#/x\n").unwrap_err().to_string();
    assert!(msg.contains("limits.conflate") && msg.contains("[1]") && msg.contains("line 3"), "{msg}");
    let mut c = BrokerConfig::default();
    c.limits.conflate = vec!["a+".into()];
    assert!(matches!(c.validate(), Err(ConfigError::Invalid { key, .. }) if key == "limits.conflate[0]"));
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let err = parse("limits:\n  max_inflight: 5\n  max_infligt: 6\n").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("max_infligt"), "{msg}");
    assert!(msg.contains("line 3"), "{msg}");
    assert!(msg.starts_with("test.yaml"), "{msg}");
}

#[test]
fn unknown_top_level_key_is_an_error() {
    let msg = parse("listner: []\n").unwrap_err().to_string();
    assert!(msg.contains("listner"), "{msg}");
}

#[test]
fn bad_values_name_the_key() {
    let msg = parse("limits:\n  max_inflight: lots\n").unwrap_err().to_string();
    assert!(msg.contains("max_inflight"), "{msg}");

    let msg = parse("sys:\n  interval: soon\n").unwrap_err().to_string();
    assert!(msg.contains("interval") && msg.contains("soon"), "{msg}");

    let msg = parse("listeners:\n  - bind: localhost\n").unwrap_err().to_string();
    assert!(msg.contains("bind") || msg.contains("address"), "{msg}");
}

#[test]
fn out_of_range_values_in_a_file_name_key_and_line() {
    for (yaml, key, line) in [
        ("listeners: []\n", "listeners", 1),
        ("limits:\n  max_inflight: 0\n", "limits.max_inflight", 2),
        ("limits:\n  max_packet_size: 10\n", "limits.max_packet_size", 2),
        ("limits:\n  max_packet_size: 1GiB\n", "limits.max_packet_size", 2),
        ("limits:\n  max_queued_messages: 0\n", "limits.max_queued_messages", 2),
        ("limits:\n  max_keepalive: 0\n", "limits.max_keepalive", 2),
        ("sessions:\n  max_session_expiry: 200y\n", "sessions.max_session_expiry", 2),
        ("server:\n  shutdown_timeout: 0s\n", "server.shutdown_timeout", 2),
        ("log:\n  level: ' '\n", "log.level", 2),
        ("sessions:\n  persistent_session_expiry: 150y\n", "sessions.persistent_session_expiry", 2),
        ("listeners:\n  - bind: 127.0.0.1:1\n  - bind: 127.0.0.1:1\n", "listeners[1].bind", 2),
        ("listeners:\n  - bind: 127.0.0.1:1\n    protocol: mqtts\n", "listeners[0].tls", 2),
        ("listeners:\n  - bind: 127.0.0.1:1\n    tls: {cert_file: c, key_file: k}\n", "listeners[0].tls", 2),
        (
            "listeners:\n  - bind: 127.0.0.1:1\n    protocol: wss\n    tls: {cert_file: c, key_file: k, require_certificate: true}\n",
            "listeners[0].tls.ca_file",
            2,
        ),
        (
            "listeners:\n  - bind: 127.0.0.1:1\n    protocol: mqtts\n    tls: {cert_file: c, key_file: k, use_identity_as_username: true}\n",
            "listeners[0].tls.use_identity_as_username",
            2,
        ),
        ("listeners:\n  - bind: 127.0.0.1:1\n    path: /mqtt\n", "listeners[0].path", 2),
        ("listeners:\n  - bind: 127.0.0.1:1\n    protocol: ws\n    path: mqtt\n", "listeners[0].path", 2),
    ] {
        let msg = match parse(yaml) {
            Err(err @ ConfigError::Parse { .. }) => err.to_string(),
            other => panic!("{yaml}: expected a parse error, got {other:?}"),
        };
        assert!(msg.contains(&format!("{key}:")), "{yaml}: {msg}");
        assert!(msg.contains(&format!("line {line}")), "{yaml}: {msg}");
    }
}

#[test]
fn rule_errors_read_like_type_errors() {
    let msg = parse("limits:\n  max_connections: 5\n  max_inflight: 0\n").unwrap_err().to_string();
    assert_eq!(msg, "test.yaml: limits.max_inflight: must be at least 1 at line 3 column 17");
}

#[test]
fn validate_names_the_key_for_configs_built_in_code() {
    let mut c = BrokerConfig::default();
    c.limits.max_inflight = 0;
    assert!(matches!(c.validate(), Err(ConfigError::Invalid { key, .. }) if key == "limits.max_inflight"));
    let mut c = BrokerConfig::default();
    c.listeners.push(c.listeners[0].clone());
    assert!(matches!(c.validate(), Err(ConfigError::Invalid { key, .. }) if key == "listeners[1].bind"));
    let mut c = BrokerConfig::default();
    c.listeners.clear();
    assert!(matches!(c.validate(), Err(ConfigError::Invalid { key, .. }) if key == "listeners"));
    let mut c = BrokerConfig::default();
    c.limits.max_packet_size = ByteSize::b(10);
    assert!(matches!(c.validate(), Err(ConfigError::Invalid { key, .. }) if key == "limits.max_packet_size"));
    let mut c = BrokerConfig::default();
    c.sessions.persistent_session_expiry = Some(Duration::from_secs(u64::from(u32::MAX)));
    assert!(c.validate().is_err());
    assert!(BrokerConfig::default().validate().is_ok());
}

#[test]
fn anonymous_default_depends_on_exposure() {
    let public = parse("listeners:\n  - bind: 0.0.0.0:1883\n").unwrap();
    assert!(!public.anonymous_allowed());
    let explicit = parse("listeners:\n  - bind: 0.0.0.0:1883\nauth:\n  allow_anonymous: true\n").unwrap();
    assert!(explicit.anonymous_allowed());
    let locked = parse("auth:\n  allow_anonymous: false\n").unwrap();
    assert!(!locked.anonymous_allowed());
}

#[test]
fn yaml_round_trip_is_lossless() {
    let mut config = BrokerConfig::default();
    config.listeners.push(Listener {
        name: Some("lan".into()),
        protocol: ListenerProtocol::Mqtt,
        ..Listener::mqtt("[::]:1883".parse().unwrap())
    });
    config.sessions.persistent_session_expiry = Some(Duration::from_secs(3600 * 24));
    config.limits.max_queued_bytes = ByteSize::kib(64);
    config.auth.allow_anonymous = Some(false);
    let yaml = config.to_yaml();
    let back = parse(&yaml).unwrap();
    assert_eq!(back, config, "{yaml}");
}

#[test]
fn byte_sizes_render_exactly() {
    let mut config = BrokerConfig::default();
    config.limits.max_queued_bytes = ByteSize::b(1_000_001);
    config.limits.max_packet_size = ByteSize::kib(3);
    let yaml = config.to_yaml();
    assert!(yaml.contains("max_queued_bytes: 1000001\n"), "{yaml}");
    assert!(yaml.contains("max_packet_size: 3KiB\n"), "{yaml}");
    assert!(yaml.contains("max_queued_bytes") && parse(&yaml).unwrap() == config);
}

#[test]
fn transports_auth_and_http_keys_parse() {
    let config = parse(
        r#"
listeners:
  - bind: 0.0.0.0:8883
    protocol: mqtts
    max_connections: 1000
    max_connection_rate: 50
    proxy_protocol: true
    tls:
      cert_file: /tls/tls.crt
      key_file: /tls/tls.key
      ca_file: /tls/ca.crt
      min_version: "1.3"
      require_certificate: true
      use_identity_as_username: true
  - bind: 0.0.0.0:8083
    protocol: ws
auth:
  password_file: /auth/passwords
  acl_file: /auth/acl
limits:
  max_publish_rate: 100
http:
  bind: 0.0.0.0:9090
  admin_token_file: /auth/token
"#,
    )
    .unwrap();
    let tls = config.listeners[0].tls.as_ref().unwrap();
    assert_eq!(tls.min_version, TlsVersion::V1_3);
    assert!(tls.require_certificate && tls.use_identity_as_username);
    assert_eq!(config.listeners[0].display_name(), "mqtts-8883");
    assert_eq!(config.listeners[1].ws_path(), "/mqtt");
    assert_eq!(config.limits.max_publish_rate, 100);
    assert!(!config.anonymous_allowed(), "a password file turns anonymous access off by default");
    assert_eq!(config.http.bind.port(), 9090);
    // What the operator writes must read back the same.
    assert_eq!(BrokerConfig::from_yaml_str(&config.to_yaml(), "rendered").unwrap(), config);
}

#[test]
fn http_must_not_take_a_listener_port() {
    let err = parse("listeners:\n  - bind: 127.0.0.1:8080\n").unwrap_err().to_string();
    assert!(err.contains("http.bind"), "{err}");
    assert!(parse("listeners:\n  - bind: 127.0.0.1:8080\nhttp:\n  enabled: false\n").is_ok());
}

#[test]
fn loopback_default_with_a_password_file_refuses_anonymous() {
    let config = parse("auth:\n  password_file: /p\n").unwrap();
    assert!(!config.anonymous_allowed());
    let config = parse("auth:\n  password_file: /p\n  allow_anonymous: true\n").unwrap();
    assert!(config.anonymous_allowed());
}

const BRIDGE: &str = r#"
bridges:
  - name: cloud
    addresses: ["cloud-a:1883", "cloud-b:8883"]
    username: edge
    password_file: /secrets/bridge
    backoff: {initial: 500ms, max: 30s}
    topics:
      - {pattern: "sensors/#", direction: out, qos: 1, local_prefix: "site/", remote_prefix: "edge1/"}
      - {pattern: "cmd/#", direction: in}
"#;

#[test]
fn bridge_parses_with_defaults() {
    let config = parse(BRIDGE).unwrap();
    let bridge = &config.bridges[0];
    assert_eq!(bridge.protocol, BridgeProtocol::V5);
    assert_eq!(bridge.keepalive, Duration::from_secs(60));
    assert_eq!(bridge.remote_client_id(), "fleetmq-bridge-cloud");
    assert_eq!(bridge.backoff.initial, Duration::from_millis(500));
    assert_eq!(bridge.topics[1].qos, 1);
    assert_eq!(bridge.topics[1].direction, Direction::In);
    assert_eq!(bridge.topics[0].local_prefix.as_deref(), Some("site/"));
    // Round trip through the operator's rendering.
    assert_eq!(parse(&config.to_yaml()).unwrap(), config);
}

fn bridge_error(from: &str, to: &str) -> String {
    let yaml = BRIDGE.replace(from, to);
    assert_ne!(yaml, BRIDGE, "replacement {from:?} did not apply");
    parse(&yaml).unwrap_err().to_string()
}

#[test]
fn bridge_errors_name_the_key() {
    let unknown = bridge_error("username: edge", "usernme: edge");
    assert!(unknown.contains("usernme"), "{unknown}");
    let pattern = bridge_error("cmd/#", "cmd/#/x");
    assert!(pattern.contains("bridges[0].topics[1].pattern"), "{pattern}");
    let prefix = bridge_error("\"site/\"", "\"site\"");
    assert!(prefix.contains("bridges[0].topics[0].local_prefix"), "{prefix}");
    let empty = bridge_error(r#"["cloud-a:1883", "cloud-b:8883"]"#, "[]");
    assert!(empty.contains("bridges[0].addresses"), "{empty}");
    let port = bridge_error("cloud-b:8883", "cloud-b");
    assert!(port.contains("bridges[0].addresses[1]"), "{port}");
    let qos = bridge_error("qos: 1,", "qos: 3,");
    assert!(qos.contains("bridges[0].topics[0].qos"), "{qos}");
    let backoff = bridge_error("max: 30s", "max: 100ms");
    assert!(backoff.contains("bridges[0].backoff.max"), "{backoff}");
    let tls = bridge_error("username: edge", "tls: {server_name: cloud}");
    assert!(tls.contains("bridges[0].tls.ca_file"), "{tls}");
    let pair = bridge_error("username: edge", "tls: {ca_file: /ca.pem, cert_file: /c.pem}");
    assert!(pair.contains("bridges[0].tls.key_file"), "{pair}");
    let v3_both = bridge_error("direction: in}", "direction: both}\n    protocol: \"3.1.1\"");
    assert!(v3_both.contains("bridges[0].topics[1].direction"), "{v3_both}");
    let duplicate = parse(&format!("{BRIDGE}{}", BRIDGE.replace("bridges:\n", ""))).unwrap_err().to_string();
    assert!(duplicate.contains("bridges[1].name"), "{duplicate}");
}

#[test]
fn bridge_queue_and_notifications_default_and_round_trip() {
    let config = parse(BRIDGE).unwrap();
    let bridge = &config.bridges[0];
    assert_eq!(
        bridge.queue,
        BridgeQueue { max_messages: None, max_bytes: None, overflow: Overflow::DropNewest }
    );
    assert_eq!(bridge.notifications, Notifications { local: true, remote: false, topic: None });
    // Defaults are not written out, so rendered configs of older bridges stay the same.
    let yaml = config.to_yaml();
    assert!(!yaml.contains(" queue:") && !yaml.contains(" notifications:"), "{yaml}");

    let yaml = BRIDGE.replace(
        "username: edge",
        "username: edge\n    queue: {max_messages: 5, max_bytes: 1KiB, overflow: drop_oldest}\n    \
         notifications: {local: false, remote: true, topic: edge/state}",
    );
    let config = parse(&yaml).unwrap();
    let bridge = &config.bridges[0];
    assert_eq!(bridge.queue.max_messages, Some(5));
    assert_eq!(bridge.queue.max_bytes, Some(ByteSize::kib(1)));
    assert_eq!(bridge.queue.overflow, Overflow::DropOldest);
    assert!(!bridge.notifications.local && bridge.notifications.remote);
    assert_eq!(bridge.notifications.topic.as_deref(), Some("edge/state"));
    assert_eq!(parse(&config.to_yaml()).unwrap(), config);
}

#[test]
fn bridge_queue_and_notification_errors_name_the_key() {
    let zero = bridge_error("username: edge", "queue: {max_messages: 0}");
    assert!(zero.contains("bridges[0].queue.max_messages"), "{zero}");
    let policy = bridge_error("username: edge", "queue: {overflow: drop_random}");
    assert!(policy.contains("drop_random") && policy.contains("overflow"), "{policy}");
    let bytes = bridge_error("username: edge", "queue: {max_bytes: lots}");
    assert!(bytes.contains("max_bytes"), "{bytes}");
    let topic = bridge_error("username: edge", "notifications: {topic: \"a/#\"}");
    assert!(topic.contains("bridges[0].notifications.topic"), "{topic}");
    let unknown = bridge_error("username: edge", "notifications: {remote_only: true}");
    assert!(unknown.contains("remote_only"), "{unknown}");
}

const CLUSTER: &str = "cluster:
  node_name: fleetmq-0
  gossip_bind: 127.0.0.1:7946
  link_bind: 127.0.0.1:7947
  advertise_host: 127.0.0.1
  seeds: [\"fleetmq-1.fleetmq-headless.ns.svc:7946\", \"127.0.0.1:7946\"]
  gossip_interval: 200ms
  forward_queue: 5
";

#[test]
fn cluster_is_off_by_default_and_parses_with_defaults() {
    assert_eq!(parse("").unwrap().cluster, None);
    let c = parse("cluster: {secret_file: /s}\n").unwrap().cluster.unwrap();
    assert_eq!(c, cluster::Cluster { secret_file: Some("/s".into()), ..cluster::Cluster::default() });
    assert_eq!(c.gossip_bind, "0.0.0.0:7946".parse().unwrap());
    assert_eq!(c.link_bind, "0.0.0.0:7947".parse().unwrap());
    assert_eq!(c.gossip_interval, Duration::from_secs(1));
    let c = parse(CLUSTER).unwrap().cluster.unwrap();
    assert_eq!(c.node_name.as_deref(), Some("fleetmq-0"));
    assert_eq!(c.seeds.len(), 2);
    assert_eq!(c.forward_queue, 5);
    assert_eq!(c.gossip_interval, Duration::from_millis(200));
    // Round trip through the YAML the operator would write.
    let config = parse(CLUSTER).unwrap();
    assert_eq!(parse(&config.to_yaml()).unwrap(), config);
}

fn cluster_error(from: &str, to: &str) -> String {
    let yaml = CLUSTER.replace(from, to);
    assert_ne!(yaml, CLUSTER, "{from} not in the sample");
    parse(&yaml).unwrap_err().to_string()
}

#[test]
fn cluster_errors_name_the_key() {
    for (from, to, key) in [
        ("node_name: fleetmq-0", "node_name: \"a b\"", "cluster.node_name"),
        ("node_name: fleetmq-0", "node_name: \"\"", "cluster.node_name"),
        ("advertise_host: 127.0.0.1", "advertise_host: \"host:7946\"", "cluster.advertise_host"),
        ("gossip_bind: 127.0.0.1:7946", "gossip_bind: 127.0.0.1:0", "cluster.gossip_bind"),
        ("\"127.0.0.1:7946\"]", "\"127.0.0.1\"]", "cluster.seeds[1]"),
        ("gossip_interval: 200ms", "gossip_interval: 0s", "cluster.gossip_interval"),
        ("forward_queue: 5", "forward_queue: 0", "cluster.forward_queue"),
        ("link_bind: 127.0.0.1:7947", "link_bind: 0.0.0.0:7947", "cluster.secret_file"),
        ("link_bind: 127.0.0.1:7947", "link_bind: 127.0.0.1:1883", "cluster.link_bind"),
    ] {
        let msg = cluster_error(from, to);
        assert!(msg.contains(&format!("`{key}`")), "{to}: {msg}");
    }
    let msg = cluster_error("forward_queue: 5", "forward_queue: 5\n  gossip_port: 1");
    assert!(msg.contains("gossip_port"), "{msg}");
    let msg = cluster_error("forward_queue: 5", "forward_queue: many");
    assert!(msg.contains("forward_queue"), "{msg}");
}
