"""What notifyHook pushes save: list requests and wake-up latency, with vs without.

    python benchmarks/hooks.py --tasks 1000

Runs the same job twice against the embedded simulator (which delivers notifyHooks): N
imagine jobs, each awaited with ``wait()``. Once with polling only, once with a webhook
receiver. Prints the list-by-condition requests each run needed and the time from the
relay's SUCCESS (the task's ``finishTime``) to the waiter waking: median and p99.
Target: with the receiver, only the safety-net polls remain.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from quickmj import AsyncClient, PollPolicy, Task
from quickmj.testing import SimulatorConfig, simulate


async def run(
    n: int, hooks: bool, policy: PollPolicy, config: SimulatorConfig
) -> tuple[int, list[float], float]:
    async with (
        simulate(config) as relay,
        AsyncClient(
            relay.api_key, base_url=relay.base_url, dialect=relay.dialect, poll=policy
        ) as mj,
    ):
        receiver = mj.webhook_receiver() if hooks else None
        if receiver is not None:
            await receiver.__aenter__()
        try:
            started = time.perf_counter()
            results = await asyncio.gather(*(mj.imagine(f"bench {i}") for i in range(n)))
            latencies: list[float] = []

            async def waiter(task_id: str) -> Task:
                task = await mj.wait(task_id, timeout=600)
                assert task.finish_time
                latencies.append(time.time() - task.finish_time / 1000)
                return task

            await asyncio.gather(*(waiter(r.task_id) for r in results))
            elapsed = time.perf_counter() - started
        finally:
            if receiver is not None:
                await receiver.__aexit__(None, None, None)
        return relay.simulator.counters["POST /task/list-by-condition"], latencies, elapsed


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=2.0, help="poll interval (s)")
    parser.add_argument("--run-seconds", type=float, default=6.0, help="simulated job length")
    args = parser.parse_args()
    # TrueAI's dialect delivers notifyHooks (QuickRouter strips them by default).
    config = SimulatorConfig(dialect="trueai", queue_seconds=1.0, run_seconds=args.run_seconds)
    policy = PollPolicy(
        interval=args.interval, first_poll=0.5, near_done_interval=args.interval / 2
    )
    polled = await run(args.tasks, False, policy, config)
    pushed = await run(args.tasks, True, policy, config)
    length = args.run_seconds + 1
    print(f"tasks: {args.tasks}, job length ~{length:.0f} s, poll interval {args.interval} s")
    for name, (lists, lat, elapsed) in (("polling only", polled), ("with receiver", pushed)):
        print(
            f"{name:<14} list-by-condition requests: {lists:5d}   SUCCESS->wake median "
            f"{statistics.median(lat) * 1000:7.1f} ms  p99 {p99(lat) * 1000:7.1f} ms   "
            f"wall {elapsed:.1f} s"
        )
    print(
        f"requests saved: {polled[0] - pushed[0]} ({pushed[0]} left: the first poll of each "
        f"batch and safety-net polls every {policy.safety_net_interval:g} s)"
    )


if __name__ == "__main__":
    asyncio.run(main())
