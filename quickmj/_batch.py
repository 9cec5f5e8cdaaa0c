"""The batch job: many prompts, bounded concurrency, resumable, never paying twice.

``run_batch`` submits prompts with at most ``concurrency`` jobs in flight, waits on all
of them through the client's shared poller, optionally presses upscale buttons, downloads
the final images and writes a JSONL manifest. It owns its output directory exclusively
(``_outdir``) and records every step in the journal (``_journal``) *before* it happens,
so a killed run resumed with ``resume=True`` re-submits nothing.

Money rules: a submit is re-sent only when it provably never reached the relay; a job
that was paid for keeps its task id in the journal whatever happens next (a wait limit
makes it ``timed_out``, a failed download ``incomplete``: both are resumable); every
submit carries a state tag unique to the run and prompt, so ``unknown`` outcomes can be
settled with :func:`reconcile`. One prompt's trouble stays on its row; an outage (the
relay unreachable) or a full disk stops the whole run early with one typed error.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import sys
import time
import unicodedata
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, NoReturn, TextIO

import anyio
import attrs

from ._accounts import AccountPool, Reservation
from ._billing import NO_BILLING_DIALECTS, Balance
from ._budgets import BudgetStats, account_unusable
from ._client import AsyncClient
from ._converter import structure_task
from ._files import STEM_BYTES, cap_utf8, safe_stem, storage_error
from ._jobs import AsyncJob, Submission
from ._journal import Journal, JournalRow, Phase, read_snapshot
from ._models import Task
from ._outdir import IMAGES, JOURNAL_NAME, STAGING, BatchDir
from ._protocol import outage_error, outcome_unknown, relay_words
from ._spend import (
    SPEND_NAME,
    BalanceWatch,
    BatchPlan,
    Ledger,
    PriceBook,
    SpendFile,
    SpendReport,
    mode_of,
    paid_submits,
    parse_prices,
    plan_rows,
    row_usd,
    spend_counts,
    spend_report,
    usd_moved,
)
from .errors import (
    AuthenticationError,
    ClientClosedError,
    ConnectError,
    InvalidInputError,
    JournalError,
    MalformedResponseError,
    NoUsableAccountError,
    QueueFullError,
    QuickMJError,
    RateLimitError,
    RelayUnreachableError,
    StorageError,
    SubmitOutcomeUnknownError,
    SubmitRejectedError,
    TaskFailedError,
    TaskStalledError,
    TaskTimeoutError,
    UnsupportedByRelayError,
    UsageError,
)

__all__ = (
    "AccountSummary",
    "BatchItem",
    "BatchProgress",
    "BatchSummary",
    "parse_upscale",
    "plan_batch",
    "read_prompts",
    "reconcile",
    "run_batch",
)

logger = logging.getLogger("quickmj")

_UPSCALE_LABELS = ("U1", "U2", "U3", "U4")
_IMAGINE_OPTIONS = frozenset({"bot_type", "images", "state", "notify_hook"})
#: Consecutive outage failures (nothing reached the relay, or only 5xx/timeouts came back)
#: after which the run stops instead of burning every prompt.
OUTAGE_LIMIT = 3
_DEFAULT_NAME = "{task}"


@attrs.frozen
class BatchItem:
    """One prompt of a batch, with its per-line imagine options (JSONL input)."""

    prompt: str
    """The prompt text."""
    options: dict[str, Any] = attrs.field(factory=dict)
    """Imagine options from the line's JSON object (``{"mode": "relax"}``), checked by
    ``read_prompts``."""


@attrs.frozen
class BatchProgress:
    """Counts handed to the progress callback as the run goes."""

    total: int
    """Prompts this run works on."""
    queued: int
    """Prompts not started yet (waiting for a slot, or not sent)."""
    running: int
    """Prompts being submitted, waited for or downloaded now."""
    succeeded: int
    """Prompts done with their images saved."""
    failed: int
    """Prompts whose job the relay reported failed (or cancelled)."""
    elapsed: float
    """Seconds since the run started."""
    rejected: int = 0
    """Prompts the relay refused at submit: nothing was created."""
    timed_out: int = 0
    """Prompts paid but still running when the run's ``timeout`` hit (resumable)."""
    incomplete: int = 0
    """Prompts paid but not followed to the end (files not saved, ...; resumable)."""
    unknown: int = 0
    """Prompts whose submit outcome is unknown: the job may exist (``reconcile``)."""
    rate: float | None = None
    """Prompts finished per second over the recent past (None until two finished)."""
    refused_for: float | None = None
    """Seconds since the relay began refusing every submit ("queue full" or HTTP 429; None
    while submits are accepted). At the run's ``timeout`` submitting stops."""
    refusal: str | None = None
    """What those refusals say: ``"queue full"`` or ``"rate limited (HTTP 429)"``."""

    @property
    def done(self) -> int:
        """Prompts that reached an end in this run (any outcome)."""
        return (
            self.succeeded
            + self.failed
            + self.rejected
            + self.timed_out
            + self.incomplete
            + self.unknown
        )

    @property
    def eta(self) -> float | None:
        """Seconds left at the recent rate (None until it is known)."""
        if not self.rate or self.done >= self.total:
            return None
        return (self.total - self.done) / self.rate


@attrs.frozen
class Unsettled:
    """An unknown outcome quickmj could not settle: check the relay's dashboard."""

    index: int
    prompt: str
    tag: str | None
    sent_at: float | None
    reason: str = "no listed task carries its tag"
    """Why it was not settled, in one line (``"2 listed tasks match (ids ...): not adopted;
    check them by hand"``)."""
    matches: tuple[str, ...] = ()
    """Listed tasks that carry the row's tag (ambiguous matches, or ones whose prompt or
    submit time differ): look at them on the relay's dashboard."""


@attrs.frozen
class AccountSummary:
    """One account's share of a run (the account named by its key's fingerprint)."""

    account: str
    """The account's label: its key's fingerprint (never the key)."""
    submitted: int
    """Jobs this account created in this run (grids and presses)."""
    succeeded: int
    """Prompts owned by this account that succeeded (whole journal)."""
    failed: int
    """Prompts owned by this account that failed (whole journal)."""
    queue_full: int
    """Queue-full answers (code 23 or 9) in this run."""
    rate_limited: int
    """HTTP 429 answers in this run."""
    limit: float
    """The number of jobs the account was found to take at once."""
    disabled: str | None = None
    """Why the account left the rotation (None if it stayed in)."""
    incomplete: int = 0
    """Prompts owned by this account left ``incomplete`` (paid, resumable; whole journal)."""
    key_rejected: str | None = None
    """The relay refused this account's key while its jobs were awaited, in the relay's
    words (``"HTTP 401: 该令牌额度已用尽"``; never the key): those jobs are kept ``incomplete`` with
    their ids; resume with a valid key. None: no refusal."""


@attrs.frozen
class BatchSummary:
    """How the run ended, per prompt outcome, plus where the manifest is."""

    total: int
    """Prompts in the batch directory's journal."""
    succeeded: int
    """Prompts done with their images saved."""
    failed: int
    """Prompts whose job the relay reported failed (or cancelled)."""
    rejected: int
    """Prompts the relay refused at submit: nothing was created."""
    unknown: int
    """Prompts whose submit outcome is unknown: the job may exist (``reconcile``)."""
    manifest: Path
    """The ``manifest.jsonl`` written for the run (one line per prompt)."""
    elapsed: float
    """Seconds the run took."""
    timed_out: int = 0
    """Prompts paid but still running when the run's ``timeout`` hit (resumable)."""
    incomplete: int = 0
    """Prompts paid but not followed to the end (files not saved, ...; resumable)."""
    pending: int = 0
    """Prompts not submitted yet (the run stopped early, or was interrupted)."""
    unsettled: tuple[Unsettled, ...] = ()
    """Unknown outcomes ``reconcile`` could not settle (look them up by their tag)."""
    accounts: tuple[AccountSummary, ...] = ()
    """Per account: jobs submitted, outcomes, queue-full and 429 answers, learned limit."""
    stopped_submitting: str | None = None
    """Why the run stopped sending submits before every prompt was sent (the relay refused
    every submit for ``timeout`` seconds, or the next prompt would cross ``max_spend``);
    None if it did not."""
    key_refused: str | None = None
    """Why the relay refused the one key whose refusal stopped submitting (an
    ``AuthenticationError.reason``: ``"exhausted"``, ``"expired"``..., else ``"refused"``;
    ``"exhausted"`` too when its account cannot pay: new-api's ``quota_not_enough``,
    TrueAI's limits); its pending prompts created nothing. None if none did."""
    spend: SpendReport | None = None
    """What the batch directory has spent (every run), per action and per account, at the
    prices known (given or learned); the cap and why it stopped the run, if it did."""

    @property
    def ok(self) -> bool:
        """Every prompt succeeded."""
        return self.succeeded == self.total

    @property
    def resumable(self) -> int:
        """Prompts a ``--resume`` would continue (timed out, incomplete, pending)."""
        return self.timed_out + self.incomplete + self.pending


# ---- input ----


