"""The Helm chart, checked with Helm's own SDK (PyPI helm-python-sdk, no helm binary): strict
lint, rendering with the default values and other value sets, bad values refused with the
field named, every rendered object valid for the two newest Kubernetes versions
kubernetes-validate ships (--strict), and the chart's CRDs identical to crds/."""

from __future__ import annotations

import json

import helm_python
import kubernetes_validate
import pytest
import yaml

from conftest import ROOT
from test_operator_manifests import FOREIGN_KINDS, newest_versions

CHART = ROOT / "charts" / "fleetmq-operator"

VALUE_SETS = {
    "default": {},
    "namespaced": {"watchNamespaces": ["iot-a", "iot-b"], "replicaCount": 1, "leaderElection": {"enabled": False}},
    "monitoring": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
                   "podDisruptionBudget": {"enabled": True}, "grafanaDashboard": {"enabled": True}},
    "custom-image": {"image": {"repository": "registry.example.com/fleetmq/operator", "tag": "1.2.3",
                               "pullPolicy": "Always"},
                     "brokerImage": {"repository": "registry.example.com/fleetmq/broker",
                                     "digest": "sha256:" + "ab" * 32},
                     "imagePullSecrets": [{"name": "regcred"}], "log": {"level": "debug", "format": "text"},
                     "brokerTelemetry": {"otlpEndpoint": "http://otel-collector.observability:4318"}},
}


