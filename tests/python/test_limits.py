"""limits.*: max_connections, max_packet_size, max_keepalive, max_inflight,
max_queued_messages / max_queued_bytes (overflow policy and the dropped counter),
max_topic_levels."""

import rawmqtt
from helpers import V311, connect_props, payloads, wait_until


def dropped_counter(clients, broker, name="drop-watch") -> "callable":
    """Returns a function reading the latest $SYS/broker/publish/messages/dropped value."""
    w = clients(broker, name)
    w.connect()
    w.subscribe("$SYS/broker/publish/messages/dropped", 0)

    def latest():
        with w.cond:
            values = [int(m.payload) for m in w.messages]
        return values[-1] if values else None

    return latest


# ---------------------------------------------------------------- connections


def test_max_connections(start_broker, clients, raw):
    broker = start_broker({"limits": {"max_connections": 2}})
    first = clients(broker, "first")
    first.connect()
    second = clients(broker, "second", V311)
    second.connect()

    v5 = raw(broker, rawmqtt.V5)
    connack = v5.connect("third-v5")
    assert connack.reason == 0x97, f"v5 CONNACK {connack.reason:#x}, expected 0x97 (quota exceeded)"
    assert connack.props.get("ReasonString"), "a refusal carries a reason string"
    v5.wait_closed(timeout=3)
    v3 = raw(broker, rawmqtt.V311)
    assert v3.connect("third-v3").reason == 3, "v3 CONNACK 3 (server unavailable)"
    v3.wait_closed(timeout=3)
    broker.wait_log(r"connection refused: connection limit reached.*client_id=third-v5")
    broker.wait_log(r"connection refused: connection limit reached.*client_id=third-v3")

    first.disconnect()
    broker.wait_log(r"client disconnected: client sent DISCONNECT client_id=first")
    again = clients(broker, "fourth")
    assert again.connect()[0] == 0, "a slot freed by a disconnect can be used again"


# ---------------------------------------------------------------- packet size


def test_max_packet_size_v3_closes_the_connection_and_logs_a_warning(start_broker, raw, clients):
    broker = start_broker({"limits": {"max_packet_size": "1KiB"}})
    watcher = clients(broker, "watcher", V311)
    watcher.connect()
    watcher.subscribe("big/#", 1)
    c = raw(broker, rawmqtt.V311)
    c.connect("big-v3")
    c.send(rawmqtt.publish_packet("big/t", b"x" * 2000, 1, packet_id=1))
    seen = c.wait_closed(timeout=3)
    assert seen == [], f"no PUBACK for an oversized packet, got {seen}"
    line = broker.wait_log(r"WARN.*big-v3")
    assert "max_packet_size" in line
    assert watcher.settle(0.3) == []
    # A packet within the limit is fine.
    ok = raw(broker, rawmqtt.V311)
    ok.connect("small-v3")
    assert ok.publish("big/t", b"x" * 900, 1).type == rawmqtt.PUBACK
    assert watcher.wait_messages(1)[0].payload == b"x" * 900


def test_max_packet_size_counts_the_whole_packet_v5(start_broker, raw):
    broker = start_broker({"limits": {"max_packet_size": 1024}})
    hdr = 1 + 2 + (2 + 1) + 2 + 1  # fixed header (2-byte length), topic "t", packet id, properties
    ok = raw(broker, rawmqtt.V5)
    assert ok.connect("at-limit").props["MaximumPacketSize"] == 1024
    pkt = rawmqtt.publish_packet("t", b"." * (1024 - hdr), 1, packet_id=1, version=rawmqtt.V5)
    assert len(pkt) == 1024
    ok.send(pkt)
    assert ok.expect(rawmqtt.PUBACK).reason < 0x80, "a 1024-byte packet is within Maximum Packet Size 1024"

    over = raw(broker, rawmqtt.V5)
    over.connect("over-limit")
    pkt = rawmqtt.publish_packet("t", b"." * (1025 - hdr), 1, packet_id=1, version=rawmqtt.V5)
    assert len(pkt) == 1025
    over.send(pkt)
    seen = over.wait_closed(timeout=2)
    assert [(p.type, p.reason) for p in seen] == [(rawmqtt.DISCONNECT, 0x95)], \
        f"a 1025-byte packet exceeds the advertised Maximum Packet Size 1024 (MQTT 5.0 §3.2.2.3.6); got {seen}"