def read_prompts(path: str | os.PathLike[str], *, stdin: TextIO | None = None) -> list[BatchItem]:
    """Read prompts: one per line, or JSON objects with a ``prompt`` and imagine options.

    Blank lines and lines starting with ``#`` are skipped; a line is a prompt unless it
    is a JSON object with a ``prompt`` key (so Midjourney permutations such as
    ``{red, green} bird`` stay prompts); a UTF-8 BOM is ignored.

    Args:
        path: the prompts file (UTF-8), or ``"-"`` for standard input.
        stdin: the stream ``"-"`` reads (default ``sys.stdin``).

    Returns:
        One BatchItem per prompt, in file order.

    Raises:
        InvalidInputError: the file cannot be read, is not UTF-8, holds no prompts, or a
            JSON line has a bad ``prompt`` or unknown options.
    """
    name = os.fspath(path)
    text = _read_text(name, stdin)
    items = [
        item
        for number, line in enumerate(text.splitlines(), 1)
        if (item := _parse_line(line.strip(), f"{name}:{number}")) is not None
    ]
    if not items:
        raise InvalidInputError(f"{name}: no prompts")
    return items


def _read_text(name: str, stdin: TextIO | None) -> str:
    try:
        if name == "-":
            text = (stdin or sys.stdin).read()
        else:
            text = Path(name).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise InvalidInputError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise InvalidInputError(f"{name}: is a directory, not a prompts file") from None
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{name}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise InvalidInputError(f"{name}: cannot read: {exc.strerror or exc}") from None
    return text.removeprefix("\ufeff")


