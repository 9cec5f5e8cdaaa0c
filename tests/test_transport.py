"""The HTTP layer: status mapping, bad bodies, retries, Retry-After, paths, the real wire."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import re
import socket
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aioresponses import aioresponses
from conftest import Serve, load_fixture

from quickmj import (
    AsyncClient,
    AuthenticationError,
    ConnectError,
    HTTPStatusError,
    MalformedResponseError,
    NotFoundError,
    QueueFullError,
    RateLimitError,
    RelatedTaskNotFoundError,
    RequestTimeoutError,
    RetryPolicy,
    ServerError,
    SubmitOutcomeUnknownError,
    TaskNotFoundError,
    Timeouts,
    TransportError,
    ValidationError,
    __version__,
)
from quickmj._transport import parse_retry_after

BASE = "http://relay.test"
KEY = "sk-transport-key-0123456789"
FETCH = f"{BASE}/mj/task/1/fetch"
LIST = f"{BASE}/mj/task/list-by-condition"
IMAGINE = f"{BASE}/mj/submit/imagine"
OK = {"code": 1, "description": "提交成功", "result": "1730621826053999", "properties": {}}
TASK = {"id": "1", "status": "SUCCESS", "progress": "100%"}


def client(**kwargs: Any) -> AsyncClient:
    kwargs.setdefault("retry", RetryPolicy(backoff=0, max_backoff=0, max_attempts=3))
    return AsyncClient(KEY, base_url=kwargs.pop("base_url", BASE), **kwargs)


def count(m: aioresponses, method: str, url: str) -> int:
    return sum(
        len(calls) for (meth, u), calls in m.requests.items() if (meth, str(u)) == (method, url)
    )


class SleepSpy:
    """Stands in for the transport's sleep: records each delay, returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def spy_on(mj: AsyncClient) -> SleepSpy:
    spy = SleepSpy()
    mj._transport._sleep = spy
    return spy


def connect_error() -> aiohttp.ClientConnectorError:
    """What aiohttp raises when nothing listens (built without a network)."""
    key = aiohttp.client_reqrep.ConnectionKey("relay.test", 80, False, True, None, None, None)
    return aiohttp.ClientConnectorError(key, OSError(111, "Connection refused"))


# ---- HTTP status mapping --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (401, "Authorization header missing.", AuthenticationError),
        (401, "", AuthenticationError),
        (403, "账号不可用", AuthenticationError),
        (403, '{"error": {"message": "invalid token"}}', AuthenticationError),
        (401, '{"code": 401, "message": "invalid token"}', AuthenticationError),
        (403, '{"success": false, "code": -1, "message": "账号已禁用"}', AuthenticationError),
        (400, '{"success": false, "code": "E42", "message": "odd"}', HTTPStatusError),
        (400, '{"code": "BAD_REQUEST"}', HTTPStatusError),
        (404, "404 page not found", NotFoundError),
        (400, "Bad Request", HTTPStatusError),
        (405, "", HTTPStatusError),
        (500, '{"success": false, "code": -1, "message": "操作失败"}', ServerError),
        (502, "<html><h1>502 Bad Gateway</h1></html>", ServerError),
        (503, "", ServerError),
    ],
)
async def test_http_statuses_map_to_errors(status: int, body: str, error: type[Exception]) -> None:
    """Non-2xx answers without a relay code become typed errors keeping status and body."""
    with aioresponses() as m:
        m.post(LIST, status=status, body=body, repeat=True)
        async with client(retry=RetryPolicy(max_attempts=1)) as mj:
            with pytest.raises(error) as info:
                await mj.list_tasks(["1"])
    err = info.value
    assert type(err) is error
    assert (status, "/task/list-by-condition") == (err.status, err.path)  # type: ignore[attr-defined]
    assert body.strip() == err.body  # type: ignore[attr-defined]


async def test_auth_errors_point_at_the_key() -> None:
    """401 says what to check; it is never retried."""
    with aioresponses() as m:
        m.get(FETCH, status=401, body="Authorization header missing.", repeat=True)
        m.post(IMAGINE, status=403, body="", repeat=True)
        async with client() as mj:
            with pytest.raises(AuthenticationError, match=r"API key.*auth_scheme") as info:
                await mj.fetch("1")
            with pytest.raises(AuthenticationError):
                await mj.imagine("x")
        assert (1, 1) == (count(m, "GET", FETCH), count(m, "POST", IMAGINE))
    assert "Authorization header missing." in str(info.value)


