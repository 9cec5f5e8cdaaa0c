"""The ``quickmj`` command line: one-shot commands, the batch job and the simulator.

Configuration comes from ``--api-key``/``--base-url`` or ``QUICKMJ_API_KEY`` /
``QUICKMJ_BASE_URL``; ``--simulate`` runs against an embedded relay simulator (no key,
no network). Every error is one line on stderr (a JSON object with ``--json``) and the
exit code says what happened: 0 done, 1 failed, 2 usage, 3 relay unreachable (an outage
stopped a batch early), 130 interrupted. ``--debug`` shows the traceback. The key is
never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import sys
import traceback
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO, cast

from ._version import __version__

__all__ = ("EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_OUTAGE", "EXIT_USAGE", "main")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_OUTAGE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
# _config.MODES and _config.DIALECTS, spelt here so that ``quickmj --version`` and shell
# completion need not import attrs (tests/test_cli_honesty.py checks they agree).
_MODES = ("fast", "relax", "turbo")
_DIALECTS = ("auto", "quickrouter", "midjourney-proxy", "trueai")

_EPILOG = """\
examples:
  quickmj batch prompts.txt --out out/ --upscale U1      run a file of prompts
  quickmj batch - --out out/ < prompts.txt                prompts from stdin
  quickmj imagine "a red fox in snow" --download out/     one job, saved
  quickmj batch prompts.txt --simulate --out out/         no key, no network

