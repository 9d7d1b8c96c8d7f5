//! Pure builder tests from YAML fixtures: the restart-vs-reload rule, pod hardening, probes,
//! volumes, graceful shutdown, determinism, and the broker-config round trip.

use std::collections::BTreeMap;

use fleetmq_config::BrokerConfig;
use fleetmq_operator::auth::{Credential, UserEntry};
use fleetmq_operator::build::{self, BrokerInputs, BrokerPlan, BuildOptions};
use fleetmq_operator::crd::{AclAccess, AclRule, MqttBroker};
use fleetmq_operator::inputs::{self, Missing};
use fleetmq_operator::{config, names};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ConfigMap;
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

    // A bridge goes away: only the auth Secret.
    let mut bridges = base_inputs.clone();
    bridges.bridges.clear();
    assert_eq!(changed(&base, &plan(&bridges)), ["Secret/fleet-auth"]);

    // Limits: only the ConfigMap.
    let mut limits = base_inputs.clone();
    limits.broker.spec.limits.max_inflight = Some(7);
    limits.broker.spec.limits.max_connections = Some(9);
    assert_eq!(changed(&base, &plan(&limits)), ["ConfigMap/fleet-config"]);

    // Certificate settings: only the Certificate (cert-manager renews the Secret in place).
    let mut cert = base_inputs.clone();
    cert.broker.spec.tls.as_mut().expect("tls").dns_names.push("other.example.com".into());
    assert_eq!(changed(&base, &plan(&cert)), ["Certificate/fleet-tls"]);

    for variant in [&acl, &users, &bridges, &limits, &cert] {
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
    for (what, variant) in variants {
        let p = plan(&variant);
        assert_ne!(p.restart_hash, base.restart_hash, "{what} must change the restart hash");
        assert_eq!(annotation(&p).as_deref(), Some(p.restart_hash.as_str()), "{what}");
        assert!(changed(&base, &p).contains(&"StatefulSet/fleet".to_string()), "{what}");
    }
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
fn probes_are_tcp_on_the_mqtt_listener() {
    let p = plan(&inputs_for(broker("fleet")));
    let sts: StatefulSet = typed(&p, "StatefulSet");
    let c = sts.spec.expect("spec").template.spec.expect("pod").containers[0].clone();
    for probe in [c.liveness_probe.expect("liveness"), c.readiness_probe.expect("readiness")] {
        let tcp = probe.tcp_socket.expect("tcp probe until the broker has /healthz");
        assert_eq!(
            tcp.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("mqtt".into())
        );
        assert!(probe.http_get.is_none());
    }
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
    // preStop sleep 5 s + shutdown_timeout 10 s (from the example) + 5 s margin.
    assert_eq!(pod.termination_grace_period_seconds, Some(20));
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
    }
}

#[test]
fn unsupported_features_are_named() {
    let p = plan(&inputs_for(broker("fleet")));
    let fields: Vec<&str> = p.config.unsupported.iter().map(|u| u.field.as_str()).collect();
    for expected in [
        "spec.listeners[1]",
        "spec.listeners[2]",
        "spec.tls",
        "spec.auth",
        "spec.metrics",
        "MqttBridge cloud",
    ] {
        assert!(fields.contains(&expected), "{expected} missing from {fields:?}");
    }
    // The minimal example asks for nothing the broker lacks.
    assert!(plan(&inputs_for(broker("minimal"))).config.unsupported.is_empty());
}

#[test]
fn a_broker_without_a_plain_mqtt_listener_is_refused_by_name() {
    let mut b = broker("fleet");
    b.spec.listeners.retain(|l| l.protocol != fleetmq_operator::crd::ListenerProtocol::Mqtt);
    let err = config::broker_config(&b.spec, &[], &[]).expect_err("no servable listener");
    assert_eq!(err.field, "spec.listeners");
    assert!(err.message.contains("protocol mqtt"), "{err}");
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
    // Plain MQTT until the broker serves TLS.
    assert_eq!(text("port"), "1883");
    assert_eq!(text("uri"), "mqtt://dev%3Aice%401:p%40ss%2Fw%3Ard@fleet.default.svc:1883");
    assert_eq!(text("password"), "p@ss/w:rd");
    assert_eq!(secret.metadata.name.as_deref(), Some("sensor-gateway-mqtt-credentials"));
}
