"""The batch poller: one background loop per client tracks every awaited task.

Theory of operation
-------------------
Every task id someone waits on (``wait``, ``watch``, ``as_completed``) has one ``_Entry``,
shared by all its listeners. Each tick the loop takes the entries that are due, asks the
relay for them with ``list-by-condition`` in chunks of ``batch_size`` (at most
``max_concurrent_batches`` requests in flight), and hands each answer to the entries.
N tracked tasks therefore cost ``ceil(N / batch_size)`` requests per tick, never N.

Relays answer in any order, leave unknown ids out and sometimes truncate: answers are
matched by id, and ids left out are asked for again in the same tick while the re-asks make
progress. An id still missing after ``miss_limit`` ticks is confirmed with one ``fetch``;
only a confirmed unknown id fails, and only its own listeners. A failing chunk delays only
its ids (exponential backoff, honouring Retry-After); the other chunks carry on.

Scheduling: a new id is first checked after ``first_poll`` (so a burst of submits shares a
batch), running ids every ``interval``, ids near completion every ``near_done_interval``.
With nothing tracked the loop sleeps on an event: no idle traffic.

Listeners receive updates through an ``asyncio.Queue`` and a final result (a terminal Task,
a MODAL task that waited too long, or an exception) once. User callbacks run in the
listener's own task, never in the loop, so a slow callback cannot stall polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
import attrs

from ._converter import raw_task_id, state_key, structure
from ._models import Task, TaskStatus
from .errors import (
    ClientClosedError,
    ConfigurationError,
    MalformedResponseError,
    QuickMJError,
    RateLimitError,
    TaskNotFoundError,
)

__all__ = ("PollPolicy", "Poller", "Subscription")

logger = logging.getLogger("quickmj")


@attrs.frozen
class PollPolicy:
    """How the poller schedules its batched status reads (seconds unless noted)."""

    #: Between two checks of a running task. Relays refresh upstream about every 15 s;
    #: polling much faster than a couple of seconds only burns requests.
    interval: float = 2.0
    #: Delay before a newly tracked id is first checked (lets a burst share one batch).
    first_poll: float = 0.5
    #: Check interval once progress reaches ``near_done_percent``.
    near_done_interval: float = 1.0
    near_done_percent: int = 80
    #: Ids per list-by-condition request.
    batch_size: int = 100
    #: list-by-condition requests in flight at once.
    max_concurrent_batches: int = 4
    #: Ticks an id may be missing from answers before one ``fetch`` confirms it.
    miss_limit: int = 3
    #: How long a task may sit in MODAL before waiters are told it needs ``modal``.
    modal_timeout: float = 30.0
    #: Upper bound of the backoff after failing requests.
    max_error_backoff: float = 60.0
    #: With push updates (notifyHook), how often pushed ids are still polled as a safety net.
    safety_net_interval: float = 30.0

    def __attrs_post_init__(self) -> None:
        if self.batch_size < 1 or self.max_concurrent_batches < 1 or self.miss_limit < 1:
            raise ConfigurationError("PollPolicy sizes must be at least 1")
        if min(self.interval, self.first_poll, self.near_done_interval) < 0:
            raise ConfigurationError("PollPolicy intervals must be non-negative")

    def due_after(self, task: Task | None) -> float:
        if task is not None:
            percent = task.progress_percent
            if percent is not None and percent >= self.near_done_percent:
                return min(self.interval, self.near_done_interval)
        return self.interval


class _Final:
    """What a listener ends with: a task (terminal, or stuck in MODAL) or an error."""

    __slots__ = ("error", "task")

    def __init__(self, task: Task | None = None, error: BaseException | None = None) -> None:
        self.task = task
        self.error = error


class Subscription:
    """One listener on one or more task ids; created by ``Poller.subscribe``.

    Holds a small queue of its own (lighter than asyncio.Queue: thousands of waiters each
    have one, so containers are created only when first needed): items are Task updates
    (only if ``updates``) or ``(task_id, _Final)``.
    """

    __slots__ = ("_finished", "_items", "_last", "_poller", "_waiter", "ids", "updates")

    def __init__(self, poller: Poller, ids: tuple[str, ...], updates: bool) -> None:
        self._poller = poller
        self.ids = ids
        self.updates = updates
        self._items: deque[Task | tuple[str, _Final]] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._last: dict[str, Task] | None = None
        self._finished: set[str] | None = None

    def last(self, task_id: str) -> Task | None:
        """The latest state seen for ``task_id``, if any."""
        return self._last.get(task_id) if self._last else None

    def _put(self, item: Task | tuple[str, _Final]) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _remember(self, task: Task) -> None:
        if self._last is None:
            self._last = {}
        self._last[task.id] = task

    def _push_update(self, task: Task) -> None:
        self._remember(task)
        if self.updates:
            self._put(task)

    def _push_final(self, task_id: str, final: _Final) -> None:
        if self._finished is None:
            self._finished = set()
        elif task_id in self._finished:
            return
        self._finished.add(task_id)
        if final.task is not None:
            self._remember(final.task)
        self._put((task_id, final))

    async def next(self) -> Task | tuple[str, _Final]:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    def close(self) -> None:
        """Stop listening; entries nobody listens to any more are dropped."""
        self._poller._unsubscribe(self)


class _Entry:
    __slots__ = (
        "delay",
        "error_count",
        "key",
        "last",
        "listeners",
        "misses",
        "modal_since",
        "next_due",
        "pushed_at",
    )

    def __init__(self, due: float) -> None:
        self.listeners: list[Subscription] = []
        self.last: Task | None = None
        self.key: tuple[Any, ...] | None = None  # state_key() of the last applied state
        self.delay = 0.0  # next check after this many seconds while nothing changes
        self.misses = 0
        self.error_count = 0
        self.next_due = due
        self.modal_since: float | None = None
        self.pushed_at: float | None = None  # last notifyHook push: poll only as a safety net


ListFn = Callable[[list[str]], Awaitable[list[Any]]]  # raw JSON tasks
FetchFn = Callable[[str], Awaitable[Task]]


class Poller:
    """Tracks task ids and resolves their listeners; see the module docstring."""

    def __init__(
        self,
        list_tasks: ListFn,
        fetch: FetchFn,
        policy: PollPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._list = list_tasks
        self._fetch = fetch
        self.policy = policy
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._wakeup = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._closed = False
        self._global_pause_until = 0.0
        self._first_due = 0.0
        #: Counters for benchmarks and tests.
        self.stats: dict[str, int] = {"ticks": 0, "list_requests": 0, "fetch_confirms": 0}

    @property
    def tracked(self) -> int:
        return len(self._entries)

    @property
    def running(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done()

    # ---- listeners ----

    def subscribe(self, ids: Iterable[str], *, updates: bool = False) -> Subscription:
        if self._closed:
            raise ClientClosedError("the client is closed")
        sub = Subscription(self, tuple(dict.fromkeys(ids)), updates)
        now = self._clock()
        if not self._first_due:
            self._first_due = now + self.policy.first_poll
        for task_id in sub.ids:
            entry = self._entries.get(task_id)
            if entry is None:
                # A burst of new ids shares one first check, hence one set of batches.
                entry = self._entries[task_id] = _Entry(self._first_due)
            entry.listeners.append(sub)
            if entry.last is not None:
                sub._push_update(entry.last)
        self._ensure_loop()
        self._wakeup.set()
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        for task_id in sub.ids:
            entry = self._entries.get(task_id)
            if entry is None:
                continue
            if sub in entry.listeners:
                entry.listeners.remove(sub)
            if not entry.listeners:
                del self._entries[task_id]

    def feed(self, task: Task, *, pushed: bool = True) -> bool:
        """Apply a task state that arrived from elsewhere (a notifyHook).

        Returns False when nobody tracks the id. While pushes keep coming, a pushed id is
        polled only every ``safety_net_interval``; once they stop for that long, normal
        polling resumes by itself.
        """
        entry = self._entries.get(task.id)
        if entry is None:
            return False
        now = self._clock()
        self._apply(task.id, entry, task, now)
        if pushed and task.id in self._entries:
            # Even a stale push proves hooks flow: poll this id only as a safety net.
            entry.pushed_at = now
            self._schedule(entry, now)
        self._wakeup.set()  # the loop re-reads due times (a MODAL push may need a sooner check)
        return True

    # ---- loop ----

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(
                self._run(), name="quickmj-poller"
            )

    async def aclose(self) -> None:
        """Stop the loop; fail every remaining listener with ClientClosedError."""
        self._closed = True
        task, self._loop_task = self._loop_task, None
        if task is not None:
            with anyio.CancelScope(shield=True):
                # On Python < 3.11 a cancel that lands as an anyio timeout fires can be
                # absorbed by that scope: keep cancelling until the loop really ended (the
                # loop also checks _closed on every turn).
                while not task.done():
                    task.cancel()
                    self._wakeup.set()
                    await asyncio.wait({task}, timeout=0.1)
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    task.result()
        self._fail_all(ClientClosedError("the client was closed while waiting for the task"))

    def _fail_all(self, error: BaseException) -> None:
        entries, self._entries = self._entries, {}
        for task_id, entry in entries.items():
            for sub in entry.listeners:
                sub._push_final(task_id, _Final(error=error))

    async def _run(self) -> None:
        try:
            while not self._closed:
                if not self._entries:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                now = self._clock()
                start = max(
                    min(e.next_due for e in self._entries.values()), self._global_pause_until
                )
                if start > now:
                    self._wakeup.clear()
                    with anyio.move_on_after(start - now):
                        await self._wakeup.wait()
                    continue
                await self._tick(now)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug must not leave waiters hanging forever
            logger.exception("quickmj poller stopped unexpectedly")
            self._fail_all(exc)
            raise

    async def _tick(self, now: float) -> None:
        # Coalesce: everything due within a quarter interval goes in this tick's batches.
        horizon = now + self.policy.interval / 4
        due = [task_id for task_id, e in self._entries.items() if e.next_due <= horizon]
        if self._first_due and self._first_due <= horizon:
            self._first_due = 0.0  # the pending burst is in this tick; the next one starts anew
        if not due:
            return
        self.stats["ticks"] += 1
        size = self.policy.batch_size
        limiter = anyio.CapacityLimiter(self.policy.max_concurrent_batches)
        async with anyio.create_task_group() as tg:
            for i in range(0, len(due), size):
                tg.start_soon(self._poll_chunk, due[i : i + size], limiter, now)

    async def _poll_chunk(
        self, ids: list[str], limiter: anyio.CapacityLimiter, tick_started: float
    ) -> None:
        # Next checks are scheduled from the tick's start, not from when each answer came
        # back, so the ids polled together stay together in the next tick's batches.
        async with limiter:
            asked = ids
            got_any = True
            while asked and got_any:
                try:
                    self.stats["list_requests"] += 1
                    answer = await self._list(asked)
                except QuickMJError as exc:
                    self._chunk_failed(asked, exc)
                    return
                seen: set[str] = set()
                lookup = set(asked)
                entries = self._entries
                for raw in answer:
                    # The hot loop of a tick: plain string ids and unchanged tasks take the
                    # shortest path (no function calls, no parsing).
                    task_id = raw.get("id") if type(raw) is dict else None
                    if type(task_id) is not str:
                        task_id = raw_task_id(raw)
                    if task_id is None or task_id not in lookup or task_id in seen:
                        continue  # no id, not asked for, or a duplicate
                    entry = entries.get(task_id)
                    if entry is None:
                        continue
                    seen.add(task_id)
                    entry.error_count = entry.misses = 0
                    key = state_key(raw)
                    if key == entry.key and entry.modal_since is None:
                        if entry.pushed_at is None:
                            entry.next_due = tick_started + entry.delay  # unchanged
                        else:
                            self._schedule(entry, tick_started)
                        continue
                    try:
                        task = structure(raw, Task, what=f"task {task_id}")
                    except MalformedResponseError as exc:
                        self._finish(task_id, _Final(error=exc))
                        continue
                    self._apply(task_id, entry, task, tick_started, key)
                # Truncated answers: re-ask for the rest while re-asking makes progress.
                got_any = bool(seen)
                asked = [i for i in asked if i not in seen and i in self._entries]
            for task_id in asked:
                await self._missed(task_id)

    def _chunk_failed(self, ids: list[str], exc: QuickMJError) -> None:
        now = self._clock()
        retry_after = exc.retry_after if isinstance(exc, RateLimitError) else None
        if retry_after is not None:
            # The relay asked everyone to slow down, not just this chunk.
            self._global_pause_until = max(self._global_pause_until, now + retry_after)
        for task_id in ids:
            entry = self._entries.get(task_id)
            if entry is None:
                continue
            entry.error_count += 1
            backoff = min(
                self.policy.interval * 2 ** (entry.error_count - 1), self.policy.max_error_backoff
            )
            entry.next_due = now + max(backoff, retry_after or 0.0)
        logger.debug("poll batch of %d ids failed (%s); backing off", len(ids), exc)

    async def _missed(self, task_id: str) -> None:
        entry = self._entries.get(task_id)
        if entry is None:
            return
        entry.misses += 1
        now = self._clock()
        if entry.misses < self.policy.miss_limit:
            entry.next_due = now + self.policy.interval
            return
        # Confirm with a single fetch before declaring the id unknown.
        self.stats["fetch_confirms"] += 1
        try:
            task = await self._fetch(task_id)
        except TaskNotFoundError as exc:
            self._finish(task_id, _Final(error=exc))
            return
        except QuickMJError as exc:
            self._chunk_failed([task_id], exc)
            return
        entry = self._entries.get(task_id)
        if entry is not None:
            entry.misses = 0
            self._apply(task_id, entry, task, self._clock())

    def _apply(
        self,
        task_id: str,
        entry: _Entry,
        task: Task,
        now: float,
        key: tuple[Any, ...] | None = None,
    ) -> None:
        previous = entry.last
        if previous is not None and _is_regression(previous, task):
            return  # a late or duplicated report must never move a task backwards
        changed = previous is None or (previous.status, previous.progress, previous.image_url) != (
            task.status,
            task.progress,
            task.image_url,
        )
        entry.last = task
        entry.key = key
        if changed:
            for sub in list(entry.listeners):
                sub._push_update(task)
        if task.status.is_terminal:
            self._finish(task_id, _Final(task=task))
            return
        if task.status is TaskStatus.MODAL:
            if entry.modal_since is None:
                entry.modal_since = now
            elif now - entry.modal_since >= self.policy.modal_timeout:
                self._finish(task_id, _Final(task=task))
                return
        else:
            entry.modal_since = None
        entry.delay = self.policy.due_after(task)
        self._schedule(entry, now)

    def _schedule(self, entry: _Entry, now: float) -> None:
        delay = entry.delay
        if entry.pushed_at is not None:
            # Pushes arrive: only a safety-net poll, counted from the last push. When they
            # stop for a whole safety-net interval, fall back to normal polling.
            quiet_for = now - entry.pushed_at
            if quiet_for < self.policy.safety_net_interval:
                delay = max(delay, self.policy.safety_net_interval - quiet_for)
            else:
                entry.pushed_at = None
        if entry.modal_since is not None:
            delay = min(delay, max(self.policy.modal_timeout - (now - entry.modal_since), 0.0))
        entry.next_due = now + delay

    def _finish(self, task_id: str, final: _Final) -> None:
        entry = self._entries.pop(task_id, None)
        if entry is None:
            return
        for sub in entry.listeners:
            sub._push_final(task_id, final)


_RANK = {
    TaskStatus.NOT_START: 0,
    TaskStatus.MODAL: 0,
    TaskStatus.SUBMITTED: 1,
    TaskStatus.IN_PROGRESS: 3,
    TaskStatus.FAILURE: 4,
    TaskStatus.SUCCESS: 4,
    TaskStatus.CANCEL: 4,
}


def _is_regression(old: Task, new: Task) -> bool:
    """True if ``new`` is older news than ``old`` (e.g. IN_PROGRESS after SUCCESS)."""
    if old.status.is_terminal:
        return True
    old_rank = _RANK.get(old.status, 2)
    new_rank = _RANK.get(new.status, 2)
    if new_rank != old_rank:
        return new_rank < old_rank and new.status is not TaskStatus.MODAL
    return (new.progress_percent or 0) < (old.progress_percent or 0)
