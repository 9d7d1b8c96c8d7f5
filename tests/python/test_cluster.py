"""Clustering (issue 9): three real broker processes on 127.0.0.1 gossiping membership and
routes (chitchat) and forwarding messages over their inter-node links.

Every wait is bounded; membership is polled through the admin API (GET /api/v1/cluster)."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import socket
import time
import urllib.error
import urllib.request

import pytest
import yaml

from conftest import free_port
from helpers import V5, publish_props, wait_until

TOKEN = "cluster-test-token"
SECRET = "cluster-test-secret"
# Short gossip rounds so membership converges and failures are detected within seconds.
GOSSIP_INTERVAL = "100ms"
CONVERGE = 15.0


def http_addr(broker) -> str:
    return yaml.safe_load(broker.config_path.read_text())["http"]["bind"]


def api(broker, path: str):
    req = urllib.request.Request(f"http://{http_addr(broker)}/api/v1/{path}",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def cluster_view(broker) -> dict:
    return api(broker, "cluster")


def alive_names(broker) -> set[str]:
    try:
        view = cluster_view(broker)
    except (OSError, urllib.error.URLError):
        return set()
    return {m["name"] for m in view["members"] if m["state"] == "alive"}


def wait_alive(brokers, names: set[str], timeout: float = CONVERGE) -> None:
    for b in brokers:
        wait_until(lambda: alive_names(b) == names, timeout=timeout, interval=0.1,
                   what=f"alive members {sorted(names)} on port {b.port} (now {sorted(alive_names(b))})")


def peer(broker, name: str) -> dict | None:
    return next((m for m in cluster_view(broker)["members"] if m["name"] == name), None)


def wait_routes(broker, name: str, count: int, timeout: float = CONVERGE) -> None:
    """Waits until `broker` has `count` routes of peer `name` and its link to it is up."""
    def ready():
        m = peer(broker, name)
        return m and m["state"] == "alive" and m["routes"] == count and (m.get("link") or {}).get("state") == "connected"
    wait_until(ready, timeout=timeout, interval=0.1, what=f"{count} routes of {name} on port {broker.port}")


def metrics(broker) -> str:
    with urllib.request.urlopen(f"http://{http_addr(broker)}/metrics", timeout=5) as resp:
        return resp.read().decode()


def listening_ports(pid: int) -> tuple[set[int], set[int]]:
    """(TCP listening ports, UDP ports) of the sockets process `pid` holds."""
    inodes = set()
    for fd in pathlib.Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])

    def ports(tables, listen_only):
        found = set()
        for table in tables:
            try:
                lines = pathlib.Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                cols = line.split()
                if cols[9] in inodes and (not listen_only or cols[3] == "0A"):
                    found.add(int(cols[1].rsplit(":", 1)[1], 16))
        return found

    return ports(["tcp", "tcp6"], True), ports(["udp", "udp6"], False)


def free_udp_port(taken: set[int]) -> int:
    """A UDP port free now and not handed out before in this test."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in taken:
            taken.add(port)
            return port


class Node:
    """Ports and config of one cluster node. The link listens on port 0: the node announces
    the port it got through gossip (fewer ports to collide with other tests)."""

    def __init__(self, name: str, taken: set[int]):
        self.name = name
        self.mqtt = free_port()
        self.gossip = free_udp_port(taken)
        self.http = free_port()

    def link_port(self, broker) -> int:
        line = broker.wait_log(r"cluster link listening on 127\.0\.0\.1:\d+")
        return int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))


