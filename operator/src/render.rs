//! Offline rendering: the reconciler's pure steps run on YAML files instead of a cluster.
//!
//! `fleetmq-operator render -f resources.yaml` prints, for every MqttBroker in the input
//! (sorted by namespace and name), every object the operator would apply, the rendered broker
//! config (as comment lines, so the stream stays applyable), and each generated user's
//! credentials Secret with a clearly marked placeholder password. Secrets in the input are
//! used for `passwordSecretRef` and bridge credentials; missing ones become placeholders.
//! Owner references are left out: the owners' uids exist only in a cluster.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use serde::Deserialize;

use crate::auth::{PasswordHasher, SecretValue};
use crate::build::{self, BrokerInputs, BuildOptions, Desired};
use crate::crd::{MqttBridge, MqttBroker, MqttUser};
use crate::inputs::{self, Missing};
use crate::validate;

/// Why the admin token is a placeholder offline (generated in-cluster into the auth Secret).
pub const ADMIN_TOKEN_PLACEHOLDER: &str = "admin API token, generated in-cluster by fleetmq-operator";

/// Why the cluster secret is a placeholder offline (generated in-cluster into the auth Secret).
pub const CLUSTER_SECRET_PLACEHOLDER: &str = "cluster secret, generated in-cluster by fleetmq-operator";

/// What the placeholder password of a generated user reads.
pub const GENERATED_PASSWORD_PLACEHOLDER: &str = "PLACEHOLDER-generated-in-cluster-by-fleetmq-operator";

/// Errors of `render`.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A document is not valid YAML or not a valid object of its kind.
    #[error("{origin}: {message}")]
    Parse {
        /// File and document index.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// An MqttBroker is refused (the same refusal the reconciler would put in its status).
    #[error("MqttBroker {namespace}/{name} is refused: {message}")]
    Refused {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The field errors.
        message: String,
    },
    /// Building failed.
    #[error(transparent)]
    Build(#[from] build::BuildError),
}

/// The custom resources and Secrets found in the input, namespaces filled in.
#[derive(Debug, Default, Clone)]
pub struct RenderInput {
    /// MqttBrokers.
    pub brokers: Vec<MqttBroker>,
    /// MqttUsers.
    pub users: Vec<MqttUser>,
    /// MqttBridges.
    pub bridges: Vec<MqttBridge>,
    /// Secrets, for passwords and bridge credentials.
    pub secrets: Vec<Secret>,
    /// Documents of other kinds, skipped (`origin: kind`).
    pub skipped: Vec<String>,
}

/// What `render` produced.
#[derive(Debug, Default, Clone)]
pub struct RenderOutput {
    /// The manifest stream (multi-document YAML with comments).
    pub manifests: String,
    /// The broker config per broker: (namespace, name, broker.yaml).
    pub configs: Vec<(String, String, String)>,
    /// Things a person should know (unsupported fields, users left out, skipped documents).
    pub warnings: Vec<String>,
}

/// The YAML files under `path` (a file, or a directory searched recursively), sorted.
pub fn yaml_files(path: &Path) -> Result<Vec<PathBuf>, RenderError> {
    let io = |source| RenderError::Io { path: path.to_path_buf(), source };
    if !path.is_dir() {
        std::fs::metadata(path).map_err(io)?;
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(path).map_err(io)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            out.extend(yaml_files(&entry)?);
        } else if entry.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(entry);
        }
    }
    Ok(out)
}

/// Reads and classifies every document of every file. Objects without a namespace get
/// `default_namespace`.
pub fn load(paths: &[PathBuf], default_namespace: &str) -> Result<RenderInput, RenderError> {
    let mut input = RenderInput::default();
    for path in paths {
        for file in yaml_files(path)? {
            let text = std::fs::read_to_string(&file)
                .map_err(|source| RenderError::Io { path: file.clone(), source })?;
            parse_into(&mut input, &text, &file.display().to_string(), default_namespace)?;
        }
    }
    Ok(input)
}

