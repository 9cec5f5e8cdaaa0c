"""notifyHook delivery: one background task per hooked job, sleeping until each change.

Like the proxies (novicezk ``NotifyServiceImpl``, TrueAI ``NotifyService``): POST the task
JSON at SUBMITTED, each progress step and the end; no retries, failures only logged; a
delivery may be dropped (seeded ``hook_drop_rate``). The body is whatever the dialect's
renderer gives for that phase, so it has the dialect's exact shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

import aiohttp

from ._clock import Clock
from ._state import Phase, SimTask, Timeline

__all__ = ("HookDelivery", "HookDispatcher")

logger = logging.getLogger("quickmj.testing.sim")

HookDelivery = tuple[str, str, Phase]  # (task id, url, phase) of one attempted delivery


class HookDispatcher:
    """Owns one aiohttp session between :meth:`start` and :meth:`close`."""

    def __init__(
        self,
        clock: Clock,
        timeline: Timeline,
        render: Callable[[SimTask, Phase], bytes],
        *,
        drop_rate: float,
        timeout: float,
    ) -> None:
        self._clock = clock
        self._timeline = timeline
        self._render = render
        self._drop_rate = drop_rate
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._wakeup: asyncio.Event | None = None
        #: Deliveries attempted (sent, whatever the receiver answered).
        self.sent: list[HookDelivery] = []
        #: Deliveries skipped by the hook-drop fault.
        self.dropped: list[HookDelivery] = []
        clock.on_advance(self._clock_moved)

    @property
    def pending(self) -> int:
        """Jobs whose deliveries are not finished yet."""
        return len(self._pending)

    async def start(self) -> None:
        """Open the session deliveries use (when the app starts)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout)
            )
            self._wakeup = asyncio.Event()

    async def close(self) -> None:
        """Cancel pending deliveries and close the session."""
        pending, self._pending = self._pending, set()
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _clock_moved(self) -> None:
        # advance() jumped the clock: wake every sleeper so it re-reads the time.
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = asyncio.Event()

    def schedule(self, task: SimTask, url: str | None) -> None:
        """Start delivering ``task``'s changes to ``url`` (the job must be activated)."""
        if self._session is None or not url:
            return
        job = asyncio.get_running_loop().create_task(self._deliver(task, url))
        self._pending.add(job)
        job.add_done_callback(self._pending.discard)

    async def _sleep_until(self, at: float) -> None:
        while (delay := at - self._clock.now()) > 0:
            event = self._wakeup
            if event is None:
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), delay)

    async def _deliver(self, task: SimTask, url: str) -> None:
        rng = random.Random(task.hook_seed)
        activated = task.activated_at
        for at, phase in self._timeline.transitions(task):
            await self._sleep_until(at)
            if task.activated_at != activated or (
                task.cancel_at is not None and at >= task.cancel_at
            ):
                return  # re-queued or cancelled: this timeline no longer applies
            record = (task.id, url, phase)
            if self._drop_rate and rng.random() < self._drop_rate:
                self.dropped.append(record)
                continue
            self.sent.append(record)
            await self._post(url, self._render(task, phase))

    async def _post(self, url: str, body: bytes) -> None:
        session = self._session
        if session is None:
            return
        try:
            async with session.post(
                url, data=body, headers={"Content-Type": "application/json"}
            ) as resp:
                await resp.read()
                logger.debug("notifyHook %s -> HTTP %d", url, resp.status)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            logger.debug("notifyHook %s failed: %r", url, exc)
