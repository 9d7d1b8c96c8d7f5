"""`$SYS/broker/...` status topics (retained, published every sys.interval), and the rule that
clients may not publish to `$SYS`."""

import re
import time

import pytest

import rawmqtt
from helpers import V311, wait_until

SYS_CONFIG = {"sys": {"interval": "1s"}}

REQUIRED = [
    "version", "uptime", "clients/connected", "clients/total", "clients/disconnected", "clients/maximum",
    "messages/received", "messages/sent", "publish/messages/received", "publish/messages/sent",
    "publish/messages/dropped", "bytes/received", "bytes/sent", "subscriptions/count",
    "retained messages/count",
]


class SysView:
    """Latest value of every $SYS/broker/... topic seen by a v5 client."""

    def __init__(self, clients, broker, client_id="sys-watcher"):
        self.client = clients(broker, client_id)
        self.client.connect()
        assert self.client.subscribe("$SYS/broker/#", 0) == [0]

    def values(self) -> dict:
        with self.client.cond:
            return {m.topic[len("$SYS/broker/"):]: m.payload.decode() for m in self.client.messages}

    def wait(self, predicate, timeout=3.5, what="$SYS values"):
        return wait_until(lambda: predicate(self.values()), timeout, what=what)

    def value(self, key) -> str:
        return self.values()[key]


@pytest.fixture
def sys_broker(start_broker):
    return start_broker(SYS_CONFIG)


def test_sys_topics_are_retained_and_well_formed(sys_broker, clients):
    view = SysView(clients, sys_broker)
    view.wait(lambda v: all(k in v for k in REQUIRED), what=f"all of {REQUIRED}")
    first = {}
    for m in view.client.messages:
        first.setdefault(m.topic, m)
    assert all(first[f"$SYS/broker/{k}"].retain for k in REQUIRED), "delivered from the retained store on subscribe"
    v = view.values()
    assert v["version"].startswith("fleetmq"), v["version"]
    assert re.fullmatch(r"\d+ seconds", v["uptime"]), v["uptime"]
    for key in REQUIRED[2:]:
        assert re.fullmatch(r"\d+", v[key]), f"{key} = {v[key]!r}"


def test_sys_values_follow_activity(sys_broker, clients):
    view = SysView(clients, sys_broker)
    # Baseline from a periodic update (the retained values from start-up predate the first
    # $SYS messages themselves).
    wait_until(lambda: sum(m.topic == "$SYS/broker/retained messages/count" for m in view.client.messages) >= 2,
               timeout=3.5, what="a second $SYS update")
    base_received = int(view.value("messages/received"))
    base_retained = int(view.value("retained messages/count"))
    base_uptime = int(view.value("uptime").split()[0])

    pub = clients(sys_broker, "pub")
    pub.connect()
    keeper = clients(sys_broker, "keeper", V311, clean_session=False)
    keeper.connect()  # three clients connected at once
    keeper.subscribe("a/b", 1)
    keeper.subscribe("c/#", 1)
    keeper.disconnect()  # session kept: counted as disconnected
    for i in range(5):
        pub.publish(f"c/{i}", b"x", 1)
    pub.publish("ret/1", b"r", 1, retain=True)
    pub.publish("ret/2", b"r", 1, retain=True)

    # watcher + pub connected, keeper disconnected but its session exists.
    view.wait(lambda v: v["clients/connected"] == "2", what="clients/connected == 2")
    view.wait(lambda v: v["clients/disconnected"] == "1", what="clients/disconnected == 1")
    view.wait(lambda v: v["clients/total"] == "3", what="clients/total == 3")
    view.wait(lambda v: int(v["clients/maximum"]) >= 3, what="clients/maximum >= 3")
    view.wait(lambda v: v["subscriptions/count"] == "3", what="subscriptions/count == 3 (1 + 2)")
    view.wait(lambda v: int(v["messages/received"]) >= base_received + 7, what="messages/received grew by 7")
    view.wait(lambda v: int(v["publish/messages/received"]) >= base_received + 7)
    view.wait(lambda v: int(v["retained messages/count"]) == base_retained + 2, what="2 more retained messages")
    view.wait(lambda v: int(v["uptime"].split()[0]) > base_uptime, what="uptime increases")
    v = view.values()
    # The $SYS deliveries to the watcher and the queued deliveries to keeper count as sent.
    assert int(v["messages/sent"]) > 0 and int(v["publish/messages/sent"]) > 0
    assert int(v["bytes/received"]) > 0 and int(v["bytes/sent"]) > 0


def test_leading_wildcards_do_not_receive_sys_topics(sys_broker, clients):
    c = clients(sys_broker, "wild")
    c.connect()
    c.subscribe([("#", 0), ("+/broker/#", 0), ("+/+/+", 0)])
    SysView(clients, sys_broker).wait(lambda v: "uptime" in v)
    time.sleep(1.2)  # at least one more $SYS tick
    assert [m.topic for m in c.messages if m.topic.startswith("$")] == []


def test_v5_client_may_not_publish_to_sys(sys_broker, raw):
    c = raw(sys_broker, rawmqtt.V5)
    c.connect("intruder")
    ack = c.publish("$SYS/broker/version", b"fake", 1)
    assert ack.reason == 0x87, f"PUBACK reason {ack.reason:#x}"
    assert ack.props.get("ReasonString")
    c.send(rawmqtt.publish_packet("$SYS/custom", b"fake", 2, packet_id=50, version=rawmqtt.V5))
    rec = c.expect(rawmqtt.PUBREC)
    assert rec.reason == 0x87


def test_v3_publish_to_sys_is_acknowledged_and_dropped(sys_broker, raw, clients):
    view = SysView(clients, sys_broker)
    view.wait(lambda v: "version" in v)
    c = raw(sys_broker, rawmqtt.V311)
    c.connect("intruder3")
    assert c.publish("$SYS/broker/version", b"fake", 1, retain=True).type == rawmqtt.PUBACK
    assert c.ping().type == rawmqtt.PINGRESP
    time.sleep(0.3)
    assert "fake" not in [m.payload.decode() for m in view.client.messages]
    late = clients(sys_broker, "late")
    late.connect()
    late.subscribe("$SYS/broker/version", 0)
    assert late.wait_messages(1)[0].payload.startswith(b"fleetmq")


def test_sys_version_with_mosquitto_sub(sys_broker, mosq_sub):
    sub = mosq_sub(sys_broker, ["$SYS/broker/version"], count=1, fmt="%t %p %r")
    assert sub.wait_exit() == 0
    (line,) = sub.output()
    assert re.fullmatch(r"\$SYS/broker/version fleetmq \S+ 1", line), line


def test_sys_interval_0s_disables_sys_topics(broker, clients):
    c = clients(broker, "nosys")
    c.connect()
    c.subscribe("$SYS/#", 0)
    assert c.settle(1.3) == []
