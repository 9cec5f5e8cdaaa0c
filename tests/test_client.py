"""AsyncClient over MockTransport: what each call sends, what it makes of the answers, the
job handles submits give back, configuration and lifecycle. Downloads use real local servers
(two origins)."""

from __future__ import annotations

import asyncio
import base64
import errno
import gc
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import Serve, load_fixture
from fakes import BASE, KEY, FakeRelay, Script, make_client

from quickmj import (
    AsyncClient,
    AsyncJob,
    AuthenticationError,
    Button,
    ButtonNotFoundError,
    ClientClosedError,
    ConfigurationError,
    DownloadError,
    ImageExpiredError,
    InvalidInputError,
    MalformedResponseError,
    PollPolicy,
    RelatedTaskNotFoundError,
    RetryPolicy,
    ServerError,
    StorageError,
    Submission,
    SubmitOutcomeUnknownError,
    SubmitRejectedError,
    SubmitResult,
    Task,
    TaskNeedsModalError,
    TaskNotFoundError,
    TaskStatus,
    TaskTimeoutError,
    Timeouts,
    TransportError,
    UnsafeURLError,
    UsageError,
    ValidationError,
)
from quickmj._converter import structure
from quickmj._files import download_url
from quickmj.testing import MockTransport, Request, Response

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 16
GIF = b"GIF89a" + b"\x00" * 8
WEBP = b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 8
PIG_ID = "1730621826053455"
PIG_HASH = "3785da15-4f70-4034-9128-f3ff1ac634fa"
NEW_ID = "1730621826053999"
OK = {"code": 1, "description": "提交成功", "result": NEW_ID, "properties": {}}
IMAGINE = "POST /mj/submit/imagine"
ACTION = "POST /mj/submit/action"
MODAL = "POST /mj/submit/modal"
LIST = "POST /mj/task/list-by-condition"


def data_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def client(**kwargs: Any) -> AsyncClient:
    """An AsyncClient over the network (aiohttp), for the local-server tests."""
    kwargs.setdefault("retry", RetryPolicy(backoff=0, max_backoff=0, max_attempts=3))
    return AsyncClient(KEY, base_url=kwargs.pop("base_url", BASE), **kwargs)


def pig() -> Task:
    return structure(load_fixture("task_pig"), Task)


# ---- submit endpoints: paths and bodies ---------------------------------------------------


async def test_imagine_posts_the_documented_body(tmp_path: Path) -> None:
    """imagine: trimmed prompt, reference images as data URLs (URLs passed through)."""
    jpg = tmp_path / "ref.jpg"
    jpg.write_bytes(JPEG)
    script = Script({IMAGINE: {"json": OK}})
    async with script.client() as mj:
        job = await mj.imagine(
            "  a cat --v 6.1 ",
            images=[PNG, jpg, data_url(GIF, "image/gif"), "https://img.test/a.png"],
            bot_type="niji",
            notify_hook="https://hook.test/mj",
            state="order-1",
        )
    assert NEW_ID == job.id
    assert {
        "prompt": "a cat --v 6.1",
        "base64Array": [
            data_url(PNG),
            data_url(JPEG, "image/jpeg"),
            data_url(GIF, "image/gif"),
            "https://img.test/a.png",
        ],
        "botType": "NIJI_JOURNEY",
        "notifyHook": "https://hook.test/mj",
        "state": "order-1",
    } == script.body(IMAGINE)


async def test_imagine_minimal_body() -> None:
    """Without options only the prompt is sent (no nulls)."""
    script = Script({IMAGINE: {"json": OK}})
    async with script.client() as mj:
        await mj.imagine("cat")
    assert {"prompt": "cat"} == script.body(IMAGINE)


async def test_imagine_accepts_a_single_reference_image(tmp_path: Path) -> None:
    """images='ref.png' means one reference image, not one per character."""
    ref = tmp_path / "ref.png"
    ref.write_bytes(PNG)
    script = Script({IMAGINE: {"json": OK}})
    async with script.client() as mj:
        await mj.imagine("cat", images=str(ref))
        await mj.imagine("cat", images=PNG)
    assert [[data_url(PNG)], [data_url(PNG)]] == [b["base64Array"] for b in script.bodies(IMAGINE)]


async def test_blend_describe_shorten_modal_bodies(tmp_path: Path) -> None:
    """blend, describe, shorten and modal post their documented fields."""
    png = tmp_path / "in.png"
    png.write_bytes(PNG)
    script = Script(
        {f"POST /mj/submit/{ep}": {"json": OK} for ep in ("blend", "describe", "shorten", "modal")}
    )
    async with script.client() as mj:
        await mj.blend([PNG, str(png), WEBP], dimensions="portrait", bot_type="MID_JOURNEY")
        await mj.describe(png, state="d")
        await mj.shorten(" a very long prompt ", notify_hook="https://h.test/")
        await mj.modal(NEW_ID, prompt="cat --zoom 1.5", mask=PNG)
    assert {
        "base64Array": [data_url(PNG), data_url(PNG), data_url(WEBP, "image/webp")],
        "dimensions": "PORTRAIT",
        "botType": "MID_JOURNEY",
    } == script.body("POST /mj/submit/blend")
    assert {"base64": data_url(PNG), "state": "d"} == script.body("POST /mj/submit/describe")
    assert {"prompt": "a very long prompt", "notifyHook": "https://h.test/"} == script.body(
        "POST /mj/submit/shorten"
    )
    assert {"taskId": NEW_ID, "prompt": "cat --zoom 1.5", "maskBase64": data_url(PNG)} == (
        script.body(MODAL)
    )


async def test_modal_accepts_a_submit_result() -> None:
    """modal(result) continues the MODAL task named by a code-21 answer."""
    script = Script({MODAL: {"json": OK}})
    async with script.client() as mj:
        await mj.modal(SubmitResult(code=21, result="77"))
    assert {"taskId": "77"} == script.body(MODAL)


@pytest.mark.parametrize(
    ("label", "body"),
    [
        ("U1", {"taskId": PIG_ID, "action": "UPSCALE", "index": 1}),
        ("v4", {"taskId": PIG_ID, "action": "VARIATION", "index": 4}),
        (" R ", {"taskId": PIG_ID, "action": "REROLL"}),
        ("🔄", {"taskId": PIG_ID, "action": "REROLL"}),
    ],
)
async def test_change(label: str, body: dict[str, Any]) -> None:
    """change(task, "U1"|"V2"|"R") posts /submit/change; a Task works as the reference."""
    script = Script({"POST /mj/submit/change": {"json": OK}})
    async with script.client() as mj:
        job = await mj.change(pig(), label, state="c")
    assert {**body, "state": "c"} == script.body("POST /mj/submit/change")
    assert ("/submit/change", NEW_ID) == (job.route, job.id)


async def test_simple_change() -> None:
    """simple_change("<id> U2") posts the content, whitespace normalised."""
    script = Script({"POST /mj/submit/simple-change": {"json": OK}})
    async with script.client() as mj:
        await mj.simple_change(f"  {PIG_ID}   U2 ")
    assert {"content": f"{PIG_ID} U2"} == script.body("POST /mj/submit/simple-change")


async def test_video_edits_swap_face() -> None:
    """video, edits and swap_face post their fields (images as data URLs, URLs kept where
    the relay fetches them)."""
    script = Script(
        {
            "POST /mj/submit/video": {"json": OK},
            "POST /mj/submit/edits": {"json": OK},
            "POST /mj/insight-face/swap": {"json": OK},
        }
    )
    async with script.client() as mj:
        await mj.video(
            "a fox runs", image="https://img.test/a.png", end_image=PNG, motion="high", loop=True
        )
        await mj.video("just text")
        await mj.edits("make it blue", PNG, state="e")
        job = await mj.swap_face(PNG, JPEG)
    assert [
        {
            "prompt": "a fox runs",
            "image": "https://img.test/a.png",
            "endImage": data_url(PNG),
            "motion": "high",
            "loop": True,
        },
        {"prompt": "just text"},
    ] == script.bodies("POST /mj/submit/video")
    assert {"prompt": "make it blue", "image": data_url(PNG), "state": "e"} == script.body(
        "POST /mj/submit/edits"
    )
    assert {"sourceBase64": data_url(PNG), "targetBase64": data_url(JPEG, "image/jpeg")} == (
        script.body("POST /mj/insight-face/swap")
    )
    assert "/insight-face/swap" == job.route


