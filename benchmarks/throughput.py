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

Slots refilled as jobs end (issue 23 section 3)::

    python benchmarks/throughput.py --slots [--runs 3] [--cli] [--poll fast|default]

runs 240 prompts of 2 s jobs on accounts with running slots and no waiting place
(``--queued 0``: a submit while every worker is busy is refused): 4 keys of 4 slots,
then 1 key of 16. The client keeps its defaults (``--poll default``: ``PollPolicy()``,
what ``quickmj batch --keys`` uses; ``--poll fast`` is the tuned ``job / 4`` schedule the
other rows use), and ``--cli`` sends the batch through ``quickmj batch --keys FILE`` in a
subprocess. Printed per setting: % of the ideal (prompts x job / (keys x slots)) as
min/median/max over ``--runs`` runs, the wall time counted from the first job the relay
created to the end of the run (the CLI's start-up left out), refusals and task reads
(list and fetch requests) per job.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
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
    if args.poll == "default":
        poll = PollPolicy()  # what `quickmj batch --keys` uses
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


def _config(args: argparse.Namespace, keys: tuple[str, ...], running: int) -> SimulatorConfig:
    # A relay's jobs take ~60 s and it refreshes every 15 s; the same ratio here.
    return SimulatorConfig(
        dialect=args.dialect,
        api_keys=keys,
        concurrency=running,
        max_queue=args.queued,
        saturate_429=args.saturate_429,
        queue_seconds=args.job * 0.05,
        run_seconds=args.job * 0.95,
        shuffle_lists=False,
    )


async def one_run(args: argparse.Namespace, accounts: int, running: int) -> dict[str, Any]:
    if args.cli:
        return await _cli_run(args, accounts, running)
    keys = tuple(f"bench-key-{i}" for i in range(accounts))
    items = [BatchItem(f"prompt {i} --v 6.1") for i in range(args.prompts)]
    at_warmup: Counter[str] = Counter()
    async with simulate(_config(args, keys, running)) as relay:
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
        span = _span(relay.simulator)
        sampler.cancel()
        for pool in pools:
            await pool.aclose()
        for store in stores:
            await store.aclose()
        budgets = [b for pool in pools for b in pool.budgets]
        created = Counter(s.prompt for s in relay.simulator.submissions)
        relay_refused = sum(relay.simulator.accounts[k].rejected for k in keys)
        reads = _reads(relay.simulator)
    sent = sum(b.stats.sent for b in budgets)
    refused = sum(b.stats.queue_full + b.stats.rate_limited for b in budgets)
    late_sent = sent - at_warmup["sent"] if at_warmup else 0
    late_refused = refused - at_warmup["refused"] if at_warmup else 0
    ideal = args.prompts * args.job / accounts / running
    return {
        "accounts": accounts,
        "running": running,
        "span_s": round(span, 2),
        "span_efficiency": round(ideal / span, 3),
        "reads_per_job": round(reads / args.prompts, 2),
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


def _span(sim: Any) -> float:
    """Seconds from the first job the relay created to now."""
    first = min(t.submit_ms for t in sim.tasks.values()) / 1000
    return float(sim.clock.epoch_ms(sim.clock.now()) / 1000 - first)


def _reads(sim: Any) -> int:
    """Task reads the relay answered (list-by-condition and single fetches)."""
    return sum(
        n for route, n in sim.counters.items() if route.startswith(("POST /task", "GET /task"))
    )


async def _cli_run(args: argparse.Namespace, accounts: int, running: int) -> dict[str, Any]:
    """One batch through ``quickmj batch --keys FILE`` in a subprocess (its defaults)."""
    keys = tuple(f"bench-key-{i}" for i in range(accounts))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "keys.txt").write_text("".join(f"{k}\n" for k in keys))
        (root / "prompts.txt").write_text(
            "".join(f"prompt {i} --v 6.1\n" for i in range(args.prompts))
        )
        async with simulate(_config(args, keys, running)) as relay:
            cmd = [sys.executable, "-m", "quickmj", "batch", str(root / "prompts.txt"),
                   "--keys", str(root / "keys.txt"), "--base-url", relay.base_url,
                   "--dialect", args.dialect, "--no-download", "--plain",
                   "--out", str(root / "out")]  # fmt: skip
            env = {**os.environ, "QUICKMJ_API_KEY": ""}
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *cmd, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
            )
            _, err = await proc.communicate()
            wall = time.monotonic() - started
            if proc.returncode != 0:
                raise SystemExit(
                    f"quickmj batch failed ({proc.returncode}): {err.decode()[-2000:]}"
                )
            sim = relay.simulator
            span = _span(sim)
            created = Counter(s.prompt for s in sim.submissions)
            refused = sum(sim.accounts[k].rejected for k in keys)
            reads = _reads(sim)
    ideal = args.prompts * args.job / accounts / running
    return {
        "accounts": accounts,
        "running": running,
        "workers": "cli",
        "prompts": args.prompts,
        "succeeded": len(created),
        "wall_s": round(wall, 1),
        "span_s": round(span, 2),
        "ideal_s": round(ideal, 1),
        "efficiency": round(ideal / wall, 3),
        "span_efficiency": round(ideal / span, 3),
        "reads_per_job": round(reads / args.prompts, 2),
        "queue_full": refused,
        "rate_limited": 0,
        "relay_refused": refused,
        "limits": [],
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


def _slots_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Per setting: % of ideal as min/median/max over the runs, and what it cost."""
    how = "quickmj batch --keys (subprocess)" if args.cli else f"run_batch, --poll {args.poll}"
    lines = [
        f"{args.prompts} prompts, jobs of {args.job:g} s, {args.queued} queued per account, "
        f"{args.dialect}, {how}; {args.runs} run(s) per setting (min/median/max)",
        "",
        "| keys x slots | ideal | span | % of ideal (span) | % of ideal (wall) "
        "| refusals | reads per job | limits learned (last run) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for setting in dict.fromkeys((r["accounts"], r["running"]) for r in rows):
        mine = [r for r in rows if (r["accounts"], r["running"]) == setting]

        def spread(key: str, fmt: str, mine: list[dict[str, Any]] = mine) -> str:
            values = [float(r[key]) for r in mine]
            return "/".join(
                fmt.format(v) for v in (min(values), statistics.median(values), max(values))
            )

        lines.append(
            f"| {setting[0]} x {setting[1]} | {mine[0]['ideal_s']:.0f} s "
            f"| {spread('span_s', '{:.1f}')} s "
            f"| {spread('span_efficiency', '{:.1%}')} | {spread('efficiency', '{:.1%}')} "
            f"| {spread('relay_refused', '{:.0f}')} | {spread('reads_per_job', '{:.2f}')} "
            f"| {', '.join(f'{x:g}' for x in mine[-1]['limits']) or '-'} |"
        )
    return "\n".join(lines)


def _settings(args: argparse.Namespace) -> list[tuple[int, int]]:
    """(keys, running slots per key): ``--setting KxS``, or ``--accounts`` x ``--running``."""
    if args.setting:
        return [tuple(int(x) for x in s.split("x")) for s in args.setting]  # type: ignore[misc]
    if args.slots:
        return [(4, 4), (1, 16)]
    return [(n, args.running) for n in args.accounts]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=None, help="default 2000 (--slots: 240)")
    parser.add_argument("--accounts", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--job", type=float, default=2.0, help="seconds of a worker per job")
    parser.add_argument("--running", type=int, default=3)
    parser.add_argument("--queued", type=int, default=None, help="default 10 (--slots: 0)")
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
    parser.add_argument("--slots", action="store_true", help="issue 23: 4x4 and 1x16, no queue")
    parser.add_argument("--setting", action="append", metavar="KxS", help="keys x slots")
    parser.add_argument("--poll", choices=["fast", "default"], default=None,
                        help="fast: job/4 (default); default: PollPolicy() (--slots)")  # fmt: skip
    parser.add_argument("--cli", action="store_true", help="through quickmj batch --keys")
    parser.add_argument("--runs", type=int, default=None, help="runs per setting (--slots: 3)")
    parser.add_argument("--json", action="store_true", help="one JSON object per run")
    args = parser.parse_args()
    slots = args.slots or args.setting
    args.prompts = args.prompts or (240 if slots else 2000)
    args.queued = (0 if slots else 10) if args.queued is None else args.queued
    args.poll = args.poll or ("default" if slots else "fast")
    args.runs = args.runs or (3 if slots else 1)
    settings = _settings(args)
    rows = []
    for _ in range(args.runs):
        for accounts, running in settings:  # interleaved: the machine's load hits all alike
            row = asyncio.run(one_run(args, accounts, running))
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
    if not args.json:
        print(_slots_table(rows, args) if slots or args.cli else _table(rows, args))
    ok = all(r["one_job_per_prompt"] and r["succeeded"] == args.prompts for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
