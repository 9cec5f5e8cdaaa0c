"""AsyncClient over mocked HTTP: what each call sends, and what it makes of the answers."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aioresponses import CallbackResult, aioresponses
from conftest import Serve, load_fixture

from quickmj import (
    AsyncClient,
    AuthenticationError,
    Button,
    ButtonNotFoundError,
    ClientClosedError,
    ConfigurationError,
    DownloadError,
    HTTPStatusError,
    InvalidInputError,
    MalformedResponseError,
    NotFoundError,
    RetryPolicy,
    ServerError,
    SubmitRejectedError,
    SubmitResult,
    Task,
    TaskNotFoundError,
    TaskStatus,
    TransportError,
    UnsafeURLError,
    UsageError,
    ValidationError,
    __version__,
)
from quickmj._converter import structure
from quickmj._download import download_url

BASE = "http://relay.test"
KEY = "sk-test-key-0123456789"
NO_WAIT = RetryPolicy(backoff=0, max_backoff=0, max_attempts=3)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 16
GIF = b"GIF89a" + b"\x00" * 8
WEBP = b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 8
PIG_ID = "1730621826053455"
PIG_HASH = "3785da15-4f70-4034-9128-f3ff1ac634fa"
OK = {"code": 1, "description": "提交成功", "result": "1730621826053999", "properties": {}}


def data_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def client(**kwargs: Any) -> AsyncClient:
    kwargs.setdefault("retry", NO_WAIT)
    return AsyncClient(KEY, base_url=kwargs.pop("base_url", BASE), **kwargs)


def sent(m: aioresponses, method: str, path: str) -> list[Any]:
    """The calls made to ``path`` (aioresponses keys requests by method and URL)."""
    return [
        call
        for (meth, url), calls in m.requests.items()
        if meth == method and url.path == path
        for call in calls
    ]


def body_of(m: aioresponses, path: str) -> Any:
    (call,) = sent(m, "POST", path)
    return call.kwargs["json"]


def routes(m: aioresponses) -> list[str]:
    """Every request made, as 'METHOD /path', in first-call order."""
    return [f"{meth} {url.path}" for (meth, url), calls in m.requests.items() for _ in calls]


# ---- submit endpoints: paths and bodies ---------------------------------------------------


async def test_imagine_posts_the_documented_body(tmp_path: Path) -> None:
    """imagine: trimmed prompt, reference images as data URLs (URLs passed through)."""
    jpg = tmp_path / "ref.jpg"
    jpg.write_bytes(JPEG)
    with aioresponses() as m:
        m.post(f"{BASE}/mj/submit/imagine", payload=OK)
        async with client() as mj:
            result = await mj.imagine(
                "  a cat --v 6.1 ",
                images=[PNG, jpg, data_url(GIF, "image/gif"), "https://img.test/a.png"],
                bot_type="niji",
                notify_hook="https://hook.test/mj",
                state="order-1",
            )
        body = body_of(m, "/mj/submit/imagine")
    assert "1730621826053999" == result.task_id
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
    } == body


async def test_imagine_minimal_body() -> None:
    """Without options only the prompt is sent (no nulls)."""
    with aioresponses() as m:
        m.post(f"{BASE}/mj/submit/imagine", payload=OK)
        async with client() as mj:
            await mj.imagine("cat")
        assert {"prompt": "cat"} == body_of(m, "/mj/submit/imagine")


async def test_blend_describe_shorten_modal_bodies(tmp_path: Path) -> None:
    """blend, describe, shorten and modal post their documented fields."""
    png = tmp_path / "in.png"
    png.write_bytes(PNG)
    with aioresponses() as m:
        for ep in ("blend", "describe", "shorten", "modal"):
            m.post(f"{BASE}/mj/submit/{ep}", payload=OK)
        async with client() as mj:
            await mj.blend([PNG, str(png), WEBP], dimensions="portrait", bot_type="MID_JOURNEY")
            await mj.describe(png, state="d")
            await mj.shorten(" a very long prompt ", notify_hook="https://h.test/")
            await mj.modal("1730621826053999", prompt="cat --zoom 1.5", mask=PNG)
        assert {
            "base64Array": [data_url(PNG), data_url(PNG), data_url(WEBP, "image/webp")],
            "dimensions": "PORTRAIT",
            "botType": "MID_JOURNEY",
        } == body_of(m, "/mj/submit/blend")
        assert {"base64": data_url(PNG), "state": "d"} == body_of(m, "/mj/submit/describe")
        assert {"prompt": "a very long prompt", "notifyHook": "https://h.test/"} == body_of(
            m, "/mj/submit/shorten"
        )
        assert {
            "taskId": "1730621826053999",
            "prompt": "cat --zoom 1.5",
            "maskBase64": data_url(PNG),
        } == body_of(m, "/mj/submit/modal")


async def test_modal_accepts_a_submit_result() -> None:
    """modal(result) continues the MODAL task named by a code-21 answer."""
    with aioresponses() as m:
        m.post(f"{BASE}/mj/submit/modal", payload=OK)
        async with client() as mj:
            await mj.modal(SubmitResult(code=21, result="77"))
        assert {"taskId": "77"} == body_of(m, "/mj/submit/modal")


@pytest.mark.parametrize("mode", ["fast", "relax", "turbo"])
async def test_mode_prefixes_every_route(mode: Any) -> None:
    """mode= becomes the /mj-<mode>/mj path prefix for submits and reads alike."""
    prefix = f"{BASE}/mj-{mode}/mj"
    with aioresponses() as m:
        m.post(f"{prefix}/submit/imagine", payload=OK)
        m.get(f"{prefix}/task/1/fetch", payload={"id": "1"})
        m.post(f"{prefix}/task/list-by-condition", payload=[{"id": "1"}])
        m.get(f"{prefix}/task/1/image-seed", payload={"code": 1, "result": "5"})
        async with client(mode=mode) as mj:
            await mj.imagine("x")
            await mj.fetch("1")
            await mj.fetch_many(["1"])
            await mj.image_seed("1")
        assert [
            f"POST /mj-{mode}/mj/submit/imagine",
            f"GET /mj-{mode}/mj/task/1/fetch",
            f"POST /mj-{mode}/mj/task/list-by-condition",
            f"GET /mj-{mode}/mj/task/1/image-seed",
        ] == routes(m)


@pytest.mark.parametrize(
    ("scheme", "present", "absent"),
    [
        ("bearer", {"Authorization": f"Bearer {KEY}"}, "mj-api-secret"),
        ("raw", {"Authorization": KEY}, "mj-api-secret"),
        ("mj-api-secret", {"mj-api-secret": KEY}, "Authorization"),
    ],
)
async def test_auth_schemes(scheme: Any, present: dict[str, str], absent: str) -> None:
    """Each auth scheme sends the key in its own header, and only there."""
    with aioresponses() as m:
        m.get(f"{BASE}/mj/task/1/fetch", payload={"id": "1"})
        m.post(f"{BASE}/mj/submit/imagine", payload=OK)
        async with client(auth_scheme=scheme) as mj:
            await mj.fetch("1")
            await mj.imagine("x")
        for call in [*sent(m, "GET", "/mj/task/1/fetch"), *sent(m, "POST", "/mj/submit/imagine")]:
            headers = call.kwargs["headers"]
            assert present == {k: headers[k] for k in present}
            assert absent not in headers


async def test_user_agent_and_accept_headers() -> None:
    """Requests carry a User-Agent naming quickmj's version and ask for JSON."""
    with aioresponses() as m:
        m.get(f"{BASE}/mj/task/1/fetch", payload={"id": "1"})
        async with client() as mj:
            await mj.fetch("1")
        (call,) = sent(m, "GET", "/mj/task/1/fetch")
    assert call.kwargs["headers"]["User-Agent"].startswith(f"quickmj/{__version__} ")
    assert "application/json" == call.kwargs["headers"]["Accept"]


