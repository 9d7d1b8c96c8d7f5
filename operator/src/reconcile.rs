//! Reconcilers for MqttBroker, MqttUser and MqttBridge: fetch → validate → build → apply →
//! status. They are plain async functions of (object, context) so tests call them directly
//! against an in-memory API; [`crate::controller`] runs them from watches.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::apply::{self, Outcome};
use crate::auth::{self, PasswordHasher};
use crate::build::{self, BrokerInputs, BuildError, BuildOptions};
use crate::conditions::{self, Cond, DEGRADED, PROGRESSING, READY, reason};
use crate::crd::{MqttBridge, MqttBridgeStatus, MqttBroker, MqttBrokerStatus, MqttUser, MqttUserStatus};
use crate::error::Error;
use crate::inputs::{self, Missing, Problem};
use crate::metrics::Metrics;
use crate::names;
use crate::probe::{self, BridgeProbe, HttpProbe, PodReport, Target};
use crate::validate;

/// Requeue interval when everything is settled (drift correction; watches do the rest).
pub const RESYNC: Duration = Duration::from_secs(300);
/// Requeue interval while pods are rolling or a referenced Secret is missing.
pub const SHORT_REQUEUE: Duration = Duration::from_secs(15);
/// How often a bridge's live state is read from the broker pods (status writes only on change).
pub const BRIDGE_POLL: Duration = Duration::from_secs(30);

/// Shared state of the reconcilers.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Event recorder; `None` disables events (tests that count writes).
    pub recorder: Option<Recorder>,
    /// argon2id with a memo.
    pub hasher: PasswordHasher,
    /// Broker image when `spec.image` is unset.
    pub default_image: String,
    /// OTLP collector for the broker pods' traces, if any.
    pub otlp_endpoint: Option<String>,
    /// Operator metrics.
    pub metrics: Metrics,
    /// Reads bridges' live state from the broker pods.
    pub probe: Arc<dyn BridgeProbe>,
    failures: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("default_image", &self.default_image).finish_non_exhaustive()
    }
}

impl Context {
    /// A context with the default argon2 parameters and image.
    pub fn new(client: Client, recorder: Option<Recorder>, metrics: Metrics) -> Self {
        Context {
            client,
            recorder,
            hasher: PasswordHasher::default(),
            default_image: build::DEFAULT_IMAGE.to_string(),
            otlp_endpoint: None,
            metrics,
            probe: Arc::new(HttpProbe),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Replaces the password hasher (tests use cheaper argon2 parameters).
    pub fn with_hasher(mut self, hasher: PasswordHasher) -> Self {
        self.hasher = hasher;
        self
    }

    /// Replaces the default broker image.
    pub fn with_default_image(mut self, image: impl Into<String>) -> Self {
        self.default_image = image.into();
        self
    }

    /// Makes broker pods export traces to this OTLP collector.
    pub fn with_otlp_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.otlp_endpoint = Some(endpoint.into());
        self
    }

    /// Replaces the bridge-state probe (tests answer without a network).
    pub fn with_probe(mut self, probe: Arc<dyn BridgeProbe>) -> Self {
        self.probe = probe;
        self
    }

    /// Exponential backoff for a failing object: 5 s, 10 s, 20 s, ... up to 5 min.
    pub fn backoff(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key.to_string()).or_insert(0);
        let delay = Duration::from_secs(5u64.saturating_mul(1u64 << (*n).min(6))).min(RESYNC);
        *n = n.saturating_add(1);
        delay
    }

    /// Forgets the failures of an object after a successful reconcile.
    pub fn reset_backoff(&self, key: &str) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let Some(recorder) = &self.recorder else { return };
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".to_string(),
            secondary: None,
        };
        // Events are best effort: a failure is logged, never fails the reconcile.
        if let Err(err) = recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(%err, reason, "could not publish event");
        }
    }
}

/// Backoff key of an object.
pub fn object_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

fn namespace<K: Resource<DynamicType = ()>>(obj: &K) -> Result<String, Error> {
    obj.meta().namespace.clone().ok_or_else(|| Error::NoNamespace(object_key(obj)))
}

