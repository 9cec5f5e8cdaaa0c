"""Client configuration: timeouts, retry policy, modes, dialects, auth, environment."""

from __future__ import annotations

import os
import random
import re
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import attrs

from .errors import ConfigurationError

__all__ = (
    "DEFAULT_BASE_URL",
    "DIALECTS",
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "ENV_MODE",
    "MODES",
    "RETRY_AFTER_CAP",
    "RETRY_AFTER_FLOOR",
    "AuthScheme",
    "Dialect",
    "Mode",
    "RetryPolicy",
    "Secret",
    "Timeouts",
)

DEFAULT_BASE_URL = "https://api.quickrouter.ai"
"""The relay used when neither ``base_url`` nor ``$QUICKMJ_BASE_URL`` is given."""
ENV_API_KEY = "QUICKMJ_API_KEY"
ENV_BASE_URL = "QUICKMJ_BASE_URL"
ENV_MODE = "QUICKMJ_MODE"

Mode = Literal["fast", "relax", "turbo"]
"""A Midjourney speed mode, sent as the ``/mj-fast/mj``-style path prefix (None in the
client means the key's default mode)."""
AuthScheme = Literal["bearer", "mj-api-secret", "raw"]
"""How the API key is sent.

``bearer``: ``Authorization: Bearer <key>`` (QuickRouter, new-api relays);
``mj-api-secret``: ``mj-api-secret: <key>`` (self-hosted midjourney-proxy);
``raw``: ``Authorization: <key>`` (TrueAI-style proxies that compare the whole header)."""
Dialect = Literal["auto", "quickrouter", "midjourney-proxy", "trueai"]
"""Which relay software answers (see the README's "Relays and dialects"):
``quickrouter`` (new-api in front of a proxy: QuickRouter and most resellers),
``midjourney-proxy`` (novicezk, self-hosted), ``trueai`` (trueai-org/midjourney-proxy),
``auto`` (unknown: quickmj assumes nothing beyond the common protocol)."""
DIALECTS: tuple[Dialect, ...] = ("auto", "quickrouter", "midjourney-proxy", "trueai")

#: The shortest pause a ``Retry-After`` can ask for. The header counts whole seconds
#: (RFC 9110 §10.2.3), so an honest relay never means less than one; 0, a negative number,
#: a date already past or NaN come from broken or hostile relays and, taken literally,
#: re-send at thousands of requests per second.
RETRY_AFTER_FLOOR = 1.0
#: The longest pause a ``Retry-After`` can impose. Relay rate limits count per minute
#: (new-api's model rate limit, TrueAI's IP limiter); a longer hint (``999999``, ``inf``,
#: a date years ahead) is more likely broken than meant, and must not silence every wait
#: of a client. A limit that really lasts longer answers 429 again after the pause.
RETRY_AFTER_CAP = 60.0


def clamp_retry_after(seconds: float, cap: float = RETRY_AFTER_CAP) -> float:
    """A server's ``Retry-After`` in seconds, within [RETRY_AFTER_FLOOR, ``cap``].

    The one rule every consumer applies (``parse_retry_after``, ``RetryPolicy.delay``,
    admission pauses, the poller, each with its own ``cap``: ``max_backoff``...): NaN and
    anything below the floor become the floor. The floor wins over a ``cap`` set below
    it, so no setting brings back a storm of requests on ``Retry-After: 0``.
    """
    if not seconds >= RETRY_AFTER_FLOOR:  # NaN compares False: the floor too
        return RETRY_AFTER_FLOOR
    return max(min(seconds, cap, RETRY_AFTER_CAP), RETRY_AFTER_FLOOR)


MODES: tuple[Mode, ...] = ("fast", "relax", "turbo")
_SCHEMES = ("bearer", "mj-api-secret", "raw")
#: The auth header each dialect's server reads (TrueAI also reads Authorization, but
#: compares its whole value, so a Bearer prefix would fail there).
_DEFAULT_SCHEME: dict[str, AuthScheme] = {
    "auto": "bearer",
    "quickrouter": "bearer",
    "midjourney-proxy": "mj-api-secret",
    "trueai": "mj-api-secret",
}


