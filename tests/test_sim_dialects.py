"""The dialect simulators driven with raw aiohttp requests (never through the SDK)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web

from quickmj.testing._sim import (
    DIALECTS,
    Fault,
    FaultConfig,
    RunningSimulator,
    Simulator,
    SimulatorConfig,
    run_server,
    simulate,
)

Serve = Callable[..., Awaitable[str]]  # the conftest fixture that serves aiohttp apps


@attrs.frozen
class Resp:
    status: int
    body: bytes
    headers: Any

    @property
    def ctype(self) -> str | None:
        return self.headers.get("Content-Type")  # type: ignore[no-any-return]

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


async def send(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> Resp:
    kwargs: dict[str, Any] = {"headers": headers}
    if raw is not None:
        kwargs["data"] = raw
    elif body is not None:
        kwargs["json"] = body
    async with session.request(method, url, **kwargs) as resp:
        return Resp(resp.status, await resp.read(), resp.headers)


@contextlib.asynccontextmanager
async def served(**config: Any) -> AsyncIterator[tuple[RunningSimulator, aiohttp.ClientSession]]:
    async with (
        simulate(**config) as relay,
        aiohttp.ClientSession(headers=relay.headers) as session,
    ):
        yield relay, session


async def imagine(
    relay: RunningSimulator, session: aiohttp.ClientSession, prompt: str = "a cat", **extra: Any
) -> str:
    r = await send(session, "POST", relay.url("/submit/imagine"), {"prompt": prompt, **extra})
    assert r.status == 200 and r.json["code"] in (1, 22), r.body
    return str(r.json["result"])


async def fetch(relay: RunningSimulator, session: aiohttp.ClientSession, task_id: str) -> Resp:
    return await send(session, "GET", relay.url(f"/task/{task_id}/fetch"))


async def finished(
    relay: RunningSimulator, session: aiohttp.ClientSession, task_id: str
) -> dict[str, Any]:
    relay.simulator.advance(1)
    task = (await fetch(relay, session, task_id)).json
    assert task["status"] in ("SUCCESS", "FAILURE"), task
    return dict(task)


async def press(
    relay: RunningSimulator,
    session: aiohttp.ClientSession,
    task: dict[str, Any],
    label: str,
    **extra: Any,
) -> Resp:
    custom_id = next(b["customId"] for b in task["buttons"] if label in (b["label"], b["emoji"]))
    body = {"taskId": task["id"], "customId": custom_id, **extra}
    return await send(session, "POST", relay.url("/submit/action"), body)


NEW_API_FIELDS = [
    "id",
    "action",
    "customId",
    "botType",
    "prompt",
    "promptEn",
    "description",
    "state",
    "submitTime",
    "startTime",
    "finishTime",
    "imageUrl",
    "videoUrl",
    "videoUrls",
    "status",
    "progress",
    "failReason",
    "buttons",
    "maskBase64",
    "properties",
]


# ---------------------------------------------------------------- quickrouter


async def test_quickrouter_auth_variants_and_failures() -> None:
    """Bearer, raw key, mj-api-secret; 401 new_api_error with a request id; pins are 403."""
    async with simulate(api_keys=("k1", "sk-k2"), disabled_keys=("off",)) as relay:
        url = relay.url("/task/1/fetch")
        async with aiohttp.ClientSession() as s:
            ok = [
                {"Authorization": "Bearer k1"},
                {"Authorization": "k1"},
                {"Authorization": "sk-k1"},
                {"mj-api-secret": "k1"},
                {"Authorization": "midjourney-proxy", "mj-api-secret": "Bearer k1"},
                {"Authorization": "Bearer k2"},
            ]
            for headers in ok:
                r = await send(s, "GET", url, headers=headers)
                assert (400, "task_no_found ") == (r.status, r.json["description"]), headers
            for headers in ({}, {"Authorization": "Bearer nope"}, {"mj-api-secret": "off"}):
                r = await send(s, "GET", url, headers=headers)
                assert 401 == r.status
                assert ["error"] == list(r.json)
                error = r.json["error"]
                assert "" == error["code"] and "new_api_error" == error["type"]
                rid = r.headers["X-Oneapi-Request-Id"]
                said = "该令牌状态不可用" if "off" in str(headers) else "无效的令牌"  # token.go
                assert f"{said} (request id: {rid})" == error["message"]
            pinned = await send(s, "GET", url, headers={"Authorization": "Bearer k1-3"})
            assert 403 == pinned.status
            assert pinned.json["error"]["message"].startswith("普通用户不支持指定渠道")


async def test_quickrouter_unknown_routes_are_the_dashboard_page() -> None:
    """new-api's NoRoute: 200 index.html, except /v1, /api, /assets (404 JSON)."""
    async with served() as (relay, s):
        for method, path in [
            ("GET", "/mj/task/list"),
            ("POST", "/mj/task/1/cancel"),
            ("GET", "/mj/submit/imagine"),
            ("GET", "/mj/task/queue"),
        ]:
            r = await send(s, method, relay.base_url + path)
            assert (200, "text/html; charset=utf-8") == (r.status, r.ctype), path
            assert b"<title>New API</title>" in r.body
        r = await send(s, "GET", relay.base_url + "/v1/nothing")
        assert 404 == r.status
        assert "Invalid URL (GET /v1/nothing)" == r.json["error"]["message"]
        assert 5 == relay.simulator.counters["unmatched"]


async def test_quickrouter_submit_is_upstream_bytes_as_text_plain() -> None:
    """The answer is the upstream's body, sent without a JSON content type."""
    async with served() as (relay, s):
        r = await send(s, "POST", relay.url("/submit/imagine"), {"prompt": "a cat"})
        assert (200, "text/plain; charset=utf-8") == (r.status, r.ctype)
        assert ["code", "description", "result", "properties"] == list(r.json)
        assert (1, "Submit success") == (r.json["code"], r.json["description"])
        assert len(r.json["result"]) == 16 and r.json["result"].isdigit()
        missing = await send(s, "POST", relay.url("/submit/imagine"), {"prompt": ""})
        assert 400 == missing.status
        assert {"code": 4, "description": "prompt_is_required ", "type": "upstream_error"} == (
            missing.json
        )


