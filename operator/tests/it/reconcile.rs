//! The reconcilers against kube-fake-client (an in-memory API server without watches), called
//! directly: create → steady state makes no writes → change a user → only the auth Secret
//! changes and the pod template does not → delete; missing brokers; refused specs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use argon2::password_hash::PasswordVerifier as _;
use fleetmq_operator::conditions::{DEGRADED, READY, reason};
use fleetmq_operator::crd::{AclAccess, AclRule, MqttBridge, MqttBroker, MqttUser};
use fleetmq_operator::metrics::Metrics;
use fleetmq_operator::names;
use fleetmq_operator::reconcile::{self, Context};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use kube_fake_client::{ClientBuilder, interceptor};
use serde_json::{Value, json};

use fleetmq_operator::probe::{BridgeItem, BridgeProbe, Target};
use futures::future::BoxFuture;

use crate::{cheap_hasher, parse};

const NS: &str = "iot";

/// Writes the reconcilers made, as `verb Kind/name`.
type Writes = Arc<Mutex<Vec<String>>>;

fn kind_name(object: &Value, name: Option<&str>) -> String {
    let kind = object["kind"].as_str().unwrap_or("?");
    let name = name.or(object["metadata"]["name"].as_str()).unwrap_or("?");
    format!("{kind}/{name}")
}

async fn fake(objects: Vec<Value>) -> (Client, Writes) {
    let writes: Writes = Arc::default();
    let (w1, w2, w3, w4, w5, w6) =
        (writes.clone(), writes.clone(), writes.clone(), writes.clone(), writes.clone(), writes.clone());
    let record = |w: &Writes, entry: String| w.lock().expect("lock").push(entry);
    let funcs = interceptor::Funcs::new()
        .create(move |ctx| {
            record(&w1, format!("create {}", kind_name(ctx.object, None)));
            Ok(None)
        })
        .update(move |ctx| {
            record(&w2, format!("update {}", kind_name(ctx.object, None)));
            Ok(None)
        })
        .replace(move |ctx| {
            record(&w3, format!("replace {}", kind_name(ctx.object, Some(ctx.name))));
            Ok(None)
        })
        .patch(move |ctx| {
            record(&w4, format!("patch {}", kind_name(ctx.patch, Some(ctx.name))));
            Ok(None)
        })
        .patch_status(move |ctx| {
            record(&w5, format!("status {}", kind_name(ctx.patch, Some(ctx.name))));
            Ok(None)
        })
        .delete(move |ctx| {
            record(&w6, format!("delete {}", ctx.name));
            Ok(None)
        });
    let client = ClientBuilder::new()
        .with_resource::<MqttBroker>()
        .with_resource::<MqttUser>()
        .with_resource::<MqttBridge>()
        .with_status_subresource::<MqttBroker>()
        .with_status_subresource::<MqttUser>()
        .with_status_subresource::<MqttBridge>()
        .with_runtime_objects(objects)
        .with_interceptor_funcs(funcs)
        .build()
        .await
        .expect("fake client");
    (client, writes)
}

fn take(writes: &Writes) -> Vec<String> {
    let mut w = std::mem::take(&mut *writes.lock().expect("lock"));
    w.sort();
    w
}

/// Answers the bridge-state probe from a table (pod name → answer) and records who was asked.
#[derive(Default)]
struct FakeProbe {
    answers: Mutex<BTreeMap<String, Result<Vec<BridgeItem>, String>>>,
    asked: Mutex<Vec<Target>>,
}

impl FakeProbe {
    fn answer(&self, pod: &str, answer: Result<Vec<BridgeItem>, String>) {
        self.answers.lock().expect("lock").insert(pod.to_string(), answer);
    }
}

impl BridgeProbe for FakeProbe {
    fn fetch<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<Vec<BridgeItem>, String>> {
        self.asked.lock().expect("lock").push(target.clone());
        let answer = self.answers.lock().expect("lock").get(&target.pod).cloned();
        Box::pin(async move { answer.unwrap_or_else(|| Err("connection refused".to_string())) })
    }
}