configuration: QUICKMJ_API_KEY, QUICKMJ_BASE_URL, QUICKMJ_MODE, QUICKMJ_LOG=debug|info
exit codes: 0 done, 1 failed, 2 usage, 3 relay unreachable, 130 interrupted
"""


class _Help(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written. Defaults are written into each option's help by hand:
    argparse's automatic ``(default: ...)`` repeated them and showed ``None``."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one JSON object on stderr with --json."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        if not self.json_errors:
            super().error(message)
        body = {"type": "UsageError", "message": f"{self.prog}: {message}"}
        self.exit(EXIT_USAGE, json.dumps({"error": body}, ensure_ascii=False) + "\n")


class _JsonParser(_Parser):
    json_errors = True


def _common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # The same options before or after the command: on the subcommands they default to
    # SUPPRESS so they never overwrite a value given before the command.
    default: Any = None if top else argparse.SUPPRESS
    flag_default: Any = False if top else argparse.SUPPRESS
    g = parser.add_argument_group("connection")
    g.add_argument(
        "--api-key",
        default=default,
        metavar="KEY",
        help="the relay key (default: $QUICKMJ_API_KEY)",
    )
    g.add_argument(
        "--base-url",
        default=default,
        metavar="URL",
        help="the relay (default: $QUICKMJ_BASE_URL or QuickRouter)",
    )
    g.add_argument(
        "--mode", choices=_MODES, default=default, help="speed mode (default: the key's own)"
    )
    g.add_argument(
        "--dialect",
        choices=_DIALECTS,
        default=default,
        help="relay software (default: from the URL)",
    )
    g.add_argument(
        "--simulate",
        action="store_true",
        default=flag_default,
        help="use an embedded relay simulator (no key, no network)",
    )
    o = parser.add_argument_group("output")
    o.add_argument(
        "--json",
        action="store_true",
        default=flag_default,
        help="JSON lines on stdout, JSON errors on stderr",
    )
    o.add_argument(
        "--debug", action="store_true", default=flag_default, help="show tracebacks and debug logs"
    )


def _job_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", action="store_true", help="wait until the job finishes")
    p.add_argument("--download", metavar="DIR", help="save the result into DIR (implies --wait)")
    p.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        metavar="S",
        help="wait limit in seconds (default: 1800)",
    )


def _parser(*, json_errors: bool = False) -> argparse.ArgumentParser:
    kind = _JsonParser if json_errors else _Parser
    parser = kind(
        prog="quickmj",
        description="Midjourney through QuickRouter and midjourney-proxy relays.",
        epilog=_EPILOG,
        formatter_class=_Help,
    )
    parser.add_argument("--version", action="version", version=f"quickmj {__version__}")
    _common(parser, top=True)
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        parser_class=kind,
    )

    def cmd(name: str, help_text: str, example: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=f"example:\n  {example}",
            formatter_class=_Help,
        )
        _common(p, top=False)
        return p

    p = cmd("imagine", "submit a prompt", 'quickmj imagine "a red fox --ar 16:9" --download out/')
    p.add_argument("prompt")
    p.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="FILE|URL",
        help="a reference image (repeatable)",
    )
    _job_options(p)
    p = cmd(
        "blend", "blend 2 to 5 images", "quickmj blend a.png b.png --dimensions LANDSCAPE --wait"
    )
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument(
        "--dimensions",
        choices=["PORTRAIT", "SQUARE", "LANDSCAPE"],
        default=None,
        help="aspect ratio",
    )
    _job_options(p)
    p = cmd("describe", "four prompts for an image", "quickmj describe photo.png --wait")
    p.add_argument("image", metavar="IMAGE")
    _job_options(p)
    p = cmd(
        "shorten", "analyse and shorten a prompt", 'quickmj shorten "a very long prompt" --wait'
    )
    p.add_argument("prompt")
    _job_options(p)
    p = cmd(
        "action",
        "press a button (U1, V2, 🔄, a customId)",
        "quickmj action 1730621826053455 U2 --download out/",
    )
    p.add_argument("id", metavar="ID")
    p.add_argument("button", metavar="LABEL|CUSTOM_ID")
    _job_options(p)
    p = cmd(
        "modal",
        "confirm a job waiting in MODAL (custom zoom, vary region)",
        'quickmj modal 1730621826053455 --prompt "fox --zoom 1.5" --wait',
    )
    p.add_argument("id", metavar="ID")
    p.add_argument("--prompt", default=None, help="the prompt (custom zoom: with --zoom 1..2)")
    p.add_argument(
        "--mask", default=None, metavar="PNG", help="vary region: white where to repaint"
    )
    _job_options(p)
    p = cmd(
        "change",
        "upscale, vary or reroll a grid (/submit/change)",
        "quickmj change 1730621826053455 U1 --wait",
    )
    p.add_argument("id", metavar="ID")
    p.add_argument("label", metavar="U1..U4|V1..V4|R")
    _job_options(p)
    p = cmd(
        "video",
        "animate an image (/submit/video)",
        'quickmj video "waves" --image first.png --wait',
    )
    p.add_argument("prompt")
    p.add_argument("--image", default=None, metavar="FILE|URL", help="the first frame")
    p.add_argument("--motion", choices=["low", "high"], default=None, help="how much movement")
    _job_options(p)
    p = cmd("cancel", "cancel a job (TrueAI relays)", "quickmj cancel 1730621826053455")
    p.add_argument("id", metavar="ID")
    p = cmd("fetch", "show tasks", "quickmj fetch 1730621826053455 1730621826053456")
    p.add_argument("ids", nargs="+", metavar="ID")
    p = cmd("wait", "wait for tasks to finish", "quickmj wait 1730621826053455 --timeout 600")
    p.add_argument("ids", nargs="+", metavar="ID")
    p.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        metavar="S",
        help="wait limit in seconds (default: 1800)",
    )
    p = cmd("seed", "print a finished task's seed", "quickmj seed 1730621826053455")
    p.add_argument("id", metavar="ID")
    cmd("balance", "what the key has left and has used (QuickRouter)", "quickmj balance --json")
    _batch_parser(cmd)
    p = cmd(
        "reconcile",
        "settle a batch's unknown outcomes (relays that list tasks)",
        "quickmj reconcile out/",
    )
    p.add_argument("out", metavar="OUT")
    p.add_argument("--no-download", action="store_true", help="do not download images")
    p.add_argument("--plain", action="store_true", help="plain progress lines, no bar")
    _keys_option(p)
    _gallery_parser(sub)
    p = sub.add_parser(
        "simulate",
        help="serve the relay simulator for your own tests",
        formatter_class=_Help,
        epilog=(
            "examples:\n  quickmj simulate --port 8080 --dialect trueai\n"
            "  quickmj simulate --preset realistic      # 15 s refresh lag, ~50 s jobs\n"
            "  quickmj simulate --refresh-interval 15 --job-seconds 30"
        ),
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on (default: 127.0.0.1, this machine only)",
    )
    p.add_argument("--port", type=int, default=8080, help="the port to listen on (default: 8080)")
    p.add_argument(
        "--dialect",
        choices=_DIALECTS[1:],
        default="quickrouter",
        help="which relay to imitate (default: quickrouter)",
    )
    p.add_argument(
        "--preset",
        choices=["fast", "realistic"],
        default="fast",
        help="fast: jobs finish in a quarter second; realistic: production timings (default: fast)",
    )
    p.add_argument(
        "--refresh-interval",
        type=_seconds,
        default=argparse.SUPPRESS,  # the preset's
        metavar="S",
        help="quickrouter: seconds between the relay's refreshes of its copies (real: 15; "
        "default: the preset's)",
    )
    p.add_argument(
        "--job-seconds",
        type=_seconds,
        default=argparse.SUPPRESS,  # the preset's
        metavar="S",
        help="seconds a job takes from submit to done, a tenth of it waiting (default: the "
        "preset's)",
    )
    p.add_argument(
        "--quota",
        type=_usd_arg,
        default=None,
        metavar="USD",
        help="quickrouter: each key's quota in USD, charged per action at new-api's prices; "
        "when it is used up every request gets new-api's 401 (default: unlimited)",
    )
    p = sub.add_parser(
        "completion",
        help="print a shell completion script",
        formatter_class=_Help,
        epilog="example:\n  quickmj completion bash >> ~/.bashrc",
    )
    p.add_argument("shell", choices=["bash", "zsh", "fish"])
    return parser


def _gallery_parser(sub: Any) -> None:
    p = sub.add_parser(
        "gallery",
        help="write OUT/index.html: every prompt of a batch with its images (offline)",
        description="Write OUT/index.html: a static contact sheet of a batch (thumbnails,\n"
        "prompts, task ids, seeds, state tags, statuses, failure reasons), failed and\n"
        "unknown prompts first, filterable by status. No network, no script: open it\n"
        "from disk (or copy the directory).",
        formatter_class=_Help,
        epilog="examples:\n  quickmj gallery out/\n"
        "  quickmj gallery out/ --output snapshot.html   # a batch that is still running",
    )
    p.add_argument("out", metavar="OUT", help="a batch's output directory (batch --out)")
    p.add_argument(
        "--output",
        default=None,
        metavar="FILE",
        help="write the page here instead (a running batch's directory belongs to the run)",
    )
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON output")
    o.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )


def _gallery(args: argparse.Namespace, out: _Output) -> int:
    from ._gallery import write_gallery

    page = write_gallery(args.out, output=args.output)
    if out.as_json:
        out.json({"gallery": str(page)})
    else:
        print(f"gallery: {page}", file=out.stream)
    return EXIT_OK


def _amount(unit: str) -> Callable[[str], float]:
    """An argparse type: a finite, non-negative number of ``unit`` (USD may carry a ``$``)."""

    def parse(text: str) -> float:
        try:
            value = float(text.strip().removeprefix("$") if unit == "USD" else text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of {unit}: {text!r}") from None
        if not 0 <= value < float("inf"):
            raise argparse.ArgumentTypeError(f"{unit} must be finite and not negative: {text!r}")
        return value

    return parse


_seconds = _amount("seconds")
_usd_arg = _amount("USD")


def _simulator_config(args: argparse.Namespace) -> Any:
    """``quickmj simulate``'s SimulatorConfig: the preset, then the timing options."""
    from .testing import SimulatorConfig

    overrides: dict[str, Any] = {"dialect": args.dialect}
    refresh = getattr(args, "refresh_interval", None)
    job = getattr(args, "job_seconds", None)
    if refresh is not None:
        overrides["refresh_interval"] = refresh
    if job is not None:
        overrides["queue_seconds"] = job / 10
        overrides["run_seconds"] = job - job / 10
    if getattr(args, "quota", None) is not None:
        overrides["quota_usd"] = args.quota
    return SimulatorConfig.preset(args.preset, **overrides)


