"""How the poller scales: 1k, 10k and 100k tracked tasks in one process.

    python benchmarks/scale.py [--sizes 1000,10000,100000] [--ticks 5]
                               [--only as_completed|waits] [--timeout S] [--breakdown 12]

A minimal relay in a subprocess serves N running tasks (new-api's shape, unchanged between
reads: the poller's steady state). For each size it reports, tracking the ids through
``as_completed`` (one subscription) and through N individual ``wait()`` coroutines (each
in its own asyncio Task, as ``asyncio.gather`` would run them):

- RSS growth of this process while tracking (MiB), and per tracked id (bytes);
- the duration of one poll round over all N ids (wall, min/median/max over ``--ticks``);
- client CPU per task per round (µs);
- the CPU cost of adding the N waits one at a time, and that cost per wait (flat = O(n)).

Each (size, way) is measured in a fresh child process, so memory freed by one measurement
is not reused by the next. ``--only`` runs one way, ``--timeout`` gives every ``wait()`` a
timeout (one that never expires during the run). ``--breakdown N`` adds, for 20,000 ids
without polling, what each way allocates per id (tracemalloc), by source line: the top N
lines and the total (the Task column is the caller's own asyncio Task and its bookkeeping).

Targets (100k): RSS <= 256 MB either way, no round longer than the 2 s poll interval,
<= 15 µs CPU per task per round, adding waits O(n).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import time
import tracemalloc
from typing import Any

from _bench import KEY, ids, relay, rss_bytes, spread

from quickmj import AsyncClient, PollPolicy

WAYS = ("as_completed", "waits")


async def _rounds(mj: AsyncClient, n: int, ticks: int) -> tuple[list[float], float]:
    """Wall seconds of each of ``ticks`` rounds after the first, and CPU s per task-round."""
    per_round = -(-n // mj.poll_policy.batch_size)
    stats = mj.poller.stats
    while stats["list_requests"] < per_round:  # the first round (every task structured)
        await asyncio.sleep(0.01)
    walls: list[float] = []
    cpu_start = time.process_time()
    for _ in range(ticks):
        target = stats["list_requests"] + per_round
        started = time.perf_counter()
        while stats["list_requests"] < target:
            await asyncio.sleep(0.001)
        walls.append(time.perf_counter() - started)
    return walls, (time.process_time() - cpu_start) / (ticks * n)


def _start(mj: AsyncClient, n: int, waits: bool, timeout: float | None) -> list[Any]:
    """Track ``n`` ids one way; returns what keeps them tracked."""
    if waits:
        return [asyncio.ensure_future(mj.wait(i, timeout=timeout)) for i in ids(n)]
    return [mj.poller.subscribe(ids(n))]


async def _stop(held: list[Any], waits: bool) -> None:
    if waits:
        for f in held:
            f.cancel()
        await asyncio.gather(*held, return_exceptions=True)
    else:
        held[0].close()


async def track(
    base: str, n: int, ticks: int, waits: bool, timeout: float | None
) -> dict[str, Any]:
    policy = PollPolicy(interval=0.0, first_poll=0.0, near_done_interval=0.0, adaptive=False)
    async with AsyncClient(KEY, base_url=base, dialect="trueai", poll=policy) as mj:
        await mj.list_tasks(ids(100))
        gc.collect()
        before = rss_bytes()
        cpu = time.process_time()
        held = _start(mj, n, waits, timeout)
        await asyncio.sleep(0)  # every wait() runs to its subscribe
        add_cpu = time.process_time() - cpu
        walls, cpu_per = await _rounds(mj, n, ticks)
        grown = rss_bytes() - before
        await _stop(held, waits)
    return {"rss": grown, "walls": walls, "cpu": cpu_per, "add": add_cpu}


async def breakdown(n: int, waits: bool, timeout: float | None, top: int) -> list[str]:
    """Bytes per id by source line (tracemalloc), with no polling (first_poll: an hour)."""
    policy = PollPolicy(interval=3600.0, first_poll=3600.0, near_done_interval=3600.0)
    async with AsyncClient(KEY, base_url="http://127.0.0.1:9", poll=policy) as mj:
        gc.collect()
        tracemalloc.start(1)
        first = tracemalloc.take_snapshot()
        held = _start(mj, n, waits, timeout)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        diff = tracemalloc.take_snapshot().compare_to(first, "lineno")
        tracemalloc.stop()
        await _stop(held, waits)
    lines = [f"{'total':>44} {sum(d.size_diff for d in diff) / n:>7.0f} B/id"]
    for d in diff[:top]:
        frame = d.traceback[0]
        where = f"{frame.filename.rsplit('/', 2)[-1]}:{frame.lineno}"
        lines.append(f"{where:>44} {d.size_diff / n:>7.0f} B/id {d.count_diff / n:>5.2f} objs/id")
    return lines


def _child(args: argparse.Namespace, n: int, way: str) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter (the relay is shared)."""
    cmd = [sys.executable, __file__, "--child", args.base, "--sizes", str(n), "--only", way,
           "--ticks", str(args.ticks)]  # fmt: skip
    if args.timeout is not None:
        cmd += ["--timeout", str(args.timeout)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main(args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    ways = [args.only] if args.only else list(WAYS)
    print(f"{'tracked':>9} {'how':>13} {'RSS MiB':>8} {'B/id':>6} {'round s (min/med/max)':>24} "
          f"{'CPU us/task/round':>18} {'add: s':>8} {'us/add':>7}")  # fmt: skip
    with relay(max(sizes), shape="running") as args.base:
        for n in sizes:
            for way in ways:
                r = _child(args, n, way)
                how = "as_completed" if way == "as_completed" else "wait() each"
                print(f"{n:>9} {how:>13} {r['rss'] / 2**20:>8.0f} {r['rss'] / n:>6.0f} "
                      f"{spread(r['walls'], '{:.3f}'):>24} {r['cpu'] * 1e6:>18.1f} "
                      f"{r['add']:>8.2f} {r['add'] / n * 1e6:>7.1f}")  # fmt: skip
    if args.breakdown:
        for way in ways:
            print(f"\n{way}: allocated per id (20,000 ids, tracemalloc, no polling)")
            lines = asyncio.run(breakdown(20_000, way == "waits", args.timeout, args.breakdown))
            print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--ticks", type=int, default=5)
    parser.add_argument("--only", choices=WAYS)
    parser.add_argument("--timeout", type=float, help="each wait()'s timeout (never reached)")
    parser.add_argument("--breakdown", type=int, default=0, metavar="N")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.child:
        res = asyncio.run(track(ns.child, int(ns.sizes), ns.ticks, ns.only == "waits", ns.timeout))
        print(json.dumps(res))
    else:
        main(ns)
