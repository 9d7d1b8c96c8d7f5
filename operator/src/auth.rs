//! The broker's auth files: a Mosquitto-format password file (`user:$argon2id$...`), a
//! Mosquitto-format ACL file, and the bridge file, all rendered from the MqttUsers and
//! MqttBridges of one broker into its auth Secret.
//!
//! Output must be byte-identical for the same inputs (GitOps tools and the steady-state check
//! compare it), so the argon2 salt is derived from (namespace, broker, username) instead of
//! drawn at random. The salt still differs per user and per broker, which is what defeats
//! precomputed tables; it never depends on the password (a salt derived from the password would
//! be a fast hash of it, stored in the clear next to the slow one).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;

use argon2::password_hash::PasswordHasher as _;
use sha2::{Digest, Sha256};

use crate::crd::{AclRule, MqttBridgeSpec};
use crate::names;

/// The password of one user, as far as it is known.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// The clear-text password (from the user's Secret or the generated credentials Secret).
    Password(String),
    /// Not known here (offline `render`); the text says why. Rendered as a comment line, so the
    /// file stays valid and nobody can log in with a made-up password.
    Placeholder(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Password(_) => f.write_str("Password(<redacted>)"),
            Credential::Placeholder(why) => write!(f, "Placeholder({why:?})"),
        }
    }
}

/// One user as rendered into the broker's files.
#[derive(Debug, Clone, PartialEq)]
pub struct UserEntry {
    /// `metadata.name` of the MqttUser.
    pub object: String,
    /// MQTT username.
    pub username: String,
    /// Password.
    pub credential: Credential,
    /// ACL rules, in spec order.
    pub acl: Vec<AclRule>,
}

/// A value read from a Secret, or a placeholder when rendering offline.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretValue {
    /// The value.
    Known(String),
    /// Not known here; the text says where it comes from.
    Placeholder(String),
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretValue::Known(_) => f.write_str("Known(<redacted>)"),
            SecretValue::Placeholder(why) => write!(f, "Placeholder({why:?})"),
        }
    }
}

impl SecretValue {
    /// The value, or the placeholder's marked text.
    pub fn text(&self) -> String {
        match self {
            SecretValue::Known(v) => v.clone(),
            SecretValue::Placeholder(why) => format!("<placeholder: {why}>"),
        }
    }
}

/// One bridge as rendered into the bridge file, with the contents of the Secrets it references.
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeEntry {
    /// `metadata.name` of the MqttBridge.
    pub object: String,
    /// The spec.
    pub spec: MqttBridgeSpec,
    /// Remote username and password (from `credentialsSecretRef`).
    pub credentials: Option<(SecretValue, SecretValue)>,
    /// CA bundle (from `tls.caSecretRef`).
    pub ca: Option<SecretValue>,
    /// Client certificate and key (from `tls.clientCertSecretRef`).
    pub client_cert: Option<(SecretValue, SecretValue)>,
}

/// Errors of the auth step.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// argon2 refused the input (never for the parameters used here).
    #[error("hashing the password of {username}: {message}")]
    Hash {
        /// The user.
        username: String,
        /// argon2's error.
        message: String,
    },
    /// The OS random source failed.
    #[error("no randomness for a generated password: {0}")]
    Random(String),
}

/// The 16-byte salt of a user on a broker.
pub fn salt(namespace: &str, broker: &str, username: &str) -> [u8; 16] {
    let mut h = Sha256::new();
    // Length-prefixed so ("a", "bc") and ("ab", "c") differ.
    for part in ["fleetmq.io/password-salt/v1", namespace, broker, username] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    let digest = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// argon2id hashing with a memo, so a reconcile re-hashes only passwords that changed
/// (argon2 is deliberately slow: ~20 ms per user with the default parameters in release
/// builds, far more in debug builds).
pub struct PasswordHasher {
    params: argon2::Params,
    cache: Mutex<HashMap<[u8; 32], String>>,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher").field("params", &self.params).finish_non_exhaustive()
    }
}

impl Default for PasswordHasher {
    fn default() -> Self {
        Self::new(argon2::Params::default())
    }
}

/// Entries above this are dropped wholesale (a memo, not a store: they are recomputed).
const CACHE_LIMIT: usize = 100_000;

