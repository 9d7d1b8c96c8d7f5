//! Pure builder tests from YAML fixtures: the restart-vs-reload rule, pod hardening, probes,
//! volumes, graceful shutdown, determinism, and the broker-config round trip.

use std::collections::BTreeMap;

use fleetmq_config::BrokerConfig;
use fleetmq_operator::auth::{Credential, SecretValue, UserEntry};
use fleetmq_operator::build::{self, BrokerInputs, BrokerPlan, BuildOptions};
use fleetmq_operator::crd::{
    AclAccess, AclRule, ListenerProtocol, ListenerSpec, LogFormat, LogLevel, MqttBroker, TlsMinVersion,
};
use fleetmq_operator::inputs::{self, Missing};
use fleetmq_operator::{config, names};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::{cheap_hasher, examples, parse};

fn broker(name: &str) -> MqttBroker {
    examples().brokers.into_iter().find(|b| b.name_any() == name).expect("example broker")
}

fn user(name: &str, password: &str, acl: &[(&str, AclAccess)]) -> UserEntry {
    UserEntry {
        object: name.into(),
        username: name.into(),
        credential: Credential::Password(password.into()),
        acl: acl.iter().map(|(t, a)| AclRule { topic: (*t).into(), access: *a }).collect(),
    }
}

fn inputs_for(broker: MqttBroker) -> BrokerInputs {
    let ex = examples();
    let secrets = ex.secrets.iter().map(|s| (s.name_any(), s.clone())).collect();
    let name = broker.name_any();
    BrokerInputs {
        users: inputs::resolve_users(&name, &ex.users, &secrets, Missing::Placeholder).entries,
        bridges: inputs::resolve_bridges(&name, &ex.bridges, &secrets, Missing::Placeholder).entries,
        broker,
        admin_token: SecretValue::Known("test-admin-token".into()),
        cluster_secret: SecretValue::Known("test-cluster-secret".into()),
        options: BuildOptions { service_monitor_served: true, ..BuildOptions::default() },
    }
}

fn plan(inputs: &BrokerInputs) -> BrokerPlan {
    build::plan_broker(inputs, &cheap_hasher()).expect("plan builds")
}

/// `Kind/name` → serialized object.
fn objects(plan: &BrokerPlan) -> BTreeMap<String, String> {
    plan.objects
        .iter()
        .map(|d| (d.describe(), serde_json::to_string(&d.object).expect("serializes")))
        .collect()
}

fn changed(a: &BrokerPlan, b: &BrokerPlan) -> Vec<String> {
    let (a, b) = (objects(a), objects(b));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter().filter(|k| a.get(*k) != b.get(*k)).cloned().collect()
}

fn typed<K: serde::de::DeserializeOwned>(plan: &BrokerPlan, kind: &str) -> K {
    let d =
        plan.objects.iter().find(|d| d.resource.kind == kind).unwrap_or_else(|| panic!("no {kind} in plan"));
    serde_json::from_value(serde_json::to_value(&d.object).expect("serializes")).expect("typed object")
}

fn pod_template(plan: &BrokerPlan) -> serde_json::Value {
    let sts: StatefulSet = typed(plan, "StatefulSet");
    serde_json::to_value(sts.spec.expect("spec").template).expect("serializes")
}

