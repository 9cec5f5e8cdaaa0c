"""How the poller scales: 1k, 10k and 100k tracked tasks in one process.

    python benchmarks/scale.py [--sizes 1000,10000,100000] [--ticks 5]

A minimal relay in a subprocess serves N running tasks (new-api's shape, unchanged between
reads: the poller's steady state). For each size it reports, tracking the ids through
``as_completed`` (one subscription) and through N individual ``wait()`` coroutines:

- peak RSS growth of this process while tracking (MiB);
- the duration of one poll round over all N ids (wall, min/median/max over ``--ticks``);
- client CPU per task per round (µs);
- the CPU cost of adding the N waits one at a time, and that cost per wait (flat = O(n)).

Targets (100k): RSS <= 256 MB, no round longer than the 2 s poll interval, <= 15 µs CPU
per task per round, adding waits O(n).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time

from _bench import KEY, ids, relay, rss_bytes, spread

from quickmj import AsyncClient, PollPolicy


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


async def track(base: str, n: int, ticks: int, waits: bool) -> dict[str, float | list[float]]:
    policy = PollPolicy(interval=0.0, first_poll=0.0, near_done_interval=0.0, adaptive=False)
    async with AsyncClient(KEY, base_url=base, dialect="trueai", poll=policy) as mj:
        await mj.list_tasks(ids(100))
        gc.collect()
        before = rss_bytes()
        cpu = time.process_time()
        if waits:
            futures = [asyncio.ensure_future(mj.wait(i)) for i in ids(n)]
            await asyncio.sleep(0)  # every wait() runs to its subscribe
        else:
            sub = mj.poller.subscribe(ids(n))
        add_cpu = time.process_time() - cpu
        walls, cpu_per = await _rounds(mj, n, ticks)
        grown = rss_bytes() - before
        if waits:
            for f in futures:
                f.cancel()
            await asyncio.gather(*futures, return_exceptions=True)
        else:
            sub.close()
    return {"rss": grown, "walls": walls, "cpu": cpu_per, "add": add_cpu}


async def main(args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'tracked':>9} {'how':>13} {'RSS MiB':>8} {'round s (min/med/max)':>24} "
          f"{'CPU us/task/round':>18} {'add: s':>8} {'us/add':>7}")  # fmt: skip
    with relay(max(sizes), shape="running") as base:
        for n in sizes:
            for waits in (False, True):
                r = await track(base, n, args.ticks, waits)
                how = "wait() each" if waits else "as_completed"
                print(f"{n:>9} {how:>13} {r['rss'] / 2**20:>8.0f} "  # type: ignore[operator]
                      f"{spread(r['walls'], '{:.3f}'):>24} {r['cpu'] * 1e6:>18.1f} "  # type: ignore[arg-type,operator]
                      f"{r['add']:>8.2f} {r['add'] / n * 1e6:>7.1f}")  # type: ignore[operator]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--ticks", type=int, default=5)
    asyncio.run(main(parser.parse_args()))