fn ctx_with(client: &Client, probe: Arc<FakeProbe>) -> Arc<Context> {
    Arc::new(Context::new(client.clone(), None, Metrics::new()).with_hasher(cheap_hasher()).with_probe(probe))
}

fn ctx(client: &Client) -> Arc<Context> {
    ctx_with(client, Arc::default())
}

const RESOURCES: &str = r##"
apiVersion: fleetmq.io/v1alpha1
kind: MqttBroker
metadata: {name: edge, namespace: iot}
spec:
  replicas: 2
  listeners: [{name: mqtt, protocol: mqtt, port: 1883}]
---
apiVersion: fleetmq.io/v1alpha1
kind: MqttUser
metadata: {name: gateway, namespace: iot}
spec:
  brokerRef: {name: edge}
  acl: [{topic: "telemetry/#", access: write}]
---
apiVersion: fleetmq.io/v1alpha1
kind: MqttUser
metadata: {name: app, namespace: iot}
spec:
  brokerRef: {name: edge}
  passwordSecretRef: {name: app-password}
  acl: [{topic: "telemetry/#", access: read}]
---
apiVersion: v1
kind: Secret
metadata: {name: app-password, namespace: iot}
data: {password: b2xkLXBhc3N3b3Jk}
"##;

fn objects(yaml: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for de in serde_yaml::Deserializer::from_str(yaml) {
        let v: serde_yaml::Value = serde::Deserialize::deserialize(de).expect("yaml");
        if !v.is_null() {
            out.push(serde_json::to_value(v).expect("json"));
        }
    }
    // Make sure the fixture is also valid for render (same parser as the operator's).
    let _ = parse(yaml);
    out
}

async fn get<K>(client: &Client, name: &str) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), NS).get(name).await.unwrap_or_else(|e| panic!("get {name}: {e}"))
}

async fn reconcile_all(client: &Client, ctx: &Arc<Context>) {
    for name in ["app", "gateway"] {
        reconcile::reconcile_user(Arc::new(get::<MqttUser>(client, name).await), ctx.clone())
            .await
            .expect("user");
    }
    reconcile::reconcile_broker(Arc::new(get::<MqttBroker>(client, "edge").await), ctx.clone())
        .await
        .expect("broker");
}

fn condition<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {conditions:?}"))
}

fn secret_text(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().and_then(|d| d.get(key)).expect("key").0.clone()).expect("utf8")
}

fn password_line(passwords: &str, user: &str) -> String {
    passwords
        .lines()
        .find(|l| l.starts_with(&format!("{user}:")))
        .unwrap_or_else(|| panic!("{user} in {passwords}"))
        .to_string()
}

fn verifies(line: &str, password: &str) -> bool {
    let phc = line.split_once(':').map(|(_, h)| h).expect("user:hash");
    argon2::Argon2::default()
        .verify_password(password.as_bytes(), &argon2::PasswordHash::new(phc).expect("phc"))
        .is_ok()
}

async fn pod_template(client: &Client) -> Value {
    let sts: StatefulSet = get(client, "edge").await;
    serde_json::to_value(sts.spec.expect("spec").template).expect("json")
}

