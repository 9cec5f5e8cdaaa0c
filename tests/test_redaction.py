"""The API key never leaks: not in reprs, error messages, error attributes, chains, nor logs."""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import socket
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import Serve
from fakes import Script

from quickmj import AsyncClient, QuickMJError, Request, RetryPolicy, Task, Timeouts
from quickmj._config import Secret
from quickmj._transport import Headers

KEY = "sk-Zq8vLkP3-distinctive-7f3c9e1a"
BASE = "http://relay.test"
ONCE = RetryPolicy(max_attempts=2, backoff=0, max_backoff=0)

Call = Callable[[AsyncClient], Awaitable[Any]]


def client(**kwargs: Any) -> AsyncClient:
    kwargs.setdefault("retry", ONCE)
    return AsyncClient(KEY, base_url=kwargs.pop("base_url", BASE), **kwargs)


def escaped(text: str, upper: bool = False) -> str:
    """``text`` with every character as a JSON \\uXXXX escape."""
    return "".join(f"\\u{ord(c):04X}" if upper else f"\\u{ord(c):04x}" for c in text)


def everything_about(exc: BaseException) -> str:
    """str, repr, the attributes and the formatted traceback of an error and its chain."""
    parts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts += [str(current), repr(current), repr(getattr(current, "__notes__", ""))]
        for name in (
            "body",
            "description",
            "properties",
            "message",
            "available",
            "path",
            "headers",
            "request_id",
            "request",
            "state",
        ):
            parts.append(repr(getattr(current, name, "")))
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


def leaks(text: str) -> bool:
    """The key, its distinctive part, or a JSON-escaped form of either, is in ``text``."""
    return any(
        form in text
        for form in (KEY, KEY[3:], escaped(KEY), escaped(KEY, upper=True), escaped(KEY[3:]))
    )


def fetch(mj: AsyncClient) -> Awaitable[Any]:
    return mj.fetch("1")


def imagine(mj: AsyncClient) -> Awaitable[Any]:
    return mj.imagine("x")


def list_tasks(mj: AsyncClient) -> Awaitable[Any]:
    return mj.list_tasks(["1"])


def image_seed(mj: AsyncClient) -> Awaitable[Any]:
    return mj.image_seed("1")


FETCH = "GET /mj/task/1/fetch"
IMAGINE = "POST /mj/submit/imagine"
LIST = "POST /mj/task/list-by-condition"
SEED = "GET /mj/task/1/image-seed"
ESCAPED_JSON = ('{"code": 4, "description": "bad key ' + escaped(KEY) + '"}').encode()

ANSWERS: list[tuple[str, str, Any, Call]] = [
    ("401 echoes the key", FETCH, {"status": 401, "body": f"bad token {KEY}"}, fetch),
    (
        "401 echoes the bearer header",
        IMAGINE,
        {"status": 401, "body": f"Authorization: Bearer {KEY} is not valid"},
        imagine,
    ),
    (
        "403 JSON echo",
        LIST,
        {"status": 403, "body": json.dumps({"error": {"message": f"token {KEY} disabled"}})},
        list_tasks,
    ),
    (
        "401 new-api echo",
        IMAGINE,
        {
            "status": 401,
            "json": {"error": {"message": f"无效的令牌 {KEY}", "type": "new_api_error"}},
        },
        imagine,
    ),
    (
        "400 code 4 echo",
        IMAGINE,
        {"status": 400, "json": {"code": 4, "description": f"invalid key {KEY}"}},
        imagine,
    ),
    (
        "200 code 4 echo",
        IMAGINE,
        {"json": {"code": 4, "description": f"no quota for {KEY}", "properties": {"k": KEY}}},
        imagine,
    ),
    (
        "200 failure shape echo",
        IMAGINE,
        {"json": {"success": False, "code": -1, "message": f"用户 {KEY} 已禁用"}},
        imagine,
    ),
    (
        "404 code 3 echo",
        LIST,
        {"status": 404, "json": {"code": 3, "description": f"{KEY} 不存在"}},
        list_tasks,
    ),
    ("429 echo", FETCH, {"status": 429, "body": f"slow down {KEY}"}, fetch),
    ("502 html echo (read)", FETCH, {"status": 502, "body": f"<html>{KEY}</html>"}, fetch),
    ("502 html echo (submit)", IMAGINE, {"status": 502, "body": f"<html>{KEY}</html>"}, imagine),
    ("200 html echo (read)", FETCH, {"body": f"<html>login {KEY}</html>"}, fetch),
    ("200 html echo (submit)", IMAGINE, {"body": f"<html>login {KEY}</html>"}, imagine),
    ("200 bad json echo", FETCH, {"body": f'{{"id": "{KEY}'}, fetch),
    (
        "200 wrong shape echo",
        IMAGINE,
        {"json": {"created": 1, "data": [{"url": KEY}], KEY: 1}},
        imagine,
    ),
    ("200 bad task echo", FETCH, {"json": {"id": "1", "status": {KEY: 1}}}, fetch),
    (
        "fetch error body echo",
        FETCH,
        {"json": {"code": 5, "description": f"upstream says {KEY}"}},
        fetch,
    ),
    (
        "code 5 submit echo",
        IMAGINE,
        {"status": 400, "json": {"code": 5, "description": f"do_request_failed {KEY}"}},
        imagine,
    ),
    ("\\u-escaped JSON echo (read)", FETCH, {"status": 400, "body": ESCAPED_JSON}, fetch),
    ("\\u-escaped JSON echo (submit)", IMAGINE, {"body": ESCAPED_JSON}, imagine),
    (
        "\\u-escaped upper-case echo",
        SEED,
        {"status": 400, "body": '{"code": 4, "description": "' + escaped(KEY, upper=True) + '"}'},
        image_seed,
    ),
    (
        "mixed escapes echo",
        FETCH,
        {"status": 500, "body": '{"m": "' + KEY[:5] + escaped(KEY[5:12]) + KEY[12:] + '"}'},
        fetch,
    ),
    (
        "redirect Location echo",
        FETCH,
        {"status": 302, "headers": {"Location": f"https://login.test/{KEY}/?key={KEY}"}},
        fetch,
    ),
    (
        "header echo",
        FETCH,
        {"status": 403, "headers": {"X-Debug-Token": f"Bearer {KEY}"}, "body": "no"},
        fetch,
    ),
]