# ---------------------------------------------------------------- keep alive


def test_max_keepalive_v3(start_broker, raw):
    broker = start_broker({"limits": {"max_keepalive": 30}})
    above = raw(broker, rawmqtt.V311)
    assert above.connect("ka-above", keepalive=60).reason == 2, "v3 keep-alive above the maximum: CONNACK 2"
    broker.wait_log(r"connection refused: .*keep-alive.*client_id=ka-above")
    within = raw(broker, rawmqtt.V311)
    assert within.connect("ka-within", keepalive=30).reason == 0
    v31 = raw(broker, rawmqtt.V31)
    assert v31.connect("ka-v31", keepalive=120).reason == 2


# ---------------------------------------------------------------- in-flight window


def test_max_inflight_limits_the_outbound_window(start_broker, raw, clients):
    broker = start_broker({"limits": {"max_inflight": 2}})
    c = raw(broker, rawmqtt.V5)
    connack = c.connect("windowed", props={"ReceiveMaximum": 10})
    assert connack.props["ReceiveMaximum"] == 2
    c.subscribe(("win/t", 1))
    pub = clients(broker, "pub")
    pub.connect()
    for i in range(4):
        pub.publish("win/t", str(i), 1)
    got = [c.expect(rawmqtt.PUBLISH), c.expect(rawmqtt.PUBLISH)]
    assert c.recv_all(0.4) == [], "window = min(client Receive Maximum 10, limits.max_inflight 2)"
    c.ack(got[0])
    got.append(c.expect(rawmqtt.PUBLISH))
    c.ack(got[1])
    got.append(c.expect(rawmqtt.PUBLISH))
    assert [p.payload for p in got] == [b"0", b"1", b"2", b"3"]


def test_v3_client_window_is_max_inflight(start_broker, raw, clients):
    broker = start_broker({"limits": {"max_inflight": 3}})
    c = raw(broker, rawmqtt.V311)
    c.connect("windowed3")
    c.subscribe(("win/t", 2))
    pub = clients(broker, "pub")
    pub.connect()
    for i in range(5):
        pub.publish("win/t", str(i), 2)
    got = [c.expect(rawmqtt.PUBLISH) for _ in range(3)]
    assert c.recv_all(0.4) == []
    c.ack(got[0])  # PUBREC: the exchange is still in flight until PUBCOMP
    assert c.expect(rawmqtt.PUBREL).packet_id == got[0].packet_id
    assert c.recv_all(0.3) == [], "a QoS 2 message counts until PUBCOMP"
    c.send(rawmqtt.ack_packet(rawmqtt.PUBCOMP, got[0].packet_id))
    assert c.expect(rawmqtt.PUBLISH).payload == b"3"


# ---------------------------------------------------------------- queues


def test_max_queued_messages_drops_new_messages_when_no_qos0_can_be_evicted(start_broker, clients):
    broker = start_broker({"limits": {"max_queued_messages": 3}, "sys": {"interval": "1s"}})
    dropped = dropped_counter(clients, broker)
    wait_until(lambda: dropped() is not None, 3, what="$SYS dropped counter")
    base = dropped()
    sub = clients(broker, "offline-sub", V311, clean_session=False)
    sub.connect()
    sub.subscribe("q/t", 1)
    sub.disconnect()
    pub = clients(broker, "pub")
    pub.connect()
    for i in range(5):
        pub.publish("q/t", f"m{i}", 1)
    sub2 = clients(broker, "offline-sub", V311, clean_session=False)
    sub2.connect()
    sub2.wait_messages(3)
    assert payloads(sub2.settle(0.4)) == [b"m0", b"m1", b"m2"], "the oldest queued messages are kept"
    wait_until(lambda: dropped() == base + 2, 3.5, what=f"dropped counter == {base + 2} (now {dropped()})")