def _parse_line(line: str, where: str) -> BatchItem | None:
    if not line or line.startswith("#"):
        return None
    if line.startswith("{") and line.endswith("}"):
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and "prompt" in obj:
            prompt = obj.pop("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise InvalidInputError(f"{where}: 'prompt' must be a non-empty string")
            unknown = set(obj) - _IMAGINE_OPTIONS
            if unknown:
                raise InvalidInputError(f"{where}: unknown options {sorted(unknown)}")
            return BatchItem(prompt.strip(), obj)
    return BatchItem(line)


def parse_upscale(values: Sequence[str] | str | None) -> tuple[str, ...]:
    """``"all"``, ``"U1,U3"``, ``"1"`` or several such values (they add up) -> labels."""
    if not values:
        return ()
    if isinstance(values, str):
        values = [values]
    labels: list[str] = []
    for value in values:
        for part in value.replace(" ", "").split(","):
            if not part:
                continue
            if part.lower() == "all":
                labels.extend(_UPSCALE_LABELS)
                continue
            label = part.upper() if part.upper().startswith("U") else f"U{part}"
            if label not in _UPSCALE_LABELS:
                raise InvalidInputError(f"upscale takes U1..U4 or all, not {part!r}")
            labels.append(label)
    return tuple(dict.fromkeys(labels))


# ---- the run ----


@attrs.frozen
class _Settings:
    concurrency: int | None
    upscale: tuple[str, ...]
    seed: bool
    download: bool
    timeout: float
    name: str
    resubmit_unknown: bool
    gallery: bool = False  # write OUT/index.html at the end (and when stopped)
    max_spend: float | None = None  # USD for the whole directory (see _spend)
    learn: tuple[str, ...] = ()  # actions whose price the capped run learns


class _End(Exception):
    """Ends one prompt for this run: where it stands is recorded in the journal already
    (``_Run._ended``, or a pending mark), so the caller has nothing left to do."""

    def __init__(self, phase: Phase) -> None:
        super().__init__(phase.value)
        self.phase = phase


class _Stop(Exception):
    """Ends the whole run (an outage, a full disk, a closed client); rows stay resumable."""

    def __init__(self, error: QuickMJError) -> None:
        super().__init__(str(error))
        self.error = error


class _Breaker:
    """Trips when the recent submits were (nearly) all outage failures.

    The first ``limit`` submits all failing stops a run against a dead relay in seconds;
    later, ``limit * 2`` failures among the last ``limit * 8 // 3`` submits are needed, so
    a merely flaky relay (a few percent of 5xx at high concurrency) never stops the run.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._recent: deque[bool] = deque(maxlen=max(limit * 8 // 3, limit))

    def ok(self) -> None:
        self._recent.append(False)

    def failed(self) -> bool:
        """Record an outage failure; True when the run should stop."""
        self._recent.append(True)
        recent = self._recent
        failures = sum(recent)
        if len(recent) <= self.limit:
            return failures >= self.limit  # every submit so far failed
        return failures >= 2 * self.limit


class _Run:
    """One run over a batch directory's open prompts.

    Each prompt goes straight through ``_advance``: admit, submit, follow, press,
    download. Where it ends early (refused, failed, timed out, not sent...) the row is
    recorded and ``_End`` is raised, so no step returns "a job or an end"; ``_Stop``
    ends the whole run the same way.
    """

    def __init__(
        self,
        pool: AccountPool,
        journal: Journal,
        bdir: BatchDir,
        settings: _Settings,
        run_id: str,
        on_progress: Callable[[BatchProgress], Any] | None,
    ) -> None:
        self.pool = pool
        self.journal = journal
        self.bdir = bdir
        self.s = settings
        self.run_id = run_id
        self.on_progress = on_progress
        # A fixed cap on prompts in progress, on top of each account's learned budget.
        cap = settings.concurrency
        self.slots = anyio.Semaphore(cap) if cap else None
        self.started = time.monotonic()
        self.phases: Counter[Phase] = Counter()
        self.running = 0
        self.total = 0
        self.breaker = _Breaker(OUTAGE_LIMIT)
        self.stop: QuickMJError | None = None
        self.outage_cause: QuickMJError | None = None  # what tripped the outage breaker
        self._finished_at: list[float] = []
        #: Queue full forever: when the relay began refusing every submit (the loop's
        #: clock; None while submits are accepted), what it says, the submits waiting
        #: for a slot meanwhile (their waits end when submitting stops), and why it did.
        self.refusing_since: float | None = None
        self.refusal: str | None = None
        self._waits: set[anyio.CancelScope] = set()
        self.halted: str | None = None
        self.key_refused: str | None = None  # why the (only) key was refused, if it was
        #: Accounts whose key the relay refused while their jobs were awaited -> why.
        self.refused: dict[str, str] = {}
        #: The run's file names (made at the first download: it lists images/).
        self.names: _Names | None = None
        #: Paid jobs whose task id the full disk kept out of the journal: (row, the
        #: button pressed or None for the grid, task id). Named in the final error.
        self.unjournaled: list[tuple[JournalRow, str | None, str]] = []
        self._scope: anyio.CancelScope | None = None
        #: The spend and its cap, and the directory's spend.json (set by ``_drive``).
        self.ledger = Ledger(PriceBook(), Counter())
        self.spend_file = SpendFile(bdir.path / SPEND_NAME)
        self.watch: BalanceWatch | None = None  # a capped run's balance reads

    # ---- progress ----

    def progress(self) -> BatchProgress:
        p = self.phases
        done_now = sum(p[x] for x in p if x.is_final or x in (Phase.TIMED_OUT, Phase.INCOMPLETE))
        return BatchProgress(
            total=self.total,
            queued=max(0, self.total - done_now - self.running),
            running=self.running,
            succeeded=p[Phase.SUCCEEDED],
            failed=p[Phase.FAILED],
            rejected=p[Phase.REJECTED],
            timed_out=p[Phase.TIMED_OUT],
            incomplete=p[Phase.INCOMPLETE],
            unknown=p[Phase.UNKNOWN],
            elapsed=time.monotonic() - self.started,
            rate=self._rate(),
            refused_for=self._refused_for(),
            refusal=self.refusal if self.refusing_since is not None else None,
        )

    def _rate(self) -> float | None:
        # Smoothed over the last completions (upscale steps included), not since start:
        # the ETA neither jumps when upscales begin nor lags behind a changed pace.
        recent = self._finished_at[-50:]
        if len(recent) < 2 or recent[-1] <= recent[0]:
            return None
        return (len(recent) - 1) / (time.monotonic() - recent[0])

    def _report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.progress())

    def _set(self, row: JournalRow, phase: Phase, **fields: Any) -> Phase:
        """Record a prompt's end in this run (journal first, then the counters)."""
        self.journal.set_phase(row.index, phase, **fields)
        self.phases[phase] += 1
        self._finished_at.append(time.monotonic())
        return phase

    def _ended(self, row: JournalRow, phase: Phase, **fields: Any) -> _End:
        """Record a prompt's end (``_set``) and return the exception that ends it."""
        return _End(self._set(row, phase, **fields))

    def _pending(self, row: JournalRow, reason: str) -> _End:
        """Nothing of the prompt was sent: it stays pending for a resume."""
        self.journal.mark_pending(row.index, reason=reason)
        return _End(Phase.PENDING)

    # ---- driving ----

    async def run(self, rows: Sequence[JournalRow]) -> None:
        self.total = len(rows)
        todo = [r for r in rows if self._wants(r)]
        for r in rows:
            if not self._wants(r):  # (not `r not in todo`: quadratic in the batch size)
                self.phases[r.phase] += 1
        self._report()
        async with anyio.create_task_group() as tg:
            self._scope = tg.cancel_scope
            self.journal.on_full = self._disk_full
            for r in todo:
                tg.start_soon(self._one, r, tg.cancel_scope)
        if self.stop is not None:
            raise self._final(self.stop)  # one typed error, never an ExceptionGroup

    def _wants(self, row: JournalRow) -> bool:
        if row.phase is Phase.UNKNOWN:
            return self.s.resubmit_unknown
        return not row.phase.is_final

    async def _one(self, row: JournalRow, scope: anyio.CancelScope) -> None:
        async with self.slots or contextlib.nullcontext():
            try:
                try:
                    await self._advance(row)
                except _End:
                    pass  # the prompt's end is recorded
                except (_Stop, StorageError):
                    raise
                except Exception as exc:  # one prompt's trouble stays with that prompt
                    self._unexpected(row, exc)
            except _Stop as stop:
                self._stopping(stop.error)
                scope.cancel()
            except StorageError as exc:  # the disk refused a journal write
                self._stopping(exc)
                scope.cancel()
            finally:
                self.ledger.release(row.index)  # what the prompt still holds comes back
            self._report()

    def _stopping(self, error: QuickMJError) -> None:
        if isinstance(error, StorageError):
            # Room for the ids of submits still on the wire (the journal's reserve).
            self.journal.release_reserve()
        if self.stop is None:
            self.stop = error

    def _unexpected(self, row: JournalRow, exc: Exception) -> None:
        current = self.journal.row(row.index)
        reason = f"{type(exc).__name__}: {exc}"
        if _press_on_wire(current) or (
            current.task_id is None and current.phase is Phase.SUBMITTING
        ):
            self._set(row, Phase.UNKNOWN, reason=reason)
        elif current.task_id is None:
            self._set(row, Phase.FAILED, reason=reason)
        else:
            self._set(row, Phase.INCOMPLETE, reason=reason)  # paid: resumable

    async def _advance(self, row: JournalRow) -> None:
        """Take one prompt as far as it goes (an ``_End`` says where it ended early)."""
        if row.phase is Phase.UNKNOWN:  # --resubmit-unknown: the user accepts paying again
            row = self._reopen(row)
        if row.task_id is None and row.phase is Phase.SUBMITTING:
            # Killed between sending and recording: the job may exist. Do not pay twice.
            raise self._ended(
                row, Phase.UNKNOWN, reason="the run stopped while this prompt was being submitted"
            )
        if _press_on_wire(row):
            # Killed with a press sent and its id not recorded: that job may be paid. Settled
            # first: a grid wait that fails or a cap must not end the row "incomplete".
            raise self._ended(
                row, Phase.UNKNOWN, reason=f"the run stopped while pressing {row.pressing}"
            )
        await self._admit(row)
        if row.task_id is None:
            job = await self._submit(
                row,
                None,
                lambda mj, tag: mj.imagine(row.prompt, **_imagine_kwargs(row.options, tag)),
            )
            try:
                self.journal.set_task(row.index, job.id, account=job.account)
            except StorageError as exc:
                raise _Stop(self._not_journaled(row, None, job.id, exc)) from None
            row = self.journal.row(row.index)
        client = self._owner(row)
        if client is None:
            raise self._ended(
                row,
                Phase.INCOMPLETE,
                reason=f"account {row.account} is not among this run's keys: resume with it",
            )
        self.running += 1
        self._report()
        try:
            await self._paid(row, client)
        finally:
            self.running -= 1

    async def _admit(self, row: JournalRow) -> None:
        """Hold the price of the prompt's submits left (its imagine, its upscales) under
        ``max_spend``, or end the prompt. A prompt that does not fit sends nothing: a new one
        stays pending, a paid grid whose presses do not fit is left incomplete."""
        labels = [x for x in self.s.upscale if x not in row.upscales]
        actions = (["imagine"] if row.task_id is None else []) + ["upscale"] * len(labels)
        if not actions:
            return  # nothing to send: following a paid job costs nothing
        modes = {mode_of(row.prompt, c.mode) for c in self.pool.clients}
        ledger = self.ledger

        def cost() -> float:  # at the prices known when it is admitted (some are learned)
            return max(sum(ledger.price(a, m) for a in actions) for m in modes)

        if self.watch is not None:
            await self.watch.check()  # what the relay charged, at a modest rate
        if await ledger.admit(row.index, cost, "prompt"):
            return
        why = f"{ledger.stopped}; a resume with a higher max_spend sends it"
        if row.task_id is None:
            raise self._pending(row, f"not sent: {why}")
        raise self._ended(row, Phase.INCOMPLETE, reason=f"{', '.join(labels)} not sent: {why}")

    def _owner(self, row: JournalRow) -> AsyncClient | None:
        """The client of the account that owns the row's jobs (None: not in this run)."""
        try:
            return self.pool.client(row.account)  # no account recorded: the first key
        except InvalidInputError:
            return None

    async def _paid(self, row: JournalRow, client: AsyncClient) -> None:
        """Follow a paid grid to the end on its own account: wait, press, download."""
        grid = await self._follow(row, client, row.task_id or "")
        finals: list[tuple[str | None, Task]] = [(None, grid)]
        if self.s.upscale:
            finals = await self._upscales(row, client, grid)
        await self._finish(row, client, grid, finals)

    def _reopen(self, row: JournalRow) -> JournalRow:
        """An unknown outcome to send again: the submit, or just the press it lost."""
        # The journal forgets the first attempt, which may be paid: spend.json keeps it.
        phase = Phase.PENDING if row.task_id is None else Phase.RUNNING
        after = attrs.evolve(row, phase=phase, pressing=None)
        lost = Counter(paid_submits(row)) - Counter(paid_submits(after))
        if lost:
            self.spend_file.resent.update(lost)
            self.spend_file.save()
        if row.task_id is None:
            self.journal.mark_pending(row.index, reason="sent again (resubmit_unknown)")
        else:
            self.journal.set_phase(row.index, Phase.RUNNING, pressing=None, reason=None)
        return self.journal.row(row.index)

    async def _upscales(
        self, row: JournalRow, client: AsyncClient, grid: Task
    ) -> list[tuple[str | None, Task]]:
        finals: list[tuple[str | None, Task]] = []
        for label in self.s.upscale:
            current = self.journal.row(row.index)
            up_id = current.upscales.get(label)
            if up_id is None:
                if current.pressing == label:
                    # A previous run stopped while this press was on the wire.
                    raise self._ended(
                        row, Phase.UNKNOWN, reason=f"the run stopped while pressing {label}"
                    )

                def press(mj: AsyncClient, tag: str, label: str = label) -> Submission:
                    if not grid.buttons:  # midjourney-proxy (novicezk) has no buttons
                        return mj.change(grid, label, state=tag)
                    return mj.action(grid, label, state=tag)

                job = await self._submit(row, label, press, account=client.account)
                up_id = job.id
                try:
                    self.journal.set_upscale(row.index, label, up_id)
                except StorageError as exc:
                    raise _Stop(self._not_journaled(row, label, up_id, exc)) from None
            up = await self._follow(row, client, up_id)
            finals.append((label, up))
        return finals

    async def _finish(
        self,
        row: JournalRow,
        client: AsyncClient,
        grid: Task,
        finals: list[tuple[str | None, Task]],
    ) -> None:
        files: list[str] = []
        try:
            if self.s.download:
                await self._save(row, client, finals, files)
            seed = await client.image_seed(grid) if self.s.seed else None
        except (StorageError, ClientClosedError) as exc:
            raise _Stop(exc) from None
        except _NameTaken as exc:
            raise self._ended(
                row, Phase.INCOMPLETE, status=grid.status.value, reason=str(exc), files=files
            ) from None
        except QuickMJError as exc:
            # Paid and finished, but not saved: a resume downloads it again.
            raise self._ended(
                row,
                Phase.INCOMPLETE,
                status=grid.status.value,
                reason=f"{type(exc).__name__}: {exc}",
                files=files,
            ) from None
        self._set(
            row, Phase.SUCCEEDED, status=grid.status.value, files=files, seed=seed, reason=None
        )

    async def _save(
        self,
        row: JournalRow,
        client: AsyncClient,
        finals: list[tuple[str | None, Task]],
        files: list[str],
    ) -> None:
        """Download the row's images under names chosen (and journaled) first; each file
        is downloaded aside (``images/.incoming``) and then linked into place, never over
        another prompt's file."""
        if self.names is None:
            self.names = _Names(self.journal, self.bdir.images, self.s.name)
        names, own = self.names.plan(row, finals)
        if names != row.names:
            self.journal.set_names(row.index, names)
        for label, task in finals:
            key = label or "grid"
            staged = await client.download(task, self.bdir.images / STAGING, filename=names[key])
            try:
                final = _place(Path(staged), self.bdir.images, own=key in own)
            except _NameTaken:
                # Someone else's file took the name meanwhile: a resume picks a new one.
                self.journal.set_names(row.index, {k: v for k, v in names.items() if k != key})
                raise
            files.append(final.relative_to(self.bdir.path).as_posix())

    # ---- a full disk ----

    def _disk_full(self) -> None:
        """The journal used its reserve: stop (submits on the wire still get recorded)."""
        self._stopping(_full(self.journal))
        if self._scope is not None:
            self._scope.cancel()

    def _not_journaled(
        self, row: JournalRow, label: str | None, task_id: str, exc: StorageError
    ) -> StorageError:
        """A paid job's id the journal could not take: kept here and logged at once."""
        self.unjournaled.append((row, label, task_id))
        logger.error(
            "task %s (row %d%s) is paid but could not be journaled: %s",
            task_id,
            row.index,
            f" {label}" if label else "",
            exc,
        )
        return exc

    def _final(self, error: QuickMJError) -> QuickMJError:
        """The run's error; on a full disk it names the paid jobs the journal lacks."""
        if isinstance(error, RelayUnreachableError) and self.outage_cause is not None:
            # Submits on the wire when the breaker tripped were refused since: pending too.
            return self._outage(self.outage_cause)
        if not isinstance(error, StorageError) or not self.unjournaled:
            return error
        parts = [
            f"row {row.index} (prompt {_short(row.prompt)!r}{f', {label}' if label else ''}): "
            f"task {task_id}: not journaled, a resume will not know it: "
            f"run 'quickmj wait {task_id}'"
            for row, label, task_id in self.unjournaled
        ]
        n = len(parts)
        return StorageError(
            f"{error}; {n} paid job{'s' if n != 1 else ''} could not be journaled: "
            + "; ".join(parts),
            path=error.path,
            errno=error.errno,
            unjournaled=tuple(task_id for _, _, task_id in self.unjournaled),
        )

    # ---- one submit ----

    async def _submit(
        self,
        row: JournalRow,
        pressing: str | None,
        make: Callable[[AsyncClient, str], Submission],
        *,
        account: str | None = None,
    ) -> AsyncJob:
        """Submit once a slot is free (of ``account``, or of any account in rotation).

        The slot is taken before the journal marks the submit, so a run stopped while
        waiting for one leaves the prompt pending, never "unknown". Answers that created
        nothing (queue full, 429, a key leaving the rotation) are sent again, until the
        relay has refused every submit for the run's ``timeout`` (then the prompt stays
        pending: ``_check_halt``).
        """
        tag = _tag(self.run_id, row, pressing)
        while True:
            # The send below is shielded and a slot is often free at once, so without this
            # a cancelled run (the first Ctrl-C) could keep re-sending refused submits.
            await anyio.lowlevel.checkpoint_if_cancelled()
            if self.halted is not None:
                raise self._not_sent(row, pressing, self.halted)
            try:
                async with contextlib.AsyncExitStack() as stack:
                    slot = await self._reserve(stack, account)
                    if slot is None:
                        continue  # the wait was ended: submitting stopped meanwhile
                    job = await self._send(row, pressing, tag, make, slot)
            except NoUsableAccountError as exc:
                if pressing is None:
                    raise _Stop(exc) from None
                raise self._ended(
                    row, Phase.INCOMPLETE, reason=f"{pressing} not sent: {exc}"
                ) from None
            except QuickMJError as exc:  # no slot to be had (a shared store is down)
                raise _Stop(exc) from None
            if job is not None:
                return job

    async def _send(
        self,
        row: JournalRow,
        pressing: str | None,
        tag: str,
        make: Callable[[AsyncClient, str], Submission],
        slot: Reservation,
    ) -> AsyncJob | None:
        """One submit with a reserved slot: the job, or None (send it again)."""
        if self.stop is not None:  # stopping (a full disk): send nothing more
            raise self._not_sent(row, pressing, "the run stopped")
        before = await self._balance_before(row, pressing, slot)  # learning a price
        self.journal.mark_submitting(row.index, tag, pressing=pressing)
        if self.journal.out_of_room:  # that write took the journal's reserve
            self._unmark(row, pressing)
            raise _Stop(self.stop or _full(self.journal))
        job: AsyncJob | None = None
        try:
            # The client runs a sent submit to its answer; wait for it even when the
            # run is stopped (an outage, a full disk) or cancelled, so the answer (a
            # paid job's id) reaches the journal instead of leaving the row "unknown".
            with anyio.CancelScope(shield=True), self._on_wire(row, pressing, slot):
                job = await slot.send(make(slot.client, tag))
        except (QueueFullError, RateLimitError) as exc:
            self.breaker.ok()  # the relay answered: no outage; the budget paused
            self._unmark(row, pressing)
            self._refused(exc)
            return None
        except QuickMJError as exc:
            if account_unusable(exc):  # 401/403, or the account cannot pay: nothing created
                self.breaker.ok()
                self._unmark(row, pressing)
                self._key_refused(row, pressing, slot, exc)
                return None  # another account takes it
            if outcome_unknown(exc) or isinstance(exc, SubmitOutcomeUnknownError):
                self._spent(row, pressing, slot)  # it may be paid: counted as paid
                if before is not None:
                    self.ledger.cannot_learn(_action(pressing), "its submit's outcome is unknown")
            self._submit_failed(row, pressing, exc)
        self.breaker.ok()
        self._accepted()
        self._spent(row, pressing, slot)
        if before is not None:
            await self._learn(_action(pressing), slot.client, before)
        return job

    def _key_refused(
        self, row: JournalRow, pressing: str | None, slot: Reservation, exc: QuickMJError
    ) -> None:
        """A submit refused for its key created nothing: 401/403 (spent, expired,
        revoked), or an account that cannot pay the action's price (new-api's
        ``quota_not_enough``, TrueAI's limits: ``account_unusable``).

        In a pool the account has left the rotation: another takes the prompt. With
        one key every submit would be refused alike: the run stops submitting (its paid
        jobs are still followed where the relay lets the key read them) and the prompt
        stays pending (a press: its paid grid incomplete), for a resume once the key or
        its account is topped up or the key replaced."""
        if slot.lease.budget.disabled:
            if pressing is None:
                return
            why = account_unusable(exc) or "the key was refused"
            raise self._not_sent(row, pressing, f"account {slot.account}: {why}") from None
        if self.halted is None:
            if isinstance(exc, AuthenticationError):
                self.halted = f"the relay refuses this key: {account_unusable(exc)}"
                self.key_refused = exc.reason or "refused"
            else:  # an answer, not a status: the account's balance is what ran out
                said = exc.description.strip()[:80] if isinstance(exc, SubmitRejectedError) else ""
                self.halted = f"the account's quota cannot pay for a submit ({said or exc})"
                self.key_refused = "exhausted"
            for scope in list(self._waits):
                scope.cancel()
            self._report()
        raise self._not_sent(row, pressing, self.halted) from None

    # ---- learning a price from the balance (a cap without it) ----

    async def _balance_before(
        self, row: JournalRow, pressing: str | None, slot: Reservation
    ) -> Balance | None:
        """The balance before a submit whose price is learned (None: it is known)."""
        action = _action(pressing)
        if not self.ledger.learns(action):
            return None
        try:
            return await slot.client.balance()
        except QuickMJError as exc:
            self.ledger.cannot_learn(action, f"the balance cannot be read: {exc}")
            raise self._not_sent(row, pressing, self.ledger.stopped or "") from None

    async def _learn(self, action: str, client: AsyncClient, before: Balance) -> None:
        """The price of ``action``: what the balance moved by for its one submit (sent
        alone), read again a few times while the relay has not applied the charge."""
        for delay in LEARN_DELAYS:
            await anyio.sleep(delay)
            try:
                moved = usd_moved(before, await client.balance())
            except QuickMJError as exc:
                self.ledger.cannot_learn(action, f"the balance cannot be read: {exc}")
                return
            if moved is None:
                self.ledger.cannot_learn(action, "the relay does not give its balance in USD")
                return
            if moved > 0:
                self.ledger.learned(action, moved)
                logger.info("learned the price of %s: %.4f USD", action, moved)
                self.spend_file.book = self.ledger.book
                self.spend_file.save()
                return
        self.ledger.cannot_learn(action, "the balance did not move after one submit")

    @contextlib.contextmanager
    def _on_wire(self, row: JournalRow, pressing: str | None, slot: Reservation) -> Any:
        """The submit's price while it is on the wire (the balance may show it already)."""
        price = self.ledger.price(_action(pressing), mode_of(row.prompt, slot.client.mode))
        self.ledger.on_wire += price
        try:
            yield
        finally:
            self.ledger.on_wire -= price

    def _spent(self, row: JournalRow, pressing: str | None, slot: Reservation) -> None:
        action = _action(pressing)
        mode = mode_of(row.prompt, slot.client.mode)
        self.ledger.commit(row.index, action, mode, slot.account)

    # ---- queue full forever: the run's timeout bounds the wait for a slot ----

    async def _reserve(
        self, stack: contextlib.AsyncExitStack, account: str | None
    ) -> Reservation | None:
        """A slot (given back when ``stack`` closes), or None when the wait was ended
        because submitting stopped (or must stop now: refused for ``timeout``)."""
        with anyio.CancelScope(deadline=self._halt_at()) as scope:
            self._waits.add(scope)
            try:
                return await stack.enter_async_context(self.pool.reserve(account))
            finally:
                self._waits.discard(scope)
        self._check_halt()
        return None

    def _halt_at(self) -> float:
        """When submitting stops if nothing is accepted before (the loop's clock)."""
        if self.refusing_since is None:
            return math.inf
        return self.refusing_since + self.s.timeout

    def _refused_for(self) -> float | None:
        since = self.refusing_since
        return None if since is None else anyio.current_time() - since

    def _refused(self, exc: QuickMJError) -> None:
        """A submit answered queue full or 429 (nothing created)."""
        limited = isinstance(exc, RateLimitError)
        self.refusal = "rate limited (HTTP 429)" if limited else "queue full"
        if self.refusing_since is None:
            self.refusing_since = anyio.current_time()
            for scope in self._waits:
                scope.deadline = self._halt_at()
        self._check_halt()
        self._report()

    def _accepted(self) -> None:
        if self.refusing_since is not None:
            self.refusing_since = None
            for scope in self._waits:
                scope.deadline = math.inf

    def _check_halt(self) -> None:
        """Stop submitting once every submit was refused for the run's ``timeout``."""
        if self.halted is not None or anyio.current_time() < self._halt_at():
            return
        self.halted = (
            f"the relay answered '{self.refusal or 'queue full'}' to every submit for "
            f"{human_span(self.s.timeout)}"
        )
        for scope in list(self._waits):
            scope.cancel()
        self._report()

    def _not_sent(self, row: JournalRow, pressing: str | None, why: str) -> _End:
        """A submit not sent (nothing created): the prompt stays pending, or its paid
        grid incomplete (a resume presses again)."""
        reason = f"not sent: {why}; nothing was created (a resume sends it)"
        if pressing is None:
            return self._pending(row, reason)
        return self._ended(row, Phase.INCOMPLETE, reason=f"{pressing} {reason}")

    def _unmark(self, row: JournalRow, pressing: str | None) -> None:
        if pressing is None:
            self.journal.mark_pending(row.index)
        else:
            self.journal.mark_submitting(row.index, row.tag or "", pressing=None)

    def _submit_failed(self, row: JournalRow, pressing: str | None, exc: QuickMJError) -> NoReturn:
        """End the prompt after a submit that failed (or the run, after an outage)."""
        if isinstance(exc, ClientClosedError) and not isinstance(exc, SubmitOutcomeUnknownError):
            self._unmark(row, pressing)
            raise _Stop(exc)
        if isinstance(exc, ConnectError):
            # Never reached the relay (retries included): nothing was created.
            self._unmark(row, pressing)
            if self.breaker.failed():
                raise _Stop(self._outage(exc))
            if pressing is None:
                raise self._pending(row, f"not sent: {exc}")
            raise self._ended(row, Phase.INCOMPLETE, reason=f"{pressing} not sent: {exc}")
        if outcome_unknown(exc) or isinstance(exc, SubmitOutcomeUnknownError):
            # Gateway errors and silence count towards an outage; a cut connection from
            # a flaky relay that otherwise answers does not.
            outage = outage_error(exc)
            stop = self.breaker.failed() if outage else False
            ended = self._ended(row, Phase.UNKNOWN, reason=str(exc))
            if stop:
                raise _Stop(self._outage(exc))
            raise ended
        self.breaker.ok()
        reason = f"{type(exc).__name__}: {exc}"
        code = exc.code if isinstance(exc, SubmitRejectedError) else None
        if isinstance(exc, SubmitRejectedError):
            reason = exc.description or reason
        if pressing is not None:
            # The grid is paid and the press created nothing: a resume presses again.
            raise self._ended(
                row, Phase.INCOMPLETE, reason=f"{pressing}: {reason}", code=code, pressing=None
            )
        raise self._ended(row, Phase.REJECTED, reason=reason, code=code)  # nothing created

    def _outage(self, exc: QuickMJError) -> RelayUnreachableError:
        self.outage_cause = exc  # _final counts again once the submits on the wire ended
        pending = sum(1 for r in self.journal.rows() if r.phase is Phase.PENDING)
        return RelayUnreachableError(
            f"relay unreachable: {exc}; nothing was submitted for {pending} prompts; "
            "run again with resume=True",
            not_submitted=pending,
        )

    # ---- following a paid job ----

    async def _follow(self, row: JournalRow, client: AsyncClient, task_id: str) -> Task:
        """The job's final task, or the prompt's end (failed, timed out, unreadable)."""
        try:
            return await client.wait(task_id, timeout=self.s.timeout)
        except TaskFailedError as exc:
            raise self._ended(
                row, Phase.FAILED, status=exc.task.status.value, reason=exc.fail_reason or "failed"
            ) from None
        except TaskTimeoutError as exc:
            last = exc.last_task.status.value if exc.last_task else None
            reason = f"still running after {self.s.timeout:g} s: a resume waits again"
            if isinstance(exc, TaskStalledError):
                reason = (
                    f"stalled: unchanged for {exc.stalled_for:.0f} s (the relay may have "
                    "lost it): a resume waits again"
                )
            raise self._ended(row, Phase.TIMED_OUT, status=last, reason=reason) from None
        except ClientClosedError as exc:
            raise _Stop(exc) from None
        except RelayUnreachableError as exc:
            # Every read failed for PollPolicy.unreachable_after (all slots may be held by
            # running jobs, so no submit trips the breaker): the job is paid and may still
            # run; its id stays on the row, and the run stops like an outage of submits.
            self._set(row, Phase.TIMED_OUT, reason="relay unreachable: a resume waits again")
            cause = exc.__cause__
            raise _Stop(self._outage(cause if isinstance(cause, QuickMJError) else exc)) from None
        except AuthenticationError as exc:
            # The key was revoked, expired or ran out while the job ran: the job is paid
            # and may finish; keep its id for a resume with a valid key.
            refusal = self.refused.setdefault(client.account, _refusal(exc))
            raise self._ended(
                row, Phase.INCOMPLETE, reason=f"key rejected ({refusal}): resume with a valid key"
            ) from None
        except QuickMJError as exc:
            raise self._ended(
                row, Phase.INCOMPLETE, reason=f"{type(exc).__name__}: {exc}"
            ) from None


#: Seconds to wait before each balance read after a submit whose price is learned (a
#: relay may apply a charge a moment later: new-api can batch its quota updates).
LEARN_DELAYS = (0.0, 1.0, 4.0)


def _press_on_wire(row: JournalRow) -> bool:
    """The row's press was sent (or about to be) and its job's id was never recorded."""
    return row.pressing is not None and row.pressing not in row.upscales


def _action(pressing: str | None) -> str:
    """The priced action of a batch submit: a press is an upscale, else an imagine."""
    return "upscale" if pressing else "imagine"


def _full(journal: Journal) -> StorageError:
    return StorageError(
        f"cannot write {str(journal.path.parent)!r}: no space left on the device "
        "(the run stopped once the journal needed its reserved room)",
        path=str(journal.path),
        errno=errno.ENOSPC,
    )


def _short(prompt: str) -> str:
    return prompt if len(prompt) <= 40 else f"{prompt[:39]}…"


def _refusal(exc: AuthenticationError) -> str:
    """``HTTP 401: <the relay's words>`` for a summary (the body was redacted already)."""
    text = relay_words(exc.body)
    return f"HTTP {exc.status}: {text[:100]}" if text else f"HTTP {exc.status}"


def human_span(seconds: float) -> str:
    """``45 s``, ``2 min``, ``1 h 5 min``: a duration for people."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h" + (f" {minutes} min" if minutes else "")


def _imagine_kwargs(options: dict[str, Any], tag: str) -> dict[str, Any]:
    kwargs = {k: v for k, v in options.items() if k in _IMAGINE_OPTIONS}
    kwargs["state"] = _with_tag(kwargs.get("state"), tag)
    return kwargs


def _with_tag(state: Any, tag: str) -> str:
    """The user's own ``state`` (if any) with the run's tag after it, within 255 chars."""
    if not isinstance(state, str) or not state:
        return tag
    return f"{state[: 254 - len(tag)]} {tag}"


def _tag(run_id: str, row: JournalRow, pressing: str | None) -> str:
    """Unique per run, prompt and press: finds the job on the relay if its answer is lost."""
    return f"qmj:{run_id}:{row.index}" + (f":{pressing}" if pressing else "")


#: A slug's longest UTF-8 form (a file name may have 255 bytes; room is left for the
#: template's other fields and a ``-2`` suffix).
SLUG_BYTES = 80
_DASHES = re.compile(r"-{2,}")


def _slug(prompt: str, *, ascii_only: bool = False) -> str:
    """The prompt as a file name part: NFKC, lowercased, letters and digits of any script
    (with their combining marks) and ``_`` kept, anything else a ``-``; at most
    ``SLUG_BYTES`` of UTF-8. ``ascii_only`` (a file system that refuses other names)
    drops accents and other scripts. ``prompt`` if nothing is left."""
    text = unicodedata.normalize("NFKC", prompt).lower()
    if ascii_only:
        text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    kept = "".join(c if _slug_char(c) else "-" for c in text)
    slug = _DASHES.sub("-", kept).strip("-_")
    return cap_utf8(slug, SLUG_BYTES).strip("-_") or "prompt"


def _slug_char(c: str) -> bool:
    return c.isalnum() or c == "_" or unicodedata.category(c) in ("Mn", "Mc")


def _file_stem(
    template: str, row: JournalRow, task: Task, label: str | None, *, ascii_only: bool = False
) -> str:
    """A file name from ``--name`` (``{line:05d}-{slug}``, ``{task}``, ``{label}``...)."""
    fields = {
        "line": row.index + 1,
        "index": row.index,
        "slug": _slug(row.prompt, ascii_only=ascii_only),
        "task": task.id,
        "label": label or "grid",
    }
    try:
        stem = template.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise InvalidInputError(f"name template {template!r}: {exc}") from None
    if label and "{label" not in template and "{task" not in template:
        stem = f"{stem}-{label}"  # several files per prompt must not overwrite each other
    return stem


def _name_key(stem: str) -> str:
    """Names a case-insensitive or normalising file system (macOS, Windows) confuses."""
    return unicodedata.normalize("NFC", stem).casefold()


class _NameTaken(Exception):
    """The chosen name was taken by a file that is not this prompt's (kept as it is)."""


class _Names:
    """File stems for a run's images: unique within the batch and against the files
    already in ``images/``, chosen before the download and journaled, so a resume uses
    the same names and no prompt's file ever replaces another's."""

    def __init__(self, journal: Journal, images: Path, template: str) -> None:
        self.template = template
        self.ascii_only = "{slug" in template and not _unicode_names_ok(images)
        self.taken: set[str] = set()
        for r in journal.rows():
            self.taken.update(_name_key(stem) for stem in r.names.values())
            self.taken.update(_name_key(PurePath(f).stem) for f in r.files)
        with contextlib.suppress(OSError):
            for entry in os.scandir(images):
                if not entry.name.startswith("."):
                    self.taken.add(_name_key(PurePath(entry.name).stem))

    def plan(
        self, row: JournalRow, finals: Sequence[tuple[str | None, Task]]
    ) -> tuple[dict[str, str], frozenset[str]]:
        """The row's stems ("grid", "U1".. -> stem) and the keys named by an earlier run
        (their files, if present, are this row's own: a re-download may replace them)."""
        names = dict(row.names)
        for label, task in finals:
            key = label or "grid"
            if key not in names:
                stem = _file_stem(self.template, row, task, label, ascii_only=self.ascii_only)
                names[key] = self._unique(safe_stem(stem))
        return names, frozenset(row.names)

    def _unique(self, base: str) -> str:
        """``base``, or ``base-2``, ``base-3``... : the first name nobody holds."""
        stem, n = base, 1
        while _name_key(stem) in self.taken:
            n += 1
            suffix = f"-{n}"
            stem = cap_utf8(base, STEM_BYTES - len(suffix)).rstrip("._") + suffix
        self.taken.add(_name_key(stem))
        return stem


def _unicode_names_ok(images: Path) -> bool:
    """Does the file system take a name with accents and CJK? (Some refuse them.)"""
    probe = images / ".qmj-probe-\u00e9\u732b"
    try:
        images.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except UnicodeError:
        return False
    except OSError as exc:
        return exc.errno not in (errno.EILSEQ, errno.EINVAL)
    return True


def _place(staged: Path, images: Path, *, own: bool) -> Path:
    """Move a downloaded file into ``images/`` without replacing another's file: a hard
    link fails if the name exists (replaced only when it is this row's own file from an
    earlier run); where links are unsupported, a check under the run's lock."""
    final = images / staged.name
    try:
        try:
            os.link(staged, final)
        except FileExistsError:
            if not own:
                raise _NameTaken(
                    f"{PurePath(IMAGES, final.name).as_posix()} already exists and is not "
                    "this prompt's: it was kept; a resume saves this image under a new name"
                ) from None
            os.replace(staged, final)
            return final
        except OSError as exc:
            if storage_error(exc, final) is not None or not _no_links(exc):
                raise
            if final.exists() and not own:
                raise _NameTaken(f"{final.name} already exists and is not this prompt's") from None
            os.replace(staged, final)
            return final
        os.unlink(staged)
    except OSError as exc:
        with contextlib.suppress(OSError):
            staged.unlink()
        raise storage_error(exc, final) or StorageError(
            f"cannot save {str(final)!r}: {exc.strerror or exc}", path=str(final), errno=exc.errno
        ) from None
    return final


def _no_links(exc: OSError) -> bool:
    return exc.errno in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP)


