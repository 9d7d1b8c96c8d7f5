"""MQTT 5.0 with paho-mqtt: the scenarios of the Eclipse Paho interoperability suite
(interoperability/client_test5.py) and the v5 features FleetMQ specifies. Where a reason code
of a broker DISCONNECT or a single packet must be inspected, the raw client is used (paho 2.1
does not report DISCONNECT reason codes that come without properties)."""

import time

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.subscribeoptions import SubscribeOptions

import rawmqtt
from helpers import V5, connect_props, payloads, prop, props, publish_props, wait_until

TOPICS = ("TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA")
WILDTOPICS = ("TopicA/+", "+/C", "#", "/#", "/+", "+/+", "TopicA/#")
UNLIMITED = 0xFFFFFFFF


def opts(qos, **kw):
    return SubscribeOptions(qos=qos, **kw)


# ---------------------------------------------------------------- basics


def test_basic_and_connack_properties(broker, clients):
    a = clients(broker, "myclientid")
    a.connect()
    a.disconnect()

    rc, present, p = a.connect()
    assert rc == 0 and not present
    assert prop(p, "ReceiveMaximum") == 64, "Receive Maximum = limits.max_inflight (default 64)"
    assert prop(p, "MaximumPacketSize") == 1024 * 1024, "Maximum Packet Size = limits.max_packet_size (1 MiB)"
    assert prop(p, "TopicAliasMaximum") == 64, "Topic Alias Maximum = limits.max_topic_alias"
    assert prop(p, "MaximumQoS") is None, "QoS 2 is supported, so Maximum QoS must be absent"
    assert prop(p, "RetainAvailable", 1) == 1
    assert prop(p, "SharedSubscriptionAvailable", 1) == 1
    assert prop(p, "SubscriptionIdentifierAvailable", 1) == 1
    assert prop(p, "WildcardSubscriptionAvailable", 1) == 1
    assert a.subscribe(TOPICS[0], opts(2)) == [2]
    a.publish(TOPICS[0], b"qos 0", 0)
    assert a.publish(TOPICS[0], b"qos 1", 1)[0] == 0x00
    assert a.publish(TOPICS[0], b"qos 2", 2)[0] == 0x00
    msgs = a.wait_messages(3)
    assert [(m.payload, m.qos) for m in msgs] == [(b"qos 0", 0), (b"qos 1", 1), (b"qos 2", 2)]
    assert len(a.settle(0.3)) == 3
    a.disconnect()


def test_second_connect_on_a_v5_connection_closes_it(broker, raw):
    c = raw(broker, rawmqtt.V5)
    assert c.connect("myclientid").reason == 0
    c.send(rawmqtt.connect_packet("myclientid", rawmqtt.V5))
    seen = c.wait_closed(timeout=5)
    assert all(p.type == rawmqtt.DISCONNECT and p.reason >= 0x80 for p in seen), seen


def test_puback_0x10_when_no_subscriber_matched(broker, clients, raw):
    a = clients(broker, "pub")
    a.connect()
    assert a.publish("nobody/listens", b"x", 1)[0] == 0x10
    a.subscribe("somebody/listens", 1)
    assert a.publish("somebody/listens", b"x", 1)[0] == 0x00
    c = raw(broker, rawmqtt.V5)
    c.connect("rawpub")
    rec = c.publish("nobody/listens", b"x", 2)
    assert rec.type == rawmqtt.PUBREC and rec.reason == 0x10


def test_retained_messages_keep_user_properties(broker, clients):
    a = clients(broker, "myclientid")
    a.connect()
    user = [("a", "2"), ("c", "3")]
    for i, topic in enumerate(TOPICS[1:4]):
        a.publish(topic, f"qos {i}".encode(), i, retain=True, properties=publish_props(UserProperty=user))
    a.publish("sync", b"", 1)
    a.subscribe(WILDTOPICS[5], opts(2))
    msgs = a.wait_messages(3)
    assert sorted(m.qos for m in msgs) == [0, 1, 2]
    for m in msgs:
        assert m.retain
        assert prop(m.properties, "UserProperty") == user
    assert len(a.settle(0.3)) == 3


# ---------------------------------------------------------------- wills


def test_will_message_on_abnormal_disconnect(broker, clients):
    b = clients(broker, "myclientid2")
    b.connect(clean_start=False)
    b.subscribe(TOPICS[2], opts(2))
    a = clients(broker, "myclientid")
    a.will_set(TOPICS[2], b"client not disconnected", 2)
    a.connect(keepalive=2)
    a.drop()
    msg = b.wait_message(TOPICS[2])
    assert (msg.payload, msg.qos) == (b"client not disconnected", 2)


def test_normal_disconnect_discards_will_but_reason_0x04_publishes_it(broker, clients):
    b = clients(broker, "watcher")
    b.connect()
    b.subscribe("will/#", opts(1))
    quiet = clients(broker, "quiet")
    quiet.will_set("will/quiet", b"should not appear", 1)
    quiet.connect()
    quiet.disconnect()
    loud = clients(broker, "loud")
    loud.will_set("will/loud", b"disconnect with will", 1)
    loud.connect()
    loud.disconnect(reasoncode=0x04)
    msg = b.wait_message("will/loud")
    assert msg.payload == b"disconnect with will"
    assert [m.topic for m in b.settle(0.4)] == ["will/loud"]
    broker.wait_log(r"client disconnected: client sent DISCONNECT with will \(0x04\).*client_id=loud")