#[test]
fn hot_reloadable_changes_never_touch_the_pod_template() {
    let base_inputs = inputs_for(broker("fleet"));
    let base = plan(&base_inputs);

    // A user's ACL changes: only the auth Secret.
    let mut acl = base_inputs.clone();
    acl.users[0].acl.push(AclRule { topic: "new/#".into(), access: AclAccess::Read });
    assert_eq!(changed(&base, &plan(&acl)), ["Secret/fleet-auth"]);

    // A password rotates and a user is added: only the auth Secret.
    let mut users = base_inputs.clone();
    users.users[0].credential = Credential::Password("rotated".into());
    users.users.push(user("newcomer", "pw", &[("x/#", AclAccess::Readwrite)]));
    assert_eq!(changed(&base, &plan(&users)), ["Secret/fleet-auth"]);

    // A bridge goes away: broker.yaml's `bridges` and its Secret files; the broker reloads both.
    let mut bridges = base_inputs.clone();
    bridges.bridges.clear();
    assert_eq!(changed(&base, &plan(&bridges)), ["ConfigMap/fleet-config", "Secret/fleet-auth"]);

    // Limits: only the ConfigMap.
    let mut limits = base_inputs.clone();
    limits.broker.spec.limits.max_inflight = Some(7);
    limits.broker.spec.limits.max_connections = Some(9);
    assert_eq!(changed(&base, &plan(&limits)), ["ConfigMap/fleet-config"]);

    // Certificate settings: only the Certificate (cert-manager renews the Secret in place).
    let mut cert = base_inputs.clone();
    cert.broker.spec.tls.as_mut().expect("tls").dns_names.push("other.example.com".into());
    assert_eq!(changed(&base, &plan(&cert)), ["Certificate/fleet-tls"]);

    // The anonymous policy: broker.yaml's auth section and the ACL's general rules, both
    // re-read by the broker.
    let mut anonymous = base_inputs.clone();
    anonymous.broker.spec.auth.allow_anonymous = true;
    assert_eq!(changed(&base, &plan(&anonymous)), ["ConfigMap/fleet-config", "Secret/fleet-auth"]);

    // The log level: the broker reloads it.
    let mut level = base_inputs.clone();
    level.broker.spec.log.level = LogLevel::Debug;
    assert_eq!(changed(&base, &plan(&level)), ["ConfigMap/fleet-config"]);

    for variant in [&acl, &users, &bridges, &limits, &cert, &anonymous, &level] {
        let p = plan(variant);
        assert_eq!(pod_template(&base), pod_template(&p));
        assert_eq!(base.restart_hash, p.restart_hash);
    }
}

#[test]
fn restart_requiring_changes_change_the_pod_template_hash() {
    let base_inputs = inputs_for(broker("fleet"));
    let base = plan(&base_inputs);
    let annotation = |p: &BrokerPlan| {
        pod_template(p)["metadata"]["annotations"][names::RESTART_HASH_ANNOTATION]
            .as_str()
            .map(str::to_string)
    };
    assert_eq!(annotation(&base).as_deref(), Some(base.restart_hash.as_str()));

    let mut variants = Vec::new();
    let mut listeners = base_inputs.clone();
    listeners.broker.spec.listeners[0].port = 1884;
    variants.push(("listeners", listeners));
    let mut persistence = base_inputs.clone();
    persistence.broker.spec.persistence.size = "20Gi".into();
    variants.push(("persistence", persistence));
    let mut image = base_inputs.clone();
    image.broker.spec.image = Some("example.com/fleetmq:next".into());
    variants.push(("image", image));
    let mut resources = base_inputs.clone();
    resources.broker.spec.resources = None;
    variants.push(("resources", resources));
    // Same port, other transport: the broker binds listeners only at start.
    let mut protocol = base_inputs.clone();
    protocol.broker.spec.listeners[1].protocol = ListenerProtocol::Wss;
    variants.push(("listener protocol", protocol));
    let mut path = base_inputs.clone();
    path.broker.spec.listeners[2].path = Some("/ws".into());
    variants.push(("websocket path", path));
    // TLS settings are part of the listeners' config (only the certificate files reload).
    let mut min_version = base_inputs.clone();
    min_version.broker.spec.tls.as_mut().expect("tls").min_version = Some(TlsMinVersion::V1_2);
    variants.push(("tls.minVersion", min_version));
    let mut mutual = base_inputs.clone();
    mutual.broker.spec.tls.as_mut().expect("tls").require_client_certificate = true;
    variants.push(("tls.requireClientCertificate", mutual));
    let mut http_port = base_inputs.clone();
    http_port.broker.spec.metrics.as_mut().expect("metrics").port = 9191;
    variants.push(("HTTP port", http_port));
    let mut fsync = base_inputs.clone();
    fsync.broker.spec.persistence.fsync_interval = Some("5ms".into());
    variants.push(("storage.fsync_interval", fsync));
    // The broker reads its log format only at start (the level reloads).
    let mut log = base_inputs.clone();
    log.broker.spec.log.format = LogFormat::Text;
    variants.push(("log format", log));
    for (what, variant) in variants {
        let p = plan(&variant);
        assert_ne!(p.restart_hash, base.restart_hash, "{what} must change the restart hash");
        assert_eq!(annotation(&p).as_deref(), Some(p.restart_hash.as_str()), "{what}");
        assert!(changed(&base, &p).contains(&"StatefulSet/fleet".to_string()), "{what}");
    }
    // Exposing metrics in the Services (same port) changes no pod: the endpoint always runs.
    let mut hidden = base_inputs.clone();
    hidden.broker.spec.metrics.as_mut().expect("metrics").enabled = false;
    hidden.broker.spec.metrics.as_mut().expect("metrics").service_monitor = None;
    let p = plan(&hidden);
    assert_eq!(p.restart_hash, base.restart_hash);
    assert_eq!(pod_template(&p), pod_template(&base));
}

