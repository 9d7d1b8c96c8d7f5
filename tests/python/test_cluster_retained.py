"""Retained messages across a cluster (issue 9): a node that joins or comes back takes the
retained state of a peer, so retained messages set, changed or cleared while it was away are
what its subscribers see. Real broker processes on 127.0.0.1; every wait is bounded."""

from __future__ import annotations

from helpers import wait_until
from test_cluster import cluster, wait_alive  # noqa: F401 (the `cluster` fixture)


def retained_on(clients, broker, name: str) -> dict[str, bytes]:
    sub = clients(broker, name)
    sub.connect()
    sub.subscribe("cfg/#", 1)
    return {m.topic: m.payload for m in sub.settle(0.7) if m.retain}


def test_a_node_that_comes_back_has_the_retained_state_of_the_cluster(cluster, clients):  # noqa: F811
    nodes, brokers = cluster(2, name_from_env=False)
    pub = clients(brokers[0], "cfg-pub")
    pub.connect()
    pub.publish("cfg/a", b"1", qos=1, retain=True)
    pub.publish("cfg/b", b"2", qos=1, retain=True)
    wait_until(lambda: retained_on(clients, brokers[1], "probe-1") == {"cfg/a": b"1", "cfg/b": b"2"},
               timeout=10, what="retained messages on node-2")

    # Node 2 is away while they change: one updated, one cleared, one new.
    assert brokers[1].stop() == 0
    pub.publish("cfg/a", b"1b", qos=1, retain=True)
    pub.publish("cfg/b", b"", qos=1, retain=True)
    pub.publish("cfg/c", b"3", qos=1, retain=True)

    brokers[1] = brokers[1].restart()
    wait_alive(brokers, {n.name for n in nodes})
    brokers[1].wait_log(r"retained messages taken from a peer.*complete=true", timeout=15)
    assert retained_on(clients, brokers[1], "probe-2") == {"cfg/a": b"1b", "cfg/c": b"3"}
