"""Balance: new-api's billing routes read into one Balance, their errors, the fallback, the
simulator charging per action, and ``quickmj balance``.

The shapes are new-api's (controller/token.go GetTokenUsage, controller/billing.go,
controller/misc.go GetStatus), written here by hand.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from quickmj import (
    AsyncClient,
    AuthenticationError,
    Balance,
    Client,
    MalformedResponseError,
    RateLimitError,
    UnsupportedByRelayError,
    ValidationError,
)
from quickmj._billing import balance_from_dashboard, balance_from_token_usage
from quickmj._cli import _parser, _simulator_config, main
from quickmj._models import SiteStatus
from quickmj.errors import APIError
from quickmj.testing import SimulatorConfig
from quickmj.testing._sim import RunningSimulator, simulate
from tests.fakes import BASE, KEY, NO_WAIT, Script

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


async def test_site_status_is_read_once_per_client() -> None:
    script = Script({TOKEN: {"json": token_usage()}, STATUS: {"json": status()}})
    async with script.client() as mj:
        await mj.balance()
        await mj.balance()
    assert script.calls == [TOKEN, STATUS, TOKEN]


def test_blocking_client_balance() -> None:
    script = Script(
        {TOKEN: {"json": token_usage(total_available=-25_000)}, STATUS: {"json": status()}}
    )
    with Client(KEY, base_url=BASE, transport=script.transport(), retry=NO_WAIT) as mj:
        b = mj.balance()
    assert b.remaining == -25_000 and str(b).startswith("-25,000 quota left (-$0.0500)")


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


async def test_an_older_new_api_without_the_usage_route_falls_back() -> None:
    # new-api answers /api and /v1 paths it lacks with an OpenAI-shaped 404.
    invalid = {"message": "Invalid URL (GET /api/usage/token/)", "type": "invalid_request_error"}
    script = Script(
        {
            TOKEN: {"status": 404, "json": {"error": {"code": "", "param": "", **invalid}}},
            SUB: {"json": subscription(20)},
            USAGE: {"json": usage(5)},
            STATUS: {"status": 404, "json": {"error": invalid}},
        }
    )
    async with script.client() as mj:
        b = await mj.balance()
    assert (b.unit, b.remaining, b.used, b.remaining_usd) == ("display", 15, 5, None)


@pytest.mark.parametrize(
    "missing",
    [
        {"status": 404, "json": {"timestamp": 1, "status": 404, "error": "Not Found"}},
        {"status": 404, "json": {"error": {"message": "Invalid URL (GET /x)", "type": "x"}}},
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


# ---- the simulator (quickrouter: new-api's routes and charges) ----


@contextlib.asynccontextmanager
async def sim_client(**config: Any) -> AsyncIterator[tuple[RunningSimulator, AsyncClient]]:
    now = [0.0]  # a still clock: jobs do not move unless a test advances it
    async with (
        simulate(clock=lambda: now[0], **config) as relay,
        AsyncClient(
            relay.api_key, base_url=relay.base_url, dialect=relay.dialect, retry=NO_WAIT
        ) as mj,
    ):
        yield relay, mj


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, str]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(url, headers=headers, allow_redirects=False) as r,
    ):
        return r.status, await r.read(), r.headers.get("Location", "")


async def test_sim_routes_have_new_apis_shapes() -> None:
    async with sim_client(quota_usd=2, model_prices={"mj_imagine": 0.05}) as (relay, mj):
        await mj.imagine("a red fox")
        auth = {"Authorization": f"Bearer {relay.api_key}"}
        base = relay.base_url
        status, body, _ = await get(base + "/api/usage/token/", auth)
        assert 200 == status
        assert body == (
            b'{"code":true,"data":{"expires_at":0,"model_limits":{},"model_limits_enabled":false,'
            b'"name":"quickmj-sim","object":"token_usage","total_available":975000,'
            b'"total_granted":1000000,"total_used":25000,"unlimited_quota":false},'
            b'"message":"ok"}'
        )
        for prefix in ("", "/v1"):
            status, body, _ = await get(f"{base}{prefix}/dashboard/billing/subscription", auth)
            assert body == (
                b'{"object":"billing_subscription","has_payment_method":true,"soft_limit_usd":2,'
                b'"hard_limit_usd":2,"system_hard_limit_usd":2,"access_until":0}'
            )
            status, body, _ = await get(f"{base}{prefix}/dashboard/billing/usage", auth)
            assert body == b'{"object":"list","total_usage":5}'  # 0.05 USD in cents
        status, body, _ = await get(base + "/v1/credits", auth)
        assert json.loads(body)["data"]["total_usage"] == 1.95
        status, body, _ = await get(base + "/api/status")
        assert json.loads(body)["data"]["quota_per_unit"] == 500000
        # gin's trailing-slash redirect, and TokenAuthReadOnly's own 401 shape
        assert (301, "/api/usage/token/") == (await get(base + "/api/usage/token", auth))[::2]
        status, body, _ = await get(base + "/api/usage/token/")
        assert (401, {"success": False, "message": "未提供令牌"}) == (status, json.loads(body))
        status, body, _ = await get(base + "/api/usage/token/", {"Authorization": "Bearer no"})
        assert (401, "无效的令牌") == (status, json.loads(body)["message"])


async def test_sim_charges_each_action_its_price() -> None:
    prices = {"mj_imagine": 0.04, "mj_shorten": 0.01, "mj_blend": 0.5}
    async with sim_client(quota_usd=1, model_prices=prices) as (_, mj):
        before = await mj.balance()
        await mj.imagine("a red fox")
        await mj.shorten("a very long prompt about a red fox")
        after = await mj.balance()
    assert (before.used, before.remaining, before.units_per_usd) == (0, 500_000, 500_000)
    assert after.used == (0.04 + 0.01) * 500_000 and after.used_usd == pytest.approx(0.05)
    assert after.remaining == 500_000 - after.used and after.granted == 500_000


async def test_sim_key_running_out_mid_batch_is_exhausted_on_submit() -> None:
    # 0.25 USD at 0.10 a grid: new-api lets the third submit take the key below zero
    # (it charges after the upstream accepted), then refuses everything with 401.
    async with sim_client(quota_usd=0.25) as (relay, mj):
        jobs = [await mj.imagine(f"fox {i}") for i in range(3)]
        with pytest.raises(AuthenticationError) as info:
            await mj.imagine("fox 3")
        assert info.value.reason == "exhausted" and info.value.status == 401
        assert "sk-***" in str(info.value) and relay.api_key not in str(info.value)
        with pytest.raises(AuthenticationError):
            await mj.fetch(jobs[0].id)  # every route: TokenAuth
        left = await mj.balance()  # TokenAuthReadOnly lets the exhausted key read it
        assert relay.simulator.counters["POST /submit/imagine"] == 4
        assert len(relay.simulator.submissions) == 3
    assert left.remaining == -25_000 and left.used == 150_000 and not left.unlimited
    assert left.remaining_usd == pytest.approx(-0.05)


async def test_sim_account_quota_refuses_then_refunds_a_failed_job() -> None:
    # The account (new-api's user quota) pays 0.15 USD: one grid; the second is refused
    # with code 4 before anything is created. A failed job is refunded to the account
    # when the relay sees it fail, not to the key (new-api's UpdateMidjourneyTaskBulk).
    async with sim_client(account_quota_usd=0.15) as (relay, mj):
        job = await mj.imagine("a failword fox")
        with pytest.raises(ValidationError, match="quota_not_enough; nothing was created"):
            await mj.imagine("another fox")
        relay.simulator.advance(5)  # the job fails
        await mj.imagine("a third fox")  # refunded: the account pays again
        spent = await mj.balance()
    assert spent.unlimited and spent.used == 100_000 and spent.remaining is None
    assert job.id in relay.simulator.tasks


async def test_sim_usage_route_rate_limit_falls_back_to_the_dashboard() -> None:
    # new-api's CriticalRateLimit: 2 reads here (20 on a stock relay) per 20 minutes; the
    # third is a 429, not retried: the dashboard routes answer, in the site's USD.
    async with sim_client(quota_usd=1, usage_rate_limit=2) as (relay, mj):
        await mj.imagine("a red fox")
        first, second, third = [await mj.balance() for _ in range(3)]
        counters = relay.simulator.counters
        assert counters["GET /api/usage/token/"] == 3 and counters["GET /api/status"] == 1
        relay.simulator.advance(1200)
        fourth = await mj.balance()
    assert first == second and (first.unit, first.used) == ("quota", 50_000)
    assert (third.unit, third.used, third.used_usd, third.remaining_usd) == ("USD", 0.1, 0.1, 0.9)
    assert third.source.startswith("/dashboard/billing/subscription")
    assert fourth == first  # the window passed


async def test_a_rate_limited_usage_route_without_dashboard_routes_is_a_rate_limit() -> None:
    script = Script(
        {
            TOKEN: {"status": 429, "headers": {"Retry-After": "1200"}, "body": ""},
            SUB: {"status": 404, "body": "404 page not found"},
            USAGE: {"status": 404, "body": "404 page not found"},
        }
    )
    async with script.client() as mj:
        with pytest.raises(RateLimitError) as info:
            await mj.balance()
    assert info.value.retry_after == 60 and script.count(TOKEN) == 1  # not retried


async def test_sim_inpaint_and_custom_zoom_are_free_until_the_modal() -> None:
    from quickmj.testing._sim._ledger import Ledger, model_of

    ledger = Ledger(SimulatorConfig(quota_usd=1))
    assert (model_of("SWAP_FACE"), model_of("CUSTOM_ZOOM")) == ("swap_face", "mj_custom_zoom")
    assert ledger.price("CUSTOM_ZOOM") == 0 and ledger.price("MODAL") == 50_000
    assert ledger.price("UPSCALE") == 25_000 and ledger.price("VIDEO") == 400_000


@pytest.mark.parametrize("dialect", ["midjourney-proxy", "trueai"])
async def test_sim_self_hosted_servers_have_no_billing_routes(dialect: str) -> None:
    async with simulate(dialect=dialect) as relay:
        for path in ("/api/usage/token/", "/dashboard/billing/subscription"):
            status, _, _ = await get(relay.base_url + path, relay.headers)
            assert status == 404, path
        async with AsyncClient(relay.api_key, base_url=relay.base_url, dialect="auto",
                               auth_scheme=relay.auth_scheme, retry=NO_WAIT) as mj:  # fmt: skip
            with pytest.raises(UnsupportedByRelayError, match="reports no balance"):
                await mj.balance()


# ---- quickmj balance ----


def test_cli_balance_json_against_the_simulator(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [k for k in os.environ if k.startswith("QUICKMJ_")]:
        monkeypatch.delenv(name)
    assert 0 == main(["balance", "--simulate", "--json"])
    shown = json.loads(capsys.readouterr().out)["balance"]
    assert shown["unlimited"] and shown["unit"] == "quota" and shown["used"] == 0
    assert shown["source"] == "/api/usage/token/" and shown["expires_at"] is None
    assert 0 == main(["balance", "--simulate"])
    assert "unlimited, 0 quota used ($0.0000)" in capsys.readouterr().out


def test_cli_balance_on_a_relay_without_billing_exits_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [k for k in os.environ if k.startswith("QUICKMJ_")]:
        monkeypatch.delenv(name)
    assert 1 == main(["balance", "--simulate", "--dialect", "trueai", "--json"])
    error = json.loads(capsys.readouterr().err.strip().splitlines()[-1])["error"]
    assert error["type"] == "UnsupportedByRelayError" and "no billing" in error["message"]


def test_cli_simulate_quota_option() -> None:
    args = _parser().parse_args(["simulate", "--quota", "2.5"])
    assert _simulator_config(args).quota_usd == 2.5
    assert _simulator_config(_parser().parse_args(["simulate"])).quota_usd is None
    with pytest.raises(SystemExit):
        _parser().parse_args(["simulate", "--quota", "-1"])
