"""The embedded relay simulator, driven with plain aiohttp requests (no SDK client)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from quickmj import SubmitResult, Task, TaskAction, TaskStatus
from quickmj._converter import structure
from quickmj.simulator import (
    Fault,
    FaultConfig,
    RunningSimulator,
    Simulator,
    SimulatorConfig,
    run_server,
    simulate,
)

Serve = Callable[..., Awaitable[str]]  # the conftest fixture that serves aiohttp apps

#: Tiny timings: a job takes ~60 ms from submit to SUCCESS.
FAST: dict[str, Any] = {"queue_seconds": 0.01, "run_seconds": 0.05}


@contextlib.asynccontextmanager
async def relay_session(
    **overrides: Any,
) -> AsyncIterator[tuple[RunningSimulator, aiohttp.ClientSession]]:
    async with (
        simulate(**{**FAST, **overrides}) as relay,
        aiohttp.ClientSession(headers=relay.headers) as session,
    ):
        yield relay, session


async def post(session: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with session.post(url, json=body) as resp:
        text = await resp.text()
        return resp.status, (await resp.json(content_type=None)) if text else None


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as resp:
        text = await resp.text()
        return resp.status, (await resp.json(content_type=None)) if text else None


async def imagine(
    relay: RunningSimulator, session: aiohttp.ClientSession, prompt: str = "a cat", **extra: Any
) -> str:
    status, body = await post(session, relay.url("/submit/imagine"), {"prompt": prompt, **extra})
    assert (200, 1) == (status, body["code"]), body
    return str(body["result"])


async def wait_done(
    relay: RunningSimulator, session: aiohttp.ClientSession, task_id: str
) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        _, task = await get(session, relay.url(f"/task/{task_id}/fetch"))
        if task["status"] in ("SUCCESS", "FAILURE"):
            return dict(task)
        await asyncio.sleep(0.01)
    raise AssertionError(f"task {task_id} did not finish")


async def press(
    relay: RunningSimulator, session: aiohttp.ClientSession, task: dict[str, Any], label: str
) -> tuple[int, Any]:
    button = next(b for b in task["buttons"] if label in (b["label"], b["emoji"]))
    body = {"taskId": task["id"], "customId": button["customId"]}
    return await post(session, relay.url("/submit/action"), body)


def png_info(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, raw scanlines) of an 8-bit RGB PNG; checks the chunk CRCs."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", (0, 0)
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, chunk = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + chunk) & 0xFFFFFFFF
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert (8, 2) == (depth, colour)
            size = (width, height)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    assert len(raw) == size[1] * (1 + 3 * size[0])
    return size[0], size[1], raw


# ---- auth ----


async def test_auth_wrong_or_missing_key_is_401_plain_text() -> None:
    """401 with the relay's text, never echoing the key; all three header styles work."""
    async with simulate(api_key="sk-right") as relay, aiohttp.ClientSession() as session:
        url = relay.url("/task/1/fetch")
        for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"mj-api-secret": "nope"}):
            async with session.get(url, headers=headers) as resp:
                assert 401 == resp.status
                text = await resp.text()
                assert "Authorization header missing." == text
                assert "sk-" not in text
        for headers in (
            {"Authorization": "Bearer sk-right"},
            {"Authorization": "sk-right"},
            {"mj-api-secret": "sk-right"},
        ):
            async with session.get(url, headers=headers) as resp:
                assert 200 == resp.status, headers
        assert 6 == relay.simulator.counters["GET /task/{id}/fetch"]


# ---- lifecycle ----


