"""The HTTP layer over MockTransport: requests, status mapping, bodies, retries, deadlines.

Everything here runs through ``AsyncClient(transport=MockTransport(...))``: what quickmj
puts on the wire (URL, headers, body, timeouts), what it makes of every answer, what it
retries and what it never sends twice. aiohttp-level behaviour lives in
``test_aiohttp_transport.py``.
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import json
import logging
import re
import sys
import time
import tracemalloc
import zlib
from typing import Any

import pytest
from conftest import load_fixture
from fakes import BASE, KEY, NO_WAIT, Script, drip, spy_on

from quickmj import (
    AuthenticationError,
    ClientClosedError,
    ConnectError,
    HTTPStatusError,
    InvalidInputError,
    MalformedResponseError,
    NotFoundError,
    QueueFullError,
    RateLimitError,
    RelatedTaskNotFoundError,
    Request,
    RequestTimeoutError,
    Response,
    RetryPolicy,
    ServerError,
    SubmitOutcomeUnknownError,
    SubmitRejectedError,
    TaskNotFoundError,
    Timeouts,
    TransportError,
    UnsupportedByRelayError,
    ValidationError,
    __version__,
)
from quickmj._protocol import parse_retry_after
from quickmj._transport import Headers, read_all
from quickmj.testing import MockTransport

FETCH = "GET /mj/task/1/fetch"
LIST = "POST /mj/task/list-by-condition"
SEED = "GET /mj/task/1/image-seed"
IMAGINE = "POST /mj/submit/imagine"
ACTION = "POST /mj/submit/action"
OK = {"code": 1, "description": "提交成功", "result": "1730621826053999", "properties": {}}
TASK = {"id": "1", "status": "SUCCESS", "progress": "100%"}
ONCE = RetryPolicy(max_attempts=1)


# ---- the transport seam's own types -----------------------------------------------------------


def test_headers_are_case_insensitive_and_hide_credentials() -> None:
    """Headers look up any case, compare like a dict, and never show a credential."""
    headers = Headers({"Authorization": f"Bearer {KEY}", "mj-api-secret": KEY, "X-A": "1"})
    assert "1" == headers["x-a"] == headers["X-A"]
    assert "authorization" in headers and "Nope" not in headers
    assert {"authorization": f"Bearer {KEY}", "MJ-API-SECRET": KEY, "x-a": "1"} == headers
    assert KEY not in repr(headers) and "'X-A': '1'" in repr(headers)
    assert "echo *** and ***" == headers.redact(f"echo Bearer {KEY} and {KEY}")
    assert {"Authorization": f"Bearer {KEY}", "mj-api-secret": KEY, "X-A": "1"} == headers.raw()


def test_request_path_and_json() -> None:
    """Request.path drops scheme, host and query; json() parses the body (None without)."""
    request = Request("POST", "http://h.test:8080/mj/task/a%2Fb/fetch?x=1", content=b'{"a": 1}')
    assert "/mj/task/a%2Fb/fetch" == request.path
    assert {"a": 1} == request.json()
    assert Request("GET", "http://h.test").json() is None
    assert "/" == Request("GET", "http://h.test").path


async def test_response_forms() -> None:
    """A Response is built from json=, content= or stream=, and closes once."""
    closed: list[int] = []
    by_json = Response(200, json={"a": "猫"}, on_close=lambda: closed.append(1))
    assert "application/json" == by_json.headers["content-type"]
    assert {"a": "猫"} == json.loads(await read_all(by_json, 100, "x"))
    await by_json.aclose()
    await by_json.aclose()
    assert [1] == closed

    async def chunks() -> Any:
        yield b"ab"
        yield b"cd"

    assert b"abcd" == await read_all(Response(200, stream=chunks()), 100, "x")
    assert b"" == await read_all(Response(204), 100, "x")
    assert "<Response [204]>" == repr(Response(204))


async def test_mock_transport_records_requests_and_checks_answers() -> None:
    """MockTransport keeps every request and refuses a handler that returns no Response."""
    transport = MockTransport(lambda request: "not a response")  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="not Response"):
        await transport.handle_request(Request("GET", "http://h.test/x"))
    assert 1 == len(transport.requests)
    await transport.aclose()
    assert transport.closed


# ---- what goes on the wire ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fast", "relax", "turbo"])
async def test_mode_prefixes_every_route(mode: Any) -> None:
    """mode= becomes the /mj-<mode>/mj path prefix for submits and reads alike."""
    prefix = f"/mj-{mode}/mj"
    script = Script(
        {
            f"POST {prefix}/submit/imagine": {"json": OK},
            f"GET {prefix}/task/1/fetch": {"json": {"id": "1"}},
            f"POST {prefix}/task/list-by-condition": {"json": [{"id": "1"}]},
            f"GET {prefix}/task/1/image-seed": {"json": {"code": 1, "result": "5"}},
        }
    )
    async with script.client(mode=mode) as mj:
        await mj.imagine("x")
        await mj.fetch("1")
        await mj.fetch_many(["1"])
        await mj.image_seed("1")
    assert [
        f"POST {prefix}/submit/imagine",
        f"GET {prefix}/task/1/fetch",
        f"POST {prefix}/task/list-by-condition",
        f"GET {prefix}/task/1/image-seed",
    ] == script.calls
    assert all(r.url.startswith(f"{BASE}{prefix}/") for r in script.requests)


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
    script = Script({FETCH: {"json": {"id": "1"}}, IMAGINE: {"json": OK}})
    async with script.client(auth_scheme=scheme) as mj:
        await mj.fetch("1")
        await mj.imagine("x")
    for request in script.requests:
        assert present == {k: request.headers[k] for k in present}
        assert absent not in request.headers


@pytest.mark.parametrize(
    ("dialect", "header", "value"),
    [
        ("quickrouter", "Authorization", f"Bearer {KEY}"),
        ("auto", "Authorization", f"Bearer {KEY}"),
        ("midjourney-proxy", "mj-api-secret", KEY),
        ("trueai", "mj-api-secret", KEY),
    ],
)
async def test_dialect_picks_the_auth_header(dialect: Any, header: str, value: str) -> None:
    """Without auth_scheme the header is the one the dialect's server reads."""
    script = Script({FETCH: {"json": {"id": "1"}}})
    async with script.client(dialect=dialect) as mj:
        await mj.fetch("1")
    (request,) = script.requests
    assert value == request.headers[header]


