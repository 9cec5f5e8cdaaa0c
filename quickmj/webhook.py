"""notifyHook receiver: task updates pushed by the relay resolve waiters without polling.

Run it standalone::

    async with mj.webhook_receiver("0.0.0.0", 8099, public_url="https://me.example:8099"):
        task = await mj.imagine("a fox").wait()   # submitted with notifyHook set

or mount it into your own aiohttp application::

    receiver = WebhookReceiver(mj.poller.feed, public_url="https://me.example")
    receiver.mount(app)                 # adds POST /quickmj-hook/<secret token>
    mj.use_webhook(receiver)            # submits now carry the hook URL

While a receiver is active, every submit carries its URL as ``notifyHook`` (a
``notify_hook=`` argument still wins). Pushed tasks feed the client's poller; pushed ids
are polled only as a slow safety net (``PollPolicy.safety_net_interval``) and normally
again once pushes stop.

Hooks are untrusted input: the URL carries a random secret token (compared in constant
time; a wrong one gets 404 and nothing is processed); bodies are read whole up to a cap
within a deadline; malformed JSON or a wrong shape gets 400 with nothing changed; unknown
ids are ignored; duplicated or out-of-order hooks never move a task backwards; and a
pushed final state (SUCCESS, FAILURE or CANCEL) is checked with one read of the relay
before any waiter is woken: the hook URL is no secret from everyone (TrueAI shows it, in
``properties.notifyHook``, to every user who lists or fetches tasks), so a push alone
never ends a wait. That read is the cost of hooks: one per final push (progress pushes
cost nothing), batched with other due ids. ``verify=False`` believes pushes as they come
(unsafe wherever others can see the hook URL). The standalone server closes idle and
slow connections (a deadline for the headers and one for the body) and serves at most
``max_connections`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import anyio

from ._converter import loads, structure
from ._models import Task
from .errors import InvalidInputError, MalformedResponseError

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ("MAX_HOOK_BYTES", "Feed", "WebhookReceiver")

logger: logging.Logger = logging.getLogger("quickmj")

MAX_HOOK_BYTES = 1024 * 1024
"""Largest hook body accepted (a Task with buttons and properties is a few KiB)."""
_PREFIX = "/quickmj-hook/"
_MAX_HEADER_BYTES = 16 * 1024

Feed = Callable[..., bool]
"""What a receiver hands each pushed task to: ``feed(task, verify=...) -> tracked?``
(``AsyncClient.poller.feed``)."""


class WebhookReceiver:
    """Receives notifyHook POSTs and hands the tasks to ``feed`` (a client's poller).

    Args:
        feed: ``AsyncClient.poller.feed``.
        public_url: the address the relay can reach; by default the bound address.
        relay_url: the relay's base URL (kept for compatibility; not needed any more).
        verify: True (default) checks every pushed final state (SUCCESS, FAILURE,
            CANCEL) with one read of the relay before a waiter is woken; False believes
            pushes as they come: unsafe when others can see the hook URL (TrueAI lists it
            to every user), since anyone could then end your waits with a forged FAILURE.
        token: the secret part of the hook URL (random by default).
        max_body: the largest body accepted.
        header_timeout: seconds a request may take to send its headers.
        body_timeout: seconds a request may take to send its body.
        max_connections: connections served at once by :meth:`serve`.

    Raises:
        InvalidInputError: ``public_url`` is not an http(s) URL.
    """

    def __init__(
        self,
        feed: Feed,
        *,
        public_url: str | None = None,
        relay_url: str | None = None,
        verify: bool = True,
        token: str | None = None,
        max_body: int = MAX_HOOK_BYTES,
        header_timeout: float = 10.0,
        body_timeout: float = 10.0,
        max_connections: int = 100,
    ) -> None:
        if public_url is not None and not public_url.startswith(("http://", "https://")):
            raise InvalidInputError("public_url must be the http(s) address the relay can reach")
        self._feed = feed
        self._token = token or secrets.token_urlsafe(24)
        self._public_url = public_url.rstrip("/") if public_url else None
        self._verify = verify is not False  # None (the former default) checks too
        self.max_body = max_body
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_connections = max_connections
        self._open = 0
        self.stats: dict[str, int] = {
            "accepted": 0,
            "rejected": 0,
            "unknown": 0,
            "verified": 0,
            "dropped": 0,
        }
        """Counters for tests and benchmarks: ``accepted`` and ``verified`` hooks,
        ``rejected`` ones (wrong token, malformed, too large), ``unknown`` (untracked ids)
        and ``dropped`` connections (slow, idle, or over ``max_connections``)."""

    def __repr__(self) -> str:
        return f"<WebhookReceiver {self._public_url or '(not serving)'}{_PREFIX}***>"

    @property
    def url(self) -> str:
        """The notifyHook URL to give the relay (contains the secret token).

        Raises:
            InvalidInputError: there is no ``public_url`` yet (serve the receiver first).
        """
        if self._public_url is None:
            raise InvalidInputError("the receiver has no public_url yet (serve it first)")
        return f"{self._public_url}{_PREFIX}{self._token}"

    # ---- the one place a hook is judged ----

    def receive(self, path: str, body: bytes) -> int:
        """Judge one hook POST and feed its task to the poller; the status to answer.

        This is the one place a hook is judged, whatever server received it.

        Args:
            path: the request path (``/quickmj-hook/<token>``; a query is not expected).
            body: the whole request body.

        Returns:
            200 when the body is a task (tracked or not: unknown ids are ignored), 400 for
            a malformed body, 404 for a wrong token (nothing is processed then).
        """
        token = path[len(_PREFIX) :] if path.startswith(_PREFIX) else ""
        if not hmac.compare_digest(token.encode(), self._token.encode()):
            self.stats["rejected"] += 1
            return 404
        try:
            task = structure(loads(body), Task, what="hook")
        except (ValueError, RecursionError, MalformedResponseError) as exc:
            self.stats["rejected"] += 1
            logger.debug("rejected a malformed notifyHook body: %s", type(exc).__name__)
            return 400
        verify = self._needs_check(task)
        try:
            tracked = self._feed(task, verify=verify)
        except Exception:  # a closed client, say: the relay gets its 200 all the same
            tracked = False
        if not tracked:
            self.stats["unknown"] += 1
            logger.debug("notifyHook for untracked task %s ignored", task.id)
        else:
            self.stats["verified" if verify and task.status.is_terminal else "accepted"] += 1
        return 200

    def _needs_check(self, task: Task) -> bool:
        # Anyone who saw the hook URL can post to it: a final state is news only once
        # the relay confirms it (a progress push changes nothing that matters).
        return self._verify and task.status.is_terminal

    # ---- inside your own aiohttp application ----

    def mount(self, app: web.Application) -> None:
        """Add the receiver's route (``POST /quickmj-hook/{token}``) to an aiohttp app.

        Args:
            app: the ``aiohttp.web.Application`` to add the route to (before it starts).
        """
        app.router.add_post(_PREFIX + "{token}", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The aiohttp handler: reads the whole body (capped, with a deadline), then receives it.

        Args:
            request: the aiohttp request.

        Returns:
            The response: :meth:`receive`'s status, 413 for a body over ``max_body``, 408
            when the body takes longer than ``body_timeout``.
        """
        from aiohttp import web

        if request.content_length is not None and request.content_length > self.max_body:
            self.stats["rejected"] += 1
            return web.Response(status=413)
        try:
            with anyio.fail_after(self.body_timeout):
                body = await _read_capped(request.content.read, self.max_body)
        except TimeoutError:
            self.stats["dropped"] += 1
            return web.Response(status=408)
        if body is None:
            self.stats["rejected"] += 1
            return web.Response(status=413)
        return web.Response(status=self.receive(request.path, body), text="ok")

    # ---- a server of its own ----

    @contextlib.asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[WebhookReceiver]:
        """Serve this receiver on ``host:port`` for the ``async with`` block's duration.

        The port is bound first and read back (no race with another program); without a
        ``public_url`` the hook URL is ``http://host:<bound port>``. On exit the server
        stops and open connections are closed.

        Args:
            host: the address to listen on (``"0.0.0.0"`` to accept hooks from elsewhere).
            port: the port to listen on; 0 picks a free one.

        Yields:
            This receiver, serving (``url`` is set).

        Raises:
            OSError: the address cannot be bound.
        """
        connections: set[asyncio.Task[Any]] = set()

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            connections.add(task)
            try:
                await self._connection(reader, writer)
            finally:
                connections.discard(task)

        server = await asyncio.start_server(on_connect, host, port, limit=_MAX_HEADER_BYTES)
        bound = server.sockets[0].getsockname()[1]
        if self._public_url is None:
            shown = f"[{host}]" if ":" in host else host
            self._public_url = f"http://{shown}:{bound}"
        try:
            yield self
        finally:
            server.close()
            for task in list(connections):
                task.cancel()
            await asyncio.gather(*connections, return_exceptions=True)
            await server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= self.max_connections:
            self.stats["dropped"] += 1
            writer.close()
            return
        self._open += 1
        try:
            status = await self._one_request(reader)
            if status is not None:
                text = {
                    200: "OK",
                    400: "Bad Request",
                    404: "Not Found",
                    408: "Request Timeout",
                    411: "Length Required",
                    413: "Payload Too Large",
                }.get(status, "Error")
                body = b"ok" if status == 200 else text.encode()
                writer.write(
                    f"HTTP/1.1 {status} {text}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n".encode()
                    + body
                )
                with contextlib.suppress(OSError):
                    await asyncio.wait_for(writer.drain(), self.body_timeout)
        finally:
            self._open -= 1
            writer.close()
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _one_request(self, reader: asyncio.StreamReader) -> int | None:
        """Read one request (headers, then body) under deadlines; the status to answer."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.header_timeout)
        except (
            asyncio.TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            OSError,
        ):
            self.stats["dropped"] += 1
            return None  # slow, idle, oversized or gone: just close
        method, path, headers = _parse_head(head)
        if method != "POST" or not path.startswith(_PREFIX):
            self.stats["rejected"] += 1
            return 404
        length = headers.get("content-length", "")
        if not (length.isascii() and length.isdigit()):
            return 411
        if int(length) > self.max_body:
            self.stats["rejected"] += 1
            return 413
        try:
            body = await asyncio.wait_for(reader.readexactly(int(length)), self.body_timeout)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, OSError):
            self.stats["dropped"] += 1
            return None
        return self.receive(path, body)


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    method, path = (parts[0], parts[1]) if len(parts) == 3 else ("", "")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return method, path.split("?", 1)[0], headers


async def _read_capped(read: Callable[[int], Any], limit: int) -> bytes | None:
    """Read until EOF; None past ``limit`` bytes (bodies can arrive in many segments)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await read(64 * 1024)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
