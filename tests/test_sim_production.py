"""The simulator's production faults (issue 19), each checked on the wire with raw HTTP.

Every fault happens in the dialect where real users met it: a stalled new-api refresher,
server-side timeouts, expiring CDN links, localhost image links, no free Discord account,
a missing channel, unusable tokens, the Java store's lag and TrueAI's admin-only cancel.
The clock is fake wherever a time is checked exactly.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import aiohttp
import attrs
import pytest

from quickmj import (
    AsyncClient,
    AuthenticationError,
    ModelUnavailableError,
    NoAvailableAccountError,
    PollPolicy,
    TaskFailedError,
    TaskStalledError,
    _cli,
)
from quickmj.testing import (
    PRESETS,
    Fault,
    FaultConfig,
    RunningSimulator,
    Simulator,
    SimulatorConfig,
    simulate,
)

PNG = b"\x89PNG\r\n\x1a\n"
EXPIRED = b"This content is no longer available."


@attrs.frozen
class Resp:
    status: int
    body: bytes
    ctype: str | None

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class FakeClock:
    """A monotonic clock that only moves when the simulator's ``advance`` moves it."""

    def __call__(self) -> float:
        return 1000.0


@contextlib.asynccontextmanager
async def served(**config: Any) -> AsyncIterator[tuple[RunningSimulator, aiohttp.ClientSession]]:
    async with (
        simulate(clock=FakeClock(), **config) as relay,
        aiohttp.ClientSession(headers=relay.headers) as session,
    ):
        yield relay, session


async def send(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
) -> Resp:
    kwargs: dict[str, Any] = {"headers": headers}
    if body is not None:
        kwargs["json"] = body
    async with session.request(method, url, **kwargs) as resp:
        return Resp(resp.status, await resp.read(), resp.headers.get("Content-Type"))


async def imagine(relay: RunningSimulator, s: aiohttp.ClientSession, prompt: str) -> str:
    r = await send(s, "POST", relay.url("/submit/imagine"), {"prompt": prompt})
    assert r.status == 200 and r.json["code"] == 1, r.body
    return str(r.json["result"])


async def fetch(relay: RunningSimulator, s: aiohttp.ClientSession, task_id: str) -> Any:
    r = await send(s, "GET", relay.url(f"/task/{task_id}/fetch"))
    assert r.status == 200, r.body
    return r.json


def faults(relay: RunningSimulator) -> list[Fault]:
    return [e.fault for e in relay.simulator.fault_log]


# ---------------------------------------------------------------- 1. stalled refresher


async def test_quickrouter_stalled_row_freezes_while_the_upstream_finishes() -> None:
    """new-api#1673: the relay's copy stops halfway and never changes again; new-api's own
    one-hour timeout does not rescue it (it only touches rows the upstream answers)."""
    async with served(run_seconds=10.0) as (relay, s):
        stuck = await imagine(relay, s, "a stallword fox")
        fine = await imagine(relay, s, "a fox")
        relay.simulator.advance(6.0)
        frozen = await fetch(relay, s, stuck)
        assert ("IN_PROGRESS", "46%") == (frozen["status"], frozen["progress"])
        relay.simulator.advance(3 * 3600)
        later = await fetch(relay, s, stuck)
        assert ("IN_PROGRESS", "46%", "") == (
            later["status"],
            later["progress"],
            later["failReason"],
        )
        assert "SUCCESS" == relay.simulator.engine.phase(relay.simulator.tasks[stuck])[0]
        assert "SUCCESS" == (await fetch(relay, s, fine))["status"]
        listed = await send(s, "POST", relay.url("/task/list-by-condition"), {"ids": [stuck]})
        assert ["IN_PROGRESS"] == [t["status"] for t in listed.json]
        assert [Fault.RELAY_STALL] == faults(relay)


async def test_quickrouter_stall_before_the_first_refresh_keeps_the_empty_status() -> None:
    async with served(refresh_interval=15.0, run_seconds=10.0) as (relay, s):
        stuck = await imagine(relay, s, "stallword")
        relay.simulator.advance(600)
        task = await fetch(relay, s, stuck)
        assert ("", "0%", 0) == (task["status"], task["progress"], task["startTime"])


