"""Configuration file errors, --check-config, the CLI overrides (--bind, --data-dir,
--allow-anonymous, --log-level) and the anonymous-access rule for non-loopback listeners."""

import os
import re
import socket
import subprocess
import textwrap

import pytest
import yaml

import rawmqtt
from conftest import broker_binary, free_port


def run(args, cwd, timeout=5):
    """Runs the broker expecting it to exit by itself."""
    env = dict(os.environ, RUST_BACKTRACE="0")
    try:
        return subprocess.run([broker_binary(), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"broker with {args} did not exit within {timeout}s (it should have refused to start)")


def write(tmp_path, text, name="broker.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def listening(port) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------- config errors


@pytest.mark.parametrize("text,key,line", [
    ("""
     listeners:
       - bind: 127.0.0.1:{port}
     limits:
       max_inflight: 10
       max_infligt: 6
     """, "max_infligt", 5),
    ("""
     listeners:
       - bind: 127.0.0.1:{port}
     listner: []
     """, "listner", 3),
    ("""
     listeners:
       - bind: 127.0.0.1:{port}
         nmae: public
     """, "nmae", 3),
    ("""
     sys:
       interval: 1s
     sessions:
       persistent_session_expiry: 1h
       max_sesion_expiry: 2h
     """, "max_sesion_expiry", 5),
], ids=["limits", "top-level", "listener", "sessions"])
def test_unknown_key_fails_naming_key_and_line(tmp_path, text, key, line):
    port = free_port()
    cfg = write(tmp_path, text.format(port=port))
    r = run(["--config", str(cfg)], tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert key in out, out
    assert re.search(rf"\bline {line}\b", out), f"line {line} not named: {out}"
    assert not listening(port)


@pytest.mark.parametrize("text,key,line", [
    ("""
     limits:
       max_connections: 10
       max_inflight: lots
     """, "max_inflight", 3),
    ("""
     log:
       level: info
     sys:
       interval: soon
     """, "interval", 4),
    ("""
     limits:
       max_packet_size: huge
     """, "max_packet_size", 2),
    ("""
     listeners:
       - bind: not-an-address
     """, "bind", 2),
    ("""
     auth:
       allow_anonymous: maybe
     """, "allow_anonymous", 2),
], ids=["integer", "duration", "byte-size", "address", "bool"])
def test_malformed_value_fails_naming_key_and_line(tmp_path, text, key, line):
    r = run(["--config", str(write(tmp_path, text))], tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert key in out, out
    assert re.search(rf"\bline {line}\b", out), f"line {line} not named: {out}"


INVALID_VALUES = [
    ("""
     limits:
       max_inflight: 0
     """, "limits.max_inflight", 2),
    ("""
     limits:
       max_topic_levels: 5
       max_packet_size: 10
     """, "limits.max_packet_size", 3),
    ("""
     server:
       workers: 1
       shutdown_timeout: 0s
     """, "server.shutdown_timeout", 3),
]
INVALID_IDS = ["max_inflight-0", "max_packet_size-too-small", "shutdown_timeout-0"]


@pytest.mark.parametrize("text,key,line", INVALID_VALUES, ids=INVALID_IDS)
def test_out_of_range_value_fails_naming_the_key(tmp_path, text, key, line):
    r = run(["--config", str(write(tmp_path, text))], tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert key in out, out


@pytest.mark.parametrize("text,key,line", INVALID_VALUES, ids=INVALID_IDS)
def test_out_of_range_value_error_names_the_line(tmp_path, text, key, line):
    r = run(["--config", str(write(tmp_path, text))], tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert re.search(rf"\bline {line}\b", out), f"bad value for {key} at line {line}: line not named: {out}"


def test_check_config_rejects_a_bad_file(tmp_path):
    r = run(["--config", str(write(tmp_path, "limits:\n  bogus: 1\n")), "--check-config"], tmp_path)
    assert r.returncode != 0
    assert "bogus" in r.stdout + r.stderr


# ---------------------------------------------------------------- --check-config


def test_check_config_prints_the_effective_config_with_cli_overrides(tmp_path):
    cfg_port, cli_port = free_port(), free_port()
    cfg = write(tmp_path, f"""
        listeners:
          - bind: 127.0.0.1:{cfg_port}
        limits:
          max_inflight: 7
        sys:
          interval: 3s
        """)
    data = tmp_path / "cli-data"
    r = run(["--config", str(cfg), "--bind", f"127.0.0.1:{cli_port}", "--data-dir", str(data),
             "--allow-anonymous", "--log-level", "debug", "--check-config"], tmp_path)
    assert r.returncode == 0, r.stderr
    eff = yaml.safe_load(r.stdout)
    assert [listener["bind"] for listener in eff["listeners"]] == [f"127.0.0.1:{cli_port}"]
    assert eff["limits"]["max_inflight"] == 7
    assert eff["limits"]["max_queued_messages"] == 1000, "defaults are filled in"
    assert eff["limits"]["max_topic_levels"] == 128
    assert eff["sys"]["interval"] == "3s"
    assert eff["storage"]["data_dir"] == str(data)
    assert eff["auth"]["allow_anonymous"] is True
    assert eff["log"]["level"] == "debug"
    assert not listening(cli_port) and not listening(cfg_port), "--check-config must not start the broker"


def test_check_config_without_a_file_shows_the_defaults(tmp_path):
    r = run(["--check-config"], tmp_path)
    assert r.returncode == 0, r.stderr
    eff = yaml.safe_load(r.stdout)
    assert [listener["bind"] for listener in eff["listeners"]] == ["127.0.0.1:1883"]
    assert eff["auth"].get("allow_anonymous") in (None, True), "anonymous allowed by default on loopback"
    limits = eff["limits"]
    assert (limits["max_inflight"], limits["max_queued_messages"], limits["max_topic_levels"],
            limits["max_topic_alias"], limits["max_keepalive"], limits["max_connections"]) == (64, 1000, 128, 64, 65535, 0)
    assert str(limits["max_packet_size"]).replace(" ", "") in ("1MiB", "1048576")
    assert str(limits["max_queued_bytes"]).replace(" ", "") in ("16MiB", "16777216")
    assert eff["sys"]["interval"] == "10s"


# ---------------------------------------------------------------- CLI overrides


def test_bind_overrides_the_configured_listeners(tmp_path, launch, raw):
    cfg_port, p1, p2 = free_port(), free_port(), free_port()
    cfg = write(tmp_path, f"""
        listeners:
          - bind: 127.0.0.1:{cfg_port}
        auth:
          allow_anonymous: true
        """)
    b = launch(["--config", str(cfg), "--bind", f"127.0.0.1:{p1}", "--bind", f"127.0.0.1:{p2}"], wait_port=p1)
    for port in (p1, p2):
        b.port = port
        c = raw(b, rawmqtt.V5)
        assert c.connect(f"on-{port}").reason == 0
    assert not listening(cfg_port), "the configured listener is replaced"


def test_data_dir_is_created(tmp_path, launch):
    port = free_port()
    data = tmp_path / "nested" / "state"
    b = launch(["--bind", f"127.0.0.1:{port}", "--data-dir", str(data)], wait_port=port)
    assert data.is_dir()
    assert f"data_dir={data}" in b.log()


def test_default_config_allows_anonymous_on_loopback(tmp_path, launch, raw):
    port = free_port()
    b = launch(["--config", str(write(tmp_path, "")), "--bind", f"127.0.0.1:{port}"], wait_port=port)
    assert "anonymous=true" in b.log()
    c = raw(b, rawmqtt.V5)
    assert c.connect("anon").reason == 0
    c3 = raw(b, rawmqtt.V311)
    assert c3.connect("anon3").reason == 0


def test_non_loopback_listener_refuses_anonymous_clients(start_broker, raw):
    port = free_port()
    broker = start_broker({"listeners": [{"bind": f"0.0.0.0:{port}"}]}, unset=("auth.allow_anonymous",))
    assert "anonymous=false" in broker.log()
    v5 = raw(broker, rawmqtt.V5)
    connack = v5.connect("anon-v5")
    assert connack.reason == 0x87, f"v5 CONNACK {connack.reason:#x}, expected 0x87 (not authorized)"
    assert connack.props.get("ReasonString"), "a refusal carries a reason string"
    v3 = raw(broker, rawmqtt.V311)
    assert v3.connect("anon-v3").reason == 5, "v3 CONNACK 5 (not authorized)"
    broker.wait_log(r"connection refused: not authorized.*client_id=anon-v5")
    broker.wait_log(r"connection refused: not authorized.*client_id=anon-v3")


@pytest.mark.parametrize("how", ["config", "cli"])
def test_non_loopback_listener_accepts_anonymous_when_allowed(start_broker, raw, how):
    port = free_port()
    if how == "config":
        broker = start_broker({"listeners": [{"bind": f"0.0.0.0:{port}"}], "auth": {"allow_anonymous": True}})
    else:
        broker = start_broker({"listeners": [{"bind": f"0.0.0.0:{port}"}]}, args=["--allow-anonymous"],
                              unset=("auth.allow_anonymous",))
    assert raw(broker, rawmqtt.V5).connect("anon-v5").reason == 0
    assert raw(broker, rawmqtt.V311).connect("anon-v3").reason == 0


def test_allow_anonymous_false_refuses_on_loopback_too(start_broker, raw):
    broker = start_broker({"auth": {"allow_anonymous": False}})
    assert raw(broker, rawmqtt.V5).connect("anon-v5").reason == 0x87
    assert raw(broker, rawmqtt.V31).connect("anon-v31").reason == 5


def test_port_in_use_fails_at_start_naming_the_listener(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = write(tmp_path, f"""
            listeners:
              - name: main
                bind: 127.0.0.1:{port}
            """)
        r = run(["--config", str(cfg)], tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert f"127.0.0.1:{port}" in out and "listeners[0]" in out, out
