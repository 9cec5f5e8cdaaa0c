"""Jobs and their lifecycle, derived lazily from the clock.

A job's whole timeline (when it gets a worker, starts running, finishes) is fixed the
moment it is activated, so reading its state is arithmetic on the clock: ten thousand
idle jobs cost nothing, and no timer runs per job. This is the *server's* view of a job;
each dialect renders it (and the quickrouter relay keeps its own, older copies).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Hashable
from typing import Any

import attrs

from ._catalogue import Modal, Result

__all__ = (
    "FAILURE",
    "IN_PROGRESS",
    "MODAL",
    "NOT_START",
    "SUBMITTED",
    "SUCCESS",
    "Phase",
    "SimTask",
    "Timeline",
)

NOT_START = "NOT_START"
SUBMITTED = "SUBMITTED"
IN_PROGRESS = "IN_PROGRESS"
MODAL = "MODAL"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"

#: (status, progress step index or -1): everything about a job that changes with time.
Phase = tuple[str, int]

MODAL_PHASE: Phase = (MODAL, -1)
NOT_START_PHASE: Phase = (NOT_START, -1)
SUBMITTED_PHASE: Phase = (SUBMITTED, -1)
SUCCESS_PHASE: Phase = (SUCCESS, -1)
FAILURE_PHASE: Phase = (FAILURE, -1)


@attrs.define(eq=False)
class SimTask:
    """One simulated job: fixed facts, then the timeline set when it is activated."""

    id: str
    """The task id handed to the client (a 16-digit number, as relays make them)."""
    ordinal: int
    """Creation order (0, 1, 2, ...): stable across runs with the same requests."""
    key: str
    """The API key (account) that created it."""
    endpoint: str
    """The submit route that created it (``"/submit/imagine"``)."""
    action: str
    """``IMAGINE``, ``UPSCALE``, ... as the relay reports it."""
    result: Result
    """What the finished job shows (a grid, one upscaled image, prompts, ...)."""
    prompt: str | None
    """The prompt as submitted (None for actions without one)."""
    message_hash: str
    """The Discord message hash (buttons' ``customId`` carry it)."""
    nonce: str
    """The Discord nonce of the submit."""
    submit_ms: int
    """When it was submitted, in Unix milliseconds on the simulator's clock."""
    prompt_en: str | None = None
    """The prompt as the proxy sent it to Midjourney."""
    description: str | None = None
    """The relay's ``description`` text for the task."""
    state: str | None = None
    """The submit's ``state``, handed back unchanged."""
    notify_hook: str | None = None
    """Where the simulator posts this task's updates (the submit's ``notifyHook``)."""
    mode: str | None = None
    """FAST, RELAX or TURBO when the request used a mode prefix."""
    bot_type: str = "MID_JOURNEY"
    """``MID_JOURNEY``, ``NIJI_JOURNEY`` or ``INSIGHT_FACE``."""
    custom_id: str | None = None
    """The button pressed to create it (action tasks)."""
    parent_id: str | None = None
    """The task whose button created it."""
    image_key: str = ""
    """Whose colours the images use, and the quadrant an upscale shows."""
    image_index: int | None = None
    """The image of the parent an action works on (1-4), if any."""
    modal: Modal | None = None
    """The modal this job waits for (it starts in MODAL until ``/submit/modal``)."""
    texts: tuple[str, ...] = ()
    """Prompts a DESCRIBE or SHORTEN job produces."""
    seed: str | None = None
    """The ``--seed`` value the proxy appended (TrueAI), once the job runs."""
    random_failure: bool = False
    """Decided at creation from the seeded generator (``failure_rate``)."""
    forced_failure: str | None = None
    """Fails at start with this reason (banned word, bad index, ...), if set."""
    hook_seed: int = 0
    """Seeds this job's hook-drop decisions."""
    hang: bool = False
    """The job hangs part-way and the server's timeout fails it (``FaultConfig.hang_rate``)."""
    extra: dict[str, Any] = attrs.field(factory=dict)
    """Dialect-specific facts (e.g. a change task's copied properties)."""
    # ---- timeline (clock seconds), set by Timeline.activate ----
    activated_at: float | None = None
    """When it took its place in the queue (clock seconds; None until then)."""
    slot_start: float | None = None
    """When a worker slot became free for it."""
    run_start: float | None = None
    """When it starts running (IN_PROGRESS)."""
    end: float | None = None
    """When it ends (SUCCESS or FAILURE)."""
    fail_reason: str | None = None
    """Why it fails, once that is decided."""
    cancel_at: float | None = None
    """When it is cancelled (CANCEL), if it is."""
    cache: dict[Hashable, Any] = attrs.field(factory=dict, repr=False)
    """Rendered JSON per (dialect, phase ...) key; dropped whenever the timeline changes."""


class Timeline:
    """The lifecycle arithmetic shared by every dialect."""

    def __init__(
        self,
        queue_seconds: float,
        run_seconds: float,
        steps: tuple[int, ...],
        *,
        hang_end: Callable[[float], float] | None = None,
        hang_reason: str = "任务超时",
    ) -> None:
        self.queue_seconds = queue_seconds
        self.run_seconds = run_seconds
        self.steps = steps
        n = len(steps)
        self.step_offsets: tuple[float, ...] = tuple(run_seconds * i / n for i in range(n))
        #: When the server's timeout fails a hanging job that started at a given time.
        self.hang_end: Callable[[float], float] = hang_end or (lambda start: start + 300.0)
        self.hang_reason = hang_reason
        #: The progress step a hanging job stops at (halfway).
        self.hang_step: int = n // 2

    def schedule(self, task: SimTask, now: float, start: float, fail_word: str | None) -> float:
        """Fix ``task``'s timeline from ``start`` (its worker slot); returns its end."""
        run_start = start + self.queue_seconds
        if task.forced_failure is not None:
            task.fail_reason = task.forced_failure
            end = run_start
        elif fail_word is not None:
            task.fail_reason = f"[Banned prompt detected] {fail_word}"
            end = run_start
        elif task.hang:
            task.fail_reason = self.hang_reason
            end = max(run_start, self.hang_end(start))
        elif task.random_failure:
            task.fail_reason = "Internal Error: the job failed (simulated failure_rate)"
            end = run_start + self.run_seconds / 2
        else:
            task.fail_reason = None
            end = run_start + self.run_seconds
        task.activated_at = now
        task.slot_start, task.run_start, task.end = start, run_start, end
        task.cancel_at = None
        task.cache.clear()
        return end

    def phase(self, task: SimTask, now: float) -> Phase:
        """The job's status (and progress step) at clock time ``now``."""
        if task.activated_at is None or now < task.activated_at:
            return MODAL_PHASE if task.modal is not None else NOT_START_PHASE
        assert task.end is not None and task.slot_start is not None and task.run_start is not None
        if task.cancel_at is not None and now >= task.cancel_at:
            return FAILURE_PHASE
        if now >= task.end:
            return FAILURE_PHASE if task.fail_reason else SUCCESS_PHASE
        if now < task.slot_start:
            return NOT_START_PHASE
        if now < task.run_start:
            return SUBMITTED_PHASE
        step = bisect.bisect_right(self.step_offsets, now - task.run_start) - 1
        if task.hang:
            step = min(step, self.hang_step)
        return (IN_PROGRESS, max(step, 0))

    def finished_at(self, task: SimTask) -> float | None:
        """When the job became (or will become) SUCCESS or FAILURE; None while MODAL."""
        if task.end is None:
            return None
        if task.cancel_at is not None:
            return min(task.cancel_at, task.end)
        return task.end

    def failure_reason(self, task: SimTask, now: float) -> str:
        """The ``failReason`` a failed job shows at clock time ``now``."""
        if task.cancel_at is not None and now >= task.cancel_at:
            return "取消任务"
        return task.fail_reason or "failed"

    def transitions(self, task: SimTask) -> list[tuple[float, Phase]]:
        """Every state change after activation with its clock time, in order."""
        if task.end is None or task.slot_start is None or task.run_start is None:
            return []
        out: list[tuple[float, Phase]] = [(task.slot_start, SUBMITTED_PHASE)]
        for i, offset in enumerate(self.step_offsets):
            at = task.run_start + offset
            if at < task.end and not (task.hang and i > self.hang_step):
                out.append((at, (IN_PROGRESS, i)))
        out.append((task.end, FAILURE_PHASE if task.fail_reason else SUCCESS_PHASE))
        return out

    def percent(self, phase: Phase) -> int:
        """The progress percentage of ``phase`` (100 for SUCCESS, 0 before running)."""
        status, step = phase
        if status == IN_PROGRESS:
            return self.steps[step]
        return 100 if status == SUCCESS else 0