async def test_imagine_runs_to_success_with_buttons() -> None:
    """SUBMITTED -> IN_PROGRESS (rising progress) -> SUCCESS with the sample's buttons."""
    async with relay_session(run_seconds=0.3) as (relay, session):
        task_id = await imagine(relay, session, "a cat --v 6.1", state="order-42")
        assert 16 == len(task_id) and task_id.isdigit()
        seen: list[tuple[str, str]] = []
        while not seen or seen[-1][0] != "SUCCESS":
            _, raw = await get(session, relay.url(f"/task/{task_id}/fetch"))
            seen.append((raw["status"], raw["progress"]))
            await asyncio.sleep(0.004)
    order = ["SUBMITTED", "IN_PROGRESS", "SUCCESS"]
    statuses = [s for s, _ in seen]
    assert statuses == sorted(statuses, key=order.index)
    assert {"IN_PROGRESS", "SUCCESS"} <= set(statuses)
    running = [int(p.rstrip("%")) for s, p in seen if s == "IN_PROGRESS"]
    assert running == sorted(running)
    assert "order-42" == raw["state"]
    assert "100%" == raw["progress"]
    assert raw["submitTime"] <= raw["startTime"] <= raw["finishTime"]
    labels = [b["label"] or b["emoji"] for b in raw["buttons"]]
    assert ["U1", "U2", "U3", "U4", "🔄", "V1", "V2", "V3", "V4"] == labels
    message_hash = raw["properties"]["messageHash"]
    assert f"MJ::JOB::reroll::0::{message_hash}::SOLO" == raw["buttons"][4]["customId"]
    assert "a cat --v 6.1" == raw["properties"]["finalPrompt"]
    assert 4 == len(raw["imageUrls"])
    task = structure(raw, Task)  # the SDK's converter reads it
    assert TaskStatus.SUCCESS is task.status and TaskAction.IMAGINE is task.action
    assert task == relay.simulator.task(task_id)
    assert "U2" == task.button("U2").label


async def test_fail_words_and_failure_rate_end_in_failure() -> None:
    """A fail word (or failure_rate) is accepted, then ends FAILURE with a reason."""
    async with relay_session(fail_words=("explode",)) as (relay, session):
        failed = await wait_done(relay, session, await imagine(relay, session, "cat EXPLODE"))
        ok = await wait_done(relay, session, await imagine(relay, session, "cat"))
    assert "FAILURE" == failed["status"] and "" == failed["progress"]
    assert "explode" in failed["failReason"]
    assert failed["finishTime"] and [] == failed["buttons"]
    assert "SUCCESS" == ok["status"]
    async with relay_session(failure_rate=1.0) as (relay, session):
        failed = await wait_done(relay, session, await imagine(relay, session))
    assert "FAILURE" == failed["status"] and failed["failReason"]


async def test_banned_word_is_code_24_and_creates_nothing() -> None:
    async with relay_session() as (relay, session):
        status, body = await post(
            session, relay.url("/submit/imagine"), {"prompt": "a BadWord here"}
        )
    assert 200 == status
    result = structure(body, SubmitResult)
    assert 24 == result.code and result.result is None
    assert "badword" == result.properties["bannedWord"]
    assert "a BadWord here" == result.properties["promptEn"]
    assert not relay.simulator.tasks and not relay.simulator.submissions


async def test_queue_limit_is_code_23_and_creates_nothing() -> None:
    async with relay_session(max_queue=2, run_seconds=5) as (relay, session):
        await imagine(relay, session, "one")
        await imagine(relay, session, "two")
        status, body = await post(session, relay.url("/submit/imagine"), {"prompt": "three"})
    assert (200, 23, None) == (status, body["code"], body["result"])
    assert "队列已满，请稍后尝试" == body["description"]
    assert 2 == len(relay.simulator.tasks)
    assert ["one", "two"] == [s.prompt for s in relay.simulator.submissions]
    assert 3 == relay.simulator.counters["POST /submit/imagine"]


async def test_concurrency_queues_jobs_with_code_22() -> None:
    """With one slot, later jobs wait in NOT_START and the answer reports the queue."""
    async with relay_session(concurrency=1, run_seconds=0.3) as (relay, session):
        first = await imagine(relay, session, "one")
        second = await imagine(relay, session, "two")  # the wait queue was empty: code 1
        _, body = await post(session, relay.url("/submit/imagine"), {"prompt": "three"})
        assert (22, 1) == (body["code"], body["properties"]["numberOfQueues"])
        assert TaskStatus.NOT_START is relay.simulator.task(second).status
        assert TaskStatus.NOT_START is relay.simulator.task(body["result"]).status
        done = [await wait_done(relay, session, i) for i in (first, second, body["result"])]
    assert all("SUCCESS" == t["status"] for t in done)
    assert done[0]["finishTime"] <= done[1]["startTime"] + 1
    assert done[1]["finishTime"] <= done[2]["startTime"] + 1


# ---- actions and the modal flow ----