def test_queue_overflow_evicts_the_oldest_qos0_message_first(start_broker, raw, clients):
    broker = start_broker({"limits": {"max_queued_messages": 3}, "sys": {"interval": "1s"}})
    dropped = dropped_counter(clients, broker)
    wait_until(lambda: dropped() is not None, 3, what="$SYS dropped counter")
    base = dropped()
    c = raw(broker, rawmqtt.V5)
    c.connect("slow", props={"ReceiveMaximum": 1})
    c.subscribe(("ev/t", 1))
    pub = clients(broker, "pub")
    pub.connect()
    pub.publish("ev/t", b"A", 1)
    first = c.expect(rawmqtt.PUBLISH)  # in flight, not acknowledged: the window is full
    assert first.payload == b"A"
    pub.publish("ev/t", b"C", 1)  # queue: C
    pub.publish("ev/t", b"B0", 0)  # queue: C B0 (behind C to keep the order)
    pub.publish("ev/t", b"D0", 0)  # queue: C B0 D0 (full)
    pub.publish("ev/t", b"E", 1)  # evicts B0
    pub.publish("ev/t", b"F", 1)  # evicts D0
    pub.publish("ev/t", b"G", 1)  # no QoS 0 left: G is dropped
    pub.publish("sync", b"", 1)
    got = [first]
    for _ in range(3):
        c.ack(got[-1])
        got.append(c.expect(rawmqtt.PUBLISH))
    c.ack(got[-1])
    assert c.recv_all(0.4) == []
    assert [p.payload for p in got] == [b"A", b"C", b"E", b"F"]
    wait_until(lambda: dropped() == base + 3, 3.5, what=f"dropped counter == {base + 3} (now {dropped()})")


def test_default_max_queued_messages_is_1000(broker, clients):
    sub = clients(broker, "big-queue")
    sub.connect(properties=connect_props(SessionExpiryInterval=300))
    sub.subscribe("bulk/t", 1)
    sub.disconnect()
    pub = clients(broker, "pub")
    pub.connect()
    for i in range(1010):
        pub.publish("bulk/t", str(i), 1, wait=False)
    pub.publish("sync", b"", 1)
    wait_until(lambda: len(pub.pubacks) >= 1011, 8, what="all publishes acknowledged")
    sub.connect(clean_start=False, properties=connect_props(SessionExpiryInterval=300))
    sub.wait_messages(1000, timeout=8)
    assert [int(m.payload) for m in sub.settle(0.4)] == list(range(1000))


def test_max_queued_bytes(start_broker, clients):
    broker = start_broker({"limits": {"max_queued_bytes": 100}})
    sub = clients(broker, "bytes-sub")
    sub.connect(properties=connect_props(SessionExpiryInterval=300))
    sub.subscribe("q", 1)
    sub.disconnect()
    pub = clients(broker, "pub")
    pub.connect()
    for i in range(3):
        pub.publish("q", bytes([65 + i]) * 40, 1)
    sub.connect(clean_start=False, properties=connect_props(SessionExpiryInterval=300))
    sub.wait_messages(2)
    assert payloads(sub.settle(0.4)) == [b"A" * 40, b"B" * 40], "a third 40-byte message exceeds 100 bytes"


# ---------------------------------------------------------------- topic levels


def test_max_topic_levels_for_publish(start_broker, raw, clients):
    broker = start_broker({"limits": {"max_topic_levels": 3}})
    watcher = clients(broker, "watcher")
    watcher.connect()
    watcher.subscribe("a/#", 1)
    c = raw(broker, rawmqtt.V5)
    c.connect("deep-v5")
    ack = c.publish("a/b/c/d", b"too deep", 1)
    assert ack.reason == 0x90 and ack.props.get("ReasonString"), ack
    assert c.publish("a/b/c", b"deep enough", 1).reason == 0x00
    v3 = raw(broker, rawmqtt.V311)
    v3.connect("deep-v3")
    assert v3.publish("a/b/c/d", b"too deep v3", 1).type == rawmqtt.PUBACK
    assert v3.ping().type == rawmqtt.PINGRESP
    watcher.wait_messages(1)
    assert payloads(watcher.settle(0.4)) == [b"deep enough"]


def test_max_topic_levels_for_subscribe(start_broker, raw):
    broker = start_broker({"limits": {"max_topic_levels": 3}})
    v5 = raw(broker, rawmqtt.V5)
    v5.connect("sub-v5")
    suback = v5.subscribe(("a/b/c/d", 1), ("a/b/+", 1), ("a/+/c/#", 1))
    assert suback.codes == [0x8F, 1, 0x8F]
    assert suback.props.get("ReasonString")
    v3 = raw(broker, rawmqtt.V311)
    v3.connect("sub-v3")
    assert v3.subscribe(("a/b/c/d", 1), ("a/b/+", 2)).codes == [0x80, 2]
