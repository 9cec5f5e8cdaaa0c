"""The transport seam: the few HTTP operations quickmj needs, as types anyone can implement.

An :class:`AsyncTransport` turns a :class:`Request` into a :class:`Response` whose body
arrives as a stream of byte chunks. quickmj's default is the aiohttp transport
(``_aiohttp.py``, the only module that imports aiohttp for API calls);
``quickmj.testing.MockTransport`` answers from a function instead, for tests, as
``httpx.MockTransport`` does.

A transport knows HTTP and bytes only: no relay codes, no JSON, no retries, no API key
(the key is already inside ``Request.headers``, whose repr never shows it). Reading a
body through :func:`read_body` applies quickmj's size cap to the *decompressed* bytes and
undoes ``gzip``/``deflate`` itself, so no transport can be talked into inflating a bomb.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from typing import Any, Protocol, cast, runtime_checkable

import attrs

from .errors import MalformedResponseError

__all__ = (
    "SENSITIVE_HEADERS",
    "Answer",
    "AsyncTransport",
    "Headers",
    "Request",
    "Response",
    "read_body",
)

#: Headers whose values are never shown (they carry the API key).
SENSITIVE_HEADERS = frozenset({"authorization", "mj-api-secret", "proxy-authorization"})
_CHUNK = 64 * 1024


class Headers(Mapping[str, str]):
    """Case-insensitive, read-only HTTP headers whose repr hides credentials.

    A ``Mapping[str, str]``: ``headers["content-type"]`` finds ``Content-Type``; the
    original spelling of each name is kept for sending. ``repr()`` shows ``***`` for
    ``Authorization``, ``mj-api-secret`` and ``Proxy-Authorization``.

    Args:
        items: a mapping or ``(name, value)`` pairs; a later duplicate name wins.
    """

    __slots__ = ("_items",)

    _items: dict[str, tuple[str, str]]

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        pairs = cast(
            "Iterable[tuple[str, str]]", items.items() if isinstance(items, Mapping) else items
        )
        self._items = {name.lower(): (name, value) for name, value in pairs}

    def __getitem__(self, key: str) -> str:
        return self._items[key.lower()][1]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def raw(self) -> dict[str, str]:
        """A plain dict (original name spelling), credentials included.

        Only for handing to an HTTP library: never log it.
        """
        return dict(self._items.values())

    def redact(self, text: str) -> str:
        """``text`` without any credential value these headers carry.

        Args:
            text: anything that may echo a header value (an error body, a URL, a log line).

        Returns:
            ``text`` with each credential value (and the key after ``Bearer``) as ``***``.
        """
        for lower, (_, value) in self._items.items():
            if lower in SENSITIVE_HEADERS and len(value) >= 4:
                text = text.replace(value, "***")
                token = value.partition(" ")[2]  # "Bearer <key>": the key alone too
                if len(token) >= 4:
                    text = text.replace(token, "***")
        return text

    def __repr__(self) -> str:
        shown = {
            name: ("***" if lower in SENSITIVE_HEADERS else value)
            for lower, (name, value) in self._items.items()
        }
        return f"Headers({shown!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return {k.lower(): v for k, v in other.items()} == {
                k: v for k, (_, v) in self._items.items()
            }
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


def _headers(value: Mapping[str, str] | Iterable[tuple[str, str]] | Headers) -> Headers:
    return value if isinstance(value, Headers) else Headers(value)


@attrs.frozen
class Request:
    """One HTTP request as quickmj sends it.

    ``connect_timeout`` and ``read_timeout`` (seconds between bytes) are for the transport
    to apply; the deadline of the whole exchange is enforced above the transport.
    """

    method: str
    """``"GET"`` or ``"POST"``."""
    url: str
    """The absolute URL, query included."""
    headers: Headers = attrs.field(factory=Headers, converter=_headers)
    """The headers to send (the API key among them; their repr hides it)."""
    content: bytes | None = None
    """The body (JSON for submits), or None."""
    connect_timeout: float | None = None
    """Seconds allowed to establish the connection (None: the transport's default)."""
    read_timeout: float | None = None
    """Seconds of silence allowed between bytes of the answer (None: the default)."""

    @property
    def path(self) -> str:
        """The URL's path (what a test handler usually dispatches on)."""
        rest = self.url.split("://", 1)[-1]
        path = "/" + rest.partition("/")[2]
        return path.split("?", 1)[0]

    def json(self) -> Any:
        """The body parsed as JSON (None when there is none)."""
        return None if not self.content else json.loads(self.content)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    if data:
        yield data


class Response:
    """An HTTP answer: status, headers and the body as a stream of chunks.

    Build one in a test handler with ``Response(200, json={...})``,
    ``Response(200, content=b"...")`` or ``Response(200, stream=async_iterable)``.
    The body may be read once; :meth:`aclose` releases the connection.

    Args:
        status: the HTTP status.
        headers: the response headers (a mapping or ``(name, value)`` pairs).
        content: the whole body.
        json: a value to serialise as the body instead of ``content``, with
            ``Content-Type: application/json`` by default.
        stream: the body as an async iterable of byte chunks, read as it comes (for
            transports, and tests of slow or broken answers).
        on_close: called (and awaited, if it returns an awaitable) by :meth:`aclose`,
            once.
    """

    __slots__ = ("_closer", "_stream", "headers", "status")

    def __init__(
        self,
        status: int,
        *,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        content: bytes | None = None,
        json: Any = None,
        stream: AsyncIterable[bytes] | None = None,
        on_close: Any = None,
    ) -> None:
        self.status: int = status
        """The HTTP status."""
        merged = dict(Headers(headers).raw())
        if json is not None:
            content = _json_bytes(json)
            merged.setdefault("Content-Type", "application/json")
        self.headers: Headers = Headers(merged)
        """The response headers (case-insensitive)."""
        self._stream: AsyncIterable[bytes] = stream if stream is not None else _once(content or b"")
        self._closer = on_close

    def __repr__(self) -> str:
        return f"<Response [{self.status}]>"

    def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body as it came over the wire (still compressed, if it was)."""
        return aiter(self._stream)

    async def aclose(self) -> None:
        """Release the connection behind the response (idempotent)."""
        closer, self._closer = self._closer, None
        if closer is not None:
            result = closer()
            if hasattr(result, "__await__"):
                await result


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


@runtime_checkable
class AsyncTransport(Protocol):
    """What quickmj needs from an HTTP client.

    ``handle_request`` sends the request and returns once the status line and headers
    arrived; the body is read from the response's stream afterwards, and the response
    is closed by quickmj. Raise ``quickmj.ConnectError`` when no connection could be
    made (nothing was sent: quickmj may retry even a submit), ``quickmj.RequestTimeoutError``
    on a timeout and ``quickmj.TransportError`` for any other failure; never raise the
    HTTP library's own exceptions (they may hold the request's headers).
    """

    async def handle_request(self, request: Request) -> Response:
        """Send ``request``; return the response with its body still to be read.

        Args:
            request: what to send; apply its ``connect_timeout`` and ``read_timeout``.

        Returns:
            The response, once the status line and headers arrived.

        Raises:
            ConnectError: no connection could be made (nothing was sent).
            RequestTimeoutError: a timeout passed.
            TransportError: any other failure.
        """
        ...

    async def aclose(self) -> None:
        """Release every connection; called once when the client closes."""
        ...


async def read_body(response: Response, limit: int, what: str) -> AsyncIterator[bytes]:
    """Yield the decoded body in chunks; MalformedResponseError past ``limit`` bytes.

    The limit counts bytes *after* decompression, and inflating is done in bounded steps,
    so a small compressed answer can never expand to more than ``limit`` in memory.
    """
    inflate = _Inflater(response.headers.get("Content-Encoding", ""), what)
    size = 0
    async for chunk in response.aiter_raw():
        for piece in inflate.feed(chunk):
            size += len(piece)
            if size > limit:
                raise MalformedResponseError(
                    f"{what}: answer larger than {limit} bytes; refusing to read it"
                )
            yield piece


class _Inflater:
    """gzip/deflate decoding in steps of at most ``_CHUNK`` output bytes."""

    _MAX_MEMBERS = 64  # concatenated gzip members; more is an attack, not an answer

    def __init__(self, encoding: str, what: str) -> None:
        self._what = what
        enc = encoding.strip().lower()
        if enc in ("", "identity"):
            self._wbits: int | None = None
        elif enc in ("gzip", "x-gzip"):
            self._wbits = 16 + zlib.MAX_WBITS
        elif enc == "deflate":
            self._wbits = zlib.MAX_WBITS
        else:
            raise MalformedResponseError(f"{what}: unsupported Content-Encoding {encoding[:40]!r}")
        self._obj = zlib.decompressobj(self._wbits) if self._wbits is not None else None
        self._members = 1

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._obj is None:
            if data:
                yield data
            return
        try:
            while True:
                piece = self._obj.decompress(data, _CHUNK)
                if piece:
                    yield piece
                data = self._obj.unconsumed_tail
                if self._obj.eof:
                    data = self._next_member()
                    if not data:
                        return
                elif not data and not piece:
                    return  # input used up and nothing pending inside zlib
        except zlib.error:
            raise MalformedResponseError(
                f"{self._what}: the compressed answer is corrupt"
            ) from None

    def _next_member(self) -> bytes:
        assert self._obj is not None and self._wbits is not None
        rest = self._obj.unused_data
        if not rest.strip(b"\0"):
            return b""
        self._members += 1
        if self._members > self._MAX_MEMBERS:
            raise MalformedResponseError(f"{self._what}: too many compressed members")
        self._obj = zlib.decompressobj(self._wbits)
        return rest


async def read_all(response: Response, limit: int, what: str) -> bytes:
    """The whole decoded body (see :func:`read_body`)."""
    return b"".join([chunk async for chunk in read_body(response, limit, what)])


class Answer:
    """A completed exchange: status, headers and the (capped, redacted) body."""

    __slots__ = ("body", "headers", "plain", "status")

    def __init__(
        self, status: int, headers: Mapping[str, str], body: bytes, plain: bool = False
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        # The body certainly escapes no lone surrogate (found while removing the key):
        # the parser need not look again.
        self.plain = plain
