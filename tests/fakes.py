"""Test doubles: a scripted relay behind quickmj's transport seam (MockTransport).

``FakeRelay`` answers list-by-condition, fetch and submits with hand-written wire JSON
(never through quickmj's converter, so a converter bug cannot hide behind it). Tasks
finish after ``ticks`` reads; ``mangle`` and ``raise_for`` let tests bend the answers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from quickmj import AsyncClient, Task, TaskStatus
from quickmj._poller import PollPolicy
from quickmj.testing import MockTransport, Request, Response

FAST = PollPolicy(
    interval=0.01, first_poll=0.005, near_done_interval=0.01, miss_limit=2, adaptive=False
)


def wire(task: Task) -> dict[str, Any]:
    """The JSON a relay would send for ``task`` (written by hand, not by the converter)."""
    out: dict[str, Any] = {"id": task.id, "status": task.status.value}
    if task.progress is not None:
        out["progress"] = task.progress
    if task.fail_reason is not None:
        out["failReason"] = task.fail_reason
    if task.image_url is not None:
        out["imageUrl"] = task.image_url
    return out


class FakeRelay:
    """Tasks finish after ``ticks`` reads; hooks let tests bend the answers."""

    def __init__(
        self,
        ticks: int = 3,
        fail: set[str] | frozenset[str] = frozenset(),
        modal: set[str] | frozenset[str] = frozenset(),
    ) -> None:
        self.ticks = ticks
        self.fail = set(fail)
        self.modal = set(modal)
        self.reads: dict[str, int] = {}
        self.list_calls: list[list[str]] = []
        self.fetch_calls: list[str] = []
        self.submits: list[dict[str, Any]] = []
        self.unknown: set[str] = set()
        self.mangle: Callable[[list[str], list[Task]], list[Task]] | None = None
        self.raise_for: Callable[[list[str]], BaseException | None] | None = None
        self._next_id = 1000

    def state(self, task_id: str) -> Task:
        n = self.reads[task_id] = self.reads.get(task_id, 0) + 1
        if task_id in self.modal:
            return Task(id=task_id, status=TaskStatus.MODAL)
        if n >= self.ticks:
            if task_id in self.fail:
                return Task(id=task_id, status=TaskStatus.FAILURE, progress="", fail_reason="boom")
            return Task(id=task_id, status=TaskStatus.SUCCESS, progress="100%")
        return Task(id=task_id, status=TaskStatus.IN_PROGRESS, progress=f"{n * 20}%")

    def handle(self, request: Request) -> Response:
        """The MockTransport handler: one relay route per branch."""
        path = request.path.removeprefix("/mj")
        if path == "/task/list-by-condition":
            return self._list(list((request.json() or {}).get("ids") or []))
        if path.startswith("/task/") and path.endswith("/fetch"):
            return self._fetch(path.split("/")[2])
        if path.startswith("/submit/"):
            self.submits.append({"route": path, **(request.json() or {})})
            self._next_id += 1
            return Response(200, json={"code": 1, "description": "ok", "result": str(self._next_id)})
        return Response(404)

    def _list(self, ids: list[str]) -> Response:
        self.list_calls.append(ids)
        if self.raise_for is not None:
            exc = self.raise_for(ids)
            if exc is not None:
                raise exc
        out = [self.state(i) for i in ids if i not in self.unknown]
        out.reverse()  # relays do not keep the order
        if self.mangle is not None:
            out = self.mangle(ids, out)
        return Response(200, content=json.dumps([wire(t) for t in out]).encode())

    def _fetch(self, task_id: str) -> Response:
        from urllib.parse import unquote

        task_id = unquote(task_id)
        self.fetch_calls.append(task_id)
        if task_id in self.unknown:
            return Response(200, content=b"")  # OSS-Java's "unknown id"
        return Response(200, json=wire(self.state(task_id)))


def make_client(relay: FakeRelay, policy: PollPolicy = FAST, **kwargs: Any) -> AsyncClient:
    """An AsyncClient whose requests are answered by ``relay`` (no network)."""
    return AsyncClient(
        "test-key", base_url="http://relay.test", poll=policy, transport=MockTransport(relay.handle),
        **kwargs,
    )
