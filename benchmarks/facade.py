"""Per-call overhead of the blocking facade, paired against AsyncClient.

    python benchmarks/facade.py [--calls 1000] [--pairs 9] [--client module:Class]

Against the same local relay (a subprocess): ``--calls`` sequential ``fetch`` calls through
``Client`` and through ``AsyncClient``, and the same number from 8 long-lived threads
sharing one ``Client`` (started before the clock, each taking ids from one shared list)
against 8 concurrent coroutines on one ``AsyncClient``. A pair is one Client block and one
AsyncClient block in random order (a fresh client for each block); the ratios
Client / AsyncClient of wall time and of this process's CPU time (``time.process_time``:
every thread of the client, not the relay) are printed as min/median/max over ``--pairs``
pairs. Targets: <= 1.2 sequential, <= 1.4 from 8 threads. Last, the hop alone
(``Client.run`` of a no-op) against a bare cross-thread round trip (the floor of any
design that hands the call to another thread).

``--client`` measures another facade class with the same constructor (a prototype or a
copy of an earlier design), e.g. ``--client mypkg.old_sync:Client``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from _bench import KEY, ids, relay, spread

from quickmj import AsyncClient, Client

WORKERS = 8
Timing = tuple[float, float]  # (wall seconds, CPU seconds)


def _clocks() -> Timing:
    return time.perf_counter(), time.process_time()


def _since(start: Timing) -> Timing:
    wall, cpu = _clocks()
    return wall - start[0], cpu - start[1]


async def async_sequential(base: str, todo: list[str]) -> Timing:
    async with AsyncClient(KEY, base_url=base) as mj:
        await mj.fetch(todo[0])
        start = _clocks()
        for i in todo:
            await mj.fetch(i)
        return _since(start)


async def async_concurrent(base: str, todo: list[str]) -> Timing:
    async with AsyncClient(KEY, base_url=base) as mj:
        await mj.fetch(todo[0])
        queue = list(todo)
        start = _clocks()

        async def worker() -> None:
            while queue:
                await mj.fetch(queue.pop())

        await asyncio.gather(*(worker() for _ in range(WORKERS)))
        return _since(start)


def sync_sequential(cls: type[Any], base: str, todo: list[str]) -> Timing:
    with cls(KEY, base_url=base) as mj:
        mj.fetch(todo[0])
        start = _clocks()
        for i in todo:
            mj.fetch(i)
        return _since(start)


def sync_concurrent(cls: type[Any], base: str, todo: list[str]) -> Timing:
    """8 threads started before the clock, released together by a barrier; each pops ids
    from one shared list (``list.pop`` is atomic) until it is empty."""
    with cls(KEY, base_url=base) as mj:
        mj.fetch(todo[0])
        queue = list(todo)
        gate = threading.Barrier(WORKERS + 1)
        errors: list[BaseException] = []

        def worker() -> None:
            gate.wait()
            try:
                while True:
                    try:
                        i = queue.pop()
                    except IndexError:
                        return
                    mj.fetch(i)
            except BaseException as exc:  # reported after the block
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
        for t in threads:
            t.start()
        start = _clocks()
        gate.wait()
        for t in threads:
            t.join()
        took = _since(start)
        if errors:
            raise errors[0]
        return took


def paired(
    run_async: Callable[[], Timing], run_sync: Callable[[], Timing], pairs: int, rng: random.Random
) -> tuple[list[float], list[float], list[float]]:
    """Wall ratios, CPU ratios and the extra wall µs per call, one of each per pair; the two
    blocks of a pair run in random order."""
    wall: list[float] = []
    cpu: list[float] = []
    extra: list[float] = []
    for _ in range(pairs):
        order = [("a", run_async), ("s", run_sync)]
        rng.shuffle(order)
        got: dict[str, Timing] = {}
        for name, block in order:
            gc.collect()
            got[name] = block()
        (aw, ac), (sw, sc) = got["a"], got["s"]
        wall.append(sw / aw)
        cpu.append(sc / ac)
        extra.append(sw - aw)
    return wall, cpu, extra


def main(args: argparse.Namespace) -> None:
    cls = _load(args.client)
    rng = random.Random(args.seed)
    todo = ids(args.calls)
    print(f"{cls.__module__}.{cls.__qualname__}: {args.calls} fetch calls, {args.pairs} pairs")
    print("(min/median/max; machine shared with other work: compare medians of one run)")
    with relay(args.calls) as base:
        seq, seq_cpu, seq_extra = paired(
            lambda: asyncio.run(async_sequential(base, todo)),
            lambda: sync_sequential(cls, base, todo),
            args.pairs,
            rng,
        )
        par, par_cpu, _ = paired(
            lambda: asyncio.run(async_concurrent(base, todo)),
            lambda: sync_concurrent(cls, base, todo),
            args.pairs,
            rng,
        )
    us = spread([e / args.calls * 1e6 for e in seq_extra], "{:.0f}")
    print(f"Client / AsyncClient, sequential, wall:  {spread(seq)}   (+{us} us/call)")
    print(f"Client / AsyncClient, sequential, CPU:   {spread(seq_cpu)}")
    print(f"Client / AsyncClient, {WORKERS} threads, wall:   {spread(par)}")
    print(f"Client / AsyncClient, {WORKERS} threads, CPU:    {spread(par_cpu)}")
    hop, bare = hop_costs(cls, args.calls, args.pairs)
    print(f"the hop alone (Client.run of a no-op):      {spread(hop, '{:.1f}')} us/call")
    print(f"a bare round trip to another thread's loop: {spread(bare, '{:.1f}')} us")


def _load(spec: str) -> type[Any]:
    if not spec:
        return Client
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name or "Client")  # type: ignore[no-any-return]


async def _noop() -> None:
    return None


def hop_costs(cls: type[Any], calls: int, pairs: int) -> tuple[list[float], list[float]]:
    """The facade's ``run`` of a no-op against the cheapest cross-thread round trip to a
    loop in another thread (``call_soon_threadsafe`` releasing a lock), alternating.

    Neither does I/O. A design that runs the call on the calling thread can go below the
    round trip; one that hands every call to the loop thread cannot.
    """

    def round_trip(loop: asyncio.AbstractEventLoop) -> None:
        done = threading.Lock()
        done.acquire()
        loop.call_soon_threadsafe(done.release)
        done.acquire()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    hop: list[float] = []
    bare: list[float] = []
    try:
        with cls(KEY, base_url="http://127.0.0.1:9") as mj:  # never contacted
            for _ in range(pairs):
                started = time.perf_counter()
                for _ in range(calls):
                    round_trip(loop)
                bare.append((time.perf_counter() - started) / calls * 1e6)
                started = time.perf_counter()
                for _ in range(calls):
                    mj.run(_noop)
                hop.append((time.perf_counter() - started) / calls * 1e6)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
    return hop, bare


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=9)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--client", default="", help="module:Class of another facade")
    main(parser.parse_args())