#[tokio::test]
async fn lifecycle_create_steady_change_delete() {
    let (client, writes) = fake(objects(RESOURCES)).await;
    let ctx = ctx(&client);

    // Create.
    reconcile_all(&client, &ctx).await;
    let created = take(&writes);
    for expected in [
        "patch Secret/gateway-mqtt-credentials",
        "patch ConfigMap/edge-config",
        "patch Secret/edge-auth",
        "patch Service/edge-headless",
        "patch Service/edge",
        "patch StatefulSet/edge",
        "patch PodDisruptionBudget/edge",
        "status MqttBroker/edge",
        "status MqttUser/app",
        "status MqttUser/gateway",
    ] {
        assert!(created.contains(&expected.to_string()), "{expected} missing from {created:?}");
    }
    let sts: StatefulSet = get(&client, "edge").await;
    let broker: MqttBroker = get(&client, "edge").await;
    let owner = &sts.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("MqttBroker", broker.uid().as_deref().unwrap_or(""), Some(true))
    );
    let _: ConfigMap = get(&client, "edge-config").await;
    let _: Service = get(&client, "edge-headless").await;
    let _: PodDisruptionBudget = get(&client, "edge").await;

    let status = broker.status.clone().expect("broker status");
    assert_eq!(status.observed_generation, broker.metadata.generation);
    assert_eq!(
        status.selector.as_deref(),
        Some("app.kubernetes.io/instance=edge,app.kubernetes.io/name=fleetmq-broker")
    );
    assert_eq!(status.endpoints[0].url, "mqtt://edge.iot.svc:1883");
    assert!(status.config_hash.is_some());
    // Users, ACLs and the listener are all served: nothing to report.
    let degraded = condition(&status.conditions, DEGRADED);
    assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("False", reason::AS_EXPECTED));
    assert_eq!(condition(&status.conditions, READY).reason, reason::PODS_NOT_READY);

    // The generated password was written once, and both users are in the password file.
    let creds: Secret = get(&client, "gateway-mqtt-credentials").await;
    let generated = secret_text(&creds, "password");
    assert_eq!(generated.len(), 32);
    assert_eq!(secret_text(&creds, "uri"), format!("mqtt://gateway:{generated}@edge.iot.svc:1883"));
    assert_eq!(creds.owner_references()[0].kind, "MqttUser");
    let auth: Secret = get(&client, "edge-auth").await;
    let passwords = secret_text(&auth, names::PASSWORD_FILE_KEY);
    assert!(verifies(&password_line(&passwords, "gateway"), &generated));
    assert!(verifies(&password_line(&passwords, "app"), "old-password"));
    assert!(secret_text(&auth, names::ACL_FILE_KEY).contains("user app\ntopic read telemetry/#\n"));
    let user: MqttUser = get(&client, "gateway").await;
    let user_status = user.status.expect("user status");
    assert_eq!(user_status.credentials_secret.as_deref(), Some("gateway-mqtt-credentials"));
    let ready = condition(&user_status.conditions, READY);
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("True", reason::RENDERED));
    assert_eq!(condition(&user_status.conditions, DEGRADED).status, "False");

    // Steady state: a second (and third) pass writes nothing at all.
    for _ in 0..2 {
        reconcile_all(&client, &ctx).await;
        assert_eq!(take(&writes), Vec::<String>::new(), "steady state must not write");
    }
    let creds_again: Secret = get(&client, "gateway-mqtt-credentials").await;
    assert_eq!(secret_text(&creds_again, "password"), generated, "never regenerated");

    // Rotate the referenced password: only the auth Secret changes.
    let template_before = pod_template(&client).await;
    let config_before: ConfigMap = get(&client, "edge-config").await;
    let mut pw: Secret = get(&client, "app-password").await;
    pw.data = Some(BTreeMap::from([("password".to_string(), ByteString(b"new-password".to_vec()))]));
    Api::<Secret>::namespaced(client.clone(), NS)
        .replace("app-password", &PostParams::default(), &pw)
        .await
        .expect("rotate");
    take(&writes);
    reconcile_all(&client, &ctx).await;
    assert_eq!(take(&writes), ["patch Secret/edge-auth"]);
    let auth: Secret = get(&client, "edge-auth").await;
    let passwords = secret_text(&auth, names::PASSWORD_FILE_KEY);
    assert!(verifies(&password_line(&passwords, "app"), "new-password"));
    assert!(!verifies(&password_line(&passwords, "app"), "old-password"));
    assert_eq!(pod_template(&client).await, template_before, "a password change does not roll pods");

    // Change a user's ACL: again only the auth Secret.
    let users: Api<MqttUser> = Api::namespaced(client.clone(), NS);
    let mut gateway: MqttUser = get(&client, "gateway").await;
    gateway.spec.acl.push(AclRule { topic: "commands/gateway/#".into(), access: AclAccess::Read });
    users.replace("gateway", &PostParams::default(), &gateway).await.expect("edit user");
    take(&writes);
    reconcile_all(&client, &ctx).await;
    let w = take(&writes);
    assert!(w.contains(&"patch Secret/edge-auth".to_string()), "{w:?}");
    assert!(w.iter().all(|e| e == "patch Secret/edge-auth" || e == "status MqttUser/gateway"), "{w:?}");
    assert_eq!(pod_template(&client).await, template_before, "an ACL change does not roll pods");
    let config_after: ConfigMap = get(&client, "edge-config").await;
    assert_eq!(config_after.data, config_before.data);

    // A limit is hot-reloadable: the ConfigMap (and status configHash) change, not the pods.
    let brokers: Api<MqttBroker> = Api::namespaced(client.clone(), NS);
    brokers
        .patch(
            "edge",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"limits": {"maxInflight": 8}}})),
        )
        .await
        .expect("edit limits");
    take(&writes);
    reconcile_all(&client, &ctx).await;
    assert_eq!(take(&writes), ["patch ConfigMap/edge-config", "status MqttBroker/edge"]);
    assert_eq!(pod_template(&client).await, template_before, "a limit change does not roll pods");

    // A listener change needs a restart: the pod-template hash changes.
    brokers
        .patch(
            "edge",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"listeners": [{"name": "mqtt", "protocol": "mqtt", "port": 1884}]}}),
            ),
        )
        .await
        .expect("edit listeners");
    take(&writes);
    reconcile_all(&client, &ctx).await;
    let w = take(&writes);
    assert!(w.contains(&"patch StatefulSet/edge".to_string()), "{w:?}");
    let template_after = pod_template(&client).await;
    let hash = |t: &Value| t["metadata"]["annotations"][names::RESTART_HASH_ANNOTATION].clone();
    assert_ne!(hash(&template_after), hash(&template_before));

    // Delete the broker: its users report BrokerNotFound instead of failing.
    brokers.delete("edge", &DeleteParams::default()).await.expect("delete");
    for name in ["app", "gateway"] {
        let action =
            reconcile::reconcile_user(Arc::new(get::<MqttUser>(&client, name).await), ctx.clone()).await;
        assert!(action.is_ok(), "{action:?}");
        let user: MqttUser = get(&client, name).await;
        let ready = condition(&user.status.as_ref().expect("status").conditions, READY).clone();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", reason::BROKER_NOT_FOUND));
    }
}

