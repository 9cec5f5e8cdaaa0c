"""The HTTP layer: one aiohttp session, auth, timeouts, retries and error mapping.

This is the only module that talks to aiohttp. It knows HTTP status codes and JSON, and the
one relay convention that rides on errors (a ``{code, description}`` body on a 4xx), but
nothing about what the endpoints mean.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import IO, Any, Final
from urllib.parse import urlsplit

import aiohttp
import anyio
import yarl

from ._config import AuthScheme, RetryPolicy, Secret, Timeouts, auth_headers
from ._version import __version__
from .errors import (
    BODY_EXCERPT_LIMIT,
    APIError,
    AuthenticationError,
    ClientClosedError,
    ConnectError,
    DownloadError,
    HTTPStatusError,
    MalformedResponseError,
    NotFoundError,
    QuickMJError,
    RateLimitError,
    RequestTimeoutError,
    ServerError,
    SubmitOutcomeUnknownError,
    TransportError,
    UnsafeURLError,
    excerpt,
)

__all__ = ("EMPTY", "Transport")

logger = logging.getLogger("quickmj")


class _Empty:
    """Marks an answer with no body (204, empty 200): the relay's "not found" for fetch."""

    def __repr__(self) -> str:
        return "EMPTY"


EMPTY: Final = _Empty()

#: Largest JSON answer quickmj reads (a list of 100 tasks is a few hundred KiB).
MAX_JSON_BYTES = 32 * 1024 * 1024
#: Largest image quickmj downloads.
MAX_DOWNLOAD_BYTES = 200 * 1024 * 1024
_MAX_REDIRECTS = 5
#: How long aclose() waits for the requests it ended to unwind (normally one loop turn).
_CLOSE_GRACE = 2.0
_CHUNK = 64 * 1024


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: either a number or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if seconds == seconds else None  # NaN check


