#!/usr/bin/env python3
"""FleetMQ and Mosquitto side by side in one run (issue 6).

Every workload runs against a fresh FleetMQ (release build, 1 worker, in memory) and a fresh
Debian `mosquitto` (persistence off) with the same limits, alternating the order per
repetition. The broker is pinned to CPU 0 and the load generator (`fleetmq-load`, single
threaded) to CPU 1 with `taskset`. Broker CPU comes from /proc/PID/stat (all threads), so
each throughput result is "messages delivered per broker CPU-second".

Run from the repository root: `python3 bench/compare.py` (or `make bench`). Writes
bench/results/compare-<time>.{md,json} and the "Latest run" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pathlib
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
import time

from benchlib import ROOT, cpu_seconds, free_port, pinned, raise_nofile, stop, target_dir, wait_listening
INFLIGHT = 100  # broker in-flight window and the load generator's window, both brokers

# (name, fleetmq-load arguments, messages per publisher for 64 B, for 1 KiB). Counts are sized
# for about 400k (64 B) and 600k (1 KiB) deliveries per run, well inside the queue limits, so
# every run drains completely and QoS 1 loss means loss. The 1 KiB runs were 150k deliveries
# until 4582d46: about 0.3 s of FleetMQ CPU, where its fan-in QoS 0 figure swung between 375k
# and 600k msg/CPU-s from run to run; at 600k deliveries three runs read 577k to 600k.
THROUGHPUT = [
    ("fan-in 50→1", ["--workload", "fanin", "--publishers", "50", "--subscribers", "1"], 8000, 12000),
    ("fan-out 1→100", ["--workload", "fanout", "--subscribers", "100"], 4000, 6000),
    ("pairs 500", ["--workload", "pairs", "--publishers", "500"], 800, 1200),
]
# Fixed-rate QoS 1 runs for latency: (name, arguments, total publish rate per second).
LATENCY = [
    ("fan-in 50→1 @10k/s", ["--workload", "fanin", "--publishers", "50", "--subscribers", "1"], 10_000),
    ("pairs 500 @10k/s", ["--workload", "pairs", "--publishers", "500"], 10_000),
    ("fan-out 1→100 @500/s", ["--workload", "fanout", "--subscribers", "100"], 500),
]


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.access(p, os.X_OK)), None)


class Broker:
    """A broker process pinned to CPU 0."""

    name = ""

    def __init__(self, work: pathlib.Path, tag: str):
        self.port = free_port()
        self.work = work
        self.log = work / f"{self.name}-{tag}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(pinned(0) + self.command(work, tag), stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=raise_nofile)
        wait_listening(self.proc, self.port, self.log, self.name)

    def command(self, work: pathlib.Path, tag: str) -> list[str]:
        raise NotImplementedError

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def rss_kib(self) -> int:
        status = pathlib.Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))

    def stop(self):
        stop(self.proc)


class FleetMQ(Broker):
    name = "fleetmq"
    bin_dir = pathlib.Path()

    def command(self, work, tag):
        config = work / f"fleetmq-{tag}.yaml"
        config.write_text(json.dumps({  # JSON is YAML
            "listeners": [{"bind": f"127.0.0.1:{self.port}"}],
            "auth": {"allow_anonymous": True},
            "sys": {"interval": "0s"},
            "server": {"workers": 1},
            "limits": {"max_queued_messages": 1_000_000, "max_queued_bytes": 0, "max_inflight": INFLIGHT},
            "storage": {"persistence": False, "data_dir": str(work / f"data-{tag}")},
            "http": {"enabled": False},
            "log": {"level": "warn"},
        }))
        return [str(self.bin_dir / "fleetmq-broker"), "--config", str(config)]


class Mosquitto(Broker):
    name = "mosquitto"

    def command(self, work, tag):
        config = work / f"mosquitto-{tag}.conf"
        # Same limits as FleetMQ; TCP_NODELAY as FleetMQ (ntex) sets it, so latency compares
        # the brokers, not Nagle's algorithm.
        config.write_text("\n".join([
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence false",
            f"max_inflight_messages {INFLIGHT}",
            "max_queued_messages 0",
            "max_queued_bytes 0",
            "set_tcp_nodelay true",
            "sys_interval 0",
            "log_type error",
            "log_dest stderr",
            "",
        ]))
        return [mosquitto_binary(), "-c", str(config)]


def load(bin_dir: pathlib.Path, port: int, args: list[str], tag: str) -> dict:
    out = subprocess.run(pinned(1) + [str(bin_dir / "fleetmq-load"), "--port", str(port), "--id", tag,
                                       "--window", str(INFLIGHT), *args],
                         capture_output=True, text=True, timeout=600, preexec_fn=raise_nofile)
    if out.returncode != 0:
        raise RuntimeError(f"fleetmq-load {' '.join(args)}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measured(broker_cls, work: pathlib.Path, bin_dir: pathlib.Path, args: list[str], tag: str) -> dict:
    broker = broker_cls(work, tag)
    try:
        cpu0 = broker.cpu_seconds()
        r = load(bin_dir, broker.port, args, tag)
        r["broker_cpu_s"] = broker.cpu_seconds() - cpu0
        r["per_cpu_s"] = r["delivered"] / max(r["broker_cpu_s"], 1e-3)
        return r
    finally:
        broker.stop()


def idle(broker_cls, work: pathlib.Path, bin_dir: pathlib.Path, connections: int, tag: str) -> dict:
    broker = broker_cls(work, tag)
    try:
        time.sleep(0.5)
        rss0 = broker.rss_kib()
        proc = subprocess.Popen(pinned(1) + [str(bin_dir / "fleetmq-load"), "--port", str(broker.port), "--id", tag,
                                             "--workload", "idle", "--connections", str(connections)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=raise_nofile)
        try:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"fleetmq-load idle: {proc.stderr.read()[-2000:]}")
            r = json.loads(line)
            time.sleep(1.0)  # let the broker settle its per-connection buffers
            rss1 = broker.rss_kib()
            proc.stdin.write("\n")
            proc.stdin.flush()
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        r["rss_before_kib"], r["rss_after_kib"] = rss0, rss1
        r["bytes_per_connection"] = (rss1 - rss0) * 1024 / max(r["connections"], 1)
        return r
    finally:
        broker.stop()


def med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def losses(runs: list[dict]) -> str:
    """`lost/duplicates` summed over the repetitions."""
    return f"{sum(r['lost'] for r in runs)}/{sum(r['duplicates'] for r in runs)}"


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = int(re.search(r"MemTotal:\s+(\d+)", pathlib.Path("/proc/meminfo").read_text()).group(1)) // 1024 // 1024
    mosq = subprocess.run([mosquitto_binary(), "-h"], capture_output=True, text=True).stdout.splitlines()[:1]
    return f"{os.cpu_count()} × {cpu}, {mem} GiB RAM, Linux {platform.release()}, {' '.join(mosq).strip()}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repetitions", type=int, default=3)
    ap.add_argument("--only", default="", help="run only workloads whose name contains this text")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply message counts (0.1 for a quick look)")
    ap.add_argument("--latency-seconds", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=10_000, help="idle connections")
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="print only; leave bench/results and BENCHMARKS.md")
    args = ap.parse_args()
    if mosquitto_binary() is None:
        raise SystemExit("mosquitto not found: apt-get install mosquitto (make bench does)")
    if not args.skip_build:
        subprocess.run(["cargo", "build", "--release", "-p", "fleetmq-broker", "--bin", "fleetmq-broker",
                        "-p", "fleetmq-bench", "--bin", "fleetmq-load"], cwd=ROOT, check=True)
    bin_dir = target_dir()
    FleetMQ.bin_dir = bin_dir
    brokers = [FleetMQ, Mosquitto]
    print(f"broker pinned to CPU 0, load generator to CPU 1 (taskset: {'yes' if pinned(0) else 'NOT available'})",
          flush=True)

    cases = []  # (kind, name, qos, payload, load args)
    for name, wargs, m64, m1k in THROUGHPUT:
        for qos in (0, 1):
            for payload, per in ((64, m64), (1024, m1k)):
                per = max(1, int(per * args.scale))
                cases.append(("throughput", f"{name} QoS{qos} {payload} B", qos, payload,
                              [*wargs, "--qos", str(qos), "--payload", str(payload), "--messages", str(per),
                               "--duration", "120"]))
    for name, wargs, rate in LATENCY:
        cases.append(("latency", f"{name} QoS1 64 B", 1, 64,
                      [*wargs, "--qos", "1", "--payload", "64", "--rate", str(rate),
                       "--duration", str(args.latency_seconds)]))
    cases.append(("idle", f"idle {args.connections} connections", None, None, []))
    cases = [c for c in cases if args.only.lower() in c[1].lower()]

    results: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="fleetmq-compare-") as tmp:
        work = pathlib.Path(tmp)
        for i, (kind, name, _, _, largs) in enumerate(cases):
            results[name] = {b.name: [] for b in brokers}
            for rep in range(args.repetitions):
                order = brokers if rep % 2 == 0 else brokers[::-1]
                for b in order:
                    tag = f"c{i}r{rep}{b.name[0]}"
                    if kind == "idle":
                        r = idle(b, work, bin_dir, args.connections, tag)
                        summary = (f"{r['bytes_per_connection']:.0f} B/conn, {r['connect_rate']:.0f} conn/s, "
                                   f"failed {r['failed']}")
                    else:
                        r = measured(b, work, bin_dir, largs, tag)
                        summary = (f"{r['delivered']:>8} delivered, {r['per_cpu_s']:>9.0f} msg/CPU-s, "
                                   f"{r['delivery_rate']:>8.0f} msg/s, p50 {r['latency_p50_ms']:.2f} ms, "
                                   f"p99 {r['latency_p99_ms']:.2f} ms, lost {r['lost']}, dups {r['duplicates']}")
                    results[name][b.name].append(r)
                    print(f"[{name}] rep {rep + 1} {b.name:9} {summary}", flush=True)

    report = render(cases, results, args)
    print("\n" + report)
    if not args.no_write:
        out = ROOT / "bench" / "results"
        out.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        (out / f"compare-{stamp}.md").write_text(report)
        (out / f"compare-{stamp}.json").write_text(json.dumps(results, indent=1))
        update_benchmarks_md(report, f"bench/results/compare-{stamp}.md")
        print(f"written: bench/results/compare-{stamp}.md, .json and BENCHMARKS.md")


def render(cases, results, args) -> str:
    lines = [
        f"Run {dt.datetime.now().isoformat(timespec='seconds')} on {machine()}.",
        f"Medians of {args.repetitions} alternating repetitions; broker on CPU 0, load generator on CPU 1 "
        f"(taskset); FleetMQ release build, 1 worker, in memory; Mosquitto persistence off; both with "
        f"in-flight {INFLIGHT}, unlimited queues, TCP_NODELAY."
        + (f" Message counts scaled ×{args.scale}." if args.scale != 1.0 else ""),
        "",
    ]
    tp = [c for c in cases if c[0] == "throughput"]
    if tp:
        lines += [
            "### Throughput: messages delivered per broker CPU-second",
            "",
            "| workload | FleetMQ msg/CPU-s | Mosquitto msg/CPU-s | ratio | FleetMQ msg/s | Mosquitto msg/s "
            "| QoS1 lost / dups (F, M) |",
            "|---|---|---|---|---|---|---|",
        ]
        for _, name, qos, _, _ in tp:
            f, m = results[name]["fleetmq"], results[name]["mosquitto"]
            loss = f"{losses(f)}, {losses(m)}" if qos == 1 else "(QoS 0)"
            lines.append(f"| {name} | {med(f, 'per_cpu_s'):,.0f} | {med(m, 'per_cpu_s'):,.0f} | "
                         f"**{med(f, 'per_cpu_s') / med(m, 'per_cpu_s'):.2f}×** | {med(f, 'delivery_rate'):,.0f} | "
                         f"{med(m, 'delivery_rate'):,.0f} | {loss} |")
        lines.append("")
    lat = [c for c in cases if c[0] == "latency"]
    if lat:
        lines += [
            "### Latency at a fixed rate (end to end, publisher send → subscriber receive)",
            "",
            "| workload | FleetMQ p50 | Mosquitto p50 | FleetMQ p99 | Mosquitto p99 | FleetMQ msg/CPU-s "
            "| Mosquitto msg/CPU-s | lost / dups (F, M) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for _, name, _, _, _ in lat:
            f, m = results[name]["fleetmq"], results[name]["mosquitto"]
            lines.append(
                f"| {name} | {med(f, 'latency_p50_ms'):.2f} ms | {med(m, 'latency_p50_ms'):.2f} ms | "
                f"{med(f, 'latency_p99_ms'):.2f} ms | {med(m, 'latency_p99_ms'):.2f} ms | "
                f"{med(f, 'per_cpu_s'):,.0f} | {med(m, 'per_cpu_s'):,.0f} | {losses(f)}, {losses(m)} |")
        lines.append("")
        for _, name, _, _, _ in lat:
            f, m = results[name]["fleetmq"], results[name]["mosquitto"]
            if name.startswith("fan-out") and all("last_delivery_p50_ms" in r for r in f + m):
                lines += [
                    f"{name}, per message (medians): first of its deliveries "
                    f"{med(f, 'first_delivery_p50_ms'):.2f} ms (FleetMQ) / {med(m, 'first_delivery_p50_ms'):.2f} ms "
                    f"(Mosquitto), last {med(f, 'last_delivery_p50_ms'):.2f} / {med(m, 'last_delivery_p50_ms'):.2f} ms"
                    + (f" (90th percentile over the messages {med(f, 'last_delivery_p90_ms'):.2f} / "
                       f"{med(m, 'last_delivery_p90_ms'):.2f} ms)"
                       if all("last_delivery_p90_ms" in r for r in f + m) else "")
                    + f"; p99.9 of all deliveries {med(f, 'latency_p999_ms'):.2f} / {med(m, 'latency_p999_ms'):.2f} ms.",
                    "",
                ]
    idle_cases = [c for c in cases if c[0] == "idle"]
    if idle_cases:
        lines += [
            "### Idle connections (MQTT 3.1.1, keep-alive 0)",
            "",
            "| | connections | RSS per connection | connect rate | failed |",
            "|---|---|---|---|---|",
        ]
        name = idle_cases[0][1]
        for b in ("fleetmq", "mosquitto"):
            rs = results[name][b]
            lines.append(f"| {b} | {med(rs, 'connections'):,.0f} | {med(rs, 'bytes_per_connection') / 1024:.2f} KiB | "
                         f"{med(rs, 'connect_rate'):,.0f} /s | {sum(r['failed'] for r in rs)} |")
        lines.append("")
    return "\n".join(lines)


def update_benchmarks_md(report: str, source: str):
    path = ROOT / "BENCHMARKS.md"
    begin, end = "<!-- latest-run:begin -->", "<!-- latest-run:end -->"
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n## Latest run\n\n{begin}\n{end}\n"
    if begin not in text:
        text += f"\n## Latest run\n\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{report}\nFull data: `{source}` (and `.json`).\n{end}{tail}")


if __name__ == "__main__":
    main()