async def test_upscale_gives_the_upscaled_buttons_and_quadrant_image() -> None:
    async with relay_session() as (relay, session):
        grid = await wait_done(relay, session, await imagine(relay, session))
        status, body = await press(relay, session, grid, "U2")
        assert (200, 1) == (status, body["code"])
        up = await wait_done(relay, session, body["result"])
        async with session.get(grid["imageUrls"][1]["url"]) as resp:
            quadrant = await resp.read()
        async with session.get(up["imageUrl"]) as resp:
            upscaled = await resp.read()
    assert "UPSCALE" == up["action"] and grid["id"] == up["parentId"]
    labels = {b["label"] for b in up["buttons"]}
    assert {"Custom Zoom", "Vary (Region)", "Zoom Out 2x", "Vary (Subtle)"} <= labels
    h = up["properties"]["messageHash"]
    ids = {b["customId"] for b in up["buttons"]}
    assert {f"MJ::CustomZoom::{h}", f"MJ::Inpaint::1::{h}::SOLO"} <= ids
    assert {f"MJ::JOB::pan_left::1::{h}::SOLO", f"MJ::Outpaint::50::1::{h}::SOLO"} <= ids
    assert quadrant == upscaled  # U2 shows the grid's second image
    assert "/submit/action" == relay.simulator.submissions[-1].endpoint


async def test_action_kinds_and_rejections() -> None:
    """V/reroll/pan/zoom map to their actions; bad parents and customIds are refused."""
    async with relay_session() as (relay, session):
        grid = await wait_done(relay, session, await imagine(relay, session))
        actions = {}
        for label in ("V1", "🔄"):
            _, body = await press(relay, session, grid, label)
            actions[label] = (await wait_done(relay, session, body["result"]))["action"]
        _, body = await press(relay, session, grid, "U1")
        up = await wait_done(relay, session, body["result"])
        for label in ("⬅️", "Zoom Out 2x", "Vary (Strong)", "Upscale (Subtle)"):
            _, body = await press(relay, session, up, label)
            actions[label] = (await wait_done(relay, session, body["result"]))["action"]
        url = relay.url("/submit/action")
        unknown = await post(session, url, {"taskId": "42", "customId": "MJ::JOB::reroll::0::x"})
        wrong_hash = await post(
            session, url, {"taskId": grid["id"], "customId": "MJ::JOB::upsample::1::nope"}
        )
        gibberish = await post(session, url, {"taskId": grid["id"], "customId": "hello"})
        failed = await wait_done(relay, session, await imagine(relay, session, "failword"))
        not_success = await post(
            session, url, {"taskId": failed["id"], "customId": grid["buttons"][0]["customId"]}
        )
        missing = await post(session, url, {"customId": "x"})
    assert {
        "V1": "VARIATION",
        "🔄": "IMAGINE",
        "⬅️": "PAN",
        "Zoom Out 2x": "ZOOM",
        "Vary (Strong)": "VARIATION",
        "Upscale (Subtle)": "UPSCALE_HD",
    } == actions
    assert (404, 3) == (unknown[0], unknown[1]["code"])
    assert "关联任务不存在或已失效" == unknown[1]["description"]
    for status, body in (wrong_hash, gibberish, not_success, missing):
        assert (200, 4) == (status, body["code"]), body


