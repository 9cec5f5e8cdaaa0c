"""The admission gate: submits wait for a slot of an account's budget, then send with it.

A relay account takes a few jobs at once (``_budgets``: how many, learned from its
answers). :class:`Admission` hands out slots of one or more budgets, first come first
served, least loaded budget first; :func:`submit_with` sends one submit with a slot and
tells the budget what the answer meant. A job holds its slot from the moment its submit is
sent until the poller sees it end (:meth:`Admission.hold`).

Only answers that created nothing are retried (``retry_submit``'s rule): queue full and
429 (the budget has paused and shrunk), and an account leaving the rotation while another
one is usable. A submit whose outcome is unknown keeps its slot for about a job's
lifetime, since the job may exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import anyio

from ._budgets import Budget, Lease, account_unusable
from .errors import (
    ConfigurationError,
    NoUsableAccountError,
    QueueFullError,
    QuickMJError,
    RateLimitError,
    SubmitOutcomeUnknownError,
)

if TYPE_CHECKING:
    from ._models import SubmitResult
    from ._poller import Poller

__all__ = ("Admission", "SendPhase", "submit_with")

T = TypeVar("T")


class SendPhase:
    """Where a submit made with admission stands, shared by its Submission and its sender.

    ``on_wire`` is False while the submit waits for a slot (nothing was sent: cancelling
    the caller drops it) and True from the moment it may reach the relay (then it runs
    to its answer whatever happens to the caller). ``lease`` is a slot reserved for it
    beforehand (``AccountPool.reserve``).
    """

    __slots__ = ("lease", "on_wire")

    def __init__(self) -> None:
        self.on_wire: bool = False
        self.lease: Lease | None = None


class Admission:
    """Hands out slots of one or more budgets, first come first served.

    One waiter at a time (the head of a FIFO lock) looks for a free slot, least loaded
    budget first, and sleeps until a budget reports a change or a pause ends: thousands of
    waiting submits cost nothing. Accepted jobs keep their slot until the poller reports
    them final (:meth:`hold`).
    """

    def __init__(self, budgets: Sequence[Budget]) -> None:
        if not budgets:
            raise ConfigurationError("an admission gate needs at least one budget")
        self.budgets: tuple[Budget, ...] = tuple(budgets)
        """The budgets this gate hands slots of."""
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._holders: set[asyncio.Task[None]] = set()
        for budget in self.budgets:
            budget.subscribe(self._changed.set)

    def __repr__(self) -> str:
        return f"<Admission {', '.join(repr(b) for b in self.budgets)}>"

    async def acquire(self) -> Lease:
        """Wait for a free slot (cancellable: nothing is taken until it returns).

        Raises:
            NoUsableAccountError: every budget is out of rotation.
        """
        async with self._lock:
            while True:
                self._changed.clear()
                usable = [b for b in self.budgets if b.disabled is None]
                if not usable:
                    reasons = "; ".join(f"{b.label}: {b.disabled}" for b in self.budgets)
                    raise NoUsableAccountError(f"no account left in rotation ({reasons})")
                for budget in sorted(usable, key=lambda b: b.load()):
                    lease = await budget.take()
                    if lease is not None:
                        return lease
                await self._sleep(usable)

    async def _sleep(self, usable: Sequence[Budget]) -> None:
        """Until a budget reports a change, or the earliest moment one may have room.

        Meanwhile the jobs holding the budgets' slots are read as they are due to end
        (a slot is freed when the poller sees its job end).
        """
        wake = [t for b in usable if (t := b.retry_at()) is not None]
        delay = max(0.0, min(wake) - time.monotonic()) if wake else math.inf
        for budget in usable:
            budget.waiter_arrived()
        try:
            with anyio.move_on_after(delay):
                await self._changed.wait()
        finally:
            now = time.monotonic()
            for budget in usable:
                budget.waiter_left(now)

    async def run(self, attempt: Callable[[Lease], Awaitable[T]], phase: SendPhase) -> T:
        """Send with a slot, waiting for one first; again after answers that created nothing.

        Args:
            attempt: sends once with the lease and reports the answer to its budget
                (:func:`submit_with`); raises QueueFullError/RateLimitError when refused.
            phase: marked on the wire from the moment a slot is taken. A lease already in
                it (reserved by the caller) is used once, without retrying.

        Returns:
            What ``attempt`` returned.
        """
        if phase.lease is not None:
            phase.on_wire = True
            return await attempt(phase.lease)
        while True:
            phase.on_wire = False
            lease = await self.acquire()
            phase.on_wire = True
            try:
                return await attempt(lease)
            except (QueueFullError, RateLimitError):
                continue  # nothing was created; the budget has paused and shrunk
            except QuickMJError as exc:
                if not (account_unusable(exc) and lease.budget.disabled and self._others(lease)):
                    raise
                # The account left the rotation and created nothing: another one may take it.

    def _others(self, lease: Lease) -> bool:
        return any(b is not lease.budget and b.disabled is None for b in self.budgets)

    def hold(self, poller: Poller, task_id: str, lease: Lease) -> None:
        """Keep ``lease`` until the poller reports the task final (or the client closes)."""
        task = asyncio.get_running_loop().create_task(
            _hold(poller, task_id, lease), name=f"quickmj-slot-{task_id}"
        )
        self._holders.add(task)
        task.add_done_callback(self._holders.discard)

    async def aclose(self) -> None:
        """End the holders (after the poller closed, they end by themselves)."""
        holders = list(self._holders)
        for task in holders:
            task.cancel()
        if holders:
            await asyncio.gather(*holders, return_exceptions=True)
        for budget in self.budgets:
            await budget.aclose()


async def _hold(poller: Poller, task_id: str, lease: Lease) -> None:
    try:
        sub = poller.subscribe([task_id])
        lease.budget.watch(lease, poller, task_id)
        try:
            await sub.next()  # the final state (or the error the id ended with)
        finally:
            sub.close()
    except QuickMJError:
        pass  # the client closed: the slot goes with it
    finally:
        lease.budget.unwatch(lease)
        lease.budget.release(lease)


async def submit_with(
    lease: Lease,
    send: Callable[[], Awaitable[SubmitResult]],
    hold: Callable[[str, Lease], None],
) -> SubmitResult:
    """Send one submit with ``lease`` and tell its budget what the answer means.

    Args:
        lease: the slot the submit uses.
        send: sends the submit once (``Relay.submit``).
        hold: keeps the slot of an accepted job until it ends (``Admission.hold``).

    Returns:
        The relay's answer.

    Raises:
        Whatever ``send`` raised; the slot was freed (refused, rejected) or kept (unknown).
    """
    budget = lease.budget
    try:
        result = await send()
    except (QueueFullError, RateLimitError) as exc:
        retry_after = exc.retry_after if isinstance(exc, RateLimitError) else None
        budget.refused(lease, retry_after=retry_after, rate_limited=isinstance(exc, RateLimitError))
        raise
    except SubmitOutcomeUnknownError:
        budget.unknown(lease)
        raise
    except QuickMJError as exc:
        budget.rejected(lease, exc)
        raise
    except BaseException:
        with contextlib.suppress(RuntimeError):  # no loop left to time the hold
            budget.unknown(lease)
        raise
    budget.accepted(lease, result.task_id)
    if result.needs_modal:
        budget.release(lease)  # waits for the user's modal(), not in the relay's queue
    else:
        hold(result.task_id, lease)
    return result
