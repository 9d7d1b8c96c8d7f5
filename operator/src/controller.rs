//! The controller runtime: kube-runtime Controllers for the three kinds, their watches and
//! mappings, and the error policy. Thin by design: everything it calls is in
//! [`crate::reconcile`], which tests drive directly (an in-memory API has no watch).

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::crd::{MqttBridge, MqttBroker, MqttUser};
use crate::error::Error;
use crate::inputs;
use crate::names;
use crate::reconcile::{self, Context, object_key};

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Objects the operator created carry this label; owned-object watches select on it.
fn managed() -> watcher::Config {
    watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={}", names::MANAGED_BY))
}

/// Secrets worth looking at: service-account tokens and Helm releases are never referenced.
fn secrets_config() -> watcher::Config {
    watcher::Config::default().fields("type!=kubernetes.io/service-account-token,type!=helm.sh/release.v1")
}

/// Retries a failed reconcile after 5 s, 10 s, 20 s, ... up to 5 min.
pub fn error_policy<K: Resource<DynamicType = ()>>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = object_key(obj.as_ref());
    let delay = ctx.backoff(&key);
    tracing::warn!(object = %key, error = %err, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Brokers that a Secret matters to: the one named by its `fleetmq.io/broker` label (the
/// operator's own Secrets), and those whose users or bridges reference it. Nothing else
/// triggers a reconcile, and the Secret itself is not kept (watches hold no cache).
fn brokers_for_secret(
    secret: &Secret,
    users: &Store<MqttUser>,
    bridges: &Store<MqttBridge>,
) -> Vec<ObjectRef<MqttBroker>> {
    let ns = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    let mut out = std::collections::BTreeSet::new();
    if let Some(broker) = secret.labels().get(names::BROKER_LABEL) {
        out.insert(broker.clone());
    }
    for user in users.state() {
        if user.namespace().as_deref() == Some(&ns) && inputs::password_source(&user).0 == name {
            out.insert(user.spec.broker_ref.name.clone());
        }
    }
    for bridge in bridges.state() {
        if bridge.namespace().as_deref() == Some(&ns)
            && inputs::referenced_secrets(&[], &[bridge.as_ref()]).contains(&name)
        {
            out.insert(bridge.spec.broker_ref.name.clone());
        }
    }
    out.into_iter().map(|b| ObjectRef::new(&b).within(&ns)).collect()
}

/// Runs the three controllers over one scope (a namespace, or all of them) until SIGTERM.
pub async fn run_scope(client: Client, ctx: Arc<Context>, namespace: Option<String>) {
    let ns = namespace.as_deref();

    let users = Controller::new(api::<MqttUser>(&client, ns), watcher::Config::default());
    let user_store = users.store();
    let users = {
        let store = user_store.clone();
        users
            .owns(api::<Secret>(&client, ns), managed())
            .watches(api::<MqttBroker>(&client, ns), watcher::Config::default(), move |broker| {
                let bns = broker.namespace();
                store
                    .state()
                    .into_iter()
                    .filter(|u| u.namespace() == bns && u.spec.broker_ref.name == broker.name_any())
                    .map(|u| ObjectRef::from_obj(u.as_ref()))
                    .collect::<Vec<_>>()
            })
            .shutdown_on_signal()
            .run(reconcile::reconcile_user, error_policy, ctx.clone())
    };

    let bridges = Controller::new(api::<MqttBridge>(&client, ns), watcher::Config::default());
    let bridge_store = bridges.store();
    let bridges = {
        let store = bridge_store.clone();
        bridges
            .watches(api::<MqttBroker>(&client, ns), watcher::Config::default(), move |broker| {
                let bns = broker.namespace();
                store
                    .state()
                    .into_iter()
                    .filter(|b| b.namespace() == bns && b.spec.broker_ref.name == broker.name_any())
                    .map(|b| ObjectRef::from_obj(b.as_ref()))
                    .collect::<Vec<_>>()
            })
            .shutdown_on_signal()
            .run(reconcile::reconcile_bridge, error_policy, ctx.clone())
    };

    let by_ref = |name: String, ns: Option<String>| {
        let r = ObjectRef::<MqttBroker>::new(&name);
        Some(match ns {
            Some(ns) => r.within(&ns),
            None => r,
        })
    };
    let brokers = Controller::new(api::<MqttBroker>(&client, ns), watcher::Config::default())
        .owns(api::<StatefulSet>(&client, ns), managed())
        .owns(api::<Service>(&client, ns), managed())
        .owns(api::<ConfigMap>(&client, ns), managed())
        .owns(api::<PodDisruptionBudget>(&client, ns), managed())
        .watches(api::<MqttUser>(&client, ns), watcher::Config::default(), move |u: MqttUser| {
            by_ref(u.spec.broker_ref.name.clone(), u.namespace())
        })
        .watches(api::<MqttBridge>(&client, ns), watcher::Config::default(), move |b: MqttBridge| {
            by_ref(b.spec.broker_ref.name.clone(), b.namespace())
        })
        .watches(api::<Secret>(&client, ns), secrets_config(), move |s: Secret| {
            brokers_for_secret(&s, &user_store, &bridge_store)
        })
        .shutdown_on_signal()
        .run(reconcile::reconcile_broker, error_policy, ctx.clone());

    futures::join!(
        brokers.for_each(|r| log_result("MqttBroker", r)),
        users.for_each(|r| log_result("MqttUser", r)),
        bridges.for_each(|r| log_result("MqttBridge", r)),
    );
}

async fn log_result<K, E1, E2>(
    kind: &'static str,
    result: Result<(ObjectRef<K>, Action), kube::runtime::controller::Error<E1, E2>>,
) where
    K: Resource,
    K::DynamicType: std::fmt::Debug,
    E1: std::error::Error + 'static,
    E2: std::error::Error + 'static,
{
    match result {
        Ok((obj, _)) => tracing::debug!(kind, object = %obj, "reconciled"),
        Err(err) => tracing::debug!(kind, error = %err, "controller event"),
    }
}

/// Runs the controllers over every configured namespace (empty = all namespaces).
pub async fn run(client: Client, ctx: Arc<Context>, namespaces: Vec<String>) {
    if namespaces.is_empty() {
        run_scope(client, ctx, None).await;
    } else {
        futures::future::join_all(
            namespaces.into_iter().map(|ns| run_scope(client.clone(), ctx.clone(), Some(ns))),
        )
        .await;
    }
}