#[tokio::test]
async fn users_and_bridges_of_a_missing_broker_are_not_ready() {
    let yaml = r##"
apiVersion: fleetmq.io/v1alpha1
kind: MqttUser
metadata: {name: orphan, namespace: iot}
spec:
  brokerRef: {name: nowhere}
---
apiVersion: fleetmq.io/v1alpha1
kind: MqttBridge
metadata: {name: lost, namespace: iot}
spec:
  brokerRef: {name: nowhere}
  remote: {addresses: ["remote:1883"]}
  topics: [{pattern: "#", direction: out}]
"##;
    let (client, writes) = fake(objects(yaml)).await;
    let ctx = ctx(&client);
    reconcile::reconcile_user(Arc::new(get::<MqttUser>(&client, "orphan").await), ctx.clone())
        .await
        .expect("no error loop");
    reconcile::reconcile_bridge(Arc::new(get::<MqttBridge>(&client, "lost").await), ctx.clone())
        .await
        .expect("no error loop");
    let user: MqttUser = get(&client, "orphan").await;
    let bridge: MqttBridge = get(&client, "lost").await;
    for conditions in [&user.status.expect("status").conditions, &bridge.status.expect("status").conditions] {
        let ready = condition(conditions, READY);
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", reason::BROKER_NOT_FOUND));
        assert!(ready.message.contains("nowhere"), "{}", ready.message);
    }
    // No credentials Secret for a user without a broker (no host to point it at).
    assert_eq!(take(&writes), ["status MqttBridge/lost", "status MqttUser/orphan"]);
    // And again: same status, no write.
    reconcile::reconcile_user(Arc::new(get::<MqttUser>(&client, "orphan").await), ctx.clone())
        .await
        .expect("ok");
    reconcile::reconcile_bridge(Arc::new(get::<MqttBridge>(&client, "lost").await), ctx.clone())
        .await
        .expect("ok");
    assert_eq!(take(&writes), Vec::<String>::new());
}