@pytest.fixture
def cluster(tmp_path, start_broker):
    """Factory: cluster(n=3, sys=False) -> (nodes, brokers), every node seeded with every
    gossip address (its own included). Node 3's name comes from FLEETMQ_NODE_NAME (what the
    operator sets from the pod name), not from the config."""
    token = tmp_path / "admin-token"
    token.write_text(TOKEN)
    secret = tmp_path / "cluster-secret"
    secret.write_text(SECRET + "\n")

    def config_for(node: Node, nodes: list[Node], sys: bool, seed_host: str, extra: dict) -> dict:
        cfg = {
            "listeners": [{"bind": f"127.0.0.1:{node.mqtt}"}],
            "http": {"bind": f"127.0.0.1:{node.http}", "admin_token_file": str(token)},
            "cluster": {
                "gossip_bind": f"127.0.0.1:{node.gossip}",
                "link_bind": "127.0.0.1:0",
                "advertise_host": "127.0.0.1",
                "seeds": [f"{seed_host}:{n.gossip}" for n in nodes],
                "secret_file": str(secret),
                "gossip_interval": GOSSIP_INTERVAL,
                **extra,
            },
        }
        if sys:
            cfg["sys"] = {"interval": "1s"}
        return cfg

    def make(n: int = 3, sys: bool = False, seed_host: str = "127.0.0.1", same_name: bool = False,
             wait: bool = True, config: dict | None = None, name_from_env: bool = True, **extra):
        """`extra`: more keys of the cluster section; `config`: more top-level keys (every node);
        `name_from_env`: node 3 takes its name from FLEETMQ_NODE_NAME (off: from the config,
        so `Broker.restart()` keeps it)."""
        taken: set[int] = set()
        nodes = [Node(f"node-{i + 1}", taken) for i in range(n)]
        brokers = []
        for i, node in enumerate(nodes):
            for attempt in range(3):
                cfg = {**config_for(node, nodes, sys, seed_host, extra), **(config or {})}
                env = {}
                if same_name:
                    cfg["cluster"]["node_name"] = "twin"
                elif i == 2 and name_from_env:
                    env["FLEETMQ_NODE_NAME"] = node.name
                else:
                    cfg["cluster"]["node_name"] = node.name
                try:
                    brokers.append(start_broker(cfg, env=env))
                    break
                except AssertionError:
                    # Ports are picked free but released before the broker binds them; another
                    # process (or a sibling's link port 0) may take one meanwhile. Only that
                    # is retried, with fresh client and HTTP ports (the gossip port is in
                    # every sibling's seeds).
                    # This node's own log (the others keep writing theirs, so "newest" is not it).
                    log = (tmp_path / f"broker-{node.mqtt}.log").read_text()
                    if attempt == 2 or "Address already in use" not in log:
                        raise
                    node.mqtt, node.http = free_port(), free_port()
                    if "gossip_bind" in log:
                        node.gossip = free_udp_port(taken)
        if wait:
            wait_alive(brokers, {n.name for n in nodes})
        return nodes, brokers

    return make


def remote_pair(clients, brokers, topic_filter: str, sub_id: str = "sub", pub_id: str = "pub"):
    """A QoS 1 subscriber to `topic_filter` on node 2 whose route node 1 knows, and a connected
    publisher on node 1: every message the publisher sends crosses the link."""
    sub = clients(brokers[1], sub_id)
    sub.connect()
    sub.subscribe(topic_filter, 1)
    wait_routes(brokers[0], "node-2", 1)
    pub = clients(brokers[0], pub_id)
    pub.connect()
    return sub, pub


def subscribe_all(clients, brokers, topic: str, qos: int) -> list:
    subs = []
    for i, b in enumerate(brokers):
        c = clients(b, f"sub-{i + 1}")
        c.connect()
        assert c.subscribe(topic, qos)[0] == qos
        subs.append(c)
    return subs