async def test_relay_code_on_a_4xx_is_a_rejection() -> None:
    """HTTP 404 with {code: 3} and 400 with {code: 4} carry relay codes, not bare statuses."""
    with aioresponses() as m:
        m.post(
            f"{BASE}/mj/submit/action",
            status=404,
            payload={"code": 3, "description": "关联任务不存在或已失效"},
        )
        m.post(IMAGINE, status=400, payload={"code": 4, "description": "unknown_action"})
        async with client() as mj:
            with pytest.raises(RelatedTaskNotFoundError) as related:
                await mj.action("9", "MJ::JOB::upsample::1::h")
            with pytest.raises(ValidationError) as invalid:
                await mj.imagine("x")
    assert (404, 3) == (related.value.status, related.value.code)
    assert (400, 4, "unknown_action") == (
        invalid.value.status,
        invalid.value.code,
        invalid.value.description,
    )


@pytest.mark.parametrize(
    ("header", "expected"),
    [("7", 7.0), ("0.5", 0.5), ("-3", 0.0), (None, None), ("soon", None), ("", None)],
)
async def test_rate_limit_retry_after_seconds(header: str | None, expected: float | None) -> None:
    """429 keeps the Retry-After hint in seconds (None when absent or unreadable)."""
    headers = {"Retry-After": header} if header is not None else {}
    with aioresponses() as m:
        m.get(FETCH, status=429, headers=headers)
        async with client(retry=RetryPolicy(max_attempts=1)) as mj:
            with pytest.raises(RateLimitError) as info:
                await mj.fetch("1")
    assert expected == info.value.retry_after
    assert 429 == info.value.status


async def test_rate_limit_retry_after_http_date() -> None:
    """Retry-After as an HTTP date becomes the seconds until then."""
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    with aioresponses() as m:
        m.get(FETCH, status=429, headers={"Retry-After": when})
        async with client(retry=RetryPolicy(max_attempts=1)) as mj:
            with pytest.raises(RateLimitError) as info:
                await mj.fetch("1")
    assert info.value.retry_after is not None
    assert 115 <= info.value.retry_after <= 120


def test_parse_retry_after() -> None:
    """Seconds, past dates (0) and junk."""
    assert 12.0 == parse_retry_after(" 12 ")
    assert 0.0 == parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT")
    assert parse_retry_after("nan") is None
    assert parse_retry_after("Mon, 99 Foo 2015") is None


async def test_server_error_body_is_truncated() -> None:
    """A huge HTML error page is kept as a short excerpt; the message stays short."""
    page = "<html><body><h1>502 Bad Gateway</h1>" + "x" * 20_000 + "</body></html>"
    with aioresponses() as m:
        m.get(FETCH, status=502, body=page)
        async with client(retry=RetryPolicy(max_attempts=1)) as mj:
            with pytest.raises(ServerError) as info:
                await mj.fetch("1")
    err = info.value
    assert err.body.startswith("<html><body><h1>502 Bad Gateway</h1>xxx")
    assert 500 < len(err.body) < 560 and "more characters]" in err.body
    assert len(str(err)) < 300


# ---- bodies that are not what the protocol promises ------------------------------------------


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("<!DOCTYPE html><html>maintenance</html>", "HTML"),
        ("  <html>login</html>", "HTML"),
        ("{not json", "invalid JSON"),
        ('{"code": 1,', "invalid JSON"),
        (b"\xff\xfe\xfa\x00", "invalid JSON"),
        (b'{"code": 1, "result": "\xff\xfe"}', "invalid JSON"),
        # aioresponses + aiohttp 3.14 cannot mock bodies over 128 KiB; 100 KB nests plenty.
        ("[" * 50_000 + "]" * 50_000, "invalid JSON"),
        ("", "empty body"),
        ("null", "null"),
        ("[]", "list"),
        ('"1730621826053455"', "str"),
        ("1730621826053455", "int"),
        (json.dumps(load_fixture("action_openai_shaped")), "code, description, result"),
        (json.dumps({"code": 1, "description": "提交成功"}), "no task id"),
        (json.dumps({"code": "1", "result": {"id": 1}}), "result"),
    ],
)
async def test_malformed_submit_answers(body: Any, match: str) -> None:
    """HTML, broken JSON, non-UTF-8, absurd nesting or a wrong shape: MalformedResponseError."""
    with aioresponses() as m:
        m.post(IMAGINE, body=body)
        async with client() as mj:
            with pytest.raises(MalformedResponseError, match=match) as info:
                await mj.imagine("x")
        assert 1 == count(m, "POST", IMAGINE)  # the relay answered: nothing to retry
    assert isinstance(info.value, ValueError)


