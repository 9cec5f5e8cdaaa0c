"""Test doubles: scripted relays behind quickmj's transport seam (MockTransport).

``FakeRelay`` answers list-by-condition, fetch, image-seed, cancel, the task list and
submits with hand-written wire JSON (never through quickmj's converter, so a converter
bug cannot hide behind it). Tasks finish after ``ticks`` reads; ``mangle``, ``mangle_raw``,
``raise_for`` and ``fetch_answer`` let tests bend the answers.

``Script`` is a route table for exact answers (``"GET /mj/task/1/fetch"`` -> a list of
answers served in order, the last one repeating), the MockTransport counterpart of
aioresponses' ``m.get(url, payload=...)``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import unquote

from quickmj import AsyncClient, Client, PollPolicy, RetryPolicy, Task, TaskStatus
from quickmj.testing import MockTransport, Request, Response, RunningSimulator

BASE = "http://relay.test"
KEY = "test-key"
FAST = PollPolicy(
    interval=0.01, first_poll=0.005, near_done_interval=0.01, miss_limit=2, adaptive=False
)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
#: Retries without waiting (the delays themselves are tested with a sleep spy).
NO_WAIT = RetryPolicy(backoff=0, max_backoff=0, max_attempts=3)


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


def task_id_in(path: str) -> str:
    """The (decoded) id of ``/task/<id>/<tail>``."""
    return unquote(path.split("/")[2])


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
        self.cancelled: list[str] = []
        self.seeds: dict[str, str] = {}
        self.unknown: set[str] = set()
        self.requests: list[Request] = []
        #: Bend a list answer (tasks); ``mangle_raw`` bends the JSON rows after that.
        self.mangle: Callable[[list[str], list[Task]], list[Task]] | None = None
        self.mangle_raw: Callable[[list[str], list[dict[str, Any]]], list[Any]] | None = None
        #: An exception to raise for a list request (a failing chunk), or None.
        self.raise_for: Callable[[list[str]], BaseException | None] | None = None
        #: Answer a fetch yourself (None: the relay's own answer).
        self.fetch_answer: Callable[[str], Response | None] | None = None
        #: Answer a submit yourself: ``(route, body) -> Response`` (None: code 1, a new id).
        self.submit_answer: Callable[[str, dict[str, Any]], Response | None] | None = None
        self._next_id = 1000

    def state(self, task_id: str) -> Task:
        n = self.reads[task_id] = self.reads.get(task_id, 0) + 1
        if task_id in self.modal:
            return Task(id=task_id, status=TaskStatus.MODAL)
        if n >= self.ticks:
            if task_id in self.fail:
                return Task(id=task_id, status=TaskStatus.FAILURE, progress="", fail_reason="boom")
            image = f"{BASE}/img/{task_id}.png"
            return Task(id=task_id, status=TaskStatus.SUCCESS, progress="100%", image_url=image)
        return Task(id=task_id, status=TaskStatus.IN_PROGRESS, progress=f"{n * 20}%")

    def handle(self, request: Request) -> Response:
        """The MockTransport handler: one relay route per branch."""
        self.requests.append(request)
        path = request.path.removeprefix("/mj")
        if path == "/task/list-by-condition":
            return self._list(list((request.json() or {}).get("ids") or []))
        if path == "/task/list":
            return Response(200, json=[wire(self.state(i)) for i in self.reads])
        if path.startswith("/task/") and path.endswith("/fetch"):
            return self._fetch(task_id_in(path))
        if path.startswith("/task/") and path.endswith("/image-seed"):
            task_id = task_id_in(path)
            if task_id in self.unknown:
                return Response(400, json={"code": 4, "description": "task_no_found "})
            return Response(200, json={"code": 1, "result": self.seeds.get(task_id, "42")})
        if path.startswith("/task/") and path.endswith("/cancel"):
            self.cancelled.append(task_id_in(path))
            return Response(200)
        if request.path.startswith("/img/"):
            return Response(200, headers={"Content-Type": "image/png"}, content=PNG)
        if path == "/submit/upload-discord-images":
            count = len((request.json() or {}).get("base64Array") or [])
            urls = [f"https://cdn.test/up/{i}.png" for i in range(count)]
            return Response(200, json={"code": 1, "description": "ok", "result": urls})
        if path.startswith(("/submit/", "/insight-face/")):
            body = request.json() or {}
            self.submits.append({"route": path, **body})
            if self.submit_answer is not None:
                answer = self.submit_answer(path, body)
                if answer is not None:
                    return answer
            self._next_id += 1
            return Response(
                200, json={"code": 1, "description": "ok", "result": str(self._next_id)}
            )
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
        rows: list[Any] = [wire(t) for t in out]
        if self.mangle_raw is not None:
            rows = self.mangle_raw(ids, rows)
        return Response(200, content=json.dumps(rows).encode())

    def _fetch(self, task_id: str) -> Response:
        self.fetch_calls.append(task_id)
        if self.fetch_answer is not None:
            answer = self.fetch_answer(task_id)
            if answer is not None:
                return answer
        if task_id in self.unknown:
            return Response(200, content=b"")  # OSS-Java's "unknown id"
        return Response(200, json=wire(self.state(task_id)))


def make_client(relay: FakeRelay, policy: PollPolicy = FAST, **kwargs: Any) -> AsyncClient:
    """An AsyncClient whose requests are answered by ``relay`` (no network)."""
    kwargs.setdefault("base_url", BASE)
    return AsyncClient(KEY, poll=policy, transport=MockTransport(relay.handle), **kwargs)


def make_sync(relay: FakeRelay, policy: PollPolicy = FAST, **kwargs: Any) -> Client:
    """The blocking Client over ``relay``."""
    kwargs.setdefault("base_url", BASE)
    return Client(KEY, poll=policy, transport=MockTransport(relay.handle), **kwargs)


# ---- retry pauses ----


class SleepSpy:
    """Stands in for the retry sleep: records each delay, returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def spy_on(mj: AsyncClient) -> SleepSpy:
    """Make ``mj``'s retry and backoff pauses return at once, recording each delay.

    AsyncClient has no public clock: this is the one place the tests reach for the pause
    (``_http.sleep``), so a refactor of it changes one line here."""
    spy = SleepSpy()
    mj._http.sleep = spy  # type: ignore[method-assign]
    return spy


