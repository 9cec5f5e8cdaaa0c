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

``--client`` measures other facade classes with the same constructor (prototypes or a
copy of an earlier design), comma-separated, ``""`` for quickmj's own, e.g.
``--client ,old_sync:Client``: each round then runs one block of each, in random order.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
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


Ratios = tuple[list[float], list[float], list[float]]  # wall, CPU, extra wall seconds


def rounds(
    run_async: Callable[[], Timing],
    designs: dict[str, Callable[[], Timing]],
    pairs: int,
    rng: random.Random,
) -> dict[str, Ratios]:
    """Per design, one wall ratio, CPU ratio and extra wall time per round. A round runs
    the AsyncClient block and one block of every design in random order, so every design
    is paired with the same AsyncClient block under the same load."""
    out: dict[str, Ratios] = {name: ([], [], []) for name in designs}
    for _ in range(pairs):
        order = [("", run_async), *designs.items()]
        rng.shuffle(order)
        got: dict[str, Timing] = {}
        for name, block in order:
            gc.collect()
            got[name] = block()
        aw, ac = got[""]
        for name, (wall, cpu, extra) in out.items():
            sw, sc = got[name]
            wall.append(sw / aw)
            cpu.append(sc / ac)
            extra.append(sw - aw)
    return out


def main(args: argparse.Namespace) -> None:
    classes = {spec or "quickmj.Client": _load(spec) for spec in args.client.split(",")}
    rng = random.Random(args.seed)
    todo = ids(args.calls)
    print(f"{args.calls} fetch calls, {args.pairs} rounds (min/median/max)")
    print("(compare medians of one run: each round pairs every design with one async block)")
    with relay(args.calls) as base:
        seq = rounds(
            lambda: asyncio.run(async_sequential(base, todo)),
            {n: functools.partial(sync_sequential, c, base, todo) for n, c in classes.items()},
            args.pairs,
            rng,
        )
        par = rounds(
            lambda: asyncio.run(async_concurrent(base, todo)),
            {n: functools.partial(sync_concurrent, c, base, todo) for n, c in classes.items()},
            args.pairs,
            rng,
        )
    for name, cls in classes.items():
        wall, cpu, extra = seq[name]
        us = spread([e / args.calls * 1e6 for e in extra], "{:.0f}")
        print(f"\n{name} / AsyncClient")
        print(f"  sequential, wall:  {spread(wall)}   (+{us} us/call)")
        print(f"  sequential, CPU:   {spread(cpu)}")
        wall, cpu, _ = par[name]
        print(f"  {WORKERS} threads, wall:   {spread(wall)}")
        print(f"  {WORKERS} threads, CPU:    {spread(cpu)}")
        hop, bare, here = hop_costs(cls, args.calls, args.pairs)
        print(f"  the facade alone (run of a no-op):          {spread(hop, '{:.1f}')} us/call")
        print(f"  a bare round trip to another thread's loop: {spread(bare, '{:.1f}')} us")
        print(f"  a bare run_until_complete on this thread:   {spread(here, '{:.1f}')} us")


def _load(spec: str) -> type[Any]:
    if not spec:
        return Client
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name or "Client")  # type: ignore[no-any-return]


async def _noop() -> None:
    return None


def hop_costs(
    cls: type[Any], calls: int, pairs: int
) -> tuple[list[float], list[float], list[float]]:
    """The facade's ``run`` of a no-op against the two floors, alternating: the cheapest
    cross-thread round trip to a loop in another thread (``call_soon_threadsafe``
    releasing a lock), which bounds any design that hands every call over, and
    ``run_until_complete`` of a no-op task on a private loop in this thread, which bounds
    a design where the caller runs the loop. None of them does I/O.
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
    here: list[float] = []
    own = asyncio.new_event_loop()
    try:
        with cls(KEY, base_url="http://127.0.0.1:9") as mj:  # never contacted
            for _ in range(pairs):
                started = time.perf_counter()
                for _ in range(calls):
                    round_trip(loop)
                bare.append((time.perf_counter() - started) / calls * 1e6)
                started = time.perf_counter()
                for _ in range(calls):
                    own.run_until_complete(_noop())
                here.append((time.perf_counter() - started) / calls * 1e6)
                started = time.perf_counter()
                for _ in range(calls):
                    mj.run(_noop)
                hop.append((time.perf_counter() - started) / calls * 1e6)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
        own.close()
    return hop, bare, here


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=9)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--client", default="", help="module:Class,... of other facades")
    main(parser.parse_args())