# ---- action: resolving buttons --------------------------------------------------------------


async def test_action_label_on_a_task_needs_no_fetch() -> None:
    """action(task, 'U2') presses the task's U2 button without another request."""
    pig = structure(load_fixture("task_pig"), Task)
    with aioresponses() as m:
        m.post(f"{BASE}/mj/submit/action", payload=OK)
        async with client() as mj:
            await mj.action(pig, "U2", choose_same_channel=True, state="s")
        assert ["POST /mj/submit/action"] == routes(m)
        assert {
            "taskId": PIG_ID,
            "customId": f"MJ::JOB::upsample::2::{PIG_HASH}",
            "chooseSameChannel": True,
            "state": "s",
        } == body_of(m, "/mj/submit/action")


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
    with aioresponses() as m:
        m.get(f"{BASE}/mj/task/{PIG_ID}/fetch", payload=load_fixture("task_pig"))
        m.post(f"{BASE}/mj/submit/action", payload=OK)
        async with client() as mj:
            await mj.action(ref, label)
        assert [f"GET /mj/task/{PIG_ID}/fetch", "POST /mj/submit/action"] == routes(m)
        body = body_of(m, "/mj/submit/action")
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
    with aioresponses() as m:
        m.post(f"{BASE}/mj/submit/action", payload=OK)
        async with client() as mj:
            await mj.action("123", button)
        assert ["POST /mj/submit/action"] == routes(m)
        assert expected == body_of(m, "/mj/submit/action")["customId"]


