"""Client CPU per task read: quickmj against raw aiohttp + json.loads, paired.

    python benchmarks/poll.py [--tasks 4000] [--rounds 10] [--pairs 7] [--server-cost]

A minimal relay runs in a subprocess (its own core) with N finished tasks (a TrueAI-style
grid: 9 buttons, 4 image URLs) and N running ones (new-api's shape). Each measurement is a
block of ``--rounds`` reads of all N tasks; its cost is the client's CPU time
(``time.process_time``) per task read. Every SDK block is paired with a raw block run
right before it (the order of the modes is shuffled per pair), and the ratio SDK / raw of
each pair is reported as min/median/max over ``--pairs`` pairs:

- ``fetch_many``: ``AsyncClient.fetch_many(ids)`` (every task structured into a Task);
- ``as_completed``: ``async for task in mj.as_completed(ids)`` over finished tasks;
- ``poll tick``: the poller's steady state over running tasks (unchanged answers);
- raw: ``aiohttp`` POSTs of 100 ids, 4 in flight, ``json.loads`` of each answer (the
  parsed answers of a round are kept until it ends, as fetch_many's are).

``--server-cost`` makes the relay spend 5 ms + 20 µs per task on each request (asleep, a
database read): the client then waits more, but its CPU per task read should not change.
Targets: fetch_many and as_completed <= 1.5 x raw; as_completed within 10 % of fetch_many.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable

import aiohttp
from _bench import BASE_ID, KEY, relay, spread

from quickmj import AsyncClient, PollPolicy

BATCH = 100


async def raw_block(base: str, ids: list[str], rounds: int) -> float:
    """CPU seconds per task read for bare aiohttp + json.loads."""
    limit = asyncio.Semaphore(4)
    async with aiohttp.ClientSession() as session:

        async def chunk(part: list[str]) -> list[object]:
            async with limit, session.post(
                f"{base}/mj/task/list-by-condition", json={"ids": part}
            ) as resp:  # fmt: skip
                return json.loads(await resp.read())  # type: ignore[no-any-return]

        await chunk(ids[:BATCH])  # warm the connection
        started = time.process_time()
        for _ in range(rounds):
            # Kept until the round ends, as fetch_many keeps its answer: the collector
            # then sees the same live objects on both sides.
            got = await asyncio.gather(
                *(chunk(ids[i : i + BATCH]) for i in range(0, len(ids), BATCH))
            )
            assert sum(map(len, got)) == len(ids)
        return (time.process_time() - started) / (rounds * len(ids))


def _client(base: str, **kwargs: object) -> AsyncClient:
    return AsyncClient(KEY, base_url=base, dialect="trueai", **kwargs)  # type: ignore[arg-type]


async def fetch_many_block(base: str, ids: list[str], rounds: int) -> float:
    async with _client(base) as mj:
        await mj.list_tasks(ids[:BATCH])
        started = time.process_time()
        for _ in range(rounds):
            assert len(await mj.fetch_many(ids)) == len(ids)
        return (time.process_time() - started) / (rounds * len(ids))


async def as_completed_block(base: str, ids: list[str], rounds: int) -> float:
    async with _client(base) as mj:
        await mj.list_tasks(ids[:BATCH])
        started = time.process_time()
        for _ in range(rounds):
            n = 0
            async for _task in mj.as_completed(ids):
                n += 1
            assert n == len(ids)
        return (time.process_time() - started) / (rounds * len(ids))


async def poll_block(base: str, ids: list[str], rounds: int) -> float:
    """The steady state: ``rounds`` poller rounds over running tasks that do not change."""
    policy = PollPolicy(interval=0.001, first_poll=0, near_done_interval=0.001, adaptive=False)
    async with _client(base, poll=policy) as mj:
        sub = mj.poller.subscribe(ids)  # what as_completed / many waits do
        per_round = -(-len(ids) // BATCH)
        while mj.poller.stats["list_requests"] < per_round:  # the first (structuring) round
            await asyncio.sleep(0.001)
        first = mj.poller.stats["list_requests"]
        started = time.process_time()
        while mj.poller.stats["list_requests"] < first + rounds * per_round:
            await asyncio.sleep(0.0005)
        cpu = time.process_time() - started
        reads = (mj.poller.stats["list_requests"] - first) * BATCH
        sub.close()
    return cpu / reads


Block = Callable[[str, list[str], int], Awaitable[float]]


async def main(args: argparse.Namespace) -> None:
    finished = [str(BASE_ID + i) for i in range(args.tasks)]
    modes: dict[str, tuple[str, Block]] = {
        "fetch_many": ("finished", fetch_many_block),
        "as_completed": ("finished", as_completed_block),
        "poll tick": ("running", poll_block),
    }
    cost = {"cost_ms": 5.0, "cost_us": 20.0} if args.server_cost else {}
    ratios: dict[str, list[float]] = {m: [] for m in modes}
    sdk_us: dict[str, list[float]] = {m: [] for m in modes}
    raw_us: dict[str, list[float]] = {m: [] for m in modes}
    rng = random.Random(args.seed)
    with relay(args.tasks, shape="finished", **cost) as fin, relay(
        args.tasks, shape="running", **cost
    ) as run:  # fmt: skip
        bases = {"finished": fin, "running": run}
        for _ in range(args.pairs):
            order = list(modes)
            rng.shuffle(order)
            for mode in order:
                shape, block = modes[mode]
                raw = await raw_block(bases[shape], finished, args.rounds)
                sdk = await block(bases[shape], finished, args.rounds)
                ratios[mode].append(sdk / raw)
                sdk_us[mode].append(sdk * 1e6)
                raw_us[mode].append(raw * 1e6)
    where = ", relay cost 5 ms + 20 us/task" if args.server_cost else ", cheap relay"
    print(f"{args.tasks} tasks, blocks of {args.rounds} reads of each, {args.pairs} pairs{where}")
    print(f"{'mode':<14}{'SDK / raw':>18}{'SDK us/read':>20}{'raw us/read':>20}")
    for mode in modes:
        print(f"{mode:<14}{spread(ratios[mode]):>18}{spread(sdk_us[mode], '{:.1f}'):>20}"
              f"{spread(raw_us[mode], '{:.1f}'):>20}")  # fmt: skip
    paired = [a / f for a, f in zip(sdk_us["as_completed"], sdk_us["fetch_many"], strict=True)]
    print(f"as_completed / fetch_many: {spread(paired)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=10, help="reads of all tasks per block")
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--server-cost", action="store_true")
    asyncio.run(main(parser.parse_args()))
