"""MQTT 3.1.1 with paho-mqtt: the scenarios of the Eclipse Paho interoperability suite
(interoperability/client_test.py), plus the 3.1.1 behaviour FleetMQ specifies around them."""

import time

import pytest

import rawmqtt
from helpers import V311, payloads, wait_until

TOPICS = ("TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA")
WILDTOPICS = ("TopicA/+", "+/C", "#", "/#", "/+", "+/+", "TopicA/#")


def test_basic_publish_subscribe_at_each_qos(broker, clients):
    a = clients(broker, "myclientid", V311)
    a.connect()
    a.disconnect()

    rc, present, _ = a.connect()
    assert not present
    assert a.subscribe(TOPICS[0], 2) == [2]
    a.publish(TOPICS[0], b"qos 0", 0)
    a.publish(TOPICS[0], b"qos 1", 1)
    a.publish(TOPICS[0], b"qos 2", 2)
    msgs = a.wait_messages(3)
    assert [(m.topic, m.payload, m.qos, m.retain) for m in msgs] == [
        (TOPICS[0], b"qos 0", 0, False),
        (TOPICS[0], b"qos 1", 1, False),
        (TOPICS[0], b"qos 2", 2, False),
    ]
    assert len(a.settle(0.3)) == 3, "each message must be delivered exactly once"
    a.disconnect()


@pytest.mark.parametrize("granted", [0, 1, 2])
def test_delivered_qos_is_min_of_published_and_granted(broker, clients, granted):
    sub = clients(broker, "sub", V311)
    sub.connect()
    assert sub.subscribe("qos/t", granted) == [granted]
    pub = clients(broker, "pub", V311)
    pub.connect()
    for qos in (0, 1, 2):
        pub.publish("qos/t", f"published at {qos}", qos)
    msgs = sub.wait_messages(3)
    assert sorted((m.payload.decode(), m.qos) for m in msgs) == [
        (f"published at {q}", min(q, granted)) for q in (0, 1, 2)
    ]


def test_second_connect_on_a_connection_closes_it(broker, raw):
    c = raw(broker)
    assert c.connect("myclientid").reason == 0
    c.send(rawmqtt.connect_packet("myclientid"))
    c.wait_closed(timeout=5)
    broker.wait_log(r"client disconnected: protocol error: second CONNECT.*client_id=myclientid")


def test_wrong_protocol_name_is_not_accepted(broker, raw):
    c = raw(broker)
    c.send(rawmqtt.connect_packet("myclientid", protocol_name="hj"))
    seen = c.wait_closed(timeout=5)
    assert all(not (p.type == rawmqtt.CONNACK and p.reason == 0) for p in seen), seen


def test_retained_messages_set_and_clear(broker, clients):
    a = clients(broker, "myclientid", V311)
    a.connect()
    a.publish(TOPICS[1], b"qos 0", 0, retain=True)
    a.publish(TOPICS[2], b"qos 1", 1, retain=True)
    a.publish(TOPICS[3], b"qos 2", 2, retain=True)
    # The QoS 0 publish has no acknowledgement: a round trip proves the broker has it.
    a.publish("sync", b"", 1)
    assert a.subscribe(WILDTOPICS[5], 2) == [2]
    msgs = a.wait_messages(3)
    assert sorted((m.topic, m.payload, m.qos, m.retain) for m in msgs) == sorted([
        (TOPICS[1], b"qos 0", 0, True),
        (TOPICS[2], b"qos 1", 1, True),
        (TOPICS[3], b"qos 2", 2, True),
    ])
    assert len(a.settle(0.3)) == 3
    a.disconnect()

    # Clear them with empty retained payloads.
    b = clients(broker, "myclientid", V311)
    b.connect()
    b.publish(TOPICS[1], b"", 0, retain=True)
    b.publish(TOPICS[2], b"", 1, retain=True)
    b.publish(TOPICS[3], b"", 2, retain=True)
    b.publish("sync", b"", 1)
    assert b.subscribe(WILDTOPICS[5], 2) == [2]
    assert b.settle(0.5) == [], [(m.topic, m.payload) for m in b.messages]


def test_retained_message_is_replaced_and_normal_delivery_has_retain_0(broker, clients):
    sub = clients(broker, "live", V311)
    sub.connect()
    sub.subscribe("ret/t", 1)
    pub = clients(broker, "pub", V311)
    pub.connect()
    pub.publish("ret/t", b"first", 1, retain=True)
    pub.publish("ret/t", b"second", 1, retain=True)
    live = sub.wait_messages(2)
    assert [(m.payload, m.retain) for m in live] == [(b"first", False), (b"second", False)], \
        "a subscriber that is already subscribed gets RETAIN=0 (MQTT-3.3.1-9)"

    late = clients(broker, "late", V311)
    late.connect()
    late.subscribe("ret/#", 1)
    msgs = late.wait_messages(1)
    assert [(m.topic, m.payload, m.retain) for m in late.settle(0.3)] == [("ret/t", b"second", True)]
    assert msgs[0].qos == 1