async def test_quickrouter_task_shape_refresh_lag_and_advance() -> None:
    """A fresh row (status "", 0%), then the refreshed copy; field order is Go's."""
    async with served(refresh_interval=15) as (relay, s):
        task_id = await imagine(relay, s, "a <cat> & 猫", state="st")
        r = await fetch(relay, s, task_id)
        assert "application/json" == r.ctype
        fresh = r.json
        assert NEW_API_FIELDS == list(fresh)
        assert ("", "0%", 0, 0) == (
            fresh["status"],
            fresh["progress"],
            fresh["startTime"],
            fresh["finishTime"],
        )
        assert (None, None, None, "", "") == (
            fresh["buttons"],
            fresh["properties"],
            fresh["videoUrls"],
            fresh["imageUrl"],
            fresh["state"],
        )
        assert "Submit success" == fresh["description"]
        assert b"\\u003ccat\\u003e \\u0026 \xe7\x8c\xab" in r.body  # HTML-safe, UTF-8 raw
        relay.simulator.advance(14.9)
        assert "" == (await fetch(relay, s, task_id)).json["status"]
        relay.simulator.advance(0.2)  # the refresher's first tick
        done = (await fetch(relay, s, task_id)).json
        assert ("SUCCESS", "100%", "st") == (done["status"], done["progress"], done["state"])
        assert f"{relay.base_url}/mj/image/{task_id}" == done["imageUrl"]
        assert ["finalPrompt", "finalZhPrompt"] == list(done["properties"])
        assert ["customId", "emoji", "label", "type", "style"] == list(done["buttons"][0])
        assert 9 == len(done["buttons"])
        assert "" == done["customId"] == done["botType"] == done["maskBase64"]


async def test_quickrouter_running_image_url_has_a_new_rand_on_every_read() -> None:
    async with served(queue_seconds=0.0, run_seconds=100.0) as (relay, s):
        task_id = await imagine(relay, s)
        relay.simulator.advance(50)
        first = (await fetch(relay, s, task_id)).json
        second = (await fetch(relay, s, task_id)).json
        assert "IN_PROGRESS" == first["status"]
        assert first["imageUrl"].startswith(f"{relay.base_url}/mj/image/{task_id}?rand=")
        assert first["imageUrl"] != second["imageUrl"]
        assert [] == first["buttons"]
        listed = await send(s, "POST", relay.url("/task/list-by-condition"), {"ids": [task_id]})
        assert listed.json[0]["imageUrl"] != second["imageUrl"]
        assert second == {**relay.simulator.task_json(task_id), "imageUrl": second["imageUrl"]}


async def test_quickrouter_failures_report_100_percent() -> None:
    async with served() as (relay, s):
        task = await finished(relay, s, await imagine(relay, s, "a failword cat"))
        assert ("FAILURE", "100%") == (task["status"], task["progress"])
        assert "failword" in task["failReason"]
        assert "FAILURE" == relay.simulator.task_status(task["id"])


async def test_quickrouter_rewrites_code_22_and_passes_queue_full_through() -> None:
    async with served(concurrency=1, max_queue=2) as (relay, s):
        await imagine(relay, s)
        await imagine(relay, s)  # waits, but nothing was waiting when it came: code 1
        queued = await send(s, "POST", relay.url("/submit/imagine"), {"prompt": "third"})
        assert 1 == queued.json["code"]  # upstream said 22
        assert queued.json["description"].startswith("排队中")
        assert 1 == queued.json["properties"]["numberOfQueues"]
        r = await send(s, "POST", relay.url("/submit/imagine"), {"prompt": "fourth"})
        assert 200 == r.status and b'"code":23' in r.body
        account = relay.simulator.accounts["sim-key"]
        assert (3, 1, 1, 2) == (
            account.submitted,
            account.rejected,
            account.running,
            account.queued,
        )
    async with served(concurrency=1, max_queue=1, saturate_429=True) as (relay, s):
        await imagine(relay, s)
        await imagine(relay, s)
        r = await send(s, "POST", relay.url("/submit/imagine"), {"prompt": "third"})
        assert (429, 30) == (r.status, r.json["code"])
        assert r.json["description"].endswith(
            "当前分组负载已饱和，请稍后再试，或升级账户以提升服务质量。"
        )


async def test_quickrouter_quota_per_key() -> None:
    async with simulate(api_keys=("a", "b"), quotas={"a": 1}) as relay:
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer a"}) as s:
            await imagine(relay, s)
            r = await send(s, "POST", relay.url("/submit/imagine"), {"prompt": "more"})
            assert (400, "quota_not_enough ") == (r.status, r.json["description"])
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer b"}) as s:
            await imagine(relay, s)
            await imagine(relay, s)
        accounts = relay.simulator.accounts
        assert (1, 1, 2) == (
            accounts["a"].submitted,
            accounts["a"].rejected,
            accounts["b"].submitted,
        )


async def test_quickrouter_action_acceptance_is_new_apis() -> None:
    async with served() as (relay, s):
        grid = await finished(relay, s, await imagine(relay, s))
        r = await press(relay, s, grid, "U1")
        assert (200, 1) == (r.status, r.json["code"])
        upscale = await finished(relay, s, r.json["result"])
        assert ("UPSCALE", "a cat") == (upscale["action"], upscale["prompt"])
        for custom_id in ("MJ::Job::PicReader::1", "MJ::JOB::animate_high::1::h::SOLO"):
            body = {"taskId": grid["id"], "customId": custom_id}
            r = await send(s, "POST", relay.url("/submit/action"), body)
            assert 400 == r.status
            message = r.json["error"]["message"]
            assert message.startswith(f"无效的请求，unknown_action:{custom_id} (request id:")
        r = await send(s, "POST", relay.url("/submit/action"), {"taskId": "1", "customId": "x"})
        assert (500, "new_api_panic") == (r.status, r.json["error"]["type"])
        body = {"taskId": "404", "customId": grid["buttons"][0]["customId"]}
        r = await send(s, "POST", relay.url("/submit/action"), body)
        assert (400, "task_not_found ") == (r.status, r.json["description"])
    async with served(refresh_interval=15) as (relay, s):
        task_id = await imagine(relay, s)
        body = {"taskId": task_id, "customId": f"MJ::JOB::upsample::1::{'0' * 8}"}
        r = await send(s, "POST", relay.url("/submit/action"), body)
        assert {"code": 4, "description": "task_status_not_success ", "type": "upstream_error"} == (
            r.json
        )


async def test_quickrouter_change_and_simple_change() -> None:
    async with served() as (relay, s):
        grid = await finished(relay, s, await imagine(relay, s))
        url = relay.url("/submit/change")
        r = await send(s, "POST", url, {"taskId": grid["id"], "action": "UPSCALE", "index": 2})
        assert 1 == r.json["code"]
        child = await finished(relay, s, r.json["result"])
        assert "UPSCALE" == child["action"]
        r = await send(s, "POST", url, {"taskId": grid["id"], "action": "REROLL"})
        assert "index_is_required " == r.json["description"]
        r = await send(s, "POST", url, {"taskId": grid["id"], "index": 1})
        assert 503 == r.status  # the distributor looks for a model named "mj_"
        assert "model_not_found" == r.json["error"]["code"]
        simple = relay.url("/submit/simple-change")
        r = await send(s, "POST", simple, {"content": f"{grid['id']} U1"})
        assert 503 == r.status  # new-api maps simple-change to RelayModeMidjourneyChange
        r = await send(s, "POST", url, {"taskId": grid["id"], "action": "UPSCALE", "index": "1"})
        assert 400 == r.status
        assert "cannot unmarshal string" in r.json["error"]["message"]