async def test_malformed_answer_keeps_status_and_excerpt() -> None:
    """The error carries the HTTP status, the path and the start of the body."""
    with aioresponses() as m:
        m.get(FETCH, body="<html><title>Cloudflare</title></html>")
        async with client() as mj:
            with pytest.raises(MalformedResponseError) as info:
                await mj.fetch("1")
    err = info.value
    assert (200, "/task/1/fetch") == (err.status, err.path)
    assert "Cloudflare" in err.body and "Cloudflare" in str(err)


async def test_deep_but_legal_json_is_fine() -> None:
    """Nesting inside properties that JSON allows is kept, not refused."""
    nested: Any = "leaf"
    for _ in range(200):
        nested = {"n": nested}
    with aioresponses() as m:
        m.get(FETCH, payload={"id": "1", "properties": {"deep": nested}})
        async with client() as mj:
            task = await mj.fetch("1")
    assert "deep" in task.properties


async def test_oversized_answer_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """An answer over the size cap is not read (Content-Length known)."""
    monkeypatch.setattr("quickmj._transport.MAX_JSON_BYTES", 1000)
    with aioresponses() as m:
        m.get(FETCH, body=json.dumps({"id": "1", "prompt": "x" * 5000}))
        async with client() as mj:
            with pytest.raises(MalformedResponseError, match="larger than 1000 bytes"):
                await mj.fetch("1")
        assert 1 == count(m, "GET", FETCH)


