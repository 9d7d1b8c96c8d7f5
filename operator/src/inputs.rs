//! From fetched objects to builder inputs (pure): which MqttUsers and MqttBridges belong to a
//! broker, which of them are valid, who owns a username, and what their Secrets say.
//!
//! The reconciler fetches the objects and Secrets and calls these; `render` calls the same
//! functions on the YAML it was given, with [`Missing::Placeholder`] for Secrets it does not
//! have.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use crate::auth::{BridgeEntry, Credential, SecretValue, UserEntry};
use crate::conditions::reason;
use crate::crd::{MqttBridge, MqttUser};
use crate::names;
use crate::validate::{self, FieldError};

/// What to do when a referenced Secret is not available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// In-cluster: leave the user or bridge out and report it.
    Skip,
    /// Offline render: put a clearly marked placeholder in its place.
    Placeholder,
}

/// Why a user or bridge is left out of its broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The spec breaks a rule.
    Invalid(Vec<FieldError>),
    /// A referenced Secret does not exist.
    SecretNotFound {
        /// Field that references it.
        field: &'static str,
        /// Secret name.
        secret: String,
    },
    /// The Secret exists but lacks the key (or the value is not UTF-8).
    SecretKeyMissing {
        /// Field that references it.
        field: &'static str,
        /// Secret name.
        secret: String,
        /// Key.
        key: String,
    },
    /// Another MqttUser of the broker (first by name) has the username.
    UsernameConflict {
        /// The username.
        username: String,
        /// The MqttUser that keeps it.
        owner: String,
    },
    /// The generated credentials Secret does not exist yet (the user controller creates it).
    CredentialsPending(String),
}

impl Problem {
    /// Condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Problem::Invalid(_) => reason::INVALID_SPEC,
            Problem::SecretNotFound { .. } | Problem::CredentialsPending(_) => reason::SECRET_NOT_FOUND,
            Problem::SecretKeyMissing { .. } => reason::SECRET_KEY_MISSING,
            Problem::UsernameConflict { .. } => reason::USERNAME_CONFLICT,
        }
    }

    /// Condition message.
    pub fn message(&self) -> String {
        match self {
            Problem::Invalid(errors) => validate::summary(errors),
            Problem::SecretNotFound { field, secret } => format!("{field}: Secret {secret} does not exist"),
            Problem::SecretKeyMissing { field, secret, key } => {
                format!("{field}: Secret {secret} has no UTF-8 value under key {key:?}")
            }
            Problem::UsernameConflict { username, owner } => {
                format!("spec.username: {username:?} is already used by MqttUser {owner} of the same broker")
            }
            Problem::CredentialsPending(secret) => {
                format!("generated credentials Secret {secret} is not created yet")
            }
        }
    }
}

/// The MQTT username of a user: `spec.username` or `metadata.name`.
pub fn username(user: &MqttUser) -> String {
    user.spec.username.clone().unwrap_or_else(|| user.name_any())
}

/// The Secret holding a user's password and its key.
pub fn password_source(user: &MqttUser) -> (String, String) {
    match &user.spec.password_secret_ref {
        Some(r) => (r.name.clone(), r.key.clone()),
        None => (names::credentials_secret(&user.name_any()), "password".to_string()),
    }
}

/// Users of `broker`, sorted by name.
pub fn users_of<'a>(broker: &str, users: &'a [MqttUser]) -> Vec<&'a MqttUser> {
    let mut out: Vec<&MqttUser> = users.iter().filter(|u| u.spec.broker_ref.name == broker).collect();
    out.sort_by_key(|u| u.name_any());
    out
}

/// Bridges of `broker`, sorted by name.
pub fn bridges_of<'a>(broker: &str, bridges: &'a [MqttBridge]) -> Vec<&'a MqttBridge> {
    let mut out: Vec<&MqttBridge> = bridges.iter().filter(|b| b.spec.broker_ref.name == broker).collect();
    out.sort_by_key(|b| b.name_any());
    out
}

/// Secret names the users and bridges of a broker reference (what the reconciler fetches).
pub fn referenced_secrets(users: &[&MqttUser], bridges: &[&MqttBridge]) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = users.iter().map(|u| password_source(u).0).collect();
    for b in bridges {
        let remote = &b.spec.remote;
        if let Some(c) = &remote.credentials_secret_ref {
            out.insert(c.name.clone());
        }
        if let Some(tls) = &remote.tls {
            if let Some(ca) = &tls.ca_secret_ref {
                out.insert(ca.name.clone());
            }
            if let Some(cert) = &tls.client_cert_secret_ref {
                out.insert(cert.name.clone());
            }
        }
    }
    out
}

/// The UTF-8 value of `key`: `stringData` first (render inputs are often written that way),
/// then `data`.
pub fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    if let Some(v) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
        return Some(v.clone());
    }
    secret.data.as_ref().and_then(|d| d.get(key)).and_then(|b| String::from_utf8(b.0.clone()).ok())
}