async def test_modal_flow_custom_zoom_and_vary_region() -> None:
    """Code 21 creates a MODAL task; /submit/modal validates, then the same id runs."""
    async with relay_session() as (relay, session):
        grid = await wait_done(relay, session, await imagine(relay, session, "a fox"))
        _, body = await press(relay, session, grid, "U1")
        up = await wait_done(relay, session, body["result"])

        status, body = await press(relay, session, up, "Custom Zoom")
        assert (200, 21) == (status, body["code"])
        assert "Waiting for window confirm" == body["description"]
        assert body["properties"]["remix"] is True and "--zoom" in body["properties"]["finalPrompt"]
        modal_id = body["result"]
        await asyncio.sleep(0.08)  # a MODAL task does not progress by itself
        _, fetched = await get(session, relay.url(f"/task/{modal_id}/fetch"))
        assert "MODAL" == fetched["status"] == relay.simulator.task(modal_id).status
        modal_url = relay.url("/submit/modal")
        no_zoom = await post(session, modal_url, {"taskId": modal_id, "prompt": "a fox"})
        assert 4 == no_zoom[1]["code"]
        ok = await post(session, modal_url, {"taskId": modal_id, "prompt": "a fox --zoom 1.5"})
        assert (1, modal_id) == (ok[1]["code"], ok[1]["result"])
        again = await post(session, modal_url, {"taskId": modal_id, "prompt": "x --zoom 2"})
        assert 4 == again[1]["code"]
        zoomed = await wait_done(relay, session, modal_id)
        assert ("SUCCESS", "ZOOM", "a fox --zoom 1.5") == (
            zoomed["status"],
            zoomed["action"],
            zoomed["prompt"],
        )

        _, body = await press(relay, session, up, "Vary (Region)")
        assert 21 == body["code"]
        region_id = body["result"]
        no_mask = await post(session, modal_url, {"taskId": region_id, "prompt": "a hat"})
        assert 4 == no_mask[1]["code"]
        mask = "data:image/png;base64,iVBORw0KGgo="
        ok = await post(session, modal_url, {"taskId": region_id, "maskBase64": mask})
        assert 1 == ok[1]["code"]
        region = await wait_done(relay, session, region_id)
        assert ("SUCCESS", "VARIATION") == (region["status"], region["action"])
        unknown = await post(session, modal_url, {"taskId": "123", "prompt": "x"})
        assert (404, 3) == (unknown[0], unknown[1]["code"])
    # MODAL tasks are created (and recorded) at the action, not at the modal.
    assert 4 == len(relay.simulator.submissions)


# ---- reads ----


async def test_fetch_unknown_id_is_an_empty_200() -> None:
    async with (
        relay_session() as (relay, session),
        session.get(relay.url("/task/1234567890123456/fetch")) as resp,
    ):
        assert (200, b"") == (resp.status, await resp.read())


async def test_list_by_condition_is_unordered_and_skips_unknown_ids() -> None:
    async with relay_session() as (relay, session):
        ids = [relay.simulator.submit_imagine(f"p{i}") for i in range(30)]
        url = relay.url("/task/list-by-condition")
        _, found = await post(session, url, {"ids": [*ids, "999", ids[0], ids[1]]})
        bodies: list[Any] = [{"ids": []}, {"ids": None}, {}, None]
        empties = [await post(session, url, body) for body in bodies]
    got = [t["id"] for t in found]
    assert sorted(ids) == sorted(got)  # each once, unknown left out
    assert ids != got  # the relay does not keep the order (seeded shuffle)
    assert all((200, []) == e for e in empties)
    assert all(isinstance(t["id"], str) for t in found)


async def test_image_seed_answers() -> None:
    async with relay_session(seed_delay=0.05) as (relay, session):
        failed = await wait_done(relay, session, await imagine(relay, session, "failword"))
        unfinished = await get(session, relay.url(f"/task/{failed['id']}/image-seed"))
        task_id = await imagine(relay, session)
        await wait_done(relay, session, task_id)
        started = time.monotonic()
        first = await get(session, relay.url(f"/task/{task_id}/image-seed"))
        elapsed = time.monotonic() - started
        second = await get(session, relay.url(f"/task/{task_id}/image-seed"))
        unknown = await get(session, relay.url("/task/77/image-seed"))
    assert (400, 4, "关联任务状态错误") == (
        unfinished[0],
        unfinished[1]["code"],
        unfinished[1]["description"],
    )
    assert (200, 1, "成功") == (first[0], first[1]["code"], first[1]["description"])
    assert first[1]["result"].isdigit() and first == second
    assert elapsed >= 0.05
    assert (404, 3) == (unknown[0], unknown[1]["code"])
    assert 4 == relay.simulator.counters["GET /task/{id}/image-seed"]


async def test_images_are_real_pngs_served_without_auth() -> None:
    async with relay_session(image_size=32) as (relay, session):
        task = await wait_done(relay, session, await imagine(relay, session))
        async with aiohttp.ClientSession() as anonymous:  # a CDN needs no key
            async with anonymous.get(task["imageUrl"]) as resp:
                assert ("image/png", 200) == (resp.content_type, resp.status)
                grid = await resp.read()
            async with anonymous.get(f"{relay.base_url}/images/42.png") as resp:
                assert 404 == resp.status
    width, height, raw = png_info(grid)
    assert (32, 32) == (width, height)
    row = 1 + 3 * 32
    top_left, top_right = raw[1:4], raw[1 + 3 * 20 : 4 + 3 * 20]
    bottom_left = raw[20 * row + 1 : 20 * row + 4]
    assert len({top_left, top_right, bottom_left}) == 3  # four coloured squares
    assert 2 == relay.simulator.counters["GET /image"]


