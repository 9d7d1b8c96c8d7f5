#!/usr/bin/env python3
"""Store benchmark (issue 4): QoS 1 fan-in throughput with the durable store
(`fsync: always`, `fsync: interval`) against in-memory, in the same run, alternating, and
recovery time for large stored states.

Run from the repository root: `python3 bench/store_bench.py` (or `make bench-store`).
Builds the release binaries, pins the broker to CPU 0 and the load generator to CPU 1
(`taskset`), and writes results to bench/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import pathlib
import re
import socket
import statistics
import subprocess
import tempfile
import time

from benchlib import ROOT, cpu_seconds, free_port, pinned, target_dir


class BrokerProcess:
    def __init__(self, bin_dir: pathlib.Path, work: pathlib.Path, storage: dict, name: str):
        self.port = free_port()
        self.work = work
        self.config = work / f"{name}.yaml"
        self.log = work / f"{name}.log"
        cfg = {
            "listeners": [{"bind": f"127.0.0.1:{self.port}"}],
            "auth": {"allow_anonymous": True},
            "sys": {"interval": "0s"},
            "server": {"workers": 1},
            "limits": {"max_queued_messages": 2_000_000, "max_queued_bytes": 0, "max_inflight": 100},
            "storage": storage,
            "log": {"level": "warn"},
        }
        self.config.write_text(json.dumps(cfg))  # JSON is YAML
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(pinned(0) + [str(bin_dir / "fleetmq-broker"), "--config", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited: {self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("broker did not start")

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def load(bin_dir: pathlib.Path, port: int, duration: float, publishers: int, messages: int) -> dict:
    out = subprocess.run(pinned(1) + [str(bin_dir / "fleetmq-load"), "--port", str(port), "--workload", "fanin",
                                       "--publishers", str(publishers), "--qos", "1", "--persistent",
                                       "--duration", str(duration), "--payload", "64",
                                       "--messages", str(messages // publishers)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def recovery(bin_dir: pathlib.Path, work: pathlib.Path, name: str, fill_args: list[str]) -> dict:
    data = work / f"recovery-{name}"
    subprocess.run([str(bin_dir / "fleetmq-store-fill"), "--data-dir", str(data), *fill_args], check=True,
                   capture_output=True)
    broker = BrokerProcess(bin_dir, work, {"persistence": True, "data_dir": str(data)}, f"recovery-{name}")
    broker.stop()
    # The recovery line is logged at info; the bench runs the broker at warn, so time the
    # start-up from the log of a second start at info level.
    cfg = json.loads(broker.config.read_text())
    cfg["log"]["level"] = "info"
    broker.config.write_text(json.dumps(cfg))
    started = time.monotonic()
    with open(broker.log, "w") as log:
        proc = subprocess.Popen([str(bin_dir / "fleetmq-broker"), "--config", str(broker.config)],
                                stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        text = broker.log.read_text()
        m = re.search(r"elapsed_ms=(\d+)", text)
        if m:
            wall = time.monotonic() - started
            proc.terminate()
            proc.wait(timeout=60)
            counts = dict(re.findall(r"(retained|sessions|messages)=(\d+)", text))
            return {"name": name, "recovery_ms": int(m.group(1)), "process_start_s": round(wall, 2),
                    "disk_bytes": sum(f.stat().st_size for f in data.rglob("*") if f.is_file()),
                    **{k: int(v) for k, v in counts.items()}}
        if proc.poll() is not None:
            raise RuntimeError(text)
        time.sleep(0.05)
    raise RuntimeError("recovery did not finish")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repetitions", type=int, default=3)
    ap.add_argument("--duration", type=float, default=30.0, help="upper bound per run")
    ap.add_argument("--messages", type=int, default=1_500_000,
                    help="total per run; below the queue limit, so the subscriber drains all of it")
    ap.add_argument("--publishers", type=int, default=50)
    ap.add_argument("--retained", type=int, default=1_000_000)
    ap.add_argument("--sessions", type=int, default=10_000)
    ap.add_argument("--queued", type=int, default=100)
    ap.add_argument("--skip-build", action="store_true")
    args = ap.parse_args()

    if not args.skip_build:
        subprocess.run(["cargo", "build", "--release", "-p", "fleetmq-broker", "-p", "fleetmq-bench"], cwd=ROOT, check=True)
    bin_dir = target_dir()
    modes = {
        "memory": {"persistence": False},
        "fsync-always": {"persistence": True, "fsync": "always"},
        "fsync-interval": {"persistence": True, "fsync": "interval", "fsync_interval": "50ms"},
    }
    results: dict[str, list[dict]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="fleetmq-bench-") as tmp:
        work = pathlib.Path(tmp)
        for rep in range(args.repetitions):
            for mode, storage in modes.items():
                storage = {**storage, "data_dir": str(work / f"data-{mode}-{rep}")}
                broker = BrokerProcess(bin_dir, work, storage, f"{mode}-{rep}")
                cpu0 = broker.cpu_seconds()
                r = load(bin_dir, broker.port, args.duration, args.publishers, args.messages)
                r["broker_cpu_s"] = round(broker.cpu_seconds() - cpu0, 2)
                broker.stop()
                results[mode].append(r)
                print(f"rep {rep + 1} {mode:15} {r['publish_rate']:>10.0f} acked msg/s  lost {r['lost']}  "
                      f"dups {r['duplicates']}  p99 {r['latency_p99_ms']:.1f} ms  broker cpu {r['broker_cpu_s']} s",
                      flush=True)
        rec = [
            recovery(bin_dir, work, "retained", ["--retained", str(args.retained)]),
            recovery(bin_dir, work, "sessions", ["--sessions", str(args.sessions), "--queued", str(args.queued)]),
        ]
    med = {m: statistics.median(r["publish_rate"] for r in rs) for m, rs in results.items()}
    lines = [
        f"# Store benchmark {dt.datetime.now().isoformat(timespec='seconds')}",
        "",
        f"QoS 1 fan-in, {args.publishers} publishers -> 1 persistent subscriber, 64 B payloads, "
        f"{args.messages} messages per run (acked rate over the publishing phase; the subscriber then "
        f"drains the queue, so 'lost' counts acknowledged messages never delivered), "
        f"{args.repetitions} repetitions alternating; broker on CPU 0, "
        "load generator on CPU 1 (taskset), release build, 1 worker.",
        "",
        "| mode | median acked msg/s | vs memory | broker CPU per message | lost | duplicates |",
        "|---|---|---|---|---|---|",
    ]
    for m in modes:
        lost = sum(r["lost"] for r in results[m])
        dups = sum(r["duplicates"] for r in results[m])
        cpu_us = statistics.median(r["broker_cpu_s"] * 1e6 / max(r["acknowledged"], 1) for r in results[m])
        lines.append(f"| {m} | {med[m]:.0f} | {med[m] / med['memory']:.0%} | {cpu_us:.2f} µs | {lost} | {dups} |")
    lines += ["", "| recovery | state | time in broker | process start to ready |", "|---|---|---|---|"]
    for r in rec:
        state = (f"{r.get('retained', 0)} retained" if r["name"] == "retained"
                 else f"{r.get('sessions', 0)} sessions, {r.get('messages', 0)} queued")
        lines.append(f"| {r['name']} | {state} ({r['disk_bytes'] / 1e6:.0f} MB on disk) | {r['recovery_ms']} ms | "
                     f"{r['process_start_s']} s |")
    report = "\n".join(lines) + "\n"
    print("\n" + report)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    (out / f"store-{stamp}.md").write_text(report)
    (out / f"store-{stamp}.json").write_text(json.dumps({"runs": results, "recovery": rec}, indent=1))


if __name__ == "__main__":
    main()
