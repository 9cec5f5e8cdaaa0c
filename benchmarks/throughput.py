"""Batch throughput with adaptive admission, on one and on several accounts.

    python benchmarks/throughput.py [--prompts 2000] [--accounts 1 4] [--job 2.0]
        [--running 3] [--queued 10] [--dialect midjourney-proxy|trueai|quickrouter]
        [--saturate-429] [--workers W [--redis URL | --fixed-limit N]] [--json]

A simulated relay gives every key an executor of ``--running`` workers and ``--queued``
waiting places and answers a submit beyond them queue full (code 23 on midjourney-proxy,
9 on TrueAI, HTTP 429 on QuickRouter with ``--saturate-429``). Each job takes ``--job``
seconds of a worker. ``run_batch`` sends ``--prompts`` prompts through an AccountPool of
``--accounts`` keys (no downloads) and the relay's limits are never told to the client:
each account's budget learns them.

Printed per run: the wall time against the ideal (prompts x job / accounts / running:
every worker busy from the first second to the last), the refused submits (queue full and
429) in all and after the first minute as a share of the submits sent then, the limit
each account converged to, and a check that every prompt created exactly one job.
Targets: at least 90 % of the ideal throughput, under 5 % refused after the first minute.

``--workers W`` splits the prompts between W independent runs on the same keys, as W
processes would be (each learns on its own); with ``--redis URL`` they share each
account's budget through :class:`quickmj.RedisBudgets` instead; with ``--fixed-limit N``
each keeps a fixed share of N jobs per account (nothing learned); ``--uneven`` gives the
first worker half of the prompts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from typing import Any

from quickmj import AdmissionPolicy, PollPolicy
from quickmj._accounts import AccountPool
from quickmj._batch import BatchItem, run_batch
from quickmj.testing import SimulatorConfig, simulate

WARMUP = 60.0  # seconds: refusals after this are the steady state's


async def _sample_after(pools: list[AccountPool], seconds: float, into: dict[str, int]) -> None:
    await asyncio.sleep(seconds)
    for budget in (b for pool in pools for b in pool.budgets):
        into["sent"] += budget.stats.sent
        into["refused"] += budget.stats.queue_full + budget.stats.rate_limited


async def _workers(
    args: argparse.Namespace, relay: Any, keys: tuple[str, ...]
) -> tuple[list[AccountPool], list[Any]]:
    """W pools on the same keys (each its own budgets, or all on shared Redis ones)."""
    poll = PollPolicy(interval=args.job / 4, first_poll=args.job / 20, adaptive=False)
    prefix = f"bench:{time.time_ns()}"
    stores: list[Any] = []
    pools = []
    for _ in range(args.workers):
        admission: Any = "adaptive"
        if args.fixed_limit:
            n = args.fixed_limit
            admission = AdmissionPolicy(initial_limit=n, min_limit=n, max_limit=n)
        elif args.redis:
            from quickmj import RedisBudgets

            admission = RedisBudgets(args.redis, prefix=prefix)
            stores.append(admission)
        pool = AccountPool(
            list(keys),
            admission=admission,
            base_url=relay.base_url,
            dialect=relay.dialect,
            poll=poll,
        )
        pools.append(pool)
    return pools, stores


async def one_run(args: argparse.Namespace, accounts: int) -> dict[str, Any]:
    keys = tuple(f"bench-key-{i}" for i in range(accounts))
    config = SimulatorConfig(
        dialect=args.dialect,
        api_keys=keys,
        concurrency=args.running,
        max_queue=args.queued,
        saturate_429=args.saturate_429,
        queue_seconds=args.job * 0.05,
        run_seconds=args.job * 0.95,
        shuffle_lists=False,
    )
    # A relay's jobs take ~60 s and it refreshes every 15 s; the same ratio here.
    items = [BatchItem(f"prompt {i} --v 6.1") for i in range(args.prompts)]
    at_warmup: Counter[str] = Counter()
    async with simulate(config) as relay:
        pools, stores = await _workers(args, relay, keys)
        sampler = asyncio.create_task(_sample_after(pools, WARMUP, at_warmup))
        started = time.monotonic()
        with tempfile.TemporaryDirectory() as out:
            shares = _shares(items, len(pools), uneven=args.uneven)
            summaries = await asyncio.gather(
                *(
                    run_batch(pool, share, f"{out}/{w}", download=False, timeout=3600)
                    for w, (pool, share) in enumerate(zip(pools, shares, strict=True))
                )
            )
        wall = time.monotonic() - started
        sampler.cancel()
        for pool in pools:
            await pool.aclose()
        for store in stores:
            await store.aclose()
        budgets = [b for pool in pools for b in pool.budgets]
        created = Counter(s.prompt for s in relay.simulator.submissions)
        relay_refused = sum(relay.simulator.accounts[k].rejected for k in keys)
    sent = sum(b.stats.sent for b in budgets)
    refused = sum(b.stats.queue_full + b.stats.rate_limited for b in budgets)
    late_sent = sent - at_warmup["sent"] if at_warmup else 0
    late_refused = refused - at_warmup["refused"] if at_warmup else 0
    ideal = args.prompts * args.job / accounts / args.running
    return {
        "accounts": accounts,
        "workers": _workers_label(args),
        "prompts": args.prompts,
        "succeeded": sum(x.succeeded for x in summaries),
        "wall_s": round(wall, 1),
        "ideal_s": round(ideal, 1),
        "efficiency": round(ideal / wall, 3),
        "submits_sent": sent,
        "queue_full": sum(b.stats.queue_full for b in budgets),
        "rate_limited": sum(b.stats.rate_limited for b in budgets),
        "relay_refused": relay_refused,
        "sent_after_1min": late_sent,
        "refused_after_1min": late_refused,
        "refused_share_after_1min": round(late_refused / late_sent, 4) if late_sent else None,
        "limits": [round(b.limit, 1) for b in budgets],
        "ceilings": [getattr(b, "ceiling", None) for b in budgets],
        "one_job_per_prompt": set(created.values()) == {1} and len(created) == args.prompts,
    }


def _shares(items: list[BatchItem], workers: int, *, uneven: bool) -> list[list[BatchItem]]:
    """Each worker's prompts: equal shares, or (uneven) half for the first worker."""
    if not uneven or workers == 1:
        return [items[w::workers] for w in range(workers)]
    rest = items[1::2]
    return [items[::2], *(rest[w :: workers - 1] for w in range(workers - 1))]


