"""`$delayed/<seconds>/<topic>`: the message is published on <topic> after the delay
(at most 4294967 s). Bad forms: v5 PUBACK 0x90 with a reason string; v3 acknowledged and
dropped."""

import time

import pytest

import rawmqtt
from helpers import V5, V311, mosquitto_pub


def test_delayed_publish_is_delivered_after_the_delay(broker, clients):
    sub = clients(broker, "sub")
    sub.connect()
    sub.subscribe("later/t", 1)
    pub = clients(broker, "pub")
    pub.connect()
    start = time.monotonic()
    rc, _ = pub.publish("$delayed/2/later/t", b"two seconds later", 1)
    assert rc < 0x80, f"PUBACK reason {rc:#x}"
    time.sleep(1.5)
    assert sub.messages == [], "delivered before its delay"
    m = sub.wait_message("later/t", timeout=3)
    elapsed = time.monotonic() - start
    assert 1.8 <= elapsed <= 3.5, f"delivered after {elapsed:.2f}s"
    assert (m.topic, m.payload, m.qos) == ("later/t", b"two seconds later", 1)
    assert len(sub.settle(0.3)) == 1


def test_delayed_publish_with_zero_delay_and_v3_publisher(broker, clients):
    sub = clients(broker, "sub", V311)
    sub.connect()
    sub.subscribe("soon/#", 2)
    r = mosquitto_pub(broker.host, broker.port, "$delayed/0/soon/now", "zero delay", version="mqttv311", qos=1)
    assert r.returncode == 0, r.stderr
    r = mosquitto_pub(broker.host, broker.port, "$delayed/1/soon/later", "one second", version="mqttv311", qos=2)
    assert r.returncode == 0, r.stderr
    first = sub.wait_message("soon/now", timeout=1.5)
    assert first.payload == b"zero delay"
    second = sub.wait_message("soon/later", timeout=3)
    assert (second.payload, second.qos) == (b"one second", 2)


def test_maximum_delay_is_accepted(broker, clients):
    pub = clients(broker, "pub")
    pub.connect()
    rc, p = pub.publish("$delayed/4294967/far/future", b"x", 1)
    assert rc < 0x80, f"the maximum delay 4294967 s must be accepted, got {rc:#x} {p}"


BAD_FORMS = [
    "$delayed/abc/t",
    "$delayed/-1/t",
    "$delayed/1.5/t",
    "$delayed/4294968/t",
    "$delayed/99999999999999999999/t",
    "$delayed/10",
    "$delayed//t",
    "$delayed/5/",
    "$delayed/5/$SYS/broker/x",
]


@pytest.mark.parametrize("topic", BAD_FORMS)
def test_bad_delayed_forms_get_puback_0x90_with_reason_string_in_v5(broker, raw, topic):
    c = raw(broker, rawmqtt.V5)
    c.connect("bad-delay")
    ack = c.publish(topic, b"x", 1)
    assert ack.reason == 0x90, f"{topic}: PUBACK reason {ack.reason:#x}"
    assert ack.props.get("ReasonString"), f"{topic}: no reason string"
    assert c.ping().type == rawmqtt.PINGRESP, "the connection stays open"


def test_bad_delayed_forms_are_acknowledged_and_dropped_in_v3(broker, raw, clients):
    watcher = clients(broker, "watcher", V5)
    watcher.connect()
    watcher.subscribe([("t", 1), ("$delayed/#", 1), ("#", 1)])
    c = raw(broker, rawmqtt.V311)
    c.connect("bad-delay-v3")
    for i, topic in enumerate(["$delayed/abc/t", "$delayed/4294968/t", "$delayed/10"]):
        ack = c.publish(topic, b"x", 1 + i % 2)
        assert ack.type in (rawmqtt.PUBACK, rawmqtt.PUBREC)
    assert c.ping().type == rawmqtt.PINGRESP, "the v3 connection stays open"
    assert watcher.settle(0.5) == [], [(m.topic, m.payload) for m in watcher.messages]
