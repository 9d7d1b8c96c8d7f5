"""Shared fixtures: start the real `fleetmq-broker` binary on a free loopback port."""

from __future__ import annotations

import os
import pathlib
import re
import sys
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


def operator_binary() -> str:
    """The operator under test: $FLEETMQ_OPERATOR, else the cargo debug build."""
    if os.environ.get("FLEETMQ_OPERATOR"):
        return os.environ["FLEETMQ_OPERATOR"]
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return str(target / "debug" / "fleetmq-operator")


# Ports handed out by free_port in this process. The kernel may give bind(0) the port it
# just released, so two free_port() calls in a row (a test's listener, then the fixture's
# http port) could collide; CI saw exactly that once.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now and not handed out before in this process."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def unset_key(config: dict, dotted: str) -> None:
    """Removes `a.b.c` from a nested config dict (missing keys are ignored)."""
    *parents, last = dotted.split(".")
    node = config
    for key in parents:
        node = node.get(key)
        if not isinstance(node, dict):
            return
    node.pop(last, None)


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

    def __init__(self, proc: subprocess.Popen, port: int, log_path: pathlib.Path, config_path: pathlib.Path,
                 args: list[str] | None = None, registry: list | None = None):
        self.proc = proc
        self.port = port
        self.host = "127.0.0.1"
        self.log_path = log_path
        self.config_path = config_path
        self.args = list(args or [])
        # Every process started for this test (restarts included), killed at teardown.
        self.registry = registry if registry is not None else []

    def kill9(self) -> None:
        """SIGKILL: the broker gets no chance to flush or shut down."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> "Broker":
        """Starts a new broker process with the same config, port and data dir (the old one
        must have exited); returns it."""
        assert self.proc.poll() is not None, "stop or kill the broker before restarting it"
        n = sum(1 for b in self.registry if b.config_path == self.config_path)
        log_path = self.log_path.with_name(f"{self.config_path.stem}-run{n}.log")
        log = open(log_path, "w")
        proc = subprocess.Popen([broker_binary(), "--config", str(self.config_path), *self.args],
                                stdout=log, stderr=subprocess.STDOUT)
        log.close()
        broker = Broker(proc, self.port, log_path, self.config_path, self.args, self.registry)
        self.registry.append(broker)
        wait_for_port(self.port, proc)
        return broker

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 5.0) -> str:
        """Waits until a log line matches the regex `pattern`; returns that line."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log().splitlines():
                if rx.search(line):
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"no broker log line matching {pattern!r} within {timeout}s; log:\n{self.log()[-4000:]}")
            time.sleep(0.05)

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


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def start_broker(tmp_path, request):
    """Factory: start_broker(config: dict = {}, args: list = [], unset: tuple = ()) -> Broker.

    The config dict is merged over test defaults (one listener on a free port, anonymous
    allowed, $SYS off, 2 workers); `unset` removes default keys. On a test failure the
    broker log is printed with the report."""
    started: list[Broker] = []

    def start(config: dict | None = None, args: list[str] | None = None, unset: tuple[str, ...] = (),
              env: dict | None = None) -> Broker:
        """`unset`: dotted keys of the test defaults to leave out (e.g. "auth.allow_anonymous");
        `env`: extra environment variables for the broker process."""
        port = free_port()
        base = {
            "listeners": [{"bind": f"127.0.0.1:{port}"}],
            "auth": {"allow_anonymous": True},
            "sys": {"interval": "0s"},
            "server": {"workers": 2, "shutdown_timeout": "5s"},
            "storage": {"data_dir": str(tmp_path / f"data-{port}")},
            # Its own free port: brokers of one test run side by side.
            "http": {"bind": f"127.0.0.1:{free_port()}"},
        }
        effective = merge(base, config or {})
        for key in unset:
            unset_key(effective, key)
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
            env={**os.environ, **(env or {})},
        )
        log.close()  # the child has its own descriptor
        broker = Broker(proc, port, log_path, config_path, args, started)
        started.append(broker)
        wait_for_port(port, proc)
        return broker

    yield start
    rep = getattr(request.node, "rep_call", None)
    for broker in started:
        if rep is not None and rep.failed:
            # Shown with the failure ("Captured stderr teardown").
            print(f"--- broker log (port {broker.port}) ---\n{broker.log()[-6000:]}", file=sys.stderr)
        if broker.proc.poll() is None:
            broker.proc.kill()
            broker.proc.wait()