async def test_upload_images_returns_urls() -> None:
    """upload-discord-images answers an array of URLs (no task is created)."""
    urls = ["https://cdn.test/a.png", "https://cdn.test/b.png"]
    script = Script(
        {"POST /mj/submit/upload-discord-images": {"json": {"code": 1, "result": urls}}}
    )
    async with script.client() as mj:
        assert urls == await mj.upload_images([PNG, JPEG])
        assert urls == await mj.upload_images(PNG)
    assert [
        {"base64Array": [data_url(PNG), data_url(JPEG, "image/jpeg")]},
        {"base64Array": [data_url(PNG)]},
    ] == script.bodies("POST /mj/submit/upload-discord-images")


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ({"json": {"code": 4, "description": "禁止上传"}}, ValidationError),
        ({"json": {"code": 1, "result": [1, 2]}}, MalformedResponseError),
        ({"json": {"code": 1}}, MalformedResponseError),
    ],
)
async def test_upload_failures(answer: dict[str, Any], error: type[Exception]) -> None:
    """A rejected upload or one without URLs is a typed error."""
    script = Script({"POST /mj/submit/upload-discord-images": answer})
    async with script.client() as mj:
        with pytest.raises(error):
            await mj.upload_images([PNG])


async def test_recent_tasks_and_cancel() -> None:
    """recent_tasks is GET /task/list; cancel is POST /task/{id}/cancel (an empty 200)."""
    script = Script(
        {
            "GET /mj/task/list": {"json": [{"id": "2", "status": "SUCCESS"}, {"id": "1"}]},
            "POST /mj/task/1/cancel": {"status": 200},
        }
    )
    async with script.client(dialect="trueai") as mj:
        assert ["2", "1"] == [t.id for t in await mj.recent_tasks()]
        assert await mj.cancel("1") is None
    assert ["GET /mj/task/list", "POST /mj/task/1/cancel"] == script.calls


@pytest.mark.parametrize(
    "answer",
    [
        {"status": 404, "json": {"code": 3, "description": "关联任务不存在或已失效"}},
        {
            "status": 400,
            "json": {"code": 4, "description": "task_no_found ", "type": "upstream_error"},
        },
    ],
)
async def test_cancel_unknown_task(answer: dict[str, Any]) -> None:
    """Cancelling an id the relay does not know is TaskNotFoundError."""
    script = Script({"POST /mj/task/9/cancel": answer})
    async with script.client() as mj:
        with pytest.raises(TaskNotFoundError):
            await mj.cancel("9")


# ---- action: resolving buttons --------------------------------------------------------------


async def test_action_label_on_a_task_needs_no_fetch() -> None:
    """action(task, 'U2') presses the task's U2 button without another request."""
    script = Script({ACTION: {"json": OK}})
    async with script.client() as mj:
        await mj.action(pig(), "U2", choose_same_channel=True, state="s")
    assert [ACTION] == script.calls
    assert {
        "taskId": PIG_ID,
        "customId": f"MJ::JOB::upsample::2::{PIG_HASH}",
        "chooseSameChannel": True,
        "state": "s",
    } == script.body(ACTION)


@pytest.mark.parametrize(
    ("ref", "label", "custom_id"),
    [
        (PIG_ID, "U2", f"MJ::JOB::upsample::2::{PIG_HASH}"),
        (PIG_ID, "🔄", f"MJ::JOB::reroll::0::{PIG_HASH}::SOLO"),
        (SubmitResult(code=1, result=PIG_ID), "v1", f"MJ::JOB::variation::1::{PIG_HASH}"),
    ],
)
async def test_action_label_on_an_id_fetches_first(ref: Any, label: str, custom_id: str) -> None:
    """With only an id, the task is fetched and the label looked up on it."""
    script = Script(
        {f"GET /mj/task/{PIG_ID}/fetch": {"json": load_fixture("task_pig")}, ACTION: {"json": OK}}
    )
    async with script.client() as mj:
        await mj.action(ref, label)
    assert [f"GET /mj/task/{PIG_ID}/fetch", ACTION] == script.calls
    body = script.body(ACTION)
    assert (PIG_ID, custom_id, False) == (
        body["taskId"],
        body["customId"],
        body["chooseSameChannel"],
    )


@pytest.mark.parametrize(
    "button",
    ["MJ::JOB::brand_new_thing::1::h::SOLO", Button(custom_id="MJ::JOB::brand_new_thing::1::h")],
)
async def test_action_raw_custom_id_or_button_is_sent_as_is(button: Any) -> None:
    """A customId (known or not) or a Button goes straight out, without a fetch."""
    expected = button if isinstance(button, str) else button.custom_id
    script = Script({ACTION: {"json": OK}})
    async with script.client() as mj:
        await mj.action("123", button)
    assert [ACTION] == script.calls
    assert expected == script.body(ACTION)["customId"]


async def test_action_unknown_label_sends_nothing() -> None:
    """A label the task lacks raises ButtonNotFoundError before any submit."""
    script = Script()
    async with script.client() as mj:
        with pytest.raises(ButtonNotFoundError, match="Vary"):
            await mj.action(pig(), "Vary (Strong)")
        with pytest.raises(InvalidInputError):
            await mj.action(pig(), "  ")
    assert [] == script.calls


async def test_action_label_on_an_unknown_id() -> None:
    """A label on an id the relay does not know: TaskNotFoundError from the fetch, no submit."""
    script = Script({"GET /mj/task/404/fetch": {"status": 200, "body": ""}})
    async with script.client() as mj:
        with pytest.raises(TaskNotFoundError):
            await mj.action("404", "U1")
    assert ["GET /mj/task/404/fetch"] == script.calls


async def test_action_openai_shaped_answer_is_an_unknown_outcome() -> None:
    """The doc's answer sample for /submit/action (an OpenAI image answer) cannot say whether
    a job was created: SubmitOutcomeUnknownError, the unreadable answer as its cause."""
    script = Script({ACTION: {"json": load_fixture("action_openai_shaped")}})
    async with script.client() as mj:
        with pytest.raises(SubmitOutcomeUnknownError, match="code, description, result") as info:
            await mj.action(PIG_ID, f"MJ::JOB::upsample::2::{PIG_HASH}")
    cause = info.value.__cause__
    assert isinstance(cause, MalformedResponseError)
    assert "/submit/action" == cause.path
    assert "created" in cause.body


