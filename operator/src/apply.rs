//! Server-side apply with field manager `fleetmq-operator`, skipped when the live object
//! already carries every field we would write.
//!
//! The skip matters for two reasons: a steady-state reconcile makes no write at all (less load
//! on the API server and etcd, no audit noise, and testable against an in-memory API), and a
//! hand edit to a field we own is still detected and reverted. Fields the API server defaults
//! or normalizes (clusterIP, `0.5` CPU becoming `500m`) only cost one idempotent apply.

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::Value;

use crate::build::Desired;
use crate::names;

/// What an apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The object did not exist.
    Created,
    /// Some of our fields differed.
    Updated,
    /// Nothing to do.
    Unchanged,
}

/// Whether every field in `desired` is present with the same value in `live`. Lists must match
/// in length and element by element (we own our lists whole).
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d.iter().all(|(k, dv)| {
            l.get(k).is_some_and(|lv| is_subset(dv, lv)) || (dv.is_null() && !l.contains_key(k))
        }),
        (Value::Array(d), Value::Array(l)) => {
            d.len() == l.len() && d.iter().zip(l).all(|(dv, lv)| is_subset(dv, lv))
        }
        (Value::Number(d), Value::Number(l)) => d.as_f64() == l.as_f64(),
        _ => desired == live,
    }
}

/// A change the API server would refuse because the field is immutable, with the reason.
/// StatefulSet `volumeClaimTemplates` cannot change after creation; applying anyway would fail
/// every reconcile, so the reconciler reports it instead.
pub fn immutable_change(desired: &Desired, live: &DynamicObject) -> Option<String> {
    if desired.resource.kind != "StatefulSet" {
        return None;
    }
    let want = desired.object.data.pointer("/spec/volumeClaimTemplates").cloned().unwrap_or(Value::Null);
    let have = live.data.pointer("/spec/volumeClaimTemplates").cloned().unwrap_or(Value::Null);
    let same = match (&want, &have) {
        (Value::Null, Value::Null) => true,
        (Value::Null, Value::Array(a)) | (Value::Array(a), Value::Null) => a.is_empty(),
        _ => is_subset(&want, &have),
    };
    (!same).then(|| {
        format!(
            "spec.persistence changed, but StatefulSet {} has immutable volumeClaimTemplates: \
             delete it with `kubectl delete statefulset {} --cascade=orphan` and the operator \
             recreates it (pods and volumes are kept)",
            live.name_any(),
            live.name_any()
        )
    })
}

/// The dynamic API of a desired object.
pub fn api_for(client: &Client, desired: &Desired) -> Api<DynamicObject> {
    match desired.object.metadata.namespace.as_deref() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &desired.resource),
        None => Api::all_with(client.clone(), &desired.resource),
    }
}

/// Applies one object given its live state (`None` = absent).
pub async fn apply_with_live(
    client: &Client,
    desired: &Desired,
    live: Option<&DynamicObject>,
) -> Result<Outcome, kube::Error> {
    let desired_value = serde_json::to_value(&desired.object).map_err(kube::Error::SerdeError)?;
    if let Some(live) = live {
        let live_value = serde_json::to_value(live).map_err(kube::Error::SerdeError)?;
        if is_subset(&desired_value, &live_value) {
            return Ok(Outcome::Unchanged);
        }
    }
    let api = api_for(client, desired);
    // force: we are the only manager of these fields; a hand edit must not block the operator.
    let params = PatchParams::apply(names::FIELD_MANAGER).force();
    api.patch(&desired.object.name_any(), &params, &Patch::Apply(&desired.object)).await?;
    Ok(if live.is_some() { Outcome::Updated } else { Outcome::Created })
}

/// Fetches the live object.
pub async fn get_live(client: &Client, desired: &Desired) -> Result<Option<DynamicObject>, kube::Error> {
    api_for(client, desired).get_opt(&desired.object.name_any()).await
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn subset_semantics() {
        let live = json!({"a": 1, "b": {"c": [1, {"d": 2, "e": 3}], "x": "y"}, "server": "defaulted"});
        assert!(is_subset(&json!({"a": 1}), &live));
        assert!(is_subset(&json!({"b": {"c": [1, {"d": 2}]}}), &live));
        assert!(!is_subset(&json!({"b": {"c": [1]}}), &live), "list length differs");
        assert!(!is_subset(&json!({"a": 2}), &live));
        assert!(!is_subset(&json!({"missing": 1}), &live));
        assert!(is_subset(&json!({"a": 1.0}), &live), "numbers compare by value");
    }
}
