"""new-api's own ``midjourneys`` table and its refresher, as arithmetic on the clock.

Sources: QuantumNous/new-api ``model/midjourney.go`` (``GetByMJId`` takes the *first* row
of a user's id, ``GetByMJIds`` returns every row, ``GetAllUnFinishTasks`` is every row whose
progress is not ``"100%"``) and ``controller/midjourney.go`` ``UpdateMidjourneyTaskBulk``
(one loop for the whole relay: every 15 s it asks the upstream's list-by-condition about
the unfinished rows and copies progress, promptEn, state, times, imageUrl, status,
failReason, properties, buttons and videos into them; rows are keyed by id in a map, so
when two rows share an id only the *later* one is refreshed).

Instead of a timer, a row's content is the upstream job as it was at the last refresh
tick that was allowed to touch that row; ticks fall at ``clock.start + k * interval``.
With ``interval == 0`` every read is a tick (the relay is always current).
"""

from __future__ import annotations

import math

import attrs

from .._engine import Engine
from .._state import SimTask

__all__ = ("RelayDB", "RelayRow")

_BEFORE = 1e-9  # "just before" an instant, for the continuous (interval 0) refresher


@attrs.define(eq=False)
class RelayRow:
    """One row of new-api's table: what the relay itself recorded at submit."""

    task_id: str
    #: The user (API key) the row belongs to; reads are scoped to it.
    key: str
    #: new-api's own action classification (IMAGINE, UPSCALE, ..., MODAL, "" ...).
    action: str
    prompt: str
    #: The upstream's submit description (new-api never refreshes it).
    description: str
    submit_ms: int
    inserted_at: float
    #: startTime before the first refresh (0, or the submit time for face swaps).
    start_ms: int = 0
    #: When the relay forwarded the submit (just before the upstream acted on it).
    requested_at: float | None = None
    #: The refresher stops updating this row halfway through the job (new-api#1673).
    stalled: bool = False
    #: Cached JSON per snapshot key.
    cache: dict[object, tuple[bytes, bytes | None]] = attrs.field(factory=dict, repr=False)


class RelayDB:
    """Rows by task id (in insertion order) and the refresh-tick arithmetic."""

    def __init__(self, engine: Engine, interval: float) -> None:
        self.engine = engine
        self.interval = interval
        self.rows: dict[str, list[RelayRow]] = {}

    def insert(self, row: RelayRow) -> None:
        self.rows.setdefault(row.task_id, []).append(row)

    def first(self, task_id: str, key: str | None = None) -> RelayRow | None:
        """``GetByMJId`` (scoped to ``key``) or ``GetByOnlyMJId`` (``key`` None)."""
        for row in self.rows.get(task_id, ()):
            if key is None or row.key == key:
                return row
        return None

    def of(self, task_id: str, key: str) -> list[RelayRow]:
        return [row for row in self.rows.get(task_id, ()) if row.key == key]

    def stall_time(self, task: SimTask) -> float:
        """When a stalled row of ``task`` stops refreshing: halfway through its run."""
        if task.run_start is None:
            return math.inf
        return task.run_start + self.engine.timeline.run_seconds / 2

    # ---- ticks ----

    def _last_tick(self, now: float) -> float | None:
        if self.interval == 0:
            return now
        ticks = math.floor((now - self.engine.clock.start) / self.interval)
        return None if ticks < 1 else self.engine.clock.start + ticks * self.interval

    def _tick_before(self, at: float) -> float | None:
        if self.interval == 0:
            return at - _BEFORE
        return self._last_tick(at - self.interval * 1e-9)

    def links_signed_at(self, task: SimTask, row: RelayRow, at: float) -> float:
        """When the links a row refreshed at ``at`` were issued: a finished row is never
        refreshed again, so its links date from the first tick that saw it finished."""
        done = self.engine.timeline.finished_at(task)
        if done is None or at < done:
            return at
        return min(at, self._tick_at_or_after(max(done, row.inserted_at)))

    def _tick_at_or_after(self, at: float) -> float:
        if self.interval == 0:
            return at
        start = self.engine.clock.start
        ticks = max(1, math.ceil((at - start) / self.interval))
        return start + ticks * self.interval

    def _finished_tick(self, task: SimTask, rows: list[RelayRow], k: int) -> float:
        """When row ``k``'s copy first shows the job finished (inf while it cannot)."""
        done = self.engine.timeline.finished_at(task)
        if done is None:
            return math.inf
        tick = self._tick_at_or_after(max(rows[-1].inserted_at, done))
        for _ in range(len(rows) - 1 - k):  # each earlier row needs one more tick
            tick = tick if self.interval == 0 else tick + self.interval
        return tick

    def snapshot_time(
        self, task: SimTask, rows: list[RelayRow], k: int, now: float
    ) -> float | None:
        """The clock time of the upstream state row ``k`` shows, or None if never refreshed."""
        row = rows[k]
        if row.stalled:
            # The refresher stops touching the row: it shows its state as of the stall.
            now = min(now, self.stall_time(task))
        last = self._last_tick(now)
        if last is None or last < row.inserted_at:
            return None
        if k + 1 < len(rows) and last >= rows[k + 1].inserted_at:
            # A later row with the same id shadows this one until it has finished.
            finished = self._finished_tick(task, rows, k + 1)
            caught_up = last >= finished if self.interval == 0 else last > finished
            if caught_up:
                return last
            later = rows[k + 1]
            requested = later.inserted_at if later.requested_at is None else later.requested_at
            before = self._tick_before(requested)
            return None if before is None or before < row.inserted_at else before
        return last