# ---- input validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda mj: mj.imagine(""), "prompt"),
        (lambda mj: mj.imagine("   "), "prompt"),
        (lambda mj: mj.shorten(" "), "prompt"),
        (lambda mj: mj.blend([PNG]), "2 to 5"),
        (lambda mj: mj.blend([PNG] * 6), "2 to 5"),
        (lambda mj: mj.blend(PNG), "2 to 5"),
        (lambda mj: mj.blend([PNG, PNG], dimensions="WIDE"), "dimensions"),
        (lambda mj: mj.blend([PNG, b"GIF8"]), "PNG, JPEG"),
        (lambda mj: mj.describe(b"not an image"), "PNG, JPEG"),
        (lambda mj: mj.describe(b""), "empty"),
        (lambda mj: mj.describe("/no/such/file.png"), "cannot read"),
        (lambda mj: mj.describe("data:image/png;base64"), "data URL"),
        (lambda mj: mj.describe("data:text/plain;base64,aGk="), "data URL"),
        (lambda mj: mj.describe("data:image/png;base64,abc"), "base64"),
        (lambda mj: mj.describe("https://img.test/a.png"), "not a URL"),
        (lambda mj: mj.describe(12345), "unsupported"),
        (lambda mj: mj.imagine("x", images=[b"%PDF-1.4"]), "PNG, JPEG"),
        (lambda mj: mj.imagine("x", state="s" * 256), "state"),
        (lambda mj: mj.modal("1", mask="https://img.test/m.png"), "not a URL"),
        (lambda mj: mj.change("1", "U5"), "U1-U4"),
        (lambda mj: mj.change("1", "upscale"), "U1-U4"),
        (lambda mj: mj.simple_change("1 U9"), "simple-change"),
        (lambda mj: mj.simple_change("U1"), "simple-change"),
        (lambda mj: mj.video("x", motion="fast"), "motion"),
        (lambda mj: mj.video(" "), "prompt"),
        (lambda mj: mj.edits("x", b"nope"), "PNG, JPEG"),
        (lambda mj: mj.swap_face("https://img.test/a.png", PNG), "not a URL"),
        (lambda mj: mj.upload_images([]), "at least one"),
        (lambda mj: mj.fetch(""), "empty task id"),
        (lambda mj: mj.fetch("   "), "empty task id"),
        (lambda mj: mj.fetch(12), "task id"),
        (lambda mj: mj.wait(None), "task id"),
        (lambda mj: mj.action("1", ""), "button"),
    ],
)
async def test_bad_input_is_rejected_before_sending(
    call: Callable[[AsyncClient], Any], message: str
) -> None:
    """Bad arguments raise InvalidInputError (a ValueError) and send nothing."""
    script = Script()
    async with script.client() as mj:
        with pytest.raises(InvalidInputError, match=message) as info:
            await call(mj)
    assert [] == script.calls
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("count", [2, 5])
async def test_blend_accepts_two_to_five_images(count: int) -> None:
    """The documented bounds themselves are accepted."""
    script = Script({"POST /mj/submit/blend": {"json": OK}})
    async with script.client() as mj:
        await mj.blend([PNG] * count)
    assert count == len(script.body("POST /mj/submit/blend")["base64Array"])


async def test_oversized_image_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Images above the size cap are refused locally."""
    monkeypatch.setattr("quickmj._images.MAX_IMAGE_BYTES", 100)
    async with Script().client() as mj:
        with pytest.raises(InvalidInputError, match="larger"):
            await mj.describe(PNG + b"\x00" * 200)


# ---- submissions and job handles --------------------------------------------------------------


async def test_a_submission_is_sent_once() -> None:
    """Awaiting a Submission sends it; awaiting it again returns the same job, unsent."""
    script = Script({IMAGINE: {"json": OK}})
    async with script.client() as mj:
        submission = mj.imagine("a fox")
        assert "<Submission POST /submit/imagine not sent>" == repr(submission)
        assert [] == script.calls  # nothing happens before it is awaited
        job = await submission
        assert job is await submission
        assert job is submission.job and submission.error is None
        assert f"<Submission POST /submit/imagine job={NEW_ID}>" == repr(submission)
    assert 1 == script.count(IMAGINE)


async def test_a_failed_submission_keeps_its_error() -> None:
    """A rejected submit records its error; awaiting again raises it again, unsent."""
    script = Script({IMAGINE: {"json": {"code": 4, "description": "prompt不能为空"}}})
    async with script.client() as mj:
        submission = mj.imagine("x")
        with pytest.raises(ValidationError) as first:
            await submission
        with pytest.raises(ValidationError) as second:
            await submission
    assert first.value is second.value is submission.error
    assert submission.job is None
    assert 1 == script.count(IMAGINE)


def test_a_submission_never_awaited_warns() -> None:
    """Forgetting the await is loud: nothing was submitted, and a RuntimeWarning says so."""
    mj = AsyncClient(KEY, base_url=BASE, transport=MockTransport(Script()))
    with pytest.warns(RuntimeWarning, match="never awaited"):
        mj.imagine("a fox")
        gc.collect()


async def test_cancelling_the_caller_never_cuts_a_submit() -> None:
    """Cancelled while its submit is in flight, the caller gets CancelledError; the submit
    still runs to its answer, records the job in ``submission.job`` and is sent once."""
    arrived, release = asyncio.Event(), asyncio.Event()

    async def slow(request: Request) -> Response:
        arrived.set()
        await release.wait()
        return Response(200, json=OK)

    script = Script({IMAGINE: slow})
    async with script.client() as mj:
        submission = mj.imagine("a fox", state="paid")
        caller = asyncio.ensure_future(submission)
        await arrived.wait()
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert submission.job is None
        release.set()
        for _ in range(100):
            if submission.job is not None:
                break
            await asyncio.sleep(0.01)
        assert submission.job is not None and NEW_ID == submission.job.id
        assert submission.job is await submission
        assert "paid" == submission.job.state
    assert 1 == script.count(IMAGINE)


async def test_submission_wait_is_the_one_liner() -> None:
    """``await mj.imagine(p).wait()`` submits and waits for the finished Task."""
    relay = FakeRelay(ticks=2)
    async with make_client(relay) as mj:
        task = await mj.imagine("a fox").wait(timeout=5)
    assert (TaskStatus.SUCCESS, "1001") == (task.status, task.id)
    assert [{"route": "/submit/imagine", "prompt": "a fox"}] == relay.submits


async def test_job_handle_reports_the_relays_answer() -> None:
    """The handle: id, route, request, result, code, description, state, last."""
    queued = {
        "code": 22,
        "description": "排队中",
        "result": "7",
        "properties": {"numberOfQueues": 3},
    }
    script = Script({IMAGINE: {"json": queued}})
    async with script.client(dialect="trueai") as mj:
        job = await mj.imagine("a fox", state="mine")
    assert isinstance(job, AsyncJob)
    assert ("7", "7", "/submit/imagine", 22, "排队中", "mine") == (
        job.id,
        job.task_id,
        job.route,
        job.code,
        job.description,
        job.state,
    )
    assert (True, 3, False, None) == (job.queued, job.queue_position, job.needs_modal, job.last)
    assert "a fox" == job.request.prompt  # type: ignore[union-attr]
    assert SubmitResult(
        code=22, description="排队中", result="7", properties={"numberOfQueues": 3}
    ) == (job.result)
    assert "<AsyncJob 7 /submit/imagine>" == repr(job)


async def test_job_methods_act_on_the_job(tmp_path: Path) -> None:
    """fetch, wait, image_seed, cancel and action on the handle use its id; wait and fetch
    keep the latest state in ``last``, and action reuses it (no fetch for a label)."""
    relay = FakeRelay(ticks=2)
    relay.seeds["1001"] = "636646138"
    pig_like = {**load_fixture("task_pig"), "id": "1001"}
    async with make_client(relay) as mj:
        job = await mj.imagine("a pig")
        assert "1001" == (await job.fetch()).id and job.last is not None
        done = await job.wait(timeout=5)
        assert done is job.last and done.is_success
        assert "636646138" == await job.image_seed()
        await job.cancel()
        relay.fetch_answer = lambda task_id: Response(200, json=pig_like)
        await job.fetch()  # now with buttons
        upscale = await job.action("U2", state="u")
    assert ["1001"] == relay.cancelled
    assert {
        "route": "/submit/action",
        "taskId": "1001",
        "customId": f"MJ::JOB::upsample::2::{PIG_HASH}",
        "chooseSameChannel": False,
        "state": "u",
    } == relay.submits[-1]
    assert "1002" == upscale.id


async def test_modal_flow_through_the_handles() -> None:
    """An action answered with code 21 needs a modal: wait() says so at once, modal() sends
    it for the same id, and the stale MODAL rows new-api keeps never fail the new wait."""
    state = {"reads": 0}

    def listing(request: Request) -> Response:
        state["reads"] += 1
        rows: list[dict[str, Any]] = [{"id": "m1", "status": "MODAL", "action": "CUSTOM_ZOOM"}]
        if state["reads"] >= 3:
            rows.append({"id": "m1", "status": "IN_PROGRESS", "progress": "46%", "action": "MODAL"})
        if state["reads"] >= 5:
            rows = [{"id": "m1", "status": "SUCCESS", "progress": "100%"}, rows[0]]
        return Response(200, json=rows)

    script = Script(
        {
            ACTION: {
                "json": {"code": 21, "description": "Waiting for window confirm", "result": "m1"}
            },
            MODAL: {"json": {"code": 1, "result": "m1"}},
            LIST: listing,
        }
    )
    policy = PollPolicy(interval=0.01, first_poll=0.005, modal_timeout=0, adaptive=False)
    async with script.client(poll=policy) as mj:
        zoom = await mj.action(pig(), "MJ::CustomZoom::h")
        assert zoom.needs_modal and "needs_modal" in repr(zoom)
        with pytest.raises(TaskNeedsModalError) as info:
            await zoom.wait()
        assert "m1" == info.value.task_id
        confirmed = await zoom.modal(prompt="pig --zoom 1.5")
        assert "m1" == confirmed.id and not confirmed.needs_modal
        task = await confirmed.wait(timeout=5)
    assert TaskStatus.SUCCESS == task.status
    assert {"taskId": "m1", "prompt": "pig --zoom 1.5"} == script.body(MODAL)


async def test_wait_takes_ids_tasks_handles_and_results() -> None:
    """wait, watch, as_completed and fetch_many accept ids, Tasks, job handles and
    SubmitResults alike."""
    relay = FakeRelay(ticks=1)
    async with make_client(relay) as mj:
        job = await mj.imagine("x")
        refs: list[Any] = ["a", Task(id="b"), job, SubmitResult(code=1, result="c")]
        waited = [(await mj.wait(r)).id for r in refs]
        watched = []
        for r in refs:
            states = [t async for t in mj.watch(r)]
            watched.append(states[-1].id)
        completed = sorted([t.id async for t in mj.as_completed(refs)])
        fetched = [t.id for t in await mj.fetch_many(refs)]
    assert ["a", "b", "1001", "c"] == waited == watched == fetched
    assert ["1001", "a", "b", "c"] == completed


async def test_a_timed_out_wait_names_the_job() -> None:
    """TaskTimeoutError names the job's id and its last state; the job can be waited on
    again later."""
    relay = FakeRelay(ticks=10_000)
    async with make_client(relay) as mj:
        job = await mj.imagine("slow")
        with pytest.raises(TaskTimeoutError) as info:
            await job.wait(timeout=0.1)
        assert (job.id, 0.1) == (info.value.task_id, info.value.timeout)
        assert info.value.last_task is not None and job.id == info.value.last_task.id
        relay.ticks = 1
        assert TaskStatus.SUCCESS == (await job.wait(timeout=5)).status


async def test_a_cancelled_wait_keeps_the_id_in_a_note(caplog: pytest.LogCaptureFixture) -> None:
    """Cancelling a wait (a timeout around it, Ctrl-C) leaves a note naming the job on the
    exception, and the same line in the log (INFO): the paid job is never anonymous."""
    caplog.set_level(logging.INFO, logger="quickmj")
    relay = FakeRelay(ticks=10_000)
    async with make_client(relay) as mj:
        job = await mj.imagine("slow")
        with pytest.raises(TimeoutError) as info:
            await asyncio.wait_for(job.wait(), 0.1)
    notes = "".join(getattr(info.value.__context__, "__notes__", []))
    notes += "".join(getattr(info.value, "__notes__", []))
    assert f"task {job.id} keeps running" in notes
    assert any(f"task {job.id} keeps running" in r.getMessage() for r in caplog.records)


# ---- fetch ----------------------------------------------------------------------------------


async def test_fetch_returns_the_task() -> None:
    """fetch parses the relay's task sample; a Task or SubmitResult works as the reference."""
    script = Script({f"GET /mj/task/{PIG_ID}/fetch": {"json": load_fixture("task_pig")}})
    async with script.client() as mj:
        by_id = await mj.fetch(PIG_ID)
        by_task = await mj.fetch(by_id)
        by_result = await mj.fetch(SubmitResult(code=1, result=PIG_ID))
    assert by_id == by_task == by_result
    assert PIG_ID == by_id.id


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, ""),
        (200, "  \n"),
        (204, ""),
        (200, "null"),
        (200, json.dumps({"code": 4, "description": "task_no_found"})),
        (400, json.dumps({"code": 4, "description": "task_no_found ", "type": "upstream_error"})),
        (400, json.dumps({"error": {"message": "task_no_found", "type": "new_api_error"}})),
        (404, json.dumps({"code": 3, "description": "关联任务不存在或已失效"})),
    ],
)
async def test_fetch_unknown_id(status: int, body: str) -> None:
    """Every dialect's 'unknown id' is TaskNotFoundError naming the id, asked for once."""
    script = Script({"GET /mj/task/42/fetch": {"status": status, "body": body}})
    async with script.client() as mj:
        with pytest.raises(TaskNotFoundError) as info:
            await mj.fetch("42")
    assert 1 == len(script.calls)  # "not found" is an answer, not retried
    assert ("42", ("42",)) == (info.value.task_id, info.value.task_ids)
    assert isinstance(info.value, LookupError)


