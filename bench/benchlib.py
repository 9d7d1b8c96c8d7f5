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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cpu: int) -> list[str]:
    """`taskset -c CPU` when there is more than one CPU and taskset exists, else nothing."""
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all threads included, from /proc/PID/stat."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
