"""The default transport: aiohttp. The only module that imports aiohttp for API calls.

It is imported when the first client is built without a ``transport=`` of its own, so
``import quickmj`` (and ``quickmj --help``) never pays for aiohttp's import.

Errors: every aiohttp or socket failure becomes a quickmj transport error here, built
outside the ``except`` block, so no user-visible exception chains an aiohttp exception
(those hold the request, headers included); messages pass through the request's
:meth:`Headers.redact`, so a server that echoes the key into a status line or a
malformed header cannot put it into ``str(exc)``.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import yarl

from ._transport import Request, Response
from .errors import ClientClosedError, ConnectError, RequestTimeoutError, TransportError

__all__ = ("AiohttpTransport", "BaseConnector", "ClientSession", "TraceConfig")

# The aiohttp types the client's options accept (re-exported for annotations elsewhere).
BaseConnector = aiohttp.BaseConnector
ClientSession = aiohttp.ClientSession
TraceConfig = aiohttp.TraceConfig


class AiohttpTransport:
    """An :class:`~quickmj.AsyncTransport` over one lazily created ``aiohttp.ClientSession``.

    Args:
        max_connections: size of the connection pool (ignored with ``connector``/``session``).
        trust_env: use the proxies the environment names (``HTTP_PROXY``, ``HTTPS_PROXY``,
            ``ALL_PROXY``, ``NO_PROXY``), as httpx-based SDKs do by default. (Read once per
            host, here: aiohttp's own ``trust_env`` would also look up ``.netrc`` in a
            worker thread on every request.)
        proxy: an explicit proxy URL for every request (wins over the environment).
        ssl: an ``ssl.SSLContext``, or False to skip certificate checks (never in
            production), or None for aiohttp's default verification.
        connector: your own ``aiohttp.BaseConnector``; quickmj does not close it.
        session: your own ``aiohttp.ClientSession``; quickmj uses it as is (its timeouts,
            headers and proxy settings included) and never closes it. It must belong to
            the event loop the client runs on.
        trace_configs: ``aiohttp.TraceConfig`` objects for request tracing.
    """

    def __init__(
        self,
        *,
        max_connections: int = 64,
        trust_env: bool = True,
        proxy: str | None = None,
        ssl: ssl_module.SSLContext | bool | None = None,
        connector: aiohttp.BaseConnector | None = None,
        session: aiohttp.ClientSession | None = None,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ) -> None:
        self._max_connections = max_connections
        self._trust_env = trust_env
        self._proxy = proxy
        self._env_proxies: dict[tuple[str, str], str | None] = {}
        self._ssl: Any = True if ssl is None else ssl
        self._connector = connector
        self._trace_configs = list(trace_configs)
        self._session = session
        self._owns_session = session is None
        self._closed = False

    def __repr__(self) -> str:
        return f"<AiohttpTransport proxy={'set' if self._proxy else None}>"

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ClientClosedError("the client is closed")
        if self._session is None:
            # Created lazily: an aiohttp session binds to the loop running at creation.
            self._session = aiohttp.ClientSession(
                connector=self._connector or aiohttp.TCPConnector(limit=self._max_connections),
                connector_owner=self._connector is None,
                timeout=aiohttp.ClientTimeout(total=None),
                raise_for_status=False,
                # quickmj inflates bodies itself, with its size cap on the inflated bytes.
                auto_decompress=False,
                trust_env=False,  # proxies from the environment: see _proxy_for
                trace_configs=self._trace_configs or None,
            )
        return self._session

    async def handle_request(self, request: Request) -> Response:
        session = self._get_session()
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=request.connect_timeout, sock_read=request.read_timeout
        )
        error: BaseException | None = None
        resp: aiohttp.ClientResponse | None = None
        try:
            resp = await session.request(
                request.method,
                yarl.URL(request.url, encoded=True),
                # Rendered here, in the call: no local of ours holds the raw header.
                headers=request.headers.raw(),
                data=request.content,
                allow_redirects=False,
                timeout=timeout,
                proxy=self._proxy_for(request.url),
                ssl=self._ssl,
            )
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError) as exc:
            error = _map_error(exc, request)
        if error is not None or resp is None:
            raise error or TransportError("no response")  # outside the except block: no
            # aiohttp exception in the chain
        return Response(
            resp.status,
            headers=list(resp.headers.items()),
            stream=_body(resp, request),
            on_close=lambda: _release(resp),
        )

    def _proxy_for(self, url: str) -> str | None:
        """The proxy for ``url``: the explicit one, else the environment's (cached per
        scheme and host for the transport's life)."""
        if self._proxy is not None or not self._trust_env:
            return self._proxy
        parts = urllib.parse.urlsplit(url)
        key = (parts.scheme, parts.hostname or "")
        if key not in self._env_proxies:
            proxies = urllib.request.getproxies_environment()
            bypass = urllib.request.proxy_bypass_environment(parts.netloc, proxies)  # type: ignore[attr-defined]
            chosen = None if bypass else proxies.get(parts.scheme) or proxies.get("all")
            self._env_proxies[key] = chosen
        return self._env_proxies[key]

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None and self._owns_session and not session.closed:
            await session.close()
            # Let the connector's transports finish closing before the loop moves on.
            await asyncio.sleep(0)


def _release(resp: aiohttp.ClientResponse) -> None:
    if resp.content.at_eof():
        resp.release()  # the connection goes back to the pool
    else:
        resp.close()  # a body we stopped reading: the connection cannot be reused


async def _body(resp: aiohttp.ClientResponse, request: Request) -> AsyncIterator[bytes]:
    while True:
        error: BaseException | None = None
        chunk = b""
        try:
            chunk = await resp.content.readany()
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError) as exc:
            error = _map_error(exc, request, reading=True)
        if error is not None:
            raise error
        if not chunk:
            return
        yield chunk


def _where(request: Request) -> str:
    url = yarl.URL(request.url, encoded=True)
    return f"{request.method} {url.path}"


def _map_error(exc: BaseException, request: Request, *, reading: bool = False) -> BaseException:
    """The quickmj error for an aiohttp/socket failure (most specific first)."""
    where = _where(request)
    method, path = request.method, yarl.URL(request.url, encoded=True).path

    def text(message: str) -> str:
        return request.headers.redact(f"{where}: {message}")

    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ConnectError(text("timed out connecting to the relay"), method=method, path=path)
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.strerror or type(exc.os_error).__name__
        return ConnectError(
            text(f"cannot connect to {exc.host}:{exc.port}: {reason}"), method=method, path=path
        )
    if isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
        return RequestTimeoutError(
            text("the relay stopped sending (read timeout)"), method=method, path=path
        )
    if isinstance(exc, aiohttp.ClientPayloadError):
        return TransportError(text("the answer was cut off"), method=method, path=path)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return TransportError(
            text("the relay closed the connection without answering"), method=method, path=path
        )
    if isinstance(exc, ValueError) and not isinstance(exc, aiohttp.ClientError) and not reading:
        # aiohttp validates URLs and headers before sending anything.
        return ConnectError(text(f"invalid request: {exc}"), method=method, path=path)
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return TransportError(text(f"connection failed: {detail}"), method=method, path=path)
