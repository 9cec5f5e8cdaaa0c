"""AsyncClient over mocked HTTP: requests sent, answers mapped, retries, secrets, downloads."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aioresponses import CallbackResult, aioresponses
from test_models import load

from quickmj import (
    AsyncClient,
    AuthenticationError,
    BannedPromptError,
    ClientClosedError,
    ConfigurationError,
    ConnectError,
    InvalidInputError,
    MalformedResponseError,
    NotFoundError,
    QueueFullError,
    QuickMJError,
    RateLimitError,
    RelatedTaskNotFoundError,
    RetryPolicy,
    ServerError,
    SubmitOutcomeUnknownError,
    SubmitRejectedError,
    TaskNotFoundError,
    UnsafeURLError,
    UsageError,
    ValidationError,
    __version__,
)

BASE = "http://relay.test"
KEY = "sk-SECRET-abcdef-0123456789"
NO_WAIT = RetryPolicy(backoff=0, max_backoff=0, max_attempts=3)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
OK = {"code": 1, "description": "提交成功", "result": "1730621826053455", "properties": {}}


def client(**kwargs: Any) -> AsyncClient:
    kwargs.setdefault("retry", NO_WAIT)
    return AsyncClient(KEY, base_url=BASE, **kwargs)


def sent(m: aioresponses, method: str, path: str) -> list[Any]:
    """The calls made to ``path`` (aioresponses keys requests by method and URL)."""
    return [
        call
        for (meth, url), calls in m.requests.items()
        if meth == method and url.path == path
        for call in calls
    ]


# ---- requests -------------------------------------------------------------------------


async def test_imagine_posts_the_body_and_auth() -> None:
    """imagine posts camelCase JSON with the Bearer header and a versioned User-Agent."""
    with aioresponses() as m:
        m.post(f"{BASE}/mj/submit/imagine", payload=OK)
        async with client() as mj:
            result = await mj.imagine("  a cat ", images=[PNG], state="order-1", bot_type="niji")
        (call,) = sent(m, "POST", "/mj/submit/imagine")
    assert "1730621826053455" == result.task_id
    body = call.kwargs["json"]
    assert "a cat" == body["prompt"]
    assert "NIJI_JOURNEY" == body["botType"]
    assert "order-1" == body["state"]
    assert body["base64Array"][0].startswith("data:image/png;base64,")
    assert f"Bearer {KEY}" == call.kwargs["headers"]["Authorization"]


@pytest.mark.parametrize(
    ("scheme", "header", "value"),
    [
        ("bearer", "Authorization", f"Bearer {KEY}"),
        ("raw", "Authorization", KEY),
        ("mj-api-secret", "mj-api-secret", KEY),
    ],
)
async def test_auth_schemes(scheme: Any, header: str, value: str) -> None:
    """Each auth scheme sends the key in its header."""
    with aioresponses() as m:
        m.get(re.compile(r".*/fetch$"), payload={"id": "1"})
        async with client(auth_scheme=scheme) as mj:
            await mj.fetch("1")
        (call,) = sent(m, "GET", "/mj/task/1/fetch")
    assert value == call.kwargs["headers"][header]


async def test_user_agent_has_version() -> None:
    """The session's User-Agent names quickmj and its version."""
    async with client() as mj:
        session = mj._transport._get_session()
        assert f"quickmj/{__version__}" in session.headers["User-Agent"]


@pytest.mark.parametrize("mode", ["fast", "relax", "turbo"])
async def test_mode_prefix(mode: Any) -> None:
    """mode= becomes the /mj-<mode>/mj path prefix."""
    with aioresponses() as m:
        m.post(f"{BASE}/mj-{mode}/mj/submit/shorten", payload=OK)
        async with client(mode=mode) as mj:
            await mj.shorten("a long prompt")
        assert sent(m, "POST", f"/mj-{mode}/mj/submit/shorten")


