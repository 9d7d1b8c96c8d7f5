"""Bridges (issue 7) against real remotes on loopback: Debian's mosquitto and a second
FleetMQ. Every wait is bounded."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import time
import urllib.request

import pytest
import yaml

from conftest import broker_binary, free_port, wait_for_port
from helpers import connect_props, wait_until
from test_transports import Pki, pki  # noqa: F401 (the `pki` fixture)

# Debian installs the broker in /usr/sbin, which is not on every PATH.
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
TOKEN = "bridge-test-token"


@pytest.fixture
def mosquitto(tmp_path):
    """Factory: mosquitto(port=None, extra="") starts mosquitto on a free loopback port;
    `extra` is appended to its config."""
    procs: list[subprocess.Popen] = []

    class Remote:
        def __init__(self, port: int, extra: str):
            self.port, self.host, self.extra = port, "127.0.0.1", extra
            self.start()

        def start(self):
            conf = tmp_path / f"mosquitto-{self.port}.conf"
            conf.write_text(f"listener {self.port} 127.0.0.1\npersistence false\n"
                            f"log_dest stderr\nlog_type error\nlog_type notice\n{self.extra or 'allow_anonymous true'}\n")
            self.log_path = tmp_path / f"mosquitto-{self.port}.log"
            log = open(self.log_path, "a")
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
            log.close()
            procs.append(self.proc)
            wait_for_port(self.port, self.proc)

        def log(self) -> str:
            return self.log_path.read_text(errors="replace")

        def stop(self):
            self.proc.terminate()
            self.proc.wait(timeout=10)

    if not pathlib.Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed")
    yield lambda port=None, extra="": Remote(port or free_port(), extra)
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def bridge_config(tmp_path, name: str, addresses: list[str], topics: list[dict], **extra) -> dict:
    token = tmp_path / "admin-token"
    token.write_text(TOKEN)
    bridge = {"name": name, "addresses": addresses, "topics": topics,
              "backoff": {"initial": "100ms", "max": "500ms"}, **extra}
    return {"bridges": [bridge], "http": {"admin_token_file": str(token)}}


def http_addr(broker) -> str:
    return yaml.safe_load(broker.config_path.read_text())["http"]["bind"]


def bridges_api(broker) -> list[dict]:
    req = urllib.request.Request(f"http://{http_addr(broker)}/api/v1/bridges",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())["items"]


def metrics(broker) -> str:
    with urllib.request.urlopen(f"http://{http_addr(broker)}/metrics", timeout=5) as resp:
        return resp.read().decode()


def wait_state(broker, state: str, timeout: float = 10.0) -> dict:
    return wait_until(lambda: next((b for b in bridges_api(broker) if b["state"] == state), None),
                      timeout=timeout, what=f"bridge state {state}")


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_out_rule_maps_prefixes_and_keeps_retain_to_mosquitto(tmp_path, start_broker, mosquitto, clients, protocol):
    remote = mosquitto()
    local = start_broker(bridge_config(tmp_path, "cloud", [f"127.0.0.1:{remote.port}"], [
        {"pattern": "sensors/#", "direction": "out", "qos": 1, "local_prefix": "site/", "remote_prefix": "edge1/"}],
        protocol=protocol))
    wait_state(local, "connected")
    sub = clients(remote, "remote-sub")
    sub.connect()
    sub.subscribe("#", 1)
    pub = clients(local, "local-pub")
    pub.connect()
    pub.publish("site/sensors/t1", b"21.5", qos=1)
    pub.publish("other/sensors/t1", b"not bridged", qos=1)
    pub.publish("site/sensors/t2", b"kept", qos=1, retain=True)
    got = sub.wait_messages(2)
    assert [(m.topic, m.payload) for m in got[:2]] == [("edge1/sensors/t1", b"21.5"), ("edge1/sensors/t2", b"kept")]
    assert [m.topic for m in sub.settle()] == ["edge1/sensors/t1", "edge1/sensors/t2"]
    # The retained flag reached mosquitto: a late subscriber gets the message as retained.
    late = clients(remote, "remote-late")
    late.connect()
    late.subscribe("edge1/sensors/t2", 1)
    retained = late.wait_message("edge1/sensors/t2")
    assert retained.retain and retained.payload == b"kept"
    [info] = bridges_api(local)
    assert info["name"] == "cloud" and info["address"] == f"127.0.0.1:{remote.port}"
    assert info["forwarded"]["out"] == 2 and info["queue_depth"] == 0
    text = metrics(local)
    assert 'fleetmq_bridge_up{bridge="cloud"} 1' in text
    assert 'fleetmq_bridge_messages_total{bridge="cloud",direction="out"} 2' in text
    assert 'fleetmq_bridge_queue_depth{bridge="cloud"} 0' in text


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_in_rule_maps_remote_to_local_prefix(tmp_path, start_broker, mosquitto, clients, protocol):
    remote = mosquitto()
    local = start_broker(bridge_config(tmp_path, "cloud", [f"127.0.0.1:{remote.port}"], [
        {"pattern": "cmd/#", "direction": "in", "qos": 1, "local_prefix": "from-cloud/", "remote_prefix": "edge1/"}],
        protocol=protocol))
    wait_state(local, "connected")
    sub = clients(local, "local-sub")
    sub.connect()
    sub.subscribe("#", 1)
    pub = clients(remote, "remote-pub")
    pub.connect()
    # The bridge's remote SUBSCRIBE may still be on its way after its CONNACK: retry a few times.
    for _ in range(20):
        pub.publish("edge1/cmd/reboot", b"now", qos=1)
        if sub.settle(0.25):
            break
    m = sub.wait_message("from-cloud/cmd/reboot")
    assert m.payload == b"now" and m.qos == 1
    # mosquitto saw the bridge speak the configured protocol (p2 = 3.1.1, p5 = 5.0).
    assert f"as fleetmq-bridge-cloud (p{'5' if protocol == '5' else '2'}, c0" in remote.log(), remote.log()
    wait_until(lambda: bridges_api(local)[0]["forwarded"]["in"] >= 1, what="in counter")


def test_both_rule_between_two_fleetmq_does_not_loop(tmp_path, start_broker, clients):
    remote = start_broker()
    local = start_broker(bridge_config(tmp_path, "peer", [f"127.0.0.1:{remote.port}"], [
        {"pattern": "chat/#", "direction": "both", "qos": 1}]))
    wait_state(local, "connected")
    time.sleep(0.3)  # the remote SUBSCRIBE goes out right after CONNACK
    on_local, on_remote = clients(local, "l-sub"), clients(remote, "r-sub")
    for c in (on_local, on_remote):
        c.connect()
        c.subscribe("chat/#", 1)
    pub = clients(local, "l-pub")
    pub.connect()
    pub.publish("chat/a", b"from-local", qos=1)
    rpub = clients(remote, "r-pub")
    rpub.connect()
    rpub.publish("chat/b", b"from-remote", qos=1)
    on_remote.wait_messages(2)
    on_local.wait_messages(2)
    assert sorted(m.payload for m in on_local.settle(1.0)) == [b"from-local", b"from-remote"]
    assert sorted(m.payload for m in on_remote.settle(0.1)) == [b"from-local", b"from-remote"]


def test_qos1_store_and_forward_survives_remote_outage_and_kill9(tmp_path, start_broker, clients):
    remote = start_broker({"storage": {"persistence": True}})
    # A persistent subscriber on the remote collects what the bridge forwards while it is away.
    collector = clients(remote, "collector")
    collector.connect(clean_start=False, properties=connect_props(SessionExpiryInterval=3600))
    collector.subscribe("edge/data/#", 1)
    collector.disconnect()
    local = start_broker({**bridge_config(tmp_path, "cloud", [f"127.0.0.1:{remote.port}"], [
        {"pattern": "data/#", "direction": "out", "qos": 1, "remote_prefix": "edge/"}]),
        "storage": {"persistence": True}, "sys": {"interval": "0s"}})
    wait_state(local, "connected")
    watcher = clients(local, "state-watcher")
    watcher.connect()
    watcher.subscribe("$SYS/broker/connection/cloud/state", 1)
    assert watcher.wait_message().payload == b"1"

    assert remote.stop() == 0
    wait_until(lambda: [m.payload for m in watcher.messages] == [b"1", b"0"], timeout=10, what="state 0")
    wait_until(lambda: bridges_api(local)[0]["state"] in ("backoff", "connecting"), what="bridge down")
    n = 20
    pub = clients(local, "producer")
    pub.connect()
    for i in range(n // 2):
        pub.publish(f"data/{i % 3}", f"m{i:02d}".encode(), qos=1)  # acknowledged locally
    wait_until(lambda: bridges_api(local)[0]["queue_depth"] == n // 2, what="queued messages")
    assert f'fleetmq_bridge_queue_depth{{bridge="cloud"}} {n // 2}' in metrics(local)
    assert bridges_api(local)[0]["last_error"]

    # A graceful restart keeps the queue ...
    started = time.monotonic()
    assert local.stop() == 0
    assert time.monotonic() - started < 5, "the bridge delayed shutdown"
    local = local.restart()
    wait_until(lambda: bridges_api(local)[0]["queue_depth"] == n // 2, what="queue after restart")
    pub = clients(local, "producer2")
    pub.connect()
    for i in range(n // 2, n):
        pub.publish(f"data/{i % 3}", f"m{i:02d}".encode(), qos=1)
    # ... and so does kill -9: nothing acknowledged locally may be lost.
    local.kill9()
    local = local.restart()
    remote = remote.restart()
    wait_state(local, "connected", timeout=15)
    collector = clients(remote, "collector")
    collector.connect(clean_start=False, properties=connect_props(SessionExpiryInterval=3600))
    got = collector.wait_messages(n, timeout=15)
    assert [m.payload for m in collector.settle(0.5)] == [f"m{i:02d}".encode() for i in range(n)]
    assert got[0].topic == "edge/data/0"
    wait_until(lambda: bridges_api(local)[0]["queue_depth"] == 0, what="queue drained")


def test_state_notification_goes_1_0_1_and_reconnect_is_counted(tmp_path, start_broker, mosquitto, clients):
    remote = mosquitto()
    local = start_broker(bridge_config(tmp_path, "cloud", [f"127.0.0.1:{remote.port}"], [
        {"pattern": "x/#", "direction": "out"}]))
    watcher = clients(local, "w")
    watcher.connect()
    watcher.subscribe("$SYS/broker/connection/cloud/state", 1)
    wait_until(lambda: [m.payload for m in watcher.messages] == [b"1"], timeout=10, what="state 1")
    remote.stop()
    wait_until(lambda: [m.payload for m in watcher.messages] == [b"1", b"0"], timeout=10, what="state 0")
    # QoS 0 is not kept while the remote is down (as for any offline session), but counted.
    pub = clients(local, "p0")
    pub.connect()
    pub.publish("x/lost", b"q0", qos=0)
    wait_until(lambda: bridges_api(local)[0]["dropped_qos0"] == 1, what="QoS 0 drop counted")
    assert bridges_api(local)[0]["queue_depth"] == 0
    remote.start()
    wait_until(lambda: [m.payload for m in watcher.messages] == [b"1", b"0", b"1"], timeout=10, what="state 1 again")
    assert 'fleetmq_bridge_reconnects_total{bridge="cloud"} 1' in metrics(local)
    # Retained: a late subscriber sees the current state.
    late = clients(local, "late")
    late.connect()
    late.subscribe("$SYS/broker/connection/cloud/state", 1)
    assert late.wait_message().payload == b"1"


def test_failover_to_the_second_address(tmp_path, start_broker, mosquitto, clients):
    remote = mosquitto()
    dead = f"127.0.0.1:{free_port()}"
    local = start_broker(bridge_config(tmp_path, "cloud", [dead, f"127.0.0.1:{remote.port}"], [
        {"pattern": "x/#", "direction": "out"}]))
    info = wait_state(local, "connected")
    assert info["address"] == f"127.0.0.1:{remote.port}"
    sub = clients(remote, "s")
    sub.connect()
    sub.subscribe("x/#", 1)
    pub = clients(local, "p")
    pub.connect()
    pub.publish("x/1", b"via-second", qos=1)
    assert sub.wait_message("x/1").payload == b"via-second"


def test_clients_cannot_take_a_bridge_session_id(broker, clients):
    c = clients(broker, "$bridge/cloud")
    rc, _, _ = c.connect(expect=None)
    assert rc == 0x85  # Client Identifier not valid


@pytest.mark.parametrize("bad,key", [
    ({"pattern": "a/#/b", "direction": "out"}, "bridges[0].topics[0].pattern"),
    ({"pattern": "a/#", "direction": "out", "local_prefix": "site"}, "bridges[0].topics[0].local_prefix"),
    ({"pattern": "a/#", "direction": "out", "qoss": 1}, "qoss"),
    ({"queue": {"max_messages": 0}}, "bridges[0].queue.max_messages"),
    ({"queue": {"overflow": "drop_random"}}, "overflow"),
    ({"queue": {"max_bytes": "lots"}}, "max_bytes"),
    ({"notifications": {"topic": "state/#"}}, "bridges[0].notifications.topic"),
    ({"notifications": {"remote_only": True}}, "remote_only"),
])
def test_bad_bridge_config_fails_at_start_naming_the_key(tmp_path, bad, key):
    port = free_port()
    config = {"listeners": [{"bind": f"127.0.0.1:{port}"}], "storage": {"persistence": False},
              "http": {"enabled": False},
              "bridges": [{"name": "cloud", "addresses": ["127.0.0.1:1"], "topics": [{"pattern": "a/#", "direction": "out"}]}]}
    if "pattern" in bad:
        config["bridges"][0]["topics"] = [bad]
    else:
        config["bridges"][0].update(bad)  # a bridge-level key
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    out = subprocess.run([broker_binary(), "--config", str(path)], capture_output=True, text=True, timeout=20)
    assert out.returncode != 0
    assert key in out.stdout + out.stderr, out.stdout + out.stderr


def test_wrong_credentials_back_off_with_a_clear_error_until_the_secret_is_fixed(tmp_path, start_broker, mosquitto,
                                                                                 clients):
    passwd = tmp_path / "mosquitto.passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "edge", "right"], check=True, capture_output=True)
    # `user root`: as root, mosquitto would otherwise switch to its own user, which cannot
    # read pytest's private temporary directory.
    remote = mosquitto(extra=f"allow_anonymous false\npassword_file {passwd}\nuser root")
    secret = tmp_path / "bridge-password"
    secret.write_text("wrong\n")
    local = start_broker(bridge_config(tmp_path, "cloud", [f"127.0.0.1:{remote.port}"],
                                       [{"pattern": "x/#", "direction": "out"}],
                                       username="edge", password_file=str(secret)))
    info = wait_until(lambda: next((b for b in bridges_api(local) if b["last_error"]), None), timeout=10,
                      what="an error")
    assert info["state"] in ("backoff", "connecting") and "refused by the remote" in info["last_error"], info
    local.wait_log(r"bridge cannot connect: .*refused by the remote")
    # It keeps retrying (backoff 100ms..500ms) ...
    wait_until(lambda: local.log().count("bridge cannot connect") >= 3, timeout=10, what="retries")
    assert 'fleetmq_bridge_up{bridge="cloud"} 0' in metrics(local)
    # ... and the password file is read again at every attempt (a rotated Secret).
    secret.write_text("right\n")
    wait_state(local, "connected", timeout=10)


def test_tls_bridge_with_client_certificate(tmp_path, start_broker, pki, clients):
    tls_port = free_port()
    remote = start_broker({"listeners": [
        {"bind": f"127.0.0.1:{free_port()}"},
        {"bind": f"127.0.0.1:{tls_port}", "protocol": "mqtts",
         "tls": {"cert_file": pki.path("server.crt"), "key_file": pki.path("server.key"),
                 "ca_file": pki.path("ca.crt"), "require_certificate": True}}]})
    tls = {"ca_file": pki.path("ca.crt"), "cert_file": pki.path("client.crt"), "key_file": pki.path("client.key"),
           "server_name": "localhost"}
    config = bridge_config(tmp_path, "secure", [f"127.0.0.1:{tls_port}"], [{"pattern": "s/#", "direction": "out"}],
                           tls=tls)
    # A second bridge that trusts the wrong CA must not connect.
    config["bridges"].append({"name": "untrusting", "addresses": [f"127.0.0.1:{tls_port}"],
                              "topics": [{"pattern": "u/#", "direction": "out"}],
                              "backoff": {"initial": "100ms", "max": "500ms"},
                              "tls": {**tls, "ca_file": pki.path("other-ca.crt")}})
    local = start_broker(config)
    wait_until(lambda: {b["name"]: b["state"] for b in bridges_api(local)}.get("secure") == "connected",
               timeout=10, what="TLS bridge connected")
    sub = clients(remote, "s")
    sub.connect()
    sub.subscribe("#", 1)
    pub = clients(local, "p")
    pub.connect()
    pub.publish("s/1", b"over-tls", qos=1)
    assert sub.wait_message("s/1").payload == b"over-tls"
    bad = wait_until(lambda: next((b for b in bridges_api(local) if b["name"] == "untrusting" and b["last_error"]),
                                  None), timeout=10, what="TLS error")
    # ntex reports a failed handshake only as a closed connection; the bridge finds out why.
    assert bad["state"] != "connected", bad
    assert f"TLS handshake with 127.0.0.1:{tls_port} failed: invalid peer certificate: UnknownIssuer" \
        in bad["last_error"], bad
    local.wait_log(rf"bridge cannot connect: .*TLS handshake with 127.0.0.1:{tls_port} failed: invalid peer certificate")
    assert "fleetmq-bridge-untrusting" not in remote.log()


def test_reload_adds_and_removes_bridges_without_touching_the_others(tmp_path, start_broker, mosquitto, clients):
    import signal

    remote = mosquitto()
    local = start_broker(bridge_config(tmp_path, "a", [f"127.0.0.1:{remote.port}"],
                                       [{"pattern": "a/#", "direction": "out"}]))
    wait_state(local, "connected")
    watcher = clients(local, "w")
    watcher.connect()
    watcher.subscribe("$SYS/broker/connection/+/state", 1)
    sub = clients(remote, "s")
    sub.connect()
    sub.subscribe("#", 1)
    pub = clients(local, "p")
    pub.connect()
    pub.publish("a/1", b"first", qos=1)
    sub.wait_message("a/1")
    wait_until(lambda: bridges_api(local)[0]["forwarded"]["out"] == 1, what="a forwarded 1")

    config = yaml.safe_load(local.config_path.read_text())
    config["bridges"].append({"name": "b", "addresses": [f"127.0.0.1:{remote.port}"],
                              "topics": [{"pattern": "b/#", "direction": "out"}]})
    local.config_path.write_text(yaml.safe_dump(config))
    local.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: {b["name"]: b["state"] for b in bridges_api(local)} == {"a": "connected", "b": "connected"},
               timeout=10, what="b added")
    # `a` kept running: same link, counters kept, no reconnect.
    a = next(b for b in bridges_api(local) if b["name"] == "a")
    assert a["forwarded"]["out"] == 1 and a["reconnects"] == 0, a
    pub.publish("b/1", b"second", qos=1)
    assert sub.wait_message("b/1").payload == b"second"

    config["bridges"] = [config["bridges"][1]]
    local.config_path.write_text(yaml.safe_dump(config))
    local.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: [b["name"] for b in bridges_api(local)] == ["b"], timeout=10, what="a removed")
    wait_until(lambda: any(m.topic == "$SYS/broker/connection/a/state" and m.payload == b"0"
                           for m in watcher.messages), timeout=10, what="a down")
    pub.publish("a/2", b"not any more", qos=1)
    assert [m.topic for m in sub.settle(0.5)] == ["a/1", "b/1"]


@pytest.mark.parametrize("remote_kind", ["fleetmq", "mosquitto"])
def test_qos2_in_rule_is_received_without_breaking_the_link(tmp_path, start_broker, mosquitto, clients, remote_kind):
    """ntex-mqtt's client answers every inbound PUBLISH with PUBACK (it has no PUBREC path),
    so the bridge subscribes to `in` rules at QoS 1 at most: a QoS 2 message from the remote
    must arrive once and the link must stay up."""
    remote = start_broker() if remote_kind == "fleetmq" else mosquitto()
    local = start_broker(bridge_config(tmp_path, "cloud", [f"127.0.0.1:{remote.port}"], [
        {"pattern": "q2/#", "direction": "in", "qos": 2}]))
    wait_state(local, "connected")
    sub = clients(local, "local-sub")
    sub.connect()
    sub.subscribe("q2/#", 2)
    pub = clients(remote, "remote-pub")
    pub.connect()
    time.sleep(0.5)  # the bridge's remote SUBSCRIBE goes out right after CONNACK
    for i in range(3):
        pub.publish(f"q2/{i}", f"m{i}".encode(), qos=2)
    sub.wait_messages(3, timeout=10)
    assert [m.payload for m in sub.settle(1.0)] == [b"m0", b"m1", b"m2"]
    [info] = bridges_api(local)
    assert info["state"] == "connected" and info["reconnects"] == 0, info
    assert "bridge disconnected" not in local.log()


def admin_client_status(broker, client_id: str) -> int:
    """HTTP status of GET /api/v1/clients/{client_id} (404: no such session)."""
    import urllib.error
    import urllib.parse

    req = urllib.request.Request(
        f"http://{http_addr(broker)}/api/v1/clients/{urllib.parse.quote(client_id, safe='')}",
        headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.parametrize("queue,kept", [
    # 8 messages of 9 bytes each (topic "data/1" + payload "mNN") while the remote is down.
    ({"max_messages": 5}, range(0, 5)),
    ({"max_messages": 5, "overflow": "drop_oldest"}, range(3, 8)),
    ({"max_messages": 100, "max_bytes": 50}, range(0, 5)),
    ({"max_messages": 100, "max_bytes": 50, "overflow": "drop_oldest"}, range(3, 8)),
])
def test_bridge_queue_bounds_and_overflow_policy(tmp_path, start_broker, clients, queue, kept):
    remote = start_broker({"storage": {"persistence": True}})
    collector = clients(remote, "collector")
    collector.connect(clean_start=False, properties=connect_props(SessionExpiryInterval=3600))
    collector.subscribe("edge/#", 1)
    collector.disconnect()
    # The global session limit is smaller than the bridge's own: the bridge's applies.
    local = start_broker({**bridge_config(tmp_path, "cloud", [f"127.0.0.1:{remote.port}"], [
        {"pattern": "data/#", "direction": "out", "qos": 1, "remote_prefix": "edge/"}], queue=queue),
        "limits": {"max_queued_messages": 2}})
    wait_state(local, "connected")
    assert remote.stop() == 0
    wait_until(lambda: bridges_api(local)[0]["state"] in ("backoff", "connecting"), what="bridge down")
    pub = clients(local, "producer")
    pub.connect()
    for i in range(8):
        pub.publish("data/1", f"m{i:02d}".encode(), qos=1)
    wait_until(lambda: bridges_api(local)[0]["queue_depth"] == 5, what="5 queued")
    info = bridges_api(local)[0]
    assert info["dropped_overflow"] == 3 and info["queue_depth"] == 5, info
    assert 'fleetmq_bridge_queue_dropped_total{bridge="cloud"} 3' in metrics(local)

    remote = remote.restart()
    wait_state(local, "connected", timeout=15)
    collector = clients(remote, "collector")
    collector.connect(clean_start=False, properties=connect_props(SessionExpiryInterval=3600))
    collector.wait_messages(5, timeout=10)
    assert [m.payload for m in collector.settle(0.5)] == [f"m{i:02d}".encode() for i in kept]
    wait_until(lambda: bridges_api(local)[0]["queue_depth"] == 0, what="queue drained")
    assert bridges_api(local)[0]["dropped_overflow"] == 3


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_remote_notifications_on_mosquitto_and_will_after_kill9(tmp_path, start_broker, mosquitto, clients, protocol):
    remote = mosquitto()
    state_topic = "$SYS/broker/connection/fleetmq-bridge-cloud/state"
    watcher = clients(remote, "remote-watcher")
    watcher.connect()
    watcher.subscribe(state_topic, 1)
    local = start_broker(bridge_config(tmp_path, "cloud", [f"127.0.0.1:{remote.port}"], [
        {"pattern": "x/#", "direction": "out"}], notifications={"local": False, "remote": True}, protocol=protocol))
    local_watcher = clients(local, "local-watcher")
    local_watcher.connect()
    local_watcher.subscribe("$SYS/broker/connection/#", 1)
    wait_until(lambda: [m.payload for m in watcher.messages] == [b"1"], timeout=10, what="remote state 1")
    # Unclean end: mosquitto publishes the bridge's will.
    local.kill9()
    wait_until(lambda: [m.payload for m in watcher.messages] == [b"1", b"0"], timeout=10, what="will 0")
    late = clients(remote, "late")
    late.connect()
    late.subscribe(state_topic, 1)
    retained = late.wait_message(state_topic)
    assert retained.retain and retained.payload == b"0"
    # Clean stop: the bridge says 0 itself before its DISCONNECT (which discards the will).
    local = local.restart()
    wait_until(lambda: [m.payload for m in watcher.messages] == [b"1", b"0", b"1"], timeout=10, what="1 again")
    assert local.stop() == 0
    wait_until(lambda: [m.payload for m in watcher.messages] == [b"1", b"0", b"1", b"0"], timeout=10,
               what="0 on clean stop")
    # `local: false`: nothing was published here.
    assert local_watcher.messages == []


def test_notification_topic_override_on_both_sides(tmp_path, start_broker, clients):
    remote = start_broker()
    watcher = clients(remote, "remote-watcher")
    watcher.connect()
    watcher.subscribe("edge1/bridge-state", 1)
    local = start_broker(bridge_config(tmp_path, "cloud", [f"127.0.0.1:{remote.port}"], [
        {"pattern": "x/#", "direction": "out"}], notifications={"remote": True, "topic": "edge1/bridge-state"}))
    local_watcher = clients(local, "local-watcher")
    local_watcher.connect()
    local_watcher.subscribe("edge1/bridge-state", 1)
    assert local_watcher.wait_message("edge1/bridge-state").payload == b"1"
    assert watcher.wait_message("edge1/bridge-state", timeout=10).payload == b"1"


@pytest.mark.parametrize("remote_kind", ["fleetmq", "mosquitto"])
def test_v5_properties_cross_the_bridge_both_ways(tmp_path, start_broker, mosquitto, clients, remote_kind):
    from helpers import prop, publish_props

    remote = start_broker() if remote_kind == "fleetmq" else mosquitto()
    local = start_broker(bridge_config(tmp_path, "cloud", [f"127.0.0.1:{remote.port}"], [
        {"pattern": "up/#", "direction": "out", "qos": 1},
        {"pattern": "down/#", "direction": "in", "qos": 1}]))
    wait_state(local, "connected")
    on_remote, on_local = clients(remote, "remote-sub"), clients(local, "local-sub")
    for c, topic in ((on_remote, "up/#"), (on_local, "down/#")):
        c.connect()
        c.subscribe(topic, 1)
    time.sleep(0.5)  # the bridge's remote SUBSCRIBE goes out right after CONNACK

    def props(tag: str):
        return publish_props(UserProperty=[("site", "edge-1"), ("tag", tag), ("tag", "second")],
                             ContentType="application/json", PayloadFormatIndicator=1,
                             ResponseTopic=f"reply/{tag}", CorrelationData=f"corr-{tag}".encode(),
                             MessageExpiryInterval=300)

    pub = clients(local, "local-pub")
    pub.connect()
    pub.publish("up/1", b'{"t": 1}', qos=1, properties=props("out"))
    rpub = clients(remote, "remote-pub")
    rpub.connect()
    rpub.publish("down/1", b'{"t": 2}', qos=1, properties=props("in"))
    for sub, topic, tag in ((on_remote, "up/1", "out"), (on_local, "down/1", "in")):
        m = sub.wait_message(topic, timeout=10)
        p = m.properties
        assert prop(p, "UserProperty") == [("site", "edge-1"), ("tag", tag), ("tag", "second")], (tag, p)
        assert prop(p, "ContentType") == "application/json", (tag, p)
        assert prop(p, "PayloadFormatIndicator") == 1, (tag, p)
        assert prop(p, "ResponseTopic") == f"reply/{tag}", (tag, p)
        assert prop(p, "CorrelationData") == f"corr-{tag}".encode(), (tag, p)
        # The remaining lifetime travels: at most what was published, and not lost.
        assert 290 <= prop(p, "MessageExpiryInterval", 0) <= 300, (tag, p)


def test_message_expiry_counts_down_while_queued_for_the_remote(tmp_path, start_broker, clients):
    from helpers import prop, publish_props

    remote = start_broker({"storage": {"persistence": True}})
    collector = clients(remote, "collector")
    collector.connect(clean_start=False, properties=connect_props(SessionExpiryInterval=3600))
    collector.subscribe("edge/#", 1)
    collector.disconnect()
    local = start_broker(bridge_config(tmp_path, "cloud", [f"127.0.0.1:{remote.port}"], [
        {"pattern": "data/#", "direction": "out", "qos": 1, "remote_prefix": "edge/"}]))
    wait_state(local, "connected")
    assert remote.stop() == 0
    wait_until(lambda: bridges_api(local)[0]["state"] in ("backoff", "connecting"), what="bridge down")
    pub = clients(local, "producer")
    pub.connect()
    pub.publish("data/short", b"gone", qos=1, properties=publish_props(MessageExpiryInterval=1))
    pub.publish("data/long", b"kept", qos=1, properties=publish_props(MessageExpiryInterval=60))
    time.sleep(3)
    remote = remote.restart()
    wait_state(local, "connected", timeout=15)
    collector = clients(remote, "collector")
    collector.connect(clean_start=False, properties=connect_props(SessionExpiryInterval=3600))
    m = collector.wait_message("edge/data/long", timeout=10)
    assert prop(m.properties, "MessageExpiryInterval", 0) <= 57, m.properties
    assert [x.topic for x in collector.settle(0.5)] == ["edge/data/long"]


def test_removed_bridge_loses_its_session_on_reload_and_at_restart(tmp_path, start_broker, mosquitto, clients):
    import signal

    remote = mosquitto()
    config = bridge_config(tmp_path, "a", [f"127.0.0.1:{remote.port}"], [{"pattern": "a/#", "direction": "out"}])
    config["bridges"].append({"name": "b", "addresses": [f"127.0.0.1:{remote.port}"],
                              "topics": [{"pattern": "b/#", "direction": "out"}],
                              "backoff": {"initial": "100ms", "max": "500ms"}})
    local = start_broker({**config, "storage": {"persistence": True}})
    wait_until(lambda: {b["name"]: b["state"] for b in bridges_api(local)} == {"a": "connected", "b": "connected"},
               timeout=10, what="both connected")
    remote.stop()
    wait_until(lambda: all(b["state"] != "connected" for b in bridges_api(local)), what="both down")
    pub = clients(local, "p")
    pub.connect()
    for i in range(3):
        pub.publish(f"a/{i}", b"x", qos=1)
    for i in range(2):
        pub.publish(f"b/{i}", b"x", qos=1)
    wait_until(lambda: [b["queue_depth"] for b in bridges_api(local)] == [3, 2], what="queued")
    assert admin_client_status(local, "$bridge/a") == 200

    # Reload without `a`: its session and 3 queued messages go; `b` keeps its queue.
    on_disk = yaml.safe_load(local.config_path.read_text())
    on_disk["bridges"] = [on_disk["bridges"][1]]
    local.config_path.write_text(yaml.safe_dump(on_disk))
    local.proc.send_signal(signal.SIGHUP)
    local.wait_log(r"bridge no longer configured: deleted its internal session \$bridge/a and 3 queued messages",
                   timeout=10)
    assert admin_client_status(local, "$bridge/a") == 404
    assert bridges_api(local)[0]["queue_depth"] == 2

    # Restart without `b`: found in the store at start, deleted with its 2 messages ...
    assert local.stop() == 0
    on_disk["bridges"] = []
    local.config_path.write_text(yaml.safe_dump(on_disk))
    local = local.restart()
    local.wait_log(r"bridge no longer configured: deleted its internal session \$bridge/b and 2 queued messages",
                   timeout=10)
    assert admin_client_status(local, "$bridge/b") == 404
    # ... and for good: the next start finds nothing left.
    assert local.stop() == 0
    local = local.restart()
    time.sleep(0.5)
    assert admin_client_status(local, "$bridge/b") == 404
    assert "bridge no longer configured" not in local.log()