async def test_mode_prefixes_route_and_are_recorded() -> None:
    async with relay_session() as (relay, session):
        _, submitted = await post(
            session, relay.url("/submit/imagine", mode="fast"), {"prompt": "quick"}
        )
        relax = await get(session, relay.url(f"/task/{submitted['result']}/fetch", "relax"))
        turbo = await post(session, relay.url("/task/list-by-condition", "turbo"), {"ids": []})
    assert "FAST" == relax[1]["properties"]["mode"]
    assert (200, []) == turbo
    assert 1 == relay.simulator.counters["POST /submit/imagine"]
    assert 1 == relay.simulator.counters["GET /task/{id}/fetch"]


# ---- faults ----


async def test_truncated_list_fault_returns_a_prefix() -> None:
    faults = FaultConfig(truncate_list_rate=1.0)
    async with relay_session(faults=faults) as (relay, session):
        ids = [relay.simulator.submit_imagine(f"p{i}") for i in range(10)]
        _, found = await post(session, relay.url("/task/list-by-condition"), {"ids": ids})
    assert len(found) < 10
    assert {t["id"] for t in found} <= set(ids)
    assert [Fault.TRUNCATE] == [e.fault for e in relay.simulator.fault_log]


async def test_5xx_fault_is_an_html_page_and_creates_nothing() -> None:
    async with (
        relay_session(faults=FaultConfig(error_5xx_rate=1.0)) as (relay, session),
        session.post(relay.url("/submit/imagine"), json={"prompt": "x"}) as resp,
    ):
        assert (502, "text/html") == (resp.status, resp.content_type)
        assert "<h1>502 Bad Gateway</h1>" in await resp.text()
    assert not relay.simulator.tasks and not relay.simulator.submissions
    assert 1 == relay.simulator.counters["POST /submit/imagine"]


async def test_429_fault_has_retry_after_and_creates_nothing() -> None:
    faults = FaultConfig(rate_limit_rate=1.0, routes={"submit"})
    async with relay_session(faults=faults) as (relay, session):
        async with session.post(relay.url("/submit/imagine"), json={"prompt": "x"}) as resp:
            assert (429, "1", b"") == (
                resp.status,
                resp.headers["Retry-After"],
                await resp.read(),
            )
        ok = await get(session, relay.url("/task/1/fetch"))  # not a submit: no fault
    assert (200, None) == ok
    assert not relay.simulator.tasks


async def test_drop_faults_surface_as_connection_errors() -> None:
    """Before create: disconnect, nothing made. After create: cut answer, job exists."""
    async with relay_session(faults=FaultConfig(drop_rate=1.0)) as (relay, session):
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await post(session, relay.url("/submit/imagine"), {"prompt": "x"})
        assert not relay.simulator.tasks
        with pytest.raises(aiohttp.ClientPayloadError):
            await get(session, relay.url("/task/1/fetch"))
    faults = FaultConfig(drop_after_create_rate=1.0)
    async with relay_session(faults=faults) as (relay, session):
        with pytest.raises(aiohttp.ClientError):
            await post(session, relay.url("/submit/imagine"), {"prompt": "maybe paid"})
        assert [("/submit/imagine", "maybe paid")] == [s[:2] for s in relay.simulator.submissions]
    faults = FaultConfig(submit_5xx_after_create_rate=1.0)
    async with relay_session(faults=faults) as (relay, session):
        async with session.post(relay.url("/submit/imagine"), json={"prompt": "y"}) as resp:
            assert 504 == resp.status and "text/html" == resp.content_type
        ok = await get(session, relay.url("/task/1/fetch"))  # after-create faults: submits only
        assert 200 == ok[0]
        assert 1 == len(relay.simulator.submissions)


async def _fault_run(seed: int) -> tuple[list[int], list[tuple[int, str, Fault]]]:
    faults = FaultConfig(error_5xx_rate=0.2, rate_limit_rate=0.2, drop_rate=0.2)
    statuses: list[int] = []
    async with relay_session(seed=seed, faults=faults) as (relay, session):
        for _ in range(40):
            try:
                async with session.get(relay.url("/task/1/fetch")) as resp:
                    await resp.read()
                    statuses.append(resp.status)
            except aiohttp.ClientError:
                statuses.append(-1)
        log = [(e.request, e.route, e.fault) for e in relay.simulator.fault_log]
    return statuses, log