async def test_quickrouter_stall_rate_is_seeded_and_per_job() -> None:
    async def stalled(seed: int) -> list[int]:
        faults_ = FaultConfig(relay_stall_rate=0.5)
        async with served(seed=seed, faults=faults_, run_seconds=1.0) as (relay, s):
            ids = [await imagine(relay, s, f"p{i}") for i in range(16)]
            relay.simulator.advance(60)
            return [
                i for i, t in enumerate(ids) if (await fetch(relay, s, t))["status"] != "SUCCESS"
            ]

    first = await stalled(7)
    assert first == await stalled(7)
    assert 0 < len(first) < 16


# ---------------------------------------------------------------- 2. server-side timeout


async def test_midjourney_proxy_hung_task_fails_at_the_next_30s_check() -> None:
    """novicezk TaskTimeoutSchedule: fixedRate 30 s, startTime + timeoutMinutes, 任务超时."""
    async with served(dialect="midjourney-proxy", task_timeout=100.0, run_seconds=10.0) as (
        relay,
        s,
    ):
        relay.simulator.advance(5.0)  # the 30-s schedule started with the server
        task_id = await imagine(relay, s, "a hangword owl")
        relay.simulator.advance(60.0)
        hung = await fetch(relay, s, task_id)
        assert ("IN_PROGRESS", "46%") == (hung["status"], hung["progress"])
        # Started at 5 s: over the limit from 105 s, failed by the check at 120 s.
        relay.simulator.advance(54.9)
        assert "IN_PROGRESS" == (await fetch(relay, s, task_id))["status"]
        relay.simulator.advance(0.2)
        failed = await fetch(relay, s, task_id)
        assert ("FAILURE", "任务超时", "") == (
            failed["status"],
            failed["failReason"],
            failed["progress"],
        )
        assert 115_000 == failed["finishTime"] - failed["submitTime"]
        assert [Fault.HANG] == faults(relay)


async def test_trueai_hung_task_says_how_many_minutes() -> None:
    """TrueAI DiscordService: checks every 3 s, ``执行超时 {TimeoutMinutes} 分钟``."""
    config = {"task_timeout": 120.0, "faults": FaultConfig(hang_rate=1.0)}
    async with served(dialect="trueai", **config) as (relay, s):
        task_id = await imagine(relay, s, "an owl")
        relay.simulator.advance(122.9)
        assert "IN_PROGRESS" == (await fetch(relay, s, task_id))["status"]
        relay.simulator.advance(0.2)
        failed = await fetch(relay, s, task_id)
        assert ("FAILURE", "执行超时 2 分钟") == (failed["status"], failed["failReason"])
        assert 123_000 == failed["finishTime"] - failed["startTime"]


async def test_quickrouter_copies_the_upstream_timeout() -> None:
    async with served(task_timeout=60.0) as (relay, s):
        task_id = await imagine(relay, s, "hangword")
        relay.simulator.advance(64.0)
        task = await fetch(relay, s, task_id)
        assert ("FAILURE", "执行超时 1 分钟", "100%") == (
            task["status"],
            task["failReason"],
            task["progress"],
        )


# ---------------------------------------------------------------- 3. expiring links


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


async def test_trueai_links_expire_and_a_fresh_read_re_signs_them() -> None:
    async with served(dialect="trueai", link_lifetime=100.0, fill_image_urls=True) as (relay, s):
        task_id = await imagine(relay, s, "a heron")
        relay.simulator.advance(1.0)
        task = await fetch(relay, s, task_id)
        url = task["imageUrl"]
        q = _query(url)
        assert 100 == int(q["ex"], 16) - int(q["is"], 16) and len(q["hm"]) == 64
        assert url.endswith("&") and all("ex=" in p["url"] for p in task["imageUrls"])
        ok = await send(s, "GET", url)
        assert (200, "image/png") == (ok.status, ok.ctype) and ok.body.startswith(PNG)
        relay.simulator.advance(100.0)
        gone = await send(s, "GET", url)
        assert (404, EXPIRED, "text/plain; charset=utf-8") == (gone.status, gone.body, gone.ctype)
        fresh = (await fetch(relay, s, task_id))["imageUrl"]
        assert fresh != url and (await send(s, "GET", fresh)).body.startswith(PNG)
        forged = fresh.replace(_query(fresh)["hm"], "0" * 64)
        assert 404 == (await send(s, "GET", forged)).status
        assert 404 == (await send(s, "GET", fresh.split("?")[0])).status
        assert [Fault.LINK_EXPIRED] * 3 == faults(relay)