@pytest.mark.parametrize("qos", [0, 1])
def test_publish_on_one_node_reaches_every_node_exactly_once(cluster, clients, qos):
    nodes, brokers = cluster()
    subs = subscribe_all(clients, brokers, "fleet/+/temp", qos)
    for other in ("node-2", "node-3"):
        wait_routes(brokers[0], other, 1)
    pub = clients(brokers[0], "pub")
    pub.connect()
    props = publish_props(UserProperty=[("site", "berlin")], ContentType="text/plain")
    for i in range(20):
        pub.publish(f"fleet/d{i}/temp", f"t{i}".encode(), qos=qos, properties=props, wait=qos > 0)
    expected = [f"t{i}".encode() for i in range(20)]
    for i, sub in enumerate(subs):
        sub.wait_messages(20, timeout=10)
        got = sub.settle(0.5)
        assert [m.payload for m in got] == expected, f"node-{i + 1}: each message once, in order"
        assert all(m.qos == qos for m in got)
        assert got[0].properties.UserProperty == [("site", "berlin")], f"node-{i + 1}"
        assert got[0].properties.ContentType == "text/plain"
    # The same-node subscriber was not served a second copy through a peer: counted once out per peer.
    view = cluster_view(brokers[0])
    for m in view["members"]:
        if not m["self"]:
            wait_until(lambda: peer(brokers[0], m["name"])["forwarded_out"] == 20, timeout=5,
                       what=f"20 acknowledged forwards to {m['name']}")
    assert peer(brokers[1], "node-1")["forwarded_in"] == 20
    assert peer(brokers[1], "node-3")["forwarded_in"] == 0, "receivers never re-forward"


def test_messages_only_go_to_nodes_with_matching_filters(cluster, clients):
    nodes, brokers = cluster()
    sub2 = clients(brokers[1], "only-2")
    sub2.connect()
    sub2.subscribe("a/only", 1)
    wait_routes(brokers[0], "node-2", 1)
    wait_routes(brokers[0], "node-3", 0)
    pub = clients(brokers[0], "pub")
    pub.connect()
    pub.publish("a/only", b"x", qos=1, wait=True)
    pub.publish("b/nobody", b"y", qos=1, wait=True)
    assert sub2.wait_message("a/only").payload == b"x"
    time.sleep(0.5)
    assert peer(brokers[0], "node-2")["forwarded_out"] == 1, "b/nobody not forwarded"
    assert peer(brokers[0], "node-3")["forwarded_out"] == 0
    # Unsubscribing withdraws the route from gossip.
    sub2.unsubscribe("a/only")
    wait_routes(brokers[0], "node-2", 0)


def test_shared_group_gets_each_message_once_across_the_cluster(cluster, clients):
    nodes, brokers = cluster()
    members = []
    for i in (1, 2):
        c = clients(brokers[i], f"worker-{i + 1}")
        c.connect()
        c.subscribe("$share/w/jobs/#", 1)
        members.append(c)
    direct = clients(brokers[2], "audit")
    direct.connect()
    direct.subscribe("jobs/#", 1)
    wait_routes(brokers[0], "node-2", 1)
    wait_routes(brokers[0], "node-3", 2)
    pub = clients(brokers[0], "pub")
    pub.connect()
    for i in range(30):
        pub.publish(f"jobs/{i}", str(i).encode(), qos=1)
    expected = {str(i).encode() for i in range(30)}
    wait_until(lambda: sum(len(m.messages) for m in members) >= 30, timeout=10, what="30 jobs delivered")
    got = [msg.payload for m in members for msg in m.settle(0.5)]
    assert sorted(got) == sorted(expected), "each job to exactly one member across the cluster"
    assert all(m.messages for m in members), "both nodes' members get work"
    assert len(direct.wait_messages(30, timeout=10)) == 30 and len(direct.settle(0.3)) == 30, \
        "a plain subscriber on a node serving the group still gets everything once"
    # A member on the publishing node joins: still once per message across three nodes.
    local = clients(brokers[0], "worker-1")
    local.connect()
    local.subscribe("$share/w/jobs/#", 1)
    members.append(local)
    for m in members:
        m.clear()
    for i in range(30, 60):
        pub.publish(f"jobs/{i}", str(i).encode(), qos=1)
    wait_until(lambda: sum(len(m.messages) for m in members) >= 30, timeout=10, what="30 more jobs")
    got = [msg.payload for m in members for msg in m.settle(0.5)]
    assert sorted(got) == sorted(str(i).encode() for i in range(30, 60))
    assert all(m.messages for m in members), [len(m.messages) for m in members]


