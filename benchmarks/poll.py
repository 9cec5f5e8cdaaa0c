"""Measure how fast quickmj reads the status of many tasks.

    python benchmarks/poll.py --tasks 10000

A minimal relay runs in a subprocess (its own core) with N running tasks. One run
measures three ways of reading every task's status once:

  (a) the SDK poller: one tick over N tracked ids (list-by-condition batches; a task is
      structured into a Task only when its state changed; the first read, which
      structures all of them, is printed too),
  (b) raw aiohttp list-by-condition with json.loads only (the floor),
  (c) a naive loop of one blocking GET /fetch per task, as the relay's docs show
      (a sample of tasks, new connection per request like the docs' http.client code),

then prints task-reads/s, the ratios SDK/raw and SDK/naive, list requests per poller tick
for N tracked waiters, and the resident memory added per tracked waiter.
Targets: SDK >= 0.8 x raw, >= 20 x naive, requests/tick == ceil(N/batch), <= 2 KiB/task.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import http.client
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from quickmj import AsyncClient, PollPolicy, Task

HERE = Path(__file__).resolve().parent
BASE_ID = 1730621826053000


def start_relay(n: int) -> tuple[subprocess.Popen[bytes], int]:
    port_file = tempfile.mktemp(prefix="quickmj-bench-port-")
    proc = subprocess.Popen([sys.executable, str(HERE / "_mini_relay.py"), str(n), port_file])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if os.path.exists(port_file) and Path(port_file).read_text().strip():
            port = int(Path(port_file).read_text())
            os.unlink(port_file)
            return proc, port
        if proc.poll() is not None:
            raise SystemExit("the benchmark relay failed to start")
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("the benchmark relay did not start in 30 s")


def rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def sdk_ticks(base: str, ids: list[str], batch: int) -> tuple[float, float]:
    """Seconds for one poller tick over every tracked id: (first read, steady state).

    The first read structures every task into a Task; later reads of unchanged tasks only
    compare a fingerprint. The loop's own schedule is pushed far out and ticks are driven
    here, so exactly one read per id is timed.
    """
    far = 10.0**6
    policy = PollPolicy(interval=far, first_poll=far, batch_size=batch, max_concurrent_batches=4)
    async with AsyncClient("bench-key", base_url=base, poll=policy) as mj:
        await mj.list_tasks(ids[:batch])  # warm the connection pool and converter hooks
        sub = mj.poller.subscribe(ids)  # what as_completed / many waits do
        times = []
        for fake_now in (2 * far, 5 * far):  # each one past every entry's next due time
            started = time.perf_counter()
            await mj.poller._tick(mj.poller._clock() + fake_now)
            times.append(time.perf_counter() - started)
        assert mj.poller.stats["list_requests"] == 2 * math.ceil(len(ids) / batch)
        sub.close()
    return times[0], times[1]


async def raw_read_all(base: str, ids: list[str], batch: int) -> float:
    """Seconds for bare aiohttp + json.loads to read every id once (the floor)."""
    limit = asyncio.Semaphore(4)
    async with aiohttp.ClientSession() as session:

        async def chunk(part: list[str]) -> int:
            async with (
                limit,
                session.post(f"{base}/mj/task/list-by-condition", json={"ids": part}) as r,
            ):
                return len(json.loads(await r.read()))

        await chunk(ids[:batch])
        started = time.perf_counter()
        counts = await asyncio.gather(
            *(chunk(ids[i : i + batch]) for i in range(0, len(ids), batch))
        )
        elapsed = time.perf_counter() - started
    assert sum(counts) == len(ids)
    return elapsed


def naive_read(port: int, ids: list[str]) -> float:
    """Seconds for one blocking GET /fetch per id, new connection each (the docs' way)."""
    started = time.perf_counter()
    for task_id in ids:
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("GET", f"/mj/task/{task_id}/fetch", headers={"Authorization": "Bearer k"})
        json.loads(conn.getresponse().read())
        conn.close()
    return time.perf_counter() - started


async def tracked_id_cost(base: str, ids: list[str], batch: int) -> float:
    """RSS bytes per id tracked through one subscription (what as_completed does)."""
    policy = PollPolicy(interval=0.5, first_poll=0.05, batch_size=batch)
    async with AsyncClient("bench-key", base_url=base, poll=policy) as mj:
        await mj.list_tasks(ids[:batch])
        gc.collect()
        before = rss_bytes()
        sub = mj.poller.subscribe(ids)
        while mj.poller.stats["list_requests"] < 2 * math.ceil(len(ids) / batch):
            await asyncio.sleep(0.01)
        gc.collect()
        grown = rss_bytes() - before
        sub.close()
    return grown / len(ids)


async def tracking_cost(base: str, ids: list[str], batch: int) -> tuple[float, float]:
    """(list requests per tick, RSS bytes per tracked waiter) with len(ids) real waiters."""
    policy = PollPolicy(interval=0.5, first_poll=0.05, batch_size=batch)
    async with AsyncClient("bench-key", base_url=base, poll=policy) as mj:
        await mj.list_tasks(ids[:batch])
        gc.collect()
        before = rss_bytes()
        waiters = [asyncio.ensure_future(mj.wait(i)) for i in ids]
        while mj.poller.stats["ticks"] < 3:
            await asyncio.sleep(0.05)
        while mj.poller.stats["list_requests"] < 3 * math.ceil(len(ids) / batch):
            await asyncio.sleep(0.01)
        gc.collect()
        grown = rss_bytes() - before
        stats = dict(mj.poller.stats)
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
    return stats["list_requests"] / stats["ticks"], grown / len(ids)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--naive-sample", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    proc, port = start_relay(args.tasks)
    base = f"http://127.0.0.1:{port}"
    ids = [str(BASE_ID + i) for i in range(args.tasks)]
    try:
        Task(id="warm")  # import cost out of the way
        first, sdk, raw = math.inf, math.inf, math.inf
        for _ in range(args.rounds):  # alternate, keep the best of each
            one, steady = await sdk_ticks(base, ids, args.batch)
            first, sdk = min(first, one), min(sdk, steady)
            raw = min(raw, await raw_read_all(base, ids, args.batch))
        sample = ids[: args.naive_sample]
        naive = naive_read(port, sample)
        per_id = await tracked_id_cost(base, ids, args.batch)
        per_tick, rss_per_task = await tracking_cost(base, ids, args.batch)
    finally:
        proc.kill()
        proc.wait()

    sdk_rate = args.tasks / sdk
    raw_rate = args.tasks / raw
    naive_rate = len(sample) / naive
    print(f"tasks: {args.tasks}, batch: {args.batch}, best of {args.rounds} rounds")
    print(f"(a) SDK poller tick     {sdk_rate:10.0f} task-reads/s  ({sdk * 1000:.0f} ms for all)")
    print(
        f"    first read           {args.tasks / first:10.0f} task-reads/s  "
        f"({first * 1000:.0f} ms: every task structured into a Task)"
    )
    print(f"(b) raw aiohttp + json  {raw_rate:10.0f} task-reads/s  ({raw * 1000:.0f} ms for all)")
    print(f"(c) naive GET /fetch    {naive_rate:10.0f} task-reads/s  (sample of {len(sample)})")
    print(f"SDK / raw   = {sdk_rate / raw_rate:6.2f}  (target >= 0.8)")
    print(f"SDK / naive = {sdk_rate / naive_rate:6.1f}  (target >= 20)")
    expected = math.ceil(args.tasks / args.batch)
    print(f"list requests per tick: {per_tick:.1f}  (ceil(N/batch) = {expected})")
    print(f"RSS growth per tracked id (as_completed): {per_id:.0f} bytes  (target <= 2048)")
    print(f"RSS growth per wait() coroutine:          {rss_per_task:.0f} bytes  (target <= 2048)")


if __name__ == "__main__":
    asyncio.run(main())