async def test_standard_headers() -> None:
    """User-Agent names quickmj and Python (plus the caller's part), JSON is asked for and
    declared, gzip is accepted, and extra headers ride along on every request."""
    script = Script({FETCH: {"json": {"id": "1"}}, IMAGINE: {"json": OK}})
    async with script.client(headers={"X-Tenant": "t1"}, user_agent="myapp/1.2") as mj:
        await mj.fetch("1")
        await mj.imagine("x")
    get, post = script.requests
    python = f"python/{sys.version_info[0]}.{sys.version_info[1]}"
    assert f"quickmj/{__version__} {python} myapp/1.2" == get.headers["User-Agent"]
    assert "application/json" == get.headers["Accept"] == post.headers["Accept"]
    assert "gzip, deflate" == get.headers["Accept-Encoding"]
    assert "t1" == get.headers["X-Tenant"] == post.headers["X-Tenant"]
    assert "Content-Type" not in get.headers and get.content is None
    assert "application/json" == post.headers["Content-Type"]
    assert {"prompt": "x"} == post.json()


async def test_json_bodies_keep_unicode() -> None:
    """Prompts travel as UTF-8 JSON, not as \\u escapes."""
    script = Script({IMAGINE: {"json": OK}})
    async with script.client() as mj:
        await mj.imagine("一只猫")
    assert "一只猫".encode() in (script.requests[0].content or b"")


async def test_timeouts_reach_the_transport() -> None:
    """connect/read timeouts are handed to the transport; image-seed gets its own read
    timeout (relays block up to a minute there)."""
    script = Script({FETCH: {"json": {"id": "1"}}, SEED: {"json": {"code": 1, "result": "7"}}})
    timeouts = Timeouts(connect=3, read=4, image_seed=50)
    async with script.client(timeouts=timeouts) as mj:
        await mj.fetch("1")
        await mj.image_seed("1")
    fetch, seed = script.requests
    assert (3, 4) == (fetch.connect_timeout, fetch.read_timeout)
    assert (3, 50) == (seed.connect_timeout, seed.read_timeout)


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
    script = Script({f"GET {raw_path}": {"json": {"id": task_id}}})
    async with script.client() as mj:
        assert task_id == (await mj.fetch(task_id)).id
    assert [f"{BASE}{raw_path}"] == [r.url for r in script.requests]


@pytest.mark.parametrize("task_id", ["\ud800", "a\udfffb", "1\n2", "tab\there", "\x00", "x" * 201])
async def test_unusable_ids_fail_before_sending(task_id: str) -> None:
    """A lone surrogate, a control character or an absurd length: InvalidInputError for the
    caller, nothing sent, for every call that takes an id."""
    script = Script()
    async with script.client() as mj:
        for call in (mj.fetch, mj.image_seed, mj.cancel, mj.wait):
            with pytest.raises(InvalidInputError):
                await call(task_id)
        with pytest.raises(InvalidInputError):
            await mj.fetch_many(["ok", task_id])
        with pytest.raises(InvalidInputError):
            await mj.list_tasks([task_id])
    assert [] == script.calls


# ---- HTTP statuses ---------------------------------------------------------------------------


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
        (404, "404 page not found", UnsupportedByRelayError),
        (404, "", UnsupportedByRelayError),
        (400, "Bad Request", HTTPStatusError),
        (405, "", UnsupportedByRelayError),  # no such method here: not the relay
        (501, "<html>Unsupported method</html>", UnsupportedByRelayError),
        (301, "", HTTPStatusError),
        (307, "moved", HTTPStatusError),
        (500, '{"success": false, "code": -1, "message": "操作失败"}', ServerError),
        (502, "<html><h1>502 Bad Gateway</h1></html>", ServerError),
        (503, "", ServerError),
    ],
)
async def test_http_statuses_map_to_errors(status: int, body: str, error: type[Exception]) -> None:
    """Non-2xx answers without a relay code become typed errors keeping status and body."""
    script = Script({LIST: {"status": status, "body": body}})
    async with script.client(retry=ONCE) as mj:
        with pytest.raises(error) as info:
            await mj.list_tasks(["1"])
    err = info.value
    assert type(err) is error
    assert (status, "/task/list-by-condition") == (err.status, err.path)  # type: ignore[attr-defined]
    assert body.strip() == err.body  # type: ignore[attr-defined]


