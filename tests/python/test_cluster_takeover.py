"""Session takeover across cluster nodes (issue 9): a client that reconnects to another node
gets its session there, with subscriptions and queued QoS 1 messages; a client connected on one
node that connects on another is taken over. Three real broker processes on 127.0.0.1; every
wait is bounded."""

from __future__ import annotations

import pytest

from helpers import V5, V311, connect_props, wait_until
from test_cluster import api, cluster, metrics, peer, wait_routes  # noqa: F401 (the `cluster` fixture)


def routes_of(broker, name: str) -> int:
    return (peer(broker, name) or {}).get("routes", -1)


@pytest.mark.parametrize("protocol", [V311, V5])
def test_queued_qos1_messages_follow_the_session_to_another_node(cluster, clients, protocol):  # noqa: F811
    _, brokers = cluster()
    props = connect_props(SessionExpiryInterval=3600) if protocol == V5 else None
    device = clients(brokers[0], "dev-7", protocol=protocol, clean_session=False)
    device.connect(clean_start=False, properties=props)
    assert device.subscribe("cmd/dev-7/#", 1)[0] == 1
    device.disconnect()
    # The route of the now offline session has reached node 2.
    wait_routes(brokers[1], "node-1", 1)

    publisher = clients(brokers[1], "ops")
    publisher.connect()
    for i in range(5):
        publisher.publish(f"cmd/dev-7/{i}", f"c{i}".encode(), qos=1)
    wait_until(lambda: peer(brokers[1], "node-1")["forwarded_out"] >= 5, timeout=10,
               what="5 messages forwarded to node-1 and acknowledged")

    # The device comes back on node 3: its session (and the queue) moves there.
    back = clients(brokers[2], "dev-7", protocol=protocol, clean_session=False)
    _, present, _ = back.connect(clean_start=False, properties=props)
    assert present, "session present on the new node"
    back.wait_messages(5, timeout=10)
    assert [m.payload for m in back.settle(0.5)] == [f"c{i}".encode() for i in range(5)]
    # Gone from node 1 (its route withdrawn), and the route now comes from node 3.
    wait_until(lambda: routes_of(brokers[1], "node-1") == 0 and routes_of(brokers[1], "node-3") == 1,
               timeout=15, what="the session's route moved from node-1 to node-3")
    publisher.publish("cmd/dev-7/after", b"later", qos=1)
    assert back.wait_message("cmd/dev-7/after").payload == b"later"
    # Counted where it happened: admin API and /metrics.
    assert api(brokers[2], "cluster")["sessions"]["taken_over"] == 1
    assert api(brokers[0], "cluster")["sessions"]["handed_over"] == 1
    assert api(brokers[1], "cluster")["sessions"] == {
        "taken_over": 0, "handed_over": 0, "drained_out": 0, "drained_in": 0, "connects_refused": 0}
    assert 'fleetmq_cluster_sessions_total{event="taken_over"} 1' in metrics(brokers[2])


def test_connecting_on_another_node_takes_the_connection_over(cluster, clients):  # noqa: F811
    _, brokers = cluster()
    first = clients(brokers[0], "dev-8", clean_session=False)
    first.connect(clean_start=False, properties=connect_props(SessionExpiryInterval=600))
    first.subscribe("alerts/#", 1)
    second = clients(brokers[1], "dev-8", clean_session=False)
    _, present, _ = second.connect(clean_start=False, properties=connect_props(SessionExpiryInterval=600))
    assert present, "the subscriptions came along"
    wait_until(lambda: len(first.disconnects) == 1, timeout=10, what="the old connection closed")
    # A DISCONNECT from the broker (Session Taken Over, 0x8E; paho 2.1 does not decode the
    # reason code of a DISCONNECT without properties, see helpers.Client).
    assert first.disconnects[0][1] is True, first.disconnects
    wait_routes(brokers[2], "node-2", 1)
    pub = clients(brokers[2], "pub")
    pub.connect()
    pub.publish("alerts/x", b"a", qos=1)
    assert second.wait_message("alerts/x").payload == b"a"