async def test_oversized_chunked_answer_is_refused(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a Content-Length the cap applies while streaming."""
    monkeypatch.setattr("quickmj._transport.MAX_JSON_BYTES", 100_000)
    sent: list[int] = []

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b'{"id": "1", "prompt": "')
        for _ in range(50):
            await resp.write(b"x" * 10_000)
            sent.append(10_000)
        await resp.write(b'"}')
        return resp

    app = web.Application()
    app.router.add_get("/mj/task/1/fetch", endless)
    relay = await serve(app)
    async with client(base_url=relay) as mj:
        with pytest.raises(MalformedResponseError, match="larger than 100000 bytes"):
            await mj.fetch("1")


# ---- retries ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        {"status": 502, "body": "<html>bad gateway</html>"},
        {"status": 503, "body": ""},
        {"status": 429},
        {"exception": aiohttp.ServerDisconnectedError()},
        {"exception": aiohttp.ClientPayloadError("cut")},
        {"exception": connect_error()},
        {"exception": aiohttp.ConnectionTimeoutError()},
        {"exception": aiohttp.SocketTimeoutError()},
        {"exception": asyncio.TimeoutError()},
    ],
)
async def test_reads_retry_a_transient_failure(failure: dict[str, Any]) -> None:
    """A read survives one transient failure: two requests, then the task."""
    for method, url, call in [
        ("GET", FETCH, lambda mj: mj.fetch("1")),
        ("POST", LIST, lambda mj: mj.list_tasks(["1"])),
        ("GET", f"{BASE}/mj/task/1/image-seed", lambda mj: mj.image_seed("1")),
    ]:
        with aioresponses() as m:
            answer: Any = [TASK] if url == LIST else TASK
            if "image-seed" in url:
                answer = {"code": 1, "result": "42"}
            m.add(url, method, **failure)
            m.add(url, method, payload=answer)
            async with client() as mj:
                spy = spy_on(mj)
                assert await call(mj)
            assert 2 == count(m, method, url)
            assert 1 == len(spy.delays)


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        ({"status": 503, "body": "down"}, ServerError),
        ({"status": 429}, RateLimitError),
        ({"exception": aiohttp.ServerDisconnectedError()}, TransportError),
        ({"exception": connect_error()}, ConnectError),
        ({"exception": aiohttp.SocketTimeoutError()}, RequestTimeoutError),
    ],
)
async def test_reads_give_up_after_max_attempts(failure: dict[str, Any], error: type) -> None:
    """Retries are bounded: max_attempts requests, then the last error."""
    with aioresponses() as m:
        m.get(FETCH, repeat=True, **failure)
        async with client(retry=RetryPolicy(max_attempts=3, backoff=0)) as mj:
            spy = spy_on(mj)
            with pytest.raises(error):
                await mj.fetch("1")
        assert 3 == count(m, "GET", FETCH)
    assert 2 == len(spy.delays)


async def test_one_attempt_means_no_retry() -> None:
    """RetryPolicy(max_attempts=1) disables retries."""
    with aioresponses() as m:
        m.get(FETCH, status=502, body="x", repeat=True)
        async with client(retry=RetryPolicy(max_attempts=1)) as mj:
            with pytest.raises(ServerError):
                await mj.fetch("1")
        assert 1 == count(m, "GET", FETCH)


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (404, "", NotFoundError),
        (400, "bad", HTTPStatusError),
        (401, "", AuthenticationError),
        (200, "<html>", MalformedResponseError),
    ],
)
async def test_definite_answers_are_not_retried(
    status: int, body: str, error: type[Exception]
) -> None:
    """4xx and malformed 200s are answers, not transient failures: one request."""
    with aioresponses() as m:
        m.post(LIST, status=status, body=body, repeat=True)
        async with client() as mj:
            with pytest.raises(error):
                await mj.list_tasks(["1"])
        assert 1 == count(m, "POST", LIST)


async def test_retry_after_is_honoured() -> None:
    """The relay's Retry-After replaces the computed backoff (seconds and HTTP-date)."""
    when = email.utils.formatdate(time.time() + 60, usegmt=True)
    with aioresponses() as m:
        m.get(FETCH, status=429, headers={"Retry-After": "7"})
        m.get(FETCH, status=429, headers={"Retry-After": when})
        m.get(FETCH, status=502, body="x")
        m.get(FETCH, payload=TASK)
        policy = RetryPolicy(max_attempts=4, backoff=0.01, max_backoff=120, jitter=0)
        async with client(retry=policy) as mj:
            spy = spy_on(mj)
            await mj.fetch("1")
    assert 3 == len(spy.delays)
    assert 7.0 == spy.delays[0]
    assert 55 <= spy.delays[1] <= 60
    assert 0.04 == pytest.approx(spy.delays[2])  # no hint: exponential backoff


async def test_retry_after_is_capped_by_max_backoff() -> None:
    """A huge Retry-After is bounded by RetryPolicy.max_backoff."""
    with aioresponses() as m:
        m.get(FETCH, status=429, headers={"Retry-After": "3600"})
        m.get(FETCH, payload=TASK)
        async with client(retry=RetryPolicy(max_backoff=2.5)) as mj:
            spy = spy_on(mj)
            await mj.fetch("1")
    assert [2.5] == spy.delays


async def test_backoff_doubles() -> None:
    """Without jitter the delays are backoff * 2**n, up to max_backoff."""
    with aioresponses() as m:
        m.get(FETCH, status=503, body="", repeat=True)
        policy = RetryPolicy(max_attempts=5, backoff=0.1, max_backoff=0.5, jitter=0)
        async with client(retry=policy) as mj:
            spy = spy_on(mj)
            with pytest.raises(ServerError):
                await mj.fetch("1")
    assert [0.1, 0.2, 0.4, 0.5] == pytest.approx(spy.delays)


def test_jitter_stays_in_its_band() -> None:
    """Jitter spreads a delay within +/- jitter of the base."""
    policy = RetryPolicy(backoff=1.0, jitter=0.5)
    delays = [policy.delay(1) for _ in range(200)]
    assert all(0.5 <= d <= 1.5 for d in delays)
    assert len(set(delays)) > 1


async def test_default_sleep_really_waits_briefly() -> None:
    """Without a spy the transport sleeps for real (a tiny backoff keeps this fast)."""
    with aioresponses() as m:
        m.get(FETCH, status=503, body="")
        m.get(FETCH, payload=TASK)
        async with client(retry=RetryPolicy(backoff=0.05, jitter=0)) as mj:
            started = time.monotonic()
            await mj.fetch("1")
    assert 0.04 <= time.monotonic() - started < 1.0


# ---- submits and retries ---------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_submit_is_not_retried_after_a_5xx(status: int) -> None:
    """A 5xx on submit may hide a created job: one request, SubmitOutcomeUnknownError."""
    with aioresponses() as m:
        m.post(IMAGINE, status=status, body="<html>gateway</html>", repeat=True)
        async with client() as mj:
            spy = spy_on(mj)
            with pytest.raises(SubmitOutcomeUnknownError) as info:
                await mj.imagine("a cat", state="order-7")
        assert 1 == count(m, "POST", IMAGINE)
    err = info.value
    assert isinstance(err.__cause__, ServerError)
    assert status == err.__cause__.status
    assert "order-7" == err.state
    assert "a cat" == err.request.prompt and "order-7" == err.request.state
    assert ("POST", "/submit/imagine") == (err.method, err.path)
    assert "may or may not" in str(err)
    assert isinstance(err, TransportError)
    assert [] == spy.delays


@pytest.mark.parametrize(
    ("exception", "cause"),
    [
        (aiohttp.ServerDisconnectedError(), TransportError),
        (aiohttp.ClientPayloadError("cut"), TransportError),
        (aiohttp.SocketTimeoutError(), RequestTimeoutError),
    ],
)
async def test_submit_is_not_retried_after_a_dropped_answer(
    exception: Exception, cause: type
) -> None:
    """A connection lost after sending is an unknown outcome, never re-sent."""
    with aioresponses() as m:
        m.post(f"{BASE}/mj/submit/action", exception=exception, repeat=True)
        async with client() as mj:
            with pytest.raises(SubmitOutcomeUnknownError) as info:
                await mj.action("1", "MJ::JOB::upsample::1::h", state="s1")
        assert 1 == count(m, "POST", f"{BASE}/mj/submit/action")
    assert isinstance(info.value.__cause__, cause)
    assert "s1" == info.value.state
    assert "MJ::JOB::upsample::1::h" == info.value.request.custom_id


@pytest.mark.parametrize("exception", [connect_error(), aiohttp.ConnectionTimeoutError()])
async def test_submit_retried_after_a_connect_failure(exception: Exception) -> None:
    """A failed connect sent nothing, so the submit is retried."""
    with aioresponses() as m:
        m.post(IMAGINE, exception=exception)
        m.post(IMAGINE, payload=OK)
        async with client() as mj:
            result = await mj.imagine("x")
        assert 2 == count(m, "POST", IMAGINE)
    assert result.ok


async def test_submit_connect_failure_is_bounded() -> None:
    """A relay that stays unreachable ends in ConnectError (also a ConnectionError)."""
    with aioresponses() as m:
        m.post(IMAGINE, exception=connect_error(), repeat=True)
        async with client() as mj:
            with pytest.raises(ConnectError) as info:
                await mj.imagine("x")
        assert 3 == count(m, "POST", IMAGINE)
    assert isinstance(info.value, ConnectionError)


@pytest.mark.parametrize(
    "rejection",
    [
        {"status": 429, "headers": {"Retry-After": "1"}},
        {"payload": {"code": 23, "description": "队列已满，请稍后尝试"}},
        {"payload": {"code": 9, "description": "提交失败，队列已满，请稍后重试"}},
    ],
)
async def test_busy_submits_retried_only_when_enabled(rejection: dict[str, Any]) -> None:
    """429 and queue-full submits are raised by default, retried with retry_submits=True."""
    error = RateLimitError if "status" in rejection else QueueFullError
    with aioresponses() as m:
        m.post(IMAGINE, **rejection)
        async with client() as mj:
            with pytest.raises(error):
                await mj.imagine("x")
        assert 1 == count(m, "POST", IMAGINE)
    with aioresponses() as m:
        m.post(IMAGINE, **rejection)
        m.post(IMAGINE, payload=OK)
        policy = RetryPolicy(backoff=0, max_backoff=0, retry_submits=True)
        async with client(retry=policy) as mj:
            spy_on(mj)
            assert (await mj.imagine("x")).ok
        assert 2 == count(m, "POST", IMAGINE)


async def test_busy_submit_retries_are_bounded() -> None:
    """Even with retry_submits a full queue is given up on after max_attempts."""
    with aioresponses() as m:
        m.post(IMAGINE, payload={"code": 23, "description": "队列已满"}, repeat=True)
        policy = RetryPolicy(backoff=0, max_backoff=0, retry_submits=True, max_attempts=3)
        async with client(retry=policy) as mj:
            with pytest.raises(QueueFullError):
                await mj.imagine("x")
        assert 3 == count(m, "POST", IMAGINE)


async def test_rejections_are_never_retried() -> None:
    """A validation error or banned prompt is final, even with retry_submits."""
    with aioresponses() as m:
        m.post(IMAGINE, payload={"code": 4, "description": "prompt不能为空"}, repeat=True)
        async with client(retry=RetryPolicy(backoff=0, retry_submits=True)) as mj:
            with pytest.raises(ValidationError):
                await mj.imagine("x")
        assert 1 == count(m, "POST", IMAGINE)


# ---- paths -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task_id", "raw_path"),
    [
        ("1730621826053455", "/mj/task/1730621826053455/fetch"),
        ("../../admin/x", "/mj/task/..%2F..%2Fadmin%2Fx/fetch"),
        ("a/b", "/mj/task/a%2Fb/fetch"),
        ("..", "/mj/task/%2E%2E/fetch"),
        (".", "/mj/task/%2E/fetch"),
        ("x?y=1#z", "/mj/task/x%3Fy%3D1%23z/fetch"),
        ("猫", "/mj/task/%E7%8C%AB/fetch"),
    ],
)
async def test_task_id_is_one_path_segment(task_id: str, raw_path: str) -> None:
    """Ids are percent-encoded into one segment; '..' can never climb to another route."""
    with aioresponses() as m:
        m.get(re.compile(r".*"), payload={"id": task_id})
        async with client() as mj:
            await mj.fetch(task_id)
        ((_, url),) = list(m.requests)
    assert raw_path == url.raw_path