async def test_fetch_relay_error_body_is_not_not_found() -> None:
    """A relay error answer on fetch (code 5, upstream down) is raised, not 'not found'."""
    script = Script(
        {"GET /mj/task/42/fetch": {"json": {"code": 5, "description": "upstream error"}}}
    )
    async with script.client() as mj:
        with pytest.raises(SubmitRejectedError) as info:
            await mj.fetch("42")
    assert not isinstance(info.value, TaskNotFoundError)
    assert (5, "upstream error") == (info.value.code, info.value.description)


async def test_fetch_other_validation_error_is_kept() -> None:
    """A 400 code 4 that is not about a missing task stays a ValidationError."""
    script = Script(
        {
            "GET /mj/task/42/fetch": {
                "status": 400,
                "json": {"code": 4, "description": "quota_not_enough"},
            }
        }
    )
    async with script.client() as mj:
        with pytest.raises(ValidationError, match="quota_not_enough"):
            await mj.fetch("42")


async def test_fetch_refuses_another_tasks_answer() -> None:
    """An answer for another id (a confused or hostile relay) is MalformedResponseError."""
    script = Script({"GET /mj/task/42/fetch": {"json": {"id": "1337", "status": "SUCCESS"}}})
    async with script.client() as mj:
        with pytest.raises(MalformedResponseError, match=r"'42'.*'1337'"):
            await mj.fetch("42")


@pytest.mark.parametrize(
    ("dialect", "rereads"), [("quickrouter", True), ("auto", True), ("trueai", False)]
)
async def test_fetch_rereads_a_stale_modal_row(dialect: Any, rereads: bool) -> None:
    """new-api's fetch answers the stale MODAL row of a task that went through a modal; on
    quickrouter/auto a MODAL answer is read again through list-by-condition, which has the
    running row too. TrueAI's fetch is trusted as it is."""
    script = Script(
        {
            "GET /mj/task/m/fetch": {"json": {"id": "m", "status": "MODAL"}},
            LIST: {
                "json": [
                    {"id": "m", "status": "MODAL", "action": "CUSTOM_ZOOM"},
                    {"id": "m", "status": "IN_PROGRESS", "progress": "46%", "action": "MODAL"},
                ]
            },
        }
    )
    async with script.client(dialect=dialect) as mj:
        task = await mj.fetch("m")
    expected = TaskStatus.IN_PROGRESS if rereads else TaskStatus.MODAL
    assert expected == task.status
    assert rereads == (LIST in script.calls)


