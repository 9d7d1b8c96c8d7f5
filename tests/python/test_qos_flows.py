"""QoS 1/2 flows at packet level (raw client): retransmission on reconnect with DUP and the
original packet ids in order, PUBREL retransmission, exactly-once inbound QoS 2 by packet id
(also across a reconnect), ordering."""

import pytest

from rawmqtt import PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, V5, V311, ack_packet, publish_packet

VERSIONS = [pytest.param(V311, id="v311"), pytest.param(V5, id="v5")]


def persistent(raw, broker, version, client_id):
    c = raw(broker, version)
    extra = {"props": {"SessionExpiryInterval": 300}} if version == V5 else {}
    return c, c.connect(client_id, clean=False, **extra)


@pytest.mark.parametrize("version", VERSIONS)
def test_unacknowledged_messages_are_resent_with_dup_same_ids_in_order(broker, raw, clients, version):
    sub, _ = persistent(raw, broker, version, "resend")
    sub.subscribe(("redeliver/#", 2))
    pub = clients(broker, "pub")
    pub.connect()
    pub.publish("redeliver/a", b"one", 1)
    pub.publish("redeliver/b", b"two", 2)
    pub.publish("redeliver/a", b"three", 1)
    first = [sub.expect(PUBLISH) for _ in range(3)]
    assert [(p.payload, p.qos, p.dup) for p in first] == [(b"one", 1, False), (b"two", 2, False), (b"three", 1, False)]
    sub.close()  # nothing acknowledged

    sub2, connack = persistent(raw, broker, version, "resend")
    assert connack.session_present
    again = [sub2.expect(PUBLISH) for _ in range(3)]
    assert [(p.topic, p.payload, p.qos, p.packet_id, p.dup) for p in again] == [
        (p.topic, p.payload, p.qos, p.packet_id, True) for p in first
    ]
    # Complete every flow; nothing is sent a third time.
    for p in again:
        sub2.ack(p)
    rel = sub2.expect(PUBREL)
    assert rel.packet_id == again[1].packet_id
    sub2.send(ack_packet(PUBCOMP, rel.packet_id, version))
    assert sub2.recv_all(0.4) == []
    sub2.close()
    sub3, connack = persistent(raw, broker, version, "resend")
    assert connack.session_present
    assert sub3.recv_all(0.4) == [], "completed flows must not be resent"


@pytest.mark.parametrize("version", VERSIONS)
def test_pubrel_is_resent_after_reconnect_when_pubrec_arrived(broker, raw, clients, version):
    sub, _ = persistent(raw, broker, version, "half-done")
    sub.subscribe(("q2/t", 2))
    pub = clients(broker, "pub")
    pub.connect()
    pub.publish("q2/t", b"exactly once", 2)
    p = sub.expect(PUBLISH)
    assert p.qos == 2
    sub.ack(p)  # PUBREC
    rel = sub.expect(PUBREL)
    assert rel.packet_id == p.packet_id
    sub.close()  # no PUBCOMP

    sub2, connack = persistent(raw, broker, version, "half-done")
    assert connack.session_present
    seen = sub2.recv_all(0.6)
    assert [(x.type, x.packet_id) for x in seen] == [(PUBREL, p.packet_id)], \
        f"expected only the PUBREL to be resent, got {seen}"
    sub2.send(ack_packet(PUBCOMP, p.packet_id, version))
    assert sub2.recv_all(0.3) == []


@pytest.mark.parametrize("version", VERSIONS)
def test_inbound_qos2_is_exactly_once_by_packet_id_across_reconnect(broker, raw, clients, version):
    watcher = clients(broker, "watcher")
    watcher.connect()
    watcher.subscribe("once/t", 2)

    c, _ = persistent(raw, broker, version, "q2-publisher")
    c.send(publish_packet("once/t", b"payload", 2, packet_id=7, version=version))
    assert c.expect(PUBREC).packet_id == 7
    # Retransmission on the same connection.
    c.send(publish_packet("once/t", b"payload", 2, dup=True, packet_id=7, version=version))
    assert c.expect(PUBREC).packet_id == 7
    c.close()

    c2, connack = persistent(raw, broker, version, "q2-publisher")
    assert connack.session_present
    c2.send(publish_packet("once/t", b"payload", 2, dup=True, packet_id=7, version=version))
    assert c2.expect(PUBREC).packet_id == 7
    c2.send(ack_packet(PUBREL, 7, version))
    comp = c2.expect(PUBCOMP)
    assert comp.packet_id == 7 and (comp.reason or 0) == 0

    watcher.wait_messages(1)
    assert [m.payload for m in watcher.settle(0.4)] == [b"payload"], "QoS 2 must be delivered exactly once"
    # After PUBCOMP the id is free again: a new message with id 7 is a new message.
    c2.send(publish_packet("once/t", b"second", 2, packet_id=7, version=version))
    assert c2.expect(PUBREC).packet_id == 7
    c2.send(ack_packet(PUBREL, 7, version))
    c2.expect(PUBCOMP)
    watcher.wait_messages(2)
    assert [m.payload for m in watcher.settle(0.2)] == [b"payload", b"second"]


def test_qos1_puback_and_qos2_handshake_from_the_broker(broker, raw):
    c = raw(broker)
    c.connect("flows")
    c.subscribe(("flow/t", 2))
    ack = c.publish("flow/t", b"q1", 1)
    assert ack.type == PUBACK
    q1 = c.expect(PUBLISH)
    assert (q1.qos, q1.payload) == (1, b"q1")
    c.ack(q1)
    c.send(publish_packet("flow/t", b"q2", 2, packet_id=99))
    assert c.expect(PUBREC).packet_id == 99
    c.send(ack_packet(PUBREL, 99))
    # The broker may forward the message before or after it completes the inbound flow.
    got = [c.recv(), c.recv()]
    comp = next(p for p in got if p.type == PUBCOMP)
    q2 = next(p for p in got if p.type == PUBLISH)
    assert comp.packet_id == 99
    assert (q2.qos, q2.payload) == (2, b"q2")
    c.ack(q2)
    assert c.expect(PUBREL).packet_id == q2.packet_id
    c.send(ack_packet(PUBCOMP, q2.packet_id))
    assert c.recv_all(0.3) == []


def test_many_messages_arrive_complete_and_in_order(broker, clients):
    sub = clients(broker, "sub")
    sub.connect()
    sub.subscribe("order/t", 1)
    pub = clients(broker, "pub")
    pub.connect()
    for i in range(300):
        pub.publish("order/t", str(i), 1, wait=False)
    msgs = sub.wait_messages(300, timeout=8)
    assert [int(m.payload) for m in msgs] == list(range(300))
