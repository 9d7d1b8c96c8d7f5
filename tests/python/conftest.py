"""Shared fixtures: start the real `fleetmq-broker` binary on a free loopback port."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import time

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]


def broker_binary() -> str:
    """The broker under test: $FLEETMQ_BROKER, else the cargo debug build."""
    if os.environ.get("FLEETMQ_BROKER"):
        return os.environ["FLEETMQ_BROKER"]
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return str(target / "debug" / "fleetmq-broker")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


class Broker:
    """A running broker process."""

    def __init__(self, proc: subprocess.Popen, port: int, log_path: pathlib.Path, config_path: pathlib.Path):
        self.proc = proc
        self.port = port
        self.host = "127.0.0.1"
        self.log_path = log_path
        self.config_path = config_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Signals the broker and returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"broker did not exit within {timeout}s after signal {sig}")
        return self.proc.returncode


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"broker exited early with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"broker did not listen on {port} within {timeout}s")


@pytest.fixture
def start_broker(tmp_path):
    """Factory: start_broker(config: dict = {}, args: list = []) -> Broker.

    The config dict is merged over test defaults (one listener on a free port, anonymous
    allowed, $SYS off, 2 workers)."""
    started: list[Broker] = []

    def start(config: dict | None = None, args: list[str] | None = None) -> Broker:
        port = free_port()
        base = {
            "listeners": [{"bind": f"127.0.0.1:{port}"}],
            "auth": {"allow_anonymous": True},
            "sys": {"interval": "0s"},
            "server": {"workers": 2, "shutdown_timeout": "5s"},
            "storage": {"data_dir": str(tmp_path / f"data-{port}")},
        }
        effective = merge(base, config or {})
        if "listeners" in (config or {}):
            port = int(str(effective["listeners"][0]["bind"]).rsplit(":", 1)[1])
        config_path = tmp_path / f"broker-{port}.yaml"
        config_path.write_text(yaml.safe_dump(effective))
        log_path = tmp_path / f"broker-{port}.log"
        log = open(log_path, "w")
        proc = subprocess.Popen(
            [broker_binary(), "--config", str(config_path), *(args or [])],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        broker = Broker(proc, port, log_path, config_path)
        started.append(broker)
        wait_for_port(port, proc)
        return broker

    yield start
    for broker in started:
        if broker.proc.poll() is None:
            broker.proc.kill()
            broker.proc.wait()


@pytest.fixture
def broker(start_broker) -> Broker:
    """A broker with the test defaults."""
    return start_broker()
