"""MockTransport: answer quickmj's requests from a function, for your own tests."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

from .._transport import Request, Response

__all__ = ("Handler", "MockTransport")

Handler = Callable[[Request], "Response | Awaitable[Response]"]
"""``handler(request) -> Response`` (or a coroutine function); raising an exception such
as ``quickmj.ConnectError`` simulates a network failure."""


class MockTransport:
    """An :class:`~quickmj.AsyncTransport` that answers every request from ``handler``.

    As ``httpx.MockTransport`` does::

        def handler(request: Request) -> Response:
            if request.path.endswith("/fetch"):
                return Response(200, json={"id": "1", "status": "SUCCESS"})
            return Response(404)

        async with AsyncClient("key", transport=MockTransport(handler)) as mj:
            task = await mj.fetch("1")

    Every request is kept in ``requests`` (headers included; their repr hides the key).

    Args:
        handler: called with each :class:`~quickmj.Request`; returns a
            :class:`~quickmj.Response` (or an awaitable of one). An exception it raises
            reaches the client as the transport's failure (raise ``quickmj.ConnectError``
            to simulate a network error).
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        """Every request handled so far, in order."""
        self.closed: bool = False
        """True once the client closed the transport."""

    def __repr__(self) -> str:
        return f"<MockTransport requests={len(self.requests)}>"

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
        result = self.handler(request)
        if inspect.isawaitable(result):
            result = await result
        if not isinstance(result, Response):
            raise TypeError(
                f"the MockTransport handler returned {type(result).__name__}, not Response"
            )
        return result

    async def aclose(self) -> None:
        """Mark the transport closed (nothing to release)."""
        self.closed = True