def test_will_properties_are_passed_through(broker, clients):
    b = clients(broker, "watcher")
    b.connect()
    b.subscribe("will/#", opts(1))
    a = clients(broker, "dying")
    will_props = props(
        PacketTypes.WILLMESSAGE,
        PayloadFormatIndicator=1,
        ContentType="text/plain",
        ResponseTopic="will/replies",
        CorrelationData=b"\x00\x01corr",
        UserProperty=[("k1", "v1"), ("k2", "v2")],
        MessageExpiryInterval=100,
    )
    a.will_set("will/dying", b"bye", 1, properties=will_props)
    a.connect()
    a.drop()
    m = b.wait_message("will/dying")
    p = m.properties
    assert m.payload == b"bye"
    assert prop(p, "PayloadFormatIndicator") == 1
    assert prop(p, "ContentType") == "text/plain"
    assert prop(p, "ResponseTopic") == "will/replies"
    assert prop(p, "CorrelationData") == b"\x00\x01corr"
    assert prop(p, "UserProperty") == [("k1", "v1"), ("k2", "v2")]
    assert 95 <= prop(p, "MessageExpiryInterval", -1) <= 100


def _will_client(clients, broker, delay: int, expiry: int, client_id: str = "delayed"):
    a = clients(broker, client_id)
    a.will_set("will/delayed", b"test_will_delay will message", 1,
               properties=props(PacketTypes.WILLMESSAGE, WillDelayInterval=delay))
    a.connect(properties=connect_props(SessionExpiryInterval=expiry))
    return a


def _watcher(clients, broker):
    b = clients(broker, "watcher")
    b.connect()
    b.subscribe("will/#", opts(2))
    return b


def test_will_delay_interval_delays_the_will(broker, clients):
    b = _watcher(clients, broker)
    a = _will_client(clients, broker, delay=2, expiry=10)
    a.drop()
    start = time.monotonic()
    time.sleep(1.2)
    assert b.messages == [], "the will must wait for the Will Delay Interval"
    msg = b.wait_message("will/delayed", timeout=4)
    elapsed = time.monotonic() - start
    assert msg.payload == b"test_will_delay will message"
    assert 1.5 <= elapsed <= 3.5, f"will published after {elapsed:.1f}s, delay was 2 s"


def test_will_is_published_when_the_session_ends_before_the_delay(broker, clients):
    b = _watcher(clients, broker)
    a = _will_client(clients, broker, delay=5, expiry=1)
    a.drop()
    start = time.monotonic()
    b.wait_message("will/delayed", timeout=4)
    elapsed = time.monotonic() - start
    assert 0.5 <= elapsed <= 2.5, f"will published after {elapsed:.1f}s; the session expired after 1 s"


def test_will_is_published_at_once_when_session_expiry_is_0(broker, clients):
    b = _watcher(clients, broker)
    a = _will_client(clients, broker, delay=5, expiry=0)
    a.drop()
    start = time.monotonic()
    b.wait_message("will/delayed", timeout=3)
    assert time.monotonic() - start <= 1.0


def test_reconnect_within_will_delay_cancels_the_will(broker, clients):
    b = _watcher(clients, broker)
    a = _will_client(clients, broker, delay=2, expiry=60)
    a.drop()
    time.sleep(0.3)
    again = clients(broker, "delayed")
    _, present, _ = again.connect(clean_start=False, properties=connect_props(SessionExpiryInterval=60))
    assert present
    time.sleep(2.5)
    assert b.messages == [], [(m.topic, m.payload) for m in b.messages]
    again.disconnect()
    assert b.settle(0.3) == []


# ---------------------------------------------------------------- client ids, sessions


def test_assigned_client_identifier(broker, clients):
    ids = []
    for clean in (True, False):
        c = clients(broker, "")
        rc, present, p = c.connect(clean_start=clean)
        assert rc == 0 and not present
        assigned = prop(p, "AssignedClientIdentifier")
        assert assigned and assigned.startswith("fleetmq-"), assigned
        ids.append(assigned)
        broker.wait_log(rf"client connected client_id={assigned} ")
    assert ids[0] != ids[1]


def test_offline_message_queueing(broker, clients):
    a = clients(broker, "myclientid")
    a.connect(clean_start=False, properties=connect_props(SessionExpiryInterval=300))
    a.subscribe(WILDTOPICS[5], opts(2))
    a.disconnect()
    b = clients(broker, "myclientid2")
    b.connect()
    b.publish(TOPICS[1], b"qos 0", 0)
    b.publish(TOPICS[2], b"qos 1", 1)
    b.publish(TOPICS[3], b"qos 2", 2)
    b.disconnect()
    a2 = clients(broker, "myclientid")
    _, present, _ = a2.connect(clean_start=False, properties=connect_props(SessionExpiryInterval=300))
    assert present
    a2.wait_messages(2)
    assert [(m.payload, m.qos) for m in a2.settle(0.5)] == [(b"qos 1", 1), (b"qos 2", 2)]


