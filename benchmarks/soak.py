"""Fault-injection soak of the batch job at scale, in-process or with kill -9 and resumes.

    python benchmarks/soak.py --prompts 2000                  # run_batch in this process
    python benchmarks/soak.py --prompts 300 --kills 10        # `quickmj batch` processes

In-process, ``run_batch`` (downloads on) runs against the relay simulator of
``quickmj.testing`` with faults on: 5% HTML 502s, 2% 429 + Retry-After, 2% dropped
connections, 1% + 1% submits answered ambiguously after the job was created, 20%
truncated list answers, a queue limit (code 23), 10% failing jobs, 50 ms latency.

With ``--kills N``, ``python -m quickmj batch FILE --out DIR --plain [--resume]`` runs
as a real process against a simulator served from here (milder faults, 150 ms latency),
is killed with SIGKILL N times at seeded points (at start, after a delay, with submits
on the wire, mid-download), resumed each time, sometimes while a second run tries the
same directory (it must be refused: exit 1, one line, no request); the last resume runs
to its end.

Then the invariants of ``benchmarks/_soak.py`` are checked: every prompt one row in a
finished phase, nothing created twice (duplicates), no paid job lost, every ``unknown``
an ambiguous or cut submit, files on disk, no partial file left, bounded memory. Prints
the one-line summary (prompts, kills, duplicates, lost paid jobs, wall time, peak
memory); exits 1 if any invariant failed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _soak import DIALECTS, SoakReport, soak, soak_kills

from quickmj._batch import BatchProgress


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
                f"  {p.done}/{p.total} done ({p.succeeded} ok, {p.done - p.succeeded} not), "
                f"{p.running} running, {p.elapsed:.0f} s",
                file=sys.stderr,
                flush=True,
            )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=2000, help="default: 2000")
    parser.add_argument(
        "--kills",
        type=int,
        default=0,
        metavar="N",
        help="run `quickmj batch` processes and kill -9 them N times (default 0: in-process)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="jobs in flight (default: 128 in-process, 8 with --kills)",
    )
    parser.add_argument(
        "--dialect",
        choices=DIALECTS,
        default=None,
        help="relay dialect (default: quickrouter; midjourney-proxy with --kills)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds faults and kills (default 0)")
    parser.add_argument("--upscale", default="", help="press these buttons too, e.g. U1")
    parser.add_argument(
        "--reconcile",
        action="store_true",
        help="settle unknown outcomes by their tag at the end (midjourney-proxy, trueai)",
    )
    parser.add_argument(
        "--out", default=None, help="a new directory to keep the output in (default: temporary)"
    )
    parser.add_argument(
        "--no-tracemalloc",
        action="store_true",
        help="in-process: measure only the peak RSS (tracemalloc slows the run ~1.7x)",
    )
    parser.add_argument(
        "--time-limit", type=float, default=1800.0, metavar="S", help="default: 1800"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress or round lines")
    parser.add_argument(
        "--name", default=None, help="in-process: the file name template, e.g. {slug}"
    )
    parser.add_argument(
        "--colliding",
        action="store_true",
        help="in-process: prompts whose slugs collide (case, punctuation, CJK, accents)",
    )
    parser.add_argument(
        "--html-images",
        type=float,
        default=0.0,
        metavar="RATE",
        help="in-process: share of image answers that are a 200 with no image (default 0)",
    )
    return parser


async def _run(args: argparse.Namespace) -> SoakReport:
    upscale = tuple(u for u in args.upscale.split(",") if u)
    if args.kills:
        return await soak_kills(
            args.prompts,
            args.out,
            kills=args.kills,
            dialect=args.dialect or "midjourney-proxy",
            concurrency=args.concurrency or 8,
            upscale=upscale,
            seed=args.seed,
            settle=args.reconcile,
            time_limit=args.time_limit,
        )
    return await soak(
        args.prompts,
        args.out,
        dialect=args.dialect or "quickrouter",
        concurrency=args.concurrency or 128,
        upscale=upscale,
        seed=args.seed,
        settle=args.reconcile,
        trace_memory=not args.no_tracemalloc,
        time_limit=args.time_limit,
        on_progress=None if args.quiet else _Ticker(),
        name=args.name,
        colliding=args.colliding,
        html_image_rate=args.html_images,
    )


def main() -> int:
    args = _parser().parse_args()
    report = asyncio.run(_run(args))
    if not args.quiet:
        for line in report.log:
            print(f"  {line}", file=sys.stderr)
    print(report.summary())
    print(f"  faults injected: {dict(sorted(report.faults.items()))}")
    for problem in report.problems[:50]:
        print(f"  PROBLEM: {problem}")
    if len(report.problems) > 50:
        print(f"  ... and {len(report.problems) - 50} more")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