async def test_new_api_auth_failure() -> None:
    """new-api's OpenAI-shaped 401 is an AuthenticationError with its message and request id."""
    body = {
        "error": {
            "code": "",
            "message": "无效的令牌 (request id: 20250101abcdef12)",
            "type": "new_api_error",
        }
    }
    script = Script({IMAGINE: {"status": 401, "json": body}})
    async with script.client() as mj:
        with pytest.raises(AuthenticationError, match="无效的令牌") as info:
            await mj.imagine("x")
    assert 1 == script.count(IMAGINE)
    assert (401, "20250101abcdef12") == (info.value.status, info.value.request_id)


async def test_api_errors_carry_headers_and_request_id() -> None:
    """APIError keeps the answer's headers and the relay's request id header."""
    script = Script(
        {
            FETCH: {
                "status": 400,
                "json": {"code": 4, "description": "x"},
                "headers": {"X-Oneapi-Request-Id": "req-77"},
            }
        }
    )
    async with script.client() as mj:
        with pytest.raises(ValidationError) as info:
            await mj.fetch("1")
    assert "req-77" == info.value.request_id
    assert "req-77" == info.value.headers["X-Oneapi-Request-Id"]


async def test_auth_errors_point_at_the_key() -> None:
    """401 says what to check; it is never retried."""
    script = Script(
        {FETCH: {"status": 401, "body": "Authorization header missing."}, IMAGINE: {"status": 403}}
    )
    async with script.client() as mj:
        with pytest.raises(AuthenticationError, match=r"API key.*auth_scheme") as info:
            await mj.fetch("1")
        with pytest.raises(AuthenticationError):
            await mj.imagine("x")
    assert (1, 1) == (script.count(FETCH), script.count(IMAGINE))
    assert "Authorization header missing." in str(info.value)


async def test_relay_code_on_a_4xx_is_a_rejection() -> None:
    """HTTP 404 with {code: 3} and 400 with {code: 4} carry relay codes, not bare statuses."""
    script = Script(
        {
            ACTION: {"status": 404, "json": {"code": 3, "description": "关联任务不存在或已失效"}},
            IMAGINE: {"status": 400, "json": {"code": 4, "description": "unknown_action"}},
        }
    )
    async with script.client() as mj:
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
    ("call", "route", "dialects"),
    [
        (lambda mj: mj.recent_tasks(), "GET /task/list", ("midjourney-proxy", "trueai")),
        (lambda mj: mj.cancel("1"), "POST /task/{id}/cancel", ("trueai",)),
        (lambda mj: mj.video("a fox"), "POST /submit/video", ("quickrouter", "trueai")),
        (
            lambda mj: mj.fetch("1"),
            "GET /task/{id}/fetch",
            ("quickrouter", "midjourney-proxy", "trueai"),
        ),
    ],
)
async def test_bare_404_is_a_route_the_relay_does_not_serve(
    call: Any, route: str, dialects: tuple[str, ...]
) -> None:
    """A 404 without a relay body names the route and the relays that serve it (a route
    every relay serves points at base_url); it is a NotFoundError, never 'task unknown'."""
    script = Script()
    for key in ("GET /mj/task/list", "POST /mj/task/1/cancel", "POST /mj/submit/video", FETCH):
        script.add(key, {"status": 404, "body": "404 page not found"})
    async with script.client() as mj:
        with pytest.raises(UnsupportedByRelayError) as info:
            await call(mj)
    err = info.value
    assert (route, dialects) == (err.route, err.dialects)
    assert isinstance(err, NotFoundError) and not isinstance(err, TaskNotFoundError)
    assert ("check base_url" in str(err)) == (len(dialects) == 3)
    assert 1 == len(script.calls)  # a definite answer: not retried


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("7", 7.0),
        ("0.5", 1.0),
        ("-3", 1.0),
        ("0", 1.0),
        ("999999", 60.0),
        ("inf", 60.0),
        (None, None),
        ("soon", None),
        ("", None),
    ],
)
async def test_rate_limit_retry_after_seconds(header: str | None, expected: float | None) -> None:
    """429 keeps the Retry-After hint in seconds, within 1 s to 60 s (None when absent or
    unreadable)."""
    headers = {"Retry-After": header} if header is not None else {}
    script = Script({FETCH: {"status": 429, "headers": headers}})
    async with script.client(retry=ONCE) as mj:
        with pytest.raises(RateLimitError) as info:
            await mj.fetch("1")
    assert expected == info.value.retry_after
    assert 429 == info.value.status


