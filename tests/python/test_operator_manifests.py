"""The operator's offline output, checked by independent tools.

- `fleetmq-operator render` on examples/ produces manifests that `kubernetes-validate --strict`
  accepts for the two newest Kubernetes versions it ships;
- the CRDs in crds/ are valid CustomResourceDefinitions and match `fleetmq-operator crd`;
- the example custom resources satisfy the CRDs' openAPIV3Schema (jsonschema, with unknown
  fields refused as the API server's strict field validation does), and the bad ones in
  operator/tests/fixtures/invalid.yaml marked `refused-by: schema` are refused naming the field;
- the broker config that `render --config-dir` writes is accepted by the real broker binary,
  for the examples and for the fixtures with TLS (mutual, TLS 1.3) and WebSocket listeners, whose
  certificate paths are where the StatefulSet mounts the Secret;
- the StatefulSet's probes are HTTP GETs on the broker's HTTP port, which broker.yaml binds.

The data path (rendered users, passwords and ACLs enforced by a running broker) is in
test_operator_e2e.py.
"""

from __future__ import annotations

import copy
import pathlib
import subprocess

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as kv_utils

from conftest import ROOT, broker_binary, operator_binary

EXAMPLES = ROOT / "examples"
CRDS = ROOT / "crds"
FIXTURES = ROOT / "operator" / "tests" / "fixtures"
INVALID = FIXTURES / "invalid.yaml"
TLS_DIR = "/var/run/secrets/fleetmq/tls"

# Kinds from other projects' CRDs, which kubernetes-validate has no schema for.
FOREIGN_KINDS = {"Certificate": "cert-manager.io/v1", "ServiceMonitor": "monitoring.coreos.com/v1"}


def newest_versions(n: int = 2) -> list[str]:
    versions = sorted(set(kv_utils.all_versions()), key=lambda v: tuple(int(x) for x in v.split(".")))
    return versions[-n:]