async def test_faults_are_reproducible_with_the_same_seed() -> None:
    first, second, other = await _fault_run(7), await _fault_run(7), await _fault_run(8)
    assert first == second
    assert first != other
    assert {200, 502, 429, -1} == set(first[0])
    assert len(first[1]) == sum(1 for s in first[0] if s != 200)


async def test_faults_limited_to_routes_and_latency() -> None:
    faults = FaultConfig(error_5xx_rate=1.0, routes={"GET /image"}, latency=0.05)
    async with relay_session(faults=faults) as (relay, session):
        started = time.monotonic()
        task = await wait_done(relay, session, await imagine(relay, session))
        unaffected = time.monotonic() - started
        started = time.monotonic()
        async with session.get(task["imageUrl"]) as resp:
            assert 502 == resp.status
        assert time.monotonic() - started >= 0.05
    assert unaffected < 2
    with pytest.raises(ValueError, match="unknown fault routes"):
        FaultConfig(routes={"submits"})


# ---- hooks ----


async def test_notify_hook_receives_every_change_in_order(serve: Serve) -> None:
    received: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        task = await request.json()
        received.append(task)
        if task["status"] in ("SUCCESS", "FAILURE"):
            done.set()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    origin = await serve(app)
    async with relay_session() as (relay, session):
        hook_url = f"{origin}/hook"
        await imagine(relay, session, "hooked", notifyHook=hook_url, state="s-1")
        await asyncio.wait_for(done.wait(), 5)
    statuses = [t["status"] for t in received]
    assert "SUBMITTED" == statuses[0] and "SUCCESS" == statuses[-1]
    assert set(statuses[1:-1]) == {"IN_PROGRESS"}
    percents = [int(t["progress"].rstrip("%")) for t in received[1:]]
    assert percents == sorted(percents) and 100 == percents[-1]
    assert len(received) == 2 + len(SimulatorConfig().progress_steps)
    assert all("s-1" == t["state"] for t in received)
    assert hook_url == received[-1]["properties"]["notifyHook"]
    assert received[-1]["buttons"]


async def test_lost_and_disabled_hooks_and_cleanup(serve: Serve) -> None:
    """hook_drop_rate=1 and hooks_enabled=False send nothing; exit cancels pending hooks."""
    received: list[Any] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)
    hook_url = f"{await serve(app)}/hook"
    for overrides in ({"faults": FaultConfig(hook_drop_rate=1.0)}, {"hooks_enabled": False}):
        async with relay_session(**overrides) as (relay, session):
            await wait_done(relay, session, await imagine(relay, session, notifyHook=hook_url))
            await asyncio.sleep(0.02)
    assert [] == received
    async with relay_session(run_seconds=30) as (relay, session):
        await imagine(relay, session, notifyHook=hook_url)
        await imagine(relay, session, notifyHook="http://127.0.0.1:9/unreachable")
        for _ in range(200):
            if received:
                break
            await asyncio.sleep(0.01)
        assert 2 == relay.simulator.hooks.pending
    assert 0 == relay.simulator.hooks.pending
    assert 1 <= len(received)


# ---- validation, counters, scale ----


async def test_bad_bodies_are_code_4_never_500() -> None:
    async with relay_session() as (relay, session):
        cases: list[tuple[str, Any]] = [
            ("imagine", {}),
            ("imagine", {"prompt": "   "}),
            ("imagine", {"prompt": {"nested": 1}}),
            ("imagine", {"prompt": "x", "base64Array": ["not base64!"]}),
            ("imagine", {"prompt": "x", "state": "s" * 256}),
            ("imagine", [1, 2]),
            ("blend", {"base64Array": ["data:image/png;base64,AAAA"]}),
            ("blend", {"base64Array": ["data:image/png;base64,AA"] * 2, "dimensions": "ROUND"}),
            ("blend", {"base64Array": ["data:image/png;base64,AA"] * 2, "dimensions": None}),
            ("describe", {}),
            ("shorten", {"prompt": ""}),
            ("action", {"taskId": "1"}),
            ("modal", {"prompt": "x"}),
            ("modal", "text"),
        ]
        for endpoint, body in cases:
            status, answer = await post(session, relay.url(f"/submit/{endpoint}"), body)
            assert (200, 4) == (status, answer["code"]), (endpoint, body, answer)
        async with session.post(relay.url("/submit/imagine"), data=b"{oops") as resp:
            assert 400 == resp.status and 4 == (await resp.json())["code"]
        async with session.post(relay.url("/task/list-by-condition"), data=b"nope") as resp:
            assert 400 == resp.status
    assert not relay.simulator.tasks