def _workers_label(args: argparse.Namespace) -> str:
    kind = f"fixed {args.fixed_limit} each" if args.fixed_limit else ""
    kind = "shared, redis" if args.redis else kind
    kind = ", ".join(k for k in (kind, "uneven" if args.uneven else "") if k)
    return f"{args.workers} ({kind})" if kind else str(args.workers)


def _table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    refusal = "429" if args.saturate_429 and args.dialect == "quickrouter" else "queue-full"
    lines = [
        f"{args.prompts} prompts, jobs of {args.job:g} s, {args.running} running + "
        f"{args.queued} queued per account, {args.dialect} ({refusal} when full)",
        "",
        "| accounts | workers | wall | ideal | throughput | 23/9 answers | 429s "
        "| refused after 1 min | limits learned | one job per prompt |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        share = r["refused_share_after_1min"]
        late = f"{r['refused_after_1min']} ({share:.1%})" if share is not None else "-"
        lines.append(
            f"| {r['accounts']} | {r['workers']} | {r['wall_s']:.0f} s | {r['ideal_s']:.0f} s "
            f"| {r['efficiency']:.1%} | {r['queue_full']} | {r['rate_limited']} | {late} "
            f"| {', '.join(f'{x:g}' for x in r['limits'])} | {r['one_job_per_prompt']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--accounts", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--job", type=float, default=2.0, help="seconds of a worker per job")
    parser.add_argument("--running", type=int, default=3)
    parser.add_argument("--queued", type=int, default=10)
    parser.add_argument(
        "--dialect",
        default="midjourney-proxy",
        choices=["midjourney-proxy", "trueai", "quickrouter"],
    )
    parser.add_argument("--saturate-429", action="store_true", help="quickrouter: 429 when full")
    parser.add_argument("--workers", type=int, default=1, help="independent runs on the keys")
    parser.add_argument("--redis", default=None, metavar="URL", help="share budgets in Redis")
    parser.add_argument("--fixed-limit", type=int, default=0, metavar="N", help="fixed shares")
    parser.add_argument("--uneven", action="store_true", help="half the prompts to worker 1")
    parser.add_argument("--json", action="store_true", help="one JSON object per run")
    args = parser.parse_args()
    rows = []
    for n in args.accounts:
        row = asyncio.run(one_run(args, n))
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
    if not args.json:
        print(_table(rows, args))
    ok = all(r["one_job_per_prompt"] and r["succeeded"] == args.prompts for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
