//! Hot reload: the config file, TLS certificates and auth files are watched and put in force
//! without dropping connections.
//!
//! Files are polled (`stat`, following symlinks) every [`POLL`], and re-read at once on SIGHUP
//! or `POST /api/v1/reload`. Polling rather than inotify because Kubernetes updates mounted
//! ConfigMaps and Secrets by swapping a `..data` symlink, which inotify on the file itself
//! does not see; a stat of a handful of files every two seconds costs nothing. A file that
//! fails to parse is refused with a logged error and the previous version stays in force.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fleetmq_config::BrokerConfig;

use crate::core::Broker;
use crate::transport::tls::{self, TlsHandle};

/// How often watched files are checked.
pub const POLL: Duration = Duration::from_secs(2);

/// Loads the config file again, with the command line's overrides applied; errors name the
/// file, key and line.
pub type ConfigSource = Box<dyn Fn() -> Result<BrokerConfig, String> + Send>;

/// A reload hook for other parts (auth files): given the config in force, reloads what it
/// owns; returns the files it depends on, or an error to log (the old state stays).
pub type Hook = Box<dyn FnMut(&BrokerConfig) -> Result<Vec<PathBuf>, String> + Send>;

/// What identifies a file version: modification time, size, inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp { modified: meta.modified().ok(), len: meta.len(), inode: meta.ino() })
}

/// Remembers file versions and tells which ones changed.
#[derive(Debug, Default)]
struct Stamps(HashMap<PathBuf, Option<Stamp>>);

impl Stamps {
    /// Records the current version of `paths`.
    fn remember<'a>(&mut self, paths: impl IntoIterator<Item = &'a PathBuf>) {
        for path in paths {
            self.0.insert(path.clone(), stamp(path));
        }
    }

    /// Whether any of `paths` differs from what was remembered (and remembers the new state).
    fn changed<'a>(&mut self, paths: impl IntoIterator<Item = &'a PathBuf>) -> bool {
        let mut changed = false;
        for path in paths {
            let now = stamp(path);
            if self.0.get(path) != Some(&now) {
                changed = true;
                self.0.insert(path.clone(), now);
            }
        }
        changed
    }
}

/// Watches and reloads; shared by the poll task, SIGHUP and the admin API.
pub struct Reloader {
    broker: Broker,
    config_path: Option<PathBuf>,
    source: Option<ConfigSource>,
    tls: Vec<(usize, TlsHandle)>,
    hooks: Vec<(&'static str, Hook, Vec<PathBuf>)>,
    stamps: Stamps,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").field("config_path", &self.config_path).finish_non_exhaustive()
    }
}

/// A shared reloader.
pub type SharedReloader = Arc<Mutex<Reloader>>;

impl Reloader {
    /// A reloader for `broker`; `config` is the file and how to load it (none when the config
    /// was built in code), `tls` the certificate handles by listener index.
    pub fn new(
        broker: Broker,
        config: Option<(PathBuf, ConfigSource)>,
        tls: Vec<(usize, TlsHandle)>,
    ) -> Self {
        let (config_path, source) = match config {
            Some((path, source)) => (Some(path), Some(source)),
            None => (None, None),
        };
        let mut reloader =
            Reloader { broker, config_path, source, tls, hooks: Vec::new(), stamps: Stamps::default() };
        let files = reloader.files();
        reloader.stamps.remember(&files);
        reloader
    }

    /// Adds a hook (e.g. auth files, already loaded from `files`) run on every forced reload,
    /// after a config change, and whenever its files change.
    pub fn add_hook(&mut self, name: &'static str, files: Vec<PathBuf>, hook: Hook) {
        self.stamps.remember(&files);
        self.hooks.push((name, hook, files));
    }

    fn tls_files(&self, index: usize) -> Vec<PathBuf> {
        self.broker
            .config()
            .listeners
            .get(index)
            .and_then(|l| l.tls.as_ref())
            .map(tls::files)
            .unwrap_or_default()
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.config_path.iter().cloned().collect();
        for (index, _) in &self.tls {
            files.extend(self.tls_files(*index));
        }
        for (_, _, hook_files) in &self.hooks {
            files.extend(hook_files.iter().cloned());
        }
        files
    }

