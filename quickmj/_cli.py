"""The ``quickmj`` command line: one-shot commands, the batch job and the simulator.

Every command reads ``QUICKMJ_API_KEY`` / ``QUICKMJ_BASE_URL`` (or ``--mode``), or runs
against an embedded relay simulator with ``--simulate`` (no key, no network). Errors print
one line and exit non-zero; the key is never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any, TextIO

from ._batch import parse_upscale, read_prompts, run_batch
from ._client import AsyncClient
from ._converter import unstructure
from ._models import SubmitResult, Task
from ._poller import PollPolicy
from ._progress import make_reporter
from ._version import __version__
from .errors import QuickMJError, TaskFailedError

__all__ = ("main",)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Output:
    def __init__(self, as_json: bool, stream: TextIO) -> None:
        self.as_json = as_json
        self.stream = stream

    def task(self, task: Task) -> None:
        if self.as_json:
            self._json(unstructure(task))
            return
        progress = f" {task.progress}" if task.progress else ""
        print(f"{task.id}  {task.status.value}{progress}", file=self.stream)
        if task.image_url:
            print(f"  image: {task.image_url}", file=self.stream)
        if task.fail_reason:
            print(f"  reason: {task.fail_reason}", file=self.stream)
        if task.buttons:
            print(f"  buttons: {', '.join(b.display for b in task.buttons)}", file=self.stream)

    def submitted(self, result: SubmitResult) -> None:
        if self.as_json:
            self._json(unstructure(result))
            return
        extra = " (needs modal)" if result.needs_modal else ""
        extra += f" (queue position {result.queue_position})" if result.queued else ""
        print(f"submitted {result.task_id}{extra}", file=self.stream)

    def value(self, key: str, value: Any) -> None:
        if self.as_json:
            self._json({key: value})
        else:
            print(value, file=self.stream)

    def _json(self, obj: Any) -> None:
        print(json.dumps(obj, ensure_ascii=False), file=self.stream, flush=True)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--mode", choices=["fast", "relax", "turbo"], help="speed mode (path prefix)"
    )
    common.add_argument("--json", action="store_true", help="machine-readable output (JSON lines)")
    common.add_argument(
        "--simulate",
        action="store_true",
        help="run against an embedded relay simulator (no key, no network)",
    )

    parser = argparse.ArgumentParser(
        prog="quickmj",
        description="Midjourney through QuickRouter / midjourney-proxy relays. "
        "Configure with QUICKMJ_API_KEY and QUICKMJ_BASE_URL.",
    )
    parser.add_argument("--version", action="version", version=f"quickmj {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("imagine", parents=[common], help="submit a prompt")
    p.add_argument("prompt")
    p.add_argument("--wait", action="store_true", help="wait until the job finishes")
    p.add_argument("--download", metavar="DIR", help="save the image into DIR (implies --wait)")
    p.add_argument("--timeout", type=float, default=1800.0)

    p = sub.add_parser("fetch", parents=[common], help="show tasks")
    p.add_argument("ids", nargs="+", metavar="ID")

    p = sub.add_parser("wait", parents=[common], help="wait for tasks to finish")
    p.add_argument("ids", nargs="+", metavar="ID")
    p.add_argument("--timeout", type=float, default=1800.0)

    p = sub.add_parser("action", parents=[common], help="press a button (U1, V2, 🔄, a customId)")
    p.add_argument("id", metavar="ID")
    p.add_argument("button", metavar="LABEL|CUSTOM_ID")
    p.add_argument("--wait", action="store_true")
    p.add_argument("--download", metavar="DIR")
    p.add_argument("--timeout", type=float, default=1800.0)

    p = sub.add_parser("seed", parents=[common], help="print a finished task's seed")
    p.add_argument("id", metavar="ID")

    p = sub.add_parser("batch", parents=[common], help="run many prompts from a file")
    p.add_argument("file", help="one prompt per line, or JSONL with a 'prompt' per line")
    p.add_argument("--out", required=True, metavar="DIR", help="images, manifest and journal")
    p.add_argument("--concurrency", type=int, default=8, metavar="K", help="jobs in flight")
    p.add_argument("--upscale", metavar="U1..U4|all", help="press these upscale buttons")
    p.add_argument("--resume", action="store_true", help="continue a stopped run in --out")
    p.add_argument("--seed", action="store_true", help="record each grid's seed")
    p.add_argument("--no-download", action="store_true", help="do not download images")
    p.add_argument("--timeout", type=float, default=3600.0, help="per-job wait limit (s)")
    p.add_argument("--plain", action="store_true", help="plain progress lines, no bar")

    p = sub.add_parser("simulate", help="serve the relay simulator for your own tests")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    return parser


@contextlib.asynccontextmanager
async def _client(args: argparse.Namespace) -> AsyncIterator[AsyncClient]:
    if args.simulate:
        from .simulator import simulate

        async with (
            simulate() as relay,
            AsyncClient(
                relay.api_key,
                base_url=relay.base_url,
                mode=args.mode,
                poll=PollPolicy(interval=0.25, first_poll=0.05, near_done_interval=0.1),
            ) as mj,
        ):
            yield mj
    else:
        async with AsyncClient(mode=args.mode) as mj:
            yield mj


async def _run(args: argparse.Namespace, out: _Output) -> int:
    if args.command == "simulate":
        from .simulator import run_server

        await run_server(args.host, args.port)
        return EXIT_OK
    if args.command == "batch":
        items = read_prompts(args.file)
        upscale = parse_upscale(args.upscale)
    async with _client(args) as mj:
        if args.command == "imagine":
            if args.wait or args.download:
                task = await mj.imagine(args.prompt, wait=True, timeout=args.timeout)
                return await _finish(mj, task, args, out)
            out.submitted(await mj.imagine(args.prompt))
        elif args.command == "action":
            if args.wait or args.download:
                task = await mj.action(args.id, args.button, wait=True, timeout=args.timeout)
                return await _finish(mj, task, args, out)
            out.submitted(await mj.action(args.id, args.button))
        elif args.command == "fetch":
            for task in await mj.fetch_many(args.ids):
                out.task(task)
        elif args.command == "wait":
            failed = 0
            async for task in mj.as_completed(args.ids, timeout=args.timeout):
                out.task(task)
                failed += task.is_failed
            return EXIT_FAILED if failed else EXIT_OK
        elif args.command == "seed":
            out.value("seed", await mj.image_seed(args.id))
        elif args.command == "batch":
            return await _batch(mj, args, items, upscale, out)
    return EXIT_OK


async def _finish(mj: AsyncClient, task: Task, args: argparse.Namespace, out: _Output) -> int:
    out.task(task)
    if args.download:
        out.value("file", str(await mj.download(task, args.download)))
    return EXIT_OK


async def _batch(
    mj: AsyncClient, args: argparse.Namespace, items: Any, upscale: Sequence[str], out: _Output
) -> int:
    reporter = make_reporter(sys.stderr, plain=args.plain or args.json)
    try:
        summary = await run_batch(
            mj,
            items,
            args.out,
            concurrency=args.concurrency,
            upscale=upscale,
            seed=args.seed,
            download=not args.no_download,
            resume=args.resume,
            timeout=args.timeout,
            on_progress=reporter,
        )
    finally:
        reporter.close()
    if args.json:
        out.value(
            "summary",
            {
                "total": summary.total,
                "succeeded": summary.succeeded,
                "failed": summary.failed,
                "rejected": summary.rejected,
                "unknown": summary.unknown,
                "manifest": str(summary.manifest),
                "seconds": round(summary.elapsed, 2),
            },
        )
    else:
        print(
            f"{summary.succeeded}/{summary.total} succeeded, {summary.failed} failed, "
            f"{summary.rejected} rejected, {summary.unknown} unknown outcome "
            f"in {summary.elapsed:.1f}s; manifest: {summary.manifest}",
            file=out.stream,
        )
        if summary.unknown:
            print(
                "note: 'unknown outcome' prompts may have created jobs; check them before "
                "submitting again (see the manifest)",
                file=out.stream,
            )
    return EXIT_OK if summary.ok else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``quickmj`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    out = _Output(getattr(args, "json", False), sys.stdout)
    try:
        return asyncio.run(_run(args, out))
    except TaskFailedError as exc:
        if not out.as_json:
            out.task(exc.task)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except QuickMJError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        hint = " (resume with --resume)" if args.command == "batch" else ""
        print(f"interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