def test_session_expiry_interval_0_ends_session_at_disconnect(broker, clients):
    a = clients(broker, "myclientid")
    _, present, _ = a.connect(properties=connect_props(SessionExpiryInterval=0))
    assert not present
    a.subscribe(TOPICS[0], opts(2))
    a.disconnect()
    # The session ends when the broker has read the DISCONNECT; a reconnect racing ahead of
    # that (another worker thread) would be a takeover of the still-open session.
    broker.wait_log(r"client disconnected.*client_id=myclientid")
    _, present, _ = a.connect(clean_start=False, properties=connect_props(SessionExpiryInterval=0))
    assert not present


def test_session_expiry_interval_keeps_then_expires_session(broker, clients):
    a = clients(broker, "myclientid")
    a.connect(properties=connect_props(SessionExpiryInterval=2))
    a.subscribe(TOPICS[0], opts(2))
    a.disconnect()
    time.sleep(0.5)
    _, present, p = a.connect(clean_start=False, properties=connect_props(SessionExpiryInterval=2))
    assert present, "session must survive within its expiry interval"
    assert prop(p, "SessionExpiryInterval") in (None, 2), "granted as requested"
    a.disconnect()
    time.sleep(2.6)
    _, present, _ = a.connect(clean_start=False, properties=connect_props(SessionExpiryInterval=2))
    assert not present, "session must be gone after its expiry interval"
    broker.wait_log(r"session expired.*client_id=myclientid|client_id=myclientid.*session expired")


def test_session_expiry_set_on_disconnect(broker, clients):
    a = clients(broker, "myclientid")
    a.connect(properties=connect_props(SessionExpiryInterval=1))
    a.subscribe(TOPICS[0], opts(2))
    a.disconnect(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=10))
    time.sleep(1.6)
    _, present, _ = a.connect(clean_start=False, properties=connect_props(SessionExpiryInterval=1))
    assert present, "DISCONNECT raised the expiry to 10 s"
    a.disconnect(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=0))
    # "At once" from the broker's side: a reconnect overtaking the DISCONNECT (another worker
    # thread) would be a takeover of the still-open session.
    wait_until(lambda: broker.log().count("client disconnected: client sent DISCONNECT client_id=myclientid") >= 2,
               what="the broker to read the DISCONNECT")
    _, present, _ = a.connect(clean_start=False, properties=connect_props(SessionExpiryInterval=1))
    assert not present, "DISCONNECT with expiry 0 ends the session at once"


def test_session_never_expires_with_0xffffffff_and_is_resumed_with_its_subscriptions(broker, clients):
    a = clients(broker, "forever")
    _, _, p = a.connect(properties=connect_props(SessionExpiryInterval=UNLIMITED))
    assert prop(p, "SessionExpiryInterval") in (None, UNLIMITED)
    a.subscribe("forever/t", opts(1))
    a.disconnect()
    time.sleep(1.2)
    pub = clients(broker, "pub")
    pub.connect()
    pub.publish("forever/t", b"kept", 1)
    _, present, _ = a.connect(clean_start=False, properties=connect_props(SessionExpiryInterval=UNLIMITED))
    assert present
    assert a.wait_messages(1)[0].payload == b"kept"


def test_max_session_expiry_caps_the_interval(start_broker, clients):
    broker = start_broker({"sessions": {"max_session_expiry": "2s"}})
    for asked in (100, UNLIMITED):
        a = clients(broker, f"capped-{asked}")
        _, _, p = a.connect(properties=connect_props(SessionExpiryInterval=asked))
        assert prop(p, "SessionExpiryInterval") == 2, f"asked {asked}, CONNACK must carry the granted 2 s"
        a.subscribe("cap/t", opts(1))
        a.disconnect()
    time.sleep(2.6)
    for asked in (100, UNLIMITED):
        a = clients(broker, f"capped-{asked}")
        _, present, _ = a.connect(clean_start=False, properties=connect_props(SessionExpiryInterval=asked))
        assert not present, f"session asked {asked} s but the broker caps it at 2 s"
        a.disconnect()


def test_takeover_sends_disconnect_0x8e_and_resumes_session(broker, clients, raw):
    first = raw(broker, rawmqtt.V5)
    assert first.connect("dup-id", clean=True, props={"SessionExpiryInterval": 60}).reason == 0
    first.subscribe("take/t", qos=1)
    second = raw(broker, rawmqtt.V5)
    connack = second.connect("dup-id", clean=False, props={"SessionExpiryInterval": 60})
    assert connack.reason == 0 and connack.session_present
    seen = first.wait_closed(timeout=3)
    assert [(p.type, p.reason) for p in seen] == [(rawmqtt.DISCONNECT, 0x8E)], seen
    pub = clients(broker, "pub")
    pub.connect()
    pub.publish("take/t", b"resumed", 1)
    assert second.expect(rawmqtt.PUBLISH).payload == b"resumed"