    /// Reloads what changed since the last check; `force` reloads everything (SIGHUP, API).
    /// Returns a summary of what happened, or the first error (the old state stays in force
    /// for whatever failed).
    pub fn check(&mut self, force: bool) -> Result<String, String> {
        let mut done = Vec::new();
        let mut errors = Vec::new();
        if let (Some(path), Some(source)) = (self.config_path.clone(), self.source.as_ref())
            && (self.stamps.changed([&path]) || force)
        {
            match source() {
                Ok(config) => {
                    let change = self.broker.apply_config(config);
                    if !change.needs_restart.is_empty() {
                        tracing::warn!(
                            "config {}: {} changed; these take effect after a restart (running values kept)",
                            path.display(),
                            change.needs_restart.join(", ")
                        );
                    }
                    if !change.applied.is_empty() {
                        tracing::info!(
                            "config {} reloaded: {} applied",
                            path.display(),
                            change.applied.join(", ")
                        );
                    }
                    done.push(format!(
                        "config ({})",
                        if change.applied.is_empty() {
                            "no live changes".to_string()
                        } else {
                            change.applied.join(", ")
                        }
                    ));
                }
                Err(err) => {
                    tracing::error!("config not reloaded, the running config stays in force: {err}");
                    errors.push(err.clone());
                }
            }
        }
        for i in 0..self.tls.len() {
            let index = self.tls[i].0;
            let files = self.tls_files(index);
            if !self.stamps.changed(&files) && !force {
                continue;
            }
            let config = self.broker.config();
            let Some(settings) = config.listeners.get(index).and_then(|l| l.tls.as_ref()) else { continue };
            match tls::server_config(index, settings) {
                Ok(server) => {
                    self.tls[i].1.set(server);
                    tracing::info!(listener = %config.listeners[index].display_name(), "TLS certificates reloaded; new connections use them");
                    done.push(format!("listeners[{index}].tls"));
                }
                Err(err) => {
                    tracing::error!("TLS certificates not reloaded, the previous ones stay in use: {err}");
                    errors.push(err.to_string());
                }
            }
        }
        let config = self.broker.config();
        for (name, hook, files) in &mut self.hooks {
            if !self.stamps.changed(files.iter()) && !force && !done.iter().any(|d| d.starts_with("config")) {
                continue;
            }
            match hook(&config) {
                Ok(new_files) => {
                    self.stamps.remember(&new_files);
                    *files = new_files;
                    done.push(name.to_string());
                }
                Err(err) => {
                    tracing::error!("{name} not reloaded, the previous version stays in force: {err}");
                    errors.push(err);
                }
            }
        }
        match errors.first() {
            Some(err) => Err(err.clone()),
            None => Ok(if done.is_empty() {
                "nothing changed".to_string()
            } else {
                format!("reloaded: {}", done.join(", "))
            }),
        }
    }

    /// Polls every [`POLL`] and reloads everything on SIGHUP (when `hangup` is given), until
    /// the process ends.
    pub async fn run(this: SharedReloader, mut hangup: Option<tokio::signal::unix::Signal>) {
        loop {
            let force = match hangup.as_mut() {
                Some(signal) => tokio::select! {
                    _ = tokio::time::sleep(POLL) => false,
                    _ = signal.recv() => {
                        tracing::info!("SIGHUP received: reloading config, certificates and auth files");
                        true
                    }
                },
                None => {
                    tokio::time::sleep(POLL).await;
                    false
                }
            };
            let mut reloader = this.lock().unwrap_or_else(|p| p.into_inner());
            // Errors were logged where they happened.
            let _ = reloader.check(force);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_see_content_changes_and_symlink_swaps() {
        let dir = std::env::temp_dir().join(format!("fleetmq-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Kubernetes layout: file -> ..data/file, ..data -> ..v1
        let v1 = dir.join("..v1");
        let v2 = dir.join("..v2");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v1.join("passwd"), "a:1\n").unwrap();
        std::fs::write(v2.join("passwd"), "a:2\n").unwrap();
        let data = dir.join("..data");
        let _ = std::fs::remove_file(&data);
        std::os::unix::fs::symlink(&v1, &data).unwrap();
        let file = dir.join("passwd");
        let _ = std::fs::remove_file(&file);
        std::os::unix::fs::symlink(data.join("passwd"), &file).unwrap();

        let mut stamps = Stamps::default();
        stamps.remember([&file]);
        assert!(!stamps.changed([&file]));
        // Atomic swap of ..data, same size and possibly the same mtime second.
        let tmp = dir.join("..data_tmp");
        std::os::unix::fs::symlink(&v2, &tmp).unwrap();
        std::fs::rename(&tmp, &data).unwrap();
        assert!(stamps.changed([&file]), "symlink swap seen");
        assert!(!stamps.changed([&file]), "remembered");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
