//! `fleetmq-operator`: placeholder until the operator lands (CRDs, reconcile, render).

fn main() {
    eprintln!(
        "fleetmq-operator {}: the Kubernetes operator is not implemented yet",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