/// Adds the documents of one YAML stream to `input`.
pub fn parse_into(
    input: &mut RenderInput,
    text: &str,
    origin: &str,
    default_namespace: &str,
) -> Result<(), RenderError> {
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc_origin = format!("{origin} (document {})", i + 1);
        let parse_err = |message: String| RenderError::Parse { origin: doc_origin.clone(), message };
        let value = serde_yaml::Value::deserialize(de).map_err(|e| parse_err(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let mut json: serde_json::Value =
            serde_json::to_value(&value).map_err(|e| parse_err(e.to_string()))?;
        let api_version = json.get("apiVersion").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let kind = json.get("kind").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        if let Some(meta) = json.get_mut("metadata").and_then(|m| m.as_object_mut())
            && !meta.contains_key("namespace")
        {
            meta.insert("namespace".to_string(), serde_json::Value::String(default_namespace.to_string()));
        }
        let typed = |what: &str| format!("not a valid {what}: ");
        match (api_version.as_str(), kind.as_str()) {
            ("fleetmq.io/v1alpha1", "MqttBroker") => input.brokers.push(
                serde_json::from_value(json).map_err(|e| parse_err(typed("MqttBroker") + &e.to_string()))?,
            ),
            ("fleetmq.io/v1alpha1", "MqttUser") => input.users.push(
                serde_json::from_value(json).map_err(|e| parse_err(typed("MqttUser") + &e.to_string()))?,
            ),
            ("fleetmq.io/v1alpha1", "MqttBridge") => input.bridges.push(
                serde_json::from_value(json).map_err(|e| parse_err(typed("MqttBridge") + &e.to_string()))?,
            ),
            ("v1", "Secret") => input
                .secrets
                .push(serde_json::from_value(json).map_err(|e| parse_err(typed("Secret") + &e.to_string()))?),
            _ => input.skipped.push(format!("{doc_origin}: {api_version} {kind}")),
        }
    }
    Ok(())
}

/// One object as a YAML document, after `---` and an optional comment. Secrets whose values are
/// all UTF-8 are shown with `stringData` so a review sees the ACL and bridge changes; applying
/// it stores the same bytes the operator writes as `data`.
fn document(desired: &Desired, comment: Option<&str>) -> Result<String, RenderError> {
    let mut value = serde_json::to_value(&desired.object)
        .map_err(|source| build::BuildError::Serialize { kind: desired.resource.kind.clone(), source })?;
    if desired.resource.kind == "Secret"
        && let Some(data) = desired.object.data.get("data").and_then(|d| d.as_object())
    {
        let decoded: Option<serde_json::Map<String, serde_json::Value>> = data
            .iter()
            .map(|(k, v)| {
                let bytes: k8s_openapi::ByteString = serde_json::from_value(v.clone()).ok()?;
                String::from_utf8(bytes.0).ok().map(|text| (k.clone(), serde_json::Value::String(text)))
            })
            .collect();
        if let (Some(decoded), Some(obj)) = (decoded, value.as_object_mut()) {
            obj.remove("data");
            obj.insert("stringData".to_string(), serde_json::Value::Object(decoded));
        }
    }
    let comment = comment.map(|c| format!("# {c}\n")).unwrap_or_default();
    Ok(format!("---\n{comment}{}", crate::yaml::to_yaml(&value)))
}

fn commented(text: &str) -> String {
    text.lines().map(|l| if l.is_empty() { "#\n".to_string() } else { format!("#   {l}\n") }).collect()
}

/// Renders everything, deterministically.
pub fn render(input: &RenderInput, hasher: &PasswordHasher) -> Result<RenderOutput, RenderError> {
    let mut out = RenderOutput::default();
    for skipped in &input.skipped {
        out.warnings.push(format!("skipped {skipped} (not a FleetMQ resource or Secret)"));
    }
    let mut brokers: Vec<&MqttBroker> = input.brokers.iter().collect();
    brokers.sort_by_key(|b| (b.namespace().unwrap_or_default(), b.name_any()));

    let by_ns = |ns: &str| {
        let secrets: BTreeMap<String, Secret> = input
            .secrets
            .iter()
            .filter(|s| s.namespace().as_deref() == Some(ns))
            .map(|s| (s.name_any(), s.clone()))
            .collect();
        let users: Vec<MqttUser> =
            input.users.iter().filter(|u| u.namespace().as_deref() == Some(ns)).cloned().collect();
        let bridges: Vec<MqttBridge> =
            input.bridges.iter().filter(|b| b.namespace().as_deref() == Some(ns)).cloned().collect();
        (secrets, users, bridges)
    };

    for broker in &brokers {
        let ns = broker.namespace().unwrap_or_default();
        let name = broker.name_any();
        let errors = validate::validate_broker(&broker.spec);
        if !errors.is_empty() {
            return Err(RenderError::Refused { namespace: ns, name, message: validate::summary(&errors) });
        }
        let (secrets, users, bridges) = by_ns(&ns);
        let resolved_users = inputs::resolve_users(&name, &users, &secrets, Missing::Placeholder);
        let resolved_bridges = inputs::resolve_bridges(&name, &bridges, &secrets, Missing::Placeholder);
        for (user, problem) in &resolved_users.problems {
            out.warnings.push(format!("MqttUser {ns}/{user} left out of {name}: {}", problem.message()));
        }
        for (bridge, problem) in &resolved_bridges.problems {
            out.warnings.push(format!("MqttBridge {ns}/{bridge} left out of {name}: {}", problem.message()));
        }
        let generated: Vec<&MqttUser> = inputs::users_of(&name, &users)
            .into_iter()
            .filter(|u| {
                u.spec.password_secret_ref.is_none() && !resolved_users.problems.contains_key(&u.name_any())
            })
            .collect();
        let mut broker_offline = (*broker).clone();
        broker_offline.metadata.uid = None;
        let plan = build::plan_broker(
            &BrokerInputs {
                broker: broker_offline.clone(),
                users: resolved_users.entries,
                bridges: resolved_bridges.entries,
                admin_token: SecretValue::Placeholder(ADMIN_TOKEN_PLACEHOLDER.to_string()),
                cluster_secret: SecretValue::Placeholder(CLUSTER_SECRET_PLACEHOLDER.to_string()),
                // Offline there is no discovery: show the ServiceMonitor the spec asks for (in a
                // cluster it is created only where that CRD is served).
                options: BuildOptions {
                    default_image: build::DEFAULT_IMAGE.to_string(),
                    service_monitor_served: true,
                    otlp_endpoint: None,
                },
            },
            hasher,
        )
        .map_err(|err| match err {
            build::BuildError::Config(refused) => RenderError::Refused {
                namespace: ns.clone(),
                name: name.clone(),
                message: refused.to_string(),
            },
            other => RenderError::Build(other),
        })?;
        for unsupported in &plan.config.unsupported {
            out.warnings.push(format!("MqttBroker {ns}/{name}: not yet served by the broker: {unsupported}"));
        }
        let config_yaml = plan.config.to_yaml(&ns, &name);
        out.manifests.push_str(&format!(
            "# ==== MqttBroker {ns}/{name} ====\n# restart hash {}, config hash {}\n# broker.yaml (ConfigMap {}):\n{}",
            plan.restart_hash,
            plan.config_hash,
            crate::names::config_map(&name),
            commented(&config_yaml)
        ));
        for desired in &plan.objects {
            out.manifests.push_str(&document(desired, None)?);
        }
        for user in generated {
            let secret = build::user_credentials_secret(
                user,
                &broker_offline,
                &inputs::username(user),
                GENERATED_PASSWORD_PLACEHOLDER,
            );
            let note = format!(
                "MqttUser {ns}/{}: password and uri are PLACEHOLDERS; the operator generates the password in-cluster",
                user.name_any()
            );
            out.manifests.push_str(&document(&Desired::typed(&secret)?, Some(&note))?);
        }
        out.configs.push((ns, name, config_yaml));
    }

    for user in &input.users {
        let ns = user.namespace().unwrap_or_default();
        if !brokers
            .iter()
            .any(|b| b.namespace().as_deref() == Some(&ns) && b.name_any() == user.spec.broker_ref.name)
        {
            out.warnings.push(format!(
                "MqttUser {ns}/{}: BrokerNotFound: MqttBroker {} is not among the inputs",
                user.name_any(),
                user.spec.broker_ref.name
            ));
        }
    }
    for bridge in &input.bridges {
        let ns = bridge.namespace().unwrap_or_default();
        if !brokers
            .iter()
            .any(|b| b.namespace().as_deref() == Some(&ns) && b.name_any() == bridge.spec.broker_ref.name)
        {
            out.warnings.push(format!(
                "MqttBridge {ns}/{}: BrokerNotFound: MqttBroker {} is not among the inputs",
                bridge.name_any(),
                bridge.spec.broker_ref.name
            ));
        }
    }
    Ok(out)
}