async def test_links_are_re_issued_every_half_lifetime() -> None:
    async with served(dialect="midjourney-proxy", link_lifetime=100.0) as (relay, s):
        task_id = await imagine(relay, s, "a heron")
        relay.simulator.advance(1.0)
        first = (await fetch(relay, s, task_id))["imageUrl"]
        relay.simulator.advance(30.0)
        assert first == (await fetch(relay, s, task_id))["imageUrl"]  # same period
        relay.simulator.advance(30.0)
        second = (await fetch(relay, s, task_id))["imageUrl"]
        assert second != first and 50 == int(_query(second)["is"], 16) - int(
            _query(first)["is"], 16
        )


async def test_quickrouter_relay_image_route_fails_once_its_stored_link_expires() -> None:
    """new-api stops refreshing a finished row, so the link it proxies expires for good."""
    async with served(link_lifetime=100.0) as (relay, s):
        task_id = await imagine(relay, s, "a heron")
        relay.simulator.advance(1.0)
        url = (await fetch(relay, s, task_id))["imageUrl"]
        assert url == f"{relay.base_url}/mj/image/{task_id}"
        async with aiohttp.ClientSession() as anonymous:
            assert (await send(anonymous, "GET", url)).body.startswith(PNG)
            relay.simulator.advance(200.0)
            gone = await send(anonymous, "GET", url)
        assert 404 == gone.status and {"error": EXPIRED.decode()} == gone.json


# ---------------------------------------------------------------- 4. localhost links


async def test_quickrouter_without_server_address_writes_localhost_links() -> None:
    """new-api#144: ``http://localhost:3000/mj/image/{id}``; the relay serves the route."""
    async with served(server_address="http://localhost:3000") as (relay, s):
        task_id = await imagine(relay, s, "a heron")
        relay.simulator.advance(1.0)
        url = (await fetch(relay, s, task_id))["imageUrl"]
        assert f"http://localhost:3000/mj/image/{task_id}" == url
        async with aiohttp.ClientSession() as anonymous:  # no key: the route has no auth
            r = await send(anonymous, "GET", f"{relay.base_url}/mj/image/{task_id}")
        assert 200 == r.status and r.body.startswith(PNG)


def test_server_address_must_be_an_origin() -> None:
    with pytest.raises(ValueError, match="server_address"):
        SimulatorConfig(server_address="localhost:3000")


# ---------------------------------------------------------------- 5. no free account


async def test_midjourney_proxy_no_free_account_creates_nothing() -> None:
    faults_ = FaultConfig(no_account_rate=1.0, routes=("POST /submit/change",))
    async with served(dialect="midjourney-proxy", faults=faults_) as (relay, s):
        parent = await imagine(relay, s, "a cat")
        relay.simulator.advance(1.0)
        r = await send(
            s,
            "POST",
            relay.url("/submit/change"),
            {"taskId": parent, "action": "UPSCALE", "index": 1},
        )
        channel = relay.simulator.media.channel(relay.api_key)
        assert (200, "application/json") == (r.status, r.ctype)
        assert {
            "code": 3,
            "description": f"账号不可用: {channel}",
            "result": None,
            "properties": {},
        } == r.json
        assert 1 == len(relay.simulator.submissions)
    faults_ = FaultConfig(no_account_rate=1.0)
    async with served(dialect="midjourney-proxy", faults=faults_) as (relay, s):
        r = await send(s, "POST", relay.url("/submit/imagine"), {"prompt": "a cat"})
        expected = '{"code":3,"description":"无可用的账号实例","result":null,"properties":{}}'
        assert (200, expected.encode()) == (r.status, r.body)
        assert [] == relay.simulator.submissions and [Fault.NO_ACCOUNT] == faults(relay)


async def test_trueai_no_free_account() -> None:
    async with served(dialect="trueai", faults=FaultConfig(no_account_rate=1.0)) as (relay, s):
        r = await send(s, "POST", relay.url("/submit/imagine"), {"prompt": "a cat"})
        assert (200, "application/json; charset=utf-8") == (r.status, r.ctype)
        assert {
            "code": 3,
            "description": "无可用的账号实例",
            "result": None,
            "properties": {},
        } == r.json
        upload = {"base64Array": ["data:image/png;base64,iVBORw0KGgo="]}
        r = await send(s, "POST", relay.url("/submit/upload-discord-images"), upload)
        assert 1 == r.json["code"]  # an upload needs no account of its own here
        assert [] == relay.simulator.submissions


