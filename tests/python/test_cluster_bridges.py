"""Bridges in a cluster (issues 7 and 9): every node runs the configured bridge for its own
clients, with its own session on the remote, so each message crosses the bridge exactly once
whichever node it was published on, and what comes in reaches every node's subscribers once.
Two FleetMQ nodes on 127.0.0.1 and Debian's mosquitto as the remote; every wait is bounded."""

from __future__ import annotations

import time

from helpers import wait_until
from test_bridges import mosquitto  # noqa: F401 (the `mosquitto` fixture)
from test_cluster import api, cluster, peer  # noqa: F401 (the `cluster` fixture)


def start_nodes(cluster, remote_port: int) -> list:
    _, brokers = cluster(2, config={"bridges": [{
        "name": "cloud",
        "addresses": [f"127.0.0.1:{remote_port}"],
        "client_id": "edge",
        "backoff": {"initial": "100ms", "max": "500ms"},
        "topics": [{"pattern": "up/#", "direction": "out", "qos": 1},
                   {"pattern": "down/#", "direction": "in", "qos": 1}],
    }]})
    for b in brokers:
        wait_until(lambda: api(b, "bridges")["items"][0]["state"] == "connected", timeout=10,
                   what=f"bridge connected on port {b.port}")
    return brokers


def test_each_node_bridges_its_own_clients_once(cluster, mosquitto, clients):  # noqa: F811
    remote = mosquitto()
    brokers = start_nodes(cluster, remote.port)
    # Each node has its own session on the remote: the node name is appended to the client id.
    log = remote.log()
    assert " as edge.node-1 " in log and " as edge.node-2 " in log, log

    # Subscribers: down/# on both nodes, and a client route on node-2 only.
    subs = []
    for i, broker in enumerate(brokers):
        sub = clients(broker, f"down-{i + 1}")
        sub.connect()
        sub.subscribe("down/#", 1)
        subs.append(sub)
    other = clients(brokers[1], "other")
    other.connect()
    other.subscribe("elsewhere/x", 1)

    # The bridges' internal subscriptions (up/#) are not announced to the peer: each node knows
    # exactly its clients' routes of the other (node-2: down/#, elsewhere/x; node-1: down/#),
    # still so after ten more gossip rounds.
    def routes():
        return ((peer(brokers[0], "node-2") or {}).get("routes"), (peer(brokers[1], "node-1") or {}).get("routes"))

    wait_until(lambda: routes() == (2, 1), timeout=15, what=f"client routes only (now {routes()})")
    time.sleep(1.0)
    assert routes() == (2, 1)

    cloud = clients(remote, "cloud-sub")
    cloud.connect()
    cloud.subscribe("up/#", 1)
    for i, broker in enumerate(brokers):
        pub = clients(broker, f"pub-{i + 1}")
        pub.connect()
        pub.publish(f"up/n{i + 1}", f"from node-{i + 1}".encode(), qos=1)
    cloud.wait_messages(2, timeout=10)
    got = sorted((m.topic, m.payload) for m in cloud.settle(1.0))
    assert got == [("up/n1", b"from node-1"), ("up/n2", b"from node-2")], "each message crossed once"

    # In: every node's bridge gets its own copy from the remote and delivers it locally only
    # (node-1 knows node-2's down/# route, so forwarding it would give node-2 a second copy).
    back = clients(remote, "cloud-pub")
    back.connect()
    back.publish("down/cmd", b"reboot", qos=1)
    for i, sub in enumerate(subs):
        sub.wait_messages(1, timeout=10)
        assert [m.payload for m in sub.settle(1.0)] == [b"reboot"], f"node-{i + 1}: once"
    assert peer(brokers[0], "node-2")["forwarded_in"] == 0, "nothing the bridges carried went through the cluster"