async def test_every_submit_endpoint(tmp_path: Path) -> None:
    """blend, describe, action and modal post to their paths with their fields."""
    image = tmp_path / "in.png"
    image.write_bytes(PNG)
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    with aioresponses() as m:
        for ep in ("blend", "describe", "action", "modal"):
            m.post(f"{BASE}/mj/submit/{ep}", payload=OK)
        async with client() as mj:
            await mj.blend([PNG, str(image)], dimensions="portrait")
            await mj.describe(data_url)
            await mj.action("123", "MJ::JOB::upsample::1::h", choose_same_channel=True)
            await mj.modal("456", prompt="x --zoom 1.5", mask=image)
        blend = sent(m, "POST", "/mj/submit/blend")[0].kwargs["json"]
        describe = sent(m, "POST", "/mj/submit/describe")[0].kwargs["json"]
        action = sent(m, "POST", "/mj/submit/action")[0].kwargs["json"]
        modal = sent(m, "POST", "/mj/submit/modal")[0].kwargs["json"]
    assert "PORTRAIT" == blend["dimensions"] and 2 == len(blend["base64Array"])
    assert data_url == describe["base64"]
    assert {
        "taskId": "123",
        "customId": "MJ::JOB::upsample::1::h",
        "chooseSameChannel": True,
    } == action
    assert "456" == modal["taskId"] and modal["maskBase64"].startswith("data:image/png")


async def test_action_resolves_a_label_by_fetching_the_task() -> None:
    """action(id, 'U2') fetches the task and presses its U2 button."""
    pig = load("task_pig")
    with aioresponses() as m:
        m.get(f"{BASE}/mj/task/1730621826053455/fetch", payload=pig)
        m.post(f"{BASE}/mj/submit/action", payload=OK)
        async with client() as mj:
            await mj.action("1730621826053455", "U2")
        body = sent(m, "POST", "/mj/submit/action")[0].kwargs["json"]
    assert "MJ::JOB::upsample::2::3785da15-4f70-4034-9128-f3ff1ac634fa" == body["customId"]


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda mj: mj.imagine("   "), InvalidInputError),
        (lambda mj: mj.blend([PNG]), InvalidInputError),
        (lambda mj: mj.blend([PNG] * 6), InvalidInputError),
        (lambda mj: mj.describe(b"not an image"), InvalidInputError),
        (lambda mj: mj.describe("/no/such/file.png"), InvalidInputError),
        (lambda mj: mj.describe("data:image/png;base64"), InvalidInputError),
        (lambda mj: mj.fetch(""), InvalidInputError),
    ],
)
async def test_bad_input_is_rejected_before_sending(call: Any, error: type[Exception]) -> None:
    """Bad arguments raise InvalidInputError and send nothing."""
    with aioresponses() as m:
        async with client() as mj:
            with pytest.raises(error):
                await call(mj)
        assert not m.requests


async def test_task_id_is_one_path_segment() -> None:
    """An id with '/' or '../' cannot reach another route."""
    with aioresponses() as m:
        m.get(re.compile(r".*"), payload={"id": "x"})
        async with client() as mj:
            await mj.fetch("../../admin/x")
        (key,) = list(m.requests)
    assert "/mj/task/..%2F..%2Fadmin%2Fx/fetch" == key[1].raw_path


# ---- answers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "error", "check"),
    [
        (
            {"code": 24, "description": "banned", "properties": {"bannedWord": "gore"}},
            BannedPromptError,
            "gore",
        ),
        ({"code": 23, "description": "队列已满，请稍后尝试"}, QueueFullError, "queue full"),
        ({"code": 9, "description": "提交失败，队列已满，请稍后重试"}, QueueFullError, "code 9"),
        ({"code": 4, "description": "prompt不能为空"}, ValidationError, "prompt不能为空"),
        ({"code": 3, "description": "关联任务不存在或已失效"}, RelatedTaskNotFoundError, "code 3"),
        ({"code": 9, "description": "system error"}, SubmitRejectedError, "system error"),
        (
            {"success": False, "code": -1, "message": "并发数已达上限", "timestamp": "t"},
            SubmitRejectedError,
            "并发数已达上限",
        ),
    ],
)
async def test_relay_codes_map_to_errors(
    body: dict[str, Any], error: type[SubmitRejectedError], check: str
) -> None:
    """Each rejection code becomes its typed error, keeping code/description/properties."""
    with aioresponses() as m:
        m.post(f"{BASE}/mj/submit/imagine", payload=body)
        async with client() as mj:
            with pytest.raises(error) as info:
                await mj.imagine("x")
    assert type(info.value) is error
    assert check in str(info.value)
    assert body["code"] == info.value.code
    if isinstance(info.value, BannedPromptError):
        assert "gore" == info.value.banned_word


