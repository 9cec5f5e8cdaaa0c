"""notifyHook delivery: one background task per hooked job, sleeping until each change."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import aiohttp

from ._state import Phase, SimTask, TaskStore

__all__ = ("HookDelivery", "HookDispatcher")

logger = logging.getLogger("quickmj.simulator")

HookDelivery = tuple[str, str, Phase]  # (task id, url, phase) of one attempted delivery


class HookDispatcher:
    """POSTs the task JSON to its notifyHook at SUBMITTED, each progress step and the end.

    Like the relays: no retries, failures only logged, a delivery may be dropped (seeded
    ``hook_drop_rate``). Owns one aiohttp session between ``start`` and ``close``.
    """

    def __init__(
        self,
        store: TaskStore,
        render: Callable[[SimTask, Phase], bytes],
        *,
        drop_rate: float,
        timeout: float,
    ) -> None:
        self._store = store
        self._render = render
        self._drop_rate = drop_rate
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._pending: set[asyncio.Task[None]] = set()
        #: Deliveries attempted (sent, whatever the receiver answered).
        self.sent: list[HookDelivery] = []
        #: Deliveries skipped by the hook-drop fault.
        self.dropped: list[HookDelivery] = []

    @property
    def pending(self) -> int:
        """Jobs whose hook deliveries are not finished yet."""
        return len(self._pending)

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout)
            )

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

    def schedule(self, task: SimTask) -> None:
        """Start delivering ``task``'s changes to its notifyHook (it must be activated)."""
        if self._session is None or not task.notify_hook:
            return
        job = asyncio.get_running_loop().create_task(self._deliver(task, task.notify_hook))
        self._pending.add(job)
        job.add_done_callback(self._pending.discard)

    async def _deliver(self, task: SimTask, url: str) -> None:
        rng = random.Random(task.hook_seed)
        clock = self._store.clock
        for at, phase in self._store.transitions(task):
            delay = at - clock()
            if delay > 0:
                await asyncio.sleep(delay)
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
