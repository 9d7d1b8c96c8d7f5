//! The Mosquitto password file: one `username:hash` per line, blank lines and `#` comments
//! ignored.
//!
//! Accepted hashes, all of which real tools write:
//!
//! - `$7$<iterations>$<base64 salt>$<base64 hash>`: PBKDF2-HMAC-SHA512 with a 64-byte output,
//!   `mosquitto_passwd`'s default in Mosquitto 2.0 (101 iterations, 12-byte salt);
//! - `$6$<base64 salt>$<base64 hash>`: Mosquitto's own salted SHA-512, i.e.
//!   `sha512(password || salt)` (`mosquitto_passwd -H sha512`, Mosquitto 1.x). This is *not*
//!   glibc's sha512-crypt, which shares the `$6$` prefix;
//! - `$argon2id$v=19$m=..,t=..,p=..$salt$hash` PHC strings: Mosquitto 2.1's default, what
//!   `fleetmq-operator` renders and what `fleetmq-broker passwd` writes.
//!
//! The salts inside `$6$`/`$7$` are decoded from base64 and used as bytes; that is what
//! Mosquitto does (checked against files written by mosquitto_passwd 2.0.11, see the tests).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use argon2::PasswordHash;
use argon2::password_hash::PasswordHasher as _;
use argon2::password_hash::PasswordVerifier as _;
use argon2::password_hash::phc::{Output, Salt};
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use sha2::{Digest as _, Sha256, Sha512};

use super::AuthError;

/// argon2id memory cost (KiB) of the hashes `fleetmq-broker passwd` writes: the first
/// configuration of OWASP's Password Storage Cheat Sheet (m=19 MiB, t=2, p=1), also the argon2
/// crate's default and what the operator renders.
pub const ARGON2_M_COST: u32 = 19_456;
/// argon2id iterations, see [`ARGON2_M_COST`].
pub const ARGON2_T_COST: u32 = 2;
/// argon2id parallelism, see [`ARGON2_M_COST`].
pub const ARGON2_P_COST: u32 = 1;

/// Largest argon2 memory cost accepted in a password file (1 GiB, in KiB). Every CONNECT of
/// such a user allocates that much: a typo (an extra digit) must not let one login exhaust the
/// broker's memory.
const ARGON2_MAX_M_COST: u32 = 1 << 20;

/// Default bound of the verified-credentials cache (entries; about 50 bytes each).
pub const DEFAULT_CACHE_CAPACITY: usize = 65_536;

/// Bytes in a SHA-512 digest, the stored hash length of `$6$` and `$7$`.
const SHA512_LEN: usize = 64;

/// Hash schemes of a password file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashScheme {
    /// `$6$`: Mosquitto's salted SHA-512 (one hash; weak against offline guessing).
    Sha512,
    /// `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2Sha512,
    /// `$argon2id$`: argon2id PHC string.
    Argon2id,
}

/// One parsed hash.
enum StoredHash {
    Sha512 { salt: Vec<u8>, hash: [u8; SHA512_LEN] },
    Pbkdf2 { iterations: u32, salt: Vec<u8>, hash: [u8; SHA512_LEN] },
    Argon2id(Box<PasswordHash>),
}

/// What makes two hashes cost the same to verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Cost {
    scheme: HashScheme,
    a: u32,
    b: u32,
    c: u32,
}

/// Standard base64 as Mosquitto writes it (OpenSSL, padded), also accepting unpadded text so
/// hand-made files work.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