def check_name_template(template: str) -> str:
    """Validate a ``--name`` template before any job is paid for."""
    probe = JournalRow(index=0, prompt="a prompt", options={}, phase=Phase.PENDING)
    _file_stem(template, probe, Task(id="1730621826053455"), "U1")
    return template


async def run_batch(
    client: AsyncClient | AccountPool,
    items: Sequence[BatchItem],
    out: str | os.PathLike[str],
    *,
    concurrency: int | None = None,
    upscale: Sequence[str] = (),
    seed: bool = False,
    download: bool = True,
    resume: bool = False,
    timeout: float = 3600.0,
    name: str | None = None,
    resubmit_unknown: bool = False,
    reconcile: bool = False,
    on_progress: Callable[[BatchProgress], Any] | None = None,
    gallery: bool = False,
    max_spend: float | None = None,
    prices: Mapping[str, float] | Sequence[str] | None = None,
) -> BatchSummary:
    """Run (or resume) a batch into directory ``out`` (the guide: "Batch jobs").

    Every step is journaled before it happens, so a resumed run re-submits nothing that
    may have been paid for. Submits wait for a slot of their account's learned budget;
    each job is followed on the account that created it.

    Args:
        client: one account (an AsyncClient) or several (an :class:`AccountPool`).
        items: the prompts (see :func:`read_prompts`).
        out: the output directory (created if missing; one run owns it at a time).
        concurrency: an optional cap on prompts in progress, on top of the budgets.
        upscale: labels to press on each grid (``"U1"``..``"U4"``, ``"all"``, ``"U1,U3"``).
        seed: also ask for each grid's Midjourney seed (kept in the manifest).
        download: save the final images into ``out``.
        resume: continue the run recorded in ``out`` instead of starting afresh.
        timeout: seconds to wait for each job (then ``timed_out``; a resume waits again).
        name: the file name template (``{task}``; also ``{line}``, ``{index}``,
            ``{slug}``, ``{label}``).
        resubmit_unknown: with ``resume``, send ``unknown`` prompts again (may pay twice).
        reconcile: with ``resume``, first settle ``unknown`` rows by their state tag.
        on_progress: called with a BatchProgress after each change.
        gallery: also write ``out/index.html`` (see :func:`write_gallery`) when the run
            ends, and when it is stopped or interrupted (a failure to write it is logged).
        max_spend: a cap in USD on the directory's spend, every run counted (the guide:
            "Cost"); prompts that do not fit stay ``pending`` for a resume.
        prices: USD per submit by action (``{"imagine": 0.1}``), kept in ``out/spend.json``.

    Returns:
        The summary: outcomes, the manifest's path, per-account figures, unsettled rows.

    Raises:
        InvalidInputError: a bad argument, or ``max_spend`` without the prices it needs.
        BatchLockedError: another run owns ``out``.
        JournalError: there is nothing safe to resume.
        RelayUnreachableError: an outage stopped the run early (the run is resumable).
        StorageError: the disk is full or read-only (the run is resumable).
        ClientClosedError: the client was closed during the run.
    """
    settings = _settings(concurrency, upscale, seed, download, timeout, name, resubmit_unknown)
    settings = attrs.evolve(settings, gallery=gallery, max_spend=check_cap(max_spend))
    return await _run_batch(client, items, out, settings, prices, resume, reconcile, on_progress)