async def test_rate_limit_retry_after_http_date() -> None:
    """Retry-After as an HTTP date becomes the seconds until then."""
    when = email.utils.formatdate(time.time() + 50, usegmt=True)
    script = Script({FETCH: {"status": 429, "headers": {"Retry-After": when}}})
    async with script.client(retry=ONCE) as mj:
        with pytest.raises(RateLimitError) as info:
            await mj.fetch("1")
    assert info.value.retry_after is not None
    assert 45 <= info.value.retry_after <= 50


def test_parse_retry_after() -> None:
    """Seconds, past dates (the 1 s floor), far dates (the 60 s cap), NaN and junk."""
    assert 12.0 == parse_retry_after(" 12 ")
    assert 1.0 == parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT")
    assert 60.0 == parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT")
    assert 1.0 == parse_retry_after("nan")
    assert parse_retry_after("Mon, 99 Foo 2015") is None


async def test_server_error_body_is_truncated() -> None:
    """A huge HTML error page is kept as a short excerpt; the message stays short."""
    page = "<html><body><h1>502 Bad Gateway</h1>" + "x" * 20_000 + "</body></html>"
    script = Script({FETCH: {"status": 502, "body": page}})
    async with script.client(retry=ONCE) as mj:
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
        ("{not json", "invalid JSON"),
        ('{"id": "1",', "invalid JSON"),
        (b"\xff\xfe\xfa\x00", "invalid JSON"),
        ("[" * 50_000 + "]" * 50_000, "invalid JSON"),
        ("[]", "task"),
        ('"SUCCESS"', "task"),
        ('{"id": {"x": 1}}', "id"),
    ],
)
async def test_malformed_read_answers(body: Any, match: str) -> None:
    """Broken JSON, absurd nesting or a wrong shape on a read: MalformedResponseError, not
    retried (the relay answered)."""
    script = Script({FETCH: {"body": body}})
    async with script.client() as mj:
        with pytest.raises(MalformedResponseError, match=match) as info:
            await mj.fetch("1")
    assert 1 == script.count(FETCH)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        ({"body": "<!DOCTYPE html><html>maintenance</html>"}, "HTML"),
        ({"body": "{not json"}, "invalid JSON"),
        ({"body": '{"code": 1,'}, "invalid JSON"),
        ({"body": "[" * 50_000 + "]" * 50_000}, "invalid JSON"),
        ({"body": ""}, "empty body"),
        ({"body": "  \n"}, "empty body"),
        ({"status": 204}, "empty body"),
        ({"status": 201, "body": "<html>created</html>"}, "HTML"),
        ({"body": "null"}, "null"),
        ({"body": "[]"}, "list"),
        ({"body": '"1730621826053455"'}, "str"),
        ({"body": "1730621826053455"}, "int"),
        ({"json": load_fixture("action_openai_shaped")}, "code, description, result"),
        ({"json": {"code": 1, "description": "提交成功"}}, "no task id"),
        ({"json": {"code": "1", "result": {"id": 1}}}, "result"),
    ],
)
async def test_unreadable_submit_answers_are_unknown_outcomes(
    answer: dict[str, Any], match: str
) -> None:
    """An unreadable 2xx (HTML, broken JSON, empty, 204, a wrong shape) to a submit may
    hide a created job: SubmitOutcomeUnknownError, sent once, the reason kept."""
    script = Script({IMAGINE: answer})
    async with script.client() as mj:
        with pytest.raises(SubmitOutcomeUnknownError, match=match) as info:
            await mj.imagine("x", state="s-1")
    assert 1 == script.count(IMAGINE)
    err = info.value
    assert isinstance(err.__cause__, MalformedResponseError)
    assert ("s-1", "x") == (err.state, err.request.prompt)  # type: ignore[union-attr]
    assert "may or may not" in str(err)


async def test_malformed_answer_keeps_status_and_excerpt() -> None:
    """The error carries the HTTP status, the path and the start of the body."""
    script = Script({FETCH: {"body": "Cloudflare says: {oops"}})
    async with script.client() as mj:
        with pytest.raises(MalformedResponseError) as info:
            await mj.fetch("1")
    err = info.value
    assert (200, "/task/1/fetch") == (err.status, err.path)
    assert "Cloudflare" in err.body and "Cloudflare" in str(err)


@pytest.mark.parametrize(
    "page", ["<!DOCTYPE html><html>new-api dashboard</html>", "  <html>login</html>"]
)
async def test_html_page_on_a_read_is_a_route_not_served(page: str) -> None:
    """new-api answers routes it lacks with its web app (a 200 HTML page): on a read that
    page means "not served here" (UnsupportedByRelayError with the page's excerpt)."""
    script = Script({"GET /mj/task/list": {"body": page}, FETCH: {"body": page}})
    async with script.client() as mj:
        with pytest.raises(UnsupportedByRelayError, match="web page") as listing:
            await mj.recent_tasks()
        with pytest.raises(UnsupportedByRelayError, match="check base_url") as fetch:
            await mj.fetch("1")
    assert "GET /task/list" == listing.value.route
    assert (200, page.strip()) == (fetch.value.status, fetch.value.body)
    assert 1 == script.count(FETCH)