def test_offline_message_queueing_keeps_qos1_and_qos2_only(broker, clients):
    a = clients(broker, "myclientid", V311, clean_session=False)
    a.connect()
    assert a.subscribe(WILDTOPICS[5], 2) == [2]
    a.disconnect()

    b = clients(broker, "myclientid2", V311)
    b.connect()
    b.publish(TOPICS[1], b"qos 0", 0)
    b.publish(TOPICS[2], b"qos 1", 1)
    b.publish(TOPICS[3], b"qos 2", 2)
    b.disconnect()

    a2 = clients(broker, "myclientid", V311, clean_session=False)
    _, present, _ = a2.connect()
    assert present, "the clean session 0 session must be resumed"
    a2.wait_messages(2)
    msgs = a2.settle(0.5)
    assert [(m.topic, m.payload, m.qos) for m in msgs] == [
        (TOPICS[2], b"qos 1", 1),
        (TOPICS[3], b"qos 2", 2),
    ], "QoS 1/2 are queued for an offline session, QoS 0 is not"


def test_clean_session_1_discards_the_session(broker, clients):
    a = clients(broker, "cs", V311, clean_session=False)
    a.connect()
    a.subscribe("cs/t", 1)
    a.disconnect()
    b = clients(broker, "cs", V311, clean_session=True)
    _, present, _ = b.connect()
    assert not present
    b.disconnect()
    # The clean session ended at disconnect: nothing of the old subscription survives.
    c = clients(broker, "cs", V311, clean_session=False)
    _, present, _ = c.connect()
    assert not present
    pub = clients(broker, "pub", V311)
    pub.connect()
    pub.publish("cs/t", b"x", 1)
    assert c.settle(0.4) == []


def test_will_message_on_abnormal_disconnect(broker, clients):
    b = clients(broker, "myclientid2", V311, clean_session=False)
    b.connect()
    b.subscribe(TOPICS[2], 2)
    a = clients(broker, "myclientid", V311)
    a.will_set(TOPICS[2], b"client not disconnected", qos=1)
    a.connect(keepalive=2)
    a.drop()
    msg = b.wait_message(TOPICS[2], timeout=5)
    assert (msg.payload, msg.qos, msg.retain) == (b"client not disconnected", 1, False)
    assert len(b.settle(0.3)) == 1
    broker.wait_log(r"client disconnected: connection closed by client without DISCONNECT.*client_id=myclientid ")


def test_no_will_message_on_normal_disconnect(broker, clients):
    b = clients(broker, "watcher", V311)
    b.connect()
    b.subscribe("will/#", 2)
    a = clients(broker, "leaver", V311)
    a.will_set("will/leaver", b"gone", qos=1)
    a.connect()
    a.disconnect()
    broker.wait_log(r"client disconnected: client sent DISCONNECT.*client_id=leaver")
    assert b.settle(0.5) == []


def test_retained_will_message(broker, clients):
    a = clients(broker, "willret", V311)
    a.will_set("will/retained", b"offline", qos=1, retain=True)
    a.connect()
    a.drop()
    broker.wait_log(r"client disconnected: .*client_id=willret")
    b = clients(broker, "late", V311)
    b.connect()
    b.subscribe("will/#", 1)
    msg = b.wait_message("will/retained")
    assert (msg.payload, msg.retain) == (b"offline", True)


def test_zero_length_client_id_with_clean_session_0_is_rejected_with_connack_2(broker, raw):
    # MQTT-3.1.3-8: CONNACK return code 2 (identifier rejected), then close.
    c = raw(broker)
    c.send(rawmqtt.connect_packet("", clean=False))
    try:
        connack = c.expect(rawmqtt.CONNACK)
    except rawmqtt.Closed:
        pytest.fail("broker closed the connection without CONNACK 2 (identifier rejected)")
    assert connack.reason == 2
    c.wait_closed(timeout=3)
    broker.wait_log(r"connection refused: client identifier not valid.*protocol=\"3.1.1\"")


def test_zero_length_client_id_with_clean_session_1_is_accepted(broker, clients):
    ok = clients(broker, "", V311, clean_session=True)
    _, present, _ = ok.connect(expect=0)
    assert not present
    ok.subscribe("zero/t", 1)
    ok.publish("zero/t", b"hello", 1)
    assert ok.wait_messages(1)[0].payload == b"hello"
    ok.disconnect()