async def _run_batch(
    client: AsyncClient | AccountPool,
    items: Sequence[BatchItem],
    out: str | os.PathLike[str],
    settings: _Settings,
    prices: Mapping[str, float] | Sequence[str] | None,
    resume: bool,
    reconcile: bool,
    on_progress: Callable[[BatchProgress], Any] | None,
) -> BatchSummary:
    # The prices before the directory is taken: a refused cap leaves no journal behind.
    spend = _spend_file(out, prices)
    settings = attrs.evolve(settings, learn=_to_learn(spend, settings, client))
    pairs = [(i.prompt, dict(i.options)) for i in items]
    async with _accounts(client) as pool:
        with BatchDir(out) as bdir:
            journal = bdir.open_journal(pairs, resume=resume)
            try:
                unsettled = await _settle(pool, journal) if reconcile else []
                summary = await _drive(pool, bdir, journal, settings, on_progress, spend)
            finally:
                journal.close()
    return attrs.evolve(summary, unsettled=tuple(unsettled))


def plan_batch(
    items: Sequence[BatchItem],
    out: str | os.PathLike[str],
    *,
    upscale: Sequence[str] = (),
    resume: bool = False,
    resubmit_unknown: bool = False,
    prices: Mapping[str, float] | Sequence[str] | None = None,
    mode: str | None = None,
    max_spend: float | None = None,
) -> BatchPlan:
    """What :func:`run_batch` would submit, and its cost where prices are known, without
    sending anything, taking ``out`` or writing to it (``quickmj batch --dry-run``).

    Args:
        items: the prompts (see :func:`read_prompts`).
        out: the output directory (its ``spend.json`` prices; with ``resume`` its journal).
        upscale: the labels the run would press on each grid.
        resume: plan the rest of the batch in ``out`` (only what is left).
        resubmit_unknown: with ``resume``, count ``unknown`` prompts as sent again.
        prices: USD per submit by action, over those in ``out/spend.json``.
        mode: the jobs' speed mode where a prompt has no ``--fast``/``--relax``/``--turbo``
            flag (None: the key's default).
        max_spend: a cap to show next to the plan.

    Returns:
        The plan: submits by action and mode, prices used, cost (None if a price is
        missing), and on a resume what the directory has spent already.

    Raises:
        InvalidInputError: a bad ``upscale``, ``prices`` or ``max_spend``.
        UsageError: ``out`` holds a batch and ``resume`` is not set, or holds another one.
        JournalError: ``resume`` and there is no journal to read.
    """
    labels = parse_upscale(list(upscale))
    spend = _spend_file(out, prices)
    pairs = [(i.prompt, dict(i.options)) for i in items]
    rows, spent = _planned_rows(out, pairs, spend, resume=resume)
    lines, open_rows, unknown = plan_rows(
        rows, labels, spend.book, mode=mode, resubmit_unknown=resubmit_unknown
    )
    return BatchPlan(
        prompts=len(items),
        open=open_rows,
        lines=lines,
        prices=dict(spend.book.prices),
        price_sources=dict(spend.book.sources),
        spent=spent,
        unknown=unknown,
        cap=check_cap(max_spend),
    )