#[tokio::test]
async fn refused_broker_creates_nothing_and_says_why() {
    let yaml = r##"
apiVersion: fleetmq.io/v1alpha1
kind: MqttBroker
metadata: {name: bad, namespace: iot}
spec:
  listeners: [{name: mqtts, protocol: mqtts, port: 8883}]
"##;
    let (client, writes) = fake(objects(yaml)).await;
    let ctx = ctx(&client);
    reconcile::reconcile_broker(Arc::new(get::<MqttBroker>(&client, "bad").await), ctx.clone())
        .await
        .expect("refusal is not an error");
    assert_eq!(take(&writes), ["status MqttBroker/bad"]);
    let broker: MqttBroker = get(&client, "bad").await;
    let ready = condition(&broker.status.expect("status").conditions, READY).clone();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", reason::INVALID_SPEC));
    assert!(ready.message.contains("spec.tls"), "{}", ready.message);
}

#[tokio::test]
async fn websocket_only_broker_is_served() {
    let yaml = r##"
apiVersion: fleetmq.io/v1alpha1
kind: MqttBroker
metadata: {name: wsonly, namespace: iot}
spec:
  listeners: [{name: ws, protocol: ws, port: 8080}]
"##;
    let (client, writes) = fake(objects(yaml)).await;
    let ctx = ctx(&client);
    reconcile::reconcile_broker(Arc::new(get::<MqttBroker>(&client, "wsonly").await), ctx.clone())
        .await
        .expect("ok");
    assert!(take(&writes).contains(&"patch StatefulSet/wsonly".to_string()));
    let broker: MqttBroker = get(&client, "wsonly").await;
    let status = broker.status.expect("status");
    assert_eq!(condition(&status.conditions, DEGRADED).reason, reason::AS_EXPECTED);
    assert_eq!(status.endpoints[0].url, "ws://wsonly.iot.svc:8080/mqtt");
    let config: ConfigMap = get(&client, "wsonly-config").await;
    let yaml = config.data.expect("data")[names::CONFIG_KEY].clone();
    let parsed = fleetmq_config::BrokerConfig::from_yaml_str(&yaml, "broker.yaml").expect("parses");
    assert_eq!(parsed.listeners[0].protocol, fleetmq_config::ListenerProtocol::Ws);
    assert_eq!(parsed.listeners[0].ws_path(), "/mqtt");
}

#[tokio::test]
async fn username_conflicts_and_missing_secrets_are_reported_per_user() {
    let yaml = r##"
apiVersion: fleetmq.io/v1alpha1
kind: MqttBroker
metadata: {name: edge, namespace: iot}
spec: {}
---
apiVersion: fleetmq.io/v1alpha1
kind: MqttUser
metadata: {name: a-first, namespace: iot}
spec: {brokerRef: {name: edge}, username: shared}
---
apiVersion: fleetmq.io/v1alpha1
kind: MqttUser
metadata: {name: b-second, namespace: iot}
spec: {brokerRef: {name: edge}, username: shared}
---
apiVersion: fleetmq.io/v1alpha1
kind: MqttUser
metadata: {name: no-secret, namespace: iot}
spec: {brokerRef: {name: edge}, passwordSecretRef: {name: absent}}
"##;
    let (client, _writes) = fake(objects(yaml)).await;
    let ctx = ctx(&client);
    for name in ["a-first", "b-second", "no-secret"] {
        reconcile::reconcile_user(Arc::new(get::<MqttUser>(&client, name).await), ctx.clone())
            .await
            .expect("ok");
    }
    reconcile::reconcile_broker(Arc::new(get::<MqttBroker>(&client, "edge").await), ctx.clone())
        .await
        .expect("ok");
    let reason_of =
        |u: &MqttUser| condition(&u.status.as_ref().expect("status").conditions, READY).reason.clone();
    assert_eq!(reason_of(&get(&client, "a-first").await), reason::RENDERED);
    assert_eq!(reason_of(&get(&client, "b-second").await), reason::USERNAME_CONFLICT);
    assert_eq!(reason_of(&get(&client, "no-secret").await), reason::SECRET_NOT_FOUND);
    let auth: Secret = get(&client, "edge-auth").await;
    let passwords = secret_text(&auth, names::PASSWORD_FILE_KEY);
    assert_eq!(
        passwords.lines().filter(|l| !l.starts_with('#')).count(),
        1,
        "only a-first is rendered: {passwords}"
    );
    assert!(passwords.contains("\nshared:$argon2id$"));
}

