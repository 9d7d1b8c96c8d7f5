//! CRD tests: crds/ matches the code, the CRDs have the shape the issue asks for, bad custom
//! resources are refused by the CRD's CEL rules (evaluated with kube's own CEL engine) and by
//! the operator's validate step, each naming the field; the examples pass both.

use fleetmq_operator::crd::{self, MqttBridge, MqttBroker, MqttUser};
use fleetmq_operator::validate;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::core::cel::Validator;
use serde_json::Value;

use crate::{examples, fixture_path, repo_root};

#[test]
fn crds_directory_matches_the_code() {
    let dir = repo_root().join("crds");
    for def in crd::all_crds() {
        let name = def.metadata.name.clone().expect("CRD name");
        let path = dir.join(format!("{name}.yaml"));
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == crd::crd_yaml(&def),
            "{} is out of date with the CRD types: run `make crds` and commit the result",
            path.display()
        );
    }
    let files = std::fs::read_dir(&dir).expect("crds/ exists").count();
    assert_eq!(files, crd::all_crds().len(), "crds/ holds exactly one file per kind");
}

#[test]
fn crd_output_is_the_three_documents_of_crds_dir() {
    let printed = crd::crds_yaml();
    assert_eq!(printed.matches("\n---\n").count() + usize::from(printed.starts_with("---\n")), 3);
    for kind in ["MqttBroker", "MqttUser", "MqttBridge"] {
        assert!(printed.contains(&format!("kind: {kind}")), "{kind}");
    }
}

fn version(
    def: &CustomResourceDefinition,
) -> &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinitionVersion {
    &def.spec.versions[0]
}

#[test]
fn crd_shapes() {
    for (def, short, plural) in [
        (MqttBroker::crd(), "mqb", "mqttbrokers"),
        (MqttUser::crd(), "mqu", "mqttusers"),
        (MqttBridge::crd(), "mqbr", "mqttbridges"),
    ] {
        assert_eq!(def.spec.group, "fleetmq.io");
        assert_eq!(def.spec.scope, "Namespaced");
        assert_eq!(def.spec.names.plural, plural);
        assert_eq!(def.spec.names.short_names.clone().unwrap_or_default(), vec![short.to_string()]);
        let v = version(&def);
        assert_eq!(v.name, "v1alpha1");
        assert!(v.served && v.storage);
        assert!(
            v.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(),
            "{plural} has a status subresource"
        );
        let columns = v.additional_printer_columns.clone().unwrap_or_default();
        assert!(columns.iter().any(|c| c.name == "Status"), "{plural} prints its Ready reason");
    }
    let broker = MqttBroker::crd();
    let scale =
        version(&broker).subresources.as_ref().and_then(|s| s.scale.clone()).expect("scale subresource");
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(scale.status_replicas_path, ".status.replicas");
    assert_eq!(scale.label_selector_path.as_deref(), Some(".status.selector"));
}

fn schema_of(def: &CustomResourceDefinition) -> Value {
    serde_json::to_value(
        version(def).schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).expect("schema"),
    )
    .expect("schema serializes")
}

fn documents(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("fixture readable");
    serde_yaml::Deserializer::from_str(&text)
        .map(|de| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(de).expect("valid YAML");
            serde_json::to_value(v).expect("JSON-compatible")
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn annotation<'a>(doc: &'a Value, key: &str) -> Option<&'a str> {
    doc["metadata"]["annotations"][format!("test.fleetmq.io/{key}")].as_str()
}

/// CEL errors of one object against its kind's CRD schema.
fn cel_errors(doc: &Value) -> Vec<String> {
    let def = match doc["kind"].as_str() {
        Some("MqttBroker") => MqttBroker::crd(),
        Some("MqttUser") => MqttUser::crd(),
        Some("MqttBridge") => MqttBridge::crd(),
        other => panic!("unexpected kind {other:?}"),
    };
    match Validator::new().validate(&schema_of(&def), doc, None) {
        Ok(()) => vec![],
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

/// The operator's own refusals of one object.
fn validate_errors(doc: &Value) -> Vec<validate::FieldError> {
    let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_string();
    match doc["kind"].as_str() {
        Some("MqttBroker") => {
            let b: MqttBroker = serde_json::from_value(doc.clone()).expect("parses as MqttBroker");
            validate::validate_broker(&b.spec)
        }
        Some("MqttUser") => {
            let u: MqttUser = serde_json::from_value(doc.clone()).expect("parses as MqttUser");
            validate::validate_user(&u.spec, &name)
        }
        Some("MqttBridge") => {
            let b: MqttBridge = serde_json::from_value(doc.clone()).expect("parses as MqttBridge");
            validate::validate_bridge(&b.spec)
        }
        other => panic!("unexpected kind {other:?}"),
    }
}

#[test]
fn bad_resources_are_refused_naming_the_field() {
    let docs = documents(&fixture_path("invalid.yaml"));
    assert!(docs.len() >= 20, "fixture has the bad cases");
    let mut cel_cases = 0;
    for doc in &docs {
        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
        let field = annotation(doc, "field").expect("every case names its field");
        let errors = validate_errors(doc);
        assert!(
            errors.iter().any(|e| e.field == field),
            "{name}: validate must name {field}, got {errors:?}"
        );
        match annotation(doc, "refused-by") {
            Some("cel") => {
                cel_cases += 1;
                let expected = annotation(doc, "cel").expect("cel cases name the message");
                let cel = cel_errors(doc);
                assert!(
                    cel.iter().any(|e| e.contains(expected)),
                    "{name}: CEL must refuse with {expected:?}, got {cel:?}"
                );
                assert!(
                    cel.iter().all(|e| e.contains("spec")),
                    "{name}: CEL errors name a spec field: {cel:?}"
                );
            }
            // Schema constraints (ranges, patterns, enums) are checked against the
            // openAPIV3Schema by tests/python/test_operator_manifests.py (jsonschema); here only
            // make sure no CEL rule is needed for them.
            Some("schema") => assert!(cel_errors(doc).is_empty(), "{name}: schema case is not a CEL case"),
            other => panic!("{name}: unknown refused-by {other:?}"),
        }
    }
    assert!(cel_cases >= 12);
}

#[test]
fn examples_pass_cel_and_validation() {
    for path in ["minimal-broker.yaml", "production-broker.yaml", "users.yaml", "bridge.yaml"] {
        for doc in documents(&repo_root().join("examples").join(path)) {
            if doc["kind"] == "Secret" {
                continue;
            }
            assert_eq!(cel_errors(&doc), Vec::<String>::new(), "{path}");
            assert_eq!(validate_errors(&doc), vec![], "{path}");
        }
    }
    // And the render loader sees all of them.
    let ex = examples();
    assert_eq!((ex.brokers.len(), ex.users.len(), ex.bridges.len(), ex.secrets.len()), (2, 2, 1, 3));
}