def _planned_rows(
    out: str | os.PathLike[str],
    pairs: list[tuple[str, dict[str, Any]]],
    spend: SpendFile,
    *,
    resume: bool,
) -> tuple[list[JournalRow], SpendReport | None]:
    """The rows a run would start from: the journal's on a resume (read without writing),
    else fresh ones."""
    path = Path(out) / JOURNAL_NAME
    if not resume:
        if path.exists() and read_snapshot(path).rows:
            raise UsageError(
                f"{os.fspath(out)!r} already holds a batch: plan the rest with resume=True"
            )
        fresh = [JournalRow(i, p, o, Phase.PENDING) for i, (p, o) in enumerate(pairs)]
        return fresh, None
    if not path.exists():
        raise JournalError(f"nothing to resume: {os.fspath(out)!r} has no batch journal")
    rows = read_snapshot(path).rows
    stored = [(r.prompt, r.options) for r in rows]
    if stored != [(p, json.loads(json.dumps(o, sort_keys=True))) for p, o in pairs]:
        raise UsageError(
            f"the prompts differ from the batch in {os.fspath(out)!r}; use the same input file"
        )
    return rows, spend_report(rows, spend.book, spend.resent)


def _spend_file(
    out: str | os.PathLike[str], prices: Mapping[str, float] | Sequence[str] | None
) -> SpendFile:
    """The directory's prices (``spend.json``), with the ones given over them."""
    spend = SpendFile.load(out)
    given = parse_prices(prices)
    if given:
        spend.book = spend.book.with_prices(given, "given")
    return spend


