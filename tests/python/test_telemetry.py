"""OpenTelemetry trace export: the broker, configured only by the standard OTEL_* variables,
sends `mqtt.connect`, `mqtt.publish` and `store.commit` spans over OTLP/HTTP to a collector
(here a small HTTP server on 127.0.0.1 recording what it receives). Off unless asked for."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import broker_binary
from helpers import V5, V311, wait_until


class Collector:
    """Records every OTLP/HTTP request: (path, content type, body)."""

    def __init__(self):
        self.requests: list[tuple[str, str, bytes]] = []
        lock = threading.Lock()
        self.lock = lock
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with lock:
                    received.append((self.path, self.headers.get("Content-Type", ""), body))
                reply = b"{}" if "json" in self.headers.get("Content-Type", "") else b""
                self.send_response(200)
                self.send_header("Content-Type", self.headers.get("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self) -> list[tuple[str, str, bytes]]:
        with self.lock:
            return list(self.requests)

    def spans(self) -> list[dict]:
        """Spans from OTLP/JSON bodies, each with `attrs` (flattened) and `resource`."""
        found = []
        for _, ctype, body in self.bodies():
            if "json" not in ctype:
                continue
            for rs in json.loads(body).get("resourceSpans", []):
                resource = flatten(rs.get("resource", {}).get("attributes", []))
                for ss in rs.get("scopeSpans", []):
                    for span in ss.get("spans", []):
                        found.append({**span, "attrs": flatten(span.get("attributes", [])), "resource": resource})
        return found

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def flatten(attributes: list[dict]) -> dict:
    out = {}
    for kv in attributes:
        value = kv.get("value", {})
        out[kv["key"]] = next(iter(value.values()), None) if value else None
    return out


@pytest.fixture
def collector():
    c = Collector()
    yield c
    c.close()


# Short batch delay so spans arrive within the test's bounded waits.
FAST = {"OTEL_BSP_SCHEDULE_DELAY": "100"}


def test_connect_publish_and_store_spans_reach_the_collector_as_json(start_broker, clients, collector, tmp_path):
    passwords = tmp_path / "passwords"
    subprocess.run([broker_binary(), "passwd", "-c", "-b", str(passwords), "sensor", "s3cret"],
                   check=True, capture_output=True, timeout=30)
    broker = start_broker(
        {"auth": {"password_file": str(passwords)}, "storage": {"persistence": True}},
        unset=("auth.allow_anonymous",),
        env={**FAST, "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
             "OTEL_SERVICE_NAME": "edge-broker-1", "OTEL_RESOURCE_ATTRIBUTES": "k8s.pod.name=fleetmq-0"},
    )
    assert "exporting OpenTelemetry traces" in broker.wait_log("exporting OpenTelemetry traces")
    sub = clients(broker, "dashboard", V5)
    sub.paho.username_pw_set("sensor", "s3cret")
    sub.connect()
    sub.subscribe("plant/#", 1)
    pub = clients(broker, "sensor-7", V311)
    pub.paho.username_pw_set("sensor", "s3cret")
    pub.connect()
    pub.publish("plant/1/temp", b"21.5", qos=1, retain=True)
    sub.wait_message("plant/1/temp")
    intruder = clients(broker, "intruder", V5)
    intruder.paho.username_pw_set("sensor", "guess")
    assert intruder.connect(expect=None)[0] == 0x86

    def named(name):
        return [s for s in collector.spans() if s["name"] == name]

    wait_until(lambda: len(named("mqtt.connect")) >= 3 and named("mqtt.publish") and named("store.commit"),
               timeout=10, what="connect, publish and store spans at the collector")
    assert all(path == "/v1/traces" for path, _, _ in collector.bodies())
    connects = {s["attrs"]["mqtt.client_id"]: s["attrs"] for s in named("mqtt.connect")}
    assert connects["sensor-7"]["mqtt.outcome"] == "accepted"
    assert connects["sensor-7"]["mqtt.protocol"] == "3.1.1"
    assert connects["dashboard"]["mqtt.protocol"] == "5.0"
    assert "bad user name or password" in connects["intruder"]["mqtt.outcome"]
    publish = next(s for s in named("mqtt.publish") if s["attrs"].get("mqtt.topic") == "plant/1/temp")
    assert publish["attrs"]["mqtt.qos"] in (1, "1") and publish["attrs"]["mqtt.retain"] is True
    assert publish["attrs"]["mqtt.matched"] in (1, "1"), publish["attrs"]
    commits = named("store.commit")
    assert any(int(s["attrs"]["store.changes"]) >= 1 and s["attrs"]["store.synced"] is True for s in commits)
    resource = publish["resource"]
    assert resource["service.name"] == "edge-broker-1" and resource["k8s.pod.name"] == "fleetmq-0", resource
    assert resource["service.version"], resource
    # Spans are for the collector; the log stays as it was.
    assert "mqtt.publish" not in broker.log()


def test_http_protobuf_is_the_default_and_the_signal_endpoint_is_used_as_given(start_broker, clients, collector):
    broker = start_broker(env={**FAST, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{collector.url}/custom/traces"})
    c = clients(broker, "proto-client", V5)
    c.connect()
    c.publish("line/9/state", b"running", qos=1)
    c.disconnect()
    wait_until(lambda: any(b"line/9/state" in body for _, _, body in collector.bodies()), timeout=10,
               what="an OTLP protobuf body with the publish span")
    path, ctype, body = next(r for r in collector.bodies() if b"line/9/state" in r[2])
    assert path == "/custom/traces" and ctype == "application/x-protobuf"
    assert b"mqtt.publish" in body and b"proto-client" in b"".join(b for _, _, b in collector.bodies())


def test_off_unless_asked_and_a_dead_collector_costs_the_clients_nothing(start_broker, clients, collector):
    # An endpoint with OTEL_TRACES_EXPORTER=none: nothing is sent, even at shutdown's flush.
    broker = start_broker(env={**FAST, "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_TRACES_EXPORTER": "none"})
    c = clients(broker, "quiet", V5)
    c.connect()
    c.publish("a/b", b"x", qos=1)
    c.disconnect()
    assert broker.stop() == 0
    assert collector.bodies() == []
    assert "exporting OpenTelemetry traces" not in broker.log()
    # A collector that is not there: clients are served all the same.
    dead = f"http://127.0.0.1:{collector.server.server_address[1]}"
    collector.close()
    broker = start_broker(env={**FAST, "OTEL_EXPORTER_OTLP_ENDPOINT": dead, "OTEL_EXPORTER_OTLP_TIMEOUT": "500"})
    sub = clients(broker, "s", V5)
    sub.connect()
    sub.subscribe("t/#", 1)
    pub = clients(broker, "p", V5)
    pub.connect()
    started = time.monotonic()
    for i in range(200):
        pub.publish(f"t/{i}", b"m", qos=1)
    assert len(sub.wait_messages(200, timeout=10)) == 200
    assert time.monotonic() - started < 10
    assert broker.stop() == 0


@pytest.mark.parametrize("env, named", [
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
     'OTEL_EXPORTER_OTLP_PROTOCOL="grpc"'),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, 'OTEL_EXPORTER_OTLP_ENDPOINT="collector:4318"'),
    ({"OTEL_TRACES_EXPORTER": "jaeger"}, 'OTEL_TRACES_EXPORTER="jaeger"'),
])
def test_unusable_otel_settings_stop_the_start_with_the_variable_named(env, named, tmp_path):
    proc = subprocess.run([broker_binary(), "--bind", "127.0.0.1:0", "--http-bind", "127.0.0.1:0", "--data-dir", str(tmp_path / "d")],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert named in proc.stderr, proc.stderr
