#!/usr/bin/env python3
"""A 3-node FleetMQ cluster against 1 node, same workloads, same run (issue 9).

Each workload runs against one node (every client on it) and against a 3-node cluster on
loopback (clients spread over the nodes round robin, so most deliveries cross a node). Release
build, 1 worker per node, in memory, 100 ms gossip rounds. Reports deliveries per second, loss
and duplicates (sequence numbers), latency, and the brokers' CPU summed over all nodes
(/proc/PID/stat), so the cost of forwarding shows as CPU-seconds per million deliveries.

On a 2-core machine three nodes share the cores with the load generator: the figures measure
the overhead of crossing nodes, not scale-out. Run: `python3 bench/cluster_bench.py` (or
`make bench-cluster`). Writes bench/results/cluster-<time>.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import pathlib
import statistics
import subprocess
import tempfile
import time
import urllib.request

from benchlib import ROOT, cpu_seconds, free_port, raise_nofile, stop, target_dir, wait_listening

TOKEN = "cluster-bench"
# (name, fleetmq-load arguments, messages per publisher)
WORKLOADS = [
    ("fan-in 48→1 QoS1", ["--workload", "fanin", "--publishers", "48", "--subscribers", "1", "--qos", "1"], 4000),
    ("fan-out 1→99 QoS1", ["--workload", "fanout", "--subscribers", "99", "--qos", "1"], 2000),
    ("pairs 300 QoS1", ["--workload", "pairs", "--publishers", "300", "--qos", "1"], 500),
    ("fan-out 1→99 QoS0", ["--workload", "fanout", "--subscribers", "99", "--qos", "0"], 2000),
]


class Node:
    def __init__(self, work: pathlib.Path, bin_dir: pathlib.Path, name: str, peers: list[int] | None,
                 gossip: int | None, secret: pathlib.Path, token: pathlib.Path):
        self.name, self.port, self.http = name, free_port(), free_port()
        config = {
            "listeners": [{"bind": f"127.0.0.1:{self.port}"}],
            "auth": {"allow_anonymous": True},
            "sys": {"interval": "0s"},
            "server": {"workers": 1},
            "limits": {"max_queued_messages": 1_000_000, "max_queued_bytes": 0, "max_inflight": 100},
            "storage": {"persistence": False, "data_dir": str(work / f"data-{name}")},
            "http": {"bind": f"127.0.0.1:{self.http}", "admin_token_file": str(token)},
            "log": {"level": "warn"},
        }
        if peers is not None:
            config["cluster"] = {
                "node_name": name, "gossip_bind": f"127.0.0.1:{gossip}", "link_bind": f"127.0.0.1:{free_port()}",
                "advertise_host": "127.0.0.1", "seeds": [f"127.0.0.1:{p}" for p in peers],
                "secret_file": str(secret), "gossip_interval": "100ms", "forward_queue": 1_000_000,
            }
        path = work / f"{name}.yaml"
        path.write_text(json.dumps(config))
        self.log = work / f"{name}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([str(bin_dir / "fleetmq-broker"), "--config", str(path)], stdout=log,
                                         stderr=subprocess.STDOUT, preexec_fn=raise_nofile)
        wait_listening(self.proc, self.port, self.log, name, timeout=30)

    def alive(self) -> int:
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}/api/v1/cluster",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())["alive"]

    def stop(self):
        stop(self.proc)


def start(work: pathlib.Path, bin_dir: pathlib.Path, n: int, tag: str) -> list[Node]:
    secret, token = work / "secret", work / "token"
    secret.write_text("bench-secret")
    token.write_text(TOKEN)
    if n == 1:
        return [Node(work, bin_dir, f"{tag}-single", None, None, secret, token)]
    gossip = [free_port() for _ in range(n)]
    nodes = [Node(work, bin_dir, f"{tag}-node-{i + 1}", gossip, gossip[i], secret, token) for i in range(n)]
    deadline = time.monotonic() + 30
    while any(node.alive() != n for node in nodes):
        if time.monotonic() > deadline:
            raise RuntimeError("cluster did not converge")
        time.sleep(0.1)
    return nodes


def run(bin_dir: pathlib.Path, work: pathlib.Path, n: int, args: list[str], messages: int, tag: str) -> dict:
    nodes = start(work, bin_dir, n, tag)
    try:
        ports = ",".join(str(node.port) for node in nodes)
        # Publishers start one node further than subscribers, so pair n's two clients (and the
        # fan-in/fan-out publisher and subscriber 0) sit on different nodes.
        pub_ports = ",".join(str(node.port) for node in nodes[1:] + nodes[:1])
        cpu0 = sum(cpu_seconds(node.proc.pid) for node in nodes)
        out = subprocess.run([str(bin_dir / "fleetmq-load"), "--port", str(nodes[0].port), "--sub-ports", ports,
                              "--pub-ports", pub_ports, "--settle", "2" if n > 1 else "0", "--id", tag,
                              "--messages", str(messages), "--duration", "60", *args],
                             capture_output=True, text=True, timeout=600, preexec_fn=raise_nofile)
        if out.returncode != 0:
            raise RuntimeError(f"fleetmq-load {' '.join(args)}: {out.stderr[-2000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r["broker_cpu_s"] = sum(cpu_seconds(node.proc.pid) for node in nodes) - cpu0
        r["cpu_s_per_million"] = r["broker_cpu_s"] / max(r["delivered"], 1) * 1e6
        return r
    finally:
        for node in nodes:
            node.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repetitions", type=int, default=3)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "fleetmq-broker", "--bin", "fleetmq-broker",
                    "-p", "fleetmq-bench", "--bin", "fleetmq-load"], cwd=ROOT, check=True)
    bin_dir = target_dir()
    rows, raw = [], {}
    with tempfile.TemporaryDirectory(prefix="fleetmq-cluster-bench-") as tmp:
        work = pathlib.Path(tmp)
        for name, load_args, messages in WORKLOADS:
            results = {1: [], 3: []}
            for rep in range(args.repetitions):
                for n in ((1, 3) if rep % 2 == 0 else (3, 1)):
                    tag = f"r{rep}-n{n}-{len(raw)}"
                    results[n].append(run(bin_dir, work, n, load_args, messages, tag))
            raw[name] = results
            med = {n: {k: statistics.median(r[k] for r in rs) for k in
                       ("delivery_rate", "latency_p50_ms", "latency_p99_ms", "cpu_s_per_million")}
                   for n, rs in results.items()}
            lost = {n: (sum(r["lost"] for r in rs), sum(r["duplicates"] for r in rs)) for n, rs in results.items()}
            rows.append((name, med, lost))
            print(f"{name}: 1 node {med[1]['delivery_rate']:,.0f}/s, 3 nodes {med[3]['delivery_rate']:,.0f}/s",
                  flush=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    lines = [
        f"# Cluster benchmark {stamp} (medians of {args.repetitions})", "",
        "3 nodes on one machine (loopback), clients spread round robin over the nodes, vs 1 node with every",
        "client; 1 worker per node, in memory. CPU is summed over the nodes.", "",
        "| workload | deliveries/s 1 node | 3 nodes | p50 / p99 ms 1 node | 3 nodes | CPU-s per 1M deliveries 1 node | 3 nodes | lost/dups 1, 3 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, med, lost in rows:
        lines.append(
            f"| {name} | {med[1]['delivery_rate']:,.0f} | {med[3]['delivery_rate']:,.0f} "
            f"| {med[1]['latency_p50_ms']:.2f} / {med[1]['latency_p99_ms']:.2f} "
            f"| {med[3]['latency_p50_ms']:.2f} / {med[3]['latency_p99_ms']:.2f} "
            f"| {med[1]['cpu_s_per_million']:.2f} | {med[3]['cpu_s_per_million']:.2f} "
            f"| {lost[1][0]}/{lost[1][1]}, {lost[3][0]}/{lost[3][1]} |")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"cluster-{stamp}.md").write_text("\n".join(lines) + "\n")
    (out / f"cluster-{stamp}.json").write_text(json.dumps(raw, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