async def test_dot_ids_stay_in_their_segment_on_the_wire(serve: Serve) -> None:
    """On a real connection too, id '..' reaches /mj/task/{id}/fetch, not /mj/fetch."""
    paths: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        paths.append(request.raw_path)
        return web.json_response({"id": request.match_info.get("id", "?")})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    relay = await serve(app)
    async with client(base_url=relay) as mj:
        await mj.fetch("..")
    assert ["/mj/task/%2E%2E/fetch"] == paths


# ---- on the wire (a real local server) ---------------------------------------------------------


async def test_wire_headers_and_body(serve: Serve) -> None:
    """What really goes out: path, JSON body, auth, User-Agent, Accept, Content-Type."""
    seen: list[dict[str, Any]] = []

    async def submit(request: web.Request) -> web.Response:
        seen.append(
            {
                "path": request.path,
                "headers": dict(request.headers),
                "body": await request.json(),
            }
        )
        return web.json_response(OK)

    app = web.Application()
    app.router.add_post("/mj-fast/mj/submit/imagine", submit)
    relay = await serve(app)
    async with client(base_url=relay, mode="fast") as mj:
        await mj.imagine("cat", state="s")
    (req,) = seen
    assert "/mj-fast/mj/submit/imagine" == req["path"]
    assert {"prompt": "cat", "state": "s"} == req["body"]
    headers = req["headers"]
    assert f"Bearer {KEY}" == headers["Authorization"]
    assert headers["User-Agent"].startswith(f"quickmj/{__version__} aiohttp/")
    assert "application/json" == headers["Accept"]
    assert headers["Content-Type"].startswith("application/json")