def render(values: dict) -> list[dict]:
    chart = helm_python.Chart.load(CHART)
    try:
        files = chart.render(values, name="fleetmq", namespace="fleetmq-system", is_install=True)
    finally:
        chart.close()
    docs = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_is_clean_in_strict_mode(name):
    report = helm_python.lint(CHART, VALUE_SETS[name], strict=True, namespace="fleetmq-system",
                              kube_version=f"v{newest_versions()[-1]}.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems


@pytest.mark.parametrize("version", newest_versions())
@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rendered_objects_are_valid_kubernetes(name, version):
    docs = render(VALUE_SETS[name])
    assert by_kind(docs, "Deployment"), "the chart renders the operator Deployment"
    for doc in docs:
        if doc["kind"] in FOREIGN_KINDS:
            assert doc["apiVersion"] == FOREIGN_KINDS[doc["kind"]]
            continue
        kubernetes_validate.validate(doc, version, strict=True)


def test_default_values_run_two_hardened_replicas_with_cluster_wide_rbac():
    docs = render({})
    deploy = by_kind(docs, "Deployment")[0]
    pod = deploy["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert deploy["spec"]["replicas"] == 2 and c["args"] == ["run"], "leader election on"
    assert c["image"] == "ghcr.io/fleetmq/fleetmq-operator:0.1.0", "tag defaults to appVersion"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" and c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["FLEETMQ_WATCH_NAMESPACES"] == "" and env["FLEETMQ_LOG_FORMAT"] == "json"
    assert "FLEETMQ_BROKER_OTLP_ENDPOINT" not in env, "broker tracing off by default"
    assert env["FLEETMQ_BROKER_IMAGE"] == "ghcr.io/fleetmq/fleetmq-broker:0.1.0"
    assert [r["kind"] for r in docs if r["kind"].endswith("Role")] == ["ClusterRole", "Role"]
    rules = by_kind(docs, "ClusterRole")[0]["rules"]
    granted = {(g, r) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    for needed in [("fleetmq.io", "mqttbrokers"), ("fleetmq.io", "mqttusers/status"), ("", "secrets"),
                   ("apps", "statefulsets"), ("policy", "poddisruptionbudgets"),
                   ("monitoring.coreos.com", "servicemonitors"), ("cert-manager.io", "certificates")]:
        assert needed in granted, needed
    assert not any("*" in rule["verbs"] or "*" in rule["resources"] for rule in rules), "least privilege"
    assert not by_kind(docs, "ServiceMonitor") and not by_kind(docs, "PodDisruptionBudget")


def test_namespaced_mode_has_roles_only_in_the_watched_namespaces():
    docs = render(VALUE_SETS["namespaced"])
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["iot-a", "iot-b"], "no leader Role when disabled"
    bindings = by_kind(docs, "RoleBinding")
    assert all(b["subjects"][0]["namespace"] == "fleetmq-system" for b in bindings)
    c = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert c["args"] == ["run", "--no-leader-election"]
    assert {e["name"]: e.get("value") for e in c["env"]}["FLEETMQ_WATCH_NAMESPACES"] == "iot-a,iot-b"


def test_monitoring_values_add_servicemonitor_pdb_and_dashboard():
    docs = render(VALUE_SETS["monitoring"])
    sm = by_kind(docs, "ServiceMonitor")[0]
    assert sm["metadata"]["labels"]["release"] == "prom" and sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert by_kind(docs, "PodDisruptionBudget")[0]["spec"]["maxUnavailable"] == 1
    dashboard = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard"))
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = json.loads(dashboard["data"]["fleetmq-broker.json"])
    exprs = " ".join(t["expr"] for p in board["panels"] for t in p["targets"])
    for metric in ["fleetmq_connections", "fleetmq_messages_received_total", "fleetmq_messages_sent_total",
                   "fleetmq_messages_dropped_total", "fleetmq_queued_messages", "fleetmq_store_size_bytes",
                   "fleetmq_bridge_up"]:
        assert metric in exprs, metric


def test_custom_image_values_reach_the_pod():
    docs = render(VALUE_SETS["custom-image"])
    pod = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"] == "registry.example.com/fleetmq/operator:1.2.3" and c["imagePullPolicy"] == "Always"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["FLEETMQ_BROKER_IMAGE"] == "registry.example.com/fleetmq/broker@sha256:" + "ab" * 32
    assert env["RUST_LOG"] == "debug" and env["FLEETMQ_LOG_FORMAT"] == "text"
    assert env["FLEETMQ_BROKER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4318"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]


@pytest.mark.parametrize("values, named", [
    ({"replicaCount": "two"}, "replicaCount"),
    ({"log": {"format": "xml"}}, "format"),
    ({"image": {"repository": "x", "digest": "latest"}}, "digest"),
    ({"watchNamespaces": ["Not_A_Namespace"]}, "watchNamespaces"),
    ({"metrics": {"prot": 8080}}, "prot"),
    ({"brokerTelemetry": {"otlpEndpoint": "collector:4318"}}, "otlpEndpoint"),
    ({"replicaCount": 2, "leaderElection": {"enabled": False}}, "leaderElection"),
    ({"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}}, "metrics.service.enabled"),
])
def test_bad_values_are_refused_with_the_field_named(values, named):
    with pytest.raises(helm_python.HelmError) as err:
        render(values)
    assert named in str(err.value), str(err.value)


def test_chart_crds_match_the_generated_ones():
    generated = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    assert sorted(p.name for p in (CHART / "crds").glob("*.yaml")) == generated
    for name in generated:
        assert (CHART / "crds" / name).read_text() == (ROOT / "crds" / name).read_text(), (
            f"charts/fleetmq-operator/crds/{name} differs from crds/{name}: run `make crds`")


def test_dockerfiles_pass_hadolint_and_run_as_non_root():
    import os
    import pathlib
    import subprocess
    import sys

    hadolint = pathlib.Path(sys.executable).parent / "hadolint"
    files = [ROOT / "broker" / "Dockerfile", ROOT / "operator" / "Dockerfile"]
    out = subprocess.run([str(hadolint), *map(str, files)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "NO_COLOR": "1"})
    assert out.returncode == 0, out.stdout + out.stderr
    for f in files:
        text = f.read_text()
        assert text.count("FROM ") == 2, f"{f}: multi-stage"
        assert "USER 65532:65532" in text and "distroless" in text, f
        assert (f.parent / "Dockerfile.dockerignore").exists(), "keeps target/ out of the build context"