async def test_quickrouter_modal_double_rows_and_stale_fetch() -> None:
    async with served(queue_seconds=0.0, run_seconds=10.0) as (relay, s):
        sim = relay.simulator
        task_id = await imagine(relay, s)
        sim.advance(10)
        grid = await finished(relay, s, task_id)
        r = await press(relay, s, grid, "U1")
        sim.advance(10)
        upscale = await finished(relay, s, r.json["result"])
        zoom = await press(relay, s, upscale, "Custom Zoom")
        assert b'"code":21' in zoom.body  # not rewritten for CUSTOM_ZOOM
        modal_id = zoom.json["result"]
        waiting = (await fetch(relay, s, modal_id)).json
        assert ("CUSTOM_ZOOM", "MODAL") == (waiting["action"], waiting["status"])
        body = {"taskId": modal_id, "prompt": "a cat --zoom 2"}
        r = await send(s, "POST", relay.url("/submit/modal"), body)
        assert (1, modal_id) == (r.json["code"], r.json["result"])
        sim.advance(5)
        stale = (await fetch(relay, s, modal_id)).json
        assert "MODAL" == stale["status"]  # fetch returns the first, stale row
        url = relay.url("/task/list-by-condition")
        rows = (await send(s, "POST", url, {"ids": [modal_id]})).json
        assert [("CUSTOM_ZOOM", "MODAL"), ("MODAL", "IN_PROGRESS")] == [
            (row["action"], row["status"]) for row in rows
        ]
        sim.advance(10)
        rows = (await send(s, "POST", url, {"ids": [modal_id]})).json
        assert ["SUCCESS", "SUCCESS"] == [row["status"] for row in rows]
        assert "SUCCESS" == (await fetch(relay, s, modal_id)).json["status"]


async def test_quickrouter_modal_rows_with_refresh_interval() -> None:
    """The first row catches up one refresh tick after the second has finished."""
    async with served(refresh_interval=15, remix=True) as (relay, s):
        sim = relay.simulator
        task_id = await imagine(relay, s)
        sim.advance(15)
        grid = (await fetch(relay, s, task_id)).json
        r = await press(relay, s, grid, "V1")
        assert b'"code":1,' in r.body  # code 21 rewritten: looks accepted
        modal_id = r.json["result"]
        sim.advance(15)
        assert "MODAL" == (await fetch(relay, s, modal_id)).json["status"]
        await send(s, "POST", relay.url("/submit/modal"), {"taskId": modal_id})
        sim.advance(15)  # the second row finishes on this tick, the first stays stale
        rows = (
            await send(s, "POST", relay.url("/task/list-by-condition"), {"ids": [modal_id]})
        ).json
        assert ["MODAL", "SUCCESS"] == [row["status"] for row in rows]
        sim.advance(15)
        assert "SUCCESS" == (await fetch(relay, s, modal_id)).json["status"]


async def test_quickrouter_image_seed_image_route_and_uploads() -> None:
    async with served() as (relay, s):
        r = await send(s, "GET", relay.url("/task/123/image-seed"))
        assert (400, "task_no_found ") == (r.status, r.json["description"])
        grid = await finished(relay, s, await imagine(relay, s))
        r = await send(s, "GET", relay.url(f"/task/{grid['id']}/image-seed"))
        assert (200, "text/plain; charset=utf-8") == (r.status, r.ctype)
        assert ["code", "description", "properties", "result"] == list(r.json)
        assert r.json["result"].isdigit()
        async with aiohttp.ClientSession() as anonymous:
            image = await send(anonymous, "GET", grid["imageUrl"])
            assert (200, "image/png") == (image.status, image.ctype)
            assert image.body.startswith(b"\x89PNG")
            missing = await send(anonymous, "GET", relay.url("/image/42"))
            assert (400, {"error": "midjourney_task_not_found"}) == (missing.status, missing.json)
        b64 = "data:image/png;base64,iVBORw0KGgo="
        r = await send(
            s, "POST", relay.url("/submit/upload-discord-images"), {"base64Array": [b64]}
        )
        assert isinstance(r.json["result"], list) and r.json["result"][0].startswith("https://")
        r = await send(s, "POST", relay.url("/submit/video"), {"prompt": "a cat", "image": b64})
        video = await finished(relay, s, r.json["result"])
        assert ("VIDEO", 4) == (video["action"], len(video["videoUrls"]))
        assert ["url"] == list(video["videoUrls"][0]) and video["videoUrl"]
        r = await send(s, "POST", relay.url("/submit/edits"), {"prompt": "x", "image": b64})
        assert "EDITS" == (await finished(relay, s, r.json["result"]))["action"]
        r = await send(s, "POST", relay.url("/insight-face/swap"), {"sourceBase64": b64})
        assert "sour_base64_and_target_base64_is_required " == r.json["description"]
        other = "data:image/png;base64,AAAA"
        body = {"sourceBase64": b64, "targetBase64": other}
        r = await send(s, "POST", relay.url("/insight-face/swap"), body)
        swap = await finished(relay, s, r.json["result"])
        assert ("SWAP_FACE", "InsightFace") == (swap["action"], swap["prompt"])


async def test_quickrouter_lists_are_scoped_to_the_key() -> None:
    async with simulate(api_keys=("a", "b")) as relay:
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer a"}) as s:
            task_id = await imagine(relay, s)
            url = relay.url("/task/list-by-condition")
            assert [] == (await send(s, "POST", url, {"ids": []})).json
            bad = await send(s, "POST", url, raw=b"{not json")
            assert (400, "do_request_failed ") == (bad.status, bad.json["description"])
            assert [task_id] == [
                t["id"] for t in (await send(s, "POST", url, {"ids": [task_id, task_id]})).json
            ]
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer b"}) as s:
            assert [] == (await send(s, "POST", url, {"ids": [task_id]})).json
            assert 400 == (await fetch(relay, s, task_id)).status


async def test_quickrouter_mode_prefixes() -> None:
    async with served() as (relay, s):
        task_id = await imagine(relay, s)
        r = await send(s, "POST", relay.url("/submit/imagine", mode="fast"), {"prompt": "x"})
        assert 1 == r.json["code"]
        odd = relay.base_url + "/fast/mj"
        r = await send(s, "POST", odd + "/submit/imagine", {"prompt": "x"})
        assert (400, 5, "empty_response_body ") == (r.status, r.json["code"], r.json["description"])
        assert task_id == (await send(s, "GET", f"{odd}/task/{task_id}/fetch")).json["id"]
        assert 2 == relay.simulator.counters["POST /submit/imagine"] - 1