async def test_quickrouter_passes_code_3_through_and_auto_ban_disables_the_channel() -> None:
    faults_ = FaultConfig(no_account_rate=1.0, routes=("POST /submit/blend",))
    async with served(channel_auto_ban=True, faults=faults_) as (relay, s):
        earlier = await imagine(relay, s, "a cat")
        relay.simulator.advance(1.0)
        images = ["data:image/png;base64,iVBORw0KGgo="] * 2
        r = await send(s, "POST", relay.url("/submit/blend"), {"base64Array": images})
        assert (200, "text/plain; charset=utf-8") == (r.status, r.ctype)  # the upstream's bytes
        assert {
            "code": 3,
            "description": "无可用的账号实例",
            "result": None,
            "properties": {},
        } == r.json
        assert relay.simulator.channel_disabled
        r = await send(s, "POST", relay.url("/submit/imagine"), {"prompt": "a dog"})
        error = r.json["error"]
        assert (503, "model_not_found", "new_api_error") == (r.status, error["code"], error["type"])
        assert error["message"].startswith(
            "当前分组 default 下对于模型 mj_imagine 无可用渠道 (request id: "
        )
        assert "SUCCESS" == (await fetch(relay, s, earlier))["status"]  # reads keep working
        seed = await send(s, "GET", relay.url(f"/task/{earlier}/image-seed"))
        assert (400, 4, "该任务所属渠道已被禁用 ") == (
            seed.status,
            seed.json["code"],
            seed.json["description"],
        )
        assert [Fault.NO_ACCOUNT, Fault.CHANNEL_DISABLED, Fault.MISSING_CHANNEL] == faults(relay)
        relay.simulator.channel_disabled = False
        await imagine(relay, s, "a dog")


# ---------------------------------------------------------------- 6. missing channel


async def test_quickrouter_missing_model_channel_is_a_503_model_not_found() -> None:
    async with served(missing_models=("mj_custom_zoom",)) as (relay, s):
        grid = await imagine(relay, s, "a cat")
        relay.simulator.advance(1.0)
        task = await fetch(relay, s, grid)
        u1 = next(b["customId"] for b in task["buttons"] if b["label"] == "U1")
        r = await send(s, "POST", relay.url("/submit/action"), {"taskId": grid, "customId": u1})
        upscaled = str(r.json["result"])
        relay.simulator.advance(1.0)
        task = await fetch(relay, s, upscaled)
        zoom = next(b["customId"] for b in task["buttons"] if "CustomZoom" in b["customId"])
        body = {"taskId": upscaled, "customId": zoom}
        r = await send(s, "POST", relay.url("/submit/action"), body)
        assert (503, "application/json; charset=utf-8") == (r.status, r.ctype)
        assert ["error"] == list(r.json) and ["code", "message", "type"] == list(r.json["error"])
        message = r.json["error"]["message"]
        assert message.startswith(
            "当前分组 default 下对于模型 mj_custom_zoom 无可用渠道 (request id: "
        )
        assert ("model_not_found", "new_api_error") == (
            r.json["error"]["code"],
            r.json["error"]["type"],
        )
        assert 2 == len(relay.simulator.submissions)
        assert [Fault.MISSING_CHANNEL] == faults(relay)


# ---------------------------------------------------------------- 7. unusable tokens


async def test_quickrouter_token_states_answer_401_on_every_route() -> None:
    keys = {"api_keys": ("sk-good",), "expired_keys": ("sk-old",), "exhausted_keys": ("sk-broke",)}
    async with served(**keys) as (relay, _):
        task_id = relay.simulator.submit_imagine("a cat")
        said = {
            "sk-old": "该令牌已过期",
            "sk-broke": "该令牌额度已用尽 TokenStatusExhausted[sk-bro***oke]",
        }
        for key, text in said.items():
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as s:
                for method, path, body in (
                    ("GET", f"/task/{task_id}/fetch", None),
                    ("POST", "/task/list-by-condition", {"ids": [task_id]}),
                    ("GET", f"/task/{task_id}/image-seed", None),
                    ("POST", "/submit/imagine", {"prompt": "x"}),
                ):
                    r = await send(s, method, relay.url(path), body)
                    assert 401 == r.status, (key, path)
                    assert r.json["error"]["message"].startswith(f"{text} (request id: ")
        assert 1 == len(relay.simulator.submissions)