def _keys_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--keys",
        default=None,
        metavar="FILE",
        help="several accounts: one key per line, optionally a base URL and a mode after it",
    )


def _batch_parser(cmd: Callable[[str, str, str], argparse.ArgumentParser]) -> None:
    p = cmd(
        "batch",
        "run many prompts from a file (or - for stdin)",
        "quickmj batch prompts.txt --out out/ --upscale U1 --concurrency 8",
    )
    p.add_argument(
        "file", help="one prompt per line (JSON objects with a 'prompt' key allowed), or -"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="images, manifest and journal")
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        metavar="K",
        help="at most K prompts in progress (default: as many as the accounts take)",
    )
    _keys_option(p)
    p.add_argument(
        "--upscale",
        action="append",
        default=[],
        metavar="U1..U4|all",
        help="press these upscale buttons (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue a stopped run in --out")
    p.add_argument(
        "--resubmit-unknown",
        action="store_true",
        help="with --resume: send 'unknown' prompts again (may pay twice)",
    )
    p.add_argument(
        "--reconcile",
        action="store_true",
        help="with --resume: first settle 'unknown' prompts on relays that list tasks",
    )
    p.add_argument("--seed", action="store_true", help="record each grid's seed")
    p.add_argument("--no-download", action="store_true", help="do not download images")
    p.add_argument(
        "--name",
        default="{task}",
        metavar="TEMPLATE",
        help="image file names: {line:05d}, {slug}, {task}, {label} (default: {task})",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        metavar="S",
        help="per-job wait limit; also how long the relay may refuse every submit "
        "(queue full, 429) before the rest is left pending (default: 3600)",
    )
    p.add_argument("--plain", action="store_true", help="plain progress lines, no bar")
    p.add_argument(
        "--gallery",
        action="store_true",
        help="also write OUT/index.html (every prompt with its images) at the end or on Ctrl-C",
    )
    _spend_options(p)


def _spend_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cost")
    g.add_argument(
        "--dry-run",
        action="store_true",
        help="show the submits the run would make (and their cost); send nothing",
    )
    g.add_argument(
        "--price",
        action="append",
        default=[],
        type=_price_arg,
        metavar="ACTION=USD",
        help="the relay's price of one submit (imagine=0.10, upscale=0.05; repeatable); "
        "kept in OUT/spend.json",
    )
    g.add_argument(
        "--max-spend",
        type=_usd_arg,
        default=None,
        metavar="USD",
        help="stop starting prompts before the batch directory's spend would cross USD "
        "(every run counted; needs the prices); the rest stays pending for --resume",
    )


def _price_arg(text: str) -> str:
    """An argparse type: one ``ACTION=USD`` price, checked (kept as written)."""
    from ._spend import parse_prices
    from .errors import InvalidInputError

    try:
        parse_prices([text])
    except InvalidInputError as exc:
        raise argparse.ArgumentTypeError(_flag_words(str(exc)).removeprefix("--price: ")) from None
    return text


# ---- output ----


def task_json(task: Any) -> dict[str, Any]:
    """A task as the CLI's JSON (snake_case, like every other object it prints)."""
    return {
        "id": task.id,
        "status": task.status.value,
        "action": task.action.value if task.action else None,
        "progress": task.progress,
        "prompt": task.prompt,
        "image_url": task.image_url,
        "video_url": task.video_url,
        "fail_reason": task.fail_reason or None,
        "buttons": [b.display for b in task.buttons],
        "final_prompt": task.final_prompt,
    }