async def test_quickrouter_notify_hook_needs_notify_enabled(serve: Serve) -> None:
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)
    origin = await serve(app)
    for enabled in (False, True):
        async with served(notify_enabled=enabled) as (relay, s):
            await imagine(relay, s, notifyHook=origin + "/hook")
            relay.simulator.advance(1)
            for _ in range(100):
                if not relay.simulator.hooks.pending:
                    break
                await asyncio.sleep(0.01)
            assert bool(relay.simulator.hook_deliveries) is enabled
    assert "SUCCESS" == received[-1]["status"]


async def test_quickrouter_relay_faults() -> None:
    faults = FaultConfig(relay_request_failed_rate=1.0)
    async with served(faults=faults) as (relay, s):
        r = await send(s, "POST", relay.url("/submit/imagine"), {"prompt": "x"})
        assert {"code": 5, "description": "do_request_failed ", "type": "upstream_error"} == r.json
        assert [] == relay.simulator.submissions
    faults = FaultConfig(relay_request_failed_after_create_rate=1.0)
    async with served(faults=faults) as (relay, s):
        r = await send(s, "POST", relay.url("/submit/imagine"), {"prompt": "x"})
        assert (400, 5) == (r.status, r.json["code"])
        [task_id] = relay.simulator.tasks  # created upstream, never recorded by the relay
        assert 400 == (await fetch(relay, s, task_id)).status
        assert Fault.RELAY_REQUEST_FAILED_AFTER_CREATE == relay.simulator.fault_log[0].fault
    async with served(faults=FaultConfig(relay_empty_body_rate=1.0)) as (relay, s):
        r = await send(s, "POST", relay.url("/submit/imagine"), {"prompt": "x"})
        assert "empty_response_body " == r.json["description"]


# ---------------------------------------------------------------- midjourney-proxy


async def test_midjourney_proxy_auth_and_unknown_routes() -> None:
    async with served(dialect="midjourney-proxy") as (relay, s):
        async with aiohttp.ClientSession() as anonymous:
            r = await send(anonymous, "GET", relay.url("/task/1/fetch"))
            assert (401, b"") == (r.status, r.body)
            bearer = {"Authorization": f"Bearer {relay.api_key}"}
            assert (
                401
                == (await send(anonymous, "GET", relay.url("/task/1/fetch"), headers=bearer)).status
            )
            assert 401 == (await send(anonymous, "POST", relay.url("/submit/action"), {})).status
        for path in ("/submit/action", "/submit/modal", "/submit/shorten", "/task/1/image-seed"):
            r = await send(s, "POST" if "submit" in path else "GET", relay.url(path), {})
            assert 404 == r.status, path
            assert ["timestamp", "status", "error", "path"] == list(r.json)
            assert ("Not Found", "/mj" + path) == (r.json["error"], r.json["path"])
        r = await send(s, "GET", relay.url("/submit/imagine"))
        assert (405, "Method Not Allowed") == (r.status, r.json["error"])
        r = await send(s, "GET", relay.base_url + "/mj-fast/mj/task/list")
        assert 404 == r.status and b"HTTP Status 404" in r.body
        with pytest.raises(ValueError, match="no '/mj-fast/mj' prefix"):
            relay.url("/task/list", mode="fast")


async def test_midjourney_proxy_task_shape_and_lifecycle() -> None:
    async with served(dialect="midjourney-proxy", concurrency=1) as (relay, s):
        first = await imagine(relay, s, "a cat")
        second = await imagine(relay, s, "a dog")
        waiting = (await fetch(relay, s, second)).json
        assert [
            "id",
            "properties",
            "action",
            "status",
            "prompt",
            "promptEn",
            "description",
            "state",
            "submitTime",
            "startTime",
            "finishTime",
            "imageUrl",
            "progress",
            "failReason",
        ] == list(waiting)
        assert ("NOT_START", None, None, None) == (
            waiting["status"],
            waiting["progress"],
            waiting["startTime"],
            waiting["state"],
        )
        assert {"notifyHook", "nonce", "discordInstanceId"} == set(waiting["properties"])
        assert "/imagine a dog" == waiting["description"]
        done = await finished(relay, s, first)
        assert ("SUCCESS", "100%", None) == (done["status"], done["progress"], done["failReason"])
        assert {"messageHash", "messageId", "flags", "finalPrompt"} <= set(done["properties"])
        assert "buttons" not in done and "imageUrls" not in done
        failed = await finished(relay, s, await imagine(relay, s, "failword"))
        assert ("FAILURE", "") == (failed["status"], failed["progress"])
        r = await fetch(relay, s, "12345")
        assert (200, b"", None) == (r.status, r.body, r.ctype)


async def test_midjourney_proxy_submit_codes() -> None:
    async with served(dialect="midjourney-proxy", concurrency=1, max_queue=2) as (relay, s):
        url = relay.url("/submit/imagine")
        banned = await send(s, "POST", url, {"prompt": "a badword"})
        assert (24, "可能包含敏感词", None) == (
            banned.json["code"],
            banned.json["description"],
            banned.json["result"],
        )
        assert ["promptEn", "bannedWord"] == list(banned.json["properties"])
        assert 4 == (await send(s, "POST", url, {"prompt": " "})).json["code"]
        assert 1 == (await send(s, "POST", url, {"prompt": "one"})).json["code"]
        assert 1 == (await send(s, "POST", url, {"prompt": "two"})).json["code"]
        queued = await send(s, "POST", url, {"prompt": "three"})
        assert (22, 1) == (queued.json["code"], queued.json["properties"]["numberOfQueues"])
        assert ["numberOfQueues", "discordInstanceId"] == list(queued.json["properties"])
        full = await send(s, "POST", url, {"prompt": "four"})
        assert (23, "队列已满，请稍后尝试", None) == (
            full.json["code"],
            full.json["description"],
            full.json["result"],
        )
        assert 400 == (await send(s, "POST", url, raw=b"nope")).status


