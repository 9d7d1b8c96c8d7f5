"""Transports with real clients: MQTT over TLS (paho, mosquitto_pub/sub), WebSocket and
secure WebSocket (paho's websockets transport), the PROXY protocol, connection rate limits,
certificate rotation without dropping connections, and config hot reload. Certificates are
made with the openssl command line."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import signal
import socket
import ssl
import struct
import subprocess
import time

import pytest
import yaml

from conftest import free_port
from helpers import V5, V311, wait_until


class Pki:
    """A test CA with server and client certificates (EC P-256, made by openssl)."""

    def __init__(self, root):
        self.dir = root

        def run(*args):
            subprocess.run(["openssl", *args], cwd=root, check=True, capture_output=True)

        def ca(name):
            run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}")

        def leaf(name, cn, ca_name, san=None):
            run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
            ext = root / f"{name}.ext"
            ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
            run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca_name}.crt", "-CAkey", f"{ca_name}.key",
                "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", str(ext))

        ca("ca")
        ca("other-ca")
        leaf("server", "localhost", "ca", "DNS:localhost,IP:127.0.0.1")
        leaf("server2", "rotated.localhost", "ca", "DNS:localhost,IP:127.0.0.1")
        leaf("client", "device-7", "ca")
        leaf("stranger", "device-8", "other-ca")

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def der_sha256(self, name: str) -> str:
        der = subprocess.run(["openssl", "x509", "-in", self.path(name), "-outform", "DER"],
                             check=True, capture_output=True).stdout
        return hashlib.sha256(der).hexdigest()


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def tls_listener(pki: Pki, port: int, protocol: str = "mqtts", cert: str = "server", **tls) -> dict:
    return {"bind": f"127.0.0.1:{port}", "protocol": protocol,
            "tls": {"cert_file": pki.path(f"{cert}.crt"), "key_file": pki.path(f"{cert}.key"), **tls}}


def served_cert_sha256(port: int, ca: str) -> str:
    """SHA-256 of the certificate a new TLS handshake gets."""
    ctx = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
            return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


def connect_packet(client_id: str) -> bytes:
    """A minimal MQTT 3.1.1 CONNECT."""
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack(">H", len(cid)) + cid
    return bytes([0x10, len(body)]) + body


def read_connack(sock) -> bytes:
    data = b""
    while len(data) < 4:
        chunk = sock.recv(4 - len(data))
        if not chunk:
            break
        data += chunk
    return data


# -- TLS ---------------------------------------------------------------------------------


def test_mqtts_serves_mosquitto_clients_and_paho(start_broker, clients, pki):
    port = free_port()
    broker = start_broker({"listeners": [tls_listener(pki, port)]})
    sub = clients(broker, "tls-sub", V5, tls={"ca_certs": pki.path("ca.crt")})
    sub.connect()
    assert sub.subscribe("secure/#", 1) == [1]
    subprocess.run(["mosquitto_pub", "-h", "localhost", "-p", str(port), "--cafile", pki.path("ca.crt"),
                    "-t", "secure/a", "-m", "over-tls", "-q", "1"], check=True, timeout=10)
    msg = sub.wait_messages(1)[0]
    assert (msg.topic, msg.payload) == ("secure/a", b"over-tls")

    out = subprocess.run(["mosquitto_sub", "-h", "localhost", "-p", str(port), "--cafile", pki.path("other-ca.crt"),
                          "-t", "x", "-C", "1", "-W", "3"], capture_output=True, text=True, timeout=10)
    assert out.returncode != 0, "a client that does not trust the server's CA cannot connect"
    assert "certificate verify failed" in out.stderr or "TLS" in out.stderr or "Error" in out.stderr, out.stderr

    v3 = clients(broker, "tls-v3", V311, tls={"ca_certs": pki.path("ca.crt")})
    v3.connect()
    v3.disconnect()


def test_min_version_13_refuses_a_tls12_only_client(start_broker, pki):
    port = free_port()
    start_broker({"listeners": [tls_listener(pki, port, min_version="1.3")]})
    ctx = ssl.create_default_context(cafile=pki.path("ca.crt"))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with pytest.raises(ssl.SSLError):
            ctx.wrap_socket(sock, server_hostname="localhost")
    ctx13 = ssl.create_default_context(cafile=pki.path("ca.crt"))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with ctx13.wrap_socket(sock, server_hostname="localhost") as tls:
            assert tls.version() == "TLSv1.3"
            tls.sendall(connect_packet("tls13"))
            assert read_connack(tls) == b"\x20\x02\x00\x00"


def test_default_min_version_accepts_tls12(start_broker, pki):
    port = free_port()
    start_broker({"listeners": [tls_listener(pki, port)]})
    ctx = ssl.create_default_context(cafile=pki.path("ca.crt"))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
            assert tls.version() == "TLSv1.2"
            tls.sendall(connect_packet("tls12"))
            assert read_connack(tls) == b"\x20\x02\x00\x00"


def test_require_certificate_refuses_clients_without_a_trusted_certificate(start_broker, clients, pki):
    port = free_port()
    broker = start_broker({"listeners": [tls_listener(pki, port, ca_file=pki.path("ca.crt"),
                                                      require_certificate=True)]})

    def attempt(certfile=None, keyfile=None) -> bool:
        ctx = ssl.create_default_context(cafile=pki.path("ca.crt"))
        if certfile:
            ctx.load_cert_chain(certfile, keyfile)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
                    tls.sendall(connect_packet("mtls"))
                    # TLS 1.3 reports a refused client certificate on the first read.
                    return read_connack(tls) == b"\x20\x02\x00\x00"
        except (ssl.SSLError, ConnectionError, OSError):
            return False

    assert not attempt(), "no client certificate"
    assert not attempt(pki.path("stranger.crt"), pki.path("stranger.key")), "certificate from another CA"
    assert attempt(pki.path("client.crt"), pki.path("client.key")), "certificate from the configured CA"
    ok = clients(broker, "mtls-paho", V5, tls={"ca_certs": pki.path("ca.crt"), "certfile": pki.path("client.crt"),
                                                "keyfile": pki.path("client.key")})
    ok.connect()


def test_certificate_rotation_keeps_connections_and_serves_the_new_certificate(start_broker, clients, pki, tmp_path):
    # Kubernetes layout: tls.crt -> ..data/tls.crt, ..data -> ..v1; rotation swaps ..data.
    live = tmp_path / "tls"
    (live / "..v1").mkdir(parents=True)
    (live / "..v2").mkdir()
    for version, name in (("..v1", "server"), ("..v2", "server2")):
        for ext in ("crt", "key"):
            (live / version / f"tls.{ext}").write_bytes(open(pki.path(f"{name}.{ext}"), "rb").read())
    os.symlink("..v1", live / "..data")
    for ext in ("crt", "key"):
        os.symlink(f"..data/tls.{ext}", live / f"tls.{ext}")
    port = free_port()
    listener = {"bind": f"127.0.0.1:{port}", "protocol": "mqtts",
                "tls": {"cert_file": str(live / "tls.crt"), "key_file": str(live / "tls.key")}}
    broker = start_broker({"listeners": [listener]})
    assert served_cert_sha256(port, pki.path("ca.crt")) == pki.der_sha256("server.crt")

    tls = {"ca_certs": pki.path("ca.crt")}
    before = clients(broker, "before-rotation", V5, tls=tls)
    before.connect()
    assert before.subscribe("rot/#", 1) == [1]

    os.symlink("..v2", live / "..data_tmp")
    os.rename(live / "..data_tmp", live / "..data")
    # Picked up by the file watcher (polls every 2 s), no signal needed.
    wait_until(lambda: served_cert_sha256(port, pki.path("ca.crt")) == pki.der_sha256("server2.crt"),
               timeout=10, what="the rotated certificate on new handshakes")
    assert "TLS certificates reloaded" in broker.log()

    after = clients(broker, "after-rotation", V5, tls=tls)
    after.connect()
    after.publish("rot/x", b"after", 1)
    msg = before.wait_messages(1)[0]
    assert msg.payload == b"after", "the connection made before the rotation is still up"
    assert not before.disconnects


def test_a_broken_certificate_update_keeps_the_running_one(start_broker, pki, tmp_path):
    cert = tmp_path / "tls.crt"
    key = tmp_path / "tls.key"
    cert.write_bytes(open(pki.path("server.crt"), "rb").read())
    key.write_bytes(open(pki.path("server.key"), "rb").read())
    port = free_port()
    broker = start_broker({"listeners": [{"bind": f"127.0.0.1:{port}", "protocol": "mqtts",
                                          "tls": {"cert_file": str(cert), "key_file": str(key)}}]})
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    broker.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "TLS certificates not reloaded" in broker.log(), timeout=5, what="the refusal")
    assert "listeners[0].tls.cert_file" in broker.log()
    assert served_cert_sha256(port, pki.path("ca.crt")) == pki.der_sha256("server.crt")


def test_a_bad_certificate_at_start_names_the_key_and_file(launch, pki, tmp_path):
    config = tmp_path / "bad-tls.yaml"
    port = free_port()
    config.write_text(yaml.safe_dump({
        "listeners": [{"bind": f"127.0.0.1:{port}", "protocol": "mqtts",
                       "tls": {"cert_file": pki.path("server.crt"), "key_file": str(tmp_path / "missing.key")}}],
        "http": {"enabled": False},
    }))
    proc = launch(["--config", str(config)])
    assert proc.proc.wait(timeout=20) != 0
    log = proc.log()
    assert "listeners[0].tls.key_file" in log and "missing.key" in log, log


# -- WebSocket ---------------------------------------------------------------------------


def test_websocket_and_tcp_clients_talk_to_each_other(start_broker, clients):
    tcp, ws = free_port(), free_port()
    broker = start_broker({"listeners": [{"bind": f"127.0.0.1:{tcp}"},
                                         {"bind": f"127.0.0.1:{ws}", "protocol": "ws"}]})
    ws_sub = clients(broker, "ws-sub", V311, port=ws, transport="websockets")
    ws_sub.connect()
    assert ws_sub.subscribe("mix/#", 1) == [1]
    ws_v5 = clients(broker, "ws-v5", V5, port=ws, transport="websockets")
    ws_v5.connect()
    tcp_pub = clients(broker, "tcp-pub", V5, port=tcp)
    tcp_pub.connect()
    tcp_pub.publish("mix/a", b"from tcp", 1)
    ws_v5.publish("mix/b", b"from ws" * 20000, 1)  # 140 KB: larger than one default WS frame limit
    got = {m.topic: m.payload for m in ws_sub.wait_messages(2)}
    assert got == {"mix/a": b"from tcp", "mix/b": b"from ws" * 20000}


def test_websocket_path_and_subprotocol(start_broker):
    port = free_port()
    start_broker({"listeners": [{"bind": f"127.0.0.1:{port}", "protocol": "ws", "path": "/devices"}]})

    def upgrade(path: str, protocols: str) -> str:
        request = (f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                   f"Sec-WebSocket-Protocol: {protocols}\r\n\r\n")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(request.encode())
            return sock.recv(4096).decode(errors="replace")

    ok = upgrade("/devices", "mqtt")
    assert ok.startswith("HTTP/1.1 101"), ok
    assert "sec-websocket-protocol: mqtt" in ok.lower(), ok
    assert "s3pplmbitxaq9kygzzhzrbk+xoo=" in ok.lower(), "RFC 6455 accept key"
    assert upgrade("/mqtt", "mqtt").startswith("HTTP/1.1 404"), "wrong path"


def test_secure_websocket_with_paho(start_broker, clients, pki):
    port = free_port()
    broker = start_broker({"listeners": [tls_listener(pki, port, protocol="wss")]})
    c = clients(broker, "wss", V5, transport="websockets", tls={"ca_certs": pki.path("ca.crt")})
    c.connect()
    assert c.subscribe("wss/t", 1) == [1]
    c.publish("wss/t", b"secure ws", 1)
    assert c.wait_messages(1)[0].payload == b"secure ws"


# -- PROXY protocol ----------------------------------------------------------------------


def test_proxy_protocol_v1_and_v2_give_the_client_address(start_broker):
    port = free_port()
    broker = start_broker({"listeners": [{"bind": f"127.0.0.1:{port}", "proxy_protocol": True}]})
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"PROXY TCP4 203.0.113.7 10.0.0.1 4567 1883\r\n" + connect_packet("behind-lb-v1"))
        assert read_connack(sock) == b"\x20\x02\x00\x00"
    v2 = bytes.fromhex("0d0a0d0a000d0a515549540a") + bytes([0x21, 0x21]) + struct.pack(">H", 36)
    v2 += socket.inet_pton(socket.AF_INET6, "2001:db8::9") + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    v2 += struct.pack(">HH", 5555, 1883)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(v2 + connect_packet("behind-lb-v2"))
        assert read_connack(sock) == b"\x20\x02\x00\x00"
    wait_until(lambda: "peer=[2001:db8::9]:5555" in broker.log(), what="v2 address in the log")
    assert "client_id=behind-lb-v1 peer=203.0.113.7:4567" in broker.log()


def test_proxy_protocol_listener_refuses_connections_without_a_header(start_broker):
    port = free_port()
    broker = start_broker({"listeners": [{"bind": f"127.0.0.1:{port}", "proxy_protocol": True}]})
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(connect_packet("no-header"))
        assert read_connack(sock) == b"", "closed without CONNACK"
    wait_until(lambda: "connection did not start with a PROXY protocol header" in broker.log(),
               what="the refusal in the log")


def test_proxy_protocol_in_front_of_tls(start_broker, pki):
    port = free_port()
    start_broker({"listeners": [{**tls_listener(pki, port), "proxy_protocol": True}]})
    ctx = ssl.create_default_context(cafile=pki.path("ca.crt"))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"PROXY TCP4 198.51.100.4 10.0.0.1 1234 8883\r\n")
        with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
            tls.sendall(connect_packet("lb-tls"))
            assert read_connack(tls) == b"\x20\x02\x00\x00"


# -- limits ------------------------------------------------------------------------------


def test_connection_rate_limit_per_listener(start_broker):
    port = free_port()
    start_broker({"listeners": [{"bind": f"127.0.0.1:{port}", "max_connection_rate": 2}]})

    def attempt(i: int) -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            try:
                sock.sendall(connect_packet(f"rate-{i}"))
                return read_connack(sock) == b"\x20\x02\x00\x00"
            except OSError:
                return False

    time.sleep(1.2)  # the harness's readiness probe took a token
    accepted = sum(attempt(i) for i in range(6))
    assert 2 <= accepted <= 3, f"a burst of 6 admitted {accepted} (rate 2/s)"
    time.sleep(1.2)
    assert attempt(99), "admitted again once the bucket refilled"


def test_listener_max_connections(start_broker, clients):
    small, big = free_port(), free_port()
    broker = start_broker({"listeners": [{"bind": f"127.0.0.1:{small}", "max_connections": 2},
                                         {"bind": f"127.0.0.1:{big}"}]})
    first = clients(broker, "lim-1", V5, port=small)
    first.connect()
    clients(broker, "lim-2", V311, port=small).connect()
    assert clients(broker, "lim-3", V5, port=small).connect(expect=None)[0] == 0x97, "Quota exceeded"
    assert clients(broker, "lim-4", V311, port=small).connect(expect=None)[0] == 0x88, "v3: server unavailable (3)"
    clients(broker, "other-listener", V5, port=big).connect()
    first.disconnect()
    wait_until(lambda: clients(broker, "lim-5", V5, port=small).connect(expect=None)[0] == 0, timeout=5,
               what="a slot freed by the disconnect")


def test_max_publish_rate_slows_a_client_down_without_losing_messages(start_broker, clients):
    broker = start_broker({"limits": {"max_publish_rate": 20}})
    sub = clients(broker, "rate-sub", V5)
    sub.connect()
    assert sub.subscribe("burst/#", 1) == [1]
    pub = clients(broker, "rate-pub", V311)
    pub.connect()
    started = time.monotonic()
    for i in range(60):
        pub.publish("burst/t", str(i).encode(), 0, wait=False)
    got = sub.wait_messages(60, timeout=15)
    elapsed = time.monotonic() - started
    assert [m.payload for m in got] == [str(i).encode() for i in range(60)], "all delivered, in order"
    # 20 up front (one second's burst), then 20/s: the last arrives after about 2 s.
    assert elapsed >= 1.5, f"60 messages at 20/s went through in {elapsed:.2f}s"
    other = clients(broker, "rate-other", V5)
    other.connect()
    assert other.publish("burst/o", b"x", 1)[0] in (0, 0x10), "other clients are not slowed"


# -- config hot reload -------------------------------------------------------------------


def test_config_reload_applies_limits_and_keeps_listeners_until_restart(start_broker, clients):
    broker = start_broker({"limits": {"max_queued_messages": 100}})
    sub = clients(broker, "reload-sub", V311, clean_session=False)
    sub.connect()
    assert sub.subscribe("rl/#", 1) == [1]
    sub.disconnect()

    config = yaml.safe_load(broker.config_path.read_text())
    config["limits"]["max_queued_messages"] = 3
    config["listeners"] = [{"bind": f"127.0.0.1:{free_port()}"}]
    broker.config_path.write_text(yaml.safe_dump(config))
    broker.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "limits applied" in broker.log(), what="the reload")
    assert "listeners changed; these take effect after a restart" in broker.log()

    pub = clients(broker, "reload-pub", V311)
    pub.connect()  # still on the original port
    for i in range(10):
        pub.publish("rl/t", str(i).encode(), 1)
    sub2 = clients(broker, "reload-sub", V311, clean_session=False)
    sub2.connect()
    time.sleep(0.5)
    assert [m.payload for m in sub2.messages] == [b"0", b"1", b"2"], "the lowered queue limit applies"

    broker.config_path.write_text("limits:\n  max_inflight: zero\n")
    broker.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "config not reloaded" in broker.log(), what="the refusal")
    assert "max_inflight" in broker.log()
    again = clients(broker, "after-bad-reload", V5)
    again.connect()


def test_log_level_reloads_live_and_log_format_waits_for_a_restart(start_broker, clients):
    broker = start_broker({"log": {"level": "info"}})
    c = clients(broker, "chatty", V5)
    c.connect()
    c.publish("lvl/a", b"1", 1)
    config = yaml.safe_load(broker.config_path.read_text())
    config["log"] = {"level": "debug", "format": "json"}
    broker.config_path.write_text(yaml.safe_dump(config))
    broker.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "log.level applied" in broker.log(), what="the reload")
    assert "log.format changed; these take effect after a restart" in broker.log()
    c.publish("lvl/b", b"2", 1)
    wait_until(lambda: "'lvl/b'" in broker.log(), what="the PUBLISH logged at debug")
    assert "'lvl/a'" not in broker.log(), "at info PUBLISH is not logged"
    config["log"] = {"level": "info", "format": "json"}
    broker.config_path.write_text(yaml.safe_dump(config))
    broker.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: broker.log().count("log.level applied") == 2, what="the second reload")
    c.publish("lvl/c", b"3", 1)
    time.sleep(0.3)
    assert "'lvl/c'" not in broker.log(), "back at info"
    assert not broker.log().lstrip().startswith("{"), "the format stays text until a restart"


def test_mqtt_js_over_websocket(start_broker):
    port = free_port()
    start_broker({"listeners": [{"bind": f"127.0.0.1:{port}", "protocol": "ws"}]})
    js = pathlib.Path(__file__).resolve().parents[1] / "js"
    assert (js / "node_modules" / "mqtt").is_dir(), "MQTT.js missing: run .ci/run (npm ci --prefix tests/js)"
    out = subprocess.run(["node", str(js / "ws_roundtrip.mjs"), f"ws://127.0.0.1:{port}/mqtt"],
                         capture_output=True, text=True, timeout=30)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ok"], result
    assert sorted((m["topic"], m["payload"]) for m in result["received"]) == [
        ("js/v311", "from mqtt.js 3.1.1"), ("js/v5", "from mqtt.js 5")]