async def test_invalid_utf8_inside_json_is_repaired() -> None:
    """Bytes that are not UTF-8 inside valid JSON become U+FFFD instead of failing the read."""
    script = Script({FETCH: {"body": b'{"id": "1", "prompt": "cat \xff\xfe"}'}})
    async with script.client() as mj:
        task = await mj.fetch("1")
    assert "cat \ufffd\ufffd" == task.prompt


async def test_deep_but_legal_json_is_fine() -> None:
    """Nesting inside properties that JSON allows is kept, not refused."""
    nested: Any = "leaf"
    for _ in range(200):
        nested = {"n": nested}
    script = Script({FETCH: {"json": {"id": "1", "properties": {"deep": nested}}}})
    async with script.client() as mj:
        task = await mj.fetch("1")
    assert "deep" in task.properties


async def test_oversized_answer_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """An answer over the size cap is refused while streaming, and not retried."""
    monkeypatch.setattr("quickmj._http.MAX_JSON_BYTES", 100_000)
    chunks = [b'{"id": "1", "prompt": "', *[b"x" * 10_000] * 50, b'"}']
    script = Script({FETCH: {"chunks": chunks}})
    async with script.client() as mj:
        with pytest.raises(MalformedResponseError, match="larger than 100000 bytes"):
            await mj.fetch("1")
    assert 1 == script.count(FETCH)


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "deflate"])
async def test_compressed_answers_are_inflated(encoding: str) -> None:
    """gzip and deflate answers are inflated by quickmj itself."""
    raw = json.dumps({"id": "1", "prompt": "猫" * 1000}).encode()
    packed = zlib.compress(raw) if encoding == "deflate" else gzip.compress(raw)
    script = Script({FETCH: {"body": packed, "headers": {"Content-Encoding": encoding}}})
    async with script.client() as mj:
        assert "猫" * 1000 == (await mj.fetch("1")).prompt


@pytest.mark.parametrize(
    ("headers", "body", "match"),
    [
        ({"Content-Encoding": "gzip"}, b"\x1f\x8b\x08\x00 not really gzip", "corrupt"),
        ({"Content-Encoding": "br"}, b"\x0b\x02\x80{}\x03", "Content-Encoding"),
    ],
)
async def test_undecodable_answers_are_malformed(
    headers: dict[str, str], body: bytes, match: str
) -> None:
    """A corrupt gzip body or an encoding quickmj did not ask for is MalformedResponseError."""
    script = Script({FETCH: {"body": body, "headers": headers}})
    async with script.client() as mj:
        with pytest.raises(MalformedResponseError, match=match):
            await mj.fetch("1")


def gzip_bomb(size: int) -> bytes:
    """A gzip body of ``size`` zero bytes (a few KiB on the wire)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * (1 << 20)
    parts = [packer.compress(block) for _ in range(size >> 20)]
    return b"".join([*parts, packer.flush()])


async def test_gzip_bomb_is_refused_without_inflating_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A small gzip answer that inflates past the cap is MalformedResponseError; inflating
    stops at the cap, so memory stays bounded by it (not by the bomb)."""
    monkeypatch.setattr("quickmj._http.MAX_JSON_BYTES", 1 << 20)
    bomb = gzip_bomb(64 << 20)
    assert len(bomb) < 200_000
    headers = {"Content-Encoding": "gzip", "Content-Length": str(len(bomb))}
    script = Script({FETCH: {"body": bomb, "headers": headers}})
    async with script.client() as mj:
        tracemalloc.start()
        try:
            with pytest.raises(MalformedResponseError, match="larger than"):
                await mj.fetch("1")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 8 << 20  # 64 MiB inflated would show here
    assert 1 == script.count(FETCH)


async def test_gzip_bomb_against_the_default_cap() -> None:
    """The default 32 MiB cap refuses a bomb that inflates to 40 MiB."""
    bomb = gzip_bomb(40 << 20)
    script = Script({FETCH: {"body": bomb, "headers": {"Content-Encoding": "gzip"}}})
    async with script.client() as mj:
        with pytest.raises(MalformedResponseError, match=f"larger than {32 << 20} bytes"):
            await mj.fetch("1")


async def test_dripping_answer_ends_within_the_request_deadline() -> None:
    """A relay that sends a byte at a time (never pausing long enough for a read timeout)
    cannot hold a call past Timeouts.request: a read gets RequestTimeoutError, a submit
    an unknown outcome."""
    script = Script({FETCH: drip(), IMAGINE: drip()})
    async with script.client(timeouts=Timeouts(read=5, request=0.3), retry=ONCE) as mj:
        started = time.monotonic()
        with pytest.raises(RequestTimeoutError, match=r"within 0\.3 s"):
            await mj.fetch("1")
        read_took = time.monotonic() - started
        with pytest.raises(SubmitOutcomeUnknownError) as submit:
            await mj.imagine("x")
    assert 0.25 < read_took < 1.5
    assert isinstance(submit.value.__cause__, RequestTimeoutError)
    assert 1 == script.count(IMAGINE)