const TLS_RESOURCES: &str = r##"
apiVersion: fleetmq.io/v1alpha1
kind: MqttBroker
metadata: {name: secure, namespace: iot}
spec:
  listeners:
    - {name: mqtt, protocol: mqtt, port: 1883}
    - {name: mqtts, protocol: mqtts, port: 8883}
    - {name: wss, protocol: wss, port: 8443}
  tls: {secretName: secure-cert}
---
apiVersion: v1
kind: Secret
metadata: {name: secure-cert, namespace: iot}
type: kubernetes.io/tls
data: {tls.crt: Y2VydC0x, tls.key: a2V5LTE=}
---
apiVersion: fleetmq.io/v1alpha1
kind: MqttUser
metadata: {name: device, namespace: iot}
spec:
  brokerRef: {name: secure}
  acl: [{topic: "devices/#", access: readwrite}]
---
apiVersion: fleetmq.io/v1alpha1
kind: MqttBridge
metadata: {name: upstream, namespace: iot}
spec:
  brokerRef: {name: secure}
  remote: {addresses: ["cloud.example.com:8883"]}
  topics: [{pattern: "#", direction: out}]
"##;

async fn reconcile_secure(client: &Client, ctx: &Arc<Context>) {
    reconcile::reconcile_user(Arc::new(get::<MqttUser>(client, "device").await), ctx.clone())
        .await
        .expect("user");
    reconcile::reconcile_broker(Arc::new(get::<MqttBroker>(client, "secure").await), ctx.clone())
        .await
        .expect("broker");
}

async fn secure_template(client: &Client) -> Value {
    let sts: StatefulSet = get(client, "secure").await;
    serde_json::to_value(sts.spec.expect("spec").template).expect("json")
}

