//! Deterministic YAML output: every mapping's keys sorted, whatever order the value was built
//! in, so `render`, `crd` and the golden files are byte-identical across builds (serde_json's
//! map order depends on crate features that other dependencies may switch on).

use serde_json::Value;

/// Converts to a YAML value with sorted mapping keys.
fn sorted(value: &Value) -> serde_yaml::Value {
    match value {
        Value::Null => serde_yaml::Value::Null,
        Value::Bool(b) => serde_yaml::Value::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                serde_yaml::Value::Number(i.into())
            } else if let Some(u) = n.as_u64() {
                serde_yaml::Value::Number(u.into())
            } else {
                serde_yaml::Value::Number(n.as_f64().unwrap_or_default().into())
            }
        }
        Value::String(s) => serde_yaml::Value::String(s.clone()),
        Value::Array(items) => serde_yaml::Value::Sequence(items.iter().map(sorted).collect()),
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut out = serde_yaml::Mapping::new();
            for key in keys {
                out.insert(serde_yaml::Value::String(key.clone()), sorted(&map[key]));
            }
            serde_yaml::Value::Mapping(out)
        }
    }
}

/// YAML text of a JSON value with sorted keys (no leading `---`).
pub fn to_yaml(value: &Value) -> String {
    serde_yaml::to_string(&sorted(value)).expect("a JSON value is always representable as YAML")
}

/// YAML text of any serializable value, keys sorted.
pub fn to_sorted_yaml<T: serde::Serialize>(value: &T) -> Result<String, serde_json::Error> {
    Ok(to_yaml(&serde_json::to_value(value)?))
}