@pytest.mark.parametrize("body", ["[]", '"SUCCESS"', '{"id": {"x": 1}}', '{"status": "SUCCESS"}'])
async def test_fetch_wrong_shapes_are_malformed(body: str) -> None:
    """A list, a bare string or a broken task on fetch is MalformedResponseError."""
    script = Script({"GET /mj/task/42/fetch": {"body": body}})
    async with script.client() as mj:
        with pytest.raises(MalformedResponseError):
            await mj.fetch("42")


# ---- fetch_many / list_tasks ----------------------------------------------------------------


def listing(known: set[str], log: list[list[str]], truncate: int | None = None) -> Any:
    """A list-by-condition handler: known ids, reversed, optionally truncated."""

    def handler(request: Request) -> Response:
        ids = request.json()["ids"]
        log.append(list(ids))
        found = [{"id": i, "status": "SUCCESS"} for i in ids if i in known][::-1]
        return Response(200, json=found[:truncate] if truncate else found)

    return handler


async def test_fetch_many_keeps_input_order_and_duplicates() -> None:
    """Results come back in input order, duplicates repeated, each id asked for once."""
    log: list[list[str]] = []
    script = Script({LIST: listing({"a", "b", "c"}, log)})
    async with script.client() as mj:
        tasks = await mj.fetch_many(["c", "a", "c", "b", "a"])
    assert ["c", "a", "c", "b", "a"] == [t.id for t in tasks]
    assert [["c", "a", "b"]] == log


@pytest.mark.parametrize(("ids", "requests"), [(5, 3), (4, 2), (1, 1)])
async def test_fetch_many_chunks(ids: int, requests: int) -> None:
    """list_chunk_size=2 asks for at most 2 ids a request: ceil(n / 2) requests."""
    log: list[list[str]] = []
    wanted = [f"t{i}" for i in range(ids)]
    script = Script({LIST: listing(set(wanted), log)})
    async with script.client(list_chunk_size=2) as mj:
        tasks = await mj.fetch_many(wanted)
    assert wanted == [t.id for t in tasks]
    assert requests == len(log)
    assert sorted(wanted) == sorted(i for chunk in log for i in chunk)
    assert all(len(chunk) <= 2 for chunk in log)


async def test_fetch_many_reasks_after_a_truncated_answer() -> None:
    """Ids a truncated answer left out are asked for again until all are found."""
    log: list[list[str]] = []
    script = Script({LIST: listing({"a", "b", "c"}, log, truncate=2)})
    async with script.client() as mj:
        tasks = await mj.fetch_many(["a", "b", "c"])
    assert ["a", "b", "c"] == [t.id for t in tasks]
    assert [["a", "b", "c"], ["a"]] == log


async def test_fetch_many_reports_truly_missing_ids() -> None:
    """Unknown ids raise TaskNotFoundError with task_ids and the tasks that were found."""
    log: list[list[str]] = []
    script = Script({LIST: listing({"a", "c"}, log)})
    async with script.client() as mj:
        with pytest.raises(TaskNotFoundError) as info:
            await mj.fetch_many(["c", "ghost", "a", "ghost2", "c"])
    assert ("ghost", "ghost2") == info.value.task_ids
    assert ["c", "a", "c"] == [t.id for t in info.value.found]
    assert [["c", "ghost", "a", "ghost2"], ["ghost", "ghost2"]] == log


async def test_fetch_many_ignores_ids_not_asked_for() -> None:
    """A relay that returns extra tasks does not confuse the result."""
    script = Script({LIST: {"json": [{"id": "zzz"}, {"id": "a"}]}})
    async with script.client() as mj:
        assert ["a"] == [t.id for t in await mj.fetch_many(["a"])]


async def test_duplicate_rows_are_merged() -> None:
    """new-api answers two rows for a task after a modal: the one that got furthest wins
    (terminal > running > queued > MODAL, then progress), in list_tasks and fetch_many;
    garbled rows (a list for a status, '¹%' for progress) lose, and never crash the merge."""
    rows = [
        {"id": "m", "status": "MODAL", "action": "CUSTOM_ZOOM"},
        {"id": "m", "status": "IN_PROGRESS", "progress": "46%"},
        {"id": "m", "status": "IN_PROGRESS", "progress": "31%"},
        {"id": "d", "status": "SUCCESS", "progress": "100%"},
        {"id": "d", "status": "IN_PROGRESS", "progress": "93%"},
        {"id": "g", "status": ["not", "a", "status"]},
        {"id": "g", "status": "SUBMITTED"},
        {"id": "p", "status": "IN_PROGRESS", "progress": "¹%"},
        {"id": "p", "status": "IN_PROGRESS", "progress": "15%"},
    ]
    script = Script({LIST: {"json": rows}})
    async with script.client() as mj:
        listed = {t.id: (t.status, t.progress) for t in await mj.list_tasks(["m", "d", "g", "p"])}
        many = await mj.fetch_many(["m", "d"])
    assert {
        "m": (TaskStatus.IN_PROGRESS, "46%"),
        "d": (TaskStatus.SUCCESS, "100%"),
        "g": (TaskStatus.SUBMITTED, None),
        "p": (TaskStatus.IN_PROGRESS, "15%"),
    } == listed
    assert [(TaskStatus.IN_PROGRESS, "46%"), (TaskStatus.SUCCESS, "100%")] == [
        (t.status, t.progress) for t in many
    ]


async def test_fetch_many_of_nothing_sends_nothing() -> None:
    """No ids: no request, an empty list."""
    script = Script()
    async with script.client() as mj:
        assert [] == await mj.fetch_many([])
        assert [] == await mj.list_tasks([])
    assert [] == script.calls


@pytest.mark.parametrize("body", ["[]", "null", ""])
async def test_list_tasks_empty_answers(body: str) -> None:
    """list-by-condition answering [], null or nothing means no tasks."""
    script = Script({LIST: {"body": body}})
    async with script.client() as mj:
        assert [] == await mj.list_tasks(["1"])
    assert {"ids": ["1"]} == script.body(LIST)


async def test_list_tasks_object_answer_is_malformed() -> None:
    """A single task object where an array belongs (the doc sample) is refused."""
    script = Script({LIST: {"json": load_fixture("task_pig")}})
    async with script.client() as mj:
        with pytest.raises(MalformedResponseError, match="array"):
            await mj.list_tasks([PIG_ID])


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [(503, "down", ServerError), (200, "{oops", MalformedResponseError)],
)
async def test_fetch_many_raises_plain_errors(
    status: int, body: str, error: type[Exception]
) -> None:
    """A failing list-by-condition surfaces as its own error type (no ExceptionGroup)."""
    script = Script({LIST: {"status": status, "body": body}})
    async with script.client(retry=RetryPolicy(max_attempts=1), list_chunk_size=1) as mj:
        with pytest.raises(error):
            await mj.fetch_many(["1", "2"])


# ---- image-seed -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", ["636646138", 636646138])
async def test_image_seed(seed: Any) -> None:
    """Code 1 gives the seed as a string (a numeric seed too)."""
    script = Script(
        {"GET /mj/task/1/image-seed": {"json": {"code": 1, "description": "成功", "result": seed}}}
    )
    async with script.client() as mj:
        assert "636646138" == await mj.image_seed("1")