def test_takeover_with_clean_start_replaces_session(broker, clients, raw):
    first = raw(broker, rawmqtt.V5)
    first.connect("dup-id", clean=True, props={"SessionExpiryInterval": 60})
    first.subscribe("take/t", qos=1)
    second = raw(broker, rawmqtt.V5)
    connack = second.connect("dup-id", clean=True, props={"SessionExpiryInterval": 60})
    assert connack.reason == 0 and not connack.session_present
    seen = first.wait_closed(timeout=3)
    assert [(p.type, p.reason) for p in seen] == [(rawmqtt.DISCONNECT, 0x8E)], seen
    pub = clients(broker, "pub")
    pub.connect()
    assert pub.publish("take/t", b"nobody", 1)[0] == 0x10, "old subscription must be gone"


# ---------------------------------------------------------------- subscriptions


def test_overlapping_subscriptions_one_delivery_with_all_subscription_ids(broker, clients):
    a = clients(broker, "myclientid")
    a.connect()
    a.subscribe(WILDTOPICS[6], opts(2), properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=2))
    a.subscribe(WILDTOPICS[0], opts(1), properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=1))
    a.publish(TOPICS[3], b"overlapping topic filters", 2)
    a.wait_messages(1)
    msgs = a.settle(0.5)
    assert len(msgs) == 1
    assert msgs[0].qos == 2
    assert sorted(prop(msgs[0].properties, "SubscriptionIdentifier", [])) == [1, 2]


def test_subscription_identifiers(broker, clients):
    a = clients(broker, "myclientid")
    a.connect()
    a.subscribe(TOPICS[0], opts(2), properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=456789))
    b = clients(broker, "myclientid2")
    b.connect()
    b.subscribe(TOPICS[0], opts(2), properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=2))
    b.subscribe(TOPICS[0] + "/#", opts(2), properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=3))
    b.subscribe("no/id", opts(1))
    b.publish(TOPICS[0], b"sub identifier test", 1)
    assert prop(a.wait_messages(1)[0].properties, "SubscriptionIdentifier") == [456789]
    msgs = b.wait_messages(1)
    assert len(b.settle(0.3)) == 1
    assert sorted(prop(msgs[0].properties, "SubscriptionIdentifier")) == [2, 3]
    b.publish("no/id", b"x", 1)
    m = b.wait_message("no/id")
    assert prop(m.properties, "SubscriptionIdentifier") is None


def test_subscribe_failure_returns_0x8f_with_reason_string(start_broker, clients):
    broker = start_broker({"limits": {"max_topic_levels": 4}})
    a = clients(broker, "myclientid")
    a.connect()
    codes, p = a.subscribe_full([("test/nosubscribe/a/b/c", opts(2)), ("ok/t", opts(1))])
    assert codes == [0x8F, 1]
    assert prop(p, "ReasonString"), "a refusal carries a reason string"
    assert "test/nosubscribe/a/b/c" in prop(p, "ReasonString")


@pytest.mark.parametrize("flt", ["a/#/b", "a/b+", "$share/g", "$share/g+/a", "$queue/"])
def test_malformed_filters_are_refused_with_0x8f(broker, raw, flt):
    c = raw(broker, rawmqtt.V5)
    c.connect("bad-filters")
    suback = c.subscribe((flt, 1), ("good/t", 1))
    assert suback.codes == [0x8F, 1]
    assert suback.props.get("ReasonString")


def test_dollar_topics(broker, clients):
    b = clients(broker, "myclientid2")
    b.connect(keepalive=0)
    b.subscribe([(WILDTOPICS[5], opts(2)), ("#", opts(2))])
    explicit = clients(broker, "explicit")
    explicit.connect()
    explicit.subscribe("$" + TOPICS[1], opts(1))
    b.publish("$" + TOPICS[1], b"", 1)
    explicit.wait_message("$" + TOPICS[1])
    assert b.settle(0.3) == []


def test_unsubscribe(broker, clients):
    b = clients(broker, "myclientid2")
    b.connect()
    for t in TOPICS[:3]:
        b.subscribe(t, opts(2))
    assert b.unsubscribe(TOPICS[0]) == [0x00]
    assert b.unsubscribe("never/subscribed") == [0x11]
    a = clients(broker, "myclientid")
    a.connect()
    a.publish(TOPICS[0], b"topic 0 - unsubscribed", 1)
    a.publish(TOPICS[1], b"topic 1", 1)
    a.publish(TOPICS[2], b"topic 2", 1)
    b.wait_messages(2)
    assert payloads(b.settle(0.3)) == [b"topic 1", b"topic 2"]


def test_no_local(broker, clients):
    a = clients(broker, "myclientid")
    a.connect()
    b = clients(broker, "myclientid2")
    b.connect()
    a.subscribe(TOPICS[0], opts(2, noLocal=True))
    b.subscribe(TOPICS[0], opts(2, noLocal=True))
    a.publish(TOPICS[0], b"noLocal test", 1)
    assert b.wait_messages(1)[0].payload == b"noLocal test"
    assert a.settle(0.4) == [], "No Local: own messages are not delivered"
    assert len(b.messages) == 1


