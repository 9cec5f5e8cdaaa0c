"""The fault-injection soak: ``run_batch`` against a misbehaving relay, then its invariants.

Shared by ``tests/test_soak.py`` (a small run in every test session) and
``benchmarks/soak.py`` (10,000 prompts)::

    report = await soak(200, tmp_path)
    print(report.summary())
    assert report.ok, report.problems

The simulated relay answers 5% of requests with an HTML 502, 2% with 429 + Retry-After,
drops 2% of connections (before a submit creates its job; part-way through other
answers), answers 1% + 1% of submits ambiguously *after* creating the job (504 / cut),
truncates 20% of list-by-condition answers, refuses submits with code 23 beyond
``max_queue`` running jobs, fails 10% of jobs, and adds 50 ms to every request. Every
50th prompt carries a banned word (code 24).

The invariants checked afterwards (each violation is one line in ``problems``):

* every prompt has exactly one manifest row, in input order, in a terminal phase:
  succeeded (with its PNG files on disk), failed (with a reason), rejected (with a relay
  code) or unknown (with a reason);
* no prompt was created twice by the relay (``Simulator.tasks``), no grid's button was
  pressed twice (``upscale``), and every job the relay did create is on its row
  (``task_id`` / ``upscale_task_ids``) or the row is ``unknown``: nothing is lost;
* ``unknown`` rows are exactly the submits the relay answered ambiguously (its fault log
  of 5xx / dropped answers on ``POST /submit/imagine`` and ``/submit/action``), and the
  ones whose job exists are at most the after-create faults;
* ``run_batch`` returned (no exception escaped), within ``time_limit``; the poller logged
  no error; no ``*.part`` file is left; no asyncio task outlives the client;
* the tracemalloc peak stays under ``base_bytes + bytes_per_prompt * prompts``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tempfile
import time
import tracemalloc
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs

from .._batch import BatchItem, BatchProgress, BatchSummary, parse_upscale, run_batch
from .._client import AsyncClient
from .._config import RetryPolicy
from .._models import TaskStatus
from .._poller import PollPolicy
from ._app import Simulator
from ._config import FaultConfig, SimulatorConfig
from ._faults import Fault
from ._relay import Reply
from ._server import simulate

__all__ = ("SOAK_FAULTS", "SOAK_POLL", "SOAK_RETRY", "SoakReport", "soak", "soak_prompts")

#: The faults of the soak (see the module docstring).
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
#: Fast polling: the simulated jobs take a quarter of a second.
SOAK_POLL = PollPolicy(
    interval=0.1, first_poll=0.05, near_done_interval=0.05, max_error_backoff=1.0
)
#: Small backoffs, but a cap (1 s) above the simulator's Retry-After, so it is honoured.
SOAK_RETRY = RetryPolicy(max_attempts=6, backoff=0.02, max_backoff=1.0)

#: Faults on a submit that leave its outcome unknown to the client.
_AMBIGUOUS = frozenset(
    {Fault.ERROR_5XX, Fault.DROP, Fault.ERROR_5XX_AFTER_CREATE, Fault.DROP_AFTER_CREATE}
)
_AFTER_CREATE = frozenset({Fault.ERROR_5XX_AFTER_CREATE, Fault.DROP_AFTER_CREATE})
_SUBMITS = frozenset({"POST /submit/imagine", "POST /submit/action"})
_BANNED = "badword"  # SimulatorConfig's default banned word


@attrs.frozen
class SoakReport:
    """What a soak run did, and every invariant it broke (``problems``)."""

    prompts: int
    succeeded: int
    failed: int
    rejected: int
    unknown: int
    #: Prompts the relay created more than once (extra jobs counted).
    duplicates: int
    #: Submits the relay answered ambiguously (5xx or dropped) per its fault log.
    ambiguous_submits: int
    #: ``unknown`` rows whose job the relay did create (paid, outcome unknown to the client).
    unknown_created: int
    #: Submits the relay refused with code 23 (queue full); run_batch retries those.
    queue_full: int
    #: Requests the relay received, by route.
    requests: dict[str, int]
    #: Faults injected, by kind.
    faults: dict[str, int]
    wall: float
    #: tracemalloc peak in bytes while the run went (None when not traced).
    peak_traced: int | None
    #: The process's peak resident set size in bytes (whole life of the process).
    peak_rss: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line: counts, duplicates, requests by route, wall time, memory."""
        routes = " ".join(
            f"{route.split(' ', 1)[1].rsplit('/', 1)[-1]}={n}"
            for route, n in sorted(self.requests.items())
        )
        traced = f"{self.peak_traced / 2**20:.1f} MiB" if self.peak_traced is not None else "-"
        return (
            f"soak: prompts={self.prompts} succeeded={self.succeeded} failed={self.failed} "
            f"rejected={self.rejected} unknown={self.unknown} "
            f"(ambiguous submits={self.ambiguous_submits}, job created={self.unknown_created}) "
            f"duplicates={self.duplicates} queue-full={self.queue_full} requests: {routes} "
            f"wall={self.wall:.1f}s peak traced={traced} "
            f"peak rss={self.peak_rss / 2**20:.0f} MiB "
            f"{'OK' if self.ok else f'FAILED ({len(self.problems)} problems)'}"
        )