class _Output:
    """Human lines or JSON lines on stdout; the one place the CLI prints results."""

    def __init__(self, as_json: bool, stream: TextIO) -> None:
        self.as_json = as_json
        self.stream = stream

    def task(self, task: Any) -> None:
        if self.as_json:
            self.json({"task": task_json(task)})
            return
        progress = f" {task.progress}" if task.progress else ""
        print(f"{task.id}  {task.status.value}{progress}", file=self.stream)
        if task.image_url:
            print(f"  image: {task.image_url}", file=self.stream)
        if task.fail_reason:
            print(f"  reason: {task.fail_reason}", file=self.stream)
        if task.final_prompt and task.status.value == "SUCCESS" and not task.image_url:
            print(f"  result: {task.final_prompt}", file=self.stream)
        if task.buttons:
            print(f"  buttons: {', '.join(b.display for b in task.buttons)}", file=self.stream)

    def job(self, job: Any) -> None:
        queued = job.queued
        if self.as_json:
            self.json(
                {
                    "job": {
                        "id": job.id,
                        "code": job.code,
                        "needs_modal": job.needs_modal,
                        "queued": queued,
                        "queue_position": job.queue_position,
                        "description": job.description,
                    }
                }
            )
            return
        extra = " (needs modal: finish it with 'quickmj modal')" if job.needs_modal else ""
        extra += f" (queue position {job.queue_position})" if queued else ""
        print(f"submitted {job.id}{extra}", file=self.stream)

    def value(self, key: str, value: Any) -> None:
        if self.as_json:
            self.json({key: value})
        else:
            print(value, file=self.stream)

    def json(self, obj: Any) -> None:
        print(json.dumps(obj, ensure_ascii=False), file=self.stream, flush=True)


# ---- running ----


@contextlib.asynccontextmanager
async def _client(args: argparse.Namespace) -> AsyncIterator[Any]:
    from ._client import AsyncClient
    from ._poller import PollPolicy

    if args.simulate:
        from .testing import simulate

        async with simulate(dialect=args.dialect or "quickrouter") as relay:
            fast = PollPolicy(interval=0.25, first_poll=0.05, near_done_interval=0.1)
            async with AsyncClient(
                relay.api_key,
                base_url=relay.base_url,
                mode=args.mode,
                dialect=cast(Any, relay.dialect),
                poll=fast,
            ) as mj:
                yield mj
        return
    async with AsyncClient(
        args.api_key, base_url=args.base_url, mode=args.mode, dialect=args.dialect
    ) as mj:
        yield mj


@contextlib.asynccontextmanager
async def _accounts(args: argparse.Namespace) -> AsyncIterator[Any]:
    """The batch's accounts: the one client, or an AccountPool from ``--keys FILE``."""
    if not args.keys:
        async with _client(args) as mj:
            yield mj
        return
    from ._accounts import Account, AccountPool, read_keys

    if args.api_key:
        raise _Usage("--keys and --api-key do not go together")
    accounts = read_keys(args.keys)
    if not args.simulate:
        async with AccountPool(
            accounts, base_url=args.base_url, mode=args.mode, dialect=args.dialect
        ) as pool:
            yield pool
        return
    from ._poller import PollPolicy
    from .testing import simulate

    keys = tuple(a.api_key.get() for a in accounts)
    async with simulate(dialect=args.dialect or "quickrouter", api_keys=keys) as relay:
        here = [Account(a.api_key, None, a.mode) for a in accounts]  # all on the simulator
        fast = PollPolicy(interval=0.25, first_poll=0.05, near_done_interval=0.1)
        async with AccountPool(
            here,
            base_url=relay.base_url,
            mode=args.mode,
            dialect=cast(Any, relay.dialect),
            poll=fast,
        ) as pool:
            yield pool


async def _run(args: argparse.Namespace, out: _Output) -> int:
    if args.command == "simulate":
        from .testing import run_server

        await run_server(args.host, args.port, _simulator_config(args))
        return EXIT_OK
    if args.command == "batch":
        return await _batch(args, out)
    if args.command == "reconcile":
        return await _reconcile(args, out)
    if args.command == "gallery":
        return _gallery(args, out)
    async with _client(args) as mj:
        code: int = await _COMMANDS[args.command](mj, args, out)
        return code


def _announce(job: Any, args: argparse.Namespace, out: _Output) -> None:
    """Say a paid job's id on stderr the moment it exists (stdout stays the result)."""
    args.running = [job.id]  # named by the Ctrl-C message (see main)
    if out.as_json:
        body = {"id": job.id, "wait": f"quickmj wait {job.id}"}
        _say(json.dumps({"submitted": body}, ensure_ascii=False))
    else:
        _say(f"submitted: task {job.id} (quickmj wait {job.id})")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _submit_and_report(
    job_or_sub: Any, mj: Any, args: argparse.Namespace, out: _Output
) -> int:
    job = await job_or_sub
    _announce(job, args, out)
    if not (getattr(args, "wait", False) or getattr(args, "download", None)):
        out.job(job)
        return EXIT_OK
    task = await job.wait(timeout=args.timeout)
    out.task(task)
    if args.download:
        out.value("file", str(await mj.download(task, args.download)))
    return EXIT_OK


async def _cmd_imagine(mj: Any, args: argparse.Namespace, out: _Output) -> int:
    return await _submit_and_report(mj.imagine(args.prompt, images=args.image), mj, args, out)


async def _cmd_blend(mj: Any, args: argparse.Namespace, out: _Output) -> int:
    return await _submit_and_report(
        mj.blend(args.images, dimensions=args.dimensions), mj, args, out
    )


async def _cmd_describe(mj: Any, args: argparse.Namespace, out: _Output) -> int:
    return await _submit_and_report(mj.describe(args.image), mj, args, out)