def test_overlapping_subscriptions_deliver_once_at_highest_qos(broker, clients):
    a = clients(broker, "myclientid", V311)
    a.connect()
    assert a.subscribe([(WILDTOPICS[6], 2), (WILDTOPICS[0], 1)]) == [2, 1]
    a.publish(TOPICS[3], b"overlapping topic filters", 2)
    a.wait_messages(1)
    msgs = a.settle(0.5)
    assert [(m.topic, m.qos) for m in msgs] == [(TOPICS[3], 2)]


def test_keepalive_timeout_publishes_will_and_pings_keep_alive(broker, clients, raw):
    watcher = clients(broker, "myclientid2", V311)
    watcher.connect(keepalive=0)
    watcher.subscribe(TOPICS[4], 2)

    silent = raw(broker)
    assert silent.connect("myclientid", keepalive=2,
                          will={"topic": TOPICS[4], "payload": b"keepalive expiry", "qos": 1}).reason == 0
    pinger = raw(broker)
    assert pinger.connect("pinger", keepalive=2).reason == 0
    start = time.monotonic()
    while time.monotonic() - start < 1.8:
        pinger.ping()
        time.sleep(0.6)
    assert watcher.messages == [], "the will must not be published before the keep-alive expires"
    msg = watcher.wait_message(TOPICS[4], timeout=4)
    elapsed = time.monotonic() - start
    assert msg.payload == b"keepalive expiry"
    assert elapsed <= 4.5, f"broker took {elapsed:.1f}s to notice a 2 s keep-alive"
    silent.wait_closed(timeout=1)
    # The client that kept pinging is still connected.
    pinger.ping()
    broker.wait_log(r"client disconnected: keep-alive timeout.*client_id=myclientid ")


def test_redelivery_on_reconnect_with_paho(broker, clients):
    b = clients(broker, "myclientid2", V311, clean_session=False, manual_ack=True)
    b.connect()
    b.subscribe(WILDTOPICS[6], 2)
    pub = clients(broker, "pub", V311)
    pub.connect()
    pub.publish(TOPICS[1], b"one", 1)
    pub.publish(TOPICS[3], b"two", 1)
    first = b.wait_messages(2)
    assert [(m.payload, m.dup) for m in first] == [(b"one", False), (b"two", False)]
    b.drop()  # never acknowledged

    b2 = clients(broker, "myclientid2", V311, clean_session=False)
    _, present, _ = b2.connect()
    assert present
    again = b2.wait_messages(2)
    assert [(m.topic, m.payload, m.qos, m.dup, m.mid) for m in again] == [
        (m.topic, m.payload, 1, True, m.mid) for m in first
    ], "unacknowledged QoS 1 messages are re-sent with DUP=1 and their packet ids, in order"
    assert len(b2.settle(0.4)) == 2, "acknowledged after the resend: not sent a third time"


def test_subscribe_failure_returns_0x80(start_broker, clients):
    broker = start_broker({"limits": {"max_topic_levels": 4}})
    a = clients(broker, "myclientid", V311)
    a.connect()
    assert a.subscribe("nosubscribe/a/b/c/d", 2) == [0x80]
    assert a.subscribe([("ok/t", 1), ("deep/a/b/c/d", 2)]) == [1, 0x80]
    broker.wait_log(r"subscription to 'nosubscribe/a/b/c/d' refused")
    # The connection is still usable and the valid subscription works.
    a.publish("ok/t", b"x", 1)
    assert a.wait_messages(1)[0].topic == "ok/t"


def test_dollar_topics_do_not_match_leading_wildcards(broker, clients):
    b = clients(broker, "myclientid2", V311)
    b.connect(keepalive=0)
    b.subscribe([(WILDTOPICS[5], 2), ("#", 2), ("+/+/+", 2)])
    explicit = clients(broker, "explicit", V311)
    explicit.connect()
    explicit.subscribe("$" + TOPICS[1], 1)
    b.publish("$" + TOPICS[1], b"", 1)
    assert explicit.wait_message("$" + TOPICS[1]).payload == b""
    b.publish(TOPICS[1], b"plain", 1)
    b.wait_messages(1)
    assert [m.topic for m in b.settle(0.3)] == [TOPICS[1]], "only the non-$ topic may match '#' and '+/+'"


