"""Helpers shared by the benchmark drivers (compare.py, store_bench.py)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]


def target_dir() -> pathlib.Path:
    """The release output directory (honours CARGO_TARGET_DIR and workspace settings)."""
    meta = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    return pathlib.Path(json.loads(meta.stdout)["target_directory"]) / "release"


# Ports handed out by free_port in this process. The kernel may give bind(0) the port it
# just released, so two free_port() calls in a row (two brokers of one run, or a cluster's
# nodes) could collide; the Python tests' copy of this helper (tests/python/conftest.py) hit
# exactly that in CI once.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now and not handed out before in this process."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def pinned(cpu: int) -> list[str]:
    """`taskset -c CPU` when there is more than one CPU and taskset exists, else nothing."""
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all threads included, from /proc/PID/stat."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_nofile():
    """In a child process (`preexec_fn`): open-file soft limit up to the hard limit."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def wait_listening(proc: subprocess.Popen, port: int, log: pathlib.Path, name: str, timeout: float = 60) -> None:
    """Waits until `proc` accepts TCP connections on 127.0.0.1:`port`; raises with the end of
    its log if it exits first or does not listen within `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not start")


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