def _positive(_: Any, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ConfigurationError(f"Timeouts.{attribute.name} must be positive, got {value!r}")


def _positive_or_none(_: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value > 0:
        raise ConfigurationError(
            f"Timeouts.{attribute.name} must be positive or None, got {value!r}"
        )


@attrs.frozen
class Timeouts:
    """HTTP timeouts in seconds. These bound one call, never the life of a job.

    ``request`` bounds one attempt; ``total`` bounds one call with all its attempts and
    backoff sleeps: with the defaults a read (fetch, list-by-condition, image-seed, the
    task list) that gets no answer ends with RequestTimeoutError after at most 120 s,
    whatever ``RetryPolicy.max_attempts`` is (without it, 4 attempts against a relay
    that drips its answer took 4 x ``request``, about 6 minutes).
    """

    connect: float = attrs.field(default=10.0, validator=_positive)
    """Establishing a connection (TCP + TLS)."""
    read: float = attrs.field(default=30.0, validator=_positive)
    """Silence allowed while waiting for an answer (between bytes)."""
    request: float = attrs.field(default=90.0, validator=_positive)
    """Deadline for one whole API request: connect, headers and the full body. A server
    that drips its answer a byte at a time cannot hold a call longer than this.
    new-api relays wait up to 60 s for their upstream before answering a submit."""
    image_seed: float = attrs.field(default=75.0, validator=_positive)
    """image-seed may block for up to a minute on some relays while the bot answers:
    its read timeout and deadline."""
    download: float = attrs.field(default=60.0, validator=_positive)
    """Silence allowed while downloading an image (between chunks)."""
    download_total: float = attrs.field(default=600.0, validator=_positive)
    """Deadline for one whole image download, its retries included (a large video may
    take minutes on a slow link: ``total`` does not apply to downloads)."""
    total: float | None = attrs.field(default=120.0, validator=_positive_or_none)
    """Deadline for one whole call with all its retries and backoff sleeps: reads
    (fetch, list-by-condition, image-seed, the task list) and the connect retries of a
    submit. None: only ``RetryPolicy.max_attempts`` bounds them.

    120 s lets one full ``request`` attempt (90 s: a relay waiting on its upstream)
    plus a quick retry through, yet a wait never hangs on one read for minutes: the
    poller reads again on its next tick. When a call hits it, RequestTimeoutError says
    so and how many attempts ran. A submit's attempt is never cut by it (the job might
    have been created): it only stops further connect retries. It never cuts a call
    short of one whole attempt: ``Timeouts(request=300)`` still waits 300 s once."""


@attrs.frozen
class RetryPolicy:
    """How idempotent requests are retried: exponential backoff with jitter.

    Reads (fetch, list-by-condition, image-seed, downloads) retry on connection errors,
    timeouts, 429 and 5xx. Submits are retried only when nothing can have been created:
    a failed connect always; a 429 or a queue-full rejection only with ``retry_submits``.
    """

    max_attempts: int = 4
    """Total attempts, the first included (1 disables retries)."""
    backoff: float = 0.5
    """First backoff in seconds; doubled on each further attempt."""
    max_backoff: float = 30.0
    """Upper bound of one backoff (and of an honoured Retry-After, which is first kept
    within 1 s to 60 s: see ``RETRY_AFTER_FLOOR`` / ``RETRY_AFTER_CAP``)."""
    jitter: float = 0.5
    """Random spread applied to each backoff (0.5 = from 50% to 150%)."""
    retry_submits: bool = False
    """Retry submits answered 429 or "queue full" (code 23): nothing was created there."""

    def __attrs_post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError("RetryPolicy.max_attempts must be at least 1")
        if self.backoff < 0 or self.max_backoff < 0 or not 0 <= self.jitter <= 1:
            raise ConfigurationError("RetryPolicy backoff values must be non-negative")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to sleep after failed attempt number ``attempt`` (1-based).

        Args:
            attempt: the attempt that just failed (1 for the first).
            retry_after: the server's ``Retry-After`` in seconds, if it sent one; it wins
                over the backoff, kept within 1 s to 60 s (a relay answering
                ``Retry-After: 0`` is not re-sent at once) and capped at ``max_backoff`` (never
                below the 1 s floor).

        Returns:
            The delay in seconds: exponential backoff with ``jitter``, at most
            ``max_backoff`` (before jitter).
        """
        if retry_after is not None:
            return clamp_retry_after(retry_after, self.max_backoff)
        base = min(self.backoff * (2 ** (attempt - 1)), self.max_backoff)
        spread = 1 + random.uniform(-self.jitter, self.jitter)
        return float(max(0.0, base * spread))


class Secret:
    """Holds the API key; its repr and str never show it.

    The raw value leaves this object only through :meth:`get`, called where a request's
    auth header is rendered. :meth:`redact` removes the key from text that came back from
    a server (echoed in an error body, a header, a status line) in every JSON spelling:
    each character as itself, as ``\\uXXXX`` in either case (a surrogate pair beyond the
    BMP) or as its short escape (``\\/``, PHP's default for ``/``; ``\\"``, ``\\\\``,
    ``\\n``...), mixed freely.
    """

    __slots__ = ("_either", "_escaped", "_fragment", "_probe", "_shorts", "_value")

    def __init__(self, value: str) -> None:
        self._value = value
        self._escaped: re.Pattern[str] | None = None
        self._probe: re.Pattern[bytes] | None = None
        self._either: re.Pattern[bytes] | None = None
        # The key's characters JSON has a short escape for, and its longest stretch
        # without them: a spelling that uses short escapes but no \uXXXX still holds that
        # stretch as it is, which a plain search finds at memory speed.
        shorts = "".join(sorted({_SHORT_ESCAPES[c][1] for c in value if c in _SHORT_ESCAPES}))
        self._shorts = re.compile(rb"\\[" + re.escape(shorts).encode() + rb"]") if shorts else None
        stretches = re.split("[" + re.escape("".join(_SHORT_ESCAPES)) + "]", value)
        self._fragment = max(stretches, key=len).encode("utf-8", "surrogatepass")

    def get(self) -> str:
        """The key itself: only for building the auth header."""
        return self._value

    def _long_enough(self) -> bool:
        return len(self._value) >= 4

    def _escaped_pattern(self) -> re.Pattern[str]:
        # Each character of the key in any of its JSON spellings: one regex finds them all.
        if self._escaped is None:
            self._escaped = re.compile("".join(map(_spellings, self._value)))
        return self._escaped

    def _bytes(self) -> bytes:
        return self._value.encode("utf-8", "surrogatepass")

    def _escape_probe(self) -> re.Pattern[bytes]:
        # A cheap first look for a \uXXXX escape of one of the key's own characters:
        # relays escape non-ASCII text and <>&'+ (Go, .NET), never letters, digits or
        # dashes, so this rarely matches an honest answer and the full search rarely runs.
        if self._probe is None:
            codes = sorted({f"{unit:04x}" for c in self._value for unit in _utf16(c)})
            self._probe = re.compile(rb"\\u(?i:" + "|".join(codes).encode() + rb")")
        return self._probe

    def redact(self, text: str) -> str:
        """``text`` with every occurrence of the key (plain or JSON-escaped) as ``***``."""
        if not self._long_enough() or (self._value not in text and "\\" not in text):
            return text
        return self._redact_spans(text)

    def redact_bytes(self, data: bytes) -> bytes:
        """The same for a raw answer, before anything is parsed out of it.

        Escaped occurrences are replaced inside their JSON string so the body still parses.
        """
        if not self._long_enough():
            return data
        if self._bytes() not in data and not self._has_escape(data):
            return data
        text = data.decode("utf-8", "surrogateescape")  # undecodable bytes kept as they were
        clean = self._redact_spans(text)
        return data if clean is text else clean.encode("utf-8", "surrogateescape")

    def _redact_spans(self, text: str) -> str:
        """Every match as ``***``, widened to whole JSON escapes (a match may start or end
        inside one, ``\\nabc`` for the key ``nabc``) and keeping the unescaped quotes it
        crosses, so a JSON body stays JSON whatever the key holds."""
        pattern, pieces, kept, at = self._escaped_pattern(), [], 0, 0
        while (found := pattern.search(text, at)) is not None:
            start = max(_escape_end(text, found.start()), kept)
            end = _escape_end(text, found.end())
            if start >= end:  # the match lies inside one escape: look again one further
                at = found.start() + 1
                continue
            pieces += [text[kept:start], _blank(text[start:end])]
            kept = at = end
        return text if not pieces else "".join(pieces) + text[kept:]

    def redact_answer(self, data: bytes) -> tuple[bytes, bool]:
        """:meth:`redact_bytes`, and whether ``data`` certainly escapes no lone surrogate
        (then the JSON parser can skip its own look for one).

        An answer with ``\\u`` escapes (TrueAI escapes ``&<>`` and every emoji) would
        otherwise be scanned twice, once for an escaped key character and once for a lone
        surrogate: one regex looks for both, and only a hit runs the exact checks.
        """
        if b"\\u" not in data:
            return self.redact_bytes(data), True
        if (
            self._long_enough()
            and self._bytes() not in data
            and self._either_probe().search(data) is None
            and not self._has_short_escape(data)
        ):
            return data, True
        return self.redact_bytes(data), False

    def _either_probe(self) -> re.Pattern[bytes]:
        # The escape probe and a lone surrogate escape in one pattern (its literal "\u"
        # prefix keeps the regex's fast search): a high one not followed by a low one, or
        # a low one not right after a high one.
        if self._either is None:
            probe = self._escape_probe().pattern[len(rb"\\u") :]
            self._either = re.compile(
                rb"\\u(?:"
                + probe
                + rb"|[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
                + rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2}\\u)[dD][c-fC-F][0-9a-fA-F]{2})"
            )
        return self._either

    def _has_escape(self, data: bytes) -> bool:
        """``data`` may hold a JSON escape of one of the key's characters."""
        if self._value.isascii():
            # An ASCII character's \uXXXX is ``\u00XX``: finding where those start skips
            # the escapes of non-ASCII text (how Python and .NET write Chinese).
            start = _first_ascii_escape(data)
            if start >= 0 and self._escape_probe().search(data, start) is not None:
                return True
        elif b"\\u" in data and self._escape_probe().search(data) is not None:
            return True
        return self._has_short_escape(data)

    def _has_short_escape(self, data: bytes) -> bool:
        # A short escape (``\/`` in every URL PHP writes) counts only next to the rest of
        # the key, so honest PHP answers do not pay for a key holding a '/'.
        return (
            self._shorts is not None
            and b"\\" in data
            and self._fragment in data
            and self._shorts.search(data) is not None
        )

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[Any, ...]:
        raise TypeError("the API key cannot be pickled")


# JSON's two-character escapes (RFC 8259 section 7), by the character they stand for.
_SHORT_ESCAPES = {
    '"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
    "\t": "\\t",
}  # fmt: skip


def _utf16(c: str) -> tuple[int, ...]:
    """The UTF-16 code units JSON's ``\\uXXXX`` escapes of ``c`` spell."""
    code = ord(c)
    if code <= 0xFFFF:
        return (code,)
    code -= 0x10000
    return (0xD800 + (code >> 10), 0xDC00 + (code & 0x3FF))


def _spellings(c: str) -> str:
    """A regex for one character as JSON may write it: itself, ``\\uXXXX`` (hex digits in
    any case), or its short escape."""
    escaped = "".join(f"\\\\u(?i:{unit:04x})" for unit in _utf16(c))
    forms = [re.escape(c), escaped]
    if c in _SHORT_ESCAPES:
        forms.append(re.escape(_SHORT_ESCAPES[c]))
    return "(?:" + "|".join(forms) + ")"


def _escape_end(text: str, at: int) -> int:
    """``at``, or where the JSON escape ``at`` falls strictly inside ends."""
    back = text.rfind("\\", max(0, at - 5), at)
    if back < 0:
        return at
    first = back
    while first > 0 and text[first - 1] == "\\":
        first -= 1
    if (back - first) % 2:  # this backslash is the second half of an escaped backslash
        return at
    size = 6 if text.startswith("u", back + 1) else 2
    return back + size if at < back + size else at


def _blank(span: str) -> str:
    """``***`` for each run of ``span`` between its unescaped quotes, the quotes kept: a
    match that crosses a string's end leaves the JSON around it intact."""
    if '"' not in span:
        return "***"
    pieces: list[str] = []
    at = 0
    while at < len(span):
        if span[at] == '"':
            pieces.append('"')
            at += 1
            continue
        if not pieces or pieces[-1] == '"':
            pieces.append("***")
        if span[at] != "\\":
            at += 1
        else:
            at += 6 if span.startswith("u", at + 1) else 2
    return "".join(pieces)


_ASCII_ESCAPE = re.compile(rb"\\u00")


def _first_ascii_escape(data: bytes) -> int:
    """Where ``data.find(b"\\u00")`` would point, found faster: backslashes are looked up
    one by one (a one-byte search runs at memory speed, and answers hold few backslashes,
    often none); past a few hundred, a regex (twice as fast as ``bytes.find`` for this
    needle) takes over."""
    at = data.find(b"\\")
    for _ in range(256):
        if at < 0 or data.startswith(b"u00", at + 1):
            return at
        at = data.find(b"\\", at + 1)
    found = _ASCII_ESCAPE.search(data, at)
    return -1 if found is None else found.start()


def resolve_api_key(api_key: str | None) -> Secret:
    key = api_key if api_key is not None else os.environ.get(ENV_API_KEY)
    if key is None or not key.strip():
        raise ConfigurationError(
            f"no API key: pass api_key=... or set the {ENV_API_KEY} environment variable"
        )
    return Secret(check_api_key(key.strip()))


def check_api_key(key: str) -> str:
    """``key`` if it can travel in a header; else a ConfigurationError that says what is
    wrong and where, never the key itself.

    A lone surrogate (``"sk-\\ud800"``, from a bad decode or a JSON ``\\ud800``) cannot be
    encoded at all, and a control character (a pasted newline) would split the header.
    """
    for at, char in enumerate(key):
        code = ord(char)
        if 0xD800 <= code <= 0xDFFF:
            what = f"a lone surrogate (U+{code:04X})"
        elif code < 0x20 or 0x7F <= code <= 0x9F:
            what = f"a control character (U+{code:04X})"
        else:
            continue
        raise ConfigurationError(
            f"the API key is not valid text: character {at + 1} of {len(key)} is {what}; "
            "copy the key again from the relay's console"
        )
    return key


def resolve_base_url(base_url: str | None) -> str:
    """The relay's base URL, validated once: http(s), a host, no credentials, no query."""
    url = base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
    url = url.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port out of range or not a number
    except ValueError:
        raise ConfigurationError("base_url is not a valid URL (check the host and port)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"base_url must be http:// or https:// with a host, got {_shown(url)!r}"
        )
    if "@" in parts.netloc:
        # Never repeat them: the message may end up in a log.
        raise ConfigurationError(
            "base_url must not carry credentials (user:password@); pass the key as api_key"
        )
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ConfigurationError(
            f"base_url must not have a query or fragment, got {_shown(url)!r}: "
            "every request would go to the wrong path"
        )
    del port
    # Accept a base that already ends in /mj (copied from the relay's docs).
    if url.endswith("/mj"):
        url = url[: -len("/mj")]
    return url


def _shown(url: str) -> str:
    return url if len(url) <= 80 else url[:77] + "..."


def resolve_dialect(dialect: str | None, base_url: str) -> Dialect:
    """The dialect asked for, or the one the base URL implies (QuickRouter's own host)."""
    if dialect is None:
        host = (urlsplit(base_url).hostname or "").lower()
        return "quickrouter" if host.endswith("quickrouter.ai") else "auto"
    for known in DIALECTS:
        if known == dialect:
            return known
    raise ConfigurationError(f"dialect must be one of {', '.join(DIALECTS)}, got {dialect!r}")


def default_auth_scheme(dialect: Dialect) -> AuthScheme:
    return _DEFAULT_SCHEME[dialect]


def resolve_mode(mode: str | None) -> Mode | None:
    value = mode if mode is not None else (os.environ.get(ENV_MODE) or None)
    if value is None:
        return None
    value = value.strip().lower()
    if value in ("", "default", "none"):
        return None
    if value not in MODES:
        raise ConfigurationError(f"mode must be one of {', '.join(MODES)} or None, got {value!r}")
    return value


def check_auth_scheme(scheme: str) -> AuthScheme:
    if scheme not in _SCHEMES:
        raise ConfigurationError(f"auth_scheme must be one of {', '.join(_SCHEMES)}")
    return cast(AuthScheme, scheme)


def auth_header_name(scheme: AuthScheme) -> str:
    return "mj-api-secret" if scheme == "mj-api-secret" else "Authorization"


def auth_header_value(scheme: AuthScheme, key: Secret) -> str:
    return f"Bearer {key.get()}" if scheme == "bearer" else key.get()
