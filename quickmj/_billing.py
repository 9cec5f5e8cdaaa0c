"""What the key has left and has spent: new-api's billing routes read into one Balance.

QuickRouter runs new-api, which answers three questions about a key (protocol.md §8.3):

- ``GET /api/usage/token/`` (``controller.GetTokenUsage``, behind ``TokenAuthReadOnly``,
  which lets an exhausted or expired key in): the token's own quota in raw units
  (``QuotaPerUnit`` per USD, 500,000 unless the operator changed it). Read first.
- ``GET /dashboard/billing/subscription`` and ``/dashboard/billing/usage`` (the
  OpenAI-compatible pair, behind ``TokenAuth``, so an exhausted key gets a 401 there):
  the total and the used amount in the site's *display unit*, which is USD by default
  but may be CNY (times the operator's exchange rate) or raw quota ("TOKENS"); they count
  the token, or the whole user when the operator turned ``DisplayTokenStatEnabled`` off.
  Read only when the first route is missing (an older new-api).
- ``GET /api/status`` (public, no key needed): ``quota_per_unit``, ``quota_display_type``
  and ``usd_exchange_rate``, which say how to turn either answer into USD. When it does
  not answer, raw quota is converted with new-api's default 500,000 per USD, and a
  display-unit answer is left in ``unit="display"`` with no USD figure: it is USD on a
  stock site, but may as well be yuan or tokens, and only the site can say which.

These routes live below the base URL itself, not below ``/mj`` (``base_url`` is kept
without its ``/mj``: ``_config.resolve_base_url``), and the key goes only there
(``Http.at_base``). Self-hosted midjourney-proxy and TrueAI servers have no billing:
those dialects get UnsupportedByRelayError without a request; on ``dialect="auto"`` a
404, 405 or web page on every route means the same.
"""

from __future__ import annotations

import datetime as dt
import logging
import weakref
from typing import Any, Final

import attrs

from ._config import DIALECTS
from ._converter import structure
from ._models import BillingSubscription, BillingUsage, SiteStatus, TokenUsage
from ._protocol import EMPTY, NEW_API_DIALECTS, ROUTES, relay_words
from ._relay import Relay
from .errors import (
    APIError,
    MalformedResponseError,
    QuickMJError,
    RateLimitError,
    UnsupportedByRelayError,
)

__all__ = (
    "DEFAULT_QUOTA_PER_UNIT",
    "NO_BILLING_DIALECTS",
    "Balance",
    "balance_from_dashboard",
    "balance_from_token_usage",
    "read_balance",
)

logger = logging.getLogger("quickmj")

#: new-api's ``common.QuotaPerUnit``: raw quota units per USD unless the operator changed it.
DEFAULT_QUOTA_PER_UNIT: Final = 500_000.0
#: What new-api's OpenAI-compatible routes report for an unlimited token (display unit).
_UNLIMITED_AMOUNT: Final = 100_000_000.0
#: Dialects whose servers keep no accounts of money (self-hosted proxies: not new-api).
NO_BILLING_DIALECTS: Final = tuple(d for d in DIALECTS if d not in NEW_API_DIALECTS)

TOKEN_USAGE: Final = "/api/usage/token/"
SUBSCRIPTION: Final = "/dashboard/billing/subscription"
USAGE: Final = "/dashboard/billing/usage"
STATUS: Final = "/api/status"

_RAW_LIMIT = 4000  # characters of the parsed answers a Balance keeps in ``raw``