def test_clean_start_elsewhere_discards_the_old_session(cluster, clients):  # noqa: F811
    _, brokers = cluster()
    old = clients(brokers[0], "dev-9", clean_session=False)
    old.connect(clean_start=False, properties=connect_props(SessionExpiryInterval=600))
    old.subscribe("x/#", 1)
    old.disconnect()
    wait_routes(brokers[1], "node-1", 1)
    fresh = clients(brokers[1], "dev-9")
    _, present, _ = fresh.connect(clean_start=True)
    assert not present
    # Node 1 handed the session over and node 2 discarded it: no route left anywhere.
    wait_until(lambda: routes_of(brokers[2], "node-1") == 0 and routes_of(brokers[2], "node-2") == 0,
               timeout=15, what="the old session's route withdrawn")


def test_concurrent_connects_on_two_nodes_leave_one_winner(cluster, clients):  # noqa: F811
    """Both CONNECTs at once: either the claims overlap (the smaller node name wins, the other
    CONNECT is refused) or one follows the other (the later takes the earlier over). Either
    way exactly one connection and one session remain."""
    import threading

    _, brokers = cluster()
    a = clients(brokers[0], "twin-client", clean_session=False)
    b = clients(brokers[1], "twin-client", clean_session=False)
    results = {}

    def go(name, client):
        results[name] = client.connect(clean_start=False, expect=None,
                                       properties=connect_props(SessionExpiryInterval=600))[0]

    threads = [threading.Thread(target=go, args=(n, c)) for n, c in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=15)
    accepted = [n for n, rc in results.items() if rc == 0]
    assert accepted, results
    assert all(rc in (0, 0x89) for rc in results.values()), results

    def connected():
        return [n for n, c in (("a", a), ("b", b)) if c.paho.is_connected()]

    wait_until(lambda: len(connected()) == 1, timeout=10, what=f"one connection left (now {connected()})")
    # And one session in the cluster: the other node has none.
    from test_cluster import api
    winner, loser = (brokers[0], brokers[1]) if connected() == ["a"] else (brokers[1], brokers[0])
    assert api(winner, "clients/twin-client")["client_id"] == "twin-client"
    import urllib.error
    try:
        api(loser, "clients/twin-client")
        raise AssertionError("the losing node still has a session")
    except urllib.error.HTTPError as err:
        assert err.code == 404


def test_drain_through_the_admin_api_hands_sessions_over_and_exits(cluster, clients):  # noqa: F811
    import json
    import urllib.request

    from test_cluster import TOKEN, http_addr

    _, brokers = cluster()
    device = clients(brokers[0], "dev-drain", clean_session=False)
    device.connect(clean_start=False, properties=connect_props(SessionExpiryInterval=3600))
    device.subscribe("drain/#", 1)
    device.disconnect()
    wait_routes(brokers[1], "node-1", 1)
    pub = clients(brokers[1], "drain-pub")
    pub.connect()
    pub.publish("drain/1", b"queued", qos=1)
    wait_until(lambda: peer(brokers[1], "node-1")["forwarded_out"] >= 1, timeout=10, what="forwarded to node-1")

    req = urllib.request.Request(f"http://{http_addr(brokers[0])}/api/v1/drain", method="POST",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 202, resp.status
        assert "draining" in json.loads(resp.read())["result"]
    assert brokers[0].proc.wait(timeout=30) == 0
    # The session went to one of the others (drained in there), with its queued message.
    drained = [api(b, "cluster")["sessions"]["drained_in"] for b in brokers[1:]]
    assert sorted(drained) == [0, 1], drained
    back = clients(brokers[2], "dev-drain", clean_session=False)
    _, present, _ = back.connect(clean_start=False, properties=connect_props(SessionExpiryInterval=3600))
    assert present
    assert back.wait_message("drain/1").payload == b"queued"