fn lookup(
    secrets: &BTreeMap<String, Secret>,
    field: &'static str,
    name: &str,
    key: &str,
    missing: Missing,
) -> Result<SecretValue, Problem> {
    match secrets.get(name) {
        Some(secret) => secret_value(secret, key).map(SecretValue::Known).ok_or_else(|| {
            Problem::SecretKeyMissing { field, secret: name.to_string(), key: key.to_string() }
        }),
        None if missing == Missing::Placeholder => {
            Ok(SecretValue::Placeholder(format!("Secret {name} key {key} is not among the render inputs")))
        }
        None => Err(Problem::SecretNotFound { field, secret: name.to_string() }),
    }
}

/// Users of one broker, resolved.
#[derive(Debug, Clone, Default)]
pub struct ResolvedUsers {
    /// Rendered into the broker's files.
    pub entries: Vec<UserEntry>,
    /// Left out, by MqttUser name.
    pub problems: BTreeMap<String, Problem>,
}

/// Who owns each username among the valid users of a broker: the first by `metadata.name`.
pub fn username_owners(users: &[&MqttUser]) -> BTreeMap<String, String> {
    let mut owners = BTreeMap::new();
    for user in users {
        if validate::validate_user(&user.spec, &user.name_any()).is_empty() {
            owners.entry(username(user)).or_insert_with(|| user.name_any());
        }
    }
    owners
}

/// Resolves the users of `broker` against the Secrets at hand.
pub fn resolve_users(
    broker: &str,
    users: &[MqttUser],
    secrets: &BTreeMap<String, Secret>,
    missing: Missing,
) -> ResolvedUsers {
    let mine = users_of(broker, users);
    let owners = username_owners(&mine);
    let mut out = ResolvedUsers::default();
    for user in mine {
        let name = user.name_any();
        let errors = validate::validate_user(&user.spec, &name);
        if !errors.is_empty() {
            out.problems.insert(name, Problem::Invalid(errors));
            continue;
        }
        let username = username(user);
        if let Some(owner) = owners.get(&username).filter(|o| **o != name) {
            out.problems.insert(name, Problem::UsernameConflict { username, owner: owner.clone() });
            continue;
        }
        let (secret, key) = password_source(user);
        let credential = if user.spec.password_secret_ref.is_some() {
            match lookup(secrets, "spec.passwordSecretRef", &secret, &key, missing) {
                Ok(SecretValue::Known(p)) => Credential::Password(p),
                Ok(SecretValue::Placeholder(why)) => Credential::Placeholder(why),
                Err(problem) => {
                    out.problems.insert(name, problem);
                    continue;
                }
            }
        } else {
            match secrets.get(&secret).and_then(|s| secret_value(s, "password")) {
                Some(p) => Credential::Password(p),
                None if missing == Missing::Placeholder => {
                    Credential::Placeholder("generated in-cluster into Secret ".to_string() + &secret)
                }
                None => {
                    out.problems.insert(name, Problem::CredentialsPending(secret));
                    continue;
                }
            }
        };
        out.entries.push(UserEntry { object: name, username, credential, acl: user.spec.acl.clone() });
    }
    out
}

/// Bridges of one broker, resolved.
#[derive(Debug, Clone, Default)]
pub struct ResolvedBridges {
    /// Rendered into the bridge file.
    pub entries: Vec<BridgeEntry>,
    /// Left out, by MqttBridge name.
    pub problems: BTreeMap<String, Problem>,
}

/// Resolves the bridges of `broker` against the Secrets at hand.
pub fn resolve_bridges(
    broker: &str,
    bridges: &[MqttBridge],
    secrets: &BTreeMap<String, Secret>,
    missing: Missing,
) -> ResolvedBridges {
    let mut out = ResolvedBridges::default();
    for bridge in bridges_of(broker, bridges) {
        let name = bridge.name_any();
        let errors = validate::validate_bridge(&bridge.spec);
        if !errors.is_empty() {
            out.problems.insert(name, Problem::Invalid(errors));
            continue;
        }
        match resolve_bridge(bridge, secrets, missing) {
            Ok(entry) => out.entries.push(entry),
            Err(problem) => {
                out.problems.insert(name, problem);
            }
        }
    }
    out
}

fn resolve_bridge(
    bridge: &MqttBridge,
    secrets: &BTreeMap<String, Secret>,
    missing: Missing,
) -> Result<BridgeEntry, Problem> {
    let remote = &bridge.spec.remote;
    let credentials = match &remote.credentials_secret_ref {
        Some(c) => Some((
            lookup(secrets, "spec.remote.credentialsSecretRef", &c.name, &c.username_key, missing)?,
            lookup(secrets, "spec.remote.credentialsSecretRef", &c.name, &c.password_key, missing)?,
        )),
        None => None,
    };
    let tls = remote.tls.as_ref();
    let ca = match tls.and_then(|t| t.ca_secret_ref.as_ref()) {
        Some(r) => Some(lookup(secrets, "spec.remote.tls.caSecretRef", &r.name, &r.key, missing)?),
        None => None,
    };
    let client_cert = match tls.and_then(|t| t.client_cert_secret_ref.as_ref()) {
        Some(r) => Some((
            lookup(secrets, "spec.remote.tls.clientCertSecretRef", &r.name, "tls.crt", missing)?,
            lookup(secrets, "spec.remote.tls.clientCertSecretRef", &r.name, "tls.key", missing)?,
        )),
        None => None,
    };
    Ok(BridgeEntry { object: bridge.name_any(), spec: bridge.spec.clone(), credentials, ca, client_cert })
}