impl StoredHash {
    /// Parses the hash part of a line. The error text never contains the hash itself.
    fn parse(text: &str) -> Result<Self, String> {
        if let Some(rest) = text.strip_prefix("$6$") {
            let err = |what: &str| {
                format!("malformed $6$ hash (Mosquitto's salted SHA-512, not glibc sha512-crypt): {what}")
            };
            let (salt, hash) = rest.split_once('$').ok_or_else(|| err("expected $6$<salt>$<hash>"))?;
            if hash.contains('$') {
                return Err(err("expected $6$<salt>$<hash>"));
            }
            let salt = decode_salt(salt).map_err(|e| err(&e))?;
            let hash = decode_digest(hash).map_err(|e| err(&e))?;
            return Ok(StoredHash::Sha512 { salt, hash });
        }
        if let Some(rest) = text.strip_prefix("$7$") {
            let err = |what: &str| format!("malformed $7$ (PBKDF2-SHA512) hash: {what}");
            let mut parts = rest.split('$');
            let (Some(iterations), Some(salt), Some(hash), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(err("expected $7$<iterations>$<salt>$<hash>"));
            };
            let iterations = iterations
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| err("iterations is not a positive number"))?;
            let salt = decode_salt(salt).map_err(|e| err(&e))?;
            let hash = decode_digest(hash).map_err(|e| err(&e))?;
            return Ok(StoredHash::Pbkdf2 { iterations, salt, hash });
        }
        if text.starts_with("$argon2id$") {
            let err = |what: &dyn std::fmt::Display| format!("malformed argon2id hash: {what}");
            let phc = PasswordHash::new(text).map_err(|e| err(&e))?;
            let params = argon2::Params::try_from(&phc).map_err(|e| err(&e))?;
            if params.m_cost() > ARGON2_MAX_M_COST {
                return Err(err(&format!(
                    "memory cost m={} KiB is above the limit of {ARGON2_MAX_M_COST} KiB",
                    params.m_cost()
                )));
            }
            match (&phc.salt, &phc.hash) {
                (Some(_), Some(_)) => {}
                _ => return Err(err(&"salt or hash missing")),
            }
            return Ok(StoredHash::Argon2id(Box::new(phc)));
        }
        Err(unknown_format(text))
    }

    fn scheme(&self) -> HashScheme {
        match self {
            StoredHash::Sha512 { .. } => HashScheme::Sha512,
            StoredHash::Pbkdf2 { .. } => HashScheme::Pbkdf2Sha512,
            StoredHash::Argon2id(_) => HashScheme::Argon2id,
        }
    }

    fn cost(&self) -> Cost {
        let scheme = self.scheme();
        match self {
            StoredHash::Sha512 { .. } => Cost { scheme, a: 0, b: 0, c: 0 },
            StoredHash::Pbkdf2 { iterations, .. } => Cost { scheme, a: *iterations, b: 0, c: 0 },
            StoredHash::Argon2id(phc) => match argon2::Params::try_from(phc.as_ref()) {
                Ok(p) => Cost { scheme, a: p.m_cost(), b: p.t_cost(), c: p.p_cost() },
                // Unreachable: parse() checked the parameters.
                Err(_) => Cost { scheme, a: 0, b: 0, c: 0 },
            },
        }
    }

    /// A hash with the same scheme and cost that no password verifies against: the stand-in
    /// for unknown users, so their CONNECT costs what a wrong password costs.
    fn dummy(&self) -> StoredHash {
        const SALT: [u8; 16] = *b"fleetmq-no-user!";
        match self {
            StoredHash::Sha512 { .. } => {
                StoredHash::Sha512 { salt: SALT[..12].to_vec(), hash: [0; SHA512_LEN] }
            }
            StoredHash::Pbkdf2 { iterations, .. } => StoredHash::Pbkdf2 {
                iterations: *iterations,
                salt: SALT[..12].to_vec(),
                hash: [0; SHA512_LEN],
            },
            StoredHash::Argon2id(phc) => {
                let len = phc.hash.as_ref().map_or(32, Output::len);
                let mut dummy = phc.as_ref().clone();
                // Both constructors only fail for lengths outside the PHC limits; 16 and a
                // length taken from a parsed hash are inside them.
                dummy.salt = Salt::new(&SALT).ok();
                dummy.hash = Output::new(&vec![0u8; len]).ok();
                StoredHash::Argon2id(Box::new(dummy))
            }
        }
    }

    fn default_dummy() -> StoredHash {
        // Same parameters as `passwd` writes; only the cost matters, never the value.
        let text = "$argon2id$v=19$m=19456,t=2,p=1$ZmxlZXRtcS1uby11c2VyIQ$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        match StoredHash::parse(text) {
            Ok(hash) => hash,
            // Unreachable (a unit test parses the literal); a cheap stand-in keeps this total.
            Err(_) => StoredHash::Sha512 { salt: vec![0; 12], hash: [0; SHA512_LEN] },
        }
    }

    fn verify(&self, password: &[u8]) -> bool {
        match self {
            StoredHash::Sha512 { salt, hash } => {
                let mut h = Sha512::new();
                h.update(password);
                h.update(salt);
                ct_eq(&h.finalize(), hash)
            }
            StoredHash::Pbkdf2 { iterations, salt, hash } => {
                let mut out = [0u8; SHA512_LEN];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                ct_eq(&out, hash)
            }
            // The PHC `Output` comparison inside is constant-time.
            StoredHash::Argon2id(phc) => {
                argon2::Argon2::default().verify_password(password, phc.as_ref()).is_ok()
            }
        }
    }
}

