"""new-api's billing routes for the quickrouter dialect, outside ``/mj`` (protocol.md §8.3).

Sources, QuantumNous/new-api: ``router/api-router.go`` (``/api/usage/token/`` behind
``TokenAuthReadOnly``: gin registers it with the trailing slash, so the bare path gets
gin's 301; ``/api/status`` public), ``router/dashboard.go`` (``/dashboard/billing/
subscription``, ``/dashboard/billing/usage``, both also under ``/v1``, and ``/v1/credits``,
behind ``TokenAuth``: an exhausted key gets its 401 there), ``middleware/auth.go``
(``TokenAuthReadOnly``: ``{"success": false, "message"}`` 401s, only a *disabled* token
refused), ``controller/token.go`` (``GetTokenUsage``: ``gin.H``, so sorted keys, raw quota),
``controller/billing.go`` (the display unit: quota / QuotaPerUnit for USD, times the
exchange rate for CNY, raw for TOKENS; an unlimited token reports 100000000; usage is the
used amount x 100), ``controller/misc.go`` (``GetStatus``).

The counts are the key's token (new-api's default ``DisplayTokenStatEnabled``), from the
dialect's :class:`~.._ledger.Ledger`. ``/v1/credits`` has the newer field set
(``credit_summary``; older versions sent only ``data.total_usage``, the remainder).
"""

from __future__ import annotations

import collections
from typing import Any

from aiohttp import web

from .._config import SimulatorConfig
from .._engine import Engine
from .._ledger import Ledger, TokenLedger
from .._wire import go_json, sorted_keys
from ._base import Call, Reply, Route

__all__ = ("NewApiBilling",)

JSON = "application/json; charset=utf-8"
_UNLIMITED = 100_000_000
#: new-api's CriticalRateLimitDuration (seconds).
_CRITICAL_WINDOW = 1200.0
_REDIRECT = b'<a href="/api/usage/token/">Moved Permanently</a>.\n\n'


def _go_number(value: float) -> float | int:
    """A float64 as Go writes it: integral values without a ``.0``."""
    return int(value) if float(value).is_integer() and abs(value) < 1e21 else value