@pytest.mark.parametrize(
    "answer",
    [
        {"status": 404, "json": {"code": 3, "description": "关联任务不存在或已失效"}},
        {
            "status": 400,
            "json": {"code": 4, "description": "task_no_found ", "type": "upstream_error"},
        },
    ],
)
async def test_image_seed_unknown_task(answer: dict[str, Any]) -> None:
    """TrueAI's 404 code 3 and new-api's 400 code 4 "task_no_found " are TaskNotFoundError."""
    script = Script({"GET /mj/task/2/image-seed": answer})
    async with script.client() as mj:
        with pytest.raises(TaskNotFoundError) as info:
            await mj.image_seed("2")
    assert "2" == info.value.task_id
    assert 1 == len(script.calls)


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (200, json.dumps(load_fixture("task_pig")), MalformedResponseError),
        (200, "", MalformedResponseError),
        (200, json.dumps({"code": 1, "description": "成功"}), MalformedResponseError),
        (200, json.dumps({"code": 3, "description": "未找到 seed"}), RelatedTaskNotFoundError),
        (400, json.dumps({"code": 4, "description": "关联任务状态错误"}), ValidationError),
    ],
)
async def test_image_seed_failures(status: int, body: str, error: type[Exception]) -> None:
    """A Task-shaped answer (the doc's copy error), no seed, "no seed found" or a code 4 are
    errors of their own (not 'task not found')."""
    script = Script({"GET /mj/task/3/image-seed": {"status": status, "body": body}})
    async with script.client() as mj:
        with pytest.raises(error) as info:
            await mj.image_seed("3")
    assert not isinstance(info.value, TaskNotFoundError)


# ---- downloads (real local servers: two origins) --------------------------------------------


def image_app(seen: list[tuple[str, str | None]], *, cut_first: bool = False) -> web.Application:
    """Serves /img/<name> (PNG); ?redirect=<url>, ?loop, ?cut, ?status=<n> bend the answer."""
    cuts = {"left": 1 if cut_first else 0}

    async def image(request: web.Request) -> web.StreamResponse:
        seen.append(
            (f"{request.url.host}:{request.url.port}", request.headers.get("Authorization"))
        )
        if "redirect" in request.query:
            raise web.HTTPFound(request.query["redirect"])
        if "loop" in request.query:
            raise web.HTTPFound(str(request.rel_url))
        if "status" in request.query:
            return web.Response(status=int(request.query["status"]), text="gone")
        if "cut" in request.query or cuts["left"]:
            cuts["left"] = max(0, cuts["left"] - 1)
            resp = web.StreamResponse(headers={"Content-Type": "image/png"})
            resp.content_length = 100_000
            await resp.prepare(request)
            await resp.write(PNG[:10])
            assert request.transport is not None
            request.transport.close()
            return resp
        mime = "image/jpeg" if request.match_info["name"].endswith(".jpg") else "image/png"
        return web.Response(body=PNG, content_type=mime)

    async def fetch(request: web.Request) -> web.Response:
        task_id = request.match_info["id"]
        origin = f"http://{request.host}"
        return web.json_response(
            {
                "id": task_id,
                "imageUrl": f"{origin}/img/{task_id}.png",
                "imageUrls": [f"{origin}/img/{task_id}-1.jpg", f"{origin}/img/{task_id}-2.png"],
            }
        )

    app = web.Application()
    app.router.add_get("/img/{name}", image)
    app.router.add_get("/mj/task/{id}/fetch", fetch)
    return app


def files(directory: Path) -> list[str]:
    """The names in ``directory``, sorted."""
    return sorted(p.name for p in directory.iterdir())


def leftovers(directory: Path) -> list[str]:
    return [name for name in files(directory) if name.endswith(".part")]


async def test_download_streams_to_a_file_named_after_the_task(
    serve: Serve, tmp_path: Path
) -> None:
    """The image lands in dest/<id>.<ext>, the extension from the Content-Type, with the
    mode a plain open() would give it."""
    seen: list[tuple[str, str | None]] = []
    relay = await serve(image_app(seen))
    async with client(base_url=relay) as mj:
        png = await mj.download(
            Task(id="1730", image_url=f"{relay}/img/a.webp?ex=1&hm=2"), tmp_path
        )
        jpg = await mj.download(Task(id="1731", image_url=f"{relay}/img/b.jpg"), tmp_path / "sub")
        named = await mj.download(
            Task(id="1732", image_url=f"{relay}/img/c.png"), tmp_path, filename="../my cat"
        )
    assert tmp_path / "1730.png" == png
    assert tmp_path / "sub" / "1731.png" == jpg  # PNG bytes labelled image/jpeg: the bytes
    assert tmp_path / "my_cat.png" == named
    assert PNG == png.read_bytes() == jpg.read_bytes()
    assert [] == leftovers(tmp_path) == leftovers(tmp_path / "sub")
    umask = os.umask(0)
    os.umask(umask)
    assert 0o666 & ~umask == png.stat().st_mode & 0o777


async def test_download_by_id_fetches_the_task_first(serve: Serve, tmp_path: Path) -> None:
    """download('id') fetches the task, then saves its imageUrl (or one of imageUrls)."""
    relay = await serve(image_app([]))
    async with client(base_url=relay) as mj:
        path = await mj.download("999", tmp_path)
        second = await mj.download("999", tmp_path, index=2)
        first = await mj.download("999", tmp_path, index=1, filename="one")
    assert tmp_path / "999.png" == path
    assert tmp_path / "999-2.png" == second
    assert tmp_path / "one.png" == first  # labelled image/jpeg, PNG bytes
    assert PNG == path.read_bytes()


async def test_job_download(serve: Serve, tmp_path: Path) -> None:
    """AsyncJob.download saves the job's image: fetched first, or from the last state the
    handle saw (then without another fetch)."""
    submitted: list[str] = []

    async def submit(request: web.Request) -> web.Response:
        submitted.append(request.path)
        return web.json_response({"code": 1, "result": str(555 + len(submitted))})

    app = image_app([])
    app.router.add_post("/mj/submit/imagine", submit)
    relay = await serve(app)
    sent: list[str] = []

    async def on_start(session: Any, context: Any, params: Any) -> None:
        sent.append(f"{params.method} {params.url.path}")

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    async with client(base_url=relay, trace_configs=[trace]) as mj:
        fresh = await mj.imagine("x")
        path = await fresh.download(tmp_path)
        known = await mj.imagine("y")
        await known.fetch()
        sent.clear()
        named = await known.download(tmp_path, filename="y")
    assert tmp_path / "556.png" == path
    assert tmp_path / "y.png" == named
    assert ["GET /img/557.png"] == sent  # the image only: the handle knew the task


@pytest.mark.parametrize(
    ("task_id", "name"),
    [
        ("../../etc/passwd", "etc_passwd.png"),
        ("a/b\\c", "a_b_c.png"),
        ("..", "task.png"),
        (".hidden", "hidden.png"),
    ],
)
async def test_download_names_cannot_escape(
    serve: Serve, tmp_path: Path, task_id: str, name: str
) -> None:
    """Ids with separators or dots are sanitised and stay inside dest."""
    relay = await serve(image_app([]))
    async with client(base_url=relay) as mj:
        path = await mj.download(Task(id=task_id, image_url=f"{relay}/img/x.png"), tmp_path)
    assert tmp_path / name == path
    assert [name] == files(tmp_path)


async def test_failed_download_leaves_no_file(serve: Serve, tmp_path: Path) -> None:
    """A cut-off, refused or oversized download leaves neither the image nor a .part."""
    relay = await serve(image_app([]))
    async with client(base_url=relay, retry=RetryPolicy(max_attempts=1)) as mj:
        with pytest.raises(TransportError):
            await mj.download(Task(id="cut", image_url=f"{relay}/img/b.png?cut=1"), tmp_path)
        with pytest.raises(DownloadError, match="not there"):  # a missing file, not a route
            await download_url(mj._relay, f"{relay}/img/b.png?status=404", tmp_path, "gone")
        with pytest.raises(DownloadError, match="larger"):
            await download_url(mj._relay, f"{relay}/img/c.png", tmp_path, "big", max_bytes=8)
    assert [] == files(tmp_path)