async def test_a_read_timeout_is_not_reported_as_the_request_deadline() -> None:
    """The transport's own read timeout (silence between bytes) keeps its message; it is not
    rewritten into "no complete answer within <Timeouts.request> s"."""
    silence = RequestTimeoutError(
        "GET /mj/task/1/fetch: the relay stopped sending (read timeout)",
        method="GET",
        path="/mj/task/1/fetch",
    )
    script = Script({FETCH: silence})
    async with script.client(retry=ONCE, timeouts=Timeouts(request=90)) as mj:
        with pytest.raises(RequestTimeoutError) as info:
            await mj.fetch("1")
    assert info.value is silence
    assert "within 90 s" not in str(info.value)


# ---- retries ---------------------------------------------------------------------------------


TRANSIENT: list[Any] = [
    {"status": 502, "body": "<html>bad gateway</html>"},
    {"status": 503, "body": ""},
    {"status": 429},
    {
        "status": 400,
        "json": {"code": 5, "description": "do_request_failed", "type": "upstream_error"},
    },
    TransportError("dropped", method="GET", path="/x"),
    ConnectError("refused", method="GET", path="/x"),
    RequestTimeoutError("slow", method="GET", path="/x"),
]


@pytest.mark.parametrize("failure", TRANSIENT)
async def test_reads_retry_a_transient_failure(failure: Any) -> None:
    """A read survives one transient failure (network, 5xx, 429, new-api's code 5):
    two requests, then the answer."""
    for key, call, good in [
        (FETCH, lambda mj: mj.fetch("1"), {"json": TASK}),
        (LIST, lambda mj: mj.list_tasks(["1"]), {"json": [TASK]}),
        (SEED, lambda mj: mj.image_seed("1"), {"json": {"code": 1, "result": "42"}}),
    ]:
        script = Script({key: [failure, good]})
        async with script.client() as mj:
            spy = spy_on(mj)
            assert await call(mj)
        assert 2 == script.count(key)
        assert 1 == len(spy.delays)


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        ({"status": 503, "body": "down"}, ServerError),
        ({"status": 429}, RateLimitError),
        (TransportError("dropped"), TransportError),
        (ConnectError("refused"), ConnectError),
        (RequestTimeoutError("slow"), RequestTimeoutError),
    ],
)
async def test_reads_give_up_after_max_attempts(failure: Any, error: type) -> None:
    """Retries are bounded: max_attempts requests, then the last error."""
    script = Script({FETCH: failure})
    async with script.client(retry=RetryPolicy(max_attempts=3, backoff=0)) as mj:
        spy = spy_on(mj)
        with pytest.raises(error):
            await mj.fetch("1")
    assert 3 == script.count(FETCH)
    assert 2 == len(spy.delays)


async def test_one_attempt_means_no_retry() -> None:
    """RetryPolicy(max_attempts=1) disables retries."""
    script = Script({FETCH: {"status": 502, "body": "x"}})
    async with script.client(retry=ONCE) as mj:
        with pytest.raises(ServerError):
            await mj.fetch("1")
    assert 1 == script.count(FETCH)


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (404, "", NotFoundError),
        (400, "bad", HTTPStatusError),
        (401, "", AuthenticationError),
        (200, "<html>", UnsupportedByRelayError),
        (200, "{oops", MalformedResponseError),
        (400, '{"code": 4, "description": "quota_not_enough"}', ValidationError),
    ],
)
async def test_definite_answers_are_not_retried(
    status: int, body: str, error: type[Exception]
) -> None:
    """4xx and malformed 200s are answers, not transient failures: one request."""
    script = Script({LIST: {"status": status, "body": body}})
    async with script.client() as mj:
        with pytest.raises(error):
            await mj.list_tasks(["1"])
    assert 1 == script.count(LIST)


async def test_retry_after_is_honoured() -> None:
    """The relay's Retry-After replaces the computed backoff (seconds and HTTP-date)."""
    when = email.utils.formatdate(time.time() + 60, usegmt=True)
    script = Script(
        {
            FETCH: [
                {"status": 429, "headers": {"Retry-After": "7"}},
                {"status": 429, "headers": {"Retry-After": when}},
                {"status": 502, "body": "x"},
                {"json": TASK},
            ]
        }
    )
    policy = RetryPolicy(max_attempts=4, backoff=0.01, max_backoff=120, jitter=0)
    async with script.client(retry=policy) as mj:
        spy = spy_on(mj)
        await mj.fetch("1")
    assert 3 == len(spy.delays)
    assert 7.0 == spy.delays[0]
    assert 55 <= spy.delays[1] <= 60
    assert 0.04 == pytest.approx(spy.delays[2])  # no hint: exponential backoff


async def test_retry_after_is_capped_by_max_backoff() -> None:
    """A huge Retry-After is bounded by RetryPolicy.max_backoff."""
    script = Script({FETCH: [{"status": 429, "headers": {"Retry-After": "3600"}}, {"json": TASK}]})
    async with script.client(retry=RetryPolicy(max_backoff=2.5)) as mj:
        spy = spy_on(mj)
        await mj.fetch("1")
    assert [2.5] == spy.delays