@pytest.mark.parametrize(
    ("route", "answer", "call"), [a[1:] for a in ANSWERS], ids=[a[0] for a in ANSWERS]
)
async def test_key_absent_from_errors(
    route: str, answer: Any, call: Call, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever the relay echoes (plain, JSON-escaped, in a header or a Location), errors,
    their attributes and chains, and the logs never contain the key."""
    caplog.set_level(logging.DEBUG, logger="quickmj")
    script = Script({route: answer})
    async with script.client(api_key=KEY, retry=ONCE) as mj:
        with pytest.raises(QuickMJError) as info:
            await call(mj)
    assert not leaks(everything_about(info.value))
    assert not any(leaks(r.getMessage()) or leaks(str(r.args)) for r in caplog.records)
    assert caplog.records  # a request was logged


async def test_escaped_echo_still_parses() -> None:
    """Redacting a JSON-escaped key keeps the body valid JSON (the error is still typed)."""
    from quickmj import ValidationError

    script = Script({IMAGINE: {"body": ESCAPED_JSON}})
    async with script.client(api_key=KEY) as mj:
        with pytest.raises(ValidationError) as info:
            await mj.imagine("x")
    assert "bad key ***" == info.value.description


async def test_key_absent_on_real_connections(
    serve: Serve, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Timeouts, resets, malformed status lines, redirects, unreachable hosts and failed
    downloads on a real socket."""
    caplog.set_level(logging.DEBUG, logger="quickmj")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1)
        return web.Response(text=KEY)

    async def reset(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        return web.Response(text=KEY)

    def raw(head: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            assert request.transport is not None
            request.transport.write(head.encode())
            request.transport.close()
            return web.Response()

        return handler

    async def image_gone(request: web.Request) -> web.Response:
        return web.Response(status=403, text=f"denied for {request.headers.get('Authorization')}")

    async def redirect_with_key(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"/img/{KEY}.png?sig={KEY}")

    app = web.Application()
    app.router.add_get("/mj/task/slow/fetch", slow)
    app.router.add_post("/mj/submit/imagine", slow)
    app.router.add_get("/mj/task/reset/fetch", reset)
    app.router.add_get("/mj/task/garbage/fetch", raw(f"HTTP/1.1 999 {KEY}\r\nX: {KEY}\r\n\r\n"))
    app.router.add_get("/mj/task/status/fetch", raw(f"HTTP/1.1 2x0 {KEY}\r\n\r\n"))
    app.router.add_get("/mj/task/header/fetch", raw(f"HTTP/1.1 200 OK\r\nBad {KEY}\r\n\r\n"))
    app.router.add_get("/mj/task/moved/fetch", redirect_with_key)
    app.router.add_get("/img/gone.png", image_gone)
    app.router.add_get("/img/moved.png", redirect_with_key)
    relay = await serve(app)
    caught: list[BaseException] = []
    for scheme in ("bearer", "mj-api-secret", "raw"):
        async with client(base_url=relay, timeouts=Timeouts(read=0.05), auth_scheme=scheme) as mj:
            calls: list[Callable[[], Awaitable[Any]]] = [
                lambda: mj.fetch("slow"),
                lambda: mj.imagine("x"),
                lambda: mj.fetch("reset"),
                lambda: mj.fetch("garbage"),
                lambda: mj.fetch("status"),
                lambda: mj.fetch("header"),
                lambda: mj.fetch("moved"),
                lambda: mj.download(Task(id="g", image_url=f"{relay}/img/gone.png"), tmp_path),
                lambda: mj.download(Task(id="m", image_url=f"{relay}/img/moved.png"), tmp_path),
            ]
            for call in calls:
                try:
                    await call()
                except QuickMJError as exc:
                    caught.append(exc)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with client(base_url=f"http://127.0.0.1:{port}") as mj:
        try:
            await mj.fetch("1")
        except QuickMJError as exc:
            caught.append(exc)
    assert 3 * 9 + 1 == len(caught)
    for err in caught:
        assert not leaks(everything_about(err)), type(err).__name__
    assert not any(leaks(r.getMessage()) for r in caplog.records)


async def test_key_absent_from_reprs() -> None:
    """repr/str of the client, its HTTP layer, transport, requests and key holder hide it."""
    script = Script({FETCH: {"json": {"id": "1"}}})
    texts: list[str] = []
    for scheme in ("bearer", "mj-api-secret", "raw"):
        mj = script.client(api_key=KEY, auth_scheme=scheme)
        await mj.fetch("1")
        texts += [repr(mj), str(mj), repr(mj._http), repr(mj._http.key), str(mj._http.key)]
        texts += [repr(mj._relay), repr(vars(mj)), repr(vars(mj._http))]
        texts += [repr(r) for r in script.requests]
        texts += [repr(r.headers) for r in script.requests]
        await mj.aclose()
    aio = AsyncClient(KEY, base_url=BASE, proxy="http://user:pw@proxy.test:3128")
    texts += [repr(aio), repr(aio._http.transport), repr(vars(aio._http))]
    await aio.aclose()
    assert not any(leaks(t) for t in texts)
    assert "pw@" not in repr(aio._http.transport)
    assert "Secret('***')" == repr(Secret(KEY))


def test_headers_and_requests_hide_credentials() -> None:
    """A Request's repr shows its headers with credentials masked."""
    request = Request("GET", f"{BASE}/x", {"Authorization": f"Bearer {KEY}", "mj-api-secret": KEY})
    assert not leaks(repr(request)) and "***" in repr(request)
    headers = Headers({"Proxy-Authorization": f"Basic {KEY}"})
    assert not leaks(repr(headers))


def test_secret_cannot_be_pickled() -> None:
    """The key holder refuses to be pickled (no accidental copies to disk or other processes)."""
    with pytest.raises(TypeError):
        pickle.dumps(Secret(KEY))


def test_secret_redaction() -> None:
    """Every occurrence is replaced, plain or JSON-escaped in either case; keys too short to
    be distinctive are left alone."""
    secret = Secret(KEY)
    assert "a *** b ***" == secret.redact(f"a {KEY} b {KEY}")
    assert "x *** y" == secret.redact(f"x {escaped(KEY)} y")
    assert "x *** y" == secret.redact(f"x {escaped(KEY, upper=True)} y")
    assert "a b c" == Secret("b").redact("a b c")
    body = json.dumps({"d": f"{KEY} and \\u0073"}).encode() + b" " + escaped(KEY).encode()
    assert b"***" in secret.redact_bytes(body) and not leaks(secret.redact_bytes(body).decode())
    assert b"plain" == secret.redact_bytes(b"plain")


@pytest.mark.parametrize("before", ["", "\\u4e2d\\u6587 ", "\\u003c\\u003e ", "\u4e2d "])
def test_escaped_key_found_after_other_escapes(before: str) -> None:
    """The cheap first look (a ``\\u00`` escape) starts where such escapes start: escaped
    Chinese text or Go's ``\\u003c`` before an escaped key never hide it."""
    secret = Secret(KEY)
    for upper in (False, True):
        body = f'{{"d":"x","e":"{before}{escaped(KEY, upper=upper)}"}}'.encode()
        clean = secret.redact_bytes(body)
        assert not leaks(clean.decode()) and b"***" in clean
        json.loads(clean)  # still JSON
    honest = f'{{"d":"{before}plain"}}'.encode()
    assert secret.redact_bytes(honest) == honest


async def test_request_and_retry_logs_hold_no_key(caplog: pytest.LogCaptureFixture) -> None:
    """DEBUG logs of a successful exchange with retries name paths, never the key."""
    caplog.set_level(logging.DEBUG, logger="quickmj")
    script = Script(
        {
            FETCH: [{"status": 503, "body": KEY}, {"json": {"id": "1"}}],
            IMAGINE: {"json": {"code": 1, "result": "2"}},
        }
    )
    async with script.client(api_key=KEY) as mj:
        await mj.fetch("1")
        await mj.imagine("x")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) >= 4
    assert not any(leaks(msg) for msg in messages)
