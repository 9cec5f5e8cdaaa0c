"""Blocking file work, run off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

__all__ = ("off_loop",)

T = TypeVar("T")


async def off_loop(fn: Callable[[], T]) -> T:
    """``fn()`` in the running loop's default executor.

    Not ``anyio.to_thread``: asyncio joins its default executor's threads when the loop
    closes, while anyio's worker threads are only told to stop, so a closed blocking
    ``Client`` could leave one behind for a moment.
    """
    return await asyncio.get_running_loop().run_in_executor(None, fn)