async def test_dropped_connection_on_a_read_is_retried(serve: Serve) -> None:
    """The server hangs up mid-answer once; the read is retried and succeeds."""
    calls: list[int] = []

    async def flaky(request: web.Request) -> web.StreamResponse:
        calls.append(1)
        if len(calls) == 1:
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.content_length = 1000
            await resp.prepare(request)
            await resp.write(b'{"id": "1", ')
            assert request.transport is not None
            request.transport.close()
            return resp
        return web.json_response(TASK)

    app = web.Application()
    app.router.add_get("/mj/task/1/fetch", flaky)
    relay = await serve(app)
    async with client(base_url=relay) as mj:
        task = await mj.fetch("1")
    assert ("1", 2) == (task.id, len(calls))


async def test_dropped_connection_on_a_submit_is_not_resent(serve: Serve) -> None:
    """The server takes the submit and hangs up: unknown outcome, exactly one request."""
    calls: list[Any] = []

    async def hang_up(request: web.Request) -> web.StreamResponse:
        calls.append(await request.json())
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    app = web.Application()
    app.router.add_post("/mj/submit/imagine", hang_up)
    relay = await serve(app)
    async with client(base_url=relay) as mj:
        with pytest.raises(SubmitOutcomeUnknownError) as info:
            await mj.imagine("x", state="once")
    assert [{"prompt": "x", "state": "once"}] == calls
    assert "once" == info.value.state