impl PasswordHasher {
    /// A hasher with explicit argon2 parameters (the default is RFC 9106 / OWASP: m=19 MiB,
    /// t=2, p=1, as Mosquitto 2.1 uses).
    pub fn new(params: argon2::Params) -> Self {
        PasswordHasher { params, cache: Mutex::new(HashMap::new()) }
    }

    /// PHC string `$argon2id$v=19$m=...,t=...,p=...$salt$hash`.
    pub fn hash(&self, username: &str, password: &str, salt: &[u8; 16]) -> Result<String, AuthError> {
        let key: [u8; 32] = {
            let mut h = Sha256::new();
            h.update(salt);
            h.update(format!("{:?}", self.params).as_bytes());
            h.update(password.as_bytes());
            h.finalize().into()
        };
        if let Some(hit) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(hit.clone());
        }
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, self.params.clone());
        let phc = argon
            .hash_password_with_salt(password.as_bytes(), salt)
            .map_err(|err| AuthError::Hash { username: username.to_string(), message: err.to_string() })?
            .to_string();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(key, phc.clone());
        Ok(phc)
    }
}

/// A new random password: 32 characters from [A-Za-z0-9] (~190 bits).
pub fn generate_password() -> Result<String, AuthError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(32);
    let mut buf = [0u8; 64];
    while out.len() < 32 {
        getrandom::fill(&mut buf).map_err(|err| AuthError::Random(err.to_string()))?;
        // Rejection sampling: 248 = 4 * 62, so accepted bytes map uniformly onto the alphabet.
        for b in buf {
            if b < 248 && out.len() < 32 {
                out.push(ALPHABET[usize::from(b) % ALPHABET.len()] as char);
            }
        }
    }
    Ok(out)
}

/// The Mosquitto password file: `username:$argon2id$...` per user, sorted by username.
pub fn password_file(
    namespace: &str,
    broker: &str,
    users: &[UserEntry],
    hasher: &PasswordHasher,
) -> Result<String, AuthError> {
    let mut sorted: Vec<&UserEntry> = users.iter().collect();
    sorted.sort_by(|a, b| a.username.cmp(&b.username));
    let mut out = format!(
        "# Mosquitto password file for MqttBroker {namespace}/{broker}, generated by fleetmq-operator from its MqttUsers.\n"
    );
    for user in sorted {
        match &user.credential {
            Credential::Password(password) => {
                let phc = hasher.hash(&user.username, password, &salt(namespace, broker, &user.username))?;
                let _ = writeln!(out, "{}:{phc}", user.username);
            }
            Credential::Placeholder(why) => {
                let _ = writeln!(out, "# {}: placeholder, {why}", user.username);
            }
        }
    }
    Ok(out)
}

/// The general rules for clients without a username when `spec.auth.allowAnonymous` is true:
/// what they could do with no ACL file at all (every topic, `$SYS` read-only). Written out
/// because an ACL file grants anonymous clients only its general rules, and the file is always
/// configured so that users' rules are enforced.
pub const ANONYMOUS_RULES: &str = "topic readwrite #\ntopic read $SYS/#\n";

/// The Mosquitto ACL file: the general rules for anonymous clients (only when they are
/// allowed, see [`ANONYMOUS_RULES`]), then a `user` block per user (sorted), rules in spec
/// order. Authenticated users get only their own block, never the general rules (Mosquitto 2.0
/// semantics), so a user without rules has no topic access.
pub fn acl_file(namespace: &str, broker: &str, users: &[UserEntry], allow_anonymous: bool) -> String {
    let mut sorted: Vec<&UserEntry> = users.iter().collect();
    sorted.sort_by(|a, b| a.username.cmp(&b.username));
    let mut out = format!(
        "# Mosquitto ACL file for MqttBroker {namespace}/{broker}, generated by fleetmq-operator from its MqttUsers.\n"
    );
    if allow_anonymous {
        out.push_str("\n# Clients without a username (spec.auth.allowAnonymous: true).\n");
        out.push_str(ANONYMOUS_RULES);
    }
    for user in sorted {
        let _ = write!(out, "\nuser {}\n", user.username);
        for rule in &user.acl {
            let _ = writeln!(out, "topic {} {}", rule.access.as_str(), rule.topic);
        }
    }
    out
}

