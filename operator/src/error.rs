//! Errors of the reconcilers (library side; the binary uses `anyhow`).

/// A reconcile failed; the controller requeues with exponential backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Building the desired objects failed.
    #[error(transparent)]
    Build(#[from] crate::build::BuildError),
    /// Hashing or generating a password failed.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    /// The object has no namespace (all FleetMQ kinds are namespaced).
    #[error("{0} has no namespace")]
    NoNamespace(String),
    /// Serializing a status or patch failed (a bug).
    #[error("serializing: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl Error {
    /// Short label for the error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Build(_) => "build",
            Error::Auth(_) => "auth",
            Error::NoNamespace(_) => "no_namespace",
            Error::Serialize(_) => "serialize",
        }
    }
}