async def test_action_unknown_label_sends_nothing() -> None:
    """A label the task lacks raises ButtonNotFoundError before any submit."""
    pig = structure(load_fixture("task_pig"), Task)
    with aioresponses() as m:
        async with client() as mj:
            with pytest.raises(ButtonNotFoundError, match="Vary"):
                await mj.action(pig, "Vary (Strong)")
            with pytest.raises(InvalidInputError):
                await mj.action(pig, "  ")
        assert [] == routes(m)


async def test_action_openai_shaped_answer_is_refused() -> None:
    """The doc's answer sample for /submit/action (an OpenAI image answer) is a clear error."""
    with aioresponses() as m:
        m.post(f"{BASE}/mj/submit/action", payload=load_fixture("action_openai_shaped"))
        async with client() as mj:
            with pytest.raises(MalformedResponseError, match="code, description, result") as info:
                await mj.action(PIG_ID, f"MJ::JOB::upsample::2::{PIG_HASH}")
    assert "/submit/action" == info.value.path
    assert "created" in info.value.body


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
        (lambda mj: mj.modal("1", mask="https://img.test/m.png"), "not a URL"),
        (lambda mj: mj.fetch(""), "empty task id"),
        (lambda mj: mj.fetch("   "), "empty task id"),
        (lambda mj: mj.fetch(12), "task id"),
        (lambda mj: mj.action("1", ""), "button"),
    ],
)
async def test_bad_input_is_rejected_before_sending(
    call: Callable[[AsyncClient], Any], message: str
) -> None:
    """Bad arguments raise InvalidInputError (a ValueError) and send nothing."""
    with aioresponses() as m:
        async with client() as mj:
            with pytest.raises(InvalidInputError, match=message) as info:
                await call(mj)
        assert [] == routes(m)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("count", [2, 5])
async def test_blend_accepts_two_to_five_images(count: int) -> None:
    """The documented bounds themselves are accepted."""
    with aioresponses() as m:
        m.post(f"{BASE}/mj/submit/blend", payload=OK)
        async with client() as mj:
            await mj.blend([PNG] * count)
        assert count == len(body_of(m, "/mj/submit/blend")["base64Array"])