async def test_read_timeout(serve: Serve) -> None:
    """A relay that does not answer in time: RequestTimeoutError for reads (after retries),
    SubmitOutcomeUnknownError for submits (sent once)."""
    calls: list[str] = []

    async def slow(request: web.Request) -> web.Response:
        calls.append(request.path)
        await asyncio.sleep(1)
        return web.json_response(TASK)

    app = web.Application()
    app.router.add_get("/mj/task/1/fetch", slow)
    app.router.add_post("/mj/submit/imagine", slow)
    relay = await serve(app)
    timeouts = Timeouts(read=0.05)
    retry = RetryPolicy(max_attempts=2, backoff=0, max_backoff=0)
    async with client(base_url=relay, timeouts=timeouts, retry=retry) as mj:
        with pytest.raises(RequestTimeoutError) as read:
            await mj.fetch("1")
        with pytest.raises(SubmitOutcomeUnknownError) as submit:
            await mj.imagine("x")
    assert ["/mj/task/1/fetch", "/mj/task/1/fetch", "/mj/submit/imagine"] == calls
    assert isinstance(read.value, TimeoutError)
    assert isinstance(submit.value.__cause__, RequestTimeoutError)


async def test_unreachable_relay_is_a_connect_error() -> None:
    """Nothing listening: ConnectError after the configured attempts."""
    with socket.socket() as sock:  # a port that was free a moment ago
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with client(base_url=f"http://127.0.0.1:{port}") as mj:
        spy = spy_on(mj)
        with pytest.raises(ConnectError) as info:
            await mj.fetch("1")
    assert 2 == len(spy.delays)
    assert isinstance(info.value, ConnectionError)


async def test_api_redirects_are_not_followed(serve: Serve) -> None:
    """A redirect on an API call is an error naming it; the target never sees the request."""
    other_calls: list[str | None] = []

    async def other(request: web.Request) -> web.Response:
        other_calls.append(request.headers.get("Authorization"))
        return web.json_response(TASK)

    other_app = web.Application()
    other_app.router.add_route("*", "/{tail:.*}", other)
    target = await serve(other_app, "localhost")

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently(f"{target}{request.path}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", moved)
    relay = await serve(app)
    async with client(base_url=relay) as mj:
        with pytest.raises(HTTPStatusError, match=r"redirect.*301") as read:
            await mj.fetch("1")
        with pytest.raises(HTTPStatusError, match="redirect"):
            await mj.list_tasks(["1"])
        with pytest.raises(HTTPStatusError, match="redirect"):
            await mj.imagine("x")
    assert [] == other_calls
    assert not isinstance(read.value, TaskNotFoundError)
    assert 301 == read.value.status


# ---- logging ---------------------------------------------------------------------------------


async def test_one_debug_record_per_request(caplog: pytest.LogCaptureFixture) -> None:
    """Each request logs method, path and status at DEBUG on the 'quickmj' logger."""
    caplog.set_level(logging.DEBUG, logger="quickmj")
    with aioresponses() as m:
        m.get(FETCH, status=502, body="x")
        m.get(FETCH, payload=TASK)
        m.post(IMAGINE, payload=OK)
        m.post(LIST, exception=aiohttp.ServerDisconnectedError())
        m.post(LIST, payload=[])
        async with client() as mj:
            await mj.fetch("1")
            await mj.imagine("x")
            await mj.list_tasks(["1"])
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "quickmj" and r.levelno == logging.DEBUG and " -> " in r.getMessage()
    ]
    requests = [re.sub(r" in [\d.]+ ms$", "", line) for line in lines if " ms" in line]
    assert [
        "GET /task/1/fetch -> 502",
        "GET /task/1/fetch -> 200",
        "POST /submit/imagine -> 200",
        "POST /task/list-by-condition -> error",
        "POST /task/list-by-condition -> 200",
    ] == requests
    assert any("retrying GET /task/1/fetch" in r.getMessage() for r in caplog.records)
