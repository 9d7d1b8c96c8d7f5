"""Test helpers: a paho-mqtt 2.1 client wrapper with event-based waits, mosquitto CLI
helpers and small utilities. Fixtures live in conftest.py."""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

V31, V311, V5 = mqtt.MQTTv31, mqtt.MQTTv311, mqtt.MQTTv5

# paho VERSION2 maps v3 CONNACK return codes to v5 reason codes.
V3_CONNACK_AS_V5 = {0: 0x00, 1: 0x84, 2: 0x85, 3: 0x88, 4: 0x86, 5: 0x87}


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02, what: str = "condition"):
    """Polls `predicate` until it returns a truthy value (returned) or fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def props(packet_type: int, **values) -> Properties:
    """paho Properties for `packet_type` (PacketTypes.PUBLISH, ...) from keyword values."""
    p = Properties(packet_type)
    for key, value in values.items():
        setattr(p, key, value)
    return p


def publish_props(**values) -> Properties:
    return props(PacketTypes.PUBLISH, **values)


def connect_props(**values) -> Properties:
    return props(PacketTypes.CONNECT, **values)


def prop(properties, name: str, default=None):
    """A property of a received packet, or `default` when absent."""
    if properties is None:
        return default
    return getattr(properties, name, default)


class Client:
    """paho-mqtt client with its network loop on a thread and everything it receives
    recorded. Every wait is bounded.

    Note: paho 2.1 drops the reason code of a broker DISCONNECT that carries no properties
    (it only decodes it when the remaining length is above 2), so tests that check DISCONNECT
    reason codes use the raw client (rawmqtt.py)."""

    def __init__(self, host: str, port: int, client_id: str = "", protocol: int = V5,
                 clean_session: bool | None = None, manual_ack: bool = False,
                 transport: str = "tcp", ws_path: str = "/mqtt", tls: dict | None = None):
        """`transport` "websockets" speaks MQTT over WebSocket on `ws_path`; `tls` holds
        paho `tls_set` arguments (ca_certs, certfile, keyfile, tls_version, ...)."""
        self.host, self.port, self.protocol = host, port, protocol
        kwargs = {}
        if protocol != V5:
            kwargs["clean_session"] = True if clean_session is None else clean_session
        self.paho = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            manual_ack=manual_ack,
            reconnect_on_failure=False,
            transport=transport,
            **kwargs,
        )
        if transport == "websockets":
            self.paho.ws_set_options(path=ws_path)
        if tls is not None:
            self.paho.tls_set(**tls)
        self.cond = threading.Condition()
        self.messages: list[mqtt.MQTTMessage] = []
        self.connacks: list[tuple] = []  # (reason_code, session_present, properties)
        self.subacks: dict[int, tuple] = {}  # mid -> (codes, properties)
        self.unsubacks: dict[int, tuple] = {}
        self.pubacks: dict[int, tuple] = {}  # mid -> (reason_code, properties)
        self.disconnects: list[tuple] = []  # (reason_code, from_server, properties)
        p = self.paho
        p.on_connect = self._on_connect
        p.on_message = self._on_message
        p.on_subscribe = self._on_subscribe
        p.on_unsubscribe = self._on_unsubscribe
        p.on_publish = self._on_publish
        p.on_disconnect = self._on_disconnect
        self._loop = False
        # Called after a clean DISCONNECT (the clients fixture waits for the broker's side).
        self.after_disconnect = None

    # -- callbacks
    def _record(self, fn):
        with self.cond:
            fn()
            self.cond.notify_all()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self._record(lambda: self.connacks.append((reason_code, flags.session_present, properties)))

    def _on_message(self, client, userdata, msg):
        self._record(lambda: self.messages.append(msg))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self._record(lambda: self.subacks.__setitem__(mid, ([int(rc.value) for rc in reason_codes], properties)))

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties):
        self._record(lambda: self.unsubacks.__setitem__(mid, ([int(rc.value) for rc in reason_codes], properties)))

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        self._record(lambda: self.pubacks.__setitem__(mid, (int(reason_code.value), properties)))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self._record(lambda: self.disconnects.append(
            (int(reason_code.value), flags.is_disconnect_packet_from_server, properties)))

    def _wait(self, predicate, timeout: float, what):
        """`what` (a string, or a callable giving one) describes the wait in the failure."""
        with self.cond:
            if not self.cond.wait_for(predicate, timeout):
                text = what() if callable(what) else what
                raise AssertionError(f"{self.paho._client_id!r}: timed out after {timeout}s waiting for {text}")
            return predicate()

    # -- connection
    def will_set(self, topic: str, payload=b"", qos: int = 0, retain: bool = False, properties=None):
        self.paho.will_set(topic, payload, qos, retain, properties)
        return self

    def connect(self, keepalive: int = 60, clean_start: bool | None = None, properties=None,
                timeout: float = 5.0, expect: int | None = 0) -> tuple:
        """Connects and waits for CONNACK. Returns (reason code value, session_present, props).
        With `expect` set, asserts the reason code (v3 codes are mapped as paho does)."""
        before = len(self.connacks)
        kwargs = {}
        if self.protocol == V5:
            kwargs["clean_start"] = True if clean_start is None else clean_start
            kwargs["properties"] = properties
        self.paho.connect(self.host, self.port, keepalive, **kwargs)
        if not self._loop:
            self.paho.loop_start()
            self._loop = True
        rc, present, props_ = self._wait(lambda: len(self.connacks) > before and self.connacks[before],
                                         timeout, "CONNACK")
        rc = int(rc.value)
        if expect is not None:
            want = expect if self.protocol == V5 else V3_CONNACK_AS_V5[expect]
            assert rc == want, f"CONNACK reason {rc:#x}, expected {want:#x}"
        return rc, present, props_

    def disconnect(self, reasoncode=None, properties=None, timeout: float = 5.0):
        """Clean DISCONNECT, then stops the network thread."""
        if self.paho.is_connected():
            before = len(self.disconnects)
            if reasoncode is not None:
                from paho.mqtt.reasoncodes import ReasonCode
                reasoncode = ReasonCode(PacketTypes.DISCONNECT, identifier=reasoncode)
            self.paho.disconnect(reasoncode, properties)
            self._wait(lambda: len(self.disconnects) > before, timeout, "disconnect")
            self.stop()
            if self.after_disconnect is not None:
                self.after_disconnect()
            return
        self.stop()

    def drop(self):
        """Closes the TCP connection without DISCONNECT (an abnormal disconnect)."""
        sock = self.paho.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        # The network thread sees the closed socket and ends (no reconnect).
        self.stop()
        if sock is not None:
            sock.close()

    def stop(self):
        """Stops the network thread without sending anything."""
        if self._loop:
            self.paho._thread_terminate = True
            wake = self.paho._sockpairW  # wakes the thread's select() instead of waiting 1 s
            if wake is not None:
                try:
                    wake.send(b"0")
                except OSError:
                    pass
            self.paho.loop_stop()
            self._loop = False

    # -- operations
    def _subscribe(self, topic, qos, properties) -> int:
        if isinstance(topic, list):
            rc, mid = self.paho.subscribe(topic, properties=properties)
        elif isinstance(qos, SubscribeOptions):
            rc, mid = self.paho.subscribe(topic, options=qos, properties=properties)
        else:
            rc, mid = self.paho.subscribe(topic, qos, properties=properties)
        assert rc == mqtt.MQTT_ERR_SUCCESS, rc
        return mid

    def subscribe(self, topic, qos: int | SubscribeOptions = 0, properties=None, timeout: float = 5.0) -> list[int]:
        """Subscribes (`topic` may be a list of (filter, qos/options)) and returns the SUBACK codes."""
        return self.subscribe_full(topic, qos, properties, timeout)[0]

    def subscribe_full(self, topic, qos: int | SubscribeOptions = 0, properties=None, timeout: float = 5.0) -> tuple:
        """Like subscribe() but returns (codes, SUBACK properties)."""
        mid = self._subscribe(topic, qos, properties)
        return self._wait(lambda: self.subacks.get(mid), timeout, f"SUBACK {mid}")

    def unsubscribe(self, topic, properties=None, timeout: float = 5.0) -> list[int]:
        rc, mid = self.paho.unsubscribe(topic, properties=properties)
        assert rc == mqtt.MQTT_ERR_SUCCESS, rc
        return self._wait(lambda: self.unsubacks.get(mid), timeout, f"UNSUBACK {mid}")[0]

    def publish(self, topic: str, payload=b"", qos: int = 0, retain: bool = False, properties=None,
                wait: bool = True, timeout: float = 5.0) -> tuple | None:
        """Publishes; with `wait`, waits for the flow to complete and returns
        (reason code value, properties) of the PUBACK/PUBCOMP (QoS 0: once written)."""
        info = self.paho.publish(topic, payload, qos, retain, properties)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, info.rc
        if not wait:
            return None
        return self._wait(lambda: self.pubacks.get(info.mid), timeout, f"publish {info.mid} acknowledged")

    # -- receiving
    def wait_messages(self, count: int, timeout: float = 5.0) -> list[mqtt.MQTTMessage]:
        """Waits until at least `count` messages arrived; returns all received so far."""
        self._wait(lambda: len(self.messages) >= count, timeout,
                   lambda: f"{count} message(s); received {[(m.topic, m.payload[:40]) for m in self.messages]}")
        with self.cond:
            return list(self.messages)

    def wait_message(self, topic: str | None = None, timeout: float = 5.0) -> mqtt.MQTTMessage:
        def find():
            for m in self.messages:
                if topic is None or m.topic == topic:
                    return m
            return None

        return self._wait(find, timeout, f"a message on {topic!r}")

    def settle(self, duration: float = 0.3) -> list[mqtt.MQTTMessage]:
        """Waits `duration` for stragglers (used only to prove that nothing more arrives)."""
        time.sleep(duration)
        with self.cond:
            return list(self.messages)

    def clear(self):
        with self.cond:
            self.messages.clear()

    def wait_disconnect(self, timeout: float = 5.0) -> tuple:
        return self._wait(lambda: self.disconnects and self.disconnects[0], timeout, "disconnect")


def payloads(messages) -> list[bytes]:
    return [m.payload for m in messages]


# ---------------------------------------------------------------- mosquitto clients


class MosquittoSub:
    """A running mosquitto_sub with -d: waits for its SUBACK before tests publish."""

    def __init__(self, host: str, port: int, topics: list[str], extra: list[str] = (), count: int | None = None,
                 version: str = "mqttv311", fmt: str | None = None):
        # Line-buffered so the debug lines (SUBACK) are visible at once.
        cmd = ["stdbuf", "-oL", "mosquitto_sub", "-h", host, "-p", str(port), "-V", version, "-d"]
        for t in topics:
            cmd += ["-t", t]
        if count is not None:
            cmd += ["-C", str(count)]
        if fmt is not None:
            cmd += ["-F", fmt]
        else:
            cmd += ["-v"]
        cmd += ["-W", "10", *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_line(self, pattern: str, timeout: float = 5.0) -> str:
        rx = re.compile(pattern)
        with self.cond:
            ok = self.cond.wait_for(lambda: any(rx.search(line) for line in self.lines), timeout)
            assert ok, f"mosquitto_sub: no line matching {pattern!r} within {timeout}s; got {self.lines}"
            return next(line for line in self.lines if rx.search(line))

    def wait_subscribed(self, timeout: float = 5.0):
        self.wait_line(r"received SUBACK", timeout)
        return self

    @staticmethod
    def _is_output(line: str) -> bool:
        return not (line.startswith("Client ") or line.startswith("Subscribed (mid"))

    def output(self) -> list[str]:
        """Lines that are not debug output (the received messages)."""
        with self.cond:
            return [line for line in self.lines if self._is_output(line)]

    def wait_output(self, count: int, timeout: float = 5.0) -> list[str]:
        with self.cond:
            ok = self.cond.wait_for(lambda: len([x for x in self.lines if self._is_output(x)]) >= count, timeout)
            assert ok, f"mosquitto_sub: expected {count} output line(s) within {timeout}s; got {self.lines}"
        return self.output()

    def wait_exit(self, timeout: float = 5.0) -> int:
        rc = self.proc.wait(timeout)
        self.thread.join(timeout)
        return rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def mosquitto_pub(host: str, port: int, topic: str, message: str | None, *extra: str, version: str = "mqttv311",
                  qos: int = 0, timeout: float = 10) -> subprocess.CompletedProcess:
    cmd = ["mosquitto_pub", "-h", host, "-p", str(port), "-V", version, "-t", topic, "-q", str(qos)]
    cmd += ["-n"] if message is None else ["-m", message]
    cmd += list(extra)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