async def _cmd_shorten(mj: Any, args: argparse.Namespace, out: _Output) -> int:
    return await _submit_and_report(mj.shorten(args.prompt), mj, args, out)


async def _cmd_action(mj: Any, args: argparse.Namespace, out: _Output) -> int:
    return await _submit_and_report(mj.action(args.id, args.button), mj, args, out)


async def _cmd_modal(mj: Any, args: argparse.Namespace, out: _Output) -> int:
    return await _submit_and_report(
        mj.modal(args.id, prompt=args.prompt, mask=args.mask), mj, args, out
    )


async def _cmd_change(mj: Any, args: argparse.Namespace, out: _Output) -> int:
    return await _submit_and_report(mj.change(args.id, args.label), mj, args, out)


async def _cmd_video(mj: Any, args: argparse.Namespace, out: _Output) -> int:
    return await _submit_and_report(
        mj.video(args.prompt, image=args.image, motion=args.motion), mj, args, out
    )


async def _cmd_cancel(mj: Any, args: argparse.Namespace, out: _Output) -> int:
    # TrueAI answers success to a cancel of any id, known or not: ask about it first so
    # a mistyped id is an error (TaskNotFoundError), not a silent "cancelled".
    await mj.fetch(args.id)
    await mj.cancel(args.id)
    out.value("cancelled", args.id)
    return EXIT_OK


async def _cmd_fetch(mj: Any, args: argparse.Namespace, out: _Output) -> int:
    for task in await mj.fetch_many(args.ids):
        out.task(task)
    return EXIT_OK


async def _cmd_wait(mj: Any, args: argparse.Namespace, out: _Output) -> int:
    failed = 0
    args.running = list(args.ids)
    async for task in mj.as_completed(args.ids, timeout=args.timeout):
        out.task(task)
        failed += task.is_failed
        with contextlib.suppress(ValueError):
            args.running.remove(task.id)
    return EXIT_FAILED if failed else EXIT_OK


async def _cmd_seed(mj: Any, args: argparse.Namespace, out: _Output) -> int:
    out.value("seed", await mj.image_seed(args.id))
    return EXIT_OK


async def _cmd_balance(mj: Any, args: argparse.Namespace, out: _Output) -> int:
    balance = await mj.balance()
    if out.as_json:
        out.json({"balance": balance.as_dict()})
        return EXIT_OK
    print(balance, file=out.stream)
    if balance.expires_at is not None:
        print(f"  expires: {balance.expires_at.isoformat()}", file=out.stream)
    if balance.unit == "display":
        print("  unit: the relay's display unit (it did not say which currency)", file=out.stream)
    return EXIT_OK


_COMMANDS: dict[str, Callable[[Any, argparse.Namespace, _Output], Any]] = {
    "imagine": _cmd_imagine,
    "blend": _cmd_blend,
    "describe": _cmd_describe,
    "shorten": _cmd_shorten,
    "action": _cmd_action,
    "modal": _cmd_modal,
    "change": _cmd_change,
    "video": _cmd_video,
    "cancel": _cmd_cancel,
    "fetch": _cmd_fetch,
    "wait": _cmd_wait,
    "seed": _cmd_seed,
    "balance": _cmd_balance,
}


async def _batch(args: argparse.Namespace, out: _Output) -> int:
    from ._batch import check_name_template, parse_upscale, read_prompts, run_batch
    from ._progress import make_reporter

    items = read_prompts(args.file)  # input errors surface before anything is paid for
    upscale = parse_upscale(args.upscale)
    check_name_template(args.name)
    if args.concurrency is not None and args.concurrency < 1:
        raise _Usage("--concurrency must be at least 1")
    if (args.resubmit_unknown or args.reconcile) and not args.resume:
        raise _Usage("--resubmit-unknown and --reconcile go with --resume")
    if args.dry_run:
        return _dry_run(args, items, upscale, out)
    if not args.resume:
        done = _finished_before(args.out, items)
        if done is not None:
            if args.gallery:
                from ._gallery import write_gallery

                write_gallery(args.out)
            return _print_finished(args.out, done, out)
    reporter = make_reporter(sys.stderr, plain=args.plain, as_json=args.json)
    async with _accounts(args) as mj:
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
                name=args.name,
                resubmit_unknown=args.resubmit_unknown,
                reconcile=args.reconcile,
                on_progress=reporter,
                gallery=args.gallery,
                max_spend=args.max_spend,
                prices=args.price,
            )
        finally:
            reporter.close()
    _print_summary(summary, out, reporter)
    if args.gallery and not out.as_json and (Path(args.out) / "index.html").is_file():
        print(f"gallery: {Path(args.out) / 'index.html'}", file=out.stream)
    return EXIT_OK if summary.ok else EXIT_FAILED


def _dry_run(args: argparse.Namespace, items: Sequence[Any], upscale: Any, out: _Output) -> int:
    """``batch --dry-run``: the plan, with no key, no relay and nothing written."""
    from ._batch import plan_batch

    plan = plan_batch(
        items,
        args.out,
        upscale=upscale,
        resume=args.resume,
        resubmit_unknown=args.resubmit_unknown,
        prices=args.price,
        mode=args.mode or _keys_mode(args),
        max_spend=args.max_spend,
    )
    if out.as_json:
        out.json({"plan": plan.as_json()})
        return EXIT_OK
    for line in _plan_lines(plan):
        print(line, file=out.stream)
    return EXIT_OK