async def test_blend_describe_shorten_and_counters() -> None:
    image = "data:image/png;base64,iVBORw0KGgo="
    async with relay_session() as (relay, session):
        bodies = {
            "blend": {"base64Array": [image, image], "dimensions": "PORTRAIT"},
            "describe": {"base64": image},
            "shorten": {"prompt": "a very long prompt about a small red fox"},
        }
        done = {}
        for endpoint, body in bodies.items():
            _, answer = await post(session, relay.url(f"/submit/{endpoint}"), body)
            done[endpoint] = await wait_done(relay, session, answer["result"])
        await post(session, relay.url("/task/list-by-condition"), {"ids": []})
        async with session.get(done["describe"]["imageUrl"]) as resp:
            assert "image/png" == resp.content_type
        _, describe_again = await press(relay, session, done["describe"], "🔄")
        _, from_prompt = await press(relay, session, done["describe"], "1")
    assert ("BLEND", "--ar 2:3") == (
        done["blend"]["action"],
        done["blend"]["prompt"][-8:],
    )
    assert done["describe"]["prompt"].startswith("1\ufe0f\u20e3")
    assert ["1", "2", "3", "4", ""] == [b["label"] for b in done["describe"]["buttons"]]
    assert "Shortened prompts" in done["shorten"]["properties"]["finalPrompt"]
    assert done["shorten"]["imageUrl"] is None
    assert 1 == describe_again["code"] and 21 == from_prompt["code"]
    counters = relay.simulator.counters
    assert {
        "POST /submit/blend": 1,
        "POST /submit/describe": 1,
        "POST /submit/shorten": 1,
        "POST /submit/action": 2,
        "POST /task/list-by-condition": 1,
        "GET /image": 1,
    } == {k: v for k, v in counters.items() if k != "GET /task/{id}/fetch"}
    assert counters["GET /task/{id}/fetch"] >= 3
    endpoints = [s.endpoint for s in relay.simulator.submissions]
    assert [
        "/submit/blend",
        "/submit/describe",
        "/submit/shorten",
        "/submit/action",
        "/submit/action",
    ] == endpoints


async def test_ten_thousand_tasks_list_quickly() -> None:
    """Tracking 10,000 tasks in chunks of 100 stays fast (no per-request scans)."""
    async with relay_session(run_seconds=60) as (relay, session):
        sim: Simulator = relay.simulator
        ids = [sim.submit_imagine(f"prompt {i}") for i in range(10_000)]
        url = relay.url("/task/list-by-condition")
        started = time.monotonic()
        for _ in range(2):
            seen = 0
            for i in range(0, len(ids), 100):
                _, found = await post(session, url, {"ids": ids[i : i + 100]})
                seen += len(found)
            assert 10_000 == seen
        elapsed = time.monotonic() - started
    assert elapsed < 15, f"two sweeps of 10,000 tasks took {elapsed:.1f} s"


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        SimulatorConfig(failure_rate=1.5)
    with pytest.raises(ValueError):
        FaultConfig(error_5xx_rate=0.6, drop_rate=0.6)
    with pytest.raises(ValueError):
        SimulatorConfig(progress_steps=())
    assert frozenset({"submit"}) == FaultConfig(routes=["submit"]).routes


async def test_run_server_serves_until_cancelled() -> None:
    started: asyncio.Future[RunningSimulator] = asyncio.get_running_loop().create_future()
    server = asyncio.ensure_future(
        run_server("127.0.0.1", 0, SimulatorConfig(api_key="k"), ready=started.set_result)
    )
    running = await asyncio.wait_for(started, 5)
    try:
        assert running.base_url.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession(headers=running.headers) as session:
            assert (200, None) == await get(session, running.url("/task/1/fetch"))
    finally:
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server