def test_retain_as_published(broker, clients):
    a = clients(broker, "myclientid")
    a.connect()
    a.subscribe(TOPICS[0], opts(2, retainAsPublished=True))
    plain = clients(broker, "plain")
    plain.connect()
    plain.subscribe(TOPICS[0], opts(2))
    a.publish(TOPICS[0], b"retain as published false", 1)
    a.publish(TOPICS[0], b"retain as published true", 1, retain=True)
    assert [(m.payload, m.retain) for m in a.wait_messages(2)] == [
        (b"retain as published false", False),
        (b"retain as published true", True),
    ]
    assert [m.retain for m in plain.wait_messages(2)] == [False, False], \
        "without Retain As Published, RETAIN is 0 on normal delivery"


def _publish_three_retained(client):
    client.publish(TOPICS[1], b"qos 0", 0, retain=True)
    client.publish(TOPICS[2], b"qos 1", 1, retain=True)
    client.publish(TOPICS[3], b"qos 2", 2, retain=True)
    client.publish("sync", b"", 1)


def test_retain_handling_1_sends_only_for_new_subscriptions(broker, clients):
    a = clients(broker, "myclientid")
    a.connect()
    _publish_three_retained(a)
    a.subscribe(WILDTOPICS[5], opts(2, retainHandling=1))
    msgs = a.wait_messages(3)
    assert sorted(m.qos for m in msgs) == [0, 1, 2] and all(m.retain for m in msgs)
    assert len(a.settle(0.2)) == 3
    a.clear()
    a.subscribe(WILDTOPICS[5], opts(2, retainHandling=1))
    assert a.settle(0.5) == [], "the subscription already existed"


def test_retain_handling_2_never_sends(broker, clients):
    a = clients(broker, "myclientid")
    a.connect()
    _publish_three_retained(a)
    a.subscribe(WILDTOPICS[5], opts(2, retainHandling=2))
    assert a.settle(0.5) == []
    a.subscribe(WILDTOPICS[5], opts(2, retainHandling=2))
    assert a.settle(0.5) == []


def test_retain_handling_0_always_sends(broker, clients):
    a = clients(broker, "myclientid")
    a.connect()
    _publish_three_retained(a)
    a.subscribe(WILDTOPICS[5], opts(2, retainHandling=0))
    assert sorted(m.qos for m in a.wait_messages(3)) == [0, 1, 2]
    assert len(a.settle(0.2)) == 3
    a.clear()
    a.subscribe(WILDTOPICS[5], opts(2, retainHandling=0))
    assert sorted(m.qos for m in a.wait_messages(3)) == [0, 1, 2]
    assert all(m.retain for m in a.messages)


# ---------------------------------------------------------------- message properties


def test_user_properties_in_order(broker, clients):
    a = clients(broker, "myclientid")
    a.connect()
    a.subscribe(TOPICS[0], opts(2))
    user = [("a", "2"), ("c", "3"), ("a", "1")]
    for qos in (0, 1, 2):
        a.publish(TOPICS[0], b"", qos, properties=publish_props(UserProperty=user))
    msgs = a.wait_messages(3)
    assert sorted(m.qos for m in msgs) == [0, 1, 2]
    for m in msgs:
        assert prop(m.properties, "UserProperty") == user, "user properties forwarded unaltered, in order"


def test_payload_format_indicator_and_content_type(broker, clients):
    a = clients(broker, "myclientid")
    a.connect()
    a.subscribe(TOPICS[0], opts(2))
    for qos in (0, 1, 2):
        a.publish(TOPICS[0], "héllo".encode(), qos,
                  properties=publish_props(PayloadFormatIndicator=1, ContentType="My name"))
    for m in a.wait_messages(3):
        assert prop(m.properties, "ContentType") == "My name"
        assert prop(m.properties, "PayloadFormatIndicator") == 1
        assert m.payload == "héllo".encode()


def test_message_expiry_drops_expired_and_forwards_remaining_interval(broker, clients):
    b = clients(broker, "myclientid2")
    b.connect(properties=connect_props(SessionExpiryInterval=60))
    b.subscribe(TOPICS[0], opts(2))
    b.disconnect()
    a = clients(broker, "myclientid")
    a.connect()
    a.publish(TOPICS[0], b"qos 1 - expire", 1, properties=publish_props(MessageExpiryInterval=1))
    a.publish(TOPICS[0], b"qos 2 - expire", 2, properties=publish_props(MessageExpiryInterval=1))
    a.publish(TOPICS[0], b"qos 1 - don't expire", 1, properties=publish_props(MessageExpiryInterval=6))
    a.publish(TOPICS[0], b"qos 2 - don't expire", 2, properties=publish_props(MessageExpiryInterval=6))
    time.sleep(2.2)
    b.connect(clean_start=False, properties=connect_props(SessionExpiryInterval=60))
    b.wait_messages(2)
    msgs = b.settle(0.4)
    assert payloads(msgs) == [b"qos 1 - don't expire", b"qos 2 - don't expire"]
    for m in msgs:
        remaining = prop(m.properties, "MessageExpiryInterval")
        assert remaining is not None and 1 <= remaining <= 4, f"remaining interval {remaining}, 6 s minus ~2 s waited"