# ---- the relay simulator ----

#: Polling for tests against the simulator (``simulate``, ``quickmj_relay``): quick, and
#: without learning a refresh beat from identical answers.
SIM_POLL = PollPolicy(interval=0.05, first_poll=0.02, near_done_interval=0.02, adaptive=False)


def sim_client(relay: RunningSimulator, key: str | None = None, **kwargs: Any) -> AsyncClient:
    """An AsyncClient of a running simulator: its key (or ``key``), URL and dialect, polling
    with ``SIM_POLL`` unless ``poll=`` says otherwise."""
    kwargs.setdefault("poll", SIM_POLL)
    return AsyncClient(
        relay.api_key if key is None else key,
        base_url=relay.base_url,
        dialect=relay.dialect,
        **kwargs,
    )


# ---- exact answers by route ----

#: One answer: a dict of Response arguments (``status``, ``json``, ``body``, ``headers``,
#: ``chunks``, ``delay``), an exception to raise, or ``handler(request) -> Response``.
Spec = Any


class Script:
    """A MockTransport handler from a route table: ``"METHOD /path"`` -> answers.

    A list of answers is served in order and its last answer repeats. A request for a
    route the table does not have fails the test (AssertionError from the transport).
    ``calls`` lists ``"METHOD /path"`` per request, ``requests`` the requests themselves.
    """

    def __init__(self, routes: Mapping[str, Spec] | None = None) -> None:
        self._routes: dict[str, list[Spec]] = {}
        self.requests: list[Request] = []
        for key, answers in (routes or {}).items():
            self.add(key, *(answers if isinstance(answers, list) else [answers]))

    def add(self, key: str, *answers: Spec) -> Script:
        """Queue more answers for ``key`` (``"POST /mj/submit/imagine"``)."""
        self._routes.setdefault(key, []).extend(answers)
        return self

    @property
    def calls(self) -> list[str]:
        return [f"{r.method} {r.path}" for r in self.requests]

    def count(self, key: str) -> int:
        return self.calls.count(key)

    def bodies(self, key: str) -> list[Any]:
        """The JSON bodies sent to ``key``."""
        return [r.json() for r in self.requests if f"{r.method} {r.path}" == key]

    def body(self, key: str) -> Any:
        (only,) = self.bodies(key)
        return only

    async def __call__(self, request: Request) -> Response:
        self.requests.append(request)
        key = f"{request.method} {request.path}"
        queue = self._routes.get(key)
        if not queue:
            raise AssertionError(f"unexpected request {key}")
        spec = queue.pop(0) if len(queue) > 1 else queue[0]
        return await answer(spec, request)

    def transport(self) -> MockTransport:
        return MockTransport(self)

    def client(self, **kwargs: Any) -> AsyncClient:
        """An AsyncClient over this script (base http://relay.test, retries without waits)."""
        kwargs.setdefault("base_url", BASE)
        kwargs.setdefault("retry", NO_WAIT)
        return AsyncClient(kwargs.pop("api_key", KEY), transport=self.transport(), **kwargs)


async def answer(spec: Spec, request: Request) -> Response:
    """The Response (or raised exception) a spec describes."""
    if isinstance(spec, BaseException):
        raise spec
    if callable(spec):
        result = spec(request)
        return await result if inspect.isawaitable(result) else result
    spec = dict(spec)
    delay = spec.pop("delay", 0)
    if delay:
        await asyncio.sleep(delay)
    chunks = spec.pop("chunks", None)
    body = spec.pop("body", None)
    if isinstance(body, str):
        body = body.encode()
    if chunks is not None:
        return Response(
            spec.pop("status", 200),
            headers=spec.pop("headers", {}),
            stream=stream(chunks, spec.pop("gap", 0)),
        )
    return Response(
        spec.pop("status", 200),
        headers=spec.pop("headers", {}),
        content=body,
        json=spec.pop("json", None),
    )


async def stream(chunks: Iterable[bytes], gap: float = 0) -> AsyncIterator[bytes]:
    """Chunks of a body, ``gap`` seconds apart (a dripping server)."""
    for chunk in chunks:
        if gap:
            await asyncio.sleep(gap)
        yield chunk


def drip(byte: bytes = b" ", gap: float = 0.02) -> Callable[[Request], Awaitable[Response]]:
    """A handler that answers 200 and then sends one byte every ``gap`` seconds, forever."""

    async def forever() -> AsyncIterator[bytes]:
        while True:
            await asyncio.sleep(gap)
            yield byte

    async def handler(request: Request) -> Response:
        return Response(200, headers={"Content-Type": "application/json"}, stream=forever())

    return handler


def can_mount_privately() -> bool:
    """A private mount namespace (``unshare -rm``) where this user may mount a tmpfs."""
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    try:
        probe = subprocess.run(
            ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null"],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0
