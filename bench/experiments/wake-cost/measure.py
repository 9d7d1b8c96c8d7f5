#!/usr/bin/env python3
"""Who pays for waking an idle broker: fan-out 1→100 at 500 msg/s, FleetMQ with and without
the spin shim (spin.c), and Mosquitto, alternating. Issue 6 evidence; see README.md.

Per variant it prints medians of the load generator's latency figures, the load generator's
own CPU time (from wait4), the broker's CPU time (/proc/PID/stat) and the broker's context
switches (all threads, /proc/PID/task/*/status).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # bench/

import compare  # noqa: E402  (bench/compare.py: the same broker configurations as make bench)
from benchlib import pinned, raise_nofile, target_dir  # noqa: E402


def context_switches(pid: int) -> int:
    total = 0
    for status in pathlib.Path(f"/proc/{pid}/task").glob("*/status"):
        for line in status.read_text().splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def spinning(base: type[compare.Broker], shim: pathlib.Path, spin_us: int) -> type[compare.Broker]:
    """`base` started under the shim."""

    class Spinning(base):
        def command(self, work, tag):
            return ["env", f"LD_PRELOAD={shim}", f"SPIN_US={spin_us}", *super().command(work, tag)]

    return Spinning


def one(broker_cls, work: pathlib.Path, bin_dir: pathlib.Path, args: list[str], tag: str) -> dict:
    broker = broker_cls(work, tag)
    try:
        cpu0, cs0 = broker.cpu_seconds(), context_switches(broker.proc.pid)
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(pinned(1) + [str(bin_dir / "fleetmq-load"), "--port", str(broker.port),
                                                 "--id", tag, "--window", str(compare.INFLIGHT), *args],
                                    stdout=out, stderr=err, text=True, preexec_fn=raise_nofile)
            # wait4 rather than wait: the load generator's own CPU time comes with it.
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            if proc.returncode != 0:
                raise RuntimeError(f"fleetmq-load: {err.read()[-2000:]}")
            r = json.loads(out.read().strip().splitlines()[-1])
        r["load_cpu_s"] = usage.ru_utime + usage.ru_stime
        r["broker_cpu_s"] = broker.cpu_seconds() - cpu0
        r["broker_context_switches"] = context_switches(broker.proc.pid) - cs0
        return r
    finally:
        broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repetitions", type=int, default=3)
    ap.add_argument("--spin-us", type=int, default=10, help="the shim's spin before blocking, µs")
    ap.add_argument("--qos", type=int, default=1)
    ap.add_argument("--duration", type=int, default=10)
    opts = ap.parse_args()
    if not compare.mosquitto_binary():
        sys.exit("mosquitto is not installed")
    bin_dir = target_dir()
    compare.FleetMQ.bin_dir = bin_dir
    with tempfile.TemporaryDirectory(prefix="fleetmq-wake-") as tmp:
        work = pathlib.Path(tmp)
        shim = work / "spin.so"
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(shim), str(HERE / "spin.c"), "-ldl"], check=True)
        variants = {
            "fleetmq": compare.FleetMQ,
            f"fleetmq + spin {opts.spin_us} µs": spinning(compare.FleetMQ, shim, opts.spin_us),
            "mosquitto": compare.Mosquitto,
        }
        args = ["--workload", "fanout", "--subscribers", "100", "--qos", str(opts.qos), "--payload", "64",
                "--rate", "500", "--duration", str(opts.duration)]
        results: dict[str, list[dict]] = {name: [] for name in variants}
        for rep in range(opts.repetitions):
            order = list(variants) if rep % 2 == 0 else list(variants)[::-1]
            for name in order:
                r = one(variants[name], work, bin_dir, args, f"w{rep}")
                results[name].append(r)
                print(f"{name:>24}: p99 {r['latency_p99_ms']:.3f} ms, last delivery p50 "
                      f"{r['last_delivery_p50_ms']:.3f} ms, load generator {r['load_cpu_s']:.2f} CPU-s, "
                      f"broker {r['broker_cpu_s']:.2f} CPU-s, {r['broker_context_switches']} context switches",
                      flush=True)
            shutil.rmtree(work / f"data-w{rep}", ignore_errors=True)
    print(f"\nfan-out 1→100 @500/s QoS {opts.qos}, medians of {opts.repetitions}:")
    keys = [("latency_p99_ms", "p99 ms"), ("first_delivery_p50_ms", "first p50 ms"),
            ("last_delivery_p50_ms", "last p50 ms"), ("last_delivery_p90_ms", "last p90 ms"),
            ("load_cpu_s", "load CPU-s"), ("broker_cpu_s", "broker CPU-s"),
            ("broker_context_switches", "broker cs")]
    print("| variant | " + " | ".join(label for _, label in keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, rs in results.items():
        cells = [f"{statistics.median(r[k] for r in rs):,.3f}" if k != "broker_context_switches"
                 else f"{statistics.median(r[k] for r in rs):,.0f}" for k, _ in keys]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
