"""The task store: ids, queue slots and each job's lifecycle, derived lazily from the clock.

A job's whole timeline (when it leaves NOT_START, starts running, finishes) is fixed the
moment it is activated, so reading its state is arithmetic on ``time.monotonic()``:
ten thousand idle tasks cost nothing, and no timer runs per task.
"""

from __future__ import annotations

import bisect
import collections
import heapq
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import attrs

from .._models import TaskAction, TaskStatus
from ._catalogue import Modal, Result
from ._config import SimulatorConfig

__all__ = ("Phase", "SimTask", "TaskStore")

#: (status, progress step index or -1): everything about a task that changes with time.
Phase = tuple[TaskStatus, int]

MODAL_PHASE: Phase = (TaskStatus.MODAL, -1)
NOT_START_PHASE: Phase = (TaskStatus.NOT_START, -1)
SUBMITTED_PHASE: Phase = (TaskStatus.SUBMITTED, -1)
SUCCESS_PHASE: Phase = (TaskStatus.SUCCESS, -1)
FAILURE_PHASE: Phase = (TaskStatus.FAILURE, -1)

RANDOM_FAILURE_REASON = "Internal Error: the job failed (simulated failure_rate)"


@attrs.define(eq=False)
class SimTask:
    """One simulated job. Fixed facts plus the timeline set when it is activated."""

    id: str
    #: Creation order (0, 1, 2, ...): stable across runs with the same requests.
    ordinal: int
    action: TaskAction
    result: Result
    #: The submit route that created it (``"/submit/imagine"``).
    endpoint: str
    prompt: str
    message_hash: str
    submit_ms: int
    state: str | None = None
    notify_hook: str | None = None
    #: FAST, RELAX or TURBO when the request used a mode prefix.
    mode: str | None = None
    bot_type: str = "MID_JOURNEY"
    custom_id: str | None = None
    parent_id: str | None = None
    #: Whose colours the images use, and the quadrant an upscale shows.
    image_key: str = ""
    image_index: int | None = None
    #: The modal this task waits for while in MODAL.
    modal: Modal | None = None
    #: Extra prompts a DESCRIBE or SHORTEN job produces.
    texts: tuple[str, ...] = ()
    #: Decided at creation from the seeded generator (``failure_rate``).
    random_failure: bool = False
    #: Seeds this job's hook-drop decisions.
    hook_seed: int = 0
    # ---- timeline (monotonic seconds), set by TaskStore.activate ----
    slot_start: float | None = None
    run_start: float | None = None
    end: float | None = None
    fail_reason: str | None = None
    # ---- render cache: the JSON of the last phase rendered ----
    cached_phase: Phase | None = attrs.field(default=None, repr=False)
    cached_json: bytes = attrs.field(default=b"", repr=False)

    def invalidate(self) -> None:
        self.cached_phase = None
        self.cached_json = b""


