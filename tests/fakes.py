"""Test doubles shared by the poller and facade tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quickmj import AsyncClient, Task, TaskNotFoundError, TaskStatus
from quickmj._converter import unstructure
from quickmj._poller import PollPolicy

FAST = PollPolicy(interval=0.01, first_poll=0.005, near_done_interval=0.01, miss_limit=2)


class FakeRelay:
    """Tasks finish after ``ticks`` reads; hooks let tests bend the answers."""

    def __init__(self, ticks: int = 3, fail: set[str] = frozenset(), modal: set[str] = frozenset()):
        self.ticks = ticks
        self.fail = set(fail)
        self.modal = set(modal)
        self.reads: dict[str, int] = {}
        self.list_calls: list[list[str]] = []
        self.fetch_calls: list[str] = []
        self.unknown: set[str] = set()
        self.mangle: Callable[[list[str], list[Task]], list[Task]] | None = None
        self.raise_for: Callable[[list[str]], BaseException | None] | None = None

    def state(self, task_id: str) -> Task:
        n = self.reads[task_id] = self.reads.get(task_id, 0) + 1
        if task_id in self.modal:
            return Task(id=task_id, status=TaskStatus.MODAL)
        if n >= self.ticks:
            if task_id in self.fail:
                return Task(id=task_id, status=TaskStatus.FAILURE, progress="", fail_reason="boom")
            return Task(id=task_id, status=TaskStatus.SUCCESS, progress="100%")
        return Task(id=task_id, status=TaskStatus.IN_PROGRESS, progress=f"{n * 20}%")

    async def list_tasks(self, ids: Any) -> list[Task]:
        ids = list(ids)
        self.list_calls.append(ids)
        if self.raise_for is not None:
            exc = self.raise_for(ids)
            if exc is not None:
                raise exc
        out = [self.state(i) for i in ids if i not in self.unknown]
        out.reverse()  # relays do not keep the order
        return self.mangle(ids, out) if self.mangle else out

    async def list_raw(self, ids: Any) -> list[Any]:
        """The same answer as JSON, as the poller reads it."""
        return [unstructure(t) for t in await self.list_tasks(ids)]

    async def fetch(self, task_id: Any) -> Task:
        task_id = str(task_id)
        self.fetch_calls.append(task_id)
        if task_id in self.unknown:
            raise TaskNotFoundError(task_id)
        return self.state(task_id)


def make_client(relay: FakeRelay, policy: PollPolicy = FAST) -> AsyncClient:
    client = AsyncClient("k", base_url="http://relay.test", poll=policy)
    # The poller reads through these two methods; the fake stands in for HTTP.
    client.list_tasks = relay.list_tasks  # type: ignore[method-assign]
    client._list_raw = relay.list_raw  # type: ignore[method-assign]
    client.fetch = relay.fetch  # type: ignore[method-assign]
    return client
