"""The batch job's fault-injection soak: in-process, or as killed and resumed processes.

Shared by ``tests/test_soak.py`` (small sizes, every test session) and
``benchmarks/soak.py`` (thousands of prompts). Not part of the shipped package::

    report = await soak(200, tmp_path)                  # run_batch in this process
    report = await soak_kills(60, tmp_path, kills=6)    # `quickmj batch` processes, kill -9
    print(report.summary())
    assert report.ok, report.problems

Both run the batch against :mod:`quickmj.testing`'s relay simulator with seeded faults
(``SOAK_FAULTS`` / ``KILL_FAULTS``): HTML 502s, 429 + Retry-After, dropped connections
(before a submit creates its job; part-way through other answers), submits answered
ambiguously *after* the job was created (504 / cut), truncated list answers, latency on
every request, a queue limit (code 23, in-process), failing jobs, and every 50th prompt
carrying a banned word (code 24 at submit; a failed job on trueai).

:func:`soak_kills` runs ``python -m quickmj batch FILE --out DIR --plain [--resume]`` as
real processes against a simulator this process serves, ``kill -9``\\ s each at a seeded
point (right after start, after a delay, while a submit is on the wire, while an image
downloads), starts the next ``--resume``, and now and then starts a second run (resume,
fresh or ``reconcile``) while one holds the directory: it must be refused with exit code
1 and one "in use by pid ..." line, without a single request to the relay. After the
last kill a resume runs to its end. The simulator's job-creation log is the ground
truth: a middleware records every submit's state tag and the fault it drew, and every
job carries its row's tag (``qmj:<run>:<index>[:<label>]``).

The invariants checked at the end (each violation is one line in ``problems``):

* every prompt has exactly one manifest row, in input order, and the journal agrees;
* no row is ``pending``, ``submitting`` or ``running`` (the last run was not interrupted),
  except ``pending`` rows of a run that stopped submitting because its key's quota ran
  out (``BatchSummary.key_refused``): those created nothing, say so, and no more submits
  reached the relay after its first quota refusal than prompts were in flight;
* ``succeeded`` rows have their PNG files on disk and their jobs are SUCCESS on the relay;
  ``failed`` rows have a reason; ``rejected`` rows a relay code, a reason and no job;
  ``timed_out``/``incomplete`` rows keep their task id;
* ``unknown`` rows have a reason, a state tag and a send time, and are exactly the
  submits the relay answered ambiguously (its fault log) plus, with kills, the submits a
  killed run left on the wire (rows the journal showed ``submitting`` or pressing after
  the kill), less those ``reconcile`` settled (``settle=True``: the row then holds the
  job with that tag); a run stopped by the outage breaker (RelayUnreachableError, exit
  code 3: resumed) must leave no submit cut;
* no prompt was created twice, no grid's button pressed twice (``duplicates``); every job
  the relay created is on its row (``task_id`` / ``upscale_task_ids``), or the row is
  ``unknown`` with that job's tag (so ``reconcile`` can find it): otherwise it counts as a
  ``lost paid job``;
* no ``*.part`` file is left; in-process, ``run_batch`` raised nothing but a typed outage
  stop (then resumed), quickmj logged no error, no asyncio task outlived the client and
  the tracemalloc peak stayed under ``base_bytes + bytes_per_prompt * prompts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import random
import re
import shutil
import sqlite3
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs
from aiohttp import web

from quickmj import AsyncClient, PollPolicy, RelayUnreachableError, RetryPolicy
from quickmj._batch import (
    BatchItem,
    BatchProgress,
    BatchSummary,
    _slug,
    parse_upscale,
    reconcile,
    run_batch,
)
from quickmj.testing import DIALECTS, Fault, FaultConfig, Simulator, SimulatorConfig

__all__ = (
    "DIALECTS",
    "KILL_FAULTS",
    "KILL_KINDS",
    "SOAK_FAULTS",
    "SOAK_POLL",
    "SOAK_RETRY",
    "SoakReport",
    "colliding_prompts",
    "soak",
    "soak_kills",
    "soak_prompts",
)

#: The in-process soak's faults (see the module docstring).
SOAK_FAULTS = FaultConfig(
    error_5xx_rate=0.05,
    rate_limit_rate=0.02,
    retry_after=0.2,
    drop_rate=0.02,
    submit_5xx_after_create_rate=0.01,
    drop_after_create_rate=0.01,
    truncate_list_rate=0.2,
    latency=0.05,
)
#: Milder faults for the kill soak, with more latency so that kills find submits and
#: downloads on the wire (the CLI runs with quickmj's default retry and poll policies).
KILL_FAULTS = FaultConfig(
    error_5xx_rate=0.02,
    rate_limit_rate=0.02,
    retry_after=0.1,
    drop_rate=0.02,
    submit_5xx_after_create_rate=0.01,
    drop_after_create_rate=0.01,
    truncate_list_rate=0.1,
    latency=0.15,
)
#: Fast polling: the simulated jobs take a quarter of a second.
SOAK_POLL = PollPolicy(
    interval=0.1, first_poll=0.05, near_done_interval=0.05, max_error_backoff=1.0, adaptive=False
)
#: Small backoffs, but a cap (1 s) above the simulator's Retry-After, so it is honoured.
SOAK_RETRY = RetryPolicy(max_attempts=6, backoff=0.02, max_backoff=1.0)
#: Where a kill lands: right after the process starts, a random delay after it holds the
#: directory, while its n-th submit is on the wire, while its n-th image downloads.
KILL_KINDS = ("startup", "timed", "submit", "download")

#: Faults on a submit after which the client cannot know whether a job exists.
_AMBIGUOUS = frozenset(
    {
        Fault.ERROR_5XX,
        Fault.DROP,
        Fault.ERROR_5XX_AFTER_CREATE,
        Fault.DROP_AFTER_CREATE,
        Fault.RELAY_REQUEST_FAILED,
        Fault.RELAY_REQUEST_FAILED_AFTER_CREATE,
        Fault.RELAY_EMPTY_BODY,
    }
)
_BANNED = "badword"  # SimulatorConfig's default banned word
#: The simulator's answers to a submit its key's quota cannot pay (quickrouter, trueai).
_QUOTA_WORDS = ("quota_not_enough", "总绘图次数已达上限")
_INTRUDER_KEY = "soak-intruder-key"
_JOURNAL = ".quickmj-journal.sqlite"
_LOCK = ".quickmj-lock"
_TAG = re.compile(r"^qmj:([0-9a-f]+):(\d+)(?::(U[1-4]))?$")
_SUMMARY_LINE = re.compile(r"^(?:prompts: )?\d+/\d+ succeeded", re.MULTILINE)
#: Phases a row holds while its run goes on (a finished run leaves none).
_OPEN_PHASES = ("pending", "submitting", "running", "timed_out", "incomplete")
#: Dialects whose relay lists recent tasks, so ``reconcile`` can settle unknown outcomes.
_LISTING_DIALECTS = ("midjourney-proxy", "trueai")


@attrs.frozen
class SoakReport:
    """What a soak run did, and every invariant it broke (``problems``)."""

    mode: str  # "in-process" or "kills"
    dialect: str
    prompts: int
    succeeded: int
    failed: int
    rejected: int
    unknown: int
    timed_out: int
    incomplete: int
    #: Extra jobs: a prompt created more than once, a grid's button pressed twice. Must be 0.
    duplicates: int
    #: Jobs the relay created that are neither on their row nor findable by an unknown
    #: row's tag. Must be 0.
    lost_paid_jobs: int
    #: Submits the relay answered ambiguously (5xx or dropped), per its fault log.
    ambiguous_submits: int
    #: Submits a killed run left on the wire (rows the journal showed ``submitting``).
    interrupted_submits: int
    #: ``unknown`` rows whose job the relay did create (paid; ``reconcile`` finds them).
    unknown_created: int
    #: Unknown outcomes ``reconcile`` settled (the row adopted the job with its tag).
    adopted: int
    #: Submits the relay refused with its queue-full answer (run_batch retries those).
    queue_full: int
    #: RelayUnreachableError stops (in-process) or exit-code-3 runs, each then resumed.
    outage_stops: int
    #: Processes killed with SIGKILL, by kind (``KILL_KINDS``).
    kills: dict[str, int]
    #: Kills that left a partial download (``*.part``) for the next run to clean up.
    kills_mid_download: int
    #: Batch processes started (kills mode), the last one ran to its end.
    rounds: int
    #: Second runs refused: concurrent ones while another held the directory, and the
    #: command repeated without --resume after a kill.
    intruders_refused: int
    #: What each round did (kills mode), one line per event.
    log: tuple[str, ...]
    #: Requests the relay received, by route.
    requests: dict[str, int]
    #: Faults injected, by kind.
    faults: dict[str, int]
    wall: float
    #: tracemalloc peak in bytes while the run went (None when not traced).
    peak_traced: int | None
    #: Peak resident set size in bytes: this process (in-process), the largest batch
    #: process (kills).
    peak_rss: int
    problems: tuple[str, ...]
    #: Rows left ``pending``: only by a run that stopped because its key's quota ran out
    #: (``key_refused``), and only rows the relay created nothing for.
    pending: int = 0
    #: The run's ``BatchSummary.key_refused`` (in-process): why it stopped submitting.
    key_refused: str | None = None
    #: Submits the relay refused for quota (new-api ``quota_not_enough``, TrueAI's limit).
    quota_refusals: int = 0
    #: Submits (distinct tags) that reached the relay after it answered the first quota
    #: refusal: at most the submits already on their way (one per prompt in flight).
    sent_after_refusal: int = 0

    @property
    def ok(self) -> bool:
        """No invariant was broken."""
        return not self.problems

    @property
    def total_kills(self) -> int:
        return sum(self.kills.values())

    def summary(self) -> str:
        """One line: prompts, kills, outcomes, duplicates, lost paid jobs, time, memory."""
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.kills.items()) if n)
        kills = (
            f" kills={self.total_kills} ({kinds}) rounds={self.rounds} "
            f"refused={self.intruders_refused}"
            if self.mode == "kills"
            else ""
        )
        traced = f" traced={self.peak_traced / 2**20:.1f}MiB" if self.peak_traced else ""
        verdict = "OK" if self.ok else f"FAILED ({len(self.problems)} problems)"
        return (
            f"soak[{self.mode} {self.dialect}]: prompts={self.prompts}{kills} "
            f"succeeded={self.succeeded} failed={self.failed} rejected={self.rejected} "
            f"unknown={self.unknown} (ambiguous={self.ambiguous_submits} "
            f"interrupted={self.interrupted_submits} paid={self.unknown_created} "
            f"adopted={self.adopted}) "
            f"incomplete={self.incomplete} timed_out={self.timed_out} pending={self.pending} "
            f"quota-refusals={self.quota_refusals} (sent after={self.sent_after_refusal}) "
            f"queue-full={self.queue_full} outage-stops={self.outage_stops} "
            f"duplicates={self.duplicates} lost-paid-jobs={self.lost_paid_jobs} "
            f"wall={self.wall:.1f}s peak-rss={self.peak_rss / 2**20:.0f}MiB{traced} {verdict}"
        )


def soak_prompts(n: int, banned_every: int = 50) -> list[BatchItem]:
    """``n`` distinct prompts; every ``banned_every``-th carries a banned word (0: none)."""
    items = []
    for i in range(n):
        banned = banned_every and i % banned_every == banned_every - 1
        word = f" {_BANNED}" if banned else ""
        items.append(BatchItem(f"soak {i:06d} a watercolor fox{word} --v 6.1"))
    return items


#: Prompts whose slugs collide (case, punctuation, full-width forms) in three groups, one
#: of them CJK; the marks after them keep the prompts themselves distinct.
_COLLIDING = (
    "A watercolor fox",
    "a watercolor fox!",
    "a WATERCOLOR fox?",
    "一只水彩狐狸",
    "一只水彩狐狸！",
    "Ünïcode fox",
    "ünïcode FOX",
)
_MARKS = "!?.,;:~*"


def colliding_prompts(n: int, banned_every: int = 50) -> list[BatchItem]:
    """``n`` distinct prompts in few slug groups (``--name {slug}`` must still give each
    prompt its own files); every ``banned_every``-th carries a banned word (0: none)."""
    items = []
    for i in range(n):
        j, marks = i // len(_COLLIDING), ""
        while True:
            j, digit = divmod(j, len(_MARKS))
            marks += _MARKS[digit]
            if not j:
                break
        banned = banned_every and i % banned_every == banned_every - 1
        word = f" {_BANNED}" if banned else ""
        items.append(BatchItem(f"{_COLLIDING[i % len(_COLLIDING)]} {marks}{word} --v 6.1"))
    return items


class _HtmlImages:
    """Image hosts that sometimes answer 200 with no image: a Cloudflare-style HTML page,
    HTML labelled ``image/png``, or an empty ``image/png`` (seeded, per image request)."""

    PAGE = (
        b"<!DOCTYPE html><html><head><title>Just a moment...</title></head>"
        b"<body>Checking your browser before accessing cdn.discordapp.com.</body></html>"
    )

    def __init__(self, rate: float, seed: int) -> None:
        self.rate = rate
        self.random = random.Random(seed)
        self.answered = 0

    @web.middleware
    async def middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if self.rate and _kind(request) == "download" and self.random.random() < self.rate:
            self.answered += 1
            kind = self.random.randrange(3)
            if kind == 0:
                return web.Response(status=200, body=self.PAGE, content_type="text/html")
            return web.Response(
                status=200, body=self.PAGE if kind == 1 else b"", content_type="image/png"
            )
        return await handler(request)


# ---- the relay, with a record of every submit ----


@attrs.define
class _Seen:
    """One request as the relay saw it: its kind, the state tag it carried, its fault."""

    kind: str  # "submit", "download" (an image) or "other"
    tag: str | None = None
    quota: bool = False  # a submit the relay refused for quota (nothing created)
    fault: Fault | None = None


_CURRENT: contextvars.ContextVar[_Seen | None] = contextvars.ContextVar("soak_seen", default=None)


class _Recorder:
    """Records submits (tag and fault) and arrivals; wakes a watcher at the n-th arrival.

    A middleware reads each POST body as it arrives (before the simulated latency), so a
    submit whose client is killed while it waits still creates its job, as a real relay
    that received the whole request would. The injector's ``draw`` is wrapped to
    note the fault of the request being handled (a context variable links the two).
    """

    def __init__(self, sim: Simulator) -> None:
        self.submits: list[_Seen] = []
        self.arrivals: Counter[str] = Counter()
        self.intruder_requests = 0
        #: Submits arrived when the relay answered the first quota refusal (None: none).
        self.refused_at: int | None = None
        self._watch: tuple[str, int, asyncio.Event] | None = None
        draw = sim.faults.draw

        def drawing(route: str, group: str, *, relay: bool = False) -> Fault | None:
            fault = draw(route, group, relay=relay)
            seen = _CURRENT.get()
            if seen is not None:
                seen.fault = fault
            return fault

        sim.faults.draw = drawing  # type: ignore[method-assign]

        @web.middleware
        async def middleware(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            seen = _Seen(_kind(request))
            if any(_INTRUDER_KEY in v for v in request.headers.values()):
                self.intruder_requests += 1
            if request.method == "POST":
                try:
                    body = await request.read()
                except ConnectionError:  # its client is gone before the body arrived
                    return web.Response(status=499)
                if seen.kind == "submit":
                    seen.tag = _body_tag(body)
                    self.submits.append(seen)
            self._arrived(seen.kind)
            token = _CURRENT.set(seen)
            try:
                response = await handler(request)
            finally:
                _CURRENT.reset(token)
            if seen.kind == "submit" and _quota_refusal(response):
                seen.quota = True
                if self.refused_at is None:
                    self.refused_at = len(self.submits)
            return response

        sim.app.middlewares.append(middleware)

    def watch(self, kind: str, n: int) -> asyncio.Event:
        """An event set when the ``n``-th request of ``kind`` arrives from now on."""
        event = asyncio.Event()
        self._watch = (kind, n, event)
        return event

    def unwatch(self) -> None:
        self._watch = None

    def _arrived(self, kind: str) -> None:
        self.arrivals[kind] += 1
        if self._watch is not None and self._watch[0] == kind:
            watched, left, event = self._watch
            self._watch = (watched, left - 1, event)
            if left <= 1:
                event.set()
                self._watch = None

    def quota_refusals(self) -> int:
        return sum(1 for seen in self.submits if seen.quota)

    def sent_after_refusal(self) -> int:
        """Distinct submits that arrived after the relay answered the first quota refusal."""
        if self.refused_at is None:
            return 0
        return len({seen.tag for seen in self.submits[self.refused_at :]})

    def ambiguous(self) -> dict[str, Fault]:
        """Tags of submits answered ambiguously, with the fault (the last one per tag)."""
        found: dict[str, Fault] = {}
        for seen in self.submits:
            if seen.fault is not None and seen.fault in _AMBIGUOUS:
                found[seen.tag or ""] = seen.fault
        return found


def _kind(request: web.Request) -> str:
    path = request.path
    if request.method == "POST" and "/submit/" in path:
        return "submit"
    if request.method == "GET" and ("/attachments/" in path or "/image/" in path):
        return "download"
    return "other"


def _quota_refusal(response: web.StreamResponse) -> bool:
    """The simulator's "no quota" answer to a submit (quickrouter: code 4
    ``quota_not_enough``; trueai: ``总绘图次数已达上限``), read from its JSON body."""
    raw = getattr(response, "body", None)
    if not isinstance(raw, bytes) or not raw:
        return False
    try:
        body = json.loads(raw)
    except ValueError:
        return False
    said = str(body.get("description", "")) if isinstance(body, dict) else ""
    return any(word in said for word in _QUOTA_WORDS)


def _body_tag(raw: bytes) -> str | None:
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return _tag_of(body.get("state") if isinstance(body, dict) else None)


def _tag_of(state: object) -> str | None:
    if not isinstance(state, str):
        return None
    words = [w for w in state.split() if w.startswith("qmj:")]
    return words[-1] if words else None


class _DeadClients(logging.Filter):
    """Drops aiohttp's "Error handling request" for clients that are gone (killed runs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, ConnectionError)