async def test_oversized_image_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Images above the size cap are refused locally."""
    monkeypatch.setattr("quickmj._images.MAX_IMAGE_BYTES", 100)
    async with client() as mj:
        with pytest.raises(InvalidInputError, match="larger"):
            await mj.describe(PNG + b"\x00" * 200)


# ---- fetch ----------------------------------------------------------------------------------


async def test_fetch_returns_the_task() -> None:
    """fetch parses the relay's task sample; a Task or SubmitResult works as the reference."""
    with aioresponses() as m:
        m.get(f"{BASE}/mj/task/{PIG_ID}/fetch", payload=load_fixture("task_pig"), repeat=True)
        async with client() as mj:
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
        (400, json.dumps({"code": 4, "description": "task_no_found"})),
        (404, json.dumps({"code": 3, "description": "关联任务不存在或已失效"})),
        (404, ""),
        (404, "404 page not found"),
    ],
)
async def test_fetch_unknown_id(status: int, body: str) -> None:
    """Every flavour of 'unknown id' is TaskNotFoundError naming the id."""
    with aioresponses() as m:
        m.get(f"{BASE}/mj/task/42/fetch", status=status, body=body)
        async with client() as mj:
            with pytest.raises(TaskNotFoundError) as info:
                await mj.fetch("42")
        assert 1 == len(routes(m))  # "not found" is an answer, not retried
    assert ("42", ("42",)) == (info.value.task_id, info.value.task_ids)
    assert isinstance(info.value, LookupError)


async def test_fetch_relay_error_body_is_not_not_found() -> None:
    """A relay error answer on fetch (code 5, upstream down) is raised, not 'not found'."""
    with aioresponses() as m:
        m.get(f"{BASE}/mj/task/42/fetch", payload={"code": 5, "description": "upstream error"})
        async with client() as mj:
            with pytest.raises(SubmitRejectedError) as info:
                await mj.fetch("42")
    assert not isinstance(info.value, TaskNotFoundError)
    assert (5, "upstream error") == (info.value.code, info.value.description)


async def test_fetch_other_validation_error_is_kept() -> None:
    """A 400 code 4 that is not about a missing task stays a ValidationError."""
    with aioresponses() as m:
        m.get(
            f"{BASE}/mj/task/42/fetch",
            status=400,
            payload={"code": 4, "description": "quota_not_enough"},
        )
        async with client() as mj:
            with pytest.raises(ValidationError, match="quota_not_enough"):
                await mj.fetch("42")


@pytest.mark.parametrize(
    "body", ["<html><body>Login</body></html>", "[]", '"SUCCESS"', '{"id": {"x": 1}}']
)
async def test_fetch_wrong_shapes_are_malformed(body: str) -> None:
    """HTML, a list, a bare string or a broken task on fetch is MalformedResponseError."""
    with aioresponses() as m:
        m.get(f"{BASE}/mj/task/42/fetch", body=body)
        async with client() as mj:
            with pytest.raises(MalformedResponseError):
                await mj.fetch("42")


# ---- fetch_many / list_tasks ----------------------------------------------------------------


def listing(known: set[str], log: list[list[str]], truncate: int | None = None) -> Any:
    """A list-by-condition callback: known ids, reversed, optionally truncated."""

    def callback(url: Any, **kwargs: Any) -> CallbackResult:
        ids = kwargs["json"]["ids"]
        log.append(list(ids))
        found = [{"id": i, "status": "SUCCESS"} for i in ids if i in known][::-1]
        return CallbackResult(payload=found[:truncate] if truncate else found)

    return callback


async def test_fetch_many_keeps_input_order_and_duplicates() -> None:
    """Results come back in input order, duplicates repeated, each id asked for once."""
    log: list[list[str]] = []
    with aioresponses() as m:
        m.post(
            f"{BASE}/mj/task/list-by-condition",
            callback=listing({"a", "b", "c"}, log),
            repeat=True,
        )
        async with client() as mj:
            tasks = await mj.fetch_many(["c", "a", "c", "b", "a"])
    assert ["c", "a", "c", "b", "a"] == [t.id for t in tasks]
    assert [["c", "a", "b"]] == log