def _keys_mode(args: argparse.Namespace) -> str | None:
    """The one mode of every ``--keys`` account (None: the keys' defaults, or mixed)."""
    if not args.keys:
        return None
    from ._accounts import read_keys

    modes = {a.mode for a in read_keys(args.keys)}
    return modes.pop() if len(modes) == 1 else None


def _usd(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f} USD"


def _plan_lines(plan: Any) -> list[str]:
    """A plan for people: one line per action and mode, the total, the cap."""
    left = " left" if plan.spent is not None else ""
    lines = [f"dry run: {plan.open} of {plan.prompts} prompts{left} to run; nothing sent"]
    for x in plan.lines:
        each = f" (no price: --price {x.action}=USD)"
        if x.usd is not None:
            each = f" x {x.usd / x.submits:.3f} = {x.usd:.2f} USD"
        lines.append(f"  {x.action:<8} {x.mode or 'default':<8} {x.submits:>6}{each}")
    cost = _usd(plan.usd) if plan.usd is not None else "cost unknown"
    lines.append(f"  total: {plan.submits} submits, {cost}")
    if plan.spent is not None:
        lines.append(f"  spent already in {plan.spent.submits} submits: {_usd(plan.spent.usd)}")
    if plan.unknown:
        lines.append(f"  {plan.unknown} unknown outcome(s) left alone (quickmj reconcile)")
    if plan.cap is not None and plan.usd is not None:
        total = plan.usd + ((plan.spent.usd or 0.0) if plan.spent else 0.0)
        fits = "fits under" if total <= plan.cap + 1e-9 else "would stop at"
        lines.append(f"  {fits} --max-spend {plan.cap:.2f} USD (directory total {total:.2f})")
    sources = ", ".join(f"{k} {v}" for k, v in sorted(plan.price_sources.items()))
    if sources:
        lines.append(f"  prices: {sources} (kept in OUT/spend.json)")
    return lines


def _finished_before(out_dir: str, items: Sequence[Any]) -> list[Any] | None:
    """The journal's rows when ``out_dir`` holds this very batch (the same prompts and
    options, compared with the journal's record of them), else None.

    Raises _Usage when it is this batch but not finished (that needs --resume). Any other
    state (no journal, another batch, a damaged or locked one) is left to run_batch, which
    explains it."""
    from ._journal import Journal
    from ._outdir import JOURNAL_NAME, BatchDir
    from .errors import QuickMJError

    if not (Path(out_dir) / JOURNAL_NAME).is_file():
        return None
    pairs = [(i.prompt, dict(i.options)) for i in items]
    try:
        # The lock first: a journal is read only when no run is writing it.
        with BatchDir(out_dir) as bdir, Journal(bdir.journal_path, create=False) as journal:
            if not journal.holds_input() or not journal.same_input(pairs):
                return None
            rows = journal.rows()
    except (QuickMJError, OSError):
        return None
    open_rows = sum(not r.phase.is_final for r in rows)
    if open_rows:
        raise _Usage(
            f"{out_dir!r} holds this batch, not finished ({open_rows} of {len(rows)} prompts "
            "open): continue it with --resume"
        )
    return rows


def _print_finished(out_dir: str, rows: Sequence[Any], out: _Output) -> int:
    """A re-run of a finished batch: its outcome, and nothing sent (exit as it ended)."""
    from ._outdir import MANIFEST_NAME

    counts = {k: sum(r.phase.value == k for r in rows) for k in _OUTCOMES}
    if out.as_json:
        body = {"total": len(rows), **counts, "timed_out": 0, "incomplete": 0, "pending": 0}
        out.json(
            {
                "summary": {
                    **body,
                    "manifest": str(Path(out_dir) / MANIFEST_NAME),
                    "seconds": 0.0,
                    "accounts": [],
                    "stopped_submitting": None,
                    "key_refused": None,
                    "nothing_sent": True,
                }
            }
        )
    else:
        rest = "".join(f", {n} {k}" for k, n in counts.items() if n and k != "succeeded")
        print(
            f"{out_dir} already holds this batch, complete: {counts['succeeded']}/{len(rows)} "
            f"succeeded{rest}; nothing sent",
            file=out.stream,
        )
    return EXIT_OK if counts["succeeded"] == len(rows) else EXIT_FAILED


_OUTCOMES = ("succeeded", "failed", "rejected", "unknown")


async def _reconcile(args: argparse.Namespace, out: _Output) -> int:
    from ._batch import reconcile
    from ._progress import make_reporter

    reporter = make_reporter(sys.stderr, plain=args.plain, as_json=args.json)
    async with _accounts(args) as mj:
        try:
            summary = await reconcile(mj, args.out, download=not args.no_download)
        finally:
            reporter.close()
    _print_summary(summary, out, reporter)
    return EXIT_OK if not summary.unsettled else EXIT_FAILED


def _print_unsettled(unsettled: Sequence[Any], out: _Output) -> None:
    for u in unsettled:
        if out.as_json:
            out.json(
                {
                    "unsettled": {
                        "index": u.index,
                        "prompt": u.prompt,
                        "tag": u.tag,
                        "sent_at": u.sent_at,
                        "reason": u.reason,
                        "matches": list(u.matches),
                    }
                }
            )
        else:
            print(
                f"unsettled: line {u.index + 1} (state tag {u.tag}): {u.prompt[:60]}\n  {u.reason}",
                file=out.stream,
            )