/// The MqttBridges of one broker as the broker's own `bridges` config, plus the auth Secret files
/// they read: `bridge-<name>-password`, `bridge-<name>-ca.crt`, `bridge-<name>-tls.{crt,key}`.
/// Secrets stay in the Secret (mounted at [`names::AUTH_DIR`], re-read by the broker at every
/// reconnect); broker.yaml only names the files, so the ConfigMap holds nothing secret except
/// the remote username.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RenderedBridges {
    /// For `broker.yaml`'s `bridges`, sorted by MqttBridge name.
    pub config: Vec<fleetmq_config::Bridge>,
    /// Auth Secret keys and contents.
    pub files: BTreeMap<String, String>,
}

/// Renders the bridges of broker `namespace/broker` (see [`RenderedBridges`]).
pub fn bridges(namespace: &str, bridges: &[BridgeEntry]) -> RenderedBridges {
    use fleetmq_config::{Backoff, Bridge, BridgeProtocol, BridgeTls, BridgeTopic, Direction};
    let in_auth_dir = |key: &str| Some(std::path::PathBuf::from(format!("{}/{key}", names::AUTH_DIR)));
    let mut out = RenderedBridges::default();
    let mut sorted: Vec<&BridgeEntry> = bridges.iter().collect();
    sorted.sort_by(|a, b| a.object.cmp(&b.object));
    for bridge in sorted {
        let spec = &bridge.spec;
        let name = bridge.object.as_str();
        let tls = spec.remote.tls.as_ref().map(|tls| {
            let mut t = BridgeTls {
                ca_file: None,
                cert_file: None,
                key_file: None,
                server_name: tls.server_name.clone(),
                insecure_skip_verify: tls.insecure_skip_verify,
            };
            if let Some(ca) = &bridge.ca {
                let key = format!("bridge-{name}-ca.crt");
                t.ca_file = in_auth_dir(&key);
                out.files.insert(key, ca.text());
            }
            if let Some((crt, pem_key)) = &bridge.client_cert {
                let (crt_key, key_key) = (format!("bridge-{name}-tls.crt"), format!("bridge-{name}-tls.key"));
                t.cert_file = in_auth_dir(&crt_key);
                t.key_file = in_auth_dir(&key_key);
                out.files.insert(crt_key, crt.text());
                out.files.insert(key_key, pem_key.text());
            }
            t
        });
        let (username, password_file) = match &bridge.credentials {
            Some((user, password)) => {
                let key = format!("bridge-{name}-password");
                out.files.insert(key.clone(), password.text());
                (Some(user.text()), in_auth_dir(&key))
            }
            None => (None, None),
        };
        out.config.push(Bridge {
            name: name.to_string(),
            addresses: spec.remote.addresses.clone(),
            protocol: match spec.remote.protocol_version {
                crate::crd::ProtocolVersion::Mqttv311 => BridgeProtocol::V3_1_1,
                crate::crd::ProtocolVersion::Mqttv5 => BridgeProtocol::V5,
            },
            // Unique per namespace, so two namespaces bridging to one remote do not take over
            // each other's session there.
            client_id: Some(spec.remote.client_id.clone().unwrap_or_else(|| format!("{namespace}.{name}"))),
            keepalive: std::time::Duration::from_secs(
                u64::try_from(spec.remote.keepalive.max(0)).unwrap_or(60),
            ),
            clean_session: spec.remote.clean_session,
            session_expiry: None,
            username,
            password_file,
            tls,
            backoff: Backoff::default(),
            queue: Default::default(),
            notifications: Default::default(),
            topics: spec
                .topics
                .iter()
                .map(|t| BridgeTopic {
                    pattern: t.pattern.clone(),
                    direction: match t.direction {
                        crate::crd::Direction::In => Direction::In,
                        crate::crd::Direction::Out => Direction::Out,
                        crate::crd::Direction::Both => Direction::Both,
                    },
                    qos: u8::try_from(t.qos.clamp(0, 2)).unwrap_or(1),
                    local_prefix: t.local_prefix.clone(),
                    remote_prefix: t.remote_prefix.clone(),
                })
                .collect(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::PasswordVerifier as _;

    use super::*;
    use crate::crd::AclAccess;

    fn cheap() -> PasswordHasher {
        PasswordHasher::new(argon2::Params::new(256, 1, 1, None).expect("valid params"))
    }

    fn user(name: &str, password: &str, acl: &[(&str, AclAccess)]) -> UserEntry {
        UserEntry {
            object: name.to_string(),
            username: name.to_string(),
            credential: Credential::Password(password.to_string()),
            acl: acl.iter().map(|(t, a)| AclRule { topic: t.to_string(), access: *a }).collect(),
        }
    }

    #[test]
    fn password_file_is_mosquitto_format_deterministic_and_verifies() {
        let users = vec![user("zed", "pw-z", &[]), user("alice", "s3cret", &[])];
        let hasher = cheap();
        let first = password_file("ns", "b", &users, &hasher).expect("hash");
        let second =
            password_file("ns", "b", &users, &PasswordHasher::new(hasher.params.clone())).expect("hash");
        assert_eq!(first, second, "same input, same bytes (fresh cache)");
        let lines: Vec<&str> = first.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("alice:$argon2id$v=19$m=256,t=1,p=1$"), "{}", lines[0]);
        assert!(lines[1].starts_with("zed:$argon2id$"));
        let phc = lines[0].split_once(':').map(|(_, h)| h).expect("user:hash");
        let parsed = argon2::PasswordHash::new(phc).expect("PHC string");
        argon2::Argon2::default()
            .verify_password(b"s3cret", &parsed)
            .expect("the hash verifies the password");
        assert!(argon2::Argon2::default().verify_password(b"wrong", &parsed).is_err());
        // Another broker or namespace salts differently.
        let other = password_file("ns", "b2", &users, &hasher).expect("hash");
        assert_ne!(first.lines().nth(1), other.lines().nth(1));
    }

    #[test]
    fn placeholders_are_comments() {
        let users = vec![UserEntry {
            object: "gen".into(),
            username: "gen".into(),
            credential: Credential::Placeholder("generated in-cluster".into()),
            acl: vec![],
        }];
        let file = password_file("ns", "b", &users, &cheap()).expect("no hashing needed");
        assert!(file.lines().all(|l| l.starts_with('#')), "{file}");
        assert!(file.contains("gen: placeholder, generated in-cluster"));
    }

    #[test]
    fn acl_file_in_mosquitto_grammar() {
        let users = vec![
            user("bob", "x", &[("cmd/bob/#", AclAccess::Read), ("secret/#", AclAccess::Deny)]),
            user("alice", "x", &[("sensors/+/temp", AclAccess::Write), ("a", AclAccess::Readwrite)]),
        ];
        assert_eq!(
            acl_file("ns", "b", &users, false),
            "# Mosquitto ACL file for MqttBroker ns/b, generated by fleetmq-operator from its MqttUsers.\n\
             \nuser alice\ntopic write sensors/+/temp\ntopic readwrite a\n\
             \nuser bob\ntopic read cmd/bob/#\ntopic deny secret/#\n"
        );
    }

    #[test]
    fn anonymous_clients_get_general_rules_only_when_allowed() {
        let users = vec![user("bob", "x", &[("cmd/bob/#", AclAccess::Read)])];
        let open = acl_file("ns", "b", &users, true);
        // General rules come before the first `user` line, or they would be bob's.
        let general = open.split("\nuser ").next().expect("text before the user blocks");
        assert!(general.contains("\ntopic readwrite #\ntopic read $SYS/#\n"), "{open}");
        assert!(open.ends_with("\nuser bob\ntopic read cmd/bob/#\n"), "{open}");
        let closed = acl_file("ns", "b", &users, false);
        let general = closed.split("\nuser ").next().expect("text before the user blocks");
        assert!(!general.lines().any(|l| l.starts_with("topic ")), "no general rules: {closed}");
    }

    #[test]
    fn generated_passwords() {
        let a = generate_password().expect("random");
        let b = generate_password().expect("random");
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn salts_differ_per_user_broker_namespace() {
        let s = salt("ns", "b", "u");
        assert_eq!(s, salt("ns", "b", "u"));
        assert_ne!(s, salt("ns", "b", "v"));
        assert_ne!(s, salt("ns", "c", "u"));
        assert_ne!(s, salt("ns2", "b", "u"));
        assert_ne!(salt("a", "bc", "u"), salt("ab", "c", "u"));
    }
}
