"""Balance: new-api's billing routes read into one Balance, their errors, the fallback, the
simulator charging per action, and ``quickmj balance``.

The shapes are new-api's (controller/token.go GetTokenUsage, controller/billing.go,
controller/misc.go GetStatus), written here by hand.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from quickmj import AuthenticationError, Balance, MalformedResponseError, UnsupportedByRelayError
from quickmj._billing import balance_from_dashboard, balance_from_token_usage
from quickmj._models import SiteStatus
from quickmj.errors import APIError
from tests.fakes import Script

TOKEN = "GET /api/usage/token/"
SUB = "GET /dashboard/billing/subscription"
USAGE = "GET /dashboard/billing/usage"
STATUS = "GET /api/status"


def token_usage(**over: Any) -> dict[str, Any]:
    data = {
        "object": "token_usage",
        "name": "batch key",
        "total_granted": 5_000_000,
        "total_used": 1_250_000,
        "total_available": 3_750_000,
        "unlimited_quota": False,
        "model_limits": {},
        "model_limits_enabled": False,
        "expires_at": 0,
    }
    data.update(over)
    return {"code": True, "message": "ok", "data": data}


def status(**over: Any) -> dict[str, Any]:
    data = {"quota_per_unit": 500000, "quota_display_type": "USD", "usd_exchange_rate": 7.3}
    data.update(over)
    return {"success": True, "message": "", "data": data}


def subscription(amount: float, access_until: int = 0) -> dict[str, Any]:
    return {
        "object": "billing_subscription",
        "has_payment_method": True,
        "soft_limit_usd": amount,
        "hard_limit_usd": amount,
        "system_hard_limit_usd": amount,
        "access_until": access_until,
    }


def usage(used_display: float) -> dict[str, Any]:
    return {"object": "list", "total_usage": used_display * 100}


# ---- parsing each shape ----


def test_token_usage_in_raw_quota_and_usd() -> None:
    b = balance_from_token_usage(token_usage(), SiteStatus(quota_per_unit=500000))
    assert (b.remaining, b.used, b.granted) == (3_750_000, 1_250_000, 5_000_000)
    assert b.unit == "quota" and b.units_per_usd == 500000
    assert b.remaining_usd == pytest.approx(7.5) and b.used_usd == pytest.approx(2.5)
    assert not b.unlimited and b.expires_at is None and b.source == "/api/usage/token/"


def test_token_usage_uses_the_sites_quota_per_unit_else_the_default() -> None:
    assert balance_from_token_usage(token_usage(), SiteStatus(quota_per_unit=1000)).used_usd == 1250
    assert balance_from_token_usage(token_usage(), None).units_per_usd == 500_000


def test_token_usage_unlimited_has_no_remaining_and_expiry_is_read() -> None:
    # new-api keeps subtracting from an unlimited token's remain_quota: it means nothing.
    b = balance_from_token_usage(
        token_usage(unlimited_quota=True, total_available=-42, expires_at=1_900_000_000)
    )
    assert b.unlimited and b.remaining is None and b.granted is None and b.remaining_usd is None
    assert b.used == 1_250_000
    assert b.expires_at == dt.datetime.fromtimestamp(1_900_000_000, tz=dt.timezone.utc)


def test_token_usage_overdrawn_key_stays_negative() -> None:
    b = balance_from_token_usage(token_usage(total_available=-25_000, total_granted=1_225_000))
    assert b.remaining == -25_000 and b.remaining_usd == pytest.approx(-0.05)


@pytest.mark.parametrize(
    ("display", "unit", "remaining_usd"),
    [
        ({"quota_display_type": "USD"}, "USD", 7.5),
        ({"quota_display_type": "CNY", "usd_exchange_rate": 7.5}, "CNY", 7.5 / 7.5),
        ({"quota_display_type": "TOKENS"}, "quota", 7.5 / 500000),
        ({"quota_display_type": None, "display_in_currency": True}, "USD", 7.5),
    ],
)
def test_dashboard_units_follow_the_sites_display_type(
    display: dict[str, Any], unit: str, remaining_usd: float
) -> None:
    site = SiteStatus(
        quota_per_unit=500000,
        quota_display_type=display.get("quota_display_type"),
        usd_exchange_rate=display.get("usd_exchange_rate"),
        display_in_currency=display.get("display_in_currency"),
    )
    b = balance_from_dashboard(subscription(10), usage(2.5), site)
    assert b.unit == unit and b.remaining == pytest.approx(7.5) and b.used == pytest.approx(2.5)
    assert b.remaining_usd == pytest.approx(remaining_usd)


def test_dashboard_without_site_status_is_no_usd_figure() -> None:
    # USD on a stock site, but CNY or tokens elsewhere: without the site's word, no guess.
    b = balance_from_dashboard(subscription(10, access_until=1_900_000_000), usage(2.5))
    assert b.unit == "display" and b.units_per_usd is None and b.remaining_usd is None
    assert b.expires_at is not None and b.source.startswith("/dashboard/billing/subscription")


def test_dashboard_unlimited_amount() -> None:
    b = balance_from_dashboard(subscription(100000000), usage(3))
    assert b.unlimited and b.remaining is None and b.granted is None and b.used == 3


@pytest.mark.parametrize(
    "bad",
    [
        {"total_used": "12"},
        {"total_used": True},
        {"total_available": None, "total_used": None},
        {"unlimited_quota": "no"},
        {"expires_at": 1e300},
    ],
)
def test_malformed_numbers(bad: dict[str, Any]) -> None:
    with pytest.raises(MalformedResponseError):
        balance_from_token_usage(token_usage(**bad))


def test_non_finite_number_is_malformed() -> None:
    with pytest.raises(MalformedResponseError):
        balance_from_token_usage({"code": True, "data": {"total_used": float("nan")}})


@pytest.mark.parametrize(
    "body",
    [
        {"error": {"message": "record not found", "type": "upstream_error"}},
        {"success": False, "message": "获取令牌信息失败"},
    ],
)
def test_error_bodies_at_200_are_api_errors(body: dict[str, Any]) -> None:
    with pytest.raises(APIError) as info:
        balance_from_token_usage(body)
    assert info.value.status == 200 and not isinstance(info.value, MalformedResponseError)


def test_balance_repr_and_eq_leave_raw_out() -> None:
    a = balance_from_token_usage(token_usage())
    b = balance_from_token_usage(token_usage(name="other"))
    assert a == b and a.raw != b.raw and "raw" not in repr(a)
    assert a.as_dict()["remaining"] == 3_750_000 and "raw" not in a.as_dict()
    assert "3,750,000 quota left ($7.5000)" in str(a)


# ---- over HTTP (MockTransport) ----


async def test_balance_reads_token_usage_and_status_with_bearer_at_the_root() -> None:
    script = Script({TOKEN: {"json": token_usage()}, STATUS: {"json": status(quota_per_unit=1e6)}})
    async with script.client(base_url="http://relay.test/mj", mode="fast") as mj:
        b = await mj.balance()
    assert b.units_per_usd == 1e6 and b.used_usd == pytest.approx(1.25)
    assert script.calls == [TOKEN, STATUS]  # at the base URL's root: no /mj, no mode prefix
    assert script.requests[0].headers["Authorization"] == "Bearer test-key"


async def test_balance_falls_back_to_the_dashboard_routes() -> None:
    script = Script(
        {
            TOKEN: {"status": 404, "body": "404 page not found"},
            SUB: {"json": subscription(20)},
            USAGE: {"json": usage(5)},
            STATUS: {"json": status()},
        }
    )
    async with script.client() as mj:
        b = await mj.balance()
    assert (b.unit, b.remaining, b.used, b.remaining_usd) == ("USD", 15, 5, 15)
    assert script.calls == [TOKEN, SUB, USAGE, STATUS]


async def test_status_route_failing_keeps_the_default_units() -> None:
    script = Script({TOKEN: {"json": token_usage()}, STATUS: {"status": 404, "body": "no"}})
    async with script.client() as mj:
        assert (await mj.balance()).units_per_usd == 500_000


@pytest.mark.parametrize(
    "missing",
    [
        {"status": 404, "json": {"timestamp": 1, "status": 404, "error": "Not Found"}},
        {"status": 405, "body": ""},
        {"status": 200, "body": "<!doctype html><html>new-api</html>"},
    ],
)
async def test_no_billing_route_is_unsupported(missing: dict[str, Any]) -> None:
    script = Script({TOKEN: missing, SUB: missing, USAGE: missing})
    async with script.client() as mj:
        with pytest.raises(UnsupportedByRelayError, match="reports no balance"):
            await mj.balance()


@pytest.mark.parametrize("dialect", ["midjourney-proxy", "trueai"])
async def test_self_hosted_dialects_have_no_billing_and_send_nothing(dialect: str) -> None:
    script = Script()
    async with script.client(dialect=dialect) as mj:
        with pytest.raises(UnsupportedByRelayError, match="keeps no billing"):
            await mj.balance()
    assert script.calls == []


async def test_401_is_authentication_error_with_its_reason() -> None:
    said = {"success": False, "message": "该令牌状态不可用"}
    script = Script({TOKEN: {"status": 401, "json": said}})
    async with script.client() as mj:
        with pytest.raises(AuthenticationError) as info:
            await mj.balance()
    assert info.value.reason == "disabled" and isinstance(Balance, type)