async def test_backoff_doubles() -> None:
    """Without jitter the delays are backoff * 2**n, up to max_backoff."""
    script = Script({FETCH: {"status": 503}})
    policy = RetryPolicy(max_attempts=5, backoff=0.1, max_backoff=0.5, jitter=0)
    async with script.client(retry=policy) as mj:
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
    """Without a spy the retry really sleeps (a tiny backoff keeps this fast)."""
    script = Script({FETCH: [{"status": 503}, {"json": TASK}]})
    async with script.client(retry=RetryPolicy(backoff=0.05, jitter=0)) as mj:
        started = time.monotonic()
        await mj.fetch("1")
    assert 0.04 <= time.monotonic() - started < 1.0


# ---- submits and retries ---------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_submit_is_not_retried_after_a_5xx(status: int) -> None:
    """A 5xx on submit may hide a created job: one request, SubmitOutcomeUnknownError."""
    script = Script({IMAGINE: {"status": status, "body": "<html>gateway</html>"}})
    async with script.client() as mj:
        spy = spy_on(mj)
        with pytest.raises(SubmitOutcomeUnknownError) as info:
            await mj.imagine("a cat", state="order-7")
    assert 1 == script.count(IMAGINE)
    err = info.value
    assert isinstance(err.__cause__, ServerError)
    assert status == err.__cause__.status
    assert "order-7" == err.state
    assert "a cat" == err.request.prompt and "order-7" == err.request.state  # type: ignore[union-attr]
    assert ("POST", "/submit/imagine") == (err.method, err.path)
    assert "may or may not" in str(err)
    assert isinstance(err, TransportError)
    assert [] == spy.delays


@pytest.mark.parametrize(
    ("exception", "cause"),
    [
        (TransportError("the answer was cut off"), TransportError),
        (RequestTimeoutError("read timeout"), RequestTimeoutError),
    ],
)
async def test_submit_is_not_retried_after_a_dropped_answer(
    exception: Exception, cause: type
) -> None:
    """A connection lost after sending is an unknown outcome, never re-sent."""
    script = Script({ACTION: exception})
    async with script.client() as mj:
        with pytest.raises(SubmitOutcomeUnknownError) as info:
            await mj.action("1", "MJ::JOB::upsample::1::h", state="s1")
    assert 1 == script.count(ACTION)
    assert type(info.value.__cause__) is cause
    assert "s1" == info.value.state
    assert "MJ::JOB::upsample::1::h" == info.value.request.custom_id  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "answer",
    [
        {
            "status": 400,
            "json": {"code": 5, "description": "do_request_failed", "type": "upstream_error"},
        },
        {"status": 500, "json": {"code": 5, "description": "do_request_failed"}},
        {"json": {"code": 5, "description": "read_response_body_failed"}},
        {"status": 400, "json": {"code": 5, "description": "empty_response_body"}},
        {"status": 400, "json": {"code": 5, "description": "unmarshal_response_body_failed"}},
    ],
)
async def test_new_api_upstream_failure_on_a_submit_is_an_unknown_outcome(
    answer: dict[str, Any],
) -> None:
    """new-api's code 5 family ("my call upstream failed") on a submit: the job may exist
    upstream, so SubmitOutcomeUnknownError and nothing re-sent (even with retry_submits)."""
    script = Script({IMAGINE: answer})
    async with script.client(retry=RetryPolicy(backoff=0, retry_submits=True)) as mj:
        with pytest.raises(SubmitOutcomeUnknownError, match="may or may not") as info:
            await mj.imagine("x")
    assert 1 == script.count(IMAGINE)
    assert isinstance(info.value.__cause__, (SubmitRejectedError, ServerError))


@pytest.mark.parametrize(
    "exception",
    [ConnectError("refused", method="POST"), ConnectError("timed out connecting")],
)
async def test_submit_retried_after_a_connect_failure(exception: Exception) -> None:
    """A failed connect sent nothing, so the submit is retried."""
    script = Script({IMAGINE: [exception, {"json": OK}]})
    async with script.client() as mj:
        job = await mj.imagine("x")
    assert 2 == script.count(IMAGINE)
    assert job.result.ok


async def test_submit_connect_failure_is_bounded() -> None:
    """A relay that stays unreachable ends in ConnectError (also a ConnectionError)."""
    script = Script({IMAGINE: ConnectError("refused")})
    async with script.client() as mj:
        with pytest.raises(ConnectError) as info:
            await mj.imagine("x")
    assert 3 == script.count(IMAGINE)
    assert isinstance(info.value, ConnectionError)


@pytest.mark.parametrize(
    "rejection",
    [
        {"status": 429, "headers": {"Retry-After": "1"}},
        {"json": {"code": 23, "description": "队列已满，请稍后尝试"}},
        {"json": {"code": 9, "description": "提交失败，队列已满，请稍后重试"}},
        {"json": {"code": 4, "description": "当前用户队列数已达上限"}},
    ],
)
async def test_busy_submits_retried_only_when_enabled(rejection: dict[str, Any]) -> None:
    """429 and queue-full submits are raised by default, retried with retry_submits=True."""
    error = RateLimitError if "status" in rejection else QueueFullError
    script = Script({IMAGINE: rejection})
    async with script.client() as mj:
        with pytest.raises(error):
            await mj.imagine("x")
    assert 1 == script.count(IMAGINE)
    script = Script({IMAGINE: [rejection, {"json": OK}]})
    policy = RetryPolicy(backoff=0, max_backoff=0, retry_submits=True)
    async with script.client(retry=policy) as mj:
        spy_on(mj)
        assert (await mj.imagine("x")).result.ok
    assert 2 == script.count(IMAGINE)


