//! Authentication and authorization: the Mosquitto-format password file
//! ([`password::PasswordFile`]), the Mosquitto-format ACL file ([`acl::Acl`]) and the logic of
//! the `fleetmq-broker passwd` subcommand ([`passwd`]).
//!
//! Everything here is pure domain code: no sockets, no sessions, no reload loop. The broker
//! loads a [`PasswordFile`] and an [`Acl`] at start and on every change of the files, swaps them
//! in whole (a file with one bad line is refused whole, so the previous one stays in force), and
//! asks them:
//!
//! - CONNECT: [`PasswordFile::verify`] (constant cost for unknown users, verified-credentials
//!   cache so reconnect storms stay cheap);
//! - after CONNECT: [`Acl::client`] once per connection, giving a [`ClientAcl`] with the
//!   client's rules resolved (`%u`/`%c` substituted, filters split into levels);
//! - PUBLISH: [`ClientAcl::can_publish`]; SUBSCRIBE: [`ClientAcl::can_subscribe`]; every
//!   delivered message (including retained ones): [`ClientAcl::can_read`].
//!
//! docs/security.md describes the file formats and the semantics for operators.

pub mod acl;
pub mod passwd;
pub mod password;

use std::path::Path;

pub use acl::{Access, Acl, ClientAcl};
pub use password::{HashScheme, PasswordFile};

/// Why a password or ACL file was refused.
///
/// Messages name the file and the line and never contain a hash or a password.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file as configured.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A line is malformed; the whole file is refused.
    #[error("{origin}:{line}: {reason}")]
    Parse {
        /// The file (its path as configured, or a label for text that came from elsewhere).
        origin: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong, without the secret parts of the line.
        reason: String,
    },
}

impl AuthError {
    pub(crate) fn parse(origin: &str, line: usize, reason: impl Into<String>) -> Self {
        AuthError::Parse { origin: origin.to_string(), line, reason: reason.into() }
    }
}

/// Reads a whole auth file as UTF-8. Invalid UTF-8 is a parse error on the line where it
/// occurs (not an opaque I/O error), so the message points at the line to fix.
pub(crate) fn read_text(path: &Path) -> Result<String, AuthError> {
    let origin = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| AuthError::Read { path: origin.clone(), source })?;
    String::from_utf8(bytes).map_err(|err| {
        let valid = &err.as_bytes()[..err.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
        AuthError::parse(&origin, line, "not valid UTF-8")
    })
}

/// The auth files in force: loaded at start and swapped in whole on reload.
#[derive(Debug)]
pub struct AuthState {
    /// `auth.password_file`, when configured.
    pub passwords: Option<PasswordFile>,
    /// `auth.acl_file`, or allow-all (except `$SYS` writes) without one.
    pub acl: Acl,
}

impl Default for AuthState {
    fn default() -> Self {
        AuthState { passwords: None, acl: Acl::allow_all() }
    }
}

impl AuthState {
    /// Loads the files `auth` names. Errors name the file and line; nothing is half-loaded.
    pub fn load(auth: &fleetmq_config::Auth) -> Result<Self, AuthError> {
        let passwords = auth.password_file.as_deref().map(PasswordFile::load).transpose()?;
        let acl = match auth.acl_file.as_deref() {
            Some(path) => Acl::load(path)?,
            None => Acl::allow_all(),
        };
        for warning in acl.warnings() {
            tracing::warn!("{warning}");
        }
        Ok(AuthState { passwords, acl })
    }

    /// The files this state was loaded from (for change detection).
    pub fn files(auth: &fleetmq_config::Auth) -> Vec<std::path::PathBuf> {
        auth.password_file.iter().chain(auth.acl_file.iter()).cloned().collect()
    }
}

/// Whether `topic` is in the broker's `$SYS` tree.
pub fn is_sys_topic(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sys_topics() {
        assert!(is_sys_topic("$SYS"));
        assert!(is_sys_topic("$SYS/broker/uptime"));
        assert!(!is_sys_topic("$SYSTEM/x"));
        assert!(!is_sys_topic("sys/$SYS"));
        assert!(!is_sys_topic("$share/g/$SYS"));
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let dir = std::env::temp_dir().join(format!("fleetmq-auth-utf8-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("acl");
        std::fs::write(&path, b"# ok\ntopic a\ntopic \xff\n").expect("write");
        let err = read_text(&path).expect_err("invalid UTF-8 is refused");
        assert_eq!(err.to_string(), format!("{}:3: not valid UTF-8", path.display()));
        let missing = read_text(&dir.join("nope")).expect_err("missing file");
        assert!(matches!(missing, AuthError::Read { .. }), "{missing:?}");
        assert!(missing.to_string().starts_with("cannot read "), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