def test_v5_publisher_sees_remote_subscribers_as_matching(cluster, clients):
    nodes, brokers = cluster()
    sub, pub = remote_pair(clients, brokers, "only/remote", "remote-only")
    rc, _ = pub.publish("only/remote", b"x", qos=1)
    assert rc == 0, f"PUBACK {rc:#x}: a subscriber on another node is a match"
    rc, _ = pub.publish("nobody/anywhere", b"x", qos=1)
    assert rc == 0x10, "No matching subscribers when no node has one"


def test_retained_on_one_node_is_visible_on_the_others(cluster, clients):
    nodes, brokers = cluster()
    for other in ("node-2", "node-3"):
        wait_routes(brokers[0], other, 0)
    pub = clients(brokers[0], "pub")
    pub.connect()
    pub.publish("state/dev1", b"on", qos=1, retain=True, wait=True)

    def retained_on_3():
        try:
            return api(brokers[2], "retained/state%2Fdev1")
        except urllib.error.HTTPError:
            return None
    wait_until(retained_on_3, timeout=10, what="the retained message on node-3")
    late = clients(brokers[2], "late")
    late.connect()
    late.subscribe("state/#", 1)
    msg = late.wait_message("state/dev1")
    assert msg.payload == b"on" and msg.retain
    # Clearing it on node 1 clears it everywhere.
    pub.publish("state/dev1", b"", qos=1, retain=True, wait=True)
    wait_until(lambda: retained_on_3() is None, timeout=10, what="the retained message cleared on node-3")


def test_kill9_node_others_keep_serving_and_restart_rejoins(cluster, clients):
    nodes, brokers = cluster()
    sub3 = clients(brokers[2], "sub-3")
    sub3.connect()
    sub3.subscribe("k/#", 1)
    wait_routes(brokers[0], "node-3", 1)

    brokers[1].kill9()
    wait_alive([brokers[0], brokers[2]], {"node-1", "node-3"})
    assert cluster_view(brokers[0])["alive"] == 2
    assert peer(brokers[0], "node-2")["state"] == "dead"
    pub = clients(brokers[0], "pub")
    pub.connect()
    pub.publish("k/1", b"while-2-down", qos=1, wait=True)
    assert sub3.wait_message("k/1").payload == b"while-2-down"

    restarted = brokers[1].restart()
    wait_alive([brokers[0], restarted, brokers[2]], {"node-1", "node-2", "node-3"})
    sub2 = clients(restarted, "sub-2")
    sub2.connect()
    sub2.subscribe("k/#", 1)
    wait_routes(brokers[0], "node-2", 1)
    pub.publish("k/2", b"after-rejoin", qos=1, wait=True)
    assert sub2.wait_message("k/2").payload == b"after-rejoin"
    assert sub3.wait_message("k/2").payload == b"after-rejoin"
    # And the restarted node forwards too.
    pub2 = clients(restarted, "pub-2")
    pub2.connect()
    pub2.publish("k/3", b"from-2", qos=0)
    assert sub3.wait_message("k/3").payload == b"from-2"


