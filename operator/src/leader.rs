//! Leader election through a `coordination.k8s.io/v1` Lease, so two operator replicas never
//! reconcile at the same time.
//!
//! Why not a crate: `kube-lease-manager` needs kube 5, and `kube-leader-election` (kube 4)
//! takes over an expired Lease with a merge patch that carries no `resourceVersion`, so two
//! candidates that both see the Lease expire can both believe they won. This loop writes the
//! Lease with `replace` and the `resourceVersion` it read: the API server accepts exactly one
//! of two racing writers and answers the other with 409 Conflict.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;

use crate::metrics::Metrics;

/// Lease settings.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a Lease is valid after its last renewal.
    pub duration: Duration,
    /// How often the leader renews (well below `duration`).
    pub renew_every: Duration,
    /// How often a follower retries.
    pub retry_every: Duration,
}

impl LeaseConfig {
    /// client-go's defaults: 15 s lease, renew every 5 s, retry every 2 s.
    pub fn new(name: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaseConfig {
            name: name.into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            retry_every: Duration::from_secs(2),
        }
    }
}

/// What to do with a Lease as read (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it over.
    TakeOver,
    /// Someone else holds a valid Lease.
    Wait {
        /// The holder.
        holder: String,
    },
}

/// Decides from the Lease's holder, renew time and duration.
pub fn decide(lease: &Lease, identity: &str, now: Timestamp) -> Decision {
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    if holder == identity {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::TakeOver;
    }
    let expires = spec.renew_time.as_ref().map(|t| t.0).and_then(|renewed| {
        renewed
            .checked_add(SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0))))
            .ok()
    });
    match expires {
        Some(expires) if expires > now => Decision::Wait { holder },
        _ => Decision::TakeOver,
    }
}

/// Result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the Lease (acquired or renewed).
    Leading,
    /// Someone else does, or a concurrent writer won the race.
    Following {
        /// The holder, when known.
        holder: String,
    },
}

/// Acquires and renews one Lease.
#[derive(Debug, Clone)]
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
}

fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 409)
}

impl LeaderElector {
    /// An elector for the Lease in `api`'s namespace.
    pub fn new(api: Api<Lease>, config: LeaseConfig) -> Self {
        LeaderElector { api, config }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.config.duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// One acquire-or-renew step at time `now`.
    pub async fn try_acquire_or_renew(&self, now: Timestamp) -> Result<Attempt, kube::Error> {
        let Some(current) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.config.name.clone()), ..ObjectMeta::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(self.duration_seconds()),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Leading),
                Err(err) if is_conflict(&err) => Ok(Attempt::Following { holder: String::new() }),
                Err(err) => Err(err),
            };
        };
        self.step(current, now).await
    }

    /// Applies [`decide`] to a Lease as read. Public so tests can replay a stale read.
    pub async fn step(&self, current: Lease, now: Timestamp) -> Result<Attempt, kube::Error> {
        let mut next = current.clone();
        let spec = next.spec.get_or_insert_with(LeaseSpec::default);
        match decide(&current, &self.config.identity, now) {
            Decision::Wait { holder } => return Ok(Attempt::Following { holder }),
            Decision::Renew => {
                spec.renew_time = Some(MicroTime(now));
                spec.lease_duration_seconds = Some(self.duration_seconds());
            }
            Decision::TakeOver => {
                spec.holder_identity = Some(self.config.identity.clone());
                spec.acquire_time = Some(MicroTime(now));
                spec.renew_time = Some(MicroTime(now));
                spec.lease_duration_seconds = Some(self.duration_seconds());
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
        }
        // `next` keeps the resourceVersion we read: optimistic concurrency.
        match self.api.replace(&self.config.name, &PostParams::default(), &next).await {
            Ok(_) => Ok(Attempt::Leading),
            Err(err) if is_conflict(&err) => Ok(Attempt::Following { holder: String::new() }),
            Err(err) => Err(err),
        }
    }

    /// Gives the Lease up (on shutdown) so another replica takes over at once.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else { return Ok(()) };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        match self.api.replace(&self.config.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(()),
            Err(err) if is_conflict(&err) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Waits for leadership, then runs `work` while renewing. Returns when `work` ends
    /// (releasing the Lease) or with an error when leadership is lost; the caller then exits,
    /// so a fresh process starts from a clean state.
    pub async fn run<F: std::future::Future<Output = ()>>(
        &self,
        work: F,
        metrics: &Metrics,
    ) -> Result<(), LostLease> {
        loop {
            match self.try_acquire_or_renew(Timestamp::now()).await {
                Ok(Attempt::Leading) => break,
                Ok(Attempt::Following { holder }) => tracing::debug!(%holder, "waiting for the leader lease"),
                Err(err) => tracing::warn!(%err, "leader lease attempt failed"),
            }
            tokio::time::sleep(self.config.retry_every).await;
        }
        tracing::info!(lease = %self.config.name, identity = %self.config.identity, "became leader");
        metrics.leader.set(1);
        let renew = async {
            let mut last_ok = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(self.config.renew_every).await;
                match self.try_acquire_or_renew(Timestamp::now()).await {
                    Ok(Attempt::Leading) => last_ok = tokio::time::Instant::now(),
                    Ok(Attempt::Following { holder }) => {
                        return LostLease(format!("lease taken by {holder:?}"));
                    }
                    Err(err) => {
                        tracing::warn!(%err, "renewing the leader lease failed");
                        // Stop before the Lease can expire under us.
                        if last_ok.elapsed() + self.config.renew_every >= self.config.duration {
                            return LostLease(format!("could not renew within the lease duration: {err}"));
                        }
                    }
                }
            }
        };
        tokio::select! {
            () = work => {
                metrics.leader.set(0);
                if let Err(err) = self.release().await {
                    tracing::warn!(%err, "could not release the leader lease");
                }
                Ok(())
            }
            lost = renew => {
                metrics.leader.set(0);
                Err(lost)
            }
        }
    }
}

/// Leadership was lost.
#[derive(Debug, thiserror::Error)]
#[error("lost the leader lease: {0}")]
pub struct LostLease(pub String);
