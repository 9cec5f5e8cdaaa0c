"""Client configuration: timeouts, retry policy, modes, auth schemes, environment variables."""

from __future__ import annotations

import os
import random
from typing import Any, Literal

import attrs

from .errors import ConfigurationError

__all__ = (
    "DEFAULT_BASE_URL",
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "ENV_MODE",
    "AuthScheme",
    "Mode",
    "RetryPolicy",
    "Secret",
    "Timeouts",
)

DEFAULT_BASE_URL = "https://api.quickrouter.ai"
ENV_API_KEY = "QUICKMJ_API_KEY"
ENV_BASE_URL = "QUICKMJ_BASE_URL"
ENV_MODE = "QUICKMJ_MODE"

Mode = Literal["fast", "relax", "turbo"]
#: ``bearer``: ``Authorization: Bearer <key>`` (QuickRouter, new-api relays);
#: ``mj-api-secret``: ``mj-api-secret: <key>`` (self-hosted midjourney-proxy);
#: ``raw``: ``Authorization: <key>`` (TrueAI-style proxies that compare the whole header).
AuthScheme = Literal["bearer", "mj-api-secret", "raw"]

_MODES = ("fast", "relax", "turbo")
_SCHEMES = ("bearer", "mj-api-secret", "raw")


@attrs.frozen
class Timeouts:
    """HTTP timeouts in seconds. These bound one request, never the life of a job."""

    #: Establishing a connection (TCP + TLS).
    connect: float = 10.0
    #: Waiting for the answer to an ordinary request (between bytes).
    read: float = 30.0
    #: image-seed may block for up to a minute on some relays while the bot answers.
    image_seed: float = 75.0
    #: Reading an image download (between chunks).
    download: float = 60.0


@attrs.frozen
class RetryPolicy:
    """How idempotent requests are retried: exponential backoff with jitter.

    Reads (fetch, list-by-condition, image-seed, downloads) retry on connection errors,
    timeouts, 429 and 5xx. Submits are retried only when nothing can have been created:
    a failed connect always; a 429 or a queue-full rejection only with ``retry_submits``.
    """

    #: Total attempts, the first included (1 disables retries).
    max_attempts: int = 4
    #: First backoff in seconds; doubled on each further attempt.
    backoff: float = 0.5
    #: Upper bound of one backoff (and of an honoured Retry-After).
    max_backoff: float = 30.0
    #: Random spread applied to each backoff (0.5 = from 50% to 150%).
    jitter: float = 0.5
    #: Retry submits answered 429 or "queue full" (code 23): nothing was created there.
    retry_submits: bool = False

    def __attrs_post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError("RetryPolicy.max_attempts must be at least 1")
        if self.backoff < 0 or self.max_backoff < 0 or not 0 <= self.jitter <= 1:
            raise ConfigurationError("RetryPolicy backoff values must be non-negative")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to sleep after failed attempt number ``attempt`` (1-based)."""
        if retry_after is not None and retry_after >= 0:
            return min(retry_after, self.max_backoff)
        base = min(self.backoff * (2 ** (attempt - 1)), self.max_backoff)
        spread = 1 + random.uniform(-self.jitter, self.jitter)
        return float(max(0.0, base * spread))


class Secret:
    """Holds the API key; its repr and str never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def redact(self, text: str) -> str:
        """Replace any occurrence of the key in ``text`` (an echoed error body, say)."""
        return text.replace(self._value, "***") if self._value and len(self._value) >= 4 else text

    def redact_bytes(self, data: bytes) -> bytes:
        """The same for a raw answer, before anything is parsed out of it."""
        if len(self._value) < 4:
            return data
        secret = self._value.encode()
        return data.replace(secret, b"***") if secret in data else data

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[Any, ...]:
        raise TypeError("the API key cannot be pickled")


def resolve_api_key(api_key: str | None) -> Secret:
    key = api_key if api_key is not None else os.environ.get(ENV_API_KEY)
    if key is None or not key.strip():
        raise ConfigurationError(
            f"no API key: pass api_key=... or set the {ENV_API_KEY} environment variable"
        )
    return Secret(key.strip())


def resolve_base_url(base_url: str | None) -> str:
    url = base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"base_url must start with http:// or https://, got {url!r}")
    # Accept a base that already ends in /mj (copied from the relay's docs).
    if url.endswith("/mj"):
        url = url[: -len("/mj")]
    return url


def resolve_mode(mode: str | None) -> Mode | None:
    value = mode if mode is not None else (os.environ.get(ENV_MODE) or None)
    if value is None:
        return None
    value = value.strip().lower()
    if value in ("", "default", "none"):
        return None
    if value not in _MODES:
        raise ConfigurationError(f"mode must be one of {', '.join(_MODES)} or None, got {value!r}")
    return value  # type: ignore[return-value]


def check_auth_scheme(scheme: str) -> AuthScheme:
    if scheme not in _SCHEMES:
        raise ConfigurationError(f"auth_scheme must be one of {', '.join(_SCHEMES)}")
    return scheme  # type: ignore[return-value]


def auth_headers(scheme: AuthScheme, key: Secret) -> dict[str, str]:
    if scheme == "bearer":
        return {"Authorization": f"Bearer {key.get()}"}
    if scheme == "raw":
        return {"Authorization": key.get()}
    return {"mj-api-secret": key.get()}
