//! The Lease loop against the in-memory API: acquire, follow, renew, take over after expiry,
//! lose a race by optimistic concurrency, release.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube_fake_client::ClientBuilder;

use fleetmq_operator::leader::{Attempt, Decision, LeaderElector, LeaseConfig, decide};

fn elector(client: &kube::Client, identity: &str) -> LeaderElector {
    LeaderElector::new(
        Api::namespaced(client.clone(), "ops"),
        LeaseConfig::new("fleetmq-operator-leader", identity),
    )
}

#[tokio::test]
async fn two_replicas_one_leader() {
    let client = ClientBuilder::new().build().await.expect("fake client");
    let (a, b) = (elector(&client, "pod-a"), elector(&client, "pod-b"));
    let t0 = Timestamp::now();
    let at = |secs: i64| t0.checked_add(SignedDuration::from_secs(secs)).expect("time");

    assert_eq!(
        a.try_acquire_or_renew(t0).await.expect("a"),
        Attempt::Leading,
        "first replica creates the Lease"
    );
    assert_eq!(
        b.try_acquire_or_renew(at(1)).await.expect("b"),
        Attempt::Following { holder: "pod-a".into() },
        "the second follows while the Lease is valid"
    );
    assert_eq!(a.try_acquire_or_renew(at(5)).await.expect("a"), Attempt::Leading, "the leader renews");
    assert_eq!(
        b.try_acquire_or_renew(at(15)).await.expect("b"),
        Attempt::Following { holder: "pod-a".into() }
    );

    // pod-a stops renewing; 15 s after its last renewal pod-b takes over.
    assert_eq!(b.try_acquire_or_renew(at(21)).await.expect("b"), Attempt::Leading);
    let lease: Lease =
        Api::namespaced(client.clone(), "ops").get("fleetmq-operator-leader").await.expect("lease");
    let spec = lease.spec.expect("spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("pod-b"));
    assert_eq!(spec.lease_transitions, Some(1));
    // The old leader finds out on its next renewal.
    assert_eq!(
        a.try_acquire_or_renew(at(22)).await.expect("a"),
        Attempt::Following { holder: "pod-b".into() }
    );

    // Release hands over at once.
    b.release().await.expect("release");
    assert_eq!(a.try_acquire_or_renew(at(23)).await.expect("a"), Attempt::Leading);
}

#[tokio::test]
async fn racing_takeovers_have_exactly_one_winner() {
    let client = ClientBuilder::new().build().await.expect("fake client");
    let api: Api<Lease> = Api::namespaced(client.clone(), "ops");
    let (old, a, b) = (elector(&client, "pod-old"), elector(&client, "pod-a"), elector(&client, "pod-b"));
    let t0 = Timestamp::now();
    assert_eq!(old.try_acquire_or_renew(t0).await.expect("old"), Attempt::Leading);
    let later = t0.checked_add(SignedDuration::from_secs(60)).expect("time");

    // Both candidates read the expired Lease, then both try to take it over.
    let seen_by_a = api.get("fleetmq-operator-leader").await.expect("read");
    let seen_by_b = seen_by_a.clone();
    assert_eq!(decide(&seen_by_a, "pod-a", later), Decision::TakeOver);
    assert_eq!(b.step(seen_by_b, later).await.expect("b"), Attempt::Leading);
    assert!(
        matches!(a.step(seen_by_a, later).await.expect("a"), Attempt::Following { .. }),
        "the stale resourceVersion loses with 409 Conflict"
    );
    let lease = api.get("fleetmq-operator-leader").await.expect("lease");
    assert_eq!(lease.spec.and_then(|s| s.holder_identity).as_deref(), Some("pod-b"));
}