fn decode_salt(text: &str) -> Result<Vec<u8>, String> {
    match B64.decode(text) {
        Ok(salt) if !salt.is_empty() => Ok(salt),
        Ok(_) => Err("empty salt".into()),
        Err(_) => Err("salt is not base64".into()),
    }
}

fn decode_digest(text: &str) -> Result<[u8; SHA512_LEN], String> {
    let bytes = B64.decode(text).map_err(|_| "hash is not base64".to_string())?;
    let len = bytes.len();
    bytes.try_into().map_err(|_| format!("hash is {len} bytes, expected {SHA512_LEN}"))
}

/// The "unknown format" reason. It shows the scheme identifier only when it looks like one
/// (`$5$`, `$2b$`, `$argon2i$`, ...): a plain-text password that happens to start with `$`
/// must not end up in a log.
fn unknown_format(text: &str) -> String {
    let Some(rest) = text.strip_prefix('$') else {
        return "not a password hash (a plain-text password? hash it with `fleetmq-broker passwd`)".into();
    };
    let id = rest.split('$').next().unwrap_or_default();
    let known_shape = !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && (id.len() <= 2
            || ["argon2", "pbkdf2", "scrypt", "bcrypt", "sha", "md5"].iter().any(|p| id.starts_with(p)));
    if known_shape {
        format!("unknown hash format \"${id}$...\" (supported: $6$, $7$, $argon2id$)")
    } else {
        "unknown hash format (supported: $6$, $7$, $argon2id$)".into()
    }
}

/// Constant-time equality of two byte strings of public length.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

/// Credentials that verified recently, keyed by a keyed SHA-256 of (username, password): a
/// reconnect storm of N devices costs N slow hashes once, not once per reconnect.
///
/// Only successes are stored (a failed guess always pays the full hash). The key is random
/// per process, so the fingerprints in memory are no fast offline oracle for the passwords.
/// Bounded by two generations: when the current one is half the capacity it becomes the
/// previous one and the old previous one is dropped; a hit in the previous generation moves
/// to the current one, so busy credentials stay.
struct VerifiedCache {
    key: Option<[u8; 32]>,
    half: usize,
    generations: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    current: HashSet<[u8; 32]>,
    previous: HashSet<[u8; 32]>,
}

impl VerifiedCache {
    fn new(capacity: usize) -> Self {
        let key = if capacity == 0 { None } else { random_key() };
        VerifiedCache { key, half: capacity.div_ceil(2), generations: Mutex::new(Generations::default()) }
    }

    fn fingerprint(&self, username: &str, password: &[u8]) -> Option<[u8; 32]> {
        let key = self.key.as_ref()?;
        let mut h = Sha256::new();
        h.update(key);
        // Length prefix: ("ab", "c") and ("a", "bc") must differ.
        h.update((username.len() as u64).to_be_bytes());
        h.update(username.as_bytes());
        h.update(password);
        Some(h.finalize().into())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // A panic while holding this lock cannot leave the sets inconsistent.
        self.generations.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn hit(&self, fp: &[u8; 32]) -> bool {
        let mut g = self.lock();
        if g.current.contains(fp) {
            return true;
        }
        if g.previous.remove(fp) {
            Self::insert_locked(&mut g, *fp, self.half);
            return true;
        }
        false
    }

    fn insert(&self, fp: [u8; 32]) {
        Self::insert_locked(&mut self.lock(), fp, self.half);
    }

    fn insert_locked(g: &mut Generations, fp: [u8; 32], half: usize) {
        if g.current.len() >= half {
            g.previous = std::mem::take(&mut g.current);
        }
        g.current.insert(fp);
    }

    fn len(&self) -> usize {
        let g = self.lock();
        g.current.len() + g.previous.len()
    }
}

fn random_key() -> Option<[u8; 32]> {
    // Two 16-byte salts from the OS source (argon2's own getrandom path): no extra crate.
    let a = argon2::password_hash::try_generate_salt().ok()?;
    let b = argon2::password_hash::try_generate_salt().ok()?;
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(&a);
    key[16..].copy_from_slice(&b);
    Some(key)
}

/// A parsed password file. Immutable: a reload builds a new one (which also drops the
/// verified-credentials cache) and swaps it in.
pub struct PasswordFile {
    origin: String,
    users: HashMap<String, StoredHash>,
    /// Usernames in file order.
    order: Vec<String>,
    dummy: StoredHash,
    cache: VerifiedCache,
}

impl std::fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the hashes.
        f.debug_struct("PasswordFile")
            .field("origin", &self.origin)
            .field("users", &self.order.len())
            .finish()
    }
}

