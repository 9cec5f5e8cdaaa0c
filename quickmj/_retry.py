"""The one retry loop: reads, downloads and the narrow submit cases all go through it.

What may be retried is decided by the caller's rule (``_protocol.retry_read`` /
``retry_submit``); how long to wait by the :class:`~quickmj.RetryPolicy` (exponential
backoff with jitter, a server's ``Retry-After`` honoured within 1 s to 60 s and up to
``max_backoff``); how long the whole call may take by ``total`` (``Timeouts.total``):
each attempt keeps its own deadline, and the call with all its attempts and backoff
sleeps ends within ``total``. Each retry is logged at INFO with the attempt, the delay
and the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from ._config import RetryPolicy
from .errors import QuickMJError, RateLimitError, RequestTimeoutError

__all__ = ("retrying",)

logger = logging.getLogger("quickmj")

T = TypeVar("T")


class _Cut(Exception):
    """The call's deadline ended an attempt (internal to ``retrying``)."""


class _Deadline:
    """When one call (every attempt and sleep of it) must have ended."""

    def __init__(self, total: float | None) -> None:
        self.total = total
        self.ends = None if total is None else anyio.current_time() + total

    def left(self) -> float:
        """Seconds left (infinite without a total)."""
        return float("inf") if self.ends is None else self.ends - anyio.current_time()

    async def run(self, attempt: Callable[[], Awaitable[T]], *, cut: bool) -> T:
        """``attempt()``, ended by the deadline when ``cut`` (raises _Cut then)."""
        if self.ends is None or not cut:
            return await attempt()
        with anyio.move_on_after(max(0.0, self.left())):
            return await attempt()
        raise _Cut

    def error(self, what: str, attempts: int, last: QuickMJError | None) -> RequestTimeoutError:
        method, _, path = what.partition(" ")
        why = f"; the last: {type(last).__name__}" if last is not None else ""
        plural = "s" if attempts != 1 else ""
        return RequestTimeoutError(
            f"{what}: no complete answer within Timeouts.total={self.total:g} s "
            f"({attempts} attempt{plural}{why})",
            method=method if path else "",
            path=path,
        )


async def retrying(
    attempt: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    may_retry: Callable[[QuickMJError], bool],
    sleep: Callable[[float], Awaitable[None]],
    what: str,
    total: float | None = None,
    creates: bool = False,
) -> T:
    """Call ``attempt`` until it succeeds, the rule says no, or the attempts or time run out.

    Args:
        attempt: one try (bounded by its own per-request deadline).
        policy: how many attempts, and the delay between them.
        may_retry: whether an error may be followed by another attempt.
        sleep: the backoff sleep (the client's: ended by ``aclose``).
        what: ``"METHOD /path"`` for logs and errors.
        total: seconds for the whole call, attempts and sleeps included (None: no bound
            beyond the attempts'). A retry whose delay would end past it is not made.
        creates: the call may create a job (a submit). Its attempts are never cut by
            ``total`` (a cut attempt may have been sent: an unknown outcome); ``total``
            only stops further attempts, and the last error (which created nothing) is
            raised as it is.

    Raises:
        The last attempt's error; RequestTimeoutError naming ``Timeouts.total`` and the
        attempts made when ``total`` ended a read.
    """
    deadline = _Deadline(total)
    number = 0
    while True:
        number += 1
        try:
            return await deadline.run(attempt, cut=not creates)
        except _Cut:
            raise deadline.error(what, number, None) from None
        except QuickMJError as exc:
            if number >= policy.max_attempts or not may_retry(exc):
                raise
            retry_after = exc.retry_after if isinstance(exc, RateLimitError) else None
            delay = policy.delay(number, retry_after)
            if delay >= deadline.left():
                if creates:
                    raise
                raise deadline.error(what, number, exc) from exc
            logger.info(
                "retrying %s in %.2f s (attempt %d of %d): %s",
                what,
                delay,
                number + 1,
                policy.max_attempts,
                type(exc).__name__,
            )
        await sleep(delay)