def test_unsubscribe(broker, clients):
    b = clients(broker, "myclientid2", V311)
    b.connect()
    for t in TOPICS[:3]:
        b.subscribe(t, 2)
    b.unsubscribe(TOPICS[0])
    a = clients(broker, "myclientid", V311)
    a.connect()
    a.publish(TOPICS[0], b"topic 0 - unsubscribed", 1)
    a.publish(TOPICS[1], b"topic 1", 1)
    a.publish(TOPICS[2], b"topic 2", 1)
    b.wait_messages(2)
    assert payloads(b.settle(0.3)) == [b"topic 1", b"topic 2"]


def test_takeover_closes_old_connection_resumes_session_and_publishes_will(broker, clients, raw):
    watcher = clients(broker, "watcher", V311)
    watcher.connect()
    watcher.subscribe("will/#", 1)
    first = raw(broker)
    assert first.connect("dup-id", clean=False, will={"topic": "will/dup-id", "payload": b"taken over"}).reason == 0
    first.subscribe("take/t", qos=1)

    second = raw(broker)
    connack = second.connect("dup-id", clean=False)
    assert connack.reason == 0 and connack.session_present
    first.wait_closed(timeout=3)
    assert watcher.wait_message("will/dup-id").payload == b"taken over"
    # The subscription made on the first connection belongs to the resumed session.
    pub = clients(broker, "pub", V311)
    pub.connect()
    pub.publish("take/t", b"to the new connection", 1)
    p = second.expect(rawmqtt.PUBLISH)
    assert (p.topic, p.payload) == ("take/t", b"to the new connection")
    broker.wait_log(r"session taken over by a new connection.*client_id=dup-id|client_id=dup-id.*session taken over")


def test_takeover_with_clean_session_replaces_the_session(broker, clients, raw):
    first = raw(broker)
    assert first.connect("dup-id", clean=False).reason == 0
    first.subscribe("take/t", qos=1)
    second = raw(broker)
    connack = second.connect("dup-id", clean=True)
    assert connack.reason == 0 and not connack.session_present
    first.wait_closed(timeout=3)
    pub = clients(broker, "pub", V311)
    pub.connect()
    pub.publish("take/t", b"nobody", 1)
    assert second.recv_all(0.4) == [], "the old session's subscription must be gone"
    wait_until(lambda: "session taken over" in broker.log(), what="takeover log line")


def test_persistent_session_expiry_ends_v3_sessions(start_broker, clients):
    broker = start_broker({"sessions": {"persistent_session_expiry": "1s"}})
    a = clients(broker, "expiring", V311, clean_session=False)
    a.connect()
    a.subscribe("exp/t", 1)
    a.disconnect()
    b = clients(broker, "expiring", V311, clean_session=False)
    _, present, _ = b.connect()
    assert present, "within sessions.persistent_session_expiry the session is kept"
    b.disconnect()
    time.sleep(1.6)
    c = clients(broker, "expiring", V311, clean_session=False)
    _, present, _ = c.connect()
    assert not present, "after sessions.persistent_session_expiry the session is gone"


@pytest.mark.parametrize("flt,matching", [
    ("sport/tennis/+", ["sport/tennis/player1", "sport/tennis/"]),
    ("sport/#", ["sport", "sport/tennis", "sport/tennis/player1", "sport/tennis/player1/ranking", "sport/tennis/"]),
    ("+/+", ["/finance", "sport/tennis"]),
    ("/+", ["/finance"]),
    ("+", ["sport"]),
    ("#", ["sport", "/finance", "sport/tennis", "sport/tennis/player1", "sport/tennis/player1/ranking",
           "sport/tennis/"]),
    ("sport/+/player1", ["sport/tennis/player1"]),
])
def test_wildcard_matching(broker, clients, flt, matching):
    topics = ["sport", "/finance", "sport/tennis", "sport/tennis/player1", "sport/tennis/player1/ranking",
              "sport/tennis/", "$SYS/sport"]
    sub = clients(broker, "matcher", V311)
    sub.connect()
    sub.subscribe(flt, 1)
    pub = clients(broker, "pub", V311)
    pub.connect()
    for t in topics:
        pub.publish(t, t.encode(), 1)  # acknowledged after routing
    sub.wait_messages(len(matching))
    assert sorted(m.topic for m in sub.settle(0.3)) == sorted(matching)


@pytest.mark.parametrize("flt", ["a/#/b", "a#", "a/b+", "+a/b", "", "$share/g", "$share//a", "$share/g/"])
def test_malformed_filters_are_refused_with_0x80(broker, raw, flt):
    c = raw(broker)
    c.connect("bad-filters")
    assert c.subscribe((flt, 1), ("good/t", 1)).codes == [0x80, 1]
    assert c.ping().type == rawmqtt.PINGRESP