impl PasswordFile {
    /// Reads and parses the file at `path`; errors name the path.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, AuthError> {
        let path = path.as_ref();
        let text = super::read_text(path)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses password-file text. `origin` names the text in errors (normally the path).
    ///
    /// One bad line refuses the whole file: a malformed line, an unknown hash format, a
    /// username with control characters or surrounding whitespace, or a user listed twice.
    pub fn parse(text: &str, origin: &str) -> Result<Self, AuthError> {
        let mut users: HashMap<String, StoredHash> = HashMap::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        let mut order = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = raw.trim_end();
            if line.trim_start().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let err = |reason: String| AuthError::parse(origin, line_no, reason);
            // The text before ':' may be a password pasted by mistake: not echoed.
            let Some((username, hash)) = line.split_once(':') else {
                return Err(err("expected username:hash".into()));
            };
            check_username(username).map_err(|r| err(r.to_string()))?;
            let hash = hash.trim();
            if hash.is_empty() {
                return Err(err(format!("user {username:?} has no hash")));
            }
            if let Some(first) = first_line.get(username) {
                return Err(err(format!("user {username:?} is listed twice (first on line {first})")));
            }
            let parsed = StoredHash::parse(hash).map_err(|r| err(format!("user {username:?}: {r}")))?;
            first_line.insert(username.to_string(), line_no);
            users.insert(username.to_string(), parsed);
            order.push(username.to_string());
        }
        let dummy =
            most_common_cost(&order, &users).map_or_else(StoredHash::default_dummy, StoredHash::dummy);
        Ok(PasswordFile {
            origin: origin.to_string(),
            users,
            order,
            dummy,
            cache: VerifiedCache::new(DEFAULT_CACHE_CAPACITY),
        })
    }

    /// The same file with a verified-credentials cache of `capacity` entries (0 disables it).
    pub fn with_cache_capacity(mut self, capacity: usize) -> Self {
        self.cache = VerifiedCache::new(capacity);
        self
    }

    /// Whether `password` is `username`'s password.
    ///
    /// Unknown users are verified against a dummy hash of the file's most common scheme and
    /// cost, so the answer takes as long as for a wrong password and does not reveal which
    /// users exist. Hash comparisons are constant-time. Successes are cached (see the module
    /// docs), so repeated logins with the same credentials skip the slow hash.
    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        let fingerprint = self.cache.fingerprint(username, password);
        if let Some(fp) = &fingerprint
            && self.cache.hit(fp)
        {
            return true;
        }
        let (hash, known) = match self.users.get(username) {
            Some(hash) => (hash, true),
            None => (&self.dummy, false),
        };
        // Always run the hash, then combine: no early exit for unknown users.
        let ok = hash.verify(password) & known;
        if ok && let Some(fp) = fingerprint {
            self.cache.insert(fp);
        }
        ok
    }

    /// Whether the file has a line for `username`.
    pub fn contains(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }

    /// The usernames, in file order.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(String::as_str)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether the file has no users (every CONNECT with credentials fails).
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The hash scheme of `username`'s line, e.g. to warn about legacy `$6$` hashes.
    pub fn scheme(&self, username: &str) -> Option<HashScheme> {
        self.users.get(username).map(StoredHash::scheme)
    }

    /// Where the file came from (its path as configured).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Entries in the verified-credentials cache (for tests and metrics).
    pub fn cached_credentials(&self) -> usize {
        self.cache.len()
    }
}