def readyz(broker) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{http_addr(broker)}/readyz", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_a_restarted_node_admits_clients_once_it_knows_the_cluster(cluster, clients):
    # A node binds its listeners before gossip has told it its peers and their routes. A
    # client admitted in between published into a node that forwarded to nobody: acknowledged
    # ("no matching subscribers") and lost for the other nodes' subscribers. Its CONNECT now
    # waits until the node knows the cluster.
    nodes, brokers = cluster(n=2)
    sub = clients(brokers[0], "sub-1")
    sub.connect()
    sub.subscribe("j/#", 1)
    assert brokers[1].stop() == 0
    restarted = brokers[1].restart()  # returns once the MQTT port accepts TCP connections
    pub = clients(restarted, "pub")
    pub.connect(timeout=10)
    rc, _ = pub.publish("j/1", b"first", qos=1, wait=True)
    assert rc == 0, f"PUBACK reason {rc:#x}: the restarted node did not know node-1's subscriber"
    assert sub.wait_message("j/1").payload == b"first"
    assert "cluster: joined" in restarted.log()
    assert readyz(restarted) == (200, "ready\n")


def test_a_delayed_publish_due_during_a_restart_reaches_the_other_nodes(cluster, clients):
    # It is in the node's store and due at once when the node starts again: fired before the
    # node knew its peers' routes it reached nobody on the other nodes.
    nodes, brokers = cluster(n=2)
    sub, pub = remote_pair(clients, brokers, "d/#", "sub-2", "pub-1")
    assert pub.publish("$delayed/2/d/x", b"late", qos=1, wait=True)[0] == 0
    assert brokers[0].stop() == 0
    time.sleep(2.5)  # due while node-1 is down
    brokers[0].restart()
    assert sub.wait_message("d/x", timeout=10).payload == b"late"


def test_a_lone_node_admits_clients_after_the_join_timeout(cluster, clients):
    # Nobody to learn from (the first node of a cluster, a single replica): it waits the join
    # timeout (5 gossip intervals, 2-5 s), not ready meanwhile, then admits clients.
    nodes, brokers = cluster(n=1, gossip_interval="1s")
    assert readyz(brokers[0]) == (503, "joining the cluster\n")
    c = clients(brokers[0], "early")
    c.connect(timeout=10)  # held until the timeout, then accepted
    assert readyz(brokers[0]) == (200, "ready\n")
    assert "no peer found within 5s; admitting clients as the only node" in brokers[0].log()


def test_a_stalled_peer_fills_its_bounded_queue_and_drops_the_newest(cluster, clients):
    # Slow gossip so the frozen node is not declared dead during the test.
    nodes, brokers = cluster(n=2, forward_queue=5, gossip_interval="500ms")
    sub = clients(brokers[1], "slow-sub")
    sub.connect()
    sub.subscribe("q/#", 0)
    wait_routes(brokers[0], "node-2", 1)
    pub = clients(brokers[0], "pub")
    pub.connect()
    brokers[1].proc.send_signal(signal.SIGSTOP)
    try:
        for i in range(400):
            pub.publish(f"q/{i}", str(i).encode(), qos=0)
        pub.publish("q/last", b"sync", qos=1)
        waiting = peer(brokers[0], "node-2")
        # Bounded by the link's in-flight window (the peer's Receive Maximum, 256; ntex-mqtt
        # 8.2 may overshoot it by a few) plus the queue of 5: the rest was dropped.
        assert waiting["queued"] < 300, waiting
        assert waiting["dropped"] == 401 - waiting["queued"], waiting
    finally:
        brokers[1].proc.send_signal(signal.SIGCONT)
    wait_until(lambda: peer(brokers[0], "node-2")["queued"] == 0, timeout=10, what="queue drained")
    m = peer(brokers[0], "node-2")
    assert m["forwarded_out"] + m["dropped"] == 401, m
    got = sub.wait_messages(m["forwarded_out"], timeout=10)
    got = sub.settle(0.5)
    assert len(got) == m["forwarded_out"]
    numbers = [int(x.payload) for x in got if x.payload != b"sync"]
    # Whatever found the queue full was dropped (the link may also pause briefly on write
    # backpressure, so the drops need not all be at the end); what arrives keeps its order.
    assert numbers == sorted(set(numbers)) and numbers[0] == 0, numbers[:20]
    assert f'fleetmq_cluster_messages_total{{peer="node-2",direction="dropped"}} {m["dropped"]}\n' in metrics(brokers[0])
    assert 'fleetmq_cluster_queue_depth{peer="node-2"} 0\n' in metrics(brokers[0])