#[test]
fn output_is_deterministic() {
    let inputs = inputs_for(broker("fleet"));
    let a = build::plan_broker(&inputs, &cheap_hasher()).expect("plan");
    // A fresh hasher (empty memo) must produce the same bytes: salts are derived, not random.
    let b = build::plan_broker(&inputs, &cheap_hasher()).expect("plan");
    assert_eq!(objects(&a), objects(&b));
    assert_eq!(a.config_hash, b.config_hash);
}

#[test]
fn pods_are_hardened_and_read_their_config_from_the_configmap() {
    let p = plan(&inputs_for(broker("minimal")));
    let sts: StatefulSet = typed(&p, "StatefulSet");
    let pod = sts.spec.expect("spec").template.spec.expect("pod spec");
    let c = &pod.containers[0];
    assert_eq!(
        c.args.as_deref(),
        Some(&["--config".to_string(), "/etc/fleetmq/broker.yaml".to_string()][..])
    );
    let sc = c.security_context.as_ref().expect("container security context");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.capabilities.as_ref().and_then(|c| c.drop.clone()), Some(vec!["ALL".to_string()]));
    let psc = pod.security_context.as_ref().expect("pod security context");
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.run_as_user, Some(65532));
    assert_eq!(pod.automount_service_account_token, Some(false));
    let mounts = c.volume_mounts.clone().expect("mounts");
    let config_mount = mounts.iter().find(|m| m.name == "config").expect("config mount");
    assert_eq!(config_mount.mount_path, "/etc/fleetmq");
    let cm: ConfigMap = typed(&p, "ConfigMap");
    assert!(cm.data.expect("data").contains_key("broker.yaml"));
    // Every writable path is a volume, since the root filesystem is read-only.
    for m in mounts.iter().filter(|m| m.read_only != Some(true)) {
        assert!(["/var/lib/fleetmq", "/tmp"].contains(&m.mount_path.as_str()), "{}", m.mount_path);
    }
}

#[test]
fn probes_are_http_gets_on_the_brokers_http_port() {
    // With metrics exposed (fleet, port 9090) and without any metrics spec (minimal, default
    // port): the endpoint and its container port exist either way.
    for (name, port) in [("fleet", 9090), ("minimal", 9090)] {
        let p = plan(&inputs_for(broker(name)));
        let sts: StatefulSet = typed(&p, "StatefulSet");
        let c = sts.spec.expect("spec").template.spec.expect("pod").containers[0].clone();
        let http = c
            .ports
            .clone()
            .unwrap_or_default()
            .into_iter()
            .find(|cp| cp.name.as_deref() == Some(build::HTTP_PORT_NAME))
            .unwrap_or_else(|| panic!("{name}: no container port {}", build::HTTP_PORT_NAME));
        assert_eq!(http.container_port, port, "{name}");
        // The broker binds its HTTP endpoint on that same port on the pod network.
        assert_eq!(p.config.config.http.bind.to_string(), format!("0.0.0.0:{port}"), "{name}");
        assert!(p.config.config.http.enabled, "{name}");
        for (probe, path) in [
            (c.startup_probe.expect("startup"), "/healthz"),
            (c.liveness_probe.expect("liveness"), "/healthz"),
            (c.readiness_probe.expect("readiness"), "/readyz"),
        ] {
            assert!(probe.tcp_socket.is_none() && probe.exec.is_none(), "{name}: {probe:?}");
            let get = probe.http_get.expect("httpGet probe");
            assert_eq!(get.path.as_deref(), Some(path), "{name}");
            assert_eq!(get.port, IntOrString::String(build::HTTP_PORT_NAME.into()), "{name}");
            assert_eq!(get.scheme.as_deref(), Some("HTTP"), "{name}");
        }
    }
    let mut other = inputs_for(broker("fleet"));
    other.broker.spec.metrics.as_mut().expect("metrics").port = 9191;
    let p = plan(&other);
    let sts: StatefulSet = typed(&p, "StatefulSet");
    let c = sts.spec.expect("spec").template.spec.expect("pod").containers[0].clone();
    let ports = c.ports.unwrap_or_default();
    assert!(ports.iter().any(|cp| cp.name.as_deref() == Some("metrics") && cp.container_port == 9191));
    assert_eq!(p.config.config.http.bind.port(), 9191);
}

