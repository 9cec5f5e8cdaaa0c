"""MockTransport: answer quickmj's requests from a function, for your own tests."""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .._transport import Request, Response

__all__ = ("Handler", "MockTransport")

Handler = Callable[[Request], "Response | Awaitable[Response | None] | None"]
"""``handler(request) -> Response`` (or a coroutine function); raising an exception such
as ``quickmj.ConnectError`` simulates a network failure. None means "not answered": the
list route ``wait()`` polls is then answered from the handler's ``/fetch`` answers, and any
other route fails loudly, naming itself."""

# The route wait()/as_completed() poll through (every relay serves it), below the prefix.
_LIST_ROUTE = "/task/list-by-condition"


class MockTransport:
    """An :class:`~quickmj.AsyncTransport` that answers every request from ``handler``.

    As ``httpx.MockTransport`` does::

        def handler(request: Request) -> Response | None:
            if request.path.endswith("/fetch"):
                return Response(200, json={"id": "1", "status": "SUCCESS"})
            return None  # not answered: see below

        async with AsyncClient("key", transport=MockTransport(handler)) as mj:
            task = await mj.fetch("1")
            task = await mj.wait("1")  # polls list-by-condition: answered from /fetch

    ``wait()``, ``as_completed()`` and a job's ``wait()`` read tasks through
    ``POST /task/list-by-condition``, not ``/fetch``: when the handler returns None for
    that route, the mock answers it with the handler's ``GET /task/{id}/fetch`` answers
    (the tasks it answers with 200). None for any other route is an error naming the
    route. :meth:`from_tasks` builds the whole router from a table of tasks.

    Every request is kept in ``requests`` (headers included; their repr hides the key).

    Args:
        handler: called with each :class:`~quickmj.Request`; returns a
            :class:`~quickmj.Response` (or an awaitable of one), or None for "not
            answered". An exception it raises reaches the client as the transport's
            failure (raise ``quickmj.ConnectError`` to simulate a network error).
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        """Every request handled so far, in order."""
        self.closed: bool = False
        """True once the client closed the transport."""

    def __repr__(self) -> str:
        return f"<MockTransport requests={len(self.requests)}>"

    @classmethod
    def from_tasks(
        cls,
        tasks: Mapping[str, Mapping[str, Any]] | Callable[[str], Mapping[str, Any] | None],
        *,
        fallback: Handler | None = None,
    ) -> MockTransport:
        """A mock relay that serves tasks: ``GET /task/{id}/fetch`` and the list route
        ``wait()`` polls, from a table of task JSON (the relay's camelCase fields).

        ::

            tasks = {"1": {"id": "1", "status": "SUCCESS", "progress": "100%"}}
            async with AsyncClient("key", transport=MockTransport.from_tasks(tasks)) as mj:
                task = await mj.wait("1")

        Args:
            tasks: task JSON by id; or a function ``id -> task JSON | None`` (read at each
                request, so a test can move a task along). An unknown id's fetch answers
                404 with code 3 ("task not found"), as TrueAI does.
            fallback: answers every other route (submits, image-seed, ...); without it
                such a request fails, naming the route.

        Returns:
            The transport.
        """
        lookup = tasks if callable(tasks) else tasks.get

        def handler(request: Request) -> Response | Awaitable[Response | None] | None:
            found = _fetched_id(request)
            if found is not None:
                task = lookup(found)
                if task is None:
                    return Response(404, json={"code": 3, "description": "task not found"})
                return Response(200, json=dict(task))
            if fallback is not None and not _is_list(request):
                return fallback(request)
            return None

        return cls(handler)

    async def handle_request(self, request: Request) -> Response:
        """Record the request in ``requests`` and answer it with the handler.

        Args:
            request: the request quickmj sends.

        Returns:
            The handler's response.

        Raises:
            TypeError: the handler returned something other than a Response.
        """
        self.requests.append(request)
        result = await self._answer(request)
        if result is None and _is_list(request):
            return await self._list_from_fetch(request)
        if result is None:
            # Loud: a poll that quietly gets nothing would only show as a wait() timeout.
            raise TypeError(
                f"MockTransport: the handler did not answer {request.method} {request.path}"
                " (it returned None); return a Response for it, e.g. Response(404)"
            )
        return result

    async def _answer(self, request: Request) -> Response | None:
        result = self.handler(request)
        if inspect.isawaitable(result):
            result = await result
        if result is not None and not isinstance(result, Response):
            raise TypeError(
                f"MockTransport: the handler returned {type(result).__name__}, not Response,"
                f" for {request.method} {request.path}"
            )
        return result

    async def _list_from_fetch(self, request: Request) -> Response:
        """list-by-condition answered from the handler's ``GET /task/{id}/fetch`` answers."""
        body = request.json()
        ids = body.get("ids") if isinstance(body, dict) else None
        base = request.url.split("?", 1)[0][: -len(_LIST_ROUTE)]
        rows: list[Any] = []
        for task_id in ids if isinstance(ids, list) else []:
            fetch = Request("GET", f"{base}/task/{task_id}/fetch", headers=request.headers)
            answer = await self._answer(fetch)
            if answer is None or answer.status != 200:
                continue  # an id the handler does not know: the relay leaves it out
            row = json.loads(b"".join([chunk async for chunk in answer.aiter_raw()]) or b"null")
            await answer.aclose()
            if isinstance(row, dict):
                rows.append(row)
        return Response(200, json=rows)

    async def aclose(self) -> None:
        """Mark the transport closed (nothing to release)."""
        self.closed = True


def _is_list(request: Request) -> bool:
    return request.method == "POST" and request.path.endswith(_LIST_ROUTE)


def _fetched_id(request: Request) -> str | None:
    """The id of a ``GET .../task/{id}/fetch``, else None."""
    parts = request.path.rstrip("/").split("/")
    if request.method != "GET" or len(parts) < 3 or parts[-1] != "fetch" or parts[-3] != "task":
        return None
    return parts[-2] or None
