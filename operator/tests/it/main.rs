//! Operator integration tests: pure builders from YAML fixtures, CRD drift and validation
//! (schema + CEL), `render` golden files, reconcilers against an in-memory API
//! (kube-fake-client), the Lease loop, and the metrics endpoint on loopback.

mod builders;
mod crds;
mod golden;
mod leader;
mod metrics_http;
mod reconcile;

use std::path::{Path, PathBuf};

use fleetmq_operator::auth::PasswordHasher;
use fleetmq_operator::render::{self, RenderInput};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("operator/ has a parent").to_path_buf()
}

/// `operator/tests/fixtures/<name>`.
pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// argon2id with tiny parameters: same format and code path, milliseconds in debug builds.
pub fn cheap_hasher() -> PasswordHasher {
    PasswordHasher::new(argon2::Params::new(256, 1, 1, None).expect("valid argon2 params"))
}

/// Parses a YAML stream the way `render` does (namespace `default` when unset).
pub fn parse(yaml: &str) -> RenderInput {
    let mut input = RenderInput::default();
    render::parse_into(&mut input, yaml, "<test>", "default").expect("fixture parses");
    input
}

/// Everything under examples/.
pub fn examples() -> RenderInput {
    render::load(&[repo_root().join("examples")], "default").expect("examples load")
}