/// Writes `status` through server-side apply on the status subresource, unless unchanged.
async fn write_status<K>(
    api: &Api<K>,
    obj: &K,
    status: serde_json::Value,
    unchanged: bool,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if unchanged {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.meta().name.clone().unwrap_or_default(),
        &PatchParams::apply(names::FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Whether `group_version` serves `plural` (e.g. cert-manager's certificates).
pub async fn api_served(client: &Client, group_version: &str, plural: &str) -> bool {
    match client.list_api_group_resources(group_version).await {
        Ok(list) => list.resources.iter().any(|r| r.name == plural),
        Err(_) => false,
    }
}

// ---------------------------------------------------------------------------------------------
// MqttBroker
// ---------------------------------------------------------------------------------------------

/// Reconciles one MqttBroker.
pub async fn reconcile_broker(broker: Arc<MqttBroker>, ctx: Arc<Context>) -> Result<Action, Error> {
    let timer = ctx.metrics.reconcile("mqttbroker");
    let result = reconcile_broker_inner(&broker, &ctx).await;
    timer.finish(result.as_ref().err().map(Error::metric_label));
    if result.is_ok() {
        ctx.reset_backoff(&object_key(broker.as_ref()));
    }
    result
}

async fn reconcile_broker_inner(broker: &MqttBroker, ctx: &Context) -> Result<Action, Error> {
    let ns = namespace(broker)?;
    let name = broker.name_any();
    let client = &ctx.client;
    let brokers: Api<MqttBroker> = Api::namespaced(client.clone(), &ns);
    let existing = broker.status.clone().unwrap_or_default();
    let generation = broker.metadata.generation;

    // Validate (pure). A refused spec changes nothing in the cluster.
    let errors = validate::validate_broker(&broker.spec);
    if !errors.is_empty() {
        let message = validate::summary(&errors);
        refuse_broker(ctx, &brokers, broker, &existing, reason::INVALID_SPEC, message).await?;
        return Ok(Action::await_change());
    }

    // Fetch what the broker's files are made of.
    let users = Api::<MqttUser>::namespaced(client.clone(), &ns).list(&ListParams::default()).await?.items;
    let bridges =
        Api::<MqttBridge>::namespaced(client.clone(), &ns).list(&ListParams::default()).await?.items;
    let wanted =
        inputs::referenced_secrets(&inputs::users_of(&name, &users), &inputs::bridges_of(&name, &bridges));
    let secrets_api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let mut secrets = BTreeMap::new();
    for secret in wanted {
        if let Some(found) = secrets_api.get_opt(&secret).await? {
            secrets.insert(secret, found);
        }
    }
    let users = inputs::resolve_users(&name, &users, &secrets, Missing::Skip);
    let bridges = inputs::resolve_bridges(&name, &bridges, &secrets, Missing::Skip);

    let mut degraded: Vec<(&'static str, String)> = Vec::new();
    let wants_sm = broker
        .spec
        .metrics
        .as_ref()
        .is_some_and(|m| m.enabled && m.service_monitor.as_ref().is_some_and(|s| s.enabled));
    let service_monitor_served =
        wants_sm && api_served(client, "monitoring.coreos.com/v1", "servicemonitors").await;
    if wants_sm && !service_monitor_served {
        degraded.push((
            reason::SERVICE_MONITOR_MISSING,
            "spec.metrics.serviceMonitor: the monitoring.coreos.com/v1 ServiceMonitor API is not served; none created".to_string(),
        ));
    }
    let wants_certificate = broker.spec.tls.as_ref().is_some_and(|t| t.issuer_ref.is_some());
    let certificate_served =
        wants_certificate && api_served(client, "cert-manager.io/v1", "certificates").await;
    if wants_certificate && !certificate_served {
        degraded.push((
            reason::CERT_MANAGER_MISSING,
            "spec.tls.issuerRef: the cert-manager.io/v1 Certificate API is not served; install cert-manager or use spec.tls.secretName".to_string(),
        ));
    }

    // The admin token and the cluster secret are generated once and then kept: they live only
    // in the auth Secret, which the builder otherwise derives from the users and bridges alone.
    let live_auth = secrets_api.get_opt(&names::auth_secret(&name)).await?;
    let kept = |key: &str| -> Result<String, Error> {
        match live_auth.as_ref().and_then(|s| inputs::secret_value(s, key)).filter(|v| !v.trim().is_empty()) {
            Some(value) => Ok(value),
            None => Ok(auth::generate_password()?),
        }
    };
    let admin_token = kept(names::ADMIN_TOKEN_KEY)?;
    let cluster_secret = kept(names::CLUSTER_SECRET_KEY)?;

    // Build (pure).
    let plan_inputs = BrokerInputs {
        broker: broker.clone(),
        users: users.entries,
        bridges: bridges.entries,
        admin_token: auth::SecretValue::Known(admin_token),
        cluster_secret: auth::SecretValue::Known(cluster_secret),
        options: BuildOptions {
            default_image: ctx.default_image.clone(),
            service_monitor_served,
            otlp_endpoint: ctx.otlp_endpoint.clone(),
        },
    };
    let plan = match build::plan_broker(&plan_inputs, &ctx.hasher) {
        Ok(plan) => plan,
        Err(BuildError::Config(refused)) => {
            refuse_broker(
                ctx,
                &brokers,
                broker,
                &existing,
                reason::UNSUPPORTED_BY_BROKER,
                refused.to_string(),
            )
            .await?;
            return Ok(Action::await_change());
        }
        Err(err) => return Err(err.into()),
    };

    // Apply.
    let mut changes = Vec::new();
    for desired in &plan.objects {
        if desired.resource.kind == "Certificate" && !certificate_served {
            continue;
        }
        let live = apply::get_live(client, desired).await?;
        if let Some(message) = live.as_ref().and_then(|live| apply::immutable_change(desired, live)) {
            degraded.push((reason::IMMUTABLE_FIELD_CHANGED, message));
            continue;
        }
        match apply::apply_with_live(client, desired, live.as_ref()).await {
            Ok(Outcome::Created) => changes.push(format!("created {}", desired.describe())),
            Ok(Outcome::Updated) => changes.push(format!("updated {}", desired.describe())),
            Ok(Outcome::Unchanged) => {}
            Err(err) => {
                ctx.event(
                    broker,
                    EventType::Warning,
                    reason::APPLY_FAILED,
                    format!("{}: {err}", desired.describe()),
                )
                .await;
                return Err(err.into());
            }
        }
    }
    for change in &changes {
        let reason = if change.starts_with("created") { "Created" } else { "Updated" };
        ctx.event(broker, EventType::Normal, reason, change.clone()).await;
    }

    // Status.
    let sts = Api::<StatefulSet>::namespaced(client.clone(), &ns).get_opt(&name).await?;
    let sts_status = sts.as_ref().and_then(|s| s.status.clone());
    let replicas = sts_status.as_ref().map(|s| s.replicas).unwrap_or(0);
    let ready = sts_status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
    let want = broker.spec.replicas;
    let rolling = match (&sts, &sts_status) {
        (Some(sts), Some(st)) => {
            st.observed_generation < sts.metadata.generation
                || st.updated_replicas.unwrap_or(0) < want
                || replicas != want
                || (st.update_revision.is_some() && st.current_revision != st.update_revision)
        }
        _ => true,
    };
    if !plan.config.unsupported.is_empty() {
        let list = plan.config.unsupported.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        degraded.insert(
            0,
            (
                reason::UNSUPPORTED_BY_BROKER,
                format!("reconciled in Kubernetes but not yet served by the broker: {list}"),
            ),
        );
    }
    let mut conds = vec![
        if ready >= want {
            Cond::new(READY, true, reason::AVAILABLE, format!("{ready}/{want} pods ready"))
        } else {
            Cond::new(READY, false, reason::PODS_NOT_READY, format!("{ready}/{want} pods ready"))
        },
        if rolling {
            Cond::new(
                PROGRESSING,
                true,
                reason::ROLLING_OUT,
                format!("StatefulSet {name} is rolling out ({replicas}/{want} pods)"),
            )
        } else {
            Cond::new(PROGRESSING, false, reason::STABLE, "StatefulSet is up to date")
        },
    ];
    conds.push(match degraded.first() {
        Some((first, _)) => Cond::new(
            DEGRADED,
            true,
            first,
            degraded.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join(" | "),
        ),
        None => Cond::new(DEGRADED, false, reason::AS_EXPECTED, "every field of the spec is served"),
    });
    let status = MqttBrokerStatus {
        conditions: conditions::merge(&existing.conditions, &conds, generation, &conditions::now()),
        observed_generation: generation,
        replicas,
        ready_replicas: ready,
        selector: Some(names::selector_string(&names::selector_labels(&name))),
        endpoints: plan.endpoints.clone(),
        config_hash: Some(plan.config_hash.clone()),
    };
    let degraded_changed =
        existing.conditions.iter().find(|c| c.type_ == DEGRADED).map(|c| (&c.reason, &c.message))
            != status.conditions.iter().find(|c| c.type_ == DEGRADED).map(|c| (&c.reason, &c.message));
    if degraded_changed && let Some((reason, _)) = degraded.first() {
        let message = degraded.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join(" | ");
        ctx.event(broker, EventType::Warning, reason, message).await;
    }
    write_status(&brokers, broker, serde_json::to_value(&status)?, status == existing).await?;
    Ok(Action::requeue(if rolling || ready < want { SHORT_REQUEUE } else { RESYNC }))
}

async fn refuse_broker(
    ctx: &Context,
    api: &Api<MqttBroker>,
    broker: &MqttBroker,
    existing: &MqttBrokerStatus,
    why: &'static str,
    message: String,
) -> Result<(), Error> {
    let conds = [
        Cond::new(READY, false, why, message.clone()),
        Cond::new(PROGRESSING, false, why, "nothing is applied until the spec is fixed"),
        Cond::new(DEGRADED, true, why, message.clone()),
    ];
    let status = MqttBrokerStatus {
        conditions: conditions::merge(
            &existing.conditions,
            &conds,
            broker.metadata.generation,
            &conditions::now(),
        ),
        observed_generation: broker.metadata.generation,
        ..existing.clone()
    };
    if status != *existing {
        ctx.event(broker, EventType::Warning, why, message).await;
    }
    write_status(api, broker, serde_json::to_value(&status)?, status == *existing).await
}

// ---------------------------------------------------------------------------------------------
// MqttUser
// ---------------------------------------------------------------------------------------------

/// Reconciles one MqttUser: its generated credentials Secret (if any) and its status. The
/// user's entry in the broker's auth Secret is written by the broker reconciler, which the
/// controller triggers through the brokerRef mapping.
pub async fn reconcile_user(user: Arc<MqttUser>, ctx: Arc<Context>) -> Result<Action, Error> {
    let timer = ctx.metrics.reconcile("mqttuser");
    let result = reconcile_user_inner(&user, &ctx).await;
    timer.finish(result.as_ref().err().map(Error::metric_label));
    if result.is_ok() {
        ctx.reset_backoff(&object_key(user.as_ref()));
    }
    result
}

async fn reconcile_user_inner(user: &MqttUser, ctx: &Context) -> Result<Action, Error> {
    let ns = namespace(user)?;
    let name = user.name_any();
    let client = &ctx.client;
    let api: Api<MqttUser> = Api::namespaced(client.clone(), &ns);
    let existing = user.status.clone().unwrap_or_default();
    let username = inputs::username(user);
    let broker_name = user.spec.broker_ref.name.clone();

    let outcome = user_outcome(user, ctx, &ns, &name, &username).await?;
    let (conds, credentials_secret, action) = match outcome {
        Ok(credentials_secret) => {
            let where_ = format!(
                "rendered into Secret {} of MqttBroker {broker_name}",
                names::auth_secret(&broker_name)
            );
            let conds = vec![
                Cond::new(READY, true, reason::RENDERED, where_),
                Cond::new(DEGRADED, false, reason::AS_EXPECTED, "the broker enforces this user"),
            ];
            (conds, credentials_secret, Action::requeue(RESYNC))
        }
        Err((why, message, action)) => {
            let conds = vec![
                Cond::new(READY, false, why, message.clone()),
                Cond::new(DEGRADED, true, why, message.clone()),
            ];
            if !existing
                .conditions
                .iter()
                .any(|c| c.type_ == READY && c.reason == why && c.message == message)
            {
                ctx.event(user, EventType::Warning, why, message).await;
            }
            (conds, None, action)
        }
    };
    let status = MqttUserStatus {
        conditions: conditions::merge(
            &existing.conditions,
            &conds,
            user.metadata.generation,
            &conditions::now(),
        ),
        observed_generation: user.metadata.generation,
        username: Some(username),
        credentials_secret,
    };
    write_status(&api, user, serde_json::to_value(&status)?, status == existing).await?;
    Ok(action)
}

type Refusal = (&'static str, String, Action);

/// `Ok(Ok(credentials secret name if generated))`, or `Ok(Err(refusal))` for a condition.
async fn user_outcome(
    user: &MqttUser,
    ctx: &Context,
    ns: &str,
    name: &str,
    username: &str,
) -> Result<Result<Option<String>, Refusal>, Error> {
    let client = &ctx.client;
    let errors = validate::validate_user(&user.spec, name);
    if !errors.is_empty() {
        return Ok(Err((reason::INVALID_SPEC, validate::summary(&errors), Action::await_change())));
    }
    let broker_name = &user.spec.broker_ref.name;
    let Some(broker) = Api::<MqttBroker>::namespaced(client.clone(), ns).get_opt(broker_name).await? else {
        return Ok(Err((
            reason::BROKER_NOT_FOUND,
            format!("spec.brokerRef: MqttBroker {broker_name} does not exist in namespace {ns}"),
            Action::requeue(RESYNC),
        )));
    };
    let all = Api::<MqttUser>::namespaced(client.clone(), ns).list(&ListParams::default()).await?.items;
    let owners = inputs::username_owners(&inputs::users_of(broker_name, &all));
    if let Some(owner) = owners.get(username).filter(|o| o.as_str() != name) {
        let problem = Problem::UsernameConflict { username: username.to_string(), owner: owner.clone() };
        return Ok(Err((problem.reason(), problem.message(), Action::await_change())));
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    if let Some(r) = &user.spec.password_secret_ref {
        let problem = match secrets.get_opt(&r.name).await? {
            None => Problem::SecretNotFound { field: "spec.passwordSecretRef", secret: r.name.clone() },
            Some(secret) if inputs::secret_value(&secret, &r.key).is_none() => Problem::SecretKeyMissing {
                field: "spec.passwordSecretRef",
                secret: r.name.clone(),
                key: r.key.clone(),
            },
            Some(_) => return Ok(Ok(None)),
        };
        return Ok(Err((problem.reason(), problem.message(), Action::requeue(SHORT_REQUEUE))));
    }
    // Generated password: written once, reused for as long as the Secret exists.
    let secret_name = names::credentials_secret(name);
    let live = secrets.get_opt(&secret_name).await?;
    let password = match live.as_ref().and_then(|s| inputs::secret_value(s, "password")) {
        Some(existing) => existing,
        None => auth::generate_password()?,
    };
    let desired = build::Desired::typed(&build::user_credentials_secret(user, &broker, username, &password))?;
    let live_dynamic = apply::get_live(client, &desired).await?;
    match apply::apply_with_live(client, &desired, live_dynamic.as_ref()).await? {
        Outcome::Created => {
            ctx.event(
                user,
                EventType::Normal,
                "Created",
                format!("created Secret {secret_name} with a generated password"),
            )
            .await
        }
        Outcome::Updated => {
            ctx.event(user, EventType::Normal, "Updated", format!("updated Secret {secret_name}")).await
        }
        Outcome::Unchanged => {}
    }
    Ok(Ok(Some(secret_name)))
}

// ---------------------------------------------------------------------------------------------
// MqttBridge
// ---------------------------------------------------------------------------------------------

/// Reconciles one MqttBridge's status (its entry in the broker's auth Secret is written by the
/// broker reconciler).
pub async fn reconcile_bridge(bridge: Arc<MqttBridge>, ctx: Arc<Context>) -> Result<Action, Error> {
    let timer = ctx.metrics.reconcile("mqttbridge");
    let result = reconcile_bridge_inner(&bridge, &ctx).await;
    timer.finish(result.as_ref().err().map(Error::metric_label));
    if result.is_ok() {
        ctx.reset_backoff(&object_key(bridge.as_ref()));
    }
    result
}

async fn reconcile_bridge_inner(bridge: &MqttBridge, ctx: &Context) -> Result<Action, Error> {
    let ns = namespace(bridge)?;
    let name = bridge.name_any();
    let client = &ctx.client;
    let api: Api<MqttBridge> = Api::namespaced(client.clone(), &ns);
    let existing = bridge.status.clone().unwrap_or_default();
    let broker_name = bridge.spec.broker_ref.name.clone();

    let mut broker = None;
    let refusal: Option<Refusal> = 'check: {
        let errors = validate::validate_bridge(&bridge.spec);
        if !errors.is_empty() {
            break 'check Some((reason::INVALID_SPEC, validate::summary(&errors), Action::await_change()));
        }
        broker = Api::<MqttBroker>::namespaced(client.clone(), &ns).get_opt(&broker_name).await?;
        if broker.is_none() {
            break 'check Some((
                reason::BROKER_NOT_FOUND,
                format!("spec.brokerRef: MqttBroker {broker_name} does not exist in namespace {ns}"),
                Action::requeue(RESYNC),
            ));
        }
        let secrets_api: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let mut secrets = BTreeMap::new();
        for secret in inputs::referenced_secrets(&[], &[bridge]) {
            if let Some(found) = secrets_api.get_opt(&secret).await? {
                secrets.insert(secret, found);
            }
        }
        let resolved =
            inputs::resolve_bridges(&broker_name, std::slice::from_ref(bridge), &secrets, Missing::Skip);
        resolved
            .problems
            .get(&name)
            .map(|problem| (problem.reason(), problem.message(), Action::requeue(SHORT_REQUEUE)))
    };
    // Live state, once the bridge is in the broker's files: ask every pod (the token is in the
    // broker's auth Secret, which exists once the broker reconciled).
    let live = match (&refusal, &broker) {
        (None, Some(broker)) => bridge_live_state(ctx, &ns, broker, &name).await?,
        _ => None,
    };
    let conds = match &refusal {
        Some((why, message, _)) => {
            if !existing
                .conditions
                .iter()
                .any(|c| c.type_ == READY && c.reason == *why && c.message == *message)
            {
                ctx.event(bridge, EventType::Warning, why, message.clone()).await;
            }
            vec![
                Cond::new(READY, false, why, message.clone()),
                Cond::new(DEGRADED, true, why, message.clone()),
            ]
        }
        None => {
            let degraded = if let Some(problem) = live.as_ref().and_then(|l| l.problem.clone()) {
                Cond::new(DEGRADED, true, reason::BRIDGE_NOT_CONNECTED, problem)
            } else {
                Cond::new(DEGRADED, false, reason::AS_EXPECTED, "the broker runs this bridge")
            };
            let was = existing.conditions.iter().find(|c| c.type_ == DEGRADED).map(|c| c.reason.as_str());
            if degraded.status && was != Some(degraded.reason) {
                ctx.event(bridge, EventType::Warning, degraded.reason, degraded.message.clone()).await;
            }
            vec![
                Cond::new(
                    READY,
                    true,
                    reason::RENDERED,
                    format!(
                        "rendered into the broker config (ConfigMap {}) and Secret {}",
                        names::config_map(&broker_name),
                        names::auth_secret(&broker_name)
                    ),
                ),
                degraded,
            ]
        }
    };
    let polled = live.is_some();
    let live = live.unwrap_or_default();
    let status = MqttBridgeStatus {
        conditions: conditions::merge(
            &existing.conditions,
            &conds,
            bridge.metadata.generation,
            &conditions::now(),
        ),
        observed_generation: bridge.metadata.generation,
        state: live.state,
        last_error: live.last_error,
        pods: live.pods,
    };
    write_status(&api, bridge, serde_json::to_value(&status)?, status == existing).await?;
    Ok(refusal
        .map(|(_, _, action)| action)
        .unwrap_or_else(|| Action::requeue(if polled { BRIDGE_POLL } else { RESYNC })))
}

/// Asks every pod of `broker` for bridge `name`; `None` when the broker has no admin token yet
/// (it has not been reconciled) or no pods are wanted.
async fn bridge_live_state(
    ctx: &Context,
    ns: &str,
    broker: &MqttBroker,
    name: &str,
) -> Result<Option<probe::LiveState>, Error> {
    let broker_name = broker.name_any();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let token = secrets
        .get_opt(&names::auth_secret(&broker_name))
        .await?
        .and_then(|s| inputs::secret_value(&s, names::ADMIN_TOKEN_KEY))
        .filter(|t| !t.trim().is_empty());
    let (Some(token), Ok(port)) = (token, u16::try_from(broker.spec.http_port())) else { return Ok(None) };
    if broker.spec.replicas < 1 {
        return Ok(None);
    }
    let headless = names::headless_service(&broker_name);
    let targets: Vec<Target> = (0..broker.spec.replicas)
        .map(|i| {
            let pod = format!("{broker_name}-{i}");
            Target { host: format!("{pod}.{headless}.{ns}.svc"), pod, port, token: token.clone() }
        })
        .collect();
    let reports = futures::future::join_all(targets.iter().map(|target| async move {
        PodReport { pod: target.pod.clone(), result: ctx.probe.fetch(target).await }
    }))
    .await;
    Ok(Some(probe::live_state(name, &reports)))
}