#[test]
fn persistence_uses_claims_otherwise_empty_dir() {
    let with = plan(&inputs_for(broker("fleet")));
    let sts: StatefulSet = typed(&with, "StatefulSet");
    let spec = sts.spec.expect("spec");
    let vct = spec.volume_claim_templates.expect("claims when persistence is on");
    assert_eq!(vct[0].metadata.name.as_deref(), Some("data"));
    let claim = vct[0].spec.clone().expect("claim spec");
    assert_eq!(claim.storage_class_name.as_deref(), Some("standard"));
    assert_eq!(
        claim.resources.and_then(|r| r.requests).and_then(|r| r.get("storage").cloned()).map(|q| q.0),
        Some("10Gi".into())
    );
    let volumes = spec.template.spec.expect("pod").volumes.expect("volumes");
    assert!(!volumes.iter().any(|v| v.name == "data"), "no emptyDir shadows the claim");

    let without = plan(&inputs_for(broker("minimal")));
    let sts: StatefulSet = typed(&without, "StatefulSet");
    let spec = sts.spec.expect("spec");
    assert!(spec.volume_claim_templates.is_none());
    let volumes = spec.template.spec.expect("pod").volumes.expect("volumes");
    assert!(volumes.iter().any(|v| v.name == "data" && v.empty_dir.is_some()));
}

#[test]
fn graceful_shutdown_fits_in_the_grace_period() {
    let p = plan(&inputs_for(broker("fleet")));
    let sts: StatefulSet = typed(&p, "StatefulSet");
    let pod = sts.spec.expect("spec").template.spec.expect("pod");
    // preStop sleep 5 s + shutdown_timeout 10 s (from the example) + 15 s for the cluster drain.
    assert_eq!(pod.termination_grace_period_seconds, Some(30));
    let pre_stop = pod.containers[0].lifecycle.clone().and_then(|l| l.pre_stop).expect("preStop");
    assert_eq!(pre_stop.sleep.map(|s| s.seconds), Some(5));
    assert_eq!(p.config.config.server.shutdown_timeout, std::time::Duration::from_secs(10));
}

