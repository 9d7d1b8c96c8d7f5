"""Graceful shutdown on SIGTERM and SIGINT: v5 clients get DISCONNECT 0x8B, v3 connections
are closed, no will is published, the process exits with 0."""

import signal
import time

import pytest

import rawmqtt

SIGNALS = [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]


@pytest.mark.parametrize("sig", SIGNALS)
def test_graceful_shutdown(start_broker, raw, sig):
    broker = start_broker(args=["--log-level", "debug"])
    # A v5 watcher subscribed to the wills: if the broker published one during shutdown it
    # would be sent before (or instead of) this client's own DISCONNECT.
    watcher = raw(broker, rawmqtt.V5)
    watcher.connect("watcher")
    watcher.subscribe(("wills/#", 1))
    v5 = raw(broker, rawmqtt.V5)
    v5.connect("v5-client", props={"SessionExpiryInterval": 0},
               will={"topic": "wills/v5", "payload": b"v5 will", "qos": 1})
    v5_delayed = raw(broker, rawmqtt.V5)
    v5_delayed.connect("v5-delayed", props={"SessionExpiryInterval": 60},
                       will={"topic": "wills/v5-delayed", "payload": b"v5 will", "qos": 1,
                             "props": {"WillDelayInterval": 1}})
    v3 = raw(broker, rawmqtt.V311)
    v3.connect("v3-client", will={"topic": "wills/v3", "payload": b"v3 will", "qos": 1})
    v31 = raw(broker, rawmqtt.V31)
    v31.connect("v31-client", will={"topic": "wills/v31", "payload": b"v31 will", "qos": 1})

    start = time.monotonic()
    broker.proc.send_signal(sig)
    for c in (watcher, v5, v5_delayed):
        seen = c.wait_closed(timeout=5)
        assert [(p.type, p.reason) for p in seen] == [(rawmqtt.DISCONNECT, 0x8B)], \
            f"expected only DISCONNECT 0x8B (server shutting down), got {seen}"
    for c in (v3, v31):
        assert c.wait_closed(timeout=5) == []
    code = broker.stop(sig, timeout=8)
    assert code == 0, f"exit code {code}"
    assert time.monotonic() - start < 6, "shutdown must not wait for the full timeout when clients leave"
    log = broker.log()
    name = "SIGTERM" if sig == signal.SIGTERM else "SIGINT"
    assert f"{name} received" in log
    assert "shutting down" in log and "broker stopped" in log
    assert "publishing will message" not in log, "no will may be published during shutdown"


def test_new_connections_are_refused_after_shutdown(start_broker, raw):
    broker = start_broker()
    c = raw(broker, rawmqtt.V5)
    c.connect("last")
    broker.proc.send_signal(signal.SIGTERM)
    c.wait_closed(timeout=5)
    assert broker.stop(signal.SIGTERM, timeout=8) == 0
    with pytest.raises(OSError):
        raw(broker, rawmqtt.V5)