async def test_success_codes() -> None:
    """22 is queued success, 21 is success that needs a modal."""
    with aioresponses() as m:
        m.post(
            f"{BASE}/mj/submit/imagine",
            payload={"code": 22, "result": "1", "properties": {"numberOfQueues": 2}},
        )
        m.post(
            f"{BASE}/mj/submit/action",
            payload={"code": 21, "result": "2", "description": "Waiting for window confirm"},
        )
        async with client() as mj:
            queued = await mj.imagine("x")
            modal = await mj.action("9", "MJ::CustomZoom::h")
    assert 2 == queued.queue_position
    assert modal.needs_modal and "2" == modal.task_id


async def test_related_task_404_with_code() -> None:
    """HTTP 404 carrying {code: 3} is the relay's 'parent task not found'."""
    with aioresponses() as m:
        m.post(
            f"{BASE}/mj/submit/action",
            status=404,
            payload={"code": 3, "description": "关联任务不存在或已失效"},
        )
        async with client() as mj:
            with pytest.raises(RelatedTaskNotFoundError) as info:
                await mj.action("9", "MJ::JOB::upsample::1::h")
    assert 404 == info.value.status


@pytest.mark.parametrize(
    ("status", "body", "headers", "error"),
    [
        (401, "Authorization header missing.", {}, AuthenticationError),
        (403, "", {}, AuthenticationError),
        (404, "", {}, NotFoundError),
        (429, "", {"Retry-After": "7"}, RateLimitError),
        (
            502,
            "<html><body><h1>502 Bad Gateway</h1>" + "x" * 5000 + "</body></html>",
            {},
            ServerError,
        ),
    ],
)
async def test_http_failures(
    status: int, body: str, headers: dict[str, str], error: type[Exception]
) -> None:
    """HTTP failures on reads become typed errors keeping the status and a short body."""
    with aioresponses() as m:
        m.post(
            re.compile(r".*list-by-condition"),
            status=status,
            body=body,
            headers=headers,
            repeat=True,
        )
        async with client(retry=RetryPolicy(max_attempts=1)) as mj:
            with pytest.raises(error) as info:
                await mj.list_tasks(["1"])
    assert status == info.value.status  # type: ignore[attr-defined]
    assert len(info.value.body) < 1100  # type: ignore[attr-defined]
    if isinstance(info.value, RateLimitError):
        assert 7 == info.value.retry_after


async def test_retry_after_as_http_date() -> None:
    """Retry-After given as an HTTP date is converted to seconds."""
    from quickmj._transport import parse_retry_after

    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("soon") is None


@pytest.mark.parametrize(
    "body",
    [
        "<html>maintenance</html>",
        "{not json",
        b"\xff\xfe\xfa",
        "[" * 5_000 + "]" * 5_000,
        json.dumps({"created": 1, "data": []}),
    ],
)
async def test_malformed_answers(body: Any) -> None:
    """HTML, broken JSON, non-UTF-8, absurd nesting or a wrong shape: MalformedResponseError."""
    with aioresponses() as m:
        m.post(f"{BASE}/mj/submit/imagine", body=body)
        async with client() as mj:
            with pytest.raises(MalformedResponseError):
                await mj.imagine("x")


async def test_openai_shaped_action_answer_is_refused() -> None:
    """The doc sample for /submit/action (an OpenAI image answer) is a clear error."""
    with aioresponses() as m:
        m.post(f"{BASE}/mj/submit/action", payload=load("action_openai_shaped"))
        async with client() as mj:
            with pytest.raises(MalformedResponseError, match="code, description, result"):
                await mj.action("1", "MJ::JOB::upsample::1::h")


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, ""),
        (204, ""),
        (200, "null"),
        (200, json.dumps({"code": 4, "description": "task_no_found"})),
        (404, ""),
    ],
)
async def test_fetch_unknown_id(status: int, body: str) -> None:
    """Every flavour of 'unknown id' is TaskNotFoundError."""
    with aioresponses() as m:
        m.get(f"{BASE}/mj/task/42/fetch", status=status, body=body)
        async with client() as mj:
            with pytest.raises(TaskNotFoundError) as info:
                await mj.fetch("42")
    assert "42" == info.value.task_id