@pytest.mark.parametrize(("ids", "requests"), [(5, 3), (4, 2), (1, 1)])
async def test_fetch_many_chunks(ids: int, requests: int) -> None:
    """list_chunk_size=2 asks for at most 2 ids a request: ceil(n / 2) requests."""
    log: list[list[str]] = []
    wanted = [f"t{i}" for i in range(ids)]
    with aioresponses() as m:
        m.post(
            f"{BASE}/mj/task/list-by-condition",
            callback=listing(set(wanted), log),
            repeat=True,
        )
        async with client(list_chunk_size=2) as mj:
            tasks = await mj.fetch_many(wanted)
    assert wanted == [t.id for t in tasks]
    assert requests == len(log)
    assert sorted(wanted) == sorted(i for chunk in log for i in chunk)
    assert all(len(chunk) <= 2 for chunk in log)


async def test_fetch_many_reasks_after_a_truncated_answer() -> None:
    """Ids a truncated answer left out are asked for again until all are found."""
    log: list[list[str]] = []
    with aioresponses() as m:
        m.post(
            f"{BASE}/mj/task/list-by-condition",
            callback=listing({"a", "b", "c"}, log, truncate=2),
            repeat=True,
        )
        async with client() as mj:
            tasks = await mj.fetch_many(["a", "b", "c"])
    assert ["a", "b", "c"] == [t.id for t in tasks]
    assert [["a", "b", "c"], ["a"]] == log


async def test_fetch_many_reports_truly_missing_ids() -> None:
    """Unknown ids raise TaskNotFoundError with task_ids and the tasks that were found."""
    log: list[list[str]] = []
    with aioresponses() as m:
        m.post(
            f"{BASE}/mj/task/list-by-condition",
            callback=listing({"a", "c"}, log),
            repeat=True,
        )
        async with client() as mj:
            with pytest.raises(TaskNotFoundError) as info:
                await mj.fetch_many(["c", "ghost", "a", "ghost2", "c"])
    assert ("ghost", "ghost2") == info.value.task_ids
    assert ["c", "a", "c"] == [t.id for t in info.value.found]
    assert [["c", "ghost", "a", "ghost2"], ["ghost", "ghost2"]] == log


async def test_fetch_many_ignores_ids_not_asked_for() -> None:
    """A relay that returns extra tasks does not confuse the result."""
    with aioresponses() as m:
        m.post(f"{BASE}/mj/task/list-by-condition", payload=[{"id": "zzz"}, {"id": "a"}])
        async with client() as mj:
            assert ["a"] == [t.id for t in await mj.fetch_many(["a"])]


async def test_fetch_many_of_nothing_sends_nothing() -> None:
    """No ids: no request, an empty list."""
    with aioresponses() as m:
        async with client() as mj:
            assert [] == await mj.fetch_many([])
            assert [] == await mj.list_tasks([])
        assert [] == routes(m)


@pytest.mark.parametrize(("body", "count"), [("[]", 0), ("null", 0), ("", 0)])
async def test_list_tasks_empty_answers(body: str, count: int) -> None:
    """list-by-condition answering [], null or nothing means no tasks."""
    with aioresponses() as m:
        m.post(f"{BASE}/mj/task/list-by-condition", body=body)
        async with client() as mj:
            assert count == len(await mj.list_tasks(["1"]))
        assert {"ids": ["1"]} == body_of(m, "/mj/task/list-by-condition")


async def test_list_tasks_object_answer_is_malformed() -> None:
    """A single task object where an array belongs (the doc sample) is refused."""
    with aioresponses() as m:
        m.post(f"{BASE}/mj/task/list-by-condition", payload=load_fixture("task_pig"))
        async with client() as mj:
            with pytest.raises(MalformedResponseError, match="array"):
                await mj.list_tasks([PIG_ID])