def soak_prompts(n: int, banned_every: int = 50) -> list[BatchItem]:
    """``n`` distinct prompts; every ``banned_every``-th carries a banned word (0: none)."""
    items = []
    for i in range(n):
        banned = banned_every and i % banned_every == banned_every - 1
        word = f" {_BANNED}" if banned else ""
        items.append(BatchItem(f"soak {i:06d} a watercolor fox{word} --v 6.1"))
    return items


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
    concurrency: int = 32,
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
    on_progress: Callable[[BatchProgress], Any] | None = None,
) -> SoakReport:
    """Run ``prompts`` prompts through ``run_batch`` against a faulty simulator; check it.

    ``out`` holds the journal, manifest and images (a temporary directory if None).
    ``max_queue`` defaults to three quarters of ``concurrency``, so code 23 does occur.
    ``upscale`` (``("U1",)``, say) also presses buttons, so action submits meet the faults.
    """
    if out is None:
        with tempfile.TemporaryDirectory(prefix="quickmj-soak-") as tmp:
            return await soak(
                prompts,
                tmp,
                concurrency=concurrency,
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
                on_progress=on_progress,
            )
    items = soak_prompts(prompts, banned_every)
    config = SimulatorConfig(
        seed=seed,
        faults=faults,
        failure_rate=failure_rate,
        max_queue=max_queue or max(1, concurrency * 3 // 4),
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
    started = time.perf_counter()
    try:
        async with simulate(config) as relay:
            queue_full = _count_queue_full(relay.simulator)
            async with AsyncClient(
                relay.api_key,
                base_url=relay.base_url,
                poll=poll,
                retry=retry,
                max_connections=max(64, concurrency * 2),
            ) as mj:
                with anyio.move_on_after(time_limit) as scope:
                    try:
                        summary = await run_batch(
                            mj,
                            items,
                            out,
                            concurrency=concurrency,
                            upscale=upscale,
                            download=True,
                            timeout=max(60.0, time_limit / 2),
                            on_progress=on_progress,
                        )
                    except Exception as exc:  # the invariant: nothing escapes
                        problems.append(f"run_batch raised {type(exc).__name__}: {exc!r}")
                if scope.cancelled_caught:
                    problems.append(f"run_batch did not finish within {time_limit:g} s")
            wall = time.perf_counter() - started
            await asyncio.sleep(0)  # let the closed session's callbacks run
            peak = tracemalloc.get_traced_memory()[1] if tracing else None
            jobs = _Jobs(relay.simulator, queue_full[0])
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
    return _verify(
        items,
        Path(out),
        tuple(parse_upscale(",".join(upscale))),
        jobs,
        summary,
        problems,
        wall=wall,
        peak=peak,
    )


def _count_queue_full(sim: Simulator) -> list[int]:
    """Count the relay's code-23 answers (a one-element list the caller reads later)."""
    count = [0]
    check = sim.relay._queue_full

    def counting(now: float) -> Reply | None:
        reply = check(now)
        count[0] += reply is not None
        return reply

    sim.relay._queue_full = counting  # type: ignore[method-assign]
    return count


def _verify(
    items: Sequence[BatchItem],
    out: Path,
    labels: tuple[str, ...],
    jobs: _Jobs,
    summary: BatchSummary | None,
    problems: list[str],
    *,
    wall: float,
    peak: int | None,
) -> SoakReport:
    """Check the manifest, the files and the relay's records against each other."""
    rows = _read_manifest(out / "manifest.jsonl", problems)
    phases: Counter[str] = Counter(str(r.get("status")) for r in rows)
    if len(rows) != len(items):
        problems.append(f"the manifest has {len(rows)} rows for {len(items)} prompts")
    duplicates = jobs.duplicates(problems)
    unknown_created = 0
    for i, (item, row) in enumerate(zip(items, rows, strict=False)):
        if row.get("index") != i or row.get("prompt") != item.prompt:
            problems.append(f"row {i}: index/prompt {row.get('index')}/{row.get('prompt')!r}")
            continue
        unknown_created += jobs.check_row(row, labels, out, problems)
    if summary is not None:
        got = (summary.succeeded, summary.failed, summary.rejected, summary.unknown)
        want = tuple(phases[p] for p in ("succeeded", "failed", "rejected", "unknown"))
        if got != want or summary.total != len(items):
            problems.append(f"BatchSummary {got} disagrees with the manifest {want}")
    if phases["unknown"] != jobs.ambiguous:
        problems.append(
            f"{phases['unknown']} unknown rows, but the relay answered {jobs.ambiguous} "
            "submits ambiguously"
        )
    if unknown_created > jobs.after_create:
        problems.append(
            f"{unknown_created} unknown rows have a job, but only {jobs.after_create} "
            "submits failed after creating one"
        )
    if items and not phases["succeeded"]:
        problems.append("nothing succeeded")
    parts = sorted(p.name for p in out.rglob("*") if p.name.endswith(".part"))
    if parts:
        problems.append(f"{len(parts)} partial files left: {parts[:3]}")
    return SoakReport(
        prompts=len(items),
        succeeded=phases["succeeded"],
        failed=phases["failed"],
        rejected=phases["rejected"],
        unknown=phases["unknown"],
        duplicates=duplicates,
        ambiguous_submits=jobs.ambiguous,
        unknown_created=unknown_created,
        queue_full=jobs.queue_full,
        requests=jobs.requests,
        faults=jobs.faults,
        wall=wall,
        peak_traced=peak,
        peak_rss=_peak_rss(),
        problems=tuple(problems),
    )


class _Jobs:
    """The jobs the relay really created, read from the simulator after the run."""

    def __init__(self, sim: Simulator, queue_full: int) -> None:
        self.requests = dict(sim.counters)
        self.faults = dict(Counter(e.fault.value for e in sim.fault_log))
        on_submits = [e.fault for e in sim.fault_log if e.route in _SUBMITS]
        #: Submits answered 5xx or dropped: the client cannot know whether a job exists.
        self.ambiguous = sum(f in _AMBIGUOUS for f in on_submits)
        self.after_create = sum(f in _AFTER_CREATE for f in on_submits)
        self.queue_full = queue_full
        self.grids: dict[str, list[str]] = defaultdict(list)  # prompt -> imagine job ids
        # (grid id, "U1") -> action job ids
        self.upscales: dict[tuple[str, str], list[str]] = defaultdict(list)
        self.status: dict[str, TaskStatus] = {}
        for task in sim.tasks.values():
            if task.endpoint == "/submit/imagine":
                self.grids[task.prompt].append(task.id)
            elif task.endpoint == "/submit/action" and task.parent_id and task.custom_id:
                label = f"U{task.custom_id.split('::')[3]}"
                self.upscales[task.parent_id, label].append(task.id)
            self.status[task.id] = sim.task(task.id).status

    def duplicates(self, problems: list[str]) -> int:
        """Extra jobs: a prompt imagined twice, or one grid's button pressed twice."""
        extra = 0
        for what, ids in [*self.grids.items(), *self.upscales.items()]:
            if len(ids) > 1:
                extra += len(ids) - 1
                problems.append(f"{what!r} was created {len(ids)} times: {ids}")
        return extra

    def check_row(
        self, row: dict[str, Any], labels: tuple[str, ...], out: Path, problems: list[str]
    ) -> int:
        """Check one manifest row against the relay; returns 1 if it is unknown but paid."""
        where = f"row {row['index']}"
        status = row.get("status")
        grid_id = row.get("task_id")
        ups: dict[str, str] = row.get("upscale_task_ids") or {}
        created = self.grids.get(str(row["prompt"]), [])
        if grid_id is not None and grid_id not in created:
            problems.append(f"{where}: task {grid_id} was not created for this prompt")
        # Every job the relay made for this prompt is on the row, unless the row is unknown.
        lost = [j for j in created if j != grid_id]
        if grid_id is not None:
            for label in labels:
                made = self.upscales.get((grid_id, label), [])
                if label in ups and ups[label] not in made:
                    problems.append(f"{where}: {label} task {ups[label]} was not created")
                lost += [j for j in made if j != ups.get(label)]
        if lost and status != "unknown":
            problems.append(f"{where}: jobs {lost} were created but are lost ({status})")
        if status == "succeeded":
            _check_files(out, where, row, problems)
            finals = [ups.get(label) for label in labels] if labels else [grid_id]
            if len(row.get("files") or []) != len(finals) or any(
                self.status.get(str(t)) is not TaskStatus.SUCCESS for t in finals
            ):
                problems.append(f"{where}: succeeded, but its jobs are not all SUCCESS")
        elif status == "failed":
            if not row.get("reason"):
                problems.append(f"{where}: failed without a reason")
        elif status == "rejected":
            if row.get("code") is None or not row.get("reason"):
                problems.append(f"{where}: rejected without a relay code and reason")
            if created:
                problems.append(f"{where}: rejected, but the relay created {created}")
        elif status == "unknown":
            if not row.get("reason"):
                problems.append(f"{where}: unknown without a reason")
            return 1 if lost else 0
        else:
            problems.append(f"{where}: not in a terminal phase: {status!r}")
        return 0


def _read_manifest(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problems.append(f"no manifest: {exc}")
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _check_files(out: Path, where: str, row: dict[str, Any], problems: list[str]) -> None:
    files = row.get("files") or []
    if not files:
        problems.append(f"{where}: succeeded without files")
    for name in files:
        path = out / name
        try:
            with path.open("rb") as fh:
                head = fh.read(8)
        except OSError:
            problems.append(f"{where}: file {name} is missing")
            continue
        if head != b"\x89PNG\r\n\x1a\n":
            problems.append(f"{where}: file {name} is not a PNG")


def _peak_rss() -> int:
    try:
        import resource
    except ImportError:  # Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB else
