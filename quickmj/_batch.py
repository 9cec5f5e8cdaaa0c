"""The batch job: many prompts, bounded concurrency, resumable, never paying twice.

``run_batch`` submits prompts with at most ``concurrency`` jobs in flight, waits on all of
them through the client's shared poller, optionally presses upscale buttons, downloads the
final images and writes a JSONL manifest. Every step is recorded in a SQLite journal
(``_journal.py``) first, so a killed run resumed with ``resume=True`` re-submits nothing.

Queue-full (code 23) and 429 answers create nothing, so those submits are retried after a
backoff. A submit whose outcome is unknown (timeout or dropped connection after sending,
a 5xx) is recorded as ``unknown`` and never re-sent.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path, PurePath
from typing import Any

import anyio
import attrs

from ._client import AsyncClient
from ._journal import Journal, JournalRow, Phase, iter_jsonl
from ._models import SubmitResult, Task
from .errors import (
    ClientClosedError,
    InvalidInputError,
    MalformedResponseError,
    QueueFullError,
    QuickMJError,
    RateLimitError,
    SubmitOutcomeUnknownError,
    SubmitRejectedError,
    TaskFailedError,
    UsageError,
)

__all__ = ("BatchItem", "BatchProgress", "BatchSummary", "read_prompts", "run_batch")

JOURNAL_NAME = ".quickmj-journal.sqlite"
MANIFEST_NAME = "manifest.jsonl"
_UPSCALE_LABELS = ("U1", "U2", "U3", "U4")
_IMAGINE_OPTIONS = frozenset({"bot_type", "images", "state", "notify_hook"})


@attrs.frozen
class BatchItem:
    """One line of input: a prompt and its per-line options (JSONL input)."""

    prompt: str
    options: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class BatchProgress:
    """Counts handed to the progress callback as the run goes."""

    total: int
    queued: int
    running: int
    succeeded: int
    failed: int
    elapsed: float

    @property
    def done(self) -> int:
        return self.succeeded + self.failed

    @property
    def eta(self) -> float | None:
        """Seconds left, extrapolated from the finished ones (None until one finished)."""
        if not self.done or self.done >= self.total:
            return None
        return self.elapsed / self.done * (self.total - self.done)


@attrs.frozen
class BatchSummary:
    """How the run ended, per prompt phase, plus where the manifest is."""

    total: int
    succeeded: int
    failed: int
    rejected: int
    unknown: int
    manifest: Path
    elapsed: float

    @property
    def ok(self) -> bool:
        return self.succeeded == self.total


def read_prompts(path: str | os.PathLike[str]) -> list[BatchItem]:
    """Read one prompt per line, or JSONL objects with a ``prompt`` and imagine options.

    Blank lines and lines starting with ``#`` are skipped.
    """
    items: list[BatchItem] = []
    text = Path(path).read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise InvalidInputError(f"{path}:{number}: invalid JSON: {exc}") from exc
            prompt = obj.pop("prompt", None) if isinstance(obj, dict) else None
            if not isinstance(prompt, str) or not prompt.strip():
                raise InvalidInputError(f"{path}:{number}: a JSONL line needs a 'prompt' string")
            unknown = set(obj) - _IMAGINE_OPTIONS
            if unknown:
                raise InvalidInputError(f"{path}:{number}: unknown options {sorted(unknown)}")
            items.append(BatchItem(prompt.strip(), obj))
        else:
            items.append(BatchItem(line))
    if not items:
        raise InvalidInputError(f"{path}: no prompts")
    return items


def parse_upscale(value: str | None) -> tuple[str, ...]:
    """``"all"`` or ``"U1,U3"`` (or ``"1,3"``) -> upscale labels."""
    if not value:
        return ()
    if value.strip().lower() == "all":
        return _UPSCALE_LABELS
    labels = []
    for part in value.replace(" ", "").split(","):
        label = part.upper() if part.upper().startswith("U") else f"U{part}"
        if label not in _UPSCALE_LABELS:
            raise InvalidInputError(f"--upscale takes U1..U4 or all, not {part!r}")
        labels.append(label)
    return tuple(dict.fromkeys(labels))


class _Run:
    def __init__(
        self,
        client: AsyncClient,
        journal: Journal,
        out: Path,
        *,
        concurrency: int,
        upscale: tuple[str, ...],
        seed: bool,
        download: bool,
        timeout: float,
        on_progress: Callable[[BatchProgress], Any] | None,
    ) -> None:
        self.client = client
        self.journal = journal
        self.out = out
        self.upscale = upscale
        self.seed = seed
        self.download = download
        self.timeout = timeout
        self.on_progress = on_progress
        self.slots = anyio.Semaphore(concurrency)
        self.started = time.monotonic()
        self.counts: Counter[str] = Counter()
        self.total = 0
        #: Set when the client was closed under the run: it stops, rows stay resumable.
        self.closed: ClientClosedError | None = None
        self._scope: anyio.CancelScope | None = None

    def progress(self) -> BatchProgress:
        c = self.counts
        return BatchProgress(
            total=self.total,
            queued=self.total - c["running"] - c["succeeded"] - c["failed"],
            running=c["running"],
            succeeded=c["succeeded"],
            failed=c["failed"],
            elapsed=time.monotonic() - self.started,
        )

    def _report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.progress())

    async def run(self, rows: Sequence[JournalRow]) -> None:
        self.total = len(rows)
        for r in rows:
            if r.phase == Phase.SUCCEEDED:
                self.counts["succeeded"] += 1
            elif r.phase in Phase.TERMINAL:
                self.counts["failed"] += 1
        self._report()
        async with anyio.create_task_group() as tg:
            self._scope = tg.cancel_scope
            for r in rows:
                if r.phase not in Phase.TERMINAL:
                    tg.start_soon(self._one, r)
        if self.closed is not None:
            raise self.closed  # one typed error, not an ExceptionGroup of them

    async def _one(self, row: JournalRow) -> None:
        async with self.slots:
            self.counts["running"] += 1
            self._report()
            try:
                phase = await self._process(row)
            except ClientClosedError as exc:
                # Not the prompt's fault: leave its row as it is (a resume carries on).
                self.closed = exc
                if self._scope is not None:
                    self._scope.cancel()
                return
            finally:
                self.counts["running"] -= 1
            self.counts["succeeded" if phase == Phase.SUCCEEDED else "failed"] += 1
            self._report()

    async def _process(self, row: JournalRow) -> str:
        """Take one prompt as far as it goes; returns its terminal phase."""
        idx = row.index
        task_id = row.task_id
        # A row left 'submitting' with its task id known: a run stopped while pressing an
        # upscale button (the first one without a task id). That press may have been sent.
        pressing = task_id is not None and row.phase == Phase.SUBMITTING
        if task_id is None:
            if row.phase == Phase.SUBMITTING:
                # Killed between sending and recording: the job may exist. Do not pay twice.
                reason = "a previous run was stopped while this prompt was being submitted"
                self.journal.finish(idx, Phase.UNKNOWN, reason=reason)
                return Phase.UNKNOWN
            outcome = await self._submit(
                idx, lambda: self.client.imagine(row.prompt, **_imagine_kwargs(row.options))
            )
            if isinstance(outcome, str):
                return outcome
            task_id = outcome.task_id
            self.journal.set_task(idx, task_id)
        grid = await self._wait(idx, task_id)
        if grid is None:
            return self.journal.row(idx).phase
        finals: list[Task] = [grid]
        if self.upscale:
            finals = []
            for label in self.upscale:
                up_id = self.journal.row(idx).upscales.get(label)
                if up_id is None:
                    if pressing:
                        reason = f"a previous run was stopped while pressing {label}"
                        self.journal.finish(idx, Phase.UNKNOWN, reason=reason)
                        return Phase.UNKNOWN
                    press = functools.partial(self.client.action, grid, label)
                    outcome = await self._submit(idx, press)
                    if isinstance(outcome, str):
                        return outcome
                    up_id = outcome.task_id
                    self.journal.set_upscale(idx, label, up_id)
                up = await self._wait(idx, up_id)
                if up is None:
                    return self.journal.row(idx).phase
                finals.append(up)
        files: list[str] = []
        try:
            if self.download:
                for t in finals:
                    path = await self.client.download(t, self.out / "images")
                    files.append(PurePath(path).relative_to(self.out).as_posix())
            seed = await self.client.image_seed(grid) if self.seed else None
        except ClientClosedError:
            raise
        except QuickMJError as exc:
            self.journal.finish(
                idx,
                Phase.FAILED,
                status=grid.status.value,
                reason=f"{type(exc).__name__}: {exc}",
                files=files,
            )
            return Phase.FAILED
        self.journal.finish(idx, Phase.SUCCEEDED, status=grid.status.value, files=files, seed=seed)
        return Phase.SUCCEEDED

    async def _submit(
        self, idx: int, send: Callable[[], Awaitable[SubmitResult]]
    ) -> SubmitResult | str:
        """Submit with the journal written first; back off while the relay's queue is full."""
        policy = self.client.retry
        attempt = 0
        while True:
            attempt += 1
            self.journal.mark_submitting(idx)
            try:
                # Shielded: a cancelled run (Ctrl-C) still records what the relay answered,
                # so a resume never has to guess. HTTP timeouts bound the wait.
                with anyio.CancelScope(shield=True):
                    result = await send()
            except (QueueFullError, RateLimitError) as exc:
                # Nothing was created: safe to wait and send again.
                self.journal.mark_pending(idx)
                retry_after = exc.retry_after if isinstance(exc, RateLimitError) else None
                await anyio.sleep(max(policy.delay(min(attempt, 6), retry_after), 0.05))
                continue
            except (SubmitOutcomeUnknownError, MalformedResponseError) as exc:
                # Sent and answered with something unreadable (or not at all): the job may
                # exist, so this is an unknown outcome, never a rejection to re-submit.
                self.journal.finish(idx, Phase.UNKNOWN, reason=str(exc))
                return Phase.UNKNOWN
            except SubmitRejectedError as exc:
                self.journal.finish(
                    idx, Phase.REJECTED, reason=exc.description or str(exc), code=exc.code
                )
                return Phase.REJECTED
            except ClientClosedError:
                self.journal.mark_pending(idx)  # closed before sending: nothing was created
                raise
            except QuickMJError as exc:
                # Raised before anything was sent (bad input, connect failure after retries).
                self.journal.finish(idx, Phase.REJECTED, reason=f"{type(exc).__name__}: {exc}")
                return Phase.REJECTED
            if result.needs_modal:
                self.journal.finish(
                    idx, Phase.FAILED, reason=f"task {result.task_id} waits for a modal"
                )
                return Phase.FAILED
            return result

    async def _wait(self, idx: int, task_id: str) -> Task | None:
        try:
            return await self.client.wait(task_id, timeout=self.timeout)
        except TaskFailedError as exc:
            self.journal.finish(
                idx, Phase.FAILED, status=exc.task.status.value, reason=exc.fail_reason
            )
        except ClientClosedError:
            raise
        except QuickMJError as exc:
            # Timeout, unknown id, stuck in MODAL, or a task the relay garbled: only this
            # prompt fails, never the whole run.
            self.journal.finish(idx, Phase.FAILED, reason=f"{type(exc).__name__}: {exc}")
        return None