class NewApiBilling:
    """Mixed into QuickRouterDialect: ``root_routes`` and their handlers."""

    # Provided by QuickRouterDialect.
    ledger: Ledger
    _tokens: dict[str, str]
    engine: Engine
    config: SimulatorConfig
    #: When the last reads of /api/usage/token/ came (``usage_rate_limit``).
    _usage_reads: collections.deque[float] | None = None

    def _headers(self, request: web.Request) -> dict[str, str]:
        raise NotImplementedError

    def root_routes(self) -> list[Route]:
        routes = [
            Route("GET", "/api/usage/token/", "account", self._token_usage, auth=False),
            Route("GET", "/api/usage/token", "account", self._add_slash, auth=False),
            Route("GET", "/api/status", "account", self._status, auth=False),
            Route("GET", "/v1/credits", "account", self._credits),
        ]
        for prefix in ("", "/v1"):
            routes.append(
                Route("GET", f"{prefix}/dashboard/billing/subscription", "account", self._sub)
            )
            routes.append(Route("GET", f"{prefix}/dashboard/billing/usage", "account", self._usage))
        return routes

    # ---- /api/usage/token/ ----

    def _plain(self, request: web.Request, status: int, body: dict[str, Any]) -> Reply:
        return Reply(status, go_json(sorted_keys(body)), JSON, self._headers(request))

    def _rate_limited(self) -> bool:
        """``CriticalRateLimit`` (``InMemoryRateLimiter.Request``): at most N reads in any
        20 minutes; a refused read is not counted."""
        limit = self.config.usage_rate_limit
        if limit is None:
            return False
        if self._usage_reads is None:
            self._usage_reads = collections.deque()
        seen = self._usage_reads
        now = self.engine.clock.now()
        if len(seen) >= limit:
            if now - seen[0] < _CRITICAL_WINDOW:
                return True
            seen.popleft()
        seen.append(now)
        return False

    async def _token_usage(self, call: Call) -> Reply:
        request = call.request
        if self._rate_limited():
            headers = {**self._headers(request), "Retry-After": str(int(_CRITICAL_WINDOW))}
            return Reply(429, b"", None, headers)
        header = request.headers.get("Authorization", "")
        if header == "":
            return self._plain(request, 401, {"success": False, "message": "未提供令牌"})
        key = header[7:].strip() if header.startswith(("Bearer ", "bearer ")) else header
        key = key.removeprefix("sk-")
        token = key if key in self._tokens else key.split("-")[0]
        if token not in self._tokens:
            return self._plain(request, 401, {"success": False, "message": "无效的令牌"})
        full = self._tokens[token]
        reason = self.engine.revoked.get(full)
        if reason == "disabled":  # TokenAuthReadOnly lets expired and exhausted keys in
            return self._plain(request, 401, {"success": False, "message": "该令牌状态不可用"})
        parts = header.split(" ")
        if len(parts) != 2 or parts[0].lower() != "bearer":
            # GetTokenUsage reads the header itself, and wants exactly "Bearer <key>".
            return self._plain(request, 401, {"success": False, "message": "Invalid Bearer token"})
        t = self.ledger.of(full)
        expires = 0
        if reason == "expired":
            expires = self.engine.clock.epoch_ms(self.engine.clock.now()) // 1000 - 3600
        data = {
            "object": "token_usage",
            "name": "quickmj-sim",
            "total_granted": t.granted,
            "total_used": t.used,
            "total_available": t.remain,
            "unlimited_quota": t.unlimited,
            "model_limits": {},
            "model_limits_enabled": False,
            "expires_at": expires,
        }
        body = {"code": True, "message": "ok", "data": sorted_keys(data)}
        return self._plain(request, 200, body)

    async def _add_slash(self, call: Call) -> Reply:
        # gin's RedirectTrailingSlash: 301 for a GET, to the registered path.
        headers = {**self._headers(call.request), "Location": "/api/usage/token/"}
        return Reply(301, _REDIRECT, "text/html; charset=utf-8", headers)

    async def _status(self, call: Call) -> Reply:
        cfg = self.config
        data = {
            "system_name": "New API",
            "version": "v0.0.0-quickmj-sim",
            "quota_per_unit": _go_number(cfg.quota_per_unit),
            "display_in_currency": cfg.quota_display_type != "TOKENS",
            "quota_display_type": cfg.quota_display_type,
            "usd_exchange_rate": _go_number(cfg.usd_exchange_rate),
            "mj_notify_enabled": cfg.notify_enabled,
        }
        body = {"success": True, "message": "", "data": sorted_keys(data)}
        return self._plain(call.request, 200, body)

    # ---- the OpenAI-compatible routes (TokenAuth: the app authenticated the key) ----

    def _display(self, quota: int) -> float:
        cfg = self.config
        if cfg.quota_display_type == "TOKENS":
            return float(quota)
        usd = quota / cfg.quota_per_unit
        return usd * cfg.usd_exchange_rate if cfg.quota_display_type == "CNY" else usd

    def _token(self, call: Call) -> TokenLedger:
        assert call.key is not None
        return self.ledger.of(call.key)

    async def _sub(self, call: Call) -> Reply:
        t = self._token(call)
        amount = _UNLIMITED if t.unlimited else _go_number(self._display(t.granted))
        body = {
            "object": "billing_subscription",
            "has_payment_method": True,
            "soft_limit_usd": amount,
            "hard_limit_usd": amount,
            "system_hard_limit_usd": amount,
            "access_until": 0,
        }
        return Reply(200, go_json(body), JSON, self._headers(call.request))

    async def _usage(self, call: Call) -> Reply:
        used = self._display(self._token(call).used) * 100
        body = {"object": "list", "total_usage": _go_number(used)}
        return Reply(200, go_json(body), JSON, self._headers(call.request))

    async def _credits(self, call: Call) -> Reply:
        t = self._token(call)
        left = _UNLIMITED if t.unlimited else _go_number(self._display(t.remain))
        used = _go_number(self._display(t.used))
        granted = _UNLIMITED if t.unlimited else _go_number(self._display(t.granted))
        figures = {"total_granted": granted, "total_used": used, "total_available": left}
        body = {
            "object": "credit_summary",
            **figures,
            "data": {**figures, "total_usage": left},
        }
        return Reply(200, go_json(body), JSON, self._headers(call.request))
