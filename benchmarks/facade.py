"""Per-call overhead of the blocking facade, paired against AsyncClient.

    python benchmarks/facade.py [--calls 1000] [--pairs 7]

Against the same local relay (a subprocess): ``--calls`` sequential ``fetch`` calls through
``Client`` and through ``AsyncClient``, and the same number from 8 threads sharing one
``Client`` against 8 concurrent coroutines on one ``AsyncClient``. Each Client block is
paired with an AsyncClient block right before it; the ratios Client / AsyncClient are
printed as min/median/max over ``--pairs`` pairs. Targets: <= 1.2 sequential, <= 1.4 from
8 threads. Last, the hop alone (``Client.run`` of a no-op) against a bare cross-thread
round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from _bench import KEY, ids, relay, spread

from quickmj import AsyncClient, Client


async def async_sequential(base: str, todo: list[str]) -> float:
    async with AsyncClient(KEY, base_url=base) as mj:
        await mj.fetch(todo[0])
        started = time.perf_counter()
        for i in todo:
            await mj.fetch(i)
        return time.perf_counter() - started


async def async_concurrent(base: str, todo: list[str], workers: int) -> float:
    async with AsyncClient(KEY, base_url=base) as mj:
        await mj.fetch(todo[0])
        queue = list(todo)
        started = time.perf_counter()

        async def worker() -> None:
            while queue:
                await mj.fetch(queue.pop())

        await asyncio.gather(*(worker() for _ in range(workers)))
        return time.perf_counter() - started


def sync_sequential(base: str, todo: list[str]) -> float:
    with Client(KEY, base_url=base) as mj:
        mj.fetch(todo[0])
        started = time.perf_counter()
        for i in todo:
            mj.fetch(i)
        return time.perf_counter() - started


def sync_concurrent(base: str, todo: list[str], workers: int) -> float:
    with Client(KEY, base_url=base) as mj, ThreadPoolExecutor(workers) as pool:
        mj.fetch(todo[0])
        started = time.perf_counter()
        list(pool.map(mj.fetch, todo))
        return time.perf_counter() - started


def main(args: argparse.Namespace) -> None:
    todo = ids(args.calls)
    seq: list[float] = []
    par: list[float] = []
    per_call: list[float] = []
    with relay(args.calls) as base:
        for _ in range(args.pairs):
            a = asyncio.run(async_sequential(base, todo))
            s = sync_sequential(base, todo)
            seq.append(s / a)
            per_call.append((s - a) / args.calls * 1e6)
            a = asyncio.run(async_concurrent(base, todo, 8))
            s = sync_concurrent(base, todo, 8)
            par.append(s / a)
    print(f"{args.calls} fetch calls, {args.pairs} pairs (min/median/max)")
    extra = spread(per_call, "{:.0f}")
    print(f"Client / AsyncClient, sequential:  {spread(seq)}   (+{extra} us/call)")
    print(f"Client / AsyncClient, 8 threads:   {spread(par)}")
    hop, bare = hop_costs(args.calls, args.pairs)
    print(f"the hop alone (Client.run of a no-op):      {spread(hop, '{:.0f}')} us/call")
    print(f"a bare round trip to the same loop thread:  {spread(bare, '{:.0f}')} us")


async def _noop() -> None:
    return None


def hop_costs(calls: int, pairs: int) -> tuple[list[float], list[float]]:
    """The facade's own hop against the cheapest cross-thread round trip to the same loop
    thread (``call_soon_threadsafe`` releasing a lock), alternating.

    Neither does I/O; on a VM whose CPUs idle between wake-ups, both pay the wake-ups of
    an idle thread, so their difference is what the hop itself adds.
    """

    def round_trip(loop: asyncio.AbstractEventLoop) -> None:
        done = threading.Lock()
        done.acquire()
        loop.call_soon_threadsafe(done.release)
        done.acquire()

    hop: list[float] = []
    bare: list[float] = []
    with Client(KEY, base_url="http://127.0.0.1:9") as mj:  # never contacted
        loop = mj.run(_running_loop)  # the client's own loop thread
        for _ in range(pairs):
            started = time.perf_counter()
            for _ in range(calls):
                round_trip(loop)
            bare.append((time.perf_counter() - started) / calls * 1e6)
            started = time.perf_counter()
            for _ in range(calls):
                mj.run(_noop)
            hop.append((time.perf_counter() - started) / calls * 1e6)
    return hop, bare


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=7)
    main(parser.parse_args())
