"""The operator's output runs: `fleetmq-operator render` on examples/ gives each broker's
broker.yaml (its ConfigMap) and the password and ACL files (its auth Secret); the real broker
started on exactly those files enforces the MqttUsers' passwords and ACLs on the plain, TLS and
secure WebSocket listeners, and answers the probes' /healthz and /readyz.

Only what a pod provides differs: the Kubernetes mount paths point into a temporary directory
(the auth Secret's files, a test certificate for the TLS Secret, the data volume), and every
`0.0.0.0:<port>` bind becomes a free 127.0.0.1 port. Nothing else of broker.yaml is touched.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import ssl
import subprocess
import urllib.error
import urllib.request

import pytest
import yaml

from conftest import ROOT, free_port, operator_binary, wait_for_port
from helpers import V5, V311, wait_until
from test_bridges import mosquitto  # noqa: F401 (fixture)
from test_transports import Pki

EXAMPLES = ROOT / "examples"
AUTH_DIR = "/var/run/secrets/fleetmq/auth"
TLS_DIR = "/var/run/secrets/fleetmq/tls"
DATA_DIR = "/var/lib/fleetmq"

# examples/users.yaml: `dashboard` (username grafana-dashboard) reads its password from this
# Secret value in the example.
DASHBOARD = ("grafana-dashboard", "example-only-change-me")
# `sensor-gateway` has a generated password; in a cluster the operator writes it to this Secret
# once. Given to render here, as if read from the cluster, so the password file holds its hash.
GATEWAY = ("sensor-gateway", "gateway-e2e-Pa55word")
GATEWAY_CREDENTIALS = f"""\
apiVersion: v1
kind: Secret
metadata: {{name: sensor-gateway-mqtt-credentials}}
stringData: {{password: {GATEWAY[1]}}}
"""

# Generous bounds: an argon2id verification (m=19 MiB, t=2) runs on a shared CI core.
LOGIN_TIMEOUT = 20.0


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict:
    """{broker name: (broker.yaml text, {auth Secret key: file text})} of the examples."""
    out = render_examples(tmp_path_factory.mktemp("render"), EXAMPLES)
    assert sorted(out) == ["fleet", "minimal"]
    return out


class Running:
    """A broker started from rendered files: its listener ports by name and its HTTP port."""

    def __init__(self, broker, ports: dict[str, int], http: int, config: dict):
        self.broker, self.ports, self.http, self.config = broker, ports, http, config


@pytest.fixture
def run_rendered(launch, tmp_path):
    def start(config_text: str, auth_files: dict[str, str], pki: Pki | None = None,
              kubelet_layout: bool = False) -> Running:
        """`kubelet_layout`: the auth files as the kubelet mounts a Secret volume (each key a
        symlink through `..data` to a timestamped directory), for swap_secret()."""
        auth_dir = tmp_path / "auth"
        auth_dir.mkdir()
        if kubelet_layout:
            swap_secret(auth_dir, auth_files, "..2026_11_22_00_00_00.000000001")
            for key in auth_files:
                (auth_dir / key).symlink_to(f"..data/{key}")
        else:
            for key, text in auth_files.items():
                (auth_dir / key).write_text(text)
        tls_dir = tmp_path / "tls"
        tls_dir.mkdir()
        if pki is not None:
            # The keys of a kubernetes.io/tls Secret, as cert-manager fills them.
            for key, source in (("tls.crt", "server.crt"), ("tls.key", "server.key"), ("ca.crt", "ca.crt")):
                shutil.copy(pki.path(source), tls_dir / key)
        text = (config_text.replace(AUTH_DIR, str(auth_dir)).replace(TLS_DIR, str(tls_dir))
                .replace(DATA_DIR, str(tmp_path / "data")))
        assert "/var/" not in text, "every mount path was rewritten"
        config = yaml.safe_load(text)
        ports = {}
        for listener in config["listeners"]:
            host, port = listener["bind"].rsplit(":", 1)
            assert host == "0.0.0.0", listener
            ports[listener["name"]] = free_port()
            listener["bind"] = f"127.0.0.1:{ports[listener['name']]}"
        assert config["http"]["enabled"] is True and config["http"]["bind"].startswith("0.0.0.0:")
        http = free_port()
        config["http"]["bind"] = f"127.0.0.1:{http}"
        # Every rendered broker is a cluster (of one here) seeded by its headless Service; on
        # loopback it gossips with itself on free ports. The pod's name and address come from
        # the same flags the downward-API variables set.
        cluster = config["cluster"]
        assert (cluster["gossip_bind"], cluster["link_bind"]) == ("0.0.0.0:7946", "0.0.0.0:7947"), cluster
        assert len(cluster["seeds"]) == 1 and cluster["seeds"][0].endswith("-headless.default.svc:7946"), cluster
        gossip, link = free_port(), free_port()
        cluster.update(gossip_bind=f"127.0.0.1:{gossip}", link_bind=f"127.0.0.1:{link}", seeds=[f"127.0.0.1:{gossip}"])
        path = tmp_path / "broker.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        # --http-bind repeats the config's own value (launch would otherwise pick another port).
        broker = launch(["--config", str(path), "--http-bind", f"127.0.0.1:{http}",
                         "--cluster-node-name", "broker-0", "--cluster-advertise-host", "127.0.0.1"],
                        wait_port=next(iter(ports.values())))
        # The sockets are bound one after the other; wait for all of them (bounded).
        for port in [*ports.values(), http]:
            wait_for_port(port, broker.proc)
        return Running(broker, ports, http, config)

    return start


def swap_secret(volume: pathlib.Path, files: dict[str, str], version: str) -> None:
    """Updates a Secret volume the way the kubelet does: write a new timestamped directory, then
    atomically rename a fresh `..data` symlink over the old one."""
    target = volume / version
    target.mkdir()
    for key, text in files.items():
        (target / key).write_text(text)
    tmp = volume / "..data_tmp"
    tmp.symlink_to(version)
    os.replace(tmp, volume / "..data")


def render_examples(work: pathlib.Path, examples: pathlib.Path) -> dict:
    """`fleetmq-operator render` of `examples` (plus the gateway's credentials Secret):
    {broker name: (broker.yaml text, {auth Secret key: file text})}."""
    creds = work / "gateway-credentials.yaml"
    creds.write_text(GATEWAY_CREDENTIALS)
    configs = work / "configs"
    proc = subprocess.run(
        [operator_binary(), "render", "-f", str(examples), "-f", str(creds), "--config-dir", str(configs)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = {}
    for doc in yaml.safe_load_all(proc.stdout):
        if doc and doc["kind"] == "Secret" and doc["metadata"]["name"].endswith("-auth"):
            name = doc["metadata"]["name"].removesuffix("-auth")
            out[name] = ((configs / f"default_{name}.yaml").read_text(), doc["stringData"])
    return out


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def wait_ready(port: int) -> None:
    """Every rendered broker is a cluster node, also with one replica: /readyz says 503
    "joining the cluster" until it knows its peers, here (nobody else) until the join timeout
    (5 gossip intervals at most 5 s), then 200, as the readiness probe sees it."""
    first = http_get(port, "/readyz")
    assert first in ((503, "joining the cluster\n"), (200, "ready\n")), first
    wait_until(lambda: http_get(port, "/readyz") == (200, "ready\n"), timeout=15, what="/readyz 200")


def login(clients, running: Running, listener: str, client_id: str, user: tuple[str, str] | None,
          expect: int | None = 0, protocol: int = V5, **kwargs):
    c = clients(running.broker, client_id, protocol, port=running.ports[listener], **kwargs)
    if user is not None:
        c.paho.username_pw_set(*user)
    rc = c.connect(expect=expect, timeout=LOGIN_TIMEOUT)[0]
    return c, rc


def test_rendered_users_passwords_and_acls_are_enforced_on_every_listener(rendered, run_rendered, clients,
                                                                          tmp_path_factory):
    pki = Pki(tmp_path_factory.mktemp("pki"))
    config_text, auth_files = rendered["fleet"]
    assert auth_files["passwords"].count(":$argon2id$") == 2, auth_files["passwords"]
    running = run_rendered(config_text, auth_files, pki)
    assert sorted(running.ports) == ["mqtt", "mqtts", "wss"]
    tls = {"ca_certs": pki.path("ca.crt")}

    # The probes' endpoints.
    assert http_get(running.http, "/healthz") == (200, "ok\n")
    wait_ready(running.http)

    # Passwords: right ones log in, wrong or unknown ones get 0x86, anonymous clients 0x87
    # (allowAnonymous: false).
    _, rc = login(clients, running, "mqtt", "wrong", (GATEWAY[0], "not-the-password"), expect=None)
    assert rc == 0x86
    _, rc = login(clients, running, "mqtt", "nobody", ("nobody", "x"), expect=None)
    assert rc == 0x86
    _, rc = login(clients, running, "mqtt", "wrong-v3", (DASHBOARD[0], "nope"), expect=None, protocol=V311)
    assert rc == 0x86, "v3 return code 4, as paho maps it"
    _, rc = login(clients, running, "mqtt", "anonymous", None, expect=None)
    assert rc == 0x87
    gateway, _ = login(clients, running, "mqtt", "gw-1", GATEWAY)
    # The dashboard over TLS (the listener users' credentials Secrets point at) ...
    dashboard, _ = login(clients, running, "mqtts", "dash-tls", DASHBOARD, tls=tls)
    # ... and over secure WebSocket on the rendered path.
    wss_path = next(l["path"] for l in running.config["listeners"] if l["name"] == "wss")
    dashboard_ws, _ = login(clients, running, "wss", "dash-wss", DASHBOARD, tls=tls, transport="websockets",
                            ws_path=wss_path)

    # ACLs as rendered: dashboard reads telemetry/#, nothing else; the gateway writes
    # telemetry/+/state except telemetry/secret/#, and reads commands/gateway/#.
    assert dashboard.subscribe("telemetry/#", 1) == [1]
    assert dashboard_ws.subscribe("telemetry/+/state", 1) == [1]
    assert dashboard.subscribe("commands/#", 1) == [0x87], "no read rule overlaps commands/#"
    assert gateway.subscribe("commands/gateway/#", 1) == [1]
    assert gateway.subscribe("telemetry/#", 1) == [0x87], "the gateway may only write telemetry"

    assert gateway.publish("telemetry/dev1/state", b"21.5", 1)[0] == 0
    for sub in (dashboard, dashboard_ws):
        assert sub.wait_message("telemetry/dev1/state").payload == b"21.5"
    assert gateway.publish("telemetry/secret/state", b"x", 1)[0] == 0x87, "deny wins over the write grant"
    assert gateway.publish("telemetry/dev1/other", b"x", 1)[0] == 0x87, "outside telemetry/+/state"
    assert gateway.publish("commands/gateway/reboot", b"x", 1)[0] == 0x87, "read-only for the gateway"
    assert dashboard.publish("telemetry/dev2/state", b"x", 1)[0] == 0x87, "the dashboard only reads"
    assert gateway.publish("telemetry/dev3/state", b"22.0", 1)[0] == 0
    dashboard.wait_message("telemetry/dev3/state")
    assert [m.topic for m in dashboard.settle(0.2)] == ["telemetry/dev1/state", "telemetry/dev3/state"]

    # The example asks for TLS 1.3 only: a client capped at TLS 1.2 is refused in the handshake.
    ctx = ssl.create_default_context(cafile=pki.path("ca.crt"))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", running.ports["mqtts"]), timeout=5) as sock:
        with pytest.raises(ssl.SSLError):
            ctx.wrap_socket(sock, server_hostname="localhost")


def test_minimal_example_lets_anonymous_clients_use_every_topic(rendered, run_rendered, clients):
    config_text, auth_files = rendered["minimal"]
    running = run_rendered(config_text, auth_files)
    assert sorted(running.ports) == ["mqtt"]
    wait_ready(running.http)
    sub, _ = login(clients, running, "mqtt", "anon-sub", None)
    pub, _ = login(clients, running, "mqtt", "anon-pub", None)
    assert sub.subscribe("any/#", 1) == [1]
    assert pub.publish("any/where", b"hello", 1)[0] == 0
    assert sub.wait_message("any/where").payload == b"hello"
    # The password file is still read: a username it does not have is refused.
    _, rc = login(clients, running, "mqtt", "stranger", ("stranger", "pw"), expect=None)
    assert rc == 0x86


def test_changed_users_reach_the_running_broker_through_a_secret_swap(rendered, run_rendered, clients,
                                                                      tmp_path_factory):
    """MqttUsers change (the gateway is deleted, the dashboard may now also write alerts/#):
    the re-rendered auth Secret lands through the kubelet's `..data` swap, the broker applies
    it within its 2 s check, the removed user is disconnected and refused, and the dashboard's
    connection stays up with its new rights."""
    config_text, auth_files = rendered["fleet"]
    running = run_rendered(config_text, auth_files, Pki(tmp_path_factory.mktemp("pki")), kubelet_layout=True)
    gateway, _ = login(clients, running, "mqtt", "gw-swap", GATEWAY)
    dashboard, _ = login(clients, running, "mqtt", "dash-swap", DASHBOARD)
    assert dashboard.subscribe("telemetry/#", 1) == [1]
    assert dashboard.publish("alerts/high", b"x", 1)[0] == 0x87, "not yet allowed"

    work = tmp_path_factory.mktemp("render-v2")
    examples = work / "examples"
    shutil.copytree(EXAMPLES, examples)
    users = list(yaml.safe_load_all((examples / "users.yaml").read_text()))
    users = [u for u in users if not (u["kind"] == "MqttUser" and u["metadata"]["name"] == "sensor-gateway")]
    next(u for u in users if u["metadata"]["name"] == "dashboard")["spec"]["acl"].append(
        {"topic": "alerts/#", "access": "readwrite"})
    (examples / "users.yaml").write_text(yaml.safe_dump_all(users))
    new_config, new_auth = render_examples(work, examples)["fleet"]
    assert new_config == config_text, "users change the auth Secret only, not broker.yaml"
    assert new_auth != auth_files and GATEWAY[0] not in new_auth["passwords"]
    swap_secret(pathlib.Path(running.config["auth"]["password_file"]).parent, new_auth, "..v2")

    gateway.wait_disconnect(timeout=10)  # seen within the broker's 2 s check; v5 0x87
    assert dashboard.publish("alerts/high", b"allowed", 1)[0] in (0, 0x10), "the new rule applies (0x10: no subscriber yet)"
    _, rc = login(clients, running, "mqtt", "gw-again", GATEWAY, expect=None)
    assert rc == 0x86, "a deleted MqttUser cannot log in"
    assert not dashboard.disconnects, "the dashboard stayed connected through the swap"
    # The same connection keeps its subscription and now reads alerts too.
    assert dashboard.subscribe("alerts/#", 1) == [1]
    probe, _ = login(clients, running, "mqtt", "dash-probe", DASHBOARD)
    assert probe.publish("alerts/high", b"y", 1)[0] == 0
    assert dashboard.wait_message("alerts/high").payload == b"y"


def test_rendered_mqttbridge_forwards_both_ways_to_a_tls_remote(run_rendered, clients, mosquitto, tmp_path_factory):
    """examples/bridge.yaml, rendered: the fleet broker bridges to a remote over TLS with the
    credentials and CA from the MqttBridge's Secrets. The remote here is Debian's mosquitto on
    127.0.0.1 with the test PKI, so the example's address, server name and CA Secret are pointed
    at it before rendering; broker.yaml itself is used as rendered (mount paths aside)."""
    pki = Pki(tmp_path_factory.mktemp("pki"))
    work = tmp_path_factory.mktemp("render-bridge")
    passwords = work / "remote-passwords"
    for user, password in (("site-berlin-1", "example-only-change-me"), ("cloud-app", "cloud-pw")):
        subprocess.run(["mosquitto_passwd", *([] if passwords.exists() else ["-c"]), "-b", str(passwords), user,
                        password], check=True, capture_output=True, timeout=30)
    remote = mosquitto(extra="\n".join([
        "allow_anonymous false", f"password_file {passwords}", f"cafile {pki.path('ca.crt')}",
        f"certfile {pki.path('server.crt')}", f"keyfile {pki.path('server.key')}",
        # As root, mosquitto would switch to its own user, which cannot read pytest's tmp dirs.
        "user root"]))

    examples = work / "examples"
    shutil.copytree(EXAMPLES, examples)
    docs = list(yaml.safe_load_all((examples / "bridge.yaml").read_text()))
    bridge = next(d for d in docs if d["kind"] == "MqttBridge")
    bridge["spec"]["remote"]["addresses"] = [f"127.0.0.1:{remote.port}"]
    bridge["spec"]["remote"]["tls"]["serverName"] = "localhost"
    next(d for d in docs if d["metadata"]["name"] == "cloud-ca")["stringData"]["ca.crt"] = \
        pathlib.Path(pki.path("ca.crt")).read_text()
    (examples / "bridge.yaml").write_text(yaml.safe_dump_all(docs))
    config_text, auth_files = render_examples(work, examples)["fleet"]
    assert "bridges:" in config_text and "example-only-change-me" not in config_text, "secrets stay in files"
    running = run_rendered(config_text, auth_files, pki)

    cloud_tls = {"ca_certs": pki.path("ca.crt")}
    cloud = clients(remote, "cloud-app", V5, port=remote.port, tls=cloud_tls)
    cloud.paho.username_pw_set("cloud-app", "cloud-pw")
    cloud.connect(timeout=LOGIN_TIMEOUT)
    assert cloud.subscribe("sites/berlin-1/telemetry/#", 1) == [1]
    dashboard, _ = login(clients, running, "mqtt", "dash-bridge", DASHBOARD)
    assert dashboard.subscribe("$SYS/broker/connection/cloud/state", 1) == [1]
    assert dashboard.wait_message("$SYS/broker/connection/cloud/state", timeout=15).payload == b"1", \
        "the bridge connected over TLS with the Secret's credentials"

    # out: local telemetry/... → remote sites/berlin-1/telemetry/...
    gateway, _ = login(clients, running, "mqtt", "gw-bridge", GATEWAY)
    assert gateway.publish("telemetry/dev9/state", b"19.5", 1)[0] in (0, 0x10)
    got = cloud.wait_message("sites/berlin-1/telemetry/dev9/state", timeout=10)
    assert got.payload == b"19.5"
    # in: remote sites/berlin-1/commands/... → local commands/...
    assert gateway.subscribe("commands/gateway/#", 1) == [1]
    cloud.publish("sites/berlin-1/commands/gateway/reboot", b"now", 1)
    assert gateway.wait_message("commands/gateway/reboot", timeout=10).payload == b"now"