async def test_midjourney_proxy_change_simple_change_describe_blend() -> None:
    async with served(dialect="midjourney-proxy") as (relay, s):
        grid = await finished(relay, s, await imagine(relay, s))
        change = relay.url("/submit/change")
        r = await send(s, "POST", change, {"taskId": grid["id"], "action": "UPSCALE", "index": 1})
        upscale = await finished(relay, s, r.json["result"])
        assert (f"/up {grid['id']} U1", "UPSCALE") == (upscale["description"], upscale["action"])
        assert "referencedMessageId" in upscale["properties"]
        r = await send(
            s, "POST", change, {"taskId": upscale["id"], "action": "VARIATION", "index": 1}
        )
        assert (4, "关联任务不允许执行变化") == (r.json["code"], r.json["description"])
        r = await send(s, "POST", change, {"taskId": "nope", "action": "REROLL"})
        assert (200, 3) == (r.status, r.json["code"])
        r = await send(s, "POST", change, {"taskId": grid["id"], "action": "UPSCALE"})
        assert 500 == r.status  # index null: a NullPointerException in the proxy
        assert 400 == (await send(s, "POST", change, {"taskId": "1", "action": "ZOOM"})).status
        simple = relay.url("/submit/simple-change")
        r = await send(s, "POST", simple, {"content": f"{grid['id']} V2", "state": "s"})
        variation = await finished(relay, s, r.json["result"])
        assert ("VARIATION", "s") == (variation["action"], variation["state"])
        r = await send(s, "POST", simple, {"content": f"{grid['id']} U5"})
        assert (4, "content参数错误") == (r.json["code"], r.json["description"])
        b64 = "data:image/png;base64,iVBORw0KGgo="
        r = await send(s, "POST", relay.url("/submit/describe"), {"base64": b64})
        described = await finished(relay, s, r.json["result"])
        assert described["prompt"].startswith("1\ufe0f\u20e3 ")
        assert described["description"] == f"/describe {described['id']}.png"
        r = await send(s, "POST", relay.url("/submit/describe"), {})
        assert "base64不能为空" == r.json["description"]
        blend = relay.url("/submit/blend")
        r = await send(s, "POST", blend, {"base64Array": [b64]})
        assert "base64List参数错误" == r.json["description"]
        r = await send(s, "POST", blend, {"base64Array": [b64, b64], "dimensions": None})
        assert "dimensions参数错误" == r.json["description"]  # absent means SQUARE
        r = await send(s, "POST", blend, {"base64Array": [b64, b64], "dimensions": "SQUARE"})
        assert (
            f"/blend {r.json['result']} 2"
            == (await fetch(relay, s, r.json["result"])).json["description"]
        )


async def test_midjourney_proxy_lists_queue_and_accounts() -> None:
    async with served(dialect="midjourney-proxy", api_keys=("k1", "k2")) as (relay, s):
        ids = [await imagine(relay, s, f"p{i}") for i in range(3)]
        listed = (await send(s, "GET", relay.url("/task/list"))).json
        assert ids[::-1] == [t["id"] for t in listed]
        queue = (await send(s, "GET", relay.url("/task/queue"))).json
        assert ids == [t["id"] for t in queue]
        relay.simulator.advance(1)
        assert [] == (await send(s, "GET", relay.url("/task/queue"))).json
        by_ids = relay.url("/task/list-by-condition")
        assert [] == (await send(s, "POST", by_ids, {})).json
        assert 3 == len((await send(s, "POST", by_ids, {"ids": [*ids, "x"]})).json)
        accounts = (await send(s, "GET", relay.url("/account/list"))).json
        assert 2 == len(accounts)
        assert ["id", "properties", "guildId", "channelId", "userToken", "userAgent"] == list(
            accounts[0]
        )[:6]
        one = await send(s, "GET", relay.url(f"/account/{accounts[1]['channelId']}/fetch"))
        assert accounts[1] == one.json
        assert b"" == (await send(s, "GET", relay.url("/account/0/fetch"))).body


# ---------------------------------------------------------------- trueai


async def test_trueai_auth_is_the_whole_header_value() -> None:
    async with simulate(dialect="trueai", disabled_keys=("gone",)) as relay:
        url = relay.url("/task/1/fetch")
        async with aiohttp.ClientSession() as s:
            for headers in ({"Authorization": relay.api_key}, {"Mj-Api-Secret": relay.api_key}):
                assert 204 == (await send(s, "GET", url, headers=headers)).status
            for headers in (
                {"Authorization": f"Bearer {relay.api_key}"},
                {"Authorization": "", "Mj-Api-Secret": relay.api_key},
                {},
            ):
                r = await send(s, "GET", url, headers=headers)
                assert (401, b"Authorization header missing.", None) == (r.status, r.body, r.ctype)
            r = await send(s, "GET", url, headers={"Authorization": "gone"})
            assert (401, "账号已禁用") == (r.status, r.body.decode())
            r = await send(
                s, "GET", relay.url("/task/1/nothing"), headers={"Authorization": relay.api_key}
            )
            assert (404, b"") == (r.status, r.body)
            r = await send(
                s, "GET", relay.url("/submit/imagine"), headers={"Authorization": relay.api_key}
            )
            assert 405 == r.status
            assert "Kestrel" == r.headers["Server"]


async def test_trueai_answers_escape_like_system_text_json() -> None:
    async with served(dialect="trueai") as (relay, s):
        r = await send(s, "POST", relay.url("/submit/imagine"), {"Prompt": "a <cat> + 猫"})
        assert "application/json; charset=utf-8" == r.ctype
        assert b'"description":"\\u63D0\\u4EA4\\u6210\\u529F"' in r.body
        assert ["code", "description", "result", "properties"] == list(r.json)
        assert ["discordInstanceId", "discordChannelId"] == list(r.json["properties"])
        body = (await fetch(relay, s, r.json["result"])).body
        assert b"a \\u003Ccat\\u003E \\u002B \\u732B" in body
        task = json.loads(body)
        assert "parentId" == next(iter(task)) and ["id", "properties"] == list(task)[-2:]
        assert (None, None, [], False) == (
            task["imageUrls"],
            task["videoUrls"],
            task["buttons"],
            task["isCompleted"],
        )


async def test_trueai_errors_and_logic_exceptions() -> None:
    async with served(dialect="trueai", concurrency=1, max_queue=2) as (relay, s):
        r = await send(s, "POST", relay.url("/submit/imagine"), {"prompt": "x", "state": "s" * 300})
        assert (4, "State参数过长，最大255字符") == (r.json["code"], r.json["description"])
        r = await send(s, "POST", relay.url("/submit/shorten"), {"prompt": "x", "state": "s" * 300})
        assert ["success", "code", "message", "timestamp"] == list(r.json)
        assert (200, False, -1) == (r.status, r.json["success"], r.json["code"])
        r = await send(s, "POST", relay.url("/submit/imagine"), raw=b"{oops")
        assert (200, False) == (r.status, r.json["success"])
        await imagine(relay, s)
        await imagine(relay, s)
        await imagine(relay, s)
        full = await send(s, "POST", relay.url("/submit/imagine"), {"prompt": "four"})
        assert (9, "提交失败，队列已满，请稍后重试") == (
            full.json["code"],
            full.json["description"],
        )
    async with served(dialect="trueai", quotas={"sim-key": 1}) as (relay, s):
        await imagine(relay, s)
        r = await send(s, "POST", relay.url("/submit/imagine"), {"prompt": "again"})
        assert (4, "总绘图次数已达上限") == (r.json["code"], r.json["description"])
        r = await send(s, "POST", relay.url("/submit/blend"), {"base64Array": ["a", "b"]})
        assert "总绘图次数已达上限" == r.json["message"]