@attrs.frozen
class Balance:
    """What a key has left and has used, as the relay reported it.

    Amounts are in ``unit``: ``"quota"`` for new-api's raw quota units (``/api/usage/token``,
    or a site that displays "TOKENS"), ``"USD"`` or ``"CNY"`` when the site's display unit
    is known to be that currency, ``"display"`` when the relay did not say which unit its
    OpenAI-compatible routes use. The ``*_usd`` figures are set only where the relay said
    how to convert (or, for raw quota, with new-api's default 500,000 units per USD).

    Attributes:
        remaining: what is left; negative when the key overdrew (new-api charges after
            the submit, so a key can end below zero); None for an unlimited key.
        used: what the key has spent so far (failed jobs refunded to the account may
            still count here: new-api refunds the user, and only newer versions the key).
        granted: remaining + used: the key's whole allowance; None when unlimited.
        unit: ``"quota"``, ``"USD"``, ``"CNY"`` or ``"display"`` (see above).
        units_per_usd: how many of ``unit`` make one USD (new-api's ``QuotaPerUnit`` for
            raw quota; 1 for USD; the exchange rate for CNY); None when unknown.
        remaining_usd: ``remaining`` in USD, when convertible.
        used_usd: ``used`` in USD, when convertible.
        unlimited: the key has no quota limit.
        expires_at: when the key expires (UTC), None for never.
        source: the route(s) read, e.g. ``"/api/usage/token/"``.
        raw: the parsed answers, for diagnostics (not compared, not shown in repr).
    """

    remaining: float | None
    used: float | None
    granted: float | None
    unit: str
    units_per_usd: float | None
    remaining_usd: float | None
    used_usd: float | None
    unlimited: bool
    expires_at: dt.datetime | None
    source: str
    raw: Any = attrs.field(default=None, eq=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """The balance as JSON-ready data (``expires_at`` in ISO 8601; no ``raw``)."""
        data = attrs.asdict(self, filter=lambda a, _: a.name != "raw")
        data["expires_at"] = self.expires_at.isoformat() if self.expires_at else None
        return data

    def __str__(self) -> str:
        if self.unlimited:
            left = "unlimited"
        else:
            left = f"{_amount(self.remaining)} {self.unit} left"
            if self.remaining_usd is not None and self.unit != "USD":
                left += f" ({_dollars(self.remaining_usd)})"
        used = f"{_amount(self.used)} {self.unit} used"
        if self.used_usd is not None and self.unit != "USD":
            used += f" ({_dollars(self.used_usd)})"
        return f"{left}, {used}"


def _amount(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:,.0f}" if value.is_integer() else f"{value:,.4f}"


def _dollars(value: float) -> str:
    return f"-${-value:,.4f}" if value < 0 else f"${value:,.4f}"


# ---- reading ----


async def read_balance(relay: Relay) -> Balance:
    """The key's balance from the relay (see the module docstring for the routes).

    Raises:
        UnsupportedByRelayError: the relay keeps no billing (midjourney-proxy, TrueAI,
            or no billing route answered).
        AuthenticationError: the relay refused the key (``reason`` says why).
        APIError: the relay answered its own error (``{"error": ...}`` at HTTP 200).
        MalformedResponseError: an answer of the wrong shape.
    """
    if relay.dialect in NO_BILLING_DIALECTS:
        raise UnsupportedByRelayError(
            f"the {relay.dialect} relay keeps no billing: there the cost of a run is the "
            "count of its jobs (by action and mode)",
            route=f"GET {TOKEN_USAGE}",
            dialects=ROUTES[f"GET {TOKEN_USAGE}"],
            path=TOKEN_USAGE,
        )
    try:
        # Not retried on 429: new-api limits this route to 20 reads per 20 minutes per IP
        # (CriticalRateLimit); the dashboard routes answer the same question without it.
        data = await _read(relay, TOKEN_USAGE, retry_rate_limit=False)
    except (UnsupportedByRelayError, RateLimitError) as first:
        logger.debug("GET %s: %s: trying the dashboard routes", TOKEN_USAGE, first)
        return await _from_dashboard(relay, first)
    status = await _site_status(relay)
    return balance_from_token_usage(data, status)


async def _from_dashboard(relay: Relay, first: QuickMJError) -> Balance:
    try:
        subscription = await _read(relay, SUBSCRIPTION)
        usage = await _read(relay, USAGE)
    except UnsupportedByRelayError as exc:
        if isinstance(first, RateLimitError):
            raise first from exc  # the usage route exists: it said "later"
        raise exc.reworded(
            "this relay reports no balance: neither new-api's /api/usage/token/ nor its "
            "/dashboard/billing routes answered (self-hosted midjourney-proxy and TrueAI "
            "have no billing; otherwise check base_url)"
        ) from first
    status = await _site_status(relay)
    return balance_from_dashboard(subscription, usage, status)


async def _read(relay: Relay, path: str, *, retry_rate_limit: bool = True) -> Any:
    """``relay.read_base(path)``; a 404 or 405 with a body is "not served" too.

    new-api answers an ``/api`` or ``/v1`` path it lacks (an older version) with 404
    ``{"error": {"message": "Invalid URL (GET ...)"}}``, which the relay rules read as a
    relay's error body; here it only means the route is missing.
    """
    try:
        return await relay.read_base(path, retry_rate_limit=retry_rate_limit)
    except UnsupportedByRelayError:
        raise
    except APIError as exc:
        if exc.status not in (404, 405):
            raise
        raise UnsupportedByRelayError(
            f"{path}: this relay does not serve GET {path} (HTTP {exc.status}): "
            f"{relay_words(exc.body)[:200]}",
            route=f"GET {path}",
            dialects=ROUTES[f"GET {path}"],
            status=exc.status,
            body=exc.body,
            path=path,
            headers=exc.headers,
            request_id=exc.request_id,
        ) from exc


async def _site_status(relay: Relay) -> SiteStatus | None:
    """new-api's public ``/api/status`` settings, or None when it does not say.

    Read once per client (an operator changes its units about never, and a budget that
    reads the balance often should not pay a second request each time); a failed read is
    tried again next time.
    """
    known = _STATUS_SEEN.get(relay)
    if known is not None:
        return known
    try:
        data = await relay.read_base(STATUS)
    except QuickMJError as exc:
        logger.debug("GET %s: %s (assuming new-api's default units)", STATUS, exc)
        return None
    inner = data.get("data") if isinstance(data, dict) else None
    if not isinstance(inner, dict):
        return None
    try:
        status = structure(inner, SiteStatus, what="status")
    except MalformedResponseError as exc:
        logger.debug("GET %s: %s (assuming new-api's default units)", STATUS, exc)
        return None
    _STATUS_SEEN[relay] = status
    return status


#: Each client's (Relay's) ``/api/status`` answer, for as long as the client lives.
_STATUS_SEEN: weakref.WeakKeyDictionary[Relay, SiteStatus] = weakref.WeakKeyDictionary()


# ---- parsing (no I/O: the tests feed these the relay's shapes) ----


def balance_from_token_usage(data: Any, status: SiteStatus | None = None) -> Balance:
    """A Balance from new-api's ``/api/usage/token/`` answer (raw quota units)."""
    inner = _payload(data, TOKEN_USAGE)
    usage = structure(inner, TokenUsage, what="usage")
    if usage.total_used is None or (usage.total_available is None and not usage.unlimited_quota):
        raise MalformedResponseError(
            f"{TOKEN_USAGE}: no total_used / total_available in the answer: {_shown(data)}",
            status=200,
            path=TOKEN_USAGE,
        )
    per_usd = _quota_per_unit(status)
    unlimited = bool(usage.unlimited_quota)
    # An unlimited token's remain_quota is meaningless (new-api keeps subtracting from it).
    remaining = None if unlimited else usage.total_available
    granted = None if unlimited else usage.total_granted
    return Balance(
        remaining=remaining,
        used=usage.total_used,
        granted=granted,
        unit="quota",
        units_per_usd=per_usd,
        remaining_usd=_div(remaining, per_usd),
        used_usd=_div(usage.total_used, per_usd),
        unlimited=unlimited,
        expires_at=_when(usage.expires_at, TOKEN_USAGE),
        source=TOKEN_USAGE,
        raw=_kept(data),
    )


def balance_from_dashboard(
    subscription: Any, usage: Any, status: SiteStatus | None = None
) -> Balance:
    """A Balance from new-api's OpenAI-compatible subscription and usage answers."""
    sub = structure(_payload(subscription, SUBSCRIPTION, inner=False), BillingSubscription)
    used_body = structure(_payload(usage, USAGE, inner=False), BillingUsage)
    total = sub.hard_limit_usd if sub.hard_limit_usd is not None else sub.soft_limit_usd
    if total is None or used_body.total_usage is None:
        raise MalformedResponseError(
            f"{SUBSCRIPTION}: no hard_limit_usd / total_usage in the answers",
            status=200,
            path=SUBSCRIPTION,
        )
    used = used_body.total_usage / 100  # new-api sends hundredths of the display unit
    unlimited = total == _UNLIMITED_AMOUNT
    unit, per_usd = _display_unit(status)
    remaining = None if unlimited else total - used
    return Balance(
        remaining=remaining,
        used=used,
        granted=None if unlimited else total,
        unit=unit,
        units_per_usd=per_usd,
        remaining_usd=_div(remaining, per_usd),
        used_usd=_div(used, per_usd),
        unlimited=unlimited,
        expires_at=_when(sub.access_until, SUBSCRIPTION),
        source=f"{SUBSCRIPTION} + {USAGE}",
        raw=_kept({"subscription": subscription, "usage": usage}),
    )


def _payload(data: Any, path: str, *, inner: bool = True) -> dict[str, Any]:
    """The object to read: ``data`` itself or its ``data`` member; the relay's own errors
    (``{"error": {...}}`` or ``{"success": false}`` at HTTP 200) raise APIError."""
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) or data.get("success") is False:
            said = error.get("message") if isinstance(error, dict) else data.get("message")
            raise APIError(
                f"{path}: the relay answered an error: {said or _shown(data)}",
                status=200,
                body=_shown(data),
                path=path,
            )
        found = data.get("data") if inner else data
        if isinstance(found, dict):
            return found
    what = "nothing" if data is EMPTY else _shown(data)
    raise MalformedResponseError(
        f"{path}: expected new-api's billing object, got {what}", status=200, path=path
    )