#[test]
fn rendered_config_round_trips_through_the_broker_parser() {
    let mut cases: Vec<BrokerInputs> = examples().brokers.into_iter().map(inputs_for).collect();
    let extra = parse(&std::fs::read_to_string(crate::fixture_path("brokers.yaml")).expect("fixture"));
    cases.extend(extra.brokers.into_iter().map(|b| BrokerInputs {
        broker: b,
        users: vec![],
        bridges: vec![],
        admin_token: SecretValue::Known("test-admin-token".into()),
        cluster_secret: SecretValue::Known("test-cluster-secret".into()),
        options: BuildOptions::default(),
    }));
    assert!(cases.len() >= 4);
    for inputs in &cases {
        let p = plan(inputs);
        let cm: ConfigMap = typed(&p, "ConfigMap");
        let yaml = cm.data.and_then(|d| d.get(names::CONFIG_KEY).cloned()).expect("broker.yaml");
        let parsed =
            BrokerConfig::from_yaml_str(&yaml, "broker.yaml").expect("the broker parses what we render");
        parsed.validate().expect("and accepts it");
        assert_eq!(
            parsed,
            p.config.config,
            "nothing lost in the round trip for {}",
            inputs.broker.name_any()
        );
        assert_eq!(parsed.anonymous_allowed(), inputs.broker.spec.auth.allow_anonymous);
        assert!(parsed.listeners.iter().all(|l| l.bind.ip().is_unspecified()));
        assert_eq!(parsed.storage.persistence, inputs.broker.spec.persistence.enabled);
        assert_eq!(parsed.storage.data_dir, std::path::PathBuf::from("/var/lib/fleetmq"));
        assert_eq!(parsed.limits.conflate, inputs.broker.spec.limits.conflate);
        // Every CRD listener is served, in spec order, with its protocol and port.
        let spec_listeners: Vec<(&str, u16)> =
            inputs.broker.spec.listeners.iter().map(|l| (l.protocol.as_str(), l.port as u16)).collect();
        let served: Vec<(&str, u16)> =
            parsed.listeners.iter().map(|l| (l.protocol.as_str(), l.bind.port())).collect();
        assert_eq!(served, spec_listeners, "{}", inputs.broker.name_any());
        assert_eq!(
            parsed.auth.password_file.as_deref(),
            Some(std::path::Path::new("/var/run/secrets/fleetmq/auth/passwords"))
        );
        assert_eq!(
            parsed.auth.acl_file.as_deref(),
            Some(std::path::Path::new("/var/run/secrets/fleetmq/auth/acl"))
        );
        assert!(parsed.http.enabled);
    }
    // The fixtures include TLS (mutual, TLS 1.3) and WebSocket listeners.
    let all: Vec<fleetmq_config::Listener> =
        cases.iter().flat_map(|i| plan(i).config.config.listeners).collect();
    assert!(all.iter().any(|l| l.tls.as_ref().is_some_and(|t| t.require_certificate)));
    assert!(all.iter().any(|l| l.protocol == fleetmq_config::ListenerProtocol::Ws));
    assert!(all.iter().any(|l| l.protocol == fleetmq_config::ListenerProtocol::Wss));
}

#[test]
fn bridges_render_into_broker_yaml_with_secrets_as_files() {
    let p = plan(&inputs_for(broker("fleet")));
    assert!(p.config.unsupported.is_empty(), "{:?}", p.config.unsupported);
    let bridges = &p.config.config.bridges;
    assert_eq!(bridges.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(), ["cloud"]);
    let cloud = &bridges[0];
    assert!(!cloud.topics.is_empty());
    // Secret material is referenced by path into the auth Secret, never inlined in broker.yaml.
    let yaml = p.config.to_yaml("default", "fleet");
    let secret: k8s_openapi::api::core::v1::Secret = typed(&p, "Secret");
    let files = secret.string_data.or(None).unwrap_or_default();
    let data_keys: Vec<String> = secret.data.map(|d| d.into_keys().collect()).unwrap_or_default();
    let keys: Vec<&String> = files.keys().chain(data_keys.iter()).collect();
    for path in
        [&cloud.password_file, &cloud.tls.as_ref().and_then(|t| t.ca_file.clone())].into_iter().flatten()
    {
        let key = path.file_name().and_then(|n| n.to_str()).expect("file name");
        assert!(path.starts_with(names::AUTH_DIR), "{}", path.display());
        assert!(keys.iter().any(|k| k.as_str() == key), "{key} in the auth Secret: {keys:?}");
    }
    if let Some(password) = files.get("bridge-cloud-password") {
        assert!(!yaml.contains(password.as_str()), "the password stays out of the ConfigMap");
    }
    // What the broker itself accepts.
    let parsed = fleetmq_config::BrokerConfig::from_yaml_str(&yaml, "broker.yaml").expect("parses");
    assert_eq!(&parsed.bridges, bridges);
    assert!(plan(&inputs_for(broker("minimal"))).config.config.bridges.is_empty());
}