@pytest.fixture
def broker(start_broker) -> Broker:
    """A broker with the test defaults."""
    return start_broker()


def settle_disconnect(broker: Broker, client_id: str, timeout: float = 2.0) -> None:
    """Waits (bounded, never failing) until the broker has logged the end of `client_id`'s
    latest connection. A reconnect with the same id that overtakes the broker's reading of the
    DISCONNECT (the new connection may land on another worker thread) is a session takeover,
    which tests of "clean session ends at disconnect" must not race into."""
    marker = f"client_id={client_id} "
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            lines = broker.log().splitlines()
        except OSError:
            return
        connected = [i for i, l in enumerate(lines) if "client connected" in l and marker in l]
        if not connected:
            return  # not logging at info (or never connected here): nothing to wait for
        if any("client disconnected" in l and marker in l for l in lines[connected[-1]:]):
            return
        time.sleep(0.01)


@pytest.fixture
def clients():
    """Factory for paho clients (helpers.Client) that are stopped at teardown:
    clients(broker, client_id, protocol=V5, clean_session=None, manual_ack=False, port=None,
    transport="tcp", ws_path="/mqtt", tls=None)."""
    from helpers import Client

    made: list[Client] = []

    def make(broker: Broker, client_id: str = "", protocol: int | None = None, **kwargs) -> Client:
        from helpers import V5

        port = kwargs.pop("port", broker.port)
        client = Client(broker.host, port, client_id, V5 if protocol is None else protocol, **kwargs)
        if client_id and hasattr(broker, "log_path"):
            client.after_disconnect = lambda: settle_disconnect(broker, client_id)
        made.append(client)
        return client

    yield make
    for client in made:
        try:
            client.drop()
        except Exception:
            pass


@pytest.fixture
def raw():
    """Factory for raw MQTT connections (rawmqtt.RawClient), closed at teardown:
    raw(broker, version=rawmqtt.V311)."""
    from rawmqtt import V311, RawClient

    made: list[RawClient] = []

    def make(broker: Broker, version: int = V311, timeout: float = 5.0) -> RawClient:
        client = RawClient(broker.host, broker.port, version, timeout)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def mosq_sub():
    """Factory for running mosquitto_sub processes (helpers.MosquittoSub), killed at teardown:
    mosq_sub(broker, topics, version="mqttv311", count=None, fmt=None, extra=())."""
    from helpers import MosquittoSub

    made: list[MosquittoSub] = []

    def make(broker: Broker, topics: list[str], **kwargs) -> MosquittoSub:
        sub = MosquittoSub(broker.host, broker.port, topics, **kwargs)
        made.append(sub)
        return sub

    yield make
    for sub in made:
        sub.kill()


@pytest.fixture
def launch(tmp_path, request):
    """Starts the broker binary with exactly `args` (no test defaults, except that the HTTP
    endpoint gets a free port unless `args` name one with --http-bind or only check the config):
    launch(args, wait_port=None) -> Broker. With `wait_port`, waits until it listens there.
    Processes still running at teardown are killed."""
    started: list[Broker] = []

    def start(args: list[str], wait_port: int | None = None) -> Broker:
        if "--http-bind" not in args and "--check-config" not in args:
            # Other brokers run beside this one: never the default HTTP port 8080.
            args = [*args, "--http-bind", f"127.0.0.1:{free_port()}"]
        log_path = tmp_path / f"launch-{len(started)}.log"
        log = open(log_path, "w")
        proc = subprocess.Popen([broker_binary(), *args], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        log.close()
        broker = Broker(proc, wait_port or 0, log_path, tmp_path)
        started.append(broker)
        if wait_port:
            wait_for_port(wait_port, proc)
        return broker

    yield start
    rep = getattr(request.node, "rep_call", None)
    for broker in started:
        if rep is not None and rep.failed:
            print(f"--- broker log ---\n{broker.log()[-6000:]}", file=sys.stderr)
        if broker.proc.poll() is None:
            broker.proc.kill()
            broker.proc.wait()
