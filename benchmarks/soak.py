"""Fault-injection soak of the batch runner at scale.

    python benchmarks/soak.py --prompts 10000

Runs ``run_batch`` (downloads on) against the embedded relay simulator with faults on:
5% HTML 502s, 2% 429 + Retry-After, 2% dropped connections, 1% + 1% submits answered
ambiguously after the job was created, 20% truncated list answers, a queue limit (code 23),
10% failing jobs, 50 ms latency. Then checks that every prompt is accounted for exactly
once, nothing was created twice or lost, every ``unknown`` is an ambiguous answer the relay
really gave, nothing escaped, no partial file is left and memory stayed bounded.

Prints the one-line summary (prompts, succeeded, failed, rejected, unknown, duplicates,
requests by route, wall time, peak memory); exits 1 if any invariant failed. The run and
the checks are ``quickmj.simulator._soak.soak``, the same as ``tests/test_soak.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from quickmj._batch import BatchProgress
from quickmj.simulator._soak import soak


class _Ticker:
    """A progress line on stderr every few seconds."""

    def __init__(self, every: float = 5.0) -> None:
        self.every = every
        self.last = time.monotonic()

    def __call__(self, p: BatchProgress) -> None:
        now = time.monotonic()
        if now - self.last >= self.every or p.done == p.total:
            self.last = now
            print(
                f"  {p.done}/{p.total} done ({p.succeeded} ok, {p.failed} not), "
                f"{p.running} running, {p.elapsed:.0f} s",
                file=sys.stderr,
                flush=True,
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--upscale", default="", help="press these buttons too, e.g. U1")
    parser.add_argument(
        "--out", default=None, help="a new directory to keep the output in (default: temporary)"
    )
    parser.add_argument(
        "--no-tracemalloc",
        action="store_true",
        help="measure only the peak RSS (tracemalloc slows the run down by ~1.7x)",
    )
    parser.add_argument("--time-limit", type=float, default=1800.0)
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args()
    report = asyncio.run(
        soak(
            args.prompts,
            args.out,
            concurrency=args.concurrency,
            seed=args.seed,
            upscale=tuple(u for u in args.upscale.split(",") if u),
            trace_memory=not args.no_tracemalloc,
            time_limit=args.time_limit,
            on_progress=None if args.quiet else _Ticker(),
        )
    )
    print(report.summary())
    print(f"  faults injected: {dict(sorted(report.faults.items()))}")
    for problem in report.problems[:50]:
        print(f"  PROBLEM: {problem}")
    if len(report.problems) > 50:
        print(f"  ... and {len(report.problems) - 50} more")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