#[test]
fn every_listener_protocol_is_rendered_with_its_tls_and_path() {
    let p = plan(&inputs_for(broker("fleet")));
    let tls_dir = std::path::Path::new(names::TLS_DIR);
    let listeners = &p.config.config.listeners;
    let rendered: Vec<(&str, fleetmq_config::ListenerProtocol, u16)> = listeners
        .iter()
        .map(|l| (l.name.as_deref().unwrap_or_default(), l.protocol, l.bind.port()))
        .collect();
    use fleetmq_config::ListenerProtocol as P;
    assert_eq!(rendered, [("mqtt", P::Mqtt, 1883), ("mqtts", P::Mqtts, 8883), ("wss", P::Wss, 8443)]);
    for l in listeners {
        assert!(l.bind.ip().is_unspecified());
        match l.protocol {
            P::Mqtts | P::Wss => {
                let tls = l.tls.as_ref().expect("tls block");
                assert_eq!(tls.cert_file, tls_dir.join("tls.crt"));
                assert_eq!(tls.key_file, tls_dir.join("tls.key"));
                // No client certificates asked for: no CA file the Secret might not have.
                assert_eq!(tls.ca_file, None);
                assert!(!tls.require_certificate && !tls.use_identity_as_username);
                // The example asks for TLS 1.3 only.
                assert_eq!(tls.min_version, fleetmq_config::TlsVersion::V1_3);
            }
            P::Mqtt | P::Ws => assert!(l.tls.is_none()),
        }
        assert_eq!(l.path.as_deref(), l.protocol.is_websocket().then_some("/mqtt"), "{l:?}");
    }

    // Mutual TLS reads the Secret's ca.crt; the TLS settings reach every TLS listener.
    let mut b = broker("fleet");
    let tls = b.spec.tls.as_mut().expect("tls");
    tls.require_client_certificate = true;
    tls.use_identity_as_username = true;
    tls.min_version = None;
    b.spec.listeners.push(ListenerSpec {
        name: "ws".into(),
        protocol: ListenerProtocol::Ws,
        port: 8080,
        path: Some("/devices".into()),
    });
    let c = config::broker_config(&b.spec, &[], "b-headless.ns.svc").expect("renders").config;
    for l in c.listeners.iter().filter(|l| l.protocol.is_tls()) {
        let tls = l.tls.as_ref().expect("tls block");
        assert_eq!(tls.ca_file.as_deref(), Some(tls_dir.join("ca.crt").as_path()));
        assert!(tls.require_certificate && tls.use_identity_as_username);
        // Unset means the broker's default, TLS 1.2.
        assert_eq!(tls.min_version, fleetmq_config::TlsVersion::V1_2);
    }
    let ws = c.listeners.iter().find(|l| l.protocol == P::Ws).expect("ws listener");
    assert_eq!((ws.path.as_deref(), ws.tls.is_none()), (Some("/devices"), true));
    c.validate().expect("the broker accepts it");

    // No listener needs to be plain MQTT any more.
    let mut tls_only = broker("fleet");
    tls_only.spec.listeners.retain(|l| l.protocol.is_tls());
    let c = config::broker_config(&tls_only.spec, &[], "b-headless.ns.svc")
        .expect("TLS-only brokers are served")
        .config;
    assert_eq!(c.listeners.len(), 2);

    // A TLS listener without spec.tls (validation refuses it first) is refused by field.
    let mut no_tls = broker("fleet");
    no_tls.spec.tls = None;
    let err = config::broker_config(&no_tls.spec, &[], "b-headless.ns.svc").expect_err("no certificate");
    assert_eq!(err.field, "spec.tls");
    assert!(err.message.contains("spec.listeners[1]"), "{err}");
}

#[test]
fn every_file_the_config_names_is_mounted_from_the_right_source() {
    let p = plan(&inputs_for(broker("fleet")));
    let sts: StatefulSet = typed(&p, "StatefulSet");
    let pod = sts.spec.expect("spec").template.spec.expect("pod");
    let mounts = pod.containers[0].volume_mounts.clone().expect("mounts");
    let volumes = pod.volumes.clone().expect("volumes");
    // The Secret a path is read from: the volume mounted at the path's directory.
    let secret_of = |path: &std::path::Path| {
        let dir = path.parent().expect("a file in a directory").to_str().expect("utf8");
        let mount =
            mounts.iter().find(|m| m.mount_path == dir).unwrap_or_else(|| panic!("{dir} not mounted"));
        let volume = volumes.iter().find(|v| v.name == mount.name).expect("volume of the mount");
        volume.secret.as_ref().and_then(|s| s.secret_name.clone()).expect("a Secret volume")
    };
    let c = &p.config.config;
    let auth = &c.auth;
    let auth_secret: k8s_openapi::api::core::v1::Secret = typed(&p, "Secret");
    let keys = auth_secret.data.expect("data");
    for file in
        [auth.password_file.as_ref().expect("password_file"), auth.acl_file.as_ref().expect("acl_file")]
    {
        assert_eq!(secret_of(file), "fleet-auth");
        let key = file.file_name().and_then(|n| n.to_str()).expect("file name");
        assert!(keys.contains_key(key), "the auth Secret has {key}");
    }
    // issuerRef: the Certificate's Secret.
    for l in c.listeners.iter().filter_map(|l| l.tls.as_ref()) {
        assert_eq!(secret_of(&l.cert_file), "fleet-tls");
        assert_eq!(secret_of(&l.key_file), "fleet-tls");
    }
    // secretName: that Secret.
    let mut own = inputs_for(broker("fleet"));
    let tls = own.broker.spec.tls.as_mut().expect("tls");
    tls.issuer_ref = None;
    tls.secret_name = Some("my-cert".into());
    let p = plan(&own);
    let sts: StatefulSet = typed(&p, "StatefulSet");
    let volumes = sts.spec.expect("spec").template.spec.expect("pod").volumes.expect("volumes");
    let tls_volume = volumes.iter().find(|v| v.name == "tls").expect("tls volume");
    assert_eq!(tls_volume.secret.as_ref().and_then(|s| s.secret_name.as_deref()), Some("my-cert"));
    assert!(!p.objects.iter().any(|d| d.resource.kind == "Certificate"));
}

