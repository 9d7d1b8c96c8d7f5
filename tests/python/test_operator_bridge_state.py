"""The operator's MqttBridge live state (issue 3), read over HTTP from a real broker's admin API
with the operator's own client (`fleetmq-operator bridge-state`, the request the reconciler
makes to every broker pod). Remotes are Debian's mosquitto or a closed port on loopback."""

from __future__ import annotations

import json
import subprocess

import yaml

from conftest import free_port, operator_binary
from helpers import wait_until
from test_bridges import mosquitto  # noqa: F401 (the `mosquitto` fixture)

TOKEN = "operator-probe-token"


def broker_with_bridge(tmp_path, start_broker, address: str):
    token = tmp_path / "admin-token"
    token.write_text(TOKEN + "\n")
    return start_broker({
        "bridges": [{"name": "cloud", "addresses": [address], "topics": [{"pattern": "x/#", "direction": "out"}],
                     "backoff": {"initial": "100ms", "max": "300ms"}}],
        "http": {"admin_token_file": str(token)},
    }), token


def bridge_state(broker, token_file, bridge: str = "cloud") -> tuple[int, dict, str]:
    port = yaml.safe_load(broker.config_path.read_text())["http"]["bind"].rsplit(":", 1)[1]
    proc = subprocess.run(
        [operator_binary(), "bridge-state", bridge, "--host", "127.0.0.1", "--port", port,
         "--token-file", str(token_file)],
        capture_output=True, text=True, timeout=30)
    return proc.returncode, json.loads(proc.stdout or "{}"), proc.stderr


def test_unreachable_remote_shows_backoff_with_the_error(tmp_path, start_broker):
    dead = f"127.0.0.1:{free_port()}"
    broker, token = broker_with_bridge(tmp_path, start_broker, dead)

    def backing_off():
        code, status, err = bridge_state(broker, token)
        assert code == 0, err
        return status if status.get("state") == "backoff" else None

    status = wait_until(backing_off, timeout=10, what="bridge in backoff")
    assert dead in status["lastError"], status
    [pod] = status["pods"]
    assert pod["state"] == "backoff" and pod["queueDepth"] == 0, pod


def test_connected_remote_and_an_unknown_bridge(tmp_path, start_broker, mosquitto):  # noqa: F811
    remote = mosquitto()
    broker, token = broker_with_bridge(tmp_path, start_broker, f"127.0.0.1:{remote.port}")

    def connected():
        code, status, err = bridge_state(broker, token)
        assert code == 0, err
        return status if status.get("state") == "connected" else None

    status = wait_until(connected, timeout=10, what="bridge connected")
    assert "lastError" not in status, status
    # A bridge the broker does not run (config not reloaded yet, or refused).
    code, status, _ = bridge_state(broker, token, bridge="elsewhere")
    assert code == 0
    assert status["state"] == "notRunning", status


def test_wrong_token_is_reported_not_guessed(tmp_path, start_broker):
    broker, _ = broker_with_bridge(tmp_path, start_broker, f"127.0.0.1:{free_port()}")
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-token")
    code, status, err = bridge_state(broker, wrong)
    assert code != 0
    assert "HTTP 401" in err, err
    # Nothing answered: the state stays unknown, the pod is listed as unreachable with why.
    assert "state" not in status, status
    assert status["pods"][0]["state"] == "unreachable"
    assert "HTTP 401" in status["pods"][0]["lastError"]
