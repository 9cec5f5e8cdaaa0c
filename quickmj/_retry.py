"""The one retry loop: reads, downloads and the narrow submit cases all go through it.

What may be retried is decided by the caller's rule (``_protocol.retry_read`` /
``retry_submit``); how long to wait by the :class:`~quickmj.RetryPolicy` (exponential
backoff with jitter, a server's ``Retry-After`` honoured up to ``max_backoff``). Each
retry is logged at INFO with the attempt, the delay and the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ._config import RetryPolicy
from .errors import QuickMJError, RateLimitError

__all__ = ("retrying",)

logger = logging.getLogger("quickmj")

T = TypeVar("T")


async def retrying(
    attempt: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    may_retry: Callable[[QuickMJError], bool],
    sleep: Callable[[float], Awaitable[None]],
    what: str,
) -> T:
    """Call ``attempt`` until it succeeds, the rule says no, or the attempts run out."""
    number = 0
    while True:
        number += 1
        try:
            return await attempt()
        except QuickMJError as exc:
            if number >= policy.max_attempts or not may_retry(exc):
                raise
            retry_after = exc.retry_after if isinstance(exc, RateLimitError) else None
            delay = policy.delay(number, retry_after)
            logger.info(
                "retrying %s in %.2f s (attempt %d of %d): %s",
                what,
                delay,
                number + 1,
                policy.max_attempts,
                type(exc).__name__,
            )
        await sleep(delay)