def _print_summary(summary: Any, out: _Output, reporter: Any) -> None:
    _print_unsettled(summary.unsettled, out)
    fields = (
        "total",
        "succeeded",
        "failed",
        "rejected",
        "timed_out",
        "incomplete",
        "unknown",
        "pending",
    )
    if out.as_json:
        body = {k: getattr(summary, k) for k in fields}
        out.json(
            {
                "summary": {
                    **body,
                    "manifest": str(summary.manifest),
                    "seconds": round(summary.elapsed, 2),
                    "accounts": [_account_json(a) for a in summary.accounts],
                    "stopped_submitting": summary.stopped_submitting,
                    "key_refused": getattr(summary, "key_refused", None),
                    "spend": summary.spend.as_json() if summary.spend else None,
                }
            }
        )
        return
    parts = [f"prompts: {summary.succeeded}/{summary.total} succeeded"]
    parts += [
        f"{getattr(summary, k)} {k.replace('_', ' ')}" for k in fields[2:] if getattr(summary, k)
    ]
    print(
        f"{', '.join(parts)} in {summary.elapsed:.1f}s; manifest: {summary.manifest}",
        file=out.stream,
    )
    for a in summary.accounts:
        print(_account_line(a), file=out.stream)
    for line in _spend_lines(summary):
        print(line, file=out.stream)
    stopped = _flag_words(summary.stopped_submitting or "")
    refused = getattr(summary, "key_refused", None)  # its line says --resume
    if stopped and refused:
        fix = "top it up, then --resume" if refused == "exhausted" else "--resume with a valid key"
        print(
            f"stopped: {stopped}; {summary.pending} prompt(s) pending, nothing created for "
            f"them: {fix}",
            file=out.stream,
        )
    elif stopped and not (summary.spend and summary.spend.stopped):
        print(
            f"note: stopped submitting: {stopped}; the {summary.pending} pending prompt(s) "
            "created nothing",
            file=out.stream,
        )
    if summary.unknown:
        print(
            "note: 'unknown' prompts may have created jobs: settle them with 'quickmj reconcile "
            "OUT' (or check the relay's dashboard) before sending them again",
            file=out.stream,
        )
    capped = bool(summary.spend and summary.spend.stopped)  # its line says --resume
    if summary.resumable and not capped and not refused:
        print(
            "note: run again with --resume to finish timed out, incomplete and pending prompts",
            file=out.stream,
        )
    failures = getattr(reporter, "failures", None)
    if callable(failures) and not out.as_json:  # with --json the manifest says it
        failures(summary.manifest)


def _spend_lines(summary: Any) -> list[str]:
    """The directory's spend (where prices are known or a cap was kept), and the one
    line of a run the cap stopped."""
    spend = getattr(summary, "spend", None)
    if spend is None or not (spend.prices or spend.cap is not None):
        return []
    parts = ", ".join(f"{k} {_usd(v)}" for k, v in spend.by_action.items())
    accounts = "; ".join(f"account {k}: {_usd(v)}" for k, v in spend.by_account.items())
    lines = [f"spend: {_usd(spend.usd)} in {spend.submits} submits ({parts or 'none'})"]
    lines += [f"  {accounts}"] if accounts else []
    if spend.beyond_prices > 0:
        lines.append(
            f"note: the relay charged {spend.beyond_prices:.2f} USD more than the prices say "
            "(the key's balance shows it): check --price"
        )
    if spend.stopped:
        lines.append(
            f"stopped: {_flag_words(spend.stopped)}; {summary.pending} prompt(s) pending: "
            "--resume --max-spend <more> goes on"
        )
    return lines


def _account_json(a: Any) -> dict[str, Any]:
    import attrs

    return attrs.asdict(a)


def _account_line(a: Any) -> str:
    """One account's share of a batch (named by its key's fingerprint, never the key)."""
    # Jobs (grids and upscales, this run) and prompts (whole batch) are counted apart:
    # a prompt with two upscales is three jobs.
    line = (
        f"  account {a.account}: {a.submitted} jobs sent; its prompts: {a.succeeded} "
        f"succeeded, {a.failed} failed; {a.queue_full} queue-full, {a.rate_limited} "
        f"rate-limited (429) answers; limit {a.limit:g}"
    )
    line += f"; out of rotation: {a.disabled}" if a.disabled else ""
    if getattr(a, "key_rejected", None):
        line += (
            f"; key rejected ({a.key_rejected}): {a.incomplete} jobs kept, resume with a valid key"
        )
    return line


# ---- entry point ----


class _Usage(Exception):
    """A usage error found after parsing (exit code 2)."""


def _exit_code(exc: BaseException) -> int:
    from .errors import ConnectError, InvalidInputError, RelayUnreachableError, UsageError

    # ConnectError: no connection was made (the request never reached the relay).
    if isinstance(exc, (RelayUnreachableError, ConnectError)):
        return EXIT_OUTAGE
    if isinstance(exc, (_Usage, UsageError, InvalidInputError)):
        return EXIT_USAGE
    return EXIT_FAILED