async def test_full_disk_is_a_storage_error(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that refuses the file is StorageError naming the path (not a transport error),
    and nothing is left behind."""
    relay = await serve(image_app([]))

    def full(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("quickmj._files.os.replace", full)
    async with client(base_url=relay) as mj:
        with pytest.raises(StorageError, match="no space left") as info:
            await mj.download(Task(id="d", image_url=f"{relay}/img/d.png"), tmp_path)
    assert errno.ENOSPC == info.value.errno and str(tmp_path) in info.value.path
    assert [] == files(tmp_path)


async def test_download_retries_a_cut_transfer_from_scratch(serve: Serve, tmp_path: Path) -> None:
    """A transfer cut once is retried, and the file holds exactly one full copy."""
    seen: list[tuple[str, str | None]] = []
    relay = await serve(image_app(seen, cut_first=True))
    async with client(base_url=relay) as mj:
        path = await mj.download(Task(id="r", image_url=f"{relay}/img/r.png"), tmp_path)
    assert 2 == len(seen)
    assert PNG == path.read_bytes()
    assert ["r.png"] == files(tmp_path)


async def test_refused_image_is_not_blamed_on_the_key(serve: Serve, tmp_path: Path) -> None:
    """403 from another host (an expired signed link) is not an AuthenticationError, nor
    is a 403 from the relay's origin (new-api's keyless /mj/image/{id} forwards the CDN's
    403); a 401 from the relay itself, which did get the key, is."""
    relay = await serve(image_app([]), "127.0.0.1")
    cdn = await serve(image_app([]), "localhost")
    async with client(base_url=relay) as mj:
        for url in (f"{cdn}/img/c.png?status=403", f"{relay}/img/r.png?status=403"):
            with pytest.raises(ImageExpiredError, match="expired") as refused:
                await download_url(mj._relay, url, tmp_path, "x")
            assert not isinstance(refused.value, AuthenticationError)
            assert 403 == refused.value.status
        with pytest.raises(AuthenticationError):
            await download_url(mj._relay, f"{relay}/img/r.png?status=401", tmp_path, "x")
    assert [] == files(tmp_path)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "javascript:alert(1)",
        "ftp://relay.test/x.png",
        "data:image/png;base64,AAAA",
        "http://user:pw@relay.test/x.png",
        "/mj/image/1",
        "http://relay.test:99999/x.png",
        "http://relay.test:port/x.png",
        "http://[::1/x.png",
        "http:///x.png",
        "https://relay.test/\udc80.png",
    ],
)
async def test_unsafe_image_urls_are_refused(tmp_path: Path, url: str) -> None:
    """Only plain, well-formed http(s) URLs are fetched; nothing is written for the others."""
    script = Script()
    async with script.client() as mj:
        with pytest.raises(UnsafeURLError):
            await mj.download(Task(id="u", image_url=url), tmp_path)
    assert [] == script.calls
    assert [] == files(tmp_path)


async def test_download_redirects_are_checked_and_bounded(serve: Serve, tmp_path: Path) -> None:
    """A redirect to a file: URL is refused; a redirect loop ends with DownloadError."""
    relay = await serve(image_app([]))
    async with client(base_url=relay) as mj:
        with pytest.raises(UnsafeURLError):
            await mj.download(
                Task(id="f", image_url=f"{relay}/img/x.png?redirect=file:///etc/passwd"), tmp_path
            )
        with pytest.raises(DownloadError, match="too many redirects"):
            await mj.download(Task(id="l", image_url=f"{relay}/img/l.png?loop=1"), tmp_path)
    assert [] == files(tmp_path)


async def test_download_without_an_image(tmp_path: Path) -> None:
    """A task without imageUrl, or an index past image_urls, is a clear error."""
    async with Script().client() as mj:
        with pytest.raises(DownloadError, match="no image"):
            await mj.download(Task(id="1", status=TaskStatus.IN_PROGRESS), tmp_path)
        with pytest.raises(InvalidInputError, match="index"):
            await mj.download(Task(id="1", image_url="http://relay.test/a.png"), tmp_path, index=1)


async def test_download_auth_only_to_the_relays_origin(serve: Serve, tmp_path: Path) -> None:
    """The key goes to the relay's origin; never to another host, nor after a redirect to one."""
    seen: list[tuple[str, str | None]] = []
    relay = await serve(image_app(seen), "127.0.0.1")
    cdn = await serve(image_app(seen), "localhost")
    other_port = await serve(image_app(seen), "127.0.0.1")
    async with client(base_url=relay) as mj:
        for i, url in enumerate(
            [
                f"{relay}/img/a.png",
                f"{cdn}/img/b.png",
                f"{other_port}/img/c.png",
                f"{relay}/img/d.png?redirect={cdn}/img/e.png",
                f"{cdn}/img/f.png?redirect={relay}/img/g.png",
            ]
        ):
            await mj.download(Task(id=f"t{i}", image_url=url), tmp_path)
    bearer = f"Bearer {KEY}"
    assert [bearer, None, None, bearer, None, None, bearer] == [auth for _, auth in seen]
    assert [f"t{i}.png" for i in range(5)] == files(tmp_path)


# ---- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    """No usable key anywhere: ConfigurationError naming QUICKMJ_API_KEY."""
    monkeypatch.delenv("QUICKMJ_API_KEY", raising=False)
    if value is not None:
        monkeypatch.setenv("QUICKMJ_API_KEY", value)
    with pytest.raises(ConfigurationError, match="QUICKMJ_API_KEY"):
        AsyncClient()


async def test_environment_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """Key, base URL and mode come from the environment and reach the wire."""
    monkeypatch.setenv("QUICKMJ_API_KEY", "sk-from-env")
    monkeypatch.setenv("QUICKMJ_BASE_URL", "http://env-relay.test/")
    monkeypatch.setenv("QUICKMJ_MODE", "RELAX")
    script = Script({"GET /mj-relax/mj/task/1/fetch": {"json": {"id": "1"}}})
    async with AsyncClient(transport=script.transport()) as mj:
        assert ("http://env-relay.test", "relax") == (mj.base_url, mj.mode)
        await mj.fetch("1")
    (request,) = script.requests
    assert "http://env-relay.test/mj-relax/mj/task/1/fetch" == request.url
    assert "Bearer sk-from-env" == request.headers["Authorization"]


def test_arguments_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Explicit arguments win over QUICKMJ_* variables."""
    monkeypatch.setenv("QUICKMJ_BASE_URL", "http://env-relay.test")
    monkeypatch.setenv("QUICKMJ_MODE", "relax")
    mj = AsyncClient("k", base_url="https://arg.test", mode="fast")
    assert ("https://arg.test", "fast") == (mj.base_url, mj.mode)


def test_default_base_url_and_dialect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without configuration the client talks to QuickRouter (its dialect, bearer auth) in
    the key's default mode; any other host is 'auto'."""
    monkeypatch.delenv("QUICKMJ_BASE_URL", raising=False)
    monkeypatch.delenv("QUICKMJ_MODE", raising=False)
    mj = AsyncClient("k")
    assert ("https://api.quickrouter.ai", None, "quickrouter") == (mj.base_url, mj.mode, mj.dialect)
    assert "quickrouter" == AsyncClient("k", base_url="https://eu.api.quickrouter.ai").dialect
    assert "auto" == AsyncClient("k", base_url="https://relay.example").dialect
    assert "trueai" == AsyncClient("k", base_url="https://relay.example", dialect="trueai").dialect


def test_client_properties() -> None:
    """The configuration is readable back; the poller is created on first use."""
    timeouts, retry, poll = Timeouts(read=5), RetryPolicy(max_attempts=2), PollPolicy(interval=3)
    mj = AsyncClient("k", base_url=BASE, timeouts=timeouts, retry=retry, poll=poll, mode="turbo")
    assert (BASE, "turbo", "auto", retry, timeouts, poll, False) == (
        mj.base_url,
        mj.mode,
        mj.dialect,
        mj.retry,
        mj.timeouts,
        mj.poll_policy,
        mj.is_closed,
    )
    assert mj.poller is mj.poller and poll == mj.poller.policy
    assert (Timeouts(), RetryPolicy(), PollPolicy()) == (
        AsyncClient("k").timeouts,
        AsyncClient("k").retry,
        AsyncClient("k").poll_policy,
    )