class _Answer:
    """A completed HTTP exchange: status, headers and the (capped) body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class Transport:
    """Owns the aiohttp session of one client. Create and use it inside one event loop."""

    def __init__(
        self,
        *,
        api_key: Secret,
        base_url: str,
        mode: str | None,
        auth_scheme: AuthScheme,
        timeouts: Timeouts,
        retry: RetryPolicy,
        max_connections: int,
        user_agent: str | None = None,
        sleep: Callable[[float], Any] | None = None,
    ) -> None:
        self._key = api_key
        self.base_url = base_url
        self.prefix = f"/mj-{mode}/mj" if mode else "/mj"
        self._auth_scheme = auth_scheme
        self.timeouts = timeouts
        self.retry = retry
        self._max_connections = max_connections
        self._user_agent = user_agent or (
            f"quickmj/{__version__} aiohttp/{aiohttp.__version__} "
            f"python/{sys.version_info.major}.{sys.version_info.minor}"
        )
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        # One cancel scope per request (and retry sleep) in flight: aclose() cancels them
        # and waits (at most _CLOSE_GRACE) for _drained.
        self._in_flight: set[anyio.CancelScope] = set()
        self._drained: asyncio.Event | None = None
        self._sleep = sleep or anyio.sleep
        self._origin = _origin(base_url)
        self._root = str(yarl.URL(f"{base_url}{self.prefix}"))

    def __repr__(self) -> str:
        return f"<Transport {self.base_url}{self.prefix}>"

    # ---- lifecycle ----

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ClientClosedError("the client is closed")
        if self._session is None:
            # Created lazily: an aiohttp session binds to the loop running at creation.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                headers={"User-Agent": self._user_agent},
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self.timeouts.connect, sock_read=self.timeouts.read
                ),
                raise_for_status=False,
                auto_decompress=True,
            )
        return self._session

    @property
    def closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        self._closed = True
        with anyio.CancelScope(shield=True):  # a cancelled aclose still closes the session
            if self._in_flight:
                # End the requests in flight and let them unwind before their connections
                # go: closing the session under a response being read leaves that read
                # waiting for its timeout, or failing with a bare RuntimeError.
                self._drained = asyncio.Event()
                for scope in list(self._in_flight):
                    scope.cancel()
                with anyio.move_on_after(_CLOSE_GRACE):
                    await self._drained.wait()
            session, self._session = self._session, None
            if session is not None and not session.closed:
                await session.close()
                # Let the connector's transports finish closing before the loop moves on.
                await asyncio.sleep(0)

    # ---- requests ----

    @contextlib.contextmanager
    def _abortable(self) -> Iterator[anyio.CancelScope]:
        """Run a request (or a retry sleep) so that aclose() ends it with ClientClosedError.

        The yielded scope's ``cancelled_caught`` tells that it was ended that way.
        """
        if self._closed:
            raise ClientClosedError("the client is closed")
        scope = anyio.CancelScope()
        self._in_flight.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._in_flight.discard(scope)
            if not self._in_flight and self._drained is not None:
                self._drained.set()
        if scope.cancelled_caught:
            raise ClientClosedError("the client was closed during the request")

    async def sleep(self, delay: float) -> None:
        """A retry backoff; aclose() ends it with ClientClosedError."""
        with self._abortable():
            await self._sleep(delay)

    def url(self, path: str) -> yarl.URL:
        """The URL of ``path`` (already percent-encoded) under the base URL and mode prefix.

        Built pre-encoded, so a ``.`` or ``..`` segment (a task id) is sent as ``%2E`` and
        is never normalised away into another route.
        """
        segments = ["%2E" * len(s) if s in (".", "..") else s for s in path.split("/")]
        return yarl.URL(self._root + "/".join(segments), encoded=True)

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        idempotent: bool,
        read_timeout: float | None = None,
        request: Any = None,
        state: str | None = None,
    ) -> Any:
        """Send a request to the relay and return its parsed JSON body, or EMPTY.

        Idempotent requests are retried per the retry policy. A non-idempotent request (a
        submit) is retried only when it cannot have reached the relay (a failed connect);
        once it may have, a dropped connection, timeout or 5xx raises
        SubmitOutcomeUnknownError, carrying ``request`` and ``state``.
        """
        policy = self.retry
        attempt = 0
        while True:
            attempt += 1
            retry_after: float | None = None
            scope: anyio.CancelScope | None = None
            try:
                with self._abortable() as scope:
                    answer = await self._send(method, path, body, read_timeout)
                return self._decode(answer, path)
            except ClientClosedError as exc:
                if idempotent or scope is None or not scope.cancelled_caught:
                    raise  # a read, or closed before anything was sent
                raise SubmitOutcomeUnknownError(
                    f"{method} {path}: the client was closed before the answer came; "
                    "the relay may or may not have created the job",
                    method=method,
                    path=path,
                    request=request,
                    state=state,
                ) from exc
            except ConnectError:
                # Never sent: safe to retry for every kind of request.
                if attempt >= policy.max_attempts:
                    raise
            except (TransportError, ServerError) as exc:
                # Sent, but the answer was lost or is a gateway error: a submit may have
                # created a job, so it is never re-sent.
                if not idempotent:
                    what = (
                        f"HTTP {exc.status}"
                        if isinstance(exc, ServerError)
                        else str(exc).removeprefix(f"{method} {path}: ")  # said once is enough
                    )
                    raise SubmitOutcomeUnknownError(
                        f"{method} {path}: {what}; the relay may or may not have created the job",
                        method=method,
                        path=path,
                        request=request,
                        state=state,
                    ) from exc
                if attempt >= policy.max_attempts:
                    raise
            except RateLimitError as exc:
                if (not idempotent and not policy.retry_submits) or attempt >= policy.max_attempts:
                    raise
                retry_after = exc.retry_after
            delay = policy.delay(attempt, retry_after)
            logger.debug("retrying %s %s in %.2f s (attempt %d)", method, path, delay, attempt + 1)
            await self.sleep(delay)

    async def _send(self, method: str, path: str, body: Any, read_timeout: float | None) -> _Answer:
        session = self._get_session()
        extra: dict[str, Any] = {}
        if read_timeout is not None:
            extra["timeout"] = aiohttp.ClientTimeout(
                total=None, sock_connect=self.timeouts.connect, sock_read=read_timeout
            )
        headers = auth_headers(self._auth_scheme, self._key)
        headers["Accept"] = "application/json"
        started = time.perf_counter()
        status: int | str = "error"
        try:
            with _map_aiohttp_errors(method, path):
                async with session.request(
                    method,
                    self.url(path),
                    json=body,
                    headers=headers,
                    allow_redirects=False,
                    **extra,
                ) as resp:
                    status = resp.status
                    if resp.content_length is not None and resp.content_length <= MAX_JSON_BYTES:
                        raw = await resp.read()  # size known and acceptable: one read
                    else:
                        raw = await _read_capped(resp.content, MAX_JSON_BYTES, method, path)
                    # A relay that echoes the key (in an error text, say) must not hand it
                    # to error messages, descriptions or parsed fields: redact it first.
                    return _Answer(resp.status, resp.headers, self._key.redact_bytes(raw))
        finally:
            logger.debug(
                "%s %s -> %s in %.1f ms",
                method,
                path,
                status,
                (time.perf_counter() - started) * 1000,
            )

    def _decode(self, answer: _Answer, path: str) -> Any:
        """Map the HTTP status to errors; parse and return the JSON body (or EMPTY)."""
        data: Any = EMPTY
        parse_error: Exception | None = None
        if answer.status != 204 and answer.body.strip():
            try:
                data = json.loads(answer.body)
            except (ValueError, RecursionError) as exc:
                parse_error = exc
        if answer.status < 300 and parse_error is None:
            return data
        # Only failures pay for a (redacted) text excerpt of the body.
        text_excerpt = self._key.redact(excerpt(answer.body[: 4 * BODY_EXCERPT_LIMIT]))
        if answer.status >= 400:
            raise self._status_error(answer, path, data, text_excerpt)
        if answer.status >= 300:
            # Redirects are not followed (the key must not travel on); never read as "empty".
            location = answer.headers.get("Location")
            raise HTTPStatusError(
                f"{path}: the relay answered a redirect (HTTP {answer.status}) to "
                f"{_display_url(location) if location else 'no location'}; check base_url",
                status=answer.status,
                body=text_excerpt,
                path=path,
            )
        kind = "an HTML page" if answer.body.lstrip()[:1] == b"<" else "invalid JSON"
        raise MalformedResponseError(
            f"{path}: expected JSON, got {kind} (HTTP {answer.status}): {text_excerpt[:200]}",
            status=answer.status,
            body=text_excerpt,
            path=path,
        ) from parse_error

    def _status_error(self, answer: _Answer, path: str, data: Any, body: str) -> APIError:
        status = answer.status
        if status == 429:
            retry_after = parse_retry_after(answer.headers.get("Retry-After"))
            hint = f"; retry after {retry_after:g} s" if retry_after is not None else ""
            return RateLimitError(
                f"{path}: rate limited (HTTP 429){hint}",
                body=body,
                path=path,
                retry_after=retry_after,
            )
        if status >= 500:
            return ServerError(
                f"{path}: relay error HTTP {status}: {body[:200]}",
                status=status,
                body=body,
                path=path,
            )
        if status in (401, 403):
            # Whatever the body says (some gateways send {"code": 401, ...}): a key problem.
            return AuthenticationError(
                f"{path}: authentication failed (HTTP {status}): {body[:200] or 'no detail'}; "
                "check the API key and the auth_scheme",
                status=status,
                body=body,
                path=path,
            )
        # 4xx answers that carry a relay code (404 code 3, 400 code 4) are relay rejections.
        from ._responses import rejection_from_body  # local: _responses builds on errors only

        rejection = rejection_from_body(data, status=status, body=body, path=path)
        if rejection is not None:
            return rejection
        if status == 404:
            return NotFoundError(f"{path}: not found (HTTP 404)", status=404, body=body, path=path)
        return HTTPStatusError(
            f"{path}: HTTP {status}: {body[:200]}", status=status, body=body, path=path
        )

    # ---- downloads ----

    @contextlib.asynccontextmanager
    async def open_download(self, url: str) -> AsyncIterator[aiohttp.ClientResponse]:
        """GET an image URL, following redirects by hand.

        The auth header goes only to the relay's own origin: a CDN (or a redirect to one)
        never sees the key.
        """
        session = self._get_session()
        current = url
        for _ in range(_MAX_REDIRECTS + 1):
            check_download_url(current)
            headers = (
                auth_headers(self._auth_scheme, self._key)
                if (_origin(current) == self._origin)
                else {}
            )
            with _map_aiohttp_errors("GET", _display_url(current)):
                resp = await session.get(
                    current,
                    headers=headers,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(
                        total=None,
                        sock_connect=self.timeouts.connect,
                        sock_read=self.timeouts.download,
                    ),
                )
            try:
                if resp.status in (301, 302, 303, 307, 308):
                    location = resp.headers.get("Location")
                    if not location:
                        raise DownloadError(
                            f"redirect without Location from {_display_url(current)}"
                        )
                    current = str(resp.url.join(yarl.URL(location)))
                    continue
                if resp.status >= 400:
                    body = self._key.redact(excerpt(await resp.content.read(2048)))
                    if resp.status in (401, 403) and not headers:
                        # No key went there: not an AuthenticationError (an expired link).
                        raise HTTPStatusError(
                            f"{_display_url(current)}: the image host refused access "
                            f"(HTTP {resp.status}); the link may have expired",
                            status=resp.status,
                            body=body,
                            path=_display_url(current),
                        )
                    raise self._status_error(
                        _Answer(resp.status, resp.headers, body.encode()),
                        _display_url(current),
                        EMPTY,
                        body,
                    )
                with _map_aiohttp_errors("GET", _display_url(current)):
                    yield resp
                return
            finally:
                resp.release()
        raise DownloadError(f"too many redirects downloading {_display_url(url)}")

    async def download_to(self, url: str, fh: IO[bytes], max_bytes: int) -> str:
        """Stream ``url`` into ``fh``, retried per policy; returns the Content-Type."""
        attempt = 0
        while True:
            attempt += 1
            retry_after: float | None = None
            try:
                with self._abortable():
                    fh.seek(0)
                    fh.truncate()
                    async with self.open_download(url) as resp:
                        size = 0
                        async for chunk in resp.content.iter_chunked(_CHUNK):
                            size += len(chunk)
                            if size > max_bytes:
                                raise DownloadError(
                                    f"image larger than {max_bytes} bytes: {_display_url(url)}"
                                )
                            fh.write(chunk)
                        return resp.headers.get("Content-Type", "")
            except (TransportError, ServerError, RateLimitError) as exc:
                if attempt >= self.retry.max_attempts:
                    raise
                if isinstance(exc, RateLimitError):
                    retry_after = exc.retry_after
            await self.sleep(self.retry.delay(attempt, retry_after))


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return (parts.scheme.lower(), (parts.hostname or "").lower(), port)


def _display_url(url: str) -> str:
    """A URL without its query string (Discord signs URLs there; logs need not carry it)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def check_download_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeURLError(f"refusing to download {url[:100]!r}: only http(s) URLs are fetched")
    if parts.username or parts.password:
        raise UnsafeURLError("refusing to download a URL that carries credentials")