@contextlib.asynccontextmanager
async def _serve(
    config: SimulatorConfig, html: _HtmlImages | None = None
) -> AsyncIterator[tuple[Simulator, str, _Recorder]]:
    """Serve a recorded simulator on 127.0.0.1 (a free port) for the block."""
    sim = Simulator(config)
    recorder = _Recorder(sim)
    if html is not None:
        sim.app.middlewares.append(html.middleware)
    quiet = _DeadClients()
    server_log = logging.getLogger("aiohttp.server")
    server_log.addFilter(quiet)
    try:
        runner = web.AppRunner(sim.app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            sim.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            yield sim, sim.base_url, recorder
        finally:
            await runner.cleanup()
    finally:
        server_log.removeFilter(quiet)


# ---- in-process ----


class _ErrorLog(logging.Handler):
    """Collects ERROR records of the ``quickmj`` logger (the poller's "stopped" report)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def soak(
    prompts: int = 200,
    out: str | os.PathLike[str] | None = None,
    *,
    dialect: str = "quickrouter",
    concurrency: int = 32,
    workers: int | None = None,
    max_queue: int | None = None,
    failure_rate: float = 0.1,
    banned_every: int = 50,
    upscale: Sequence[str] = (),
    seed: int = 0,
    faults: FaultConfig = SOAK_FAULTS,
    poll: PollPolicy = SOAK_POLL,
    retry: RetryPolicy = SOAK_RETRY,
    trace_memory: bool = True,
    base_bytes: int = 32 * 2**20,
    bytes_per_prompt: int = 32 * 1024,
    time_limit: float = 600.0,
    max_outage_stops: int | None = None,
    settle: bool = False,
    quota: int | None = None,
    on_progress: Callable[[BatchProgress], Any] | None = None,
    name: str | None = None,
    colliding: bool = False,
    html_image_rate: float = 0.0,
) -> SoakReport:
    """Run ``prompts`` prompts through ``run_batch`` in this process; check the invariants.

    ``name`` is the file name template (``"{slug}"``); ``colliding`` gives the prompts few
    slugs (:func:`colliding_prompts`); ``html_image_rate`` makes that share of image
    answers a 200 that is no image (HTML, HTML labelled ``image/png``, empty). Then rows
    left ``incomplete`` are resumed (up to 3 times), and every saved file is checked:
    one name per file, none replaced, each the image of its own row's job.

    ``out`` is the batch directory (a temporary one if None). The relay runs ``workers``
    jobs at once (default: half of ``concurrency``) and lets ``max_queue`` wait (default:
    a quarter), so queue-full answers do occur. ``upscale`` (``("U1",)``) also presses
    buttons, so action submits meet the faults. A RelayUnreachableError (the outage
    breaker) is counted in ``outage_stops`` and the batch resumed, as a user would, up to
    ``max_outage_stops`` times (default: 5 plus one per 500 prompts: at high concurrency
    the soak's random 5xx answers trip the breaker about once per 1,500 prompts).
    ``settle`` runs ``reconcile`` afterwards (relays with ``GET /task/list``): it adopts
    the unknown outcomes whose job it finds by tag (``adopted``). ``quota`` limits the
    jobs the key may create (not on midjourney-proxy): beyond it the relay refuses
    submits, and the run stops submitting: prompts not created stay ``pending``, paid
    grids whose press was refused or not sent ``incomplete`` (a resume goes on).
    """
    _check_settle(settle, dialect)
    if out is None:
        with tempfile.TemporaryDirectory(prefix="quickmj-soak-") as tmp:
            return await soak(
                prompts,
                tmp,
                dialect=dialect,
                concurrency=concurrency,
                workers=workers,
                max_queue=max_queue,
                failure_rate=failure_rate,
                banned_every=banned_every,
                upscale=upscale,
                seed=seed,
                faults=faults,
                poll=poll,
                retry=retry,
                trace_memory=trace_memory,
                base_bytes=base_bytes,
                bytes_per_prompt=bytes_per_prompt,
                time_limit=time_limit,
                max_outage_stops=max_outage_stops,
                settle=settle,
                quota=quota,
                on_progress=on_progress,
                name=name,
                colliding=colliding,
                html_image_rate=html_image_rate,
            )
    items = (colliding_prompts if colliding else soak_prompts)(prompts, banned_every)
    html = _HtmlImages(html_image_rate, seed) if html_image_rate else None
    log: list[str] = []
    stops_allowed = 5 + prompts // 500 if max_outage_stops is None else max_outage_stops
    config = SimulatorConfig(
        dialect=dialect,
        seed=seed,
        faults=faults,
        failure_rate=failure_rate,
        concurrency=workers or max(1, concurrency // 2),
        max_queue=max_queue or max(1, concurrency // 4),
        quotas={} if quota is None else {"sim-key": quota},
    )
    problems: list[str] = []
    errors = _ErrorLog()
    logger = logging.getLogger("quickmj")
    logger.addHandler(errors)
    tracing = trace_memory and not tracemalloc.is_tracing()
    if tracing:
        tracemalloc.start()
    before = asyncio.all_tasks()
    summary: BatchSummary | None = None
    refused: str | None = None
    outage_stops = 0
    interrupted: set[str] = set()
    peak: int | None = None
    started = time.perf_counter()
    try:
        async with _serve(config, html) as (sim, base_url, recorder):
            async with AsyncClient(
                config.api_key,
                base_url=base_url,
                dialect=dialect,  # type: ignore[arg-type]
                poll=poll,
                retry=retry,
                max_connections=max(64, concurrency * 2),
            ) as mj:
                with anyio.move_on_after(time_limit) as scope:
                    while True:
                        try:
                            summary = await run_batch(
                                mj,
                                items,
                                out,
                                concurrency=concurrency,
                                upscale=upscale,
                                download=True,
                                resume=outage_stops > 0,
                                timeout=max(60.0, time_limit / 2),
                                on_progress=on_progress,
                                name=name,
                            )
                            refused = summary.key_refused  # reconcile's summary has none
                        except RelayUnreachableError as exc:
                            outage_stops += 1
                            cut = _cut_submits(Path(out))
                            if cut:  # a stop must let the submits on the wire answer
                                interrupted |= cut
                                problems.append(f"an outage stop cut submits: {sorted(cut)}")
                            if outage_stops > stops_allowed:
                                problems.append(f"{outage_stops} outage stops; the last: {exc}")
                                break
                            continue
                        except Exception as exc:  # the invariant: nothing else escapes
                            problems.append(f"run_batch raised {type(exc).__name__}: {exc!r}")
                        break
                    if settle and summary is not None:
                        try:
                            summary = await reconcile(mj, out, timeout=time_limit / 2)
                        except Exception as exc:
                            problems.append(f"reconcile raised {type(exc).__name__}: {exc!r}")
                    if html is not None:  # downloads the image hosts refused: resume
                        again = {"name": name, "upscale": upscale, "concurrency": concurrency}
                        summary = await _resume_downloads(
                            mj, items, Path(out), summary, again, log, problems
                        )
                if scope.cancelled_caught:
                    problems.append(f"run_batch did not finish within {time_limit:g} s")
                if html is not None:
                    html.rate = 0.0  # the check below reads the real images
                    log.append(f"image answers that were no image: {html.answered}")
                if name is not None:
                    log.append(await _check_names(mj, sim, Path(out), items, upscale, problems))
            wall = time.perf_counter() - started
            await asyncio.sleep(0)  # let the closed session's callbacks run
            peak = tracemalloc.get_traced_memory()[1] if tracing else None
            labels = parse_upscale(list(upscale))
            counts = _Checker(
                items, Path(out), labels, sim, recorder, interrupted, problems, refused
            ).run()
            if refused is not None and counts.sent_after_refusal > concurrency:
                problems.append(
                    f"{counts.sent_after_refusal} submits reached the relay after its first "
                    f"quota refusal, more than the {concurrency} prompts in flight"
                )
    finally:
        if tracing:
            tracemalloc.stop()
        logger.removeHandler(errors)
    leftover = [t for t in asyncio.all_tasks() - before if not t.done()]
    if leftover:
        names = sorted({t.get_name() for t in leftover})
        problems.append(f"{len(leftover)} asyncio tasks outlived the client: {names[:5]}")
    problems.extend(f"quickmj logged an error: {m}" for m in errors.messages[:5])
    limit = base_bytes + bytes_per_prompt * len(items)
    if peak is not None and peak > limit:
        problems.append(f"tracemalloc peak {peak / 2**20:.1f} MiB exceeds {limit / 2**20:.1f} MiB")
    if summary is not None:
        kinds = ("succeeded", "failed", "rejected", "unknown", "pending")
        got = tuple(getattr(summary, k) for k in kinds)
        want = tuple(counts.phases[k] for k in kinds)
        if got != want or summary.total != len(items):
            problems.append(f"BatchSummary {got} disagrees with the manifest {want}")
    return counts.report(
        log=log,
        mode="in-process",
        dialect=dialect,
        prompts=len(items),
        outage_stops=outage_stops,
        wall=wall,
        peak_traced=peak,
        peak_rss=_peak_rss(resource_children=False),
        problems=problems,
    )


async def _resume_downloads(
    mj: AsyncClient,
    items: list[BatchItem],
    out: Path,
    summary: BatchSummary | None,
    settings: dict[str, Any],
    log: list[str],
    problems: list[str],
) -> BatchSummary | None:
    """Resume (as a user would) while downloads left rows ``incomplete``, up to 3 times."""
    for _ in range(3):
        if summary is None or not summary.incomplete:
            break
        log.append(f"resuming {summary.incomplete} incomplete rows")
        try:
            summary = await run_batch(mj, items, out, resume=True, timeout=60.0, **settings)
        except RelayUnreachableError as exc:  # the outage breaker: resume again
            log.append(f"an outage stopped a resume: {exc}"[:200])
        except Exception as exc:
            problems.append(f"a resume raised {type(exc).__name__}: {exc!r}")
            break
    return summary


async def _check_names(
    mj: AsyncClient,
    sim: Simulator,
    out: Path,
    items: list[BatchItem],
    upscale: Sequence[str],
    problems: list[str],
) -> str:
    """Every file its own name, nothing replaced, each the image of its own row's job;
    no paid image left unsaved. Returns a one-line account."""
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    files = [f for row in rows for f in row.get("files") or []]
    images = out / "images"
    on_disk = sorted(f"images/{p.name}" for p in images.iterdir() if not p.name.startswith("."))
    if len(set(files)) != len(files):
        problems.append(f"names: {len(files) - len(set(files))} files named by two rows")
    if sorted(files) != on_disk:
        problems.append(f"names: {len(files)} files in the manifest, {len(on_disk)} on disk")
    labels = parse_upscale(list(upscale))
    wrong = lost = 0
    limit = asyncio.Semaphore(16)

    async def same(name: str, task_id: str, scratch: Path) -> bool:
        async with limit:
            fresh = await mj.download(task_id, scratch / task_id)
        return fresh.read_bytes() == (out / name).read_bytes()

    with tempfile.TemporaryDirectory(prefix="quickmj-soak-names-") as tmp:
        checks = []
        for row in rows:
            ups = row["upscale_task_ids"]
            finals = [ups.get(x) for x in labels] if labels else [row["task_id"]]
            if row["status"] == "succeeded":
                checks += [same(f, t, Path(tmp)) for f, t in zip(row["files"], finals, strict=True)]
            elif row["task_id"] and all(t and sim.task_status(t) == "SUCCESS" for t in finals):
                lost += 1  # paid and finished, yet not saved after the resumes
                problems.append(f"names: row {row['index']} {row['status']}: image not saved")
        wrong = sum(not ok for ok in await asyncio.gather(*checks))
    if wrong:
        problems.append(f"names: {wrong} files hold another job's image")
    slugs = len({_slug(i.prompt) for i in items})
    return (
        f"names: {len(items)} prompts in {slugs} slugs, {len(files)} files, "
        f"{len(set(files))} distinct names, {len(on_disk)} on disk, {wrong} wrong, {lost} lost"
    )


# ---- kills and concurrent resumes ----


@attrs.frozen
class _Round:
    """One round's plan, drawn up front from the seed."""

    kind: str | None  # a KILL_KINDS entry, or None: run to the end
    delay: float  # "startup"/"timed": seconds before the kill
    nth: int  # "submit"/"download": kill at this arrival
    intruder: str | None  # "resume", "fresh", "reconcile" or None
    mistake: bool = False  # after the kill, first a run without --resume (refused)


class _KillSoak:
    """The rounds of :func:`soak_kills` (see there)."""

    def __init__(
        self,
        work: Path,
        items: Sequence[BatchItem],
        *,
        dialect: str,
        concurrency: int,
        upscale: Sequence[str],
        base_url: str,
        api_key: str,
        recorder: _Recorder,
        fallback: float,
        deadline: float,
        settle: bool,
    ) -> None:
        self.work = work
        self.settle = settle
        self.batch = work / "out"
        self.prompts_file = work / "prompts.txt"
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.prompts_file.write_text("".join(f"{i.prompt}\n" for i in items), "utf-8")
        self.dialect = dialect
        self.concurrency = concurrency
        self.upscale = list(upscale)
        self.base_url = base_url
        self.api_key = api_key
        self.recorder = recorder
        self.fallback = fallback
        self.deadline = deadline
        self.problems: list[str] = []
        self.kills: Counter[str] = Counter(dict.fromkeys(KILL_KINDS, 0))
        self.kills_mid_download = 0
        self.rounds = 0
        self.outage_stops = 0
        self.intruders_refused = 0
        #: Tags of rows a killed run left ``submitting`` (or pressing a button).
        self.interrupted: set[str] = set()
        self._spawned = 0
        self._live: list[asyncio.subprocess.Process] = []
        self._stems: dict[int, Path] = {}  # pid -> its log files' stem
        #: What each round did, one line per event.
        self.log: list[str] = []
        self.started = time.monotonic()

    # ---- processes ----

    async def _spawn(self, args: list[str], *, key: str, name: str) -> asyncio.subprocess.Process:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("QUICKMJ_") and not k.lower().endswith("_proxy")
        }
        env.update({"QUICKMJ_API_KEY": key, "QUICKMJ_BASE_URL": self.base_url})
        self._spawned += 1
        stem = self.logs / f"{self._spawned:03d}-{name}"
        with open(f"{stem}.out", "wb") as stdout, open(f"{stem}.err", "wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "quickmj", *args, "--dialect", self.dialect,
                cwd=self.work, env=env, stdout=stdout, stderr=stderr,
            )  # fmt: skip
        self._stems[proc.pid] = stem
        self._live.append(proc)
        return proc

    async def _reap(self, proc: asyncio.subprocess.Process, *, kill: bool) -> None:
        if kill and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await proc.wait()
        if proc in self._live:
            self._live.remove(proc)

    async def close(self) -> None:
        """Kill and reap every process still running (a failed or timed-out soak)."""
        for proc in list(self._live):
            await self._reap(proc, kill=True)

    def _output(self, proc: asyncio.subprocess.Process) -> tuple[str, str]:
        """What ``proc`` printed: (stdout, stderr)."""
        stem = self._stems[proc.pid]
        read = (Path(f"{stem}.{ext}").read_text("utf-8", "replace") for ext in ("out", "err"))
        return next(read), next(read)

    def _batch_args(self, *, resume: bool, settle: bool = False) -> list[str]:
        args = ["batch", str(self.prompts_file), "--out", str(self.batch), "--plain"]
        args += ["--concurrency", str(self.concurrency), "--timeout", "600"]
        for label in self.upscale:
            args += ["--upscale", label]
        if settle:
            args.append("--reconcile")
        return [*args, "--resume"] if resume else args

    async def _exited_within(self, proc: asyncio.subprocess.Process, seconds: float) -> bool:
        with contextlib.suppress(asyncio.TimeoutError):  # (Process.wait is cancel-safe)
            await asyncio.wait_for(proc.wait(), max(0.0, seconds))
        return proc.returncode is not None

    def _left(self) -> float:
        return self.deadline - time.monotonic()

    # ---- the rounds ----

    async def run(self, plan: Sequence[_Round]) -> None:
        for step in plan:
            if self._left() <= 0:
                self.problems.append("the kill soak ran out of time")
                return
            resume = bool(_journal_rows(self.batch))
            settle = resume and self.settle and step.kind is None
            proc = await self._spawn(
                self._batch_args(resume=resume, settle=settle),
                key=self.api_key,
                name=step.kind or "final",
            )
            self.rounds += 1
            self.started = time.monotonic()
            self.log.append(
                f"round {self.rounds}: {'--resume' if resume else 'fresh'} run, pid {proc.pid}, "
                f"plan: {step.kind or 'to the end'}"
            )
            try:
                killed = step.kind is not None and await self._kill_round(proc, step)
                if not killed and not await self._exited_within(proc, self._left()):
                    self.problems.append(f"round {self.rounds}: the run did not end in time")
                    return
            finally:
                await self._reap(proc, kill=True)
            if killed:
                self._after_kill()
                if step.mistake:
                    await self._mistake()
                continue
            outcome = self._finished(proc)
            if outcome == "outage":
                continue
            return  # a run went to its end (or failed: reported)
        self.problems.append("no run went to its end within the planned rounds")

    async def _kill_round(self, proc: asyncio.subprocess.Process, step: _Round) -> bool:
        """Kill ``proc`` where ``step`` says; False if it ended on its own first."""
        if step.kind == "startup":
            if await self._exited_within(proc, step.delay):
                return False
        else:
            if not await self._holds_lock(proc):
                return False
            if step.intruder is not None:
                await self._intrude(proc, step.intruder)
            if step.kind == "timed":
                if await self._exited_within(proc, step.delay):
                    return False
            else:
                assert step.kind is not None
                event = self.recorder.watch(step.kind, step.nth)
                waiter = asyncio.ensure_future(event.wait())
                ender = asyncio.ensure_future(proc.wait())
                try:
                    await asyncio.wait(
                        {waiter, ender}, timeout=self.fallback, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    self.recorder.unwatch()
                    for fut in (waiter, ender):
                        fut.cancel()
                    await asyncio.gather(waiter, ender, return_exceptions=True)
                if proc.returncode is not None:
                    return False
        proc.kill()
        await proc.wait()
        self.kills[step.kind] += 1
        self.log.append(f"  kill -9 ({step.kind}) after {time.monotonic() - self.started:.2f} s")
        return True

    async def _holds_lock(self, proc: asyncio.subprocess.Process) -> bool:
        """Wait until ``proc`` owns the batch directory (its pid in the lock file)."""
        while proc.returncode is None and self._left() > 0:
            with contextlib.suppress(OSError, ValueError):
                holder = json.loads((self.batch / _LOCK).read_text("utf-8") or "{}")
                if isinstance(holder, dict) and holder.get("pid") == proc.pid:
                    return True
            if await self._exited_within(proc, 0.02):
                return False
        return False

    async def _intrude(self, holder: asyncio.subprocess.Process, variant: str) -> None:
        """A second run while ``holder`` owns the directory: refused, sends nothing."""
        if variant == "reconcile":
            args = ["reconcile", str(self.batch), "--plain"]
        else:
            args = self._batch_args(resume=variant == "resume")
        before = self.recorder.intruder_requests
        proc = await self._spawn(args, key=_INTRUDER_KEY, name=f"intruder-{variant}")
        try:
            ended = await self._exited_within(proc, max(1.0, min(60.0, self._left())))
        finally:
            await self._reap(proc, kill=True)
        _, err = self._output(proc)
        self.log.append(f"  concurrent {variant}: exit {proc.returncode}: {err.strip()[:120]}")
        if holder.returncode is not None:
            return  # the holder ended meanwhile: the intruder may have run for real
        lines = err.strip().splitlines()
        where = f"round {self.rounds}: a concurrent {variant!r} run"
        sent = self.recorder.intruder_requests - before
        if not ended:
            self.problems.append(f"{where} did not end")
        elif proc.returncode != 1 or len(lines) != 1 or f"in use by pid {holder.pid}" not in err:
            self.problems.append(
                f"{where} was not refused with one line: exit {proc.returncode}, {err[-300:]!r}"
            )
        elif sent:
            self.problems.append(f"{where} was refused but sent {sent} requests to the relay")
        else:
            self.intruders_refused += 1

    async def _mistake(self) -> None:
        """The command run again without --resume: refused (exit 2), sends nothing, and
        leaves the killed run's journal as fit to resume as before."""
        if not _journal_rows(self.batch):
            return  # no prompts recorded yet: a fresh run is the right command
        before = self.recorder.intruder_requests
        proc = await self._spawn(self._batch_args(resume=False), key=_INTRUDER_KEY, name="again")
        try:
            ended = await self._exited_within(proc, max(1.0, min(60.0, self._left())))
        finally:
            await self._reap(proc, kill=True)
        _, err = self._output(proc)
        self.log.append(f"  the same command without --resume: exit {proc.returncode}")
        sent = self.recorder.intruder_requests - before
        refused = "holds" in err and "--resume" in err  # "holds this batch ...: --resume"
        if not ended or proc.returncode != 2 or not refused or sent:
            self.problems.append(
                f"round {self.rounds}: a run without --resume was not refused cleanly: "
                f"exit {proc.returncode}, {sent} requests, {err[-300:]!r}"
            )
        else:
            self.intruders_refused += 1

    def _after_kill(self) -> None:
        rows = _journal_rows(self.batch)
        cut = _cut_submits(self.batch, rows)
        self.interrupted |= cut
        caught = len(cut)
        images = self.batch / "images"
        parts = len(list(images.glob(".*.part"))) if images.is_dir() else 0
        self.kills_mid_download += parts > 0
        phases = Counter(r["phase"] for r in rows or [])
        state = "no journal" if rows is None else dict(sorted(phases.items())) or "no prompts"
        self.log.append(f"  left: {caught} submits on the wire, {parts} .part files, {state}")

    def _finished(self, proc: asyncio.subprocess.Process) -> str:
        """Judge a run that ended on its own: "done", "outage" (exit 3) or "error"."""
        out, err = self._output(proc)
        code = proc.returncode
        if code == 3:
            self.outage_stops += 1
            cut = _cut_submits(self.batch)
            if cut:  # a stop must let the submits on the wire answer
                self.interrupted |= cut
                self.problems.append(f"round {self.rounds}: an outage stop cut {sorted(cut)}")
            if self.outage_stops > 5:
                self.problems.append(f"{self.outage_stops} outage stops; the last: {err[-300:]}")
                return "error"
            return "outage"
        self.log.append(f"  ended: exit {code}: {(out or err).strip().splitlines()[:1]}")
        if code in (0, 1) and _SUMMARY_LINE.search(out) and "Traceback" not in err:
            return "done"
        self.problems.append(
            f"round {self.rounds}: the run failed (exit {code}): {(err or out)[-400:]!r}"
        )
        return "error"


async def soak_kills(
    prompts: int = 60,
    out: str | os.PathLike[str] | None = None,
    *,
    kills: int = 6,
    dialect: str = "midjourney-proxy",
    concurrency: int = 8,
    upscale: Sequence[str] = (),
    seed: int = 0,
    faults: FaultConfig = KILL_FAULTS,
    failure_rate: float = 0.05,
    banned_every: int = 50,
    run_seconds: float = 0.5,
    intruders: float = 0.5,
    kill_after: tuple[float, float] = (0.1, 1.5),
    fallback: float = 6.0,
    settle: bool = False,
    time_limit: float = 600.0,
) -> SoakReport:
    """Run the batch as ``quickmj batch`` processes, ``kill -9`` them ``kills`` times.

    ``out`` is a working directory (temporary if None): ``out/out`` is the batch
    directory, ``out/prompts.txt`` the input, ``out/logs`` each process's output. Each
    round starts a run (``--resume`` once the journal holds the prompts) and kills it
    where the seeded plan says (``KILL_KINDS``; a "submit"/"download" kill waits at most
    ``fallback`` seconds for its request); with probability ``intruders`` a second run
    (resume, fresh or reconcile) is started while the first holds the directory, and
    with half that probability the command is repeated without ``--resume`` after a kill
    (refused with exit code 2; the directory must stay resumable). After
    ``kills`` kills a resume runs to its end; a run stopped by an outage (exit 3) is
    resumed. ``settle`` makes the last run ``--resume --reconcile`` (relays with
    ``GET /task/list``). Then the invariants are checked across all rounds.
    """
    _check_settle(settle, dialect)
    if out is None:
        with tempfile.TemporaryDirectory(prefix="quickmj-soak-kills-") as tmp:
            return await soak_kills(
                prompts,
                tmp,
                kills=kills,
                dialect=dialect,
                concurrency=concurrency,
                upscale=upscale,
                seed=seed,
                faults=faults,
                failure_rate=failure_rate,
                banned_every=banned_every,
                run_seconds=run_seconds,
                intruders=intruders,
                kill_after=kill_after,
                fallback=fallback,
                settle=settle,
                time_limit=time_limit,
            )
    rng = random.Random(seed)
    kinds = [KILL_KINDS[i % len(KILL_KINDS)] for i in range(kills)]
    rng.shuffle(kinds)
    plan = [
        _Round(
            kind=kind,
            delay=rng.uniform(0.0, 0.6) if kind == "startup" else rng.uniform(*kill_after),
            nth=rng.randint(1, max(1, concurrency)) if kind == "submit" else rng.randint(1, 3),
            intruder=rng.choice(("resume", "fresh", "reconcile"))
            if kind != "startup" and rng.random() < intruders
            else None,
            mistake=rng.random() < intruders / 2,
        )
        for kind in kinds
    ]
    plan += [_Round(kind=None, delay=0.0, nth=0, intruder=None)] * 6  # to the end
    items = soak_prompts(prompts, banned_every)
    config = SimulatorConfig(
        dialect=dialect,
        api_keys=("sim-key", _INTRUDER_KEY),
        seed=seed,
        faults=faults,
        failure_rate=failure_rate,
        run_seconds=run_seconds,
    )
    work = Path(out)
    started = time.perf_counter()
    async with _serve(config) as (sim, base_url, recorder):
        soaker = _KillSoak(
            work,
            items,
            dialect=dialect,
            concurrency=concurrency,
            upscale=upscale,
            base_url=base_url,
            api_key=config.api_key,
            recorder=recorder,
            fallback=fallback,
            deadline=time.monotonic() + time_limit,
            settle=settle,
        )
        try:
            await soaker.run(plan)
        finally:
            await soaker.close()
        wall = time.perf_counter() - started
        await asyncio.sleep(max(0.0, faults.latency) + 0.05)  # in-flight submits of the dead
        problems = soaker.problems
        labels = parse_upscale(list(upscale))
        counts = _Checker(
            items, soaker.batch, labels, sim, recorder, soaker.interrupted, problems
        ).run()
    return counts.report(
        mode="kills",
        dialect=dialect,
        prompts=len(items),
        outage_stops=soaker.outage_stops,
        wall=wall,
        peak_traced=None,
        peak_rss=_peak_rss(resource_children=True),
        problems=problems,
        kills=dict(soaker.kills),
        kills_mid_download=soaker.kills_mid_download,
        rounds=soaker.rounds,
        intruders_refused=soaker.intruders_refused,
        log=soaker.log,
    )


# ---- the checks ----


@attrs.define
class _Counts:
    """What the checker counted, turned into a report."""

    phases: Counter[str]
    duplicates: int
    lost: int
    ambiguous: int
    interrupted: int
    unknown_created: int
    adopted: int
    queue_full: int
    requests: dict[str, int]
    faults: dict[str, int]
    quota_refusals: int = 0
    sent_after_refusal: int = 0
    key_refused: str | None = None

    def report(self, **fields: Any) -> SoakReport:
        fields.setdefault("kills", {})
        fields.setdefault("kills_mid_download", 0)
        fields.setdefault("rounds", 1)
        fields.setdefault("intruders_refused", 0)
        fields["log"] = tuple(fields.get("log", ()))
        fields["problems"] = tuple(fields["problems"])
        p = self.phases
        return SoakReport(
            succeeded=p["succeeded"],
            failed=p["failed"],
            rejected=p["rejected"],
            unknown=p["unknown"],
            timed_out=p["timed_out"],
            incomplete=p["incomplete"],
            pending=p["pending"],
            key_refused=self.key_refused,
            quota_refusals=self.quota_refusals,
            sent_after_refusal=self.sent_after_refusal,
            duplicates=self.duplicates,
            lost_paid_jobs=self.lost,
            ambiguous_submits=self.ambiguous,
            interrupted_submits=self.interrupted,
            unknown_created=self.unknown_created,
            adopted=self.adopted,
            queue_full=self.queue_full,
            requests=self.requests,
            faults=self.faults,
            **fields,
        )


@attrs.frozen
class _Job:
    """A job the relay created, and the row and button its state tag names."""

    id: str
    tag: str | None
    index: int | None
    label: str | None
    parent: str | None


class _Checker:
    """Checks the manifest, the journal, the files and the relay against each other."""

    def __init__(
        self,
        items: Sequence[BatchItem],
        out: Path,
        labels: Sequence[str],
        sim: Simulator,
        recorder: _Recorder,
        interrupted: set[str],
        problems: list[str],
        key_refused: str | None = None,
    ) -> None:
        self.items = items
        self.out = out
        self.labels = tuple(labels)
        self.sim = sim
        self.recorder = recorder
        self.interrupted = interrupted
        self.problems = problems
        #: The run stopped submitting because its key was refused (its quota ran out):
        #: rows it never sent, or sent and had refused, stay ``pending``.
        self.key_refused = key_refused
        self.jobs: list[_Job] = []
        self.by_row: dict[int, list[_Job]] = {}
        for task in sim.tasks.values():
            tag = _tag_of(task.state)
            m = _TAG.match(tag or "")
            index = int(m.group(2)) if m else None
            job = _Job(task.id, tag, index, m.group(3) if m else None, task.parent_id)
            self.jobs.append(job)
            if index is not None:
                self.by_row.setdefault(index, []).append(job)
        if len(self.jobs) != len(sim.submissions):
            problems.append(f"{len(sim.submissions)} submissions but {len(self.jobs)} tasks")

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def run(self) -> _Counts:
        rows = self._rows()
        phases: Counter[str] = Counter(str(r.get("status")) for r in rows)
        ambiguous = self.recorder.ambiguous()
        adopted = self._check_unknown_set(rows, ambiguous)
        duplicates = self._duplicates()
        lost, unknown_created = self._jobs_on_rows(rows)
        for row in rows:
            self._check_row(row)
        if self.items and not phases["succeeded"]:
            self.problem("nothing succeeded")
        parts = sorted(p.name for p in self.out.rglob("*") if p.name.endswith(".part"))
        if parts:
            self.problem(f"{len(parts)} partial files left: {parts[:3]}")
        # The simulator counts its "no quota" answers as refusals too.
        refused = sum(a.rejected for a in self.sim.accounts.values())
        queue_full = max(0, refused - self.recorder.quota_refusals())
        return _Counts(
            phases=phases,
            duplicates=duplicates,
            lost=lost,
            ambiguous=len(ambiguous),
            interrupted=len(self.interrupted),
            unknown_created=unknown_created,
            adopted=adopted,
            queue_full=queue_full,
            requests=dict(self.sim.counters),
            faults=dict(Counter(e.fault.value for e in self.sim.fault_log)),
            quota_refusals=self.recorder.quota_refusals(),
            sent_after_refusal=self.recorder.sent_after_refusal(),
            key_refused=self.key_refused,
        )

    def _rows(self) -> list[dict[str, Any]]:
        """The manifest's rows, checked against the input and the journal."""
        try:
            text = (self.out / "manifest.jsonl").read_text(encoding="utf-8")
        except OSError as exc:
            self.problem(f"no manifest: {exc}")
            return []
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        if len(rows) != len(self.items):
            self.problem(f"the manifest has {len(rows)} rows for {len(self.items)} prompts")
        for i, (item, row) in enumerate(zip(self.items, rows, strict=False)):
            if row.get("index") != i or row.get("prompt") != item.prompt:
                self.problem(f"row {i}: index/prompt {row.get('index')}/{row.get('prompt')!r}")
        journal = _journal_rows(self.out)
        if journal is None:
            self.problem("no journal")
        elif [(r["idx"], r["phase"]) for r in journal] != [
            (r.get("index"), r.get("status")) for r in rows
        ]:
            self.problem("the manifest disagrees with the journal")
        return rows

    def _check_unknown_set(self, rows: list[dict[str, Any]], ambiguous: dict[str, Fault]) -> int:
        """Unknown rows are exactly the ambiguous and the interrupted submits (by tag),
        less those ``reconcile`` settled: their row holds the job with that tag.
        Returns how many were settled so."""
        expected = set(ambiguous) | self.interrupted
        adopted = 0
        for row in rows:
            if row.get("status") == "unknown" and row.get("tag") not in expected:
                self.problem(
                    f"row {row['index']}: unknown ({row.get('reason')!r}), but its submit "
                    f"{row.get('tag')} was neither answered ambiguously nor cut by a kill"
                )
        for tag in sorted(expected):
            m = _TAG.match(tag)
            its = rows[int(m.group(2))] if m and int(m.group(2)) < len(rows) else None
            if its is not None and self._holds(its, tag):
                adopted += 1
            elif its is None or its.get("status") != "unknown" or its.get("tag") != tag:
                what = ambiguous.get(tag)
                cause = f"answered {what.value}" if what else "cut by a kill"
                status = f"{its.get('status')} with tag {its.get('tag')}" if its else "no row"
                self.problem(f"submit {tag} was {cause} but its row is {status}")
        return adopted

    def _holds(self, row: dict[str, Any], tag: str) -> bool:
        """Whether ``row`` records the job created with ``tag``."""
        on_row = {row.get("task_id"), *(row.get("upscale_task_ids") or {}).values()}
        return any(j.tag == tag and j.id in on_row for j in self.by_row.get(row["index"], []))

    def _duplicates(self) -> int:
        made: Counter[tuple[int | None, str | None]] = Counter()
        for job in self.jobs:
            if job.tag is None or job.index is None:
                self.problem(f"job {job.id} carries no batch state tag ({job.tag!r})")
                continue
            made[job.index, job.label] += 1
        extra = 0
        for (index, label), n in sorted(made.items(), key=str):
            if n > 1:
                extra += n - 1
                self.problem(f"row {index} {label or 'imagine'} was created {n} times")
        return extra

    def _jobs_on_rows(self, rows: list[dict[str, Any]]) -> tuple[int, int]:
        """(lost paid jobs, unknown rows whose job exists)."""
        lost = 0
        unknown_paid: set[int] = set()
        for job in self.jobs:
            if job.index is None or not 0 <= job.index < len(rows):
                lost += 1
                self.problem(f"job {job.id} belongs to no row ({job.tag!r})")
                continue
            row = rows[job.index]
            ups: dict[str, str] = row.get("upscale_task_ids") or {}
            if job.label is None and job.id == row.get("task_id"):
                continue
            if job.label is not None and ups.get(job.label) == job.id:
                if job.parent != row.get("task_id"):
                    self.problem(f"row {job.index}: {job.label} {job.id} is not of its grid")
                continue
            if row.get("status") == "unknown" and row.get("tag") == job.tag:
                unknown_paid.add(job.index)
                continue
            lost += 1
            self.problem(
                f"row {job.index} ({row.get('status')}): job {job.id} ({job.tag}) was created "
                "but is neither on the row nor findable by its tag: a lost paid job"
            )
        return lost, len(unknown_paid)

    def _check_row(self, row: dict[str, Any]) -> None:
        where = f"row {row.get('index')}"
        status = row.get("status")
        task_id = row.get("task_id")
        ups: dict[str, str] = row.get("upscale_task_ids") or {}
        mine = self.by_row.get(int(row.get("index", -1)), [])
        if task_id is not None and not any(j.id == task_id and j.label is None for j in mine):
            self.problem(f"{where}: task {task_id} was not created for this row")
        if status == "succeeded":
            self._check_files(where, row)
            finals = [ups.get(label) for label in self.labels] if self.labels else [task_id]
            if len(row.get("files") or []) != len(finals) or any(
                f is None or self._status(f) != "SUCCESS" for f in finals
            ):
                self.problem(f"{where}: succeeded, but its final jobs are not all SUCCESS")
        elif status == "failed":
            if not row.get("reason"):
                self.problem(f"{where}: failed without a reason")
        elif status == "rejected":
            if row.get("code") is None or not row.get("reason"):
                self.problem(f"{where}: rejected without a relay code and reason")
            if mine:
                self.problem(f"{where}: rejected, but the relay created {[j.id for j in mine]}")
        elif status == "unknown":
            if not (row.get("reason") and row.get("tag") and row.get("sent_at")):
                self.problem(f"{where}: unknown without a reason, a tag and a send time")
        elif status in ("timed_out", "incomplete"):
            if not task_id:
                self.problem(f"{where}: {status} without its task id")
        elif status == "pending" and self.key_refused is not None:
            # The key (its account) could not pay: the run stopped submitting, and the
            # prompts it had not sent, or sent and had refused, created nothing.
            if mine or task_id:
                self.problem(f"{where}: pending, but the relay created {[j.id for j in mine]}")
            if "nothing was created" not in str(row.get("reason")):
                self.problem(
                    f"{where}: pending without 'nothing was created' ({row.get('reason')!r})"
                )
        else:
            self.problem(f"{where}: left {status!r} by a run that was not interrupted")

    def _status(self, task_id: str) -> str:
        try:
            return self.sim.task_status(task_id)
        except KeyError:
            return "(no such task)"

    def _check_files(self, where: str, row: dict[str, Any]) -> None:
        files = row.get("files") or []
        if not files:
            self.problem(f"{where}: succeeded without files")
        for name in files:
            try:
                with (self.out / name).open("rb") as fh:
                    head = fh.read(8)
            except OSError:
                self.problem(f"{where}: file {name} is missing")
                continue
            if head != b"\x89PNG\r\n\x1a\n":
                self.problem(f"{where}: file {name} is not a PNG")


def _cut_submits(batch: Path, rows: list[dict[str, Any]] | None = None) -> set[str]:
    """Tags of the rows a stopped run left on the wire: ``submitting`` (no task id yet) or
    pressing a button (and not settled since, as ``unknown`` after an ambiguous answer).
    The next run makes them ``unknown``."""
    if rows is None:
        rows = _journal_rows(batch)
    return {
        str(r["tag"])
        for r in rows or []
        if r["tag"]
        and r["phase"] in _OPEN_PHASES
        and (r["pressing"] or (r["phase"] == "submitting" and not r["task_id"]))
    }


def _check_settle(settle: bool, dialect: str) -> None:
    if settle and dialect not in _LISTING_DIALECTS:
        raise ValueError(f"reconcile needs GET /task/list: {', '.join(_LISTING_DIALECTS)}")


def _journal_rows(batch: Path) -> list[dict[str, Any]] | None:
    """The journal's rows, read from a copy (a killed run's files are left untouched).

    None when there is no journal; [] when it holds no prompts yet.
    """
    path = batch / _JOURNAL
    if not path.exists():
        return None
    with tempfile.TemporaryDirectory(prefix="quickmj-soak-journal-") as tmp:
        copy = Path(tmp) / _JOURNAL
        shutil.copyfile(path, copy)
        wal = Path(f"{path}-wal")
        if wal.exists():
            shutil.copyfile(wal, f"{copy}-wal")
        db = sqlite3.connect(copy)
        try:
            cur = db.execute("SELECT idx, phase, task_id, tag, pressing FROM rows ORDER BY idx")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur]
        except sqlite3.Error:
            return []
        finally:
            db.close()


def _peak_rss(*, resource_children: bool) -> int:
    try:
        import resource
    except ImportError:  # Windows
        return 0
    who = resource.RUSAGE_CHILDREN if resource_children else resource.RUSAGE_SELF
    peak = resource.getrusage(who).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB else