async def test_trueai_banned_words_fail_the_job() -> None:
    async with served(dialect="trueai") as (relay, s):
        task = await finished(relay, s, await imagine(relay, s, "a badword"))
        assert ("FAILURE", "可能包含敏感词", "") == (
            task["status"],
            task["failReason"],
            task["progress"],
        )


async def test_trueai_actions_and_modal_flow() -> None:
    async with served(dialect="trueai") as (relay, s):
        grid = await finished(relay, s, await imagine(relay, s))
        assert 9 == len(grid["buttons"]) and grid["seed"]
        r = await press(relay, s, grid, "U2")
        upscale = await finished(relay, s, r.json["result"])
        assert (grid["id"], "UPSCALE") == (upscale["parentId"], upscale["action"])
        r = await send(s, "POST", relay.url("/submit/action"), {"taskId": "0", "customId": "x"})
        assert (404, 3, "关联任务不存在或已失效") == (
            r.status,
            r.json["code"],
            r.json["description"],
        )
        r = await send(
            s, "POST", relay.url("/submit/action"), {"taskId": grid["id"], "customId": "MJ::Nope"}
        )
        assert (4, "未知的 Action 类型") == (r.json["code"], r.json["description"])
        zoom = await press(relay, s, upscale, "Custom Zoom")
        assert (21, "Waiting for window confirm") == (zoom.json["code"], zoom.json["description"])
        assert ["finalPrompt", "remix"] == list(zoom.json["properties"])
        modal_id = zoom.json["result"]
        waiting = (await fetch(relay, s, modal_id)).json
        assert ("MODAL", "ZOOM", None) == (
            waiting["status"],
            waiting["action"],
            waiting["progress"],
        )
        r = await send(
            s, "POST", relay.url("/submit/modal"), {"taskId": modal_id, "prompt": "x --zoom 2"}
        )
        assert (1, modal_id) == (r.json["code"], r.json["result"])
        done = await finished(relay, s, modal_id)
        assert ("SUCCESS", True, "x --zoom 2") == (
            done["status"],
            done["remixAutoSubmit"],
            done["prompt"],
        )
        remix = await press(relay, s, grid, "V1", enableRemix=True)
        assert 21 == remix.json["code"]
        analyzer = await send(
            s,
            "POST",
            relay.url("/submit/action"),
            {"taskId": grid["id"], "customId": "MJ::Job::PromptAnalyzer::1"},
        )
        assert 4 == analyzer.json["code"]


async def test_trueai_describe_picreader() -> None:
    async with served(dialect="trueai") as (relay, s):
        b64 = "data:image/png;base64,iVBORw0KGgo="
        r = await send(s, "POST", relay.url("/submit/describe"), {"base64": b64})
        described = await finished(relay, s, r.json["result"])
        assert 4 == described["promptEn"].count("\r\n") + 1
        one = await press(relay, s, described, "1\ufe0f\u20e3")
        assert (21, "IMAGINE") == (
            one.json["code"],
            relay.simulator.task_json(one.json["result"])["action"],
        )
        every = await press(relay, s, described, "Imagine all")
        ids = every.json["result"].split(",")
        assert (1, 4) == (every.json["code"], len(ids))
        assert "::1" == relay.simulator.task_json(ids[0])["state"]


async def test_trueai_image_seed_cancel_and_lists() -> None:
    async with served(dialect="trueai", run_seconds=10.0, admin_keys=None) as (relay, s):
        task_id = await imagine(relay, s)
        relay.simulator.advance(1)
        seed = await send(s, "GET", relay.url(f"/task/{task_id}/image-seed"))
        assert (200, 1, "成功") == (seed.status, seed.json["code"], seed.json["description"])
        assert (404, 3) == (
            (r := await send(s, "GET", relay.url("/task/9/image-seed"))).status,
            r.json["code"],
        )
        r = await send(s, "POST", relay.url(f"/task/{task_id}/cancel"))
        assert (200, b"") == (r.status, r.body)
        cancelled = (await fetch(relay, s, task_id)).json
        assert ("FAILURE", "取消任务", "") == (
            cancelled["status"],
            cancelled["failReason"],
            cancelled["progress"],
        )
        ids = [await imagine(relay, s, f"p{i}") for i in range(3)]
        listed = (await send(s, "GET", relay.url("/task/list"))).json
        assert [*ids[::-1], task_id] == [t["id"] for t in listed]
        by_ids = (
            await send(s, "POST", relay.url("/task/list-by-ids"), {"ids": [f" {ids[0]} ", ""]})
        ).json
        assert [ids[0]] == [t["id"] for t in by_ids]
    async with served(dialect="trueai", api_keys=("admin", "user"), admin_keys=("admin",)) as (
        relay,
        s,
    ):
        task_id = await imagine(relay, s)
        async with aiohttp.ClientSession(headers={"Authorization": "user"}) as other:
            r = await send(other, "POST", relay.url(f"/task/{task_id}/cancel"))
            assert (400, "演示模式，禁止操作") == (r.status, r.body.decode())


async def test_trueai_video_edits_upload_swap() -> None:
    async with served(dialect="trueai", fill_image_urls=True) as (relay, s):
        b64 = "data:image/png;base64,iVBORw0KGgo="
        r = await send(s, "POST", relay.url("/submit/video"), {"prompt": "a cat", "image": b64})
        video = await finished(relay, s, r.json["result"])
        assert (4, 4) == (len(video["videoUrls"]), len(video["imageUrls"]))
        assert ["url", "thumbnail"] == list(video["videoUrls"][0])
        async with aiohttp.ClientSession() as anonymous:
            clip = await send(anonymous, "GET", video["videoUrl"])
            assert (200, "video/mp4") == (clip.status, clip.ctype)
        grid = await finished(relay, s, await imagine(relay, s))
        assert 4 == len(grid["imageUrls"])
        for path, action in (("/submit/edit", "EDIT"), ("/submit/retexture", "RETEXTURE")):
            r = await send(s, "POST", relay.url(path), {"prompt": "x", "image": b64})
            assert action == (await finished(relay, s, r.json["result"]))["action"]
        r = await send(
            s, "POST", relay.url("/submit/upload-discord-images"), {"base64Array": [b64]}
        )
        assert (1, list) == (r.json["code"], type(r.json["result"]))
        r = await send(
            s, "POST", relay.url("/insight-face/swap"), {"sourceBase64": b64, "targetBase64": b64}
        )
        assert "人脸图片和目标图片不能相同" == r.json["description"]
        r = await send(
            s,
            "POST",
            relay.url("/insight-face/swap", mode="relax"),
            {"sourceBase64": b64, "targetUrl": "https://x"},
        )
        swap = await finished(relay, s, r.json["result"])
        assert ("SWAP_FACE", "INSIGHT_FACE", "RELAX") == (
            swap["action"],
            swap["botType"],
            swap["requestMode"],
        )