async def _read_capped(stream: aiohttp.StreamReader, limit: int, method: str, path: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise MalformedResponseError(
                f"{method} {path}: answer larger than {limit} bytes; refusing to read it",
                path=path,
            )
        chunks.append(chunk)
    return b"".join(chunks)


@contextlib.contextmanager
def _map_aiohttp_errors(method: str, path: str) -> Iterator[None]:
    """Translate aiohttp/asyncio failures into quickmj's transport errors (once, here)."""
    try:
        yield
    except QuickMJError:
        raise
    except aiohttp.ConnectionTimeoutError as exc:
        raise ConnectError(
            f"{method} {path}: timed out connecting to the relay", method=method, path=path
        ) from exc
    except aiohttp.ClientConnectorError as exc:
        raise ConnectError(
            f"{method} {path}: cannot connect to the relay: {exc.strerror or exc}",
            method=method,
            path=path,
        ) from exc
    except (aiohttp.ServerTimeoutError, asyncio.TimeoutError) as exc:
        raise RequestTimeoutError(
            f"{method} {path}: the relay did not answer in time", method=method, path=path
        ) from exc
    except aiohttp.ClientPayloadError as exc:
        raise TransportError(
            f"{method} {path}: the answer was cut off: {exc}", method=method, path=path
        ) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise TransportError(
            f"{method} {path}: connection failed: {type(exc).__name__}: {exc}",
            method=method,
            path=path,
        ) from exc