async def test_revoke_key_mid_run_and_restore() -> None:
    async with served(api_keys=("sk-live",)) as (relay, s):
        task_id = await imagine(relay, s, "a cat")
        relay.simulator.revoke_key("sk-live")
        r = await send(s, "GET", relay.url(f"/task/{task_id}/fetch"))
        assert 401 == r.status and r.json["error"]["message"].startswith("该令牌状态不可用")
        relay.simulator.revoke_key("sk-live", "expired")
        r = await send(s, "GET", relay.url(f"/task/{task_id}/fetch"))
        assert r.json["error"]["message"].startswith("该令牌已过期")
        assert [Fault.TOKEN_REFUSED] * 2 == faults(relay)
        relay.simulator.restore_key("sk-live")
        assert task_id == (await fetch(relay, s, task_id))["id"]
        with pytest.raises(ValueError, match="reason"):
            relay.simulator.revoke_key("sk-live", "banned")
        with pytest.raises(ValueError, match="not a key"):
            relay.simulator.revoke_key("sk-other")


async def test_trueai_and_midjourney_proxy_refuse_revoked_keys_their_way() -> None:
    async with served(dialect="trueai", api_keys=("a", "b", "c")) as (relay, s):
        relay.simulator.revoke_key("a", "expired")
        relay.simulator.revoke_key("b", "disabled")
        relay.simulator.revoke_key("c", "exhausted")
        answers = []
        for key in ("a", "b"):
            async with aiohttp.ClientSession(headers={"Authorization": key}) as other:
                r = await send(other, "GET", relay.url("/task/1/fetch"))
                answers.append((r.status, r.body.decode(), r.ctype))
        assert [(403, "账号不可用", None), (401, "账号已禁用", None)] == answers
        async with aiohttp.ClientSession(headers={"Authorization": "c"}) as other:
            assert 204 == (await send(other, "GET", relay.url("/task/1/fetch"))).status
            r = await send(other, "POST", relay.url("/submit/imagine"), {"prompt": "x"})
            assert (4, "总绘图次数已达上限") == (r.json["code"], r.json["description"])
    async with served(dialect="midjourney-proxy") as (relay, s):
        relay.simulator.revoke_key(relay.api_key)
        r = await send(s, "GET", relay.url("/task/1/fetch"))
        assert (401, b"") == (r.status, r.body)


async def test_revoked_keys_survive_save_and_load(tmp_path: Path) -> None:
    sim = Simulator(SimulatorConfig(api_keys=("k1", "k2"), channel_auto_ban=True))
    sim.revoke_key("k2", "exhausted")
    sim.channel_disabled = True
    sim.save(tmp_path / "state.json")
    loaded = Simulator.load(tmp_path / "state.json")
    assert {"k2": "exhausted"} == loaded.engine.revoked and loaded.channel_disabled


# ---------------------------------------------------------------- 8. store lag


async def test_midjourney_proxy_change_right_after_success_sees_the_stale_store() -> None:
    """novicezk#252: fetch says SUCCESS, /submit/change still reads the old copy."""
    async with served(dialect="midjourney-proxy", store_lag=0.5, run_seconds=1.0) as (relay, s):
        parent = await imagine(relay, s, "a cat")
        relay.simulator.advance(1.05 + 0.1)  # queue 0.05 + run 1.0, then 0.1 s
        assert "SUCCESS" == (await fetch(relay, s, parent))["status"]
        change = {"taskId": parent, "action": "UPSCALE", "index": 1}
        r = await send(s, "POST", relay.url("/submit/change"), change)
        expected = '{"code":4,"description":"关联任务状态错误","result":null,"properties":{}}'
        assert expected.encode() == r.body
        r = await send(s, "POST", relay.url("/submit/simple-change"), {"content": f"{parent} U2"})
        assert 4 == r.json["code"]
        relay.simulator.advance(0.4)
        r = await send(s, "POST", relay.url("/submit/change"), change)
        assert 1 == r.json["code"]
        assert [Fault.STORE_LAG] * 2 == faults(relay)