# ---------------------------------------------------------------- every dialect


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_hooks_follow_each_change_in_the_dialects_shape(serve: Serve, dialect: str) -> None:
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)
    origin = await serve(app)
    async with served(dialect=dialect, notify_enabled=True, progress_steps=(0, 50)) as (relay, s):
        task_id = await imagine(relay, s, notifyHook=origin + "/hook")
        relay.simulator.advance(1)
        for _ in range(200):
            if not relay.simulator.hooks.pending:
                break
            await asyncio.sleep(0.01)
    assert ["SUBMITTED", "IN_PROGRESS", "IN_PROGRESS", "SUCCESS"] == [t["status"] for t in received]
    assert {task_id} == {t["id"] for t in received}


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_gateway_faults(dialect: str) -> None:
    async with served(dialect=dialect, faults=FaultConfig(error_5xx_rate=1.0)) as (relay, s):
        r = await send(s, "POST", relay.url("/submit/imagine"), {"prompt": "x"})
        assert (502, "text/html") == (r.status, r.ctype.split(";")[0])
        assert [] == relay.simulator.submissions
    faults = FaultConfig(rate_limit_rate=1.0, retry_after=0.5, routes={"fetch"})
    async with served(dialect=dialect, faults=faults) as (relay, s):
        task_id = await imagine(relay, s)
        r = await fetch(relay, s, task_id)
        assert (429, "0.5", b"") == (r.status, r.headers["Retry-After"], r.body)


async def test_drop_faults_surface_as_connection_errors() -> None:
    async with served(faults=FaultConfig(drop_rate=1.0, routes={"submit"})) as (relay, s):
        with pytest.raises(aiohttp.ClientError):
            await send(s, "POST", relay.url("/submit/imagine"), {"prompt": "x"})
        assert [] == relay.simulator.submissions
    faults = FaultConfig(drop_after_create_rate=0.5, submit_5xx_after_create_rate=0.5)
    async with served(dialect="trueai", faults=faults, seed=2) as (relay, s):
        for _ in range(4):
            with contextlib.suppress(aiohttp.ClientError):
                r = await send(s, "POST", relay.url("/submit/imagine"), {"prompt": "x"})
                assert 504 == r.status
        assert 4 == len(relay.simulator.submissions)
        kinds = {e.fault for e in relay.simulator.fault_log}
        assert kinds <= {Fault.DROP_AFTER_CREATE, Fault.ERROR_5XX_AFTER_CREATE}
    async with served(
        dialect="midjourney-proxy", faults=FaultConfig(drop_rate=1.0, routes={"fetch"})
    ) as (relay, s):
        task_id = await imagine(relay, s)
        with pytest.raises(aiohttp.ClientPayloadError):
            await fetch(relay, s, task_id)


async def test_faults_are_reproducible_and_limited_to_routes() -> None:
    async def run(seed: int) -> list[tuple[int, str, Fault]]:
        faults = FaultConfig(
            error_5xx_rate=0.3, rate_limit_rate=0.3, routes={"POST /submit/imagine"}
        )
        async with served(faults=faults, seed=seed) as (relay, s):
            for _ in range(10):
                await send(s, "POST", relay.url("/submit/imagine"), {"prompt": "x"})
                await send(s, "POST", relay.url("/task/list-by-condition"), {"ids": []})
            return [(e.request, e.route, e.fault) for e in relay.simulator.fault_log]

    first = await run(5)
    assert first == await run(5)
    assert first and all(route == "POST /submit/imagine" for _, route, _ in first)
    with pytest.raises(ValueError, match="unknown fault routes"):
        FaultConfig(routes={"nope"})
    async with served(faults=FaultConfig(latency=0.05, routes={"list"})) as (relay, s):
        started = time.monotonic()
        await send(s, "POST", relay.url("/task/list-by-condition"), {"ids": []})
        assert time.monotonic() - started >= 0.05


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_truncated_list_fault_returns_a_prefix(dialect: str) -> None:
    faults = FaultConfig(truncate_list_rate=1.0)
    async with served(dialect=dialect, faults=faults, seed=1) as (relay, s):
        ids = [await imagine(relay, s, f"p{i}") for i in range(5)]
        r = await send(s, "POST", relay.url("/task/list-by-condition"), {"ids": ids})
        assert len(r.json) < 5
        assert Fault.TRUNCATE == relay.simulator.fault_log[-1].fault


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_thousands_of_tasks_list_quickly(dialect: str) -> None:
    # 4,000 ids (10,000 took a 6 s share of the suite: a list answer costs ~0.3 ms a row).
    async with served(dialect=dialect) as (relay, s):
        sim = relay.simulator
        ids = [sim.submit_imagine(f"p{i}") for i in range(4_000)]
        sim.advance(0.1)
        started = time.perf_counter()
        r = await send(s, "POST", relay.url("/task/list-by-condition"), {"ids": ids})
        again = await send(s, "POST", relay.url("/task/list-by-condition"), {"ids": ids})
        elapsed = time.perf_counter() - started
        assert 4_000 == len(r.json) == len(again.json)
        assert elapsed < 6, elapsed


async def test_submit_imagine_preloads_and_refuses() -> None:
    for dialect in DIALECTS:
        sim = Simulator(SimulatorConfig(dialect=dialect))
        task_id = sim.submit_imagine("a cat", state="s")
        assert sim.task_json(task_id)["id"] == task_id
        if dialect != "trueai":  # TrueAI fails banned prompts later instead
            with pytest.raises(ValueError, match="refused"):
                sim.submit_imagine("a badword")


async def test_injected_clock_drives_everything() -> None:
    now = [1000.0]
    sim = Simulator(SimulatorConfig(dialect="trueai"), clock=lambda: now[0])
    task_id = sim.submit_imagine("a cat")
    assert "SUBMITTED" == sim.task_status(task_id)
    now[0] += 0.1
    assert "IN_PROGRESS" == sim.task_status(task_id)
    sim.advance(1)
    assert "SUCCESS" == sim.task_status(task_id)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="dialect"):
        SimulatorConfig(dialect="nope")
    with pytest.raises(ValueError, match="concurrency"):
        SimulatorConfig(max_queue=2)
    with pytest.raises(ValueError, match="quotas"):
        SimulatorConfig(dialect="midjourney-proxy", quotas={"sim-key": 1})
    with pytest.raises(ValueError, match="add up"):
        FaultConfig(error_5xx_rate=0.6, relay_empty_body_rate=0.6)
    assert "k" == SimulatorConfig(api_keys=("k", "j")).api_key