def test_message_expiry_interval_forwarded_to_online_subscriber(broker, clients):
    a = clients(broker, "myclientid")
    a.connect()
    a.subscribe(TOPICS[0], opts(1))
    a.publish(TOPICS[0], b"x", 1, properties=publish_props(MessageExpiryInterval=60))
    a.publish(TOPICS[0], b"y", 1)
    m1, m2 = a.wait_messages(2)
    assert 58 <= prop(m1.properties, "MessageExpiryInterval", -1) <= 60
    assert prop(m2.properties, "MessageExpiryInterval") is None


def test_request_response(broker, clients):
    a = clients(broker, "requester")
    a.connect()
    b = clients(broker, "responder")
    b.connect()
    a.subscribe("rr/response", opts(2))
    b.subscribe("rr/request", opts(2))
    a.publish("rr/request", b"request", 1,
              properties=publish_props(ResponseTopic="rr/response", CorrelationData=b"334"))
    req = b.wait_messages(1)[0]
    assert prop(req.properties, "ResponseTopic") == "rr/response"
    assert prop(req.properties, "CorrelationData") == b"334"
    b.publish(req.properties.ResponseTopic, b"response", 1,
              properties=publish_props(CorrelationData=req.properties.CorrelationData))
    resp = a.wait_messages(1)[0]
    assert (resp.topic, resp.payload, prop(resp.properties, "CorrelationData")) == ("rr/response", b"response", b"334")


# ---------------------------------------------------------------- topic aliases


def test_client_topic_aliases(broker, clients):
    a = clients(broker, "myclientid")
    _, _, p = a.connect(properties=connect_props(SessionExpiryInterval=99999))
    assert prop(p, "TopicAliasMaximum") == 64
    a.subscribe(TOPICS[0], opts(2))
    a.publish(TOPICS[0], b"topic alias 1", 1, properties=publish_props(TopicAlias=1))
    a.publish("", b"topic alias 2", 1, properties=publish_props(TopicAlias=1))
    msgs = a.wait_messages(2)
    assert [(m.topic, m.payload) for m in msgs] == [(TOPICS[0], b"topic alias 1"), (TOPICS[0], b"topic alias 2")]
    a.disconnect()


def test_topic_aliases_do_not_survive_the_connection(broker, raw):
    c = raw(broker, rawmqtt.V5)
    c.connect("myclientid", props={"SessionExpiryInterval": 99999})
    c.subscribe((TOPICS[0], 1))
    c.publish(TOPICS[0], b"set alias", 1, props={"TopicAlias": 1})
    delivered = c.expect(rawmqtt.PUBLISH)
    assert delivered.topic == TOPICS[0]
    c.ack(delivered)
    c.publish("sync", b"", 1)  # the PUBACK above has been processed
    c.disconnect()
    c2 = raw(broker, rawmqtt.V5)
    assert c2.connect("myclientid", clean=False, props={"SessionExpiryInterval": 99999}).session_present
    c2.send(rawmqtt.publish_packet("", b"topic alias 4", 1, packet_id=1, version=rawmqtt.V5, props={"TopicAlias": 1}))
    seen = c2.wait_closed(timeout=3)
    assert [(p.type, p.reason) for p in seen] == [(rawmqtt.DISCONNECT, 0x94)], seen


def test_topic_alias_above_maximum_disconnects_with_0x94(broker, raw):
    c = raw(broker, rawmqtt.V5)
    assert c.connect("aliaser").props["TopicAliasMaximum"] == 64
    c.send(rawmqtt.publish_packet(TOPICS[0], b"x", 1, packet_id=1, version=rawmqtt.V5, props={"TopicAlias": 65}))
    seen = c.wait_closed(timeout=3)
    assert [(p.type, p.reason) for p in seen] == [(rawmqtt.DISCONNECT, 0x94)], seen


def test_topic_alias_0_is_refused_with_a_protocol_error_reason(broker, raw):
    # MQTT-3.3.2-8: alias 0 is not permitted. Acceptable DISCONNECT reasons: Topic Alias
    # invalid (0x94), Protocol Error (0x82) or Malformed Packet (0x81).
    c = raw(broker, rawmqtt.V5)
    c.connect("aliaser")
    c.send(rawmqtt.publish_packet(TOPICS[0], b"x", 1, packet_id=1, version=rawmqtt.V5, props={"TopicAlias": 0}))
    seen = c.wait_closed(timeout=3)
    assert len(seen) == 1 and seen[0].type == rawmqtt.DISCONNECT, seen
    assert seen[0].reason in (0x81, 0x82, 0x94), f"DISCONNECT reason {seen[0].reason:#x}"