fn most_common_cost<'a>(order: &[String], users: &'a HashMap<String, StoredHash>) -> Option<&'a StoredHash> {
    let mut counts: HashMap<Cost, (usize, usize)> = HashMap::new();
    for (position, name) in order.iter().enumerate() {
        if let Some(hash) = users.get(name) {
            counts.entry(hash.cost()).or_insert((0, position)).0 += 1;
        }
    }
    // Most users; ties go to the cost seen first, so the choice is deterministic.
    let (_, (_, position)) =
        counts.into_iter().max_by(|(_, (n1, p1)), (_, (n2, p2))| n1.cmp(n2).then(p2.cmp(p1)))?;
    users.get(&order[position])
}

/// Why a username cannot go into a password file (also used by `passwd`).
pub(crate) fn check_username(username: &str) -> Result<(), &'static str> {
    if username.is_empty() {
        return Err("empty username");
    }
    if username.contains(':') {
        return Err("username contains ':'");
    }
    if username.chars().any(char::is_control) {
        return Err("username contains a control character");
    }
    if username.trim() != username {
        return Err("username starts or ends with whitespace");
    }
    if username.len() > usize::from(u16::MAX) {
        return Err("username is longer than 65535 bytes (the MQTT limit)");
    }
    Ok(())
}

/// Why hashing a new password failed.
#[derive(Debug, thiserror::Error)]
#[error("hashing the password: {0}")]
pub struct HashError(String);

/// The argon2id PHC string for `password` with a fresh random 16-byte salt and the
/// [`ARGON2_M_COST`]/[`ARGON2_T_COST`]/[`ARGON2_P_COST`] parameters.
pub fn hash_password(password: &[u8]) -> Result<String, HashError> {
    hash_password_with(password, argon2_params()?)
}

/// The argon2id parameters `passwd` writes.
pub fn argon2_params() -> Result<argon2::Params, HashError> {
    argon2::Params::new(ARGON2_M_COST, ARGON2_T_COST, ARGON2_P_COST, None)
        .map_err(|e| HashError(e.to_string()))
}