# ---------------------------------------------------------------- 9. TrueAI cancel


async def test_trueai_cancel_is_admin_only_by_default() -> None:
    async with served(dialect="trueai", run_seconds=10.0) as (relay, s):
        task_id = await imagine(relay, s, "a cat")
        r = await send(s, "POST", relay.url(f"/task/{task_id}/cancel"))
        assert (400, "演示模式，禁止操作".encode(), "text/plain; charset=utf-8") == (
            r.status,
            r.body,
            r.ctype,
        )
        assert "FAILURE" != (await fetch(relay, s, task_id))["status"]
    async with served(dialect="trueai", run_seconds=10.0, admin_keys=None) as (relay, s):
        task_id = await imagine(relay, s, "a cat")
        assert 200 == (await send(s, "POST", relay.url(f"/task/{task_id}/cancel"))).status
        assert "取消任务" == (await fetch(relay, s, task_id))["failReason"]


# ---------------------------------------------------------------- 10. presets and the CLI


def test_presets() -> None:
    assert SimulatorConfig.preset("fast") == SimulatorConfig()
    real = SimulatorConfig.preset("realistic", dialect="trueai")
    assert (15.0, 5.0, 45.0, 86_400.0, "trueai") == (
        real.refresh_interval,
        real.queue_seconds,
        real.run_seconds,
        real.link_lifetime,
        real.dialect,
    )
    assert set(PRESETS) == {"fast", "realistic"}
    with pytest.raises(ValueError, match="unknown simulator preset"):
        SimulatorConfig.preset("slow")


def test_cli_simulate_options_build_the_config() -> None:
    parse = _cli._parser().parse_args
    plain = _cli._simulator_config(parse(["simulate"]))
    assert plain == SimulatorConfig()
    args = parse(
        ["simulate", "--preset", "realistic", "--job-seconds", "20", "--refresh-interval", "3"]
    )
    config = _cli._simulator_config(args)
    assert (3.0, 2.0, 18.0, 86_400.0) == (
        config.refresh_interval,
        config.queue_seconds,
        config.run_seconds,
        config.link_lifetime,
    )
    with pytest.raises(SystemExit):
        parse(["simulate", "--job-seconds", "-1"])


async def test_realistic_preset_shows_the_relay_lag() -> None:
    """15 s refresh: an empty first status, then the copy trails the upstream."""
    async with served(**PRESETS["realistic"]) as (relay, s):
        task_id = await imagine(relay, s, "a cat")
        first = await fetch(relay, s, task_id)
        assert ("", "0%", 0) == (first["status"], first["progress"], first["startTime"])
        relay.simulator.advance(15.0)
        assert "IN_PROGRESS" == (await fetch(relay, s, task_id))["status"]
        relay.simulator.advance(45.0)
        assert "SUCCESS" == (await fetch(relay, s, task_id))["status"]


# ---------------------------------------------------------------- with the SDK

FAST_POLL = PollPolicy(
    interval=0.05, first_poll=0.02, near_done_interval=0.05, dead_end_grace=0.0
)


@contextlib.asynccontextmanager
async def sdk(**config: Any) -> AsyncIterator[tuple[RunningSimulator, AsyncClient]]:
    async with (
        simulate(**config) as relay,
        AsyncClient(
            relay.api_key, base_url=relay.base_url, dialect=cast(Any, relay.dialect), poll=FAST_POLL
        ) as mj,
    ):
        yield relay, mj


def _finish_now(relay: RunningSimulator, task_id: str) -> None:
    """Move the simulator's clock to just after the job's end."""
    sim = relay.simulator
    end = sim.tasks[task_id].end
    assert end is not None
    sim.advance(max(0.0, end - sim.clock.now()) + 0.01)


async def test_sdk_download_survives_an_expired_link(tmp_path: Path) -> None:
    """An old Task's signed link expired: download() reads the task again once."""
    async with sdk(dialect="trueai", link_lifetime=60.0) as (relay, mj):
        task = await (await mj.imagine("a heron")).wait(timeout=10)
        relay.simulator.advance(61.0)
        saved = await mj.download(task, tmp_path)
        assert saved.read_bytes().startswith(PNG)
        assert [Fault.LINK_EXPIRED] == faults(relay)