def _imagine_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k in _IMAGINE_OPTIONS}


def write_manifest(journal: Journal, out: Path) -> Path:
    """Write ``manifest.jsonl`` atomically from the journal."""
    path = out / MANIFEST_NAME
    tmp = out / f".{MANIFEST_NAME}.part"
    tmp.write_text("".join(line + "\n" for line in iter_jsonl(journal.rows())), encoding="utf-8")
    os.replace(tmp, path)
    return path


async def run_batch(
    client: AsyncClient,
    items: Sequence[BatchItem],
    out: str | os.PathLike[str],
    *,
    concurrency: int = 8,
    upscale: Sequence[str] = (),
    seed: bool = False,
    download: bool = True,
    resume: bool = False,
    timeout: float = 3600.0,
    on_progress: Callable[[BatchProgress], Any] | None = None,
) -> BatchSummary:
    """Run (or resume) a batch into directory ``out``; see the module docstring."""
    if concurrency < 1:
        raise InvalidInputError("concurrency must be at least 1")
    out_dir = Path(out)
    await anyio.Path(out_dir).mkdir(parents=True, exist_ok=True)
    pairs = [(i.prompt, dict(i.options)) for i in items]
    started = time.monotonic()
    with Journal(out_dir / JOURNAL_NAME) as journal:
        if journal.is_empty():
            journal.load_prompts(pairs)
        elif not resume:
            raise UsageError(
                f"{out_dir} already holds a batch journal: "
                "pass --resume (resume=True) or use a new --out"
            )
        elif not journal.same_input(pairs):
            raise UsageError(
                f"the prompts differ from the journal in {out_dir}; resume with the same input file"
            )
        run = _Run(
            client,
            journal,
            out_dir,
            concurrency=concurrency,
            upscale=tuple(parse_upscale(",".join(upscale)) if upscale else ()),
            seed=seed,
            download=download,
            timeout=timeout,
            on_progress=on_progress,
        )
        try:
            await run.run(journal.rows())
        finally:
            # Even when interrupted: the manifest shows where every prompt stands.
            manifest = write_manifest(journal, out_dir)
        phases = Counter(r.phase for r in journal.rows())
    return BatchSummary(
        total=len(pairs),
        succeeded=phases[Phase.SUCCEEDED],
        failed=phases[Phase.FAILED],
        rejected=phases[Phase.REJECTED],
        unknown=phases[Phase.UNKNOWN],
        manifest=manifest,
        elapsed=time.monotonic() - started,
    )