def _to_learn(
    spend: SpendFile, settings: _Settings, client: AsyncClient | AccountPool
) -> tuple[str, ...]:
    """With a cap: the prices the run must learn from the balance (its first prompt runs
    alone until they are known); refused where the relay keeps no balance."""
    if settings.max_spend is None:
        return ()
    missing = spend.book.missing(["imagine"] + (["upscale"] if settings.upscale else []))
    clients = client.clients if isinstance(client, AccountPool) else [client]
    if missing and any(c.dialect in NO_BILLING_DIALECTS for c in clients):
        given = ", ".join(f"prices[{a!r}]=USD" for a in missing)
        raise InvalidInputError(
            f"max_spend needs the price of {' and '.join(missing)}: give it ({given}); "
            "this relay keeps no balance to learn it from (there the cost is your own: "
            "count the jobs, see the plan of plan_batch())"
        )
    return missing


def check_cap(value: float | None) -> float | None:
    """A ``max_spend`` in USD: finite and not negative (None: no cap)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(f"max_spend must be a number of USD, not {value!r}")
    if not math.isfinite(value) or value < 0:
        raise InvalidInputError(f"max_spend must be finite and not negative, not {value!r}")
    return float(value)


def _settings(
    concurrency: int | None,
    upscale: Sequence[str],
    seed: bool,
    download: bool,
    timeout: float,
    name: str | None,
    resubmit_unknown: bool,
) -> _Settings:
    if concurrency is not None and concurrency < 1:
        raise InvalidInputError("concurrency must be at least 1")
    return _Settings(
        concurrency=concurrency,
        upscale=parse_upscale(list(upscale)),
        seed=seed,
        download=download,
        timeout=timeout,
        name=check_name_template(name or _DEFAULT_NAME),
        resubmit_unknown=resubmit_unknown,
    )


@contextlib.asynccontextmanager
async def _accounts(client: AsyncClient | AccountPool) -> AsyncIterator[AccountPool]:
    """The run's accounts: the pool given, or the one client wrapped (and restored)."""
    if isinstance(client, AccountPool):
        yield client
        return
    pool = AccountPool.wrap(client)
    try:
        yield pool
    finally:
        await pool.restore()


async def _drive(
    pool: AccountPool,
    bdir: BatchDir,
    journal: Journal,
    settings: _Settings,
    on_progress: Callable[[BatchProgress], Any] | None,
    spend: SpendFile | None = None,
) -> BatchSummary:
    """Run the journal's open prompts; the manifest and a closed journal in every case."""
    spend = spend or SpendFile.load(bdir.path)  # (a damaged one: before anything starts)
    bdir.clean_parts()
    journal.reserve(_reserve_bytes(settings, len(journal.rows())))
    run = _Run(pool, journal, bdir, settings, journal.begin_run(), on_progress)
    run.spend_file = spend
    if spend.book.prices:
        spend.save()  # the prices given are kept for the next run (and --dry-run)
    counts = spend_counts(journal.rows(), spend.resent)
    run.ledger = Ledger(spend.book, counts, cap=settings.max_spend, learn=settings.learn)
    if settings.max_spend is not None and not settings.learn:
        watch = BalanceWatch([c.balance for c in pool.clients], run.ledger)
        run.watch = watch if _billed(pool) and await watch.begin() else None
    extra = _manifest_spend(run.ledger)
    before = {b.label: attrs.evolve(b.stats) for b in pool.budgets}
    try:
        if any(r.task_id is None and r.phase is Phase.PENDING for r in journal.rows()):
            await _preflight(pool, journal)
        await run.run(journal.rows())
    except BaseException:
        # Stopped or interrupted: the journal is closed and the manifest shows where
        # every prompt stands (plain blocking calls: a cancellation cannot cut them);
        # neither hides the run's own error (a full disk may refuse them too).
        _wind_down(bdir, journal, extra)
        _run_gallery(bdir, journal, settings)
        raise
    journal.end_run()
    manifest = bdir.write_manifest(journal, extra)
    _run_gallery(bdir, journal, settings)
    summary = _summary(journal, manifest, time.monotonic() - run.started)
    stopped = run.ledger.stopped
    return attrs.evolve(
        summary,
        accounts=_per_account(pool, journal, before, run.refused),
        stopped_submitting=run.halted or stopped,
        key_refused=run.key_refused,
        spend=spend_report(
            journal.rows(),
            run.ledger.book,
            spend.resent,
            cap=settings.max_spend,
            stopped=stopped,
            beyond_prices=run.ledger.extra,
        ),
    )


def _billed(pool: AccountPool) -> bool:
    """Whether every account's relay keeps a balance (worth watching)."""
    return all(c.dialect not in NO_BILLING_DIALECTS for c in pool.clients)


def _manifest_spend(ledger: Ledger) -> Callable[[JournalRow], dict[str, Any]]:
    """The manifest's spend fields of a prompt: its paid (or maybe paid) submits by
    action, and their cost in USD at the prices known then (None: one is unknown)."""

    def fields(row: JournalRow) -> dict[str, Any]:
        submits = Counter(action for action, _, _ in paid_submits(row))
        return {"submits": dict(submits), "usd": row_usd(row, ledger.book)}

    return fields


#: Room kept for the journal on a full disk: its closing writes, plus one write (a WAL
#: frame or two) per submit that may be on the wire when the disk fills up.
_RESERVE_BASE = 64 * 1024
_RESERVE_PER_SUBMIT = 8 * 1024


def _reserve_bytes(settings: _Settings, rows: int) -> int:
    in_flight = min(rows, settings.concurrency or 32, 256)
    return _RESERVE_BASE + _RESERVE_PER_SUBMIT * in_flight


def _wind_down(
    bdir: BatchDir,
    journal: Journal,
    extra: Callable[[JournalRow], dict[str, Any]] | None = None,
) -> None:
    """End a stopped run's journal and rewrite its manifest, as far as the disk allows."""
    with contextlib.suppress(StorageError):
        journal.end_run()  # else close() marks it, with the reserve given back
    try:
        bdir.write_manifest(journal, extra)
    except StorageError as exc:
        logger.warning("%s: manifest.jsonl is not up to date (a resume rewrites it)", exc)


def _run_gallery(bdir: BatchDir, journal: Journal, settings: _Settings) -> None:
    """``gallery=True``: the run writes ``index.html`` itself, as the directory's one
    writer. Never the run's outcome: a failure is logged (``quickmj gallery OUT`` later)."""
    if not settings.gallery:
        return
    from ._gallery import GALLERY_NAME, save_gallery

    try:
        save_gallery(journal.rows(), bdir.path, bdir.path / GALLERY_NAME)
    except QuickMJError as exc:
        logger.error("the gallery was not written (%s): write it with 'quickmj gallery OUT'", exc)


async def _preflight(pool: AccountPool, journal: Journal) -> None:
    """One cheap read per account before the first submit: an unreachable relay costs
    nothing, and a key the relay refuses leaves the rotation (unless it is the only one)."""
    failures: list[QuickMJError] = []
    for client in pool.clients:
        try:
            await client.list_tasks(["quickmj-preflight"])
        except (ConnectError, AuthenticationError) as exc:
            failures.append(exc)
            if len(failures) < len(pool.clients):
                reason = account_unusable(exc) or f"unreachable at the start ({exc})"
                pool.disable(client.account, reason)
    if len(failures) < len(pool.clients):
        return
    if not isinstance(failures[-1], ConnectError):
        raise failures[-1]
    pending = sum(1 for r in journal.rows() if r.phase is Phase.PENDING)
    raise RelayUnreachableError(
        f"relay unreachable: {failures[-1]}; nothing was submitted for {pending} prompts; "
        "fix the relay address (base_url) and run again with resume=True",
        not_submitted=pending,
    ) from None


def _per_account(
    pool: AccountPool,
    journal: Journal,
    before: dict[str, BudgetStats],
    refused: dict[str, str] | None = None,
) -> tuple[AccountSummary, ...]:
    """Each account's submits and refusals in this run, and its prompts' outcomes."""
    outcomes = Counter((r.account or pool.accounts[0], r.phase) for r in journal.rows())
    out = []
    for budget in pool.budgets:
        start, now = before[budget.label], budget.stats
        out.append(
            AccountSummary(
                account=budget.label,
                submitted=now.accepted - start.accepted,
                succeeded=outcomes[(budget.label, Phase.SUCCEEDED)],
                failed=outcomes[(budget.label, Phase.FAILED)],
                queue_full=now.queue_full - start.queue_full,
                rate_limited=now.rate_limited - start.rate_limited,
                limit=round(budget.limit, 1),
                disabled=budget.disabled,
                incomplete=outcomes[(budget.label, Phase.INCOMPLETE)],
                key_rejected=(refused or {}).get(budget.label),
            )
        )
    return tuple(out)


