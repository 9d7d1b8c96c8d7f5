"""MQTT 3.1 (protocol name "MQIsdp", level 3) with paho-mqtt's MQTTv31 mode and raw packets:
FleetMQ accepts 3.1 clients next to 3.1.1 and 5.0 ones."""

import pytest

import rawmqtt
from helpers import V5, V31, payloads


def test_paho_v31_round_trip_at_each_qos(broker, clients):
    c = clients(broker, "paho31", V31)
    rc, present, _ = c.connect()
    assert rc == 0 and not present
    assert c.subscribe("v31/t", 2) == [2]
    for qos in (0, 1, 2):
        c.publish("v31/t", f"qos {qos}", qos)
    msgs = c.wait_messages(3)
    assert [(m.payload, m.qos) for m in msgs] == [(b"qos 0", 0), (b"qos 1", 1), (b"qos 2", 2)]
    c.disconnect()
    broker.wait_log(r'client connected client_id=paho31 .*protocol="3.1"')
    broker.wait_log(r'client disconnected: client sent DISCONNECT client_id=paho31 .*protocol="3.1"')


def test_v31_and_v5_clients_talk_to_each_other(broker, clients):
    old = clients(broker, "old", V31)
    old.connect()
    old.subscribe("mixed/from5", 1)
    new = clients(broker, "new", V5)
    new.connect()
    new.subscribe("mixed/from31", 1)
    old.publish("mixed/from31", b"hello from 3.1", 1)
    new.publish("mixed/from5", b"hello from 5.0", 1)
    assert new.wait_messages(1)[0].payload == b"hello from 3.1"
    assert old.wait_messages(1)[0].payload == b"hello from 5.0"


def test_v31_retained_and_will(broker, clients):
    watcher = clients(broker, "watcher31", V31)
    watcher.connect()
    watcher.subscribe("w31/#", 1)
    dying = clients(broker, "dying31", V31)
    dying.will_set("w31/will", b"3.1 client lost", 1)
    dying.connect()
    dying.publish("w31/ret", b"retained by 3.1", 1, retain=True)
    watcher.wait_message("w31/ret")
    dying.drop()
    assert watcher.wait_message("w31/will").payload == b"3.1 client lost"
    late = clients(broker, "late31", V31)
    late.connect()
    late.subscribe("w31/ret", 1)
    m = late.wait_messages(1)[0]
    assert (m.payload, m.retain) == (b"retained by 3.1", True)


def test_v31_persistent_session_queues_qos1_and_2(broker, clients):
    c = clients(broker, "persist31", V31, clean_session=False)
    c.connect()
    c.subscribe("p31/t", 2)
    c.disconnect()
    pub = clients(broker, "pub31", V31)
    pub.connect()
    for qos in (0, 1, 2):
        pub.publish("p31/t", f"qos {qos}", qos)
    c2 = clients(broker, "persist31", V31, clean_session=False)
    _, present, _ = c2.connect()
    assert present
    c2.wait_messages(2)
    assert payloads(c2.settle(0.4)) == [b"qos 1", b"qos 2"]


@pytest.mark.parametrize("clean", [True, False])
def test_v31_empty_client_id_is_rejected_with_connack_2(broker, raw, clean):
    c = raw(broker, rawmqtt.V31)
    c.send(rawmqtt.connect_packet("", rawmqtt.V31, clean=clean))
    try:
        connack = c.expect(rawmqtt.CONNACK)
    except rawmqtt.Closed:
        pytest.fail("broker closed the 3.1 connection without CONNACK 2 (identifier rejected)")
    assert connack.reason == 2
    c.wait_closed(timeout=3)
    broker.wait_log(r'connection refused: client identifier not valid.*protocol="3.1"')


def test_v31_raw_connect_is_answered_with_a_3_1_connack(broker, raw):
    c = raw(broker, rawmqtt.V31)
    connack = c.connect("raw31", clean=True)
    assert connack.reason == 0 and not connack.session_present
    assert c.ping().type == rawmqtt.PINGRESP
    c.subscribe(("raw31/t", 1))
    c.publish("raw31/t", b"x", 1)
    p = c.expect(rawmqtt.PUBLISH)
    assert (p.topic, p.payload, p.qos) == ("raw31/t", b"x", 1)