async def test_busy_submit_retries_are_bounded() -> None:
    """Even with retry_submits a full queue is given up on after max_attempts."""
    script = Script({IMAGINE: {"json": {"code": 23, "description": "队列已满"}}})
    policy = RetryPolicy(backoff=0, max_backoff=0, retry_submits=True, max_attempts=3)
    async with script.client(retry=policy) as mj:
        with pytest.raises(QueueFullError):
            await mj.imagine("x")
    assert 3 == script.count(IMAGINE)


async def test_rejections_are_never_retried() -> None:
    """A validation error or banned prompt is final, even with retry_submits."""
    script = Script({IMAGINE: {"json": {"code": 4, "description": "prompt不能为空"}}})
    async with script.client(retry=RetryPolicy(backoff=0, retry_submits=True)) as mj:
        with pytest.raises(ValidationError):
            await mj.imagine("x")
    assert 1 == script.count(IMAGINE)


# ---- closing ends exchanges in flight ----------------------------------------------------------


async def test_aclose_ends_exchanges_in_flight() -> None:
    """aclose() ends a read and a submit that wait for an answer, and a retry sleeping in
    its backoff, at once: the read and the sleeper get ClientClosedError, the submit (which
    was sent) an unknown outcome."""
    never = asyncio.Event()

    async def hang(request: Request) -> Response:
        await never.wait()
        raise AssertionError("unreachable")

    script = Script({FETCH: hang, IMAGINE: hang, "GET /mj/task/2/fetch": {"status": 503}})
    mj = script.client(retry=RetryPolicy(backoff=30, jitter=0))
    read = asyncio.ensure_future(mj.fetch("1"))
    submit = asyncio.ensure_future(mj.imagine("x", state="closing"))
    sleeper = asyncio.ensure_future(mj.fetch("2"))
    while len(script.calls) < 3:  # noqa: ASYNC110 - waiting for the requests to be in flight
        await asyncio.sleep(0.01)
    started = time.monotonic()
    await asyncio.wait_for(mj.aclose(), 3)
    results = await asyncio.wait_for(
        asyncio.gather(read, submit, sleeper, return_exceptions=True), 3
    )
    assert time.monotonic() - started < 2.5
    assert isinstance(results[0], ClientClosedError)
    assert isinstance(results[1], SubmitOutcomeUnknownError) and "closed" in str(results[1])
    assert "closing" == results[1].state
    assert isinstance(results[2], ClientClosedError)
    assert (1, 1) == (script.count(IMAGINE), script.count("GET /mj/task/2/fetch"))
    assert script.requests and mj._http.transport.closed  # type: ignore[attr-defined]


# ---- logging ---------------------------------------------------------------------------------


async def test_one_debug_record_per_request(caplog: pytest.LogCaptureFixture) -> None:
    """Each request logs method, path and status at DEBUG on the 'quickmj' logger; retries
    and accepted submits are logged too."""
    caplog.set_level(logging.DEBUG, logger="quickmj")
    script = Script(
        {
            FETCH: [{"status": 502, "body": "x"}, {"json": TASK}],
            IMAGINE: {"json": OK},
            LIST: [TransportError("dropped"), {"json": []}],
        }
    )
    async with script.client() as mj:
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
    messages = [r.getMessage() for r in caplog.records]
    assert any("retrying GET /task/1/fetch" in m for m in messages)
    assert any("POST /submit/imagine -> task 1730621826053999 (code 1)" in m for m in messages)


async def test_with_options_changes_only_the_views_calls() -> None:
    """A view's requests get its timeouts and retry policy; the client keeps its own; both
    share one transport, poller and lifecycle."""
    script = Script({FETCH: [{"status": 502}, {"json": {"id": "1"}}, {"status": 502}]})
    async with script.client(timeouts=Timeouts(connect=3, read=4), retry=ONCE) as mj:
        view = mj.with_options(timeouts=Timeouts(connect=7, read=8), retry=NO_WAIT)
        await view.fetch("1")  # the 502 is retried under the view's policy
        assert (view.timeouts.read, mj.timeouts.read) == (8, 4)
        assert (view.retry, mj.retry) == (NO_WAIT, ONCE)
        assert view.poller is mj.poller and view.account == mj.account
        with pytest.raises(ServerError):
            await mj.fetch("1")  # ONCE: no retry on the client itself
    first, second, third = script.requests
    assert (7, 8) == (first.connect_timeout, first.read_timeout) == (
        second.connect_timeout,
        second.read_timeout,
    )
    assert (3, 4) == (third.connect_timeout, third.read_timeout)
    assert mj.is_closed and view.is_closed  # closing the client closed the view
    with pytest.raises(ClientClosedError):
        await view.fetch("1")


async def test_a_view_closes_the_client_it_came_from() -> None:
    script = Script({FETCH: {"json": {"id": "1"}}})
    mj = script.client()
    async with mj.with_options(retry=ONCE) as view:
        await view.fetch("1")
    assert mj.is_closed