# ---- image-seed -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", ["636646138", 636646138])
async def test_image_seed(seed: Any) -> None:
    """Code 1 gives the seed as a string (a numeric seed too)."""
    with aioresponses() as m:
        m.get(
            f"{BASE}/mj/task/1/image-seed",
            payload={"code": 1, "description": "成功", "result": seed},
        )
        async with client() as mj:
            assert "636646138" == await mj.image_seed("1")


async def test_image_seed_unknown_task() -> None:
    """HTTP 404 with code 3 is TaskNotFoundError."""
    with aioresponses() as m:
        m.get(
            f"{BASE}/mj/task/2/image-seed",
            status=404,
            payload={"code": 3, "description": "关联任务不存在或已失效"},
        )
        async with client() as mj:
            with pytest.raises(TaskNotFoundError) as info:
                await mj.image_seed("2")
    assert "2" == info.value.task_id


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (200, json.dumps(load_fixture("task_pig")), MalformedResponseError),
        (200, "", MalformedResponseError),
        (200, json.dumps({"code": 1, "description": "成功"}), MalformedResponseError),
        (400, json.dumps({"code": 4, "description": "关联任务状态错误"}), ValidationError),
    ],
)
async def test_image_seed_failures(status: int, body: str, error: type[Exception]) -> None:
    """A Task-shaped answer (the doc's copy error), no seed, or a code 4 are errors."""
    with aioresponses() as m:
        m.get(f"{BASE}/mj/task/3/image-seed", status=status, body=body)
        async with client() as mj:
            with pytest.raises(error):
                await mj.image_seed("3")


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
        return web.json_response({"id": task_id, "imageUrl": f"{origin}/img/{task_id}.png"})

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
    """The image lands in dest/<id>.<ext>, the extension from the Content-Type."""
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
    assert tmp_path / "sub" / "1731.jpg" == jpg
    assert tmp_path / "my_cat.png" == named
    assert PNG == png.read_bytes() == jpg.read_bytes()
    assert [] == leftovers(tmp_path) == leftovers(tmp_path / "sub")


async def test_download_by_id_fetches_the_task_first(serve: Serve, tmp_path: Path) -> None:
    """download('id') fetches the task, then saves its imageUrl."""
    seen: list[tuple[str, str | None]] = []
    relay = await serve(image_app(seen))
    async with client(base_url=relay) as mj:
        path = await mj.download("999", tmp_path)
    assert tmp_path / "999.png" == path
    assert PNG == path.read_bytes()


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
    """A cut-off or refused download leaves neither the image nor a .part behind."""
    relay = await serve(image_app([]))
    async with client(base_url=relay, retry=RetryPolicy(max_attempts=1)) as mj:
        with pytest.raises(TransportError):
            await mj.download(Task(id="cut", image_url=f"{relay}/img/b.png?cut=1"), tmp_path)
        with pytest.raises(NotFoundError):
            await mj.download(Task(id="gone", image_url=f"{relay}/img/b.png?status=404"), tmp_path)
        with pytest.raises(DownloadError, match="larger"):
            await download_url(mj._transport, f"{relay}/img/c.png", tmp_path, "big", max_bytes=8)
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
    """403 from another host (an expired signed link) is not an AuthenticationError;
    403 from the relay itself, which did get the key, is."""
    relay = await serve(image_app([]), "127.0.0.1")
    cdn = await serve(image_app([]), "localhost")
    async with client(base_url=relay) as mj:
        with pytest.raises(HTTPStatusError, match="expired") as cdn_err:
            await mj.download(Task(id="c", image_url=f"{cdn}/img/c.png?status=403"), tmp_path)
        with pytest.raises(AuthenticationError):
            await mj.download(Task(id="r", image_url=f"{relay}/img/r.png?status=403"), tmp_path)
    assert not isinstance(cdn_err.value, AuthenticationError)
    assert 403 == cdn_err.value.status
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
    ],
)
async def test_unsafe_image_urls_are_refused(tmp_path: Path, url: str) -> None:
    """Only plain http(s) URLs are fetched; nothing is written for the others."""
    with aioresponses() as m:
        async with client() as mj:
            with pytest.raises(UnsafeURLError):
                await mj.download(Task(id="u", image_url=url), tmp_path)
        assert [] == routes(m)
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
    async with client() as mj:
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
    with aioresponses() as m:
        m.get("http://env-relay.test/mj-relax/mj/task/1/fetch", payload={"id": "1"})
        async with AsyncClient() as mj:
            assert ("http://env-relay.test", "relax") == (mj.base_url, mj.mode)
            await mj.fetch("1")
        (call,) = sent(m, "GET", "/mj-relax/mj/task/1/fetch")
    assert "Bearer sk-from-env" == call.kwargs["headers"]["Authorization"]


