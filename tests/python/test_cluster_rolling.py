"""Rolling restart of a 3-node cluster under continuous QoS 1 traffic (issue 9): every node in
turn is stopped with SIGTERM (drain: its sessions go to the other nodes) and started again on
its data dir, while a publisher keeps publishing and persistent subscribers reconnect wherever
a node is up. Nothing acknowledged to the publisher may be missing at any subscriber, and every
reconnect finds its session. Real broker processes on 127.0.0.1; every wait is bounded."""

from __future__ import annotations

import threading
import time

from helpers import V5, Client, connect_props, wait_until
from test_cluster import cluster, wait_alive  # noqa: F401 (the `cluster` fixture)

SUBSCRIBERS = 3
EXPIRY = connect_props(SessionExpiryInterval=3600)


class Roaming:
    """A persistent v5 client that reconnects to the next live node whenever it loses its
    connection, recording whether each reconnect found its session."""

    def __init__(self, client_id: str, ports: list[int], start: int):
        self.client_id, self.ports, self.index = client_id, ports, start
        self.received: list[int] = []
        self.present: list[bool] = []
        self.client: Client | None = None

    def connect(self, alive) -> None:
        for _ in range(len(self.ports) * 20):
            port = self.ports[self.index % len(self.ports)]
            self.index += 1
            if not alive(port):
                continue
            client = Client("127.0.0.1", port, self.client_id, V5)
            try:
                rc, present, _ = client.connect(clean_start=False, properties=EXPIRY, expect=None, timeout=5)
            except Exception:
                client.stop()
                time.sleep(0.1)
                continue
            if rc != 0:
                client.stop()
                time.sleep(0.2)
                continue
            self.harvest()
            self.client = client
            self.present.append(present)
            return
        raise AssertionError(f"{self.client_id}: no node accepted the reconnect")

    def harvest(self) -> None:
        if self.client is not None:
            with self.client.cond:
                self.received.extend(int(m.payload) for m in self.client.messages)
                self.client.messages.clear()

    def connected(self) -> bool:
        return self.client is not None and self.client.paho.is_connected()


def test_rolling_restart_under_qos1_traffic_loses_nothing_acknowledged(cluster, clients):  # noqa: F811
    nodes, brokers = cluster(3, name_from_env=False)
    ports = [b.port for b in brokers]
    running = {b.port: True for b in brokers}

    def alive(port):
        return running[port]

    subs = [Roaming(f"roam-{i}", ports, i) for i in range(SUBSCRIBERS)]
    for s in subs:
        s.connect(alive)
        assert s.client.subscribe("roll/#", 1)[0] == 1
    # Every node knows every subscriber's route before traffic starts.
    time.sleep(1.5)

    acked: list[int] = []
    refused: list[int] = []
    stop = threading.Event()
    errors: list[str] = []

    def publish():
        seq, target = 0, 0
        pub = None
        while not stop.is_set():
            if pub is None or not pub.paho.is_connected():
                port = ports[target % len(ports)]
                target += 1
                if not running[port]:
                    continue
                pub = Client("127.0.0.1", port, "", V5)
                try:
                    pub.connect(expect=None, timeout=5)
                except Exception:
                    pub = None
                    time.sleep(0.1)
                    continue
            try:
                rc, _ = pub.publish(f"roll/{seq}", str(seq).encode(), qos=1, wait=True)
            except Exception:
                pub.stop()
                pub = None
                continue  # not acknowledged: published again (same sequence number)
            if rc >= 0x80:
                refused.append(rc)
                continue  # refused (e.g. the node is shutting down): not accepted, sent again
            acked.append(seq)
            seq += 1
            time.sleep(0.005)
        if pub is not None:
            pub.stop()

    def roam():
        # Subscribers reconnect as soon as they lose their node, also while it drains.
        while not stop.is_set():
            for s in subs:
                if not s.connected():
                    try:
                        s.connect(alive)
                    except AssertionError as err:
                        errors.append(str(err))
            time.sleep(0.05)

    threads = [threading.Thread(target=publish, daemon=True), threading.Thread(target=roam, daemon=True)]
    for t in threads:
        t.start()
    try:
        for i in range(len(brokers)):
            time.sleep(1.0)
            running[brokers[i].port] = False
            assert brokers[i].stop(timeout=30) == 0, brokers[i].log()[-3000:]
            brokers[i] = brokers[i].restart()
            running[brokers[i].port] = True
            wait_alive(brokers, {n.name for n in nodes}, timeout=20)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not errors, errors
    assert len(acked) > 100, f"only {len(acked)} messages acknowledged"
    want = set(acked)
    for s in subs:
        if not s.connected():
            s.connect(alive)

        def complete():
            s.harvest()
            return want <= set(s.received)

        try:
            wait_until(complete, timeout=20, what="every acknowledged message")
        except AssertionError:
            missing = sorted(want - set(s.received))
            raise AssertionError(f"{s.client_id}: {len(missing)} of {len(want)} acknowledged messages missing, "
                                 f"e.g. {missing[:20]}") from None
        # The first connect creates the session; every later one (on another node) finds it.
        assert s.present[0] is False and all(s.present[1:]), f"{s.client_id}: a reconnect lost the session ({s.present})"
        assert len(s.present) >= 2, "the subscriber moved at least once"