def test_server_topic_aliases(broker, clients):
    a = clients(broker, "myclientid")
    a.connect(properties=connect_props(TopicAliasMaximum=1))
    a.subscribe(TOPICS[0], opts(2))
    a.subscribe(TOPICS[1], opts(2))
    for qos in range(3):
        a.publish(TOPICS[0], b"topic alias 1", qos)
    msgs = a.wait_messages(3)
    alias = prop(msgs[0].properties, "TopicAlias")
    assert alias == 1 and msgs[0].topic == TOPICS[0], "first message sets the alias"
    for m in msgs[1:]:
        assert (m.topic, prop(m.properties, "TopicAlias")) == ("", alias), "later ones use the alias alone"
    # Only one alias allowed: a second topic goes out in full without an alias.
    a.publish(TOPICS[1], b"other", 1)
    m = a.wait_message(TOPICS[1])
    assert prop(m.properties, "TopicAlias") is None
    a.disconnect()


def test_no_server_topic_aliases_without_topic_alias_maximum(broker, clients):
    for connect_properties in (None, connect_props(TopicAliasMaximum=0)):
        a = clients(broker, "myclientid")
        a.connect(properties=connect_properties)
        a.subscribe(TOPICS[0], opts(2))
        for qos in range(3):
            a.publish(TOPICS[0], b"no alias", qos)
        for m in a.wait_messages(3):
            assert m.topic == TOPICS[0]
            assert prop(m.properties, "TopicAlias") is None
        a.disconnect()


# ---------------------------------------------------------------- packet size, keep alive, flow control


def test_maximum_packet_size_of_the_server(start_broker, raw):
    broker = start_broker({"limits": {"max_packet_size": 1024}})
    c = raw(broker, rawmqtt.V5)
    connack = c.connect("big-sender")
    assert connack.props.get("MaximumPacketSize") == 1024
    c.send(rawmqtt.publish_packet(TOPICS[0], b"." * 1024, 0, version=rawmqtt.V5))
    seen = c.wait_closed(timeout=3)
    assert [(p.type, p.reason) for p in seen] == [(rawmqtt.DISCONNECT, 0x95)], seen
    line = broker.wait_log(r"WARN.*client_id=big-sender|WARN.*max_packet_size.*big-sender")
    assert "max_packet_size" in line


def test_maximum_packet_size_of_the_client(broker, clients):
    a = clients(broker, "myclientid")
    a.connect(properties=connect_props(MaximumPacketSize=64))
    a.subscribe(TOPICS[0], opts(2))
    # PUBLISH QoS 0 on "TopicA": 1 + 1 (fixed header) + 2 + 6 (topic) + 1 (no properties)
    # + 32 = 43 bytes, well below 64.
    a.publish(TOPICS[0], b"a" * 32, 0)
    # QoS 1 adds a 2-byte packet id: 51 bytes of payload make exactly 64 bytes.
    a.publish(TOPICS[0], b"b" * 51, 1)
    # One byte more cannot be sent to this client.
    a.publish(TOPICS[0], b"c" * 52, 1)
    a.publish(TOPICS[0], b"small again", 1)
    a.wait_messages(3, timeout=3)
    assert payloads(a.settle(0.3)) == [b"a" * 32, b"b" * 51, b"small again"], \
        "only the message above the client's Maximum Packet Size is discarded"


def test_server_keep_alive(start_broker, clients):
    broker = start_broker({"limits": {"max_keepalive": 60}})
    a = clients(broker, "myclientid")
    _, _, p = a.connect(keepalive=120)
    assert prop(p, "ServerKeepAlive") == 60
    a.disconnect()
    _, _, p = a.connect(keepalive=30)
    assert prop(p, "ServerKeepAlive") is None, "within the maximum: no Server Keep Alive"
    a.disconnect()
    _, _, p = a.connect(keepalive=0)
    assert prop(p, "ServerKeepAlive") == 60, "no keep-alive asked for: told the maximum"
    a.disconnect()


def test_server_keep_alive_is_enforced(start_broker, raw):
    broker = start_broker({"limits": {"max_keepalive": 1}})
    c = raw(broker, rawmqtt.V5)
    connack = c.connect("lazy", keepalive=0)
    assert connack.props.get("ServerKeepAlive") == 1
    start = time.monotonic()
    c.wait_closed(timeout=4)
    assert time.monotonic() - start >= 0.9, "closed before the keep-alive ran out"


def test_flow_control_client_receive_maximum(broker, raw, clients):
    c = raw(broker, rawmqtt.V5)
    c.connect("myclientid", props={"ReceiveMaximum": 2})
    c.subscribe((TOPICS[0], 2))
    pub = clients(broker, "pub")
    pub.connect()
    for i in range(1, 4):
        pub.publish(TOPICS[0], f"message {i}", 1)
    first = c.expect(rawmqtt.PUBLISH)
    second = c.expect(rawmqtt.PUBLISH)
    assert [first.payload, second.payload] == [b"message 1", b"message 2"]
    assert c.recv_all(0.5) == [], "a third QoS 1 message would exceed the client's Receive Maximum"
    c.ack(first)
    third = c.expect(rawmqtt.PUBLISH)
    assert third.payload == b"message 3"
    c.ack(second)
    c.ack(third)