async def test_oversized_answer_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK caps how much of an answer it reads."""
    monkeypatch.setattr("quickmj._transport.MAX_JSON_BYTES", 1000)
    with aioresponses() as m:
        m.get(f"{BASE}/mj/task/1/fetch", body=json.dumps({"id": "1", "prompt": "x" * 5000}))
        async with client() as mj:
            with pytest.raises(MalformedResponseError, match="larger than"):
                await mj.fetch("1")


# ---- fetch_many and image_seed -------------------------------------------------------------


def listing(known: set[str], log: list[list[str]], truncate: int | None = None) -> Any:
    def callback(url: Any, **kwargs: Any) -> CallbackResult:
        ids = kwargs["json"]["ids"]
        log.append(ids)
        found = [{"id": i, "status": "SUCCESS"} for i in ids if i in known][::-1]
        return CallbackResult(payload=found[:truncate] if truncate else found)

    return callback


async def test_fetch_many_keeps_input_order_and_chunks() -> None:
    """Results come back in input order (duplicates too), list_chunk_size ids a request."""
    log: list[list[str]] = []
    with aioresponses() as m:
        m.post(
            f"{BASE}/mj/task/list-by-condition",
            callback=listing({"a", "b", "c", "d", "e"}, log),
            repeat=True,
        )
        async with client(list_chunk_size=2) as mj:
            tasks = await mj.fetch_many(["c", "a", "e", "a", "b", "d"])
    assert ["c", "a", "e", "a", "b", "d"] == [t.id for t in tasks]
    assert [2, 2, 1] == sorted((len(c) for c in log), reverse=True)


async def test_fetch_many_reasks_after_truncation_and_reports_missing() -> None:
    """A truncated answer is re-asked; truly unknown ids are reported, not dropped."""
    log: list[list[str]] = []
    with aioresponses() as m:
        m.post(
            f"{BASE}/mj/task/list-by-condition",
            callback=listing({"a", "b", "c"}, log, truncate=1),
            repeat=True,
        )
        async with client() as mj:
            with pytest.raises(TaskNotFoundError) as info:
                await mj.fetch_many(["a", "b", "ghost", "c"])
    assert ("ghost",) == info.value.task_ids
    assert ["a", "b", "c"] == [t.id for t in info.value.found]
    assert 4 == len(log)


async def test_image_seed() -> None:
    """image-seed returns the seed; unknown task and a Task-shaped answer are errors."""
    with aioresponses() as m:
        m.get(
            f"{BASE}/mj/task/1/image-seed",
            payload={"code": 1, "description": "成功", "result": "636646138"},
        )
        m.get(
            f"{BASE}/mj/task/2/image-seed",
            status=404,
            payload={"code": 3, "description": "关联任务不存在或已失效"},
        )
        m.get(f"{BASE}/mj/task/3/image-seed", payload=load("task_pig"))
        async with client() as mj:
            assert "636646138" == await mj.image_seed("1")
            with pytest.raises(TaskNotFoundError):
                await mj.image_seed("2")
            with pytest.raises(MalformedResponseError):
                await mj.image_seed("3")


# ---- retries ----------------------------------------------------------------------------


async def test_reads_retry_transient_failures_and_honour_retry_after() -> None:
    """A read survives a 502, a 429 (its Retry-After is used) and a dropped connection."""
    with aioresponses() as m:
        url = f"{BASE}/mj/task/1/fetch"
        m.get(url, status=502, body="<html>bad gateway</html>")
        m.get(url, status=429, headers={"Retry-After": "3"})
        m.get(url, exception=aiohttp.ServerDisconnectedError())
        m.get(url, payload={"id": "1", "status": "SUCCESS"})
        async with client(retry=RetryPolicy(max_attempts=4, backoff=0.01)) as mj:
            slept: list[float] = []

            async def fake_sleep(seconds: float) -> None:
                slept.append(seconds)

            mj._transport._sleep = fake_sleep
            task = await mj.fetch("1")
    assert "1" == task.id
    assert 3 == len(slept) and 3.0 == slept[1]


async def test_reads_give_up_after_max_attempts() -> None:
    """Retries are bounded; the last error is raised."""
    with aioresponses() as m:
        m.get(f"{BASE}/mj/task/1/fetch", status=503, body="down", repeat=True)
        async with client(retry=RetryPolicy(max_attempts=3, backoff=0)) as mj:
            with pytest.raises(ServerError):
                await mj.fetch("1")
        assert 3 == len(sent(m, "GET", "/mj/task/1/fetch"))


async def test_submit_is_not_retried_after_a_5xx() -> None:
    """A 5xx on submit may hide a created job: one request, SubmitOutcomeUnknownError."""
    with aioresponses() as m:
        m.post(f"{BASE}/mj/submit/imagine", status=502, body="<html>502</html>", repeat=True)
        async with client() as mj:
            with pytest.raises(SubmitOutcomeUnknownError) as info:
                await mj.imagine("x", state="order-7")
        assert 1 == len(sent(m, "POST", "/mj/submit/imagine"))
    assert isinstance(info.value.__cause__, ServerError)
    assert "order-7" == info.value.state
    assert "x" == info.value.request.prompt


async def test_submit_is_not_retried_after_a_dropped_answer() -> None:
    """A connection dropped after sending is an unknown outcome, never re-sent."""
    with aioresponses() as m:
        m.post(
            f"{BASE}/mj/submit/imagine", exception=aiohttp.ServerDisconnectedError(), repeat=True
        )
        async with client() as mj:
            with pytest.raises(SubmitOutcomeUnknownError):
                await mj.imagine("x")
        assert 1 == len(sent(m, "POST", "/mj/submit/imagine"))


async def test_submit_retried_after_connect_failure() -> None:
    """A failed connect sent nothing, so the submit is retried."""
    conn_key = aiohttp.client_reqrep.ConnectionKey("relay.test", 80, False, True, None, None, None)
    with aioresponses() as m:
        m.post(
            f"{BASE}/mj/submit/imagine",
            exception=aiohttp.ClientConnectorError(conn_key, OSError(111, "refused")),
        )
        m.post(f"{BASE}/mj/submit/imagine", payload=OK)
        async with client() as mj:
            result = await mj.imagine("x")
    assert result.ok


async def test_rejections_retried_only_when_enabled() -> None:
    """429 and queue-full submits are retried with retry_submits=True, not by default."""
    with aioresponses() as m:
        m.post(f"{BASE}/mj/submit/imagine", status=429)
        m.post(f"{BASE}/mj/submit/imagine", payload={"code": 23, "description": "队列已满"})
        m.post(f"{BASE}/mj/submit/imagine", payload=OK)
        async with client(retry=RetryPolicy(backoff=0, retry_submits=True)) as mj:
            assert (await mj.imagine("x")).ok
    with aioresponses() as m:
        m.post(f"{BASE}/mj/submit/imagine", status=429)
        async with client() as mj:
            with pytest.raises(RateLimitError):
                await mj.imagine("x")


async def test_connect_error_type() -> None:
    """An unreachable relay is a ConnectError (also a builtin ConnectionError)."""
    async with AsyncClient(
        KEY, base_url="http://127.0.0.1:9", retry=RetryPolicy(max_attempts=1)
    ) as mj:
        with pytest.raises(ConnectError) as info:
            await mj.fetch("1")
    assert isinstance(info.value, ConnectionError)


# ---- configuration and lifecycle ------------------------------------------------------------


def test_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """No key anywhere: ConfigurationError naming QUICKMJ_API_KEY."""
    monkeypatch.delenv("QUICKMJ_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="QUICKMJ_API_KEY"):
        AsyncClient()


def test_environment_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """Key, base URL and mode come from the environment; /mj suffixes are accepted."""
    monkeypatch.setenv("QUICKMJ_API_KEY", KEY)
    monkeypatch.setenv("QUICKMJ_BASE_URL", "https://relay.example/mj/")
    monkeypatch.setenv("QUICKMJ_MODE", "relax")
    mj = AsyncClient()
    assert "https://relay.example" == mj.base_url
    assert "relax" == mj.mode
    with pytest.raises(ConfigurationError):
        AsyncClient(mode="ludicrous")  # type: ignore[arg-type]


async def test_lifecycle() -> None:
    """Closing is idempotent; calls after close fail; a closed client cannot reopen."""
    mj = client()
    async with mj:
        pass
    await mj.aclose()
    with pytest.raises(ClientClosedError):
        await mj.fetch("1")
    with pytest.raises(UsageError):
        async with mj:
            pass


# ---- secrets and logs -------------------------------------------------------------------------


async def test_key_never_appears(caplog: pytest.LogCaptureFixture) -> None:
    """The key is absent from reprs, errors (even echoed bodies) and log records."""
    caplog.set_level(logging.DEBUG, logger="quickmj")
    errors: list[BaseException] = []
    with aioresponses() as m:
        m.get(f"{BASE}/mj/task/1/fetch", status=401, body=f"bad token {KEY}")
        m.get(f"{BASE}/mj/task/2/fetch", status=502, body=f"<html>{KEY}</html>", repeat=True)
        m.get(f"{BASE}/mj/task/3/fetch", body=f"<html>{KEY}</html>")
        m.post(
            f"{BASE}/mj/submit/imagine", payload={"code": 4, "description": f"bad key {KEY[:3]}"}
        )
        async with client(retry=RetryPolicy(max_attempts=1)) as mj:
            for call in (mj.fetch("1"), mj.fetch("2"), mj.fetch("3"), mj.imagine("x")):
                try:
                    await call
                except QuickMJError as exc:
                    errors.append(exc)
            text = repr(mj) + str(mj._transport) + repr(mj._transport._key)
    assert 4 == len(errors)
    text += "".join(f"{e!s}{e!r}{getattr(e, 'body', '')}" for e in errors)
    text += "".join(r.getMessage() for r in caplog.records)
    assert KEY not in text
    assert any("GET /task/1/fetch -> 401" in r.getMessage() for r in caplog.records)


# ---- downloads --------------------------------------------------------------------------------


@pytest.fixture
async def image_servers() -> AsyncIterator[dict[str, Any]]:
    """Two real local origins: 127.0.0.1 (the relay) and localhost (a CDN)."""
    seen: list[tuple[str, str | None]] = []

    async def image(request: web.Request) -> web.StreamResponse:
        seen.append((request.host, request.headers.get("Authorization")))
        if request.query.get("redirect"):
            raise web.HTTPFound(request.query["redirect"])
        if request.query.get("cut"):
            resp = web.StreamResponse(
                headers={"Content-Type": "image/png", "Content-Length": "100000"}
            )
            await resp.prepare(request)
            await resp.write(PNG)
            request.transport.close()  # type: ignore[union-attr]
            return resp
        return web.Response(body=PNG, content_type="image/png")

    runners = []
    ports = []
    for host in ("127.0.0.1", "localhost"):
        app = web.Application()
        app.router.add_get("/img/{name}", image)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, 0)
        await site.start()
        ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        runners.append(runner)
    yield {
        "relay": f"http://127.0.0.1:{ports[0]}",
        "cdn": f"http://localhost:{ports[1]}",
        "seen": seen,
    }
    for runner in runners:
        await runner.cleanup()


async def test_download_sends_key_only_to_the_relay(
    image_servers: dict[str, Any], tmp_path: Path
) -> None:
    """Same-origin images get the auth header; a CDN, or a redirect to one, never does."""
    from quickmj import Task

    relay, cdn, seen = image_servers["relay"], image_servers["cdn"], image_servers["seen"]
    async with AsyncClient(KEY, base_url=relay, retry=NO_WAIT) as mj:
        p1 = await mj.download(Task(id="a1", image_url=f"{relay}/img/x.png"), tmp_path)
        p2 = await mj.download(Task(id="b2", image_url=f"{cdn}/img/y.png"), tmp_path)
        p3 = await mj.download(
            Task(id="c3", image_url=f"{relay}/img/z?redirect={cdn}/img/w"), tmp_path
        )
    assert [tmp_path / "a1.png", tmp_path / "b2.png", tmp_path / "c3.png"] == [p1, p2, p3]
    assert PNG == p1.read_bytes()
    auth = [a for _, a in seen]
    assert [f"Bearer {KEY}", None, f"Bearer {KEY}", None] == auth


async def test_download_names_are_safe_and_writes_atomic(
    image_servers: dict[str, Any], tmp_path: Path
) -> None:
    """Ids with separators stay inside dest; a cut-off download leaves no file behind."""
    from quickmj import Task, TransportError

    relay = image_servers["relay"]
    async with AsyncClient(KEY, base_url=relay, retry=RetryPolicy(max_attempts=1)) as mj:
        path = await mj.download(
            Task(id="../../etc/passwd", image_url=f"{relay}/img/a.png"), tmp_path
        )
        with pytest.raises(TransportError):
            await mj.download(Task(id="cut", image_url=f"{relay}/img/b.png?cut=1"), tmp_path)
        for url in ("file:///etc/passwd", "javascript:alert(1)"):
            with pytest.raises(UnsafeURLError):
                await mj.download(Task(id="u", image_url=url), tmp_path)
    assert tmp_path == path.parent
    assert "etc_passwd.png" == path.name
    assert ["etc_passwd.png"] == sorted(os.listdir(tmp_path))
