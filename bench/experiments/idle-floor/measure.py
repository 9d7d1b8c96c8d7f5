"""RSS per idle MQTT 3.1.1 connection (10,000, keep-alive 0) for the two floor variants and
the FleetMQ broker, with bench's own load generator. Run from the repository root after
`cargo build --release -p fleetmq-bench` and, here, `cargo build --release`."""

import json
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[3]
HERE = pathlib.Path(__file__).resolve().parent
LOAD = ROOT / "target/release/fleetmq-load"


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def raise_nofile():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def measure(cmd: list[str], port: int, n: int = 10_000) -> tuple[int, float]:
    server = subprocess.Popen(cmd, preexec_fn=raise_nofile, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        before = rss_kib(server.pid)
        load = subprocess.Popen([str(LOAD), "--port", str(port), "--id", "floor", "--workload", "idle",
                                 "--connections", str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, preexec_fn=raise_nofile)
        result = json.loads(load.stdout.readline())
        time.sleep(1.0)
        after = rss_kib(server.pid)
        load.stdin.write("\n")
        load.stdin.flush()
        load.wait(timeout=60)
        return result["connections"], (after - before) * 1024 / max(result["connections"], 1)
    finally:
        server.kill()
        server.wait()


def main():
    target = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "target"
    config = pathlib.Path(tempfile.mkdtemp()) / "fleetmq-idle.yaml"
    config.write_text("listeners: [{bind: '127.0.0.1:18901'}]\nserver: {workers: 1}\nhttp: {enabled: false}\n"
                      "sys: {interval: 0s}\nstorage: {persistence: false, data_dir: /tmp/idle-floor-data}\n")
    for name, cmd, port in [
        ("tokio task + ntex-mqtt codec", [str(target / "release/tokio-loop"), "18902"], 18902),
        ("ntex Io + ntex-mqtt codec", [str(target / "release/ntex-io-loop"), "18900"], 18900),
        ("fleetmq-broker (ntex-mqtt server)", [str(ROOT / "target/release/fleetmq-broker"), "--config", str(config)],
         18901),
    ]:
        connections, per = measure(cmd, port)
        print(f"{name:36} {connections:6} connections  {per / 1024:6.2f} KiB per connection")


if __name__ == "__main__":
    main()