#[test]
fn optional_objects() {
    let fleet = plan(&inputs_for(broker("fleet")));
    let kinds: Vec<&str> = fleet.objects.iter().map(|d| d.resource.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "Secret",
            "Certificate",
            "Service",
            "Service",
            "StatefulSet",
            "PodDisruptionBudget",
            "ServiceMonitor"
        ]
    );
    let cert = fleet.objects.iter().find(|d| d.resource.kind == "Certificate").expect("certificate");
    let dns = cert.object.data["spec"]["dnsNames"].as_array().expect("dnsNames");
    assert!(dns.iter().any(|n| n == "fleet.default.svc"));
    assert!(dns.iter().any(|n| n == "mqtt.example.com"));
    assert_eq!(cert.object.data["spec"]["issuerRef"]["kind"], "ClusterIssuer");

    // No ServiceMonitor where its CRD is not served.
    let mut not_served = inputs_for(broker("fleet"));
    not_served.options.service_monitor_served = false;
    assert!(!plan(&not_served).objects.iter().any(|d| d.resource.kind == "ServiceMonitor"));

    let minimal = plan(&inputs_for(broker("minimal")));
    let kinds: Vec<&str> = minimal.objects.iter().map(|d| d.resource.kind.as_str()).collect();
    assert_eq!(kinds, ["ConfigMap", "Secret", "Service", "Service", "StatefulSet", "PodDisruptionBudget"]);
    let mut no_pdb = inputs_for(broker("minimal"));
    no_pdb.broker.spec.pdb.enabled = false;
    assert!(!plan(&no_pdb).objects.iter().any(|d| d.resource.kind == "PodDisruptionBudget"));
}

#[test]
fn credentials_secret_has_a_usable_uri() {
    let b = broker("fleet");
    let u = examples().users.into_iter().find(|u| u.name_any() == "sensor-gateway").expect("user");
    let secret = build::user_credentials_secret(&u, &b, "dev:ice@1", "p@ss/w:rd");
    let data = secret.data.expect("data");
    let text = |k: &str| String::from_utf8(data[k].0.clone()).expect("utf8");
    assert_eq!(text("host"), "fleet.default.svc");
    // The mqtts listener (second in the spec) wins over the plain one listed first.
    assert_eq!(text("port"), "8883");
    assert_eq!(text("uri"), "mqtts://dev%3Aice%401:p%40ss%2Fw%3Ard@fleet.default.svc:8883");
    assert_eq!(text("password"), "p@ss/w:rd");
    assert_eq!(secret.metadata.name.as_deref(), Some("sensor-gateway-mqtt-credentials"));

    // Without mqtts: the plain listener, then (WebSocket only) the first listener with its path.
    let uri = |b: &MqttBroker| {
        let s = build::user_credentials_secret(&u, b, "u", "p");
        String::from_utf8(s.data.expect("data")["uri"].0.clone()).expect("utf8")
    };
    let mut plain = broker("fleet");
    plain.spec.listeners.retain(|l| l.protocol != ListenerProtocol::Mqtts);
    assert_eq!(uri(&plain), "mqtt://u:p@fleet.default.svc:1883");
    let mut wss = broker("fleet");
    wss.spec.listeners.retain(|l| l.protocol == ListenerProtocol::Wss);
    assert_eq!(uri(&wss), "wss://u:p@fleet.default.svc:8443/mqtt");
}