def _summary(journal: Journal, manifest: Path, elapsed: float) -> BatchSummary:
    phases = Counter(r.phase for r in journal.rows())
    return BatchSummary(
        total=sum(phases.values()),
        succeeded=phases[Phase.SUCCEEDED],
        failed=phases[Phase.FAILED],
        rejected=phases[Phase.REJECTED],
        unknown=phases[Phase.UNKNOWN],
        timed_out=phases[Phase.TIMED_OUT],
        incomplete=phases[Phase.INCOMPLETE],
        pending=phases[Phase.PENDING] + phases[Phase.SUBMITTING] + phases[Phase.RUNNING],
        manifest=manifest,
        elapsed=elapsed,
    )


# ---- settling unknown outcomes ----


async def reconcile(
    client: AsyncClient | AccountPool,
    out: str | os.PathLike[str],
    *,
    download: bool = True,
    timeout: float = 3600.0,
    on_progress: Callable[[BatchProgress], Any] | None = None,
) -> BatchSummary:
    """Settle ``unknown`` rows of a batch: find each job by its state tag and finish it.

    Works where the relay can list recent tasks (``GET /task/list``: self-hosted
    midjourney-proxy, and TrueAI for its newest 100 tasks; on QuickRouter every row stays
    unsettled). Adopted jobs are followed to the end (waited on, upscaled, downloaded)
    without a new submit.

    Args:
        client: the run's account (an AsyncClient) or accounts (an :class:`AccountPool`).
        out: the batch's output directory.
        download: save the adopted jobs' images.
        timeout: seconds to wait for each adopted job.
        on_progress: called with a BatchProgress after each change.

    Returns:
        The summary; its ``unsettled`` lists the rows that could not be settled, with
        their tag and send time, to look up on the relay's dashboard.

    Raises:
        BatchLockedError: another run owns ``out``.
        JournalError: ``out`` holds no usable journal.
    """
    async with _accounts(client) as pool:
        with BatchDir(out) as bdir:
            journal = bdir.open_journal([], resume=True, check_input=False)
            try:
                unsettled = await _settle(pool, journal)
                settings = _Settings(
                    concurrency=None,
                    upscale=_labels(journal),
                    seed=False,
                    download=download,
                    timeout=timeout,
                    name=_DEFAULT_NAME,
                    resubmit_unknown=False,
                )
                summary = await _drive(pool, bdir, journal, settings, on_progress)
            finally:
                journal.close()
    return attrs.evolve(summary, unsettled=tuple(unsettled))


#: Seconds the relay's clock may be off from this machine's, either way (a listed task's
#: ``submitTime`` against the journal's send time).
CLOCK_SKEW = 120.0
#: Seconds a relay may take to stamp a job after our submit reached it (a gateway
#: forwarding it upstream).
ACCEPT_DELAY = 60.0
#: Malformed listing entries logged one line each; more are counted in one last line.
_SKIP_LOG_LIMIT = 5
#: What relays add to a prompt (protocol §3.2/§4.6): uploaded images' URLs before it,
#: TrueAI's ``--seed N`` after it, speed flags they normalise.
_RELAY_ADDED = re.compile(
    r"(?:^|\s)(?:<?https?://\S+>?|--seed\s+\d+|--(?:fast|relax|turbo))(?=\s|$)"
)


async def _settle(pool: AccountPool, journal: Journal) -> list[Unsettled]:
    """Adopt unknown rows whose own job an account's task list shows (tag, prompt and
    submit time match, and only one task does); the rest stay unsettled, with why."""
    if not any(r.phase is Phase.UNKNOWN for r in journal.rows()):
        return []
    # One entry per task id: TrueAI lists every user's tasks to every key of a pool.
    listing: dict[str, tuple[Task, str]] = {}
    listed = False
    skipped = [0]
    for client in pool.clients:
        with contextlib.suppress(UnsupportedByRelayError):  # QuickRouter cannot list tasks
            tasks = await _listing(client, skipped)
            listed = listed or tasks is not None
            for task in tasks or ():
                listing.setdefault(task.id, (task, client.account))
    if skipped[0] > _SKIP_LOG_LIMIT:
        logger.warning("reconcile: %d malformed listed tasks skipped in all", skipped[0])
    span = max(_attempt_span(c) for c in pool.clients)
    return _adopt(journal, list(listing.values()), span, listed=listed)


async def _listing(client: AsyncClient, skipped: list[int]) -> list[Task] | None:
    """The account's listed tasks; a malformed entry (another user's, say) is skipped
    and logged, never the end of reconcile. None: the list itself is unreadable."""
    try:
        entries = await client._recent_entries()
    except MalformedResponseError as exc:
        logger.warning(
            "reconcile: account %s: the task list is unreadable: %s", client.account, exc
        )
        return None
    tasks: list[Task] = []
    for n, entry in enumerate(entries):
        try:
            tasks.append(structure_task(entry))
        except (MalformedResponseError, ValueError, TypeError, RecursionError) as exc:
            skipped[0] += 1
            if skipped[0] <= _SKIP_LOG_LIMIT:
                logger.warning(
                    "reconcile: account %s: listed task #%d skipped (malformed): %s",
                    client.account,
                    n + 1,
                    exc,
                )
    return tasks


def _attempt_span(client: AsyncClient) -> float:
    """The longest a submit can take from its journaled send time to reaching the relay:
    connect retries (bounded by ``Timeouts.total``), then one whole attempt."""
    timeouts = client.timeouts
    return (timeouts.total if timeouts.total is not None else 600.0) + timeouts.request


def _labels(journal: Journal) -> tuple[str, ...]:
    labels = {label for r in journal.rows() for label in r.upscales}
    return tuple(sorted(labels))


def _adopt(
    journal: Journal, listing: Sequence[tuple[Task, str]], span: float, *, listed: bool = True
) -> list[Unsettled]:
    """Give each unknown row the one listed task that is its own job; ``span``: the
    longest a submit takes to reach the relay."""
    by_tag: dict[str, list[tuple[Task, str]]] = {}
    for task, account in listing:
        for word in set((task.state or "").split()):
            if word.startswith("qmj:"):
                by_tag.setdefault(word, []).append((task, account))
    unsettled: list[Unsettled] = []
    for row in journal.rows():
        if row.phase is not Phase.UNKNOWN:
            continue
        tagged = by_tag.get(row.tag or "", []) if row.tag else []
        own = [(task, account) for task, account in tagged if _is_own(row, task, span)]
        if len(own) == 1:
            _take(journal, row, *own[0])
        else:
            unsettled.append(_unsettled(row, tagged, own, listed))
    return unsettled


def _is_own(row: JournalRow, task: Task, span: float) -> bool:
    """Whether a listed task carrying the row's tag is the row's own job: anyone may copy
    a tag, so its submit time must fall in the row's send window and its prompt (as
    relays change prompts) must be the row's (a press: a child of the row's grid)."""
    if task.submit_time is None or row.sent_at is None:
        return False
    at = task.submit_time / 1000
    if not row.sent_at - CLOCK_SKEW <= at <= row.sent_at + span + ACCEPT_DELAY + CLOCK_SKEW:
        return False
    grid = row.task_id
    if row.pressing and grid and (task.parent_id == grid or grid in (task.description or "")):
        return True
    return _same_prompt(row.prompt, task)


def _prompt_words(text: str) -> str:
    return " ".join(_RELAY_ADDED.sub(" ", text).split())


def _same_prompt(prompt: str, task: Task) -> bool:
    """The user's prompt is the listed one, or contained in it word for word, once
    whitespace and what relays add (image URLs, ``--seed N``, speed flags) are set aside."""
    own = _prompt_words(prompt)
    if not own:
        return False
    for text in (task.prompt, task.prompt_en, task.properties.get("finalPrompt")):
        if isinstance(text, str) and f" {own} " in f" {_prompt_words(text)} ":
            return True
    return False


def _take(journal: Journal, row: JournalRow, task: Task, account: str) -> None:
    logger.info("reconcile: line %d adopts its job %s", row.index + 1, task.id)
    if row.pressing:
        journal.set_upscale(row.index, row.pressing, task.id)
        journal.set_phase(row.index, Phase.RUNNING, reason=None)
    else:
        journal.set_task(row.index, task.id, account=account)


def _unsettled(
    row: JournalRow,
    tagged: Sequence[tuple[Task, str]],
    own: Sequence[tuple[Task, str]],
    listed: bool,
) -> Unsettled:
    """A row left alone, with the reason (and the ids to look at by hand)."""
    ids = tuple(task.id for task, _ in (own or tagged))
    shown = ", ".join(ids)
    if not listed:
        reason = "the relay does not list tasks: look it up by its tag on the relay's dashboard"
    elif own:
        reason = f"{len(ids)} listed tasks match (ids {shown}): not adopted; check them by hand"
    elif tagged:
        reason = (
            f"{len(ids)} listed task(s) carry its tag but another prompt or submit time "
            f"(ids {shown}): not adopted (another user's copy?)"
        )
    else:
        reason = "no listed task carries its tag"
    if ids:
        logger.warning("reconcile: line %d: %s", row.index + 1, reason)
    return Unsettled(row.index, row.prompt, row.tag, row.sent_at, reason=reason, matches=ids)
