"""How far over ``--max-spend`` a large batch can go, against the simulator's billing.

    python benchmarks/spend.py                       # 2,000 prompts, 16 in flight, U1
    python benchmarks/spend.py --prompts 500 --repeats 1

Each run is ``run_batch`` on 2,000 prompts with ``concurrency=16`` and ``--upscale U1``
against the simulator's quickrouter dialect with a key quota (new-api's billing: every
accepted submit charged its model's price, ``mj_imagine`` 0.10 and ``mj_upscale`` 0.05
USD) and 30 ms on every submit (so up to 16 submits are really on the wire together).
What the key was charged is read from the relay (``AsyncClient.balance()``), not from
quickmj's own count; the overshoot is that charge minus the cap. Scenarios, run in
shuffled order ``--repeats`` times each:

- ``reserve``: quickmj as shipped, prices given (the relay's own).
- ``learned``: no prices: the first prompt runs alone and teaches them from the balance.
- ``wrong-price``: prices given 20% under the relay's (imagine 0.08, upscale 0.04): the
  bound holds only at the prices used, so this one overshoots by the error.
- ``no-reserve``: a baseline that checks only what was spent before each prompt, not the
  prompts in flight (quickmj's ledger with its holds ignored): what reservation prevents.

Prints per scenario the overshoot in USD and in submits (min/median/max), the prompts
started, the most prompts holding money at once, and the wall time. The machine is
shared with other work: wall times are noisy; the overshoot is exact.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import spread

from quickmj import AsyncClient, PollPolicy
from quickmj._batch import BatchItem, run_batch
from quickmj._spend import Ledger
from quickmj.testing import FaultConfig, SimulatorConfig, simulate

IMAGINE, UPSCALE = 0.10, 0.05
FAST = PollPolicy(interval=0.05, first_poll=0.02, near_done_interval=0.02, adaptive=False)
SCENARIOS = ("reserve", "learned", "wrong-price", "no-reserve")


@contextmanager
def _watch_holds(no_reserve: bool) -> Iterator[list[int]]:
    """Record the most prompts holding money at once; with ``no_reserve``, make the
    ledger ignore its holds (the baseline: only what was spent counts)."""
    peak = [0]
    admit, exposure = Ledger.admit, Ledger.exposure

    async def watched(self: Ledger, *args: Any) -> bool:
        ok = await admit(self, *args)
        peak[0] = max(peak[0], len(self.held))
        return ok

    Ledger.admit = watched  # type: ignore[method-assign]
    if no_reserve:
        Ledger.exposure = property(lambda self: self.spent)  # type: ignore[method-assign,assignment]
    try:
        yield peak
    finally:
        Ledger.admit = admit  # type: ignore[method-assign]
        Ledger.exposure = exposure  # type: ignore[method-assign]


async def one_run(scenario: str, prompts: int, concurrency: int, cap: float) -> dict[str, Any]:
    config = SimulatorConfig(
        seed=7,
        queue_seconds=0.0,
        run_seconds=0.05,
        quota_usd=10_000.0,
        faults=FaultConfig(latency=0.03, routes=frozenset({"submit"})),
    )
    prices: dict[str, float] | None = {"imagine": IMAGINE, "upscale": UPSCALE}
    if scenario == "learned":
        prices = None
    elif scenario == "wrong-price":
        prices = {"imagine": IMAGINE * 0.8, "upscale": UPSCALE * 0.8}
    items = [BatchItem(f"benchmark prompt {i}") for i in range(prompts)]
    with tempfile.TemporaryDirectory(prefix="quickmj-spend-") as out:
        async with (
            simulate(config) as relay,
            AsyncClient(
                relay.api_key, base_url=relay.base_url, dialect=relay.dialect, poll=FAST
            ) as mj,
        ):
            before = await mj.balance()
            started = time.perf_counter()
            with _watch_holds(scenario == "no-reserve") as peak:
                summary = await run_batch(
                    mj,
                    items,
                    out,
                    concurrency=concurrency,
                    upscale=["U1"],
                    download=False,
                    prices=prices,
                    max_spend=cap,
                )
            wall = time.perf_counter() - started
            after = await mj.balance()
    charged = (after.used_usd or 0.0) - (before.used_usd or 0.0)
    return {
        "scenario": scenario,
        "charged": charged,
        "over": charged - cap,
        "started": prompts - summary.pending,
        "held": peak[0],
        "wall": wall,
    }


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--cap", type=float, default=100.0, help="--max-spend in USD")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    order = [s for s in SCENARIOS for _ in range(args.repeats)]
    random.Random(args.seed).shuffle(order)
    results: dict[str, list[dict[str, Any]]] = {s: [] for s in SCENARIOS}
    for scenario in order:
        result = await one_run(scenario, args.prompts, args.concurrency, args.cap)
        results[scenario].append(result)
        print(
            f"  {scenario:<12} charged {result['charged']:.2f} USD, over "
            f"{result['over']:+.2f}, {result['started']} prompts started, "
            f"{result['wall']:.1f} s",
            file=sys.stderr,
        )
    per_prompt = IMAGINE + UPSCALE
    print(
        f"{args.prompts} prompts, concurrency {args.concurrency}, --upscale U1, cap "
        f"{args.cap:.2f} USD, prices imagine {IMAGINE:.2f} / upscale {UPSCALE:.2f} USD "
        f"(charged by the simulator's billing); min/median/max of {args.repeats} runs; "
        f"prompts in flight can hold at most {args.concurrency} x {per_prompt:.2f} = "
        f"{args.concurrency * per_prompt:.2f} USD"
    )
    print(f"{'scenario':<12} {'over cap USD':>20} {'over in prompts':>16} "
          f"{'prompts started':>18} {'most holding':>13} {'wall s':>16}")  # fmt: skip
    for scenario in SCENARIOS:
        rows = results[scenario]
        over = [r["over"] for r in rows]
        print(
            f"{scenario:<12} {spread(over, '{:+.2f}'):>20} "
            f"{spread([max(0.0, o) / per_prompt for o in over], '{:.1f}'):>16} "
            f"{spread([r['started'] for r in rows], '{:.0f}'):>18} "
            f"{statistics.median(r['held'] for r in rows):>13.0f} "
            f"{spread([r['wall'] for r in rows], '{:.1f}'):>16}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