def test_arguments_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Explicit arguments win over QUICKMJ_* variables."""
    monkeypatch.setenv("QUICKMJ_BASE_URL", "http://env-relay.test")
    monkeypatch.setenv("QUICKMJ_MODE", "relax")
    mj = AsyncClient("k", base_url="https://arg.test", mode="fast")
    assert ("https://arg.test", "fast") == (mj.base_url, mj.mode)


def test_default_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without configuration the client talks to QuickRouter in the key's default mode."""
    monkeypatch.delenv("QUICKMJ_BASE_URL", raising=False)
    monkeypatch.delenv("QUICKMJ_MODE", raising=False)
    mj = AsyncClient("k")
    assert ("https://api.quickrouter.ai", None) == (mj.base_url, mj.mode)


@pytest.mark.parametrize(
    "base_url",
    ["http://relay.test/mj", "http://relay.test/mj/", "http://relay.test/", " http://relay.test "],
)
async def test_base_url_forms_are_accepted(base_url: str) -> None:
    """A base URL copied with /mj (or a slash) still reaches /mj/... once."""
    with aioresponses() as m:
        m.get(f"{BASE}/mj/task/1/fetch", payload={"id": "1"})
        async with AsyncClient("k", base_url=base_url) as mj:
            await mj.fetch("1")
        assert ["GET /mj/task/1/fetch"] == routes(m)


async def test_base_url_with_a_path_prefix() -> None:
    """A relay mounted under a path keeps it: <base>/<path>/mj-fast/mj/..."""
    with aioresponses() as m:
        m.get(f"{BASE}/proxy/v1/mj-fast/mj/task/1/fetch", payload={"id": "1"})
        async with AsyncClient("k", base_url=f"{BASE}/proxy/v1/", mode="fast") as mj:
            await mj.fetch("1")
        assert ["GET /proxy/v1/mj-fast/mj/task/1/fetch"] == routes(m)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "ludicrous"}, "ludicrous"),
        ({"auth_scheme": "basic"}, "auth_scheme"),
        ({"base_url": "relay.test"}, "http"),
        ({"base_url": "ftp://relay.test"}, "http"),
    ],
)
def test_bad_configuration(kwargs: dict[str, Any], message: str) -> None:
    """A bad mode, auth scheme or base URL is a ConfigurationError that says what was wrong."""
    with pytest.raises(ConfigurationError, match=message):
        AsyncClient("k", **kwargs)


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


@pytest.mark.parametrize("kwargs", [{"list_chunk_size": 0}, {"max_connections": 0}])
def test_bad_sizes(kwargs: dict[str, Any]) -> None:
    """Pool and chunk sizes must be positive."""
    with pytest.raises(InvalidInputError):
        AsyncClient("k", **kwargs)


# ---- lifecycle ------------------------------------------------------------------------------


async def test_async_with_closes_the_session() -> None:
    """Leaving ``async with`` closes the aiohttp session."""
    with aioresponses() as m:
        m.get(f"{BASE}/mj/task/1/fetch", payload={"id": "1"})
        async with client() as mj:
            await mj.fetch("1")
            session = mj._transport._session
            assert session is not None and not session.closed
    assert session.closed
    assert mj.is_closed