#: The library's messages name what to do in its own terms (its parameters); the CLI
#: says it with its flags. Each pattern matches only those parameter spellings.
_FLAG_WORDS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bresume=True\b"), "--resume"),
    (re.compile(r"\bresubmit_unknown\b"), "--resubmit-unknown"),
    (re.compile(r"\bmax_spend\b"), "--max-spend"),
    (re.compile(r"\bprices\['([\w/]+)'\]"), r"--price \1"),
    (re.compile(r"^prices: "), "--price: "),
    (re.compile(r"\bplan_batch\(\)"), "--dry-run"),
    (re.compile(r"^upscale takes\b"), "--upscale takes"),
    (re.compile(r"^name template\b"), "--name"),
    (re.compile(r"\(base_url\)"), "(QUICKMJ_BASE_URL)"),
    (re.compile(r"^out (?=')"), "--out "),
    (re.compile(r"\bout directory\b"), "--out"),
    (re.compile(r"\ba run with gallery=True\b"), "batch --gallery"),
    (re.compile(r"\(output=FILE\)"), "with --output FILE"),
    (re.compile(r"\bmakes a resume\b"), "makes --resume"),
)


def _flag_words(text: str) -> str:
    """A library message in the CLI's words (``resume=True`` -> ``--resume``...)."""
    for pattern, flag in _FLAG_WORDS:
        text = pattern.sub(flag, text)
    return text


def _error_line(exc: BaseException) -> str:
    """One line for a failure, in CLI terms (never a Python call, never the key)."""
    from .errors import ConfigurationError, TaskFailedError

    text = _flag_words(" ".join(str(exc).split()) or type(exc).__name__)
    if isinstance(exc, ConfigurationError) and "QUICKMJ_API_KEY" in text:
        text = "no API key: pass --api-key or set QUICKMJ_API_KEY (or try --simulate)"
    if isinstance(exc, TaskFailedError):
        text = f"task {exc.task.id} failed: {exc.fail_reason or 'no reason given'}"
    if "演示模式" in text:  # TrueAI's "demo mode, forbidden" (TaskController.cs)
        text += " (this TrueAI relay lets only its admin keys cancel tasks)"
    return text


def _configure_logging(debug: bool) -> None:
    from ._logs import configure, configure_from_env

    if debug:
        configure("DEBUG")
    elif configure_from_env() is None:
        logging.getLogger("quickmj").setLevel(logging.ERROR)  # errors reach the user as one line


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``quickmj`` console script; returns the exit code."""
    try:
        return _main(sys.argv[1:] if argv is None else list(argv))
    except BrokenPipeError:
        # The reader went away (``quickmj completion bash | head -1``): stop quietly, and
        # point the streams at /dev/null so the flush at exit does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                os.dup2(devnull, stream.fileno())
        return EXIT_FAILED


def _wants_json(argv: Sequence[str]) -> bool:
    """``--json`` among the options (before a ``--``), for errors found while parsing."""
    words = list(argv)
    return "--json" in words[: words.index("--")] if "--" in words else "--json" in words


def _main(argv: list[str]) -> int:
    args = _parser(json_errors=_wants_json(argv)).parse_args(argv)
    out = _Output(bool(getattr(args, "json", False)), sys.stdout)
    if args.command == "completion":
        from ._completion import script

        print(script(args.shell, _parser()))
        return EXIT_OK
    _configure_logging(bool(getattr(args, "debug", False)))
    try:
        return asyncio.run(_run(args, out))
    except KeyboardInterrupt:
        _interrupted(args)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        raise
    except Exception as exc:
        if getattr(args, "debug", False):
            traceback.print_exc()
        from .errors import StorageError

        text = _error_line(exc)
        if args.command == "batch" and isinstance(exc, StorageError):
            text += _storage_hint(exc, args.out)
        _report_error(args, text, type(exc).__name__)
        return _exit_code(exc)


def _interrupted(args: argparse.Namespace) -> None:
    """Ctrl-C: say which paid jobs are still running and how to pick them up."""
    running: list[str] = list(getattr(args, "running", None) or ())
    if args.command == "batch":
        text = "interrupted (resume with --resume)"
    elif running:
        which = ", ".join(running)
        text = (
            f"interrupted; task {which} may still be running on the relay: "
            f"pick it up with 'quickmj wait {' '.join(running)}'"
        )
    else:
        text = "interrupted"
    _report_error(args, text, "KeyboardInterrupt", running=running)


def _storage_hint(exc: BaseException, out: str | None = None) -> str:
    """What a batch stopped by the disk should do next (never a promise it cannot keep)."""
    from ._outdir import JOURNAL_NAME

    if out is not None and not (Path(out) / JOURNAL_NAME).exists():
        # No journal: the run stopped before its first submit (--out is unusable).
        return "; nothing was submitted: fix --out (or choose another) and run again"
    if getattr(exc, "unjournaled", ()):
        # The message names those rows and ids: a resume marks them 'unknown'.
        return (
            "; the other paid jobs are in the journal: make room, then run again with "
            "--resume (the rows above will be 'unknown': settle them by their task ids)"
        )
    return "; paid jobs are kept: make room, then run again with --resume"


def _report_error(
    args: argparse.Namespace, text: str, kind: str, *, running: Sequence[str] = ()
) -> None:
    if getattr(args, "json", False):
        body: dict[str, Any] = {"type": kind, "message": text}
        if running:
            body["running"] = list(running)
        print(json.dumps({"error": body}, ensure_ascii=False), file=sys.stderr)
    else:
        print(f"error: {text}" if kind != "KeyboardInterrupt" else text, file=sys.stderr)