async def test_sdk_download_reads_localhost_links_through_the_relay(tmp_path: Path) -> None:
    """new-api#144: the task says http://localhost:3000/mj/image/{id}."""
    async with sdk(server_address="http://localhost:3000") as (relay, mj):
        task = await (await mj.imagine("a heron")).wait(timeout=10)
        assert str(task.image_url).startswith("http://localhost:3000/mj/image/")
        saved = await mj.download(task, tmp_path)
        assert saved.read_bytes().startswith(PNG)
        assert 1 == relay.simulator.counters["GET /image/{id}"]


async def test_sdk_no_free_account_is_its_own_error() -> None:
    async with sdk(dialect="midjourney-proxy", faults=FaultConfig(no_account_rate=1.0)) as (
        relay,
        mj,
    ):
        with pytest.raises(NoAvailableAccountError) as info:
            await mj.imagine("a cat")
        assert "无可用的账号实例" in str(info.value) and [] == relay.simulator.submissions


async def test_sdk_missing_channel_is_model_unavailable() -> None:
    async with sdk(missing_models=("mj_imagine",)) as (relay, mj):
        with pytest.raises(ModelUnavailableError) as info:
            await mj.imagine("a cat")
        assert "mj_imagine" == info.value.model and [] == relay.simulator.submissions


async def test_sdk_keeps_the_token_state() -> None:
    async with sdk(api_keys=("sk-live",)) as (relay, mj):
        task_id = relay.simulator.submit_imagine("a cat")
        relay.simulator.revoke_key("sk-live", "expired")
        with pytest.raises(AuthenticationError) as info:
            await mj.fetch(task_id)
        assert "expired" == info.value.reason and "该令牌已过期" in str(info.value)
        assert "sk-live" not in str(info.value)


async def test_sdk_change_rides_out_the_store_lag() -> None:
    """midjourney-proxy's store still says IN_PROGRESS: the change is sent once more."""
    async with sdk(dialect="midjourney-proxy", store_lag=1.5, run_seconds=100.0) as (relay, mj):
        job = await mj.imagine("a cat")
        _finish_now(relay, job.id)
        grid = await mj.fetch(job.id)
        assert grid.is_success
        upscale = await mj.change(grid, "U1")
        assert [Fault.STORE_LAG] == faults(relay)
        assert 2 == relay.simulator.counters["POST /submit/change"]
        assert upscale.id in relay.simulator.tasks


async def test_sdk_stalled_relay_copy_ends_the_wait() -> None:
    """The relay's copy never changes again (its ?rand= link does): TaskStalledError."""
    policy = attrs.evolve(FAST_POLL, stall_after=0.5, adaptive=False)
    async with (
        simulate(run_seconds=0.4) as relay,
        AsyncClient(relay.api_key, base_url=relay.base_url, poll=policy) as mj,
    ):
        job = await mj.imagine("a stallword fox")
        with pytest.raises(TaskStalledError) as info:
            await job.wait(timeout=30)
        assert job.id == info.value.task_id
        assert info.value.last_task is not None and info.value.last_task.progress == "46%"
        assert "SUCCESS" == relay.simulator.engine.phase(relay.simulator.tasks[job.id])[0]


async def test_sdk_sees_the_server_timeout_as_a_failure() -> None:
    async with sdk(dialect="trueai", run_seconds=100.0) as (relay, mj):
        job = await mj.imagine("a hangword owl")
        relay.simulator.advance(400.0)
        with pytest.raises(TaskFailedError) as info:
            await job.wait(timeout=10)
        assert "执行超时 5 分钟" == info.value.fail_reason


async def test_sdk_revoked_key_ends_the_wait() -> None:
    """Every read answers 401 once the key is revoked: the waiter fails, it does not poll on."""
    policy = attrs.evolve(FAST_POLL, adaptive=False)
    async with (
        simulate(api_keys=("sk-live",), run_seconds=100.0) as relay,
        AsyncClient(relay.api_key, base_url=relay.base_url, poll=policy) as mj,
    ):
        job = await mj.imagine("a cat")
        relay.simulator.revoke_key("sk-live", "exhausted")
        with pytest.raises(AuthenticationError) as info:
            await job.wait(timeout=30)
        assert "exhausted" == info.value.reason
        refused = faults(relay).count(Fault.TOKEN_REFUSED)
        assert policy.dead_end_after <= refused <= policy.dead_end_after + 2