def run_operator(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([operator_binary(), *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"fleetmq-operator {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    out = run_operator("render", "-f", str(EXAMPLES)).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.mark.parametrize("version", newest_versions())
def test_rendered_examples_pass_kubernetes_validate_strict(rendered, version):
    kinds = set()
    for doc in rendered:
        kinds.add(doc["kind"])
        if doc["kind"] in FOREIGN_KINDS:
            assert doc["apiVersion"] == FOREIGN_KINDS[doc["kind"]]
            assert isinstance(doc.get("spec"), dict) and doc["metadata"]["name"]
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            path = ".".join(str(p) for p in err.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for {version} at {path}: {err.message}")
    assert {"ConfigMap", "Secret", "Service", "StatefulSet", "PodDisruptionBudget"} <= kinds
    assert {"Certificate", "ServiceMonitor"} <= kinds, "the production example exercises the optional objects"


@pytest.mark.parametrize("version", newest_versions())
def test_crds_are_valid_custom_resource_definitions(version):
    files = sorted(CRDS.glob("*.yaml"))
    assert [f.name for f in files] == [
        "mqttbridges.fleetmq.io.yaml",
        "mqttbrokers.fleetmq.io.yaml",
        "mqttusers.fleetmq.io.yaml",
    ]
    for path in files:
        kubernetes_validate.validate(yaml.safe_load(path.read_text()), version, strict=True)


def test_crd_command_prints_the_crds_directory():
    printed = run_operator("crd").stdout
    by_name = {doc["metadata"]["name"]: doc for doc in yaml.safe_load_all(printed) if doc}
    on_disk = {yaml.safe_load(p.read_text())["metadata"]["name"]: yaml.safe_load(p.read_text()) for p in CRDS.glob("*.yaml")}
    assert by_name == on_disk


def openapi_to_jsonschema(schema: dict, strict: bool = True) -> dict:
    """OpenAPI v3 (as in a CRD) to JSON Schema: `nullable` becomes a null type, and objects
    with declared properties refuse unknown fields (the API server's strict field validation)."""
    s = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, list):
            for item in node:
                walk(item)
            return
        if not isinstance(node, dict):
            return
        if node.pop("nullable", False) and "type" in node:
            node["type"] = [node["type"], "null"]
        if (
            strict
            and "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for key in ("properties", "patternProperties"):
            for child in node.get(key, {}).values():
                walk(child)
        for key in ("items", "additionalProperties", "not"):
            if isinstance(node.get(key), dict):
                walk(node[key])
        for key in ("allOf", "anyOf", "oneOf"):
            walk(node.get(key, []))

    walk(s)
    return s


@pytest.fixture(scope="module")
def schemas() -> dict[str, dict]:
    out = {}
    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        root = copy.deepcopy(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
        # The API server always accepts these at the root; CRD schemas need not declare them.
        for implicit, kind in (("apiVersion", "string"), ("kind", "string"), ("metadata", "object")):
            root.setdefault("properties", {}).setdefault(implicit, {"type": kind})
        out[crd["spec"]["names"]["kind"]] = openapi_to_jsonschema(root)
    return out


def custom_resources(path: pathlib.Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("apiVersion") == "fleetmq.io/v1alpha1"]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_satisfy_the_crd_schema(schemas, path):
    docs = custom_resources(path)
    assert docs, f"{path.name} has custom resources"
    for doc in docs:
        errors = sorted(jsonschema.Draft7Validator(schemas[doc["kind"]]).iter_errors(doc), key=str)
        assert not errors, f"{path.name} {doc['kind']}/{doc['metadata']['name']}: " + "; ".join(
            f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
        )


def field_path(parts) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def schema_cases() -> list[dict]:
    return [d for d in custom_resources(INVALID) if d["metadata"]["annotations"]["test.fleetmq.io/refused-by"] == "schema"]


@pytest.mark.parametrize("doc", schema_cases(), ids=lambda d: d["metadata"]["name"])
def test_bad_resources_are_refused_by_the_schema_naming_the_field(schemas, doc):
    expected = doc["metadata"]["annotations"]["test.fleetmq.io/field"]
    errors = list(jsonschema.Draft7Validator(schemas[doc["kind"]]).iter_errors(doc))
    assert errors, f"{doc['metadata']['name']} must be refused"
    paths = [field_path(e.absolute_path) for e in errors]
    assert expected in paths, f"expected an error at {expected}, got {paths}"


def test_render_is_deterministic_and_its_config_runs_in_the_broker(tmp_path):
    first = run_operator("render", "-f", str(EXAMPLES), "--config-dir", str(tmp_path)).stdout
    second = run_operator("render", "-f", str(EXAMPLES)).stdout
    assert first == second
    configs = sorted(tmp_path.glob("*.yaml"))
    assert [c.name for c in configs] == ["default_fleet.yaml", "default_minimal.yaml"]
    for config in configs:
        proc = subprocess.run(
            [broker_binary(), "--config", str(config), "--check-config"], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, f"broker refused {config.name}:\n{proc.stdout}\n{proc.stderr}"


def check_config(path: pathlib.Path) -> dict:
    """The effective config the real broker prints for `path` with --check-config."""
    proc = subprocess.run(
        [broker_binary(), "--config", str(path), "--check-config"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"broker refused {path.name}:\n{proc.stdout}\n{proc.stderr}"
    return yaml.safe_load(proc.stdout)


def test_tls_and_websocket_listeners_render_mounted_paths_the_broker_accepts(tmp_path):
    out = run_operator(
        "render", "-f", str(EXAMPLES), "-f", str(FIXTURES / "brokers.yaml"), "--config-dir", str(tmp_path)
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    checked = 0
    for path in sorted(tmp_path.glob("*.yaml")):
        rendered = yaml.safe_load(path.read_text())
        # The broker fills in nothing and drops nothing: what the operator wrote is what runs.
        assert check_config(path) == rendered, path.name
        namespace, name = path.stem.split("_", 1)
        sts = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == name
                   and d["metadata"]["namespace"] == namespace)
        pod = sts["spec"]["template"]["spec"]
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        for listener in rendered["listeners"]:
            protocol = listener["protocol"]
            if protocol in ("ws", "wss"):
                assert listener["path"].startswith("/"), listener
            if protocol not in ("mqtts", "wss"):
                assert "tls" not in listener, listener
                continue
            tls = listener["tls"]
            assert tls["cert_file"] == f"{TLS_DIR}/tls.crt" and tls["key_file"] == f"{TLS_DIR}/tls.key", tls
            # ...which is where the pod mounts the certificate Secret.
            assert mounts.get(TLS_DIR) == "tls", mounts
            tls_volume = next(v for v in pod["volumes"] if v["name"] == "tls")
            assert tls_volume["secret"]["secretName"] in ("fleet-tls", "device-ca-signed")
            if tls.get("require_certificate"):
                assert tls["ca_file"] == f"{TLS_DIR}/ca.crt"
            else:
                assert "ca_file" not in tls
            checked += 1
    assert checked >= 4, "the fleet example and the mutual-tls fixture each have mqtts and wss listeners"


def test_probes_are_http_gets_on_the_port_broker_yaml_binds(rendered):
    configs = {}
    for doc in rendered:
        if doc["kind"] == "ConfigMap":
            configs[doc["metadata"]["name"]] = yaml.safe_load(doc["data"]["broker.yaml"])
    stateful_sets = [d for d in rendered if d["kind"] == "StatefulSet"]
    assert len(stateful_sets) == 2
    for sts in stateful_sets:
        container = sts["spec"]["template"]["spec"]["containers"][0]
        http = configs[f"{sts['metadata']['name']}-config"]["http"]
        assert http["enabled"] is True
        port = int(http["bind"].rsplit(":", 1)[1])
        assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in container["ports"]
        for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            assert container[probe]["httpGet"] == {"path": path, "port": "metrics", "scheme": "HTTP"}, probe
            assert "tcpSocket" not in container[probe]


def test_render_has_nothing_to_warn_about_and_refuses_bad_brokers(tmp_path):
    # TLS and WebSocket listeners, users, bridges, metrics and persistence are all served now.
    proc = run_operator("render", "-f", str(EXAMPLES))
    assert proc.stderr == "", proc.stderr
    assert "bridges:" in proc.stdout, "the example MqttBridge is in the broker config"

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: fleetmq.io/v1alpha1\nkind: MqttBroker\nmetadata: {name: bad}\n"
        "spec:\n  listeners: [{name: tls, protocol: mqtts, port: 8883}]\n"
    )
    proc = run_operator("render", "-f", str(bad), check=False)
    assert proc.returncode != 0
    assert "spec.tls" in proc.stderr