async def test_run_server_serves_until_cancelled() -> None:
    started: asyncio.Future[RunningSimulator] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(
        run_server("127.0.0.1", 0, SimulatorConfig(dialect="trueai"), ready=started.set_result)
    )
    running = await asyncio.wait_for(started, 5)
    assert ("raw", {"Authorization": "sim-key"}) == (running.auth_scheme, running.headers)
    async with aiohttp.ClientSession(headers=running.headers) as s:
        assert 204 == (await send(s, "GET", running.url("/task/1/fetch"))).status
    server.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await server


@pytest.mark.parametrize("dialect", DIALECTS)
def test_save_and_load_continue_the_jobs(dialect: str, tmp_path: Any) -> None:
    now = [0.0]
    sim = Simulator(SimulatorConfig(dialect=dialect, concurrency=1), clock=lambda: now[0])
    done = sim.submit_imagine("a cat", state="s1")
    now[0] += 1
    running = sim.submit_imagine("a dog")
    waiting = sim.submit_imagine("a fox")
    now[0] += 0.1
    before = {i: sim.task_json(i) for i in (done, running, waiting)}
    path = tmp_path / "state.json"
    sim.save(path)
    loaded = Simulator.load(path)

    def steady(body: dict[str, Any]) -> dict[str, Any]:  # ?rand= changes on every read
        return {**body, "imageUrl": str(body.get("imageUrl")).split("?rand=")[0]}

    assert {i: steady(b) for i, b in before.items()} == {
        i: steady(loaded.task_json(i)) for i in before
    }
    assert "SUCCESS" == loaded.task_status(done)
    loaded.advance(1)
    assert "SUCCESS" == loaded.task_status(waiting)
    assert int(loaded.submit_imagine("next")) > int(waiting)
    assert 4 == loaded.accounts["sim-key"].submitted
    assert [s.prompt for s in loaded.submissions] == ["a cat", "a dog", "a fox", "next"]


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_bad_bodies_never_crash_the_server(dialect: str) -> None:
    """Odd bodies get the server's own refusal (4xx or a code), never a simulator 500."""
    bodies: list[bytes] = [
        b"",
        b"{",
        b"[]",
        b'"x"',
        b"null",
        b'{"prompt": {}, "base64Array": "x", "ids": 3}',
        b'{"taskId": 7, "customId": ["x"], "index": "1", "action": 5, "content": 1}',
        b'{"base64Array": [1, 2], "dimensions": "HUGE", "image": 3, "taskId": "1"}',
    ]
    async with served(dialect=dialect) as (relay, s):
        posts = [r for r in relay.simulator.dialect.routes() if r.method == "POST"]
        for route in posts:
            path = route.path.replace("{id}", "1")
            for body in bodies:
                headers = {**relay.headers, "Content-Type": "application/json"}
                r = await send(s, "POST", relay.url(path), headers=headers, raw=body)
                # The servers' own 5xx answers are JSON; aiohttp's crash page is not.
                assert r.status < 500 or r.body.startswith(b"{"), (route.path, body, r.body)


async def test_hook_drops_disabled_hooks_and_cleanup(serve: Serve) -> None:
    received: list[bytes] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)
    origin = await serve(app)
    faults = FaultConfig(hook_drop_rate=1.0)
    async with served(dialect="trueai", faults=faults) as (relay, s):
        await imagine(relay, s, notifyHook=origin + "/hook")
        relay.simulator.advance(1)
        for _ in range(100):
            if not relay.simulator.hooks.pending:
                break
            await asyncio.sleep(0.01)
        assert ([], 9) == (relay.simulator.hook_deliveries, len(relay.simulator.hooks.dropped))
    async with served(dialect="trueai", hooks_enabled=False) as (relay, s):
        await imagine(relay, s, notifyHook=origin + "/hook")
        assert 0 == relay.simulator.hooks.pending
    async with served(dialect="midjourney-proxy", run_seconds=60) as (relay, s):
        await imagine(relay, s, notifyHook=origin + "/hook")
        sim = relay.simulator
        assert 1 == sim.hooks.pending
    assert 0 == sim.hooks.pending  # cancelled when the server stopped
    assert 1 == len(received)  # only the last job's SUBMITTED


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_lone_surrogate_prompt_poisons_nobody(dialect: str) -> None:
    """A prompt holding a lone surrogate escape (raw HTTP: the SDK refuses to send one) is
    answered as the real server would, and every client's list, list-by-condition and
    fetch stay answered: Jackson (midjourney-proxy) keeps it in a Java string and writes
    it back as ``\\uD800``; new-api (quickrouter) reads it as U+FFFD (Go's
    ``json.Unmarshal``); TrueAI's copy here escapes it as .NET writes non-ASCII."""
    async with served(dialect=dialect, api_keys=("sk-one-1234", "sk-two-5678")) as (relay, s):
        headers = {**relay.headers, "Content-Type": "application/json"}
        raw = b'{"prompt": "a \\ud800 cat"}'
        r = await send(s, "POST", relay.url("/submit/imagine"), headers=headers, raw=raw)
        assert 200 == r.status and 1 == r.json["code"], r.body
        task_id = str(r.json["result"])
        other = relay.simulator.dialect.auth_headers("sk-two-5678")
        for who in (relay.headers, other):
            for method, path, body in (
                ("GET", "/task/list", None),
                ("POST", "/task/list-by-condition", {"ids": [task_id]}),
                ("GET", f"/task/{task_id}/fetch", None),
            ):
                r = await send(s, method, relay.url(path), body, headers=who)
                assert r.status < 500, (method, path, r.status, r.body[:200])
        answer = await fetch(relay, s, task_id)
    assert 200 == answer.status
    if dialect == "quickrouter":
        assert "a \ufffd cat" == answer.json["prompt"]
    else:
        assert b"a \\uD800 cat" in answer.body


def test_jackson_escapes_surrogates_as_java_does() -> None:
    """Jackson's UTF8JsonGenerator escapes every UTF-16 surrogate (upper-case hex): a
    character beyond the BMP as its pair, a lone one as itself; Go coerces to U+FFFD."""
    from quickmj.testing._sim._wire import go_json, go_unmarshal, jackson_json

    written = jackson_json({"p": "\U0001f600 \udc00 中"})
    assert b'{"p":"\\uD83D\\uDE00 \\uDC00 \xe4\xb8\xad"}' == written
    assert {"p": "\U0001f600 \udc00"} == json.loads(jackson_json({"p": "\U0001f600 \udc00"}))
    assert '{"p":"a \ufffd"}'.encode() == go_json({"p": "a \ud800"})
    assert {"p": "\ufffd \U0001f600"} == go_unmarshal(b'{"p": "\\udbff \\ud83d\\ude00"}')
