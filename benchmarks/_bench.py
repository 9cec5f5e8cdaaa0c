"""Shared by the benchmarks: a relay in a subprocess, CPU clocks, and honest summaries."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASE_ID = 1730621826053000
# A key shaped like a real one (new-api: "sk-" + 48 letters and digits). Its value matters:
# every answer is searched for it (redaction), and a key sharing a prefix with text the
# relay repeats in every task ("bench-..." vs "benchmark prompt") makes that search slower
# than it is for users.
KEY = "sk-" + "Qm7rT2xV9kLp4Wz8Nc3Hy6Bd1Fg5Js0A" + "uE7iO2aR4tY9pK3m"


@contextmanager
def relay(
    n: int, *, shape: str = "running", cost_ms: float = 0.0, cost_us: float = 0.0
) -> Iterator[str]:
    """Serve ``n`` tasks from ``_mini_relay.py`` in a subprocess (its own core); yields
    its base URL and stops it afterwards."""
    fd, port_file = tempfile.mkstemp(prefix="quickmj-bench-port-")
    os.close(fd)
    os.unlink(port_file)
    cmd = [sys.executable, str(HERE / "_mini_relay.py"), str(n), port_file, "--shape", shape,
           "--cost-ms", str(cost_ms), "--cost-us-per-task", str(cost_us)]  # fmt: skip
    proc = subprocess.Popen(cmd)
    try:
        deadline = time.monotonic() + 60
        while not (os.path.exists(port_file) and Path(port_file).read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the benchmark relay did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{int(Path(port_file).read_text())}"
    finally:
        proc.kill()
        proc.wait()
        if os.path.exists(port_file):
            os.unlink(port_file)


def ids(n: int) -> list[str]:
    return [str(BASE_ID + i) for i in range(n)]


def spread(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    """``min/median/max`` of ``values``."""
    if not values:
        return "-"
    return "/".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def rss_bytes() -> int:
    """The process's resident set size now (Linux), or 0."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_rss_bytes() -> int:
    """The process's peak resident set size (Linux), or 0."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