#[test]
fn broker_pods_export_traces_only_when_the_operator_has_a_collector() {
    let container = |inputs: &BrokerInputs| {
        let sts: StatefulSet = typed(&plan(inputs), "StatefulSet");
        sts.spec.expect("spec").template.spec.expect("pod spec").containers[0].clone()
    };
    let off = inputs_for(broker("fleet"));
    let names: Vec<String> = container(&off).env.expect("env").into_iter().map(|e| e.name).collect();
    assert_eq!(
        names,
        ["FLEETMQ_NODE_NAME", "FLEETMQ_ADVERTISE_HOST"],
        "no collector configured: no OTEL_* variables"
    );

    let mut on = off.clone();
    on.options.otlp_endpoint = Some("http://otel-collector.observability:4318".into());
    let env = container(&on).env.expect("env");
    let value = |name: &str| env.iter().find(|e| e.name == name).and_then(|e| e.value.clone());
    assert_eq!(
        value("OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
        Some("http://otel-collector.observability:4318")
    );
    let attributes = value("OTEL_RESOURCE_ATTRIBUTES").expect("resource attributes");
    assert!(
        attributes.contains("k8s.statefulset.name=fleet") && attributes.contains("k8s.pod.name=$(POD_NAME)")
    );
    // $(POD_NAME) expands only from a variable defined before it.
    let pod_name = env.iter().position(|e| e.name == "POD_NAME").expect("POD_NAME");
    let attrs_at = env.iter().position(|e| e.name == "OTEL_RESOURCE_ATTRIBUTES").expect("attributes");
    assert!(pod_name < attrs_at);
    assert_eq!(
        env[pod_name].value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.as_str()),
        Some("metadata.name")
    );
}

#[test]
fn every_broker_is_a_cluster_found_through_its_headless_service() {
    let inputs = inputs_for(broker("fleet"));
    let p = plan(&inputs);
    let cluster = p.config.config.cluster.clone().expect("cluster section");
    assert_eq!(cluster.seeds, ["fleet-headless.default.svc:7946"]);
    assert_eq!(cluster.gossip_bind.port(), 7946);
    assert_eq!(cluster.link_bind.port(), 7947);
    assert_eq!(cluster.node_name, None, "from FLEETMQ_NODE_NAME");
    assert_eq!(cluster.advertise_host, None, "from FLEETMQ_ADVERTISE_HOST");
    assert_eq!(
        cluster.secret_file.as_deref(),
        Some(std::path::Path::new("/var/run/secrets/fleetmq/auth/cluster-secret"))
    );
    let secret: k8s_openapi::api::core::v1::Secret = typed(&p, "Secret");
    let data = secret.data.expect("data");
    assert_eq!(data["cluster-secret"].0, b"test-cluster-secret");

    // The pod learns its node name and address from the downward API.
    let sts: StatefulSet = typed(&p, "StatefulSet");
    let container = sts.spec.expect("spec").template.spec.expect("pod").containers[0].clone();
    let env = container.env.expect("env");
    assert_eq!(
        env[0].value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.as_str()),
        Some("metadata.name")
    );
    assert_eq!(env[1].value.as_deref(), Some("$(FLEETMQ_NODE_NAME).fleet-headless.default.svc"));
    let ports: Vec<(String, i32, String)> = container
        .ports
        .expect("ports")
        .into_iter()
        .filter(|p| p.container_port == 7946 || p.container_port == 7947)
        .map(|p| (p.name.unwrap_or_default(), p.container_port, p.protocol.unwrap_or_default()))
        .collect();
    assert_eq!(
        ports,
        [
            ("gossip".to_string(), 7946, "UDP".to_string()),
            ("cluster-link".to_string(), 7947, "TCP".to_string())
        ]
    );

    // Scaling changes neither broker.yaml nor the restart hash: no rolling restart.
    let mut scaled = inputs.clone();
    scaled.broker.spec.replicas = 5;
    let q = plan(&scaled);
    assert_eq!(q.config_hash, p.config_hash);
    assert_eq!(q.restart_hash, p.restart_hash);
}