@pytest.mark.parametrize(
    "base_url",
    ["http://relay.test/mj", "http://relay.test/mj/", "http://relay.test/", " http://relay.test "],
)
async def test_base_url_forms_are_accepted(base_url: str) -> None:
    """A base URL copied with /mj (or a slash) still reaches /mj/... once."""
    script = Script({"GET /mj/task/1/fetch": {"json": {"id": "1"}}})
    async with script.client(base_url=base_url) as mj:
        await mj.fetch("1")
    assert [f"{BASE}/mj/task/1/fetch"] == [r.url for r in script.requests]


async def test_base_url_with_a_path_prefix() -> None:
    """A relay mounted under a path keeps it: <base>/<path>/mj-fast/mj/..."""
    script = Script({"GET /proxy/v1/mj-fast/mj/task/1/fetch": {"json": {"id": "1"}}})
    async with script.client(base_url=f"{BASE}/proxy/v1/", mode="fast") as mj:
        await mj.fetch("1")
    assert ["GET /proxy/v1/mj-fast/mj/task/1/fetch"] == script.calls


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "ludicrous"}, "ludicrous"),
        ({"auth_scheme": "basic"}, "auth_scheme"),
        ({"dialect": "openai"}, "dialect"),
        ({"base_url": "relay.test"}, "http"),
        ({"base_url": "ftp://relay.test"}, "http"),
        ({"base_url": "http://relay.test?key=1"}, "query"),
        ({"base_url": "http://relay.test/#frag"}, "fragment"),
        ({"base_url": "http://relay.test:99999"}, "port"),
        ({"base_url": "http://relay.test:abc"}, "port"),
        ({"base_url": "http://[::1"}, "valid URL"),
    ],
)
def test_bad_configuration(kwargs: dict[str, Any], message: str) -> None:
    """A bad mode, auth scheme, dialect or base URL is a ConfigurationError that says what
    was wrong."""
    with pytest.raises(ConfigurationError, match=message):
        AsyncClient("k", **kwargs)


def test_credentials_in_the_base_url_are_refused_unrepeated() -> None:
    """user:password@ in base_url is refused, and the message never repeats them."""
    with pytest.raises(ConfigurationError, match="credentials") as info:
        AsyncClient("k", base_url="https://admin:hunter2-secret@relay.test")
    assert "hunter2-secret" not in str(info.value) and "admin" not in str(info.value)


def test_bad_mode_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """QUICKMJ_MODE is validated too, and the message shows its value."""
    monkeypatch.setenv("QUICKMJ_MODE", "warp")
    with pytest.raises(ConfigurationError, match="warp"):
        AsyncClient("k")


@pytest.mark.parametrize(
    "kwargs", [{"max_attempts": 0}, {"backoff": -1}, {"max_backoff": -1}, {"jitter": 2}]
)
def test_bad_retry_policy(kwargs: dict[str, Any]) -> None:
    """Nonsense retry settings are refused up front."""
    with pytest.raises(ConfigurationError):
        RetryPolicy(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{"connect": 0}, {"read": -1}, {"request": 0}, {"image_seed": 0}, {"download_total": -5}],
)
def test_bad_timeouts(kwargs: dict[str, Any]) -> None:
    """Timeouts must be positive."""
    with pytest.raises(ConfigurationError, match=next(iter(kwargs))):
        Timeouts(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{"batch_size": 0}, {"miss_limit": 0}, {"interval": -1}, {"max_concurrent_batches": 0}],
)
def test_bad_poll_policy(kwargs: dict[str, Any]) -> None:
    """Nonsense poll settings are refused up front."""
    with pytest.raises(ConfigurationError):
        PollPolicy(**kwargs)


@pytest.mark.parametrize("kwargs", [{"list_chunk_size": 0}, {"max_connections": 0}])
def test_bad_sizes(kwargs: dict[str, Any]) -> None:
    """Pool and chunk sizes must be positive."""
    with pytest.raises(InvalidInputError):
        AsyncClient("k", **kwargs)


# ---- lifecycle ------------------------------------------------------------------------------


async def test_async_with_closes_the_transport() -> None:
    """Leaving ``async with`` closes the transport."""
    transport = MockTransport(Script({"GET /mj/task/1/fetch": {"json": {"id": "1"}}}))
    async with AsyncClient(KEY, base_url=BASE, transport=transport) as mj:
        await mj.fetch("1")
        assert not transport.closed
    assert transport.closed
    assert mj.is_closed


async def test_calls_after_close_fail(tmp_path: Path) -> None:
    """Every call on a closed client raises ClientClosedError and sends nothing."""
    script = Script()
    async with script.client() as mj:
        pass
    calls: list[Callable[[], Any]] = [
        lambda: mj.fetch("1"),
        lambda: mj.imagine("x"),
        lambda: mj.change("1", "U1"),
        lambda: mj.list_tasks(["1", "2"]),
        lambda: mj.fetch_many(["1", "2"]),
        lambda: mj.recent_tasks(),
        lambda: mj.image_seed("1"),
        lambda: mj.cancel("1"),
        lambda: mj.upload_images(PNG),
        lambda: mj.action("1", "MJ::JOB::upsample::1::h"),
        lambda: mj.wait("1"),
        lambda: mj.download(Task(id="1", image_url=f"{BASE}/a.png"), tmp_path),
    ]
    for call in calls:
        with pytest.raises(ClientClosedError):
            await call()
    with pytest.raises(ClientClosedError):
        mj.as_completed(["1"])
    with pytest.raises(ClientClosedError):
        mj.poller  # noqa: B018 - the property raises
    assert [] == script.calls
    assert [] == files(tmp_path)


async def test_aclose_is_idempotent_and_reopen_fails() -> None:
    """aclose twice is fine; a closed client cannot be re-entered."""
    mj = Script().client()
    await mj.aclose()
    await mj.aclose()
    assert mj.is_closed
    with pytest.raises(UsageError, match="reopen"):
        async with mj:
            pass


async def test_client_works_without_async_with() -> None:
    """Nothing needs entering; aclose() releases the transport."""
    transport = MockTransport(Script({"GET /mj/task/1/fetch": {"json": {"id": "1"}}}))
    mj = AsyncClient(KEY, base_url=BASE, transport=transport)
    try:
        assert "1" == (await mj.fetch("1")).id
    finally:
        await mj.aclose()
    assert transport.closed


async def test_closed_error_is_a_usage_error() -> None:
    """ClientClosedError can be caught as UsageError (and RuntimeError)."""
    mj = Script().client()
    await mj.aclose()
    with pytest.raises(UsageError):
        await mj.fetch("1")
    with pytest.raises(RuntimeError):
        await mj.fetch("1")


def test_repr_names_base_url_mode_dialect_and_scheme() -> None:
    """repr is informative (and, see test_redaction, never shows the key)."""
    assert (
        "<AsyncClient base_url='http://relay.test' mode='fast' dialect='auto' "
        "auth_scheme='bearer'>" == repr(AsyncClient("k", base_url=BASE, mode="fast"))
    )
    assert "dialect='trueai' auth_scheme='mj-api-secret'" in repr(
        AsyncClient("k", base_url=BASE, dialect="trueai")
    )


def test_submission_and_job_classes_are_public() -> None:
    """Submits give a Submission whose job is an AsyncJob (both exported from quickmj)."""
    import quickmj

    assert quickmj.Submission is Submission and quickmj.AsyncJob is AsyncJob