/// [`hash_password`] with explicit parameters (tests use cheap ones).
pub fn hash_password_with(password: &[u8], params: argon2::Params) -> Result<String, HashError> {
    let salt = argon2::password_hash::try_generate_salt().map_err(|e| HashError(e.to_string()))?;
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password_with_salt(password, &salt)
        .map(|phc| phc.to_string())
        .map_err(|e| HashError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by Debian's mosquitto_passwd 2.0.11 (`-H sha512`); see testdata/README.md.
    const MOSQUITTO_SHA512: &str = include_str!("testdata/mosquitto-sha512.passwd");
    /// Written by Debian's mosquitto_passwd 2.0.11 (default sha512-pbkdf2).
    const MOSQUITTO_PBKDF2: &str = include_str!("testdata/mosquitto-pbkdf2.passwd");
    /// Rendered by `fleetmq-operator render` (argon2id m=19456,t=2,p=1).
    const OPERATOR_RENDER: &str = include_str!("testdata/operator-render.passwd");

    fn parse(text: &str) -> PasswordFile {
        PasswordFile::parse(text, "passwords").expect("valid password file")
    }

    fn parse_err(text: &str) -> String {
        PasswordFile::parse(text, "passwords").expect_err("invalid password file").to_string()
    }

    fn cheap_params() -> argon2::Params {
        argon2::Params::new(256, 1, 1, None).expect("valid params")
    }

    #[test]
    fn mosquitto_sha512_file_verifies() {
        let file = parse(MOSQUITTO_SHA512);
        assert_eq!(file.users().collect::<Vec<_>>(), ["alice", "bob"]);
        assert_eq!(file.scheme("alice"), Some(HashScheme::Sha512));
        assert!(file.verify("alice", b"s3cret"));
        assert!(file.verify("bob", "pässwörd:with colon".as_bytes()));
        assert!(!file.verify("alice", b"s3cret "));
        assert!(!file.verify("alice", b"S3cret"));
        assert!(!file.verify("bob", b"s3cret"), "alice's password is not bob's");
        assert!(!file.verify("alice", b""));
    }

    #[test]
    fn mosquitto_pbkdf2_file_verifies() {
        let file = parse(MOSQUITTO_PBKDF2);
        assert_eq!(file.users().collect::<Vec<_>>(), ["alice", "carol", "dave"]);
        assert_eq!(file.scheme("dave"), Some(HashScheme::Pbkdf2Sha512));
        assert!(file.verify("alice", b"s3cret"));
        assert!(file.verify("carol", b""), "mosquitto_passwd 2.0.11 accepted an empty password");
        assert!(!file.verify("carol", b" "));
        assert!(file.verify("dave", b"lowiter"), "-I 1000 iteration count is honoured");
        assert!(!file.verify("dave", b"lowite"));
        assert!(!file.verify("alice", b"wrong"));
    }

    #[test]
    fn pbkdf2_iterations_come_from_the_line() {
        // Same salt and hash as dave's line but a different count: must fail, proving the
        // count is used rather than Mosquitto's default 101.
        let dave = MOSQUITTO_PBKDF2.lines().find(|l| l.starts_with("dave:")).expect("dave's line");
        let tampered = dave.replacen("$7$1000$", "$7$101$", 1);
        let file = parse(&tampered);
        assert!(!file.verify("dave", b"lowiter"));
    }

    #[test]
    fn operator_rendered_argon2id_verifies() {
        let file = parse(OPERATOR_RENDER);
        // The placeholder comment is not a user.
        assert_eq!(file.users().collect::<Vec<_>>(), ["grafana-dashboard"]);
        assert_eq!(file.scheme("grafana-dashboard"), Some(HashScheme::Argon2id));
        assert!(file.verify("grafana-dashboard", b"example-only-change-me"));
        assert!(!file.verify("grafana-dashboard", b"example-only-change-me!"));
        assert!(!file.contains("sensor-gateway"));
    }

    #[test]
    fn operator_style_hash_with_derived_salt_verifies() {
        // The operator hashes with argon2id v0x13 and a 16-byte salt derived from
        // (namespace, broker, username) via SHA-256 (operator/src/auth.rs); reproduce that.
        let mut h = Sha256::new();
        for part in ["fleetmq.io/password-salt/v1", "ns", "b", "alice"] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        let digest: [u8; 32] = h.finalize().into();
        let phc = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, cheap_params())
            .hash_password_with_salt(b"s3cret", &digest[..16])
            .expect("hash")
            .to_string();
        assert!(phc.starts_with("$argon2id$v=19$m=256,t=1,p=1$"), "{phc}");
        let file = parse(&format!("# generated\nalice:{phc}\n"));
        assert!(file.verify("alice", b"s3cret"));
        assert!(!file.verify("alice", b"s3cre"));
    }

    #[test]
    fn passwd_hashes_verify_and_use_the_documented_parameters() {
        let phc = hash_password_with(b"pw", cheap_params()).expect("hash");
        let file = parse(&format!("u:{phc}"));
        assert!(file.verify("u", b"pw"));
        assert!(!file.verify("u", b"pW"));
        let again = hash_password_with(b"pw", cheap_params()).expect("hash");
        assert_ne!(phc, again, "fresh random salt per hash");
        let real = hash_password(b"pw").expect("hash");
        assert!(real.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{real}");
    }

    #[test]
    fn mixed_schemes_comments_blank_lines_and_crlf() {
        let text = format!(
            "# comment\n\n   \n  # indented comment\r\n{}\r\n{}\n",
            MOSQUITTO_SHA512.lines().next().expect("alice"),
            MOSQUITTO_PBKDF2.lines().nth(2).expect("dave"),
        );
        let file = parse(&text);
        assert_eq!(file.len(), 2);
        assert!(file.verify("alice", b"s3cret"));
        assert!(file.verify("dave", b"lowiter"));
    }

    #[test]
    fn unknown_users_fail_against_the_dummy_of_the_common_scheme() {
        let file = parse(MOSQUITTO_PBKDF2);
        assert!(!file.contains("mallory"));
        assert!(!file.verify("mallory", b"s3cret"));
        assert!(!file.verify("mallory", b""));
        // The dummy costs what most real lines cost (alice and carol: $7$ with 101 rounds).
        assert_eq!(file.dummy.cost(), Cost { scheme: HashScheme::Pbkdf2Sha512, a: 101, b: 0, c: 0 });
        let file = parse(OPERATOR_RENDER);
        assert_eq!(file.dummy.cost(), Cost { scheme: HashScheme::Argon2id, a: 19_456, b: 2, c: 1 });
        assert!(!file.verify("nobody", b"example-only-change-me"));
        // An empty file still pays an argon2id hash with passwd's parameters.
        let empty = parse("# nobody yet\n");
        assert!(empty.is_empty());
        assert_eq!(empty.dummy.cost(), Cost { scheme: HashScheme::Argon2id, a: 19_456, b: 2, c: 1 });
    }

    #[test]
    fn dummy_hashes_never_verify() {
        for text in [MOSQUITTO_SHA512, MOSQUITTO_PBKDF2] {
            let file = parse(text);
            assert!(!file.dummy.verify(b""));
            assert!(!file.dummy.verify(b"s3cret"));
        }
        assert!(!StoredHash::default_dummy().verify(b""));
        assert_eq!(StoredHash::default_dummy().scheme(), HashScheme::Argon2id);
    }

    #[test]
    fn malformed_lines_name_file_and_line_and_hide_secrets() {
        let alice = MOSQUITTO_SHA512.lines().next().expect("alice");
        let cases = [
            (format!("# c\n{alice}\nbob:$5$rounds=5000$abc$def\n"), "passwords:3: user \"bob\": unknown hash format \"$5$...\""),
            ("hunter2\n".to_string(), "passwords:1: expected username:hash"),
            ("bob:hunter2\n".to_string(), "passwords:1: user \"bob\": not a password hash"),
            ("\n\nbob:\n".to_string(), "passwords:3: user \"bob\" has no hash"),
            (":$7$101$YWJj$YWJj\n".to_string(), "passwords:1: empty username"),
            ("b\u{1}ob:$6$YWJj$YWJj\n".to_string(), "passwords:1: username contains a control character"),
            (" bob:$6$YWJj$YWJj\n".to_string(), "passwords:1: username starts or ends with whitespace"),
            ("bob:$6$YWJj\n".to_string(), "passwords:1: user \"bob\": malformed $6$ hash"),
            ("bob:$6$!!!!$YWJj\n".to_string(), "passwords:1: user \"bob\": malformed $6$ hash (Mosquitto's salted SHA-512, not glibc sha512-crypt): salt is not base64"),
            ("bob:$6$YWJj$YWJj\n".to_string(), "passwords:1: user \"bob\": malformed $6$ hash (Mosquitto's salted SHA-512, not glibc sha512-crypt): hash is 3 bytes, expected 64"),
            ("bob:$7$x$YWJj$YWJj\n".to_string(), "passwords:1: user \"bob\": malformed $7$ (PBKDF2-SHA512) hash: iterations is not a positive number"),
            ("bob:$7$0$YWJj$YWJj\n".to_string(), "iterations is not a positive number"),
            ("bob:$7$101$YWJj\n".to_string(), "expected $7$<iterations>$<salt>$<hash>"),
            ("bob:$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ\n".to_string(), "passwords:1: user \"bob\": malformed argon2id hash"),
            ("bob:$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n".to_string(), "memory cost m=4194304 KiB is above the limit"),
            ("bob:$argon2i$v=19$m=256,t=1,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n".to_string(), "unknown hash format \"$argon2i$...\""),
            (format!("{alice}\n# again:\n{alice}\n"), "passwords:3: user \"alice\" is listed twice (first on line 1)"),
        ];
        for (text, expected) in &cases {
            let err = parse_err(text);
            assert!(err.contains(expected), "{text:?}: got {err:?}, expected it to contain {expected:?}");
            assert!(!err.contains("hunter2"), "no password in {err:?}");
            assert!(!err.contains("YWJj"), "no hash material in {err:?}");
            assert!(!err.contains("rounds=5000"), "no hash material in {err:?}");
        }
        // A `$`-prefixed plain-text password is not echoed as if it were a scheme name.
        let err = parse_err("bob:$Tr0ub4dor&3\n");
        assert!(!err.contains("Tr0ub4dor"), "{err}");
        assert!(err.contains("unknown hash format"), "{err}");
    }

    #[test]
    fn one_bad_line_refuses_the_whole_file() {
        let good = MOSQUITTO_PBKDF2;
        let err = PasswordFile::parse(&format!("{good}eve:plain\n"), "/etc/fleetmq/passwords")
            .expect_err("refused whole");
        match err {
            AuthError::Parse { origin, line, .. } => {
                assert_eq!(origin, "/etc/fleetmq/passwords");
                assert_eq!(line, 4);
            }
            other => panic!("unexpected error {other:?}"),
        }
    }

    #[test]
    fn load_reads_files_and_names_them() {
        let dir = std::env::temp_dir().join(format!("fleetmq-password-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("passwords");
        std::fs::write(&path, MOSQUITTO_PBKDF2).expect("write");
        let file = PasswordFile::load(&path).expect("load");
        assert_eq!(file.origin(), path.display().to_string());
        assert!(file.verify("alice", b"s3cret"));
        std::fs::write(&path, "alice:$1$abc$def\n").expect("write");
        let err = PasswordFile::load(&path).expect_err("bad file");
        assert_eq!(
            err.to_string(),
            format!(
                "{}:1: user \"alice\": unknown hash format \"$1$...\" (supported: $6$, $7$, $argon2id$)",
                path.display()
            )
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn cache_remembers_successes_only_and_is_per_file() {
        let phc = hash_password_with(b"pw", cheap_params()).expect("hash");
        let file = parse(&format!("u:{phc}\nv:{phc}\n"));
        assert_eq!(file.cached_credentials(), 0);
        assert!(!file.verify("u", b"wrong"));
        assert_eq!(file.cached_credentials(), 0, "failures are not cached");
        assert!(file.verify("u", b"pw"));
        assert_eq!(file.cached_credentials(), 1);
        assert!(file.verify("u", b"pw"), "cache hit still answers true");
        assert_eq!(file.cached_credentials(), 1);
        // Same password, other user: a separate entry (the username is part of the key).
        assert!(file.verify("v", b"pw"));
        assert_eq!(file.cached_credentials(), 2);
        // A cached success for u does not make another password pass.
        assert!(!file.verify("u", b"pw2"));
        // A reload (new PasswordFile) starts empty: a changed password takes effect at once.
        let other = hash_password_with(b"new", cheap_params()).expect("hash");
        let reloaded = parse(&format!("u:{other}\n"));
        assert_eq!(reloaded.cached_credentials(), 0);
        assert!(!reloaded.verify("u", b"pw"));
        assert!(reloaded.verify("u", b"new"));
        // Disabled cache.
        let uncached = parse(&format!("u:{phc}\n")).with_cache_capacity(0);
        assert!(uncached.verify("u", b"pw"));
        assert_eq!(uncached.cached_credentials(), 0);
    }

    #[test]
    fn cache_is_bounded_and_keeps_busy_entries() {
        let cache = VerifiedCache::new(4);
        let fp = |n: u8| cache.fingerprint(&format!("user{n}"), b"pw").expect("keyed");
        let busy = fp(0);
        cache.insert(busy);
        for n in 1..50 {
            cache.insert(fp(n));
            assert!(cache.len() <= 4, "bounded: {}", cache.len());
            // A frequently used credential survives the churn.
            assert!(cache.hit(&busy), "busy entry evicted at {n}");
        }
        assert!(!cache.hit(&fp(1)), "old idle entries are evicted");
        assert!(cache.hit(&fp(49)), "recent entries stay");
        // The fingerprint separates username and password.
        assert_ne!(cache.fingerprint("ab", b"c"), cache.fingerprint("a", b"bc"));
    }

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(ct_eq(b"", b""));
    }

    #[test]
    fn shareable_across_worker_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<PasswordFile>();
        let file = std::sync::Arc::new(parse(MOSQUITTO_PBKDF2));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let file = std::sync::Arc::clone(&file);
                std::thread::spawn(move || file.verify("alice", b"s3cret") && !file.verify("alice", b"x"))
            })
            .collect();
        for h in handles {
            assert!(h.join().expect("thread"));
        }
        assert_eq!(file.cached_credentials(), 1);
    }

    #[test]
    fn debug_output_has_no_hashes() {
        let file = parse(MOSQUITTO_SHA512);
        let debug = format!("{file:?}");
        assert!(debug.contains("users: 2"), "{debug}");
        assert!(!debug.contains("$6$"), "{debug}");
    }
}
