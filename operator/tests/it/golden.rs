//! `render` golden files: the output for examples/ and for the fixtures is compared byte for
//! byte. Regenerate after an intended change with
//! `FLEETMQ_UPDATE_GOLDEN=1 cargo test -p fleetmq-operator --test it golden` and review the diff.

use std::path::PathBuf;

use fleetmq_operator::auth::PasswordHasher;
use fleetmq_operator::render;

use crate::{fixture_path, repo_root};

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

fn check(name: &str, actual: &str) {
    let path = golden_path(name);
    if std::env::var_os("FLEETMQ_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if expected != actual {
        let line = expected.lines().zip(actual.lines()).position(|(a, b)| a != b).map_or_else(
            || format!("lengths differ ({} vs {} lines)", expected.lines().count(), actual.lines().count()),
            |i| format!("first difference at line {}", i + 1),
        );
        panic!(
            "{} differs from render output ({line}); if intended, regenerate with FLEETMQ_UPDATE_GOLDEN=1",
            path.display()
        );
    }
}

fn render_paths(paths: &[PathBuf], namespace: &str) -> render::RenderOutput {
    let input = render::load(paths, namespace).expect("inputs load");
    // The real argon2 parameters, as the binary uses: the golden file pins the hash format.
    render::render(&input, &PasswordHasher::default()).expect("renders")
}

#[test]
fn examples_render_matches_golden() {
    let out = render_paths(&[repo_root().join("examples")], "default");
    check("examples.yaml", &out.manifests);
    check("examples.warnings.txt", &(out.warnings.join("\n") + "\n"));
}

#[test]
fn fixture_brokers_render_matches_golden() {
    let out = render_paths(&[fixture_path("brokers.yaml")], "fixtures");
    check("brokers.yaml", &out.manifests);
    // Namespaced inputs keep their namespace; the others get --namespace.
    assert!(out.manifests.contains("namespace: limits"));
    assert!(out.manifests.contains("namespace: fixtures"));
}

#[test]
fn render_is_deterministic_and_sorted() {
    let a = render_paths(&[repo_root().join("examples")], "default");
    let b = render_paths(
        &[repo_root().join("examples").join("users.yaml"), repo_root().join("examples")],
        "default",
    );
    // Users given twice are still one set of objects per broker; brokers are sorted by name.
    let first = a.manifests.find("MqttBroker default/fleet").expect("fleet");
    let second = a.manifests.find("MqttBroker default/minimal").expect("minimal");
    assert!(first < second);
    assert_eq!(a.manifests, render_paths(&[repo_root().join("examples")], "default").manifests);
    assert!(b.manifests.contains("MqttBroker default/fleet"));
}

#[test]
fn placeholders_are_marked_and_never_hashed() {
    let out = render_paths(&[repo_root().join("examples")], "default");
    assert!(out.manifests.contains(render::GENERATED_PASSWORD_PLACEHOLDER));
    assert!(out.manifests.contains("password and uri are PLACEHOLDERS"));
    assert!(out.manifests.contains("# sensor-gateway: placeholder, generated in-cluster"));
    // The dashboard's password came from a Secret in the input: it is hashed, not shown.
    assert!(out.manifests.contains("grafana-dashboard:$argon2id$v=19$m=19456,t=2,p=1$"));
    assert!(!out.manifests.contains("grafana-dashboard:example-only"));
}

#[test]
fn refused_broker_fails_render_naming_the_field() {
    let mut input = render::RenderInput::default();
    render::parse_into(
        &mut input,
        "apiVersion: fleetmq.io/v1alpha1\nkind: MqttBroker\nmetadata: {name: bad}\nspec:\n  listeners: [{name: tls, protocol: mqtts, port: 8883}]\n",
        "<test>",
        "default",
    )
    .expect("parses");
    let err = render::render(&input, &crate::cheap_hasher()).expect_err("refused");
    assert!(err.to_string().contains("spec.tls"), "{err}");
}