def test_graceful_stop_leaves_at_once(cluster, clients):
    nodes, brokers = cluster()
    assert brokers[1].stop() == 0
    # "left" is gossiped before the process exits: no failure-detector delay needed.
    wait_until(lambda: (peer(brokers[0], "node-2") or {}).get("state") == "left", timeout=10,
               what="node-2 shown as left")
    assert alive_names(brokers[0]) == {"node-1", "node-3"}


def test_observability_metrics_and_sys(cluster, clients):
    nodes, brokers = cluster(sys=True)
    sys_sub = clients(brokers[0], "sys")
    sys_sub.connect()
    sys_sub.subscribe("$SYS/broker/cluster/members", 0)
    wait_until(lambda: any(m.payload == b"3" for m in sys_sub.messages), timeout=10,
               what="$SYS/broker/cluster/members = 3")
    # Session move counters next to it (nothing moved yet).
    sys_sub.subscribe("$SYS/broker/cluster/sessions/+", 0)
    names = ["taken_over", "handed_over", "drained_out", "drained_in", "connects_refused"]
    wait_until(lambda: {m.topic.rsplit("/", 1)[1] for m in sys_sub.messages if "/sessions/" in m.topic} == set(names),
               timeout=10, what="$SYS/broker/cluster/sessions/*")
    assert all(m.payload == b"0" for m in sys_sub.messages if "/sessions/" in m.topic)
    # Each peer's link state and counters.
    sys_sub.subscribe("$SYS/broker/cluster/peers/+/link", 0)
    wait_until(lambda: {(m.topic, m.payload) for m in sys_sub.messages if m.topic.endswith("/link")}
               >= {("$SYS/broker/cluster/peers/node-2/link", b"connected"),
                   ("$SYS/broker/cluster/peers/node-3/link", b"connected")},
               timeout=10, what="$SYS link states of node-2 and node-3")
    sub = clients(brokers[1], "m-sub")
    sub.connect()
    sub.subscribe("m/#", 0)
    wait_routes(brokers[0], "node-2", 1)
    pub = clients(brokers[0], "m-pub")
    pub.connect()
    pub.publish("m/1", b"x", qos=1, wait=True)
    sub.wait_message("m/1")
    wait_until(lambda: 'fleetmq_cluster_messages_total{peer="node-2",direction="out"} 1\n' in metrics(brokers[0]),
               timeout=5, what="out counter in /metrics")
    text = metrics(brokers[0])
    assert "fleetmq_cluster_members 3\n" in text
    assert 'fleetmq_cluster_link_up{peer="node-2"} 1\n' in text
    assert 'fleetmq_cluster_messages_total{peer="node-1",direction="in"} 1\n' in metrics(brokers[1])
    view = cluster_view(brokers[0])
    assert view["enabled"] is True and view["node"] == "node-1"
    me = next(m for m in view["members"] if m["self"])
    assert me["name"] == "node-1" and me["state"] == "alive"
    assert cluster_view(brokers[2])["node"] == "node-3", "name from FLEETMQ_NODE_NAME"


def test_link_refuses_a_wrong_secret(cluster, clients):
    nodes, brokers = cluster(n=1)
    from helpers import Client
    link = nodes[0].link_port(brokers[0])
    c = Client("127.0.0.1", link, "intruder", V5)
    c.paho.username_pw_set("fleetmq-cluster", "wrong")
    c.connect(expect=0x86)
    c.drop()
    brokers[0].wait_log("cluster link: connection refused")
    ok = Client("127.0.0.1", link, "node-9", V5)
    ok.paho.username_pw_set("fleetmq-cluster", SECRET)
    ok.connect(expect=0)
    ok.drop()