class TaskStore:
    """All tasks by id, the queue slots and the lifecycle arithmetic."""

    def __init__(
        self,
        config: SimulatorConfig,
        rng: random.Random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.clock = clock
        self.tasks: dict[str, SimTask] = {}
        self._rng = rng
        self._last_id = 0
        self._ordinal = 0
        self._mono0 = clock()
        self._epoch0 = time.time()
        n = len(config.progress_steps)
        self.step_offsets = tuple(config.run_seconds * i / n for i in range(n))
        # End times of activated, unfinished jobs (a min-heap): the queue-limit count.
        self._active_ends: list[float] = []
        # Times at which each concurrency slot frees up (a min-heap), if limited.
        self._slots: list[float] = [0.0] * (config.concurrency or 0)
        # Start times of jobs still waiting for a slot, in order.
        self._waiting: collections.deque[float] = collections.deque()

    # ---- creation ----

    def new_id(self) -> str:
        """Epoch milliseconds plus three digits: a 16-digit string, unique and increasing."""
        candidate = int(time.time() * 1000) * 1000 + self._rng.randrange(1000)
        if candidate <= self._last_id:
            candidate = self._last_id + 1
        self._last_id = candidate
        return str(candidate)

    def create(
        self,
        *,
        action: TaskAction,
        result: Result,
        endpoint: str,
        prompt: str,
        now: float,
        **fields: Any,
    ) -> SimTask:
        """A new task (not yet activated). Draws from the seeded generator in a fixed order."""
        task_id = self.new_id()
        message_hash = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        random_failure = self._rng.random() < self.config.failure_rate
        hook_seed = self._rng.getrandbits(64)
        task = SimTask(
            id=task_id,
            ordinal=self._ordinal,
            action=action,
            result=result,
            endpoint=endpoint,
            prompt=prompt,
            message_hash=message_hash,
            submit_ms=self.epoch_ms(now),
            random_failure=random_failure,
            hook_seed=hook_seed,
            **fields,
        )
        if not task.image_key:
            task.image_key = task.id
        self._ordinal += 1
        self.tasks[task.id] = task
        return task

    def random_texts(self, count: int, words: tuple[str, ...]) -> tuple[str, ...]:
        """``count`` short prompts built from ``words`` (describe and shorten results)."""
        out = []
        for _ in range(count):
            picked = self._rng.sample(words, k=min(len(words), 3))
            out.append(", ".join(picked))
        return tuple(out)

    # ---- queue ----

    def active_count(self, now: float) -> int:
        """Jobs activated and not yet finished (NOT_START, SUBMITTED, IN_PROGRESS)."""
        ends = self._active_ends
        while ends and ends[0] <= now:
            heapq.heappop(ends)
        return len(ends)

    def waiting_count(self, now: float) -> int:
        """Jobs waiting for a concurrency slot (NOT_START)."""
        waiting = self._waiting
        while waiting and waiting[0] <= now:
            waiting.popleft()
        return len(waiting)

    def activate(self, task: SimTask, now: float, fail_word: str | None) -> int:
        """Fix the job's timeline from ``now``; returns how many jobs wait ahead of it."""
        cfg = self.config
        ahead = self.waiting_count(now)
        start = now
        if cfg.concurrency:
            start = max(now, heapq.heappop(self._slots))
        run_start = start + cfg.queue_seconds
        if fail_word is not None:
            task.fail_reason = f"Banned prompt detected: {fail_word}"
            end = run_start
        elif task.random_failure:
            task.fail_reason = RANDOM_FAILURE_REASON
            end = run_start + cfg.run_seconds / 2
        else:
            task.fail_reason = None
            end = run_start + cfg.run_seconds
        task.slot_start, task.run_start, task.end = start, run_start, end
        task.modal = None
        task.invalidate()
        if cfg.concurrency:
            heapq.heappush(self._slots, end)
        if start > now:
            self._waiting.append(start)
        heapq.heappush(self._active_ends, end)
        return ahead

    # ---- lifecycle ----

    def phase(self, task: SimTask, now: float) -> Phase:
        """The task's status (and progress step) at monotonic time ``now``."""
        if task.end is None or task.slot_start is None or task.run_start is None:
            return MODAL_PHASE if task.modal is not None else NOT_START_PHASE
        if now >= task.end:
            return FAILURE_PHASE if task.fail_reason else SUCCESS_PHASE
        if now < task.slot_start:
            return NOT_START_PHASE
        if now < task.run_start:
            return SUBMITTED_PHASE
        step = bisect.bisect_right(self.step_offsets, now - task.run_start) - 1
        return (TaskStatus.IN_PROGRESS, max(step, 0))

    def transitions(self, task: SimTask) -> list[tuple[float, Phase]]:
        """Every state change after activation with its monotonic time, in order."""
        if task.end is None or task.slot_start is None or task.run_start is None:
            return []
        out: list[tuple[float, Phase]] = [(task.slot_start, SUBMITTED_PHASE)]
        for i, offset in enumerate(self.step_offsets):
            at = task.run_start + offset
            if at < task.end:
                out.append((at, (TaskStatus.IN_PROGRESS, i)))
        out.append((task.end, FAILURE_PHASE if task.fail_reason else SUCCESS_PHASE))
        return out

    def epoch_ms(self, mono: float) -> int:
        """A monotonic time as epoch milliseconds (the relay's submitTime etc.)."""
        return int((self._epoch0 + (mono - self._mono0)) * 1000)
