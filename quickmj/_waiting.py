"""Waiting on tasks: one task's final state, several as they finish, every change of one.

:func:`wait`, :func:`as_completed` and :func:`watch` read the client's shared poller (one
subscription each, no requests of their own); the job handles of ``_jobs`` and the client's
methods call them, with ids, Tasks and handles alike. A plain wait is one coroutine frame
awaiting one Future (so 100,000 pending waits stay small: benchmarks/scale.py); a timeout
names the id it gave up on.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import AsyncIterator, Iterable
from typing import Any

import anyio

from ._models import Task
from ._poller import Final, Poller, Subscription
from ._types import ProgressCallback
from .errors import (
    QuickMJError,
    TaskFailedError,
    TaskNeedsModalError,
    TaskNotFoundError,
    TaskStalledError,
    TaskTimeoutError,
)

__all__ = ("as_completed", "wait", "watch")

logger: logging.Logger = logging.getLogger("quickmj")


async def wait(
    poller: Poller,
    task_id: str,
    *,
    timeout: float | None = None,
    on_progress: ProgressCallback | None = None,
) -> Task:
    """Wait for one task through the shared poller (see :meth:`AsyncJob.wait`).

    A plain wait (no ``on_progress``) is what thousands of concurrent waiters run, so it
    is this one coroutine frame awaiting one Future, with a timer handle for a
    ``timeout``: no nested coroutines and no cancel scope (``benchmarks/scale.py``).
    """
    sub = poller.subscribe((task_id,), updates=on_progress is not None)
    try:
        if on_progress is not None or (timeout is not None and math.isnan(timeout)):
            final = await _next_final(sub, task_id, timeout, on_progress)
        else:
            if not sub.ready():  # without updates the one item is the final
                timer = _timer(sub.waiter(), timeout)
                try:
                    await sub.waiter()
                finally:
                    if timer is not None:
                        timer.cancel()
            if not sub.ready():  # only the timer wakes the waiter without an item
                raise TaskTimeoutError(task_id, timeout or 0.0, sub.last(task_id))
            final = _final_of(sub.pop())
    except BaseException as exc:
        if not isinstance(exc, QuickMJError):
            _note(exc, f"quickmj: task {task_id} keeps running on the relay; wait for it again")
        raise
    finally:
        sub.close()
    task = _settle(task_id, final)
    if task.is_failed:
        raise TaskFailedError(task)
    return task


def _timer(waiter: asyncio.Future[None], timeout: float | None) -> asyncio.TimerHandle | None:
    """Wake ``waiter`` after ``timeout`` seconds (a timer handle costs less than a cancel
    scope and the coroutine frames it needs, times 100,000 waits)."""
    if timeout is None or timeout == math.inf:
        return None
    return asyncio.get_running_loop().call_later(timeout, _wake, waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():  # the final may have come first, or the wait was cancelled
        waiter.set_result(None)


def _final_of(item: Task | tuple[str, Final]) -> Final:
    assert type(item) is tuple  # a subscription without updates queues only finals
    return item[1]


async def _next_final(
    sub: Subscription, task_id: str, timeout: float | None, on_progress: ProgressCallback | None
) -> Final:
    if timeout is None:  # no cancel scope: thousands of waiters stay cheap
        return await _drain(sub, on_progress)
    with anyio.move_on_after(timeout):
        return await _drain(sub, on_progress)
    raise TaskTimeoutError(task_id, timeout, sub.last(task_id))


async def as_completed(
    poller: Poller, ids: Iterable[str], *, timeout: float | None = None
) -> AsyncIterator[Task]:
    """Yield each task as it reaches a terminal state, in completion order.

    Failed tasks are yielded too (check ``task.is_failed``); nothing is raised for them.
    A task waiting in MODAL is yielded as it is (see ``PollPolicy.modal_timeout``).
    Unknown ids raise TaskNotFoundError, stalled ones TaskStalledError (its ``pending``
    lists them all), after every other task was yielded; ``timeout`` bounds the whole
    iteration (TaskTimeoutError lists what is still pending, stalled ids included). An
    error for every id (the key refused, the task routes not served) is raised at once.
    """
    order = list(dict.fromkeys(ids))
    if not order:
        return
    sub = poller.subscribe(order)
    pending = set(order)
    missing: list[str] = []
    stalled: list[TaskStalledError] = []
    deadline = anyio.current_time() + (math.inf if timeout is None else timeout)
    try:
        while pending:
            # A queued item is taken without a coroutine or a cancel scope.
            item = sub.pop() if sub.ready() else await _next_item(sub, deadline)
            if item is None:
                first = next(i for i in order if i in pending)
                raise TaskTimeoutError(
                    first,
                    timeout or 0.0,
                    sub.last(first),
                    pending=[i for i in order if i in pending] + [e.task_id for e in stalled],
                )
            if isinstance(item, Task):
                continue
            task_id, final = item
            pending.discard(task_id)
            if isinstance(final.error, TaskNotFoundError):
                missing.append(task_id)
                continue
            if isinstance(final.error, TaskStalledError):
                stalled.append(final.error)
                continue
            yield _settle(task_id, final, modal_ok=True)
    finally:
        sub.close()
    _raise_leftovers(missing, stalled)


def _raise_leftovers(missing: list[str], stalled: list[TaskStalledError]) -> None:
    """After as_completed yielded what finished: unknown ids first (they never will),
    then stalled ones (they might, later)."""
    if missing:
        error = TaskNotFoundError(missing)
        if stalled:
            _note(error, f"quickmj: also stalled: {', '.join(e.task_id for e in stalled)}")
        raise error
    if stalled:
        first = stalled[0]
        raise TaskStalledError(
            first.task_id,
            first.stalled_for,
            first.last_task,
            allowance=first.timeout,
            pending=[e.task_id for e in stalled],
        )


async def _next_item(sub: Subscription, deadline: float) -> Any:
    """The next item, or None at the deadline (no cancel scope when one is ready)."""
    if sub.ready() or deadline == math.inf:
        return await sub.next()
    with anyio.move_on_after(deadline - anyio.current_time()):
        return await sub.next()
    return None


async def watch(poller: Poller, task_id: str) -> AsyncIterator[Task]:
    """Yield the task on each real change, ending with its final state.

    A FAILURE is yielded, not raised. A task waiting in MODAL ends the iteration with
    its MODAL state (see ``PollPolicy.modal_timeout``); a stalled task raises
    TaskStalledError, like ``wait``.
    """
    sub = poller.subscribe([task_id], updates=True)
    last: Task | None = None
    try:
        while True:
            item = await sub.next()
            if isinstance(item, Task):
                last = item
                yield item
                continue
            done = _settle(task_id, item[1], modal_ok=True)
            if done is not last:
                yield done
            return
    finally:
        sub.close()


def _settle(task_id: str, final: Final, *, modal_ok: bool = False) -> Task:
    """The task a listener ended with, or the error it ended with, raised."""
    if final.error is not None:
        raise final.error
    assert final.task is not None
    if final.task.needs_modal and not modal_ok:
        raise TaskNeedsModalError(task_id, final.task)
    return final.task


async def _drain(sub: Subscription, on_progress: ProgressCallback | None) -> Final:
    """Feed updates to ``on_progress`` until the subscription's final result arrives."""
    while True:
        item = await sub.next()
        if isinstance(item, Task):
            if on_progress is not None:
                result = on_progress(item)
                if inspect.isawaitable(result):
                    await result
        else:
            return item[1]


def _note(exc: BaseException, text: str) -> None:
    """Attach a note (shown under the traceback on 3.11+) and log it, once."""
    notes = getattr(exc, "__notes__", None)
    if notes is not None and text in notes:
        return
    try:
        exc.add_note(text)  # type: ignore[attr-defined,unused-ignore]
    except AttributeError:  # Python 3.10
        exc.__notes__ = [*(notes or []), text]  # type: ignore[attr-defined,unused-ignore]
    logger.info("%s", text)
