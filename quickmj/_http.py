"""HTTP exchanges with the relay over a transport: URLs, headers, deadlines, caps, close.

One :class:`Http` per client. It builds each request (base URL, mode prefix, one encoded
path, auth header, user agent), sends it through the client's transport under a deadline
for the whole exchange, reads the body with a size cap, removes any echo of the API key,
and hands back an :class:`Answer` (status, headers, bytes). It knows nothing about relay
codes or JSON: ``_protocol.py`` reads answers. ``aclose`` ends every exchange in flight
(and every retry sleep) with ClientClosedError before the transport closes.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any
from urllib.parse import quote, urljoin, urlsplit

import anyio

from ._config import AuthScheme, Secret, Timeouts, auth_header_name, auth_header_value
from ._images import SNIFF_BYTES
from ._otel import answered, request_span, span_name, tracer
from ._transport import (
    Answer,
    AsyncTransport,
    Headers,
    Request,
    Response,
    read_all,
    read_body,
)
from ._urls import display_url
from ._version import __version__
from .errors import (
    ClientClosedError,
    DownloadError,
    InvalidInputError,
    MalformedResponseError,
    RequestTimeoutError,
    TransportError,
    UnsafeURLError,
)

__all__ = (
    "MAX_DOWNLOAD_BYTES",
    "MAX_JSON_BYTES",
    "ClosedInFlight",
    "ErrorReader",
    "Fetched",
    "Http",
    "check_download_url",
)

logger = logging.getLogger("quickmj")

#: Largest JSON answer quickmj reads (a list of 100 tasks is a few hundred KiB).
MAX_JSON_BYTES = 32 * 1024 * 1024
#: Largest image quickmj downloads.
MAX_DOWNLOAD_BYTES = 200 * 1024 * 1024
_MAX_REDIRECTS = 5
#: How long aclose() waits for the exchanges it ended to unwind (normally one loop turn).
_CLOSE_GRACE = 2.0
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"


class Fetched:
    """What a download brought: its Content-Type, size, first bytes and where it came
    from (the last URL after redirects, as errors show it)."""

    __slots__ = ("content_type", "head", "size", "where")

    def __init__(self, content_type: str, head: bytes, size: int, where: str) -> None:
        self.content_type = content_type
        self.head = head
        self.size = size
        self.where = where


class ClosedInFlight(ClientClosedError):
    """aclose() ended an exchange that had started (a submit may have been sent)."""


#: Turns an error answer to a download into the exception to raise (the relay's rules).
ErrorReader = Callable[["Answer", str, bool], Exception]


class _Life:
    """What an Http and its ``with_timeouts`` copies share: closed, and the exchanges in
    flight (one cancel scope each; aclose() cancels them and waits, at most _CLOSE_GRACE,
    for the set to drain)."""

    __slots__ = ("closed", "drained", "in_flight")

    def __init__(self) -> None:
        self.closed = False
        self.in_flight: set[anyio.CancelScope] = set()
        self.drained: anyio.Event | None = None


class Http:
    """Sends the client's requests to the relay through one transport."""

    def __init__(
        self,
        transport: AsyncTransport,
        *,
        api_key: Secret,
        base_url: str,
        mode: str | None,
        auth_scheme: AuthScheme,
        timeouts: Timeouts,
        headers: Mapping[str, str] | None = None,
        user_agent: str | None = None,
    ) -> None:
        self.transport = transport
        self.key = api_key
        self.base_url = base_url
        self.prefix: str = f"/mj-{mode}/mj" if mode else "/mj"
        self.timeouts = timeouts
        self._root = base_url + self.prefix
        self._origin = _origin(base_url)
        self._auth_scheme: AuthScheme = auth_scheme
        agent = f"quickmj/{__version__} python/{sys.version_info[0]}.{sys.version_info[1]}"
        self._base_headers = {
            "User-Agent": f"{agent} {user_agent}" if user_agent else agent,
            "Accept-Encoding": "gzip, deflate",
            **(headers or {}),
        }
        self._life = _Life()  # shared with with_timeouts() copies
        self._tracer: Any = tracer()  # None unless opentelemetry is installed

    def __repr__(self) -> str:
        return f"<Http {self._root}>"

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` ran."""
        return self._life.closed

    def with_timeouts(self, timeouts: Timeouts) -> Http:
        """The same connections, key and lifecycle, other timeouts (``with_options``)."""
        view = copy.copy(self)
        view.timeouts = timeouts
        return view

    def at_base(self) -> Http:
        """The same connections, key and lifecycle, with paths under the base URL itself
        rather than ``/mj`` (new-api's billing routes), still only to the base URL's own
        origin. An ``mj-api-secret`` key goes as a Bearer token there: new-api's
        ``TokenAuthReadOnly`` reads only ``Authorization`` (a ``raw`` key stays raw: the
        self-hosted proxies that want it check it before they answer 404)."""
        view = copy.copy(self)
        view.prefix = ""
        view._root = self.base_url
        if self._auth_scheme == "mj-api-secret":
            view._auth_scheme = "bearer"
        return view

    # ---- lifecycle ----

    async def aclose(self) -> None:
        """End the exchanges in flight (after a short grace) and close the transport."""
        life = self._life
        life.closed = True
        with anyio.CancelScope(shield=True):  # a cancelled aclose still closes everything
            if life.in_flight:
                # End the exchanges in flight and let them unwind before the connections
                # go: closing under a response being read leaves that read hanging.
                life.drained = anyio.Event()
                for scope in list(life.in_flight):
                    scope.cancel()
                with anyio.move_on_after(_CLOSE_GRACE):
                    await life.drained.wait()
            await self.transport.aclose()

    @contextlib.contextmanager
    def abortable(self) -> Iterator[anyio.CancelScope]:
        """Run an exchange (or a retry sleep) so that aclose() ends it.

        Raises ClientClosedError when the block was ended that way.
        """
        life = self._life
        if life.closed:
            raise ClientClosedError("the client is closed")
        scope = anyio.CancelScope()
        life.in_flight.add(scope)
        try:
            with scope:
                yield scope
        finally:
            life.in_flight.discard(scope)
            if not life.in_flight and life.drained is not None:
                life.drained.set()
        if scope.cancelled_caught:
            raise ClosedInFlight("the client was closed during the request")

    async def sleep(self, delay: float) -> None:
        """A retry backoff that aclose() ends with ClientClosedError."""
        with self.abortable():
            await anyio.sleep(delay)

    # ---- API requests ----

    def url(self, path: str) -> str:
        """The URL of ``path`` (its segments already encoded) under base URL and mode."""
        return self._root + path

    def _headers(self, *, auth: bool, json_body: bool) -> dict[str, str]:
        headers = dict(self._base_headers)
        if json_body:
            headers["Content-Type"] = "application/json"
        if auth:
            headers[auth_header_name(self._auth_scheme)] = auth_header_value(
                self._auth_scheme, self.key
            )
        return headers

    async def exchange(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        read_timeout: float | None = None,
        deadline: float | None = None,
    ) -> Answer:
        """One request to the relay, its whole answer read (capped, key removed).

        Raises ConnectError (nothing was sent), RequestTimeoutError, TransportError,
        MalformedResponseError (answer over the cap) or ClientClosedError.
        """
        content = None if body is None else _json_bytes(body)
        headers = self._headers(auth=True, json_body=content is not None)
        # API answers are JSON: ask for it (gateways may otherwise pick an HTML page).
        headers["Accept"] = "application/json"
        request = Request(
            method,
            self.url(path),
            headers,
            content,
            connect_timeout=self.timeouts.connect,
            read_timeout=read_timeout or self.timeouts.read,
        )
        limit = deadline or self.timeouts.request
        started = time.perf_counter()
        status: int | str = "error"
        try:
            with (
                self._traced(method, span_name(method, self.prefix + path), request.url) as span,
                self.abortable(),
                _deadline(limit, method, path),
                self._redacting(),
            ):
                response = await self.transport.handle_request(request)
                status = response.status
                if span is not None:
                    answered(span, status)
                try:
                    raw = await read_all(response, MAX_JSON_BYTES, f"{method} {path}")
                finally:
                    with anyio.CancelScope(shield=True):
                        await response.aclose()
        finally:
            elapsed = (time.perf_counter() - started) * 1000
            logger.debug("%s %s -> %s in %.1f ms", method, path, status, elapsed)
        # A relay that echoes the key (in an error text, say) must not hand it to error
        # messages, descriptions or parsed fields: redact it before anything reads it.
        body, plain = self.key.redact_answer(raw)
        return Answer(response.status, self._redacted(response.headers), body, plain)

    # ---- downloads ----

    async def download(
        self, url: str, fh: IO[bytes], max_bytes: int, on_error: ErrorReader
    ) -> Fetched:
        """Stream ``url`` into ``fh`` (one attempt); returns what came (type, size, head).

        Redirects are followed by hand so the key goes only to the relay's own origin:
        a CDN, or a redirect to one, never sees it. An error status is read (briefly) and
        turned into an exception by ``on_error(answer, url, key_was_sent)``.
        """
        where = self._shown(url)
        head = bytearray()
        size = 0
        with (
            self._traced("GET", "GET", url) as span,
            self.abortable(),
            _deadline(self.timeouts.download_total, "GET", where),
            self._redacting(),
        ):
            response, current = await self._open_download(url, on_error)
            if span is not None:
                answered(span, response.status)
            try:
                async for chunk in read_body(response, max_bytes, self._shown(current)):
                    fh.write(chunk)
                    size += len(chunk)
                    if len(head) < SNIFF_BYTES:  # kept to tell an image from a web page
                        head += chunk[: SNIFF_BYTES - len(head)]
            except MalformedResponseError as exc:
                raise DownloadError(
                    f"image larger than {max_bytes} bytes: {self._shown(current)}"
                ) from exc
            finally:
                with anyio.CancelScope(shield=True):
                    await response.aclose()
        content_type = self.key.redact(response.headers.get("Content-Type", ""))[:100]
        return Fetched(content_type, bytes(head), size, self._shown(current))

    def is_relay_origin(self, url: str) -> bool:
        """Is ``url`` on the relay's own origin (scheme, host, port): the only place the key
        is ever sent?"""
        try:
            return _origin(url) == self._origin
        except ValueError:
            return False

    async def _open_download(self, url: str, on_error: ErrorReader) -> tuple[Response, str]:
        current = url
        for _ in range(_MAX_REDIRECTS + 1):
            current = check_download_url(current)
            auth = self.is_relay_origin(current)
            request = Request(
                "GET",
                current,
                self._headers(auth=auth, json_body=False),
                connect_timeout=self.timeouts.connect,
                read_timeout=self.timeouts.download,
            )
            response = await self.transport.handle_request(request)
            if response.status not in (301, 302, 303, 307, 308):
                if response.status >= 400:
                    raise await self._download_failed(response, current, auth, on_error)
                return response, current
            location = response.headers.get("Location")
            await response.aclose()
            if not location:
                raise DownloadError(f"redirect without Location from {self._shown(current)}")
            current = urljoin(current, location)
        raise DownloadError(f"too many redirects downloading {self._shown(url)}")

    async def _download_failed(
        self, response: Response, url: str, auth: bool, on_error: ErrorReader
    ) -> Exception:
        try:
            body = self.key.redact_bytes(await read_all(response, 4096, self._shown(url)))
        except MalformedResponseError:
            body = b""
        finally:
            await response.aclose()
        headers = self._redacted(response.headers)
        return on_error(Answer(response.status, headers, body), self._shown(url), auth)

    @contextlib.contextmanager
    def _traced(self, method: str, name: str, url: str) -> Iterator[Any]:
        """An OpenTelemetry span for one request when tracing is on (see ``_otel``)."""
        if self._tracer is None:
            yield None
            return
        try:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port
        except ValueError:
            host = port = None
        with request_span(self._tracer, name, method, display_url(url), host, port) as span:
            yield span

    @contextlib.contextmanager
    def _redacting(self) -> Iterator[None]:
        """Transport errors leave without the key, whatever transport made them (a custom
        one may put a URL or a header into its message)."""
        try:
            yield
        except TransportError as exc:
            text = str(exc)
            clean = self.key.redact(text)
            if clean != text:
                exc.args = (clean,)
            raise

    def _shown(self, url: str) -> str:
        """``url`` as errors show it: no query string, no echo of the key (a redirect's
        Location may carry it)."""
        return self.key.redact(display_url(url))

    def _redacted(self, headers: Headers) -> Headers:
        """An answer's headers without any echo of the key (errors keep them as ``headers``)."""
        redact = self.key.redact
        return Headers([(name, redact(value)) for name, value in headers.items()])


@contextlib.contextmanager
def _deadline(seconds: float, method: str, path: str) -> Iterator[None]:
    """The whole exchange must end within ``seconds`` (a dripping server cannot hold it)."""
    try:
        with anyio.fail_after(seconds):
            yield
    except RequestTimeoutError:
        raise  # the transport's own (read) timeout, already typed: keep what it says
    except TimeoutError:
        raise RequestTimeoutError(
            f"{method} {path}: no complete answer within {seconds:g} s",
            method=method,
            path=path,
        ) from None


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return (parts.scheme.lower(), (parts.hostname or "").lower(), port)


def check_download_url(url: str) -> str:
    """``url`` validated (http(s), a host, a valid port, no credentials) and encoded.

    Every URL quickmj fetches passes here once: a relay that answers with
    ``http://[::1/x.png`` or port 99999 gets UnsafeURLError, not a crash.
    """
    if not isinstance(url, str) or not url.strip():
        raise UnsafeURLError("refusing to download an empty URL")
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - validates the port (ValueError when out of range)
    except ValueError:
        raise UnsafeURLError(f"refusing to download a malformed URL: {url[:100]!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeURLError(f"refusing to download {url[:100]!r}: only http(s) URLs are fetched")
    if parts.username or parts.password:
        raise UnsafeURLError("refusing to download a URL that carries credentials")
    try:
        return quote(url.strip(), safe=_URL_SAFE)
    except UnicodeEncodeError:
        raise UnsafeURLError("refusing to download a URL that is not valid Unicode") from None


def _json_bytes(body: Any) -> bytes:
    """A request body as UTF-8 JSON. A string holding a lone surrogate (``"\\ud800"`` from
    a bad decode) cannot be encoded: an InvalidInputError naming the field, raised before
    anything is sent (never a bare UnicodeEncodeError)."""
    text = json.dumps(body, ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        raise InvalidInputError(
            f"{_surrogate_field(body) or 'a field'} is not valid text: it holds a lone "
            f"surrogate (U+{code:04X}); nothing was sent"
        ) from None


def _surrogate_field(value: Any, name: str | None = None) -> str | None:
    """The name of the (first) field of ``value`` whose text holds a lone surrogate."""
    if isinstance(value, str):
        return name if any(0xD800 <= ord(c) <= 0xDFFF for c in value) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(
        value, list) else ()  # fmt: skip
    for key, item in items:
        if (found := _surrogate_field(item, name or str(key))) is not None:
            return found
    return None
