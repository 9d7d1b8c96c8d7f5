"""A minimal MQTT 3.1 / 3.1.1 / 5.0 packet codec and blocking socket client.

Used where the tests must see or control individual packets (DUP flags, packet ids, PUBREL
retransmission, withheld acknowledgements, a second CONNECT, a 3.1 CONNECT with an empty
client id, ...). Everything else goes through paho-mqtt or the mosquitto clients.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

# Packet types.
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 8, 9, 10, 11, 12, 13, 14, 15

NAMES = {
    1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL", 7: "PUBCOMP",
    8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK", 12: "PINGREQ", 13: "PINGRESP",
    14: "DISCONNECT", 15: "AUTH",
}

V31, V311, V5 = 3, 4, 5

# MQTT 5.0 property identifiers and their encodings.
BYTE, U16, U32, VARINT, STR, BIN, PAIR = "byte", "u16", "u32", "varint", "str", "bin", "pair"
PROPS = {
    0x01: ("PayloadFormatIndicator", BYTE),
    0x02: ("MessageExpiryInterval", U32),
    0x03: ("ContentType", STR),
    0x08: ("ResponseTopic", STR),
    0x09: ("CorrelationData", BIN),
    0x0B: ("SubscriptionIdentifier", VARINT),
    0x11: ("SessionExpiryInterval", U32),
    0x12: ("AssignedClientIdentifier", STR),
    0x13: ("ServerKeepAlive", U16),
    0x15: ("AuthenticationMethod", STR),
    0x16: ("AuthenticationData", BIN),
    0x17: ("RequestProblemInformation", BYTE),
    0x18: ("WillDelayInterval", U32),
    0x19: ("RequestResponseInformation", BYTE),
    0x1A: ("ResponseInformation", STR),
    0x1C: ("ServerReference", STR),
    0x1F: ("ReasonString", STR),
    0x21: ("ReceiveMaximum", U16),
    0x22: ("TopicAliasMaximum", U16),
    0x23: ("TopicAlias", U16),
    0x24: ("MaximumQoS", BYTE),
    0x25: ("RetainAvailable", BYTE),
    0x26: ("UserProperty", PAIR),
    0x27: ("MaximumPacketSize", U32),
    0x28: ("WildcardSubscriptionAvailable", BYTE),
    0x29: ("SubscriptionIdentifierAvailable", BYTE),
    0x2A: ("SharedSubscriptionAvailable", BYTE),
}
PROP_IDS = {name: (pid, kind) for pid, (name, kind) in PROPS.items()}
# Properties that may appear more than once; decoded as lists.
MULTI = {"UserProperty", "SubscriptionIdentifier"}


class Closed(Exception):
    """The broker closed the connection."""


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        if n:
            byte |= 0x80
        out.append(byte)
        if not n:
            return bytes(out)


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def utf8(s: str | bytes) -> bytes:
    data = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(data)) + data


def encode_props(props: dict | None) -> bytes:
    body = bytearray()
    for name, value in (props or {}).items():
        pid, kind = PROP_IDS[name]
        values = value if name in MULTI and isinstance(value, list) else [value]
        for v in values:
            body.append(pid)
            if kind == BYTE:
                body.append(v)
            elif kind == U16:
                body += struct.pack("!H", v)
            elif kind == U32:
                body += struct.pack("!I", v)
            elif kind == VARINT:
                body += varint(v)
            elif kind in (STR, BIN):
                body += utf8(v)
            elif kind == PAIR:
                body += utf8(v[0]) + utf8(v[1])
    return varint(len(body)) + bytes(body)


def decode_props(buf: bytes, pos: int) -> tuple[dict, int]:
    length, pos = read_varint(buf, pos)
    end = pos + length
    props: dict = {}
    while pos < end:
        pid = buf[pos]
        pos += 1
        name, kind = PROPS[pid]
        if kind == BYTE:
            v = buf[pos]
            pos += 1
        elif kind == U16:
            (v,) = struct.unpack_from("!H", buf, pos)
            pos += 2
        elif kind == U32:
            (v,) = struct.unpack_from("!I", buf, pos)
            pos += 4
        elif kind == VARINT:
            v, pos = read_varint(buf, pos)
        elif kind in (STR, BIN):
            (n,) = struct.unpack_from("!H", buf, pos)
            v = bytes(buf[pos + 2 : pos + 2 + n])
            pos += 2 + n
            if kind == STR:
                v = v.decode()
        else:
            (n,) = struct.unpack_from("!H", buf, pos)
            k = bytes(buf[pos + 2 : pos + 2 + n]).decode()
            pos += 2 + n
            (n,) = struct.unpack_from("!H", buf, pos)
            val = bytes(buf[pos + 2 : pos + 2 + n]).decode()
            pos += 2 + n
            v = (k, val)
        if name in MULTI:
            props.setdefault(name, []).append(v)
        else:
            props[name] = v
    return props, end


def packet(ptype: int, flags: int, body: bytes) -> bytes:
    return bytes([(ptype << 4) | flags]) + varint(len(body)) + body


# ---------------------------------------------------------------- encoders


def connect_packet(
    client_id: str = "",
    version: int = V311,
    clean: bool = True,
    keepalive: int = 60,
    will: dict | None = None,
    username: str | None = None,
    password: bytes | None = None,
    props: dict | None = None,
    protocol_name: str | None = None,
) -> bytes:
    """`will`: {"topic", "payload", "qos", "retain", "props"}."""
    name = protocol_name or ("MQIsdp" if version == V31 else "MQTT")
    flags = 0x02 if clean else 0
    if will:
        flags |= 0x04 | (will.get("qos", 0) << 3) | (0x20 if will.get("retain") else 0)
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    body = utf8(name) + bytes([version, flags]) + struct.pack("!H", keepalive)
    if version == V5:
        body += encode_props(props)
    body += utf8(client_id)
    if will:
        if version == V5:
            body += encode_props(will.get("props"))
        body += utf8(will["topic"]) + utf8(will.get("payload", b""))
    if username is not None:
        body += utf8(username)
    if password is not None:
        body += utf8(password)
    return packet(CONNECT, 0, body)


def publish_packet(
    topic: str,
    payload: bytes | str = b"",
    qos: int = 0,
    retain: bool = False,
    dup: bool = False,
    packet_id: int | None = None,
    version: int = V311,
    props: dict | None = None,
) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    flags = (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = utf8(topic)
    if qos:
        body += struct.pack("!H", packet_id)
    if version == V5:
        body += encode_props(props)
    return packet(PUBLISH, flags, body + data)


def ack_packet(ptype: int, packet_id: int, version: int = V311, reason: int = 0) -> bytes:
    """PUBACK / PUBREC / PUBREL / PUBCOMP."""
    body = struct.pack("!H", packet_id)
    if version == V5 and reason:
        body += bytes([reason])
    return packet(ptype, 0x02 if ptype == PUBREL else 0, body)


def subscribe_packet(
    packet_id: int, filters: list[tuple[str, int]], version: int = V311, props: dict | None = None
) -> bytes:
    """`filters`: (filter, options byte); for v3 the options byte is the QoS."""
    body = struct.pack("!H", packet_id)
    if version == V5:
        body += encode_props(props)
    for flt, opts in filters:
        body += utf8(flt) + bytes([opts])
    return packet(SUBSCRIBE, 0x02, body)


def sub_options(qos: int, no_local: bool = False, retain_as_published: bool = False, retain_handling: int = 0) -> int:
    return qos | (0x04 if no_local else 0) | (0x08 if retain_as_published else 0) | (retain_handling << 4)


def disconnect_packet(version: int = V311, reason: int = 0, props: dict | None = None) -> bytes:
    if version == V5 and (reason or props):
        return packet(DISCONNECT, 0, bytes([reason]) + encode_props(props))
    return packet(DISCONNECT, 0, b"")


# ---------------------------------------------------------------- decoding


@dataclass
class Packet:
    type: int
    flags: int
    body: bytes
    version: int
    packet_id: int | None = None
    reason: int | None = None
    props: dict = field(default_factory=dict)
    session_present: bool = False
    # PUBLISH
    topic: str = ""
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    # SUBACK / UNSUBACK
    codes: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return NAMES.get(self.type, str(self.type))

    def __repr__(self) -> str:
        if self.type == PUBLISH:
            return (
                f"PUBLISH(topic={self.topic!r}, payload={self.payload[:40]!r}, qos={self.qos}, "
                f"retain={self.retain}, dup={self.dup}, id={self.packet_id}, props={self.props})"
            )
        return f"{self.name}(id={self.packet_id}, reason={self.reason}, codes={self.codes}, props={self.props})"


def decode(first: int, body: bytes, version: int) -> Packet:
    ptype, flags = first >> 4, first & 0x0F
    p = Packet(ptype, flags, body, version)
    v5 = version == V5
    if ptype == CONNACK:
        p.session_present = bool(body[0] & 1)
        p.reason = body[1]
        if v5 and len(body) > 2:
            p.props, _ = decode_props(body, 2)
    elif ptype == PUBLISH:
        p.dup, p.qos, p.retain = bool(flags & 0x08), (flags >> 1) & 3, bool(flags & 1)
        (n,) = struct.unpack_from("!H", body, 0)
        p.topic = body[2 : 2 + n].decode()
        pos = 2 + n
        if p.qos:
            (p.packet_id,) = struct.unpack_from("!H", body, pos)
            pos += 2
        if v5:
            p.props, pos = decode_props(body, pos)
        p.payload = bytes(body[pos:])
    elif ptype in (PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK, SUBACK):
        (p.packet_id,) = struct.unpack_from("!H", body, 0)
        pos = 2
        if ptype in (SUBACK, UNSUBACK):
            if v5:
                p.props, pos = decode_props(body, pos)
            p.codes = list(body[pos:])
        else:
            p.reason = 0
            if v5 and len(body) > 2:
                p.reason = body[2]
                if len(body) > 3:
                    p.props, _ = decode_props(body, 3)
    elif ptype == DISCONNECT:
        p.reason = body[0] if body else 0
        if v5 and len(body) > 1:
            p.props, _ = decode_props(body, 1)
    return p


class RawClient:
    """One TCP connection speaking raw MQTT."""

    def __init__(self, host: str, port: int, version: int = V311, timeout: float = 5.0):
        self.version = version
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.next_id = 0
        # Broker-initiated packets that arrived while waiting for an acknowledgement.
        self.deferred: list[Packet] = []

    # -- plumbing
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no packet before the deadline")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout as exc:
            raise TimeoutError("no packet before the deadline") from exc
        except ConnectionResetError as exc:
            raise Closed("connection reset") from exc
        if not chunk:
            raise Closed("connection closed by the broker")
        self.buf += chunk

    def recv(self, timeout: float = 5.0) -> Packet:
        """The next packet; TimeoutError when none arrives, Closed when the socket closes."""
        if self.deferred:
            return self.deferred.pop(0)
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 2:
                try:
                    length, pos = read_varint(self.buf, 1)
                except IndexError:
                    length, pos = None, 0
                if length is not None and len(self.buf) >= pos + length:
                    first, body = self.buf[0], self.buf[pos : pos + length]
                    self.buf = self.buf[pos + length :]
                    return decode(first, body, self.version)
            self._fill(deadline)

    def expect(self, ptype: int, timeout: float = 5.0) -> Packet:
        """The next packet of `ptype`. While waiting for an acknowledgement, deliveries the
        broker sends meanwhile (PUBLISH, PUBREL) are kept for later: MQTT does not order a
        client's acknowledgements against its deliveries (with persistence the broker
        acknowledges only once the message is on disk, but may deliver it already)."""
        if ptype in (PUBACK, PUBREC, PUBCOMP, SUBACK, UNSUBACK):
            kept: list[Packet] = []
            deadline = time.monotonic() + timeout
            try:
                while True:
                    p = self.recv(max(0.0, deadline - time.monotonic()))
                    if p.type == ptype or p.type not in (PUBLISH, PUBREL):
                        break
                    kept.append(p)
            finally:
                self.deferred = kept + self.deferred
        else:
            p = self.recv(timeout)
        assert p.type == ptype, f"expected {NAMES[ptype]}, got {p!r}"
        return p

    def recv_all(self, duration: float) -> list[Packet]:
        """Every packet arriving within `duration` seconds (stops early if the socket closes)."""
        out: list[Packet] = []
        deadline = time.monotonic() + duration
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return out
            try:
                out.append(self.recv(remaining))
            except TimeoutError:
                return out
            except Closed:
                return out

    def wait_closed(self, timeout: float = 5.0) -> list[Packet]:
        """Reads until the broker closes the socket; returns the packets seen before that.
        Fails if the connection is still open after `timeout`."""
        seen: list[Packet] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                seen.append(self.recv(max(0.0, deadline - time.monotonic())))
            except Closed:
                return seen
            except TimeoutError:
                raise AssertionError(f"connection still open after {timeout}s; packets seen: {seen}") from None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def new_id(self) -> int:
        self.next_id = self.next_id % 65535 + 1
        return self.next_id

    # -- operations
    def connect(self, client_id: str = "", clean: bool = True, keepalive: int = 60, **kw) -> Packet:
        self.send(connect_packet(client_id, self.version, clean, keepalive, **kw))
        return self.expect(CONNACK)

    def subscribe(self, *filters, props: dict | None = None, qos: int = 1) -> Packet:
        """`filters`: strings (subscribed at `qos`) or (filter, options byte) tuples."""
        pairs = [(f, qos) if isinstance(f, str) else f for f in filters]
        pid = self.new_id()
        self.send(subscribe_packet(pid, pairs, self.version, props))
        while True:
            p = self.recv()
            if p.type == SUBACK:
                assert p.packet_id == pid
                return p

    def publish(self, topic: str, payload: bytes | str = b"", qos: int = 0, retain: bool = False,
                props: dict | None = None, packet_id: int | None = None, dup: bool = False) -> Packet | None:
        """Publishes and completes the QoS flow; returns PUBACK (QoS 1) or PUBREC (QoS 2)."""
        pid = packet_id if packet_id is not None else (self.new_id() if qos else None)
        self.send(publish_packet(topic, payload, qos, retain, dup, pid, self.version, props))
        if qos == 0:
            return None
        ack = self.expect(PUBACK if qos == 1 else PUBREC)
        assert ack.packet_id == pid, ack
        if qos == 2 and (ack.reason or 0) < 0x80:
            self.send(ack_packet(PUBREL, pid, self.version))
            comp = self.expect(PUBCOMP)
            assert comp.packet_id == pid
        return ack

    def ack(self, p: Packet) -> None:
        """Acknowledges a received PUBLISH (QoS 1: PUBACK, QoS 2: PUBREC)."""
        if p.qos == 1:
            self.send(ack_packet(PUBACK, p.packet_id, self.version))
        elif p.qos == 2:
            self.send(ack_packet(PUBREC, p.packet_id, self.version))

    def disconnect(self, reason: int = 0, props: dict | None = None) -> None:
        try:
            self.send(disconnect_packet(self.version, reason, props))
        except OSError:
            pass
        self.close()

    def ping(self) -> Packet:
        self.send(packet(PINGREQ, 0, b""))
        return self.expect(PINGRESP)
