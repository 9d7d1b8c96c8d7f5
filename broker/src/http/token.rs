//! The admin API's bearer token, read from `http.admin_token_file` and re-read when the file
//! changes.
//!
//! Kubernetes updates a mounted Secret by swapping a `..data` symlink, so the file is checked
//! with `stat` (following links) on every request: a changed modification time, size, device
//! or inode means it is read again. Timestamps can be coarse (a rewrite within the same clock
//! tick keeps the time), so the file is also re-read when the cached copy is older than
//! [`MAX_AGE`]. A file that cannot be read, or holds only whitespace, disables the API (every
//! request is refused) rather than letting anything through.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// How long a token read from the file is trusted without reading it again.
pub const MAX_AGE: Duration = Duration::from_secs(2);

/// What the token file says about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The presented token is the configured one.
    Allowed,
    /// No token, or a different one.
    Denied,
    /// The token file cannot be used; the reason is logged when it first happens.
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    dev: u64,
    ino: u64,
}

#[derive(Debug)]
struct Cached {
    stamp: Option<Stamp>,
    /// The token, or why there is none.
    token: Result<Vec<u8>, String>,
    read_at: Instant,
}

/// The admin token source.
#[derive(Debug)]
pub struct AdminToken {
    path: PathBuf,
    cached: Mutex<Option<Cached>>,
}

impl AdminToken {
    /// A token read from `path` (lazily, on the first request, and logged there).
    pub fn new(path: &Path) -> Self {
        AdminToken { path: path.to_path_buf(), cached: Mutex::new(None) }
    }

    /// Checks the `Authorization: Bearer` token a request presented.
    pub fn check(&self, presented: Option<&[u8]>) -> Verdict {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        let stamp = std::fs::metadata(&self.path).ok().map(|m| Stamp {
            modified: m.modified().ok(),
            len: m.len(),
            dev: m.dev(),
            ino: m.ino(),
        });
        let fresh = cached
            .as_ref()
            .is_some_and(|c| c.stamp.is_some() && c.stamp == stamp && c.read_at.elapsed() < MAX_AGE);
        if !fresh {
            let token = self.read();
            let previous = cached.as_ref().map(|c| &c.token);
            match (&token, previous) {
                (Err(why), Some(Err(before))) if why == before => {}
                (Err(why), _) => tracing::error!(
                    file = %self.path.display(),
                    "admin API disabled: http.admin_token_file {why}"
                ),
                (Ok(new), Some(Ok(old))) if new == old => {}
                (Ok(_), None) => tracing::info!(file = %self.path.display(), "admin API token loaded"),
                (Ok(_), Some(_)) => {
                    tracing::info!(file = %self.path.display(), "admin API token changed, reloaded")
                }
            }
            *cached = Some(Cached { stamp, token, read_at: Instant::now() });
        }
        match cached.as_ref().map(|c| &c.token) {
            Some(Ok(token)) => match presented {
                Some(presented) if constant_time_eq(presented, token) => Verdict::Allowed,
                _ => Verdict::Denied,
            },
            _ => Verdict::Unavailable,
        }
    }

    fn read(&self) -> Result<Vec<u8>, String> {
        let bytes = std::fs::read(&self.path).map_err(|err| format!("cannot be read: {err}"))?;
        let token = bytes.trim_ascii();
        if token.is_empty() {
            return Err("is empty".to_string());
        }
        Ok(token.to_vec())
    }
}

/// Compares without an early exit, so the time taken does not tell how many leading bytes of
/// a guess were right (only the expected length, which the time of any comparison reveals).
fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(presented.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        diff |= presented.get(i).copied().unwrap_or(0) ^ e;
    }
    std::hint::black_box(diff) == 0
}

/// The token of an `Authorization: Bearer <token>` header value (scheme case-insensitive).
pub fn bearer(header: &[u8]) -> Option<&[u8]> {
    let header = header.trim_ascii();
    let (scheme, rest) = header.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_parse() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secre", b"secret"));
        assert!(!constant_time_eq(b"secretx", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
        assert!(!constant_time_eq(b"Secret", b"secret"));
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer   abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearer"), None);
    }

    #[test]
    fn file_changes_and_failures() {
        let dir = std::env::temp_dir().join(format!("fleetmq-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        let token = AdminToken::new(&path);
        assert_eq!(token.check(Some(b"x")), Verdict::Unavailable, "missing file");
        std::fs::write(&path, "one\n").unwrap();
        assert_eq!(token.check(Some(b"one")), Verdict::Allowed);
        assert_eq!(token.check(Some(b"two")), Verdict::Denied);
        assert_eq!(token.check(None), Verdict::Denied);
        // Replaced the way Kubernetes does it: a new file renamed over the old one.
        std::fs::write(dir.join("token.new"), "two").unwrap();
        std::fs::rename(dir.join("token.new"), &path).unwrap();
        assert_eq!(token.check(Some(b"two")), Verdict::Allowed);
        assert_eq!(token.check(Some(b"one")), Verdict::Denied);
        // A different size, so the change is seen even within one timestamp tick.
        std::fs::write(&path, " \n \t\n").unwrap();
        assert_eq!(token.check(Some(b"")), Verdict::Unavailable, "an empty file lets nothing in");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
