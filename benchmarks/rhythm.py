"""Adaptive polling against a relay that refreshes its task copies every 15 s (new-api).

    python benchmarks/rhythm.py [--refresh 15] [--jobs 10] [--waves 3] [--run 60]

Two clients run side by side against one simulated QuickRouter relay (its refresh loop
every ``--refresh`` seconds, jobs of ``--run`` seconds): one with the poller's fixed
schedule (``PollPolicy(adaptive=False)``: every 2 s, every 1 s near the end) and one that
learns the relay's beat (the default). Each submits ``--waves`` waves of ``--jobs``
prompts, a wave every ``--gap`` seconds, and waits for them with ``as_completed``.

Printed per client: list-by-condition requests per finished job, and the wake-up latency
(from the moment the relay's copy of a task showed SUCCESS to the moment its waiter got
it) as min/median/max; then the paired ratios adaptive / fixed.

    python benchmarks/rhythm.py --batch 12 [--running 3] [--queued 1]

runs ``--batch`` prompts through ``run_batch`` (admission on: submits wait for slots of
an account with ``--running`` workers and ``--queued`` waiting places, so the jobs
holding slots are read around their expected ends, ``Poller.hurry``) with the default
poll policy, and prints the task reads (list and fetch requests) per job and the wall
time. Run it on two checkouts to compare them (the relay's beat is locked before the
first job ends, so the reads should not grow).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

from quickmj import AsyncClient, PollPolicy
from quickmj.testing import SimulatorConfig, simulate


async def _client_run(
    relay: Any, adaptive: bool, args: argparse.Namespace, visible: dict[str, float]
) -> tuple[float, list[float], str]:
    policy = PollPolicy(adaptive=adaptive)
    async with AsyncClient(
        relay.api_key, base_url=relay.base_url, dialect="quickrouter", poll=policy
    ) as mj:
        jobs: list[Any] = []
        woke: dict[str, float] = {}

        async def wave(n: int) -> None:
            await asyncio.sleep(n * args.gap)
            batch = [
                await mj.imagine(f"{'a' if adaptive else 'f'}{n}-{i}") for i in range(args.jobs)
            ]
            jobs.extend(batch)
            async for task in mj.as_completed(batch, timeout=args.run * 10):
                woke[task.id] = time.monotonic()

        await asyncio.gather(*(wave(n) for n in range(args.waves)))
        latencies = [woke[j.id] - visible[j.id] for j in jobs if j.id in visible]
        per_job = mj.poller.stats["list_requests"] / len(jobs)
        return per_job, latencies, repr(mj.poller.rhythm)


async def _watch(sim: Any, visible: dict[str, float], stop: asyncio.Event) -> None:
    """When each task's SUCCESS became visible on the relay (checked every 10 ms)."""
    while not stop.is_set():
        for task_id in list(sim.tasks):
            if task_id not in visible and sim.task_status(task_id) == "SUCCESS":
                visible[task_id] = time.monotonic()
        await asyncio.sleep(0.01)


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{min(values):.2f}/{statistics.median(values):.2f}/{max(values):.2f}"


async def main(args: argparse.Namespace) -> int:
    visible: dict[str, float] = {}
    stop = asyncio.Event()
    async with simulate(
        dialect="quickrouter",
        refresh_interval=args.refresh,
        run_seconds=args.run,
        queue_seconds=2.0,
        shuffle_lists=False,
    ) as relay:
        watcher = asyncio.create_task(_watch(relay.simulator, visible, stop))
        fixed, adaptive = await asyncio.gather(
            _client_run(relay, False, args, visible), _client_run(relay, True, args, visible)
        )
        stop.set()
        await watcher
    print(f"relay refresh {args.refresh:g} s, jobs of {args.run:g} s, "
          f"{args.waves} waves x {args.jobs} jobs per client")  # fmt: skip
    print(f"{'client':<10} {'requests/job':>13} {'wake latency s (min/median/max)':>34}")
    for name, (per_job, lat, rhythm) in (("fixed", fixed), ("adaptive", adaptive)):
        print(f"{name:<10} {per_job:>13.2f} {_spread(lat):>34}   {rhythm}")
    ratio = adaptive[0] / fixed[0] if fixed[0] else float("nan")
    print(f"adaptive / fixed requests per job: {ratio:.2f}")
    print(f"adaptive median latency minus fixed: "
          f"{statistics.median(adaptive[1]) - statistics.median(fixed[1]):+.2f} s")  # fmt: skip
    return 0


async def batch(args: argparse.Namespace) -> int:
    """``--batch N``: N prompts through run_batch on a slot-limited account."""
    import tempfile

    from quickmj import BatchItem, run_batch

    config = SimulatorConfig(
        dialect="quickrouter",
        refresh_interval=args.refresh,
        run_seconds=args.run,
        queue_seconds=2.0,
        shuffle_lists=False,
        concurrency=args.running,
        max_queue=args.queued,
    )
    async with simulate(config) as relay:
        async with AsyncClient(relay.api_key, base_url=relay.base_url, dialect="quickrouter") as mj:
            started = time.monotonic()
            with tempfile.TemporaryDirectory() as out:
                items = [BatchItem(f"prompt {i}") for i in range(args.batch)]
                summary = await run_batch(mj, items, out, download=False)
            wall = time.monotonic() - started
            rhythm = repr(mj.poller.rhythm)
        counters = relay.simulator.counters
        reads = sum(n for r, n in counters.items() if r.startswith(("POST /task", "GET /task")))
    print(f"relay refresh {args.refresh:g} s, jobs of {args.run:g} s, {args.running} running "
          f"+ {args.queued} queued, {args.batch} prompts ({summary.succeeded} done)")  # fmt: skip
    print(f"task reads per job: {reads / args.batch:.2f}   wall {wall:.1f} s   {rhythm}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refresh", type=float, default=15.0)
    parser.add_argument("--run", type=float, default=60.0, help="job length in seconds")
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--waves", type=int, default=3)
    parser.add_argument("--gap", type=float, default=40.0, help="seconds between waves")
    parser.add_argument("--batch", type=int, default=0, help="prompts through run_batch")
    parser.add_argument("--running", type=int, default=3, help="--batch: workers")
    parser.add_argument("--queued", type=int, default=1, help="--batch: waiting places")
    args = parser.parse_args()
    sys.exit(asyncio.run(batch(args) if args.batch else main(args)))