def _quota_per_unit(status: SiteStatus | None) -> float:
    value = status.quota_per_unit if status is not None else None
    return value if value is not None and value > 0 else DEFAULT_QUOTA_PER_UNIT


def _display_unit(status: SiteStatus | None) -> tuple[str, float | None]:
    """The OpenAI-compatible routes' unit and how many of it make a USD (new-api's
    ``GetQuotaDisplayType``: CNY, TOKENS, else USD; older sites: ``display_in_currency``)."""
    if status is None:
        return "display", None
    kind = (status.quota_display_type or "").upper()
    if not kind and status.display_in_currency is not None:
        kind = "USD" if status.display_in_currency else "TOKENS"
    if kind == "TOKENS":
        return "quota", _quota_per_unit(status)
    if kind == "CNY":
        rate = status.usd_exchange_rate
        return "CNY", rate if rate is not None and rate > 0 else None
    if kind:
        return "USD", 1.0  # USD, and CUSTOM (new-api's billing routes report it as USD)
    return "display", None


def _div(value: float | None, per_usd: float | None) -> float | None:
    if value is None or per_usd is None:
        return None
    return value / per_usd


def _when(seconds: float | None, path: str) -> dt.datetime | None:
    """Unix seconds -> UTC datetime; 0 and -1 (new-api's "never") -> None."""
    if seconds is None or seconds <= 0:
        return None
    try:
        return dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise MalformedResponseError(
            f"{path}: expiry {seconds!r} is not a time", status=200, path=path
        ) from None


def _shown(data: Any) -> str:
    text = repr(data)
    return text if len(text) <= 200 else text[:197] + "..."


def _kept(data: Any) -> Any:
    # Diagnostics only: a huge answer (model_limits of a thousand models) is cut to its repr.
    return data if len(repr(data)) <= _RAW_LIMIT else _shown(data)
