"""Per-call overhead of the blocking facade.

    python benchmarks/facade.py --calls 1000

Against the same local relay (a subprocess): 1,000 sequential ``fetch`` calls through
``Client`` vs ``AsyncClient``, and 1,000 fetches from a thread pool of 8 through one
``Client`` vs 8 concurrent coroutines on ``AsyncClient``. Prints each time and the ratio
Client / AsyncClient (target <= 1.15).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from poll import BASE_ID, start_relay

from quickmj import AsyncClient, Client


async def async_sequential(base: str, ids: list[str]) -> float:
    async with AsyncClient("bench-key", base_url=base) as mj:
        await mj.fetch(ids[0])
        started = time.perf_counter()
        for i in ids:
            await mj.fetch(i)
        return time.perf_counter() - started


async def async_concurrent(base: str, ids: list[str], workers: int) -> float:
    async with AsyncClient("bench-key", base_url=base) as mj:
        await mj.fetch(ids[0])
        queue = list(ids)
        started = time.perf_counter()

        async def worker() -> None:
            while queue:
                await mj.fetch(queue.pop())

        await asyncio.gather(*(worker() for _ in range(workers)))
        return time.perf_counter() - started


def sync_sequential(base: str, ids: list[str]) -> float:
    with Client("bench-key", base_url=base) as mj:
        mj.fetch(ids[0])
        started = time.perf_counter()
        for i in ids:
            mj.fetch(i)
        return time.perf_counter() - started


def sync_concurrent(base: str, ids: list[str], workers: int) -> float:
    with Client("bench-key", base_url=base) as mj, ThreadPoolExecutor(workers) as pool:
        mj.fetch(ids[0])
        started = time.perf_counter()
        list(pool.map(mj.fetch, ids))
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    proc, port = start_relay(args.calls)
    base = f"http://127.0.0.1:{port}"
    ids = [str(BASE_ID + i) for i in range(args.calls)]
    best = {"async seq": 1e9, "sync seq": 1e9, "async conc": 1e9, "sync conc": 1e9}
    try:
        for _ in range(args.rounds):  # alternate, keep the best of each
            best["async seq"] = min(best["async seq"], asyncio.run(async_sequential(base, ids)))
            best["sync seq"] = min(best["sync seq"], sync_sequential(base, ids))
            best["async conc"] = min(
                best["async conc"], asyncio.run(async_concurrent(base, ids, args.threads))
            )
            best["sync conc"] = min(best["sync conc"], sync_concurrent(base, ids, args.threads))
    finally:
        proc.kill()
        proc.wait()
    n = args.calls
    for name, seconds in best.items():
        print(f"{name:<11} {seconds * 1000:8.1f} ms  ({seconds / n * 1e6:6.0f} us/call)")
    ratio = best["sync seq"] / best["async seq"]
    print(f"sequential  Client / AsyncClient = {ratio:.2f}  (target <= 1.15)")
    print(
        f"{args.threads} threads   Client / AsyncClient = "
        f"{best['sync conc'] / best['async conc']:.2f}  (target <= 1.15)"
    )


if __name__ == "__main__":
    main()