/// TLS listeners are served from the mounted certificate: renewing the certificate or changing
/// a user rolls nothing, changing the TLS settings of the listeners does; only the bridge is
/// reported as not served.
#[tokio::test]
async fn tls_broker_reloads_certificates_and_users_but_restarts_for_listener_settings() {
    let (client, writes) = fake(objects(TLS_RESOURCES)).await;
    let ctx = ctx(&client);
    reconcile_secure(&client, &ctx).await;
    take(&writes);

    // The config's TLS files are in the volume of the user's Secret.
    let config: ConfigMap = get(&client, "secure-config").await;
    let yaml = config.data.expect("data")[names::CONFIG_KEY].clone();
    let parsed = fleetmq_config::BrokerConfig::from_yaml_str(&yaml, "broker.yaml").expect("parses");
    let tls: Vec<_> = parsed.listeners.iter().filter_map(|l| l.tls.clone()).collect();
    assert_eq!(tls.len(), 2, "mqtts and wss");
    for t in &tls {
        assert_eq!(t.cert_file, std::path::Path::new(names::TLS_DIR).join("tls.crt"));
        assert_eq!(t.key_file, std::path::Path::new(names::TLS_DIR).join("tls.key"));
    }
    let template = secure_template(&client).await;
    let volumes = template["spec"]["volumes"].as_array().expect("volumes");
    assert!(volumes.iter().any(|v| v["name"] == "tls" && v["secret"]["secretName"] == "secure-cert"));

    // Everything, the bridge included, is served: nothing is degraded.
    let broker: MqttBroker = get(&client, "secure").await;
    let degraded = condition(&broker.status.expect("status").conditions, DEGRADED).clone();
    assert_eq!(degraded.status.as_str(), "False", "{}", degraded.message);
    let parsed_bridges: Vec<&str> = parsed.bridges.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(parsed_bridges, ["upstream"]);

    // The generated credentials point at the TLS listener.
    let creds: Secret = get(&client, "device-mqtt-credentials").await;
    let password = secret_text(&creds, "password");
    assert_eq!(secret_text(&creds, "uri"), format!("mqtts://device:{password}@secure.iot.svc:8883"));
    assert_eq!(secret_text(&creds, "port"), "8883");

    // Renew the certificate (what cert-manager or a person does to the Secret): the operator
    // writes nothing, so no pod restarts; the broker re-reads the mounted files.
    let hash = |t: &Value| t["metadata"]["annotations"][names::RESTART_HASH_ANNOTATION].clone();
    let mut cert: Secret = get(&client, "secure-cert").await;
    cert.data = Some(BTreeMap::from([
        ("tls.crt".to_string(), ByteString(b"cert-2".to_vec())),
        ("tls.key".to_string(), ByteString(b"key-2".to_vec())),
    ]));
    Api::<Secret>::namespaced(client.clone(), NS)
        .replace("secure-cert", &PostParams::default(), &cert)
        .await
        .expect("renew");
    take(&writes);
    reconcile_secure(&client, &ctx).await;
    assert_eq!(take(&writes), Vec::<String>::new(), "a renewed certificate needs no write");
    assert_eq!(secure_template(&client).await, template);

    // A user's ACL changes: the auth Secret only.
    let mut device: MqttUser = get(&client, "device").await;
    device.spec.acl.push(AclRule { topic: "firmware/#".into(), access: AclAccess::Read });
    Api::<MqttUser>::namespaced(client.clone(), NS)
        .replace("device", &PostParams::default(), &device)
        .await
        .expect("edit user");
    take(&writes);
    reconcile_secure(&client, &ctx).await;
    let w = take(&writes);
    assert!(w.contains(&"patch Secret/secure-auth".to_string()), "{w:?}");
    assert!(w.iter().all(|e| e == "patch Secret/secure-auth" || e.starts_with("status ")), "{w:?}");
    assert_eq!(secure_template(&client).await, template, "a user change does not roll pods");

    // Mutual TLS changes the listeners' TLS settings: the restart hash changes.
    Api::<MqttBroker>::namespaced(client.clone(), NS)
        .patch(
            "secure",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"tls": {"requireClientCertificate": true}}})),
        )
        .await
        .expect("edit tls");
    take(&writes);
    reconcile_secure(&client, &ctx).await;
    let w = take(&writes);
    assert!(w.contains(&"patch ConfigMap/secure-config".to_string()), "{w:?}");
    assert!(w.contains(&"patch StatefulSet/secure".to_string()), "{w:?}");
    assert_ne!(hash(&secure_template(&client).await), hash(&template));
}