def test_flow_control_server_receive_maximum(start_broker, raw):
    broker = start_broker({"limits": {"max_inflight": 5}})
    c = raw(broker, rawmqtt.V5)
    connack = c.connect("myclientid")
    assert connack.props.get("ReceiveMaximum") == 5
    for i in range(1, 7):  # QoS 2 without PUBREL: each stays in flight
        c.send(rawmqtt.publish_packet(TOPICS[0], f"message {i}", 2, packet_id=i, version=rawmqtt.V5))
    seen = c.wait_closed(timeout=3)
    recs = [p for p in seen if p.type == rawmqtt.PUBREC]
    assert len(recs) == 5, seen
    assert (seen[-1].type, seen[-1].reason) == (rawmqtt.DISCONNECT, 0x93), seen


# ---------------------------------------------------------------- shared subscriptions


def test_shared_subscriptions(broker, clients):
    shared_sub = "$share/sharename/client_test5/x"
    a = clients(broker, "myclientid")
    a.connect()
    assert a.subscribe([(shared_sub, opts(2)), (TOPICS[0], opts(2))]) == [2, 2]
    b = clients(broker, "myclientid2")
    b.connect()
    assert b.subscribe([(shared_sub, opts(2)), (TOPICS[0], opts(2))]) == [2, 2]
    b.publish(TOPICS[0], b"to both", 0)
    a.wait_messages(1)
    b.wait_messages(1)
    a.clear()
    b.clear()
    b.publish("client_test5/x", b"to one", 0)
    wait_until(lambda: len(a.messages) + len(b.messages) >= 1)
    time.sleep(0.3)
    assert len(a.messages) + len(b.messages) == 1, "each shared message goes to exactly one member"


def test_shared_subscription_round_robin(broker, clients):
    members = []
    for name in ("m1", "m2"):
        m = clients(broker, name)
        m.connect()
        m.subscribe("$share/g/jobs/+", opts(1))
        members.append(m)
    pub = clients(broker, "pub")
    pub.connect()
    for i in range(10):
        pub.publish(f"jobs/{i}", str(i), 1)
    wait_until(lambda: sum(len(m.messages) for m in members) >= 10)
    time.sleep(0.3)
    got = [sorted(int(x.payload) for x in m.messages) for m in members]
    assert sorted(got[0] + got[1]) == list(range(10)), "every message exactly once"
    assert len(got[0]) == len(got[1]) == 5, f"round robin between two members: {got}"


def test_queue_subscriptions(broker, clients):
    members = []
    for name in ("w1", "w2", "w3"):
        m = clients(broker, name, protocol=V5)
        m.connect()
        assert m.subscribe("$queue/work/#", opts(1)) == [1]
        members.append(m)
    pub = clients(broker, "pub")
    pub.connect()
    for i in range(9):
        pub.publish(f"work/{i}", str(i), 1)
    wait_until(lambda: sum(len(m.messages) for m in members) >= 9)
    time.sleep(0.3)
    all_payloads = sorted(int(x.payload) for m in members for x in m.messages)
    assert all_payloads == list(range(9))
    assert [len(m.messages) for m in members] == [3, 3, 3]


def test_shared_subscription_prefers_connected_members(broker, clients):
    offline = clients(broker, "offline")
    offline.connect(properties=connect_props(SessionExpiryInterval=300))
    offline.subscribe("$share/g/pref/t", opts(1))
    offline.disconnect()
    online = clients(broker, "online")
    online.connect()
    online.subscribe("$share/g/pref/t", opts(1))
    pub = clients(broker, "pub")
    pub.connect()
    for i in range(4):
        pub.publish("pref/t", str(i), 1)
    online.wait_messages(4)
    _, present, _ = offline.connect(clean_start=False, properties=connect_props(SessionExpiryInterval=300))
    assert present
    assert offline.settle(0.4) == [], "messages went to the connected member only"


def test_no_retained_messages_for_shared_subscriptions(broker, clients):
    a = clients(broker, "retainer")
    a.connect()
    a.publish("shared/ret", b"retained", 1, retain=True)
    s = clients(broker, "sharer")
    s.connect()
    s.subscribe("$share/g/shared/ret", opts(1))
    plain = clients(broker, "plain")
    plain.connect()
    plain.subscribe("shared/ret", opts(1))
    assert plain.wait_messages(1)[0].retain
    assert s.settle(0.4) == []


def test_no_local_on_shared_subscription_is_a_protocol_error(broker, raw):
    c = raw(broker, rawmqtt.V5)
    c.connect("nolocal-share")
    pid = c.new_id()
    c.send(rawmqtt.subscribe_packet(pid, [("$share/g/t", rawmqtt.sub_options(1, no_local=True))], rawmqtt.V5))
    seen = c.wait_closed(timeout=3)
    assert [(p.type, p.reason) for p in seen] == [(rawmqtt.DISCONNECT, 0x82)], seen