def test_clustering_off_opens_no_cluster_ports(start_broker, cluster):
    plain = start_broker()
    tcp, udp = listening_ports(plain.proc.pid)
    http_port = int(http_addr(plain).rsplit(":", 1)[1])
    assert tcp == {plain.port, http_port}
    assert udp == set()
    # The same probe sees a clustered node's gossip and link sockets.
    nodes, brokers = cluster(n=1)
    tcp, udp = listening_ports(brokers[0].proc.pid)
    assert nodes[0].link_port(brokers[0]) in tcp and nodes[0].gossip in udp


def test_bad_cluster_config_names_the_key(launch, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("cluster:\n  link_bind: 0.0.0.0:7947\n")
    b = launch(["--config", str(cfg)])
    assert b.proc.wait(timeout=10) != 0
    assert "cluster.secret_file" in b.log()
    cfg.write_text("cluster:\n  gossip_bind: 127.0.0.1:7946\n  link_bind: 127.0.0.1:7947\n  bogus: 1\n")
    b = launch(["--config", str(cfg)])
    assert b.proc.wait(timeout=10) != 0
    assert "bogus" in b.log()
    cfg.write_text("cluster:\n  gossip_bind: 127.0.0.1:7946\n  link_bind: 127.0.0.1:7947\n")
    b = launch(["--config", str(cfg), "--check-config", "--cluster-node-name", "bad name"])
    assert b.proc.wait(timeout=10) != 0
    assert "cluster.node_name" in b.log()
    # cluster.tls: a missing file is named with its key; a missing key is named too.
    cfg.write_text(f"cluster:\n  gossip_bind: 127.0.0.1:{free_port()}\n  link_bind: 127.0.0.1:0\n  node_name: n1\n"
                   f"  tls: {{cert_file: {tmp_path}/nope.crt, key_file: {tmp_path}/nope.key, ca_file: {tmp_path}/ca.crt}}\n")
    b = launch(["--config", str(cfg)])
    assert b.proc.wait(timeout=10) != 0
    assert "cluster.tls.ca_file" in b.log() or "cluster.tls.cert_file" in b.log(), b.log()[-2000:]
    cfg.write_text("cluster:\n  gossip_bind: 127.0.0.1:7946\n  link_bind: 127.0.0.1:7947\n  tls: {cert_file: /x}\n")
    b = launch(["--config", str(cfg)])
    assert b.proc.wait(timeout=10) != 0
    assert "key_file" in b.log(), b.log()[-2000:]


def test_seeds_by_dns_name(cluster, clients):
    nodes, brokers = cluster(n=2, seed_host="localhost")
    sub, pub = remote_pair(clients, brokers, "dns/#", "named")
    pub.publish("dns/1", b"x", qos=1)
    assert sub.wait_message("dns/1").payload == b"x"


def test_duplicate_node_names_are_reported(cluster):
    nodes, brokers = cluster(n=2, same_name=True, wait=False)
    # The node started first sees a newer incarnation of its own name alive elsewhere.
    line = brokers[0].wait_log("another live node uses this node name", timeout=CONVERGE)
    assert f"127.0.0.1:{nodes[1].gossip}" in line


def test_cluster_changes_need_a_restart(cluster, clients):
    nodes, brokers = cluster(n=1)
    b = brokers[0]
    config = yaml.safe_load(b.config_path.read_text())
    config["cluster"]["gossip_interval"] = "2s"
    config["cluster"]["forward_queue"] = 5
    b.config_path.write_text(yaml.safe_dump(config))
    req = urllib.request.Request(f"http://{http_addr(b)}/api/v1/reload", method="POST",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
    b.wait_log(r"changed; these take effect after a restart")
    assert "cluster" in b.wait_log(r"changed; these take effect after a restart")
    assert cluster_view(b)["members"][0]["state"] == "alive", "still clustered after the reload"