async def test_calls_after_close_fail(tmp_path: Path) -> None:
    """Every call on a closed client raises ClientClosedError and sends nothing."""
    with aioresponses() as m:
        async with client() as mj:
            pass
        calls: list[Callable[[], Any]] = [
            lambda: mj.fetch("1"),
            lambda: mj.imagine("x"),
            lambda: mj.list_tasks(["1", "2"]),
            lambda: mj.image_seed("1"),
            lambda: mj.action("1", "MJ::JOB::upsample::1::h"),
            lambda: mj.wait("1"),
            lambda: mj.download(Task(id="1", image_url=f"{BASE}/a.png"), tmp_path),
        ]
        for call in calls:
            with pytest.raises(ClientClosedError):
                await call()
        assert [] == routes(m)
    assert [] == files(tmp_path)


async def test_aclose_is_idempotent_and_reopen_fails() -> None:
    """aclose twice is fine; a closed client cannot be re-entered."""
    mj = client()
    await mj.aclose()
    await mj.aclose()
    assert mj.is_closed
    with pytest.raises(UsageError, match="reopen"):
        async with mj:
            pass


async def test_client_works_without_async_with() -> None:
    """The session is created lazily; aclose() releases it."""
    with aioresponses() as m:
        m.get(f"{BASE}/mj/task/1/fetch", payload={"id": "1"})
        mj = client()
        try:
            assert "1" == (await mj.fetch("1")).id
        finally:
            await mj.aclose()
    assert mj._transport._session is None


async def test_closed_error_is_a_usage_error() -> None:
    """ClientClosedError can be caught as UsageError (and RuntimeError)."""
    mj = client()
    await mj.aclose()
    with pytest.raises(UsageError):
        await mj.fetch("1")
    with pytest.raises(RuntimeError):
        await mj.fetch("1")


def test_repr_names_base_url_and_mode() -> None:
    """repr is informative (and, see test_redaction, never shows the key)."""
    assert "<AsyncClient base_url='http://relay.test' mode='fast' auth_scheme='bearer'>" == repr(
        client(mode="fast")
    )


async def test_id_path_segment_stays_one_segment() -> None:
    """Ids with '/' or '../' are percent-encoded into a single path segment."""
    with aioresponses() as m:
        m.get(re.compile(r".*"), payload={"id": "x"}, repeat=True)
        async with client() as mj:
            await mj.fetch("../../admin/x")
            await mj.fetch("a/b?c#d")
        paths = [url.raw_path for (_, url) in m.requests]
    assert ["/mj/task/..%2F..%2Fadmin%2Fx/fetch", "/mj/task/a%2Fb%3Fc%23d/fetch"] == paths


async def test_fetch_many_on_a_closed_client() -> None:
    """fetch_many after close raises ClientClosedError, like every other call."""
    mj = client()
    await mj.aclose()
    with pytest.raises(ClientClosedError):
        await mj.fetch_many(["1", "2"])


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [(503, "down", ServerError), (200, "<html>", MalformedResponseError)],
)
async def test_fetch_many_raises_plain_errors(
    status: int, body: str, error: type[Exception]
) -> None:
    """A failing list-by-condition surfaces as its own error type, catchable as such."""
    with aioresponses() as m:
        m.post(f"{BASE}/mj/task/list-by-condition", status=status, body=body, repeat=True)
        async with client(retry=RetryPolicy(max_attempts=1), list_chunk_size=1) as mj:
            with pytest.raises(error):
                await mj.fetch_many(["1", "2"])


async def test_imagine_accepts_a_single_reference_image(tmp_path: Path) -> None:
    """images='ref.png' means one reference image, not one per character."""
    ref = tmp_path / "ref.png"
    ref.write_bytes(PNG)
    with aioresponses() as m:
        m.post(f"{BASE}/mj/submit/imagine", payload=OK)
        async with client() as mj:
            await mj.imagine("cat", images=str(ref))
        assert [data_url(PNG)] == body_of(m, "/mj/submit/imagine")["base64Array"]