#[tokio::test]
async fn bridge_status_shows_the_live_state_from_every_pod() {
    let yaml = r##"
apiVersion: fleetmq.io/v1alpha1
kind: MqttBroker
metadata: {name: edge, namespace: iot}
spec:
  listeners: [{name: mqtt, protocol: mqtt, port: 1883}]
  metrics: {enabled: true, port: 9100}
---
apiVersion: fleetmq.io/v1alpha1
kind: MqttBridge
metadata: {name: cloud, namespace: iot}
spec:
  brokerRef: {name: edge}
  remote: {addresses: ["cloud.example.com:8883"]}
  topics: [{pattern: "sensors/#", direction: out, qos: 1}]
"##;
    let (client, writes) = fake(objects(yaml)).await;
    let probe = Arc::new(FakeProbe::default());
    let ctx = ctx_with(&client, probe.clone());
    let reconcile_bridge = || async {
        reconcile::reconcile_bridge(Arc::new(get::<MqttBridge>(&client, "cloud").await), ctx.clone())
            .await
            .expect("bridge")
    };

    // Before the broker is reconciled there is no admin token: nobody is asked, no state.
    reconcile_bridge().await;
    assert!(probe.asked.lock().expect("lock").is_empty());
    let status = get::<MqttBridge>(&client, "cloud").await.status.expect("status");
    assert_eq!(status.state, None);

    // The broker's auth Secret gets a generated admin token, and broker.yaml points at it.
    reconcile::reconcile_broker(Arc::new(get::<MqttBroker>(&client, "edge").await), ctx.clone())
        .await
        .expect("broker");
    let auth: Secret = get(&client, &names::auth_secret("edge")).await;
    let token = secret_text(&auth, names::ADMIN_TOKEN_KEY);
    assert_eq!(token.len(), 32, "{token}");
    let cm: ConfigMap = get(&client, &names::config_map("edge")).await;
    let config = cm.data.expect("data")[names::CONFIG_KEY].clone();
    assert!(config.contains("admin_token_file: /var/run/secrets/fleetmq/auth/admin-token"), "{config}");
    // Kept on later reconciles (not regenerated, no Secret write).
    take(&writes);
    reconcile::reconcile_broker(Arc::new(get::<MqttBroker>(&client, "edge").await), ctx.clone())
        .await
        .expect("broker");
    assert!(!take(&writes).iter().any(|w| w.contains("Secret/")));
    assert_eq!(secret_text(&get(&client, &names::auth_secret("edge")).await, names::ADMIN_TOKEN_KEY), token);

    // The remote is down on the pod: state backoff, the error, and Degraded says so.
    probe.answer(
        "edge-0",
        Ok(vec![BridgeItem {
            name: "cloud".into(),
            state: "backoff".into(),
            last_error: Some("cloud.example.com:8883: connection refused".into()),
            queue_depth: 7,
        }]),
    );
    reconcile_bridge().await;
    let asked = probe.asked.lock().expect("lock").clone();
    assert_eq!(
        asked,
        [Target {
            pod: "edge-0".into(),
            host: "edge-0.edge-headless.iot.svc".into(),
            port: 9100,
            token: token.clone()
        }]
    );
    let status = get::<MqttBridge>(&client, "cloud").await.status.expect("status");
    assert_eq!(status.state.as_deref(), Some("backoff"));
    assert_eq!(status.last_error.as_deref(), Some("cloud.example.com:8883: connection refused"));
    assert_eq!(status.pods.len(), 1);
    assert_eq!(status.pods[0].queue_depth, Some(7));
    let degraded = condition(&status.conditions, DEGRADED);
    assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", reason::BRIDGE_NOT_CONNECTED));
    assert!(degraded.message.contains("edge-0: backoff"), "{}", degraded.message);
    assert_eq!(condition(&status.conditions, READY).status, "True");
    // Polling again with the same answer writes nothing.
    take(&writes);
    reconcile_bridge().await;
    assert_eq!(take(&writes), Vec::<String>::new());

    // Connected: Degraded clears.
    probe.answer(
        "edge-0",
        Ok(vec![BridgeItem {
            name: "cloud".into(),
            state: "connected".into(),
            last_error: None,
            queue_depth: 0,
        }]),
    );
    reconcile_bridge().await;
    let status = get::<MqttBridge>(&client, "cloud").await.status.expect("status");
    assert_eq!(status.state.as_deref(), Some("connected"));
    // (`lastError` is left out of the applied status now, which server-side apply removes; the
    // fake applies it as a merge patch, which keeps the old value, so it is not checked here.)
    assert_eq!(status.pods[0].last_error, None);
    assert_eq!(condition(&status.conditions, DEGRADED).status, "False");

    // Scaled to 2: both pods are asked (each runs its own bridge); one that does not answer is
    // listed as unreachable but does not make the bridge degraded.
    let brokers: Api<MqttBroker> = Api::namespaced(client.clone(), NS);
    brokers
        .patch("edge", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 2}})))
        .await
        .expect("scale");
    probe.asked.lock().expect("lock").clear();
    reconcile_bridge().await;
    let pods: Vec<String> = probe.asked.lock().expect("lock").iter().map(|t| t.pod.clone()).collect();
    assert_eq!(pods, ["edge-0", "edge-1"]);
    let status = get::<MqttBridge>(&client, "cloud").await.status.expect("status");
    assert_eq!(status.pods[1].state, "unreachable");
    assert_eq!(status.state.as_deref(), Some("connected"));
    assert_eq!(condition(&status.conditions, DEGRADED).status, "False");
}
